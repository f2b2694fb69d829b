# -*- test-case-name: mailproto.test.test_relay_crash -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's promise, tested on the real daemon: a message it answered
C{250} after DATA is delivered, whatever happens to the relay afterwards.

  - L{SIGKILLTests}: C{twistd mailrelay} in a child process, under load
    from several concurrent clients, is SIGKILLed several times at random
    moments and restarted on the same spool each time; every message it
    acknowledged reaches the smart host (C{mailproto sink}, a child
    process that outlives every kill), intact.  Duplicates are allowed
    (a crash between the smart host's C{250} and the queue's removal
    sends a message again): they are counted and logged.
  - L{SIGTERMTests}: SIGTERM on a relay with queued work (one message
    stalled at a smart host that never answers its end of data, others
    waiting for a connection, one half-received from a client) stops it
    cleanly with its spool consistent; a restart delivers the rest, the
    message that was in flight included, at once: the relay's own stop is
    not a failed delivery.

The kill schedule and the messages come from a seeded L{random.Random}:
the seed is in every failure message, and C{MAILPROTO_CRASH_SEED=N}
replays a schedule (the processes' timing still varies from run to run).
"""

from __future__ import annotations

import io
import os
import random
import re
import signal

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from mailproto._queue import SpoolFile, readQueueFile
from mailproto.smtp import ESMTPClient
from mailproto.test.test_daemon import (
    START_DEADLINE,
    RelayProcess,
    SinkProcess,
    freePort,
    spoolListing,
    testIDOf,
    waitUntil,
)

_log = Logger()

# The schedule's seed, unless MAILPROTO_CRASH_SEED gives one.
DEFAULT_SEED = 20261121

# How many times the relay is killed, and how many clients send at once.
KILLS = 4
CLIENTS = 8

# Seconds a load client waits for each reply.
CLIENT_TIMEOUT = 15

# Messages each run of the relay acknowledges before its random lifetime
# starts.
MIN_ACKNOWLEDGED = 10

# Seconds to wait, after the load, for the relay to send everything it
# queued.
DELIVERY_DEADLINE = 40

SENDER = b"load@example.org"
RECIPIENT = b"rcpt@example.com"


def _seed() -> int:
    value = os.environ.get("MAILPROTO_CRASH_SEED")
    return DEFAULT_SEED if not value else int(value)


def _sleep(seconds: float) -> defer.Deferred:
    return deferLater(reactor, seconds, lambda: None)


def makeMessage(seed: int, testID: str) -> bytes:
    """
    @return: the message with this id: headers naming it, and a body whose
        size (from one line to about 23 kB) and content come from C{seed}
        and the id, so that it can be made again to check what arrived.
        Some body lines start with a dot.
    """
    rnd = random.Random(f"{seed}/{testID}")
    lines = [
        b"From: Load <load@example.org>",
        b"To: <rcpt@example.com>",
        b"Subject: crash test " + testID.encode("ascii"),
        b"Message-ID: <" + testID.encode("ascii") + b"@crash.test>",
        b"X-Test-Id: " + testID.encode("ascii"),
        b"",
    ]
    for number in range(rnd.choice([1, 3, 10, 40, 300])):
        line = b"%05d " % number + rnd.randbytes(35).hex().encode("ascii")
        if rnd.random() < 0.05:
            line = b"." + line
        lines.append(line)
    return b"\r\n".join(lines) + b"\r\n"


class _LoadClient(ESMTPClient):
    """
    One connection of the load: sends messages one after the other until
    the load stops, and tells the load how each was answered.

    @ivar closed: fires when the connection is closed.
    """

    timeout = CLIENT_TIMEOUT

    def __init__(self, load: _Load, slot: int, chunking: bool) -> None:
        ESMTPClient.__init__(self, None, None, b"load%d.crash.test" % slot)
        self.useChunking = chunking
        self._load = load
        self._slot = slot
        self._current = None
        self.closed = defer.Deferred()

    def getMailFrom(self):
        self._current = self._load.nextMessage(self._slot)
        return None if self._current is None else SENDER

    def getMailTo(self):
        return [RECIPIENT]

    def getMailData(self):
        return io.BytesIO(self._load.messageBytes(self._current))

    def sentMail(self, code, resp, numOk, addresses, log) -> None:
        self._load.answered(self._current, code, resp)
        self._current = None

    def connectionLost(self, reason=connectionDone) -> None:
        ESMTPClient.connectionLost(self, reason)
        if self._current is not None:
            self._load.unanswered.add(self._current)
            self._current = None
        self.closed.callback(None)


class _Load:
    """
    Several clients sending to the relay at once, each reconnecting when
    its connection ends, until L{stop}.

    @ivar acknowledged: the ids of the messages answered C{250}.
    @ivar refused: the replies to the messages answered otherwise, by id.
    @ivar unanswered: the ids of the messages whose connection ended
        before their answer.
    @ivar connections: how many connections were made.
    @ivar failedConnections: how many connection attempts failed (the
        relay was down).
    """

    def __init__(self, seed: int, port: int, clients: int) -> None:
        self.seed = seed
        self.port = port
        self.clients = clients
        self.stopping = False
        self.acknowledged: set[str] = set()
        self.refused: dict[str, tuple[int, bytes]] = {}
        self.unanswered: set[str] = set()
        self.connections = 0
        self.failedConnections = 0
        self._numbers = [0] * clients
        self._loops: list[defer.Deferred] = []

    def nextMessage(self, slot: int) -> str | None:
        if self.stopping:
            return None
        number = self._numbers[slot]
        self._numbers[slot] += 1
        return f"m{slot}-{number}"

    def messageBytes(self, testID: str) -> bytes:
        return makeMessage(self.seed, testID)

    def begun(self) -> set[str]:
        """
        @return: the ids of every message begun.
        """
        return {f"m{slot}-{number}" for slot, count in enumerate(self._numbers) for number in range(count)}

    @property
    def sent(self) -> int:
        """
        How many messages were begun.
        """
        return sum(self._numbers)

    def answered(self, testID: str, code: int, resp: bytes) -> None:
        if code == 250:
            self.acknowledged.add(testID)
        else:
            self.refused[testID] = (code, resp)

    def start(self) -> None:
        self._loops = [self._run(slot) for slot in range(self.clients)]

    @defer.inlineCallbacks
    def _run(self, slot: int):
        # Odd clients send with BDAT (CHUNKING), even ones with DATA.
        while not self.stopping:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5)
            try:
                client = yield connectProtocol(endpoint, _LoadClient(self, slot, chunking=slot % 2 == 1))
            except Exception:
                self.failedConnections += 1
                yield _sleep(0.05)
                continue
            self.connections += 1
            yield client.closed

    def stop(self) -> defer.Deferred:
        """
        Send no more messages: each client says QUIT after its current
        one.

        @return: a L{Deferred} firing when every connection is closed.
        """
        self.stopping = True
        return defer.gatherResults(self._loops, consumeErrors=True)


class _Ledger:
    """
    What arrived at the smart host, checked against what was sent.

    @ivar arrivals: how many times each id arrived.
    @ivar problems: what is wrong with arrived files (unknown ids, content
        not the message sent).
    """

    def __init__(self, seed: int, sink: SinkProcess) -> None:
        self.seed = seed
        self.sink = sink
        self.arrivals: dict[str, int] = {}
        self.problems: list[str] = []
        self._seen: set[str] = set()

    def update(self) -> dict[str, int]:
        for name, stored in self.sink.messages().items():
            if name in self._seen:
                continue
            self._seen.add(name)
            testID = testIDOf(stored)
            if testID is None:
                self.problems.append(f"{name}: no X-Test-Id")
                continue
            self.arrivals[testID] = self.arrivals.get(testID, 0) + 1
            expected = makeMessage(self.seed, testID)
            trace = stored[: -len(expected)]
            if not stored.endswith(expected) or not trace.startswith(b"Received: from ") or b"\r\n\r\n" in trace:
                self.problems.append(f"{name}: {testID} arrived altered: {stored[:200]!r}...")
        return self.arrivals

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.arrivals.values())


class SIGKILLTests(TestCase):
    """
    The relay SIGKILLed under load, and restarted on the same spool.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_noAcknowledgedMessageLost(self):
        """
        With 8 clients sending at once, the relay is SIGKILLed 4 times at
        random moments and restarted each time on the same spool.  After
        the last restart and the end of the load, every message the relay
        answered C{250} arrives at the smart host, intact, within a bounded
        time; duplicates are counted, not failed.  Once stopped cleanly,
        the spool has nothing in C{tmp/}, C{queue/} or C{corrupt/}.
        """
        seed = _seed()
        try:
            yield self._crashRun(seed)
        except Exception as e:
            raise self.failureException(f"[seed {seed}; replay with MAILPROTO_CRASH_SEED={seed}] {e}") from e

    @defer.inlineCallbacks
    def _crashRun(self, seed: int):
        rnd = random.Random(seed)
        scratch = os.path.abspath(self.mktemp())
        os.makedirs(scratch)
        spool = os.path.join(scratch, "spool")
        sink = yield SinkProcess.start(self, os.path.join(scratch, "smarthost"))
        ledger = _Ledger(seed, sink)
        port = freePort()
        arguments = [
            "--smtp", f"tcp:{port}:interface=127.0.0.1",
            "--spool", spool,
            "--smarthost", f"127.0.0.1:{sink.port}",
            "--hostname", "relay.crash.test",
            "--max-messages-per-connection", "10",
        ]  # fmt: skip
        runs: list[RelayProcess] = []

        def spawn() -> RelayProcess:
            relay = RelayProcess.spawn(self, arguments, scratch)
            runs.append(relay)
            return relay

        def saveLogs() -> None:
            for number, run in enumerate(runs):
                with open(os.path.join(scratch, f"relay-run{number}.log"), "wb") as f:
                    f.write(run.output + run.errors)

        self.addCleanup(saveLogs)
        load = _Load(seed, port, CLIENTS)
        self.load = load
        relay = spawn()
        yield relay.whenListening()
        load.start()
        self.addCleanup(load.stop)

        # Kill at random moments while the load runs: each run first
        # acknowledges a few messages (so that every kill finds the relay
        # busy, however slow this machine), then lives a random time more.
        killedAfter = []
        for kill in range(KILLS):
            before = len(load.acknowledged)
            yield waitUntil(
                lambda: len(load.acknowledged) >= before + MIN_ACKNOWLEDGED,
                START_DEADLINE,
                lambda: f"{MIN_ACKNOWLEDGED} messages acknowledged by run {len(runs) - 1}:\n{relay.text()[-3000:]}",
            )
            lifetime = rnd.uniform(0.0, 1.2)
            downtime = rnd.uniform(0.0, 0.3)
            killedAfter.append(round(lifetime, 3))
            yield _sleep(lifetime)
            yield relay.kill()
            self.assertEqual(relay.endSignal, signal.SIGKILL, relay.text()[-3000:])
            yield _sleep(downtime)
            relay = spawn()
            yield relay.whenListening()

        # The last run takes mail too; then the load stops.
        before = len(load.acknowledged)
        yield waitUntil(
            lambda: len(load.acknowledged) >= before + MIN_ACKNOWLEDGED,
            START_DEADLINE,
            lambda: f"messages acknowledged after the last restart:\n{relay.text()[-3000:]}",
        )
        yield load.stop()
        acknowledged = set(load.acknowledged)
        self.acknowledged = acknowledged

        # The relay sends everything it queued, acknowledged or not, and
        # its queue empties.  The smart host stores a message before it
        # answers, and the relay takes a message out of its queue only
        # after that answer: once the queue is empty, whatever has not
        # arrived never will.
        def missing():
            return acknowledged - set(ledger.update())

        yield waitUntil(
            lambda: not spoolListing(spool)["queue"],
            DELIVERY_DEADLINE,
            lambda: f"an empty queue ({_summary(spoolListing(spool))}); {len(missing())} acknowledged messages "
            f"(of {len(acknowledged)}) not at the smart host yet, such as {sorted(missing())[:10]}",
        )
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text()[-3000:])
        lost = missing()
        arrived = set(ledger.arrivals)

        # The report, duplicates included (logged, and kept as attributes).
        starts = [re.search(r"\((\d+) queued\)", line) for run in runs for line in run.logLines("mailrelay: listening on")]
        removed = [re.search(r"(\d+) unfinished removed", line) for run in runs for line in run.logLines("unfinished removed")]
        self.duplicates = ledger.duplicates
        self.duplicateIDs = sorted(i for i, count in ledger.arrivals.items() if count > 1)
        self.report = {
            "seed": seed,
            "kills": KILLS,
            "killedAfter": killedAfter,
            "clients": CLIENTS,
            "begun": load.sent,
            "acknowledged": len(acknowledged),
            "lost": len(lost),
            "refused": len(load.refused),
            "unanswered": len(load.unanswered),
            "arrived": sum(ledger.arrivals.values()),
            "arrivedUnique": len(arrived),
            "deliveredUnacknowledged": len(arrived - acknowledged),
            "duplicates": ledger.duplicates,
            "duplicateIDs": self.duplicateIDs[:20],
            "connections": load.connections,
            "failedConnections": load.failedConnections,
            "queuedAtStarts": [int(m.group(1)) for m in starts if m],
            "tmpRemovedAtStarts": [int(m.group(1)) for m in removed if m],
        }
        _log.info("relay crash test: {report}", report=self.report)
        with open(os.path.join(scratch, "report.txt"), "w") as f:
            f.write(repr(self.report) + "\n")

        # Nothing lost; nothing altered; nothing left over.
        if lost:
            self.fail(f"{len(lost)} acknowledged messages (of {len(acknowledged)}) lost, such as {sorted(lost)[:10]}; report: {self.report}")
        self.assertEqual(ledger.problems, [])
        self.assertEqual(arrived - load.begun(), set())
        self.assertEqual(spoolListing(spool), {"tmp": [], "queue": [], "corrupt": []})
        for run in runs:
            self.assertEqual(run.logLines("set aside in corrupt/"), [])
            self.assertNotIn("Traceback", run.text())


def _summary(listing: dict[str, list[str]]) -> str:
    return ", ".join(f"{name}/: {len(names)} files" for name, names in listing.items())


# -- SIGTERM with queued work ----------------------------------------------------------


class _StallingSMTP(LineReceiver):
    """
    A smart host that takes a message up to its end of data and then never
    answers: the relay's attempt stays in flight.
    """

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.data = None
        self.sendLine(b"220 stall.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.data is not None:
            if line == b".":
                self.factory.stalled.append(b"".join(self.data))
                self.data = None
                return
            self.data.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
            return
        verb = line.split(b" ", 1)[0].upper()
        if verb in (b"EHLO", b"HELO"):
            self.sendLine(b"250 stall.test")
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            self.sendLine(b"250 2.0.0 OK")
        elif verb == b"DATA":
            self.data = []
            self.sendLine(b"354 go ahead")
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 5.5.1 not here")

    def connectionLost(self, reason=connectionDone) -> None:
        self.factory.connections.remove(self)


class _StallingFactory(Factory):
    protocol = _StallingSMTP

    def __init__(self) -> None:
        self.connections: list[_StallingSMTP] = []
        self.stalled: list[bytes] = []


class _Unfinished(Protocol):
    """
    A client that begins a message and never finishes it: more than the
    queue keeps in memory (L{SpoolFile.SPILL}), so that it is in C{tmp/}.
    """

    def connectionMade(self) -> None:
        self.received = b""
        self.transport.write(
            b"EHLO unfinished.test\r\n"
            b"MAIL FROM:<load@example.org>\r\n"
            b"RCPT TO:<rcpt@example.com>\r\n"
            b"DATA\r\n"
            b"X-Test-Id: unfinished\r\n\r\nThe first part of a message that never ends.\r\n"
        )
        self.transport.write((b"y" * 98 + b"\r\n") * (SpoolFile.SPILL // 100 + 100))

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class SIGTERMTests(TestCase):
    """
    SIGTERM on a relay with queued work.
    """

    timeout = 90

    @defer.inlineCallbacks
    def _stopWithQueuedWork(self):
        """
        Run a relay that sends through a smart host stalling each message
        at its end of data, one connection and one message at a time;
        give it four messages (one goes in flight, three wait) and half a
        fifth; SIGTERM it; check that it stopped cleanly with the four in
        its spool, readable and waiting, and nothing else.

        @return: a L{Deferred} firing with a dict: C{scratch}, C{spool},
            C{listen} (the options of the relay's listener, spool and
            name), C{ids} (the four messages' test ids), C{inFlight} (the
            test id of the one stalled at the smart host), C{queueIDs}
            (queue ids by test id), C{first} (the L{RelayProcess}).
        """
        scratch = os.path.abspath(self.mktemp())
        os.makedirs(scratch)
        spool = os.path.join(scratch, "spool")
        seed = _seed()

        stalling = _StallingFactory()
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(stalling)

        def closeStalling():
            for connection in list(stalling.connections):
                connection.transport.abortConnection()
            return listening.stopListening()

        self.addCleanup(closeStalling)
        port = freePort()
        listen = ["--smtp", f"tcp:{port}:interface=127.0.0.1", "--spool", spool, "--hostname", "relay.term.test"]
        # The half-received message and the stalled attempt get one second
        # to end before the relay closes them.
        limits = ["--max-connections", "1", "--max-messages-per-connection", "1", "--shutdown-grace", "1"]
        first = RelayProcess.spawn(self, [*listen, *limits, "--smarthost", f"127.0.0.1:{listening.getHost().port}"], scratch)
        yield first.whenListening()

        load = _Load(seed, port, 1)
        ids = [f"m0-{n}" for n in range(4)]
        numbers = iter(ids)
        load.nextMessage = lambda slot: next(numbers, None)
        load.start()
        yield load.stop()
        self.assertEqual(load.acknowledged, set(ids), load.refused)

        yield waitUntil(lambda: stalling.stalled, 20, lambda: f"a message stalled at the smart host:\n{first.text()}")
        [stalled] = stalling.stalled
        inFlight = testIDOf(stalled)
        self.assertIn(inFlight, ids)
        self.assertTrue(stalled.endswith(makeMessage(seed, inFlight)), stalled[:300])

        unfinished = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), _Unfinished())
        self.addCleanup(lambda: unfinished.transport.abortConnection())
        yield waitUntil(lambda: spoolListing(spool)["tmp"], 20, "the half-received message in tmp/")
        self.assertEqual(len(spoolListing(spool)["queue"]), 4)

        yield first.terminate()
        self.assertTrue(first.stoppedCleanly, first.text())
        [stopped] = first.logLines("mailrelay: stopped;")
        self.assertIn("4 queued now; this run: 0 delivered", stopped)
        listing = spoolListing(spool)
        self.assertEqual((listing["tmp"], listing["corrupt"]), ([], []), listing)
        queueIDs = {}
        for name in listing["queue"]:
            self.assertFalse(name.endswith(".tmp"), listing)
            if name.endswith(".state"):
                self.assertIn(name[: -len(".state")], listing["queue"])
                continue
            envelope = readQueueFile(os.path.join(spool, "queue", name))
            self.assertEqual((envelope.sender, [r.address for r in envelope.recipients]), (SENDER, [RECIPIENT]))
            self.assertEqual(len(envelope.waiting), 1)
            with open(os.path.join(spool, "queue", name), "rb") as f:
                queueIDs[testIDOf(f.read())] = name
        self.assertEqual(sorted(queueIDs), ids)
        return dict(scratch=scratch, spool=spool, listen=listen, ids=ids, inFlight=inFlight, queueIDs=queueIDs, first=first, seed=seed)

    @defer.inlineCallbacks
    def test_queuedWorkSurvivesStop(self):
        """
        SIGTERM stops a relay with queued work cleanly: its spool has the
        four acknowledged messages, readable and waiting, and nothing else
        (the half-received one is thrown away, not left in C{tmp/}).
        Restarted with a smart host that answers, it sends the messages
        that were waiting at once; stopped again, its spool is still clean.
        """
        work = yield self._stopWithQueuedWork()
        spool = work["spool"]
        sink = yield SinkProcess.start(self, os.path.join(work["scratch"], "smarthost"))
        second = RelayProcess.spawn(self, [*work["listen"], "--smarthost", f"127.0.0.1:{sink.port}"], work["scratch"])
        yield second.whenListening()
        self.assertEqual(len(second.logLines("(4 queued)")), 1, second.text())
        waiting = sorted(set(work["ids"]) - {work["inFlight"]})
        arrived = yield waitUntil(
            lambda: {testIDOf(m) for m in sink.messages().values()} >= set(waiting) and sink.messages(),
            20,
            lambda: f"{waiting} at the smart host; relay log:\n{second.text()}",
        )
        for stored in arrived.values():
            self.assertTrue(stored.endswith(makeMessage(work["seed"], testIDOf(stored))))
        yield waitUntil(
            lambda: set(spoolListing(spool)["queue"]) <= {work["queueIDs"][work["inFlight"]], work["queueIDs"][work["inFlight"]] + ".state"},
            20,
            lambda: f"the queue to hold at most the message that was in flight: {spoolListing(spool)}",
        )
        yield second.terminate()
        self.assertTrue(second.stoppedCleanly, second.text())
        listing = spoolListing(spool)
        self.assertEqual((listing["tmp"], listing["corrupt"]), ([], []), listing)

    @defer.inlineCallbacks
    def test_inFlightMessageSentAtOnceAfterStop(self):
        """
        The message that was in flight when SIGTERM came is, like the
        waiting ones, sent at once by the next run: the relay's own stop is
        not a failed delivery attempt, and does not put it off until a
        retry.
        """
        work = yield self._stopWithQueuedWork()
        sink = yield SinkProcess.start(self, os.path.join(work["scratch"], "smarthost"))
        second = RelayProcess.spawn(self, [*work["listen"], "--smarthost", f"127.0.0.1:{sink.port}"], work["scratch"])
        yield second.whenListening()
        # All four are due at once: three arrive within seconds, in any
        # order, and the fourth a moment later (a retry would be minutes
        # away).
        yield waitUntil(lambda: len(sink.messages()) >= 3, 20, lambda: f"three messages at the smart host:\n{second.text()}")
        yield waitUntil(
            lambda: {testIDOf(m) for m in sink.messages().values()} == set(work["ids"]),
            3,
            lambda: f"all four, {work['inFlight']} (in flight at SIGTERM) too, at the smart host; spool: {spoolListing(work['spool'])}\n"
            f"first run:\n{work['first'].text()}\nsecond run:\n{second.text()}",
        )
        self.assertEqual(sorted(testIDOf(m) for m in sink.messages().values()), work["ids"])
