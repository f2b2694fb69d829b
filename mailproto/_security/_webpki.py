# -*- test-case-name: mailproto.test.test_tlspolicies -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Certificate checks as the web does them (the platform's or a given set of
certificate authorities, and the host's name), with the outcome kept for
the relay's logs and TLS reports (RFC 8460).

L{TLSOutcome} is what one session learnt about TLS: whether it was
established, and if a check failed, the RFC 8460 result type and a line
of detail.  L{WebPKICreator} makes the client side of one TLS connection
that checks the server's certificate and writes what it found into an
outcome; with C{enforce=False} (an MTA-STS policy in C{testing} mode) it
only writes, and the handshake goes on whatever it found.
"""

from __future__ import annotations

from zope.interface import implementer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"

# OpenSSL's X509_V_ERR_* numbers that mean "not signed by an authority we
# trust", and the one that means "expired".
_NOT_TRUSTED = {2, 18, 19, 20, 21, 27}
_EXPIRED = 10


class TLSOutcome:
    """
    What one session learnt about TLS.

    @ivar established: whether the handshake finished and the server
        answered over TLS.
    @ivar resultType: the first check that failed, as an RFC 8460 result
        type, or C{None}.
    @ivar detail: a line saying what failed, or C{None}.
    """

    def __init__(self) -> None:
        self.established = False
        self.resultType: str | None = None
        self.detail: str | None = None

    def failed(self, resultType: str, detail: str) -> None:
        """
        Note a failed check; the first one is kept.
        """
        if self.resultType is None:
            self.resultType, self.detail = resultType, detail

    def __repr__(self) -> str:
        return f"<TLSOutcome established={self.established} {self.resultType or 'ok'}>"


def classifyVerifyError(errno: int) -> str:
    """
    @param errno: an OpenSSL certificate verification error number.
    @return: its RFC 8460 result type.
    """
    if errno == _EXPIRED:
        return CERTIFICATE_EXPIRED
    if errno in _NOT_TRUSTED:
        return CERTIFICATE_NOT_TRUSTED
    return VALIDATION_FAILURE


def nameMatches(certificate, hostname: str) -> bool:
    """
    @param certificate: a pyOpenSSL C{X509}.
    @return: whether it is valid for C{hostname} (RFC 6125, by
        service_identity).
    """
    from service_identity import VerificationError
    from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

    try:
        if _isAddress(hostname):
            verify_certificate_ip_address(certificate.to_cryptography(), hostname)
        else:
            verify_certificate_hostname(certificate.to_cryptography(), hostname)
    except (VerificationError, ValueError):
        return False
    except Exception:  # service_identity's CertificateError: no usable names
        return False
    return True


def _isAddress(hostname: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class WebPKICreator:
    """
    The client side of TLS connections to one host, checking its
    certificate against certificate authorities and its name.
    """

    def __init__(self, hostname: str, outcome: TLSOutcome, trustRoot=None, enforce: bool = True) -> None:
        """
        @param hostname: the name the certificate must have (and the one
            sent by SNI), or the address (an IP address SAN).
        @param outcome: where what is found is written.
        @param trustRoot: the authorities (an C{IOpenSSLTrustRoot}); the
            platform's if C{None}.
        @param enforce: whether a failed check fails the handshake.
        """
        from twisted.internet import ssl

        self.hostname = hostname
        self.outcome = outcome
        self.enforce = enforce
        self._options = ssl.CertificateOptions(trustRoot=trustRoot if trustRoot is not None else ssl.platformTrust())

    def clientConnectionForTLS(self, tlsProtocol):
        from OpenSSL import SSL

        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        if not _isAddress(self.hostname):
            # SNI names hosts, never addresses (RFC 6066 section 3).
            try:
                connection.set_tlsext_host_name(self.hostname.encode("idna"))
            except UnicodeError:
                pass
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return connection

    def _verify(self, connection, certificate, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            self.outcome.failed(classifyVerifyError(errno), f"certificate at depth {depth}: OpenSSL error {errno}")
        elif depth == 0 and not nameMatches(certificate, self.hostname):
            self.outcome.failed(CERTIFICATE_HOST_MISMATCH, f"the certificate is not valid for {self.hostname}")
            ok = 0
        return bool(ok) or not self.enforce
