# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._writes.writeNow}, over real loopback connections.
"""

import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from mailproto._writes import writeNow


class _Writer(Protocol):
    """
    A server protocol that hands its transport to the test.
    """

    def connectionMade(self):
        self.factory.connected.callback(self)


class _Reader(Protocol):
    """
    A client protocol that keeps what it receives.
    """

    def __init__(self):
        self.received = []
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.closed.callback(b"".join(self.received))


class WriteNowTests(unittest.TestCase):
    @defer.inlineCallbacks
    def _connect(self):
        """
        @return: a L{Deferred} firing with (the server-side transport, the
            client protocol) of a loopback TCP connection.
        """
        factory = Factory.forProtocol(_Writer)
        factory.connected = defer.Deferred()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        reader = _Reader()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), reader)
        writer = yield factory.connected
        self.addCleanup(lambda: writer.transport.abortConnection() if writer.transport.connected else None)
        return writer.transport, reader

    @defer.inlineCallbacks
    def test_sentAtOnce(self):
        """
        On a plain TCP connection with nothing waiting, the octets go to the
        socket at once: nothing is left in the transport's buffer, and the
        transport does not ask the reactor to watch for writing.
        """
        transport, reader = yield self._connect()
        writeNow(transport, b"250 OK\r\n")
        self.assertEqual((transport._tempDataBuffer, transport.dataBuffer), ([], b""))
        self.assertNotIn(transport, reactor.getWriters())
        transport.loseConnection()
        received = yield reader.closed
        self.assertEqual(received, b"250 OK\r\n")

    @defer.inlineCallbacks
    def test_orderKeptBehindBufferedData(self):
        """
        Behind data that the transport still holds, the octets are buffered
        too, so that they arrive after it.
        """
        transport, reader = yield self._connect()
        transport.write(b"first\r\n")
        writeNow(transport, b"second\r\n")
        self.assertEqual(b"".join(transport._tempDataBuffer), b"first\r\nsecond\r\n")
        transport.loseConnection()
        received = yield reader.closed
        self.assertEqual(received, b"first\r\nsecond\r\n")

    @defer.inlineCallbacks
    def test_partialSendBuffersTheRest(self):
        """
        What the socket does not take at once is buffered by the transport
        and follows, in order.
        """
        transport, reader = yield self._connect()
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 16384  # 4 MiB, more than any send buffer
        writeNow(transport, data)
        self.assertTrue(transport._tempDataBuffer, "the rest is buffered")
        self.assertLess(len(b"".join(transport._tempDataBuffer)), len(data))
        writeNow(transport, b"after")
        transport.loseConnection()
        received = yield reader.closed
        self.assertEqual(received, data + b"after")

    @defer.inlineCallbacks
    def test_afterLoseConnection(self):
        """
        Once the connection is being closed, L{writeNow} leaves the octets
        to C{transport.write}, which sends them after what it holds.
        """
        transport, reader = yield self._connect()
        transport.write(b"last\r\n")
        transport.loseConnection()
        writeNow(transport, b"late\r\n")
        received = yield reader.closed
        self.assertEqual(received, b"last\r\nlate\r\n")

    @defer.inlineCallbacks
    def test_producerRegistered(self):
        """
        With a producer registered, the octets go through the transport, so
        that a pull producer is asked for more when its buffer drains.
        """
        transport, reader = yield self._connect()
        asked = []

        @implementer(IPullProducer)
        class Producer:
            def resumeProducing(self):
                asked.append(True)
                if len(asked) == 1:
                    writeNow(transport, b"chunk\r\n")
                else:
                    transport.unregisterProducer()
                    transport.loseConnection()

            def stopProducing(self):
                pass

        transport.registerProducer(Producer(), False)
        received = yield reader.closed
        self.assertEqual((received, len(asked)), (b"chunk\r\n", 2))

    def test_otherTransports(self):
        """
        Any other transport (TLS, in-memory, ...) gets a plain C{write}.
        """
        transport = StringTransport()
        writeNow(transport, b"220 ready\r\n")
        self.assertEqual(transport.value(), b"220 ready\r\n")
