# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
One connection's worth of relaying: a destination's jobs, its route, and
each of its addresses in turn until one takes the jobs.

A L{Connection} goes through these states::

  =========  ===========================================================
  state      leaves it when
  =========  ===========================================================
  routing    the route is found: I{securing}; or not found: every job
             gets the routing failure, I{finished}
  securing   the destination's TLS policy is known
             (L{mailproto._security._policies}): I{trying} its first
             address the policy allows; or no address is allowed: every
             job is deferred with the policy's reply, I{finished}
  trying     a session (L{Session}) with one address is over: its
             unanswered jobs go to the same address without TLS (TLS
             failed under C{may}, nothing answered yet), to the next
             address (nothing answered yet), or are deferred with the
             reason (something was answered, or no address is left);
             every job answered: I{finished}
  finished   never (C{done} has fired)
  =========  ===========================================================

The connection alone owns its jobs: it takes them from the destination's
line, hands them to the session's relayer, and gives each job's replies
to the attempt it belongs to.  A job whose message has REQUIRETLS (RFC
8689) goes only where every host the policy allows has its certificate
checked; elsewhere it fails at once with C{5.7.30}.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailproto._jobs import Job, ownReply
from mailproto._mx import Candidate, Destination
from mailproto._relayers import IRelayOwner
from mailproto._replies import Reply
from mailproto._errors import TLSRequiredError
from mailproto._security._policies import requireTLSRefusal
from mailproto._security._webpki import TLSOutcome
from mailproto._smarthost import MAY, SMARTHOST, TLSPolicy
from mailproto._verdicts import connectionReply, refusedConfiguration, refusesSession, routingReply, sessionDeferral, tooMany

_log = Logger(namespace="mailproto.relaymanager")

ROUTING, SECURING, TRYING, FINISHED = "routing", "securing", "trying", "finished"
"""The states of a L{Connection}."""


@implementer(IRelayOwner)
class Session:
    """
    One session with one address of a connection: the owner its relayer
    reports to (L{IRelayOwner}).  Once over, it ignores its relayer.

    @ivar connection: the L{Connection}.
    @ivar jobs: the jobs given at first.
    @ivar over: whether the session has ended.
    """

    def __init__(self, connection: Connection, jobs: list[Job]) -> None:
        self.connection = connection
        self.jobs = jobs
        self.over = False
        #: The relayer factory made for it.
        self.factory = None
        #: The relayer, once configured.
        self.relayer = None
        #: What the session learnt about TLS.
        self.outcome = TLSOutcome()
        self._configurationLogged = False

    def configureRelayer(self, relayer) -> None:
        self.relayer = relayer
        self.connection.manager.configureRelayer(relayer, self.connection)

    def jobAnswered(self, job: Job, replies: dict[bytes, Reply], dsn: bool) -> list[Job]:
        """
        Replies that refuse the session rather than the message
        (L{refusesSession}) defer their recipients, the first logged as a
        configuration error.  The recipients refused as too many for one
        transaction (RFC 5321 section 4.5.3.1.10), when some others were
        delivered in it, become a new job sent next on this session.
        """
        if self.over or job.answered:
            return []
        connection = self.connection
        replies = self._sessionRefusals(job, replies)
        following = []
        rest = tooMany(job, replies)
        if rest and job.attempt is not None:
            following = [job.attempt.split(job, rest)]
            connection.jobs.extend(following)
            taken = {r.address for r in rest}
            replies = {address: reply for address, reply in replies.items() if address not in taken}
        connection.answered += 1
        connection.manager.recorder.jobAnswered(job, replies, connection.host, dsn)
        return following

    def _sessionRefusals(self, job: Job, replies: dict[bytes, Reply]) -> dict[bytes, Reply]:
        refused = {address: reply for address, reply in replies.items() if refusesSession(reply)}
        if not refused:
            return replies
        if not self._configurationLogged:
            self._configurationLogged = True
            _log.error(
                "Configuration error: {host} refused the session ({reply}); check the relay's AUTH and TLS "
                "settings for it; {queueID} and the rest of its mail are deferred",
                host=self.connection.host,
                reply=next(iter(refused.values())).summary(),
                queueID=job.envelope.id,
            )
        return {**replies, **{address: sessionDeferral(reply) for address, reply in refused.items()}}

    def moreJobs(self) -> list[Job]:
        if self.over:
            return []
        jobs = self.connection.admit(self.connection.manager.lines.moreJobs(self.connection))
        self.connection.jobs.extend(jobs)
        return jobs

    def park(self, relayer) -> bool:
        return not self.over and self.connection.manager.lines.park(self.connection, relayer)

    def ended(self, reason, connected: bool, tlsFailed: bool) -> None:
        if self.over:
            return
        self.over = True
        self.connection.tlsSessionEnded(self, reason, tlsFailed)
        self.connection.sessionEnded(reason, connected, tlsFailed)


class Connection:
    """
    The relay's attempt to deliver some jobs to one destination: routing,
    then each address in turn.  See the module docstring for its states.

    @ivar manager: the relaying manager.
    @ivar destination: the destination's key.
    @ivar jobs: every job given to it.
    @ivar state: L{ROUTING}, L{SECURING}, L{TRYING} or L{FINISHED}.
    @ivar host: the host being tried (or last tried).
    @ivar answered: how many jobs the current session answered.
    @ivar session: the current L{Session}, or C{None}.
    @ivar done: a C{Deferred} that fires when it is finished.
    @ivar tls: the TLS policy of the host being tried (a L{HostTLS
        <mailproto._security._policies.HostTLS>}); the destination's
        configured L{TLSPolicy} until its security is known.
    @ivar security: the destination's L{DestinationSecurity
        <mailproto._security._policies.DestinationSecurity>}, once known.
    @ivar plaintext: whether the session being made goes without TLS: the
        same address again after TLS failed under the policy C{may}.
    """

    def __init__(self, manager, destination: str, jobs: list[Job], tls: TLSPolicy) -> None:
        self.manager = manager
        self.destination = destination
        self.jobs = jobs
        self.state = ROUTING
        self.addresses: list[tuple[Candidate, str]] = []
        self.host: str | None = None
        self.candidate: Candidate | None = None
        self.answered = 0
        self.session: Session | None = None
        self.lastError = None
        self.done = defer.Deferred()
        self.tls = tls
        self.security = None
        self.plaintext = False
        self._address: str | None = None

    def __repr__(self) -> str:
        return f"<Connection to {self.destination} via {self.host} {self.state}>"

    @property
    def unanswered(self) -> list[Job]:
        """
        The jobs without replies yet.
        """
        return [job for job in self.jobs if not job.answered]

    def start(self) -> None:
        """
        Route the destination, then try its addresses.
        """
        d = self.manager.route(self.destination)
        d.addCallbacks(self._routed, self._notRouted)
        d.addErrback(self._bug)

    def _routed(self, route: Destination) -> None:
        self.state = SECURING
        d = self.manager.secure(self.destination, route, self.jobs)
        d.addCallback(self._secured, route)
        d.addErrback(self._bug)

    def _secured(self, security, route: Destination) -> None:
        self.security = security
        if security.refusal is not None:
            self._finish(self.jobs, security.refusal)
            return
        limit = self.manager.maxAddresses
        allowed = [(candidate, address) for candidate in route if security.allows(candidate.host) for address in candidate.addresses]
        self.addresses = allowed[:limit]
        self.state = TRYING
        self.admit(self.jobs)
        self._next()

    def admit(self, jobs: list[Job]) -> list[Job]:
        """
        @return: those of C{jobs} this connection may carry; a job whose
            message has REQUIRETLS fails at once (C{5.7.30}) unless every
            host allowed has its certificate checked.
        """
        if not any(job.envelope.requireTLS for job in jobs) or self._validated():
            return jobs
        kept = []
        for job in jobs:
            if job.envelope.requireTLS:
                self.manager.recorder.jobFailed(job, requireTLSRefusal(), None)
            else:
                kept.append(job)
        return kept

    def _notRouted(self, failure: Failure) -> None:
        reply = routingReply(failure)
        if reply is None:
            _log.failure("Routing {destination} failed", failure, destination=self.destination)
            reply = ownReply(451, "4.4.3", "Routing failed")
        self._finish(self.jobs, reply)

    def _bug(self, failure: Failure) -> None:
        _log.failure("Relaying to {destination} failed", failure, destination=self.destination)
        self._finish(self.unanswered, ownReply(451, "4.3.0", "Internal error"))

    def _validated(self) -> bool:
        """
        Whether every host left to try (and the one being tried) has its
        certificate checked.
        """
        hosts = {candidate.host for candidate, _ in self.addresses} | ({self.host} if self.host else set())
        if self.security is None or not hosts:
            return False
        return all(getattr(self.security.forHost(host), "validated", False) for host in hosts)

    def _next(self, plaintext: bool = False) -> None:
        jobs = self.unanswered
        if not jobs:
            self._finish([], None)
            return
        if not self.addresses:
            reply = connectionReply(self.lastError) if self.lastError is not None else ownReply(451, "4.4.1", "No address to connect to")
            self._finish(jobs, reply)
            return
        self.candidate, self._address = self.addresses.pop(0)
        self.host = self.candidate.host
        if self.security is not None:
            self.tls = self.security.forHost(self.host) or self.tls
        self.plaintext = plaintext
        self.answered = 0
        self.session = Session(self, jobs)
        self.manager.connect(self.session, self._address)

    def tlsSessionEnded(self, session: Session, reason, tlsFailed: bool) -> None:
        """
        Tell the relay's TLS policies what a session learnt about TLS.
        """
        relayer = session.relayer
        if relayer is None or self.plaintext:
            return
        session.outcome.established = bool(getattr(relayer, "_startedTLS", False)) and not tlsFailed
        # STARTTLS not offered: refused under a policy that requires TLS,
        # or the mail went without it (may, MTA-STS testing).
        missing = isinstance(reason, TLSRequiredError) or (isinstance(reason, Failure) and reason.check(TLSRequiredError) is not None)
        missing = missing or (getattr(relayer, "context", None) is not None and getattr(relayer, "starttlsOffered", None) is False)
        self.manager.tlsSessionEnded(self.tls, self.host, self._address, session.outcome, reason, missing)

    def sessionEnded(self, reason, connected: bool, tlsFailed: bool) -> None:
        """
        The session with one address is over; its unanswered jobs go on
        (see the module docstring).
        """
        self.session = None
        if reason is not None:
            self.lastError = reason
            if self.destination == SMARTHOST and refusedConfiguration(reason):
                _log.error(
                    "Configuration error: {host} refused the session ({reply}); check the relay's AUTH and TLS "
                    "settings for it; its mail is deferred",
                    host=self.host,
                    reply=connectionReply(reason).summary(),
                )
        self._judgeHost(connected)
        leftover = self.unanswered
        why = connectionReply(reason).summary() if reason is not None else "no reason given"
        if not leftover:
            self._finish([], None)
        elif self.answered == 0 and tlsFailed and self.tls.mode == MAY and not self.plaintext:
            _log.info("Relay to {destination} via {host}: TLS failed ({reason}); trying it again without TLS", destination=self.destination, host=self.host, reason=why)
            self.addresses.insert(0, (self.candidate, self._address))
            self._next(plaintext=True)
        elif self.answered == 0:
            if reason is not None and self.addresses:
                _log.info("Relay to {destination} via {host}: {reason}; trying the next address", destination=self.destination, host=self.host, reason=why)
            self._next()
        else:
            self._finish(leftover, connectionReply(reason) if reason is not None else ownReply(451, "4.4.2", "Connection lost"))

    def _judgeHost(self, connected: bool) -> None:
        """
        Tell the MX calculator how the host did: good if it answered a
        job, bad if it could not be reached.
        """
        mx = self.manager.mxcalc
        if mx is None or self.candidate is None or self.destination == SMARTHOST:
            return
        if connected and self.answered:
            mx.markGood(self.host)
        elif not connected:
            mx.markBad(self.host)

    def _finish(self, jobs: list[Job], reply: Reply | None) -> None:
        for job in jobs:
            if not job.answered:
                self.manager.recorder.jobFailed(job, reply, self.host)
        if self.state != FINISHED:
            self.state = FINISHED
            self.manager.connectionEnded(self)
            self.done.callback(None)
