# -*- test-case-name: mailproto.test.test_workers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay on several cores (C{twistd mailrelay --workers N}): a worker
process, started by the parent (L{mailproto._relayd._workers}) as
C{python -m mailproto._relayd._worker SPEC}.

SPEC (JSON) gives the relay's command line, which the worker parses as
the parent did, the listeners (kind, description, file descriptor,
address family) it accepts clients on, its number, and the file
descriptor of its AMP connection to the parent.  The worker builds the
relay's intake exactly as one process would (the same factories, header
policies, DKIM signer, portals), but writes into an
L{IntakeQueue <mailproto._intakequeue.IntakeQueue>} that tells the parent
each message it made durable, and asks the parent for the daemon's
connection limits and AUTH failure counts.  It does not deliver, recover
the queue or listen on the control socket: the parent does.

Its log events go to its standard output, which the parent logs again
with the worker's number (L{mailproto._relayd._workerlog}).  SIGTERM:
stop accepting, let sessions in a transaction finish (for the relay's
C{--shutdown-grace}), exit.  SIGHUP: read the configuration again (users, relay networks and
domains, limits, the certificate), as the parent does.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
import types

from twisted.internet import defer, protocol
from twisted.logger import Logger, globalLogBeginner
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer
from twisted.internet.interfaces import IStreamServerEndpoint

from mailproto._relayd import _workerprotocol as wire
from mailproto._relayd._workers import unfinishedSuffix

_log = Logger(namespace="mailrelay")


class WorkerProtocol(wire.QuietAMP):
    """
    The worker's end of the AMP connection with the parent.
    """

    def __init__(self, worker: WorkerRelay) -> None:
        wire.QuietAMP.__init__(self)
        self.worker = worker

    @wire.AuthBlocked.responder
    def authBlocked(self, address: str, seconds: float):
        if self.worker.authFailures is not None:
            self.worker.authFailures.blockedUntil(address.encode("latin-1"), seconds)
        return {}

    def connectionLost(self, reason) -> None:
        wire.QuietAMP.connectionLost(self, reason)
        # Without its parent, a worker has nobody to hand mail to.
        self.worker.parentLost()


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A listening socket the parent bound, as an endpoint.
    """

    def __init__(self, reactor, fileno: int, family: int) -> None:
        self.reactor = reactor
        self.fileno = fileno
        self.family = family

    def listen(self, factory) -> defer.Deferred:
        return defer.execute(self._adopt, factory)

    def _adopt(self, factory):
        port = self.reactor.adoptStreamPort(self.fileno, self.family, factory)
        # The port holds a copy of the socket: with the inherited
        # descriptor closed, stopping the port stops this process listening.
        os.close(self.fileno)
        return port


def _parseOptions(argv: list):
    from mailproto._relayd._daemon import Options

    class WorkerOptions(Options):
        def _checkSpool(self) -> None:
            # The parent holds the spool and its lock.
            pass

    options = WorkerOptions()
    options.parseOptions(argv)
    return options


class WorkerRelay:
    """
    One worker: its intake, listening on the parent's sockets.

    @ivar factories: the protocol factories, by listener kind.
    @ivar listeners: the listening ports.
    """

    connectionLimits = None
    checker = None
    reloader = None
    #: With C{--metrics}, the L{MetricsForwarder
    #: <mailproto._relayd._workermetrics.MetricsForwarder>} that counts for
    #: the parent's metrics; else C{None}.
    metrics = None

    def __init__(self, spec: dict, reactor) -> None:
        self.spec = spec
        self.number = spec["worker"]
        self.reactor = reactor
        self.options = _parseOptions(spec["argv"])
        self.shutdownGrace = self.options["shutdown-grace"]
        self.listeners: list = []
        self.stopping = False
        self.protocol = WorkerProtocol(self)
        self.manager = types.SimpleNamespace(security=None)

    def ask(self, name: str, **arguments) -> defer.Deferred:
        """
        Ask the parent: C{name} is an AMP command of
        L{mailproto._relayd._workerprotocol}, by its class name.
        """
        command = getattr(wire, name[0].upper() + name[1:])
        if not self.protocol.transport:
            return defer.fail(ConnectionError("no parent"))
        return self.protocol.callRemote(command, **arguments)

    def build(self) -> None:
        """
        Make the intake from the options, as the one-process relay does.
        """
        from mailproto._intakequeue import IntakeQueue
        from mailproto._relay import QueueDeliveryFactory
        from mailproto._relayd import _daemon, _submission
        from mailproto._relayd._sharedlimits import RemoteConnectionLimits, SharedAuthFailures

        options, reactor = self.options, self.reactor
        hostname = options["hostname"].encode("idna")
        self.queue = IntakeQueue(options["spool"], self._announce, reactor=reactor, unfinishedSuffix=unfinishedSuffix(self.number))
        self.policy = options["policy"]
        self.intake = _submission.intakePolicy(options, hostname, reactor)
        deliveryFactory = QueueDeliveryFactory(self.queue, self.policy, intake=self.intake, dkim=options["dkim-signer"])
        portal, submissionPortal, self.checker = _daemon._portals(options, self.queue, deliveryFactory, self.intake, reactor)
        self.authFailures = SharedAuthFailures(self.ask, limit=options["max-auth-failures"], window=_daemon.AUTH_FAILURE_WINDOW, clock=reactor)
        self.factories = _daemon._listenerFactories(options, hostname, deliveryFactory, portal, submissionPortal, self.authFailures)
        self.limits = RemoteConnectionLimits(self.ask)
        self._forwardMetrics()

    def _forwardMetrics(self) -> None:
        """
        With C{--metrics}, count what the intake does for the parent's
        metrics, as the one-process relay counts it for its own.
        """
        if not self.options["metrics"]:
            return
        from mailproto._relayd._workermetrics import MetricsForwarder

        self.metrics = MetricsForwarder(self.ask, self.reactor)
        self.intake.observers.append(self.metrics.intakePolicyActed)
        self.policy.observers.append(self.metrics.policyRefused)
        for factory in self.factories.values():
            factory.metrics = self.metrics

    #: How long the parent may take to adopt a message before the worker
    #: answers 250 anyway (the message is durable; the parent finds it
    #: when it next looks, L{Queue.adoptNew <mailproto._queue.Queue.adoptNew>}).
    announceTimeout = 30.0

    def _announce(self, envelope, copy=None) -> defer.Deferred:
        arguments = {"queueID": envelope.id, "fsyncs": self.queue.fsyncs}
        # A copy AMP can carry spares the parent reading the files.
        if copy is not None and len(copy.data) <= amp.MAX_VALUE_LENGTH and len(copy.state or b"") <= amp.MAX_VALUE_LENGTH:
            arguments["copy"] = copy.data
            if copy.state is not None:
                arguments["state"] = copy.state
        d = self.ask("queued", **arguments)
        d.addTimeout(self.announceTimeout, self.reactor)
        return d

    def listen(self) -> None:
        """
        Accept clients on the parent's listening sockets.
        """
        from mailproto._relayd._connlimits import ConnectionLimitsFactory, guardAccepts
        from mailproto._relayd._proxy import proxyEndpoint

        options, reactor = self.options, self.reactor
        for kind, description, fileno, family in self.spec["listeners"]:
            paused = functools.partial(self.metrics.limitActed, kind) if self.metrics is not None else None
            endpoint = guardAccepts(AdoptedEndpoint(reactor, fileno, family), clock=reactor, description=description, observer=paused)
            if options["proxy-protocol"]:
                endpoint = proxyEndpoint(endpoint, clock=reactor)
            factory = ConnectionLimitsFactory(self.factories[kind], self.limits, kind)
            if kind == "smtps":
                factory = TLSMemoryBIOFactory(options["tls"], False, factory)
            endpoint.listen(factory).addCallbacks(self.listeners.append, self._cannotListen, errbackArgs=(description,))

    def _cannotListen(self, failure, description: str) -> None:
        _log.failure("worker {worker}: cannot accept on {listen}", failure, worker=self.number, listen=description)
        self.reactor.stop()

    def start(self) -> None:
        """
        Connect to the parent, build the intake and accept clients.
        """
        factory = protocol.Factory.forProtocol(lambda: self.protocol)
        self.reactor.adoptStreamConnection(self.spec["amp"], socket.AF_UNIX, factory)
        self.build()
        self.listen()
        self._configureReload()
        signal.signal(signal.SIGTERM, lambda *_: self.reactor.callFromThread(self.stop))
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def _configureReload(self) -> None:
        from mailproto._relayd import _config

        options = self.options
        if options.get("config"):
            self.reloader = _config.ConfigReloader(self, options, policy=self.policy, intake=self.intake, reportPolicy=types.SimpleNamespace())
        elif options["tls"] is not None:
            self.reloader = _config.CertificateReloader(self, options)

    def reload(self) -> None:
        if self.reloader is not None:
            self.reloader.reload()

    def _sessions(self) -> list:
        return [s for f in self.factories.values() for s in getattr(f, "sessions", ())]

    def stop(self) -> None:
        """
        Stop accepting, let sessions in a transaction end (within the
        grace), and exit.
        """
        if self.stopping:
            return
        self.stopping = True
        # New clients are refused, as by the one-process relay, once the
        # parent and every worker have closed the listening socket.
        for port in self.listeners:
            port.stopListening()
        for session in self._sessions():
            session.shutDown()
        deadline = self.reactor.seconds() + self.shutdownGrace
        self._waitForSessions(deadline)

    def _waitForSessions(self, deadline: float) -> None:
        sessions = self._sessions()
        if sessions and self.reactor.seconds() < deadline:
            self.reactor.callLater(0.05, self._waitForSessions, deadline)
            return
        for session in sessions:
            session.transport.abortConnection()
        if self.checker is not None:
            self.checker.stop()
        self.reactor.callLater(0, self.reactor.stop)

    def parentLost(self) -> None:
        if not self.stopping:
            _log.warn("worker {worker}: the parent is gone; stopping", worker=self.number)
            self.stop()


def main(argv: list[str]) -> int:
    """
    Run a worker: C{argv[1]} is its SPEC.
    """
    from twisted.internet import reactor

    spec = json.loads(argv[1])
    # One event per line, which the parent reads back.
    from mailproto._relayd._workerlog import workerObserver

    globalLogBeginner.beginLoggingTo([workerObserver(sys.stdout, reactor)], redirectStandardIO=False)
    worker = WorkerRelay(spec, reactor)
    reactor.callWhenRunning(worker.start)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
