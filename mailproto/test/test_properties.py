# -*- test-case-name: mailproto.test.test_properties -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Round-trip properties of the wire layer, checked with Hypothesis: what one
side formats, the other side parses back to the same value, whatever the
value and however the bytes are cut into chunks on the way.

Where a property needs an expected value, it comes from a small reference
function written here, independently of the code under test.
"""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailproto import _grammar
from mailproto._address import Address
from mailproto._commands import (
    MAIL_PARAMETERS,
    RCPT_PARAMETERS,
    MailFrom,
    RcptTo,
    formatMailFrom,
    formatRcptTo,
    parseMailFrom,
    parseRcptTo,
)
from mailproto._data import BareNewlinePolicy, DotStuffer, Unstuffer, stuff
from mailproto._errors import SMTPServerError
from mailproto._extensions import Extensions
from mailproto._replies import Reply, ReplyParser
from mailproto._xtext import decodeXtext, encodeXtext

# ---------------------------------------------------------------------------
# Reference functions, independent of the library.


def chunk(data: bytes, sizes: list[int]) -> list[bytes]:
    """
    Cut C{data} into chunks of the given sizes (a size of 0 gives an empty
    chunk), and a last chunk with whatever is left.
    """
    chunks, start = [], 0
    for size in sizes:
        chunks.append(data[start : start + size])
        start += size
    chunks.append(data[start:])
    return chunks


def normalizeLineEnds(message: bytes) -> bytes:
    """
    Every line end (CRLF, bare LF, bare CR) as CRLF, and a final CRLF if the
    message does not end with a line end; the empty message stays empty.
    """
    if not message:
        return b""
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def referenceStuff(message: bytes) -> bytes:
    """
    RFC 5321 section 4.5.2, sending side, for a whole message.
    """
    lines = normalizeLineEnds(message).split(b"\r\n")[:-1]
    return b"".join((b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines) + b".\r\n"


def endOfData(data: bytes) -> int | None:
    """
    Where the DATA payload C{data} ends: just past the first C{CRLF.CRLF},
    or past C{.CRLF} if that is the first line; L{None} if it does not end.
    """
    if data.startswith(b".\r\n"):
        return 3
    index = data.find(b"\r\n.\r\n")
    return None if index < 0 else index + 5


def contentLines(data: bytes, policy: BareNewlinePolicy) -> tuple[list[bytes], bytes]:
    """
    The lines of content of a DATA payload, unstuffed, before its end of
    data: those with a line end, and the unfinished last one.  A CR at the
    very end of an unfinished payload may be the start of a CRLF, so it is
    left out.
    """
    end = endOfData(data)
    body = data if end is None else data[: end - 3]
    if end is None and body.endswith(b"\r"):
        body = body[:-1]
    if policy is BareNewlinePolicy.KEEP:
        parts = body.split(b"\r\n")
    else:
        parts = re.split(rb"\r\n|\r|\n", body)
    parts = [part[1:] if part[:1] == b"." else part for part in parts]
    return parts[:-1], parts[-1]


_statusLikeRe = re.compile(rb"[0-9]\.[0-9]+\.[0-9]+")

# ---------------------------------------------------------------------------
# Strategies.

policies = st.sampled_from(list(BareNewlinePolicy))
# Chunk sizes: mostly tiny, so that CRLFs and dots fall on chunk boundaries.
cuts = st.lists(st.one_of(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=100)), max_size=80)
lineEndPieces = st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"x"]), max_size=40).map(b"".join)
messages = st.one_of(st.binary(max_size=200), lineEndPieces)
# Wire input for the receiving side: random bytes, or pieces that make
# ends of data, dotted lines and bare line ends likely.
dataPieces = st.lists(
    st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"x", b"\r\n.\r\n", b".\r\n", b"\x00"]),
    max_size=40,
).map(b"".join)
wireData = st.one_of(st.binary(max_size=200), dataPieces)

printable = st.characters(min_codepoint=32, max_codepoint=126)
ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=10)
dotStrings = st.lists(atoms, min_size=1, max_size=4).map(".".join).map(str.encode)
quotedValues = st.text(alphabet=printable, min_size=1, max_size=30).map(str.encode)
rawLocals = st.one_of(dotStrings, quotedValues)

LET_DIG = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@st.composite
def labels(draw, letters=st.sampled_from(LET_DIG), maxSize: int = 63) -> str:
    """
    A sub-domain: letters and digits, hyphens inside, 1 to C{maxSize}
    characters.
    """
    first = draw(letters)
    if maxSize == 1 or draw(st.booleans()):
        return first
    middle = draw(st.text(alphabet=st.one_of(letters, st.just("-")), max_size=maxSize - 2))
    return first + middle + draw(letters)


hostnames = st.lists(labels(), min_size=1, max_size=4).map(".".join).map(str.encode)
ipv4Literals = st.integers(min_value=0, max_value=2**32 - 1).map(
    lambda n: b"[%s]" % str(ipaddress.IPv4Address(n)).encode()
)
ipv6Literals = st.tuples(st.integers(min_value=0, max_value=2**128 - 1), st.booleans()).map(
    lambda t: b"[IPv6:%s]"
    % (ipaddress.IPv6Address(t[0]).exploded if t[1] else str(ipaddress.IPv6Address(t[0]))).encode()
)
domains = st.one_of(hostnames, ipv4Literals, ipv6Literals)

nonASCIILetters = st.characters(categories=("Ll", "Lu", "Lo"), min_codepoint=0x80)
utf8Letters = st.one_of(nonASCIILetters, st.sampled_from(LET_DIG))
# Local parts with at least one non-ASCII letter, as a Dot-string or (with
# spaces and quotes) as a Quoted-string.
utf8Locals = st.tuples(
    st.text(alphabet=st.one_of(utf8Letters, printable), max_size=10),
    st.text(alphabet=nonASCIILetters, min_size=1, max_size=5),
    st.text(alphabet=utf8Letters, max_size=10),
).map(lambda t: "".join(t).encode("utf-8"))
# Domains with at least one U-label.
utf8Domains = st.tuples(
    st.lists(labels(), max_size=2),
    labels(utf8Letters, maxSize=10).filter(lambda label: not label.isascii()),
    st.lists(labels(utf8Letters, maxSize=10), max_size=2),
).map(lambda t: ".".join([*t[0], t[1], *t[2]]).encode("utf-8"))

asciiAddresses = st.builds(Address.fromParts, rawLocals, domains)
utf8Addresses = st.one_of(
    st.builds(Address.fromParts, utf8Locals, st.one_of(domains, utf8Domains)),
    st.builds(Address.fromParts, rawLocals, utf8Domains),
)
# A path has at most 256 octets, brackets included.
pathAddresses = st.one_of(asciiAddresses, utf8Addresses).filter(lambda a: len(bytes(a)) <= 254)

xtextable = st.binary(min_size=1, max_size=30)
extraKeywords = st.from_regex(rb"[A-Z0-9][A-Z0-9-]{0,10}", fullmatch=True).filter(
    lambda k: k not in MAIL_PARAMETERS and k not in RCPT_PARAMETERS
)
extraValues = st.lists(st.sampled_from([*range(33, 61), *range(62, 127)]), min_size=1, max_size=10).map(bytes)


@st.composite
def mailFroms(draw) -> MailFrom:
    """
    A MAIL FROM command with every parameter mailproto knows.
    """
    address = draw(st.one_of(st.just(Address(b"<>")), pathAddresses))
    return MailFrom(
        address,
        size=draw(st.none() | st.integers(min_value=0, max_value=10**20 - 1)),
        body=draw(st.sampled_from([None, b"7BIT", b"8BITMIME", b"BINARYMIME"])),
        smtputf8=address.needsSMTPUTF8 or draw(st.booleans()),
        ret=draw(st.sampled_from([None, b"FULL", b"HDRS"])),
        envid=draw(st.none() | xtextable),
        auth=draw(st.none() | st.just(b"<>") | xtextable),
        requiretls=draw(st.booleans()),
    )


notifies = st.one_of(
    st.none(),
    st.just((b"NEVER",)),
    st.tuples(st.permutations([b"SUCCESS", b"FAILURE", b"DELAY"]), st.integers(min_value=1, max_value=3)).map(
        lambda t: tuple(t[0][: t[1]])
    ),
)
orcpts = st.none() | st.tuples(st.sampled_from([b"rfc822", b"RFC822"]), st.binary(max_size=100))
rcptTos = st.builds(RcptTo, pathAddresses, notify=notifies, orcpt=orcpts)


@st.composite
def extras(draw) -> tuple[tuple[bytes, bytes | None], ...]:
    """
    Parameters beyond mailproto's own: distinct upper-case keywords, each
    with a value or alone.
    """
    keywords = draw(st.lists(extraKeywords, unique=True, max_size=4))
    return tuple((keyword, draw(st.none() | extraValues)) for keyword in keywords)


replyTexts = (
    st.text(alphabet=printable, max_size=40).map(str.encode).filter(lambda t: _statusLikeRe.match(t) is None)
)


@st.composite
def replies(draw) -> Reply:
    """
    A reply: any code, one to five lines, and a status that fits the code,
    or none.
    """
    code = draw(st.integers(min_value=200, max_value=599))
    lines = draw(st.lists(replyTexts, min_size=1, max_size=5))
    status = None
    if code // 100 in (2, 4, 5) and draw(st.booleans()):
        subject, detail = draw(st.integers(0, 999)), draw(st.integers(0, 999))
        status = b"%d.%d.%d" % (code // 100, subject, detail)
    return Reply(code, lines, status)


ehloKeywords = st.from_regex(rb"[A-Za-z0-9][A-Za-z0-9-]{0,15}", fullmatch=True)
ehloParams = st.lists(st.integers(min_value=33, max_value=126), min_size=1, max_size=10).map(bytes)

# ---------------------------------------------------------------------------


class DotStufferTests(SynchronousTestCase):
    """
    L{DotStuffer} and L{stuff}.
    """

    @given(messages)
    def test_matchesReference(self, message: bytes) -> None:
        """
        L{stuff} normalises line ends, doubles leading dots and ends with CRLF.CRLF.
        """
        self.assertEqual(stuff(message), referenceStuff(message))

    @given(messages, cuts)
    def test_chunkingInvariant(self, message: bytes, points: list[int]) -> None:
        """
        Feeding a message in any chunks gives the same bytes as L{stuff}.
        """
        stuffer = DotStuffer()
        out = b"".join(stuffer.feed(part) for part in chunk(message, points)) + stuffer.finish()
        self.assertEqual(out, stuff(message))
        stuffer = DotStuffer()
        out = b"".join(stuffer.feed(message[i : i + 1]) for i in range(len(message))) + stuffer.finish()
        self.assertEqual(out, stuff(message))

    @given(messages)
    def test_shape(self, message: bytes) -> None:
        """
        Stuffed output ends at its only CRLF.CRLF, doubles leading dots and has no bare CR or LF.
        """
        stuffed = stuff(message)
        if normalizeLineEnds(message):
            self.assertEqual(stuffed.find(b"\r\n.\r\n"), len(stuffed) - 5)
        else:
            self.assertEqual(stuffed, b".\r\n")
        self.assertNotIn(b"\r", stuffed.replace(b"\r\n", b""))
        self.assertNotIn(b"\n", stuffed.replace(b"\r\n", b""))
        lines = stuffed.split(b"\r\n")
        self.assertEqual(lines[-2:], [b".", b""])
        for line in lines[:-2]:
            if line.startswith(b"."):
                self.assertTrue(line.startswith(b".."), line)


class UnstufferTests(SynchronousTestCase):
    """
    L{Unstuffer}.
    """

    def feedAll(self, data: bytes, chunks: list[bytes], policy: BareNewlinePolicy, maxLineLength: int = 10**6):
        """
        Feed C{chunks} (which make up C{data}) to a new L{Unstuffer}.

        @return: the unstuffer and the content it gave.
        """
        self.assertEqual(b"".join(chunks), data)
        unstuffer = Unstuffer(policy, maxLineLength=maxLineLength)
        content = b"".join(unstuffer.feed(part) for part in chunks)
        return unstuffer, content

    def outcome(self, unstuffer: Unstuffer, content: bytes) -> tuple:
        return (content, unstuffer.finished, unstuffer.trailing, unstuffer.sawBareNewline, unstuffer.lineTooLong)

    @given(messages, policies, cuts, st.booleans())
    def test_unstuffsStuffed(self, message: bytes, policy: BareNewlinePolicy, points: list[int], quit: bool) -> None:
        """
        Stuffed bytes in any chunks unstuff to the normalised message, ending exactly at the end.
        """
        stuffed = stuff(message)
        data = stuffed + (b"QUIT\r\n" if quit else b"")
        unstuffer = Unstuffer(policy, maxLineLength=10**6)
        fed, content = 0, b""
        for part in chunk(data, points):
            content += unstuffer.feed(part)
            fed += len(part)
            self.assertEqual(unstuffer.finished, fed >= len(stuffed))
        self.assertTrue(unstuffer.finished)
        self.assertEqual(unstuffer.trailing, b"QUIT\r\n" if quit else b"")
        self.assertEqual(content, normalizeLineEnds(message))
        self.assertFalse(unstuffer.sawBareNewline)
        self.assertFalse(unstuffer.lineTooLong)

    @given(wireData, policies, cuts)
    def test_chunkingInvariant(self, data: bytes, policy: BareNewlinePolicy, points: list[int]) -> None:
        """
        Content, end, trailing bytes and flags do not depend on how the input is chunked.
        """
        whole = self.outcome(*self.feedAll(data, [data], policy))
        chunked = self.outcome(*self.feedAll(data, chunk(data, points), policy))
        self.assertEqual(chunked, whole)

    @given(wireData, policies, cuts)
    def test_endOfData(self, data: bytes, policy: BareNewlinePolicy, points: list[int]) -> None:
        """
        It finishes exactly at the first CRLF.CRLF (or a first line of .CRLF); trailing is the rest.
        """
        unstuffer, _ = self.feedAll(data, chunk(data, points), policy)
        end = endOfData(data)
        self.assertEqual(unstuffer.finished, end is not None)
        if end is not None:
            self.assertEqual(data[:end] + unstuffer.trailing, data)
        else:
            self.assertEqual(unstuffer.trailing, b"")

    @given(wireData, policies, cuts)
    def test_endOfDataShortLines(self, data: bytes, policy: BareNewlinePolicy, points: list[int]) -> None:
        """
        With a small maxLineLength it still never finishes without an end of data, trailing being a suffix.
        """
        unstuffer, _ = self.feedAll(data, chunk(data, points), policy, maxLineLength=20)
        if unstuffer.finished:
            end = endOfData(data)
            self.assertIsNotNone(end)
            self.assertTrue(data.endswith(unstuffer.trailing))
            consumed = data[: len(data) - len(unstuffer.trailing)]
            self.assertTrue(consumed == b".\r\n" or consumed.endswith(b"\r\n.\r\n"), consumed)
        else:
            self.assertEqual(unstuffer.trailing, b"")

    @given(wireData, policies, cuts)
    def test_lineTooLong(self, data: bytes, policy: BareNewlinePolicy, points: list[int]) -> None:
        """
        lineTooLong is set if a whole line exceeds maxLineLength, and not if no line does.
        """
        unstuffer, _ = self.feedAll(data, chunk(data, points), policy, maxLineLength=20)
        complete, partial = contentLines(data, policy)
        if any(len(line) > 20 for line in complete):
            self.assertTrue(unstuffer.lineTooLong)
        elif len(partial) <= 20:
            self.assertFalse(unstuffer.lineTooLong)

    @given(policies, cuts, st.sampled_from([b"\r\n", b"\n", b"\r"]))
    def test_longLine(self, policy: BareNewlinePolicy, points: list[int], lineEnd: bytes) -> None:
        """
        A line five octets over the limit, then normal data, sets lineTooLong.
        """
        data = b"x" * 25 + b"\r\nnormal" + lineEnd + b"more\r\n.\r\nQUIT\r\n"
        unstuffer, _ = self.feedAll(data, chunk(data, points), policy, maxLineLength=20)
        self.assertTrue(unstuffer.lineTooLong)
        self.assertTrue(unstuffer.finished)
        self.assertEqual(unstuffer.trailing, b"QUIT\r\n")


class AddressTests(SynchronousTestCase):
    """
    L{Address} built from parts and parsed back.
    """

    def assertRoundTrip(self, raw: bytes, domain: bytes) -> Address:
        address = Address.fromParts(raw, domain)
        self.assertEqual(address.local, _grammar.quoteLocalPart(raw))
        self.assertEqual(address.domain, domain)
        again = Address(bytes(address))
        self.assertEqual(again, address)
        self.assertEqual((again.local, again.domain), (address.local, domain))
        self.assertEqual(Address(b"<" + bytes(address) + b">"), address)
        self.assertEqual(again.dequote(again.local), raw)
        self.assertEqual(_grammar.unquoteLocalPart(again.local), raw)
        return again

    @given(rawLocals, domains)
    def test_roundTrip(self, raw: bytes, domain: bytes) -> None:
        """
        An ASCII address parses back to itself, and dequote gives the local part's value.
        """
        self.assertFalse(self.assertRoundTrip(raw, domain).needsSMTPUTF8)

    @given(st.one_of(st.tuples(utf8Locals, st.one_of(domains, utf8Domains)), st.tuples(rawLocals, utf8Domains)))
    def test_utf8RoundTrip(self, parts: tuple[bytes, bytes]) -> None:
        """
        A UTF-8 address parses back to itself and needs SMTPUTF8.
        """
        self.assertTrue(self.assertRoundTrip(*parts).needsSMTPUTF8)


class CommandTests(SynchronousTestCase):
    """
    MAIL and RCPT commands formatted and parsed back.
    """

    @given(mailFroms())
    def test_mailFrom(self, command: MailFrom) -> None:
        """
        parseMailFrom undoes formatMailFrom.
        """
        line = formatMailFrom(command)
        self.assertTrue(line.startswith(b"MAIL FROM:<"))
        self.assertEqual(parseMailFrom(line[len(b"MAIL ") :]), command)

    @given(rcptTos)
    def test_rcptTo(self, command: RcptTo) -> None:
        """
        parseRcptTo undoes formatRcptTo.
        """
        line = formatRcptTo(command)
        self.assertTrue(line.startswith(b"RCPT TO:<"))
        utf8 = command.address.needsSMTPUTF8
        self.assertEqual(parseRcptTo(line[len(b"RCPT ") :], utf8=utf8), command)

    @given(mailFroms(), extras())
    def test_mailFromExtra(self, command: MailFrom, extra: tuple) -> None:
        """
        Parameters beyond mailproto's own round-trip when the server knows them.
        """
        command = MailFrom(**{**command.__dict__, "extra": extra})
        known = {*MAIL_PARAMETERS, *(keyword for keyword, _ in extra)}
        line = formatMailFrom(command)
        self.assertEqual(parseMailFrom(line[len(b"MAIL ") :], known=known), command)

    @given(rcptTos, extras())
    def test_rcptToExtra(self, command: RcptTo, extra: tuple) -> None:
        """
        RCPT parameters beyond mailproto's own round-trip when the server knows them.
        """
        command = RcptTo(command.address, command.notify, command.orcpt, extra)
        known = {*RCPT_PARAMETERS, *(keyword for keyword, _ in extra)}
        line = formatRcptTo(command)
        utf8 = command.address.needsSMTPUTF8
        self.assertEqual(parseRcptTo(line[len(b"RCPT ") :], known=known, utf8=utf8), command)

    def test_emptyValues(self) -> None:
        """
        An empty ENVID, AUTH or ORCPT is refused when formatted or round-trips, never sent broken.
        """
        address = Address(b"a@b.example")
        for command, format, parse in [
            (MailFrom(address, envid=b""), formatMailFrom, parseMailFrom),
            (MailFrom(address, auth=b""), formatMailFrom, parseMailFrom),
            (RcptTo(address, orcpt=(b"rfc822", b"")), formatRcptTo, parseRcptTo),
        ]:
            try:
                line = format(command)
            except ValueError:
                continue
            try:
                parsed = parse(line.split(b" ", 1)[1])
            except SMTPServerError as e:
                self.fail(f"{line!r} was formatted but is refused: {e}")
            self.assertEqual(parsed, command)


class ReplyTests(SynchronousTestCase):
    """
    L{Reply.format} and L{ReplyParser}.
    """

    @given(replies())
    def test_roundTrip(self, reply: Reply) -> None:
        """
        ReplyParser reads back a formatted reply.
        """
        self.assertEqual(ReplyParser().feed(reply.format()), [reply])

    @given(st.lists(replies(), min_size=1, max_size=4), cuts)
    def test_chunked(self, sent: list[Reply], points: list[int]) -> None:
        """
        Several replies in any chunks, or a byte at a time, parse back in order.
        """
        wire = b"".join(reply.format() for reply in sent)
        parser = ReplyParser()
        self.assertEqual([r for part in chunk(wire, points) for r in parser.feed(part)], sent)
        self.assertFalse(parser.pending)
        parser = ReplyParser()
        self.assertEqual([r for i in range(len(wire)) for r in parser.feed(wire[i : i + 1])], sent)


class XtextTests(SynchronousTestCase):
    """
    The xtext encoding.
    """

    @given(st.binary())
    def test_roundTrip(self, data: bytes) -> None:
        """
        decodeXtext undoes encodeXtext, whose output is well-formed xtext.
        """
        encoded = encodeXtext(data)
        self.assertEqual(decodeXtext(encoded), data)
        self.assertTrue(all(33 <= c <= 126 for c in encoded), encoded)
        self.assertNotIn(b"=", encoded)
        self.assertIsNone(re.search(rb"\+(?![0-9A-F]{2})", encoded), encoded)

    @given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
    def test_codec(self, text: str) -> None:
        """
        The xtext codec round-trips any text.
        """
        self.assertEqual(text.encode("xtext").decode("xtext"), text)


class ExtensionsTests(SynchronousTestCase):
    """
    L{Extensions} written as EHLO lines and read back.
    """

    @given(st.lists(st.tuples(ehloKeywords, st.lists(ehloParams, max_size=4)), max_size=8))
    def test_roundTrip(self, pairs: list) -> None:
        """
        fromLines reads back what lines() writes.
        """
        extensions = Extensions(pairs)
        self.assertEqual(dict(Extensions.fromLines(extensions.lines())), dict(extensions))
