# Copyright (c) mailproto authors. See LICENSE for details.
"""
Helpers for tests over real loopback sockets.
"""

from twisted.internet import reactor, task, tcp


async def noConnectionsLeft(testCase) -> None:
    """
    Wait until no TCP connection is left open in this process (a client
    has its result before it says QUIT and closes); fail C{testCase} after
    five seconds.
    """
    for _ in range(500):
        selectables = reactor.getReaders() + reactor.getWriters()
        if not any(isinstance(s, (tcp.Client, tcp.Server)) for s in selectables):
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    testCase.fail("connections still open")
