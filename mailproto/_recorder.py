# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The end of a message's attempt: each job's replies go to its
L{MessageAttempt <mailproto._jobs.MessageAttempt>}; once every job is
answered the attempt is recorded (L{recordAttempt}): delivered recipients
are done, C{4xx} ones wait for the next attempt on the retry schedule,
C{5xx} ones and expired ones are reported to the sender in one delivery
status notification, queued before the message's new state is written.
A message with no recipient left waiting is removed from the queue.

If a report cannot be queued or the state cannot be written, the message
stays as it was on disk, and its failed recipients wait again: they are
reported on a later attempt.
"""

from __future__ import annotations

import datetime

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailproto._attempts import AttemptResult, recordAttempt
from mailproto._jobs import Job, MessageAttempt
from mailproto._queue import WAITING, Envelope
from mailproto._replies import Reply
from mailproto._reports import Reporter, show
from mailproto._verdicts import softened

_log = Logger(namespace="mailproto.relaymanager")

# The log line for each recipient by the outcome of its attempt.
_OUTCOME_LINES = (
    ("delivered", "Delivered {queueID} to <{recipient}> via {host}: {reply}"),
    ("deferred", "Deferred {queueID} for <{recipient}> until {until}: {reply}"),
    ("failed", "Failed {queueID} for <{recipient}>: {reply}"),
)


def _isoTime(when: float) -> str:
    """
    @return: a time as logs show it: ISO 8601, in UTC, to the second.
    """
    try:
        return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return repr(when)


class AttemptRecorder:
    """
    Records attempts for a relaying manager.

    @ivar manager: the manager: its C{queue}, C{schedule}, C{softBounce},
        C{delayWarning}, C{stats}, C{outcomeListeners} and C{running} are
        used as they are now, and its C{attemptSettled(envelope)} is
        called when an attempt is over.
    @ivar reporter: the L{Reporter}.
    """

    def __init__(self, manager) -> None:
        self.manager = manager
        self.reporter = Reporter(manager)

    def jobAnswered(self, job: Job, replies: dict[bytes, Reply], host: str | None, dsn: bool) -> None:
        """
        A server answered a job: C{replies} by address.
        """
        self._answer(job, replies, host, dsn)

    def jobFailed(self, job: Job, reply: Reply | None, host: str | None) -> None:
        """
        A job's connection failed: each recipient gets the relay's own
        C{reply} -- unless the relay's own stop cut it, in which case its
        recipients have no outcome in this attempt.
        """
        self._answer(job, {r.address: reply for r in job.recipients if reply is not None}, None, True, cut=not self.manager.running)

    def _answer(self, job: Job, replies: dict[bytes, Reply], host: str | None, dsn: bool, cut: bool = False) -> None:
        attempt = job.attempt
        if job.answered or attempt is None:
            job.answered = True
            job.close()
            return
        if self.manager.softBounce:
            replies = {address: softened(reply) for address, reply in replies.items()}
        if attempt.answer(job, replies, host, dsn, cut):
            self.record(attempt)

    def record(self, attempt: MessageAttempt) -> None:
        """
        Every job of C{attempt} is answered: record it.
        """
        manager = self.manager
        envelope = attempt.envelope
        now = manager.reactor.seconds()
        if attempt.interrupted and not attempt.replies:
            # The relay stopped before anyone answered: the state on disk
            # stays as it was, and the next start tries again at once.
            self._settled(attempt)
            return
        result = recordAttempt(envelope, attempt.replies, now, manager.schedule, hosts=attempt.hosts)
        if attempt.interrupted and result.deferred:
            envelope.nextAttempt = now
        self._log(envelope, result)
        for listener in manager.outcomeListeners:
            try:
                listener(envelope, result, attempt.started, now)
            except Exception:
                _log.failure("Outcome listener failed for {queueID}", queueID=envelope.id)
        d = defer.gatherResults(self._reports(attempt, result, now), consumeErrors=True)
        d.addCallback(lambda _: self._save(envelope))
        d.addErrback(self._notSaved, attempt, result, now)
        d.addBoth(lambda _: self._settled(attempt))

    def _log(self, envelope: Envelope, result: AttemptResult) -> None:
        stats = self.manager.stats
        for outcome, text in _OUTCOME_LINES:
            for recipient in getattr(result, outcome):
                stats[outcome] += 1
                reply = recipient.lastReply
                _log.info(
                    text,
                    queueID=envelope.id,
                    recipient=show(recipient.address),
                    host=recipient.lastHost,
                    nextAttempt=envelope.nextAttempt,
                    until=_isoTime(envelope.nextAttempt),
                    reply=f"expired, last reply: {reply or 'none'}" if recipient.expired else reply,
                )

    def _reports(self, attempt: MessageAttempt, result: AttemptResult, now: float) -> list[defer.Deferred]:
        envelope = attempt.envelope
        report = self.reporter.report
        reports = []
        if result.failed:
            reports.append(defer.maybeDeferred(report, envelope, result.failed, "failed", now))
        # RFC 3461 section 5.2.2: a server without DSN cannot report the
        # delivery a recipient asked to hear of; the relay says "relayed".
        relayed = [r for r in result.delivered if r.address in attempt.withoutDSN and r.notify and b"SUCCESS" in (n.upper() for n in r.notify)]
        if relayed:
            reports.append(defer.maybeDeferred(report, envelope, relayed, "relayed", now))
        delayWarning = self.manager.delayWarning
        if result.deferred and delayWarning is not None and not envelope.warned and now - envelope.received >= delayWarning:
            envelope.warned = True
            reports.append(defer.maybeDeferred(report, envelope, result.deferred, "delayed", now))
        return reports

    def _save(self, envelope: Envelope) -> defer.Deferred:
        queue = self.manager.queue
        if envelope.waiting:
            return queue.update(envelope)
        # Done: its last recipient's line (delivered, or failed) said so.
        return queue.remove(envelope.id)

    def _notSaved(self, failure: Failure, attempt: MessageAttempt, result: AttemptResult, now: float) -> None:
        envelope = attempt.envelope
        if failure.check(defer.FirstError):
            failure = failure.value.subFailure
        _log.failure("Could not record the attempt for {queueID}; it will be tried again", failure, queueID=envelope.id)
        for recipient in result.failed:
            recipient.state = WAITING
        envelope.nextAttempt = now + self.manager.schedule.delay(max(envelope.attempts, 1))

    def _settled(self, attempt: MessageAttempt) -> None:
        attempt.settle()
        self.manager.attemptSettled(attempt.envelope)
