# -*- test-case-name: mailproto.test.test_xtext -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._xtext}, the RFC 3461 xtext codec.
"""

import codecs

from twisted.trial.unittest import SynchronousTestCase

from mailproto._xtext import XtextError, decodeXtext, encodeXtext, xtext_codec, xtext_decode, xtext_encode

# (raw bytes, xtext)
TABLE = [
    (b"", b""),
    (b"plain", b"plain"),
    (b"a+b=c", b"a+2Bb+3Dc"),
    (b"a b", b"a+20b"),
    (b"\x00\x1f\x7f\x80\xff", b"+00+1F+7F+80+FF"),
    (b"!~", b"!~"),
    (b"<user@example.com>", b"<user@example.com>"),
    ("caf\u00e9".encode(), b"caf+C3+A9"),
]


class XtextTests(SynchronousTestCase):
    """
    Encoding and decoding xtext.
    """

    def test_bytes(self):
        """
        L{encodeXtext} and L{decodeXtext} follow the table both ways.
        """
        for raw, xtext in TABLE:
            self.assertEqual(encodeXtext(raw), xtext)
            self.assertEqual(decodeXtext(xtext), raw)

    def test_lowerCaseHex(self):
        """
        Lower-case hexadecimal digits are accepted when decoding.
        """
        self.assertEqual(decodeXtext(b"a+2bb+3d"), b"a+b=")

    def test_invalid(self):
        """
        A raw C{=}, space or control, or a C{+} without two hexadecimal
        digits, is not xtext.
        """
        for bad in [b"a=b", b"a b", b"+", b"+2", b"+2G", b"a\x00", b"\xc3\xa9", b"+ 2B"]:
            self.assertRaises(XtextError, decodeXtext, bad)

    def test_codecFunctions(self):
        """
        The codec functions take text (as UTF-8) or bytes and return the
        length consumed, as codecs do; twisted.mail's bytes bug (C{+} and
        C{=} left raw) is not repeated.
        """
        self.assertEqual(xtext_encode("a+b=c"), (b"a+2Bb+3Dc", 5))
        self.assertEqual(xtext_encode(b"a+b=c"), (b"a+2Bb+3Dc", 5))
        self.assertEqual(xtext_encode("\u20ac"), (b"+E2+82+AC", 1))
        self.assertEqual(xtext_decode(b"+E2+82+AC"), ("\u20ac", 9))

    def test_registered(self):
        """
        The codec is registered as C{xtext}.
        """
        self.assertEqual("a+b c".encode("xtext"), b"a+2Bb+20c")
        self.assertEqual(b"a+2Bb+20c".decode("xtext"), "a+b c")
        self.assertEqual(codecs.lookup("xtext").name, "xtext")
        self.assertIsNone(xtext_codec("utf-8"))

    def test_decodeErrors(self):
        """
        Malformed xtext raises L{UnicodeDecodeError} through the codec, as
        codecs do; C{errors} applies to the UTF-8 of the result.
        """
        self.assertRaises(UnicodeDecodeError, b"a=b".decode, "xtext")
        self.assertRaises(UnicodeDecodeError, b"+FF".decode, "xtext")
        self.assertEqual(b"+FFa".decode("xtext", "replace"), "\ufffda")

    def test_streams(self):
        """
        The stream reader and writer work.
        """
        import io

        stream = io.BytesIO()
        writer = codecs.getwriter("xtext")(stream)
        writer.write("x=1")
        self.assertEqual(stream.getvalue(), b"x+3D1")
        reader = codecs.getreader("xtext")(io.BytesIO(b"x+3D1"))
        self.assertEqual(reader.read(), "x=1")
