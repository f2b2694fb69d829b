# -*- test-case-name: mailproto.test.test_connlimits -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._relayd._connlimits}: the counts of L{ConnectionLimits}
over a fake clock, L{ConnectionLimitsFactory} on C{StringTransport}s
(and behind the PROXY protocol), and the accept guard, both with fakes
and on a real loopback port in a process out of file descriptors.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase

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
