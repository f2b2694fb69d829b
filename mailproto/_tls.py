# -*- test-case-name: mailproto.test.test_tls -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
TLS for servers: a certificate and key from PEM files, as a
C{twisted.internet.ssl.CertificateOptions} for STARTTLS or for an
implicit-TLS listener.
"""

from __future__ import annotations

import re

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def loadServerOptions(certificatePath: str, keyPath: str | None = None):
    """
    Load a server's certificate, its chain and its private key.

    @param certificatePath: a PEM file with the certificate, then any
        intermediate certificates; and the private key too if C{keyPath}
        is C{None}.
    @param keyPath: a PEM file with the private key, or C{None}.
    @return: the TLS options, checked to make a context.
    @rtype: C{twisted.internet.ssl.CertificateOptions}
    @raise OSError: if a file cannot be read.
    @raise ValueError: if they are not a certificate and its key.
    """
    from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate

    with open(certificatePath, "rb") as f:
        certificateData = f.read()
    keyData = certificateData
    if keyPath is not None:
        with open(keyPath, "rb") as f:
            keyData = f.read()
    try:
        certificate = PrivateCertificate.loadPEM(certificateData + b"\n" + keyData)
        chain = [Certificate.loadPEM(block).original for block in _PEM_CERTIFICATE.findall(certificateData)[1:]]
        options = CertificateOptions(
            privateKey=certificate.privateKey.original,
            certificate=certificate.original,
            extraCertChain=chain or None,
        )
        options.getContext()
    except Exception as e:
        where = certificatePath + (" and " + keyPath if keyPath else "")
        raise ValueError(f"cannot use {where} for TLS: {str(e) or type(e).__name__}") from None
    return options
