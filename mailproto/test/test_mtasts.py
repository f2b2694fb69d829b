# -*- test-case-name: mailproto.test.test_mtasts -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._security._mtasts}: the policy and TXT record
parsers, and discovery, fetching and caching against a real DNS server and
a real HTTPS policy server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import stat

import trustme
from hypothesis import given, strategies as st
from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.logger import capturedLogs
from twisted.names import client, dns, error as dnserror
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from mailproto._security._mtasts import (
    FETCH_ERROR,
    MAX_AGE_LIMIT,
    POLICY_INVALID,
    WEBPKI_INVALID,
    MTASTSPolicies,
    PolicyError,
    PolicyFetcher,
    STSLookup,
    STSPolicy,
    discoverRecord,
    normalizeDomain,
    parsePolicy,
    parseRecord,
)
from mailproto.test._dnsserver import DNSServer
from mailproto.test._loopback import noConnectionsLeft

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mail.example.com\r\nmax_age: 86400\r\n"


class ParsePolicyTests(SynchronousTestCase):
    """
    L{parsePolicy} reads RFC 8461 section 3.2 policy files.
    """

    def assertInvalid(self, text: bytes, fragment: str) -> None:
        with self.assertRaises(PolicyError) as caught:
            parsePolicy(text)
        self.assertEqual(caught.exception.resultType, POLICY_INVALID)
        self.assertNotIn("\n", caught.exception.detail)
        self.assertIn(fragment, caught.exception.detail)

    def test_valid(self):
        """
        Every field is read; patterns are kept in order, lower case.
        """
        policy = parsePolicy(POLICY)
        self.assertEqual(policy, STSPolicy("enforce", ("mx1.example.com", "*.mail.example.com"), 86400))
        self.assertIsNone(policy.id)
        self.assertEqual(policy.expires, 86400)

    def test_lineEnds(self):
        """
        LF line ends, no final line end, blank lines, spaces around values
        and upper-case patterns are accepted.
        """
        text = b"version: STSv1\n\nmode:testing  \nmx:   MX.Example.COM.\nmax_age: 0"
        self.assertEqual(parsePolicy(text), STSPolicy("testing", ("mx.example.com",), 0))

    def test_unknownKeysIgnored(self):
        """
        Unknown keys are ignored; of repeated fields other than C{mx}, the
        first is used.
        """
        text = POLICY + b"future_field: anything at all\r\nmode: none\r\nmax_age: x\r\n"
        self.assertEqual(parsePolicy(text), parsePolicy(POLICY))

    def test_modeNoneWithoutMX(self):
        """
        A C{mode: none} policy may omit C{mx}; the others may not.
        """
        self.assertEqual(parsePolicy(b"version: STSv1\nmode: none\nmax_age: 60\n"), STSPolicy("none", (), 60))
        self.assertInvalid(b"version: STSv1\nmode: testing\nmax_age: 60\n", "no mx")

    def test_missingFields(self):
        """
        Without C{version}, C{mode} or C{max_age} a policy is invalid.
        """
        for key in (b"version", b"mode", b"max_age"):
            text = b"".join(line + b"\n" for line in POLICY.split(b"\r\n") if line and not line.startswith(key + b":"))
            self.assertInvalid(text, f"no {key.decode()}")

    def test_badVersion(self):
        for version in (b"STSv2", b"stsv1", b"", b"STSv1 extra"):
            self.assertInvalid(POLICY.replace(b"STSv1", version), "version")

    def test_badMode(self):
        for mode in (b"Enforce", b"report", b"", b"enforce now"):
            self.assertInvalid(POLICY.replace(b"enforce", mode), "mode")

    def test_maxAgeBounds(self):
        """
        C{max_age} is 0 to 31557600, digits only.
        """
        self.assertEqual(parsePolicy(POLICY.replace(b"86400", str(MAX_AGE_LIMIT).encode())).maxAge, MAX_AGE_LIMIT)
        for value in (str(MAX_AGE_LIMIT + 1).encode(), b"-1", b"+5", b"1e3", b"12345678901", b"", b"1 000", b"\xd9\xa1"):
            self.assertInvalid(POLICY.replace(b"86400", value), "max_age")

    def test_badPatterns(self):
        for pattern in (b"", b"*", b"*.", b"a..b", b"*.*.example.com", b"mx.*.example.com", b"-mx.example", b"mx_1.example", b"*mx.example", b"1.2.3.4:25"):
            self.assertInvalid(POLICY.replace(b"mx1.example.com", pattern), "mx")

    def test_notKeyValue(self):
        self.assertInvalid(POLICY + b"this is not a field\r\n", "line 6")
        self.assertInvalid(b"<html>\n" + POLICY, "line 1")

    def test_notUTF8(self):
        self.assertInvalid(POLICY + b"x: \xff\xfe\r\n", "UTF-8")

    def test_idnaPattern(self):
        """
        An internationalized pattern is kept as A-labels.
        """
        policy = parsePolicy(POLICY.replace(b"*.mail.example.com", "*.bücher.example".encode()))
        self.assertEqual(policy.mx[1], "*.xn--bcher-kva.example")
        self.assertTrue(policy.matches("mx.bücher.example"))


class MatchTests(SynchronousTestCase):
    """
    L{STSPolicy.matches} follows RFC 8461 section 4.1.
    """

    policy = STSPolicy("enforce", ("*.example.com", "mx.other.net"), 60)

    def test_wildcardOneLabel(self):
        self.assertTrue(self.policy.matches("mx.example.com"))
        self.assertFalse(self.policy.matches("example.com"))
        self.assertFalse(self.policy.matches("a.b.example.com"))
        self.assertFalse(self.policy.matches("mxexample.com"))

    def test_exact(self):
        self.assertTrue(self.policy.matches("mx.other.net"))
        self.assertFalse(self.policy.matches("other.net"))
        self.assertFalse(self.policy.matches("a.mx.other.net"))

    def test_caseAndTrailingDot(self):
        self.assertTrue(self.policy.matches("MX.Example.COM."))
        self.assertTrue(self.policy.matches("mx.OTHER.net."))
        self.assertFalse(self.policy.matches("mx.other.net.."))

    def test_notNames(self):
        self.assertFalse(self.policy.matches(""))
        self.assertFalse(self.policy.matches("*.example.com"))
        self.assertFalse(self.policy.matches("[192.0.2.1]"))

    _label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)

    @given(st.lists(_label, min_size=1, max_size=3), _label, _label, st.booleans(), st.booleans())
    def test_wildcardProperty(self, parent, label, extra, upper, dot):
        """
        C{*.parent} matches exactly C{label.parent}, in any case, with or
        without a final dot; never C{parent} or two labels more.
        """
        domain = ".".join(parent)
        policy = STSPolicy("enforce", ("*." + domain,), 60)

        def spell(name):
            return (name.upper() if upper else name) + ("." if dot else "")

        self.assertTrue(policy.matches(spell(f"{label}.{domain}")))
        self.assertFalse(policy.matches(spell(domain)))
        self.assertFalse(policy.matches(spell(f"{extra}.{label}.{domain}")))

    @given(
        st.sampled_from(["enforce", "testing"]),
        st.lists(st.builds(lambda w, ls: ("*." if w else "") + ".".join(ls), st.booleans(), st.lists(_label, min_size=1, max_size=3)), min_size=1, max_size=5, unique=True),
        st.integers(0, MAX_AGE_LIMIT),
        st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9]{1,32}", fullmatch=True)),
        st.floats(0, 2e9),
    )
    def test_roundTrips(self, mode, mx, maxAge, id, fetched):
        """
        L{STSPolicy.toText} reads back with L{parsePolicy}, and
        L{STSPolicy.toJSON} with L{STSPolicy.fromJSON}, through JSON.
        """
        policy = STSPolicy(mode, tuple(mx), maxAge, id, fetched)
        self.assertEqual(parsePolicy(policy.toText()), STSPolicy(mode, tuple(mx), maxAge))
        self.assertEqual(STSPolicy.fromJSON(json.loads(json.dumps(policy.toJSON()))), policy)


class FromJSONTests(SynchronousTestCase):
    """
    L{STSPolicy.fromJSON} refuses what is not a policy.
    """

    def test_invalid(self):
        good = STSPolicy("enforce", ("mx.example.com",), 60, "abc", 5.0).toJSON()
        for change in (
            {"mode": "strict"},
            {"mx": "mx.example.com"},
            {"mx": ["MX.example.com"]},
            {"mx": []},
            {"mx": ["a..b"]},
            {"maxAge": -1},
            {"maxAge": MAX_AGE_LIMIT + 1},
            {"maxAge": True},
            {"maxAge": "60"},
            {"id": "not valid!"},
            {"fetched": None},
        ):
            self.assertRaises(ValueError, STSPolicy.fromJSON, dict(good, **change))
        self.assertRaises(ValueError, STSPolicy.fromJSON, [good])


class ParseRecordTests(SynchronousTestCase):
    """
    L{parseRecord} reads RFC 8461 section 3.1 TXT records.
    """

    def test_valid(self):
        self.assertEqual(parseRecord("v=STSv1; id=20160831085700Z;"), "20160831085700Z")
        self.assertEqual(parseRecord("v=STSv1;id=abc"), "abc")
        self.assertEqual(parseRecord("v = STSv1 ;  id = abc ; ext_1=x.y ;"), "abc")
        self.assertEqual(parseRecord("v=STSv1; id=" + "a" * 32), "a" * 32)

    def test_invalid(self):
        for text in (
            "v=STSv1",
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=" + "a" * 33,
            "v=STSv1; id=2016-08-31",
            "v=STSv1; id=a; id=b",
            "v=STSv1;; id=a",
            "v=STSv1; id a",
            "v=STSv10; id=a",
            "v=spf1 -all",
            " v=STSv1; id=a",
            "V=STSv1; id=a",
        ):
            self.assertRaises(ValueError, parseRecord, text)


class _StubResolver:
    """
    An C{IResolver} with fixed TXT answers: a list of C{Record_TXT}, or an
    exception to fail with.
    """

    def __init__(self, answer):
        self.answer = answer
        self.queries = []

    def lookupText(self, name, timeout=None):
        self.queries.append(name)
        if isinstance(self.answer, BaseException):
            return defer.fail(self.answer)
        return defer.succeed(([dns.RRHeader(name, dns.TXT, payload=record) for record in self.answer], [], []))


class DiscoverRecordTests(SynchronousTestCase):
    """
    L{discoverRecord} finds the one valid STSv1 TXT record, or none.
    """

    def discover(self, answer):
        resolver = _StubResolver(answer)
        result = self.successResultOf(discoverRecord(resolver, "example.com"))
        self.assertEqual(resolver.queries, ["_mta-sts.example.com"])
        return result

    def test_one(self):
        """
        A record split into strings is joined; other TXT records are
        ignored.
        """
        records = [dns.Record_TXT(b"v=spf1 -all"), dns.Record_TXT(b"v=STSv1; ", b"id=abc;")]
        self.assertEqual(self.discover(records), "abc")

    def test_none(self):
        self.assertIsNone(self.discover([]))
        self.assertIsNone(self.discover([dns.Record_TXT(b"v=spf1 -all")]))
        self.assertIsNone(self.discover(dnserror.DNSNameError()))

    def test_severalOrBad(self):
        """
        Two STSv1 records, or a malformed one, are no valid record.
        """
        self.assertIsNone(self.discover([dns.Record_TXT(b"v=STSv1; id=a"), dns.Record_TXT(b"v=STSv1; id=b")]))
        self.assertIsNone(self.discover([dns.Record_TXT(b"v=STSv1; id=not-valid")]))
        self.assertIsNone(self.discover([dns.Record_TXT(b"v=STSv1; id=\xff")]))

    def test_dnsFailure(self):
        """
        A failure other than NXDOMAIN is a fetch error.
        """
        for exception in (dnserror.DNSServerError(), defer.TimeoutError(), dnserror.DNSQueryRefusedError()):
            failure = self.failureResultOf(discoverRecord(_StubResolver(exception), "example.com"), PolicyError)
            self.assertEqual(failure.value.resultType, FETCH_ERROR)
            self.assertIn("_mta-sts.example.com", failure.value.detail)


class NormalizeDomainTests(SynchronousTestCase):
    def test_normalize(self):
        self.assertEqual(normalizeDomain("Example.COM."), "example.com")
        self.assertEqual(normalizeDomain(b"example.com"), "example.com")
        self.assertEqual(normalizeDomain("bücher.example"), "xn--bcher-kva.example")
        for bad in ("[192.0.2.1]", "", "*.example.com", "a..b", b"\xff"):
            self.assertIsNone(normalizeDomain(bad))


_CA = None


def _ca() -> trustme.CA:
    global _CA
    if _CA is None:
        _CA = trustme.CA()
    return _CA


def _serverOptions(ca: trustme.CA, name: str):
    cert = ca.issue_cert(name)
    return ssl.PrivateCertificate.loadPEM(cert.private_key_and_cert_chain_pem.bytes()).options()


class _PolicyResource(resource.Resource):
    """
    Serves the policy file, or misbehaves as C{behaviour} says.

    @ivar arrived: fired with each request, when a test waits for one.
    """

    isLeaf = True

    def __init__(self) -> None:
        resource.Resource.__init__(self)
        self.policy = POLICY
        self.behaviour = "ok"
        self.requests: list = []
        self.arrived: defer.Deferred | None = None

    def render_GET(self, request):
        self.requests.append(request.path)
        if self.arrived is not None:
            arrived, self.arrived = self.arrived, None
            reactor.callLater(0, arrived.callback, request)
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b"not here"
        return getattr(self, "behave_" + self.behaviour)(request)

    def behave_ok(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.policy

    def behave_404(self, request):
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain")
        return b"no policy"

    def behave_redirect(self, request):
        request.setResponseCode(301)
        request.setHeader(b"location", b"https://mta-sts.example.com/elsewhere.txt")
        request.setHeader(b"content-type", b"text/plain")
        return self.policy

    def behave_html(self, request):
        request.setHeader(b"content-type", b"text/html")
        return self.policy

    def behave_garbage(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"\x00\x01 <?php echo 'hello'; ?>\r\n\xff"

    def behave_oversize(self, request):
        """
        A body of 1 MiB with its length announced.
        """
        request.setHeader(b"content-type", b"text/plain")
        return self.policy + b"#" * (1024 * 1024)

    def behave_chunked(self, request):
        """
        A body of 256 KiB, length not announced (chunked): the client must
        count.
        """
        request.setHeader(b"content-type", b"text/plain")
        for _ in range(64):
            request.write(b"x: " + b"y" * 4092 + b"\n")
        request.finish()
        return server.NOT_DONE_YET

    def behave_stall(self, request):
        return server.NOT_DONE_YET

    def behave_trickle(self, request):
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"content-length", b"%d" % (len(self.policy),))
        request.write(self.policy[:10])
        return server.NOT_DONE_YET


class _PolicyServer(protocol.ServerFactory):
    """
    A policy server on 127.0.0.1: HTTPS with C{options}, or, if C{silent},
    a TCP server that accepts connections and never says anything.
    """

    def __init__(self, options) -> None:
        self.resource = _PolicyResource()
        self.site = server.Site(self.resource)
        self.options = options
        self.silent = False
        self.connections: list = []

    def buildProtocol(self, addr):
        if self.silent:
            built = protocol.Protocol()
        else:
            built = TLSMemoryBIOFactory(self.options, False, self.site).buildProtocol(addr)
        self.connections.append(built)
        return built

    def start(self) -> int:
        self.site.doStart()
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.port.getHost().port

    async def stop(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abortConnection()
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        self.site.doStop()


class _EndToEnd(TestCase):
    """
    A DNS server with C{_mta-sts.example.com} TXT (id C{"1"}) and
    C{mta-sts.example.com} A records, a policy server, and an
    L{MTASTSPolicies} using them, with a fake clock.
    """

    def setUp(self):
        self.dns = DNSServer()
        self.dns.add("_mta-sts.example.com", dns.Record_TXT(b"v=STSv1; id=1", ttl=0))
        self.dns.add("mta-sts.example.com", dns.Record_A("127.0.0.1", ttl=0))
        self.resolver = client.Resolver(servers=[self.dns.start(reactor)], timeout=(2, 4))
        self.addCleanup(self.dns.stop)
        self.server = _PolicyServer(_serverOptions(_ca(), "mta-sts.example.com"))
        self.port = self.server.start()
        self.addCleanup(noConnectionsLeft, self)
        self.addCleanup(self.server.stop)
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.directory = self.mktemp()
        self.policies = self.make()

    def make(self, **kw) -> MTASTSPolicies:
        options = dict(reactor=reactor, trustRoot=self.trustRoot(), httpsPort=self.port, fetchTimeout=30.0, clock=self.clock)
        options.update(kw)
        return MTASTSPolicies(options.pop("resolver", self.resolver), self.directory, **options)

    def trustRoot(self, ca=None):
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM((ca or _ca()).cert_pem.bytes())])

    def setId(self, id: bytes) -> None:
        self.dns.clear("_mta-sts.example.com", dns.TXT)
        self.dns.add("_mta-sts.example.com", dns.Record_TXT(b"v=STSv1; id=" + id, ttl=0))

    def lookup(self, domain="example.com") -> defer.Deferred[STSLookup]:
        return self.policies.policyFor(domain)

    async def fetchFirst(self) -> STSLookup:
        """
        Fetch the policy once, successfully, then change the TXT id so that
        the next lookup fetches.
        """
        lookup = await self.lookup()
        self.assertIsNone(lookup.resultType)
        self.assertEqual(lookup.policy.id, "1")
        self.setId(b"2")
        return lookup


class FetchTests(_EndToEnd):
    """
    L{MTASTSPolicies} fetches, caches and refreshes policies.
    """

    async def test_fetch(self):
        """
        A policy is fetched and returned with the TXT id and the time it
        was fetched; it is cached on disk, in a file only the owner reads.
        """
        lookup = await self.lookup("Example.COM.")
        self.assertEqual(lookup.domain, "example.com")
        self.assertEqual(lookup.policy, STSPolicy("enforce", ("mx1.example.com", "*.mail.example.com"), 86400, "1", self.clock.seconds()))
        self.assertEqual((lookup.resultType, lookup.fromCache), (None, False))
        self.assertEqual(self.server.resource.requests, [b"/.well-known/mta-sts.txt"])
        self.assertEqual(self.policies.stats["fetches"], 1)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        path = os.path.join(self.directory, "example.com.json")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.directory), ["example.com.json"])

    async def test_cacheHit(self):
        """
        With the TXT id unchanged, the cached policy is used, not fetched.
        """
        first = await self.lookup()
        self.clock.advance(3600)
        second = await self.lookup()
        self.assertEqual(second.policy, first.policy)
        self.assertTrue(second.fromCache)
        self.assertIsNone(second.resultType)
        self.assertEqual(len(self.server.resource.requests), 1)
        self.assertEqual(self.policies.stats["cacheHits"], 1)

    async def test_idChanged(self):
        """
        A new TXT id makes a fetch, and the new policy replaces the cached
        one.
        """
        await self.fetchFirst()
        self.server.resource.policy = POLICY.replace(b"enforce", b"testing")
        with capturedLogs() as events:
            lookup = await self.lookup()
        self.assertEqual((lookup.policy.mode, lookup.policy.id, lookup.fromCache), ("testing", "2", False))
        self.assertEqual(len(self.server.resource.requests), 2)
        self.assertEqual(self.policies.cached("example.com"), lookup.policy)
        self.assertEqual([e["log_format"].split(":")[0] for e in _ours(events)], ["Refreshed the MTA-STS policy of {domain}"])

    async def test_dueForRefresh(self):
        """
        After a day, a policy is fetched again even with the same id, and
        its lifetime starts again.
        """
        first = await self.lookup()
        self.clock.advance(86400 / 2 + 1)
        lookup = await self.lookup()
        self.assertEqual(len(self.server.resource.requests), 2)
        self.assertEqual(lookup.policy.fetched, first.policy.fetched + 86400 / 2 + 1)

    async def test_concurrent(self):
        """
        Lookups of a domain while one is under way share its fetch.
        """
        lookups = [self.lookup("example.com"), self.lookup("EXAMPLE.com."), self.lookup("example.com")]
        results = await defer.gatherResults(lookups)
        self.assertEqual(len(self.server.resource.requests), 1)
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], results[2])

    async def test_noRecord(self):
        """
        Without a TXT record there is no policy, no failure and no fetch.
        """
        self.dns.clear("_mta-sts.example.com", dns.TXT)
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.resultType, lookup.fromCache), (None, None, False))
        self.assertEqual(self.server.resource.requests, [])
        lookup = await self.lookup("nosuchdomain.example")
        self.assertEqual((lookup.policy, lookup.resultType), (None, None))

    async def test_splitRecord(self):
        """
        A TXT record in several strings, beside other TXT records, is
        found over the wire.
        """
        self.dns.clear("_mta-sts.example.com", dns.TXT)
        self.dns.add("_mta-sts.example.com", dns.Record_TXT(b"v=STSv1; ", b"id=abc", ttl=0))
        self.dns.add("_mta-sts.example.com", dns.Record_TXT(b"v=spf1 -all", ttl=0))
        lookup = await self.lookup()
        self.assertEqual(lookup.policy.id, "abc")

    async def test_notADomain(self):
        """
        An address literal has no policy; nothing is asked.
        """
        lookup = await self.lookup("[192.0.2.1]")
        self.assertEqual(lookup, STSLookup("[192.0.2.1]", None, None, "'[192.0.2.1]' is not a domain name", False))
        self.assertEqual(self.dns.queries, [])

    async def test_unexpected(self):
        """
        An unexpected exception is logged and reported as a fetch error;
        the lookup does not fail.
        """

        class Broken:
            def lookupText(self, name, timeout=None):
                raise RuntimeError("broken resolver")

        self.policies = self.make(resolver=Broken())
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.resultType), (None, FETCH_ERROR))
        self.assertIn("broken resolver", lookup.detail)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_noRecordKeepsCache(self):
        """
        A TXT record that disappears does not remove a cached policy before
        it expires; after, there is no policy.
        """
        first = await self.fetchFirst()
        self.dns.clear("_mta-sts.example.com", dns.TXT)
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.resultType, lookup.fromCache), (first.policy, None, True))
        self.clock.advance(86400)
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.resultType), (None, None))
        self.assertEqual(os.listdir(self.directory), [])

    async def test_modeNone(self):
        """
        A C{mode: none} policy is cached and means no policy.
        """
        self.server.resource.policy = b"version: STSv1\nmode: none\nmax_age: 600\n"
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.resultType, lookup.fromCache), (None, None, False))
        self.assertEqual(self.policies.cached("example.com").mode, "none")
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.fromCache), (None, True))
        self.assertEqual(len(self.server.resource.requests), 1)

    async def test_persistent(self):
        """
        A new L{MTASTSPolicies} on the same directory has the cache: with
        the id unchanged it does not fetch, even with the server gone.
        """
        first = await self.lookup()
        await self.server.stop()
        self.policies = self.make()
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.fromCache, lookup.resultType), (first.policy, True, None))

    async def test_memoryOnly(self):
        """
        Without a directory the cache is kept in memory only.
        """
        self.directory = None
        self.policies = self.make()
        await self.lookup()
        lookup = await self.lookup()
        self.assertTrue(lookup.fromCache)

    async def test_corruptCacheFile(self):
        """
        Corrupt cache files are removed, with a log line each, and the
        policy is fetched again.
        """
        os.makedirs(self.directory, exist_ok=True)
        files = {
            "example.com.json": b"{not json",
            "other.example.json": json.dumps({"domain": "other.example", "policy": {"mode": "enforce"}}).encode(),
            "third.example.json": json.dumps({"domain": "example.com", "policy": STSPolicy("enforce", ("a.b",), 5).toJSON()}).encode(),
        }
        for name, data in files.items():
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(data)
        with open(os.path.join(self.directory, ".tmp-abc.json"), "wb") as f:
            f.write(b"left over")
        with capturedLogs() as events:
            self.policies = self.make()
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(sorted(os.path.basename(e["path"]) for e in _ours(events)), sorted(files))
        lookup = await self.lookup()
        self.assertEqual((lookup.fromCache, lookup.policy.id), (False, "1"))

    async def test_dnsFailure(self):
        """
        A DNS failure with nothing cached is a fetch error; with a cached
        policy, the policy is used and the failure noted.
        """
        self.policies = self.make(resolver=_StubResolver(dnserror.DNSServerError()))
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.resultType), (None, FETCH_ERROR))
        first = await self.make().policyFor("example.com")
        self.policies = self.make(resolver=_StubResolver(dnserror.DNSServerError()))
        lookup = await self.lookup()
        self.assertEqual((lookup.policy, lookup.resultType, lookup.fromCache), (first.policy, FETCH_ERROR, True))


class RefreshFailureTests(_EndToEnd):
    """
    A failed fetch keeps an unexpired cached policy, and reports its result
    type; after the policy expires, the failure comes with no policy.
    """

    async def refreshFails(self, change, resultType: str, fragment: str) -> None:
        """
        Fetch the policy, call C{change} to break the policy server, check
        that the next lookup keeps the cached policy, and that the one after
        it expires has none.
        """
        first = await self.fetchFirst()
        await defer.maybeDeferred(change)
        with capturedLogs() as events:
            kept = await self.lookup()
        self.assertEqual((kept.policy, kept.resultType, kept.fromCache), (first.policy, resultType, True))
        self.assertIn(fragment, kept.detail)
        self.assertNotIn("\n", kept.detail)
        self.assertEqual([e["log_format"].split(" (")[0] for e in _ours(events)], ["Kept the cached MTA-STS policy of {domain}"])
        self.assertEqual(self.policies.stats["fetchFailures", resultType], 1)
        self.clock.advance(86400)
        expired = await self.lookup()
        self.assertEqual((expired.policy, expired.resultType, expired.fromCache), (None, resultType, False))
        self.assertIsNone(self.policies.cached("example.com"))

    async def behaving(self, behaviour: str, resultType: str, fragment: str) -> None:
        def change():
            self.server.resource.behaviour = behaviour

        await self.refreshFails(change, resultType, fragment)

    async def test_serverDown(self):
        await self.refreshFails(lambda: defer.Deferred.fromCoroutine(self.server.stop()), FETCH_ERROR, "refused")

    async def test_notFound(self):
        await self.behaving("404", FETCH_ERROR, "HTTP status 404")

    async def test_redirect(self):
        """
        Redirects are not followed.
        """
        await self.behaving("redirect", FETCH_ERROR, "HTTP status 301")
        self.assertNotIn(b"/elsewhere.txt", self.server.resource.requests)

    async def test_contentType(self):
        await self.behaving("html", FETCH_ERROR, "text/html")

    async def test_oversize(self):
        await self.behaving("oversize", FETCH_ERROR, "larger than 65536")

    async def test_oversizeChunked(self):
        await self.behaving("chunked", FETCH_ERROR, "larger than 65536")

    async def test_garbage(self):
        await self.behaving("garbage", POLICY_INVALID, "sts-policy-invalid")

    async def withCertificate(self, options) -> None:
        def change():
            self.server.options = options

        await self.refreshFails(change, WEBPKI_INVALID, "TLS failed")

    async def test_otherName(self):
        """
        A certificate for another name is refused.
        """
        await self.withCertificate(_serverOptions(_ca(), "mta-sts.example.net"))

    async def test_untrustedCA(self):
        """
        A certificate from an authority not trusted is refused.
        """
        await self.withCertificate(_serverOptions(trustme.CA(), "mta-sts.example.com"))

    def timesOut(self, prepare):
        """
        A server that stalls makes the fetch time out on the clock, and the
        connection is closed.
        """

        async def run():
            first = await self.fetchFirst()
            arrived = prepare()
            pending = self.lookup()
            await arrived
            self.assertNoResult(pending)
            self.clock.advance(30)
            kept = await pending
            self.assertEqual((kept.policy, kept.resultType), (first.policy, FETCH_ERROR))
            self.assertIn("no policy within 30 seconds", kept.detail)
            await noConnectionsLeft(self)

        return defer.Deferred.fromCoroutine(run())

    def test_silent(self):
        """
        A server that accepts the connection and never answers (not even
        the TLS handshake).
        """

        def prepare():
            self.server.silent = True
            return _until(lambda: len(self.server.connections) == 2)

        return self.timesOut(prepare)

    def test_stall(self):
        """
        A server that reads the request and never responds.
        """

        def prepare():
            self.server.resource.behaviour = "stall"
            self.server.resource.arrived = defer.Deferred()
            return self.server.resource.arrived

        return self.timesOut(prepare)

    def test_trickle(self):
        """
        A server that sends the headers and part of the body, then stops.
        """
        reading = []
        original = PolicyFetcher._readResponse

        def _readResponse(fetcher, response, url):
            result = original(fetcher, response, url)
            reading.append(result)
            return result

        self.patch(PolicyFetcher, "_readResponse", _readResponse)

        def prepare():
            self.server.resource.behaviour = "trickle"
            del reading[:]
            return _until(lambda: reading)

        return self.timesOut(prepare)


def _ours(events: list) -> list:
    """
    The log events of the module tested.
    """
    return [e for e in events if e.get("log_namespace", "").startswith("mailproto._security._mtasts")]


async def _until(condition) -> None:
    """
    Wait, on the real reactor, until C{condition()} is true (at most two
    seconds).
    """
    for _ in range(200):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition never met")
