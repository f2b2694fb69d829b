# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
When the relay sends what: L{DueTimes} knows when each queued message is
next due and wakes the relay then; L{DestinationLines} holds the jobs
waiting for a connection to their destination, within the connection
limits, and the connections that wait a little for more
(C{connectionCacheTime}).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
from typing import Callable

from mailproto._jobs import Job
from mailproto._queue import Envelope


class DueTimes:
    """
    The queued messages by when they are next due, and a timer for the
    first of them.

    A message is rescheduled by L{schedule} whenever its next attempt
    changes, or it is released from hold; stale entries (the message
    gone, in flight, held, or due at another time now) are dropped as
    they come up.  A held message (L{Envelope.held}) is never due.

    @ivar heap: C{(when, sequence, queue id)}, earliest first.
    @ivar timer: the pending call for the earliest, or C{None}.
    """

    def __init__(self, manager, wakeUp: Callable[[], None]) -> None:
        """
        @param manager: the relaying manager, whose C{reactor} (for the
            timer) and C{queue} (C{getEnvelope}) are used as they are now.
        @param wakeUp: called when the earliest message is due.
        """
        self.manager = manager
        self.wakeUp = wakeUp
        self.heap: list[tuple[float, int, str]] = []
        self.timer = None
        self._sequence = 0

    def schedule(self, envelope: Envelope) -> None:
        """
        Remember when C{envelope} is due, if it has recipients waiting and
        is not held.
        """
        if envelope.waiting and not envelope.held:
            self._sequence += 1
            heapq.heappush(self.heap, (envelope.nextAttempt, self._sequence, envelope.id))

    def _current(self, entry, inFlight) -> Envelope | None:
        """
        @return: the message of a heap entry, if the entry is still its
            next attempt.
        """
        when, _, queueID = entry
        try:
            envelope = self.manager.queue.getEnvelope(queueID)
        except KeyError:
            return None
        if queueID in inFlight or envelope.nextAttempt != when or not envelope.waiting or envelope.held:
            return None
        return envelope

    def popDue(self, now: float, inFlight, room: int) -> list[Envelope]:
        """
        @param inFlight: the ids of messages being sent (not due again).
        @param room: how many messages may be taken.
        @return: the messages due at C{now}, earliest first.
        """
        heap = self.heap
        due: dict[str, Envelope] = {}
        while heap and heap[0][0] <= now and len(due) < room:
            _, _, queueID = heapq.heappop(heap)
            try:
                envelope = self.manager.queue.getEnvelope(queueID)
            except KeyError:
                continue
            if queueID in inFlight or queueID in due or envelope.nextAttempt > now or not envelope.waiting or envelope.held:
                continue
            due[queueID] = envelope
        return list(due.values())

    def rearm(self, inFlight, room: bool) -> None:
        """
        Set the timer for the earliest message still current.

        @param room: whether more messages may be started at all.
        """
        heap = self.heap
        while heap and self._current(heap[0], inFlight) is None:
            heapq.heappop(heap)
        self.cancel()
        if heap and room:
            reactor = self.manager.reactor
            self.timer = reactor.callLater(max(heap[0][0] - reactor.seconds(), 0), self.wakeUp)

    def cancel(self) -> None:
        """
        Stop the timer.
        """
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


@dataclasses.dataclass
class Parked:
    """
    A connection that has sent everything it was given and waits a little
    for more mail to its destination.

    @ivar connection: the L{Connection <mailproto._connection.Connection>}.
    @ivar relayer: its relayer, to L{resume
        <mailproto._relayers.ManagedRelayerMixin.resume>}.
    @ivar timer: when it stops waiting.
    """

    connection: object
    relayer: object
    timer: object = None


class DestinationLines:
    """
    Jobs waiting for a connection, one line per destination, and the
    connections open and parked.  Limits are read from the manager as it
    has them now: C{maxConnections}, C{maxConnectionsPerDestination},
    C{maxMessagesPerConnection}, C{connectionCacheTime}, and whether it is
    C{running}.

    @ivar lines: the waiting jobs, by destination.
    @ivar parked: the parked connections, by destination.
    @ivar connections: how many connections are open.
    @ivar open: how many are open, by destination.
    """

    def __init__(self, manager) -> None:
        self.manager = manager
        self.lines: dict[str, collections.deque] = {}
        self.parked: dict[str, list[Parked]] = {}
        self.connections = 0
        self.open: collections.Counter = collections.Counter()

    def __bool__(self) -> bool:
        return bool(self.lines)

    def add(self, job: Job) -> None:
        """
        Put C{job} in its destination's line.
        """
        self.lines.setdefault(job.destination, collections.deque()).append(job)

    def _take(self, destination: str, room: int) -> list[Job]:
        line = self.lines.get(destination)
        if not line or room <= 0:
            return []
        jobs = [line.popleft() for _ in range(min(room, len(line)))]
        if not line:
            del self.lines[destination]
        return jobs

    def dispatch(self, openConnection: Callable[[str, list[Job]], object]) -> list:
        """
        Give waiting jobs to parked connections first, then to new ones,
        as far as the limits allow.

        @param openConnection: makes and starts a connection for a
            destination and its jobs, and returns it.
        @return: the connections opened.
        """
        manager = self.manager
        started = []
        for destination in list(self.lines):
            parked = self.parked.get(destination)
            while destination in self.lines and parked:
                entry = parked[0]
                self.unpark(entry, self._take(destination, manager.maxMessagesPerConnection - len(entry.connection.jobs)))
            while destination in self.lines and self.connections < manager.maxConnections and self.open[destination] < manager.maxConnectionsPerDestination:
                jobs = self._take(destination, manager.maxMessagesPerConnection)
                self.connections += 1
                self.open[destination] += 1
                started.append(openConnection(destination, jobs))
        return started

    def moreJobs(self, connection) -> list[Job]:
        """
        @return: jobs for an open connection that has sent all it was
            given: those waiting for its destination, as many as the
            per-connection limit still allows.
        """
        if not self.manager.running:
            return []
        return self._take(connection.destination, self.manager.maxMessagesPerConnection - len(connection.jobs))

    def park(self, connection, relayer) -> bool:
        """
        May C{connection}, with nothing more to send, wait for more?

        @return: whether it waits; L{unpark} resumes C{relayer}.
        """
        manager = self.manager
        if not manager.running or manager.connectionCacheTime <= 0 or len(connection.jobs) >= manager.maxMessagesPerConnection:
            return False
        entry = Parked(connection, relayer)
        entry.timer = manager.reactor.callLater(manager.connectionCacheTime, self.unpark, entry, [])
        self.parked.setdefault(connection.destination, []).append(entry)
        return True

    def unpark(self, entry: Parked, jobs: list[Job]) -> None:
        """
        A parked connection goes on, with C{jobs} (none: it says QUIT).
        """
        self._forget(entry)
        entry.connection.jobs.extend(jobs)
        entry.relayer.resume(jobs)

    def unparkAll(self) -> None:
        """
        Every parked connection says QUIT.
        """
        for entries in list(self.parked.values()):
            for entry in list(entries):
                self.unpark(entry, [])

    def _forget(self, entry: Parked) -> None:
        destination = entry.connection.destination
        parked = self.parked.get(destination, [])
        if entry in parked:
            parked.remove(entry)
            if not parked:
                del self.parked[destination]
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()

    def ended(self, connection) -> None:
        """
        C{connection} is over: it no longer counts, nor waits.
        """
        for entry in list(self.parked.get(connection.destination, [])):
            if entry.connection is connection:
                self._forget(entry)
        self.connections -= 1
        self.open[connection.destination] -= 1
        if self.open[connection.destination] <= 0:
            del self.open[connection.destination]
