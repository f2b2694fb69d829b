# -*- test-case-name: mailproto.test.test_tlsrptreport -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._security._tlsrptreport}: the SMTP TLS Reporting
(RFC 8460) report, checked against the report's JSON schema, its email,
its file name, and the TLSRPT record, parsed and looked up in a real DNS
server on loopback.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import os

from twisted.internet import defer, reactor, task
from twisted.names import client, dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._security._tlsrptreport import (
    buildReport,
    lookupRUA,
    makeReportID,
    parseRUA,
    reportFilename,
    reportJSON,
    reportMessage,
)
from mailproto._security._tlsrptstore import (
    OVERFLOW_REASON,
    PolicyDescription,
    PolicyEntry,
    SessionResult,
    TLSReportStore,
)
from mailproto.test._dnsserver import DNSServer
from mailproto.test._peers import missing
from mailproto.test.test_tlsrptstore import DAY, DAY_START, EXPIRED, NO_STARTTLS, NONE, OK, STS

try:
    import jsonschema
except ImportError:  # pragma: no cover
    jsonschema = None

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "tlsrpt-schema.json")


def validator():
    """
    @return: a draft 2020-12 validator of the report schema, checking
        formats; the test is skipped (or failed, when peers are required)
        without jsonschema.
    """
    if jsonschema is None:
        missing("jsonschema is not installed")
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _entries():
    return [
        PolicyEntry(STS, 3, ((EXPIRED, 2), (NO_STARTTLS, 1))),
        PolicyEntry(PolicyDescription("no-policy-found", (), "example.com", ()), 5, ()),
    ]


class ReportTests(SynchronousTestCase):
    """
    L{buildReport} makes RFC 8460 section 4.4's report.
    """

    def test_report(self):
        """
        Every field, exactly; optional fields without a value left out;
        valid by the schema.
        """
        reportID = makeReportID(DAY, "example.com", "Mail.Sender.example.")
        self.assertEqual(reportID, "2024-03-10.example.com@mail.sender.example")
        report = buildReport("Sender Org", "postmaster@sender.example", reportID, DAY, _entries())
        expected = {
            "organization-name": "Sender Org",
            "date-range": {"start-datetime": "2024-03-10T00:00:00Z", "end-datetime": "2024-03-10T23:59:59Z"},
            "contact-info": "postmaster@sender.example",
            "report-id": "2024-03-10.example.com@mail.sender.example",
            "policies": [
                {
                    "policy": {
                        "policy-type": "sts",
                        "policy-string": ["version: STSv1", "mode: enforce", "mx: mx1.example.com", "max_age: 86400"],
                        "policy-domain": "example.com",
                        "mx-host": ["mx1.example.com"],
                    },
                    "summary": {"total-successful-session-count": 3, "total-failure-session-count": 3},
                    "failure-details": [
                        {
                            "result-type": "certificate-expired",
                            "sending-mta-ip": "192.0.2.1",
                            "receiving-mx-hostname": "mx1.example.com",
                            "receiving-mx-helo": "mx1.example.com",
                            "receiving-ip": "2001:db8::25",
                            "failed-session-count": 2,
                            "additional-information": "https://reports.example/details/1",
                            "failure-reason-code": "X509_V_ERR_CERT_HAS_EXPIRED",
                        },
                        {
                            "result-type": "starttls-not-supported",
                            "sending-mta-ip": "192.0.2.1",
                            "receiving-mx-hostname": "mx1.example.com",
                            "receiving-ip": "198.51.100.25",
                            "failed-session-count": 1,
                        },
                    ],
                },
                {
                    "policy": {"policy-type": "no-policy-found", "policy-domain": "example.com"},
                    "summary": {"total-successful-session-count": 5, "total-failure-session-count": 0},
                },
            ],
        }
        self.assertEqual(report, expected)
        self.assertEqual(list(report), ["organization-name", "date-range", "contact-info", "report-id", "policies"])
        validator().validate(report)

    def test_fromStore(self):
        """
        A report of a store's entries, overflow groups included, is valid.
        """
        clock = task.Clock()
        clock.advance(DAY_START)
        store = TLSReportStore(self.mktemp(), clock, maxFailureGroups=1)
        for result in [EXPIRED, NO_STARTTLS, SessionResult(False, "sts-policy-fetch-error"), OK]:
            store.record(STS, result)
        report = buildReport("o", "a@b.example", "id@b.example", DAY, store.entries(DAY, "example.com"))
        validator().validate(report)
        details = report["policies"][0]["failure-details"]
        self.assertEqual(sum(d["failed-session-count"] for d in details), 3)
        self.assertIn({"result-type": "sts-policy-fetch-error", "failed-session-count": 1, "failure-reason-code": OVERFLOW_REASON}, details)
        store.close()

    def test_oneDomain(self):
        """
        A report is about one policy domain: no entries, or entries of two
        domains, are refused; so is a day that is not one.
        """
        self.assertRaises(ValueError, buildReport, "o", "a@b.example", "id", DAY, [])
        entries = [PolicyEntry(STS, 1, ()), PolicyEntry(NONE, 1, ())]
        self.assertRaises(ValueError, buildReport, "o", "a@b.example", "id", DAY, entries)
        self.assertRaises(ValueError, buildReport, "o", "a@b.example", "id", "10/03/2024", entries[:1])

    def test_schemaRejects(self):
        """
        The schema can fail: each of these broken reports is invalid.
        """
        check = validator()
        good = buildReport("o", "a@b.example", "id@b.example", DAY, _entries())
        check.validate(good)

        def broken(change):
            report = json.loads(json.dumps(good))
            change(report)
            return report

        cases = {
            "no report-id": lambda r: r.pop("report-id"),
            "no policies": lambda r: r.update(policies=[]),
            "date-time without zone": lambda r: r["date-range"].update({"start-datetime": "2024-03-10T00:00:00"}),
            "date-time with a space": lambda r: r["date-range"].update({"end-datetime": "2024-03-10 23:59:59Z"}),
            "unknown result type": lambda r: r["policies"][0]["failure-details"][0].update({"result-type": "certificate-revoked"}),
            "unknown policy type": lambda r: r["policies"][0]["policy"].update({"policy-type": "dane"}),
            "negative count": lambda r: r["policies"][0]["summary"].update({"total-successful-session-count": -1}),
            "count as text": lambda r: r["policies"][0]["summary"].update({"total-failure-session-count": "3"}),
            "mx-host as one string": lambda r: r["policies"][0]["policy"].update({"mx-host": "mx1.example.com"}),
            "no failed-session-count": lambda r: r["policies"][0]["failure-details"][0].pop("failed-session-count"),
            "bad sending IP": lambda r: r["policies"][0]["failure-details"][0].update({"sending-mta-ip": "192.0.2.999"}),
            "misspelt member": lambda r: r["policies"][0]["summary"].update({"total-success-session-count": 1}),
            "contact not an address": lambda r: r.update({"contact-info": "postmaster"}),
            "no summary": lambda r: r["policies"][1].pop("summary"),
        }
        for name, change in cases.items():
            errors = list(check.iter_errors(broken(change)))
            self.assertTrue(errors, f"schema accepts a report with {name}")


class MessageTests(SynchronousTestCase):
    """
    L{reportMessage} makes RFC 8460 section 5.3's email.
    """

    def setUp(self):
        self.report = buildReport(
            "Sender Org", "postmaster@sender.example", makeReportID(DAY, "example.com", "mail.sender.example"), DAY, _entries()
        )
        self.wire = reportMessage(
            self.report, "mail.sender.example", "tlsrpt@sender.example", ["a@example.com", "b@example.com"], now=DAY_START + 90000
        )
        self.message = email.message_from_bytes(self.wire, policy=email.policy.default)

    def test_wire(self):
        """
        Every line ends in CRLF and fits SMTP's line limit.
        """
        self.assertTrue(self.wire.endswith(b"\r\n"))
        self.assertNotIn(b"\n", self.wire.replace(b"\r\n", b""))
        self.assertNotIn(b"\r", self.wire.replace(b"\r\n", b""))
        self.assertTrue(all(len(line) <= 998 for line in self.wire.split(b"\r\n")))
        self.assertTrue(self.wire.isascii())

    def test_headers(self):
        """
        The header fields RFC 8460 section 5.3 asks for, and those that
        keep the report from loops and from TLS policy failures.
        """
        m = self.message
        self.assertEqual(m["From"], "tlsrpt@sender.example")
        self.assertEqual(m["To"], "a@example.com, b@example.com")
        self.assertEqual(
            m["Subject"], "Report Domain: example.com Submitter: mail.sender.example Report-ID: <2024-03-10.example.com@mail.sender.example>"
        )
        self.assertEqual(m["TLS-Report-Domain"], "example.com")
        self.assertEqual(m["TLS-Report-Submitter"], "mail.sender.example")
        self.assertEqual(m["MIME-Version"], "1.0")
        self.assertEqual(m["Auto-Submitted"], "auto-generated")
        self.assertEqual(m["TLS-Required"], "No")
        self.assertEqual(m["Date"].datetime.timestamp(), DAY_START + 90000)
        self.assertRegex(m["Message-ID"], r"^<[0-9a-f]{32}@mail\.sender\.example>$")
        again = reportMessage(self.report, "mail.sender.example", "tlsrpt@sender.example", ["a@example.com"], now=0)
        self.assertNotEqual(email.message_from_bytes(again)["Message-ID"], m["Message-ID"])

    def test_structure(self):
        """
        A multipart/report of type tlsrpt: a text, then the gzipped JSON
        named as section 5.1 says, which is the report.
        """
        m = self.message
        self.assertEqual(m.get_content_type(), "multipart/report")
        self.assertEqual(m.get_param("report-type"), "tlsrpt")
        text, attachment = m.iter_parts()
        self.assertEqual(text.get_content_type(), "text/plain")
        self.assertIn("Report-ID: <2024-03-10.example.com@mail.sender.example>", text.get_content())
        self.assertIn("Policy sts: 3 successful sessions, 3 failed sessions.", text.get_content())
        self.assertEqual(attachment.get_content_type(), "application/tlsrpt+gzip")
        self.assertEqual(attachment.get_content_disposition(), "attachment")
        begin, end = DAY_START, DAY_START + 86399
        self.assertEqual(attachment.get_filename(), f"mail.sender.example!example.com!{begin}!{end}.json.gz")
        self.assertIn(f'filename="mail.sender.example!example.com!{begin}!{end}.json.gz"'.encode(), self.wire)
        self.assertEqual(json.loads(gzip.decompress(attachment.get_content())), self.report)
        self.assertEqual(gzip.decompress(reportJSON(self.report)), gzip.decompress(attachment.get_content()))

    def test_uniqueID(self):
        """
        A unique ID goes at the end of the file name; it must be letters
        and digits.
        """
        wire = reportMessage(self.report, "mail.sender.example", "t@sender.example", ["a@example.com"], now=0, uniqueID="001")
        _, attachment = email.message_from_bytes(wire, policy=email.policy.default).iter_parts()
        self.assertTrue(attachment.get_filename().endswith(f"!{DAY_START + 86399}!001.json.gz"))
        self.assertRaises(ValueError, reportFilename, "s.example", "example.com", 0, 1, "0-1")

    def test_oneDomain(self):
        """
        A report of several domains is refused.
        """
        report = json.loads(json.dumps(self.report))
        report["policies"][1]["policy"]["policy-domain"] = "example.net"
        self.assertRaises(ValueError, reportMessage, report, "s.example", "t@s.example", ["a@example.com"], now=0)


class ParseRUATests(SynchronousTestCase):
    """
    L{parseRUA} reads the TLSRPT TXT record (RFC 8460 section 3).
    """

    def test_valid(self):
        """
        The URIs of the C{rua} field, mailto and https, in order.
        """
        record = "v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://reports.example.com/tlsrpt"
        self.assertEqual(parseRUA([record]), ["mailto:tlsrpt@example.com", "https://reports.example.com/tlsrpt"])

    def test_spacing(self):
        """
        Spaces around the separators and a final semicolon are allowed;
        unknown fields are ignored.
        """
        record = b"v=TLSRPTv1 ;  rua=mailto:a@example.com , mailto:b@example.com ; ext=1;"
        self.assertEqual(parseRUA([record]), ["mailto:a@example.com", "mailto:b@example.com"])

    def test_strings(self):
        """
        A record's character-strings are joined without separators.
        """
        self.assertEqual(parseRUA([[b"v=TLSRPTv1;rua=mailto:tls", b"rpt@example.com"]]), ["mailto:tlsrpt@example.com"])

    def test_otherRecords(self):
        """
        TXT records that are not TLSRPT records are ignored.
        """
        records = [[b"v=spf1 -all"], [b"v=TLSRPTv1;rua=mailto:a@example.com"], [b"\xff\xfe"], [b"v=TLSRPTv10;rua=mailto:b@example.com"]]
        self.assertEqual(parseRUA(records), ["mailto:a@example.com"])

    def test_severalRecords(self):
        """
        Two TLSRPT records: the domain asks for no report.
        """
        records = ["v=TLSRPTv1;rua=mailto:a@example.com", "v=TLSRPTv1;rua=mailto:b@example.com"]
        self.assertEqual(parseRUA(records), [])

    def test_missingVersion(self):
        """
        Without C{v=TLSRPTv1} first, exactly so, there is no record.
        """
        for record in [
            "rua=mailto:a@example.com",
            "rua=mailto:a@example.com; v=TLSRPTv1",
            "V=TLSRPTv1; rua=mailto:a@example.com",
            "v=tlsrptv1; rua=mailto:a@example.com",
            " v=TLSRPTv1; rua=mailto:a@example.com",
        ]:
            self.assertEqual(parseRUA([record]), [], record)

    def test_noRUA(self):
        """
        A record without C{rua}, or only with unusable URIs, asks for
        nothing.
        """
        self.assertEqual(parseRUA(["v=TLSRPTv1"]), [])
        self.assertEqual(parseRUA(["v=TLSRPTv1;"]), [])
        self.assertEqual(parseRUA(["v=TLSRPTv1; ruf=mailto:a@example.com"]), [])
        self.assertEqual(parseRUA(["v=TLSRPTv1; rua="]), [])

    def test_badURIs(self):
        """
        Only mailto URIs of one well-formed address and https URLs with a
        host are kept.
        """
        bad = [
            "http://reports.example.com/",
            "ftp://reports.example.com/",
            "mailto:",
            "mailto:nobody",
            "mailto:a b@example.com",
            "mailto:a@exa_mple..com",
            "https:reports.example.com",
            "https:///path",
            "https://reports.example.com:99999/",
            "https://reports.exa mple.com/",
            "https://réports.example.com/",
            "reports@example.com",
            "mailto:a!b@example.com",
        ]
        record = "v=TLSRPTv1; rua=" + ",".join(bad + ["mailto:good@example.com"])
        self.assertEqual(parseRUA([record]), ["mailto:good@example.com"])

    def test_normalized(self):
        """
        Schemes and mail domains are lower case, percent-encoding and
        header fields of a mailto URI are undone, duplicates dropped.
        """
        record = "v=TLSRPTv1; rua=MAILTO:tls%2Brpt@EXAMPLE.com?subject=x,mailto:tls+rpt@example.com,HTTPS://r.example/a"
        self.assertEqual(parseRUA([record]), ["mailto:tls+rpt@example.com", "https://r.example/a"])

    def test_sizeLimitStripped(self):
        """
        A DMARC-style size limit is stripped.
        """
        record = "v=TLSRPTv1; rua=mailto:a@example.com!10m,https://r.example/x!50"
        self.assertEqual(parseRUA([record]), ["mailto:a@example.com", "https://r.example/x"])



class LookupRUATests(TestCase):
    """
    L{lookupRUA} against a real DNS server.
    """

    timeout = 20

    def setUp(self):
        self.dns = DNSServer()
        self.addCleanup(self.dns.stop)
        self.resolver = client.Resolver(servers=[self.dns.start(reactor)], reactor=reactor)

    @defer.inlineCallbacks
    def test_lookupRUA(self):
        """
        L{lookupRUA} reads the record from the DNS: nothing for a name that
        does not exist or has no TXT record.
        """
        self.dns.add("_smtp._tls.example.com", dns.Record_TXT(b"v=TLSRPTv1; rua=mailto:tlsrpt@example.com"))
        self.dns.add("_smtp._tls.example.org", dns.Record_A("192.0.2.1"))
        self.assertEqual((yield lookupRUA(self.resolver, "Example.COM.")), ["mailto:tlsrpt@example.com"])
        self.assertEqual((yield lookupRUA(self.resolver, "example.org")), [])
        self.assertEqual((yield lookupRUA(self.resolver, "example.net")), [])
