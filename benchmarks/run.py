# Copyright (c) mailproto authors. See LICENSE for details.
"""
Every benchmark, one after the other, then the performance page: runs
C{accept.py}, C{send.py}, C{memory.py}, C{relay.py} and C{pipeline.py}, each writing its
results to C{DIR/NAME.json}, then C{report.py}, which makes
C{docs/performance.rst} and its plots from them.

    python benchmarks/run.py [--quick] [--out DIR] [--no-docs] [--only accept,send,memory,relay,pipeline]

The benchmarks' output goes straight to the terminal.  A benchmark that
fails is reported and the others still run; the exit status is 1 if any
step failed.  C{DIR/run.json} records, for each benchmark, the command that
made its results, when, and whether it succeeded; C{report.py} shows the
commands on the page.

Default counts (about 30 minutes on a 2-core machine, more than half of
it accept; allow twice that on a slower one):

  - accept: 20000 messages per run, 5 repetitions (5 servers, 3
    configurations);
  - send: 5000 messages per run, 5 repetitions (6 clients, 1 and 10
    connections);
  - memory: one 50 MiB message, 5 repetitions (4 servers);
  - relay: 5000 messages per run, 10 repetitions (mailproto's relay with
    1 and with 2 workers, and Postfix: 5 left the ratios unsteady on a
    shared machine), one more run of each under strace if it is
    installed, and one of each of mailproto's under py-spy;
  - pipeline: 10 sessions of 2000 messages per run, 3 repetitions (6
    servers, each run at most 30 s), then 2000 messages through Postfix to
    smtp-sink and to mailproto, 3 repetitions.

C{--quick} is a smoke run of a few minutes: few messages, one repetition,
no strace.  Postfix needs root; without it relay.py runs mailproto only,
and pipeline.py skips its part with Postfix as the client.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NAMES = ["accept", "send", "memory", "relay", "pipeline"]
ARGUMENTS = {
    "accept": ["--messages", "20000", "--repeat", "5"],
    "send": ["--messages", "5000", "--repeat", "5"],
    "memory": ["--repeat", "5"],
    "relay": ["--repeat", "10", "--profile"],
    "pipeline": ["--repeat", "3"],
}
QUICK = {
    "accept": ["--messages", "1000", "--repeat", "1"],
    "send": ["--messages", "500", "--repeat", "1"],
    "memory": ["--repeat", "1"],
    "relay": ["--messages", "1000", "--repeat", "1", "--no-strace"],
    "pipeline": ["--quick"],
}


def shown(path: str) -> str:
    """
    @return: C{path} relative to the checkout if it is in it, for commands
        that can be run again from there.
    """
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def runStep(name: str, args: list) -> int:
    """
    Run C{benchmarks/NAME.py ARGS}, its output to ours.

    @return: its exit status.
    """
    script = os.path.join(HERE, f"{name}.py")
    command = " ".join(["python", shown(script)] + args)
    print(f"\n=== {name}: {command}", flush=True)
    start = time.monotonic()
    try:
        code = subprocess.run([sys.executable, script] + args, cwd=ROOT).returncode
    except OSError as e:
        print(f"=== {name}: could not start: {e}", flush=True)
        return 127
    minutes = (time.monotonic() - start) / 60
    print(f"=== {name}: {'done' if code == 0 else f'FAILED (exit status {code})'} in {minutes:.1f} min", flush=True)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few messages, one repetition")
    parser.add_argument("--out", default=os.path.join(HERE, "results"),
                        help="the directory of the results (default benchmarks/results)")
    parser.add_argument("--no-docs", action="store_true", help="do not make docs/performance.rst again")
    parser.add_argument("--only", default=",".join(NAMES), help="the benchmarks to run (default: all)")
    options = parser.parse_args()
    names = options.only.split(",")
    for name in names:
        if name not in NAMES:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(NAMES)}")
    os.makedirs(options.out, exist_ok=True)
    record = os.path.join(options.out, "run.json")
    try:
        with open(record) as f:
            steps = json.load(f).get("steps", {})
    except (OSError, ValueError):
        steps = {}

    failed = []
    began = time.monotonic()
    try:
        for name in NAMES:
            if name not in names:
                continue
            results = os.path.join(options.out, f"{name}.json")
            # Results of an earlier run must not pass for this one's.
            if os.path.exists(results):
                os.remove(results)
            args = (QUICK if options.quick else ARGUMENTS)[name] + ["--json", shown(results)]
            started = now()
            code = runStep(name, args)
            if code:
                failed.append(name)
            if os.path.exists(results):
                steps[name] = {"command": " ".join(["python", f"benchmarks/{name}.py"] + args), "quick": options.quick,
                               "started": started, "finished": now(), "status": code}
            else:
                steps.pop(name, None)
            with open(record, "w") as f:
                json.dump({"steps": steps}, f, indent=2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130)

    if not options.no_docs:
        code = runStep("report", ["--results", shown(options.out)])
        if code:
            failed.append("report")
    print(f"\n=== {len(names)} benchmark(s) in {(time.monotonic() - began) / 60:.1f} min; "
          + (f"FAILED: {', '.join(failed)}" if failed else "all succeeded"), flush=True)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
