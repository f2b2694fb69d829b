# -*- test-case-name: mailproto.test.test_proxy -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay behind a proxy that speaks the PROXY protocol (HAProxy's
C{send-proxy} and C{send-proxy-v2}): C{twistd mailrelay --proxy-protocol}
wraps its listeners with L{mailproto._relayd._proxy.proxyEndpoint}, and the relay
policy, the trace header and the logs must see the client the header
names, not the proxy.

  - L{HeaderReaderTests}: the header parser alone, table-driven: each
    header whole, a byte at a time, and with data after it.
  - L{ProxiedSessionTests}: the daemon's server factory behind
    L{mailproto._relayd._proxy}'s wrapper, over a L{StringTransport}, on a fake
    clock: v1 (TCP4, TCP6, UNKNOWN), v2 (TCP4, TCP6, TLVs, LOCAL, UNSPEC,
    UNIX), and headers that are missing, malformed or too slow.
  - L{ProxyHeaderTests}: what Twisted's own PROXY support
    (L{twisted.protocols.haproxy}) gets wrong and this wrapper gets right:
    no greeting before the header, headers in pieces, strict numbers and
    addresses, C{PROXY UNKNOWN}, a log line for a refused header, the
    header's time limit.
  - L{ProxyFactoryTests}: the factory and the endpoint.
  - L{HAProxyTests}: a real HAProxy in front of a real C{twistd
    mailrelay}, with Python's smtplib as the client (skipped without
    HAProxy).
"""

from __future__ import annotations

import ipaddress
import os
import smtplib
import socket

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer, providedBy
from zope.interface.verify import verifyObject

from mailproto._relayd._daemon import RelayESMTP, RelayESMTPFactory
from mailproto._relayd._proxy import (
    HEADER_TIMEOUT,
    V1_MAX_LENGTH,
    HeaderReader,
    InvalidProxyHeader,
    ProxyProtocolEndpoint,
    ProxyProtocolFactory,
    ProxyProtocolWrapper,
    proxyEndpoint,
)
from mailproto._relay import QueueDeliveryFactory, RelayPolicy
from mailproto.test.test_daemon import (
    START_DEADLINE,
    RelayProcess,
    SinkProcess,
    _ChildProcess,
    freePort,
    testIDOf,
    waitUntil,
)
from mailproto.testing import MemoryQueue
from mailproto.test._peers import missing, which

# The proxy's own connection to the relay, as the relay's transport has it.
PROXY_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
RELAY_HOST = IPv4Address("TCP", "127.0.0.1", 25)

GREETING = b"220 relay.example NO UCE NO UBE NO RELAY PROBES ESMTP\r\n"

# The 12 octets every PROXY protocol v2 header starts with (section 2.2 of
# the specification: "\r\n\r\n\0\r\nQUIT\n").
V2_SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"

# v2, PROXY command, AF_INET + STREAM: from 192.0.2.7 port 5555 to
# 127.0.0.1 port 25.
V2_TCP4 = (
    V2_SIGNATURE
    + b"\x21"  # version 2 (high nibble), command PROXY (low nibble)
    + b"\x11"  # family AF_INET (high nibble), protocol STREAM (low nibble)
    + b"\x00\x0c"  # 12 octets of addresses follow (network order)
    + b"\xc0\x00\x02\x07"  # source address 192.0.2.7
    + b"\x7f\x00\x00\x01"  # destination address 127.0.0.1
    + b"\x15\xb3"  # source port 5555
    + b"\x00\x19"  # destination port 25
)

# v2, LOCAL command, AF_UNSPEC, no addresses: what HAProxy sends on its
# health checks (check-send-proxy with send-proxy-v2).
V2_LOCAL = V2_SIGNATURE + b"\x20" + b"\x00" + b"\x00\x00"

# v2, PROXY command, AF_UNIX + STREAM: two 108-octet socket paths.
V2_UNIX = (
    V2_SIGNATURE
    + b"\x21\x31\x00\xd8"
    + b"/run/client.sock".ljust(108, b"\x00")
    + b"/run/relay.sock".ljust(108, b"\x00")
)

V1_TCP4 = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n"


def v2Header(source: str, sourcePort: int, destination: str, destinationPort: int, tlvs: bytes = b"") -> bytes:
    """
    @return: a PROXY protocol v2 header with the PROXY command, for TCP over
        IPv4 or IPv6 (whichever C{source} is), followed by C{tlvs}.
    """
    if ":" in source:
        family, addressFamily = b"\x21", socket.AF_INET6
    else:
        family, addressFamily = b"\x11", socket.AF_INET
    body = (
        socket.inet_pton(addressFamily, source)
        + socket.inet_pton(addressFamily, destination)
        + sourcePort.to_bytes(2, "big")
        + destinationPort.to_bytes(2, "big")
        + tlvs
    )
    return V2_SIGNATURE + b"\x21" + family + len(body).to_bytes(2, "big") + body


def tcp4(host: str, port: int) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def tcp6(host: str, port: int) -> IPv6Address:
    return IPv6Address("TCP", host, port)


# Valid headers, and the source and destination they give (None: the
# connection's own addresses count).
VALID = [
    (V1_TCP4, (tcp4("192.0.2.7", 5555), tcp4("127.0.0.1", 25))),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", (tcp4("0.0.0.0", 0), tcp4("255.255.255.255", 65535))),
    (b"PROXY TCP6 2001:db8::7 ::1 5555 25\r\n", (tcp6("2001:db8::7", 5555), tcp6("::1", 25))),
    # Upper case, and groups with leading zeros, are read; the canonical
    # form is presented.
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:0007 0::1 1 2\r\n", (tcp6("2001:db8::7", 1), tcp6("::1", 2))),
    (b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n", (tcp6(str(ipaddress.IPv6Address("::ffff:192.0.2.7")), 1), tcp6("::1", 2))),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    (b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n", None),  # 107 octets
    (V2_TCP4, (tcp4("192.0.2.7", 5555), tcp4("127.0.0.1", 25))),
    (v2Header("2001:db8::7", 5555, "::1", 25), (tcp6("2001:db8::7", 5555), tcp6("::1", 25))),
    (v2Header("192.0.2.7", 5555, "127.0.0.1", 25, tlvs=b"\x04\x00\x03abc"), (tcp4("192.0.2.7", 5555), tcp4("127.0.0.1", 25))),
    (V2_LOCAL, None),
    # LOCAL: the family and the addresses are ignored, but skipped.
    (V2_SIGNATURE + b"\x20\x11\x00\x0c" + V2_TCP4[16:], None),
    (V2_SIGNATURE + b"\x20\xff\x00\x03abc", None),
    (V2_SIGNATURE + b"\x21\x00\x00\x00", None),  # AF_UNSPEC
    (V2_SIGNATURE + b"\x21\x00\x00\x05hello", None),
    (V2_UNIX, None),
    # The longest v2 header: 65,535 octets of addresses and TLVs.
    (
        V2_SIGNATURE + b"\x21\x11\xff\xff" + V2_TCP4[16:] + b"\x04\xff\xf0" + b"\x00" * 0xFFF0,
        (tcp4("192.0.2.7", 5555), tcp4("127.0.0.1", 25)),
    ),
]

# Input that is not a valid header, and whether it is refused before it
# is complete (a byte at a time, at the octet where it goes wrong).
INVALID = [
    b"EHLO client.example\r\n",
    b"QUIT\r\n",
    b"GET / HTTP/1.1\r\nHost: relay.example\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,  # a TLS ClientHello
    b"\r\n",
    b"PROXY\r\n",
    b"PROXY  TCP4 192.0.2.7 127.0.0.1 5555 25\r\n",
    b"proxy tcp4 192.0.2.7 127.0.0.1 5555 25\r\n",
    b"PROXY TCP5 192.0.2.7 127.0.0.1 5555 25\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25 \r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555  25\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\n",  # bare LF
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\rX\r\n",
    b"PROXY UNKNOWN\n",
    b"PROXY TCP4 " + b"1" * 120,  # no end of line in 107 octets
    b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n",  # 108 octets
    # Numbers and addresses.
    b"PROXY TCP4 192.0.2.7 127.0.0.1 port 25\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 \r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 25\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 25\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 025\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 +5555 25\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 -1 25\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 \xd9\xa5 25\r\n",  # an Arabic-Indic digit
    b"PROXY TCP4 192.0.2.\xff 127.0.0.1 5555 25\r\n",
    b"PROXY TCP4 192.0.2.07 127.0.0.1 5555 25\r\n",
    b"PROXY TCP4 192.0.2.256 127.0.0.1 5555 25\r\n",
    b"PROXY TCP4 192.0.2 127.0.0.1 5555 25\r\n",
    b"PROXY TCP4 relay.example 127.0.0.1 5555 25\r\n",
    b"PROXY TCP4 2001:db8::7 127.0.0.1 5555 25\r\n",
    b"PROXY TCP4 192.0.2.7 ::1 5555 25\r\n",
    b"PROXY TCP6 192.0.2.7 ::1 5555 25\r\n",
    b"PROXY TCP6 2001:db8::7 127.0.0.1 5555 25\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 5555 25\r\n",
    b"PROXY TCP6 2001:db8:::7 ::1 5555 25\r\n",
    b"PROXY TCP6 [2001:db8::7] ::1 5555 25\r\n",
    b"PROXY TCP4 192.0.2.7\nX-Injected:yes 127.0.0.1 5555 25\r\n",
    b"PROXY TCP4 192.0.2.7(x)\r 127.0.0.1 5555 25\r\n",
    b"PROXY TCP6 192.0.2.\xc3\xa9 ::1 5555 25\r\n",
    # v2.
    V2_SIGNATURE[:-1] + b"\x0b\x21\x11\x00\x0c" + V2_TCP4[16:],
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + V2_TCP4[16:],  # version 1
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + V2_TCP4[16:],  # version 3
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + V2_TCP4[16:],  # command 2
    V2_SIGNATURE + b"\x2f\x11\x00\x0c" + V2_TCP4[16:],  # command 15
    V2_SIGNATURE + b"\x21\x41\x00\x0c" + V2_TCP4[16:],  # family 4
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + V2_TCP4[16:],  # UDP over IPv4
    V2_SIGNATURE + b"\x21\x22\x00\x24" + b"\x00" * 36,  # UDP over IPv6
    V2_SIGNATURE + b"\x21\x10\x00\x0c" + V2_TCP4[16:],  # IPv4, unspecified protocol
    V2_SIGNATURE + b"\x21\x13\x00\x0c" + V2_TCP4[16:],  # protocol 3
    V2_SIGNATURE + b"\x21\x03\x00\x00",  # AF_UNSPEC, protocol 3
    V2_SIGNATURE + b"\x21\x11\x00\x04" + V2_TCP4[16:20],  # addresses cut short
    V2_SIGNATURE + b"\x21\x21\x00\x0c" + V2_TCP4[16:],  # IPv6 in 12 octets
    V2_SIGNATURE + b"\x21\x31\x00\x0c" + V2_TCP4[16:],  # UNIX in 12 octets
]


@implementer(IStreamServerEndpoint)
class _ListeningEndpoint:
    """
    An endpoint that keeps the factory it is asked to listen with.
    """

    factory = None

    def listen(self, factory):
        self.factory = factory
        return defer.succeed(self)


class _ProxiedSession:
    """
    One connection from a proxy to the relay's server, through the
    factory L{proxyEndpoint} listens with, over a L{StringTransport}.

    @ivar queue: the L{MemoryQueue} the server writes accepted mail into.
    @ivar clock: the server's clock, and the header's.
    @ivar factory: the relay's server factory.
    @ivar wrappingFactory: the L{ProxyProtocolFactory} around it.
    @ivar wrapper: the PROXY protocol wrapper (the server's transport).
    @ivar server: the relay's ESMTP server.
    @ivar transport: the proxy's connection.
    @ivar greeting: what was written when the connection was made.
    """

    def __init__(self, networks=("192.0.2.0/24",), domains=(), peer=PROXY_PEER, host=RELAY_HOST) -> None:
        self.queue = MemoryQueue()
        self.clock = Clock()
        # As mailproto._relayd._daemon.makeService builds it, on a fake clock.
        self.factory = RelayESMTPFactory(
            None,
            deliveryFactory=QueueDeliveryFactory(self.queue, RelayPolicy(networks=list(networks), domains=domains), clock=self.clock),
            domain=b"relay.example",
            clock=self.clock,
        )
        listening = _ListeningEndpoint()
        proxyEndpoint(listening, clock=self.clock).listen(self.factory)
        self.wrappingFactory = listening.factory
        self.wrapper = self.wrappingFactory.buildProtocol(peer)
        self.server = self.wrapper.wrappedProtocol
        self.transport = StringTransport(hostAddress=host, peerAddress=peer)
        self.wrapper.makeConnection(self.transport)
        self.greeting = self.transport.value()
        self.transport.clear()

    def send(self, data: bytes) -> bytes:
        """
        Give the connection C{data} in one piece.

        @return: what the server wrote in reply.
        """
        self.wrapper.dataReceived(data)
        written = self.transport.value()
        self.transport.clear()
        return written

    def lose(self) -> None:
        """
        The connection is closed.
        """
        self.wrapper.connectionLost(Failure(ConnectionDone()))

    def replies(self, written: bytes) -> list[bytes]:
        """
        @return: the last line of each reply in C{written}.
        """
        return [line for line in written.split(b"\r\n") if line[3:4] == b" "]


SESSION = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<sender@example.org>\r\n"
    b"RCPT TO:<rcpt@example.com>\r\n"
)
MESSAGE = b"DATA\r\nSubject: proxied\r\n\r\nHello.\r\n.\r\n"


class HeaderReaderTests(SynchronousTestCase):
    """
    L{HeaderReader} reads a v1 or v2 header from input in any pieces.
    """

    def feedWhole(self, data: bytes):
        return HeaderReader().feed(data)

    def feedBytes(self, data: bytes):
        reader = HeaderReader()
        for i in range(len(data)):
            result = reader.feed(data[i : i + 1])
            if result is not None:
                return result[0], result[1] + data[i + 1 :]
        return None

    def test_valid(self):
        """
        Each valid header gives its addresses, whole, a byte at a time
        (with nothing left over), and with data after it (left over).
        """
        for header, addresses in VALID:
            self.assertEqual(self.feedWhole(header), (addresses, b""), header[:120])
            self.assertEqual(self.feedBytes(header), (addresses, b""), header[:120])
            self.assertEqual(self.feedWhole(header + b"EHLO x\r\n"), (addresses, b"EHLO x\r\n"), header[:120])
            reader = HeaderReader()
            self.assertIsNone(reader.feed(header[:-1]), header[:120])
            self.assertEqual(reader.feed(header[-1:] + b"\r\n.\r\n"), (addresses, b"\r\n.\r\n"), header[:120])

    def test_invalid(self):
        """
        Invalid input is refused, whole and a byte at a time, with a
        reason; never with any other exception.
        """
        for data in INVALID:
            e = self.assertRaises(InvalidProxyHeader, self.feedWhole, data + b"EHLO client.example\r\n")
            self.assertIsInstance(e.reason, str)
            self.assertRaises(InvalidProxyHeader, self.feedBytes, data + b"EHLO client.example\r\n")

    def test_refusedEarly(self):
        """
        Input is refused as soon as it cannot be the start of a valid
        header: at the first octet that differs from C{PROXY } or the v2
        signature, at the 107th octet of a v1 header without its end, at
        the 16th of a v2 header whose version, command, family or length
        is wrong, before its addresses come.
        """
        for data, at in [
            (b"EHLO", 1),
            (b"PROXz", 5),
            (b"PROXY\r\n", 6),
            (V2_SIGNATURE[:5] + b"x", 6),
            (V2_SIGNATURE + b"\x11\x11\x00\x0c", 16),
            (V2_SIGNATURE + b"\x22\x11\x00\x0c", 16),
            (V2_SIGNATURE + b"\x21\x12\x00\x0c", 16),
            (V2_SIGNATURE + b"\x21\x11\x00\x04", 16),
            (V2_SIGNATURE + b"\x21\x31\x00\xd7", 16),
            (b"PROXY TCP4 " + b"1" * 200, V1_MAX_LENGTH),
        ]:
            reader = HeaderReader()
            for i in range(at - 1):
                self.assertIsNone(reader.feed(data[i : i + 1]), (data, i))
            self.assertRaises(InvalidProxyHeader, reader.feed, data[at - 1 : at])

    def test_bounded(self):
        """
        No more than a whole header is ever kept: a v2 header announcing
        65,535 octets is read when they have come, and what follows is
        left over.
        """
        header = V2_SIGNATURE + b"\x21\x00\xff\xff"
        reader = HeaderReader()
        self.assertIsNone(reader.feed(header + b"x" * 0xFFFE))
        self.assertEqual(reader.feed(b"xyz"), (None, b"yz"))


class ProxiedSessionTests(SynchronousTestCase):
    """
    The relay's server behind mailproto's PROXY protocol wrapper: the
    header names the client, and the relay judges that client.
    """

    def relayedThrough(self, header: bytes, networks, domains=()) -> tuple[_ProxiedSession, list[bytes]]:
        """
        A session that sends C{header}, then EHLO, MAIL FROM and RCPT TO a
        foreign domain, all in one piece.

        @return: the session and the last line of every reply after the
            greeting.
        """
        session = _ProxiedSession(networks=networks, domains=domains)
        self.assertEqual(session.greeting, b"")
        written = session.send(header + SESSION)
        self.assertTrue(written.startswith(GREETING), written)
        replies = session.replies(written[len(GREETING) :])
        self.assertEqual(len(replies), 3, replies)
        self.assertEqual(replies[0][:4], b"250 ", replies)
        self.assertEqual(replies[1], b"250 2.1.0 Sender address accepted")
        return session, replies

    def assertQueuedFrom(self, session: _ProxiedSession, client: str) -> None:
        """
        The message is accepted and queued with C{client} in its envelope
        and its C{Received} header.
        """
        reply = session.replies(session.send(MESSAGE))[-1]
        [queueID] = session.queue.ids()
        self.assertEqual(reply, b"250 2.0.0 Ok: queued as " + queueID.encode())
        self.assertEqual(session.queue.getEnvelope(queueID).client, client)
        literal = ("IPv6:" + client if ":" in client else client).encode("ascii")
        data = session.queue.messages[queueID]
        self.assertTrue(
            data.startswith(b"Received: from client.example ([" + literal + b"])\r\n\tby relay.example "), data[:200]
        )
        self.assertTrue(data.endswith(b"\r\nSubject: proxied\r\n\r\nHello.\r\n"), data)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_listensWithWrappingFactory(self):
        """
        L{proxyEndpoint} listens with a L{ProxyProtocolFactory} that wraps
        the relay's, on the clock it is given: each connection's protocol
        is the relay's server, whose transport, once the header is read,
        is the wrapper.
        """
        session = _ProxiedSession()
        self.assertIsInstance(session.wrappingFactory, ProxyProtocolFactory)
        self.assertIs(session.wrappingFactory.wrappedFactory, session.factory)
        self.assertIs(session.wrappingFactory.clock, session.clock)
        self.assertEqual(session.wrappingFactory.timeout, HEADER_TIMEOUT)
        self.assertIsInstance(session.wrapper, ProxyProtocolWrapper)
        self.assertIsInstance(session.server, RelayESMTP)
        self.assertIsNone(session.server.transport)
        self.assertIs(session.wrapper.transport, session.transport)
        session.send(V1_TCP4)
        self.assertIs(session.server.transport, session.wrapper)

    def test_v1TCP4(self):
        """
        A v1 C{TCP4} header: the relay judges the client it names
        (C{192.0.2.7}, in the relay networks) and not the proxy
        (C{127.0.0.1}, which is not), greets it by that address, and
        records it in the envelope and the C{Received} header.
        """
        session, replies = self.relayedThrough(V1_TCP4, ["192.0.2.0/24"])
        self.assertEqual(replies[2], b"250 2.1.5 Recipient address accepted")
        self.assertEqual(session.wrapper.getPeer(), IPv4Address("TCP", "192.0.2.7", 5555))
        self.assertEqual(session.wrapper.getHost(), IPv4Address("TCP", "127.0.0.1", 25))
        self.assertEqual(session.server._helo, (b"client.example", b"192.0.2.7"))
        self.assertQueuedFrom(session, "192.0.2.7")

    def test_v1TCP4NotTheProxy(self):
        """
        The proxy's own address does not let its clients relay: with the
        relay networks being loopback (the relay's default) and the proxy
        on loopback, a client from elsewhere gets C{554 5.7.1}.
        """
        header = b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 25\r\n"
        session, replies = self.relayedThrough(header, ["127.0.0.0/8", "::1/128"])
        self.assertEqual(replies[2], b"554 5.7.1 Relay access denied")
        self.assertEqual(session.server._helo, (b"client.example", b"198.51.100.7"))
        # Mail for the relay's own domains is still accepted from anyone.
        session, replies = self.relayedThrough(header, ["127.0.0.0/8"], domains=["example.com"])
        self.assertEqual(replies[2], b"250 2.1.5 Recipient address accepted")
        self.assertQueuedFrom(session, "198.51.100.7")

    def test_v1TCP6(self):
        """
        A v1 C{TCP6} header: the IPv6 client is judged, and recorded as an
        IPv6 address literal, in its canonical form.
        """
        header = b"PROXY TCP6 2001:DB8:0::0007 ::1 5555 25\r\n"
        session, replies = self.relayedThrough(header, ["2001:db8::/48"])
        self.assertEqual(replies[2], b"250 2.1.5 Recipient address accepted")
        self.assertEqual(session.wrapper.getPeer(), IPv6Address("TCP", "2001:db8::7", 5555))
        self.assertEqual(session.wrapper.getHost(), IPv6Address("TCP", "::1", 25))
        self.assertQueuedFrom(session, "2001:db8::7")
        session, replies = self.relayedThrough(header, ["2001:db8:1::/48", "127.0.0.0/8", "::1/128"])
        self.assertEqual(replies[2], b"554 5.7.1 Relay access denied")

    def test_v1Unknown(self):
        """
        A v1 C{UNKNOWN} header, short or with addresses (the proxy could
        not tell who the client is): as the specification says, anything
        after C{UNKNOWN} is ignored and the connection's own addresses are
        used, so the client is judged as the proxy.
        """
        for header in [b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", b"PROXY UNKNOWN\r\n"]:
            session, replies = self.relayedThrough(header, ["192.0.2.0/24", "ffff::/16"])
            self.assertEqual(replies[2], b"554 5.7.1 Relay access denied")
            self.assertEqual(session.server._helo, (b"client.example", b"127.0.0.1"))
            self.assertEqual(session.wrapper.getPeer(), PROXY_PEER)
            self.assertEqual(session.wrapper.getHost(), RELAY_HOST)
            session, replies = self.relayedThrough(header, ["127.0.0.1/32"])
            self.assertEqual(replies[2], b"250 2.1.5 Recipient address accepted")
            self.assertQueuedFrom(session, "127.0.0.1")

    def test_v2TCP4(self):
        """
        A v2 header with the PROXY command for TCP over IPv4, built octet
        by octet: the relay judges the client it names.
        """
        self.assertEqual(len(V2_TCP4), 28)
        self.assertEqual(V2_TCP4, v2Header("192.0.2.7", 5555, "127.0.0.1", 25))
        session, replies = self.relayedThrough(V2_TCP4, ["192.0.2.0/24"])
        self.assertEqual(replies[2], b"250 2.1.5 Recipient address accepted")
        self.assertEqual(session.wrapper.getPeer(), IPv4Address("TCP", "192.0.2.7", 5555))
        self.assertEqual(session.wrapper.getHost(), IPv4Address("TCP", "127.0.0.1", 25))
        self.assertQueuedFrom(session, "192.0.2.7")
        session, replies = self.relayedThrough(V2_TCP4, ["127.0.0.0/8"])
        self.assertEqual(replies[2], b"554 5.7.1 Relay access denied")

    def test_v2TCP6(self):
        """
        A v2 header for TCP over IPv6 (family C{0x21}, 36 octets of
        addresses): the address is presented in its canonical form.
        """
        header = v2Header("2001:db8::7", 5555, "::1", 25)
        self.assertEqual(header[12:16], b"\x21\x21\x00\x24")
        session, replies = self.relayedThrough(header, ["2001:db8::/32"])
        self.assertEqual(replies[2], b"250 2.1.5 Recipient address accepted")
        self.assertEqual(session.wrapper.getPeer(), IPv6Address("TCP", "2001:db8::7", 5555))
        self.assertEqual(session.wrapper.getHost(), IPv6Address("TCP", "::1", 25))
        self.assertQueuedFrom(session, "2001:db8::7")

    def test_v2TLVs(self):
        """
        Type-length-value fields after the addresses (counted in the
        header's length) are skipped: the SMTP session starts right after
        them.
        """
        noop = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP, 3 octets
        authority = b"\x02\x00\x0crelay.test\x00\x00"  # PP2_TYPE_AUTHORITY
        header = v2Header("192.0.2.7", 5555, "127.0.0.1", 25, tlvs=noop + authority)
        self.assertEqual(header[14:16], b"\x00\x21")
        session, replies = self.relayedThrough(header, ["192.0.2.0/24"])
        self.assertEqual(replies[2], b"250 2.1.5 Recipient address accepted")
        self.assertQueuedFrom(session, "192.0.2.7")

    def test_v2LocalHealthCheck(self):
        """
        A v2 LOCAL header alone, then the connection closed, as in
        HAProxy's health checks: the greeting and nothing else is written,
        nothing fails, nothing is logged as an error.
        """
        session = _ProxiedSession()
        self.assertEqual(session.send(V2_LOCAL), GREETING)
        self.assertFalse(session.transport.disconnecting)
        with capturedLogs() as events:
            session.lose()
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])
        self.assertEqual(session.queue.ids(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_connectOnlyHealthCheck(self):
        """
        A connection closed before it sends anything (a health check that
        only connects) is not seen by the server, and logs nothing.
        """
        session = _ProxiedSession()
        with capturedLogs() as events:
            session.lose()
        self.assertEqual(list(events), [])
        self.assertIsNone(session.server.transport)
        self.assertEqual(session.factory.sessions, set())
        self.assertEqual(session.wrappingFactory.protocols, {})
        self.assertEqual(session.clock.getDelayedCalls(), [])

    def test_v2LocalSession(self):
        """
        After a v2 LOCAL header the connection's own addresses count: an
        SMTP session is judged as coming from the proxy.
        """
        session, replies = self.relayedThrough(V2_LOCAL, ["192.0.2.0/24"])
        self.assertEqual(replies[2], b"554 5.7.1 Relay access denied")
        self.assertEqual(session.wrapper.getPeer(), PROXY_PEER)
        session, replies = self.relayedThrough(V2_LOCAL, ["127.0.0.1/32"])
        self.assertEqual(replies[2], b"250 2.1.5 Recipient address accepted")
        self.assertQueuedFrom(session, "127.0.0.1")

    def test_v2Unspecified(self):
        """
        A v2 PROXY header with family AF_UNSPEC: the connection's own
        addresses count.
        """
        session, replies = self.relayedThrough(V2_SIGNATURE + b"\x21\x00\x00\x00", ["192.0.2.0/24"])
        self.assertEqual(replies[2], b"554 5.7.1 Relay access denied")
        self.assertEqual(session.wrapper.getPeer(), PROXY_PEER)

    def test_v2UnixNotPresented(self):
        """
        A v2 header for a UNIX socket is taken as C{UNKNOWN}: the peer is
        the connection's own (a TCP address), never a UNIX address, which
        the relay's policy would let relay.
        """
        session, replies = self.relayedThrough(V2_UNIX, ["192.0.2.0/24"])
        self.assertEqual(replies[2], b"554 5.7.1 Relay access denied")
        self.assertEqual(session.wrapper.getPeer(), PROXY_PEER)
        self.assertEqual(session.wrapper.getHost(), RELAY_HOST)
        self.assertNotIsInstance(session.wrapper.getPeer(), UNIXAddress)
        self.assertEqual(session.server._helo, (b"client.example", b"127.0.0.1"))

    def test_headerAlone(self):
        """
        The header may come alone, the SMTP commands later: the greeting
        comes with the header.
        """
        session = _ProxiedSession()
        self.assertEqual(session.send(V1_TCP4), GREETING)
        written = session.send(SESSION)
        self.assertEqual(session.replies(written)[-1], b"250 2.1.5 Recipient address accepted")
        self.assertIn(b"250-relay.example Hello 192.0.2.7, nice to meet you\r\n", written)

    def test_missingOrGarbageHeader(self):
        """
        Input that does not start with a well-formed PROXY header (a
        client straight to the port, another protocol, a v1 or v2 header
        that is wrong) makes the wrapper close the connection: nothing
        written, not even a greeting; nothing passed on to the server,
        which is never connected; nothing queued; one line logged and no
        error.
        """
        for data in INVALID:
            session = _ProxiedSession(networks=["0.0.0.0/0", "::/0"])
            self.assertEqual(session.greeting, b"")
            with capturedLogs() as events:
                self.assertEqual(session.send(data + SESSION), b"", data)
            self.assertTrue(session.transport.disconnecting, data)
            self.assertEqual(len(events), 1, data)
            # What comes before the connection is closed is ignored.
            self.assertEqual(session.send(b"EHLO client.example\r\nNOOP\r\n"), b"", data)
            self.assertIsNone(session.server.transport, data)
            self.assertEqual(session.factory.sessions, set(), data)
            session.lose()
            self.assertEqual(session.queue.ids(), [], data)
            self.assertEqual(session.clock.getDelayedCalls(), [], data)
            self.assertEqual(self.flushLoggedErrors(), [], data)

    def test_headerNeverEnds(self):
        """
        A header that never ends (a v2 header announcing more octets than
        come, a v1 line without its end, nothing at all) does not hold the
        connection: the header's time limit, counted from the connection,
        closes it, without a byte written.
        """
        for partial in [V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\x00" * 20, b"PROXY TCP4 192.0.2.7 127.0.0.1 5555", b""]:
            session = _ProxiedSession()
            session.clock.advance(1)
            self.assertEqual(session.send(partial), b"")
            self.assertFalse(session.transport.disconnecting)
            session.clock.advance(HEADER_TIMEOUT - 2)
            self.assertFalse(session.transport.disconnecting)
            with capturedLogs() as events:
                session.clock.advance(1)
            self.assertTrue(session.transport.disconnecting)
            self.assertEqual(session.transport.value(), b"")
            self.assertEqual(
                [formatEvent(e) for e in events],
                ["PROXY protocol: closing the connection from 127.0.0.1: no complete header in 10 seconds"],
            )
            session.lose()
            self.assertIsNone(session.server.transport)
            self.assertEqual(session.clock.getDelayedCalls(), [])
            self.assertEqual(self.flushLoggedErrors(), [])

    def test_logsNameTheClient(self):
        """
        The server's log lines about a client name the client in the
        header, not the proxy.
        """
        session, replies = self.relayedThrough(V1_TCP4, ["192.0.2.0/24"])
        with capturedLogs() as events:
            session.clock.advance(session.server.timeout)
        self.assertEqual([formatEvent(e) for e in events], ["SMTP client 192.0.2.7 timed out"])
        session, replies = self.relayedThrough(V2_TCP4, ["192.0.2.0/24"])
        with capturedLogs() as events:
            session.send(b"XYZZY\r\n" * (session.server.maxErrors + 1))
        self.assertEqual([formatEvent(e) for e in events], ["SMTP client 192.0.2.7 made too many errors"])

    def test_notAnAddress(self):
        """
        A v1 header cannot put a line break or anything else than an IP
        address into a C{Received} header or a log line: such a header is
        refused, and the server never sees the connection.
        """
        for header in [
            b"PROXY TCP4 192.0.2.7\nX-Injected:yes 127.0.0.1 5555 25\r\n",
            b"PROXY TCP4 192.0.2.7(x)\r 127.0.0.1 5555 25\r\n",
            b"PROXY TCP4 relay.example 127.0.0.1 5555 25\r\n",
            b"PROXY TCP6 192.0.2.\xc3\xa9 ::1 5555 25\r\n",
        ]:
            session = _ProxiedSession(networks=["0.0.0.0/0", "::/0"])
            self.assertEqual(session.send(header + SESSION + b"RCPT TO:<rcpt@example.net>\r\n" + MESSAGE), b"", header)
            self.assertTrue(session.transport.disconnecting, header)
            self.assertIsNone(session.server.transport, header)
            self.assertEqual(session.queue.ids(), [], header)
            self.assertEqual(self.flushLoggedErrors(), [])


class ProxyHeaderTests(SynchronousTestCase):
    """
    What Twisted's PROXY protocol wrapper (L{twisted.protocols.haproxy},
    the same in Twisted 23.10 and 26.10) gets wrong, and mailproto's gets
    right.
    """

    def test_fragmentedV1Header(self):
        """
        A v1 header that arrives in pieces (TCP does not keep write
        boundaries) is read whole.
        """
        session = _ProxiedSession()
        for i in range(len(V1_TCP4) - 1):
            self.assertEqual(session.send(V1_TCP4[i : i + 1]), b"")
        self.assertEqual(session.send(V1_TCP4[-1:]), GREETING)
        self.assertFalse(session.transport.disconnecting)
        self.assertEqual(session.wrapper.getPeer(), IPv4Address("TCP", "192.0.2.7", 5555))

    def test_fragmentedV2Header(self):
        """
        A v2 header that arrives in pieces is read whole.
        """
        session = _ProxiedSession()
        self.assertEqual(session.send(V2_TCP4[:10]), b"")
        self.assertEqual(session.send(V2_TCP4[10:]), GREETING)
        self.assertFalse(session.transport.disconnecting)
        self.assertEqual(session.wrapper.getPeer(), IPv4Address("TCP", "192.0.2.7", 5555))
        session = _ProxiedSession()
        for i in range(len(V2_TCP4) - 1):
            self.assertEqual(session.send(V2_TCP4[i : i + 1]), b"")
        self.assertEqual(session.send(V2_TCP4[-1:]), GREETING)

    def test_sessionByteByByte(self):
        """
        A whole session a byte at a time, the header and the commands:
        the same replies as in one piece.
        """
        session = _ProxiedSession()
        written = b"".join(session.send(bytes([octet])) for octet in V2_TCP4 + SESSION + MESSAGE)
        self.assertTrue(written.startswith(GREETING), written)
        [queueID] = session.queue.ids()
        self.assertEqual(
            session.replies(written)[-3:],
            [b"250 2.1.5 Recipient address accepted", b"354 Continue", b"250 2.0.0 Ok: queued as " + queueID.encode()],
        )
        self.assertEqual(session.queue.getEnvelope(queueID).client, "192.0.2.7")

    def test_v1UnknownShort(self):
        """
        The short form of a v1 C{UNKNOWN} header, C{PROXY UNKNOWN\\r\\n}
        (section 2.1 of the specification: "the receiver must ignore
        anything presented before the CRLF is found"), is accepted, and
        the connection's own addresses count.
        """
        session = _ProxiedSession(networks=["127.0.0.1/32"])
        written = session.send(b"PROXY UNKNOWN\r\n" + SESSION)
        self.assertEqual(session.replies(written)[-1], b"250 2.1.5 Recipient address accepted")

    def test_badV1Numbers(self):
        """
        A v1 header whose ports are not numbers, or whose addresses are not
        UTF-8, is refused like any other malformed header: the connection
        is closed, nothing raised.
        """
        for header in [
            b"PROXY TCP4 192.0.2.7 127.0.0.1 port 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 \r\n",
            b"PROXY TCP4 192.0.2.\xff 127.0.0.1 5555 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 \xd9\xa5\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 2_5\r\n",
        ]:
            session = _ProxiedSession()
            self.assertEqual(session.send(header + SESSION), b"", header)
            self.assertTrue(session.transport.disconnecting, header)

    def test_v1AddressesChecked(self):
        """
        A v1 header whose addresses are not addresses of its family, or
        whose ports are out of range or written other than plainly, is
        refused.
        """
        for header in [
            b"PROXY TCP4 relay.example 127.0.0.1 5555 25\r\n",
            b"PROXY TCP4 2001:db8::7 127.0.0.1 5555 25\r\n",
            b"PROXY TCP6 192.0.2.7 ::1 5555 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 +5555 25\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 05555 25\r\n",
            b"PROXY TCP4 192.0.2.007 127.0.0.1 5555 25\r\n",
            b"PROXY TCP6 fe80::7%eth0 ::1 5555 25\r\n",
        ]:
            session = _ProxiedSession()
            self.assertEqual(session.send(header + SESSION), b"", header)
            self.assertTrue(session.transport.disconnecting, header)

    def test_noGreetingBeforeHeader(self):
        """
        The server speaks only to connections that sent a valid header: a
        client straight to the port gets no greeting, and the server sees
        the connection only once it knows who the client is.
        """
        session = _ProxiedSession()
        self.assertEqual(session.greeting, b"")
        self.assertIsNone(session.server.transport)
        self.assertEqual(session.factory.sessions, set())
        self.assertEqual(session.send(V1_TCP4), GREETING)
        self.assertEqual(session.factory.sessions, {session.server})
        self.assertEqual(session.server._helo, (None, b"192.0.2.7"))

    def test_logLineOnBadHeader(self):
        """
        A refused header is logged in one line, at level C{info}, naming
        the connection's own peer and the reason, without a failure.
        """
        session = _ProxiedSession(peer=IPv4Address("TCP", "203.0.113.9", 40000))
        with capturedLogs() as events:
            session.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 port 25\r\n")
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertIsNone(event.get("log_failure"))
        self.assertEqual(event["peer"], "203.0.113.9")
        self.assertEqual(
            formatEvent(event), "PROXY protocol: closing the connection from 203.0.113.9: bad source port in a v1 header"
        )
        session = _ProxiedSession(peer=IPv6Address("TCP", "2001:db8::9", 40000))
        with capturedLogs() as events:
            session.send(b"EHLO client.example\r\n")
        self.assertEqual(
            [formatEvent(e) for e in events], ["PROXY protocol: closing the connection from 2001:db8::9: not a PROXY protocol header"]
        )

    def test_headerTimeout(self):
        """
        The header has 10 seconds (the factory's C{timeout}) on the clock
        the factory is given; once it is read, the time limit is over and
        only the server's own idle timeout counts.
        """
        session = _ProxiedSession()
        session.clock.advance(HEADER_TIMEOUT - 1)
        self.assertEqual(session.send(V1_TCP4), GREETING)
        session.clock.advance(1)
        self.assertFalse(session.transport.disconnecting)
        self.assertEqual(session.send(b"NOOP\r\n"), b"250 OK\r\n")
        session = _ProxiedSession()
        with capturedLogs() as events:
            session.clock.advance(HEADER_TIMEOUT)
        self.assertTrue(session.transport.disconnecting)
        self.assertEqual(len(events), 1)
        self.assertEqual(session.transport.value(), b"")

    def test_headerTimeoutCancelled(self):
        """
        A connection lost before its header is complete leaves no timer
        behind, and the server is not told about it.
        """
        session = _ProxiedSession()
        session.send(V1_TCP4[:10])
        session.lose()
        self.assertEqual(session.clock.getDelayedCalls(), [])
        self.assertIsNone(session.server.transport)
        self.assertEqual(session.wrappingFactory.protocols, {})


class _Closer(Protocol):
    """
    A protocol that closes its connection as soon as it is made, and
    keeps what it receives.
    """

    def connectionMade(self):
        self.received = []
        self.transport.loseConnection()

    def dataReceived(self, data):
        self.received.append(data)


class ProxyFactoryTests(SynchronousTestCase):
    """
    L{ProxyProtocolFactory} and L{proxyEndpoint}.
    """

    def test_endpoint(self):
        """
        L{proxyEndpoint} is an L{IStreamServerEndpoint} that listens on
        the endpoint it wraps with a L{ProxyProtocolFactory} around the
        factory it is given, with the clock and time limit it was given;
        it returns what the wrapped endpoint returns.
        """
        listening = _ListeningEndpoint()
        clock = Clock()
        factory = Factory.forProtocol(Protocol)
        endpoint = proxyEndpoint(listening, clock=clock, timeout=3)
        self.assertIsInstance(endpoint, ProxyProtocolEndpoint)
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))
        self.assertIs(self.successResultOf(endpoint.listen(factory)), listening)
        self.assertIsInstance(listening.factory, ProxyProtocolFactory)
        self.assertIs(listening.factory.wrappedFactory, factory)
        self.assertIs(listening.factory.clock, clock)
        self.assertEqual(listening.factory.timeout, 3)

    def test_defaultClock(self):
        """
        Without a clock, the factory uses the reactor's.
        """
        wrapping = ProxyProtocolFactory(Factory.forProtocol(Protocol))
        self.assertIs(wrapping.clock, reactor)
        self.assertEqual(wrapping.timeout, HEADER_TIMEOUT)
        listening = _ListeningEndpoint()
        proxyEndpoint(listening).listen(Factory.forProtocol(Protocol))
        self.assertIs(listening.factory.clock, reactor)

    def test_wrappedFactoryRefuses(self):
        """
        When the wrapped factory refuses a connection (its
        C{buildProtocol} returns L{None}), so does the wrapping factory.
        """

        class Refusing(Factory):
            def buildProtocol(self, addr):
                return None

        self.assertIsNone(ProxyProtocolFactory(Refusing(), clock=Clock()).buildProtocol(PROXY_PEER))

    def test_logPrefix(self):
        """
        The factory's log prefix is the wrapped factory's, marked.
        """
        self.assertEqual(ProxyProtocolFactory(Factory(), clock=Clock()).logPrefix(), "Factory (PROXY)")

    def test_closedWhenConnected(self):
        """
        When the wrapped protocol closes the connection as soon as it is
        connected, what came after the header is not given to it.
        """
        wrapping = ProxyProtocolFactory(Factory.forProtocol(_Closer), clock=Clock())
        wrapper = wrapping.buildProtocol(PROXY_PEER)
        transport = StringTransport(hostAddress=RELAY_HOST, peerAddress=PROXY_PEER)
        wrapper.makeConnection(transport)
        wrapper.dataReceived(V1_TCP4 + b"more")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(wrapper.wrappedProtocol.received, [])
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(wrapping.protocols, {})
        self.assertEqual(wrapping.clock.getDelayedCalls(), [])

    def test_interfacesOfTransport(self):
        """
        The wrapper provides what its transport provides (so that the
        server sees whether it may start TLS), as Twisted's wrappers do.
        """
        session = _ProxiedSession()
        for interface in providedBy(session.transport):
            self.assertTrue(interface.providedBy(session.wrapper), interface)


# -- a real HAProxy ------------------------------------------------------------------


HAPROXY = which("haproxy")

# Seconds an SMTP exchange in the tests may take.
SMTP_TIMEOUT = 20


def _freePorts(count: int) -> list[int]:
    """
    @return: C{count} different free ports of 127.0.0.1.
    """
    ports: list[int] = []
    while len(ports) < count:
        port = freePort()
        if port not in ports:
            ports.append(port)
    return ports


def _accepts(port: int) -> bool:
    """
    @return: whether something accepts connections on 127.0.0.1:C{port}.
    """
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class HAProxyProcess(_ChildProcess):
    """
    C{haproxy -db -f CONFIG}: HAProxy in the foreground, with two
    frontends in front of one relay: one sending PROXY protocol v1
    headers, one v2, each with health checks sending headers too (v1
    with the check's own addresses, v2 with the LOCAL command).
    """

    what = "haproxy"

    CONFIG = """\
global
    maxconn 100

defaults
    mode tcp
    timeout connect 5s
    timeout client {timeout}s
    timeout server {timeout}s
    timeout check 5s

frontend smtp_v1
    bind 127.0.0.1:{v1}
    default_backend relay_v1

backend relay_v1
    server relay 127.0.0.1:{relay} send-proxy check inter 300ms fall 100 check-send-proxy

frontend smtp_v2
    bind 127.0.0.1:{v2}
    default_backend relay_v2

backend relay_v2
    server relay 127.0.0.1:{relay} send-proxy-v2 check inter 300ms fall 100 check-send-proxy
"""

    @classmethod
    @defer.inlineCallbacks
    def start(cls, testCase, directory: str, relayPort: int):
        """
        Start HAProxy in front of the relay on C{relayPort}; it is stopped
        when the test ends.

        @return: a L{Deferred} firing with the L{HAProxyProcess} once both
            frontends accept connections.
        """
        proxy = cls()
        proxy.v1Port, proxy.v2Port = _freePorts(2)
        proxy.config = os.path.join(directory, "haproxy.cfg")
        with open(proxy.config, "w") as f:
            f.write(cls.CONFIG.format(timeout=SMTP_TIMEOUT, v1=proxy.v1Port, v2=proxy.v2Port, relay=relayPort))
        proxy._spawn(testCase, [HAPROXY, "-db", "-f", proxy.config], {"PATH": os.environ.get("PATH", "")}, directory)
        yield waitUntil(
            lambda: not proxy.running or (_accepts(proxy.v1Port) and _accepts(proxy.v2Port)),
            START_DEADLINE,
            lambda: f"haproxy to listen:\n{proxy.text()}",
        )
        if not proxy.running:
            raise AssertionError(f"haproxy exited ({proxy.reason}) before listening:\n{proxy.text()}")
        return proxy


def _smtpThread(port: int, source: str, work) -> defer.Deferred:
    """
    Connect with smtplib from C{source} to 127.0.0.1:C{port}, and call
    C{work} with the client, in a thread.

    @return: a L{Deferred} firing with what C{work} returns.
    """

    def run():
        with smtplib.SMTP(
            "127.0.0.1", port, local_hostname="client.example", timeout=SMTP_TIMEOUT, source_address=(source, 0)
        ) as client:
            return work(client)

    return deferToThread(run)


def _rawThread(port: int, source: str, send: bytes, first: bool = True) -> defer.Deferred:
    """
    Connect with a plain socket from C{source} to 127.0.0.1:C{port}; read
    the first line (if C{first}), send C{send}, then read until the server
    closes the connection, in a thread.

    @return: a L{Deferred} firing with the first line and what came after
        C{send} was sent.
    """

    def run():
        with socket.create_connection(("127.0.0.1", port), timeout=SMTP_TIMEOUT, source_address=(source, 0)) as s:
            before = b""
            while first and b"\r\n" not in before:
                chunk = s.recv(4096)
                if not chunk:
                    break
                before += chunk
            s.sendall(send)
            after = b""
            while True:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                after += chunk
            return before, after

    return deferToThread(run)


class HAProxyTests(TestCase):
    """
    C{twistd mailrelay --proxy-protocol} behind a real HAProxy, which
    connects to it from 127.0.0.1, relaying for 127.0.0.2 only, and smtplib
    connecting to HAProxy from 127.0.0.2 and 127.0.0.3.
    """

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        if HAPROXY is None:
            missing("haproxy is not installed (Debian: apt-get install haproxy)")
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.sink = yield SinkProcess.start(self, os.path.join(self.scratch, "maildir"))
        self.relayPort = freePort()
        self.relay = RelayProcess.spawn(
            self,
            [
                "--proxy-protocol",
                "--smtp", f"tcp:{self.relayPort}:interface=127.0.0.1",
                "--spool", os.path.join(self.scratch, "spool"),
                "--relay-network", "127.0.0.2/32",
                "--smarthost", f"127.0.0.1:{self.sink.port}",
                "--hostname", "relay.test",
            ],
            self.scratch,
        )  # fmt: skip
        yield self.relay.whenListening()
        self.proxy = yield HAProxyProcess.start(self, self.scratch, self.relayPort)

    def assertNoTraceback(self) -> None:
        """
        The relay's log has no traceback and no unhandled error.  (Not
        just the word "Traceback": the spool's path, in the log, has the
        test's name in it.)
        """
        text = self.relay.text()
        self.assertNotIn("Traceback (most recent call last)", text)
        self.assertNotIn("Unhandled Error", text)

    @defer.inlineCallbacks
    def tooManyErrors(self, port: int, source: str):
        """
        From C{source}, through HAProxy's frontend on C{port}: one bad
        command more than the relay allows, so that it hangs up and logs a
        line naming the client.  Once that line is in the relay's log, so
        is everything it logged before.
        """
        errors = b"XYZZY\r\n" * (RelayESMTP.maxErrors + 1)
        greeting, after = yield _rawThread(port, source, b"EHLO client.example\r\n" + errors)
        self.assertTrue(greeting.startswith(b"220 relay.test "), greeting)
        self.assertTrue(after.endswith(b"421 4.7.0 relay.test Too many errors, closing connection\r\n"), after[-300:])
        yield waitUntil(
            lambda: self.relay.logLines(f"SMTP client {source} made too many errors"),
            SMTP_TIMEOUT,
            lambda: f"the log line naming {source}:\n{self.relay.text()}",
        )

    @defer.inlineCallbacks
    def relayThrough(self, port: int, version: str):
        """
        Through HAProxy's frontend on C{port}: from 127.0.0.2 a message to
        a foreign domain is accepted and relayed, with 127.0.0.2 in its
        C{Received} header; from 127.0.0.3 the recipient is refused.
        """
        testID = f"proxy-{version}"
        message = (
            b"From: <sender@example.org>\r\n"
            b"To: <rcpt@example.com>\r\n"
            b"Subject: through haproxy\r\n"
            b"X-Test-Id: " + testID.encode("ascii") + b"\r\n"
            b"\r\n"
            b"Hello.\r\n"
        )

        def allowed(client):
            code, greeting = client.ehlo()
            client.mail("sender@example.org")
            rcpt = client.rcpt("rcpt@example.com")
            data = client.data(message)
            return greeting, rcpt, data

        greeting, rcpt, data = yield _smtpThread(port, "127.0.0.2", allowed)
        self.assertTrue(greeting.startswith(b"relay.test Hello 127.0.0.2,"), greeting)
        self.assertEqual(rcpt, (250, b"2.1.5 Recipient address accepted"))
        self.assertEqual(data[0], 250, data)

        def refused(client):
            code, greeting = client.ehlo()
            client.mail("sender@example.org")
            return greeting, client.rcpt("rcpt@example.com")

        greeting, rcpt = yield _smtpThread(port, "127.0.0.3", refused)
        self.assertTrue(greeting.startswith(b"relay.test Hello 127.0.0.3,"), greeting)
        self.assertEqual(rcpt, (554, b"5.7.1 Relay access denied"))

        def arrived():
            return [m for m in self.sink.messages().values() if testIDOf(m) == testID]

        [stored] = yield waitUntil(arrived, SMTP_TIMEOUT, lambda: f"the message at the smart host; relay log:\n{self.relay.text()}")
        self.assertTrue(stored.startswith(b"Received: from client.example ([127.0.0.2])\r\n\tby relay.test "), stored[:300])
        self.assertTrue(stored.endswith(b"\r\n" + message), stored)
        self.assertNoTraceback()

    def test_v1(self):
        """
        Through HAProxy's C{send-proxy} (v1): the relay judges the clients,
        not HAProxy.
        """
        return self.relayThrough(self.proxy.v1Port, "v1")

    def test_v2(self):
        """
        Through HAProxy's C{send-proxy-v2}: the relay judges the clients,
        not HAProxy.
        """
        return self.relayThrough(self.proxy.v2Port, "v2")

    @defer.inlineCallbacks
    def test_logsNameTheClient(self):
        """
        The relay's log lines about a client (here: too many bad commands)
        name the client, through either frontend, not HAProxy.
        """
        yield self.tooManyErrors(self.proxy.v1Port, "127.0.0.3")
        yield self.tooManyErrors(self.proxy.v2Port, "127.0.0.4")
        self.assertEqual(self.relay.logLines("SMTP client 127.0.0.1 "), [])
        self.assertNoTraceback()

    @defer.inlineCallbacks
    def test_withoutHeader(self):
        """
        A client straight to the relay's port, without a PROXY header, gets
        no greeting and is disconnected when it speaks, without a reply;
        so is one with a malformed header.  The relay logs one line for
        each, no traceback, and goes on serving HAProxy's clients.
        """
        greeting, after = yield _rawThread(
            self.relayPort, "127.0.0.2", b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n", first=False
        )
        self.assertEqual(after, b"")
        greeting, after = yield _rawThread(
            self.relayPort, "127.0.0.2", b"PROXY TCP4 192.0.2.7 127.0.0.1 5555\r\nEHLO x\r\n", first=False
        )
        self.assertEqual(after, b"")
        yield self.tooManyErrors(self.proxy.v1Port, "127.0.0.5")
        lines = self.relay.logLines("PROXY protocol: closing the connection from 127.0.0.2: ")
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].endswith(": not a PROXY protocol header"), lines)
        self.assertTrue(lines[1].endswith(": a v1 header without exactly two addresses and two ports"), lines)
        self.assertNoTraceback()

    @defer.inlineCallbacks
    def test_badPortNoTraceback(self):
        """
        A header whose port is not a number, straight to the relay's port:
        the client is disconnected without a byte, and the relay logs one
        line saying why, and no traceback.
        """
        greeting, after = yield _rawThread(
            self.relayPort, "127.0.0.2", b"PROXY TCP4 192.0.2.7 127.0.0.1 port 25\r\nEHLO x\r\n", first=False
        )
        self.assertEqual(after, b"")
        yield self.tooManyErrors(self.proxy.v1Port, "127.0.0.5")
        self.assertEqual(
            len(self.relay.logLines("PROXY protocol: closing the connection from 127.0.0.2: bad source port in a v1 header")), 1
        )
        self.assertNoTraceback()
