# -*- test-case-name: mailproto.test.test_queuecommand -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
How C{mailproto queue} reaches the relay that owns a spool directory.

A running relay holds an exclusive lock on C{lock} in its spool directory
(L{SpoolLock}, from L{mailproto._spoollock}) and listens on the UNIX
socket C{control} there (L{ControlFactory}).  The socket speaks one JSON
object per line each way::

    {"command": "flush", "id": null}          ->  {"ok": true, "ids": [...]}
    {"command": "requeue", "id": "ID"}        ->  {"ok": true}
    {"command": "delete", "id": "ID"}         ->  {"ok": true}
    {"command": "hold", "id": "ID"}           ->  {"ok": true, "changed": true}
    {"command": "release", "id": "ID"}        ->  {"ok": true, "changed": true}
    {"command": "export", "id": "ID"}         ->  {"ok": true, "done": false}
    {"command": "adopt", "id": "ID"}          ->  {"ok": true, "waiting": 2, "held": false}
    {"command": "status"}                     ->  {"ok": true, "inFlight": [...], ...}

and answers C{{"ok": false, "error": "..."}} to anything it cannot do.

C{export} and C{adopt} carry a message from one relay's spool to another's
(C{mailproto queue move}, L{mailproto._commandline._queuemove}): the
relay told C{export} gives the message up (L{exportMessage}) and answers
once it will never send it again, its files left in its C{queue/} for the
command to copy; the relay told C{adopt} takes into its queue a message
the command put into its C{queue/} (L{Queue.adopt
<mailproto._queue.Queue.adopt>}).

The socket is made with mode 0600, so that only the relay's user (and
root) can command it.

When no relay runs, C{mailproto queue} takes the lock itself and changes
the files directly (C{mailproto queue}), so that a relay cannot start while
it does.
"""

from __future__ import annotations

import errno
import json
import os
import socket

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

# The lock lives with the queue; it is named here too, where the relay
# and the command line have always found it.
from mailproto._spoollock import LOCK_NAME, SpoolBusy, SpoolLock  # noqa: F401

_log = Logger()

SOCKET_NAME = "control"

#: The longest request or answer line.
MAX_LINE = 1024 * 1024


#: The longest UNIX socket path that binds everywhere (the limit is 108
#: octets on Linux, 104 on the BSDs, counting the terminating NUL).
MAX_SOCKET_PATH = 100

_directoryHandles: dict[str, int] = {}


def socketPath(directory: str) -> str:
    """
    @return: a path of the control socket of the spool C{directory} that
        can be bound and connected to: its own path, or, when that is too
        long for a UNIX socket address, the same file reached through an
        open handle on the directory (C{/proc/self/fd/N/control}, on
        Linux; the handle stays open for the process's life).
    """
    path = os.path.join(directory, SOCKET_NAME)
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH or not os.path.isdir("/proc/self/fd"):
        return path
    key = os.path.realpath(directory)
    fd = _directoryHandles.get(key)
    if fd is None:
        fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        _directoryHandles[key] = fd
    return f"/proc/self/fd/{fd}/{SOCKET_NAME}"


class ControlProtocol(LineOnlyReceiver):
    """
    Answers one JSON request per line for the relaying manager.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            command = request.get("command")
            handler = getattr(self, f"command_{command}", None) if isinstance(command, str) else None
            if handler is None:
                raise ValueError(f"unknown command {command!r}")
            d = defer.maybeDeferred(handler, request.get("id"))
        except (ValueError, KeyError) as e:
            d = defer.fail(e)
        d.addCallbacks(self._answer, self._refuse)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(ValueError("request too long"))
        self.transport.loseConnection()

    def _answer(self, result: dict) -> None:
        self._send({"ok": True, **result})

    def _refuse(self, failure) -> None:
        error = failure.value if hasattr(failure, "value") else failure
        if isinstance(error, KeyError):
            text = f"no message {error.args[0]} in the queue"
        elif isinstance(error, ValueError):
            text = str(error)
        else:
            _log.failure("Queue command failed", failure)
            text = "internal error; see the relay's log"
        self._send({"ok": False, "error": text})

    def _send(self, answer: dict) -> None:
        if self.transport is not None and self.connected:
            self.sendLine(json.dumps(answer).encode("utf-8"))

    @property
    def manager(self):
        return self.factory.manager

    def command_status(self, queueID) -> dict:
        queue = self.manager.queue
        return {"inFlight": self.manager.inFlight(), "queued": len(queue.ids()), "pid": os.getpid()}

    def command_flush(self, queueID) -> dict:
        return {"ids": self.manager.flush(_optionalID(queueID))}

    def command_requeue(self, queueID) -> defer.Deferred:
        d = self.manager.requeue(_requiredID(queueID))
        return d.addCallback(lambda _: {})

    def command_delete(self, queueID) -> defer.Deferred:
        d = self.manager.delete(_requiredID(queueID))
        return d.addCallback(lambda _: {})

    def command_hold(self, queueID) -> defer.Deferred:
        d = self.manager.hold(_requiredID(queueID))
        return d.addCallback(lambda changed: {"changed": changed})

    def command_release(self, queueID) -> defer.Deferred:
        d = self.manager.release(_requiredID(queueID))
        return d.addCallback(lambda changed: {"changed": changed})

    def command_export(self, queueID) -> defer.Deferred:
        return exportMessage(self.manager, _requiredID(queueID))

    def command_adopt(self, queueID) -> dict:
        queue = self.manager.queue
        if not hasattr(queue, "adopt"):
            raise ValueError("this relay's queue cannot take messages from other spools")
        envelope = queue.adopt(_requiredID(queueID))
        _log.info("Adopted {queueID} from another spool", queueID=envelope.id)
        return {"waiting": len(envelope.waiting), "held": envelope.held}


def _optionalID(queueID):
    if queueID is not None and not isinstance(queueID, str):
        raise ValueError("a queue id is a string")
    return queueID


def _requiredID(queueID) -> str:
    if not isinstance(queueID, str) or not queueID:
        raise ValueError("this command needs a queue id")
    return queueID


#: How often, in seconds, an export looks whether the attempt in flight
#: of the message it waits for is over.
SETTLE_INTERVAL = 0.05


def exportMessage(manager, queueID: str, interval: float = SETTLE_INTERVAL) -> defer.Deferred:
    """
    Give a queued message up to another spool: the relay forgets it at
    once (L{Queue.disown <mailproto._queue.Queue.disown>}), so that no
    attempt of it starts again; waits for an attempt in flight to end and
    write its outcome; then writes the message's state as the relay has
    it in memory, so that its files say all the relay knows (delivered
    recipients, attempts, replies, hold, DKIM prefix).  Its files stay in
    C{queue/}: whoever asked copies them, and removes them once the other
    spool has the message.

    A message given up before (an interrupted move, run again) is waited
    for in the same way, and answered from its files.

    @param manager: the relaying manager.
    @param queueID: the message's queue id.
    @return: a C{Deferred} firing with C{{"done": False}} once the relay
        will never send the message again and its files are complete, or
        C{{"done": True}} if the attempt in flight finished it (every
        recipient delivered or returned: its files are gone, there is
        nothing to move).  It fails with L{KeyError} if the relay does
        not have the message.
    @raise ValueError: if the relay's queue cannot give messages up.
    """
    queue = manager.queue
    if not hasattr(queue, "disown"):
        raise ValueError("this relay's queue cannot give messages up to other spools")
    if queue.isDisowned(queueID):
        envelope = None
    else:
        envelope = queue.disown(queueID)
        _log.info("Giving {queueID} up to another spool", queueID=queueID)
    d = _whenSettled(manager, queueID, interval)
    return d.addCallback(lambda _: _exported(queue, queueID, envelope))


def _whenSettled(manager, queueID: str, interval: float) -> defer.Deferred:
    """
    @return: a C{Deferred} that fires once C{manager} has no attempt of
        C{queueID} in flight.
    """
    settled = defer.Deferred()

    def check() -> None:
        if queueID in manager.inFlight():
            manager.reactor.callLater(interval, check)
        else:
            settled.callback(None)

    check()
    return settled


def _exported(queue, queueID: str, envelope) -> defer.Deferred | dict:
    """
    The relay gave C{queueID} up and no attempt of it is in flight: make
    its files complete, and say whether there is something to move.
    """
    if envelope is None:
        if not os.path.exists(queue.getPath(queueID)):
            raise KeyError(queueID)
        return {"done": False}
    if not envelope.waiting:
        _log.info("{queueID} was finished by its last attempt: nothing to give up", queueID=queueID)
        return {"done": True}
    d = queue.update(envelope)
    return d.addCallback(lambda _: {"done": False})


class ControlFactory(Factory):
    """
    Makes L{ControlProtocol}s for a relaying manager.
    """

    protocol = ControlProtocol
    noisy = False

    def __init__(self, manager) -> None:
        self.manager = manager


class RelayNotRunning(Exception):
    """
    No relay answers on the spool's control socket.
    """


def ask(directory: str, command: str, queueID: str | None = None, timeout: float = 30.0) -> dict:
    """
    Send one request to the relay running on a spool (blocking: for the
    command line).

    @return: the relay's answer (C{"ok"} is true).
    @raise RelayNotRunning: if nothing listens on the control socket.
    @raise ValueError: with the relay's reason, if it refused.
    @raise OSError: if the exchange failed half-way.
    """
    try:
        path = socketPath(directory)
    except (FileNotFoundError, NotADirectoryError) as e:
        # A long path is reached through the directory, which is not there.
        raise RelayNotRunning(str(e)) from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise RelayNotRunning(str(e)) from None
        s.sendall(json.dumps({"command": command, "id": queueID}).encode("utf-8") + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError(errno.ECONNRESET, "the relay closed the control connection without an answer")
            answer += chunk
            if len(answer) > MAX_LINE:
                raise OSError(errno.EMSGSIZE, "the relay's answer is too long")
    reply = json.loads(answer)
    if not reply.get("ok"):
        raise ValueError(reply.get("error", "refused"))
    return reply
