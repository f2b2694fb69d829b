# -*- test-case-name: mailproto.test.test_workermetrics -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._relayd._workermetrics}: a worker's
L{MetricsForwarder} on a fake clock and a fake C{ask}, the parent's
L{ForwardedMetrics} on real L{RelayMetrics} fed good and bad calls, the
two over a real AMP connection in memory, a worker's intake wired to
count the same as one process, and C{twistd mailrelay --workers 2
--metrics} scraped over loopback.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import time
import types
import urllib.request

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailproto._relayd import _workerprotocol as wire
from mailproto._relayd._metrics import RelayMetrics
from mailproto._relayd._workermetrics import (
    DELAY,
    FORWARDED,
    MAX_COUNT,
    MAX_ENTRIES,
    ForwardedMetrics,
    MetricsForwarder,
    checkCall,
    decodeCalls,
    encodeCalls,
)
from mailproto._relayd._workers import ParentProtocol, WorkerPool

# The intake's metrics: what a worker counts (the rest is the parent's).
INTAKE = (
    "mailrelay_connections_total",
    "mailrelay_connections_open",
    "mailrelay_messages_rejected_total",
    "mailrelay_intake_policy_total",
    "mailrelay_limits_total",
    "mailrelay_policy_refusals_total",
)


def relayMetrics(clock=None) -> RelayMetrics:
    """
    @return: real L{RelayMetrics} over an empty queue and an idle manager.
    """
    queue = types.SimpleNamespace(listeners=[], ids=lambda: [])
    manager = types.SimpleNamespace(outcomeListeners=[], inFlight=lambda: [], security=None)
    return RelayMetrics(queue, manager, clock if clock is not None else Clock())


def samples(metrics: RelayMetrics, names=INTAKE) -> dict:
    """
    @return: C{{(name, labels): value}} of the samples of C{names}, left
        out those at zero.
    """
    found = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name in names and sample.value:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: RelayMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class _Ask:
    """
    A worker's C{ask}, recording what it is told; it answers as
    C{callRemote} does for a command told and not answered, or fails, or
    raises.
    """

    def __init__(self) -> None:
        self.told: list[tuple[str, dict]] = []
        self.failure: Exception | None = None
        self.raises: Exception | None = None

    def __call__(self, name: str, **arguments):
        if self.raises is not None:
            raise self.raises
        self.told.append((name, arguments))
        if self.failure is not None:
            return defer.fail(self.failure)
        return None

    def calls(self) -> list:
        """
        @return: what each L{wire.Counted} carried, decoded.
        """
        return [json.loads(arguments["calls"]) for name, arguments in self.told]


class ForwarderTests(SynchronousTestCase):
    """
    L{MetricsForwarder}: the calls of a moment, gathered and sent
    together.
    """

    def setUp(self):
        self.clock = Clock()
        self.ask = _Ask()
        self.forwarder = MetricsForwarder(self.ask, self.clock)

    def test_sameMethods(self):
        """
        It has every method of L{FORWARDED}, and L{FORWARDED} names
        methods of L{RelayMetrics} with the same arguments.
        """
        import inspect

        for method, checks in FORWARDED.items():
            ours = inspect.signature(getattr(MetricsForwarder, method))
            theirs = inspect.signature(getattr(RelayMetrics, method))
            self.assertEqual(list(ours.parameters), list(theirs.parameters), method)
            self.assertEqual(len(theirs.parameters) - 1, len(checks), method)

    def test_gathered(self):
        """
        Nothing is sent for L{DELAY} seconds after the first call; then one
        L{wire.Counted} carries every call, the same call counted as many
        times as it was made, a status as text.
        """
        f = self.forwarder
        self.assertEqual(f.delay, DELAY)
        f.connectionOpened("smtp")
        self.clock.advance(DELAY / 2)
        f.connectionOpened("smtp")
        f.connectionOpened("lmtp")
        f.refused("mail", 552, b"5.3.4")
        f.refused("rcpt", 550, None)
        f.limitActed("smtp", "junk-commands")
        f.intakePolicyActed("hops")
        f.policyRefused("relay-recipients")
        f.connectionClosed("smtp")
        self.clock.advance(DELAY / 2 - 0.001)
        self.assertEqual(self.ask.told, [])
        self.clock.advance(0.001)
        self.assertEqual([name for name, _ in self.ask.told], ["counted"])
        self.assertEqual(
            self.ask.calls(),
            [
                [
                    ["connectionOpened", ["smtp"], 2],
                    ["connectionOpened", ["lmtp"], 1],
                    ["refused", ["mail", 552, "5.3.4"], 1],
                    ["refused", ["rcpt", 550, None], 1],
                    ["limitActed", ["smtp", "junk-commands"], 1],
                    ["intakePolicyActed", ["hops"], 1],
                    ["policyRefused", ["relay-recipients"], 1],
                    ["connectionClosed", ["smtp"], 1],
                ]
            ],
        )

    def test_again(self):
        """
        Calls after a command was sent go in the next one; a moment that
        counted nothing sends nothing.
        """
        self.forwarder.connectionOpened("smtp")
        self.clock.advance(DELAY)
        self.clock.advance(10)
        self.forwarder.connectionClosed("smtp")
        self.clock.advance(DELAY)
        self.assertEqual(self.ask.calls(), [[["connectionOpened", ["smtp"], 1]], [["connectionClosed", ["smtp"], 1]]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneTurn(self):
        """
        With no delay, the calls of one turn of the reactor go together.
        """
        forwarder = MetricsForwarder(self.ask, self.clock, delay=0)
        forwarder.connectionOpened("smtp")
        forwarder.connectionClosed("smtp")
        self.assertEqual(self.ask.told, [])
        self.clock.advance(0)
        forwarder.connectionOpened("smtp")
        self.clock.advance(0)
        self.assertEqual(self.ask.calls(), [[["connectionOpened", ["smtp"], 1], ["connectionClosed", ["smtp"], 1]], [["connectionOpened", ["smtp"], 1]]])

    def test_flush(self):
        """
        L{MetricsForwarder.flush} sends at once, and the end of the delay
        then sends nothing more.
        """
        self.forwarder.policyRefused("relay-recipients")
        self.forwarder.flush()
        self.assertEqual(self.ask.calls(), [[["policyRefused", ["relay-recipients"], 1]]])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.forwarder.flush()
        self.assertEqual(len(self.ask.told), 1)

    def test_manyDifferent(self):
        """
        Once L{MAX_ENTRIES} different calls wait, they are sent without
        waiting for the delay to end.
        """
        for n in range(MAX_ENTRIES + 5):
            self.forwarder.refused("data", 400 + n % 200, f"4.{n // 200}.{n % 200}".encode())
        self.assertEqual([len(calls) for calls in self.ask.calls()], [MAX_ENTRIES])
        self.clock.advance(DELAY)
        self.assertEqual([len(calls) for calls in self.ask.calls()], [MAX_ENTRIES, 5])
        for calls in self.ask.calls():
            self.assertLess(len(json.dumps(calls)), amp.MAX_VALUE_LENGTH)

    def test_manyCalls(self):
        """
        L{MAX_COUNT} calls in all are sent then.
        """
        for _ in range(MAX_COUNT - 10):
            self.forwarder.connectionOpened("smtp")
        for _ in range(11):
            self.forwarder.connectionClosed("smtp")
        self.clock.advance(DELAY)
        self.assertEqual(
            self.ask.calls(),
            [[["connectionOpened", ["smtp"], MAX_COUNT - 10], ["connectionClosed", ["smtp"], 10]], [["connectionClosed", ["smtp"], 1]]],
        )

    def test_refusedHere(self):
        """
        A call the parent would refuse is dropped at once, logged once per
        method; the others go.
        """
        with capturedLogs() as events:
            self.forwarder.connectionOpened("pop3")
            self.forwarder.connectionOpened("smtp\n")
            self.forwarder.refused("mail", 250, None)
            self.forwarder.refused("mail", 550, b"5.7.1 \xff")
            self.forwarder.limitActed("smtp", "Junk Commands")
            self.forwarder.connectionOpened("smtp")
        self.clock.advance(DELAY)
        self.assertEqual(self.ask.calls(), [[["connectionOpened", ["smtp"], 1]]])
        self.assertEqual(len(events), 3)
        self.assertIn("pop3", events[0]["why"])

    def test_parentUnreachable(self):
        """
        If the parent cannot be told (a failed or raising C{ask}), those
        counts are lost and nothing else happens; the next are sent.
        """
        self.ask.failure = ConnectionError("no parent")
        self.forwarder.connectionOpened("smtp")
        self.clock.advance(DELAY)
        self.ask.failure = None
        self.ask.raises = amp.TooLong(False, True, b"calls", None)
        self.forwarder.connectionOpened("smtp")
        self.clock.advance(DELAY)
        self.ask.raises = None
        self.forwarder.connectionClosed("smtp")
        self.clock.advance(DELAY)
        self.assertEqual(self.ask.calls()[-1], [["connectionClosed", ["smtp"], 1]])
        self.assertEqual(self.flushLoggedErrors(), [])


class CheckTests(SynchronousTestCase):
    """
    L{checkCall}, L{encodeCalls} and L{decodeCalls}: the whitelist.
    """

    GOOD = [
        ("connectionOpened", ["submission"], ("submission",)),
        ("connectionClosed", ["smtps"], ("smtps",)),
        ("limitActed", ["lmtp", "accept-emfile"], ("lmtp", "accept-emfile")),
        ("intakePolicyActed", ["message-id"], ("message-id",)),
        ("policyRefused", ["no-reports-to-strangers"], ("no-reports-to-strangers",)),
        ("refused", ["data", 554, "5.6.0"], ("data", 554, b"5.6.0")),
        ("refused", ["rcpt", 450, None], ("rcpt", 450, None)),
    ]

    BAD = [
        # Not a method a worker may call.
        ("site", []),
        ("watchWorkers", [None]),
        ("_queued", [None]),
        ("_outcome", [None, None, 0, 0]),
        ("__init__", [None, None, None]),
        ("registry", []),
        ("connectionopened", ["smtp"]),
        (None, ["smtp"]),
        (["connectionOpened"], ["smtp"]),
        # Not its arguments.
        ("connectionOpened", []),
        ("connectionOpened", ["smtp", "smtp"]),
        ("connectionOpened", "smtp"),
        ("connectionOpened", {"listener": "smtp"}),
        ("connectionOpened", [b"smtp"]),
        ("connectionOpened", [None]),
        ("connectionOpened", ["SMTP"]),
        ("connectionOpened", ["http"]),
        ("limitActed", ["smtp", ""]),
        ("limitActed", ["smtp", "x" * 41]),
        ("limitActed", ["smtp", 'a",b="c']),
        ("limitActed", ["smtp", "a\nb"]),
        ("limitActed", ["smtp", "-leading"]),
        ("limitActed", ["smtp", 7]),
        ("intakePolicyActed", ["Hops"]),
        ("policyRefused", [["relay-recipients"]]),
        ("refused", ["mail", "552", None]),
        ("refused", ["mail", 552.0, None]),
        ("refused", ["mail", True, None]),
        ("refused", ["mail", 250, None]),
        ("refused", ["mail", 600, None]),
        ("refused", ["helo", 552, None]),
        ("refused", ["mail", 552, "5.3"]),
        ("refused", ["mail", 552, "5.3.4 too big"]),
        ("refused", ["mail", 552, "5.3.4444"]),
        ("refused", ["mail", 552, 534]),
        ("refused", ["mail", 552]),
    ]

    @classmethod
    def badOnTheWire(cls) -> list:
        """
        @return: the L{BAD} calls that JSON can carry.
        """
        bad = []
        for method, arguments in cls.BAD:
            try:
                json.dumps([method, arguments])
            except TypeError:
                continue
            bad.append((method, arguments))
        return bad

    def test_good(self):
        """
        Allowed calls give the arguments to call the method with: a status
        as C{bytes}.
        """
        for method, arguments, expected in self.GOOD:
            self.assertEqual(checkCall(method, arguments), expected)

    def test_bad(self):
        """
        Anything else is a C{ValueError}.
        """
        for method, arguments in self.BAD:
            self.assertRaises(ValueError, checkCall, method, arguments)

    def test_roundTrip(self):
        """
        What L{encodeCalls} writes, L{decodeCalls} reads back.
        """
        text = encodeCalls({("refused", ("mail", 552, "5.3.4")): 3, ("connectionOpened", ("smtp",)): 1})
        self.assertEqual(decodeCalls(text), [("refused", ("mail", 552, b"5.3.4"), 3), ("connectionOpened", ("smtp",), 1)])

    def test_badEntries(self):
        """
        A call that is not allowed, or whose count is not a count from 1
        to L{MAX_COUNT}, stands as a C{ValueError} among the others.
        """
        good = ["connectionOpened", ["smtp"], 1]
        entries = [good]
        entries += [[method, arguments, 1] for method, arguments in self.badOnTheWire()]
        entries += [["connectionOpened", ["smtp"], count] for count in (0, -1, MAX_COUNT + 1, 1.0, True, "1", None)]
        entries += [["connectionOpened", ["smtp"]], "connectionOpened", None, {}, good + [1]]
        for start in range(0, len(entries), MAX_ENTRIES):
            decoded = decodeCalls(json.dumps(entries[start : start + MAX_ENTRIES]))
            expected = 1 if start == 0 else 0
            self.assertEqual(sum(1 for item in decoded if isinstance(item, tuple)), expected)
            self.assertTrue(all(isinstance(item, (tuple, ValueError)) for item in decoded))

    def test_garbage(self):
        """
        A text that is not a list of at most L{MAX_ENTRIES} calls, made at
        most L{MAX_COUNT} times in all, is a C{ValueError} as a whole.
        """
        tooMany = [["connectionOpened", ["smtp"], MAX_COUNT // 2], ["connectionClosed", ["smtp"], MAX_COUNT // 2 + 1]]
        for text in [
            "",
            "[",
            "nonsense",
            "{}",
            '"calls"',
            "null",
            "7",
            "[" * 100000 + "]" * 100000,
            json.dumps([["connectionOpened", ["smtp"], 1]] * (MAX_ENTRIES + 1)),
            json.dumps(tooMany),
        ]:
            self.assertRaises(ValueError, decodeCalls, text)


class _Recorder:
    """
    Metrics that record every method called, and have more methods than
    a worker may call.
    """

    def __init__(self) -> None:
        self.called: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *arguments: self.called.append((name, arguments))


class ForwardedTests(SynchronousTestCase):
    """
    L{ForwardedMetrics}: calls applied to real L{RelayMetrics}, checked.
    """

    def setUp(self):
        self.clock = Clock()
        self.metrics = relayMetrics(self.clock)
        self.forwarded = ForwardedMetrics(self.metrics)

    def apply(self, entries, link="w1") -> int:
        return self.forwarded.apply(link, json.dumps(entries), worker=1)

    def test_applied(self):
        """
        Each allowed call is made on the metrics as many times as counted.
        """
        applied = self.apply(
            [
                ["connectionOpened", ["smtp"], 3],
                ["connectionClosed", ["smtp"], 1],
                ["refused", ["mail", 552, "5.3.4"], 2],
                ["refused", ["rcpt", 550, None], 1],
                ["limitActed", ["submission", "auth-failures"], 1],
                ["intakePolicyActed", ["loop"], 4],
                ["policyRefused", ["reports-unchecked"], 1],
            ]
        )
        self.assertEqual(applied, 13)
        m = self.metrics
        self.assertEqual(value(m, "mailrelay_connections_total", listener="smtp"), 3)
        self.assertEqual(value(m, "mailrelay_connections_open", listener="smtp"), 2)
        self.assertEqual(value(m, "mailrelay_messages_rejected_total", stage="mail", reason="552 5.3.4"), 2)
        self.assertEqual(value(m, "mailrelay_messages_rejected_total", stage="rcpt", reason="550"), 1)
        self.assertEqual(value(m, "mailrelay_limits_total", listener="submission", limit="auth-failures"), 1)
        self.assertEqual(value(m, "mailrelay_intake_policy_total", policy="loop"), 4)
        self.assertEqual(value(m, "mailrelay_policy_refusals_total", policy="reports-unchecked"), 1)

    def test_nothingElse(self):
        """
        A worker cannot call a method of the metrics outside L{FORWARDED},
        nor an allowed one with other arguments; the allowed calls of the
        same command stand, and the drops are logged.
        """
        recorder = _Recorder()
        forwarded = ForwardedMetrics(recorder, clock=self.clock)
        entries = [[method, arguments, 1] for method, arguments in CheckTests.badOnTheWire()]
        entries.append(["policyRefused", ["relay-recipients"], 1])
        with capturedLogs() as events:
            applied = forwarded.apply("w1", json.dumps(entries), worker=2)
        self.assertEqual(applied, 1)
        self.assertEqual(recorder.called, [("policyRefused", ("relay-recipients",))])
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["worker"], 2)

    def test_garbage(self):
        """
        A command that is not a list of calls changes nothing, and is
        logged; nothing is raised (which would drop the worker's link).
        """
        before = samples(self.metrics)
        with capturedLogs() as events:
            for text in ["", "[", '{"connectionOpened": ["smtp"]}', "[" * 100000, "\x00"]:
                self.assertEqual(self.forwarded.apply("w1", text, worker=1), 0)
        self.assertEqual(samples(self.metrics), before)
        self.assertEqual(len(events), 1)

    def test_logPace(self):
        """
        Drops are logged at most once per L{ForwardedMetrics.logInterval},
        with how many were dropped meanwhile.
        """
        with capturedLogs() as events:
            self.apply([["site", [], 1]])
            self.clock.advance(30)
            self.apply([["site", [], 1], ["registry", [], 1]])
            self.clock.advance(30)
            self.apply([["connectionOpened", ["pop3"], 1]])
        self.assertEqual([event["more"] for event in events], [0, 2])
        self.assertIn("pop3", events[1]["why"])

    def test_closeNoMoreThanOpened(self):
        """
        A link closes no more connections than it opened, whatever it
        says: the gauge of open connections never goes below zero, nor
        below the other links' connections.
        """
        self.apply([["connectionOpened", ["smtp"], 2]], link="w2")
        self.apply([["connectionClosed", ["smtp"], 5]], link="w1")
        self.apply([["connectionOpened", ["smtp"], 1], ["connectionClosed", ["smtp"], 3]], link="w1")
        self.apply([["connectionClosed", ["lmtp"], 1]], link="w2")
        self.assertEqual(value(self.metrics, "mailrelay_connections_open", listener="smtp"), 2)
        self.assertEqual(value(self.metrics, "mailrelay_connections_open", listener="lmtp"), 0)
        self.assertEqual((self.forwarded.openOn("w1"), self.forwarded.openOn("w2")), (0, 2))

    def test_openedFirst(self):
        """
        A connection opened and closed in one command is closed whatever the
        order of the two calls in the command.
        """
        self.apply([["connectionOpened", ["smtp"], 1]])
        self.apply([["connectionClosed", ["smtp"], 2], ["connectionOpened", ["smtp"], 1]])
        self.assertEqual(value(self.metrics, "mailrelay_connections_open", listener="smtp"), 0)
        self.assertEqual(value(self.metrics, "mailrelay_connections_total", listener="smtp"), 2)

    def test_linkGone(self):
        """
        When a worker's link goes, the connections it had open are closed
        in the metrics; other links' stay.
        """
        self.apply([["connectionOpened", ["smtp"], 3], ["connectionOpened", ["lmtp"], 1], ["connectionClosed", ["smtp"], 1]], link="w1")
        self.apply([["connectionOpened", ["smtp"], 1]], link="w2")
        self.assertEqual(self.forwarded.linkGone("w1"), 3)
        self.assertEqual(self.forwarded.linkGone("w1"), 0)
        self.assertEqual(value(self.metrics, "mailrelay_connections_open", listener="smtp"), 1)
        self.assertEqual(value(self.metrics, "mailrelay_connections_open", listener="lmtp"), 0)
        self.assertEqual(value(self.metrics, "mailrelay_connections_total", listener="smtp"), 4)

    def test_maxSeries(self):
        """
        Past L{ForwardedMetrics.maxSeries} different calls, new ones are
        dropped; those already seen still count.
        """
        self.forwarded.maxSeries = 3
        self.apply([["intakePolicyActed", [name], 1] for name in ("a", "b", "c", "d")])
        self.apply([["intakePolicyActed", ["a"], 1], ["intakePolicyActed", ["e"], 1]])
        self.assertEqual(value(self.metrics, "mailrelay_intake_policy_total", policy="a"), 2)
        self.assertEqual(value(self.metrics, "mailrelay_intake_policy_total", policy="c"), 1)
        self.assertIsNone(self.metrics.registry.get_sample_value("mailrelay_intake_policy_total", {"policy": "d"}))
        self.assertIsNone(self.metrics.registry.get_sample_value("mailrelay_intake_policy_total", {"policy": "e"}))


class _Worker:
    number = 1
    protocol = None


def _pool(forwarded):
    return types.SimpleNamespace(auth=None, limits=None, forwardedMetrics=forwarded, queue=None)


class OverAMPTests(SynchronousTestCase):
    """
    A forwarder in a worker and the parent's L{ParentProtocol} over a real
    AMP connection in memory.
    """

    def setUp(self):
        self.metrics = relayMetrics()
        self.forwarded = ForwardedMetrics(self.metrics)
        self.pool = _pool(self.forwarded)
        self.child, self.parent, self.pump = iosim.connectedServerAndClient(lambda: ParentProtocol(self.pool, _Worker()), wire.QuietAMP)
        # What the parent writes back.
        self.answers = []
        write = self.parent.transport.write
        self.parent.transport.write = lambda data: (self.answers.append(data), write(data))
        self.clock = Clock()
        self.forwarder = MetricsForwarder(lambda name, **arguments: self.child.callRemote(getattr(wire, name.capitalize()), **arguments), self.clock)

    def test_crosses(self):
        """
        A moment's counts reach the parent's metrics in one box, and no answer
        comes back.
        """
        self.forwarder.connectionOpened("smtp")
        self.forwarder.refused("data", 554, b"5.6.0")
        self.clock.advance(DELAY)
        boxes = amp.parseString(b"".join(self.child.transport.stream))
        self.assertEqual([box[b"_command"] for box in boxes], [b"Counted"])
        self.pump.flush()
        self.assertEqual(value(self.metrics, "mailrelay_connections_open", listener="smtp"), 1)
        self.assertEqual(value(self.metrics, "mailrelay_messages_rejected_total", stage="data", reason="554 5.6.0"), 1)
        self.assertEqual(self.answers, [])

    def test_commandIsTold(self):
        """
        L{wire.Counted} is told and not answered, with one text argument.
        """
        self.assertFalse(wire.Counted.requiresAnswer)
        self.assertEqual([name for name, _ in wire.Counted.arguments], [b"calls"])
        self.assertEqual(wire.Counted.commandName, b"Counted")

    def test_garbageKeepsLink(self):
        """
        A command of garbage changes nothing and leaves the link up: the
        next good command is applied.
        """
        self.child.callRemote(wire.Counted, calls="[[" * 1000)
        self.child.callRemote(wire.Counted, calls='[["site", [], 1], ["connectionOpened", ["http"], 1]]')
        self.child.callRemote(wire.Counted, calls='[["connectionOpened", ["smtp"], 1]]')
        self.pump.flush()
        self.assertFalse(self.parent.transport.disconnecting)
        self.assertFalse(self.child.transport.disconnecting)
        self.assertEqual(self.answers, [])
        self.assertEqual(samples(self.metrics), {("mailrelay_connections_total", (("listener", "smtp"),)): 1.0, ("mailrelay_connections_open", (("listener", "smtp"),)): 1.0})

    def test_linkLost(self):
        """
        When the link with a worker is lost, the connections it had open
        are closed in the metrics.
        """
        self.forwarder.connectionOpened("smtp")
        self.forwarder.connectionOpened("smtp")
        self.clock.advance(DELAY)
        self.pump.flush()
        self.assertEqual(value(self.metrics, "mailrelay_connections_open", listener="smtp"), 2)
        self.parent.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(value(self.metrics, "mailrelay_connections_open", listener="smtp"), 0)
        self.assertEqual(value(self.metrics, "mailrelay_connections_total", listener="smtp"), 2)

    def test_noMetrics(self):
        """
        Without metrics in the parent, the command is accepted and ignored.
        """
        self.pool.forwardedMetrics = None
        self.forwarder.connectionOpened("smtp")
        self.clock.advance(DELAY)
        self.pump.flush()
        self.parent.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(samples(self.metrics), {})


def _spool(testCase) -> str:
    spool = os.path.abspath(testCase.mktemp())
    for name in ("tmp", "queue", "corrupt"):
        os.makedirs(os.path.join(spool, name))
    return spool


def _session(factory, clock, lines: list[bytes], peer: str = "192.0.2.1") -> bytes:
    """
    Play C{lines} to a session of C{factory} from C{peer}, then hang up.

    @return: what the server said.
    """
    factory.clock = clock
    address = IPv4Address("TCP", peer, 40000)
    transport = StringTransport(peerAddress=address)
    session = factory.buildProtocol(address)
    session.makeConnection(transport)
    for line in lines:
        if transport.disconnecting:
            break
        session.dataReceived(line + b"\r\n")
        clock.advance(0)
    session.connectionLost(None)
    return transport.value()


class WorkerWiringTests(SynchronousTestCase):
    """
    A worker's intake (L{WorkerRelay <mailproto._relayd._worker.WorkerRelay>})
    counts for the parent what one process counts for itself.
    """

    def worker(self, *arguments: str):
        from mailproto._relayd._worker import WorkerRelay

        self.reactor = MemoryReactorClock()
        spec = {"argv": ["--spool", _spool(self), *arguments], "listeners": [], "worker": 1, "amp": 3}
        worker = WorkerRelay(spec, self.reactor)
        worker.build()
        return worker

    def test_withoutMetrics(self):
        """
        Without C{--metrics}, nothing stands for the metrics, and nothing
        is sent.
        """
        worker = self.worker("--smtp", "tcp:0")
        self.assertIsNone(worker.metrics)
        self.assertEqual([f.metrics for f in worker.factories.values()], [None])
        self.assertEqual((worker.intake.observers, worker.policy.observers), ([], []))
        transport = StringTransport()
        worker.protocol.makeConnection(transport)
        _session(worker.factories["smtp"], self.reactor, [b"EHLO client.example", b"MAIL FROM:<a@example.com> SIZE=999999999999", b"QUIT"])
        self.reactor.advance(1)
        self.assertEqual(transport.value(), b"")

    def test_wired(self):
        """
        With C{--metrics}, every factory, the intake and the relay policy
        count on the worker's L{MetricsForwarder}.
        """
        worker = self.worker("--smtp", "tcp:0", "--lmtp", "tcp:0", "--metrics", "tcp:0")
        self.assertIsInstance(worker.metrics, MetricsForwarder)
        self.assertEqual({kind: f.metrics for kind, f in worker.factories.items()}, {"smtp": worker.metrics, "lmtp": worker.metrics})
        self.assertEqual(worker.intake.observers, [worker.metrics.intakePolicyActed])
        self.assertEqual(worker.policy.observers, [worker.metrics.policyRefused])

    def test_acceptsPaused(self):
        """
        Each listener's accept guard counts its pauses, out of file
        descriptors, as C{accept-emfile} for its kind.
        """
        from mailproto._relayd import _connlimits

        observers = []

        def guardAccepts(endpoint, clock=None, description="", observer=None):
            observers.append(observer)
            # No socket is adopted here.
            return types.SimpleNamespace(listen=lambda factory: defer.succeed(None))

        self.patch(_connlimits, "guardAccepts", guardAccepts)
        worker = self.worker("--smtp", "tcp:0", "--lmtp", "tcp:0", "--metrics", "tcp:0")
        worker.spec["listeners"] = [["smtp", "tcp:0", 7, 2], ["lmtp", "tcp:0", 8, 2]]
        ask = _Ask()
        worker.metrics._ask = ask
        worker.listen()
        for observer in observers:
            observer(_connlimits.ACCEPT_EMFILE)
        self.reactor.advance(DELAY)
        self.assertEqual(ask.calls(), [[["limitActed", ["smtp", "accept-emfile"], 1], ["limitActed", ["lmtp", "accept-emfile"], 1]]])

    def test_sameAsOneProcess(self):
        """
        The same sessions, on a worker whose counts cross a real AMP
        encoding to the parent, and on a relay of one process, give the
        same intake metrics: connections, refusals at MAIL and RCPT, a
        relay recipients refusal, a session limit.
        """
        from mailproto._relayd._daemon import Options, makeService

        recipients = self.mktemp()
        with open(recipients, "w") as f:
            f.write("known@example.org\n")
        arguments = ["--smtp", "tcp:0", "--metrics", "tcp:0", "--relay-domain", "example.org", "--relay-recipients", recipients, "--max-junk-commands", "2"]
        scripts = [
            [b"EHLO client.example", b"MAIL FROM:<a@example.com> SIZE=999999999999", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@far.example>", b"RCPT TO:<nobody@example.org>", b"QUIT"],
            [b"EHLO client.example", b"NOOP", b"NOOP", b"NOOP", b"NOOP"],
            [b"HELO client.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<known@example.org>", b"RSET", b"QUIT"],
        ]
        # One process.
        options = Options()
        options.parseOptions(["--spool", self.mktemp(), *arguments])
        relay = makeService(options)
        clock = Clock()
        for script in scripts:
            _session(relay.factories["smtp"], clock, script)
        expected = samples(relay.metrics)
        # A worker; its parent's metrics.
        worker = self.worker(*arguments)
        transport = StringTransport()
        worker.protocol.makeConnection(transport)
        for script in scripts:
            _session(worker.factories["smtp"], self.reactor, script)
        self.reactor.advance(DELAY)
        parent = relayMetrics()
        forwarded = ForwardedMetrics(parent)
        boxes = amp.parseString(transport.value())
        self.assertTrue(boxes)
        for box in boxes:
            self.assertEqual(box[b"_command"], b"Counted")
            self.assertNotIn(b"_ask", box)
            forwarded.apply(worker.protocol, box[b"calls"].decode("utf-8"), worker=1)
        found = samples(parent)
        self.assertEqual(found, expected)
        # What was played is there.
        self.assertEqual(found[("mailrelay_connections_total", (("listener", "smtp"),))], 3)
        self.assertEqual(found[("mailrelay_messages_rejected_total", (("reason", "552 5.3.4"), ("stage", "mail")))], 1)
        self.assertEqual(found[("mailrelay_policy_refusals_total", (("policy", "relay-recipients"),))], 1)
        self.assertEqual(found[("mailrelay_limits_total", (("limit", "junk-commands"), ("listener", "smtp")))], 1)
        self.assertNotIn(("mailrelay_connections_open", (("listener", "smtp"),)), found)


class WorkersGaugeTests(SynchronousTestCase):
    """
    L{RelayMetrics.watchWorkers} and L{WorkerPool}'s metrics.
    """

    def test_gauges(self):
        """
        C{mailrelay_workers} counts the running workers when scraped;
        C{mailrelay_worker_restarts_total} the pool's restarts.
        """
        metrics = relayMetrics()
        pool = types.SimpleNamespace(workers=[types.SimpleNamespace(state=s) for s in ("running", "ended", "running", "stopping")], restarts=0)
        metrics.watchWorkers(pool)
        metrics.watchWorkers(pool)
        self.assertEqual(value(metrics, "mailrelay_workers"), 2)
        pool.workers[1].state = "running"
        pool.restarts = 3
        self.assertEqual(value(metrics, "mailrelay_workers"), 3)
        self.assertEqual(value(metrics, "mailrelay_worker_restarts_total"), 3)
        self.assertRaises(ValueError, metrics.watchWorkers, types.SimpleNamespace(workers=[], restarts=0))

    def test_notWithoutWorkers(self):
        """
        A relay of one process serves no worker metrics.
        """
        self.assertIsNone(relayMetrics().registry.get_sample_value("mailrelay_workers"))

    def test_pool(self):
        """
        A pool under a relay with metrics applies what its workers count
        to them, and serves its gauges; without metrics, nothing.
        """
        metrics = relayMetrics()
        pool = WorkerPool(2, [], [], None, None, None, MemoryReactorClock())
        pool.parent = types.SimpleNamespace(metrics=metrics)
        pool._watchMetrics()
        pool._watchMetrics()
        self.assertIs(pool.forwardedMetrics.metrics, metrics)
        self.assertEqual(value(metrics, "mailrelay_workers"), 0)
        self.assertEqual(metrics.registry.get_sample_value("mailrelay_worker_restarts_total"), 0)
        lone = WorkerPool(2, [], [], None, None, None, MemoryReactorClock())
        lone.parent = types.SimpleNamespace(metrics=None)
        lone._watchMetrics()
        self.assertIsNone(lone.forwardedMetrics)


def _workerPids(parent: int) -> list[int]:
    """
    @return: the process ids of the children of C{parent} (Linux).
    """
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(name))
    return pids


class WorkersScrapedTests(TestCase):
    """
    C{twistd mailrelay --workers 2 --metrics} in a child process, its
    metrics scraped over loopback.
    """

    timeout = 90

    def scrape(self, port: int) -> defer.Deferred:
        def get():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            values = {}
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    name, _, number = line.rpartition(" ")
                    values[name] = float(number)
            return values

        return deferToThread(get)

    @defer.inlineCallbacks
    def waitFor(self, port: int, expected: dict, what: str):
        """
        Scrape until the metrics have the C{expected} values, for 30
        seconds at most.

        @return: a L{Deferred} firing with the last scrape.
        """
        deadline = time.monotonic() + 30
        while True:
            found = yield self.scrape(port)
            if all(found.get(name) == number for name, number in expected.items()):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}: {expected} in {found}")
            yield deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def test_totals(self):
        """
        Messages and refusals sent through several connections, taken by
        either worker, add up in the parent's metrics; connections end,
        and those of a worker killed go with it; the workers and their
        restarts are counted.
        """
        if not os.path.isdir("/proc/self"):
            raise SkipTest("needs /proc to find the workers")
        from mailproto.test.test_daemon import RelayProcess, freePort

        scratch = os.path.abspath(self.mktemp())
        os.makedirs(scratch)
        port, metrics = freePort(), freePort()
        relay = RelayProcess.spawn(
            self,
            ["--smtp", f"tcp:{port}:interface=127.0.0.1", "--metrics", f"tcp:{metrics}:interface=127.0.0.1", "--workers", "2",
             "--spool", os.path.join(scratch, "spool"), "--smarthost", "127.0.0.1:1", "--shutdown-grace", "1", "--max-hops", "3"],
            scratch,
        )  # fmt: skip
        yield relay.whenListening()
        yield self.waitFor(metrics, {"mailrelay_workers": 2}, "two workers")

        hops = b"".join(b"Received: from a%d.example by b.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % n for n in range(4))

        def client(n: int):
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=20) as s:
                s.sendmail("a@example.com", [f"r{n}@example.net"], b"Subject: %d\r\n\r\nhello\r\n" % n)
                tooBig = s.mail("a@example.com", ["SIZE=999999999999"])[0]
                s.rset()
                try:
                    s.sendmail("a@example.com", ["r@example.net"], hops + b"Subject: loop\r\n\r\nhello\r\n")
                    looped = 250
                except smtplib.SMTPDataError as e:
                    looped = e.smtp_code
                return tooBig, looped

        count = 8
        results = yield defer.gatherResults([deferToThread(client, n) for n in range(count)])
        self.assertEqual({result[0] for result in results}, {552})
        self.assertEqual({result[1] // 100 for result in results}, {5})
        found = yield self.waitFor(
            metrics,
            {
                'mailrelay_connections_total{listener="smtp"}': count,
                'mailrelay_connections_open{listener="smtp"}': 0,
                "mailrelay_messages_accepted_total": count,
                'mailrelay_intake_policy_total{policy="hops"}': count,
            },
            "the totals of both workers",
        )
        self.assertEqual(found['mailrelay_messages_rejected_total{reason="552 5.3.4",stage="mail"}'], count)
        self.assertEqual(found["mailrelay_worker_restarts_total"], 0)

        # A connection left open on every worker; then both are killed.
        def hold():
            s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=20)
            s.ehlo()
            return s

        held = yield defer.gatherResults([deferToThread(hold) for _ in range(2)])
        self.addCleanup(lambda: [s.close() for s in held])
        yield self.waitFor(metrics, {'mailrelay_connections_open{listener="smtp"}': 2}, "two connections open")
        pids = _workerPids(relay.process.pid)
        self.assertEqual(len(pids), 2)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        yield self.waitFor(
            metrics,
            {'mailrelay_connections_open{listener="smtp"}': 0, "mailrelay_worker_restarts_total": 2, "mailrelay_workers": 2},
            "the workers started again, their connections gone",
        )
        # The new workers count too.
        yield deferToThread(client, count)
        yield self.waitFor(metrics, {'mailrelay_connections_total{listener="smtp"}': count + 3, "mailrelay_messages_accepted_total": count + 1}, "the counts of the new workers")
