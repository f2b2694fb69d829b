# -*- test-case-name: mailproto.test.test_testing -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
L{mailproto.testing}: the helpers users get for their own tests.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailproto.interfaces import IMessageDelivery, IMessageStream
from mailproto.smtp import ESMTPFactory, SMTPServerError, User
from mailproto.testing import DeliveredMessage, MemoryDelivery, MemoryMessage, connectInMemory


class ScriptedClient(LineReceiver):
    """
    A client that sends its script once greeted and keeps every reply line.
    """

    def __init__(self, script: bytes) -> None:
        self.script = script
        self.replies = []

    def lineReceived(self, line):
        self.replies.append(line)
        if len(self.replies) == 1:
            self.transport.write(self.script)


class ConnectInMemoryTests(SynchronousTestCase):
    """
    L{connectInMemory} joins a server and a client without sockets.
    """

    def test_dialogue(self):
        delivery = MemoryDelivery()
        server = ESMTPFactory(delivery=delivery, domain=b"mx.example").buildProtocol(None)
        client = ScriptedClient(
            b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
            b"DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
        )
        pump = connectInMemory(server, client)
        pump.flush()
        self.assertEqual(client.replies[0], b"220 mx.example NO UCE NO UBE NO RELAY PROBES ESMTP")
        self.assertEqual(client.replies[-2:], [b"250 2.0.0 Delivery in progress", b"221 2.0.0 See you later"])
        [message] = delivery.messages
        self.assertEqual(message.data, b"Subject: hi\r\n\r\n.dot\r\n")
        self.assertEqual(message.helo, (b"c.example", b"127.0.0.1"))
        self.assertTrue(pump.serverIO.disconnected)

    def test_addressesAndClock(self):
        """
        The addresses each side sees can be chosen, and the pump moves the
        given clock, which the server can use for its timeout.
        """
        clock = Clock()
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=clock, timeout=10)
        server = factory.buildProtocol(None)
        client = ScriptedClient(b"")
        connectInMemory(
            server, client, clock=clock, clientAddress=IPv4Address("TCP", "198.51.100.9", 1234)
        )
        self.assertEqual(server._helo, (None, b"198.51.100.9"))
        clock.advance(10)
        self.assertEqual(server.transport.getOutBuffer(), b"421 mx.example Timeout. Try talking faster next time!\r\n")


class MemoryDeliveryTests(SynchronousTestCase):
    """
    L{MemoryDelivery} and L{MemoryMessage} on their own.
    """

    def user(self, to=b"b@example.com"):
        return User(to, (b"c", b"127.0.0.1"), None, b"a@example.org")

    def test_interfaces(self):
        verifyObject(IMessageDelivery, MemoryDelivery())
        verifyObject(IMessageStream, MemoryMessage(MemoryDelivery(), self.user()))

    def test_records(self):
        delivery = MemoryDelivery()
        message = delivery.validateTo(self.user())()
        message.lineReceived(b"A: b")
        message.dataReceived(b"\r\nbody\r\n")
        self.successResultOf(message.eomReceived())
        [record] = delivery.messages
        self.assertIsInstance(record, DeliveredMessage)
        self.assertEqual((str(record.sender), str(record.recipient), record.data), ("a@example.org", "b@example.com", b"A: b\r\n\r\nbody\r\n"))
        self.assertIn("b@example.com", repr(record))

    def test_refusals(self):
        delivery = MemoryDelivery(refuseSenders=["a@example.org"], refuseRecipients=[b"b@example.com"])
        user = self.user()
        self.assertRaises(SMTPServerError, delivery.validateFrom, user.helo, user.orig)
        self.assertRaises(SMTPServerError, delivery.validateTo, user)
        delivery.validateTo(self.user(b"c@example.com"))

    def test_failDelivery(self):
        delivery = MemoryDelivery(failDelivery=SMTPServerError(452, "Full", b"4.2.2"))
        message = delivery.validateTo(self.user())()
        self.failureResultOf(message.eomReceived(), SMTPServerError)
        self.assertEqual(delivery.messages, [])

    def test_lost(self):
        delivery = MemoryDelivery()
        message = delivery.validateTo(self.user())()
        message.connectionLost()
        self.assertEqual(delivery.lost, [message])
        self.assertTrue(message.lost)

    def test_receivedHeader(self):
        self.assertIsNone(MemoryDelivery().receivedHeader(None, None, []))
        self.assertEqual(MemoryDelivery(receivedHeader=b"Received: x").receivedHeader(None, None, []), b"Received: x")
