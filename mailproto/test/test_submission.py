# -*- test-case-name: mailproto.test.test_submission -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for submission hygiene (L{mailproto._relayd._submission}): the sender login
map, the server refusing senders a user does not own, the C{From:} check,
C{Date:} and C{Message-ID:} added when missing, and C{twistd mailrelay
--submission} over real sockets with AUTH.
"""

from __future__ import annotations

import base64
import os
import re
import smtplib

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._relayd._daemon import Options
from mailproto._headerpolicy import IntakePolicy
from mailproto._queue import Queue
from mailproto._relay import RelayPolicy
from mailproto._relayd._submission import SenderLoginMap, SubmissionPolicy, SubmissionRealm
from mailproto.smtp import ESMTPFactory
from mailproto.test.test_daemon import RelayProcess, freePort, spoolListing, waitUntil
from mailproto.test.test_mailrelay import _Files
from mailproto.testing import ScriptedSMTPFactory

MAP = b"""# who may send as whom
ann: ann@example.com, Sales@Example.com
bob: @bob.example  # a whole domain
ann: ann@other.example
"""


def _writeMap(testCase, text: bytes = MAP) -> str:
    path = testCase.mktemp()
    with open(path, "wb") as f:
        f.write(text)
    return path


class SenderLoginMapTests(SynchronousTestCase):
    """
    L{SenderLoginMap}: addresses, C{@domain}, the login as its own
    address, the null sender, and reading again when changed.
    """

    def test_owns(self):
        senders = SenderLoginMap(_writeMap(self))
        for login, address, owned in [
            (b"ann", b"ann@example.com", True),
            (b"ann", b"ANN@example.COM", True),
            (b"ann", b"sales@example.com", True),
            (b"ann", b"ann@other.example", True),
            (b"ann", b"ceo@bank.example", False),
            (b"ann", b"x@bob.example", False),
            (b"bob", b"anything@bob.example", True),
            (b"bob", b"bob@sub.bob.example", False),
            (b"carol", b"carol@example.com", False),
            (b"carol@example.com", b"carol@example.com", True),
            (b"carol", b"", True),
        ]:
            self.assertEqual(senders.owns(login, address), owned, (login, address))

    def test_malformed(self):
        for text in (b"ann\n", b"ann:\n", b": a@b.example\n", b"ann: notanaddress\n", b"ann: <a@b.example>\n"):
            self.assertRaises(ValueError, SenderLoginMap, _writeMap(self, text))

    def test_rereadWhenChanged(self):
        path = _writeMap(self)
        senders = SenderLoginMap(path)
        with open(path, "ab") as f:
            f.write(b"carol: carol@example.com\n")
        self.assertTrue(senders.owns(b"carol", b"carol@example.com"))
        with open(path, "ab") as f:
            f.write(b"broken line\n")
        with capturedLogs() as events:
            self.assertTrue(senders.owns(b"carol", b"carol@example.com"))
        self.assertEqual(len([e for e in events if "keeping the last good" in e.get("log_format", "")]), 1)


class OptionsTests(SynchronousTestCase):
    """
    The daemon's options of loop detection and submission hygiene.
    """

    def parse(self, *arguments):
        options = Options()
        options.parseOptions(["--spool", self.mktemp(), *arguments])
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual((options["max-hops"], options["max-own-hops"]), (50, 1))
        self.assertIsNone(options["sender-login-map"])
        self.assertFalse(options["check-from-header"])
        self.assertFalse(options["keep-missing-headers"])

    def test_values(self):
        options = self.parse("--max-hops", "0", "--max-own-hops", "2", "--sender-login-map", _writeMap(self), "--check-from-header")
        self.assertEqual((options["max-hops"], options["max-own-hops"]), (0, 2))
        self.assertIsInstance(options["sender-login-map"], SenderLoginMap)

    def test_errors(self):
        for arguments, text in [
            (["--max-hops", "-1"], "--max-hops: '-1' is not a whole number"),
            (["--max-own-hops", "x"], "--max-own-hops: 'x' is not a whole number"),
            (["--check-from-header"], "--check-from-header needs --sender-login-map"),
            (["--sender-login-map", "/nonexistent/map"], "--sender-login-map '/nonexistent/map': cannot read it"),
            (["--sender-login-map", _writeMap(self, b"ann\n")], "line 1: expected LOGIN: ADDRESS"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *arguments)
            self.assertIn(text, str(error))


class SubmissionServerTests(SynchronousTestCase):
    """
    A server whose authenticated clients get the submission policy, in
    memory.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.queue = Queue(self.directory, runInThread=lambda f, *a: defer.succeed(f(*a)))
        self.intake = IntakePolicy(b"relay.example", clock=Clock())
        self.acted = []
        self.intake.observers.append(self.acted.append)

    def session(self, checkFromHeader=False, addMissing=True, senders=True):
        submission = SubmissionPolicy(
            self.intake, SenderLoginMap(_writeMap(self)) if senders else None, checkFromHeader=checkFromHeader, addMissing=addMissing
        )
        portal = Portal(SubmissionRealm(self.queue, RelayPolicy(networks=()), submission), [InMemoryUsernamePasswordDatabaseDontUse(ann=b"pw")])
        factory = ESMTPFactory(portal, domain=b"relay.example", clock=Clock())
        proto = factory.buildProtocol(None)
        proto.allowPlaintextAuth = True
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.5", 5000))
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO client.example\r\nAUTH PLAIN " + base64.b64encode(b"\0ann\0pw") + b"\r\n")
        self.assertIn(b"235 ", transport.value())
        transport.clear()
        return proto, transport

    def message(self) -> bytes:
        [queueID] = self.queue.ids()
        with self.queue.openMessage(queueID) as f:
            return queueID, f.read()

    def test_senderNotOwned(self):
        """
        MAIL from an address the user does not own: C{553 5.7.1}, logged
        and counted; one it owns, and the null sender, are accepted.
        """
        proto, transport = self.session()
        with capturedLogs() as events:
            proto.dataReceived(b"MAIL FROM:<ceo@bank.example>\r\n")
        self.assertEqual(transport.value(), b"553 5.7.1 Sender address not owned by user ann\r\n")
        self.assertEqual(self.acted, ["sender-login"])
        [event] = [e for e in events if e.get("policy") == "sender-login"]
        self.assertEqual((event["address"], event["login"], event["client"]), ("ceo@bank.example", "ann", "192.0.2.5"))
        for sender in (b"<Sales@example.com>", b"<>"):
            transport.clear()
            proto.dataReceived(b"MAIL FROM:" + sender + b"\r\nRSET\r\n")
            self.assertTrue(transport.value().startswith(b"250 2.1.0"), transport.value())

    def test_noMapAnySender(self):
        """
        Without a sender login map, any sender is accepted (as before).
        """
        proto, transport = self.session(senders=False)
        proto.dataReceived(b"MAIL FROM:<ceo@bank.example>\r\n")
        self.assertTrue(transport.value().startswith(b"250 2.1.0"))

    def test_addsDateAndMessageID(self):
        """
        A submitted message without C{Date:} and C{Message-ID:} gets both
        at the end of its header section, streamed in small chunks; the
        queue id names the Message-ID; the body is untouched.
        """
        proto, transport = self.session()
        data = (
            b"MAIL FROM:<ann@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n"
            b"From: Ann <ann@example.com>\r\nSubject: hi\r\n there\r\n\r\nDate: not a header\r\n.\r\n"
        )
        for i in range(0, len(data), 4):
            proto.dataReceived(data[i : i + 4])
        self.assertRegex(transport.value(), rb"250 2\.0\.0 Ok: queued as [0-9a-f]+\r\n$")
        queueID, message = self.message()
        header, _, body = message.partition(b"\r\n\r\n")
        self.assertEqual(body, b"Date: not a header\r\n")
        self.assertRegex(header, rb" with ESMTPA[;\r]")
        lines = header.split(b"\r\n")
        self.assertEqual(lines[-4:-2], [b"Subject: hi", b" there"])
        self.assertRegex(lines[-2], rb"^Date: [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$")
        self.assertEqual(lines[-1], b"Message-ID: <" + queueID.encode() + b"@relay.example>")
        self.assertEqual(sorted(self.acted), ["date", "message-id"])

    def test_keepsExistingAndOption(self):
        """
        Fields already there are not added again; with C{addMissing}
        off, nothing is added.
        """
        proto, transport = self.session()
        proto.dataReceived(
            b"MAIL FROM:<ann@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n"
            b"DATE: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <a@b>\r\n\r\nx\r\n.\r\n"
        )
        _, message = self.message()
        self.assertEqual(len(re.findall(rb"(?im)^date:", message)), 1)
        self.assertEqual(len(re.findall(rb"(?im)^message-id:", message)), 1)
        proto, transport = self.session(addMissing=False)
        self.queue = self.queue
        proto.dataReceived(b"MAIL FROM:<ann@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        self.assertEqual(self.acted, [])

    def test_fromHeaderChecked(self):
        """
        With C{checkFromHeader}, a C{From:} naming an address the user
        does not own (folded, among others) is refused with C{553 5.7.1}
        at the end of the data; nothing is queued.
        """
        proto, transport = self.session(checkFromHeader=True)
        proto.dataReceived(
            b"MAIL FROM:<ann@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n"
            b"From: Ann <ann@example.com>,\r\n The CEO <ceo@bank.example>\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
        )
        self.assertTrue(transport.value().endswith(b"354 Continue\r\n553 5.7.1 Sender address not owned by user ann\r\n"), transport.value())
        self.assertEqual(self.queue.ids(), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.assertEqual(self.acted, ["from-header"])
        transport.clear()
        proto.dataReceived(
            b"MAIL FROM:<ann@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n"
            b"From: ann@other.example\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
        )
        self.assertRegex(transport.value(), rb"250 2\.0\.0 Ok: queued as [0-9a-f]+\r\n$")


class MailrelaySubmissionTests(TestCase):
    """
    C{twistd mailrelay --submission} in a child process, with a users
    file, a certificate, a sender login map, relaying to a scripted smart
    host.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_submission(self):
        """
        After STARTTLS and AUTH as C{joe}, C{MAIL FROM:<ceo@bank.example>}
        gets C{553 5.7.1}; a message from an owned address without
        C{Date:} and C{Message-ID:} arrives at the next hop with both, and
        with C{with ESMTPSA} in the relay's C{Received:} field.
        """
        from twisted.internet import reactor

        files = _Files(self)
        scratch = os.path.abspath(self.mktemp())
        os.makedirs(scratch)
        senders = os.path.join(scratch, "senders")
        with open(senders, "w") as f:
            f.write("joe: joe@example.com\n")
        smartHost = ScriptedSMTPFactory({}, extensions=(b"PIPELINING", b"8BITMIME"))
        listening = reactor.listenTCP(0, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = freePort()
        spool = os.path.join(scratch, "spool")
        relay = RelayProcess.spawn(
            self,
            ["--submission", f"tcp:{port}:interface=127.0.0.1", "--users", files.users, "--certificate", files.certificate,
             "--sender-login-map", senders, "--spool", spool, "--hostname", "relay.test",
             "--smarthost", f"127.0.0.1:{listening.getHost().port}", "--smarthost-tls", "none"],
            scratch,
        )  # fmt: skip
        yield relay.whenListening()

        def client():
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=20) as s:
                s.starttls(context=files.clientContext())
                s.ehlo("client.example")
                s.login("joe", "secret")
                refused = s.mail("ceo@bank.example")
                s.rset()
                s.sendmail("joe@example.com", ["far@elsewhere.example"], b"From: joe@example.com\r\nSubject: plain\r\n\r\nhello\r\n")
                return refused

        refused = yield deferToThread(client)
        self.assertEqual(refused, (553, b"5.7.1 Sender address not owned by user joe"))
        self.assertEqual(len(relay.logLines("not owned by user joe")), 1, relay.text())
        yield waitUntil(lambda: smartHost.messages, 30, relay.text)
        [message] = smartHost.messages
        header = message.partition(b"\r\n\r\n")[0]
        self.assertRegex(header, rb"\r\nDate: [A-Z][a-z]{2}, ")
        self.assertRegex(header, rb"\r\nMessage-ID: <[0-9a-f]+@relay\.test>")
        self.assertRegex(header, rb" with ESMTPSA[;\r]")
        yield waitUntil(lambda: spoolListing(spool)["queue"] == [], 20, "the queue to empty")
        self.assertEqual(relay.logLines("Traceback"), [])
