# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Where relayed mail goes, and how securely: the outbound TLS policies, the
smart host, and destination keys (the domain a message's recipients are
grouped by).
"""

from __future__ import annotations

NONE, MAY, ENCRYPT, VERIFY = "none", "may", "encrypt", "verify"
"""The outbound TLS policies: no TLS; TLS when offered, certificate not
checked (opportunistic); TLS required, certificate not checked; TLS
required with a certificate valid for the host's name."""

SMARTHOST = "[smarthost]"
"""The destination of every job when the relay sends through a smart
host."""


class TLSPolicy:
    """
    How the relay uses TLS towards one destination.

    @ivar mode: L{NONE}, L{MAY}, L{ENCRYPT} or L{VERIFY}.
    @ivar trustRoot: for L{VERIFY}, the certificate authorities trusted
        (an C{IOpenSSLTrustRoot});
        the platform's if C{None}.
    """

    def __init__(self, mode: str = MAY, trustRoot=None) -> None:
        """
        @raise ValueError: for an unknown mode.
        """
        if mode not in (NONE, MAY, ENCRYPT, VERIFY):
            raise ValueError(f"TLS policy must be one of none, may, encrypt, verify; not {mode!r}")
        self.mode = mode
        self.trustRoot = trustRoot

    def __repr__(self) -> str:
        return f"TLSPolicy({self.mode!r})"

    @property
    def required(self) -> bool:
        """
        Whether mail may only go over TLS.
        """
        return self.mode in (ENCRYPT, VERIFY)

    def contextFor(self, hostname: str):
        """
        @param hostname: the name the server's certificate must have (for
            L{VERIFY}).
        @return: the client TLS options for a server, or C{None} for no TLS.
        """
        if self.mode == NONE:
            return None
        from twisted.internet import ssl

        if self.mode == VERIFY:
            return ssl.optionsForClientTLS(hostname, trustRoot=self.trustRoot)
        return ssl.CertificateOptions(verify=False)


class SmartHost:
    """
    A host all mail is relayed through.

    @ivar host: its name or address.
    @ivar port: its port.
    @ivar username: the user name to authenticate with, or C{None}.
    @ivar password: the password, or C{None}.
    @ivar tls: the L{TLSPolicy}.
    @ivar implicitTLS: whether the port speaks TLS from the start (RFC 8314,
        port 465) rather than STARTTLS.
    """

    def __init__(self, host: str, port: int = 25, username=None, password=None, tls: TLSPolicy | None = None, implicitTLS: bool = False) -> None:
        self.host = host
        self.port = int(port)
        self.username = username.encode("utf-8") if isinstance(username, str) else username
        self.password = password.encode("utf-8") if isinstance(password, str) else password
        self.tls = tls or TLSPolicy(MAY)
        self.implicitTLS = implicitTLS
        if implicitTLS and self.tls.mode == NONE:
            raise ValueError("implicit TLS needs a TLS policy other than none")

    @classmethod
    def fromString(cls, value: str, **kw) -> SmartHost:
        """
        Parse C{host}, C{host:port} or C{[address]:port} (an IPv6 address
        in brackets).

        @raise ValueError: if C{value} is not one of those.
        """
        value = value.strip()
        port = 25
        if value.startswith("["):
            host, sep, rest = value[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"bad smart host {value!r}: expected [ADDRESS]:PORT")
            if rest:
                port = rest[1:]
        else:
            host, sep, portText = value.rpartition(":")
            if not sep:
                host = value
            elif ":" in host:
                raise ValueError(f"bad smart host {value!r}: put an IPv6 address in brackets, as [::1]:25")
            else:
                port = portText
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"bad smart host {value!r}: the port must be a number") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad smart host {value!r}: expected HOST:PORT")
        return cls(host, port, **kw)

    def __repr__(self) -> str:
        return f"SmartHost({self.host!r}, {self.port})"


def domainKey(domain) -> str:
    """
    @param domain: a recipient's domain (C{bytes} or C{str}).
    @return: the key its mail is grouped and routed by: lower case, in
        ASCII (IDNA), without a root dot; an address literal as it is.
    """
    if isinstance(domain, bytes):
        domain = domain.decode("utf-8", "replace")
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("["):
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
