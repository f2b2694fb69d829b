# -*- test-case-name: mailproto.test.test_workerlog -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
How a relay's worker process logs: its events go to the parent, which
logs them again with the worker named, so that the daemon has one log.

A worker writes one line per event on its standard output (a pipe to the
parent), the lines of one reactor turn in one write.  Most events are
sent as a JSON array, C{[time, level, namespace, system, text, fields]}:
the text already formatted, and the event's other fields (for the
parent's JSON log) as JSON can carry them.  An event with a failure is
sent in Twisted's own JSON form (C{eventAsJSON}), which keeps the
failure and its traceback.  The parent (L{eventFromWorker}) makes an
event of either, whose text is C{worker N: } and the worker's text.

Under load a worker logs a line for every message it queues; the array
costs both ends about half what Twisted's form does, as it needs no
flattening of the format string and no rebuilding of it in the parent.
"""

from __future__ import annotations

import json

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    InvalidLogLevelError,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
)
from zope.interface import implementer

from mailproto._relayd._logs import BatchedFile, _jsonValue, _keep

#: Keys of an event that are not its fields: legacy C{log.msg}'s own.
_NOT_FIELDS = frozenset(("format", "message", "isError", "failure", "why", "system"))

#: The format of the events the parent logs for a worker.
WORKER_FORMAT = "worker {mailrelay_worker}: {mailrelay_text}"


def workerLine(event: dict) -> str:
    """
    @return: a log event as a worker sends it to its parent: one line,
        newline included.
    """
    if "log_failure" in event:
        return eventAsJSON(event) + "\n"
    fields = {key: _jsonValue(value) for key, value in event.items() if not key.startswith("log_") and key not in _NOT_FIELDS}
    level = event.get("log_level")
    record = [
        event.get("log_time"),
        None if level is None else level.name,
        event.get("log_namespace"),
        event.get("log_system"),
        formatEvent(event),
        fields,
    ]
    return json.dumps(record, separators=(",", ":")) + "\n"


@implementer(ILogObserver)
class WorkerLogObserver:
    """
    A worker's log observer: each event as a L{workerLine}, written at the
    end of the reactor's turn (L{BatchedFile}).
    """

    def __init__(self, outFile, reactor=None) -> None:
        """
        @param outFile: the worker's standard output (text).
        @param reactor: as for L{BatchedFile}.
        """
        self.writer = BatchedFile(outFile, reactor)

    def __call__(self, event: dict) -> None:
        try:
            line = workerLine(event)
        except Exception as e:
            line = workerLine({"log_time": event.get("log_time"), "log_level": LogLevel.error, "log_format": f"(unformattable log event: {e!r})"})
        self.writer.write(line)
        self.writer.flush()


def workerObserver(outFile, reactor=None):
    """
    @return: the observer a worker logs to: L{WorkerLogObserver}, without
        the chatter the relay's log leaves out.
    """
    return FilteringLogObserver(WorkerLogObserver(outFile, reactor), [_keep])


def _fromArray(line: str) -> dict | None:
    try:
        when, level, namespace, system, text, fields = json.loads(line)
        logLevel = LogLevel.info if level is None else LogLevel.levelWithName(level)
    except (ValueError, TypeError, RecursionError, InvalidLogLevelError):
        return None
    if not isinstance(text, str) or not isinstance(fields, dict) or not isinstance(when, (int, float, type(None))):
        return None
    event = {key: value for key, value in fields.items() if not key.startswith("log_") and key not in _NOT_FIELDS}
    event.update(log_time=when, log_level=logLevel, log_namespace=namespace, mailrelay_text=text)
    if isinstance(system, str):
        event["log_system"] = system
    return event


def _fromTwisted(line: str) -> dict | None:
    try:
        event = eventFromJSON(line)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(event, dict) or "log_format" not in event:
        return None
    text = formatEvent(event)
    event.pop("log_flattened", None)
    event["mailrelay_text"] = text
    return event


def eventFromWorker(line: str, worker: int) -> dict | None:
    """
    @param line: a line a worker wrote on its standard output.
    @param worker: its number.
    @return: the log event to publish in the parent, its text the
        worker's, named; or C{None} if the line is not a log event.
    """
    event = _fromArray(line) if line.startswith("[") else _fromTwisted(line)
    if event is not None:
        event.update(mailrelay_worker=worker, log_format=WORKER_FORMAT)
    return event
