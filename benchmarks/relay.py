# Copyright (c) mailproto authors. See LICENSE for details.
"""
Durable relay throughput: smtp-source -> relay -> smtp-sink on 127.0.0.1,
mailproto's `twistd mailrelay` and Postfix side by side in one run.

Each run first waits until what earlier runs wrote is on the disk (sync,
then less than 4 MiB dirty or under writeback; at most 30 s), then starts
a fresh relay (an empty spool or queue of its own, under a private
directory in /tmp) and a fresh smtp-sink behind it, then
smtp-source sends MESSAGES messages of SIZE octets over SESSIONS sessions,
several per session (-d).  A run ends when smtp-sink has counted every
message (its -c counters) and the relay's queue is empty again:

  - end to end: messages / (that moment - smtp-source's start);
  - accept side: messages / smtp-source's own run time (the relay said
    250 to every message, which both relays say only after fsync);
  - CPU per message: user and system time of the relay's processes
    (mailproto's one process; Postfix's master and its daemons);
  - fsyncs per message: mailproto's own count, from the line it logs when
    it stops; for both, when strace is installed, one more run of each
    under `strace -f --seccomp-bpf -c -e trace=fsync,fdatasync` (not timed).

The runs are interleaved (mailproto, Postfix, then Postfix, mailproto,
...), and the median of the repetitions is reported with the ratio
mailproto / Postfix.  The disk's own rate of serial durable commits (4 KiB
write, fsync, rename, directory fsync, for about 2 s, in the filesystem
the queues are in) is printed first, as the physical bound.

    python benchmarks/relay.py [--messages N] [--sessions S] [--size OCTETS]
                               [--repeat R] [--only mailproto|postfix]

Postfix (a relay with relayhost = [127.0.0.1]:SINKPORT, mynetworks =
127.0.0.0/8, its own configuration directory, queue and data directories,
listening on 127.0.0.1 only, fsync as by default) needs root.  Every wait
is bounded (--timeout per run); every process started here is stopped and
the scratch directory removed on exit, Ctrl-C and failure included.
"""

import argparse
import contextlib
import json
import os
import pwd
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
sys.path.insert(0, os.path.dirname(HERE))

from _common import freePort, tool  # noqa: E402  (benchmarks/_common.py)

from mailproto.test._relayprocess import relayCommand  # noqa: E402

RELAYS = ["mailproto", "postfix"]
SENDER, RECIPIENT = "bench@example.org", "sink@example.com"
READY_DEADLINE = 30
STOP_GRACE = 10
POLL = 0.005

STOPPED = re.compile(
    r"mailrelay: stopped; (?P<queued>\d+) queued now; this run: (?P<delivered>\d+) delivered, "
    r"(?P<deferred>\d+) deferred, (?P<failed>\d+) failed, (?P<reports>\d+) reports; (?P<fsyncs>\d+) fsyncs"
)
# Log lines worth showing: mailproto's (twistd) and Postfix's.
SUSPECT = {
    "mailproto": re.compile(
        r"#(warn|error|critical)\]|Traceback|Unhandled|[Ee]rror|[Ee]xception|refused|timed? ?out|\bdeferred\b|[Ff]ailed to"
    ),
    "postfix": re.compile(r"warning:|error:|fatal:|panic:|status=(deferred|bounced)"),
}

MAIN_CF = """\
# A private Postfix relay for mailproto's benchmark: 127.0.0.1 only, every
# message to the smtp-sink at relayhost.  fsync is left as by default.
compatibility_level = {compatibility}
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
myhostname = relay.postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
relay_domains =
relayhost = [127.0.0.1]:{sink}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = /dev/stdout
"""

MASTER_CF = """\
# service type private unpriv chroot wakeup maxproc command
127.0.0.1:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class Failed(Exception):
    """
    A run that did not finish as it should; its message says why.
    """


class Children:
    """
    Every process started here, each the leader of a process group of its
    own (so a Ctrl-C on the terminal does not reach it half-way, and its
    children go with it): stopped by SIGTERM, then SIGKILL to the group.
    """

    def __init__(self):
        self.processes = []

    def start(self, args, **kw):
        process = subprocess.Popen(args, start_new_session=True, **kw)
        self.processes.append(process)
        return process

    def stop(self, process, grace=STOP_GRACE, pid=None):
        """
        SIGTERM to C{pid} (default: the process itself), wait at most
        C{grace} seconds, then SIGKILL its whole group.
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
        if process in self.processes:
            self.processes.remove(process)

    def stopAll(self):
        for process in list(self.processes):
            self.stop(process, grace=3)


@contextlib.contextmanager
def scratchArea(prefix, keep=False):
    """
    For a benchmark's runs: a L{Children} and a scratch directory in /tmp
    (Postfix's unprivileged users can reach it).  SIGINT, SIGTERM and SIGHUP
    stop the runs (exit status 130); on the way out, every child is
    stopped and the directory removed, unless C{keep}.
    """

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell may have started this with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    scratch = tempfile.mkdtemp(prefix=prefix)
    os.chmod(scratch, 0o755)
    children = Children()
    try:
        yield children, scratch
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        raise SystemExit(130)
    finally:
        children.stopAll()
        if keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, True)


def childOf(pid):
    """
    @return: the PID of a child of C{pid} (the program strace runs), or
        None.
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
        if children:
            return int(children[0])
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        return int(entry)
            except (OSError, IndexError, ValueError):
                continue
    return None


def waitForGreeting(port, process, log, deadline=READY_DEADLINE):
    """
    Wait (at most C{deadline} seconds) until 127.0.0.1:C{port} greets with
    220, then say QUIT.
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


def tail(path, lines=20):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def suspectLines(relay, log, limit=6):
    """
    @return: how many lines of C{log} look like trouble, and a few of
        them, one of each kind (their digits masked, to group them).
    """
    count, examples, seen = 0, [], set()
    try:
        with open(log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return 0, []
    for line in text.splitlines():
        if STOPPED.search(line) or "postfix/smtp-source" in line:
            continue
        if SUSPECT[relay].search(line):
            count += 1
            shape = re.sub(r"\d+|[0-9A-F]{10,}", "#", line.split("] ", 1)[-1])[:120]
            if shape not in seen and len(examples) < limit:
                seen.add(shape)
                examples.append(line.strip()[:300])
    return count, examples


class Sink:
    """
    smtp-sink with running counters (-c): a thread reads them from its
    standard output and notes when the count reaches C{expected}.
    """

    def __init__(self, children, port, expected):
        self.count = 0
        self.expected = expected
        self.reached = threading.Event()
        self.reachedAt = None
        args = [tool("smtp-sink"), "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += [f"127.0.0.1:{port}", "1024"]
        self.process = children.start(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
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
            if self.count >= self.expected and not self.reached.is_set():
                self.reachedAt = time.perf_counter()
                self.reached.set()


def sessionCPU(session):
    """
    @return: the CPU seconds (user and system, reaped children included)
        of every process in a session: the relay and, for Postfix, every
        daemon its master(8) started.
    """
    ticks = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == session:
                ticks += sum(int(field) for field in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def countFiles(directories):
    count = 0
    for directory in directories:
        for _, _, files in os.walk(directory):
            count += len(files)
    return count


class MailprotoRelay:
    """
    C{twistd -n mailrelay} with a spool of its own; its defaults for
    connections (50, 20 per destination, 100 messages each).
    """

    name = "mailproto"

    def __init__(self, children, root, port, sinkPort, strace=None):
        self.children = children
        self.root = root
        self.port = port
        self.spool = os.path.join(root, "spool")
        self.log = os.path.join(root, "relay.log")
        argv, env = relayCommand(
            [
                "--smtp", f"tcp:{port}:interface=127.0.0.1",
                "--spool", self.spool,
                "--smarthost", f"127.0.0.1:{sinkPort}",
                "--hostname", "relay.mailproto.test",
            ],
            root,
        )
        self.strace = strace
        if strace:
            argv = strace + argv
        with open(self.log, "ab") as log:
            self.process = children.start(argv, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        waitForGreeting(port, self.process, self.log)

    def queued(self):
        return countFiles([os.path.join(self.spool, "queue"), os.path.join(self.spool, "tmp")])

    def stop(self):
        """
        @return: the counters of the line it logs when it stops.
        """
        pid = childOf(self.process.pid) if self.strace else None
        self.children.stop(self.process, pid=pid)
        with open(self.log, "rb") as f:
            match = STOPPED.search(f.read().decode("utf-8", "replace"))
        if match is None:
            raise Failed(f"mailproto's relay logged no 'stopped' line:\n{tail(self.log)}")
        return {key: int(value) for key, value in match.groupdict().items()}


class PostfixRelay:
    """
    Postfix's master(8) in the foreground, from a configuration directory of
    its own, relaying everything to relayhost = the sink; C{settings}, more
    lines of main.cf, come after the ones above.
    """

    name = "postfix"

    def __init__(self, children, root, port, sinkPort, strace=None, settings=""):
        self.children = children
        self.root = root
        self.port = port
        self.log = os.path.join(root, "maillog")
        os.chmod(root, 0o755)
        os.mkdir(os.path.join(root, "queue"), 0o755)
        data = os.path.join(root, "data")
        os.mkdir(data, 0o700)
        owner = pwd.getpwnam("postfix")
        os.chown(data, owner.pw_uid, owner.pw_gid)
        self.config = config = os.path.join(root, "config")
        os.mkdir(config, 0o755)
        version = postfixVersion()
        with open(os.path.join(config, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(root=root, sink=sinkPort, compatibility="3.6" if version >= (3, 6) else "2"))
            f.write(settings)
        with open(os.path.join(config, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=port))
        # Postfix waits until main.cf has not changed for a second or so.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(os.path.join(config, name), (past, past))
        # "postfix check" makes the queue's directories, owners and modes.
        check = subprocess.run([tool("postfix"), "-c", config, "check"], capture_output=True, timeout=60)
        if check.returncode:
            raise Failed(f"postfix check: {check.stdout!r} {check.stderr!r}")
        self.strace = strace
        argv = [os.path.join(postfixDefaults()["daemon_directory"], "master"), "-s", "-c", config]
        if strace:
            argv = strace + argv
        with open(self.log, "ab") as log:
            self.process = children.start(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        waitForGreeting(port, self.process, self.log)

    def queued(self):
        queue = os.path.join(self.root, "queue")
        return countFiles(os.path.join(queue, name) for name in ("maildrop", "incoming", "active", "deferred", "hold"))

    def stop(self):
        pid = childOf(self.process.pid) if self.strace else None
        self.children.stop(self.process, pid=pid)
        with open(self.log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return {
            "queued": self.queued(),
            "delivered": text.count(" status=sent "),
            "deferred": text.count(" status=deferred "),
            "failed": text.count(" status=bounced "),
        }


_defaults = None


def postfixDefaults():
    global _defaults
    if _defaults is None:
        out = subprocess.run([tool("postconf"), "-d"], capture_output=True, check=True, timeout=60).stdout
        _defaults = dict(
            line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
            for line in out.decode("utf-8", "replace").splitlines()
        )
    return _defaults


def postfixVersion():
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", postfixDefaults()["mail_version"]).groups())


def postfixUsable():
    """
    @return: None if a private Postfix can run here, else why not.
    """
    if os.geteuid() != 0:
        return "Postfix's master(8) and queue must be set up and started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no 'postfix' user: the Postfix package was not set up"
    try:
        master = os.path.join(postfixDefaults()["daemon_directory"], "master")
    except (SystemExit, subprocess.SubprocessError, KeyError) as e:
        return f"postconf: {e}"
    if not os.path.exists(master):
        return f"{master} is not installed"
    return None


def straceCommand(output):
    """
    @return: the prefix that runs a program under strace, counting the
        fsync-like calls of it and of every process it forks, or None.
    """
    path = shutil.which("strace")
    if path is None:
        return None
    probe = subprocess.run([path, "-f", "--seccomp-bpf", "-c", "-o", os.devnull, "-e", "trace=fsync", "true"],
                           capture_output=True, timeout=30)
    seccomp = ["--seccomp-bpf"] if probe.returncode == 0 else []
    return [path, "-f", *seccomp, "-c", "-o", output, "-e", "trace=fsync,fdatasync,sync_file_range,syncfs"]


def straceCount(output):
    """
    @return: the number of calls in an strace -c summary, by system call.
    """
    calls = {}
    with open(output) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and fields[-1] != "total" and fields[3].isdigit():
                calls[fields[-1]] = int(fields[3])
    return calls


def diskCommitRate(directory, seconds=2.0, limit=1_000_000):
    """
    Serial durable commits, as a queue makes them: write 4 KiB to a new
    file, fsync it, rename it into place, fsync the directory.

    @return: commits per second.
    """
    probe = os.path.join(directory, "fsync-probe")
    os.mkdir(probe)
    data = os.urandom(4096)
    directoryFD = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
    try:
        commits = 0
        start = time.perf_counter()
        while commits < limit and time.perf_counter() - start < seconds:
            temporary = os.path.join(probe, "tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, os.path.join(probe, f"m{commits % 64}"))
            os.fsync(directoryFD)
            commits += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(directoryFD)
        shutil.rmtree(probe, True)
    return commits / elapsed


def settle(limit_kib=4096, deadline=30.0):
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


def runOnce(relayName, children, scratch, number, options, strace=False):
    """
    One run: a fresh sink and a fresh relay, the load, the wait until the
    sink has every message and the queue is empty.

    @return: a dict of measurements (None for what was not measured).
    """
    root = tempfile.mkdtemp(prefix=f"{number:02d}-{relayName}-", dir=scratch)
    sinkPort, relayPort = freePort(), freePort()
    straceOut = os.path.join(root, "strace.txt")
    prefix = straceCommand(straceOut) if strace else None
    if strace and prefix is None:
        raise Failed("strace is not installed")
    before = list(children.processes)
    settle()
    try:
        sink = Sink(children, sinkPort, options.messages)
        waitForGreeting(sinkPort, sink.process, os.devnull)
        relay = (MailprotoRelay if relayName == "mailproto" else PostfixRelay)(
            children, root, relayPort, sinkPort, strace=prefix
        )
        deadline = time.monotonic() + options.timeout
        source = [
            tool("smtp-source"), "-s", str(options.sessions), "-m", str(options.messages), "-l", str(options.size),
            "-d", "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{relayPort}",
        ]
        sourceLog = os.path.join(root, "smtp-source.log")
        with open(sourceLog, "wb") as log:
            start = time.perf_counter()
            load = children.start(source, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                code = load.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                children.stop(load, grace=1)
                raise Failed(f"smtp-source still running after {options.timeout} s")
            accepted = time.perf_counter()
            children.stop(load, grace=1)
        problems = []
        if code:
            problems.append(f"smtp-source exited with {code}: {tail(sourceLog, 3)}")
        else:
            if not sink.reached.wait(max(0, deadline - time.monotonic())):
                problems.append(f"the sink has {sink.count} of {options.messages} messages after {options.timeout} s")
        while relay.queued() and time.monotonic() < deadline:
            time.sleep(POLL)
        emptied = time.perf_counter()
        queued = relay.queued()
        if queued:
            problems.append(f"{queued} files still queued after {options.timeout} s")
        cpu = sessionCPU(relay.process.pid)
        stats = relay.stop()
        time.sleep(0.1)  # the sink's last counters
        received = sink.count
        if received != options.messages:
            problems.append(f"the sink received {received} messages, not {options.messages}")
        if stats["delivered"] != options.messages:
            problems.append(f"the relay says it delivered {stats['delivered']}, not {options.messages}")
        if stats["queued"]:
            problems.append(f"{stats['queued']} queued when the relay stopped")
        logPath = os.path.join(root, "relay.log" if relayName == "mailproto" else "maillog")
        suspects, examples = suspectLines(relayName, logPath)
        result = {
            "relay": relayName,
            "strace": strace,
            "accept": options.messages / (accepted - start) if not code else None,
            "endToEnd": options.messages / (max(emptied, sink.reachedAt or emptied) - start) if not problems else None,
            "seconds": max(emptied, sink.reachedAt or emptied) - start,
            "cpuPerMessage": cpu / options.messages,
            "stats": stats,
            "received": received,
            "problems": problems,
            "suspects": suspects,
            "examples": examples,
            "log": logPath,
        }
        if relayName == "mailproto":
            result["logFsyncs"] = stats["fsyncs"] / options.messages
        if strace:
            calls = straceCount(straceOut)
            result["straceCalls"] = calls
            result["straceFsyncs"] = sum(calls.values()) / options.messages
        return result
    finally:
        # Whatever this run started and has not stopped yet, the relay
        # first: on success only the sink is left.
        for process in reversed(children.processes):
            if process not in before:
                children.stop(process, grace=2)


def show(result):
    parts = [f"  {result['relay']:<10}"]
    if result["strace"]:
        parts.append("(strace, not timed)")
    parts.append(f"e2e {result['endToEnd']:>7.0f} msg/s" if result["endToEnd"] else "e2e     n/a")
    parts.append(f"accept {result['accept']:>7.0f} msg/s" if result["accept"] else "accept n/a")
    parts.append(f"{result['seconds']:6.2f} s")
    if not result["strace"]:  # under strace, master(8) is no longer its session's leader
        parts.append(f"CPU {1000 * result['cpuPerMessage']:.2f} ms/msg")
    if "logFsyncs" in result:
        parts.append(f"fsyncs/msg {result['logFsyncs']:.2f} (log)")
    if "straceFsyncs" in result:
        parts.append(f"{result['straceFsyncs']:.2f} (strace: {result['straceCalls']})")
    stats = result["stats"]
    parts.append(f"delivered {stats['delivered']} deferred {stats['deferred']} failed {stats['failed']}")
    if result["suspects"]:
        parts.append(f"{result['suspects']} suspect log lines")
    print("  ".join(parts), file=sys.stderr, flush=True)
    for problem in result["problems"]:
        print(f"      PROBLEM: {problem}", file=sys.stderr)
    for example in result["examples"]:
        print(f"      log: {example}", file=sys.stderr)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


def cell(value, width, decimals=0, suffix=""):
    """
    @return: C{value} right-aligned in C{width} columns, or "n/a".
    """
    text = "n/a" if value is None else f"{value:.{decimals}f}{suffix}"
    return f"{text:>{width}}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per run (default 5000)")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source sessions (default 20)")
    parser.add_argument("--size", type=int, default=4096, help="message size in octets (default 4096)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each relay, interleaved (default 3)")
    parser.add_argument("--only", choices=RELAYS, help="run one relay only")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take (default 300)")
    parser.add_argument("--no-strace", action="store_true", help="skip the extra runs under strace")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, queues) and say where")
    parser.add_argument("--json", help="write the results to this file")
    options = parser.parse_args()
    relays = [options.only] if options.only else list(RELAYS)
    if "postfix" in relays:
        why = postfixUsable()
        if why:
            if options.only:
                raise SystemExit(f"postfix: {why}")
            print(f"postfix skipped: {why}", file=sys.stderr)
            relays.remove("postfix")
    for name in ("smtp-sink", "smtp-source"):
        tool(name)

    results, straceResults, disk, loads = [], {}, [], []
    with scratchArea("mailproto-relay-bench-", options.keep) as (children, scratch):
        fsType = filesystemOf(scratch)
        load = os.getloadavg()[0]
        loads.append(load)
        if load > 0.5:
            print(f"note: the load average is {load:.1f} before starting ({os.cpu_count()} CPUs):"
                  " other work will show in the results", file=sys.stderr)
        disk.append(diskCommitRate(scratch))
        print(f"disk ({fsType} at {scratch}): {disk[0]:.0f} serial commits/s "
              f"(4 KiB write + fsync + rename + dir fsync; {1e6 / disk[0]:.0f} us each)", file=sys.stderr)
        number = 0
        for rep in range(options.repeat):
            for relayName in relays if rep % 2 == 0 else relays[::-1]:
                number += 1
                try:
                    result = runOnce(relayName, children, scratch, number, options)
                except Failed as e:
                    print(f"  {relayName:<10} FAILED: {e}", file=sys.stderr)
                    continue
                result["repetition"] = rep
                results.append(result)
                show(result)
        loads.append(os.getloadavg()[0])
        disk.append(diskCommitRate(scratch))
        print(f"disk, after the timed runs: {disk[1]:.0f} serial commits/s", file=sys.stderr)
        if not options.no_strace:
            if shutil.which("strace") is None:
                print("strace is not installed: no fsync count for Postfix (apt-get install strace)", file=sys.stderr)
            else:
                for relayName in relays:
                    number += 1
                    try:
                        result = runOnce(relayName, children, scratch, number, options, strace=True)
                    except Failed as e:
                        print(f"  {relayName:<10} (strace) FAILED: {e}", file=sys.stderr)
                        continue
                    straceResults[relayName] = result
                    show(result)

    summary = {}
    for relayName in relays:
        runs = [r for r in results if r["relay"] == relayName]
        summary[relayName] = {
            "endToEnd": median([r["endToEnd"] for r in runs]),
            "accept": median([r["accept"] for r in runs]),
            "cpuPerMessage": median([r["cpuPerMessage"] for r in runs]),
            "logFsyncs": median([r.get("logFsyncs") for r in runs]),
            "straceFsyncs": straceResults.get(relayName, {}).get("straceFsyncs"),
            "runs": [r["endToEnd"] for r in runs],
            "failedRuns": sum(1 for r in runs if r["problems"]) + options.repeat - len(runs),
        }

    print(f"\ndurable relay, end to end: smtp-source -s {options.sessions} -m {options.messages} -l {options.size} -d"
          f" -> relay -> smtp-sink, 127.0.0.1; median of {options.repeat}")
    print(f"disk bound ({fsType}): {disk[0]:.0f} serial commits/s before, {disk[-1]:.0f} after"
          f" (4 KiB write + fsync + rename + dir fsync)")
    print(f"load average (1 min): {loads[0]:.1f} before, {loads[-1]:.1f} after the timed runs (their own"
          f" processes, waiting for fsync, count in it); {os.cpu_count()} CPUs\n")
    print(f"{'':<19}{'end-to-end':>11}{'accept':>9}{'CPU':>8}{'fsyncs/msg':>12}{'fsyncs/msg':>12}")
    print(f"{'relay':<19}{'msg/s':>11}{'msg/s':>9}{'ms/msg':>8}{'(its log)':>12}{'(strace)':>12}  end-to-end runs")
    for relayName in relays:
        s = summary[relayName]
        runs = ", ".join("n/a" if r is None else f"{r:.0f}" for r in s["runs"])
        if s["failedRuns"]:
            runs += f"; {s['failedRuns']} failed"
        print(f"{relayName:<19}{cell(s['endToEnd'], 11)}{cell(s['accept'], 9)}"
              f"{cell(s['cpuPerMessage'] and 1000 * s['cpuPerMessage'], 8, 2)}"
              f"{cell(s['logFsyncs'], 12, 2)}{cell(s['straceFsyncs'], 12, 2)}  {runs}")
    line = None
    if len(relays) == 2:
        m, p = summary["mailproto"], summary["postfix"]
        e2e, acc = ratio(m["endToEnd"], p["endToEnd"]), ratio(m["accept"], p["accept"])
        print(f"{'mailproto/postfix':<19}{cell(e2e, 10, 2, 'x')} {cell(acc, 8, 2, 'x')} "
              f"{cell(ratio(m['cpuPerMessage'], p['cpuPerMessage']), 7, 2, 'x')}")
        # The disk's speed drifts between runs: the ratio within each
        # repetition (both relays, one after the other) cancels the drift.
        pairs = {}
        for r in results:
            pairs.setdefault(r["repetition"], {})[r["relay"]] = r
        paired = [ratio(pair["mailproto"]["endToEnd"], pair["postfix"]["endToEnd"])
                  for pair in pairs.values() if len(pair) == 2]
        pairedRatio = median(paired)
        print(f"  per repetition, end to end: {', '.join(cell(x, 0, 2, 'x') for x in paired)}"
              f" (median {cell(pairedRatio, 0, 2, 'x')})")
        summary["pairedRatio"] = pairedRatio
        if e2e is not None:
            line = (f"mailproto relays {m['endToEnd']:.0f} msg/s end to end, {e2e:.2f}x Postfix "
                    f"({p['endToEnd']:.0f} msg/s; per repetition {cell(pairedRatio, 0, 2, 'x')}); "
                    f"accepts {m['accept']:.0f} vs {p['accept']:.0f} msg/s")
    elif summary[relays[0]]["endToEnd"] is not None:
        s = summary[relays[0]]
        line = f"{relays[0]} relays {s['endToEnd']:.0f} msg/s end to end; accepts {s['accept']:.0f} msg/s"
    if line:
        fsyncs = summary.get("mailproto", {}).get("logFsyncs")
        if fsyncs is not None:
            line += f"; mailproto {fsyncs:.2f} fsyncs/msg"
        print(f"\nsummary: {line}; the disk does {median(disk):.0f} serial commits/s.")
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"messages": options.messages, "sessions": options.sessions, "size": options.size,
                       "repeat": options.repeat, "diskCommitsPerSecond": disk, "summary": summary,
                       "runs": results, "strace": straceResults}, f, indent=2)
    if any(s["failedRuns"] for name, s in summary.items() if name in relays):
        raise SystemExit(1)


def filesystemOf(path):
    """
    @return: the type of the filesystem C{path} is on, as /proc/mounts says.
    """
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")):
                    if len(fields[1]) >= len(best):
                        best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


if __name__ == "__main__":
    main()
