# -*- test-case-name: mailproto.test.test_dkim -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
DKIM signatures (RFC 6376, with Ed25519 keys as RFC 8463 adds) on the mail
the relay takes in from its own users.

Which messages are signed
=========================

A L{DKIMSigner} holds the relay's keys (L{DKIMKey}, one or more per
domain: with an RSA and an Ed25519 key for a domain, each message gets
both signatures, as RFC 8463 section 6 recommends).  A message is signed
when:

  - its envelope's C{origin} is one of the signer's C{signFor}: by
    default only L{TRUSTED <mailproto._queue.TRUSTED>}, mail from the
    relay's own users (a client of the relay networks or the UNIX socket,
    or an authenticated one, as on the submission listeners).  Mail that
    arrives from the outside world for the relay's inbound domains is
    never signed unless asked for;
  - its header section has exactly one C{From:} field naming exactly one
    address, and that address's domain has a key -- or, with
    C{parentDomains}, the nearest parent domain that has one
    (C{news.example.org} signs with C{example.org}'s key) -- or the
    signer has a fixed C{domain}, whose key signs every such message.

A message whose C{From:} field is missing, repeated or names several
addresses is not signed, and one log line says why.  A signature that
the message already carries is left alone: the relay adds its own all
the same.

How it streams
==============

The relay's queue delivery passes each message's data through a scanner
on its way into the spool (L{mailproto._relay._Transaction}); the
signer's (L{DKIMSigner.scanner}) comes after the header policy's, so
that what it signs is what is queued, the fields the policy adds
included.  As the data passes by, the scanner keeps the header fields it
will sign (L{SIGNED_FIELDS} only, at most L{MAX_SIGNED_HEADER} octets of
them; the others are only looked at) and hashes the body as it comes
(L{BodyHasher}), never holding it.  At the end of the data it makes the
C{DKIM-Signature:} field and puts it in the envelope's C{prefix}, which
is written with the envelope at commit and sent before the message's
data.  The message is neither held in memory nor read a second time.

What is signed is the message as the relay sends it on: its client turns
every line end into CRLF and ends an unterminated last line with one
(L{DotStuffer <mailproto._data.DotStuffer>}); the scanner sees the data
through the same transformation.

Signing never costs a message: any error while signing is logged on one
line and the message is queued unsigned.

dkimpy makes the signature: its header canonicalisation, its selection
of the fields named in C{h=}, its hashing and its RSA and Ed25519
signing (L{DKIMKey.sign}).  Only the body hash is computed here, because
dkimpy signs whole messages held in memory and has no incremental API
for the body.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from email.utils import getaddresses

from twisted.logger import Logger

from mailproto._data import DotStuffer
from mailproto._queue import CHECKED, TRUSTED, UNCHECKED

__all__ = [
    "ED25519_SHA256",
    "MAX_SIGNED_HEADER",
    "RSA_SHA256",
    "SIGNED_FIELDS",
    "BodyHasher",
    "DKIMKey",
    "DKIMSigner",
    "generateKey",
    "makeSigner",
    "parseKeySpec",
    "parseSignFor",
]

_log = Logger()

#: The signing algorithms (RFC 6376 section 3.3, RFC 8463 section 3).
RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"

#: The body canonicalisations (RFC 6376 sections 3.4.3 and 3.4.4).
SIMPLE = b"simple"
RELAXED = b"relaxed"

#: The header fields signed when present, in the order of RFC 6376
#: section 5.4.1's list, followed by the fields that carry a message's
#: identity and its MIME structure.  C{From:} is signed once more than it
#: is present, so that no C{From:} can be added to a signed message.
SIGNED_FIELDS = (
    b"from", b"reply-to", b"subject", b"date", b"to", b"cc",
    b"resent-date", b"resent-from", b"resent-to", b"resent-cc",
    b"in-reply-to", b"references",
    b"list-id", b"list-help", b"list-unsubscribe", b"list-subscribe", b"list-post", b"list-owner", b"list-archive",
    b"sender", b"message-id", b"mime-version", b"content-type", b"content-transfer-encoding",
)  # fmt: skip

#: The most octets of signed header fields kept for one message; a message
#: with more is not signed.
MAX_SIGNED_HEADER = 65536

#: The most octets of a header line held before its field name (and
#: colon) is seen; a longer name is not a field, and the message is not
#: signed.
NAME_HOLD = 1024

#: The smallest RSA key used (RFC 8301 section 3.2), and the smallest
#: that is not warned about.
MIN_RSA_BITS = 1024
RECOMMENDED_RSA_BITS = 2048

#: The origins a signer may sign for (see L{mailproto._queue.TRUSTED}).
ORIGINS = (TRUSTED, CHECKED, UNCHECKED)

_SELECTOR = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# RFC 5322 section 3.6.8: field-name = 1*ftext (printable US-ASCII but
# the colon), as dkimpy and OpenDKIM read it: no white space before the
# colon.
_FIELD_NAME = re.compile(rb"[!-9;-~]+")
# The runs of white space that relaxed canonicalisation changes: with a
# tab, or of two spaces or more (a single space stays as it is).
_WSP_RUN = re.compile(rb"[ \t]*\t[ \t]*|  +")

#: The most octets of body canonicalised at once (a larger chunk is taken
#: in slices), which bounds the memory the canonicalisation takes.
BODY_SLICE = 16384


class BodyHasher:
    """
    The hash of a message body under the relaxed or simple canonicalisation
    (RFC 6376 sections 3.4.3 and 3.4.4), fed in chunks cut anywhere: in a
    line, between the CR and the LF of a line end, in a run of white space.

    Lines end with CRLF; a CR or an LF that is not part of a CRLF is an
    ordinary octet, as dkimpy reads it.  A body that does not end with
    CRLF is hashed as if it did, as the relay sends it.  Empty lines at
    the end are not hashed; with the relaxed canonicalisation, runs of
    spaces and tabs become one space and are removed at the end of a line,
    and an empty body hashes as nothing; with the simple one, it hashes as
    one CRLF.

    dkimpy signs and verifies whole messages held in memory, and computes
    the body hash over the whole canonicalised body at once; this class
    gives the same hash with memory bounded by the largest chunk: it holds
    back only a count of line ends, one CR and whether white space was
    seen, until it knows what follows them.
    """

    def __init__(self, canonicalization: bytes = RELAXED, algorithm: Callable = hashlib.sha256) -> None:
        """
        @param canonicalization: L{RELAXED} or L{SIMPLE}.
        @param algorithm: makes the hash object (C{hashlib.sha256}).
        @raise ValueError: for another canonicalisation.
        """
        if canonicalization not in (RELAXED, SIMPLE):
            raise ValueError(f"unknown body canonicalization {canonicalization!r}")
        self._relaxed = canonicalization == RELAXED
        self._hash = algorithm()
        # Line ends seen after the last content, not hashed yet: hashed if
        # more content follows, else all but one are trailing empty lines.
        self._lineEnds = 0
        # A CR ended the last chunk: the start of a line end, or content.
        self._cr = False
        # Relaxed: white space ended the last chunk (in the line, before
        # the held CR if any): one space, or nothing at the end of a line.
        self._space = False
        self._content = False
        self._last = b""
        self._digest: bytes | None = None

    def update(self, data: bytes) -> None:
        """
        Hash the next part of the body.

        @raise ValueError: after L{digest}.
        """
        if self._digest is not None:
            raise ValueError("the body hash was already taken")
        if data:
            self._last = (self._last + data[-2:])[-2:]
            if len(data) <= BODY_SLICE:
                self._take(data)
            else:
                for start in range(0, len(data), BODY_SLICE):
                    self._take(data[start : start + BODY_SLICE])

    def _take(self, data: bytes) -> None:
        if self._space or self._cr:
            data = (b" " if self._space else b"") + (b"\r" if self._cr else b"") + data
            self._space = self._cr = False
        if data.endswith(b"\r"):
            self._cr = True
            data = data[:-1]
        if self._relaxed:
            if b"\t" in data or b"  " in data:
                data = _WSP_RUN.sub(b" ", data)
            if b" \r\n" in data:
                data = data.replace(b" \r\n", b"\r\n")
            if data.endswith(b" "):
                self._space = True
                data = data[:-1]
        end = len(data)
        while data.endswith(b"\r\n", 0, end):
            end -= 2
        lineEnds = (len(data) - end) // 2
        if end:
            for done in range(0, self._lineEnds, BODY_SLICE):
                self._hash.update(b"\r\n" * min(BODY_SLICE, self._lineEnds - done))
            self._hash.update(data[:end] if lineEnds else data)
            self._content = True
            self._lineEnds = lineEnds
        else:
            self._lineEnds += lineEnds

    def digest(self) -> bytes:
        """
        The body has ended.

        @return: its hash (C{bh=} is its base64).
        """
        if self._digest is None:
            if self._last and self._last != b"\r\n":
                self._take(b"\r\n")
            if self._content or not self._relaxed:
                self._hash.update(b"\r\n")
            self._digest = self._hash.digest()
        return self._digest


def _domainName(domain: str | bytes) -> str:
    """
    @return: C{domain} as DNS has it: lower case, in A-labels, without a
        final dot.
    @raise ValueError: if it is not a domain name.
    """
    text = domain.decode("utf-8") if isinstance(domain, bytes) else str(domain)
    text = text.strip().rstrip(".").lower()
    try:
        ascii = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        raise ValueError(f"not a domain name: {text!r}") from None
    labels = ascii.split(".")
    if len(ascii) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a domain name: {text!r}")
    return ascii


def _loadPrivateKey(data: bytes):
    """
    @param data: a PEM private key (PKCS#8, or PKCS#1 for RSA), or an
        Ed25519 key as dkimpy keeps it: the base64 of its 32-octet seed.
    @return: the key, as a C{cryptography} object.
    @raise ValueError: if it is none of these.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            return serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ValueError("the private key is encrypted; give it without a passphrase") from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ValueError(f"not a usable PEM private key ({e})") from None
    try:
        seed = base64.b64decode(data, validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ValueError("not a PEM private key, nor the base64 of an Ed25519 seed")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


class DKIMKey:
    """
    A private key that signs for one domain, and where its public key is
    published: the TXT record of C{SELECTOR._domainkey.DOMAIN}.

    @ivar domain: the signing domain (C{d=}), in A-labels, lower case.
    @ivar selector: the selector (C{s=}).
    @ivar algorithm: L{RSA_SHA256} or L{ED25519_SHA256}.
    @ivar bits: the size of an RSA key; 256 for Ed25519.
    """

    def __init__(self, domain: str | bytes, selector: str | bytes, privateKey: bytes, algorithm: str | None = None) -> None:
        """
        @param domain: the signing domain.
        @param selector: the selector.
        @param privateKey: the key: PEM (PKCS#8, or PKCS#1 for RSA), or
            dkimpy's form of an Ed25519 key (the base64 of its seed).
        @param algorithm: L{RSA_SHA256} or L{ED25519_SHA256}; the key's
            own if C{None}.
        @raise ValueError: for a bad domain or selector, a key that is
            not RSA or Ed25519 or not of C{algorithm}, or an RSA key of
            fewer than L{MIN_RSA_BITS} bits.
        """
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

        self.domain = _domainName(domain)
        selector = selector.decode("ascii", "replace") if isinstance(selector, bytes) else str(selector)
        if not _SELECTOR.fullmatch(selector):
            raise ValueError(f"not a DKIM selector: {selector!r}")
        self.selector = selector.lower()
        key = _loadPrivateKey(privateKey)
        if isinstance(key, rsa.RSAPrivateKey):
            kind, self.bits = RSA_SHA256, key.key_size
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            kind, self.bits = ED25519_SHA256, 256
        else:
            raise ValueError(f"a DKIM key is RSA or Ed25519, not {type(key).__name__}")
        if algorithm is not None and algorithm != kind:
            raise ValueError(f"the key is for {kind}, not {algorithm}")
        self.algorithm = kind
        if kind == RSA_SHA256:
            if self.bits < MIN_RSA_BITS:
                raise ValueError(f"the RSA key has {self.bits} bits; DKIM needs at least {MIN_RSA_BITS} (RFC 8301)")
            if self.bits < RECOMMENDED_RSA_BITS:
                _log.warn(
                    "The DKIM key of {domain} (selector {selector}) has {bits} bits; {recommended} or more are recommended",
                    domain=self.domain,
                    selector=self.selector,
                    bits=self.bits,
                    recommended=RECOMMENDED_RSA_BITS,
                )
        self._key = key
        self._dkimpyKey = _dkimpyKey(key, kind)

    def __repr__(self) -> str:
        return f"<DKIMKey {self.selector}._domainkey.{self.domain} {self.algorithm} {self.bits} bits>"

    @classmethod
    def fromFile(cls, domain: str | bytes, selector: str | bytes, path: str) -> DKIMKey:
        """
        Read a key file, RSA or Ed25519.

        @raise OSError: if it cannot be read.
        @raise ValueError: as L{DKIMKey}, naming the file.
        """
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        try:
            return cls(domain, selector, data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @property
    def name(self) -> str:
        """
        Where the public key is published: C{SELECTOR._domainkey.DOMAIN}.
        """
        return f"{self.selector}._domainkey.{self.domain}"

    def publicRecord(self) -> str:
        """
        @return: the text of the key's TXT record (RFC 6376 section
            3.6.1): C{v=DKIM1; k=rsa; p=...}.
        """
        from cryptography.hazmat.primitives import serialization

        public = self._key.public_key()
        if self.algorithm == RSA_SHA256:
            data, kind = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo), "rsa"
        else:
            data, kind = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw), "ed25519"
        return f"v=DKIM1; k={kind}; p={base64.b64encode(data).decode('ascii')}"

    def zoneLine(self) -> str:
        """
        @return: the record as a line of a zone file, its text cut into
            strings of at most 255 characters (RFC 1035 section 3.3.14;
            RFC 6376 section 3.6.2.2 joins them again).
        """
        text = self.publicRecord()
        strings = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
        return f"{self.name}. IN TXT {strings}"

    def privateKeyPEM(self) -> bytes:
        """
        @return: the private key as an unencrypted PKCS#8 PEM file.
        """
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, header: bytes, bodyHash: bytes, timestamp: int, expires: int | None = None) -> bytes:
        """
        Make a C{DKIM-Signature:} field (relaxed/relaxed).

        @param header: the header fields to sign, as they are in the
            message (CRLF-terminated lines, folded as they are), in their
            order; they must include one C{From:}.  Each is named in
            C{h=}, and C{From} once more.
        @param bodyHash: the SHA-256 of the relaxed body (L{BodyHasher}).
        @param timestamp: C{t=}, seconds since the epoch.
        @param expires: C{x=}, or C{None}.
        @return: the field, folded, CRLF-terminated.
        @raise Exception: whatever dkimpy raises for what it cannot sign.
        """
        import dkim
        from dkim.canonicalization import CanonicalizationPolicy
        from dkim.crypto import HASH_ALGORITHMS

        algorithm = self.algorithm.encode("ascii")
        signer = dkim.DKIM(header + b"\r\n", signature_algorithm=algorithm)
        names = [name.lower().strip() for name, _ in signer.headers] + [b"from"]
        fields = [
            (b"v", b"1"),
            (b"a", algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", self.domain.encode("ascii")),
            (b"s", self.selector.encode("ascii")),
            (b"t", b"%d" % timestamp),
        ]
        if expires is not None:
            fields.append((b"x", b"%d" % expires))
        fields += [
            (b"h", b":".join(names)),
            (b"bh", base64.b64encode(bodyHash)),
            # A stand-in as long as a signature, so that the fields fold
            # before b= (dkimpy's own DKIM.sign does the same).
            (b"b", b"0" * 60),
        ]
        # DKIM.sign would hash a body it holds; gen_header (which it and
        # ARC.sign use, dkimpy 1.0 on) takes the fields, the body hash
        # among them, and canonicalises, hashes and signs the header.
        signer.hasher = HASH_ALGORITHMS[algorithm]
        policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        value = signer.gen_header(fields, names, policy, b"DKIM-Signature", self._dkimpyKey)
        return b"DKIM-Signature: " + value


def _dkimpyKey(key, algorithm: str):
    """
    @return: C{key} as dkimpy signs with it: RSA as parsed by
        C{dkim.crypto}, Ed25519 as a PyNaCl signing key.
    @raise ValueError: if dkimpy cannot use it.
    """
    from cryptography.hazmat.primitives import serialization

    if algorithm == RSA_SHA256:
        from dkim.crypto import UnparsableKeyError, parse_pem_private_key

        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        try:
            return parse_pem_private_key(pem)
        except UnparsableKeyError as e:  # pragma: no cover (cryptography wrote it)
            raise ValueError(f"dkimpy cannot read the key: {e}") from None
    try:
        import nacl.signing
    except ImportError:  # pragma: no cover (a dependency: dkimpy[ed25519])
        raise ValueError("Ed25519 keys need PyNaCl (pip install 'dkimpy[ed25519]')") from None
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return nacl.signing.SigningKey(seed)


def generateKey(domain: str | bytes, selector: str | bytes, algorithm: str = RSA_SHA256, bits: int = RECOMMENDED_RSA_BITS) -> DKIMKey:
    """
    Make a new key.

    @param algorithm: L{RSA_SHA256} or L{ED25519_SHA256}.
    @param bits: the size of an RSA key.
    @raise ValueError: for a bad domain, selector, algorithm or size.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == RSA_SHA256:
        if not MIN_RSA_BITS <= bits <= 4096:
            raise ValueError(f"an RSA key for DKIM has {MIN_RSA_BITS} to 4096 bits, not {bits}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif algorithm == ED25519_SHA256:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return DKIMKey(domain, selector, pem, algorithm)


class _HeaderFields:
    """
    Follows a message's header section, in chunks whose line ends are all
    CRLF, keeping the fields to sign as they are (their name, colon,
    value and line ends).

    @ivar fields: the kept fields, in order.
    @ivar froms: the C{From:} fields seen.
    @ivar done: whether the header section has ended.
    @ivar problem: why the message cannot be signed, or C{None}.
    """

    def __init__(self, names=SIGNED_FIELDS, limit: int = MAX_SIGNED_HEADER) -> None:
        self._names = frozenset(names)
        self._limit = limit
        self.fields: list[bytearray] = []
        self.froms = 0
        self.done = False
        self.problem: str | None = None
        self._size = 0
        # The start of the current line, until it is known what it is.
        self._start = b""
        # What the rest of the current line is: None (not known yet),
        # "keep" or "skip".
        self._mode: str | None = None
        # Whether a field was seen, and whether the last one is kept.
        self._inField = False
        self._keeping = False

    def feed(self, data: bytes) -> int:
        """
        @return: how many octets of C{data} belong to the header section
            (the rest is body, once L{done}).
        """
        position = 0
        while position < len(data) and not self.done and self.problem is None:
            end = data.find(b"\n", position)
            piece = data[position:] if end < 0 else data[position : end + 1]
            position += len(piece)
            if self._mode is None:
                self._start += piece
                piece = self._classify(end >= 0)
            if self._mode == "keep" and piece:
                self._keep(piece)
            if end >= 0:
                self._mode = None
        return position

    def _classify(self, ended: bool) -> bytes:
        """
        Say what the current line is, if its start tells.

        @return: the part of the line to keep, if it is known.
        """
        line = self._start
        if line[:1] in (b" ", b"\t"):
            if not self._inField:
                self.problem = "its header section starts with a continuation line"
            self._mode = "keep" if self._keeping else "skip"
        elif line[:2] == b"\r\n":
            self.done = True
            self._mode = "skip"
        elif line == b"\r" and not ended:
            return b""
        else:
            colon = line.find(b":")
            if colon < 0:
                if ended or len(line) > NAME_HOLD:
                    self.problem = "a line of its header section is not a header field"
                return b""
            name = line[:colon]
            if not _FIELD_NAME.fullmatch(name):
                self.problem = "a line of its header section is not a header field"
                return b""
            name = name.lower()
            self._inField = True
            self._keeping = name in self._names
            self._mode = "keep" if self._keeping else "skip"
            if self._keeping:
                self.fields.append(bytearray())
            if name == b"from":
                self.froms += 1
        self._start = b""
        return line

    def _keep(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._size > self._limit:
            self.problem = f"its header fields to sign are longer than {self._limit} octets"
            return
        self.fields[-1] += piece

    def end(self) -> None:
        """
        The message has ended, its last line with CRLF: without an empty
        line, it has no body.
        """
        if self._start and self.problem is None:
            self.problem = "a line of its header section is not a header field"
        self.done = True

    def fromDomain(self) -> tuple[str | None, str | None]:
        """
        @return: the domain of the one address of the one C{From:} field
            (in A-labels, lower case) and C{None}; or C{None} and why
            there is none.
        """
        if not self.froms:
            return None, "it has no From: field"
        if self.froms > 1:
            return None, f"it has {self.froms} From: fields"
        [field] = [field for field in self.fields if field[:5].lower() == b"from:"]
        value = re.sub(rb"\r\n(?=[ \t])", b"", field[5:]).strip()
        addresses = [address for _, address in getaddresses([value.decode("utf-8", "replace")]) if address]
        if len(addresses) != 1:
            return None, f"its From: field has {len(addresses) or 'no'} address{'' if len(addresses) == 1 else 'es'}"
        local, at, domain = addresses[0].rpartition("@")
        if not at or not local:
            return None, "the address of its From: field has no domain"
        try:
            return _domainName(domain), None
        except ValueError:
            return None, "the domain of its From: address is not a domain name"


class _SigningScanner:
    """
    What one message's data passes through on its way into the queue
    when it may be signed: the header policy's scanner first (if any),
    then this one, which leaves the data as it is and signs it at the
    end.  See the module's docstring.
    """

    def __init__(self, signer: DKIMSigner, envelope, nextScanner=None) -> None:
        self._signer = signer
        self._envelope = envelope
        self._next = nextScanner
        self._lineEnds = DotStuffer(stuff=False)
        self._header = _HeaderFields()
        self._body = BodyHasher(RELAXED)
        self._keys: list[DKIMKey] = []
        self._active = True

    def __getattr__(self, name: str):
        """
        What the relay reads of the header policy's scanner
        (C{tlsOptional}, C{fromValue}...) is read through this one.
        """
        inner = self.__dict__.get("_next")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def feed(self, data: bytes) -> bytes:
        """
        @return: C{data} as the header policy's scanner leaves it.
        @raise mailproto._errors.SMTPServerError: as that scanner does.
        """
        if self._next is not None:
            data = self._next.feed(data)
        if self._active:
            try:
                self._take(self._lineEnds.feed(data))
            except Exception as e:
                self._failed(e)
        return data

    def close(self) -> bytes:
        """
        The data has ended: sign, and put the signature in the envelope's
        C{prefix}.

        @return: what the header policy's scanner adds at the end.
        """
        tail = self._next.close() if self._next is not None else b""
        if self._active:
            try:
                self._take(self._lineEnds.feed(tail) + self._lineEnds.finish())
                if self._active and not self._header.done:
                    self._header.end()
                    self._headerEnded()
                if self._active:
                    self._sign()
            except Exception as e:
                self._failed(e)
        return tail

    def _take(self, data: bytes) -> None:
        header = self._header
        if not header.done:
            used = header.feed(data)
            if header.problem is not None:
                self._notSigned(header.problem)
                return
            if not header.done:
                return
            data = data[used:]
            self._headerEnded()
            if not self._active:
                return
        self._body.update(data)

    def _headerEnded(self) -> None:
        """
        Choose the keys, once the header section is known.
        """
        if self._header.problem is not None:
            self._notSigned(self._header.problem)
            return
        domain, problem = self._header.fromDomain()
        if domain is None:
            self._notSigned(problem)
            return
        self._keys = self._signer.keysFor(domain)
        if not self._keys:
            self._active = False
            self._signer._told("no-key")
            _log.debug("Not DKIM-signing {queueID}: no key for {domain}", queueID=self._envelope.id, domain=domain)

    def _sign(self) -> None:
        signer = self._signer
        bodyHash = self._body.digest()
        now = int(signer._now())
        expires = now + signer.expiry if signer.expiry is not None else None
        header = b"".join(self._header.fields)
        signatures = b"".join(key.sign(header, bodyHash, now, expires) for key in self._keys)
        self._envelope.prefix = signatures + self._envelope.prefix
        self._active = False
        signer._told("signed")
        _log.debug(
            "DKIM-signed {queueID} as {signatures}",
            queueID=self._envelope.id,
            signatures=", ".join(f"{key.domain} ({key.selector}, {key.algorithm})" for key in self._keys),
        )

    def _notSigned(self, reason: str | None) -> None:
        self._active = False
        self._signer._told("not-signed")
        _log.info(
            "Not DKIM-signing {queueID} from <{sender}>: {reason}",
            queueID=self._envelope.id,
            sender=self._envelope.sender.decode("utf-8", "replace"),
            reason=reason,
        )

    def _failed(self, error: Exception) -> None:
        self._active = False
        self._signer._told("failed")
        _log.error(
            "DKIM signing of {queueID} failed; queued unsigned: {error}",
            queueID=self._envelope.id,
            error=f"{type(error).__name__}: {error}",
        )


class DKIMSigner:
    """
    Signs the messages the relay takes in from its own users, with the
    keys of their C{From:} domains.  See the module's docstring for which
    messages are signed.

    @ivar signFor: the envelope origins whose messages are signed.
    @ivar parentDomains: whether a domain without a key is signed with
        the key of its nearest parent domain that has one.
    @ivar domain: the one domain that signs every message, whatever its
        C{From:}, or C{None}.
    @ivar expiry: how long a signature is valid (C{x=}), in seconds, or
        C{None} for no limit.
    @ivar observers: callables told C{observer(result)} for each message
        that may be signed: C{"signed"}, C{"no-key"} (its From: domain
        has none), C{"not-signed"} (no usable From: address, or a header
        section that cannot be signed) or C{"failed"} (an error: queued
        unsigned).
    """

    def __init__(
        self,
        keys: Iterable[DKIMKey],
        signFor: Iterable[str] = (TRUSTED,),
        parentDomains: bool = False,
        domain: str | None = None,
        expiry: int | None = None,
        clock=None,
    ) -> None:
        """
        @param keys: the keys; several for one domain all sign (one
            signature each).
        @param signFor: origins of L{ORIGINS}.
        @param parentDomains: see L{parentDomains}.
        @param domain: see L{domain}; it must have a key.
        @param expiry: see L{expiry}.
        @param clock: gives C{t=} (its C{seconds()}); the real time if
            C{None}.
        @raise ValueError: for an unknown origin, a C{domain} without a
            key, or an expiry that is not positive.
        """
        self._keys: dict[str, list[DKIMKey]] = {}
        for key in keys:
            self._keys.setdefault(key.domain, []).append(key)
        self.signFor = frozenset(signFor)
        unknown = self.signFor - set(ORIGINS)
        if unknown:
            raise ValueError(f"unknown origin(s) {', '.join(sorted(unknown))} (known: {', '.join(ORIGINS)})")
        self.parentDomains = parentDomains
        self.domain = _domainName(domain) if domain is not None else None
        if self.domain is not None and self.domain not in self._keys:
            raise ValueError(f"no DKIM key for the signing domain {self.domain}")
        if expiry is not None and expiry <= 0:
            raise ValueError(f"a signature's lifetime is positive, not {expiry}")
        self.expiry = expiry
        self._clock = clock
        self.observers: list[Callable[[str], None]] = []

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.time()

    def _told(self, result: str) -> None:
        for observer in self.observers:
            observer(result)

    @property
    def keys(self) -> list[DKIMKey]:
        """
        Every key, in the order given.
        """
        return [key for keys in self._keys.values() for key in keys]

    def keysFor(self, fromDomain: str) -> list[DKIMKey]:
        """
        @param fromDomain: the domain of a message's C{From:} address, as
            L{_domainName} gives it.
        @return: the keys that sign the message (none: not signed).
        """
        if self.domain is not None:
            return list(self._keys[self.domain])
        domain = fromDomain
        while True:
            keys = self._keys.get(domain)
            if keys:
                return list(keys)
            if not self.parentDomains or "." not in domain:
                return []
            domain = domain.partition(".")[2]

    def scanner(self, envelope, nextScanner=None):
        """
        @param envelope: the message's envelope (its C{origin}, C{id},
            C{sender}); its C{prefix} gets the signatures at the end.
        @param nextScanner: what the data passes through first (the
            header policy's L{HeaderScanner
            <mailproto._headerpolicy.HeaderScanner>}), or C{None}; what
            it leaves is what is signed.
        @return: what the message's data passes through, with C{feed(data)
            -> data} and C{close() -> bytes}: C{nextScanner} itself when
            the message is not to be signed (its origin is not in
            L{signFor}).
        """
        if envelope.origin not in self.signFor:
            return nextScanner
        return _SigningScanner(self, envelope, nextScanner)


def parseKeySpec(spec: str) -> DKIMKey:
    """
    Read a key given as C{DOMAIN:SELECTOR:KEYFILE} (as the relay's
    C{--dkim-key} option gives it).

    @raise ValueError: if it is malformed or the key cannot be used,
        naming the spec.
    """
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{spec!r}: not DOMAIN:SELECTOR:KEYFILE")
    domain, selector, path = parts
    try:
        return DKIMKey.fromFile(domain, selector, path)
    except OSError as e:
        raise ValueError(f"{spec!r}: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{spec!r}: {e}") from None


def parseSignFor(text: str) -> frozenset[str]:
    """
    @param text: origins separated by commas (C{"trusted"},
        C{"trusted,checked"}), or C{"all"}.
    @return: the origins.
    @raise ValueError: for an unknown one.
    """
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    if names == {"all"}:
        return frozenset(ORIGINS)
    unknown = names - set(ORIGINS)
    if unknown or not names:
        raise ValueError(f"not origins: {text!r} (give {', '.join(ORIGINS)} separated by commas, or all)")
    return frozenset(names)


def makeSigner(
    specs: Iterable[str],
    signFor: str = TRUSTED,
    parentDomains: bool = False,
    domain: str | None = None,
    expiry: int | None = None,
    clock=None,
) -> DKIMSigner | None:
    """
    Make the relay's signer from its options.

    @param specs: each C{DOMAIN:SELECTOR:KEYFILE} (L{parseKeySpec}).
    @param signFor: the origins to sign for (L{parseSignFor}).
    @param parentDomains: see L{DKIMSigner.parentDomains}.
    @param domain: see L{DKIMSigner.domain}.
    @param expiry: see L{DKIMSigner.expiry}.
    @param clock: see L{DKIMSigner}.
    @return: the signer, or C{None} without keys.
    @raise ValueError: for a bad spec, key or option, saying which.
    """
    keys = [parseKeySpec(spec) for spec in specs]
    if not keys:
        if domain is not None:
            raise ValueError("a DKIM signing domain needs a DKIM key")
        return None
    return DKIMSigner(keys, parseSignFor(signFor), parentDomains, domain, expiry, clock)
