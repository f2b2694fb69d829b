# -*- test-case-name: mailproto.test.test_exports -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The SMTP wire layer: what can be decided from bytes alone, as values.

Nothing here needs a reactor.  Every parser returns a value or raises an
L{mailproto.smtp.SMTPServerError} (L{mailproto.smtp.AddressError} for
addresses) whose C{code}, C{status} and C{resp} are the reply a server
should send; see C{docs/wire.rst} for examples.

  - commands: L{splitCommand}, L{parseHelo}, L{isValidHelo},
    L{noArgument}, L{parseMailFrom}/L{formatMailFrom} (L{MailFrom}),
    L{parseRcptTo}/L{formatRcptTo} (L{RcptTo}), L{parseBdat},
    L{parseAuth};
  - replies: L{Reply}, L{ReplyParser}, L{ReplySyntaxError}, L{isStatus};
  - EHLO extensions: L{Extensions};
  - message data: L{DotStuffer}, L{stuff}, L{Unstuffer}, L{unstuff},
    L{BareNewlinePolicy};
  - xtext (RFC 3461): L{encodeXtext}, L{decodeXtext}, L{XtextError}.
"""

from mailproto._commands import (
    MailFrom,
    RcptTo,
    formatMailFrom,
    formatRcptTo,
    isValidHelo,
    noArgument,
    parseAuth,
    parseBdat,
    parseHelo,
    parseMailFrom,
    parseRcptTo,
    splitCommand,
)
from mailproto._data import BareNewlinePolicy, DotStuffer, Unstuffer, stuff, unstuff
from mailproto._extensions import Extensions
from mailproto._replies import Reply, ReplyParser, ReplySyntaxError, isStatus
from mailproto._xtext import XtextError, decodeXtext, encodeXtext

__all__ = [
    # commands
    "MailFrom",
    "RcptTo",
    "formatMailFrom",
    "formatRcptTo",
    "isValidHelo",
    "noArgument",
    "parseAuth",
    "parseBdat",
    "parseHelo",
    "parseMailFrom",
    "parseRcptTo",
    "splitCommand",
    # replies
    "Reply",
    "ReplyParser",
    "ReplySyntaxError",
    "isStatus",
    # extensions
    "Extensions",
    # message data
    "BareNewlinePolicy",
    "DotStuffer",
    "Unstuffer",
    "stuff",
    "unstuff",
    # xtext
    "XtextError",
    "decodeXtext",
    "encodeXtext",
]
