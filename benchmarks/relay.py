# Copyright (c) mailproto authors. See LICENSE for details.
"""
Durable relay throughput: smtp-source -> relay -> smtp-sink on 127.0.0.1,
mailproto's `twistd mailrelay` (with one and with two worker processes)
and Postfix side by side in one run.

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
    (mailproto's parent and its workers; Postfix's master and its
    daemons) from the start of the load to the end of the run, in all
    and for each process (by its role: parent, worker N; smtpd,
    cleanup, qmgr, smtp...; and the daemons master reaped); and how long
    each live process's threads were ready to run but waited for a CPU
    (/proc/PID/task/TID/schedstat);
  - fsyncs per message: mailproto's own count, from the line it logs when
    it stops (with --workers 1 only: with more, that count is the
    parent's alone); for all, when strace is installed, one more run of
    each under `strace -f --seccomp-bpf -c -e trace=fsync,fdatasync`
    (not timed).

The relays: mailrelay-Nw for each N of --workers (`twistd mailrelay
--workers N`: with 1, one process; with N > 1, a parent that keeps the
queue and delivers, and N workers that take mail in), and postfix.  The
runs are interleaved, in an order that rotates from one repetition to
the next, and the median of the repetitions is reported with the ratios
of each mailrelay to Postfix, of the last mailrelay to the first (how it
scales with workers), and the same ratios within each repetition.  The
disk's own rate of serial durable commits (4 KiB write, fsync, rename,
directory fsync, for about 2 s, in the filesystem the queues are in) is
printed first, as the physical bound.

With --profile, one more run of each mailrelay (not timed) under
py-spy (`py-spy record --nonblocking` on every one of its processes):
where each process spends its CPU, by part of the relay.

    python benchmarks/relay.py [--messages N] [--sessions S] [--size OCTETS]
                               [--repeat R] [--workers 1,2] [--only mailproto|postfix]
                               [--profile] [--json FILE]

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
import statistics
import subprocess
import sys
import tempfile
import time

from _common import (  # benchmarks/_common.py
    stopProcessGroup,
    STOPPED,
    Failed,
    Sink,
    countFiles,
    freePort,
    mailrelayCommand,
    processCPU,
    processWaits,
    roles,
    settle,
    tail,
    tool,
    waitForGreeting,
    waitForWorkers,
    workerCounts,
)

FAMILIES = ["mailproto", "postfix"]
SENDER, RECIPIENT = "bench@example.org", "sink@example.com"
STOP_GRACE = 10
POLL = 0.005
#: py-spy's samples per second, for --profile.
PROFILE_RATE = 200

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


class Children:
    """
    Every process started here, each the leader of a process group of its
    own (so a Ctrl-C on the terminal does not reach it half-way, and its
    children go with it): stopped by SIGTERM, then SIGKILL to the group.
    """

    def __init__(self):
        self.processes = []

    def start(self, args, **kw):
        """
        Start C{args} (the arguments of L{subprocess.Popen}) as the leader
        of a session of its own.
        """
        process = subprocess.Popen(args, start_new_session=True, **kw)
        self.processes.append(process)
        return process

    def stop(self, process, grace=STOP_GRACE, pid=None):
        """
        SIGTERM to C{pid} (default: the process itself), wait at most
        C{grace} seconds, then SIGKILL its whole group.
        """
        stopProcessGroup(process, grace, pid)
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
        if SUSPECT[family(relay)].search(line):
            count += 1
            shape = re.sub(r"\d+|[0-9A-F]{10,}", "#", line.split("] ", 1)[-1])[:120]
            if shape not in seen and len(examples) < limit:
                seen.add(shape)
                examples.append(line.strip()[:300])
    return count, examples


def family(relayName):
    """
    @return: C{"mailproto"} for C{mailrelay-Nw}, else C{relayName}.
    """
    return "mailproto" if relayName.startswith("mailrelay-") else relayName


def workersOf(relayName):
    """
    @return: N of C{mailrelay-Nw}.
    """
    return int(relayName[len("mailrelay-"):-1])


class MailprotoRelay:
    """
    C{twistd -n mailrelay --workers N} with a spool of its own; its
    defaults for connections (50, 20 per destination, 100 messages each).
    """

    def __init__(self, children, root, port, sinkPort, workers, strace=None):
        self.name = f"mailrelay-{workers}w"
        self.children = children
        self.root = root
        self.port = port
        self.spool = os.path.join(root, "spool")
        self.log = os.path.join(root, "relay.log")
        argv, env = mailrelayCommand(port, self.spool, sinkPort, workers, root)
        self.strace = strace
        if strace:
            argv = strace + argv
        with open(self.log, "ab") as log:
            self.process = children.start(argv, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        waitForGreeting(port, self.process, self.log)
        waitForWorkers(self.log, workers, self.process)

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


#: The parts of the relay a profile's samples are counted in: the first
#: of these whose files a sample's stack has, from its innermost frame
#: out.  Modules that both sides use (replies, commands, the data's
#: transparency, Deferreds) are in none: their samples count for the part
#: that called them.
PARTS = [
    ("log lines", ("/twisted/logger/", "/mailproto/_relayd/_logs.py")),
    ("parent and workers (AMP)", ("/twisted/protocols/amp.py", "/mailproto/_relayd/_workerprotocol.py",
                                  "/mailproto/_relayd/_workers.py", "/mailproto/_relayd/_worker.py",
                                  "/mailproto/_relayd/_sharedlimits.py", "/mailproto/_relayd/_workermetrics.py")),
    ("spool: files, fsync, index", ("/mailproto/_queue.py", "/mailproto/_intakequeue.py", "/mailproto/_spoollock.py")),
    ("sending on: client, relaying manager", (
        "/mailproto/_client.py", "/mailproto/_session.py", "/mailproto/_relaymanager.py", "/mailproto/_smarthost.py",
        "/mailproto/_attempts.py", "/mailproto/_relayers.py", "/mailproto/_scheduler.py", "/mailproto/_jobs.py",
        "/mailproto/_connection.py", "/mailproto/_recorder.py", "/mailproto/_readahead.py", "/mailproto/_verdicts.py",
        "/mailproto/_mx.py", "/mailproto/_reports.py", "/mailproto/_bounce.py")),
    ("taking in: SMTP server, relay policy", (
        "/mailproto/_server.py", "/mailproto/_relay.py", "/mailproto/_intake.py", "/mailproto/_headerpolicy.py",
        "/mailproto/_recipients.py", "/mailproto/_relayd/_connlimits.py", "/mailproto/_relayd/_submission.py",
        "/mailproto/_relayd/_proxy.py")),
]
#: A sample whose innermost frame is one of these functions is of a
#: thread woken from a wait (for events, for work) and not yet running:
#: py-spy counts a thread that is ready to run as active, whether it runs
#: or waits for a CPU.
WAITS = ("EPollReactor.doPoll", "Condition.wait", "Event.wait", "Thread.join")
WAITING = "woken, not yet running (epoll, thread pool)"
#: Where a sample with none of L{PARTS} in its stack is counted, by its
#: innermost frame.
GENERIC = [
    ("reactor, sockets, Deferreds", ("/twisted/internet/",)),
    ("threads", ("/threading.py", "/twisted/python/threadpool.py", "/twisted/_threads/", "/queue.py")),
]
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


#: The functions that start a process (a worker's C{main} runs its
#: reactor): in every sample, and so in no part.
ENTRIES = ("<module>", "main")


def partOf(frames):
    """
    @param frames: the function and file of each of a sample's frames,
        innermost first.
    @return: the part of the relay (L{PARTS}, else L{GENERIC}) the sample
        counts for, or C{"other"}.
    """
    if frames and frames[0][0] in WAITS:
        return WAITING
    for table in (PARTS, GENERIC):
        for function, path in frames:
            if function in ENTRIES:
                continue
            for part, markers in table:
                if any(marker in path for marker in markers):
                    return part
    return "other"


def readProfile(path, top=10):
    """
    Read py-spy's raw output (C{--format raw --threads --full-filenames}:
    one line per stack, its frames outermost first, then its count).

    @return: the samples, their shares by part of the relay (L{partOf})
        and by thread (the main thread, the others), the C{top}
        functions the most samples were in (innermost frame), and the
        C{top} functions of mailproto the most samples were in or under.
    """
    parts, threads, functions, inclusive, total = {}, {}, {}, {}, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            count = int(count)
            frames = stack.split(";")
            thread = "main" if frames and frames[0].endswith(": MainThread") else "other"
            if frames and frames[0].startswith("thread ("):
                frames = frames[1:]
            parsed = [FRAME.match(frame) for frame in reversed(frames)]
            part = partOf([(match.group("function"), match.group("file")) for match in parsed if match])
            total += count
            parts[part] = parts.get(part, 0) + count
            threads[thread] = threads.get(thread, 0) + count
            if parsed and parsed[0]:
                name = frameName(parsed[0])
                functions[name] = functions.get(name, 0) + count
            for name in {frameName(match) for match in parsed if match and "/mailproto/" in match.group("file")}:
                inclusive[name] = inclusive.get(name, 0) + count
    share = (lambda n: n / total) if total else (lambda n: 0.0)

    def ranked(counts):
        return [[name, share(n)] for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]]

    return {
        "samples": total,
        "parts": {part: share(n) for part, n in sorted(parts.items(), key=lambda item: -item[1])},
        "threads": {thread: share(n) for thread, n in threads.items()},
        "functions": ranked(functions),
        "inclusive": ranked(inclusive),
    }


def frameName(match):
    """
    @return: a frame's function and the end of its file's path.
    """
    where = match.group("file")
    short = "/".join(where.split("/")[-2:]) if "/mailproto/" in where or "/twisted/" in where else where.rsplit("/", 1)[-1]
    return f"{match.group('function')} ({short})"


class Profiler:
    """
    py-spy on every process of a relay (C{py-spy record --nonblocking}:
    sampled without being stopped), from L{attach} until L{finish}.
    """

    def __init__(self, children, directory, rate=PROFILE_RATE):
        self.children = children
        self.directory = directory
        self.rate = rate
        self.spies = {}

    def attach(self, session):
        """
        Start sampling every process of the relay whose session C{session}
        is, and wait (at most 30 s) until each is sampled.
        """
        path = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        self.session = session
        for pid, name in roles(session).items():
            label = name.replace(" ", "-")
            output, log = (os.path.join(self.directory, f"py-spy-{label}.{kind}") for kind in ("txt", "log"))
            with open(log, "wb") as logFile:
                spy = self.children.start(
                    [path, "record", "--pid", str(pid), "--rate", str(self.rate), "--nonblocking", "--threads",
                     "--full-filenames", "--format", "raw", "-o", output],
                    stdin=subprocess.DEVNULL, stdout=logFile, stderr=logFile)
            self.spies[name] = (spy, output, log)
        deadline = time.monotonic() + 30
        for name, (spy, _, log) in self.spies.items():
            while "Sampling process" not in tail(log) and spy.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if "Sampling process" not in tail(log):
                raise Failed(f"py-spy does not sample {name}: {tail(log, 5)}")
        self.cpu, self.waits = processCPU(session), processWaits(session)
        self.start = time.perf_counter()

    def finish(self, messages):
        """
        Stop sampling (SIGINT: py-spy writes what it has).

        @return: for each process, its CPU time per message and the time
            its threads waited for a CPU (from /proc, over the time
            sampled), the time py-spy found them active, and what
            L{readProfile} makes of its samples; and the sampling's rate
            and length.
        """
        seconds = time.perf_counter() - self.start
        cpu, waits = processCPU(self.session), processWaits(self.session)
        for spy, _, _ in self.spies.values():
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        processes = {}
        for name, (spy, output, log) in self.spies.items():
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                pass
            self.children.stop(spy, grace=1)
            if not os.path.exists(output):
                raise Failed(f"py-spy wrote nothing for {name}: {tail(log, 5)}")
            profile = readProfile(output)
            profile["cpuPerMessage"] = (cpu.get(name, 0) - self.cpu.get(name, 0)) / messages
            profile["waitPerMessage"] = (waits.get(name, 0) - self.waits.get(name, 0)) / messages
            # More than the CPU time where threads wait for a CPU: py-spy
            # counts those as active.
            profile["sampledSecondsPerMessage"] = profile["samples"] / self.rate / messages
            processes[name] = profile
        return {"rate": self.rate, "seconds": seconds, "messages": messages, "processes": processes}


def startRelay(relayName, children, root, port, sinkPort, strace):
    """
    @return: a fresh relay of C{relayName} (C{mailrelay-Nw} or
        C{postfix}), ready.
    """
    if family(relayName) == "mailproto":
        return MailprotoRelay(children, root, port, sinkPort, workersOf(relayName), strace=strace)
    return PostfixRelay(children, root, port, sinkPort, strace=strace)


def runOnce(relayName, children, scratch, number, options, strace=False, profile=False):
    """
    One run: a fresh sink and a fresh relay, the load, the wait until the
    sink has every message and the queue is empty; under strace or
    py-spy (L{Profiler}) if asked.

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
        sink = Sink(sinkPort, options.messages, start=children.start)
        waitForGreeting(sinkPort, sink.process, os.devnull)
        relay = startRelay(relayName, children, root, relayPort, sinkPort, prefix)
        profiler = Profiler(children, root) if profile else None
        if profiler:
            profiler.attach(relay.process.pid)
        deadline = time.monotonic() + options.timeout
        source = [
            tool("smtp-source"), "-s", str(options.sessions), "-m", str(options.messages), "-l", str(options.size),
            "-d", "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{relayPort}",
        ]
        sourceLog = os.path.join(root, "smtp-source.log")
        cpuBefore, waitsBefore = processCPU(relay.process.pid), processWaits(relay.process.pid)
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
        cpu = processCPU(relay.process.pid)
        cpu = {name: seconds - cpuBefore.get(name, 0) for name, seconds in cpu.items()}
        waits = {name: seconds - waitsBefore.get(name, 0) for name, seconds in processWaits(relay.process.pid).items()}
        profiled = profiler.finish(options.messages) if profiler else None
        stats = relay.stop()
        time.sleep(0.1)  # the sink's last counters
        received = sink.count
        if received != options.messages:
            problems.append(f"the sink received {received} messages, not {options.messages}")
        if stats["delivered"] != options.messages:
            problems.append(f"the relay says it delivered {stats['delivered']}, not {options.messages}")
        if stats["queued"]:
            problems.append(f"{stats['queued']} queued when the relay stopped")
        logPath = os.path.join(root, "relay.log" if family(relayName) == "mailproto" else "maillog")
        suspects, examples = suspectLines(relayName, logPath)
        result = {
            "relay": relayName,
            "strace": strace,
            "profile": profiled,
            "accept": options.messages / (accepted - start) if not code else None,
            "endToEnd": options.messages / (max(emptied, sink.reachedAt or emptied) - start) if not problems else None,
            "seconds": max(emptied, sink.reachedAt or emptied) - start,
            "cpuPerMessage": sum(cpu.values()) / options.messages,
            "cpuByProcess": {name: seconds / options.messages for name, seconds in sorted(cpu.items())},
            # Ready to run, waiting for a CPU: the live processes only.
            "waitByProcess": {name: seconds / options.messages for name, seconds in sorted(waits.items())},
            "stats": stats,
            "received": received,
            "problems": problems,
            "suspects": suspects,
            "examples": examples,
            "log": logPath,
        }
        # With workers, the relay's count is its parent's alone.
        if relayName == "mailrelay-1w":
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
    parts = [f"  {result['relay']:<12}"]
    if result["strace"]:
        parts.append("(strace, not timed)")
    if result["profile"]:
        parts.append("(py-spy, not timed)")
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
    if not result["strace"]:
        print("      CPU ms/msg by process: " + ", ".join(
            f"{name} {1000 * seconds:.2f}" for name, seconds in busiest(result["cpuByProcess"])), file=sys.stderr)
        print("      waiting for a CPU, ms/msg: " + ", ".join(
            f"{name} {1000 * seconds:.2f}" for name, seconds in busiest(result["waitByProcess"])), file=sys.stderr)
    for name, process in (result["profile"] or {}).get("processes", {}).items():
        print(f"      py-spy, {name}: {process['samples']} samples, {1000 * process['cpuPerMessage']:.2f} ms/msg; "
              + ", ".join(f"{part} {share:.0%}" for part, share in process["parts"].items()), file=sys.stderr)
    for problem in result["problems"]:
        print(f"      PROBLEM: {problem}", file=sys.stderr)
    for example in result["examples"]:
        print(f"      log: {example}", file=sys.stderr)


def busiest(byProcess, limit=6):
    """
    @return: the C{limit} processes of C{byProcess} that used the most
        CPU, as C{(name, seconds)}, the rest added up as C{"others"}.
    """
    ranked = sorted(byProcess.items(), key=lambda item: -item[1])
    rest = sum(seconds for _, seconds in ranked[limit:])
    return ranked[:limit] + ([("others", rest)] if ranked[limit:] else [])


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


def comparisons(relays):
    """
    @return: the pairs of relays compared, C{(a, b)} for a / b: each
        mailrelay with Postfix, and the most workers with the fewest.
    """
    mailrelays = [name for name in relays if family(name) == "mailproto"]
    pairs = [(name, "postfix") for name in mailrelays if "postfix" in relays]
    if len(mailrelays) > 1:
        pairs.append((mailrelays[-1], mailrelays[0]))
    return pairs


def summarise(relays, results, straceResults, repeat):
    """
    @return: for each relay, the medians of its timed runs, and the
        comparisons (L{comparisons}): the ratios of the medians and the
        ratios within each repetition.
    """
    summary = {}
    for relayName in relays:
        runs = [r for r in results if r["relay"] == relayName]
        processes = sorted({name for r in runs for name in r["cpuByProcess"]})
        summary[relayName] = {
            "endToEnd": median([r["endToEnd"] for r in runs]),
            "accept": median([r["accept"] for r in runs]),
            "cpuPerMessage": median([r["cpuPerMessage"] for r in runs]),
            "cpuByProcess": {name: median([r["cpuByProcess"].get(name, 0) for r in runs]) for name in processes},
            "waitByProcess": {name: median([r["waitByProcess"].get(name, 0) for r in runs])
                              for name in sorted({name for r in runs for name in r["waitByProcess"]})},
            "logFsyncs": median([r.get("logFsyncs") for r in runs]),
            "straceFsyncs": straceResults.get(relayName, {}).get("straceFsyncs"),
            "runs": [r["endToEnd"] for r in runs],
            "failedRuns": sum(1 for r in runs if r["problems"]) + repeat - len(runs),
        }
    byRepetition = {}
    for r in results:
        byRepetition.setdefault(r["repetition"], {})[r["relay"]] = r
    compared = []
    for a, b in comparisons(relays):
        pairs = [pair for _, pair in sorted(byRepetition.items()) if a in pair and b in pair]
        compared.append({
            "a": a,
            "b": b,
            **{key: ratio(summary[a][key], summary[b][key]) for key in ("endToEnd", "accept", "cpuPerMessage")},
            "paired": [ratio(pair[a]["endToEnd"], pair[b]["endToEnd"]) for pair in pairs],
            "pairedAccept": [ratio(pair[a]["accept"], pair[b]["accept"]) for pair in pairs],
        })
        compared[-1]["pairedMedian"] = median(compared[-1]["paired"])
        compared[-1]["pairedAcceptMedian"] = median(compared[-1]["pairedAccept"])
    summary["comparisons"] = compared
    return summary


def shownName(relayName):
    return "Postfix" if relayName == "postfix" else relayName


def printSummary(relays, summary, options, disk, loads, fsType):
    print(f"\ndurable relay, end to end: smtp-source -s {options.sessions} -m {options.messages} -l {options.size} -d"
          f" -> relay -> smtp-sink, 127.0.0.1; median of {options.repeat}")
    print(f"disk bound ({fsType}): {disk[0]:.0f} serial commits/s before, {disk[-1]:.0f} after"
          f" (4 KiB write + fsync + rename + dir fsync)")
    print(f"load average (1 min): {loads[0]:.1f} before, {loads[-1]:.1f} after the timed runs (their own"
          f" processes, waiting for fsync, count in it); {os.cpu_count()} CPUs\n")
    print(f"{'':<28}{'end-to-end':>11}{'accept':>9}{'CPU':>8}{'fsyncs/msg':>12}{'fsyncs/msg':>12}")
    print(f"{'relay':<28}{'msg/s':>11}{'msg/s':>9}{'ms/msg':>8}{'(its log)':>12}{'(strace)':>12}  end-to-end runs")
    for relayName in relays:
        s = summary[relayName]
        runs = ", ".join("n/a" if r is None else f"{r:.0f}" for r in s["runs"])
        if s["failedRuns"]:
            runs += f"; {s['failedRuns']} failed"
        print(f"{relayName:<28}{cell(s['endToEnd'], 11)}{cell(s['accept'], 9)}"
              f"{cell(s['cpuPerMessage'] and 1000 * s['cpuPerMessage'], 8, 2)}"
              f"{cell(s['logFsyncs'], 12, 2)}{cell(s['straceFsyncs'], 12, 2)}  {runs}")
    for c in summary["comparisons"]:
        print(f"{shownName(c['a']) + ' / ' + shownName(c['b']):<28}{cell(c['endToEnd'], 10, 2, 'x')} "
              f"{cell(c['accept'], 8, 2, 'x')} {cell(c['cpuPerMessage'], 7, 2, 'x')}"
              f"   per repetition, end to end: {', '.join(cell(x, 0, 2, 'x') for x in c['paired'])}"
              f" (median {cell(c['pairedMedian'], 0, 2, 'x')})")
    print("\nCPU ms per message, by process (median):")
    for relayName in relays:
        print(f"  {relayName:<12} " + ", ".join(
            f"{name} {1000 * seconds:.2f}" for name, seconds in busiest(summary[relayName]["cpuByProcess"])))
    lines = []
    for c in summary["comparisons"]:
        if c["endToEnd"] is not None:
            lines.append(f"{c['a']} relays {summary[c['a']]['endToEnd']:.0f} msg/s end to end, {c['endToEnd']:.2f}x"
                         f" {shownName(c['b'])} ({summary[c['b']]['endToEnd']:.0f} msg/s; per repetition"
                         f" {cell(c['pairedMedian'], 0, 2, 'x')}); accepts {summary[c['a']]['accept']:.0f} vs"
                         f" {summary[c['b']]['accept']:.0f} msg/s")
    if not lines and summary[relays[0]]["endToEnd"] is not None:
        s = summary[relays[0]]
        lines.append(f"{relays[0]} relays {s['endToEnd']:.0f} msg/s end to end; accepts {s['accept']:.0f} msg/s")
    if lines:
        print("\nsummary: " + ";\n         ".join(lines) + f"; the disk does {median(disk):.0f} serial commits/s.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per run (default 5000)")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source sessions (default 20)")
    parser.add_argument("--size", type=int, default=4096, help="message size in octets (default 4096)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each relay, interleaved (default 3)")
    parser.add_argument("--workers", default="1,2",
                        help="mailproto's relay with each of these --workers (default 1,2: mailrelay-1w, mailrelay-2w)")
    parser.add_argument("--only", choices=FAMILIES, help="run mailproto's relays only, or Postfix only")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take (default 300)")
    parser.add_argument("--no-strace", action="store_true", help="skip the extra runs under strace")
    parser.add_argument("--profile", action="store_true",
                        help="one more run of each mailrelay under py-spy (not timed): where its processes spend CPU")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, queues) and say where")
    parser.add_argument("--json", help="write the results to this file")
    options = parser.parse_args()
    try:
        workers = workerCounts(options.workers)
    except ValueError as e:
        parser.error(f"--workers: {e}")
    relays = [f"mailrelay-{count}w" for count in workers] + ["postfix"]
    relays = [name for name in relays if options.only in (None, family(name))]
    if not relays:
        parser.error("no relay to run (--workers none and --only mailproto)")
    if "postfix" in relays:
        why = postfixUsable()
        if why:
            if options.only:
                raise SystemExit(f"postfix: {why}")
            print(f"postfix skipped: {why}", file=sys.stderr)
            relays.remove("postfix")
    for name in ("smtp-sink", "smtp-source"):
        tool(name)

    results, straceResults, profiles, disk, loads = [], {}, {}, [], []
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
            shift = rep % len(relays)
            for relayName in relays[shift:] + relays[:shift]:
                number += 1
                try:
                    result = runOnce(relayName, children, scratch, number, options)
                except Failed as e:
                    print(f"  {relayName:<12} FAILED: {e}", file=sys.stderr)
                    continue
                result["repetition"] = rep
                results.append(result)
                show(result)
        loads.append(os.getloadavg()[0])
        disk.append(diskCommitRate(scratch))
        print(f"disk, after the timed runs: {disk[1]:.0f} serial commits/s", file=sys.stderr)
        extra = []
        if not options.no_strace:
            if shutil.which("strace") is None:
                print("strace is not installed: no fsync count for Postfix (apt-get install strace)", file=sys.stderr)
            else:
                extra += [(name, "strace", straceResults) for name in relays]
        if options.profile:
            extra += [(name, "profile", profiles) for name in relays if family(name) == "mailproto"]
        for relayName, how, kept in extra:
            number += 1
            try:
                result = runOnce(relayName, children, scratch, number, options, **{how: True})
            except Failed as e:
                print(f"  {relayName:<12} ({how}) FAILED: {e}", file=sys.stderr)
                continue
            kept[relayName] = result
            show(result)

    summary = summarise(relays, results, straceResults, options.repeat)
    printSummary(relays, summary, options, disk, loads, fsType)
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"messages": options.messages, "sessions": options.sessions, "size": options.size,
                       "repeat": options.repeat, "workers": workers, "relays": relays,
                       "diskCommitsPerSecond": disk, "loadAverage": loads, "summary": summary,
                       "runs": results, "strace": straceResults,
                       "profiles": {name: r["profile"] for name, r in profiles.items()}}, f, indent=2)
    if any(summary[name]["failedRuns"] for name in relays):
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
