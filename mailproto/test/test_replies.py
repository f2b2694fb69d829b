# -*- test-case-name: mailproto.test.test_replies -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._replies} and L{mailproto._extensions}.

The reply table is run three ways: whole, one byte at a time, and followed
by the start of another reply, which must stay pending.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailproto._errors import SMTPProtocolError
from mailproto._extensions import Extensions
from mailproto._replies import Reply, ReplyParser, ReplySyntaxError, isStatus

# (wire bytes, replies)
REPLY_TABLE = [
    (b"220 mx.example ESMTP ready\r\n", [Reply(220, [b"mx.example ESMTP ready"])]),
    (b"250 OK\r\n", [Reply(250, [b"OK"])]),
    (b"354\r\n", [Reply(354, [b""])]),
    (b"250 \r\n", [Reply(250, [b""])]),
    (b"250-mx.example\r\n250-SIZE 1000\r\n250 8BITMIME\r\n", [Reply(250, [b"mx.example", b"SIZE 1000", b"8BITMIME"])]),
    (b"250-first\r\n250-\r\n250 last\r\n", [Reply(250, [b"first", b"", b"last"])]),
    (b"250 2.1.0 Sender ok\r\n", [Reply(250, [b"Sender ok"], b"2.1.0")]),
    (b"550 5.1.1 No such user\r\n", [Reply(550, [b"No such user"], b"5.1.1")]),
    (b"451 4.3.0\r\n", [Reply(451, [b""], b"4.3.0")]),
    (b"550-5.7.1 Line one\r\n550 5.7.1 Line two\r\n", [Reply(550, [b"Line one", b"Line two"], b"5.7.1")]),
    # A status that does not fit the code's class is text.
    (b"250 5.1.1 odd\r\n", [Reply(250, [b"5.1.1 odd"])]),
    # Only a whole x.y.z followed by a space or the end is a status.
    (b"250 2.1.0x\r\n", [Reply(250, [b"2.1.0x"])]),
    (b"250 2.1234.0 no\r\n", [Reply(250, [b"2.1234.0 no"])]),
    (b"250 OK\r\n221 Bye\r\n", [Reply(250, [b"OK"]), Reply(221, [b"Bye"])]),
    (b"250 OK\n", [Reply(250, [b"OK"])]),
    (b"250 caf\xc3\xa9\r\n", [Reply(250, ["caf\u00e9".encode()])]),
]

BAD_LINES = [
    b"",
    b"25",
    b"2500 x",
    b"250x",
    b"OK",
    b"150 old",
    b"650 no",
    b"-250 x",
    b" 250 x",
    b"250_x",
    b"250 a\rb",
    b"250 a\nb",
    b"250-a\nb",
    b"\x00\x01\x02",
]


class ReplyTests(SynchronousTestCase):
    """
    L{Reply}.
    """

    def test_format(self):
        """
        A reply formats with C{-} on every line but the last and the status
        on every line.
        """
        self.assertEqual(Reply(250, [b"OK"]).format(), b"250 OK\r\n")
        self.assertEqual(bytes(Reply(250, [b"a", b"b"], b"2.0.0")), b"250-2.0.0 a\r\n250 2.0.0 b\r\n")
        self.assertEqual(Reply(354, [b""]).format(), b"354\r\n")
        self.assertEqual(Reply(250, [b"", b""], b"2.0.0").format(), b"250-2.0.0\r\n250 2.0.0\r\n")

    def test_fromText(self):
        """
        L{Reply.fromText} splits on LF, CRLF or CR, so reply text can never
        smuggle a line of its own.
        """
        reply = Reply.fromText(550, b"one\r\ntwo\nthree\rfour", b"5.0.0")
        self.assertEqual(reply.lines, (b"one", b"two", b"three", b"four"))
        self.assertEqual(Reply.fromText(250, "caf\u00e9").lines, ("caf\u00e9".encode(),))

    def test_invalid(self):
        """
        A code out of range, a line with CR or LF, or a status that does not
        fit the code are refused.
        """
        self.assertRaises(ValueError, Reply, 199, [b"x"])
        self.assertRaises(ValueError, Reply, 600, [b"x"])
        self.assertRaises(ValueError, Reply, 250, [b"a\r\n550 injected"])
        self.assertRaises(ValueError, Reply, 250, [b"x"], b"5.0.0")
        self.assertRaises(ValueError, Reply, 250, [b"x"], b"2.0")

    def test_text(self):
        """
        C{text} joins lines without the status; C{wireText} with it, as
        twisted.mail's client reports a reply.
        """
        reply = Reply(250, [b"a", b""], b"2.0.0")
        self.assertEqual(reply.text, b"a\n")
        self.assertEqual(reply.wireText, b"2.0.0 a\n2.0.0")
        self.assertEqual(Reply(250, [b"a"]).wireText, b"a")

    def test_classes(self):
        """
        The class predicates follow the first digit.
        """
        self.assertEqual(
            [(r.isPositive, r.isIntermediate, r.isTransient, r.isPermanent) for r in
             [Reply(250), Reply(354), Reply(451), Reply(554)]],
            [(True, False, False, False), (False, True, False, False),
             (False, False, True, False), (False, False, False, True)],
        )

    def test_equality(self):
        """
        Replies are values.
        """
        self.assertEqual(Reply(250, [b"a"], b"2.0.0"), Reply(250, (b"a",), b"2.0.0"))
        self.assertEqual(hash(Reply(250, [b"a"])), hash(Reply(250, [b"a"])))
        self.assertNotEqual(Reply(250, [b"a"]), Reply(250, [b"a"], b"2.0.0"))
        self.assertNotEqual(Reply(250), (250, b""))
        self.assertEqual(repr(Reply(250, [b"a"])), "Reply(250, (b'a',), None)")

    def test_isStatus(self):
        """
        L{isStatus} checks the form and, if given, the class against a code.
        """
        self.assertTrue(isStatus(b"2.0.0"))
        self.assertTrue(isStatus(b"5.123.456", 550))
        self.assertFalse(isStatus(b"3.0.0"))
        self.assertFalse(isStatus(b"5.1.1", 250))
        self.assertFalse(isStatus(b"5.1"))


class ReplyParserTests(SynchronousTestCase):
    """
    L{ReplyParser}.
    """

    def test_table(self):
        """
        Each row parses to its replies whole and byte by byte; the start of a
        following reply stays pending.
        """
        for wire, replies in REPLY_TABLE:
            self.assertEqual(ReplyParser().feed(wire), replies, wire)
            parser = ReplyParser()
            got = []
            for i in range(len(wire)):
                got.extend(parser.feed(wire[i : i + 1]))
            self.assertEqual(got, replies, wire)
            parser = ReplyParser()
            self.assertEqual(parser.feed(wire + b"250-more\r\n250 to"), replies, wire)
            self.assertTrue(parser.pending)
            self.assertEqual(parser.feed(b" come\r\n"), [Reply(250, [b"more", b"to come"])])
            self.assertFalse(parser.pending)

    def test_lineReceived(self):
        """
        L{ReplyParser.lineReceived} takes lines without line ends.
        """
        parser = ReplyParser()
        self.assertIsNone(parser.lineReceived(b"250-a"))
        self.assertEqual(parser.lineReceived(b"250 b"), Reply(250, [b"a", b"b"]))

    def test_notEnhanced(self):
        """
        With C{enhanced=False}, a leading status is left in the text.
        """
        self.assertEqual(ReplyParser(enhanced=False).feed(b"250 2.0.0 OK\r\n"), [Reply(250, [b"2.0.0 OK"])])

    def test_badLines(self):
        """
        A line that is not a reply raises L{ReplySyntaxError}, a fatal
        L{SMTPProtocolError}.
        """
        for line in BAD_LINES:
            with self.assertRaises(ReplySyntaxError, msg=repr(line)) as caught:
                ReplyParser().lineReceived(line)
            self.assertIsInstance(caught.exception, SMTPProtocolError)
            self.assertTrue(caught.exception.isFatal)
            self.assertFalse(caught.exception.retry)

    def test_codeChange(self):
        """
        A continuation line with another code is an error.
        """
        self.assertRaises(ReplySyntaxError, ReplyParser().feed, b"250-a\r\n251 b\r\n")

    def test_limits(self):
        """
        Overlong lines and replies are errors, whether they arrive as lines
        or as bytes without a line end.
        """
        parser = ReplyParser(maxLineLength=100, maxReplyLength=1000)
        self.assertRaises(ReplySyntaxError, parser.lineReceived, b"250 " + b"x" * 100)
        parser = ReplyParser(maxLineLength=100, maxReplyLength=1000)
        self.assertRaises(ReplySyntaxError, parser.feed, b"250 " + b"x" * 200)
        parser = ReplyParser(maxLineLength=100, maxReplyLength=1000)
        with self.assertRaises(ReplySyntaxError):
            for _ in range(100):
                parser.feed(b"250-" + b"y" * 50 + b"\r\n")


class ExtensionsTests(SynchronousTestCase):
    """
    L{Extensions}.
    """

    EHLO = (
        b"250-mx.example Hello\r\n"
        b"250-PIPELINING\r\n"
        b"250-SIZE 10240000\r\n"
        b"250-auth PLAIN login\r\n"
        b"250-AUTH=LOGIN CRAM-MD5\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-8BITMIME\r\n"
        b"250-=bogus line\r\n"
        b"250-\r\n"
        b"250 SMTPUTF8\r\n"
    )

    def test_fromReply(self):
        """
        The EHLO reply reads into keywords and parameters, case-insensitive,
        with the old C{AUTH=} form merged into AUTH and bad lines skipped.
        """
        [reply] = ReplyParser().feed(self.EHLO)
        ext = Extensions.fromReply(reply)
        self.assertEqual(
            list(ext), [b"PIPELINING", b"SIZE", b"AUTH", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SMTPUTF8"]
        )
        self.assertEqual(ext[b"size"], (b"10240000",))
        self.assertIn(b"pipelining", ext)
        self.assertNotIn(b"STARTTLS", ext)
        self.assertNotIn("SIZE", ext)
        self.assertEqual(ext.size, 10240000)
        self.assertEqual(ext.authMechanisms, (b"PLAIN", b"LOGIN", b"CRAM-MD5"))
        self.assertEqual(len(ext), 6)

    def test_size(self):
        """
        C{size} is L{None} without SIZE and 0 for SIZE without a limit.
        """
        self.assertIsNone(Extensions().size)
        self.assertEqual(Extensions.fromLines([b"SIZE"]).size, 0)
        self.assertEqual(Extensions.fromLines([b"SIZE 0"]).size, 0)
        self.assertEqual(Extensions.fromLines([b"SIZE lots"]).size, 0)
        self.assertEqual(Extensions.fromLines([b"SIZE 52428800"]).size, 52428800)

    def test_lines(self):
        """
        A server formats its extensions one per line, in order.
        """
        ext = Extensions([(b"SIZE", [b"1000"]), (b"8BITMIME", []), (b"AUTH", [b"PLAIN", b"LOGIN"])])
        self.assertEqual(ext.lines(), [b"SIZE 1000", b"8BITMIME", b"AUTH PLAIN LOGIN"])
        self.assertEqual(dict(Extensions({b"x": [b"1"]})), {b"X": (b"1",)})

    def test_invalid(self):
        """
        A server cannot offer a malformed keyword or parameter.
        """
        self.assertRaises(ValueError, Extensions, [(b"BAD KEY", [])])
        self.assertRaises(ValueError, Extensions, [(b"SIZE", [b"1 2"])])
        self.assertRaises(ValueError, Extensions, [(b"SIZE", [b""])])
