# -*- test-case-name: mailproto.test.test_queuecommand -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for what an operator does to a relay's queue: the relaying
manager's L{flush}, L{requeue} and L{delete}, the control socket that
carries them (L{mailproto._relayd._control}), the spool's lock, and the
C{mailproto queue} command on a spool with no relay running.  The same
commands against a live relay are in L{mailproto.test.test_operations}.
"""

from __future__ import annotations

import io
import json
import os

from hypothesis import given, strategies as st
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._commandline._cli import runCommand
from mailproto._relayd._control import ControlFactory, RelayNotRunning, SpoolBusy, SpoolLock, ask, socketPath
from mailproto._queue import DELIVERED, Envelope, Queue, Recipient, newMessageID
from mailproto._commandline._queuecommand import AmbiguousID, matchID, matches, spoolProblem
from mailproto._replies import Reply
from mailproto.test.test_relaymanager import RelayHarness, Scripted


class ManagerCommandTests(SynchronousTestCase):
    """
    L{SmartHostESMTPRelayingManager.flush}, C{requeue}, C{delete} and
    C{inFlight}.
    """

    def setUp(self):
        self.harness = RelayHarness(self, smartHost="smart.test:25")

    def deferOnce(self, envelope: Envelope) -> None:
        """
        Run the first attempt of C{envelope} against a smart host that
        answers 451 to RCPT.
        """
        harness = self.harness
        harness.turn()
        _, _, factory = harness.connection()
        harness.serve(factory, Scripted(RCPT=b"451 4.7.1 Later"))
        harness.turn()
        self.assertEqual(envelope.attempts, 1)
        self.assertGreater(envelope.nextAttempt, harness.reactor.seconds() + 200)

    def test_flushAll(self):
        """
        C{flush()} makes every waiting message due now: the manager
        connects at once instead of after the retry delay.
        """
        harness = self.harness
        envelope = harness.enqueue([b"a@example.net"])
        self.deferOnce(envelope)
        self.assertEqual(harness.connections(), [])
        self.assertEqual(harness.manager.flush(), [envelope.id])
        harness.turn()
        [(host, port, _)] = harness.connections()
        self.assertEqual((host, port), ("smart.test", 25))
        self.assertEqual(harness.manager.inFlight(), [envelope.id])

    def test_flushOne(self):
        """
        C{flush(ID)} makes only that message due.
        """
        harness = self.harness
        first = harness.enqueue([b"a@example.net"])
        second = harness.enqueue([b"b@example.net"])
        harness.turn()
        _, _, factory = harness.connection()
        harness.serve(factory, Scripted(RCPT=b"451 4.7.1 Later"))
        harness.turn()
        self.assertEqual((first.attempts, second.attempts), (1, 1))
        self.assertEqual(harness.manager.flush(second.id), [second.id])
        harness.turn()
        harness.connection()
        self.assertEqual(harness.manager.inFlight(), [second.id])
        self.assertGreater(first.nextAttempt, harness.reactor.seconds())

    def test_flushLeavesInFlightAlone(self):
        """
        A message being sent is not made due again.
        """
        harness = self.harness
        envelope = harness.enqueue([b"a@example.net"])
        harness.turn()
        harness.connection()
        self.assertEqual(harness.manager.inFlight(), [envelope.id])
        self.assertEqual(harness.manager.flush(), [])

    def test_flushUnknown(self):
        """
        C{flush} of an id that is not queued raises L{KeyError}.
        """
        self.assertRaises(KeyError, self.harness.manager.flush, newMessageID())

    def test_requeue(self):
        """
        C{requeue} sets the attempt count back to 0 and the warning flag
        off, writes that state, and makes the message due now; the next
        deferral waits the schedule's first delay again.
        """
        harness = self.harness
        envelope = harness.enqueue([b"a@example.net"])
        self.deferOnce(envelope)
        envelope.warned = True
        harness.manager.requeue(envelope.id)
        state = harness.queue.states[envelope.id]
        self.assertEqual((state["attempts"], state["warned"]), (0, False))
        self.assertEqual(envelope.nextAttempt, harness.reactor.seconds())
        harness.turn()
        _, _, factory = harness.connection()
        harness.serve(factory, Scripted(RCPT=b"451 4.7.1 Later"))
        harness.turn()
        self.assertEqual(envelope.attempts, 1)
        self.assertEqual(envelope.nextAttempt, harness.reactor.seconds() + 300)

    def test_requeueOrDeleteInFlight(self):
        """
        A message being sent can be neither requeued nor deleted: the
        error says to try again.
        """
        harness = self.harness
        envelope = harness.enqueue([b"a@example.net"])
        harness.turn()
        harness.connection()
        for command in (harness.manager.requeue, harness.manager.delete):
            error = self.assertRaises(ValueError, command, envelope.id)
            self.assertIn("being sent now", str(error))
        self.assertIn(envelope.id, harness.queue.ids())

    def test_delete(self):
        """
        C{delete} takes a waiting message out of the queue, with no report
        to its sender, and the manager forgets it.
        """
        harness = self.harness
        envelope = harness.enqueue([b"a@example.net"], sender=b"jo@example.com")
        self.deferOnce(envelope)
        harness.manager.delete(envelope.id)
        self.assertEqual(harness.queue.ids(), [])
        self.assertEqual(harness.queue.removed, [envelope.id])
        harness.turn(5000)
        self.assertEqual(harness.connections(), [])
        self.assertRaises(KeyError, harness.manager.delete, envelope.id)

    def test_holdKeepsFromBeingTried(self):
        """
        A held message is never attempted: not when due, not by C{flush},
        not after the retry delay; its state file says C{held}.
        C{release} makes it due at once, and it is sent.
        """
        harness = self.harness
        held = harness.enqueue([b"a@example.net"])
        self.assertEqual(self.successResultOf(harness.manager.hold(held.id)), True)
        self.assertEqual(self.successResultOf(harness.manager.hold(held.id)), False)
        self.assertEqual(harness.queue.states[held.id]["held"], True)
        harness.turn()
        self.assertEqual(harness.connections(), [])
        self.assertEqual(harness.manager.flush(), [])
        self.assertEqual(harness.queue.due(harness.reactor.seconds() + 10**6), [])
        harness.turn(10**6)
        self.assertEqual((harness.connections(), held.attempts), ([], 0))
        self.assertEqual(self.successResultOf(harness.manager.release(held.id)), True)
        self.assertEqual(self.successResultOf(harness.manager.release(held.id)), False)
        self.assertEqual(harness.queue.states[held.id]["held"], False)
        harness.turn()
        harness.connection()
        self.assertEqual(harness.manager.inFlight(), [held.id])

    def test_holdInFlightRefused(self):
        """
        A message being sent cannot be held; an unknown one raises
        L{KeyError}.
        """
        harness = self.harness
        envelope = harness.enqueue([b"a@example.net"])
        harness.turn()
        harness.connection()
        error = self.assertRaises(ValueError, harness.manager.hold, envelope.id)
        self.assertEqual(str(error), f"{envelope.id} is being sent now; try again when the attempt is over")
        self.assertFalse(envelope.held)
        self.assertRaises(KeyError, harness.manager.hold, newMessageID())
        self.assertRaises(KeyError, harness.manager.release, newMessageID())

    def test_outcomeListeners(self):
        """
        Each recorded attempt is told to the outcome listeners with its
        result and when it started and ended; a listener that raises is
        logged and does not stop the others.
        """
        harness = self.harness
        heard = []

        def broken(*args):
            raise RuntimeError("listener bug")

        harness.manager.outcomeListeners.extend([broken, lambda *args: heard.append(args)])
        envelope = harness.enqueue([b"a@example.net", b"b@example.net"])
        harness.turn()
        _, _, factory = harness.connection()
        started = harness.reactor.seconds()
        harness.serve(factory, Scripted(RCPT=lambda line: b"550 5.1.1 No" if b"b@" in line else b"250 OK"))
        harness.turn()
        [(heardEnvelope, result, heardStarted, now)] = heard
        self.assertIs(heardEnvelope, envelope)
        self.assertEqual([r.address for r in result.delivered], [b"a@example.net"])
        self.assertEqual([r.address for r in result.failed], [b"b@example.net"])
        self.assertEqual(heardStarted, started)
        self.assertGreaterEqual(now, started)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ControlProtocolTests(SynchronousTestCase):
    """
    The control socket's protocol: one JSON request per line, one JSON
    answer per line.
    """

    def setUp(self):
        self.harness = RelayHarness(self, smartHost="smart.test:25")
        self.protocol = ControlFactory(self.harness.manager).buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def request(self, line: bytes) -> dict:
        self.transport.clear()
        self.protocol.dataReceived(line + b"\n")
        answer = self.transport.value()
        self.assertTrue(answer.endswith(b"\n"), answer)
        self.assertEqual(answer.count(b"\n"), 1, answer)
        return json.loads(answer)

    def test_status(self):
        """
        C{status} gives the messages in flight, the queue's size and the
        relay's process id.
        """
        envelope = self.harness.enqueue([b"a@example.net"])
        self.harness.turn()
        answer = self.request(b'{"command": "status"}')
        self.assertEqual(answer, {"ok": True, "inFlight": [envelope.id], "queued": 1, "pid": os.getpid()})

    def test_flushRequeueDelete(self):
        """
        C{flush}, C{requeue} and C{delete} do what the manager's methods
        do and answer C{ok}.
        """
        harness = self.harness
        envelope = harness.enqueue([b"a@example.net"])
        harness.turn()
        _, _, factory = harness.connection()
        harness.serve(factory, Scripted(RCPT=b"451 4.7.1 Later"))
        harness.turn()
        self.assertEqual(self.request(b'{"command": "flush", "id": null}'), {"ok": True, "ids": [envelope.id]})
        harness.turn()
        _, _, factory = harness.connection()
        harness.serve(factory, Scripted(RCPT=b"451 4.7.1 Later"))
        harness.turn()
        self.assertEqual(envelope.attempts, 2)
        request = json.dumps({"command": "requeue", "id": envelope.id}).encode()
        self.assertEqual(self.request(request), {"ok": True})
        self.assertEqual(harness.queue.states[envelope.id]["attempts"], 0)
        harness.turn()
        _, _, factory = harness.connection()
        harness.serve(factory, Scripted(RCPT=b"451 4.7.1 Later"))
        harness.turn()
        request = json.dumps({"command": "delete", "id": envelope.id}).encode()
        self.assertEqual(self.request(request), {"ok": True})
        self.assertEqual(harness.queue.ids(), [])

    def test_holdRelease(self):
        """
        C{hold} and C{release} answer whether they changed the message.
        """
        envelope = self.harness.enqueue([b"a@example.net"])
        for command, changed in [("hold", True), ("hold", False), ("release", True), ("release", False)]:
            request = json.dumps({"command": command, "id": envelope.id}).encode()
            self.assertEqual(self.request(request), {"ok": True, "changed": changed}, command)
        self.assertEqual(self.request(b'{"command": "hold"}'), {"ok": False, "error": "this command needs a queue id"})

    def test_refusals(self):
        """
        Bad requests get C{ok: false} and a reason, and the connection goes
        on.
        """
        unknown = newMessageID()
        cases = [
            (b"not json", "Expecting value"),
            (b"[1, 2]", "a request is a JSON object"),
            (b'{"command": "explode"}', "unknown command 'explode'"),
            (b'{"command": 7}', "unknown command 7"),
            (b'{"command": "delete"}', "this command needs a queue id"),
            (b'{"command": "flush", "id": 3}', "a queue id is a string"),
            (json.dumps({"command": "requeue", "id": unknown}).encode(), f"no message {unknown} in the queue"),
        ]
        for line, reason in cases:
            answer = self.request(line)
            self.assertFalse(answer["ok"], line)
            self.assertIn(reason, answer["error"])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.request(b'{"command": "status"}')["ok"], True)

    def test_internalError(self):
        """
        An unexpected error is logged, and the client is told to look at
        the relay's log, not given the exception.
        """
        self.harness.manager.flush = lambda queueID=None: 1 / 0
        answer = self.request(b'{"command": "flush"}')
        self.assertEqual(answer, {"ok": False, "error": "internal error; see the relay's log"})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_tooLong(self):
        """
        A request longer than the limit is refused and the connection
        closed.
        """
        self.protocol.MAX_LENGTH = 100
        self.protocol.dataReceived(b"x" * 200)
        self.assertIn(b'"request too long"', self.transport.value())
        self.assertTrue(self.transport.disconnecting)


class SpoolLockTests(SynchronousTestCase):
    """
    L{SpoolLock}: one holder at a time.
    """

    def test_exclusive(self):
        """
        A second lock on the same spool fails with L{SpoolBusy} until the
        first is released.
        """
        spool = self.mktemp()
        os.makedirs(spool)
        first, second = SpoolLock(spool), SpoolLock(spool)
        first.acquire()
        self.addCleanup(first.release)
        self.assertTrue(first.held)
        self.assertRaises(SpoolBusy, second.acquire)
        self.assertTrue(second.isHeldElsewhere())
        first.release()
        self.assertFalse(second.isHeldElsewhere())
        second.acquire()
        second.release()

    def test_noDirectory(self):
        """
        A spool that does not exist is not locked by anyone.
        """
        self.assertFalse(SpoolLock(self.mktemp()).isHeldElsewhere())

    def test_longSocketPath(self):
        """
        A spool whose path is too long for a UNIX socket address still
        gets a control socket path that fits, naming the same file.
        """
        spool = os.path.abspath(self.mktemp()) + "/" + "d" * 120
        os.makedirs(spool)
        path = socketPath(spool)
        self.assertLessEqual(len(path), 100)
        import socket

        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path)
            self.assertIn("control", os.listdir(spool))


def _queueMessages(spool: str, count: int, **state) -> list[str]:
    """
    Queue C{count} messages in C{spool} as a relay would (with the
    delivery C{state} written), and return their ids.
    """
    queue = Queue(spool, runInThread=lambda f, *args: defer.maybeDeferred(f, *args))
    ids = []
    for n in range(count):
        envelope = Envelope(newMessageID(), b"jo@example.com", [Recipient(f"r{n}@example.net".encode())], received=1_700_000_000.0 + n)
        spool_ = queue.newMessage(envelope)
        spool_.write(b"Subject: message %d\r\n\r\nbody\r\n" % n)
        spool_.commit()
        for key, value in state.items():
            setattr(envelope, key, value)
        queue.update(envelope)
        ids.append(envelope.id)
    return ids


class OfflineCommandTests(TestCase):
    """
    C{mailproto queue} on a spool no relay is running on (its answers on
    a live relay are tested in L{mailproto.test.test_operations}).
    """

    def setUp(self):
        self.spool = self.mktemp()
        self.ids = _queueMessages(self.spool, 2, attempts=3, nextAttempt=4_000_000_000.0, lastReply=Reply(451, [b"Later"], b"4.7.1"))

    def run_(self, *argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = runCommand(["queue", *argv], reactor=object(), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_spoolFromEnvironment(self):
        """
        Without C{--spool}, C{MAILPROTO_SPOOL} names the spool (a
        system-wide one, set once); C{--spool} still wins.
        """
        self.patch(os, "environ", dict(os.environ, MAILPROTO_SPOOL=self.spool))
        status, out, err = self.run_("list")
        self.assertEqual((status, err), (0, ""))
        for queueID in self.ids:
            self.assertIn(queueID, out)
        status, out, err = self.run_("list", "--spool", os.path.abspath(self.mktemp()))
        self.assertEqual(status, 2, err)
        self.assertIn("no such directory", err)

    def test_list(self):
        """
        C{list} shows every message: id, size, attempts, when the next is
        due, sender and waiting recipients.
        """
        status, out, err = self.run_("list", "--spool", self.spool)
        self.assertEqual((status, err), (0, ""))
        for n, queueID in enumerate(self.ids):
            self.assertIn(queueID, out)
            self.assertIn(f"to   <r{n}@example.net>", out)
        self.assertIn("3 attempts", out)
        self.assertIn("from <jo@example.com>", out)
        self.assertTrue(out.endswith("2 messages queued, 56 B\n"), out)

    def test_listJSON(self):
        """
        C{list --json} prints the messages as a JSON array.
        """
        status, out, err = self.run_("list", "--spool", self.spool, "--json")
        self.assertEqual(status, 0)
        listed = json.loads(out)
        self.assertEqual([m["id"] for m in listed], self.ids)
        self.assertEqual(listed[0]["recipients"], [{"address": "r0@example.net", "state": "waiting", "lastReply": None, "lastHost": None}])
        self.assertEqual((listed[0]["attempts"], listed[0]["sending"], listed[0]["size"]), (3, False, 28))

    def test_show(self):
        """
        C{show ID} prints the envelope and the message's header; with
        C{--message}, the message.
        """
        status, out, err = self.run_("show", "--spool", self.spool, self.ids[1])
        self.assertEqual(status, 0, err)
        self.assertIn(f"id:         {self.ids[1]}", out)
        self.assertIn("recipient:  <r1@example.net> waiting", out)
        self.assertTrue(out.endswith("Subject: message 1\n"), out)
        status, out, err = self.run_("show", "--spool", self.spool, "--message", self.ids[1])
        self.assertEqual(out, "Subject: message 1\r\n\r\nbody\r\n")

    def test_flushOffline(self):
        """
        With no relay, C{flush} makes the messages due by their state
        files, and says so.
        """
        status, out, err = self.run_("flush", "--spool", self.spool)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "2 messages to be tried as soon as the relay starts\n")
        for queueID in self.ids:
            with open(os.path.join(self.spool, "queue", queueID + ".state")) as f:
                self.assertEqual(json.load(f)["nextAttempt"], 0)

    def test_requeueOffline(self):
        """
        With no relay, C{requeue ID} resets the attempts in the state file.
        """
        status, out, err = self.run_("requeue", "--spool", self.spool, self.ids[0])
        self.assertEqual(status, 0, err)
        with open(os.path.join(self.spool, "queue", self.ids[0] + ".state")) as f:
            state = json.load(f)
        self.assertEqual((state["attempts"], state["nextAttempt"]), (0, 0))

    def test_deleteOffline(self):
        """
        With no relay, C{delete ID} removes the message's files.
        """
        status, out, err = self.run_("delete", "--spool", self.spool, self.ids[0])
        self.assertEqual((status, out), (0, f"{self.ids[0]} deleted\n"))
        self.assertEqual(sorted(os.listdir(os.path.join(self.spool, "queue"))), [self.ids[1], self.ids[1] + ".state"])

    def test_errors(self):
        """
        Unknown ids, bad ids, missing arguments and a directory that is not
        a spool give exit status 1 or 2 and one line on stderr.
        """
        unknown = newMessageID()
        cases = [
            (("delete", "--spool", self.spool, unknown), 1, f"no message {unknown} in the queue"),
            (("show", "--spool", self.spool, unknown), 1, f"no message {unknown} in the queue"),
            (("delete", "--spool", self.spool, "../etc"), 2, "'../etc' is not a queue ID"),
            (("requeue", "--spool", self.spool), 2, "give queue IDs, a filter (--sender, --recipient, --domain, --older-than) or --all"),
            (("delete", "--spool", self.spool, "--all", self.ids[0]), 2, "give queue IDs or --all, not both"),
            (("hold", "--spool", self.spool, "--older-than", "soon"), 2, "'soon' is not a duration"),
            (("list", "--spool", self.mktemp()), 2, "no such directory"),
            ((), 2, "no queue command given"),
        ]
        for argv, expected, reason in cases:
            status, out, err = self.run_(*argv)
            self.assertEqual(status, expected, (argv, err))
            self.assertIn(reason, err)
            self.assertEqual(err.count("\n"), 1, err)

    def test_lockedWithoutControl(self):
        """
        A spool locked by a process that does not answer on the control
        socket: the command says so rather than changing the files under
        it.
        """
        lock = SpoolLock(self.spool)
        lock.acquire()
        self.addCleanup(lock.release)
        status, out, err = self.run_("flush", "--spool", self.spool)
        self.assertEqual(status, 1)
        self.assertIn("does not answer on its control socket", err)

    def test_askWithoutRelay(self):
        """
        L{ask} raises L{RelayNotRunning} when nothing listens.
        """
        self.assertRaises(RelayNotRunning, ask, self.spool, "status")


class MatchIDTests(SynchronousTestCase):
    """
    L{matchID}: a queue id, or a prefix only one id starts with.
    """

    ids = ["0a1b2c3d4e5f", "0a1b2c3d4e60", "0a1b999999999", "ffff00001111"]

    def test_exactAndUnique(self):
        """
        A whole id is itself; a prefix that only one id starts with is
        that id.
        """
        self.assertEqual(matchID("0a1b2c3d4e5f", self.ids), "0a1b2c3d4e5f")
        self.assertEqual(matchID("f", self.ids), "ffff00001111")
        self.assertEqual(matchID("0a1b9", self.ids), "0a1b999999999")

    def test_exactWinsOverLonger(self):
        """
        An id that is also the start of a longer id is itself, not
        ambiguous.
        """
        self.assertEqual(matchID("0a1b2c3d4e5f", ["0a1b2c3d4e5f", "0a1b2c3d4e5f00"]), "0a1b2c3d4e5f")

    def test_ambiguous(self):
        """
        A prefix several ids start with raises L{AmbiguousID}, which names
        them, at most four, on one line.
        """
        error = self.assertRaises(AmbiguousID, matchID, "0a1b2c", self.ids)
        self.assertEqual(error.candidates, ["0a1b2c3d4e5f", "0a1b2c3d4e60"])
        self.assertEqual(str(error), "0a1b2c is ambiguous: it starts 2 queue IDs (0a1b2c3d4e5f, 0a1b2c3d4e60)")
        many = [f"ab{n:012x}" for n in range(7)]
        text = str(self.assertRaises(AmbiguousID, matchID, "ab", many))
        self.assertEqual(text, f"ab is ambiguous: it starts 7 queue IDs ({', '.join(many[:4])} and 3 more)")

    def test_none(self):
        """
        A prefix no id starts with raises L{KeyError}.
        """
        self.assertRaises(KeyError, matchID, "abc", self.ids)
        self.assertRaises(KeyError, matchID, "0", [])


class MatchesTests(SynchronousTestCase):
    """
    L{matches}: the filters C{--sender}, C{--recipient}, C{--domain} and
    C{--older-than}.
    """

    def setUp(self):
        self.envelope = Envelope(
            newMessageID(),
            b"Jo@Example.com",
            [Recipient(b"a@example.net"), Recipient(b"b@Other.example"), Recipient(b"done@gone.example")],
            received=1000.0,
        )
        self.envelope.recipients[2].state = DELIVERED

    def test_noFilter(self):
        self.assertTrue(matches(self.envelope, 0.0))

    def test_sender(self):
        """
        The sender matches without regard to case or angle brackets; C{<>}
        and the empty string are the null sender.
        """
        for sender, expected in [("jo@example.com", True), ("<JO@example.com>", True), ("jo@example.org", False), ("<>", False)]:
            self.assertEqual(matches(self.envelope, 0.0, sender=sender), expected, sender)
        self.envelope.sender = b""
        self.assertTrue(matches(self.envelope, 0.0, sender="<>"))
        self.assertTrue(matches(self.envelope, 0.0, sender=""))

    def test_recipientAndDomain(self):
        """
        C{recipient} and C{domain} look at the recipients still waiting
        only; a domain matches exactly (a leading C{@}, a trailing dot and
        case do not matter; a subdomain is not the domain).
        """
        for recipient, expected in [("A@example.net", True), ("<b@other.example>", True), ("done@gone.example", False), ("c@example.net", False)]:
            self.assertEqual(matches(self.envelope, 0.0, recipient=recipient), expected, recipient)
        for domain, expected in [("example.net", True), ("@OTHER.example.", True), ("gone.example", False), ("net", False), ("sub.example.net", False)]:
            self.assertEqual(matches(self.envelope, 0.0, domain=domain), expected, domain)

    def test_olderThanAndAll(self):
        """
        C{olderThan} passes messages received longer ago; every filter
        given must pass.
        """
        self.assertTrue(matches(self.envelope, 1000.0 + 3601, olderThan=3600))
        self.assertFalse(matches(self.envelope, 1000.0 + 3600, olderThan=3600))
        self.assertTrue(matches(self.envelope, 5000.0, sender="jo@example.com", domain="example.net", olderThan=60))
        self.assertFalse(matches(self.envelope, 5000.0, sender="jo@example.com", domain="example.org", olderThan=60))


class SpoolProblemTests(SynchronousTestCase):
    """
    What C{mailproto queue} says of a C{--spool} it cannot use.
    """

    def run_(self, *argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = runCommand(["queue", *argv], reactor=object(), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_messages(self):
        """
        A missing directory, a file, a directory without C{queue/}: status
        2 and one line naming C{--spool} and what is wrong.
        """
        missing = self.mktemp()
        notSpool = self.mktemp()
        os.makedirs(notSpool)
        aFile = self.mktemp()
        with open(aFile, "w"):
            pass
        for spool, reason in [(missing, "no such directory"), (aFile, "not a directory"), (notSpool, "not a relay's spool directory (it has no queue/)")]:
            for command in (["list"], ["delete", "--all"], ["show", "abc"]):
                status, out, err = self.run_(*command, "--spool", spool)
                self.assertEqual((status, out), (2, ""), (command, err))
                self.assertEqual(err, f"mailproto queue: error: --spool {spool!r}: {reason} (see 'mailproto queue --help')\n")

    def test_permissionDenied(self):
        """
        A spool this user may not read: status 1, and one line saying so.
        """
        spool = self.mktemp()
        os.makedirs(os.path.join(spool, "queue"))
        if os.geteuid() == 0:
            real = os.listdir

            def listdir(path):
                if os.path.abspath(path).startswith(os.path.abspath(spool)):
                    raise PermissionError(13, "Permission denied", path)
                return real(path)

            self.patch(os, "listdir", listdir)
        else:
            os.chmod(spool, 0)
            self.addCleanup(os.chmod, spool, 0o700)
        self.assertEqual(spoolProblem(spool)[1], 1)
        for command in ("list", "flush"):
            status, out, err = self.run_(command, "--spool", spool)
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(err, f"mailproto queue {command}: --spool {spool!r}: permission denied (run this as the relay's user, or as root)\n")


class SelectionCommandTests(TestCase):
    """
    C{mailproto queue} commands on messages picked by id prefix and by
    filters, and C{hold}/C{release}, on a spool no relay runs on.
    """

    def setUp(self):
        self.spool = self.mktemp()
        queue = Queue(self.spool, runInThread=lambda f, *args: defer.maybeDeferred(f, *args))
        self.ids = []
        for n, (sender, recipient, received) in enumerate(
            [(b"jo@example.com", b"a@example.net", 1000.0), (b"jo@example.com", b"b@example.org", 2000.0), (b"", b"c@example.net", 3_000_000_000.0)]
        ):
            # Ids chosen so that "ab" is ambiguous and each has a prefix of its own.
            envelope = Envelope(f"ab{n}{'0' * 13}", sender, [Recipient(recipient)], received=received)
            spool_ = queue.newMessage(envelope)
            spool_.write(b"Subject: %d\r\n\r\nbody\r\n" % n)
            spool_.commit()
            queue.update(envelope)
            self.ids.append(envelope.id)

    def run_(self, *argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = runCommand(["queue", argv[0], "--spool", self.spool, *argv[1:]], reactor=object(), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def state(self, queueID: str) -> dict:
        with open(os.path.join(self.spool, "queue", queueID + ".state")) as f:
            return json.load(f)

    def queued(self) -> list[str]:
        return sorted(name for name in os.listdir(os.path.join(self.spool, "queue")) if "." not in name)

    def test_prefix(self):
        """
        A unique prefix names its message for C{show} and C{delete}; an
        ambiguous one is a one-line error listing the ids (status 1), and
        nothing is changed.
        """
        status, out, err = self.run_("show", "ab1")
        self.assertEqual(status, 0, err)
        self.assertIn(f"id:         {self.ids[1]}", out)
        for command in ("show", "delete", "hold"):
            status, out, err = self.run_(command, "ab")
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(err, f"mailproto queue {command}: ab is ambiguous: it starts 3 queue IDs ({', '.join(self.ids)})\n")
        status, out, err = self.run_("delete", "ab2", "ab")
        self.assertEqual(status, 1)
        self.assertEqual(self.queued(), self.ids)
        status, out, err = self.run_("delete", "ab1")
        self.assertEqual((status, out, err), (0, f"{self.ids[1]} deleted\n", ""))
        self.assertEqual(self.queued(), [self.ids[0], self.ids[2]])
        status, out, err = self.run_("delete", "ab1")
        self.assertEqual((status, err), (1, "mailproto queue delete: no message ab1 in the queue\n"))

    def test_filters(self):
        """
        Filters pick the messages a command changes; the command says how
        many.  Without ids, a filter or C{--all}, a changing command
        refuses (status 2).
        """
        status, out, err = self.run_("delete", "--domain", "example.net", "--sender", "jo@example.com")
        self.assertEqual((status, out, err), (0, "1 message deleted\n", ""))
        self.assertEqual(self.queued(), self.ids[1:])
        status, out, err = self.run_("delete", "--recipient", "nobody@example.net")
        self.assertEqual((status, out), (0, "0 messages deleted\n"))
        status, out, err = self.run_("requeue", "--older-than", "1d")
        self.assertEqual((status, out), (0, "1 message requeued; it will be tried as soon as the relay starts\n"), err)
        status, out, err = self.run_("delete")
        self.assertEqual(status, 2)
        self.assertEqual(self.queued(), self.ids[1:])
        status, out, err = self.run_("delete", "--all")
        self.assertEqual((status, out), (0, "2 messages deleted\n"))
        self.assertEqual(self.queued(), [])

    def test_holdRelease(self):
        """
        C{hold} writes C{held} in the state file, C{list} and C{show} say
        so, C{flush} leaves it; C{release} makes it due.  Holding a held
        message changes nothing, and says so.
        """
        status, out, err = self.run_("hold", "--sender", "<>")
        self.assertEqual((status, out, err), (0, "1 message held\n", ""))
        held = self.ids[2]
        self.assertEqual(self.state(held)["held"], True)
        self.assertEqual(self.state(self.ids[0])["held"], False)
        status, out, err = self.run_("list")
        [line] = [each for each in out.splitlines() if each.startswith(held)]
        self.assertTrue(line.endswith("  held"), line)
        status, out, err = self.run_("list", "--json")
        self.assertEqual([each["held"] for each in json.loads(out)], [False, False, True])
        status, out, err = self.run_("show", held)
        self.assertIn(f"held:       yes, not tried until released (mailproto queue release {held})", out)
        status, out, err = self.run_("hold", "--all")
        self.assertEqual((status, out), (0, "2 messages held (1 already held)\n"))
        status, out, err = self.run_("flush")
        self.assertEqual(out, "0 messages to be tried as soon as the relay starts\n")
        status, out, err = self.run_("release", "ab2")
        self.assertEqual((status, out), (0, f"{held} released; it will be tried as soon as the relay starts\n"))
        self.assertEqual((self.state(held)["held"], self.state(held)["nextAttempt"]), (False, 0))
        status, out, err = self.run_("release", "--all")
        self.assertEqual((status, out), (0, "2 messages released (1 not held); they will be tried as soon as the relay starts\n"))


_jsonValues = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def _maybe(valid):
    return st.one_of(valid, _jsonValues)


_replies = st.one_of(
    st.text(max_size=30),
    st.fixed_dictionaries(
        {"code": _maybe(st.integers(200, 599)), "status": _maybe(st.sampled_from(["4.4.1", "5.1.1", "2.0.0"])), "lines": _maybe(st.lists(st.text(max_size=20), max_size=3))}
    ),
)
_recipientStates = st.lists(
    _maybe(
        st.fixed_dictionaries(
            {"state": _maybe(st.sampled_from(["waiting", "delivered", "failed"])), "lastReply": _maybe(_replies), "lastHost": _maybe(st.text(max_size=10))}
        )
    ),
    min_size=0,
    max_size=3,
)
_states = st.one_of(
    st.fixed_dictionaries(
        {
            "version": _maybe(st.sampled_from([1, 2])),
            "size": _maybe(st.integers(min_value=0, max_value=10**12)),
            "attempts": _maybe(st.integers(min_value=0, max_value=10**30)),
            "nextAttempt": _maybe(st.floats(allow_nan=True, allow_infinity=True)),
            "lastReply": _maybe(_replies),
            "warned": _maybe(st.booleans()),
            "held": _maybe(st.booleans()),
            "recipients": _maybe(_recipientStates),
        }
    ),
    _jsonValues,
)


class StateFuzzTests(SynchronousTestCase):
    """
    C{mailproto queue list} and C{show} on state files holding any JSON
    at all (as a crash in the middle of an edit, a bug or a hand could
    leave them): they never crash, and print only what a terminal can
    take (UTF-8, no control characters) and JSON without NaN.
    """

    def setUp(self):
        self.spool = self.mktemp()
        [self.queueID] = _queueMessages(self.spool, 1)
        self.statePath = os.path.join(self.spool, "queue", self.queueID + ".state")

    def run_(self, *argv) -> tuple[int, str, str]:
        raw = io.BytesIO()
        out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
        err = io.StringIO()
        status = runCommand(["queue", *argv], reactor=object(), stdout=out, stderr=err)
        out.flush()
        return status, raw.getvalue().decode("utf-8"), err.getvalue()

    @given(state=_states, reply=st.text(max_size=40))
    def test_anyState(self, state, reply):
        state = dict(state, recipients=[{"state": "waiting", "lastReply": reply}]) if state == {} else state
        with open(self.statePath, "w") as f:
            f.write(json.dumps(state))
        status, out, err = self.run_("list", "--spool", self.spool)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(self.queueID, out)
        self.assertFalse(any(not (c.isprintable() or c in "\t\n") for c in out), out)
        status, out, err = self.run_("list", "--spool", self.spool, "--json")
        self.assertEqual((status, err), (0, ""))

        def noConstants(name):
            raise ValueError(name)

        [listed] = json.loads(out, parse_constant=noConstants)
        self.assertEqual(listed["id"], self.queueID)
        status, out, err = self.run_("show", "--spool", self.spool, self.queueID)
        self.assertEqual((status, err), (0, ""))
        self.assertFalse(any(not (c.isprintable() or c in "\t\n") for c in out), out)

    def test_repliesShownSafely(self):
        """
        A last reply with control characters, an escape sequence or an
        undecodable octet is printed escaped.
        """
        state = {
            "version": 1, "size": 28, "attempts": 1, "nextAttempt": float("nan"), "lastReply": "451 \x1b[2J gone",
            "warned": False, "recipients": [{"state": "waiting", "lastReply": "451 \udcff\r\nX-Injected: 1"}],
        }  # fmt: skip
        with open(self.statePath, "w") as f:
            f.write(json.dumps(state))
        status, out, err = self.run_("list", "--spool", self.spool)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("next attempt now", out)
        self.assertIn("(451 \\xff X-Injected: 1)", out)
        status, out, err = self.run_("show", "--spool", self.spool, self.queueID)
        self.assertIn("last reply: 451 [2J gone", out)
