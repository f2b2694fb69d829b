# -*- test-case-name: mailproto.test.test_sink_workers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
A worker process of C{mailproto sink --workers N}, started by the sink
(L{mailproto._commandline._sinkworkers}) as C{python -m
mailproto._commandline._sinkworker SPEC}.

SPEC (JSON) gives the sink's option values, which the worker uses as the
one-process sink does (the same store, printer, size limit, LMTP and
STARTTLS certificate), the worker's number, and the listeners: each
endpoint description with the file descriptor and address family of the
socket the sink bound for it.  The worker makes each endpoint from its
description as usual, but where the endpoint would listen it adopts the
sink's socket instead (L{AdoptingReactor}), so an C{ssl:} listener gets
its TLS as it would in one process.

The worker's file descriptors:

  - 0: a pipe from the sink, on which nothing is written: when it closes,
    the sink is gone, and the worker stops (L{ParentWatch}).
  - 1 and 2: the worker's own output and its log lines (warnings and
    errors), which the sink passes on to its stderr, a line at a time.
  - L{RECORDS_FD}: the records (L{RecordChannel}): what the printer
    writes for each message, in frames; every message handled ends a
    record, an empty one when nothing is printed.
  - L{COUNTER_FD}, when messages are printed: the file of the message
    counter the workers share (L{SharedCounter}).
  - from L{FIRST_LISTENER_FD} on: the listening sockets.

SIGTERM stops the worker: it stops accepting, drops the sessions it has,
and exits.  It ignores SIGINT, which a terminal sends the whole process
group: the sink stops its workers itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import sys

from twisted.internet import main as _main
from twisted.internet import tcp, unix
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from mailproto._commandline._sink import Sink

__all__ = [
    "COUNTER_FD",
    "FINAL",
    "FIRST_LISTENER_FD",
    "HEADER",
    "RECORDS_FD",
    "AdoptingReactor",
    "ParentWatch",
    "RecordChannel",
    "SharedCounter",
    "SinkWorker",
    "WorkerSink",
    "main",
]

#: The worker's file descriptor for its records.
RECORDS_FD = 3

#: The worker's file descriptor for the shared message counter.
COUNTER_FD = 4

#: The worker's file descriptor for the first listening socket.
FIRST_LISTENER_FD = 5

#: A frame's header: the length of its payload, with L{FINAL} set in the
#: last frame of a record.
HEADER = struct.Struct("!I")

#: The flag of a record's last frame.
FINAL = 1 << 31

#: How much of a record a worker gathers before sending it on.
FRAME_SIZE = 65536


class RecordChannel:
    """
    The text stream a worker's printer writes to.  What is written goes to
    the sink in frames, encoded as UTF-8; L{endRecord} sends the record's
    last frame.  The sink writes a record to its stdout only once it has
    the whole of it, so records of different workers never mix.

    A frame is L{HEADER} (its payload's length, L{FINAL} set in the last
    frame of a record) and the payload.  Frames are written with blocking
    writes: a reader of the sink's stdout that falls behind slows the
    workers down, as it slows the one-process sink.

    @ivar broken: whether the sink has stopped reading (its end of the pipe
        closed); nothing more is sent.
    """

    def __init__(self, fd: int, whenBroken=lambda: None, frameSize: int = FRAME_SIZE) -> None:
        """
        @param fd: the file descriptor to write to.
        @param whenBroken: called once, when a write finds the sink gone.
        @param frameSize: how many octets of a record are gathered before
            a frame is sent.
        """
        self._fd = fd
        self._whenBroken = whenBroken
        self._frameSize = frameSize
        self._pending = bytearray()
        self.broken = False

    def write(self, text: str) -> None:
        """
        Add text to the current record.
        """
        self._pending += text.encode("utf-8", "surrogatepass")
        if len(self._pending) >= self._frameSize:
            self._send(0)

    def flush(self) -> None:
        """
        Nothing: a record leaves when it ends (L{endRecord}), or in frames
        while it is long.
        """

    def endRecord(self) -> None:
        """
        End the current record (which may be empty).
        """
        self._send(FINAL)

    def _send(self, flags: int) -> None:
        payload, self._pending = self._pending, bytearray()
        if self.broken:
            return
        data = memoryview(HEADER.pack(len(payload) | flags) + payload)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            self.broken = True
            self._whenBroken()


class SharedCounter:
    """
    The message counter the workers share, so that the numbers the
    printers show (C{message 7 from ...}) count the sink's messages, not
    one worker's.  It is an 8-octet number in a file that every worker
    has open, changed under a POSIX record lock (C{lockf}): such a lock
    belongs to the process, so it keeps out the other workers even though
    they share the open file (a C{flock} lock would not).
    """

    def __init__(self, fd: int) -> None:
        """
        @param fd: the counter's file, open for reading and writing.
        """
        self._fd = fd

    def next(self) -> int:
        """
        @return: the next number, from 1.
        """
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            stored = os.pread(self._fd, 8, 0)
            number = (int.from_bytes(stored, "big") if len(stored) == 8 else 0) + 1
            os.pwrite(self._fd, number.to_bytes(8, "big"), 0)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return number


class WorkerSink(Sink):
    """
    A worker's L{Sink}: each message it handles ends a record on the
    channel, and printed messages take their numbers from the shared
    counter.
    """

    def __init__(self, store, printer, channel: RecordChannel, counter: SharedCounter | None) -> None:
        """
        @param store: see L{Sink.store}.
        @param printer: see L{Sink.printer}; it writes to C{channel}.
        @param channel: the channel to the sink.
        @param counter: the shared counter, or C{None} when nothing is
            printed.
        """
        Sink.__init__(self, store, printer)
        self.channel = channel
        self.counter = counter

    def handled(self, message) -> None:
        """
        Print a message as one record.
        """
        if self.printer is not None and self.counter is not None:
            message.number = self.counter.next()
        try:
            Sink.handled(self, message)
        finally:
            self.channel.endRecord()


class _SharedUNIXPort(unix.Port):
    """
    A UNIX listening socket adopted from the sink, which owns its path:
    stopping this port leaves the path alone (a plain port would remove
    it, under the sink and the other workers).
    """

    def connectionLost(self, reason) -> None:
        tcp.Port.connectionLost(self, reason)


class AdoptingReactor:
    """
    What a worker gives C{serverFromString} for one of the sink's
    listeners: where the endpoint would listen (TCP, TLS, a UNIX socket,
    or a socket handed over), the worker adopts the socket the sink bound,
    with TLS added for C{ssl:} as C{listenSSL} adds it.
    """

    def __init__(self, reactor, fileno: int, family: int) -> None:
        """
        @param reactor: the real reactor.
        @param fileno: the listening socket's file descriptor; it is closed
            once adopted (the port keeps a copy).
        @param family: its address family.
        """
        self._reactor = reactor
        self._fileno = fileno
        self._family = family

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return self._adopt(factory)

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        return self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        return self._adopt(factory, mode)

    def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
        return self._adopt(factory)

    def _adopt(self, factory, mode: int | None = None):
        if self._family == socket.AF_UNIX:
            port = _SharedUNIXPort._fromListeningDescriptor(self._reactor, self._fileno, factory)
            if mode is not None:
                port.mode = mode
            port.startListening()
        else:
            port = self._reactor.adoptStreamPort(self._fileno, self._family, factory)
        os.close(self._fileno)
        return port


@implementer(IReadDescriptor)
class ParentWatch:
    """
    Watch a pipe from the sink that it never writes to: its end means the
    sink is gone.
    """

    def __init__(self, fd: int, gone) -> None:
        """
        @param fd: the pipe's reading end.
        @param gone: called when the pipe has closed.
        """
        self._fd = fd
        self._gone = gone

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "mailproto sink worker"

    def doRead(self):
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return _main.CONNECTION_LOST
        return None if data else _main.CONNECTION_DONE

    def connectionLost(self, reason) -> None:
        self._gone()


class SinkWorker:
    """
    One worker: a L{WorkerSink} serving clients on the sink's sockets.

    @ivar status: the exit status: C{0}, or C{1} if it could not start.
    """

    def __init__(self, spec: dict, reactor, stderr=None) -> None:
        """
        @param spec: the SPEC (see the module's description).
        @param reactor: the reactor.
        @param stderr: where to say why it could not start.
        """
        self.spec = spec
        self.reactor = reactor
        self.stderr = sys.stderr if stderr is None else stderr
        self.status = 0
        self.sink = None

    def start(self) -> None:
        """
        Watch the sink, make the sink's outputs and adopt its listeners;
        if that fails, say why and stop.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.reactor.addReader(ParentWatch(self.spec.get("parent", 0), self.stop))
        try:
            self._build()
        except Exception as e:
            self.stderr.write(f"cannot start: {e}\n")
            self.stderr.flush()
            self.status = 1
            self.stop()

    def _build(self) -> None:
        from mailproto._commandline._cli import SinkOptions, loadTLS

        spec, reactor = self.spec, self.reactor
        options = SinkOptions()
        options.update(spec["options"])
        if options["tls-certificate"]:
            options["contextFactory"] = loadTLS(options["tls-certificate"], options["tls-key"])
        channel = RecordChannel(spec["records"], self.stop)
        counter = SharedCounter(spec["counter"]) if spec.get("counter") is not None else None
        self.sink = WorkerSink(options._openStore(), options._printer(channel), channel, counter)
        reactor.addSystemEventTrigger("before", "shutdown", self.sink.close)
        factory = options._makeFactory(self.sink)
        for description, fileno, family in spec["listeners"]:
            serverFromString(AdoptingReactor(reactor, fileno, family), description).listen(factory)

    def stop(self) -> None:
        """
        Stop the reactor, unless it is stopping already.
        """
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


def main(argv: list[str]) -> int:
    """
    Run a worker: C{argv[1]} is its SPEC.

    @return: the exit status.
    """
    from twisted.internet import reactor

    from mailproto._commandline._cli import _logWarningsTo

    _logWarningsTo(sys.stderr)
    worker = SinkWorker(json.loads(argv[1]), reactor)
    reactor.callWhenRunning(worker.start)
    reactor.run()
    return worker.status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
