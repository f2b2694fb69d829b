# -*- test-case-name: mailproto.test.test_outboundoptions -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay daemon's outbound security options (L{mailproto._relayd._outbound}):
each bad value refused in one line naming its option, and what the
relay is built with from good ones.
"""

from __future__ import annotations

import os

import trustme
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mailproto._relayd._daemon import Options, makeService
from mailproto._security._dns import SecureLookup
from mailproto._security._mtasts import MTASTSPolicies
from mailproto._security._tlsrptstore import TLSReportStore


def _parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(list(arguments))
    return options


class OptionsTests(SynchronousTestCase):
    """
    Parsing and checking the outbound security options.
    """

    def setUp(self):
        self.spool = self.mktemp()

    def parse(self, *arguments: str) -> Options:
        return _parse("--spool", self.spool, "--hostname", "relay.example", *arguments)

    def refused(self, *arguments: str) -> str:
        error = self.assertRaises(usage.UsageError, self.parse, *arguments)
        message = str(error)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self):
        """
        Without options: C{auto} for every domain, the system's DNS servers
        and authorities.
        """
        options = self.parse()
        self.assertEqual(
            (options["default-tls-policy"], options["tls-policies"], options["dns-servers"], options["tls-trust"]),
            ("auto", {}, [], None),
        )

    def test_policies(self):
        """
        C{--tls-policy} repeats; domains are keyed as the relay groups
        mail (lower case, no root dot, IDNA); modes are case-blind.
        """
        options = self.parse("--tls-policy", "Partner.Example.=VERIFY", "--tls-policy", "bücher.example=may", "--default-tls-policy", "mta-sts")
        self.assertEqual(options["tls-policies"], {"partner.example": "verify", "xn--bcher-kva.example": "may"})
        self.assertEqual(options["default-tls-policy"], "mta-sts")

    def test_badPolicies(self):
        """
        Each bad value is named with its option.
        """
        self.assertIn("--tls-policy 'example.com': expected DOMAIN=MODE", self.refused("--tls-policy", "example.com"))
        self.assertIn("the mode must be one of none, may", self.refused("--tls-policy", "example.com=sometimes"))
        self.assertIn("not a domain name", self.refused("--tls-policy", "bad domain=verify"))
        self.assertIn("--default-tls-policy: 'x' is not one of", self.refused("--default-tls-policy", "x"))

    def test_dnsServer(self):
        """
        C{--dns-server} takes a host, a host and port, or an IPv6 address
        in brackets; port 53 if none.
        """
        self.assertEqual(self.parse("--dns-server", "127.0.0.1")["dns-servers"], [("127.0.0.1", 53)])
        self.assertEqual(self.parse("--dns-server", "127.0.0.1:5353")["dns-servers"], [("127.0.0.1", 5353)])
        self.assertEqual(self.parse("--dns-server", "[::1]:5353")["dns-servers"], [("::1", 5353)])
        self.assertEqual(self.parse("--dns-server", "[::1]")["dns-servers"], [("::1", 53)])
        self.assertIn("--dns-server", self.refused("--dns-server", "127.0.0.1:port"))
        self.assertIn("--dns-server", self.refused("--dns-server", "::1"))

    def test_tlsCA(self):
        """
        C{--tls-ca} is read at start; a missing or non-PEM file is refused.
        """
        path = self.mktemp()
        trustme.CA().cert_pem.write_to_path(path)
        self.assertIsNotNone(self.parse("--tls-ca", path)["tls-trust"])
        self.assertIn("--tls-ca", self.refused("--tls-ca", path + ".missing"))
        with open(path, "w") as f:
            f.write("not a certificate\n")
        self.assertIn("--tls-ca", self.refused("--tls-ca", path))

    def test_dkimKey(self):
        """
        C{--dkim-key} is DOMAIN:SELECTOR:KEYFILE, and the file must exist.
        """
        self.assertIn("--dkim-key: 'example.org:mail': not DOMAIN:SELECTOR:KEYFILE", self.refused("--dkim-key", "example.org:mail"))
        self.assertIn("cannot read", self.refused("--dkim-key", "example.org:mail:" + self.mktemp()))
        self.assertIn("--dkim-sign-for: not origins", self.refused("--dkim-sign-for", "friends"))
        self.assertIn("--dkim-domain needs a --dkim-key", self.refused("--dkim-domain", "example.org"))
        self.assertIn("--dkim-expiry", self.refused("--dkim-key", self.keySpec(), "--dkim-expiry", "soon"))

    def keySpec(self) -> str:
        from mailproto._dkim import ED25519_SHA256, generateKey

        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(generateKey("example.org", "mail", ED25519_SHA256).privateKeyPEM())
        return f"example.org:mail:{path}"

    def test_dkimSigner(self):
        """
        Good keys make a signer, kept in the options for the listeners;
        none, no signer.
        """
        self.assertIsNone(self.parse()["dkim-signer"])
        signer = self.parse("--dkim-key", self.keySpec(), "--dkim-expiry", "7d")["dkim-signer"]
        self.assertEqual([key.domain for key in signer.keysFor("example.org")], ["example.org"])


class WiringTests(SynchronousTestCase):
    """
    What L{makeService} builds from the outbound options.
    """

    def service(self, *arguments: str):
        self.spool = self.mktemp()
        options = _parse("--spool", self.spool, "--hostname", "relay.example", *arguments)
        return makeService(options)

    def test_byMX(self):
        """
        Relaying by MX: MTA-STS with its cache in the spool, no DANE, TLS
        reports kept in the spool and sent by a service of the relay.
        """
        relay = self.service("--tls-policy", "partner.example=verify")
        security = relay.manager.security
        self.assertEqual((security.default, security.domains), ("auto", {"partner.example": "verify"}))
        self.assertIsInstance(security.mtasts, MTASTSPolicies)
        self.assertIsNone(security.dnssec)
        self.assertIsInstance(security.reports, TLSReportStore)
        self.assertIn("_ReportsService", [type(child).__name__ for child in relay])

    def test_dnssec(self):
        """
        C{--dnssec} with C{--dns-server}: DANE asks that server, which also
        answers MX lookups.
        """
        relay = self.service("--dnssec", "--dns-server", "127.0.0.1:5353")
        self.assertIsInstance(relay.manager.security.dnssec, SecureLookup)
        self.assertIsNotNone(relay.manager.mxcalc)

    def test_noReports(self):
        """
        C{--no-tls-reports}: no store, no reporter.
        """
        relay = self.service("--no-tls-reports")
        self.assertIsNone(relay.manager.security.reports)
        self.assertNotIn("_ReportsService", [type(child).__name__ for child in relay])
        self.assertFalse(os.path.exists(os.path.join(self.spool, "tls-reports")))

    def test_smartHost(self):
        """
        With a smart host, its own TLS options decide: no policies, no
        reports.
        """
        relay = self.service("--smarthost", "smart.example:25")
        self.assertIsNone(relay.manager.security)
        self.assertNotIn("_ReportsService", [type(child).__name__ for child in relay])


class QueueSubmitterTests(SynchronousTestCase):
    """
    L{QueueSubmitter}: the relay's own messages (TLS reports) into its
    queue, signed when it has a key for their C{From:} domain.
    """

    MESSAGE = b"From: postmaster@relay.example\r\nTo: tlsrpt@example.com\r\nSubject: Report\r\nDate: Mon, 7 Dec 2026 00:10:00 +0000\r\n\r\nreport\r\n"

    def submit(self, dkim):
        from twisted.internet import defer, task

        from mailproto._queue import TRUSTED, Queue
        from mailproto._relayd._outbound import QueueSubmitter

        queue = Queue(self.mktemp(), runInThread=lambda f, *a: defer.maybeDeferred(f, *a))
        queue.recover()
        clock = task.Clock()
        clock.advance(1_796_000_000)
        envelope = self.successResultOf(QueueSubmitter(queue, clock, dkim)(b"postmaster@relay.example", [b"tlsrpt@example.com"], self.MESSAGE))
        self.assertEqual((envelope.origin, envelope.sender, envelope.received), (TRUSTED, b"postmaster@relay.example", clock.seconds()))
        with queue.openMessage(envelope.id) as f:
            self.assertEqual(f.read(), self.MESSAGE)
        return envelope

    def test_unsigned(self):
        self.assertEqual(self.submit(None).prefix, b"")

    def test_signed(self):
        """
        With a key for the report's C{From:} domain, the signature goes
        before the report, and verifies.
        """
        import dkim

        from mailproto._dkim import ED25519_SHA256, DKIMSigner, generateKey

        key = generateKey("relay.example", "mail", ED25519_SHA256)
        envelope = self.submit(DKIMSigner([key]))
        self.assertTrue(envelope.prefix.startswith(b"DKIM-Signature:"))
        record = key.publicRecord().encode("ascii") if isinstance(key.publicRecord(), str) else key.publicRecord()
        self.assertTrue(dkim.verify(envelope.prefix + self.MESSAGE, dnsfunc=lambda name, timeout=5: record))
