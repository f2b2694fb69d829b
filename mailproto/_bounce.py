# -*- test-case-name: mailproto.test.test_bounce -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Delivery status notifications (DSNs, RFC 3464): the reports a relay sends
back to the sender of a message when delivery fails, is delayed or, when
asked for, succeeds; with the DSN parameters of RFC 3461 (C{NOTIFY},
C{ORCPT}, C{RET}, C{ENVID}) and the C{utf-8} address type of RFC 6533.

L{makeReport} turns a L{DeliveryReport}, one L{RecipientReport} per
recipient, into a C{multipart/report; report-type=delivery-status} message
of two or three parts:

  1. C{text/plain}: what happened, per recipient, for people;
  2. C{message/delivery-status}: the same, for programs;
  3. the returned message, if there is one: C{message/rfc822} with all of
     it, or C{text/rfc822-headers} with its header section only.

The policy it follows:

  - a report never goes to the null sender C{<>}: a bounce is not
    bounced;
  - a recipient whose C{NOTIFY} does not ask for its event is left out of
    the report (L{shouldNotify}), and with no recipient left there is no
    report;
  - the whole message is returned only in a report of a failure, and only
    when the sender did not ask for headers (C{RET=HDRS}) and it fits in
    C{returnLimit} octets (RFC 3461 section 4.3: C{RET=FULL} asks for the
    message in C{failed} reports); otherwise its header section is;
  - no more than C{returnLimit} (+1) octets of the original are read;
  - the report is ASCII but for the returned message, whose octets are
    returned as they are (with C{Content-Transfer-Encoding: 8bit} where
    they are not ASCII), line ends made CRLF.

L{generateBounce} has the signature and return value of
C{twisted.mail.bounce.generateBounce}, and makes its bounce with
L{makeReport}.
"""

from __future__ import annotations

import quopri
import re
import secrets
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from email.header import Header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import format_datetime, parseaddr
from typing import NamedTuple

from mailproto import _grammar
from mailproto._address import Address, User
from mailproto._headers import localHostname, messageid, rfc822date
from mailproto._replies import Reply, ReplyParser, ReplySyntaxError, isStatus
from mailproto._xtext import encodeXtext

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
"""The values of the C{Action} field (RFC 3464 section 2.3.3), in the
order reports list them."""

DEFAULT_RETURN_LIMIT = 100 * 1024
"""How large a message L{makeReport} returns in full, by default."""

# Which NOTIFY keyword (RFC 3461 section 4.1) asks for which action.
_CONDITIONS = {
    "failed": "FAILURE",
    "delayed": "DELAY",
    "delivered": "SUCCESS",
    "relayed": "SUCCESS",
    "expanded": "SUCCESS",
}
_NOTIFY_KEYWORDS = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})

# The status class each action may have.
_STATUS_CLASSES = {
    "failed": "45",
    "delayed": "45",
    "delivered": "2",
    "relayed": "2",
    "expanded": "2",
}

_FROM_NAME = "Mail Delivery System"
_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}
_INTRODUCTIONS = {
    "failed": (
        "Your message could not be delivered to the recipients below. This is a permanent error: "
        "no further attempt will be made to deliver it to them."
    ),
    "delayed": (
        "Your message has not been delivered yet to the recipients below. Delivery will be tried "
        "again; you do not need to send the message again."
    ),
    "delivered": "Your message was delivered to the recipients below.",
    "relayed": (
        "Your message was passed on to the recipients below through systems that may not send "
        "any further report."
    ),
    "expanded": (
        "Your message was delivered to the recipients below, which are lists or aliases: it was "
        "sent on to their members."
    ),
}

# RFC 5322 atom, as RFC 3464 takes it for address-type and diagnostic-type.
_atomRe = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
# A host name or address literal, for Reporting-MTA and Remote-MTA.
_hostRe = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?|\[[A-Za-z0-9.:-]+\]")
# RFC 2046 bchars, less space.
_boundaryRe = re.compile(r"[0-9A-Za-z'()+_,./:=?-]{1,70}")
_messageIdRe = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")
_lineEndRe = re.compile(rb"\r\n|\r|\n")
_whitespaceRe = re.compile(r"\s+")
# The characters of RFC 6533 utf-8-addr-xtext that stand for themselves
# (QCHAR), and the escapes it has for the others.
_utf8XtextRe = re.compile(r"\\x\{[0-9A-Fa-f]{2,6}\}|[^\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")
# A line of an SMTP reply in a transcript.


def _text(value, encoding: str = "utf-8") -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode(encoding, "replace")
    return str(value)


def _action(action) -> str:
    name = _text(action, "ascii").strip().lower()
    if name not in _CONDITIONS:
        raise ValueError(f"unknown DSN action {action!r}; expected one of {', '.join(ACTIONS)}")
    return name


def _notifyKeywords(notify) -> frozenset[str]:
    if isinstance(notify, (bytes, bytearray, str)):
        items = _text(notify, "ascii").split(",")
    else:
        items = [_text(item, "ascii") for item in notify]
    keywords = frozenset(item.strip().upper() for item in items if item.strip())
    unknown = keywords - _NOTIFY_KEYWORDS
    if unknown:
        raise ValueError(f"unknown NOTIFY keyword(s): {', '.join(sorted(unknown))}")
    return keywords


def shouldNotify(notify, action, delayByDefault: bool = True) -> bool:
    """
    Does a recipient's C{NOTIFY} parameter (RFC 3461 section 4.1) ask for
    a report of C{action}?

    @param notify: the parameter: C{None} if the client gave none, else its
        keywords, as C{RcptTo.notify} has them (C{(b"FAILURE", b"DELAY")})
        or as text (C{"SUCCESS,FAILURE"}), in any case.  C{NEVER} wins over
        any other keyword.
    @param action: one of L{ACTIONS}, as C{str} or C{bytes}.
    @param delayByDefault: without C{NOTIFY}, RFC 3461 leaves it to the MTA
        whether delays are reported; failures always are, successes never.
    @return: whether to report C{action} to the sender.
    @raise ValueError: if C{notify} has an unknown keyword or C{action} is
        not an action.
    """
    action = _action(action)
    if notify is None:
        return action == "failed" or (action == "delayed" and delayByDefault)
    keywords = _notifyKeywords(notify)
    if "NEVER" in keywords:
        return False
    return _CONDITIONS[action] in keywords


def _status(status, action: str) -> str:
    text = _text(status, "ascii").strip()
    if not isStatus(text.encode("ascii", "replace")):
        raise ValueError(f"malformed enhanced status code {status!r}")
    if text[0] not in _STATUS_CLASSES[action]:
        raise ValueError(f"status {text} does not fit action {action!r}")
    return text


def _host(value, what: str) -> str:
    """
    Check a host name for a C{dns} MTA field.

    @return: the name, in ASCII (IDNA A-labels for an internationalised
        name).
    """
    text = _text(value).strip()
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{what}: {value!r} is not a host name") from None
    if _hostRe.fullmatch(text) is None:
        raise ValueError(f"{what}: {value!r} is not a host name")
    return text


class UnparsedAddress:
    """
    A recipient address, as queued, that does not parse as an address:
    reported on (in C{Final-Recipient}, xtext-encoded if need be) as
    given, since it is what the sender wrote.

    @ivar raw: its octets.
    """

    isNull = False

    def __init__(self, raw: bytes) -> None:
        self.raw = bytes(raw)

    def __bytes__(self) -> bytes:
        return self.raw

    def __str__(self) -> str:
        return _oneLine(self.raw.decode("utf-8", "replace"))

    def __repr__(self) -> str:
        return f"UnparsedAddress({self.raw!r})"


def _address(value, what: str, allowNull: bool = False) -> Address:
    if isinstance(value, UnparsedAddress):
        return value
    if isinstance(value, User):
        value = value.dest
    address = Address(value)
    if address.isNull and not allowNull:
        raise ValueError(f"{what} cannot be the null address")
    return address


def _originalRecipient(value) -> tuple[str, bytes]:
    """
    Normalise an original recipient to C{(address type, address)}.

    @param value: C{(address type, address)} as C{RcptTo.orcpt} has it
        (the address decoded from xtext), C{"type;address"}, or a plain
        address (type C{rfc822}).
    """
    if isinstance(value, tuple):
        addrType, original = value
        addrType = _text(addrType, "ascii")
        original = original.encode("utf-8") if isinstance(original, str) else bytes(original)
    else:
        if isinstance(value, User):
            value = value.dest
        raw = bytes(value) if isinstance(value, Address) else value
        raw = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        typed = re.fullmatch(rb"([A-Za-z0-9-]+);(.*)", raw, re.S)
        if typed is not None:
            addrType, original = typed.group(1).decode("ascii"), typed.group(2)
        else:
            addrType, original = "rfc822", raw
            if original[:1] == b"<" and original[-1:] == b">":
                original = original[1:-1]
    if _atomRe.fullmatch(addrType) is None:
        raise ValueError(f"bad address type {addrType!r}")
    return addrType, original


def _date(value, what: str) -> str:
    """
    Format a date-time for a header or DSN field (RFC 5322 section 3.3).

    @param value: an aware C{datetime}; a naive one, taken as local time;
        a POSIX timestamp; or a date already formatted, as C{bytes} or
        C{str}.
    """
    if isinstance(value, (bytes, str)):
        text = _text(value, "ascii").strip()
        if not text or re.fullmatch(r"[ -~]+", text) is None:
            raise ValueError(f"{what}: bad date {value!r}")
        return text
    if isinstance(value, datetime):
        return format_datetime(value if value.tzinfo is not None else value.astimezone())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_datetime(datetime.fromtimestamp(value, timezone.utc).astimezone())
    raise TypeError(f"{what}: expected a datetime, a timestamp or a formatted date, not {value!r}")


def _diagnostic(value) -> tuple[str, str] | None:
    """
    Normalise a diagnostic to C{(diagnostic type, text)}.

    @param value: C{None}; a L{Reply}; C{(type, text)}; or the text of an
        SMTP reply (type C{smtp}), its lines joined.
    """
    if value is None:
        return None
    if isinstance(value, Reply):
        words = [b"%03d" % value.code]
        if value.status is not None:
            words.append(value.status)
        words.extend(line for line in value.lines if line)
        return "smtp", _oneLine(b" ".join(words).decode("utf-8", "replace"))
    if isinstance(value, tuple):
        kind, text = value
        kind = _text(kind, "ascii")
        if _atomRe.fullmatch(kind) is None:
            raise ValueError(f"bad diagnostic type {kind!r}")
        return kind, _oneLine(_text(text))
    if isinstance(value, (bytes, bytearray, str)):
        return "smtp", _oneLine(_text(value))
    raise TypeError(f"diagnostic: expected a Reply, text or (type, text), not {value!r}")


def _oneLine(text: str) -> str:
    """
    Make text one line: control characters become spaces, runs of white
    space one space.
    """
    text = "".join(c if c.isprintable() else " " for c in text)
    return _whitespaceRe.sub(" ", text).strip()


def _ascii(text: str) -> str:
    """
    Make one-line text ASCII, escaping what is not.
    """
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _utf8AddressXtext(text: str) -> str:
    """
    Encode an address as RFC 6533 C{utf-8-addr-xtext}: ASCII, with
    C{\\x{HEX}} for non-ASCII characters and for C{\\}, C{+}, C{=}, space
    and controls.  Escapes already there are kept.
    """

    def escape(match: re.Match[str]) -> str:
        found = match.group()
        return found if len(found) > 1 else "\\x{%02X}" % ord(found)

    return _utf8XtextRe.sub(escape, text)


def _typedAddress(addrType: str, raw: bytes) -> str:
    """
    Format C{address-type ";" generic-address} for the Final-Recipient
    and Original-Recipient fields, in ASCII.
    """
    if addrType.lower() == "utf-8" or (addrType.lower() == "rfc822" and not raw.isascii() and _grammar.isUTF8(raw)):
        return "utf-8;" + _utf8AddressXtext(raw.decode("utf-8", "replace"))
    if re.fullmatch(rb"[ -~]*", raw) is not None:
        return addrType + ";" + raw.decode("ascii")
    return addrType + ";" + encodeXtext(raw).decode("ascii")


def _finalRecipient(address: Address) -> str:
    raw = bytes(address)
    return _typedAddress("rfc822" if raw.isascii() else "utf-8", raw)


def _envelopeId(envid: bytes) -> str:
    if re.fullmatch(rb"[!-~]+", envid) is not None:
        return envid.decode("ascii")
    return encodeXtext(envid).decode("ascii")


@dataclass(frozen=True)
class RecipientReport:
    """
    What became of a message for one recipient: the per-recipient fields
    of RFC 3464 section 2.3.  Values are checked and normalised on
    creation.

    @ivar address: the final recipient (C{Final-Recipient}), as an
        L{Address}; C{bytes}, C{str} or a L{User} are converted.  An
        L{UnparsedAddress} is kept as it is.
    @ivar action: one of L{ACTIONS}, lower case.
    @ivar status: the RFC 3463 status code, e.g. C{"5.1.1"}, as C{str}; its
        class fits the action: 2 for a success, 4 or 5 for C{failed} and
        C{delayed}.
    @ivar diagnostic: what the remote MTA said: a L{Reply}, the text of an
        SMTP reply (C{bytes} or C{str}), C{(diagnostic type, text)} for
        anything else, or C{None}.
    @ivar remoteMTA: the host name of the MTA that gave the diagnostic, as
        ASCII C{str}, or C{None}.
    @ivar originalRecipient: the recipient the sender gave (C{ORCPT}):
        C{(address type, address)} with the address decoded from xtext as
        C{RcptTo.orcpt} has it; a plain address given is of type
        C{rfc822}.  C{None} if unknown.
    @ivar lastAttempt: when delivery was last tried (a C{datetime}, a POSIX
        timestamp or a formatted date), or C{None}.
    @ivar willRetryUntil: for C{delayed}, until when delivery will be
        tried, or C{None}.
    @ivar notify: the recipient's C{NOTIFY} parameter, as L{shouldNotify}
        takes it; C{None} if not given.
    """

    address: Address
    action: str
    status: str
    diagnostic: object = None
    remoteMTA: str | None = None
    originalRecipient: tuple[str, bytes] | None = None
    lastAttempt: object = None
    willRetryUntil: object = None
    notify: object = None

    def __post_init__(self) -> None:
        setField = object.__setattr__
        setField(self, "address", _address(self.address, "the recipient"))
        action = _action(self.action)
        setField(self, "action", action)
        setField(self, "status", _status(self.status, action))
        _diagnostic(self.diagnostic)
        if self.remoteMTA is not None:
            setField(self, "remoteMTA", _host(self.remoteMTA, "remoteMTA"))
        if self.originalRecipient is not None:
            setField(self, "originalRecipient", _originalRecipient(self.originalRecipient))
        if self.lastAttempt is not None:
            _date(self.lastAttempt, "lastAttempt")
        if self.willRetryUntil is not None:
            if action != "delayed":
                raise ValueError("willRetryUntil is for delayed deliveries only")
            _date(self.willRetryUntil, "willRetryUntil")
        if self.notify is not None:
            _notifyKeywords(self.notify)


@dataclass(frozen=True)
class DeliveryReport:
    """
    What a report is about: the message, its sender and the recipients to
    report on; the per-message fields of RFC 3464 section 2.2.  Values are
    checked and normalised on creation.

    @ivar reportingMTA: the host name of the MTA making the report
        (C{Reporting-MTA}, and the domain of the report's C{From:}), as
        ASCII C{str}.
    @ivar sender: the envelope sender of the message, as an L{Address}:
        where the report goes.  The null address gives no report.
    @ivar recipients: the L{RecipientReport}s, as a C{tuple}.
    @ivar envid: the C{ENVID} parameter of C{MAIL} (RFC 3461), decoded from
        xtext, as C{bytes}; or C{None}.
    @ivar ret: the C{RET} parameter: C{"FULL"}, C{"HDRS"} or C{None}.
    @ivar arrivalDate: when the message arrived (as for
        L{RecipientReport.lastAttempt}), or C{None}.
    @ivar message: the message: C{bytes}, C{str}, or a file open for
        reading (binary or text) at its start; or C{None} to return
        nothing.  At most the return limit (+1) is read from a file, when
        the report is made, once.
    """

    reportingMTA: str
    sender: Address
    recipients: tuple[RecipientReport, ...]
    envid: bytes | None = None
    ret: str | None = None
    arrivalDate: object = None
    message: object = None

    def __post_init__(self) -> None:
        setField = object.__setattr__
        setField(self, "reportingMTA", _host(self.reportingMTA, "reportingMTA"))
        setField(self, "sender", _address(self.sender, "the sender", allowNull=True))
        recipients = tuple(self.recipients)
        for recipient in recipients:
            if not isinstance(recipient, RecipientReport):
                raise TypeError(f"expected RecipientReport, not {recipient!r}")
        setField(self, "recipients", recipients)
        if self.envid is not None:
            setField(self, "envid", self.envid.encode("utf-8") if isinstance(self.envid, str) else bytes(self.envid))
        if self.ret is not None:
            ret = _text(self.ret, "ascii").strip().upper()
            if ret not in ("FULL", "HDRS"):
                raise ValueError(f"RET must be FULL or HDRS, not {self.ret!r}")
            setField(self, "ret", ret)
        if self.arrivalDate is not None:
            _date(self.arrivalDate, "arrivalDate")


class ReportMessage(NamedTuple):
    """
    A report ready to send: the envelope and the message.

    @ivar sender: the envelope sender, always C{b""} (the null reverse-path
        C{<>}, so that the report is never bounced in turn).
    @ivar recipients: the envelope recipients: the original sender, as
        C{bytes} (UTF-8 for an internationalised address).
    @ivar message: the message, CRLF line ends throughout.
    """

    sender: bytes
    recipients: list[bytes]
    message: bytes


def _readOriginal(message, limit: int | None, encoding: str = "utf-8") -> tuple[bytes, bool]:
    """
    Read the message to return, no more than C{limit} + 1 octets.

    @return: the octets read, at most C{limit} of them, with CRLF line
        ends; and whether that is the whole message.
    """
    want = None if limit is None else limit + 1
    if isinstance(message, (bytes, bytearray, memoryview)):
        raw = bytes(message if want is None else message[:want])
    elif isinstance(message, str):
        raw = message.encode(encoding, "surrogateescape")
    else:
        chunks, total = [], 0
        while want is None or total < want:
            chunk = message.read() if want is None else message.read(want - total)
            if not chunk:
                break
            if isinstance(chunk, str):
                chunk = chunk.encode(encoding, "surrogateescape")
            chunks.append(chunk)
            total += len(chunk)
        raw = b"".join(chunks)
    complete = limit is None or len(raw) <= limit
    if not complete:
        raw = raw[:limit]
    return _lineEndRe.sub(b"\r\n", raw), complete


def _headerSection(data: bytes, complete: bool) -> bytes:
    """
    Cut the header section (RFC 5322 section 2.1) from a message: up to
    the first empty line, or of a message cut short, its complete lines.
    """
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2]
    if complete:
        return data
    return data[: data.rfind(b"\r\n") + 2]


def _originalMessageId(headers: bytes) -> str | None:
    """
    The original's C{Message-ID}, to thread the report with it, if it has
    a well-formed one.
    """
    value = BytesHeaderParser(policy=compat32).parsebytes(headers).get("Message-ID")
    if value is None:
        return None
    text = _whitespaceRe.sub("", str(value))
    if len(text) > 900 or _messageIdRe.fullmatch(text) is None:
        return None
    return text


def _fold(name: str, value: str) -> bytes:
    """
    Format a header field, folded at spaces to keep lines short.
    """
    lines, current, empty = [], name + ":", True
    for word in value.split(" "):
        while word:
            # A run too long for a line (998 octets at most) is cut.
            piece, word = word[:900], word[900:]
            if not empty and len(current) + 1 + len(piece) > 78:
                lines.append(current)
                current = ""
            current += " " + piece
            empty = False
    lines.append(current)
    return "\r\n".join(lines).encode("ascii") + b"\r\n"


def _toHeader(address: Address) -> str:
    """
    The report's C{To:} value for the sender, in ASCII: the address; with
    its domain in A-labels if only the domain is internationalised; or, for
    a non-ASCII local part, which has no ASCII form, an empty group named
    by the encoded address as RFC 6857 section 3.1.10 downgrades it.
    """
    local, domain = address.local, address.domain
    if local.isascii():
        if domain.isascii():
            return bytes(address).decode("ascii")
        try:
            return local.decode("ascii") + "@" + domain.decode("utf-8").encode("idna").decode("ascii")
        except UnicodeError:
            pass
    display = Header(str(address), "utf-8", header_name="To").encode(linesep="\r\n")
    return display + " :;"


def _wrap(text: str, indent: str = "", subsequent: str | None = None) -> list[str]:
    return textwrap.wrap(
        text,
        width=72,
        initial_indent=indent,
        subsequent_indent=indent if subsequent is None else subsequent,
        break_on_hyphens=False,
    ) or [indent.rstrip()]


def _humanText(
    host: str, recipients: list[RecipientReport], returned: str | None, transcript: str | None
) -> str:
    """
    The first part of the report: what happened, in English.
    """
    lines = [f"This is the mail system at host {host}.", ""]
    for action in ACTIONS:
        group = [r for r in recipients if r.action == action]
        if not group:
            continue
        lines += _wrap(_INTRODUCTIONS[action])
        lines.append("")
        for recipient in group:
            entry = f"<{recipient.address}>"
            if recipient.originalRecipient is not None:
                addrType, original = recipient.originalRecipient
                shown = _oneLine(original.decode("utf-8", "replace"))
                if shown.strip("<>") != str(recipient.address):
                    entry += f" (originally {shown})"
            lines += _wrap(entry, "  ", "    ")
            lines += _wrap(f"Status: {recipient.status}", "    ")
            diagnostic = _diagnostic(recipient.diagnostic)
            if diagnostic is not None and (recipient.remoteMTA is not None or diagnostic[0] == "smtp"):
                teller = recipient.remoteMTA or "The remote server"
                lines += _wrap(f"{teller} said: {diagnostic[1]}", "    ", "      ")
            elif diagnostic is not None:
                lines += _wrap(f"Reason: {diagnostic[1]}", "    ", "      ")
            if recipient.lastAttempt is not None:
                lines += _wrap(f"Last attempt: {_date(recipient.lastAttempt, 'lastAttempt')}", "    ")
            if recipient.willRetryUntil is not None:
                lines += _wrap(
                    f"Delivery will be tried until: {_date(recipient.willRetryUntil, 'willRetryUntil')}", "    "
                )
            lines.append("")
    if transcript:
        lines += ["Transcript:", ""]
        for line in transcript.splitlines():
            line = "".join(c if c.isprintable() else " " for c in line).rstrip()
            lines += _wrap(line, "  ", "    ") if line else [""]
        lines.append("")
    if returned:
        lines += _wrap(returned)
        lines.append("")
    return "\n".join(lines)


def _textPart(text: str) -> tuple[list[bytes], bytes]:
    if text.isascii():
        headers = [b"Content-Type: text/plain; charset=us-ascii\r\n"]
        body = text.encode("ascii")
    else:
        headers = [
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
        ]
        body = quopri.encodestring(text.encode("utf-8"))
    headers.append(b"Content-Description: Notification\r\n")
    return headers, _lineEndRe.sub(b"\r\n", body)


def _statusPart(report: DeliveryReport, recipients: list[RecipientReport]) -> tuple[list[bytes], bytes]:
    """
    The second part of the report: RFC 3464's delivery-status-content,
    fields in the order of its grammar.
    """
    fields = []
    if report.envid is not None:
        fields.append(_fold("Original-Envelope-Id", _envelopeId(report.envid)))
    fields.append(_fold("Reporting-MTA", f"dns; {report.reportingMTA}"))
    if report.arrivalDate is not None:
        fields.append(_fold("Arrival-Date", _date(report.arrivalDate, "arrivalDate")))
    for recipient in recipients:
        fields.append(b"\r\n")
        if recipient.originalRecipient is not None:
            fields.append(_fold("Original-Recipient", _typedAddress(*recipient.originalRecipient)))
        fields.append(_fold("Final-Recipient", _finalRecipient(recipient.address)))
        fields.append(_fold("Action", recipient.action))
        fields.append(_fold("Status", recipient.status))
        if recipient.remoteMTA is not None:
            fields.append(_fold("Remote-MTA", f"dns; {recipient.remoteMTA}"))
        diagnostic = _diagnostic(recipient.diagnostic)
        if diagnostic is not None:
            fields.append(_fold("Diagnostic-Code", f"{diagnostic[0]}; {_ascii(diagnostic[1])}"))
        if recipient.lastAttempt is not None:
            fields.append(_fold("Last-Attempt-Date", _date(recipient.lastAttempt, "lastAttempt")))
        if recipient.willRetryUntil is not None:
            fields.append(_fold("Will-Retry-Until", _date(recipient.willRetryUntil, "willRetryUntil")))
    headers = [b"Content-Type: message/delivery-status\r\n", b"Content-Description: Delivery report\r\n"]
    return headers, b"".join(fields)


def _newBoundary() -> str:
    return "=_mailproto_dsn_" + secrets.token_hex(12)


def _chooseBoundary(boundary: str | bytes | None, bodies: list[bytes]) -> str:
    if boundary is not None:
        boundary = _text(boundary, "ascii")
        if _boundaryRe.fullmatch(boundary) is None:
            raise ValueError(f"bad MIME boundary {boundary!r}")
        if any(boundary.encode("ascii") in body for body in bodies):
            raise ValueError(f"MIME boundary {boundary!r} occurs in the report")
        return boundary
    while True:
        boundary = _newBoundary()
        if not any(boundary.encode("ascii") in body for body in bodies):
            return boundary


def _messageId(value) -> str:
    text = _text(value, "ascii").strip()
    if not text.startswith("<"):
        text = "<" + text + ">"
    if _messageIdRe.fullmatch(text) is None:
        raise ValueError(f"bad Message-ID {value!r}")
    return text


def _build(
    report: DeliveryReport,
    recipients: list[RecipientReport],
    date,
    messageID,
    boundary,
    returnLimit: int | None,
    transcript: str | None = None,
    encoding: str = "utf-8",
) -> bytes:
    """
    Write the report for C{recipients}, the ones of C{report} to report on.
    """
    failed = any(r.action == "failed" for r in recipients)
    parts: list[tuple[list[bytes], bytes]] = []
    returned = None
    original = None
    references = None
    if report.message is not None:
        data, complete = _readOriginal(report.message, returnLimit, encoding)
        headerSection = _headerSection(data, complete)
        references = _originalMessageId(headerSection)
        full = failed and report.ret != "HDRS"
        if full and complete:
            original = ([b"Content-Type: message/rfc822\r\n", b"Content-Description: Returned message\r\n"], data)
            returned = "The message is attached."
        else:
            original = (
                [b"Content-Type: text/rfc822-headers\r\n", b"Content-Description: Returned message headers\r\n"],
                headerSection,
            )
            if full:
                returned = (
                    f"The message is larger than {returnLimit} octets: only its headers are attached."
                )
            else:
                returned = "The headers of the message are attached."
        if not original[1].isascii():
            original[0].append(b"Content-Transfer-Encoding: 8bit\r\n")
    parts.append(_textPart(_humanText(report.reportingMTA, recipients, returned, transcript)))
    parts.append(_statusPart(report, recipients))
    if original is not None:
        parts.append(original)
    parts = [(headers, body if not body or body.endswith(b"\r\n") else body + b"\r\n") for headers, body in parts]
    boundary = _chooseBoundary(boundary, [b"".join(headers) + body for headers, body in parts])

    if failed:
        subject = _SUBJECTS["failed"]
    elif any(r.action == "delayed" for r in recipients):
        subject = _SUBJECTS["delayed"]
    else:
        subject = _SUBJECTS["success"]
    out = [
        _fold("From", f"{_FROM_NAME} <MAILER-DAEMON@{report.reportingMTA}>"),
        b"To: " + _toHeader(report.sender).encode("ascii") + b"\r\n",
        _fold("Subject", subject),
        _fold("Date", rfc822date().decode("ascii") if date is None else _date(date, "date")),
        _fold("Message-ID", _messageId(messageid("dsn") if messageID is None else messageID)),
    ]
    if references is not None:
        out.append(_fold("References", references))
    out += [
        b"Auto-Submitted: auto-replied\r\n",
        b"MIME-Version: 1.0\r\n",
        b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        b'\tboundary="' + boundary.encode("ascii") + b'"\r\n',
    ]
    if not all(body.isascii() for headers, body in parts):
        out.append(b"Content-Transfer-Encoding: 8bit\r\n")
    out.append(b"\r\nThis is a MIME-encapsulated message.\r\n")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    for headers, body in parts:
        out += [delimiter, b"\r\n", *headers, b"\r\n", body]
    out += [delimiter, b"--\r\n"]
    return b"".join(out)


def makeReport(
    report: DeliveryReport,
    *,
    date=None,
    messageID=None,
    boundary=None,
    returnLimit: int | None = DEFAULT_RETURN_LIMIT,
    delayByDefault: bool = True,
) -> ReportMessage | None:
    """
    Make the delivery status notification for C{report}.

    @param report: what to report.
    @param date: the report's C{Date:} (as for L{RecipientReport.lastAttempt});
        now if C{None}.
    @param messageID: the report's C{Message-ID:}; a new one if C{None}.
    @param boundary: the MIME boundary; a random one that occurs nowhere in
        the report if C{None}.
    @param returnLimit: the largest message returned in full, in octets;
        C{None} for no limit.  Of a larger message only the header section
        is returned, and no more than this (+1) is read.
    @param delayByDefault: whether delays are reported to recipients that
        gave no C{NOTIFY}; see L{shouldNotify}.
    @return: the report with its envelope, or C{None} if there is none to
        send: the sender is the null address, or no recipient asked for a
        report of what happened to it.
    @raise ValueError: if C{boundary}, C{date} or C{messageID} is malformed,
        or C{boundary} occurs in the report.
    """
    if report.sender.isNull:
        return None
    recipients = [r for r in report.recipients if shouldNotify(r.notify, r.action, delayByDefault)]
    if not recipients:
        return None
    data = _build(report, recipients, date, messageID, boundary, returnLimit)
    return ReportMessage(b"", [bytes(report.sender)], data)


def _replyIn(transcript: str) -> Reply | None:
    """
    Find the first failure reply (4xx or 5xx) in a transcript, read by the
    wire's reply parser; lines that are not reply lines are skipped.

    @return: the reply, or C{None} if the transcript has none.
    """
    parser = ReplyParser()
    for line in transcript.splitlines():
        try:
            reply = parser.lineReceived(line.strip().encode("utf-8", "replace"))
        except ReplySyntaxError:
            parser = ReplyParser()
            continue
        if reply is not None and reply.code >= 400:
            return reply
    return None


def generateBounce(message, failedFrom, failedTo, transcript="", encoding="utf-8"):
    """
    Make a bounce for a message that could not be delivered, as
    C{twisted.mail.bounce.generateBounce} does, but as a complete RFC 3464
    report: see L{makeReport}.  The reporting MTA is this host; the status
    is the enhanced status code of the first 4xx or 5xx reply in the
    transcript, else C{X.0.0} of its class, else C{5.0.0}; that reply is
    the diagnostic.  The whole message is returned if it is no larger than
    L{DEFAULT_RETURN_LIMIT}, else its headers.

    @param message: the message: a file (binary or text), read from where
        it is; or C{bytes} or C{str}.
    @param failedFrom: the sender of the message, C{bytes} or C{str}.
    @param failedTo: the recipient that failed, C{bytes} or C{str}.
    @param transcript: what went wrong, shown in the report; C{bytes} or
        C{str}.  If empty, a generic explanation is given.
    @param encoding: the encoding of the C{bytes} arguments, and the one
        text read from C{message} is encoded with.
    @return: C{(b"", failedFrom, report)}: the report's envelope sender (the
        null path), its recipient (C{failedFrom}, encoded) and the report
        itself.  If C{failedFrom} is the null address, C{(b"", b"", b"")}:
        a bounce is never bounced, so there is no recipient and nothing to
        send (the shape is kept, so that unpacking the result works).
    """
    if isinstance(failedFrom, bytes):
        failedFrom = failedFrom.decode(encoding)
    if isinstance(failedTo, bytes):
        failedTo = failedTo.decode(encoding)
    if isinstance(transcript, bytes):
        transcript = transcript.decode(encoding, "replace")
    sender = parseaddr(failedFrom)[1] or failedFrom.strip()
    recipient = parseaddr(failedTo)[1] or failedTo.strip()

    diagnostic = _replyIn(transcript or "")
    if diagnostic is None:
        status = "5.0.0"
    elif diagnostic.status is not None:
        status = diagnostic.status.decode("ascii")
    else:
        status = f"{diagnostic.code // 100}.0.0"
    report = DeliveryReport(
        reportingMTA=localHostname().decode("ascii"),
        sender=sender,
        recipients=[RecipientReport(recipient, "failed", status, diagnostic=diagnostic)],
        message=message,
    )
    if report.sender.isNull:
        return b"", b"", b""
    data = _build(report, list(report.recipients), None, None, None, DEFAULT_RETURN_LIMIT, transcript, encoding)
    return b"", failedFrom.encode(encoding), data
