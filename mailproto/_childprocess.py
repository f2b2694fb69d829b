# -*- test-case-name: mailproto.test.test_workers,mailproto.test.test_sink_workers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
A worker process as the process that started it knows it: what the
relay's parent (L{mailproto._relayd._workers}) and the sink
(L{mailproto._commandline._sinkworkers}) keep of each of their workers.

Its states: I{ended} (not started yet, or gone), I{running} (spawned),
I{stopping} (sent SIGTERM by L{ChildProcess.stop}), then I{ended} again
when the process is gone (L{ChildProcess.ended}); an end that was not
asked for is told to the pool as unexpected, and the pool may start it
again.
"""

from __future__ import annotations

import signal

from twisted.internet import defer

__all__ = ["ChildProcess", "describeEnd"]


def describeEnd(ending) -> str:
    """
    @param ending: how a process ended (L{ProcessDone} or
        L{ProcessTerminated}).
    @return: it in words: C{signal 9}, C{status 1}.
    """
    if getattr(ending, "signal", None):
        return f"signal {ending.signal}"
    return f"status {getattr(ending, 'exitCode', None)}"


class ChildProcess:
    """
    One worker process of a pool, which must have a C{workerEnded(worker,
    expected, why)} method.

    @ivar pool: the pool.
    @ivar number: its number, from 1.
    @ivar state: C{"running"}, C{"stopping"} or C{"ended"} (see the
        module).
    @ivar transport: its process transport, while it runs.
    @ivar done: a C{Deferred} that fires when it ends, while it runs.
    """

    def __init__(self, pool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.state = "ended"
        self.transport = None
        self.done: defer.Deferred | None = None

    def spawned(self, transport) -> None:
        """
        Its process was just started, with C{transport}.
        """
        self.transport = transport
        self.state = "running"
        self.done = defer.Deferred()

    def signal(self, number: int) -> None:
        """
        Send its process the signal C{number}, if it runs.
        """
        if self.transport is not None and self.state != "ended":
            try:
                self.transport.signalProcess(number)
            except Exception:
                # Gone meanwhile: its end is on its way.
                pass

    def stop(self) -> defer.Deferred:
        """
        Ask the worker to stop (SIGTERM).

        @return: a C{Deferred} that fires when it has ended.
        """
        if self.state == "ended":
            return defer.succeed(None)
        self.state = "stopping"
        self.signal(signal.SIGTERM)
        return self.done

    def expectedEnd(self) -> bool:
        """
        @return: whether an end now is one that was asked for.
        """
        return self.state == "stopping"

    def ended(self, reason) -> None:
        """
        Its process ended (C{reason}, a L{Failure}): tell the pool, then
        whoever waits for L{stop}.
        """
        expected = self.expectedEnd()
        self.state = "ended"
        self.transport = None
        done, self.done = self.done, None
        self.pool.workerEnded(self, expected, describeEnd(reason.value))
        if done is not None:
            done.callback(None)
