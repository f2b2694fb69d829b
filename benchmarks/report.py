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
import re
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
    "mailrelay-1w": "#2a8c8c",
    "mailrelay-2w": "#145a5a",
    "sink-1w": "#4f7fc0",
    "sink-2w": "#17407a",
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
    # As wide as the text column the figures are drawn for (PAGE_WIDTH).
    return [f".. image:: {IMAGES}/{name}", "   :width: 100%", f"   :alt: {alt}", ""]


def notRun(name: str, command: str) -> list:
    return [f"Not run: there is no ``{name}.json`` among the results.  ``{command}`` makes it.", ""]


#: The width the page shows a figure at, in inches at 96 CSS pixels to
#: the inch: the text column of the documentation's theme (alabaster:
#: 940 px less its 220 px sidebar and 2 × 30 px padding).  A figure drawn
#: this wide and shown at C{:width: 100%} of that column shows a point as
#: a point, so the sizes below are the sizes a reader sees.
PAGE_WIDTH = 660 / 96
#: The smallest type in a figure, in points at the displayed size.
SMALLEST = 11
#: Pixels per inch of the PNG files: one and a half times the screen's, for
#: sharp text on most screens at a moderate file size.
DPI = 144
REFERENCE = "#555555"


def referenceLabel(name: str, value, others) -> str:
    """
    @return: the label of a line drawn at C{name}'s C{value} for the others
        to be compared with: a ceiling only when none of C{others} passes
        it, otherwise a reference, said so.
    """
    passed = [v for v in others if not missing(v) and v > value]
    return f"{name}: the ceiling here" if not passed else f"{name}: a reference, not a ceiling"


class Plots:
    """
    The figures of the page, drawn with matplotlib (Agg) into C{directory}:
    each as wide as the page's text column (L{PAGE_WIDTH}), with no type
    smaller than L{SMALLEST} points at that size, one panel under the
    other, horizontal bars with their values written at their ends.

    @ivar figures: the figures drawn, by file name, until they are saved
        (for the checks of the tests).
    """

    def __init__(self, directory: str, keep: bool = False) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot

        self.pyplot = matplotlib.pyplot
        self.directory = directory
        self.written = []
        self.keep = keep
        self.figures = {}
        self.pyplot.rcParams.update({
            "font.size": SMALLEST + 0.5,
            "axes.titlesize": SMALLEST + 1,
            "figure.titlesize": SMALLEST + 2,
            "xtick.labelsize": SMALLEST + 0.5,
            "ytick.labelsize": SMALLEST + 0.5,
            "legend.fontsize": SMALLEST,
            "axes.titlepad": 8,
            "savefig.dpi": DPI,
        })
        os.makedirs(directory, exist_ok=True)

    def figure(self, panels: list):
        """
        @param panels: the number of bars of each panel, top to bottom.
        @return: a figure as wide as the page, with one panel per entry,
            each as tall as its bars need.
        """
        heights = [0.31 * bars + 0.75 for bars in panels]
        figure, axes = self.pyplot.subplots(
            len(panels), 1, figsize=(PAGE_WIDTH, sum(heights) + 0.55), squeeze=False,
            gridspec_kw={"height_ratios": heights})
        return figure, list(axes[:, 0])

    def save(self, figure, name: str) -> None:
        figure.tight_layout(h_pad=1.2)
        figure.savefig(os.path.join(self.directory, name), dpi=DPI, metadata={"Software": None})
        if self.keep:
            self.figures[name] = figure
        else:
            self.pyplot.close(figure)
        self.written.append(name)

    def bars(self, ax, labels, values, colours, unit: str = "", decimals: int = 0, reference=None, spread=None):
        """
        Horizontal bars, the first label on top, each with its value
        written past its end; no value axis (the values are written).

        @param reference: C{(value, label)} of a dashed vertical line, or
            C{None}.
        @param spread: for each bar, the lowest and highest value of its
            repetitions (drawn as a whisker, and written after the value),
            or C{None}.
        """
        values = [0 if missing(v) else v for v in values]
        positions = list(range(len(labels)))
        ax.barh(positions, values, color=colours, height=0.72)
        ends = list(values)
        texts = [f"{v:,.{decimals}f}{unit}" for v in values]
        if spread:
            for i, (low, high) in enumerate(spread):
                ax.plot([low, high], [positions[i]] * 2, color="#222222", linewidth=1.5, zorder=3)
                ax.plot([low, high], [positions[i]] * 2, "|", color="#222222", markersize=12, zorder=3)
                ends[i] = max(ends[i], high)
                texts[i] += f"  ({low:,.{decimals}f} to {high:,.{decimals}f})"
        # On white, over the reference line, so that the line never runs
        # through a value.
        for position, end, text in zip(positions, ends, texts):
            ax.annotate(text, xy=(end, position), xytext=(5, 0), textcoords="offset points", va="center",
                        ha="left", fontsize=SMALLEST + 0.5, zorder=4,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        top = max(ends + [reference[0] if reference else 0]) or 1
        # Room for the longest value written after its bar.
        room = 0.25 if not spread else 0.9
        ax.set_xlim(0, top * (1 + room))
        if reference:
            value, label = reference
            ax.axvline(value, color=REFERENCE, linestyle="--", linewidth=1.2, zorder=2)
            right = value > top * 0.6
            ax.annotate(label, xy=(value, 1), xycoords=("data", "axes fraction"), xytext=(-4 if right else 4, 3),
                        textcoords="offset points", fontsize=SMALLEST, color=REFERENCE, va="bottom",
                        ha="right" if right else "left")
        ax.spines[["top", "right", "bottom"]].set_visible(False)
        ax.set_xticks([])
        ax.tick_params(axis="y", length=0)

    def title(self, ax, text: str, reference: bool) -> None:
        # Above the reference line's label, when there is one.
        ax.set_title(text, loc="left", pad=24 if reference else 8, fontsize=SMALLEST + 1)

    def accept(self, data: dict) -> tuple:
        configs = list(dict.fromkeys(r["config"] for r in data["results"]))
        names = []
        for key, unit, title, decimals, name in (
            ("msgs_per_s", "", "messages per second (higher is better)", 0, "accept-throughput.png"),
            ("cpu_s_per_1000", " s", "server CPU s per 1000 messages (lower is better)", 2, "accept-cpu.png"),
        ):
            panels = [[r for r in data["results"] if r["config"] == config] for config in configs]
            figure, axes = self.figure([len(rows) for rows in panels])
            for ax, config, rows in zip(axes, configs, panels):
                reference = None
                sink = next((r[key] for r in rows if r["server"] == "smtp-sink"), None)
                if key == "msgs_per_s" and not missing(sink):
                    others = [r[key] for r in rows if r["server"] != "smtp-sink"]
                    reference = (sink, referenceLabel("smtp-sink", sink, others))
                self.bars(ax, [r["server"] for r in rows], [r[key] for r in rows],
                          [COLOURS.get(r["server"], "#444444") for r in rows], unit, decimals, reference)
                self.title(ax, f"{config}: {CONFIGS.get(config, '')}", reference is not None)
            figure.suptitle(f"Receiving: {title}")
            self.save(figure, name)
            names.append(name)
        return tuple(names)

    def send(self, data: dict) -> str:
        counts = list(dict.fromkeys(r["connections"] for r in data["results"]))
        panels = [[r for r in data["results"] if r["connections"] == count] for count in counts]
        figure, axes = self.figure([len(rows) for rows in panels])
        for ax, count, rows in zip(axes, counts, panels):
            source = next((r["msgs_per_s"] for r in rows if r["client"] == "smtp-source"), None)
            reference = None
            if not missing(source):
                others = [r["msgs_per_s"] for r in rows if r["client"] != "smtp-source"]
                reference = (source, referenceLabel("smtp-source", source, others))
            self.bars(ax, [r["client"] for r in rows], [r["msgs_per_s"] for r in rows],
                      [LIGHTER.get(r["client"], COLOURS.get(r["client"], "#444444")) for r in rows], "", 0, reference)
            self.title(ax, f"{count} connection{'s' if count != 1 else ''}", reference is not None)
        figure.suptitle("Sending to smtp-sink: messages per second (higher is better)")
        self.save(figure, "send-throughput.png")
        return "send-throughput.png"

    def memory(self, data: dict) -> str:
        rows = data["results"]
        size = data["size"] / MiB
        figure, (growth, speed) = self.figure([len(rows), len(rows)])
        colours = [COLOURS.get(r["server"], "#444444") for r in rows]
        # The message's size is a reference: a server may well grow by more.
        self.bars(growth, [r["server"] for r in rows], [r["growth_mib"] for r in rows], colours, " MiB", 1,
                  (size, f"the message: {size:.4g} MiB"))
        self.title(growth, "resident set growth (lower is better)", True)
        self.bars(speed, [r["server"] for r in rows], [r["mib_per_s"] for r in rows], colours, " MiB/s", 0)
        self.title(speed, "MiB per second (higher is better)", False)
        figure.suptitle(f"Receiving one {size:.4g} MiB message")
        self.save(figure, "memory-growth.png")
        return "memory-growth.png"

    def relay(self, data: dict) -> str:
        summary = data["summary"]
        relays = relaysOf(data)
        shown = [shownName(name) for name in relays]
        repetitions = _repetitions(data)
        figure, axes = self.figure([len(relays), len(relays)])
        # The disk's rate of serial commits is no bound for these runs (their
        # sessions share fsyncs): the text gives it, the figure does not.
        for ax, key, title in zip(axes, ("endToEnd", "accept"), ("end to end", "accepted (250 once on disk)")):
            values = [summary[name].get(key) for name in relays]
            runs = [[run[key] for run in repetitions.get(name, []) if not missing(run.get(key))] for name in relays]
            spread = [(min(r), max(r)) for r in runs] if all(len(r) > 1 for r in runs) else None
            self.bars(ax, shown, values, [COLOURS.get(name, COLOURS["mailproto"]) for name in relays], "", 0, None,
                      spread)
            self.title(ax, title + (": median (lowest to highest)" if spread else ": median"), False)
        figure.suptitle("Durable relay: messages per second (higher is better)")
        self.save(figure, "relay-throughput.png")
        return "relay-throughput.png"

    def pipeline(self, data: dict):
        parts = [(rows, title) for rows, title in (
            (data["results"], f"pipelining load: {data['sessions']} sessions, {data['messages']:,} messages"
                              f" each, {data['size'] // 1024} KiB"),
            (data.get("postfix") or [], f"Postfix's smtp client: {data.get('postfixMessages'):,} messages"),
        ) if rows]
        if not parts:
            return None
        figure, axes = self.figure([len(rows) for rows, _ in parts])
        for ax, (rows, title) in zip(axes, parts):
            sink = next((r["msgs_per_s"] for r in rows if r["server"] == "smtp-sink"), None)
            reference = None
            if not missing(sink):
                others = [r["msgs_per_s"] for r in rows if r["server"] != "smtp-sink"]
                reference = (sink, referenceLabel("smtp-sink", sink, others))
            self.bars(ax, [r["server"] for r in rows], [r["msgs_per_s"] for r in rows],
                      [COLOURS.get(r["server"], "#444444") for r in rows], "", 0, reference)
            self.title(ax, title, reference is not None)
        figure.suptitle("Pipelining clients: messages per second (higher is better)")
        self.save(figure, "pipeline-throughput.png")
        return "pipeline-throughput.png"


def relaysOf(data: dict) -> list:
    """
    @return: the relays of C{relay.json}, in the order it ran them:
        C{mailrelay-Nw} for each number of workers, then C{postfix} (or,
        in results made before workers, C{mailproto}).
    """
    summary = data.get("summary", {})
    named = data.get("relays") or [name for name, value in summary.items() if isinstance(value, dict)]
    return [name for name in named if isinstance(summary.get(name), dict)]


def isMailproto(relay: str) -> bool:
    return relay == "mailproto" or relay.startswith("mailrelay-")


def shownName(relay: str) -> str:
    return "Postfix" if relay == "postfix" else relay


def comparisons(relays: list) -> list:
    """
    @return: the pairs of relays the relay section compares, C{(a, b)}
        for a / b: each of mailproto's with Postfix, then the one with the
        most workers with the one with the fewest.
    """
    ours = [relay for relay in relays if isMailproto(relay)]
    pairs = [(relay, "postfix") for relay in ours if "postfix" in relays]
    if len(ours) > 1:
        pairs.append((ours[-1], ours[0]))
    return pairs


def pairedRatios(data: dict, a: str, b: str, key: str = "endToEnd") -> list:
    """
    @return: C{a}'s C{key} over C{b}'s in each repetition that has both,
        in the order of the repetitions.
    """
    byRepetition = {}
    for relay, runs in _repetitions(data).items():
        for run in runs:
            byRepetition.setdefault(run.get("repetition"), {})[relay] = run
    ratios = [quotient(pair[a].get(key), pair[b].get(key)) for _, pair in sorted(byRepetition.items())
              if a in pair and b in pair]
    return [ratio for ratio in ratios if not missing(ratio)]


def _repetitions(data: dict) -> dict:
    """
    @return: the timed runs of C{relay.json} (not those under strace), by
        relay, in the order of their repetitions.
    """
    runs = {}
    for run in sorted(data.get("runs", []), key=lambda run: run.get("repetition", 0)):
        if not run.get("strace"):
            runs.setdefault(run.get("relay"), []).append(run)
    return runs


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
        "away), are the reference: small C programs that do little more than",
        "speak SMTP.  They are not always the fastest: where another program",
        "passes them, its ratio to them is above 1.00×, and the figures say",
        "\"a reference, not a ceiling\".",
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


def runDates(run, sources: dict) -> list:
    """
    @return: when the benchmarks whose results are here started and
        finished, as C{run.json} recorded (seconds since the epoch); empty
        if it did not.
    """
    steps = (run or {}).get("steps", {})
    found = []
    for name in NAMES:
        if sources.get(name) is None or name not in steps:
            continue
        for key in ("started", "finished"):
            try:
                found.append(datetime.datetime.fromisoformat(steps[name][key]).timestamp())
            except (KeyError, TypeError, ValueError):
                pass
    return found


def machineSection(sources: dict, dates: list) -> list:
    lines = heading("Machine")
    described = next((data["machine"] for data in sources.values() if data and data.get("machine")), None)
    if described is None:
        return lines + ["Not recorded: none of the results describes its machine.", ""]
    when = sorted({datetime.datetime.fromtimestamp(t, datetime.timezone.utc).date().isoformat() for t in dates})
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
        "alike.  *mailrelay-1w* and *mailrelay-2w* are not servers that throw",
        "mail away but mailproto's relay daemon, ``twistd mailrelay --workers 1``",
        "and ``--workers 2`` with its defaults (but for the listening backlog,",
        "1,024 as for every server here): each says 250 only once the",
        "message is durable in its spool (on the same disk as the relay section's",
        "queues), and sends it on meanwhile to an ``smtp-sink`` of its own, which",
        "throws it away.  *sink-1w* and *sink-2w* throw mail away again:",
        "``mailproto sink --workers 1`` and ``--workers 2 --quiet`` (see",
        ":doc:`sink`), mailproto's sink on one process and on two that share",
        "the listening socket, the same work as twisted.mail's on more than one",
        "core.  Each run starts a fresh server.  CPU is the server's (user and",
        "system time; for the relay daemon and the sink, of all its processes);",
        "peak RSS is its largest resident set during the run (for the relay",
        "daemon and the sink, its processes' peaks added up); smtp-source's CPU",
        "is the load generator's own, on the same cores.",
        "",
    ]
    if data is None:
        return lines + notRun("accept", "python benchmarks/accept.py --json benchmarks/results/accept.json")
    lines += [f"{number(data.get('messages'))} messages of 4 KiB per run (the 1 MiB configuration: a",
              f"twentieth of that); median of {data.get('repeat')}.", ""]
    for config in dict.fromkeys(r["config"] for r in data["results"]):
        rows = [[r["server"], number(r["msgs_per_s"]), times(r.get("vs_twisted_mail")), times(r.get("vs_smtp_sink")),
                 number(r.get("cpu_s_per_1000"), 3), number(r.get("peak_rss_mib"), 1),
                 number(r.get("client_cpu_s_per_1000"), 3)]
                for r in data["results"] if r["config"] == config]
        lines += listTable(f"{config}: {CONFIGS.get(config, config)}",
                           ["server", "msg/s", "× twisted.mail", "× smtp-sink", "CPU s / 1000 msgs", "peak RSS MiB",
                            "smtp-source CPU s / 1000 msgs"],
                           rows)
    spooled = {}
    for r in data["results"]:
        if not missing(r.get("spooled_at_end")):
            spooled.setdefault(r["config"], []).append(f"{r['server']} {number(r['spooled_at_end'])}")
    if spooled:
        lines += ["The relay daemon sends on while it takes in.  When ``smtp-source`` ended, it still held",
                  "this many messages (median of the runs): "
                  + "; ".join(f"{config}: {', '.join(held)}" for config, held in spooled.items()) + ".",
                  "The time to send those on is in no figure of this section; *Relaying: durable, end to",
                  "end* below has it.", ""]
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
        "mailproto's ``twistd mailrelay`` with its defaults, with one process",
        "(*mailrelay-1w*, ``--workers 1``) and with two worker processes that",
        "take mail in while their parent keeps the queue and delivers",
        "(*mailrelay-2w*, ``--workers 2``; see :doc:`workers`), and Postfix as a",
        "relay (its defaults, fsync included).  Each run starts a fresh relay with",
        "an empty queue.  *End to end* is messages over the time from the first",
        "connection until the sink has every message and the queue is empty;",
        "*accept* is messages over ``smtp-source``'s own time.  CPU counts every",
        "process of the relay, from the start of the load to its end.  The disk",
        "bound is how many serial durable commits",
        "(4 KiB write, fsync, rename, directory fsync) the disk under the queues",
        "makes per second: the bound for one session at a time, which concurrent",
        "sessions can pass by sharing fsyncs.",
        "",
    ]
    if data is None:
        return lines + notRun("relay", "python benchmarks/relay.py --json benchmarks/results/relay.json")
    summary = data.get("summary", {})
    relays = relaysOf(data)
    lines += [f"``smtp-source -s {data.get('sessions')} -m {data.get('messages')} -l {data.get('size')} -d``;"
              f" median of {data.get('repeat')}.", ""]
    rows = []
    for relay in relays:
        s = summary[relay]
        cpu = s.get("cpuPerMessage")
        rows.append([shownName(relay), number(s.get("endToEnd")), number(s.get("accept")),
                     number(None if missing(cpu) else 1000 * cpu, 2), number(s.get("logFsyncs"), 2),
                     number(s.get("straceFsyncs"), 2)])
    for a, b in comparisons(relays):
        rows.append([f"{shownName(a)} / {shownName(b)}",
                     *(times(quotient(summary[a].get(key), summary[b].get(key)))
                       for key in ("endToEnd", "accept", "cpuPerMessage")), "", ""])
    lines += listTable("Durable relay",
                       ["relay", "end-to-end msg/s", "accept msg/s", "CPU ms / msg", "fsyncs / msg (its log)",
                        "fsyncs / msg (strace)"], rows)
    notes = []
    if "postfix" not in relays:
        notes.append("Postfix did not run (it needs root).")
    if any(relay.startswith("mailrelay-") and relay != "mailrelay-1w" for relay in relays):
        notes.append("With workers, the count of fsyncs the relay logs is its parent's alone: strace's counts"
                     " every process.")
    notes += pairedNotes(data)
    disk = [d for d in data.get("diskCommitsPerSecond", []) if not missing(d)]
    if disk:
        notes.append("The disk's serial durable commits per second (the bound for one session at a time): "
                     + " and ".join(number(d) for d in disk) + ", before and after the timed runs.")
    failed = {relay: summary[relay].get("failedRuns") for relay in relays if summary[relay].get("failedRuns")}
    for relay, count in failed.items():
        notes.append(f"{count} run{'s' if count != 1 else ''} of {shownName(relay)} failed and"
                     f" {'are' if count != 1 else 'is'} not in the medians.")
    if notes:
        lines += [" ".join(notes), ""]
    lines += image(name, "end-to-end and accept messages per second, " + ", ".join(map(shownName, relays))
                   + ": median, lowest and highest repetition")
    return lines + processSection(data, relays) + profileSection(data)


def byProcess(values: dict) -> str:
    """
    @return: C{values} (seconds per message, by process) in milliseconds,
        the largest first, those under 0.005 ms left out.
    """
    ranked = sorted(values.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{process} {1000 * seconds:.2f}" for process, seconds in ranked if 1000 * seconds >= 0.005)


def processSection(data: dict, relays: list) -> list:
    """
    @return: the CPU time per message of each relay's processes, by
        what each does, and how long they waited for a CPU, from the
        medians of C{relay.json}.
    """
    summary = data.get("summary", {})
    runs = _repetitions(data)
    rows = []
    for relay in relays:
        cpu = summary[relay].get("cpuByProcess") or {}
        if cpu:
            waits = summary[relay].get("waitByProcess") or {}
            waited = [sum(run["waitByProcess"].values()) for run in runs.get(relay, []) if run.get("waitByProcess")]
            rows.append([shownName(relay), number(1000 * summary[relay]["cpuPerMessage"], 2), byProcess(cpu),
                         number(1000 * median(waited), 2) if waited else "n/a", byProcess(waits)])
    if not rows:
        return []
    lines = heading("CPU time by process", "~")
    lines += [
        "Milliseconds per message of the relay's processes in the timed runs,",
        "from ``/proc``: the median of the whole, then each process's median",
        "(the medians of the processes need not add up to that of the whole).",
        "*CPU* is user and system time; *waiting* is how long the threads were",
        "ready to run but waited for a CPU (Linux's ``schedstat``), with",
        "everything else running on the same cores.  For",
        "mailproto: its *parent* and each *worker*.  For Postfix: each of its",
        "programs (all its ``smtpd`` processes together, and so on), and the",
        "processes that ended during the run, which its ``master`` reaped (a",
        "Postfix daemon ends once it has served 100 requests, ``max_use``, as",
        "its ``cleanup`` and ``smtp`` processes do here); those ended",
        "processes' waits are not known.",
        "",
    ]
    return lines + listTable("Milliseconds per message, by process",
                             ["relay", "CPU", "CPU by process", "waiting", "waiting by process"], rows)


def profileSection(data: dict) -> list:
    """
    @return: where the CPU of each of mailproto's relay processes went,
        from the profiles of C{relay.json} (C{relay.py --profile}).
    """
    profiles = {relay: profile for relay, profile in (data.get("profiles") or {}).items() if profile}
    if not profiles:
        return []
    columns = [(relay, process, profile) for relay, run in profiles.items()
               for process, profile in run["processes"].items()]
    parts = []
    for _, _, profile in columns:
        parts += [part for part in profile["parts"] if part not in parts and part != WAITING]
    first = next(iter(profiles.values()))
    lines = heading("Where each process's CPU goes", "~")
    lines += [
        f"One more run of each (not timed, {number(first.get('messages'))} messages) with ``py-spy record",
        f"--nonblocking`` sampling every process of the relay {number(first.get('rate'))} times a second.",
        "py-spy counts a thread as active when it runs *or is ready to run*: on a",
        "machine whose cores are all busy, it finds threads waiting for a CPU",
        "too, so its samples add up to more than the CPU time.  Samples of a",
        "thread just woken from a wait (its innermost frame is the reactor's",
        "``epoll`` or a thread pool's wait for work) are set apart; every other",
        "sample is counted for the part of the relay that its stack is in (the",
        "innermost of: log lines; the parent and workers talking (AMP); the",
        "spool; sending on; taking in), else for what its innermost frame is in",
        "(the reactor, threads).  A part's CPU per message is its share of those",
        "samples times the process's CPU time per message in that run (from",
        "``/proc``); the kernel's time counts for the Python line that made the",
        "system call.  So the table says where a process was when it ran or was",
        "about to, in CPU milliseconds; a part that is often ready but waiting",
        "(after an ``fsync``, say) is overstated.",
        "",
    ]
    header = ["part"] + [f"{relay} {process}" for relay, process, _ in columns]

    def partCPU(profile, part):
        working = 1 - profile["parts"].get(WAITING, 0)
        return None if working <= 0 else 1000 * profile["cpuPerMessage"] * profile["parts"].get(part, 0) / working

    rows = [[part] + [number(partCPU(profile, part), 3) for _, _, profile in columns] for part in parts]
    rows.append(["CPU (``/proc``)"] + [number(1000 * profile["cpuPerMessage"], 3) for _, _, profile in columns])
    rows.append(["waiting for a CPU (``schedstat``)"]
                + [number(1000 * profile.get("waitPerMessage", float("nan")), 3) for _, _, profile in columns])
    rows.append(["active for py-spy"]
                + [number(1000 * profile.get("sampledSecondsPerMessage", float("nan")), 3) for _, _, profile in columns])
    rows.append([f"share of samples {WAITING}"]
                + [number(100 * profile["parts"].get(WAITING, 0), 0, " %") for _, _, profile in columns])
    rows.append(["share of samples in threads other than the main one"]
                + [number(100 * profile["threads"].get("other", 0), 0, " %") for _, _, profile in columns])
    lines += listTable("Milliseconds per message, by process and part", header, rows)
    lines += ["The functions each process was most often in (innermost frame, share of its samples), and",
              "mailproto's functions most often in its stacks (anywhere in them):", ""]
    for relay, process, profile in columns:
        top = "; ".join(f"``{name}`` {number(100 * share, 0, ' %')}" for name, share in profile["functions"][:5])
        under = "; ".join([f"``{name}`` {number(100 * share, 0, ' %')}" for name, share in profile.get("inclusive", [])
                           if not name.startswith(("<module>", "main "))][:5])
        lines += [f"- {relay} {process} ({number(profile['samples'])} samples): {top}.  In or under: {under}."]
    return lines + [""]


def median(values: list):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def pairedNotes(data: dict) -> list:
    """
    What the repetitions of C{relay.json} say beyond its medians: the
    relays compared within each repetition (one after the other), and
    how their CPU time per message changed from one repetition to the
    next.  Every figure is computed here from the same file as the table.
    """
    runs = _repetitions(data)
    relays = relaysOf(data) or list(runs)
    said = []
    for a, b in comparisons(relays):
        paired = pairedRatios(data, a, b)
        if not paired:
            continue
        faster = sum(1 for ratio in paired if ratio > 1)
        recorded = next((c.get("pairedMedian") for c in data.get("summary", {}).get("comparisons", [])
                         if (c.get("a"), c.get("b")) == (a, b)), None)
        if not missing(recorded) and abs(recorded - median(paired)) > 0.005:
            print(f"report: relay.json's paired median of {a} / {b}, {recorded:.3f}, is not the median of its"
                  f" repetitions ({median(paired):.3f}); the page gives the latter", file=sys.stderr)
        said.append(f"{shownName(a)} relayed {times(min(paired))} to {times(max(paired))} as fast as {shownName(b)}"
                    f" end to end (median {times(median(paired))}; faster in {faster} of {len(paired)} repetitions)")
    notes = []
    if said:
        notes.append("The table's ratios are of its medians.  Within each repetition (the relays one after the"
                     " other), " + "; ".join(said) + ".")
    cpu = {relay: [run.get("cpuPerMessage") for run in runs.get(relay, []) if not missing(run.get("cpuPerMessage"))]
           for relay in relays}
    if cpu and all(len(values) > 1 and max(values) > 1.25 * values[0] for values in cpu.values()):
        notes.append(
            "The machine slowed down during the run: for the same load, CPU time per message went from "
            + "; ".join(f"{1000 * values[0]:.2f} ms in the first repetition up to {1000 * max(values):.2f} ms"
                        f" for {shownName(relay)}" for relay, values in cpu.items())
            + ".")
    return notes


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
        "write.  The servers are those of the first section (the relay daemon",
        "included), each run a fresh one.  All get the same bytes, also those that do not offer",
        "PIPELINING (the table says which).  The client needs about as much",
        "CPU per message as the fastest servers, so for those it is as much",
        "the limit as the server.",
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
    fastest = max((r["msgs_per_s"] for r in data["results"] if not missing(r["msgs_per_s"])), default=None)
    if fastest:
        top = [r["server"] for r in data["results"] if not missing(r["msgs_per_s"]) and r["msgs_per_s"] >= 0.95 * fastest]
        lines += [f"The most this client did on this machine: {number(fastest)} msg/s, with"
                  f" {' and '.join(top)}{' (within 5 % of each other)' if len(top) > 1 else ''}.", ""]
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


#: The part of a profile that is no part of the relay: samples of a
#: thread woken from a wait, not yet running (as C{relay.py} says).
WAITING = "woken, not yet running (epoll, thread pool)"

#: What the relay with workers is measured against: the aims of each
#: row of L{workersSection} that has one, as ratios.
AIMS = {"relay": 1.5, "accept": 2.0}


def againstAim(ratio, paired, aim) -> str:
    """
    @param ratio: the ratio of the medians.
    @param paired: the median of the ratios within each repetition.
    @return: whether both reach C{aim} ("met" or "not met"; "" without
        an aim or a ratio).
    """
    if aim is None or missing(ratio):
        return ""
    return "met" if ratio >= aim and (missing(paired) or paired >= aim) else "not met"


def ratioText(value, aim=None) -> str:
    """
    @return: C{value} as a ratio with two decimals, or three where two
        would round it up to C{aim} or past it.
    """
    if not missing(value) and aim is not None and value < aim <= round(value, 2):
        return number(value, 3, "×")
    return times(value)


def pairedRuns(rows: dict, a: str, b: str, key: str = "msgs_per_s") -> list:
    """
    @param rows: the results of C{accept.json} or C{pipeline.json} of one
        configuration, by server; each server's C{runs} in the order of
        the repetitions.
    @return: C{a}'s C{key} over C{b}'s within each repetition.
    """
    runsA, runsB = rows.get(a, {}).get("runs", []), rows.get(b, {}).get("runs", [])
    ratios = [quotient(x.get(key), y.get(key)) for x, y in zip(runsA, runsB)]
    return [ratio for ratio in ratios if not missing(ratio)]


WORKERS = re.compile(r"^(?:mailrelay|sink)-(\d+)w$")


def workerCount(server: str):
    """
    @return: the number of workers of C{mailrelay-Nw} or C{sink-Nw}, or
        C{None}.
    """
    match = WORKERS.match(server)
    return int(match.group(1)) if match else None


def workerMeasures(sources: dict) -> list:
    """
    @return: C{(label, aim key, {workers: (msg/s, ratio, ratio within each
        repetition)})} of each benchmark that ran mailproto's relay daemon
        or its sink with workers.
    """
    relay, accept, pipeline = (sources.get(name) for name in ("relay", "accept", "pipeline"))
    measures = []
    if relay:
        summary = relay.get("summary", {})
        postfix = summary.get("postfix", {}).get("endToEnd")
        values = {}
        for r in relaysOf(relay):
            if r.startswith("mailrelay-"):
                paired = pairedRatios(relay, r, "postfix")
                values[workerCount(r)] = (summary[r].get("endToEnd"), quotient(summary[r].get("endToEnd"), postfix),
                                          median(paired) if paired else None)
        measures.append(("relay daemon: durable relay, end to end, × Postfix", "relay", values))
    if accept:
        rows = {r["server"]: r for r in accept["results"] if r["config"] == "20x10x4KiB"}
        for prefix, label, aim in (
            ("sink-", "sink: accepting 20x10x4KiB, thrown away, × twisted.mail (which throws mail away)", "accept"),
            ("mailrelay-", "relay daemon: accepting 20x10x4KiB, durably, × twisted.mail (which throws mail away)",
             None),
        ):
            values = {}
            for name, r in rows.items():
                if name.startswith(prefix) and workerCount(name):
                    paired = pairedRuns(rows, name, "twisted.mail")
                    values[workerCount(name)] = (r["msgs_per_s"], r.get("vs_twisted_mail"),
                                                 median(paired) if paired else None)
            measures.append((label, aim, values))
    if pipeline:
        rows = {r["server"]: r for r in pipeline["results"]}
        for prefix, label in (("sink-", "sink: accepting from a pipelining client, thrown away, × smtp-sink"),
                              ("mailrelay-", "relay daemon: accepting from a pipelining client, durably, × smtp-sink")):
            values = {}
            for name, r in rows.items():
                if name.startswith(prefix) and workerCount(name):
                    paired = pairedRuns(rows, name, "smtp-sink")
                    values[workerCount(name)] = (r["msgs_per_s"], r.get("vs_smtp_sink"),
                                                 median(paired) if paired else None)
            measures.append((label, "pipeline", values))
    return [measure for measure in measures if measure[2]]


def workersSection(sources: dict) -> list:
    """
    @return: mailproto's relay daemon (and its sink) with one and with
        more worker processes, from the benchmarks that run them, side by
        side with the aims.
    """
    measures = workerMeasures(sources)
    counts = sorted({n for _, _, values in measures for n in values})
    if not counts:
        return []
    cores = next((d["machine"].get("cores") for d in sources.values() if d and d.get("machine")), None)
    lines = heading("The relay with worker processes")
    lines += [
        "mailproto's relay daemon with one process (``--workers 1``) and with",
        "worker processes that take mail in while the parent keeps the queue",
        "and delivers (``--workers 2``; see :doc:`workers`), and its sink on one",
        "and two processes (``mailproto sink --workers N``), from the benchmarks",
        f"above that run them, on this machine's {number(cores)} cores.",
        "Each cell gives the ratio of the medians, the messages per second, and",
        "the median of the ratios within each repetition (the programs one after",
        "the other); an aim is met when both ratios reach it.  The aim for",
        "accepting is the sink's, which throws mail away as twisted.mail does;",
        "the relay daemon makes each message durable before its 250.  The last",
        "column is the ratio of the messages per second of the most workers to",
        "the fewest.",
        "",
    ]
    rows = []
    for label, key, values in measures:
        aim = AIMS.get(key)
        cells = []
        for count in counts:
            rate, ratio, paired = values.get(count, (None, None, None))
            verdict = againstAim(ratio, paired, aim)
            cells.append(f"{ratioText(ratio, aim)} ({number(rate)} msg/s; per repetition {ratioText(paired, aim)})"
                         + (f"; {verdict}" if verdict else ""))
        scaling = quotient(values.get(counts[-1], (None,))[0], values.get(counts[0], (None,))[0])
        rows.append([label, "none" if aim is None else f"≥ {times(aim)}", *cells,
                     times(scaling) if len(counts) > 1 else "n/a"])
    columns = [f"{count} worker{'s' if count > 1 else ''}" for count in counts]
    lines += listTable("The relay with workers",
                       ["measure", "aim", *columns, f"{columns[-1]} / {columns[0]}" if len(counts) > 1 else "scaling"],
                       rows)
    return lines + balanceNotes(sources)


def balanceNotes(sources: dict) -> list:
    """
    @return: how the work was shared between the workers in each run of
        C{accept.json} and C{pipeline.json} that recorded the CPU time of
        each of the relay daemon's processes.
    """
    said = []
    for name, title in (("accept", "accepting from smtp-source"), ("pipeline", "the pipelining load")):
        data = sources.get(name)
        for row in (data or {}).get("results", []):
            runs = [run.get("cpu_s_per_1000_by_process") or {} for run in row.get("runs", [])]
            shares = [[seconds for process, seconds in sorted(run.items()) if process.startswith("worker")]
                      for run in runs]
            shares = [share for share in shares if len(share) > 1]
            if shares:
                where = f"{title} ({row['config']})" if row.get("config") else title
                said.append(f"In {where}, the CPU seconds per 1000 messages of {row['server']}'s workers were, run"
                            " by run: " + "; ".join(" and ".join(number(seconds, 3) for seconds in share)
                                                    for share in shares) + ".")
    if not said:
        return []
    return said + [
        "The kernel gives each new connection to whichever process accepts first: clients that",
        "connect one after another and stay connected can end up mostly with one worker.",
        "",
    ]


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


def makePage(results: str, docs: str, analysis: str, keep: bool = False):
    """
    Write C{DOCS/performance.rst} and its plots from the results in
    C{results}.

    @param keep: whether to keep the figures open (in the returned
        L{Plots}' C{figures}), to look at them.
    @return: the page's path, and the L{Plots}.
    """
    sources, dates = {}, []
    for name in NAMES:
        data, mtime = load(results, name)
        sources[name] = data
        if mtime:
            dates.append(mtime)
    run, _ = load(results, "run")
    dates = runDates(run, sources) or dates

    plots = Plots(os.path.join(docs, IMAGES), keep)
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
    lines += workersSection(sources)
    lines += analysisSection(analysis)
    lines += reproduceSection(run)
    while lines and lines[-1] == "":
        lines.pop()
    page = os.path.join(docs, "performance.rst")
    with open(page, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return page, plots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=os.path.join(HERE, "results"),
                        help="the directory of the results (default benchmarks/results)")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="the documentation (default docs)")
    parser.add_argument("--analysis", default=os.path.join(HERE, "analysis.rst"),
                        help="the text of 'Where the time goes' (default benchmarks/analysis.rst, if it exists)")
    options = parser.parse_args()
    page, plots = makePage(options.results, options.docs, options.analysis)
    print(f"report: wrote {os.path.relpath(page)} and {len(plots.written)} plots in "
          f"{os.path.relpath(plots.directory)}", file=sys.stderr)


if __name__ == "__main__":
    main()
