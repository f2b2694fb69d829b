# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Mail out of the relay's queue: the relaying manager, and the names
twisted.mail's C{relaymanager} has for its parts.

The parts, in the order a message meets them, each in its own module:

  1. L{SmartHostSMTPRelayingManager} (and L{SmartHostESMTPRelayingManager},
     the one to use) knows when each waiting message is next due
     (L{DueTimes <mailproto._scheduler.DueTimes>}), and learns of new
     ones from the queue at once.  When a message is due, an attempt
     (L{MessageAttempt <mailproto._jobs.MessageAttempt>}) starts: its
     waiting recipients are split by destination (their domain, or the
     smart host), each part a I{job}.
  2. Jobs wait in their destination's line
     (L{DestinationLines <mailproto._scheduler.DestinationLines>}) until a
     connection may be opened: at most C{maxConnections} overall and
     C{maxConnectionsPerDestination} to one destination; one connection
     carries up to C{maxMessagesPerConnection} jobs.
  3. A connection (L{Connection <mailproto._connection.Connection>})
     routes its destination (L{MXCalculator.getRoute}, or the smart host),
     then tries its addresses in order (at most C{maxAddresses}), one
     session each, until one takes the jobs.
  4. The session's relayer (L{ESMTPManagedRelayer}) sends each job and
     tells the session (its L{IRelayOwner <mailproto._relayers.IRelayOwner>})
     each recipient's reply.
  5. When every job of a message has been answered, the attempt is
     recorded (L{AttemptRecorder <mailproto._recorder.AttemptRecorder>}),
     reports are queued (L{Reporter <mailproto._reports.Reporter>}) and
     the message's new state is written.

The state of a queued message, and what moves it::

  ============  ==========================  ===============================
  state         where it lives              leaves it when
  ============  ==========================  ===============================
  waiting       the queue and L{DueTimes}   due: becomes I{in flight};
                                            held: becomes I{held}
  held          the queue only (C{held} in  released: I{waiting}, due now
                its state file)
  in flight     its L{MessageAttempt}, the  every job answered: the attempt
                destination lines and the   is recorded, the state written,
                connections                 then I{waiting} again or gone
  gone          (removed from the queue)    never
  ============  ==========================  ===============================

A crash in flight loses nothing: the state on disk is the one before the
attempt, so the message is tried again (recipients it reached may get it
twice).
"""

from __future__ import annotations

import collections
import socket

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from mailproto._attempts import RetrySchedule
from mailproto._bounce import DEFAULT_RETURN_LIMIT
from mailproto._client import ESMTPClient
from mailproto._connection import Connection, Session
from mailproto._jobs import Job, MessageAttempt, sortRecipients
from mailproto._mx import Candidate, Destination, MXCalculator
from mailproto._queue import Envelope
from mailproto._readahead import PrefixedFile
from mailproto._recorder import AttemptRecorder
from mailproto._relayers import ESMTPManagedRelayerFactory, SMTPManagedRelayerFactory, configureSecurity
from mailproto._reports import show
from mailproto._scheduler import DestinationLines, DueTimes
from mailproto._security._policies import staticSecurity
from mailproto._smarthost import MAY, SMARTHOST, SmartHost, TLSPolicy, domainKey

_log = Logger(namespace="mailproto.relaymanager")



class SmartHostSMTPRelayingManager:
    """
    Sends the queue's messages: to each recipient domain's mail exchangers
    found in the DNS (L{MXCalculator}), or all through a smart host.  See
    the module docstring for how.

    @cvar factory: makes the relayer factory for a connection, as
        C{factory(jobs, attemptManager, *fArgs, **fKwArgs)}.
    @cvar PORT: the port of mail exchangers.
    @ivar mxcalc: the L{MXCalculator}; one on the system's resolver if
        C{None}.
    @ivar managed: the relayer factories of the sessions in progress,
        each with the jobs it has not answered yet (read only).
    @ivar fArgs: positional arguments for the relayer factory after the
        attempt manager; if empty, the relay's own (its host name, TLS
        options, and for the smart host its password).
    @ivar fKwArgs: keyword arguments for the relayer factory.
    @ivar stats: counts for this run: C{delivered}, C{deferred}, C{failed}
        (recipients) and C{reports} (reports queued).
    @ivar outcomeListeners: callables told of each recorded attempt, as
        C{listener(envelope, result, started, now)} with the
        L{AttemptResult} and when the attempt started and ended.
    @ivar softBounce: whether permanent failures are deferred instead
        (see L{__init__}).
    """

    factory = SMTPManagedRelayerFactory
    PORT = 25
    mxcalc = None
    maxActiveMessages = 10000

    def __init__(
        self,
        queue,
        maxConnections: int = 2,
        maxMessagesPerConnection: int = 10,
        *,
        smartHost: SmartHost | str | None = None,
        maxConnectionsPerDestination: int | None = None,
        schedule: RetrySchedule | None = None,
        hostname: str | None = None,
        tls: TLSPolicy | None = None,
        tlsPolicies: dict | None = None,
        port: int | None = None,
        mxcalc: MXCalculator | None = None,
        reactor=None,
        connectTimeout: float = 30.0,
        timeout: float = 300.0,
        maxAddresses: int = 5,
        delayWarning: float | None = None,
        returnLimit: int | None = DEFAULT_RETURN_LIMIT,
        connectionCacheTime: float = 2.0,
        softBounce: bool = False,
        security=None,
    ) -> None:
        """
        @param queue: the L{Queue} (or L{mailproto.testing.MemoryQueue}).
        @param maxConnections: connections open at once, overall.
        @param maxMessagesPerConnection: jobs given to one connection.
        @param smartHost: the host to send everything through (a
            L{SmartHost}, or C{"host:port"}); by MX records if C{None}.
        @param maxConnectionsPerDestination: connections open at once to
            one destination; C{maxConnections} if C{None}.
        @param schedule: the L{RetrySchedule}; Postfix's if C{None}.
        @param hostname: the relay's name, for EHLO and the reports;
            the machine's if C{None}.
        @param tls: the TLS policy for mail exchangers (L{MAY} if C{None}).
        @param tlsPolicies: TLS policies for some domains, by domain.
        @param port: the mail exchangers' port; L{PORT} if C{None}.
        @param mxcalc: the L{MXCalculator}.
        @param reactor: the reactor (TCP, SSL, time); the global one if
            C{None}.
        @param connectTimeout: seconds to wait for a connection.
        @param timeout: seconds to wait for each reply.
        @param maxAddresses: how many addresses one connection tries.
        @param delayWarning: after how many seconds in the queue a sender
            is told once that delivery is delayed (for recipients whose
            NOTIFY allows it); never if C{None}.
        @param returnLimit: the largest message returned whole in a report.
        @param connectionCacheTime: how long a connection with nothing
            more to send waits for more mail to its destination before it
            says QUIT (0: not at all).
        @param softBounce: whether every permanent failure (a C{5xx} reply,
            or the relay's own, as a domain that does not exist) defers
            the recipient instead, as Postfix's C{soft_bounce}: for
            testing a new setup without returning mail.  Messages still
            expire after the schedule's lifetime.
        @param security: the L{SecurityPolicies
            <mailproto._security._policies.SecurityPolicies>} (MTA-STS,
            DANE, per-domain modes, TLS reports) for mail exchangers; if
            C{None}, C{tls} and C{tlsPolicies} alone decide.  Either way a
            domain in C{tlsPolicies} gets its policy there.
        """
        if reactor is None:
            from twisted.internet import reactor
        if maxConnections < 1 or maxMessagesPerConnection < 1:
            raise ValueError("maxConnections and maxMessagesPerConnection must be at least 1")
        self.queue = queue
        self.maxConnections = maxConnections
        self.maxMessagesPerConnection = maxMessagesPerConnection
        self.maxConnectionsPerDestination = maxConnectionsPerDestination or maxConnections
        if isinstance(smartHost, str):
            smartHost = SmartHost.fromString(smartHost)
        self.smartHost = smartHost
        self.schedule = schedule or RetrySchedule()
        self.hostname = hostname or socket.getfqdn()
        self.tls = tls or TLSPolicy(MAY)
        self.tlsPolicies = {domainKey(d): p for d, p in (tlsPolicies or {}).items()}
        if port is not None:
            self.PORT = port
        if mxcalc is not None:
            self.mxcalc = mxcalc
        self.reactor = reactor
        self.connectTimeout = connectTimeout
        self.timeout = timeout
        self.maxAddresses = maxAddresses
        self.delayWarning = delayWarning
        self.returnLimit = returnLimit
        self.fArgs: tuple = ()
        self.fKwArgs: dict = {}
        self.running = False
        self.connectionCacheTime = connectionCacheTime
        self.softBounce = softBounce
        self.security = security
        self.stats = collections.Counter()
        self.outcomeListeners: list = []
        self.due = DueTimes(self, self._wakeUp)
        self.lines = DestinationLines(self)
        self.recorder = AttemptRecorder(self)
        self._inFlight: dict[str, MessageAttempt] = {}
        self._connections: list[Connection] = []
        self._wakeCall = None
        self._idle: list[defer.Deferred] = []

    @property
    def managed(self) -> dict:
        """
        twisted.mail's view of the sessions in progress: each relayer
        factory, with the jobs it has not answered yet.
        """
        return {c.session.factory: c.unanswered for c in self._connections if c.session is not None and c.session.factory is not None}

    # -- running ------------------------------------------------------------

    def start(self) -> None:
        """
        Start sending: every queued message is scheduled, and new ones are
        sent as soon as they are committed.  Recover the queue first.
        """
        if self.running:
            return
        self.running = True
        if self.softBounce:
            _log.warn("Soft bounce is on: permanent failures are deferred, not returned to their senders")
        self.queue.listeners.append(self._queued)
        for queueID in self.queue.ids():
            self.due.schedule(self.queue.getEnvelope(queueID))
        self._wake()

    def stop(self) -> None:
        """
        Stop starting connections and attempts; those in progress go on to
        their end (their messages stay queued either way).
        """
        if not self.running:
            return
        self.running = False
        if self._queued in self.queue.listeners:
            self.queue.listeners.remove(self._queued)
        self.due.cancel()
        if self._wakeCall is not None and self._wakeCall.active():
            self._wakeCall.cancel()
        self._wakeCall = None
        self.lines.unparkAll()

    def whenIdle(self) -> defer.Deferred:
        """
        @return: a C{Deferred} that fires once no attempt is in progress.
        """
        d = defer.Deferred()
        if not self._inFlight:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    def checkState(self):
        """
        Start attempts for every due message, as far as the connection
        limits allow (twisted.mail's periodic entry point; the manager
        also runs by itself once L{start}ed).

        @return: a C{Deferred} that fires when the connections this call
            opened are over, or C{None} if it opened none.
        """
        if not self.running:
            for envelope in self.queue.due(self._now()):
                self.due.schedule(envelope)
        started = self._run()
        if not started:
            return None
        return defer.DeferredList([c.done for c in started])

    # -- what an operator asks for -----------------------------------------

    def inFlight(self) -> list[str]:
        """
        @return: the queue ids of the messages being sent now.
        """
        return sorted(self._inFlight)

    def flush(self, queueID: str | None = None) -> list[str]:
        """
        Try waiting messages now rather than at their next attempt (a
        message being sent is left to its attempt, a held one held).

        @param queueID: the one message to try, or C{None} for all.
        @return: the ids of the messages made due.
        @raise KeyError: if C{queueID} is not queued.
        """
        ids = self.queue.ids() if queueID is None else [self.queue.getEnvelope(queueID).id]
        now = self._now()
        due = []
        for each in ids:
            envelope = self.queue.getEnvelope(each)
            if each in self._inFlight or not envelope.waiting or envelope.held:
                continue
            envelope.nextAttempt = min(envelope.nextAttempt, now)
            self.due.schedule(envelope)
            due.append(each)
        self._wake()
        return due

    def requeue(self, queueID: str) -> defer.Deferred:
        """
        Start a message's retries over: its attempt count back to 0 (so
        the next delay is the schedule's first), no delay warning sent, and
        due now.  Its lifetime still counts from when it arrived.

        @return: a C{Deferred} that fires when the new state is on disk.
        @raise KeyError: if C{queueID} is not queued.
        @raise ValueError: if it is being sent now.
        """
        envelope = self.queue.getEnvelope(queueID)
        if queueID in self._inFlight:
            raise ValueError(f"{queueID} is being sent now; try again when the attempt is over")
        envelope.attempts = 0
        envelope.warned = False
        envelope.nextAttempt = self._now()
        d = self.queue.update(envelope)
        self.due.schedule(envelope)
        self._wake()
        _log.info("Requeued {queueID}", queueID=queueID)
        return d

    def delete(self, queueID: str) -> defer.Deferred:
        """
        Take a message out of the queue without sending it on or reporting
        it to its sender.

        @return: a C{Deferred} that fires when it is gone.
        @raise KeyError: if C{queueID} is not queued.
        @raise ValueError: if it is being sent now.
        """
        self.queue.getEnvelope(queueID)
        if queueID in self._inFlight:
            raise ValueError(f"{queueID} is being sent now; try again when the attempt is over")
        _log.info("Deleted {queueID}", queueID=queueID)
        return self.queue.remove(queueID)

    def hold(self, queueID: str) -> defer.Deferred:
        """
        Put a message on hold: it is not attempted until L{release}d, even
        across restarts (Postfix's hold queue).

        @return: a C{Deferred} that fires, when the new state is on disk,
            with whether the message was not held before.
        @raise KeyError: if C{queueID} is not queued.
        @raise ValueError: if it is being sent now.
        """
        envelope = self.queue.getEnvelope(queueID)
        if queueID in self._inFlight:
            raise ValueError(f"{queueID} is being sent now; try again when the attempt is over")
        if envelope.held:
            return defer.succeed(False)
        envelope.held = True
        _log.info("Held {queueID}", queueID=queueID)
        return self.queue.update(envelope).addCallback(lambda _: True)

    def release(self, queueID: str) -> defer.Deferred:
        """
        Take a message off hold: it is due now.

        @return: a C{Deferred} that fires, when the new state is on disk,
            with whether the message was held.
        @raise KeyError: if C{queueID} is not queued.
        """
        envelope = self.queue.getEnvelope(queueID)
        if not envelope.held:
            return defer.succeed(False)
        envelope.held = False
        envelope.nextAttempt = min(envelope.nextAttempt, self._now())
        d = self.queue.update(envelope)
        self.due.schedule(envelope)
        self._wake()
        _log.info("Released {queueID}", queueID=queueID)
        return d.addCallback(lambda _: True)

    def _queued(self, envelope: Envelope) -> None:
        self.due.schedule(envelope)
        self._wake()

    def _wake(self) -> None:
        """
        Run soon, once for everything that happened in this turn of the
        reactor (so that messages arriving together share connections).
        """
        if self.running and self._wakeCall is None:
            self._wakeCall = self.reactor.callLater(0, self._wakeUp)

    def _wakeUp(self) -> None:
        self._wakeCall = None
        self._run()

    def _now(self) -> float:
        return self.reactor.seconds()

    def _run(self) -> list[Connection]:
        for envelope in self.due.popDue(self._now(), self._inFlight, self.maxActiveMessages - len(self._inFlight)):
            self._startAttempt(envelope)
        started = self.lines.dispatch(self._openConnection) if self.running or self.lines else []
        self._rearm()
        return started

    def _rearm(self) -> None:
        if self.running:
            self.due.rearm(self._inFlight, len(self._inFlight) < self.maxActiveMessages)

    # -- attempts --------------------------------------------------------------

    def _startAttempt(self, envelope: Envelope) -> None:
        attempt = MessageAttempt(envelope, self._now())
        self._inFlight[envelope.id] = attempt
        self.queue.setRelaying(envelope.id)
        byDestination, refused = sortRecipients(envelope, SMARTHOST if self.smartHost is not None else None)
        for address, refusal in refused.items():
            _log.warn("Cannot send {queueID} to <{recipient}>: {reply}", queueID=envelope.id, recipient=show(address), reply=refusal)
        opener, path = self._opener(envelope), self.queue.getPath(envelope.id)
        jobs = [attempt.add(Job(envelope, rcpts, destination, attempt, opener, path)) for destination, rcpts in byDestination.items()]
        nowhere = attempt.add(Job(envelope, [r for r in envelope.waiting if r.address in refused], "", attempt)) if refused else None
        if envelope.attempts:
            # (The first attempt follows the "Queued" line at once.)
            _log.info("Attempt {attempt} for {queueID} to {destinations}", attempt=envelope.attempts + 1, queueID=envelope.id, destinations=sorted(byDestination))
        for job in jobs:
            self.lines.add(job)
        if nowhere is not None:
            self.recorder.jobAnswered(nowhere, refused, None, True)

    def _opener(self, envelope: Envelope):
        if envelope.prefix:
            return lambda: PrefixedFile(envelope.prefix, self.queue.openMessage(envelope.id))
        return lambda: self.queue.openMessage(envelope.id)

    def attemptSettled(self, envelope: Envelope) -> None:
        """
        An attempt is over (L{AttemptRecorder}): the message waits for its
        next one, or is gone.
        """
        self._inFlight.pop(envelope.id, None)
        self.queue.setWaiting(envelope.id)
        try:
            self.queue.getEnvelope(envelope.id)
        except KeyError:
            pass
        else:
            self.due.schedule(envelope)
        if not self._inFlight:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
        self._rearm()

    # -- connections ---------------------------------------------------------

    def _openConnection(self, destination: str, jobs: list[Job]) -> Connection:
        connection = Connection(self, destination, jobs, self.tlsPolicyFor(destination))
        self._connections.append(connection)
        connection.start()
        return connection

    def connectionEnded(self, connection: Connection) -> None:
        """
        A connection is finished: its place goes to the next.
        """
        self.lines.ended(connection)
        if connection in self._connections:
            self._connections.remove(connection)
        self._wake()

    def tlsPolicyFor(self, destination: str) -> TLSPolicy:
        """
        @return: the L{TLSPolicy} for a destination.
        """
        if destination == SMARTHOST and self.smartHost is not None:
            return self.smartHost.tls
        return self.tlsPolicies.get(destination, self.tls)

    def secure(self, destination: str, route: Destination, jobs: list[Job]) -> defer.Deferred:
        """
        @return: a C{Deferred} firing with the L{DestinationSecurity} of a
            routed destination: what TLS each of its hosts gets.  MTA-STS
            and DANE are ignored only when every message of C{jobs} asked
            so (C{TLS-Required: No}).
        """
        if destination == SMARTHOST or self.security is None or destination in self.tlsPolicies:
            return defer.succeed(staticSecurity(destination, self.tlsPolicyFor(destination)))
        ignore = bool(jobs) and all(job.envelope.tlsOptional for job in jobs)
        return self.security.resolve(destination, route, ignorePolicies=ignore)

    def tlsSessionEnded(self, tls, host, address, outcome, reason, starttlsMissing: bool) -> None:
        """
        A session with a mail exchanger is over: its TLS outcome goes to
        the security policies' counters and reports.
        """
        if self.security is not None:
            self.security.sessionEnded(tls, host, address, outcome, reason, starttlsMissing)

    def route(self, destination: str) -> defer.Deferred:
        """
        @return: a C{Deferred} firing with the L{Destination} (hosts and
            addresses to try) for a destination.
        """
        if destination == SMARTHOST:
            host = self.smartHost.host
            return defer.succeed(Destination(host, (Candidate(0, host, (host,)),)))
        if self.mxcalc is None:
            self.mxcalc = MXCalculator(clock=self.reactor)
        return self.mxcalc.getRoute(destination)

    def connect(self, session: Session, address: str) -> None:
        """
        Open a session's connection to C{address}.
        """
        connection = session.connection
        session.factory = factory = self._makeFactory(session.jobs, session, connection)
        smartHost = self.smartHost if connection.destination == SMARTHOST else None
        port = smartHost.port if smartHost is not None else self.PORT
        if smartHost is not None and smartHost.implicitTLS:
            self.reactor.connectSSL(address, port, factory, connection.tls.contextFor(smartHost.host), timeout=self.connectTimeout)
        else:
            self.reactor.connectTCP(address, port, factory, timeout=self.connectTimeout)

    def _makeFactory(self, jobs, manager, connection):
        if self.fArgs:
            return self.factory(jobs, manager, *self.fArgs, **self.fKwArgs)
        return self.factory(jobs, manager, self.hostname, **self.fKwArgs)

    def configureRelayer(self, relayer, connection: Connection | None) -> None:
        """
        Set up a relayer for its connection: timeout, and for ESMTP the
        TLS policy and the smart host's credentials.  Subclasses may
        extend it.
        """
        relayer.timeout = self.timeout
        # Its time-outs run on the manager's clock, like everything else.
        relayer.callLater = self.reactor.callLater
        if connection is None or not isinstance(relayer, ESMTPClient):
            return
        smartHost = self.smartHost if connection.destination == SMARTHOST else None
        name = smartHost.host if smartHost is not None else (connection.host or connection.destination)
        session = connection.session
        configureSecurity(relayer, connection.tls, name, smartHost, connection.plaintext, session.outcome if session is not None else None)


class SmartHostESMTPRelayingManager(SmartHostSMTPRelayingManager):
    """
    The relaying manager with ESMTP relayers: the one to use.  With
    C{fArgs} empty, each relayer gets the relay's host name, the TLS policy
    of its destination and, for a smart host, its credentials.
    """

    factory = ESMTPManagedRelayerFactory

    def _makeFactory(self, jobs, manager, connection):
        if self.fArgs:
            return self.factory(jobs, manager, *self.fArgs, **self.fKwArgs)
        return self.factory(jobs, manager, None, None, self.hostname, **self.fKwArgs)


def _checkState(manager) -> None:
    manager.checkState()


def RelayStateHelper(manager, delay: float) -> TimerService:
    """
    A service that prompts a relaying manager to check the queue every
    C{delay} seconds (twisted.mail's way of driving it; a started
    manager also runs by itself).
    """
    return TimerService(delay, _checkState, manager)
