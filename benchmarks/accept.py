# Copyright (c) mailproto authors. See LICENSE for details.
"""
Accept throughput: Postfix's smtp-source (C) -> a server on 127.0.0.1 that
throws every message away, side by side in one run.

Servers: mailproto's C{ESMTP} with a discarding delivery (line by line,
the C{IMessage} interface), the same with a chunked delivery
(C{IMessageStream}), twisted.mail's C{ESMTP} with the same line delivery,
aiosmtpd with a handler that returns 250, and Postfix's smtp-sink as the
ceiling.  C{twisted-floor} is not an SMTP server: it answers each command
with a canned reply and looks only for the end of data, the least any
server on Twisted's reactor does (see C{_servers.py}).  And mailproto's
relay daemon, C{mailrelay-Nw} for each N of --workers (C{twistd
mailrelay --workers N}, default 1 and 2): it says 250 only once the
message is durable in its spool (in /tmp), and meanwhile sends it on to
an smtp-sink of its own that throws it away; its CPU and memory are
those of all its processes, and each of its runs ends once it has sent
on everything (not timed; C{_common.RelayServer}).  And C{sink-Nw}:
C{mailproto sink --workers N --quiet}, mailproto's sink on N processes
that share the listening socket, discarding as the other servers do
(C{_common.SinkWorkersServer}): the same work as twisted.mail's, on more
than one core.

Configurations (smtp-source sends HELO, a small header and LENGTH octets of
payload, one recipient per message):

  - C{20x10x4KiB}: C{smtp-source -s 20 -m 200 -d -l 4096}, 20 sessions of
    10 messages, repeated until MESSAGES have been sent;
  - C{100x1x4KiB}: C{smtp-source -s 100 -m MESSAGES -l 4096}, 100 sessions
    at a time, one message each;
  - C{4x1MiB}: C{smtp-source -s 4 -m MESSAGES/20 -d -l 1048576}.

Each run starts a fresh server, once the disk has written back what
earlier runs left (sync).  Reported per run: messages per second
(messages / wall time of the smtp-source runs), the server's CPU time (user
+ system, from /proc) per 1000 messages, its peak resident set size, and
smtp-source's own CPU time per 1000 messages (the load generator shares
the machine's cores with the server).
The servers take turns within each repetition (the order rotates from one
repetition to the next) and the medians are reported with their ratios to
twisted.mail and to smtp-sink.

    python benchmarks/accept.py [--messages N] [--repeat R] [--servers A,B]
                                [--workers 1,2] [--configs A,B] [--json FILE]
"""

import argparse
import resource
import subprocess
import sys
import time

from _common import (RELAY_KIND, cpuByProcess, knownServer, median, ratio, settle, startServer, tool, workerServers,
                     writeResults)

SERVERS = ["smtp-sink", "twisted-floor", "mailproto", "mailproto-stream", "twisted.mail", "aiosmtpd"]
# name: (sessions, messages per smtp-source run (None: all), payload octets, share of --messages)
CONFIGS = {
    "20x10x4KiB": (20, 200, 4096, 1),
    "100x1x4KiB": (100, None, 4096, 1),
    "4x1MiB": (4, None, 1024 * 1024, 1 / 20),
}
RUN_TIMEOUT = 600


def sourceRuns(config: str, messages: int):
    """
    @return: the smtp-source argument lists of one run of C{config}, and the
        number of messages they send.
    """
    sessions, perRun, length, share = CONFIGS[config]
    total = max(int(messages * share), sessions)
    base = [tool("smtp-source"), "-s", str(sessions), "-l", str(length),
            "-f", "bench@example.org", "-t", "sink@example.com", "-M", "source.example"]
    if perRun is None:
        keep = ["-d"] if length > 4096 else []
        return [base + keep + ["-m", str(total)]], total
    runs = max(total // perRun, 1)
    return [base + ["-d", "-m", str(perRun)]] * runs, runs * perRun


def childrenCPU() -> float:
    """
    @return: the user + system CPU seconds of this process's children that
        have ended and been waited for (the smtp-source runs).
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def runOnce(kind: str, config: str, messages: int) -> dict:
    runs, total = sourceRuns(config, messages)
    settle()
    server = startServer(kind)
    backlog = None
    try:
        cpu, processes = server.cpu(), cpuByProcess(server)
        clientCPU = childrenCPU()
        start = time.perf_counter()
        for args in runs:
            done = subprocess.run(args + [f"127.0.0.1:{server.port}"], timeout=RUN_TIMEOUT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode:
                raise SystemExit(f"smtp-source against {kind}: {done.stderr.decode(errors='replace').strip()}")
        elapsed = time.perf_counter() - start
        clientCPU = childrenCPU() - clientCPU
        cpu, processes = server.cpu() - cpu, cpuByProcess(server, processes)
        peak = server.peakRSS()
        if RELAY_KIND.match(kind):
            backlog = server.queued()
    finally:
        server.stop()
    result = {"msgs_per_s": total / elapsed, "cpu_s_per_1000": cpu / total * 1000, "peak_rss_mib": peak,
              "messages": total, "client_cpu_s_per_1000": clientCPU / total * 1000}
    if backlog is not None:
        # What the relay had yet to send on when the load ended, and the
        # CPU time of each of its processes.
        result["spooled_at_end"] = backlog
        result["cpu_s_per_1000_by_process"] = {name: seconds / total * 1000 for name, seconds in processes.items()}
    problems = list(getattr(server, "problems", []))
    if server.received is not None and server.received != total:
        problems.append(f"{kind} received {server.received} messages, not {total}")
    if problems:
        result["problems"] = problems
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000,
                        help="4 KiB messages per run (default 4000; the 1 MiB configuration sends 1/20 of it)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions, interleaved (default 3)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"servers to run, of {', '.join(SERVERS)}, mailrelay-Nw and sink-Nw (default all, with"
                             " those of --workers)")
    parser.add_argument("--workers", default="1,2",
                        help="also run mailproto's relay daemon and its sink with each of these --workers (default"
                             " 1,2; none: not at all), as mailrelay-1w, mailrelay-2w, sink-1w, sink-2w")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="configurations to run")
    parser.add_argument("--json", help="write the results to this file")
    options = parser.parse_args()
    try:
        relays = workerServers(options.workers)
    except ValueError as e:
        parser.error(f"--workers: {e}")
    servers = list(dict.fromkeys(options.servers.split(",") + relays))
    configs = options.configs.split(",")
    for name in servers:
        if not knownServer(name, SERVERS):
            parser.error(f"unknown server {name!r}; choose from {', '.join(SERVERS)}, mailrelay-Nw, sink-Nw")
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")

    runs = {}
    for config in configs:
        for rep in range(options.repeat):
            shift = rep % len(servers)
            for kind in servers[shift:] + servers[:shift]:
                result = runOnce(kind, config, options.messages)
                runs.setdefault((config, kind), []).append(result)
                spooled = (f"  {result['spooled_at_end']} left to send on at the end"
                           if "spooled_at_end" in result else "")
                print(f"  {config:<11} {kind:<17} {result['msgs_per_s']:>8.0f} msg/s "
                      f"{result['cpu_s_per_1000']:>6.3f} s CPU/1000  {result['peak_rss_mib']:>6.1f} MiB"
                      f"  smtp-source {result['client_cpu_s_per_1000']:.3f} s CPU/1000{spooled}",
                      file=sys.stderr)
                for problem in result.get("problems", []):
                    print(f"      PROBLEM: {problem}", file=sys.stderr)

    results = []
    for config in configs:
        medians = {kind: {key: median([r[key] for r in runs[(config, kind)]])
                          for key in ("msgs_per_s", "cpu_s_per_1000", "peak_rss_mib", "client_cpu_s_per_1000")}
                   for kind in servers}
        base = medians.get("twisted.mail", {}).get("msgs_per_s", float("nan"))
        ceiling = medians.get("smtp-sink", {}).get("msgs_per_s", float("nan"))
        print(f"\naccept {config}, median of {options.repeat}")
        print(f"  {'server':<17} {'msg/s':>8} {'vs twisted.mail':>16} {'vs smtp-sink':>13}"
              f" {'CPU s/1000':>11} {'peak RSS MiB':>13} {'smtp-source CPU s/1000':>23}")
        for kind in servers:
            m = medians[kind]
            print(f"  {kind:<17} {m['msgs_per_s']:>8.0f} {ratio(m['msgs_per_s'], base):>15.2f}x"
                  f" {ratio(m['msgs_per_s'], ceiling):>12.2f}x {m['cpu_s_per_1000']:>11.3f} {m['peak_rss_mib']:>13.1f}"
                  f" {m['client_cpu_s_per_1000']:>23.3f}")
            results.append({"config": config, "server": kind, **m,
                            "vs_twisted_mail": ratio(m["msgs_per_s"], base),
                            "vs_smtp_sink": ratio(m["msgs_per_s"], ceiling),
                            "runs": runs[(config, kind)]})
            if RELAY_KIND.match(kind):
                results[-1]["spooled_at_end"] = median([r["spooled_at_end"] for r in runs[(config, kind)]])
    writeResults(options.json, "accept", results, messages=options.messages, repeat=options.repeat,
                 workers=[int(RELAY_KIND.match(kind).group(1)) for kind in servers if RELAY_KIND.match(kind)])
    if any("problems" in r for rows in runs.values() for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
