# -*- test-case-name: mailproto.test.test_outboundsecurity -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's outbound security: which TLS each destination gets
(L{SecurityPolicies}: configured modes, MTA-STS, DANE), the parts it is
made of, and the daily TLS reports (RFC 8460) it feeds.

A relaying manager that honours MTA-STS and DANE, and keeps what it
learns about TLS for the reports::

    from mailproto.relaymanager import Queue, SmartHostESMTPRelayingManager
    from mailproto.security import MTASTSPolicies, SecureLookup, SecurityPolicies, TLSReportStore
    from twisted.names import client

    resolver = client.Resolver(servers=[("127.0.0.1", 53)])
    security = SecurityPolicies(
        "auto",                                   # DANE, else MTA-STS, else may
        {"partner.example": "verify"},            # a fixed policy for some domains
        mtasts=MTASTSPolicies(resolver, "/var/spool/mailproto/mta-sts"),
        dnssec=SecureLookup([("127.0.0.1", 53)]),  # a validating resolver you trust
        reports=TLSReportStore("/var/spool/mailproto/tls-reports"),
    )
    manager = SmartHostESMTPRelayingManager(Queue("/var/spool/mailproto"), security=security)

The modes are C{none}, C{may}, C{encrypt}, C{verify}, C{dane},
C{dane-only}, C{mta-sts} and C{auto}; see L{mailproto._security._policies}.
"""

from mailproto._security._dane import TLSAResult, TLSARecord, lookupTLSA
from mailproto._security._dns import DNSLookupFailed, SecureAnswer, SecureLookup
from mailproto._security._mtasts import MTASTSPolicies, PolicyError, STSLookup, STSPolicy, parsePolicy
from mailproto._security._policies import AUTO, DANE, DANE_ONLY, MODES, MTA_STS, DestinationSecurity, HostTLS, SecurityPolicies
from mailproto._security._tlsreporter import TLSReporter
from mailproto._security._tlsrptreport import buildReport, lookupRUA, parseRUA, reportMessage
from mailproto._security._tlsrptstore import PolicyDescription, SessionResult, TLSReportStore
from mailproto._security._webpki import TLSOutcome

__all__ = [
    "AUTO",
    "DANE",
    "DANE_ONLY",
    "MODES",
    "MTA_STS",
    "SecurityPolicies",
    "DestinationSecurity",
    "HostTLS",
    "TLSOutcome",
    "MTASTSPolicies",
    "STSPolicy",
    "STSLookup",
    "PolicyError",
    "parsePolicy",
    "SecureLookup",
    "SecureAnswer",
    "DNSLookupFailed",
    "TLSARecord",
    "TLSAResult",
    "lookupTLSA",
    "TLSReportStore",
    "PolicyDescription",
    "SessionResult",
    "TLSReporter",
    "buildReport",
    "reportMessage",
    "parseRUA",
    "lookupRUA",
]
