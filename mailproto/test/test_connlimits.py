# -*- test-case-name: mailproto.test.test_connlimits -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._relayd._connlimits}: the counts of L{ConnectionLimits}
over a fake clock, L{ConnectionLimitsFactory} on C{StringTransport}s
(and behind the PROXY protocol), with admissions decided at once and
later, and the accept guard, both with fakes
and on a real loopback port in a process out of file descriptors.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mailproto._backlog import BACKLOG, withBacklog
from mailproto._relayd._connlimits import (
    ACCEPT_EMFILE,
    CONNECTION_RATE,
    MAX_CLIENTS,
    MAX_CLIENTS_PER_ADDRESS,
    ConnectionLimits,
    ConnectionLimitsFactory,
    _AcceptGuard,
    _AcceptPauser,
    clientKey,
)
from mailproto._relayd._proxy import ProxyProtocolFactory


def peer(host: str, port: int = 40000):
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


class ClientKeyTests(SynchronousTestCase):
    """
    L{clientKey}: what the per-address limits count a client by.
    """

    def test_keys(self):
        """
        IPv4 addresses count alone, IPv6 ones by their /64, IPv4-mapped
        IPv6 as IPv4; other addresses have no key.
        """
        self.assertEqual(clientKey(peer("192.0.2.7")), "192.0.2.7")
        self.assertEqual(clientKey(peer("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64")
        self.assertEqual(clientKey(peer("2001:db8:1:2::9")), clientKey(peer("2001:db8:1:2:ffff::1")))
        self.assertNotEqual(clientKey(peer("2001:db8:1:2::9")), clientKey(peer("2001:db8:1:3::9")))
        self.assertEqual(clientKey(peer("::ffff:192.0.2.7")), "192.0.2.7")
        self.assertEqual(clientKey(peer("fe80::1%eth0")), "fe80::/64")
        self.assertIsNone(clientKey(UNIXAddress(b"/run/sock")))
        self.assertIsNone(clientKey(IPv4Address("TCP", "not-an-address", 1)))
        self.assertIsNone(clientKey(None))


class ConnectionLimitsTests(SynchronousTestCase):
    """
    L{ConnectionLimits} under, at and over each limit, with a fake clock.
    """

    def setUp(self):
        self.clock = Clock()

    def limits(self, **kw) -> ConnectionLimits:
        return ConnectionLimits(clock=self.clock, **kw)

    def test_maxClients(self):
        """
        Up to C{maxClients} connections are admitted, from any address;
        the next is refused until one ends.
        """
        limits = self.limits(maxClients=3, maxPerAddress=0)
        self.assertEqual([limits.admit(peer(f"192.0.2.{n}")) for n in range(3)], [None] * 3)
        self.assertEqual(limits.open, 3)
        self.assertEqual(limits.admit(peer("192.0.2.9")), MAX_CLIENTS)
        self.assertEqual(limits.open, 3)
        limits.release(peer("192.0.2.1"))
        self.assertEqual(limits.admit(peer("192.0.2.9")), None)
        self.assertEqual(limits.open, 3)

    def test_maxPerAddress(self):
        """
        Up to C{maxPerAddress} connections from one address; others are
        not affected; a release makes room again and forgets an address
        with none left.
        """
        limits = self.limits(maxPerAddress=2)
        a, b = peer("192.0.2.1"), peer("192.0.2.2")
        self.assertEqual([limits.admit(a), limits.admit(a), limits.admit(a)], [None, None, MAX_CLIENTS_PER_ADDRESS])
        self.assertEqual(limits.admit(b), None)
        self.assertEqual((limits.openFrom(a), limits.openFrom(b), limits.open), (2, 1, 3))
        limits.release(a)
        self.assertEqual(limits.admit(a), None)
        for _ in range(3):
            limits.release(a)
        limits.release(b)
        self.assertEqual((limits.open, limits._openFrom), (0, {}))

    def test_ipv6Network(self):
        """
        The addresses of one IPv6 /64 share their per-address count.
        """
        limits = self.limits(maxPerAddress=2)
        self.assertIsNone(limits.admit(peer("2001:db8::1")))
        self.assertIsNone(limits.admit(peer("2001:db8::2")))
        self.assertEqual(limits.admit(peer("2001:db8::3")), MAX_CLIENTS_PER_ADDRESS)
        self.assertIsNone(limits.admit(peer("2001:db8:0:1::3")))

    def test_exempt(self):
        """
        Clients in an exempt network, and UNIX-socket clients, are not
        held to the per-address limits, only to the overall one.
        """
        limits = self.limits(maxClients=5, maxPerAddress=1, maxRate=1, exempt=["127.0.0.0/8", "2001:db8::/32"])
        for host in ("127.0.0.2", "127.0.0.2", "2001:db8::1", "2001:db8::1"):
            self.assertIsNone(limits.admit(peer(host)))
        self.assertIsNone(limits.admit(UNIXAddress(b"/s")))
        self.assertEqual(limits.admit(peer("127.0.0.2")), MAX_CLIENTS)
        self.assertEqual(limits.openFrom(peer("127.0.0.2")), 0)
        self.assertEqual(limits._openFrom, {})
        limits.release(peer("127.0.0.2"))
        self.assertIsNone(limits.admit(peer("192.0.2.1")))

    def test_rateWindowSlides(self):
        """
        An address may open C{maxRate} connections in any C{window}
        seconds; attempts refused count too; as the oldest age out of the
        window, it may connect again.
        """
        limits = self.limits(maxPerAddress=0, maxRate=3, window=60)
        a = peer("192.0.2.1")
        results = []
        for _ in range(3):
            results.append(limits.admit(a))
            self.clock.advance(10)
        self.assertEqual(results, [None] * 3)
        # At t=30: three in the last minute.
        self.assertEqual(limits.admit(a), CONNECTION_RATE)
        self.assertEqual(limits.admit(peer("192.0.2.2")), None)
        # At t=60.5 the first (t=0) has aged out, but the refused one at
        # t=30 still counts: t=10, 20, 30.
        self.clock.advance(30.5)
        self.assertEqual(limits.admit(a), CONNECTION_RATE)
        # Quiet for a minute: admitted again.
        self.clock.advance(61)
        self.assertEqual(limits.admit(a), None)

    def test_rateMemoryBounded(self):
        """
        At most C{maxAddresses} addresses' connection times are kept, the
        least recently seen are forgotten first; entries older than the
        window are dropped as time passes; each keeps at most C{maxRate}
        times.
        """
        limits = self.limits(maxPerAddress=0, maxRate=2)
        limits.maxAddresses = 100
        for n in range(250):
            limits.admit(peer(f"10.0.{n // 256}.{n % 256}"))
            limits.release(peer(f"10.0.{n // 256}.{n % 256}"))
        self.assertEqual(len(limits._recent), 100)
        self.assertNotIn("10.0.0.0", limits._recent)
        self.assertIn("10.0.0.249", limits._recent)
        for _ in range(10):
            limits.admit(peer("10.0.0.249"))
        self.assertEqual(len(limits._recent["10.0.0.249"]), 2)
        self.clock.advance(61)
        limits.admit(peer("192.0.2.1"))
        self.assertEqual(list(limits._recent), ["192.0.2.1"])

    def test_unlimited(self):
        """
        C{0} turns each limit off.
        """
        limits = self.limits(maxClients=0, maxPerAddress=0, maxRate=0)
        self.assertEqual({limits.admit(peer("192.0.2.1")) for _ in range(2000)}, {None})
        self.assertEqual(limits._recent, {})

    def test_refusedLoggedOncePerInterval(self):
        """
        A refusal tells the observers every time, and is logged once per
        address and limit every C{logInterval} seconds, with the count of
        those refused since the last line.
        """
        limits = self.limits()
        seen = []
        limits.observers.append(lambda *args: seen.append(args))
        with capturedLogs() as events:
            for _ in range(5):
                limits.refused("smtp", MAX_CLIENTS_PER_ADDRESS, peer("192.0.2.1"))
                self.clock.advance(10)
            limits.refused("submission", CONNECTION_RATE, peer("192.0.2.1"))
            self.clock.advance(15)
            limits.refused("smtp", MAX_CLIENTS_PER_ADDRESS, peer("192.0.2.1"))
        self.assertEqual(len(seen), 7)
        self.assertEqual(seen[0], ("smtp", MAX_CLIENTS_PER_ADDRESS))
        lines = [(e["peer"], e["limit"], e["more"]) for e in events]
        self.assertEqual(
            lines,
            [
                ("192.0.2.1", MAX_CLIENTS_PER_ADDRESS, 0),
                ("192.0.2.1", CONNECTION_RATE, 0),
                ("192.0.2.1", MAX_CLIENTS_PER_ADDRESS, 4),
            ],
        )


class _Recorder(Protocol):
    def __init__(self):
        self.events = []

    def connectionMade(self):
        self.events.append(("made", self.transport.getPeer()))
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data):
        self.events.append(("data", data))

    def connectionLost(self, reason):
        self.events.append(("lost",))


class _ServerFactory(Factory):
    domain = b"mx.example"

    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        p = _Recorder()
        p.factory = self
        self.built.append(p)
        return p


class _AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True


class ConnectionLimitsFactoryTests(SynchronousTestCase):
    """
    L{ConnectionLimitsFactory} on C{StringTransport}s.
    """

    def setUp(self):
        self.clock = Clock()
        self.limits = ConnectionLimits(maxClients=10, maxPerAddress=2, clock=self.clock)
        self.server = _ServerFactory()
        self.factory = ConnectionLimitsFactory(self.server, self.limits, "submission")

    def connect(self, host="192.0.2.1", factory=None):
        factory = factory or self.factory
        transport = _AbortableTransport(peerAddress=peer(host))
        protocol = factory.buildProtocol(peer(host))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_admitted(self):
        """
        An admitted connection reaches the server's protocol, which writes
        to the transport itself; input is passed on; its end is counted.
        """
        protocol, transport = self.connect()
        server = self.server.built[0]
        self.assertIs(server.transport, transport)
        self.assertEqual(transport.value(), b"220 hello\r\n")
        protocol.dataReceived(b"EHLO x\r\n")
        self.assertEqual(self.limits.open, 1)
        self.assertEqual(protocol.logPrefix(), "_Recorder")
        protocol.connectionLost(None)
        self.assertEqual(server.events, [("made", peer("192.0.2.1")), ("data", b"EHLO x\r\n"), ("lost",)])
        self.assertEqual(self.limits.open, 0)

    def test_refused(self):
        """
        Over a limit, the client gets one C{421 4.7.0} naming the server
        and the limit, and is closed; the server's protocol never hears of
        it; input after is ignored; it is cut off if it does not go.
        """
        seen = []
        self.limits.observers.append(lambda *args: seen.append(args))
        self.connect()
        self.connect()
        protocol, transport = self.connect()
        self.assertEqual(
            transport.value(), b"421 4.7.0 mx.example Too many connections from your address, try again later\r\n"
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.server.built[2].events, [])
        protocol.dataReceived(b"EHLO x\r\n")
        self.assertEqual(self.server.built[2].events, [])
        self.assertEqual(seen, [("submission", MAX_CLIENTS_PER_ADDRESS)])
        self.clock.advance(10)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(None)
        self.assertEqual(self.server.built[2].events, [])
        self.assertEqual(self.limits.open, 2)

    def test_refusedCutOffCancelled(self):
        """
        A refused connection that goes at once is not cut off later.
        """
        self.limits.maxClients = 0
        self.limits.maxPerAddress = 0
        self.limits.maxRate = 1
        self.connect()
        protocol, transport = self.connect()
        self.assertIn(b"in the last minute", transport.value())
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_maxClientsText(self):
        """
        The refusal names the overall limit when it is that one.
        """
        self.limits.maxClients = 1
        self.connect("192.0.2.1")
        _, transport = self.connect("192.0.2.2")
        self.assertEqual(transport.value(), b"421 4.7.0 mx.example Too many connections to this server, try again later\r\n")

    def test_wrappedFactoryRefuses(self):
        """
        A wrapped factory that refuses a connection (C{None}) refuses it
        here too.
        """
        self.server.buildProtocol = lambda addr: None
        self.assertIsNone(self.factory.buildProtocol(peer("192.0.2.1")))

    def test_behindProxy(self):
        """
        Behind the PROXY protocol, the connection is judged by the client
        address in the header, once it is read; connections whose header
        never comes are not counted.
        """
        proxied = ProxyProtocolFactory(self.factory, clock=self.clock)
        results = []
        for n in range(3):
            transport = _AbortableTransport(peerAddress=peer("198.51.100.1"))
            protocol = proxied.buildProtocol(peer("198.51.100.1"))
            protocol.makeConnection(transport)
            self.assertEqual(self.limits.open, n)
            protocol.dataReceived(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")
            results.append(transport.value())
        self.assertEqual(results[:2], [b"220 hello\r\n"] * 2)
        self.assertTrue(results[2].startswith(b"421 4.7.0 mx.example Too many connections from your address"))
        self.assertEqual(self.limits.openFrom(peer("192.0.2.7")), 2)
        self.assertEqual(self.limits.openFrom(peer("198.51.100.1")), 0)
        silent = proxied.buildProtocol(peer("198.51.100.1"))
        silent.makeConnection(_AbortableTransport(peerAddress=peer("198.51.100.1")))
        silent.connectionLost(None)
        self.assertEqual(self.limits.open, 2)


class _FakePort:
    connected = True
    disconnecting = False

    def __init__(self):
        self.calls = []

    def stopReading(self):
        self.calls.append("stop")

    def startReading(self):
        self.calls.append("start")


class _FailingSocket:
    def __init__(self, error):
        self.error = error
        self.closed = False

    def accept(self):
        raise OSError(self.error, os.strerror(self.error))

    def fileno(self):
        return 99


class AcceptGuardTests(SynchronousTestCase):
    """
    L{_AcceptGuard} and L{_AcceptPauser} with a fake port and socket.
    """

    def test_pause(self):
        """
        C{EMFILE} and C{ENFILE} from C{accept()} become C{EAGAIN} (no more
        clients, for Twisted), stop the port reading for a second, and are
        logged once a minute with a count; other attributes are the
        socket's.
        """
        clock, port, seen = Clock(), _FakePort(), []
        pauser = _AcceptPauser(port, clock, "tcp:25", seen.append)
        guard = _AcceptGuard(_FailingSocket(errno.EMFILE), pauser)
        self.assertEqual(guard.fileno(), 99)
        with capturedLogs() as events:
            for _ in range(3):
                error = self.assertRaises(BlockingIOError, guard.accept)
                self.assertEqual(error.errno, errno.EAGAIN)
            self.assertEqual(port.calls, ["stop"])
            clock.advance(1)
            self.assertEqual(port.calls, ["stop", "start"])
            for _ in range(59):
                self.assertRaises(BlockingIOError, guard.accept)
                clock.advance(1)
            guard._socket = _FailingSocket(errno.ENFILE)
            self.assertRaises(BlockingIOError, guard.accept)
        self.assertEqual(seen, [ACCEPT_EMFILE] * 63)
        self.assertEqual([(e["error"], e["count"], e["log_level"]) for e in events], [
            ("EMFILE", 1, LogLevel.warn),
            ("ENFILE", 62, LogLevel.warn),
        ])  # fmt: skip

    def test_otherErrors(self):
        """
        Other errors are left to Twisted.
        """
        guard = _AcceptGuard(_FailingSocket(errno.ECONNABORTED), _AcceptPauser(_FakePort(), Clock(), "x"))
        error = self.assertRaises(OSError, guard.accept)
        self.assertEqual(error.errno, errno.ECONNABORTED)

    def test_closedPortNotResumed(self):
        """
        A port that stopped listening meanwhile is not started again.
        """
        clock, port = Clock(), _FakePort()
        pauser = _AcceptPauser(port, clock, "x")
        pauser(errno.EMFILE)
        port.disconnecting = True
        clock.advance(1)
        self.assertEqual(port.calls, ["stop"])


_CHILD = """
import resource, sys
from twisted.internet import reactor, endpoints, protocol
from mailproto._relayd._connlimits import guardAccepts
from twisted.logger import globalLogBeginner, textFileLogObserver

class Echo(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"hi\\n")
    def dataReceived(self, data):
        self.transport.write(data)

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
endpoint = guardAccepts(endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), description="echo")
def listening(port):
    print("PORT", port.getHost().port, flush=True)
endpoint.listen(protocol.Factory.forProtocol(Echo)).addCallback(listening)
reactor.callLater(30, reactor.stop)
reactor.run()
"""


class OutOfDescriptorsTests(SynchronousTestCase):
    """
    A real loopback port, in a process whose limit on open files is low.
    """

    def test_pauseAndServe(self):
        """
        Past the limit, the port pauses instead of spinning: clients wait
        in the backlog, open connections are still served, one line is
        logged, and once connections end the waiting clients are taken.
        """
        try:
            import resource  # noqa: F401
        except ImportError:  # pragma: no cover
            raise SkipTest("no resource module")
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD.replace("{limit}", "64")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.addCleanup(child.wait, 10)
        self.addCleanup(child.kill)
        lines = [child.stdout.readline()]
        while lines[-1] and b"PORT " not in lines[-1]:
            lines.append(child.stdout.readline())
        if not lines[-1]:
            self.fail(b"".join(lines).decode("utf-8", "replace"))
        port = int(lines[-1].split(b"PORT ")[1])
        clients, greeted = [], []
        self.addCleanup(lambda: [c.close() for c in clients])
        for _ in range(90):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(c)
        # In order of connection: greeted until the limit, then waiting
        # (a short wait for each once one waits).
        wait = 2.0
        for c in clients:
            c.settimeout(wait)
            try:
                greeted.append(c.recv(10) == b"hi\n")
            except socket.timeout:
                greeted.append(False)
                wait = 0.02
        served = greeted.count(True)
        self.assertTrue(20 < served < 64, served)
        self.assertEqual(greeted, [True] * served + [False] * (90 - served))
        # An open connection is still served.
        clients[0].settimeout(5)
        clients[0].sendall(b"ping\n")
        self.assertEqual(clients[0].recv(10), b"ping\n")
        # Room again: the clients that waited are greeted within the pause.
        for c in clients[:30]:
            c.close()
        waiting = clients[served]
        waiting.settimeout(5)
        self.assertEqual(waiting.recv(10), b"hi\n")
        child.kill()
        output = child.stdout.read().decode("utf-8", "replace")
        self.assertEqual(output.count("Out of file descriptors (EMFILE) accepting on echo"), 1, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Could not accept", output)


class _LaterLimits:
    """
    Limits whose admissions are decided later: each C{admit} returns a
    new C{Deferred}, kept in L{asked}, that the test fires.
    """

    def __init__(self, clock):
        self.clock = clock
        self.asked = []
        self.released = []
        self.refusals = []

    def admit(self, address, listener=None):
        decision = Deferred()
        self.asked.append((address, listener, decision))
        return decision

    def answer(self, value, n=-1):
        self.asked[n][2].callback(value)

    def release(self, address):
        self.released.append(address)

    def refused(self, listener, limit, address):
        self.refusals.append((listener, limit, address))


class _Hangup(_Recorder):
    def connectionMade(self):
        _Recorder.connectionMade(self)
        self.transport.loseConnection()


class LaterAdmissionTests(SynchronousTestCase):
    """
    L{ConnectionLimitsFactory} with limits whose C{admit} returns a
    C{Deferred}, on C{StringTransport}s.
    """

    def setUp(self):
        self.clock = Clock()
        self.limits = _LaterLimits(self.clock)
        self.server = _ServerFactory()
        self.factory = ConnectionLimitsFactory(self.server, self.limits, "submission")

    def connect(self, host="192.0.2.1"):
        transport = _AbortableTransport(peerAddress=peer(host))
        protocol = self.factory.buildProtocol(peer(host))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_undecided(self):
        """
        Until the answer comes: the limits were asked with the listener's
        name, the transport is paused, nothing is sent, the server's
        protocol is not connected, and input is kept from it.
        """
        protocol, transport = self.connect()
        self.assertEqual([(a, name) for a, name, _ in self.limits.asked], [(peer("192.0.2.1"), "submission")])
        self.assertEqual(transport.producerState, "paused")
        protocol.dataReceived(b"EHLO x\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.server.built[0].events, [])
        self.assertFalse(transport.disconnecting)

    def test_admittedLater(self):
        """
        Admitted: the transport goes on, the server's protocol is
        connected (and greets), then gets what was kept, in order, then
        what comes next; the end is released once.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"EHLO x\r\n")
        protocol.dataReceived(b"MAIL FROM:<a@b>\r\n")
        self.limits.answer(None)
        server = self.server.built[0]
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value(), b"220 hello\r\n")
        self.assertIs(server.transport, transport)
        protocol.dataReceived(b"RCPT TO:<c@d>\r\n")
        protocol.connectionLost(None)
        protocol.connectionLost(None)
        self.assertEqual(
            server.events,
            [
                ("made", peer("192.0.2.1")),
                ("data", b"EHLO x\r\nMAIL FROM:<a@b>\r\n"),
                ("data", b"RCPT TO:<c@d>\r\n"),
                ("lost",),
            ],
        )
        self.assertEqual(self.limits.released, [peer("192.0.2.1")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_admittedWithoutInput(self):
        """
        A client that waits for the greeting gets it and nothing else
        reaches the server.
        """
        _, transport = self.connect()
        self.limits.answer(None)
        self.assertEqual(self.server.built[0].events, [("made", peer("192.0.2.1"))])

    def test_serverHangsUpAtOnce(self):
        """
        What was kept is not passed to a server that closed the connection
        as it was made.
        """
        self.server.buildProtocol = lambda addr: self.server.built.append(_Hangup()) or self.server.built[-1]
        protocol, transport = self.connect()
        protocol.dataReceived(b"EHLO x\r\n")
        self.limits.answer(None)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.server.built[0].events, [("made", peer("192.0.2.1"))])

    def test_refusedLater(self):
        """
        Refused: C{421} naming the limit, the refusal reported, the
        connection closed (and cut off if it does not go); the server's
        protocol never hears of it, nor of what was kept; nothing is
        released.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"EHLO x\r\n")
        self.limits.answer(MAX_CLIENTS)
        self.assertEqual(transport.value(), b"421 4.7.0 mx.example Too many connections to this server, try again later\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.limits.refusals, [("submission", MAX_CLIENTS, peer("192.0.2.1"))])
        protocol.dataReceived(b"MAIL FROM:<a@b>\r\n")
        self.clock.advance(10)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(None)
        self.assertEqual(self.server.built[0].events, [])
        self.assertEqual(self.limits.released, [])

    def test_lostThenAdmitted(self):
        """
        A connection that ends before its admission is released when it
        comes, once; the server's protocol never hears of it.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"EHLO x\r\n")
        protocol.connectionLost(None)
        self.assertEqual(self.limits.released, [])
        self.limits.answer(None)
        protocol.connectionLost(None)
        self.assertEqual(self.limits.released, [peer("192.0.2.1")])
        self.assertEqual(self.server.built[0].events, [])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lostThenRefused(self):
        """
        A refusal after the end: nothing to send, release or report.
        """
        protocol, transport = self.connect()
        protocol.connectionLost(None)
        self.limits.answer(CONNECTION_RATE)
        self.assertEqual((self.limits.released, self.limits.refusals, transport.value()), ([], [], b""))

    def test_overflow(self):
        """
        Up to 64 KiB may come before the decision; one more octet and the
        connection is dropped; the late admission is released at once.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"x" * 65535)
        protocol.dataReceived(b"y")
        self.assertFalse(transport.aborted)
        protocol.dataReceived(b"z")
        self.assertTrue(transport.aborted)
        protocol.dataReceived(b"more")
        self.limits.answer(None)
        self.assertEqual(self.limits.released, [peer("192.0.2.1")])
        protocol.connectionLost(None)
        self.assertEqual(self.limits.released, [peer("192.0.2.1")])
        self.assertEqual(self.server.built[0].events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_overflowInOneChunk(self):
        """
        The bound holds for a single large read too; a transport that
        cannot abort is closed.
        """
        transport = StringTransport(peerAddress=peer("192.0.2.1"))
        protocol = self.factory.buildProtocol(peer("192.0.2.1"))
        protocol.makeConnection(transport)
        protocol.dataReceived(b"x" * 65537)
        self.assertTrue(transport.disconnecting)
        self.limits.answer(MAX_CLIENTS)
        self.assertEqual(transport.value(), b"")

    def test_failedAnswer(self):
        """
        An admission that fails admits the connection, uncounted (nothing
        is released at its end), and is logged in one line, at most once
        a minute with the count of the others.
        """
        with capturedLogs() as events:
            protocol, transport = self.connect()
            protocol.dataReceived(b"EHLO x\r\n")
            self.limits.asked[0][2].errback(ConnectionLost("the parent is gone"))
            self.assertEqual(transport.value(), b"220 hello\r\n")
            self.assertEqual(self.server.built[0].events[1], ("data", b"EHLO x\r\n"))
            protocol.connectionLost(None)
            self.assertEqual(self.limits.released, [])
            for _ in range(3):
                self.connect()
                self.limits.asked[-1][2].errback(ConnectionLost())
            self.clock.advance(60)
            self.connect()
            self.limits.asked[-1][2].errback(ConnectionLost())
        self.assertEqual(len(events), 2)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertIn("ConnectionLost", events[0]["why"])
        self.assertIn("the parent is gone", events[0]["why"])
        self.assertEqual((events[0]["peer"], events[0]["listener"], events[0]["more"]), ("192.0.2.1", "submission", 0))
        self.assertEqual(events[1]["more"], 3)
        self.assertEqual(self.server.built[-1].events, [("made", peer("192.0.2.1"))])

    def test_unknownLimit(self):
        """
        An answer that names no known limit counts as a failed one.
        """
        with capturedLogs() as events:
            _, transport = self.connect()
            self.limits.answer("too-pretty")
        self.assertEqual(transport.value(), b"220 hello\r\n")
        self.assertIn("too-pretty", events[0]["why"])

    def test_timedOut(self):
        """
        No answer in C{admissionTimeout} seconds: admitted uncounted and
        logged.  An admission that comes later is counted from then on
        (released at the end); a refusal that comes later changes nothing.
        """
        self.factory.admissionTimeout = 5
        with capturedLogs() as events:
            first, transport = self.connect()
            second, _ = self.connect("192.0.2.2")
            first.dataReceived(b"EHLO x\r\n")
            self.clock.advance(4.9)
            self.assertEqual(transport.value(), b"")
            self.clock.advance(0.1)
        self.assertEqual(transport.value(), b"220 hello\r\n")
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.server.built[0].events[1], ("data", b"EHLO x\r\n"))
        self.assertEqual(events[0]["why"], "no answer in 5 seconds")
        self.limits.answer(None, 0)
        self.limits.answer(MAX_CLIENTS, 1)
        self.assertEqual(self.limits.refusals, [])
        first.connectionLost(None)
        second.connectionLost(None)
        self.assertEqual(self.limits.released, [peer("192.0.2.1")])

    def test_timedOutLostThenAdmitted(self):
        """
        Admitted uncounted after the timeout, ended, then admitted by the
        late answer: released at once; a failure after the timeout changes
        nothing.
        """
        self.factory.admissionTimeout = 5
        first, _ = self.connect()
        second, _ = self.connect("192.0.2.2")
        self.clock.advance(5)
        first.connectionLost(None)
        second.connectionLost(None)
        self.assertEqual(self.limits.released, [])
        self.limits.answer(None, 0)
        self.limits.asked[1][2].errback(ConnectionLost())
        self.assertEqual(self.limits.released, [peer("192.0.2.1")])

    def test_answeredAtOnce(self):
        """
        A C{Deferred} that has already fired decides at once.
        """
        self.limits.admit = lambda address, listener=None: succeed(None)
        _, transport = self.connect()
        self.assertEqual((transport.value(), transport.producerState), (b"220 hello\r\n", "producing"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_behindProxy(self):
        """
        Behind the PROXY protocol, the client's own address is asked
        about, the proxied transport is paused, and what came after the
        header in the same read is kept and passed on.
        """
        proxied = ProxyProtocolFactory(self.factory, clock=self.clock)
        transport = _AbortableTransport(peerAddress=peer("198.51.100.1"))
        protocol = proxied.buildProtocol(peer("198.51.100.1"))
        protocol.makeConnection(transport)
        protocol.dataReceived(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n")
        self.assertEqual(self.limits.asked[0][0], IPv4Address("TCP", "192.0.2.7", 40000))
        self.assertEqual((transport.producerState, transport.value()), ("paused", b""))
        self.limits.answer(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value(), b"220 hello\r\n")
        self.assertEqual(self.server.built[0].events[1], ("data", b"EHLO x\r\n"))
        protocol.connectionLost(None)
        self.assertEqual(self.limits.released, [IPv4Address("TCP", "192.0.2.7", 40000)])


def acceptedAtOnce(testCase, port, clients: int = 200) -> int:
    """
    Stop C{port} (a listening C{tcp.Port}) accepting; connect C{clients}
    clients at once; then accept for half a second (less than the second
    after which a client whose connection the kernel dropped tries again).

    @return: how many were accepted.
    """
    listener = port.socket
    port.stopReading()
    address = port.getHost()
    sockets = []
    testCase.addCleanup(lambda: [c.close() for c in sockets])
    for _ in range(clients):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex((address.host, address.port))
        sockets.append(c)
    accepted = []
    testCase.addCleanup(lambda: [c.close() for c in accepted])
    listener.settimeout(0.5)
    try:
        while len(accepted) < clients:
            accepted.append(listener.accept()[0])
    except socket.timeout:
        pass
    listener.setblocking(False)
    return len(accepted)


class BacklogTests(SynchronousTestCase):
    """
    L{withBacklog}, and what the backlog it gives does on a real loopback
    port.
    """

    def test_added(self):
        """
        TCP, TLS and UNIX listeners get the backlog unless they set one;
        other endpoint types are left as they are.
        """
        for description, expected in [
            ("tcp:25", f"tcp:25:backlog={BACKLOG}"),
            ("tcp:8025:interface=127.0.0.1", f"tcp:8025:interface=127.0.0.1:backlog={BACKLOG}"),
            ("TCP6:25:interface=\\:\\:1", f"TCP6:25:interface=\\:\\:1:backlog={BACKLOG}"),
            ("ssl:465:privateKey=k.pem:certKey=c.pem", f"ssl:465:privateKey=k.pem:certKey=c.pem:backlog={BACKLOG}"),
            ("unix:/run/relay.sock", f"unix:/run/relay.sock:backlog={BACKLOG}"),
            ("tcp:25:backlog=10", "tcp:25:backlog=10"),
            ("tcp:25: backlog = 10", "tcp:25: backlog = 10"),
            ("unix:/run/backlog=1", f"unix:/run/backlog=1:backlog={BACKLOG}"),
            ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ]:
            self.assertEqual(withBacklog(description), expected, description)
        self.assertEqual(withBacklog("tcp:25", 64), "tcp:25:backlog=64")

    def acceptedAtOnce(self, description: str, clients: int = 200) -> int:
        """
        Listen on C{description}, then L{acceptedAtOnce}.
        """
        from twisted.internet import endpoints, reactor

        ports = []
        endpoints.serverFromString(reactor, description).listen(Factory.forProtocol(Protocol)).addCallback(ports.append)
        [port] = ports
        self.addCleanup(port.stopListening)
        return acceptedAtOnce(self, port, clients)

    def test_burstWaits(self):
        """
        With the backlog given, 200 clients connecting at once all wait for
        their turn in the kernel and are accepted at once; with Twisted's
        default of 50, most are dropped and would have to try again.
        """
        self.assertEqual(self.acceptedAtOnce(withBacklog("tcp:0:interface=127.0.0.1")), 200)
        self.assertLess(self.acceptedAtOnce("tcp:0:interface=127.0.0.1"), 150)
