# -*- test-case-name: mailproto.test.test_hops -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's policy on a message's header section, applied while the
message streams into the queue: loop detection (too many C{Received:}
headers, or a C{Received:} header of this very relay already there), and,
on the submission listeners, the C{Date:} and C{Message-ID:} headers added
when missing (RFC 6409 sections 8.2 and 8.3) and the C{From:} header
checked against the authenticated user's addresses.  The scanner also
notes a C{TLS-Required: No} field (RFC 8689), which the queue keeps with
the message (L{mailproto._relay}).

L{HeaderScanner} is pure: bytes in, bytes out, no reactor.  It follows the
header section one line at a time, holding at most one line's first
L{LINE_HOLD} octets and a bounded part of the few field values it looks at
(never the whole header section), and passes the body through untouched.

L{IntakePolicy} is what the daemon configures once (C{--max-hops},
C{--max-own-hops}); the queue delivery asks it for one L{HeaderScanner}
per message (see L{mailproto._relay._Transaction}).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from twisted.logger import Logger

from mailproto._errors import SMTPServerError
from mailproto._headers import rfc822date

_log = Logger()

#: Postfix's C{hopcount_limit}: more C{Received:} headers than this and the
#: message is refused (RFC 5321 section 6.3).
DEFAULT_MAX_HOPS = 50

#: How many C{Received:} headers of this relay itself a message may carry,
#: counting the one it adds as it takes the message: 1, it may pass once.
DEFAULT_MAX_OWN_HOPS = 1

#: The most octets of a line held back while it is classified (a field
#: name and its colon must come within them); the rest of a longer line
#: passes through.
LINE_HOLD = 1024

#: The most octets kept of the value of a field that is looked at: enough
#: for the C{by} clause of a C{Received:} header, and for a C{From:} header
#: naming a few mailboxes.  A longer C{From:} header is not believed.
VALUE_HOLD = {b"received": 2048, b"from": 8192, b"tls-required": 64}

# RFC 5322 section 3.6.8: field-name = 1*ftext (printable US-ASCII but the
# colon); obsolete syntax allows white space before the colon.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")

# The "by" clause of a Received: header added by mailproto's server
# (mailproto._server.SMTP._traceHeader): "by HOST (mailproto VERSION)".
_OWN_TRACE = re.compile(rb"(?:^|\s)by\s+([^\s;()]+)\s*\(mailproto\b", re.IGNORECASE)


class HeaderScanner:
    """
    Follows one message's header section as it streams past, in chunks
    cut anywhere, counting and checking fields, and adding the fields
    asked for at the end of the header section.

    States: I{header} (lines are classified: a field, a continuation, the
    empty line that ends the section, or a line that is not a field and
    so starts the body) and I{body} (everything passes through).

    @ivar received: the C{Received:} fields seen so far.
    @ivar ownReceived: those added by this relay (its C{hostname} in a
        C{by} clause followed by C{(mailproto}).
    @ivar seen: the names (lower case) of the fields seen so far.
    @ivar fromValue: the unfolded value of the first C{From:} field, or
        C{None}; C{b""} past L{VALUE_HOLD}.
    @ivar tlsOptional: whether the header section has a C{TLS-Required:}
        field (RFC 8689) and each one says C{No} (in any case, folded or
        not, with white space around it): the sender asks that the
        relay's TLS policies (MTA-STS, DANE) not stop the message.  Any
        other value, and such a field in the body, leave it false.
    @ivar inBody: whether the header section has ended.
    """

    def __init__(
        self,
        hostname: bytes = b"",
        maxHops: int = DEFAULT_MAX_HOPS,
        maxOwnHops: int = DEFAULT_MAX_OWN_HOPS,
        addFields: Callable[[HeaderScanner], bytes] | None = None,
        checkHeader: Callable[[HeaderScanner], None] | None = None,
        refused: Callable[[str, SMTPServerError], None] | None = None,
    ) -> None:
        """
        @param hostname: this relay's name, as its C{Received:} headers
            give it.
        @param maxHops: the most C{Received:} fields allowed (0: no limit).
        @param maxOwnHops: the most C{Received:} fields of this relay
            allowed (0: not checked).
        @param addFields: called once at the end of the header section;
            returns the fields to add there (CRLF-terminated lines).
        @param checkHeader: called once at the end of the header section;
            raises L{SMTPServerError} to refuse the message.
        @param refused: told C{(policy, error)} when a hop limit refuses
            the message (C{"hops"} or C{"loop"}), before the error is
            raised.
        """
        self.hostname = hostname.lower().rstrip(b".")
        self.maxHops = maxHops
        self.maxOwnHops = maxOwnHops
        self._addFields = addFields
        self._checkHeader = checkHeader
        self._refused = refused
        self.received = 0
        self.ownReceived = 0
        self.seen: set[bytes] = set()
        self.fromValue: bytes | None = None
        self.tlsOptional = False
        # Whether a TLS-Required field said something other than "No".
        self._tlsRequired = False
        self.inBody = False
        # The current physical line while it is held (no LF yet).
        self._line = b""
        # Whether the current line, longer than LINE_HOLD, was classified
        # and passes through to its end.
        self._passing = False
        # The field being read: its name and the part of its value kept.
        self._field: bytes | None = None
        self._value: list[bytes] = []
        self._valueSize = 0

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next octets of the message.
        @return: the octets to write in their place.
        @raise SMTPServerError: to refuse the message.
        """
        if self.inBody:
            return data
        out: list[bytes] = []
        start = 0
        while start < len(data) and not self.inBody:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start : end + 1]
            start += len(piece)
            if self._passing:
                self._keep(piece)
                out.append(piece)
                self._passing = end < 0
                continue
            line = self._line + piece
            if end < 0 and len(line) < LINE_HOLD:
                self._line = line
                continue
            self._line = b""
            out.append(self._classify(line))
            self._passing = end < 0
        if self.inBody:
            out.append(data[start:])
        return b"".join(out)

    def close(self) -> bytes:
        """
        The message has ended.

        @return: the octets still to write.
        @raise SMTPServerError: to refuse the message.
        """
        if self.inBody:
            return b""
        line, self._line = self._line, b""
        held = self._classify(line) if line else b""
        if self.inBody:
            return held
        added = self._endHeader()
        if added and held and not held.endswith(b"\n"):
            held += b"\r\n"
        return held + added

    def _classify(self, line: bytes) -> bytes:
        """
        Take one line of the header section (or its first L{LINE_HOLD}
        octets).

        @return: the octets to write for it.
        """
        if line in (b"\r\n", b"\n"):
            return self._endHeader() + line
        if line[:1] in (b" ", b"\t"):
            self._keep(line)
            return line
        match = _FIELD.match(line)
        if match is None:
            # Not a field: the body begins without its empty line.  Keep
            # it a body after any added field.
            added = self._endHeader()
            return added + b"\r\n" + line if added else line
        self._endField()
        name = match.group(1).lower()
        self._startField(name)
        self._keep(line[match.end() :])
        return line

    def _startField(self, name: bytes) -> None:
        self._field = name
        self._value = []
        self._valueSize = 0
        self.seen.add(name)
        if name == b"received":
            self.received += 1
            if self.maxHops and self.received > self.maxHops:
                self._refuse("hops", SMTPServerError(554, b"Too many hops", b"5.4.6"))

    def _keep(self, text: bytes) -> None:
        """
        Keep part of the value of the field being read, up to its limit.
        """
        limit = VALUE_HOLD.get(self._field or b"")
        if limit is None or self._valueSize > limit:
            return
        self._value.append(text)
        self._valueSize += len(text)

    def _endField(self) -> None:
        name, self._field = self._field, None
        if name is None:
            return
        size = self._valueSize
        value = b"".join(self._value)
        self._value, self._valueSize = [], 0
        if name == b"received" and self.hostname and self.maxOwnHops:
            match = _OWN_TRACE.search(value)
            if match is not None and match.group(1).lower().rstrip(b".") == self.hostname:
                self.ownReceived += 1
                if self.ownReceived > self.maxOwnHops:
                    self._refuse(
                        "loop",
                        SMTPServerError(
                            554, b"Mail loop: the message has passed through " + self.hostname + b" already", b"5.4.6"
                        ),
                    )
        elif name == b"from" and self.fromValue is None:
            self.fromValue = b"" if size > VALUE_HOLD[b"from"] else _unfold(value)
        elif name == b"tls-required":
            optional = size <= VALUE_HOLD[name] and _unfold(value).lower() == b"no"
            self._tlsRequired = self._tlsRequired or not optional
            self.tlsOptional = not self._tlsRequired

    def _endHeader(self) -> bytes:
        """
        The header section has ended: check it, and make the fields to add.
        """
        self._endField()
        self.inBody = True
        if self._checkHeader is not None:
            self._checkHeader(self)
        return self._addFields(self) if self._addFields is not None else b""

    def _refuse(self, policy: str, error: SMTPServerError) -> None:
        self.inBody = True
        if self._refused is not None:
            self._refused(policy, error)
        raise error


def _unfold(value: bytes) -> bytes:
    """
    @return: a field's value without its line breaks (RFC 5322 section
        2.2.3), stripped.
    """
    return re.sub(rb"\r?\n(?=[ \t])", b"", value).strip()


class IntakePolicy:
    """
    The relay's loop detection, and what the submission listeners add to a
    message: one L{HeaderScanner} per message.

    @ivar observers: callables told C{(policy)} each time a policy acts:
        C{"hops"} and C{"loop"} (a message refused), C{"date"} and
        C{"message-id"} (a field added), C{"sender-login"} and
        C{"from-header"} (refusals of L{mailproto._relayd._submission}).
    """

    def __init__(
        self, hostname: bytes, maxHops: int = DEFAULT_MAX_HOPS, maxOwnHops: int = DEFAULT_MAX_OWN_HOPS, clock=None
    ) -> None:
        """
        @param hostname: the relay's name, as in its C{Received:} headers.
        @param maxHops: the most C{Received:} fields of a message (0: no
            limit).
        @param maxOwnHops: the most C{Received:} fields of this relay in a
            message, the one it adds included (0: not checked).
        @param clock: the clock for added C{Date:} fields; real time if
            C{None}.
        """
        self.hostname = hostname
        self.maxHops = maxHops
        self.maxOwnHops = maxOwnHops
        self.clock = clock
        self.observers: list[Callable[[str], None]] = []

    def acted(self, policy: str) -> None:
        """
        Tell the observers that C{policy} acted.
        """
        for observer in self.observers:
            observer(policy)

    def scanner(self, envelope, complete: bool = False, checkHeader=None) -> HeaderScanner:
        """
        @param envelope: the envelope of the message (its C{id}, C{client},
            C{sender}, C{user}).
        @param complete: whether to add C{Date:} and C{Message-ID:} when
            missing (on submission).
        @param checkHeader: see L{HeaderScanner}.
        @return: the scanner for one message.
        """

        def refused(policy: str, error: SMTPServerError) -> None:
            self.acted(policy)
            _log.info(
                "Refused a message from <{sender}> from {client}: {reason} ({received} Received: headers, limit {limit})",
                policy=policy,
                sender=envelope.sender.decode("utf-8", "replace"),
                client=envelope.client,
                user=envelope.user,
                reason=error.resp.decode("utf-8", "replace") if isinstance(error.resp, bytes) else str(error.resp),
                received=scanner.received,
                limit=self.maxHops,
            )

        scanner = HeaderScanner(
            self.hostname,
            self.maxHops,
            self.maxOwnHops,
            addFields=(lambda s: self._missingFields(s, envelope)) if complete else None,
            checkHeader=checkHeader,
            refused=refused,
        )
        return scanner

    def _missingFields(self, scanner: HeaderScanner, envelope) -> bytes:
        """
        @return: C{Date:} and C{Message-ID:} fields for a submitted message
            without them (RFC 6409 sections 8.2, 8.3): the time it arrived,
            and C{<QUEUEID@HOSTNAME>}.
        """
        fields = b""
        if b"date" not in scanner.seen:
            now = self.clock.seconds() if self.clock is not None else time.time()
            fields += b"Date: " + rfc822date(time.localtime(now)) + b"\r\n"
            self.acted("date")
        if b"message-id" not in scanner.seen:
            fields += b"Message-ID: <" + envelope.id.encode("ascii") + b"@" + self.hostname + b">\r\n"
            self.acted("message-id")
        return fields
