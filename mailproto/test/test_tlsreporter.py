# -*- test-case-name: mailproto.test.test_tlsreporter -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._security._tlsreporter}: the daily SMTP TLS
Reporting (RFC 8460) service against a real DNS server and real HTTPS
servers on loopback.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json

from twisted.internet import defer, reactor, ssl, task
from twisted.logger import capturedLogs
from twisted.names import client, dns
from twisted.names import error as dnserror
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from mailproto._security._tlsreporter import TLSReporter
from mailproto._security._tlsrptstore import TLSReportStore
from mailproto.test._dnsserver import DNSServer
from mailproto.test._loopback import noConnectionsLeft
from mailproto.test._peers import missing
from mailproto.test.test_tlsrptreport import validator
from mailproto.test.test_tlsrptstore import DAY, DAY_START, EXPIRED, NEXT_DAY, NONE, OK, STS, newStore

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None


class _Recorder(resource.Resource):
    """
    An HTTPS report address: records each POST and answers with C{code},
    or never answers if C{code} is C{None}.
    """

    isLeaf = True

    def __init__(self, code=200):
        resource.Resource.__init__(self)
        self.code = code
        self.requests = []
        self.arrived = defer.Deferred()
        self.pending = []

    def render_POST(self, request):
        self.requests.append((request.path, request.requestHeaders.getRawHeaders(b"content-type"), request.content.read()))
        if not self.arrived.called:
            self.arrived.callback(None)
        if self.code is None:
            self.pending.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"thanks\n"


class _Submit:
    """
    A C{submit} function that records its calls and answers as told.
    """

    def __init__(self):
        self.calls = []
        self.fail = False
        self.waiting = None

    def __call__(self, sender, recipients, message):
        self.calls.append((sender, recipients, message))
        if self.waiting is not None:
            return self.waiting
        if self.fail:
            return defer.fail(RuntimeError("queue full"))
        return defer.succeed(None)


class ReporterTests(TestCase):
    """
    L{TLSReporter} against a real DNS server, real HTTPS servers with
    trustme certificates, and a recording C{submit}.
    """

    timeout = 20

    def setUp(self):
        self.dns = DNSServer()
        self.addCleanup(self.dns.stop)
        self.resolver = client.Resolver(servers=[self.dns.start(reactor)], reactor=reactor)
        self.clock = task.Clock()
        self.clock.advance(DAY_START + 3600)
        self.store = newStore(self, self.clock)
        self.submit = _Submit()
        self.agent = None

    def reporter(self, **kw):
        options = {
            "organization": "Sender Org",
            "submitter": "mail.sender.example",
            "contact": "postmaster@sender.example",
            "fromAddress": "tlsrpt@sender.example",
            "clock": self.clock,
            "agent": self.agent,
        }
        options.update(kw)
        return TLSReporter(self.store, self.resolver, self.submit, **options)

    def recordYesterday(self):
        """
        Count sessions to example.com and example.net on L{DAY}, then move
        to the next day.
        """
        for result in [OK, OK, EXPIRED]:
            self.store.record(STS, result)
        self.store.record(NONE, OK)
        self.clock.advance(86400)

    def rua(self, domain, *uris):
        self.dns.add(f"_smtp._tls.{domain}", dns.Record_TXT(("v=TLSRPTv1; rua=" + ",".join(uris)).encode()))

    def https(self, code=200, trusted=True):
        """
        Start an HTTPS report address on 127.0.0.1.

        @return: its recorder and URL.
        """
        if trustme is None:
            missing("trustme is not installed")
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        options = ssl.PrivateCertificate.loadPEM(leaf.private_key_and_cert_chain_pem.bytes()).options()
        recorder = _Recorder(code)
        port = reactor.listenSSL(0, server.Site(recorder), options, interface="127.0.0.1")
        self.addCleanup(noConnectionsLeft, self)
        self.addCleanup(port.stopListening)
        trust = ca if trusted else trustme.CA()
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(trust.cert_pem.bytes()))
        self.agent = Agent(reactor, contextFactory=policy)
        return recorder, f"https://127.0.0.1:{port.getHost().port}/tlsrpt"

    @defer.inlineCallbacks
    def test_mailto(self):
        """
        A domain with a mailto address gets its report through C{submit}
        from the configured sender; a domain without a TLSRPT record gets
        none; both are forgotten; today's counts are not reported.
        """
        self.rua("example.com", "mailto:tlsrpt@example.com", "mailto:other@example.com")
        self.recordYesterday()
        self.store.record(STS, OK)
        reporter = self.reporter()
        yield reporter.runNow()
        [(sender, recipients, wire)] = self.submit.calls
        self.assertEqual(sender, b"tlsrpt@sender.example")
        self.assertEqual(recipients, [b"tlsrpt@example.com", b"other@example.com"])
        message = email.message_from_bytes(wire, policy=email.policy.default)
        self.assertEqual(message["TLS-Report-Domain"], "example.com")
        self.assertEqual(message["To"], "tlsrpt@example.com, other@example.com")
        _, attachment = message.iter_parts()
        report = json.loads(gzip.decompress(attachment.get_content()))
        validator().validate(report)
        self.assertEqual(report["report-id"], "2024-03-10.example.com@mail.sender.example")
        self.assertEqual(report["organization-name"], "Sender Org")
        self.assertEqual(report["contact-info"], "postmaster@sender.example")
        self.assertEqual(report["policies"][0]["summary"], {"total-successful-session-count": 2, "total-failure-session-count": 1})
        self.assertEqual(self.store.days(), [NEXT_DAY])
        self.assertEqual(reporter.stats["handed-over"], 1)
        self.assertEqual(reporter.stats["no-rua"], 1)
        self.assertEqual(reporter.stats["mailto-sent"], 1)
        self.assertIn((b"_smtp._tls.example.com", dns.TXT, False), self.dns.queries)
        self.assertIn((b"_smtp._tls.example.net", dns.TXT, False), self.dns.queries)
        self.assertEqual(TLSReportStore(self.store.directory, self.clock).days(), [NEXT_DAY])

    @defer.inlineCallbacks
    def test_submitFails(self):
        """
        If C{submit} fails the day is kept, and sent at a later run; after
        C{keepDays} days it is given up.
        """
        self.rua("example.com", "mailto:tlsrpt@example.com")
        self.recordYesterday()
        self.submit.fail = True
        reporter = self.reporter(keepDays=2)
        yield reporter.runNow()
        self.assertEqual(len(self.submit.calls), 1)
        self.assertEqual(self.store.domains(DAY), ["example.com"])
        self.assertEqual(reporter.stats["mailto-failed"], 1)
        self.assertEqual(reporter.stats["kept"], 1)
        self.clock.advance(86400)
        with capturedLogs() as events:
            yield reporter.runNow()
        self.assertEqual(len(self.submit.calls), 2)
        self.assertEqual(self.store.days(), [])
        self.assertEqual(reporter.stats["given-up"], 1)
        self.assertTrue(any("given up" in e["log_format"] for e in events))

    @defer.inlineCallbacks
    def test_submitRetried(self):
        """
        A report kept after a failure goes out at the next run, with the
        same report-id.
        """
        self.rua("example.com", "mailto:tlsrpt@example.com")
        self.recordYesterday()
        self.submit.fail = True
        reporter = self.reporter()
        yield reporter.runNow()
        self.submit.fail = False
        self.clock.advance(86400)
        yield reporter.runNow()
        first, second = [email.message_from_bytes(call[2])["Subject"] for call in self.submit.calls]
        self.assertEqual(first, second)
        self.assertEqual(self.store.days(), [])
        self.assertEqual(reporter.stats["handed-over"], 1)

    @defer.inlineCallbacks
    def test_dnsFails(self):
        """
        A TLSRPT lookup that fails for a reason other than the name not
        existing keeps the day.
        """
        self.recordYesterday()

        class Failing:
            def lookupText(self, name):
                return defer.fail(dnserror.DNSServerError(name))

        self.resolver = Failing()
        reporter = self.reporter()
        yield reporter.runNow()
        self.assertEqual(self.store.domains(DAY), ["example.com", "example.net"])
        self.assertEqual(reporter.stats["dns-failed"], 2)
        self.assertEqual(self.submit.calls, [])

    @defer.inlineCallbacks
    def test_https(self):
        """
        An https address receives the gzipped JSON by POST with the
        C{application/tlsrpt+gzip} type; a 2xx answer hands the report
        over.
        """
        recorder, url = self.https(200)
        self.rua("example.com", url)
        self.recordYesterday()
        reporter = self.reporter()
        yield reporter.runNow()
        [(path, contentType, body)] = recorder.requests
        self.assertEqual(path, b"/tlsrpt")
        self.assertEqual(contentType, [b"application/tlsrpt+gzip"])
        report = json.loads(gzip.decompress(body))
        validator().validate(report)
        self.assertEqual(report["policies"][0]["policy"]["policy-domain"], "example.com")
        self.assertEqual(self.store.days(), [])
        self.assertEqual(reporter.stats["https-sent"], 1)
        self.assertEqual(self.submit.calls, [])

    @defer.inlineCallbacks
    def test_httpsError(self):
        """
        An https address answering 500 does not take the report: the day
        is kept.
        """
        recorder, url = self.https(500)
        self.rua("example.com", url)
        self.recordYesterday()
        reporter = self.reporter()
        yield reporter.runNow()
        self.assertEqual(len(recorder.requests), 1)
        self.assertEqual(self.store.domains(DAY), ["example.com"])
        self.assertEqual(reporter.stats["https-failed"], 1)

    @defer.inlineCallbacks
    def test_httpsUntrusted(self):
        """
        An https address whose certificate is not trusted gets nothing:
        the day is kept.
        """
        recorder, url = self.https(200, trusted=False)
        self.rua("example.com", url)
        self.recordYesterday()
        reporter = self.reporter()
        yield reporter.runNow()
        self.assertEqual(recorder.requests, [])
        self.assertEqual(self.store.domains(DAY), ["example.com"])
        self.assertEqual(reporter.stats["https-failed"], 1)

    @defer.inlineCallbacks
    def test_httpsNoAnswer(self):
        """
        An https address that never answers is given up after
        C{postTimeout}: the day is kept.
        """
        recorder, url = self.https(None)
        self.rua("example.com", url)
        self.recordYesterday()
        reporter = self.reporter(postTimeout=30)
        done = reporter.runNow()
        yield recorder.arrived
        self.clock.advance(29)
        self.assertFalse(done.called)
        self.clock.advance(1)
        yield done
        self.assertEqual(self.store.domains(DAY), ["example.com"])
        self.assertEqual(reporter.stats["https-failed"], 1)

    @defer.inlineCallbacks
    def test_mixed(self):
        """
        With a mailto and an https address, the report goes to both; if
        either fails, the day is kept.
        """
        recorder, url = self.https(500)
        self.rua("example.com", "mailto:tlsrpt@example.com", url)
        self.recordYesterday()
        reporter = self.reporter()
        yield reporter.runNow()
        self.assertEqual(len(self.submit.calls), 1)
        self.assertEqual(len(recorder.requests), 1)
        self.assertEqual(self.store.domains(DAY), ["example.com"])
        recorder.code = 204
        self.clock.advance(86400)
        yield reporter.runNow()
        self.assertEqual(self.store.days(), [])

    @defer.inlineCallbacks
    def test_daily(self):
        """
        Started, the reporter runs after the next midnight UTC plus its
        delay, then daily; stopped, it runs no more.
        """
        self.rua("example.com", "mailto:tlsrpt@example.com")
        for result in [OK, EXPIRED]:
            self.store.record(STS, result)
        reporter = self.reporter(delay=lambda: 300)
        reporter.startService()
        self.assertEqual(reporter.nextRun, DAY_START + 86400 + 300)
        self.clock.advance(DAY_START + 86400 + 299 - self.clock.seconds())
        self.assertEqual(reporter.stats["runs"], 0)
        self.clock.advance(1)
        self.assertEqual(reporter.stats["runs"], 1)
        self.assertEqual(reporter.nextRun, DAY_START + 2 * 86400 + 300)
        yield reporter.runNow()
        self.assertEqual(reporter.stats["runs"], 1)
        self.assertEqual(len(self.submit.calls), 1)
        self.assertEqual(self.store.days(), [])
        reporter.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_runJoined(self):
        """
        C{runNow} during a run joins it: one report, both fire.
        """
        self.rua("example.com", "mailto:tlsrpt@example.com")
        self.recordYesterday()
        self.submit.waiting = defer.Deferred()
        reporter = self.reporter()
        first = reporter.runNow()
        second = reporter.runNow()
        for _ in range(200):
            if self.submit.calls:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(first.called or second.called)
        self.submit.waiting.callback(None)
        yield defer.gatherResults([first, second])
        self.assertEqual(len(self.submit.calls), 1)
        self.assertEqual(reporter.stats["runs"], 1)
        self.assertEqual(self.store.days(), [])
