# -*- test-case-name: mailproto.test.test_handler -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._handler}: mail delivered to a one-method handler
(C{processMessage}), to a streaming handler, and through the optional
validators; on a L{StringTransport} for the protocol logic, then over
loopback TCP from smtplib, swaks and Postfix's smtp-source.
"""

from __future__ import annotations

import hashlib
import os
import smtplib

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from mailproto import _handler
from mailproto.interfaces import IMessageDelivery, IMessageDeliveryFactory, IMessageStream
from mailproto.smtp import (
    ESMTPFactory,
    HandlerDeliveryFactory,
    IEnvelopeValidator,
    IMessageHandler,
    IMessageReceiver,
    IStreamingMessageHandler,
    LMTPFactory,
    Peer,
    SMTPBadRcpt,
    SMTPFactory,
    SMTPServerError,
    handlerFactory,
)
from mailproto.test._loopback import noConnectionsLeft
from mailproto.test._peers import tool
from mailproto.wire import Reply

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
SERVER = IPv4Address("TCP", "192.0.2.1", 25)

ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"


class Session:
    """
    A server protocol on a L{StringTransport}, with a fake clock.
    """

    def __init__(self, factory) -> None:
        factory.clock = Clock()
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
        self.proto.makeConnection(self.transport)
        self.take()

    def take(self) -> list[bytes]:
        """
        @return: the reply lines sent since last time.
        """
        lines = self.transport.value().split(b"\r\n")
        self.transport.clear()
        return lines[:-1]

    def send(self, data: bytes) -> list[bytes]:
        """
        @return: the last line of each reply to C{data}.
        """
        self.proto.dataReceived(data)
        return [line for line in self.take() if line[3:4] == b" "]

    def codes(self, data: bytes) -> list[bytes]:
        """
        @return: the code and enhanced status code of each reply to
            C{data}, as C{b"250 2.1.0"}.
        """
        return [b" ".join(line.split(b" ")[:2]) if line[4:5].isdigit() else line[:3] for line in self.send(data)]


@implementer(IMessageHandler)
class Recorder:
    """
    A handler that keeps each call and answers with C{answer}.

    @ivar calls: C{(peer, mailFrom, rcptTos, data)} for each message.
    @ivar answer: what C{processMessage} returns (called with no
        arguments if callable).
    """

    def __init__(self, answer=None) -> None:
        self.calls = []
        self.answer = answer

    def processMessage(self, peer, mailFrom, rcptTos, data):
        self.calls.append((peer, mailFrom, rcptTos, data))
        return self.answer() if callable(self.answer) else self.answer


@implementer(IMessageHandler, IEnvelopeValidator)
class Validating(Recorder):
    """
    A L{Recorder} with validators that answer from dictionaries (accepting
    whatever they do not name).
    """

    def __init__(self, senders=None, recipients=None) -> None:
        super().__init__()
        self.senders = senders or {}
        self.recipients = recipients or {}
        self.asked = []

    def validateSender(self, peer, address):
        self.asked.append(("sender", peer, address))
        return self.senders.get(address)

    def validateRecipient(self, peer, address):
        self.asked.append(("recipient", peer, address))
        answer = self.recipients.get(address)
        return answer() if callable(answer) else answer


class InterfaceTests(SynchronousTestCase):
    """
    The objects provide the interfaces they declare, and a handler must
    declare its own.
    """

    def test_objects(self):
        """
        The factory, the delivery of a transaction and the objects of a
        message provide their interfaces.
        """
        factory = HandlerDeliveryFactory(Recorder())
        verifyObject(IMessageDeliveryFactory, factory)
        transaction = factory.getMessageDelivery()
        verifyObject(IMessageDelivery, transaction)
        verifyClass(IMessageStream, _handler._Message)
        verifyClass(IMessageStream, _handler._Copy)
        verifyClass(IMessageReceiver, _handler._Collector)
        verifyClass(IMessageHandler, Recorder)
        verifyClass(IEnvelopeValidator, Validating)

    def test_undeclared(self):
        """
        A handler that declares neither handler interface is refused at
        once, with what to do about it.
        """

        class Plain:
            def processMessage(self, peer, mailFrom, rcptTos, data):
                pass

        e = self.assertRaises(TypeError, HandlerDeliveryFactory, Plain())
        self.assertIn("@implementer", str(e))

    def test_handlerFactory(self):
        """
        L{handlerFactory} makes an L{ESMTPFactory} (or the class asked for)
        with the options given and a L{HandlerDeliveryFactory}.
        """
        handler = Recorder()
        factory = handlerFactory(handler, domain=b"mx.test", maxMessageSize=1000)
        self.assertIsInstance(factory, ESMTPFactory)
        self.assertEqual((factory.domain, factory.maxMessageSize), (b"mx.test", 1000))
        self.assertIs(factory.deliveryFactory.handler, handler)
        self.assertIsInstance(handlerFactory(handler, LMTPFactory), LMTPFactory)


class MessageTests(SynchronousTestCase):
    """
    An L{IMessageHandler} gets each message once, whole, with its
    envelope; what it returns is the reply.
    """

    def session(self, handler, factoryClass=ESMTPFactory, **options):
        return Session(handlerFactory(handler, factoryClass, domain=b"mx.test", **options))

    def test_accepted(self):
        """
        A message for three recipients reaches the handler once, with all
        of them, the sender, the client, and the data as sent, dots
        unstuffed, with CRLF line ends and no trace header; C{None} gives
        C{250}.
        """
        handler = Recorder()
        s = self.session(handler)
        replies = s.codes(
            b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\n"
            b"RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nRCPT TO:<d@example.org>\r\n"
            b"DATA\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"
        )
        self.assertEqual(replies, [b"250", b"250 2.1.0", b"250 2.1.5", b"250 2.1.5", b"250 2.1.5", b"354", b"250 2.0.0"])
        self.assertEqual(
            handler.calls,
            [(Peer("192.0.2.7", "client.test"), "a@example.com", ["b@example.com", "c@example.com", "d@example.org"],
              b"Subject: hi\r\n\r\n.dot\r\nbody\r\n")],
        )

    def test_noHeaders(self):
        """
        A message without a header section arrives as sent: nothing is put
        in front of it.
        """
        handler = Recorder()
        s = self.session(handler)
        s.send(ENVELOPE + b"DATA\r\njust a body\r\n.\r\n")
        self.assertEqual(handler.calls[0][3], b"just a body\r\n")

    def test_nullSenderAndEmpty(self):
        """
        The null sender is C{""}; an empty message is C{b""}.
        """
        handler = Recorder()
        s = self.session(handler)
        self.assertEqual(
            s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n.\r\n")[-1],
            b"250 2.0.0 Delivery in progress",
        )
        self.assertEqual(handler.calls, [(Peer("192.0.2.7", "c"), "", ["b@example.com"], b"")])

    def test_transactions(self):
        """
        Each transaction of a connection is its own message, with only its
        own recipients; a transaction reset before its data reaches nobody.
        """
        handler = Recorder()
        s = self.session(handler)
        s.send(ENVELOPE + b"DATA\r\none\r\n.\r\n")
        s.send(b"MAIL FROM:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nRSET\r\n")
        s.send(b"MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\ntwo\r\n.\r\n")
        self.assertEqual(
            [(m, r, d) for p, m, r, d in handler.calls],
            [("a@example.com", ["b@example.com"], b"one\r\n"), ("c@example.com", ["d@example.com"], b"two\r\n")],
        )

    def test_bdat(self):
        """
        A message in BDAT chunks (RFC 3030) arrives whole, once.
        """
        handler = Recorder()
        s = self.session(handler)
        replies = s.send(ENVELOPE + b"RCPT TO:<c@example.com>\r\nBDAT 6\r\nline\r\nBDAT 3 LAST\r\n.\r\n")
        self.assertEqual(replies[-2:], [b"250 2.0.0 6 octets received", b"250 2.0.0 Delivery in progress"])
        self.assertEqual(handler.calls[0][2:], (["b@example.com", "c@example.com"], b"line\r\n.\r\n"))

    def test_refusals(self):
        """
        A refusal the handler returns or raises is the reply: an
        L{SMTPServerError}, a L{Reply}, or a status line as C{str} or
        C{bytes}, with or without an enhanced status code; 4xx as well as
        5xx.  Nothing is logged.
        """
        cases = [
            (SMTPServerError(554, "No thanks", b"5.7.1"), b"554 5.7.1 No thanks"),
            (Reply(452, [b"Mailbox full"], b"4.2.2"), b"452 4.2.2 Mailbox full"),
            ("550 5.1.1 No such user", b"550 5.1.1 No such user"),
            (b"451 Try again later", b"451 4.0.0 Try again later"),
            ("554", b"554 5.0.0"),
        ]
        for answer, expected in cases:
            s = self.session(Recorder(answer))
            replies = s.send(ENVELOPE + b"DATA\r\nx\r\n.\r\n")
            self.assertEqual(replies[-1], expected, answer)

        def raising():
            raise SMTPBadRcpt("b@example.com", 550, "Gone away")

        s = self.session(Recorder(raising))
        self.assertEqual(s.send(ENVELOPE + b"DATA\r\nx\r\n.\r\n")[-1], b"550 5.1.1 Gone away")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_acceptedWithReply(self):
        """
        C{True}, a 2xx L{Reply} or a 2xx status line accept the message
        (the server sends its own C{250}).
        """
        for answer in [True, Reply(250, [b"OK"]), "250 OK", b"250 2.0.0 Queued"]:
            handler = Recorder(answer)
            s = self.session(handler)
            self.assertEqual(s.send(ENVELOPE + b"DATA\r\nx\r\n.\r\n")[-1], b"250 2.0.0 Delivery in progress")
            self.assertEqual(len(handler.calls), 1)

    def test_handlerRaises(self):
        """
        A handler that raises anything but an L{SMTPServerError}, for a
        message to two recipients: the client gets C{451 4.3.0}, and the
        error is logged once, with its traceback; the connection goes on.
        """
        s = self.session(Recorder(lambda: 1 / 0))
        replies = s.send(ENVELOPE + b"RCPT TO:<c@example.com>\r\nDATA\r\nx\r\n.\r\n")
        self.assertEqual(replies[-1], b"451 4.3.0 Requested action aborted: local error in processing")
        self.assertNotIn(b"ZeroDivision", s.transport.value())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(s.send(b"NOOP\r\n"), [b"250 2.0.0 OK"])

    def test_badAnswers(self):
        """
        An answer that is neither an acceptance nor a refusal (a number, a
        3xx reply, text that is no status line) is an error of the handler:
        logged once, C{451 4.3.0} for the client.
        """
        for answer, error in [(42, TypeError), ("354 go ahead", ValueError), ("no thanks", ValueError)]:
            s = self.session(Recorder(answer))
            self.assertEqual(s.send(ENVELOPE + b"DATA\r\nx\r\n.\r\n")[-1][:9], b"451 4.3.0", answer)
            self.assertEqual(len(self.flushLoggedErrors(error)), 1, answer)

    def test_deferred(self):
        """
        A C{Deferred} holds the reply until it fires, with the acceptance or
        the refusal; later commands wait their turn.
        """
        pending = []
        s = self.session(Recorder(lambda: pending.append(defer.Deferred()) or pending[-1]))
        self.assertEqual(s.send(ENVELOPE + b"DATA\r\nx\r\n.\r\nNOOP\r\n")[-1], b"354 Continue")
        pending[0].callback(None)
        self.assertEqual(s.take(), [b"250 2.0.0 Delivery in progress", b"250 2.0.0 OK"])
        s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\ny\r\n.\r\n")
        pending[1].callback("452 4.3.1 Insufficient system storage")
        self.assertEqual(s.take(), [b"452 4.3.1 Insufficient system storage"])
        s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nz\r\n.\r\n")
        pending[2].errback(RuntimeError("disk on fire"))
        self.assertEqual(s.take(), [b"451 4.3.0 Requested action aborted: local error in processing"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_coroutine(self):
        """
        A handler written C{async def} works as one returning a
        C{Deferred}.
        """
        gate = defer.Deferred()

        @implementer(IMessageHandler)
        class Async:
            async def processMessage(self, peer, mailFrom, rcptTos, data):
                answer = await gate
                return answer

        s = self.session(Async())
        self.assertEqual(s.send(ENVELOPE + b"DATA\r\nx\r\n.\r\n")[-1], b"354 Continue")
        gate.callback("550 5.7.1 Not today")
        self.assertEqual(s.take(), [b"550 5.7.1 Not today"])

    def test_lmtp(self):
        """
        Over LMTP the handler still gets the message once; each recipient
        gets its outcome as its own reply.
        """
        handler = Recorder("452 4.2.2 Over quota")
        s = self.session(handler, LMTPFactory)
        replies = s.send(
            b"LHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
            b"DATA\r\nx\r\n.\r\n"
        )
        self.assertEqual(replies[-2:], [b"452 4.2.2 Over quota", b"452 4.2.2 Over quota"])
        self.assertEqual(len(handler.calls), 1)
        handler.answer = None
        replies = s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
        self.assertEqual(replies[-1], b"250 2.1.5 <b@example.com> Delivered")

    def test_smtp(self):
        """
        A plain SMTP server (HELO) delivers to a handler too.
        """
        handler = Recorder()
        s = self.session(handler, SMTPFactory)
        replies = s.send(b"HELO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
        self.assertEqual(replies[-1][:3], b"250")
        self.assertEqual(handler.calls[0][1:], ("a@example.com", ["b@example.com"], b"x\r\n"))

    def test_tooBig(self):
        """
        A message over the server's size limit is refused by the server
        and never reaches the handler.
        """
        handler = Recorder()
        s = self.session(handler, maxMessageSize=100)
        self.assertEqual(s.send(ENVELOPE + b"DATA\r\n" + b"x" * 60 + b"\r\n" * 30 + b".\r\n")[-1][:9], b"552 5.3.4")
        self.assertEqual(handler.calls, [])

    def test_connectionLost(self):
        """
        A client that goes away in the middle of the data: nothing reaches
        the handler.
        """
        handler = Recorder()
        s = self.session(handler)
        s.send(ENVELOPE + b"DATA\r\nhalf a mess")
        s.proto.connectionLost(None)
        self.assertEqual(handler.calls, [])


class ValidatorTests(SynchronousTestCase):
    """
    A handler that provides L{IEnvelopeValidator} decides on each sender
    and recipient.
    """

    def session(self, handler):
        return Session(handlerFactory(handler, domain=b"mx.test"))

    def test_refuseRecipients(self):
        """
        C{False} refuses a recipient with C{550 5.1.1}; a status line with
        its own reply; the message goes to the recipients accepted, and the
        validators saw the client.
        """
        handler = Validating(recipients={"x@example.com": False, "y@example.com": "450 4.2.1 Busy, later"})
        s = self.session(handler)
        replies = s.codes(
            b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.com>\r\n"
            b"RCPT TO:<y@example.com>\r\nRCPT TO:<z@example.com>\r\nDATA\r\nx\r\n.\r\n"
        )
        self.assertEqual(
            replies[1:],
            [b"250 2.1.0", b"550 5.1.1", b"450 4.2.1", b"250 2.1.5", b"354", b"250 2.0.0"],
        )
        peer = Peer("192.0.2.7", "client.test")
        self.assertEqual(handler.calls, [(peer, "a@example.com", ["z@example.com"], b"x\r\n")])
        self.assertEqual(handler.asked[0], ("sender", peer, "a@example.com"))
        self.assertEqual([a for what, p, a in handler.asked[1:]], ["x@example.com", "y@example.com", "z@example.com"])

    def test_refuseSender(self):
        """
        C{False} refuses a sender with C{550 5.7.1}; an L{SMTPServerError}
        with its own reply; the transaction then needs a new C{MAIL}.
        """
        handler = Validating(senders={"spam@example.com": False, "slow@example.com": SMTPServerError(421, "Later", b"4.7.0")})
        s = self.session(handler)
        replies = s.codes(
            b"EHLO c\r\nMAIL FROM:<spam@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"MAIL FROM:<slow@example.com>\r\nMAIL FROM:<ok@example.com>\r\nRCPT TO:<b@example.com>\r\n"
        )
        self.assertEqual(replies[1:], [b"550 5.7.1", b"503 5.5.1", b"421 4.7.0", b"250 2.1.0", b"250 2.1.5"])

    def test_deferredValidator(self):
        """
        A validator's C{Deferred}: the reply waits for it.
        """
        gate = defer.Deferred()
        handler = Validating(recipients={"b@example.com": lambda: gate})
        s = self.session(handler)
        self.assertEqual(s.codes(ENVELOPE + b"DATA\r\n")[-1], b"250 2.1.0")
        gate.callback(SMTPServerError(550, "Unknown here", b"5.1.1"))
        self.assertEqual(s.take(), [b"550 5.1.1 Unknown here", b"503 5.5.1 Must have valid receiver and originator"])

    def test_validatorRaises(self):
        """
        A validator that raises something unexpected: C{451 4.3.0}, logged
        once.
        """
        handler = Validating(recipients={"b@example.com": lambda: {}["nothing"]})
        s = self.session(handler)
        self.assertEqual(s.send(ENVELOPE)[-1][:9], b"451 4.3.0")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


@implementer(IMessageReceiver)
class CountingReceiver:
    """
    A receiver that keeps a digest of the data and how big its chunks
    were, never the data.
    """

    def __init__(self, answer=None) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.largestChunk = 0
        self.ended = False
        self.aborted = False
        self.answer = answer

    def dataReceived(self, data):
        self.digest.update(data)
        self.size += len(data)
        self.largestChunk = max(self.largestChunk, len(data))

    def endMessage(self):
        self.ended = True
        return self.answer

    def abortMessage(self):
        self.aborted = True


@implementer(IStreamingMessageHandler)
class Streaming:
    """
    A streaming handler that gives a L{CountingReceiver} to each message.
    """

    def __init__(self, refuse=None) -> None:
        self.started = []
        self.receivers = []
        self.refuse = refuse

    def startMessage(self, peer, mailFrom, rcptTos):
        self.started.append((peer, mailFrom, rcptTos))
        if self.refuse is not None:
            return self.refuse
        self.receivers.append(CountingReceiver())
        return self.receivers[-1]


class StreamingTests(SynchronousTestCase):
    """
    An L{IStreamingMessageHandler} gets each message in chunks, as it
    arrives, and nothing keeps it whole.
    """

    def test_largeMessage(self):
        """
        A 20 MiB message to two recipients, fed in 64 KiB reads: the
        receiver gets every octet once, in chunks no bigger than a read;
        the delivery's objects keep none of it.
        """
        handler = Streaming()
        transactions = []
        deliveryFactory = HandlerDeliveryFactory(handler)
        deliveryFactory.getMessageDelivery = lambda: transactions.append(_handler._Transaction(handler)) or transactions[-1]
        s = Session(ESMTPFactory(deliveryFactory=deliveryFactory, domain=b"mx.test", maxMessageSize=64 * 1024 * 1024))
        s.send(ENVELOPE + b"RCPT TO:<c@example.com>\r\nDATA\r\n")
        [(peer, mailFrom, rcptTos)] = handler.started
        self.assertEqual((mailFrom, rcptTos), ("a@example.com", ["b@example.com", "c@example.com"]))
        line = b"%s\r\n" % (b"0123456789abcdef" * 4)
        block = line * 1024
        expected = hashlib.sha256()
        read = 65536
        message = transactions[0]._message
        sent = 0
        while sent < 20 * 1024 * 1024:
            for i in range(0, len(block), read):
                s.proto.dataReceived(block[i : i + read])
            expected.update(block)
            sent += len(block)
            # Nothing is kept on the way: the first recipient's message
            # holds only its receiver.
            self.assertEqual(set(vars(message)), {"_transaction", "_outcome", "_receiver"})
        self.assertEqual(s.send(b".\r\n")[-1], b"250 2.0.0 Delivery in progress")
        [receiver] = handler.receivers
        self.assertEqual((receiver.size, receiver.digest.hexdigest()), (sent, expected.hexdigest()))
        self.assertLessEqual(receiver.largestChunk, read)
        self.assertTrue(receiver.ended)
        self.assertFalse(receiver.aborted)

    def test_refuseAtData(self):
        """
        C{startMessage} may refuse the message: that is the reply to
        C{DATA}, and the client's data is not read as a message.
        """
        handler = Streaming(refuse="554 5.3.0 Not now")
        s = Session(handlerFactory(handler, domain=b"mx.test"))
        self.assertEqual(s.send(ENVELOPE + b"DATA\r\n")[-1], b"554 5.3.0 Not now")
        self.assertEqual(s.send(b"NOOP\r\n"), [b"250 2.0.0 OK"])

    def test_refuseAtEnd(self):
        """
        C{endMessage}'s answer is the reply to the end of the data.
        """
        handler = Streaming()
        s = Session(handlerFactory(handler, domain=b"mx.test"))
        s.send(ENVELOPE + b"DATA\r\n")
        handler.receivers[0].answer = defer.succeed(SMTPServerError(552, "Too much", b"5.2.2"))
        self.assertEqual(s.send(b"x\r\n.\r\n"), [b"552 5.2.2 Too much"])

    def test_aborted(self):
        """
        A message the server refuses while it comes in (over the size
        limit), and one whose client goes away: the receiver is told,
        once, and never asked to end it.
        """
        handler = Streaming()
        s = Session(handlerFactory(handler, domain=b"mx.test", maxMessageSize=100))
        self.assertEqual(s.send(ENVELOPE + b"DATA\r\n" + b"x" * 80 + b"\r\n" * 20 + b".\r\n")[-1][:9], b"552 5.3.4")
        s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nabc\r\n")
        s.proto.connectionLost(None)
        self.assertEqual([(r.aborted, r.ended) for r in handler.receivers], [(True, False), (True, False)])


# -- over loopback TCP ---------------------------------------------------


class LoopbackTests(TestCase):
    """
    Real clients, nobody here wrote, sending to a handler's server on
    127.0.0.1: byte-exact data, the envelope as sent.
    """

    timeout = 120

    def listen(self, handler, **options):
        """
        Listen for the duration of the test.

        @return: the port number.
        """
        port = reactor.listenTCP(0, handlerFactory(handler, domain=b"mx.test", **options), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(noConnectionsLeft, self)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_smtplib(self):
        """
        Python's smtplib, in a thread: a message with dots and 8-bit
        octets, to two recipients (one refused by the validator).
        """
        handler = Validating(recipients={"x@example.com": "550 5.1.1 No such user here"})
        port = self.listen(handler)
        message = b"Subject: smtplib\r\n\r\n.\r\n..two\r\nGr\xc3\xbc\xc3\x9fe\r\nend\r\n"

        def send():
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as client:
                return client.sendmail("a@example.com", ["b@example.com", "x@example.com"], message)

        refused = yield deferToThread(send)
        self.assertEqual(refused, {"x@example.com": (550, b"5.1.1 No such user here")})
        [(peer, mailFrom, rcptTos, data)] = handler.calls
        self.assertEqual((peer, mailFrom, rcptTos), (Peer("127.0.0.1", "client.test"), "a@example.com", ["b@example.com"]))
        self.assertEqual(data, message)

    @defer.inlineCallbacks
    def test_smtplibRefused(self):
        """
        smtplib gets the handler's refusal as its C{SMTPDataError}.
        """
        port = self.listen(Recorder("554 5.7.1 Rejected by policy"))

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
                try:
                    client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
                except smtplib.SMTPDataError as e:
                    return e.smtp_code, e.smtp_error

        self.assertEqual((yield deferToThread(send)), (554, b"5.7.1 Rejected by policy"))

    @defer.inlineCallbacks
    def test_swaks(self):
        """
        swaks, pipelining, to two recipients: one message, the data as
        swaks sent it, LF turned into CRLF.
        """
        swaks = tool("swaks")
        handler = Recorder()
        port = self.listen(handler)
        data = "Subject: swaks\n\n.\n..two\nGrüße\nend"
        out, err, code = yield _run(
            swaks,
            ["--server", f"127.0.0.1:{port}", "--helo", "client.test", "--pipeline", "--from", "a@example.com",
             "--to", "b@example.com,c@example.com", "--timeout", "20", "--data", data],
        )
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"<-  250 2.0.0 Delivery in progress", out)
        [(peer, mailFrom, rcptTos, received)] = handler.calls
        self.assertEqual(
            (peer, mailFrom, rcptTos), (Peer("127.0.0.1", "client.test"), "a@example.com", ["b@example.com", "c@example.com"])
        )
        self.assertEqual(received, data.encode("utf-8").replace(b"\n", b"\r\n") + b"\r\n")

    @defer.inlineCallbacks
    def test_swaksStreaming(self):
        """
        swaks sends a 2 MiB message to a streaming handler: it arrives
        whole, in chunks.
        """
        swaks = tool("swaks")
        handler = Streaming()
        port = self.listen(handler)
        body = b"".join(b"line %07d of the message\r\n" % i for i in range(80000))
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"Subject: big\r\n\r\n" + body)
        out, err, code = yield _run(
            swaks,
            ["--server", f"127.0.0.1:{port}", "--from", "a@example.com", "--to", "b@example.com", "--timeout", "20",
             "--data", path, "--suppress-data"],
        )
        self.assertEqual(code, 0, out + err)
        [receiver] = handler.receivers
        # swaks ends the data with CRLF.CRLF whatever its last line: one
        # empty line more.
        expected = b"Subject: big\r\n\r\n" + body + b"\r\n"
        self.assertEqual((receiver.size, receiver.digest.hexdigest()), (len(expected), hashlib.sha256(expected).hexdigest()))
        self.assertLess(receiver.largestChunk, 1024 * 1024)

    @defer.inlineCallbacks
    def test_smtpSource(self):
        """
        Postfix's smtp-source (HELO, no pipelining), twelve messages of
        three recipients each, several transactions per connection: twelve
        calls, each with the three recipients and smtp-source's message
        whole (its headers, a body of C{-l} octets and a last CRLF).
        """
        smtpSource = tool("smtp-source")
        handler = Recorder()
        port = self.listen(handler)
        out, err, code = yield _run(
            smtpSource,
            ["-M", "client.test", "-f", "from@example.com", "-t", "to@example.com", "-d", "-s", "2", "-m", "12",
             "-r", "3", "-l", "500", f"127.0.0.1:{port}"],
        )
        self.assertEqual(code, 0, out + err)
        self.assertEqual(len(handler.calls), 12)
        for peer, mailFrom, rcptTos, data in handler.calls:
            self.assertEqual((peer, mailFrom), (Peer("127.0.0.1", "client.test"), "from@example.com"))
            self.assertEqual(len(rcptTos), 3)
            header, separator, body = data.partition(b"\r\n\r\n")
            self.assertTrue(header.startswith(b"From: <from@example.com>\r\n"), header)
            self.assertEqual((len(body) - 2, body[-2:]), (500, b"\r\n"))


def _run(executable, args):
    """
    Run a program (the test's timeout stops a program that hangs).

    @return: a L{Deferred} firing with C{(stdout, stderr, exit code)}.
    """
    return getProcessOutputAndValue(executable, args, env=dict(os.environ))
