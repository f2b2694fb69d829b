# -*- test-case-name: mailproto.test.test_workermetrics -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's metrics when it runs several worker processes
(C{twistd mailrelay --workers N --metrics ENDPOINT}): the workers take
clients in, the parent serves the metrics, so what a worker counts
crosses to the parent.

In a worker, a L{MetricsForwarder} stands for the parent's L{RelayMetrics
<mailproto._relayd._metrics.RelayMetrics>}: the factories and their
sessions, the accept guard and the policies call the methods of
L{FORWARDED} on it as they would on the real metrics, and it gathers the
calls of L{DELAY} seconds into one L{Counted
<mailproto._relayd._workerprotocol.Counted>} command, told and not
answered.  In the parent, L{ForwardedMetrics} applies what a worker told
to the real metrics, but only calls of L{FORWARDED} whose arguments have
the right types and forms: a worker cannot call anything else, nor make
up label values beyond those forms.  What it drops is logged, at most
once per L{ForwardedMetrics.logInterval}.

Two counts are not forwarded, because the parent makes them itself: the
messages accepted (the parent counts each as it adopts it into its
queue, L{Queue.adopt <mailproto._queue.Queue.adopt>} telling the queue's
listeners as a commit does), and the refusals by the daemon's connection
limits, which the parent decides (L{RemoteConnectionLimits.refused
<mailproto._relayd._sharedlimits.RemoteConnectionLimits.refused>}).

The calls cross as the JSON text of a list of C{[method, arguments,
count]}: the same call made C{count} times meanwhile; its C{bytes}
argument (an enhanced status code) as text, one character per octet.
The parent keeps how many connections each worker's link has open, so
that a worker that ends (and the connections it had) leaves
C{mailrelay_connections_open} as it goes; a worker can never close more
than it opened.  What a worker counted in its last L{DELAY} seconds
before it ends may be lost.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from twisted.internet import defer
from twisted.logger import Logger

__all__ = ["DELAY", "FORWARDED", "ForwardedMetrics", "MetricsForwarder", "checkCall", "decodeCalls", "encodeCalls"]

_log = Logger(namespace="mailrelay")

#: The most different calls in one L{Counted
#: <mailproto._relayd._workerprotocol.Counted>} (well under AMP's 64 KiB
#: for a value).
MAX_ENTRIES = 200

#: The most calls one L{Counted <mailproto._relayd._workerprotocol.Counted>}
#: carries, each counted as many times as it was made (what the parent
#: does for one command stays a few milliseconds).
MAX_COUNT = 10000

#: Seconds a worker gathers counts before it sends them: a tenth of a
#: second's calls cross in one command, whatever the load (a few
#: microseconds a message once the load is above ten messages a second,
#: two commands a message at most below that).
DELAY = 0.1

#: The listeners' names, as the relay's sessions give them.
LISTENERS = frozenset({"smtp", "submission", "smtps", "lmtp"})

#: The stages of a refusal (L{RelayMetrics.refused
#: <mailproto._relayd._metrics.RelayMetrics.refused>}).
STAGES = frozenset({"mail", "rcpt", "data"})

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}\Z")
_STATUS = re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\Z")


def _listener(value) -> str:
    if type(value) is str and value in LISTENERS:
        return value
    raise ValueError(f"not a listener: {value!r}")


def _name(value) -> str:
    if type(value) is str and _NAME.match(value):
        return value
    raise ValueError(f"not a limit or policy name: {value!r}")


def _stage(value) -> str:
    if type(value) is str and value in STAGES:
        return value
    raise ValueError(f"not a stage: {value!r}")


def _code(value) -> int:
    if type(value) is int and 400 <= value <= 599:
        return value
    raise ValueError(f"not a refusal's reply code: {value!r}")


def _status(value) -> bytes | None:
    if value is None:
        return None
    if type(value) is str and _STATUS.match(value):
        return value.encode("ascii")
    raise ValueError(f"not an enhanced status code: {value!r}")


#: The methods of L{RelayMetrics <mailproto._relayd._metrics.RelayMetrics>}
#: a worker may call, each with a check per argument: given the argument
#: as it crosses (a JSON value), the check returns what the method is
#: called with, or raises C{ValueError}.
FORWARDED = {
    "connectionOpened": (_listener,),
    "connectionClosed": (_listener,),
    "limitActed": (_listener, _name),
    "intakePolicyActed": (_name,),
    "policyRefused": (_name,),
    "refused": (_stage, _code, _status),
}


def checkCall(method, arguments) -> tuple:
    """
    Check one call as it crosses.

    @param method: the method's name.
    @param arguments: its arguments as they cross (a C{list} or C{tuple}
        of JSON values).
    @return: the arguments to call the method with.
    @raise ValueError: if C{method} is not one of L{FORWARDED}, or an
        argument is not of its kind.
    """
    checks = FORWARDED.get(method) if type(method) is str else None
    if checks is None:
        raise ValueError(f"not a method a worker may call: {method!r}")
    if type(arguments) not in (list, tuple) or len(arguments) != len(checks):
        raise ValueError(f"{method}: not its arguments: {arguments!r}")
    return tuple(check(value) for check, value in zip(checks, arguments))


def encodeCalls(calls: dict) -> str:
    """
    @param calls: C{{(method, arguments): count}}, the arguments as they
        cross (see L{checkCall}).
    @return: the text of a L{Counted
        <mailproto._relayd._workerprotocol.Counted>} command.
    """
    return json.dumps([[method, list(arguments), count] for (method, arguments), count in calls.items()], separators=(",", ":"))


def decodeCalls(text: str) -> list:
    """
    Read the text of a L{Counted <mailproto._relayd._workerprotocol.Counted>}
    command.

    @return: one item per call: C{(method, arguments, count)} with the
        arguments to call the method with, or a C{ValueError} in place of a
        call that is not allowed (the others stand).
    @raise ValueError: if C{text} is not a list of at most L{MAX_ENTRIES}
        calls, made at most L{MAX_COUNT} times in all.
    """
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if type(entries) is not list or len(entries) > MAX_ENTRIES:
        raise ValueError(f"not a list of at most {MAX_ENTRIES} calls")
    calls: list = []
    for entry in entries:
        try:
            if type(entry) is not list or len(entry) != 3:
                raise ValueError(f"not a call: {entry!r}"[:200])
            method, arguments, count = entry
            if type(count) is not int or not 1 <= count <= MAX_COUNT:
                raise ValueError(f"{method!r}: not a count: {count!r}"[:200])
            calls.append((method, checkCall(method, arguments), count))
        except ValueError as e:
            calls.append(e)
    if sum(call[2] for call in calls if type(call) is tuple) > MAX_COUNT:
        raise ValueError(f"more than {MAX_COUNT} calls")
    return calls


class MetricsForwarder:
    """
    In a worker, what stands for the relay's L{RelayMetrics
    <mailproto._relayd._metrics.RelayMetrics>}: each call of L{FORWARDED}
    is counted here, and what was counted goes to the parent in one
    command L{delay} seconds after the first call (or sooner, once
    L{MAX_ENTRIES} different calls or L{MAX_COUNT} calls in all wait).
    A call the parent would refuse is dropped here already, and logged
    once per method.

    @ivar clock: the C{IReactorTime} of the L{delay}.
    @ivar delay: seconds the counts wait to be sent with others; C{0}:
        those of one turn of the reactor go together.
    """

    def __init__(self, ask, clock, delay: float = DELAY) -> None:
        """
        @param ask: C{ask(name, **arguments)}: tells the parent the AMP
            command of L{mailproto._relayd._workerprotocol} named C{name}
            (as L{WorkerRelay.ask
            <mailproto._relayd._worker.WorkerRelay.ask>}); its failures are
            ignored: the counts are lost, the intake goes on.
        @param clock: see L{clock}.
        @param delay: see L{delay}.
        """
        self._ask = ask
        self.clock = clock
        self.delay = delay
        self._pending: dict[tuple, int] = {}
        self._total = 0
        self._call = None
        self._warned: set[str] = set()

    def connectionOpened(self, listener: str) -> None:
        """
        Count a connection accepted on C{listener}.
        """
        self._add("connectionOpened", listener)

    def connectionClosed(self, listener: str) -> None:
        """
        Count a connection to C{listener} ended.
        """
        self._add("connectionClosed", listener)

    def limitActed(self, listener: str, limit: str) -> None:
        """
        Count C{limit} acting on a connection or session of C{listener}.
        """
        self._add("limitActed", listener, limit)

    def intakePolicyActed(self, policy: str) -> None:
        """
        Count an intake policy acting.
        """
        self._add("intakePolicyActed", policy)

    def policyRefused(self, policy: str) -> None:
        """
        Count a recipient policy refusing.
        """
        self._add("policyRefused", policy)

    def refused(self, stage: str, code: int, status: bytes | None) -> None:
        """
        Count a refusal of MAIL, RCPT or message data.
        """
        self._add("refused", stage, code, status.decode("latin-1") if isinstance(status, bytes) else status)

    def _add(self, method: str, *arguments) -> None:
        key = (method, arguments)
        count = self._pending.get(key)
        if count is None:
            try:
                checkCall(method, arguments)
            except ValueError as e:
                if method not in self._warned:
                    self._warned.add(method)
                    _log.warn("mailrelay: a count the parent would refuse was dropped: {why}", why=str(e))
                return
            count = 0
        self._pending[key] = count + 1
        self._total += 1
        if self._total >= MAX_COUNT or len(self._pending) >= MAX_ENTRIES:
            self.flush()
        elif self._call is None:
            self._schedule()

    def _schedule(self) -> None:
        """
        Send what is counted after the L{delay}.
        """
        self._call = self.clock.callLater(self.delay, self.flush)

    def flush(self) -> None:
        """
        Send what was counted and not yet sent, now.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if not self._pending:
            return
        pending, self._pending, self._total = self._pending, {}, 0
        defer.maybeDeferred(self._ask, "counted", calls=encodeCalls(pending)).addErrback(lambda reason: None)


class ForwardedMetrics:
    """
    In the parent: what workers forward (L{MetricsForwarder}), applied to
    the relay's L{RelayMetrics <mailproto._relayd._metrics.RelayMetrics>}.

    @ivar metrics: the L{RelayMetrics
        <mailproto._relayd._metrics.RelayMetrics>}.
    @ivar maxSeries: how many different calls (method and arguments) are
        applied at most, over every worker: more would be labels no
        relay makes.
    @ivar logInterval: seconds between two log lines about calls dropped.
    """

    maxSeries = 1000
    logInterval = 60.0

    def __init__(self, metrics, clock=None) -> None:
        """
        @param metrics: see L{metrics}.
        @param clock: the C{IReactorTime} of the log's pace; the metrics'
            own if C{None}.
        """
        self.metrics = metrics
        self.clock = clock if clock is not None else metrics.clock
        self._open: dict[object, Counter] = {}
        self._series: set[tuple] = set()
        self._lastLine: float | None = None
        self._droppedSince = 0

    def apply(self, link, calls: str, worker=None) -> int:
        """
        Apply what a worker told: the calls of L{FORWARDED} in C{calls},
        each checked; the others are dropped.  A worker's connections
        opened are applied before those closed, and it closes no more
        than it opened.

        @param link: what names the worker's connection with the parent
            (its open connections are kept under it until
            L{linkGone}).
        @param calls: the text of the L{Counted
            <mailproto._relayd._workerprotocol.Counted>} command.
        @param worker: the worker's number, for the log.
        @return: how many calls were applied.
        """
        try:
            items = decodeCalls(calls)
        except ValueError as e:
            self._dropped(worker, str(e))
            return 0
        applied = 0
        # Opened first: one command may open and close the same connection.
        for item in sorted(items, key=lambda item: isinstance(item, tuple) and item[0] != "connectionOpened"):
            if isinstance(item, ValueError):
                self._dropped(worker, str(item))
                continue
            method, arguments, count = item
            key = (method, arguments)
            if key not in self._series:
                if len(self._series) >= self.maxSeries:
                    self._dropped(worker, f"more than {self.maxSeries} different counts: {method}{arguments!r}")
                    continue
                self._series.add(key)
            if method == "connectionOpened":
                self._open.setdefault(link, Counter())[arguments[0]] += count
            elif method == "connectionClosed":
                count = self._close(link, arguments[0], count)
            call = getattr(self.metrics, method)
            for _ in range(count):
                call(*arguments)
            applied += count
        return applied

    def _close(self, link, listener: str, count: int) -> int:
        """
        @return: how many of C{count} connections to C{listener} the
            link may close: no more than it has open.
        """
        open = self._open.get(link)
        have = open[listener] if open else 0
        count = min(count, have)
        if count:
            open[listener] -= count
            if not open[listener]:
                del open[listener]
            if not open:
                del self._open[link]
        return count

    def openOn(self, link) -> int:
        """
        @return: how many connections the worker on C{link} has open.
        """
        return sum(self._open.get(link, Counter()).values())

    def linkGone(self, link) -> int:
        """
        The worker on C{link} has gone, and its connections with it:
        count them closed.

        @return: how many were.
        """
        open = self._open.pop(link, Counter())
        for listener, count in open.items():
            for _ in range(count):
                self.metrics.connectionClosed(listener)
        return sum(open.values())

    def _dropped(self, worker, why: str) -> None:
        now = self.clock.seconds()
        if self._lastLine is not None and now - self._lastLine < self.logInterval:
            self._droppedSince += 1
            return
        _log.warn(
            "mailrelay: dropped counts from worker {worker}: {why} ({more} more dropped since the last line)",
            worker=worker,
            why=why,
            more=self._droppedSince,
        )
        self._lastLine, self._droppedSince = now, 0
