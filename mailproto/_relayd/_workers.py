# -*- test-case-name: mailproto.test.test_workers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay on several cores (C{twistd mailrelay --workers N}): the parent's
side.

The parent binds every listener, then stops reading them, and starts N
worker processes (L{mailproto._relayd._worker}) that accept clients on
the same listening sockets, passed to them as file descriptors.  A worker
takes mail in (the SMTP session, the header policies, DKIM signing, the
write into the spool with group commit) and tells the parent each queue
id it made durable (L{Queued}); only then does it say 250.  The parent
alone keeps the queue (its index, the delivery state, recovery, the
control socket of C{mailproto queue}) and the relaying manager, so a
message is delivered by one process only, and destination limits are
the daemon's.  The limits on clients (connections, AUTH failures) are
kept by the parent too, which the workers ask (see
L{mailproto._relayd._workerprotocol}).

A worker's log events come to the parent as lines on the worker's
standard output (L{mailproto._relayd._workerlog}), and are logged again
there with the worker named, so the daemon has one log.  A worker that
ends unexpectedly is started again after a second; the parent then
adopts any message the worker made durable but had not announced
(L{Queue.adoptNew <mailproto._queue.Queue.adoptNew>}), so none is
orphaned.  SIGTERM makes every worker stop accepting and drain its
sessions, then the parent drains its deliveries; SIGHUP reaches every
worker, which reads its configuration again.

A worker's states, as the parent sees them: I{starting} (spawned, its
AMP connection not yet made), I{running}, I{stopping} (sent SIGTERM) and
I{ended}; an ended worker the parent did not stop is started again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger, globalLogPublisher

from mailproto._childprocess import ChildProcess
from mailproto._relayd import _workerprotocol as wire
from mailproto._backlog import withBacklog
from mailproto._relayd._workerlog import eventFromWorker

_log = Logger(namespace="mailrelay")

#: How long after an unexpected end a worker is started again.
RESTART_DELAY = 1.0

#: How long a worker may take to stop after the grace it was given.
STOP_MARGIN = 5.0


def unfinishedSuffix(number: int) -> str:
    """
    @return: what ends the names of the messages worker C{number} is
        receiving in the spool's C{tmp/}.
    """
    return f".worker{number}"


class _Unused(protocol.Factory):
    """
    The factory of a listener the parent binds but never reads.
    """

    noisy = False

    def logPrefix(self) -> str:
        return "mailrelay (for its workers)"

    def buildProtocol(self, addr):  # pragma: no cover - never reads
        return None


class ParentProtocol(wire.QuietAMP):
    """
    The parent's end of the AMP connection with one worker.
    """

    def __init__(self, pool: WorkerPool, worker: Worker) -> None:
        wire.QuietAMP.__init__(self)
        self.pool = pool
        self.worker = worker

    def connectionMade(self) -> None:
        wire.QuietAMP.connectionMade(self)
        self.worker.protocol = self
        # A worker that starts learns the addresses blocked now.
        if self.pool.auth is not None:
            for address, seconds in self.pool.auth.blockedNow():
                self.callRemote(wire.AuthBlocked, address=address.decode("latin-1"), seconds=seconds)

    def connectionLost(self, reason) -> None:
        wire.QuietAMP.connectionLost(self, reason)
        if self.worker.protocol is self:
            self.worker.protocol = None
        # What a gone worker held is free again.
        if self.pool.limits is not None:
            self.pool.limits.workerGone(self.worker.number)
        # And the connections it had are no longer open.
        if self.pool.forwardedMetrics is not None:
            self.pool.forwardedMetrics.linkGone(self)

    @wire.Queued.responder
    def queued(self, queueID: str, fsyncs: int | None = None, copy: bytes | None = None, state: bytes | None = None):
        if fsyncs is not None:
            self.worker.fsyncs = fsyncs
        try:
            self.pool.queue.adopt(queueID, copy, state)
        except (KeyError, ValueError) as e:
            _log.warn("mailrelay: worker {worker} announced {queueID}, which cannot be taken: {why}", worker=self.worker.number, queueID=queueID, why=str(e))
        return {}

    @wire.Counted.responder
    def counted(self, calls: str):
        # Only calls of _workermetrics.FORWARDED, checked, reach the metrics.
        if self.pool.forwardedMetrics is not None:
            self.pool.forwardedMetrics.apply(self, calls, worker=self.worker.number)
        return {}

    @wire.Admit.responder
    def admit(self, address: str, listener: str):
        limits = self.pool.limits
        return {"limit": limits.admit(self.worker.number, address, listener) if limits is not None else None}

    @wire.Release.responder
    def release(self, address: str):
        if self.pool.limits is not None:
            self.pool.limits.release(self.worker.number, address)
        return {}

    @wire.Refused.responder
    def refused(self, address: str, listener: str, limit: str):
        if self.pool.limits is not None:
            self.pool.limits.refused(listener, limit, address)
        return {}

    @wire.AuthAttempt.responder
    def authAttempt(self, address: str):
        if self.pool.auth is not None:
            self.pool.broadcastBlocks(self.pool.auth.attempt(address.encode("latin-1")))
        return {}

    @wire.AuthForgive.responder
    def authForgive(self, address: str):
        if self.pool.auth is not None:
            self.pool.broadcastBlocks(self.pool.auth.forgive(address.encode("latin-1")))
        return {}


class _WorkerProcess(protocol.ProcessProtocol):
    """
    A worker process's output (log events) and end.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._buffers = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._buffers:
            return
        buffered = self._buffers[childFD] + data
        *lines, self._buffers[childFD] = buffered.split(b"\n")
        # One runaway line must not grow without bound.
        if len(self._buffers[childFD]) > 1 << 20:
            lines.append(self._buffers[childFD])
            self._buffers[childFD] = b""
        for line in lines:
            if line.strip():
                self.worker.logLine(line, childFD)

    def processEnded(self, reason) -> None:
        for childFD, rest in self._buffers.items():
            if rest.strip():
                self.worker.logLine(rest, childFD)
        self.worker.ended(reason)


class Worker(ChildProcess):
    """
    One worker process, as the parent knows it (its states:
    L{ChildProcess <mailproto._childprocess.ChildProcess>}).

    @ivar protocol: its L{ParentProtocol}, while connected.
    @ivar fsyncs: how many C{fsync} calls its process has made, as it
        last said.
    @ivar pastFsyncs: how many its earlier processes made.
    """

    protocol = None
    fsyncs = 0
    pastFsyncs = 0

    def start(self) -> None:
        """
        Start the process, with the listeners and its end of an AMP
        socket pair as file descriptors.
        """
        pool = self.pool
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        childFDs = {0: "w", 1: "r", 2: "r", 3: theirs.fileno()}
        listeners = []
        for index, (kind, description, port) in enumerate(pool.ports):
            fd = 4 + index
            childFDs[fd] = port.fileno()
            listeners.append([kind, description, fd, int(port.addressFamily)])
        spec = {"argv": list(pool.commandLine), "listeners": listeners, "worker": self.number, "amp": 3}
        transport = pool.reactor.spawnProcess(
            _WorkerProcess(self),
            sys.executable,
            [sys.executable, "-m", "mailproto._relayd._worker", json.dumps(spec)],
            env=dict(os.environ),
            childFDs=childFDs,
        )
        self.spawned(transport)
        theirs.close()
        factory = protocol.Factory.forProtocol(lambda: ParentProtocol(pool, self))
        pool.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, factory)
        ours.close()

    def logLine(self, line: bytes, childFD: int) -> None:
        """
        Log one line a worker wrote: a log event (JSON) on its standard
        output, anything else as it is.
        """
        if childFD == 1:
            event = eventFromWorker(line.decode("utf-8", "replace"), self.number)
            if event is not None:
                globalLogPublisher(event)
                return
        _log.info("worker {worker}: {line}", worker=self.number, line=line.decode("utf-8", "replace").rstrip())

    def expectedEnd(self) -> bool:
        # Once the relay stops, every end is expected.
        return ChildProcess.expectedEnd(self) or not self.pool.running

    def ended(self, reason) -> None:
        self.pastFsyncs, self.fsyncs = self.pastFsyncs + self.fsyncs, 0
        ChildProcess.ended(self, reason)


class WorkerPool(service.Service):
    """
    The parent's workers, and the listeners they share.

    @ivar queue: the relay's L{Queue <mailproto._queue.Queue>}.
    @ivar connectionLimits: the daemon's L{ConnectionLimits
        <mailproto._relayd._connlimits.ConnectionLimits>}, or C{None}.
    @ivar authFailures: the daemon's L{AuthFailures
        <mailproto._authfailures.AuthFailures>}, or C{None}.
    @ivar ports: C{(kind, description, port)} of every listener, once
        bound.
    @ivar workers: the L{Worker}s.
    @ivar restarts: how many times a worker was started again after an
        unexpected end.
    @ivar forwardedMetrics: with C{--metrics}, once started, the
        L{ForwardedMetrics <mailproto._relayd._workermetrics.ForwardedMetrics>}
        that applies what the workers count to the relay's metrics; else
        C{None}.
    """

    restarts = 0
    forwardedMetrics = None

    def __init__(self, count: int, listen: list, commandLine: list, queue, connectionLimits, authFailures, reactor, grace: float = 30.0) -> None:
        """
        @param count: how many workers.
        @param listen: C{(kind, description)} of every listener.
        @param commandLine: the relay's command line, which each worker
            parses again.
        """
        self.count = count
        self.listen = list(listen)
        self.commandLine = list(commandLine)
        self.queue = queue
        from mailproto._relayd._sharedlimits import ParentAuthFailures, ParentLimits

        self.connectionLimits = connectionLimits
        self.authFailures = authFailures
        self.limits = ParentLimits(connectionLimits) if connectionLimits is not None else None
        self.auth = ParentAuthFailures(authFailures) if authFailures is not None else None
        self.reactor = reactor
        self.grace = grace
        self.ports: list = []
        self.workers = [Worker(self, number) for number in range(1, count + 1)]
        self._restarts: dict[int, object] = {}

    def bind(self) -> None:
        """
        Bind every listener (as root, before twistd switches user), and
        leave it for the workers to read.
        """
        for kind, description in self.listen:
            d = endpoints.serverFromString(self.reactor, withBacklog(description)).listen(_Unused())
            failures = []
            ports = []
            d.addCallbacks(ports.append, failures.append)
            if failures:
                failures[0].raiseException()
            port = ports[0]
            port.stopReading()
            self.ports.append((kind, description, port))

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        self.bind()

    def startService(self) -> None:
        service.Service.startService(self)
        if not self.ports:
            self.bind()
        self._watchMetrics()
        for worker in self.workers:
            worker.start()
        _log.info("mailrelay: {count} workers accepting mail", count=self.count)

    def _watchMetrics(self) -> None:
        """
        With the relay's metrics (this service's parent's C{metrics}):
        apply what the workers count to them, and serve the workers' own.
        """
        metrics = getattr(self.parent, "metrics", None)
        if metrics is None or self.forwardedMetrics is not None:
            return
        from mailproto._relayd._workermetrics import ForwardedMetrics

        self.forwardedMetrics = ForwardedMetrics(metrics)
        metrics.watchWorkers(self)

    def stopService(self) -> defer.Deferred:
        """
        Stop every worker (each drains its sessions), killing those that
        take longer than the grace and a margin; then adopt anything they
        left in the queue.
        """
        service.Service.stopService(self)
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        # New clients are refused from now on, once the workers have
        # closed their copies of the listening sockets too.
        for _, _, port in self.ports:
            port.stopListening()
        self.ports = []
        stops = [worker.stop() for worker in self.workers]
        killer = self.reactor.callLater(self.grace + STOP_MARGIN, self._kill)
        d = defer.gatherResults(stops, consumeErrors=True)

        def stopped(result):
            if killer.active():
                killer.cancel()
            self._adoptLeftovers()
            return None

        d.addBoth(stopped)
        return d

    def _kill(self) -> None:
        for worker in self.workers:
            if worker.state != "ended":
                _log.warn("mailrelay: worker {worker} did not stop in time; killed", worker=worker.number)
                worker.signal(signal.SIGKILL)

    @property
    def fsyncs(self) -> int:
        """
        How many C{fsync} calls the workers made while committing mail,
        as far as they have said.
        """
        return sum(worker.pastFsyncs + worker.fsyncs for worker in self.workers)

    def signalAll(self, number: int) -> None:
        """
        Send every running worker a signal (SIGHUP: read the configuration
        again).
        """
        for worker in self.workers:
            worker.signal(number)

    def workerEnded(self, worker: Worker, expected: bool, why: str) -> None:
        """
        A worker ended: adopt what it committed and remove what it left
        unfinished; start it again unless it was asked to stop.
        """
        self._adoptLeftovers()
        self._removeUnfinished(worker)
        if expected:
            _log.info("mailrelay: worker {worker} stopped ({why})", worker=worker.number, why=why)
            return
        _log.warn("mailrelay: worker {worker} ended ({why}); starting it again", worker=worker.number, why=why)
        self._restarts[worker.number] = self.reactor.callLater(RESTART_DELAY, self._restart, worker)

    def _restart(self, worker: Worker) -> None:
        self._restarts.pop(worker.number, None)
        if self.running:
            self.restarts += 1
            worker.start()

    def _removeUnfinished(self, worker: Worker) -> None:
        try:
            removed = self.queue.removeUnfinished(unfinishedSuffix(worker.number))
        except OSError as e:
            _log.warn("mailrelay: could not remove what worker {worker} left unfinished: {why}", worker=worker.number, why=str(e))
            return
        if removed:
            _log.info("mailrelay: removed {count} unfinished message(s) worker {worker} left in tmp/", count=removed, worker=worker.number)

    def _adoptLeftovers(self) -> None:
        try:
            adopted = self.queue.adoptNew()
        except Exception as e:
            _log.warn("mailrelay: could not look for messages left by a worker: {why}", why=str(e))
            return
        if adopted:
            _log.info("mailrelay: took {count} message(s) a worker had queued but not announced", count=len(adopted))

    def broadcastBlocks(self, blocks: list) -> None:
        """
        Tell every worker of addresses whose AUTH block began, changed or
        ended (L{ParentAuthFailures <mailproto._relayd._sharedlimits.ParentAuthFailures>}).
        """
        for address, seconds in blocks:
            text = address.decode("latin-1")
            for worker in self.workers:
                if worker.protocol is not None:
                    worker.protocol.callRemote(wire.AuthBlocked, address=text, seconds=float(seconds))
