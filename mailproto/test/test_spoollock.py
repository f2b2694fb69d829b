# -*- test-case-name: mailproto.test.test_spoollock -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._spoollock} and for the lock a L{Queue} changes its
spool under: a queue used on its own beside a running relay (here, a
second process holding the lock as a relay does) changes no file.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

import mailproto
from mailproto._queue import Envelope, Queue, Recipient
from mailproto._relayd import _control
from mailproto._spoollock import LOCK_NAME, SpoolBusy, SpoolLock

_ROOT = str(pathlib.Path(mailproto.__file__).resolve().parent.parent)

_HOLDER = """
import sys
from mailproto._spoollock import SpoolLock
lock = SpoolLock(sys.argv[1], relay=sys.argv[2] == "relay")
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def holdElsewhere(case: SynchronousTestCase, spool: str, relay: bool = True):
    """
    Have another process hold C{spool}'s lock, as a running relay (or
    another command) does.

    @return: C{(pid, release)}: the holder's process id, and a callable
        that ends it (and so releases the lock).
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, spool, "relay" if relay else "other"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )

    def release() -> None:
        if holder.returncode is None:
            holder.stdin.close()
            holder.wait(10)
            holder.stdout.close()

    case.addCleanup(release)
    case.assertEqual(holder.stdout.readline(), b"held\n")
    return holder.pid, release


def synchronously(f, *args):
    return defer.maybeDeferred(f, *args)


def snapshot(spool: str) -> dict[str, bytes]:
    """
    @return: every file under C{spool} but the lock, with its content.
    """
    files = {}
    for top, _, names in os.walk(spool):
        for name in names:
            path = os.path.join(top, name)
            if os.path.relpath(path, spool) != LOCK_NAME:
                with open(path, "rb") as f:
                    files[os.path.relpath(path, spool)] = f.read()
    return files


class SpoolLockTests(SynchronousTestCase):
    """
    L{SpoolLock} says who holds it.
    """

    def setUp(self):
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.spool)

    def test_reexported(self):
        """
        The relay's control module names the same lock and error, where
        the relay and the command line found them before.
        """
        self.assertIs(_control.SpoolLock, SpoolLock)
        self.assertIs(_control.SpoolBusy, SpoolBusy)

    def test_relayHolds(self):
        """
        Refused because a relay holds it, L{SpoolBusy} names the spool and
        the relay's process id, and says what to use instead.
        """
        pid, _ = holdElsewhere(self, self.spool)
        error = self.assertRaises(SpoolBusy, SpoolLock(self.spool).acquire)
        self.assertEqual((error.directory, error.pid, error.relay), (self.spool, pid, True))
        self.assertEqual(
            str(error),
            f"the spool {self.spool} is in use by a running relay (pid {pid}); use `mailproto queue` to change it while it runs",
        )

    def test_otherHolds(self):
        """
        Held by a process that is not a relay (a command changing the
        files), the error says another process, with its id.
        """
        pid, _ = holdElsewhere(self, self.spool, relay=False)
        error = self.assertRaises(SpoolBusy, SpoolLock(self.spool).acquire)
        self.assertEqual((error.pid, error.relay), (pid, False))
        self.assertEqual(str(error), f"the spool {self.spool} is in use by another process (pid {pid})")

    def test_unknownHolder(self):
        """
        A holder that wrote nothing the lock can read (an older version)
        is still refused, with no process id.
        """
        lock = SpoolLock(self.spool)
        lock.acquire()
        self.addCleanup(lock.release)
        with open(lock.path, "wb") as f:
            f.write(b"garbage\xff")
        error = self.assertRaises(SpoolBusy, SpoolLock(self.spool).acquire)
        self.assertEqual((error.pid, error.relay), (None, False))
        self.assertEqual(str(error), f"the spool {self.spool} is in use by another process")

    def test_releasedWhenTheHolderEnds(self):
        """
        The lock goes with its process: once the holder ends, it is free,
        and its id no longer read.
        """
        _, release = holdElsewhere(self, self.spool)
        self.assertTrue(SpoolLock(self.spool).isHeldElsewhere())
        release()
        lock = SpoolLock(self.spool)
        self.assertFalse(lock.isHeldElsewhere())
        lock.acquire()
        self.addCleanup(lock.release)
        with open(lock.path, "rb") as f:
            self.assertEqual(f.read(), f"{os.getpid()} other\n".encode())
        lock.release()
        with open(lock.path, "rb") as f:
            self.assertEqual(f.read(), b"")


class QueueLockTests(SynchronousTestCase):
    """
    A L{Queue} changes its spool's files only under the spool's lock.
    """

    def setUp(self):
        self.spool = os.path.abspath(self.mktemp())
        self.queue = Queue(self.spool, runInThread=synchronously)
        self.ids = []
        for n in range(2):
            envelope = Envelope(f"{n:012x}", b"jo@example.com", [Recipient(b"ann@example.net")], received=1000.0)
            spool = self.queue.newMessage(envelope)
            spool.write(b"Subject: %d\r\n\r\nhello\r\n" % n)
            self.successResultOf(spool.commit())
            self.ids.append(envelope.id)
        # What a relay's recovery would remove: a message being received,
        # a state being written, and a message whose recipients are done.
        with open(os.path.join(self.spool, "tmp", "a" * 12), "wb") as f:
            f.write(b"in flight")
        with open(os.path.join(self.spool, "queue", self.ids[0] + ".state.tmp"), "wb") as f:
            f.write(b"{}")
        done = self.queue.getEnvelope(self.ids[1])
        done.recipients[0].state = "delivered"
        self.successResultOf(self.queue.update(done))
        self.assertFalse(self.queue.lock.held)

    def test_recoverBesideARelay(self):
        """
        L{Queue.recover} beside a running relay raises L{SpoolBusy}, with
        the relay's process id, and changes no file (the relay's message
        being received stays); once the relay is gone it recovers.
        """
        before = snapshot(self.spool)
        pid, release = holdElsewhere(self, self.spool)
        queue = Queue(self.spool, runInThread=synchronously)
        error = self.assertRaises(SpoolBusy, queue.recover)
        self.assertEqual((error.pid, error.relay), (pid, True))
        self.assertIn("use `mailproto queue` to change it while it runs", str(error))
        self.assertEqual(snapshot(self.spool), before)
        self.assertRaises(SpoolBusy, queue.readDirectory)
        self.assertEqual(snapshot(self.spool), before)

        release()
        self.assertEqual(queue.recover(), {"queued": 1, "removed": 1, "corrupt": 0})
        self.assertEqual(sorted(snapshot(self.spool)), [f"queue/{self.ids[0]}"])
        # The lock was for the time of the recovery only.
        self.assertFalse(queue.lock.held)
        self.assertFalse(SpoolLock(self.spool).isHeldElsewhere())

    def test_changesBesideARelay(self):
        """
        A state update, a removal and a new message from a queue used on
        its own fail with L{SpoolBusy} beside a running relay, and change
        no file; the queue still knows the message it did not remove.
        """
        before = snapshot(self.spool)
        holdElsewhere(self, self.spool)
        envelope = self.queue.getEnvelope(self.ids[0])
        envelope.attempts = 7
        self.failureResultOf(self.queue.update(envelope), SpoolBusy)
        self.failureResultOf(self.queue.remove(self.ids[0]), SpoolBusy)
        self.assertIs(self.queue.getEnvelope(self.ids[0]), envelope)
        new = self.queue.newMessage(Envelope("b" * 12, b"", [Recipient(b"ann@example.net")]))
        new.write(b"Subject: small\r\n\r\nhi\r\n")
        self.failureResultOf(new.commit(), SpoolBusy)
        big = self.queue.newMessage(Envelope("c" * 12, b"", [Recipient(b"ann@example.net")]))
        self.assertRaises(SpoolBusy, big.write, b"x" * (big.SPILL + 1))
        big.abort()
        self.assertEqual(snapshot(self.spool), before)
        self.assertNotIn("b" * 12, self.queue.ids())

    def test_ownerHoldsTheLock(self):
        """
        A queue given a lock its owner holds (as the relay gives its
        queue) recovers and changes the files under it, and leaves it
        held; another queue of the spool, used on its own meanwhile, is
        refused.
        """
        lock = SpoolLock(self.spool, relay=True)
        lock.acquire()
        self.addCleanup(lock.release)
        queue = Queue(self.spool, runInThread=synchronously, lock=lock)
        self.assertIs(queue.lock, lock)
        self.assertEqual(queue.recover()["queued"], 1)
        self.successResultOf(queue.remove(self.ids[0]))
        self.assertTrue(lock.held)
        self.assertEqual(queue.ids(), [])
        error = self.assertRaises(SpoolBusy, Queue(self.spool, runInThread=synchronously).recover)
        self.assertEqual((error.pid, error.relay), (os.getpid(), True))

    def test_heldWhileTheDiskWorks(self):
        """
        A queue used on its own holds the lock from a change until its
        disk work is done, through changes that overlap, and not after.
        """
        pending = []

        def later(f, *args):
            d = defer.Deferred()
            pending.append((f, args, d))
            return d

        queue = Queue(self.spool, runInThread=later)
        queue.recover()
        self.assertFalse(queue.lock.held)
        envelope = queue.getEnvelope(self.ids[0])
        first = queue.update(envelope)
        second = queue.update(envelope)
        self.assertTrue(queue.lock.held)
        self.assertTrue(SpoolLock(self.spool).isHeldElsewhere())
        f, args, d = pending.pop(0)
        d.callback(f(*args))
        self.successResultOf(first)
        # The second was batched after the first: still held for it.
        self.assertTrue(queue.lock.held)
        f, args, d = pending.pop(0)
        d.callback(f(*args))
        self.successResultOf(second)
        self.assertFalse(queue.lock.held)
        self.assertFalse(SpoolLock(self.spool).isHeldElsewhere())

    def test_releasedWhenTheDiskWorkFails(self):
        """
        A change whose disk work fails still gives the lock back.
        """
        queue = Queue(self.spool, runInThread=lambda f, *args: defer.fail(OSError("disk gone")))
        self.failureResultOf(queue.remove(self.ids[0]), OSError)
        self.assertFalse(queue.lock.held)
        self.assertFalse(SpoolLock(self.spool).isHeldElsewhere())
