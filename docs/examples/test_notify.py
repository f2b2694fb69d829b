"""
Tests for notify.py: run them with

    python -m twisted.trial test_notify
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mailproto.smtp import ESMTPFactory, SMTPDeliveryError
from mailproto.testing import MemoryDelivery, NameResolver, connectInMemory

import notify


class WelcomeTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.nameResolver = NameResolver({"smtp.example.com": ["192.0.2.25"]})

    def serve(self, delivery):
        """
        Answer the connection the code under test opened with a mailproto
        server that keeps messages in memory.
        """
        [(host, port, factory, timeout, bindAddress)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("192.0.2.25", 25))
        server = ESMTPFactory(delivery=delivery, domain=b"smtp.example.com", clock=self.reactor)
        connectInMemory(server.buildProtocol(None), factory.buildProtocol(None), clock=self.reactor)

    def test_sent(self):
        delivery = MemoryDelivery()
        d = notify.welcome("new@example.net", reactor=self.reactor)
        self.serve(delivery)
        self.assertIs(self.successResultOf(d), True)
        [message] = delivery.messages
        self.assertEqual(bytes(message.recipient), b"new@example.net")
        self.assertIn(b"\r\nSubject: Welcome!\r\n", message.data)

    def test_refused(self):
        delivery = MemoryDelivery(refuseRecipients=["new@example.net"])
        d = notify.welcome("new@example.net", reactor=self.reactor)
        self.serve(delivery)
        error = self.failureResultOf(d, SMTPDeliveryError).value
        self.assertEqual((error.code, error.status), (550, b"5.1.1"))
        self.assertEqual(delivery.messages, [])
