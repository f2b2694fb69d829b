# -*- test-case-name: mailproto.test.test_dane -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
A DNS stub lookup that asks whether the answer was validated (DNSSEC),
for DANE (RFC 7672).

L{SecureLookup.lookup} sends one question to a recursive resolver and
answers with a L{SecureAnswer}: the records of the name and type asked,
and whether the resolver said they were validated -- the AD bit of its
reply (RFC 4035 section 3.2.3).  Every query asks for that bit twice over,
as RFC 6840 section 5.7 describes: the AD bit is set in the query, and
EDNS0 (RFC 6891) is used with the DO bit.

Trust model, the same as Postfix's C{smtp_dns_support_level = dnssec}:
the stub validates nothing itself (RFC 7672 section 2.1.3).  The AD bit
means something only if the resolver really validates and nobody can
change its replies on the way, which in practice means a validating
resolver on the same host (C{127.0.0.1}, C{::1}) or on a network path the
operator trusts.  Only the operator knows that; L{SecureLookup} just reports the bit, and the
caller decides whether to believe it (and should not, unless told the
resolver is trusted).

How answers are reported:

  - NOERROR with records, NOERROR without (NODATA) and NXDOMAIN are
    answers: a L{SecureAnswer}, authenticated or not;
  - SERVFAIL, any other error code, a time-out from every server, or a
    reply that is not an answer to the question, are failures:
    L{DNSLookupFailed}, with a one-line message.

A UDP reply with the TC (truncated) bit is asked again over TCP, from
the same server.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.names import dns

__all__ = ["DNSLookupFailed", "SecureAnswer", "SecureLookup", "TLSA"]

_log = Logger()

TLSA = 52
"""The TLSA record type (RFC 6698 section 7.1); twisted.names has no class
for it and gives its records as C{dns.UnknownRecord}."""

#: The UDP payload size advertised with EDNS0: the size DNS Flag Day 2020
#: recommends, which avoids IP fragmentation on almost every path.
PAYLOAD_SIZE = 1232

#: How many CNAME records an answer's chain may have before the records
#: at its end are no longer looked for.
_MAX_CNAMES = 16

_RCODES = {
    dns.OK: "NOERROR",
    dns.EFORMAT: "FORMERR",
    dns.ESERVER: "SERVFAIL",
    dns.ENAME: "NXDOMAIN",
    dns.ENOTIMP: "NOTIMP",
    dns.EREFUSED: "REFUSED",
}


def _typeName(type: int) -> str:
    """
    @return: a record type's mnemonic, such as C{"MX"} or C{"TLSA"}.
    """
    if type == TLSA:
        return "TLSA"
    return dns.QUERY_TYPES.get(type, dns.EXT_QUERIES.get(type, f"TYPE{type}"))


def _normal(name) -> str:
    """
    @param name: a domain name, C{str} or C{bytes}.
    @return: the name in lower case, without a final dot.
    """
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.rstrip(".").lower()


class DNSLookupFailed(Exception):
    """
    A DNS question got no answer: the resolver failed (SERVFAIL or another
    error code), every server timed out, or the reply was not an answer to
    the question.  Retrying later may help.

    @ivar name: the name asked about.
    @ivar type: the record type asked for.
    @ivar reason: why, in a few words (C{"SERVFAIL from 127.0.0.1:53"}).
    """

    def __init__(self, name: str, type: int, reason: str) -> None:
        Exception.__init__(self, name, type, reason)
        self.name = name
        self.type = type
        self.reason = reason

    def __str__(self) -> str:
        return f"DNS lookup of {self.name} {_typeName(self.type)} failed: {self.reason}"


@dataclasses.dataclass(frozen=True)
class SecureAnswer:
    """
    A resolver's answer to one question.

    @ivar name: the name asked about (lower case, no final dot).
    @ivar type: the record type asked for.
    @ivar records: the payloads of the answer records of that type, at the
        name or, if the name is an alias, at the end of the chain of CNAME
        records in the answer (C{dns.Record_A}, C{dns.Record_MX}, ...;
        C{dns.UnknownRecord} for TLSA); empty for NXDOMAIN and NODATA.
    @ivar authenticated: the AD bit: whether the resolver says it
        validated the whole answer with DNSSEC (a denial of existence too).
        See the module's docstring for when to believe it.
    @ivar rcode: the response code, C{dns.OK} (NOERROR) or C{dns.ENAME}
        (NXDOMAIN).
    @ivar canonicalName: the name at the end of the answer's CNAME chain;
        C{name} if the name is not an alias.
    """

    name: str
    type: int
    records: tuple = ()
    authenticated: bool = False
    rcode: int = dns.OK
    canonicalName: str = ""

    def __post_init__(self) -> None:
        if not self.canonicalName:
            object.__setattr__(self, "canonicalName", self.name)

    @property
    def exists(self) -> bool:
        """
        Whether there are records of the type asked for.
        """
        return bool(self.records)

    @property
    def nameExists(self) -> bool:
        """
        Whether the name exists (the answer is not NXDOMAIN).
        """
        return self.rcode != dns.ENAME

    @classmethod
    def fromMessage(cls, name: str, type: int, message: dns.Message) -> SecureAnswer:
        """
        Read a resolver's reply.

        @param name: the name asked about.
        @param type: the record type asked for.
        @param message: the reply.
        @return: the answer it carries.
        @raise DNSLookupFailed: if it is not an answer to that question, or
            is an error other than NXDOMAIN.
        """
        name = _normal(name)
        questions = [(_normal(q.name.name), q.type) for q in message.queries]
        if not questions:
            # twisted.names reads what it can of a message and leaves out
            # what it cannot read: garbage may look like an empty reply.
            raise DNSLookupFailed(name, type, "the reply does not repeat the question")
        if questions != [(name, type)]:
            raise DNSLookupFailed(name, type, "the reply is for another question")
        rcode = dns._EDNSMessage._fromMessage(message).rCode
        if rcode not in (dns.OK, dns.ENAME):
            raise DNSLookupFailed(name, type, _RCODES.get(rcode, f"response code {rcode}"))
        canonical, records = _follow(name, type, message.answers)
        return cls(name, type, tuple(records), bool(message.authenticData), rcode, canonical)


def _follow(name: str, type: int, answers) -> tuple[str, list]:
    """
    Follow the CNAME chain of an answer section from C{name}.

    @return: the name at the end of the chain, and the payloads of the
        records of C{type} there.
    """
    current, seen = name, {name}
    while True:
        records = [rr.payload for rr in answers if rr.type == type and _normal(rr.name.name) == current]
        if records or type == dns.CNAME:
            return current, records
        aliases = [rr.payload for rr in answers if rr.type == dns.CNAME and _normal(rr.name.name) == current]
        if not aliases:
            return current, []
        target = _normal(aliases[0].name.name)
        if target in seen or len(seen) > _MAX_CNAMES:
            return current, []
        seen.add(target)
        current = target


def _secureQuery(message: dns.Message) -> dns._EDNSMessage:
    """
    @param message: the query twisted.names built (an ID, recursion
        desired, the question).
    @return: the same query with the AD bit set and EDNS0 with the DO bit,
        advertising L{PAYLOAD_SIZE} (RFC 6840 section 5.7, RFC 3225).
    """
    return dns._EDNSMessage(
        id=message.id,
        recDes=True,
        authenticData=True,
        dnssecOK=True,
        ednsVersion=0,
        maxSize=PAYLOAD_SIZE,
        queries=list(message.queries),
    )


class _SecureDatagramProtocol(dns.DNSDatagramProtocol):
    """
    DNS over UDP, each query sent with the AD and DO bits.

    twisted.names builds its query messages itself, in C{DNSMixin._query},
    with no way to ask for the AD or DO bits.  The supported hook is
    C{writeMessage}, which both the UDP and the TCP protocols call to send
    a query: this class rewrites the message there.  It keeps using
    C{query()}, which is what records the server's address for the ID in
    C{_addressValidation} before the message is written; a reply whose ID
    and source address do not match what was recorded is dropped (a
    defence against spoofed replies).  Sending a message any other way,
    such as through C{_query} or straight to the transport, would skip
    that record, and every reply would be dropped as unexpected.
    """

    def writeMessage(self, message, address) -> None:
        dns.DNSDatagramProtocol.writeMessage(self, _secureQuery(message), address)


class _SecureStreamProtocol(dns.DNSProtocol):
    """
    DNS over TCP, each query sent with the AD and DO bits (see
    L{_SecureDatagramProtocol}); a query still waiting when the connection
    is lost fails at once instead of at its time-out.
    """

    def writeMessage(self, message) -> None:
        dns.DNSProtocol.writeMessage(self, _secureQuery(message))

    def connectionLost(self, reason) -> None:
        live, self.liveMessages = self.liveMessages or {}, {}
        for d, call in live.values():
            call.cancel()
            d.errback(reason)
        dns.DNSProtocol.connectionLost(self, reason)


class _Controller:
    """
    What a twisted.names protocol tells about messages that answer no
    query of ours (late or duplicated replies) and about its connection:
    nothing to do.
    """

    def messageReceived(self, message, protocol, address=None) -> None:
        pass

    def connectionMade(self, protocol) -> None:
        pass

    def connectionLost(self, protocol) -> None:
        pass


def _isIPv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


class SecureLookup:
    """
    Asks recursive resolvers questions with the AD and DO bits, and reports
    whether the answers were validated.  See the module's docstring for
    the trust model.

    Each question goes over UDP from a new port to the first server; if no
    reply comes within the first time-out, to the next server, and so on;
    then to all of them again with the next time-out, as twisted.names'
    own resolver does.  A server that answers with an error is not asked
    again for that question.

    @ivar servers: the resolvers, as C{(address, port)}.
    @ivar timeout: the time-outs of the rounds, in seconds.
    """

    def __init__(self, servers, reactor=None, timeout=(1, 3, 11)) -> None:
        """
        @param servers: the resolvers, a list of C{(address, port)}; the
            address is an IPv4 or IPv6 address.
        @param reactor: what sends and times queries (an C{IReactorUDP},
            C{IReactorTCP} and C{IReactorTime}); the global reactor if
            C{None}.
        @param timeout: the time-out of each round, in seconds.
        @raise ValueError: if there is no server or no time-out.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.servers = [(str(host), int(port)) for host, port in servers]
        if not self.servers:
            raise ValueError("a secure DNS lookup needs at least one server")
        self.timeout = tuple(timeout)
        if not self.timeout:
            raise ValueError("a secure DNS lookup needs at least one time-out")
        self._reactor = reactor

    @classmethod
    def fromResolvConf(cls, path: str = "/etc/resolv.conf", reactor=None, timeout=(1, 3, 11)) -> SecureLookup:
        """
        Ask the servers a resolv.conf file names (its C{nameserver} lines,
        port 53); like the C library, the local host (C{127.0.0.1}) if the
        file names none or cannot be read.

        @param path: the file.
        @param reactor: see L{SecureLookup.__init__}.
        @param timeout: see L{SecureLookup.__init__}.
        """
        servers = []
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    words = line.split()
                    if len(words) >= 2 and words[0] == "nameserver":
                        host = words[1].split("%", 1)[0]
                        try:
                            ipaddress.ip_address(host)
                        except ValueError:
                            continue
                        servers.append((host, dns.PORT))
        except OSError:
            pass
        return cls(servers or [("127.0.0.1", dns.PORT)], reactor, timeout)

    def __repr__(self) -> str:
        return f"SecureLookup({self.servers!r})"

    def lookup(self, name: str, type: int) -> defer.Deferred[SecureAnswer]:
        """
        Ask for the records of one name and type.

        @param name: the name, in A-labels (ASCII); a final dot is allowed.
        @param type: the record type (C{dns.A}, C{dns.MX}, L{TLSA}, ...).
        @return: a C{Deferred} that fires with a L{SecureAnswer} (also for
            NXDOMAIN and NODATA), or fails with L{DNSLookupFailed}.
        """
        return defer.ensureDeferred(self._lookup(_normal(name), type))

    async def _lookup(self, name: str, type: int) -> SecureAnswer:
        try:
            query = dns.Query(name.encode("ascii"), type, dns.IN)
        except UnicodeEncodeError:
            raise DNSLookupFailed(name, type, "the name is not in A-labels (ASCII)") from None
        failed = set()
        reasons = []
        for timeout in self.timeout:
            for server in self.servers:
                if server in failed:
                    continue
                try:
                    return await self._ask(name, type, query, server, timeout)
                except defer.CancelledError:
                    raise
                except dns.DNSQueryTimeoutError:
                    reasons.append(f"no reply from {_where(server)}")
                except DNSLookupFailed as e:
                    failed.add(server)
                    reasons.append(f"{e.reason} from {_where(server)}")
                except Exception as e:
                    failed.add(server)
                    reasons.append(f"{_oneLine(e)} ({_where(server)})")
        raise DNSLookupFailed(name, type, reasons[-1] if reasons else "no server to ask")

    async def _ask(self, name: str, type: int, query: dns.Query, server: tuple[str, int], timeout: float) -> SecureAnswer:
        """
        Ask one server once, over UDP, then over TCP if the reply was
        truncated.

        @raise dns.DNSQueryTimeoutError: if no reply came in time.
        @raise DNSLookupFailed: if the reply is an error.
        """
        message = await self._askUDP(query, server, timeout)
        if message.trunc:
            _log.debug("Truncated reply for {name} from {server}; asking over TCP", name=name, server=_where(server))
            message = await self._askTCP(query, server, max(self.timeout))
        return SecureAnswer.fromMessage(name, type, message)

    async def _askUDP(self, query: dns.Query, server: tuple[str, int], timeout: float) -> dns.Message:
        proto = _SecureDatagramProtocol(_Controller(), reactor=self._reactor)
        interface = "::" if _isIPv6(server[0]) else ""
        # Port 0: the system picks a random free port for each question.
        port = self._reactor.listenUDP(0, proto, interface=interface, maxPacketSize=65535)
        try:
            return await proto.query(server, [query], timeout)
        finally:
            # A cancelled query leaves its time-out behind.
            for _, call in list(proto.liveMessages.values()):
                if call.active():
                    call.cancel()
            port.stopListening()

    async def _askTCP(self, query: dns.Query, server: tuple[str, int], timeout: float) -> dns.Message:
        host, portNumber = server
        endpointClass = TCP6ClientEndpoint if _isIPv6(host) else TCP4ClientEndpoint
        endpoint = endpointClass(self._reactor, host, portNumber, timeout=timeout)
        proto = _SecureStreamProtocol(_Controller(), reactor=self._reactor)
        try:
            await connectProtocol(endpoint, proto)
        except Exception as e:
            raise DNSLookupFailed(_normal(query.name.name), query.type, f"cannot connect over TCP: {_oneLine(e)}") from None
        try:
            return await proto.query([query], timeout)
        except (dns.DNSQueryTimeoutError, defer.CancelledError):
            raise
        except Exception as e:
            raise DNSLookupFailed(_normal(query.name.name), query.type, f"TCP connection lost: {_oneLine(e)}") from None
        finally:
            for _, call in list(proto.liveMessages.values()):
                if call.active():
                    call.cancel()
            if proto.transport is not None:
                proto.transport.loseConnection()


def _where(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _oneLine(exception: BaseException) -> str:
    text = " ".join(str(exception).split())
    return text or type(exception).__name__
