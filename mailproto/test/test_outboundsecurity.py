# -*- test-case-name: mailproto.test.test_outboundsecurity -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's outbound TLS security end to end, over real loopback sockets:
the relaying manager with L{SecurityPolicies
<mailproto._security._policies.SecurityPolicies>} (MTA-STS, DANE, TLS
reports, REQUIRETLS) routes through a real DNS server
(L{mailproto.test._dnsserver}), fetches MTA-STS policies from a real HTTPS
server and delivers to mailproto's own ESMTP servers over STARTTLS.

MX records carry no port, so every receiving server of a test listens on
one port number, on its own loopback address::

  ==========  ====================================  =====================
  address     what listens there                    names pointing at it
  ==========  ====================================  =====================
  127.0.0.1   the DNS server (UDP and TCP), the     mta-sts.example.com,
              HTTPS policy server (both on ports    mta-sts.reports.
              of their own)                         example.net
  127.0.0.2   ESMTP server "mx1"                    mx1.example.com
  127.0.0.3   ESMTP server "mx2"                    mx2.example.com
  127.0.0.4   ESMTP server receiving TLS reports    mx.reports.example.net
  ==========  ====================================  =====================

C{example.com} has MX 10 C{mx1.example.com} and MX 20 C{mx2.example.com};
each test adds the TXT, TLSA and policy records it is about, and chooses
the certificate each server shows.  Certificates come from one test
authority (trusted by the relay, C{trustRoot=}) or from another one the
relay does not trust.

Each test starts its own servers, queue and relay; every wait is bounded
polling for an outcome (a deadline, never a sleep that decides a result);
a test ends only when the relay has no attempt in flight and no
connection is left open.
"""

from __future__ import annotations

import calendar
import email
import email.policy
import gzip
import hashlib
import json
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor, ssl, task
from twisted.names import client, dns
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server as webserver

from mailproto._mx import MXCalculator
from mailproto._queue import DELIVERED, FAILED, WAITING, Envelope, Recipient, newMessageID
from mailproto._relayd._outbound import QueueSubmitter
from mailproto._security._dns import SecureLookup
from mailproto._security._mtasts import FETCH_ERROR, MTASTSPolicies
from mailproto._security._policies import SecurityPolicies
from mailproto._security._tlsreporter import TLSReporter
from mailproto._security._tlsrptstore import TLSReportStore, dayOf
from mailproto.relaymanager import SmartHostESMTPRelayingManager
from mailproto.smtp import ESMTP, ESMTPFactory
from mailproto.test._dnsserver import TLSA, DNSServer, tlsaRecord
from mailproto.test._loopback import noConnectionsLeft
from mailproto.test.test_relay_e2e import _commonPort, _until
from mailproto.test.test_tlsrptreport import validator
from mailproto.testing import MemoryDelivery, MemoryQueue

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None

# How long a test waits for an outcome before it fails.
_DEADLINE = 10.0


_MX1, _MX2, _REPORTS_MX = "127.0.0.2", "127.0.0.3", "127.0.0.4"

_RELAY = "relay.example.org"

_MESSAGE = (
    b"From: Sender <sender@relay.example.org>\r\n"
    b"To: rcpt@example.com\r\n"
    b"Subject: outbound security\r\n"
    b"Message-ID: <outbound.security@relay.example.org>\r\n"
    b"\r\n"
    b"The body.\r\n"
)

# A day the TLS report test counts sessions under: 2026-03-01, noon UTC.
_DAY = calendar.timegm((2026, 3, 1, 12, 0, 0))


def _policy(mode: str, *mx: str, maxAge: int = 86400) -> bytes:
    """
    @return: an MTA-STS policy file.
    """
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {maxAge}"]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


_AUTHORITY = None


def _authority():
    """
    @return: the test certificate authority the relay trusts.
    """
    global _AUTHORITY
    if _AUTHORITY is None:
        _AUTHORITY = trustme.CA()
    return _AUTHORITY


def _trustRoot():
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(_authority().cert_pem.bytes())])


class _Certificate:
    """
    A server certificate and its key, from a trustme authority.

    @ivar options: the server's TLS options.
    @ivar spkiSHA256: the SHA-256 of its SubjectPublicKeyInfo (what a TLSA
        3 1 1 record holds).
    """

    def __init__(self, *names: str, authority=None) -> None:
        issued = (authority or _authority()).issue_cert(*names)
        self.options = ssl.PrivateCertificate.loadPEM(issued.private_key_and_cert_chain_pem.bytes()).options()
        leaf = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
        spki = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.spkiSHA256 = hashlib.sha256(spki).digest()


class _RecordingESMTP(ESMTP):
    """
    An ESMTP server that tells its factory of each connection and of each
    MAIL command, with whether TLS was on.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1
        ESMTP.connectionMade(self)

    def do_MAIL(self, rest: bytes):
        self.factory.mails.append((self.startedTLS, rest))
        return ESMTP.do_MAIL(self, rest)


class _Receiver(ESMTPFactory):
    """
    A receiving mail server: mailproto's ESMTP server over a
    L{MemoryDelivery}.

    @ivar connections: how many connections it accepted.
    @ivar mails: C{(startedTLS, MAIL arguments)} of every MAIL command.
    """

    protocol = _RecordingESMTP

    def __init__(self, name: str, **kw) -> None:
        self.delivery = MemoryDelivery()
        ESMTPFactory.__init__(self, delivery=self.delivery, domain=name.encode("ascii"), **kw)
        self.connections = 0
        self.mails: list[tuple[bool, bytes]] = []

    @property
    def messages(self) -> list:
        return self.delivery.messages


class _PolicyResource(resource.Resource):
    """
    Serves C{/.well-known/mta-sts.txt}: the policy of the host the request
    names, or 404.
    """

    isLeaf = True

    def __init__(self) -> None:
        resource.Resource.__init__(self)
        self.policies: dict[str, bytes] = {}
        self.requests: list[str] = []

    def render_GET(self, request):
        host = (request.getRequestHostname() or b"").decode("ascii", "replace")
        self.requests.append(host)
        policy = self.policies.get(host)
        if request.path != b"/.well-known/mta-sts.txt" or policy is None:
            request.setResponseCode(404)
            return b"no policy here"
        request.setHeader(b"content-type", b"text/plain")
        return policy


class _OutboundTests(TestCase):
    """
    A DNS server, receiving servers on L{_MX1} and L{_MX2} (and
    L{_REPORTS_MX}), an HTTPS policy server and the relay, made fresh for
    each test.
    """

    timeout = 30

    validating = False

    def setUp(self):
        if trustme is None:
            raise SkipTest("trustme is not installed")
        self.port = _commonPort([_MX1, _MX2, _REPORTS_MX])
        self.dns = DNSServer(validating=self.validating)
        self.dnsAddress = self.dns.start(reactor)
        self.addCleanup(self.dns.stop)
        self.resolver = client.Resolver(servers=[self.dnsAddress], timeout=(2, 4))
        self.dns.add("example.com", dns.Record_MX(10, b"mx1.example.com"))
        self.dns.add("example.com", dns.Record_MX(20, b"mx2.example.com"))
        self.dns.add("mx1.example.com", dns.Record_A(_MX1))
        self.dns.add("mx2.example.com", dns.Record_A(_MX2))
        self.dns.add("mta-sts.example.com", dns.Record_A("127.0.0.1"))
        self.policies = _PolicyResource()
        self.httpsPort = None
        # Every connection closed, before the listening ports go.
        self.addCleanup(noConnectionsLeft, self)
        self.outcomes: dict[str, list] = {}
        # The clock that dates MTA-STS policies and TLS report days.
        self.clock = task.Clock()
        self.clock.advance(time.time())

    # -- the pieces ----------------------------------------------------------

    def startMX(self, address: str, name: str, certificate: _Certificate | None = None, requireTLS: bool = False) -> _Receiver:
        """
        Start a receiving server on C{address}, port L{port}; stopped when
        the test ends.

        @param certificate: what it shows after STARTTLS; without one it
            does not offer STARTTLS.
        @param requireTLS: whether it offers REQUIRETLS.
        """
        options = certificate.options if certificate is not None else None
        receiver = _Receiver(name, contextFactory=options, requireTLS=requireTLS)
        listening = reactor.listenTCP(self.port, receiver, interface=address)
        self.addCleanup(listening.stopListening)
        return receiver

    def startPolicyServer(self) -> None:
        """
        Start the HTTPS policy server on 127.0.0.1, with a certificate for
        every C{mta-sts.} name of the tests; stopped when the test ends
        (or by L{stopPolicyServer}).
        """
        certificate = _Certificate("mta-sts.example.com", "mta-sts.reports.example.net")
        self.httpsListening = reactor.listenSSL(0, webserver.Site(self.policies), certificate.options, interface="127.0.0.1")
        self.httpsPort = self.httpsListening.getHost().port
        self.addCleanup(self.stopPolicyServer)

    def stopPolicyServer(self) -> defer.Deferred:
        listening, self.httpsListening = self.httpsListening, None
        return defer.maybeDeferred(listening.stopListening) if listening is not None else defer.succeed(None)

    def publishPolicy(self, domain: str, policy: bytes, id: str = "1") -> None:
        """
        Publish an MTA-STS policy for C{domain}: its TXT record, with
        C{id}, and its file on the policy server.
        """
        if self.httpsPort is None:
            self.startPolicyServer()
        self.setPolicyID(domain, id)
        self.policies.policies[f"mta-sts.{domain}"] = policy

    def setPolicyID(self, domain: str, id: str) -> None:
        self.dns.clear(f"_mta-sts.{domain}", dns.TXT)
        self.dns.add(f"_mta-sts.{domain}", dns.Record_TXT(f"v=STSv1; id={id}".encode("ascii")))

    def security(self, **kw) -> SecurityPolicies:
        """
        @return: the relay's security policies: C{auto} by default, MTA-STS
            through the test DNS and policy servers, TLS reports into a
            store on L{clock}, the test authority trusted; C{kw}
            overrides any.
        """
        self.mtasts = MTASTSPolicies(
            self.resolver,
            self.mktemp(),
            reactor=reactor,
            trustRoot=_trustRoot(),
            httpsPort=self.httpsPort or 443,
            fetchTimeout=_DEADLINE,
            clock=self.clock,
        )
        self.store = TLSReportStore(self.mktemp(), self.clock)
        options = dict(mtasts=self.mtasts, reports=self.store, trustRoot=_trustRoot())
        options.update(kw)
        return SecurityPolicies("auto", **options)

    def startRelay(self, security: SecurityPolicies) -> SmartHostESMTPRelayingManager:
        """
        Start the relaying manager on a new L{MemoryQueue}, sending to port
        L{port} of the hosts the DNS names; stopped when the test ends.
        """
        self.queue = MemoryQueue()
        self.manager = manager = SmartHostESMTPRelayingManager(
            self.queue,
            10,
            10,
            hostname=_RELAY,
            mxcalc=MXCalculator(self.resolver, clock=reactor),
            port=self.port,
            reactor=reactor,
            connectTimeout=5,
            timeout=_DEADLINE,
            connectionCacheTime=0,
            security=security,
        )
        manager.outcomeListeners.append(lambda envelope, result, started, now: self.outcomes.setdefault(envelope.id, []).append(result))
        manager.start()

        @defer.inlineCallbacks
        def stopManager():
            manager.stop()
            yield manager.whenIdle().addTimeout(_DEADLINE, reactor)
            yield _until(lambda: not manager.managed, "the relay's connections to close")

        self.addCleanup(stopManager)
        return manager

    def send(self, *recipients: bytes, requireTLS: bool = False, data: bytes = _MESSAGE) -> Envelope:
        """
        Queue a message from the null sender (so that no report of its
        own follows a failure) to C{recipients}.

        @return: its envelope, which the relay updates as it goes.
        """
        now = reactor.seconds()
        envelope = Envelope(newMessageID(now), b"", [Recipient(r) for r in recipients or (b"rcpt@example.com",)], received=now, requireTLS=requireTLS)
        spool = self.queue.newMessage(envelope)
        spool.write(data)
        spool.commit()
        return envelope

    @defer.inlineCallbacks
    def attempted(self, envelope: Envelope):
        """
        Wait until the relay recorded an attempt of C{envelope}, and has
        nothing in flight and no connection open.

        @return: a C{Deferred} firing with C{envelope}'s recipient.
        """
        yield _until(lambda: envelope.id in self.outcomes, f"an attempt of {envelope.id}")
        yield self.manager.whenIdle().addTimeout(_DEADLINE, reactor)
        yield _until(lambda: not self.manager.managed, "the relay's connections to close")
        return envelope.recipients[0]

    # -- looking at the outcome ----------------------------------------------

    def assertDeliveredOverTLS(self, recipient, receiver: _Receiver, host: str) -> None:
        """
        C{recipient} was delivered by C{receiver}, known as C{host}, and
        every MAIL it saw came over TLS.
        """
        self.assertEqual(recipient.state, DELIVERED, recipient.lastReply)
        self.assertEqual(recipient.lastHost, host)
        self.assertEqual(len(receiver.messages), 1)
        self.assertEqual([tls for tls, _ in receiver.mails], [True])

    def assertDeferred(self, recipient, *receivers: _Receiver) -> None:
        """
        C{recipient} is still waiting with a 4xx reply, and none of
        C{receivers} got a MAIL command (in plaintext or not).
        """
        self.assertEqual(recipient.state, WAITING)
        self.assertIsNotNone(recipient.lastReply)
        self.assertEqual(recipient.lastReply.code // 100, 4, recipient.lastReply)
        for receiver in receivers:
            self.assertEqual(receiver.mails, [])
            self.assertEqual(receiver.messages, [])

    def entries(self, domain: str = "example.com", day: str | None = None) -> dict:
        """
        @return: what the TLS report store counted for C{domain} on C{day}
            (today by L{clock}): C{policy type: PolicyEntry}.
        """
        day = day or self.store.currentDay()
        return {entry.policy.type: entry for entry in self.store.entries(day, domain)}

    def failures(self, entry) -> list[tuple[str, str | None, str | None, int]]:
        """
        @return: an entry's failures as C{(result type, receiving MX,
            receiving IP, count)}.
        """
        return [(r.resultType, r.receivingMX, r.receivingIP, count) for r, count in entry.failures]


class MTASTSTests(_OutboundTests):
    """
    MTA-STS (RFC 8461): which hosts are used, and with what certificate
    check, in C{enforce} and C{testing} mode.
    """

    @defer.inlineCallbacks
    def test_enforceUsesOnlyPolicyHosts(self):
        """
        Under an C{enforce} policy naming only mx2, the message goes to mx2
        (MX 20) over TLS with its certificate checked against the trusted
        authority; mx1 (MX 10) is never connected to.  The session is
        counted as a success of the C{sts} policy.
        """
        mx1 = self.startMX(_MX1, "mx1.example.com", _Certificate("mx1.example.com"))
        mx2 = self.startMX(_MX2, "mx2.example.com", _Certificate("mx2.example.com"))
        self.publishPolicy("example.com", _policy("enforce", "mx2.example.com"))
        security = self.security()
        self.startRelay(security)
        recipient = yield self.attempted(self.send())
        self.assertDeliveredOverTLS(recipient, mx2, "mx2.example.com")
        self.assertEqual(mx1.connections, 0)
        self.assertEqual(mx2.connections, 1)
        self.assertEqual(security.stats["mta-sts", "enforced"], 1)
        self.assertEqual(security.stats["mta-sts", "tls"], 1)
        sts = self.entries()["sts"]
        self.assertEqual((sts.successes, sts.failures), (1, ()))
        self.assertIn("mode: enforce", sts.policy.strings)
        self.assertEqual(sts.policy.mxHosts, ("mx2.example.com",))

    @defer.inlineCallbacks
    def enforcedAgainst(self, certificate: _Certificate, resultType: str):
        """
        Under C{enforce} (mx2 only), mx2 shows C{certificate}: the message
        is deferred, nothing is delivered, no MAIL is said anywhere, mx2 is
        connected to once (never again without TLS), and the failure is
        counted for the C{sts} policy as C{resultType}.
        """
        mx1 = self.startMX(_MX1, "mx1.example.com", _Certificate("mx1.example.com"))
        mx2 = self.startMX(_MX2, "mx2.example.com", certificate)
        self.publishPolicy("example.com", _policy("enforce", "mx2.example.com"))
        security = self.security()
        self.startRelay(security)
        recipient = yield self.attempted(self.send())
        self.assertDeferred(recipient, mx1, mx2)
        self.assertEqual((mx1.connections, mx2.connections), (0, 1))
        sts = self.entries()["sts"]
        self.assertEqual(sts.successes, 0)
        self.assertEqual(self.failures(sts), [(resultType, "mx2.example.com", _MX2, 1)])
        self.assertEqual(security.stats["mta-sts", resultType], 1)

    def test_enforceWrongName(self):
        """
        Under C{enforce}, a certificate of the trusted authority but for
        another name fails the session: C{certificate-host-mismatch}.
        """
        return self.enforcedAgainst(_Certificate("other.example.org"), "certificate-host-mismatch")

    def test_enforceUntrustedAuthority(self):
        """
        Under C{enforce}, a certificate for the right name from an
        authority the relay does not trust fails the session:
        C{certificate-not-trusted}.
        """
        return self.enforcedAgainst(_Certificate("mx2.example.com", authority=trustme.CA()), "certificate-not-trusted")

    @defer.inlineCallbacks
    def test_enforceWithoutSTARTTLS(self):
        """
        Under C{enforce}, the policy's host not offering STARTTLS gets no
        mail in plaintext: deferred, counted as C{starttls-not-supported}.
        """
        mx2 = self.startMX(_MX2, "mx2.example.com")
        self.publishPolicy("example.com", _policy("enforce", "mx2.example.com"))
        self.startRelay(self.security())
        recipient = yield self.attempted(self.send())
        self.assertDeferred(recipient, mx2)
        self.assertEqual(self.failures(self.entries()["sts"]), [("starttls-not-supported", "mx2.example.com", _MX2, 1)])

    @defer.inlineCallbacks
    def test_enforceNoMatchingMX(self):
        """
        Under C{enforce}, when no MX host matches the policy nothing is
        connected to: deferred with C{4.7.5}, counted as a
        C{validation-failure}.
        """
        mx1 = self.startMX(_MX1, "mx1.example.com", _Certificate("mx1.example.com"))
        mx2 = self.startMX(_MX2, "mx2.example.com", _Certificate("mx2.example.com"))
        self.publishPolicy("example.com", _policy("enforce", "mx.elsewhere.example"))
        self.startRelay(self.security())
        recipient = yield self.attempted(self.send())
        self.assertDeferred(recipient, mx1, mx2)
        self.assertEqual(recipient.lastReply.status, b"4.7.5")
        self.assertEqual((mx1.connections, mx2.connections), (0, 0))
        self.assertEqual([f[0] for f in self.failures(self.entries()["sts"])], ["validation-failure"])

    @defer.inlineCallbacks
    def test_testingWrongName(self):
        """
        Under a C{testing} policy, a certificate for another name is
        checked and the failure counted, but the message is delivered over
        TLS all the same.
        """
        mx1 = self.startMX(_MX1, "mx1.example.com", _Certificate("other.example.org"))
        self.publishPolicy("example.com", _policy("testing", "mx1.example.com"))
        security = self.security()
        self.startRelay(security)
        recipient = yield self.attempted(self.send())
        self.assertDeliveredOverTLS(recipient, mx1, "mx1.example.com")
        sts = self.entries()["sts"]
        self.assertIn("mode: testing", sts.policy.strings)
        self.assertEqual(self.failures(sts), [("certificate-host-mismatch", "mx1.example.com", _MX1, 1)])
        self.assertEqual(security.stats["mta-sts", "testing"], 1)

    @defer.inlineCallbacks
    def testingWithoutSTARTTLS(self):
        """
        Under a C{testing} policy, send to mx1 (the only MX host), which
        does not offer STARTTLS.

        @return: a C{Deferred} firing with C{(recipient, mx1)}.
        """
        self.dns.clear("example.com", dns.MX)
        self.dns.add("example.com", dns.Record_MX(10, b"mx1.example.com"))
        mx1 = self.startMX(_MX1, "mx1.example.com")
        self.publishPolicy("example.com", _policy("testing", "mx1.example.com"))
        self.startRelay(self.security())
        recipient = yield self.attempted(self.send())
        return recipient, mx1

    @defer.inlineCallbacks
    def test_testingWithoutSTARTTLSDelivered(self):
        """
        Under a C{testing} policy, a host that does not offer STARTTLS still
        gets the message (RFC 8461 section 5: in C{testing} mode mail is
        delivered as though there were no policy failure).
        """
        recipient, mx1 = yield self.testingWithoutSTARTTLS()
        self.assertEqual(recipient.state, DELIVERED, recipient.lastReply)
        self.assertEqual([tls for tls, _ in mx1.mails], [False])
        self.assertEqual(len(mx1.messages), 1)

    @defer.inlineCallbacks
    def test_testingWithoutSTARTTLSCounted(self):
        """
        Under a C{testing} policy, a host that does not offer STARTTLS is
        counted in the report as C{starttls-not-supported}, as under
        C{enforce}.
        """
        recipient, mx1 = yield self.testingWithoutSTARTTLS()
        sts = self.entries().get("sts")
        self.assertIsNotNone(sts, "nothing was counted for the sts policy")
        self.assertEqual(self.failures(sts), [("starttls-not-supported", "mx1.example.com", _MX1, 1)])

    @defer.inlineCallbacks
    def test_cachedPolicySurvivesFailedRefresh(self):
        """
        A policy delivered under is cached; when its refresh fails (the TXT
        id changed, the policy server is gone) the cached C{enforce} policy
        still decides: the second message too goes to mx2 only.
        """
        mx1 = self.startMX(_MX1, "mx1.example.com", _Certificate("mx1.example.com"))
        mx2 = self.startMX(_MX2, "mx2.example.com", _Certificate("mx2.example.com"))
        self.publishPolicy("example.com", _policy("enforce", "mx2.example.com"))
        self.startRelay(self.security())
        first = yield self.attempted(self.send())
        self.assertEqual(first.state, DELIVERED, first.lastReply)
        self.assertEqual(self.mtasts.stats["fetches"], 1)

        yield self.stopPolicyServer()
        self.setPolicyID("example.com", "2")
        second = yield self.attempted(self.send())
        self.assertEqual(second.state, DELIVERED, second.lastReply)
        self.assertEqual(second.lastHost, "mx2.example.com")
        self.assertEqual(mx1.connections, 0)
        self.assertEqual(len(mx2.messages), 2)
        self.assertEqual(self.mtasts.stats["fetches"], 2)
        self.assertEqual(self.mtasts.stats["fetchFailures", FETCH_ERROR], 1)
        self.assertEqual(self.mtasts.cached("example.com").id, "1")

    @defer.inlineCallbacks
    def test_noPolicyMeansMay(self):
        """
        Without an MTA-STS record the domain's mail goes under C{may}: to
        its first MX host, over TLS whatever the certificate (here for
        another name, from an untrusted authority); the session is counted
        under C{no-policy-found}.
        """
        mx1 = self.startMX(_MX1, "mx1.example.com", _Certificate("other.example.org", authority=trustme.CA()))
        self.startPolicyServer()
        security = self.security()
        self.startRelay(security)
        recipient = yield self.attempted(self.send())
        self.assertDeliveredOverTLS(recipient, mx1, "mx1.example.com")
        self.assertEqual(self.policies.requests, [])
        self.assertEqual(security.stats["none", "tls"], 1)
        entry = self.entries()["no-policy-found"]
        self.assertEqual((entry.successes, entry.failures), (1, ()))


    @defer.inlineCallbacks
    def test_policyNotFetched(self):
        """
        A domain with an MTA-STS record whose policy cannot be fetched (the
        policy server answers 404) and none cached has no policy: its mail
        goes under C{may}, and the failure is counted as
        C{sts-policy-fetch-error} under C{no-policy-found}.
        """
        mx1 = self.startMX(_MX1, "mx1.example.com", _Certificate("mx1.example.com"))
        self.publishPolicy("example.com", _policy("enforce", "mx2.example.com"))
        del self.policies.policies["mta-sts.example.com"]
        self.startRelay(self.security())
        recipient = yield self.attempted(self.send())
        self.assertDeliveredOverTLS(recipient, mx1, "mx1.example.com")
        self.assertEqual(self.policies.requests, ["mta-sts.example.com"])
        entry = self.entries()["no-policy-found"]
        self.assertEqual(entry.successes, 1)
        self.assertEqual([f[0] for f in self.failures(entry)], [FETCH_ERROR])


class _DANETests(_OutboundTests):
    """
    DANE (RFC 7672) with a single MX host, mx1, whose certificate is from
    an authority the relay does not trust and for another name: only DANE
    can vouch for it.
    """

    @defer.inlineCallbacks
    def deliver(self, tlsaData: bytes):
        """
        Publish C{example.com} with MX mx1 only and a DANE-EE 3 1 1 TLSA
        record of C{tlsaData} for mx1; send a message.

        @return: a C{Deferred} firing with C{(recipient, mx1, security)}.
        """
        self.dns.clear("example.com", dns.MX)
        self.dns.add("example.com", dns.Record_MX(10, b"mx1.example.com"))
        self.dns.add("_25._tcp.mx1.example.com", tlsaRecord(3, 1, 1, tlsaData), type=TLSA)
        mx1 = self.startMX(_MX1, "mx1.example.com", self.certificate)
        security = self.security(dnssec=SecureLookup([self.dnsAddress], reactor=reactor, timeout=(2,)))
        self.startRelay(security)
        recipient = yield self.attempted(self.send())
        return recipient, mx1, security

    def setUp(self):
        _OutboundTests.setUp(self)
        self.certificate = _Certificate("unrelated.example.org", authority=trustme.CA())


class DANEValidatingTests(_DANETests):
    """
    DANE through a validating resolver (the AD bit set on secure answers).
    """

    validating = True

    @defer.inlineCallbacks
    def test_matching(self):
        """
        A TLSA record matching mx1's key: delivered over TLS, under DANE,
        counted for the C{tlsa} policy of mx1.
        """
        recipient, mx1, security = yield self.deliver(self.certificate.spkiSHA256)
        self.assertDeliveredOverTLS(recipient, mx1, "mx1.example.com")
        self.assertEqual(security.stats["dane", "applied"], 1)
        self.assertEqual(security.stats["dane", "tls"], 1)
        tlsa = self.entries("mx1.example.com")["tlsa"]
        self.assertEqual((tlsa.successes, tlsa.failures), (1, ()))

    @defer.inlineCallbacks
    def test_mismatching(self):
        """
        A TLSA record for another key: the handshake is refused, the
        message deferred, and never sent without TLS.
        """
        recipient, mx1, security = yield self.deliver(hashlib.sha256(b"another key").digest())
        self.assertDeferred(recipient, mx1)
        self.assertEqual(mx1.connections, 1)
        self.assertEqual(security.stats["dane", "applied"], 1)
        [(resultType, host, address, count)] = self.failures(self.entries("mx1.example.com")["tlsa"])
        self.assertEqual((host, address, count), ("mx1.example.com", _MX1, 1))
        self.assertEqual(resultType, "validation-failure")
        self.assertEqual(security.stats["dane", "validation-failure"], 1)


class DANENotValidatingTests(_DANETests):
    """
    DANE through a resolver that does not validate.
    """

    validating = False

    @defer.inlineCallbacks
    def test_notUsed(self):
        """
        Without the AD bit DANE does not apply, even with a mismatching
        TLSA record: no MTA-STS policy either, so the message goes under
        C{may}, over TLS with the certificate unchecked.
        """
        recipient, mx1, security = yield self.deliver(hashlib.sha256(b"another key").digest())
        self.assertDeliveredOverTLS(recipient, mx1, "mx1.example.com")
        self.assertEqual(security.stats["dane", "applied"], 0)
        self.assertIn((b"example.com", dns.MX, True), self.dns.queries)
        self.assertNotIn("tlsa", self.entries("mx1.example.com"))


class RequireTLSTests(_OutboundTests):
    """
    REQUIRETLS (RFC 8689): a message that asked for it goes only to hosts
    whose certificates are checked and that offer REQUIRETLS.
    """

    @defer.inlineCallbacks
    def test_enforcedHostOffersIt(self):
        """
        Under MTA-STS C{enforce}, to a host that offers REQUIRETLS: delivered
        over TLS, with REQUIRETLS on MAIL.
        """
        mx2 = self.startMX(_MX2, "mx2.example.com", _Certificate("mx2.example.com"), requireTLS=True)
        self.publishPolicy("example.com", _policy("enforce", "mx2.example.com"))
        self.startRelay(self.security())
        recipient = yield self.attempted(self.send(requireTLS=True))
        self.assertDeliveredOverTLS(recipient, mx2, "mx2.example.com")
        self.assertTrue(mx2.messages[0].mail.requiretls)

    @defer.inlineCallbacks
    def test_noPolicy(self):
        """
        To a domain without a policy (C{may}: certificates unchecked) the
        message fails at once with C{5.7.30}; nothing is connected to.
        """
        mx1 = self.startMX(_MX1, "mx1.example.com", _Certificate("mx1.example.com"), requireTLS=True)
        mx2 = self.startMX(_MX2, "mx2.example.com", _Certificate("mx2.example.com"), requireTLS=True)
        self.startRelay(self.security())
        recipient = yield self.attempted(self.send(requireTLS=True))
        self.assertEqual(recipient.state, FAILED)
        self.assertEqual((recipient.lastReply.code, recipient.lastReply.status), (550, b"5.7.30"))
        self.assertEqual((mx1.connections, mx2.connections), (0, 0))

    @defer.inlineCallbacks
    def test_enforcedHostWithout(self):
        """
        Under C{enforce}, to a host that does not offer REQUIRETLS: the
        message fails with C{5.7.30} before MAIL; nothing is delivered.
        """
        mx2 = self.startMX(_MX2, "mx2.example.com", _Certificate("mx2.example.com"), requireTLS=False)
        self.publishPolicy("example.com", _policy("enforce", "mx2.example.com"))
        self.startRelay(self.security())
        recipient = yield self.attempted(self.send(requireTLS=True))
        self.assertEqual(recipient.state, FAILED)
        self.assertEqual((recipient.lastReply.code, recipient.lastReply.status), (550, b"5.7.30"))
        self.assertEqual((mx2.mails, mx2.messages), ([], []))


class TLSReportTests(_OutboundTests):
    """
    TLS reports (RFC 8460): the sessions the relay counts one day are
    reported the next, by mail through the relay's own queue.
    """

    def setUp(self):
        _OutboundTests.setUp(self)
        self.clock = task.Clock()
        self.clock.advance(_DAY)
        self.dns.add("_smtp._tls.example.com", dns.Record_TXT(b"v=TLSRPTv1; rua=mailto:tlsrpt@reports.example.net"))
        self.dns.add("reports.example.net", dns.Record_MX(10, b"mx.reports.example.net"))
        self.dns.add("mx.reports.example.net", dns.Record_A(_REPORTS_MX))
        self.dns.add("mta-sts.reports.example.net", dns.Record_A("127.0.0.1"))

    def reporter(self) -> TLSReporter:
        """
        @return: a reporter of L{store}, sending through L{queue}, on
            L{clock}.
        """
        return TLSReporter(
            self.store,
            self.resolver,
            QueueSubmitter(self.queue, reactor),
            organization="Relay Example",
            submitter=_RELAY,
            contact="tlsrpt@relay.example.org",
            fromAddress="tlsrpt@relay.example.org",
            clock=self.clock,
        )

    @defer.inlineCallbacks
    def countAndReport(self, reportsMX: _Receiver):
        """
        Send one message to C{example.com} under C{enforce} (C{mx:
        *.example.com}): mx1 shows a certificate for another name (a
        failure), mx2 takes it (a success).  Then, the next day, report.

        @return: a C{Deferred} firing once the reporter handed over its
            report and the relay attempted it.
        """
        self.startMX(_MX1, "mx1.example.com", _Certificate("other.example.org"))
        mx2 = self.startMX(_MX2, "mx2.example.com", _Certificate("mx2.example.com"))
        self.publishPolicy("example.com", _policy("enforce", "*.example.com"))
        self.startRelay(self.security())
        recipient = yield self.attempted(self.send())
        self.assertDeliveredOverTLS(recipient, mx2, "mx2.example.com")
        self.assertEqual(self.store.days(), [dayOf(_DAY)])

        self.clock.advance(86400)
        reporter = self.reporter()
        yield reporter.runNow()
        self.assertEqual(reporter.stats["mailto-sent"], 1, reporter.stats)
        [queued] = self.queue.ids()
        report = self.queue.getEnvelope(queued)
        yield self.attempted(report)
        return report

    @defer.inlineCallbacks
    def test_reportDelivered(self):
        """
        The report arrives at the report domain's mail exchanger; its
        gzipped JSON validates against the schema and counts the day's
        two sessions: one success, one C{certificate-host-mismatch} at
        mx1.
        """
        reportsMX = self.startMX(_REPORTS_MX, "mx.reports.example.net", _Certificate("mx.reports.example.net"))
        report = yield self.countAndReport(reportsMX)
        self.assertEqual(report.recipients[0].state, DELIVERED, report.recipients[0].lastReply)
        [delivered] = reportsMX.messages
        self.assertEqual(bytes(delivered.recipient), b"tlsrpt@reports.example.net")
        self.assertEqual(bytes(delivered.sender), b"tlsrpt@relay.example.org")
        message = email.message_from_bytes(delivered.data, policy=email.policy.default)
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message["TLS-Report-Domain"], "example.com")
        [attachment] = [part for part in message.walk() if part.get_content_type() == "application/tlsrpt+gzip"]
        data = json.loads(gzip.decompress(attachment.get_content()))
        validator().validate(data)
        self.assertEqual(data["date-range"]["start-datetime"], "2026-03-01T00:00:00Z")
        [policy] = data["policies"]
        self.assertEqual(policy["policy"]["policy-type"], "sts")
        self.assertEqual(policy["policy"]["policy-domain"], "example.com")
        self.assertEqual(policy["summary"], {"total-successful-session-count": 1, "total-failure-session-count": 1})
        [failure] = policy["failure-details"]
        self.assertEqual(failure["result-type"], "certificate-host-mismatch")
        self.assertEqual(failure["receiving-mx-hostname"], "mx1.example.com")
        self.assertEqual(failure["receiving-ip"], _MX1)
        self.assertEqual(failure["failed-session-count"], 1)
        # Handed over: the day is forgotten.
        self.assertEqual(self.store.entries(dayOf(_DAY)), [])

    @defer.inlineCallbacks
    def test_reportSessionNotCounted(self):
        """
        The session that delivers a report is not counted in the next
        day's report (RFC 8460 section 5.3): else every report would cause
        another.
        """
        reportsMX = self.startMX(_REPORTS_MX, "mx.reports.example.net", _Certificate("mx.reports.example.net"))
        report = yield self.countAndReport(reportsMX)
        self.assertEqual(report.recipients[0].state, DELIVERED, report.recipients[0].lastReply)
        self.assertEqual(self.store.entries(self.store.currentDay()), [])

    @defer.inlineCallbacks
    def test_reportDeliveredDespiteTLSFailure(self):
        """
        A report is delivered despite TLS failures (RFC 8460 section 5.3;
        it says C{TLS-Required: No}): even when the report domain's
        C{enforce} policy host shows a certificate for another name.
        """
        reportsMX = self.startMX(_REPORTS_MX, "mx.reports.example.net", _Certificate("other.example.org"))
        self.publishPolicy("reports.example.net", _policy("enforce", "mx.reports.example.net"))
        report = yield self.countAndReport(reportsMX)
        self.assertEqual(report.recipients[0].state, DELIVERED, report.recipients[0].lastReply)
        self.assertEqual(len(reportsMX.messages), 1)
