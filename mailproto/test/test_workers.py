# -*- test-case-name: mailproto.test.test_workers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{twistd mailrelay --workers 2} tested on the real processes: the parent
(L{mailproto._relayd._workers}) and its two workers
(L{mailproto._relayd._worker}) in child processes, clients and a smart
host in this process, on 127.0.0.1 only.

  - L{DeliveryTests}: 200 messages from several clients at once, taken
    in by both workers, each delivered exactly once; the C{250} names the
    queue id that the parent logs for the delivery.
  - L{CrashTests}: one worker SIGKILLed under load is started again and
    loses nothing; the whole daemon SIGKILLed under load and started
    again on the same spool loses nothing either.  Duplicates are
    counted (the promise is at least once), not failed.
  - L{QueueCommandTests}: C{mailproto queue hold|list|release|flush}
    against the parent's control socket, for mail a worker took in.
  - L{LimitTests}: C{--max-clients-per-address} and
    C{--max-auth-failures} hold for the whole daemon, whichever worker
    accepts the client.
  - L{SignalTests}: SIGHUP reaches the workers (C{--config}); SIGTERM
    lets a transaction finish, refuses new clients, and ends every
    process; a worker whose parent is SIGKILLed ends by itself.

Which worker accepts a connection is the kernel's choice; a test that
needs a given worker to take one stops the others (SIGSTOP) until it is
accepted (L{WorkerHarness.throughWorker}).  The workers' process ids are
found in C{/proc}, by their command line, which names the spool.

The crash tests' reports (acknowledged, lost, duplicates, ...) are logged
and written to C{report.txt} in their scratch directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import time
from collections import Counter

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest

from mailproto._cores import availableCores
from mailproto.test.test_daemon import freePort, spoolListing, testIDOf, waitUntil
from mailproto.test.test_mailrelay import _Files
from mailproto.test.test_operations import (
    HOSTNAME,
    PROMPTLY,
    _message,
    _queueIDs,
    _RelayTestCase,
    _Session,
    beginTransaction,
)
from mailproto.test.test_relay_crash import _Load, makeMessage
from mailproto.testing import ScriptedSMTPFactory, Trickle

_log = Logger()

#: The seed of the load's messages.
SEED = 20261207

#: How many clients send at once under load, and how many messages each
#: sends on one connection before it connects again (so that the
#: connections are spread over the workers).
CLIENTS = 6
PER_CONNECTION = 3

#: Seconds to wait for something the relay does at once.
SOON = 15

#: Seconds a slow smart host takes to answer each end of data.
SLOW_SMART_HOST = 0.1

#: The workers' module, as their command lines name it.
_WORKER_MODULE = b"mailproto._relayd._worker"

_QUEUED = re.compile(r"worker (\d+): Queued ([0-9a-f]+) from ")
_DELIVERED = re.compile(r"Delivered ([0-9a-f]+) to <[^>]*> via 127\.0\.0\.1: 250 2\.0\.0 Ok: got (\S+)")
_QUEUED_AS = re.compile(rb"queued as ([0-9a-f]+)")


# -- the processes ---------------------------------------------------------------


def workerProcesses(spool: str) -> dict[int, int]:
    """
    Find the live worker processes of the relay on C{spool}, whoever their
    parent is now (a worker whose parent died is the init process's).

    @return: their process ids, by worker number.
    """
    spool = os.path.abspath(spool)
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if _WORKER_MODULE not in argv or state in (b"Z", b"X"):
            continue
        try:
            spec = json.loads(argv[argv.index(_WORKER_MODULE) + 1])
        except (IndexError, ValueError):
            continue
        if spool in spec.get("argv", ()):
            found[spec["worker"]] = int(name)
    return found


def _processState(pid: int) -> bytes | None:
    """
    @return: the state letter of process C{pid} (C{b"T"}: stopped), or
        C{None} if there is no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def queuedBy(relay, since: int = 0) -> Counter:
    """
    @return: how many messages each worker logged as queued, by worker
        number, in the relay's log from offset C{since}.
    """
    text = relay.output[since:].decode("utf-8", "replace")
    return Counter(int(match.group(1)) for match in _QUEUED.finditer(text))


def _starts(relay, number: int) -> int:
    """
    @return: how many times worker C{number} started accepting.
    """
    return sum(1 for line in relay.logLines(f"worker {number}: ") if "starting on" in line)


# -- clients and smart host ------------------------------------------------------------


class _CountedLoad(_Load):
    """
    The crash test's load, sending at most C{total} messages in all, and
    C{perConnection} on each connection before connecting again.

    @ivar replies: the final reply to each message answered, by test id.
    """

    def __init__(self, seed: int, port: int, clients: int, total: int | None = None, perConnection: int = PER_CONNECTION) -> None:
        _Load.__init__(self, seed, port, clients)
        self.total = total
        self.perConnection = perConnection
        self.replies: dict[str, tuple[int, bytes]] = {}
        self._onConnection = [0] * clients

    def nextMessage(self, slot: int) -> str | None:
        if self.total is not None and self.sent >= self.total:
            self.stopping = True
        if self.stopping:
            return None
        if self._onConnection[slot] >= self.perConnection:
            # QUIT; the client's loop connects again.
            self._onConnection[slot] = 0
            return None
        self._onConnection[slot] += 1
        return _Load.nextMessage(self, slot)

    def answered(self, testID: str, code: int, resp: bytes) -> None:
        self.replies[testID] = (code, resp)
        _Load.answered(self, testID, code, resp)

    def finished(self) -> bool:
        """
        @return: whether every client has sent its last message and
            closed.
        """
        return bool(self._loops) and all(loop.called for loop in self._loops)


def recordingSmartHost(delay: float = 0.0) -> ScriptedSMTPFactory:
    """
    @param delay: seconds the smart host takes to answer each end of data
        (after it has kept the message).
    @return: a smart host that keeps every message and answers each end of
        data with C{250 2.0.0 Ok: got TESTID}, the message's C{X-Test-Id}.
    """

    def endOfData(line: bytes, server):
        # The message just received is the server's last; its test id in
        # the reply lands in the relay's "Delivered" line.
        testID = testIDOf(server.messages[-1]) or "none"
        reply = b"250 2.0.0 Ok: got " + testID.encode("ascii") + b"\r\n"
        return Trickle(reply, delay) if delay else reply

    return ScriptedSMTPFactory({b"EOD": endOfData})


def arrivals(smartHost: ScriptedSMTPFactory) -> Counter:
    """
    @return: how many times each test id arrived at the smart host.
    """
    return Counter(testIDOf(message) for message in smartHost.messages)


def alteredArrivals(smartHost: ScriptedSMTPFactory, seed: int) -> list[str]:
    """
    @return: what is wrong with the messages at the smart host: no test id,
        or not the message sent under the relay's C{Received} header.
    """
    problems = []
    for stored in smartHost.messages:
        testID = testIDOf(stored)
        if testID is None:
            problems.append(f"no X-Test-Id: {stored[:200]!r}")
        elif not (stored.startswith(b"Received: from ") and stored.endswith(makeMessage(seed, testID))):
            problems.append(f"{testID} altered: {stored[:200]!r}")
    return problems


@defer.inlineCallbacks
def connectFrom(testCase, port: int, source: str = "127.0.0.1"):
    """
    Connect to the relay from C{source} (an address of this machine) and
    read its first reply; the connection is aborted when the test ends.

    @return: a L{Deferred} firing with the L{_Session} and that reply.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    session = yield connectProtocol(endpoint, _Session())
    testCase.addCleanup(lambda: session.closed.called or session.transport.abortConnection())
    greeting = yield session.nextReply()
    return session, greeting


def _authenticate(port: int, files: _Files, password: str, source: str) -> str:
    """
    One connection from C{source}: STARTTLS, then C{AUTH PLAIN} as joe
    with C{password} (in a thread: smtplib blocks).

    @return: the AUTH reply's code (C{"235"}, C{"535"}, C{"421"}), or the
        name of the error that stopped the session before it.
    """
    client = None
    try:
        client = smtplib.SMTP("127.0.0.1", port, timeout=SOON, source_address=(source, 0))
        client.starttls(context=files.clientContext())
        client.ehlo("guesser.example")
        code, _ = client.auth("PLAIN", lambda challenge=None: f"\0joe\0{password}", initial_response_ok=True)
        return str(code)
    except smtplib.SMTPAuthenticationError as e:
        return str(e.smtp_code)
    except (smtplib.SMTPException, OSError) as e:
        return type(e).__name__
    finally:
        if client is not None:
            client.close()


# -- the harness -------------------------------------------------------------------


class WorkerHarness(_RelayTestCase):
    """
    Runs C{twistd mailrelay --workers 2} on a spool of its own, and steers
    which worker accepts the next client.
    """

    timeout = 60

    def setUp(self):
        _RelayTestCase.setUp(self)
        self.relays = []
        self._paused: set[int] = set()
        # Registered first, so run last: no worker outlives the test.
        self.addCleanup(self._killLeftovers)
        self.addCleanup(self._saveLogs)

    def _killLeftovers(self) -> None:
        for pid in workerProcesses(self.spool).values():
            _signal(pid, signal.SIGKILL)

    def _saveLogs(self) -> None:
        for number, relay in enumerate(self.relays):
            with open(os.path.join(self.scratch, f"relay-run{number}.log"), "wb") as f:
                f.write(relay.output + relay.errors)

    @defer.inlineCallbacks
    def startWorkers(self, smartHostPort: int, *extra: str):
        """
        Start the relay with two workers (and a shutdown grace of two
        seconds, unless C{extra} gives another), relaying through
        127.0.0.1:C{smartHostPort}.

        @return: a L{Deferred} firing with the L{RelayProcess} once both
            workers accept clients.
        """
        relay = self.startRelay(smartHostPort, "--workers", "2", "--shutdown-grace", "2s", *extra)
        self.relays.append(relay)
        # Run before the relay is stopped: a stopped worker cannot drain.
        self.addCleanup(self.resumeWorkers)
        yield relay.whenListening()
        yield self.whenAccepting(relay)
        return relay

    def whenAccepting(self, relay, starts: dict[int, int] | None = None) -> defer.Deferred:
        """
        @param starts: how many times each worker must have started, by
            number (by default once each).
        @return: a L{Deferred} firing once they have, and each worker
            process is found.
        """
        starts = starts or {1: 1, 2: 1}

        def ready():
            return all(_starts(relay, n) >= count for n, count in starts.items()) and set(workerProcesses(self.spool)) == set(starts)

        return waitUntil(ready, SOON, lambda: f"workers {starts} accepting:\n{relay.text()[-3000:]}")

    def pauseAllBut(self, number: int):
        """
        Stop (SIGSTOP) every worker but C{number}, so that it alone accepts
        clients, and wait until the kernel has stopped them.

        @return: a callable that lets them go on (SIGCONT).
        """
        pids = workerProcesses(self.spool)
        self.assertIn(number, pids)
        paused = [pid for n, pid in pids.items() if n != number]
        for pid in paused:
            self._paused.add(pid)
            _signal(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 2
        while any(_processState(pid) not in (b"T", b"t", None) for pid in paused):
            if time.monotonic() > deadline:
                raise AssertionError(f"workers {paused} did not stop")
            time.sleep(0.001)

        def resume() -> None:
            for pid in paused:
                self._paused.discard(pid)
                _signal(pid, signal.SIGCONT)

        return resume

    def resumeWorkers(self) -> None:
        """
        Let every worker L{pauseAllBut} stopped go on.
        """
        for pid in list(self._paused):
            _signal(pid, signal.SIGCONT)
        self._paused.clear()

    def throughWorker(self, number: int, action, *arguments) -> defer.Deferred:
        """
        Call C{action(*arguments)} while worker C{number} alone accepts
        clients; the others go on once its result is there.

        @return: a L{Deferred} firing with its result.
        """
        resume = self.pauseAllBut(number)
        d = defer.maybeDeferred(action, *arguments)

        def done(result):
            resume()
            return result

        return d.addBoth(done)

    def listenSmartHost(self, smartHost: ScriptedSMTPFactory, port: int = 0) -> int:
        """
        Listen with C{smartHost} on 127.0.0.1 until the test ends.

        @return: its port.
        """
        listening = reactor.listenTCP(port, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return listening.getHost().port

    def assertNoTraceback(self, relay) -> None:
        self.assertNotIn("Traceback", relay.text())
        self.assertEqual(relay.logLines("Unhandled"), [])

    def writeReport(self, name: str, report: dict) -> None:
        """
        Log C{report} and write it to C{report.txt} in the scratch
        directory.
        """
        self.report = report
        _log.info("{name}: {report}", name=name, report=report)
        with open(os.path.join(self.scratch, "report.txt"), "w") as f:
            f.write(f"{name}: {report!r}\n")


# -- 1. every message delivered once -------------------------------------------------


class DeliveryTests(WorkerHarness):
    """
    Mail taken in by two workers and delivered by their parent.
    """

    @defer.inlineCallbacks
    def test_deliveredExactlyOnce(self):
        """
        200 messages from 6 clients at once (3 per connection, DATA and
        BDAT) are all acknowledged, taken in by both workers (the log's
        C{Queued} lines name C{worker 1:} and C{worker 2:}), and each
        arrives at the smart host once, intact.  The C{250} of each names
        the queue id that the parent, not a worker, logs delivered with
        the smart host's reply for that very message.
        """
        smartHost = recordingSmartHost()
        relay = yield self.startWorkers(self.listenSmartHost(smartHost))
        load = _CountedLoad(SEED, self.port, CLIENTS, total=200)
        load.start()
        self.addCleanup(load.stop)
        yield waitUntil(load.finished, 20, lambda: f"the load to end ({len(load.acknowledged)} acknowledged):\n{relay.text()[-3000:]}")
        self.assertEqual((len(load.acknowledged), load.refused, load.unanswered), (200, {}, set()))

        yield waitUntil(
            lambda: set(arrivals(smartHost)) >= load.acknowledged and not spoolListing(self.spool)["queue"],
            SOON,
            lambda: f"all 200 at the smart host ({len(arrivals(smartHost))} there) and an empty queue:\n{relay.text()[-3000:]}",
        )
        counts = arrivals(smartHost)
        self.assertEqual({testID: n for testID, n in counts.items() if n != 1}, {})
        self.assertEqual(set(counts), load.acknowledged)
        self.assertEqual(alteredArrivals(smartHost, SEED), [])

        text = relay.output.decode("utf-8", "replace")
        queuedBy = {match.group(2): int(match.group(1)) for match in _QUEUED.finditer(text)}
        delivered = {}
        for line in relay.logLines("Delivered "):
            self.assertNotIn("worker", line)
            match = _DELIVERED.search(line)
            self.assertIsNotNone(match, line)
            delivered[match.group(1)] = match.group(2)
        for testID in load.acknowledged:
            code, resp = load.replies[testID]
            match = _QUEUED_AS.search(resp)
            self.assertIsNotNone(match, resp)
            queueID = match.group(1).decode("ascii")
            self.assertIn(queueID, queuedBy, testID)
            self.assertEqual(delivered.get(queueID), testID, queueID)
        perWorker = Counter(queuedBy.values())
        self.assertEqual(set(perWorker), {1, 2}, perWorker)
        self.assertEqual(sum(perWorker.values()), 200)
        self.writeReport("delivered once", {"queuedByWorker": dict(perWorker), "connections": load.connections})
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text()[-3000:])
        self.assertNoTraceback(relay)
        # The daemon's count of fsyncs includes the workers': at least one
        # per message they committed.
        [stopped] = relay.logLines("mailrelay: stopped;")
        self.assertGreaterEqual(int(re.search(r"(\d+) fsyncs", stopped).group(1)), 200, stopped)

    @defer.inlineCallbacks
    def test_autoIsOnePerCore(self):
        """
        C{--workers auto}, the default, starts one worker per core this
        process may run on, each of which takes mail.
        """
        cores = availableCores()
        if cores < 2:
            raise SkipTest("one core here: auto is one process")
        smartHost = recordingSmartHost()
        relay = self.startRelay(self.listenSmartHost(smartHost), "--workers", "auto", "--shutdown-grace", "2s")
        self.relays.append(relay)
        self.addCleanup(self.resumeWorkers)
        yield relay.whenListening()
        [listening] = relay.logLines("mailrelay: listening on")
        self.assertIn(f", {cores} workers;", listening)
        yield self.whenAccepting(relay, {n: 1 for n in range(1, cores + 1)})
        load = _CountedLoad(SEED, self.port, CLIENTS, total=20)
        load.start()
        self.addCleanup(load.stop)
        yield waitUntil(load.finished, SOON, lambda: f"the load to end:\n{relay.text()[-3000:]}")
        self.assertEqual(len(load.acknowledged), 20)
        yield waitUntil(lambda: set(arrivals(smartHost)) >= load.acknowledged, SOON, lambda: relay.text()[-3000:])


# -- 2, 3. SIGKILL under load --------------------------------------------------------


class CrashTests(WorkerHarness):
    """
    SIGKILL of one worker, and of the whole daemon, while clients send.
    """

    @defer.inlineCallbacks
    def runLoad(self, relay):
        """
        Start the load, and wait until each worker has queued ten messages.

        @return: a L{Deferred} firing with the L{_CountedLoad}.
        """
        load = _CountedLoad(SEED, self.port, CLIENTS)
        load.start()
        self.addCleanup(load.stop)
        yield waitUntil(
            lambda: min(queuedBy(relay)[1], queuedBy(relay)[2]) >= 10,
            SOON,
            lambda: f"ten messages queued by each worker ({queuedBy(relay)}):\n{relay.text()[-3000:]}",
        )
        return load

    @defer.inlineCallbacks
    def drained(self, load, smartHost, relay) -> defer.Deferred:
        """
        Stop the load; wait until every acknowledged message is at the
        smart host and the queue is empty.

        @return: a L{Deferred} firing with the report's common part.
        """
        yield load.stop()
        acknowledged = set(load.acknowledged)

        def lost():
            return acknowledged - set(arrivals(smartHost))

        yield waitUntil(
            lambda: not lost() and not spoolListing(self.spool)["queue"],
            20,
            lambda: f"every acknowledged message delivered ({len(lost())} of {len(acknowledged)} not yet, such as "
            f"{sorted(lost())[:5]}) and an empty queue ({len(spoolListing(self.spool)['queue'])} files):\n{relay.text()[-3000:]}",
        )
        counts = arrivals(smartHost)
        self.assertEqual(alteredArrivals(smartHost, SEED), [])
        self.assertEqual(set(counts) - load.begun(), set())
        # A client whose session was cut got no reply, never a refusal.
        self.assertEqual(load.refused, {})
        return {
            "begun": load.sent,
            "acknowledged": len(acknowledged),
            "lost": len(lost()),
            "cut (no reply)": len(load.unanswered),
            "cut but delivered": len(load.unanswered & set(counts)),
            "duplicates": sum(n - 1 for n in counts.values()),
            "duplicateIDs": sorted(t for t, n in counts.items() if n > 1)[:10],
            "connections": load.connections,
            "failedConnections": load.failedConnections,
        }

    @defer.inlineCallbacks
    def test_workerKilled(self):
        """
        Worker 1 SIGKILLed while 6 clients send: the parent logs its end
        and starts it again, and it takes mail again; the clients it was
        serving lose their connection without a reply (they are not told
        250 for a message that is then lost); every message acknowledged,
        before or after, arrives at the smart host.  The queue ends empty,
        and after the relay's next start so does C{tmp/}.
        """
        smartHost = recordingSmartHost()
        smartHostPort = self.listenSmartHost(smartHost)
        relay = yield self.startWorkers(smartHostPort)
        load = yield self.runLoad(relay)
        victim = workerProcesses(self.spool)[1]
        queuedBefore = queuedBy(relay)
        os.kill(victim, signal.SIGKILL)
        yield waitUntil(
            lambda: relay.logLines("mailrelay: worker 1 ended (signal 9); starting it again"),
            SOON,
            lambda: f"worker 1's end in the log:\n{relay.text()[-3000:]}",
        )
        yield self.whenAccepting(relay, {1: 2, 2: 1})
        self.assertNotEqual(workerProcesses(self.spool)[1], victim)
        restarted = len(relay.output)
        yield waitUntil(
            lambda: queuedBy(relay, restarted)[1] >= 5,
            SOON,
            lambda: f"mail queued by the new worker 1:\n{relay.text()[-3000:]}",
        )
        report = yield self.drained(load, smartHost, relay)
        self.assertEqual(report["lost"], 0, report)
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text()[-3000:])
        self.assertNoTraceback(relay)
        leftovers = spoolListing(self.spool)

        second = yield self.startWorkers(smartHostPort)
        self.assertEqual(spoolListing(self.spool), {"tmp": [], "queue": [], "corrupt": []})
        [recovered] = second.logLines("unfinished removed")
        self.assertIn(f"0 queued, {len(leftovers['tmp'])} unfinished removed, 0 set aside", recovered)
        yield second.terminate()
        self.assertTrue(second.stoppedCleanly, second.text()[-3000:])
        adopted = [int(m) for line in relay.logLines("a worker had queued but not announced") for m in re.findall(r"took (\d+) message", line)]
        report.update(
            queuedBeforeKill=dict(queuedBefore),
            queuedByNewWorker1=queuedBy(relay, restarted)[1],
            adoptedAfterKill=sum(adopted),
            tmpLeftAfterRun=len(leftovers["tmp"]),
        )
        self.writeReport("worker SIGKILL", report)

    @defer.inlineCallbacks
    def test_daemonKilled(self):
        """
        The parent and both workers SIGKILLed while 6 clients send (the
        parent first, the workers right after, before they notice), then
        the relay started again on the same spool, its clients still
        sending: every message acknowledged by the first run or the second
        arrives at the smart host.  The smart host answers each message
        a moment after it has it, so that the kill finds messages queued
        and attempts in flight.
        """
        smartHost = recordingSmartHost(delay=SLOW_SMART_HOST)
        smartHostPort = self.listenSmartHost(smartHost)
        relay = yield self.startWorkers(smartHostPort)
        load = yield self.runLoad(relay)
        pids = [relay.process.pid, *workerProcesses(self.spool).values()]
        acknowledgedAtKill = len(load.acknowledged)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        yield relay.whenEnded()
        self.assertEqual(relay.endSignal, signal.SIGKILL)
        yield waitUntil(lambda: not workerProcesses(self.spool), 5, "the workers to be gone")

        second = yield self.startWorkers(smartHostPort)
        yield waitUntil(
            lambda: sum(queuedBy(second).values()) >= 20,
            SOON,
            lambda: f"mail queued by the second run:\n{second.text()[-3000:]}",
        )
        report = yield self.drained(load, smartHost, second)
        self.assertEqual(report["lost"], 0, report)
        yield second.terminate()
        self.assertTrue(second.stoppedCleanly, second.text()[-3000:])
        self.assertNoTraceback(second)
        self.assertEqual(spoolListing(self.spool)["queue"], [])
        [recovered] = second.logLines("unfinished removed")
        report.update(acknowledgedAtKill=acknowledgedAtKill, recoveredAtStart=recovered.split("] ", 1)[-1])
        self.writeReport("daemon SIGKILL", report)


# -- 4. mailproto queue --------------------------------------------------------------


class QueueCommandTests(WorkerHarness):
    """
    C{mailproto queue} against a relay with workers: its control socket is
    the parent's.
    """

    @defer.inlineCallbacks
    def test_holdListReleaseFlush(self):
        """
        Two messages taken in by the workers wait (the smart host's port is
        closed).  One is held: C{list} marks it C{held}; with a smart host
        listening, C{flush} sends the other only; C{release} then C{flush}
        sends the held one too, once.
        """
        smartHostPort = freePort()
        relay = yield self.startWorkers(smartHostPort)
        ids = yield self.sendMessages(relay, [("m1", "alice@example.org", ["bob@example.com"]), ("m2", "dave@example.org", ["erin@example.net"])])
        for queueID in ids.values():
            [queued] = relay.logLines(f"Queued {queueID} from ")
            self.assertRegex(queued, r"worker [12]: Queued ")
        held, other = ids["m2"], ids["m1"]

        out, err, code = yield self.queue("hold", held)
        self.assertEqual((out, err, code), (f"{held} held\n", "", 0))
        out, err, code = yield self.queue("list")
        self.assertEqual((err, code), ("", 0))
        [line] = [each for each in out.splitlines() if each.startswith(held)]
        self.assertTrue(line.endswith("  held"), out)
        [line] = [each for each in out.splitlines() if each.startswith(other)]
        self.assertFalse(line.endswith("held"), out)

        smartHost = recordingSmartHost()
        self.listenSmartHost(smartHost, smartHostPort)
        out, err, code = yield self.queue("flush")
        self.assertEqual((out, err, code), ("1 message to be tried now\n", "", 0))
        yield waitUntil(lambda: list(_queueIDs(self.spool).values()) == [held], PROMPTLY, lambda: f"only {held} left:\n{relay.text()}")
        self.assertEqual(arrivals(smartHost), {"m1": 1})

        out, err, code = yield self.queue("release", held)
        self.assertEqual((out, err, code), (f"{held} released\n", "", 0))
        out, err, code = yield self.queue("flush")
        self.assertEqual((err, code), ("", 0))
        self.assertRegex(out, r"^[01] messages? to be tried now\n$")
        yield waitUntil(lambda: not _queueIDs(self.spool), PROMPTLY, lambda: f"an empty queue:\n{relay.text()}")
        self.assertEqual(arrivals(smartHost), {"m1": 1, "m2": 1})
        [line] = relay.logLines(f"Delivered {held} ")
        self.assertIn("Ok: got m2", line)
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text())
        self.assertNoTraceback(relay)


# -- 5. limits of the whole daemon ------------------------------------------------------


class LimitTests(WorkerHarness):
    """
    The limits on clients count what every worker sees: the parent keeps
    the counts.  The clients come from 127.0.0.2, which is not in the
    relay networks (127.0.0.1/32), so that the per-address limits apply.
    """

    @defer.inlineCallbacks
    def test_connectionsPerAddress(self):
        """
        With C{--max-clients-per-address 2}: one session from 127.0.0.2 on
        each worker; a third is told C{421 4.7.0} by worker 1 and by
        worker 2 alike; 127.0.0.1 (a relay network) is still greeted.
        Once worker 1's session ends, a new one is greeted (on worker 2),
        and worker 1, which then holds no session at all, refuses the
        next: it counts worker 2's two.
        """
        relay = yield self.startWorkers(freePort(), "--max-clients-per-address", "2", "--relay-network", "127.0.0.1/32")
        refusal = b"421 4.7.0 " + HOSTNAME.encode("ascii") + b" Too many connections from your address"
        held = {}
        for number in (1, 2):
            session, greeting = yield self.throughWorker(number, connectFrom, self, self.port, "127.0.0.2")
            self.assertTrue(greeting.startswith(b"220 "), (number, greeting))
            held[number] = session

        @defer.inlineCallbacks
        def assertRefused(number: int):
            session, greeting = yield self.throughWorker(number, connectFrom, self, self.port, "127.0.0.2")
            self.assertTrue(greeting.startswith(refusal), (number, greeting))
            yield session.whenClosed()

        yield assertRefused(1)
        yield assertRefused(2)
        session, greeting = yield connectFrom(self, self.port, "127.0.0.1")
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        session.transport.loseConnection()

        reply = yield held[1].command(b"QUIT")
        self.assertTrue(reply.startswith(b"221 "), reply)
        yield held[1].whenClosed()
        # The parent hears of the end from worker 1, and of the new client
        # from worker 2: the two may cross.
        deadline = time.monotonic() + SOON
        while True:
            session, greeting = yield self.throughWorker(2, connectFrom, self, self.port, "127.0.0.2")
            if greeting.startswith(b"220 "):
                break
            self.assertTrue(greeting.startswith(refusal), greeting)
            self.assertLess(time.monotonic(), deadline, "the parent never let a new session in after one ended")
            yield deferLater(reactor, 0.1, lambda: None)
        yield assertRefused(1)
        yield assertRefused(2)
        self.assertTrue(relay.logLines("Refused a connection from 127.0.0.2 to smtp: max-clients-per-address"), relay.text())
        self.assertNoTraceback(relay)

    @defer.inlineCallbacks
    def test_authFailuresAcrossWorkers(self):
        """
        With C{--max-auth-failures 3}: a good password works (and is not
        counted); three wrong ones from 127.0.0.2, on worker 1, worker 2
        and worker 1 (neither saw three), block the address on both
        workers, even with the right password (C{421}); 127.0.0.3 can
        still log in.
        """
        files = _Files(self)
        relay = yield self.startWorkers(
            freePort(), "--users", files.users, "--certificate", files.certificate,
            "--max-auth-failures", "3", "--relay-network", "127.0.0.1/32",
        )  # fmt: skip

        def attempt(password: str, source: str = "127.0.0.2") -> defer.Deferred:
            return deferToThread(_authenticate, self.port, files, password, source)

        outcomes = []
        for number, password in [(1, "secret"), (1, "wrong"), (2, "wrong"), (1, "wrong"), (2, "secret"), (1, "secret")]:
            code = yield self.throughWorker(number, attempt, password)
            outcomes.append((number, password, code))
        self.assertEqual(
            [code for _, _, code in outcomes], ["235", "535", "535", "535", "421", "421"], f"{outcomes}\n{relay.text()[-3000:]}"
        )
        code = yield attempt("secret", "127.0.0.3")
        self.assertEqual(code, "235")
        self.assertNoTraceback(relay)


# -- 6, 7, 8. signals ------------------------------------------------------------------


class SignalTests(WorkerHarness):
    """
    SIGHUP and SIGTERM to the parent, and SIGKILL of the parent alone.
    """

    @defer.inlineCallbacks
    def recipients(self, count: int) -> defer.Deferred:
        """
        One session: EHLO, MAIL, C{count} RCPT, QUIT.

        @return: a L{Deferred} firing with the RCPT replies.
        """
        session, greeting = yield connectFrom(self, self.port)
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        reply = yield session.command(b"EHLO hup.test")
        self.assertTrue(reply.startswith(b"250"), reply)
        reply = yield session.command(b"MAIL FROM:<alice@example.org>")
        self.assertTrue(reply.startswith(b"250 "), reply)
        replies = []
        for n in range(count):
            reply = yield session.command(b"RCPT TO:<r%d@example.com>" % n)
            replies.append(reply)
        yield session.command(b"QUIT")
        return replies

    @defer.inlineCallbacks
    def test_sighupReachesWorkers(self):
        """
        With C{--config} saying C{max-recipients = 2}, both workers refuse
        a third recipient; the file then says 5 and the parent gets
        SIGHUP: each worker logs the reload, and a session on either takes
        three recipients.
        """
        config = os.path.join(self.scratch, "relay.toml")
        with open(config, "w") as f:
            f.write("max-recipients = 2\n")
        relay = yield self.startWorkers(freePort(), "--config", config)
        for number in (1, 2):
            replies = yield self.throughWorker(number, self.recipients, 3)
            self.assertEqual([r[:4] for r in replies], [b"250 ", b"250 ", b"452 "], (number, replies))

        with open(config, "w") as f:
            f.write("max-recipients = 5\n")
        relay.process.signalProcess("HUP")

        def reloaded():
            return {n for n in (1, 2) for line in relay.logLines(f"worker {n}: mailrelay: reloaded {config}") if "max-recipients changed" in line}

        yield waitUntil(lambda: reloaded() == {1, 2}, SOON, lambda: f"both workers to reload:\n{relay.text()[-3000:]}")
        for number in (1, 2):
            replies = yield self.throughWorker(number, self.recipients, 3)
            self.assertEqual([r[:4] for r in replies], [b"250 "] * 3, (number, replies))
        self.assertNoTraceback(relay)

    @defer.inlineCallbacks
    def openBusy(self, testID: str) -> defer.Deferred:
        """
        Begin a transaction and send half of its message.

        @return: a L{Deferred} firing with the session and the message.
        """
        session, greeting = yield connectFrom(self, self.port)
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        yield beginTransaction(self, session, b"alice@example.org", b"bob@example.com")
        message = _message(testID, "alice@example.org", ["bob@example.com"], lines=200)
        session.send(message[: len(message) // 2])
        return session, message

    @defer.inlineCallbacks
    def openIdle(self) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with a session that said EHLO.
        """
        session, greeting = yield connectFrom(self, self.port)
        self.assertTrue(greeting.startswith(b"220 "), greeting)
        reply = yield session.command(b"EHLO idle.test")
        self.assertTrue(reply.startswith(b"250"), reply)
        return session

    @defer.inlineCallbacks
    def finish(self, busy, message: bytes) -> defer.Deferred:
        """
        Send the rest of the message and C{.}: it is accepted.

        @return: a L{Deferred} firing with its queue id.
        """
        reply = yield busy.command(message[len(message) // 2 :] + b".")
        self.assertTrue(reply.startswith(b"250 "), reply)
        return _QUEUED_AS.search(reply).group(1).decode("ascii")

    @defer.inlineCallbacks
    def assertRefusesNewClients(self) -> defer.Deferred:
        """
        A new client is refused (its connection, or with C{421}) soon;
        never greeted, never left waiting.
        """
        deadline = time.monotonic() + 3
        while True:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5)
            try:
                probe = yield connectProtocol(endpoint, _Session())
            except error.ConnectionRefusedError:
                return
            try:
                greeting = yield probe.nextReply(0.5)
            except Exception as e:
                greeting = repr(e)
            probe.transport.abortConnection()
            if isinstance(greeting, bytes):
                self.assertTrue(greeting.startswith(b"421 "), greeting)
                return
            self.assertLess(time.monotonic(), deadline, f"a new client was neither refused nor answered ({greeting})")

    @defer.inlineCallbacks
    def test_sigtermDrains(self):
        """
        With C{--shutdown-grace 10s}: SIGTERM to the parent while a session
        on worker 1 is in the middle of DATA, and one on worker 2 is idle.
        The idle one is told C{421 4.3.2} at once; a new client is
        refused; the busy one finishes its message (C{250}), and its next
        command is told C{421}.  Then every process ends, each worker with
        status 0, well within the grace, and the message is not lost.
        """
        smartHost = recordingSmartHost()
        relay = yield self.startWorkers(self.listenSmartHost(smartHost), "--shutdown-grace", "10s")
        busy, message = yield self.throughWorker(1, self.openBusy, "term-1")
        idle = yield self.throughWorker(2, self.openIdle)
        workers = workerProcesses(self.spool)

        stopping = time.monotonic()
        relay.process.signalProcess("TERM")
        reply = yield idle.nextReply()
        self.assertTrue(reply.startswith(b"421 4.3.2 " + HOSTNAME.encode("ascii")), reply)
        yield idle.whenClosed()
        yield self.assertRefusesNewClients()
        self.assertTrue(relay.running)

        queueID = yield self.finish(busy, message)
        reply = yield busy.command(b"NOOP")
        self.assertTrue(reply.startswith(b"421 4.3.2 "), reply)
        yield busy.whenClosed()

        yield relay.whenEnded(10)
        self.assertLess(time.monotonic() - stopping, 10)
        self.assertTrue(relay.stoppedCleanly, relay.text())
        self.assertEqual([pid for pid in workers.values() if _processState(pid) not in (None, b"Z")], [])
        for number in (1, 2):
            self.assertEqual(len(relay.logLines(f"mailrelay: worker {number} stopped (status 0)")), 1, relay.text())
        self.assertEqual(relay.logLines("did not stop in time"), [])
        self.assertEqual(relay.logLines("starting it again"), [])
        self.assertNoTraceback(relay)
        # Delivered while the workers drained, or kept for the next run.
        self.assertTrue(arrivals(smartHost)["term-1"] == 1 or queueID in _queueIDs(self.spool).values(), relay.text())
        self.assertEqual(spoolListing(self.spool)["tmp"], [])

    @defer.inlineCallbacks
    def test_parentKilled(self):
        """
        SIGKILL of the parent alone: its workers stop by themselves within
        a few seconds.  Worker 1 lets the transaction it was in finish
        (C{250}: the message is durable, though nobody was told); worker 2
        tells its idle session C{421}.  Nothing listens any more.  The next
        run on the spool delivers the message, once.
        """
        smartHost = recordingSmartHost()
        smartHostPort = self.listenSmartHost(smartHost)
        relay = yield self.startWorkers(smartHostPort)
        busy, message = yield self.throughWorker(1, self.openBusy, "orphan-1")
        idle = yield self.throughWorker(2, self.openIdle)
        workers = workerProcesses(self.spool)

        yield relay.kill()
        queueID = yield self.finish(busy, message)
        reply = yield idle.nextReply()
        self.assertTrue(reply.startswith(b"421 4.3.2 "), reply)
        yield waitUntil(
            lambda: all(_processState(pid) in (None, b"Z") for pid in workers.values()),
            5,
            lambda: f"the workers {workers} to end: {workerProcesses(self.spool)}",
        )
        yield self.assertRefusesNewClients()
        self.assertEqual(list(_queueIDs(self.spool).values()), [queueID])

        second = yield self.startWorkers(smartHostPort)
        yield waitUntil(lambda: not _queueIDs(self.spool), SOON, lambda: f"the message delivered:\n{second.text()}")
        self.assertEqual(arrivals(smartHost), {"orphan-1": 1})
        yield second.terminate()
        self.assertTrue(second.stoppedCleanly, second.text())
