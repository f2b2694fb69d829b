# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._relaymanager}: the relaying manager over a
L{MemoryQueue}, a L{MemoryReactorClock} and downstream servers in memory,
through every state of a queued message and every outcome of an attempt.

Time is the fake clock's: retries are checked against the schedule to the
second.
"""

from __future__ import annotations

import email
import os

from twisted.internet import error
from twisted.internet.defer import TimeoutError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.names.error import DNSNameError, DNSServerError
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailproto._attempts import RetrySchedule
from mailproto._queue import FAILED, WAITING, Envelope, Queue, Recipient, newMessageID
from mailproto._smarthost import SMARTHOST
from mailproto.relay import ESMTPRelayer, SMTPRelayer
from mailproto.relaymanager import (
    ENCRYPT,
    ESMTPManagedRelayer,
    ESMTPManagedRelayerFactory,
    RelayStateHelper,
    SmartHost,
    SmartHostESMTPRelayingManager,
    SmartHostSMTPRelayingManager,
    SMTPManagedRelayerFactory,
    TLSPolicy,
)
from mailproto._mx import MXCalculator
from mailproto.smtp import ESMTPFactory
from mailproto.test.test_server_auth import PASSWORD, authFactory
from mailproto.testing import FakeResolver, MemoryDelivery, MemoryQueue, connectInMemory

SENDER = b"sender@origin.test"
MESSAGE = b"From: sender@origin.test\r\nSubject: hello\r\nMessage-ID: <1@origin.test>\r\n\r\nBody line\r\n.dot\r\n"


def resolver(**overrides) -> FakeResolver:
    """
    @return: DNS for the tests: example.com with two mail exchangers,
        other.test with one, origin.test (the senders' domain) with one.
    """
    records = dict(
        mx={
            "example.com": [(10, "mx1.example.com"), (20, "mx2.example.com")],
            "other.test": [(10, "mx.other.test")],
            "origin.test": [(10, "mx.origin.test")],
            "null.test": [(0, ".")],
        },
        a={
            "mx1.example.com": ["192.0.2.1"],
            "mx2.example.com": ["192.0.2.2"],
            "mx.other.test": ["192.0.2.10"],
            "mx.origin.test": ["192.0.2.20"],
        },
    )
    records.update(overrides)
    return FakeResolver(**records)


class Scripted(LineReceiver):
    """
    A downstream SMTP server that answers from a script.

    @ivar replies: the reply to each command, by verb; a callable is given
        the command line.  C{b"."} is the reply after the message.  A
        reply of L{None} drops the connection; C{...} is no answer.
    @ivar dropInData: drop the connection after this many lines of a
        message, or L{None}.
    @ivar commands: the commands received.
    @ivar messages: the messages received whole.
    """

    delimiter = b"\r\n"

    def __init__(self, greeting=b"220 mx.test ESMTP", dropInData=None, **replies) -> None:
        self.greeting = greeting
        self.replies = {
            b"EHLO": b"250-mx.test\r\n250 8BITMIME",
            b"HELO": b"250 mx.test",
            b"MAIL": b"250 2.1.0 Ok",
            b"RCPT": b"250 2.1.5 Ok",
            b"DATA": b"354 Go ahead",
            b".": b"250 2.0.0 Queued",
            b"RSET": b"250 2.0.0 Ok",
            b"NOOP": b"250 2.0.0 Ok",
            b"QUIT": b"221 2.0.0 Bye",
        }
        self.replies.update({k.encode(): v for k, v in replies.items()})
        self.dropInData = dropInData
        self.commands: list[bytes] = []
        self.messages: list[bytes] = []
        self._data: list[bytes] | None = None

    def connectionMade(self) -> None:
        if self.greeting is None:
            self.transport.loseConnection()
        else:
            self.sendLine(self.greeting)

    def _reply(self, key: bytes, line: bytes) -> None:
        reply = self.replies.get(key, b"502 5.5.1 Unknown")
        if callable(reply):
            reply = reply(line)
        if reply is ...:
            return  # no answer
        if reply is None:
            self.transport.loseConnection()
        else:
            self.sendLine(reply)

    def lineReceived(self, line: bytes) -> None:
        if self._data is not None:
            if line == b".":
                self.messages.append(b"".join(self._data))
                self._data = None
                self._reply(b".", line)
                return
            self._data.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
            if self.dropInData is not None and len(self._data) >= self.dropInData:
                self.transport.loseConnection()
            return
        self.commands.append(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"DATA" and not callable(self.replies[b"DATA"]) and self.replies[b"DATA"].startswith(b"354"):
            self._data = []
        self._reply(verb, line)


class RelayHarness:
    """
    A relaying manager over a L{MemoryQueue}, with the DNS of L{resolver}
    and a fake reactor; each connection it opens is served by a protocol
    the test gives.
    """

    def __init__(self, testCase, managerClass=SmartHostESMTPRelayingManager, dns=None, start=True, **kw) -> None:
        self.testCase = testCase
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_000_000)
        self.queue = MemoryQueue()
        self.resolver = dns or resolver()
        kw.setdefault("tls", TLSPolicy("none"))
        kw.setdefault("connectionCacheTime", 0)
        self.manager = managerClass(
            self.queue,
            kw.pop("maxConnections", 10),
            kw.pop("maxMessagesPerConnection", 10),
            reactor=self.reactor,
            hostname="relay.test",
            mxcalc=MXCalculator(self.resolver, clock=self.reactor),
            **kw,
        )
        if start:
            self.manager.start()
            testCase.addCleanup(self.manager.stop)

    def enqueue(self, recipients, sender=SENDER, data=MESSAGE, **fields) -> Envelope:
        envelope = Envelope(
            newMessageID(self.reactor.seconds()),
            sender,
            [r if isinstance(r, Recipient) else Recipient(r) for r in recipients],
            received=self.reactor.seconds(),
            **fields,
        )
        spool = self.queue.newMessage(envelope)
        spool.write(data)
        spool.commit()
        return envelope

    def turn(self, seconds: float = 0) -> None:
        self.reactor.advance(seconds)

    def connections(self) -> list:
        """
        @return: the connections asked for since the last call:
            C{(host, port, factory)}.
        """
        made = [(host, port, factory) for host, port, factory, *_ in self.reactor.tcpClients]
        del self.reactor.tcpClients[:]
        return made

    def connection(self):
        """
        @return: the one connection asked for.
        """
        [made] = self.connections()
        return made

    def serve(self, factory, server) -> None:
        """
        Connect the relayer of C{factory} to C{server} and run the session
        to its end.
        """
        client = factory.buildProtocol(None)
        pump = connectInMemory(server, client, clock=self.reactor)
        pump.flush()
        for _ in range(20):
            if client.transport.disconnected:
                break
            # The server may be taking its time (a slowed-down AUTH
            # failure): let a little time pass.
            self.reactor.advance(1)
            pump.flush()
        if not client.transport.disconnected:
            client.transport.loseConnection()
            server.transport.loseConnection()
            pump.flush()

    def refuse(self, factory) -> None:
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError("refused")))

    def accounted(self) -> None:
        """
        Check that every queued message is in a state: in flight, or
        waiting with a timer that will bring it back.
        """
        manager = self.manager
        scheduled = {queueID for when, _, queueID in manager.due.heap}
        for queueID in self.queue.ids():
            envelope = self.queue.getEnvelope(queueID)
            self.testCase.assertTrue(envelope.waiting, f"{queueID} is queued with nobody waiting")
            if queueID in manager._inFlight:
                continue
            self.testCase.assertIn(queueID, scheduled, f"{queueID} is in no state")
            self.testCase.assertIsNotNone(manager.due.timer)
            self.testCase.assertTrue(manager.due.timer.active())
            self.testCase.assertLessEqual(manager.due.timer.getTime(), envelope.nextAttempt)

    def reports(self) -> list[tuple[Envelope, email.message.Message]]:
        """
        @return: the delivery status notifications in the queue.
        """
        out = []
        for queueID in self.queue.ids():
            envelope = self.queue.getEnvelope(queueID)
            if envelope.sender == b"":
                out.append((envelope, email.message_from_bytes(self.queue.messages[queueID])))
        return out


def statusFields(report: email.message.Message) -> list[dict]:
    """
    @return: the per-recipient fields of a report's
        C{message/delivery-status} part.
    """
    for part in report.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            return [dict(block.items()) for block in payload[1:]]
    raise AssertionError("no delivery-status part")


class DeliveryTests(SynchronousTestCase):
    """
    Messages that get through.
    """

    def test_delivered(self):
        """
        A due message goes to the domain's first MX on port 25; after a
        250 it is gone from the queue, and nothing is reported.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        host, port, factory = relay.connection()
        self.assertEqual((host, port), ("192.0.2.1", 25))
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(server.messages, [MESSAGE])
        self.assertEqual(server.commands[:3], [b"EHLO relay.test", b"MAIL FROM:<sender@origin.test>", b"RCPT TO:<rcpt@example.com>"])
        self.assertEqual(relay.queue.ids(), [])
        self.assertEqual(relay.queue.removed, [envelope.id])
        self.assertEqual(relay.manager.stats["delivered"], 1)
        relay.accounted()

    def test_dsnParametersPassedOn(self):
        """
        The envelope's DSN parameters go downstream to a server that
        offers DSN.
        """
        relay = RelayHarness(self)
        relay.enqueue(
            [Recipient(b"rcpt@example.com", notify=(b"FAILURE", b"DELAY"), orcpt=(b"rfc822", b"orig@example.com"))],
            ret=b"HDRS",
            envid=b"env-1",
        )
        relay.turn()
        _, _, factory = relay.connection()
        server = Scripted(EHLO=b"250-mx.test\r\n250 DSN")
        relay.serve(factory, server)
        self.assertEqual(server.commands[1], b"MAIL FROM:<sender@origin.test> RET=HDRS ENVID=env-1")
        self.assertEqual(server.commands[2], b"RCPT TO:<rcpt@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig@example.com")
        self.assertEqual(relay.queue.ids(), [])

    def test_severalMessagesOneConnection(self):
        """
        Messages for one domain queued together share a connection, up to
        C{maxMessagesPerConnection} each.
        """
        relay = RelayHarness(self, maxMessagesPerConnection=2)
        for i in range(3):
            relay.enqueue([b"rcpt%d@example.com" % i])
        relay.turn()
        made = relay.connections()
        self.assertEqual(len(made), 2)
        servers = [Scripted(), Scripted()]
        for (_, _, factory), server in zip(made, servers):
            relay.serve(factory, server)
        self.assertEqual(sorted(len(s.messages) for s in servers), [1, 2])
        self.assertEqual(relay.queue.ids(), [])

    def test_connectionTakesMore(self):
        """
        A message that comes due while a connection to its domain is busy
        goes over that connection before it says QUIT.
        """
        relay = RelayHarness(self, maxConnectionsPerDestination=1)
        relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        later = []

        def rcpt(line):
            if not later:
                later.append(relay.enqueue([b"b@example.com"]))
            return b"250 2.1.5 Ok"

        server = Scripted(RCPT=rcpt)
        relay.serve(factory, server)
        self.assertEqual(len(server.messages), 2)
        self.assertEqual(server.commands[-1], b"QUIT")
        self.assertEqual(relay.connections(), [])
        self.assertEqual(relay.queue.ids(), [])

    def test_connectionWaitsForMore(self):
        """
        With C{connectionCacheTime}, a connection that has sent everything
        waits that long for more mail to its destination, takes it, and
        says QUIT when the time is up with nothing more.
        """
        relay = RelayHarness(self, connectionCacheTime=2)
        relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = Scripted()
        client = factory.buildProtocol(None)
        pump = connectInMemory(server, client, clock=relay.reactor)
        pump.flush()
        self.assertEqual(len(server.messages), 1)
        self.assertNotIn(b"QUIT", server.commands)
        relay.enqueue([b"b@example.com"])
        relay.turn(1)
        pump.flush()
        self.assertEqual(len(server.messages), 2)
        self.assertEqual(relay.connections(), [])
        self.assertEqual(relay.queue.ids(), [])
        relay.turn(1.5)
        pump.flush()
        self.assertNotIn(b"QUIT", server.commands)
        relay.turn(0.5)
        pump.flush()
        self.assertEqual(server.commands[-1], b"QUIT")
        self.assertTrue(client.transport.disconnected)
        self.assertEqual(relay.manager.lines.parked, {})
        self.assertEqual(relay.manager.lines.connections, 0)

    def test_timeoutOnManagerClock(self):
        """
        A relayer's time-out runs on the manager's clock: a server that
        stops answering is given up on after C{timeout} seconds of it, and
        the message is deferred.
        """
        relay = RelayHarness(self, timeout=60)
        envelope = relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        client = factory.buildProtocol(None)
        pump = connectInMemory(Scripted(RCPT=...), client, clock=relay.reactor)
        pump.flush()
        relay.turn(59)
        pump.flush()
        self.assertFalse(client.transport.disconnected)
        relay.turn(1)
        pump.flush()
        self.assertTrue(client.transport.disconnected)
        # Nothing answered on this connection: the next MX is tried.
        host, _, _ = relay.connection()
        self.assertEqual(host, "192.0.2.2")
        self.assertEqual(relay.queue.ids(), [envelope.id])

    def test_stopEndsWaitingConnections(self):
        """
        Stopping the manager sends QUIT on connections waiting for more.
        """
        relay = RelayHarness(self, connectionCacheTime=2)
        relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = Scripted()
        pump = connectInMemory(server, factory.buildProtocol(None), clock=relay.reactor)
        pump.flush()
        self.assertNotIn(b"QUIT", server.commands)
        relay.manager.stop()
        pump.flush()
        self.assertEqual(server.commands[-1], b"QUIT")

    def test_twoDomains(self):
        """
        A message for two domains goes over two connections at once, and
        leaves the queue only when both have answered.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a@example.com", b"b@other.test"])
        relay.turn()
        made = relay.connections()
        self.assertEqual(sorted(h for h, _, _ in made), ["192.0.2.1", "192.0.2.10"])
        byHost = {h: f for h, _, f in made}
        relay.serve(byHost["192.0.2.10"], Scripted())
        self.assertEqual(relay.queue.ids(), [envelope.id])
        self.assertIn(envelope.id, relay.manager._inFlight)
        relay.accounted()
        relay.serve(byHost["192.0.2.1"], Scripted())
        self.assertEqual(relay.queue.ids(), [])

    def test_realServer(self):
        """
        Against mailproto's own ESMTP server (PIPELINING, CHUNKING, DSN)
        the message arrives byte for byte.
        """
        relay = RelayHarness(self)
        relay.enqueue([b"a@example.com", b"b@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        delivery = MemoryDelivery()
        relay.serve(factory, ESMTPFactory(delivery=delivery, domain=b"mx1.example.com", clock=relay.reactor).buildProtocol(None))
        self.assertEqual([(bytes(m.recipient), m.data) for m in delivery.messages], [(b"a@example.com", MESSAGE), (b"b@example.com", MESSAGE)])
        self.assertEqual(relay.queue.ids(), [])

    def test_nullSenderDelivered(self):
        """
        A report (null sender) is relayed with C{MAIL FROM:<>}.
        """
        relay = RelayHarness(self)
        relay.enqueue([b"a@example.com"], sender=b"")
        relay.turn()
        _, _, factory = relay.connection()
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(server.commands[1], b"MAIL FROM:<>")


class RetryTests(SynchronousTestCase):
    """
    Temporary failures: the message waits, and is tried again on the
    schedule.
    """

    def assertDeferred(self, relay, envelope, lastReply):
        self.assertEqual(relay.queue.ids(), [envelope.id])
        self.assertEqual([r.state for r in envelope.recipients], [WAITING])
        self.assertIn(lastReply, str(envelope.recipients[0].lastReply))
        self.assertEqual(relay.queue.states[envelope.id]["attempts"], envelope.attempts)
        self.assertEqual(relay.reports(), [])
        relay.accounted()

    def test_backoffSchedule(self):
        """
        After each 451 the next attempt is 300 s later, doubling up to
        4000 s; nothing is tried before its time.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        delays = []
        for attempt in range(7):
            _, _, factory = relay.connection()
            relay.serve(factory, Scripted(RCPT=b"451 4.3.0 Try later"))
            self.assertDeferred(relay, envelope, "451 4.3.0 Try later")
            delay = envelope.nextAttempt - relay.reactor.seconds()
            delays.append(delay)
            relay.turn(delay - 1)
            self.assertEqual(relay.connections(), [])
            relay.turn(1)
        self.assertEqual(delays, [300, 600, 1200, 2400, 4000, 4000, 4000])
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted())
        self.assertEqual(relay.queue.ids(), [])

    def test_greeting421NextMX(self):
        """
        A server that greets with 421 is left for the next MX, in the
        same attempt.
        """
        relay = RelayHarness(self)
        relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        host, _, factory = relay.connection()
        self.assertEqual(host, "192.0.2.1")
        relay.serve(factory, Scripted(greeting=b"421 4.3.2 Busy"))
        host, _, factory = relay.connection()
        self.assertEqual(host, "192.0.2.2")
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(len(server.messages), 1)
        self.assertEqual(relay.queue.ids(), [])

    def test_every421Deferred(self):
        """
        When every MX greets with 421 the message is deferred with what
        the last one said.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        for _ in range(2):
            _, _, factory = relay.connection()
            relay.serve(factory, Scripted(greeting=b"421 4.3.2 Busy"))
        self.assertDeferred(relay, envelope, "421 4.3.2 Busy")
        self.assertTrue(str(envelope.recipients[0].lastReply).startswith("451 4.4.2"))

    def test_451AfterData(self):
        """
        451 after the message: deferred.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(**{".": b"451 4.3.0 Disk full"}))
        self.assertDeferred(relay, envelope, "451 4.3.0 Disk full")
        self.assertEqual(envelope.nextAttempt, relay.reactor.seconds() + 300)

    def test_421ClosesAfterData(self):
        """
        421 after the message, then the server hangs up: deferred.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(**{".": b"421 4.3.2 Shutting down"}))
        self.assertDeferred(relay, envelope, "421 4.3.2 Shutting down")

    def test_droppedInData(self):
        """
        The connection dropped in the middle of the message: the next MX
        is tried; when it drops too, deferred, then delivered whole on the
        next attempt.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        for expected in ("192.0.2.1", "192.0.2.2"):
            host, _, factory = relay.connection()
            self.assertEqual(host, expected)
            relay.serve(factory, Scripted(dropInData=2))
        self.assertDeferred(relay, envelope, "4.4.2")
        relay.turn(300)
        _, _, factory = relay.connection()
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(server.messages, [MESSAGE])
        self.assertEqual(relay.queue.ids(), [])

    def test_droppedAfterFirstMessage(self):
        """
        A connection lost after its first message was answered: the
        first is done, the rest are deferred (not tried elsewhere in the
        same attempt).
        """
        relay = RelayHarness(self)
        first = relay.enqueue([b"a@example.com"])
        second = relay.enqueue([b"b@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        answers = iter([b"250 2.0.0 Queued", None])
        relay.serve(factory, Scripted(**{".": lambda line: next(answers)}))
        self.assertEqual(relay.queue.ids(), [second.id])
        self.assertNotIn(first.id, relay.queue.ids())
        self.assertEqual(relay.connections(), [])
        self.assertDeferred(relay, second, "4.4.2")

    def test_connectionRefused(self):
        """
        Every address refuses the connection: deferred with 4.4.1, each
        MX tried once, and the hosts marked bad.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        hosts = []
        for _ in range(2):
            host, _, factory = relay.connection()
            hosts.append(host)
            relay.refuse(factory)
        self.assertEqual(hosts, ["192.0.2.1", "192.0.2.2"])
        self.assertDeferred(relay, envelope, "451 4.4.1")
        calculator = relay.manager.mxcalc
        self.assertTrue(calculator._isBad("mx1.example.com"))

    def test_dnsServerFailure(self):
        """
        SERVFAIL: deferred with 4.4.3, no connection.
        """
        relay = RelayHarness(self, dns=resolver(failures={("example.com", "MX"): DNSServerError}))
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        self.assertEqual(relay.connections(), [])
        self.assertDeferred(relay, envelope, "451 4.4.3")

    def test_dnsTimeout(self):
        """
        A DNS time-out: deferred, and delivered once the DNS answers.
        """
        dns = resolver(failures={("example.com", "MX"): TimeoutError})
        relay = RelayHarness(self, dns=dns)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        self.assertDeferred(relay, envelope, "451 4.4.3")
        dns.failures.clear()
        relay.turn(300)
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted())
        self.assertEqual(relay.queue.ids(), [])

    def test_stateWriteFails(self):
        """
        If the state cannot be written the message is kept as it was and
        tried again later.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.queue.failWrites = True
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=b"550 5.1.1 No such user"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(relay.queue.ids(), [envelope.id])
        self.assertEqual(envelope.recipients[0].state, WAITING)
        relay.accounted()
        relay.queue.failWrites = False
        relay.turn(300)
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted())
        self.assertEqual(relay.queue.ids(), [])


class FailureTests(SynchronousTestCase):
    """
    Permanent failures and expiry: the sender gets one report.
    """

    def test_550OneOfTwo(self):
        """
        One recipient refused with 550, the other accepted: one report
        for the refused one, and the message is done.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"good@example.com", b"bad@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=lambda line: b"550 5.1.1 No such user" if b"bad@" in line else b"250 2.1.5 Ok"))
        self.assertNotIn(envelope.id, relay.queue.ids())
        [(bounce, report)] = relay.reports()
        self.assertEqual([r.address for r in bounce.recipients], [SENDER])
        self.assertEqual(report.get_content_type(), "multipart/report")
        [fields] = statusFields(report)
        self.assertEqual(fields["Final-Recipient"], "rfc822;bad@example.com")
        self.assertEqual(fields["Action"], "failed")
        self.assertEqual(fields["Status"], "5.1.1")
        self.assertIn("550 5.1.1 No such user", fields["Diagnostic-Code"])
        self.assertEqual(fields["Remote-MTA"], "dns; mx1.example.com")
        self.assertEqual(relay.manager.stats["reports"], 1)

    def test_reportIsRelayed(self):
        """
        The report is sent on to the sender's domain from C{<>}.
        """
        relay = RelayHarness(self)
        relay.enqueue([b"bad@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=b"550 5.1.1 No such user"))
        relay.turn()
        host, _, factory = relay.connection()
        self.assertEqual(host, "192.0.2.20")
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(server.commands[1:3], [b"MAIL FROM:<>", b"RCPT TO:<sender@origin.test>"])
        self.assertIn(b"Subject: hello", server.messages[0])
        self.assertEqual(relay.queue.ids(), [])

    def test_bounceOnceWhileOthersRetry(self):
        """
        550 for one recipient and 451 for the other: the first is reported
        now; when the second is delivered later, there is no second
        report.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"bad@example.com", b"later@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=lambda line: b"550 5.1.1 No such user" if b"bad@" in line else b"451 4.3.0 Later"))
        self.assertEqual([r.state for r in envelope.recipients], [FAILED, WAITING])
        [(report, _)] = relay.reports()
        relay.turn()
        host, _, factory = relay.connection()
        self.assertEqual(host, "192.0.2.20")
        relay.serve(factory, Scripted())
        self.assertNotIn(report.id, relay.queue.ids())
        relay.turn(300)
        _, _, factory = relay.connection()
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(server.commands[2], b"RCPT TO:<later@example.com>")
        self.assertEqual(relay.queue.ids(), [])
        self.assertEqual(relay.manager.stats["reports"], 1)

    def test_550OnMail(self):
        """
        MAIL refused with 550: every recipient failed.
        """
        relay = RelayHarness(self)
        relay.enqueue([b"a@example.com", b"b@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(MAIL=b"550 5.7.1 Sender refused"))
        [(_, report)] = relay.reports()
        self.assertEqual([f["Status"] for f in statusFields(report)], ["5.7.1", "5.7.1"])

    def test_554AfterData(self):
        """
        The message refused after its data with 554: failed.
        """
        relay = RelayHarness(self)
        relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(**{".": b"554 5.6.0 Content refused"}))
        [(_, report)] = relay.reports()
        self.assertEqual([f["Status"] for f in statusFields(report)], ["5.6.0"])

    def test_nullMX(self):
        """
        A null MX: bounced at once with 5.1.10, no connection.
        """
        relay = RelayHarness(self)
        relay.enqueue([b"a@null.test"])
        relay.turn()
        [(_, report)] = relay.reports()
        self.assertEqual([f["Status"] for f in statusFields(report)], ["5.1.10"])
        # The relay's own reply: no remote MTA said it.
        [fields] = statusFields(report)
        self.assertNotIn("Remote-MTA", fields)
        self.assertTrue(fields["Diagnostic-Code"].startswith("x-mailproto; 5.1.10 "), fields["Diagnostic-Code"])
        human = report.get_payload(0).get_payload(decode=True)
        self.assertIn(b"Reason: 5.1.10 ", human)
        self.assertNotIn(b"said:", human)
        # The only connection is the report's, to the sender's MX.
        self.assertEqual([host for host, _, _ in relay.connections()], ["192.0.2.20"])

    def test_noSuchDomain(self):
        """
        NXDOMAIN: bounced.
        """
        relay = RelayHarness(self, dns=resolver(failures={("gone.test", "MX"): DNSNameError}))
        relay.enqueue([b"a@gone.test"])
        relay.turn()
        [(_, report)] = relay.reports()
        self.assertEqual([f["Status"] for f in statusFields(report)], ["5.1.2"])

    def test_expiry(self):
        """
        A recipient still deferred when the message's lifetime is over
        fails with 4.4.7, is reported once, and the message is gone.
        """
        relay = RelayHarness(self, schedule=RetrySchedule(300, 4000, 3600))
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        attempts = 0
        while relay.queue.ids() == [envelope.id] or envelope.id in relay.queue.ids():
            made = relay.connections()
            if not made:
                relay.turn(envelope.nextAttempt - relay.reactor.seconds())
                continue
            [(_, _, factory)] = made
            relay.serve(factory, Scripted(RCPT=b"451 4.3.0 Later"))
            attempts += 1
            self.assertLess(attempts, 20)
        self.assertEqual(envelope.recipients[0].state, FAILED)
        self.assertTrue(envelope.recipients[0].expired)
        self.assertEqual(str(envelope.recipients[0].lastReply), "451 4.3.0 Later")
        [(_, report)] = relay.reports()
        [fields] = statusFields(report)
        self.assertEqual((fields["Action"], fields["Status"]), ("failed", "4.4.7"))
        self.assertEqual((fields["Remote-MTA"], fields["Diagnostic-Code"]), ("dns; mx1.example.com", "smtp; 451 4.3.0 Later"))
        self.assertEqual(attempts, 5)  # at 0, 300, 900, 2100, 4500 s

    def test_neverBounceABounce(self):
        """
        A report that cannot be delivered is dropped, not reported.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a@example.com"], sender=b"")
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=b"550 5.1.1 No such user"))
        self.assertEqual(relay.queue.ids(), [])
        self.assertEqual(relay.queue.removed, [envelope.id])

    def test_notifyNever(self):
        """
        NOTIFY=NEVER: no report.
        """
        relay = RelayHarness(self)
        relay.enqueue([Recipient(b"a@example.com", notify=(b"NEVER",))])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=b"550 5.1.1 No such user"))
        self.assertEqual(relay.queue.ids(), [])

    def test_reportCannotBeQueued(self):
        """
        If the report cannot be written the failed recipients wait again,
        so the report is made on a later attempt.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.queue.failWrites = True
        relay.serve(factory, Scripted(RCPT=b"550 5.1.1 No such user"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(relay.queue.ids(), [envelope.id])
        self.assertEqual(envelope.recipients[0].state, WAITING)
        relay.accounted()

    def test_reportRaises(self):
        """
        A report that fails at once (the spool cannot be opened) is
        handled as one that fails later: the message waits again, and is
        not left in flight.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()

        def broken(envelope):
            raise OSError("no space left")

        self.patch(relay.queue, "newMessage", broken)
        relay.serve(factory, Scripted(RCPT=b"550 5.1.1 No such user"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(relay.manager._inFlight, {})
        self.assertEqual(envelope.recipients[0].state, WAITING)
        self.successResultOf(relay.manager.whenIdle())
        relay.accounted()

    def test_relayedReport(self):
        """
        NOTIFY=SUCCESS, delivered to a server without DSN: the sender gets
        a "relayed" report (RFC 3461 section 5.2.2); to a server with DSN,
        none (that server reports the delivery).
        """
        relay = RelayHarness(self)
        relay.enqueue([Recipient(b"a@example.com", notify=(b"SUCCESS",))])
        relay.enqueue([Recipient(b"b@other.test", notify=(b"SUCCESS",))])
        relay.turn()
        byHost = {h: f for h, _, f in relay.connections()}
        relay.serve(byHost["192.0.2.1"], Scripted())
        relay.serve(byHost["192.0.2.10"], Scripted(EHLO=b"250-mx.test\r\n250 DSN"))
        [(_, report)] = relay.reports()
        [fields] = statusFields(report)
        self.assertEqual((fields["Final-Recipient"], fields["Action"], fields["Status"]), ("rfc822;a@example.com", "relayed", "2.0.0"))
        self.assertIn("@relay.test>", report["Message-ID"])

    def test_delayWarning(self):
        """
        With C{delayWarning}, a message deferred for that long gets one
        "delayed" report, and no more.
        """
        relay = RelayHarness(self, delayWarning=600)
        envelope = relay.enqueue([b"rcpt@example.com"])
        relay.turn()
        for _ in range(4):
            made = relay.connections()
            if not made:
                relay.turn(envelope.nextAttempt - relay.reactor.seconds())
                made = relay.connections()
            [(_, _, factory)] = made
            relay.serve(factory, Scripted(RCPT=b"451 4.3.0 Later"))
        reports = [r for r in relay.reports()]
        self.assertEqual(len(reports), 1)
        [fields] = statusFields(reports[0][1])
        self.assertEqual((fields["Action"], fields["Status"]), ("delayed", "4.3.0"))
        self.assertTrue(envelope.warned)
        self.assertTrue(relay.queue.states[envelope.id]["warned"])


def limitedServer(limit: int, refusal: bytes = b"452 4.5.3 Too many recipients", pipelining: bool = False) -> Scripted:
    """
    @return: a server that takes at most C{limit} recipients in one
        transaction, and refuses the others with C{refusal}.
    """
    counts = [0]

    def mail(line):
        counts[0] = 0
        return b"250 2.1.0 Ok"

    def rcpt(line):
        counts[0] += 1
        return b"250 2.1.5 Ok" if counts[0] <= limit else refusal

    ehlo = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME" if pipelining else b"250-mx.test\r\n250 8BITMIME"
    return Scripted(EHLO=ehlo, MAIL=mail, RCPT=rcpt)


class TooManyRecipientsTests(SynchronousTestCase):
    """
    Recipients refused as too many for one transaction go in the next
    transaction on the same connection at once (RFC 5321 section
    4.5.3.1.10), not at the next attempt.
    """

    def rcpts(self, server) -> list[list[bytes]]:
        """
        @return: the RCPT addresses of each transaction.
        """
        out = []
        for command in server.commands:
            if command.startswith(b"MAIL"):
                out.append([])
            elif command.startswith(b"RCPT"):
                out[-1].append(command[len(b"RCPT TO:<") : command.index(b">")])
        return out

    def test_restInNextTransaction(self):
        """
        Five recipients, two per transaction: three transactions over one
        connection, every recipient delivered by the first attempt.
        """
        for pipelining in (False, True):
            relay = RelayHarness(self)
            addresses = [b"r%d@example.com" % i for i in range(5)]
            envelope = relay.enqueue(addresses)
            relay.turn()
            _, _, factory = relay.connection()
            server = limitedServer(2, pipelining=pipelining)
            relay.serve(factory, server)
            transactions = self.rcpts(server)
            self.assertEqual(transactions, [addresses, addresses[2:], addresses[4:]])
            self.assertEqual(len(server.messages), 3)
            self.assertEqual(relay.connections(), [])
            self.assertEqual(relay.queue.ids(), [])
            self.assertEqual(envelope.attempts, 1)
            self.assertEqual(relay.manager.stats["delivered"], 5)
            self.assertEqual(relay.manager.stats["deferred"], 0)

    def test_thousandRecipients(self):
        """
        1,000 recipients to a server that takes 100 per transaction are
        all delivered in one attempt, in ten transactions, with no time
        passing.
        """
        relay = RelayHarness(self)
        relay.enqueue([b"r%d@example.com" % i for i in range(1000)])
        relay.turn()
        _, _, factory = relay.connection()
        server = limitedServer(100, pipelining=True)
        start = relay.reactor.seconds()
        relay.serve(factory, server)
        self.assertEqual([len(t) for t in self.rcpts(server)], [1000 - 100 * i for i in range(10)])
        self.assertEqual(len(server.messages), 10)
        self.assertEqual(relay.queue.ids(), [])
        self.assertEqual(relay.manager.stats["delivered"], 1000)
        self.assertEqual(relay.reactor.seconds(), start)

    def attempt(self, limit: int, refusal: bytes) -> tuple[Envelope, list[list[bytes]]]:
        """
        Send a message to two recipients to a server that takes C{limit}
        per transaction and refuses the others with C{refusal}.

        @return: the message's envelope and the RCPT addresses of each
            transaction.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a@example.com", b"b@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = limitedServer(limit, refusal=refusal)
        relay.serve(factory, server)
        return envelope, self.rcpts(server)

    def test_552TooMany(self):
        """
        C{552 5.5.3} to a RCPT after others were accepted is taken as
        too many recipients too; a plain C{552} (a full mailbox) fails.
        """
        envelope, transactions = self.attempt(1, b"552 5.5.3 Too many recipients")
        self.assertEqual(transactions, [[b"a@example.com", b"b@example.com"], [b"b@example.com"]])
        self.assertEqual([r.state for r in envelope.recipients], ["delivered", "delivered"])
        envelope, transactions = self.attempt(1, b"552 5.2.2 Mailbox full")
        self.assertEqual(len(transactions), 1)
        self.assertEqual([r.state for r in envelope.recipients], ["delivered", FAILED])

    def test_nothingAcceptedDeferred(self):
        """
        C{452} with nobody accepted (the server takes no recipient now),
        or a C{452} with another status (4.2.2, a full mailbox): the
        recipients wait for the next attempt, with no new transaction.
        """
        envelope, transactions = self.attempt(0, b"452 4.5.3 Too many recipients")
        self.assertEqual(len(transactions), 1)
        self.assertEqual([r.state for r in envelope.recipients], [WAITING, WAITING])
        self.assertEqual(envelope.attempts, 1)
        envelope, transactions = self.attempt(1, b"452 4.2.2 Over quota")
        self.assertEqual(len(transactions), 1)
        self.assertEqual([r.state for r in envelope.recipients], ["delivered", WAITING])

    def test_lostBeforeTheRest(self):
        """
        A connection lost before the next transaction is answered defers
        the rest; what was delivered stays delivered.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a@example.com", b"b@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = limitedServer(1)
        mails = []

        def mail(line):
            mails.append(line)
            return b"250 2.1.0 Ok" if len(mails) == 1 else None

        server.replies[b"MAIL"] = mail
        relay.serve(factory, server)
        self.assertEqual([r.state for r in envelope.recipients], ["delivered", WAITING])
        self.assertEqual(relay.queue.ids(), [envelope.id])
        self.assertEqual(envelope.attempts, 1)
        relay.accounted()


class SessionRefusalTests(SynchronousTestCase):
    """
    A server that refuses the session (AUTH required or refused, TLS
    required) says that the relay is not set up as it wants: the mail is
    deferred and a configuration error logged, never bounced.
    """

    def capture(self) -> list[dict]:
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        return logged

    def test_authRequiredDeferred(self):
        """
        C{530 5.7.0 Authentication required} to MAIL, for two messages on
        one connection: both deferred, nothing reported, one
        configuration error logged.
        """
        logged = self.capture()
        relay = RelayHarness(self, smartHost="smart.test:587")
        first = relay.enqueue([b"a@example.com", b"b@example.com"])
        second = relay.enqueue([b"c@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(MAIL=b"530 5.7.0 Authentication required"))
        self.assertEqual(sorted(relay.queue.ids()), sorted([first.id, second.id]))
        for envelope in (first, second):
            self.assertEqual({r.state for r in envelope.recipients}, {WAITING})
            self.assertIn("530 5.7.0 Authentication required", str(envelope.recipients[0].lastReply))
            self.assertTrue(str(envelope.recipients[0].lastReply).startswith("451 4.7.0"))
        self.assertEqual(relay.reports(), [])
        errors = [e for e in logged if "Configuration error" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["host"], "smart.test")
        relay.accounted()

    def test_otherSessionRefusals(self):
        """
        TLS required (C{530} from RFC 3207), a refused or too weak
        mechanism (C{535}, C{534}, C{538}) and their enhanced statuses on
        another code: deferred.
        """
        for reply in (
            b"530 5.7.0 Must issue a STARTTLS command first",
            b"535 5.7.8 Authentication credentials invalid",
            b"534 5.7.9 Authentication mechanism is too weak",
            b"538 5.7.11 Encryption required for requested authentication mechanism",
            b"554 5.7.10 Encryption needed",
        ):
            relay = RelayHarness(self, smartHost="smart.test:587")
            envelope = relay.enqueue([b"a@example.com"])
            relay.turn()
            _, _, factory = relay.connection()
            relay.serve(factory, Scripted(RCPT=reply))
            self.assertEqual(envelope.recipients[0].state, WAITING, reply)
            self.assertEqual(relay.reports(), [])

    def test_relayDeniedStillFails(self):
        """
        C{550 5.7.1} (relaying denied, a policy about the recipient) is
        not a session refusal: it fails and is reported.
        """
        relay = RelayHarness(self, smartHost="smart.test:587")
        envelope = relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=b"550 5.7.1 Relaying denied"))
        self.assertEqual(envelope.recipients[0].state, FAILED)
        self.assertEqual(len(relay.reports()), 1)


class SoftBounceTests(SynchronousTestCase):
    """
    With C{softBounce}, every permanent failure defers the recipient, and
    says so in its last reply and the log.
    """

    def test_5xxDeferred(self):
        """
        C{550} to RCPT and C{554} after the data: deferred on the retry
        schedule, with a C{4xx} reply that keeps the server's; no report.
        """
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        relay = RelayHarness(self, softBounce=True)
        envelope = relay.enqueue([b"bad@example.com", b"good@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(RCPT=lambda line: b"550 5.1.1 No such user" if b"bad@" in line else b"250 2.1.5 Ok", **{".": b"554 5.6.0 Content refused"}))
        self.assertEqual([r.state for r in envelope.recipients], [WAITING, WAITING])
        self.assertEqual(str(envelope.recipients[0].lastReply), "450 4.1.1 Soft bounce: 550 5.1.1 No such user")
        self.assertEqual(str(envelope.recipients[1].lastReply), "454 4.6.0 Soft bounce: 554 5.6.0 Content refused")
        self.assertEqual(relay.reports(), [])
        self.assertEqual(envelope.nextAttempt, relay.reactor.seconds() + 300)
        deferred = [e for e in logged if e.get("log_format", "").startswith("Deferred")]
        self.assertEqual(len(deferred), 2)
        self.assertIn("Soft bounce", str(deferred[0]["reply"]))
        self.assertTrue(any("Soft bounce is on" in e.get("log_format", "") for e in logged))
        relay.accounted()

    def test_relaysOwnFailuresDeferred(self):
        """
        The relay's own permanent failures (a null MX, an address that
        does not parse) are deferred too; 2xx and 4xx are left alone.
        """
        relay = RelayHarness(self, softBounce=True)
        envelope = relay.enqueue([b"a@null.test", b"x@bad..example"])
        relay.turn()
        self.assertEqual([r.state for r in envelope.recipients], [WAITING, WAITING])
        self.assertTrue(str(envelope.recipients[0].lastReply).startswith("456 4.1.10 Soft bounce: 556 5.1.10"))
        self.assertTrue(str(envelope.recipients[1].lastReply).startswith("453 4.1.3 Soft bounce: 553 5.1.3"))
        self.assertEqual(relay.reports(), [])

    def test_expiryStillReturns(self):
        """
        A soft-bounced recipient still expires with the message's
        lifetime, and is then reported.
        """
        relay = RelayHarness(self, softBounce=True, schedule=RetrySchedule(300, 300, 600))
        envelope = relay.enqueue([b"bad@example.com"])
        for _ in range(5):
            relay.turn(max(envelope.nextAttempt - relay.reactor.seconds(), 0))
            made = relay.connections()
            if not made:
                break
            [(_, _, factory)] = made
            relay.serve(factory, Scripted(RCPT=b"550 5.1.1 No such user"))
        self.assertEqual(envelope.recipients[0].state, FAILED)
        self.assertTrue(envelope.recipients[0].expired)
        self.assertEqual(str(envelope.recipients[0].lastReply), "450 4.1.1 Soft bounce: 550 5.1.1 No such user")


class BadAddressTests(SynchronousTestCase):
    """
    A queued address that does not parse again (queued before its domain
    was checked, or a queue file edited by hand) fails its recipient
    alone, with a report, and never stops its neighbours.
    """

    def test_smartHostRecipientFails(self):
        """
        Through a smart host, a recipient whose address does not parse is
        not sent: it fails with 5.1.3 and is reported; the other
        recipient of the message and the next message on the same
        connection are delivered.
        """
        relay = RelayHarness(self, smartHost="smart.test:2525")
        first = relay.enqueue([b"postmaster@relay.test.", b"a@example.com"])
        second = relay.enqueue([b"b@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual([c for c in server.commands if c.startswith(b"RCPT")], [b"RCPT TO:<a@example.com>", b"RCPT TO:<b@example.com>"])
        self.assertEqual(len(server.messages), 2)
        self.assertEqual([r.state for r in first.recipients], [FAILED, "delivered"])
        self.assertNotIn(first.id, relay.queue.ids())
        self.assertNotIn(second.id, relay.queue.ids())
        [(bounce, report)] = relay.reports()
        [fields] = statusFields(report)
        self.assertEqual((fields["Final-Recipient"], fields["Status"]), ("rfc822;postmaster@relay.test.", "5.1.3"))
        self.assertEqual(relay.manager.stats["failed"], 1)
        self.assertEqual(relay.manager.stats["delivered"], 2)

    def test_byMXRecipientFails(self):
        """
        By MX records too, the address fails with 5.1.3 (its syntax), not
        as a domain that cannot be routed.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a b@example.com", b"ok@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual([c for c in server.commands if c.startswith(b"RCPT")], [b"RCPT TO:<ok@example.com>"])
        self.assertTrue(str(envelope.recipients[0].lastReply).startswith("553 5.1.3"), str(envelope.recipients[0].lastReply))
        [(_, report)] = relay.reports()
        self.assertEqual([f["Status"] for f in statusFields(report)], ["5.1.3"])

    def test_onlyBadRecipients(self):
        """
        A message with only unparseable recipients opens no connection;
        it is reported and gone.
        """
        relay = RelayHarness(self, smartHost="smart.test:2525")
        envelope = relay.enqueue([b"postmaster", b"x@bad..example", Recipient(b"y@example.com", notify=(b"NO SUCH",))])
        relay.turn()
        made = relay.connections()
        # The only connection is the report's.
        self.assertEqual(len(made), 1)
        self.assertNotIn(envelope.id, relay.queue.ids())
        [(_, report)] = relay.reports()
        self.assertEqual([f["Status"] for f in statusFields(report)], ["5.1.3"] * 3)

    def test_badSender(self):
        """
        A queued sender that does not parse fails every recipient with
        5.1.7; no report is queued, since it could not be sent back.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a@example.com"], sender=b"sender@origin.test.")
        relay.turn()
        self.assertEqual(relay.connections(), [])
        self.assertEqual(envelope.recipients[0].state, FAILED)
        self.assertTrue(str(envelope.recipients[0].lastReply).startswith("550 5.1.7"))
        self.assertEqual(relay.queue.ids(), [])
        self.assertEqual(relay.reports(), [])


class LimitTests(SynchronousTestCase):
    """
    Concurrency limits.
    """

    def test_maxConnections(self):
        """
        No more than C{maxConnections} connections at once; the next starts
        when one ends.
        """
        relay = RelayHarness(self, maxConnections=2)
        for domain in (b"example.com", b"other.test", b"origin.test"):
            relay.enqueue([b"a@" + domain])
        relay.turn()
        made = relay.connections()
        self.assertEqual(len(made), 2)
        relay.serve(made[0][2], Scripted())
        relay.turn()
        [third] = relay.connections()
        relay.serve(made[1][2], Scripted())
        relay.serve(third[2], Scripted())
        self.assertEqual(relay.queue.ids(), [])

    def test_perDestination(self):
        """
        No more than C{maxConnectionsPerDestination} to one domain.
        """
        relay = RelayHarness(self, maxConnections=10, maxMessagesPerConnection=1, maxConnectionsPerDestination=2)
        for i in range(5):
            relay.enqueue([b"a%d@example.com" % i])
        relay.enqueue([b"a@other.test"])
        relay.turn()
        made = relay.connections()
        self.assertEqual(sorted(h for h, _, _ in made), ["192.0.2.1", "192.0.2.1", "192.0.2.10"])
        served = 0
        while made:
            for _, _, factory in made:
                relay.serve(factory, Scripted())
                served += 1
            relay.turn()
            made = relay.connections()
            self.assertLessEqual(len(made), 2)
        self.assertEqual(served, 6)
        self.assertEqual(relay.queue.ids(), [])


class SmartHostTests(SynchronousTestCase):
    """
    Relaying through a smart host.
    """

    def test_everythingToSmartHost(self):
        """
        Every domain goes to the smart host, on its port, without DNS
        lookups; one connection for all.
        """
        relay = RelayHarness(self, smartHost="smart.test:2525")
        relay.enqueue([b"a@example.com", b"b@other.test"])
        relay.turn()
        host, port, factory = relay.connection()
        self.assertEqual((host, port), ("smart.test", 2525))
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(server.commands[2:4], [b"RCPT TO:<a@example.com>", b"RCPT TO:<b@other.test>"])
        self.assertEqual(relay.resolver.queries, [])
        self.assertEqual(relay.queue.ids(), [])

    def test_authenticates(self):
        """
        With credentials the relay authenticates to the smart host, and
        the message arrives as the user's.
        """
        relay = RelayHarness(self, smartHost=SmartHost("smart.test", 587, username="alice", password=PASSWORD, tls=TLSPolicy("none")))
        relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = authFactory(clock=relay.reactor, allowPlaintextAuth=True)
        relay.serve(factory, server.buildProtocol(None))
        [message] = server.realm.deliveries[b"alice"].messages
        self.assertEqual(message.data, MESSAGE)
        self.assertEqual(relay.queue.ids(), [])

    def test_authRefusedDeferred(self):
        """
        Credentials refused: deferred, nothing sent, not bounced.
        """
        relay = RelayHarness(self, smartHost=SmartHost("smart.test", 587, username="alice", password=b"wrong", tls=TLSPolicy("none")))
        envelope = relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = authFactory(clock=relay.reactor, allowPlaintextAuth=True)
        relay.serve(factory, server.buildProtocol(None))
        self.assertEqual(relay.queue.ids(), [envelope.id])
        self.assertIn("535", str(envelope.recipients[0].lastReply))
        self.assertEqual(relay.reports(), [])

    def test_authRefusedLogged(self):
        """
        Credentials refused by the smart host: one configuration error in
        the log, naming the host and the reply.
        """
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        relay = RelayHarness(self, smartHost=SmartHost("smart.test", 587, username="alice", password=b"wrong", tls=TLSPolicy("none")))
        relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = authFactory(clock=relay.reactor, allowPlaintextAuth=True)
        relay.serve(factory, server.buildProtocol(None))
        [error] = [e for e in logged if "Configuration error" in e.get("log_format", "")]
        self.assertEqual(error["host"], "smart.test")
        self.assertIn("535", error["reply"])

    def test_parse(self):
        """
        C{host}, C{host:port}, C{[IPv6]:port}; anything else is refused.
        """
        self.assertEqual((SmartHost.fromString("mail.test").host, SmartHost.fromString("mail.test").port), ("mail.test", 25))
        parsed = SmartHost.fromString("[::1]:2525")
        self.assertEqual((parsed.host, parsed.port), ("::1", 2525))
        for bad in ("", "mail.test:x", "::1:25", "[::1", "mail.test:0", "mail.test:70000"):
            self.assertRaises(ValueError, SmartHost.fromString, bad)


class TLSPolicyTests(SynchronousTestCase):
    """
    Outbound TLS policies.
    """

    def test_encryptRequiresTLS(self):
        """
        Policy C{encrypt} and a server without STARTTLS: nothing is sent,
        the message is deferred.
        """
        relay = RelayHarness(self, tlsPolicies={"example.com": TLSPolicy(ENCRYPT)})
        envelope = relay.enqueue([b"a@example.com"])
        relay.turn()
        for _ in range(2):
            _, _, factory = relay.connection()
            server = Scripted()
            relay.serve(factory, server)
            self.assertNotIn(b"MAIL", b" ".join(server.commands))
        self.assertEqual(relay.queue.ids(), [envelope.id])
        self.assertIn("TLS", str(envelope.recipients[0].lastReply))

    def test_maySendsPlain(self):
        """
        Policy C{may} and a server without STARTTLS: sent in the clear.
        """
        relay = RelayHarness(self, tls=TLSPolicy("may"))
        relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(len(server.messages), 1)

    def test_contexts(self):
        """
        C{none} gives no TLS options, C{verify} checks the host name,
        C{may} and C{encrypt} do not check.
        """
        self.assertIsNone(TLSPolicy("none").contextFor("mx.test"))
        self.assertEqual(TLSPolicy("verify").contextFor("mx.test")._hostnameASCII, "mx.test")
        self.assertFalse(TLSPolicy("may").contextFor("mx.test").verify)
        self.assertTrue(TLSPolicy("verify").required)
        self.assertFalse(TLSPolicy("may").required)
        self.assertRaises(ValueError, TLSPolicy, "sometimes")


class RestartTests(SynchronousTestCase):
    """
    A relay restarted over the same queue.
    """

    def test_inFlightRetriedAfterRestart(self):
        """
        A message in flight when the relay stopped is tried again by the
        next manager at once.
        """
        relay = RelayHarness(self)
        envelope = relay.enqueue([b"a@example.com"])
        relay.turn()
        relay.connection()
        relay.manager.stop()
        for queueID in relay.queue.ids():
            relay.queue.setWaiting(queueID)
        manager = SmartHostESMTPRelayingManager(
            relay.queue, 10, 10, reactor=relay.reactor, hostname="relay.test", tls=TLSPolicy("none"), mxcalc=MXCalculator(relay.resolver, clock=relay.reactor)
        )
        manager.start()
        self.addCleanup(manager.stop)
        relay.turn()
        _, _, factory = relay.connection()
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(len(server.messages), 1)
        self.assertNotIn(envelope.id, relay.queue.ids())

    def test_checkStateWithoutStart(self):
        """
        twisted.mail's way: no L{start}, L{checkState} called now and
        then, returning a L{Deferred} for the connections it opened.
        """
        relay = RelayHarness(self, start=False)
        relay.enqueue([b"a@example.com"])
        d = relay.manager.checkState()
        self.assertIsNotNone(d)
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted())
        self.successResultOf(d)
        self.assertEqual(relay.queue.ids(), [])
        self.assertIsNone(relay.manager.checkState())

    def test_relayStateHelper(self):
        """
        L{RelayStateHelper} is a timer service calling C{checkState}.
        """
        relay = RelayHarness(self, start=False)
        helper = RelayStateHelper(relay.manager, 60)
        self.assertEqual(helper.step, 60)
        self.assertEqual(helper.call[0].__name__, "_checkState")


class RelayerTests(SynchronousTestCase):
    """
    The relayers on their own, as twisted.mail's are used.
    """

    def queueFile(self, recipients, sender=SENDER):
        queue = Queue(self.mktemp(), runInThread=lambda f, *a: __import__("twisted.internet.defer").internet.defer.succeed(f(*a)))
        envelope = Envelope(newMessageID(), sender, [Recipient(r) for r in recipients], received=1.0)
        spool = queue.newMessage(envelope)
        spool.write(MESSAGE)
        self.successResultOf(spool.commit())
        return queue, queue.getPath(envelope.id)

    def test_relayerFromPaths(self):
        """
        L{SMTPRelayer} reads queue files: their sender, waiting recipients
        and message; a message every recipient accepted is removed.
        """
        queue, path = self.queueFile([b"a@example.com"])
        relayer = SMTPRelayer([path], "relay.test")
        self.assertEqual(bytes(relayer.getMailFrom().address), SENDER)
        self.assertEqual([bytes(r.address) for r in relayer.getMailTo()], [b"a@example.com"])
        self.assertEqual(relayer.getMailData().read(), MESSAGE)
        relayer.sentMail(250, b"2.0.0 Ok", 1, [(relayer.getMailTo()[0], 250, b"2.1.5 Ok")], None)
        self.assertFalse(os.path.exists(path))
        self.assertIsNone(relayer.getMailFrom())

    def test_relayerSkipsBadAddresses(self):
        """
        An unmanaged relayer leaves out a recipient whose address does not
        parse again, rather than failing the whole session.
        """
        queue, path = self.queueFile([b"postmaster@relay.test.", b"a@example.com"])
        relayer = SMTPRelayer([path], "relay.test")
        self.assertEqual([bytes(r.address) for r in relayer.getMailTo()], [b"a@example.com"])

    def test_relayerKeepsRefused(self):
        """
        A message not accepted by everyone stays in the spool.
        """
        queue, path = self.queueFile([b"a@example.com"])
        relayer = ESMTPRelayer([path], None, None, "relay.test")
        to = relayer.getMailTo()
        relayer.sentMail(550, b"5.1.1 No", 0, [(to[0], 550, b"5.1.1 No")], None)
        self.assertTrue(os.path.exists(path))

    def test_managedRelayerOldManager(self):
        """
        A twisted.mail-style attempt manager (no C{notifySent}) hears
        C{notifySuccess}/C{notifyFailure} with each message's name, and
        C{notifyDone} when the connection is lost.
        """
        calls = []

        class OldManager:
            def notifySuccess(self, factory, message):
                calls.append(("success", message))

            def notifyFailure(self, factory, message):
                calls.append(("failure", message))

            def notifyDone(self, factory):
                calls.append(("done",))

        _, first = self.queueFile([b"a@example.com"])
        _, second = self.queueFile([b"b@example.com"])
        manager = OldManager()
        factory = ESMTPManagedRelayerFactory([first, second], manager, None, None, "relay.test")
        relayer = factory.buildProtocol(None)
        self.assertIsInstance(relayer, ESMTPManagedRelayer)
        self.assertIs(relayer.factory, factory)
        relayer.sentMail(250, b"Ok", 1, [], None)
        relayer.sentMail(550, b"No", 0, [], None)
        relayer.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(calls, [("success", first), ("failure", second), ("done",)])

    def test_smtpManagerFactory(self):
        """
        L{SmartHostSMTPRelayingManager} uses plain SMTP relayers (HELO).
        """
        relay = RelayHarness(self, managerClass=SmartHostSMTPRelayingManager)
        relay.enqueue([b"a@example.com"])
        relay.turn()
        _, _, factory = relay.connection()
        self.assertIsInstance(factory, SMTPManagedRelayerFactory)
        server = Scripted()
        relay.serve(factory, server)
        self.assertEqual(server.commands[0], b"HELO relay.test")
        self.assertEqual(relay.queue.ids(), [])
        self.assertEqual(SMARTHOST, "[smarthost]")
