# -*- test-case-name: mailproto.test.test_fuzz -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Random bytes never crash a parser of the wire layer: each one returns a
value or raises the error it documents -- for the server side, an
L{SMTPServerError} that is a reply the server can send (a 4xx or 5xx code
and, if any, an enhanced status code of the same class).  Any other
exception is a bug.
"""

from __future__ import annotations

import re

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailproto._address import Address, quoteaddr
from mailproto._commands import (
    noArgument,
    parseAuth,
    parseBdat,
    parseHelo,
    parseMailFrom,
    parseRcptTo,
    splitCommand,
)
from mailproto._data import BareNewlinePolicy, Unstuffer
from mailproto._errors import SMTPServerError
from mailproto._extensions import Extensions
from mailproto._replies import ReplyParser, ReplySyntaxError
from mailproto._xtext import XtextError, decodeXtext, xtext_decode
from mailproto.test.test_properties import chunk

_statusRe = re.compile(rb"([45])\.[0-9]{1,3}\.[0-9]{1,3}")

# Chunk sizes, mostly tiny.
sizes = st.lists(st.one_of(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=100)), max_size=40)


paramWords = st.one_of(
    st.binary(max_size=20),
    st.tuples(
        st.sampled_from(
            [b"SIZE", b"size", b"BODY", b"SMTPUTF8", b"RET", b"ENVID", b"AUTH", b"REQUIRETLS",
             b"NOTIFY", b"ORCPT", b"X-FOO", b"-X", b"\xc3\xa9"]
        ),
        st.one_of(
            st.none(),
            st.binary(max_size=20),
            st.sampled_from(
                [b"", b"=", b"123", b"99999999999999999999999", b"8bitmime", b"FULL", b"<>", b"a+2Bb", b"+zz",
                 b"+", b"NEVER", b"never,delay", b"SUCCESS,SUCCESS", b"rfc822;a+40b.example", b"rfc822;",
                 b";x", b"utf-8;\xc3\xa9@b", b"utf-8;\xff", b"\xc3\xa9", b"\xff"]
            ),
        ),
    ).map(lambda kv: kv[0] if kv[1] is None else kv[0] + b"=" + kv[1]),
)
params = st.lists(paramWords, max_size=5).map(lambda words: b"".join(b" " + word for word in words))
paths = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [b"", b">", b"<>", b"a@b.example>", b"\xc3\xa9@b.example>", b'"a b"@[192.0.2.1]>', b"@r.example:a@b>",
         b"a@[IPv6:::1]>", b"a@[300.1.1.1]>", b"Postmaster>", b'"\\">', b"a@b..c>", b"\xff@b>"]
    ),
)


def glued(prefixes: list[bytes]):
    """
    A command argument: one of C{prefixes}, a path or random bytes, and
    ESMTP parameters.
    """
    return st.tuples(st.sampled_from(prefixes), paths, params).map(b"".join)


mailArguments = st.one_of(st.binary(), glued([b"FROM:<", b"FROM:", b"from: <", b"FROM:\t<", b"FROM:<<", b"FROM"]))
rcptArguments = st.one_of(st.binary(), glued([b"TO:<", b"TO:", b"to: <", b"TO:\t<", b"TO:<<", b"TO"]))
knowns = st.sampled_from([None, {b"SIZE"}])
policies = st.sampled_from(list(BareNewlinePolicy))
replyPieces = st.lists(
    st.one_of(
        st.binary(max_size=10),
        st.sampled_from([b"250", b"250-", b"250 ", b"550", b"2.0.0 ", b"5.1.1", b"\r\n", b"\n", b"\r", b"-", b" "]),
    ),
    max_size=30,
).map(b"".join)
# One reply line: a code (or not quite), a separator, and text of random
# bytes and awkward pieces.
replyLines = st.tuples(
    st.sampled_from([b"250", b"550", b"354", b"421", b"199", b"25", b"2500", b""]),
    st.sampled_from([b"", b" ", b"-", b"\t", b"x"]),
    st.lists(
        st.one_of(
            st.binary(max_size=5),
            st.sampled_from([b"\n", b"\r", b"\r\n", b"x", b" ", b"2.0.0", b"5.1.1 ", b"\x00", b"\xff"]),
        ),
        max_size=8,
    ).map(b"".join),
).map(b"".join)


class FuzzTests(SynchronousTestCase):
    """
    Random input to every parser.
    """

    def assertReplyError(self, error: SMTPServerError) -> None:
        """
        C{error} is a reply a server can send.
        """
        self.assertIs(type(error.code), int, error.code)
        self.assertTrue(400 <= error.code <= 599, error.code)
        if error.status is not None:
            self.assertIsInstance(error.status, bytes)
            match = _statusRe.fullmatch(error.status)
            self.assertIsNotNone(match, error.status)
            self.assertEqual(match.group(1), b"%d" % (error.code // 100), (error.code, error.status))

    def call(self, function, *args, **kwargs) -> None:
        """
        Call C{function}: it may return anything or raise a proper L{SMTPServerError}.
        """
        try:
            function(*args, **kwargs)
        except SMTPServerError as e:
            self.assertReplyError(e)

    @given(st.binary())
    def test_splitCommand(self, data: bytes) -> None:
        """
        splitCommand returns or raises a reply error.
        """
        self.call(splitCommand, data)

    @given(st.binary())
    def test_parseHelo(self, data: bytes) -> None:
        """
        parseHelo returns or raises a reply error.
        """
        self.call(parseHelo, data)

    @given(mailArguments, knowns)
    def test_parseMailFrom(self, data: bytes, known) -> None:
        """
        parseMailFrom returns or raises a reply error.
        """
        self.call(parseMailFrom, data, known=known)

    @given(rcptArguments, knowns, st.booleans())
    def test_parseRcptTo(self, data: bytes, known, utf8: bool) -> None:
        """
        parseRcptTo returns or raises a reply error.
        """
        self.call(parseRcptTo, data, known=known, utf8=utf8)

    @given(
        st.one_of(
            st.binary(),
            st.tuples(st.binary(max_size=8), st.sampled_from([b"", b" LAST", b" last", b" X"])).map(b"".join),
        )
    )
    def test_parseBdat(self, data: bytes) -> None:
        """
        parseBdat returns or raises a reply error.
        """
        self.call(parseBdat, data)

    @given(st.binary())
    def test_parseAuth(self, data: bytes) -> None:
        """
        parseAuth returns or raises a reply error.
        """
        self.call(parseAuth, data)

    @given(st.binary())
    def test_noArgument(self, data: bytes) -> None:
        """
        noArgument returns or raises a reply error.
        """
        self.call(noArgument, data, "DATA")

    @given(st.one_of(st.binary(), paths, paths.map(lambda p: b"<" + p)))
    def test_address(self, data: bytes) -> None:
        """
        Address() returns or raises a reply error (AddressError).
        """
        self.call(Address, data, b"default.example")
        self.call(Address, data)

    @given(st.one_of(st.binary(), st.tuples(st.binary(max_size=10), paths.map(lambda p: b" <" + p)).map(b"".join)))
    def test_quoteaddr(self, data: bytes) -> None:
        """
        quoteaddr() returns or raises a reply error (AddressError).
        """
        self.call(quoteaddr, data)

    @given(st.one_of(st.binary(), st.lists(st.sampled_from([b"+", b"2B", b"zz", b"a", b"=", b"+F"])).map(b"".join)))
    def test_decodeXtext(self, data: bytes) -> None:
        """
        decodeXtext returns or raises XtextError.
        """
        try:
            decodeXtext(data)
        except XtextError:
            pass

    @given(st.one_of(st.binary(), st.lists(st.sampled_from([b"+", b"C3", b"A9", b"FF", b"a", b"="])).map(b"".join)))
    def test_xtextDecode(self, data: bytes) -> None:
        """
        The xtext codec's decoder returns or raises UnicodeDecodeError.
        """
        try:
            xtext_decode(data)
        except UnicodeDecodeError:
            pass

    @given(st.one_of(st.binary(), replyPieces, st.lists(replyLines).map(b"\r\n".join)), sizes, st.booleans())
    def test_replyParserFeed(self, data: bytes, chunkSizes: list[int], enhanced: bool) -> None:
        """
        ReplyParser.feed returns replies or raises ReplySyntaxError.
        """
        parser = ReplyParser(enhanced=enhanced, maxLineLength=50, maxReplyLength=200)
        try:
            for part in chunk(data, chunkSizes):
                parser.feed(part)
        except ReplySyntaxError:
            pass

    @given(st.lists(st.one_of(st.binary(), replyLines), max_size=5), st.booleans())
    def test_replyParserLineReceived(self, lines: list[bytes], enhanced: bool) -> None:
        """
        ReplyParser.lineReceived returns a reply or None, or raises ReplySyntaxError.
        """
        parser = ReplyParser(enhanced=enhanced)
        try:
            for line in lines:
                parser.lineReceived(line)
        except ReplySyntaxError:
            pass

    @given(
        st.lists(
            st.one_of(
                st.binary(),
                st.tuples(st.sampled_from([b"AUTH=", b"AUTH ", b"SIZE ", b"auth="]), st.binary()).map(b"".join),
            )
        )
    )
    def test_extensionsFromLines(self, lines: list[bytes]) -> None:
        """
        Extensions.fromLines never raises.
        """
        Extensions.fromLines(lines)

    @given(st.one_of(st.binary(), replyPieces), policies, sizes, st.sampled_from([998, 5]))
    def test_unstuffer(self, data: bytes, policy: BareNewlinePolicy, chunkSizes: list[int], maxLineLength: int) -> None:
        """
        Unstuffer.feed never raises, in any policy.
        """
        unstuffer = Unstuffer(policy, maxLineLength=maxLineLength)
        for part in chunk(data, chunkSizes):
            unstuffer.feed(part)
