# -*- test-case-name: mailproto.test.test_client -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The client protocols (L{SMTPClient}, L{ESMTPClient}, L{LMTPClient}) state by
state and failure hook by failure hook, driven by a scripted server over a
L{StringTransport} and a fake clock: greeting, HELO/EHLO, STARTTLS, AUTH,
PIPELINING, SIZE, 8BITMIME/SMTPUTF8, DSN, enhanced status codes, CHUNKING,
dot-stuffing across chunk boundaries, streaming in bounded memory, several
messages per connection, timeouts, malformed replies and LMTP.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tracemalloc

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer, ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides, implementer

from mailproto import _client
from mailproto.smtp import (
    Address,
    AUTHDeclinedError,
    AuthenticationError,
    AUTHRequiredError,
    CramMD5ClientAuthenticator,
    EHLORequiredError,
    ESMTPClient,
    LMTPClient,
    LOGINAuthenticator,
    OAUTHBEARERAuthenticator,
    PLAINAuthenticator,
    SMTPClient,
    SMTPClientError,
    SMTPConnectError,
    SMTPProtocolError,
    SMTPTimeoutError,
    TLSError,
    TLSRequiredError,
    XOAUTH2Authenticator,
)
from mailproto.wire import MailFrom, RcptTo, stuff

SENDER = b"alice@example.org"
BOB = b"bob@example.com"
CAROL = b"carol@example.net"
MESSAGE = b"Subject: hello\r\n\r\nHello, world.\r\n"


# -- the client side under test ---------------------------------------------


class Recording:
    """
    A client mixin: sends the messages it is given and records what the
    client reports.

    @ivar messages: what is left to send: C{(sender, recipients, data)},
        data being L{bytes} or a file.
    @ivar errors: every exception given to C{sendError}, in order.
    @ivar results: C{(code, resp, numOk, addresses)} for each C{sentMail}.
    """

    def _record(self, messages) -> None:
        self.messages = list(messages)
        self.current = None
        self.errors = []
        self.results = []

    def getMailFrom(self):
        if not self.messages:
            return None
        self.current = self.messages.pop(0)
        return self.current[0]

    def getMailTo(self):
        return self.current[1]

    def getMailData(self):
        data = self.current[2]
        return io.BytesIO(data) if isinstance(data, bytes) else data

    def sentMail(self, code, resp, numOk, addresses, log):
        self.results.append((code, resp, numOk, [(bytes(a), c, r) for a, c, r in addresses]))

    def sendError(self, exc):
        self.errors.append(exc)
        super().sendError(exc)


class SMTPTestClient(Recording, SMTPClient):
    def __init__(self, messages=(), identity=b"client.example") -> None:
        SMTPClient.__init__(self, identity)
        self._record(messages)


class ESMTPTestClient(Recording, ESMTPClient):
    def __init__(self, messages=(), secret=None, contextFactory=None, identity=b"client.example") -> None:
        ESMTPClient.__init__(self, secret, contextFactory, identity)
        self._record(messages)


class LMTPTestClient(Recording, LMTPClient):
    def __init__(self, messages=(), identity=b"client.example") -> None:
        LMTPClient.__init__(self, identity)
        self._record(messages)


# -- transports ---------------------------------------------------------------


class RecordingTransport(StringTransport):
    """
    A L{StringTransport} that also keeps every C{write} call apart, to see
    what went out together.
    """

    def __init__(self, *args, **kw) -> None:
        StringTransport.__init__(self, *args, **kw)
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        StringTransport.write(self, data)


@implementer(ITLSTransport)
class TLSCapableTransport(RecordingTransport):
    """
    A transport that can start TLS; it records each C{startTLS} (and raises
    C{failWith} instead, if set).
    """

    failWith = None

    def __init__(self, *args, **kw) -> None:
        RecordingTransport.__init__(self, *args, **kw)
        self.tlsStarts = []

    def startTLS(self, contextFactory):
        if self.failWith is not None:
            raise self.failWith
        self.tlsStarts.append((contextFactory, len(self.value())))
        alsoProvides(self, ISSLTransport)

    def getPeerCertificate(self):
        return None


@implementer(ISSLTransport)
class ImplicitTLSTransport(RecordingTransport):
    """
    A transport that is TLS from the first byte (RFC 8314).
    """

    def getPeerCertificate(self):
        return None


class NoDelayTransport(RecordingTransport):
    """
    A transport that records C{setTcpNoDelay} calls.
    """

    def __init__(self, *args, **kw) -> None:
        RecordingTransport.__init__(self, *args, **kw)
        self.noDelay = []

    def setTcpNoDelay(self, enabled):
        self.noDelay.append(enabled)


class HashingTransport(StringTransport):
    """
    A transport that, while C{hashing} is set, keeps only a hash and a count
    of what is written, so that a big message takes no memory here.
    """

    hashing = False

    def __init__(self) -> None:
        StringTransport.__init__(self)
        self.digest = hashlib.sha256()
        self.hashed = 0
        self.hashedWrites = 0

    def write(self, data):
        if self.hashing:
            self.digest.update(data)
            self.hashed += len(data)
            self.hashedWrites += 1
        else:
            StringTransport.write(self, data)


# -- a scripted server -----------------------------------------------------------


class Session:
    """
    A client on a transport, with a fake clock, and a scripted server.
    """

    def __init__(self, client, transport=None, clock=None) -> None:
        self.client = client
        self.transport = transport if transport is not None else RecordingTransport()
        self.clock = clock if clock is not None else Clock()
        client.callLater = self.clock.callLater
        client.makeConnection(self.transport)

    def take(self) -> bytes:
        """
        @return: what the client wrote since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data

    def server(self, data: bytes) -> bytes:
        """
        The server sends C{data}.

        @return: what the client wrote in response.
        """
        self.client.dataReceived(data)
        return self.take()

    def drain(self, limit: int = 100000) -> bytes:
        """
        Let the transport pull the message from the client's producer until
        it is done.

        @return: what the client wrote meanwhile.
        """
        for _ in range(limit):
            producer = self.transport.producer
            if producer is None:
                break
            producer.resumeProducing()
        else:
            raise AssertionError("the producer never finished")
        return self.take()


def ehlo(*extensions: bytes, name: bytes = b"mx.example") -> bytes:
    """
    @return: a 250 reply to EHLO offering C{extensions}.
    """
    lines = [name + b" greets client.example", *extensions]
    last = len(lines) - 1
    return b"".join(b"250" + (b" " if i == last else b"-") + line + b"\r\n" for i, line in enumerate(lines))


def esmtp(testCase, client, extensions, transport=None, clock=None):
    """
    Greet C{client} and answer its EHLO with C{extensions}.

    @return: the session and what the client wrote after the EHLO reply.
    """
    session = Session(client, transport, clock)
    testCase.assertEqual(session.server(b"220 mx.example ESMTP\r\n"), b"EHLO client.example\r\n")
    return session, session.server(ehlo(*extensions))


class ClientTestMixin:
    """
    Assertions shared by the client tests.
    """

    def assertOneError(self, client, errorClass):
        """
        C{client} reported exactly one error, of C{errorClass}.

        @return: the error.
        """
        self.assertEqual(len(client.errors), 1, client.errors)
        [error] = client.errors
        self.assertIsInstance(error, errorClass)
        return error

    def assertQuitOnly(self, session):
        """
        After an error that lets the connection go on, the client says QUIT
        and closes when the server answers.
        """
        self.assertEqual(session.take(), b"")
        self.assertFalse(session.transport.disconnecting)
        self.assertEqual(session.server(b"221 2.0.0 Bye\r\n"), b"")
        self.assertTrue(session.transport.disconnecting)


# -- greeting and HELO --------------------------------------------------------


class GreetingAndHeloTests(ClientTestMixin, SynchronousTestCase):
    """
    The greeting, and the plain SMTP client's HELO.
    """

    def test_greetingRefused(self):
        """
        A 554 greeting is reported to C{sendError} as an L{SMTPConnectError}
        with the server's code and text; it is fatal, so the client closes
        the connection without a word.
        """
        client = SMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        self.assertEqual(session.server(b"554 5.3.2 mx.example No SMTP service here\r\n"), b"")
        error = self.assertOneError(client, SMTPConnectError)
        self.assertEqual((error.code, error.resp), (554, b"5.3.2 mx.example No SMTP service here"))
        self.assertEqual(error.status, b"5.3.2")
        self.assertTrue(error.isFatal)
        self.assertTrue(session.transport.disconnecting)
        self.assertEqual(client.results, [])

    def test_nothingAfterFatalError(self):
        """
        Once a fatal reply made the client close the connection, the rest of
        the same packet is ignored: C{sendError} is called once, and nothing
        more is written (no HELO for a 220 that follows the 554).
        """
        client = SMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        written = session.server(b"554 No SMTP service here\r\n220 changed my mind\r\n")
        self.assertEqual(written, b"")
        self.assertOneError(client, SMTPConnectError)
        self.assertTrue(session.transport.disconnecting)

    def test_multilineGreeting(self):
        """
        A multi-line greeting is one reply: one HELO.
        """
        client = SMTPTestClient()
        session = Session(client)
        self.assertEqual(session.server(b"220-mx.example ESMTP\r\n220-more text\r\n"), b"")
        self.assertEqual(session.server(b"220 ready\r\n"), b"HELO client.example\r\n")

    def test_helo(self):
        """
        L{SMTPClient} greets with HELO and its identity, then sends the
        message without ESMTP parameters, RCPT by RCPT, and says QUIT when
        there is nothing more to send.
        """
        client = SMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        self.assertEqual(session.server(b"220 mx.example\r\n"), b"HELO client.example\r\n")
        self.assertEqual(session.server(b"250 mx.example\r\n"), b"MAIL FROM:<alice@example.org>\r\n")
        self.assertEqual(session.server(b"250 ok\r\n"), b"RCPT TO:<bob@example.com>\r\n")
        self.assertEqual(session.server(b"250 ok\r\n"), b"DATA\r\n")
        self.assertEqual(session.server(b"354 go ahead\r\n"), MESSAGE + b".\r\n")
        self.assertEqual(session.server(b"250 queued as 1\r\n"), b"QUIT\r\n")
        self.assertEqual(client.results, [(250, b"queued as 1", 1, [(BOB, 250, b"ok")])])
        self.assertEqual(client.errors, [])
        self.assertEqual(session.server(b"221 bye\r\n"), b"")
        self.assertTrue(session.transport.disconnecting)

    def test_heloRefused(self):
        """
        A refused HELO is a connection failure: L{SMTPConnectError} with the
        reply, and no MAIL.
        """
        client = SMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        session.server(b"220 mx.example\r\n")
        self.assertEqual(session.server(b"501 5.5.4 bad name\r\n"), b"")
        error = self.assertOneError(client, SMTPConnectError)
        self.assertEqual((error.code, error.resp, error.status), (501, b"5.5.4 bad name", b"5.5.4"))
        self.assertTrue(session.transport.disconnecting)

    def test_identityText(self):
        """
        An identity given as text is sent in its IDNA (A-label) form.
        """
        client = SMTPTestClient(identity="b\xfccher.example")
        session = Session(client)
        self.assertEqual(session.server(b"220 mx.example\r\n"), b"HELO xn--bcher-kva.example\r\n")

    def test_noMessages(self):
        """
        With nothing to send, the client says QUIT right after HELO.
        """
        client = SMTPTestClient()
        session = Session(client)
        session.server(b"220 mx.example\r\n")
        self.assertEqual(session.server(b"250 mx.example\r\n"), b"QUIT\r\n")

    def test_bareLF(self):
        """
        Replies whose lines end in a bare LF are read too.
        """
        client = SMTPTestClient()
        session = Session(client)
        self.assertEqual(session.server(b"220 mx.example\n"), b"HELO client.example\r\n")


# -- EHLO -----------------------------------------------------------------------


class EHLOTests(ClientTestMixin, SynchronousTestCase):
    """
    L{ESMTPClient}'s EHLO, the fall back to HELO, and C{esmtpEHLORequired}.
    """

    def test_extensions(self):
        """
        The EHLO reply's lines become C{client.extensions}, keyword by
        keyword with their parameters.
        """
        client = ESMTPTestClient()
        esmtp(self, client, [b"SIZE 1000", b"8BITMIME", b"AUTH PLAIN LOGIN"])
        self.assertEqual(client.extensions[b"SIZE"], (b"1000",))
        self.assertIn(b"8BITMIME", client.extensions)
        self.assertEqual(client.extensions.authMechanisms, (b"PLAIN", b"LOGIN"))

    def test_heloFallback(self):
        """
        When EHLO is refused and C{heloFallback} is set (the default), the
        client says HELO and goes on with plain SMTP.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        self.assertEqual(session.server(b"220 mx.example\r\n"), b"EHLO client.example\r\n")
        self.assertEqual(session.server(b"502 5.5.1 What?\r\n"), b"HELO client.example\r\n")
        self.assertEqual(session.server(b"250 mx.example\r\n"), b"MAIL FROM:<alice@example.org>\r\n")
        self.assertEqual(len(client.extensions), 0)
        self.assertEqual(client.errors, [])

    def test_heloFallbackRefused(self):
        """
        When the HELO sent after a refused EHLO is refused as well, the
        client gives up with an error: it does not say HELO again.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        session.server(b"220 mx.example\r\n")
        self.assertEqual(session.server(b"502 5.5.1 What?\r\n"), b"HELO client.example\r\n")
        written = session.server(b"501 5.5.4 Go away\r\n")
        self.assertNotIn(b"HELO", written)
        self.assertNotIn(b"MAIL", written)
        self.assertEqual(len(client.errors), 1)
        self.assertIsInstance(client.errors[0], SMTPClientError)
        self.assertEqual(client.errors[0].code, 501)

    def test_ehloRequired(self):
        """
        Without C{heloFallback}, a refused EHLO goes to C{esmtpEHLORequired}:
        an L{EHLORequiredError}; the client says QUIT.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)])
        client.heloFallback = False
        session = Session(client)
        session.server(b"220 mx.example\r\n")
        self.assertEqual(session.server(b"502 5.5.1 What?\r\n"), b"QUIT\r\n")
        self.assertOneError(client, EHLORequiredError)
        self.assertEqual(client.results, [])

    def test_ehloRequiredForAuthentication(self):
        """
        With C{requireAuthentication}, there is no falling back to HELO.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)], secret=b"pass")
        client.requireAuthentication = True
        session = Session(client)
        session.server(b"220 mx.example\r\n")
        self.assertEqual(session.server(b"500 What?\r\n"), b"QUIT\r\n")
        self.assertOneError(client, EHLORequiredError)

    def test_ehloRequiredForTLS(self):
        """
        With C{requireTransportSecurity}, there is no falling back to HELO.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)], contextFactory=object())
        client.requireTransportSecurity = True
        session = Session(client, TLSCapableTransport())
        session.server(b"220 mx.example\r\n")
        self.assertEqual(session.server(b"500 What?\r\n"), b"QUIT\r\n")
        self.assertOneError(client, EHLORequiredError)

    def test_multilineEHLOInPieces(self):
        """
        An EHLO reply that arrives a byte at a time is read as one reply.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        session.server(b"220 mx.example\r\n")
        written = b""
        for byte in ehlo(b"PIPELINING", b"SIZE 100000"):
            written += session.server(bytes([byte]))
        self.assertEqual(
            written,
            b"MAIL FROM:<alice@example.org> SIZE=%d\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" % len(MESSAGE),
        )


# -- STARTTLS ---------------------------------------------------------------------


class STARTTLSTests(ClientTestMixin, SynchronousTestCase):
    """
    STARTTLS (RFC 3207), C{esmtpTLSFailed}, C{esmtpTLSRequired} and the
    defence against commands injected before the handshake.
    """

    def setUp(self):
        self.context = object()
        self.client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)], contextFactory=self.context)
        self.transport = TLSCapableTransport()

    def test_startTLS(self):
        """
        When the server offers STARTTLS and the client has a context, the
        client says STARTTLS, starts TLS with its context on the 220 (after
        writing nothing else), says EHLO again, and sends the message.
        """
        session, written = esmtp(self, self.client, [b"STARTTLS", b"PIPELINING"], self.transport)
        self.assertEqual(written, b"STARTTLS\r\n")
        self.assertEqual(self.transport.tlsStarts, [])
        self.assertEqual(session.server(b"220 2.0.0 Ready to start TLS\r\n"), b"EHLO client.example\r\n")
        self.assertEqual(self.transport.tlsStarts, [(self.context, 0)])
        written = session.server(ehlo(b"STARTTLS", b"PIPELINING"))
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        self.assertEqual(len(self.transport.tlsStarts), 1)
        self.assertEqual(self.client.errors, [])

    def test_extensionsAfterTLS(self):
        """
        What the server offered before TLS is forgotten (RFC 3207 section
        4.2): only the EHLO reply after the handshake counts.  PIPELINING
        offered in plaintext but not under TLS is not used.
        """
        session, _ = esmtp(self, self.client, [b"STARTTLS", b"PIPELINING", b"SIZE 10"], self.transport)
        session.server(b"220 go ahead\r\n")
        written = session.server(ehlo(b"8BITMIME"))
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\n")
        self.assertNotIn(b"PIPELINING", self.client.extensions)

    def test_noContext(self):
        """
        Without a context, STARTTLS is not used (unless required): the
        message goes in plaintext.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session, written = esmtp(self, client, [b"STARTTLS"], self.transport)
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\n")
        self.assertEqual(self.transport.tlsStarts, [])

    def test_implicitTLS(self):
        """
        On a transport that is TLS already, STARTTLS is not used, and
        C{requireTransportSecurity} is satisfied.
        """
        self.client.requireTransportSecurity = True
        session, written = esmtp(self, self.client, [b"STARTTLS"], ImplicitTLSTransport())
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\n")
        self.assertEqual(self.client.errors, [])

    def test_tlsFailed(self):
        """
        A 454 to STARTTLS goes to C{esmtpTLSFailed}: an L{SMTPTLSError}
        (exported as C{TLSError}) with the code and the enhanced status;
        the client says QUIT and sends no message.
        """
        session, _ = esmtp(self, self.client, [b"STARTTLS"], self.transport)
        self.assertEqual(session.server(b"454 4.7.0 TLS not available due to temporary reason\r\n"), b"QUIT\r\n")
        error = self.assertOneError(self.client, TLSError)
        self.assertEqual((error.code, error.status), (454, b"4.7.0"))
        self.assertEqual(self.transport.tlsStarts, [])
        self.assertEqual(self.client.results, [])
        self.assertQuitOnly(session)

    def test_startTLSRaises(self):
        """
        When the transport cannot start TLS, the client reports an
        L{SMTPTLSError} with code 451, whose enhanced status (if any) is of
        the same class as that code -- not the C{2.0.0} of the server's 220
        -- and says QUIT.
        """
        self.transport.failWith = RuntimeError("no TLS here")
        session, _ = esmtp(self, self.client, [b"STARTTLS"], self.transport)
        self.assertEqual(session.server(b"220 2.0.0 Ready to start TLS\r\n"), b"QUIT\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        error = self.assertOneError(self.client, TLSError)
        self.assertEqual(error.code, 451)
        self.assertTrue(error.status is None or error.status[:1] == b"4", error.status)

    def test_tlsRequired(self):
        """
        With C{requireTransportSecurity} and a server that does not offer
        STARTTLS, C{esmtpTLSRequired} reports a L{TLSRequiredError} and
        nothing but QUIT is sent: no MAIL, no message.
        """
        self.client.requireTransportSecurity = True
        session, written = esmtp(self, self.client, [b"PIPELINING", b"SIZE 1000", b"AUTH PLAIN"], self.transport)
        self.assertEqual(written, b"QUIT\r\n")
        self.assertOneError(self.client, TLSRequiredError)
        self.assertQuitOnly(session)
        everything = b"".join(self.transport.writes)
        self.assertEqual(everything, b"EHLO client.example\r\nQUIT\r\n")
        self.assertNotIn(b"MAIL", everything)
        self.assertEqual(self.client.results, [])

    def test_tlsRequiredWithoutContext(self):
        """
        With C{requireTransportSecurity} but no context, STARTTLS cannot be
        used even if offered: L{TLSRequiredError}, and only QUIT.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)])
        client.requireTransportSecurity = True
        session, written = esmtp(self, client, [b"STARTTLS"], self.transport)
        self.assertEqual(written, b"QUIT\r\n")
        self.assertOneError(client, TLSRequiredError)

    def test_injectionDefence(self):
        """
        If the server sends anything after its 220 to STARTTLS in the same
        packet (here a whole reply, C{250 injected}), the client must not
        start TLS -- those bytes would be taken as said under TLS -- and
        fails with a fatal L{SMTPTLSError}, closing the connection without
        another command.
        """
        session, _ = esmtp(self, self.client, [b"STARTTLS"], self.transport)
        written = session.server(b"220 go ahead\r\n250 injected\r\n")
        self.assertEqual(written, b"")
        self.assertEqual(self.transport.tlsStarts, [])
        error = self.assertOneError(self.client, TLSError)
        self.assertTrue(error.isFatal)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.client.results, [])

    def test_injectionDefencePartialLine(self):
        """
        Even a partial line after the 220 counts as injected.
        """
        session, _ = esmtp(self, self.client, [b"STARTTLS"], self.transport)
        self.assertEqual(session.server(b"220 go ahead\r\n250 inj"), b"")
        self.assertEqual(self.transport.tlsStarts, [])
        self.assertTrue(self.assertOneError(self.client, TLSError).isFatal)
        self.assertTrue(self.transport.disconnecting)


# -- AUTH ---------------------------------------------------------------------------


class AUTHTests(ClientTestMixin, SynchronousTestCase):
    """
    SMTP AUTH (RFC 4954) with each mechanism, the fall back from one to the
    next, and the failure hooks.
    """

    def client(self, *authenticators, secret=b"pass"):
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)], secret=secret)
        for auth in authenticators:
            client.registerAuthenticator(auth)
        return client

    def test_plain(self):
        """
        PLAIN goes with an initial response: C{AUTH PLAIN} and base64 of
        C{NUL user NUL password}; on 235 the message is sent.
        """
        client = self.client(PLAINAuthenticator(b"user"))
        session, written = esmtp(self, client, [b"AUTH PLAIN LOGIN"])
        self.assertEqual(written, b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")
        self.assertEqual(session.server(b"235 2.7.0 Authentication successful\r\n"), b"MAIL FROM:<alice@example.org>\r\n")
        self.assertEqual(client.errors, [])

    def test_login(self):
        """
        LOGIN: C{AUTH LOGIN}, then the user name and the password, each in
        base64, in answer to the server's two challenges.
        """
        client = self.client(LOGINAuthenticator(b"user"))
        session, written = esmtp(self, client, [b"AUTH LOGIN"])
        self.assertEqual(written, b"AUTH LOGIN\r\n")
        self.assertEqual(session.server(b"334 VXNlcm5hbWU6\r\n"), b"dXNlcg==\r\n")
        self.assertEqual(session.server(b"334 UGFzc3dvcmQ6\r\n"), b"cGFzcw==\r\n")
        self.assertEqual(session.server(b"235 2.7.0 ok\r\n"), b"MAIL FROM:<alice@example.org>\r\n")

    def test_secretsNotLogged(self):
        """
        The client's log, which goes into every error, never holds the
        SASL responses: a refused login reports no password.
        """
        for auth, extension, challenges in [
            (PLAINAuthenticator(b"user"), b"AUTH PLAIN", []),
            (LOGINAuthenticator(b"user"), b"AUTH LOGIN", [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n"]),
        ]:
            client = self.client(auth, secret=b"s3cret-pw")
            session, written = esmtp(self, client, [extension])
            for challenge in challenges:
                session.server(challenge)
            session.server(b"535 5.7.8 Authentication credentials invalid\r\n")
            [error] = client.errors
            text = bytes(error) + client.log.str()
            self.assertIn(b"*****", text)
            for secret in (b"s3cret-pw", base64.b64encode(b"s3cret-pw"), base64.b64encode(b"\0user\0s3cret-pw")):
                self.assertNotIn(secret, text)

    def test_cramMD5(self):
        """
        CRAM-MD5 answers the RFC 2195 example challenge with the RFC's
        response, in base64.
        """
        client = self.client(CramMD5ClientAuthenticator(b"tim"), secret=b"tanstaaftanstaaf")
        session, written = esmtp(self, client, [b"AUTH CRAM-MD5"])
        self.assertEqual(written, b"AUTH CRAM-MD5\r\n")
        written = session.server(b"334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n")
        self.assertEqual(written, b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n")
        self.assertEqual(session.server(b"235 ok\r\n"), b"MAIL FROM:<alice@example.org>\r\n")

    def test_registrationOrder(self):
        """
        The first registered mechanism that the server offers is used,
        whatever the server's order.
        """
        client = self.client(CramMD5ClientAuthenticator(b"user"), LOGINAuthenticator(b"user"), PLAINAuthenticator(b"user"))
        session, written = esmtp(self, client, [b"AUTH PLAIN LOGIN"])
        self.assertEqual(written, b"AUTH LOGIN\r\n")

    def test_legacyAuthLine(self):
        """
        The old C{AUTH=MECH} form is understood.
        """
        client = self.client(PLAINAuthenticator(b"user"))
        session, written = esmtp(self, client, [b"AUTH=PLAIN"])
        self.assertEqual(written, b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")

    def test_fallbackAfter504(self):
        """
        When the server refuses a mechanism (504), the next registered one
        it offers is tried.
        """
        client = self.client(CramMD5ClientAuthenticator(b"user"), PLAINAuthenticator(b"user"))
        session, written = esmtp(self, client, [b"AUTH PLAIN CRAM-MD5"])
        self.assertEqual(written, b"AUTH CRAM-MD5\r\n")
        self.assertEqual(session.server(b"504 5.5.4 Unrecognized authentication type\r\n"), b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")
        self.assertEqual(session.server(b"235 ok\r\n"), b"MAIL FROM:<alice@example.org>\r\n")
        self.assertEqual(client.errors, [])

    def test_fallbackAfter535(self):
        """
        When the server refuses the credentials given with one mechanism
        (535, as a server that keeps only hashed passwords does for
        CRAM-MD5), the next one is tried.
        """
        client = self.client(CramMD5ClientAuthenticator(b"user"), LOGINAuthenticator(b"user"))
        session, written = esmtp(self, client, [b"AUTH LOGIN CRAM-MD5"])
        self.assertEqual(written, b"AUTH CRAM-MD5\r\n")
        self.assertEqual(
            session.server(b"334 PDEyMzQ1LjY3ODkwQG14LmV4YW1wbGU+\r\n"),
            b"dXNlciBjYjI5MDU3YWFjYjU1MzM3YjU1MzYxNmZkNDljMzdlZA==\r\n",
        )
        self.assertEqual(session.server(b"535 5.7.8 Authentication credentials invalid\r\n"), b"AUTH LOGIN\r\n")
        self.assertEqual(session.server(b"334 VXNlcm5hbWU6\r\n"), b"dXNlcg==\r\n")
        self.assertEqual(session.server(b"334 UGFzc3dvcmQ6\r\n"), b"cGFzcw==\r\n")
        self.assertEqual(session.server(b"235 ok\r\n"), b"MAIL FROM:<alice@example.org>\r\n")

    def test_declined(self):
        """
        When the last mechanism is refused with 535, C{esmtpAUTHDeclined}
        reports an L{AUTHDeclinedError} with the code and enhanced status;
        the client says QUIT and sends no message.
        """
        client = self.client(PLAINAuthenticator(b"user"))
        session, _ = esmtp(self, client, [b"AUTH PLAIN"])
        self.assertEqual(session.server(b"535 5.7.8 Authentication credentials invalid\r\n"), b"QUIT\r\n")
        error = self.assertOneError(client, AUTHDeclinedError)
        self.assertEqual((error.code, error.status), (535, b"5.7.8"))
        self.assertEqual(client.results, [])
        self.assertQuitOnly(session)

    def test_authRequiredNotOffered(self):
        """
        With C{requireAuthentication} and a server that offers no AUTH,
        C{esmtpAUTHRequired} reports an L{AUTHRequiredError} and only QUIT
        is sent.
        """
        client = self.client(PLAINAuthenticator(b"user"))
        client.requireAuthentication = True
        session, written = esmtp(self, client, [b"PIPELINING"])
        self.assertEqual(written, b"QUIT\r\n")
        self.assertOneError(client, AUTHRequiredError)

    def test_authRequiredNoCommonMechanism(self):
        """
        With C{requireAuthentication}, a server that offers only mechanisms
        the client does not have gets only QUIT.
        """
        client = self.client(PLAINAuthenticator(b"user"))
        client.requireAuthentication = True
        session, written = esmtp(self, client, [b"AUTH GSSAPI NTLM"])
        self.assertEqual(written, b"QUIT\r\n")
        self.assertOneError(client, AUTHRequiredError)

    def test_authRequiredNoSecret(self):
        """
        With C{requireAuthentication} and no secret, there is nothing to
        authenticate with: L{AUTHRequiredError}.
        """
        client = self.client(PLAINAuthenticator(b"user"), secret=None)
        client.requireAuthentication = True
        session, written = esmtp(self, client, [b"AUTH PLAIN"])
        self.assertEqual(written, b"QUIT\r\n")
        self.assertOneError(client, AUTHRequiredError)

    def test_authOptional(self):
        """
        Without C{requireAuthentication}, a server with no common mechanism
        gets the message without AUTH.
        """
        client = self.client(PLAINAuthenticator(b"user"))
        session, written = esmtp(self, client, [b"AUTH GSSAPI"])
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\n")

    def test_malformedChallenge(self):
        """
        A challenge that is not base64 is cancelled with C{*}; the server's
        answer goes to C{esmtpAUTHMalformedChallenge}: an
        L{AuthenticationError}, then QUIT.
        """
        client = self.client(LOGINAuthenticator(b"user"))
        session, _ = esmtp(self, client, [b"AUTH LOGIN"])
        self.assertEqual(session.server(b"334 not*base64!\r\n"), b"*\r\n")
        self.assertEqual(session.server(b"501 5.7.0 Authentication cancelled\r\n"), b"QUIT\r\n")
        self.assertOneError(client, AuthenticationError)
        self.assertEqual(client.results, [])

    def test_serverError(self):
        """
        Another failure reply to AUTH is an L{AuthenticationError} with the
        server's code.
        """
        client = self.client(PLAINAuthenticator(b"user"))
        session, _ = esmtp(self, client, [b"AUTH PLAIN"])
        self.assertEqual(session.server(b"501 5.5.2 Cannot decode\r\n"), b"QUIT\r\n")
        error = self.assertOneError(client, AuthenticationError)
        self.assertEqual(error.code, 501)

    def test_xoauth2(self):
        """
        XOAUTH2 sends C{user=... ^Aauth=Bearer token ^A^A} with the AUTH
        command (Google's documented example); to the error challenge it
        answers with an empty line, and the 535 that follows is a decline.
        """
        token = b"ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
        client = self.client(XOAUTH2Authenticator(b"someuser@example.com"), secret=token)
        session, written = esmtp(self, client, [b"AUTH XOAUTH2"])
        self.assertEqual(
            written,
            b"AUTH XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==\r\n",
        )
        challenge = b"eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG1hYyIsInNjb3BlIjoiaHR0cHM6Ly9tYWlsLmdvb2dsZS5jb20vIn0="
        self.assertEqual(session.server(b"334 " + challenge + b"\r\n"), b"\r\n")
        self.assertEqual(session.server(b"535 5.7.8 Username and Password not accepted\r\n"), b"QUIT\r\n")
        self.assertOneError(client, AUTHDeclinedError)

    def test_xoauth2Accepted(self):
        """
        XOAUTH2 accepted at once: the message follows.
        """
        client = self.client(XOAUTH2Authenticator(b"u@example.com"), secret=b"tok")
        session, written = esmtp(self, client, [b"AUTH XOAUTH2"])
        self.assertEqual(written, b"AUTH XOAUTH2 " + base64.b64encode(b"user=u@example.com\x01auth=Bearer tok\x01\x01") + b"\r\n")
        self.assertEqual(session.server(b"235 2.7.0 Accepted\r\n"), b"MAIL FROM:<alice@example.org>\r\n")

    def test_oauthbearer(self):
        """
        OAUTHBEARER sends the RFC 7628 section 4.1 initial response (GS2
        header, host, port, bearer token, separated by ^A) with the AUTH
        command; to an error challenge it answers a single ^A, and the
        server's 535 is a decline.
        """
        token = b"vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
        client = self.client(OAUTHBEARERAuthenticator(b"user@example.com", b"server.example.com", 143), secret=token)
        session, written = esmtp(self, client, [b"AUTH OAUTHBEARER"])
        initial = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer " + token + b"\x01\x01"
        self.assertEqual(written, b"AUTH OAUTHBEARER " + base64.b64encode(initial) + b"\r\n")
        challenge = base64.b64encode(b'{"status":"invalid_token","scope":"example_scope"}')
        self.assertEqual(session.server(b"334 " + challenge + b"\r\n"), b"AQ==\r\n")
        self.assertEqual(session.server(b"535 5.7.8 Authentication credentials invalid\r\n"), b"QUIT\r\n")
        self.assertOneError(client, AUTHDeclinedError)


# -- PIPELINING ---------------------------------------------------------------------


class PipeliningTests(ClientTestMixin, SynchronousTestCase):
    """
    With PIPELINING, MAIL, every RCPT and DATA go out in one write, and the
    replies are read in order, in any mix of success and failure.
    """

    message = b"Subject: caf\xc3\xa9\r\n\r\nCaf\xc3\xa9 au lait.\r\n"

    def start(self, extensions=(b"PIPELINING", b"SIZE 1000000", b"8BITMIME", b"ENHANCEDSTATUSCODES")):
        self.client = ESMTPTestClient([(SENDER, [BOB, CAROL], self.message)])
        self.session, written = esmtp(self, self.client, list(extensions))
        return written

    def test_oneWrite(self):
        """
        The pipelined commands go out in exactly one write, with SIZE (the
        message's size) and BODY=8BITMIME (the message has 8-bit data).
        """
        self.assertEqual(len(self.message), 34)
        self.start()
        self.assertEqual(
            self.session.transport.writes,
            [
                b"EHLO client.example\r\n",
                b"MAIL FROM:<alice@example.org> SIZE=34 BODY=8BITMIME\r\n"
                b"RCPT TO:<bob@example.com>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n",
            ],
        )

    def test_allAccepted(self):
        """
        All replies positive: the message goes after the 354, and
        C{sentMail} gets the final reply and every recipient's.
        """
        self.start()
        self.assertEqual(
            self.session.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"),
            self.message + b".\r\n",
        )
        self.assertEqual(self.session.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        self.assertEqual(
            self.client.results,
            [(250, b"2.0.0 queued", 2, [(BOB, 250, b"2.1.5 ok"), (CAROL, 250, b"2.1.5 ok")])],
        )

    def test_mailRefused(self):
        """
        MAIL refused, so every RCPT and DATA get 503: C{sentMail} gets the
        MAIL failure and no per-recipient replies (as without pipelining:
        the 503s say nothing about the recipients), no message is sent,
        and the client says RSET.
        """
        self.start()
        written = self.session.server(
            b"550 5.7.1 Sender refused\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n"
        )
        self.assertEqual(written, b"RSET\r\n")
        [(code, resp, numOk, addresses)] = self.client.results
        self.assertEqual((code, resp, numOk), (550, b"5.7.1 Sender refused", 0))
        self.assertEqual(addresses, [])
        self.assertEqual(self.session.server(b"250 2.0.0 ok\r\n"), b"QUIT\r\n")

    def test_allRecipientsRefused(self):
        """
        Every RCPT refused and DATA refused: no message, C{sentMail} gets a
        failure with each recipient's refusal, and the client says RSET.
        """
        self.start()
        written = self.session.server(
            b"250 2.1.0 ok\r\n550 5.1.1 No such user\r\n551 5.1.6 Moved\r\n554 5.5.1 No valid recipients\r\n"
        )
        self.assertEqual(written, b"RSET\r\n")
        [(code, resp, numOk, addresses)] = self.client.results
        self.assertNotIn(code, range(200, 300))
        self.assertEqual(numOk, 0)
        self.assertEqual(addresses, [(BOB, 550, b"5.1.1 No such user"), (CAROL, 551, b"5.1.6 Moved")])

    def test_someRecipientsRefused(self):
        """
        One RCPT refused: the message goes to the other, and C{sentMail}
        says so.
        """
        self.start()
        written = self.session.server(b"250 ok\r\n550 5.1.1 No such user\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(written, self.message + b".\r\n")
        self.assertEqual(self.session.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        self.assertEqual(
            self.client.results,
            [(250, b"2.0.0 queued", 1, [(BOB, 550, b"5.1.1 No such user"), (CAROL, 250, b"ok")])],
        )

    def test_dataRefused(self):
        """
        DATA refused after accepted RCPTs: C{sentMail} gets the DATA reply,
        no message is sent, and the client says RSET.
        """
        self.start()
        written = self.session.server(b"250 ok\r\n250 ok\r\n250 ok\r\n451 4.3.0 Try later\r\n")
        self.assertEqual(written, b"RSET\r\n")
        [(code, resp, numOk, _)] = self.client.results
        self.assertEqual((code, resp), (451, b"4.3.0 Try later"))

    def test_messageRefused(self):
        """
        The message refused at its end: C{sentMail} gets that reply; RSET.
        """
        self.start()
        self.session.server(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.session.server(b"552 5.3.4 Too big\r\n"), b"RSET\r\n")
        self.assertEqual(self.client.results[0][:2], (552, b"5.3.4 Too big"))

    def test_354WithoutRecipients(self):
        """
        A server that says 354 although it accepted no recipient gets a
        lone C{.}, not the message; the message is reported refused, with
        the last recipient's refusal, and the client says RSET.
        """
        self.start()
        written = self.session.server(b"250 ok\r\n550 no\r\n550 no\r\n354 go ahead anyway\r\n")
        self.assertEqual(written, b".\r\n")
        self.assertEqual(self.session.server(b"554 5.5.1 No valid recipients\r\n"), b"RSET\r\n")
        [(code, _, numOk, _)] = self.client.results
        self.assertEqual((code, numOk), (550, 0))

    def test_354WithoutRecipientsThenSuccess(self):
        """
        Even if the odd server then answers the lone C{.} with 250, the
        message reached nobody: C{sentMail} must not report success.
        """
        self.start()
        self.assertEqual(self.session.server(b"250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n354 go\r\n"), b".\r\n")
        self.session.server(b"250 2.0.0 ok\r\n")
        [(code, _, numOk, _)] = self.client.results
        self.assertEqual(numOk, 0)
        self.assertNotIn(code, range(200, 300))

    def test_354AfterMailRefused(self):
        """
        A server that refuses MAIL and still says 354 gets a lone C{.};
        C{sentMail} gets the MAIL refusal.
        """
        self.start()
        self.assertEqual(self.session.server(b"550 5.7.1 no\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n354 go\r\n"), b".\r\n")
        self.assertEqual(self.session.server(b"503 5.5.1 no\r\n"), b"RSET\r\n")
        self.assertEqual(self.client.results[0][:3], (550, b"5.7.1 no", 0))

    def test_repliesOneByteAtATime(self):
        """
        The replies may arrive in any pieces.
        """
        self.start()
        written = b""
        for byte in b"250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n":
            written += self.session.server(bytes([byte]))
        self.assertEqual(written, self.message + b".\r\n")

    def test_noPipelining(self):
        """
        Without PIPELINING the commands go one at a time.
        """
        written = self.start(extensions=(b"8BITMIME",))
        self.assertEqual(written, b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n")


class NonPipelinedTests(ClientTestMixin, SynchronousTestCase):
    """
    Without PIPELINING: MAIL, then one RCPT at a time, then DATA.
    """

    def start(self, recipients=(BOB, CAROL)):
        self.client = ESMTPTestClient([(SENDER, list(recipients), MESSAGE)])
        self.session, written = esmtp(self, self.client, [b"ENHANCEDSTATUSCODES"])
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\n")

    def test_rcptByRcpt(self):
        """
        Each RCPT waits for the reply to the one before; a refused one is
        recorded and the others get the message.
        """
        self.start()
        self.assertEqual(self.session.server(b"250 2.1.0 ok\r\n"), b"RCPT TO:<bob@example.com>\r\n")
        self.assertEqual(self.session.server(b"250 2.1.5 ok\r\n"), b"RCPT TO:<carol@example.net>\r\n")
        self.assertEqual(self.session.server(b"550 5.1.1 unknown\r\n"), b"DATA\r\n")
        self.assertEqual(self.session.server(b"354 go\r\n"), MESSAGE + b".\r\n")
        self.assertEqual(self.session.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        self.assertEqual(
            self.client.results,
            [(250, b"2.0.0 queued", 1, [(BOB, 250, b"2.1.5 ok"), (CAROL, 550, b"5.1.1 unknown")])],
        )

    def test_mailRefused(self):
        """
        MAIL refused: no RCPT; C{sentMail} gets the refusal; RSET.
        """
        self.start()
        self.assertEqual(self.session.server(b"550 5.7.1 Go away\r\n"), b"RSET\r\n")
        self.assertEqual(self.client.results, [(550, b"5.7.1 Go away", 0, [])])
        self.assertEqual(self.session.server(b"250 ok\r\n"), b"QUIT\r\n")

    def test_noRecipientAccepted(self):
        """
        Every RCPT refused: no DATA; C{sentMail} gets a failure; RSET.
        """
        self.start(recipients=[BOB])
        self.session.server(b"250 ok\r\n")
        self.assertEqual(self.session.server(b"550 5.1.1 unknown\r\n"), b"RSET\r\n")
        [(code, _, numOk, addresses)] = self.client.results
        self.assertEqual((code, numOk, addresses), (550, 0, [(BOB, 550, b"5.1.1 unknown")]))

    def test_dataRefused(self):
        """
        DATA refused: C{sentMail} gets that reply; RSET.
        """
        self.start(recipients=[BOB])
        self.session.server(b"250 ok\r\n")
        self.assertEqual(self.session.server(b"250 ok\r\n"), b"DATA\r\n")
        self.assertEqual(self.session.server(b"554 5.5.0 No\r\n"), b"RSET\r\n")
        self.assertEqual(self.client.results[0][:2], (554, b"5.5.0 No"))


# -- SIZE, 8BITMIME, SMTPUTF8, DSN --------------------------------------------------


class UnseekableFile:
    """
    A message file that can only be read.
    """

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def read(self, size=-1):
        return self._file.read(size)


class ParameterTests(ClientTestMixin, SynchronousTestCase):
    """
    The MAIL and RCPT parameters: SIZE (RFC 1870), BODY=8BITMIME (RFC
    6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461); and the local refusals when
    a message needs what the server lacks.
    """

    def send(self, extensions, messages):
        client = ESMTPTestClient(messages)
        session, written = esmtp(self, client, list(extensions))
        return client, session, written

    def test_declaredSize(self):
        """
        With SIZE, the message's size is declared on MAIL.
        """
        _, _, written = self.send([b"SIZE 1000"], [(SENDER, [BOB], MESSAGE)])
        self.assertEqual(written, b"MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(MESSAGE))

    def test_sizeWithoutLimit(self):
        """
        SIZE without a limit (or 0): the size is still declared.
        """
        _, _, written = self.send([b"SIZE"], [(SENDER, [BOB], MESSAGE)])
        self.assertEqual(written, b"MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(MESSAGE))

    def test_noSize(self):
        """
        Without SIZE, no SIZE parameter.
        """
        _, _, written = self.send([b"8BITMIME"], [(SENDER, [BOB], MESSAGE)])
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\n")

    def test_unseekableFile(self):
        """
        A message that cannot be measured goes without SIZE.
        """
        client, session, written = self.send([b"SIZE 1000"], [(SENDER, [BOB], UnseekableFile(MESSAGE))])
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\n")
        session.server(b"250 ok\r\n")
        session.server(b"250 ok\r\n")
        self.assertEqual(session.server(b"354 go\r\n"), MESSAGE + b".\r\n")

    def test_overSizeLimit(self):
        """
        A message larger than the server's SIZE limit is refused locally
        with 552 (5.3.4) and a reason, and nothing is sent for it; the next message
        goes as usual.
        """
        big = b"x" * 60 + b"\r\n"
        client, session, written = self.send(
            [b"SIZE 50"], [(SENDER, [BOB], big), (b"dave@example.org", [CAROL], MESSAGE)]
        )
        self.assertEqual(written, b"MAIL FROM:<dave@example.org> SIZE=%d\r\n" % len(MESSAGE))
        [(code, resp, numOk, addresses)] = client.results
        self.assertEqual((code, numOk, addresses), (552, 0, []))
        self.assertIn(b"62", resp)
        self.assertEqual(b"".join(session.transport.writes), b"EHLO client.example\r\n" + written)

    def test_overSizeLimitOnly(self):
        """
        When the only message is too large, the client says QUIT.
        """
        client, session, written = self.send([b"SIZE 10"], [(SENDER, [BOB], MESSAGE)])
        self.assertEqual(written, b"QUIT\r\n")
        self.assertEqual(client.results[0][0], 552)

    def test_8bitBody(self):
        """
        A message with 8-bit data gets BODY=8BITMIME when the server offers
        8BITMIME; a 7-bit one gets no BODY.
        """
        eight = b"Subject: \xe2\x82\xac\r\n\r\n\xe2\x82\xac\r\n"
        client, session, written = self.send(
            [b"8BITMIME", b"PIPELINING"], [(SENDER, [BOB], eight), (SENDER, [BOB], MESSAGE)]
        )
        self.assertEqual(written, b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        written = session.server(b"250 ok\r\n")
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")

    def test_8bitRefused(self):
        """
        A message with 8-bit data to a server without 8BITMIME is refused
        locally with 554 and a reason naming 8BITMIME; nothing is sent.
        """
        client, session, written = self.send([b"SIZE 1000"], [(SENDER, [BOB], b"Subject: \xff\r\n\r\nx\r\n")])
        self.assertEqual(written, b"QUIT\r\n")
        [(code, resp, numOk, _)] = client.results
        self.assertEqual((code, numOk), (554, 0))
        self.assertIn(b"8BITMIME", resp)

    def test_8bitAfterHelo(self):
        """
        A plain SMTP client (no extensions) refuses an 8-bit message the
        same way.
        """
        client = SMTPTestClient([(SENDER, [BOB], b"\xe9t\xe9\r\n")])
        session = Session(client)
        session.server(b"220 mx.example\r\n")
        self.assertEqual(session.server(b"250 mx.example\r\n"), b"QUIT\r\n")
        self.assertEqual(client.results[0][0], 554)
        self.assertIn(b"8BITMIME", client.results[0][1])

    def test_smtputf8Sender(self):
        """
        A UTF-8 sender address gets the SMTPUTF8 parameter, the address
        going as UTF-8.
        """
        sender = "jos\xe9@example.org".encode()
        client, session, written = self.send([b"8BITMIME", b"SMTPUTF8"], [(sender, [BOB], MESSAGE)])
        self.assertTrue(written.startswith(b"MAIL FROM:<jos\xc3\xa9@example.org> "), written)
        self.assertIn(b" SMTPUTF8", written)
        self.assertTrue(written.endswith(b"\r\n"))

    def test_smtputf8Recipient(self):
        """
        A UTF-8 recipient is enough for SMTPUTF8 on MAIL.
        """
        recipient = "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a".encode()
        client, session, written = self.send([b"8BITMIME", b"SMTPUTF8"], [(SENDER, [recipient], MESSAGE)])
        self.assertTrue(written.startswith(b"MAIL FROM:<alice@example.org> "), written)
        self.assertIn(b" SMTPUTF8", written)
        self.assertEqual(session.server(b"250 ok\r\n"), b"RCPT TO:<" + recipient + b">\r\n")

    def test_smtputf8Refused(self):
        """
        UTF-8 addresses to a server without SMTPUTF8: refused locally with
        554 and a reason naming SMTPUTF8; nothing is sent.
        """
        sender = "jos\xe9@example.org".encode()
        client, session, written = self.send([b"8BITMIME"], [(sender, [BOB], MESSAGE)])
        self.assertEqual(written, b"QUIT\r\n")
        self.assertEqual(client.results[0][0], 554)
        self.assertIn(b"SMTPUTF8", client.results[0][1])

    def test_dsn(self):
        """
        A L{MailFrom} with RET and ENVID and L{RcptTo} values with NOTIFY
        and ORCPT put the DSN parameters on the wire when the server offers
        DSN (ORCPT's address as xtext).
        """
        mail = MailFrom(Address(SENDER), ret=b"HDRS", envid=b"x")
        rcpts = [
            RcptTo(Address(BOB), notify=(b"SUCCESS", b"FAILURE"), orcpt=(b"rfc822", b"bob+tag@example.com")),
            RcptTo(Address(CAROL), notify=(b"NEVER",)),
        ]
        client, session, written = self.send([b"DSN", b"PIPELINING"], [(mail, rcpts, MESSAGE)])
        self.assertEqual(
            written,
            b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=x\r\n"
            b"RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Btag@example.com\r\n"
            b"RCPT TO:<carol@example.net> NOTIFY=NEVER\r\n"
            b"DATA\r\n",
        )

    def test_dsnDropped(self):
        """
        Without DSN, the DSN parameters are left out.
        """
        mail = MailFrom(Address(SENDER), ret=b"HDRS", envid=b"x")
        rcpts = [RcptTo(Address(BOB), notify=(b"FAILURE",), orcpt=(b"rfc822", BOB))]
        client, session, written = self.send([b"PIPELINING"], [(mail, rcpts, MESSAGE)])
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")

    def test_dsnNonPipelined(self):
        """
        DSN parameters go on each RCPT without PIPELINING too.
        """
        mail = MailFrom(Address(SENDER), envid=b"id+1")
        rcpts = [RcptTo(Address(BOB), notify=(b"DELAY",))]
        client, session, written = self.send([b"DSN"], [(mail, rcpts, MESSAGE)])
        self.assertEqual(written, b"MAIL FROM:<alice@example.org> ENVID=id+2B1\r\n")
        self.assertEqual(session.server(b"250 ok\r\n"), b"RCPT TO:<bob@example.com> NOTIFY=DELAY\r\n")


# -- enhanced status codes ------------------------------------------------------------


class EnhancedStatusTests(ClientTestMixin, SynchronousTestCase):
    """
    Errors carry the enhanced status code (RFC 2034, RFC 3463) of the reply
    they report, in C{status}.
    """

    def test_authDeclinedStatus(self):
        """
        An L{AUTHDeclinedError} carries the 535's C{5.7.8}.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)], secret=b"pass")
        client.registerAuthenticator(PLAINAuthenticator(b"user"))
        session, _ = esmtp(self, client, [b"ENHANCEDSTATUSCODES", b"AUTH PLAIN"])
        session.server(b"535 5.7.8 Authentication credentials invalid\r\n")
        self.assertEqual(client.errors[0].status, b"5.7.8")

    def test_noStatus(self):
        """
        A reply without an enhanced status code gives an error whose
        C{status} is L{None}.
        """
        client = SMTPTestClient()
        Session(client).server(b"554 go away\r\n")
        self.assertIsNone(client.errors[0].status)

    def test_statusPerRecipient(self):
        """
        Each recipient's reply in C{sentMail}'s addresses keeps its status
        as on the wire.
        """
        client = ESMTPTestClient([(SENDER, [BOB, CAROL], MESSAGE)])
        session, _ = esmtp(self, client, [b"PIPELINING", b"ENHANCEDSTATUSCODES"])
        session.server(b"250 2.1.0 ok\r\n550 5.1.1 unknown\r\n450 4.2.1 busy\r\n554 5.5.1 none\r\n")
        [(_, _, _, addresses)] = client.results
        self.assertEqual(addresses, [(BOB, 550, b"5.1.1 unknown"), (CAROL, 450, b"4.2.1 busy")])

    def test_timeoutNoStatus(self):
        """
        A local error (a timeout) has no status, even after a reply that
        had one.
        """
        client = SMTPTestClient([(SENDER, [BOB], MESSAGE)])
        client.timeout = 10
        session = Session(client)
        session.server(b"220 2.0.0 mx.example\r\n")
        session.clock.advance(10)
        error = self.assertOneError(client, SMTPTimeoutError)
        self.assertIsNone(error.status)


# -- CHUNKING -------------------------------------------------------------------------


class ChunkingTests(ClientTestMixin, SynchronousTestCase):
    """
    CHUNKING (RFC 3030): the message in BDAT chunks, not dot-stuffed, with
    exact sizes; a refused chunk ends the transfer.
    """

    message = b"Subject: x\r\n\r\n.not stuffed\r\nend\r\n"

    def start(self, messages=None, extensions=(b"PIPELINING", b"CHUNKING"), **attrs):
        self.client = ESMTPTestClient(messages or [(SENDER, [BOB], self.message)])
        for name, value in attrs.items():
            setattr(self.client, name, value)
        self.session, written = esmtp(self, self.client, list(extensions))
        return written

    def test_oneChunk(self):
        """
        With PIPELINING and CHUNKING, MAIL and RCPTs go together (no DATA);
        then the message goes as one C{BDAT n LAST} chunk in one write,
        dots left alone.
        """
        self.assertEqual(self.start(), b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
        written = self.session.server(b"250 ok\r\n250 ok\r\n")
        self.assertEqual(written, b"BDAT %d LAST\r\n" % len(self.message) + self.message)
        self.assertEqual(self.session.transport.writes[-1], written)
        self.assertEqual(self.session.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        self.assertEqual(self.client.results, [(250, b"2.0.0 queued", 1, [(BOB, 250, b"ok")])])

    def test_lineEndsNormalised(self):
        """
        Bare LF and bare CR become CRLF, a final line without an end gets
        one, and the chunk size counts what is sent.
        """
        self.start(messages=[(SENDER, [BOB], b"a\nb\rc")])
        written = self.session.server(b"250 ok\r\n250 ok\r\n")
        self.assertEqual(written, b"BDAT 9 LAST\r\na\r\nb\r\nc\r\n")

    def test_emptyMessage(self):
        """
        An empty message is C{BDAT 0 LAST}.
        """
        self.start(messages=[(SENDER, [BOB], b"")])
        self.assertEqual(self.session.server(b"250 ok\r\n250 ok\r\n"), b"BDAT 0 LAST\r\n")

    def test_severalChunks(self):
        """
        A message larger than a chunk goes as several BDAT chunks, as the
        transport pulls them, each with its exact size, the last with LAST.
        """
        self.patch(_client, "CHUNK_SIZE", 7)
        self.start(messages=[(SENDER, [BOB], b"0123456789abcdefghij")])
        writes = self.session.transport.writes
        first = len(writes)
        self.assertEqual(self.session.server(b"250 ok\r\n250 ok\r\n"), b"BDAT 7\r\n0123456")
        self.assertIs(self.session.transport.producer, self.client._producer)
        self.assertEqual(self.session.server(b"250 2.0.0 chunk ok\r\n"), b"")
        self.assertEqual(self.session.drain(), b"BDAT 7\r\n789abcdBDAT 8 LAST\r\nefghij\r\n")
        self.assertEqual(writes[first:], [b"BDAT 7\r\n0123456", b"BDAT 7\r\n789abcd", b"BDAT 8 LAST\r\nefghij\r\n"])
        self.assertEqual(self.session.server(b"250 2.0.0 chunk ok\r\n"), b"")
        self.assertEqual(self.client.results, [])
        self.assertEqual(self.session.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        self.assertEqual(self.client.results[0][:3], (250, b"2.0.0 queued", 1))

    def test_refusedChunkStops(self):
        """
        When a chunk is refused, no more chunks are sent: C{sentMail} gets
        the refusal and the client says RSET.
        """
        self.patch(_client, "CHUNK_SIZE", 7)
        self.start(messages=[(SENDER, [BOB], b"0123456789abcdefghij")])
        self.assertEqual(self.session.server(b"250 ok\r\n250 ok\r\n"), b"BDAT 7\r\n0123456")
        self.assertEqual(self.session.server(b"552 5.3.4 Too much\r\n"), b"RSET\r\n")
        self.assertIsNone(self.session.transport.producer)
        self.assertEqual(self.session.drain(), b"")
        self.assertEqual(self.client.results, [(552, b"5.3.4 Too much", 1, [(BOB, 250, b"ok")])])

    def test_refusedChunkWithChunksInFlight(self):
        """
        When a chunk is refused while a later one is already sent, the
        client stops sending and waits for the reply to every chunk sent
        before it says RSET; C{sentMail} gets the first refusal.
        """
        self.patch(_client, "CHUNK_SIZE", 7)
        self.start(messages=[(SENDER, [BOB], b"0123456789abcdefghij")])
        self.session.server(b"250 ok\r\n250 ok\r\n")
        self.session.transport.producer.resumeProducing()
        self.assertEqual(self.session.take(), b"BDAT 7\r\n789abcd")
        self.assertEqual(self.session.server(b"451 4.3.0 Oops\r\n"), b"")
        self.assertEqual(self.session.drain(), b"")
        self.assertEqual(self.session.server(b"503 5.5.1 No\r\n"), b"RSET\r\n")
        self.assertEqual(self.client.results[0][:2], (451, b"4.3.0 Oops"))

    def test_useChunkingFalse(self):
        """
        With C{useChunking = False}, DATA is used although CHUNKING is
        offered.
        """
        written = self.start(useChunking=False)
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        self.assertEqual(self.session.server(b"250 ok\r\n250 ok\r\n354 go\r\n"), stuff(self.message))

    def test_chunkingWithoutPipelining(self):
        """
        CHUNKING without PIPELINING: MAIL, RCPT, then BDAT.
        """
        written = self.start(extensions=(b"CHUNKING",))
        self.assertEqual(written, b"MAIL FROM:<alice@example.org>\r\n")
        self.assertEqual(self.session.server(b"250 ok\r\n"), b"RCPT TO:<bob@example.com>\r\n")
        self.assertEqual(self.session.server(b"250 ok\r\n"), b"BDAT %d LAST\r\n" % len(self.message) + self.message)

    def test_noRecipientNoBDAT(self):
        """
        When no recipient is accepted, no chunk is sent.
        """
        self.start()
        self.assertEqual(self.session.server(b"250 ok\r\n550 5.1.1 no\r\n"), b"RSET\r\n")
        self.assertEqual(self.client.results[0][2], 0)


# -- dot-stuffing and writes --------------------------------------------------------------


def dataWrites(testCase, message: bytes, chunkSize: int):
    """
    Send C{message} after DATA with C{CHUNK_SIZE} set to C{chunkSize}.

    @return: the writes made after the 354, in order.
    """
    testCase.patch(_client, "CHUNK_SIZE", chunkSize)
    client = SMTPTestClient([(SENDER, [BOB], message)])
    session = Session(client)
    session.server(b"220 mx.example\r\n")
    session.server(b"250 mx.example\r\n")
    session.server(b"250 ok\r\n")
    session.server(b"250 ok\r\n")
    first = len(session.transport.writes)
    session.server(b"354 go\r\n")
    session.drain()
    writes = session.transport.writes[first:]
    testCase.assertEqual(session.server(b"250 ok\r\n"), b"QUIT\r\n")
    testCase.assertEqual(client.errors, [])
    return writes


class DotStuffingTests(SynchronousTestCase):
    """
    What goes after DATA is C{mailproto.wire.stuff(message)}, wherever the
    chunks split the message, and the final C{.} leaves in the same write as
    the last of the message.
    """

    def check(self, message: bytes, chunkSize: int = 7) -> list[bytes]:
        writes = dataWrites(self, message, chunkSize)
        self.assertEqual(b"".join(writes), stuff(message), (message, writes))
        self.assertTrue(writes[-1].endswith(b".\r\n"), writes)
        self.assertNotIn(b"", writes)
        return writes

    def test_dotLineAtEveryOffset(self):
        """
        A C{.} line (and lines starting with dots) at every offset across
        the chunk boundaries, with CRLF, LF and CR line ends.
        """
        for end in (b"\r\n", b"\n", b"\r"):
            for offset in range(0, 16):
                body = b"x" * offset + end + b"." + end + b".." + end + b".dot" + end + b"tail"
                self.check(body)
                self.check(body + end)

    def test_firstLineDot(self):
        """
        A first line that is C{.} or starts with a dot is stuffed.
        """
        self.assertEqual(b"".join(self.check(b".\r\nsecond\r\n")), b"..\r\nsecond\r\n.\r\n")
        self.assertEqual(b"".join(self.check(b".")), b"..\r\n.\r\n")
        self.check(b".first\r\n", chunkSize=1)

    def test_bareLineEnds(self):
        """
        Bare LF and bare CR become CRLF, a CRLF split between two chunks
        stays one line end, and a dot after any of them is stuffed.
        """
        for chunkSize in range(1, 9):
            self.check(b"a\n.b\r.c\r\n.d\n\n\r\r.", chunkSize)
            self.check(b"\r\n.\r\n\r\n", chunkSize)

    def test_emptyMessage(self):
        """
        An empty message is only the final C{.}.
        """
        self.assertEqual(self.check(b""), [b".\r\n"])

    def test_finalDotWithLastChunk(self):
        """
        The final C{.} leaves in the same write as the last chunk of the
        message, so that no write is only C{.CRLF}.
        """
        for length in range(1, 30):
            message = b"y" * length + b"\r\n"
            writes = dataWrites(self, message, 7)
            self.assertNotEqual(writes[-1], b".\r\n", (length, writes))
            self.assertEqual(b"".join(writes), stuff(message))

    def test_finalDotWithLastChunkLF(self):
        """
        The same with LF line ends, whatever the length.
        """
        for length in range(1, 30):
            writes = dataWrites(self, b"y" * length + b"\n", 7)
            self.assertNotEqual(writes[-1], b".\r\n", (length, writes))

    def test_smallMessageOneWrite(self):
        """
        A message that fits in a chunk is written at once, with its final
        C{.}, and no producer is registered.
        """
        self.assertEqual(dataWrites(self, MESSAGE, 65536), [MESSAGE + b".\r\n"])


# -- streaming -----------------------------------------------------------------------------


class GeneratedMessage:
    """
    A message made on the fly, a fixed-length line at a time, so that a big
    one takes no memory: every 50th line starts with a dot.
    """

    lineLength = 64

    def __init__(self, lines: int) -> None:
        self.lines = lines
        self.size = lines * self.lineLength
        self.position = 0

    @classmethod
    def line(cls, index: int) -> bytes:
        if index % 50 == 0:
            text = b".dot line %010d" % index
        else:
            text = b"line %010d of a generated message" % index
        return text + b" " * (cls.lineLength - 1 - len(text)) + b"\n"

    def read(self, size: int = -1) -> bytes:
        end = self.size if size < 0 else min(self.size, self.position + size)
        if end <= self.position:
            return b""
        first, last = self.position // self.lineLength, (end - 1) // self.lineLength
        data = b"".join(self.line(i) for i in range(first, last + 1))
        start = self.position - first * self.lineLength
        data = data[start : start + end - self.position]
        self.position = end
        return data

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = [0, self.position, self.size][whence] + offset
        return self.position

    def expectedDigest(self) -> tuple[bytes, int]:
        """
        @return: the SHA-256 and the length of what must go after DATA,
            worked out line by line.
        """
        digest = hashlib.sha256()
        length = 0
        batch = []
        for i in range(self.lines):
            line = self.line(i)
            out = (b"." if line[:1] == b"." else b"") + line[:-1] + b"\r\n"
            batch.append(out)
            length += len(out)
            if len(batch) == 4096:
                digest.update(b"".join(batch))
                batch = []
        batch.append(b".\r\n")
        length += 3
        digest.update(b"".join(batch))
        return digest.digest(), length


class StreamingTests(ClientTestMixin, SynchronousTestCase):
    """
    A large message is sent by a pull producer registered with the
    transport, a chunk at a time, in bounded memory.
    """

    def test_generatedMessage(self):
        """
        The generated message helper reads back what it describes.
        """
        message = GeneratedMessage(120)
        whole = message.read()
        self.assertEqual(whole, b"".join(GeneratedMessage.line(i) for i in range(120)))
        message.seek(0)
        pieces = []
        while True:
            piece = message.read(1000)
            if not piece:
                break
            pieces.append(piece)
        self.assertEqual(b"".join(pieces), whole)

    def test_producerRegistered(self):
        """
        For a message larger than a chunk, a non-streaming (pull) producer
        is registered with the transport, and unregistered at the end.
        """
        self.patch(_client, "CHUNK_SIZE", 16)
        client = ESMTPTestClient([(SENDER, [BOB], b"x" * 100 + b"\r\n")])
        session, _ = esmtp(self, client, [b"PIPELINING"])
        session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        producer = session.transport.producer
        self.assertTrue(IPullProducer.providedBy(producer))
        self.assertFalse(session.transport.streaming)
        self.assertEqual(session.drain(), b"x" * 84 + b"\r\n.\r\n")
        self.assertIsNone(session.transport.producer)

    def test_twentyMebibytes(self):
        """
        A 20 MiB message read from a file-like object is sent exactly, with
        the allocations of the whole exchange (measuring, stuffing,
        writing) peaking under 1 MiB.
        """
        message = GeneratedMessage(20 * 1024 * 1024 // GeneratedMessage.lineLength)
        expected, expectedLength = message.expectedDigest()
        client = ESMTPTestClient([(SENDER, [BOB], message)])
        transport = HashingTransport()
        session = Session(client, transport)
        session.server(b"220 mx.example\r\n")
        tracemalloc.start()
        try:
            written = session.server(ehlo(b"PIPELINING", b"SIZE 100000000"))
            self.assertEqual(
                written,
                b"MAIL FROM:<alice@example.org> SIZE=20971520\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
            )
            transport.hashing = True
            client.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n")
            for _ in range(10000):
                if transport.producer is None:
                    break
                transport.producer.resumeProducing()
            transport.hashing = False
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertIsNone(transport.producer)
        self.assertEqual(transport.hashed, expectedLength)
        self.assertEqual(transport.digest.digest(), expected)
        self.assertLess(peak, 1024 * 1024)
        self.assertEqual(session.server(b"250 ok\r\n"), b"QUIT\r\n")
        self.assertEqual(client.results[0][:3], (250, b"ok", 1))


# -- several messages ----------------------------------------------------------------------


class SeveralMessagesTests(ClientTestMixin, SynchronousTestCase):
    """
    One connection, several messages: C{getMailFrom} is asked again after
    each; no RSET after a success, RSET after a failure.
    """

    def test_twoSuccesses(self):
        """
        After an accepted message the next MAIL follows directly.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE), (b"dave@example.org", [CAROL], b"second\r\n")])
        session, _ = esmtp(self, client, [b"PIPELINING"])
        session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(
            session.server(b"250 one\r\n"),
            b"MAIL FROM:<dave@example.org>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n",
        )
        self.assertEqual(session.server(b"250 ok\r\n250 ok\r\n354 go\r\n"), b"second\r\n.\r\n")
        self.assertEqual(session.server(b"250 two\r\n"), b"QUIT\r\n")
        self.assertEqual([r[:3] for r in client.results], [(250, b"one", 1), (250, b"two", 1)])
        self.assertNotIn(b"RSET", b"".join(session.transport.writes))

    def test_failureThenSuccess(self):
        """
        After a refused message, RSET, then the next MAIL on its 250.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE), (b"dave@example.org", [CAROL], b"second\r\n")])
        session, _ = esmtp(self, client, [])
        session.server(b"250 ok\r\n")
        self.assertEqual(session.server(b"550 no\r\n"), b"RSET\r\n")
        self.assertEqual(session.server(b"250 reset\r\n"), b"MAIL FROM:<dave@example.org>\r\n")
        session.server(b"250 ok\r\n")
        session.server(b"250 ok\r\n")
        session.server(b"354 go\r\n")
        self.assertEqual(session.server(b"250 two\r\n"), b"QUIT\r\n")
        self.assertEqual([r[:3] for r in client.results], [(550, b"No recipients accepted", 0), (250, b"two", 1)])

    def test_eachMessageItsOwnResults(self):
        """
        Each C{sentMail} gets only its own message's recipients.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE), (SENDER, [CAROL], MESSAGE)])
        session, _ = esmtp(self, client, [b"PIPELINING"])
        session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        session.server(b"250 ok\r\n")
        session.server(b"250 ok\r\n550 no\r\n554 no\r\n")
        self.assertEqual([r[3] for r in client.results], [[(BOB, 250, b"ok")], [(CAROL, 550, b"no")]])

    def test_refusedRsetDoesNotLoop(self):
        """
        A server that refuses RSET is not sent RSET again and again.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session, _ = esmtp(self, client, [])
        self.assertEqual(session.server(b"550 no\r\n"), b"RSET\r\n")
        written = session.server(b"500 5.5.1 What?\r\n")
        self.assertNotIn(b"RSET", written)


# -- timeouts ----------------------------------------------------------------------------------


class TimeoutTests(ClientTestMixin, SynchronousTestCase):
    """
    C{timeout}: seconds to wait for each reply, on the protocol's clock.
    """

    def test_greetingTimeout(self):
        """
        No greeting within C{timeout}: an L{SMTPTimeoutError} goes to
        C{sendError}; it is fatal, so the connection is closed.
        """
        client = SMTPTestClient([(SENDER, [BOB], MESSAGE)])
        client.timeout = 10
        session = Session(client)
        session.clock.advance(9.9)
        self.assertEqual(client.errors, [])
        session.clock.advance(0.1)
        error = self.assertOneError(client, SMTPTimeoutError)
        self.assertTrue(error.isFatal)
        self.assertTrue(error.retry)
        self.assertTrue(session.transport.disconnecting)
        self.assertEqual(session.take(), b"")

    def test_repliesResetTimeout(self):
        """
        Each reply restarts the wait.
        """
        client = SMTPTestClient([(SENDER, [BOB], MESSAGE)])
        client.timeout = 10
        session = Session(client)
        session.clock.advance(9)
        session.server(b"220 mx.example\r\n")
        session.clock.advance(9)
        session.server(b"250 mx.example\r\n")
        session.clock.advance(9)
        self.assertEqual(client.errors, [])
        session.clock.advance(1)
        self.assertOneError(client, SMTPTimeoutError)

    def test_progressResetsTimeout(self):
        """
        While the message is being sent, each chunk restarts the wait; the
        wait for the final reply starts after the last chunk.
        """
        self.patch(_client, "CHUNK_SIZE", 7)
        client = ESMTPTestClient([(SENDER, [BOB], b"z" * 100 + b"\r\n")])
        client.timeout = 10
        session, _ = esmtp(self, client, [b"PIPELINING"])
        sent = session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        chunks = 0
        while session.transport.producer is not None:
            session.clock.advance(9)
            session.transport.producer.resumeProducing()
            chunks += 1
        self.assertGreater(chunks * 9, 10)
        self.assertEqual(client.errors, [])
        self.assertEqual(sent + session.take(), stuff(b"z" * 100 + b"\r\n"))
        session.clock.advance(9)
        self.assertEqual(client.errors, [])
        session.clock.advance(1)
        self.assertOneError(client, SMTPTimeoutError)

    def test_noTimeout(self):
        """
        With C{timeout = None} (the default) nothing is scheduled.
        """
        client = SMTPTestClient()
        session = Session(client)
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_connectionLostCancels(self):
        """
        Losing the connection cancels the wait.
        """
        client = SMTPTestClient()
        client.timeout = 10
        session = Session(client)
        self.assertEqual(len(session.clock.getDelayedCalls()), 1)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(session.clock.getDelayedCalls(), [])


# -- malformed replies ----------------------------------------------------------------------------


class MalformedReplyTests(ClientTestMixin, SynchronousTestCase):
    """
    What is not an SMTP reply is an L{SMTPProtocolError}: fatal, the
    connection is closed.
    """

    def assertProtocolError(self, data, before=()):
        client = SMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        for line in before:
            session.server(line)
        self.assertEqual(session.server(data), b"")
        error = self.assertOneError(client, SMTPProtocolError)
        self.assertTrue(error.isFatal)
        self.assertFalse(error.retry)
        self.assertTrue(session.transport.disconnecting)
        return client, session

    def test_notAReply(self):
        """
        A line without a reply code.
        """
        self.assertProtocolError(b"hello there\r\n")

    def test_badCode(self):
        """
        A reply code out of range.
        """
        self.assertProtocolError(b"999 what\r\n")

    def test_codeChanges(self):
        """
        A multi-line reply whose code changes.
        """
        self.assertProtocolError(b"250-mx.example\r\n251 more\r\n", before=[b"220 mx.example\r\n"])

    def test_lineTooLongUnfinished(self):
        """
        More than C{maxReplyLine} octets without a line end.
        """
        self.assertProtocolError(b"220 " + b"x" * 9000)

    def test_lineTooLong(self):
        """
        A whole line longer than C{maxReplyLine}.
        """
        self.assertProtocolError(b"220 " + b"x" * 8200 + b"\r\n")

    def test_replyTooLong(self):
        """
        A reply of more than C{maxReply} octets, in short lines.
        """
        self.assertProtocolError(b"".join(b"220-" + b"x" * 70 + b"\r\n" for _ in range(1000)))

    def test_nothingAfterProtocolError(self):
        """
        After a protocol error, the rest of the packet is ignored: one
        error, no command (not even for a valid reply that follows).
        """
        client, session = self.assertProtocolError(b"garbage\r\n220 mx.example\r\n")
        client, session = self.assertProtocolError(b"garbage\r\nmore garbage\r\n")


# -- TCP_NODELAY ------------------------------------------------------------------------------------


class NoDelayTests(SynchronousTestCase):
    """
    The client turns Nagle's algorithm off when it connects.
    """

    def test_setOnConnect(self):
        """
        C{setTcpNoDelay(True)} is called on the transport in
        C{connectionMade}.
        """
        transport = NoDelayTransport()
        Session(SMTPTestClient(), transport)
        self.assertEqual(transport.noDelay, [True])

    def test_wrappedTransport(self):
        """
        Under a wrapper (TLS) without C{setTcpNoDelay}, the wrapped
        transport's is used.
        """
        inner = NoDelayTransport()
        outer = RecordingTransport()
        outer.transport = inner
        Session(SMTPTestClient(), outer)
        self.assertEqual(inner.noDelay, [True])

    def test_osErrorIgnored(self):
        """
        A transport that cannot set it (a UNIX socket) is no problem.
        """

        class Refusing(RecordingTransport):
            def setTcpNoDelay(self, enabled):
                raise OSError("not TCP")

        session = Session(SMTPTestClient(), Refusing())
        self.assertEqual(session.server(b"220 mx.example\r\n"), b"HELO client.example\r\n")


# -- LMTP ---------------------------------------------------------------------------------------------


class LMTPTests(ClientTestMixin, SynchronousTestCase):
    """
    L{LMTPClient} (RFC 2033): LHLO, pipelining always, and one reply per
    accepted recipient after the message.
    """

    recipients = [BOB, b"dan@example.com", CAROL]

    def start(self, extensions=(b"PIPELINING", b"ENHANCEDSTATUSCODES", b"CHUNKING", b"8BITMIME")):
        self.client = LMTPTestClient([(SENDER, list(self.recipients), MESSAGE)])
        self.session = Session(self.client)
        self.assertEqual(self.session.server(b"220 lmtp.example LMTP\r\n"), b"LHLO client.example\r\n")
        return self.session.server(ehlo(*extensions))

    def test_perRecipientReplies(self):
        """
        One recipient refused at RCPT, one failing after the message, one
        delivered: C{sentMail}'s addresses hold each one's final reply,
        C{numOk} counts the delivered, and DATA is used, not BDAT.
        """
        written = self.start()
        self.assertEqual(
            written,
            b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n"
            b"RCPT TO:<dan@example.com>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n",
        )
        written = self.session.server(b"250 2.1.0 ok\r\n550 5.1.1 no bob\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
        self.assertEqual(written, MESSAGE + b".\r\n")
        self.assertEqual(self.session.server(b"452 4.2.2 dan is over quota\r\n"), b"")
        self.assertEqual(self.client.results, [])
        self.assertEqual(self.session.server(b"250 2.0.0 carol delivered\r\n"), b"QUIT\r\n")
        self.assertEqual(
            self.client.results,
            [
                (
                    250,
                    b"2.0.0 carol delivered",
                    1,
                    [
                        (BOB, 550, b"5.1.1 no bob"),
                        (b"dan@example.com", 452, b"4.2.2 dan is over quota"),
                        (CAROL, 250, b"2.0.0 carol delivered"),
                    ],
                )
            ],
        )

    def test_allFailAfterData(self):
        """
        When every accepted recipient fails after the message, C{sentMail}
        gets a failure, and the client says RSET.
        """
        self.start()
        self.session.server(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.session.server(b"452 4.2.2 full\r\n550 5.2.1 disabled\r\n"), b"")
        self.assertEqual(self.session.server(b"451 4.3.0 error\r\n"), b"RSET\r\n")
        [(code, _, numOk, addresses)] = self.client.results
        self.assertNotIn(code, range(200, 300))
        self.assertEqual(numOk, 0)
        self.assertEqual([c for _, c, _ in addresses], [452, 550, 451])

    def test_repliesInOnePacket(self):
        """
        The per-recipient replies may come together.
        """
        self.start()
        self.session.server(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.session.server(b"250 a\r\n250 b\r\n250 c\r\n"), b"QUIT\r\n")
        self.assertEqual(self.client.results[0][:3], (250, b"a", 3))

    def test_pipelinesWithoutPipeliningKeyword(self):
        """
        Every LMTP server pipelines (RFC 2033 section 4.2): MAIL, RCPT and
        DATA go together even if PIPELINING is not listed.
        """
        self.assertEqual(
            self.start(extensions=(b"8BITMIME",)),
            b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n"
            b"RCPT TO:<dan@example.com>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n",
        )

    def test_lhloRefused(self):
        """
        LHLO refused: no falling back to HELO; L{EHLORequiredError}.
        """
        client = LMTPTestClient([(SENDER, [BOB], MESSAGE)])
        session = Session(client)
        session.server(b"220 lmtp.example LMTP\r\n")
        self.assertEqual(session.server(b"500 5.5.1 What?\r\n"), b"QUIT\r\n")
        self.assertOneError(client, EHLORequiredError)

    def test_dataRefused(self):
        """
        DATA refused: no per-recipient replies are awaited; RSET.
        """
        self.start()
        self.assertEqual(
            self.session.server(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n"), b"RSET\r\n"
        )
        self.assertEqual(self.client.results[0][:2], (451, b"4.3.0 not now"))


# -- the reply discipline -------------------------------------------------------------------------


class ReplyDisciplineTests(ClientTestMixin, SynchronousTestCase):
    """
    Every reply answers the oldest command awaiting one.  Only 354
    continues DATA, only a final reply to the end of data ends a message;
    a reply out of turn is an L{SMTPProtocolError}: the message in flight
    is not reported (a relay keeps it queued), and the connection closes.
    """

    def start(self, extensions=(b"PIPELINING",), messages=None, timeout=None):
        self.client = ESMTPTestClient(messages or [(SENDER, [BOB], MESSAGE)])
        self.client.timeout = timeout
        self.session, written = esmtp(self, self.client, list(extensions))
        return written

    def assertAbandoned(self, results=()):
        """
        The transaction was abandoned for a protocol error: one fatal
        L{SMTPProtocolError}, the connection closing, and no report for
        the message in flight.
        """
        error = self.assertOneError(self.client, SMTPProtocolError)
        self.assertTrue(error.isFatal)
        self.assertTrue(self.session.transport.disconnecting)
        self.assertEqual([r[:3] for r in self.client.results], list(results))
        return error

    def test_2xxToDataNotPipelined(self):
        """
        DATA answered with 250, without pipelining: the body was never sent;
        the message must not count as sent.
        """
        self.assertEqual(self.start(extensions=()), b"MAIL FROM:<alice@example.org>\r\n")
        self.assertEqual(self.session.server(b"250 ok\r\n"), b"RCPT TO:<bob@example.com>\r\n")
        self.assertEqual(self.session.server(b"250 ok\r\n"), b"DATA\r\n")
        self.assertEqual(self.session.server(b"250 2.0.0 Queued\r\n"), b"")
        error = self.assertAbandoned()
        self.assertIn(b"DATA", error.resp)

    def test_2xxToDataPipelined(self):
        """
        The pipelined DATA answered with 250: a protocol error, not a
        delivery.
        """
        self.start()
        self.assertEqual(self.session.server(b"250 ok\r\n250 ok\r\n250 2.0.0 Queued\r\n"), b"")
        self.assertAbandoned()

    def test_other3xxToData(self):
        """
        Only 354 continues DATA: a 334 does not.
        """
        self.start()
        self.assertEqual(self.session.server(b"250 ok\r\n250 ok\r\n334 go\r\n"), b"")
        self.assertAbandoned()

    def test_3xxToRcpt(self):
        """
        A 3xx to RCPT is no reply a RCPT can have.
        """
        self.start(extensions=())
        self.session.server(b"250 ok\r\n")
        self.assertEqual(self.session.server(b"354 go\r\n"), b"")
        self.assertAbandoned()

    def test_3xxToEndOfData(self):
        """
        The end of data answered with 354: no final reply, no report.
        """
        self.start()
        self.session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.session.server(b"354 again\r\n"), b"")
        self.assertAbandoned()

    def test_extraReplyAfterDotSamePacket(self):
        """
        Two replies to the end of data in one packet: which one is the
        message's cannot be known; nothing is reported.
        """
        self.start()
        self.session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.session.server(b"250 2.0.0 Queued\r\n250 2.0.0 Again\r\n"), b"")
        self.assertAbandoned()

    def test_extraReplyAfterDotPipelined(self):
        """
        A spurious reply after the first message's final reply shifts the
        second message's replies by one: its DATA seems answered with 250.
        The second message is abandoned, never reported sent, and nothing
        unhandled happens (the extra 354 that follows is ignored).
        """
        second = b"Subject: two\r\n\r\nTwo.\r\n"
        self.start(messages=[(SENDER, [BOB], MESSAGE), (SENDER, [CAROL], second)])
        self.session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(
            self.session.server(b"250 2.0.0 Queued\r\n"),
            b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n",
        )
        self.assertEqual(self.session.server(b"250 2.0.0 Spurious\r\n250 ok\r\n250 ok\r\n354 go\r\n"), b"")
        self.assertAbandoned(results=[(250, b"2.0.0 Queued", 1)])

    def test_extraReplyAfterRcpt(self):
        """
        Two replies to one RCPT (without pipelining), in one packet.
        """
        self.start(extensions=())
        self.session.server(b"250 ok\r\n")
        self.assertEqual(self.session.server(b"250 ok\r\n250 extra\r\n"), b"")
        self.assertAbandoned()

    def test_extraReplyAfterRcptPipelined(self):
        """
        An extra reply after RCPT, pipelined: the RCPT's reply is taken as
        DATA's, a 250, and the message is abandoned.
        """
        self.start()
        self.assertEqual(self.session.server(b"250 ok\r\n250 ok\r\n250 extra\r\n354 go\r\n"), b"")
        self.assertAbandoned()

    def test_replyWhileNothingAwaited(self):
        """
        A reply while the message is being sent (after 354, before its
        end): nothing awaits one; the transfer stops.
        """
        self.patch(_client, "CHUNK_SIZE", 8)
        self.start()
        self.session.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertIsNotNone(self.session.transport.producer)
        self.assertEqual(self.session.server(b"250 2.0.0 Early\r\n"), b"")
        self.assertAbandoned()
        self.assertIsNone(self.session.transport.producer)

    def test_garbage(self):
        """
        A line that is not a reply, in the middle of a pipeline.
        """
        self.start()
        self.assertEqual(self.session.server(b"250 ok\r\nGARBAGE\r\n"), b"")
        self.assertAbandoned()

    def test_421ToMailPipelined(self):
        """
        421 to the pipelined MAIL: the message is reported with that reply
        (code and text kept), the replies still awaited are not waited
        for, and the connection is closed without RSET or QUIT.
        """
        self.start()
        self.assertEqual(self.session.server(b"421 4.7.0 Too many messages\r\n"), b"")
        self.assertEqual(self.client.results, [(421, b"4.7.0 Too many messages", 0, [])])
        self.assertEqual(self.client.errors, [])
        self.assertTrue(self.session.transport.disconnecting)

    def test_421ToRcpt(self):
        """
        421 to a RCPT (without pipelining): reported with that reply; the
        connection is closed.
        """
        self.start(extensions=(), messages=[(SENDER, [BOB, CAROL], MESSAGE)])
        self.session.server(b"250 ok\r\n")
        self.assertEqual(self.session.server(b"250 ok\r\n"), b"RCPT TO:<carol@example.net>\r\n")
        self.assertEqual(self.session.server(b"421 4.3.2 Shutting down\r\n"), b"")
        [(code, resp, _, addresses)] = self.client.results
        self.assertEqual((code, resp), (421, b"4.3.2 Shutting down"))
        self.assertEqual(addresses[-1], (CAROL, 421, b"4.3.2 Shutting down"))
        self.assertTrue(self.session.transport.disconnecting)

    def test_452AfterSomeRecipients(self):
        """
        452 after two recipients (pipelined): the message goes to those
        two; the third recipient keeps its 452.
        """
        dan = b"dan@example.com"
        self.start(messages=[(SENDER, [BOB, CAROL, dan], MESSAGE)])
        written = self.session.server(b"250 ok\r\n250 ok\r\n250 ok\r\n452 4.5.3 Too many recipients\r\n354 go\r\n")
        self.assertEqual(written, stuff(MESSAGE))
        self.assertEqual(self.session.server(b"250 2.0.0 Queued\r\n"), b"QUIT\r\n")
        [(code, _, numOk, addresses)] = self.client.results
        self.assertEqual((code, numOk), (250, 2))
        self.assertEqual(addresses[2], (dan, 452, b"4.5.3 Too many recipients"))

    def test_trickledReplyTimesOut(self):
        """
        A multi-line EHLO reply trickled a line every 4 seconds times out
        C{timeout} (10) seconds after the EHLO, not after its last line.
        """
        client = ESMTPTestClient([(SENDER, [BOB], MESSAGE)])
        client.timeout = 10
        session = Session(client)
        self.assertEqual(session.server(b"220 mx.example\r\n"), b"EHLO client.example\r\n")
        for _ in range(2):
            session.clock.advance(4)
            session.server(b"250-mx.example\r\n")
        session.clock.advance(1.9)
        self.assertEqual(client.errors, [])
        session.clock.advance(0.1)
        self.assertOneError(client, SMTPTimeoutError)
        self.assertTrue(session.transport.disconnecting)

    def test_stallAfterDot(self):
        """
        No reply to the end of data: a timeout, C{timeout} after the last
        octets were written; the message is not reported.
        """
        self.start(timeout=10)
        self.session.clock.advance(5)
        self.assertEqual(self.session.server(b"250 ok\r\n250 ok\r\n354 go\r\n"), stuff(MESSAGE))
        self.session.clock.advance(9.9)
        self.assertEqual(self.client.errors, [])
        self.session.clock.advance(0.1)
        self.assertOneError(self.client, SMTPTimeoutError)
        self.assertEqual(self.client.results, [])

    def test_bdat3xx(self):
        """
        A 3xx to a BDAT chunk breaks the protocol.
        """
        self.start(extensions=(b"PIPELINING", b"CHUNKING"))
        self.session.server(b"250 ok\r\n250 ok\r\n")
        self.assertEqual(self.session.server(b"354 what\r\n"), b"")
        self.assertAbandoned()

    def test_stateRaises(self):
        """
        A state that raises is logged, and the session ends as after a
        protocol error: nothing escapes to the transport.
        """
        self.start()

        def broken(code, resp):
            raise RuntimeError("broken")

        self.client.smtpState_pipelined = broken
        self.client._okresponse = self.client._failresponse = broken
        self.session.server(b"250 ok\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertAbandoned()


#: How to bring a client to each state: its extensions, then the server's
#: replies, each a packet.
_STATES = {
    "greeting": (None, []),
    "EHLO": (None, [b"220 mx.example\r\n"]),
    "MAIL": ((), []),
    "RCPT": ((), [b"250 ok\r\n"]),
    "second RCPT": ((), [b"250 ok\r\n", b"250 ok\r\n"]),
    "DATA": ((), [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n"]),
    "end of data": ((), [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"]),
    "pipelined MAIL": ((b"PIPELINING",), []),
    "pipelined RCPT": ((b"PIPELINING",), [b"250 ok\r\n"]),
    "pipelined DATA": ((b"PIPELINING",), [b"250 ok\r\n250 ok\r\n250 ok\r\n"]),
    "pipelined end of data": ((b"PIPELINING",), [b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"]),
    "BDAT": ((b"PIPELINING", b"CHUNKING"), [b"250 ok\r\n250 ok\r\n250 ok\r\n"]),
    "RSET": ((), [b"550 no\r\n"]),
    "QUIT": ((), [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"]),
    "STARTTLS": ((b"STARTTLS",), []),
    "AUTH": ((b"AUTH PLAIN",), []),
}

#: Replies no state may turn into an unhandled error.
_WRONG = [
    b"250 x\r\n",
    b"251 x\r\n",
    b"334 x\r\n",
    b"354 x\r\n",
    b"421 4.3.2 x\r\n",
    b"452 x\r\n",
    b"550 x\r\n",
    b"garbage\r\n",
    b"250 x\r\n250 extra\r\n",
    b"550 x\r\n250 extra\r\n",
    b"250-x\r\n",
    b"\r\n",
    b"999 x\r\n",
]


class EveryStateTests(SynchronousTestCase):
    """
    Each state fed each kind of wrong reply: no unhandled error, nothing
    logged, and a message counts as sent only after a 2xx to its end of
    data.
    """

    def reach(self, state):
        extensions, replies = _STATES[state]
        client = ESMTPTestClient([(SENDER, [BOB, CAROL], MESSAGE)], secret=b"pw", contextFactory=object())
        client.registerAuthenticator(PLAINAuthenticator(b"alice"))
        session = Session(client, TLSCapableTransport())
        if extensions is not None:
            session.server(b"220 mx.example\r\n")
            session.server(ehlo(*extensions))
        for packet in replies:
            session.server(packet)
        return client, session

    def test_wrongReplies(self):
        for state in _STATES:
            for reply in _WRONG:
                client, session = self.reach(state)
                before = len(client.results)
                try:
                    session.server(reply)
                    session.clock.advance(1000)
                except Exception as e:
                    self.fail(f"{state} + {reply!r}: {e!r}")
                self.assertEqual(self.flushLoggedErrors(), [], f"{state} + {reply!r}")
                delivered = [r for r in client.results[before:] if r[0] in range(200, 300)]
                if delivered:
                    self.assertIn(state, ("end of data", "pipelined end of data", "BDAT"), f"{state} + {reply!r}")
                    self.assertIn(reply, (b"250 x\r\n", b"251 x\r\n"), f"{state} + {reply!r}")


class PrefixedFileTests(SynchronousTestCase):
    """
    L{mailproto._readahead.PrefixedFile}: a queued message with the header
    fields made for it at intake, read in chunks of any size.
    """

    def test_chunks(self):
        """
        Whatever the chunk size, the octets come prefix first, then the
        file, each once; closing closes the file.
        """
        from mailproto._readahead import PrefixedFile

        prefix, data = b"DKIM-Signature: v=1\r\n", b"Subject: x\r\n\r\nbody\r\n" * 5
        for size in (1, 3, len(prefix) - 1, len(prefix), len(prefix) + 1, 64, -1):
            inner = io.BytesIO(data)
            f = PrefixedFile(prefix, inner)
            pieces = []
            while chunk := f.read(size):
                self.assertLessEqual(len(chunk), size if size > 0 else len(prefix + data))
                pieces.append(chunk)
            self.assertEqual(b"".join(pieces), prefix + data, size)
            f.close()
            self.assertTrue(inner.closed)

    def test_seek(self):
        """
        C{tell} and C{seek} see one file, so the client can measure a
        signed message (SIZE, 8-bit data) and rewind it.
        """
        from mailproto._readahead import PrefixedFile

        prefix, data = b"DKIM-Signature: v=1\r\n", b"Subject: \xe9\r\n\r\nbody\r\n"
        inner = io.BytesIO(b"ENVELOPE\n" + data)
        inner.seek(len(b"ENVELOPE\n"))
        f = PrefixedFile(prefix, inner)
        self.assertEqual((f.tell(), f.seek(0, 2), f.tell()), (0, len(prefix + data), len(prefix + data)))
        for position in (0, 3, len(prefix), len(prefix) + 4):
            f.seek(position)
            self.assertEqual((f.tell(), f.read()), (position, (prefix + data)[position:]))
        f.seek(5)
        f.seek(4, 1)
        self.assertEqual(f.read(3), (prefix + data)[9:12])
        f.seek(0)
        self.assertEqual(_client.SMTPClient._measure(f), (len(prefix + data), True))
        self.assertEqual(f.read(), prefix + data)
