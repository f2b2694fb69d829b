# -*- test-case-name: mailproto.test.test_startup -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Why the relay could not start, in one line a person can act on: a port
in use, a port that needs root, an address the machine does not have, a
spool in use or out of reach.
"""

from __future__ import annotations

import errno

from twisted.internet.error import CannotListenError

from mailproto._relayd._control import SpoolBusy
from mailproto._relayd._privileges import SpoolNotUsable, WorkersCannotRun


def _where(error: CannotListenError) -> str:
    interface = error.interface or "every address"
    return f"port {error.port} of {interface}"


def describeStartFailure(exception: BaseException) -> str:
    """
    @param exception: what stopped the relay's start.
    @return: what went wrong and what to do, in one line.
    """
    if isinstance(exception, (SpoolBusy, SpoolNotUsable, WorkersCannotRun)):
        return str(exception)
    if isinstance(exception, CannotListenError):
        cause = exception.socketError
        number = getattr(cause, "errno", None)
        where = _where(exception)
        if number == errno.EADDRINUSE:
            return f"cannot listen on {where}: another program listens there already (stop it, or choose another port)"
        if number == errno.EACCES:
            return f"cannot listen on {where}: permission denied (ports below 1024 need root, or CAP_NET_BIND_SERVICE)"
        if number == errno.EADDRNOTAVAIL:
            return f"cannot listen on {where}: this machine has no such address (check the interface= of the listener)"
        reason = getattr(cause, "strerror", None) or str(cause)
        return f"cannot listen on {where}: {reason}"
    if isinstance(exception, OSError) and exception.strerror:
        where = f"{exception.filename}: " if exception.filename else ""
        return f"{where}{exception.strerror}"
    return f"{type(exception).__name__}: {exception}"
