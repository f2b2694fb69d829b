# -*- test-case-name: mailproto.test.test_spoollock -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The exclusive lock on a spool directory: one process changes a spool's
files at a time.

The lock is an C{flock} on the file C{lock} in the spool.  A running relay
holds it from its start to its exit; C{mailproto queue} (with no relay
running) and a L{mailproto._queue.Queue} used on its own hold it while
they change the files.  The holder writes its process id, and whether it
is a relay, into the file, so that a process refused the lock can say
who has it.  The lock goes with the process: a crash releases it.
"""

from __future__ import annotations

import errno
import fcntl
import os

LOCK_NAME = "lock"
"""The name of the lock file in the spool directory."""

RELAY = "relay"
"""What a relay writes after its process id in the lock file."""


class SpoolBusy(Exception):
    """
    Another process holds the spool's lock.

    @ivar directory: the spool, or C{None} if not known.
    @ivar pid: the holder's process id, or C{None} if not known (a lock
        file written by an older version, or being written).
    @ivar relay: whether the holder is a running relay.
    """

    def __init__(self, message: str, directory: str | None = None, pid: int | None = None, relay: bool = False) -> None:
        super().__init__(message)
        self.directory = directory
        self.pid = pid
        self.relay = relay


def _busy(directory: str, content: bytes) -> SpoolBusy:
    """
    @param content: what the holder wrote in the lock file.
    @return: the error that says who holds the spool C{directory}.
    """
    words = content.decode("ascii", "replace").split()
    pid = int(words[0]) if words and words[0].isdigit() else None
    relay = words[1:2] == [RELAY]
    which = f" (pid {pid})" if pid is not None else ""
    if relay:
        message = f"the spool {directory} is in use by a running relay{which}; use `mailproto queue` to change it while it runs"
    else:
        message = f"the spool {directory} is in use by another process{which}"
    return SpoolBusy(message, directory, pid, relay)


class SpoolLock:
    """
    The exclusive lock on a spool directory (C{flock} on its C{lock}
    file): one relay, or one process changing the files while no relay
    runs, at a time.  Two L{SpoolLock}s on one spool exclude each other
    even within one process.

    @ivar path: the lock file.
    @ivar relay: whether the holder is a relay (written in the file, for
        L{SpoolBusy}).
    """

    def __init__(self, directory: str, relay: bool = False) -> None:
        """
        @param directory: the spool directory (it must exist before
            L{acquire}).
        @param relay: whether this lock is a relay's.
        """
        self.path = os.path.join(directory, LOCK_NAME)
        self.relay = relay
        self._fd: int | None = None

    def acquire(self) -> None:
        """
        Take the lock, without waiting, and write this process's id in
        the lock file.

        @raise SpoolBusy: if another holder has it (saying which process,
            when it wrote its id).
        @raise OSError: if the lock file cannot be opened.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                content = os.pread(fd, 64, 0)
            except OSError:
                content = b""
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(os.path.dirname(self.path) or ".", content) from None
            raise
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {RELAY if self.relay else 'other'}\n".encode("ascii"), 0)
        except OSError:
            # Who holds it is only for the messages: the lock is held.
            pass

    def release(self) -> None:
        """
        Give the lock back (nothing if it is not held).
        """
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """
        Whether this lock is held (by this object).
        """
        return self._fd is not None

    def isHeldElsewhere(self) -> bool:
        """
        @return: whether another holder has the lock now.
        """
        try:
            self.acquire()
        except SpoolBusy:
            return True
        except FileNotFoundError:
            return False
        self.release()
        return False
