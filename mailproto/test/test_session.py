# -*- test-case-name: mailproto.test.test_session -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._session} (public as L{mailproto.client}): the
protocol's logic on a C{StringTransport} with a L{Clock} (every command
and its reply, hostile servers, dot-stuffing across pieces, CR/LF
injection), then interoperability over loopback with servers nobody here
wrote: aiosmtpd (STARTTLS, AUTH), Postfix's smtp-sink, and mailproto's
LMTP server over a UNIX socket.
"""

from __future__ import annotations

import base64
import hmac
import io
import os
import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import directlyProvides

from mailproto import client
from mailproto._data import stuff
from mailproto._session import CHUNK_SIZE, SMTPSession
from mailproto.smtp import LMTPFactory
from mailproto.testing import MemoryDelivery

EHLO_REPLY = (
    b"250-mx.example Hello\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 1000000\r\n"
    b"250-STARTTLS\r\n"
    b"250-CHUNKING\r\n"
    b"250-AUTH LOGIN PLAIN CRAM-MD5\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)


class _TLSTransport(StringTransport):
    """
    A C{StringTransport} that records C{startTLS}.
    """

    tlsStarted = None

    def startTLS(self, contextFactory):
        self.tlsStarted = contextFactory
        directlyProvides(self, ISSLTransport)


class SessionTestsMixin:
    """
    A session on a C{StringTransport}, and helpers to play the server.
    """

    def connect(self, lmtp=False, greeting=b"220 mx.example ESMTP\r\n", tls=False, timeout=30):
        self.clock = Clock()
        self.transport = _TLSTransport()
        if tls:
            directlyProvides(self.transport, ISSLTransport)
        self.session = SMTPSession(self.clock, timeout=timeout, hostname="mx.example", lmtp=lmtp)
        self.session.makeConnection(self.transport)
        self.greeted = self.result(self.session.greeted)
        if greeting is not None:
            self.session.dataReceived(greeting)
        return self.session

    def ready(self, lmtp=False, tls=False):
        """
        A greeted session that said EHLO.
        """
        session = self.connect(lmtp=lmtp, tls=tls)
        d = self.result(session.ehlo("client.example"))
        self.reply(EHLO_REPLY)
        self.assertEqual(d[0].code, 250)
        self.transport.clear()
        return session

    def result(self, d):
        """
        @return: a list that gets C{d}'s result (or L{Failure}).
        """
        box = []
        d.addBoth(box.append)
        return box

    def reply(self, data):
        self.session.dataReceived(data)

    def sent(self):
        value = self.transport.value()
        self.transport.clear()
        return value

    def assertReply(self, box, code):
        self.assertEqual(len(box), 1, box)
        if isinstance(box[0], Failure):
            box[0].raiseException()
        self.assertEqual(box[0].code, code)
        return box[0]

    def assertError(self, box, errorClass):
        self.assertEqual(len(box), 1, box)
        self.assertIsInstance(box[0], Failure)
        self.assertIsInstance(box[0].value, errorClass, box[0].getTraceback())
        return box[0].value

    def assertClosed(self):
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.session.closed)

    def lose(self):
        self.session.connectionLost(Failure(ConnectionDone()))


class CommandTests(SessionTestsMixin, SynchronousTestCase):
    """
    Each command, what it sends and what it does with its reply.
    """

    def test_greeting(self):
        """
        The session is greeted by a 220; the greeting is kept.
        """
        self.connect()
        self.assertEqual(self.greeted[0].code, 220)
        self.assertEqual(self.session.greeting.lines, (b"mx.example ESMTP",))
        self.assertEqual(self.transport.value(), b"")

    def test_greetingRefused(self):
        """
        A 554 greeting fails C{greeted} and closes the connection.
        """
        self.connect(greeting=b"554 5.3.2 go away\r\n")
        error = self.assertError(self.greeted, client.SMTPPermanentError)
        self.assertEqual((error.code, error.reply.status, error.command), (554, b"5.3.2", b"greeting"))
        self.assertClosed()

    def test_ehlo(self):
        """
        EHLO reads the extensions from the reply.
        """
        self.connect()
        d = self.result(self.session.ehlo("client.example"))
        self.assertEqual(self.sent(), b"EHLO client.example\r\n")
        self.reply(EHLO_REPLY)
        self.assertReply(d, 250)
        self.assertEqual(self.session.extensions.size, 1000000)
        self.assertIn(b"STARTTLS", self.session.extensions)
        self.assertEqual(self.session.extensions.authMechanisms, (b"LOGIN", b"PLAIN", b"CRAM-MD5"))

    def test_ehloRefusedThenHelo(self):
        """
        A 502 to EHLO is a L{client.SMTPPermanentError}; HELO then works and
        leaves no extensions.
        """
        self.connect()
        d = self.result(self.session.ehlo(b"client.example"))
        self.reply(b"502 5.5.1 no\r\n")
        self.assertEqual(self.assertError(d, client.SMTPPermanentError).command, b"EHLO")
        self.sent()
        d = self.result(self.session.helo("client.example"))
        self.assertEqual(self.sent(), b"HELO client.example\r\n")
        self.reply(b"250 mx.example\r\n")
        self.assertReply(d, 250)
        self.assertEqual(len(self.session.extensions), 0)

    def test_lhlo(self):
        """
        An LMTP session says LHLO.
        """
        self.connect(lmtp=True)
        self.session.ehlo("client.example")
        self.assertEqual(self.sent(), b"LHLO client.example\r\n")

    def test_mailRcptParameters(self):
        """
        MAIL and RCPT send their ESMTP parameters; a refusal fails with the
        class of its reply, carrying it.
        """
        self.ready()
        d = self.result(self.session.mail("a@example.com", size=1234, body="8BITMIME", envid="x+y", xfoo=True))
        self.assertEqual(self.sent(), b"MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME ENVID=x+2By XFOO\r\n")
        self.reply(b"250 2.1.0 ok\r\n")
        self.assertEqual(self.assertReply(d, 250).status, b"2.1.0")
        d = self.result(self.session.rcpt("b@example.com", notify=("failure", "delay")))
        self.assertEqual(self.sent(), b"RCPT TO:<b@example.com> NOTIFY=FAILURE,DELAY\r\n")
        self.reply(b"550 5.1.1 no such user\r\n")
        error = self.assertError(d, client.SMTPPermanentError)
        self.assertEqual((error.code, error.status, error.retry, error.isFatal), (550, b"5.1.1", False, False))
        self.assertEqual(error.reply.lines, (b"no such user",))
        d = self.result(self.session.rcpt("c@example.com"))
        self.reply(b"451 4.3.0 later\r\n")
        error = self.assertError(d, client.SMTPTransientError)
        self.assertTrue(error.retry)
        self.assertFalse(error.isFatal)
        self.assertFalse(self.session.closed)

    def test_nullSender(self):
        """
        C{mail("")} is the null reverse-path.
        """
        self.ready()
        self.session.mail("")
        self.assertEqual(self.sent(), b"MAIL FROM:<>\r\n")

    def test_transaction(self):
        """
        DATA, pieces of the message, and the end of data.
        """
        self.ready()
        self.session.mail("a@example.com")
        self.reply(b"250 ok\r\n")
        self.session.rcpt("b@example.com")
        self.reply(b"250 ok\r\n")
        self.sent()
        d = self.result(self.session.data())
        self.assertEqual(self.sent(), b"DATA\r\n")
        self.reply(b"354 go ahead\r\n")
        self.assertReply(d, 354)
        self.session.send(b"Subject: hi\n\nbody\n")
        d = self.result(self.session.end())
        self.assertEqual(self.sent(), b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.reply(b"250 2.0.0 queued as X\r\n")
        self.assertEqual(self.assertReply(d, 250).lines, (b"queued as X",))

    def test_dotAtPieceBoundary(self):
        """
        A dot that begins a line is doubled wherever the pieces split the
        message: a C{.} alone in a piece after a piece ending in CRLF, a
        CRLF split between pieces, a dot at the very start.
        """
        self.ready()
        self.session.mail("a@example.com")
        self.reply(b"250 ok\r\n")
        self.session.rcpt("b@example.com")
        self.reply(b"250 ok\r\n")
        self.session.data()
        self.reply(b"354 go ahead\r\n")
        self.sent()
        pieces = [b".", b"first\r\n", b".", b"\r\n", b"x\r", b"\n.", b"y\n", b"..z", b"\r\n", b"."]
        for piece in pieces:
            self.session.send(piece)
        self.session.end()
        expected = b"..first\r\n..\r\nx\r\n..y\r\n...z\r\n..\r\n.\r\n"
        self.assertEqual(self.sent(), expected)
        self.assertEqual(expected, stuff(b"".join(pieces)))

    def test_sendFile(self):
        """
        A file is streamed through a producer, a chunk at a time, stuffed
        like the whole message at once (a dot line starting exactly at a
        chunk boundary included); the end of data goes out with the last
        chunk.
        """
        self.ready()
        self.session.mail("a@example.com")
        self.reply(b"250 ok\r\n")
        self.session.rcpt("b@example.com")
        self.reply(b"250 ok\r\n")
        self.session.data()
        self.reply(b"354 go ahead\r\n")
        self.sent()
        first = b"x" * (CHUNK_SIZE - 2) + b"\r\n"
        message = first + b".\r\n" + b"y" * (2 * CHUNK_SIZE) + b"\n.end"
        d = self.result(self.session.sendFile(io.BytesIO(message)))
        self.assertIsNotNone(self.transport.producer)
        written = [self.sent()]
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
            written.append(self.sent())
        self.assertEqual(b"".join(written), stuff(message))
        self.assertGreater(len(written), 2)
        self.assertLessEqual(max(len(w) for w in written), CHUNK_SIZE + 16)
        self.assertEqual(d, [])
        self.assertRaises(client.SMTPSessionStateError, self.session.send, b"late")
        self.reply(b"250 ok\r\n")
        self.assertReply(d, 250)

    def test_sendFileReadFails(self):
        """
        A file that cannot be read fails C{sendFile} and closes the
        connection: the server must not take half a message.
        """
        self.ready()
        for line, reply in [(self.session.mail, b"250 ok\r\n"), (self.session.data, b"354 go\r\n")]:
            line() if line == self.session.data else line("a@example.com")
            self.reply(reply)

        class Broken(io.RawIOBase):
            def read(self, n=-1):
                raise OSError("disk on fire")

        d = self.result(self.session.sendFile(Broken()))
        self.assertEqual(str(self.assertError(d, OSError)), "disk on fire")
        self.assertClosed()

    def test_lmtpEnd(self):
        """
        With LMTP the end of data gets a reply per accepted recipient,
        refusals included, as a list.
        """
        self.ready(lmtp=True)
        self.session.mail("a@example.com")
        self.reply(b"250 ok\r\n")
        for address, reply in [(b"b@x", b"250 ok\r\n"), (b"c@x", b"550 no\r\n"), (b"d@x", b"250 ok\r\n")]:
            self.session.rcpt(address).addErrback(lambda f: None)
            self.reply(reply)
        self.session.data()
        self.reply(b"354 go\r\n")
        self.session.send(b"hi\r\n")
        d = self.result(self.session.end())
        self.reply(b"250 2.0.0 b ok\r\n")
        self.assertEqual(d, [])
        self.reply(b"452 4.2.2 d full\r\n")
        self.assertEqual([r.code for r in d[0]], [250, 452])

    def test_bdat(self):
        """
        BDAT sends the chunk as it is, with its size.
        """
        self.ready()
        d = self.result(self.session.bdat(b"a\r\n.b", last=True))
        self.assertEqual(self.sent(), b"BDAT 5 LAST\r\na\r\n.b")
        self.reply(b"250 ok\r\n")
        self.assertReply(d, 250)

    def test_bdatNotOffered(self):
        """
        Without CHUNKING, BDAT is not sent.
        """
        self.connect()
        d = self.result(self.session.bdat(b"x"))
        self.assertError(d, client.SMTPSessionStateError)
        self.assertEqual(self.transport.value(), b"")

    def test_noopRset(self):
        """
        NOOP and RSET.
        """
        self.ready()
        d = self.result(self.session.noop())
        self.assertEqual(self.sent(), b"NOOP\r\n")
        self.reply(b"250 ok\r\n")
        self.assertReply(d, 250)
        d = self.result(self.session.rset())
        self.assertEqual(self.sent(), b"RSET\r\n")
        self.reply(b"250 ok\r\n")
        self.assertReply(d, 250)

    def test_docmd(self):
        """
        docmd sends any command and gives its reply, a refusal included.
        """
        self.ready()
        d = self.result(self.session.docmd("VRFY postmaster"))
        self.assertEqual(self.sent(), b"VRFY postmaster\r\n")
        self.reply(b"252 2.5.0 maybe\r\n")
        self.assertReply(d, 252)
        d = self.result(self.session.docmd(b"XFOO"))
        self.reply(b"500 5.5.1 what?\r\n")
        self.assertReply(d, 500)

    def test_docmdRefusesStateCommands(self):
        """
        docmd will not send the commands that have their own methods.
        """
        self.ready()
        for line in (b"DATA", b"bdat 10", b"STARTTLS", b"AUTH PLAIN"):
            self.assertError(self.result(self.session.docmd(line)), ValueError)
        self.assertEqual(self.transport.value(), b"")

    def test_quit(self):
        """
        QUIT fires once the connection is closed.
        """
        self.ready()
        d = self.result(self.session.quit())
        self.assertEqual(self.sent(), b"QUIT\r\n")
        self.reply(b"221 2.0.0 bye\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(d, [])
        self.lose()
        self.assertReply(d, 221)

    def test_busy(self):
        """
        A second command while one awaits its reply fails, and is not
        sent.
        """
        self.ready()
        self.session.noop()
        self.sent()
        self.assertError(self.result(self.session.rset()), client.SMTPSessionStateError)
        self.assertEqual(self.transport.value(), b"")

    def test_sendOutsideData(self):
        """
        send() and end() need DATA; MAIL is refused inside it.
        """
        self.ready()
        self.assertRaises(client.SMTPSessionStateError, self.session.send, b"x")
        self.assertError(self.result(self.session.end()), client.SMTPSessionStateError)
        self.session.data()
        self.reply(b"354 go\r\n")
        self.sent()
        self.assertError(self.result(self.session.mail("a@b")), client.SMTPSessionStateError)
        self.assertEqual(self.transport.value(), b"")

    def test_async(self):
        """
        The session works from a coroutine.
        """
        self.ready()

        async def send():
            await self.session.mail("a@example.com")
            await self.session.rcpt("b@example.com")
            await self.session.data()
            self.session.send(b"hello\n")
            reply = await self.session.end()
            return reply.code

        d = self.result(defer.Deferred.fromCoroutine(send()))
        for answer in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 done\r\n"):
            self.reply(answer)
        self.assertEqual(d, [250])
        self.assertEqual(
            self.sent(), b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhello\r\n.\r\n"
        )


class InjectionTests(SessionTestsMixin, SynchronousTestCase):
    """
    No argument can smuggle a line break onto the wire.
    """

    def assertNothingSent(self, d, errorClass=Exception):
        self.assertError(self.result(d), errorClass)
        self.assertEqual(self.transport.value(), b"")

    def test_docmd(self):
        self.ready()
        for line in (b"NOOP\r\nRSET", "NOOP\nRSET", b"NOOP\r"):
            self.assertNothingSent(self.session.docmd(line), ValueError)

    def test_mail(self):
        self.ready()
        self.assertNothingSent(self.session.mail("a@b.example>\r\nRCPT TO:<c@d.example"))
        self.assertNothingSent(self.session.mail(b"a@b.example\nx"))
        self.assertNothingSent(self.session.mail("a@b.example", envid=b"x", xfoo="1\r\nRSET"))

    def test_rcpt(self):
        self.ready()
        self.assertNothingSent(self.session.rcpt("c@d.example>\r\nDATA"))
        self.assertNothingSent(self.session.rcpt("c@d.example", notify="FAILURE\r\nDATA"))

    def test_ehlo(self):
        self.connect()
        self.assertNothingSent(self.session.ehlo("client\r\nMAIL FROM:<a@b>"), ValueError)
        self.assertNothingSent(self.session.helo(b"client\n"), ValueError)


class HostileServerTests(SessionTestsMixin, SynchronousTestCase):
    """
    A server that breaks the protocol fails the command and loses the
    connection; one that says 421 ends the session.
    """

    def assertProtocolError(self, box):
        self.assertError(box, client.SMTPProtocolError)
        self.assertClosed()
        self.assertError(self.result(self.session.noop()), client.SMTPConnectionLost)

    def test_wrongClassToMail(self):
        self.ready()
        d = self.result(self.session.mail("a@example.com"))
        self.reply(b"354 go ahead\r\n")
        self.assertProtocolError(d)

    def test_positiveToData(self):
        """
        DATA is answered only by 354: a 250 would have the message taken as
        commands.
        """
        self.ready()
        d = self.result(self.session.data())
        self.reply(b"250 ok\r\n")
        self.assertProtocolError(d)

    def test_334OutsideAuth(self):
        self.ready()
        d = self.result(self.session.rset())
        self.reply(b"334 VXNlcm5hbWU6\r\n")
        self.assertProtocolError(d)

    def test_extraReplySameRead(self):
        """
        Two replies to one command in one read: which answers what cannot
        be known.
        """
        self.ready()
        d = self.result(self.session.noop())
        self.reply(b"250 ok\r\n250 ok again\r\n")
        self.assertProtocolError(d)

    def test_extraReplyLater(self):
        """
        A reply when no command awaits one closes the connection; the next
        call fails.
        """
        self.ready()
        d = self.result(self.session.noop())
        self.reply(b"250 ok\r\n")
        self.assertReply(d, 250)
        self.reply(b"250 surprise\r\n")
        self.assertClosed()
        self.assertError(self.result(self.session.noop()), client.SMTPConnectionLost)

    def test_garbage(self):
        self.ready()
        d = self.result(self.session.noop())
        self.reply(b"HTTP/1.1 400 Bad Request\r\n")
        self.assertProtocolError(d)

    def test_codeChangesInReply(self):
        self.ready()
        d = self.result(self.session.noop())
        self.reply(b"250-ok\r\n550 no\r\n")
        self.assertProtocolError(d)

    def test_longLine(self):
        self.ready()
        d = self.result(self.session.noop())
        self.reply(b"250 " + b"x" * 10000)
        self.assertProtocolError(d)

    def test_noReplyTimesOut(self):
        self.ready()
        d = self.result(self.session.noop())
        self.clock.advance(29)
        self.assertEqual(d, [])
        self.clock.advance(1)
        self.assertError(d, client.SMTPTimeoutError)
        self.assertTrue(self.transport.disconnecting)

    def test_trickledReplyTimesOut(self):
        """
        Lines of a reply do not restart the wait: the reply as a whole must
        come within the timeout of its command.
        """
        self.ready()
        d = self.result(self.session.ehlo("client.example"))
        for i in range(29):
            self.reply(b"250-LINE%d\r\n" % i)
            self.clock.advance(1)
        self.assertEqual(d, [])
        self.clock.advance(1)
        self.assertError(d, client.SMTPTimeoutError)
        self.assertClosed()

    def test_greetingTimesOut(self):
        self.connect(greeting=None)
        self.clock.advance(30)
        self.assertError(self.greeted, client.SMTPTimeoutError)

    def test_dropMidData(self):
        """
        A connection lost in the middle of the message: send() raises, end()
        fails.
        """
        self.ready()
        self.session.data()
        self.reply(b"354 go\r\n")
        self.session.send(b"part one\r\n")
        self.lose()
        self.assertRaises(client.SMTPConnectionLost, self.session.send, b"part two")
        self.assertError(self.result(self.session.end()), client.SMTPConnectionLost)

    def test_dropAwaitingEnd(self):
        self.ready()
        self.session.data()
        self.reply(b"354 go\r\n")
        self.session.send(b"part one\r\n")
        d = self.result(self.session.end())
        self.lose()
        self.assertError(d, client.SMTPConnectionLost)

    def test_replyDuringData(self):
        """
        A reply during DATA, before the end of data, answers nothing.
        """
        self.ready()
        self.session.data()
        self.reply(b"354 go\r\n")
        self.reply(b"554 5.6.0 no thanks\r\n")
        self.assertClosed()
        self.assertRaises(client.SMTPConnectionLost, self.session.send, b"x")

    def test_421Anywhere(self):
        """
        421 to the greeting, EHLO, MAIL, RCPT, DATA or the end of data is a
        fatal L{client.SMTPTransientError} and closes the session.
        """
        steps = [
            lambda s: None,
            lambda s: s.ehlo("client.example"),
            lambda s: s.mail("a@example.com"),
            lambda s: s.rcpt("b@example.com"),
            lambda s: s.data(),
            lambda s: s.end(),
            lambda s: s.quit(),
        ]
        for stop in range(len(steps)):
            self.connect(greeting=None)
            session = self.session
            answers = [b"220 hi\r\n", EHLO_REPLY, b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"]
            for step, answer in zip(steps[:stop], answers):
                d = step(session)
                self.reply(answer)
            d = steps[stop](session)
            box = self.greeted if d is None else self.result(d)
            self.reply(b"421 4.3.2 shutting down\r\n")
            self.assertClosed()
            self.lose()
            error = self.assertError(box, client.SMTPTransientError)
            self.assertEqual((error.code, error.isFatal, error.retry), (421, True, True))
            self.assertError(self.result(session.noop()), client.SMTPConnectionLost)

    def test_unsolicited421(self):
        self.ready()
        self.reply(b"421 4.4.2 idle too long\r\n")
        self.assertClosed()

    def test_dataAfterStarttls(self):
        """
        Anything after the 220 to STARTTLS came in plaintext: TLS is not
        started.
        """
        self.ready()
        d = self.result(self.session.starttls(object()))
        self.assertEqual(self.sent(), b"STARTTLS\r\n")
        self.reply(b"220 go\r\n250 injected\r\n")
        self.assertError(d, client.SMTPProtocolError)
        self.assertIsNone(self.transport.tlsStarted)
        self.assertClosed()


class TLSAndAuthTests(SessionTestsMixin, SynchronousTestCase):
    """
    STARTTLS and AUTH.
    """

    def test_starttls(self):
        self.ready()
        context = object()
        d = self.result(self.session.starttls(context))
        self.assertEqual(self.sent(), b"STARTTLS\r\n")
        self.reply(b"220 2.0.0 go ahead\r\n")
        self.assertReply(d, 220)
        self.assertIs(self.transport.tlsStarted, context)
        self.assertTrue(self.session.tls)
        self.assertEqual(len(self.session.extensions), 0)

    def test_starttlsDefaultChecksHostname(self):
        """
        Without a context, STARTTLS checks the certificate against the
        session's host name.
        """
        self.ready()
        self.session.starttls()
        self.reply(b"220 go ahead\r\n")
        self.assertEqual(self.transport.tlsStarted._hostnameASCII, "mx.example")

    def test_starttlsNotOffered(self):
        self.connect()
        d = self.result(self.session.starttls(object()))
        self.assertError(d, client.TLSRequiredError)
        self.assertEqual(self.transport.value(), b"")

    def test_handshakeFails(self):
        """
        A connection lost before any reply came over TLS is a TLS error.
        """
        self.ready()
        self.session.starttls(object())
        self.reply(b"220 go ahead\r\n")
        d = self.result(self.session.ehlo("client.example"))
        self.lose()
        self.assertError(d, client.TLSError)

    def test_loginRefusedWithoutTLS(self):
        self.ready()
        d = self.result(self.session.login("user", "secret"))
        self.assertError(d, client.SMTPSessionStateError)
        self.assertEqual(self.transport.value(), b"")

    def test_loginPlainAllowed(self):
        """
        An authenticator given is used as it is; plaintext when allowed.
        """
        self.ready()
        d = self.result(self.session.login(client.PLAINAuthenticator("user"), "secret", allowPlaintext=True))
        self.assertEqual(self.sent(), b"AUTH PLAIN " + base64.b64encode(b"\0user\0secret") + b"\r\n")
        self.reply(b"235 2.7.0 ok\r\n")
        self.assertReply(d, 235)
        self.assertNotIn(b"secret", self.session.log.str())

    def test_loginLogin(self):
        """
        LOGIN: the user name, then the password, each when asked.
        """
        self.ready(tls=True)
        self.session.extensions = client.Extensions([(b"AUTH", [b"LOGIN"])])
        d = self.result(self.session.login("user", "secret"))
        self.assertEqual(self.sent(), b"AUTH LOGIN\r\n")
        self.reply(b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(self.sent(), base64.b64encode(b"user") + b"\r\n")
        self.reply(b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(self.sent(), base64.b64encode(b"secret") + b"\r\n")
        self.assertError(self.result(self.session.noop()), client.SMTPSessionStateError)
        self.reply(b"235 2.7.0 ok\r\n")
        self.assertReply(d, 235)

    def test_loginCramMD5ThenNext(self):
        """
        CRAM-MD5 first; when it is refused, the next mechanism offered.
        """
        self.ready(tls=True)
        d = self.result(self.session.login("user", "secret"))
        self.assertEqual(self.sent(), b"AUTH CRAM-MD5\r\n")
        self.reply(b"334 " + base64.b64encode(b"<1.2@mx>") + b"\r\n")
        digest = hmac.new(b"secret", b"<1.2@mx>", "md5").hexdigest().encode()
        self.assertEqual(self.sent(), base64.b64encode(b"user " + digest) + b"\r\n")
        self.reply(b"535 5.7.8 no\r\n")
        self.assertEqual(self.sent(), b"AUTH LOGIN\r\n")
        self.reply(b"334 VXNlcm5hbWU6\r\n")
        self.sent()
        self.reply(b"334 UGFzc3dvcmQ6\r\n")
        self.sent()
        self.reply(b"535 5.7.8 still no\r\n")
        error = self.assertError(d, client.SMTPPermanentError)
        self.assertEqual((error.code, error.command), (535, b"AUTH"))
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.session.closed)

    def test_loginMalformedChallenge(self):
        self.ready(tls=True)
        self.session.extensions = client.Extensions([(b"AUTH", [b"LOGIN"])])
        d = self.result(self.session.login("user", "secret"))
        self.sent()
        self.reply(b"334 not base64!\r\n")
        self.assertEqual(self.sent(), b"*\r\n")
        self.reply(b"501 5.7.0 cancelled\r\n")
        self.assertError(d, client.AuthenticationError)

    def test_loginNoMechanism(self):
        self.connect(tls=True)
        self.assertError(self.result(self.session.login("user", "secret")), client.AUTHRequiredError)


# -- interoperability ------------------------------------------------------

from mailproto.test import test_interop_client as _interop  # noqa: E402
from mailproto.test._peers import tool, unprivilegedUser  # noqa: E402

_MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: interop\r\n\r\n"
    b".starts with a dot\r\n"
    b"..two dots\r\n"
    b"line\r\n"
    b".\r\n"
    b"after the dot line\r\n"
)


def _pieces(message):
    """
    @return: C{message} cut so that every piece ends right after a line
        break or right before a dot, and some in the middle of a CRLF.
    """
    out, start = [], 0
    for i in range(1, len(message)):
        if message[i : i + 1] == b"." or message[i - 1 : i] == b"\r":
            out.append(message[start:i])
            start = i
    out.append(message[start:])
    return out


class AiosmtpdInteropTests(TestCase):
    """
    aiosmtpd insisting on STARTTLS (a trustme certificate) and AUTH.
    """

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        _interop._needAiosmtpd()
        import ssl

        import trustme

        self.ca = trustme.CA()
        certificate = self.ca.issue_cert("localhost", "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self.recorder = _interop._Recorder()
        self.port = yield _interop._startAiosmtpd(
            self,
            self.recorder,
            tls_context=context,
            require_starttls=True,
            auth_require_tls=True,
            authenticator=self.recorder.authenticate,
        )

    def trust(self, hostname="127.0.0.1"):
        return optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(self.ca.cert_pem.bytes()))

    def connect(self, **kw):
        closed = _interop._freePort()
        return client.connect(
            reactor,
            [("127.0.0.1", closed), ("127.0.0.1", self.port)],
            tls="starttls",
            contextFactory=self.trust(),
            ehlo="client.test",
            timeout=20,
            connectTimeout=5,
            **kw,
        )

    @defer.inlineCallbacks
    def test_starttlsAuthDelivers(self):
        """
        The first host refuses the connection; the second is used: STARTTLS
        (certificate checked), AUTH, and the message arrives byte for byte
        though sent in pieces cut before every dot.
        """
        session = yield self.connect()
        self.assertTrue(session.tls)
        self.assertIn(b"AUTH", session.extensions)
        reply = yield session.login(_interop._USER, _interop._PASSWORD)
        self.assertEqual(reply.code, 235)
        yield session.mail("sender@example.com", size=len(_MESSAGE))
        yield session.rcpt("one@example.com")
        yield session.rcpt("two@example.org")
        yield session.data()
        for piece in _pieces(_MESSAGE):
            session.send(piece)
        reply = yield session.end()
        self.assertEqual(reply.code, 250)
        reply = yield session.quit()
        self.assertEqual(reply.code, 221)
        [message] = self.recorder.messages
        self.assertEqual(message.content, _MESSAGE)
        self.assertEqual(message.mailFrom, "sender@example.com")
        self.assertEqual(message.rcptTos, ["one@example.com", "two@example.org"])
        self.assertTrue(message.tls)
        self.assertEqual(message.mailOptions, [f"SIZE={len(_MESSAGE)}"])

    @defer.inlineCallbacks
    def test_wrongPassword(self):
        session = yield self.connect()
        error = yield self.assertFailure(session.login(_interop._USER, "wrong"), client.SMTPPermanentError)
        self.assertEqual(error.code, 535)
        yield session.quit()
        self.assertEqual(self.recorder.messages, [])

    @defer.inlineCallbacks
    def test_wrongCertificateName(self):
        """
        A certificate for another name: TLS does not come up, and the
        session is never handed over.
        """
        closed = _interop._freePort()
        d = client.connect(
            reactor,
            [("127.0.0.1", closed), ("127.0.0.1", self.port)],
            tls="starttls",
            contextFactory=self.trust("mx.elsewhere.test"),
            ehlo="client.test",
            timeout=20,
        )
        yield self.assertFailure(d, client.TLSError)


class SmtpSinkInteropTests(TestCase):
    """
    Postfix's smtp-sink, dumping what it receives.
    """

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        sink = tool("smtp-sink")
        self.dumps = os.path.join(_interop._privateDirectory(self, "mailproto-session-sink-"), "dump")
        os.mkdir(self.dumps)
        args = ["-h", "sink.test"]
        if os.geteuid() == 0:
            user = unprivilegedUser()
            os.chown(self.dumps, user.pw_uid, user.pw_gid)
            args += ["-u", user.pw_name]
        self.port = _interop._freePort()
        log = os.path.abspath(self.mktemp())
        args += ["-d", os.path.join(self.dumps, "msg."), f"127.0.0.1:{self.port}", "16"]
        _interop._spawnDaemon(self, sink, args, log)
        yield _interop._waitForGreeting(self.port, "smtp-sink", log)

    @defer.inlineCallbacks
    def test_delivers(self):
        """
        A message sent in pieces and one streamed from a file, on one
        connection, each dumped as sent (smtp-sink writes LF line ends).
        """
        session = yield client.connect(reactor, "127.0.0.1", self.port, ehlo="client.test", timeout=20)
        self.assertIn(b"PIPELINING", session.extensions)
        yield session.mail("sender@example.com")
        yield session.rcpt("rcpt@example.com")
        yield session.data()
        for piece in _pieces(_MESSAGE):
            session.send(piece)
        first = yield session.end()
        self.assertEqual(first.code, 250)
        big = _interop._padTo(b"Subject: big\r\n\r\n", CHUNK_SIZE) + b".\r\n" + b"z" * 100 + b"\r\n"
        yield session.mail("sender@example.com")
        yield session.rcpt("other@example.com")
        yield session.data()
        second = yield session.sendFile(io.BytesIO(big))
        self.assertEqual(second.code, 250)
        yield session.quit()
        dumps = []
        for name in sorted(os.listdir(self.dumps)):
            with open(os.path.join(self.dumps, name), "rb") as f:
                dumps.append(_interop._parseSinkDump(f.read()))
        got = sorted((fields["X-Rcpt-Args"], message) for fields, message in dumps)
        self.assertEqual(
            got,
            sorted(
                [
                    ([b"<rcpt@example.com>"], _interop._sinkView(_MESSAGE)),
                    ([b"<other@example.com>"], _interop._sinkView(big)),
                ]
            ),
        )


class LMTPInteropTests(TestCase):
    """
    mailproto's LMTP server on a UNIX socket.
    """

    timeout = 30

    def listen(self, delivery):
        directory = os.path.abspath(self.mktemp())
        if len(os.fsencode(directory)) > 90:
            directory = tempfile.mkdtemp(prefix="mailproto-")
            self.addCleanup(shutil.rmtree, directory, True)
        else:
            os.makedirs(directory)
        path = os.path.join(directory, "lmtp")
        port = reactor.listenUNIX(path, LMTPFactory(delivery=delivery, domain=b"mx.test"))
        self.addCleanup(port.stopListening)
        return path

    @defer.inlineCallbacks
    def test_perRecipientReplies(self):
        """
        One reply per accepted recipient after the message, which each
        gets byte for byte.
        """
        delivery = MemoryDelivery(refuseRecipients=[b"nobody@mx.test"])
        path = self.listen(delivery)
        session = yield defer.Deferred.fromCoroutine(
            client.connectEndpoint(UNIXClientEndpoint(reactor, path), reactor, lmtp=True, timeout=20)
        )
        reply = yield session.ehlo("client.test")
        self.assertEqual(reply.code, 250)
        yield session.mail("sender@example.com")
        yield session.rcpt("alice@mx.test")
        yield self.assertFailure(session.rcpt("nobody@mx.test"), client.SMTPPermanentError)
        yield session.rcpt("bob@mx.test")
        yield session.data()
        replies = yield session.sendFile(io.BytesIO(_MESSAGE))
        self.assertEqual([r.code for r in replies], [250, 250])
        yield session.quit()
        self.assertEqual([bytes(m.recipient) for m in delivery.messages], [b"alice@mx.test", b"bob@mx.test"])
        self.assertEqual([m.data for m in delivery.messages], [_MESSAGE, _MESSAGE])
