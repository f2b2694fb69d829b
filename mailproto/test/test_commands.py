# -*- test-case-name: mailproto.test.test_commands -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._commands}: command lines into values, values into
command lines, and the reply every malformed line gets.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailproto._address import Address
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
from mailproto._errors import AddressError, SMTPServerError

A = Address(b"a@example.com")

# (argument of MAIL, expected value)
GOOD_MAIL = [
    (b"FROM:<a@example.com>", MailFrom(A)),
    (b"from:<a@example.com>", MailFrom(A)),
    (b"FROM: <a@example.com>", MailFrom(A)),
    (b"FROM:a@example.com", MailFrom(A)),
    (b"FROM:a@example.com SIZE=5", MailFrom(A, size=5)),
    (b"FROM:<>", MailFrom(Address(b"<>"))),
    (b"FROM:<@relay.example:a@example.com>", MailFrom(A)),
    (b'FROM:<"a> b"@example.com>', MailFrom(Address(b'"a> b"@example.com'))),
    (
        b"FROM:<a@example.com> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=b+2Bc@example.com REQUIRETLS",
        MailFrom(A, size=10, body=b"8BITMIME", smtputf8=True, ret=b"HDRS", envid=b"QQ+1", auth=b"b+c@example.com", requiretls=True),
    ),
    (b"FROM:<a@example.com>  size=99999999999999999999  body=binarymime", MailFrom(A, size=99999999999999999999, body=b"BINARYMIME")),
    (b"FROM:<a@example.com> BODY=7bit RET=full", MailFrom(A, body=b"7BIT", ret=b"FULL")),
    (b"FROM:<a@example.com> AUTH=<>", MailFrom(A, auth=b"<>")),
    ("FROM:<j\u00f6rg@example.com> SMTPUTF8".encode(), MailFrom(Address("j\u00f6rg@example.com"), smtputf8=True)),
    (b"FROM:<a@example.com> ENVID=" + b"x" * 100, MailFrom(A, envid=b"x" * 100)),
]

# (argument of MAIL, code, status)
BAD_MAIL = [
    (b"", 501, b"5.5.4"),
    (b"FROM", 501, b"5.5.4"),
    (b"FROM:", 501, b"5.5.4"),
    (b"TO:<a@example.com>", 501, b"5.5.4"),
    (b"FROM <a@example.com>", 501, b"5.5.4"),
    (b"FROM:<a@example.com", 501, b"5.5.4"),
    (b"FROM:<a@example.com>SIZE=1", 501, b"5.5.4"),
    (b"FROM:<a@@example.com>", 553, b"5.1.7"),
    (b"FROM:<a@example.com@x>", 553, b"5.1.7"),
    (b"FROM:<" + b"a" * 250 + b"@example.com>", 553, b"5.1.7"),
    ("FROM:<j\u00f6rg@example.com>".encode(), 553, b"5.6.7"),
    (b"FROM:<a@example.com> SIZE=", 501, b"5.5.4"),
    (b"FROM:<a@example.com> SIZE=-1", 501, b"5.5.4"),
    (b"FROM:<a@example.com> SIZE=1k", 501, b"5.5.4"),
    (b"FROM:<a@example.com> SIZE=" + b"9" * 21, 501, b"5.5.4"),
    (b"FROM:<a@example.com> SIZE", 501, b"5.5.4"),
    (b"FROM:<a@example.com> SIZE=1 SIZE=2", 501, b"5.5.4"),
    (b"FROM:<a@example.com> SIZE=1 size=1", 501, b"5.5.4"),
    (b"FROM:<a@example.com> BODY=9BIT", 501, b"5.5.4"),
    (b"FROM:<a@example.com> SMTPUTF8=yes", 501, b"5.5.4"),
    (b"FROM:<a@example.com> RET=ALL", 501, b"5.5.4"),
    (b"FROM:<a@example.com> ENVID=a+zz", 501, b"5.5.4"),
    (b"FROM:<a@example.com> ENVID=" + b"x" * 101, 501, b"5.5.4"),
    (b"FROM:<a@example.com> =x", 501, b"5.5.4"),
    (b"FROM:<a@example.com> A=B=C", 501, b"5.5.4"),
    (b"FROM:<a@example.com> SIZE=\xff", 501, b"5.5.4"),
    (b"FROM:<a@example.com> XFOO", 555, b"5.5.4"),
    (b"FROM:<a@example.com> NOTIFY=NEVER", 555, b"5.5.4"),
]

GOOD_RCPT = [
    (b"TO:<a@example.com>", RcptTo(A)),
    (b"to: <a@example.com>", RcptTo(A)),
    (b"TO:<Postmaster>", RcptTo(Address(b"Postmaster@mx.example"))),
    (b"TO:<a@example.com> NOTIFY=NEVER", RcptTo(A, notify=(b"NEVER",))),
    (b"TO:<a@example.com> NOTIFY=failure,delay,SUCCESS", RcptTo(A, notify=(b"FAILURE", b"DELAY", b"SUCCESS"))),
    (b"TO:<a@example.com> ORCPT=rfc822;b+2Bx@example.com", RcptTo(A, orcpt=(b"rfc822", b"b+x@example.com"))),
    ("TO:<a@example.com> ORCPT=utf-8;j\u00f6rg@example.com".encode(), RcptTo(A, orcpt=(b"utf-8", "j\u00f6rg@example.com".encode()))),
    (b"TO:<a@[IPv6:2001:db8::5]>", RcptTo(Address(b"a@[IPv6:2001:db8::5]"))),
    # RFC 3461: the xtext of an ORCPT may be empty.
    (b"TO:<a@example.com> ORCPT=rfc822;", RcptTo(A, orcpt=(b"rfc822", b""))),
]

BAD_RCPT = [
    (b"", 501, b"5.5.4"),
    (b"FROM:<a@example.com>", 501, b"5.5.4"),
    (b"TO:", 501, b"5.5.4"),
    (b"TO:<>", 553, b"5.1.3"),
    (b"TO:<a b@example.com>", 501, b"5.5.4"),
    (b"TO:<a@b..c>", 553, b"5.1.3"),
    ("TO:<\u00e9@example.com>".encode(), 553, b"5.6.7"),
    (b"TO:<a@example.com> NOTIFY=NEVER,SUCCESS", 501, b"5.5.4"),
    (b"TO:<a@example.com> NOTIFY=SUCCESS,SUCCESS", 501, b"5.5.4"),
    (b"TO:<a@example.com> NOTIFY=SOMETIMES", 501, b"5.5.4"),
    (b"TO:<a@example.com> NOTIFY=", 501, b"5.5.4"),
    (b"TO:<a@example.com> ORCPT=rfc822", 501, b"5.5.4"),
    (b"TO:<a@example.com> ORCPT=;a@example.com", 501, b"5.5.4"),
    (b"TO:<a@example.com> ORCPT=rfc822;a+4", 501, b"5.5.4"),
    (b"TO:<a@example.com> ORCPT=rfc822;" + b"x" * 500, 501, b"5.5.4"),
    (b"TO:<a@example.com> SIZE=10", 555, b"5.5.4"),
]


class MailRcptTests(SynchronousTestCase):
    """
    L{parseMailFrom}, L{parseRcptTo}, L{formatMailFrom}, L{formatRcptTo}.
    """

    def assertReply(self, call, code, status, label):
        with self.assertRaises(SMTPServerError, msg=label) as caught:
            call()
        self.assertEqual((caught.exception.code, caught.exception.status), (code, status), label)

    def test_goodMail(self):
        """
        Each MAIL argument parses into the expected value.
        """
        for rest, expected in GOOD_MAIL:
            self.assertEqual(parseMailFrom(rest), expected, rest)

    def test_badMail(self):
        """
        Each bad MAIL argument raises an error carrying the reply to send.
        """
        for rest, code, status in BAD_MAIL:
            self.assertReply(lambda: parseMailFrom(rest), code, status, rest)

    def test_goodRcpt(self):
        """
        Each RCPT argument parses into the expected value.
        """
        for rest, expected in GOOD_RCPT:
            self.assertEqual(parseRcptTo(rest, defaultDomain=b"mx.example"), expected, rest)

    def test_badRcpt(self):
        """
        Each bad RCPT argument raises an error carrying the reply to send.
        """
        for rest, code, status in BAD_RCPT:
            self.assertReply(lambda: parseRcptTo(rest), code, status, rest)

    def test_addressErrors(self):
        """
        Address errors are L{AddressError}s, with the sender or recipient
        status.
        """
        self.assertRaises(AddressError, parseMailFrom, b"FROM:<a@@b>")
        self.assertRaises(AddressError, parseRcptTo, b"TO:<a@@b>")

    def test_utf8Recipient(self):
        """
        A non-ASCII recipient is accepted when the transaction is SMTPUTF8.
        """
        rest = "TO:<\u00e9@example.com>".encode()
        self.assertEqual(parseRcptTo(rest, utf8=True).address, Address("\u00e9@example.com"))

    def test_knownParameters(self):
        """
        Only the parameters of the extensions offered are accepted; others
        the caller allows come back in C{extra}.
        """
        self.assertReply(lambda: parseMailFrom(b"FROM:<a@example.com> SIZE=1", known={b"BODY"}), 555, b"5.5.4", "")
        parsed = parseMailFrom(b"FROM:<a@example.com> XFOO=bar BODY=7BIT XBAZ", known={b"BODY", b"XFOO", b"XBAZ"})
        self.assertEqual(parsed, MailFrom(A, body=b"7BIT", extra=((b"XFOO", b"bar"), (b"XBAZ", None))))
        parsed = parseRcptTo(b"TO:<a@example.com> X-ID=7", known={b"X-ID"})
        self.assertEqual(parsed.extra, ((b"X-ID", b"7"),))
        self.assertReply(lambda: parseRcptTo(b"TO:<a@example.com> NOTIFY=NEVER", known=()), 555, b"5.5.4", "")

    def test_formatRoundTrip(self):
        """
        What L{formatMailFrom} and L{formatRcptTo} write parses back to the
        same value.
        """
        for rest, value in GOOD_MAIL:
            line = formatMailFrom(value)
            self.assertTrue(line.startswith(b"MAIL FROM:<"), line)
            self.assertEqual(parseMailFrom(line[5:]), value, line)
        for rest, value in GOOD_RCPT:
            line = formatRcptTo(value)
            self.assertTrue(line.startswith(b"RCPT TO:<"), line)
            self.assertEqual(parseRcptTo(line[5:], utf8=True), value, line)

    def test_formatted(self):
        """
        Parameters are written in a fixed order, xtext-encoded where the RFCs
        say so.
        """
        value = MailFrom(A, size=7, body=b"8BITMIME", envid=b"a b=", auth=b"<>", extra=((b"XFOO", None),))
        self.assertEqual(
            formatMailFrom(value),
            b"MAIL FROM:<a@example.com> SIZE=7 BODY=8BITMIME ENVID=a+20b+3D AUTH=<> XFOO",
        )
        value = RcptTo(A, notify=(b"SUCCESS", b"FAILURE"), orcpt=(b"rfc822", b"x=y@example.com"))
        self.assertEqual(
            formatRcptTo(value), b"RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+3Dy@example.com"
        )
        self.assertEqual(formatMailFrom(MailFrom(Address(b""))), b"MAIL FROM:<>")


class OtherCommandTests(SynchronousTestCase):
    """
    L{splitCommand}, L{parseHelo}, L{parseBdat}, L{parseAuth},
    L{noArgument}.
    """

    def test_splitCommand(self):
        """
        A command line splits into an upper-case verb and the rest.
        """
        self.assertEqual(splitCommand(b"mail FROM:<a@b>"), (b"MAIL", b"FROM:<a@b>"))
        self.assertEqual(splitCommand(b"QUIT"), (b"QUIT", b""))
        self.assertEqual(splitCommand(b"NOOP  x"), (b"NOOP", b" x"))

    def test_splitCommandGarbage(self):
        """
        Binary garbage, control characters and non-ASCII verbs are answered
        C{500 5.5.2}.
        """
        for bad in [b"", b" MAIL", b"\x00\x01\x02", b"MA\x00IL", b"M\xc3\xa4IL x", b"\xff\xfe", b"12 x",
                    b"MAIL FROM:<a@b>\x1b", b"NOOP\r", b"A" * 21, b"\x16\x03\x01\x02\x00"]:
            with self.assertRaises(SMTPServerError, msg=repr(bad)) as caught:
                splitCommand(bad)
            self.assertEqual((caught.exception.code, caught.exception.status), (500, b"5.5.2"))

    def test_helo(self):
        """
        HELO and EHLO need one word.
        """
        self.assertEqual(parseHelo(b"client.example"), b"client.example")
        self.assertEqual(parseHelo(b" [192.0.2.1] "), b"[192.0.2.1]")
        for bad in [b"", b"  ", b"two words"]:
            with self.assertRaises(SMTPServerError) as caught:
                parseHelo(bad, "HELO")
            self.assertEqual((caught.exception.code, caught.exception.status), (501, b"5.5.4"))
            self.assertIn("HELO", str(caught.exception))

    def test_isValidHelo(self):
        """
        L{isValidHelo} wants a domain or an address literal.
        """
        self.assertTrue(isValidHelo(b"mail.example.com"))
        self.assertTrue(isValidHelo(b"[IPv6:::1]"))
        self.assertFalse(isValidHelo(b"[999.1.1.1]"))
        self.assertFalse(isValidHelo(b"under_score"))

    def test_bdat(self):
        """
        BDAT takes a size and an optional LAST.
        """
        self.assertEqual(parseBdat(b"100"), (100, False))
        self.assertEqual(parseBdat(b"0 LAST"), (0, True))
        self.assertEqual(parseBdat(b"7 last"), (7, True))
        for bad in [b"", b"x", b"-1", b"1 FIRST", b"1 LAST x", b"1.5", b"9" * 21]:
            self.assertRaises(SMTPServerError, parseBdat, bad)

    def test_auth(self):
        """
        AUTH takes a mechanism and an optional base64 initial response.
        """
        self.assertEqual(parseAuth(b"plain"), (b"PLAIN", None))
        self.assertEqual(parseAuth(b"PLAIN AGEAYg=="), (b"PLAIN", b"AGEAYg=="))
        self.assertEqual(parseAuth(b"EXTERNAL ="), (b"EXTERNAL", b"="))
        for bad in [b"", b"P@IN", b"X" * 21, b"PLAIN abc", b"PLAIN a b", b"PLAIN ====", b"PLAIN A===="]:
            with self.assertRaises(SMTPServerError, msg=repr(bad)) as caught:
                parseAuth(bad)
            self.assertEqual(caught.exception.code, 501)

    def test_noArgument(self):
        """
        DATA, RSET, QUIT and STARTTLS take no argument.
        """
        noArgument(b"", "DATA")
        noArgument(b"  ", "DATA")
        with self.assertRaises(SMTPServerError) as caught:
            noArgument(b"now", "DATA")
        self.assertEqual((caught.exception.code, caught.exception.status), (501, b"5.5.4"))


class FormatSafetyTests(SynchronousTestCase):
    """
    Formatting refuses what would inject a command.
    """

    def test_badExtraParameter(self):
        """
        A parameter value with a space, CR or LF is refused.
        """
        for value in [b"a b", b"x\r\nRCPT TO:<v@example.org>", b""]:
            self.assertRaises(ValueError, formatMailFrom, MailFrom(A, extra=((b"XFOO", value),)))
            self.assertRaises(ValueError, formatRcptTo, RcptTo(A, extra=((b"XFOO", value),)))

    def test_badKeyword(self):
        """
        A keyword that is not an C{esmtp-keyword} is refused.
        """
        self.assertRaises(ValueError, formatMailFrom, MailFrom(A, extra=((b"X FOO", None),)))

    def test_badBody(self):
        """
        Values given for the known parameters are checked too.
        """
        self.assertRaises(ValueError, formatMailFrom, MailFrom(A, body=b"8BIT\r\nQUIT"))
