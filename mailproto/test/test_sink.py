# -*- test-case-name: mailproto.test.test_sink -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for C{mailproto sink} (L{mailproto._commandline._sink}) and the C{mailproto}
command (L{mailproto._commandline._cli}).

  - The delivery and each output driven in memory: a server protocol on a
    L{StringTransport} reads a whole client conversation at once.
  - The command line: option parsing, usage errors, and the run of the
    command on a L{MemoryReactor}.
  - End to end, with Python's smtplib in a thread: the sink's own listening
    code on the real reactor (TCP, a UNIX socket with LMTP, implicit TLS),
    and the real command run as a subprocess.
"""

from __future__ import annotations

import io
import mailbox
import os
import re
import signal
import shutil
import smtplib
import ssl
import sys
import tempfile

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import CannotListenError, ConnectionDone, ProcessDone
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.threads import deferToThread
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import mailproto
from mailproto._commandline import _sink
from mailproto._commandline._cli import MailprotoOptions, SinkOptions, loadTLS, main, runCommand
from mailproto._address import User
from mailproto._server import ESMTPFactory, LMTPFactory
from mailproto._commandline._sink import (
    Envelope,
    ListenError,
    MaildirStore,
    MboxStore,
    MessagePrinter,
    ReceivedMessage,
    Sink,
    SinkServer,
    SinkTransaction,
    SummaryPrinter,
    describePort,
    makeSinkFactory,
)
from mailproto.interfaces import IMessageDelivery, IMessageDeliveryFactory, IMessageStream
from mailproto.wire import parseMailFrom, parseRcptTo, stuff
from mailproto.test._peers import missing

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None

# The directory that holds the mailproto package being tested (a checkout
# or site-packages), for the subprocesses.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))

# A time for the messages of the in-memory tests.
NOW = 1700000000.0

MESSAGE = (
    b"From: Sender <sender@example.com>\r\n"
    b"To: rcpt@example.com\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from\r\n"
    b" the sink\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".A line that starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"From the middle of the body\r\n"
    + "Grüße, ☃ – 8-bit UTF-8 text\r\n".encode("utf-8")
    + b"".join(b"line %05d of a long-ish body, with some text to make it longer\r\n" % i for i in range(3000))
    + b". the last line starts with a dot\r\n"
)
"""A message with every hard case of the DATA transparency layer, 8-bit
text, a folded and encoded Subject, and some length (about 200 kB)."""


def _asText(message: bytes) -> str:
    """
    @return: a message as the printer shows it.
    """
    return message.replace(b"\r\n", b"\n").decode("utf-8", "replace")


class _Recorder:
    """
    A printer that keeps what it is shown, content read at once.
    """

    needsContent = True
    needsSubject = True

    def __init__(self):
        self.shown = []

    def show(self, message):
        content = None if message.content is None else message.content.read()
        self.shown.append((message, content))


def _conversation(
    message=MESSAGE,
    sender=b"<sender@example.com> BODY=8BITMIME",
    recipients=(b"<a@example.com>",),
    hello=b"EHLO client.example",
    quit=True,
):
    """
    @return: what a client sends, pipelined, to send C{message}.
    """
    commands = [hello, b"MAIL FROM:" + sender, *(b"RCPT TO:" + r for r in recipients), b"DATA"]
    data = b"".join(c + b"\r\n" for c in commands) + stuff(message)
    return data + (b"QUIT\r\n" if quit else b"")


def _converse(factory, *parts, lose=True):
    """
    Connect a server from C{factory} to a L{StringTransport} and feed it
    C{parts}, one C{dataReceived} each.

    @return: the server's replies, as a list of lines.
    """
    peer = IPv4Address("TCP", "192.0.2.7", 54321)
    server = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "192.0.2.1", 25))
    server.makeConnection(transport)
    for part in parts:
        if callable(part):
            part()
        else:
            server.dataReceived(part)
    if lose:
        server.connectionLost(Failure(ConnectionDone()))
    return transport.value().split(b"\r\n")[:-1]


def _factory(sink, **kw):
    """
    @return: a server factory for C{sink}, named C{sink.example}, its
        timeouts on a clock that never moves.
    """
    kw.setdefault("hostname", "sink.example")
    return makeSinkFactory(sink, clock=Clock(), **kw)


class DeliveryTests(SynchronousTestCase):
    """
    The sink's delivery: one handling per message, whatever the number of
    recipients; no trace header; transactions kept apart.
    """

    def setUp(self):
        self.printer = _Recorder()
        self.sink = Sink(printer=self.printer, now=lambda: NOW)

    def test_interfaces(self):
        """
        The sink is an L{IMessageDeliveryFactory}, its transactions are
        L{IMessageDelivery} providers and their messages L{IMessageStream}
        providers.
        """
        self.assertTrue(verifyObject(IMessageDeliveryFactory, self.sink))
        transaction = self.sink.getMessageDelivery()
        self.assertIsInstance(transaction, SinkTransaction)
        self.assertTrue(verifyObject(IMessageDelivery, transaction))
        helo = (b"client.example", b"192.0.2.7")
        sender = parseMailFrom(b"FROM:<s@example.com>").address
        self.assertIs(transaction.validateFrom(helo, sender), sender)
        user = User(b"r@example.com", helo, None, sender)
        message = transaction.validateTo(user)()
        self.assertTrue(verifyObject(IMessageStream, message))
        self.assertIsNone(transaction.receivedHeader(helo, sender, [user]))

    def test_message(self):
        """
        A message for two recipients is handled once, exactly as sent
        (dot-unstuffed, no header added), with its whole envelope.
        """
        replies = _converse(
            _factory(self.sink),
            _conversation(
                sender=b"<sender@example.com> BODY=8BITMIME SIZE=300000 ENVID=abc",
                recipients=(b"<a@example.com> NOTIFY=SUCCESS,FAILURE", b"<b@example.com>"),
            ),
        )
        self.assertEqual(
            [r[:3] for r in replies if r[3:4] == b" "],
            [b"220", b"250", b"250", b"250", b"250", b"354", b"250", b"221"],
            replies,
        )
        [(message, content)] = self.printer.shown
        self.assertEqual(content, MESSAGE)
        self.assertEqual(message.size, len(MESSAGE))
        self.assertEqual(message.number, 1)
        self.assertEqual(message.subject, "Grüße from the sink")
        envelope = message.envelope
        self.assertEqual((envelope.helo, envelope.client), (b"client.example", b"192.0.2.7"))
        self.assertEqual(bytes(envelope.sender), b"sender@example.com")
        self.assertEqual([bytes(user.dest) for user in envelope.recipients], [b"a@example.com", b"b@example.com"])
        self.assertEqual(envelope.mailCommand(), "MAIL FROM:<sender@example.com> SIZE=300000 BODY=8BITMIME ENVID=abc")
        self.assertEqual(
            envelope.rcptCommands(), ["RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE", "RCPT TO:<b@example.com>"]
        )
        self.assertEqual(envelope.received, NOW)

    def test_transactions(self):
        """
        Each transaction of a connection is its own message, with its own
        envelope; a transaction reset before DATA leaves nothing.
        """
        _converse(
            _factory(self.sink),
            b"EHLO client.example\r\nMAIL FROM:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nRSET\r\n",
            _conversation(b"Subject: one\r\n\r\n1\r\n", sender=b"<>", quit=False),
            _conversation(b"Subject: two\r\n\r\n2\r\n", recipients=(b"<c@example.com>", b"<d@example.com>")),
        )
        self.assertEqual(
            [
                (m.number, str(m.envelope.sender), [str(u.dest) for u in m.envelope.recipients], c)
                for m, c in self.printer.shown
            ],
            [
                (1, "", ["a@example.com"], b"Subject: one\r\n\r\n1\r\n"),
                (2, "sender@example.com", ["c@example.com", "d@example.com"], b"Subject: two\r\n\r\n2\r\n"),
            ],
        )
        self.assertEqual(self.sink.received, 2)

    def test_lmtp(self):
        """
        Over LMTP, each recipient gets its own reply after the data, and the
        message is still handled once.
        """
        replies = _converse(
            _factory(self.sink, lmtp=True),
            _conversation(hello=b"LHLO client.example", recipients=(b"<a@example.com>", b"<b@example.com>")),
        )
        self.assertEqual(replies[0], b"220 sink.example LMTP server ready")
        self.assertEqual(
            replies[-3:],
            [
                b"250 2.1.5 <a@example.com> Delivered",
                b"250 2.1.5 <b@example.com> Delivered",
                b"221 2.0.0 See you later",
            ],
        )
        [(message, content)] = self.printer.shown
        self.assertEqual(content, MESSAGE)
        self.assertEqual(len(message.envelope.recipients), 2)

    def test_chunking(self):
        """
        A message sent with BDAT (RFC 3030) in chunks that split lines is
        received as sent.
        """
        chunks = [MESSAGE[:1000], MESSAGE[1000:1001], MESSAGE[1001:]]
        data = b"EHLO client.example\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
        for i, chunk in enumerate(chunks):
            data += b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if i == len(chunks) - 1 else b"") + chunk
        replies = _converse(_factory(self.sink), data)
        self.assertEqual(replies[-1][:3], b"250")
        [(message, content)] = self.printer.shown
        self.assertEqual(content, MESSAGE)

    def test_abandoned(self):
        """
        A message whose client goes away before the end of data is thrown
        away: not printed, not stored, nothing left in the Maildir's tmp/.
        """
        path = self.mktemp()
        self.sink.store = MaildirStore(path)
        data = _conversation(quit=False)
        _converse(_factory(self.sink), data[: len(data) // 2])
        self.assertEqual(self.printer.shown, [])
        self.assertEqual(self.sink.received, 0)
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(os.listdir(os.path.join(path, sub)), [])

    def test_tooBig(self):
        """
        A message over C{maxMessageSize} is refused at its end, and nothing
        of it is kept.
        """
        path = self.mktemp()
        self.sink.store = MaildirStore(path)
        replies = _converse(_factory(self.sink, maxMessageSize=1000), _conversation())
        self.assertIn(b"552 5.3.4 Message size exceeds fixed maximum message size", replies)
        self.assertEqual(self.printer.shown, [])
        self.assertEqual(os.listdir(os.path.join(path, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(path, "new")), [])

    def test_maxMessageSizeAdvertised(self):
        """
        The size limit given to L{makeSinkFactory} is the server's, and
        EHLO says it.
        """
        replies = _converse(_factory(self.sink, maxMessageSize=12345), b"EHLO client.example\r\n")
        self.assertIn(b"250-SIZE 12345", replies)

    def test_factories(self):
        """
        L{makeSinkFactory} makes an ESMTP factory, or an LMTP one, with the
        sink as delivery factory and the given name and TLS context.
        """
        context = object()
        factory = makeSinkFactory(self.sink, hostname="mx.example", contextFactory=context)
        self.assertIs(type(factory), ESMTPFactory)
        self.assertIs(factory.deliveryFactory, self.sink)
        self.assertEqual(factory.domain, b"mx.example")
        self.assertIs(factory.contextFactory, context)
        self.assertIs(type(makeSinkFactory(self.sink, lmtp=True)), LMTPFactory)


class MessagePrinterTests(SynchronousTestCase):
    """
    The default output: the envelope, the message as text, a closing line.
    """

    def show(self, content, **kw):
        out = io.StringIO()
        envelope = Envelope(
            b"client.example",
            b"192.0.2.7",
            parseMailFrom(b"FROM:<s@example.com> BODY=8BITMIME").address,
            parseMailFrom(b"FROM:<s@example.com> BODY=8BITMIME"),
            [],
            NOW,
        )
        for rcpt in (b"TO:<a@example.com> NOTIFY=NEVER", b"TO:<b@example.com>"):
            user = User(b"x@example.com", (b"client.example", b"192.0.2.7"), None, envelope.sender)
            user.rcpt = parseRcptTo(rcpt)
            user.dest = user.rcpt.address
            envelope.recipients.append(user)
        MessagePrinter(out).show(ReceivedMessage(7, envelope, len(content), io.BytesIO(content), **kw))
        return out.getvalue()

    def test_format(self):
        """
        A line about the client, one per envelope command, the message with
        plain newlines, and a line with its number and size.
        """
        self.assertEqual(
            self.show(b"Subject: hi\r\n\r\nbody\r\n.\r\n"),
            f"---------- message 7 from client.example [192.0.2.7] at {_sink._localTime(NOW)}\n"
            "---------- MAIL FROM:<s@example.com> BODY=8BITMIME\n"
            "---------- RCPT TO:<a@example.com> NOTIFY=NEVER\n"
            "---------- RCPT TO:<b@example.com>\n"
            "Subject: hi\n"
            "\n"
            "body\n"
            ".\n"
            "---------- end of message 7, 24 octets\n",
        )

    def test_stored(self):
        """
        The closing line says where the message was stored, or why it was
        not.
        """
        self.assertTrue(self.show(b"x\r\n", location="/m/new/1").endswith(", 3 octets, stored in /m/new/1\n"))
        self.assertTrue(self.show(b"x\r\n", error="disk full").endswith(", 3 octets, NOT STORED: disk full\n"))

    def test_text(self):
        """
        UTF-8 is shown as text, other octets as U+FFFD; a message without a
        final line end still gets its closing line on a line of its own.
        """
        output = self.show("Grüße ☃\r\n".encode("utf-8") + b"bad \xff\xfe end\r\nno newline")
        self.assertIn("\nGrüße ☃\nbad \ufffd\ufffd end\nno newline\n---------- end of message 7,", output)

    def test_readSize(self):
        """
        Read in pieces that cut CRLF and UTF-8 sequences in two, the text is
        the same.
        """
        content = MESSAGE[:3000] + b"\xff\r\r\n"
        whole = self.show(content)
        for size in (1, 2, 3, 7):
            self.patch(_sink, "_READ_SIZE", size)
            self.assertEqual(self.show(content), whole)
        self.assertIn(_asText(MESSAGE[:3000]) + "\ufffd\r\n", whole)


class SummaryPrinterTests(SynchronousTestCase):
    """
    C{--summary}: one line per message.
    """

    def setUp(self):
        self.out = io.StringIO()
        self.sink = Sink(printer=SummaryPrinter(self.out), now=lambda: NOW)

    def test_line(self):
        """
        The line has the time, the client, the sender, the recipients, the
        size and the decoded Subject.
        """
        _converse(_factory(self.sink), _conversation(recipients=(b"<a@example.com>", b"<b@example.com>")))
        self.assertEqual(
            self.out.getvalue(),
            f"{_sink._localTime(NOW)} client.example [192.0.2.7] from=<sender@example.com>"
            f" to=<a@example.com>,<b@example.com> size={len(MESSAGE)} subject=Grüße from the sink\n",
        )

    def test_noSubject(self):
        """
        Without a Subject in the header section, the line has none; a
        Subject line in the body does not count.
        """
        _converse(_factory(self.sink), _conversation(b"From: x@example.com\r\n\r\nSubject: not this\r\n", sender=b"<>"))
        line = self.out.getvalue()
        self.assertNotIn("subject=", line)
        self.assertIn(" from=<> to=<a@example.com> size=", line)

    def test_oneLine(self):
        """
        A Subject whose encoded words hide control characters still gives
        one line.
        """
        _converse(_factory(self.sink), _conversation(b"Subject: =?utf-8?q?a=0D=0Ab=09c?=\r\n\r\nx\r\n"))
        self.assertEqual(self.out.getvalue().count("\n"), 1)
        self.assertTrue(self.out.getvalue().endswith(" subject=a  b c\n"))

    def test_noContentKept(self):
        """
        Printing summaries without storing keeps no copy of the message.
        """
        self.assertIsNone(self.sink.openWriter())


class MaildirTests(SynchronousTestCase):
    """
    C{--maildir}: each message in its own file, as received.
    """

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.out = io.StringIO()
        self.sink = Sink(MaildirStore(self.path), MessagePrinter(self.out), now=lambda: NOW)

    def test_made(self):
        """
        The Maildir and its tmp/, new/ and cur/ are made if missing, and an
        existing one is used as it is.
        """
        for sub in ("tmp", "new", "cur"):
            self.assertTrue(os.path.isdir(os.path.join(self.path, sub)))
        MaildirStore(self.path)

    def test_stored(self):
        """
        Each message is a file in new/ holding exactly the octets received,
        CRLF line ends and all; tmp/ is left empty.
        """
        other = b"Subject: second\r\n\r\n.\r\n"
        _converse(_factory(self.sink), _conversation(quit=False), _conversation(other))
        names = sorted(os.listdir(os.path.join(self.path, "new")), key=lambda n: int(n.split("Q")[1].split(".")[0]))
        self.assertEqual(len(names), 2)
        contents = []
        for name in names:
            with open(os.path.join(self.path, "new", name), "rb") as f:
                contents.append(f.read())
        self.assertEqual(contents, [MESSAGE, other])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(self.path, "cur")), [])
        self.assertIn(f"stored in {os.path.join(self.path, 'new', names[0])}\n", self.out.getvalue())
        self.assertIn(_asText(MESSAGE), self.out.getvalue())

    def test_readable(self):
        """
        The standard library's L{mailbox.Maildir} reads the messages.
        """
        _converse(_factory(self.sink), _conversation())
        [message] = mailbox.Maildir(self.path, create=False)
        self.assertEqual(message["To"], "rcpt@example.com")

    def test_unusable(self):
        """
        A path that is a file cannot be a Maildir: L{OSError}.
        """
        path = self.mktemp()
        with open(path, "w"):
            pass
        self.assertRaises(OSError, MaildirStore, path)

    def test_storeFails(self):
        """
        If the message cannot be put into new/, the client is told to try
        later (C{451 4.3.0}), the printed message says so, and its file is
        removed from tmp/.
        """
        data = _conversation()
        half = len(data) // 2
        replies = _converse(
            _factory(self.sink),
            data[:half],
            lambda: shutil.rmtree(os.path.join(self.path, "new")),
            data[half:],
        )
        self.assertIn(b"451 4.3.0 Cannot store the message", replies)
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        self.assertIn(", NOT STORED: ", self.out.getvalue())

    def test_cannotBegin(self):
        """
        If no file can be made in tmp/, the DATA command is refused with
        C{451 4.3.0}.
        """
        shutil.rmtree(os.path.join(self.path, "tmp"))
        replies = _converse(_factory(self.sink), _conversation())
        self.assertTrue(any(r.startswith(b"451 4.3.0 Cannot store the message") for r in replies), replies)
        self.assertEqual(self.sink.received, 0)


class MboxTests(SynchronousTestCase):
    """
    C{--mbox}: the messages appended to an mbox file.
    """

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.store = MboxStore(self.path)
        self.addCleanup(self.store.close)
        self.out = io.StringIO()
        self.sink = Sink(self.store, SummaryPrinter(self.out), now=lambda: NOW)

    def messages(self):
        box = mailbox.mbox(self.path, create=False)
        try:
            return [box.get_bytes(key) for key in box.keys()]
        finally:
            box.close()

    def test_made(self):
        """
        The mbox file is made if missing, its owner's only whatever the
        umask (as the Maildir's files are).
        """
        self.assertTrue(os.path.isfile(self.path))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

    def test_appended(self):
        """
        Each message is appended, in the mbox format: LF line ends, body
        lines beginning with "From " quoted.
        """
        other = b"Subject: second\r\n\r\nFrom here\r\n"
        _converse(_factory(self.sink), _conversation(quit=False), _conversation(other))
        self.assertEqual(
            self.messages(),
            [
                MESSAGE.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From "),
                b"Subject: second\n\n>From here\n",
            ],
        )
        self.assertIn(f" stored={self.path} ", self.out.getvalue())

    def test_spooledToDisk(self):
        """
        A message larger than the spool's memory limit goes the same way.
        """
        self.patch(_sink, "SPOOL_MEMORY_LIMIT", 1024)
        _converse(_factory(self.sink), _conversation())
        self.assertEqual(self.messages(), [MESSAGE.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ")])

    def test_replaced(self):
        """
        If the mbox file is removed, the next message makes a new one.
        """
        _converse(_factory(self.sink), _conversation(b"Subject: one\r\n\r\n1\r\n"))
        os.unlink(self.path)
        _converse(_factory(self.sink), _conversation(b"Subject: two\r\n\r\n2\r\n"))
        self.assertEqual(self.messages(), [b"Subject: two\n\n2\n"])

    def test_unusable(self):
        """
        A directory cannot be an mbox: L{OSError}.
        """
        self.assertRaises(OSError, MboxStore, os.path.dirname(self.path))


class DescribePortTests(SynchronousTestCase):
    """
    L{describePort} says where a port listens.
    """

    def test_addresses(self):
        """
        An IP address and port, a UNIX socket's path; an C{ssl:} endpoint
        says it is implicit TLS.
        """
        self.assertEqual(describePort("tcp:0", IPv4Address("TCP", "127.0.0.1", 4321)), "127.0.0.1 port 4321")
        self.assertEqual(describePort("tcp6:25", IPv6Address("TCP", "::1", 25)), "::1 port 25")
        self.assertEqual(describePort("unix:/tmp/s", UNIXAddress(b"/tmp/s")), "UNIX socket /tmp/s")
        self.assertEqual(
            describePort("ssl:1465:privateKey=k", IPv4Address("TCP", "0.0.0.0", 1465)),
            "0.0.0.0 port 1465 with implicit TLS",
        )


def _parse(*argv):
    """
    @return: the parsed options of C{mailproto sink argv...}.
    """
    options = MailprotoOptions()
    options.parseOptions(["sink", *argv])
    return options.subOptions


class _TLSFiles:
    """
    A certificate and key made by trustme, in files.
    """

    def __init__(self, testCase):
        ca = trustme.CA()
        self.ca = ca
        certificate = ca.issue_cert("localhost", "127.0.0.1")
        directory = testCase.mktemp()
        os.makedirs(directory)
        self.certificate = os.path.abspath(os.path.join(directory, "cert.pem"))
        self.key = os.path.abspath(os.path.join(directory, "key.pem"))
        self.both = os.path.abspath(os.path.join(directory, "both.pem"))
        certificate.cert_chain_pems[0].write_to_path(self.certificate)
        certificate.private_key_pem.write_to_path(self.key)
        certificate.private_key_and_cert_chain_pem.write_to_path(self.both)
        other = trustme.CA().issue_cert("localhost")
        self.otherKey = os.path.abspath(os.path.join(directory, "other-key.pem"))
        other.private_key_pem.write_to_path(self.otherKey)


class OptionsTests(SynchronousTestCase):
    """
    The options of C{mailproto sink}.
    """

    def test_defaults(self):
        """
        By default the sink speaks ESMTP on 127.0.0.1 port 1025, prints
        whole messages and stores nothing.
        """
        options = _parse()
        self.assertIsInstance(options, SinkOptions)
        self.assertEqual(options["listen"], ["tcp:1025:interface=127.0.0.1"])
        for flag in ("lmtp", "summary", "quiet"):
            self.assertFalse(options[flag], flag)
        for name in ("maildir", "mbox", "hostname", "max-message-size", "contextFactory"):
            self.assertIsNone(options[name], name)

    def test_hostPort(self):
        """
        C{--host} and C{--port} make the TCP endpoint; an IPv6 address is
        quoted for the endpoint syntax.
        """
        self.assertEqual(_parse("--port", "2525")["listen"], ["tcp:2525:interface=127.0.0.1"])
        self.assertEqual(_parse("--host", "0.0.0.0", "-p", "0")["listen"], ["tcp:0:interface=0.0.0.0"])
        self.assertEqual(_parse("--host", "::1")["listen"], [r"tcp:1025:interface=\:\:1"])

    def test_listen(self):
        """
        C{--listen} may be given more than once.
        """
        options = _parse("--listen", "tcp:2525", "-l", "unix:/tmp/sink.sock", "--lmtp")
        self.assertEqual(options["listen"], ["tcp:2525", "unix:/tmp/sink.sock"])
        self.assertTrue(options["lmtp"])

    def test_outputs(self):
        """
        The output options are kept as given, numbers as numbers.
        """
        options = _parse("--maildir", "md", "--summary", "--max-message-size", "100", "--hostname", "mx.example")
        self.assertEqual(
            (options["maildir"], options["summary"], options["max-message-size"], options["hostname"]),
            ("md", True, 100, "mx.example"),
        )
        options = _parse("--mbox", "mail.mbox", "-q")
        self.assertEqual((options["mbox"], options["quiet"]), ("mail.mbox", True))

    def assertUsageError(self, argv, message):
        error = self.assertRaises(usage.UsageError, _parse, *argv)
        self.assertIn(message, str(error))

    def test_errors(self):
        """
        Contradictory or bad options are usage errors.
        """
        self.assertUsageError(["--maildir", "a", "--mbox", "b"], "--maildir and --mbox cannot be used together")
        self.assertUsageError(["--listen", "tcp:25", "--port", "26"], "either --listen or --host/--port")
        self.assertUsageError(["--listen", "nosuch:25"], "bad --listen endpoint 'nosuch:25': Unknown endpoint type")
        self.assertUsageError(["--listen", "tcp:http"], "bad --listen endpoint 'tcp:http'")
        self.assertUsageError(["--listen", "ssl:1465:privateKey=/nonexistent.pem"], "No such file or directory")
        self.assertUsageError(["--port", "65536"], "not a port number")
        self.assertUsageError(["--max-message-size", "-1"], "not a number of octets")
        self.assertUsageError(["--hostname", "a b"], "not a host name")
        self.assertUsageError(["--tls-key", "key.pem"], "--tls-key needs --tls-certificate")
        self.assertUsageError(["--tls-certificate", "/nonexistent.pem"], "--tls-certificate: no such file: /nonexistent.pem")

    def test_tls(self):
        """
        A certificate and its key, in two files or in one, give a TLS
        context; a key that is not the certificate's is a usage error.
        """
        if trustme is None:
            missing("trustme is not installed")
        files = _TLSFiles(self)
        twoFiles = ["--tls-certificate", files.certificate, "--tls-key", files.key]
        for argv in (twoFiles, ["--tls-certificate", files.both]):
            options = _parse(*argv)
            self.assertIsNotNone(options["contextFactory"].getContext())
        self.assertUsageError(["--tls-certificate", files.certificate], "--tls-certificate: the certificate file has no private key")
        self.assertUsageError(["--tls-certificate", files.certificate, "--tls-key", files.otherKey], "for TLS")
        self.assertRaises(usage.UsageError, loadTLS, files.key)


class _ListenFailingReactor(MemoryReactor):
    """
    A reactor on which every TCP port is taken.
    """

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class CommandTests(SynchronousTestCase):
    """
    The C{mailproto} command: usage errors, version, help, and the run of
    C{mailproto sink} on a L{MemoryReactor}.
    """

    def runMailproto(self, *argv, reactor=None):
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        return runCommand(list(argv), reactor=reactor or MemoryReactor(), stdout=self.stdout, stderr=self.stderr)

    def test_usageError(self):
        """
        A usage error is one line on stderr, naming the command, and exit
        status 2.
        """
        self.assertEqual(self.runMailproto("sink", "--maildir", "a", "--mbox", "b"), 2)
        self.assertEqual(
            self.stderr.getvalue(),
            "mailproto sink: error: --maildir and --mbox cannot be used together; choose one"
            " (see 'mailproto sink --help')\n",
        )
        self.assertEqual(self.runMailproto("sink", "--listen", "bogus:1"), 2)
        self.assertEqual(self.stderr.getvalue().count("\n"), 1)
        self.assertEqual(self.runMailproto(), 2)
        self.assertEqual(
            self.stderr.getvalue(),
            "mailproto: error: no command given (commands: sink, send, adduser, queue, sendmail, dkim-keygen) (see 'mailproto --help')\n",
        )
        self.assertEqual(self.runMailproto("nosuch"), 2)
        self.assertIn("Unknown command: nosuch", self.stderr.getvalue())

    def test_mainExits(self):
        """
        L{main} exits with the status, without a traceback.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, main, ["sink", "--port", "x"])
        self.assertEqual(error.code, 2)
        self.assertTrue(stderr.getvalue().startswith("mailproto sink: error: "), stderr.getvalue())
        self.assertNotIn("Traceback", stderr.getvalue())

    def test_version(self):
        """
        C{--version} says mailproto's version.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        for argv in (["--version"], ["sink", "--version"]):
            error = self.assertRaises(SystemExit, main, argv)
            self.assertEqual(error.code, 0)
            self.assertTrue(stdout.getvalue().startswith(f"mailproto {mailproto.__version__} (Twisted "))

    def test_help(self):
        """
        C{--help} lists the commands; C{sink --help} the sink's options.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.assertEqual(self.assertRaises(SystemExit, main, ["--help"]).code, 0)
        self.assertIn("Usage: mailproto", stdout.getvalue())
        self.assertRegex(stdout.getvalue(), r"\n +sink +Run a debugging SMTP")
        stdout.truncate(0)
        self.assertEqual(self.assertRaises(SystemExit, main, ["sink", "--help"]).code, 0)
        self.assertIn("Usage: mailproto sink [options]", stdout.getvalue())
        self.assertIn("enables STARTTLS when the server offers it", " ".join(stdout.getvalue().split()))

    def test_run(self):
        """
        The sink listens on each endpoint with an ESMTP factory for the
        sink, and says where it listens and where it stores on stderr.
        """
        memory = MemoryReactor()
        maildir = os.path.abspath(self.mktemp())
        status = self.runMailproto(
            "sink", "--listen", "tcp:2525", "--listen", "tcp:2526", "--maildir", maildir, reactor=memory
        )
        self.assertEqual(status, 0)
        self.assertFalse(memory.running)
        self.assertEqual(
            [(port, type(factory)) for port, factory, _, _ in memory.tcpServers],
            [(2525, ESMTPFactory), (2526, ESMTPFactory)],
        )
        self.assertIsInstance(memory.tcpServers[0][1].deliveryFactory, Sink)
        self.assertEqual(
            self.stderr.getvalue(),
            "mailproto sink: listening on 0.0.0.0 port 2525 for ESMTP\n"
            "mailproto sink: listening on 0.0.0.0 port 2526 for ESMTP\n"
            f"mailproto sink: storing messages in Maildir {maildir}\n",
        )
        self.assertTrue(os.path.isdir(os.path.join(maildir, "new")))
        self.assertEqual(self.stdout.getvalue(), "")

    def test_runLMTP(self):
        """
        With C{--lmtp}, the factory makes LMTP servers.
        """
        memory = MemoryReactor()
        status = self.runMailproto("sink", "--lmtp", "--listen", "unix:/nonexistent/lmtp.sock", reactor=memory)
        self.assertEqual(status, 0)
        [(path, factory, _, _, _)] = memory.unixServers
        self.assertEqual((path, type(factory)), ("/nonexistent/lmtp.sock", LMTPFactory))
        self.assertIn("for LMTP\nmailproto sink: not storing messages", self.stderr.getvalue())

    def test_runTLS(self):
        """
        A TLS certificate goes to the factory, with a note on stderr while
        the server cannot do STARTTLS.
        """
        if trustme is None:
            missing("trustme is not installed")
        files = _TLSFiles(self)
        memory = MemoryReactor()
        self.assertEqual(self.runMailproto("sink", "--tls-certificate", files.both, reactor=memory), 0)
        self.assertIsNotNone(memory.tcpServers[0][1].contextFactory)
        note = "STARTTLS is not available yet in this version"
        from mailproto._server import ESMTP

        if hasattr(ESMTP, "ext_STARTTLS"):
            self.assertNotIn(note, self.stderr.getvalue())
        else:
            self.assertIn(note, self.stderr.getvalue())

    def test_cannotListen(self):
        """
        If an endpoint cannot listen, the command says why in one line and
        exits with status 1.
        """
        status = self.runMailproto("sink", "--port", "25", reactor=_ListenFailingReactor())
        self.assertEqual(status, 1)
        self.assertEqual(self.stderr.getvalue().count("\n"), 1)
        self.assertTrue(
            self.stderr.getvalue().startswith("mailproto sink: error: cannot listen on tcp:25:interface=127.0.0.1: "),
            self.stderr.getvalue(),
        )

    def test_unusableMaildir(self):
        """
        A Maildir that cannot be made is said in one line, exit status 1,
        and the reactor is not run.
        """
        path = self.mktemp()
        with open(path, "w"):
            pass
        memory = MemoryReactor()
        self.assertEqual(self.runMailproto("sink", "--maildir", path, reactor=memory), 1)
        self.assertEqual((memory.whenRunningHooks, memory.tcpServers), ([], []))
        self.assertEqual(self.stderr.getvalue().count("\n"), 1)
        self.assertTrue(self.stderr.getvalue().startswith(f"mailproto sink: error: cannot use Maildir {path}: "))

    def test_unusableMbox(self):
        """
        So is an mbox that cannot be opened.
        """
        self.assertEqual(self.runMailproto("sink", "--mbox", "/nonexistent/dir/mbox"), 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "mailproto sink: error: cannot use mbox /nonexistent/dir/mbox: No such file or directory:"
            " /nonexistent/dir/mbox\n",
        )


def _trackConnections(factory):
    """
    Make C{factory}'s protocols fire a L{Deferred} when their connection
    is lost.

    @return: the list the L{Deferred}s are added to.
    """
    closed = []
    build = factory.buildProtocol

    def buildProtocol(addr):
        protocol = build(addr)
        lost = defer.Deferred()
        closed.append(lost)
        connectionLost = protocol.connectionLost

        def tracked(reason):
            try:
                connectionLost(reason)
            finally:
                lost.callback(None)

        protocol.connectionLost = tracked
        return protocol

    factory.buildProtocol = buildProtocol
    return closed


def _sendWithSmtplib(client, sender, recipients, message, **kw):
    """
    Send a message with an smtplib client, in a thread.

    @param client: makes the connected smtplib client.
    @return: a L{Deferred} firing with C{sendmail}'s result.
    """

    def send():
        with client() as connection:
            return connection.sendmail(sender, recipients, message, **kw)

    return deferToThread(send)


class EndToEndTests(TestCase):
    """
    smtplib sends to the sink listening with its own code on the real
    reactor.
    """

    timeout = 30

    @defer.inlineCallbacks
    def serve(self, sink, descriptions, **kw):
        factory = makeSinkFactory(sink, hostname="sink.example", **kw)
        self.closed = _trackConnections(factory)
        server = SinkServer(reactor, factory, descriptions)
        ports = yield server.start()
        self.addCleanup(server.stop)
        return ports

    @defer.inlineCallbacks
    def test_smtpToMaildir(self):
        """
        A message smtplib sends (dot-stuffing it) is in the Maildir exactly
        as it was given to smtplib.
        """
        path = os.path.abspath(self.mktemp())
        out = io.StringIO()
        sink = Sink(MaildirStore(path), MessagePrinter(out))
        [(description, port)] = yield self.serve(sink, ["tcp:0:interface=127.0.0.1"])
        number = port.getHost().port
        refused = yield _sendWithSmtplib(
            lambda: smtplib.SMTP("127.0.0.1", number, timeout=10),
            "sender@example.com",
            ["a@example.com", "b@example.com"],
            MESSAGE,
            mail_options=["BODY=8BITMIME"],
        )
        yield defer.gatherResults(self.closed)
        self.assertEqual(refused, {})
        [name] = os.listdir(os.path.join(path, "new"))
        with open(os.path.join(path, "new", name), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        self.assertIn("---------- RCPT TO:<b@example.com>\n" + _asText(MESSAGE), out.getvalue())
        self.assertIn(f"---------- MAIL FROM:<sender@example.com> SIZE={len(MESSAGE)} BODY=8BITMIME\n", out.getvalue())

    @defer.inlineCallbacks
    def test_lmtpOnUnixSocket(self):
        """
        smtplib's LMTP client, on a UNIX socket, delivers to an mbox.  (One
        recipient: smtplib reads a single reply after the data, so it cannot
        take LMTP's one reply per recipient.)
        """
        directory = tempfile.mkdtemp(prefix="sink")
        self.addCleanup(shutil.rmtree, directory)
        socketPath = os.path.join(directory, "lmtp.sock")
        mboxPath = os.path.join(directory, "mbox")
        out = io.StringIO()
        sink = Sink(MboxStore(mboxPath), SummaryPrinter(out))
        self.addCleanup(sink.close)
        [(description, port)] = yield self.serve(sink, ["unix:" + socketPath], lmtp=True)
        self.assertEqual(describePort(description, port.getHost()), f"UNIX socket {socketPath}")
        refused = yield _sendWithSmtplib(
            lambda: smtplib.LMTP(socketPath, timeout=10), "s@example.com", ["a@example.com"], MESSAGE
        )
        yield defer.gatherResults(self.closed)
        self.assertEqual(refused, {})
        box = mailbox.mbox(mboxPath, create=False)
        self.addCleanup(box.close)
        [stored] = [box.get_bytes(key) for key in box.keys()]
        self.assertEqual(stored, MESSAGE.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From "))
        self.assertIn(" [unix] from=<s@example.com> to=<a@example.com> size=", out.getvalue())

    @defer.inlineCallbacks
    def test_implicitTLS(self):
        """
        On an C{ssl:} endpoint, smtplib's C{SMTP_SSL} client talks to the
        sink over TLS.
        """
        if trustme is None:
            missing("trustme is not installed")
        files = _TLSFiles(self)
        path = os.path.abspath(self.mktemp())
        sink = Sink(MaildirStore(path))
        description = "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}".format(
            files.key.replace(":", r"\:"), files.certificate.replace(":", r"\:")
        )
        [(description, port)] = yield self.serve(sink, [description])
        self.assertTrue(describePort(description, port.getHost()).endswith(" with implicit TLS"))
        context = ssl.create_default_context()
        files.ca.configure_trust(context)
        number = port.getHost().port
        yield _sendWithSmtplib(
            lambda: smtplib.SMTP_SSL("localhost", number, context=context, timeout=10),
            "s@example.com",
            ["a@example.com"],
            MESSAGE,
        )
        yield defer.gatherResults(self.closed)
        [name] = os.listdir(os.path.join(path, "new"))
        with open(os.path.join(path, "new", name), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)

    @defer.inlineCallbacks
    def test_listenFails(self):
        """
        If one endpoint cannot listen, L{SinkServer.start} fails with a
        L{ListenError} naming it, and the other ports are closed.
        """
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        taken = f"tcp:{busy.getHost().port}:interface=127.0.0.1"
        server = SinkServer(reactor, makeSinkFactory(Sink()), ["tcp:0:interface=127.0.0.1", taken])
        error = yield self.assertFailure(server.start(), ListenError)
        self.assertEqual(error.description, taken)
        self.assertIsInstance(error.error, CannotListenError)
        self.assertTrue(str(error).startswith(f"cannot listen on {taken}: "))
        self.assertEqual(server.ports, [])


    @defer.inlineCallbacks
    def test_burstWaits(self):
        """
        The sink listens with a backlog of 1024 (Twisted's default of 50
        would drop most of a burst): 200 clients connecting at once all
        wait to be accepted; an endpoint's own C{backlog=} is kept.
        """
        from mailproto.test.test_connlimits import acceptedAtOnce

        server = SinkServer(reactor, makeSinkFactory(Sink()), ["tcp:0:interface=127.0.0.1"])
        [(description, port)] = yield server.start()
        self.addCleanup(server.stop)
        self.assertEqual(description, "tcp:0:interface=127.0.0.1")
        self.assertEqual(acceptedAtOnce(self, port, 200), 200)
        small = SinkServer(reactor, makeSinkFactory(Sink()), ["tcp:0:interface=127.0.0.1:backlog=20"])
        [(description, port)] = yield small.start()
        self.addCleanup(small.stop)
        self.assertLess(acceptedAtOnce(self, port, 200), 150)


class _SinkProcess(ProcessProtocol):
    """
    Watch a C{mailproto sink} process: C{started} fires with its port once
    it says where it listens, C{ended} with how it ended.
    """

    def __init__(self):
        self.started = defer.Deferred()
        self.ended = defer.Deferred()
        self.running = True
        self.out = b""
        self.err = b""

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data
        match = re.search(rb"listening on 127\.0\.0\.1 port ([0-9]+) for ESMTP\n", self.err)
        if match is not None and self.started is not None:
            started, self.started = self.started, None
            started.callback(int(match.group(1)))

    def processEnded(self, reason):
        self.running = False
        if self.started is not None:
            started, self.started = self.started, None
            started.errback(AssertionError(f"the sink ended before listening: {self.err!r}"))
        self.ended.callback(reason.value)


class CommandEndToEndTests(TestCase):
    """
    The real command, C{python -m mailproto sink}, in a subprocess.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_sink(self):
        """
        The sink says on stderr the port it listens on, receives smtplib's
        message into the Maildir and prints it on stdout; SIGTERM stops it
        cleanly.
        """
        maildir = os.path.abspath(self.mktemp())
        pythonPath = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        process = _SinkProcess()
        argv = [sys.executable, "-m", "mailproto", "sink"]
        argv += ["--listen", "tcp:0:interface=127.0.0.1", "--maildir", maildir]
        transport = reactor.spawnProcess(process, sys.executable, argv, env=dict(os.environ, PYTHONPATH=pythonPath))

        def kill():
            if process.running:
                transport.signalProcess("KILL")
                return process.ended.addErrback(lambda ignored: None)

        self.addCleanup(kill)
        port = yield process.started
        refused = yield _sendWithSmtplib(
            lambda: smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10),
            "sender@example.com",
            ["rcpt@example.com"],
            MESSAGE,
        )
        self.assertEqual(refused, {})
        [name] = os.listdir(os.path.join(maildir, "new"))
        with open(os.path.join(maildir, "new", name), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        transport.signalProcess("TERM")
        reason = yield process.ended
        self.assertIsInstance(reason, ProcessDone, f"{reason}; stderr: {process.err!r}")
        err = process.err.decode("utf-8")
        self.assertEqual(
            err,
            f"mailproto sink: listening on 127.0.0.1 port {port} for ESMTP\n"
            f"mailproto sink: storing messages in Maildir {maildir}\n"
            "mailproto sink: stopped after 1 message(s)\n",
        )
        out = process.out.decode("utf-8")
        self.assertTrue(out.startswith("---------- message 1 from client.example [127.0.0.1] at "), out[:200])
        self.assertIn(_asText(MESSAGE), out)
        self.assertTrue(
            out.endswith(
                f"---------- end of message 1, {len(MESSAGE)} octets, stored in {os.path.join(maildir, 'new', name)}\n"
            )
        )

    @defer.inlineCallbacks
    def test_signalsWhileStopping(self):
        """
        More SIGTERMs and a SIGINT on the heels of the first (as
        C{timeout}, which signals a process and its group, or a second
        Ctrl-C would send) are ignored while the sink stops: it ends
        cleanly, with no traceback.
        """
        pythonPath = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        process = _SinkProcess()
        argv = [sys.executable, "-m", "mailproto", "sink", "--listen", "tcp:0:interface=127.0.0.1", "--quiet"]
        transport = reactor.spawnProcess(process, sys.executable, argv, env=dict(os.environ, PYTHONPATH=pythonPath))
        self.addCleanup(lambda: transport.signalProcess("KILL") if process.running else None)
        yield process.started
        pid = transport.pid
        for name in ("TERM", "TERM", "INT", "TERM"):
            os.kill(pid, getattr(signal, "SIG" + name))
        # And more, every millisecond until it has exited: one may come
        # after the reactor stopped, while Python exits.
        late = task.LoopingCall(lambda: transport.signalProcess("TERM") if process.running else None)
        late.start(0.001)
        self.addCleanup(lambda: late.running and late.stop())
        reason = yield process.ended
        late.stop()
        self.assertIsInstance(reason, ProcessDone, f"{reason}; stderr: {process.err!r}")
        err = process.err.decode("utf-8")
        self.assertNotIn("Traceback", err)
        self.assertTrue(err.endswith("mailproto sink: stopped after 0 message(s)\n"), err)

    @defer.inlineCallbacks
    def test_usageError(self):
        """
        A bad endpoint makes the command exit with status 2 and one line on
        stderr, no traceback.
        """
        process = _SinkProcess()
        pythonPath = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        argv = [sys.executable, "-m", "mailproto", "sink", "--listen", "tcp:nonsense"]
        reactor.spawnProcess(process, sys.executable, argv, env=dict(os.environ, PYTHONPATH=pythonPath))
        yield self.assertFailure(process.started, AssertionError)
        reason = yield process.ended
        self.assertEqual(reason.exitCode, 2)
        self.assertEqual(
            process.err,
            b"mailproto sink: error: bad --listen endpoint 'tcp:nonsense': invalid literal for int() with base 10:"
            b" 'nonsense' (see 'mailproto sink --help')\n",
        )

