# -*- test-case-name: mailproto.test.test_operations -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Operating the relay, tested on the real processes: C{twistd mailrelay}
and C{mailproto queue} in child processes, on 127.0.0.1 only.

  - L{LiveQueueCommandTests}: C{mailproto queue list|show|flush|requeue|
    delete} against a running relay (through its control socket), whose
    smart host is a closed port, so that messages wait with a C{451};
    then a smart host that answers, and C{flush} delivers everything.
  - L{LiveHoldTests}: C{hold}, C{release}, C{delete} by filter and ids
    by prefix against a running relay, its smart host a
    L{ScriptedSMTPFactory} in this process.
  - L{OfflineQueueCommandTests}: the same commands with no relay running
    (they lock the spool and change its files), and the spool's lock:
    one relay, or one command, at a time.
  - L{ShutdownTests}: SIGTERM with sessions open: an idle one is told
    C{421} at once, one in the middle of a transaction may finish it
    within C{--shutdown-grace}, one that does not is aborted and its
    message thrown away.
  - L{LogFileTests}: twistd's C{--logfile}: SIGHUP reopens it (log
    rotation), and C{--log-format json} writes one JSON object a line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import sys
import time

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import TestCase

from mailproto._relayd._control import SpoolLock
from mailproto._queue import SpoolFile, readQueueFile
from mailproto.testing import ScriptedSMTPFactory
from mailproto.test._relayprocess import relayCommand
from mailproto.test.test_daemon import (
    PACKAGE_ROOT,
    START_DEADLINE,
    RelayProcess,
    SinkProcess,
    _ChildProcess,
    _sendWithSmtplib,
    freePort,
    spoolListing,
    testIDOf,
    waitUntil,
)

# Seconds to wait for a reply from the relay, for a queue command to
# end, and for something the relay does at once (an attempt, a delivery
# to the sink, a log line).
REPLY_TIMEOUT = 10
COMMAND_TIMEOUT = 30
PROMPTLY = 15

# The relay's name in its greeting and trace headers.
HOSTNAME = "relay.ops.test"

# What smtplib says in EHLO (see _sendWithSmtplib).
CLIENT_HELO = "client.example"


def _message(testID: str, sender: str, recipients: list[str], lines: int = 3) -> bytes:
    """
    @return: a short message with headers naming it (C{X-Test-Id}).
    """
    header = (
        f"From: <{sender}>\r\n"
        f"To: {', '.join(f'<{r}>' for r in recipients)}\r\n"
        f"Subject: operations test {testID}\r\n"
        f"Message-ID: <{testID}@ops.test>\r\n"
        f"X-Test-Id: {testID}\r\n"
        "\r\n"
    ).encode("ascii")
    return header + b"".join(b"Body line %d of %s.\r\n" % (n, testID.encode("ascii")) for n in range(lines))


# The messages the queue tests send: test id, sender, recipients.
MESSAGES = [
    ("m1", "alice@example.org", ["bob@example.com", "carol@example.com"]),
    ("m2", "dave@example.org", ["erin@example.net"]),
    ("m3", "frank@example.org", ["grace@example.com"]),
]


def _queueIDs(spool: str) -> dict[str, str]:
    """
    @return: the queue ids of the messages in the spool's C{queue/}, by
        their test id.
    """
    directory = os.path.join(spool, "queue")
    ids = {}
    for name in os.listdir(directory):
        if "." in name:
            continue
        with open(os.path.join(directory, name), "rb") as f:
            ids[testIDOf(f.read())] = name
    return ids


def _state(spool: str, queueID: str) -> dict | None:
    """
    @return: the message's state file, read, or L{None} if it has none.
    """
    try:
        with open(os.path.join(spool, "queue", queueID + ".state"), "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def _queuedMessage(spool: str, queueID: str) -> bytes:
    """
    @return: the message of a queue file (what follows its envelope line).
    """
    with open(os.path.join(spool, "queue", queueID), "rb") as f:
        f.readline()
        return f.read()


def _readLines(path: str) -> list[str]:
    """
    @return: the lines of a text file; none if it does not exist.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


class _QueueCommand(_ChildProcess):
    """
    One run of C{python -m mailproto queue ...}.
    """

    what = "mailproto queue"


@defer.inlineCallbacks
def runQueueCommand(testCase, *arguments: str):
    """
    Run the real C{mailproto queue ARGUMENTS} in a child process (killed
    if it has not ended within L{COMMAND_TIMEOUT}).

    @return: a L{Deferred} firing with C{(stdout, stderr, exit status)},
        the outputs as text.
    """
    pythonPath = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    child = _QueueCommand()
    argv = [sys.executable, "-m", "mailproto", "queue", *arguments]
    child._spawn(testCase, argv, dict(os.environ, PYTHONPATH=pythonPath))
    try:
        yield child.whenEnded(COMMAND_TIMEOUT)
    except AssertionError:
        yield child.kill()
        raise
    return child.output.decode("utf-8"), child.errors.decode("utf-8"), child.exitCode


class _Session(Protocol):
    """
    A raw SMTP client: writes what it is told to, and hands out the replies
    it gets one at a time.

    @ivar replies: every reply received (lines joined by LF).
    @ivar closed: fires when the connection is closed.
    """

    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.closed = defer.Deferred()
        self._buffer = b""
        self._lines: list[bytes] = []
        self._ready: list[bytes] = []
        self._waiting: list[defer.Deferred] = []
        self._reason = None

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            self._lines.append(line)
            if line[3:4] != b"-":
                reply = b"\n".join(self._lines)
                self._lines = []
                self.replies.append(reply)
                self._ready.append(reply)
        self._deliver()

    def _deliver(self) -> None:
        while self._ready and self._waiting:
            self._waiting.pop(0).callback(self._ready.pop(0))

    def connectionLost(self, reason) -> None:
        self._reason = reason
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)
        self.closed.callback(None)

    def nextReply(self, timeout: float = REPLY_TIMEOUT) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with the next reply not handed out
            yet; failing if the connection closes first, or with
            L{defer.TimeoutError} after C{timeout} seconds.
        """
        if self._ready:
            return defer.succeed(self._ready.pop(0))
        if self._reason is not None:
            return defer.fail(self._reason)
        d = defer.Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d.addTimeout(timeout, reactor)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def command(self, line: bytes) -> defer.Deferred:
        """
        Send a command line.

        @return: a L{Deferred} firing with its reply.
        """
        self.send(line + b"\r\n")
        return self.nextReply()

    def whenClosed(self, timeout: float = REPLY_TIMEOUT) -> defer.Deferred:
        """
        @return: a L{Deferred} firing once the connection is closed.
        """
        return waitUntil(lambda: self.closed.called, timeout, "the relay to close the connection")


@defer.inlineCallbacks
def openSession(testCase, port: int):
    """
    Connect to the relay and read its greeting; the connection is aborted
    when the test ends.

    @return: a L{Deferred} firing with the L{_Session}.
    """
    session = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), _Session())
    testCase.addCleanup(lambda: session.closed.called or session.transport.abortConnection())
    greeting = yield session.nextReply()
    testCase.assertTrue(greeting.startswith(b"220 " + HOSTNAME.encode("ascii")), greeting)
    return session


@defer.inlineCallbacks
def beginTransaction(testCase, session: _Session, sender: bytes, recipient: bytes):
    """
    EHLO, MAIL, RCPT and DATA, each answered as it should be.
    """
    reply = yield session.command(b"EHLO raw.ops.test")
    testCase.assertTrue(reply.startswith(b"250-"), reply)
    for line, expected in [(b"MAIL FROM:<" + sender + b">", b"250 "), (b"RCPT TO:<" + recipient + b">", b"250 "), (b"DATA", b"354 ")]:
        reply = yield session.command(line)
        testCase.assertTrue(reply.startswith(expected), (line, reply))


class _RelayTestCase(TestCase):
    """
    Runs relays on a spool of its own, in a scratch directory.
    """

    timeout = 90

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.spool = os.path.join(self.scratch, "spool")
        self.port = freePort()

    def relayArguments(self, smartHostPort: int, *extra: str, port: int | None = None) -> list[str]:
        """
        @return: the options of C{twistd mailrelay} on L{spool}, listening
            on C{port} (by default L{port}) and relaying through
            127.0.0.1:C{smartHostPort}, then C{extra}.
        """
        return [
            "--smtp", f"tcp:{self.port if port is None else port}:interface=127.0.0.1",
            "--spool", self.spool,
            "--smarthost", f"127.0.0.1:{smartHostPort}",
            "--hostname", HOSTNAME,
            *extra,
        ]  # fmt: skip

    def startRelay(self, smartHostPort: int, *extra: str, port: int | None = None) -> RelayProcess:
        """
        Start C{twistd mailrelay} with L{relayArguments}.
        """
        return RelayProcess.spawn(self, self.relayArguments(smartHostPort, *extra, port=port), self.scratch)

    def queue(self, command: str, *arguments: str) -> defer.Deferred:
        """
        Run C{mailproto queue COMMAND --spool SPOOL ARGUMENTS}: the options
        first, then the queue id (see L{test_optionsAfterTheID}).

        @return: see L{runQueueCommand}.
        """
        return runQueueCommand(self, command, "--spool", self.spool, *arguments)

    @defer.inlineCallbacks
    def sendMessages(self, relay: RelayProcess, messages=MESSAGES):
        """
        Send C{messages} (one after the other, with smtplib) and wait until
        the relay has tried each once, its smart host refusing: each then
        waits with one attempt made.

        @return: a L{Deferred} firing with the queue ids by test id.
        """
        for testID, sender, recipients in messages:
            refused = yield _sendWithSmtplib(self.port, sender, recipients, _message(testID, sender, recipients))
            self.assertEqual(refused, {})

        def tried():
            ids = _queueIDs(self.spool)
            if len(ids) == len(messages) and all((_state(self.spool, i) or {}).get("attempts") == 1 for i in ids.values()):
                return ids
            return None

        ids = yield waitUntil(tried, PROMPTLY, lambda: f"a first attempt at each message:\n{relay.text()}")
        self.assertEqual(sorted(ids), sorted(testID for testID, _, _ in messages))
        return ids

    def whenLogged(self, relay: RelayProcess, needle: str) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with the lines of the relay's log
            that have C{needle}, once there is one (its output comes
            through a pipe: a line may be read a moment after the relay
            acted).
        """
        return waitUntil(lambda: relay.logLines(needle), PROMPTLY, lambda: f"{needle!r} in the log:\n{relay.text()}")

    @defer.inlineCallbacks
    def assertUnknownID(self, commands, running: bool):
        """
        Each of C{commands} given a well-formed queue id that is not queued
        exits with status 1 and a one-line error naming it, and prints
        nothing on its standard output.
        """
        unknown = "0123456789abcdef"
        for command in commands:
            out, err, code = yield self.queue(command, unknown)
            self.assertEqual((out, code), ("", 1), (command, running, err))
            self.assertEqual(err, f"mailproto queue {command}: no message {unknown} in the queue\n", (command, running))


# -- mailproto queue, with the relay running -----------------------------------------


class LiveQueueCommandTests(_RelayTestCase):
    """
    C{mailproto queue} against a running relay, whose smart host refuses
    connections (a closed port): the messages wait, each with a C{451
    4.4.1} reply.
    """

    @defer.inlineCallbacks
    def test_listAndShow(self):
        """
        C{list} shows each waiting message's id, sender, and each recipient
        with the last reply about it; C{list --json} says the same as JSON;
        C{show ID} shows the envelope, the recipients' states and the
        message's header (not its body); C{show --message ID} prints the
        message exactly as queued.  An unknown id makes C{show}, C{flush},
        C{requeue} and C{delete} exit with status 1 and a one-line error.
        The relay's control socket is in the spool, for its user only.
        """
        relay = self.startRelay(freePort())
        yield relay.whenListening()
        ids = yield self.sendMessages(relay)
        control = os.stat(os.path.join(self.spool, "control")).st_mode
        self.assertTrue(stat.S_ISSOCK(control))
        self.assertEqual(stat.S_IMODE(control), 0o600)

        out, err, code = yield self.queue("list")
        self.assertEqual((err, code), ("", 0), out)
        lines = out.splitlines()
        self.assertEqual(lines[-1][: len("3 messages queued, ")], "3 messages queued, ", out)
        for testID, sender, recipients in MESSAGES:
            queueID = ids[testID]
            [first] = [n for n, line in enumerate(lines) if line.startswith(queueID + "  ")]
            self.assertIn("  1 attempt  next attempt in ", lines[first])
            self.assertEqual(lines[first + 1], f"    from <{sender}>")
            for n, recipient in enumerate(recipients):
                line = lines[first + 2 + n]
                self.assertTrue(line.startswith(f"    to   <{recipient}>  (451 4.4.1 Could not connect"), line)

        out, err, code = yield self.queue("list", "--json")
        self.assertEqual((err, code), ("", 0), out)
        listed = json.loads(out)
        self.assertEqual([each["id"] for each in listed], [ids[testID] for testID, _, _ in MESSAGES])
        for each, (testID, sender, recipients) in zip(listed, MESSAGES):
            self.assertEqual(each["sender"], sender)
            self.assertEqual([r["address"] for r in each["recipients"]], recipients)
            self.assertEqual({r["state"] for r in each["recipients"]}, {"waiting"})
            for reply in [each["lastReply"], *(r["lastReply"] for r in each["recipients"])]:
                self.assertTrue(reply["text"].startswith("451 4.4.1 Could not connect"), reply)
                self.assertEqual((reply["code"], reply["status"]), (451, "4.4.1"))
            self.assertEqual((each["attempts"], each["sending"]), (1, False))
            self.assertEqual((each["client"], each["helo"], each["user"]), ("127.0.0.1", CLIENT_HELO, None))
            self.assertEqual(each["size"], len(_queuedMessage(self.spool, each["id"])))
            self.assertGreater(each["nextAttempt"], time.time() + 60)

        queueID = ids["m1"]
        out, err, code = yield self.queue("show", queueID)
        self.assertEqual((err, code), ("", 0), out)
        shown = out.splitlines()
        self.assertEqual(shown[0], f"id:         {queueID}")
        for expected in [
            "sender:     <alice@example.org>",
            "attempts:   1",
            f"size:       {len(_queuedMessage(self.spool, queueID))} octets",
        ]:
            self.assertIn(expected, shown)
        self.assertTrue(any(line.startswith("received:   ") and f"from 127.0.0.1 ({CLIENT_HELO})" in line for line in shown), out)
        for recipient in ("bob@example.com", "carol@example.com"):
            self.assertTrue(
                any(line.startswith(f"recipient:  <{recipient}> waiting  451 4.4.1 ") for line in shown), out
            )
        # The header, the relay's trace field first; not the body.
        header = shown[shown.index("") + 1 :]
        self.assertTrue(header[0].startswith(f"Received: from {CLIENT_HELO} ([127.0.0.1])"), out)
        for field in ["From: <alice@example.org>", "Subject: operations test m1", "X-Test-Id: m1"]:
            self.assertIn(field, header)
        self.assertNotIn("Body line", out)

        out, err, code = yield self.queue("show", "--json", queueID)
        self.assertEqual((err, code), ("", 0), out)
        self.assertEqual(json.loads(out)["id"], queueID)

        out, err, code = yield self.queue("show", "--message", queueID)
        self.assertEqual((err, code), ("", 0), out)
        self.assertEqual(out.encode("utf-8"), _queuedMessage(self.spool, queueID))
        self.assertTrue(out.encode("utf-8").endswith(b"\r\n" + _message(*MESSAGES[0])))

        yield self.assertUnknownID(["show", "flush", "requeue", "delete"], running=True)
        self.assertEqual(sorted(_queueIDs(self.spool).values()), sorted(ids.values()))
        self.assertNotIn("Traceback", relay.text())

    @defer.inlineCallbacks
    def test_flushRequeueDeleteThenDeliver(self):
        """
        Through the running relay: C{flush} has it try every message at
        once (its log says C{Attempt 2 for ID} for each, and their state
        files count two attempts); C{requeue ID} starts that message's
        retries over (C{Requeued ID}; its attempts go back to the one it
        is tried again with at once); C{delete ID} takes a message out (gone
        from C{list} and from C{queue/}; C{Deleted ID}).  Then, once the
        smart host's port answers, C{flush} delivers every message left,
        whole, and the queue is empty.
        """
        smartHostPort = freePort()
        relay = self.startRelay(smartHostPort)
        yield relay.whenListening()
        ids = yield self.sendMessages(relay)

        out, err, code = yield self.queue("flush")
        self.assertEqual((out, err, code), ("3 messages to be tried now\n", "", 0))
        for queueID in ids.values():
            yield waitUntil(
                lambda: (_state(self.spool, queueID) or {}).get("attempts") == 2,
                PROMPTLY,
                lambda: f"a second attempt at {queueID}:\n{relay.text()}",
            )
            lines = yield self.whenLogged(relay, f"Attempt 2 for {queueID} to ['[smarthost]']")
            self.assertEqual(len(lines), 1, relay.text())

        # requeue: its attempts go back; it is tried at once (and refused
        # again, so it ends with one).
        requeued = ids["m2"]
        before = len(relay.logLines(f"Deferred {requeued} "))
        out, err, code = yield self.queue("requeue", requeued)
        self.assertEqual((out, err, code), (f"{requeued} requeued\n", "", 0))
        yield self.whenLogged(relay, f"Requeued {requeued}")
        yield waitUntil(
            lambda: len(relay.logLines(f"Deferred {requeued} ")) > before and (_state(self.spool, requeued) or {}).get("attempts") == 1,
            PROMPTLY,
            lambda: f"{requeued} tried again after requeue:\n{relay.text()}",
        )
        # Tried again as a first attempt: no "Attempt 3" line.
        self.assertEqual(relay.logLines(f"Attempt 3 for {requeued}"), [])
        self.assertEqual(len(relay.logLines(f"Attempt 2 for {requeued}")), 1)

        deleted = ids["m1"]
        out, err, code = yield self.queue("delete", deleted)
        self.assertEqual((out, err, code), (f"{deleted} deleted\n", "", 0))
        yield self.whenLogged(relay, f"Deleted {deleted}")
        self.assertEqual([name for name in spoolListing(self.spool)["queue"] if name.startswith(deleted)], [])
        out, err, code = yield self.queue("list", "--json")
        self.assertEqual(sorted(each["id"] for each in json.loads(out)), sorted([ids["m2"], ids["m3"]]))
        out, err, code = yield self.queue("list")
        self.assertNotIn(deleted, out)
        self.assertIn("2 messages queued", out)

        # The smart host's port now leads to a working smart host.
        sink = yield SinkProcess.start(self, os.path.join(self.scratch, "smarthost"))
        forwarder = reactor.listenTCP(smartHostPort, ProxyFactory("127.0.0.1", sink.port), interface="127.0.0.1")
        self.addCleanup(forwarder.stopListening)
        out, err, code = yield self.queue("flush")
        self.assertEqual((out, err, code), ("2 messages to be tried now\n", "", 0))
        yield waitUntil(lambda: not _queueIDs(self.spool), PROMPTLY, lambda: f"an empty queue:\n{relay.text()}")
        out, err, code = yield self.queue("list")
        self.assertEqual((out, code), ("0 messages queued, 0 B\n", 0))
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text())
        arrived = sorted(sink.messages().values(), key=testIDOf)
        self.assertEqual([testIDOf(m) for m in arrived], ["m2", "m3"])
        for stored, (testID, sender, recipients) in zip(arrived, MESSAGES[1:]):
            self.assertTrue(stored.endswith(b"\r\n" + _message(testID, sender, recipients)), stored)
        self.assertEqual(spoolListing(self.spool), {"tmp": [], "queue": [], "corrupt": []})
        self.assertNotIn("Traceback", relay.text())


def _shortPrefix(queueID: str, ids) -> str:
    """
    @return: the shortest prefix of C{queueID} that no other of C{ids}
        starts with (at least 4 characters).
    """
    others = [each for each in ids if each != queueID]
    for length in range(4, len(queueID) + 1):
        if not any(each.startswith(queueID[:length]) for each in others):
            return queueID[:length]
    return queueID


class LiveHoldTests(_RelayTestCase):
    """
    C{mailproto queue hold|release|delete} through a running relay, whose
    smart host port is closed at first (each message waits with a
    C{451}), then answered by a L{ScriptedSMTPFactory} that accepts
    everything.
    """

    @defer.inlineCallbacks
    def test_holdStopsDeliveryUntilReleased(self):
        """
        A message held (by a prefix of its id) is not sent by C{flush}
        while the others are; C{list} marks it C{held}; a message deleted
        by C{--sender} is gone; C{release} has it sent at once.
        """
        smartHostPort = freePort()
        relay = self.startRelay(smartHostPort)
        yield relay.whenListening()
        ids = yield self.sendMessages(relay)
        held, deleted, sent = ids["m2"], ids["m3"], ids["m1"]

        prefix = _shortPrefix(held, ids.values())
        out, err, code = yield self.queue("hold", prefix)
        self.assertEqual((out, err, code), (f"{held} held\n", "", 0))
        yield self.whenLogged(relay, f"Held {held}")
        self.assertEqual(_state(self.spool, held)["held"], True)
        out, err, code = yield self.queue("hold", prefix)
        self.assertEqual((out, err, code), ("0 messages held (1 already held)\n", "", 0))

        out, err, code = yield self.queue("delete", "--sender", "frank@example.org")
        self.assertEqual((out, err, code), ("1 message deleted\n", "", 0))
        yield self.whenLogged(relay, f"Deleted {deleted}")
        self.assertEqual(sorted(_queueIDs(self.spool).values()), sorted([held, sent]))

        out, err, code = yield self.queue("delete")
        self.assertEqual(code, 2, err)

        smartHost = ScriptedSMTPFactory()
        listening = reactor.listenTCP(smartHostPort, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        out, err, code = yield self.queue("flush")
        self.assertEqual((out, err, code), ("1 message to be tried now\n", "", 0))
        yield waitUntil(lambda: list(_queueIDs(self.spool).values()) == [held], PROMPTLY, lambda: f"only {held} left:\n{relay.text()}")
        out, err, code = yield self.queue("list")
        [line] = [each for each in out.splitlines() if each.startswith(held)]
        self.assertTrue(line.endswith("  held"), out)
        out, err, code = yield self.queue("flush", held)
        self.assertEqual((out, err, code), ("0 messages to be tried now\n", "", 0))
        self.assertEqual([testIDOf(m) for m in smartHost.messages], ["m1"])
        self.assertEqual(relay.logLines(f"Attempt 2 for {held}"), [])

        out, err, code = yield self.queue("release", prefix)
        self.assertEqual((out, err, code), (f"{held} released\n", "", 0))
        yield waitUntil(lambda: not _queueIDs(self.spool), PROMPTLY, lambda: f"an empty queue:\n{relay.text()}")
        self.assertEqual([testIDOf(m) for m in smartHost.messages], ["m1", "m2"])
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text())
        self.assertNotIn("Traceback", relay.text())



# -- mailproto queue, with no relay running ------------------------------------------


class OfflineQueueCommandTests(_RelayTestCase):
    """
    C{mailproto queue} with no relay running, and the spool's lock.
    """

    @defer.inlineCallbacks
    def test_offlineChangesThenRestart(self):
        """
        With the relay stopped, C{flush} makes every message due (the
        state files' C{nextAttempt} becomes 0) and says they will be tried
        when the relay starts; C{delete ID} removes the message's files;
        C{requeue ID} sets its attempts back to 0; an unknown id is an
        error (status 1).  A relay started again, with a smart host that
        answers, delivers the messages left at once.
        """
        relay = self.startRelay(freePort())
        yield relay.whenListening()
        ids = yield self.sendMessages(relay)
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text())
        self.assertFalse(os.path.exists(os.path.join(self.spool, "control")))

        out, err, code = yield self.queue("flush")
        self.assertEqual((out, err, code), ("3 messages to be tried as soon as the relay starts\n", "", 0))
        for queueID in ids.values():
            state = _state(self.spool, queueID)
            self.assertEqual((state["nextAttempt"], state["attempts"]), (0, 1), state)

        deleted, requeued, flushed = ids["m1"], ids["m2"], ids["m3"]
        out, err, code = yield self.queue("delete", deleted)
        self.assertEqual((out, err, code), (f"{deleted} deleted\n", "", 0))
        self.assertEqual(sorted(spoolListing(self.spool)["queue"]), sorted([requeued, requeued + ".state", flushed, flushed + ".state"]))

        out, err, code = yield self.queue("requeue", requeued)
        self.assertEqual((out, err, code), (f"{requeued} requeued; it will be tried as soon as the relay starts\n", "", 0))
        state = _state(self.spool, requeued)
        self.assertEqual((state["attempts"], state["nextAttempt"]), (0, 0), state)
        self.assertEqual(_state(self.spool, flushed)["attempts"], 1)
        self.assertEqual(readQueueFile(os.path.join(self.spool, "queue", requeued)).attempts, 0)
        yield self.assertUnknownID(["flush", "requeue", "delete"], running=False)
        self.assertEqual(spoolListing(self.spool)["tmp"], [])

        sink = yield SinkProcess.start(self, os.path.join(self.scratch, "smarthost"))
        second = self.startRelay(sink.port)
        yield second.whenListening()
        self.assertEqual(len(second.logLines("(2 queued)")), 1, second.text())
        yield waitUntil(lambda: not _queueIDs(self.spool), PROMPTLY, lambda: f"an empty queue:\n{second.text()}")
        yield second.terminate()
        self.assertTrue(second.stoppedCleanly, second.text())
        self.assertEqual(sorted(testIDOf(m) for m in sink.messages().values()), ["m2", "m3"])
        self.assertEqual(spoolListing(self.spool), {"tmp": [], "queue": [], "corrupt": []})

    @defer.inlineCallbacks
    def test_oneUserOfTheSpoolAtATime(self):
        """
        While a relay runs, a second C{twistd mailrelay} on the same spool
        exits with status 1 before listening, with an error naming the
        spool, and the first goes on answering C{mailproto queue}.  While
        something else holds the spool's lock (as an offline C{mailproto
        queue} command does), a relay cannot start either, and a command
        that would change the queue says the spool is busy (status 1);
        once the lock is free, the command works.
        """
        relay = self.startRelay(freePort())
        yield relay.whenListening()

        @defer.inlineCallbacks
        def assertCannotStart():
            port = freePort()
            other = self.startRelay(freePort(), port=port)
            yield other.whenEnded(START_DEADLINE)
            text = other.text()
            self.assertEqual(other.exitCode, 1, text)
            self.assertIn(f"--spool {self.spool!r}: another relay (or a `mailproto queue` command) is using it", text.splitlines()[-1])
            self.assertNotIn("listening on", text)
            self.assertNotIn("Traceback", text)
            with self.assertRaises(ConnectionRefusedError):
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    pass

        yield assertCannotStart()
        self.assertTrue(relay.running)
        out, err, code = yield self.queue("flush")
        self.assertEqual((out, err, code), ("0 messages to be tried now\n", "", 0))
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text())

        lock = SpoolLock(self.spool)
        lock.acquire()
        self.addCleanup(lock.release)
        yield assertCannotStart()
        out, err, code = yield self.queue("flush")
        self.assertEqual((out, code), ("", 1), err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(f"a relay holds {self.spool} but does not answer on its control socket", err)
        lock.release()
        out, err, code = yield self.queue("flush")
        self.assertEqual((out, err, code), ("0 messages to be tried as soon as the relay starts\n", "", 0))


    @defer.inlineCallbacks
    def test_optionsAfterTheID(self):
        """
        Options may follow the queue id, as the module's synopsis writes
        them (C{mailproto queue show ID [--message]}): C{show ID --message
        --spool DIR} for a message not queued says so (status 1), as
        C{show --message --spool DIR ID} does.
        """
        os.makedirs(os.path.join(self.spool, "queue"))
        unknown = "0123456789abcdef"
        expected = ("", f"mailproto queue show: no message {unknown} in the queue\n", 1)
        result = yield runQueueCommand(self, "show", "--message", "--spool", self.spool, unknown)
        self.assertEqual(result, expected)
        result = yield runQueueCommand(self, "show", unknown, "--message", "--spool", self.spool)
        self.assertEqual(result, expected)



# -- SIGTERM -------------------------------------------------------------------------


class ShutdownTests(_RelayTestCase):
    """
    SIGTERM on a relay with sessions open.
    """

    @defer.inlineCallbacks
    def test_transactionFinishesWithinGrace(self):
        """
        With C{--shutdown-grace 10s}, on SIGTERM the relay stops listening
        (a new connection is refused) and tells an idle session (after
        EHLO) C{421 4.3.2} at once, while a session in the middle of DATA
        is still answered: it sends the rest of its message and C{.}, gets
        C{250}, and its next command gets C{421 4.3.2}.  The relay then
        exits cleanly, well within the grace.  Restarted, it leaves the
        message at the smart host whole, exactly once, with nothing left in
        the spool.
        """
        sink = yield SinkProcess.start(self, os.path.join(self.scratch, "smarthost"))
        relay = self.startRelay(sink.port, "--shutdown-grace", "10s")
        yield relay.whenListening()

        idle = yield openSession(self, self.port)
        reply = yield idle.command(b"EHLO idle.ops.test")
        self.assertTrue(reply.startswith(b"250-"), reply)

        busy = yield openSession(self, self.port)
        yield beginTransaction(self, busy, b"alice@example.org", b"bob@example.com")
        message = _message("term-1", "alice@example.org", ["bob@example.com"], lines=200)
        half = len(message) // 2
        busy.send(message[:half])

        stopping = time.monotonic()
        relay.process.signalProcess("TERM")
        reply = yield idle.nextReply()
        self.assertTrue(reply.startswith(b"421 4.3.2 " + HOSTNAME.encode("ascii") + b" Service shutting down"), reply)
        yield idle.whenClosed()
        [line] = yield waitUntil(
            lambda: relay.logLines("mailrelay: stopping;"), REPLY_TIMEOUT, lambda: f"the relay to stop listening:\n{relay.text()}"
        )
        grace = re.search(r"1 session in a transaction get up to ([0-9.]+) s to finish", line)
        self.assertIsNotNone(grace, line)
        self.assertTrue(9 < float(grace.group(1)) <= 10, line)
        with self.assertRaises(error.ConnectionRefusedError):
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5), Protocol())
        self.assertTrue(relay.running)
        self.assertEqual(busy.replies[-1][:4], b"354 ")

        reply = yield busy.command(message[half:] + b".")
        self.assertTrue(reply.startswith(b"250 "), reply)
        reply = yield busy.command(b"NOOP")
        self.assertTrue(reply.startswith(b"421 4.3.2 "), reply)
        yield busy.whenClosed()

        yield relay.whenEnded(10)
        self.assertLess(time.monotonic() - stopping, 10)
        self.assertTrue(relay.stoppedCleanly, relay.text())
        self.assertNotIn("Traceback", relay.text())
        self.assertEqual(spoolListing(self.spool)["tmp"], [])
        self.assertEqual(relay.logLines("did not finish in time"), [])

        second = self.startRelay(sink.port)
        yield second.whenListening()
        yield waitUntil(lambda: not _queueIDs(self.spool) and sink.messages(), PROMPTLY, lambda: f"the message at the smart host:\n{second.text()}")
        yield second.terminate()
        self.assertTrue(second.stoppedCleanly, second.text())
        [stored] = sink.messages().values()
        self.assertTrue(stored.endswith(b"\r\n" + message), stored[:500])
        self.assertEqual(spoolListing(self.spool), {"tmp": [], "queue": [], "corrupt": []})

    @defer.inlineCallbacks
    def test_pipelinedCommandAfterDotRefused(self):
        """
        A session that finishes its message during the grace and pipelines
        its next command with the final C{.} gets C{250} for the message
        and C{421 4.3.2} for that command: it cannot open a new transaction
        on a relay that is stopping.
        """
        relay = self.startRelay(freePort(), "--shutdown-grace", "2s")
        yield relay.whenListening()
        busy = yield openSession(self, self.port)
        yield beginTransaction(self, busy, b"alice@example.org", b"bob@example.com")
        message = _message("term-2", "alice@example.org", ["bob@example.com"])
        busy.send(message[:40])
        relay.process.signalProcess("TERM")
        yield waitUntil(
            lambda: relay.logLines("mailrelay: stopping;"), REPLY_TIMEOUT, lambda: f"the relay to stop listening:\n{relay.text()}"
        )
        busy.send(message[40:] + b".\r\nMAIL FROM:<dave@example.org>\r\n")
        reply = yield busy.nextReply()
        self.assertTrue(reply.startswith(b"250 "), reply)
        reply = yield busy.nextReply()
        self.assertTrue(reply.startswith(b"421 4.3.2 "), reply)


    @defer.inlineCallbacks
    def test_unfinishedMessageDiscardedAfterGrace(self):
        """
        With C{--shutdown-grace 1s}, a client that never ends its message
        is cut off about a second after SIGTERM: it gets no reply to its
        DATA, the relay exits cleanly (no traceback), and the half-received
        message, which was in C{tmp/}, is neither there nor in C{queue/}.
        """
        relay = self.startRelay(freePort(), "--shutdown-grace", "1s")
        yield relay.whenListening()
        client = yield openSession(self, self.port)
        yield beginTransaction(self, client, b"alice@example.org", b"bob@example.com")
        client.send(b"X-Test-Id: unfinished\r\n\r\n" + (b"y" * 98 + b"\r\n") * (SpoolFile.SPILL // 100 + 100))
        yield waitUntil(lambda: spoolListing(self.spool)["tmp"], REPLY_TIMEOUT, "the half-received message in tmp/")
        replies = len(client.replies)

        stopping = time.monotonic()
        relay.process.signalProcess("TERM")
        yield relay.whenEnded(10)
        elapsed = time.monotonic() - stopping
        self.assertTrue(0.9 <= elapsed < 5, elapsed)
        self.assertTrue(relay.stoppedCleanly, relay.text())
        self.assertEqual(len(relay.logLines("mailrelay: 1 session did not finish in time; closed")), 1, relay.text())
        self.assertIn("0 queued now", relay.logLines("mailrelay: stopped;")[0])
        self.assertNotIn("Traceback", relay.text())
        self.assertEqual(spoolListing(self.spool), {"tmp": [], "queue": [], "corrupt": []})
        yield client.whenClosed()
        self.assertEqual(len(client.replies), replies, client.replies)


# -- the log file --------------------------------------------------------------------


class LogFileTests(_RelayTestCase):
    """
    The relay logging to a file (twistd's C{--logfile}).
    """

    def startLoggingRelay(self, path: str, *extra: str) -> RelayProcess:
        """
        Start a relay as L{startRelay} does, but with twistd's
        C{--logfile=PATH} (a twistd option, before C{mailrelay}) instead of
        its standard output.
        """
        arguments = [
            "--smtp", f"tcp:{self.port}:interface=127.0.0.1",
            "--spool", self.spool,
            "--smarthost", f"127.0.0.1:{freePort()}",
            "--hostname", HOSTNAME,
            *extra,
        ]  # fmt: skip
        argv, env = relayCommand(arguments, self.scratch)
        self.assertIn("--logfile=-", argv[: argv.index("mailrelay")])
        argv[argv.index("--logfile=-")] = f"--logfile={path}"
        relay = RelayProcess()
        relay._spawn(self, argv, env, self.scratch)
        return relay

    def whenInFile(self, relay: RelayProcess, path: str, needle: str) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with the lines of the file at C{path}
            that have C{needle}, once there is one.
        """
        return waitUntil(
            lambda: [line for line in _readLines(path) if needle in line],
            START_DEADLINE,
            lambda: f"{needle!r} in {path}:\n" + "\n".join(_readLines(path)) + "\n" + relay.text(),
        )

    @defer.inlineCallbacks
    def test_sighupReopensLogFile(self):
        """
        After the log file is renamed (as log rotation does), SIGHUP makes
        the relay open a new file at the same path: the first message's
        C{Queued} line is in the renamed file, the second's in the new one.
        """
        path = os.path.join(self.scratch, "relay.log")
        rotated = path + ".1"
        relay = self.startLoggingRelay(path)
        yield self.whenInFile(relay, path, "mailrelay: listening on")
        self.assertEqual(relay.output, b"")

        yield _sendWithSmtplib(self.port, "alice@example.org", ["bob@example.com"], _message("log-1", "alice@example.org", ["bob@example.com"]))
        yield self.whenInFile(relay, path, "Queued ")
        os.rename(path, rotated)
        relay.process.signalProcess("HUP")
        yield self.whenInFile(relay, path, "mailrelay: log file reopened")
        yield _sendWithSmtplib(self.port, "dave@example.org", ["erin@example.net"], _message("log-2", "dave@example.org", ["erin@example.net"]))
        yield self.whenInFile(relay, path, "Queued ")
        ids = _queueIDs(self.spool)

        [old] = [line for line in _readLines(rotated) if "Queued " in line]
        self.assertIn(f"Queued {ids['log-1']} from <alice@example.org> for <bob@example.com>", old)
        [new] = [line for line in _readLines(path) if "Queued " in line]
        self.assertIn(f"Queued {ids['log-2']} from <dave@example.org> for <erin@example.net>", new)
        self.assertEqual([line for line in _readLines(rotated) if "log file reopened" in line], [])

        yield relay.terminate()
        self.assertEqual(relay.endSignal, signal.SIGTERM)
        self.assertEqual(len([line for line in _readLines(path) if "mailrelay: stopped;" in line]), 1, _readLines(path))
        self.assertNotIn("Traceback", "\n".join(_readLines(path) + _readLines(rotated)))

    def test_jsonLines(self):
        """
        With C{--log-format json}, every line of the log file, twistd's
        own included, is a JSON object with C{time}, C{level} and C{text};
        the C{Queued} line has the message's queue id as C{queueID}.
        """
        return self.jsonLines("1")

    @defer.inlineCallbacks
    def test_jsonLinesWithWorkers(self):
        """
        With workers, the C{Queued} line a worker logs has the same
        fields, its text names the worker, and C{mailrelay_worker} is
        its number.
        """
        queued = yield self.jsonLines("2")
        self.assertIn(queued["mailrelay_worker"], (1, 2))
        self.assertTrue(queued["text"].startswith(f"worker {queued['mailrelay_worker']}: Queued "), queued)

    @defer.inlineCallbacks
    def jsonLines(self, workers: str):
        """
        Run a relay with C{--log-format json} and C{--workers WORKERS},
        send it one message and check its log.

        @return: a L{Deferred} firing with the C{Queued} line's record.
        """
        path = os.path.join(self.scratch, "relay.log")
        relay = self.startLoggingRelay(path, "--log-format", "json", "--workers", workers)
        yield self.whenInFile(relay, path, "mailrelay: listening on")
        if workers != "1":
            yield self.whenInFile(relay, path, f"worker {workers}: ")
        yield _sendWithSmtplib(self.port, "alice@example.org", ["bob@example.com"], _message("json-1", "alice@example.org", ["bob@example.com"]))
        yield self.whenInFile(relay, path, '"queueID"')
        yield relay.terminate()
        self.assertEqual(relay.endSignal, signal.SIGTERM)

        records = []
        for line in _readLines(path):
            record = json.loads(line)
            self.assertIsInstance(record, dict)
            self.assertLessEqual({"time", "level", "text"}, set(record), line)
            self.assertTrue(record["time"].endswith("Z"), line)
            records.append(record)
        self.assertTrue(any(r["text"].startswith("twistd ") and "starting up" in r["text"] for r in records))
        self.assertTrue(any(r["text"].startswith("mailrelay: stopped;") for r in records))
        [queued] = [r for r in records if "Queued " in r["text"]]
        [queueID] = _queueIDs(self.spool).values()
        self.assertEqual(queued["queueID"], queueID)
        self.assertEqual(queued["level"], "info")
        self.assertEqual(queued["text"].split("Queued ")[1].split()[0], queueID)
        self.assertEqual(queued["sender"], "alice@example.org")
        return queued
