# -*- test-case-name: mailproto.test.test_mailrelay -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's log: one line per event, as text or as JSON, into a file that
SIGHUP reopens (for C{logrotate} and its peers, which move the file away
and signal the process).

Text lines are Twisted's usual ones.  A JSON line is one object::

    {"time": "2026-11-21T10:00:00.123Z", "level": "info",
     "namespace": "mailproto._relay", "text": "Queued 1763719200.0001a2b3 from ...",
     "queueID": "1763719200.0001a2b3", "sender": "jo@example.com", ...}

with the event's named fields (those of its format string, and any others
whose values JSON can carry) and, for a failure, C{"traceback"}.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import sys

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

FORMATS = ("text", "json")


# What Twisted's DNS client says about itself at every lookup (its UDP
# port opened and closed, its configuration read): nothing an operator
# acts on.  A failed lookup is logged by the relay, in its own words.
_NOISE = re.compile(
    r"DNSDatagramProtocol starting on \d+"
    r"|\(UDP Port \d+ Closed\)"
    r"|(Starting|Stopping) protocol <twisted\.names\.dns\.DNSDatagramProtocol object at 0x[0-9a-f]+>"
    r"|b?'[^']*resolv\.conf' changed, reparsing"
    r"|Resolver added \(.*\) to server list"
)


def isNoise(event: dict) -> bool:
    """
    @return: whether a log event is chatter of Twisted's own that the
        relay's log leaves out (the DNS client's, at each lookup).
    """
    if event.get("log_namespace") != "log_legacy" or event.get("isError"):
        return False
    try:
        text = formatEvent(event)
    except Exception:
        return False
    return _NOISE.fullmatch(text) is not None


def _keep(event: dict) -> PredicateResult:
    return PredicateResult.no if isNoise(event) else PredicateResult.maybe


@functools.lru_cache(maxsize=4)
def _secondAsText(second: int) -> str:
    return formatTime(second)


def _formatTime(when: float | None) -> str:
    """
    Twisted's C{formatTime}, worked out once a second: its time stamps
    have no fraction of a second.
    """
    return "-" if when is None else _secondAsText(int(when))

_SCALARS = (str, int, float, bool, type(None))


def _jsonValue(value):
    """
    @return: C{value} if JSON can carry it as it is; lists and tuples of
        such values as lists; anything else as its C{str}.
    """
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, _SCALARS) for v in value):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def eventAsJSONLine(event: dict) -> str:
    """
    @return: a log event as one line of JSON, newline included.
    """
    when = event.get("log_time")
    record = {
        "time": None
        if when is None
        else datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message", "isError", "failure", "why", "system"):
            continue
        record[key] = _jsonValue(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Writes each event as a line of JSON (L{eventAsJSONLine}).
    """

    def __init__(self, outFile) -> None:
        self.outFile = outFile

    def __call__(self, event: dict) -> None:
        try:
            line = eventAsJSONLine(event)
        except Exception as e:
            line = json.dumps({"text": f"(unformattable log event: {e!r})"}) + "\n"
        self.outFile.write(line)
        self.outFile.flush()


class BatchedFile:
    """
    A log file's writer that puts the lines of one reactor turn into one
    write.

    The log observers flush after every line; under load a relay logs
    several lines per message, and a write per line costs more than the
    line.  Here C{flush} only makes sure a real flush follows at the end of
    the reactor's turn (C{callLater(0)}), or at once when the reactor is
    not running, when more than C{limit} characters wait, and when the
    reactor shuts down.  A process killed outright loses at most the lines
    of its last turn.
    """

    def __init__(self, outFile, reactor=None, limit: int = 65536) -> None:
        """
        @param outFile: the file (text or binary, as its C{write} takes
            text) to write to.
        @param reactor: provides C{callLater}, C{running} and
            C{addSystemEventTrigger}; the global reactor by default.
        @param limit: how many characters may wait before a flush is made
            at once.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.outFile = outFile
        self.reactor = reactor
        self.limit = limit
        self._pending: list[str] = []
        self._size = 0
        self._scheduled = None
        reactor.addSystemEventTrigger("after", "shutdown", self.flushNow)

    def write(self, text: str) -> None:
        self._pending.append(text)
        self._size += len(text)

    def flush(self) -> None:
        if self._size > self.limit or not self.reactor.running:
            self.flushNow()
        elif self._scheduled is None and self._pending:
            self._scheduled = self.reactor.callLater(0, self.flushNow)

    def flushNow(self) -> None:
        """
        Write what waits, and flush the file.
        """
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is not None and scheduled.active():
            scheduled.cancel()
        if self._pending:
            text = "".join(self._pending)
            self._pending = []
            self._size = 0
            self.outFile.write(text)
            self.outFile.flush()


class RelayLog:
    """
    Where the relay logs: a file (reopened by L{reopen}) or standard
    output, as text or JSON.

    @ivar path: the file's path, or C{"-"} for standard output.
    @ivar format: C{"text"} or C{"json"}.
    """

    def __init__(self, path: str, format: str = "text", reactor=None) -> None:
        if format not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}; not {format!r}")
        self.path = path
        self.format = format
        if path == "-":
            self.file = sys.stdout
        else:
            self.file = LogFile.fromFullPath(path, rotateLength=None, defaultMode=0o640)
        self.writer = BatchedFile(self.file, reactor)

    def observer(self):
        """
        @return: an C{ILogObserver} writing to this log.
        """
        if self.format == "json":
            observer = JSONLineObserver(self.writer)
        else:
            observer = FileLogObserver(self.writer, lambda event: formatEventAsClassicLogText(event, _formatTime))
        return FilteringLogObserver(observer, [_keep])

    def reopen(self) -> None:
        """
        Open the file again by its path (after something renamed it);
        nothing for standard output.
        """
        self.writer.flushNow()
        if isinstance(self.file, LogFile):
            self.file.reopen()
