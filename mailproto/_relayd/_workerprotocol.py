# -*- test-case-name: mailproto.test.test_workers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
What the relay's parent and its workers say to each other
(C{twistd mailrelay --workers N}), as AMP commands over a UNIX socket
pair, one per worker.

A worker asks the parent:

  - L{Queued}: a message it accepted is durable in C{queue/}; the parent
    takes it into its queue (and delivers it) before the worker says 250;
  - L{Admit}, L{Release}, L{Refused}: the daemon's connection limits,
    kept by the parent for all workers together;
  - L{AuthAttempt}, L{AuthForgive}: the daemon's AUTH failure counts;
  - L{Counted}: what it counted for the daemon's metrics (with
    C{--metrics}; see L{mailproto._relayd._workermetrics}).

The parent tells each worker:

  - L{AuthBlocked}: an address reached the AUTH failure limit, for so
    many seconds.

Addresses cross as the plain values of
L{mailproto._relayd._sharedlimits.addressToWire}, in JSON.
"""

from __future__ import annotations

from twisted.protocols import amp


class QuietAMP(amp.AMP):
    """
    AMP without its two log lines per connection: a worker's connection
    with its parent is made at each start, and says nothing to an operator.
    """

    def makeConnection(self, transport) -> None:
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class Queued(amp.Command):
    # fsyncs: how many the worker's intake has made so far; copy and
    # state: what the message's files hold, when it is small enough
    # (_intakequeue.QueuedCopy), so that the parent need not read them.
    arguments = [
        (b"queueID", amp.Unicode()),
        (b"fsyncs", amp.Integer(optional=True)),
        (b"copy", amp.String(optional=True)),
        (b"state", amp.String(optional=True)),
    ]
    response: list = []


class Admit(amp.Command):
    arguments = [(b"address", amp.Unicode()), (b"listener", amp.Unicode())]
    response = [(b"limit", amp.Unicode(optional=True))]


class Release(amp.Command):
    arguments = [(b"address", amp.Unicode())]
    response: list = []
    requiresAnswer = False


class Refused(amp.Command):
    arguments = [(b"address", amp.Unicode()), (b"listener", amp.Unicode()), (b"limit", amp.Unicode())]
    response: list = []
    requiresAnswer = False


class AuthAttempt(amp.Command):
    arguments = [(b"address", amp.Unicode())]
    response: list = []
    requiresAnswer = False


class AuthForgive(amp.Command):
    arguments = [(b"address", amp.Unicode())]
    response: list = []
    requiresAnswer = False


class AuthBlocked(amp.Command):
    arguments = [(b"address", amp.Unicode()), (b"seconds", amp.Float())]
    response: list = []
    requiresAnswer = False


class Counted(amp.Command):
    """
    What a worker counted for the relay's metrics in the last moment
    (L{mailproto._relayd._workermetrics.DELAY}), told and not answered:
    the JSON text of L{mailproto._relayd._workermetrics.encodeCalls}.
    """

    arguments = [(b"calls", amp.Unicode())]
    response: list = []
    requiresAnswer = False
