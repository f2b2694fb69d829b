# -*- test-case-name: mailproto.test.test_dane -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
DANE for SMTP (RFC 7672, with RFC 6698 and RFC 7671): TLSA records and
how a server's certificate chain is checked against them.

  - L{TLSARecord} is one TLSA record; L{TLSARecord.usable} says whether an
    SMTP client may use it (RFC 7672 section 3.1: only DANE-TA(2) and
    DANE-EE(3), with a known selector and matching type).
  - L{lookupTLSA} asks a L{SecureLookup
    <mailproto._security._dns.SecureLookup>} for a mail exchanger's TLSA
    records and answers with a L{TLSAResult}, whose C{state} tells what
    DANE requires of the connection (authenticated TLS, encrypted TLS, or
    nothing), or that the lookup failed and the host must be tried later.
  - L{matchesRecord} says whether one certificate matches one record;
    L{verifyChain} decides about a whole chain, and says why as an RFC
    8460 result type in a L{DANEDecision}.
  - L{daneConnectionCreator} makes the TLS client settings for an ESMTP
    client's STARTTLS that apply that decision during the handshake: a
    server that does not pass never gets a command over TLS.

The AD bit behind a L{TLSAResult} is only as good as the resolver that
set it: see L{mailproto._security._dns} for the trust model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure
from zope.interface import implementer

from mailproto._security._dns import TLSA

__all__ = [
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_HOST_MISMATCH",
    "DANEConnectionCreator",
    "DANEDecision",
    "DANEVerificationError",
    "DANE_EE",
    "DANE_TA",
    "PKIX_EE",
    "PKIX_TA",
    "TLSARecord",
    "TLSAResult",
    "VALIDATION_FAILURE",
    "daneConnectionCreator",
    "lookupTLSA",
    "matchesRecord",
    "verifyChain",
]

_log = Logger()

# Certificate usages (RFC 6698 section 2.1.1, names from RFC 7218).
PKIX_TA = 0
PKIX_EE = 1
DANE_TA = 2
DANE_EE = 3

_USAGES = {PKIX_TA: "PKIX-TA(0)", PKIX_EE: "PKIX-EE(1)", DANE_TA: "DANE-TA(2)", DANE_EE: "DANE-EE(3)"}

# Selectors (section 2.1.2): the whole certificate, or its public key.
_CERT = 0
_SPKI = 1

# Matching types (section 2.1.3), with the length of their data.
_FULL = 0
_HASHES = {1: (hashlib.sha256, 32), 2: (hashlib.sha512, 64)}

# RFC 8460 section 4.3 result types for what DANE can find wrong.
VALIDATION_FAILURE = "validation-failure"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"

#: OpenSSL's X509_V_ERR_CERT_HAS_EXPIRED.
_X509_V_ERR_CERT_HAS_EXPIRED = 10


@dataclasses.dataclass(frozen=True)
class TLSARecord:
    """
    One TLSA record (RFC 6698 section 2.1).

    @ivar usage: the certificate usage: L{PKIX_TA}, L{PKIX_EE}, L{DANE_TA}
        or L{DANE_EE} (or any other number, which is unusable).
    @ivar selector: 0 for the whole certificate, 1 for its
        SubjectPublicKeyInfo.
    @ivar matchingType: 0 for the selected data itself, 1 for its SHA-256
        digest, 2 for its SHA-512 digest.
    @ivar data: the certificate association data.
    """

    usage: int
    selector: int
    matchingType: int
    data: bytes

    @classmethod
    def fromWire(cls, rdata: bytes) -> TLSARecord:
        """
        Read a record's RDATA, as twisted.names gives it (the C{data} of a
        C{dns.UnknownRecord}).

        @raise ValueError: if it is shorter than its three fixed fields
            and one byte of data.
        """
        rdata = bytes(rdata)
        if len(rdata) < 4:
            raise ValueError(f"a TLSA record needs at least 4 bytes, not {len(rdata)}")
        return cls(rdata[0], rdata[1], rdata[2], rdata[3:])

    def __str__(self) -> str:
        """
        @return: the record's presentation format (RFC 6698 section 2.2):
            C{"3 1 1 0A1B..."}.
        """
        return f"{self.usage} {self.selector} {self.matchingType} {self.data.hex().upper()}"

    def describe(self) -> str:
        """
        @return: a short form for messages: the usage's name, the fields
            and the start of the data (C{"DANE-EE(3) 3 1 1 0A1B2C3D..."}).
        """
        data = self.data.hex().upper()
        if len(data) > 16:
            data = data[:16] + "..."
        usage = _USAGES.get(self.usage, f"usage {self.usage}")
        return f"{usage} {self.usage} {self.selector} {self.matchingType} {data}"

    @property
    def usable(self) -> bool:
        """
        Whether an SMTP client may use the record (RFC 7672 section 3.1):
        its usage is DANE-TA(2) or DANE-EE(3) (PKIX-TA(0) and PKIX-EE(1)
        are not used for SMTP), its selector and matching type are known,
        and a digest has its digest's length.
        """
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (_CERT, _SPKI):
            return False
        if self.matchingType == _FULL:
            return bool(self.data)
        if self.matchingType in _HASHES:
            return len(self.data) == _HASHES[self.matchingType][1]
        return False


@dataclasses.dataclass(frozen=True)
class TLSAResult:
    """
    What the DNS says about a mail exchanger's TLSA records.

    @ivar host: the mail exchanger's name, as asked (lower case, no final
        dot).
    @ivar records: the usable records (L{TLSARecord.usable}).
    @ivar unusable: how many records were not usable.
    @ivar authenticated: whether the answer was validated (the AD bit).
    @ivar baseDomain: the TLSA base domain: the name whose
        C{_25._tcp} records these are; C{host}, or the name C{host} is an
        alias of (RFC 7672 section 2.2.3).  The client sends it in SNI.
    @ivar failure: why the lookup failed, if it did (one line); then
        C{state} is C{"failed"}.
    """

    host: str
    records: tuple[TLSARecord, ...] = ()
    unusable: int = 0
    authenticated: bool = False
    baseDomain: str = ""
    failure: str | None = None

    def __post_init__(self) -> None:
        if not self.baseDomain:
            object.__setattr__(self, "baseDomain", self.host)

    @property
    def state(self) -> str:
        """
        What DANE asks of a connection to the host:

          - C{"secure"}: validated, usable records: TLS is required and
            the server must pass L{verifyChain} (L{daneConnectionCreator});
          - C{"secure-unusable"}: validated records, none usable: TLS is
            required, without authentication (RFC 7672 section 2.2);
          - C{"insecure"}: not validated: DANE does not apply;
          - C{"none"}: validated denial, no TLSA records: DANE does not
            apply;
          - C{"failed"}: the lookup failed (SERVFAIL, time-out) for a host
            whose address records are validated: the answer might have
            required TLS, so the host must not be tried without it; the
            caller should try the host later (RFC 7672 section 2.1.1).
        """
        if self.failure is not None:
            return "failed"
        if not self.authenticated:
            return "insecure"
        if self.records:
            return "secure"
        return "secure-unusable" if self.unusable else "none"

    @property
    def names(self) -> tuple[str, ...]:
        """
        The names a DANE-TA(2) certificate may be for, as far as this
        host goes: the TLSA base domain and the host's own name (RFC 7672
        section 3.2.2); the caller adds the next-hop domain.
        """
        return tuple(dict.fromkeys((self.baseDomain, self.host)))

    @classmethod
    def fromAnswer(cls, host: str, baseDomain: str, answer) -> TLSAResult:
        """
        @param host: the mail exchanger.
        @param baseDomain: the name whose TLSA records were asked for.
        @param answer: the L{SecureAnswer
            <mailproto._security._dns.SecureAnswer>} to the question.
        """
        usable, unusable = [], 0
        for payload in answer.records:
            try:
                record = TLSARecord.fromWire(_rdata(payload))
            except ValueError:
                unusable += 1
                continue
            if record.usable:
                usable.append(record)
            else:
                unusable += 1
        return cls(host, tuple(usable), unusable, answer.authenticated, baseDomain)


def _rdata(payload) -> bytes:
    """
    @return: a record's RDATA: what C{dns.UnknownRecord}, which TLSA
        records are in twisted.names, writes is its C{data}.
    """
    buffer = io.BytesIO()
    payload.encode(buffer)
    return buffer.getvalue()


def _tlsaName(base: str, port: int) -> str:
    return f"_{port}._tcp.{base}"


async def _ask(lookup, name: str, recordType: int):
    """
    @return: the answer and C{None}, or C{None} and why the lookup failed.
    """
    try:
        return await lookup.lookup(name, recordType), None
    except defer.CancelledError:
        raise
    except Exception as e:
        return None, " ".join(str(e).split()) or type(e).__name__


async def _lookupTLSA(lookup, host: str, port: int, expand: bool) -> TLSAResult:
    host = host.rstrip(".").lower()
    bases = [host]
    if expand:
        address, failure = await _ask(lookup, host, dns.A)
        if failure is not None:
            return TLSAResult(host, failure=failure)
        if not address.authenticated:
            # Insecure address records: DANE does not apply, and the TLSA
            # records are not asked for.
            return TLSAResult(host)
        if not address.nameExists:
            return TLSAResult(host, authenticated=True)
        if address.canonicalName != host:
            bases.insert(0, address.canonicalName)
    for base in bases:
        answer, failure = await _ask(lookup, _tlsaName(base, port), TLSA)
        if failure is not None:
            return TLSAResult(host, baseDomain=base, failure=failure)
        result = TLSAResult.fromAnswer(host, base, answer)
        if result.records or result.unusable:
            break
    return result


def lookupTLSA(lookup, host: str, port: int = 25, expand: bool = True) -> defer.Deferred[TLSAResult]:
    """
    Find a mail exchanger's TLSA records (RFC 7672 section 2.2).

    With C{expand}, the host's address records are asked for first: if
    they are not validated, DANE does not apply (C{"insecure"}) and no
    TLSA question is asked (RFC 7672 section 2.2.3); if the host is an alias (a validated CNAME
    chain), the TLSA records of the name at the end of the chain are
    looked for first and, if there are none, those of the host's own name
    (RFC 7672 section 2.2.3); L{TLSAResult.baseDomain} says which.
    (RFC 7672 also lets a client use the host's own name when only the
    first part of an alias chain is validated; a stub that sees one AD
    bit for the whole answer cannot tell that case apart, and treats it
    as insecure.)

    Without C{expand}, only C{_25._tcp.<host>} is asked for; the caller
    then vouches that the host's address records were validated.

    @param lookup: a L{SecureLookup <mailproto._security._dns.SecureLookup>}
        (or anything with its C{lookup} method).
    @param host: the mail exchanger's name, in A-labels.
    @param port: the SMTP port.
    @param expand: whether to look at the address records first.
    @return: a C{Deferred} that fires with a L{TLSAResult}, never fails:
        a failed lookup is L{TLSAResult.state} C{"failed"}.
    """
    return defer.ensureDeferred(_lookupTLSA(lookup, host, port, expand))


# -- certificates ---------------------------------------------------------


def _asCryptography(certificate) -> x509.Certificate:
    """
    @param certificate: a C{cryptography} certificate, a pyOpenSSL
        C{X509}, or a C{twisted.internet.ssl.Certificate}.
    """
    if isinstance(certificate, x509.Certificate):
        return certificate
    certificate = getattr(certificate, "original", certificate)
    return certificate.to_cryptography()


def _asOpenSSL(certificate) -> crypto.X509:
    if isinstance(certificate, crypto.X509):
        return certificate
    return crypto.X509.from_cryptography(_asCryptography(certificate))


def _element(der: bytes, offset: int) -> tuple[int, int]:
    """
    Read the header of one DER element (a tag of one byte, as every
    element of a certificate's TBSCertificate up to its public key has).

    @return: where its contents start and where it ends.
    @raise ValueError: if the element does not fit in C{der}.
    """
    if offset + 2 > len(der):
        raise ValueError("truncated DER")
    length, start = der[offset + 1], offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or start + count > len(der):
            raise ValueError("bad DER length")
        length, start = int.from_bytes(der[start : start + count], "big"), start + count
    if start + length > len(der):
        raise ValueError("truncated DER")
    return start, start + length


def _subjectPublicKeyInfo(certificate: x509.Certificate) -> bytes:
    """
    @return: the DER SubjectPublicKeyInfo exactly as the certificate has
        it, which is what a TLSA record with selector 1 is computed from
        (RFC 6698 section 2.1.2), rather than a re-encoding of the key.
    """
    tbs = certificate.tbs_certificate_bytes
    offset = _element(tbs, 0)[0]
    if tbs[offset] == 0xA0:  # [0] EXPLICIT version
        offset = _element(tbs, offset)[1]
    # serialNumber, signature, issuer, validity, subject
    for _ in range(5):
        offset = _element(tbs, offset)[1]
    return tbs[offset : _element(tbs, offset)[1]]


def matchesRecord(record: TLSARecord, certificate) -> bool:
    """
    Whether a certificate matches a TLSA record's selector, matching type
    and data (RFC 6698 section 2.1); the usage is not looked at.

    @param record: the L{TLSARecord}.
    @param certificate: a C{cryptography} certificate or a pyOpenSSL
        C{X509}.
    @return: C{False} too for a selector or matching type not known.
    """
    certificate = _asCryptography(certificate)
    if record.selector == _CERT:
        selected = certificate.public_bytes(Encoding.DER)
    elif record.selector == _SPKI:
        selected = _subjectPublicKeyInfo(certificate)
    else:
        return False
    if record.matchingType == _FULL:
        return selected == record.data
    if record.matchingType in _HASHES:
        return _HASHES[record.matchingType][0](selected).digest() == record.data
    return False


def _certificateNames(certificate: x509.Certificate) -> list[str]:
    """
    @return: the names a certificate is for (RFC 7672 section 3.2.3): its
        DNS subjectAltNames; its subject's common names only if it has no
        DNS subjectAltName.  (service_identity, which the web checks use,
        never looks at the common name, so it cannot do this check.)
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = extension.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [n.rstrip(".").lower() for n in names if isinstance(n, str)]


def _nameMatches(pattern: str, reference: str) -> bool:
    """
    Whether a certificate's name is for a reference name.  A wildcard is
    only allowed as the whole leftmost label, stands for exactly one label,
    and needs at least two labels after it (C{*.example.com}, not
    C{*.com} or C{mx*.example.com}).
    """
    if pattern == reference:
        return True
    if not pattern.startswith("*."):
        return False
    base = pattern[2:]
    if "*" in base or "." not in base:
        return False
    label, dot, rest = reference.partition(".")
    return bool(label and dot) and rest == base


# -- the decision -------------------------------------------------------------


@dataclasses.dataclass
class DANEDecision:
    """
    What DANE decided about a server's certificate chain.

    @ivar authenticated: whether the chain passed.
    @ivar resultType: if it did not, why, as an RFC 8460 result type:
        L{VALIDATION_FAILURE} (no record matched, or the chain to a DANE-TA
        trust anchor does not verify), L{CERTIFICATE_HOST_MISMATCH} (the
        chain to a DANE-TA trust anchor verifies, but the server's
        certificate is for another name) or L{CERTIFICATE_EXPIRED} (the
        chain to a DANE-TA trust anchor has an expired certificate);
        C{None} if it passed or if no decision was made (the handshake
        failed before the server's certificate came).
    @ivar detail: one line that says what matched or what went wrong.
    @ivar record: the L{TLSARecord} that matched, or C{None}.
    @ivar depth: where in the server's chain the certificate that matched
        is (0 for the server's own), or C{None}.
    """

    authenticated: bool = False
    resultType: str | None = None
    detail: str = ""
    record: TLSARecord | None = None
    depth: int | None = None

    @property
    def decided(self) -> bool:
        """
        Whether the server's chain was looked at.
        """
        return self.authenticated or self.resultType is not None

    def _take(self, other: DANEDecision) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(other, field.name))


class DANEVerificationError(SSL.Error):
    """
    A TLS server's certificate chain did not pass DANE: the reason the
    handshake was stopped.  It is an C{OpenSSL.SSL.Error}, like the other
    ways a handshake fails, so that code that treats TLS failures as such
    treats this one the same way.

    @ivar decision: the L{DANEDecision}.
    """

    def __init__(self, decision: DANEDecision) -> None:
        SSL.Error.__init__(self, [("DANE", "", f"{decision.resultType}: {decision.detail}")])
        self.decision = decision

    def __str__(self) -> str:
        return f"DANE authentication failed ({self.decision.resultType}): {self.decision.detail}"


def _failure(resultType: str, detail: str, record=None, depth=None) -> DANEDecision:
    return DANEDecision(False, resultType, detail, record, depth)


def _checkTrustAnchor(chain: list[crypto.X509], depth: int, referenceNames) -> DANEDecision:
    """
    Check a chain against the certificate at C{depth}, which matched a
    DANE-TA(2) record, as its only trust anchor: OpenSSL verifies the
    signatures and dates from the server's certificate up to it (a partial
    chain, since the anchor need not be self-signed), and the server's
    certificate must be for one of the reference names.
    """
    store = crypto.X509Store()
    store.add_cert(chain[depth])
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    try:
        crypto.X509StoreContext(store, chain[0], chain[1:]).verify_certificate()
    except crypto.X509StoreContextError as e:
        code, where, message = (list(e.errors) + [None, None, str(e)])[:3]
        if code == _X509_V_ERR_CERT_HAS_EXPIRED:
            return _failure(CERTIFICATE_EXPIRED, f"the certificate at depth {where} in the server's chain has expired", depth=depth)
        return _failure(VALIDATION_FAILURE, f"the server's chain does not verify up to the DANE-TA trust anchor at depth {depth}: {message}", depth=depth)
    names = _certificateNames(chain[0].to_cryptography())
    for reference in referenceNames:
        if any(_nameMatches(name, reference) for name in names):
            return DANEDecision(True, None, f"the server's certificate is for {reference}", depth=depth)
    shown = ", ".join(names[:3]) or "no name"
    return _failure(
        CERTIFICATE_HOST_MISMATCH,
        f"the server's certificate is for {shown}, not {' or '.join(referenceNames) or 'any name asked for'}",
        depth=depth,
    )


#: Which failure tells most, when several DANE-TA anchors were tried.
_RANK = {CERTIFICATE_HOST_MISMATCH: 2, CERTIFICATE_EXPIRED: 1, VALIDATION_FAILURE: 0}


def verifyChain(records, chain, referenceNames) -> DANEDecision:
    """
    Decide whether a server's certificate chain passes DANE (RFC 7672
    section 3.1, RFC 7671 section 5).

      - A DANE-EE(3) record passes the server's own certificate if it
        matches it; nothing else is checked, neither names nor dates
        (RFC 7672 section 3.1.1).
      - A DANE-TA(2) record makes a certificate of the chain that matches
        it a trust anchor (one the server sent: a record for a bare public
        key the server does not send in a certificate is not found): the
        chain must then verify up to it, dates included, and the server's
        certificate must be for one of C{referenceNames}
        (DNS subjectAltNames, or the common name if there is none; a
        wildcard only as the whole leftmost label).

    @param records: the usable L{TLSARecord}s (others are skipped).
    @param chain: the certificates the server sent, its own first
        (pyOpenSSL C{X509} or C{cryptography} certificates).
    @param referenceNames: the names the server's certificate may be for
        (DANE-TA only), in A-labels: the TLSA base domain, the MX host
        name, the next-hop domain (RFC 7672 section 3.2.2).
    @return: the L{DANEDecision}.
    """
    records = [r for r in records if r.usable]
    if not chain:
        return _failure(VALIDATION_FAILURE, "the server sent no certificate")
    chain = [_asOpenSSL(c) for c in chain]
    decoded = [c.to_cryptography() for c in chain]
    referenceNames = [n.rstrip(".").lower() for n in referenceNames]
    for record in records:
        if record.usage == DANE_EE and matchesRecord(record, decoded[0]):
            return DANEDecision(True, None, f"{record.describe()} matches the server's certificate", record, 0)
    best = None
    # Anchors above the server's certificate first, then the certificate
    # itself (a self-issued certificate can be its own trust anchor).
    for depth in [*range(1, len(chain)), 0]:
        for record in records:
            if record.usage != DANE_TA or not matchesRecord(record, decoded[depth]):
                continue
            decision = _checkTrustAnchor(chain, depth, referenceNames)
            decision.record = record
            if decision.authenticated:
                decision.detail = f"{record.describe()} matches the certificate at depth {depth}; {decision.detail}"
                return decision
            if best is None or _RANK[decision.resultType] > _RANK[best.resultType]:
                best = decision
    if best is not None:
        return best
    return _failure(VALIDATION_FAILURE, f"no TLSA record matches the server's chain of {len(chain)} certificate(s)")


# -- TLS ----------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class DANEConnectionCreator:
    """
    TLS client settings that authenticate the server with DANE, for
    C{ITLSTransport.startTLS} (an ESMTP client's C{context}).

    The handshake sends C{hostname} as SNI (RFC 7672 section 8.1: the TLSA
    base domain).  OpenSSL's own verification is told to accept any chain,
    since there is no trust store: the decision is L{verifyChain}'s, made
    in the verify callback at depth 0 with the whole chain the server
    sent.  If it fails, the callback stops the handshake, and the
    connection is lost with a L{DANEVerificationError} before the client
    has sent anything over TLS (commands written early wait for the
    handshake); an ESMTP client then reports the failure as a failed TLS
    handshake (C{tlsFailed}).

    Where the decision goes, for logs and TLS reports (RFC 8460):

      - C{decision}: the L{DANEDecision} of the latest connection made
        with this creator (one creator is meant for one connection);
      - C{outcome}, if given: its C{failed(resultType, detail)} is called
        when the server is refused (a L{TLSOutcome
        <mailproto._security._webpki.TLSOutcome>});
      - the L{DANEVerificationError} the connection is lost with carries
        its connection's decision.

    @ivar records: the usable TLSA records.
    @ivar hostname: the name sent as SNI.
    @ivar referenceNames: the names a DANE-TA certificate may be for.
    @ivar decision: a new, undecided L{DANEDecision} when a connection is
        made, decided when the server's certificate arrives; C{None}
        before any connection.
    @ivar outcome: what is told of a refusal, or C{None}.
    """

    def __init__(self, records, hostname: str, referenceNames, outcome=None) -> None:
        """
        @param records: the TLSA records (only the usable ones are kept).
        @param hostname: the name to send as SNI.
        @param referenceNames: the names a DANE-TA certificate may be for;
            C{hostname} if empty.
        @param outcome: an object whose C{failed(resultType, detail)} is
            called when the server is refused, or C{None}.
        """
        self.records = tuple(r for r in records if r.usable)
        self.hostname = hostname.rstrip(".").lower()
        self.referenceNames = tuple(n.rstrip(".").lower() for n in referenceNames) or (self.hostname,)
        self.outcome = outcome
        self.decision: DANEDecision | None = None

    def __repr__(self) -> str:
        return f"<DANEConnectionCreator for {self.hostname}, {len(self.records)} record(s)>"

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """
        Make the TLS connection for one handshake, with a TLS context of
        its own (Twisted's default protocol versions and ciphers) whose
        callbacks decide for that connection.

        @param tlsProtocol: the Twisted TLS protocol that will use it.
        """
        from twisted.internet.ssl import CertificateOptions

        decision = self.decision = DANEDecision()
        context = CertificateOptions(verify=False).getContext()

        def verify(connection, certificate, errno, depth, ok) -> bool:
            if depth != 0:
                return True
            if not decision.decided:
                self._decide(decision, connection.get_peer_cert_chain() or [certificate], tlsProtocol)
            return decision.authenticated

        def info(connection, where, ret) -> None:
            if where & SSL.SSL_CB_HANDSHAKE_DONE:
                self._handshakeDone(decision, tlsProtocol)

        context.set_verify(SSL.VERIFY_PEER, verify)
        context.set_info_callback(info)
        connection = SSL.Connection(context, None)
        connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection

    def _decide(self, decision: DANEDecision, chain, tlsProtocol) -> None:
        try:
            decision._take(verifyChain(self.records, chain, self.referenceNames))
        except Exception as e:
            # An exception must not escape into OpenSSL; a chain that
            # cannot be read does not pass.
            text = " ".join(str(e).split()) or type(e).__name__
            decision._take(_failure(VALIDATION_FAILURE, f"cannot check the server's chain: {text}"))
        if decision.authenticated:
            _log.debug("DANE: {host}: {detail}", host=self.hostname, detail=decision.detail)
        else:
            self._refuse(decision, tlsProtocol)

    def _handshakeDone(self, decision: DANEDecision, tlsProtocol) -> None:
        """
        A handshake that ends without a certificate checked (the server
        sent none) is refused too.
        """
        if not decision.decided:
            decision._take(_failure(VALIDATION_FAILURE, "the handshake ended without a certificate to check"))
            self._refuse(decision, tlsProtocol)

    def _refuse(self, decision: DANEDecision, tlsProtocol) -> None:
        _log.info("DANE: {host}: {resultType}: {detail}", host=self.hostname, resultType=decision.resultType, detail=decision.detail)
        if self.outcome is not None:
            self.outcome.failed(decision.resultType, decision.detail)
        if tlsProtocol is not None:
            # Lose the connection with this reason, as Twisted's own
            # certificate checks do; the callback's false return stops
            # the handshake in any case.
            tlsProtocol.failVerification(Failure(DANEVerificationError(decision)))


def daneConnectionCreator(result: TLSAResult, hostname: str | None = None, referenceNames=None, outcome=None) -> DANEConnectionCreator:
    """
    The TLS client settings for a mail exchanger whose TLSA records are
    C{"secure"}: see L{DANEConnectionCreator}.

    @param result: the L{TLSAResult}, of state C{"secure"}.
    @param hostname: the name sent as SNI; by default, and as RFC 7672
        section 8.1 asks, the TLSA base domain (L{TLSAResult.baseDomain}).
    @param referenceNames: the names a DANE-TA certificate may be for: the
        MX host name and the next-hop domain (RFC 7672 section 3.2.2); the
        names of L{TLSAResult.names} are always added.
    @param outcome: see L{DANEConnectionCreator.__init__}.
    @raise ValueError: if the result's state is not C{"secure"} (there is
        nothing to authenticate with).
    """
    if result.state != "secure":
        raise ValueError(f"DANE needs usable, validated TLSA records; {result.host}'s are {result.state}")
    names = [n.rstrip(".").lower() for n in (referenceNames or ())]
    names = list(dict.fromkeys([*names, *result.names]))
    return DANEConnectionCreator(result.records, hostname if hostname is not None else result.baseDomain, names, outcome)
