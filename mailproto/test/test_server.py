# -*- test-case-name: mailproto.test.test_server -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The server protocols, command by command, state by state and limit by
limit, on an in-memory transport and a fake clock.
"""

from __future__ import annotations

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from mailproto._data import BareNewlinePolicy
from mailproto.interfaces import IMessageDelivery, IMessageDeliveryFactory, IMessageSMTP, IMessageStream
from mailproto.smtp import (
    ESMTP,
    SMTP,
    Address,
    ESMTPFactory,
    LMTPFactory,
    SMTPBadSender,
    SMTPFactory,
    SMTPServerError,
)
from mailproto.testing import MemoryDelivery, MemoryMessage

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
SERVER = IPv4Address("TCP", "192.0.2.1", 25)


class Session:
    """
    A server protocol on a L{StringTransport}, with a fake clock, and a
    way to talk to it.
    """

    def __init__(self, factory, clock=None, peer=CLIENT, transportClass=StringTransport) -> None:
        self.clock = clock or factory.clock or Clock()
        factory.clock = self.clock
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.transport = transportClass(hostAddress=SERVER, peerAddress=peer)
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> list[bytes]:
        """
        @return: the reply lines sent since last time.
        """
        lines = self.transport.value().split(b"\r\n")
        self.transport.clear()
        assert lines[-1] == b"", lines
        return lines[:-1]

    def send(self, data: bytes) -> list[bytes]:
        self.proto.dataReceived(data)
        return self.take()

    def codes(self, data: bytes) -> list[bytes]:
        """
        @return: the last line of each reply, as C{b"250 2.1.0"}: the code
            and the enhanced status code, if any.
        """
        return replyCodes(self.send(data))


def replyCodes(lines: list[bytes]) -> list[bytes]:
    """
    @return: the code (and enhanced status code, if any) of the last line
        of each reply in C{lines}.
    """
    return [b" ".join(line.split(b" ")[:2]) if line[4:5].isdigit() else line[:3] for line in lines if line[3:4] == b" "]


def bdat(chunk: bytes, last: bool = False) -> bytes:
    """
    @return: a BDAT command with its chunk.
    """
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def esmtpSession(delivery=None, factoryClass=ESMTPFactory, ehlo=b"EHLO client.example", **limits) -> Session:
    delivery = MemoryDelivery() if delivery is None else delivery
    session = Session(factoryClass(delivery=delivery, domain=b"mx.example", **limits))
    session.delivery = delivery
    if ehlo:
        session.send(ehlo + b"\r\n")
    return session


TRANSACTION = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"


class HostTests(SynchronousTestCase):
    """
    The server's name.
    """

    def test_rootDotDropped(self):
        """
        A name given with its root dot greets without it, and completes a
        bare C{postmaster} into an address that parses again.
        """
        session = esmtpSession(factoryClass=lambda **kw: ESMTPFactory(**dict(kw, domain=b"relay.test.")))
        self.assertEqual(session.proto.host, b"relay.test")
        codes = session.codes(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster>\r\n")
        self.assertEqual(codes, [b"250 2.1.0", b"250 2.1.5"])
        [(user, _)] = session.proto._to
        self.assertEqual(bytes(user.dest), b"postmaster@relay.test")
        self.assertEqual(Address(bytes(user.dest)).domain, b"relay.test")


class InterfaceTests(SynchronousTestCase):
    """
    The implementers provide their interfaces.
    """

    def test_memoryDelivery(self):
        verifyObject(IMessageDelivery, MemoryDelivery())
        verifyClass(IMessageStream, MemoryMessage)
        verifyClass(IMessageSMTP, MemoryMessage)

    def test_memoryMessage(self):
        verifyObject(IMessageStream, MemoryMessage(MemoryDelivery(), None))


class GreetingTests(SynchronousTestCase):
    """
    What a client sees first, and HELO/EHLO.
    """

    def test_smtpGreeting(self):
        session = Session(SMTPFactory(domain=b"mx.example"))
        self.assertEqual(session.greeting, [b"220 mx.example NO UCE NO UBE NO RELAY PROBES"])

    def test_esmtpGreeting(self):
        session = esmtpSession(ehlo=None)
        self.assertEqual(session.greeting, [b"220 mx.example NO UCE NO UBE NO RELAY PROBES ESMTP"])

    def test_ehloListsExtensions(self):
        """
        EHLO answers with the extensions, without enhanced status codes
        (RFC 2034 section 3).
        """
        session = esmtpSession(ehlo=None, maxMessageSize=1000)
        self.assertEqual(
            session.send(b"EHLO client.example\r\n"),
            [
                b"250-mx.example Hello 192.0.2.7, nice to meet you",
                b"250-PIPELINING",
                b"250-SIZE 1000",
                b"250-8BITMIME",
                b"250-SMTPUTF8",
                b"250-DSN",
                b"250-ENHANCEDSTATUSCODES",
                b"250 CHUNKING",
            ],
        )

    def test_ehloNeedsDomain(self):
        session = esmtpSession(ehlo=None)
        self.assertEqual(session.codes(b"EHLO\r\nEHLO  \r\nHELO\r\n"), [b"501"] * 3)

    def test_heloSession(self):
        """
        After HELO there are no extensions: no enhanced status codes, and
        MAIL parameters are refused.
        """
        session = esmtpSession(ehlo=b"HELO client.example")
        self.assertEqual(
            session.send(b"MAIL FROM:<a@example.org> SIZE=10\r\nMAIL FROM:<a@example.org>\r\n"),
            [b"555 Unsupported parameter SIZE", b"250 Sender address accepted"],
        )

    def test_plainSMTPHasNoEHLO(self):
        session = Session(SMTPFactory(domain=b"mx.example"))
        self.assertEqual(session.send(b"EHLO client.example\r\n"), [b"500 Command not implemented"])
        self.assertEqual(session.send(b"HELO client.example\r\n"), [b"250 mx.example Hello 192.0.2.7, nice to meet you"])

    def test_ehloResetsTransaction(self):
        session = esmtpSession()
        session.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(
            session.codes(b"EHLO again.example\r\nRCPT TO:<b@example.com>\r\n")[-1:], [b"503 5.5.1"]
        )

    def test_ipv6Peer(self):
        session = Session(ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example"), peer=IPv6Address("TCP", "::1", 1))
        self.assertEqual(session.send(b"EHLO c\r\n")[0], b"250-mx.example Hello ::1, nice to meet you")


class CommandTests(SynchronousTestCase):
    """
    The simple commands and the order of commands.
    """

    def test_noop(self):
        self.assertEqual(esmtpSession().send(b"NOOP\r\nNOOP anything\r\n"), [b"250 2.0.0 OK"] * 2)

    def test_vrfy(self):
        self.assertEqual(esmtpSession().codes(b"VRFY bob\r\nVRFY\r\n"), [b"252 2.0.0", b"501 5.5.4"])

    def test_expn(self):
        self.assertEqual(esmtpSession().codes(b"EXPN list\r\n"), [b"502 5.5.1"])

    def test_help(self):
        lines = esmtpSession().send(b"HELP\r\n")
        self.assertEqual(lines[-1], b"214 2.0.0 See RFC 5321")
        for verb in (b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"NOOP", b"VRFY", b"QUIT"):
            self.assertIn(verb, lines[0])

    def test_quit(self):
        """
        QUIT says goodbye and hangs up; what the client sent after it is
        not answered.
        """
        session = esmtpSession()
        self.assertEqual(session.send(b"QUIT\r\nNOOP\r\n"), [b"221 2.0.0 See you later"])
        self.assertTrue(session.transport.disconnecting)
        self.assertEqual(session.send(b"NOOP\r\n"), [])

    def test_rset(self):
        session = esmtpSession()
        self.assertEqual(
            session.codes(b"MAIL FROM:<a@example.org>\r\nRSET\r\nRCPT TO:<b@example.com>\r\nRSET x\r\n"),
            [b"250 2.1.0", b"250 2.0.0", b"503 5.5.1", b"501 5.5.4"],
        )

    def test_mailBeforeHelo(self):
        session = esmtpSession(ehlo=None)
        self.assertEqual(session.codes(b"MAIL FROM:<a@example.org>\r\n"), [b"503"])

    def test_sequence(self):
        """
        503 for commands out of order: two MAILs, RCPT before MAIL, DATA
        before RCPT.
        """
        session = esmtpSession()
        self.assertEqual(
            session.codes(
                b"RCPT TO:<b@example.com>\r\nDATA\r\nMAIL FROM:<a@example.org>\r\n"
                b"MAIL FROM:<a@example.org>\r\nDATA\r\nDATA x\r\n"
            ),
            [b"503 5.5.1", b"503 5.5.1", b"250 2.1.0", b"503 5.5.1", b"503 5.5.1", b"501 5.5.4"],
        )

    def test_garbage(self):
        """
        Binary, non-ASCII and empty lines are answered 500, never a crash.
        """
        session = esmtpSession()
        self.assertEqual(
            session.codes(b"\x00\xff\xfe\r\nMA\xc3\x8fL FROM:<a@b>\r\n\r\n   \r\nM\tAIL\r\nXYZZY\r\n"),
            [b"500 5.5.2"] * 6,
        )
        self.assertEqual(session.codes(b"NOOP\r\n"), [b"250 2.0.0"])

    def test_lowerCaseAndSpaces(self):
        session = esmtpSession()
        self.assertEqual(session.codes(b"mail from: <a@example.org>  \r\n"), [b"250 2.1.0"])

    def test_badAddresses(self):
        session = esmtpSession()
        self.assertEqual(
            session.codes(
                b"MAIL FROM:<a@@example.org>\r\nMAIL FROM:<\xc3\xa9@example.org>\r\nMAIL FROM:<a@example.org\r\n"
                b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\nMAIL FROM:<a@example.org> FOO=1\r\n"
            ),
            [b"553 5.1.7", b"553 5.6.7", b"501 5.5.4", b"555 5.5.4", b"555 5.5.4"],
        )

    def test_smtputf8(self):
        session = esmtpSession()
        self.assertEqual(
            session.codes(
                b"MAIL FROM:<j\xc3\xb6rg@example.org> SMTPUTF8\r\nRCPT TO:<\xe7\x94\xb0\xe4\xb8\xad@example.jp>\r\n"
            ),
            [b"250 2.1.0", b"250 2.1.5"],
        )

    def test_nullSender(self):
        session = esmtpSession()
        self.assertEqual(session.codes(b"MAIL FROM:<>\r\nRCPT TO:<>\r\n"), [b"250 2.1.0", b"553 5.1.3"])


class EnhancedStatusTests(SynchronousTestCase):
    """
    After EHLO, every 2xx, 4xx and 5xx reply carries an enhanced status
    code (RFC 2034).
    """

    def test_everyReply(self):
        session = esmtpSession()
        lines = session.send(
            TRANSACTION + b"Subject: x\r\n\r\nhi\r\n.\r\nNOOP\r\nRSET\r\nVRFY x\r\nFOO\r\nHELP\r\nQUIT\r\n"
        )
        for line in lines:
            if line[:1] in b"245":
                self.assertRegex(line, rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")

    def test_sendCodeAddsStatus(self):
        """
        L{SMTP.sendCode} from a subclass gets a status: the one given, the
        one the text starts with, or C{X.0.0}.
        """
        session = esmtpSession()
        session.proto.sendCode(250, b"fine")
        session.proto.sendCode(550, b"5.7.1 go away")
        session.proto.sendCode(451, b"later", b"4.4.1")
        session.proto.sendCode(354, b"go on")
        self.assertEqual(
            session.take(), [b"250 2.0.0 fine", b"550 5.7.1 go away", b"451 4.4.1 later", b"354 go on"]
        )


class DataTests(SynchronousTestCase):
    """
    DATA: transparency, the end of data, trace headers, streaming.
    """

    def test_message(self):
        session = esmtpSession()
        self.assertEqual(
            session.codes(TRANSACTION + b"Subject: x\r\n\r\n..one\r\n.\r\n"),
            [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"],
        )
        [message] = session.delivery.messages
        self.assertEqual(message.data, b"Subject: x\r\n\r\n.one\r\n")
        self.assertEqual(message.sender, Address(b"alice@example.org"))
        self.assertEqual(message.recipient, Address(b"bob@example.com"))
        self.assertEqual(message.helo, (b"client.example", b"192.0.2.7"))

    def test_emptyMessage(self):
        session = esmtpSession()
        session.send(TRANSACTION + b".\r\n")
        self.assertEqual(session.delivery.messages[0].data, b"")

    def test_bytewise(self):
        """
        The same message fed one byte at a time.
        """
        session = esmtpSession()
        data = TRANSACTION + b"A: b\r\n\r\n..\r\n...\r\nx\r\n.\r\nNOOP\r\n"
        replies = []
        for i in range(len(data)):
            replies += session.send(data[i : i + 1])
        self.assertEqual(replies[-1], b"250 2.0.0 OK")
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\n\r\n.\r\n..\r\nx\r\n")

    def test_smuggling(self):
        """
        Only CRLF.CRLF ends the data: C{LF.LF}, C{CR.CR} and mixes are
        message content, and what follows them is never a command.
        """
        for fake in (b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"):
            session = esmtpSession()
            session.send(
                TRANSACTION + b"Subject: x\r\n\r\nhi" + fake + b"MAIL FROM:<evil@example.net>\r\n"
                b"RCPT TO:<victim@example.com>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n"
            )
            self.assertEqual(len(session.delivery.messages), 1, fake)
            self.assertEqual(len(session.delivery.senders), 1, fake)
            self.assertIn(b"evil@example.net", session.delivery.messages[0].data)

    def test_bareNewlineNormalize(self):
        session = esmtpSession()
        session.send(TRANSACTION + b"A: b\n\nline\rnext\r\n.\r\n")
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\n\r\nline\r\nnext\r\n")

    def test_bareNewlineReject(self):
        session = esmtpSession(bareNewlinePolicy=BareNewlinePolicy.REJECT)
        self.assertEqual(session.codes(TRANSACTION + b"A: b\n\nline\r\n.\r\nNOOP\r\n")[-2:], [b"550 5.5.2", b"250 2.0.0"])
        self.assertEqual(session.delivery.messages, [])
        self.assertEqual(len(session.delivery.lost), 1)

    def test_bareNewlineKeep(self):
        session = esmtpSession(bareNewlinePolicy=BareNewlinePolicy.KEEP)
        session.send(TRANSACTION + b"A: b\n\nline\r.x\r\n.\r\n")
        self.assertEqual(session.delivery.messages[0].data, b"A: b\n\nline\r.x\r\n")

    def test_receivedHeader(self):
        """
        The default trace header (RFC 5321 section 4.4): from the client's
        name and address, by this server, with ESMTP, for the recipient.
        """

        class Plain(ESMTP):
            def validateFrom(self, helo, origin):
                return origin

            def validateTo(self, user):
                return lambda: MemoryMessage(delivery, user)

        delivery = MemoryDelivery()
        factory = ESMTPFactory(domain=b"mx.example")
        factory.protocol = Plain
        session = Session(factory)
        session.send(b"EHLO client.example\r\n" + TRANSACTION + b"Subject: x\r\n\r\nhi\r\n.\r\n")
        data = delivery.messages[0].data
        self.assertRegex(
            data,
            rb"^Received: from client\.example \(\[192\.0\.2\.7\]\)\r\n"
            rb"\tby mx\.example \(mailproto [^)]+\) with ESMTP\r\n"
            rb"\tfor <bob@example\.com>;\r\n"
            rb"\t\w{3}, \d+ \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n"
            rb"Subject: x\r\n\r\nhi\r\n$",
        )

    def test_receivedHeaderFromDelivery(self):
        """
        The delivery's trace header goes first, its LF line ends made CRLF;
        a message without headers gets a blank line after it, so that its
        first line stays in the body.
        """
        session = esmtpSession(MemoryDelivery(receivedHeader=b"Received: from x\n\tby y"))
        session.send(TRANSACTION + b"no header here\r\n.\r\n")
        self.assertEqual(session.delivery.messages[0].data, b"Received: from x\r\n\tby y\r\n\r\nno header here\r\n")

    def test_lineInterface(self):
        """
        A message that is only an L{IMessageSMTP} gets one call per line,
        without line ends, as with twisted.mail.
        """

        @implementer(IMessageSMTP)
        class Lines:
            def __init__(self):
                self.lines = []

            def lineReceived(self, line):
                self.lines.append(line)

            def eomReceived(self):
                return defer.succeed(None)

            def connectionLost(self):
                pass

        message = Lines()
        delivery = MemoryDelivery(receivedHeader=b"Received: x\r\n\ty")
        delivery.validateTo = lambda user: lambda: message
        session = esmtpSession(delivery)
        session.send(TRANSACTION + b"A: b\r\n\r\n..dot\r\n.\r\n")
        self.assertEqual(message.lines, [b"Received: x", b"\ty", b"A: b", b"", b".dot"])

    def test_dataLineReceived(self):
        """
        L{SMTP.dataLineReceived} takes a line as if it came from the
        network.
        """
        session = esmtpSession()
        session.send(TRANSACTION)
        session.proto.dataLineReceived(b"A: b")
        session.proto.dataLineReceived(b"")
        session.proto.dataLineReceived(b"..x")
        session.proto.dataLineReceived(b".")
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\n\r\n.x\r\n")

    def test_severalRecipients(self):
        session = esmtpSession()
        session.send(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nA: b\r\n.\r\n"
        )
        self.assertEqual([str(m.recipient) for m in session.delivery.messages], ["b@example.com", "c@example.com"])

    def test_dsnParameters(self):
        """
        DSN, SIZE and BODY parameters reach the delivery with the envelope.
        """
        session = esmtpSession()
        session.send(
            b"MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B1 SIZE=20 BODY=8BITMIME\r\n"
            b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40example.com\r\nDATA\r\nA: b\r\n.\r\n"
        )
        [message] = session.delivery.messages
        self.assertEqual((message.mail.ret, message.mail.envid, message.mail.size, message.mail.body), (b"HDRS", b"QQ+1", 20, b"8BITMIME"))
        self.assertEqual(message.rcpt.notify, (b"SUCCESS", b"DELAY"))
        self.assertEqual(message.rcpt.orcpt, (b"rfc822", b"b@example.com"))

    def test_flatMemory(self):
        """
        A 100 MiB message goes through with memory bounded by a line, not
        by the message: what the server allocates while it streams stays
        under 1 MiB.
        """
        import tracemalloc

        sizes = []

        @implementer(IMessageStream)
        class Counting:
            def dataReceived(self, data):
                sizes.append(len(data))

            def lineReceived(self, line):
                raise AssertionError("the chunk interface is used")

            def eomReceived(self):
                return defer.succeed(None)

            def connectionLost(self):
                pass

        delivery = MemoryDelivery()
        delivery.validateTo = lambda user: Counting
        session = esmtpSession(delivery, maxMessageSize=0)
        session.send(TRANSACTION)
        chunk = (b"x" * 78 + b"\r\n") * 800  # 64,000 octets
        count = 100 * 1024 * 1024 // len(chunk) + 1
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(count):
                session.proto.dataReceived(chunk)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        self.assertEqual(session.codes(b".\r\n"), [b"250 2.0.0"])
        self.assertEqual(sum(sizes), count * len(chunk))
        self.assertLess(peak, 1024 * 1024)

    def test_connectionLostDuringData(self):
        session = esmtpSession()
        session.send(TRANSACTION + b"A: b\r\n")
        session.proto.connectionLost(None)
        self.assertEqual(len(session.delivery.lost), 1)
        self.assertEqual(session.delivery.messages, [])


class LimitTests(SynchronousTestCase):
    """
    Size, line length, recipients, errors, idle time.
    """

    def test_declaredSize(self):
        session = esmtpSession(maxMessageSize=100)
        self.assertEqual(
            session.codes(b"MAIL FROM:<a@example.org> SIZE=101\r\nMAIL FROM:<a@example.org> SIZE=100\r\n"),
            [b"552 5.3.4", b"250 2.1.0"],
        )

    def test_sizeWhileStreaming(self):
        """
        A message that grows past the limit is read to its end, then
        refused; nothing is delivered and the session goes on.
        """
        session = esmtpSession(maxMessageSize=100)
        body = b"x" * 60 + b"\r\n"
        self.assertEqual(
            session.codes(TRANSACTION + body * 3 + b"MAIL FROM:<evil@example.net>\r\n.\r\nNOOP\r\n")[-2:],
            [b"552 5.3.4", b"250 2.0.0"],
        )
        self.assertEqual(session.delivery.messages, [])
        self.assertEqual(len(session.delivery.lost), 1)
        self.assertEqual(len(session.delivery.senders), 1)

    def test_noSizeLimit(self):
        session = esmtpSession(maxMessageSize=0)
        self.assertIn(b"250-SIZE 0", session.send(b"EHLO x\r\n"))
        session.send(TRANSACTION + b"x" * 900 + b"\r\n" * 2000 + b".\r\n")
        self.assertEqual(len(session.delivery.messages), 1)

    def test_textLineTooLong(self):
        """
        An overlong line in DATA makes the server read to the end of the
        message and refuse it; the body is never read as commands.
        """
        session = esmtpSession(maxLineLength=100)
        replies = session.codes(
            TRANSACTION + b"A: " + b"y" * 2000 + b"\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<v@example.com>\r\n.\r\nNOOP\r\n"
        )
        self.assertEqual(replies[-2:], [b"500 5.5.2", b"250 2.0.0"])
        self.assertEqual(session.delivery.messages, [])
        self.assertEqual(len(session.delivery.senders), 1)

    def test_commandLineTooLong(self):
        """
        An overlong command line gets 500, is thrown away whole, and the
        next command is read; memory stays bounded while it comes in.
        """
        session = Session(SMTPFactory(domain=b"mx.example", delivery=MemoryDelivery()))
        session.send(b"HELO x\r\n")
        for i in range(100):
            self.assertEqual(session.send(b"NOOP " + b"z" * 1000), [])
            self.assertLess(len(session.proto._input), 1100)
        self.assertEqual(session.send(b"\r\nNOOP\r\n"), [b"500 Line too long", b"250 OK"])

    def test_commandLineLimit(self):
        """
        512 octets with CRLF is allowed on SMTP; 513 is not.
        """
        session = Session(SMTPFactory(domain=b"mx.example", delivery=MemoryDelivery()))
        self.assertEqual(session.codes(b"NOOP " + b"a" * 505 + b"\r\n"), [b"250"])
        self.assertEqual(session.codes(b"NOOP " + b"a" * 506 + b"\r\n"), [b"500"])

    def test_maxRecipients(self):
        session = esmtpSession(maxRecipients=2)
        self.assertEqual(
            session.codes(
                b"MAIL FROM:<a@example.org>\r\n" + b"RCPT TO:<b@example.com>\r\n" * 3 + b"DATA\r\nA: b\r\n.\r\n"
            ),
            [b"250 2.1.0", b"250 2.1.5", b"250 2.1.5", b"452 4.5.3", b"354", b"250 2.0.0"],
        )
        self.assertEqual(len(session.delivery.messages), 2)

    def test_maxErrors(self):
        """
        After C{maxErrors} bad commands the next one is answered, then 421
        and the connection is closed.
        """
        session = esmtpSession(maxErrors=3)
        self.assertEqual(session.codes(b"FOO\r\n" * 3), [b"500 5.5.2"] * 3)
        self.assertFalse(session.transport.disconnecting)
        self.assertEqual(session.codes(b"FOO\r\nNOOP\r\n"), [b"500 5.5.2", b"421 4.7.0"])
        self.assertTrue(session.transport.disconnecting)

    def test_idleTimeout(self):
        session = esmtpSession(timeout=60)
        session.clock.advance(59)
        session.send(b"NO")  # any data restarts the count
        session.clock.advance(59)
        self.assertFalse(session.transport.disconnecting)
        session.clock.advance(1)
        self.assertEqual(session.codes(b""), [b"421 4.4.2"])
        self.assertTrue(session.transport.disconnecting)

    def test_timeoutDuringData(self):
        session = esmtpSession(timeout=60)
        session.send(TRANSACTION + b"A: b\r\n")
        session.clock.advance(60)
        self.assertEqual(session.codes(b""), [b"421 4.4.2"])
        session.proto.connectionLost(None)
        self.assertEqual(len(session.delivery.lost), 1)

    def test_noTimeoutWhileServerIsBusy(self):
        """
        While a reply waits for the delivery, the client is not idle: the
        count starts again once the reply has gone out.
        """
        pending = defer.Deferred()
        delivery = MemoryDelivery()
        delivery.validateFrom = lambda helo, origin: pending.addCallback(lambda _: origin)
        session = esmtpSession(delivery, timeout=60)
        session.send(b"MAIL FROM:<a@example.org>\r\n")
        session.clock.advance(600)
        self.assertFalse(session.transport.disconnecting)
        pending.callback(None)
        self.assertEqual(session.codes(b""), [b"250 2.1.0"])
        session.clock.advance(59)
        self.assertFalse(session.transport.disconnecting)
        session.clock.advance(1)
        self.assertEqual(session.codes(b""), [b"421 4.4.2"])

    def test_unknownLimit(self):
        self.assertRaises(TypeError, SMTPFactory, maxFoo=1)


class PipeliningTests(SynchronousTestCase):
    """
    Replies in order, whatever the timing of validation (RFC 2920).
    """

    def test_asyncValidation(self):
        """
        With a sender check that answers later, nothing after MAIL is
        answered until it has.
        """
        pending = defer.Deferred()
        delivery = MemoryDelivery()
        delivery.validateFrom = lambda helo, origin: pending.addCallback(lambda _: origin)
        session = esmtpSession(delivery)
        self.assertEqual(session.send(TRANSACTION + b"A: b\r\n.\r\nQUIT\r\n"), [])
        pending.callback(None)
        self.assertEqual(
            session.codes(b""), [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0", b"221 2.0.0"]
        )
        self.assertEqual(len(session.delivery.messages), 1)

    def test_asyncEndOfData(self):
        """
        The reply to the end of data waits for the messages; the next
        command waits for that reply.
        """
        pending = defer.Deferred()
        delivery = MemoryDelivery()
        session = esmtpSession(delivery)
        original = MemoryMessage.eomReceived
        self.patch(MemoryMessage, "eomReceived", lambda self: pending.addCallback(lambda _: original(self)))
        self.assertEqual(session.codes(TRANSACTION + b"A: b\r\n.\r\nNOOP\r\n"), [b"250 2.1.0", b"250 2.1.5", b"354"])
        pending.callback(None)
        self.assertEqual(session.codes(b""), [b"250 2.0.0", b"250 2.0.0"])

    def test_endOfDataSomeMessagesLater(self):
        """
        With several recipients, the reply to the end of data waits for the
        last message to answer, whether the others answered at once or not;
        a refusal by the late one is the reply.
        """
        pending = defer.Deferred()
        original = MemoryMessage.eomReceived

        def eomReceived(message):
            if bytes(message.user.dest) == b"late@example.com":
                return pending.addCallback(lambda _: original(message))
            return original(message)

        self.patch(MemoryMessage, "eomReceived", eomReceived)
        session = esmtpSession()
        transaction = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<late@example.com>\r\nDATA\r\n"
        self.assertEqual(
            session.codes(transaction + b"A: b\r\n.\r\nNOOP\r\n"), [b"250 2.1.0", b"250 2.1.5", b"250 2.1.5", b"354"]
        )
        pending.errback(SMTPServerError(452, "Later, please", b"4.3.1"))
        self.assertEqual(session.send(b""), [b"452 4.3.1 Later, please", b"250 2.0.0 OK"])

    def test_validatorReturnsFailure(self):
        """
        A sender check that returns a L{Failure} (rather than raising) is a
        refusal, as with C{maybeDeferred}.
        """
        delivery = MemoryDelivery()
        delivery.validateFrom = lambda helo, origin: Failure(SMTPBadSender(origin))
        session = esmtpSession(delivery)
        self.assertEqual(session.codes(b"MAIL FROM:<a@example.org>\r\nNOOP\r\n"), [b"550 5.7.1", b"250 2.0.0"])

    def test_pauseWhenFlooded(self):
        """
        Input piling up behind a pending reply pauses the transport, which
        resumes when the reply goes out.
        """
        pending = defer.Deferred()
        delivery = MemoryDelivery()
        delivery.validateFrom = lambda helo, origin: pending.addCallback(lambda _: origin)
        session = esmtpSession(delivery, maxJunkCommands=0)
        session.send(b"MAIL FROM:<a@example.org>\r\n" + b"NOOP\r\n" * 20000)
        self.assertEqual(session.transport.producerState, "paused")
        pending.callback(None)
        # The commands are handled a batch at a time, the transport paused
        # in between, until the reactor has run.
        replies = session.take()
        self.assertEqual(len(replies), 101)
        for _ in range(1000):
            if session.transport.producerState == "producing":
                break
            self.assertEqual(session.transport.producerState, "paused")
            session.clock.advance(0)
        self.assertEqual(session.transport.producerState, "producing")
        self.assertEqual(len(replies + session.take()), 20001)


class ErrorTests(SynchronousTestCase):
    """
    Errors in user code: 451 4.3.0 and a log entry with the traceback;
    the client never sees Python internals.
    """

    def assertInternalError(self, session, data, expected):
        with capturedLogs() as events:
            lines = session.send(data)
        self.assertNotIn(b"Boom", b"".join(lines))
        self.assertNotIn(b"Traceback", b"".join(lines))
        self.assertEqual(replyCodes(lines), expected)
        failures = [e for e in events if "log_failure" in e]
        self.assertTrue(failures)
        self.assertIsInstance(failures[0]["log_failure"].value, ZeroDivisionError)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_validateFrom(self):
        delivery = MemoryDelivery()
        delivery.validateFrom = lambda helo, origin: 1 / 0
        self.assertInternalError(esmtpSession(delivery), b"MAIL FROM:<a@example.org>\r\nNOOP\r\n", [b"451 4.3.0", b"250 2.0.0"])

    def test_validateTo(self):
        delivery = MemoryDelivery()
        delivery.validateTo = lambda user: defer.fail(ZeroDivisionError("Boom"))
        self.assertInternalError(
            esmtpSession(delivery), b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n", [b"250 2.1.0", b"451 4.3.0"]
        )

    def test_messageFactory(self):
        delivery = MemoryDelivery()
        delivery.validateTo = lambda user: lambda: 1 / 0
        self.assertInternalError(esmtpSession(delivery), TRANSACTION + b"NOOP\r\n", [b"250 2.1.0", b"250 2.1.5", b"451 4.3.0", b"250 2.0.0"])

    def test_dataReceived(self):
        self.patch(MemoryMessage, "dataReceived", lambda self, data: 1 / 0)
        session = esmtpSession()
        self.assertInternalError(session, TRANSACTION + b"A: b\r\n.\r\n", [b"250 2.1.0", b"250 2.1.5", b"354", b"451 4.3.0"])
        self.assertEqual(len(session.delivery.lost), 1)

    def test_eomReceived(self):
        self.patch(MemoryMessage, "eomReceived", lambda self: 1 / 0)
        self.assertInternalError(esmtpSession(), TRANSACTION + b"A: b\r\n.\r\n", [b"250 2.1.0", b"250 2.1.5", b"354", b"451 4.3.0"])

    def test_eomRefused(self):
        """
        A message refused at its end with an L{SMTPServerError} gives that
        reply.
        """
        session = esmtpSession(MemoryDelivery(failDelivery=SMTPServerError(554, "Spam", b"5.7.1")))
        self.assertEqual(session.send(TRANSACTION + b"A: b\r\n.\r\n")[-1], b"554 5.7.1 Spam")

    def test_badSender(self):
        session = esmtpSession(MemoryDelivery(refuseSenders=[b"a@example.org"]))
        self.assertEqual(
            session.send(b"MAIL FROM:<a@example.org>\r\n"),
            [b"550 5.7.1 Cannot receive from specified address <a@example.org>: Sender not acceptable"],
        )

    def test_badRecipient(self):
        session = esmtpSession(MemoryDelivery(refuseRecipients=[b"bob@example.com"]))
        self.assertEqual(session.codes(TRANSACTION), [b"250 2.1.0", b"550 5.1.1", b"503 5.5.1"])

    def test_noDelivery(self):
        """
        Without a delivery or a portal, every sender is refused.
        """
        session = Session(ESMTPFactory(domain=b"mx.example"))
        session.send(b"EHLO x\r\n")
        self.assertEqual(session.codes(b"MAIL FROM:<a@example.org>\r\n"), [b"550 5.7.1"])


class DeliveryHookTests(SynchronousTestCase):
    """
    The ways of plugging in a delivery, as with twisted.mail.
    """

    def test_subclassHooks(self):
        """
        A subclass can override C{validateFrom}, C{validateTo} and
        C{receivedHeader}.
        """
        seen = []

        class Mine(SMTP):
            def validateFrom(self, helo, origin):
                seen.append(("from", helo, bytes(origin)))
                return defer.succeed(origin)

            def validateTo(self, user):
                seen.append(("to", bytes(user.dest), bytes(user.orig)))
                return lambda: MemoryMessage(delivery, user)

            def receivedHeader(self, helo, origin, recipients):
                return b"X-Seen: yes"

        delivery = MemoryDelivery()
        factory = SMTPFactory(domain=b"mx.example")
        factory.protocol = Mine
        session = Session(factory)
        self.assertEqual(
            session.codes(b"HELO c\r\n" + TRANSACTION + b"A: b\r\n.\r\n"), [b"250", b"250", b"250", b"354", b"250"]
        )
        self.assertEqual(
            seen, [("from", (b"c", b"192.0.2.7"), b"alice@example.org"), ("to", b"bob@example.com", b"alice@example.org")]
        )
        self.assertEqual(delivery.messages[0].data, b"X-Seen: yes\r\nA: b\r\n")

    def test_deliveryFactory(self):
        made = []

        @implementer(IMessageDeliveryFactory)
        class Factory:
            def getMessageDelivery(self):
                made.append(MemoryDelivery())
                return made[-1]

        session = Session(ESMTPFactory(deliveryFactory=Factory(), domain=b"mx.example"))
        session.send(b"EHLO c\r\n" + (TRANSACTION + b"A: b\r\n.\r\n") * 2)
        self.assertEqual([len(d.messages) for d in made], [1, 1])

    def test_anonymousPortal(self):
        """
        With a portal and no delivery, the server logs in anonymously and
        uses the avatar.
        """
        delivery = MemoryDelivery()

        @implementer(IRealm)
        class Realm:
            def requestAvatar(self, avatarId, mind, *interfaces):
                return IMessageDelivery, delivery, lambda: None

        session = Session(ESMTPFactory(Portal(Realm(), [AllowAnonymousAccess()]), domain=b"mx.example"))
        session.send(b"EHLO c\r\n" + TRANSACTION + b"A: b\r\n.\r\n")
        self.assertEqual(len(delivery.messages), 1)

    def test_portalRefusesAnonymous(self):
        @implementer(IRealm)
        class Realm:
            def requestAvatar(self, avatarId, mind, *interfaces):
                raise AssertionError("not reached")

        session = Session(ESMTPFactory(Portal(Realm(), []), domain=b"mx.example"))
        lines = session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(lines[-1], b"530 5.7.0 Authentication required")

    def test_badSenderSubclass(self):
        class Mine(ESMTP):
            def validateFrom(self, helo, origin):
                raise SMTPBadSender(origin, 553, "Not you")

        factory = ESMTPFactory(domain=b"mx.example")
        factory.protocol = Mine
        session = Session(factory)
        self.assertEqual(session.codes(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")[-1], b"553 5.7.1")


class ChunkingTests(SynchronousTestCase):
    """
    BDAT (RFC 3030).
    """

    MAIL = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"

    def test_chunks(self):
        session = esmtpSession()
        self.assertEqual(
            session.send(self.MAIL + bdat(b"A: b\r\n\r\n") + bdat(b".x\r\nyz\r\n", True) + b"NOOP\r\n")[2:],
            [b"250 2.0.0 8 octets received", b"250 2.0.0 Delivery in progress", b"250 2.0.0 OK"],
        )
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\n\r\n.x\r\nyz\r\n")

    def test_chunkBoundaryInsideLine(self):
        session = esmtpSession()
        session.send(self.MAIL + bdat(b"A: ") + bdat(b"b\r\n\r\n", True))
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\n\r\n")

    def test_emptyLastChunk(self):
        session = esmtpSession()
        self.assertEqual(session.codes(self.MAIL + b"BDAT 6\r\nA: b\r\nBDAT 0 LAST\r\n")[2:], [b"250 2.0.0", b"250 2.0.0"])
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\n")

    def test_lastLineWithoutCRLF(self):
        session = esmtpSession()
        session.send(self.MAIL + b"BDAT 4 LAST\r\nA: b")
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\n")

    def test_refusedChunkIsRead(self):
        """
        A BDAT without a transaction is refused, but its octets are read
        and thrown away, never taken as commands.
        """
        session = esmtpSession()
        chunk = b"MAIL FROM:<evil@example.net>\r\n"
        self.assertEqual(session.codes(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n"), [b"503 5.5.1", b"250 2.0.0"])
        self.assertEqual(session.delivery.senders, [])

    def test_notInHeloSession(self):
        session = esmtpSession(ehlo=b"HELO c")
        self.assertEqual(session.codes(self.MAIL + bdat(b"NOOP\r\n", True) + b"NOOP\r\n"), [b"250", b"250", b"503", b"250"])

    def test_badSyntax(self):
        """
        A malformed BDAT leaves no way to find the chunk's end: 501, then
        421 and the connection is closed.
        """
        session = esmtpSession()
        self.assertEqual(session.codes(self.MAIL + b"BDAT x\r\nNOOP\r\n")[2:], [b"501 5.5.4", b"421 4.5.0"])
        self.assertTrue(session.transport.disconnecting)

    def test_dataAfterBdat(self):
        session = esmtpSession()
        self.assertEqual(session.codes(self.MAIL + b"BDAT 6\r\nA: b\r\nDATA\r\n")[2:], [b"250 2.0.0", b"503 5.5.1"])

    def test_rsetAbandonsMessage(self):
        """
        RSET, HELO or EHLO before BDAT LAST abandons the message: its
        objects are told, and nothing is delivered.
        """
        for command in (b"RSET", b"EHLO c", b"HELO c"):
            session = esmtpSession()
            self.assertEqual(session.codes(self.MAIL + bdat(b"A: b\r\n") + command + b"\r\n")[2][:3], b"250")
            self.assertEqual(len(session.delivery.lost), 1, command)
            self.assertEqual(session.delivery.messages, [])

    def test_mailDuringChunking(self):
        session = esmtpSession()
        self.assertEqual(
            session.codes(self.MAIL + bdat(b"A: b\r\n") + b"MAIL FROM:<c@example.org>\r\n" + bdat(b"x\r\n", True))[2:],
            [b"250 2.0.0", b"503 5.5.1", b"250 2.0.0"],
        )
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\nx\r\n")

    def test_sizeExceeded(self):
        """
        A chunk that takes the message past the limit is read, then
        refused; the transaction is over.
        """
        session = esmtpSession(maxMessageSize=10)
        self.assertEqual(
            session.codes(self.MAIL + bdat(b"12345678") + bdat(b"12345678") + bdat(b"xy", True))[2:],
            [b"250 2.0.0", b"552 5.3.4", b"503 5.5.1"],
        )
        self.assertEqual(session.delivery.messages, [])

    def test_bytewise(self):
        session = esmtpSession()
        data = self.MAIL + bdat(b"A: b\r\n\r\n") + bdat(b"hi\r\n\r\n", True) + b"NOOP\r\n"
        for i in range(len(data)):
            session.send(data[i : i + 1])
        self.assertEqual(session.delivery.messages[0].data, b"A: b\r\n\r\nhi\r\n\r\n")


class LMTPTests(SynchronousTestCase):
    """
    LMTP (RFC 2033).
    """

    MAIL = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"

    def lmtp(self, delivery=None, **limits):
        return esmtpSession(delivery, factoryClass=LMTPFactory, ehlo=b"LHLO client.example", **limits)

    def test_lhlo(self):
        session = esmtpSession(factoryClass=LMTPFactory, ehlo=None)
        self.assertEqual(session.greeting, [b"220 mx.example LMTP server ready"])
        self.assertEqual(session.codes(b"HELO c\r\nEHLO c\r\n"), [b"500", b"500"])
        lines = session.send(b"LHLO c\r\n")
        self.assertIn(b"250-PIPELINING", lines)
        self.assertIn(b"250-ENHANCEDSTATUSCODES", lines)

    def test_replyPerRecipient(self):
        session = self.lmtp()
        self.assertEqual(
            session.send(self.MAIL + b"DATA\r\nA: b\r\n.\r\n")[3:],
            [b"354 Continue", b"250 2.1.5 <b@example.com> Delivered", b"250 2.1.5 <c@example.com> Delivered"],
        )
        self.assertEqual(len(session.delivery.messages), 2)

    def test_partialFailure(self):
        """
        Each recipient gets its own outcome.
        """
        session = self.lmtp()
        original = MemoryMessage.eomReceived

        def eom(message):
            if bytes(message.user.dest) == b"c@example.com":
                return defer.fail(SMTPServerError(452, "Mailbox full", b"4.2.2"))
            return original(message)

        self.patch(MemoryMessage, "eomReceived", eom)
        self.assertEqual(
            session.send(self.MAIL + b"DATA\r\nA: b\r\n.\r\n")[4:],
            [b"250 2.1.5 <b@example.com> Delivered", b"452 4.2.2 Mailbox full"],
        )

    def test_refusedMessage(self):
        session = self.lmtp(maxMessageSize=5)
        self.assertEqual(session.codes(self.MAIL + b"DATA\r\n123456789\r\n.\r\n")[4:], [b"552 5.3.4"] * 2)

    def test_bdat(self):
        session = self.lmtp()
        self.assertEqual(session.codes(self.MAIL + b"BDAT 6 LAST\r\nA: b\r\n")[3:], [b"250 2.1.5"] * 2)

    def test_unixPeer(self):
        session = Session(LMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example"), peer=UNIXAddress(None))
        session.send(b"LHLO c\r\n")
        self.assertEqual(session.proto._helo, (b"c", b"unix"))
        self.assertIn(b"(unix)", session.proto._traceHeader(session.proto._helo, []))
