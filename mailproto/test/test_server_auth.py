# -*- test-case-name: mailproto.test.test_server_auth -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
STARTTLS (RFC 3207) and AUTH (RFC 4954) on the server side: what is
offered when, the SASL exchanges with a real cred portal, the slowing down
and cutting off of password guessers, and what an authenticated session
changes (delivery, trace header, C{AUTH=}).  All on an in-memory transport
and a fake clock.
"""

from __future__ import annotations

import base64
import hmac
import re
from hashlib import md5

from twisted.cred.checkers import AllowAnonymousAccess, ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides, implementer
from zope.interface.verify import verifyObject

from mailproto.interfaces import IChallengeResponse, IMessageDelivery
from mailproto.smtp import (
    ESMTP,
    AuthFailures,
    ESMTPFactory,
    LOGINCredentials,
    PLAINCredentials,
    UsersFileChecker,
)
from mailproto.test.test_server import CLIENT, Session
from mailproto.testing import MemoryDelivery

OTHER_CLIENT = IPv4Address("TCP", "198.51.100.9", 40000)

PASSWORD = b"s3cr3t-Pa55w0rd"
WRONG = b"wr0ng-Gu3ss-99"

#: What the server asks in a LOGIN exchange, as sent.
USERNAME_CHALLENGE = b"334 VXNlcm5hbWU6"
PASSWORD_CHALLENGE = b"334 UGFzc3dvcmQ6"

#: A context factory stand-in: the fake transports never use it.
CONTEXT = object()

TRANSACTION = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: hi\r\n\r\nHello\r\n.\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(user: bytes = b"alice", password: bytes = PASSWORD, authzid: bytes = b"") -> bytes:
    """
    @return: a PLAIN response (RFC 4616), base64-encoded.
    """
    return b64(authzid + b"\0" + user + b"\0" + password)


def cramResponse(challengeLine: bytes, user: bytes = b"alice", password: bytes = PASSWORD) -> bytes:
    """
    @param challengeLine: the server's C{334} line.
    @return: the base64 CRAM-MD5 response (RFC 2195) to it.
    """
    challenge = base64.b64decode(challengeLine[4:])
    return b64(user + b" " + hmac.new(password, challenge, md5).hexdigest().encode("ascii"))


def replyCodes(lines: list[bytes]) -> list[bytes]:
    """
    @return: for each reply's last line, its code and enhanced status code
        (if any), as C{b"250 2.1.0"}.
    """
    codes = []
    for line in lines:
        if line[3:4] != b" ":
            continue
        words = line.split(b" ")
        status = words[1] if len(words) > 1 else b""
        codes.append(b" ".join(words[:2]) if re.fullmatch(rb"[245]\.\d{1,3}\.\d{1,3}", status) else line[:3])
    return codes


def ehloKeywords(lines: list[bytes]) -> dict[bytes, list[bytes]]:
    """
    @return: the EHLO keywords of an EHLO reply, with their parameters.
    """
    return {line[4:].split(b" ")[0]: line[4:].split(b" ")[1:] for line in lines[1:]}


@implementer(ITLSTransport)
class STARTTLSTransport(StringTransport):
    """
    A transport that can start TLS: it records the context factories it is
    given and from then on is an L{ISSLTransport}.
    """

    def __init__(self, *args, **kw) -> None:
        StringTransport.__init__(self, *args, **kw)
        self.tlsStarts: list = []
        self.writtenBeforeTLS = None

    def startTLS(self, contextFactory) -> None:
        self.writtenBeforeTLS = self.value()
        self.tlsStarts.append(contextFactory)
        alsoProvides(self, ISSLTransport)

    def getPeerCertificate(self):
        return None


@implementer(ISSLTransport)
class ImplicitTLSTransport(StringTransport):
    """
    A transport that is TLS from its first octet (a port 465 listener).
    """

    def getPeerCertificate(self):
        return None


@implementer(IRealm)
class DeliveryRealm:
    """
    A realm whose avatars are L{MemoryDelivery}s, one per user.

    @ivar deliveries: the avatars by avatar ID.
    @ivar anonymous: the avatar for anonymous logins.
    @ivar logouts: the avatar IDs logged out, in order.
    """

    def __init__(self) -> None:
        self.deliveries: dict = {}
        self.anonymous = MemoryDelivery()
        self.logouts: list = []

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IMessageDelivery not in interfaces:
            raise NotImplementedError(interfaces)
        if avatarId == ():  # twisted.cred.checkers.ANONYMOUS
            avatar = self.anonymous
        else:
            avatar = self.deliveries.setdefault(avatarId, MemoryDelivery())
        return IMessageDelivery, avatar, lambda: self.logouts.append(avatarId)


@implementer(ICredentialsChecker)
class PasswordOnlyChecker:
    """
    Checks clear-text passwords only (as a hashed-password store must): no
    L{twisted.cred.credentials.IUsernameHashedPassword}, so no CRAM-MD5.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[bytes, bytes]) -> None:
        self.users = users

    def requestAvatarId(self, creds):
        if creds.username in self.users and creds.checkPassword(self.users[creds.username]):
            return defer.succeed(creds.username)
        return defer.fail(UnauthorizedLogin())


@implementer(ICredentialsChecker)
class BrokenChecker:
    """
    A checker with a bug: it raises something other than
    L{UnauthorizedLogin}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, creds):
        return defer.fail(RuntimeError("the user database is down"))


def memoryChecker() -> InMemoryUsernamePasswordDatabaseDontUse:
    """
    @return: a checker that knows alice, and can check hashed-password
        credentials (so CRAM-MD5 is offered).
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice", PASSWORD)
    return checker


class TracingESMTP(ESMTP):
    """
    An ESMTP server that always adds its own trace header, whatever the
    delivery says.
    """

    def receivedHeader(self, helo, origin, recipients):
        return self._traceHeader(helo, recipients)


def authFactory(checker=None, anonymous=False, clock=None, **kw) -> ESMTPFactory:
    """
    @return: an L{ESMTPFactory} with a portal on a L{DeliveryRealm} (as
        C{factory.realm}) and a fake clock (as C{factory.clock}).
    """
    realm = DeliveryRealm()
    checkers = [memoryChecker() if checker is None else checker]
    if anonymous:
        checkers.append(AllowAnonymousAccess())
    factory = ESMTPFactory(Portal(realm, checkers), domain=b"mx.example", clock=clock or Clock(), **kw)
    factory.realm = realm
    return factory


class Connection(Session):
    """
    One client connection to a factory's server, on an in-memory
    transport, with the factory's clock.
    """

    def __init__(self, factory, transportClass=StringTransport, peer=CLIENT) -> None:
        Session.__init__(self, factory, peer=peer, transportClass=transportClass)

    def codes(self, data: bytes) -> list[bytes]:
        return replyCodes(self.send(data))

    def ehlo(self) -> dict[bytes, list[bytes]]:
        """
        @return: the keywords of the reply to an EHLO.
        """
        lines = self.send(b"EHLO client.example\r\n")
        assert lines[0].startswith(b"250"), lines
        return ehloKeywords(lines)

    def advance(self, seconds: float) -> list[bytes]:
        """
        Let time pass.

        @return: the reply lines sent meanwhile.
        """
        self.clock.advance(seconds)
        return self.take()

    def close(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


def tlsConnection(factory=None, **kw) -> Connection:
    """
    @return: a connection with a STARTTLS-capable transport, after EHLO.
    """
    if factory is None:
        factory = ESMTPFactory(
            delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock(), contextFactory=CONTEXT, **kw
        )
    conn = Connection(factory, STARTTLSTransport)
    conn.ehlo()
    return conn


class InterfaceTests(SynchronousTestCase):
    """
    The credentials and checker classes provide their interfaces.
    """

    def test_plainCredentials(self):
        """
        L{PLAINCredentials} is an L{IChallengeResponse}.
        """
        self.assertTrue(verifyObject(IChallengeResponse, PLAINCredentials()))
        self.assertTrue(IUsernamePassword.providedBy(PLAINCredentials()))

    def test_loginCredentials(self):
        """
        L{LOGINCredentials} is an L{IChallengeResponse}.
        """
        self.assertTrue(verifyObject(IChallengeResponse, LOGINCredentials()))
        self.assertTrue(IUsernamePassword.providedBy(LOGINCredentials()))

    def test_usersFileChecker(self):
        """
        L{UsersFileChecker} is an L{ICredentialsChecker} for user names and
        passwords.
        """
        checker = UsersFileChecker(self.mktemp())
        self.assertTrue(verifyObject(ICredentialsChecker, checker))
        self.assertEqual(checker.credentialInterfaces, (IUsernamePassword,))

    def test_plainExchange(self):
        """
        PLAIN: an empty challenge, one response, then no more challenges.
        """
        creds = PLAINCredentials()
        self.assertEqual(creds.getChallenge(), b"")
        self.assertTrue(creds.moreChallenges())
        creds.setResponse(b"\0alice\0pw")
        self.assertFalse(creds.moreChallenges())
        self.assertEqual((creds.username, creds.password, creds.authzid), (b"alice", b"pw", b""))
        self.assertTrue(creds.checkPassword(b"pw"))

    def test_plainMalformed(self):
        """
        A PLAIN response without three parts, or with an empty user name,
        is refused.
        """
        for response in (b"", b"alice", b"alice\0pw", b"\0\0pw", b"a\0b\0c\0d", b"\0" + b"u" * 256 + b"\0pw"):
            self.assertRaises(UnauthorizedLogin, PLAINCredentials().setResponse, response)

    def test_loginExchange(self):
        """
        LOGIN: C{Username:}, then C{Password:}.
        """
        creds = LOGINCredentials()
        self.assertEqual(creds.getChallenge(), b"Username:")
        creds.setResponse(b"alice")
        self.assertTrue(creds.moreChallenges())
        self.assertEqual(creds.getChallenge(), b"Password:")
        creds.setResponse(b"pw")
        self.assertFalse(creds.moreChallenges())
        self.assertEqual((creds.username, creds.password), (b"alice", b"pw"))


class STARTTLSTests(SynchronousTestCase):
    """
    STARTTLS (RFC 3207): when it is offered, what it answers, and that
    nothing from before the handshake survives it.
    """

    def test_offered(self):
        """
        With a context factory and a transport that can start TLS, EHLO
        offers STARTTLS.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock(), contextFactory=CONTEXT)
        conn = Connection(factory, STARTTLSTransport)
        self.assertIn(b"STARTTLS", conn.ehlo())

    def test_notOfferedWithoutContext(self):
        """
        Without a context factory, STARTTLS is neither offered nor accepted:
        C{454 4.7.0}.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock())
        conn = Connection(factory, STARTTLSTransport)
        self.assertNotIn(b"STARTTLS", conn.ehlo())
        self.assertEqual(conn.codes(b"STARTTLS\r\n"), [b"454 4.7.0"])
        self.assertEqual(conn.transport.tlsStarts, [])

    def test_notOfferedWithoutTLSTransport(self):
        """
        A transport that cannot start TLS gets no STARTTLS, even with a
        context factory.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock(), contextFactory=CONTEXT)
        conn = Connection(factory, StringTransport)
        self.assertNotIn(b"STARTTLS", conn.ehlo())
        self.assertEqual(conn.codes(b"STARTTLS\r\n"), [b"454 4.7.0"])

    def test_startTLS(self):
        """
        STARTTLS is answered with exactly C{220 2.0.0 Ready to start TLS},
        written before the handshake starts, which uses the factory's
        context.
        """
        conn = tlsConnection()
        self.assertEqual(conn.send(b"STARTTLS\r\n"), [b"220 2.0.0 Ready to start TLS"])
        self.assertEqual(conn.transport.tlsStarts, [CONTEXT])
        self.assertEqual(conn.transport.writtenBeforeTLS, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertTrue(conn.proto.startedTLS)

    def test_argument(self):
        """
        STARTTLS takes no argument: C{501}, and TLS does not start.
        """
        conn = tlsConnection()
        self.assertEqual(conn.codes(b"STARTTLS now\r\n")[0][:3], b"501")
        self.assertEqual(conn.transport.tlsStarts, [])
        self.assertFalse(conn.proto.startedTLS)

    def test_injectedRSET(self):
        """
        ATTACK (CVE-2011-0411 class): a command sent with STARTTLS in one
        segment came in plaintext; it is thrown away, never answered.
        """
        conn = tlsConnection()
        self.assertEqual(conn.send(b"STARTTLS\r\nRSET\r\n"), [b"220 2.0.0 Ready to start TLS"])
        self.assertEqual(conn.transport.tlsStarts, [CONTEXT])
        # Over TLS, the next command gets the next reply: none is pending.
        self.assertEqual(conn.send(b"NOOP\r\n"), [b"250 OK"])

    def test_injectedMAIL(self):
        """
        ATTACK: C{STARTTLS CRLF MAIL FROM:<evil@x>} in one segment: the MAIL
        command is never executed, so after TLS there is no sender.
        """
        conn = tlsConnection()
        with capturedLogs() as events:
            lines = conn.send(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@example.com>\r\n")
        self.assertEqual(lines, [b"220 2.0.0 Ready to start TLS"])
        self.assertEqual(conn.factory.delivery.senders, [])
        conn.ehlo()
        self.assertEqual(conn.codes(b"RCPT TO:<victim@example.com>\r\n"), [b"503 5.5.1"])
        self.assertEqual(conn.factory.delivery.senders, [])
        self.assertTrue(any("after STARTTLS" in formatEvent(e) for e in events), [formatEvent(e) for e in events])

    def test_injectionAfterPartialLine(self):
        """
        The part of a command line that came with STARTTLS is thrown away
        too: it cannot be completed by what comes over TLS.
        """
        conn = tlsConnection()
        self.assertEqual(conn.send(b"STARTTLS\r\nMAIL FR"), [b"220 2.0.0 Ready to start TLS"])
        self.assertEqual(conn.codes(b"OM:<evil@x.example>\r\n"), [b"500"])
        self.assertEqual(conn.factory.delivery.senders, [])

    def test_mailNeedsNewEHLO(self):
        """
        After TLS the session starts over (RFC 3207 section 4.2): MAIL
        before a new EHLO is C{503}.
        """
        conn = tlsConnection()
        conn.send(b"STARTTLS\r\n")
        self.assertEqual(conn.codes(b"MAIL FROM:<a@example.org>\r\n"), [b"503"])
        conn.ehlo()
        self.assertEqual(conn.codes(b"MAIL FROM:<a@example.org>\r\n"), [b"250 2.1.0"])

    def test_transactionForgotten(self):
        """
        A transaction begun before STARTTLS is gone after it.
        """
        conn = tlsConnection()
        self.assertEqual(conn.codes(b"MAIL FROM:<a@example.org>\r\n"), [b"250 2.1.0"])
        conn.send(b"STARTTLS\r\n")
        conn.ehlo()
        self.assertEqual(conn.codes(b"RCPT TO:<b@example.com>\r\nDATA\r\n"), [b"503 5.5.1", b"503 5.5.1"])
        self.assertEqual(
            conn.codes(b"MAIL FROM:<c@example.org>\r\nRCPT TO:<b@example.com>\r\n"), [b"250 2.1.0", b"250 2.1.5"]
        )

    def test_ehloAfterTLS(self):
        """
        The EHLO after TLS no longer offers STARTTLS, and now offers PLAIN
        and LOGIN.
        """
        conn = tlsConnection(authFactory(contextFactory=CONTEXT))
        conn.send(b"STARTTLS\r\n")
        keywords = conn.ehlo()
        self.assertNotIn(b"STARTTLS", keywords)
        self.assertEqual(keywords[b"AUTH"], [b"CRAM-MD5", b"PLAIN", b"LOGIN"])

    def test_ehloBeforeTLS(self):
        """
        Before TLS, with a portal, only CRAM-MD5 is offered besides
        STARTTLS.
        """
        factory = authFactory(contextFactory=CONTEXT)
        keywords = Connection(factory, STARTTLSTransport).ehlo()
        self.assertIn(b"STARTTLS", keywords)
        self.assertEqual(keywords[b"AUTH"], [b"CRAM-MD5"])

    def test_secondSTARTTLS(self):
        """
        STARTTLS once TLS is active is C{503 5.5.1}.
        """
        conn = tlsConnection()
        conn.send(b"STARTTLS\r\n")
        conn.ehlo()
        self.assertEqual(conn.codes(b"STARTTLS\r\n"), [b"503 5.5.1"])
        self.assertEqual(conn.transport.tlsStarts, [CONTEXT])

    def test_authenticationForgotten(self):
        """
        An authentication made before TLS (where plaintext AUTH is allowed)
        is forgotten: the avatar is logged out, and AUTH is offered and
        accepted again.
        """
        factory = authFactory(contextFactory=CONTEXT, allowPlaintextAuth=True)
        conn = tlsConnection(factory)
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])
        conn.send(b"STARTTLS\r\n")
        self.assertFalse(conn.proto.authenticated)
        self.assertIsNone(conn.proto.authenticatedUser)
        self.assertEqual(factory.realm.logouts, [b"alice"])
        self.assertIn(b"AUTH", conn.ehlo())
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])
        self.assertEqual(conn.proto.authenticatedUser, b"alice")

    def test_avatarForgotten(self):
        """
        After TLS, the avatar of a login made before it is not used: with
        no anonymous access, MAIL needs a new AUTH (C{530 5.7.0}), and
        nothing reaches the logged-out user's delivery.
        """
        factory = authFactory(contextFactory=CONTEXT, allowPlaintextAuth=True)
        conn = tlsConnection(factory)
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])
        conn.send(b"STARTTLS\r\n")
        conn.ehlo()
        self.assertEqual(conn.send(b"MAIL FROM:<mallory@example.org>\r\n"), [b"530 5.7.0 Authentication required"])
        conn.send(b"RCPT TO:<bob@example.com>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        self.assertEqual(factory.realm.deliveries[b"alice"].messages, [])

    def test_implicitTLS(self):
        """
        On a transport that is TLS from the start, STARTTLS is never
        offered (and refused with C{503 5.5.1}), and PLAIN and LOGIN are.
        """
        conn = Connection(authFactory(contextFactory=CONTEXT), ImplicitTLSTransport)
        self.assertTrue(conn.proto.startedTLS)
        keywords = conn.ehlo()
        self.assertNotIn(b"STARTTLS", keywords)
        self.assertEqual(keywords[b"AUTH"], [b"CRAM-MD5", b"PLAIN", b"LOGIN"])
        self.assertEqual(conn.codes(b"STARTTLS\r\n"), [b"503 5.5.1"])

    def test_implicitTLSTraceHeader(self):
        """
        Over implicit TLS the trace header says C{ESMTPS}, and C{ESMTPSA}
        once authenticated (RFC 3848).
        """
        factory = authFactory(anonymous=True)
        factory.protocol = TracingESMTP
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual(conn.proto._withProtocol(), b"ESMTPS")
        conn.send(TRANSACTION)
        conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
        self.assertEqual(conn.proto._withProtocol(), b"ESMTPSA")
        conn.send(TRANSACTION)
        [anonymous] = factory.realm.anonymous.messages
        [authenticated] = factory.realm.deliveries[b"alice"].messages
        self.assertIn(b"with ESMTPS\r\n", anonymous.data)
        self.assertIn(b"with ESMTPSA\r\n", authenticated.data)

    def test_startTLSTraceHeader(self):
        """
        After STARTTLS the trace header says C{ESMTPS}.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock(), contextFactory=CONTEXT)
        factory.protocol = TracingESMTP
        conn = tlsConnection(factory)
        self.assertEqual(conn.proto._withProtocol(), b"ESMTP")
        conn.send(b"STARTTLS\r\n")
        conn.ehlo()
        conn.send(TRANSACTION)
        [message] = factory.delivery.messages
        self.assertIn(b"with ESMTPS\r\n", message.data)


class AuthExchangeTests(SynchronousTestCase):
    """
    The SASL exchanges of AUTH (RFC 4954) against a real cred portal.
    """

    def connect(self, transportClass=ImplicitTLSTransport, **kw) -> Connection:
        conn = Connection(authFactory(**kw), transportClass)
        conn.ehlo()
        return conn

    def assertAuthenticated(self, conn, user=b"alice"):
        self.assertTrue(conn.proto.authenticated)
        self.assertEqual(conn.proto.authenticatedUser, user)

    def test_plainInitialResponse(self):
        """
        PLAIN with an initial response: C{235 2.7.0}.
        """
        conn = self.connect()
        self.assertEqual(conn.send(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0 Authentication successful"])
        self.assertAuthenticated(conn)

    def test_plainChallenge(self):
        """
        PLAIN without an initial response: an empty challenge (C{334 }),
        then the response.
        """
        conn = self.connect()
        self.assertEqual(conn.send(b"AUTH PLAIN\r\n"), [b"334 "])
        self.assertEqual(conn.codes(plain() + b"\r\n"), [b"235 2.7.0"])
        self.assertAuthenticated(conn)

    def test_mechanismCase(self):
        """
        Mechanism names are case-insensitive.
        """
        conn = self.connect()
        self.assertEqual(conn.codes(b"auth plain " + plain() + b"\r\n"), [b"235 2.7.0"])

    def test_plainSameAuthzid(self):
        """
        An authorization identity equal to the user name is accepted.
        """
        conn = self.connect()
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain(authzid=b"alice") + b"\r\n"), [b"235 2.7.0"])
        self.assertAuthenticated(conn)

    def test_plainOtherAuthzid(self):
        """
        Asking to act as another user is refused, even with the right
        password: C{535 5.7.8}.
        """
        conn = self.connect()
        self.assertEqual(conn.send(b"AUTH PLAIN " + plain(authzid=b"bob") + b"\r\n"), [])
        self.assertEqual(replyCodes(conn.advance(1)), [b"535 5.7.8"])
        self.assertFalse(conn.proto.authenticated)

    def test_plainEmptyInitialResponse(self):
        """
        C{=} is an empty initial response, not base64: for PLAIN that is a
        malformed message, so the login fails (C{535}, not C{501}).
        """
        conn = self.connect()
        self.assertEqual(conn.send(b"AUTH PLAIN =\r\n"), [])
        self.assertEqual(replyCodes(conn.advance(1)), [b"535 5.7.8"])

    def test_plainWrongPassword(self):
        """
        A wrong password: C{535 5.7.8 Authentication credentials invalid}.
        """
        conn = self.connect()
        conn.send(b"AUTH PLAIN " + plain(password=WRONG) + b"\r\n")
        self.assertEqual(conn.advance(1), [b"535 5.7.8 Authentication credentials invalid"])
        self.assertFalse(conn.proto.authenticated)
        self.assertIsNone(conn.proto.authenticatedUser)

    def test_unknownUser(self):
        """
        An unknown user fails like a wrong password.
        """
        conn = self.connect()
        conn.send(b"AUTH PLAIN " + plain(user=b"mallory") + b"\r\n")
        self.assertEqual(replyCodes(conn.advance(1)), [b"535 5.7.8"])

    def test_login(self):
        """
        LOGIN: C{Username:}, C{Password:}, then C{235}.
        """
        conn = self.connect()
        self.assertEqual(conn.send(b"AUTH LOGIN\r\n"), [USERNAME_CHALLENGE])
        self.assertEqual(conn.send(b64(b"alice") + b"\r\n"), [PASSWORD_CHALLENGE])
        self.assertEqual(conn.codes(b64(PASSWORD) + b"\r\n"), [b"235 2.7.0"])
        self.assertAuthenticated(conn)

    def test_loginInitialResponse(self):
        """
        LOGIN with the user name on the AUTH line: the server asks only
        for the password.
        """
        conn = self.connect()
        self.assertEqual(conn.send(b"AUTH LOGIN " + b64(b"alice") + b"\r\n"), [PASSWORD_CHALLENGE])
        self.assertEqual(conn.codes(b64(PASSWORD) + b"\r\n"), [b"235 2.7.0"])
        self.assertAuthenticated(conn)

    def test_loginEmptyInitialResponse(self):
        """
        C{AUTH LOGIN =} gives an empty user name: the server asks for the
        password, and the login fails.
        """
        conn = self.connect()
        self.assertEqual(conn.send(b"AUTH LOGIN =\r\n"), [PASSWORD_CHALLENGE])
        self.assertEqual(conn.send(b64(PASSWORD) + b"\r\n"), [])
        self.assertEqual(replyCodes(conn.advance(1)), [b"535 5.7.8"])

    def test_loginWrongPassword(self):
        """
        LOGIN with a wrong password: C{535 5.7.8} after the delay.
        """
        conn = self.connect()
        conn.send(b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n")
        self.assertEqual(conn.send(b64(WRONG) + b"\r\n"), [])
        self.assertEqual(replyCodes(conn.advance(1)), [b"535 5.7.8"])

    def test_pipelinedExchange(self):
        """
        The responses of a LOGIN exchange may come in one segment with the
        command; each challenge is still sent, in order.
        """
        conn = self.connect()
        lines = conn.send(b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(PASSWORD) + b"\r\nNOOP\r\n")
        self.assertEqual(
            lines, [USERNAME_CHALLENGE, PASSWORD_CHALLENGE, b"235 2.7.0 Authentication successful", b"250 2.0.0 OK"]
        )

    def test_cramMD5(self):
        """
        CRAM-MD5 (RFC 2195): the challenge is a message ID naming the
        server; the HMAC-MD5 of it under the password logs in.
        """
        conn = self.connect(transportClass=StringTransport)
        [challenge] = conn.send(b"AUTH CRAM-MD5\r\n")
        self.assertTrue(challenge.startswith(b"334 "), challenge)
        self.assertRegex(base64.b64decode(challenge[4:]), rb"^<\d+\.\d+@mx\.example>$")
        self.assertEqual(conn.codes(cramResponse(challenge) + b"\r\n"), [b"235 2.7.0"])
        self.assertAuthenticated(conn)

    def test_cramMD5ChallengesDiffer(self):
        """
        Each CRAM-MD5 exchange has a new challenge: a response cannot be
        replayed.
        """
        factory = authFactory()
        first, second = Connection(factory), Connection(factory)
        first.ehlo()
        second.ehlo()
        [challenge1] = first.send(b"AUTH CRAM-MD5\r\n")
        [challenge2] = second.send(b"AUTH CRAM-MD5\r\n")
        self.assertNotEqual(challenge1, challenge2)
        self.assertEqual(first.codes(cramResponse(challenge1) + b"\r\n"), [b"235 2.7.0"])
        # The first exchange's response, replayed to the second challenge:
        self.assertEqual(second.send(cramResponse(challenge1) + b"\r\n"), [])
        self.assertEqual(replyCodes(second.advance(1)), [b"535 5.7.8"])

    def test_cramMD5WrongPassword(self):
        """
        A CRAM-MD5 response made with a wrong password fails.
        """
        conn = self.connect(transportClass=StringTransport)
        [challenge] = conn.send(b"AUTH CRAM-MD5\r\n")
        self.assertEqual(conn.send(cramResponse(challenge, password=WRONG) + b"\r\n"), [])
        self.assertEqual(replyCodes(conn.advance(1)), [b"535 5.7.8"])
        self.assertFalse(conn.proto.authenticated)

    def test_cramMD5Malformed(self):
        """
        A CRAM-MD5 response without the space between user name and digest
        ends the exchange with a 5xx reply (a failed or a malformed
        authentication), not an internal error; the next command is read
        as a command.
        """
        conn = self.connect(transportClass=StringTransport)
        conn.send(b"AUTH CRAM-MD5\r\n")
        lines = conn.send(b64(b"alice") + b"\r\n") + conn.advance(1)
        self.flushLoggedErrors(ValueError)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(lines[0][:4], (b"501 ", b"535 "))
        self.assertEqual(conn.send(b"NOOP\r\n"), [b"250 2.0.0 OK"])

    def test_cramMD5NotOffered(self):
        """
        A checker that cannot check hashed-password credentials gets no
        CRAM-MD5: not offered, and C{504} if asked for.
        """
        conn = self.connect(checker=PasswordOnlyChecker({b"alice": PASSWORD}))
        self.assertEqual(conn.send(b"EHLO again\r\n")[-1], b"250 AUTH PLAIN LOGIN")
        self.assertEqual(conn.codes(b"AUTH CRAM-MD5\r\n"), [b"504 5.5.4"])
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])

    def test_nothingToOfferInPlaintext(self):
        """
        In plaintext with a checker for passwords only, there is no
        mechanism to offer: no AUTH keyword, and AUTH is C{503}.
        """
        conn = self.connect(transportClass=StringTransport, checker=PasswordOnlyChecker({b"alice": PASSWORD}))
        self.assertNotIn(b"AUTH", conn.ehlo())
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"503 5.5.1"])

    def test_plaintextRefused(self):
        """
        On a plaintext connection PLAIN and LOGIN are not offered and are
        refused with C{538 5.7.11}; CRAM-MD5 is offered.
        """
        conn = self.connect(transportClass=StringTransport)
        self.assertEqual(conn.ehlo()[b"AUTH"], [b"CRAM-MD5"])
        self.assertEqual(
            conn.send(b"AUTH PLAIN " + plain() + b"\r\n"),
            [b"538 5.7.11 Encryption required for requested authentication mechanism"],
        )
        self.assertEqual(conn.codes(b"AUTH LOGIN\r\nAUTH PLAIN\r\n"), [b"538 5.7.11"] * 2)
        self.assertFalse(conn.proto.authenticated)
        self.assertEqual(conn.proto.mode, "COMMAND")

    def test_plaintextAllowed(self):
        """
        With C{allowPlaintextAuth}, PLAIN and LOGIN are offered and work
        without TLS.
        """
        conn = self.connect(transportClass=StringTransport, allowPlaintextAuth=True)
        self.assertEqual(conn.ehlo()[b"AUTH"], [b"CRAM-MD5", b"PLAIN", b"LOGIN"])
        lines = conn.send(b"AUTH LOGIN " + b64(b"alice") + b"\r\n" + b64(PASSWORD) + b"\r\n")
        self.assertEqual(replyCodes(lines), [b"334", b"235 2.7.0"])

    def test_unknownMechanism(self):
        """
        An unknown mechanism: C{504 5.5.4}.
        """
        conn = self.connect()
        self.assertEqual(conn.codes(b"AUTH GSSAPI\r\nAUTH X-NOPE =\r\n"), [b"504 5.5.4"] * 2)
        self.assertEqual(conn.proto.mode, "COMMAND")

    def test_syntax(self):
        """
        AUTH without a mechanism, or with an initial response that is not
        base64: C{501}.
        """
        conn = self.connect()
        self.assertEqual([c[:3] for c in conn.codes(b"AUTH\r\nAUTH PLAIN !!!!\r\nAUTH PLAIN a b\r\n")], [b"501"] * 3)
        self.assertFalse(conn.proto.authenticated)

    def test_badBase64(self):
        """
        A response that is not base64: C{501}, and the exchange is over.
        """
        conn = self.connect()
        conn.send(b"AUTH LOGIN\r\n")
        self.assertEqual(conn.codes(b"not base64!\r\n"), [b"501 5.5.2"])
        self.assertEqual(conn.proto.mode, "COMMAND")
        self.assertEqual(conn.send(b"NOOP\r\n"), [b"250 2.0.0 OK"])
        self.assertFalse(conn.proto.authenticated)

    def test_cancel(self):
        """
        C{*} cancels the exchange: C{501}, back to commands.
        """
        conn = self.connect()
        conn.send(b"AUTH LOGIN\r\n")
        conn.send(b64(b"alice") + b"\r\n")
        self.assertEqual(conn.codes(b"*\r\n"), [b"501 5.7.0"])
        self.assertEqual(conn.send(b"NOOP\r\n"), [b"250 2.0.0 OK"])
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])

    def test_alreadyAuthenticated(self):
        """
        AUTH after a successful AUTH: C{503 5.5.1}.  AUTH stays in the EHLO
        reply, so that the C{AUTH=} parameter of MAIL stays allowed.
        """
        conn = self.connect()
        conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"503 5.5.1"])
        self.assertIn(b"AUTH", conn.ehlo())
        self.assertEqual(conn.codes(b"MAIL FROM:<a@example.org> AUTH=<a@example.org>\r\n"), [b"250 2.1.0"])

    def test_duringTransaction(self):
        """
        AUTH after MAIL: C{503 5.5.1}.
        """
        conn = Connection(authFactory(delivery=MemoryDelivery()), ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual(conn.codes(b"MAIL FROM:<a@example.org>\r\n"), [b"250 2.1.0"])
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"503 5.5.1"])
        self.assertFalse(conn.proto.authenticated)
        self.assertEqual(conn.codes(b"RSET\r\nAUTH PLAIN " + plain() + b"\r\n"), [b"250 2.0.0", b"235 2.7.0"])

    def test_beforeEHLO(self):
        """
        AUTH before EHLO, or after HELO, was not offered: C{503}.
        """
        conn = Connection(authFactory(), ImplicitTLSTransport)
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"503"])
        conn.send(b"HELO client.example\r\n")
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"503"])
        self.assertFalse(conn.proto.authenticated)

    def test_noPortal(self):
        """
        Without a portal there is no AUTH.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock())
        conn = Connection(factory, ImplicitTLSTransport)
        self.assertNotIn(b"AUTH", conn.ehlo())
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"503 5.5.1"])

    def test_checkerError(self):
        """
        A checker failing with something other than L{UnauthorizedLogin}
        gets C{454 4.7.0}, logged; the session goes on.
        """
        conn = self.connect(checker=BrokenChecker())
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"454 4.7.0"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(conn.send(b"NOOP\r\n"), [b"250 2.0.0 OK"])
        self.assertFalse(conn.proto.authenticated)

    def test_longResponse(self):
        """
        In the AUTH state a line may have 12288 octets with its CRLF (RFC
        4954 section 4), against 512 (plus parameters) for commands.
        """
        conn = self.connect()
        conn.send(b"AUTH LOGIN\r\n")
        # Longest base64 below the limit: taken as the user name.
        self.assertEqual(conn.send(b64(b"u" * 9213) + b"\r\n"), [PASSWORD_CHALLENGE])
        self.assertEqual(conn.proto.challenger.username, b"u" * 9213)
        conn.send(b"*\r\n")
        conn.send(b"AUTH LOGIN\r\n")
        # 12288 octets with the CRLF: read (and refused as not base64).
        self.assertEqual(conn.codes(b"A" * 12286 + b"\r\n"), [b"501 5.5.2"])

    def test_responseTooLong(self):
        """
        A response longer than 12288 octets is refused with C{500}.
        """
        conn = self.connect()
        conn.send(b"AUTH LOGIN\r\n")
        self.assertEqual(conn.codes(b"A" * 12287 + b"\r\n"), [b"500 5.5.2"])
        self.assertFalse(conn.proto.authenticated)

    def test_responseTooLongEndsExchange(self):
        """
        The C{500} for an over-long response is the exchange's final reply
        (RFC 4954 section 4): the next line is a command again, not a SASL
        response.
        """
        conn = self.connect()
        conn.send(b"AUTH LOGIN\r\n")
        self.assertEqual(conn.codes(b"A" * 20000 + b"\r\n"), [b"500 5.5.2"])
        self.assertEqual(conn.send(b"NOOP\r\n"), [b"250 2.0.0 OK"])

    def test_commandLineLimitUnchanged(self):
        """
        The longer limit is for AUTH and SASL responses only: another
        command line is still limited.
        """
        conn = self.connect()
        self.assertEqual(conn.codes(b"MAIL FROM:<" + b"a" * 4000 + b"@example.org>\r\n"), [b"500 5.5.2"])
        self.assertEqual(conn.proto.mode, "COMMAND")

    def test_longInitialResponse(self):
        """
        An AUTH command line with an initial response may have up to
        12,288 octets (RFC 4954 section 4); a longer one is refused and the
        session goes on.
        """
        conn = self.connect()
        self.assertEqual(conn.codes(b"AUTH PLAIN " + b"A" * 12274 + b"\r\n"), [b"501 5.5.4"])
        self.assertEqual(conn.codes(b"AUTH PLAIN " + b"A" * 12276 + b"\r\n"), [b"500 5.5.2"])
        self.assertEqual(conn.proto.mode, "COMMAND")
        self.assertEqual(conn.send(b"NOOP\r\n"), [b"250 2.0.0 OK"])


class AuthFailureDelayTests(SynchronousTestCase):
    """
    Failed logins are answered later and later, and too many end the
    connection.
    """

    def connect(self, **kw) -> Connection:
        conn = Connection(authFactory(**kw), ImplicitTLSTransport)
        conn.ehlo()
        return conn

    def guessWrong(self, conn) -> list[bytes]:
        return conn.send(b"AUTH PLAIN " + plain(password=WRONG) + b"\r\n")

    def test_delayed(self):
        """
        The first failure is answered after C{authFailureDelay} seconds,
        not before.
        """
        conn = self.connect(authFailureDelay=2.0)
        self.assertEqual(self.guessWrong(conn), [])
        self.assertEqual(conn.advance(1.999), [])
        self.assertEqual(replyCodes(conn.advance(0.001)), [b"535 5.7.8"])

    def test_delayGrows(self):
        """
        The n-th failure waits n times C{authFailureDelay}; the
        C{maxAuthFailures}-th is answered with C{421 4.7.0}, and the
        connection is closed.
        """
        conn = self.connect(authFailureDelay=2.0, maxAuthFailures=3)
        for n in (1, 2):
            self.assertEqual(self.guessWrong(conn), [])
            self.assertEqual(conn.advance(2.0 * n - 0.01), [])
            self.assertEqual(replyCodes(conn.advance(0.01)), [b"535 5.7.8"])
            self.assertFalse(conn.transport.disconnecting)
        self.assertEqual(self.guessWrong(conn), [])
        self.assertEqual(conn.advance(5.99), [])
        lines = conn.advance(0.01)
        self.assertEqual(replyCodes(lines), [b"421 4.7.0"])
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(conn.send(b"AUTH PLAIN " + plain() + b"\r\n"), [])
        self.assertFalse(conn.proto.authenticated)

    def test_failureKinds(self):
        """
        Failures in the SASL exchange itself (a malformed PLAIN message)
        count and are delayed like wrong passwords.
        """
        conn = self.connect(authFailureDelay=1.0, maxAuthFailures=2)
        self.assertEqual(conn.send(b"AUTH PLAIN " + b64(b"no-nuls") + b"\r\n"), [])
        self.assertEqual(replyCodes(conn.advance(1)), [b"535 5.7.8"])
        self.assertEqual(self.guessWrong(conn), [])
        self.assertEqual(conn.advance(1.99), [])
        self.assertEqual(replyCodes(conn.advance(0.01)), [b"421 4.7.0"])
        self.assertTrue(conn.transport.disconnecting)

    def test_pipelinedInputWaits(self):
        """
        Commands pipelined behind a failed AUTH wait for its delayed reply:
        a client cannot hurry the next guess.
        """
        conn = self.connect(authFailureDelay=1.0)
        data = b"AUTH PLAIN " + plain(password=WRONG) + b"\r\nNOOP\r\nAUTH PLAIN " + plain(password=b"x") + b"\r\n"
        self.assertEqual(conn.send(data), [])
        self.assertEqual(replyCodes(conn.advance(1)), [b"535 5.7.8", b"250 2.0.0"])
        self.assertEqual(conn.advance(1.99), [])
        self.assertEqual(replyCodes(conn.advance(0.01)), [b"535 5.7.8"])

    def test_noTimeoutDuringDelay(self):
        """
        The delay does not count as the client's idle time.
        """
        conn = self.connect(authFailureDelay=30.0, timeout=20)
        self.guessWrong(conn)
        self.assertEqual(replyCodes(conn.advance(30)), [b"535 5.7.8"])
        self.assertFalse(conn.transport.disconnecting)
        self.assertEqual(replyCodes(conn.advance(20)), [b"421 4.4.2"])

    def test_connectionLostDuringDelay(self):
        """
        When the client leaves during the delay, the delayed reply is
        cancelled: nothing is left scheduled, nothing written to the closed
        transport.
        """
        conn = self.connect(authFailureDelay=5.0)
        self.guessWrong(conn)
        conn.close()
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        self.assertEqual(conn.advance(5), [])

    def test_successAfterFailure(self):
        """
        A right password after a wrong one logs in.
        """
        conn = self.connect()
        self.guessWrong(conn)
        conn.advance(1)
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])

    def test_noDelay(self):
        """
        With C{authFailureDelay=0}, failures are answered at once.
        """
        conn = self.connect(authFailureDelay=0)
        self.assertEqual(replyCodes(self.guessWrong(conn)), [b"535 5.7.8"])


class AuthFailuresTests(SynchronousTestCase):
    """
    L{AuthFailures}: failures counted per client address over the
    connections of a factory.
    """

    def test_window(self):
        """
        An address is blocked with C{limit} failures in the last C{window}
        seconds, and unblocked as they age out.
        """
        clock = Clock()
        failures = AuthFailures(limit=2, window=100, clock=clock)
        failures.failed(b"192.0.2.7")
        clock.advance(50)
        self.assertFalse(failures.blocked(b"192.0.2.7"))
        failures.failed(b"192.0.2.7")
        self.assertTrue(failures.blocked(b"192.0.2.7"))
        self.assertFalse(failures.blocked(b"192.0.2.8"))
        clock.advance(50.5)
        self.assertFalse(failures.blocked(b"192.0.2.7"))
        clock.advance(50)
        self.assertFalse(failures.blocked(b"192.0.2.7"))

    def shared(self):
        clock = Clock()
        failures = AuthFailures(limit=5, window=600, clock=clock)
        factory = authFactory(clock=clock, authFailures=failures, authFailureDelay=1.0, maxAuthFailures=3)
        return factory, clock

    def guess(self, conn) -> list[bytes]:
        """
        One wrong password, with the wait for its answer.
        """
        lines = conn.send(b"AUTH PLAIN " + plain(password=WRONG) + b"\r\n")
        return replyCodes(lines + conn.advance(10))

    def test_acrossConnections(self):
        """
        Five failures from one address over several connections: the next
        connection's AUTH is refused, even with the right password, with
        C{421 4.7.0} and a close.  Another address is not affected; after
        the window the address may log in again.
        """
        factory, clock = self.shared()
        first = Connection(factory, ImplicitTLSTransport)
        first.ehlo()
        self.assertEqual([self.guess(first) for i in range(3)], [[b"535 5.7.8"], [b"535 5.7.8"], [b"421 4.7.0"]])
        first.close()
        second = Connection(factory, ImplicitTLSTransport)
        second.ehlo()
        self.assertEqual([self.guess(second) for i in range(2)], [[b"535 5.7.8"]] * 2)
        second.close()

        third = Connection(factory, ImplicitTLSTransport)
        third.ehlo()
        lines = third.send(b"AUTH PLAIN " + plain() + b"\r\n")
        self.assertEqual(replyCodes(lines), [b"421 4.7.0"])
        self.assertTrue(third.transport.disconnecting)
        self.assertFalse(third.proto.authenticated)

        other = Connection(factory, ImplicitTLSTransport, peer=OTHER_CLIENT)
        other.ehlo()
        self.assertEqual(other.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])

        clock.advance(601)
        fourth = Connection(factory, ImplicitTLSTransport)
        fourth.ehlo()
        self.assertEqual(fourth.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])

    def test_blockedWithinConnection(self):
        """
        The limit also applies inside a connection that is still open.
        """
        factory, clock = self.shared()
        factory.maxAuthFailures = 100
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual([self.guess(conn) for i in range(5)], [[b"535 5.7.8"]] * 5)
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"421 4.7.0"])
        self.assertTrue(conn.transport.disconnecting)

    def test_defaultShared(self):
        """
        By default a factory has one L{AuthFailures}, on its clock, shared
        by its connections.
        """
        factory = authFactory()
        self.assertIsInstance(factory.authFailures, AuthFailures)
        self.assertIs(factory.buildProtocol(CLIENT).authFailures, factory.buildProtocol(CLIENT).authFailures)
        self.assertIs(factory.authFailures._clock, factory.clock)

    def test_guessing(self):
        """
        ATTACK: 30 wrong passwords from one address, over as many
        connections as it takes.  Every one is answered late, every
        connection is cut, the guesser is shut out for a window after ten
        failures, and no guess ever gets in (nor does the right password
        while shut out).
        """
        factory = authFactory(contextFactory=CONTEXT)
        clock = factory.clock
        failures = connections = shutOut = 0
        while failures < 30:
            conn = Connection(factory, ImplicitTLSTransport)
            connections += 1
            conn.ehlo()
            while not conn.transport.disconnecting:
                lines = conn.send(b"AUTH PLAIN " + plain(password=WRONG + b"%d" % failures) + b"\r\n")
                if lines:
                    # Refused before any check: shut out.
                    self.assertEqual(replyCodes(lines), [b"421 4.7.0"])
                    shutOut += 1
                    break
                failures += 1
                waited = 0.0
                while not lines:
                    clock.advance(0.5)
                    waited += 0.5
                    lines = conn.take()
                self.assertGreaterEqual(waited, factory.authFailureDelay)
                self.assertIn(replyCodes(lines), ([b"535 5.7.8"], [b"421 4.7.0"]))
                self.assertFalse(conn.proto.authenticated)
            self.assertTrue(conn.transport.disconnecting)
            conn.close()
            if conn.proto._authFailureCount == 0:
                # Shut out: come back a minute later.
                clock.advance(60)
        self.assertEqual(failures, 30)
        self.assertGreaterEqual(connections, 10)
        self.assertGreaterEqual(shutOut, 2)
        # Ten failures per 600-second window: the thirtieth comes after
        # two windows.
        self.assertGreater(clock.seconds(), 1200)
        # Shut out now: even the right password does not get in.
        self.assertTrue(factory.authFailures.blocked(b"192.0.2.7"))
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"421 4.7.0"])
        self.assertEqual(factory.realm.logouts, [])
        self.assertEqual(factory.realm.deliveries, {})


class AuthenticatedSessionTests(SynchronousTestCase):
    """
    What AUTH changes in the session: delivery, trace header, C{AUTH=}.
    """

    def test_avatarDelivers(self):
        """
        After AUTH the avatar's delivery gets the mail, rather than the
        factory's.
        """
        fallback = MemoryDelivery()
        factory = authFactory(delivery=fallback)
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
        self.assertEqual(conn.codes(TRANSACTION), [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"])
        [message] = factory.realm.deliveries[b"alice"].messages
        self.assertEqual(bytes(message.recipient), b"bob@example.com")
        self.assertEqual(fallback.messages, [])

    def test_logoutOnDisconnect(self):
        """
        The avatar is logged out when the connection is lost.
        """
        factory = authFactory()
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
        self.assertEqual(factory.realm.logouts, [])
        conn.close()
        self.assertEqual(factory.realm.logouts, [b"alice"])

    def test_anonymousAvatarLoggedOut(self):
        """
        An anonymous avatar in use before AUTH is logged out when AUTH
        replaces it (every cred login gets its logout), and the new avatar
        when the connection ends.
        """
        factory = authFactory(anonymous=True)
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        conn.send(TRANSACTION)
        self.assertEqual(len(factory.realm.anonymous.messages), 1)
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])
        self.assertEqual(factory.realm.logouts, [()])
        conn.close()
        self.assertEqual(factory.realm.logouts, [(), b"alice"])

    def test_authenticatedUser(self):
        """
        C{authenticatedUser} is the user name logged in with, whatever the
        mechanism.
        """
        factory = authFactory(allowPlaintextAuth=True)
        for exchange in (
            lambda c: c.send(b"AUTH PLAIN " + plain() + b"\r\n"),
            lambda c: c.send(b"AUTH LOGIN " + b64(b"alice") + b"\r\n" + b64(PASSWORD) + b"\r\n"),
            lambda c: c.send(cramResponse(c.send(b"AUTH CRAM-MD5\r\n")[0]) + b"\r\n"),
        ):
            conn = Connection(factory)
            conn.ehlo()
            self.assertIsNone(conn.proto.authenticatedUser)
            self.assertEqual(replyCodes(exchange(conn))[-1], b"235 2.7.0")
            self.assertEqual(conn.proto.authenticatedUser, b"alice")

    def test_traceHeaderESMTPA(self):
        """
        The trace header of an authenticated plaintext session says
        C{ESMTPA} (RFC 3848).
        """
        factory = authFactory()
        factory.protocol = TracingESMTP
        conn = Connection(factory)
        conn.ehlo()
        self.assertEqual(conn.proto._withProtocol(), b"ESMTP")
        conn.send(cramResponse(conn.send(b"AUTH CRAM-MD5\r\n")[0]) + b"\r\n")
        self.assertEqual(conn.proto._withProtocol(), b"ESMTPA")
        conn.send(TRANSACTION)
        [message] = factory.realm.deliveries[b"alice"].messages
        self.assertRegex(
            message.data,
            rb"^Received: from client\.example \(\[192\.0\.2\.7\]\)\r\n"
            rb"\tby mx\.example \(mailproto [^)]*\) with ESMTPA\r\n"
            rb"\tfor <bob@example\.com>;",
        )

    def test_traceHeaderESMTPSA(self):
        """
        Authenticated after STARTTLS: C{ESMTPSA}.
        """
        factory = authFactory(contextFactory=CONTEXT)
        factory.protocol = TracingESMTP
        conn = tlsConnection(factory)
        conn.send(b"STARTTLS\r\n")
        conn.ehlo()
        conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
        self.assertEqual(conn.proto._withProtocol(), b"ESMTPSA")
        conn.send(TRANSACTION)
        [message] = factory.realm.deliveries[b"alice"].messages
        self.assertIn(b" with ESMTPSA\r\n", message.data)

    def test_authParameterKept(self):
        """
        C{AUTH=<alice@x>} on MAIL from an authenticated client is kept.
        """
        factory = authFactory()
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
        self.assertEqual(conn.codes(b"MAIL FROM:<alice@example.org> AUTH=<alice@x.example>\r\n"), [b"250 2.1.0"])
        conn.send(TRANSACTION.split(b"\r\n", 1)[1])
        [message] = factory.realm.deliveries[b"alice"].messages
        self.assertEqual(message.mail.auth, b"<alice@x.example>")

    def test_authParameterXtext(self):
        """
        The C{AUTH=} value is decoded from xtext.
        """
        factory = authFactory()
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
        conn.send(b"MAIL FROM:<alice@example.org> AUTH=a+2Bb@x.example\r\n" + TRANSACTION.split(b"\r\n", 1)[1])
        [message] = factory.realm.deliveries[b"alice"].messages
        self.assertEqual(message.mail.auth, b"a+b@x.example")

    def test_authParameterNotBelieved(self):
        """
        C{AUTH=<alice@x>} from an unauthenticated client becomes C{<>}
        (RFC 4954 section 5).
        """
        delivery = MemoryDelivery()
        conn = Connection(authFactory(delivery=delivery), ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual(conn.codes(b"MAIL FROM:<alice@example.org> AUTH=<alice@x.example>\r\n"), [b"250 2.1.0"])
        conn.send(TRANSACTION.split(b"\r\n", 1)[1])
        [message] = delivery.messages
        self.assertEqual(message.mail.auth, b"<>")

    def test_noAuthParameter(self):
        """
        Without C{AUTH=}, there is none, authenticated or not.
        """
        factory = authFactory()
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        conn.send(b"AUTH PLAIN " + plain() + b"\r\n" + TRANSACTION)
        [message] = factory.realm.deliveries[b"alice"].messages
        self.assertIsNone(message.mail.auth)


class AnonymousTests(SynchronousTestCase):
    """
    Mail from clients that have not authenticated.
    """

    def test_authenticationRequired(self):
        """
        A portal without anonymous access and no delivery: MAIL before AUTH
        is C{530 5.7.0 Authentication required}; after AUTH it is accepted.
        """
        factory = authFactory()
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual(conn.send(b"MAIL FROM:<a@example.org>\r\n"), [b"530 5.7.0 Authentication required"])
        self.assertEqual(conn.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])
        self.assertEqual(conn.codes(b"MAIL FROM:<a@example.org>\r\n"), [b"250 2.1.0"])

    def test_factoryDelivery(self):
        """
        With C{delivery=} on the factory, unauthenticated mail goes there.
        """
        delivery = MemoryDelivery()
        factory = authFactory(delivery=delivery)
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual(conn.codes(TRANSACTION), [b"250 2.1.0", b"250 2.1.5", b"354", b"250 2.0.0"])
        self.assertEqual(len(delivery.messages), 1)
        self.assertEqual(factory.realm.deliveries, {})

    def test_anonymousAccess(self):
        """
        With anonymous access in the portal, unauthenticated mail goes to
        the anonymous avatar.
        """
        factory = authFactory(anonymous=True)
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual(conn.codes(TRANSACTION)[-1], b"250 2.0.0")
        self.assertEqual(len(factory.realm.anonymous.messages), 1)


class PasswordLoggingTests(SynchronousTestCase):
    """
    Passwords, and what would let one be found, never reach the log.
    """

    def secrets(self, *payloads: bytes) -> list[str]:
        found = []
        for secret in (PASSWORD, WRONG):
            found += [secret, b64(secret), secret.hex().encode("ascii")]
        found += [p for p in payloads if p]
        return [s.decode("ascii") for s in found]

    def assertNotLogged(self, events, secrets):
        self.assertTrue(events)
        for event in events:
            texts = [formatEvent(event)] + [repr(value) for value in event.values()]
            failure = event.get("log_failure")
            if failure is not None:
                texts.append(failure.getTraceback())
            for text in texts:
                for secret in secrets:
                    self.assertNotIn(secret, text, event)

    def exchangeAll(self, exchanges, **kw):
        """
        Run each exchange on a new connection, capturing the log.

        @return: the log events and the payloads sent.
        """
        factory = authFactory(allowPlaintextAuth=True, **kw)
        sent = []
        with capturedLogs() as events:
            for exchange in exchanges:
                conn = Connection(factory, STARTTLSTransport)
                conn.ehlo()
                sent += exchange(conn)
                conn.advance(10)
                conn.close()
        return events, sent

    def plainExchange(self, password):
        def exchange(conn):
            payload = plain(password=password)
            conn.send(b"AUTH PLAIN " + payload + b"\r\n")
            return [payload]

        return exchange

    def loginExchange(self, password, initial=False):
        def exchange(conn):
            if initial:
                conn.send(b"AUTH LOGIN " + b64(b"alice") + b"\r\n")
            else:
                conn.send(b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n")
            conn.send(b64(password) + b"\r\n")
            return [b64(password)]

        return exchange

    def cramExchange(self, password):
        def exchange(conn):
            payload = cramResponse(conn.send(b"AUTH CRAM-MD5\r\n")[0], password=password)
            conn.send(payload + b"\r\n")
            return [payload, base64.b64decode(payload).split(b" ")[1]]

        return exchange

    def test_plain(self):
        """
        PLAIN, failed and successful.
        """
        events, sent = self.exchangeAll([self.plainExchange(WRONG), self.plainExchange(PASSWORD)])
        self.assertNotLogged(events, self.secrets(*sent))

    def test_login(self):
        """
        LOGIN, failed and successful, with and without an initial response.
        """
        events, sent = self.exchangeAll(
            [
                self.loginExchange(WRONG),
                self.loginExchange(PASSWORD),
                self.loginExchange(WRONG, True),
                self.loginExchange(PASSWORD, True),
            ]
        )
        self.assertNotLogged(events, self.secrets(*sent))

    def test_cramMD5(self):
        """
        CRAM-MD5, failed and successful: neither the digest nor the
        response appear.
        """
        events, sent = self.exchangeAll([self.cramExchange(WRONG), self.cramExchange(PASSWORD)])
        self.assertNotLogged(events, self.secrets(*sent))

    def test_tooManyFailures(self):
        """
        Failures up to the hang-up, and the refusal of a shut-out address.
        """
        clock = Clock()
        factory = authFactory(clock=clock, allowPlaintextAuth=True, authFailures=AuthFailures(limit=3, clock=clock))
        with capturedLogs() as events:
            conn = Connection(factory)
            conn.ehlo()
            for i in range(3):
                conn.send(b"AUTH PLAIN " + plain(password=WRONG) + b"\r\n")
                conn.advance(10)
            conn.close()
            conn = Connection(factory)
            conn.ehlo()
            conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
        self.assertNotLogged(events, self.secrets(plain(password=WRONG), plain()))

    def test_checkerError(self):
        """
        A checker's unexpected error is logged with its traceback, and
        without the credentials.
        """
        events, sent = self.exchangeAll([self.plainExchange(PASSWORD)], checker=BrokenChecker())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any(e.get("log_failure") is not None for e in events))
        self.assertNotLogged(events, self.secrets(*sent))
