# -*- test-case-name: mailproto.test.test_relay -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Mail into the relay's queue: the relay policy, and the server writing
accepted messages durably before it says 250.
"""

import os

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailproto._queue import Queue
from mailproto._relay import DomainQueuer, QueueDelivery, QueueDeliveryFactory, RelayPolicy
from mailproto.interfaces import IMessageDelivery, IMessageDeliveryFactory
from mailproto.smtp import ESMTPFactory


class PolicyTests(SynchronousTestCase):
    """
    L{RelayPolicy}: authenticated, networks, inbound domains.
    """

    def test_default(self):
        policy = RelayPolicy()
        self.assertTrue(policy.accepts(b"127.0.0.1", False, b"example.com"))
        self.assertTrue(policy.accepts(b"::1", False, b"example.com"))
        self.assertTrue(policy.accepts(b"::ffff:127.0.0.2", False, b"example.com"))
        self.assertTrue(policy.accepts(b"unix", False, b"example.com"))
        self.assertFalse(policy.accepts(b"192.0.2.1", False, b"example.com"))
        self.assertTrue(policy.accepts(b"192.0.2.1", True, b"example.com"))
        self.assertFalse(policy.accepts(b"not an address", False, b"example.com"))

    def test_networksAndDomains(self):
        policy = RelayPolicy(networks=["192.0.2.0/24", "2001:db8::/32"], domains=["Inbound.Example.", "b\u00fccher.example"])
        self.assertTrue(policy.accepts(b"192.0.2.77", False, b"example.com"))
        self.assertTrue(policy.accepts(b"2001:db8::5", False, b"example.com"))
        self.assertFalse(policy.accepts(b"127.0.0.1", False, b"example.com"))
        self.assertTrue(policy.accepts(b"198.51.100.1", False, b"inbound.example"))
        self.assertTrue(policy.accepts(b"198.51.100.1", False, b"INBOUND.EXAMPLE."))
        self.assertTrue(policy.accepts(b"198.51.100.1", False, b"xn--bcher-kva.example"))
        self.assertRaises(ValueError, RelayPolicy, networks=["300.0.0.0/8"])


def synchronously(f, *args):
    return defer.maybeDeferred(f, *args)


class QueueDeliveryTests(SynchronousTestCase):
    """
    An ESMTP server with a L{QueueDeliveryFactory}.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.pending = []

        def later(f, *args):
            d = defer.Deferred()
            self.pending.append((f, args, d))
            return d

        self.queue = Queue(self.directory, runInThread=later)

    def flushDisk(self):
        while self.pending:
            f, args, d = self.pending.pop(0)
            d.callback(f(*args))

    def session(self, peer=IPv4Address("TCP", "127.0.0.1", 5000), policy=None):
        factory = ESMTPFactory(
            deliveryFactory=QueueDeliveryFactory(self.queue, policy, clock=Clock()),
            domain=b"relay.example",
            clock=Clock(),
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO client.example\r\n")
        transport.clear()
        return proto, transport

    def test_interfaces(self):
        verifyObject(IMessageDeliveryFactory, QueueDeliveryFactory(self.queue))
        verifyObject(IMessageDelivery, QueueDelivery(self.queue, RelayPolicy()))

    def test_queuedBefore250(self):
        """
        The 250 after the data comes only once the message is on disk; a
        message for two recipients is one queue entry.
        """
        proto, transport = self.session()
        proto.dataReceived(
            b"MAIL FROM:<a@example.org> RET=HDRS ENVID=e1\r\nRCPT TO:<b@example.com> NOTIFY=FAILURE\r\n"
            b"RCPT TO:<c@example.net>\r\nDATA\r\nSubject: x\r\n\r\n..hi\r\n.\r\n"
        )
        self.assertNotIn(b"250 2.0.0 Delivery", transport.value())
        self.assertEqual(os.listdir(os.path.join(self.directory, "queue")), [])
        self.flushDisk()
        self.assertRegex(transport.value(), rb"250 2\.0\.0 Ok: queued as [0-9a-f]+\r\n$")
        [queueID] = os.listdir(os.path.join(self.directory, "queue"))
        self.assertTrue(transport.value().endswith(b" queued as " + queueID.encode() + b"\r\n"))
        envelope = self.queue.getEnvelope(queueID)
        self.assertEqual(envelope.sender, b"a@example.org")
        self.assertEqual([r.address for r in envelope.recipients], [b"b@example.com", b"c@example.net"])
        self.assertEqual(envelope.recipients[0].notify, (b"FAILURE",))
        self.assertEqual((envelope.ret, envelope.envid, envelope.client), (b"HDRS", b"e1", "127.0.0.1"))
        with self.queue.openMessage(queueID) as f:
            data = f.read()
        self.assertRegex(data, rb"^Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n\tby relay\.example [^\r]+ with ESMTP;\r\n\t[^\r]+\r\nSubject: x\r\n\r\n\.hi\r\n$")
        self.assertNotIn(b"for <", data)

    def test_singleRecipientTrace(self):
        proto, transport = self.session()
        proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nA: b\r\n\r\nx\r\n.\r\n")
        self.flushDisk()
        [queueID] = self.queue.ids()
        with self.queue.openMessage(queueID) as f:
            self.assertIn(b"\tfor <b@example.com>;", f.read())

    def test_relayDenied(self):
        """
        A client outside the relay networks, unauthenticated, gets 554
        5.7.1 for other domains; mail for the inbound domains is accepted.
        """
        policy = RelayPolicy(domains=["inbound.example"])
        proto, transport = self.session(peer=IPv4Address("TCP", "198.51.100.1", 5000), policy=policy)
        proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<me@inbound.example>\r\n")
        self.assertEqual(
            transport.value(),
            b"250 2.1.0 Sender address accepted\r\n554 5.7.1 Relay access denied\r\n250 2.1.5 Recipient address accepted\r\n",
        )

    def test_refusedMessageNotQueued(self):
        """
        A message refused while it arrives (too big) leaves nothing
        behind.
        """
        factory = ESMTPFactory(
            deliveryFactory=QueueDeliveryFactory(self.queue), domain=b"relay.example", maxMessageSize=10, clock=Clock()
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n" + b"x" * 50 + b"\r\n.\r\n")
        self.flushDisk()
        self.assertIn(b"552 5.3.4", transport.value())
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.assertEqual(self.queue.ids(), [])

    def test_connectionLost(self):
        proto, transport = self.session()
        proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nA: b\r\n")
        proto.connectionLost(None)
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])

    def test_diskFailure(self):
        """
        If the message cannot be written, the client gets 451 4.3.0 and
        may try again; nothing is queued.
        """

        def failing(fd):
            raise OSError(28, "No space left on device")

        self.patch(self.queue, "_fsync", failing)
        proto, transport = self.session()
        proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nA: b\r\n.\r\n")
        self.flushDisk()
        self.assertTrue(transport.value().endswith(b"451 4.3.0 Could not queue the message; try again later\r\n"))
        self.assertEqual(self.queue.ids(), [])
        self.flushLoggedErrors(OSError)

    def test_ipv6AndUnixClients(self):
        for peer in (IPv6Address("TCP", "::1", 5000), UNIXAddress(None)):
            proto, transport = self.session(peer=peer)
            proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
            self.assertIn(b"250 2.1.5", transport.value())


class DomainQueuerTests(SynchronousTestCase):
    """
    twisted.mail's L{DomainQueuer}: one queued message per recipient, for
    clients allowed to relay.
    """

    def user(self, peer):
        from mailproto.smtp import User

        protocol = ESMTPFactory(delivery=None, domain=b"relay.test", clock=Clock()).buildProtocol(None)
        protocol.makeConnection(StringTransport(peerAddress=peer))
        self.addCleanup(protocol.connectionLost, None)
        return User(b"rcpt@example.com", (b"client.test", b"127.0.0.1"), protocol, b"sender@origin.test")

    def test_queuesEachRecipient(self):
        """
        A loopback client's recipient gets a message receiver that writes
        a queued message of its own.
        """
        from mailproto.testing import MemoryQueue

        class Service:
            queue = MemoryQueue()

        queuer = DomainQueuer(Service())
        makeMessage = queuer.exists(self.user(IPv4Address("TCP", "127.0.0.1", 1234)))
        message = makeMessage()
        message.lineReceived(b"Subject: hi")
        message.lineReceived(b"")
        self.successResultOf(message.eomReceived())
        [queueID] = Service.queue.ids()
        envelope = Service.queue.getEnvelope(queueID)
        self.assertEqual((envelope.sender, [r.address for r in envelope.recipients]), (b"sender@origin.test", [b"rcpt@example.com"]))
        self.assertEqual(Service.queue.messages[queueID], b"Subject: hi\r\n\r\n")

    def test_refusesOutsiders(self):
        """
        Other clients get L{SMTPBadRcpt}, unless the queuer is for an
        authenticated connection; UNIX socket clients may relay.
        """
        from mailproto.smtp import SMTPBadRcpt

        outsider = self.user(IPv4Address("TCP", "192.0.2.9", 1234))
        self.assertRaises(SMTPBadRcpt, DomainQueuer(None).exists, outsider)
        self.assertTrue(callable(DomainQueuer(None, authenticated=True).exists(outsider)))
        self.assertTrue(DomainQueuer(None).willRelay(None, self.user(UNIXAddress(None)).protocol))
