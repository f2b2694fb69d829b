# -*- test-case-name: mailproto.test.test_queue -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The durable queue: commit, state, removal, recovery after a crash, group
commit, and a real crash (SIGKILL) of a process writing to it.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto import _queue
from mailproto._address import Address
from mailproto._commands import MailFrom, RcptTo
from mailproto._queue import DELIVERED, FAILED, WAITING, Envelope, Queue, newMessageID
from mailproto._replies import Reply


def synchronously(f, *args):
    return defer.maybeDeferred(f, *args)


def envelope(queueID=None, recipients=(b"b@example.com",), **kw) -> Envelope:
    mail = MailFrom(Address(b"a@example.org"), body=b"8BITMIME", ret=b"HDRS", envid=b"env-1")
    rcpts = [RcptTo(Address(r), notify=(b"FAILURE",), orcpt=(b"rfc822", r)) for r in recipients]
    return Envelope.fromCommands(queueID or newMessageID(), mail, rcpts, received=1000.0, client="192.0.2.1", **kw)


class QueueTests(SynchronousTestCase):
    """
    The queue's life cycle, with disk work run synchronously.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.queue = Queue(self.directory, runInThread=synchronously)

    def add(self, data=b"Subject: x\r\n\r\nhi\r\n", **kw):
        spool = self.queue.newMessage(envelope(**kw))
        spool.write(data)
        return self.successResultOf(spool.commit())

    def test_commit(self):
        """
        A committed message is in C{queue/} with its envelope line, and
        C{tmp/} is empty; it can be read back.
        """
        added = self.add()
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "queue")), [added.id])
        self.assertEqual(added.size, len(b"Subject: x\r\n\r\nhi\r\n"))
        with self.queue.openMessage(added.id) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nhi\r\n")
        self.assertIs(self.queue.getEnvelope(added.id), added)

    def test_smallMessageWrittenAtCommit(self):
        """
        A message smaller than L{SpoolFile.SPILL} makes no file until it is
        committed: the disk thread makes, writes and syncs it.
        """
        spool = self.queue.newMessage(envelope())
        spool.write(b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.assertEqual(spool.size, len(b"Subject: x\r\n\r\nhi\r\n"))
        self.successResultOf(spool.commit())
        with self.queue.openMessage(spool.envelope.id) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nhi\r\n")
        # Sending it reads a copy kept in memory, until it is removed.
        self.assertEqual(self.queue._cached, spool.size)
        with open(self.queue.getPath(spool.envelope.id), "rb") as f:
            self.assertTrue(f.read().endswith(b"\r\n\r\nhi\r\n"))
        self.successResultOf(self.queue.remove(spool.envelope.id))
        self.assertEqual((self.queue._cache, self.queue._cached), ({}, 0))

    def test_cacheLimit(self):
        """
        Past C{cacheLimit}, messages are read from their files.
        """
        self.queue.cacheLimit = 10
        spool = self.queue.newMessage(envelope())
        spool.write(b"Subject: x\r\n\r\nhi\r\n")
        self.successResultOf(spool.commit())
        self.assertEqual(self.queue._cache, {})
        with self.queue.openMessage(spool.envelope.id) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nhi\r\n")

    def test_largeMessageSpills(self):
        """
        A larger message goes into its file in C{tmp/} as it arrives, and
        is whole in the queue after the commit; abort removes the file.
        """
        chunk = b"x" * 1000 + b"\r\n"
        spool = self.queue.newMessage(envelope())
        for _ in range(300):
            spool.write(chunk)
        [name] = os.listdir(os.path.join(self.directory, "tmp"))
        self.assertEqual(spool.size, 300 * len(chunk))
        self.successResultOf(spool.commit())
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        with self.queue.openMessage(name) as f:
            self.assertEqual(f.read(), chunk * 300)
        aborted = self.queue.newMessage(envelope())
        for _ in range(300):
            aborted.write(chunk)
        aborted.abort()
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])

    def test_recoverRoundTrip(self):
        """
        A new queue on the same directory finds the message with every
        envelope field, bytes and all.
        """
        added = self.add(data=b"\xff\x00 binary\r\n")
        queue = Queue(self.directory, runInThread=synchronously)
        self.assertEqual(queue.recover(), {"queued": 1, "removed": 0, "corrupt": 0})
        found = queue.getEnvelope(added.id)
        self.assertEqual(found, added)
        self.assertEqual(found.recipients[0].orcpt, (b"rfc822", b"b@example.com"))
        self.assertEqual(found.envid, b"env-1")

    def test_state(self):
        """
        Delivery state is written durably and read back at recovery.
        """
        added = self.add(recipients=(b"b@example.com", b"c@example.com"))
        added.recipients[0].state = DELIVERED
        added.recipients[0].lastReply = Reply(250, [b"ok", b"queued as \xff"], b"2.0.0")
        added.recipients[0].lastHost = "mx.example.com"
        added.recipients[1].lastReply = added.lastReply = Reply(451, [b"later"], b"4.3.0")
        added.attempts = 2
        added.nextAttempt = 2000.0
        self.successResultOf(self.queue.update(added))
        queue = Queue(self.directory, runInThread=synchronously)
        queue.recover()
        found = queue.getEnvelope(added.id)
        self.assertEqual([r.state for r in found.recipients], [DELIVERED, WAITING])
        self.assertEqual([(r.lastReply, r.lastHost) for r in found.recipients], [(added.recipients[0].lastReply, "mx.example.com"), (Reply(451, [b"later"], b"4.3.0"), None)])
        self.assertEqual(found.lastReply, Reply(451, [b"later"], b"4.3.0"))
        self.assertEqual((found.attempts, found.nextAttempt), (2, 2000.0))
        self.assertEqual([r.address for r in found.waiting], [b"c@example.com"])

    def test_intakeStateAtCommit(self):
        """
        What intake makes once the data is in (a C{DKIM-Signature} to send
        first, C{TLS-Required: No}) is written in the state file at commit,
        and read back at recovery with C{requireTLS} from the envelope line;
        a message without them has no state file until its first update.
        """
        plain = self.add()
        spool = self.queue.newMessage(envelope(requireTLS=True))
        spool.write(b"Subject: x\r\n\r\nhi\r\n")
        spool.envelope.prefix = b"DKIM-Signature: v=1; d=example.org\r\n"
        spool.envelope.tlsOptional = True
        signed = self.successResultOf(spool.commit())
        names = sorted(os.listdir(os.path.join(self.directory, "queue")))
        self.assertEqual(names, sorted([plain.id, signed.id, signed.id + ".state"]))
        found = Queue(self.directory, runInThread=synchronously)
        found.recover()
        again = found.getEnvelope(signed.id)
        self.assertEqual((again.prefix, again.tlsOptional, again.requireTLS), (spool.envelope.prefix, True, True))
        self.assertEqual((found.getEnvelope(plain.id).prefix, found.getEnvelope(plain.id).requireTLS), (b"", False))
        with found.openMessage(signed.id) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nhi\r\n")

    def test_remove(self):
        """
        A removed message's files are gone, without an C{fsync}: a removal
        undone by a crash only means the message is sent again.
        """
        added = self.add()
        self.successResultOf(self.queue.update(added))
        fsyncs = self.queue.fsyncs
        self.successResultOf(self.queue.remove(added.id))
        self.assertEqual(os.listdir(os.path.join(self.directory, "queue")), [])
        self.assertRaises(KeyError, self.queue.getEnvelope, added.id)
        self.assertEqual(self.queue.fsyncs, fsyncs)

    def test_abort(self):
        spool = self.queue.newMessage(envelope())
        spool.write(b"partial")
        spool.abort()
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.assertEqual(self.queue.ids(), [])

    def test_commitFailure(self):
        """
        If the data cannot be made durable, the commit fails, and the
        message is neither queued nor left in C{tmp/}.
        """

        def failing(fd):
            raise OSError(5, "Input/output error")

        self.patch(self.queue, "_fsync", failing)
        spool = self.queue.newMessage(envelope())
        spool.write(b"x\r\n")
        self.failureResultOf(spool.commit(), OSError)
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "queue")), [])
        self.assertEqual(self.queue.ids(), [])

    def test_waitingAndRelaying(self):
        """
        twisted.mail's view: messages are waiting or relaying.
        """
        first, second = self.add(), self.add()
        self.assertEqual(self.queue.getWaiting(), sorted([first.id, second.id]))
        self.queue.setRelaying(first.id)
        self.assertEqual(self.queue.getRelayed(), [first.id])
        self.assertEqual(self.queue.getWaiting(), [second.id])
        self.assertTrue(self.queue.hasWaiting())
        self.assertEqual([e.id for e in self.queue.due(now=0)], [second.id])
        self.queue.setWaiting(first.id)
        self.assertEqual(len(self.queue.due(now=0)), 2)
        second.nextAttempt = 50.0
        self.assertEqual([e.id for e in self.queue.due(now=10)], [first.id])


class RecoveryTests(SynchronousTestCase):
    """
    What recovery does with each kind of leftover.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.queue = Queue(self.directory, runInThread=synchronously)

    def put(self, where, name, data):
        with open(os.path.join(self.directory, where, name), "wb") as f:
            f.write(data)

    def listing(self, where):
        return sorted(os.listdir(os.path.join(self.directory, where)))

    def test_leftovers(self):
        """
        Unfinished messages, state temporaries and orphan states are
        removed; unreadable files are set aside, never deleted.
        """
        good = envelope()
        spool = self.queue.newMessage(good)
        spool.write(b"x\r\n")
        self.successResultOf(spool.commit())
        self.put("tmp", newMessageID(), b"half a message")
        self.put("queue", good.id + ".state.tmp", b"{")
        orphan = newMessageID()
        self.put("queue", orphan + ".state", b"{}")
        broken = newMessageID()
        self.put("queue", broken, b"not json\nbody")
        self.put("queue", broken + ".state", b"{}")
        noLine = newMessageID()
        self.put("queue", noLine, b'{"version": 1')
        mismatch = newMessageID()
        header = dict(envelope().header(), id=newMessageID())
        self.put("queue", mismatch, json.dumps(header).encode() + b"\n")
        self.put("queue", "README", b"stray file")
        counts = Queue(self.directory, runInThread=synchronously).recover()
        self.assertEqual(counts, {"queued": 1, "removed": 1, "corrupt": 4})
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("queue"), [good.id])
        self.assertEqual(self.listing("corrupt"), sorted(["README", broken, broken + ".state", noLine, mismatch]))

    def test_unreadableState(self):
        """
        A state file that cannot be read loses only the progress: the
        message is kept, every recipient waiting again.
        """
        good = envelope()
        spool = self.queue.newMessage(good)
        spool.write(b"x\r\n")
        self.successResultOf(spool.commit())
        self.put("queue", good.id + ".state", b'{"version": 1, "recipients": []}')
        queue = Queue(self.directory, runInThread=synchronously)
        self.assertEqual(queue.recover()["queued"], 1)
        self.assertEqual(queue.getEnvelope(good.id).waiting[0].address, b"b@example.com")

    def test_badValues(self):
        """
        Envelopes with wrong types or states are corrupt, not a crash.
        """
        for header in [
            {"version": 2},
            dict(envelope().header(), recipients=[]),
            dict(envelope().header(), recipients="x"),
            dict(envelope().header(), received="soon"),
            [],
        ]:
            name = newMessageID()
            if isinstance(header, dict) and "id" in header:
                header["id"] = name
            self.put("queue", name, json.dumps(header).encode() + b"\n")
        self.assertEqual(Queue(self.directory, runInThread=synchronously).recover()["corrupt"], 5)
        state = envelope().state()
        state["recipients"][0]["state"] = "lost"
        self.assertRaises(ValueError, envelope().applyState, state)
        self.assertEqual(FAILED, "failed")


class StateValidationTests(SynchronousTestCase):
    """
    State files are checked when the queue is recovered: a value that
    cannot be used sets the state aside in C{corrupt/} (the message is
    delivered again to everyone); a time that is not a finite number is
    repaired; a message with every recipient done is removed.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.queue = Queue(self.directory, runInThread=synchronously)
        self.envelope = envelope(recipients=(b"b@example.com", b"c@example.com"))
        spool = self.queue.newMessage(self.envelope)
        spool.write(b"x\r\n")
        self.successResultOf(spool.commit())
        self.envelope.recipients[0].state = DELIVERED
        self.envelope.attempts = 2
        self.envelope.nextAttempt = 5000.0
        self.good = self.envelope.state()

    def recoverWith(self, state) -> tuple[Queue, dict]:
        path = self.queue.getPath(self.envelope.id) + ".state"
        with open(path, "w") as f:
            f.write(state if isinstance(state, str) else json.dumps(state))
        queue = Queue(self.directory, runInThread=synchronously)
        return queue, queue.recover()

    def changed(self, **fields) -> dict:
        state = json.loads(json.dumps(self.good))
        state.update(fields)
        return state

    def test_corruptValues(self):
        """
        Each bad value sets the state aside, with one log line; the
        message stays queued with every recipient waiting.
        """
        recipients = self.good["recipients"]
        table = [
            self.changed(attempts=-1),
            self.changed(attempts=1.5),
            self.changed(attempts="2"),
            self.changed(attempts=True),
            self.changed(attempts=None),
            self.changed(size=-3),
            self.changed(size="big"),
            self.changed(nextAttempt="soon"),
            self.changed(nextAttempt=None),
            self.changed(nextAttempt=False),
            self.changed(warned="no"),
            self.changed(lastReply=451),
            self.changed(recipients=recipients[:1]),
            self.changed(recipients=[recipients[0], {"state": "lost", "lastReply": None}]),
            self.changed(recipients=[recipients[0], {"state": ["waiting"], "lastReply": None}]),
            self.changed(recipients=[recipients[0], {"state": "waiting", "lastReply": ["x"]}]),
            self.changed(recipients=[recipients[0], "waiting"]),
            self.changed(recipients={"0": "waiting"}),
            self.changed(version=3),
            self.changed(lastReply="451 4.3.0 text in a version 2 state"),
            self.changed(lastReply={"code": "451", "status": None, "lines": ["x"]}),
            self.changed(lastReply={"code": 651, "status": None, "lines": ["x"]}),
            self.changed(lastReply={"code": 451, "status": "5.1.1", "lines": ["x"]}),
            self.changed(lastReply={"code": 451, "status": None, "lines": "x"}),
            self.changed(lastReply={"code": 451, "status": None, "lines": ["a\r\nRCPT TO:<x@y>"]}),
            self.changed(lastReply={"code": 451, "status": None}),
            self.changed(recipients=[recipients[0], {"state": "waiting", "lastReply": None, "lastHost": 7}]),
            [],
            "not json",
            "[" * 100000,
            '"\\udcff"',
        ]
        for state in table:
            logged = []
            globalLogPublisher.addObserver(logged.append)
            try:
                queue, counts = self.recoverWith(state)
            finally:
                globalLogPublisher.removeObserver(logged.append)
            self.assertEqual((counts["queued"], counts["corrupt"]), (1, 1), state)
            found = queue.getEnvelope(self.envelope.id)
            self.assertEqual([r.state for r in found.recipients], [WAITING, WAITING], state)
            self.assertEqual((found.attempts, found.nextAttempt), (0, 0.0))
            self.assertIn(self.envelope.id + ".state", os.listdir(os.path.join(self.directory, "corrupt")))
            self.assertNotIn(self.envelope.id + ".state", os.listdir(os.path.join(self.directory, "queue")))
            lines = [e for e in logged if "set aside in corrupt/" in e.get("log_format", "")]
            self.assertEqual(len(lines), 1, state)

    def test_held(self):
        """
        C{held} is written in every state (version 2 still) and read back;
        a state without it, as every one written before, reads as not
        held, and a value that is not a boolean sets the state aside.
        """
        self.assertEqual((self.good["version"], self.good["held"]), (2, False))
        found = self.recoverWith(dict(self.good, held=True))[0].getEnvelope(self.envelope.id)
        self.assertEqual((found.held, found.state()["held"]), (True, True))
        self.assertEqual(self.recoverWith(dict(self.good, held=True))[0].due(10**10), [])
        old = {key: value for key, value in self.good.items() if key != "held"}
        queue, counts = self.recoverWith(old)
        self.assertEqual((counts["queued"], counts["corrupt"]), (1, 0))
        self.assertFalse(queue.getEnvelope(self.envelope.id).held)
        self.assertEqual(self.recoverWith(dict(self.good, held="yes"))[1]["corrupt"], 1)

    def test_intakeFields(self):
        """
        C{prefix} and C{tlsOptional} are written only when set, so a state
        without them reads as before; values of the wrong type set the
        state aside.
        """
        self.assertNotIn("prefix", self.good)
        self.assertNotIn("tlsOptional", self.good)
        found = self.recoverWith(dict(self.good, prefix="X-A: 1\r\n", tlsOptional=True))[0].getEnvelope(self.envelope.id)
        self.assertEqual((found.prefix, found.tlsOptional), (b"X-A: 1\r\n", True))
        self.assertEqual(self.recoverWith(dict(self.good, prefix=7))[1]["corrupt"], 1)
        self.assertEqual(self.recoverWith(dict(self.good, tlsOptional="no"))[1]["corrupt"], 1)

    def test_version1(self):
        """
        A state file of version 1 (replies as text) is read: each reply
        becomes a value, by the wire's parser; an expiry's reply is the
        last reply it quotes; text that is not a reply keeps a code that
        fits its recipient's state.
        """
        old = {
            "version": 1,
            "size": 3,
            "attempts": 4,
            "nextAttempt": 5000.0,
            "lastReply": "451 4.4.1 Could not connect",
            "warned": True,
            "recipients": [
                {"state": FAILED, "lastReply": "4.4.7 Message expired after 5 days; last: 451 4.3.0 Later"},
                {"state": WAITING, "lastReply": "not a reply"},
            ],
        }
        queue, counts = self.recoverWith(old)
        self.assertEqual((counts["queued"], counts["corrupt"]), (1, 0))
        found = queue.getEnvelope(self.envelope.id)
        self.assertEqual(found.lastReply, Reply(451, [b"Could not connect"], b"4.4.1"))
        self.assertEqual([r.lastReply for r in found.recipients], [Reply(451, [b"Later"], b"4.3.0"), Reply(451, [b"not a reply"])])
        self.assertEqual([r.expired for r in found.recipients], [True, False])
        self.assertEqual((found.attempts, found.warned), (4, True))
        old["recipients"] = [{"state": FAILED, "lastReply": "4.4.7 Message expired after 5 days; last: no answer"}, {"state": WAITING, "lastReply": "550 5.1.1 No"}]
        found = self.recoverWith(old)[0].getEnvelope(self.envelope.id)
        self.assertEqual([r.lastReply for r in found.recipients], [None, Reply(550, [b"No"], b"5.1.1")])
        self.assertEqual(found.state()["version"], 2)

    def test_nonFiniteTimeRepaired(self):
        """
        A next attempt that is NaN or infinite is repaired: due now, the
        rest of the state kept.
        """
        for value in ("NaN", "Infinity", "-Infinity", "1e999"):
            text = json.dumps(self.good).replace("5000.0", value)
            queue, counts = self.recoverWith(text)
            self.assertEqual((counts["queued"], counts["corrupt"]), (1, 0))
            found = queue.getEnvelope(self.envelope.id)
            self.assertEqual(found.nextAttempt, 0.0)
            self.assertEqual(found.attempts, 2)
            self.assertEqual([r.state for r in found.recipients], [DELIVERED, WAITING])
            self.assertEqual(queue.due(1.0), [found])

    def test_everyRecipientDoneRemoved(self):
        """
        A message whose state has every recipient delivered or failed is
        removed on recovery, files and all.
        """
        done = self.changed(recipients=[{"state": DELIVERED, "lastReply": None}, {"state": FAILED, "lastReply": {"code": 550, "status": None, "lines": ["no"]}}])
        queue, counts = self.recoverWith(done)
        self.assertEqual(counts["queued"], 0)
        self.assertEqual(queue.ids(), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "queue")), [])

    def test_nonFiniteArrival(self):
        """
        An envelope whose arrival time is not a finite number is corrupt:
        the message is set aside.
        """
        for value in ("NaN", "Infinity", "true", '"1"'):
            name = newMessageID()
            header = dict(envelope(name).header())
            text = json.dumps(header).replace('"received": 1000.0', f'"received": {value}')
            with open(os.path.join(self.directory, "queue", name), "w") as f:
                f.write(text + "\nbody")
            self.assertEqual(Queue(self.directory, runInThread=synchronously).recover()["corrupt"], 1, value)
            self.assertIn(name, os.listdir(os.path.join(self.directory, "corrupt")))

    def test_readWithoutProblemsList(self):
        """
        L{_queue.readQueueFile} without a list for problems logs them and
        uses what it can.
        """
        path = self.queue.getPath(self.envelope.id)
        with open(path + ".state", "w") as f:
            f.write(json.dumps(self.changed(attempts=-1)))
        found = _queue.readQueueFile(path)
        self.assertEqual(found.attempts, 0)
        problems = []
        _queue.readQueueFile(path, problems)
        self.assertEqual([kind for kind, _ in problems], ["corrupt"])


class GroupCommitTests(SynchronousTestCase):
    """
    Commits that arrive while a batch is on disk share the next batch's
    directory C{fsync}.
    """

    def test_batches(self):
        batches = []

        def later(f, *args):
            d = defer.Deferred()
            batches.append((f, args, d))
            return d

        queue = Queue(self.mktemp(), runInThread=later)
        spools = []
        for i in range(4):
            spool = queue.newMessage(envelope())
            spool.write(b"m%d\r\n" % i)
            spools.append(spool)
        results = [spool.commit() for spool in spools]
        self.assertEqual(len(batches), 1)
        self.assertEqual(len(batches[0][1][0]), 1)
        f, args, d = batches.pop(0)
        d.callback(f(*args))
        self.assertEqual(len(batches), 1)
        self.assertEqual(len(batches[0][1][0]), 3)
        f, args, d = batches.pop(0)
        d.callback(f(*args))
        for result in results:
            self.successResultOf(result)
        # One fsync per message, one per batch for the directory.
        self.assertEqual(queue.fsyncs, 4 + 2)
        self.assertEqual(len(queue.ids()), 4)


class ThreadTests(TestCase):
    """
    With the reactor's thread pool, as in production.
    """

    def test_commitInThread(self):
        queue = Queue(self.mktemp())
        spool = queue.newMessage(envelope())
        spool.write(b"threaded\r\n")
        d = spool.commit()
        d.addCallback(lambda added: self.assertEqual(queue.ids(), [added.id]))
        return d


_CRASHER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, defer
    from mailproto._address import Address
    from mailproto._commands import MailFrom, RcptTo
    from mailproto._queue import Envelope, Queue, newMessageID

    queue = Queue(sys.argv[1])
    mail = MailFrom(Address(b"a@example.org"))
    rcpts = [RcptTo(Address(b"b@example.com"))]

    def one(i):
        spool = queue.newMessage(Envelope.fromCommands(newMessageID(), mail, rcpts, received=0.0))
        spool.write(b"Subject: %d\\r\\n\\r\\n" % i + b"x" * 2000 + b"\\r\\n")
        d = spool.commit()
        def acknowledged(envelope):
            sys.stdout.write(envelope.id + "\\n")
            sys.stdout.flush()
        return d.addCallback(acknowledged)

    @defer.inlineCallbacks
    def main():
        for i in range(100000):
            yield defer.gatherResults([one(i * 8 + j) for j in range(8)])

    reactor.callWhenRunning(main)
    reactor.run()
    """
)


class CrashTests(TestCase):
    """
    A process committing messages is killed with SIGKILL at a moment it
    does not choose; every message it said was committed is found by
    recovery, readable and whole.
    """

    timeout = 60

    def test_sigkill(self):
        import mailproto

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__))))
        acknowledged = []
        for round in range(3):
            child = subprocess.Popen(
                [sys.executable, "-c", _CRASHER, directory], stdout=subprocess.PIPE, env=env
            )
            # Kill it after a number of acknowledgements that differs each
            # round, while more commits are in flight.
            target = 20 + 17 * round
            for line in child.stdout:
                acknowledged.append(line.decode().strip())
                if len(acknowledged) >= target * (round + 1):
                    break
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            acknowledged.extend(line.decode().strip() for line in child.stdout.readlines())
            child.stdout.close()
            queue = Queue(directory)
            counts = queue.recover()
            found = set(queue.ids())
            missing = [queueID for queueID in acknowledged if queueID not in found]
            self.assertEqual(missing, [], f"round {round}: lost {len(missing)} acknowledged messages")
            self.assertEqual(os.listdir(os.path.join(directory, "tmp")), [])
            self.assertEqual(counts["corrupt"], 0)
            for queueID in acknowledged:
                with queue.openMessage(queueID) as f:
                    data = f.read()
                self.assertTrue(data.startswith(b"Subject: ") and data.endswith(b"x" * 2000 + b"\r\n"))
