# Copyright (c) mailproto authors. See LICENSE for details.
"""
What the benchmarks share: finding Postfix's tools, free loopback ports,
starting and watching a server process (CPU time and memory from /proc),
and a description of the machine.
"""

import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICKS = os.sysconf("SC_CLK_TCK")
START_DEADLINE = 30


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
            args += [f"127.0.0.1:{self.port}", "1024"]
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
