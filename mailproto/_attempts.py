# -*- test-case-name: mailproto.test.test_attempts -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
What one delivery attempt does to a queued message: the per-recipient
outcome, the retry schedule, and expiry.

A recipient's states (L{mailproto._queue.Recipient.state}):

  - C{waiting}: to be delivered; after a C{4xx} reply, a lost connection or
    a temporary routing failure it stays here, with the next attempt
    scheduled by the L{RetrySchedule};
  - C{delivered}: a C{2xx} reply;
  - C{failed}: a C{5xx} reply, a permanent routing failure, or still
    waiting when the message's lifetime is over (expiry: it keeps its
    last, temporary, reply).  Failed recipients are reported to the
    sender once.

Replies are L{Reply} values (code, enhanced status, lines), kept so in
the queue's state.

Nothing here touches the disk or the network: L{recordAttempt} changes an
L{Envelope <mailproto.relaymanager.Envelope>} in memory and says what the
relay should do next.
"""

from __future__ import annotations

import dataclasses

from mailproto._queue import DELIVERED, FAILED, Envelope, Recipient
from mailproto._replies import Reply


@dataclasses.dataclass(frozen=True)
class RetrySchedule:
    """
    When to try again: after C{first} seconds, doubling after each attempt
    up to C{maximum}; a message still waiting C{lifetime} seconds after it
    arrived expires.  The defaults are Postfix's (300 s, 4000 s, 5 days).
    """

    first: float = 300.0
    maximum: float = 4000.0
    lifetime: float = 5 * 24 * 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.maximum:
            raise ValueError("the first delay must be positive and at most the maximum")
        if self.lifetime <= 0:
            raise ValueError("the lifetime must be positive")

    def delay(self, attempts: int) -> float:
        """
        @param attempts: attempts made so far (1 or more).
        @return: seconds to wait before the next one.
        """
        # The exponent is bounded: a count read from a state file may be
        # huge, and 2 ** 64 seconds is past any maximum already.
        return min(self.first * 2 ** min(max(attempts - 1, 0), 64), self.maximum)


@dataclasses.dataclass
class AttemptResult:
    """
    What an attempt changed.

    @ivar delivered: recipients delivered by this attempt.
    @ivar failed: recipients that failed by this attempt (to report).
    @ivar deferred: recipients still waiting.
    @ivar expired: whether the message's lifetime ran out.
    """

    delivered: list[Recipient] = dataclasses.field(default_factory=list)
    failed: list[Recipient] = dataclasses.field(default_factory=list)
    deferred: list[Recipient] = dataclasses.field(default_factory=list)
    expired: bool = False

    @property
    def done(self) -> bool:
        """
        Whether the message needs no more attempts.
        """
        return not self.deferred


def recordAttempt(
    envelope: Envelope,
    replies: dict[bytes, Reply],
    now: float,
    schedule: RetrySchedule = RetrySchedule(),
    default: Reply | None = None,
    hosts: dict[bytes, str] | None = None,
) -> AttemptResult:
    """
    Record the outcome of an attempt to deliver a message.

    @param envelope: the message's envelope; its recipients' states,
        C{lastReply} and C{lastHost}, and its C{attempts}, C{nextAttempt}
        and C{lastReply} are updated.
    @param replies: the final reply for each recipient tried, by address,
        as C{Reply(550, [b"No such user"], b"5.1.1")}.
    @param now: the time of the attempt.
    @param schedule: the retry schedule.
    @param default: the outcome for waiting recipients without a reply
        (the connection failed, or the route could not be found), such as
        C{Reply(451, [b"Connection refused"], b"4.4.1")}; if C{None}, they
        are left as they were, without a reply.
    @param hosts: the host that sent each reply, by address; a reply
        without one is the relay's own.
    @return: what changed.  A recipient still waiting when the message's
        lifetime is over fails, keeping its last reply
        (L{Recipient.expired <mailproto._queue.Recipient.expired>}).
    """
    result = AttemptResult()
    hosts = hosts or {}
    envelope.attempts += 1
    for recipient in envelope.waiting:
        reply = replies.get(recipient.address, default)
        if reply is None:
            result.deferred.append(recipient)
            continue
        recipient.lastReply = envelope.lastReply = reply
        recipient.lastHost = hosts.get(recipient.address)
        if reply.isPositive:
            recipient.state = DELIVERED
            result.delivered.append(recipient)
        elif reply.isPermanent:
            recipient.state = FAILED
            result.failed.append(recipient)
        else:
            result.deferred.append(recipient)
    if result.deferred and now - envelope.received >= schedule.lifetime:
        result.expired = True
        for recipient in result.deferred:
            recipient.state = FAILED
            result.failed.append(recipient)
        result.deferred = []
    if result.deferred:
        envelope.nextAttempt = now + schedule.delay(envelope.attempts)
    return result
