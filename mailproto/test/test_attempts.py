# -*- test-case-name: mailproto.test.test_attempts -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The outcome of a delivery attempt, over every recipient state and every
kind of outcome, the retry schedule, and expiry.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailproto._attempts import RetrySchedule, recordAttempt
from mailproto._queue import DELIVERED, FAILED, WAITING, Envelope, Recipient
from mailproto._replies import replyFromWire

DAY = 86400.0


def R(code: int, text: str):
    """A reply value: RR(550, "5.1.1 No such user")."""
    return replyFromWire(code, text.encode())


def envelope(*states, received=0.0) -> Envelope:
    recipients = [Recipient(b"r%d@example.com" % i, state=state) for i, state in enumerate(states)]
    return Envelope(id="0" * 12, sender=b"a@example.org", recipients=recipients, received=received)


class ScheduleTests(SynchronousTestCase):
    """
    L{RetrySchedule}.
    """

    def test_postfixDefaults(self):
        schedule = RetrySchedule()
        self.assertEqual([schedule.delay(n) for n in range(1, 8)], [300, 600, 1200, 2400, 4000, 4000, 4000])
        self.assertEqual(schedule.lifetime, 5 * DAY)

    def test_hugeAttemptCount(self):
        """
        An attempt count far beyond any schedule (as a state file may
        hold) gives the maximum delay at once.
        """
        self.assertEqual(RetrySchedule().delay(10**100), 4000)

    def test_invalid(self):
        for kw in ({"first": 0}, {"first": 10, "maximum": 5}, {"lifetime": 0}):
            self.assertRaises(ValueError, RetrySchedule, **kw)


class OutcomeTests(SynchronousTestCase):
    """
    L{recordAttempt}: each state of a recipient against each outcome.
    """

    OUTCOMES = {
        "2xx": (R(250, "2.0.0 ok"), DELIVERED, "delivered"),
        "4xx": (R(451, "4.3.0 later"), WAITING, "deferred"),
        "5xx": (R(550, "5.1.1 no such user"), FAILED, "failed"),
    }

    def test_waitingRecipient(self):
        """
        A waiting recipient: 2xx delivers, 4xx defers (with the next
        attempt scheduled), 5xx fails; the reply is kept.
        """
        for name, (reply, state, bucket) in self.OUTCOMES.items():
            e = envelope(WAITING)
            result = recordAttempt(e, {b"r0@example.com": reply}, now=100.0)
            self.assertEqual(e.recipients[0].state, state, name)
            self.assertEqual(e.recipients[0].lastReply, reply, name)
            self.assertIsNone(e.recipients[0].lastHost)
            self.assertEqual(getattr(result, bucket), [e.recipients[0]], name)
            self.assertEqual(e.attempts, 1)
            self.assertEqual(result.done, state != WAITING, name)
            if state == WAITING:
                self.assertEqual(e.nextAttempt, 400.0)

    def test_finishedRecipientsUntouched(self):
        """
        Delivered and failed recipients keep their state whatever the
        attempt says.
        """
        for state in (DELIVERED, FAILED):
            for name, (reply, _, _) in self.OUTCOMES.items():
                e = envelope(state)
                result = recordAttempt(e, {b"r0@example.com": reply}, now=100.0, default=R(451, "4.4.1 x"))
                self.assertEqual(e.recipients[0].state, state, (state, name))
                self.assertEqual((result.delivered, result.failed, result.deferred), ([], [], []))

    def test_noReply(self):
        """
        A waiting recipient without a reply: the default outcome if given
        (a refused connection defers; a permanent routing failure fails),
        else it stays as it was.
        """
        e = envelope(WAITING)
        result = recordAttempt(e, {}, now=100.0)
        self.assertEqual((e.recipients[0].state, e.recipients[0].lastReply), (WAITING, None))
        self.assertEqual(result.deferred, [e.recipients[0]])
        e = envelope(WAITING)
        recordAttempt(e, {}, now=100.0, default=R(451, "4.4.1 Connection refused"))
        self.assertEqual((e.recipients[0].state, str(e.lastReply)), (WAITING, "451 4.4.1 Connection refused"))
        e = envelope(WAITING)
        result = recordAttempt(e, {}, now=100.0, default=R(556, "5.1.10 null MX"))
        self.assertEqual(e.recipients[0].state, FAILED)
        self.assertTrue(result.done)

    def test_mixed(self):
        """
        Each recipient gets its own outcome in one attempt.
        """
        e = envelope(WAITING, WAITING, WAITING, DELIVERED)
        replies = {
            b"r0@example.com": R(250, "2.0.0 ok"),
            b"r1@example.com": R(452, "4.2.2 full"),
            b"r2@example.com": R(550, "5.1.1 unknown"),
        }
        result = recordAttempt(e, replies, now=10.0)
        self.assertEqual([r.state for r in e.recipients], [DELIVERED, WAITING, FAILED, DELIVERED])
        self.assertEqual([r.address for r in result.failed], [b"r2@example.com"])
        self.assertFalse(result.done)

    def test_hosts(self):
        """
        Each recipient keeps the host that sent its reply; a reply without
        one is the relay's own.
        """
        e = envelope(WAITING, WAITING)
        replies = {b"r0@example.com": R(250, "2.0.0 ok"), b"r1@example.com": R(451, "4.4.1 refused")}
        recordAttempt(e, replies, now=10.0, hosts={b"r0@example.com": "mx.example.com"})
        self.assertEqual([r.lastHost for r in e.recipients], ["mx.example.com", None])

    def test_backoff(self):
        """
        Each attempt that leaves a recipient waiting doubles the wait, up
        to the maximum.
        """
        e = envelope(WAITING)
        now = 0.0
        waits = []
        for i in range(7):
            recordAttempt(e, {b"r0@example.com": R(421, "4.7.0 busy")}, now=now)
            waits.append(e.nextAttempt - now)
            now = e.nextAttempt
        self.assertEqual(waits, [300, 600, 1200, 2400, 4000, 4000, 4000])

    def test_expiry(self):
        """
        A recipient still waiting when the lifetime is over fails, and
        keeps its last reply (so it is known to have expired); the message
        is done.
        """
        e = envelope(WAITING, WAITING, received=0.0)
        result = recordAttempt(
            e, {b"r0@example.com": R(451, "4.3.0 later"), b"r1@example.com": R(250, "2.0.0 ok")}, now=5 * DAY
        )
        self.assertTrue(result.expired)
        self.assertTrue(result.done)
        self.assertEqual(e.recipients[0].state, FAILED)
        self.assertEqual(str(e.recipients[0].lastReply), "451 4.3.0 later")
        self.assertTrue(e.recipients[0].expired)
        self.assertFalse(e.recipients[1].expired)
        self.assertEqual(e.recipients[1].state, DELIVERED)

    def test_notExpiredJustBefore(self):
        e = envelope(WAITING, received=0.0)
        result = recordAttempt(e, {b"r0@example.com": R(451, "4.3.0 later")}, now=5 * DAY - 1)
        self.assertFalse(result.expired)
        self.assertEqual(e.recipients[0].state, WAITING)
