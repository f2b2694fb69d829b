# Copyright (c) mailproto authors. See LICENSE for details.
"""
Receiving from pipelining clients: the dialogue of real mail servers'
clients (Postfix, Exim, mailproto's own), against servers on 127.0.0.1 that
throw every message away.

Part one, a pipelining load: SESSIONS connections at once, each sending
MESSAGES messages of SIZE octets over one connection (C{_pipeline_client.py}):
EHLO, then for each message C{MAIL FROM}, C{RCPT TO} and C{DATA} in one
write, their three replies (250, 250, 354), the message and the final dot
in one write, its reply (250); QUIT at the end.  smtp-source, which
C{accept.py} uses, never pipelines: it waits for each reply before the
next command.  A server that writes the three replies in separate segments
with Nagle's algorithm on makes each message wait for the client's delayed
ACK (about 40 ms on Linux); this benchmark shows it, smtp-source's does
not.  The servers are C{accept.py}'s (C{_servers.py}), with smtp-sink as
the ceiling, and, as there, mailproto's relay daemon with each number of
workers of --workers (C{mailrelay-1w}, C{mailrelay-2w}: durable before
250, sending on to an smtp-sink of its own) and its sink on that many
processes (C{sink-1w}, C{sink-2w}: C{mailproto sink --workers N --quiet},
throwing mail away).  All get the same pipelined
bytes, also those that do not offer PIPELINING (twisted.mail,
aiosmtpd): the table says which do.

Part two, Postfix as the client: a private Postfix (as C{relay.py} runs
it, root needed) whose relayhost is the server under test.  K messages
are injected with smtp-source into its smtpd, which puts them on hold
(not timed); then they are released (C{postsuper -H ALL}, and C{postkick}
asks the queue manager for what C{postqueue -f} would) and Postfix's smtp
client delivers them, pipelining and reusing connections, up to 20 at
once (see POSTFIX_SETTINGS).  Timed: from the release until Postfix has
logged C{status=sent} (or deferred, or bounced) for every message.

Each run starts a fresh server (and a fresh Postfix); the servers take
turns within each repetition, in an order that rotates; the medians are
reported with their ratio to smtp-sink.  Part one also reports the
server's CPU time per 1000 messages and its peak resident set size, as
C{accept.py} does.

    python benchmarks/pipeline.py [--quick] [--sessions N] [--messages M]
                                  [--repeat R] [--servers A,B] [--workers 1,2] [--clients P]
                                  [--postfix-messages K] [--postfix-servers A,B]
                                  [--no-postfix] [--tree DIR] [--json FILE]

--tree DIR runs mailproto's servers from another tree (another
revision's C{mailproto} package), to compare before and after a change.

Every run is bounded: a session starts no new message after --seconds, and
every wait has a deadline.  Every process started here is stopped and the
scratch directory removed on exit.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from _common import (
    ROOT,
    Failed,
    cpuByProcess,
    freePort,
    knownServer,
    median,
    pythonEnv,
    ratio,
    settle,
    startServer,
    tool,
    workerServers,
    writeResults,
)
from relay import PostfixRelay, postfixUsable, scratchArea

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = ["smtp-sink", "twisted-floor", "mailproto", "mailproto-stream", "twisted.mail", "aiosmtpd"]
POSTFIX_SERVERS = ["smtp-sink", "mailproto"]
SENDER, RECIPIENT = "bench@example.org", "sink@example.com"
QUICK = {"messages": 100, "repeat": 1, "postfix_messages": 200}
DEFAULTS = {"messages": 2000, "repeat": 3, "postfix_messages": 2000}
POLL = 0.01
# What "postqueue -f" asks of the queue manager (this Postfix has no pickup
# service, which postqueue insists on): flush dead destinations, ignore the
# time stamps, scan the deferred and the incoming queues.
KICK = ["public", "qmgr", "FADI"]
KICK_AGAIN = 1.0  # seconds without a message delivered before the next kick

# main.cf for part two, after relay.py's (relayhost = the server under
# test).  What the smtp client does is Postfix's default, written out: it
# pipelines whenever the server offers PIPELINING, keeps connections open
# for the next message while the destination has a backlog, and opens at
# most 20 at once (starting with 5).  smtpd holds every message it
# accepts, until the timed part releases them all.
POSTFIX_SETTINGS = """
smtp_connection_cache_on_demand = yes
smtp_connection_cache_time_limit = 2s
smtp_connection_reuse_count_limit = 0
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = $default_destination_concurrency_limit
initial_destination_concurrency = 5
smtpd_client_restrictions = check_client_access static:HOLD
"""


def shares(total: int, parts: int) -> list:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def loadOnce(kind: str, options) -> dict:
    """
    One run of part one: a fresh server, the client processes, their
    sessions.
    """
    settle()
    server = startServer(kind, root=options.tree)
    clients = []
    try:
        for sessions in shares(options.sessions, options.clients):
            if sessions:
                clients.append(subprocess.Popen(
                    [sys.executable, os.path.join(HERE, "_pipeline_client.py"), str(server.port), str(sessions),
                     str(options.messages), str(options.size), str(options.seconds)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pythonEnv(),
                ))
        for client in clients:
            if client.stdout.readline() != b"ready\n":
                raise Failed(f"a client did not get ready: {client.stderr.read().decode(errors='replace')[-2000:]}")
        cpu, processes = server.cpu(), cpuByProcess(server)
        for client in clients:
            client.stdin.write(b"go\n")
            client.stdin.flush()
        reports = []
        for client in clients:
            try:
                out, err = client.communicate(timeout=options.seconds + 120)
            except subprocess.TimeoutExpired:
                raise Failed(f"a client still runs {options.seconds + 120} s after the start")
            if client.returncode:
                raise Failed(f"a client exited with {client.returncode}: {err.decode(errors='replace')[-2000:]}")
            reports.append(json.loads(out.splitlines()[-1]))
        cpu, processes = server.cpu() - cpu, cpuByProcess(server, processes)
        peak = server.peakRSS()
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        server.stop()
    sent = sum(r["messages"] for r in reports)
    elapsed = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    problems = [example for r in reports for example in r["examples"]] + getattr(server, "problems", [])
    if server.received is not None and server.received != sent:
        problems.append(f"the server says it received {server.received} messages, the clients {sent}")
    return {
        "msgs_per_s": sent / elapsed if sent else float("nan"),
        "cpu_s_per_1000": cpu / sent * 1000 if sent else float("nan"),
        "peak_rss_mib": peak,
        "messages": sent,
        "seconds": elapsed,
        "errors": sum(r["errors"] for r in reports),
        "problems": problems,
        "limited": sent < options.sessions * options.messages,
        "pipelining": all(r["pipelining"] for r in reports),
        "client_cpu_s_per_1000": sum(r["cpu"] for r in reports) / sent * 1000 if sent else float("nan"),
        # For the relay daemon: the CPU time of each of its processes.
        "cpu_s_per_1000_by_process": {name: seconds / sent * 1000 for name, seconds in processes.items()} if sent else {},
    }


class LogCounter:
    """
    Counts the lines of Postfix's log that say a message was sent, deferred
    or bounced, reading only what was added since the last look.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = os.path.getsize(path)
        self.pending = b""
        self.counts = {"sent": 0, "deferred": 0, "bounced": 0}
        self.reused = 0
        self.examples = []

    def read(self) -> dict:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            found = re.search(rb" status=(sent|deferred|bounced) ", line)
            if found:
                status = found.group(1).decode()
                self.counts[status] += 1
                self.reused += b" conn_use=" in line
                if status != "sent" and len(self.examples) < 3:
                    self.examples.append(line.decode("utf-8", "replace")[:300])
        return self.counts


def kick(config: str, attempts: int = 5) -> None:
    """
    Ask Postfix's queue manager to deliver what is queued now (L{KICK}).
    postkick dies of SIGPIPE now and then when the queue manager closes the
    connection before it has written everything: it tries again.
    """
    for attempt in range(attempts):
        done = subprocess.run([tool("postkick"), "-c", config] + KICK, capture_output=True, timeout=60)
        if done.returncode == 0:
            return
        time.sleep(0.05)
    raise Failed(f"postkick {' '.join(KICK)}: exit status {done.returncode} {done.stderr!r}")


def countFiles(directory: str) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def postfixOnce(kind: str, options, children, scratch: str, number: int) -> dict:
    """
    One run of part two: a fresh server and a fresh Postfix relaying to it;
    the messages injected and held, then released and timed.
    """
    root = tempfile.mkdtemp(prefix=f"{number:02d}-{kind}-", dir=scratch)
    settle()
    server = startServer(kind, root=options.tree)
    relay = None
    try:
        relay = PostfixRelay(children, root, freePort(), server.port, settings=POSTFIX_SETTINGS)
        deadline = time.monotonic() + options.timeout
        inject = subprocess.run(
            [tool("smtp-source"), "-s", "20", "-m", str(options.postfix_messages), "-l", str(options.size), "-d",
             "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{relay.port}"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=options.timeout,
        )
        if inject.returncode:
            raise Failed(f"smtp-source into Postfix: {inject.stderr.decode(errors='replace').strip()[-500:]}")
        hold = os.path.join(root, "queue", "hold")
        while countFiles(hold) < options.postfix_messages and time.monotonic() < deadline:
            time.sleep(POLL)
        held = countFiles(hold)
        if held != options.postfix_messages:
            raise Failed(f"{held} messages on hold, not {options.postfix_messages}")
        log = LogCounter(relay.log)
        cpu = server.cpu()
        start = time.perf_counter()
        released = subprocess.run([tool("postsuper"), "-c", relay.config, "-H", "ALL"], capture_output=True,
                                  timeout=60)
        if released.returncode:
            raise Failed(f"postsuper -H ALL: exit status {released.returncode} {released.stderr!r}")
        kick(relay.config)
        end, seen, quiet = None, 0, time.monotonic()
        while time.monotonic() < deadline:
            done = sum(log.read().values())
            if done >= options.postfix_messages:
                end = time.perf_counter()
                break
            if done > seen:
                seen, quiet = done, time.monotonic()
            elif time.monotonic() - quiet > KICK_AGAIN:
                kick(relay.config)  # in case the queue manager missed the first
                quiet = time.monotonic()
            time.sleep(POLL)
        cpu = server.cpu() - cpu
        problems = list(log.examples)
        if end is None:
            problems.append(f"after {options.timeout} s, Postfix's log says: {log.counts}")
        elif log.counts["sent"] != options.postfix_messages:
            problems.append(f"Postfix's log says: {log.counts}")
        # "status=sent" is logged by smtp(8) a moment before the queue
        # manager removes the file: give it that moment.
        settleBy = time.monotonic() + 10
        queued = relay.queued()
        while queued and end is not None and time.monotonic() < settleBy:
            time.sleep(POLL)
            queued = relay.queued()
        relay.stop()
        relay = None
    finally:
        if relay is not None:
            relay.stop()
        server.stop()
    if queued:
        problems.append(f"{queued} messages still queued")
    if server.received is not None and server.received != log.counts["sent"]:
        problems.append(f"the server says it received {server.received} messages, Postfix {log.counts['sent']}")
    sent = log.counts["sent"]
    return {
        "msgs_per_s": sent / (end - start) if end and not problems else float("nan"),
        "cpu_s_per_1000": cpu / sent * 1000 if sent else float("nan"),
        "messages": sent,
        "reused": log.reused / sent if sent else float("nan"),
        "seconds": (end or time.perf_counter()) - start,
        "problems": problems,
    }


def rotations(servers: list, repeat: int):
    """
    @return: each repetition's order of C{servers}, rotating.
    """
    for rep in range(repeat):
        shift = rep % len(servers)
        yield servers[shift:] + servers[:shift]


def show(part: str, kind: str, result: dict) -> None:
    line = f"  {part:<8} {kind:<17} {result['msgs_per_s']:>8.0f} msg/s {result['cpu_s_per_1000']:>6.3f} s CPU/1000"
    if "reused" in result:
        line += f"  {result['reused']:.0%} over a reused connection"
    if "peak_rss_mib" in result:
        line += f"  {result['peak_rss_mib']:>6.1f} MiB  client {result['client_cpu_s_per_1000']:.3f} s CPU/1000"
        if result["limited"]:
            line += f"  (stopped at the time limit: {result['messages']} messages)"
        if result["errors"]:
            line += f"  {result['errors']} errors"
        if result.get("cpu_s_per_1000_by_process"):
            line += "  (" + ", ".join(f"{name} {seconds:.3f}" for name, seconds in
                                      sorted(result["cpu_s_per_1000_by_process"].items())) + ")"
    print(line, file=sys.stderr, flush=True)
    for problem in result["problems"]:
        print(f"      PROBLEM: {problem}", file=sys.stderr)


def summarise(runs: dict, servers: list, keys: tuple) -> list:
    """
    @return: for each server, the medians of its runs' C{keys}, and the
        ratio of its messages per second to smtp-sink's.
    """
    medians = {kind: {key: median([r[key] for r in runs[kind] if r[key] == r[key]]) for key in keys}
               for kind in servers}
    ceiling = medians.get("smtp-sink", {}).get("msgs_per_s", float("nan"))
    return [{"server": kind, **medians[kind], "vs_smtp_sink": ratio(medians[kind]["msgs_per_s"], ceiling),
             "runs": runs[kind]} for kind in servers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 100 messages per session, 200 through Postfix, one repetition")
    parser.add_argument("--sessions", type=int, default=10, help="sessions at once (default 10)")
    parser.add_argument("--messages", type=int, help="messages per session (default 2000; --quick 100)")
    parser.add_argument("--size", type=int, default=4096, help="message size in octets (default 4096)")
    parser.add_argument("--repeat", type=int, help="repetitions, interleaved (default 3; --quick 1)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"servers of part one, of {', '.join(SERVERS)} and mailrelay-Nw (default all but"
                             " mailrelay-Nw)")
    parser.add_argument("--workers", default="1,2",
                        help="part one also runs mailproto's relay daemon and its sink with each of these --workers"
                             " (default 1,2; none: not at all), as mailrelay-1w, mailrelay-2w, sink-1w, sink-2w")
    parser.add_argument("--clients", type=int, default=1,
                        help="client processes of part one, the sessions shared among them (default 1)")
    parser.add_argument("--seconds", type=float, default=30,
                        help="a session starts no new message after this many seconds (default 30)")
    parser.add_argument("--postfix-messages", type=int, help="messages through Postfix (default 2000; --quick 200)")
    parser.add_argument("--postfix-servers", default=",".join(POSTFIX_SERVERS), help="servers of part two")
    parser.add_argument("--no-postfix", action="store_true", help="skip part two")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run of part two may take (default 300)")
    parser.add_argument("--tree", default=ROOT,
                        help="import mailproto from this directory, not this checkout: for a comparison with"
                             " another revision (git archive REV mailproto | tar -x -C DIR)")
    parser.add_argument("--keep", action="store_true", help="keep part two's scratch directory (logs) and say where")
    parser.add_argument("--json", help="write the results to this file")
    options = parser.parse_args()
    for key, value in (QUICK if options.quick else DEFAULTS).items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    options.tree = os.path.abspath(options.tree)
    if not os.path.exists(os.path.join(options.tree, "mailproto", "__init__.py")):
        parser.error(f"--tree: there is no mailproto/__init__.py in {options.tree}")
    if options.tree != ROOT:
        print(f"mailproto from {options.tree}, not this checkout", file=sys.stderr)
    try:
        relays = workerServers(options.workers)
    except ValueError as e:
        parser.error(f"--workers: {e}")
    servers = list(dict.fromkeys((options.servers.split(",") if options.servers else []) + relays))
    postfixServers = options.postfix_servers.split(",") if options.postfix_servers else []
    for name in servers + postfixServers:
        if not knownServer(name, SERVERS):
            parser.error(f"unknown server {name!r}; choose from {', '.join(SERVERS)}, mailrelay-Nw, sink-Nw")
    if not 1 <= options.clients <= options.sessions:
        parser.error("--clients must be between 1 and --sessions")
    skipped = None
    if options.no_postfix:
        postfixServers, skipped = [], "--no-postfix"
    elif postfixServers:
        skipped = postfixUsable()
        if skipped:
            print(f"part two (Postfix as the client) skipped: {skipped}", file=sys.stderr)
            postfixServers = []

    loadRuns, postfixRuns, failed = {k: [] for k in servers}, {k: [] for k in postfixServers}, 0
    with scratchArea("mailproto-pipeline-bench-", options.keep) as (children, scratch):
        numbers = iter(range(1, 1000))
        for part, kinds, runs, once in (
            ("pipeline", servers, loadRuns, lambda kind: loadOnce(kind, options)),
            ("postfix", postfixServers, postfixRuns,
             lambda kind: postfixOnce(kind, options, children, scratch, next(numbers))),
        ):
            for order in rotations(kinds, options.repeat) if kinds else ():
                for kind in order:
                    try:
                        result = once(kind)
                    except Failed as e:
                        failed += 1
                        print(f"  {part:<8} {kind:<17} FAILED: {e}", file=sys.stderr)
                        continue
                    runs[kind].append(result)
                    show(part, kind, result)

    load = summarise(loadRuns, servers, ("msgs_per_s", "cpu_s_per_1000", "peak_rss_mib", "client_cpu_s_per_1000"))
    for row in load:
        row["pipelining"] = all(r["pipelining"] for r in row["runs"]) if row["runs"] else None
        row["errors"] = sum(r["errors"] for r in row["runs"])
    if load:
        print(f"\npipelining load: {options.sessions} sessions x {options.messages} messages of {options.size}"
              f" octets, client processes: {options.clients}; median of {options.repeat}")
        print(f"  {'server':<17} {'msg/s':>8} {'vs smtp-sink':>13} {'CPU s/1000':>11} {'peak RSS MiB':>13}"
              f" {'PIPELINING':>11} {'errors':>7}")
        for row in load:
            offered = {True: "offered", False: "not offered", None: "?"}[row["pipelining"]]
            print(f"  {row['server']:<17} {row['msgs_per_s']:>8.0f} {row['vs_smtp_sink']:>12.2f}x"
                  f" {row['cpu_s_per_1000']:>11.3f} {row['peak_rss_mib']:>13.1f} {offered:>11} {row['errors']:>7}")
    postfix = summarise(postfixRuns, postfixServers, ("msgs_per_s", "cpu_s_per_1000", "reused"))
    if postfix:
        print(f"\nPostfix's smtp client -> server: {options.postfix_messages} messages of {options.size} octets,"
              f" released from hold at once; median of {options.repeat}")
        print(f"  {'server':<17} {'msg/s':>8} {'vs smtp-sink':>13} {'CPU s/1000':>11} {'reused conn.':>13}")
        for row in postfix:
            print(f"  {row['server']:<17} {row['msgs_per_s']:>8.0f} {row['vs_smtp_sink']:>12.2f}x"
                  f" {row['cpu_s_per_1000']:>11.3f} {row['reused']:>12.0%}")
    writeResults(options.json, "pipeline", load, postfix=postfix, postfixSkipped=skipped,
                 sessions=options.sessions, messages=options.messages, size=options.size, repeat=options.repeat,
                 clients=options.clients, seconds=options.seconds, postfixMessages=options.postfix_messages,
                 postfixSettings=POSTFIX_SETTINGS.strip().splitlines(),
                 tree=None if options.tree == ROOT else options.tree)
    if failed or any(r["problems"] for rows in (load, postfix) for row in rows for r in row["runs"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
