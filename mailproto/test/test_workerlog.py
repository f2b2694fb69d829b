# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._relayd._workerlog}: a worker's log events reach
its parent's log, named, with their fields.
"""

from __future__ import annotations

import io
import json

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, LogPublisher, Logger, formatEventAsClassicLogText
from twisted.trial.unittest import SynchronousTestCase

from mailproto._relayd._logs import eventAsJSONLine
from mailproto._relayd._workerlog import WorkerLogObserver, eventFromWorker, workerLine, workerObserver


class _CountingFile(io.StringIO):
    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def _logged(emit) -> list[dict]:
    """
    @param emit: called with a L{Logger} whose events are collected.
    @return: the events it logged.
    """
    events: list[dict] = []
    publisher = LogPublisher(events.append)
    emit(Logger(namespace="mailproto._relay", observer=publisher))
    return events


def _text(event: dict) -> str:
    return formatEventAsClassicLogText(event, lambda when: "T")


class RoundTripTests(SynchronousTestCase):
    """
    What the parent logs for a worker's event.
    """

    def throughParent(self, event: dict, worker: int = 2) -> dict:
        line = workerLine(event)
        self.assertTrue(line.endswith("\n"))
        self.assertNotIn("\n", line[:-1])
        parent = eventFromWorker(line[:-1], worker)
        self.assertIsNotNone(parent, line)
        return parent

    def test_queuedLine(self):
        """
        A worker's C{Queued} line is logged by the parent as the worker's
        text, named, with its time, level and namespace, and its fields
        for the JSON log.
        """
        [event] = _logged(
            lambda log: log.info(
                "Queued {queueID} from {sender} for {recipients} ({size} octets) from {client}",
                queueID="1a25069979de9541b231478",
                sender="<bench@example.org>",
                recipients=["<a@example.com>", "<b@example.com>"],
                size=4381,
                client="127.0.0.1",
            )
        )
        parent = self.throughParent(event)
        self.assertEqual(
            _text(parent),
            "T [mailproto._relay#info] worker 2: Queued 1a25069979de9541b231478 from <bench@example.org> "
            "for ['<a@example.com>', '<b@example.com>'] (4381 octets) from 127.0.0.1\n",
        )
        self.assertEqual((parent["log_time"], parent["log_level"]), (event["log_time"], LogLevel.info))
        record = json.loads(eventAsJSONLine(parent))
        self.assertEqual(record["text"], "worker 2: " + _text(event).split("] ", 1)[1].rstrip("\n"))
        self.assertEqual(
            {k: record[k] for k in ("queueID", "size", "recipients", "mailrelay_worker", "level", "namespace")},
            {
                "queueID": "1a25069979de9541b231478",
                "size": 4381,
                "recipients": ["<a@example.com>", "<b@example.com>"],
                "mailrelay_worker": 2,
                "level": "info",
                "namespace": "mailproto._relay",
            },
        )

    def test_systemAndText(self):
        """
        A legacy event's system is kept, and text that is not ASCII comes
        through whole; objects JSON cannot carry become their text.
        """
        event = {
            "log_time": 1.5,
            "log_level": LogLevel.warn,
            "log_namespace": "log_legacy",
            "log_system": "-",
            "log_format": "{what} naïve {thing}",
            "what": "Port closed",
            "thing": object,
            "isError": 0,
        }
        parent = self.throughParent(event, 1)
        self.assertEqual(_text(parent), "T [-] worker 1: Port closed naïve <class 'object'>\n")
        self.assertEqual(parent["thing"], "<class 'object'>")
        self.assertNotIn("isError", parent)

    def test_failure(self):
        """
        An event with a failure keeps it: the parent's log shows the
        worker's traceback.
        """

        def emit(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("worker {worker}: cannot accept", worker=1)

        [event] = _logged(emit)
        parent = self.throughParent(event, 1)
        text = _text(parent)
        self.assertTrue(text.startswith("T [mailproto._relay#critical] worker 1: worker 1: cannot accept\n"), text)
        self.assertIn("ZeroDivisionError", text)
        self.assertIn("Traceback", json.loads(eventAsJSONLine(parent))["traceback"])

    def test_notEvents(self):
        """
        A line that is not a worker's log event, however it is malformed,
        gives C{None} (the parent then logs it as it is).
        """
        good = json.loads(workerLine({"log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "n", "log_format": "x"}))
        for line in (
            "",
            "hello",
            "[",
            "[]",
            "{}",
            '{"log_level": 1}',
            "[1, 2, 3]",
            json.dumps(good[:-1]),
            json.dumps(good + [1]),
            json.dumps([*good[:1], "loud", *good[2:]]),
            json.dumps(["then", *good[1:]]),
            json.dumps([*good[:4], 7, good[5]]),
            json.dumps([*good[:5], []]),
            "[" * 100000,
            "{" * 100000,
            '{"log_format": "x", "log_failure": ' + "[" * 100000 + "}",
            "\udcff",
        ):
            self.assertIsNone(eventFromWorker(line, 1), line[:50])

    def test_fieldsCannotPose(self):
        """
        A field named like Twisted's own keys cannot set them in the
        parent.
        """
        line = json.dumps([1.0, "info", "n", None, "text", {"log_format": "{x}", "log_failure": "no", "x": 1}])
        parent = eventFromWorker(line, 3)
        self.assertEqual(_text(parent), "T [n#info] worker 3: text\n")
        self.assertNotIn("log_failure", parent)


class ObserverTests(SynchronousTestCase):
    """
    L{WorkerLogObserver} and L{workerObserver}.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.running = True
        self.out = _CountingFile()

    def test_oneWritePerTurn(self):
        """
        The lines of one reactor turn go to the parent in one write.
        """
        observer = WorkerLogObserver(self.out, self.reactor)
        for n in range(3):
            observer({"log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "n", "log_format": f"line {n}"})
        self.assertEqual(self.out.writes, 0)
        self.reactor.advance(0)
        self.assertEqual(self.out.writes, 1)
        texts = [eventFromWorker(line, 1)["mailrelay_text"] for line in self.out.getvalue().splitlines()]
        self.assertEqual(texts, ["line 0", "line 1", "line 2"])

    def test_unwritable(self):
        """
        An event that cannot be written as a line still gives one, saying
        so.
        """

        class Unprintable:
            def __str__(self):
                raise RuntimeError("no")

        WorkerLogObserver(self.out, self.reactor)({"log_time": 1.0, "log_level": LogLevel.info, "log_format": "{x}", "x": Unprintable()})
        self.reactor.advance(0)
        [line] = self.out.getvalue().splitlines()
        self.assertIn("unformattable log event", eventFromWorker(line, 1)["mailrelay_text"])

    def test_noise(self):
        """
        Twisted's DNS chatter is left out, as in the relay's own log.
        """
        observer = workerObserver(self.out, self.reactor)
        observer({"log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "log_legacy", "log_format": "(UDP Port 5353 Closed)"})
        observer({"log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "log_legacy", "log_format": "kept"})
        self.reactor.advance(0)
        self.assertEqual([eventFromWorker(line, 1)["mailrelay_text"] for line in self.out.getvalue().splitlines()], ["kept"])
