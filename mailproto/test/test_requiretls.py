# -*- test-case-name: mailproto.test.test_requiretls -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
REQUIRETLS and C{TLS-Required: No} (RFC 8689): the server's EHLO keyword
and MAIL parameter over each TLS state, the relay's intake (the queued
envelope, the header scan), the client's check before MAIL, the relay's
non-delivery report, and a message over a real loopback TLS session.
"""

from __future__ import annotations

import email
import io

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mailproto._address import Address
from mailproto._client import checkRequireTLS
from mailproto._commands import MailFrom, formatMailFrom, parseMailFrom
from mailproto._extensions import Extensions
from mailproto._headerpolicy import HeaderScanner, IntakePolicy
from mailproto._jobs import Job
from mailproto._queue import FAILED, Queue
from mailproto._relay import QueueDeliveryFactory, RelayPolicy
from mailproto._relayers import ESMTPManagedRelayer, IRelayOwner
from mailproto._replies import Reply
from mailproto.smtp import ESMTP, ESMTPFactory, LMTPFactory
from mailproto.test._loopback import noConnectionsLeft
from mailproto.test.test_client import ESMTPTestClient, ImplicitTLSTransport as ClientTLSTransport
from mailproto.test.test_client import Session as ClientSession
from mailproto.test.test_client import RecordingTransport, TLSCapableTransport
from mailproto.test.test_relaymanager import SENDER, RelayHarness, Scripted, statusFields
from mailproto.test.test_server_auth import (
    CONTEXT,
    Connection,
    ImplicitTLSTransport,
    STARTTLSTransport,
    ehloKeywords,
    replyCodes,
)
from mailproto.testing import MemoryDelivery, MemoryQueue

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None

FROM = b"MAIL FROM:<alice@example.org>"
RCPT = b"RCPT TO:<bob@example.com>\r\n"
BODY = b"Subject: hi\r\n\r\nHello\r\n.\r\n"


def factory(requireTLS: bool = True, lmtp: bool = False, **kw) -> ESMTPFactory:
    """
    @return: a server factory with a TLS context (a stand-in: the fake
        transports never use it) and a L{MemoryDelivery} (as
        C{factory.delivery}).
    """
    kw.setdefault("delivery", MemoryDelivery())
    factoryClass = LMTPFactory if lmtp else ESMTPFactory
    return factoryClass(domain=b"mx.example", clock=Clock(), contextFactory=CONTEXT, requireTLS=requireTLS, **kw)


def plaintext(requireTLS: bool = True, **kw) -> Connection:
    """
    @return: a connection without TLS (STARTTLS offered), after EHLO.
    """
    conn = Connection(factory(requireTLS, **kw), STARTTLSTransport)
    conn.offered = conn.ehlo()
    return conn


def afterSTARTTLS(requireTLS: bool = True, **kw) -> Connection:
    """
    @return: a connection after STARTTLS and the EHLO that follows it.
    """
    conn = plaintext(requireTLS, **kw)
    assert replyCodes(conn.send(b"STARTTLS\r\n")) == [b"220 2.0.0"]
    conn.offered = conn.ehlo()
    return conn


def implicit(requireTLS: bool = True, **kw) -> Connection:
    """
    @return: a connection under TLS from its first octet, after EHLO.
    """
    conn = Connection(factory(requireTLS, **kw), ImplicitTLSTransport)
    conn.offered = conn.ehlo()
    return conn


class OfferTests(SynchronousTestCase):
    """
    The EHLO keyword: offered only under TLS, and only by a server that
    honours REQUIRETLS.
    """

    def test_notOfferedWithoutTLS(self):
        """
        On a plaintext session, STARTTLS is offered and REQUIRETLS is not,
        even by a server that honours it.
        """
        conn = plaintext()
        self.assertIn(b"STARTTLS", conn.offered)
        self.assertNotIn(b"REQUIRETLS", conn.offered)

    def test_offeredAfterSTARTTLS(self):
        """
        After STARTTLS, the new EHLO reply offers REQUIRETLS, without a
        parameter, and no longer STARTTLS.
        """
        conn = afterSTARTTLS()
        self.assertEqual(conn.offered.get(b"REQUIRETLS"), [])
        self.assertNotIn(b"STARTTLS", conn.offered)
        self.assertEqual(conn.transport.tlsStarts, [CONTEXT])

    def test_offeredOnImplicitTLS(self):
        """
        On an implicit-TLS listener, the first EHLO offers it.
        """
        self.assertIn(b"REQUIRETLS", implicit().offered)

    def test_neverOfferedWhenNotHonoured(self):
        """
        A server not configured to honour REQUIRETLS never offers it:
        before TLS, after STARTTLS, on implicit TLS.
        """
        for conn in (plaintext(False), afterSTARTTLS(False), implicit(False)):
            self.assertNotIn(b"REQUIRETLS", conn.offered)

    def test_offByDefault(self):
        """
        The library's generic server does not honour REQUIRETLS unless
        told: its delivery may not be able to keep the promise.
        """
        self.assertFalse(ESMTP.requireTLS)
        self.assertFalse(ESMTPFactory().requireTLS)
        self.assertFalse(ESMTPFactory().buildProtocol(None).requireTLS)
        self.assertTrue(ESMTPFactory(requireTLS=True).buildProtocol(None).requireTLS)
        conn = Connection(ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock()), ImplicitTLSTransport)
        self.assertNotIn(b"REQUIRETLS", conn.ehlo())

    def test_lmtp(self):
        """
        LMTP under TLS offers it too, after LHLO.
        """
        conn = Connection(factory(lmtp=True), ImplicitTLSTransport)
        lines = conn.send(b"LHLO client.example\r\n")
        self.assertIn(b"REQUIRETLS", ehloKeywords(lines))


class MailParameterTests(SynchronousTestCase):
    """
    C{MAIL FROM:<...> REQUIRETLS} in each state of the session.
    """

    def assertTransaction(self, conn, mail: bytes, codes: list[bytes]):
        """
        Send a whole transaction beginning with C{mail}; check the reply
        codes.

        @return: the delivered messages.
        """
        self.assertEqual(conn.codes(mail + b"\r\n" + RCPT + b"DATA\r\n" + BODY), codes)
        return conn.factory.delivery.messages

    def test_underTLS(self):
        """
        Offered: MAIL with REQUIRETLS is taken, and the message's C{MAIL}
        command, as the delivery sees it, has it.
        """
        for conn in (afterSTARTTLS(), implicit()):
            [message] = self.assertTransaction(conn, FROM + b" REQUIRETLS", [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"])
            self.assertTrue(message.mail.requiretls)

    def test_withoutParameter(self):
        """
        Under TLS, a message without the parameter does not have it.
        """
        [message] = self.assertTransaction(implicit(), FROM, [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"])
        self.assertFalse(message.mail.requiretls)

    def test_keywordCase(self):
        """
        The keyword is taken in any case.
        """
        [message] = self.assertTransaction(implicit(), FROM + b" requireTLS", [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"])
        self.assertTrue(message.mail.requiretls)

    def test_withoutTLS(self):
        """
        A server that honours REQUIRETLS but has no TLS on this session
        says why it refuses: C{530 5.7.10}; no transaction starts, so the
        RCPT and DATA that were pipelined after it are refused too.
        """
        conn = plaintext()
        codes = conn.codes(FROM + b" REQUIRETLS\r\n" + RCPT + b"DATA\r\n")
        self.assertEqual(codes, [b"530 5.7.10", b"503 5.5.1", b"503 5.5.1"])
        self.assertIsNone(conn.proto._from)

    def test_withoutTLSThenSTARTTLS(self):
        """
        Refused before TLS, the same command is taken after STARTTLS and
        EHLO.
        """
        conn = plaintext()
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS\r\n"), [b"530 5.7.10"])
        self.assertEqual(conn.codes(b"STARTTLS\r\n"), [b"220 2.0.0"])
        # A new session: EHLO first (and no enhanced status before it).
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS\r\n"), [b"503"])
        conn.ehlo()
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS\r\n"), [b"250 2.1.0"])

    def test_notHonoured(self):
        """
        A server that does not honour REQUIRETLS answers it as any
        parameter it does not offer: C{555 5.5.4}, with or without TLS.
        """
        for conn in (plaintext(False), afterSTARTTLS(False), implicit(False)):
            self.assertEqual(conn.codes(FROM + b" REQUIRETLS\r\n"), [b"555 5.5.4"])
            self.assertIsNone(conn.proto._from)

    def test_afterHELO(self):
        """
        After HELO there are no extensions: REQUIRETLS is not a parameter
        there, even under TLS.
        """
        conn = Connection(factory(), ImplicitTLSTransport)
        conn.send(b"HELO client.example\r\n")
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS\r\n"), [b"555"])

    def test_withValue(self):
        """
        REQUIRETLS takes no value: C{501 5.5.4}, on a session that offers
        it and on one that would after STARTTLS.
        """
        for conn in (implicit(), plaintext()):
            for value in (b"REQUIRETLS=YES", b"REQUIRETLS=", b"REQUIRETLS=NO"):
                self.assertEqual(conn.codes(FROM + b" " + value + b"\r\n"), [b"501 5.5.4"], value)
            self.assertIsNone(conn.proto._from)

    def test_twice(self):
        """
        The parameter given twice: C{501 5.5.4}.
        """
        conn = implicit()
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS REQUIRETLS\r\n"), [b"501 5.5.4"])
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS requiretls\r\n"), [b"501 5.5.4"])

    def test_withOtherParameters(self):
        """
        With SIZE, BODY and SMTPUTF8, in any order, every parameter is
        kept.
        """
        for params in (b" SIZE=100 BODY=8BITMIME SMTPUTF8 REQUIRETLS", b" REQUIRETLS SMTPUTF8 BODY=8BITMIME SIZE=100"):
            conn = implicit()
            [message] = self.assertTransaction(conn, FROM + params, [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"])
            mail = message.mail
            self.assertEqual((mail.requiretls, mail.size, mail.body, mail.smtputf8), (True, 100, b"8BITMIME", True))

    def test_otherParameterRefused(self):
        """
        A bad parameter beside it refuses the command as before.
        """
        conn = implicit()
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS SIZE=x\r\n"), [b"501 5.5.4"])
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS XFOO\r\n"), [b"555 5.5.4"])
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS SIZE=999999999999\r\n"), [b"552 5.3.4"])

    def test_pipelined(self):
        """
        Two transactions pipelined in one write: the first with
        REQUIRETLS, the second without; each message has what its MAIL
        said, and the replies come in order.
        """
        conn = implicit()
        data = FROM + b" REQUIRETLS\r\n" + RCPT + b"DATA\r\n" + BODY + FROM + b"\r\n" + RCPT + b"DATA\r\n" + BODY
        self.assertEqual(conn.codes(data), [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"] * 2)
        self.assertEqual([m.mail.requiretls for m in conn.factory.delivery.messages], [True, False])

    def test_resetForgets(self):
        """
        RSET ends the transaction: the next MAIL without the parameter
        does not have it.
        """
        conn = implicit()
        self.assertEqual(conn.codes(FROM + b" REQUIRETLS\r\nRSET\r\n"), [b"250 2.1.0", b"250 2.0.0"])
        [message] = self.assertTransaction(conn, FROM, [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"])
        self.assertFalse(message.mail.requiretls)

    def test_secondMAIL(self):
        """
        A second MAIL in a transaction is refused, REQUIRETLS or not.
        """
        conn = implicit()
        self.assertEqual(conn.codes(FROM + b"\r\n" + FROM + b" REQUIRETLS\r\n"), [b"250 2.1.0", b"503 5.5.1"])
        self.assertFalse(conn.proto._mail.requiretls)


class WireFormTests(SynchronousTestCase):
    """
    L{MailFrom} with REQUIRETLS, as the client writes it and the server
    reads it.
    """

    def test_format(self):
        """
        The keyword alone, after the other parameters.
        """
        mail = MailFrom(Address(b"a@example.org"), size=10, body=b"8BITMIME", requiretls=True)
        self.assertEqual(formatMailFrom(mail), b"MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME REQUIRETLS")
        self.assertEqual(formatMailFrom(MailFrom(Address(b"a@example.org"))), b"MAIL FROM:<a@example.org>")

    def test_roundTrip(self):
        """
        What the client writes, the server reads back the same.
        """
        mail = MailFrom(Address(b"a@example.org"), size=10, smtputf8=True, requiretls=True)
        self.assertEqual(parseMailFrom(formatMailFrom(mail)[len(b"MAIL "):]), mail)


# -- the relay's intake --------------------------------------------------------


def scan(data: bytes, pieces: int | None = None) -> HeaderScanner:
    """
    @param pieces: feed C{data} cut in pieces of this size; whole if
        C{None}.
    @return: the scanner, after the end of the message.
    """
    scanner = HeaderScanner(maxHops=0, maxOwnHops=0)
    out = []
    step = pieces or len(data) or 1
    for i in range(0, len(data), step):
        out.append(scanner.feed(data[i : i + step]))
    out.append(scanner.close())
    assert b"".join(out) == data, (b"".join(out), data)
    return scanner


class HeaderScanTests(SynchronousTestCase):
    """
    L{HeaderScanner.tlsOptional}: a C{TLS-Required: No} field of the
    header section, read in chunks cut anywhere.
    """

    def assertOptional(self, data: bytes, expected: bool) -> None:
        for pieces in (None, 1, 2, 7):
            self.assertEqual(scan(data, pieces).tlsOptional, expected, (data, pieces))

    def test_no(self):
        self.assertOptional(b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n", True)

    def test_caseAndSpace(self):
        """
        The name and the value in any case, with white space around the
        value and before the colon.
        """
        for field in (b"tls-required: no", b"TLS-REQUIRED:NO", b"Tls-Required:\t nO \t", b"TLS-Required : No"):
            self.assertOptional(b"Subject: x\r\n" + field + b"\r\n\r\nbody\r\n", True)

    def test_folded(self):
        """
        A value folded onto the next line.
        """
        self.assertOptional(b"TLS-Required:\r\n No\r\nSubject: x\r\n\r\nbody\r\n", True)
        self.assertOptional(b"TLS-Required:\r\n\tNo\r\n\r\n", True)

    def test_lastField(self):
        """
        The last field of a message that has no body, with or without its
        line end.
        """
        self.assertOptional(b"Subject: x\r\nTLS-Required: No\r\n", True)
        self.assertOptional(b"Subject: x\r\nTLS-Required: No", True)

    def test_otherValues(self):
        """
        Any other value is not a request to relax anything.
        """
        for value in (b"Yes", b"", b"No, please", b"Nope", b"N o", b"No\r\n more", b"No" + b" " * 80 + b"x"):
            self.assertOptional(b"TLS-Required: " + value + b"\r\n\r\nbody\r\n", False)

    def test_longValue(self):
        """
        A value longer than is kept of it is not believed, even if it
        would unfold to C{No}.
        """
        self.assertOptional(b"TLS-Required:" + b"\r\n " * 40 + b"No\r\n\r\n", False)
        # What would be kept of it says "No"; what follows does not.
        self.assertOptional(b"TLS-Required: No\r\n" + b" " * 70 + b"\r\n and more\r\n\r\n", False)
        self.assertOptional(b"TLS-Required:" + b" " * 70 + b"No\r\n\r\n", False)

    def test_contradicted(self):
        """
        Two fields, one not C{No}: not optional, in either order.
        """
        self.assertOptional(b"TLS-Required: No\r\nTLS-Required: Yes\r\n\r\n", False)
        self.assertOptional(b"TLS-Required: Yes\r\nTLS-Required: No\r\n\r\n", False)
        self.assertOptional(b"TLS-Required: No\r\nTLS-Required: no\r\n\r\n", True)

    def test_inBody(self):
        """
        In the body it is text, not a field: after the empty line, or
        after a line that is not a field (which starts the body).
        """
        self.assertOptional(b"Subject: x\r\n\r\nTLS-Required: No\r\n", False)
        self.assertOptional(b"Subject: x\r\nnot a field\r\nTLS-Required: No\r\n", False)

    def test_otherName(self):
        """
        Only that name: not a prefix of it, nor a longer one.
        """
        self.assertOptional(b"X-TLS-Required: No\r\nTLS-Required-Not: No\r\n\r\n", False)

    def test_absent(self):
        self.assertOptional(b"Subject: x\r\n\r\nbody\r\n", False)
        self.assertOptional(b"", False)


class IntakeTests(SynchronousTestCase):
    """
    The relay's queue delivery keeps REQUIRETLS and C{TLS-Required: No}
    in the queued envelope.
    """

    def setUp(self):
        self.queue = MemoryQueue()

    def connection(self, intake=None, transportClass=ImplicitTLSTransport, queue=None) -> Connection:
        policy = RelayPolicy(domains=["example.com"])
        deliveryFactory = QueueDeliveryFactory(queue or self.queue, policy, clock=Clock(), intake=intake)
        conn = Connection(factory(deliveryFactory=deliveryFactory, delivery=None), transportClass)
        conn.ehlo()
        return conn

    def queued(self, conn, mail: bytes, data: bytes, pieces: int | None = None, queue=None):
        """
        Send one message; the data in writes of C{pieces} octets.

        @return: the envelope it was queued with.
        """
        self.assertEqual(conn.codes(mail + b"\r\n" + RCPT + b"DATA\r\n"), [b"250 2.1.0", b"250 2.1.5", b"354"])
        data += b".\r\n"
        step = pieces or len(data)
        for i in range(0, len(data), step):
            conn.proto.dataReceived(data[i : i + step])
        self.assertEqual(replyCodes(conn.take()), [b"250 2.0.0"])
        queue = queue or self.queue
        [queueID] = queue.ids()
        return queue.getEnvelope(queueID)

    def test_requireTLS(self):
        """
        MAIL with REQUIRETLS: the envelope has C{requireTLS}, written in
        its envelope line.
        """
        envelope = self.queued(self.connection(), FROM + b" REQUIRETLS", b"Subject: x\r\n\r\nhi\r\n")
        self.assertTrue(envelope.requireTLS)
        self.assertTrue(envelope.header()["requiretls"])
        self.assertFalse(envelope.tlsOptional)

    def test_withoutRequireTLS(self):
        envelope = self.queued(self.connection(), FROM, b"Subject: x\r\n\r\nhi\r\n")
        self.assertFalse(envelope.requireTLS)
        self.assertNotIn("requiretls", envelope.header())

    def test_tlsOptional(self):
        """
        C{TLS-Required: No} with no header policy configured: the envelope
        has C{tlsOptional}, in the state written at commit; the message is
        queued as it came.
        """
        data = b"Subject: x\r\nTLS-Required: No\r\n\r\nhi\r\n"
        envelope = self.queued(self.connection(), FROM, data)
        self.assertTrue(envelope.tlsOptional)
        self.assertTrue(self.queue.states[envelope.id]["tlsOptional"])
        self.assertTrue(self.queue.messages[envelope.id].endswith(data))

    def test_tlsOptionalWithPolicy(self):
        """
        With the relay's header policy, the same scan notes it.
        """
        envelope = self.queued(self.connection(IntakePolicy(b"mx.example")), FROM, b"TLS-Required: no\r\n\r\nhi\r\n")
        self.assertTrue(envelope.tlsOptional)

    def test_ignoredWithRequireTLS(self):
        """
        A message with REQUIRETLS keeps its requirement: its
        C{TLS-Required: No} is ignored (and kept in the message).
        """
        for intake in (None, IntakePolicy(b"mx.example")):
            self.queue = MemoryQueue()
            data = b"TLS-Required: No\r\n\r\nhi\r\n"
            envelope = self.queued(self.connection(intake), FROM + b" REQUIRETLS", data)
            self.assertEqual((envelope.requireTLS, envelope.tlsOptional), (True, False))
            self.assertNotIn("tlsOptional", self.queue.states[envelope.id])
            self.assertTrue(self.queue.messages[envelope.id].endswith(data))

    def test_splitAcrossWrites(self):
        """
        The field cut anywhere by the client's writes.
        """
        for pieces in (1, 3, 5):
            self.queue = MemoryQueue()
            envelope = self.queued(self.connection(), FROM, b"Subject: x\r\nTLS-Required:\r\n No\r\n\r\nhi\r\n", pieces)
            self.assertTrue(envelope.tlsOptional, pieces)

    def test_inBody(self):
        """
        In the body, it is ignored.
        """
        envelope = self.queued(self.connection(), FROM, b"Subject: x\r\n\r\nTLS-Required: No\r\n")
        self.assertFalse(envelope.tlsOptional)

    def test_noHopLimitWithoutPolicy(self):
        """
        The scan made when no header policy is configured refuses
        nothing: many C{Received:} fields pass.
        """
        data = b"Received: from a by b; now\r\n" * 120 + b"TLS-Required: No\r\n\r\nhi\r\n"
        envelope = self.queued(self.connection(), FROM, data)
        self.assertTrue(envelope.tlsOptional)

    def test_plaintextSession(self):
        """
        Without TLS, the relay still keeps C{TLS-Required: No}.
        """
        envelope = self.queued(self.connection(transportClass=STARTTLSTransport), FROM, b"TLS-Required: No\r\n\r\nhi\r\n")
        self.assertEqual((envelope.requireTLS, envelope.tlsOptional), (False, True))

    def test_durableQueue(self):
        """
        With the queue on disk: C{tlsOptional} is in the state file
        written at commit, and REQUIRETLS in the envelope line, both read
        back after a restart.
        """
        directory = self.mktemp()
        queue = Queue(directory, runInThread=lambda f, *a: defer.maybeDeferred(f, *a))
        optional = self.queued(self.connection(queue=queue), FROM, b"TLS-Required: No\r\n\r\nhi\r\n", queue=queue)
        again = Queue(directory, runInThread=lambda f, *a: defer.maybeDeferred(f, *a))
        again.recover()
        self.assertTrue(again.getEnvelope(optional.id).tlsOptional)
        queue.remove(optional.id)
        required = self.queued(self.connection(queue=queue), FROM + b" REQUIRETLS", b"TLS-Required: No\r\n\r\nhi\r\n", queue=queue)
        again = Queue(directory, runInThread=lambda f, *a: defer.maybeDeferred(f, *a))
        again.recover()
        found = again.getEnvelope(required.id)
        self.assertEqual((found.requireTLS, found.tlsOptional), (True, False))


# -- the client ------------------------------------------------------------------


EHLO_REQUIRETLS = b"250-mx.example\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 REQUIRETLS\r\n"
EHLO_PLAIN = b"250-mx.example\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"


class RefusalTests(SynchronousTestCase):
    """
    L{checkRequireTLS} over its inputs.
    """

    def test_table(self):
        """
        Refused only when the message has REQUIRETLS and the session is
        not under TLS or the server does not offer it.
        """
        offered = Extensions([(b"REQUIRETLS", ())])
        none = Extensions([(b"PIPELINING", ())])
        for requireTLS, secure, extensions, refused in [
            (False, False, none, False),
            (False, False, offered, False),
            (False, True, none, False),
            (False, True, offered, False),
            (True, True, offered, False),
            (True, True, none, True),
            (True, False, offered, True),
            (True, False, none, True),
        ]:
            refusal = checkRequireTLS(requireTLS, secure, extensions)
            if not refused:
                self.assertIsNone(refusal)
                continue
            self.assertIsInstance(refusal, Reply)
            self.assertEqual((refusal.code, refusal.status, refusal.isPermanent), (550, b"5.7.30", True))
            self.assertTrue(refusal.lines[0].startswith(b"REQUIRETLS support required"))

    def test_why(self):
        """
        The text says which condition failed.
        """
        self.assertIn(b"not under TLS", checkRequireTLS(True, False, {b"REQUIRETLS"}).lines[0])
        self.assertIn(b"does not offer", checkRequireTLS(True, True, set()).lines[0])

    def test_keywordCase(self):
        """
        The keyword as a server may spell it.
        """
        self.assertIsNone(checkRequireTLS(True, True, Extensions.fromLines([b"requireTLS"])))


def requireTLSMessage(requiretls: bool = True):
    return (MailFrom(Address(b"alice@example.org"), requiretls=requiretls), [b"bob@example.com"], b"Subject: x\r\n\r\nhi\r\n")


class ClientTests(SynchronousTestCase):
    """
    The client sends REQUIRETLS only to a server that offers it under TLS,
    and sends nothing of such a message otherwise.
    """

    def session(self, transport, messages):
        client = ESMTPTestClient(messages)
        session = ClientSession(client, transport)
        session.server(b"220 mx.example ESMTP\r\n")
        return client, session

    def test_mailCarriesRequireTLS(self):
        """
        Under TLS, to a server that offers it: C{MAIL FROM:<...>
        REQUIRETLS}.
        """
        client, session = self.session(ClientTLSTransport(), [requireTLSMessage()])
        sent = session.server(EHLO_REQUIRETLS)
        self.assertTrue(sent.startswith(b"MAIL FROM:<alice@example.org> REQUIRETLS\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"), sent)

    def test_serverWithoutRequireTLS(self):
        """
        Under TLS, to a server that does not offer it: no MAIL at all; the
        message is reported refused, C{550 5.7.30}, for its recipients.
        """
        client, session = self.session(ClientTLSTransport(), [requireTLSMessage()])
        sent = session.server(EHLO_PLAIN)
        self.assertEqual(sent, b"QUIT\r\n")
        [(code, resp, numOk, addresses)] = client.results
        self.assertEqual((code, numOk, addresses), (550, 0, []))
        self.assertTrue(resp.startswith(b"5.7.30 REQUIRETLS support required"), resp)

    def test_plaintextSession(self):
        """
        Without TLS, even a server that claims REQUIRETLS gets nothing of
        the message.
        """
        client, session = self.session(RecordingTransport(), [requireTLSMessage()])
        self.assertEqual(session.server(EHLO_REQUIRETLS), b"QUIT\r\n")
        [(code, resp, _, _)] = client.results
        self.assertEqual(code, 550)
        self.assertIn(b"5.7.30", resp)
        self.assertIn(b"not under TLS", resp)

    def test_offeredOnlyBeforeSTARTTLS(self):
        """
        What counts is the EHLO reply after STARTTLS: REQUIRETLS offered
        before TLS and not after is not offered.
        """
        client = ESMTPTestClient([requireTLSMessage()], contextFactory=object())
        session = ClientSession(client, TLSCapableTransport())
        session.server(b"220 mx.example ESMTP\r\n")
        self.assertEqual(session.server(b"250-mx.example\r\n250-STARTTLS\r\n250 REQUIRETLS\r\n"), b"STARTTLS\r\n")
        self.assertEqual(session.server(b"220 2.0.0 Go ahead\r\n"), b"EHLO client.example\r\n")
        self.assertEqual(session.server(EHLO_PLAIN), b"QUIT\r\n")
        self.assertEqual(client.results[0][0], 550)

    def test_afterSTARTTLS(self):
        """
        REQUIRETLS offered in the EHLO reply after STARTTLS: the message
        goes with it.
        """
        client = ESMTPTestClient([requireTLSMessage()], contextFactory=object())
        session = ClientSession(client, TLSCapableTransport())
        session.server(b"220 mx.example ESMTP\r\n")
        self.assertEqual(session.server(b"250-mx.example\r\n250 STARTTLS\r\n"), b"STARTTLS\r\n")
        session.server(b"220 2.0.0 Go ahead\r\n")
        self.assertTrue(session.server(EHLO_REQUIRETLS).startswith(b"MAIL FROM:<alice@example.org> REQUIRETLS\r\n"))

    def test_otherMessagesStillSent(self):
        """
        A message refused for REQUIRETLS does not hold back the next one,
        which does not need it.
        """
        client, session = self.session(ClientTLSTransport(), [requireTLSMessage(), requireTLSMessage(False)])
        sent = session.server(EHLO_PLAIN)
        self.assertTrue(sent.startswith(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"), sent)
        self.assertEqual(client.results[0][0], 550)

    def test_notRequired(self):
        """
        A message without it is sent without it, to a server that offers
        it or not.
        """
        for ehlo in (EHLO_REQUIRETLS, EHLO_PLAIN):
            client, session = self.session(ClientTLSTransport(), [requireTLSMessage(False)])
            self.assertTrue(session.server(ehlo).startswith(b"MAIL FROM:<alice@example.org>\r\n"))


@implementer(IRelayOwner)
class Owner:
    """
    An owner that keeps the replies of each job.
    """

    def __init__(self) -> None:
        self.jobs = []
        self.answered = []
        self.endings = []

    def configureRelayer(self, relayer) -> None:
        pass

    def jobAnswered(self, job, replies, dsn) -> list:
        self.answered.append((job, replies))
        return []

    def moreJobs(self) -> list:
        return []

    def park(self, relayer) -> bool:
        return False

    def ended(self, reason, connected, tlsFailed) -> None:
        self.endings.append(reason)


class ManagedRelayerTests(SynchronousTestCase):
    """
    A managed relayer sends a queued message's REQUIRETLS on.
    """

    def job(self, requireTLS: bool) -> Job:
        relay = RelayHarness(self, start=False)
        envelope = relay.enqueue([b"bob@example.com"], requireTLS=requireTLS)
        return Job(envelope, list(envelope.recipients), "example.com", opener=lambda: io.BytesIO(b"Subject: x\r\n\r\nhi\r\n"))

    def relayer(self, job, transport):
        owner = Owner()
        relayer = ESMTPManagedRelayer([job], owner, None, None, "relay.test")
        relayer._owner = owner
        relayer.factory = None
        session = ClientSession(relayer, transport)
        session.server(b"220 mx.example ESMTP\r\n")
        return owner, session

    def test_jobMailFrom(self):
        """
        A job's MAIL command has the envelope's REQUIRETLS.
        """
        self.assertTrue(self.job(True).mailFrom().requiretls)
        self.assertFalse(self.job(False).mailFrom().requiretls)

    def test_sent(self):
        owner, session = self.relayer(self.job(True), ClientTLSTransport())
        self.assertTrue(session.server(EHLO_REQUIRETLS).startswith(b"MAIL FROM:<sender@origin.test> REQUIRETLS\r\n"))

    def test_refused(self):
        """
        To a server without REQUIRETLS: nothing sent, and the recipient's
        reply is the permanent C{550 5.7.30}.
        """
        owner, session = self.relayer(self.job(True), ClientTLSTransport())
        self.assertEqual(session.server(EHLO_PLAIN), b"QUIT\r\n")
        [(job, replies)] = owner.answered
        reply = replies[b"bob@example.com"]
        self.assertEqual((reply.code, reply.status, reply.isPermanent), (550, b"5.7.30", True))


class RelayTests(SynchronousTestCase):
    """
    The relay's attempt at a REQUIRETLS message over a session that cannot
    carry it, and its report.
    """

    def test_bounced(self):
        """
        Without TLS (the relay's policy is C{none}), to a server that
        even claims REQUIRETLS: no MAIL is sent for the message, its
        recipient fails with C{5.7.30}, and the sender's report is queued
        with REQUIRETLS, without the message's body.
        """
        relay = RelayHarness(self)
        queued = recordQueued(relay.queue)
        envelope = relay.enqueue([b"rcpt@example.com"], requireTLS=True)
        relay.turn()
        servers = []
        for _, _, factory in relay.connections():
            servers.append(Scripted(EHLO=b"250-mx.test\r\n250 REQUIRETLS"))
            relay.serve(factory, servers[-1])
        self.assertEqual([c for server in servers for c in server.commands if c.startswith(b"MAIL")], [])
        self.assertEqual([r.state for r in envelope.recipients], [FAILED])
        self.assertEqual(envelope.recipients[0].lastReply.status, b"5.7.30")
        [(bounce, data)] = [(e, d) for e, d in queued if e.sender == b""]
        self.assertEqual([r.address for r in bounce.recipients], [SENDER])
        self.assertTrue(bounce.requireTLS)
        [fields] = statusFields(email.message_from_bytes(data))
        self.assertEqual((fields["Action"], fields["Status"]), ("failed", "5.7.30"))
        self.assertIn(b"Subject: hello", data)
        self.assertNotIn(b"Body line", data)

    def test_reportWithoutRequireTLS(self):
        """
        A report on a message without REQUIRETLS is as before: without
        it, with the message's body.
        """
        relay = RelayHarness(self)
        queued = recordQueued(relay.queue)
        relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=b"550 5.1.1 No such user"))
        [(bounce, data)] = [(e, d) for e, d in queued if e.sender == b""]
        self.assertFalse(bounce.requireTLS)
        self.assertIn(b"Body line", data)


def recordQueued(queue: MemoryQueue) -> list:
    """
    Keep what is committed into C{queue}, also once it is gone from it.

    @return: a list that gets C{(envelope, data)} for each message.
    """
    queued = []
    newMessage = queue.newMessage

    def recording(envelope):
        spool = newMessage(envelope)
        chunks = []
        write, commit = spool.write, spool.commit

        def recordWrite(data):
            chunks.append(bytes(data))
            write(data)

        def recordCommit():
            queued.append((envelope, b"".join(chunks)))
            return commit()

        spool.write, spool.commit = recordWrite, recordCommit
        return spool

    queue.newMessage = recording
    return queued


# -- over a real TLS session ----------------------------------------------------------


class _Client(ESMTPTestClient):
    """
    A test client that tells when its connection is gone.
    """

    def __init__(self, *args, **kw) -> None:
        ESMTPTestClient.__init__(self, *args, **kw)
        self.closed = defer.Deferred()

    def connectionLost(self, reason=None) -> None:
        ESMTPTestClient.connectionLost(self, reason)
        self.closed.callback(None)


class LoopbackTests(TestCase):
    """
    A mailproto client and the relay's intake over STARTTLS on 127.0.0.1,
    with certificates of a test authority.
    """

    def setUp(self):
        if trustme is None:
            raise self.skipTest("trustme is not installed")

    @defer.inlineCallbacks
    def test_queuedWithRequireTLS(self):
        """
        Over TLS, a REQUIRETLS message is taken and queued with
        C{requireTLS} (its C{TLS-Required: No} ignored); the next message
        of the session, without it, is queued with C{tlsOptional}.
        """
        from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS

        authority = trustme.CA()
        serverOptions = PrivateCertificate.loadPEM(authority.issue_cert("mx.example").private_key_and_cert_chain_pem.bytes()).options()
        queue = MemoryQueue()
        serverFactory = ESMTPFactory(
            deliveryFactory=QueueDeliveryFactory(queue), domain=b"mx.example", contextFactory=serverOptions, requireTLS=True
        )
        port = reactor.listenTCP(0, serverFactory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        data = b"Subject: x\r\nTLS-Required: No\r\n\r\nhi\r\n"
        client = _Client(
            [(MailFrom(Address(b"alice@example.org"), requiretls=True), [b"bob@example.com"], data), (b"alice@example.org", [b"carol@example.com"], data)],
            contextFactory=optionsForClientTLS("mx.example", trustRoot=Certificate.loadPEM(authority.cert_pem.bytes())),
        )
        client.requireTransportSecurity = True
        client.timeout = 10
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        yield client.closed
        yield defer.ensureDeferred(noConnectionsLeft(self))
        self.assertEqual([result[0] for result in client.results], [250, 250], client.results)
        self.assertTrue(client._tlsMode)
        self.assertEqual(client.errors, [])
        envelopes = {queue.getEnvelope(i).recipients[0].address: queue.getEnvelope(i) for i in queue.ids()}
        required, optional = envelopes[b"bob@example.com"], envelopes[b"carol@example.com"]
        self.assertEqual((required.requireTLS, required.tlsOptional), (True, False))
        self.assertEqual((optional.requireTLS, optional.tlsOptional), (False, True))
