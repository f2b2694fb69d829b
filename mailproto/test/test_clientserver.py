# -*- test-case-name: mailproto.test.test_clientserver -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
mailproto's client against mailproto's server, in memory: STARTTLS and
AUTH together, as an application and its own relay would use them.

The in-memory transports of L{twisted.test.iosim} stand in for TLS: both
sides must call C{startTLS}, and the two contexts are asked whether they
accept each other (C{iosimVerify}).
"""

import io

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailproto.smtp import (
    AUTHDeclinedError,
    ESMTPFactory,
    ESMTPSenderFactory,
    IMessageDelivery,
    SMTPClientError,
    TLSRequiredError,
)
from mailproto.testing import MemoryDelivery, connectInMemory


class FakeContext:
    """
    A stand-in TLS context for the in-memory transports.
    """

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept

    def iosimVerify(self, other) -> bool:
        return self.accept and other.accept


@implementer(IRealm)
class Realm:
    def __init__(self, delivery) -> None:
        self.delivery = delivery
        self.avatars = []

    def requestAvatar(self, avatarId, mind, *interfaces):
        self.avatars.append(avatarId)
        return IMessageDelivery, self.delivery, lambda: None


class STARTTLSAndAUTHTests(SynchronousTestCase):
    """
    C{ESMTPSender} (TLS and AUTH required) against C{ESMTP} with a portal
    and a TLS context.
    """

    def exchange(self, password=b"s3cret", serverContext=None, clientContext=None):
        delivery = MemoryDelivery()
        realm = Realm(delivery)
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"s3cret")
        server = ESMTPFactory(
            Portal(realm, [checker]),
            contextFactory=serverContext,
            domain=b"mx.example",
            authFailureDelay=0,
        ).buildProtocol(None)
        result = defer.Deferred()
        factory = ESMTPSenderFactory(
            b"joe",
            password,
            "alice@example.org",
            ["bob@example.com"],
            io.BytesIO(b"Subject: hi\n\n.dot\n"),
            result,
            retries=0,
            contextFactory=clientContext,
        )
        client = factory.buildProtocol(None)
        connectInMemory(server, client)
        return delivery, realm, server, client, result

    def test_delivered(self):
        """
        The client starts TLS, authenticates, and the message reaches the
        avatar's delivery; the server knows the session is encrypted and
        authenticated.
        """
        delivery, realm, server, client, result = self.exchange(
            serverContext=FakeContext(), clientContext=FakeContext()
        )
        self.assertEqual(self.successResultOf(result)[0], 1)
        [message] = delivery.messages
        self.assertEqual(message.data, b"Subject: hi\r\n\r\n.dot\r\n")
        self.assertEqual(realm.avatars, [b"joe"])
        self.assertTrue(server.startedTLS)
        self.assertEqual(server._withProtocol(), b"ESMTPSA")
        self.assertTrue(client._tlsMode)
        self.assertNotIn(b"s3cret", client.log.str())

    def test_wrongPassword(self):
        """
        A wrong password fails the send; nothing is delivered.
        """
        delivery, realm, server, client, result = self.exchange(
            password=b"nope", serverContext=FakeContext(), clientContext=FakeContext()
        )
        failure = self.failureResultOf(result, SMTPClientError)
        self.assertIsInstance(failure.value, (AUTHDeclinedError, SMTPClientError))
        self.assertEqual(delivery.messages, [])
        self.assertEqual(realm.avatars, [])

    def test_noTLSOnServer(self):
        """
        A server without a TLS context offers no STARTTLS: a client that
        requires TLS sends nothing, not even its password.
        """
        delivery, realm, server, client, result = self.exchange(serverContext=None, clientContext=FakeContext())
        self.failureResultOf(result, TLSRequiredError)
        self.assertNotIn(b">>> AUTH", client.log.str())
        self.assertFalse(server.authenticated)
        self.assertEqual(delivery.messages, [])

    def test_handshakeRefused(self):
        """
        When the handshake fails, nothing is sent after it.
        """
        delivery, realm, server, client, result = self.exchange(
            serverContext=FakeContext(), clientContext=FakeContext(accept=False)
        )
        self.assertFalse(server.authenticated)
        self.assertEqual(delivery.messages, [])
        self.assertEqual(realm.avatars, [])
