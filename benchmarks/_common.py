# Copyright (c) mailproto authors. See LICENSE for details.
"""
What the benchmarks share: finding Postfix's tools, free loopback ports,
starting and watching a server process (CPU time and memory from /proc),
mailproto's relay daemon as one of those servers, and a description of
the machine.
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICKS = os.sysconf("SC_CLK_TCK")
START_DEADLINE = 30
#: The relay daemon as a server of its own: C{mailrelay-Nw} is
#: C{twistd mailrelay --workers N}.
RELAY_KIND = re.compile(r"^mailrelay-(\d+)w$")
# mailproto sink --workers N --quiet: "sink-Nw".
SINK_KIND = re.compile(r"^sink-(\d+)w$")
#: The listening backlog of every server of C{accept.py} and
#: C{pipeline.py} (smtp-sink's, those of C{_servers.py}, the relay
#: daemon's).
BACKLOG = 1024
#: How long a relay daemon may take, once its load has ended, to deliver
#: what it still holds.
DRAIN_DEADLINE = 120
STOPPED = re.compile(
    r"mailrelay: stopped; (?P<queued>\d+) queued now; this run: (?P<delivered>\d+) delivered, "
    r"(?P<deferred>\d+) deferred, (?P<failed>\d+) failed, (?P<reports>\d+) reports; (?P<fsyncs>\d+) fsyncs"
)


class Failed(Exception):
    """
    A run that did not finish as it should; its message says why.
    """


def tool(name: str) -> str:
    """
    @return: the path of Postfix's tool C{name} (smtp-sink, smtp-source).
    """
    for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/lib/postfix/sbin/{name}"):
        if path and os.path.exists(path):
            return path
    raise SystemExit(f"{name} not found: install postfix (apt-get install postfix)")


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pythonEnv(root: str = ROOT) -> dict:
    """
    @return: the environment for a Python child that imports mailproto from
        this checkout (or from the tree C{root}).
    """
    path = os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH", "")] if p)
    return dict(os.environ, PYTHONPATH=path)


def median(values):
    return statistics.median(values) if values else float("nan")


def ratio(a, b):
    return a / b if b and a == a and b == b else float("nan")


def waitForPort(port: int, process: subprocess.Popen, deadline: float = START_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with status {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise SystemExit(f"{process.args[0]} did not listen on 127.0.0.1:{port} within {deadline} s")


class Server:
    """
    One server process on 127.0.0.1: C{smtp-sink}, or one of the kinds of
    C{_servers.py}.  Its CPU time and memory are read from /proc.  The
    Python servers import mailproto from C{root} (default: this checkout).
    """

    def __init__(self, kind: str, maxSize=None, root: str = ROOT) -> None:
        self.kind = kind
        self.port = freePort()
        if kind == "smtp-sink":
            args = [tool("smtp-sink")]
            if os.geteuid() == 0:
                args += ["-u", "nobody"]
            args += [f"127.0.0.1:{self.port}", str(BACKLOG)]
        else:
            args = [sys.executable, os.path.join(HERE, "_servers.py"), kind, str(self.port)]
            if maxSize is not None:
                args.append(str(maxSize))
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=pythonEnv(root), cwd="/tmp"
        )
        waitForPort(self.port, self.process)

    def cpu(self) -> float:
        """
        @return: the process's user + system CPU time so far, in seconds.
        """
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def _status(self, key: str) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(key)

    def rss(self) -> float:
        """
        @return: the resident set size now, in MiB.
        """
        return self._status("VmRSS")

    def peakRSS(self) -> float:
        """
        @return: the largest resident set size since the start or the last
            L{resetPeak}, in MiB.
        """
        return self._status("VmHWM")

    def resetPeak(self) -> None:
        """
        Start the peak resident set size again from the current one (Linux's
        C{clear_refs} 5).
        """
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")

    def stop(self) -> None:
        """
        Stop the server; then C{received} is the number of messages it says
        it received (C{None} if it does not say: smtp-sink, twisted-floor).
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        errors = self.process.stderr.read().decode("utf-8", "replace").strip()
        self.process.stderr.close()
        if errors and "Traceback" in errors:
            print(f"  {self.kind} wrote to stderr:\n{errors[-2000:]}", file=sys.stderr)
        found = re.search(r"^received (\d+) messages$", errors, re.M)
        self.received = int(found.group(1)) if found else None


def tail(path: str, lines: int = 20) -> str:
    """
    @return: the last C{lines} lines of the file C{path} ("" if there is
        none).
    """
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def waitForGreeting(port: int, process: subprocess.Popen, log: str, deadline: float = START_DEADLINE) -> None:
    """
    Wait (at most C{deadline} seconds) until 127.0.0.1:C{port} greets with
    220, then say QUIT.

    @raise Failed: if nothing greets by then; the message has the end of
        C{log}.
    """
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                greeting = s.makefile("rb").readline()
                s.sendall(b"QUIT\r\n")
                if greeting.startswith(b"220"):
                    return
                last = greeting
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise Failed(f"nothing greets on 127.0.0.1:{port} ({last!r}; exit code {process.poll()}):\n{tail(log)}")


def startSession(args, **kw) -> subprocess.Popen:
    """
    Start C{args} as the leader of a session (and process group) of its
    own.
    """
    return subprocess.Popen(args, start_new_session=True, **kw)


class Sink:
    """
    smtp-sink with running counters (-c): a thread reads them from its
    standard output and notes when the count reaches C{expected} (if not
    C{None}).
    """

    def __init__(self, port: int, expected=None, start=startSession) -> None:
        """
        @param start: starts the process, as L{startSession} does.
        """
        self.port = port
        self.count = 0
        self.expected = expected
        self.reached = threading.Event()
        self.reachedAt = None
        args = [tool("smtp-sink"), "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += [f"127.0.0.1:{port}", "1024"]
        self.process = start(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        while True:
            data = self.process.stdout.read1(65536)
            if not data:
                return
            pending += data
            *counters, pending = pending.split(b"\r")
            for counter in reversed(counters):
                match = re.search(rb"mesg=(\d+)", counter)
                if match:
                    self.count = int(match.group(1))
                    break
            if self.expected is not None and self.count >= self.expected and not self.reached.is_set():
                self.reachedAt = time.perf_counter()
                self.reached.set()


def _processes(session: int):
    """
    @return: C{(pid, name, fields of /proc/PID/stat after the name)} of
        every process of C{session}.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            name, fields = text.split(" (", 1)[1].rsplit(")", 1)
            fields = fields.split()
            if len(fields) > 14 and int(fields[3]) == session:
                found.append((int(entry), name, fields))
    return found


def role(pid: int, name: str, session: int) -> str:
    """
    @return: what a relay's process does: for mailproto's, C{parent} (the
        session's leader) or C{worker N}; for Postfix's, its program
        (smtpd, cleanup, qmgr, smtp, master...).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        argv = []
    if b"mailproto._relayd._worker" in argv:
        try:
            return f"worker {json.loads(argv[argv.index(b'mailproto._relayd._worker') + 1])['worker']}"
        except (IndexError, ValueError, KeyError, TypeError):
            return "worker"
    return "parent" if pid == session and b"mailrelay" in argv else name


def roles(session: int) -> dict:
    """
    @return: the L{role} of every process of C{session}, by PID.
    """
    return {pid: role(pid, name, session) for pid, name, _ in _processes(session)}


def processCPU(session: int) -> dict:
    """
    @return: the CPU seconds (user and system) of every process of
        C{session}, added up by L{role}; and those of the processes that
        ended and were reaped by one of them, as C{"ROLE's ended
        children"} (Postfix's master(8) reaps its daemons as each reaches
        its max_use).
    """
    roles = {}
    for pid, name, fields in _processes(session):
        label = role(pid, name, session)
        for key, ticks in ((label, fields[11:13]), (f"{label}'s ended children", fields[13:15])):
            seconds = sum(int(tick) for tick in ticks) / TICKS
            if seconds or key == label:
                roles[key] = roles.get(key, 0) + seconds
    return roles


def processWaits(session: int) -> dict:
    """
    @return: the seconds the threads of every live process of C{session}
        spent ready to run but waiting for a CPU (the second field of
        Linux's C{/proc/PID/task/TID/schedstat}), added up by L{role}.
    """
    waits = {}
    for pid, label in roles(session).items():
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    waited = int(f.read().split()[1]) / 1e9
            except (OSError, IndexError, ValueError):
                continue
            waits[label] = waits.get(label, 0) + waited
    return waits


def sessionCPU(session: int) -> float:
    """
    @return: the CPU seconds (user and system, reaped children included)
        of every process in a session: the relay and, for Postfix, every
        daemon its master(8) started.
    """
    return sum(processCPU(session).values())


def settle(limit_kib: int = 4096, deadline: float = 30.0) -> float:
    """
    Before a run: write back what earlier runs left dirty in the page
    cache, and wait (at most C{deadline} seconds) until less than
    C{limit_kib} is dirty or under writeback, so that a run does not pay
    for the one before it.

    @return: the seconds it took.
    """
    start = time.monotonic()
    os.sync()
    while time.monotonic() - start < deadline:
        pending = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("Dirty:", "Writeback:")):
                    pending += int(line.split()[1])
        if pending < limit_kib:
            break
        time.sleep(0.1)
    return time.monotonic() - start


def countFiles(directories) -> int:
    return sum(len(files) for directory in directories for _, _, files in os.walk(directory))


def workerCounts(text: str) -> list:
    """
    @return: the worker counts of a C{--workers} option ("1,2"; "" or
        "none" for none).
    """
    if text.strip().lower() in ("", "none"):
        return []
    counts = [int(part) for part in text.split(",")]
    if any(count < 1 for count in counts):
        raise ValueError("worker counts are 1 or more")
    return counts


def workerServers(text: str) -> list:
    """
    @param text: the worker counts of a C{--workers} option ("1,2").
    @return: the servers to run for them: mailproto's relay daemon
        (C{mailrelay-Nw}), then its sink (C{sink-Nw}), for each count.
    @raise ValueError: if C{text} is not a list of counts.
    """
    counts = workerCounts(text)
    return [f"mailrelay-{count}w" for count in counts] + [f"sink-{count}w" for count in counts]


def knownServer(name: str, servers) -> bool:
    """
    @return: whether C{name} is one of C{servers}, C{mailrelay-Nw} or
        C{sink-Nw}.
    """
    return name in servers or bool(RELAY_KIND.match(name)) or bool(SINK_KIND.match(name))


def mailrelayCommand(port: int, spool: str, sinkPort: int, workers: int, scratch: str, root: str = ROOT,
                     backlog=None):
    """
    @param backlog: the listening socket's backlog (C{backlog=} of its
        endpoint), or C{None} for the relay's default (Twisted's, 50).
    @return: the command line and environment of C{twistd -n mailrelay}
        on 127.0.0.1:C{port} with C{--workers WORKERS}, its spool
        C{spool}, relaying everything to the smart host 127.0.0.1:C{sinkPort};
        its defaults otherwise.  mailproto is imported from C{root}.
    """
    if root not in sys.path:
        sys.path.insert(0, root)
    from mailproto.test._relayprocess import relayCommand

    argv, env = relayCommand(
        [
            "--smtp", f"tcp:{port}:interface=127.0.0.1" + (f":backlog={backlog}" if backlog else ""),
            "--spool", spool,
            "--smarthost", f"127.0.0.1:{sinkPort}",
            "--hostname", "relay.mailproto.test",
            "--workers", str(workers),
        ],
        scratch,
    )
    env["PYTHONPATH"] = os.pathsep.join([root, env["PYTHONPATH"]])
    return argv, env


WORKER_READY = re.compile(r"worker (\d+): .* starting on ")


def waitForWorkers(log: str, workers: int, process: subprocess.Popen, deadline: float = START_DEADLINE) -> None:
    """
    With C{--workers} above 1, wait until every worker listens (its
    line in the log), so that a run does not start while one worker
    takes every client.

    @raise Failed: if one does not by C{deadline} seconds.
    """
    if workers < 2:
        return
    end = time.monotonic() + deadline
    while time.monotonic() < end and process.poll() is None:
        try:
            with open(log, "rb") as f:
                ready = set(WORKER_READY.findall(f.read().decode("utf-8", "replace")))
        except OSError:
            ready = set()
        if len(ready) >= workers:
            return
        time.sleep(0.05)
    raise Failed(f"not every one of {workers} workers listens after {deadline} s:\n{tail(log)}")


class RelayServer:
    """
    mailproto's relay daemon as one of the servers of C{accept.py} and
    C{pipeline.py}: C{twistd mailrelay --workers N} (kind
    C{mailrelay-Nw}) on 127.0.0.1, its defaults otherwise, with a spool
    of its own in a scratch directory in /tmp (so on the same disk as the
    relay benchmark's) and a fresh C{smtp-sink} as its smart host, which
    throws the mail away.  It says 250 once a message is durable in the
    spool; it delivers to the sink meanwhile.

    Its listening socket has the backlog every other server of these
    benchmarks has (L{BACKLOG}), not Twisted's default of 50, which drops
    connections (the client tries again a second later) when more than
    that many clients connect at once.

    Its CPU time and memory are those of its processes: the parent and
    its workers (not the sink).  L{stop} first waits until it has
    delivered everything; C{received} is then what the sink counted.
    """

    def __init__(self, kind: str, root: str = ROOT) -> None:
        self.kind = kind
        self.workers = int(RELAY_KIND.match(kind).group(1))
        self.port = freePort()
        self.scratch = tempfile.mkdtemp(prefix=f"mailproto-bench-{kind}-")
        self.spool = os.path.join(self.scratch, "spool")
        self.log = os.path.join(self.scratch, "relay.log")
        self.process = None
        self.sink = Sink(freePort())
        try:
            waitForGreeting(self.sink.port, self.sink.process, os.devnull)
            argv, env = mailrelayCommand(self.port, self.spool, self.sink.port, self.workers, self.scratch, root,
                                         backlog=BACKLOG)
            with open(self.log, "ab") as log:
                self.process = startSession(argv, env=env, cwd=self.scratch, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log)
            waitForGreeting(self.port, self.process, self.log)
            waitForWorkers(self.log, self.workers, self.process)
        except BaseException:
            self._end()
            raise

    def cpu(self) -> float:
        """
        @return: the user + system CPU time so far of the relay's
            processes, in seconds.
        """
        return sessionCPU(self.process.pid)

    def cpuByProcess(self) -> dict:
        """
        @return: the CPU seconds so far of each of the relay's processes,
            by L{role}.
        """
        return processCPU(self.process.pid)

    def peakRSS(self) -> float:
        """
        @return: the largest resident set sizes of the relay's processes,
            added up, in MiB (an upper bound of the peak of the whole).
        """
        return sessionPeakRSS(self.process.pid)

    def queued(self) -> int:
        """
        @return: the message files in the spool now.
        """
        return countFiles([os.path.join(self.spool, "queue"), os.path.join(self.spool, "tmp")])

    def stop(self) -> None:
        """
        Wait (at most L{DRAIN_DEADLINE}) until the relay has delivered
        everything, stop it and the sink; then C{received} is the number
        of messages the sink counted, and C{problems} says what went
        wrong.
        """
        self.problems = []
        end = time.monotonic() + DRAIN_DEADLINE
        while self.process.poll() is None and self.queued() and time.monotonic() < end:
            time.sleep(0.01)
        left = self.queued()
        if left:
            self.problems.append(f"{left} files still in the spool {DRAIN_DEADLINE} s after the load")
        time.sleep(0.1)  # the sink's last counters
        self.received = self.sink.count
        self._end()
        with open(self.log, "rb") as f:
            stopped = STOPPED.search(f.read().decode("utf-8", "replace"))
        if stopped is None:
            self.problems.append(f"the relay logged no 'stopped' line:\n{tail(self.log)}")
        elif int(stopped.group("delivered")) != self.received:
            self.problems.append(f"the relay says it delivered {stopped.group('delivered')}, the sink counted"
                                 f" {self.received}")
        for problem in self.problems:
            print(f"  {self.kind}: PROBLEM: {problem}", file=sys.stderr)
        shutil.rmtree(self.scratch, True)

    def _end(self) -> None:
        """
        Stop the relay (SIGTERM, then SIGKILL to its process group after
        a grace) and the sink.
        """
        for process in (self.process, self.sink.process):
            if process is not None:
                stopProcessGroup(process, 30)
                process.wait()


def sessionPeakRSS(session: int) -> float:
    """
    @return: the largest resident set sizes of the processes of
        C{session}, added up, in MiB (an upper bound of the peak of the
        whole).
    """
    total = 0
    for pid, _, _ in _processes(session):
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


SINK_STARTED = re.compile(r"started (\d+) worker processes")
SINK_STOPPED = re.compile(r"stopped after (\d+) message")


class SinkWorkersServer:
    """
    C{mailproto sink --workers N --quiet} (kind C{sink-Nw}) on 127.0.0.1:
    mailproto's sink on N processes sharing the listening socket, keeping
    and printing nothing, so discarding as the other servers of
    C{accept.py} do.  Its CPU time and memory are those of all its
    processes; C{received} is the count it gives when it stops.
    """

    def __init__(self, kind: str, root: str = ROOT) -> None:
        self.kind = kind
        self.workers = int(SINK_KIND.match(kind).group(1))
        self.port = freePort()
        handle, self.log = tempfile.mkstemp(prefix=f"mailproto-bench-{kind}-", suffix=".log")
        os.close(handle)
        argv = [sys.executable, "-m", "mailproto", "sink", "--workers", str(self.workers), "--quiet",
                "--port", str(self.port), "--hostname", "sink.bench.test"]
        with open(self.log, "ab") as log:
            self.process = startSession(argv, env=pythonEnv(root), cwd="/tmp", stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=log)
        try:
            waitForGreeting(self.port, self.process, self.log)
            if self.workers > 1:
                end = time.monotonic() + START_DEADLINE
                while not SINK_STARTED.search(self._text()):
                    if time.monotonic() > end or self.process.poll() is not None:
                        raise Failed(f"{kind} did not start its workers:\n{tail(self.log)}")
                    time.sleep(0.05)
        except BaseException:
            stopProcessGroup(self.process, 10)
            raise

    def _text(self) -> str:
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def cpu(self) -> float:
        """
        @return: the user + system CPU time so far of its processes.
        """
        return sessionCPU(self.process.pid)

    def peakRSS(self) -> float:
        return sessionPeakRSS(self.process.pid)

    def stop(self) -> None:
        """
        Stop it (SIGTERM); C{received} is then the number of messages it
        says it received.
        """
        stopProcessGroup(self.process, 15)
        text = self._text()
        found = SINK_STOPPED.search(text)
        self.received = int(found.group(1)) if found else None
        self.problems = [] if found else [f"{self.kind} did not say how many it received:\n{tail(self.log)}"]
        if "Traceback" in text:
            self.problems.append(f"{self.kind} wrote a traceback:\n{text[-2000:]}")
        os.unlink(self.log)


def stopProcessGroup(process, grace, pid=None) -> None:
    """
    SIGTERM to C{pid} (default: the process itself), wait at most
    C{grace} seconds, then SIGKILL the process's whole group and wait at
    most C{grace} seconds more.
    """
    if process.poll() is None:
        try:
            os.kill(pid or process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass


def cpuByProcess(server, before=None) -> dict:
    """
    @param before: what this returned at the start of a run, to get the
        CPU time since.
    @return: the CPU seconds of each of a L{RelayServer}'s processes (by
        L{role}), or since C{before}; empty for a server of one process.
    """
    if not isinstance(server, RelayServer):
        return {}
    now = server.cpuByProcess()
    return {name: seconds - (before or {}).get(name, 0) for name, seconds in now.items()}


def startServer(kind: str, maxSize=None, root: str = ROOT):
    """
    @return: a L{Server} of C{kind}, a L{RelayServer} for C{mailrelay-Nw},
        or a L{SinkWorkersServer} for C{sink-Nw}.
    """
    if RELAY_KIND.match(kind):
        return RelayServer(kind, root)
    if SINK_KIND.match(kind):
        return SinkWorkersServer(kind, root)
    return Server(kind, maxSize, root)


def machine() -> dict:
    """
    @return: what the figures were measured on.
    """
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            memory = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        memory = 0
    postfix = "not installed"
    for postconf in (shutil.which("postconf"), "/usr/sbin/postconf"):
        if postconf and os.path.exists(postconf):
            done = subprocess.run([postconf, "-d", "-h", "mail_version"], capture_output=True, text=True)
            postfix = done.stdout.strip() or "unknown"
            break
    versions = {}
    for name in ("twisted", "aiosmtpd", "aiosmtplib"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = "not installed"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mib": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": postfix or "unknown",
        **versions,
    }


def writeResults(path, benchmark: str, results: list, **fields) -> None:
    """
    Write a benchmark's results as JSON (what C{report.py} reads): its
    name, C{fields} (its settings), the L{machine} and the results.
    """
    if path:
        with open(path, "w") as f:
            json.dump({"benchmark": benchmark, **fields, "machine": machine(), "results": results}, f, indent=2)
