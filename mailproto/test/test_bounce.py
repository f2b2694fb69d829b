# -*- test-case-name: mailproto.test.test_bounce -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto.bounce} and L{mailproto._bounce}: delivery status
notifications (RFC 3464, RFC 3461, RFC 6533).

Reports are parsed back with the standard library's C{email} package
(C{policy.default}) and, where the parser would hide it, read as raw
bytes.
"""

import email
import email.policy
import inspect
import io
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

import mailproto
from mailproto import _bounce, bounce
from mailproto._bounce import DEFAULT_RETURN_LIMIT
from mailproto._commands import parseMailFrom, parseRcptTo
from mailproto._replies import Reply
from mailproto.bounce import DeliveryReport, RecipientReport, ReportMessage, generateBounce, makeReport, shouldNotify

BOUNDARY = "test-boundary"
DATE = datetime(2026, 11, 21, 6, 11, 5, tzinfo=timezone.utc)
MESSAGE_ID = "<report.1@mx.example.net>"

ORIGINAL = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Hello\r\n"
    b"Message-ID: <original.1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"how are you?\r\n"
)
HEADERS = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]

# Any line end that is not part of a CRLF.
_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def failed(address=b"bob@example.org", status="5.1.1", **kwargs):
    return RecipientReport(address, "failed", status, **kwargs)


def deliveryReport(recipients=None, **kwargs):
    kwargs.setdefault("reportingMTA", "mx.example.net")
    kwargs.setdefault("sender", b"alice@example.com")
    kwargs.setdefault("message", ORIGINAL)
    if recipients is None:
        recipients = [failed()]
    return DeliveryReport(recipients=recipients, **kwargs)


def make(report, **kwargs):
    kwargs.setdefault("boundary", BOUNDARY)
    kwargs.setdefault("date", DATE)
    kwargs.setdefault("messageID", MESSAGE_ID)
    return makeReport(report, **kwargs)


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.default)


def rawParts(data, boundary=BOUNDARY):
    """
    Split a report at its boundary, by hand.

    @return: C{(preamble and headers, [(part headers, part body)],
        epilogue)}.
    """
    delimiter = b"\r\n--" + boundary.encode("ascii")
    pieces = data.split(delimiter)
    head, parts, last = pieces[0], pieces[1:-1], pieces[-1]
    split = []
    for piece in parts:
        assert piece.startswith(b"\r\n"), piece[:40]
        headers, _, body = piece[2:].partition(b"\r\n\r\n")
        split.append((headers + b"\r\n", body))
    return head, split, last


def statusFields(message):
    """
    @return: the blocks of fields of the C{message/delivery-status} part,
        as lists of C{(name, value)} in order.
    """
    part = message.get_payload()[1]
    return [[(name, str(value)) for name, value in block.items()] for block in part.get_payload()]


class StructureTests(SynchronousTestCase):
    """
    The MIME structure and the headers of a report.
    """

    def setUp(self):
        self.result = make(deliveryReport())
        self.data = self.result.message
        self.message = parse(self.data)

    def test_envelope(self):
        """
        The report goes from the null path to the original sender.
        """
        self.assertIsInstance(self.result, ReportMessage)
        sender, recipients, data = self.result
        self.assertEqual(sender, b"")
        self.assertEqual(recipients, [b"alice@example.com"])
        self.assertIsInstance(data, bytes)

    def test_contentType(self):
        """
        The report is C{multipart/report; report-type=delivery-status} with
        a text part, a delivery-status part and the returned message, and
        nothing else.
        """
        self.assertEqual(self.message.get_content_type(), "multipart/report")
        self.assertEqual(self.message.get_param("report-type"), "delivery-status")
        self.assertEqual(self.message.get_boundary(), BOUNDARY)
        self.assertEqual(
            [part.get_content_type() for part in self.message.iter_parts()],
            ["text/plain", "message/delivery-status", "message/rfc822"],
        )
        self.assertEqual(self.message.defects, [])
        for part in self.message.walk():
            self.assertEqual(part.defects, [], part.get_content_type())

    def test_boundaryClosed(self):
        """
        Every part opens with the boundary, and the close delimiter ends the
        report, once.
        """
        lines = self.data.split(b"\r\n")
        self.assertEqual(lines.count(b"--" + BOUNDARY.encode()), 3)
        self.assertEqual(lines.count(b"--" + BOUNDARY.encode() + b"--"), 1)
        self.assertTrue(self.data.endswith(b"\r\n--" + BOUNDARY.encode() + b"--\r\n"))

    def test_headers(self):
        """
        From the mailer daemon of the reporting MTA to the sender, with a
        subject, the given date and message id, MIME-Version and
        Auto-Submitted (RFC 3834).
        """
        message = self.message
        self.assertEqual(message["From"].addresses[0].addr_spec, "MAILER-DAEMON@mx.example.net")
        self.assertEqual(message["From"].addresses[0].display_name, "Mail Delivery System")
        self.assertEqual(message["To"].addresses[0].addr_spec, "alice@example.com")
        self.assertEqual(message["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(parsedate_to_datetime(message["Date"]), DATE)
        self.assertEqual(message["Message-ID"], MESSAGE_ID)
        self.assertEqual(message["MIME-Version"], "1.0")
        self.assertEqual(message["Auto-Submitted"], "auto-replied")
        self.assertEqual(message["References"], "<original.1@example.com>")

    def test_crlf(self):
        """
        Every line ends in CRLF; no line is longer than RFC 5322 allows.
        """
        self.assertIsNone(_BARE_LINE_END.search(self.data))
        for line in self.data.split(b"\r\n"):
            self.assertLessEqual(len(line), 998)

    def test_ascii(self):
        """
        A report about an ASCII message is ASCII, with no transfer encoding
        beyond 7bit.
        """
        self.assertTrue(self.data.isascii())
        self.assertNotIn(b"Content-Transfer-Encoding", self.data)

    def test_textPart(self):
        """
        The text part says what happened to whom, and what the remote
        server said.
        """
        report = deliveryReport(
            [failed(diagnostic=b"550 5.1.1 <bob@example.org>: no such user", remoteMTA="mx.example.org")]
        )
        text = parse(make(report).message).get_payload()[0].get_content()
        self.assertIn("could not be delivered", text)
        self.assertIn("<bob@example.org>", text)
        self.assertIn("5.1.1", text)
        self.assertIn("mx.example.org said: 550 5.1.1 <bob@example.org>: no such user", text)
        self.assertIn("This is the mail system at host mx.example.net.", text)
        self.assertIn("The message is attached.", text)

    def test_defaults(self):
        """
        Without a date, message id or boundary, the report has now's date, a
        new message id, and a random boundary that changes every time.
        """
        report = deliveryReport()
        first = makeReport(report).message
        second = makeReport(report).message
        message = parse(first)
        stamp = parsedate_to_datetime(message["Date"])
        self.assertLess(abs(stamp - datetime.now(timezone.utc)), timedelta(minutes=5))
        self.assertRegex(message["Message-ID"], r"^<\d{14}\.\d+\.\d+\.dsn\.\d+@[^>]+>$")
        self.assertNotEqual(message["Message-ID"], parse(second)["Message-ID"])
        self.assertNotEqual(message.get_boundary(), parse(second).get_boundary())
        self.assertEqual(len(message.get_payload()), 3)

    def test_deterministic(self):
        """
        Given the boundary, date and message id, the report is the same
        every time.
        """
        report = deliveryReport()
        self.assertEqual(make(report).message, make(report).message)

    def test_datesAsTimestampsAndText(self):
        """
        Dates may be given as POSIX timestamps or as formatted text.
        """
        report = deliveryReport(arrivalDate=DATE.timestamp(), recipients=[failed(lastAttempt=DATE.timestamp())])
        message = parse(make(report, date=b"Sat, 21 Nov 2026 06:11:05 +0000").message)
        self.assertEqual(message["Date"], "Sat, 21 Nov 2026 06:11:05 +0000")
        fields = statusFields(message)
        self.assertEqual(parsedate_to_datetime(dict(fields[0])["Arrival-Date"]), DATE)
        self.assertEqual(parsedate_to_datetime(dict(fields[1])["Last-Attempt-Date"]), DATE)

    def test_randomBoundaryAvoidsContent(self):
        """
        A random boundary that occurs in the returned message is not used.
        """
        colliding = "=_mailproto_dsn_collide"
        candidates = iter([colliding, "=_mailproto_dsn_fresh"])
        self.patch(_bounce, "_newBoundary", lambda: next(candidates))
        original = HEADERS + b"\r\n--" + colliding.encode() + b"--\r\n"
        message = parse(makeReport(deliveryReport(message=original)).message)
        self.assertEqual(message.get_boundary(), "=_mailproto_dsn_fresh")
        self.assertEqual(len(message.get_payload()), 3)

    def test_givenBoundaryInContent(self):
        """
        A boundary given that occurs in the report is refused.
        """
        original = HEADERS + b"\r\n--" + BOUNDARY.encode() + b"\r\n"
        self.assertRaises(ValueError, make, deliveryReport(message=original))

    def test_badBoundary(self):
        """
        A boundary that RFC 2046 does not allow is refused.
        """
        for bad in ["", "a b", "x" * 71, "bad\r\nheader", 'quote"']:
            self.assertRaises(ValueError, make, deliveryReport(), boundary=bad)

    def test_badMessageId(self):
        """
        A message id with spaces or line breaks is refused.
        """
        for bad in ["<a b@c>", "<a@b>\r\nBcc: x", "no-at-sign"]:
            self.assertRaises(ValueError, make, deliveryReport(), messageID=bad)

    def test_withoutMessage(self):
        """
        Without the original message, the report has two parts.
        """
        message = parse(make(deliveryReport(message=None)).message)
        self.assertEqual(
            [part.get_content_type() for part in message.iter_parts()],
            ["text/plain", "message/delivery-status"],
        )
        self.assertIsNone(message["References"])

    def test_pure(self):
        """
        Importing L{mailproto.bounce} imports nothing from Twisted.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))
        script = (
            "import sys, mailproto.bounce\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope', 'OpenSSL')))\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root
        ).stdout
        self.assertEqual(output.strip(), "[]")

    def test_exports(self):
        """
        L{mailproto.bounce} exports the objects of L{mailproto._bounce}, and
        C{__all__} lists them.
        """
        names = ["DeliveryReport", "RecipientReport", "ReportMessage", "generateBounce", "makeReport", "shouldNotify"]
        self.assertEqual(sorted(bounce.__all__), names)
        for name in names:
            self.assertIs(getattr(bounce, name), getattr(_bounce, name))


class FieldTests(SynchronousTestCase):
    """
    The fields of the C{message/delivery-status} part (RFC 3464 sections
    2.2 and 2.3).
    """

    def test_required(self):
        """
        Reporting-MTA, and for each recipient Final-Recipient, Action and
        Status, in that order.
        """
        report = deliveryReport([failed(), RecipientReport("carol@example.org", "failed", "5.2.2")])
        fields = statusFields(parse(make(report).message))
        self.assertEqual(fields[0], [("Reporting-MTA", "dns; mx.example.net")])
        self.assertEqual(
            fields[1:],
            [
                [("Final-Recipient", "rfc822;bob@example.org"), ("Action", "failed"), ("Status", "5.1.1")],
                [("Final-Recipient", "rfc822;carol@example.org"), ("Action", "failed"), ("Status", "5.2.2")],
            ],
        )

    def test_all(self):
        """
        All the fields known, in the order of RFC 3464's grammar.
        """
        recipient = failed(
            diagnostic=Reply(550, [b"No such user", b"here"], b"5.1.1"),
            remoteMTA=b"mx.example.org",
            originalRecipient=(b"rfc822", b"Bob@example.org"),
            lastAttempt=DATE,
        )
        report = deliveryReport([recipient], envid=b"QQ314159", arrivalDate=DATE - timedelta(hours=1))
        fields = statusFields(parse(make(report).message))
        self.assertEqual(
            fields,
            [
                [
                    ("Original-Envelope-Id", "QQ314159"),
                    ("Reporting-MTA", "dns; mx.example.net"),
                    ("Arrival-Date", "Sat, 21 Nov 2026 05:11:05 +0000"),
                ],
                [
                    ("Original-Recipient", "rfc822;Bob@example.org"),
                    ("Final-Recipient", "rfc822;bob@example.org"),
                    ("Action", "failed"),
                    ("Status", "5.1.1"),
                    ("Remote-MTA", "dns; mx.example.org"),
                    ("Diagnostic-Code", "smtp; 550 5.1.1 No such user here"),
                    ("Last-Attempt-Date", "Sat, 21 Nov 2026 06:11:05 +0000"),
                ],
            ],
        )

    def test_fromParsedCommands(self):
        """
        ENVID and RET as L{parseMailFrom} gives them, NOTIFY and ORCPT as
        L{parseRcptTo} gives them (decoded from xtext) go into the report.
        """
        mail = parseMailFrom(b"FROM:<alice@example.com> RET=HDRS ENVID=id+2B1")
        rcpt = parseRcptTo(b"TO:<bob@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob+2Btag@example.org")
        report = DeliveryReport(
            "mx.example.net",
            mail.address,
            [RecipientReport(rcpt.address, "failed", "5.1.1", originalRecipient=rcpt.orcpt, notify=rcpt.notify)],
            envid=mail.envid,
            ret=mail.ret,
            message=ORIGINAL,
        )
        message = parse(make(report).message)
        fields = statusFields(message)
        self.assertEqual(dict(fields[0])["Original-Envelope-Id"], "id+1")
        self.assertEqual(dict(fields[1])["Original-Recipient"], "rfc822;bob+tag@example.org")
        self.assertEqual(message.get_payload()[2].get_content_type(), "text/rfc822-headers")

    def test_originalRecipientForms(self):
        """
        The original recipient may be given as a plain address or as
        C{type;address}.
        """
        for original, expected in [
            ("bob@example.org", "rfc822;bob@example.org"),
            (b"<bob@example.org>", "rfc822;bob@example.org"),
            ("rfc822;Bob@Example.org", "rfc822;Bob@Example.org"),
            ("x400;/S=bob/", "x400;/S=bob/"),
        ]:
            report = deliveryReport([failed(originalRecipient=original)])
            fields = statusFields(parse(make(report).message))
            self.assertEqual(fields[1][0], ("Original-Recipient", expected), original)

    def test_unprintableOriginalRecipient(self):
        """
        An original recipient that is not printable ASCII is given as xtext,
        so that the field stays one clean line.
        """
        report = deliveryReport([failed(originalRecipient=(b"x-odd", b"a\r\nb\x00"))])
        fields = statusFields(parse(make(report).message))
        self.assertEqual(fields[1][0], ("Original-Recipient", "x-odd;a+0D+0Ab+00"))

    def test_envidNotPrintable(self):
        """
        An ENVID with spaces or non-ASCII octets is given as xtext.
        """
        report = deliveryReport(envid=b"id 1\xff")
        fields = statusFields(parse(make(report).message))
        self.assertEqual(fields[0][0], ("Original-Envelope-Id", "id+201+FF"))

    def test_delayed(self):
        """
        A delay is reported with Will-Retry-Until.
        """
        until = DATE + timedelta(days=4)
        report = deliveryReport(
            [RecipientReport("bob@example.org", "delayed", "4.4.1", willRetryUntil=until, lastAttempt=DATE)]
        )
        message = parse(make(report).message)
        block = dict(statusFields(message)[1])
        self.assertEqual(block["Action"], "delayed")
        self.assertEqual(block["Status"], "4.4.1")
        self.assertEqual(parsedate_to_datetime(block["Will-Retry-Until"]), until)
        self.assertEqual(parsedate_to_datetime(block["Last-Attempt-Date"]), DATE)
        self.assertEqual(message["Subject"], "Delayed Mail (still being retried)")
        text = message.get_payload()[0].get_content()
        self.assertIn("Delivery will be tried until: Wed, 25 Nov 2026 06:11:05 +0000", text)

    def test_diagnosticForms(self):
        """
        A diagnostic may be the text of an SMTP reply, multi-line included,
        or a C{(type, text)} pair for other kinds; control characters and
        non-ASCII text do not get into the field as they are.
        """
        for diagnostic, expected in [
            (b"550 5.1.1 no such user", "smtp; 550 5.1.1 no such user"),
            ("550-5.1.1 no such\r\n550 5.1.1 user", "smtp; 550-5.1.1 no such 550 5.1.1 user"),
            (("x-local", "mailbox full"), "x-local; mailbox full"),
            ("550 caf\u00e9\x00", "smtp; 550 caf\\xe9"),
            (Reply(554), "smtp; 554"),
        ]:
            report = deliveryReport([failed(diagnostic=diagnostic)])
            fields = statusFields(parse(make(report).message))
            self.assertEqual(dict(fields[1])["Diagnostic-Code"], expected, diagnostic)

    def test_longDiagnostic(self):
        """
        A long diagnostic is folded; no line is longer than 998 octets.
        """
        text = "550 5.7.1 " + " ".join(["blocked"] * 100) + " " + "x" * 2500
        data = make(deliveryReport([failed(diagnostic=text)])).message
        for line in data.split(b"\r\n"):
            self.assertLessEqual(len(line), 998)
        fields = statusFields(parse(data))
        self.assertTrue(dict(fields[1])["Diagnostic-Code"].startswith("smtp; 550 5.7.1 blocked blocked"))

    def test_successActions(self):
        """
        Successes are reported when asked for, with their own subject.
        """
        report = deliveryReport(
            [
                RecipientReport("bob@example.org", "delivered", "2.0.0", notify=b"SUCCESS"),
                RecipientReport("list@example.org", "expanded", "2.0.0", notify="success,failure"),
                RecipientReport("carol@example.org", "relayed", "2.0.0", notify=("SUCCESS",)),
            ]
        )
        message = parse(make(report).message)
        self.assertEqual(message["Subject"], "Successful Mail Delivery Report")
        self.assertEqual([dict(b)["Action"] for b in statusFields(message)[1:]], ["delivered", "expanded", "relayed"])

    def test_mixedSubject(self):
        """
        A report with a failure among delays is titled as a failure.
        """
        report = deliveryReport([RecipientReport("c@example.org", "delayed", "4.4.1"), failed()])
        self.assertEqual(parse(make(report).message)["Subject"], "Undelivered Mail Returned to Sender")


class ReturnTests(SynchronousTestCase):
    """
    What of the original message is returned: RET (RFC 3461 section 4.3)
    and the size limit.
    """

    def returned(self, report, **kwargs):
        data = make(report, **kwargs).message
        message = parse(data)
        part = message.get_payload()[-1]
        return part.get_content_type(), rawParts(data)[1][-1][1], message

    def test_retFull(self):
        """
        RET=FULL returns the whole message as C{message/rfc822}.
        """
        kind, body, message = self.returned(deliveryReport(ret="FULL"))
        self.assertEqual(kind, "message/rfc822")
        self.assertEqual(body, ORIGINAL)
        inner = message.get_payload()[2].get_payload()[0]
        self.assertEqual(inner["Subject"], "Hello")
        self.assertEqual(inner.get_content().splitlines(), ["Hello Bob,", "", "how are you?"])

    def test_retHdrs(self):
        """
        RET=HDRS returns the header section alone as C{text/rfc822-headers}.
        """
        kind, body, message = self.returned(deliveryReport(ret=b"hdrs"))
        self.assertEqual(kind, "text/rfc822-headers")
        self.assertEqual(body, HEADERS)
        self.assertIn("The headers of the message are attached.", message.get_payload()[0].get_content())

    def test_noRet(self):
        """
        Without RET, a message within the limit is returned whole.
        """
        kind, body, message = self.returned(deliveryReport())
        self.assertEqual((kind, body), ("message/rfc822", ORIGINAL))

    def test_sizeLimit(self):
        """
        A message over the limit is returned as headers only, with or
        without RET=FULL, and the text says why.
        """
        big = HEADERS + b"\r\n" + (b"x" * 70 + b"\r\n") * 3000
        for ret in [None, "FULL"]:
            kind, body, message = self.returned(deliveryReport(message=big, ret=ret))
            self.assertEqual((kind, body), ("text/rfc822-headers", HEADERS))
            self.assertIn("larger than 102400 octets", message.get_payload()[0].get_content())
        kind, body, message = self.returned(deliveryReport(message=big), returnLimit=len(big))
        self.assertEqual((kind, body), ("message/rfc822", big))
        kind, body, message = self.returned(deliveryReport(message=big), returnLimit=None)
        self.assertEqual(kind, "message/rfc822")
        self.assertEqual(DEFAULT_RETURN_LIMIT, 100 * 1024)

    def test_readsNoMoreThanLimit(self):
        """
        No more than the limit and one octet is read from a file, even an
        endless one.
        """

        class Endless:
            read_total = 0

            def read(self, size=-1):
                self.assertSize(size)
                chunk = (b"X-Header: " + b"y" * 50 + b"\r\n") * (size // 62 + 1)
                chunk = chunk[:size]
                self.read_total += len(chunk)
                return chunk

            def assertSize(self, size):
                assert size > 0, "must not read to the end"

        source = Endless()
        kind, body, message = self.returned(deliveryReport(message=source), returnLimit=1000)
        self.assertLessEqual(source.read_total, 1001)
        self.assertEqual(kind, "text/rfc822-headers")
        self.assertLessEqual(len(body), 1000)
        self.assertTrue(body.endswith(b"\r\n"))
        self.assertTrue(all(line.startswith(b"X-Header: ") for line in body.split(b"\r\n")[:-1]))

    def test_onlyFailuresReturnContent(self):
        """
        Reports of delays and successes return the headers only, as RET=FULL
        asks for the message in C{failed} reports.
        """
        for recipient in [
            RecipientReport("bob@example.org", "delayed", "4.4.1"),
            RecipientReport("bob@example.org", "delivered", "2.0.0", notify=b"SUCCESS"),
        ]:
            kind, body, message = self.returned(deliveryReport([recipient], ret="FULL"))
            self.assertEqual((kind, body), ("text/rfc822-headers", HEADERS))

    def test_lineEnds(self):
        """
        A message with LF or CR line ends is returned with CRLF.
        """
        for end in [b"\n", b"\r"]:
            kind, body, message = self.returned(deliveryReport(message=ORIGINAL.replace(b"\r\n", end)))
            self.assertEqual(body, ORIGINAL)

    def test_files(self):
        """
        The message may be a binary or text file, or text.
        """
        for source in [io.BytesIO(ORIGINAL), io.StringIO(ORIGINAL.decode()), ORIGINAL.decode(), bytearray(ORIGINAL)]:
            kind, body, message = self.returned(deliveryReport(message=source))
            self.assertEqual(body, ORIGINAL, source)

    def test_eightBit(self):
        """
        Non-ASCII octets are returned as they are, declared 8bit.
        """
        original = HEADERS.replace(b"Hello", "Gr\u00fc\u00dfe".encode()) + b"\r\ncaf\xc3\xa9 \xff\r\n"
        data = make(deliveryReport(message=original)).message
        head, parts, _ = rawParts(data)
        self.assertIn(b"Content-Transfer-Encoding: 8bit\r\n", head)
        self.assertIn(b"Content-Transfer-Encoding: 8bit\r\n", parts[2][0])
        self.assertEqual(parts[2][1], original)
        self.assertTrue(head.isascii())

    def test_oddMessages(self):
        """
        An empty message, one with no body, one with no header section and
        one without a final line end are returned whole or cut right.
        """
        for original, full, headers in [
            (b"", b"", b""),
            (b"Subject: x", b"Subject: x\r\n", b"Subject: x\r\n"),
            (b"Subject: x\r\n", b"Subject: x\r\n", b"Subject: x\r\n"),
            (b"\r\nbody only", b"\r\nbody only\r\n", b""),
            (b"A: b\r\n\r\nc", b"A: b\r\n\r\nc\r\n", b"A: b\r\n"),
        ]:
            kind, body, _ = self.returned(deliveryReport(message=original))
            self.assertEqual((kind, body), ("message/rfc822", full), original)
            kind, body, _ = self.returned(deliveryReport(message=original, ret="HDRS"))
            self.assertEqual((kind, body), ("text/rfc822-headers", headers), original)


class NotifyTests(SynchronousTestCase):
    """
    L{shouldNotify} and the recipients a report is about.
    """

    def test_table(self):
        """
        NEVER asks for nothing; SUCCESS, FAILURE and DELAY for their events;
        no NOTIFY for failures and (by default) delays.
        """
        cases = {
            None: {"failed", "delayed"},
            (b"NEVER",): set(),
            (b"SUCCESS",): {"delivered", "relayed", "expanded"},
            (b"FAILURE",): {"failed"},
            (b"DELAY",): {"delayed"},
            (b"FAILURE", b"DELAY"): {"failed", "delayed"},
            "success,failure,delay": {"failed", "delayed", "delivered", "relayed", "expanded"},
        }
        for notify, expected in cases.items():
            for action in _bounce.ACTIONS:
                self.assertEqual(shouldNotify(notify, action), action in expected, (notify, action))
                self.assertEqual(shouldNotify(notify, action.encode()), action in expected, (notify, action))

    def test_delayByDefault(self):
        """
        Whether delays are reported without NOTIFY is the MTA's choice.
        """
        self.assertFalse(shouldNotify(None, "delayed", delayByDefault=False))
        self.assertTrue(shouldNotify(None, "failed", delayByDefault=False))
        self.assertTrue(shouldNotify(b"DELAY", "delayed", delayByDefault=False))

    def test_neverWins(self):
        """
        NEVER with another keyword (which RFC 3461 forbids) is NEVER.
        """
        self.assertFalse(shouldNotify((b"NEVER", b"FAILURE"), "failed"))

    def test_bad(self):
        """
        An unknown keyword or action is an error.
        """
        self.assertRaises(ValueError, shouldNotify, b"SOMETIMES", "failed")
        self.assertRaises(ValueError, shouldNotify, None, "bounced")
        self.assertRaises(ValueError, RecipientReport, "b@example.org", "failed", "5.0.0", notify="ALWAYS")

    def test_filtered(self):
        """
        Recipients whose NOTIFY excludes what happened are left out.
        """
        report = deliveryReport(
            [
                failed(b"never@example.org", notify=(b"NEVER",)),
                failed(b"default@example.org"),
                failed(b"delayonly@example.org", notify=(b"DELAY",)),
                failed(b"failure@example.org", notify=(b"FAILURE",)),
                RecipientReport("delivered@example.org", "delivered", "2.0.0"),
            ]
        )
        message = parse(make(report).message)
        self.assertEqual(
            [dict(block)["Final-Recipient"] for block in statusFields(message)[1:]],
            ["rfc822;default@example.org", "rfc822;failure@example.org"],
        )
        text = message.get_payload()[0].get_content()
        self.assertNotIn("never@example.org", text)
        self.assertNotIn("delivered@example.org", text)

    def test_noneLeft(self):
        """
        With no recipient left, there is no report.
        """
        self.assertIsNone(make(deliveryReport([failed(notify=(b"NEVER",))])))
        self.assertIsNone(make(deliveryReport([failed(notify=(b"SUCCESS", b"DELAY"))])))
        self.assertIsNone(make(deliveryReport([RecipientReport("b@example.org", "delivered", "2.0.0")])))
        self.assertIsNone(
            make(deliveryReport([RecipientReport("b@example.org", "delayed", "4.4.1")]), delayByDefault=False)
        )
        self.assertIsNone(make(deliveryReport([])))


class NullSenderTests(SynchronousTestCase):
    """
    A bounce is never bounced.
    """

    def test_nullSender(self):
        """
        A message from the null path gets no report.
        """
        for sender in [b"", "<>", b"<>"]:
            self.assertIsNone(make(deliveryReport(sender=sender)), sender)

    def test_nullSenderBounce(self):
        """
        L{generateBounce} makes no bounce for a message from the null path,
        and keeps its result's shape: nothing to send, to nobody.
        """
        for sender in [b"<>", ""]:
            fromAddress, to, message = generateBounce(io.BytesIO(ORIGINAL), sender, "bob@example.org")
            self.assertEqual((fromAddress, to, message), (b"", b"", b""))


class InternationalTests(SynchronousTestCase):
    """
    UTF-8 addresses (RFC 6531, RFC 6533).
    """

    def test_utf8Recipient(self):
        """
        A UTF-8 recipient is of type C{utf-8}, written with RFC 6533's ASCII
        escapes; the text part names it as it is.
        """
        report = deliveryReport(
            [
                failed(
                    "j\u00f6rg@b\u00fccher.example",
                    originalRecipient=(b"utf-8", "J\u00f6rg+x@b\u00fccher.example".encode()),
                )
            ]
        )
        data = make(report).message
        self.assertTrue(data.isascii())
        message = parse(data)
        block = dict(statusFields(message)[1])
        self.assertEqual(block["Final-Recipient"], "utf-8;j\\x{F6}rg@b\\x{FC}cher.example")
        self.assertEqual(block["Original-Recipient"], "utf-8;J\\x{F6}rg\\x{2B}x@b\\x{FC}cher.example")
        self.assertIn("<j\u00f6rg@b\u00fccher.example>", message.get_payload()[0].get_content())

    def test_escapedOriginalKept(self):
        """
        An ORCPT already in RFC 6533's escaped form is kept so.
        """
        report = deliveryReport([failed(originalRecipient=(b"utf-8", b"j\\x{F6}rg@example.org"))])
        block = dict(statusFields(parse(make(report).message))[1])
        self.assertEqual(block["Original-Recipient"], "utf-8;j\\x{F6}rg@example.org")

    def test_utf8Sender(self):
        """
        A UTF-8 sender is the envelope recipient as it is; the C{To:} header
        stays ASCII: an RFC 2047 encoded group name for a non-ASCII local
        part, A-labels for a non-ASCII domain.
        """
        result = make(deliveryReport(sender="j\u00f6rg@b\u00fccher.example"))
        self.assertEqual(result.recipients, ["j\u00f6rg@b\u00fccher.example".encode()])
        self.assertTrue(result.message.isascii())
        message = parse(result.message)
        self.assertEqual(message["To"].defects, ())
        self.assertIn("j\u00f6rg@b\u00fccher.example", str(message["To"]))
        result = make(deliveryReport(sender="joe@b\u00fccher.example"))
        self.assertEqual(parse(result.message)["To"], "joe@xn--bcher-kva.example")

    def test_utf8ReportingMTA(self):
        """
        An internationalised reporting MTA name is given in A-labels.
        """
        message = parse(make(deliveryReport(reportingMTA="mx.b\u00fccher.example")).message)
        self.assertEqual(statusFields(message)[0][0], ("Reporting-MTA", "dns; mx.xn--bcher-kva.example"))
        self.assertEqual(message["From"].addresses[0].addr_spec, "MAILER-DAEMON@mx.xn--bcher-kva.example")

    def test_nonAsciiText(self):
        """
        The text part is quoted-printable UTF-8 when it is not ASCII.
        """
        report = deliveryReport([failed("j\u00f6rg@example.org", diagnostic="550 Unbekannter Empf\u00e4nger")])
        data = make(report).message
        part = parse(data).get_payload()[0]
        self.assertEqual(part.get_content_charset(), "utf-8")
        self.assertEqual(part["Content-Transfer-Encoding"], "quoted-printable")
        self.assertIn("said: 550 Unbekannter Empf\u00e4nger", part.get_content())


class ValidationTests(SynchronousTestCase):
    """
    Reports are checked when made.
    """

    def test_action(self):
        """
        The action must be one of RFC 3464's; case does not matter.
        """
        self.assertRaises(ValueError, RecipientReport, "b@example.org", "bounced", "5.0.0")
        self.assertEqual(RecipientReport("b@example.org", b"FAILED", b"5.0.0").action, "failed")

    def test_status(self):
        """
        The status must be an enhanced status code whose class fits the
        action.
        """
        for action, status in [("failed", "550"), ("failed", "2.0.0"), ("delivered", "5.0.0"), ("delayed", "x")]:
            self.assertRaises(ValueError, RecipientReport, "b@example.org", action, status)
        self.assertEqual(RecipientReport("b@example.org", "failed", b"4.4.7").status, "4.4.7")

    def test_willRetryUntil(self):
        """
        Will-Retry-Until is for delays only.
        """
        self.assertRaises(ValueError, RecipientReport, "b@example.org", "failed", "5.0.0", willRetryUntil=DATE)

    def test_addresses(self):
        """
        Recipients are addresses, not the null path; hosts are host names.
        """
        self.assertRaises(ValueError, RecipientReport, b"<>", "failed", "5.0.0")
        self.assertRaises(Exception, RecipientReport, b"not an address@", "failed", "5.0.0")
        self.assertRaises(ValueError, failed, remoteMTA="mx.example.org\r\nX: y")
        self.assertRaises(ValueError, deliveryReport, reportingMTA="bad host")

    def test_report(self):
        """
        RET is FULL or HDRS; recipients are L{RecipientReport}s; dates are
        dates.
        """
        self.assertRaises(ValueError, deliveryReport, ret="ALL")
        self.assertRaises(TypeError, deliveryReport, recipients=["bob@example.org"])
        self.assertRaises(TypeError, deliveryReport, arrivalDate=object())
        self.assertRaises(ValueError, deliveryReport, arrivalDate="Mon,\r\n 1 Jan")
        self.assertRaises(TypeError, failed, diagnostic=550)


class GenerateBounceTests(SynchronousTestCase):
    """
    L{generateBounce}, twisted.mail's function made on RFC 3464.
    """

    def test_signature(self):
        """
        The signature is twisted.mail.bounce.generateBounce's.
        """
        from twisted.mail.bounce import generateBounce as theirs

        self.assertEqual(inspect.signature(generateBounce), inspect.signature(theirs))

    def test_result(self):
        """
        The result is C{(b"", failedFrom, report)}, from L{bytes} or L{str}
        arguments alike.
        """
        for args in [
            (io.BytesIO(ORIGINAL), b"alice@example.com", b"bob@example.org"),
            (io.StringIO(ORIGINAL.decode()), "alice@example.com", "bob@example.org"),
        ]:
            sender, recipient, data = generateBounce(*args)
            self.assertEqual(sender, b"")
            self.assertEqual(recipient, b"alice@example.com")
            message = parse(data)
            self.assertEqual(message.get_content_type(), "multipart/report")
            self.assertEqual(message["To"], "alice@example.com")
            self.assertEqual(message["Subject"], "Undelivered Mail Returned to Sender")
            self.assertIsNone(_BARE_LINE_END.search(data))
            self.assertEqual(
                [part.get_content_type() for part in message.iter_parts()],
                ["text/plain", "message/delivery-status", "message/rfc822"],
            )
            self.assertEqual(rawParts(data, message.get_boundary())[1][2][1], ORIGINAL)
            fields = statusFields(message)
            self.assertEqual(fields[0][0][0], "Reporting-MTA")
            self.assertEqual(
                fields[1], [("Final-Recipient", "rfc822;bob@example.org"), ("Action", "failed"), ("Status", "5.0.0")]
            )

    def test_displayNames(self):
        """
        Addresses with display names, as twisted.mail takes them, are
        reduced to the address.
        """
        _, recipient, data = generateBounce(io.BytesIO(ORIGINAL), "Alice <alice@example.com>", "Bob <bob@example.org>")
        self.assertEqual(recipient, b"Alice <alice@example.com>")
        message = parse(data)
        self.assertEqual(message["To"], "alice@example.com")
        self.assertEqual(dict(statusFields(message)[1])["Final-Recipient"], "rfc822;bob@example.org")

    def test_transcriptStatus(self):
        """
        The first failure reply in the transcript gives the status and the
        diagnostic; the transcript is shown in the text part.
        """
        transcript = b"MAIL FROM:<alice@example.com>\n250 2.1.0 Ok\n550-5.1.1 No such\n550 5.1.1 user here\n"
        data = generateBounce(io.BytesIO(ORIGINAL), b"alice@example.com", b"bob@example.org", transcript)[2]
        message = parse(data)
        block = dict(statusFields(message)[1])
        self.assertEqual(block["Status"], "5.1.1")
        self.assertEqual(block["Diagnostic-Code"], "smtp; 550 5.1.1 No such user here")
        text = message.get_payload()[0].get_content()
        self.assertIn("550-5.1.1 No such", text)
        self.assertIn("MAIL FROM:<alice@example.com>", text)

    def test_transcriptCodeOnly(self):
        """
        A reply without an enhanced status gives the class's X.0.0; one
        whose status does not fit its code gives the code's class.
        """
        for transcript, status in [
            ("452 Too many recipients", "4.0.0"),
            ("554 Transaction failed", "5.0.0"),
            ("550 4.2.2 mailbox full", "5.0.0"),
        ]:
            data = generateBounce(io.BytesIO(ORIGINAL), "a@example.com", "b@example.org", transcript)[2]
            block = dict(statusFields(parse(data))[1])
            self.assertEqual(block["Status"], status, transcript)
            self.assertEqual(block["Diagnostic-Code"], "smtp; " + transcript)

    def test_transcriptWithoutCode(self):
        """
        A transcript without a reply gives 5.0.0 and no Diagnostic-Code.
        """
        data = generateBounce(io.BytesIO(ORIGINAL), "a@example.com", "b@example.org", "Custom transcript")[2]
        message = parse(data)
        self.assertEqual(
            statusFields(message)[1],
            [("Final-Recipient", "rfc822;b@example.org"), ("Action", "failed"), ("Status", "5.0.0")],
        )
        self.assertIn("Custom transcript", message.get_payload()[0].get_content())

    def test_bigMessage(self):
        """
        A message larger than the default limit is returned as headers.
        """
        big = HEADERS.decode() + "\n" + "Test test\n" * 20000
        data = generateBounce(io.StringIO(big), "a@example.com", "b@example.org")[2]
        message = parse(data)
        self.assertEqual(message.get_payload()[2].get_content_type(), "text/rfc822-headers")
        self.assertEqual(rawParts(data, message.get_boundary())[1][2][1], HEADERS)


# Strategies for the property tests: messages built of arbitrary octets,
# with line ends of every kind and bits that look like MIME boundaries.
_tricky = st.sampled_from(
    [b"\r\n", b"\n", b"\r", b"--", b"--=_mailproto_dsn_", b"\r\n--" + BOUNDARY.encode(), b"\r\n\r\n", b"\x00", b"\xff"]
)
_chunks = st.lists(st.one_of(st.binary(max_size=40), _tricky), max_size=12).map(b"".join)
_headerLines = st.lists(
    st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=60)).map(lambda nv: nv[0] + b": " + nv[1]),
    max_size=6,
)
_originals = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda headers, end, body: end.join(headers) + end + end + body,
        _headerLines,
        st.sampled_from([b"\r\n", b"\n", b"\r"]),
        _chunks,
    ),
)


class PropertyTests(SynchronousTestCase):
    """
    Whatever the original message holds, the report's MIME structure
    stands.
    """

    @given(
        original=_originals,
        ret=st.sampled_from([None, "FULL", "HDRS"]),
        limit=st.one_of(st.none(), st.integers(min_value=0, max_value=400)),
    )
    def test_structure(self, original, ret, limit):
        """
        The report parses as a C{multipart/report} of exactly three parts,
        with CRLF line ends only, an ASCII header section, the boundary
        closed once, and the returned content exactly the original (line
        ends made CRLF) or its header section.
        """
        result = makeReport(deliveryReport(message=original, ret=ret), returnLimit=limit)
        data = result.message
        self.assertIsNone(_BARE_LINE_END.search(data))
        self.assertTrue(data[: data.index(b"\r\n\r\n")].isascii())

        message = parse(data)
        boundary = message.get_boundary()
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "delivery-status")
        self.assertEqual(message.defects, [])
        parts = message.get_payload()
        self.assertEqual(len(parts), 3)
        self.assertEqual(parts[0].get_content_type(), "text/plain")
        self.assertEqual(parts[1].get_content_type(), "message/delivery-status")
        self.assertEqual(dict(statusFields(message)[1])["Final-Recipient"], "rfc822;bob@example.org")

        lines = data.split(b"\r\n")
        self.assertEqual(lines.count(b"--" + boundary.encode()), 3)
        self.assertEqual(lines.count(b"--" + boundary.encode() + b"--"), 1)
        self.assertTrue(data.endswith(b"\r\n--" + boundary.encode() + b"--\r\n"))

        cut = original if limit is None else original[:limit]
        normal = re.sub(rb"\r\n|\r|\n", b"\r\n", cut)
        complete = limit is None or len(original) <= limit
        if ret != "HDRS" and complete:
            expectedType, expected = "message/rfc822", normal
        else:
            expectedType = "text/rfc822-headers"
            end = normal.find(b"\r\n\r\n")
            if normal.startswith(b"\r\n"):
                expected = b""
            elif end >= 0:
                expected = normal[: end + 2]
            elif complete:
                expected = normal
            else:
                expected = normal[: normal.rfind(b"\r\n") + 2]
        if expected and not expected.endswith(b"\r\n"):
            expected += b"\r\n"
        self.assertEqual(parts[2].get_content_type(), expectedType)
        self.assertEqual(rawParts(data, boundary)[1][2][1], expected)
