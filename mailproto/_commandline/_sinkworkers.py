# -*- test-case-name: mailproto.test.test_sink_workers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{mailproto sink --workers N}: the sink on several cores, the sink's side.

The sink binds every listener itself (so that an address in use is one
error line, and port 0 becomes one port for all), stops accepting on
them, and starts N worker processes (L{mailproto._commandline._sinkworker})
that accept clients on the same sockets, handed to them as file
descriptors, and handle the mail as the one-process sink would.

What the workers print reaches the sink's stdout a whole record (one
message's output) at a time: each worker sends its records in frames on a
pipe of its own (L{RecordReader}), and the sink writes a record only once
it has all of it (L{SinkOutput}); a record that a dying worker left
unfinished is dropped (its client was not yet told the message was
accepted: a worker prints a message before it replies).  The workers
number the printed messages with a counter they share.  What the workers write on their stdout and stderr
(log lines) goes to the sink's stderr, a whole line at a time, with the
worker named.

A worker that ends by itself is started again after L{RESTART_DELAY}
seconds, with one line on stderr.  When the sink stops (SIGTERM,
SIGINT), it stops listening and sends its workers SIGTERM, killing any
still there after L{STOP_TIMEOUT} seconds.  A worker whose sink is gone
(even SIGKILLed) sees a pipe from it close, and stops.

A worker's states, as the sink sees them: I{running} (spawned),
I{stopping} (sent SIGTERM) and I{ended}; an ended worker the sink did not
stop is started again.
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import sys
import tempfile

from twisted.internet import defer, protocol
from twisted.logger import Logger

from mailproto._commandline._sink import SPOOL_MEMORY_LIMIT, Sink, SinkServer
from mailproto._childprocess import ChildProcess
from mailproto._cores import availableCores
from mailproto._commandline._sinkworker import COUNTER_FD, FINAL, FIRST_LISTENER_FD, HEADER, RECORDS_FD

__all__ = [
    "RESTART_DELAY",
    "STOP_TIMEOUT",
    "RecordReader",
    "SinkOutput",
    "SinkWorkers",
    "parseWorkerCount",
    "serveWithWorkers",
]

_log = Logger()

#: How long after an unexpected end a worker is started again, in seconds.
RESTART_DELAY = 1.0

#: How long the workers may take to stop before they are killed.
STOP_TIMEOUT = 5.0

#: The longest line of a worker's stderr passed on whole.
_LINE_LIMIT = 65536

#: How much of a spooled record is copied to stdout at a time.
_READ_SIZE = 65536

#: The sink's options that the workers do not take: the sink listens, the
#: workers make their own TLS context from the certificate's file.
_NOT_FOR_WORKERS = ("listen", "contextFactory", "workers")


def parseWorkerCount(value: str) -> int:
    """
    The value of C{--workers}: a whole number from 1, or C{auto} for
    L{availableCores <mailproto._cores.availableCores>}.

    @raise ValueError: if it is neither.
    """
    if value.strip().lower() == "auto":
        return availableCores()
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"not a whole number or auto: {value!r}") from None
    if count < 1:
        raise ValueError(f"not a number of workers: {value!r} (1 or more, or auto)")
    return count


class SinkOutput:
    """
    The sink's stdout, written a whole record at a time.

    @ivar received: how many messages the workers handled (one record
        each, empty when nothing is printed).
    """

    def __init__(self, out) -> None:
        """
        @param out: the text stream, such as C{sys.stdout}.
        """
        self.out = out
        self.received = 0

    def write(self, record) -> None:
        """
        Write a record.

        @param record: its text, encoded as UTF-8: C{bytes}, or a binary
            file at its start, which is closed once written.
        """
        self.received += 1
        try:
            if isinstance(record, bytes):
                if record:
                    self.out.write(record.decode("utf-8", "surrogatepass"))
                return
            decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
            while True:
                chunk = record.read(_READ_SIZE)
                text = decoder.decode(chunk, final=not chunk)
                if text:
                    self.out.write(text)
                if not chunk:
                    break
        except Exception:
            _log.failure("Could not print message {number}", number=self.received)
        finally:
            if not isinstance(record, bytes):
                record.close()

    def flush(self) -> None:
        """
        Flush the stream, once the records at hand are written.
        """
        try:
            self.out.flush()
        except Exception:
            _log.failure("Could not flush the output")

    def close(self) -> None:
        """
        Nothing to close: the stream is not the sink's.
        """


class RecordReader:
    """
    Take a worker's records out of the frames it sends (see
    L{RecordChannel <mailproto._commandline._sinkworker.RecordChannel>}).
    A record in one frame is handed on as C{bytes}; a longer one is kept
    in a spool file (in memory while small) until its last frame.
    """

    def __init__(self, deliver) -> None:
        """
        @param deliver: called with each whole record, C{bytes} or a
            binary file at its start (see L{SinkOutput.write}).
        """
        self._deliver = deliver
        self._buffer = bytearray()
        self._spool = None

    def feed(self, data: bytes) -> None:
        """
        Take the next octets from the worker's pipe.
        """
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            (word,) = HEADER.unpack_from(buffer, offset)
            start = offset + HEADER.size
            end = start + (word & ~FINAL)
            if end > len(buffer):
                break
            self._take(bytes(buffer[start:end]), bool(word & FINAL))
            offset = end
        del buffer[:offset]

    def _take(self, payload: bytes, final: bool) -> None:
        if self._spool is None:
            if final:
                self._deliver(payload)
                return
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_LIMIT)
        self._spool.write(payload)
        if final:
            spool, self._spool = self._spool, None
            spool.seek(0)
            self._deliver(spool)

    def discard(self) -> bool:
        """
        Drop an unfinished record (its worker ended).

        @return: whether there was one.
        """
        unfinished = self._spool is not None or bool(self._buffer)
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        del self._buffer[:]
        return unfinished


class _WorkerProcess(protocol.ProcessProtocol):
    """
    A worker process's records, output lines and end.
    """

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        output = worker.pool.output
        self.records = RecordReader(output.write)
        self._lines = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == RECORDS_FD:
            self.records.feed(data)
            self.worker.pool.output.flush()
            return
        if childFD not in self._lines:
            return
        *lines, rest = (self._lines[childFD] + data).split(b"\n")
        if len(rest) > _LINE_LIMIT:
            lines.append(rest)
            rest = b""
        self._lines[childFD] = rest
        for line in lines:
            self.worker.said(line)

    def processEnded(self, reason) -> None:
        for rest in self._lines.values():
            if rest:
                self.worker.said(rest)
        self.records.discard()
        self.worker.ended(reason)


class _Worker(ChildProcess):
    """
    One worker process, as the sink knows it (its states: L{ChildProcess}).

    @ivar pid: the process id of its last process.
    """

    pid: int | None = None

    def start(self) -> None:
        """
        Start the process, with the listening sockets (and the counter)
        as file descriptors.
        """
        pool = self.pool
        childFDs = {0: "w", 1: "r", 2: "r", RECORDS_FD: "r"}
        spec = {"worker": self.number, "options": pool.options, "records": RECORDS_FD, "listeners": []}
        if pool.counter is not None:
            childFDs[COUNTER_FD] = pool.counter.fileno()
            spec["counter"] = COUNTER_FD
        for index, (description, port) in enumerate(pool.ports):
            childFDs[FIRST_LISTENER_FD + index] = port.fileno()
            spec["listeners"].append([description, FIRST_LISTENER_FD + index, int(port.addressFamily)])
        transport = pool.reactor.spawnProcess(
            _WorkerProcess(self),
            sys.executable,
            [sys.executable, "-m", "mailproto._commandline._sinkworker", json.dumps(spec)],
            env=_workerEnvironment(),
            childFDs=childFDs,
        )
        self.pid = transport.pid
        self.spawned(transport)

    def said(self, line: bytes) -> None:
        """
        Pass on a line the worker wrote on its stdout or stderr.
        """
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.strip():
            self.pool.say(f"worker {self.number}: {text}")


def _workerEnvironment() -> dict:
    """
    @return: the environment of a worker: the sink's, with the directory
        this C{mailproto} package was imported from first on C{PYTHONPATH}
        (unless it is a site directory, found anyway), so that the worker
        runs the same code as the sink.
    """
    import site

    import mailproto

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))
    sites = {os.path.abspath(path) for path in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in sites:
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


class _Unused(protocol.Factory):
    """
    The factory of the sink's own listening ports, which never accept: a
    client they did accept would be closed at once.
    """

    noisy = False

    def buildProtocol(self, addr):
        return None


class SinkWorkers:
    """
    The sink's listeners and the workers that accept on them.

    @ivar ports: C{(description, port)} of every listener, once bound.
    @ivar workers: the workers.
    @ivar output: the L{SinkOutput} the records go to.
    @ivar counter: the file of the shared message counter, or C{None}.
    @ivar restarts: how many times a worker was started again.
    """

    def __init__(
        self, reactor, count: int, descriptions, options: dict, output: SinkOutput, say, numbered: bool
    ) -> None:
        """
        @param reactor: the reactor.
        @param count: how many workers.
        @param descriptions: the endpoint descriptions to listen on.
        @param options: the option values the workers take (JSON).
        @param output: where the records go.
        @param say: says a line on stderr.
        @param numbered: whether messages are printed, and so numbered.
        """
        self.reactor = reactor
        self.options = options
        self.output = output
        self.say = say
        self.counter = tempfile.TemporaryFile() if numbered else None
        self.server = SinkServer(reactor, _Unused(), descriptions)
        self.ports: list = []
        self.workers = [_Worker(self, number) for number in range(1, count + 1)]
        self.restarts = 0
        self.running = False
        self._restarts: dict[int, object] = {}

    def start(self) -> defer.Deferred:
        """
        Bind every listener, and stop accepting on it.

        @return: a C{Deferred} firing with L{ports}, or failing as
            L{SinkServer.start} does.
        """

        def bound(ports):
            for description, port in ports:
                port.stopReading()
            self.ports = list(ports)
            return ports

        return self.server.start().addCallback(bound)

    def startWorkers(self) -> None:
        """
        Start every worker.
        """
        self.running = True
        for worker in self.workers:
            worker.start()

    def workerEnded(self, worker: _Worker, expected: bool, why: str) -> None:
        """
        A worker ended: unless it was asked to, start it again soon.
        """
        if expected or not self.running:
            return
        how = f"pid {worker.pid}, {why}"
        self._restarts[worker.number] = self.reactor.callLater(RESTART_DELAY, self._restart, worker, how)

    def _restart(self, worker: _Worker, how: str) -> None:
        # Said now, not when the worker ended: when everything is told to
        # stop at once (a signal to the process group), the sink stops
        # before this, and says nothing of the workers it did not stop.
        self._restarts.pop(worker.number, None)
        if not self.running:
            return
        self.restarts += 1
        try:
            worker.start()
        except OSError as e:
            self.say(f"worker {worker.number} ended ({how}); cannot start it again yet: {e}")
            self._restarts[worker.number] = self.reactor.callLater(RESTART_DELAY, self._restart, worker, how)
            return
        self.say(f"worker {worker.number} ended ({how}); started again as pid {worker.pid}")

    def stop(self) -> defer.Deferred:
        """
        Stop listening, stop every worker (killing those still there after
        L{STOP_TIMEOUT} seconds) and close the counter.

        @return: a C{Deferred} that fires when they have all ended.
        """
        self.running = False
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        self.ports = []
        listening = self.server.stop()
        stopped = defer.gatherResults([worker.stop() for worker in self.workers], consumeErrors=True)
        killer = self.reactor.callLater(STOP_TIMEOUT, self._kill)

        def over(result):
            if killer.active():
                killer.cancel()
            if self.counter is not None:
                self.counter.close()
                self.counter = None
            return listening

        return stopped.addBoth(over)

    def _kill(self) -> None:
        for worker in self.workers:
            if worker.state != "ended":
                self.say(f"worker {worker.number} did not stop in time; killed")
                worker.signal(signal.SIGKILL)


def _workerOptions(options) -> dict:
    """
    @return: the values of the sink's options that the workers take.
    """
    return {name: value for name, value in options.items() if name not in _NOT_FOR_WORKERS}


def serveWithWorkers(options, reactor, say, stdout, store, printer) -> int:
    """
    Run C{mailproto sink} with C{options["workers"]} workers, until the
    reactor stops.

    @param options: the parsed L{SinkOptions
        <mailproto._commandline._cli.SinkOptions>}.
    @param reactor: the reactor to run.
    @param say: says a line on stderr.
    @param stdout: the text stream the messages are printed on.
    @param store: the store the sink opened (and so checked), or C{None}.
    @param printer: the printer the sink would use, or C{None}.
    @return: C{0} after a clean stop, C{1} if the sink could not start.
    """
    output = SinkOutput(stdout)
    count = options["workers"]
    pool = SinkWorkers(reactor, count, options["listen"], _workerOptions(options), output, say, printer is not None)
    # Only to say what the workers' servers offer.
    factory = options._makeFactory(Sink())

    def started(ports) -> None:
        options._sayStarted(say, ports, store, printer, factory)
        pool.startWorkers()
        say(f"started {count} worker processes")

    return options._serve(reactor, pool, output, say, started)
