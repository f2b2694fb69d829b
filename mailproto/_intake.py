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
now).  The server checks it as input arrives.
"""

from __future__ import annotations

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
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is None:
        return
    try:
        setTcpNoDelay(True)
    except (NotImplementedError, OSError):
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
    @ivar paused: whether input must wait: a reason is held, or the
        output is full.
    """

    __slots__ = ("_transport", "_resumed", "reasons", "outputFull", "paused")

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
        self.paused = False

    def hold(self, reason: str) -> None:
        """
        Stop reading for C{reason} (until L{release}).
        """
        if reason in self.reasons:
            return
        if not self.reasons:
            self._transport.pauseProducing()
        self.reasons.add(reason)
        self.paused = True

    def release(self, reason: str) -> None:
        """
        C{reason} no longer holds; read again if no other reason does.
        """
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self.paused = self.outputFull
            self._transport.resumeProducing()
            self._resumed()

    # IPushProducer: the transport tells us when its write buffer is full
    # and when it has drained.

    def pauseProducing(self) -> None:
        self.outputFull = self.paused = True

    def resumeProducing(self) -> None:
        if not self.outputFull:
            return
        self.outputFull = False
        self.paused = bool(self.reasons)
        if "backlog" in self.reasons:
            self.release("backlog")
        elif not self.reasons:
            self._resumed()

    def stopProducing(self) -> None:
        # The connection is going away; there is nothing to resume.
        self.reasons.clear()
        self.outputFull = self.paused = False


class RequestDeadline:
    """
    The deadline of the request being read: pure arithmetic on the times
    the server gives it, with no timer of its own.  See the module's
    docstring for its states.

    The server asks L{passed} whenever input arrives.  A client that
    trickles its request is therefore cut off at the first octet after
    the deadline; one that goes silent is left to the idle timeout.  Since
    requests come and go thousands of times a second on a busy server,
    nothing is scheduled or cancelled per request.

    @ivar kind: C{None} (idle), C{"line"} or C{"data"}.
    """

    __slots__ = ("_due", "kind")

    def __init__(self) -> None:
        self._due = None
        self.kind = None

    def line(self, seconds: float, now: float, restart: bool = False) -> None:
        """
        A line is being read: its deadline runs from the first call, or
        from this one if C{restart} (a new line has begun).

        @param seconds: how long the line may take; C{0} for no deadline.
        @param now: the time now.
        @param restart: whether this is a new line.
        """
        if self.kind == "line" and not restart:
            return
        if seconds:
            self.kind, self._due = "line", now + seconds
        else:
            self.clear()

    def data(self, seconds: float, now: float) -> None:
        """
        Message data is being read: start its deadline, unless running.

        @param seconds: the deadline from now, and the most time data can
            earn; C{0} for no deadline.
        @param now: the time now.
        """
        if self.kind == "data":
            return
        if seconds:
            self.kind, self._due = "data", now + seconds
        else:
            self.clear()

    def earn(self, octets: int, rate: float, cap: float, now: float) -> None:
        """
        C{octets} of message data arrived: move the deadline on by
        C{octets / rate} seconds, but not past C{cap} seconds from now.

        @param octets: how many octets arrived.
        @param rate: the minimum average rate, in octets per second; C{0}
            for none, in which case the deadline is C{cap} from now.
        @param cap: seconds.
        @param now: the time now.
        """
        if self.kind != "data":
            return
        limit = now + cap
        self._due = min(self._due + octets / rate, limit) if rate else limit

    def passed(self, now: float) -> bool:
        """
        @param now: the time now.
        @return: whether a deadline is running and has passed.
        """
        return self._due is not None and now >= self._due

    def clear(self) -> None:
        """
        No request is being read: no deadline.
        """
        self.kind, self._due = None, None
