# -*- test-case-name: mailproto.test.test_data -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The transparency layer of the DATA command (RFC 5321 section 4.5.2), both
ways, correct across any chunk boundary.

Sending (L{DotStuffer}): every line end becomes CRLF (a bare LF or a bare CR
too), a dot is doubled at the start of every line, the first included, and
the message ends with C{CRLF.CRLF}.

Receiving (L{Unstuffer}): the message ends only at C{CRLF.CRLF} (or at
C{.CRLF} as the very first line) -- never at C{LF.LF}, C{CR.CR} or any other
mix, which is how SMTP smuggling works -- one leading dot is removed from
every line, and bare LF and bare CR are handled by an explicit
L{BareNewlinePolicy}.  Memory stays bounded by the longest allowed line,
whatever the message size.
"""

from __future__ import annotations

import enum


class BareNewlinePolicy(enum.Enum):
    """
    What a receiver does with a bare LF or a bare CR in message data.

    RFC 5321 section 2.3.8 allows only CRLF as a line ending; clients that
    send bytes with bare LF are common (Python's smtplib does, for bytes
    messages), and bare line endings are the raw material of SMTP
    smuggling.  In every policy the end of data is only C{CRLF.CRLF}.

    @cvar NORMALIZE: a bare LF or bare CR ends a line and is stored as
        CRLF.  A line after a bare LF is unstuffed like any other (clients
        that send bare LF, such as smtplib, stuff after it); a dot after a
        bare CR is kept, as no client stuffs after one.  Like Postfix's
        C{smtpd_forbid_bare_newline = normalize}.  The default.
    @cvar REJECT: as NORMALIZE, and the receiver refuses the message
        (C{550 5.5.2}) once it has read to the end.
    @cvar KEEP: the bytes are kept as they came: only CRLF ends a line.
    """

    NORMALIZE = "normalize"
    REJECT = "reject"
    KEEP = "keep"


class DotStuffer:
    """
    Turn message bytes into DATA bytes, one chunk at a time.

    Chunks may split the message anywhere, a CRLF or the first byte of a
    line included; the output is the same as for the whole message at once.

        >>> stuffer = DotStuffer()
        >>> stuffer.feed(b"Subject: x\\n\\n.") + stuffer.feed(b"\\nend") + stuffer.finish()
        b'Subject: x\\r\\n\\r\\n..\\r\\nend\\r\\n.\\r\\n'
    """

    __slots__ = ("_stuff", "_atLineStart", "_afterCR")

    def __init__(self, stuff: bool = True) -> None:
        """
        @param stuff: whether to double leading dots and end with
            C{CRLF.CRLF}; without it, only the line endings are normalised
            (for BDAT, which sends the message as it is).
        """
        self._stuff = stuff
        self._atLineStart = True
        self._afterCR = False

    def feed(self, chunk: bytes) -> bytes:
        """
        @param chunk: the next part of the message.
        @return: the bytes to send for it.
        """
        if not chunk:
            return b""
        if self._afterCR and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the LF of a CRLF whose CR ended the last chunk
        self._afterCR = chunk[-1:] == b"\r"
        if not chunk:
            return b""
        crlf = chunk.count(b"\r\n")
        if crlf == chunk.count(b"\n") == chunk.count(b"\r"):
            # Already CRLF throughout (the common case): only stuff.
            if self._stuff:
                if self._atLineStart and chunk[:1] == b".":
                    chunk = b"." + chunk
                if b"\n." in chunk:
                    chunk = chunk.replace(b"\r\n.", b"\r\n..")
            self._atLineStart = chunk[-1:] == b"\n"
            return chunk
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._stuff:
            if self._atLineStart and chunk[:1] == b".":
                chunk = b"." + chunk
            chunk = chunk.replace(b"\n.", b"\n..")
        self._atLineStart = chunk[-1:] == b"\n"
        return chunk.replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        """
        @return: the bytes that end the message: a CRLF if its last line
            had none, then (when stuffing) C{.CRLF}.
        """
        end = b"" if self._atLineStart else b"\r\n"
        self._atLineStart = True
        return end + b".\r\n" if self._stuff else end


def stuff(message: bytes) -> bytes:
    """
    @param message: a whole message.
    @return: what to send after DATA, the final C{.CRLF} included.
    """
    stuffer = DotStuffer()
    return stuffer.feed(message) + stuffer.finish()


class Unstuffer:
    """
    Turn the bytes received after DATA into the message, one chunk at a
    time, and find its end.

    L{feed} returns message content, always whole lines ending in CRLF
    (unless L{lineTooLong} is set, after which the content no longer
    matters: the message must be refused).  Once L{finished} is set,
    L{trailing} holds what came after the end of data -- pipelined
    commands -- and what is fed later goes there too.

    @ivar finished: whether the end of data has been seen.
    @ivar trailing: the bytes after the end of data.
    @ivar sawBareNewline: whether a bare LF or bare CR was seen.
    @ivar lineTooLong: whether a line was longer than C{maxLineLength}.
    """

    def __init__(
        self,
        policy: BareNewlinePolicy = BareNewlinePolicy.NORMALIZE,
        maxLineLength: int = 998,
        dotted: bool = True,
    ) -> None:
        """
        @param policy: see L{BareNewlinePolicy}.
        @param maxLineLength: the longest line accepted, in octets of
            content (after unstuffing, without the line ending).  RFC 5322
            and RFC 5321 say 998.  Memory use is bounded by it.
        @param dotted: whether the data is dot-stuffed and ends with
            C{CRLF.CRLF} (DATA).  Without it (BDAT, RFC 3030) the data is
            split into lines and checked as it is, and L{close} says where
            it ends.
        """
        self.dotted = dotted
        self.policy = policy
        self.maxLineLength = maxLineLength
        self.finished = False
        self.trailing = b""
        self.sawBareNewline = False
        self.lineTooLong = False
        self._held = b""
        self._atLineStart = True
        self._afterCRLF = True

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next bytes received.
        @return: the message content they complete.  Once L{finished},
            C{data} is added to L{trailing} and nothing is returned.
        """
        if self.finished:
            self.trailing += data
            return b""
        buf = self._held + data if self._held else data
        if self.dotted:
            if self._afterCRLF and buf[:3] == b".\r\n":
                return self._finish(b"", buf[3:])
            end = buf.find(b"\r\n.\r\n")
            if end >= 0:
                return self._finish(buf[: end + 2], buf[end + 5 :])
        # Keep back the last, unfinished line: it may be the start of the
        # end of data, or of a line that begins with a dot.
        if self.policy is BareNewlinePolicy.KEEP:
            last = buf.rfind(b"\r\n")
            cut = last + 2 if last >= 0 else 0
        else:
            cut = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1)) + 1
        content = b""
        if cut:
            region = buf[:cut]
            content = self._process(region)
            # After a bare CR, the next line is not unstuffed (see _process).
            self._atLineStart = region[-1:] == b"\n"
            self._afterCRLF = region[-2:] == b"\r\n"
        held = buf[cut:]
        if len(held) > self.maxLineLength + 2:
            # No line end in sight: the line is too long.  Drop it, but keep
            # a final CR, which may be the start of a CRLF.
            self.lineTooLong = True
            if b"\n" in held or b"\r" in held[:-1]:
                self.sawBareNewline = True
            held = held[-1:] if held[-1:] == b"\r" else b""
            self._atLineStart = self._afterCRLF = False
        self._held = held
        return content

    def close(self) -> bytes:
        """
        End data that has no end marker (BDAT): the last line, if it had no
        line ending, gets one.

        @return: the content not yet returned.
        """
        held = self._held
        if held[-1:] == b"\r":
            held = held[:-1]
            self.sawBareNewline = True
        return self._finish(held + b"\r\n" if held else b"", b"")

    def _finish(self, region: bytes, trailing: bytes) -> bytes:
        content = self._process(region) if region else b""
        self.finished = True
        self.trailing = trailing
        self._held = b""
        return content

    def _process(self, region: bytes) -> bytes:
        """
        Unstuff whole lines, normalising or keeping bare line ends.

        @param region: lines, the last one with its line ending.
        @return: the content.
        """
        # The region ends with a line end, so it has as many lines as line
        # ends; with no bare CR or LF, that is the number of CRs and of
        # LFs.  A long region is split into lines anyway, for their length.
        lf = region.count(b"\n")
        cr = region.count(b"\r")
        long = len(region) > self.maxLineLength + 2
        if long:
            lines = region.splitlines()
            clean = lf == cr == len(lines)
            # Unstuffing and bare line ends only make lines shorter: lines
            # no longer than the limit here are no longer than it after.
            long = max(map(len, lines)) > self.maxLineLength
        else:
            clean = lf == cr == region.count(b"\r\n")
        if clean:
            if self.dotted:
                if self._atLineStart and region[:1] == b".":
                    region = region[1:]
                region = region.replace(b"\r\n.", b"\r\n")
        elif self.policy is BareNewlinePolicy.KEEP:
            self.sawBareNewline = True
            if self.dotted:
                if self._atLineStart and region[:1] == b".":
                    region = region[1:]
                region = region.replace(b"\r\n.", b"\r\n")
        else:
            # A bare LF ends a line like CRLF, and the line after it is
            # unstuffed: clients that send bare LF (smtplib, for bytes)
            # stuff after it.  A bare CR becomes a line end too, but no
            # client stuffs after it, so a dot after it is content.
            self.sawBareNewline = True
            region = region.replace(b"\r\n", b"\n")
            if self.dotted:
                if self._atLineStart and region[:1] == b".":
                    region = region[1:]
                region = region.replace(b"\n.", b"\n")
            region = region.replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if long and not self.lineTooLong:
            if max(map(len, region.split(b"\r\n"))) > self.maxLineLength:
                self.lineTooLong = True
        return region


def unstuff(data: bytes, policy: BareNewlinePolicy = BareNewlinePolicy.NORMALIZE) -> tuple[bytes, bytes]:
    """
    Unstuff a whole DATA payload at once.

    @param data: the bytes received after DATA, the end of data included.
    @param policy: see L{BareNewlinePolicy}.
    @return: the message and the bytes after the end of data.
    @raise ValueError: if C{data} has no end of data.
    """
    unstuffer = Unstuffer(policy, maxLineLength=len(data))
    content = unstuffer.feed(data)
    if not unstuffer.finished:
        raise ValueError("no end of data (CRLF.CRLF)")
    return content, unstuffer.trailing
