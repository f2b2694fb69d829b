# -*- test-case-name: mailproto.test.test_commands -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
SMTP commands as values: parsing what a client sends (server side) and
formatting what a client sends (client side).

Every parser returns a value or raises an L{SMTPServerError} (or its
subclass L{AddressError}) whose C{code}, C{status} and C{resp} are the reply
the server should send.  The replies used:

  - C{500 5.5.2} a line that is not a command (control characters, binary);
  - C{501 5.5.4} bad syntax in an argument or a parameter value;
  - C{555 5.5.4} a MAIL or RCPT parameter the server does not support;
  - C{553 5.1.7} / C{553 5.1.3} a bad sender / recipient address;
  - C{553 5.6.7} a non-ASCII address without SMTPUTF8 (RFC 6531).

RFC 5321 section 4.1.1 and 4.1.2, with the extensions' parameters::

    mail = "MAIL FROM:" Reverse-path [SP Mail-parameters] CRLF
    rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
                Forward-path ) [SP Rcpt-parameters] CRLF

Two liberties are taken, as Postfix and twisted.mail take them: spaces
after the colon (C{MAIL FROM: <a@b>}) and a path without angle brackets
(C{MAIL FROM:a@b}) are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass, field

from mailproto import _grammar
from mailproto._address import Address
from mailproto._errors import AddressError, SMTPServerError
from mailproto._xtext import XtextError, decodeXtext, encodeXtext

MAX_PATH_LENGTH = 256
"""RFC 5321 section 4.5.3.1.3: a path has at most 256 octets, brackets included."""

MAX_ENVID_LENGTH = 100
"""RFC 3461 section 4.4: an ENVID has at most 100 characters."""

MAX_ORCPT_LENGTH = 500
"""RFC 3461 section 4.2: an ORCPT has at most 500 characters."""

_controlRe = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_verbRe = re.compile(rb"[A-Za-z]{1,20}")
_fromRe = re.compile(rb"FROM:[ \t]*", re.I)
_toRe = re.compile(rb"TO:[ \t]*", re.I)
# A path up to its closing bracket; a ">" inside a quoted local part does
# not close it.  The Address parser checks the rest.
_pathRe = re.compile(rb'<(?:[^<>" \t]|"(?:[^"\\]|\\.)*")*>', re.S)
_digitsRe = re.compile(rb"[0-9]{1,20}")
_saslMechRe = re.compile(rb"[A-Za-z0-9_-]{1,20}")
_base64Re = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|=")
_addrTypeRe = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")


def _syntax(message: str) -> SMTPServerError:
    return SMTPServerError(501, message, b"5.5.4")


def splitCommand(line: bytes) -> tuple[bytes, bytes]:
    """
    Split a command line into its verb and its argument.

    @param line: the line, without CRLF.
    @return: the verb in upper case and the rest of the line after the
        first space (C{b""} if none).
    @raise SMTPServerError: C{500 5.5.2} if the line has a control
        character (tab aside) or does not begin with a verb of letters.
    """
    verb, _, rest = line.partition(b" ")
    if _controlRe.search(line) is not None or _verbRe.fullmatch(verb) is None:
        raise SMTPServerError(500, "Syntax error, command unrecognized", b"5.5.2")
    return verb.upper(), rest


def parseHelo(rest: bytes, verb: str = "EHLO") -> bytes:
    """
    Parse the argument of HELO, EHLO or LHLO.

    RFC 5321 asks for a domain or address literal; like most servers, this
    accepts any one word, and leaves checking it to policy (see
    L{isValidHelo}).

    @param rest: the argument.
    @param verb: the command, for the error message.
    @return: the client's name for itself.
    @raise SMTPServerError: C{501 5.5.4} if it is missing or has more than
        one word.
    """
    name = rest.strip(b" \t")
    if not name or b" " in name or b"\t" in name:
        raise _syntax(f"Syntax: {verb} hostname")
    return name


def isValidHelo(name: bytes) -> bool:
    """
    Is C{name} what RFC 5321 wants after HELO or EHLO: a domain name or an
    address literal?

    @param name: the argument.
    @return: whether it is one.
    """
    if name[:1] == b"[":
        return _grammar.isAddressLiteral(name)
    return _grammar.isDomain(name, utf8=True)


def noArgument(rest: bytes, verb: str) -> None:
    """
    Check that a command that takes no argument (DATA, RSET, QUIT,
    STARTTLS) got none.

    @param rest: the argument.
    @param verb: the command, for the error message.
    @raise SMTPServerError: C{501 5.5.4} if there is one.
    """
    if rest.strip(b" \t"):
        raise _syntax(f"Syntax: {verb} takes no argument")


@dataclass(frozen=True)
class MailFrom:
    """
    A C{MAIL FROM} command.

    @ivar address: the reverse-path; L{Address.isNull} for C{<>}.
    @ivar size: C{SIZE=} (RFC 1870), the declared message size.
    @ivar body: C{BODY=} (RFC 6152, RFC 3030): C{b"7BIT"}, C{b"8BITMIME"}
        or C{b"BINARYMIME"}.
    @ivar smtputf8: whether C{SMTPUTF8} (RFC 6531) was given.
    @ivar ret: C{RET=} (RFC 3461): C{b"FULL"} or C{b"HDRS"}.
    @ivar envid: C{ENVID=} (RFC 3461), decoded from xtext.
    @ivar auth: C{AUTH=} (RFC 4954), decoded from xtext; C{b"<>"} as sent.
    @ivar requiretls: whether C{REQUIRETLS} (RFC 8689) was given, with no
        value: the message is to go on only over TLS, to servers that
        offer REQUIRETLS.
    @ivar extra: other parameters the caller allowed, as
        C{(KEYWORD, value or None)} pairs in order.
    """

    address: Address
    size: int | None = None
    body: bytes | None = None
    smtputf8: bool = False
    ret: bytes | None = None
    envid: bytes | None = None
    auth: bytes | None = None
    requiretls: bool = False
    extra: tuple[tuple[bytes, bytes | None], ...] = field(default=())


@dataclass(frozen=True)
class RcptTo:
    """
    A C{RCPT TO} command.

    @ivar address: the forward-path.
    @ivar notify: C{NOTIFY=} (RFC 3461): C{(b"NEVER",)} or some of
        C{b"SUCCESS"}, C{b"FAILURE"}, C{b"DELAY"}, upper-case; C{None} if
        not given.
    @ivar orcpt: C{ORCPT=} (RFC 3461): C{(address type, original
        recipient)}, the recipient decoded from xtext.
    @ivar extra: other parameters the caller allowed.
    """

    address: Address
    notify: tuple[bytes, ...] | None = None
    orcpt: tuple[bytes, bytes] | None = None
    extra: tuple[tuple[bytes, bytes | None], ...] = field(default=())


def _noValue(keyword: bytes, value: bytes | None) -> bool:
    if value is not None:
        raise _syntax(f"{keyword.decode()} takes no value")
    return True


def _needValue(keyword: bytes, value: bytes | None) -> bytes:
    if value is None:
        raise _syntax(f"{keyword.decode()} needs a value")
    return value


def _oneOf(*choices: bytes):
    def convert(keyword: bytes, value: bytes | None) -> bytes:
        upper = _needValue(keyword, value).upper()
        if upper not in choices:
            raise _syntax(f"Bad {keyword.decode()} value")
        return upper

    return convert


def _size(keyword: bytes, value: bytes | None) -> int:
    if _digitsRe.fullmatch(_needValue(keyword, value)) is None:
        raise _syntax("Bad SIZE value")
    return int(value)


def _xtext(limit: int | None):
    def convert(keyword: bytes, value: bytes | None) -> bytes:
        value = _needValue(keyword, value)
        if limit is not None and len(value) > limit:
            raise _syntax(f"{keyword.decode()} value too long")
        try:
            return decodeXtext(value)
        except XtextError:
            raise _syntax(f"Bad xtext in {keyword.decode()}") from None

    return convert


def _auth(keyword: bytes, value: bytes | None) -> bytes:
    if value == b"<>":
        return value
    return _xtext(None)(keyword, value)


def _notify(keyword: bytes, value: bytes | None) -> tuple[bytes, ...]:
    items = _needValue(keyword, value).upper().split(b",")
    if items == [b"NEVER"]:
        return (b"NEVER",)
    if len(set(items)) != len(items) or not set(items) <= {b"SUCCESS", b"FAILURE", b"DELAY"}:
        raise _syntax("Bad NOTIFY value")
    return tuple(items)


def _orcpt(keyword: bytes, value: bytes | None) -> tuple[bytes, bytes]:
    value = _needValue(keyword, value)
    if len(value) > MAX_ORCPT_LENGTH:
        raise _syntax("ORCPT value too long")
    addrType, sep, original = value.partition(b";")
    # original-recipient-address = addr-type ";" xtext   (xtext may be empty)
    if not sep or _addrTypeRe.fullmatch(addrType) is None:
        raise _syntax("Bad ORCPT value")
    if addrType.lower() == b"utf-8" and not original.isascii():
        # RFC 6533: a utf-8 address may travel as raw UTF-8.
        if not _grammar.isUTF8(original):
            raise _syntax("Bad ORCPT value")
        return addrType, original
    try:
        return addrType, decodeXtext(original)
    except XtextError:
        raise _syntax("Bad xtext in ORCPT") from None


# keyword -> (field name, converter(keyword, value))
MAIL_PARAMETERS = {
    b"SIZE": ("size", _size),
    b"BODY": ("body", _oneOf(b"7BIT", b"8BITMIME", b"BINARYMIME")),
    b"SMTPUTF8": ("smtputf8", _noValue),
    b"RET": ("ret", _oneOf(b"FULL", b"HDRS")),
    b"ENVID": ("envid", _xtext(MAX_ENVID_LENGTH)),
    b"AUTH": ("auth", _auth),
    b"REQUIRETLS": ("requiretls", _noValue),
}
"""The MAIL parameters mailproto understands, by keyword."""

RCPT_PARAMETERS = {
    b"NOTIFY": ("notify", _notify),
    b"ORCPT": ("orcpt", _orcpt),
}
"""The RCPT parameters mailproto understands, by keyword."""


def _splitPath(rest: bytes, prefix: re.Pattern[bytes], usage: str) -> tuple[bytes, bytes]:
    """
    Split C{FROM:<path> params} into the path and the parameters.
    """
    match = prefix.match(rest)
    if match is None:
        raise _syntax(usage)
    tail = rest[match.end() :]
    if tail[:1] == b"<":
        pathMatch = _pathRe.match(tail)
        if pathMatch is None:
            raise _syntax(usage)
        path, params = tail[: pathMatch.end()], tail[pathMatch.end() :]
    else:
        path, _, params = tail.partition(b" ")
        params = b" " + params if params else b""
    if not path or (params and params[:1] not in b" \t"):
        raise _syntax(usage)
    return path, params


def _parseParameters(
    params: bytes, table: dict, known: Container[bytes] | None
) -> tuple[dict[str, object], tuple[tuple[bytes, bytes | None], ...]]:
    """
    Parse C{esmtp-param *(SP esmtp-param)} against a table of parameters.

    @return: the converted values by field name, and the other allowed
        parameters in order.
    """
    values: dict[str, object] = {}
    extra: list[tuple[bytes, bytes | None]] = []
    seen = set()
    for word in params.split():
        match = _grammar.matchParameter(word)
        if match is None or not _grammar.isUTF8(word):
            raise _syntax("Bad parameter syntax")
        keyword, value = match.group(1).upper(), match.group(2)
        if keyword in seen:
            raise _syntax(f"Duplicate parameter {keyword.decode()}")
        seen.add(keyword)
        allowed = keyword in table if known is None else keyword in known
        if not allowed:
            raise SMTPServerError(555, f"Unsupported parameter {keyword.decode()}", b"5.5.4")
        if keyword in table:
            name, convert = table[keyword]
            values[name] = convert(keyword, value)
        else:
            extra.append((keyword, value))
    return values, tuple(extra)


def _parseAddress(path: bytes, status: bytes, defaultDomain: bytes | None, utf8: bool) -> Address:
    if len(path) > MAX_PATH_LENGTH:
        raise AddressError("Path too long", status=status)
    try:
        address = Address(path, defaultDomain)
    except AddressError as e:
        raise AddressError(e.resp, status=status) from None
    if address.needsSMTPUTF8 and not utf8:
        raise AddressError("Non-ASCII address requires SMTPUTF8", status=b"5.6.7")
    return address


def parseMailFrom(
    rest: bytes, known: Container[bytes] | None = None, defaultDomain: bytes | None = None
) -> MailFrom:
    """
    Parse the argument of C{MAIL}: C{FROM:<reverse-path> [parameters]}.

    @param rest: what follows C{MAIL }.
    @param known: the parameter keywords (upper-case) the server accepts,
        i.e. those of the extensions it offers; keywords outside
        L{MAIL_PARAMETERS} are returned in C{extra}.  C{None} accepts
        exactly L{MAIL_PARAMETERS}.
    @param defaultDomain: the domain for a bare local part.
    @return: the command.
    @raise SMTPServerError: with the reply to send.
    """
    path, params = _splitPath(rest, _fromRe, "Syntax: MAIL FROM:<address>")
    values, extra = _parseParameters(params, MAIL_PARAMETERS, known)
    address = _parseAddress(path, b"5.1.7", defaultDomain, bool(values.get("smtputf8")))
    return MailFrom(address, extra=extra, **values)


def parseRcptTo(
    rest: bytes,
    known: Container[bytes] | None = None,
    defaultDomain: bytes | None = None,
    utf8: bool = False,
) -> RcptTo:
    """
    Parse the argument of C{RCPT}: C{TO:<forward-path> [parameters]}.

    @param rest: what follows C{RCPT }.
    @param known: as for L{parseMailFrom}, against L{RCPT_PARAMETERS}.
    @param defaultDomain: the domain for a bare local part (such as
        C{<Postmaster>}).
    @param utf8: whether the transaction's MAIL had C{SMTPUTF8}, allowing
        a non-ASCII recipient.
    @return: the command.
    @raise SMTPServerError: with the reply to send.
    """
    path, params = _splitPath(rest, _toRe, "Syntax: RCPT TO:<address>")
    values, extra = _parseParameters(params, RCPT_PARAMETERS, known)
    address = _parseAddress(path, b"5.1.3", defaultDomain, utf8)
    if address.isNull:
        raise AddressError("Null recipient not allowed", status=b"5.1.3")
    return RcptTo(address, extra=extra, **values)


def parseBdat(rest: bytes) -> tuple[int, bool]:
    """
    Parse the argument of C{BDAT} (RFC 3030): C{chunk-size [SP "LAST"]}.

    @param rest: what follows C{BDAT }.
    @return: the chunk size in octets and whether it is the last chunk.
    @raise SMTPServerError: C{501 5.5.4} if malformed.
    """
    words = rest.split()
    if not 1 <= len(words) <= 2 or _digitsRe.fullmatch(words[0]) is None:
        raise _syntax("Syntax: BDAT size [LAST]")
    if len(words) == 2 and words[1].upper() != b"LAST":
        raise _syntax("Syntax: BDAT size [LAST]")
    return int(words[0]), len(words) == 2


def parseAuth(rest: bytes) -> tuple[bytes, bytes | None]:
    """
    Parse the argument of C{AUTH} (RFC 4954): C{mechanism
    [initial-response]}.

    @param rest: what follows C{AUTH }.
    @return: the mechanism, upper-case, and the initial response as sent
        (base64, or C{b"="} for an empty one), or C{None}.
    @raise SMTPServerError: C{501 5.5.4} if malformed.
    """
    words = rest.split()
    if not 1 <= len(words) <= 2 or _saslMechRe.fullmatch(words[0]) is None:
        raise _syntax("Syntax: AUTH mechanism [initial-response]")
    if len(words) == 2 and _base64Re.fullmatch(words[1]) is None:
        raise _syntax("Initial response is not base64")
    return words[0].upper(), words[1] if len(words) == 2 else None


def _formatParameters(pairs, extra) -> bytes:
    """
    Format parameters: a value of C{None} or C{False} leaves one out,
    C{True} writes the keyword alone.  In C{extra}, C{None} means the
    keyword alone.
    """
    pairs = [*pairs, *((keyword, True if value is None else value) for keyword, value in extra)]
    out = []
    for keyword, value in pairs:
        if value is None or value is False:
            continue
        param = keyword if value is True else keyword + b"=" + value
        if _grammar.matchParameter(param) is None:
            raise ValueError(f"not an ESMTP parameter: {param!r}")
        out.append(b" " + param)
    return b"".join(out)


def _wirePath(address: Address) -> bytes:
    path = b"<" + bytes(address) + b">"
    if _controlRe.search(path) is not None:
        raise AddressError(f"Control character in address {bytes(address)!r}")
    return path


def formatMailFrom(command: MailFrom) -> bytes:
    """
    Format a C{MAIL FROM} command line (without CRLF).

    @param command: the command.
    @return: e.g. C{b"MAIL FROM:<a@example.com> SIZE=1024 BODY=8BITMIME"}.
    @raise AddressError: if the address has a control character.
    @raise ValueError: if a parameter is not an C{esmtp-param}.
    """
    pairs = [
        (b"SIZE", None if command.size is None else b"%d" % command.size),
        (b"BODY", command.body),
        (b"SMTPUTF8", command.smtputf8),
        (b"RET", command.ret),
        (b"ENVID", None if command.envid is None else encodeXtext(command.envid)),
        (b"AUTH", None if command.auth is None else command.auth if command.auth == b"<>" else encodeXtext(command.auth)),
        (b"REQUIRETLS", command.requiretls),
    ]
    return b"MAIL FROM:" + _wirePath(command.address) + _formatParameters(pairs, command.extra)


def formatRcptTo(command: RcptTo) -> bytes:
    """
    Format a C{RCPT TO} command line (without CRLF).

    @param command: the command.
    @return: e.g. C{b"RCPT TO:<b@example.com> NOTIFY=FAILURE,DELAY"}.
    @raise AddressError: if the address has a control character.
    @raise ValueError: if a parameter is not an C{esmtp-param}.
    """
    orcpt = None
    if command.orcpt is not None:
        addrType, original = command.orcpt
        orcpt = addrType + b";" + encodeXtext(original)
    pairs = [
        (b"NOTIFY", None if command.notify is None else b",".join(command.notify)),
        (b"ORCPT", orcpt),
    ]
    return b"RCPT TO:" + _wirePath(command.address) + _formatParameters(pairs, command.extra)
