# -*- test-case-name: mailproto.test.test_address -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Mail addresses as SMTP carries them: L{Address}, L{User} and
L{quoteaddr}, compatible with twisted.mail.smtp's.

Where these differ from the twisted.mail classes, it is a fix:
  - the grammar is RFC 5321's (see L{mailproto._grammar}), so C{a@b@c},
    C{a..b@c}, C{a@-b-}, a bad address literal or an unbalanced quote
    raise L{AddressError} instead of being taken apart by a tokenizer;
  - internationalised addresses (RFC 6531) are accepted, as UTF-8;
  - L{quoteaddr} refuses control characters (CR, LF, NUL...) instead of
    passing them on or silently dropping them.
"""

from __future__ import annotations

import functools
from email.utils import parseaddr

from mailproto import _grammar
from mailproto._errors import AddressError
from mailproto._headers import localHostname


def _asBytes(addr: bytes | str) -> bytes:
    return addr.encode("utf-8") if isinstance(addr, str) else bytes(addr)


class Address:
    """
    An RFC 5321 mailbox address: C{local@domain}, or the null address
    C{<>} (both parts empty).

    Accepted forms: C{local@domain}, C{<local@domain>}, a path with a source
    route (C{<@relay.example:local@domain>}, the route is dropped as RFC 5321
    section 4.1.1.3 allows), C{<>} or C{b""}, and a bare C{local}, which gets
    C{defaultDomain}.

    @ivar local: the local part in its wire form (a C{Quoted-string} keeps
        its quotes; see L{dequote}).
    @type local: C{bytes}
    @ivar domain: the domain or address literal (C{[192.0.2.1]}).
    @type domain: C{bytes}
    @ivar addrstr: what the address was parsed from.
    @type addrstr: C{bytes}
    """

    def __init__(self, addr, defaultDomain: bytes | str | None = None) -> None:
        """
        @param addr: an address as C{bytes} or C{str} (UTF-8), an
            L{Address} (copied) or a L{User} (its destination is copied).
        @param defaultDomain: the domain for a bare local part; the local
            host name if not given.
        @raise AddressError: if C{addr} is not an address.
        """
        if isinstance(addr, User):
            addr = addr.dest
        if isinstance(addr, Address):
            self.__dict__ = addr.__dict__.copy()
            return
        raw = _asBytes(addr) if isinstance(addr, (bytes, bytearray, str)) else str(addr).encode("utf-8")
        self.addrstr = raw
        self.local, self.domain = _parse(raw.strip(b" \t"))
        if self.local and not self.domain:
            if defaultDomain is None:
                defaultDomain = localHostname()
            self.domain = _asBytes(defaultDomain)

    @classmethod
    def fromParts(cls, local: bytes | str, domain: bytes | str) -> Address:
        """
        Build an address from the value of its local part, quoting it if it
        needs quotes.

        @param local: the local part, unquoted.
        @param domain: the domain or address literal.
        @return: the address.
        @raise AddressError: if the result is not an address.
        """
        local = _asBytes(local)
        if not local:
            raise AddressError("Empty local part")
        return cls(_grammar.quoteLocalPart(local) + b"@" + _asBytes(domain))

    def dequote(self, addr: bytes | str) -> bytes:
        """
        Remove the quotes and backslash escapes of a C{Quoted-string}.

        @param addr: a local part or a whole address.
        @return: C{addr} with each quoted string replaced by its value.
        """
        return _grammar.dequote(_asBytes(addr))

    @property
    def isNull(self) -> bool:
        """
        Whether this is the null reverse-path C{<>}.
        """
        return not (self.local or self.domain)

    @property
    def needsSMTPUTF8(self) -> bool:
        """
        Whether this address has non-ASCII characters, which only the
        SMTPUTF8 extension (RFC 6531) may carry.
        """
        return not (self.local.isascii() and self.domain.isascii())

    def __bytes__(self) -> bytes:
        if self.local or self.domain:
            return self.local + b"@" + self.domain
        return b""

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return f"{self.__module__}.{self.__class__.__name__}({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return self.local == other.local and self.domain.lower() == other.domain.lower()

    def __hash__(self) -> int:
        return hash((self.local, self.domain.lower()))


@functools.lru_cache(maxsize=4096)
def _parse(raw: bytes) -> tuple[bytes, bytes]:
    """
    Split an address into its local part and domain.  Results are cached:
    a server or client sees the same addresses again and again.

    @param raw: the address, with or without angle brackets.
    @return: C{(local, domain)}; both empty for the null address.
    @raise AddressError: if C{raw} is not an address.
    """
    inner = raw
    if raw[:1] == b"<" or raw[-1:] == b">":
        if not (raw[:1] == b"<" and raw[-1:] == b">" and len(raw) >= 2):
            raise AddressError("Unbalanced <>")
        inner = raw[1:-1]
    if not inner:
        return b"", b""
    match = _grammar.matchMailbox(inner)
    if match is None:
        if inner[:1] == b"@":
            raise AddressError(f"Malformed source route in {_show(raw)}")
        raise AddressError(f"Malformed address {_show(raw)}")
    local, domain = match.group("local"), match.group("domain") or b""
    if not local.isascii() and not _grammar.isUTF8(local):
        raise AddressError(f"Local part of {_show(raw)} is not UTF-8")
    if domain[:1] == b"[":
        if not _grammar.isAddressLiteral(domain):
            raise AddressError(f"Bad address literal in {_show(raw)}")
    elif domain and not _grammar.isDomain(domain, utf8=True):
        raise AddressError(f"Bad domain in {_show(raw)}")
    return local, domain


def _show(raw: bytes) -> str:
    """
    Quote a rejected address for an error message, printable and short.
    """
    text = raw[:100].decode("ascii", "backslashreplace")
    return repr(text + ("..." if len(raw) > 100 else ""))


class User:
    """
    A recipient of a message as the server sees it: the address, with where
    the message came from.

    @ivar dest: the recipient's address.
    @type dest: L{Address}
    @ivar helo: the client's C{(HELO argument, peer address)}.
    @ivar protocol: the server protocol that received the recipient.
    @ivar orig: the sender's address (the reverse-path).
    @type orig: L{Address}
    @ivar mail: the C{MAIL} command of the transaction, with its ESMTP
        parameters, when a server made this user; else C{None}.
    @type mail: L{mailproto.wire.MailFrom} or C{None}
    @ivar rcpt: the C{RCPT} command for this recipient, with its ESMTP
        parameters (DSN's NOTIFY and ORCPT), when a server made this user;
        else C{None}.
    @type rcpt: L{mailproto.wire.RcptTo} or C{None}
    """

    mail = None
    rcpt = None

    def __init__(self, destination, helo, protocol, orig) -> None:
        """
        @param destination: the recipient, as anything L{Address} takes.
        @param helo: see L{User.helo}.
        @param protocol: see L{User.protocol}; its C{host} attribute, if
            any, is the default domain for bare local parts.
        @param orig: the sender, as anything L{Address} takes.
        """
        host = getattr(protocol, "host", None)
        self.dest = Address(destination, host)
        self.helo = helo
        self.protocol = protocol
        self.orig = orig if isinstance(orig, Address) else Address(orig, host)

    def __getstate__(self) -> dict:
        # The protocol is not picklable; everything else is.
        state = self.__dict__.copy()
        state["protocol"] = None
        return state

    def __bytes__(self) -> bytes:
        return bytes(self.dest)

    def __str__(self) -> str:
        return str(self.dest)

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {str(self.dest)!r} from {str(self.orig)!r}>"


def quoteaddr(addr) -> bytes:
    """
    Turn an address, possibly with a display name (C{"Name <a@b.example>"}),
    into the C{<path>} form of the SMTP envelope.

    @param addr: an L{Address}, L{User}, or an address as C{bytes} or
        C{str}.
    @return: C{b"<local@domain>"}, or C{b"<>"} for the null address.
    @raise AddressError: if C{addr} has a control character, or does not
        parse as an address.
    """
    if isinstance(addr, User):
        addr = addr.dest
    if isinstance(addr, Address):
        return b"<" + bytes(addr) + b">"
    raw = _asBytes(addr)
    if any(c < 0x20 or c == 0x7F for c in raw):
        raise AddressError(f"Control character in address {_show(raw)}")
    text = raw.decode("utf-8", "surrogateescape")
    if text.strip() in ("", "<>"):
        return b"<>"
    _, mailbox = parseaddr(text)
    if not mailbox:
        raise AddressError(f"Cannot find an address in {_show(raw)}")
    return b"<" + bytes(Address(mailbox.encode("utf-8", "surrogateescape"))) + b">"
