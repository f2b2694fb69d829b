# -*- test-case-name: mailproto.test.test_intake -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
What keeps a server's connection cheap whatever its client does: when to
read (L{InputValve}), how long a request may take to arrive
(L{RequestDeadline}), and sockets without Nagle's delay (L{setNoDelay}).

The server (L{mailproto._server.SMTP}) owns one of each per connection.

L{InputValve} states: I{reading} (no reason held) and I{paused} (one or
more reasons held).  Reasons:

  - C{"backlog"}: much input waits, unhandled, behind a command whose
    answer is not known yet or behind replies the client does not read
    (the transport's write buffer is full: it calls C{pauseProducing} on
    the valve, its streaming producer);
  - C{"batch"}: the server has handled a batch of pipelined commands and
    lets the reactor run before the next.

The first reason held pauses the transport; the last released resumes it
and calls back the server, which goes on with its buffered input.  While
the output is full, input is not handled (so no more replies are made),
but the transport is read until the backlog grows.

L{RequestDeadline} states: I{idle}, I{line} (a command line or SASL
response has begun and must end within its deadline) and I{data} (message
data, which earns time as it arrives, at most up to the deadline from
now).  When the deadline passes, the server is called back with the kind.
"""

from __future__ import annotations

import time

from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer


def setNoDelay(transport) -> None:
    """
    Turn off Nagle's algorithm on the TCP connection under C{transport}
    (through TLS and PROXY protocol wrappers, which pass the call on), so
    that a reply that follows another before the client's ACK is not held
    back for the client's delayed ACK (about 40 ms).  Transports that are
    not TCP (UNIX sockets, in-memory ones) are left as they are.

    @param transport: an C{ITCPTransport}, or any transport.
    """
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, NotImplementedError, OSError):
        pass


class _Unconnected:
    """
    The transport of a valve whose protocol is not connected yet.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


UNCONNECTED = _Unconnected()


@implementer(IPushProducer)
class InputValve:
    """
    Whether a server handles its input, and whether it reads its
    transport.  See the module's docstring for its states and reasons.

    It is the transport's streaming producer: a full write buffer
    (C{pauseProducing}) stops the handling of input, without pausing the
    transport at once, since a TLS transport also says it is full while
    its handshake is going on, and must read to finish it.  Reading stops
    when the input left waiting grows too large (C{"backlog"}).

    @ivar reasons: the reasons for which the transport is paused now.
    @ivar outputFull: whether the transport's write buffer is full.
    """

    def __init__(self, transport, resumed) -> None:
        """
        @param transport: the connection's transport (an C{IConsumer} and
            C{IPushProducer}).
        @param resumed: called with no arguments when input may be handled
            again.
        """
        self._transport = transport
        self._resumed = resumed
        self.reasons: set[str] = set()
        self.outputFull = False

    def hold(self, reason: str) -> None:
        """
        Stop reading for C{reason} (until L{release}).
        """
        if reason in self.reasons:
            return
        if not self.reasons:
            self._transport.pauseProducing()
        self.reasons.add(reason)

    def release(self, reason: str) -> None:
        """
        C{reason} no longer holds; read again if no other reason does.
        """
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self._transport.resumeProducing()
            self._resumed()

    @property
    def paused(self) -> bool:
        """
        Whether input must wait: a reason is held, or the output is full.
        """
        return bool(self.reasons) or self.outputFull

    # IPushProducer: the transport tells us when its write buffer is full
    # and when it has drained.

    def pauseProducing(self) -> None:
        self.outputFull = True

    def resumeProducing(self) -> None:
        if not self.outputFull:
            return
        self.outputFull = False
        if "backlog" in self.reasons:
            self.release("backlog")
        elif not self.reasons:
            self._resumed()

    def stopProducing(self) -> None:
        # The connection is going away; there is nothing to resume.
        self.reasons.clear()
        self.outputFull = False


def _secondsOf(callLater) -> float:
    """
    @return: the time now on the clock C{callLater} belongs to (a
        reactor's or a C{Clock}'s), else the wall clock.
    """
    clock = getattr(callLater, "__self__", None)
    seconds = getattr(clock, "seconds", None)
    return seconds() if seconds is not None else time.time()


class RequestDeadline:
    """
    The deadline of the request being read.  See the module's docstring
    for its states.

    Requests come and go many times a second on a busy connection, so the
    deadline is a number, and one timer per connection wakes up when the
    earliest deadline may have passed: if the deadline has moved on since
    (or is gone), the timer is set again for it (or left unset); nothing
    is scheduled or cancelled per request.

    @ivar kind: C{None} (idle), C{"line"} or C{"data"}.
    """

    def __init__(self, callLater, expired) -> None:
        """
        @param callLater: a function returning the C{callLater} to use
            (read at each use, so that a test may set the protocol's
            C{callLater} after the fact).
        @param expired: called with the kind when the deadline passes.
        """
        self._callLater = callLater
        self._expired = expired
        self._timer = None
        self._due = None
        self._key = None
        self.kind = None

    def _now(self) -> float:
        return _secondsOf(self._callLater())

    def _set(self, kind: str, due: float, key=None) -> None:
        self.kind, self._due, self._key = kind, due, key
        if self._timer is None or not self._timer.active():
            self._timer = self._callLater()(max(due - self._now(), 0), self._wake)
        elif self._timer.getTime() > due:
            self._timer.reset(max(due - self._now(), 0))

    def _wake(self) -> None:
        self._timer = None
        if self._due is None:
            return
        now = self._now()
        if now < self._due:
            self._timer = self._callLater()(self._due - now, self._wake)
            return
        kind = self.kind
        self.kind, self._due, self._key = None, None, None
        self._expired(kind)

    def line(self, seconds: float, key) -> None:
        """
        A line is being read: the deadline for the line C{key} runs from
        the first call for that key.

        @param seconds: how long the line may take; C{0} for no deadline.
        @param key: which line this is (any value that changes from one
            line to the next, such as a count of lines read).
        """
        if self.kind == "line" and self._key == key:
            return
        if seconds:
            self._set("line", self._now() + seconds, key)
        else:
            self.clear()

    def data(self, seconds: float) -> None:
        """
        Message data is being read: start its deadline, unless running.

        @param seconds: the deadline from now, and the most time data can
            earn; C{0} for no deadline.
        """
        if self.kind == "data":
            return
        if seconds:
            self._set("data", self._now() + seconds)
        else:
            self.clear()

    def earn(self, octets: int, rate: float, cap: float) -> None:
        """
        C{octets} of message data arrived: move the deadline on by
        C{octets / rate} seconds, but not past C{cap} seconds from now.

        @param octets: how many octets arrived.
        @param rate: the minimum average rate, in octets per second; C{0}
            for none, in which case the deadline is C{cap} from now.
        @param cap: seconds.
        """
        if self.kind != "data":
            return
        limit = self._now() + cap
        self._due = min(self._due + octets / rate, limit) if rate else limit

    def clear(self) -> None:
        """
        No request is being read: no deadline (the timer, if set, finds
        nothing to do when it wakes).
        """
        self.kind, self._due, self._key = None, None, None

    def stop(self) -> None:
        """
        The connection is gone: cancel the timer.
        """
        self.clear()
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
