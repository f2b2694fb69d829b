# -*- test-case-name: mailproto.test.test_sharedlimits -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._relayd._sharedlimits}: addresses on the wire, and
the limits of a daemon of several workers, each worker's side wired by a
fake C{ask} to one real parent side (L{ConnectionLimits},
L{AuthFailures}) in the same process, answering at once or when the test
lets it.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mailproto._authfailures import AuthFailures
from mailproto._relayd import _sharedlimits
from mailproto._relayd._connlimits import MAX_CLIENTS, MAX_CLIENTS_PER_ADDRESS, ConnectionLimits, ConnectionLimitsFactory
from mailproto._relayd._sharedlimits import (
    ParentAuthFailures,
    ParentLimits,
    RemoteConnectionLimits,
    SharedAuthFailures,
    addressFromWire,
    addressToWire,
)
from mailproto.test.test_connlimits import _AbortableTransport, _ServerFactory, peer
from mailproto.test.test_server_auth import WRONG, Connection, ImplicitTLSTransport, authFactory, plain, replyCodes

A = b"192.0.2.7"
B = b"192.0.2.8"


class WireTests(SynchronousTestCase):
    """
    L{addressToWire} and L{addressFromWire}.
    """

    ADDRESSES = [
        IPv4Address("TCP", "192.0.2.7", 40000),
        IPv4Address("UDP", "192.0.2.7", 53),
        IPv6Address("TCP", "2001:db8::7", 40000),
        IPv6Address("TCP", "fe80::1%eth0", 25, flowInfo=7, scopeID=2),
        IPv6Address("TCP", "fe80::1", 25, scopeID="eth0"),
        UNIXAddress(b"/run/mailrelay/smtp.sock"),
        UNIXAddress(b"\0abstract\xff\x80"),
        UNIXAddress(None),
    ]

    def test_roundTrip(self):
        """
        Each kind of address comes back equal, directly and through JSON,
        and goes as C{str} and C{int} values only.
        """
        for address in self.ADDRESSES:
            wire = addressToWire(address)
            self.assertTrue(all(type(v) in (str, int) for v in wire.values()), wire)
            self.assertEqual(addressFromWire(wire), address)
            back = addressFromWire(json.loads(json.dumps(wire)))
            self.assertEqual(back, address)
            self.assertIs(type(back), type(address))
            if isinstance(address, IPv6Address):
                self.assertEqual((back.flowInfo, back.scopeID), (address.flowInfo, address.scopeID))

    def test_shapes(self):
        """
        The fields of each family.
        """
        self.assertEqual(
            addressToWire(IPv6Address("TCP", "fe80::1%eth0", 25, flowInfo=7, scopeID=2)),
            {"family": "INET6", "type": "TCP", "host": "fe80::1%eth0", "port": 25, "flowInfo": 7, "scopeID": 2},
        )
        self.assertEqual(addressToWire(UNIXAddress(None)), {"family": "UNIX"})
        self.assertEqual(addressToWire(UNIXAddress(b"/s")), {"family": "UNIX", "name": "/s"})

    def test_otherAddress(self):
        """
        Other kinds of address cannot be sent.
        """
        self.assertRaises(ValueError, addressToWire, HostnameAddress(b"mx.example", 25))
        self.assertRaises(ValueError, addressToWire, None)

    def test_garbage(self):
        """
        What is not an address from L{addressToWire} is a C{ValueError}.
        """
        good = {"family": "INET", "type": "TCP", "host": "192.0.2.7", "port": 1}
        for wire in [
            None,
            "192.0.2.7",
            [],
            {},
            {"family": "INET7"},
            {**good, "port": "1"},
            {**good, "port": True},
            {**good, "port": 1.0},
            {**good, "host": None},
            {**good, "type": "SCTP"},
            {key: value for key, value in good.items() if key != "host"},
            {**good, "family": "INET6", "flowInfo": 0},
            {**good, "family": "INET6", "flowInfo": 0, "scopeID": None},
            {"family": "UNIX", "name": "\u0100"},
            {"family": "UNIX", "name": 7},
        ]:
            self.assertRaises(ValueError, addressFromWire, wire)


class _Parent:
    """
    A parent in the same process: L{ParentLimits} and
    L{ParentAuthFailures} over real counts, asked by its workers through
    L{ask}, as the relay's AMP commands would (arguments and answers are
    checked to be text).  While L{holding}, questions wait in L{pending}
    until L{flush}; news of blocked addresses goes to every worker.
    """

    def __init__(self, clock, limits=None, failures=None):
        self.limits = ParentLimits(limits or ConnectionLimits(maxClients=0, maxPerAddress=0, clock=clock))
        self.auth = ParentAuthFailures(failures or AuthFailures(limit=3, window=600, clock=clock))
        self.workers = []
        self.holding = False
        self.pending = []
        self.down = False

    def worker(self, clock):
        number = len(self.workers)
        worker = _Worker(number, lambda name, **arguments: self.ask(number, name, **arguments), clock)
        self.workers.append(worker)
        return worker

    def ask(self, worker, name, **arguments):
        if self.down:
            return defer.fail(ConnectionLost("no parent"))
        for value in arguments.values():
            assert type(value) is str, (name, arguments)
        answer = defer.Deferred()
        self.pending.append((worker, name, arguments, answer))
        if not self.holding:
            self.flush()
        return answer

    def flush(self):
        pending, self.pending = self.pending, []
        for worker, name, arguments, answer in pending:
            try:
                result = self.answer(worker, name, **arguments)
            except Exception:
                answer.errback()
            else:
                answer.callback(result)

    def answer(self, worker, name, **arguments):
        if name == "admit":
            return {"limit": self.limits.admit(worker, arguments["address"], arguments["listener"])}
        if name == "release":
            self.limits.release(worker, arguments["address"])
        elif name == "refused":
            self.limits.refused(arguments["listener"], arguments["limit"], arguments["address"])
        elif name == "authAttempt":
            self.broadcast(self.auth.attempt(arguments["address"]))
        elif name == "authForgive":
            self.broadcast(self.auth.forgive(arguments["address"]))
        else:
            raise KeyError(name)
        return {}

    def broadcast(self, news):
        for address, seconds in news:
            for worker in self.workers:
                worker.auth.blockedUntil(address.decode("latin-1"), seconds)


class _Worker:
    """
    One worker: its remote connection limits, a listener held to them,
    and its shared AUTH failure counts.
    """

    def __init__(self, number, ask, clock):
        self.number = number
        self.server = _ServerFactory()
        self.limits = RemoteConnectionLimits(ask, clock=clock)
        self.factory = ConnectionLimitsFactory(self.server, self.limits, "smtp")
        self.auth = SharedAuthFailures(ask, limit=3, window=600, clock=clock)

    def connect(self, host="192.0.2.1"):
        transport = _AbortableTransport(peerAddress=peer(host))
        protocol = self.factory.buildProtocol(peer(host))
        protocol.makeConnection(transport)
        return protocol, transport


def greeted(transport) -> bool:
    return transport.value() == b"220 hello\r\n"


class ConnectionLimitsAcrossWorkersTests(SynchronousTestCase):
    """
    L{RemoteConnectionLimits} on two workers, L{ParentLimits} on one
    L{ConnectionLimits}.
    """

    def setUp(self):
        self.clock = Clock()
        self.counts = ConnectionLimits(maxClients=3, maxPerAddress=2, clock=self.clock)
        self.parent = _Parent(self.clock, limits=self.counts)
        self.one = self.parent.worker(self.clock)
        self.two = self.parent.worker(self.clock)

    def test_maxClients(self):
        """
        The overall limit holds for the two workers together, and room
        made on one is taken on the other.
        """
        first, t1 = self.one.connect("192.0.2.1")
        self.one.connect("192.0.2.2")
        _, t3 = self.two.connect("192.0.2.3")
        _, t4 = self.two.connect("192.0.2.4")
        self.assertEqual([greeted(t) for t in (t1, t3)], [True, True])
        self.assertEqual(t4.value(), b"421 4.7.0 mx.example Too many connections to this server, try again later\r\n")
        self.assertEqual(self.counts.open, 3)
        first.connectionLost(None)
        self.assertEqual(self.counts.open, 2)
        _, t5 = self.two.connect("192.0.2.4")
        self.assertTrue(greeted(t5))
        self.assertEqual((self.parent.limits.held(0), self.parent.limits.held(1)), (1, 2))

    def test_maxPerAddress(self):
        """
        The limit per address holds for the two workers together; the
        parent logs and counts the refusal; other addresses are not
        affected.
        """
        seen = []
        self.counts.observers.append(lambda *args: seen.append(args))
        _, t1 = self.one.connect()
        _, t2 = self.two.connect()
        with capturedLogs() as events:
            _, t3 = self.one.connect()
        self.assertTrue(greeted(t1) and greeted(t2))
        self.assertIn(b"Too many connections from your address", t3.value())
        self.assertEqual(seen, [("smtp", MAX_CLIENTS_PER_ADDRESS)])
        self.assertEqual([e["peer"] for e in events], ["192.0.2.1"])
        _, t4 = self.two.connect("192.0.2.9")
        self.assertTrue(greeted(t4))

    def test_inFlight(self):
        """
        Admissions asked at once by the two workers are decided by the
        parent one after the other: the last over the limit is refused.
        """
        self.parent.holding = True
        transports = [w.connect(f"192.0.2.{n}")[1] for n, w in enumerate([self.one, self.two] * 2)]
        self.assertEqual([t.value() for t in transports], [b""] * 4)
        self.parent.flush()
        self.assertEqual([greeted(t) for t in transports], [True, True, True, False])
        self.assertIn(b"Too many connections to this server", transports[3].value())

    def test_lostWhileAsked(self):
        """
        A connection that ends while the parent decides is released there
        once the admission comes back.
        """
        self.parent.holding = True
        protocol, _ = self.one.connect()
        protocol.connectionLost(None)
        self.parent.flush()
        self.assertEqual(self.counts.open, 1)
        self.parent.flush()
        self.assertEqual((self.counts.open, self.counts._openFrom), (0, {}))

    def test_workerGone(self):
        """
        A worker's connections are released when it goes; a release for
        a connection a worker was never given changes nothing.
        """
        self.one.connect("192.0.2.1")
        self.one.connect("192.0.2.1")
        self.two.connect("192.0.2.2")
        wire = json.dumps(addressToWire(peer("192.0.2.2")))
        self.parent.limits.release(0, wire)
        self.parent.limits.release(7, wire)
        self.assertEqual(self.counts.open, 3)
        self.assertEqual(self.parent.limits.workerGone(0), 2)
        self.assertEqual(self.parent.limits.workerGone(0), 0)
        self.assertEqual((self.counts.open, self.counts.openFrom(peer("192.0.2.1"))), (1, 0))

    def test_parentUnreachable(self):
        """
        Without a parent, connections are admitted uncounted (and logged),
        and their end releases nothing.
        """
        self.parent.down = True
        with capturedLogs() as events:
            protocol, transport = self.one.connect()
        self.assertTrue(greeted(transport))
        self.assertEqual(len(events), 1)
        self.parent.down = False
        protocol.connectionLost(None)
        self.assertEqual(self.counts.open, 0)
        self.assertEqual(self.parent.limits.held(0), 0)

    def test_parentGarbage(self):
        """
        Answers from the parent of the wrong shape, or an C{ask} that
        raises, fail the admission.
        """
        for answer in [{"limit": 7}, 3, b"max-clients"]:
            limits = RemoteConnectionLimits(lambda name, **arguments: defer.succeed(answer), clock=self.clock)
            self.failureResultOf(limits.admit(peer("192.0.2.1")), ValueError)

        def broken(name, **arguments):
            raise RuntimeError("no")

        limits = RemoteConnectionLimits(broken, clock=self.clock)
        self.failureResultOf(limits.admit(peer("192.0.2.1")), RuntimeError)
        limits.release(peer("192.0.2.1"))
        limits.refused("smtp", MAX_CLIENTS, peer("192.0.2.1"))

    def test_answers(self):
        """
        The answer to C{"admit"} may be the limit itself or a response
        mapping; no limit, or an empty one, is an admission.  What is
        asked: the address as JSON text, the listener's name.
        """
        asked = []
        cases = [
            (None, None),
            ("", None),
            ({}, None),
            ({"limit": None}, None),
            ("max-clients", MAX_CLIENTS),
            ({"limit": "max-clients"}, MAX_CLIENTS),
        ]
        for answer, limit in cases:

            def ask(name, answer=answer, **arguments):
                asked.append((name, arguments))
                return defer.succeed(answer)

            limits = RemoteConnectionLimits(ask, clock=self.clock)
            self.assertEqual(self.successResultOf(limits.admit(peer("192.0.2.1"), listener="smtps")), limit)
        self.assertEqual(asked[0][0], "admit")
        self.assertEqual(asked[0][1]["listener"], "smtps")
        self.assertEqual(addressFromWire(json.loads(asked[0][1]["address"])), peer("192.0.2.1"))

    def test_addressNotSendable(self):
        """
        A client address that cannot cross fails the admission without
        asking.
        """
        asked = []
        limits = RemoteConnectionLimits(lambda name, **arguments: asked.append(name), clock=self.clock)
        self.failureResultOf(limits.admit(HostnameAddress(b"mx.example", 25)), ValueError)
        self.assertEqual(asked, [])

    def test_parentRejectsGarbage(self):
        """
        The parent side refuses addresses that are not from
        L{addressToWire}, before counting anything.
        """
        for text in ["", "{", '"x"', '{"family": "INET"}']:
            self.assertRaises(ValueError, self.parent.limits.admit, 0, text)
            self.assertRaises(ValueError, self.parent.limits.release, 0, text)
        self.assertEqual(self.counts.open, 0)


class AuthFailuresAcrossWorkersTests(SynchronousTestCase):
    """
    L{SharedAuthFailures} on two workers, L{ParentAuthFailures} on one
    L{AuthFailures}: limit 3 in 600 seconds.
    """

    def setUp(self):
        self.clock = Clock()
        self.counts = AuthFailures(limit=3, window=600, clock=self.clock)
        self.parent = _Parent(self.clock, failures=self.counts)
        self.one = self.parent.worker(self.clock)
        self.two = self.parent.worker(self.clock)

    def test_blockedEverywhere(self):
        """
        An address that fails on worker 1 is blocked on worker 2 as soon
        as the parent says so, for as long as the parent's count holds;
        other addresses are not.
        """
        for _ in range(2):
            self.one.auth.failed(A)
            self.clock.advance(10)
        self.assertFalse(self.two.auth.blocked(A))
        self.one.auth.failed(A)
        self.assertTrue(self.one.auth.blocked(A))
        self.assertTrue(self.two.auth.blocked(A))
        self.assertFalse(self.two.auth.local.blocked(A))
        self.assertFalse(self.two.auth.blocked(B))
        # The first failure (t=0) ages out at t=600.
        self.clock.advance(600 - 20 - 0.5)
        self.assertTrue(self.two.auth.blocked(A))
        self.clock.advance(1)
        self.assertFalse(self.two.auth.blocked(A))
        self.assertFalse(self.counts.blocked(A))

    def test_addUp(self):
        """
        Failures seen by different workers add up to the daemon's limit,
        though neither worker's own count reaches it.
        """
        self.one.auth.attempt(A)
        self.two.auth.attempt(A)
        self.assertFalse(self.one.auth.blocked(A))
        self.one.auth.attempt(A)
        self.assertEqual((self.one.auth.local.blocked(A), self.two.auth.local.blocked(A)), (False, False))
        self.assertEqual((self.one.auth.blocked(A), self.two.auth.blocked(A)), (True, True))

    def test_forgiven(self):
        """
        An attempt forgiven (it succeeded) after the parent announced a
        block lifts the block everywhere.
        """
        self.one.auth.failed(A)
        self.one.auth.failed(A)
        self.two.auth.attempt(A)
        self.assertTrue(self.one.auth.blocked(A))
        self.two.auth.forgive(A)
        self.assertFalse(self.one.auth.blocked(A))
        self.assertFalse(self.two.auth.blocked(A))
        self.assertEqual(len(self.counts._failures[A]), 2)

    def test_inFlightBound(self):
        """
        While the parent has not answered, each worker holds the address
        to its own count: the daemon checks at most the limit plus what
        was in flight, never more than the limit per worker.
        """
        self.parent.holding = True
        checked = 0
        for worker in [self.one, self.two] * 5:
            if not worker.auth.blocked(A):
                worker.auth.attempt(A)
                checked += 1
        self.assertEqual(checked, 6)
        self.parent.flush()
        self.assertEqual([(w.auth.blocked(A), w.auth.blocked(B)) for w in self.parent.workers], [(True, False)] * 2)

    def test_parentUnreachable(self):
        """
        Without a parent, each worker still counts on its own.
        """
        self.parent.down = True
        for _ in range(3):
            self.assertFalse(self.one.auth.blocked(A))
            self.one.auth.attempt(A)
        self.assertTrue(self.one.auth.blocked(A))
        self.assertFalse(self.two.auth.blocked(A))

    def test_throughTheServer(self):
        """
        Two ESMTP servers, one per worker: wrong passwords on the first
        make the second refuse AUTH from the address, even a right one,
        with C{421 4.7.0}; another address logs in there.
        """
        first = authFactory(clock=self.clock, authFailures=self.one.auth, authFailureDelay=1.0, maxAuthFailures=10)
        second = authFactory(clock=self.clock, authFailures=self.two.auth, authFailureDelay=1.0, maxAuthFailures=10)
        conn = Connection(first, ImplicitTLSTransport)
        conn.ehlo()
        for _ in range(3):
            lines = conn.send(b"AUTH PLAIN " + plain(password=WRONG) + b"\r\n") + conn.advance(10)
            self.assertEqual(replyCodes(lines), [b"535 5.7.8"])
        blocked = Connection(second, ImplicitTLSTransport)
        blocked.ehlo()
        self.assertEqual(blocked.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"421 4.7.0"])
        self.assertTrue(blocked.transport.disconnecting)
        other = Connection(second, ImplicitTLSTransport, peer=IPv4Address("TCP", "198.51.100.9", 40000))
        other.ehlo()
        self.assertEqual(other.codes(b"AUTH PLAIN " + plain() + b"\r\n"), [b"235 2.7.0"])
        # A success is forgiven at the parent too.
        self.assertNotIn(b"198.51.100.9", self.counts._failures)

    def test_settable(self):
        """
        The limit and window can be changed (a configuration reload).
        """
        self.one.auth.limit = 1
        self.one.auth.window = 5
        self.assertEqual((self.one.auth.local.limit, self.one.auth.local.window), (1, 5))
        self.assertEqual((self.one.auth.limit, self.one.auth.window), (1, 5))


class ParentAuthFailuresTests(SynchronousTestCase):
    """
    L{ParentAuthFailures}: the news for the workers.
    """

    def setUp(self):
        self.clock = Clock()
        self.counts = AuthFailures(limit=3, window=100, clock=self.clock)
        self.parent = ParentAuthFailures(self.counts)

    def test_news(self):
        """
        News when an address becomes blocked (for how long), again when
        its block ends later, none while nothing changes; text addresses
        are taken as octets.
        """
        news = []
        for _ in range(3):
            news.append(self.parent.attempt("192.0.2.7"))
            self.clock.advance(10)
        self.assertEqual(news, [[], [], [(A, 80.0)]])
        # t=30: the block now ends at 110 (10 + 100), not 100.
        self.assertEqual(self.parent.attempt(A), [(A, 80.0)])
        self.assertEqual(self.parent.forgive(A), [])
        self.assertEqual(self.parent.blockedNow(), [(A, 70.0)])
        self.clock.advance(70)
        self.assertEqual(self.parent.blockedNow(), [])
        self.assertEqual(self.parent.attempt(B), [])

    def test_sameEnd(self):
        """
        Attempts at one instant that do not move the block's end are not
        news.
        """
        self.assertEqual([self.parent.attempt(A) for _ in range(3)], [[], [], [(A, 100.0)]])
        self.assertEqual(self.parent.attempt(A), [])
        self.clock.advance(1)
        self.assertEqual(self.parent.blockedNow(), [(A, 99.0)])
        # At t=1 the failures are at 0, 0, 0, 0, 1, 1, 1: the third
        # latest moves to 1, and the block's end to 101.
        self.assertEqual([self.parent.attempt(A) for _ in range(3)], [[], [], [(A, 100.0)]])

    def test_unblocked(self):
        """
        A forgiven attempt that lifts a block is news (C{0.0}); one that
        lifts nothing is not.
        """
        for _ in range(3):
            self.parent.attempt(A)
        self.assertEqual(self.parent.forgive(A), [(A, 0.0)])
        self.assertEqual(self.parent.forgive(A), [])
        self.assertEqual(self.parent.blockedNow(), [])

    def test_blockedFor(self):
        """
        L{AuthFailures.blockedFor}: the seconds until the C{limit}-th
        latest failure ages out; C{0.0} if not blocked.
        """
        self.assertEqual(self.counts.blockedFor(A), 0.0)
        for step in (0, 10, 10, 10):
            self.clock.advance(step)
            self.counts.failed(A)
        self.assertEqual(self.counts.blockedFor(A), 80.0)
        self.clock.advance(80)
        self.assertEqual(self.counts.blockedFor(A), 0.0)
        self.assertFalse(self.counts.blocked(A))
        self.assertEqual(AuthFailures(limit=0, window=9, clock=self.clock).blockedFor(A), 9.0)


class BoundsTests(SynchronousTestCase):
    """
    The memory of blocked addresses is bounded.
    """

    def test_workerBounded(self):
        """
        A worker remembers at most C{MAX_BLOCKED} blocked addresses: those
        whose block ended first go, then the oldest told; a block of zero
        seconds or less is forgotten.
        """
        self.patch(_sharedlimits, "MAX_BLOCKED", 10)
        clock = Clock()
        failures = SharedAuthFailures(lambda name, **arguments: defer.succeed({}), limit=3, window=600, clock=clock)
        failures.blockedUntil("198.51.100.1", 5)
        for n in range(20):
            failures.blockedUntil(b"192.0.2.%d" % n, 100)
        clock.advance(6)
        failures.blockedUntil(b"192.0.2.99", 100)
        self.assertEqual(len(failures._blocked), 10)
        self.assertTrue(failures.blocked(b"192.0.2.99"))
        self.assertTrue(failures.blocked(b"192.0.2.19"))
        self.assertFalse(failures.blocked(b"192.0.2.0"))
        failures.blockedUntil(b"192.0.2.99", 0)
        self.assertFalse(failures.blocked(b"192.0.2.99"))
        failures.blockedUntil(b"192.0.2.19", -1)
        self.assertFalse(failures.blocked(b"192.0.2.19"))

    def test_expiredForgotten(self):
        """
        A block that has ended is forgotten when it is next looked at.
        """
        clock = Clock()
        failures = SharedAuthFailures(lambda name, **arguments: defer.succeed({}), clock=clock)
        failures.blockedUntil(A, 5)
        clock.advance(5)
        self.assertFalse(failures.blocked(A))
        self.assertEqual(failures._blocked, {})

    def test_parentBounded(self):
        """
        The parent remembers at most C{MAX_BLOCKED} announced blocks.
        """
        self.patch(_sharedlimits, "MAX_BLOCKED", 10)
        clock = Clock()
        parent = ParentAuthFailures(AuthFailures(limit=1, window=100, clock=clock))
        for n in range(25):
            self.assertEqual(len(parent.attempt(b"192.0.2.%d" % n)), 1)
        self.assertEqual(len(parent._told), 10)
        self.assertEqual(len(parent.blockedNow()), 10)
