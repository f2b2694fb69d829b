# Copyright (c) mailproto authors. See LICENSE for details.
"""
A real DNS server on loopback for the tests of outbound security (MX,
TXT, A, AAAA and TLSA records), built on twisted.names' own server.

It can play a validating resolver: with C{validating=True} it sets the
AD bit (RFC 4035 section 3.2.3) on answers whose records were all added
as C{secure}, and only when the query asked for it with the AD bit or
EDNS's DO bit (RFC 6840 section 5.7), as a validating resolver such as
Unbound does.  A resolver that is not validating never sets it.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import common, dns, server

TLSA = 52
"""The TLSA record type (RFC 6698), which twisted.names has no class for."""


def tlsaRecord(usage: int, selector: int, matchingType: int, data: bytes, ttl: int = 300) -> dns.UnknownRecord:
    """
    @return: a TLSA record's data (RFC 6698 section 2.1), to add with
        L{DNSServer.add} under type L{TLSA}.
    """
    return dns.UnknownRecord(bytes([usage, selector, matchingType]) + data, ttl=ttl)


class _Zone(common.ResolverBase):
    """
    The records the server answers from, by name and type.
    """

    def __init__(self) -> None:
        common.ResolverBase.__init__(self)
        self.records: dict[tuple[bytes, int], list[tuple[object, bool]]] = {}

    def add(self, name: bytes, type: int, payload, secure: bool) -> None:
        self.records.setdefault((name.lower().rstrip(b"."), type), []).append((payload, secure))

    def _lookup(self, name, cls, type, timeout):
        found = self.records.get((name.lower().rstrip(b"."), type))
        if not found:
            names = {n for n, _ in self.records}
            if name.lower().rstrip(b".") in names:
                return defer.succeed(([], [], []))
            return defer.fail(dns.DomainError(name))
        answers = [dns.RRHeader(name, type, cls, getattr(payload, "ttl", None) or 300, payload, auth=True) for payload, _ in found]
        return defer.succeed((answers, [], []))

    def secure(self, name: bytes, type: int) -> bool:
        found = self.records.get((name.lower().rstrip(b"."), type), [])
        return all(secure for _, secure in found)


def _askedForAD(message) -> bool:
    """
    Whether a query asked for the AD bit: with the bit itself, or with
    EDNS's DO bit (which the UDP protocol leaves in an OPT record).
    """
    if message.authenticData:
        return True
    if not isinstance(message, dns._EDNSMessage):
        message = dns._EDNSMessage._fromMessage(message)
    return bool(message.dnssecOK)


class _Factory(server.DNSServerFactory):
    def __init__(self, zone: _Zone, validating: bool) -> None:
        server.DNSServerFactory.__init__(self, authorities=[zone])
        self.zone = zone
        self.validating = validating
        self.queries: list[tuple[bytes, int, bool]] = []

    def handleQuery(self, message, protocol, address):
        for query in message.queries:
            self.queries.append((query.name.name, query.type, _askedForAD(message)))
        return server.DNSServerFactory.handleQuery(self, message, protocol, address)

    def _responseFromMessage(self, message, rCode=dns.OK, answers=None, authority=None, additional=None):
        response = server.DNSServerFactory._responseFromMessage(self, message, rCode, answers, authority, additional)
        response.authenticData = bool(
            self.validating and _askedForAD(message) and message.queries and all(self.zone.secure(q.name.name, q.type) for q in message.queries)
        )
        return response


class DNSServer:
    """
    A DNS server on 127.0.0.1 (UDP and TCP on the same port).

    @ivar port: its port, once L{start} has run.
    @ivar queries: every question asked, as C{(name, type, askedForAD)}.
    """

    def __init__(self, validating: bool = False) -> None:
        self.zone = _Zone()
        self.factory = _Factory(self.zone, validating)
        self.port = None
        self._ports: list = []

    @property
    def validating(self) -> bool:
        return self.factory.validating

    @validating.setter
    def validating(self, value: bool) -> None:
        self.factory.validating = value

    @property
    def queries(self) -> list:
        return self.factory.queries

    def add(self, name: str, record, secure: bool = True, type: int | None = None) -> None:
        """
        Add a record.

        @param name: its owner name.
        @param record: a twisted.names record (C{dns.Record_MX(10,
            b"mx.example.com")}, C{dns.Record_A("127.0.0.1")}, ...), or
            L{tlsaRecord}'s.
        @param secure: whether a validating server calls it secure.
        @param type: the record type, if C{record} has none (TLSA).
        """
        self.zone.add(name.encode("ascii"), type if type is not None else record.TYPE, record, secure)

    def clear(self, name: str, type: int) -> None:
        """
        Remove the records of one name and type.
        """
        self.zone.records.pop((name.encode("ascii").lower().rstrip(b"."), type), None)

    def start(self, reactor=None) -> tuple[str, int]:
        """
        Listen on a free port of 127.0.0.1, UDP and TCP.

        @return: C{("127.0.0.1", port)}.
        """
        if reactor is None:
            from twisted.internet import reactor
        for _ in range(20):
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(self.factory), interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, self.factory, interface="127.0.0.1")
            except Exception:
                udp.stopListening()
                continue
            self._ports = [udp, tcp]
            self.port = port
            return ("127.0.0.1", port)
        raise RuntimeError("no free port for the DNS server")

    def stop(self) -> defer.Deferred:
        """
        Stop listening.
        """
        ports, self._ports = self._ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
