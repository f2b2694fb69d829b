# -*- test-case-name: mailproto.test.test_connlimits -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The listen backlog of the servers' listening sockets (the relay's and the
sink's).

The kernel keeps the clients that have connected but were not accepted
yet in a queue as long as the backlog.  Twisted's default of 50
overflows when a hundred clients connect at once: the kernel then drops
their connections, and they try again a second or more later.
L{withBacklog} gives a listener description L{BACKLOG} unless it says
otherwise (the kernel may cap it: C{net.core.somaxconn}).
"""

from __future__ import annotations

import re

__all__ = ["BACKLOG", "withBacklog"]

#: The listen backlog given to listeners that do not set one.
BACKLOG = 1024

# The endpoint types that take a backlog= argument.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


def withBacklog(description: str, backlog: int = BACKLOG) -> str:
    """
    @param description: a Twisted server endpoint description.
    @param backlog: the backlog to give it.
    @return: C{description}, with C{:backlog=BACKLOG} added if it is of a
        type that takes one (TCP, TLS, UNIX) and does not set it.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_TYPES or re.search(r"(?<!\\):\s*backlog\s*=", description):
        return description
    return f"{description}:backlog={backlog}"
