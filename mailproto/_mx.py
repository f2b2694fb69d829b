# -*- test-case-name: mailproto.test.test_mx -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Mail routing: from a recipient's domain to the hosts to try, in order
(RFC 5321 section 5.1).

L{MXCalculator.getRoute} asks the DNS for the domain's MX records and for
the addresses (A and AAAA) of each mail exchanger and answers with a
L{Destination}: the usable hosts, best first, each with its addresses.
Along the way:

  - MX records of equal preference are put in random order (RFC 5321
    requires it); the random source can be chosen, for tests.
  - A domain without MX records is its own, implicit, mail exchanger of
    preference 0 (RFC 5321 section 5.1), if
    L{MXCalculator.fallbackToDomain} allows it.
  - A null MX (a single MX record of preference 0 pointing to the root,
    RFC 7505) means the domain accepts no mail: L{NullMX}.
  - A domain that does not exist (NXDOMAIN) is a permanent failure,
    L{NoSuchDomain}; a DNS server failure or a time-out is a temporary one,
    L{DNSTemporaryFailure}.  Each routing error says which with its
    C{permanent} attribute.
  - CNAME records are followed, in the answers a resolver gives and by new
    queries, up to a limit (L{CanonicalNameChainTooLong}) and never in a
    circle (L{CanonicalNameLoop}).
  - Mail exchangers that are IP addresses, the root, or names with no
    address are left out; if none is left, the failure is temporary.
  - Hosts that failed recently (L{MXCalculator.markBad}) are moved to the
    end, not dropped, until their time-out passes.
  - A domain that is an address literal (C{[192.0.2.1]},
    C{[IPv6:2001:db8::1]}) is routed to that address without the DNS.

L{MXCalculator.getMX} is twisted.mail's method, kept for code that wants a
single C{Record_MX}.

Host and domain names are C{str}: ASCII, lower case, without a final dot
(internationalized domain names are converted to their A-labels).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random as _random
import socket

from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.logger import Logger
from twisted.names import dns, error

_log = Logger()


class MailRoutingError(Exception):
    """
    Mail for a domain cannot be routed.

    @cvar permanent: whether retrying later cannot help, so that the
        message should bounce (C{5xx}) rather than wait in the queue
        (C{4xx}).
    @ivar domain: the domain being routed, or C{None} if unknown.
    @type domain: C{str} or C{None}
    """

    permanent = False
    domain: str | None = None


class _DomainFailure(MailRoutingError, DNSLookupError):
    """
    A routing failure about a domain, with an optional reason.  It is also
    a C{twisted.internet.error.DNSLookupError} (an C{IOError}), as
    twisted.mail's C{getMX} failures were, so that errbacks that trap
    those trap it.

    @ivar reason: the resolver's exception, or a text, or C{None}.
    """

    reason: object = None

    def __init__(self, domain: str, *reason: object) -> None:
        """
        @param domain: the domain.
        @param reason: at most one: the exception of the resolver, or a
            text.
        """
        Exception.__init__(self, domain, *reason)
        self.domain = domain
        self.reason = reason[0] if reason else None

    def __reduce__(self):
        return (type(self), self.args)


class NullMX(_DomainFailure):
    """
    The domain publishes a null MX (RFC 7505): it accepts no mail.  A relay
    bounces such mail with C{556 5.1.10}.
    """

    permanent = True

    def __str__(self) -> str:
        return f"{self.domain} does not accept mail (null MX)"


class NoSuchDomain(_DomainFailure):
    """
    The domain does not exist (NXDOMAIN), or is not a domain name or
    address literal mail can be sent to.
    """

    permanent = True

    def __str__(self) -> str:
        return f"no such domain: {self.domain}" + (f" ({self.reason})" if isinstance(self.reason, str) else "")


class NoMailExchange(_DomainFailure):
    """
    The domain has no MX records and L{MXCalculator.fallbackToDomain} is
    false, so that its own address is not used.
    """

    permanent = True

    def __str__(self) -> str:
        return f"no MX records for {self.domain}"


class DNSTemporaryFailure(_DomainFailure):
    """
    The DNS could not answer now (server failure, time-out, ...), or no mail
    exchanger of the domain has an address: trying again later may work.

    @ivar reason: the resolver's exception, or a text.
    """

    permanent = False

    def __str__(self) -> str:
        reason = self.reason if isinstance(self.reason, str) else repr(self.reason)
        return f"temporary DNS failure for {self.domain}: {reason}"


class CanonicalNameLoop(MailRoutingError):
    """
    The CNAME records of a name lead back to it.  As in twisted.mail, the
    argument is the CNAME record found to close the loop.

    A DNS misconfiguration that can be fixed: the failure is temporary.

    @ivar record: the C{Record_CNAME}.
    """

    def __init__(self, record: object = None, domain: str | None = None) -> None:
        """
        @param record: the CNAME record.
        @param domain: the domain being routed.
        """
        super().__init__(record)
        self.record = record
        self.domain = domain


class CanonicalNameChainTooLong(MailRoutingError):
    """
    More CNAME records were met, one after the other, than allowed.  As in
    twisted.mail, the argument is the first CNAME record not followed.

    The failure is temporary.

    @ivar record: the C{Record_CNAME}.
    """

    def __init__(self, record: object = None, domain: str | None = None) -> None:
        """
        @param record: the CNAME record.
        @param domain: the domain being routed.
        """
        super().__init__(record)
        self.record = record
        self.domain = domain


@dataclasses.dataclass(frozen=True)
class Candidate:
    """
    One host to try for a L{Destination}.

    @ivar preference: the MX preference (0 for an implicit MX or an address
        literal).
    @ivar host: the mail exchanger's name, or for an address literal the
        address.
    @ivar addresses: its addresses, IPv4 ones (A records, in the DNS's
        order) first, then IPv6 ones (AAAA); never empty.
    @type addresses: C{tuple} of C{str}
    @ivar bad: whether the host was marked bad (L{MXCalculator.markBad})
        and its time-out had not passed when the route was computed.
    """

    preference: int
    host: str
    addresses: tuple[str, ...]
    bad: bool = False


@dataclasses.dataclass(frozen=True)
class Destination:
    """
    Where mail for a domain goes: the hosts to try, in order.

    A L{Destination} is a sequence of L{Candidate}s: hosts by MX preference
    (ties in random order), then the hosts marked bad in the same order.
    It is never empty.

    @ivar domain: the domain routed (normalized: lower case, A-labels, no
        final dot; an address literal keeps its brackets).
    @ivar candidates: the hosts.
    @type candidates: C{tuple} of L{Candidate}
    @ivar implicit: whether the domain has no MX records, so that its only
        candidate is the domain itself, or the name its CNAME records lead
        to (RFC 5321 section 5.1).
    @ivar literal: whether the domain was an address literal.
    """

    domain: str
    candidates: tuple[Candidate, ...]
    implicit: bool = False
    literal: bool = False

    def __iter__(self):
        return iter(self.candidates)

    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, index):
        return self.candidates[index]


def _hostKey(name) -> str:
    """
    Normalize a host or domain name as it is compared and kept: C{str},
    lower case, no final dot.

    @param name: a C{str}, C{bytes} or C{twisted.names.dns.Name}.
    """
    if isinstance(name, dns.Name):
        name = name.name
    if isinstance(name, bytes):
        name = name.decode("ascii", "backslashreplace")
    name = str(name).strip().lower()
    return name[:-1] if name.endswith(".") else name


def _domainName(domain) -> str:
    """
    Normalize a domain to route: as L{_hostKey}, with internationalized
    names converted to A-labels.

    @raise NoSuchDomain: if C{domain} cannot be a domain name.
    """
    if isinstance(domain, bytes):
        try:
            domain = domain.decode("utf-8")
        except UnicodeDecodeError:
            raise NoSuchDomain(repr(domain), "not UTF-8") from None
    name = _hostKey(domain)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise NoSuchDomain(name, "not a valid internationalized domain name") from None
    if not name:
        raise NoSuchDomain(name, "empty domain")
    return name


def _addressLiteral(domain: str) -> str | None:
    """
    The address of an address literal domain (RFC 5321 section 4.1.3).

    @return: the address, or C{None} if C{domain} is not in brackets.
    @raise NoSuchDomain: if it is in brackets but not an IPv4 or IPv6
        address literal.
    """
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return ipaddress.IPv6Address(inner[5:]).compressed
        return ipaddress.IPv4Address(inner).compressed
    except ValueError:
        raise NoSuchDomain(domain, "not an IPv4 or IPv6 address literal") from None


def _isAddress(host: str) -> bool:
    """
    Whether a mail exchanger's name is in fact an IP address (which RFC 5321
    section 5.1 does not allow).
    """
    if host.startswith("["):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# The problem of an address lookup the resolver does not implement.
_UNSUPPORTED = "not supported by the resolver"


def _isNXDOMAIN(exception: BaseException) -> bool:
    """
    Whether a resolver's failure says the name does not exist.
    """
    return isinstance(exception, (error.DNSNameError, error.AuthoritativeDomainError))


def _addressOf(record) -> str | None:
    """
    The address of an A or AAAA record, as text.
    """
    if record.TYPE == dns.A:
        return socket.inet_ntop(socket.AF_INET, record.address)
    if record.TYPE == dns.AAAA:
        return ipaddress.IPv6Address(record.address).compressed
    return None


class MXCalculator:
    """
    Finds the hosts to deliver a domain's mail to, and remembers which
    hosts failed lately.

    @ivar resolver: the C{IResolver}
        asked; by default the one of
        C{twisted.names.client.createResolver}, made when first needed.
    @ivar clock: the C{IReactorTime}
        that dates bad hosts; by default the reactor.
    @ivar random: what puts MX records of equal preference in random order:
        an object with a C{shuffle} method, like C{random.Random}.
    @ivar badMXs: the hosts marked bad, each with the time (per C{clock})
        at which it may be tried first again.
    @type badMXs: C{dict} of C{str} to C{float}
    @cvar timeOutBadMX: how long, in seconds, a host marked bad goes last.
    @cvar fallbackToDomain: whether a domain without MX records gets its
        mail at its own address (RFC 5321 section 5.1); if false, such a
        domain fails with L{NoMailExchange}.
    """

    timeOutBadMX = 60 * 60
    fallbackToDomain = True

    def __init__(self, resolver=None, clock=None, random=None) -> None:
        """
        @param resolver: see L{MXCalculator.resolver}; C{None} for the
            default.
        @param clock: see L{MXCalculator.clock}; C{None} for the reactor.
        @param random: see L{MXCalculator.random}; C{None} for a new
            C{random.Random}.
        """
        self.badMXs: dict[str, float] = {}
        self._resolver = resolver
        self._clock = clock
        self.random = _random.Random() if random is None else random

    @property
    def resolver(self):
        if self._resolver is None:
            from twisted.names.client import createResolver

            self._resolver = createResolver()
        return self._resolver

    @resolver.setter
    def resolver(self, resolver) -> None:
        self._resolver = resolver

    @property
    def clock(self):
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    @clock.setter
    def clock(self, clock) -> None:
        self._clock = clock

    def markBad(self, mx) -> None:
        """
        Record that a host does not work now: it goes last for
        L{timeOutBadMX} seconds.

        @param mx: the host's name (C{str} or C{bytes}; case and a final dot
            do not matter).
        """
        self.badMXs[_hostKey(mx)] = self.clock.seconds() + self.timeOutBadMX

    def markGood(self, mx) -> None:
        """
        Record that a host works (again).

        @param mx: the host's name.
        """
        self.badMXs.pop(_hostKey(mx), None)

    def _isBad(self, host: str) -> bool:
        """
        Whether a host is marked bad and its time-out has not passed;
        forget it if it has.
        """
        expiry = self.badMXs.get(host)
        if expiry is None:
            return False
        if self.clock.seconds() >= expiry:
            del self.badMXs[host]
            return False
        return True

    def getMX(self, domain, maximumCanonicalChainLength=3) -> defer.Deferred:
        """
        Find the best mail exchanger of a domain, as twisted.mail did: the
        first host of L{getRoute}'s answer.

        Unlike twisted.mail, a mail exchanger without an address is not
        chosen, a domain that does not exist is not looked up again as a
        host, and a null MX fails.

        @param domain: the domain (C{str} or C{bytes}).
        @param maximumCanonicalChainLength: how many CNAME records to follow,
            one after the other.
        @return: a C{Deferred} that fires with a
            C{Record_MX}.  For a domain
            without MX records (and for an address literal) the record
            names the first address of the domain, as twisted.mail's did.
            It fails like L{getRoute}'s.
        """
        return self.getRoute(domain, maximumCanonicalChainLength).addCallback(_bestRecord)

    def getRoute(self, domain, maximumCanonicalChainLength=3) -> defer.Deferred:
        """
        Find the hosts to try for a domain's mail, in order.

        @param domain: the domain (C{str} or C{bytes}; an internationalized
            name is converted to A-labels), or an address literal.
        @param maximumCanonicalChainLength: how many CNAME records to follow,
            one after the other, for each name looked up.
        @return: a C{Deferred} that fires with a L{Destination}, or fails
            with a L{MailRoutingError}: L{NullMX}, L{NoSuchDomain},
            L{NoMailExchange}, L{DNSTemporaryFailure},
            L{CanonicalNameLoop} or L{CanonicalNameChainTooLong}.
            Cancelling it cancels the queries under way.
        """
        return defer.Deferred.fromCoroutine(self._route(domain, maximumCanonicalChainLength))

    async def _route(self, domain, maximum: int) -> Destination:
        name = _domainName(domain)
        literal = _addressLiteral(name)
        if literal is not None:
            return Destination(name, (Candidate(0, literal, (literal,), self._isBad(literal)),), literal=True)

        try:
            canonical, records = await self._follow(self.resolver.lookupMailExchange, dns.MX, name, maximum, name)
        except (defer.CancelledError, MailRoutingError):
            raise
        except Exception as e:
            raise _failureFor(name, e) from e

        if len(records) == 1 and records[0].preference == 0 and _hostKey(records[0].name) in ("", "."):
            raise NullMX(name)

        implicit = not records
        if implicit:
            if not self.fallbackToDomain:
                raise NoMailExchange(name)
            _log.debug("No MX records for {domain}: using {host} itself", domain=name, host=canonical)
            exchanges = [(0, canonical)]
        else:
            exchanges = self._order(name, records)

        found = await _gather([self._addresses(host, maximum, name) for preference, host in exchanges])
        candidates = []
        problems = []
        for (preference, host), (addresses, problem) in zip(exchanges, found):
            if addresses:
                candidates.append(Candidate(preference, host, addresses, self._isBad(host)))
            else:
                _log.info("Mail exchanger {host} of {domain} has no address", host=host, domain=name)
                problems.append(f"{host}: {problem or 'no address'}")
        if not candidates:
            raise DNSTemporaryFailure(
                name, "no usable mail exchanger" + (f" ({'; '.join(problems)})" if problems else "")
            )
        candidates.sort(key=lambda candidate: candidate.bad)
        return Destination(name, tuple(candidates), implicit=implicit)

    def _order(self, domain: str, records) -> list[tuple[int, str]]:
        """
        The usable mail exchangers of MX records, by preference, ties
        shuffled.

        @return: C{(preference, host)} pairs, each host once.
        """
        best: dict[str, int] = {}
        for record in records:
            host = _hostKey(record.name)
            if host in ("", "."):
                _log.info("Ignoring a null MX of {domain} among other MX records", domain=domain)
                continue
            if _isAddress(host):
                _log.info("Ignoring MX {host} of {domain}: an address, not a host name", host=host, domain=domain)
                continue
            if host not in best or record.preference < best[host]:
                best[host] = record.preference
        exchanges = []
        for preference in sorted(set(best.values())):
            tied = sorted(host for host, p in best.items() if p == preference)
            if len(tied) > 1:
                self.random.shuffle(tied)
            exchanges.extend((preference, host) for host in tied)
        return exchanges

    async def _addresses(self, host: str, maximum: int, domain: str) -> tuple[tuple[str, ...], str | None]:
        """
        Look up the IPv4 and IPv6 addresses of a host, at the same time.

        @return: the addresses (IPv4 first), and what went wrong, if
            something did, as text.
        """
        lookupA = getattr(self.resolver, "lookupAddress", None)
        lookupAAAA = getattr(self.resolver, "lookupIPV6Address", None)
        if lookupA is None or lookupAAAA is None:
            return await self._addressByName(host)
        lookups = [
            self._addressesOfType(lookupA, dns.A, host, maximum, domain),
            self._addressesOfType(lookupAAAA, dns.AAAA, host, maximum, domain),
        ]
        results = await _gather(lookups)
        if all(problem == _UNSUPPORTED for _, problem in results):
            return await self._addressByName(host)
        addresses: list[str] = []
        problems = []
        for found, problem in results:
            addresses.extend(a for a in found if a not in addresses)
            if problem:
                problems.append(problem)
        return tuple(addresses), "; ".join(problems) or None

    async def _addressesOfType(self, lookup, recordType: int, host: str, maximum: int, domain: str):
        try:
            canonical, records = await self._follow(lookup, recordType, host, maximum, domain)
        except defer.CancelledError:
            raise
        except NotImplementedError:
            return (), _UNSUPPORTED
        except Exception as e:
            if _isNXDOMAIN(e):
                return (), "no such host"
            return (), f"{dns.QUERY_TYPES.get(recordType)} lookup failed: {e!r}"
        return tuple(a for a in map(_addressOf, records) if a is not None), None

    async def _addressByName(self, host: str) -> tuple[tuple[str, ...], str | None]:
        """
        The address of a host from a resolver that has no A and AAAA
        lookups (a stub written for twisted.mail, which needed only
        C{lookupMailExchange} and C{getHostByName}): its
        C{getHostByName}, or else the name itself, left to the connection
        to resolve.
        """
        getHostByName = getattr(self.resolver, "getHostByName", None)
        if getHostByName is None:
            return (host,), None
        try:
            address = await getHostByName(host)
        except defer.CancelledError:
            raise
        except Exception as e:
            if _isNXDOMAIN(e):
                return (), "no such host"
            return (), f"getHostByName failed: {e!r}"
        return ((address.decode("ascii") if isinstance(address, bytes) else address),), None

    async def _follow(self, lookup, recordType: int, name: str, maximum: int, domain: str):
        """
        Look up records of a type, following CNAME records: in the answers
        when they are there (as a recursive resolver gives them), by another
        query when not.

        @param lookup: the resolver's method, like C{lookupMailExchange}.
        @param recordType: the type wanted, like C{dns.MX}.
        @param name: the name to look up.
        @param maximum: how many CNAME records may be followed.
        @param domain: the domain being routed, for errors.
        @return: the canonical name and the payloads of its records of the
            type (empty if it has none).
        @raise CanonicalNameLoop: if the CNAME records loop.
        @raise CanonicalNameChainTooLong: if there are more than C{maximum}
            of them.
        """
        seen = {name}
        current = name
        while True:
            answers, authority, additional = await lookup(current)
            asked = current
            records: dict[str, list] = {}
            for header in answers:
                records.setdefault(_hostKey(header.name), []).append(header.payload)
            while True:
                here = records.get(current, [])
                wanted = [r for r in here if r.TYPE == recordType]
                if wanted:
                    return current, wanted
                aliases = [r for r in here if r.TYPE == dns.CNAME]
                if not aliases:
                    if current == asked:
                        return current, []
                    break  # Ask about the canonical name itself.
                target = _hostKey(aliases[0].name)
                if target in seen:
                    raise CanonicalNameLoop(aliases[0], domain)
                if len(seen) > maximum:
                    raise CanonicalNameChainTooLong(aliases[0], domain)
                seen.add(target)
                current = target


def _failureFor(domain: str, exception: Exception) -> MailRoutingError:
    """
    The routing error for a failed MX lookup.
    """
    if _isNXDOMAIN(exception):
        return NoSuchDomain(domain, exception)
    return DNSTemporaryFailure(domain, exception)


async def _gather(coroutines) -> list:
    """
    Run coroutines at the same time and wait for all of their results; the
    first failure (unwrapped) if one fails.
    """
    deferreds = [defer.Deferred.fromCoroutine(c) for c in coroutines]
    try:
        return await defer.gatherResults(deferreds, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()


def _bestRecord(destination: Destination):
    """
    The C{Record_MX} of a destination's first
    host, as twisted.mail's C{getMX} gave it.
    """
    first = destination.candidates[0]
    if destination.implicit or destination.literal:
        return dns.Record_MX(first.preference, first.addresses[0])
    return dns.Record_MX(first.preference, first.host)
