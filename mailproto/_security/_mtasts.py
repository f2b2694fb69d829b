# -*- test-case-name: mailproto.test.test_mtasts -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
MTA-STS (RFC 8461): whether a recipient domain requires its mail to be
relayed over TLS to authenticated mail exchangers, and which.

A domain announces a policy with a TXT record at C{_mta-sts.<domain>}
(C{v=STSv1; id=...}) and publishes it over HTTPS at
C{https://mta-sts.<domain>/.well-known/mta-sts.txt}.  L{parsePolicy} reads
that file into an L{STSPolicy}; L{discoverRecord} finds the TXT record's
id; L{PolicyFetcher} fetches the file; L{MTASTSPolicies} puts them
together, with a cache, and answers each question "what is this domain's
policy now?" with an L{STSLookup}.

The states of a domain's policy in L{MTASTSPolicies}
====================================================

  - B{none known}: nothing cached.  The TXT record is looked up; with no
    (valid) record the domain has no policy and that is not a failure;
    with one, the policy is fetched.
  - B{cached, fresh}: a policy is cached, it has not expired, and it was
    fetched less than L{MTASTSPolicies.refreshInterval} (or half its
    C{max_age}, if shorter) ago.  The TXT record is still looked up each
    time: if its id is the cached policy's, the cached policy is used
    without a fetch (a cache hit); if it changed, the policy is fetched.
  - B{cached, due for refresh}: as fresh, but older than that: the policy
    is fetched again even if the id is the same, so that a policy in use
    keeps being renewed before it expires (RFC 8461 section 10.2).
  - B{expired}: a cached policy older than its C{max_age} is never used
    again (RFC 8461 section 5.1); it is dropped, and the domain is in the
    first state.

What each outcome of a lookup does:

  - A policy fetched and valid replaces the cache (with the TXT record's
    id and the time it was fetched): logged as I{fetched} or I{refreshed}.
    A policy of C{mode: none} is cached like any other, but the lookup
    answers with no policy: it is how a domain withdraws one.
  - A failure (a DNS failure other than "no such name" or "no record", a
    fetch that failed, a policy that is not valid) never replaces a cached
    policy that has not expired: the cached policy is used and the failure
    is reported beside it (its RFC 8460 result type in
    L{STSLookup.resultType}), logged as I{kept cached because refresh
    failed}.  With nothing cached, the lookup has no policy and reports the
    failure.
  - No TXT record (or several, or a malformed one) leaves a cached policy
    in place until it expires (RFC 8461 section 3.1); with nothing cached,
    the domain has no policy.

Concurrent lookups of the same domain share one DNS query and one fetch.

The HTTPS fetch: name resolution and the seam for tests
=======================================================

The policy host C{mta-sts.<domain>} is resolved through the same
C{IResolver} that is asked for the TXT record (its A and AAAA records), not
through the operating system: everything the relay learns about a
destination comes from one DNS source, and a test needs only one DNS
server.  The rest is Twisted's web client (C{Agent}, with
C{BrowserLikePolicyForHTTPS}: the certificate must be valid for
C{mta-sts.<domain>} and issued by the given trust root, the platform's by
default), connecting to C{httpsPort} (443 but in tests).  Redirects are not
followed, only C{200} with a C{Content-Type} of C{text/plain} is accepted,
bodies over 64 KiB are cut off and refused, and the whole fetch is
cancelled after a time-out measured on an injectable clock.

Failures are named by their RFC 8460 result types: L{WEBPKI_INVALID} for
TLS and certificate problems, L{FETCH_ERROR} for everything else that
prevents getting the file (and for DNS failures), L{POLICY_INVALID} for a
file that is not a valid policy.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import socket
import tempfile
from typing import Any

from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IReactorPluggableNameResolver
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.names import dns, error as dnserror
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

POLICY_INVALID = "sts-policy-invalid"
"""RFC 8460 result type: the policy file is not a valid policy."""

FETCH_ERROR = "sts-policy-fetch-error"
"""RFC 8460 result type: the policy could not be fetched (unreachable,
timed out, not C{200}, wrong content type, too large), or the DNS failed."""

WEBPKI_INVALID = "sts-webpki-invalid"
"""RFC 8460 result type: the policy host's TLS connection or certificate
could not be authenticated."""

MODES = ("enforce", "testing", "none")
"""The policy modes of RFC 8461 section 3.2."""

MAX_AGE_LIMIT = 31557600
"""The largest C{max_age} allowed, in seconds (about a year)."""

MAX_POLICY_SIZE = 64 * 1024
"""The largest policy file accepted, in bytes (RFC 8461 section 3.3)."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PATTERN = re.compile(rf"(?:\*\.)?{_DOMAIN.pattern}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")

# RFC 8461 section 3.1: a TXT record is an STSv1 record if it begins so.
_STS_VERSION = re.compile(r"v[ \t]*=[ \t]*STSv1(?=[ \t;]|$)")
_TXT_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})[ \t]*=[ \t]*([\x21-\x3a\x3c\x3e-\x7e]+)")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")


class PolicyError(Exception):
    """
    An MTA-STS policy could not be had.

    @ivar resultType: the RFC 8460 result type: L{POLICY_INVALID},
        L{FETCH_ERROR} or L{WEBPKI_INVALID}.
    @ivar detail: what went wrong, on one line, for logs and reports.
    """

    def __init__(self, resultType: str, detail: str) -> None:
        Exception.__init__(self, resultType, detail)
        self.resultType = resultType
        self.detail = " ".join(detail.split())

    def __str__(self) -> str:
        return f"{self.resultType}: {self.detail}"


def _invalid(detail: str) -> PolicyError:
    return PolicyError(POLICY_INVALID, detail)


def _normalizePattern(text: str) -> str | None:
    """
    An C{mx} pattern in the form it is compared in: lower case, A-labels,
    no final dot; C{None} if it is not a domain name, optionally preceded
    by C{*.}.
    """
    pattern = text.lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if not pattern.isascii():
        wildcard = pattern.startswith("*.")
        try:
            pattern = ("*." if wildcard else "") + pattern[2 if wildcard else 0 :].encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(pattern) > 255 or _PATTERN.fullmatch(pattern) is None:
        return None
    return pattern


def normalizeDomain(domain: str | bytes) -> str | None:
    """
    A domain name in the form MTA-STS uses it: lower case, A-labels, no
    final dot.

    @param domain: a domain name.
    @return: the name, or C{None} if it is not a domain name (an address
        literal, for example).
    """
    if isinstance(domain, bytes):
        try:
            domain = domain.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if domain.startswith("*"):
        return None
    return _normalizePattern(domain)


@dataclasses.dataclass(frozen=True)
class STSPolicy:
    """
    An MTA-STS policy (RFC 8461 section 3.2), as fetched.

    @ivar mode: C{"enforce"}, C{"testing"} or C{"none"}.
    @ivar mx: the patterns of the allowed mail exchangers, lower case,
        A-labels, without a final dot; a pattern may begin with C{*.}.
    @ivar maxAge: how long, in seconds from C{fetched}, the policy may be
        used.
    @ivar id: the id of the TXT record it was fetched under, or C{None}.
    @ivar fetched: when it was fetched, in seconds since the epoch (of the
        clock that fetched it).
    """

    mode: str
    mx: tuple[str, ...]
    maxAge: int
    id: str | None = None
    fetched: float = 0.0

    @property
    def expires(self) -> float:
        """
        When the policy stops being usable: C{fetched + maxAge}.
        """
        return self.fetched + self.maxAge

    def matches(self, host: str) -> bool:
        """
        Whether a mail exchanger is one the policy allows (RFC 8461 section
        4.1): its name equals a pattern, or a pattern C{*.rest} and the name
        is exactly one label followed by C{rest}.  Case and a final dot
        do not matter.

        @param host: the mail exchanger's name, as in the MX record.
        @return: whether it matches one of L{mx}.
        """
        name = normalizeDomain(host)
        if name is None:
            return False
        label, _, parent = name.partition(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                if parent and parent == pattern[2:]:
                    return True
            elif pattern == name:
                return True
        return False

    def toText(self) -> bytes:
        """
        @return: the policy as a policy file (LF line ends), which
            L{parsePolicy} reads back to an equal policy (but for C{id} and
            C{fetched}, which are not part of the file).
        """
        lines = ["version: STSv1", f"mode: {self.mode}"]
        lines.extend(f"mx: {pattern}" for pattern in self.mx)
        lines.append(f"max_age: {self.maxAge}")
        return ("\n".join(lines) + "\n").encode("ascii")

    def toJSON(self) -> dict[str, Any]:
        """
        @return: the policy as a JSON-ready C{dict}, which L{fromJSON} reads
            back.
        """
        return {"mode": self.mode, "mx": list(self.mx), "maxAge": self.maxAge, "id": self.id, "fetched": self.fetched}

    @classmethod
    def fromJSON(cls, data: Any) -> STSPolicy:
        """
        Check and read back what L{toJSON} made.

        @param data: the C{dict}, as loaded from JSON.
        @return: the policy.
        @raise ValueError: if C{data} is not a valid policy.
        """
        if not isinstance(data, dict):
            raise ValueError("not an object")
        mode, mx, maxAge, id, fetched = (data.get(key) for key in ("mode", "mx", "maxAge", "id", "fetched"))
        if mode not in MODES:
            raise ValueError(f"bad mode {mode!r}")
        if not isinstance(mx, list) or not all(isinstance(p, str) and _normalizePattern(p) == p for p in mx):
            raise ValueError(f"bad mx {mx!r}")
        if not mx and mode != "none":
            raise ValueError("no mx")
        if type(maxAge) is not int or not 0 <= maxAge <= MAX_AGE_LIMIT:
            raise ValueError(f"bad maxAge {maxAge!r}")
        if id is not None and (not isinstance(id, str) or _TXT_ID.fullmatch(id) is None):
            raise ValueError(f"bad id {id!r}")
        if type(fetched) not in (int, float):
            raise ValueError(f"bad fetched {fetched!r}")
        return cls(mode, tuple(mx), maxAge, id, float(fetched))


def _policyLines(text: bytes) -> list[tuple[str, str]]:
    """
    The C{key: value} lines of a policy file, in order.

    @raise PolicyError: if the file is not UTF-8 or a line has no colon.
    """
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("the policy is not UTF-8 text")
    fields = []
    for number, line in enumerate(decoded.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip(" \t"):
            continue
        key, colon, value = line.partition(":")
        if not colon or _FIELD_NAME.fullmatch(key) is None:
            raise _invalid(f"line {number} is not a 'key: value' field")
        fields.append((key, value.strip(" \t")))
    return fields


def parsePolicy(text: bytes) -> STSPolicy:
    """
    Read a policy file (RFC 8461 section 3.2).

    Lines end with CRLF or LF; blank lines are skipped; unknown keys are
    ignored; of a key other than C{mx} given more than once the first is
    used, as the RFC says.  C{version}, C{mode}, C{max_age} and at least
    one C{mx} are required, but for C{mode: none}, which may omit C{mx}
    (such a policy only withdraws a previous one).

    @param text: the file's content.
    @return: the policy, with no C{id} and C{fetched} of 0.
    @raise PolicyError: with L{POLICY_INVALID}, if the file is not a valid
        policy.
    """
    values: dict[str, str] = {}
    patterns: list[str] = []
    for key, value in _policyLines(text):
        if key == "mx":
            pattern = _normalizePattern(value)
            if pattern is None:
                raise _invalid(f"bad mx pattern {value[:80]!r}")
            patterns.append(pattern)
        elif key in ("version", "mode", "max_age"):
            values.setdefault(key, value)
    for key in ("version", "mode", "max_age"):
        if key not in values:
            raise _invalid(f"no {key} field")
    if values["version"] != "STSv1":
        raise _invalid(f"unknown version {values['version'][:40]!r}")
    mode = values["mode"]
    if mode not in MODES:
        raise _invalid(f"unknown mode {mode[:40]!r}")
    if _MAX_AGE.fullmatch(values["max_age"]) is None or int(values["max_age"]) > MAX_AGE_LIMIT:
        raise _invalid(f"bad max_age {values['max_age'][:40]!r}")
    if not patterns and mode != "none":
        raise _invalid("no mx field")
    return STSPolicy(mode, tuple(dict.fromkeys(patterns)), int(values["max_age"]))


def parseRecord(text: str) -> str:
    """
    Read an MTA-STS TXT record (RFC 8461 section 3.1): C{v=STSv1}, then
    C{;}-separated C{name=value} fields, one of them C{id} (1 to 32 letters
    and digits); other fields are ignored; a final C{;} is allowed.

    @param text: the record's text (its strings joined).
    @return: its id.
    @raise ValueError: if it is not a valid STSv1 record.
    """
    fields = text.split(";")
    if len(fields) > 1 and not fields[-1].strip(" \t"):
        fields.pop()
    if _STS_VERSION.fullmatch(fields[0].rstrip(" \t")) is None:
        raise ValueError("does not begin with v=STSv1")
    ids = []
    for field in fields[1:]:
        match = _TXT_FIELD.fullmatch(field.strip(" \t"))
        if match is None:
            raise ValueError(f"bad field {field.strip()[:40]!r}")
        if match.group(1) == "id":
            ids.append(match.group(2))
    if len(ids) != 1 or _TXT_ID.fullmatch(ids[0]) is None:
        raise ValueError("no single valid id")
    return ids[0]


def _isAbsence(exception: BaseException) -> bool:
    """
    Whether a resolver's failure says that the name does not exist.
    """
    return isinstance(exception, (dnserror.DNSNameError, dnserror.AuthoritativeDomainError))


def discoverRecord(resolver, domain: str) -> defer.Deferred[str | None]:
    """
    Look up the MTA-STS TXT record of a domain (RFC 8461 section 3.1).

    TXT records that do not begin with C{v=STSv1} are ignored; a record
    split in several strings is joined.  Several STSv1 records, or one
    that is not valid, count as none.

    @param resolver: the C{IResolver} asked for C{_mta-sts.<domain>}.
    @param domain: the domain, as L{normalizeDomain} gives it.
    @return: a C{Deferred} that fires with the record's id, or C{None} if
        the domain has no valid record (or the name does not exist).  It
        fails with L{PolicyError} (L{FETCH_ERROR}) if the DNS failed
        otherwise (time-out, server failure, ...).
    """

    def found(result) -> str | None:
        records = []
        for answer in result[0]:
            if answer.type == dns.TXT:
                data = b"".join(answer.payload.data).decode("latin-1")
                if _STS_VERSION.match(data):
                    records.append(data)
        if len(records) != 1:
            return None
        try:
            return parseRecord(records[0])
        except ValueError:
            return None

    def failed(reason: Failure) -> None:
        if _isAbsence(reason.value):
            return None
        raise PolicyError(FETCH_ERROR, f"DNS lookup of _mta-sts.{domain} failed: {_describe(reason.value)}")

    d = resolver.lookupText(f"_mta-sts.{domain}")
    d.addCallbacks(found, failed)
    return d


def _describe(exception: BaseException) -> str:
    """
    A short, one-line description of an exception.
    """
    text = " ".join(str(exception).split())
    name = type(exception).__name__
    return f"{name}: {text[:200]}" if text else name


@implementer(IHostResolution)
class _Resolution:
    """
    A name being resolved by L{_DNSNameResolver}; it cannot be cancelled.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _DNSNameResolver:
    """
    Resolves host names with the A and AAAA records of an C{IResolver}, so
    that C{HostnameEndpoint} connects where that resolver says.
    """

    def __init__(self, resolver) -> None:
        self._resolver = resolver

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        resolutionReceiver.resolutionBegan(_Resolution(hostName))
        queries = []
        if addressTypes is None or IPv4Address in addressTypes:
            queries.append(self._resolver.lookupAddress(hostName))
        if addressTypes is None or IPv6Address in addressTypes:
            queries.append(self._resolver.lookupIPV6Address(hostName))

        def answered(results) -> None:
            for success, result in results:
                for answer in result[0] if success else ():
                    if answer.type == dns.A:
                        address = socket.inet_ntop(socket.AF_INET, answer.payload.address)
                        resolutionReceiver.addressResolved(IPv4Address("TCP", address, portNumber))
                    elif answer.type == dns.AAAA:
                        address = socket.inet_ntop(socket.AF_INET6, answer.payload.address)
                        resolutionReceiver.addressResolved(IPv6Address("TCP", address, portNumber))
            resolutionReceiver.resolutionComplete()

        defer.DeferredList(queries, consumeErrors=True).addCallback(answered)
        return resolutionReceiver


@implementer(IReactorPluggableNameResolver)
class _ResolvingReactor:
    """
    A reactor whose C{nameResolver} is another: what C{Agent} is given so
    that its C{HostnameEndpoint}s resolve through L{_DNSNameResolver}.
    Everything else is the real reactor's.
    """

    def __init__(self, reactor, nameResolver) -> None:
        self._reactor = reactor
        self.nameResolver = nameResolver

    def installNameResolver(self, resolver):
        previous, self.nameResolver = self.nameResolver, resolver
        return previous

    def __getattr__(self, name: str):
        return getattr(self._reactor, name)


class _LimitedBody(Protocol):
    """
    Collects a response body of at most C{limit} bytes; beyond it, stops
    the transfer and fails.
    """

    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self._finished: defer.Deferred[bytes] | None = finished
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def _fire(self) -> defer.Deferred[bytes] | None:
        finished, self._finished = self._finished, None
        return finished

    def cancel(self) -> None:
        """
        Stop the transfer: the fetch was cancelled.
        """
        if self._fire() is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            finished = self._fire()
            self.transport.stopProducing()
            finished.errback(PolicyError(FETCH_ERROR, f"the policy is larger than {self._limit} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:
        finished = self._fire()
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self._parts))
        else:
            finished.errback(reason)


class _Discard(Protocol):
    """
    Refuses a response body: stops the transfer at once.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _classify(reason: Failure) -> PolicyError:
    """
    The L{PolicyError} for a failed fetch: L{WEBPKI_INVALID} if TLS or the
    certificate is the cause, else L{FETCH_ERROR}.
    """
    causes: list = [reason.value]
    leaves = []
    while causes:
        cause = causes.pop(0)
        if isinstance(cause, Failure):
            cause = cause.value
        nested = getattr(cause, "reasons", None)
        if isinstance(nested, list) and nested:
            # The web client's wrappers (ResponseFailed, ...) list causes.
            causes.extend(nested)
        elif isinstance(cause, PolicyError):
            return cause
        elif isinstance(cause, (SSL.Error, VerificationError, CertificateError)):
            return PolicyError(WEBPKI_INVALID, f"TLS failed: {_describe(cause)}")
        else:
            leaves.append(cause)
    return PolicyError(FETCH_ERROR, "; ".join(_describe(leaf) for leaf in leaves) or _describe(reason.value))


class PolicyFetcher:
    """
    Fetches policy files over HTTPS (RFC 8461 section 3.3).

    @cvar maxSize: the largest body accepted, in bytes.
    """

    maxSize = MAX_POLICY_SIZE

    def __init__(self, resolver, reactor=None, trustRoot=None, httpsPort: int = 443, timeout: float = 60.0, clock=None) -> None:
        """
        @param resolver: the C{IResolver} that resolves C{mta-sts.<domain>}
            (A and AAAA records).
        @param reactor: the reactor that connects; the global one if
            C{None}.
        @param trustRoot: the certificate authorities trusted, an
            C{IOpenSSLTrustRoot}; the platform's if C{None}.
        @param httpsPort: the port connected to: 443 but in tests.
        @param timeout: how long, in seconds, a fetch may take in all
            before it is cancelled.
        @param clock: the C{IReactorTime} that measures the time-out; the
            reactor if C{None}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._port = httpsPort
        self._timeout = timeout
        self._agent = Agent(_ResolvingReactor(reactor, _DNSNameResolver(resolver)), BrowserLikePolicyForHTTPS(trustRoot))

    def urlFor(self, domain: str) -> str:
        """
        @param domain: the policy domain, as L{normalizeDomain} gives it.
        @return: the URL of its policy file.
        """
        port = "" if self._port == 443 else f":{self._port}"
        return f"https://mta-sts.{domain}{port}/.well-known/mta-sts.txt"

    def fetch(self, domain: str) -> defer.Deferred[STSPolicy]:
        """
        Fetch and parse a domain's policy.

        @param domain: the policy domain, as L{normalizeDomain} gives it.
        @return: a C{Deferred} that fires with the policy (without C{id};
            C{fetched} 0), or fails with a L{PolicyError}.
        """
        url = self.urlFor(domain)
        d = self._agent.request(b"GET", url.encode("ascii"), Headers({b"User-Agent": [b"mailproto MTA-STS"]}))
        d.addCallback(self._readResponse, url)
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._timedOut)
        d.addCallback(parsePolicy)
        d.addErrback(self._failed)
        return d

    def _failed(self, reason: Failure) -> None:
        raise _classify(reason)

    def _timedOut(self, result, timeout: float):
        raise PolicyError(FETCH_ERROR, f"no policy within {timeout:g} seconds")

    def _readResponse(self, response, url: str) -> defer.Deferred[bytes]:
        """
        Check a response's status, type and length; read its body.
        """
        problem = None
        types = response.headers.getRawHeaders(b"content-type", [])
        if response.code != 200:
            problem = f"HTTP status {response.code} from {url}"
        elif len(types) != 1 or types[0].split(b";")[0].strip().lower() != b"text/plain":
            problem = f"content type {b', '.join(types).decode('latin-1')[:80]!r} is not text/plain"
        elif response.length is not UNKNOWN_LENGTH and response.length > self.maxSize:
            problem = f"the policy is larger than {self.maxSize} bytes ({response.length})"
        if problem is not None:
            response.deliverBody(_Discard())
            raise PolicyError(FETCH_ERROR, problem)
        body: _LimitedBody
        finished: defer.Deferred[bytes] = defer.Deferred(lambda d: body.cancel())
        body = _LimitedBody(finished, self.maxSize)
        response.deliverBody(body)
        return finished


@dataclasses.dataclass(frozen=True)
class STSLookup:
    """
    The answer to "what is this domain's MTA-STS policy now?".

    @ivar domain: the domain, as L{normalizeDomain} gives it (or as given,
        if it is not a domain name).
    @ivar policy: the policy to apply, C{None} if none (including a
        policy of C{mode: none}).
    @ivar resultType: C{None}, or the RFC 8460 result type of a failure to
        get the current policy (L{FETCH_ERROR}, L{WEBPKI_INVALID},
        L{POLICY_INVALID}); a cached policy may be given beside it.
    @ivar detail: what happened, on one line, for logs.
    @ivar fromCache: whether C{policy} (or its absence, for a cached
        C{mode: none}) comes from the cache rather than a fetch just made.
    """

    domain: str
    policy: STSPolicy | None
    resultType: str | None
    detail: str
    fromCache: bool


class _PolicyCache:
    """
    The policies known, by domain, kept in memory and, if a directory is
    given, one JSON file per domain in it.

    Files are written synchronously, in the reactor thread: a write happens
    only when a policy has been fetched (at most about once a day per
    domain), is a few hundred bytes, and must be done before the next
    lookup of the domain reads the cache; a thread would cost more than the
    C{fsync} it spares and bring writes of one domain out of order.
    """

    _log = Logger(namespace="mailproto.mta-sts")

    def __init__(self, directory: str | None) -> None:
        self._directory = directory
        self.policies: dict[str, STSPolicy] = {}
        if directory is not None:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._load()

    def _path(self, domain: str) -> str:
        return os.path.join(self._directory, domain + ".json")

    def _load(self) -> None:
        for name in sorted(os.listdir(self._directory)):
            path = os.path.join(self._directory, name)
            if name.startswith(".tmp-"):
                os.unlink(path)
                continue
            if not name.endswith(".json"):
                continue
            try:
                domain, policy = self._read(path)
                if normalizeDomain(domain) != domain or name != domain + ".json":
                    raise ValueError(f"domain {domain!r} does not match the file name")
            except (OSError, ValueError, UnicodeDecodeError) as e:
                self._log.warn("Removing corrupt MTA-STS cache file {path}: {problem}", path=path, problem=_describe(e))
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            self.policies[domain] = policy

    def _read(self, path: str) -> tuple[str, STSPolicy]:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_POLICY_SIZE * 4))
        if not isinstance(data, dict) or not isinstance(data.get("domain"), str):
            raise ValueError("no domain")
        return data["domain"], STSPolicy.fromJSON(data.get("policy"))

    def get(self, domain: str) -> STSPolicy | None:
        return self.policies.get(domain)

    def put(self, domain: str, policy: STSPolicy) -> None:
        """
        Keep a policy, and write it to its file (atomically: a temporary
        file, C{fsync}, rename, C{fsync} of the directory).  A failure to
        write is logged; the policy is still kept in memory.
        """
        self.policies[domain] = policy
        if self._directory is None:
            return
        data = json.dumps({"domain": domain, "policy": policy.toJSON()}).encode("ascii")
        try:
            fd, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self._directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, self._path(domain))
            except BaseException:
                os.unlink(temporary)
                raise
            self._syncDirectory()
        except OSError as e:
            self._log.error("Could not write the MTA-STS cache of {domain}: {problem}", domain=domain, problem=_describe(e))

    def remove(self, domain: str) -> None:
        """
        Forget a domain's policy, and remove its file.
        """
        if self.policies.pop(domain, None) is not None and self._directory is not None:
            try:
                os.unlink(self._path(domain))
            except FileNotFoundError:
                pass

    def _syncDirectory(self) -> None:
        fd = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class MTASTSPolicies:
    """
    The MTA-STS policies of recipient domains, discovered, fetched and
    cached as the module's docstring describes.

    @ivar stats: counters: C{"fetches"} (HTTPS fetches started),
        C{"cacheHits"} (lookups answered from the cache without a fetch
        because the TXT id was unchanged), and C{("fetchFailures",
        resultType)} (lookups that could not get the current policy, by
        RFC 8460 result type; a DNS failure counts as L{FETCH_ERROR}).
    @type stats: C{collections.Counter}
    @cvar refreshInterval: after how many seconds a cached policy is
        fetched again even if its TXT id has not changed (or after half
        its C{max_age}, if shorter).
    """

    refreshInterval = 24 * 60 * 60.0
    _log = Logger(namespace="mailproto.mta-sts")

    def __init__(
        self,
        resolver,
        cacheDirectory: str | None = None,
        *,
        reactor=None,
        trustRoot=None,
        httpsPort: int = 443,
        fetchTimeout: float = 60.0,
        clock=None,
    ) -> None:
        """
        @param resolver: the C{IResolver} asked for the TXT records and the
            addresses of the policy hosts.
        @param cacheDirectory: where the cache is kept, one JSON file per
            domain (made, mode 0700, if missing; read now); C{None} keeps it
            in memory only.
        @param reactor: the reactor that connects; the global one if
            C{None}.
        @param trustRoot: the C{IOpenSSLTrustRoot} policy hosts'
            certificates must chain to; the platform's if C{None}.
        @param httpsPort: the policy hosts' port: 443 but in tests.
        @param fetchTimeout: how long, in seconds, a fetch may take.
        @param clock: the C{IReactorTime} that dates policies and measures
            the fetch time-out; the reactor if C{None}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._resolver = resolver
        self._clock = reactor if clock is None else clock
        self._fetcher = PolicyFetcher(resolver, reactor, trustRoot, httpsPort, fetchTimeout, self._clock)
        self._cache = _PolicyCache(cacheDirectory)
        self._waiting: dict[str, list[defer.Deferred[STSLookup]]] = {}
        self.stats: collections.Counter = collections.Counter()

    def cached(self, domain: str) -> STSPolicy | None:
        """
        @param domain: a domain.
        @return: its cached policy, expired or not, or C{None}.
        """
        name = normalizeDomain(domain)
        return None if name is None else self._cache.get(name)

    def policyFor(self, domain: str) -> defer.Deferred[STSLookup]:
        """
        Find the policy to apply to mail for a domain.

        @param domain: the recipient domain.
        @return: a C{Deferred} that fires with an L{STSLookup}; it does not
            fail.
        """
        name = normalizeDomain(domain)
        if name is None:
            return defer.succeed(STSLookup(domain, None, None, f"{domain!r} is not a domain name", False))
        result: defer.Deferred[STSLookup] = defer.Deferred()
        waiting = self._waiting.get(name)
        if waiting is not None:
            waiting.append(result)
            return result
        self._waiting[name] = [result]
        lookup = defer.Deferred.fromCoroutine(self._lookup(name))
        lookup.addErrback(self._unexpected, name)
        lookup.addCallback(self._answer, name)
        return result

    def _answer(self, lookup: STSLookup, domain: str) -> None:
        for waiting in self._waiting.pop(domain):
            waiting.callback(lookup)

    def _unexpected(self, reason: Failure, domain: str) -> STSLookup:
        self._log.failure("MTA-STS lookup of {domain} failed unexpectedly", reason, domain=domain)
        return self._failed(domain, self._usable(domain), PolicyError(FETCH_ERROR, _describe(reason.value)))

    def _usable(self, domain: str) -> STSPolicy | None:
        """
        The cached policy of a domain, unless it expired, in which case it
        is dropped.
        """
        cached = self._cache.get(domain)
        if cached is not None and self._clock.seconds() >= cached.expires:
            self._log.info(
                "MTA-STS policy of {domain} (id {id}) expired; dropped from the cache",
                domain=domain,
                id=cached.id,
            )
            self._cache.remove(domain)
            return None
        return cached

    def _due(self, policy: STSPolicy) -> bool:
        """
        Whether a cached policy is due to be fetched again.
        """
        return self._clock.seconds() >= policy.fetched + min(self.refreshInterval, policy.maxAge / 2)

    async def _lookup(self, domain: str) -> STSLookup:
        try:
            id = await discoverRecord(self._resolver, domain)
        except PolicyError as e:
            return self._failed(domain, self._usable(domain), e)
        cached = self._usable(domain)
        if id is None:
            if cached is not None:
                return self._fromCache(domain, cached, "no valid MTA-STS TXT record; cached policy kept until it expires")
            return STSLookup(domain, None, None, "no MTA-STS policy (no valid TXT record)", False)
        if cached is not None and cached.id == id and not self._due(cached):
            self.stats["cacheHits"] += 1
            return self._fromCache(domain, cached, f"cached policy, id {id} unchanged")
        self.stats["fetches"] += 1
        try:
            policy = await self._fetcher.fetch(domain)
        except PolicyError as e:
            return self._failed(domain, self._usable(domain), e)
        return self._fetched(domain, dataclasses.replace(policy, id=id, fetched=self._clock.seconds()), cached)

    def _fetched(self, domain: str, policy: STSPolicy, previous: STSPolicy | None) -> STSLookup:
        self._cache.put(domain, policy)
        detail = f"mode {policy.mode}, max_age {policy.maxAge}, id {policy.id}"
        if previous is None:
            self._log.info("Fetched the MTA-STS policy of {domain}: {detail}", domain=domain, detail=detail)
        else:
            self._log.info(
                "Refreshed the MTA-STS policy of {domain}: {detail} (was id {previous})",
                domain=domain,
                detail=detail,
                previous=previous.id,
            )
        return STSLookup(domain, None if policy.mode == "none" else policy, None, "fetched policy, " + detail, False)

    def _fromCache(self, domain: str, policy: STSPolicy, detail: str) -> STSLookup:
        self._log.debug("MTA-STS policy of {domain}: {detail}", domain=domain, detail=detail)
        return STSLookup(domain, None if policy.mode == "none" else policy, None, detail, True)

    def _failed(self, domain: str, cached: STSPolicy | None, problem: PolicyError) -> STSLookup:
        self.stats["fetchFailures", problem.resultType] += 1
        if cached is not None:
            self._log.warn(
                "Kept the cached MTA-STS policy of {domain} (id {id}, expires in {left:.0f} s) because refresh failed: {problem}",
                domain=domain,
                id=cached.id,
                left=cached.expires - self._clock.seconds(),
                problem=str(problem),
            )
            detail = f"cached policy kept, refresh failed: {problem}"
            return STSLookup(domain, None if cached.mode == "none" else cached, problem.resultType, detail, True)
        self._log.warn("No MTA-STS policy for {domain}: {problem}", domain=domain, problem=str(problem))
        return STSLookup(domain, None, problem.resultType, str(problem), False)
