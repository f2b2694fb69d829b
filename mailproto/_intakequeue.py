# -*- test-case-name: mailproto.test.test_intakequeue -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The queue a relay's worker process receives into.

In a relay with worker processes, the parent process holds the spool's
lock, runs the L{Queue <mailproto._queue.Queue>} (recovery, delivery
state, removal) and delivers every message; each worker accepts SMTP
clients and writes the messages it accepts into the same spool with an
L{IntakeQueue}, then tells the parent the new queue id, and the parent
takes the message in (L{Queue.adopt <mailproto._queue.Queue.adopt>}).

A message is written and committed as the parent's own are (L{SpoolFile
<mailproto._queue.SpoolFile>}: C{tmp/}, C{fsync}, rename into C{queue/},
C{fsync} of the directory, shared by the commits of a batch), so that the
server's C{250} still means a message on disk; and the commit fires only
once the parent was told too, so that the message is scheduled for
delivery at once.  If the telling fails, the message is durable all the
same: the parent finds it in C{queue/} (L{Queue.adoptNew
<mailproto._queue.Queue.adoptNew>}).

A worker works under the lock that its parent holds for the spool
(L{HeldByParent}), and never takes it: two processes may not each hold
it, and the parent holds it from its start to its exit.  Nor does a worker
recover the spool (the parent does, before the workers start, when
C{tmp/} holds no live worker's message), read the queue or change a
queued message.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from mailproto._queue import Envelope, SpoolFile, SpoolWriter, stateData
from mailproto._spoollock import LOCK_NAME

_log = Logger()


class HeldByParent:
    """
    The spool's lock as a relay's worker process sees it: held, for the
    worker's whole life, by its parent process (the relay), and never taken
    by the worker.  A L{SpoolFile <mailproto._queue.SpoolFile>} written
    under it finds it L{held} and takes no C{flock}.

    @ivar path: the lock file, for messages.
    @ivar relay: C{False}: this process is not the relay that holds it.
    """

    relay = False

    def __init__(self, directory: str) -> None:
        """
        @param directory: the spool directory.
        """
        self.path = os.path.join(directory, LOCK_NAME)

    @property
    def held(self) -> bool:
        """
        Always C{True}: the parent holds the lock for this process.
        """
        return True

    def acquire(self) -> None:
        """
        Refuse: the parent holds the lock; a worker taking it would lock
        its parent out of its own spool (never called while L{held}).

        @raise RuntimeError: always.
        """
        raise RuntimeError(f"the spool's lock {self.path} is held by the relay's parent process, not taken by a worker")

    def release(self) -> None:
        """
        Nothing: the lock is the parent's to release.
        """


class QueuedCopy:
    """
    What a small message's files in C{queue/} hold, as they were written:
    the parent can take the message in without reading them
    (L{Queue.adopt <mailproto._queue.Queue.adopt>}).

    @ivar data: the queue file's content: envelope line, then message.
    @ivar state: the state file's content, or C{None} if it has none.
    """

    def __init__(self, data: bytes, state: dict | None) -> None:
        self.data = data
        self.state = None if state is None else stateData(state)


class IntakeQueue(SpoolWriter):
    """
    What a relay's worker process writes accepted messages into: the
    spool directory its parent's L{Queue <mailproto._queue.Queue>} runs,
    with no index, no recovery and no cache of its own (see the module
    docstring).  A L{QueueDeliveryFactory
    <mailproto._relay.QueueDeliveryFactory>} takes it as its queue: it only
    calls L{newMessage}.

    @ivar directory: the spool directory.
    @ivar lock: a L{HeldByParent}.
    @ivar fsyncs: how many C{fsync} calls were made (files and
        directories), for measurements.
    """

    def __init__(
        self,
        directory: str,
        notify: Callable[[Envelope], defer.Deferred],
        reactor=None,
        runInThread=None,
        unfinishedSuffix: str = "",
    ) -> None:
        """
        @param directory: the spool directory, made by the parent (its
            L{Queue <mailproto._queue.Queue>}).
        @param notify: a callable given the L{Envelope} of each message
            once it is durable in C{queue/}, and a L{QueuedCopy} of its
            files if it was small enough to be kept in memory (else
            C{None}), returning a C{Deferred} that fires once the parent
            has it (the worker tells the parent its id); its failure is
            logged, and the commit succeeds all the same.
        @param reactor: the reactor whose thread pool does the disk work;
            the global one if C{None}.
        @param runInThread: a callable C{(f, *args) -> Deferred} running
            C{f} off the reactor thread; by default the reactor's thread
            pool.
        @param unfinishedSuffix: what ends the names of the messages it
            is receiving, in C{tmp/}: the worker's own, so that the parent
            can remove what it left if it dies (L{Queue.removeUnfinished
            <mailproto._queue.Queue.removeUnfinished>}).
        @raise FileNotFoundError: if the spool's C{tmp/} or C{queue/} is
            missing (no parent made it).
        """
        for name in ("tmp", "queue"):
            if not os.path.isdir(os.path.join(directory, name)):
                raise FileNotFoundError(f"spool {directory} has no {name}/: its relay makes it before starting workers")
        SpoolWriter.__init__(self, directory, reactor, runInThread, HeldByParent(directory))
        self.unfinishedSuffix = unfinishedSuffix
        self._notify = notify

    def newMessage(self, envelope: Envelope) -> SpoolFile:
        """
        Start writing a message.  Its L{commit <SpoolFile.commit>} fires
        with its L{Envelope} once the message is durable in C{queue/} and
        the parent was told (or telling it failed: logged).

        @param envelope: its envelope (its C{id} names the file).
        @return: the file to write the message into.
        """
        return SpoolWriter.newMessage(self, envelope)

    def _committed(self, spool: SpoolFile) -> defer.Deferred:
        # Nothing keeps the message in this process: the parent delivers
        # it, from the copy it is given or from the disk.
        copy = QueuedCopy(spool._header + spool._message, spool._state) if spool._message is not None else None
        spool._message = None
        envelope = spool.envelope
        d = defer.maybeDeferred(self._notify, envelope, copy)
        d.addErrback(self._notTold, envelope)
        return d.addCallback(lambda _: envelope)

    def _notTold(self, failure, envelope: Envelope) -> None:
        _log.warn(
            "Queued {queueID}, but could not tell the relay ({why}); it is found in the spool's next scan",
            queueID=envelope.id,
            why=failure.getErrorMessage() or failure.type.__name__,
        )
