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
        self.assertIn("expected DOMAIN:SELECTOR:KEYFILE", self.refused("--dkim-key", "example.org:mail"))
        self.assertIn("no such file", self.refused("--dkim-key", "example.org:mail:" + self.mktemp()))


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
