# -*- test-case-name: mailproto.test.test_outboundoptions -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay daemon's outbound security options: TLS policies per domain and
by default (MTA-STS and DANE included), the DNS servers asked, the
authorities trusted, TLS reports (RFC 8460), and DKIM signing keys.

L{OPT_PARAMETERS} and L{OPT_FLAGS} join the daemon's options;
L{checkOptions} checks them; L{securityPolicies}, L{mxCalculator},
L{tlsReporter} and L{dkimSigner} build what they ask for.
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.internet import defer
from twisted.python import usage

from mailproto._security._policies import AUTO, MODES, SecurityPolicies
from mailproto._smarthost import domainKey

OPT_PARAMETERS = [
    [
        "default-tls-policy",
        None,
        AUTO,
        "TLS towards mail exchangers of a domain without --tls-policy: auto (DANE where the domain has it and "
        "--dnssec is given, else its MTA-STS policy, else may), dane, dane-only, mta-sts, verify, encrypt, may "
        "or none.",
    ],
    [
        "dns-server",
        None,
        None,
        "HOST[:PORT] of the DNS server asked for MX, TXT (MTA-STS, TLS reports) and TLSA records (default: "
        "those of /etc/resolv.conf).",
    ],
    ["tls-ca", None, None, "PEM certificates of the authorities trusted for verify and MTA-STS (default: the system's)."],
    [
        "tls-report-organization",
        None,
        None,
        "The organization named in the daily TLS reports (RFC 8460) sent to domains that ask for them "
        "(default: the host name).",
    ],
    [
        "tls-report-contact",
        None,
        None,
        "The address the TLS reports come from and name as contact (default: postmaster@ the host name).",
    ],
    [
        "dkim-sign-for",
        None,
        "trusted",
        "Whose mail --dkim-key signs, by where it came from: trusted (relay networks and authenticated users), "
        "checked, unchecked, several separated by commas, or all.",
    ],
    ["dkim-domain", None, None, "Sign every message with the --dkim-key of this domain, whatever its From: header."],
    ["dkim-expiry", None, None, "How long DKIM signatures stay valid (x=), as 7d; no expiry if not given."],
]

OPT_FLAGS = [
    [
        "dnssec",
        None,
        "The DNS servers validate DNSSEC and the path to them is trusted (a resolver on this machine): DANE "
        "uses the answers they say are authentic.  Without it, DANE is never used.",
    ],
    ["no-tls-reports", None, "Send no TLS reports (RFC 8460), even to domains that ask for them."],
    [
        "dkim-subdomains",
        None,
        "A --dkim-key's domain also signs mail From: its subdomains (with d= the key's domain).",
    ],
]


def parseTLSPolicy(value: str) -> tuple[str, str]:
    """
    @param value: C{DOMAIN=MODE}.
    @return: the domain's key and the mode.
    @raise usage.UsageError: if it is not one.
    """
    domain, sep, mode = value.partition("=")
    domain, mode = domain.strip(), mode.strip().lower()
    if not sep or not domain:
        raise usage.UsageError(f"--tls-policy {value!r}: expected DOMAIN=MODE, as example.com=verify")
    if mode not in MODES:
        raise usage.UsageError(f"--tls-policy {value!r}: the mode must be one of {', '.join(MODES)}")
    from mailproto._relayd._daemon import _domainOption

    return domainKey(_domainOption("tls-policy", domain)), mode


def parseDNSServer(value: str) -> tuple[str, int]:
    """
    @param value: C{HOST}, C{HOST:PORT} or C{[ADDRESS]:PORT}.
    @return: C{(host, port)}.
    @raise usage.UsageError: if it is not one.
    """
    from mailproto._smarthost import SmartHost

    try:
        parsed = SmartHost.fromString(value)
    except ValueError as e:
        raise usage.UsageError(f"--dns-server: {str(e).replace('smart host', 'DNS server')}") from None
    return parsed.host, parsed.port if ":" in value.rstrip("]") and not value.endswith("]") else 53


def checkOptions(options) -> None:
    """
    Check the outbound security options, and put their values in
    C{options}: C{"tls-policies"} (modes by domain), C{"dns-servers"}
    (a list, empty for the system's) and C{"tls-trust"} (an
    C{IOpenSSLTrustRoot} or C{None}).

    @raise usage.UsageError: for a bad value.
    """
    mode = str(options["default-tls-policy"]).strip().lower()
    if mode not in MODES:
        raise usage.UsageError(f"--default-tls-policy: {options['default-tls-policy']!r} is not one of {', '.join(MODES)}")
    options["default-tls-policy"] = mode
    options["tls-policies"] = dict(parseTLSPolicy(value) for value in options["tls-policy"])
    options["dns-servers"] = [parseDNSServer(options["dns-server"])] if options["dns-server"] else []
    options["tls-trust"] = None
    if options["tls-ca"]:
        from mailproto._relayd._daemon import _loadAuthorities

        options["tls-trust"] = _loadAuthorities(options["tls-ca"], "tls-ca")
    options["dkim-signer"] = dkimSigner(options)


def resolver(options, reactor):
    """
    @return: the twisted.names resolver the relay asks: C{--dns-server}'s,
        or the system's.
    """
    from twisted.names import client

    if options["dns-servers"]:
        return client.Resolver(servers=options["dns-servers"], reactor=reactor)
    return _SystemResolver()


class _SystemResolver:
    """
    The system's resolver (C{/etc/resolv.conf}), made when first asked:
    a relay that sends everything through a smart host never reads
    C{resolv.conf}, nor watches it for changes.
    """

    _resolver = None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._resolver is None:
            from twisted.names import client

            self._resolver = client.createResolver()
        return getattr(self._resolver, name)


def mxCalculator(options, reactor):
    """
    @return: the MX calculator for C{--dns-server}, or C{None} for the
        relaying manager's default.
    """
    if not options["dns-servers"]:
        return None
    from mailproto._mx import MXCalculator

    return MXCalculator(resolver(options, reactor), clock=reactor)


def securityPolicies(options, spool: str, reactor) -> SecurityPolicies | None:
    """
    @return: the relay's L{SecurityPolicies}: MTA-STS with its cache in
        the spool, DANE with C{--dnssec}, TLS reports unless
        C{--no-tls-reports}; C{None} with a smart host, which has its own
        TLS options and takes all the mail.
    """
    if options["smarthost"] is not None:
        return None
    from mailproto._security._mtasts import MTASTSPolicies

    names = resolver(options, reactor)
    mtasts = MTASTSPolicies(names, os.path.join(spool, "mta-sts"), reactor=reactor, trustRoot=options["tls-trust"])
    dnssec = None
    if options["dnssec"]:
        from mailproto._security._dns import SecureLookup

        dnssec = SecureLookup(options["dns-servers"], reactor=reactor) if options["dns-servers"] else SecureLookup.fromResolvConf(reactor=reactor)
    reports = None
    if not options["no-tls-reports"]:
        from mailproto._security._tlsrptstore import TLSReportStore

        reports = TLSReportStore(os.path.join(spool, "tls-reports"), clock=reactor)
    return SecurityPolicies(
        options["default-tls-policy"], options["tls-policies"], mtasts=mtasts, dnssec=dnssec, reports=reports, trustRoot=options["tls-trust"]
    )


def tlsReporter(options, security: SecurityPolicies, queue, reactor):
    """
    @return: the service that sends the daily TLS reports through the
        relay's own queue, or C{None} without reports.
    """
    if security is None or security.reports is None:
        return None
    from mailproto._security._tlsreporter import TLSReporter

    hostname = options["hostname"]
    contact = options["tls-report-contact"] or f"postmaster@{hostname}"
    reporter = TLSReporter(
        security.reports,
        resolver(options, reactor),
        QueueSubmitter(queue, reactor, options["dkim-signer"]),
        organization=options["tls-report-organization"] or hostname,
        submitter=hostname,
        contact=contact,
        fromAddress=contact,
        clock=reactor,
    )
    return _ReportsService(reporter, security.reports)


class _ReportsService(service.MultiService):
    """
    The TLS reporter, and the store of TLS outcomes written out when the
    relay stops.
    """

    def __init__(self, reporter, store) -> None:
        service.MultiService.__init__(self)
        self.reporter = reporter
        self.store = store
        reporter.setServiceParent(self)

    def stopService(self):
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        d.addBoth(self._close)
        return d

    def _close(self, result):
        self.store.close()
        return result


class QueueSubmitter:
    """
    Puts a message the relay makes itself (a TLS report) into its own
    queue, durably, as if a trusted client had sent it: DKIM-signed when
    the relay has a key for its C{From:} domain (RFC 8460 section 5.3 asks
    that reports be signed).
    """

    def __init__(self, queue, clock, dkim=None) -> None:
        self.queue = queue
        self.clock = clock
        self.dkim = dkim

    def __call__(self, sender: bytes, recipients: list[bytes], message: bytes):
        """
        @return: a C{Deferred} firing with the queued L{Envelope
            <mailproto._queue.Envelope>} once it is on disk.
        """
        from mailproto._queue import TRUSTED, Envelope, Recipient, newMessageID

        now = self.clock.seconds()
        # A report goes whatever the TLS of its destination (RFC 8460
        # section 5.3: it says TLS-Required: No), and its own session is
        # not counted in the next report.
        envelope = Envelope(newMessageID(now), sender, [Recipient(r) for r in recipients], received=now, origin=TRUSTED, tlsOptional=True)
        spool = self.queue.newMessage(envelope)
        scanner = self.dkim.scanner(envelope) if self.dkim is not None else None
        if scanner is not None:
            message = scanner.feed(message) + scanner.close()
        spool.write(message)
        return spool.commit()


def dkimSigner(options):
    """
    Read the C{--dkim-key}s, as the relay starts (before it gives up root,
    so that keys only root may read can be used).

    @return: the L{DKIMSigner <mailproto._dkim.DKIMSigner>}, or C{None}
        without keys.
    @raise usage.UsageError: for a bad key or DKIM option, naming it.
    """
    from mailproto._dkim import makeSigner, parseSignFor
    from mailproto._relayd._daemon import parseDuration

    try:
        parseSignFor(str(options["dkim-sign-for"]))
    except ValueError as e:
        raise usage.UsageError(f"--dkim-sign-for: {e}") from None
    if options["dkim-domain"] is not None and not options["dkim-key"]:
        raise usage.UsageError("--dkim-domain needs a --dkim-key of that domain")

    expiry = None
    if options["dkim-expiry"] is not None:
        try:
            expiry = int(parseDuration(str(options["dkim-expiry"])))
        except ValueError as e:
            raise usage.UsageError(f"--dkim-expiry: {e}") from None
    try:
        return makeSigner(
            options["dkim-key"],
            options["dkim-sign-for"],
            parentDomains=bool(options["dkim-subdomains"]),
            domain=options["dkim-domain"],
            expiry=expiry,
        )
    except ValueError as e:
        raise usage.UsageError(f"--dkim-key: {e}") from None
