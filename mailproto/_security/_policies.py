# -*- test-case-name: mailproto.test.test_tlspolicies -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Which TLS the relay uses towards each destination, and why.

A destination (a recipient domain) has a configured mode:

  ============  =========================================================
  mode          the relay...
  ============  =========================================================
  none          never uses TLS
  may           uses TLS when offered, certificate unchecked
  encrypt       requires TLS, certificate unchecked
  verify        requires TLS with a certificate valid for the MX host
  dane          DANE (RFC 7672) where the domain's MX records and the
                host's TLSA records are DNSSEC-secure; else C{may}
  dane-only     DANE, and defers mail to hosts without it
  mta-sts       the domain's MTA-STS policy (RFC 8461) where it has one;
                else C{may}
  auto          DANE where it applies, else MTA-STS, else C{may}: the
                default
  ============  =========================================================

L{SecurityPolicies.resolve} turns a destination and its route into a
L{DestinationSecurity}: the L{HostTLS} for each host allowed (MTA-STS in
C{enforce} mode allows only the hosts its policy names), and the reply
for the mail when no host is allowed.  DANE wins over MTA-STS where both
apply (RFC 8461 section 2).  DANE is used only when the relay is given a
DNSSEC-validating resolver it trusts (L{SecurityPolicies}'s C{dnssec}):
without one, C{dane} is C{may} and C{dane-only} defers.

Each session's outcome (L{TLSOutcome}) goes to the TLS report store
(RFC 8460) under the policy that applied, and to the counters in
L{SecurityPolicies.stats}.

A message with C{TLS-Required: No} (RFC 8689) ignores MTA-STS
and DANE: its hosts are used with C{may}.  A message with REQUIRETLS goes
only to hosts whose certificate is checked (C{verify}, DANE, MTA-STS
C{enforce}).
"""

from __future__ import annotations

import collections
import dataclasses

from twisted.internet import defer
from twisted.logger import Logger

from mailproto._jobs import ownReply
from mailproto._replies import Reply
from mailproto._security._webpki import STARTTLS_NOT_SUPPORTED, TLSOutcome, WebPKICreator
from mailproto._smarthost import ENCRYPT, MAY, NONE, VERIFY, TLSPolicy

_log = Logger(namespace="mailproto.security")

DANE, DANE_ONLY, MTA_STS, AUTO = "dane", "dane-only", "mta-sts", "auto"
MODES = (NONE, MAY, ENCRYPT, VERIFY, DANE, DANE_ONLY, MTA_STS, AUTO)
"""Every configurable mode, as the module docstring describes them."""

MX_TYPE = 15


class HostTLS(TLSPolicy):
    """
    The TLS the relay uses with one host of a destination: a
    L{TLSPolicy} mode, and how the certificate is checked.

    @ivar source: where it comes from: C{"config"}, C{"mta-sts"},
        C{"dane"} or C{"none"} (no policy found: C{may}).
    @ivar dane: the host's TLSA lookup result (DANE), or C{None}.
    @ivar referenceNames: the names a DANE-TA certificate may have.
    @ivar enforce: for C{verify}, whether a failed check fails the
        session (C{False} for MTA-STS in C{testing} mode, which checks
        and reports but delivers).
    @ivar report: the TLS report's policy (L{PolicyDescription
        <mailproto._security._tlsrptstore.PolicyDescription>}) the sessions are
        counted under, or C{None}.
    """

    def __init__(self, mode: str, *, trustRoot=None, source: str = "config", dane=None, referenceNames=(), enforce: bool = True, report=None) -> None:
        TLSPolicy.__init__(self, mode, trustRoot)
        self.source = source
        self.dane = dane
        self.referenceNames = tuple(referenceNames)
        self.enforce = enforce
        self.report = report

    def __repr__(self) -> str:
        return f"HostTLS({self.mode!r}, source={self.source!r})"

    @property
    def required(self) -> bool:
        """
        Whether mail may only go over TLS: never for a policy that checks
        but does not enforce (MTA-STS C{testing} mode delivers anyway).
        """
        return self.enforce and TLSPolicy.required.fget(self)

    @property
    def validated(self) -> bool:
        """
        Whether the server's certificate is checked and a failed check
        stops the mail (what REQUIRETLS asks).
        """
        return self.enforce and (self.dane is not None or self.mode == VERIFY)

    def contextFor(self, hostname: str, outcome: TLSOutcome | None = None):
        """
        @param hostname: the host's name.
        @param outcome: where the session's TLS outcome is written.
        @return: the client TLS connection creator, or C{None} for no TLS.
        """
        if self.mode == NONE:
            return None
        outcome = outcome if outcome is not None else TLSOutcome()
        if self.dane is not None:
            from mailproto._security._dane import daneConnectionCreator

            # SNI is the TLSA records' base domain (RFC 7672 section 8.1):
            # the host's name, or the name it is an alias of.
            return daneConnectionCreator(self.dane, None, list(self.referenceNames) or [hostname], outcome=outcome)
        if self.mode == VERIFY:
            return WebPKICreator(hostname, outcome, self.trustRoot, self.enforce)
        return TLSPolicy.contextFor(self, hostname)


@dataclasses.dataclass
class DestinationSecurity:
    """
    What TLS a destination's hosts get.

    @ivar destination: the destination's key.
    @ivar hosts: the L{HostTLS} of each host allowed, by host name;
        C{None} when every host gets C{default}.
    @ivar default: what a host gets when C{hosts} is C{None}.
    @ivar refusal: the reply for the mail when no host may be used (the
        jobs are deferred with it), or C{None}.
    @ivar source: the policy that decided: C{"config"}, C{"dane"},
        C{"mta-sts"} or C{"none"}.
    """

    destination: str
    default: HostTLS | None
    hosts: dict | None = None
    refusal: Reply | None = None
    source: str = "config"

    def forHost(self, host: str | None) -> HostTLS | None:
        """
        @return: the L{HostTLS} for a host, or C{None} if it may not be
            used.
        """
        if self.hosts is None:
            return self.default
        return self.hosts.get((host or "").lower().rstrip("."))

    def allows(self, host: str | None) -> bool:
        return self.forHost(host) is not None


def staticSecurity(destination: str, tls: TLSPolicy) -> DestinationSecurity:
    """
    @return: the security of a destination whose policy is only a
        configured L{TLSPolicy}.
    """
    if not isinstance(tls, HostTLS):
        tls = HostTLS(tls.mode, trustRoot=tls.trustRoot)
    return DestinationSecurity(destination, tls)


def requireTLSRefusal() -> Reply:
    """
    @return: the reply for a REQUIRETLS message that cannot go with a
        checked certificate (RFC 8689 section 4.2.1).
    """
    return ownReply(550, "5.7.30", "REQUIRETLS support required: no host of the destination has a checked certificate")


class SecurityPolicies:
    """
    The relay's TLS policies: configured modes per domain and a default,
    MTA-STS, DANE and TLS reporting.

    @ivar stats: counters, by C{(source, outcome)}.
    """

    def __init__(self, default: str = AUTO, domains: dict | None = None, *, mtasts=None, dnssec=None, reports=None, trustRoot=None) -> None:
        """
        @param default: the mode of a domain not in C{domains}.
        @param domains: modes (or L{TLSPolicy}s) by domain.
        @param mtasts: the L{MTASTSPolicies
            <mailproto._security._mtasts.MTASTSPolicies>}, or C{None} (no
            MTA-STS).
        @param dnssec: a L{SecureLookup <mailproto._security._dns.SecureLookup>}
            through a validating resolver the relay trusts, or C{None} (no
            DANE).
        @param reports: the L{TLSReportStore
            <mailproto._security._tlsrptstore.TLSReportStore>}, or C{None}.
        @param trustRoot: the certificate authorities for C{verify} and
            MTA-STS; the platform's if C{None}.
        @raise ValueError: for an unknown mode.
        """
        from mailproto._smarthost import domainKey

        self.default = _checkMode(default)
        self.domains = {domainKey(d): (m if isinstance(m, TLSPolicy) else _checkMode(m)) for d, m in (domains or {}).items()}
        self.mtasts = mtasts
        self.dnssec = dnssec
        self.reports = reports
        self.trustRoot = trustRoot
        self.stats: collections.Counter = collections.Counter()

    def modeFor(self, destination: str):
        """
        @return: the configured mode (or L{TLSPolicy}) of a destination.
        """
        return self.domains.get(destination, self.default)

    def resolve(self, destination: str, route, ignorePolicies: bool = False) -> defer.Deferred:
        """
        @param destination: the destination's key (a domain).
        @param route: its L{Destination <mailproto._mx.Destination>}.
        @param ignorePolicies: whether MTA-STS and DANE are ignored (a
            message with C{TLS-Required: No}).
        @return: a C{Deferred} firing with its L{DestinationSecurity}.
        """
        mode = self.modeFor(destination)
        if isinstance(mode, TLSPolicy):
            return defer.succeed(staticSecurity(destination, mode))
        if mode in (NONE, MAY, ENCRYPT, VERIFY):
            return defer.succeed(DestinationSecurity(destination, HostTLS(mode, trustRoot=self.trustRoot)))
        if ignorePolicies or destination.startswith("["):
            # Asked to, or an address literal: no domain to look a policy
            # up for.
            return defer.succeed(DestinationSecurity(destination, HostTLS(MAY, source="none"), source="none"))
        return defer.ensureDeferred(self._resolvePolicies(destination, route, mode))

    async def _resolvePolicies(self, destination: str, route, mode: str) -> DestinationSecurity:
        if mode in (DANE, DANE_ONLY, AUTO):
            security = await self._dane(destination, route, mode)
            if security is not None:
                return security
        if mode in (MTA_STS, AUTO) and self.mtasts is not None:
            security = await self._mtasts(destination, route)
            if security is not None:
                return security
        return DestinationSecurity(destination, HostTLS(MAY, source="none", report=_noPolicy(destination)), source="none")

    # -- DANE ------------------------------------------------------------------

    async def _dane(self, destination: str, route, mode: str) -> DestinationSecurity | None:
        """
        @return: the destination's DANE security, or C{None} when DANE
            does not apply (and C{mode} is not C{dane-only}).
        """
        if self.dnssec is None:
            return _refused(destination, "dane", "DANE required, but the relay has no DNSSEC-validating resolver") if mode == DANE_ONLY else None
        from mailproto._security._dane import lookupTLSA

        try:
            answer = await self.dnssec.lookup(destination, MX_TYPE)
        except Exception as e:
            self.stats["dane", "dns-failed"] += 1
            return _refused(destination, "dane", f"the DNSSEC lookup of {destination}'s MX records failed: {e}")
        # A secure answer, with records or a secure denial (the domain is
        # its own mail exchanger, RFC 5321 section 5.1).
        if not answer.authenticated:
            if mode == DANE_ONLY:
                return _refused(destination, "dane", f"DANE required, but {destination}'s MX records are not DNSSEC-signed")
            return None
        hosts = {}
        anyDANE = False
        for candidate in route:
            host = candidate.host.lower().rstrip(".")
            if host in hosts:
                continue
            try:
                result = await lookupTLSA(self.dnssec, host)
            except Exception as e:
                _log.warn("DANE: the TLSA lookup of {host} failed ({error}); the host is not used", host=host, error=str(e))
                continue
            tls = self._hostFromTLSA(destination, host, result, mode)
            anyDANE = anyDANE or (tls is not None and tls.dane is not None)
            if tls is not None:
                hosts[host] = tls
        if not anyDANE and mode != DANE_ONLY:
            return None
        if not hosts:
            return _refused(destination, "dane", f"no MX host of {destination} can be used under DANE")
        self.stats["dane", "applied"] += 1
        return DestinationSecurity(destination, None, hosts, source="dane")

    def _hostFromTLSA(self, destination: str, host: str, result, mode: str) -> HostTLS | None:
        state = result.state
        report = _tlsaPolicy(destination, host, result)
        if state == "secure":
            return HostTLS(VERIFY, source="dane", dane=result, referenceNames=(host, destination), report=report)
        if state == "secure-unusable":
            return HostTLS(ENCRYPT, source="dane", report=report)
        if state == "failed":
            _log.warn("DANE: no usable answer for the TLSA records of {host}; the host is not used", host=host)
            return None
        if mode == DANE_ONLY:
            return None
        return HostTLS(MAY, source="none", report=_noPolicy(destination))

    # -- MTA-STS ---------------------------------------------------------------

    async def _mtasts(self, destination: str, route) -> DestinationSecurity | None:
        lookup = await self.mtasts.policyFor(destination)
        policy = lookup.policy
        if policy is None or policy.mode == "none":
            if lookup.resultType is not None:
                self._recordFailure(_noPolicy(destination), lookup.resultType, lookup.detail)
                _log.info("MTA-STS for {domain}: {detail}; delivering without a policy", domain=destination, detail=lookup.detail)
            return None
        report = _stsPolicy(destination, policy)
        if policy.mode == "testing":
            self.stats["mta-sts", "testing"] += 1
            tls = HostTLS(VERIFY, trustRoot=self.trustRoot, source="mta-sts", enforce=False, report=report)
            return DestinationSecurity(destination, tls, source="mta-sts")
        hosts = {}
        for candidate in route:
            host = candidate.host.lower().rstrip(".")
            if policy.matches(host):
                hosts[host] = HostTLS(VERIFY, trustRoot=self.trustRoot, source="mta-sts", report=report)
        if not hosts:
            self._recordFailure(report, "validation-failure", "no MX host matches the policy")
            self.stats["mta-sts", "no-matching-mx"] += 1
            return _refused(destination, "mta-sts", f"no MX host of {destination} matches its MTA-STS policy (mx: {', '.join(policy.mx)})")
        self.stats["mta-sts", "enforced"] += 1
        return DestinationSecurity(destination, None, hosts, source="mta-sts")

    # -- outcomes --------------------------------------------------------------

    def sessionEnded(self, tls: HostTLS | None, host: str | None, address: str | None, outcome: TLSOutcome, reason=None, starttlsMissing: bool = False) -> None:
        """
        Count one session's TLS outcome, and give it to the TLS reports.

        @param tls: the host's L{HostTLS}.
        @param host: the host's name.
        @param address: the address connected to.
        @param outcome: what the session learnt about TLS.
        @param starttlsMissing: whether TLS was required and the server
            did not offer STARTTLS.
        """
        if tls is None or tls.mode == NONE:
            return
        resultType = outcome.resultType
        if resultType is None and starttlsMissing:
            resultType = STARTTLS_NOT_SUPPORTED
        if outcome.established and resultType is None:
            self.stats[tls.source, "tls"] += 1
            if tls.report is not None and self.reports is not None:
                from mailproto._security._tlsrptstore import SessionResult

                self.reports.record(tls.report, SessionResult(True))
            return
        if resultType is None:
            return
        self.stats[tls.source, resultType] += 1
        _log.info(
            "TLS with {host} ({address}) under {source} policy: {resultType}{detail}",
            host=host,
            address=address,
            source=tls.source,
            resultType=resultType,
            detail=f": {outcome.detail}" if outcome.detail else "",
        )
        if tls.report is not None:
            self._recordFailure(tls.report, resultType, outcome.detail, host, address)

    def _recordFailure(self, report, resultType: str, detail=None, host=None, address=None) -> None:
        if self.reports is None or report is None:
            return
        from mailproto._security._tlsrptstore import SessionResult

        # RFC 8460's failure-reason-code is free text; additional-information
        # would be a URI.
        self.reports.record(report, SessionResult(False, resultType, receivingMX=host, receivingIP=address, reasonCode=detail))


def _checkMode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"TLS policy must be one of {', '.join(MODES)}; not {mode!r}")
    return mode


def _refused(destination: str, source: str, why: str) -> DestinationSecurity:
    _log.warn("TLS policy for {domain}: {why}; its mail is deferred", domain=destination, why=why)
    return DestinationSecurity(destination, None, {}, ownReply(451, "4.7.5", why[0].upper() + why[1:]), source)


def _noPolicy(destination: str):
    from mailproto._security._tlsrptstore import PolicyDescription

    return PolicyDescription("no-policy-found", (), destination, ())


def _stsPolicy(destination: str, policy):
    from mailproto._security._tlsrptstore import PolicyDescription

    strings = ["version: STSv1", f"mode: {policy.mode}"] + [f"mx: {mx}" for mx in policy.mx] + [f"max_age: {policy.maxAge}"]
    return PolicyDescription("sts", tuple(strings), destination, tuple(policy.mx))


def _tlsaPolicy(destination: str, host: str, result):
    from mailproto._security._tlsrptstore import PolicyDescription

    # RFC 8460 section 4.4: a DANE policy's domain is the TLSA records'
    # base domain, the MX host.
    return PolicyDescription("tlsa", tuple(str(record) for record in result.records), host, (host,))
