# -*- test-case-name: mailproto.test.test_intakequeue -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._intakequeue} and for L{Queue.adopt} and
L{Queue.adoptNew}: a worker's L{IntakeQueue} and a parent's L{Queue} on
one spool, in one process and in two.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import stat
import subprocess
import sys
import textwrap

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

import mailproto
from mailproto._address import Address
from mailproto._commands import MailFrom, RcptTo
from mailproto._intakequeue import HeldByParent, IntakeQueue
from mailproto._queue import DELIVERED, Envelope, Queue, SpoolFile, newMessageID, openQueueFile
from mailproto._relay import QueueDeliveryFactory
from mailproto._spoollock import SpoolBusy, SpoolLock
from mailproto.smtp import ESMTPFactory

_ROOT = str(pathlib.Path(mailproto.__file__).resolve().parent.parent)


def synchronously(f, *args):
    return defer.maybeDeferred(f, *args)


def envelope(queueID=None, **kw) -> Envelope:
    mail = MailFrom(Address(b"a@example.org"))
    rcpts = [RcptTo(Address(b"b@example.com")), RcptTo(Address(b"c@example.net"))]
    return Envelope.fromCommands(queueID or newMessageID(), mail, rcpts, received=1000.0, client="192.0.2.1", **kw)


class Spool:
    """
    A spool with a parent's L{Queue} and a worker's L{IntakeQueue} on it,
    disk work run synchronously, and what the worker told the parent.
    """

    def __init__(self, case: SynchronousTestCase, notify=None) -> None:
        self.directory = case.mktemp()
        self.queue = Queue(self.directory, runInThread=synchronously)
        self.told: list[Envelope] = []
        self.copies: list = []
        self.intake = IntakeQueue(self.directory, notify or self.tell, runInThread=synchronously)

    def tell(self, envelope: Envelope, copy=None) -> defer.Deferred:
        self.told.append(envelope)
        self.copies.append(copy)
        return defer.succeed(None)

    def commit(self, data=b"Subject: x\r\n\r\nhi\r\n", **kw) -> defer.Deferred:
        spool = self.intake.newMessage(envelope(**kw))
        spool.write(data)
        return spool.commit()

    def listing(self, name: str) -> list[str]:
        return sorted(os.listdir(os.path.join(self.directory, name)))


class IntakeQueueTests(SynchronousTestCase):
    """
    A worker's commit: durable in C{queue/}, then the parent told, then
    the commit fires.
    """

    def test_durableThenTold(self):
        """
        The commit fires only after the message file and the directory
        were synced and renamed into C{queue/}, and after the parent was
        told (its C{Deferred} fired); never before.
        """
        events = []
        telling = defer.Deferred()

        def notify(envelope, copy):
            events.append(("notify", envelope.id, spool.listing("queue"), spool.listing("tmp")))
            return telling

        spool = Spool(self, notify)
        self.patch(spool.intake, "_fsync", lambda fd: events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))))
        d = spool.commit()
        self.assertNoResult(d)
        queueID = events[-1][1]
        # The file, then the queue directory, then the parent.
        self.assertEqual(events, [("fsync", False), ("fsync", True), ("notify", queueID, [queueID], [])])
        telling.callback(None)
        added = self.successResultOf(d)
        self.assertEqual(added.id, queueID)
        self.assertEqual(added.size, len(b"Subject: x\r\n\r\nhi\r\n"))
        with openQueueFile(os.path.join(spool.directory, "queue", queueID)) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nhi\r\n")

    def test_toldTheEnvelope(self):
        spool = Spool(self)
        added = self.successResultOf(spool.commit())
        self.assertEqual([e.id for e in spool.told], [added.id])
        self.assertIs(spool.told[0], added)
        # The worker keeps nothing: no index, no copy of the message.
        self.assertFalse(hasattr(spool.intake, "ids"))
        self.assertEqual(spool.queue.ids(), [])

    def test_tellingFails(self):
        """
        If the parent cannot be told, the commit still fires with the
        envelope (the message is durable), with one line logged.
        """
        for failing in (lambda e, c: defer.fail(ConnectionError("parent gone")), lambda e, c: 1 / 0):
            spool = Spool(self, failing)
            with capturedLogs() as events:
                added = self.successResultOf(spool.commit())
            self.assertEqual(spool.listing("queue"), [added.id])
            self.assertEqual(len(events), 1)
            self.assertEqual(events[0]["queueID"], added.id)
            self.assertIn("could not tell the relay", events[0]["log_format"])

    def test_diskFailure(self):
        """
        A commit that fails on the disk fails, and the parent is not told.
        """
        spool = Spool(self)

        def failing(fd):
            raise OSError(28, "No space left on device")

        self.patch(spool.intake, "_fsync", failing)
        self.failureResultOf(spool.commit(), OSError)
        self.assertEqual(spool.told, [])
        self.assertEqual((spool.listing("queue"), spool.listing("tmp")), ([], []))

    def test_largeMessageSpills(self):
        """
        A message larger than L{SpoolFile.SPILL} is written into C{tmp/} as
        it arrives, with no lock taken, and renamed at commit.
        """
        spool = Spool(self)
        file = spool.intake.newMessage(envelope())
        file.write(b"x" * (SpoolFile.SPILL + 10))
        self.assertEqual(spool.listing("tmp"), [file.envelope.id])
        self.assertFalse(os.path.exists(os.path.join(spool.directory, "lock")))
        self.successResultOf(file.commit())
        self.assertEqual((spool.listing("queue"), spool.listing("tmp")), ([file.envelope.id], []))
        self.assertEqual(spool.queue.adopt(file.envelope.id).size, SpoolFile.SPILL + 10)

    def test_abort(self):
        spool = Spool(self)
        file = spool.intake.newMessage(envelope())
        file.write(b"x" * (SpoolFile.SPILL + 10))
        file.abort()
        self.assertEqual((spool.listing("queue"), spool.listing("tmp"), spool.told), ([], [], []))

    def test_groupCommit(self):
        """
        Messages committed together share a batch's directory C{fsync};
        each is told to the parent once its batch is done, not before.
        """
        batches = []

        def later(f, *args):
            d = defer.Deferred()
            batches.append((f, args, d))
            return d

        directory = self.mktemp()
        Queue(directory)
        told = []
        intake = IntakeQueue(directory, lambda e, c: told.append(e.id), runInThread=later)
        files = [intake.newMessage(envelope()) for i in range(4)]
        for i, file in enumerate(files):
            file.write(b"m%d\r\n" % i)
        results = [file.commit() for file in files]
        self.assertEqual([len(args[0]) for _, args, _ in batches], [1])
        f, args, d = batches.pop(0)
        d.callback(f(*args))
        self.assertEqual(told, [files[0].envelope.id])
        self.assertEqual([len(args[0]) for _, args, _ in batches], [3])
        f, args, d = batches.pop(0)
        d.callback(f(*args))
        self.assertEqual(told, [file.envelope.id for file in files])
        for result in results:
            self.successResultOf(result)
        # One fsync per message, one per batch for the directory.
        self.assertEqual(intake.fsyncs, 4 + 2)

    def test_missingSpool(self):
        """
        A worker does not make the spool: its relay does before starting
        it.
        """
        self.assertRaises(FileNotFoundError, IntakeQueue, self.mktemp(), lambda e, c: None)

    def test_heldByParent(self):
        """
        A worker's lock is always held, and is never taken: not even while
        the relay holds the real lock in the same process.
        """
        spool = Spool(self)
        lock = spool.intake.lock
        self.assertIsInstance(lock, HeldByParent)
        self.assertTrue(lock.held)
        self.assertRaises(RuntimeError, lock.acquire)
        lock.release()
        self.assertTrue(lock.held)
        self.assertEqual(lock.path, os.path.join(spool.directory, "lock"))

    def test_underTheRelaysLock(self):
        """
        While the relay holds the spool's lock (a L{Queue} with it), a
        worker writes small and spilled messages, and the relay's lock is
        still held after.
        """
        spool = Spool(self)
        relay = SpoolLock(spool.directory, relay=True)
        relay.acquire()
        self.addCleanup(relay.release)
        queue = Queue(spool.directory, runInThread=synchronously, lock=relay)
        ids = [self.successResultOf(spool.commit(data)).id for data in (b"small\r\n", b"y" * (SpoolFile.SPILL * 2))]
        self.assertEqual([queue.adopt(i).id for i in ids], ids)
        self.assertTrue(relay.held)
        self.assertRaises(SpoolBusy, SpoolLock(spool.directory).acquire)


class CopyTests(SynchronousTestCase):
    """
    A worker gives the parent a copy of a small message's files
    (L{QueuedCopy}), and L{Queue.adopt} takes the message from it, reading
    nothing; a copy that cannot be used is ignored, and the files are
    read.
    """

    def setUp(self):
        self.spool = Spool(self)
        self.heard = []
        self.spool.queue.listeners.append(self.heard.append)

    def committed(self, data=b"Subject: y\r\n\r\nbody\r\n", **kw):
        told = self.successResultOf(self.spool.commit(data, **kw))
        return told, self.spool.copies[-1]

    def noReading(self):
        """
        Make any read of a queue or state file fail the test.
        """
        import mailproto._queue as queueModule

        def refuse(*a, **kw):
            self.fail("a queue file was read")

        self.patch(queueModule, "readQueueFile", refuse)
        self.patch(queueModule, "openQueueFile", refuse)

    def test_copyIsTheFiles(self):
        """
        The copy holds what the files hold: the queue file's content, and
        the state file's when intake made one.
        """
        for kw in ({}, {"prefix": b"X-Worker: 1\r\n"}):
            told, copy = self.committed(**kw)
            path = self.spool.queue.getPath(told.id)
            self.assertEqual(copy.data, pathlib.Path(path).read_bytes())
            if kw:
                self.assertEqual(copy.state, pathlib.Path(path + ".state").read_bytes())
            else:
                self.assertIsNone(copy.state)
                self.assertFalse(os.path.exists(path + ".state"))

    def test_spilledHasNoCopy(self):
        """
        A message too large to be kept in memory comes with no copy.
        """
        self.committed(b"x" * (SpoolFile.SPILL + 1))
        self.assertEqual(self.spool.copies, [None])

    def test_adoptFromCopy(self):
        """
        Adopted from its copy, a message is in the index, announced and
        sent from memory, as if its files had been read; its state (here,
        a prefix) too.
        """
        told, copy = self.committed(prefix=b"X-Worker: 1\r\n")
        self.noReading()
        queue = self.spool.queue
        adopted = queue.adopt(told.id, copy.data, copy.state)
        self.assertEqual(adopted, told)
        self.assertEqual(adopted.prefix, b"X-Worker: 1\r\n")
        self.assertEqual(adopted.size, len(b"Subject: y\r\n\r\nbody\r\n"))
        self.assertEqual(self.heard, [adopted])
        with queue.openMessage(told.id) as f:
            self.assertEqual(f.read(), b"Subject: y\r\n\r\nbody\r\n")
        self.assertIs(queue.adopt(told.id, copy.data, copy.state), adopted)
        # Removed, its copy in memory goes too.
        self.successResultOf(queue.remove(told.id))
        self.assertEqual(queue._cache, {})

    def test_badCopyIsIgnored(self):
        """
        A copy that is not a valid envelope line, names another id, has a
        state that does not fit, or whose every recipient is done, is
        ignored: the files are read, as without a copy.
        """
        queue = self.spool.queue
        other = newMessageID()
        for bad in (
            lambda c: (b"", None),
            lambda c: (b"garbage", None),
            lambda c: (c.data.split(b"\n")[0], None),
            lambda c: (c.data.replace(b"\n", b"", 1), None),
            lambda c: (b"[1]\n" + c.data, None),
            lambda c: (c.data.replace(c.data[c.data.index(b'"id":"') + 6 : c.data.index(b'"id":"') + 29], other.encode()), None),
            lambda c: (c.data, b"not json"),
            lambda c: (c.data, b'{"version":2,"recipients":[]}'),
        ):
            told, copy = self.committed(b"Subject: z\r\n\r\nfrom the file\r\n")
            data, state = bad(copy)
            adopted = queue.adopt(told.id, data, state)
            self.assertEqual(adopted, told)
            with queue.openMessage(told.id) as f:
                self.assertEqual(f.read(), b"Subject: z\r\n\r\nfrom the file\r\n")
        self.assertEqual(self.spool.listing("corrupt"), [])

    def test_doneInCopy(self):
        """
        A copy whose state says every recipient is done adds nothing; the
        files say the same, and the message is removed.
        """
        told, copy = self.committed(prefix=b"X: 1\r\n")
        state = json.loads(copy.state)
        for r in state["recipients"]:
            r["state"] = DELIVERED
        done = json.dumps(state).encode()
        with open(self.spool.queue.getPath(told.id) + ".state", "wb") as f:
            f.write(done)
        self.assertRaises(KeyError, self.spool.queue.adopt, told.id, copy.data, done)
        self.assertEqual(self.heard, [])
        self.assertEqual(self.spool.listing("queue"), [])


class AdoptTests(SynchronousTestCase):
    """
    L{Queue.adopt}: a message a worker committed joins the parent's queue
    as one of its own commits would.
    """

    def setUp(self):
        self.spool = Spool(self)
        self.heard = []
        self.spool.queue.listeners.append(self.heard.append)

    def test_adopt(self):
        """
        An adopted message is in the index, announced to the listeners
        and due, with the envelope and data the worker wrote.
        """
        told = self.successResultOf(self.spool.commit(b"Subject: y\r\n\r\nbody\r\n"))
        queue = self.spool.queue
        adopted = queue.adopt(told.id)
        self.assertEqual(adopted, told)
        self.assertEqual(self.heard, [adopted])
        self.assertEqual(queue.ids(), [told.id])
        self.assertEqual(queue.due(told.received), [adopted])
        with queue.openMessage(told.id) as f:
            self.assertEqual(f.read(), b"Subject: y\r\n\r\nbody\r\n")

    def test_idempotent(self):
        told = self.successResultOf(self.spool.commit())
        first = self.spool.queue.adopt(told.id)
        self.assertIs(self.spool.queue.adopt(told.id), first)
        self.assertEqual(self.spool.queue.adoptNew(), [])
        self.assertEqual(self.heard, [first])

    def test_missing(self):
        """
        An id with no file, or a name that is no queue id (which is never
        read), raises L{KeyError}.
        """
        queue = self.spool.queue
        self.assertRaises(KeyError, queue.adopt, newMessageID())
        with open(os.path.join(self.spool.directory, "queue", "notanid"), "wb") as f:
            f.write(b"x")
        for name in ("notanid", "../lock", "", "0123456789ab.state"):
            self.assertRaises(KeyError, queue.adopt, name)
        self.assertEqual(self.heard, [])
        self.assertEqual(self.spool.listing("corrupt"), [])

    def test_corrupt(self):
        """
        A file that is not a queue file is set aside in C{corrupt/}, with
        its state, and raises L{ValueError}; so is one whose envelope names
        another id.
        """
        queueID, other = newMessageID(), newMessageID()
        queueDir = os.path.join(self.spool.directory, "queue")
        with open(os.path.join(queueDir, queueID), "wb") as f:
            f.write(b"garbage\n")
        with open(os.path.join(queueDir, queueID + ".state"), "wb") as f:
            f.write(b"{}")
        told = self.successResultOf(self.spool.commit())
        os.rename(os.path.join(queueDir, told.id), os.path.join(queueDir, other))
        with capturedLogs() as events:
            self.assertRaises(ValueError, self.spool.queue.adopt, queueID)
            self.assertRaises(ValueError, self.spool.queue.adopt, other)
        self.assertEqual(self.spool.listing("corrupt"), sorted([queueID, queueID + ".state", other]))
        self.assertEqual(self.spool.listing("queue"), [])
        self.assertEqual(len(events), 2)
        self.assertEqual(self.heard, [])

    def test_corruptState(self):
        """
        A state file that cannot be used is set aside; the message is
        adopted, for every recipient.
        """
        told = self.successResultOf(self.spool.commit())
        with open(os.path.join(self.spool.directory, "queue", told.id + ".state"), "wb") as f:
            f.write(b"not json")
        with capturedLogs():
            adopted = self.spool.queue.adopt(told.id)
        self.assertEqual(len(adopted.waiting), 2)
        self.assertEqual(self.spool.listing("corrupt"), [told.id + ".state"])

    def test_intakeState(self):
        """
        A DKIM prefix and C{TLS-Required: No}, made at intake, are written
        with the message by the worker and kept by adoption.
        """
        prefix = b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.org;\r\n\tb=abc\r\n"
        told = self.successResultOf(self.spool.commit(prefix=prefix, tlsOptional=True))
        self.assertIn(told.id + ".state", self.spool.listing("queue"))
        adopted = self.spool.queue.adopt(told.id)
        self.assertEqual((adopted.prefix, adopted.tlsOptional), (prefix, True))
        plain = self.spool.queue.adopt(self.successResultOf(self.spool.commit()).id)
        self.assertEqual((plain.prefix, plain.tlsOptional), (b"", False))

    def test_everyRecipientDone(self):
        """
        A message whose state says every recipient is done is removed, as
        recovery does, and not adopted.
        """
        told = self.successResultOf(self.spool.commit())
        for recipient in told.recipients:
            recipient.state = DELIVERED
        with open(os.path.join(self.spool.directory, "queue", told.id + ".state"), "w") as f:
            json.dump(told.state(), f)
        self.assertRaises(KeyError, self.spool.queue.adopt, told.id)
        self.assertEqual(self.spool.listing("queue"), [])
        self.assertEqual(self.heard, [])

    def test_removedNotTakenBack(self):
        """
        A message the parent removed is not adopted again, neither while
        its files are still there (the removal is on its way to the disk)
        nor after.
        """
        pending = []

        def later(f, *args):
            d = defer.Deferred()
            pending.append((f, args, d))
            return d

        queue = Queue(self.spool.directory, runInThread=later)
        told = self.successResultOf(self.spool.commit())
        queue.adopt(told.id)
        removed = queue.remove(told.id)
        self.assertEqual(self.spool.listing("queue"), [told.id])
        self.assertEqual(queue.adoptNew(), [])
        self.assertRaises(KeyError, queue.adopt, told.id)
        f, args, d = pending.pop()
        d.callback(f(*args))
        self.successResultOf(removed)
        self.assertEqual(self.spool.listing("queue"), [])
        self.assertRaises(KeyError, queue.adopt, told.id)
        self.assertEqual(queue.ids(), [])

    def test_lockBusy(self):
        """
        A queue used on its own adopts under the spool's lock: while
        another holder has it, nothing is read.
        """
        told = self.successResultOf(self.spool.commit())
        other = SpoolLock(self.spool.directory, relay=True)
        other.acquire()
        self.addCleanup(other.release)
        self.assertRaises(SpoolBusy, self.spool.queue.adopt, told.id)
        self.assertRaises(SpoolBusy, self.spool.queue.adoptNew)
        self.assertEqual(self.spool.queue.ids(), [])
        other.release()
        self.spool.queue.adopt(told.id)
        # Taken for the adoption only.
        self.assertFalse(self.spool.queue.lock.held)


class AdoptNewTests(SynchronousTestCase):
    """
    L{Queue.adoptNew}: the messages in C{queue/} the parent was never told
    about.
    """

    def setUp(self):
        self.spool = Spool(self, notify=lambda e, c: defer.fail(ConnectionError("parent gone")))
        self.heard = []
        self.spool.queue.listeners.append(self.heard.append)

    def test_untold(self):
        """
        Messages committed while telling the parent failed are found and
        adopted, oldest first, once; messages still being written in
        C{tmp/} and files of the parent's own state writes are left alone.
        """
        with capturedLogs():
            ids = [self.successResultOf(self.spool.commit(b"m%d\r\n" % i, queueID=newMessageID(1000 + i))).id for i in range(3)]
        writing = self.spool.intake.newMessage(envelope())
        writing.write(b"z" * (SpoolFile.SPILL + 1))
        queueDir = os.path.join(self.spool.directory, "queue")
        with open(os.path.join(queueDir, ids[0] + ".state.tmp"), "wb") as f:
            f.write(b"half a state")
        with open(os.path.join(queueDir, "README"), "wb") as f:
            f.write(b"not a message")
        with capturedLogs() as events:
            self.assertEqual(self.spool.queue.adoptNew(), ids)
        self.assertEqual([e.id for e in self.heard], ids)
        self.assertEqual([e["count"] for e in events], [3])
        self.assertEqual(self.spool.queue.adoptNew(), [])
        self.assertEqual(self.spool.listing("tmp"), [writing.envelope.id])
        self.assertIn(ids[0] + ".state.tmp", self.spool.listing("queue"))
        self.assertIn("README", self.spool.listing("queue"))
        self.assertEqual(self.spool.listing("corrupt"), [])
        # The worker finishes its message after the scan.
        with capturedLogs():
            self.successResultOf(writing.commit())
        self.assertEqual(self.spool.queue.adoptNew(), [writing.envelope.id])

    def test_corruptSetAside(self):
        with capturedLogs():
            told = self.successResultOf(self.spool.commit())
        bad = newMessageID()
        with open(os.path.join(self.spool.directory, "queue", bad), "wb") as f:
            f.write(b'{"version": 1}\n')
        with capturedLogs():
            self.assertEqual(self.spool.queue.adoptNew(), [told.id])
        self.assertEqual(self.spool.listing("corrupt"), [bad])

    def test_ownCommitsNotAdopted(self):
        """
        A message the parent's queue commits itself (a bounce) is in
        C{queue/} a moment before its commit is announced; a scan in that
        moment does not take it, and the listeners hear of it once.
        """
        announced = []

        def renamedNotAnnounced(f, *args):
            # The disk work is done, its result not yet delivered.
            outcome = f(*args)
            d = defer.Deferred()
            announced.append(lambda: d.callback(outcome))
            return d

        queue = Queue(self.spool.directory, runInThread=renamedNotAnnounced)
        heard = []
        queue.listeners.append(heard.append)
        file = queue.newMessage(envelope())
        file.write(b"bounce\r\n")
        d = file.commit()
        self.assertEqual(self.spool.listing("queue"), [file.envelope.id])
        self.assertEqual(queue.adoptNew(), [])
        self.assertIs(queue.adopt(file.envelope.id), file.envelope)
        self.assertEqual(heard, [])
        announced.pop()()
        self.successResultOf(d)
        self.assertEqual(heard, [file.envelope])
        self.assertEqual(queue.adoptNew(), [])


class RemoveUnfinishedTests(SynchronousTestCase):
    """
    L{Queue.removeUnfinished}: what a dead worker left in C{tmp/}, told
    apart from what others are still receiving by its suffix.
    """

    def test_onlyThatWorkers(self):
        """
        The messages of the worker whose suffix is given are removed, and
        only those: another worker's, the parent's own and C{mailproto
        queue move}'s copies stay; committing a message renames it into
        C{queue/} under its id alone.
        """
        directory = self.mktemp()
        queue = Queue(directory, runInThread=synchronously)
        workers = [IntakeQueue(directory, lambda e, c: defer.succeed(None), runInThread=synchronously, unfinishedSuffix=f".worker{n}") for n in (1, 2)]
        writing = [w.newMessage(envelope()) for w in workers for _ in range(2)]
        for spool in writing:
            spool.write(b"z" * (SpoolFile.SPILL + 1))
        own = queue.newMessage(envelope())
        own.write(b"z" * (SpoolFile.SPILL + 1))
        with open(os.path.join(directory, "tmp", newMessageID() + ".move"), "wb"):
            pass
        tmp = sorted(os.listdir(os.path.join(directory, "tmp")))
        self.assertEqual(len(tmp), 6)
        self.assertEqual(sorted(n for n in tmp if n.endswith(".worker1")), sorted(s.envelope.id + ".worker1" for s in writing[:2]))

        self.assertEqual(queue.removeUnfinished(".worker1"), 2)
        self.assertEqual(sorted(os.listdir(os.path.join(directory, "tmp"))), sorted(n for n in tmp if not n.endswith(".worker1")))
        self.assertEqual(queue.removeUnfinished(".worker1"), 0)
        self.assertRaises(ValueError, queue.removeUnfinished, "")
        # Worker 2's go on to their commit.
        with capturedLogs():
            committed = self.successResultOf(writing[2].commit())
        self.assertIn(committed.id, os.listdir(os.path.join(directory, "queue")))
        self.assertNotIn(committed.id + ".worker2", os.listdir(os.path.join(directory, "tmp")))


class IntakeSessionTests(SynchronousTestCase):
    """
    An ESMTP server of a worker, with a L{QueueDeliveryFactory} writing
    into an L{IntakeQueue}: the client's 250 comes once the parent has the
    message.
    """

    def test_250AfterTheParentHasIt(self):
        telling = []

        def notify(envelope, copy):
            telling.append((envelope, copy, defer.Deferred()))
            return telling[-1][2]

        spool = Spool(self, notify)
        heard = []
        spool.queue.listeners.append(heard.append)
        factory = ESMTPFactory(deliveryFactory=QueueDeliveryFactory(spool.intake, clock=Clock()), domain=b"relay.example", clock=Clock())
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        proto.makeConnection(transport)
        proto.dataReceived(
            b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
            b"DATA\r\nSubject: x\r\nTLS-Required: No\r\n\r\nhi\r\n.\r\n"
        )
        [(envelope, copy, told)] = telling
        self.assertNotIn(b"queued as", transport.value())
        # The parent adopts it from the copy (its state included), then
        # answers the worker.
        adopted = spool.queue.adopt(envelope.id, copy.data, copy.state)
        told.callback(None)
        self.assertTrue(transport.value().endswith(b"250 2.0.0 Ok: queued as " + envelope.id.encode() + b"\r\n"))
        self.assertEqual(heard, [adopted])
        self.assertTrue(adopted.tlsOptional)
        self.assertEqual(adopted.sender, b"a@example.org")
        with spool.queue.openMessage(envelope.id) as f:
            self.assertIn(b"Subject: x\r\nTLS-Required: No\r\n\r\nhi\r\n", f.read())


_WORKER = textwrap.dedent(
    """
    import sys
    from twisted.internet import defer, task
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from mailproto._address import Address
    from mailproto._commands import MailFrom, RcptTo
    from mailproto._intakequeue import IntakeQueue
    from mailproto._queue import Envelope, newMessageID
    from mailproto._spoollock import SpoolLock

    directory, count, told = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def notify(envelope, copy):
        # Tells the first few, then "the parent is gone".
        if notify.count >= told:
            raise ConnectionError("parent gone")
        notify.count += 1
        sys.stdout.write("told " + envelope.id + "\\n")
        sys.stdout.flush()
        return defer.succeed(None)

    notify.count = 0

    def main(reactor):
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
        if not SpoolLock(directory).isHeldElsewhere():
            raise SystemExit("the relay does not hold the lock")
        queue = IntakeQueue(directory, notify, reactor=reactor)
        mail = MailFrom(Address(b"a@example.org"))
        rcpts = [RcptTo(Address(b"b@example.com"))]
        commits = []
        for i in range(count):
            envelope = Envelope.fromCommands(newMessageID(), mail, rcpts, received=0.0, prefix=b"X-Worker: %d\\r\\n" % i)
            spool = queue.newMessage(envelope)
            spool.write(b"Subject: %d\\r\\n\\r\\n" % i + b"x" * (300000 if i == 0 else 100) + b"\\r\\n")
            commits.append(spool.commit())
        # A message still being received when the worker dies.
        unfinished = queue.newMessage(Envelope.fromCommands(newMessageID(), mail, rcpts, received=0.0))
        unfinished.write(b"y" * 300000)
        d = defer.gatherResults(commits)
        def done(envelopes):
            for envelope in envelopes:
                sys.stdout.write("committed " + envelope.id + "\\n")
            sys.stdout.write("fsyncs %d\\n" % queue.fsyncs)
            sys.stdout.flush()
        return d.addCallback(done)

    task.react(main)
    """
)


class WorkerProcessTests(TestCase):
    """
    A worker process writes into the spool while this process holds its
    lock as a relay; the worker never takes it.
    """

    timeout = 30

    def test_workerUnderRelay(self):
        directory = os.path.abspath(self.mktemp())
        lock = SpoolLock(directory, relay=True)
        queue = Queue(directory, lock=lock)
        lock.acquire()
        self.addCleanup(lock.release)
        queue.recover()
        heard = []
        queue.listeners.append(heard.append)
        env = dict(os.environ, PYTHONPATH=_ROOT)
        result = subprocess.run(
            [sys.executable, "-c", _WORKER, directory, "5", "3"], capture_output=True, env=env, timeout=20
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        lines = [line.split() for line in result.stdout.decode().splitlines()]
        told = [queueID for word, queueID in lines if word == "told"]
        committed = [queueID for word, queueID in lines if word == "committed"]
        self.assertEqual((len(told), len(committed)), (3, 5))
        self.assertIn(b"could not tell the relay", result.stderr + result.stdout)
        # The parent adopts what it was told, then finds the rest.
        for queueID in told:
            queue.adopt(queueID)
        rest = sorted(set(committed) - set(told))
        self.assertEqual(queue.adoptNew(), rest)
        self.assertEqual(queue.ids(), sorted(committed))
        self.assertEqual(sorted(e.id for e in heard), sorted(committed))
        for i, queueID in enumerate(committed):
            envelope = queue.getEnvelope(queueID)
            self.assertEqual(envelope.prefix, b"X-Worker: %d\r\n" % i)
            with queue.openMessage(queueID) as f:
                self.assertTrue(f.read().startswith(b"Subject: %d\r\n" % i))
        # The unfinished message is left in tmp/ by adoption; the relay
        # held its lock all along.
        self.assertEqual(len(os.listdir(os.path.join(directory, "tmp"))), 1)
        self.assertTrue(lock.held)
        with open(lock.path) as f:
            self.assertEqual(f.read().split(), [str(os.getpid()), "relay"])


class AnnounceTests(SynchronousTestCase):
    """
    A worker tells the parent each message with a copy of its files when
    AMP can carry it, and the parent adopts it from that copy.
    """

    def setUp(self):
        from twisted.internet.testing import MemoryReactorClock

        from mailproto._relayd._worker import WorkerRelay

        self.spool = Spool(self)
        spec = {"argv": ["--spool", os.path.abspath(self.spool.directory), "--smtp", "tcp:0"], "listeners": [], "worker": 1, "amp": 3}
        self.worker = WorkerRelay(spec, MemoryReactorClock())
        self.worker.build()
        self.asked = []
        self.worker.ask = lambda name, **kw: self.asked.append((name, kw)) or defer.Deferred()

    def parentGets(self, arguments: dict) -> dict:
        """
        @return: C{arguments} as the parent's responder gets them, through
            AMP's encoding of C{Queued}.
        """
        from twisted.protocols import amp

        from mailproto._relayd import _workerprotocol as wire

        box = wire.Queued.makeArguments(arguments, None)
        [parsed] = amp.parse(io.BytesIO(box.serialize()))
        return wire.Queued.parseArguments(parsed, None)

    def test_copyCarried(self):
        """
        A small message's copy and state go with its id; the parent's
        queue takes the message from them without reading its files.
        """
        told = self.successResultOf(self.spool.commit(prefix=b"X-Worker: 1\r\n"))
        copy = self.spool.copies[-1]
        self.worker._announce(told, copy)
        [(name, arguments)] = self.asked
        self.assertEqual(name, "queued")
        self.assertEqual((arguments["copy"], arguments["state"]), (copy.data, copy.state))
        received = self.parentGets(arguments)
        import mailproto._queue as queueModule

        self.patch(queueModule, "readQueueFile", lambda *a, **kw: self.fail("read"))
        adopted = self.spool.queue.adopt(received["queueID"], received["copy"], received["state"])
        self.assertEqual((adopted, adopted.prefix), (told, b"X-Worker: 1\r\n"))

    def test_tooLargeForAMP(self):
        """
        A copy over AMP's limit for one value is left out: the parent
        reads the files.  So is a state over it.
        """
        from twisted.protocols import amp

        from mailproto._intakequeue import QueuedCopy

        told = self.successResultOf(self.spool.commit())
        fits = QueuedCopy(b"x" * amp.MAX_VALUE_LENGTH, None)
        big = QueuedCopy(b"x" * (amp.MAX_VALUE_LENGTH + 1), None)
        bigState = QueuedCopy(b"x", None)
        bigState.state = b"s" * (amp.MAX_VALUE_LENGTH + 1)
        for copy in (fits, big, bigState, None):
            self.worker._announce(told, copy)
        sent = [("copy" in kw, "state" in kw) for _, kw in self.asked]
        self.assertEqual(sent, [(True, False), (False, False), (False, False), (False, False)])
        self.parentGets(self.asked[0][1])
