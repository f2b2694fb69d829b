# -*- test-case-name: mailproto.test.test_dkim -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for DKIM signing at intake (L{mailproto._dkim}): the streaming body
hash against dkimpy's, keys, the signatures checked by dkimpy, which
messages are signed, the relay's server signing into a real queue, the
queued message as the relay sends it checked by OpenDKIM, and
C{mailproto dkim-keygen}.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import smtplib
import stat
import subprocess
import sys
import tracemalloc

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given, strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

import mailproto
from mailproto._commandline._cli import runCommand
from mailproto._data import DotStuffer
from mailproto._dkim import (
    ED25519_SHA256,
    MAX_SIGNED_HEADER,
    NAME_HOLD,
    RELAXED,
    RSA_SHA256,
    SIMPLE,
    BodyHasher,
    DKIMKey,
    DKIMSigner,
    generateKey,
    makeSigner,
    parseKeySpec,
    parseSignFor,
)
from mailproto._errors import SMTPServerError
from mailproto._headerpolicy import HeaderScanner, IntakePolicy
from mailproto._queue import CHECKED, TRUSTED, UNCHECKED, Envelope, Queue
from mailproto._readahead import PrefixedFile
from mailproto._relay import QueueDelivery, QueueDeliveryFactory, RelayPolicy
from mailproto.smtp import ESMTPFactory
from mailproto.test import _peers
from mailproto.test._loopback import noConnectionsLeft
from mailproto.test.test_docs import DOCS

NOW = 1767225600  # 2026-01-01T00:00:00Z

MESSAGE = (
    b"Received: from client.example ([192.0.2.1])\r\n\tby relay.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    b"From: Jo Example <jo@example.org>\r\n"
    b"To: ann@example.com,\r\n bob@example.com\r\n"
    b"Subject: a  test\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"X-Mailer: nothing signed\r\n"
    b"\r\n"
    b"Hello,  world \t\r\n"
    b".\r\n"
    b"..leading dots stay as they are in the queue\r\n"
    b"\r\n\r\n"
)

#: A 512-bit RSA key, too small for DKIM (cryptography will not make one).
SMALL_RSA = b"""-----BEGIN PRIVATE KEY-----
MIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8AgEAAkEA7KLcXhbvWeTaChO4
ITeFd7Bd2fuJ7L085o5puSDGGvnb4rLYb92ks1BYTXlYnQag38jNAD8xj+b2SNwM
H70PFQIDAQABAkEArq4CMkqH4Tn4YlvwHkUX9yRwA0uVovaGkEMsdAZndtzzMxe4
v2oRtn23Ppt20Ldtfkm0DIZRrAfZ5A6/fZF5uQIhAPnXHUZG+HYegzFvgerdkKbb
qGkQp/c/+1+45ssBHEtHAiEA8nhoXtMaPaNrgvC0sX2kUeQVoBceFFZeN23oeNw+
iMMCIE9ra1nou5jI0EmJudHQRuhT0TA85Df7tcvS+kK0AquHAiEA4l2HEwACf4kR
1izihNHHlqxZhBwQ+OupChaR8kOsHgECIQCrnWDd2M0xtEVdkQEY4txl+QEc+Tzs
1YQDui9+NgHvIA==
-----END PRIVATE KEY-----
"""

_keys: dict = {}


def key(algorithm: str = RSA_SHA256, domain: str = "example.org", selector: str = "mail") -> DKIMKey:
    """
    @return: a key, made once per test run for each algorithm (RSA keys
        take a while to make), for C{domain} and C{selector}.
    """
    if algorithm not in _keys:
        _keys[algorithm] = generateKey("example.org", "mail", algorithm)
    return DKIMKey(domain, selector, _keys[algorithm].privateKeyPEM())


def records(*keys: DKIMKey):
    """
    @return: a C{dnsfunc} for dkimpy answering the keys' TXT records.
    """
    published = {(k.name + ".").encode("ascii"): k.publicRecord().encode("ascii") for k in keys}

    def dnsfunc(name, timeout=5):
        return published.get(name if name.endswith(b".") else name + b".")

    return dnsfunc


def verify(message: bytes, *keys: DKIMKey, index: int = 0) -> bool:
    """
    @return: whether dkimpy finds the C{index}th signature of C{message}
        good.
    """
    try:
        return dkim.DKIM(message).verify(idx=index, dnsfunc=records(*keys))
    except dkim.DKIMException:
        return False


def envelope(origin=TRUSTED, queueID: str = "0123456789abcdef") -> Envelope:
    return Envelope(id=queueID, sender=b"jo@example.org", recipients=[], origin=origin)


def scan(scanner, chunks) -> bytes:
    """
    @return: what the scanner passes on for C{chunks}, and at the end.
    """
    return b"".join([scanner.feed(chunk) for chunk in chunks] + [scanner.close()])


def sign(signer: DKIMSigner, message: bytes, chunks=None, origin=TRUSTED) -> Envelope:
    """
    Pass a message through the signer's scanner.

    @return: its envelope, with the signatures in C{prefix}.
    """
    env = envelope(origin)
    scanner = signer.scanner(env)
    out = scan(scanner, chunks if chunks is not None else [message]) if scanner is not None else message
    if out != message:
        raise AssertionError("the scanner changed the message")
    return env


def chunkings(data: bytes):
    return [
        ("whole", [data]),
        ("bytewise", [data[i : i + 1] for i in range(len(data))]),
        ("sevens", [data[i : i + 7] for i in range(0, len(data), 7)]),
    ]


def wire(message: bytes) -> bytes:
    """
    @return: the message as the relay's client sends it (line ends).
    """
    stuffer = DotStuffer(stuff=False)
    return stuffer.feed(message) + stuffer.finish()


def dkimpyBodyHash(body: bytes, canonicalization: bytes) -> bytes:
    """
    @return: the body hash dkimpy computes, for the body as sent (with a
        final CRLF).
    """
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    policy = CanonicalizationPolicy.from_c_value(b"simple/" + canonicalization)
    return hashlib.sha256(policy.canonicalize_body(body)).digest()


def bodyHash(chunks, canonicalization: bytes = RELAXED) -> bytes:
    hasher = BodyHasher(canonicalization)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()


# Bodies made of the pieces that matter to canonicalisation: white space
# runs, line ends (whole, and bare CR and LF, which are content), empty
# lines, dot lines, text.
_pieces = st.sampled_from([b"a", b"xyz", b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b".", b"\r\n.\r\n", b"\x00"])
_bodies = st.lists(_pieces, max_size=40).map(b"".join)


@st.composite
def _cut(draw, strategy=_bodies):
    """
    A body and a list of chunks that make it, cut anywhere.
    """
    body = draw(strategy)
    cuts = sorted(draw(st.sets(st.integers(0, len(body)), max_size=12)))
    bounds = [0, *cuts, len(body)]
    return body, [body[a:b] for a, b in zip(bounds, bounds[1:])]


class BodyHasherTests(SynchronousTestCase):
    """
    L{BodyHasher}: the body hash of RFC 6376 sections 3.4.3 and 3.4.4,
    the same as dkimpy's, however the body is cut.
    """

    def test_rfcExample(self):
        """
        RFC 6376 section 3.4.5's example, fed whole, byte by byte and in
        sevens.
        """
        body = b" C \r\nD \t E\r\n\r\n\r\n"
        for name, chunks in chunkings(body):
            self.assertEqual(bodyHash(chunks, RELAXED), hashlib.sha256(b" C\r\nD E\r\n").digest(), name)
            self.assertEqual(bodyHash(chunks, SIMPLE), hashlib.sha256(b" C \r\nD \t E\r\n").digest(), name)

    def test_empty(self):
        """
        An empty body hashes as nothing relaxed, as one CRLF simple; so do
        empty lines only (and white space only, relaxed).
        """
        for body in (b"", b"\r\n", b"\r\n\r\n\r\n"):
            self.assertEqual(bodyHash([body], RELAXED), hashlib.sha256(b"").digest(), body)
            self.assertEqual(bodyHash([body], SIMPLE), hashlib.sha256(b"\r\n").digest(), body)
        self.assertEqual(bodyHash([b"  \t\r\n \r\n"], RELAXED), hashlib.sha256(b"").digest())
        self.assertEqual(bodyHash([b"  \t\r\n \r\n"], SIMPLE), hashlib.sha256(b"  \t\r\n \r\n").digest())

    def test_unterminated(self):
        """
        A body whose last line has no CRLF hashes as the relay sends it,
        with one; its trailing white space goes, relaxed.
        """
        self.assertEqual(bodyHash([b"abc  "], RELAXED), hashlib.sha256(b"abc\r\n").digest())
        self.assertEqual(bodyHash([b"abc  "], SIMPLE), hashlib.sha256(b"abc  \r\n").digest())
        self.assertEqual(bodyHash([b"abc\r"], SIMPLE), hashlib.sha256(b"abc\r\r\n").digest())

    def test_splitCRLF(self):
        """
        A CRLF cut between its CR and its LF, at the end of the body and
        in its middle, and a lone CR at a boundary.
        """
        body = b"one \r\n\r\ntwo\r\n\r\n"
        for canonicalization in (RELAXED, SIMPLE):
            expected = dkimpyBodyHash(body, canonicalization)
            for cut in range(len(body) + 1):
                self.assertEqual(bodyHash([body[:cut], body[cut:]], canonicalization), expected, (canonicalization, cut))
        self.assertEqual(bodyHash([b"a\r", b"b\r\n"], SIMPLE), hashlib.sha256(b"a\rb\r\n").digest())

    def test_dotLineAtBoundary(self):
        """
        A line of one dot (as it is in the queue, unstuffed) starting or
        ending exactly at a chunk boundary.
        """
        body = b"text\r\n.\r\n..\r\nmore\r\n"
        for canonicalization in (RELAXED, SIMPLE):
            expected = dkimpyBodyHash(body, canonicalization)
            for cut in (6, 7, 9, 10):
                self.assertEqual(bodyHash([body[:cut], body[cut:]], canonicalization), expected, cut)

    @given(_cut())
    def test_sameAsDkimpy(self, cut):
        """
        For any body and any cutting, the hash is dkimpy's, both
        canonicalisations.
        """
        body, chunks = cut
        for canonicalization in (RELAXED, SIMPLE):
            self.assertEqual(bodyHash(chunks, canonicalization), dkimpyBodyHash(body, canonicalization), (body, chunks))

    def test_sameAsDkimpySign(self):
        """
        The C{bh=} of dkimpy's own C{sign} of a whole message is the
        relaxed hash of its body.
        """
        header, _, body = MESSAGE.partition(b"\r\n\r\n")
        signature = dkim.sign(MESSAGE, b"mail", b"example.org", _rsaPKCS1(), canonicalize=(b"relaxed", b"relaxed"))
        bh = re.search(rb"bh=([^;]+);", signature.replace(b"\r\n ", b"")).group(1)
        self.assertEqual(base64.b64decode(bh), bodyHash([body]))

    def test_onceOnly(self):
        """
        The hash is taken once; more body afterwards is an error.
        """
        hasher = BodyHasher()
        hasher.update(b"x\r\n")
        self.assertEqual(hasher.digest(), hasher.digest())
        self.assertRaises(ValueError, hasher.update, b"y")
        self.assertRaises(ValueError, BodyHasher, b"nowsp")


def _rsaPKCS1() -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key()._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


class KeyTests(SynchronousTestCase):
    """
    L{DKIMKey}: the key files it reads, what it refuses, and its DNS
    record.
    """

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertSigns(self, k: DKIMKey) -> None:
        signer = DKIMSigner([k], clock=Clock())
        env = sign(signer, MESSAGE)
        self.assertTrue(verify(env.prefix + MESSAGE, k))

    def test_formats(self):
        """
        RSA keys as PKCS#1 and PKCS#8 PEM, Ed25519 keys as PKCS#8 PEM and
        as dkimpy's base64 seed: read, of the right kind, signing.
        """
        from cryptography.hazmat.primitives import serialization

        ed = key(ED25519_SHA256)._key
        seed = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        files = [
            (_rsaPKCS1(), RSA_SHA256),
            (key().privateKeyPEM(), RSA_SHA256),
            (key(ED25519_SHA256).privateKeyPEM(), ED25519_SHA256),
            (base64.b64encode(seed) + b"\n", ED25519_SHA256),
        ]
        for data, algorithm in files:
            k = DKIMKey.fromFile("Example.ORG.", "mail", self.write(data))
            self.assertEqual((k.domain, k.selector, k.algorithm), ("example.org", "mail", algorithm))
            self.assertEqual(k.bits, 2048 if algorithm == RSA_SHA256 else 256)
            self.assertSigns(k)

    def test_dknewkeyFormat(self):
        """
        A key made by dkimpy's own C{dknewkey} (the base64 of the Ed25519
        seed; PKCS#1 for RSA) is read.
        """
        import nacl.signing

        seed = nacl.signing.SigningKey.generate()
        k = DKIMKey("example.org", "ed", base64.b64encode(bytes(seed)))
        self.assertEqual(k.publicRecord(), "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(seed.verify_key)).decode())

    def test_refused(self):
        """
        Too small an RSA key, another kind of key, an encrypted one, not a
        key, the wrong algorithm, a bad domain or selector: C{ValueError}.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        ecKey = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        encrypted = key()._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
        )
        cases = [
            (("example.org", "mail", SMALL_RSA), "512 bits"),
            (("example.org", "mail", ecKey), "RSA or Ed25519"),
            (("example.org", "mail", encrypted), "encrypted"),
            (("example.org", "mail", b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"), "PEM"),
            (("example.org", "mail", b"hello"), "not a PEM"),
            (("example.org", "mail", key().privateKeyPEM(), ED25519_SHA256), "not ed25519"),
            (("exa mple.org", "mail", key().privateKeyPEM()), "domain"),
            (("-example.org", "mail", key().privateKeyPEM()), "domain"),
            (("example.org", "ma il", key().privateKeyPEM()), "selector"),
            (("example.org", "", key().privateKeyPEM()), "selector"),
        ]
        for args, text in cases:
            error = self.assertRaises(ValueError, DKIMKey, *args)
            self.assertIn(text, str(error), args[:2])
        path = self.write(b"junk")
        error = self.assertRaises(ValueError, DKIMKey.fromFile, "example.org", "mail", path)
        self.assertTrue(str(error).startswith(path + ": not a PEM private key"), error)
        self.assertRaises(OSError, DKIMKey.fromFile, "example.org", "mail", self.mktemp())

    def test_weakKeyWarned(self):
        """
        A 1024-bit RSA key is used, with a warning.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pem = rsa.generate_private_key(65537, 1024).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with capturedLogs() as events:
            k = DKIMKey("example.org", "old", pem)
        [event] = events
        self.assertEqual((event["log_level"], event["bits"]), (LogLevel.warn, 1024))
        self.assertSigns(k)

    def test_records(self):
        """
        The TXT record: C{v=DKIM1; k=...; p=}, the public key; the zone
        line cuts it into strings of at most 255 characters, joined again
        by a verifier.
        """
        from cryptography.hazmat.primitives import serialization

        k = key()
        record = k.publicRecord()
        self.assertTrue(record.startswith("v=DKIM1; k=rsa; p="))
        public = serialization.load_der_public_key(base64.b64decode(record.split("p=")[1]))
        self.assertEqual(public.public_numbers(), k._key.public_key().public_numbers())
        line = k.zoneLine()
        self.assertTrue(line.startswith('mail._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p='), line)
        strings = re.findall(r'"([^"]*)"', line)
        self.assertEqual(len(strings), 2)
        self.assertTrue(all(len(s) <= 255 for s in strings))
        self.assertEqual("".join(strings), record)
        self.assertEqual(key(ED25519_SHA256).zoneLine().count('"'), 2)

    def test_idnDomain(self):
        """
        A domain in U-labels signs as its A-labels.
        """
        k = DKIMKey("B\u00fccher.example", "mail", key().privateKeyPEM())
        self.assertEqual(k.domain, "xn--bcher-kva.example")

    def test_generate(self):
        """
        L{generateKey} refuses sizes and algorithms DKIM does not have.
        """
        self.assertRaises(ValueError, generateKey, "example.org", "mail", RSA_SHA256, 512)
        self.assertRaises(ValueError, generateKey, "example.org", "mail", RSA_SHA256, 8192)
        self.assertRaises(ValueError, generateKey, "example.org", "mail", "dsa-sha1")


class SigningTests(SynchronousTestCase):
    """
    The signatures that L{DKIMSigner}'s scanner makes, checked by dkimpy.
    """

    def signer(self, *keys, **kw) -> DKIMSigner:
        clock = Clock()
        clock.advance(NOW)
        return DKIMSigner(keys or [key()], clock=clock, **kw)

    def test_rsaAndEd25519(self):
        """
        An RSA and an Ed25519 signature, each good, with the fields of
        RFC 6376 and the relaxed canonicalisation; a changed body or a
        changed signed field breaks them.
        """
        for k in (key(RSA_SHA256), key(ED25519_SHA256)):
            env = sign(self.signer(k), MESSAGE)
            signed = env.prefix + MESSAGE
            self.assertTrue(verify(signed, k), k)
            self.assertTrue(env.prefix.startswith(b"DKIM-Signature: v=1; a=" + k.algorithm.encode() + b"; c=relaxed/relaxed; d=example.org;\r\n s=mail; t=1767225600;"), env.prefix)
            self.assertTrue(env.prefix.endswith(b"\r\n"))
            self.assertFalse(verify(signed.replace(b"Hello", b"Hallo"), k))
            self.assertFalse(verify(signed.replace(b"a  test", b"a  tost"), k))
            self.assertFalse(verify(signed.replace(b"ann@", b"eve@"), k))

    def test_signedFields(self):
        """
        C{h=} names the fields of RFC 6376 section 5.4.1's list that are
        there, in order, and C{from} once more: adding a C{From:} breaks
        the signature, adding a C{Received:} or an unsigned field does
        not.
        """
        k = key()
        env = sign(self.signer(k), MESSAGE)
        fields = dkim.util.parse_tag_value(env.prefix.split(b":", 1)[1])
        self.assertEqual(fields[b"h"], b"date:from:to:subject:message-id:from")
        signed = env.prefix + MESSAGE
        self.assertFalse(verify(signed.replace(b"\r\n\r\n", b"\r\nFrom: eve@example.net\r\n\r\n", 1), k))
        self.assertTrue(verify(b"Received: by mx.example; now\r\n" + signed.replace(b"X-Mailer", b"X-Spam: yes\r\nX-Mailer"), k))

    def test_relaxed(self):
        """
        What servers on the way may do to white space, line folding and
        the case of field names does not break the signature.
        """
        k = key()
        signed = sign(self.signer(k), MESSAGE).prefix + MESSAGE
        changed = (
            signed.replace(b"Subject: a  test", b"SUBJECT:   a \t test  ")
            .replace(b"To: ann@example.com,\r\n bob@example.com", b"to: ann@example.com, bob@example.com")
            .replace(b"Hello,  world \t", b"Hello, world")
            .replace(b"DKIM-Signature: v=1;", b"DKIM-Signature:  v=1;\r\n\t")
        ) + b"\r\n\r\n"
        self.assertNotEqual(changed, signed)
        self.assertTrue(verify(changed, k))

    def test_chunkings(self):
        """
        However the data comes, the signature is the same.
        """
        signer = self.signer(key(ED25519_SHA256))
        signatures = {name: sign(signer, MESSAGE, chunks).prefix for name, chunks in chunkings(MESSAGE)}
        self.assertEqual(len(set(signatures.values())), 1, signatures)

    def test_bothKeys(self):
        """
        A domain with an RSA and an Ed25519 key: two signatures, each
        good.
        """
        rsa, ed = key(RSA_SHA256), key(ED25519_SHA256, selector="ed")
        env = sign(self.signer(rsa, ed), MESSAGE)
        self.assertEqual(env.prefix.count(b"DKIM-Signature:"), 2)
        signed = env.prefix + MESSAGE
        self.assertTrue(verify(signed, rsa, ed, index=0))
        self.assertTrue(verify(signed, rsa, ed, index=1))

    def test_expiry(self):
        """
        With an expiry, C{x=} is C{t=} plus it.
        """
        env = sign(self.signer(key(ED25519_SHA256), expiry=86400), MESSAGE)
        fields = dkim.util.parse_tag_value(env.prefix.split(b":", 1)[1])
        self.assertEqual((fields[b"t"], fields[b"x"]), (b"1767225600", b"1767312000"))
        self.assertRaises(ValueError, self.signer, key(), expiry=0)

    def test_asSent(self):
        """
        Bare line ends and an unterminated last line are signed as the
        relay sends them: CRLF.
        """
        k = key(ED25519_SHA256)
        message = b"Date: x\nFrom: jo@example.org\rSubject: bare\r\n\nline\nlast  "
        env = sign(self.signer(k), message)
        self.assertTrue(verify(env.prefix + wire(message), k))

    def test_noBody(self):
        """
        A message of header fields only, with or without the empty line.
        """
        k = key(ED25519_SHA256)
        for message in (b"From: jo@example.org\r\nSubject: x\r\n", b"From: jo@example.org\r\nSubject: x\r\n\r\n"):
            env = sign(self.signer(k), message)
            self.assertTrue(verify(env.prefix + message, k), message)

    def test_fromAddresses(self):
        """
        Display names, comments, quoting and folding around the one
        address; a domain in U-labels matches its key in A-labels.
        """
        k = key(ED25519_SHA256)
        idn = DKIMKey("b\u00fccher.example", "mail", k.privateKeyPEM())
        for value, used in [
            (b'"Example, Jo" <jo@example.org>', k),
            (b"jo@example.org (Jo)", k),
            (b"Jo\r\n <jo@EXAMPLE.org>", k),
            ("Jö <jo@bücher.example>".encode(), idn),
        ]:
            message = b"From: " + value + b"\r\nSubject: x\r\n\r\nhi\r\n"
            env = sign(self.signer(k, idn), message)
            self.assertTrue(verify(env.prefix + message, used), value)
            self.assertEqual(env.prefix.count(b"DKIM-Signature"), 1)

    def assertNotSigned(self, signer, message, reason=None, chunks=None):
        with capturedLogs() as events:
            env = sign(signer, message, chunks)
        self.assertEqual(env.prefix, b"")
        if reason is not None:
            [event] = [e for e in events if e["log_level"] >= LogLevel.info]
            self.assertEqual((event["queueID"], event["reason"]), ("0123456789abcdef", reason))
        return events

    def test_noFromField(self):
        """
        No C{From:}, two, or a C{From:} with two addresses, none or a
        group: not signed, one log line saying why.
        """
        signer = self.signer()
        self.assertNotSigned(signer, b"Subject: x\r\n\r\nFrom: jo@example.org\r\n", "it has no From: field")
        self.assertNotSigned(signer, b"From: jo@example.org\r\nFROM: jo@example.org\r\n\r\nhi\r\n", "it has 2 From: fields")
        self.assertNotSigned(signer, b"From: jo@example.org, ann@example.org\r\n\r\nhi\r\n", "its From: field has 2 addresses")
        self.assertNotSigned(signer, b"From: friends: jo@example.org, ann@example.org;\r\n\r\n", "its From: field has 2 addresses")
        self.assertNotSigned(signer, b"From: Undisclosed:;\r\n\r\n", "its From: field has no addresses")
        self.assertNotSigned(signer, b"From: jo\r\n\r\n", "the address of its From: field has no domain")

    def test_unsignedDomain(self):
        """
        A C{From:} of a domain without a key: not signed, logged at debug
        level only; its subdomain neither, unless parent domains sign.
        """
        signer = self.signer(key(ED25519_SHA256))
        events = self.assertNotSigned(signer, b"From: jo@example.net\r\n\r\nhi\r\n")
        self.assertEqual([e["log_level"] for e in events], [LogLevel.debug])
        self.assertNotSigned(signer, b"From: jo@news.example.org\r\n\r\nhi\r\n")
        self.assertNotSigned(signer, b"From: jo@badexample.org\r\n\r\nhi\r\n")
        parents = self.signer(key(ED25519_SHA256), parentDomains=True)
        message = b"From: jo@a.news.example.org\r\n\r\nhi\r\n"
        env = sign(parents, message)
        self.assertTrue(verify(env.prefix + message, key(ED25519_SHA256)))
        self.assertNotSigned(parents, b"From: jo@example.net\r\n\r\nhi\r\n")
        self.assertNotSigned(parents, b"From: jo@badexample.org\r\n\r\nhi\r\n")

    def test_fixedDomain(self):
        """
        With a fixed domain, its key signs whatever the C{From:}; a fixed
        domain needs a key.
        """
        k = key(ED25519_SHA256, domain="relay.example")
        message = b"From: jo@example.net\r\n\r\nhi\r\n"
        env = sign(self.signer(k, domain="Relay.Example"), message)
        self.assertIn(b"d=relay.example;", env.prefix)
        self.assertTrue(verify(env.prefix + message, k))
        self.assertRaises(ValueError, self.signer, k, domain="example.org")

    def test_origins(self):
        """
        By default only the relay's own users' mail is signed; mail from
        the outside world, or of an unknown origin, is not: the scanner
        is then the one given, untouched.
        """
        signer = self.signer(key(ED25519_SHA256))
        inner = HeaderScanner()
        for origin in (CHECKED, UNCHECKED, None):
            env = envelope(origin)
            self.assertIs(signer.scanner(env, inner), inner)
            self.assertIsNone(signer.scanner(env))
        self.assertIsNot(signer.scanner(envelope(TRUSTED), inner), inner)
        wider = self.signer(key(ED25519_SHA256), signFor=parseSignFor("trusted, checked"))
        self.assertNotEqual(sign(wider, MESSAGE, origin=CHECKED).prefix, b"")
        self.assertEqual(sign(wider, MESSAGE, origin=UNCHECKED).prefix, b"")
        self.assertRaises(ValueError, self.signer, key(), signFor=["friends"])

    def test_badHeaders(self):
        """
        A header section that cannot be signed as it is: not signed.
        """
        signer = self.signer(key(ED25519_SHA256))
        self.assertNotSigned(signer, b"From: jo@example.org\r\nnot a field\r\n\r\nhi\r\n", "a line of its header section is not a header field")
        self.assertNotSigned(signer, b" folded: first\r\nFrom: jo@example.org\r\n\r\n", "its header section starts with a continuation line")
        self.assertNotSigned(signer, b"From : jo@example.org\r\n\r\n", "a line of its header section is not a header field")
        self.assertNotSigned(signer, b"From: jo@example.org\r\n" + b"x" * (NAME_HOLD + 1), "a line of its header section is not a header field", chunks=[b"From: jo@example.org\r\n", b"x" * (NAME_HOLD + 1)])
        self.assertNotSigned(signer, b"From: jo@example.org\r\nno colon at the end", "a line of its header section is not a header field")
        huge = b"From: jo@example.org\r\nSubject: " + b"x" * 900 + b"\r\n" + b" y\r\n" * (MAX_SIGNED_HEADER // 4) + b"\r\nhi\r\n"
        self.assertNotSigned(signer, huge, f"its header fields to sign are longer than {MAX_SIGNED_HEADER} octets")

    def test_largeUnsignedFieldsPass(self):
        """
        Fields that are not signed are only looked at: a long one, past
        the limit of signed fields, does not stop the signature.
        """
        k = key(ED25519_SHA256)
        message = b"X-Long: " + b"y" * 990 + b"\r\n" + b"X-Long: y\r\n\tz\r\n" * 8000 + b"From: jo@example.org\r\n\r\nhi\r\n"
        env = sign(self.signer(k), message, [message[i : i + 4096] for i in range(0, len(message), 4096)])
        self.assertTrue(verify(env.prefix + message, k))

    def test_signingError(self):
        """
        An error while signing loses nothing: the data passes unchanged,
        the message is queued unsigned, one error line is logged.
        """

        class Broken(DKIMKey):
            def sign(self, *args, **kw):
                raise RuntimeError("the key fell over")

        broken = Broken("example.org", "mail", key(ED25519_SHA256).privateKeyPEM())
        told = []
        signer = self.signer(broken)
        signer.observers.append(told.append)
        with capturedLogs() as events:
            env = sign(signer, MESSAGE, [MESSAGE[i : i + 5] for i in range(0, len(MESSAGE), 5)])
        self.assertEqual(env.prefix, b"")
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertEqual(event["error"], "RuntimeError: the key fell over")
        self.assertEqual(told, ["failed"])

    def test_errorInFeed(self):
        """
        An error while following the data (here, in the body hash) stops
        signing, not the data.
        """
        signer = self.signer(key(ED25519_SHA256))
        env = envelope()
        scanner = signer.scanner(env)
        scanner._body = None
        with capturedLogs() as events:
            self.assertEqual(scan(scanner, [MESSAGE]), MESSAGE)
        self.assertEqual(env.prefix, b"")
        self.assertEqual([e["log_level"] for e in events], [LogLevel.error])

    def test_innerScanner(self):
        """
        The header policy's scanner sees the data first: what it adds is
        signed; its refusal goes through; what the relay reads of it
        (C{tlsOptional}) is read through the signer's.
        """
        k = key(ED25519_SHA256)
        signer = self.signer(k)
        policy = IntakePolicy(b"relay.example", clock=Clock())
        env = envelope()
        scanner = signer.scanner(env, policy.scanner(env, complete=True))
        message = b"From: jo@example.org\r\nTLS-Required: No\r\n\r\nhi\r\n"
        out = scan(scanner, [message])
        self.assertIn(b"Message-ID: <0123456789abcdef@relay.example>", out)
        fields = dkim.util.parse_tag_value(env.prefix.split(b":", 1)[1])
        self.assertEqual(fields[b"h"], b"from:date:message-id:from")
        self.assertTrue(verify(env.prefix + out, k))
        self.assertIs(scanner.tlsOptional, True)
        loop = signer.scanner(envelope(), IntakePolicy(b"relay.example", maxHops=1).scanner(envelope()))
        self.assertRaises(SMTPServerError, scan, loop, [b"Received: a\r\nReceived: b\r\nFrom: jo@example.org\r\n\r\n"])
        self.assertRaises(AttributeError, getattr, signer.scanner(envelope()), "tlsOptional")

    def test_observers(self):
        """
        The observers hear each message's result.
        """
        signer = self.signer(key(ED25519_SHA256))
        told = []
        signer.observers.append(told.append)
        sign(signer, MESSAGE)
        sign(signer, b"From: jo@example.net\r\n\r\n")
        with capturedLogs():
            sign(signer, b"Subject: x\r\n\r\n")
        self.assertEqual(told, ["signed", "no-key", "not-signed"])

    def test_largeMessageBounded(self):
        """
        A 20 MB message fed in 64 KiB chunks is signed with memory
        bounded by a chunk or two, not by the message.
        """
        k = key(ED25519_SHA256)
        signer = self.signer(k)
        line = b"Lorem ipsum dolor sit amet,  consectetur adipiscing elit \t\r\n"
        chunk = (line * (65536 // len(line) + 1))[:65536]
        header = b"From: jo@example.org\r\nSubject: big\r\n\r\n"
        count = 20 * 1024 * 1024 // len(chunk)
        env = envelope()
        tracemalloc.start()
        try:
            scanner = signer.scanner(env)
            scanner.feed(header)
            for _ in range(count):
                scanner.feed(chunk)
            scanner.close()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 1 << 20)
        expected = BodyHasher()
        for _ in range(count):
            expected.update(chunk)
        fields = dkim.util.parse_tag_value(env.prefix.split(b":", 1)[1])
        self.assertEqual(base64.b64decode(fields[b"bh"]), expected.digest())
        small = header + chunk * 3
        self.assertEqual(verify(sign(signer, small).prefix + small, k), True)


class OptionsTests(SynchronousTestCase):
    """
    What the relay's options give: L{parseKeySpec}, L{parseSignFor},
    L{makeSigner}.
    """

    def test_keySpec(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(key(ED25519_SHA256).privateKeyPEM())
        k = parseKeySpec(f"example.org:ed:{path}")
        self.assertEqual((k.domain, k.selector, k.algorithm), ("example.org", "ed", ED25519_SHA256))
        for spec, text in [
            ("example.org:ed", "not DOMAIN:SELECTOR:KEYFILE"),
            ("example.org::" + path, "not DOMAIN:SELECTOR:KEYFILE"),
            ("example.org:ed:" + path + ".missing", "cannot read"),
            ("bad domain:ed:" + path, "not a domain name"),
        ]:
            error = self.assertRaises(ValueError, parseKeySpec, spec)
            self.assertIn(text, str(error))
            self.assertIn(repr(spec), str(error))

    def test_signFor(self):
        self.assertEqual(parseSignFor("trusted"), {TRUSTED})
        self.assertEqual(parseSignFor("Checked, trusted"), {TRUSTED, CHECKED})
        self.assertEqual(parseSignFor("all"), {TRUSTED, CHECKED, UNCHECKED})
        self.assertRaises(ValueError, parseSignFor, "friends")
        self.assertRaises(ValueError, parseSignFor, "")

    def test_makeSigner(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(key(ED25519_SHA256).privateKeyPEM())
        signer = makeSigner([f"example.org:ed:{path}", f"example.net:ed:{path}"], "all", parentDomains=True, expiry=60)
        self.assertEqual([k.domain for k in signer.keys], ["example.org", "example.net"])
        self.assertEqual((signer.signFor, signer.parentDomains, signer.expiry), ({TRUSTED, CHECKED, UNCHECKED}, True, 60))
        self.assertIsNone(makeSigner([]))
        self.assertRaises(ValueError, makeSigner, [], domain="example.org")
        self.assertRaises(ValueError, makeSigner, [f"example.org:ed:{path}"], "some")


# -- The relay's server -------------------------------------------------------


class RelayServerTests(SynchronousTestCase):
    """
    The relay's server with a L{QueueDeliveryFactory} given a signer, in
    memory, writing into a real queue on disk: signed messages are queued
    with their signature kept in the state file, and read back as the
    relay sends them.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.queue = Queue(self.directory, runInThread=lambda f, *a: defer.maybeDeferred(f, *a))
        clock = Clock()
        clock.advance(NOW)
        self.key = key(ED25519_SHA256)
        self.signer = DKIMSigner([self.key], clock=clock)
        self.factory = QueueDeliveryFactory(
            self.queue, RelayPolicy(domains=["example.com"]), clock=clock, intake=IntakePolicy(b"relay.example", clock=clock), dkim=self.signer
        )

    def send(self, message: bytes, peer: str = "127.0.0.1", chunk: int = 7) -> bytes:
        factory = ESMTPFactory(deliveryFactory=self.factory, domain=b"relay.example", clock=Clock())
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 5000))
        proto.makeConnection(transport)
        data = b"EHLO client.example\r\nMAIL FROM:<jo@example.org>\r\nRCPT TO:<ann@example.com>\r\nDATA\r\n" + message.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n"
        for i in range(0, len(data), chunk):
            proto.dataReceived(data[i : i + chunk])
        return transport.value()

    def queued(self) -> tuple[Envelope, bytes]:
        [queueID] = self.queue.ids()
        found = Queue(self.directory, runInThread=lambda f, *a: defer.maybeDeferred(f, *a))
        found.recover()
        env = found.getEnvelope(queueID)
        reader = PrefixedFile(env.prefix, found.openMessage(queueID))
        try:
            return env, b"".join(iter(lambda: reader.read(100), b""))
        finally:
            reader.close()

    def test_signedIntoQueue(self):
        """
        A message from a relay client is queued with a signature that
        verifies on the message as the relay reads it from the queue: the
        prefix, then the data, the server's C{Received:} included.
        """
        reply = self.send(MESSAGE)
        self.assertIn(b"250 2.0.0 Ok: queued as", reply)
        env, sent = self.queued()
        self.assertTrue(sent.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;"))
        self.assertIn(b"Received: from client.example", sent)
        self.assertTrue(verify(sent, self.key))
        self.assertEqual(env.origin, TRUSTED)

    def test_outsideNotSigned(self):
        """
        A message from the outside world for a relay domain is queued
        unsigned.
        """
        reply = self.send(MESSAGE, peer="192.0.2.7")
        self.assertIn(b"250 2.0.0 Ok: queued as", reply)
        env, sent = self.queued()
        self.assertEqual((env.origin, env.prefix), (UNCHECKED, b""))
        self.assertFalse(sent.startswith(b"DKIM-Signature"))

    def test_errorQueuedUnsigned(self):
        """
        A signer that fails: the message is queued all the same, unsigned.
        """
        self.patch(DKIMKey, "sign", lambda *a, **kw: 1 / 0)
        with capturedLogs() as events:
            reply = self.send(MESSAGE)
        self.assertIn(b"250 2.0.0 Ok: queued as", reply)
        env, sent = self.queued()
        self.assertEqual(env.prefix, b"")
        self.assertEqual(sent[: len(b"Received:")], b"Received:")
        self.assertEqual(len([e for e in events if e.get("log_level") == LogLevel.error]), 1)

    def test_deliveryDefault(self):
        """
        A delivery made without a signer signs nothing.
        """
        self.assertIsNone(QueueDelivery(self.queue, RelayPolicy()).dkim)
        self.assertIsNone(QueueDeliveryFactory(self.queue).getMessageDelivery().dkim)
        self.assertIs(self.factory.getMessageDelivery().dkim, self.signer)


# -- OpenDKIM -----------------------------------------------------------------

# Run in a private network and mount namespace: bring up its loopback,
# point /etc/resolv.conf (there only) at 127.0.0.1, answer DNS there on
# port 53 with the tests' DNS server, and run opendkim-testmsg, which
# verifies the message on stdin with the keys it finds in the DNS.
_OPENDKIM_CHILD = r"""
import fcntl, json, os, socket, struct, subprocess, sys, tempfile

records, testmsg = json.loads(sys.argv[1]), sys.argv[2]
message = sys.stdin.buffer.read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
s.close()
with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
    conf.write("nameserver 127.0.0.1\noptions edns0 attempts:1 timeout:5\n")
mounted = subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], capture_output=True)
if mounted.returncode:
    sys.stderr.write("SETUP: mount --bind /etc/resolv.conf: %s\n" % mounted.stderr.decode(errors="replace"))
    sys.exit(97)
from twisted.internet import reactor, threads
from twisted.names import dns
from mailproto.test._dnsserver import DNSServer

server = DNSServer()
for name, text in records.items():
    server.add(name, dns.Record_TXT(*[text[i : i + 255].encode() for i in range(0, len(text), 255)]))
reactor.listenUDP(53, dns.DNSDatagramProtocol(server.factory), interface="127.0.0.1")
reactor.listenTCP(53, server.factory, interface="127.0.0.1")
result = []

def run():
    return subprocess.run([testmsg], input=message, capture_output=True, timeout=60)

def done(outcome):
    result.append(outcome)
    reactor.stop()

reactor.callWhenRunning(lambda: threads.deferToThread(run).addBoth(done))
reactor.run()
outcome = result[0]
if not isinstance(outcome, subprocess.CompletedProcess):
    sys.stderr.write("SETUP: %s\n" % outcome)
    sys.exit(97)
sys.stderr.write(outcome.stderr.decode(errors="replace"))
sys.stderr.write("queries: %s\n" % json.dumps([q[0].decode() for q in server.queries]))
sys.exit(outcome.returncode)
"""


def opendkimVerify(message: bytes, *keys: DKIMKey) -> tuple[int, str]:
    """
    Verify a message with OpenDKIM's C{opendkim-testmsg}, the keys'
    records in a DNS of its own.

    @return: its exit status (0: a good signature) and what it said.
    @raise SkipTest: if OpenDKIM is not installed, or this is not root
        (L{FailTest} when peers are required).
    """
    testmsg = _peers.tool("opendkim-testmsg")
    unshare = _peers.which("unshare")
    if unshare is None or os.geteuid() != 0:
        _peers.missing("verifying with OpenDKIM needs root and unshare(1) (a private network namespace for its DNS)")
    source = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))
    environment = {"PATH": _peers.SEARCH_PATH, "PYTHONPATH": source, "LANG": "C"}
    done = subprocess.run(
        [unshare, "--net", "--mount", "--propagation", "private", sys.executable, "-c", _OPENDKIM_CHILD,
         json.dumps({k.name: k.publicRecord() for k in keys}), testmsg],
        input=message,
        capture_output=True,
        timeout=90,
        env=environment,
    )  # fmt: skip
    said = done.stderr.decode("utf-8", "replace")
    if done.returncode == 97 or "Traceback" in said:
        raise AssertionError(f"could not run OpenDKIM in a namespace of its own: {said}")
    return done.returncode, said


class OpenDKIMTests(SynchronousTestCase):
    """
    OpenDKIM, an independent verifier, checks the signatures.
    """

    def test_verifies(self):
        """
        OpenDKIM finds RSA and Ed25519 signatures good, after looking up
        the key; and a changed body bad.
        """
        for k in (key(RSA_SHA256), key(ED25519_SHA256)):
            clock = Clock()
            clock.advance(NOW)
            env = sign(DKIMSigner([k], clock=clock), MESSAGE)
            status, said = opendkimVerify(env.prefix + MESSAGE, k)
            self.assertEqual(status, 0, said)
            self.assertIn('queries: ["mail._domainkey.example.org"]', said)
            status, said = opendkimVerify(env.prefix + MESSAGE.replace(b"world", b"word"), k)
            self.assertNotEqual(status, 0)
            self.assertIn("Bad signature", said)


# -- Over real sockets --------------------------------------------------------


def _send(port: int, message: bytes) -> defer.Deferred:
    def send():
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=20) as client:
            return client.sendmail("jo@example.org", ["ann@example.com"], message)

    return deferToThread(send)


class EndToEndTests(TestCase):
    """
    A real SMTP session over loopback into the relay's server with a
    signer, a real queue on disk; the queued message, read as the relay
    sends it, checked by dkimpy and by OpenDKIM.
    """

    timeout = 120

    async def relayOnce(self, signer: DKIMSigner, message: bytes) -> tuple[Envelope, bytes]:
        from twisted.internet import reactor

        directory = self.mktemp()
        queue = Queue(directory, reactor=reactor)
        factory = ESMTPFactory(
            deliveryFactory=QueueDeliveryFactory(queue, intake=IntakePolicy(b"relay.example"), dkim=signer), domain=b"relay.example"
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        refused = await _send(port.getHost().port, message)
        self.assertEqual(refused, {})
        await noConnectionsLeft(self)
        [queueID] = queue.ids()
        env = queue.getEnvelope(queueID)
        reader = PrefixedFile(env.prefix, queue.openMessage(queueID))
        try:
            return env, reader.read()
        finally:
            reader.close()

    @defer.inlineCallbacks
    def test_rsa(self):
        """
        RSA.
        """
        yield defer.Deferred.fromCoroutine(self.checkBoth(key(RSA_SHA256)))

    @defer.inlineCallbacks
    def test_ed25519(self):
        """
        Ed25519.
        """
        yield defer.Deferred.fromCoroutine(self.checkBoth(key(ED25519_SHA256)))

    async def checkBoth(self, k: DKIMKey) -> None:
        message = MESSAGE.replace(b"Received: from client.example ([192.0.2.1])\r\n\tby relay.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n", b"")
        env, sent = await self.relayOnce(DKIMSigner([k]), message)
        self.assertTrue(sent.startswith(b"DKIM-Signature: "), sent[:200])
        self.assertIn(b"\r\nReceived: from client.example", sent)
        self.assertTrue(sent.endswith(message.split(b"\r\n\r\n", 1)[1]))
        self.assertTrue(verify(sent, k))
        status, said = opendkimVerify(sent, k)
        self.assertEqual(status, 0, said)


# -- mailproto dkim-keygen -----------------------------------------------------


class KeygenTests(SynchronousTestCase):
    """
    C{mailproto dkim-keygen}.
    """

    def keygen(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = runCommand(["dkim-keygen", *args], reactor=object(), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_keys(self):
        """
        An RSA key and an Ed25519 key: written mode 0600, readable as
        DKIM keys; the printed record publishes their public keys, and a
        signature made with each verifies with it.
        """
        for args, algorithm, bits in [((), RSA_SHA256, 2048), (("--algorithm", "ed25519"), ED25519_SHA256, 256), (("--bits", "1024"), RSA_SHA256, 1024)]:
            path = os.path.join(os.path.abspath(self.mktemp()))
            status, out, err = self.keygen("--domain", "Example.org", "--selector", "s1", "--out", path, *args)
            self.assertEqual(status, 0, err)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            with capturedLogs():
                k = DKIMKey.fromFile("example.org", "s1", path)
            self.assertEqual((k.algorithm, k.bits), (algorithm, bits))
            [line] = out.splitlines()
            match = re.fullmatch(r's1\._domainkey\.example\.org\. IN TXT ((?:"[^"]{1,255}" ?)+)', line)
            self.assertIsNotNone(match, line)
            record = "".join(re.findall(r'"([^"]*)"', match.group(1)))
            self.assertEqual(record, k.publicRecord())
            env = sign(DKIMSigner([k]), MESSAGE)
            published = {b"s1._domainkey.example.org.": record.encode()}
            self.assertTrue(dkim.verify(env.prefix + MESSAGE, dnsfunc=lambda name, timeout=5: published.get(name)))
            self.assertIn(f"--dkim-key example.org:s1:{path}", err)
            self.assertEqual("warning" in err, bits == 1024)

    def test_noOverwrite(self):
        """
        An existing file is left alone, and the command fails.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"precious")
        status, out, err = self.keygen("--domain", "example.org", "--selector", "s1", "--out", path)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("exists; not replacing it", err)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        os.symlink(path + ".nowhere", path + ".link")
        self.assertEqual(self.keygen("--domain", "example.org", "--selector", "s1", "--out", path + ".link")[0], 1)
        self.assertFalse(os.path.exists(path + ".nowhere"))

    def test_cannotWrite(self):
        """
        A directory that does not exist: status 1, nothing written.
        """
        status, out, err = self.keygen("--domain", "example.org", "--selector", "s1", "--out", os.path.join(self.mktemp(), "k"))
        self.assertEqual((status, out), (1, ""))
        self.assertIn("cannot write", err)

    def test_usage(self):
        """
        Missing or bad options: status 2, one line naming the option.
        """
        path = self.mktemp()
        for args, text in [
            (("--selector", "s", "--out", path), "--domain is required"),
            (("--domain", "example.org", "--out", path), "--selector is required"),
            (("--domain", "example.org", "--selector", "s"), "--out is required"),
            (("--domain", "example.org", "--selector", "s", "--out", path, "--algorithm", "dsa"), "--algorithm"),
            (("--domain", "example.org", "--selector", "s", "--out", path, "--bits", "512"), "--bits"),
            (("--domain", "example.org", "--selector", "s", "--out", path, "--bits", "many"), "--bits"),
            (("--domain", "example.org", "--selector", "s", "--out", path, "--algorithm", "ed25519", "--bits", "2048"), "--bits"),
        ]:
            status, out, err = self.keygen(*args)
            self.assertEqual((status, out), (2, ""), args)
            self.assertIn(text, err)
            self.assertEqual(len(err.splitlines()), 1)
        status, out, err = self.keygen("--domain", "bad domain", "--selector", "s", "--out", path)
        self.assertEqual(status, 1)
        self.assertIn("not a domain name", err)
        self.assertFalse(os.path.exists(path))


class DocsPageTests(SynchronousTestCase):
    """
    docs/dkim.rst: its commands run as shown.
    """

    if DOCS is None:
        skip = "docs/ not found: set MAILPROTO_SOURCE to the source tree"

    def test_keygen(self):
        """
        The page's C{mailproto dkim-keygen} command prints the record as
        the page shows it; its C{--dkim-key} value is the key's.
        """
        text = (DOCS / "dkim.rst").read_text(encoding="utf-8")
        [command] = re.findall(r"\$ sudo -u mailrelay (mailproto dkim-keygen .*)\n", text)
        [shown] = re.findall(r"\n    (mail\._domainkey\.example\.org\. IN TXT .*)\.\.\.\n", text)
        args = command.split()[1:]
        path = os.path.abspath(self.mktemp())
        args[args.index("--out") + 1] = path
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(runCommand(args, reactor=object(), stdout=out, stderr=err), 0, err.getvalue())
        self.assertTrue(out.getvalue().startswith(shown[: shown.index("p=") + 2]), out.getvalue())
        [spec] = re.findall(r"--dkim-key (example\.org:mail:\S+)\n", text)
        self.assertEqual(spec.split(":")[:2], ["example.org", "mail"])
        self.assertEqual(parseKeySpec(f"example.org:mail:{path}").publicRecord(), "".join(re.findall(r'"([^"]*)"', out.getvalue())))
