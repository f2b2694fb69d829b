# -*- test-case-name: mailproto.test.test_grammar -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The productions of RFC 5321 section 4.1.2 (with the RFC 6531 additions for
internationalised addresses) as regular expressions over C{bytes}, and the
few checks a regular expression cannot make (octet ranges of IPv4 literals,
IPv6 literals, label and domain lengths, well-formed UTF-8).

Each expression is built from the ABNF rule quoted above it.  Where RFC 6531
adds an alternative C{UTF8-non-ascii}, the expressions here take any octet
from 0x80 to 0xFF and L{isUTF8} checks the whole value afterwards: cheaper
than spelling UTF-8 out in a regular expression, and just as exact.

Nothing here imports Twisted.
"""

from __future__ import annotations

import ipaddress
import re

# Let-dig        = ALPHA / DIGIT
# Ldh-str        = *( ALPHA / DIGIT / "-" ) Let-dig
# sub-domain     = Let-dig [Ldh-str]
# Domain         = sub-domain *("." sub-domain)
SUB_DOMAIN = rb"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
DOMAIN = SUB_DOMAIN + rb"(?:\." + SUB_DOMAIN + rb")*"

# RFC 6531:  sub-domain =/ U-label
# A U-label is a label with non-ASCII characters; it may not begin or end
# with a hyphen.  Its exact IDNA rules are the registry's business, not the
# mail transport's.
UTF8_SUB_DOMAIN = rb"[A-Za-z0-9\x80-\xff](?:[A-Za-z0-9\x80-\xff-]*[A-Za-z0-9\x80-\xff])?"
UTF8_DOMAIN = UTF8_SUB_DOMAIN + rb"(?:\." + UTF8_SUB_DOMAIN + rb")*"

# Snum           = 1*3DIGIT   ; representing a decimal integer value in 0 through 255
# IPv4-address-literal  = Snum 3("."  Snum)
IPV4_LITERAL = rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"

# IPv6-address-literal  = "IPv6:" IPv6-addr
# (ABNF strings are case-insensitive; IPv6-addr is checked by the ipaddress
# module, see isAddressLiteral.)
IPV6_LITERAL = rb"[Ii][Pp][Vv]6:[0-9A-Fa-f:.]+"

# General-address-literal  = Standardized-tag ":" 1*dcontent
# Standardized-tag  = Ldh-str
# dcontent       = %d33-90 / %d94-126   ; Printable US-ASCII excl. "[", "\", "]"
GENERAL_LITERAL = rb"[A-Za-z0-9-]*[A-Za-z0-9]:[!-Z^-~]+"

# address-literal  = "[" ( IPv4-address-literal / IPv6-address-literal /
#                          General-address-literal ) "]"
ADDRESS_LITERAL = rb"\[(?:" + IPV4_LITERAL + rb"|" + IPV6_LITERAL + rb"|" + GENERAL_LITERAL + rb")\]"

# atext (RFC 5322) = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" /
#                    "+" / "-" / "/" / "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"
# Atom           = 1*atext
# Dot-string     = Atom *("."  Atom)
ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
DOT_STRING = ATEXT + rb"+(?:\." + ATEXT + rb"+)*"
# RFC 6531:  atext =/ UTF8-non-ascii
UTF8_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff-]"
UTF8_DOT_STRING = UTF8_ATEXT + rb"+(?:\." + UTF8_ATEXT + rb"+)*"

# Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
# QcontentSMTP   = qtextSMTP / quoted-pairSMTP
# quoted-pairSMTP  = %d92 %d32-126
# qtextSMTP      = %d32-33 / %d35-91 / %d93-126
QUOTED_STRING = rb'"(?:[ !#-\[\]-~]|\\[ -~])*"'
# RFC 6531:  qtextSMTP =/ UTF8-non-ascii
UTF8_QUOTED_STRING = rb'"(?:[ !#-\[\]-~\x80-\xff]|\\[ -~])*"'

# Local-part     = Dot-string / Quoted-string
LOCAL_PART = rb"(?:" + DOT_STRING + rb"|" + QUOTED_STRING + rb")"
UTF8_LOCAL_PART = rb"(?:" + UTF8_DOT_STRING + rb"|" + UTF8_QUOTED_STRING + rb")"

# At-domain      = "@" Domain
# A-d-l          = At-domain *( "," At-domain )
ADL = rb"@" + DOMAIN + rb"(?:,@" + DOMAIN + rb")*"

# esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
# esmtp-value    = 1*(%d33-60 / %d62-126)
#                ; any CHAR excluding "=", SP, and control characters.
# RFC 6531:  esmtp-value =/ UTF8-non-ascii
# esmtp-param    = esmtp-keyword ["=" esmtp-value]
ESMTP_KEYWORD = rb"[A-Za-z0-9][A-Za-z0-9-]*"
ESMTP_VALUE = rb"[!-<>-~\x80-\xff]+"
ESMTP_PARAM = rb"(" + ESMTP_KEYWORD + rb")(?:=(" + ESMTP_VALUE + rb"))?"

# Mailbox        = Local-part "@" ( Domain / address-literal )
# The domain is optional here: twisted.mail's Address accepts a bare local
# part and completes it with a default domain, and RFC 5321 requires
# "Postmaster" alone to be accepted as a recipient.
MAILBOX = (
    rb"(?P<local>"
    + UTF8_LOCAL_PART
    + rb")(?:@(?P<domain>"
    + UTF8_DOMAIN
    + rb"|"
    + ADDRESS_LITERAL
    + rb"))?"
)
# Path           = "<" [ A-d-l ":" ] Mailbox ">"   (brackets handled by the caller)
ROUTE_AND_MAILBOX = rb"(?:(?P<route>" + ADL + rb"):)?" + MAILBOX

_mailboxRe = re.compile(ROUTE_AND_MAILBOX)
_domainRe = re.compile(DOMAIN)
_utf8DomainRe = re.compile(UTF8_DOMAIN)
_addressLiteralRe = re.compile(ADDRESS_LITERAL)
_dotStringRe = re.compile(DOT_STRING)
_utf8DotStringRe = re.compile(UTF8_DOT_STRING)
_esmtpParamRe = re.compile(ESMTP_PARAM)
_esmtpKeywordRe = re.compile(ESMTP_KEYWORD)
_ipv4Re = re.compile(IPV4_LITERAL)
_dequoteRe = re.compile(rb"\\([ -~])")
_leadingQuotedRe = re.compile(UTF8_QUOTED_STRING)

MAX_DOMAIN_LENGTH = 255
MAX_LABEL_LENGTH = 63


def isUTF8(data: bytes) -> bool:
    """
    @param data: any bytes.
    @return: whether C{data} is well-formed UTF-8.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def isDomain(data: bytes, utf8: bool = False) -> bool:
    """
    Is C{data} a domain name as RFC 5321 defines C{Domain}?

    @param data: the candidate.
    @param utf8: whether U-labels (RFC 6531) are allowed.
    @return: C{True} for a well-formed domain of at most 255 octets whose
        ASCII labels have at most 63 octets.
    """
    if len(data) > MAX_DOMAIN_LENGTH:
        return False
    if (_utf8DomainRe if utf8 else _domainRe).fullmatch(data) is None:
        return False
    if utf8 and not (data.isascii() or isUTF8(data)):
        return False
    return all(len(label) <= MAX_LABEL_LENGTH for label in data.split(b".") if label.isascii())


def isAddressLiteral(data: bytes) -> bool:
    """
    Is C{data} an RFC 5321 C{address-literal}: C{[192.0.2.1]},
    C{[IPv6:2001:db8::1]} or C{[tag:content]}?

    @param data: the candidate, brackets included.
    @return: C{True} if it is well formed, octet ranges and IPv6 syntax
        included.
    """
    if _addressLiteralRe.fullmatch(data) is None:
        return False
    inner = data[1:-1]
    if _ipv4Re.fullmatch(inner):
        return all(int(part) <= 255 for part in inner.split(b"."))
    tag, _, content = inner.partition(b":")
    if tag.lower() == b"ipv6":
        try:
            ipaddress.IPv6Address(content.decode("ascii"))
        except ValueError:
            return False
    return True


def isDotString(data: bytes, utf8: bool = False) -> bool:
    """
    Is C{data} a C{Dot-string}: a local part that needs no quoting?

    @param data: the candidate.
    @param utf8: whether non-ASCII characters are allowed (RFC 6531).
    @return: whether it matches.
    """
    return (_utf8DotStringRe if utf8 else _dotStringRe).fullmatch(data) is not None


def quoteLocalPart(local: bytes) -> bytes:
    """
    Give a local part its wire form: as it is if it is a C{Dot-string},
    else as a C{Quoted-string}.

    @param local: the local part, unquoted.
    @return: the local part as it goes between C{<} and C{@}.
    """
    if isDotString(local, utf8=True):
        return local
    return b'"' + local.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def unquoteLocalPart(local: bytes) -> bytes:
    """
    Undo L{quoteLocalPart}.

    @param local: a local part as it appears on the wire.
    @return: its value: without the quotes and backslashes of a
        C{Quoted-string}; a C{Dot-string} unchanged.
    """
    if len(local) >= 2 and local[:1] == b'"' and local[-1:] == b'"':
        return _dequoteRe.sub(rb"\1", local[1:-1])
    return local


def dequote(data: bytes) -> bytes:
    """
    Replace a C{Quoted-string} at the start of C{data} (a local part, or a
    whole address) by its value.

    @param data: a local part or an address, as on the wire.
    @return: C{data} with its quoted local part unquoted; unchanged if it
        does not begin with one.
    """
    match = _leadingQuotedRe.match(data)
    if match is None:
        return data
    return unquoteLocalPart(match.group()) + data[match.end() :]


def matchMailbox(data: bytes) -> re.Match[bytes] | None:
    """
    Match C{[A-d-l ":"] Local-part ["@" (Domain / address-literal)]}, the
    inside of a path, with UTF-8 allowed; the caller checks domain lengths,
    address literals and UTF-8 well-formedness.

    @param data: the path without its angle brackets.
    @return: a match with groups C{route}, C{local} and C{domain}, or
        C{None}.
    """
    return _mailboxRe.fullmatch(data)


def matchParameter(data: bytes) -> re.Match[bytes] | None:
    """
    Match one C{esmtp-param}.

    @param data: C{KEYWORD} or C{KEYWORD=value}.
    @return: a match whose groups are the keyword and the value (or
        C{None} for a keyword alone), or C{None}.
    """
    return _esmtpParamRe.fullmatch(data)


def isKeyword(data: bytes) -> bool:
    """
    @param data: the candidate.
    @return: whether C{data} is an C{esmtp-keyword} (also the form of an EHLO
        keyword).
    """
    return _esmtpKeywordRe.fullmatch(data) is not None
