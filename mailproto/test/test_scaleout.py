# -*- test-case-name: mailproto.test.test_scaleout -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Relays on several machines, each with its own spool, behind a load
balancer; and C{mailproto queue move}, which takes one out of service by
handing its queue to another without losing or doubling a message.

  - L{DisownTests}: L{Queue.disown}, a message given up to another spool.
  - L{ExportAdoptTests}: the control socket's C{export} and C{adopt}, on
    a relaying manager over a real L{Queue}, on a fake clock.
  - L{OfflineMoveTests}: C{mailproto queue move} with neither relay
    running: what moves with a message (hold, recipients delivered,
    attempts, replies, DKIM prefix), unknown ids, a target that is locked
    or not a spool, a failed copy, an interrupted move run again.
  - L{LiveMoveTests}: the same with both relays running in this process
    (the command in a thread): each message adopted at once, and a target
    that refuses, the message given back to its source.
  - L{InterruptedMoveTests}: a move interrupted between the copy and the
    source's removal, then both relays started for real: the message is
    delivered twice (the documented duplicate), and only once when the
    move is run again first.
  - L{HAProxyScaleOutTests}: a real HAProxy in front of two real C{twistd
    mailrelay --proxy-protocol} nodes; one node is drained, its queue
    moved while mail keeps coming; every message arrives exactly once.
  - L{HAProxyDrainRaceTests}: the same nodes, one drained while it is
    sending some of its messages: those it finishes, the others move,
    and every message arrives exactly once.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pwd
import shutil
import smtplib
import socket
import sys
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._commandline import _queuemove
from mailproto._commandline._cli import runCommand
from mailproto._queue import DELIVERED, FAILED, Envelope, Queue, Recipient, makePrivate, newMessageID, readQueueFile
from mailproto._relayd._control import SETTLE_INTERVAL, ControlFactory, RelayNotRunning, SpoolLock, ask, socketPath
from mailproto._relaymanager import SmartHostESMTPRelayingManager
from mailproto._replies import Reply
from mailproto.testing import ScriptedSMTPFactory, Trickle
from mailproto.test._peers import missing, which
from mailproto.test.test_daemon import (
    PACKAGE_ROOT,
    START_DEADLINE,
    RelayProcess,
    SinkProcess,
    _ChildProcess,
    freePort,
    readMaildir,
    testIDOf,
    waitUntil,
)
from mailproto.test.test_operations import runQueueCommand
from mailproto.test.test_relaymanager import RelayHarness, Scripted

# Seconds for something a relay does at once (an attempt, a delivery).
PROMPTLY = 20


def _synchronous(f, *args):
    return defer.maybeDeferred(f, *args)


def _message(testID: str) -> bytes:
    return (
        f"From: <sender@example.org>\r\nTo: <rcpt@example.com>\r\nSubject: scale-out {testID}\r\n"
        f"X-Test-Id: {testID}\r\n\r\nBody of {testID}.\r\n"
    ).encode("ascii")


def _queueMessage(queue: Queue, testID: str, recipients=(b"a@example.com",), **state) -> Envelope:
    """
    Queue a message in C{queue} as a relay would, with the delivery state
    C{state} written (a C{recipientStates} list sets each recipient's).

    @return: its envelope.
    """
    envelope = Envelope(newMessageID(), b"sender@example.org", [Recipient(r) for r in recipients], received=time.time())
    spool = queue.newMessage(envelope)
    spool.write(_message(testID))
    spool.commit()
    for recipient, value in zip(envelope.recipients, state.pop("recipientStates", ())):
        recipient.state = value
    for key, value in state.items():
        setattr(envelope, key, value)
    queue.update(envelope)
    return envelope


def _ids(spool: str) -> list[str]:
    """
    @return: the queue ids in C{spool}'s C{queue/}.
    """
    return sorted(name for name in os.listdir(os.path.join(spool, "queue")) if "." not in name)


def _byTestID(spool: str) -> dict[str, str]:
    """
    @return: the queue ids in C{spool}'s C{queue/}, by the test id of
        their message.
    """
    found = {}
    for queueID in _ids(spool):
        with open(os.path.join(spool, "queue", queueID), "rb") as f:
            found[testIDOf(f.read())] = queueID
    return found


def _files(spool: str, queueID: str) -> tuple[bytes, bytes | None]:
    """
    @return: a message's queue file and state file, as they are.
    """
    path = os.path.join(spool, "queue", queueID)
    with open(path, "rb") as f:
        data = f.read()
    try:
        with open(path + ".state", "rb") as f:
            return data, f.read()
    except FileNotFoundError:
        return data, None


def _runMove(*argv: str) -> tuple[int, str, str]:
    """
    Run C{mailproto queue move ARGV} in this process.

    @return: its exit status, output and error output.
    """
    out, err = io.StringIO(), io.StringIO()
    status = runCommand(["queue", "move", *argv], reactor=object(), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


class DisownTests(SynchronousTestCase):
    """
    L{Queue.disown}: the queue forgets a message and leaves its files for
    another process, which may give it back.
    """

    def setUp(self):
        self.spool = self.mktemp()
        self.queue = Queue(self.spool, runInThread=_synchronous)
        self.envelope = _queueMessage(self.queue, "d1")

    def test_disownLeavesFiles(self):
        """
        A message given up is no longer queued, due or adopted by
        L{Queue.adoptNew}; its files stay.
        """
        queueID = self.envelope.id
        self.assertIs(self.queue.disown(queueID), self.envelope)
        self.assertEqual(self.queue.ids(), [])
        self.assertEqual(self.queue.due(time.time() + 10), [])
        self.assertTrue(self.queue.isDisowned(queueID))
        self.assertEqual(self.queue.adoptNew(), [])
        self.assertEqual(_ids(self.spool), [queueID])
        self.assertRaises(KeyError, self.queue.disown, queueID)

    def test_adoptTakesBack(self):
        """
        L{Queue.adopt}, told the id, takes the message back.
        """
        queueID = self.envelope.id
        self.queue.disown(queueID)
        announced = []
        self.queue.listeners.append(announced.append)
        self.queue.adopt(queueID)
        self.assertEqual(self.queue.ids(), [queueID])
        self.assertFalse(self.queue.isDisowned(queueID))
        self.assertEqual([e.id for e in announced], [queueID])

    def test_recoverTakesBack(self):
        """
        Recovery (a restart) takes back a message whose files are still
        there.
        """
        queueID = self.envelope.id
        self.queue.disown(queueID)
        self.assertEqual(self.queue.recover()["queued"], 1)
        self.assertEqual(self.queue.ids(), [queueID])
        self.assertFalse(self.queue.isDisowned(queueID))

    def test_unknown(self):
        """
        A message the queue does not have cannot be given up.
        """
        self.assertRaises(KeyError, self.queue.disown, newMessageID())


class ExportAdoptTests(SynchronousTestCase):
    """
    The control socket's C{export} and C{adopt}, for a relaying manager
    on a fake clock over a real L{Queue} (disk work done at once).
    """

    def setUp(self):
        self.spool = self.mktemp()
        self.harness = RelayHarness(self, smartHost="smart.test:25", start=False)
        lock = SpoolLock(self.spool)
        makePrivate(self.spool)
        lock.acquire()
        self.addCleanup(lock.release)
        self.queue = Queue(self.spool, runInThread=_synchronous, lock=lock)
        self.harness.queue = self.harness.manager.queue = self.queue
        self.harness.manager.start()
        self.addCleanup(self.harness.manager.stop)
        self.protocol = ControlFactory(self.harness.manager).buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, command: str, queueID) -> None:
        self.transport.clear()
        self.protocol.dataReceived(json.dumps({"command": command, "id": queueID}).encode() + b"\n")

    def answer(self) -> dict | None:
        """
        @return: the answer sent since the last request, or C{None}.
        """
        value = self.transport.value()
        if not value:
            return None
        self.assertEqual(value.count(b"\n"), 1, value)
        return json.loads(value)

    def request(self, command: str, queueID) -> dict | None:
        self.send(command, queueID)
        return self.answer()

    def deferOnce(self) -> None:
        """
        Run the attempt in flight against a smart host that answers 451
        to RCPT.
        """
        _, _, factory = self.harness.connection()
        self.harness.serve(factory, Scripted(RCPT=b"451 4.7.1 Later"))
        self.harness.turn()

    def test_exportWaiting(self):
        """
        C{export} of a waiting message: the relay forgets it at once and
        never tries it again, its files stay, with its state as the relay
        has it (here a change made only in memory).
        """
        envelope = _queueMessage(self.queue, "e1")
        self.harness.turn()
        self.deferOnce()
        self.assertEqual(envelope.attempts, 1)
        envelope.warned = True
        self.assertEqual(self.request("export", envelope.id), {"ok": True, "done": False})
        self.assertEqual(self.queue.ids(), [])
        self.assertEqual(self.harness.manager.flush(), [])
        self.harness.turn(100_000)
        self.assertEqual(self.harness.connections(), [])
        state = readQueueFile(self.queue.getPath(envelope.id))
        self.assertEqual((state.attempts, state.warned, state.lastReply.code), (1, True, 451))
        self.assertEqual(self.request("hold", envelope.id), {"ok": False, "error": f"no message {envelope.id} in the queue"})

    def test_exportInFlight(self):
        """
        C{export} of a message being sent answers only once its attempt is
        over and its outcome written; no attempt starts after it.
        """
        envelope = _queueMessage(self.queue, "e2", recipients=(b"a@example.com", b"b@example.com"))
        self.harness.turn()
        _, _, factory = self.harness.connection()
        self.assertEqual(self.harness.manager.inFlight(), [envelope.id])
        self.send("export", envelope.id)
        self.harness.turn(SETTLE_INTERVAL * 3)
        self.assertIsNone(self.answer())
        replies = iter([b"250 2.1.5 Ok", b"451 4.7.1 Later"])
        self.harness.serve(factory, Scripted(RCPT=lambda line: next(replies)))
        self.harness.turn(SETTLE_INTERVAL)
        self.assertEqual(self.answer(), {"ok": True, "done": False})
        moved = readQueueFile(self.queue.getPath(envelope.id))
        self.assertEqual([r.state for r in moved.recipients], [DELIVERED, "waiting"])
        self.assertEqual(moved.attempts, 1)
        self.harness.turn(100_000)
        self.assertEqual(self.harness.connections(), [])

    def test_exportFinishedInFlight(self):
        """
        C{export} of a message whose attempt in flight delivers it: the
        answer says it is done, and its files are gone.
        """
        envelope = _queueMessage(self.queue, "e3")
        self.harness.turn()
        _, _, factory = self.harness.connection()
        self.send("export", envelope.id)
        self.harness.serve(factory, Scripted())
        self.harness.turn(SETTLE_INTERVAL)
        self.assertEqual(self.answer(), {"ok": True, "done": True})
        self.assertEqual(_ids(self.spool), [])

    def test_exportAgain(self):
        """
        C{export} of a message given up before (an interrupted move, run
        again) answers from its files: there, it is still to be moved;
        gone, it is not queued.
        """
        envelope = _queueMessage(self.queue, "e4", held=True)
        self.assertEqual(self.request("export", envelope.id), {"ok": True, "done": False})
        self.assertEqual(self.request("export", envelope.id), {"ok": True, "done": False})
        os.unlink(self.queue.getPath(envelope.id))
        self.assertEqual(self.request("export", envelope.id), {"ok": False, "error": f"no message {envelope.id} in the queue"})

    def test_exportRefusals(self):
        """
        C{export} of an id that is not queued, or without an id, is
        refused.
        """
        unknown = newMessageID()
        self.assertEqual(self.request("export", unknown), {"ok": False, "error": f"no message {unknown} in the queue"})
        self.assertEqual(self.request("export", None), {"ok": False, "error": "this command needs a queue id"})

    def test_adopt(self):
        """
        C{adopt} takes in a message put into C{queue/} by another process,
        with its state, and the relay tries it at once (unless held).
        """
        other = Queue(self.mktemp(), runInThread=_synchronous)
        waiting = _queueMessage(other, "a1", recipients=(b"a@example.com", b"b@example.com"), recipientStates=[DELIVERED])
        held = _queueMessage(other, "a2", held=True)
        for envelope in (waiting, held):
            self.assertTrue(_queuemove.copyInto(other.directory, self.spool, envelope.id))
        self.assertEqual(self.request("adopt", waiting.id), {"ok": True, "waiting": 1, "held": False})
        self.assertEqual(self.request("adopt", held.id), {"ok": True, "waiting": 1, "held": True})
        self.assertEqual(self.queue.ids(), sorted([waiting.id, held.id]))
        self.harness.turn()
        self.harness.connection()
        self.assertEqual(self.harness.manager.inFlight(), [waiting.id])

    def test_adoptRefusals(self):
        """
        C{adopt} of a file that is not there, or cannot be read (set aside
        in C{corrupt/}), is refused, saying why.
        """
        unknown = newMessageID()
        self.assertEqual(self.request("adopt", unknown), {"ok": False, "error": f"no message {unknown} in the queue"})
        garbage = newMessageID()
        with open(os.path.join(self.spool, "queue", garbage), "wb") as f:
            f.write(b"not an envelope\n")
        answer = self.request("adopt", garbage)
        self.assertFalse(answer["ok"])
        self.assertIn(f"queue file {garbage} set aside in corrupt/", answer["error"])
        self.assertEqual(os.listdir(os.path.join(self.spool, "corrupt")), [garbage])


class OfflineMoveTests(TestCase):
    """
    C{mailproto queue move} with no relay running on either spool: the
    command locks both and moves the files.
    """

    def setUp(self):
        self.source = os.path.abspath(self.mktemp())
        self.target = os.path.abspath(self.mktemp())
        self.queue = Queue(self.source, runInThread=_synchronous)

    def recovered(self, spool: str) -> Queue:
        """
        @return: the queue of C{spool} as its relay finds it at its start.
        """
        queue = Queue(spool, runInThread=_synchronous)
        queue.recover()
        return queue

    def test_stateMoves(self):
        """
        A message moves with its file and state: held stays held, a
        recipient delivered is not delivered again, attempts, replies and
        the DKIM prefix are kept; the source no longer has it; the
        target's relay finds it as it was.
        """
        reply = Reply(451, [b"Later"], b"4.7.1")
        held = _queueMessage(self.queue, "m1", held=True, attempts=3, lastReply=reply)
        partial = _queueMessage(
            self.queue, "m2", recipients=(b"a@example.com", b"b@example.com"), recipientStates=[DELIVERED], attempts=1
        )
        signed = _queueMessage(self.queue, "m3", prefix=b"DKIM-Signature: v=1; d=example.org\r\n")
        before = {e.id: _files(self.source, e.id) for e in (held, partial, signed)}
        status, out, err = _runMove("--spool", self.source, "--to", self.target, "--all")
        self.assertEqual((status, out, err), (0, f"3 messages moved to {self.target}\n", ""))
        self.assertEqual(_ids(self.source), [])
        self.assertEqual(os.listdir(os.path.join(self.source, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(self.target, "tmp")), [])
        self.assertEqual({queueID: _files(self.target, queueID) for queueID in _ids(self.target)}, before)
        queue = self.recovered(self.target)
        self.assertEqual(queue.getEnvelope(held.id).held, True)
        self.assertEqual((queue.getEnvelope(held.id).attempts, queue.getEnvelope(held.id).lastReply), (3, reply))
        self.assertEqual([r.address for r in queue.getEnvelope(partial.id).waiting], [b"b@example.com"])
        self.assertEqual(queue.getEnvelope(signed.id).prefix, b"DKIM-Signature: v=1; d=example.org\r\n")
        self.assertEqual([e.id for e in queue.due(time.time() + 1)], sorted([partial.id, signed.id]))

    def test_oneByPrefixAndFilters(self):
        """
        Messages are chosen as the other commands choose them: an id by a
        prefix (the line names it), or filters.
        """
        first = _queueMessage(self.queue, "p1")
        second = _queueMessage(self.queue, "p2", recipients=(b"x@other.example",))
        status, out, err = _runMove("--spool", self.source, "--to", self.target, first.id[:-3])
        self.assertEqual((status, out, err), (0, f"{first.id} moved to {self.target}\n", ""))
        status, out, err = _runMove("--spool", self.source, "--to", self.target, "--domain", "example.com")
        self.assertEqual((status, out), (0, f"0 messages moved to {self.target}\n"))
        status, out, err = _runMove("--spool", self.source, "--to", self.target, "--domain", "other.example")
        self.assertEqual((status, out), (0, f"1 message moved to {self.target}\n"))
        self.assertEqual(_ids(self.target), sorted([first.id, second.id]))

    def test_finishedNotMoved(self):
        """
        A message whose every recipient is done (its relay stopped before
        removing it) is not moved; the line says so.
        """
        done = _queueMessage(self.queue, "f1", recipientStates=[FAILED])
        status, out, err = _runMove("--spool", self.source, "--to", self.target, done.id)
        self.assertEqual((status, out, err), (0, f"0 messages moved to {self.target} (1 finished by its last attempt first)\n", ""))
        self.assertEqual(_ids(self.target), [])

    def test_unknownID(self):
        """
        An id that is not queued: exit status 1, one line naming it,
        nothing moved.
        """
        kept = _queueMessage(self.queue, "u1")
        unknown = "0123456789abcdef"
        status, out, err = _runMove("--spool", self.source, "--to", self.target, unknown)
        self.assertEqual((status, out, err), (1, "", f"mailproto queue move: no message {unknown} in the queue\n"))
        self.assertEqual(_ids(self.source), [kept.id])
        self.assertFalse(os.path.exists(self.target))

    def test_goneMeanwhile(self):
        """
        A message that is selected but gone when its turn comes: one line
        naming it, exit status 1, the others moved.
        """
        gone = _queueMessage(self.queue, "g1")
        kept = _queueMessage(self.queue, "g2")
        real = _queuemove.SourceSpool.giveUp

        def giveUp(source, queueID):
            if queueID == gone.id:
                os.unlink(os.path.join(source.directory, "queue", queueID))
            return real(source, queueID)

        self.patch(_queuemove.SourceSpool, "giveUp", giveUp)
        status, out, err = _runMove("--spool", self.source, "--to", self.target, "--all")
        self.assertEqual((status, out, err), (1, f"1 message moved to {self.target}\n", f"mailproto queue move: no message {gone.id} in the queue\n"))
        self.assertEqual(_ids(self.target), [kept.id])

    def test_usageErrors(self):
        """
        Without C{--to}, to the same spool, to a directory that is not a
        spool, or without ids or C{--all}: exit status 2, one line.
        """
        _queueMessage(self.queue, "x1")
        notSpool = self.mktemp()
        os.makedirs(notSpool)
        with open(os.path.join(notSpool, "something"), "w") as f:
            f.write("x")
        aFile = os.path.join(notSpool, "something")
        cases = [
            (("--spool", self.source, "--all"), "--to: give the spool directory"),
            (("--spool", self.source, "--to", self.source, "--all"), "--to: the same spool as --spool"),
            (("--spool", self.source, "--to", notSpool, "--all"), "not a relay's spool directory (it has no queue/) and not empty"),
            (("--spool", self.source, "--to", aFile, "--all"), "not a directory"),
            (("--spool", self.source, "--to", self.target), "give queue IDs, a filter"),
            (("--spool", self.source, "--to", self.target, "../x"), "'../x' is not a queue ID"),
        ]
        for argv, reason in cases:
            status, out, err = _runMove(*argv)
            self.assertEqual((status, out), (2, ""), (argv, err))
            self.assertIn(reason, err)
            self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(len(_ids(self.source)), 1)

    def test_targetLockedWithoutRelay(self):
        """
        A target spool locked by a process that does not answer on its
        control socket: nothing is moved, one line says so.
        """
        kept = _queueMessage(self.queue, "l1")
        makePrivate(self.target)
        lock = SpoolLock(self.target)
        lock.acquire()
        self.addCleanup(lock.release)
        status, out, err = _runMove("--spool", self.source, "--to", self.target, "--all")
        self.assertEqual(status, 1)
        self.assertEqual(err, f"mailproto queue move: a relay holds {self.target} but does not answer on its control socket; try again in a moment\n")
        self.assertEqual(_ids(self.source), [kept.id])

    def test_copyFails(self):
        """
        A copy that fails (a full disk): one line, the message stays in the
        source as it was, nothing is left in the target.
        """
        kept = _queueMessage(self.queue, "c1")
        before = _files(self.source, kept.id)
        calls = []

        def copyFile(source, destination, owner):
            calls.append(destination)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            return realCopy(source, destination, owner)

        realCopy = _queuemove._copyFile
        self.patch(_queuemove, "_copyFile", copyFile)
        status, out, err = _runMove("--spool", self.source, "--to", self.target, "--all")
        self.assertEqual((status, out), (1, f"0 messages moved to {self.target}\n"))
        self.assertEqual(err, f"mailproto queue move: cannot write {kept.id} into {self.target}: No space left on device\n")
        self.assertEqual(_files(self.source, kept.id), before)
        self.assertEqual(spoolFiles(self.target), [])

    def test_interruptedThenAgain(self):
        """
        A move interrupted after the copy, before the source's removal,
        leaves the message in both spools (the target's copy durable, the
        source marked); run again, it only removes the source's copy, and
        keeps what the target did with its copy since; and if the target
        has sent it since, it is not copied again.
        """
        first = _queueMessage(self.queue, "i1")
        second = _queueMessage(self.queue, "i2")
        _interruptedMove(self, self.source, self.target, first.id)
        _interruptedMove(self, self.source, self.target, second.id)
        self.assertEqual(_ids(self.source), sorted([first.id, second.id]))
        self.assertEqual(_ids(self.target), sorted([first.id, second.id]))
        # The target's relay tried the first since, and sent the second.
        target = Queue(self.target, runInThread=_synchronous)
        target.recover()
        envelope = target.getEnvelope(first.id)
        envelope.attempts = 7
        target.update(envelope)
        target.remove(second.id)
        status, out, err = _runMove("--spool", self.source, "--to", self.target, "--all")
        self.assertEqual((status, out, err), (0, f"2 messages moved to {self.target}\n", ""))
        self.assertEqual(_ids(self.source), [])
        self.assertEqual(os.listdir(os.path.join(self.source, "tmp")), [])
        self.assertEqual(_ids(self.target), [first.id])
        self.assertEqual(self.recovered(self.target).getEnvelope(first.id).attempts, 7)

    def test_missingSpoolWithLongPath(self):
        """
        A spool directory that does not exist, whose path is too long for
        a UNIX socket address: no relay runs on it (L{ask} does not fail
        otherwise), and a move there makes it.
        """
        moved = _queueMessage(self.queue, "n1")
        target = os.path.join(self.target, "x" * 100)
        self.assertRaises(RelayNotRunning, ask, target, "status")
        status, out, err = _runMove("--spool", self.source, "--to", target, "--all")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(_ids(target), [moved.id])

    def test_filesOwnedByTargetsUser(self):
        """
        Run as root, the copies belong to the target spool's owner, so
        that its relay (running as that user) can read them.
        """
        if os.geteuid() != 0:
            raise self.skipTest("only root can give files away")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise self.skipTest("no user nobody")
        moved = _queueMessage(self.queue, "o1", attempts=1)
        makePrivate(self.target)
        for name in ("", "queue"):
            os.chown(os.path.join(self.target, name), nobody.pw_uid, nobody.pw_gid)
        status, out, err = _runMove("--spool", self.source, "--to", self.target, "--all")
        self.assertEqual(status, 0, err)
        for suffix in ("", ".state"):
            status = os.stat(os.path.join(self.target, "queue", moved.id + suffix))
            self.assertEqual((status.st_uid, status.st_gid, status.st_mode & 0o777), (nobody.pw_uid, nobody.pw_gid, 0o600))


class _Crash(BaseException):
    """
    The command's process dying, in a test.
    """


def _interruptedMove(testCase, source: str, target: str, queueID: str) -> None:
    """
    Run a move of C{queueID} from C{source} to C{target} that dies just
    before removing it from the source (its locks go, as a dead process's
    do).
    """

    def die(spool, queueID):
        raise _Crash()

    original = _queuemove.removeFiles
    _queuemove.removeFiles = die
    try:
        testCase.assertRaises(_Crash, _runMove, "--spool", source, "--to", target, queueID)
    finally:
        _queuemove.removeFiles = original
    testCase.assertTrue(os.path.exists(_queuemove.markerPath(source, queueID)))


def spoolFiles(spool: str) -> list[str]:
    """
    @return: every file in C{spool}'s C{tmp/} and C{queue/}.
    """
    return sorted(os.listdir(os.path.join(spool, "tmp")) + os.listdir(os.path.join(spool, "queue")))


class _InProcessRelay:
    """
    A relay's queue, relaying manager and control socket in this process,
    on the real reactor: what C{mailproto queue} talks to.  Its smart
    host is a closed port, so messages wait.

    @ivar queue: the L{Queue} (or the queue given).
    @ivar manager: the relaying manager.
    """

    def __init__(self, testCase, spool: str, queue=None) -> None:
        makePrivate(spool)
        lock = SpoolLock(spool, relay=True)
        lock.acquire()
        testCase.addCleanup(lock.release)
        if queue is None:
            queue = Queue(spool, lock=lock)
            queue.recover()
        self.queue = queue
        self.manager = SmartHostESMTPRelayingManager(queue, smartHost=f"127.0.0.1:{freePort()}", hostname="relay.test", reactor=reactor)
        self.manager.start()
        testCase.addCleanup(self.manager.stop)
        port = reactor.listenUNIX(socketPath(spool), ControlFactory(self.manager), mode=0o600)
        testCase.addCleanup(port.stopListening)


class LiveMoveTests(TestCase):
    """
    C{mailproto queue move} with a relay running on each spool (in this
    process; the command runs in a thread, as it would in its own
    process).
    """

    timeout = 30

    def setUp(self):
        self.source = os.path.abspath(self.mktemp())
        self.target = os.path.abspath(self.mktemp())
        queue = Queue(self.source, runInThread=_synchronous)
        self.held = _queueMessage(queue, "r1", held=True, attempts=2)
        self.partial = _queueMessage(queue, "r2", recipients=(b"a@example.com", b"b@example.com"), recipientStates=[DELIVERED])
        del queue

    def move(self, *argv: str) -> defer.Deferred:
        return deferToThread(_runMove, "--spool", self.source, "--to", self.target, *argv)

    @defer.inlineCallbacks
    def test_bothRunning(self):
        """
        The source's relay gives each message up, the target's adopts it
        at once, with its state; the source no longer has it.
        """
        source = _InProcessRelay(self, self.source)
        target = _InProcessRelay(self, self.target)
        status, out, err = yield self.move("--all")
        self.assertEqual((status, out, err), (0, f"2 messages moved to {self.target}\n", ""))
        self.assertEqual(source.queue.ids(), [])
        self.assertEqual(_ids(self.source), [])
        self.assertEqual(target.queue.ids(), sorted([self.held.id, self.partial.id]))
        self.assertTrue(target.queue.getEnvelope(self.held.id).held)
        self.assertEqual(target.queue.getEnvelope(self.held.id).attempts, 2)
        self.assertEqual([r.address for r in target.queue.getEnvelope(self.partial.id).waiting], [b"b@example.com"])
        yield source.manager.whenIdle()
        yield target.manager.whenIdle()

    @defer.inlineCallbacks
    def test_targetStopped(self):
        """
        With the target's relay stopped, the files are written into its
        spool, locked meanwhile; its relay finds them when it starts.
        """
        source = _InProcessRelay(self, self.source)
        status, out, err = yield self.move(self.held.id)
        self.assertEqual((status, out, err), (0, f"{self.held.id} moved to {self.target}\n", ""))
        self.assertEqual(source.queue.ids(), [self.partial.id])
        target = _InProcessRelay(self, self.target)
        self.assertEqual(target.queue.ids(), [self.held.id])
        self.assertTrue(target.queue.getEnvelope(self.held.id).held)
        yield source.manager.whenIdle()

    @defer.inlineCallbacks
    def test_targetRefuses(self):
        """
        A target relay that cannot adopt (here: a queue without C{adopt},
        as a relay of a version before): its copy is removed and the
        source's relay takes each message back and keeps it; one line per
        message, exit status 1.
        """
        from mailproto.testing import MemoryQueue

        source = _InProcessRelay(self, self.source)
        _InProcessRelay(self, self.target, queue=MemoryQueue())
        status, out, err = yield self.move("--all")
        self.assertEqual((status, out), (1, f"0 messages moved to {self.target}\n"))
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, err)
        for line, queueID in zip(lines, sorted([self.held.id, self.partial.id])):
            self.assertEqual(
                line,
                f"mailproto queue move: the relay on {self.target} refused {queueID}: "
                f"this relay's queue cannot take messages from other spools; it stays in {self.source}",
            )
        self.assertEqual(source.queue.ids(), sorted([self.held.id, self.partial.id]))
        self.assertEqual(_ids(self.target), [])
        self.assertEqual(os.listdir(os.path.join(self.source, "tmp")), [])
        yield source.manager.whenIdle()

    @defer.inlineCallbacks
    def test_sourceLockedWithoutRelay(self):
        """
        A source spool locked by a process that does not answer: nothing
        is moved, one line.
        """
        lock = SpoolLock(self.source)
        lock.acquire()
        self.addCleanup(lock.release)
        status, out, err = yield self.move("--all")
        self.assertEqual(status, 1)
        self.assertEqual(err, f"mailproto queue move: a relay holds {self.source} but does not answer on its control socket; try again in a moment\n")
        self.assertEqual(len(_ids(self.source)), 2)


# -- real relays ----------------------------------------------------------------------


class _SinkOnPort(SinkProcess):
    """
    C{mailproto sink} on a port chosen before it starts: the smart host
    the relays were told of, down until it starts.
    """

    @classmethod
    @defer.inlineCallbacks
    def startOn(cls, testCase, maildir: str, port: int):
        """
        @return: a L{Deferred} firing with the sink once it listens on
            127.0.0.1:C{port}.
        """
        sink = cls(os.path.abspath(maildir))
        pythonPath = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        argv = [sys.executable, "-m", "mailproto", "sink", "--quiet", "--listen", f"tcp:{port}:interface=127.0.0.1", "--maildir", sink.maildir]
        sink._spawn(testCase, argv, dict(os.environ, PYTHONPATH=pythonPath))
        yield waitUntil(lambda: sink.port is not None or not sink.running, START_DEADLINE, "the sink to listen")
        if sink.port != port:
            raise AssertionError(f"the sink did not listen on {port}:\n{sink.text()}")
        return sink


def _arrivals(maildir: str) -> collections.Counter:
    """
    @return: how many times each test id arrived in C{maildir}.
    """
    return collections.Counter(testIDOf(m) for m in readMaildir(maildir).values())


def _startNode(testCase, scratch: str, name: str, smartHostPort: int, *extra: str, retry: str = "1s,2s") -> RelayProcess:
    """
    Start a C{twistd mailrelay} node with the spool C{scratch/name},
    relaying through 127.0.0.1:C{smartHostPort}, retrying as C{retry}
    says (every second or two by default).
    """
    arguments = [
        "--spool", os.path.join(scratch, name),
        "--smarthost", f"127.0.0.1:{smartHostPort}",
        "--hostname", f"{name}.scaleout.test",
        "--retry-schedule", retry,
        *extra,
    ]  # fmt: skip
    return RelayProcess.spawn(testCase, arguments, scratch)


class InterruptedMoveTests(TestCase):
    """
    A move interrupted after the copy and before the source's removal,
    then both relays started: what the module docstring of
    L{mailproto._commandline._queuemove} promises.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_duplicateNotLoss(self):
        """
        Both spools have the message; started, both relays send it: it
        arrives twice (the duplicate documented), never zero times.  A
        message whose interrupted move was run again arrives once.
        """
        scratch = os.path.abspath(self.mktemp())
        source, target = os.path.join(scratch, "source"), os.path.join(scratch, "target")
        queue = Queue(source, runInThread=_synchronous)
        doubled = _queueMessage(queue, "doubled")
        once = _queueMessage(queue, "once")
        del queue
        _interruptedMove(self, source, target, doubled.id)
        _interruptedMove(self, source, target, once.id)
        status, out, err = _runMove("--spool", source, "--to", target, once.id)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual((_ids(source), _ids(target)), ([doubled.id], sorted([doubled.id, once.id])))

        sink = yield SinkProcess.start(self, os.path.join(scratch, "maildir"))
        relays = [
            _startNode(self, scratch, name, sink.port, "--smtp", f"tcp:{freePort()}:interface=127.0.0.1")
            for name in ("source", "target")
        ]
        for relay in relays:
            yield relay.whenListening()
        yield waitUntil(
            lambda: not _ids(source) and not _ids(target) and _arrivals(sink.maildir) == {"doubled": 2, "once": 1},
            PROMPTLY,
            lambda: f"the deliveries; arrived {_arrivals(sink.maildir)}:\n{relays[0].text()}\n{relays[1].text()}",
        )


# -- a real HAProxy in front of two nodes ---------------------------------------------


HAPROXY = which("haproxy")

HAPROXY_CONFIG = """\
global
    maxconn 100
    stats socket {socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 5s
    timeout client 20s
    timeout server 20s
    timeout check 5s

frontend smtp
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    server nodeA 127.0.0.1:{a} send-proxy check inter 300ms check-send-proxy
    server nodeB 127.0.0.1:{b} send-proxy check inter 300ms check-send-proxy
"""


class _HAProxy(_ChildProcess):
    """
    C{haproxy -db -f CONFIG} in front of two nodes, with its runtime API
    on a UNIX socket.
    """

    what = "haproxy"

    @classmethod
    @defer.inlineCallbacks
    def start(cls, testCase, directory: str, nodePorts: tuple[int, int]):
        """
        @return: a L{Deferred} firing with the running HAProxy, once it
            accepts connections on its C{port}.
        """
        proxy = cls()
        proxy.port = freePort()
        # A short path: a UNIX socket's is limited to about 100 octets.
        runtime = tempfile.mkdtemp(prefix="haproxy-")
        testCase.addCleanup(shutil.rmtree, runtime, True)
        proxy.socket = os.path.join(runtime, "admin.sock")
        config = os.path.join(directory, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(HAPROXY_CONFIG.format(socket=proxy.socket, port=proxy.port, a=nodePorts[0], b=nodePorts[1]))
        proxy._spawn(testCase, [HAPROXY, "-db", "-f", config], {"PATH": os.environ.get("PATH", "")}, directory)
        yield waitUntil(
            lambda: not proxy.running or (proxy._accepts() and os.path.exists(proxy.socket)),
            START_DEADLINE,
            lambda: f"haproxy to listen:\n{proxy.text()}",
        )
        if not proxy.running:
            raise AssertionError(f"haproxy exited ({proxy.reason}) before listening:\n{proxy.text()}")
        return proxy

    def _accepts(self) -> bool:
        with socket.socket() as probe:
            probe.settimeout(1)
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def command(self, line: str) -> str:
        """
        Send one command to HAProxy's runtime API (blocking, briefly).

        @return: its answer.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.socket)
            s.sendall(line.encode("ascii") + b"\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        return answer.decode("utf-8", "replace")


def _sendThrough(port: int, testID: str) -> defer.Deferred:
    """
    Send one message through HAProxy on C{port}, in a thread.

    @return: a L{Deferred} firing once the relay behind it said C{250}.
    """

    def send():
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=20) as client:
            refused = client.sendmail("sender@example.org", ["rcpt@example.com"], _message(testID))
        if refused:
            raise AssertionError(f"{testID} refused: {refused}")

    return deferToThread(send)


class _TwoNodes(TestCase):
    """
    Two C{twistd mailrelay --proxy-protocol} nodes, each with its own
    spool, behind a real HAProxy (round robin), relaying through a smart
    host that is down at first.

    @cvar retry: the nodes' C{--retry-schedule}.
    """

    timeout = 120
    retry = "1s,2s"

    @defer.inlineCallbacks
    def setUp(self):
        if HAPROXY is None:
            missing("haproxy is not installed (Debian: apt-get install haproxy)")
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.smartHostPort = freePort()
        self.ports = (freePort(), freePort())
        self.nodes = [
            _startNode(
                self, self.scratch, name, self.smartHostPort,
                "--proxy-protocol", "--smtp", f"tcp:{port}:interface=127.0.0.1", "--relay-network", "127.0.0.1/32",
                retry=self.retry,
            )
            for name, port in zip(("nodeA", "nodeB"), self.ports)
        ]  # fmt: skip
        for node in self.nodes:
            yield node.whenListening()
        self.proxy = yield _HAProxy.start(self, self.scratch, self.ports)

    def spool(self, name: str) -> str:
        return os.path.join(self.scratch, name)

    def queue(self, command: str, node: str, *arguments: str) -> defer.Deferred:
        """
        Run C{mailproto queue COMMAND --spool NODE'S-SPOOL ARGUMENTS}.

        @return: see L{runQueueCommand}.
        """
        return runQueueCommand(self, command, "--spool", self.spool(node), *arguments)

    @defer.inlineCallbacks
    def sendAndDrain(self, count: int) -> list[str]:
        """
        Send C{count} messages through HAProxy, check that both nodes got
        some, and take node A out of HAProxy (maintenance: no new client
        reaches it).

        @return: the test ids sent.
        """
        sent = []
        for n in range(count):
            testID = f"{self._testMethodName}-{n}"
            yield _sendThrough(self.proxy.port, testID)
            sent.append(testID)
        onA, onB = _byTestID(self.spool("nodeA")), _byTestID(self.spool("nodeB"))
        self.assertEqual(sorted([*onA, *onB]), sorted(sent))
        self.assertTrue(onA and onB, (onA, onB))
        answer = yield deferToThread(self.proxy.command, "set server nodes/nodeA state maint")
        self.assertEqual(answer.strip(), "", answer)
        return sent

    def assertClean(self) -> None:
        """
        Neither node logged a traceback.
        """
        for node in self.nodes:
            self.assertNotIn("Traceback (most recent call last)", node.text())


class HAProxyScaleOutTests(_TwoNodes):
    """
    Node A drained, its queue moved to node B while mail keeps coming.
    """

    @defer.inlineCallbacks
    def test_drainOneNode(self):
        """
        Mail through HAProxy spreads over both nodes.  Node A is taken out
        (HAProxy's runtime API: maintenance, so no new client reaches it),
        and its queue moved to node B (A running) while mail keeps coming
        through HAProxy; then A is stopped and the smart host comes up:
        every message acknowledged arrives exactly once.
        """
        sent = yield self.sendAndDrain(8)
        onA = _byTestID(self.spool("nodeA"))
        moving = self.queue("move", "nodeA", "--to", self.spool("nodeB"), "--all")
        for n in range(6):
            testID = f"during-{n}"
            yield _sendThrough(self.proxy.port, testID)
            sent.append(testID)
        out, err, code = yield moving
        self.assertEqual((out, err, code), (f"{len(onA)} messages moved to {self.spool('nodeB')}\n", "", 0))
        self.assertEqual(_ids(self.spool("nodeA")), [])
        self.assertEqual(sorted(_byTestID(self.spool("nodeB"))), sorted(sent))
        nodeA, nodeB = self.nodes
        yield nodeA.terminate()
        self.assertTrue(nodeA.stoppedCleanly, nodeA.text())
        self.assertEqual(_ids(self.spool("nodeA")), [])

        sink = yield _SinkOnPort.startOn(self, os.path.join(self.scratch, "maildir"), self.smartHostPort)
        yield waitUntil(
            lambda: not _ids(self.spool("nodeB")),
            PROMPTLY,
            lambda: f"node B's queue to empty; arrived {_arrivals(sink.maildir)}:\n{nodeB.text()[-3000:]}",
        )
        arrivals = _arrivals(sink.maildir)
        self.assertEqual(sorted(arrivals), sorted(sent))
        self.assertEqual([testID for testID, count in arrivals.items() if count != 1], [])
        self.assertClean()


class HAProxyDrainRaceTests(_TwoNodes):
    """
    Node A drained while it is delivering: its nodes retry only after
    five minutes, so that what is sent, and when, is what the test says.
    """

    retry = "5m"

    @defer.inlineCallbacks
    def test_drainWhileDelivering(self):
        """
        The smart host comes up, slow (half a second for each message),
        and half of node A's messages are flushed just before its queue
        is moved: those are being sent when node A is asked to give them
        up, and node A finishes them (the move waits); the others are
        moved.  Node B, flushed, sends the rest: each message arrives
        exactly once.
        """
        sent = yield self.sendAndDrain(12)
        onA = sorted(_byTestID(self.spool("nodeA")).values())
        flushed = onA[: len(onA) // 2]
        smartHost = ScriptedSMTPFactory({b"EOD": Trickle(b"250 2.0.0 Ok: queued\r\n", 0.5)})
        listening = reactor.listenTCP(self.smartHostPort, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)

        def arrivals() -> collections.Counter:
            return collections.Counter(testIDOf(m) for m in smartHost.messages)

        out, err, code = yield self.queue("flush", "nodeA", *flushed)
        self.assertEqual((out, err, code), (f"{len(flushed)} messages to be tried now\n", "", 0))
        out, err, code = yield self.queue("move", "nodeA", "--to", self.spool("nodeB"), "--all")
        self.assertEqual((err, code), ("", 0))
        self.assertTrue(out.startswith(f"{len(onA) - len(flushed)} messages moved to {self.spool('nodeB')}"), out)
        self.assertEqual(_ids(self.spool("nodeA")), [])
        self.assertEqual(len(arrivals()), len(flushed))
        nodeA, nodeB = self.nodes
        yield nodeA.terminate()
        self.assertTrue(nodeA.stoppedCleanly, nodeA.text())
        out, err, code = yield self.queue("flush", "nodeB")
        self.assertEqual((err, code), ("", 0))
        yield waitUntil(
            lambda: not _ids(self.spool("nodeB")) and sorted(arrivals()) == sorted(sent),
            PROMPTLY,
            lambda: f"every message delivered; arrived {arrivals()}:\n{nodeB.text()[-3000:]}",
        )
        self.assertEqual([testID for testID, count in arrivals().items() if count != 1], [])
        self.assertClean()
