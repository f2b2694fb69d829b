# Copyright (c) mailproto authors. See LICENSE for details.
"""
The performance page of the documentation, made from the benchmarks'
results: reads C{accept.json}, C{send.json}, C{memory.json}, C{relay.json}
and C{pipeline.json} (and C{run.json}, which C{run.py} writes) from a directory,
and writes C{docs/performance.rst} and its plots, PNG files in
C{docs/_static/performance/}.

    python benchmarks/report.py [--results DIR] [--docs DIR]

A benchmark whose file is missing gets a section that says it was not run.
The page is made here from top to bottom: change this program, not the
page.  If C{benchmarks/analysis.rst} exists, its text goes into the page as
it is, as the section "Where the time goes"; it must have no title of its
own (its headings, if any, one level below a section: C{~~~}).
"""

import argparse
import datetime
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGES = os.path.join("_static", "performance")
MiB = 1024 * 1024

NAMES = ("accept", "send", "memory", "relay", "pipeline")
CONFIGS = {
    "20x10x4KiB": "20 sessions at a time, 10 messages each, 4 KiB",
    "100x1x4KiB": "100 sessions at a time, 1 message each, 4 KiB",
    "4x1MiB": "4 sessions at a time, several messages each, 1 MiB",
}
COLOURS = {
    "mailproto": "#1f5fa8",
    "mailproto-stream": "#6b9bd1",
    "twisted.mail": "#e08a1e",
    "twisted.mail+nodelay": "#e08a1e",
    "aiosmtpd": "#3a9a4a",
    "aiosmtplib": "#3a9a4a",
    "smtplib": "#8a5aa8",
    "smtp-sink": "#9a9a9a",
    "twisted-floor": "#5a5a5a",
    "smtp-source": "#9a9a9a",
    "postfix": "#9a9a9a",
}
LIGHTER = {"twisted.mail": "#f2c48a"}  # twisted.mail's client without TCP_NODELAY, next to the one with it


def load(directory: str, name: str):
    """
    @return: the parsed C{NAME.json} of C{directory} and its modification
        time, or C{(None, None)} if there is none.
    """
    path = os.path.join(directory, f"{name}.json")
    try:
        with open(path) as f:
            return json.load(f), os.path.getmtime(path)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        print(f"report: {path} is unreadable ({e}); its section says 'not run'", file=sys.stderr)
        return None, None


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value, decimals: int = 0, suffix: str = "") -> str:
    """
    @return: C{value} with C{decimals} decimals and C{suffix}, or "n/a".
    """
    if missing(value):
        return "n/a"
    return f"{value:,.{decimals}f}{suffix}"


def times(value) -> str:
    return number(value, 2, "×")


def quotient(a, b):
    return None if missing(a) or missing(b) or not b else a / b


def heading(text: str, underline: str = "-") -> list:
    return [text, underline * len(text), ""]


def listTable(title: str, header: list, rows: list) -> list:
    """
    @return: the lines of an RST C{list-table} directive.
    """
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [header] + rows:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}".rstrip() for cell in row[1:])
    return lines + [""]


def image(name: str, alt: str) -> list:
    return [f".. image:: {IMAGES}/{name}", f"   :alt: {alt}", ""]


def notRun(name: str, command: str) -> list:
    return [f"Not run: there is no ``{name}.json`` among the results.  ``{command}`` makes it.", ""]


class Plots:
    """
    The figures of the page, drawn with matplotlib (Agg) into C{directory}.
    """

    def __init__(self, directory: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot

        self.pyplot = matplotlib.pyplot
        self.directory = directory
        self.written = []
        os.makedirs(directory, exist_ok=True)

    def save(self, figure, name: str) -> None:
        figure.tight_layout()
        figure.savefig(os.path.join(self.directory, name), dpi=100, metadata={"Software": None})
        self.pyplot.close(figure)
        self.written.append(name)

    def bars(self, ax, labels, values, colours, unit: str, decimals: int = 0, ceiling=None, ceilingLabel=None):
        """
        Horizontal bars, the first label on top, each with its value at its
        end; a dashed vertical line at C{ceiling}.
        """
        values = [0 if missing(v) else v for v in values]
        positions = range(len(labels))
        drawn = ax.barh(positions, values, color=colours, height=0.65)
        ax.bar_label(drawn, labels=[f"{v:,.{decimals}f}{unit}" for v in values], padding=3, fontsize=8)
        ax.set_yticks(list(positions), labels)
        ax.invert_yaxis()
        top = max(values + [ceiling or 0]) or 1
        ax.set_xlim(0, top * 1.22)
        if ceiling:
            ax.axvline(ceiling, color="#555555", linestyle="--", linewidth=1)
            ax.annotate(ceilingLabel, xy=(ceiling, 1), xycoords=("data", "axes fraction"), xytext=(0, 2),
                        textcoords="offset points", fontsize=7, color="#555555", va="bottom", ha="center")
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(axis="y", length=0)

    def accept(self, data: dict) -> tuple:
        configs = list(dict.fromkeys(r["config"] for r in data["results"]))
        names = []
        for key, unit, title, decimals, name in (
            ("msgs_per_s", "", "messages per second (higher is better)", 0, "accept-throughput.png"),
            ("cpu_s_per_1000", " s", "server CPU seconds per 1000 messages (lower is better)", 2, "accept-cpu.png"),
        ):
            figure, axes = self.pyplot.subplots(len(configs), 1, figsize=(8, 0.6 + 2.1 * len(configs)), squeeze=False)
            for ax, config in zip(axes[:, 0], configs):
                rows = [r for r in data["results"] if r["config"] == config]
                ceiling = next((r[key] for r in rows if r["server"] == "smtp-sink"), None)
                self.bars(ax, [r["server"] for r in rows], [r[key] for r in rows],
                          [COLOURS.get(r["server"], "#444444") for r in rows], unit, decimals,
                          ceiling if key == "msgs_per_s" else None, "smtp-sink: the ceiling")
                ax.set_title(f"{config}: {CONFIGS.get(config, '')}", fontsize=9, loc="left", pad=14)
            figure.suptitle(f"Accepting mail: {title}", fontsize=10)
            self.save(figure, name)
            names.append(name)
        return tuple(names)

    def send(self, data: dict) -> str:
        counts = list(dict.fromkeys(r["connections"] for r in data["results"]))
        figure, axes = self.pyplot.subplots(1, len(counts), figsize=(9, 3.2), squeeze=False)
        for ax, count in zip(axes[0], counts):
            rows = [r for r in data["results"] if r["connections"] == count]
            ceiling = next((r["msgs_per_s"] for r in rows if r["client"] == "smtp-source"), None)
            self.bars(ax, [r["client"] for r in rows], [r["msgs_per_s"] for r in rows],
                      [LIGHTER.get(r["client"], COLOURS.get(r["client"], "#444444")) for r in rows], "", 0,
                      ceiling, "smtp-source: the ceiling")
            ax.set_title(f"{count} connection{'s' if count != 1 else ''}", fontsize=9, loc="left", pad=14)
        figure.suptitle("Sending mail to smtp-sink: messages per second (higher is better)", fontsize=10)
        self.save(figure, "send-throughput.png")
        return "send-throughput.png"

    def memory(self, data: dict) -> str:
        rows = data["results"]
        size = data["size"] / MiB
        figure, (growth, speed) = self.pyplot.subplots(1, 2, figsize=(9, 1.3 + 0.5 * len(rows)))
        colours = [COLOURS.get(r["server"], "#444444") for r in rows]
        self.bars(growth, [r["server"] for r in rows], [r["growth_mib"] for r in rows], colours, " MiB", 1,
                  size, f"the message: {size:.4g} MiB")
        growth.set_title("resident set growth, MiB (lower is better)", fontsize=9, loc="left", pad=14)
        self.bars(speed, [r["server"] for r in rows], [r["mib_per_s"] for r in rows], colours, "", 0)
        speed.set_title("MiB per second (higher is better)", fontsize=9, loc="left", pad=14)
        figure.suptitle(f"Receiving one {size:.4g} MiB message", fontsize=10)
        self.save(figure, "memory-growth.png")
        return "memory-growth.png"

    def relay(self, data: dict) -> str:
        summary = data["summary"]
        relays = [name for name in ("mailproto", "postfix") if name in summary]
        figure, ax = self.pyplot.subplots(figsize=(7, 3.6))
        width = 0.8 / max(len(relays), 1)
        for i, name in enumerate(relays):
            values = [summary[name].get("endToEnd"), summary[name].get("accept")]
            values = [0 if missing(v) else v for v in values]
            drawn = ax.bar([j + (i - (len(relays) - 1) / 2) * width for j in range(2)], values, width * 0.95,
                           color=COLOURS[name], label="Postfix" if name == "postfix" else name)
            ax.bar_label(drawn, labels=[f"{v:,.0f}" for v in values], padding=2, fontsize=8)
        disk = [d for d in data.get("diskCommitsPerSecond", []) if not missing(d)]
        if disk:
            bound = sorted(disk)[len(disk) // 2]
            ax.axhline(bound, color="#b03030", linestyle="--", linewidth=1,
                       label=f"the disk: {bound:,.0f} serial durable commits/s")
        ax.set_xticks([0, 1], ["end to end", "accepted (250 after fsync)"])
        ax.set_ylabel("messages per second")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=8, frameon=False, loc="upper center", ncol=3)
        ax.set_title("Durable relay: smtp-source → relay → smtp-sink (higher is better)", fontsize=10)
        self.save(figure, "relay-throughput.png")
        return "relay-throughput.png"

    def pipeline(self, data: dict):
        parts = [(rows, title) for rows, title in (
            (data["results"], f"pipelining load: {data['sessions']} sessions at a time, {data['messages']} messages"
                              f" each, {data['size'] // 1024} KiB"),
            (data.get("postfix") or [], f"Postfix's smtp client: {data.get('postfixMessages')} messages"),
        ) if rows]
        if not parts:
            return None
        figure, axes = self.pyplot.subplots(
            len(parts), 1, figsize=(8, 0.6 + sum(0.9 + 0.3 * len(rows) for rows, _ in parts)), squeeze=False,
            gridspec_kw={"height_ratios": [len(rows) + 1 for rows, _ in parts]})
        for ax, (rows, title) in zip(axes[:, 0], parts):
            ceiling = next((r["msgs_per_s"] for r in rows if r["server"] == "smtp-sink"), None)
            self.bars(ax, [r["server"] for r in rows], [r["msgs_per_s"] for r in rows],
                      [COLOURS.get(r["server"], "#444444") for r in rows], "", 0, ceiling, "smtp-sink: the ceiling")
            ax.set_title(title, fontsize=9, loc="left", pad=14)
        figure.suptitle("Receiving from pipelining clients: messages per second (higher is better)", fontsize=10)
        self.save(figure, "pipeline-throughput.png")
        return "pipeline-throughput.png"


def intro(run, sources: dict) -> list:
    repeats = sorted({data["repeat"] for data in sources.values() if data and "repeat" in data})
    if repeats == [1]:
        median = "from one repetition"
    elif len(repeats) == 1:
        median = f"the median of {repeats[0]} repetitions"
    else:
        median = "the median of the repetitions its section gives"
    lines = [
        "How fast mailproto receives, sends and relays mail, and how much memory",
        "it needs for a large message, side by side with twisted.mail, aiosmtpd,",
        "aiosmtplib, Python's smtplib and Postfix.  Postfix's own C tools,",
        "``smtp-source`` (load) and ``smtp-sink`` (a server that throws mail",
        "away), are the ceiling: the most the machine does over SMTP.",
        "",
        "Every figure here was measured on one machine, over loopback",
        "(127.0.0.1) only; there is no network in the way.  The programs being",
        "compared take turns within each repetition (their order changes from",
        f"one repetition to the next), and each figure is {median}.",
        "Absolute numbers depend on the machine: the ratios between programs",
        "measured in the same run are what count.",
        "",
    ]
    steps = (run or {}).get("steps", {})
    quick = [name for name in NAMES if sources.get(name) and steps.get(name, {}).get("quick")]
    if quick:
        which = "These results are" if len(quick) == len([n for n in NAMES if sources.get(n)]) else (
            "The results of " + ", ".join(quick) + " are")
        lines += [
            ".. note::",
            "",
            f"   {which} from a quick run (``run.py --quick``): few",
            "   messages and one repetition, to show that everything works.",
            "   They are not fit for comparisons.",
            "",
        ]
    return lines


def machineSection(sources: dict, dates: list) -> list:
    lines = heading("Machine")
    described = next((data["machine"] for data in sources.values() if data and data.get("machine")), None)
    if described is None:
        return lines + ["Not recorded: none of the results describes its machine.", ""]
    when = sorted({datetime.date.fromtimestamp(t).isoformat() for t in dates})
    fields = [
        ("CPU", described.get("cpu")),
        ("Cores", described.get("cores")),
        ("Memory", f"{number(described.get('memory_mib'))} MiB" if described.get("memory_mib") else None),
        ("Kernel", f"Linux {described['kernel']}" if described.get("kernel") else None),
        ("Python", described.get("python")),
        ("Twisted", described.get("twisted")),
        ("aiosmtpd", described.get("aiosmtpd")),
        ("aiosmtplib", described.get("aiosmtplib")),
        ("Postfix", described.get("postfix")),
        ("Date", " to ".join([when[0], when[-1]] if len(when) > 1 else when)),
    ]
    for name, value in fields:
        lines.append(f":{name}: {'unknown' if value in (None, '') else value}")
    return lines + [""]


def acceptSection(data, names) -> list:
    lines = heading("Receiving: messages accepted per second")
    lines += [
        "``smtp-source`` sends to a server on 127.0.0.1 that accepts every message",
        "and throws it away: mailproto's ``ESMTP`` with a delivery that takes the",
        "message line by line (``IMessage``, as twisted.mail's does) and, as",
        "*mailproto-stream*, one that takes it in chunks (``IMessageStream``);",
        "twisted.mail's ``ESMTP`` with the same line delivery; aiosmtpd with a",
        "handler that returns 250; and ``smtp-sink``.  *twisted-floor* is not an",
        "SMTP server: it gives a canned reply to each command and only looks",
        "for the end of data, on Twisted's reactor; it is the least any server",
        "built on that reactor can do, the bound for mailproto and twisted.mail",
        "alike.  Each run starts a fresh server.  CPU is the server's (user and",
        "system time); peak RSS is its largest resident set during the run.",
        "",
    ]
    if data is None:
        return lines + notRun("accept", "python benchmarks/accept.py --json benchmarks/results/accept.json")
    lines += [f"{number(data.get('messages'))} messages of 4 KiB per run (the 1 MiB configuration: a",
              f"twentieth of that); median of {data.get('repeat')}.", ""]
    for config in dict.fromkeys(r["config"] for r in data["results"]):
        rows = [[r["server"], number(r["msgs_per_s"]), times(r.get("vs_twisted_mail")), times(r.get("vs_smtp_sink")),
                 number(r.get("cpu_s_per_1000"), 3), number(r.get("peak_rss_mib"), 1)]
                for r in data["results"] if r["config"] == config]
        lines += listTable(f"{config}: {CONFIGS.get(config, config)}",
                           ["server", "msg/s", "× twisted.mail", "× smtp-sink", "CPU s / 1000 msgs", "peak RSS MiB"],
                           rows)
    for name in names:
        alt = ("messages per second" if "throughput" in name else "CPU seconds per 1000 messages") + ", per server"
        lines += image(name, alt)
    return lines


def sendSection(data, name) -> list:
    lines = heading("Sending: messages per second")
    lines += [
        "Each client sends 4 KiB messages, one recipient each, several over each",
        "connection, to ``smtp-sink`` on 127.0.0.1, over 1 and over 10",
        "connections: mailproto's ``ESMTPClient``; twisted.mail's, with",
        "``TCP_NODELAY`` (*twisted.mail+nodelay*) and as it is (without it every",
        "message waits for a delayed ACK, so it sends fewer messages per run);",
        "Python's smtplib, one thread per connection; aiosmtplib; and",
        "``smtp-source``.",
        "",
    ]
    if data is None:
        return lines + notRun("send", "python benchmarks/send.py --json benchmarks/results/send.json")
    lines += [f"Messages of {number(data.get('size'))} octets; median of {data.get('repeat')}.", ""]
    for count in dict.fromkeys(r["connections"] for r in data["results"]):
        rows = [r for r in data["results"] if r["connections"] == count]
        base = next((r["msgs_per_s"] for r in rows if r["client"] == "twisted.mail+nodelay"), None)
        ceiling = next((r["msgs_per_s"] for r in rows if r["client"] == "smtp-source"), None)
        lines += listTable(f"{count} connection{'s' if count != 1 else ''}",
                           ["client", "msg/s", "× twisted.mail+nodelay", "× smtp-source"],
                           [[r["client"], number(r["msgs_per_s"]), times(quotient(r["msgs_per_s"], base)),
                             times(quotient(r["msgs_per_s"], ceiling))] for r in rows])
    return lines + image(name, "messages per second, per client, over 1 and over 10 connections")


def memorySection(data, name) -> list:
    lines = heading("Memory: one large message")
    lines += [
        "How much a server's resident set grows while it receives one large",
        "message, every server without a size limit.  Each run starts a fresh",
        "server and sends it one small message first; then its peak resident set",
        "size (Linux's VmHWM) is reset, its resident set size read, and",
        "``smtp-source`` sends the large message in one session.  Growth is the",
        "peak during that message less the resident set before it; MiB/s is the",
        "message's size over the time it took.",
        "",
    ]
    if data is None:
        return lines + notRun("memory", "python benchmarks/memory.py --json benchmarks/results/memory.json")
    size = data["size"] / MiB
    lines += [f"One message of {size:.4g} MiB; median of {data.get('repeat')}.", ""]
    lines += listTable(f"One {size:.4g} MiB message",
                       ["server", "growth MiB", "× message size", "MiB/s"],
                       [[r["server"], number(r["growth_mib"], 1), number(quotient(r["growth_mib"], size), 2, "×"),
                         number(r["mib_per_s"], 1)] for r in data["results"]])
    return lines + image(name, "resident set growth and MiB per second, per server")


def relaySection(data, name) -> list:
    lines = heading("Relaying: durable, end to end")
    lines += [
        "``smtp-source`` → relay → ``smtp-sink``, all on 127.0.0.1, through a",
        "relay that answers 250 only once the message is safe on disk:",
        "mailproto's ``twistd mailrelay`` with its defaults, and Postfix as a",
        "relay (its defaults, fsync included).  Each run starts a fresh relay with",
        "an empty queue.  *End to end* is messages over the time from the first",
        "connection until the sink has every message and the queue is empty;",
        "*accept* is messages over ``smtp-source``'s own time.  CPU counts every",
        "process of the relay.  The disk bound is how many serial durable commits",
        "(4 KiB write, fsync, rename, directory fsync) the disk under the queues",
        "makes per second: the bound for one session at a time, which concurrent",
        "sessions can pass by sharing fsyncs.",
        "",
    ]
    if data is None:
        return lines + notRun("relay", "python benchmarks/relay.py --json benchmarks/results/relay.json")
    summary = data.get("summary", {})
    relays = [relay for relay in ("mailproto", "postfix") if relay in summary]
    lines += [f"``smtp-source -s {data.get('sessions')} -m {data.get('messages')} -l {data.get('size')} -d``;"
              f" median of {data.get('repeat')}.", ""]
    rows = []
    for relay in relays:
        s = summary[relay]
        cpu = s.get("cpuPerMessage")
        rows.append(["Postfix" if relay == "postfix" else relay, number(s.get("endToEnd")), number(s.get("accept")),
                     number(None if missing(cpu) else 1000 * cpu, 2), number(s.get("logFsyncs"), 2),
                     number(s.get("straceFsyncs"), 2)])
    if len(relays) == 2:
        m, p = summary["mailproto"], summary["postfix"]
        rows.append(["mailproto / Postfix", times(quotient(m.get("endToEnd"), p.get("endToEnd"))),
                     times(quotient(m.get("accept"), p.get("accept"))),
                     times(quotient(m.get("cpuPerMessage"), p.get("cpuPerMessage"))), "", ""])
    lines += listTable("Durable relay",
                       ["relay", "end-to-end msg/s", "accept msg/s", "CPU ms / msg", "fsyncs / msg (its log)",
                        "fsyncs / msg (strace)"], rows)
    notes = []
    if "postfix" not in relays:
        notes.append("Postfix did not run (it needs root).")
    if not missing(summary.get("pairedRatio")):
        notes.append(f"Within each repetition (the two relays back to back), mailproto relayed"
                     f" {times(summary['pairedRatio'])} as fast as Postfix end to end (median).")
    disk = [d for d in data.get("diskCommitsPerSecond", []) if not missing(d)]
    if disk:
        notes.append("The disk bound: " + " and ".join(number(d) for d in disk)
                     + " serial durable commits per second, before and after the timed runs.")
    failed = {relay: summary[relay].get("failedRuns") for relay in relays if summary[relay].get("failedRuns")}
    for relay, count in failed.items():
        notes.append(f"{count} run{'s' if count != 1 else ''} of {relay} failed and {'are' if count != 1 else 'is'}"
                     " not in the medians.")
    if notes:
        lines += [" ".join(notes), ""]
    return lines + image(name, "end-to-end and accept messages per second, mailproto and Postfix, and the disk bound")


def pipelineSection(data, name) -> list:
    lines = heading("Receiving from pipelining clients")
    lines += [
        "Real mail servers' clients (Postfix's, Exim's, mailproto's own) pipeline",
        "when the server offers PIPELINING: ``MAIL``, ``RCPT`` and ``DATA`` go in",
        "one write, and the client reads the three replies before it sends the",
        "message.  ``smtp-source``, above, never pipelines: it waits for each",
        "reply.  A server that writes those three replies in separate TCP",
        "segments while Nagle's algorithm is on makes every message wait for",
        "the client's delayed ACK (about 40 ms on Linux), which only a",
        "pipelining client shows.",
        "",
        "*Pipelining load*: a client of the benchmark's own (Python, asyncio,",
        "one process) keeps several sessions open at once; each sends its",
        "messages one after the other over one connection: ``MAIL``, ``RCPT``",
        "and ``DATA`` in one write, then the message and the final dot in one",
        "write.  The servers are those of the first section, each run a fresh",
        "one.  All get the same bytes, also those that do not offer",
        "PIPELINING (the table says which).  At the top of the table the",
        "client, which needs about as much CPU per message as the fastest",
        "servers, is as much the limit as the server: smtp-sink's figure is",
        "the most this client does on this machine.",
        "",
        "*Postfix's smtp client*: a private Postfix whose ``relayhost`` is the",
        "server under test.  The messages are put into it with ``smtp-source``",
        "and held (not timed); then they are released all at once, and",
        "Postfix's smtp client delivers them as it would to a mail hub:",
        "pipelining, reusing connections while there is a backlog, at most 20",
        "at once.  Timed: from the release until Postfix has logged every",
        "message as sent.",
        "",
    ]
    if data is None:
        return lines + notRun("pipeline", "python benchmarks/pipeline.py --json benchmarks/results/pipeline.json")
    clients = data.get("clients")
    lines += [f"{data.get('sessions')} sessions at a time, {number(data.get('messages'))} messages each of"
              f" {number(data.get('size'))} octets,",
              f"{'one client process' if clients == 1 else f'{clients} client processes'}; median of"
              f" {data.get('repeat')}.", ""]
    if data.get("tree"):
        lines += [f"mailproto's servers imported mailproto from ``{data['tree']}``, not from the checkout.", ""]
    offered = {True: "offered", False: "not offered"}
    lines += listTable("Pipelining load",
                       ["server", "msg/s", "× smtp-sink", "CPU s / 1000 msgs", "peak RSS MiB", "PIPELINING",
                        "errors", "client CPU s / 1000 msgs"],
                       [[r["server"], number(r["msgs_per_s"]), times(r.get("vs_smtp_sink")),
                         number(r.get("cpu_s_per_1000"), 3), number(r.get("peak_rss_mib"), 1),
                         offered.get(r.get("pipelining"), "n/a"), number(r.get("errors")),
                         number(r.get("client_cpu_s_per_1000"), 3)] for r in data["results"]])
    limited = [r["server"] for r in data["results"] if any(run.get("limited") for run in r.get("runs", []))]
    if limited:
        lines += [f"Runs of {', '.join(limited)} stopped at the time limit ({number(data.get('seconds'))} s a run):",
                  "their rate is the messages sent by then over that time.", ""]
    postfix = data.get("postfix") or []
    if postfix:
        lines += [f"Through Postfix: {number(data.get('postfixMessages'))} messages of {number(data.get('size'))}"
                  f" octets a run; median of {data.get('repeat')}.",
                  "Its settings for the smtp client (Postfix's defaults, written out) and",
                  "for holding what it receives, after those of the relay above::", ""]
        lines += [f"    {setting}" for setting in data.get("postfixSettings", [])] + [""]
        lines += listTable("Postfix's smtp client",
                           ["server", "msg/s", "× smtp-sink", "CPU s / 1000 msgs", "over a reused connection"],
                           [[r["server"], number(r["msgs_per_s"]), times(r.get("vs_smtp_sink")),
                             number(r.get("cpu_s_per_1000"), 3),
                             number(None if missing(r.get("reused")) else 100 * r["reused"], 0, " %")]
                            for r in postfix])
    else:
        lines += [f"Postfix's smtp client did not run: {data.get('postfixSkipped') or 'no servers chosen'}.", ""]
    return lines + (image(name, "messages per second, per server, from pipelining clients") if name else [])


def analysisSection(path: str) -> list:
    try:
        with open(path) as f:
            text = f.read().strip("\n")
    except FileNotFoundError:
        return []
    return heading("Where the time goes") + text.splitlines() + [""]


def reproduceSection(run) -> list:
    lines = heading("How to reproduce")
    lines += [
        "On Linux, with Postfix installed (``apt-get install postfix``: the",
        "benchmarks use its ``smtp-source`` and ``smtp-sink``, and run a private",
        "Postfix relay) and mailproto's benchmark extras",
        "(``pip install .[bench]``), from a checkout, as root (for the Postfix",
        "relay; without root only mailproto's relay runs)::",
        "",
        "    python benchmarks/run.py",
        "",
        "runs the benchmarks one after the other, writes their results to",
        "``benchmarks/results/`` and makes this page again from them.",
        "``--quick`` is a smoke run of a few minutes; ``--only accept,memory``",
        "runs some of them; ``--no-docs`` leaves the page alone.",
        "",
    ]
    steps = (run or {}).get("steps", {})
    if any(name in steps for name in NAMES):
        lines += ["The results above came from these commands, one benchmark at a time::", ""]
        lines += [f"    {steps[name]['command']}" if name in steps
                  else f"    python benchmarks/{name}.py --json benchmarks/results/{name}.json" for name in NAMES]
        lines += ["    python benchmarks/report.py", ""]
    else:
        lines += ["Or one benchmark at a time, then the page::", ""]
        lines += [f"    python benchmarks/{name}.py --json benchmarks/results/{name}.json" for name in NAMES]
        lines += ["    python benchmarks/report.py", ""]
    lines += [
        "Each benchmark's ``--help`` lists its options; ``benchmarks/README.md``",
        "says what each one measures and how.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=os.path.join(HERE, "results"),
                        help="the directory of the results (default benchmarks/results)")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="the documentation (default docs)")
    parser.add_argument("--analysis", default=os.path.join(HERE, "analysis.rst"),
                        help="the text of 'Where the time goes' (default benchmarks/analysis.rst, if it exists)")
    options = parser.parse_args()

    sources, dates = {}, []
    for name in NAMES:
        data, mtime = load(options.results, name)
        sources[name] = data
        if mtime:
            dates.append(mtime)
    run, _ = load(options.results, "run")

    plots = Plots(os.path.join(options.docs, IMAGES))
    drawn = {}
    for name in NAMES:
        if sources[name] is not None:
            try:
                drawn[name] = getattr(plots, name)(sources[name])
            except (KeyError, TypeError, ValueError) as e:
                print(f"report: {name}.json does not have what a plot needs ({e!r}); not run", file=sys.stderr)
                sources[name] = None
    # Plots of benchmarks without results would be stale: the page does not show them.
    for entry in os.listdir(plots.directory):
        if entry.endswith(".png") and entry not in plots.written:
            os.remove(os.path.join(plots.directory, entry))

    lines = [
        ".. This page is generated by benchmarks/report.py from the results of the benchmarks",
        "   (benchmarks/results/*.json); do not edit it by hand: run benchmarks/run.py or",
        "   benchmarks/report.py again.",
        "",
    ]
    lines += heading("Performance", "=")
    lines += intro(run, sources)
    lines += machineSection(sources, dates)
    lines += acceptSection(sources["accept"], drawn.get("accept", ()))
    lines += sendSection(sources["send"], drawn.get("send"))
    lines += memorySection(sources["memory"], drawn.get("memory"))
    lines += relaySection(sources["relay"], drawn.get("relay"))
    lines += pipelineSection(sources["pipeline"], drawn.get("pipeline"))
    lines += analysisSection(options.analysis)
    lines += reproduceSection(run)
    while lines and lines[-1] == "":
        lines.pop()
    page = os.path.join(options.docs, "performance.rst")
    with open(page, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"report: wrote {os.path.relpath(page)} and {len(plots.written)} plots in "
          f"{os.path.relpath(plots.directory)}", file=sys.stderr)


if __name__ == "__main__":
    main()
