# -*- test-case-name: mailproto.test.test_mx -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._mx} and its facade L{mailproto.relaymanager}: routing
mail by MX records, against L{mailproto.testing.FakeResolver} and, once,
against a real twisted.names DNS server on the loopback interface.
"""

import os
import random
import subprocess
import sys

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import authority, client, dns, error, server
from twisted.trial.unittest import SynchronousTestCase, TestCase

import mailproto
from mailproto import _mx, relaymanager
from mailproto._mx import (
    CanonicalNameChainTooLong,
    CanonicalNameLoop,
    Candidate,
    Destination,
    DNSTemporaryFailure,
    MailRoutingError,
    MXCalculator,
    NoMailExchange,
    NoSuchDomain,
    NullMX,
)
from mailproto.testing import FakeResolver


class NoShuffle:
    """
    Leaves MX hosts of equal preference in the order of their names.
    """

    def shuffle(self, hosts):
        pass


class ReverseShuffle:
    """
    Reverses each group of MX hosts of equal preference, and keeps them.
    """

    def __init__(self):
        self.groups = []

    def shuffle(self, hosts):
        self.groups.append(list(hosts))
        hosts.reverse()


def calculator(random=None, **records):
    """
    An L{MXCalculator} with a L{FakeResolver} of C{records}, a L{Clock} and
    ties in the order of names.
    """
    return MXCalculator(resolver=FakeResolver(**records), clock=Clock(), random=random or NoShuffle())


def hosts(destination):
    return [candidate.host for candidate in destination]


class RouteTestsMixin:
    def route(self, calc, domain, **kwargs):
        return self.successResultOf(calc.getRoute(domain, **kwargs))

    def routeFailure(self, calc, domain, *errors, **kwargs):
        return self.failureResultOf(calc.getRoute(domain, **kwargs), *errors).value


class OrderTests(RouteTestsMixin, SynchronousTestCase):
    """
    MX records in preference order, with their addresses.
    """

    def test_preferenceOrder(self):
        """
        Hosts come by increasing preference, whatever the DNS's order, each
        with its preference and addresses.
        """
        calc = calculator(
            mx={"example.com": [(30, "c.example.com"), (10, "a.example.com"), (20, "b.example.com")]},
            a={"a.example.com": ["192.0.2.1", "192.0.2.11"], "b.example.com": ["192.0.2.2"]},
            aaaa={"c.example.com": ["2001:db8::3"]},
        )
        destination = self.route(calc, "example.com")
        self.assertIsInstance(destination, Destination)
        self.assertEqual(
            list(destination),
            [
                Candidate(10, "a.example.com", ("192.0.2.1", "192.0.2.11")),
                Candidate(20, "b.example.com", ("192.0.2.2",)),
                Candidate(30, "c.example.com", ("2001:db8::3",)),
            ],
        )
        self.assertEqual(destination.domain, "example.com")
        self.assertFalse(destination.implicit)
        self.assertFalse(destination.literal)
        self.assertEqual(len(destination), 3)
        self.assertEqual(destination[0].host, "a.example.com")

    def test_tiesSortedByInjectedRandom(self):
        """
        Hosts of equal preference are put in order by the calculator's
        C{random}, one group at a time; a group of one is not shuffled.
        """
        shuffler = ReverseShuffle()
        calc = calculator(
            random=shuffler,
            mx={"example.com": [(10, "b.example.com"), (20, "z.example.com"), (10, "a.example.com"),
                                (10, "c.example.com"), (30, "y.example.com"), (30, "x.example.com")]},
            a={h + ".example.com": ["192.0.2.1"] for h in "abcxyz"},
        )
        destination = self.route(calc, "example.com")
        self.assertEqual(
            hosts(destination),
            ["c.example.com", "b.example.com", "a.example.com", "z.example.com", "y.example.com", "x.example.com"],
        )
        self.assertEqual(
            shuffler.groups,
            [["a.example.com", "b.example.com", "c.example.com"], ["x.example.com", "y.example.com"]],
        )

    def test_tiesWithoutShuffle(self):
        """
        With a C{random} that does not shuffle, ties are in the order of
        their names: deterministic.
        """
        calc = calculator(
            mx={"example.com": [(10, "b.example.com"), (10, "a.example.com")]},
            a={"a.example.com": ["192.0.2.1"], "b.example.com": ["192.0.2.2"]},
        )
        self.assertEqual(hosts(self.route(calc, "example.com")), ["a.example.com", "b.example.com"])

    def test_tiesSeededRandom(self):
        """
        A seeded C{random.Random} gives the same order each time.
        """
        records = dict(
            mx={"example.com": [(10, f"h{i}.example.com") for i in range(8)]},
            a={f"h{i}.example.com": ["192.0.2.1"] for i in range(8)},
        )
        first = hosts(self.route(calculator(random=random.Random(7), **records), "example.com"))
        second = hosts(self.route(calculator(random=random.Random(7), **records), "example.com"))
        self.assertEqual(first, second)
        self.assertEqual(sorted(first), [f"h{i}.example.com" for i in range(8)])

    def test_defaultRandom(self):
        """
        By default ties are shuffled by a C{random.Random} of the
        calculator's own (RFC 5321 section 5.1 requires random order).
        """
        calc = MXCalculator(resolver=FakeResolver(), clock=Clock())
        self.assertIsInstance(calc.random, random.Random)
        self.assertIsNot(calc.random, MXCalculator(resolver=FakeResolver(), clock=Clock()).random)

    def test_duplicateHost(self):
        """
        A host named by two MX records appears once, at its best preference.
        """
        calc = calculator(
            mx={"example.com": [(20, "a.example.com"), (10, "b.example.com"), (5, "A.example.com.")]},
            a={"a.example.com": ["192.0.2.1"], "b.example.com": ["192.0.2.2"]},
        )
        destination = self.route(calc, "example.com")
        self.assertEqual([(c.preference, c.host) for c in destination], [(5, "a.example.com"), (10, "b.example.com")])

    def test_ipv4AndIPv6(self):
        """
        A host's IPv4 addresses come first, then its IPv6 ones, each once.
        """
        calc = calculator(
            mx={"example.com": [(10, "mx.example.com")]},
            a={"mx.example.com": ["192.0.2.1", "192.0.2.1"]},
            aaaa={"mx.example.com": ["2001:DB8:0:0::1", "2001:db8::2"]},
        )
        [candidate] = self.route(calc, "example.com")
        self.assertEqual(candidate.addresses, ("192.0.2.1", "2001:db8::1", "2001:db8::2"))

    def test_ipv6Only(self):
        """
        Hosts with only IPv6 addresses are routed to, also when every host
        is IPv6-only.
        """
        calc = calculator(
            mx={"example.com": [(10, "v6.example.com"), (20, "v6b.example.com")]},
            aaaa={"v6.example.com": ["2001:db8::25"], "v6b.example.com": ["::1"]},
        )
        destination = self.route(calc, "example.com")
        self.assertEqual(
            list(destination),
            [Candidate(10, "v6.example.com", ("2001:db8::25",)), Candidate(20, "v6b.example.com", ("::1",))],
        )

    def test_queries(self):
        """
        One MX query, then an A and an AAAA query for each host.
        """
        calc = calculator(mx={"example.com": [(10, "mx.example.com")]}, a={"mx.example.com": ["192.0.2.1"]})
        self.route(calc, "Example.COM.")
        self.assertEqual(
            calc.resolver.queries, [("example.com", "MX"), ("mx.example.com", "A"), ("mx.example.com", "AAAA")]
        )

    def test_bytesAndIDN(self):
        """
        A domain may be L{bytes}; an internationalized one is looked up by
        its A-labels.
        """
        calc = calculator(mx={"xn--bcher-kva.test": [(10, "mx.test")]}, a={"mx.test": ["192.0.2.1"]})
        self.assertEqual(hosts(self.route(calc, b"xn--bcher-kva.test")), ["mx.test"])
        destination = self.route(calc, "Bücher.test")
        self.assertEqual(destination.domain, "xn--bcher-kva.test")
        destination = self.route(calc, "Bücher.test".encode("utf-8"))
        self.assertEqual(destination.domain, "xn--bcher-kva.test")

    def test_badDomainNames(self):
        """
        A domain that cannot be a name fails permanently without a query.
        """
        calc = calculator()
        for domain in ["", ".", b"\xff.test", "a" * 64 + "é.test"]:
            self.assertIsInstance(self.routeFailure(calc, domain, NoSuchDomain), NoSuchDomain)
        self.assertEqual(calc.resolver.queries, [])


class SkippedHostTests(RouteTestsMixin, SynchronousTestCase):
    """
    MX records that cannot be used are left out.
    """

    def test_ipLiteralExchange(self):
        """
        An MX record naming an IP address (RFC 5321 forbids it) is ignored
        and the address is not looked up.
        """
        calc = calculator(
            mx={"example.com": [(5, "192.0.2.7"), (6, "[192.0.2.8]"), (7, "2001:db8::9"), (10, "mx.example.com")]},
            a={"mx.example.com": ["192.0.2.1"]},
        )
        self.assertEqual(hosts(self.route(calc, "example.com")), ["mx.example.com"])
        self.assertEqual([q for q in calc.resolver.queries if q[0] != "mx.example.com"], [("example.com", "MX")])

    def test_onlyIPLiteralExchange(self):
        """
        If every MX record names an IP address, the failure is temporary.
        """
        calc = calculator(mx={"example.com": [(10, "192.0.2.7")]}, a={"192.0.2.7": ["192.0.2.7"]})
        failure = self.routeFailure(calc, "example.com", DNSTemporaryFailure)
        self.assertFalse(failure.permanent)
        self.assertEqual(failure.domain, "example.com")

    def test_hostWithoutAddress(self):
        """
        Hosts that do not exist, have no address, or whose lookups fail
        are left out.
        """
        calc = calculator(
            mx={"example.com": [(1, "missing.example.com"), (2, "empty.example.com"), (3, "broken.example.com"),
                                (4, "mx.example.com")]},
            a={"mx.example.com": ["192.0.2.1"], "empty.example.com": []},
            aaaa={"broken.example.com": ["2001:db8::1"]},
            failures={("broken.example.com", "AAAA"): error.DNSServerError(),
                      ("broken.example.com", "A"): defer.TimeoutError()},
        )
        self.assertEqual(hosts(self.route(calc, "example.com")), ["mx.example.com"])

    def test_halfFailedHost(self):
        """
        A host whose A lookup fails but whose AAAA lookup succeeds is used
        with its IPv6 addresses.
        """
        calc = calculator(
            mx={"example.com": [(10, "mx.example.com")]},
            aaaa={"mx.example.com": ["2001:db8::1"]},
            failures={("mx.example.com", "A"): error.DNSServerError},
        )
        [candidate] = self.route(calc, "example.com")
        self.assertEqual(candidate.addresses, ("2001:db8::1",))

    def test_noHostHasAddress(self):
        """
        If no host has an address, the failure is temporary and says why.
        """
        calc = calculator(
            mx={"example.com": [(10, "a.example.com"), (20, "b.example.com")]},
            a={"b.example.com": []},
            failures={("b.example.com", "AAAA"): error.DNSServerError()},
        )
        failure = self.routeFailure(calc, "example.com", DNSTemporaryFailure)
        self.assertFalse(failure.permanent)
        self.assertIn("a.example.com: no such host", str(failure))
        self.assertIn("b.example.com: AAAA lookup failed", str(failure))

    def test_hostIsAlias(self):
        """
        A host that is a CNAME (RFC 2181 says it should not be) is used with
        the addresses of its canonical name, under its own name.
        """
        calc = calculator(
            mx={"example.com": [(10, "mx.example.com")]},
            cname={"mx.example.com": "real.example.net"},
            a={"real.example.net": ["192.0.2.5"]},
        )
        self.assertEqual(list(self.route(calc, "example.com")), [Candidate(10, "mx.example.com", ("192.0.2.5",))])


class ImplicitMXTests(RouteTestsMixin, SynchronousTestCase):
    """
    A domain without MX records is its own mail exchanger (RFC 5321 section
    5.1).
    """

    def test_implicit(self):
        """
        The domain, at preference 0, with its IPv4 and IPv6 addresses.
        """
        calc = calculator(a={"example.com": ["192.0.2.1"]}, aaaa={"example.com": ["2001:db8::1"]})
        destination = self.route(calc, "example.com")
        self.assertTrue(destination.implicit)
        self.assertEqual(list(destination), [Candidate(0, "example.com", ("192.0.2.1", "2001:db8::1"))])

    def test_emptyMXAnswer(self):
        """
        A domain known with an empty list of MX records is the same.
        """
        calc = calculator(mx={"example.com": []}, aaaa={"example.com": ["2001:db8::1"]})
        destination = self.route(calc, "example.com")
        self.assertEqual(list(destination), [Candidate(0, "example.com", ("2001:db8::1",))])

    def test_noAddress(self):
        """
        A domain without MX records nor address: a temporary failure.
        """
        calc = calculator(mx={"example.com": []})
        self.assertFalse(self.routeFailure(calc, "example.com", DNSTemporaryFailure).permanent)

    def test_noFallback(self):
        """
        Without C{fallbackToDomain}, a domain without MX records fails
        permanently, and its address is not looked up.
        """
        calc = calculator(a={"example.com": ["192.0.2.1"]})
        calc.fallbackToDomain = False
        failure = self.routeFailure(calc, "example.com", NoMailExchange)
        self.assertTrue(failure.permanent)
        self.assertEqual(failure.domain, "example.com")
        self.assertEqual(calc.resolver.queries, [("example.com", "MX")])

    def test_implicitAfterAlias(self):
        """
        If the domain is an alias, the implicit MX is the canonical name.
        """
        calc = calculator(cname={"example.com": "real.example.net"}, a={"real.example.net": ["192.0.2.9"]})
        destination = self.route(calc, "example.com")
        self.assertTrue(destination.implicit)
        self.assertEqual(list(destination), [Candidate(0, "real.example.net", ("192.0.2.9",))])


class NullMXTests(RouteTestsMixin, SynchronousTestCase):
    """
    RFC 7505: a domain that accepts no mail.
    """

    def test_nullMX(self):
        """
        A single MX record of preference 0 naming the root fails with
        L{NullMX}, permanently, without looking up any address.
        """
        for root in [".", ""]:
            calc = calculator(mx={"example.com": [(0, root)]}, a={"example.com": ["192.0.2.1"]})
            failure = self.routeFailure(calc, "example.com", NullMX)
            self.assertTrue(failure.permanent)
            self.assertEqual(failure.domain, "example.com")
            self.assertEqual(failure.args, ("example.com",))
            self.assertIn("null MX", str(failure))
            self.assertEqual(calc.resolver.queries, [("example.com", "MX")])

    def test_nullMXAfterAlias(self):
        """
        A null MX found through a CNAME counts too.
        """
        calc = calculator(cname={"example.com": "example.net"}, mx={"example.net": [(0, ".")]})
        self.assertEqual(self.routeFailure(calc, "example.com", NullMX).domain, "example.com")

    def test_rootAmongOthers(self):
        """
        A root MX among other MX records is not a null MX: it is ignored.
        """
        calc = calculator(
            mx={"example.com": [(0, "."), (10, "mx.example.com")]}, a={"mx.example.com": ["192.0.2.1"]}
        )
        self.assertEqual(hosts(self.route(calc, "example.com")), ["mx.example.com"])

    def test_rootWithPreference(self):
        """
        A single root MX of another preference is not a null MX, but not a
        host either: the failure is temporary.
        """
        calc = calculator(mx={"example.com": [(10, ".")]})
        self.routeFailure(calc, "example.com", DNSTemporaryFailure)


class DNSFailureTests(RouteTestsMixin, SynchronousTestCase):
    """
    Failures of the MX lookup: permanent or temporary.
    """

    def test_nxdomain(self):
        """
        A domain that does not exist fails permanently.
        """
        calc = calculator(a={"other.example": ["192.0.2.1"]})
        failure = self.routeFailure(calc, "example.com", NoSuchDomain)
        self.assertTrue(failure.permanent)
        self.assertIsInstance(failure, MailRoutingError)
        self.assertEqual(failure.domain, "example.com")
        self.assertIsInstance(failure.reason, error.DNSNameError)
        self.assertIn("example.com", str(failure))
        self.assertEqual(calc.resolver.queries, [("example.com", "MX")])

    def test_nxdomainAfterAlias(self):
        """
        An alias of a name that does not exist: permanent.
        """
        calc = calculator(cname={"example.com": "gone.example.net"})
        self.assertTrue(self.routeFailure(calc, "example.com", NoSuchDomain).permanent)

    def test_authoritativeDomainError(self):
        """
        An authority's "no such name" is NXDOMAIN.
        """
        calc = calculator(failures={("example.com", "MX"): error.AuthoritativeDomainError("example.com")})
        self.routeFailure(calc, "example.com", NoSuchDomain)

    def test_temporary(self):
        """
        SERVFAIL, time-outs and other resolver errors are temporary, the
        resolver's exception kept as C{reason}.
        """
        for exception in [
            error.DNSServerError(),
            defer.TimeoutError(),
            error.DNSQueryTimeoutError(7),
            error.DNSQueryRefusedError(),
            error.DNSFormatError(),
            error.DomainError(),
            error.ResolverError(),
            OSError("network unreachable"),
        ]:
            calc = calculator(
                mx={"example.com": [(10, "mx.example.com")]},
                a={"mx.example.com": ["192.0.2.1"]},
                failures={("example.com", "MX"): exception},
            )
            failure = self.routeFailure(calc, "example.com", DNSTemporaryFailure)
            self.assertFalse(failure.permanent)
            self.assertIs(failure.reason, exception)
            self.assertEqual(failure.domain, "example.com")
            self.assertIn("temporary DNS failure for example.com", str(failure))

    def test_timeoutClass(self):
        """
        A failure given as a class is raised as an instance of it.
        """
        calc = calculator(failures={("example.com", "MX"): defer.TimeoutError})
        self.assertIsInstance(self.routeFailure(calc, "example.com", DNSTemporaryFailure).reason, defer.TimeoutError)

    def test_failureAtCanonicalName(self):
        """
        A failure of the lookup of the name an alias leads to is temporary.
        """
        calc = calculator(
            cname={"example.com": "example.net"},
            mx={"example.net": [(10, "mx.example.net")]},
            failures={("example.net", "MX"): error.DNSServerError()},
        )
        self.routeFailure(calc, "example.com", DNSTemporaryFailure)

    def test_cancel(self):
        """
        Cancelling the route cancels the lookups under way, and fails with
        L{defer.CancelledError}, not a DNS failure.
        """
        pending = []

        class Slow(FakeResolver):
            def _lookup(self, name, cls, recordType, timeout):
                if recordType == dns.MX:
                    return super()._lookup(name, cls, recordType, timeout)
                d = defer.Deferred(lambda d: pending.remove(d))
                pending.append(d)
                return d

        calc = MXCalculator(Slow(mx={"example.com": [(10, "mx.example.com")]}), Clock(), NoShuffle())
        d = calc.getRoute("example.com")
        self.assertEqual(len(pending), 2)
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(pending, [])

    def test_cancelMXLookup(self):
        """
        Cancelling during the MX lookup fails with L{defer.CancelledError}
        too.
        """
        pending = []

        class Slow(FakeResolver):
            def _lookup(self, name, cls, recordType, timeout):
                d = defer.Deferred(lambda d: pending.remove(d))
                pending.append(d)
                return d

        d = MXCalculator(Slow(), Clock(), NoShuffle()).getRoute("example.com")
        self.assertEqual(len(pending), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(pending, [])


class CanonicalNameTests(RouteTestsMixin, SynchronousTestCase):
    """
    CNAME records, in the answers or by asking again.
    """

    def test_aliasInAnswer(self):
        """
        A resolver that gives the CNAME and the MX records together is asked
        once.
        """
        calc = calculator(
            cname={"example.com": "mail.example.net"},
            mx={"mail.example.net": [(10, "mx.example.net")]},
            a={"mx.example.net": ["192.0.2.1"]},
        )
        destination = self.route(calc, "example.com")
        self.assertEqual(destination.domain, "example.com")
        self.assertEqual(hosts(destination), ["mx.example.net"])
        self.assertEqual([q for q in calc.resolver.queries if q[1] == "MX"], [("example.com", "MX")])

    def test_aliasAskedAgain(self):
        """
        A resolver that gives only the CNAME record is asked again about the
        canonical name.
        """
        calc = calculator(
            cname={"example.com": "a.example.net", "a.example.net": "b.example.net"},
            mx={"b.example.net": [(10, "mx.example.net")]},
            a={"mx.example.net": ["192.0.2.1"]},
        )
        calc.resolver.followCNAMEs = False
        self.assertEqual(hosts(self.route(calc, "example.com")), ["mx.example.net"])
        self.assertEqual(
            [q for q in calc.resolver.queries if q[1] == "MX"],
            [("example.com", "MX"), ("a.example.net", "MX"), ("b.example.net", "MX")],
        )

    def test_aliasWithOtherRecords(self):
        """
        An answer that gives the canonical name's addresses but not its MX
        records (as twisted.names' own authorities do) leads to asking about
        the canonical name.
        """

        class Authority(FakeResolver):
            def _lookup(self, name, cls, recordType, timeout):
                if name == b"example.com":
                    return defer.succeed((
                        [dns.RRHeader(b"example.com", dns.CNAME, payload=dns.Record_CNAME(b"example.net")),
                         dns.RRHeader(b"example.net", dns.A, payload=dns.Record_A("192.0.2.99"))],
                        [], []))
                return super()._lookup(name, cls, recordType, timeout)

        resolver = Authority(mx={"example.net": [(10, "mx.example.net")]}, a={"mx.example.net": ["192.0.2.1"]})
        calc = MXCalculator(resolver, Clock(), NoShuffle())
        self.assertEqual(hosts(self.route(calc, "example.com")), ["mx.example.net"])
        self.assertIn(("example.net", "MX"), resolver.queries)

    def test_loop(self):
        """
        CNAME records that lead back fail with L{CanonicalNameLoop}, with
        the CNAME record closing the loop, whether they come in one answer
        or one at a time.
        """
        for follow in [True, False]:
            calc = calculator(cname={"example.com": "a.example.net", "a.example.net": "example.com"})
            calc.resolver.followCNAMEs = follow
            failure = self.routeFailure(calc, "example.com", CanonicalNameLoop)
            self.assertEqual(failure.domain, "example.com")
            self.assertEqual(failure.args, (dns.Record_CNAME(b"example.com", ttl=3600),))
            self.assertFalse(failure.permanent)
            self.assertIsInstance(failure, MailRoutingError)

    def test_selfLoop(self):
        """
        A name that is its own alias loops.
        """
        calc = calculator(cname={"example.com": "example.com"})
        self.routeFailure(calc, "example.com", CanonicalNameLoop)

    def chain(self, length):
        names = ["example.com"] + [f"c{i}.example.net" for i in range(1, length + 1)]
        return dict(
            cname=dict(zip(names, names[1:])),
            mx={names[-1]: [(10, "mx.example.net")]},
            a={"mx.example.net": ["192.0.2.1"]},
        )

    def test_chainTooLong(self):
        """
        By default three CNAME records are followed, not four, whether they
        come in one answer or one at a time.
        """
        for follow in [True, False]:
            calc = calculator(**self.chain(3))
            calc.resolver.followCNAMEs = follow
            self.assertEqual(hosts(self.route(calc, "example.com")), ["mx.example.net"])
            calc = calculator(**self.chain(4))
            calc.resolver.followCNAMEs = follow
            failure = self.routeFailure(calc, "example.com", CanonicalNameChainTooLong)
            self.assertEqual(failure.args, (dns.Record_CNAME(b"c4.example.net", ttl=3600),))
            self.assertEqual(failure.domain, "example.com")
            self.assertFalse(failure.permanent)

    def test_maximumChain(self):
        """
        C{maximumCanonicalChainLength} sets the limit.
        """
        calc = calculator(**self.chain(5))
        self.routeFailure(calc, "example.com", CanonicalNameChainTooLong, maximumCanonicalChainLength=4)
        self.assertEqual(hosts(self.route(calc, "example.com", maximumCanonicalChainLength=5)), ["mx.example.net"])
        calc = calculator(**self.chain(1))
        self.routeFailure(calc, "example.com", CanonicalNameChainTooLong, maximumCanonicalChainLength=0)

    def test_hostAliasLoop(self):
        """
        A mail exchanger whose CNAME records loop is left out.
        """
        calc = calculator(
            mx={"example.com": [(10, "loop.example.com"), (20, "mx.example.com")]},
            cname={"loop.example.com": "loop.example.com"},
            a={"mx.example.com": ["192.0.2.1"]},
        )
        self.assertEqual(hosts(self.route(calc, "example.com")), ["mx.example.com"])


class BadHostTests(RouteTestsMixin, SynchronousTestCase):
    """
    L{MXCalculator.markBad} and L{MXCalculator.markGood}.
    """

    def setUp(self):
        self.calc = calculator(
            mx={"example.com": [(10, "a.example.com"), (20, "b.example.com"), (30, "c.example.com")]},
            a={"a.example.com": ["192.0.2.1"], "b.example.com": ["192.0.2.2"], "c.example.com": ["192.0.2.3"]},
        )
        self.clock = self.calc.clock

    def test_badLast(self):
        """
        A bad host goes last, marked C{bad}; it is not dropped.
        """
        self.calc.markBad("a.example.com")
        destination = self.route(self.calc, "example.com")
        self.assertEqual(hosts(destination), ["b.example.com", "c.example.com", "a.example.com"])
        self.assertEqual([c.bad for c in destination], [False, False, True])

    def test_allBad(self):
        """
        When every host is bad, they stay in preference order.
        """
        for host in ["c.example.com", "a.example.com", "b.example.com"]:
            self.calc.markBad(host)
        destination = self.route(self.calc, "example.com")
        self.assertEqual(hosts(destination), ["a.example.com", "b.example.com", "c.example.com"])
        self.assertTrue(all(c.bad for c in destination))

    def test_expiry(self):
        """
        A host is bad for C{timeOutBadMX} seconds, then forgotten.
        """
        self.clock.advance(1000)
        self.calc.markBad("a.example.com")
        self.assertEqual(self.calc.badMXs, {"a.example.com": 1000 + 3600})
        self.clock.advance(3599)
        self.assertEqual(hosts(self.route(self.calc, "example.com"))[0], "b.example.com")
        self.clock.advance(1)
        self.assertEqual(hosts(self.route(self.calc, "example.com"))[0], "a.example.com")
        self.assertEqual(self.calc.badMXs, {})

    def test_timeOutBadMX(self):
        """
        C{timeOutBadMX} can be changed.
        """
        self.assertEqual(MXCalculator.timeOutBadMX, 3600)
        self.calc.timeOutBadMX = 10
        self.calc.markBad("a.example.com")
        self.clock.advance(10)
        self.assertEqual(hosts(self.route(self.calc, "example.com"))[0], "a.example.com")

    def test_markGood(self):
        """
        A host marked good is no longer bad; marking an unknown host good
        does nothing.
        """
        self.calc.markBad("a.example.com")
        self.calc.markGood("a.example.com")
        self.calc.markGood("never.example.com")
        self.assertEqual(self.calc.badMXs, {})
        self.assertEqual(hosts(self.route(self.calc, "example.com"))[0], "a.example.com")

    def test_names(self):
        """
        Case, a final dot, and L{bytes} or L{str} do not matter.
        """
        self.calc.markBad(b"A.Example.COM.")
        self.assertEqual(list(self.calc.badMXs), ["a.example.com"])
        self.assertEqual(hosts(self.route(self.calc, "example.com"))[-1], "a.example.com")
        self.calc.markGood("a.example.com.")
        self.assertEqual(self.calc.badMXs, {})

    def test_implicitBad(self):
        """
        An implicit MX marked bad is still tried: it is the only host.
        """
        calc = calculator(a={"example.org": ["192.0.2.1"]})
        calc.markBad("example.org")
        [candidate] = self.route(calc, "example.org")
        self.assertTrue(candidate.bad)


class AddressLiteralTests(RouteTestsMixin, SynchronousTestCase):
    """
    Domains that are address literals (RFC 5321 section 4.1.3).
    """

    def test_ipv4(self):
        calc = calculator()
        destination = self.route(calc, "[192.0.2.1]")
        self.assertTrue(destination.literal)
        self.assertFalse(destination.implicit)
        self.assertEqual(destination.domain, "[192.0.2.1]")
        self.assertEqual(list(destination), [Candidate(0, "192.0.2.1", ("192.0.2.1",))])
        self.assertEqual(calc.resolver.queries, [])

    def test_ipv6(self):
        calc = calculator()
        for literal in ["[IPv6:2001:db8::1]", b"[ipv6:2001:DB8:0::1]"]:
            destination = self.route(calc, literal)
            self.assertEqual(list(destination), [Candidate(0, "2001:db8::1", ("2001:db8::1",))])
        self.assertEqual(calc.resolver.queries, [])

    def test_bad(self):
        """
        A literal marked bad is still tried, marked C{bad}.
        """
        calc = calculator()
        calc.markBad("192.0.2.1")
        self.assertTrue(self.route(calc, "[192.0.2.1]")[0].bad)

    def test_invalid(self):
        """
        Brackets around something else than an IPv4 or IPv6 address: a
        permanent failure.
        """
        calc = calculator()
        for literal in ["[300.1.1.1]", "[192.0.2.01]", "[2001:db8::1]", "[IPv6:192.0.2.1]", "[x-tag:abc]", "[]"]:
            self.assertTrue(self.routeFailure(calc, literal, NoSuchDomain).permanent, literal)
        self.assertEqual(calc.resolver.queries, [])


class GetMXTests(SynchronousTestCase):
    """
    L{MXCalculator.getMX}, as twisted.mail has it.
    """

    def setUp(self):
        self.calc = calculator(
            mx={"example.com": [(1, "bad.example.com"), (5, "good.example.com")]},
            a={"bad.example.com": ["192.0.2.1"], "good.example.com": ["192.0.2.2"], "plain.example": ["192.0.2.3"]},
            aaaa={"six.example": ["2001:db8::6"]},
        )

    def getMX(self, domain, **kwargs):
        return self.successResultOf(self.calc.getMX(domain, **kwargs))

    def test_best(self):
        self.assertEqual(self.getMX("example.com"), dns.Record_MX(1, "bad.example.com"))

    def test_badExcluded(self):
        self.calc.markBad("bad.example.com")
        self.assertEqual(self.getMX("example.com"), dns.Record_MX(5, "good.example.com"))

    def test_allBad(self):
        self.calc.markBad("bad.example.com")
        self.calc.markBad("good.example.com")
        self.assertEqual(self.getMX("example.com"), dns.Record_MX(1, "bad.example.com"))

    def test_badExpires(self):
        self.calc.markBad("bad.example.com")
        self.calc.clock.advance(self.calc.timeOutBadMX)
        self.assertEqual(self.getMX("example.com"), dns.Record_MX(1, "bad.example.com"))

    def test_withoutAddressSkipped(self):
        """
        Unlike twisted.mail's, a mail exchanger without an address is not
        returned.
        """
        self.calc.resolver.a["bad.example.com"] = []
        self.assertEqual(self.getMX("example.com"), dns.Record_MX(5, "good.example.com"))

    def test_implicit(self):
        """
        Without MX records, the record names the domain's address, as
        twisted.mail's did.
        """
        self.assertEqual(self.getMX("plain.example"), dns.Record_MX(name="192.0.2.3"))
        self.assertEqual(self.getMX("six.example"), dns.Record_MX(name="2001:db8::6"))

    def test_literal(self):
        self.assertEqual(self.getMX("[192.0.2.9]"), dns.Record_MX(0, "192.0.2.9"))

    def test_failures(self):
        """
        getMX fails like getRoute.
        """
        self.failureResultOf(self.calc.getMX("missing.example"), NoSuchDomain)
        self.calc.resolver.mx["null.example"] = [(0, "")]
        self.failureResultOf(self.calc.getMX("null.example"), NullMX)
        self.calc.resolver.cname["loop.example"] = "loop.example"
        self.failureResultOf(self.calc.getMX("loop.example"), CanonicalNameLoop)

    def test_maximumCanonicalChainLength(self):
        self.calc.resolver.cname.update({"alias.example": "alias2.example", "alias2.example": "example.com"})
        self.failureResultOf(
            self.calc.getMX("alias.example", maximumCanonicalChainLength=1), CanonicalNameChainTooLong
        )
        self.assertEqual(self.getMX("alias.example", maximumCanonicalChainLength=2).preference, 1)

    def test_plainResolver(self):
        """
        Any object with the three lookup methods will do, as in
        twisted.mail's tests, and names reach it as L{str}.
        """
        asked = []

        class Resolver:
            def lookupMailExchange(self, name):
                asked.append(name)
                return defer.succeed(([dns.RRHeader(name, dns.MX, payload=dns.Record_MX(0, "mx.example"))], [], []))

            def lookupAddress(self, name):
                asked.append(name)
                return defer.succeed(([dns.RRHeader(name, dns.A, payload=dns.Record_A("192.0.2.1"))], [], []))

            def lookupIPV6Address(self, name):
                asked.append(name)
                return defer.succeed(([], [], []))

        self.calc.resolver = Resolver()
        self.assertEqual(self.getMX("example.com"), dns.Record_MX(0, "mx.example"))
        self.assertEqual(asked, ["example.com", "mx.example", "mx.example"])
        self.assertTrue(all(isinstance(name, str) for name in asked))


class DefaultsTests(SynchronousTestCase):
    """
    What L{MXCalculator} uses when not told.
    """

    def test_lazyResolver(self):
        """
        The default resolver is made by C{createResolver} when first
        needed, once.
        """
        made = []

        def createResolver():
            made.append(FakeResolver(a={"example.com": ["192.0.2.1"]}))
            return made[-1]

        self.patch(client, "createResolver", createResolver)
        calc = MXCalculator(clock=Clock())
        self.assertEqual(made, [])
        self.successResultOf(calc.getRoute("example.com"))
        self.successResultOf(calc.getRoute("example.com"))
        self.assertEqual(len(made), 1)
        self.assertIs(calc.resolver, made[0])

    def test_defaultClock(self):
        """
        The default clock is the reactor.
        """
        from twisted.internet import reactor

        self.assertIs(MXCalculator(resolver=FakeResolver()).clock, reactor)

    def test_attributes(self):
        calc = MXCalculator(resolver=FakeResolver(), clock=Clock())
        self.assertEqual((calc.timeOutBadMX, calc.fallbackToDomain, calc.badMXs), (3600, True, {}))

    def test_importIsQuiet(self):
        """
        Importing L{mailproto.relaymanager} (and L{mailproto.testing})
        installs no reactor and makes no resolver.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))
        script = (
            "import sys, mailproto.relaymanager, mailproto.testing\n"
            "calc = mailproto.relaymanager.MXCalculator()\n"
            "print('twisted.internet.reactor' in sys.modules, 'twisted.names.client' in sys.modules)\n"
        )
        output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root)
        self.assertEqual(output.stdout.strip(), "False False")


class FacadeTests(SynchronousTestCase):
    """
    L{mailproto.relaymanager}.
    """

    EXPORTS = [
        "MXCalculator",
        "CanonicalNameLoop",
        "CanonicalNameChainTooLong",
        "NullMX",
        "Destination",
        "Candidate",
        "MailRoutingError",
        "NoSuchDomain",
        "NoMailExchange",
        "DNSTemporaryFailure",
    ]

    def test_exports(self):
        self.assertTrue(set(self.EXPORTS) <= set(relaymanager.__all__))
        for name in self.EXPORTS:
            self.assertIs(getattr(relaymanager, name), getattr(_mx, name), name)

    def test_twistedMailNames(self):
        """
        The names twisted.mail.relaymanager has too take its parameters,
        in the same order.
        """
        import inspect

        from twisted.mail import relaymanager as trelaymanager

        for name in ["MXCalculator", "CanonicalNameLoop", "CanonicalNameChainTooLong"]:
            self.assertTrue(hasattr(trelaymanager, name), name)
        for method in ["__init__", "getMX", "markBad", "markGood"]:
            theirs = list(inspect.signature(getattr(trelaymanager.MXCalculator, method)).parameters)
            ours = list(inspect.signature(getattr(MXCalculator, method)).parameters)
            self.assertEqual(ours[: len(theirs)], theirs, method)


class MemoryAuthority(authority.FileAuthority):
    """
    An authority for the zone C{test}, from a list of C{(name, record)}
    pairs rather than a file.
    """

    def loadFile(self, zone):
        self.soa = (b"test", dns.Record_SOA(b"ns.test", b"root.test", serial=1, expire=60, minimum=60))
        self.records = {b"test": [self.soa[1]]}
        for name, record in zone:
            self.records.setdefault(name.lower(), []).append(record)


class LoopbackDNSTests(TestCase):
    """
    L{MXCalculator} through twisted.names' client, asking a twisted.names
    server on the loopback interface.
    """

    def setUp(self):
        from twisted.internet import reactor

        zone = [
            (b"example.test", dns.Record_MX(20, b"mx2.example.test")),
            (b"example.test", dns.Record_MX(10, b"mx1.example.test")),
            (b"mx1.example.test", dns.Record_A("127.0.0.2")),
            (b"mx1.example.test", dns.Record_AAAA("::1")),
            (b"mx2.example.test", dns.Record_A("127.0.0.3")),
            (b"alias.test", dns.Record_CNAME(b"example.test")),
            (b"nomx.test", dns.Record_A("127.0.0.4")),
            (b"null.test", dns.Record_MX(0, b"")),
            (b"loop1.test", dns.Record_CNAME(b"loop2.test")),
            (b"loop2.test", dns.Record_CNAME(b"loop1.test")),
        ]
        factory = server.DNSServerFactory(authorities=[MemoryAuthority(zone)])
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)], timeout=(2, 4))
        self.calc = MXCalculator(resolver=resolver, random=NoShuffle())

    @defer.inlineCallbacks
    def test_routes(self):
        """
        MX records in order with IPv4 and IPv6 addresses, a CNAME, an
        implicit MX, a null MX, a CNAME loop and NXDOMAIN, over UDP.
        """
        destination = yield self.calc.getRoute("example.test")
        self.assertEqual(
            list(destination),
            [Candidate(10, "mx1.example.test", ("127.0.0.2", "::1")), Candidate(20, "mx2.example.test", ("127.0.0.3",))],
        )
        destination = yield self.calc.getRoute("ALIAS.test")
        self.assertEqual(hosts(destination), ["mx1.example.test", "mx2.example.test"])
        destination = yield self.calc.getRoute("nomx.test")
        self.assertEqual(list(destination), [Candidate(0, "nomx.test", ("127.0.0.4",))])
        record = yield self.calc.getMX("example.test")
        self.assertEqual(record, dns.Record_MX(10, "mx1.example.test"))
        for domain, exception in [
            ("null.test", NullMX),
            ("loop1.test", CanonicalNameLoop),
            ("missing.test", NoSuchDomain),
        ]:
            try:
                yield self.calc.getRoute(domain)
            except exception:
                pass
            else:
                self.fail(f"{domain} did not fail with {exception.__name__}")
