# -*- test-case-name: mailproto.test.test_proxy -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The PROXY protocol, receiving side: versions 1 (text) and 2 (binary), as
HAProxy specifies them (C{doc/proxy-protocol.txt} in HAProxy's source).

A proxy in front of the relay (HAProxy's C{send-proxy} or
C{send-proxy-v2}) starts each connection with a header naming the client
it stands for.  L{ProxyProtocolFactory} wraps a server's factory: each
connection reads that header first, and only once it is complete and
valid is the server's protocol connected, with C{getPeer()} and
C{getHost()} of its transport giving the addresses from the header.  A
connection whose header is missing, malformed or too slow is closed
without a byte sent, and one line is logged.

What is accepted:

  - v1: C{PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT\\r\\n}, at most
    107 octets, fields separated by exactly one space, addresses of the
    named family in the forms C{ipaddress} reads (IPv4 without leading
    zeros, IPv6 without zone), ports C{0} to C{65535} without leading
    zeros; and C{PROXY UNKNOWN} followed by anything up to the C{CRLF}, for
    which the connection's own addresses count.
  - v2: the 12-octet signature, version 2, the LOCAL command (a proxy's
    health check: the connection's own addresses count, whatever the
    family) or the PROXY command with TCP over IPv4 or IPv6 (C{0x11},
    C{0x21}); with AF_UNSPEC, or with AF_UNIX, the connection's own
    addresses count (a UNIX address from a header is never presented: the
    relay lets UNIX-socket clients relay).  Type-length-value fields after
    the addresses are skipped.

The header may arrive in any number of pieces; what follows it in the
same piece goes to the server at once.
"""

from __future__ import annotations

import ipaddress
import re

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ILoggingContext, IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, implementer, providedBy

# Seconds a connection has to send its whole header.
HEADER_TIMEOUT = 10

# The longest v1 header, CRLF included (section 2.1 of the specification:
# "PROXY UNKNOWN" and two full IPv6 addresses and ports).
V1_MAX_LENGTH = 107
_V1_PREFIX = b"PROXY "

# The 12 octets every v2 header starts with (section 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED_LENGTH = 16

_LOCAL, _PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2

# The length of the address block each family's addresses take in v2.
_V2_ADDRESS_LENGTH = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

# What an address and a port of a v1 header may look like, before
# ipaddress reads the address: no leading zeros, no IPv6 zone ("%eth0"),
# nothing but digits, dots, hexadecimal digits and colons.
_V1_IPV4 = re.compile(rb"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_V1_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")


class InvalidProxyHeader(Exception):
    """
    The header is not one to accept.

    @ivar reason: why, for the log.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _v1Address(field: bytes, pattern: re.Pattern, parse, what: str) -> str:
    """
    @return: the address in C{field} in its canonical form.
    @raise InvalidProxyHeader: if C{field} is not an address that C{pattern} and
        C{parse} (C{ipaddress.IPv4Address} or C{IPv6Address}) accept.
    """
    if pattern.fullmatch(field) is None:
        raise InvalidProxyHeader(f"bad {what} address in a v1 header")
    try:
        return str(parse(field.decode("ascii")))
    except ValueError:
        raise InvalidProxyHeader(f"bad {what} address in a v1 header") from None


def _v1Port(field: bytes, what: str) -> int:
    """
    @return: the port in C{field}.
    @raise InvalidProxyHeader: if C{field} is not a decimal number from 0 to 65535
        without leading zeros.
    """
    if _V1_PORT.fullmatch(field) is None or int(field) > 65535:
        raise InvalidProxyHeader(f"bad {what} port in a v1 header")
    return int(field)


def parseV1(line: bytes):
    """
    Read a v1 header.

    @param line: the header without its C{CRLF}.
    @return: the source and destination addresses, as C{IPv4Address} or
        C{IPv6Address}; or C{None} for C{UNKNOWN} (the connection's own
        addresses count).
    @raise InvalidProxyHeader: if the header is not valid.
    """
    fields = line.split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise InvalidProxyHeader("not a PROXY protocol header")
    if fields[1] == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF".
        return None
    if fields[1] == b"TCP4":
        pattern, parse, address = _V1_IPV4, ipaddress.IPv4Address, IPv4Address
    elif fields[1] == b"TCP6":
        pattern, parse, address = _V1_IPV6, ipaddress.IPv6Address, IPv6Address
    else:
        raise InvalidProxyHeader("unknown protocol in a v1 header")
    if len(fields) != 6:
        raise InvalidProxyHeader("a v1 header without exactly two addresses and two ports")
    source = _v1Address(fields[2], pattern, parse, "source")
    destination = _v1Address(fields[3], pattern, parse, "destination")
    sourcePort = _v1Port(fields[4], "source")
    destinationPort = _v1Port(fields[5], "destination")
    return address("TCP", source, sourcePort), address("TCP", destination, destinationPort)


def _checkV2(command: int, family: int, transport: int, length: int) -> None:
    """
    Check the fixed part of a v2 header, before its addresses arrive.

    @raise InvalidProxyHeader: if the header is not one to accept.
    """
    if command == _LOCAL:
        # "The receiver must accept this connection as valid and must use
        # the real connection endpoints and discard the protocol block
        # including the family which is ignored."
        return
    if command != _PROXY:
        raise InvalidProxyHeader(f"unknown command {command:#x} in a v2 header")
    if transport not in (_UNSPEC, _STREAM, _DGRAM):
        raise InvalidProxyHeader(f"unknown transport protocol {transport:#x} in a v2 header")
    if family in (_AF_INET, _AF_INET6):
        if transport != _STREAM:
            raise InvalidProxyHeader(f"family and protocol {family << 4 | transport:#04x} in a v2 header: not TCP")
    elif family not in (_AF_UNSPEC, _AF_UNIX):
        raise InvalidProxyHeader(f"unknown address family {family:#x} in a v2 header")
    if length < _V2_ADDRESS_LENGTH.get(family, 0):
        raise InvalidProxyHeader(f"{length} octets of addresses in a v2 header for family {family << 4 | transport:#04x}")


def parseV2(header: bytes):
    """
    Read a v2 header.

    @param header: the whole header, C{16} octets and as many more as its
        length says.
    @return: the source and destination addresses, as C{IPv4Address} or
        C{IPv6Address}; or C{None} if the connection's own addresses count
        (command LOCAL, family AF_UNSPEC or AF_UNIX).
    @raise InvalidProxyHeader: if the header is not valid.
    """
    if header[:12] != V2_SIGNATURE:
        raise InvalidProxyHeader("not a PROXY protocol header")
    version, command = header[12] >> 4, header[12] & 0xF
    if version != 2:
        raise InvalidProxyHeader(f"version {version} of the binary PROXY protocol")
    family, transport = header[13] >> 4, header[13] & 0xF
    length = int.from_bytes(header[14:16], "big")
    _checkV2(command, family, transport, length)
    if len(header) != _V2_FIXED_LENGTH + length:
        raise InvalidProxyHeader("a v2 header of the wrong length")
    if command == _LOCAL or family not in (_AF_INET, _AF_INET6):
        return None
    size = 4 if family == _AF_INET else 16
    parse, address = (ipaddress.IPv4Address, IPv4Address) if family == _AF_INET else (ipaddress.IPv6Address, IPv6Address)
    block = header[_V2_FIXED_LENGTH:]
    source = str(parse(block[:size]))
    destination = str(parse(block[size : 2 * size]))
    sourcePort = int.from_bytes(block[2 * size : 2 * size + 2], "big")
    destinationPort = int.from_bytes(block[2 * size + 2 : 2 * size + 4], "big")
    return address("TCP", source, sourcePort), address("TCP", destination, destinationPort)


class HeaderReader:
    """
    Reads a PROXY protocol header, v1 or v2, from input in any pieces; no
    I/O.

    Input is refused as soon as it cannot be the start of a valid header;
    at most a v1 header's 107 octets, or a v2 header's 16 octets plus its
    length (at most 65,535), are kept.
    """

    def __init__(self) -> None:
        # A bytearray, so that a header in many small pieces takes time in
        # proportion to its length.
        self._buffer = bytearray()

    def feed(self, data: bytes):
        """
        Take more input.

        @param data: the octets that came.
        @return: C{None} if the header is not complete yet; else a tuple
            of the addresses (as L{parseV1} and L{parseV2} return them)
            and the octets after the header.
        @raise InvalidProxyHeader: if the input is not a valid header.
        """
        buffer = self._buffer
        buffer += data
        if not buffer:
            return None
        if buffer[:1] == _V1_PREFIX[:1]:
            result = self._v1(buffer)
        elif buffer[:1] == V2_SIGNATURE[:1]:
            result = self._v2(buffer)
        else:
            raise InvalidProxyHeader("not a PROXY protocol header")
        if result is not None:
            self._buffer = bytearray()
        return result

    def _v1(self, buffer: bytearray):
        if buffer[: len(_V1_PREFIX)] != _V1_PREFIX[: len(buffer)]:
            raise InvalidProxyHeader("not a PROXY protocol header")
        end = buffer.find(b"\n", 0, V1_MAX_LENGTH)
        if end == -1:
            if len(buffer) >= V1_MAX_LENGTH:
                raise InvalidProxyHeader(f"no end of line in the first {V1_MAX_LENGTH} octets of a v1 header")
            return None
        if buffer[end - 1 : end] != b"\r":
            raise InvalidProxyHeader("a v1 header ending in a bare LF")
        return parseV1(bytes(buffer[: end - 1])), bytes(buffer[end + 1 :])

    def _v2(self, buffer: bytearray):
        known = min(len(buffer), len(V2_SIGNATURE))
        if buffer[:known] != V2_SIGNATURE[:known]:
            raise InvalidProxyHeader("not a PROXY protocol header")
        if len(buffer) < _V2_FIXED_LENGTH:
            return None
        # Refuse what can be refused before the addresses arrive.
        if buffer[12] >> 4 != 2:
            raise InvalidProxyHeader(f"version {buffer[12] >> 4} of the binary PROXY protocol")
        length = int.from_bytes(buffer[14:16], "big")
        _checkV2(buffer[12] & 0xF, buffer[13] >> 4, buffer[13] & 0xF, length)
        end = _V2_FIXED_LENGTH + length
        if len(buffer) < end:
            return None
        return parseV2(bytes(buffer[:end])), bytes(buffer[end:])


def _describe(address) -> str:
    """
    @return: C{address} (the connection's own peer) for a log line.
    """
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host
    name = getattr(address, "name", None)
    if name is not None:
        return "unix:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
    return str(address)


class ProxyProtocolWrapper(ProtocolWrapper):
    """
    One connection from a proxy: reads the PROXY protocol header, then
    connects the wrapped protocol to itself as its transport.

    @ivar wrappedProtocol: the server's protocol; connected only once the
        header is read.
    @ivar factory: the L{ProxyProtocolFactory}; gives C{clock} and
        C{timeout}.
    """

    _log = Logger()

    # The header reader while the header is being read; None after it.
    _reader: HeaderReader | None = None
    # The source and destination from the header, or None for the
    # connection's own.
    _addresses = None
    # Whether the wrapped protocol is connected.
    _connected = False
    # The header's time limit, while it runs.
    _timer = None

    def __init__(self, factory: ProxyProtocolFactory, wrappedProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self._reader = HeaderReader()

    def makeConnection(self, transport) -> None:
        """
        Take the connection and start the header's time limit; the
        wrapped protocol waits for the header.
        """
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        """
        Read the header; pass on what comes after it.
        """
        if self._reader is None:
            if self._connected:
                self.wrappedProtocol.dataReceived(data)
            return
        try:
            result = self._reader.feed(data)
        except InvalidProxyHeader as e:
            self._refuse(e.reason)
            return
        if result is None:
            return
        self._reader = None
        self._stopTimer()
        self._addresses, rest = result
        self._connected = True
        self.wrappedProtocol.makeConnection(self)
        if rest and not self.disconnecting and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def _refuse(self, reason: str) -> None:
        """
        Log C{reason} and close the connection; ignore what comes next.
        """
        self._reader = None
        self._stopTimer()
        self._log.info(
            "PROXY protocol: closing the connection from {peer}: {reason}",
            peer=_describe(self.transport.getPeer()),
            reason=reason,
        )
        self.loseConnection()

    def _timedOut(self) -> None:
        self._timer = None
        self._refuse(f"no complete header in {self.factory.timeout} seconds")

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def getPeer(self):
        """
        @return: the source address from the header, once read, unless the
            header said to use the connection's own.
        """
        if self._addresses is not None:
            return self._addresses[0]
        return self.transport.getPeer()

    def getHost(self):
        """
        @return: the destination address from the header, once read,
            unless the header said to use the connection's own.
        """
        if self._addresses is not None:
            return self._addresses[1]
        return self.transport.getHost()

    def connectionLost(self, reason) -> None:
        """
        Tell the wrapped protocol, if it was ever connected.
        """
        self._reader = None
        self._stopTimer()
        if self._connected:
            ProtocolWrapper.connectionLost(self, reason)
        else:
            self.factory.unregisterProtocol(self)


class ProxyProtocolFactory(WrappingFactory):
    """
    Wraps a server's factory so that each connection starts with a PROXY
    protocol header (see L{ProxyProtocolWrapper}).

    @ivar clock: the C{IReactorTime} of the header's time limit.
    @ivar timeout: seconds a connection has to send its whole header.
    """

    protocol = ProxyProtocolWrapper
    # The listener's start is logged once, by the relay.
    noisy = False

    def __init__(self, wrappedFactory, clock=None, timeout: float = HEADER_TIMEOUT) -> None:
        """
        @param wrappedFactory: the server's factory.
        @param clock: the C{IReactorTime} of the header's time limit; the
            reactor if C{None}.
        @param timeout: seconds a connection has to send its whole header.
        """
        super().__init__(wrappedFactory)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr):
        """
        @return: a L{ProxyProtocolWrapper} around the wrapped factory's
            protocol, or C{None} if the wrapped factory refuses the
            connection.
        """
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)

    def logPrefix(self) -> str:
        """
        @return: the wrapped factory's log prefix, marked as behind a
            proxy.
        """
        if ILoggingContext.providedBy(self.wrappedFactory):
            prefix = self.wrappedFactory.logPrefix()
        else:
            prefix = self.wrappedFactory.__class__.__name__
        return f"{prefix} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """
    A server endpoint whose connections start with a PROXY protocol
    header.

    @ivar wrappedEndpoint: the endpoint that listens.
    @ivar clock: the C{IReactorTime} of the header's time limit, or
        C{None} for the reactor.
    @ivar timeout: seconds a connection has to send its whole header.
    """

    def __init__(self, wrappedEndpoint, clock=None, timeout: float = HEADER_TIMEOUT) -> None:
        self.wrappedEndpoint = wrappedEndpoint
        self.clock = clock
        self.timeout = timeout

    def listen(self, protocolFactory):
        """
        Listen with a L{ProxyProtocolFactory} around C{protocolFactory}.

        @return: what the wrapped endpoint's C{listen} returns: a
            C{Deferred} firing with an C{IListeningPort}.
        """
        return self.wrappedEndpoint.listen(ProxyProtocolFactory(protocolFactory, self.clock, self.timeout))


def proxyEndpoint(endpoint, clock=None, timeout: float = HEADER_TIMEOUT) -> ProxyProtocolEndpoint:
    """
    Wrap a server endpoint so that its connections must start with a
    PROXY protocol header (v1 or v2), and their transports' C{getPeer()}
    and C{getHost()} give the addresses from it.

    @param endpoint: the C{IStreamServerEndpoint} to listen on.
    @param clock: the C{IReactorTime} of the header's time limit; the
        reactor if C{None}.
    @param timeout: seconds a connection has to send its whole header.
    @return: an C{IStreamServerEndpoint}.
    """
    return ProxyProtocolEndpoint(endpoint, clock, timeout)
