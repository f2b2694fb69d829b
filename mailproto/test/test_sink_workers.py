# -*- test-case-name: mailproto.test.test_sink_workers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for C{mailproto sink --workers N} (L{mailproto._commandline._sinkworkers}
and L{mailproto._commandline._sinkworker}).

  - The pieces in one process: the record frames (a channel on a real
    pipe, the reader fed whole and octet by octet), the output, the
    shared counter (across real processes), the option's values.
  - The real command as a child process, on loopback: many clients at
    once with smtplib in threads, every message accounted for once and
    whole, both workers serving; a worker killed under load and started
    again; clients that stall or drop in the middle of DATA; the sink
    killed (its workers go) or stopped (status 0, nothing left behind);
    STARTTLS, the size limit and LMTP on a UNIX socket in the workers.
  - The "On every core" commands of C{docs/sink.rst}, run as pasted.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

import mailproto
from mailproto._commandline._cli import MailprotoOptions, runCommand
from mailproto._commandline._sinkworker import FINAL, HEADER, RecordChannel, SharedCounter
from mailproto._commandline._sinkworkers import RecordReader, SinkOutput, parseWorkerCount
from mailproto._cores import availableCores
from mailproto.test.test_docs import DOCS
from mailproto.test.test_docshell import _Sink as DocShellSink, block

# The directory that holds the mailproto package being tested, for the
# child processes.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))

#: Seconds a sink may take to start, clients to finish, a sink to stop.
WAIT = 20

_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d"

#: A summary line of a message of these tests; the Subject is its name.
_SUMMARY = re.compile(
    _TIME + r" \S+ \[127\.0\.0\.1\] from=<s@example\.com> to=<r@example\.com> size=\d+"
    r"(?: stored=(?P<stored>\S+))? subject=(?P<subject>\S+)"
)


def _environment() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))


def _message(name: str, size: int = 0) -> bytes:
    """
    @return: a message whose Subject is C{name}, with lines naming it up
        to about C{size} octets, some of them starting with a dot, and
        8-bit text.
    """
    head = f"From: s@example.com\r\nTo: r@example.com\r\nSubject: {name}\r\n\r\n".encode()
    body = [f"{name} Grüße ☃\r\n".encode(), b".a line with a dot\r\n"]
    line = 0
    while sum(map(len, body)) < size:
        line += 1
        body.append(f"{'.' if line % 7 == 0 else ''}{name} line {line:05d} of some text to make it long\r\n".encode())
    return head + b"".join(body)


def _processes() -> dict[int, tuple[int, str]]:
    """
    @return: the parent and state of every process, by pid (Linux /proc).
    """
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry)] = (int(fields[1]), fields[0])
    return found


def _children(pid: int) -> set[int]:
    """
    @return: the living (not zombie) child processes of C{pid}.
    """
    return {child for child, (parent, state) in _processes().items() if parent == pid and state != "Z"}


def _alive(pid: int) -> bool:
    state = _processes().get(pid)
    return state is not None and state[1] != "Z"


def _waitUntil(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _send(port: int, message: bytes, attempts: int = 1):
    """
    Send a message on a connection of its own.

    @return: how many attempts failed before it was accepted.
    """
    for failed in range(attempts):
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10) as client:
                refused = client.sendmail("s@example.com", ["r@example.com"], message)
            assert refused == {}, refused
            return failed
        except (smtplib.SMTPException, OSError):
            if failed == attempts - 1:
                raise
            time.sleep(0.05)


def _sendAll(port: int, messages, clients: int = 10, attempts: int = 1) -> list[int]:
    """
    Send C{messages} from C{clients} threads, each message on a connection
    of its own.

    @return: the failed attempts of each message.
    """
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda message: _send(port, message, attempts), messages))


class _Sink:
    """
    A C{mailproto sink} child process, its output collected by threads.
    """

    def __init__(self, case: SynchronousTestCase, *argv: str, workers: int = 2) -> None:
        self.case = case
        argv = [sys.executable, "-m", "mailproto", "sink", "--workers", str(workers), *argv]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_environment()
        )
        self.out = bytearray()
        self.err = bytearray()
        self._readers = [self._read(self.process.stdout, self.out), self._read(self.process.stderr, self.err)]
        case.addCleanup(self._kill)
        started = b"started %d worker processes\n" % workers
        _waitUntil(lambda: started in self.err or self.process.poll() is not None, "the sink to start")
        self.case.assertIsNone(self.process.poll(), self.err.decode())
        self.pids = _waitUntil(lambda: self.workerPids(workers), "the workers")

    def workerPids(self, count: int) -> set[int] | None:
        """
        @return: the pids of the sink's workers, if there are C{count}.
        """
        pids = _children(self.process.pid)
        return pids if len(pids) == count else None

    @staticmethod
    def _read(pipe, into: bytearray) -> threading.Thread:
        def read():
            for chunk in iter(lambda: os.read(pipe.fileno(), 65536), b""):
                into.extend(chunk)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def _kill(self) -> None:
        pids = _children(self.process.pid) if self.process.poll() is None else set()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT)
        for thread in self._readers:
            thread.join(WAIT)
        self.process.stdout.close()
        self.process.stderr.close()

    @property
    def port(self) -> int:
        [port] = re.findall(r"listening on 127\.0\.0\.1 port (\d+) ", self.err.decode())
        return int(port)

    def stop(self) -> tuple[str, list[str]]:
        """
        Stop the sink with SIGTERM: it exits 0, with no traceback, its
        workers gone, its port closed.

        @return: its stdout and its stderr lines.
        """
        workers = _children(self.process.pid)
        port = self.port if b" port " in self.err else None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(WAIT)
        for thread in self._readers:
            thread.join(WAIT)
        err = self.err.decode()
        self.case.assertEqual(self.process.returncode, 0, err)
        self.case.assertNotIn("Traceback", err)
        self.case.assertEqual([pid for pid in workers if _alive(pid)], [])
        if port is not None:
            self.case.assertRaises(ConnectionRefusedError, socket.create_connection, ("127.0.0.1", port), 5)
        return self.out.decode(), err.splitlines()


def _closeQuietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _readUntil(client: socket.socket, marker: bytes) -> bytes:
    """
    @return: what a client was sent, up to and including C{marker}.
    """
    data = b""
    while marker not in data:
        chunk = client.recv(4096)
        if not chunk:
            raise AssertionError(f"closed before {marker!r}: {data!r}")
        data += chunk
    return data


def _subjects(out: str) -> list[str]:
    """
    @return: the Subjects of the summary lines C{out}, sorted; each line
        must be one.
    """
    return sorted(_SUMMARY.fullmatch(line).group("subject") for line in out.splitlines())


def _storedBy(path: str) -> int:
    """
    @return: the pid in the name of a Maildir file the sink stored.
    """
    return int(re.search(r"P(\d+)Q", os.path.basename(path)).group(1))


class RecordTests(SynchronousTestCase):
    """
    The records: framed by a worker's L{RecordChannel}, taken out by the
    sink's L{RecordReader}, written by L{SinkOutput}.
    """

    def pipe(self):
        fds = os.pipe()
        for fd in fds:
            self.addCleanup(lambda fd=fd: _closeQuietly(fd))
        return fds

    def test_roundTrip(self):
        """
        Records written in pieces, longer than a frame, with characters cut
        across frames, and empty ones, come out whole and in order, fed at
        once or octet by octet.
        """
        reading, writing = self.pipe()
        channel = RecordChannel(writing, frameSize=10)
        records = ["one line\n", "", "Grüße ☃ " * 20 + "\n", "x" * 9]
        for record in records:
            for piece in re.findall(r".{1,7}", record, re.S):
                channel.write(piece)
            channel.endRecord()
        data = os.read(reading, 1 << 20)
        self.assertGreater(data.count(b"\x00\x00\x00\x0a"), 4, "long records were sent in frames")
        for feed in ([data], [data[i : i + 1] for i in range(len(data))]):
            output = SinkOutput(io.StringIO())
            reader = RecordReader(output.write)
            for part in feed:
                reader.feed(part)
            self.assertEqual(output.out.getvalue(), "".join(records))
            self.assertEqual(output.received, len(records))
            self.assertFalse(reader.discard())

    def test_unfinished(self):
        """
        A record whose last frame never came is dropped, not written.
        """
        output = SinkOutput(io.StringIO())
        reader = RecordReader(output.write)
        reader.feed(HEADER.pack(FINAL | 5) + b"whole" + HEADER.pack(4) + b"half" + HEADER.pack(FINAL | 3) + b"h")
        self.assertTrue(reader.discard())
        self.assertEqual((output.out.getvalue(), output.received), ("whole", 1))

    def test_brokenPipe(self):
        """
        When the sink has gone, the channel says so once, and sends nothing
        more.
        """
        reading, writing = self.pipe()
        os.close(reading)
        gone = []
        channel = RecordChannel(writing, lambda: gone.append(True))
        channel.write("text")
        channel.endRecord()
        channel.endRecord()
        self.assertEqual((gone, channel.broken), ([True], True))

    def test_outputFails(self):
        """
        A stdout that cannot be written to is logged, and the record is
        still counted.
        """

        class Closed(io.StringIO):
            def write(self, text):
                raise BrokenPipeError(32, "Broken pipe")

        output = SinkOutput(Closed())
        with capturedLogs() as events:
            output.write(b"a record")
        self.assertEqual(output.received, 1)
        self.assertEqual([event["log_level"] for event in events], [LogLevel.critical])
        self.assertEqual(len(self.flushLoggedErrors(BrokenPipeError)), 1)


class SharedCounterTests(SynchronousTestCase):
    """
    L{SharedCounter} counts for several processes.
    """

    def test_processes(self):
        """
        Three processes sharing the counter's open file, taking 3000
        numbers each at the same time, get 1 to 9000, each number once.
        """
        counter = tempfile.TemporaryFile()
        self.addCleanup(counter.close)
        code = (
            "import sys; from mailproto._commandline._sinkworker import SharedCounter; "
            f"c = SharedCounter({counter.fileno()}); print('ready', flush=True); sys.stdin.read(); "
            "print(' '.join(str(c.next()) for i in range(3000)))"
        )
        children = [
            subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_environment(),
                pass_fds=[counter.fileno()],
            )
            for i in range(3)
        ]
        for child in children:
            self.assertEqual(child.stdout.readline(), b"ready\n")
        for child in children:
            child.stdin.close()
        numbers = []
        for child in children:
            numbers += [int(n) for n in child.stdout.read().split()]
            child.stdout.close()
            self.assertEqual(child.wait(WAIT), 0)
        self.assertEqual(sorted(numbers), list(range(1, 9001)))
        self.assertEqual(SharedCounter(counter.fileno()).next(), 9001)


class OptionTests(SynchronousTestCase):
    """
    The C{--workers} option.
    """

    def parse(self, *argv):
        options = MailprotoOptions()
        options.parseOptions(["sink", *argv])
        return options.subOptions

    def test_values(self):
        """
        A whole number from 1, or C{auto} for the CPUs this process may run
        on; 1 by default.
        """
        self.assertEqual(self.parse()["workers"], 1)
        self.assertEqual(self.parse("--workers", "3")["workers"], 3)
        self.assertEqual(self.parse("--workers", "auto")["workers"], len(os.sched_getaffinity(0)))
        self.assertEqual(parseWorkerCount("AUTO"), availableCores())
        self.assertEqual(self.parse("--workers", "1", "--mbox", "m")["mbox"], "m")

    def test_errors(self):
        """
        Zero, negative numbers, other words and C{--mbox} with more than
        one worker are usage errors: one line, status 2.
        """
        cases = [
            (["--workers", "0"], "--workers: not a number of workers: '0' (1 or more, or auto)"),
            (["--workers", "-2"], "--workers: not a number of workers: '-2' (1 or more, or auto)"),
            (["--workers", "x"], "--workers: not a whole number or auto: 'x'"),
            (["--workers", "2", "--mbox", "m"], "--mbox cannot be used with more than one worker: "),
        ]
        for argv, message in cases:
            stdout, stderr = io.StringIO(), io.StringIO()
            self.assertEqual(runCommand(["sink", *argv], reactor=object(), stdout=stdout, stderr=stderr), 2, argv)
            self.assertTrue(stderr.getvalue().startswith(f"mailproto sink: error: {message}"), stderr.getvalue())
            self.assertEqual(stderr.getvalue().count("\n"), 1)
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_commandLine(self):
        """
        The command, run, says it in one line and exits 2.
        """
        argv = [sys.executable, "-m", "mailproto", "sink", "--workers", "0"]
        result = subprocess.run(argv, capture_output=True, env=_environment(), timeout=WAIT)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.count(b"\n"), 1, result.stderr)
        self.assertIn(b"--workers: not a number of workers: '0'", result.stderr)


class WorkersTests(SynchronousTestCase):
    """
    The real command with two workers, on loopback.
    """

    if not os.path.isdir("/proc/self"):
        skip = "needs /proc to find the worker processes"

    def setUp(self):
        self.where = os.path.abspath(self.mktemp())
        os.makedirs(self.where)

    def test_summaries(self):
        """
        200 messages from 10 clients at once are all accepted; each has
        one whole summary line; both workers stored some (their pids are
        in the Maildir names); stderr says where the sink listens once.
        """
        maildir = os.path.join(self.where, "mail")
        sink = _Sink(self, "--summary", "--port", "0", "--maildir", maildir)
        names = [f"m{i:03d}" for i in range(200)]
        _sendAll(sink.port, [_message(name) for name in names])
        out, err = sink.stop()
        lines = out.splitlines(True)
        self.assertEqual(len(lines), 200, out)
        matches = [_SUMMARY.fullmatch(line.rstrip("\n")) for line in lines]
        self.assertNotIn(None, matches, out)
        self.assertEqual(sorted(m.group("subject") for m in matches), names)
        self.assertEqual({_storedBy(m.group("stored")) for m in matches}, sink.pids)
        self.assertEqual(len(os.listdir(os.path.join(maildir, "new"))), 200)
        self.assertEqual(len([line for line in err if " listening on " in line]), 1)
        self.assertEqual(err[-1], "mailproto sink: stopped after 200 message(s)")

    def test_maildir(self):
        """
        With C{--maildir}, every message is stored once, byte for byte, and
        nothing is printed.
        """
        maildir = os.path.join(self.where, "mail")
        sink = _Sink(self, "--quiet", "--port", "0", "--maildir", maildir)
        messages = {f"m{i:02d}": _message(f"m{i:02d}", 3000 * i) for i in range(40)}
        _sendAll(sink.port, list(messages.values()), clients=8)
        out, _ = sink.stop()
        self.assertEqual(out, "")
        stored = {}
        for name in os.listdir(os.path.join(maildir, "new")):
            with open(os.path.join(maildir, "new", name), "rb") as f:
                content = f.read()
            stored[re.search(rb"Subject: (\S+)", content).group(1).decode()] = content
        self.assertEqual(len(os.listdir(os.path.join(maildir, "new"))), 40)
        self.assertEqual(stored, messages)
        self.assertEqual(os.listdir(os.path.join(maildir, "tmp")), [])

    def test_printing(self):
        """
        Messages of 64 KiB printed whole by two workers at once never mix:
        the output parses back into the messages sent, numbered 1 to N,
        each once.
        """
        sink = _Sink(self, "--port", "0")
        messages = {f"m{i:02d}": _message(f"m{i:02d}", 65536) for i in range(30)}
        _sendAll(sink.port, list(messages.values()), clients=8)
        out, _ = sink.stop()
        record = re.compile(
            rf"---------- message (\d+) from client\.example \[127\.0\.0\.1\] at {_TIME}\n"
            r"---------- MAIL FROM:<s@example\.com> SIZE=(\d+)\n"
            r"---------- RCPT TO:<r@example\.com>\n"
        )
        printed, numbers, position = {}, [], 0
        while position < len(out):
            head = record.match(out, position)
            self.assertIsNotNone(head, out[position : position + 300])
            number = head.group(1)
            end = out.index(f"---------- end of message {number}, ", head.end())
            body = out[head.end() : end]
            printed[re.search(r"Subject: (\S+)", body).group(1)] = body
            numbers.append(int(number))
            position = out.index("\n", end) + 1
        self.assertEqual(sorted(numbers), list(range(1, 31)))
        self.assertEqual(printed, {name: m.replace(b"\r\n", b"\n").decode() for name, m in messages.items()})

    def test_workerKilled(self):
        """
        A worker killed while clients send is started again after about a
        second, with one line on stderr; the clients it dropped send again
        and every message is accepted; the new worker takes mail.
        """
        maildir = os.path.join(self.where, "mail")
        sink = _Sink(self, "--summary", "--port", "0", "--maildir", maildir)
        victim, survivor = sorted(sink.pids)
        sending = concurrent.futures.ThreadPoolExecutor(1).submit(
            _sendAll, sink.port, [_message(f"a{i:03d}") for i in range(150)], 6, 5
        )
        _waitUntil(lambda: sink.out.count(b"\n") >= 30, "some mail")
        os.kill(victim, signal.SIGKILL)
        restarted = _waitUntil(lambda: (_children(sink.process.pid) - {survivor}) - {victim}, "the new worker", 5)
        sending.result(WAIT)
        # Only the new worker can take these.
        os.kill(survivor, signal.SIGSTOP)
        try:
            _sendAll(sink.port, [_message(f"b{i:02d}") for i in range(10)], 5)
        finally:
            os.kill(survivor, signal.SIGCONT)
        out, err = sink.stop()
        matches = [_SUMMARY.fullmatch(line) for line in out.splitlines()]
        self.assertNotIn(None, matches, out)
        subjects = {m.group("subject") for m in matches}
        self.assertEqual(subjects, {f"a{i:03d}" for i in range(150)} | {f"b{i:02d}" for i in range(10)})
        self.assertEqual({_storedBy(m.group("stored")) for m in matches if m.group("subject")[0] == "b"}, restarted)
        [line] = [line for line in err if "ended" in line]
        expected = f"mailproto sink: worker 1 ended (pid {victim}, signal 9); started again as pid {restarted.pop()}"
        self.assertEqual(line, expected)

    def test_stallsAndDrops(self):
        """
        Clients that stall or drop in the middle of DATA hold nobody else
        up; a dropped message is thrown away, a stalled one too once the
        sink stops.
        """
        maildir = os.path.join(self.where, "mail")
        sink = _Sink(self, "--summary", "--port", "0", "--maildir", maildir)
        begun = b"EHLO x\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\nSubject: half\r\n\r\nhalf a"
        stalled, dropped = [], []
        for group in (stalled, dropped):
            for i in range(6):
                client = socket.create_connection(("127.0.0.1", sink.port), 5)
                self.addCleanup(client.close)
                client.sendall(begun)
                group.append(client)
        for client in stalled + dropped:
            _readUntil(client, b"\r\n354 ")
        _waitUntil(lambda: len(os.listdir(os.path.join(maildir, "tmp"))) == 12, "12 messages begun")
        for client in dropped:
            client.close()
        started = time.monotonic()
        _sendAll(sink.port, [_message(f"m{i:02d}") for i in range(20)], 5)
        self.assertLess(time.monotonic() - started, 5)
        _waitUntil(lambda: len(os.listdir(os.path.join(maildir, "tmp"))) == 6, "the dropped messages gone")
        out, _ = sink.stop()
        self.assertEqual(_subjects(out), [f"m{i:02d}" for i in range(20)])
        self.assertEqual(os.listdir(os.path.join(maildir, "tmp")), [])
        self.assertEqual(len(os.listdir(os.path.join(maildir, "new"))), 20)

    def test_sinkKilled(self):
        """
        When the sink is killed (SIGKILL), its workers notice and exit, and
        nothing listens on its port any more.
        """
        sink = _Sink(self, "--quiet", "--port", "0")
        port = sink.port
        _send(port, _message("one"))
        sink.process.kill()
        sink.process.wait(WAIT)
        _waitUntil(lambda: not any(_alive(pid) for pid in sink.pids), "the workers to exit", 5)
        self.assertRaises(ConnectionRefusedError, socket.create_connection, ("127.0.0.1", port), 5)

    def test_startTLSAndLimit(self):
        """
        The workers take the sink's STARTTLS certificate and size limit.
        """
        try:
            import trustme
        except ImportError:
            self.skipTest("trustme is not installed")
        ca = trustme.CA()
        certificate = os.path.join(self.where, "both.pem")
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(certificate)
        sink = _Sink(self, "--summary", "--port", "0", "--tls-certificate", certificate, "--max-message-size", "2000")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        for i in range(4):
            with smtplib.SMTP("localhost", sink.port, timeout=10) as client:
                client.starttls(context=context)
                self.assertEqual(client.sendmail("s@example.com", ["r@example.com"], _message(f"m{i}")), {})
                error = self.assertRaises(
                    smtplib.SMTPSenderRefused,
                    client.sendmail,
                    "s@example.com",
                    ["r@example.com"],
                    _message("big", 3000),
                )
                self.assertEqual(error.smtp_code, 552)
        out, _ = sink.stop()
        self.assertEqual(_subjects(out), ["m0", "m1", "m2", "m3"])

    def test_lmtpOnUnixSocket(self):
        """
        LMTP on a UNIX socket, with two workers: messages arrive, and the
        socket's path stays until the sink stops, which removes it.
        """
        # A short directory: a UNIX socket's path is short.
        directory = tempfile.mkdtemp(prefix="sinkw", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "lmtp.sock")
        maildir = os.path.join(self.where, "mail")
        sink = _Sink(self, "--lmtp", "--listen", f"unix:{path}", "--maildir", maildir, "--quiet")
        for i in range(10):
            with smtplib.LMTP(path, timeout=10) as client:
                self.assertEqual(client.sendmail("s@example.com", ["r@example.com"], _message(f"m{i}")), {})
        os.kill(min(sink.pids), signal.SIGKILL)
        _waitUntil(lambda: b"started again" in sink.err, "a new worker", 5)
        self.assertTrue(os.path.exists(path))
        with smtplib.LMTP(path, timeout=10) as client:
            self.assertEqual(client.sendmail("s@example.com", ["r@example.com"], _message("last")), {})
        _, err = sink.stop()
        self.assertEqual(len(os.listdir(os.path.join(maildir, "new"))), 11)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(err[0], f"mailproto sink: listening on UNIX socket {path} for LMTP")


class PageTests(SynchronousTestCase):
    """
    The shell commands of C{docs/sink.rst}, "On every core", as pasted
    (see L{mailproto.test.test_docshell}): on a free port.
    """

    if DOCS is None:
        skip = "docs/ not found: set MAILPROTO_SOURCE to the source tree"

    def test_onEveryCore(self):
        """
        The page's sink takes the page's thousand messages, prints nothing,
        and stops with status 0 when told to.
        """
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        command = block("sink.rst", "mailproto sink --workers auto ")
        self.assertIn(" --port 2525", command)
        sink = DocShellSink(self, command.replace(" --port 2525", " --port 0"), where)
        self.assertIn("neither storing nor printing messages", sink.startLines[-1])
        send = block("sink.rst", "mailproto send --port 2525 ")
        result = sink.run(send.replace("--port 2525", f"--port {sink.port}"))
        self.assertTrue(result.startswith("1000 sent, 0 refused, 0 failed in "), result)
        out, err = sink.stop()
        self.assertEqual(out, "")
        self.assertIn(f"mailproto sink: started {availableCores()} worker processes", err)
        self.assertEqual(err[-1], "mailproto sink: stopped after 1000 message(s)")
