# Copyright (c) mailproto authors. See LICENSE for details.
"""
Send throughput: clients -> postfix's smtp-sink on 127.0.0.1, side by side
in one run.

Each client sends the same messages (SIZE octets, one recipient) over 1 and
over 10 connections, several messages per connection; the runs are
interleaved (every client once, then again), and the median of the
repetitions is reported with its ratio to twisted.mail's client with
TCP_NODELAY and to smtp-source (Postfix's C load generator, the ceiling).

    python benchmarks/send.py [--messages N] [--repeat R] [--size OCTETS] [--json FILE]

Every run is bounded (a fixed number of messages, a timeout per run); only
loopback is used.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

from _common import freePort, tool, writeResults

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = ["smtp-source", "mailproto", "twisted.mail+nodelay", "twisted.mail", "smtplib", "aiosmtplib"]
SLOW = {"twisted.mail": 200}  # Nagle: ~40 ms per message; fewer messages keep the run short
RUN_TIMEOUT = 300


def startSink(port: int) -> subprocess.Popen:
    args = [tool("smtp-sink")]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    args += [f"127.0.0.1:{port}", "1024"]
    sink = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for attempt in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return sink
        except OSError:
            time.sleep(0.05)
    sink.kill()
    raise SystemExit("smtp-sink did not start")


def runOnce(client: str, port: int, conns: int, total: int, size: int) -> float:
    if client == "smtp-source":
        args = [tool("smtp-source"), "-s", str(conns), "-m", str(total), "-l", str(size), "-d",
                "-f", "bench@example.org", "-t", "sink@example.com", f"127.0.0.1:{port}"]
        start = time.perf_counter()
        subprocess.run(args, check=True, timeout=RUN_TIMEOUT, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "_send_clients.py"), client, str(port), str(conns), str(total), str(size)],
        check=True, timeout=RUN_TIMEOUT, capture_output=True, env=env,
    )
    return json.loads(out.stdout)["elapsed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions, interleaved (default 3)")
    parser.add_argument("--size", type=int, default=4096, help="message size in octets (default 4096)")
    parser.add_argument("--connections", default="1,10", help="connection counts (default 1,10)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="clients to run")
    parser.add_argument("--json", help="write the results to this file")
    options = parser.parse_args()
    clients = options.clients.split(",")
    port = freePort()
    sink = startSink(port)
    rates = {}
    try:
        for conns in map(int, options.connections.split(",")):
            for rep in range(options.repeat):
                for client in clients:
                    total = min(options.messages, SLOW.get(client, options.messages))
                    elapsed = runOnce(client, port, conns, total, options.size)
                    rates.setdefault((conns, client), []).append(total / elapsed)
                    print(f"  {conns:>2} conn  {client:<22} {total / elapsed:>9.0f} msg/s", file=sys.stderr)
    finally:
        sink.terminate()
        sink.wait()
    results = []
    print(f"\nsend throughput to smtp-sink, {options.size}-octet messages, median of {options.repeat}")
    for conns in map(int, options.connections.split(",")):
        base = statistics.median(rates.get((conns, "twisted.mail+nodelay"), [float("nan")]))
        ceiling = statistics.median(rates.get((conns, "smtp-source"), [float("nan")]))
        print(f"\n{conns} connection(s)       msg/s   vs twisted.mail+nodelay   vs smtp-source")
        for client in clients:
            median = statistics.median(rates[(conns, client)])
            print(f"  {client:<22} {median:>8.0f}   {median / base:>8.2f}x   {median / ceiling:>14.2f}x")
            results.append({"connections": conns, "client": client, "msgs_per_s": median,
                            "runs": rates[(conns, client)]})
    writeResults(options.json, "send", results, size=options.size, repeat=options.repeat)


if __name__ == "__main__":
    main()
