# Copyright (c) mailproto authors. See LICENSE for details.
"""
Memory: how much a server's resident set grows while it receives one large
message (50 MiB by default) from Postfix's smtp-source on 127.0.0.1.

Servers (those of C{_servers.py}, every one without a size limit):
mailproto's C{ESMTP} with a discarding delivery that takes the message line
by line (C{IMessage}), the same with a chunked delivery
(C{IMessageStream}), twisted.mail's C{ESMTP} with the line delivery, and
aiosmtpd with a handler that returns 250.

Each run starts a fresh server and warms it up with one small message
(C{smtp-source -m 1 -l 1000}), so that what every connection and message
costs anyway is already in the baseline.  Then its peak resident set size
(VmHWM) is reset to the current one (Linux's C{clear_refs} 5), the
resident set size (VmRSS) is read as the baseline, smtp-source sends the
large message in one session (C{smtp-source -s 1 -m 1 -l SIZE}), and once
the server has answered it:

  - growth: the peak resident set size minus the baseline, in MiB: what
    receiving the message cost at most, at any moment (the kernel keeps
    the peak, so memory freed again before the end counts too; no sampling
    is needed);
  - MiB/s: the message's size / smtp-source's run time.

The servers take turns within each repetition (the order rotates from one
repetition to the next), and the medians are reported.

    python benchmarks/memory.py [--size OCTETS] [--repeat R] [--servers A,B] [--json FILE]
"""

import argparse
import subprocess
import sys
import time

from _common import Server, median, tool, writeResults

SERVERS = ["mailproto", "mailproto-stream", "twisted.mail", "aiosmtpd"]
MiB = 1024 * 1024
RUN_TIMEOUT = 600


def sendMessage(port: int, length: int, what: str) -> float:
    """
    Send one message of C{length} octets of payload to 127.0.0.1:C{port}
    with smtp-source.

    @param what: the name of the server, for the error message.
    @return: smtp-source's run time, in seconds.
    """
    args = [tool("smtp-source"), "-s", "1", "-m", "1", "-l", str(length),
            "-f", "bench@example.org", "-t", "sink@example.com", "-M", "source.example", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    try:
        done = subprocess.run(args, timeout=RUN_TIMEOUT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"smtp-source against {what}: no answer to a {length}-octet message after {RUN_TIMEOUT} s")
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"smtp-source against {what} exited with status {done.returncode}: "
                         f"{done.stderr.decode(errors='replace').strip()}")
    return elapsed


def runOnce(kind: str, size: int) -> dict:
    """
    One run: a fresh server, the small message, the reset, the large message.

    @return: the measurements of the run.
    """
    server = Server(kind, maxSize=0)
    try:
        sendMessage(server.port, 1000, kind)
        server.resetPeak()
        baseline = server.rss()
        elapsed = sendMessage(server.port, size, kind)
        peak = server.peakRSS()
        after = server.rss()
    finally:
        server.stop()
    return {"growth_mib": peak - baseline, "mib_per_s": size / MiB / elapsed, "seconds": elapsed,
            "baseline_mib": baseline, "peak_mib": peak, "after_mib": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=50 * MiB, help="octets of the message (default 50 MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions, interleaved (default 3)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="servers to run")
    parser.add_argument("--json", help="write the results to this file")
    options = parser.parse_args()
    servers = options.servers.split(",")
    for name in servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")

    runs = {}
    for rep in range(options.repeat):
        shift = rep % len(servers)
        for kind in servers[shift:] + servers[:shift]:
            result = runOnce(kind, options.size)
            runs.setdefault(kind, []).append(result)
            print(f"  {kind:<17} +{result['growth_mib']:>7.1f} MiB peak  {result['mib_per_s']:>7.1f} MiB/s"
                  f"  (baseline {result['baseline_mib']:.1f} MiB, {result['after_mib']:.1f} MiB after)",
                  file=sys.stderr)

    results = []
    print(f"\nmemory: one {options.size / MiB:.4g} MiB message, median of {options.repeat}")
    print(f"  {'server':<17} {'growth MiB':>11} {'x size':>7} {'MiB/s':>8}")
    for kind in servers:
        growth = median([r["growth_mib"] for r in runs[kind]])
        speed = median([r["mib_per_s"] for r in runs[kind]])
        print(f"  {kind:<17} {growth:>11.1f} {growth / (options.size / MiB):>6.2f}x {speed:>8.1f}")
        results.append({"server": kind, "growth_mib": growth, "mib_per_s": speed, "runs": runs[kind]})
    writeResults(options.json, "memory", results, size=options.size, repeat=options.repeat)


if __name__ == "__main__":
    main()
