# -*- test-case-name: mailproto.test.test_interop_server_tls -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The ESMTP server's STARTTLS and AUTH against clients nobody here wrote,
over real sockets on 127.0.0.1: swaks, msmtp, Python's smtplib,
aiosmtplib and mailproto's own client; an implicit-TLS listener; a raw
socket that pipelines commands behind STARTTLS; and failed logins until the
server stops listening to 127.0.0.1.

The server's certificate, for C{localhost} and C{127.0.0.1}, comes from a
trustme CA that every client is told to trust.  Two portals: one with a
real L{UsersFileChecker} (scrypt hashes: PLAIN and LOGIN, and only over
TLS), one with L{InMemoryUsernamePasswordDatabaseDontUse} (which can check
CRAM-MD5 too).  Both deliver to a L{MemoryDelivery} avatar; a checker that
records what it was asked tells which mechanism each client used.
"""

import asyncio
import base64
import os
import smtplib
import socket
import ssl
import time

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from mailproto.smtp import (
    AuthenticationError,
    AUTHDeclinedError,
    AuthFailures,
    ESMTPClientError,
    ESMTPFactory,
    IMessageDelivery,
    UsersFile,
    UsersFileChecker,
    loadServerOptions,
    sendmail,
)
from mailproto.test import test_interop_server as _interop
from mailproto.testing import MemoryDelivery
from mailproto.test._peers import missing

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None

try:
    import aiosmtplib
except ImportError:  # pragma: no cover
    aiosmtplib = None

_CLIENT_TIMEOUT = _interop._CLIENT_TIMEOUT
_USER, _PASSWORD = "joe", "s3cret"
_MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: tls\r\n\r\n.\r\n..dots\r\nbody\r\n"


@implementer(IRealm)
class _Realm:
    """
    Every user's avatar is the same L{MemoryDelivery}.

    @ivar avatars: the avatar IDs asked for, in order.
    @ivar loggedOut: how many avatars were logged out.
    """

    def __init__(self, delivery):
        self.delivery = delivery
        self.avatars = []
        self.loggedOut = 0

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IMessageDelivery not in interfaces:
            raise NotImplementedError(interfaces)
        self.avatars.append(avatarId)

        def logout():
            self.loggedOut += 1

        return IMessageDelivery, self.delivery, logout


@implementer(ICredentialsChecker)
class _RecordingChecker:
    """
    A checker that records the credentials it is given (by class name and
    user name) and asks the real one.
    """

    def __init__(self, checker):
        self.checker = checker
        self.credentialInterfaces = checker.credentialInterfaces
        self.asked = []

    def requestAvatarId(self, credentials):
        self.asked.append((type(credentials).__name__, credentials.username))
        return self.checker.requestAvatarId(credentials)


class _TLSFiles:
    """
    A trustme CA and a certificate of it for C{localhost} and C{127.0.0.1},
    in PEM files.
    """

    def __init__(self, testCase):
        if trustme is None:
            missing("trustme is not installed")
        self.ca = trustme.CA()
        self.leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        directory = os.path.abspath(testCase.mktemp())
        os.makedirs(directory)
        self.directory = directory
        self.caFile = os.path.join(directory, "ca.pem")
        self.certificate = os.path.join(directory, "cert.pem")
        self.key = os.path.join(directory, "key.pem")
        self.ca.cert_pem.write_to_path(self.caFile)
        self.leaf.cert_chain_pems[0].write_to_path(self.certificate)
        self.leaf.private_key_pem.write_to_path(self.key)

    def clientContext(self):
        """
        @return: an L{ssl.SSLContext} that trusts the CA only and checks
            host names.
        """
        return ssl.create_default_context(cafile=self.caFile)


class _Replies:
    """
    Replies read from a blocking socket (plain or TLS) without reading
    beyond them.
    """

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def reply(self):
        """
        @return: the next reply's code and its lines' texts.
        """
        texts = []
        while True:
            while b"\r\n" not in self.buffer:
                data = self.sock.recv(4096)
                if not data:
                    raise EOFError(f"connection closed in a reply: {self.buffer!r}")
                self.buffer += data
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            texts.append(line[4:])
            if line[3:4] != b"-":
                return int(line[:3]), texts


class _TLSInteropTestCase(TestCase):
    """
    Start servers with STARTTLS and AUTH, check what they delivered.
    """

    timeout = 30

    def setUp(self):
        self.tls = _TLSFiles(self)

    def serve(self, checker, contextFactory=None, **kw):
        """
        Start an ESMTP server with STARTTLS (this test's certificate) and
        AUTH through C{checker}, on 127.0.0.1.

        Sets C{delivery}, C{realm}, C{checker} (recording), C{factory},
        C{server} (the L{_interop._Server}), C{port} and C{protocols} (the
        server protocols, in order; see also L{allClosed}).
        """
        if contextFactory is None:
            contextFactory = loadServerOptions(self.tls.certificate, self.tls.key)
        self.delivery = MemoryDelivery()
        self.realm = _Realm(self.delivery)
        self.checker = _RecordingChecker(checker)
        self.factory = ESMTPFactory(
            Portal(self.realm, [self.checker]), contextFactory=contextFactory, domain=b"mx.test", **kw
        )
        self.server, self.port = _interop._listenTCP(self, self.factory)
        self.protocols = []
        self._closed = []
        build = self.factory.buildProtocol

        def buildProtocol(addr):
            protocol = build(addr)
            self.protocols.append(protocol)
            closed = defer.Deferred()
            self._closed.append(closed)
            lost = protocol.connectionLost

            def connectionLost(reason=None):
                try:
                    lost(reason)
                finally:
                    closed.callback(None)

            protocol.connectionLost = connectionLost
            return protocol

        self.factory.buildProtocol = buildProtocol

    def allClosed(self):
        """
        @return: a L{Deferred} that fires once every connection the server
            accepted so far has closed.
        """
        return defer.gatherResults(list(self._closed))

    def usersFileServer(self, **kw):
        """
        L{serve} with a real users file, where joe's password is
        C{s3cret}: PLAIN and LOGIN, over TLS only.
        """
        path = os.path.join(self.tls.directory, "users")
        UsersFile(path).setPassword(_USER.encode(), _PASSWORD.encode())
        self.serve(UsersFileChecker(path), **kw)

    def memoryServer(self, **kw):
        """
        L{serve} with an in-memory checker, and TLS options made with
        L{PrivateCertificate.options}: CRAM-MD5 as well.
        """
        from twisted.internet.ssl import PrivateCertificate

        options = PrivateCertificate.loadPEM(self.tls.leaf.private_key_and_cert_chain_pem.bytes()).options()
        checker = InMemoryUsernamePasswordDatabaseDontUse(**{_USER: _PASSWORD.encode()})
        self.serve(checker, contextFactory=options, **kw)

    def assertDelivered(self, recipients, data, sender=b"a@example.com"):
        """
        Exactly one message arrived, for C{recipients}, after STARTTLS and
        AUTH as joe.
        """
        self.assertEqual(
            [(bytes(m.sender), bytes(m.recipient)) for m in self.delivery.messages],
            [(sender, r) for r in recipients],
        )
        for received in self.delivery.messages:
            self.assertEqual(received.data, data)
        self.assertEqual(self.realm.avatars, [_USER.encode()])
        authenticated = [(p.startedTLS, p.authenticatedUser) for p in self.protocols if p.authenticated]
        self.assertEqual(authenticated, [(True, _USER.encode())])

    def assertProcessOK(self, result):
        """
        A program run by L{_interop._run} exited with 0.

        @return: its standard output.
        """
        out, err, code = result
        self.assertEqual(code, 0, f"exit code {code}\nstdout:\n{out!r}\nstderr:\n{err!r}")
        return out

    def assertNothingDelivered(self):
        self.assertEqual(self.delivery.messages, [])
        self.assertEqual(self.delivery.senders, [])
        self.assertEqual(self.realm.avatars, [])
        self.assertFalse(any(p.authenticated for p in self.protocols))


class SwaksTests(_TLSInteropTestCase):
    """
    swaks with C{--tls} (STARTTLS required, the certificate verified
    against the CA) and C{--auth}.
    """

    def swaks(self, *args):
        """
        Run swaks from C{a@example.com} to C{b@example.com} and
        C{c@example.com} on this test's server.

        @return: a L{Deferred} firing with C{(transcript, stderr, exit
            code)}.
        """
        swaks = _interop._tool("swaks")
        common = [
            "--server",
            f"127.0.0.1:{self.port}",
            "--helo",
            "client.test",
            "--from",
            "a@example.com",
            "--to",
            "b@example.com,c@example.com",
            "--timeout",
            str(_CLIENT_TIMEOUT),
            "--data",
            "Subject: swaks over TLS\n\nbody",
        ]
        return _interop._run(self, swaks, [*common, *args])

    def tlsArgs(self):
        return ["--tls", "--tls-verify", "--tls-ca-path", self.tls.caFile]

    def authArgs(self, mechanism, password=_PASSWORD):
        return ["--auth", mechanism, "--auth-user", _USER, "--auth-password", password]

    @defer.inlineCallbacks
    def check(self, mechanism, credentialsClass):
        """
        swaks does STARTTLS, then AUTH C{mechanism}; the message arrives
        for both recipients, and the checker was asked once, with
        C{credentialsClass}.
        """
        result = yield self.swaks(*self.tlsArgs(), *self.authArgs(mechanism))
        out = self.assertProcessOK(result)
        self.assertIn(b"\n -> STARTTLS\n", out)
        self.assertIn(b"<-  220 2.0.0 Ready to start TLS", out)
        self.assertIn(b"\n ~> AUTH " + mechanism.encode(), out)
        self.assertIn(b"<~  235 2.7.0 Authentication successful", out)
        self.assertIn(b"<~  221 ", out)
        self.assertDelivered([b"b@example.com", b"c@example.com"], b"Subject: swaks over TLS\r\n\r\nbody\r\n")
        self.assertEqual(self.checker.asked, [(credentialsClass, _USER.encode())])

    def test_plain(self):
        """
        AUTH PLAIN after STARTTLS, checked against the users file.
        """
        self.usersFileServer()
        return self.check("PLAIN", "PLAINCredentials")

    def test_login(self):
        """
        AUTH LOGIN after STARTTLS, checked against the users file.
        """
        self.usersFileServer()
        return self.check("LOGIN", "LOGINCredentials")

    def test_cramMD5(self):
        """
        AUTH CRAM-MD5 after STARTTLS, against the in-memory checker, which
        can check it.
        """
        self.memoryServer()
        return self.check("CRAM-MD5", "CramMD5Credentials")

    @defer.inlineCallbacks
    def test_wrongPassword(self):
        """
        A wrong password: 535, swaks exits with an error, nothing is
        delivered and no one logged in.
        """
        self.usersFileServer(authFailureDelay=0.05)
        out, err, code = yield self.swaks(*self.tlsArgs(), *self.authArgs("PLAIN", "wrong"))
        self.assertNotEqual(code, 0, out)
        self.assertIn(b"<~* 535 5.7.8 Authentication credentials invalid", out)
        self.assertNotIn(b"MAIL FROM", out)
        self.assertNothingDelivered()
        self.assertEqual(self.checker.asked, [("PLAINCredentials", _USER.encode())])

    @defer.inlineCallbacks
    def test_plainWithoutTLS(self):
        """
        Without C{--tls}, AUTH is not offered (the users file can only
        check passwords sent in the clear): swaks gives up before sending
        any AUTH, with an error; nothing is delivered and the checker was
        never asked.
        """
        self.usersFileServer()
        out, err, code = yield self.swaks(*self.authArgs("PLAIN"))
        self.assertNotEqual(code, 0, out)
        offered = b"\n".join(line for line in out.splitlines() if line.startswith(b"<-  250"))
        self.assertIn(b"STARTTLS", offered)
        self.assertNotIn(b"AUTH", offered)
        self.assertIn(b"did not advertise authentication", err)
        self.assertNotIn(b" -> AUTH", out)
        self.assertNotIn(b"MAIL FROM", out)
        self.assertNothingDelivered()
        self.assertEqual(self.checker.asked, [])


class MsmtpTests(_TLSInteropTestCase):
    """
    msmtp (GnuTLS) with STARTTLS, the certificate checked against the CA
    for C{127.0.0.1}, and AUTH.
    """

    message = b"From: a@example.com\nTo: b@example.com\nSubject: msmtp over TLS\n\n.\n..two\nbody\n"

    def msmtp(self, auth, password=_PASSWORD):
        msmtp = _interop._tool("msmtp")
        args = [
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--domain=client.test",
            "--from=a@example.com",
            f"--timeout={_CLIENT_TIMEOUT}",
            "--tls=on",
            "--tls-starttls=on",
            f"--tls-trust-file={self.tls.caFile}",
            f"--auth={auth}",
            f"--user={_USER}",
            f"--passwordeval=echo {password}",
            "--set-from-header=off",
            "--set-date-header=off",
            "--set-msgid-header=off",
            "--",
            "b@example.com",
        ]
        return _interop._run(self, msmtp, args, stdin=self.message)

    @defer.inlineCallbacks
    def test_plain(self):
        """
        C{--auth=plain}: the message arrives, LF made CRLF and dots
        unstuffed.
        """
        self.usersFileServer()
        result = yield self.msmtp("plain")
        self.assertProcessOK(result)
        self.assertDelivered([b"b@example.com"], _interop._crlf(self.message))
        self.assertEqual(self.checker.asked, [("PLAINCredentials", _USER.encode())])

    @defer.inlineCallbacks
    def test_login(self):
        """
        C{--auth=login} works as well.
        """
        self.usersFileServer()
        result = yield self.msmtp("login")
        self.assertProcessOK(result)
        self.assertDelivered([b"b@example.com"], _interop._crlf(self.message))
        self.assertEqual(self.checker.asked, [("LOGINCredentials", _USER.encode())])

    @defer.inlineCallbacks
    def test_wrongPassword(self):
        """
        A wrong password: msmtp fails and says the server refused it;
        nothing is delivered.
        """
        self.usersFileServer(authFailureDelay=0.05)
        out, err, code = yield self.msmtp("plain", "wrong")
        self.assertNotEqual(code, 0)
        self.assertIn(b"535", err)
        self.assertNothingDelivered()


class SmtplibTests(_TLSInteropTestCase):
    """
    Python's smtplib: C{starttls} with the CA, C{login}, C{sendmail}.
    """

    def connect(self):
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=_CLIENT_TIMEOUT)

    @defer.inlineCallbacks
    def test_starttlsLogin(self):
        """
        Before STARTTLS the users-file server offers STARTTLS and no AUTH;
        after it, AUTH PLAIN LOGIN and no STARTTLS; C{login} and
        C{sendmail} then deliver.
        """
        self.usersFileServer()
        context = self.tls.clientContext()

        def send():
            with self.connect() as client:
                client.ehlo()
                before = dict(client.esmtp_features)
                client.starttls(context=context)
                client.ehlo()
                after = dict(client.esmtp_features)
                cipher = client.sock.cipher()
                client.login(_USER, _PASSWORD)
                refused = client.sendmail("a@example.com", ["b@example.com"], _MESSAGE)
                return before, after, cipher, refused

        before, after, cipher, refused = yield deferToThread(send)
        self.assertIn("starttls", before)
        self.assertNotIn("auth", before)
        self.assertNotIn("starttls", after)
        self.assertEqual(after["auth"].split(), ["PLAIN", "LOGIN"])
        self.assertIsNotNone(cipher)
        self.assertEqual(refused, {})
        self.assertDelivered([b"b@example.com"], _MESSAGE)
        yield self.allClosed()
        self.assertEqual(self.realm.loggedOut, 1)

    @defer.inlineCallbacks
    def test_loginBeforeStarttls(self):
        """
        C{login} before STARTTLS fails: AUTH is not offered in plaintext.
        An AUTH PLAIN sent anyway is refused with 503 and its password is
        never checked.
        """
        self.usersFileServer()

        def attempt():
            with self.connect() as client:
                try:
                    client.login(_USER, _PASSWORD)
                except (smtplib.SMTPNotSupportedError, smtplib.SMTPAuthenticationError) as e:
                    refusal = e
                else:
                    refusal = None
                credentials = base64.b64encode(b"\0joe\0s3cret").decode()
                forced = client.docmd("AUTH", "PLAIN " + credentials)
                mail = client.docmd("MAIL", "FROM:<a@example.com>")
                return refusal, forced, mail

        refusal, forced, mail = yield deferToThread(attempt)
        self.assertIsInstance(refusal, (smtplib.SMTPNotSupportedError, smtplib.SMTPAuthenticationError))
        self.assertEqual(forced[0], 503)
        self.assertEqual(mail, (530, b"5.7.0 Authentication required"))
        self.assertEqual(self.checker.asked, [])
        self.assertNothingDelivered()

    @defer.inlineCallbacks
    def test_plainRefusedWithoutTLS(self):
        """
        The in-memory server offers CRAM-MD5 in plaintext (it sends no
        password), but not PLAIN or LOGIN; AUTH PLAIN sent anyway gets
        538 5.7.11 and the password is never checked.  After STARTTLS all
        three are offered.
        """
        self.memoryServer()
        context = self.tls.clientContext()

        def attempt():
            with self.connect() as client:
                client.ehlo()
                before = client.esmtp_features["auth"]
                credentials = base64.b64encode(b"\0joe\0s3cret").decode()
                forced = client.docmd("AUTH", "PLAIN " + credentials)
                client.starttls(context=context)
                client.ehlo()
                return before, forced, client.esmtp_features["auth"]

        before, forced, after = yield deferToThread(attempt)
        self.assertEqual(before.split(), ["CRAM-MD5"])
        self.assertEqual(forced, (538, b"5.7.11 Encryption required for requested authentication mechanism"))
        self.assertEqual(after.split(), ["CRAM-MD5", "PLAIN", "LOGIN"])
        self.assertEqual(self.checker.asked, [])

    @defer.inlineCallbacks
    def test_noAnonymousDelivery(self):
        """
        Over TLS but without AUTH, MAIL gets 530 5.7.0: the portal has no
        anonymous access.
        """
        self.usersFileServer()
        context = self.tls.clientContext()

        def send():
            with self.connect() as client:
                client.starttls(context=context)
                try:
                    client.sendmail("a@example.com", ["b@example.com"], _MESSAGE)
                except smtplib.SMTPSenderRefused as e:
                    return e

        refusal = yield deferToThread(send)
        self.assertIsInstance(refusal, smtplib.SMTPSenderRefused)
        self.assertEqual((refusal.smtp_code, refusal.smtp_error), (530, b"5.7.0 Authentication required"))
        self.assertNothingDelivered()

    @defer.inlineCallbacks
    def test_wrongPasswordSlowed(self):
        """
        With the default delay (1 second for the first failure), a wrong
        password is answered with 535 5.7.8 no sooner than a second later;
        the right one then works on the same connection.
        """
        self.usersFileServer()
        context = self.tls.clientContext()

        def attempt():
            with self.connect() as client:
                client.starttls(context=context)
                client.ehlo()
                client.user, client.password = _USER, "wrong"
                started = time.monotonic()
                try:
                    client.auth("PLAIN", client.auth_plain)
                except smtplib.SMTPAuthenticationError as e:
                    refusal = e
                else:
                    refusal = None
                elapsed = time.monotonic() - started
                client.login(_USER, _PASSWORD)
                client.sendmail("a@example.com", ["b@example.com"], _MESSAGE)
                return refusal, elapsed

        refusal, elapsed = yield deferToThread(attempt)
        self.assertEqual((refusal.smtp_code, refusal.smtp_error), (535, b"5.7.8 Authentication credentials invalid"))
        self.assertGreaterEqual(elapsed, 0.95)
        self.assertDelivered([b"b@example.com"], _MESSAGE)


class AiosmtplibTests(_TLSInteropTestCase):
    """
    aiosmtplib with C{start_tls=True} and the CA.
    """

    @defer.inlineCallbacks
    def test_starttlsLogin(self):
        """
        aiosmtplib connects, does STARTTLS by itself, logs in and sends.
        """
        if aiosmtplib is None:
            missing("aiosmtplib is not installed")
        self.usersFileServer()
        context = self.tls.clientContext()

        async def send():
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=self.port,
                start_tls=True,
                tls_context=context,
                local_hostname="client.test",
                timeout=_CLIENT_TIMEOUT,
            )
            async with client:
                login = await client.login(_USER, _PASSWORD)
                errors, ignored = await client.sendmail("a@example.com", ["b@example.com"], _MESSAGE)
                return login.code, errors

        code, errors = yield deferToThread(lambda: asyncio.run(send()))
        self.assertEqual(code, 235)
        self.assertEqual(errors, {})
        self.assertDelivered([b"b@example.com"], _MESSAGE)


class MailprotoClientTests(_TLSInteropTestCase):
    """
    mailproto's own L{sendmail}, TLS and AUTH required, checking the
    certificate for C{localhost}.
    """

    def send(self, password, **kw):
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        trustRoot = Certificate.loadPEM(self.tls.ca.cert_pem.bytes())
        return sendmail(
            "127.0.0.1",
            "a@example.com",
            ["b@example.com", "c@example.com"],
            _MESSAGE,
            senderDomainName="client.test",
            port=self.port,
            username=_USER,
            password=password,
            requireAuthentication=True,
            requireTransportSecurity=True,
            contextFactory=optionsForClientTLS("localhost", trustRoot=trustRoot),
            timeout=_CLIENT_TIMEOUT,
            **kw,
        )

    @defer.inlineCallbacks
    def test_delivered(self):
        """
        The message arrives for both recipients.
        """
        self.usersFileServer()
        numOk, addresses = yield self.send(_PASSWORD)
        self.assertEqual(numOk, 2)
        self.assertDelivered([b"b@example.com", b"c@example.com"], _MESSAGE)

    @defer.inlineCallbacks
    def test_cramMD5(self):
        """
        Against the in-memory checker, mailproto picks CRAM-MD5.
        """
        self.memoryServer()
        numOk, addresses = yield self.send(_PASSWORD)
        self.assertEqual(numOk, 2)
        self.assertDelivered([b"b@example.com", b"c@example.com"], _MESSAGE)
        self.assertEqual(self.checker.asked, [("CramMD5Credentials", _USER.encode())])

    @defer.inlineCallbacks
    def test_wrongPassword(self):
        """
        A wrong password fails the send with an authentication error after
        one try: after a password mechanism (LOGIN) says 535, another
        password mechanism would only be another failure.  The client does
        not connect again, and nothing is delivered.
        """
        self.usersFileServer(authFailureDelay=0.05)
        error = yield self.assertFailure(self.send("wrong"), ESMTPClientError)
        self.assertIsInstance(error, (AuthenticationError, AUTHDeclinedError))
        self.assertEqual(error.code, 535)
        self.assertNothingDelivered()
        self.assertEqual(self.server.connections, 1)
        self.assertEqual(self.checker.asked, [("LOGINCredentials", _USER.encode())])


    @defer.inlineCallbacks
    def test_wrongPasswordThreeMechanisms(self):
        """
        Against a server that offers three mechanisms (CRAM-MD5, PLAIN,
        LOGIN) and allows three failures a connection, a wrong password
        should still cost one connection and leave the address usable.
        """
        self.memoryServer(authFailureDelay=0.01)
        error = yield self.assertFailure(self.send("wrong"), ESMTPClientError)
        self.assertIsInstance(error, (AuthenticationError, AUTHDeclinedError))
        self.assertNothingDelivered()
        self.assertEqual(self.server.connections, 1)
        self.assertFalse(self.factory.authFailures.blocked(b"127.0.0.1"))


class ImplicitTLSTests(_TLSInteropTestCase):
    """
    The same factory on an C{ssl:} endpoint: TLS from the first byte.
    """

    @defer.inlineCallbacks
    def listenSSL(self):
        description = "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}".format(
            quoteStringArgument(self.tls.key), quoteStringArgument(self.tls.certificate)
        )
        port = yield serverFromString(reactor, description).listen(self.factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_smtpSSL(self):
        """
        C{SMTP_SSL}: no STARTTLS offered (a STARTTLS sent anyway gets 503),
        AUTH PLAIN and LOGIN are, and login and sendmail work.
        """
        self.usersFileServer()
        port = yield self.listenSSL()
        context = self.tls.clientContext()

        def send():
            with smtplib.SMTP_SSL("localhost", port, context=context, timeout=_CLIENT_TIMEOUT) as client:
                client.ehlo("client.test")
                features = dict(client.esmtp_features)
                starttls = client.docmd("STARTTLS")
                client.login(_USER, _PASSWORD)
                return features, starttls, client.sendmail("a@example.com", ["b@example.com"], _MESSAGE)

        features, starttls, refused = yield deferToThread(send)
        self.assertNotIn("starttls", features)
        self.assertEqual(features["auth"].split(), ["PLAIN", "LOGIN"])
        self.assertEqual(starttls, (503, b"5.5.1 TLS already active"))
        self.assertEqual(refused, {})
        self.assertDelivered([b"b@example.com"], _MESSAGE)


class STARTTLSInjectionTests(_TLSInteropTestCase):
    """
    Commands pipelined behind STARTTLS, in plaintext, are never executed
    (CVE-2011-0411 class).
    """

    @defer.inlineCallbacks
    def test_injectedCommandDropped(self):
        """
        C{EHLO x, STARTTLS, RSET} in one send: the server answers EHLO and
        STARTTLS and nothing more in plaintext; after the handshake, the
        first reply over TLS is the one to the client's new EHLO, not a
        250 for the injected RSET.  The server says what it threw away.
        """
        self.usersFileServer()
        warnings = []

        def observe(event):
            if "after STARTTLS" in event.get("log_format", ""):
                warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        context = self.tls.clientContext()

        def converse():
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=_CLIENT_TIMEOUT)
            try:
                plain = _Replies(sock)
                greeting = plain.reply()
                sock.sendall(b"EHLO x\r\nSTARTTLS\r\nRSET\r\n")
                ehlo = plain.reply()
                starttls = plain.reply()
                leftover = plain.buffer
                secure = context.wrap_socket(sock, server_hostname="localhost")
                try:
                    encrypted = _Replies(secure)
                    secure.sendall(b"EHLO client.test\r\n")
                    first = encrypted.reply()
                    secure.sendall(b"QUIT\r\n")
                    bye = encrypted.reply()
                    return greeting[0], ehlo[0], starttls, leftover, first, bye[0], encrypted.buffer
                finally:
                    secure.close()
            finally:
                sock.close()

        greeting, ehlo, starttls, leftover, first, bye, after = yield deferToThread(converse)
        self.assertEqual((greeting, ehlo), (220, 250))
        self.assertEqual(starttls, (220, [b"2.0.0 Ready to start TLS"]))
        self.assertEqual(leftover, b"")
        code, lines = first
        self.assertEqual(code, 250)
        self.assertEqual(lines[0], b"mx.test Hello 127.0.0.1, nice to meet you")
        self.assertIn(b"AUTH PLAIN LOGIN", lines)
        self.assertNotIn(b"STARTTLS", lines)
        self.assertEqual((bye, after), (221, b""))
        self.assertEqual([event["count"] for event in warnings], [len(b"RSET\r\n")])
        self.assertNothingDelivered()


class ThrottlingTests(_TLSInteropTestCase):
    """
    Failed logins over TLS: slowed, 421 after three on a connection, and
    after ten from 127.0.0.1 AUTH refused outright.
    """

    @defer.inlineCallbacks
    def test_failuresLimited(self):
        """
        Thirty wrong passwords with smtplib, connecting again whenever the
        server hangs up: none is accepted; each connection gets 535, 535,
        then 421; from the eleventh attempt on, AUTH is refused with 421
        at once, without the password being checked -- the right one
        included.  Once the failures are older than the window, the right
        password works again.
        """
        clock = Clock()
        clock.advance(1000)
        self.usersFileServer(
            authFailureDelay=0.05, maxAuthFailures=3, authFailures=AuthFailures(limit=10, window=600, clock=clock)
        )
        context = self.tls.clientContext()

        def connect():
            client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=_CLIENT_TIMEOUT)
            client.starttls(context=context)
            client.ehlo()
            return client

        def attempt(client, password):
            client.user, client.password = _USER, password
            try:
                code, text = client.auth("PLAIN", client.auth_plain)
            except smtplib.SMTPAuthenticationError as e:
                code, text = e.smtp_code, e.smtp_error
            return code, text

        def attack():
            outcomes = []
            client = None
            try:
                for number in range(30):
                    if client is None:
                        client = connect()
                    outcomes.append(attempt(client, f"wrong{number}"))
                    if outcomes[-1][0] == 421:
                        client.close()
                        client = None
                if client is None:
                    client = connect()
                outcomes.append(attempt(client, _PASSWORD))
            finally:
                if client is not None:
                    client.close()
            return outcomes

        outcomes = yield deferToThread(attack)
        self.assertEqual(len(outcomes), 31)
        invalid = (535, b"5.7.8 Authentication credentials invalid")
        tooMany = (421, b"4.7.0 mx.test Too many failed authentications")
        blocked = (421, b"4.7.0 mx.test Too many failed authentications, try later")
        self.assertEqual(outcomes[:9], [invalid, invalid, tooMany] * 3)
        self.assertEqual(outcomes[9], invalid)
        self.assertEqual(outcomes[10:], [blocked] * 21)
        self.assertEqual(len(self.checker.asked), 10)
        # Four connections for the first eleven attempts, one for each
        # attempt after them.
        self.assertEqual(self.server.connections, 4 + 19 + 1)
        self.assertNothingDelivered()

        # The failures age out of the window.
        clock.advance(601)

        def login():
            with smtplib.SMTP("127.0.0.1", self.port, timeout=_CLIENT_TIMEOUT) as client:
                client.starttls(context=context)
                client.login(_USER, _PASSWORD)
                return client.sendmail("a@example.com", ["b@example.com"], _MESSAGE)

        refused = yield deferToThread(login)
        self.assertEqual(refused, {})
        self.assertDelivered([b"b@example.com"], _MESSAGE)
        self.assertEqual(len(self.checker.asked), 11)
