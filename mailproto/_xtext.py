# -*- test-case-name: mailproto.test.test_xtext -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The xtext encoding of RFC 3461 section 4, used by the DSN parameters
C{ENVID} and C{ORCPT} and by the C{AUTH=} parameter of C{MAIL} (RFC 4954)::

    xtext   = *( xchar / hexchar )
    xchar   = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
              except for "+" and "="
    hexchar = ASCII "+" immediately followed by two upper case
              hexadecimal digits

The codec is registered with C{codecs} under the name C{xtext}, as
twisted.mail does, so that C{"a+b".encode("xtext") == b"a+2Bb"}.  Unlike
twisted.mail's, it encodes C{+} and C{=} in C{bytes} input too, and text
is encoded as UTF-8 before escaping, so every code point round-trips.
"""

from __future__ import annotations

import codecs
import re

_NEEDS_ESCAPE = re.compile(rb"[^!-*,-<>-~]")
_VALID = re.compile(rb"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")
_HEXCHAR = re.compile(rb"\+([0-9A-Fa-f]{2})")


class XtextError(ValueError):
    """
    The input is not valid xtext.
    """


def encodeXtext(data: bytes) -> bytes:
    """
    Encode bytes as xtext.

    @param data: any bytes.
    @return: the xtext form of C{data}: printable ASCII only.
    """
    return _NEEDS_ESCAPE.sub(lambda m: b"+%02X" % m.group()[0], data)


def decodeXtext(data: bytes) -> bytes:
    """
    Decode xtext to bytes.  Lower-case hexadecimal digits are accepted.

    @param data: xtext.
    @return: the bytes C{data} stands for.
    @raise XtextError: if C{data} has a character outside xtext or a C{+}
        that is not followed by two hexadecimal digits.
    """
    if _VALID.fullmatch(data) is None:
        raise XtextError(f"invalid xtext: {data!r}")
    return _HEXCHAR.sub(lambda m: bytes((int(m.group(1), 16),)), data)


def xtext_encode(s: str | bytes, errors: str | None = None) -> tuple[bytes, int]:
    """
    Codec encoder: encode C{s} as xtext.

    @param s: text (encoded as UTF-8 first, with C{errors}) or bytes.
    @param errors: the UTF-8 error handler for text input.
    @return: the xtext bytes and the length of C{s}.
    """
    data = s.encode("utf-8", errors or "strict") if isinstance(s, str) else bytes(s)
    return encodeXtext(data), len(s)


def xtext_decode(s: bytes, errors: str | None = None) -> tuple[str, int]:
    """
    Codec decoder: decode xtext to text.

    @param s: xtext bytes.
    @param errors: C{"strict"} (or C{None}): invalid xtext is an error;
        any other UTF-8 error handler (C{"replace"}, C{"ignore"},
        C{"surrogateescape"}, ...): invalid xtext is decoded leniently, as
        twisted.mail's decoder did (a C{+} not followed by two hexadecimal
        digits, and characters outside xtext, are kept as they are), and
        the decoded bytes are read as UTF-8 with that handler.
    @return: the text (the decoded bytes read as UTF-8) and the length of
        C{s}.
    @raise UnicodeDecodeError: if C{s} is not valid xtext or not UTF-8 once
        decoded, with C{errors} strict.
    """
    data = bytes(s)
    errors = errors or "strict"
    if errors != "strict":
        raw = _HEXCHAR.sub(lambda m: bytes((int(m.group(1), 16),)), data)
        return raw.decode("utf-8", errors), len(data)
    try:
        raw = decodeXtext(data)
    except XtextError as e:
        raise UnicodeDecodeError("xtext", data, 0, len(data), str(e)) from None
    return raw.decode("utf-8", errors), len(data)


class xtextStreamReader(codecs.StreamReader):
    """
    Stream reader for the xtext codec.
    """

    def decode(self, input, errors="strict"):
        return xtext_decode(input, errors)


class xtextStreamWriter(codecs.StreamWriter):
    """
    Stream writer for the xtext codec.
    """

    def encode(self, input, errors="strict"):
        return xtext_encode(input, errors)


def xtext_codec(name: str) -> codecs.CodecInfo | None:
    """
    The C{codecs} search function that finds the C{xtext} codec.

    @param name: the codec name looked up.
    @return: the codec for C{"xtext"}, else C{None}.
    """
    if name != "xtext":
        return None
    return codecs.CodecInfo(
        name="xtext",
        encode=xtext_encode,
        decode=xtext_decode,
        streamreader=xtextStreamReader,
        streamwriter=xtextStreamWriter,
    )


codecs.register(xtext_codec)
