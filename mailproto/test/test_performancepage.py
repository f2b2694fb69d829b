# -*- test-case-name: mailproto.test.test_performancepage -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The performance page (C{docs/performance.rst}, made by
C{benchmarks/report.py} from the saved results in C{benchmarks/results/})
agrees with those results, and its figures are readable at the page's
width: made again from the same files, the page is the one in the
tree; each figure is as wide as the text column, with no type smaller
than 11 points there and no two texts on top of each other; a line is
called a ceiling only where no bar passes it; and every ratio the relay
section and the table of the relay with workers quote is computed from
their own result files.

Skipped without matplotlib (the benchmarks' extra), or without the
C{benchmarks/} directory of a checkout.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import pathlib
import statistics

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mailproto.test.test_docs import DOCS

# Beside docs/ in the source tree (MAILPROTO_SOURCE when the installed
# package is tested), else beside this checkout's package.
_BENCHMARKS = (DOCS.parent if DOCS is not None else pathlib.Path(__file__).resolve().parent.parent.parent) / "benchmarks"


_imported = []
_made = []


def _report():
    """
    @return: C{benchmarks/report.py}, imported (once).
    """
    if _imported:
        return _imported[0]
    if not (_BENCHMARKS / "report.py").exists() or DOCS is None:
        raise SkipTest("benchmarks/ and docs/ of a checkout are needed")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SkipTest("matplotlib (pip install .[bench]) is needed") from None
    spec = importlib.util.spec_from_file_location("_performance_report", _BENCHMARKS / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _imported.append(module)
    return module


class PageTests(SynchronousTestCase):
    """
    The page, and its figures, made again from the saved results.
    """

    def setUp(self):
        self.report = _report()
        # Made once for all the tests here: drawing takes a second or two.
        if not _made:
            docs = os.path.abspath(self.mktemp())
            os.makedirs(docs)
            _made.append(
                self.report.makePage(str(_BENCHMARKS / "results"), docs, str(_BENCHMARKS / "analysis.rst"), keep=True)
            )
        self.page, self.plots = _made[0]

    def test_pageUpToDate(self):
        """
        The page in the tree is what C{report.py} makes from the saved
        results and C{analysis.rst}: its text and tables were not edited
        by hand, and every figure in them comes from those files.
        """
        with open(self.page, encoding="utf-8") as f:
            made = f.read()
        self.assertEqual((DOCS / "performance.rst").read_text(encoding="utf-8"), made)
        self.assertEqual(sorted(self.plots.written), sorted(os.listdir(DOCS / "_static" / "performance")))

    def test_shownAtTheirWidth(self):
        """
        Each figure is as wide as the text column and is shown at its full
        width, so a point in it is a point on the page.
        """
        with open(self.page, encoding="utf-8") as f:
            text = f.read()
        for name, figure in self.plots.figures.items():
            self.assertAlmostEqual(figure.get_figwidth(), self.report.PAGE_WIDTH, 3, name)
            self.assertIn(f".. image:: _static/performance/{name}\n   :width: 100%\n", text)

    def texts(self, figure):
        from matplotlib.text import Text

        figure.canvas.draw()
        return [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()]

    def test_typeSize(self):
        """
        No text in a figure is smaller than 11 points.
        """
        for name, figure in self.plots.figures.items():
            for text in self.texts(figure):
                self.assertGreaterEqual(text.get_fontsize(), 11, (name, text.get_text()))

    def test_noOverlap(self):
        """
        No two texts of a figure overlap, and none runs off the figure.
        """
        for name, figure in self.plots.figures.items():
            texts = self.texts(figure)
            renderer = figure.canvas.get_renderer()
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
            whole = figure.bbox
            for label, box in boxes:
                self.assertTrue(
                    box.x0 >= whole.x0 - 1 and box.x1 <= whole.x1 + 1 and box.y0 >= whole.y0 - 1 and box.y1 <= whole.y1 + 1,
                    (name, label),
                )
            for i, (first, a) in enumerate(boxes):
                for second, b in boxes[i + 1 :]:
                    overlap = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
                    self.assertFalse(overlap[0] > 1 and overlap[1] > 1, (name, first, second))

    def test_ceilings(self):
        """
        A line labelled a ceiling has no bar of its panel past it; a line
        some bar passes says it is a reference.
        """
        seen = set()
        for name, figure in self.plots.figures.items():
            for ax in figure.axes:
                labels = [t.get_text() for t in ax.texts if "ceiling" in t.get_text()]
                if not labels:
                    continue
                [line] = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
                where = line.get_xdata()[0]
                widths = [patch.get_width() for patch in ax.patches]
                passed = any(width > where for width in widths)
                [label] = labels
                seen.add(passed)
                if passed:
                    self.assertIn("a reference, not a ceiling", label, name)
                else:
                    self.assertIn("the ceiling here", label, name)
        # The saved results have both kinds.
        self.assertEqual(seen, {True, False})

    def test_relayRatios(self):
        """
        The relay section's ratios are computed from relay.json: the
        table's from its medians, the text's from its repetitions paired
        back to back, and said which is which; each of mailproto's relays
        is compared with Postfix, and the most workers with the fewest.
        """
        with open(_BENCHMARKS / "results" / "relay.json") as f:
            data = json.load(f)
        summary = data["summary"]
        with open(self.page, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual(
            [(c["a"], c["b"]) for c in summary["comparisons"]],
            [("mailrelay-1w", "postfix"), ("mailrelay-2w", "postfix"), ("mailrelay-2w", "mailrelay-1w")],
        )
        self.assertIn("The table's ratios are of its medians.", text)
        for comparison in summary["comparisons"]:
            a, b = comparison["a"], comparison["b"]
            tableRatio = summary[a]["endToEnd"] / summary[b]["endToEnd"]
            shown = self.report.shownName(b)
            self.assertIn(f"   * - {a} / {shown}\n     - {tableRatio:.2f}×\n", text)
            self.assertIn(f"{a} relayed ", text)
            self.assertIn(f"as fast as {shown} end to end (median {comparison['pairedMedian']:.2f}×;", text)

    def test_workersTable(self):
        """
        The table of the relay with workers gives, for each number of
        workers, the ratios of the three benchmarks' result files (of
        their medians, and the median of those within each repetition)
        for the relay daemon and the sink, and says whether each met its
        aim: only if both reach it.
        """
        results = {}
        for name in ("relay", "accept", "pipeline"):
            with open(_BENCHMARKS / "results" / f"{name}.json") as f:
                results[name] = json.load(f)
        with open(self.page, encoding="utf-8") as f:
            text = f.read()
        table = text[text.index(".. list-table:: The relay with workers"):]
        table = table[: table.index("\n\n", table.index("   * -"))]
        summary = results["relay"]["summary"]
        byRepetition = {}
        for run in results["relay"]["runs"]:
            byRepetition.setdefault(run["repetition"], {})[run["relay"]] = run["endToEnd"]
        accept = {r["server"]: r for r in results["accept"]["results"] if r["config"] == "20x10x4KiB"}
        pipeline = {r["server"]: r for r in results["pipeline"]["results"]}

        def paired(rows, a, b):
            return statistics.median(x["msgs_per_s"] / y["msgs_per_s"] for x, y in zip(rows[a]["runs"], rows[b]["runs"]))

        def cell(rate, ratio, inRepetitions, aim):
            shown = self.report.ratioText
            text = f"     - {shown(ratio, aim)} ({rate:,.0f} msg/s; per repetition {shown(inRepetitions, aim)})"
            if aim is not None:
                text += "; met" if ratio >= aim and inRepetitions >= aim else "; not met"
            return text + "\n"

        for workers in (1, 2):
            relay, sink = f"mailrelay-{workers}w", f"sink-{workers}w"
            rate = summary[relay]["endToEnd"]
            inRepetitions = statistics.median(pair[relay] / pair["postfix"] for pair in byRepetition.values())
            self.assertIn(cell(rate, rate / summary["postfix"]["endToEnd"], inRepetitions, 1.5), table)
            # The aim for accepting is the sink's, which throws mail away
            # as twisted.mail does; the relay daemon's row has none.
            self.assertIn(cell(accept[sink]["msgs_per_s"], accept[sink]["vs_twisted_mail"],
                               paired(accept, sink, "twisted.mail"), 2.0), table)
            self.assertIn(cell(accept[relay]["msgs_per_s"], accept[relay]["vs_twisted_mail"],
                               paired(accept, relay, "twisted.mail"), None), table)
            for server in (relay, sink):
                self.assertIn(cell(pipeline[server]["msgs_per_s"], pipeline[server]["vs_smtp_sink"],
                                   paired(pipeline, server, "smtp-sink"), None), table)

    def test_ratioText(self):
        """
        A ratio just under an aim is not rounded up to it.
        """
        self.assertEqual(self.report.ratioText(1.4993, 1.5), "1.499×")
        self.assertEqual(self.report.ratioText(1.4949, 1.5), "1.49×")
        self.assertEqual(self.report.ratioText(1.5, 1.5), "1.50×")
        self.assertEqual(self.report.ratioText(1.4993), "1.50×")


class PairedNotesTests(SynchronousTestCase):
    """
    L{pairedNotes}: what the relay benchmark's repetitions say, from the
    file alone.
    """

    def setUp(self):
        self.report = _report()

    def relayData(self, mailproto, postfix, cpu=(0.001, 0.001)):
        runs = []
        for repetition, (m, p) in enumerate(zip(mailproto, postfix)):
            runs.append({"relay": "mailproto", "repetition": repetition, "endToEnd": m, "cpuPerMessage": cpu[0] * (1 + repetition)})
            runs.append({"relay": "postfix", "repetition": repetition, "endToEnd": p, "cpuPerMessage": cpu[1] * (1 + repetition)})
        # A run under strace is not a repetition.
        runs.append({"relay": "mailproto", "strace": True, "repetition": 0, "endToEnd": 1e9, "cpuPerMessage": 1})
        return {"runs": runs, "summary": {}}

    def test_ranges(self):
        """
        The lowest, highest and median ratio of the repetitions, and in
        how many mailproto was faster; the CPU drift, when there is one.
        """
        notes = self.report.pairedNotes(self.relayData([100, 300, 200], [200, 100, 100]))
        self.assertEqual(
            notes[0],
            "The table's ratios are of its medians.  Within each repetition (the relays one after the other), mailproto "
            "relayed 0.50× to 3.00× as fast as Postfix end to end (median 2.00×; faster in 2 of 3 repetitions).",
        )
        self.assertEqual(
            notes[1],
            "The machine slowed down during the run: for the same load, CPU time per message went from 1.00 ms in the "
            "first repetition up to 3.00 ms for mailproto; 1.00 ms in the first repetition up to 3.00 ms for Postfix.",
        )

    def test_steady(self):
        """
        Without a drift in CPU time, nothing is said about it; a
        repetition with one relay only is left out.
        """
        data = self.relayData([100, 100], [100, 50])
        for run in data["runs"]:
            run["cpuPerMessage"] = 0.001
        data["runs"].append({"relay": "mailproto", "repetition": 7, "endToEnd": 5.0, "cpuPerMessage": 0.001})
        notes = self.report.pairedNotes(data)
        self.assertEqual(len(notes), 1)
        self.assertIn("1.00× to 2.00×", notes[0])
        self.assertIn("faster in 1 of 2 repetitions", notes[0])

    def test_workers(self):
        """
        With workers, each of mailproto's relays is compared with Postfix
        within each repetition, and the one with the most workers with
        the one with the fewest; a repetition without one of a pair is
        left out of that pair's ratios.
        """
        runs = []
        for repetition, rates in enumerate([(100, 150, 100), (100, 300, 200), (100, 200, None)]):
            for relay, rate in zip(("mailrelay-1w", "mailrelay-2w", "postfix"), rates):
                if rate is not None:
                    runs.append({"relay": relay, "repetition": repetition, "endToEnd": rate, "cpuPerMessage": 0.001})
        data = {"relays": ["mailrelay-1w", "mailrelay-2w", "postfix"], "runs": runs,
                "summary": {"mailrelay-1w": {}, "mailrelay-2w": {}, "postfix": {}}}
        self.assertEqual(
            self.report.comparisons(data["relays"]),
            [("mailrelay-1w", "postfix"), ("mailrelay-2w", "postfix"), ("mailrelay-2w", "mailrelay-1w")],
        )
        [note] = self.report.pairedNotes(data)
        self.assertIn("mailrelay-1w relayed 0.50× to 1.00× as fast as Postfix end to end (median 0.75×; faster in 0 of 2", note)
        self.assertIn("mailrelay-2w relayed 1.50× to 1.50× as fast as Postfix end to end (median 1.50×; faster in 2 of 2", note)
        self.assertIn("mailrelay-2w relayed 1.50× to 3.00× as fast as mailrelay-1w end to end (median 2.00×; faster in 3 of 3", note)

    def test_referenceLabel(self):
        """
        A line is a ceiling only if nothing passes it.
        """
        self.assertEqual(self.report.referenceLabel("smtp-sink", 10, [3, 10, float("nan"), None]), "smtp-sink: the ceiling here")
        self.assertEqual(self.report.referenceLabel("smtp-sink", 10, [3, 11]), "smtp-sink: a reference, not a ceiling")

    def test_unchangedInput(self):
        """
        The results are only read.
        """
        data = self.relayData([100, 300], [200, 100])
        before = copy.deepcopy(data)
        self.report.pairedNotes(data)
        self.assertEqual(data, before)
