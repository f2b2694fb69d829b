# -*- test-case-name: mailproto.test.test_tlspolicies -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
L{mailproto._security._policies}: each configured mode, MTA-STS and DANE
turned into the TLS of each host, what a session's outcome becomes; and
L{mailproto._security._webpki}: certificate checks over real TLS on
loopback.
"""

from __future__ import annotations

import datetime

import trustme
from twisted.internet import defer, protocol, reactor, ssl
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._mx import Candidate, Destination
from mailproto._security import _dane
from mailproto._security._dane import TLSARecord, TLSAResult
from mailproto._security._dns import SecureAnswer
from mailproto._security._mtasts import STSLookup, STSPolicy
from mailproto._security._policies import DestinationSecurity, HostTLS, SecurityPolicies, staticSecurity
from mailproto._security._webpki import CERTIFICATE_EXPIRED, CERTIFICATE_HOST_MISMATCH, CERTIFICATE_NOT_TRUSTED, TLSOutcome, WebPKICreator
from mailproto._smarthost import ENCRYPT, MAY, NONE, VERIFY, TLSPolicy

ROUTE = Destination(
    "example.com",
    (Candidate(10, "mx1.example.com", ("192.0.2.1",)), Candidate(20, "mx2.example.com", ("192.0.2.2",))),
)


class _MTASTS:
    """
    What L{SecurityPolicies} asks of MTA-STS: one answer per domain.
    """

    def __init__(self, **lookups):
        self.lookups = lookups
        self.asked = []

    def policyFor(self, domain):
        self.asked.append(domain)
        lookup = self.lookups.get(domain.replace(".", "_"), STSLookup(domain, None, None, "no record", False))
        return defer.succeed(lookup)


class _DNSSEC:
    """
    A validating resolver's MX answers: authenticated or not.
    """

    def __init__(self, authenticated=True, fail=False):
        self.authenticated = authenticated
        self.fail = fail

    def lookup(self, name, type):
        if self.fail:
            return defer.fail(RuntimeError("SERVFAIL"))
        return defer.succeed(SecureAnswer(name, type, (), self.authenticated, 0))


class _Store:
    def __init__(self):
        self.recorded = []

    def record(self, policy, result):
        self.recorded.append((policy, result))


def _policy(mode="enforce", mx=("mx2.example.com",)):
    return STSPolicy(mode, tuple(mx), 86400, "1", 0.0)


class ModeTests(SynchronousTestCase):
    """
    The configured modes that need no lookup.
    """

    def resolve(self, policies, destination="example.com", **kw):
        return self.successResultOf(policies.resolve(destination, ROUTE, **kw))

    def test_static(self):
        """
        C{none}, C{may}, C{encrypt} and C{verify} give every host that
        mode, with nothing looked up.
        """
        mtasts = _MTASTS()
        for mode in (NONE, MAY, ENCRYPT, VERIFY):
            security = self.resolve(SecurityPolicies(mode, mtasts=mtasts))
            self.assertEqual((security.forHost("mx1.example.com").mode, security.forHost("mx2.example.com").mode), (mode, mode))
            self.assertIsNone(security.refusal)
        self.assertEqual(mtasts.asked, [])

    def test_perDomain(self):
        """
        A domain's own mode wins over the default; a L{TLSPolicy} is used
        as it is.
        """
        trust = object()
        policies = SecurityPolicies(MAY, {"Example.COM.": VERIFY, "other.example": TLSPolicy(VERIFY, trust)})
        self.assertEqual(self.resolve(policies).default.mode, VERIFY)
        self.assertIs(self.resolve(policies, "other.example").default.trustRoot, trust)
        self.assertEqual(self.resolve(policies, "third.example").default.mode, MAY)

    def test_unknownMode(self):
        self.assertRaises(ValueError, SecurityPolicies, "sometimes")
        self.assertRaises(ValueError, SecurityPolicies, MAY, {"example.com": "always"})

    def test_validated(self):
        """
        Only a checked certificate whose failure stops the mail is
        validated (what REQUIRETLS needs).
        """
        self.assertEqual(
            [HostTLS(mode).validated for mode in (NONE, MAY, ENCRYPT, VERIFY)],
            [False, False, False, True],
        )
        self.assertFalse(HostTLS(VERIFY, enforce=False).validated)

    def test_staticSecurity(self):
        security = staticSecurity("[smarthost]", TLSPolicy(ENCRYPT))
        self.assertIsInstance(security.default, HostTLS)
        self.assertEqual(security.forHost("anything").mode, ENCRYPT)


class MTASTSTests(SynchronousTestCase):
    """
    C{mta-sts} and C{auto} with MTA-STS.
    """

    def resolve(self, mode="mta-sts", ignore=False, **lookups):
        self.store = _Store()
        self.policies = SecurityPolicies(mode, mtasts=_MTASTS(**lookups), reports=self.store)
        return self.successResultOf(self.policies.resolve("example.com", ROUTE, ignorePolicies=ignore))

    def test_enforce(self):
        """
        Only the hosts the policy names are allowed, each with its
        certificate checked.
        """
        security = self.resolve(example_com=STSLookup("example.com", _policy(), None, "", False))
        self.assertEqual(security.source, "mta-sts")
        self.assertIsNone(security.forHost("mx1.example.com"))
        tls = security.forHost("MX2.example.com.")
        self.assertEqual((tls.mode, tls.enforce, tls.validated, tls.report.type), (VERIFY, True, True, "sts"))
        self.assertEqual(self.policies.stats["mta-sts", "enforced"], 1)

    def test_enforceNoHostMatches(self):
        """
        No host matching the policy: the mail is deferred (4.7.5), and the
        failure recorded for the report.
        """
        security = self.resolve(example_com=STSLookup("example.com", _policy(mx=("*.elsewhere.example",)), None, "", False))
        self.assertEqual((security.refusal.code, security.refusal.status), (451, b"4.7.5"))
        self.assertIn(b"*.elsewhere.example", security.refusal.text)
        self.assertFalse(security.allows("mx1.example.com") or security.allows("mx2.example.com"))
        [(policy, result)] = self.store.recorded
        self.assertEqual((policy.type, result.success, result.resultType), ("sts", False, "validation-failure"))

    def test_testing(self):
        """
        C{testing}: every host, checked but not enforced.
        """
        security = self.resolve(example_com=STSLookup("example.com", _policy("testing"), None, "", False))
        tls = security.forHost("mx1.example.com")
        self.assertEqual((tls.mode, tls.enforce, tls.validated), (VERIFY, False, False))

    def test_noPolicy(self):
        """
        No policy: C{may}, counted under no policy.
        """
        security = self.resolve()
        self.assertEqual((security.source, security.forHost("mx1.example.com").mode), ("none", MAY))
        self.assertEqual(security.default.report.type, "no-policy-found")
        self.assertEqual(self.store.recorded, [])

    def test_fetchFailed(self):
        """
        A policy that could not be fetched (and none cached): C{may}, and
        the failure recorded.
        """
        security = self.resolve(example_com=STSLookup("example.com", None, "sts-policy-fetch-error", "timed out", False))
        self.assertEqual(security.forHost("mx1.example.com").mode, MAY)
        [(policy, result)] = self.store.recorded
        self.assertEqual((policy.type, result.resultType), ("no-policy-found", "sts-policy-fetch-error"))

    def test_addressLiteral(self):
        """
        An address literal has no domain to look policies up for: C{may}.
        """
        self.store = _Store()
        self.policies = SecurityPolicies("auto", mtasts=_MTASTS(), dnssec=_DNSSEC(), reports=self.store)
        security = self.successResultOf(self.policies.resolve("[192.0.2.1]", ROUTE))
        self.assertEqual((security.source, security.forHost("mx1.example.com").mode), ("none", MAY))
        self.assertEqual(self.policies.mtasts.asked, [])

    def test_ignored(self):
        """
        C{TLS-Required: No}: MTA-STS is not even asked.
        """
        security = self.resolve(ignore=True, example_com=STSLookup("example.com", _policy(), None, "", False))
        self.assertEqual(security.forHost("mx1.example.com").mode, MAY)
        self.assertEqual(self.policies.mtasts.asked, [])


class DANETests(SynchronousTestCase):
    """
    C{dane}, C{dane-only} and C{auto} with DANE, with TLSA lookups
    answered here.
    """

    def setUp(self):
        self.tlsa = {}
        self.patch(_dane, "lookupTLSA", lambda lookup, host, port=25: defer.succeed(self.tlsa.get(host, TLSAResult(host, (), 0, True, host))))

    def resolve(self, mode, dnssec, mtasts=None):
        self.policies = SecurityPolicies(mode, mtasts=mtasts, dnssec=dnssec)
        return self.successResultOf(self.policies.resolve("example.com", ROUTE))

    def secure(self, host):
        record = TLSARecord(3, 1, 1, b"\x01" * 32)
        self.tlsa[host] = TLSAResult(host, (record,), 0, True, host)

    def test_dane(self):
        """
        Secure MX and TLSA records: DANE for the host that has them; C{may}
        for one whose TLSA records are securely absent.
        """
        self.secure("mx1.example.com")
        security = self.resolve("dane", _DNSSEC())
        one, two = security.forHost("mx1.example.com"), security.forHost("mx2.example.com")
        self.assertEqual((one.source, one.validated, one.referenceNames), ("dane", True, ("mx1.example.com", "example.com")))
        self.assertEqual((two.mode, two.validated), (MAY, False))
        self.assertEqual(one.report.domain, "mx1.example.com")

    def test_insecureMX(self):
        """
        MX records not validated: no DANE; C{auto} goes on to MTA-STS;
        C{dane-only} defers.
        """
        self.secure("mx1.example.com")
        mtasts = _MTASTS(example_com=STSLookup("example.com", _policy(), None, "", False))
        self.assertEqual(self.resolve("auto", _DNSSEC(authenticated=False), mtasts).source, "mta-sts")
        security = self.resolve("dane-only", _DNSSEC(authenticated=False))
        self.assertEqual((security.refusal.code, security.refusal.status), (451, b"4.7.5"))

    def test_daneWinsOverMTASTS(self):
        self.secure("mx2.example.com")
        mtasts = _MTASTS(example_com=STSLookup("example.com", _policy(), None, "", False))
        security = self.resolve("auto", _DNSSEC(), mtasts)
        self.assertEqual(security.source, "dane")
        self.assertEqual(mtasts.asked, [])

    def test_noDNSSEC(self):
        """
        Without a validating resolver: C{dane} is C{may}, C{dane-only}
        defers.
        """
        self.assertEqual(self.resolve("dane", None).forHost("mx1.example.com").mode, MAY)
        self.assertIsNotNone(self.resolve("dane-only", None).refusal)

    def test_failedLookups(self):
        """
        A failed MX lookup defers; a host whose TLSA lookup failed is not
        used, and with none left the mail is deferred.
        """
        self.assertIsNotNone(self.resolve("dane", _DNSSEC(fail=True)).refusal)
        self.secure("mx1.example.com")
        self.tlsa["mx2.example.com"] = TLSAResult("mx2.example.com", (), 0, True, "mx2.example.com", failure="SERVFAIL")
        security = self.resolve("dane", _DNSSEC())
        self.assertTrue(security.allows("mx1.example.com"))
        self.assertFalse(security.allows("mx2.example.com"))

    def test_unusableRecords(self):
        """
        Secure but unusable TLSA records: TLS required, not checked.
        """
        self.secure("mx1.example.com")
        self.tlsa["mx2.example.com"] = TLSAResult("mx2.example.com", (), 2, True, "mx2.example.com")
        self.assertEqual(self.resolve("dane", _DNSSEC()).forHost("mx2.example.com").mode, ENCRYPT)


class OutcomeTests(SynchronousTestCase):
    """
    L{SecurityPolicies.sessionEnded}: counted, and kept for the reports
    under the host's policy.
    """

    def setUp(self):
        self.store = _Store()
        self.policies = SecurityPolicies(MAY, reports=self.store)
        self.security = self.successResultOf(SecurityPolicies("mta-sts", mtasts=_MTASTS(example_com=STSLookup("example.com", _policy(), None, "", False))).resolve("example.com", ROUTE))

    def test_success(self):
        outcome = TLSOutcome()
        outcome.established = True
        self.policies.sessionEnded(self.security.forHost("mx2.example.com"), "mx2.example.com", "192.0.2.2", outcome)
        [(policy, result)] = self.store.recorded
        self.assertEqual((policy.type, result.success), ("sts", True))
        self.assertEqual(self.policies.stats["mta-sts", "tls"], 1)

    def test_failure(self):
        outcome = TLSOutcome()
        outcome.failed(CERTIFICATE_HOST_MISMATCH, "for another name")
        outcome.failed(CERTIFICATE_EXPIRED, "later, ignored")
        self.policies.sessionEnded(self.security.forHost("mx2.example.com"), "mx2.example.com", "192.0.2.2", outcome)
        [(policy, result)] = self.store.recorded
        self.assertEqual(
            (result.success, result.resultType, result.receivingMX, result.receivingIP, result.reasonCode),
            (False, CERTIFICATE_HOST_MISMATCH, "mx2.example.com", "192.0.2.2", "for another name"),
        )

    def test_starttlsMissing(self):
        self.policies.sessionEnded(self.security.forHost("mx2.example.com"), "mx2.example.com", "192.0.2.2", TLSOutcome(), starttlsMissing=True)
        self.assertEqual(self.store.recorded[0][1].resultType, "starttls-not-supported")

    def test_nothingLearnt(self):
        """
        A session that never got to TLS, or a host without TLS: nothing
        recorded.
        """
        self.policies.sessionEnded(self.security.forHost("mx2.example.com"), "mx2.example.com", "192.0.2.2", TLSOutcome())
        self.policies.sessionEnded(HostTLS(NONE), "mx2.example.com", "192.0.2.2", TLSOutcome())
        self.policies.sessionEnded(None, "mx2.example.com", "192.0.2.2", TLSOutcome())
        self.assertEqual(self.store.recorded, [])


class _Server(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Client(protocol.Protocol):
    def __init__(self):
        self.done = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.done.callback(data)
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)
        self.lost.callback(None)


class WebPKITests(TestCase):
    """
    L{WebPKICreator} over real TLS on loopback: what it accepts, and what
    it writes in the outcome.
    """

    def setUp(self):
        self.ca = trustme.CA()
        self.trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(self.ca.cert_pem.bytes())])

    @defer.inlineCallbacks
    def handshake(self, leaf, hostname, enforce=True, trust=None):
        options = ssl.PrivateCertificate.loadPEM(leaf.private_key_and_cert_chain_pem.bytes()).options()
        port = reactor.listenSSL(0, protocol.Factory.forProtocol(_Server), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        outcome = TLSOutcome()
        creator = WebPKICreator(hostname, outcome, trust or self.trust, enforce)
        client = _Client()
        factory = TLSMemoryBIOFactory(creator, True, protocol.Factory.forProtocol(lambda: client))
        from twisted.internet.endpoints import TCP4ClientEndpoint

        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(factory)
        try:
            answer = yield client.done
        except Exception:
            answer = None
        yield client.lost
        return answer, outcome

    @defer.inlineCallbacks
    def test_trusted(self):
        answer, outcome = yield self.handshake(self.ca.issue_cert("mx.example.com"), "mx.example.com")
        self.assertEqual((answer, outcome.resultType), (b"ping", None))

    @defer.inlineCallbacks
    def test_address(self):
        """
        A host given by address matches an IP address SAN.
        """
        answer, outcome = yield self.handshake(self.ca.issue_cert("127.0.0.1"), "127.0.0.1")
        self.assertEqual((answer, outcome.resultType), (b"ping", None))

    @defer.inlineCallbacks
    def test_wrongName(self):
        answer, outcome = yield self.handshake(self.ca.issue_cert("other.example.com"), "mx.example.com")
        self.assertEqual((answer, outcome.resultType), (None, CERTIFICATE_HOST_MISMATCH))

    @defer.inlineCallbacks
    def test_untrusted(self):
        answer, outcome = yield self.handshake(trustme.CA().issue_cert("mx.example.com"), "mx.example.com")
        self.assertEqual((answer, outcome.resultType), (None, CERTIFICATE_NOT_TRUSTED))

    @defer.inlineCallbacks
    def test_expired(self):
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
        leaf = self.ca.issue_cert("mx.example.com", not_before=past - datetime.timedelta(days=10), not_after=past)
        answer, outcome = yield self.handshake(leaf, "mx.example.com")
        self.assertEqual((answer, outcome.resultType), (None, CERTIFICATE_EXPIRED))

    @defer.inlineCallbacks
    def test_notEnforced(self):
        """
        MTA-STS in C{testing} mode: the failure is written, the session
        goes on.
        """
        answer, outcome = yield self.handshake(self.ca.issue_cert("other.example.com"), "mx.example.com", enforce=False)
        self.assertEqual((answer, outcome.resultType), (b"ping", CERTIFICATE_HOST_MISMATCH))


class DestinationSecurityTests(SynchronousTestCase):
    def test_forHost(self):
        tls = HostTLS(VERIFY)
        security = DestinationSecurity("example.com", None, {"mx.example.com": tls})
        self.assertIs(security.forHost("MX.Example.com."), tls)
        self.assertIsNone(security.forHost(None))
        self.assertIs(DestinationSecurity("example.com", tls).forHost("anything"), tls)
