# -*- test-case-name: mailproto.test.test_scaleout -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{mailproto queue move}: hand queued messages from one relay's spool (the
I{source}, the node taken out of service) to another's (the I{target}),
neither lost nor sent twice.

Either relay may be running or stopped.  A running source gives each
message up over its control socket (C{export}: it forgets the message,
waits for an attempt in flight to end and writes the message's state);
a stopped one is locked by the command for the whole move, as C{mailproto
queue} does, so that it cannot start half-way.  A running target takes
each message in over its control socket (C{adopt}); a stopped one is
locked too, and recovers the messages at its next start.  See
L{mailproto._relayd._control}.

The order of operations for one message C{ID}:

  1. The source gives it up (a running source: C{export}).  From then on
     the running source never attempts it again; its files stay in the
     source's C{queue/}.
  2. Its files are read: a message with no recipient left waiting (its
     last attempt finished it) is not moved.
  3. Its file, then its state file (attempts, each recipient's state and
     last reply, delay warning sent, hold, DKIM prefix), are copied into
     the target's C{tmp/}, each C{fsync}ed.
  4. They are renamed into the target's C{queue/}, the state first, then
     the message, and that directory is C{fsync}ed after each: the
     message is durable in the target, never without its state.  A mark saying so is written, and synced,
     into the source's C{tmp/} (L{markerPath}).
  5. The target takes it: a running target adopts it (and sends it when
     due); a stopped one finds it at its next start.
  6. Only then are the source's files removed (the message, then its
     state) and its C{queue/} C{fsync}ed; then the mark.

Run again after an interruption, the command finishes what was left: if
the target's C{queue/} already has C{ID}, nothing is copied (the
target's copy, and whatever the target did with it since, wins); if it
does not but the source has the mark of step 4, the target has sent the
message (or an operator deleted it there) since, and it is not copied
again either: only steps 5 and 6, or 6, are left.

What a crash (or a C{kill}) of the command leaves, at each point:

  - Before step 4 ends, only the source has the message (the target's
    recovery throws away what was left in its C{tmp/}, and a state file
    without its message).  A stopped source is as it was.  A running one
    has given it up: it is sent by neither relay until the command is run
    again (which moves it) or the source restarts (which takes it back).
    It is never lost.
  - After step 4 and before step 6 ends, both spools have it, and the
    target's copy wins: the target sends it (a running target that was
    not told, step 5, once the command is run again or at its next
    start).  The running
    source that gave it up does not; running the command again removes
    the source's copy.  But a source that starts before that (restarted,
    or stopped while the command ran) recovers its copy, its start
    throwing the mark away with the rest of C{tmp/}, and sends it too:
    its recipients get it twice.  That duplicate is the price of never losing
    a message, the choice the relay makes everywhere (a crash during an
    attempt sends again to recipients that got it).

A failure the command sees (a full target disk, a target that refuses the
message) undoes what it can: the target's copy is removed if the target
did not take it, and the running source is told to take the message back
(C{adopt}), so that it is sent from there as before.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

from mailproto._queue import createPrivate, makePrivate, readQueueFile
from mailproto._relayd._control import RelayNotRunning, SpoolBusy, SpoolLock, ask

#: Seconds the command waits for a running source to give a message up:
#: for an attempt of it in flight to end.
EXPORT_TIMEOUT = 600.0

#: Seconds the command waits for a target relay that stopped answering
#: its control socket while it still holds its spool (starting again).
TARGET_RESTART_WAIT = 30.0

#: How often, in seconds, that wait tries again.
RETRY_INTERVAL = 0.2

#: How the copies in the target's C{tmp/} are named: never a queue id,
#: so never taken for a message a relay is receiving.
TEMPORARY_SUFFIX = ".move"

#: How the mark that a message's copy is durable in the target is named
#: (L{markerPath}).
MARK_SUFFIX = ".moved"


class MoveAborted(Exception):
    """
    The move cannot go on: a relay that holds a spool does not answer, or
    stopped while the command ran.  The message is one line.
    """


class MoveFailed(Exception):
    """
    One message could not be moved; it is where the message (one line)
    says.
    """


class _TargetRefused(Exception):
    """
    The target relay refused to adopt a message it was given.
    """


class _TargetUnsure(Exception):
    """
    The target relay did not answer whether it adopted a message.
    """


def _fsyncDirectory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _owner(directory: str) -> tuple[int, int] | None:
    """
    @return: the owner and group the files written into C{directory}
        must have, so that its relay can read them: those of the
        directory, when this process runs as root (which would otherwise
        own them); C{None} otherwise.
    """
    if os.geteuid() != 0:
        return None
    status = os.stat(directory)
    return status.st_uid, status.st_gid


def _copyFile(source: str, destination: str, owner: tuple[int, int] | None) -> bool:
    """
    Copy C{source} into a new private file C{destination}, and C{fsync}
    it.

    @return: whether C{source} existed (nothing is written if not).
    """
    try:
        reading = open(source, "rb")
    except FileNotFoundError:
        return False
    with reading, createPrivate(destination, exclusive=False) as writing:
        if owner is not None:
            os.fchown(writing.fileno(), *owner)
        shutil.copyfileobj(reading, writing, 1024 * 1024)
        writing.flush()
        os.fsync(writing.fileno())
    return True


def copyInto(source: str, target: str, queueID: str) -> bool:
    """
    Make a message of the spool C{source} durable in the C{queue/} of the
    spool C{target} (steps 3 and 4 of the module's order): its file and
    its state file copied into C{target}'s C{tmp/} and synced, renamed
    into its C{queue/} (the state first, that directory synced after
    each).

    @return: C{False} if C{target}'s C{queue/} had the message already
        (nothing is copied: that copy wins), else C{True}.
    @raise OSError: if the copy failed; what it left in C{target}'s
        C{tmp/} is removed.
    """
    queue = os.path.join(target, "queue")
    final = os.path.join(queue, queueID)
    if os.path.lexists(final):
        return False
    owner = _owner(queue)
    # A mark of an earlier move of this id out of the target, left by a
    # crash, must not be taken for this message's.
    _unlink(markerPath(target, queueID))
    temporary = os.path.join(target, "tmp", queueID + TEMPORARY_SUFFIX)
    temporaryState = temporary + ".state"
    try:
        _copyFile(os.path.join(source, "queue", queueID), temporary, owner)
        if _copyFile(os.path.join(source, "queue", queueID + ".state"), temporaryState, owner):
            os.replace(temporaryState, final + ".state")
            # Durable before the message is there: a message found without
            # its state would be sent to every recipient, held or not.
            _fsyncDirectory(queue)
        else:
            # One left by an earlier move, interrupted before its message
            # was renamed, would be taken for this message's.
            _unlink(final + ".state")
        os.replace(temporary, final)
        _fsyncDirectory(queue)
    finally:
        _unlink(temporary)
        _unlink(temporaryState)
    return True


def removeFiles(spool: str, queueID: str) -> None:
    """
    Remove a message's files from C{spool}'s C{queue/} (the message, then
    its state, which recovery would remove without it), and sync the
    directory.

    @raise OSError: if they could not be removed.
    """
    queue = os.path.join(spool, "queue")
    _unlink(os.path.join(queue, queueID))
    _unlink(os.path.join(queue, queueID + ".state"))
    _fsyncDirectory(queue)


def markerPath(spool: str, queueID: str) -> str:
    """
    @return: the path of the mark that says a message of C{spool} is
        durable in the target's C{queue/} (step 4 done), in C{spool}'s
        C{tmp/}: a start of C{spool}'s relay removes it with the rest of
        C{tmp/}.
    """
    return os.path.join(spool, "tmp", queueID + MARK_SUFFIX)


class _Spool:
    """
    One of the two spools of a move, with how the command reaches it: its
    running relay, or its lock, held by the command.

    @ivar directory: the spool directory.
    @ivar running: whether a relay runs on it (the command talks to it);
        if not, the command holds its lock.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.running = False
        self._lock = SpoolLock(directory)

    def open(self) -> None:
        """
        Find whether a relay runs on the spool; if none does, lock it.

        @raise MoveAborted: if a process holds the spool but no relay
            answers on its control socket.
        """
        try:
            ask(self.directory, "status")
        except RelayNotRunning:
            try:
                self._prepare()
                self._takeLock()
            except OSError as e:
                raise MoveAborted(f"cannot use {self.directory}: {e.strerror or e}") from None
        except (OSError, ValueError) as e:
            raise MoveAborted(f"the relay on {self.directory} did not answer: {e}") from None
        else:
            self.running = True

    def _prepare(self) -> None:
        """
        Get a spool no relay runs on ready to be locked and used.
        """

    def _takeLock(self) -> None:
        try:
            self._lock.acquire()
        except SpoolBusy:
            raise MoveAborted(
                f"a relay holds {self.directory} but does not answer on its control socket; try again in a moment"
            ) from None
        self.running = False

    def close(self) -> None:
        """
        Give back the spool's lock, if the command holds it.
        """
        self._lock.release()

    def __str__(self) -> str:
        return self.directory


class SourceSpool(_Spool):
    """
    The spool messages are moved from.
    """

    def giveUp(self, queueID: str) -> bool:
        """
        Steps 1 and 2: have the running relay give the message up (a
        stopped one is locked), and read its files.

        @return: whether it has recipients left to move (C{False}: its
            last attempt finished it).
        @raise MoveFailed: if it is not queued, or cannot be read.
        @raise MoveAborted: if the relay stopped while the command ran.
        """
        if self.running:
            try:
                ask(self.directory, "export", queueID, timeout=EXPORT_TIMEOUT)
            except RelayNotRunning:
                raise MoveAborted(f"the relay on {self.directory} stopped while the command ran") from None
            except ValueError as e:
                if not os.path.lexists(os.path.join(self.directory, "queue", queueID)):
                    # Its last attempt finished it since it was chosen.
                    return False
                raise MoveFailed(str(e)) from None
            except OSError as e:
                raise MoveFailed(
                    f"the relay on {self.directory} did not answer for {queueID} ({e}); "
                    "it may have given it up already: run the command again"
                ) from None
        try:
            envelope = readQueueFile(os.path.join(self.directory, "queue", queueID))
        except FileNotFoundError:
            if self.running:
                return False
            raise MoveFailed(f"no message {queueID} in the queue") from None
        except (OSError, ValueError) as e:
            raise MoveFailed(f"cannot read {queueID}: {e}{self.takeBack(queueID)}") from None
        if envelope.id != queueID:
            raise MoveFailed(f"cannot read {queueID}: it holds the envelope of {envelope.id}{self.takeBack(queueID)}")
        return bool(envelope.waiting)

    def takeBack(self, queueID: str) -> str:
        """
        Undo step 1: have the running relay take the message back.

        @return: what became of it, to end a one-line message (empty for a
            stopped relay, whose files were never changed).
        """
        if not self.running:
            return ""
        try:
            ask(self.directory, "adopt", queueID)
        except (RelayNotRunning, OSError, ValueError) as e:
            return (
                f"; it stays in {self.directory}, given up by its relay ({e}): "
                "the relay sends it after its next start, or run the command again"
            )
        return f"; it stays in {self.directory}"

    def copied(self, queueID: str) -> bool:
        """
        @return: whether an earlier run made the message durable in the
            target (L{mark}) and stopped before removing it here.
        """
        return os.path.exists(markerPath(self.directory, queueID))

    def mark(self, queueID: str, target: str) -> None:
        """
        After step 4: note, durably, that the message is in C{target}'s
        C{queue/}, so that a run after an interruption does not copy it
        again once the target has sent it and removed it.  Not noted if it
        cannot be written: such a run then copies it again (a duplicate).
        """
        path = markerPath(self.directory, queueID)
        try:
            with createPrivate(path, exclusive=False) as f:
                f.write(os.fsencode(os.path.abspath(target)) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            _fsyncDirectory(os.path.dirname(path))
        except OSError:
            _unlink(path)

    def unmark(self, queueID: str) -> None:
        """
        Remove the mark of L{mark}, durably: the target refused the
        message, which stays here.

        @raise OSError: if it could not be removed.
        """
        path = markerPath(self.directory, queueID)
        if os.path.lexists(path):
            os.unlink(path)
            _fsyncDirectory(os.path.dirname(path))

    def remove(self, queueID: str) -> None:
        """
        Step 6: remove the message's files, then its mark.  (A mark left
        by a crash in between is harmless: no message of that id is here
        any more, and one moved here later clears it, L{copyInto}.)

        @raise OSError: if they could not be removed.
        """
        removeFiles(self.directory, queueID)
        _unlink(markerPath(self.directory, queueID))


class TargetSpool(_Spool):
    """
    The spool messages are moved to.
    """

    def _prepare(self) -> None:
        makePrivate(self.directory)

    def has(self, queueID: str) -> bool:
        """
        @return: whether the spool's C{queue/} has the message.
        """
        return os.path.lexists(os.path.join(self.directory, "queue", queueID))

    def put(self, source: str, queueID: str) -> bool:
        """
        Steps 3 and 4 (L{copyInto}).
        """
        return copyInto(source, self.directory, queueID)

    def take(self, queueID: str) -> None:
        """
        Step 5: have the running relay adopt the message; a stopped one
        recovers it at its next start.  A relay that stopped since the move
        began is locked, once it has stopped, so that it cannot start
        before the command ends; one that is starting again is waited for
        (at most L{TARGET_RESTART_WAIT} seconds).

        @raise _TargetRefused: if the relay refused it.
        @raise _TargetUnsure: if no answer came.
        """
        deadline = time.monotonic() + TARGET_RESTART_WAIT
        while self.running:
            try:
                ask(self.directory, "adopt", queueID)
                return
            except ValueError as e:
                raise _TargetRefused(str(e)) from None
            except RelayNotRunning:
                try:
                    self._takeLock()
                except (MoveAborted, OSError):
                    pass
                else:
                    return
            except OSError as e:
                raise _TargetUnsure(f"the relay on {self.directory} did not answer ({e})") from None
            if time.monotonic() >= deadline:
                raise _TargetUnsure(f"the relay on {self.directory} holds its spool but does not answer on its control socket")
            time.sleep(RETRY_INTERVAL)

    def withdraw(self, queueID: str) -> None:
        """
        Undo steps 3 and 4 for a message the relay refused: remove what is
        left of it in C{queue/} (a refused message it could not read was
        set aside in C{corrupt/}, and stays there).
        """
        try:
            removeFiles(self.directory, queueID)
        except OSError:
            pass


@dataclasses.dataclass
class MoveReport:
    """
    What a move did.

    @ivar moved: the ids moved.
    @ivar finished: the ids that needed no move: their last attempt, in
        flight when the source gave them up, finished them.
    @ivar failed: how many could not be moved (each said in one line).
    @ivar aborted: why the move stopped before the end, or C{None}.
    @ivar left: how many were not tried, the move having stopped.
    """

    moved: list[str] = dataclasses.field(default_factory=list)
    finished: list[str] = dataclasses.field(default_factory=list)
    failed: int = 0
    aborted: str | None = None
    left: int = 0


def moveOne(source: SourceSpool, target: TargetSpool, queueID: str) -> bool:
    """
    Move one message, in the module's order of operations.

    @return: C{True} if it was moved, C{False} if its last attempt
        finished it (nothing to move).
    @raise MoveFailed: if it could not be moved (it is where the message
        says).
    @raise MoveAborted: if the source's relay stopped.
    """
    if not source.giveUp(queueID):
        return False
    if not (source.copied(queueID) and not target.has(queueID)):
        # (Else an earlier run copied it, and the target has sent it, or
        # an operator deleted it there, since: only the removal is left.)
        _copyAndAdopt(source, target, queueID)
    try:
        source.remove(queueID)
    except OSError as e:
        raise MoveFailed(
            f"{queueID} is in {target} now but could not be removed from {source} ({e.strerror or e}); "
            "run the command again to remove it"
        ) from None
    return True


def _copyAndAdopt(source: SourceSpool, target: TargetSpool, queueID: str) -> None:
    """
    Steps 3 to 5 of the module's order.

    @raise MoveFailed: if the target does not have the message (given
        back to the source), or may not.
    """
    try:
        target.put(source.directory, queueID)
    except OSError as e:
        raise MoveFailed(f"cannot write {queueID} into {target}: {e.strerror or e}{source.takeBack(queueID)}") from None
    source.mark(queueID, target.directory)
    try:
        target.take(queueID)
    except _TargetRefused as e:
        try:
            source.unmark(queueID)
        except OSError:
            # The mark stays, so the target's copy must too: a later move
            # would take the mark for a copy the target has.
            pass
        else:
            target.withdraw(queueID)
        raise MoveFailed(f"the relay on {target} refused {queueID}: {e}{source.takeBack(queueID)}") from None
    except _TargetUnsure as e:
        raise MoveFailed(
            f"{e}: {queueID} is in both spools; run the command again to finish, "
            f"before the relay on {source} starts again (it would send it too)"
        ) from None


def moveMessages(source: SourceSpool, target: TargetSpool, ids: list[str], say) -> MoveReport:
    """
    Move messages one by one (L{moveOne}); both spools are open.

    @param say: called with each one-line error.
    @return: what was done.
    """
    report = MoveReport()
    for n, queueID in enumerate(ids):
        try:
            moved = moveOne(source, target, queueID)
        except MoveFailed as e:
            say(str(e))
            report.failed += 1
            continue
        except MoveAborted as e:
            report.aborted = str(e)
            report.left = len(ids) - n
            break
        (report.moved if moved else report.finished).append(queueID)
    return report
