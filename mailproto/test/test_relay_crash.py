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
  - L{WorkerSIGKILLTests}: the same with C{--workers 2}; each kill is
    either one worker (its parent starts it again) or the whole daemon,
    parent and workers at once, as a machine crash would (the relay is
    then started again on the same spool).  Duplicates are counted per
    kill.
  - L{SIGTERMTests}: SIGTERM on a relay with queued work (one message
    stalled at a smart host that never answers its end of data, others
    waiting for a connection, one half-received from a client) stops it
    cleanly with its spool consistent; a restart delivers the rest, the
    message that was in flight included, at once: the relay's own stop is
    not a failed delivery.

The kill schedule (what each kill kills, when, and which worker) and
the messages come from a seeded L{random.Random}: the seed and the kills
are in every failure message, and C{MAILPROTO_CRASH_SEED=N} replays a
schedule (the processes' timing still varies from run to run).
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
    STOP_GRACE,
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

# How many times the relay with workers is killed, and how many of those
# kills, at least, are of each kind (one worker, the whole daemon).
WORKER_RUN_KILLS = 6
EACH_KIND = 2

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


# -- SIGKILL under load ----------------------------------------------------------------

#: What one kill of a crash run SIGKILLs: the whole daemon (its only
#: process, or its parent and every worker, as a machine crash would), or
#: one worker of several.
DAEMON = "daemon"
WORKER = "worker"


class _DaemonKiller:
    """
    How L{SIGKILLTests} kills the relay: a relay of one process
    (C{--workers 1}), SIGKILLed L{KILLS} times, started again on the same
    spool after each kill.

    @ivar arguments: the relay's options that this way of killing needs.
    """

    arguments = ["--workers", "1"]

    def schedule(self, rnd: random.Random) -> list[str]:
        """
        @return: what each kill kills, in order: always the daemon
            (nothing is drawn from C{rnd}, so that a seed replays the same
            lifetimes and downtimes as it always did).
        """
        return [DAEMON] * KILLS

    def whenTakingMail(self, relay: RelayProcess, spool: str) -> defer.Deferred:
        """
        @return: a L{Deferred} firing once C{relay} takes mail.
        """
        return relay.whenListening()

    def kill(self, relay: RelayProcess, spool: str, kind: str, rnd: random.Random) -> defer.Deferred:
        """
        SIGKILL the relay (C{kind} is always L{DAEMON}).

        @return: a L{Deferred} firing with what was killed, for the report,
            once it has exited.
        """
        return relay.kill().addCallback(lambda _: DAEMON)


class _WorkerOrDaemonKiller:
    """
    How L{WorkerSIGKILLTests} kills the relay: a relay with two workers
    (C{--workers 2}), SIGKILLed L{WORKER_RUN_KILLS} times.  Each kill is
    either one worker, drawn at random (the daemon runs on, its parent
    starts the worker again, and the next kill waits until both workers
    take mail again), or the whole daemon: the parent first, both workers
    right after, before they notice; once every one of them is gone, the
    relay is started again on the same spool.  Which kind each kill is
    comes from the seed, with at least L{EACH_KIND} kills of each.
    """

    arguments = ["--workers", "2"]

    #: The workers' numbers.
    numbers = (1, 2)

    def schedule(self, rnd: random.Random) -> list[str]:
        """
        @return: what each kill kills, in order (L{WORKER} or L{DAEMON}),
            drawn from C{rnd}.
        """
        kinds = [WORKER, DAEMON] * EACH_KIND
        kinds += [rnd.choice((WORKER, DAEMON)) for _ in range(WORKER_RUN_KILLS - len(kinds))]
        rnd.shuffle(kinds)
        return kinds

    @defer.inlineCallbacks
    def whenTakingMail(self, relay: RelayProcess, spool: str):
        """
        @return: a L{Deferred} firing once C{relay} listens and each of its
            workers has started once more than it ended (the parent logs
            each end), and is found in C{/proc}.
        """
        workerProcesses, starts = _workerTools()
        yield relay.whenListening()

        def ready() -> bool:
            if set(workerProcesses(spool)) != set(self.numbers):
                return False
            return all(starts(relay, n) > len(relay.logLines(f"mailrelay: worker {n} ended (")) for n in self.numbers)

        yield waitUntil(ready, START_DEADLINE, lambda: f"workers {self.numbers} taking mail:\n{relay.text()[-3000:]}")

    @defer.inlineCallbacks
    def kill(self, relay: RelayProcess, spool: str, kind: str, rnd: random.Random):
        """
        SIGKILL the whole daemon (C{kind} is L{DAEMON}) or one worker,
        drawn from C{rnd} (L{WORKER}).

        @return: a L{Deferred} firing with what was killed (C{"daemon"},
            C{"worker 2"}), for the report, once every process killed has
            exited; for a worker, once its parent has logged its end.
        """
        workerProcesses, _ = _workerTools()
        workers = workerProcesses(spool)
        if kind == DAEMON:
            for pid in [relay.process.pid, *workers.values()]:
                os.kill(pid, signal.SIGKILL)
            yield relay.whenEnded()
            yield waitUntil(lambda: not workerProcesses(spool), STOP_GRACE, "the killed daemon's workers to be gone")
            return DAEMON
        number = rnd.choice(sorted(workers))
        ended = f"mailrelay: worker {number} ended (signal 9); starting it again"
        before = len(relay.logLines(ended))
        os.kill(workers[number], signal.SIGKILL)
        yield waitUntil(
            lambda: len(relay.logLines(ended)) > before,
            STOP_GRACE,
            lambda: f"worker {number}'s end in the log:\n{relay.text()[-3000:]}",
        )
        return f"{WORKER} {number}"


def _workerTools():
    """
    @return: L{mailproto.test.test_workers}'s C{workerProcesses} and
        C{_starts}, imported when first needed: that module imports this
        one.
    """
    from mailproto.test.test_workers import _starts, workerProcesses

    return workerProcesses, _starts


class _CrashRunTestCase(TestCase):
    """
    The relay SIGKILLed under load, and restarted on the same spool: the
    run shared by L{SIGKILLTests} and L{WorkerSIGKILLTests}, each with its
    own way of killing it.

    @ivar schedule: what each kill of the run kills (L{DAEMON},
        L{WORKER}), in order.
    @ivar kills: what was killed so far, each a dict: C{killed} (as
        C{"daemon"} or C{"worker 2"}), C{after} (seconds it lived after
        acknowledging its first L{MIN_ACKNOWLEDGED} messages since the
        previous kill), and, once the run is over, C{duplicates} (the
        duplicates that arrived at the smart host between this kill and
        the next, which the kill caused).
    @ivar report: the run's report, once it is over.
    """

    timeout = 120

    @defer.inlineCallbacks
    def crashTest(self, killer):
        """
        Run L{_crashRun} with C{killer} and the seed of L{_seed}; its failure
        names the seed, the kills made and the kills planned.
        """
        seed = _seed()
        self.schedule: list[str] = []
        self.kills: list[dict] = []
        try:
            yield self._crashRun(seed, killer)
        except Exception as e:
            made = [kill["killed"] for kill in self.kills]
            raise self.failureException(
                f"[seed {seed}; kills made {made} of {self.schedule}; replay with MAILPROTO_CRASH_SEED={seed}] {e}"
            ) from e

    @defer.inlineCallbacks
    def _crashRun(self, seed: int, killer):
        """
        Start a smart host and the relay (with C{killer.arguments}) on a new
        spool, load it with L{CLIENTS} clients, and kill it as
        C{killer.schedule} says, at random moments; after the last restart,
        stop the load, wait until the relay's queue is empty and stop it
        cleanly; then report and check that no acknowledged message was
        lost or altered.

        @param killer: how to kill the relay (L{_DaemonKiller},
            L{_WorkerOrDaemonKiller}).
        """
        rnd = random.Random(seed)
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.spool = os.path.join(self.scratch, "spool")
        sink = yield SinkProcess.start(self, os.path.join(self.scratch, "smarthost"))
        self.ledger = _Ledger(seed, sink)
        port = freePort()
        self.arguments = [
            "--smtp", f"tcp:{port}:interface=127.0.0.1",
            "--spool", self.spool,
            "--smarthost", f"127.0.0.1:{sink.port}",
            "--hostname", "relay.crash.test",
            "--max-messages-per-connection", "10",
            *killer.arguments,
        ]  # fmt: skip
        self.runs: list[RelayProcess] = []
        self.addCleanup(self._saveLogs)
        self.load = load = _Load(seed, port, CLIENTS)
        relay = self._spawn()
        yield killer.whenTakingMail(relay, self.spool)
        load.start()
        self.addCleanup(load.stop)

        self.schedule = killer.schedule(rnd)
        for kind in self.schedule:
            relay = yield self._killOnce(relay, killer, kind, rnd)

        # The last run takes mail too; then the load stops.
        yield self._whenAcknowledging(relay, "after the last restart")
        yield load.stop()
        self.acknowledged = set(load.acknowledged)
        yield self._whenDelivered(relay)
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text()[-3000:])
        lost = self.acknowledged - set(self.ledger.update())
        unfinished = spoolListing(self.spool)["tmp"]
        self._writeReport(seed, killer, lost, unfinished)

        # Nothing lost; nothing altered; nothing left over.
        if lost:
            self.fail(f"{len(lost)} acknowledged messages (of {len(self.acknowledged)}) lost, such as {sorted(lost)[:10]}; report: {self.report}")
        self.assertEqual(self.ledger.problems, [])
        self.assertEqual(set(self.ledger.arrivals) - load.begun(), set())
        # A worker killed in the middle of a message leaves it unfinished
        # in tmp/; its parent removes it at once (named by its suffix).
        self.assertEqual(spoolListing(self.spool), {"tmp": [], "queue": [], "corrupt": []})
        for run in self.runs:
            self.assertEqual(run.logLines("set aside in corrupt/"), [])
            self.assertNotIn("Traceback", run.text())

    def _spawn(self) -> RelayProcess:
        """
        Start another run of the relay on the spool.
        """
        relay = RelayProcess.spawn(self, self.arguments, self.scratch)
        self.runs.append(relay)
        return relay

    def _saveLogs(self) -> None:
        for number, run in enumerate(self.runs):
            with open(os.path.join(self.scratch, f"relay-run{number}.log"), "wb") as f:
                f.write(run.output + run.errors)

    def _whenAcknowledging(self, relay: RelayProcess, which: str) -> defer.Deferred:
        """
        @param which: the relay's run, for the failure message.
        @return: a L{Deferred} firing once the load has had
            L{MIN_ACKNOWLEDGED} more messages acknowledged.
        """
        before = len(self.load.acknowledged)
        return waitUntil(
            lambda: len(self.load.acknowledged) >= before + MIN_ACKNOWLEDGED,
            START_DEADLINE,
            lambda: f"{MIN_ACKNOWLEDGED} messages acknowledged {which}:\n{relay.text()[-3000:]}",
        )

    @defer.inlineCallbacks
    def _killOnce(self, relay: RelayProcess, killer, kind: str, rnd: random.Random):
        """
        Kill at a random moment while the load runs: first let the relay
        acknowledge a few messages (so that every kill finds it busy,
        however slow this machine), then let it live a random time more;
        kill what C{kind} names; start the relay again if the daemon was
        killed.

        @return: a L{Deferred} firing with the relay's run that takes mail
            now, once it does.
        """
        yield self._whenAcknowledging(relay, f"by run {len(self.runs) - 1}")
        lifetime = rnd.uniform(0.0, 1.2)
        downtime = rnd.uniform(0.0, 0.3)
        yield _sleep(lifetime)
        killed = yield killer.kill(relay, self.spool, kind, rnd)
        self.ledger.update()
        self.kills.append({"killed": killed, "after": round(lifetime, 3), "duplicatesBefore": self.ledger.duplicates})
        if kind == DAEMON:
            self.assertEqual(relay.endSignal, signal.SIGKILL, relay.text()[-3000:])
            yield _sleep(downtime)
            relay = self._spawn()
        yield killer.whenTakingMail(relay, self.spool)
        return relay

    def _whenDelivered(self, relay: RelayProcess) -> defer.Deferred:
        """
        The relay sends everything it queued, acknowledged or not, and its
        queue empties.  The smart host stores a message before it answers,
        and the relay takes a message out of its queue only after that
        answer: once the queue is empty, whatever has not arrived never
        will.

        @return: a L{Deferred} firing once the queue is empty.
        """

        def missing():
            return self.acknowledged - set(self.ledger.update())

        return waitUntil(
            lambda: not spoolListing(self.spool)["queue"],
            DELIVERY_DEADLINE,
            lambda: f"an empty queue ({_summary(spoolListing(self.spool))}); {len(missing())} acknowledged messages "
            f"(of {len(self.acknowledged)}) not at the smart host yet, such as {sorted(missing())[:10]}",
        )

    def _writeReport(self, seed: int, killer, lost: set[str], unfinished: list[str]) -> None:
        """
        Make the run's report, duplicates included (logged, written to
        C{report.txt} in the scratch directory, and kept as attributes).

        @param lost: the acknowledged messages that did not arrive.
        @param unfinished: the names in C{tmp/} after the clean stop.
        """
        ledger, load = self.ledger, self.load
        arrived = set(ledger.arrivals)
        marks = [kill.pop("duplicatesBefore") for kill in self.kills] + [ledger.duplicates]
        for kill, (before, after) in zip(self.kills, zip(marks, marks[1:])):
            kill["duplicates"] = after - before

        def numbers(needle: str, pattern: str) -> list[int]:
            found = [re.search(pattern, line) for run in self.runs for line in run.logLines(needle)]
            return [int(match.group(1)) for match in found if match]

        self.duplicates = ledger.duplicates
        self.duplicateIDs = sorted(i for i, count in ledger.arrivals.items() if count > 1)
        self.report = {
            "seed": seed,
            "arguments": killer.arguments,
            "kills": self.kills,
            "killKinds": {kind: self.schedule.count(kind) for kind in (DAEMON, WORKER)},
            "clients": CLIENTS,
            "begun": load.sent,
            "acknowledged": len(self.acknowledged),
            "lost": len(lost),
            "refused": len(load.refused),
            "unanswered": len(load.unanswered),
            "arrived": sum(ledger.arrivals.values()),
            "arrivedUnique": len(arrived),
            "deliveredUnacknowledged": len(arrived - self.acknowledged),
            "duplicates": ledger.duplicates,
            "duplicateIDs": self.duplicateIDs[:20],
            "connections": load.connections,
            "failedConnections": load.failedConnections,
            "queuedAtStarts": numbers("mailrelay: listening on", r"\((\d+) queued\)"),
            "tmpRemovedAtStarts": numbers("unfinished removed", r"(\d+) unfinished removed"),
            "tmpLeftAtStop": len(unfinished),
            "tmpRemovedAfterWorkerKills": numbers("left in tmp/", r"removed (\d+) unfinished message"),
            "workerRestarts": sum(len(run.logLines("); starting it again")) for run in self.runs),
            "adoptedFromWorkers": sum(numbers("a worker had queued but not announced", r"took (\d+) message")),
        }
        _log.info("relay crash test: {report}", report=self.report)
        with open(os.path.join(self.scratch, "report.txt"), "w") as f:
            f.write(repr(self.report) + "\n")


class SIGKILLTests(_CrashRunTestCase):
    """
    The relay, in one process, SIGKILLed under load and restarted on the
    same spool.
    """

    def test_noAcknowledgedMessageLost(self):
        """
        With 8 clients sending at once, the relay (C{--workers 1}) is
        SIGKILLed 4 times at random moments and restarted each time on the
        same spool.  After the last restart and the end of the load, every
        message the relay answered C{250} arrives at the smart host,
        intact, within a bounded time; duplicates are counted, not failed.
        Once stopped cleanly, the spool has nothing in C{tmp/}, C{queue/}
        or C{corrupt/}.
        """
        return self.crashTest(_DaemonKiller())


class WorkerSIGKILLTests(_CrashRunTestCase):
    """
    The relay with two workers under load, one worker or the whole daemon
    SIGKILLed at each kill.
    """

    def test_noAcknowledgedMessageLost(self):
        """
        With 8 clients sending at once to a relay with two workers, 6 kills
        come at random moments, each either one worker (its parent starts
        it again) or the whole daemon, parent and workers, as a machine
        crash would (started again on the same spool); at least 2 of each
        kind, in an order drawn from the seed.  After the last kill and the
        end of the load, every message the relay answered C{250} arrives at
        the smart host, intact, within a bounded time; duplicates are
        counted, per kill, not failed.  Once stopped cleanly, the spool has
        nothing in C{tmp/}, C{queue/} or C{corrupt/}: what a killed worker
        left unfinished in C{tmp/} was removed by its parent.
        """
        return self.crashTest(_WorkerOrDaemonKiller())


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
