# -*- test-case-name: mailproto.test.test_replies -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
SMTP replies: the L{Reply} value, its wire format, and L{ReplyParser}, which
assembles replies (multi-line C{250-} continuations included) from the
lines or bytes a server sends.

RFC 5321 section 4.2::

    Greeting   = ( "220 " (Domain / address-literal) [ SP textstring ] CRLF ) /
                 ( "220-" (Domain / address-literal) [ SP textstring ] CRLF
                   *( "220-" [ textstring ] CRLF )
                   "220" [ SP textstring ] CRLF )
    Reply-line = *( Reply-code "-" [ textstring ] CRLF )
                 Reply-code [ SP textstring ] CRLF
    Reply-code = %x32-35 %x30-35 %x30-39
    textstring = 1*(%d09 / %d32-126)

and RFC 2034 / RFC 3463 for the enhanced status code that may begin each
line's text: C{class "." subject "." detail}, the class being the first
digit of the reply code.
"""

from __future__ import annotations

import re

from mailproto._errors import SMTPProtocolError

# Reply-code = %x32-35 %x30-35 %x30-39; the second digit is taken in 0-9,
# as real servers are not always strict about it.
_replyLineRe = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.S)
# status-code = class "." subject "." detail
# class = "2" / "4" / "5";  subject = 1*3digit;  detail = 1*3digit
_statusRe = re.compile(rb"([245])\.([0-9]{1,3})\.([0-9]{1,3})")
# The status at the start of a reply line's text: the one pattern that
# finds enhanced statuses in replies (ReplyParser and statusOf).
_statusPrefixRe = re.compile(rb"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)")


def isStatus(status: bytes, code: int | None = None) -> bool:
    """
    Is C{status} an RFC 3463 enhanced status code (C{b"5.1.1"})?

    @param status: the candidate.
    @param code: a reply code the status must agree with (same class), or
        C{None}.
    @return: whether it is well formed (and agrees with C{code}).
    """
    if _statusRe.fullmatch(status) is None:
        return False
    return code is None or status[:1] == b"%d" % (code // 100)


def statusOf(code: int, resp: bytes) -> bytes | None:
    """
    The enhanced status code a reply's text starts with: the one parser
    of enhanced status codes in reply texts that the client, the relay and
    its reports share.

    @param code: the reply's code.
    @param resp: the reply's text (its lines joined by LF), without the
        code.
    @return: the enhanced status code (RFC 3463) C{resp} starts with, if
        it agrees with C{code}; else C{None}.
    """
    match = _statusPrefixRe.match(resp.split(b"\n", 1)[0])
    if match is None or code <= 0 or match.group(1)[:1] != b"%d" % (code // 100):
        return None
    return match.group(1)


def replyFromWire(code: int, resp: bytes) -> Reply:
    """
    The reply value of a code and text as twisted.mail's client states
    get them (L{Reply.wireText}: lines joined by LF, each with its
    enhanced status), read by the same parser as replies on the wire.
    For code that reports an outcome as C{(code, resp)} rather than a
    L{Reply}; a code no server could send is taken as C{451}.

    @param code: the reply code.
    @param resp: the text.
    @return: the reply.
    """
    if isinstance(resp, str):
        resp = resp.encode("utf-8", "replace")
    if not 200 <= code <= 599:
        return Reply.fromText(451, b"%d %s" % (code, resp or b""))
    lines = (resp or b"").replace(b"\r", b"").split(b"\n")
    parser = ReplyParser(maxLineLength=1 << 20, maxReplyLength=1 << 24)
    try:
        for line in lines[:-1]:
            parser.lineReceived(b"%03d-%s" % (code, line))
        return parser.lineReceived(b"%03d %s" % (code, lines[-1]))
    except ReplySyntaxError:
        return Reply.fromText(code, resp)


class ReplySyntaxError(SMTPProtocolError):
    """
    The server sent something that is not an SMTP reply.  Fatal, as every
    L{SMTPProtocolError}.
    """

    def __init__(self, message: str, line: bytes = b"") -> None:
        """
        @param message: what is wrong.
        @param line: the offending line (shown shortened).
        """
        shown = line[:80].decode("ascii", "backslashreplace")
        super().__init__(-1, f"{message}: {shown!r}" if line else message)


class Reply:
    """
    One SMTP reply: a code, one or more lines of text, and optionally an
    enhanced status code (RFC 2034), which appears on every line on the
    wire and is kept apart from the text here.

    @ivar code: the reply code, 200 to 599.
    @type code: C{int}
    @ivar lines: the lines of text, without the code and status.
    @type lines: C{tuple} of C{bytes}
    @ivar status: the enhanced status code, e.g. C{b"2.1.5"}, or C{None}.
    @type status: C{bytes} or C{None}
    """

    __slots__ = ("code", "lines", "status")

    def __init__(self, code: int, lines=(b"",), status: bytes | None = None) -> None:
        """
        @param code: see L{Reply.code}.
        @param lines: see L{Reply.lines}; none may contain CR or LF.
        @param status: see L{Reply.status}; its class must be the first
            digit of C{code}.
        @raise ValueError: if any of these is malformed.
        """
        lines = tuple(lines) or (b"",)
        if not (200 <= code <= 599):
            raise ValueError(f"reply code out of range: {code!r}")
        for line in lines:
            if b"\r" in line or b"\n" in line:
                raise ValueError(f"reply line with CR or LF: {line!r}")
        if status is not None and not isStatus(status, code):
            raise ValueError(f"enhanced status {status!r} does not fit reply code {code}")
        self.code = code
        self.lines = lines
        self.status = status

    @classmethod
    def fromText(cls, code: int, text: bytes | str, status: bytes | None = None) -> Reply:
        """
        Make a reply from text in which C{\\n} (or C{\\r\\n}) separates lines,
        as twisted.mail's C{sendCode} takes it.

        @param code: the reply code.
        @param text: the text; C{str} is encoded as UTF-8.
        @param status: the enhanced status code, or C{None}.
        @return: the reply.
        """
        if isinstance(text, str):
            text = text.encode("utf-8")
        lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return cls(code, lines, status)

    @property
    def text(self) -> bytes:
        """
        The lines of text joined with C{\\n}, without the status.
        """
        return b"\n".join(self.lines)

    @property
    def wireText(self) -> bytes:
        """
        The lines of text joined with C{\\n}, each with the status in
        front as on the wire: the C{resp} twisted.mail's client reports.
        """
        if self.status is None:
            return self.text
        return b"\n".join(self.status + b" " + line if line else self.status for line in self.lines)

    def summary(self, limit: int = 1000) -> str:
        """
        The reply on one line, for logs and people: code, status and
        text, runs of white space (line breaks too) made one space.

        @param limit: the most characters returned.
        @return: e.g. C{"550 5.1.1 No such user"}.
        """
        words = [b"%03d" % self.code]
        if self.status is not None:
            words.append(self.status)
        words.extend(self.lines)
        text = b" ".join(words).decode("utf-8", "backslashreplace")
        return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]

    def __str__(self) -> str:
        return self.summary()

    def format(self) -> bytes:
        """
        @return: the reply as sent on the wire, every line ending in CRLF.
        """
        code = b"%03d" % self.code
        prefix = b"" if self.status is None else self.status + b" "
        out = []
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            text = prefix + line if line else self.status or b""
            if text:
                out.append(code + (b" " if i == last else b"-") + text + b"\r\n")
            else:
                out.append(code + (b"" if i == last else b"-") + b"\r\n")
        return b"".join(out)

    __bytes__ = format

    @property
    def isPositive(self) -> bool:
        """Whether this is a 2xx reply."""
        return 200 <= self.code < 300

    @property
    def isIntermediate(self) -> bool:
        """Whether this is a 3xx reply."""
        return 300 <= self.code < 400

    @property
    def isTransient(self) -> bool:
        """Whether this is a 4xx reply: try again later."""
        return 400 <= self.code < 500

    @property
    def isPermanent(self) -> bool:
        """Whether this is a 5xx reply: do not try again."""
        return 500 <= self.code < 600

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.code, self.lines, self.status) == (other.code, other.lines, other.status)

    def __hash__(self) -> int:
        return hash((self.code, self.lines, self.status))

    def __repr__(self) -> str:
        return f"Reply({self.code!r}, {self.lines!r}, {self.status!r})"


class ReplyParser:
    """
    Assemble replies from what a server sends.

    Feed it lines (L{lineReceived}, for a line-based protocol) or bytes
    (L{feed}); it returns each reply once its last line is in.  Malformed
    input raises L{ReplySyntaxError}: a line that does not begin with a
    reply code, a continuation whose code differs from the first line's,
    a line longer than C{maxLineLength} or a reply longer than
    C{maxReplyLength} octets.

    @ivar enhanced: whether to take a leading C{x.y.z} in each line as an
        enhanced status code.
    """

    def __init__(self, enhanced: bool = True, maxLineLength: int = 8192, maxReplyLength: int = 65536) -> None:
        """
        @param enhanced: see L{ReplyParser.enhanced}.
        @param maxLineLength: the longest line accepted, CRLF excluded.
            RFC 5321 allows 512 octets; real servers sometimes send more.
        @param maxReplyLength: the most octets of text one reply may have.
        """
        self.enhanced = enhanced
        self.maxLineLength = maxLineLength
        self.maxReplyLength = maxReplyLength
        self._code: int | None = None
        self._lines: list[bytes] = []
        self._status: bytes | None = None
        self._length = 0
        self._buffer = b""

    @property
    def pending(self) -> bool:
        """
        Whether a multi-line reply has begun and not ended.
        """
        return self._code is not None

    def lineReceived(self, line: bytes) -> Reply | None:
        """
        Take one line.

        @param line: a line without its line ending.
        @return: the reply this line completes, or C{None} if more lines
            are to come.
        @raise ReplySyntaxError: if the line is malformed.
        """
        if len(line) > self.maxLineLength:
            raise ReplySyntaxError("Reply line too long", line)
        match = _replyLineRe.fullmatch(line)
        if match is None:
            raise ReplySyntaxError("Malformed reply line", line)
        code = int(match.group(1))
        if self._code is not None and code != self._code:
            raise ReplySyntaxError(f"Reply code changed from {self._code} within a reply", line)
        text = match.group(3) or b""
        if b"\r" in text or b"\n" in text:
            raise ReplySyntaxError("Bare CR or LF in reply line", line)
        self._length += len(text) + 1
        if self._length > self.maxReplyLength:
            raise ReplySyntaxError("Reply too long", line)
        if self.enhanced:
            status = _statusPrefixRe.match(text)
            if status is not None and status.group(1)[:1] == match.group(1)[:1]:
                if self._status is None and not self._lines:
                    self._status = status.group(1)
                if status.group(1) == self._status:
                    text = text[status.end() :]
        self._code = code
        self._lines.append(text)
        if match.group(2) == b"-":
            return None
        reply = Reply(code, self._lines, self._status)
        self._code, self._lines, self._status, self._length = None, [], None, 0
        return reply

    def feed(self, data: bytes) -> list[Reply]:
        """
        Take bytes as they arrive.  Lines end in CRLF; a bare LF is taken
        as a line end too.

        @param data: the next bytes from the server.
        @return: the replies completed by C{data}, in order.
        @raise ReplySyntaxError: if a line is malformed.
        """
        buffer = self._buffer + data
        *lines, self._buffer = buffer.split(b"\n")
        if len(self._buffer) > self.maxLineLength + 1:
            raise ReplySyntaxError("Reply line too long", self._buffer)
        replies = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            reply = self.lineReceived(line)
            if reply is not None:
                replies.append(reply)
        return replies
