# -*- test-case-name: mailproto.test.test_tlserrors -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
TLS failures in words: L{describeTLSFailure} turns what OpenSSL and
service_identity raise (lists of C{('SSL routines', '', 'certificate
verify failed')} tuples, C{VerificationError(errors=[DNSMismatch(...)])})
into one sentence a person can act on.  L{isTLSFailure} says whether an
exception is one of them.

Nothing here imports OpenSSL until it is asked about an exception, so a
mailproto without pyOpenSSL still imports this module.
"""

from __future__ import annotations

__all__ = ["describeTLSFailure", "isTLSFailure", "reasonsOf"]


#: OpenSSL reasons, as they end its error tuples, and what they mean; the
#: first whose text is in one of the reasons wins.
_REASONS = [
    ("certificate verify failed", "the server's certificate is not trusted (certificate verify failed)"),
    # A TLS client that got plain text back (an SMTP greeting, say).
    ("wrong version number", "the server does not speak TLS here"),
    ("packet length too long", "the server does not speak TLS here"),
    ("record layer failure", "the server does not speak TLS here"),
    ("http request", "the server does not speak TLS here"),
    ("unknown protocol", "the server does not speak TLS here"),
    ("unexpected eof while reading", "the server closed the connection during the TLS handshake"),
    ("unsupported protocol", "the server and this client have no TLS version in common (unsupported protocol)"),
    ("protocol version", "the server and this client have no TLS version in common (protocol version)"),
    ("no shared cipher", "the server and this client have no cipher in common (no shared cipher)"),
    ("handshake failure", "the server refused the TLS handshake (handshake failure)"),
    ("certificate required", "the server wants a client certificate (certificate required)"),
    ("unknown ca", "the other side does not trust the certificate's CA (unknown ca)"),
    ("bad certificate", "the other side refused the certificate (bad certificate)"),
    ("certificate expired", "the certificate has expired (certificate expired)"),
    ("key values mismatch", "the private key does not belong to the certificate (key values mismatch)"),
    ("no certificate", "there is no certificate in the file (no certificate)"),
    ("no start line", "the file is not PEM (no start line)"),
]


def _classes():
    """
    @return: the OpenSSL error class and service_identity's
        C{VerificationError}, each C{None} if not installed.
    """
    try:
        from OpenSSL.SSL import Error
    except ImportError:  # pragma: no cover
        Error = None
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover
        VerificationError = None
    return Error, VerificationError


def reasonsOf(exception: BaseException) -> list[str]:
    """
    @return: the reasons of an OpenSSL error, the last item of each of
        its C{(library, function, reason)} tuples, in order; C{[]} if it
        has none.
    """
    details = exception.args[0] if exception.args else None
    if not isinstance(details, list):
        return []
    return [str(item[-1]) for item in details if isinstance(item, tuple) and item and item[-1]]


def isTLSFailure(exception: BaseException) -> bool:
    """
    @return: whether C{exception} is a TLS failure: an OpenSSL error, or a
        certificate that is not for the name asked for.
    """
    classes = tuple(cls for cls in _classes() if cls is not None)
    return bool(classes) and isinstance(exception, classes)


def _names(verification) -> list[str]:
    """
    @return: the names or addresses a C{VerificationError} did not find in
        the certificate.
    """
    names = []
    for error in getattr(verification, "errors", ()):
        wanted = getattr(error, "mismatched_id", None)
        value = getattr(wanted, "hostname", None)
        if value is None:
            value = getattr(wanted, "ip", None)
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if str(value) not in names:
            names.append(str(value))
    return names


def describeTLSFailure(exception: BaseException) -> str:
    """
    Say why TLS failed, in one sentence without a final full stop.

    @param exception: an OpenSSL C{SSL.Error} (handshake, certificate,
        loading a key), a service_identity C{VerificationError}, or any
        other exception (then said as it is, on one line).
    @return: for instance C{"the server's certificate is not trusted
        (certificate verify failed)"}, C{"the server's certificate is for
        another name than mx.example.com"}, C{"the server does not speak
        TLS here"}.
    """
    Error, VerificationError = _classes()
    if getattr(exception, "decision", None) is not None:
        # A DANE refusal (mailproto._security._dane) says itself why.
        return " ".join(str(exception).split())
    if VerificationError is not None and isinstance(exception, VerificationError):
        names = _names(exception)
        if names:
            return f"the server's certificate is for another name than {', '.join(names)}"
        return "the server's certificate is for another name"
    if Error is not None and isinstance(exception, Error):
        reasons = reasonsOf(exception)
        for reason in reasons:
            for text, sentence in _REASONS:
                if text in reason.lower():
                    return sentence
        if reasons:
            return "TLS failed: " + ", ".join(reasons)
        text = " ".join(str(exception).split())
        return f"TLS failed: {text}" if text else "the TLS handshake failed"
    text = " ".join(str(exception).split())
    return text or type(exception).__name__
