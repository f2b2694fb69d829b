# -*- test-case-name: mailproto.test.test_hops -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for loop detection (L{mailproto._headerpolicy}): the streaming
header scanner, the relay's server refusing a looping message before it
is queued, and C{twistd mailrelay --max-hops} over real sockets.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._errors import SMTPServerError
from mailproto._headerpolicy import LINE_HOLD, HeaderScanner, IntakePolicy
from mailproto._queue import Queue
from mailproto._relay import QueueDeliveryFactory
from mailproto.smtp import ESMTPFactory
from mailproto.test.test_daemon import RelayProcess, _sendWithSmtplib, freePort, spoolListing, waitUntil
from mailproto.testing import ScriptedSMTPFactory


def received(n: int, host: bytes = b"mx%d.example") -> bytes:
    """
    @return: C{n} folded C{Received:} fields.
    """
    return b"".join(
        b"Received: from a.example (a.example [192.0.2.1])\r\n\tby " + (host % i if b"%d" in host else host) + b" with ESMTP;\r\n"
        b"\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
        for i in range(n)
    )


def chunkings(message: bytes):
    """
    @return: the message whole, one octet at a time, and in chunks of 7.
    """
    return [
        ("whole", [message]),
        ("bytewise", [message[i : i + 1] for i in range(len(message))]),
        ("sevens", [message[i : i + 7] for i in range(0, len(message), 7)]),
    ]


def scan(scanner: HeaderScanner, chunks) -> bytes:
    """
    @return: what C{scanner} writes for the chunks and the end.
    """
    return b"".join([scanner.feed(chunk) for chunk in chunks] + [scanner.close()])


class HeaderScannerTests(SynchronousTestCase):
    """
    L{HeaderScanner} counts C{Received:} fields in the header section
    only, however the message is cut.
    """

    def assertPasses(self, message: bytes, **kw) -> HeaderScanner:
        for name, chunks in chunkings(message):
            scanner = HeaderScanner(b"relay.example", **kw)
            self.assertEqual(scan(scanner, chunks), message, name)
        return scanner

    def assertRefused(self, message: bytes, text: bytes, **kw) -> None:
        for name, chunks in chunkings(message):
            scanner = HeaderScanner(b"relay.example", **kw)
            error = self.assertRaises(SMTPServerError, scan, scanner, chunks)
            self.assertEqual((error.code, error.status, error.resp), (554, b"5.4.6", text), name)

    def test_fiftyPassFiftyOneRefused(self):
        """
        Exactly 50 C{Received:} fields pass unchanged; 51 are refused with
        C{554 5.4.6 Too many hops}.
        """
        body = b"Subject: hi\r\n\r\nhello\r\n"
        scanner = self.assertPasses(received(50) + body)
        self.assertEqual(scanner.received, 50)
        self.assertRefused(received(51) + body, b"Too many hops")
        self.assertRefused(received(3) + body, b"Too many hops", maxHops=2)
        self.assertPasses(received(60) + body, maxHops=0)

    def test_bodyNotCounted(self):
        """
        C{Received:} lines after the empty line are body, not counted.
        """
        scanner = self.assertPasses(received(2) + b"Subject: x\r\n\r\n" + received(100))
        self.assertEqual(scanner.received, 2)

    def test_caseAndWhiteSpace(self):
        """
        Field names are case-insensitive; white space before the colon
        (obsolete syntax) is allowed; C{X-Received:} is another field.
        """
        message = b"RECEIVED : x\r\nreceived:y\r\nX-Received: z\r\n\r\n"
        scanner = self.assertPasses(message)
        self.assertEqual(scanner.received, 2)

    def test_noBodyAndNoHeaderEnd(self):
        """
        A message of header fields only, its last line without CRLF, is
        still counted and passed through.
        """
        self.assertRefused(received(51)[:-2], b"Too many hops")
        self.assertPasses(received(2) + b"Subject: x")

    def test_longLinesBounded(self):
        """
        A field longer than L{LINE_HOLD} passes through without being held
        whole; the next field is still seen.
        """
        message = b"X-Long: " + b"a" * (LINE_HOLD * 5) + b"\r\n" + received(3) + b"\r\nbody\r\n"
        scanner = HeaderScanner(b"relay.example", maxHops=2)
        out = scanner.feed(message[: LINE_HOLD * 3])
        self.assertEqual(out, message[: LINE_HOLD * 3])
        self.assertLess(len(scanner._line), LINE_HOLD)
        self.assertRaises(SMTPServerError, scanner.feed, message[LINE_HOLD * 3 :])

    def test_notAFieldStartsTheBody(self):
        """
        A line that is not a field ends the header section: C{Received:}
        lines after it are not counted.
        """
        scanner = self.assertPasses(b"Received: a\r\nnot a field\r\n" + received(60), maxHops=1)
        self.assertEqual(scanner.received, 1)

    def test_ownTrace(self):
        """
        A second C{Received:} field of this relay (C{by relay.example
        (mailproto ...)}, folded anywhere, any case) is a loop; those of
        other hosts, or without C{(mailproto}, are not.
        """
        ours = b"Received: from c.example ([192.0.2.9])\r\n\tby Relay.Example. (mailproto 1.0) with ESMTP;\r\n\tdate\r\n"
        self.assertPasses(ours + b"\r\nx\r\n")
        self.assertPasses(ours + received(2, b"relay.example") + b"\r\nx\r\n")
        self.assertPasses(ours + ours.replace(b"relay.example", b"other.example").replace(b"Relay.Example.", b"other.example") + b"\r\n")
        folded = b"Received: from c.example\r\n by\r\n relay.example\r\n (mailproto\r\n 1.0);\r\n date\r\n"
        self.assertRefused(ours + folded + b"\r\nx\r\n", b"Mail loop: the message has passed through relay.example already")
        self.assertPasses(ours + folded + b"\r\nx\r\n", maxOwnHops=2)
        self.assertPasses(ours + folded + b"\r\nx\r\n", maxOwnHops=0)

    def test_refusedReported(self):
        """
        The C{refused} callable is told the policy and the error, once.
        """
        seen = []
        scanner = HeaderScanner(b"relay.example", maxHops=1, refused=lambda policy, e: seen.append((policy, e.code)))
        self.assertRaises(SMTPServerError, scanner.feed, received(2))
        self.assertEqual(seen, [("hops", 554)])
        self.assertEqual(scanner.feed(b"more\r\n"), b"more\r\n")


class _Envelope:
    id = "0123456789abcdef"
    sender = b"jo@example.org"
    client = "127.0.0.1"
    user = None


class IntakePolicyTests(SynchronousTestCase):
    """
    L{IntakePolicy} makes scanners, logs and counts refusals.
    """

    def test_refusalLoggedAndCounted(self):
        policy = IntakePolicy(b"relay.example", maxHops=3)
        acted = []
        policy.observers.append(acted.append)
        with capturedLogs() as events:
            self.assertRaises(SMTPServerError, scan, policy.scanner(_Envelope()), [received(4)])
        self.assertEqual(acted, ["hops"])
        [event] = [e for e in events if e.get("policy") == "hops"]
        self.assertEqual((event["received"], event["limit"], event["client"]), (4, 3, "127.0.0.1"))


class ServerTests(SynchronousTestCase):
    """
    The relay's server with a L{QueueDeliveryFactory} and an
    L{IntakePolicy}, in memory: a looping message is refused at the end of
    its data, and nothing of it stays in the spool.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.queue = Queue(self.directory, runInThread=lambda f, *a: defer.succeed(f(*a)))
        self.intake = IntakePolicy(b"relay.example", maxHops=50, clock=Clock())
        factory = ESMTPFactory(
            deliveryFactory=QueueDeliveryFactory(self.queue, clock=Clock(), intake=self.intake),
            domain=b"relay.example",
            clock=Clock(),
        )
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(b"EHLO client.example\r\n")
        self.transport.clear()

    def send(self, message: bytes, chunk: int | None = None) -> bytes:
        self.transport.clear()
        data = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n" + message + b".\r\n"
        if chunk is None:
            self.proto.dataReceived(data)
        else:
            for i in range(0, len(data), chunk):
                self.proto.dataReceived(data[i : i + chunk])
        return self.transport.value()

    def spool(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.directory, "tmp"))) + sorted(self.queue.ids())

    def test_fortyNinePlusOurs(self):
        """
        49 C{Received:} fields and the relay's own make 50: queued.
        """
        reply = self.send(received(49) + b"Subject: x\r\n\r\nhi\r\n", chunk=5)
        self.assertRegex(reply, rb"250 2\.0\.0 Ok: queued as [0-9a-f]+\r\n$")
        self.assertEqual(len(self.queue.ids()), 1)

    def test_fiftyPlusOursRefused(self):
        """
        50 and the relay's own make 51: C{554 5.4.6} after the data, for
        a message of two recipients; nothing is queued or left behind,
        and the session goes on.
        """
        reply = self.send(received(50) + b"Subject: x\r\n\r\nhi\r\n", chunk=3)
        self.assertTrue(reply.endswith(b"354 Continue\r\n554 5.4.6 Too many hops\r\n"), reply)
        self.assertEqual(self.spool(), [])
        reply = self.send(b"Subject: y\r\n\r\nhi\r\n")
        self.assertRegex(reply, rb"250 2\.0\.0 Ok: queued as [0-9a-f]+\r\n$")

    def test_loopThroughOurselves(self):
        """
        A message that has passed through this relay already (its
        C{Received:} field) is refused at once.
        """
        ours = b"Received: from x ([192.0.2.1])\r\n\tby relay.example (mailproto 1.0) with ESMTP;\r\n\tdate\r\n"
        reply = self.send(ours + b"Subject: x\r\n\r\nhi\r\n")
        self.assertIn(b"554 5.4.6 Mail loop", reply)
        self.assertEqual(self.spool(), [])


def _smartHost() -> ScriptedSMTPFactory:
    return ScriptedSMTPFactory({}, extensions=(b"PIPELINING", b"8BITMIME"))


class MailrelayHopsTests(TestCase):
    """
    C{twistd mailrelay} in a child process, relaying to a scripted smart
    host: the hop limit over real sockets.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_tooManyHopsRefused(self):
        """
        A message with 51 C{Received:} fields is refused with C{554
        5.4.6}; nothing is queued, the refusal is logged; one with 49 (50
        with the relay's) goes through; C{--max-hops 60} lets 51 through.
        """
        from twisted.internet import reactor

        scratch = os.path.abspath(self.mktemp())
        os.makedirs(scratch)
        smartHost = _smartHost()
        listening = reactor.listenTCP(0, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = freePort()
        spool = os.path.join(scratch, "spool")
        relay = RelayProcess.spawn(
            self,
            ["--smtp", f"tcp:{port}:interface=127.0.0.1", "--spool", spool, "--hostname", "relay.test",
             "--smarthost", f"127.0.0.1:{listening.getHost().port}", "--smarthost-tls", "none"],
            scratch,
        )  # fmt: skip
        yield relay.whenListening()
        error = yield self.assertFailure(
            _sendWithSmtplib(port, "jo@example.org", ["ann@example.com"], received(51) + b"Subject: loop\r\n\r\nhi\r\n"),
            smtplib.SMTPDataError,
        )
        self.assertEqual(error.smtp_code, 554)
        self.assertEqual(error.smtp_error, b"5.4.6 Too many hops")
        self.assertEqual(spoolListing(spool)["queue"], [])
        self.assertEqual(len(relay.logLines("Too many hops")), 1, relay.text())
        refused = yield _sendWithSmtplib(port, "jo@example.org", ["ann@example.com"], received(49) + b"Subject: fine\r\n\r\nhi\r\n")
        self.assertEqual(refused, {})
        yield waitUntil(lambda: any(b"Subject: fine" in m for m in smartHost.messages), 30, relay.text)
        [message] = smartHost.messages
        self.assertEqual(message.count(b"Received: "), 50)
        self.assertEqual(relay.logLines("Traceback"), [])


class _Listeners:
    def __init__(self) -> None:
        self.listeners = []
        self.outcomeListeners = []


class MetricsTests(SynchronousTestCase):
    """
    The relay counts its intake policies in
    C{mailrelay_intake_policy_total{policy}}.
    """

    def test_counted(self):
        from mailproto._relayd._metrics import RelayMetrics

        metrics = RelayMetrics(_Listeners(), _Listeners(), Clock())
        metrics.intakePolicyActed("hops")
        metrics.intakePolicyActed("hops")
        self.assertEqual(metrics.registry.get_sample_value("mailrelay_intake_policy_total", {"policy": "hops"}), 2)
        self.assertEqual(metrics.registry.get_sample_value("mailrelay_intake_policy_total", {"policy": "date"}), 0)

    def test_daemonWiring(self):
        """
        C{makeService} gives every listener's deliveries the same
        L{IntakePolicy}, with the options' limits, observed by the metrics.
        """
        from mailproto._relayd._daemon import Options, makeService

        options = Options()
        options.parseOptions(
            ["--spool", self.mktemp(), "--smtp", "tcp:0", "--lmtp", "tcp:0", "--max-hops", "7", "--max-own-hops", "0",
             "--metrics", "tcp:0:interface=127.0.0.1", "--hostname", "relay.example"]
        )  # fmt: skip
        relay = makeService(options)
        intake = relay.factories["smtp"].deliveryFactory.intake
        self.assertIs(relay.factories["lmtp"].deliveryFactory.intake, intake)
        self.assertEqual((intake.hostname, intake.maxHops, intake.maxOwnHops), (b"relay.example", 7, 0))
        self.assertIn(relay.metrics.intakePolicyActed, intake.observers)
