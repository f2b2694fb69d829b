# -*- test-case-name: mailproto.test.test_dane -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
DANE for SMTP: L{mailproto._security._dns} (DNS lookups that report the AD
bit) against a real DNS server on loopback, and L{mailproto._security._dane}
(TLSA records, chain checks, and real TLS handshakes on loopback).
"""

from __future__ import annotations

import datetime
import hashlib
import io

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.names import dns
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailproto._security._dane import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    DANE_EE,
    DANE_TA,
    PKIX_EE,
    PKIX_TA,
    VALIDATION_FAILURE,
    DANEConnectionCreator,
    DANEDecision,
    DANEVerificationError,
    TLSARecord,
    TLSAResult,
    _nameMatches,
    _subjectPublicKeyInfo,
    daneConnectionCreator,
    lookupTLSA,
    matchesRecord,
    verifyChain,
)
from mailproto._security._dns import DNSLookupFailed, SecureAnswer, SecureLookup
from mailproto.test._dnsserver import TLSA, DNSServer, _Factory, _Zone, tlsaRecord
from mailproto.test._loopback import noConnectionsLeft
from mailproto.test._peers import missing

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None


# -- a DNS server that can also fail, truncate and follow aliases ------------


class _AliasZone(_Zone):
    """
    The test zone, plus CNAME records followed in answers (the alias, then
    the target's records), as a recursive resolver answers.
    """

    def _target(self, name: bytes, type: int):
        key = name.lower().rstrip(b".")
        if type == dns.CNAME or self.records.get((key, type)):
            return None
        aliases = self.records.get((key, dns.CNAME))
        return aliases[0][0] if aliases else None

    def _lookup(self, name, cls, type, timeout):
        alias = self._target(name, type)
        if alias is None:
            return _Zone._lookup(self, name, cls, type, timeout)
        header = dns.RRHeader(name, dns.CNAME, cls, 300, alias, auth=True)
        d = self._lookup(alias.name.name, cls, type, timeout)
        return d.addCallback(lambda found: ([header, *found[0]], found[1], found[2]))

    def secure(self, name, type):
        alias = self._target(name, type)
        if alias is None:
            return _Zone.secure(self, name, type)
        return _Zone.secure(self, name, dns.CNAME) and self.secure(alias.name.name, type)


class _TestFactory(_Factory):
    """
    The test server's factory, which also records each query's flags, can
    answer SERVFAIL for chosen names, and can truncate large UDP answers as
    a server with a small buffer does (no records, the TC bit set).

    @ivar received: C{(name, AD bit, DO bit, payload size, "udp" or "tcp")}
        for every query.
    """

    def __init__(self, zone, validating) -> None:
        _Factory.__init__(self, zone, validating)
        self.failing: set[str] = set()
        self.truncate = False
        self.received: list = []

    def handleQuery(self, message, protocol, address):
        edns = dns._EDNSMessage._fromMessage(message)
        name = message.queries[0].name.name.decode("ascii") if message.queries else ""
        kind = "udp" if address is not None else "tcp"
        self.received.append((name, bool(message.authenticData), bool(edns.dnssecOK), edns.maxSize, kind))
        return _Factory.handleQuery(self, message, protocol, address)

    def sendReply(self, protocol, message, address):
        name = message.queries[0].name.name.decode("ascii").lower() if message.queries else ""
        if name in self.failing:
            message.rCode = dns.ESERVER
            message.answers = []
            message.authenticData = False
        if address is not None and self.truncate and len(message.toStr()) > 512:
            message.answers = []
            message.trunc = 1
        _Factory.sendReply(self, protocol, message, address)


class _TestDNSServer(DNSServer):
    def __init__(self, validating: bool = True) -> None:
        DNSServer.__init__(self, validating)
        self.zone = _AliasZone()
        self.factory = _TestFactory(self.zone, validating)


class _Silent(protocol.DatagramProtocol):
    """
    A DNS server that never answers.
    """

    def __init__(self) -> None:
        self.datagrams = []

    def datagramReceived(self, data, address):
        self.datagrams.append(data)


class _Garbage(protocol.DatagramProtocol):
    """
    A DNS server that answers every query with bytes that are not DNS.
    """

    def datagramReceived(self, data, address):
        self.transport.write(data[:2] + b"\x81\x80 this is not DNS", address)


class _Spoofer(protocol.DatagramProtocol):
    """
    A DNS server that answers a well-formed reply, with the right ID and
    question, from another socket (another port) than the one asked: what
    an off-path attacker guessing IDs does.
    """

    def __init__(self, other) -> None:
        self.other = other

    def datagramReceived(self, data, address):
        query = dns.Message()
        query.fromStr(data)
        reply = dns.Message(id=query.id, answer=1, recAv=1, authenticData=1)
        reply.queries = query.queries
        reply.answers = [dns.RRHeader(query.queries[0].name.name, dns.A, payload=dns.Record_A("192.0.2.66"))]
        self.other.transport.write(reply.toStr(), address)


class DNSTestMixin:
    """
    A fresh L{_TestDNSServer} per test.
    """

    def setUp(self):
        self.server = _TestDNSServer(validating=True)
        self.address = self.server.start(reactor)
        self.addCleanup(self.server.stop)
        self.lookup = SecureLookup([self.address], timeout=(2,))

    def listenUDP(self, proto):
        port = reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return ("127.0.0.1", port.getHost().port)


class SecureLookupTests(DNSTestMixin, TestCase):
    """
    L{SecureLookup} against a real DNS server on loopback.
    """

    timeout = 20

    @defer.inlineCallbacks
    def test_authenticated(self):
        """
        A validating resolver's answer of secure records has the AD bit:
        the answer is authenticated.  The query asked for it with both the
        AD bit and EDNS0's DO bit.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        answer = yield self.lookup.lookup("MX.example.com.", dns.A)
        self.assertIsInstance(answer, SecureAnswer)
        self.assertEqual((answer.name, answer.type, answer.rcode), ("mx.example.com", dns.A, dns.OK))
        self.assertEqual([r.dottedQuad() for r in answer.records], ["192.0.2.1"])
        self.assertTrue(answer.authenticated)
        self.assertTrue(answer.exists)
        self.assertEqual(self.server.queries, [(b"mx.example.com", dns.A, True)])
        [(name, ad, do, size, kind)] = self.server.factory.received
        self.assertEqual((ad, do, kind), (True, True, "udp"))
        self.assertGreater(size, 512)

    @defer.inlineCallbacks
    def test_notValidating(self):
        """
        A resolver that does not validate never sets the AD bit.
        """
        self.server.validating = False
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        answer = yield self.lookup.lookup("mx.example.com", dns.A)
        self.assertEqual(len(answer.records), 1)
        self.assertFalse(answer.authenticated)

    @defer.inlineCallbacks
    def test_insecureRecord(self):
        """
        Records from an unsigned zone are not authenticated, even from a
        validating resolver.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"), secure=False)
        answer = yield self.lookup.lookup("mx.example.com", dns.A)
        self.assertEqual(len(answer.records), 1)
        self.assertFalse(answer.authenticated)

    @defer.inlineCallbacks
    def test_nxdomain(self):
        """
        NXDOMAIN is an answer: no records, the name does not exist.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        answer = yield self.lookup.lookup("gone.example.com", dns.A)
        self.assertEqual((answer.records, answer.rcode), ((), dns.ENAME))
        self.assertFalse(answer.exists)
        self.assertFalse(answer.nameExists)
        self.assertTrue(answer.authenticated)

    @defer.inlineCallbacks
    def test_nodata(self):
        """
        NOERROR without records of the type (NODATA) is an answer: no
        records, but the name exists.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        answer = yield self.lookup.lookup("mx.example.com", dns.AAAA)
        self.assertEqual((answer.records, answer.rcode), ((), dns.OK))
        self.assertFalse(answer.exists)
        self.assertTrue(answer.nameExists)

    @defer.inlineCallbacks
    def test_cnameChain(self):
        """
        The records at the end of the answer's CNAME chain are the
        answer's; C{canonicalName} says where the chain ends.
        """
        self.server.add("mail.example.com", dns.Record_CNAME(b"host.example.net"))
        self.server.add("host.example.net", dns.Record_A("192.0.2.7"))
        answer = yield self.lookup.lookup("mail.example.com", dns.A)
        self.assertEqual([r.dottedQuad() for r in answer.records], ["192.0.2.7"])
        self.assertEqual(answer.canonicalName, "host.example.net")
        self.assertTrue(answer.authenticated)

    @defer.inlineCallbacks
    def test_servfail(self):
        """
        SERVFAIL is a failure, said on one line.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        self.server.factory.failing.add("mx.example.com")
        e = yield self.assertFailure(self.lookup.lookup("mx.example.com", dns.A), DNSLookupFailed)
        self.assertIn("SERVFAIL", str(e))
        self.assertIn("mx.example.com A", str(e))
        self.assertNotIn("\n", str(e))
        # A server that answered with an error is not asked again.
        self.assertEqual(len(self.server.queries), 1)

    @defer.inlineCallbacks
    def test_servfailThenNextServer(self):
        """
        After a SERVFAIL, the next server is asked.
        """
        other = _TestDNSServer(validating=True)
        otherAddress = other.start(reactor)
        self.addCleanup(other.stop)
        self.server.factory.failing.add("mx.example.com")
        other.add("mx.example.com", dns.Record_A("192.0.2.2"))
        lookup = SecureLookup([self.address, otherAddress], timeout=(2,))
        answer = yield lookup.lookup("mx.example.com", dns.A)
        self.assertEqual([r.dottedQuad() for r in answer.records], ["192.0.2.2"])

    @defer.inlineCallbacks
    def test_timeout(self):
        """
        A server that never answers: the lookup fails after the time-outs,
        each a round in which the question is sent again.
        """
        silent = _Silent()
        lookup = SecureLookup([self.listenUDP(silent)], timeout=(0.1, 0.2))
        e = yield self.assertFailure(lookup.lookup("mx.example.com", TLSA), DNSLookupFailed)
        self.assertIn("no reply from 127.0.0.1:", str(e))
        self.assertIn("mx.example.com TLSA", str(e))
        self.assertEqual(len(silent.datagrams), 2)

    @defer.inlineCallbacks
    def test_timeoutThenNextServer(self):
        """
        A server that does not answer in time is passed over for the next.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        lookup = SecureLookup([self.listenUDP(_Silent()), self.address], timeout=(0.1,))
        answer = yield lookup.lookup("mx.example.com", dns.A)
        self.assertTrue(answer.authenticated)

    @defer.inlineCallbacks
    def test_garbage(self):
        """
        A reply that is not DNS (twisted.names reads what it can of it)
        is not an answer.
        """
        lookup = SecureLookup([self.listenUDP(_Garbage())], timeout=(0.1,))
        e = yield self.assertFailure(lookup.lookup("mx.example.com", dns.A), DNSLookupFailed)
        self.assertIn("the reply does not repeat the question", str(e))

    @defer.inlineCallbacks
    def test_replyFromAnotherAddress(self):
        """
        A reply from another address than the server asked (a spoofed
        reply) is dropped, even with the right ID.
        """
        sender = protocol.DatagramProtocol()
        self.listenUDP(sender)
        lookup = SecureLookup([self.listenUDP(_Spoofer(sender))], timeout=(0.2,))
        yield self.assertFailure(lookup.lookup("mx.example.com", dns.A), DNSLookupFailed)

    @defer.inlineCallbacks
    def test_replyToAnotherQuestion(self):
        """
        A reply whose question is not the one asked is a failure.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        sendReply = self.server.factory.sendReply

        def otherQuestion(protocol, message, address):
            message.queries = [dns.Query(b"evil.example.com", dns.A)]
            sendReply(protocol, message, address)

        self.server.factory.sendReply = otherQuestion
        e = yield self.assertFailure(self.lookup.lookup("mx.example.com", dns.A), DNSLookupFailed)
        self.assertIn("another question", str(e))

    @defer.inlineCallbacks
    def test_truncatedRetriedOverTCP(self):
        """
        A truncated UDP reply is asked again over TCP, with the AD and DO
        bits again, and the TCP answer is the one returned.
        """
        self.server.factory.truncate = True
        for i in range(20):
            self.server.add("_25._tcp.mx.example.com", tlsaRecord(3, 1, 2, bytes([i]) * 64), type=TLSA)
        answer = yield self.lookup.lookup("_25._tcp.mx.example.com", TLSA)
        self.assertEqual(len(answer.records), 20)
        self.assertTrue(answer.authenticated)
        kinds = [(ad, do, kind) for _, ad, do, _, kind in self.server.factory.received]
        self.assertEqual(kinds, [(True, True, "udp"), (True, True, "tcp")])

    @defer.inlineCallbacks
    def test_tcpRefused(self):
        """
        A truncated reply from a server that does not listen on TCP: the
        lookup fails, saying so.
        """
        server = _TestDNSServer(validating=True)
        server.factory.truncate = True
        for i in range(20):
            server.add("_25._tcp.mx.example.com", tlsaRecord(3, 1, 2, bytes([i]) * 64), type=TLSA)
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(server.factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        lookup = SecureLookup([("127.0.0.1", port.getHost().port)], timeout=(2,))
        e = yield self.assertFailure(lookup.lookup("_25._tcp.mx.example.com", TLSA), DNSLookupFailed)
        self.assertIn("TCP", str(e))

    def test_cancel(self):
        """
        A lookup can be cancelled; nothing of it is left waiting.
        """
        lookup = SecureLookup([self.listenUDP(_Silent())], timeout=(30,))
        d = lookup.lookup("mx.example.com", dns.A)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active() and c.getTime() > reactor.seconds() + 10], [])

    def test_notASCII(self):
        """
        A name that is not in A-labels fails at once.
        """
        failure = self.failureResultOf(self.lookup.lookup("bücher.example", dns.A), DNSLookupFailed)
        self.assertIn("A-labels", str(failure.value))


class SecureLookupConfigurationTests(SynchronousTestCase):
    """
    Making a L{SecureLookup}.
    """

    def test_fromResolvConf(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# comment\nsearch example.com\nnameserver 127.0.0.1\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver not-an-address\nnameserver\noptions edns0\n")
        lookup = SecureLookup.fromResolvConf(path)
        self.assertEqual(lookup.servers, [("127.0.0.1", 53), ("::1", 53), ("fe80::1", 53)])

    def test_fromResolvConfMissing(self):
        """
        No file, or no server in it: the local host, as the C library does.
        """
        self.assertEqual(SecureLookup.fromResolvConf(self.mktemp()).servers, [("127.0.0.1", 53)])

    def test_noServers(self):
        self.assertRaises(ValueError, SecureLookup, [])
        self.assertRaises(ValueError, SecureLookup, [("127.0.0.1", 53)], timeout=())


# -- certificates for the tests -------------------------------------------------


def _leaf(pem) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.bytes())


def _record(usage: int, selector: int, matchingType: int, certificate: x509.Certificate) -> TLSARecord:
    """
    A record for a certificate, computed independently of the code under
    test (the public key through cryptography's own encoding).
    """
    if selector == 0:
        data = certificate.public_bytes(serialization.Encoding.DER)
    else:
        data = certificate.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if matchingType == 1:
        data = hashlib.sha256(data).digest()
    elif matchingType == 2:
        data = hashlib.sha512(data).digest()
    return TLSARecord(usage, selector, matchingType, data)


def _cnOnly(authority, commonName: str, otherName: str | None = None) -> x509.Certificate:
    """
    A certificate issued by a trustme authority with C{commonName} as its
    subject's CN, and a DNS subjectAltName C{otherName} if given.
    """
    caCert = x509.load_pem_x509_certificate(authority.cert_pem.bytes())
    caKey = serialization.load_pem_private_key(authority.private_key_pem.bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)]))
        .issuer_name(caCert.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if otherName:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(otherName)]), critical=False)
    return builder.sign(caKey, hashes.SHA256())


class _PKI:
    """
    A root, an intermediate under it, and server certificates: the usual
    one for mx.example.com, one for another name, an expired one, one
    from an unrelated authority.
    """

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.root = trustme.CA()
        self.intermediate = self.root.create_child_ca()
        self.good = self.intermediate.issue_cert("mx.example.com")
        self.other = self.intermediate.issue_cert("other.example.net")
        self.expired = self.intermediate.issue_cert(
            "mx.example.com", not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1)
        )
        self.wildcard = self.intermediate.issue_cert("*.example.com")
        self.stranger = trustme.CA().issue_cert("mx.example.com")
        self.rootCert = _leaf(self.root.cert_pem)
        self.intermediateCert = _leaf(self.intermediate.cert_pem)

    @staticmethod
    def chain(leaf) -> list[x509.Certificate]:
        """
        @return: what a server sends: its certificate, then the
            intermediate (trustme leaves the root out).
        """
        return [_leaf(pem) for pem in leaf.cert_chain_pems]


_pki = None


def pki() -> _PKI:
    global _pki
    if trustme is None:
        missing("trustme is not installed")
    if _pki is None:
        _pki = _PKI()
    return _pki


# -- TLSA records ----------------------------------------------------------------


class TLSARecordTests(SynchronousTestCase):
    """
    L{TLSARecord}: wire format, presentation format, usability.
    """

    def test_fromWire(self):
        record = TLSARecord.fromWire(b"\x03\x01\x01" + b"\xab" * 32)
        self.assertEqual(record, TLSARecord(DANE_EE, 1, 1, b"\xab" * 32))
        self.assertEqual(str(record), "3 1 1 " + "AB" * 32)
        self.assertEqual(record.describe(), "DANE-EE(3) 3 1 1 ABABABABABABABAB...")

    def test_fromWireTooShort(self):
        for rdata in (b"", b"\x03", b"\x03\x01\x01"):
            self.assertRaises(ValueError, TLSARecord.fromWire, rdata)

    def test_usable(self):
        """
        Only DANE-TA(2) and DANE-EE(3), with a known selector and matching
        type, and a digest of the digest's length, are usable for SMTP.
        """
        sha256, sha512 = b"\x01" * 32, b"\x01" * 64
        cases = [
            ((DANE_EE, 0, 0, b"\x30\x00"), True),
            ((DANE_EE, 1, 1, sha256), True),
            ((DANE_TA, 0, 2, sha512), True),
            ((DANE_TA, 1, 1, sha256), True),
            ((PKIX_TA, 0, 1, sha256), False),
            ((PKIX_EE, 1, 1, sha256), False),
            ((4, 1, 1, sha256), False),
            ((DANE_EE, 2, 1, sha256), False),
            ((DANE_EE, 1, 3, sha256), False),
            ((DANE_EE, 1, 255, sha256), False),
            ((DANE_EE, 1, 1, sha512), False),
            ((DANE_EE, 1, 2, sha256), False),
            ((DANE_EE, 1, 1, b"\x01" * 31), False),
        ]
        self.assertEqual([(fields, TLSARecord(*fields).usable) for fields, _ in cases], cases)

    def test_states(self):
        """
        L{TLSAResult.state} for each case of RFC 7672 section 2.2.
        """
        record = TLSARecord(DANE_EE, 1, 1, b"\x01" * 32)
        cases = [
            (TLSAResult("mx.example.com", (record,), 0, True), "secure"),
            (TLSAResult("mx.example.com", (record,), 2, True), "secure"),
            (TLSAResult("mx.example.com", (), 2, True), "secure-unusable"),
            (TLSAResult("mx.example.com", (record,), 0, False), "insecure"),
            (TLSAResult("mx.example.com", (), 0, False), "insecure"),
            (TLSAResult("mx.example.com", (), 0, True), "none"),
            (TLSAResult("mx.example.com", (), 0, False, failure="SERVFAIL"), "failed"),
        ]
        self.assertEqual([(r, r.state) for r, _ in cases], cases)

    def test_fromAnswer(self):
        """
        A TLSA answer's records are sorted into usable ones and a count of
        the others (unusable or malformed).
        """
        good = tlsaRecord(3, 1, 1, b"\x01" * 32)
        answer = SecureAnswer(
            "_25._tcp.mx.example.com",
            TLSA,
            (good, tlsaRecord(1, 1, 1, b"\x01" * 32), dns.UnknownRecord(b"\x03\x01"), tlsaRecord(3, 1, 1, b"\x01")),
            True,
        )
        result = TLSAResult.fromAnswer("mx.example.com", "mx.example.com", answer)
        self.assertEqual(result.records, (TLSARecord(3, 1, 1, b"\x01" * 32),))
        self.assertEqual((result.unusable, result.authenticated, result.state), (3, True, "secure"))
        self.assertEqual(result.names, ("mx.example.com",))
        self.assertEqual(TLSAResult("mx.example.com", baseDomain="host.example.net").names, ("host.example.net", "mx.example.com"))


class MatchingTests(SynchronousTestCase):
    """
    L{matchesRecord} for every selector and matching type.
    """

    def setUp(self):
        self.pki = pki()
        self.certificate = _leaf(self.pki.good.cert_chain_pems[0])
        self.other = _leaf(self.pki.other.cert_chain_pems[0])

    def test_everySelectorAndMatchingType(self):
        for selector in (0, 1):
            for matchingType in (0, 1, 2):
                record = _record(DANE_EE, selector, matchingType, self.certificate)
                self.assertTrue(matchesRecord(record, self.certificate), record)
                self.assertTrue(matchesRecord(record, crypto.X509.from_cryptography(self.certificate)), record)
                self.assertFalse(matchesRecord(record, self.other), record)
                changed = TLSARecord(DANE_EE, selector, matchingType, record.data[:-1] + bytes([record.data[-1] ^ 1]))
                self.assertFalse(matchesRecord(changed, self.certificate), record)

    def test_unknownSelectorOrMatchingType(self):
        record = _record(DANE_EE, 1, 1, self.certificate)
        self.assertFalse(matchesRecord(TLSARecord(DANE_EE, 2, 1, record.data), self.certificate))
        self.assertFalse(matchesRecord(TLSARecord(DANE_EE, 1, 3, record.data), self.certificate))

    def test_subjectPublicKeyInfo(self):
        """
        The public key is read from the certificate as it is there; for
        EC and RSA keys, it is what cryptography encodes.
        """
        caKey = serialization.load_pem_private_key(self.pki.root.private_key_pem.bytes(), None)
        caCert = self.pki.rootCert
        now = datetime.datetime.now(datetime.timezone.utc)
        for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())):
            certificate = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "key")]))
                .issuer_name(caCert.subject)
                .public_key(key.public_key())
                .serial_number(1)
                .not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(caKey, hashes.SHA256())
            )
            expected = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            self.assertEqual(_subjectPublicKeyInfo(certificate), expected)

    def test_names(self):
        cases = [
            ("mx.example.com", "mx.example.com", True),
            ("*.example.com", "mx.example.com", True),
            ("*.example.com", "a.mx.example.com", False),
            ("*.example.com", "example.com", False),
            ("*.com", "example.com", False),
            ("mx*.example.com", "mx1.example.com", False),
            ("*.*.example.com", "a.b.example.com", False),
            ("mx.example.com", "mx.example.net", False),
        ]
        self.assertEqual([(p, r, _nameMatches(p, r)) for p, r, _ in cases], cases)


class VerifyChainTests(SynchronousTestCase):
    """
    L{verifyChain}: the DANE decision on a chain, without a handshake.
    """

    def setUp(self):
        self.pki = pki()

    def assertDecision(self, decision, resultType, detail=""):
        self.assertEqual((decision.authenticated, decision.resultType), (resultType is None, resultType), decision.detail)
        self.assertIn(detail, decision.detail)
        self.assertNotIn("\n", decision.detail)
        self.assertEqual(decision.decided, True)

    def test_daneEE(self):
        """
        DANE-EE(3): the server's certificate matches, and nothing else is
        looked at: not its authority, not its name, not its dates.
        """
        for leaf in (self.pki.stranger, self.pki.other, self.pki.expired):
            chain = self.pki.chain(leaf)
            record = _record(DANE_EE, 1, 1, chain[0])
            decision = verifyChain([record], chain, ["mx.example.com"])
            self.assertDecision(decision, None, "DANE-EE(3) 3 1 1")
            self.assertEqual((decision.record, decision.depth), (record, 0))

    def test_daneEEMismatch(self):
        chain = self.pki.chain(self.pki.good)
        decision = verifyChain([_record(DANE_EE, 1, 1, _leaf(self.pki.other.cert_chain_pems[0]))], chain, ["mx.example.com"])
        self.assertDecision(decision, VALIDATION_FAILURE, "no TLSA record matches")

    def test_daneEENotForIssuers(self):
        """
        A DANE-EE(3) record for a certificate of the chain other than the
        server's own does not count.
        """
        chain = self.pki.chain(self.pki.good)
        decision = verifyChain([_record(DANE_EE, 0, 1, chain[1])], chain, ["mx.example.com"])
        self.assertDecision(decision, VALIDATION_FAILURE)

    def test_pkixIgnored(self):
        """
        PKIX-TA(0) and PKIX-EE(1) records are not used, even if they match.
        """
        chain = self.pki.chain(self.pki.good)
        records = [_record(PKIX_EE, 1, 1, chain[0]), _record(PKIX_TA, 0, 1, chain[1])]
        self.assertDecision(verifyChain(records, chain, ["mx.example.com"]), VALIDATION_FAILURE)

    def test_daneTA(self):
        """
        DANE-TA(2) for the intermediate the server sends, whole or its
        public key, by every matching type: the chain verifies up to it
        and the name matches.
        """
        chain = self.pki.chain(self.pki.good)
        for selector in (0, 1):
            for matchingType in (0, 1, 2):
                record = _record(DANE_TA, selector, matchingType, chain[1])
                decision = verifyChain([record], chain, ["mx.example.com"])
                self.assertDecision(decision, None, "the server's certificate is for mx.example.com")
                self.assertEqual((decision.record, decision.depth), (record, 1))

    def test_daneTARootSent(self):
        """
        A root the server sends too can be the trust anchor.
        """
        chain = [*self.pki.chain(self.pki.good), self.pki.rootCert]
        decision = verifyChain([_record(DANE_TA, 0, 1, self.pki.rootCert)], chain, ["mx.example.com"])
        self.assertDecision(decision, None)
        self.assertEqual(decision.depth, 2)

    def test_daneTANotInChain(self):
        """
        A DANE-TA(2) record for a certificate the server does not send
        (the root) matches nothing.
        """
        chain = self.pki.chain(self.pki.good)
        decision = verifyChain([_record(DANE_TA, 0, 1, self.pki.rootCert)], chain, ["mx.example.com"])
        self.assertDecision(decision, VALIDATION_FAILURE, "no TLSA record matches")

    def test_daneTAChainBroken(self):
        """
        The trust anchor is in the chain but did not issue the server's
        certificate: the chain does not verify.
        """
        stranger = self.pki.chain(self.pki.stranger)[0]
        chain = [stranger, self.pki.intermediateCert]
        decision = verifyChain([_record(DANE_TA, 0, 1, self.pki.intermediateCert)], chain, ["mx.example.com"])
        self.assertDecision(decision, VALIDATION_FAILURE, "does not verify")

    def test_daneTAWrongName(self):
        chain = self.pki.chain(self.pki.other)
        decision = verifyChain([_record(DANE_TA, 1, 1, chain[1])], chain, ["mx.example.com", "example.com"])
        self.assertDecision(decision, CERTIFICATE_HOST_MISMATCH, "for other.example.net, not mx.example.com or example.com")

    def test_daneTAExpired(self):
        chain = self.pki.chain(self.pki.expired)
        decision = verifyChain([_record(DANE_TA, 0, 1, chain[1])], chain, ["mx.example.com"])
        self.assertDecision(decision, CERTIFICATE_EXPIRED, "depth 0")

    def test_daneTAOtherReferenceName(self):
        """
        Any of the reference names will do (the next-hop domain, say).
        """
        chain = self.pki.chain(self.pki.other)
        decision = verifyChain([_record(DANE_TA, 0, 1, chain[1])], chain, ["mx.example.com", "OTHER.example.net."])
        self.assertDecision(decision, None, "for other.example.net")

    def test_daneTAWildcard(self):
        chain = self.pki.chain(self.pki.wildcard)
        record = _record(DANE_TA, 0, 1, chain[1])
        self.assertDecision(verifyChain([record], chain, ["mx.example.com"]), None)
        self.assertDecision(verifyChain([record], chain, ["a.mx.example.com", "example.com"]), CERTIFICATE_HOST_MISMATCH)

    def test_commonNameOnlyWithoutSubjectAltNames(self):
        """
        The subject's CN counts only if there is no DNS subjectAltName.
        """
        record = _record(DANE_TA, 0, 1, self.pki.intermediateCert)
        cnOnly = [_cnOnly(self.pki.intermediate, "mx.example.com"), self.pki.intermediateCert]
        self.assertDecision(verifyChain([record], cnOnly, ["mx.example.com"]), None)
        both = [_cnOnly(self.pki.intermediate, "mx.example.com", "other.example.net"), self.pki.intermediateCert]
        self.assertDecision(verifyChain([record], both, ["mx.example.com"]), CERTIFICATE_HOST_MISMATCH)

    def test_bestFailure(self):
        """
        With several records, a DANE-EE(3) match wins over a DANE-TA(2)
        failure; among failures, the one that tells most is given.
        """
        chain = self.pki.chain(self.pki.other)
        ee = _record(DANE_EE, 1, 1, chain[0])
        ta = _record(DANE_TA, 0, 1, chain[1])
        self.assertDecision(verifyChain([ta, ee], chain, ["mx.example.com"]), None, "DANE-EE")
        wrongAnchor = _record(DANE_TA, 0, 1, self.pki.chain(self.pki.stranger)[0])
        chain = [*chain, self.pki.chain(self.pki.stranger)[0]]
        self.assertDecision(verifyChain([wrongAnchor, ta], chain, ["mx.example.com"]), CERTIFICATE_HOST_MISMATCH)

    def test_noCertificate(self):
        self.assertDecision(verifyChain([TLSARecord(DANE_EE, 1, 1, b"\x01" * 32)], [], ["mx.example.com"]), VALIDATION_FAILURE)


class _Outcome:
    """
    Records what a L{DANEConnectionCreator} tells of refusals.
    """

    def __init__(self) -> None:
        self.failures = []

    def failed(self, resultType, detail):
        self.failures.append((resultType, detail))


class CreatorTests(SynchronousTestCase):
    """
    L{DANEConnectionCreator} and L{daneConnectionCreator} without a
    handshake.
    """

    def setUp(self):
        self.record = TLSARecord(DANE_EE, 1, 1, b"\x01" * 32)

    def test_interface(self):
        from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

        creator = DANEConnectionCreator([self.record], "mx.example.com", ["mx.example.com"])
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, creator))
        self.assertIsNone(creator.decision)
        connection = creator.clientConnectionForTLS(None)
        self.assertIsInstance(connection, SSL.Connection)
        self.assertEqual(creator.decision, DANEDecision())
        self.assertFalse(creator.decision.decided)

    def test_fromResult(self):
        unusable = TLSARecord(PKIX_EE, 1, 1, b"\x01" * 32)
        result = TLSAResult("mx.example.com", (self.record,), 1, True, baseDomain="host.example.net")
        creator = daneConnectionCreator(result)
        self.assertEqual(creator.records, (self.record,))
        self.assertEqual(creator.hostname, "host.example.net")
        self.assertEqual(creator.referenceNames, ("host.example.net", "mx.example.com"))
        # The names given, then the result's own.
        creator = daneConnectionCreator(result, "MX.example.com.", ["mx.example.com", "Example.com."])
        self.assertEqual(creator.hostname, "mx.example.com")
        self.assertEqual(creator.referenceNames, ("mx.example.com", "example.com", "host.example.net"))
        self.assertEqual(DANEConnectionCreator([self.record], "mx.example.com", []).referenceNames, ("mx.example.com",))
        self.assertEqual(DANEConnectionCreator([unusable], "mx.example.com", []).records, ())

    def test_notSecure(self):
        """
        Only a C{"secure"} result can authenticate a server.
        """
        for result in (
            TLSAResult("mx.example.com", (), 1, True),
            TLSAResult("mx.example.com", (self.record,), 0, False),
            TLSAResult("mx.example.com", (), 0, True),
            TLSAResult("mx.example.com", (), 0, False, failure="SERVFAIL"),
        ):
            e = self.assertRaises(ValueError, daneConnectionCreator, result)
            self.assertIn(result.state, str(e))

    def test_brokenChainRefused(self):
        """
        A chain that cannot even be read is refused, not an exception in
        OpenSSL's callback.
        """

        class TLSProtocol:
            reasons = []

            def failVerification(self, reason):
                self.reasons.append(reason)

        outcome = _Outcome()
        creator = DANEConnectionCreator([self.record], "mx.example.com", ["mx.example.com"], outcome)
        decision = DANEDecision()
        tlsProtocol = TLSProtocol()
        creator._decide(decision, [object()], tlsProtocol)
        self.assertEqual(decision.resultType, VALIDATION_FAILURE)
        self.assertIn("cannot check", decision.detail)
        [reason] = tlsProtocol.reasons
        self.assertIsInstance(reason.value, DANEVerificationError)
        self.assertIs(reason.value.decision, decision)
        self.assertEqual(outcome.failures, [(VALIDATION_FAILURE, decision.detail)])

    def test_handshakeWithoutCertificate(self):
        """
        A handshake that ends before a certificate was checked is refused.
        """
        reasons = []

        class TLSProtocol:
            def failVerification(self, reason):
                reasons.append(reason)

        creator = DANEConnectionCreator([self.record], "mx.example.com", ["mx.example.com"])
        decision = DANEDecision()
        creator._handshakeDone(decision, TLSProtocol())
        self.assertEqual(decision.resultType, VALIDATION_FAILURE)
        self.assertEqual(len(reasons), 1)
        decided = DANEDecision(authenticated=True)
        creator._handshakeDone(decided, TLSProtocol())
        self.assertTrue(decided.authenticated)
        self.assertEqual(len(reasons), 1)

    def test_error(self):
        """
        L{DANEVerificationError} is a TLS failure, said on one line.
        """
        from mailproto._tlserrors import isTLSFailure

        error = DANEVerificationError(DANEDecision(False, CERTIFICATE_EXPIRED, "the certificate at depth 0 has expired"))
        self.assertTrue(isTLSFailure(error))
        self.assertEqual(str(error), "DANE authentication failed (certificate-expired): the certificate at depth 0 has expired")


# -- TLSA lookups ------------------------------------------------------------------


class LookupTLSATests(DNSTestMixin, TestCase):
    """
    L{lookupTLSA} against a real DNS server on loopback.
    """

    timeout = 20

    def setUp(self):
        DNSTestMixin.setUp(self)
        self.record = TLSARecord(DANE_EE, 1, 1, b"\x01" * 32)

    def addTLSA(self, host, record, secure=True):
        self.server.add(f"_25._tcp.{host}", tlsaRecord(record.usage, record.selector, record.matchingType, record.data), secure, TLSA)

    def asked(self):
        return [name.decode("ascii").lower() for name, _, _ in self.server.queries]

    @defer.inlineCallbacks
    def test_secure(self):
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        self.addTLSA("mx.example.com", self.record)
        self.addTLSA("mx.example.com", TLSARecord(PKIX_EE, 1, 1, b"\x01" * 32))
        result = yield lookupTLSA(self.lookup, "MX.example.com.")
        self.assertEqual((result.state, result.records, result.unusable), ("secure", (self.record,), 1))
        self.assertEqual((result.host, result.baseDomain), ("mx.example.com", "mx.example.com"))
        self.assertEqual(self.asked(), ["mx.example.com", "_25._tcp.mx.example.com"])

    @defer.inlineCallbacks
    def test_otherPort(self):
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        self.server.add("_587._tcp.mx.example.com", tlsaRecord(3, 1, 1, b"\x01" * 32), type=TLSA)
        result = yield lookupTLSA(self.lookup, "mx.example.com", 587)
        self.assertEqual(result.state, "secure")

    @defer.inlineCallbacks
    def test_secureUnusable(self):
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        self.addTLSA("mx.example.com", TLSARecord(PKIX_TA, 0, 1, b"\x01" * 32))
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual((result.state, result.records, result.unusable), ("secure-unusable", (), 1))

    @defer.inlineCallbacks
    def test_insecureAddress(self):
        """
        Address records that are not validated: DANE does not apply, and
        the TLSA records are not even asked for.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"), secure=False)
        self.addTLSA("mx.example.com", self.record)
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual(result.state, "insecure")
        self.assertEqual(self.asked(), ["mx.example.com"])

    @defer.inlineCallbacks
    def test_insecureTLSA(self):
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        self.addTLSA("mx.example.com", self.record, secure=False)
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual(result.state, "insecure")

    @defer.inlineCallbacks
    def test_notValidating(self):
        self.server.validating = False
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        self.addTLSA("mx.example.com", self.record)
        result = yield lookupTLSA(self.lookup, "mx.example.com", expand=False)
        self.assertEqual(result.state, "insecure")

    @defer.inlineCallbacks
    def test_none(self):
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual((result.state, result.records, result.unusable), ("none", (), 0))

    @defer.inlineCallbacks
    def test_hostDoesNotExist(self):
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        result = yield lookupTLSA(self.lookup, "gone.example.com")
        self.assertEqual(result.state, "none")
        self.assertEqual(self.asked(), ["gone.example.com"])

    @defer.inlineCallbacks
    def test_tlsaFailure(self):
        """
        A TLSA lookup that fails for a host with validated addresses does
        not fall back to no DANE: the state is C{"failed"}.
        """
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        self.addTLSA("mx.example.com", self.record)
        self.server.factory.failing.add("_25._tcp.mx.example.com")
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual(result.state, "failed")
        self.assertIn("SERVFAIL", result.failure)
        self.assertEqual(result.records, ())

    @defer.inlineCallbacks
    def test_addressFailure(self):
        self.server.add("mx.example.com", dns.Record_A("192.0.2.1"))
        self.server.factory.failing.add("mx.example.com")
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual(result.state, "failed")

    @defer.inlineCallbacks
    def test_timeout(self):
        lookup = SecureLookup([self.listenUDP(_Silent())], timeout=(0.1,))
        result = yield lookupTLSA(lookup, "mx.example.com")
        self.assertEqual(result.state, "failed")
        self.assertIn("no reply", result.failure)

    def test_otherFailure(self):
        """
        Any failure of the lookup object is a C{"failed"} result, not an
        exception.
        """

        class Broken:
            def lookup(self, name, type):
                return defer.fail(RuntimeError("no\nway"))

        result = self.successResultOf(lookupTLSA(Broken(), "mx.example.com"))
        self.assertEqual((result.state, result.failure), ("failed", "no way"))

    @defer.inlineCallbacks
    def test_expanded(self):
        """
        A host that is an alias: the TLSA records at the name the chain
        ends at come first (RFC 7672 section 2.2.3).
        """
        self.server.add("mx.example.com", dns.Record_CNAME(b"host.example.net"))
        self.server.add("host.example.net", dns.Record_A("192.0.2.1"))
        self.addTLSA("host.example.net", self.record)
        self.addTLSA("mx.example.com", TLSARecord(DANE_EE, 1, 1, b"\x02" * 32))
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual((result.state, result.records), ("secure", (self.record,)))
        self.assertEqual((result.host, result.baseDomain), ("mx.example.com", "host.example.net"))
        self.assertEqual(result.names, ("host.example.net", "mx.example.com"))

    @defer.inlineCallbacks
    def test_expandedWithoutRecords(self):
        """
        No TLSA records at the end of the chain: those of the host's own
        name are used.
        """
        self.server.add("mx.example.com", dns.Record_CNAME(b"host.example.net"))
        self.server.add("host.example.net", dns.Record_A("192.0.2.1"))
        self.addTLSA("mx.example.com", self.record)
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual((result.state, result.records, result.baseDomain), ("secure", (self.record,), "mx.example.com"))
        self.assertEqual(self.asked(), ["mx.example.com", "_25._tcp.host.example.net", "_25._tcp.mx.example.com"])

    @defer.inlineCallbacks
    def test_insecureAlias(self):
        """
        An alias chain that is not validated: DANE does not apply.
        """
        self.server.add("mx.example.com", dns.Record_CNAME(b"host.example.net"))
        self.server.add("host.example.net", dns.Record_A("192.0.2.1"), secure=False)
        self.addTLSA("host.example.net", self.record)
        result = yield lookupTLSA(self.lookup, "mx.example.com")
        self.assertEqual(result.state, "insecure")

    @defer.inlineCallbacks
    def test_notExpanded(self):
        self.server.add("mx.example.com", dns.Record_CNAME(b"host.example.net"))
        self.addTLSA("mx.example.com", self.record)
        result = yield lookupTLSA(self.lookup, "mx.example.com", expand=False)
        self.assertEqual(result.state, "secure")
        self.assertEqual(self.asked(), ["_25._tcp.mx.example.com"])


# -- real TLS -----------------------------------------------------------------------


def _serverOptions(leaf, withChain: bool = True, maximum=None) -> CertificateOptions:
    """
    @param leaf: a trustme certificate.
    @param withChain: whether the server sends the intermediate too.
    @param maximum: the highest TLS version, or C{None}.
    @return: the options of a TLS server with that certificate.
    """
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    chain = _PKI.chain(leaf)
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]] if withChain else None,
        lowerMaximumSecurityTo=maximum,
    )


class _Client(protocol.Protocol):
    """
    A TLS client that says C{ping} as soon as it is connected (before the
    handshake is over) and waits for C{pong}.
    """

    def __init__(self) -> None:
        self.received = b""
        self.reason = None
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.received += data
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


class _Server(protocol.Protocol):
    def dataReceived(self, data):
        self.factory.received.append(data)
        self.transport.write(b"pong")


class HandshakeTests(TestCase):
    """
    L{DANEConnectionCreator} in real TLS handshakes on loopback.
    """

    timeout = 20

    def setUp(self):
        self.pki = pki()

    def serverOptions(self, leaf, withChain=True, maximum=None):
        """
        @return: L{_serverOptions} that also record the SNI the client
            sends, in C{self.serverNames}.
        """
        options = _serverOptions(leaf, withChain, maximum)
        self.serverNames = []
        options.getContext().set_tlsext_servername_callback(lambda connection: self.serverNames.append(connection.get_servername()))
        return options

    async def handshake(self, serverOptions, creator):
        """
        Connect with C{creator} to a TLS server that answers C{pong} to
        anything.

        @return: what the client received, why its connection ended, and
            what the server received.
        """
        factory = protocol.Factory.forProtocol(_Server)
        factory.received = []
        port = reactor.listenSSL(0, factory, serverOptions, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = _Client()
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, creator), client)
        await client.done
        await noConnectionsLeft(self)
        return client.received, client.reason, factory.received

    async def assertRefused(self, serverOptions, creator, resultType, detail=""):
        received, reason, serverReceived = await self.handshake(serverOptions, creator)
        self.assertEqual((received, serverReceived), (b"", []))
        self.assertIsInstance(reason.value, DANEVerificationError)
        self.assertEqual(reason.value.decision, creator.decision)
        self.assertEqual((creator.decision.authenticated, creator.decision.resultType), (False, resultType))
        self.assertIn(detail, creator.decision.detail)
        self.assertEqual(creator.outcome.failures, [(resultType, creator.decision.detail)])
        return creator.decision

    async def assertAccepted(self, serverOptions, creator):
        received, reason, serverReceived = await self.handshake(serverOptions, creator)
        self.assertEqual((received, serverReceived), (b"pong", [b"ping"]))
        self.assertTrue(creator.decision.authenticated)
        self.assertEqual(self.serverNames, [creator.hostname.encode("ascii")])
        self.assertEqual(creator.outcome.failures, [])
        return creator.decision

    def creator(self, *records, names=("mx.example.com",)):
        return DANEConnectionCreator(records, "mx.example.com", list(names), _Outcome())

    async def test_daneEEMatch(self):
        """
        DANE-EE(3): a server whose certificate matches is accepted, though
        it is for another name from an authority nobody trusts; the client
        sent the host name as SNI.
        """
        for leaf in (self.pki.stranger, self.pki.other):
            options = self.serverOptions(leaf)
            decision = await self.assertAccepted(options, self.creator(_record(DANE_EE, 1, 1, self.pki.chain(leaf)[0])))
            self.assertEqual(decision.depth, 0)

    async def test_daneEEMismatch(self):
        """
        DANE-EE(3): a server whose certificate does not match fails the
        handshake, and gets nothing.
        """
        record = _record(DANE_EE, 1, 1, self.pki.chain(self.pki.other)[0])
        await self.assertRefused(self.serverOptions(self.pki.good), self.creator(record), VALIDATION_FAILURE, "no TLSA record")

    async def test_daneTAMatch(self):
        record = _record(DANE_TA, 0, 1, self.pki.intermediateCert)
        decision = await self.assertAccepted(self.serverOptions(self.pki.good), self.creator(record))
        self.assertEqual((decision.record, decision.depth), (record, 1))

    async def test_daneTAWrongName(self):
        record = _record(DANE_TA, 1, 1, self.pki.intermediateCert)
        await self.assertRefused(self.serverOptions(self.pki.other), self.creator(record), CERTIFICATE_HOST_MISMATCH, "other.example.net")

    async def test_daneTANotSent(self):
        """
        The server leaves out the intermediate that is the trust anchor.
        """
        record = _record(DANE_TA, 0, 1, self.pki.intermediateCert)
        options = self.serverOptions(self.pki.good, withChain=False)
        await self.assertRefused(options, self.creator(record), VALIDATION_FAILURE)

    async def test_daneTAExpired(self):
        record = _record(DANE_TA, 0, 2, self.pki.intermediateCert)
        await self.assertRefused(self.serverOptions(self.pki.expired), self.creator(record), CERTIFICATE_EXPIRED)

    async def test_tls12(self):
        """
        The same decisions with a server that only speaks TLS 1.2.
        """
        ee = _record(DANE_EE, 0, 1, self.pki.chain(self.pki.other)[0])
        await self.assertAccepted(self.serverOptions(self.pki.other, maximum=TLSVersion.TLSv1_2), self.creator(ee))
        ta = _record(DANE_TA, 0, 1, self.pki.intermediateCert)
        options = self.serverOptions(self.pki.other, maximum=TLSVersion.TLSv1_2)
        await self.assertRefused(options, self.creator(ta), CERTIFICATE_HOST_MISMATCH)

    async def test_garbage(self):
        """
        A server that answers the client's hello with something that is not
        TLS: the handshake fails, with no DANE decision.
        """

        class Garbage(protocol.Protocol):
            def dataReceived(self, data):
                self.transport.write(b"220 this is not TLS at all\r\n" * 4)
                self.transport.loseConnection()

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Garbage), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        creator = self.creator(_record(DANE_EE, 1, 1, self.pki.chain(self.pki.good)[0]))
        client = _Client()
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, creator), client)
        await client.done
        reason = client.reason
        await noConnectionsLeft(self)
        self.assertEqual(client.received, b"")
        self.assertIsInstance(reason.value, SSL.Error)
        self.assertNotIsInstance(reason.value, DANEVerificationError)
        self.assertFalse(creator.decision.decided)


class ESMTPClientTests(TestCase):
    """
    An ESMTP client whose STARTTLS uses a L{DANEConnectionCreator}.
    """

    timeout = 20

    def setUp(self):
        self.pki = pki()

    @defer.inlineCallbacks
    def send(self, leaf, creator):
        """
        Send a message to a scripted server whose STARTTLS starts TLS with
        C{leaf}'s certificate.

        @return: the server factory, the client protocol, and the result.
        """
        from mailproto._sender import ESMTPSenderFactory
        from mailproto.testing import ScriptedSMTPFactory, StartTLS

        server = ScriptedSMTPFactory({b"STARTTLS": StartTLS(_serverOptions(leaf))})
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        protocols = []

        class Factory(ESMTPSenderFactory):
            def buildProtocol(self, addr):
                p = ESMTPSenderFactory.buildProtocol(self, addr)
                protocols.append(p)
                return p

        d = defer.Deferred()
        message = io.BytesIO(b"Subject: DANE\r\n\r\nHello.\r\n")
        factory = Factory(
            None, None, "a@example.org", ["b@example.com"], message, d,
            retries=0, contextFactory=creator, requireAuthentication=False, requireTransportSecurity=True,
        )  # fmt: skip
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        results = []
        d.addBoth(results.append)
        yield d
        yield server.allClosed()
        yield defer.ensureDeferred(noConnectionsLeft(self))
        return server, protocols[0], results[0]

    @defer.inlineCallbacks
    def test_accepted(self):
        creator = DANEConnectionCreator([_record(DANE_EE, 1, 1, self.pki.chain(self.pki.stranger)[0])], "mx.example.com", [])
        server, client, result = yield self.send(self.pki.stranger, creator)
        self.assertEqual(result[0], 1)
        self.assertFalse(client.tlsFailed)
        self.assertEqual(server.messages, [b"Subject: DANE\r\n\r\nHello.\r\n"])
        self.assertTrue(creator.decision.authenticated)

    @defer.inlineCallbacks
    def test_refused(self):
        """
        A server that fails DANE: the client's TLS failed, and it sent
        nothing after STARTTLS.
        """
        record = _record(DANE_TA, 0, 1, self.pki.intermediateCert)
        creator = DANEConnectionCreator([record], "mx.example.com", ["mx.example.com"])
        server, client, result = yield self.send(self.pki.other, creator)
        self.assertIsInstance(result, Failure)
        self.assertIn("certificate-host-mismatch", str(result.value))
        self.assertTrue(client.tlsFailed)
        self.assertEqual([c.split(b" ")[0] for c in server.commands], [b"EHLO", b"STARTTLS"])
        self.assertEqual(server.messages, [])
        self.assertEqual(creator.decision.resultType, CERTIFICATE_HOST_MISMATCH)
