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
    waiting when the message's lifetime is over (expiry).  Failed
    recipients are reported to the sender once.

Nothing here touches the disk or the network: L{recordAttempt} changes an
L{Envelope <mailproto.relaymanager.Envelope>} in memory and says what the
relay should do next.
"""

from __future__ import annotations

import dataclasses

from mailproto._queue import DELIVERED, FAILED, Envelope, Recipient


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


def _reply(code: int, text: str) -> str:
    return f"{code} {text}".strip()


def recordAttempt(
    envelope: Envelope,
    replies: dict[bytes, tuple[int, str]],
    now: float,
    schedule: RetrySchedule = RetrySchedule(),
    default: tuple[int, str] | None = None,
) -> AttemptResult:
    """
    Record the outcome of an attempt to deliver a message.

    @param envelope: the message's envelope; its recipients' states,
        C{attempts}, C{nextAttempt} and C{lastReply} are updated.
    @param replies: the final reply for each recipient tried, by address:
        C{(code, text)}, as C{(550, "5.1.1 No such user")}.
    @param now: the time of the attempt.
    @param schedule: the retry schedule.
    @param default: the outcome for waiting recipients without a reply
        (the connection failed, or the route could not be found), such as
        C{(451, "4.4.1 Connection refused")}; if C{None}, they are left
        as they were, without a reply.
    @return: what changed.
    """
    result = AttemptResult()
    envelope.attempts += 1
    for recipient in envelope.waiting:
        outcome = replies.get(recipient.address, default)
        if outcome is None:
            result.deferred.append(recipient)
            continue
        code, text = outcome
        recipient.lastReply = _reply(code, text)
        envelope.lastReply = recipient.lastReply
        if 200 <= code < 300:
            recipient.state = DELIVERED
            result.delivered.append(recipient)
        elif 500 <= code < 600:
            recipient.state = FAILED
            result.failed.append(recipient)
        else:
            result.deferred.append(recipient)
    if result.deferred and now - envelope.received >= schedule.lifetime:
        result.expired = True
        for recipient in result.deferred:
            recipient.state = FAILED
            last = recipient.lastReply or "no answer"
            recipient.lastReply = f"4.4.7 Message expired after {schedule.lifetime / 86400:g} days; last: {last}"
            result.failed.append(recipient)
        result.deferred = []
    if result.deferred:
        envelope.nextAttempt = now + schedule.delay(envelope.attempts)
    return result
