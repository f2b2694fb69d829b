# -*- test-case-name: mailproto.test.test_jobs -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
L{mailproto._jobs}: a message attempt over every state and event, jobs'
replies as values, and the checks of queued addresses.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailproto._client import RecipientReply
from mailproto._jobs import RECORDING, SENDING, SETTLED, AttemptStateError, Job, MessageAttempt, ownReply, recipientRefusal, senderRefusal, sortRecipients
from mailproto._queue import Envelope, Recipient
from mailproto._replies import Reply

OK = Reply(250, [b"Ok"], b"2.0.0")
LATER = Reply(451, [b"Later"], b"4.3.0")
NO = Reply(550, [b"No such user"], b"5.1.1")


def _envelope(count: int = 2) -> Envelope:
    return Envelope("0" * 12, b"jo@example.org", [Recipient(b"r%d@example.com" % i) for i in range(count)])


class _File:
    closed = False

    def close(self):
        self.closed = True


def _attemptIn(state: str) -> tuple[MessageAttempt, list[Job]]:
    """
    An attempt of a two-recipient message in C{state}, with two jobs (one
    recipient each), none answered when sending.
    """
    envelope = _envelope()
    attempt = MessageAttempt(envelope)
    jobs = [attempt.add(Job(envelope, [r], "example.com", attempt, _File)) for r in envelope.recipients]
    if state in (RECORDING, SETTLED):
        for job in jobs:
            attempt.answer(job, {job.recipients[0].address: OK}, "mx.example.com")
    if state == SETTLED:
        attempt.settle()
    return attempt, jobs


class MessageAttemptStateTests(SynchronousTestCase):
    """
    Every state of L{MessageAttempt} against every event: the events of a
    state move it as its table says; the others are refused with
    L{AttemptStateError} and change nothing.
    """

    # The events, each a function of (attempt, jobs) returning what it
    # returned.
    EVENTS = {
        "answer, not the last job": lambda a, jobs: a.answer(jobs[0], {jobs[0].recipients[0].address: OK}, "mx"),
        "answer, the last job": lambda a, jobs: [a.answer(job, {job.recipients[0].address: LATER}, None) for job in jobs][-1],
        "answer, cut by a stop": lambda a, jobs: a.answer(jobs[0], {jobs[0].recipients[0].address: OK}, "mx", cut=True),
        "split": lambda a, jobs: a.split(jobs[0], list(jobs[0].recipients)),
        "add": lambda a, jobs: a.add(Job(a.envelope, [], "example.com", a)),
        "settle": lambda a, jobs: a.settle(),
    }
    ALLOWED = {
        SENDING: {"answer, not the last job": SENDING, "answer, the last job": RECORDING, "answer, cut by a stop": SENDING, "split": SENDING, "add": SENDING},
        RECORDING: {"settle": SETTLED},
        SETTLED: {},
    }

    def test_everyStateAndEvent(self):
        for state, allowed in self.ALLOWED.items():
            for event, perform in self.EVENTS.items():
                attempt, jobs = _attemptIn(state)
                before = (dict(attempt.replies), attempt.unanswered, attempt.interrupted)
                if event in allowed:
                    perform(attempt, jobs)
                    self.assertEqual(attempt.state, allowed[event], (state, event))
                else:
                    self.assertRaises(AttemptStateError, perform, attempt, jobs)
                    self.assertEqual(attempt.state, state, (state, event))
                    self.assertEqual((dict(attempt.replies), attempt.unanswered, attempt.interrupted), before, (state, event))

    def test_answerKeepsRepliesAndHosts(self):
        attempt, jobs = _attemptIn(SENDING)
        self.assertFalse(attempt.answer(jobs[0], {b"r0@example.com": OK}, "mx.example.com", dsn=False))
        self.assertTrue(attempt.answer(jobs[1], {b"r1@example.com": NO}, None))
        self.assertEqual(attempt.replies, {b"r0@example.com": OK, b"r1@example.com": NO})
        self.assertEqual(attempt.hosts, {b"r0@example.com": "mx.example.com"})
        self.assertEqual(attempt.withoutDSN, {b"r0@example.com"})
        self.assertTrue(all(job.answered for job in jobs))

    def test_answerTwiceRefused(self):
        attempt, jobs = _attemptIn(SENDING)
        attempt.answer(jobs[0], {b"r0@example.com": OK})
        self.assertRaises(AttemptStateError, attempt.answer, jobs[0], {b"r0@example.com": NO})
        self.assertEqual(attempt.replies, {b"r0@example.com": OK})
        self.assertEqual(attempt.unanswered, 1)

    def test_answerOfAnotherAttemptRefused(self):
        attempt, jobs = _attemptIn(SENDING)
        other, otherJobs = _attemptIn(SENDING)
        self.assertRaises(AttemptStateError, attempt.answer, otherJobs[0], {b"r0@example.com": OK})

    def test_cutKeepsNoOutcome(self):
        attempt, jobs = _attemptIn(SENDING)
        attempt.answer(jobs[0], {b"r0@example.com": LATER}, cut=True)
        self.assertEqual((attempt.replies, attempt.interrupted), ({}, True))

    def test_splitWaitsForOneMore(self):
        envelope = _envelope(3)
        attempt = MessageAttempt(envelope)
        job = attempt.add(Job(envelope, list(envelope.recipients), "example.com", attempt))
        rest = attempt.split(job, envelope.recipients[1:])
        self.assertEqual(([r.address for r in job.recipients], [r.address for r in rest.recipients]), ([b"r0@example.com"], [b"r1@example.com", b"r2@example.com"]))
        self.assertEqual(attempt.unanswered, 2)
        self.assertFalse(attempt.answer(job, {b"r0@example.com": OK}))
        self.assertTrue(attempt.answer(rest, {b"r1@example.com": OK, b"r2@example.com": OK}))

    def test_answerClosesTheMessage(self):
        attempt, jobs = _attemptIn(SENDING)
        opened = jobs[0].open()
        attempt.answer(jobs[0], {})
        self.assertTrue(opened.closed)


class JobRepliesTests(SynchronousTestCase):
    """
    L{Job.replies}: each recipient's final reply, as a value.
    """

    def setUp(self):
        envelope = _envelope(3)
        self.job = Job(envelope, list(envelope.recipients), "example.com")

    def test_valuesFromTheClient(self):
        """
        A refused RCPT keeps the reply value the client had; the others
        get the message's.
        """
        rcpts = [RecipientReply(b"r0@example.com", 250, b"2.1.5 Ok", Reply(250, [b"Ok"], b"2.1.5")), RecipientReply(b"r1@example.com", 550, b"5.1.1 No such user", NO), RecipientReply(b"r2@example.com", 250, b"2.1.5 Ok", None)]
        final = Reply(250, [b"Queued", b"as 1"], b"2.0.0")
        replies = self.job.replies(250, final.wireText, rcpts, final)
        self.assertEqual(replies, {b"r0@example.com": final, b"r1@example.com": NO, b"r2@example.com": final})
        self.assertIs(replies[b"r1@example.com"], NO)

    def test_textFromElsewhere(self):
        """
        Plain C{(address, code, resp)} tuples (twisted.mail's way) are read
        by the wire's parser; a final reply value that does not match the
        code is not used.
        """
        rcpts = [(b"r0@example.com", 250, b"ok"), (b"r1@example.com", 452, b"4.5.3 Too many")]
        replies = self.job.replies(250, b"2.0.0 Ok\n2.0.0 queued", rcpts, Reply(550, [b"stale"]))
        self.assertEqual(replies[b"r1@example.com"], Reply(452, [b"Too many"], b"4.5.3"))
        self.assertEqual(replies[b"r0@example.com"], Reply(250, [b"Ok", b"queued"], b"2.0.0"))
        self.assertEqual(replies[b"r2@example.com"], replies[b"r0@example.com"])


class QueuedAddressTests(SynchronousTestCase):
    """
    Queued addresses that cannot go on the wire get the relay's own reply.
    """

    def test_recipientWithoutDomain(self):
        self.assertEqual(recipientRefusal(Recipient(b"postmaster")).code, 553)
        self.assertEqual(recipientRefusal(Recipient(b"postmaster")).status, b"5.1.3")
        self.assertIsNone(recipientRefusal(Recipient(b"a@example.com")))

    def test_sender(self):
        envelope = _envelope(1)
        self.assertIsNone(senderRefusal(envelope))
        envelope.sender = b"a b@@"
        self.assertEqual(senderRefusal(envelope).status, b"5.1.7")

    def test_ownReplyOneLine(self):
        reply = ownReply(451, "4.4.2", "Connection lost:\r\n  line two\x1b")
        self.assertEqual(reply, Reply(451, [b"Connection lost: line two"], b"4.4.2"))


class SortRecipientsTests(SynchronousTestCase):
    """
    L{sortRecipients}: waiting recipients by destination, and the relay's
    own refusal for those that cannot go anywhere.
    """

    def test_byDomain(self):
        envelope = Envelope("0" * 12, b"jo@example.org", [Recipient(b"a@Example.COM"), Recipient(b"b@example.com"), Recipient(b"c@b\xc3\xbccher.example"), Recipient(b"postmaster"), Recipient(b"d@example.net", state="delivered")])
        byDestination, refused = sortRecipients(envelope)
        self.assertEqual({d: [r.address for r in rs] for d, rs in byDestination.items()}, {"example.com": [b"a@Example.COM", b"b@example.com"], "xn--bcher-kva.example": [b"c@b\xc3\xbccher.example"]})
        self.assertEqual({a: (r.code, r.status) for a, r in refused.items()}, {b"postmaster": (553, b"5.1.3")})

    def test_smartHost(self):
        envelope = _envelope(2)
        byDestination, refused = sortRecipients(envelope, "[smarthost]")
        self.assertEqual((list(byDestination), len(byDestination["[smarthost]"]), refused), (["[smarthost]"], 2, {}))

    def test_senderRefusesAll(self):
        envelope = _envelope(2)
        envelope.sender = b"a b@@"
        byDestination, refused = sortRecipients(envelope)
        self.assertEqual(byDestination, {})
        self.assertEqual({r.status for r in refused.values()}, {b"5.1.7"})
