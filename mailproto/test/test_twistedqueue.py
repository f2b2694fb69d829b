# -*- test-case-name: mailproto.test.test_twistedqueue -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for moving a twisted.mail relay's queue into mailproto's:
L{mailproto._twistedqueue} (the import), C{mailproto queue import}, and
twisted.mail's C{createNewMessage}/C{addMessage} on mailproto's queue
(L{mailproto._queuecompat}).  The twisted.mail queues here are written by
twisted.mail itself.

twisted.mail is imported only when a test runs (L{_twistedMail}):
importing it registers its own C{xtext} codec, which must not come
before mailproto's (L{mailproto._xtext}) when this module is loaded with
others.
"""

from __future__ import annotations

import io
import os
import pickle

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailproto._commandline._cli import runCommand
from mailproto._relayd._control import SpoolLock
from mailproto._queue import Queue
from mailproto._queuecompat import MAX_HEADER, BadHeader, LineEnds, loadHeader
from mailproto._twistedqueue import IMPORTED_FROM, findPairs, importTwistedQueue
from mailproto.test.test_relaymanager import RelayHarness, Scripted

MESSAGE = b"From: alice@example.com\nSubject: hello\n\nBody line\n.dot line\n"
"""A message as twisted.mail's FileMessage stores it: LF line ends."""

MESSAGE_CRLF = MESSAGE.replace(b"\n", b"\r\n")

PY2_HEADER = b"(lp0\nS'alice@example.com'\np1\naS'bob@example.net'\np2\na."
"""C{pickle.dump(['alice@example.com', 'bob@example.net'], f)} as Python 2
wrote it (protocol 0, C{str} as octets)."""


def _twistedMail():
    """
    @return: twisted.mail's C{relay}, C{relaymanager} and C{smtp} modules.
    """
    import mailproto._xtext  # noqa: F401  (its codec first)
    from twisted.mail import relay, relaymanager, smtp

    return relay, relaymanager, smtp


class _Evil:
    """
    Pickles as a call of C{os.system}.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def writeTwistedQueue(directory: str, messages) -> list[str]:
    """
    Write messages into a twisted.mail relay queue the way its
    C{DomainQueuer} does.

    @param messages: C{(origin, recipient, data)} for each, C{data} with
        LF line ends.
    @return: the names of the pairs written, in order.
    """
    os.makedirs(directory, exist_ok=True)
    _, tmrelaymanager, _ = _twistedMail()
    queue = tmrelaymanager.Queue(directory)
    queue.noisy = False
    names = []
    for origin, recipient, data in messages:
        headerFile, message = queue.createNewMessage()
        with headerFile:
            pickle.dump([origin, recipient], headerFile)
        for line in data.split(b"\n")[:-1]:
            message.lineReceived(line)
        message.eomReceived()
        names.append(os.path.basename(headerFile.name)[:-2])
    return names


def syncQueue(spool: str) -> Queue:
    """
    @return: a recovered queue on C{spool} whose disk work runs at once.
    """
    queue = Queue(spool, runInThread=lambda f, *args: defer.maybeDeferred(f, *args))
    queue.recover()
    return queue


def queuedData(queue: Queue, queueID: str) -> bytes:
    with queue.openMessage(queueID) as f:
        return f.read()


class _Base(SynchronousTestCase):
    def setUp(self):
        self.old = os.path.abspath(self.mktemp())
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.old)

    def writeHeader(self, name: str, data: bytes, withData: bytes | None = MESSAGE) -> None:
        """
        Write a pair by hand: C{name-H} holding C{data}, and C{name-D}.
        """
        with open(os.path.join(self.old, name + "-H"), "wb") as f:
            f.write(data)
        if withData is not None:
            with open(os.path.join(self.old, name + "-D"), "wb") as f:
                f.write(withData)

    def importAll(self):
        queue = syncQueue(self.spool)
        return queue, self.successResultOf(importTwistedQueue(self.old, queue))

    def snapshot(self) -> dict:
        out = {}
        for name in os.listdir(self.old):
            path = os.path.join(self.old, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    out[name] = (f.read(), os.stat(path).st_mtime_ns)
        return out


class ImportTests(_Base):
    """
    L{importTwistedQueue} on queues twisted.mail wrote.
    """

    def test_imports(self):
        """
        Each pair becomes one mailproto message: its sender and recipient
        from the pickle, its data with CRLF line ends, received when the
        C{-D} was written, marked as imported; a restarted queue finds
        them waiting.
        """
        names = writeTwistedQueue(
            self.old,
            [
                ("alice@example.com", "bob@example.net", MESSAGE),
                ("", "carol@example.org", b"Subject: bounce\n\nbody\n"),
            ],
        )
        queue, report = self.importAll()
        self.assertEqual(report.skipped, [])
        self.assertEqual(report.already, [])
        self.assertEqual(sorted(name for name, _ in report.imported), sorted(names))
        byName = dict(report.imported)
        first = queue.getEnvelope(byName[names[0]])
        self.assertEqual(first.sender, b"alice@example.com")
        self.assertEqual([r.address for r in first.recipients], [b"bob@example.net"])
        self.assertEqual(queuedData(queue, first.id), MESSAGE_CRLF)
        self.assertEqual(first.size, len(MESSAGE_CRLF))
        self.assertEqual((first.client, first.helo), (IMPORTED_FROM, names[0]))
        self.assertAlmostEqual(first.received, os.stat(os.path.join(self.old, names[0] + "-D")).st_mtime, places=3)
        second = queue.getEnvelope(byName[names[1]])
        self.assertEqual(second.sender, b"")
        self.assertEqual([r.address for r in second.recipients], [b"carol@example.org"])
        self.assertEqual(queuedData(queue, second.id), b"Subject: bounce\r\n\r\nbody\r\n")

        restarted = syncQueue(self.spool)
        self.assertEqual(sorted(restarted.getWaiting()), sorted(byName.values()))
        self.assertEqual([e.id for e in restarted.due(first.received + 1)], restarted.ids())
        self.assertEqual(queuedData(restarted, first.id), MESSAGE_CRLF)

    def test_oneMessagePerRecipient(self):
        """
        twisted.mail's pairs for the recipients of one message stay one
        mailproto message each.
        """
        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE), ("a@example.com", "c@example.net", MESSAGE)])
        queue, report = self.importAll()
        self.assertEqual(len(report.imported), 2)
        self.assertEqual(sorted(queue.getEnvelope(i).recipients[0].address for i in queue.ids()), [b"b@example.net", b"c@example.net"])

    def test_filesLeftAlone(self):
        """
        Nothing in twisted.mail's directory changes, and twisted.mail
        still sees its messages waiting.
        """
        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE)])
        before = self.snapshot()
        self.importAll()
        self.assertEqual(self.snapshot(), before)
        _, tmrelaymanager, _ = _twistedMail()
        self.assertEqual(len(tmrelaymanager.Queue(self.old).getWaiting()), 1)

    def test_again(self):
        """
        A second import of the same directory into the same spool queues
        nothing again: each pair is reported as imported before.
        """
        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE)])
        _, first = self.importAll()
        queue, second = self.importAll()
        self.assertEqual(second.imported, [])
        self.assertEqual(second.already, first.imported)
        self.assertTrue(second.complete)
        self.assertEqual(len(queue.ids()), 1)

    def test_python2Pickle(self):
        """
        An envelope pickled by Python 2 (addresses as octets) is read.
        """
        self.writeHeader("old", PY2_HEADER)
        queue, report = self.importAll()
        [(_, queueID)] = report.imported
        envelope = queue.getEnvelope(queueID)
        self.assertEqual((envelope.sender, envelope.recipients[0].address), (b"alice@example.com", b"bob@example.net"))

    def test_utf8Addresses(self):
        """
        An internationalised address is kept, and the message needs
        SMTPUTF8.
        """
        writeTwistedQueue(self.old, [("jörg@example.com", "b@example.net", MESSAGE)])
        queue, report = self.importAll()
        envelope = queue.getEnvelope(report.imported[0][1])
        self.assertEqual(envelope.sender, "jörg@example.com".encode())
        self.assertTrue(envelope.smtputf8)

    def test_memoryQueue(self):
        """
        Any queue with C{newMessage} will do: L{MemoryQueue} too.
        """
        from mailproto.testing import MemoryQueue

        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE)])
        queue = MemoryQueue()
        report = self.successResultOf(importTwistedQueue(self.old, queue))
        [(_, queueID)] = report.imported
        self.assertEqual(queue.messages[queueID], MESSAGE_CRLF)

    def test_missingDirectory(self):
        """
        A directory that cannot be listed fails the import.
        """
        self.failureResultOf(importTwistedQueue(os.path.join(self.old, "nothing"), syncQueue(self.spool)), OSError)


class HostileTests(_Base):
    """
    What cannot be imported is skipped with its reason; nothing in a
    pickle is ever run.
    """

    def assertSkipped(self, reason: str, name: str = "bad") -> None:
        queue, report = self.importAll()
        self.assertEqual(report.imported, [])
        self.assertEqual(len(report.skipped), 1, report.skipped)
        self.assertEqual(report.skipped[0][0], name)
        self.assertIn(reason, report.skipped[0][1])
        self.assertFalse(report.complete)
        self.assertEqual(queue.ids(), [])
        self.assertEqual(os.listdir(os.path.join(self.spool, "tmp")), [])

    def test_globalRefused(self):
        """
        A pickle that calls C{os.system} while it loads is refused
        unloaded: the command never runs.
        """
        marker = os.path.abspath(self.mktemp())
        self.writeHeader("bad", pickle.dumps([_Evil(marker), "b@example.net"]))
        self.assertSkipped("refused the global")
        self.assertFalse(os.path.exists(marker))

    def test_globalOpcodeRefused(self):
        """
        A hand-written C{GLOBAL} opcode, and a protocol 4 C{STACK_GLOBAL},
        are refused too.
        """
        marker = os.path.abspath(self.mktemp())
        self.writeHeader("bad", b"cos\nsystem\n(S'touch " + marker.encode() + b"'\ntR.")
        self.assertSkipped("refused the global os.system")
        self.assertFalse(os.path.exists(marker))
        for protocol in (2, 4, 5):
            with self.subTest(protocol=protocol):
                with self.assertRaises(BadHeader) as caught:
                    loadHeader(pickle.dumps([_Evil(marker), "b@example.net"], protocol=protocol))
                self.assertIn("refused the global", str(caught.exception))
                self.assertFalse(os.path.exists(marker))

    def test_truncated(self):
        """
        A pickle cut short is skipped.
        """
        self.writeHeader("bad", pickle.dumps(["a@example.com", "b@example.net"])[:-7])
        self.assertSkipped("not an envelope pickle")

    def test_garbage(self):
        """
        Octets that are no pickle at all are skipped.
        """
        self.writeHeader("bad", b"\x00\xff garbage")
        self.assertSkipped("not an envelope pickle")

    def test_headerWithoutData(self):
        """
        A C{-H} without its C{-D} (twisted.mail stopped while receiving:
        a C{-C} is left) is skipped; so is one with nothing else.
        """
        _, tmrelaymanager, _ = _twistedMail()
        queue = tmrelaymanager.Queue(self.old)
        headerFile, message = queue.createNewMessage()
        with headerFile:
            pickle.dump(["a@example.com", "b@example.net"], headerFile)
        message.lineReceived(b"Subject: half")
        message.fp.close()
        name = os.path.basename(headerFile.name)[:-2]
        self.assertSkipped("still receiving", name)
        os.remove(os.path.join(self.old, name + "-C"))
        self.assertSkipped("no -D", name)

    def test_dataWithoutHeader(self):
        """
        A C{-D} without its C{-H} is skipped.
        """
        with open(os.path.join(self.old, "bad-D"), "wb") as f:
            f.write(MESSAGE)
        self.assertSkipped("no -H")

    def test_hugeHeader(self):
        """
        A C{-H} larger than L{MAX_HEADER} is not unpickled.
        """
        self.writeHeader("bad", pickle.dumps(["a" * MAX_HEADER + "@example.com", "b@example.net"]))
        self.assertSkipped("larger than")

    def test_notAList(self):
        """
        A pickle of anything but a list of two strings is skipped.
        """
        cases = [
            ({"a": 1}, "holds a dict"),
            (("a@example.com", "b@example.net"), "holds a tuple"),
            (["a@example.com", "b@example.net", "c@example.net"], "holds a list"),
            (["a@example.com"], "holds a list"),
            ([1, "b@example.net"], "sender is a int"),
            (["a@example.com", None], "recipient is a NoneType"),
            ([["a@example.com"], "b@example.net"], "sender is a list"),
        ]
        for value, reason in cases:
            with self.subTest(value=value):
                self.writeHeader("bad", pickle.dumps(value))
                self.assertSkipped(reason)

    def test_badAddress(self):
        """
        An address that does not parse, a recipient that is empty and an
        address without a domain are skipped.
        """
        cases = [
            (["a@example.com", "not an address@@"], "recipient"),
            (["a@@example.com", "b@example.net"], "sender"),
            (["a@example.com", ""], "the recipient is empty"),
            (["a@example.com", "<>"], "the recipient is empty"),
            (["postmaster", "b@example.net"], "has no domain"),
            (["a@example.com", "b@example.net\r\nRCPT TO:<c@example.net>"], "not an address"),
        ]
        for value, reason in cases:
            with self.subTest(value=value):
                self.writeHeader("bad", pickle.dumps(value))
                self.assertSkipped(reason)

    def test_notRegularFile(self):
        """
        A C{-D} that is a FIFO is skipped, not read (which would block).
        """
        self.writeHeader("bad", pickle.dumps(["a@example.com", "b@example.net"]), withData=None)
        os.mkfifo(os.path.join(self.old, "bad-D"))
        self.assertSkipped("not a regular file")

    def test_goodAndBad(self):
        """
        Bad pairs do not stop good ones.
        """
        [good] = writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE)])
        self.writeHeader("bad", b"cos\nsystem\n(S'true'\ntR.")
        queue, report = self.importAll()
        self.assertEqual([name for name, _ in report.imported], [good])
        self.assertEqual([name for name, _ in report.skipped], ["bad"])
        self.assertEqual(len(queue.ids()), 1)

    def test_findPairs(self):
        """
        L{findPairs} ignores files that are not queue halves.
        """
        for name in ("relay.tap", "-H", "x-D", "x-H", "y-C", "z-H"):
            open(os.path.join(self.old, name), "wb").close()
        pairs, skipped = findPairs(self.old)
        self.assertEqual(pairs, ["x"])
        self.assertEqual([name for name, _ in skipped], ["z"])


class LineEndsTests(SynchronousTestCase):
    """
    L{LineEnds}: every line end becomes CRLF, whatever the chunks.
    """

    cases = [
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n"),
        (b"a\n\rb", b"a\r\n\r\nb\r\n"),
        (b"no end", b"no end\r\n"),
        (b"", b""),
        (b"\n", b"\r\n"),
        (b"\r", b"\r\n"),
        (b"x\r\n.\r\n", b"x\r\n.\r\n"),
    ]

    def run_(self, chunks) -> bytes:
        lineEnds = LineEnds()
        return b"".join(lineEnds.feed(c) for c in chunks) + lineEnds.end()

    def test_whole(self):
        for data, expected in self.cases:
            self.assertEqual(self.run_([data]), expected, data)

    def test_byteByByte(self):
        for data, expected in self.cases:
            self.assertEqual(self.run_([data[i : i + 1] for i in range(len(data))]), expected, data)

    def test_everySplit(self):
        for data, expected in self.cases:
            for i in range(len(data) + 1):
                self.assertEqual(self.run_([data[:i], b"", data[i:]]), expected, (data, i))


class CommandTests(_Base):
    """
    C{mailproto queue import DIR --spool SPOOL}.
    """

    def run_(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        status = runCommand(["queue", "import", *argv], reactor=object(), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_imports(self):
        """
        Every pair imported: exit status 0, a summary line; the spool is
        made, and a queue on it finds the messages.
        """
        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE), ("a@example.com", "c@example.net", MESSAGE)])
        status, out, err = self.run_(self.old, "--spool", self.spool)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, f"2 messages imported into {self.spool}; {self.old} left as it was\n")
        queue = syncQueue(self.spool)
        self.assertEqual(len(queue.getWaiting()), 2)
        for queueID in queue.ids():
            self.assertEqual(queuedData(queue, queueID), MESSAGE_CRLF)
        status, out, err = self.run_(self.old, "--spool", self.spool)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("0 messages imported", out)
        self.assertIn("2 imported before", out)

    def test_skipped(self):
        """
        One line per skipped pair, then the summary; exit status 1.
        """
        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE)])
        self.writeHeader("evil", b"cos\nsystem\n(S'true'\ntR.")
        self.writeHeader("lonely", pickle.dumps(["a@example.com", "b@example.net"]), withData=None)
        status, out, err = self.run_(self.old, "--spool", self.spool)
        self.assertEqual(status, 1)
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, err)
        self.assertTrue(lines[0].startswith("mailproto queue import: skipped evil: "), lines[0])
        self.assertIn("refused the global os.system", lines[0])
        self.assertTrue(lines[1].startswith("mailproto queue import: skipped lonely: no -D"), lines[1])
        self.assertEqual(out, f"1 message imported into {self.spool}, 2 skipped; {self.old} left as it was\n")

    def test_usage(self):
        """
        Usage errors: one line, exit status 2.
        """
        notSpool = os.path.abspath(self.mktemp())
        os.makedirs(notSpool)
        open(os.path.join(notSpool, "something"), "w").close()
        cases = [
            ((), "expected one twisted.mail queue directory, got 0"),
            ((self.old, self.old), "expected one twisted.mail queue directory, got 2"),
            ((os.path.join(self.old, "missing"),), "is not a directory"),
            ((self.old, "--spool", notSpool), "not a relay's spool directory"),
            ((self.old, "--spool", self.old), "the same directory"),
        ]
        for argv, reason in cases:
            with self.subTest(argv=argv):
                status, out, err = self.run_(*argv)
                self.assertEqual(status, 2, err)
                self.assertIn(reason, err)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertEqual(out, "")

    def test_relayRunning(self):
        """
        A spool whose lock is held (a relay runs on it) is refused with one
        line, and nothing is imported.
        """
        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE)])
        syncQueue(self.spool)
        lock = SpoolLock(self.spool)
        lock.acquire()
        self.addCleanup(lock.release)
        status, _, err = self.run_(self.old, "--spool", self.spool)
        self.assertEqual(status, 1)
        self.assertIn("is in use by another process", err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(os.listdir(os.path.join(self.spool, "queue")), [])

    def test_relayAnswers(self):
        """
        A relay that answers on the spool's control socket is named, and
        nothing is imported.
        """
        from mailproto._commandline import _queuecommand

        asked = []
        self.patch(_queuecommand, "ask", lambda spool, command, *args: asked.append((spool, command)) or {"ok": True, "pid": 4242})
        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE)])
        syncQueue(self.spool)
        status, _, err = self.run_(self.old, "--spool", self.spool)
        self.assertEqual(status, 1)
        self.assertEqual(asked, [(self.spool, "status")])
        self.assertEqual(err, f"mailproto queue import: a relay is running on {self.spool} (process 4242); stop it first\n")
        self.assertEqual(os.listdir(os.path.join(self.spool, "queue")), [])

    def test_listed(self):
        """
        C{mailproto queue list} shows the imported messages.
        """
        writeTwistedQueue(self.old, [("a@example.com", "b@example.net", MESSAGE)])
        self.run_(self.old, "--spool", self.spool)
        out, err = io.StringIO(), io.StringIO()
        status = runCommand(["queue", "list", "--spool", self.spool], reactor=object(), stdout=out, stderr=err)
        self.assertEqual(status, 0, err.getvalue())
        self.assertIn("from <a@example.com>", out.getvalue())
        self.assertIn("to   <b@example.net>", out.getvalue())


class RelayTests(SynchronousTestCase):
    """
    Imported messages are relayed like any other.
    """

    def test_relayed(self):
        """
        A message imported into the relaying manager's queue is sent to
        the smart host at once, with its sender, recipient and data, and
        then leaves the queue.
        """
        old = self.mktemp()
        writeTwistedQueue(old, [("alice@example.com", "bob@example.net", MESSAGE)])
        harness = RelayHarness(self, smartHost="smart.test:25")
        report = self.successResultOf(importTwistedQueue(old, harness.queue))
        [(_, queueID)] = report.imported
        harness.turn()
        host, port, factory = harness.connection()
        self.assertEqual((host, port), ("smart.test", 25))
        server = Scripted()
        harness.serve(factory, server)
        self.assertIn(b"MAIL FROM:<alice@example.com>", server.commands)
        self.assertIn(b"RCPT TO:<bob@example.net>", server.commands)
        self.assertEqual(server.messages, [MESSAGE_CRLF])
        self.assertEqual(harness.queue.ids(), [])
        self.assertEqual(harness.queue.removed, [queueID])


class CreateNewMessageTests(SynchronousTestCase):
    """
    twisted.mail's C{createNewMessage} and C{addMessage} on mailproto's
    L{Queue}.
    """

    def setUp(self):
        self.spool = os.path.abspath(self.mktemp())
        self.queue = syncQueue(self.spool)

    def test_domainQueuer(self):
        """
        twisted.mail's own C{DomainQueuer} queues into mailproto's queue: a
        durable message with the envelope it pickled, data in CRLF, the
        C{Deferred} of C{eomReceived} firing with the queue file's path.
        """

        tmrelay, _, tmsmtp = _twistedMail()

        class Service:
            queue = self.queue

        user = tmsmtp.User(b"bob@example.net", (b"client.test", b"127.0.0.1"), None, tmsmtp.Address(b"alice@example.com"))
        message = tmrelay.DomainQueuer(Service()).startMessage(user)
        for line in MESSAGE.split(b"\n")[:-1]:
            message.lineReceived(line)
        path = self.successResultOf(message.eomReceived())
        queueID = os.path.basename(path)
        self.assertEqual(path, self.queue.getPath(queueID))
        self.assertEqual(message.envelope.id, queueID)
        self.assertEqual(self.queue.getWaiting(), [queueID])
        restarted = syncQueue(self.spool)
        envelope = restarted.getEnvelope(queueID)
        self.assertEqual(envelope.sender, b"alice@example.com")
        self.assertEqual([r.address for r in envelope.recipients], [b"bob@example.net"])
        self.assertEqual(queuedData(restarted, queueID), MESSAGE_CRLF)

    def test_headerLast(self):
        """
        The envelope may be pickled after the data is written (the data
        waits), and the data may come as octets.
        """
        headerFile, message = self.queue.createNewMessage()
        message.dataReceived(b"Subject: x\r\n\r\nbody")
        message.dataReceived(b"\n")
        pickle.dump(["", "bob@example.net"], headerFile)
        path = self.successResultOf(message.eomReceived())
        queueID = os.path.basename(path)
        self.assertEqual(self.queue.getEnvelope(queueID).sender, b"")
        self.assertEqual(queuedData(self.queue, queueID), b"Subject: x\r\n\r\nbody\r\n")

    def test_hostileHeader(self):
        """
        An envelope that names a global fails C{eomReceived} with
        L{BadHeader}, runs nothing and queues nothing.
        """
        marker = os.path.abspath(self.mktemp())
        headerFile, message = self.queue.createNewMessage()
        with headerFile:
            pickle.dump([_Evil(marker), "b@example.net"], headerFile)
        message.lineReceived(b"Subject: x")
        self.failureResultOf(message.eomReceived(), BadHeader)
        self.assertFalse(os.path.exists(marker))
        self.assertEqual(self.queue.ids(), [])
        self.assertEqual(os.listdir(os.path.join(self.spool, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(self.spool, "queue")), [])

    def test_hugeHeader(self):
        """
        The envelope file takes at most L{MAX_HEADER} octets.
        """
        headerFile, _ = self.queue.createNewMessage()
        self.assertRaises(OSError, headerFile.write, b"x" * (MAX_HEADER + 1))

    def test_connectionLost(self):
        """
        A message never finished is thrown away.
        """
        headerFile, message = self.queue.createNewMessage()
        with headerFile:
            pickle.dump(["a@example.com", "b@example.net"], headerFile)
        message.lineReceived(b"x" * (300 * 1024))
        message.connectionLost()
        self.assertEqual(self.queue.ids(), [])
        self.assertEqual(os.listdir(os.path.join(self.spool, "tmp")), [])

    def test_addMessage(self):
        """
        C{addMessage} makes a message committed by another queue on the
        spool waiting in this one; one it has is left as it is; an unknown
        one is a C{KeyError}.
        """
        other = syncQueue(self.spool)
        headerFile, message = other.createNewMessage()
        with headerFile:
            pickle.dump(["a@example.com", "b@example.net"], headerFile)
        message.lineReceived(b"Subject: x")
        path = self.successResultOf(message.eomReceived())
        queueID = os.path.basename(path)
        self.assertEqual(self.queue.getWaiting(), [])
        self.queue.addMessage(path)
        self.assertEqual(self.queue.getWaiting(), [queueID])
        self.queue.setRelaying(queueID)
        self.queue.addMessage(queueID)
        self.assertEqual(self.queue.getRelayed(), [queueID])
        self.assertRaises(KeyError, self.queue.addMessage, "0123456789abcdef")
        self.assertRaises(KeyError, self.queue.addMessage, "../../etc/passwd")
