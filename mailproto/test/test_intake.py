# -*- test-case-name: mailproto.test.test_intake -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The server against the clients that arrive at a real SMTP port: pipelining
MTAs (replies in one write, no Nagle), clients that never read (input
stops, memory stays bounded), trickling clients (deadlines), clients that
send junk, talk before the greeting or guess passwords from many
connections at once.

In memory with a fake clock (L{InputValve} and L{RequestDeadline} over
their states, the server's limits), then over real loopback sockets.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mailproto._intake import InputValve, RequestDeadline, setNoDelay
from mailproto.smtp import ESMTP, AuthFailures, ESMTPFactory, LMTPFactory
from mailproto.testing import MemoryDelivery
from mailproto.test._peers import need
from mailproto.test.test_daemon import SinkProcess
from mailproto.test.test_server import TRANSACTION, Session, esmtpSession
from mailproto.test.test_server_auth import (
    WRONG,
    Connection,
    DeliveryRealm,
    ImplicitTLSTransport,
    plain,
    replyCodes,
)

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n.\r\n"


class WriteCountingTransport(StringTransport):
    """
    A transport that counts its writes.
    """

    def __init__(self, *args, **kw) -> None:
        StringTransport.__init__(self, *args, **kw)
        self.writes: list[bytes] = []
        self.noDelay = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        StringTransport.write(self, data)

    def setTcpNoDelay(self, enabled) -> None:
        self.noDelay = enabled


class LimitRecorder:
    """
    Records what C{limitExceeded} is called with, on a server class made
    for a test.
    """

    def __init__(self, base=ESMTP) -> None:
        self.limits: list[str] = []
        recorder = self

        class Recording(base):
            def limitExceeded(self, limit: str) -> None:
                recorder.limits.append(limit)

        self.protocol = Recording


def recordingSession(**limits) -> tuple[Session, LimitRecorder]:
    recorder = LimitRecorder()
    factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", **limits)
    factory.protocol = recorder.protocol
    session = Session(factory)
    return session, recorder


class FakePort:
    """
    A transport's pause and resume, recorded.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


class InputValveTests(SynchronousTestCase):
    """
    L{InputValve} over its states (reading, paused) and events (hold,
    release, the transport's pause and resume).
    """

    def setUp(self) -> None:
        self.port = FakePort()
        self.resumed = []
        self.valve = InputValve(self.port, lambda: self.resumed.append(True))

    def test_holdPausesOnce(self):
        """
        The first reason pauses the transport; more reasons, or the same
        one again, do not pause it again.
        """
        self.valve.hold("batch")
        self.valve.hold("batch")
        self.valve.hold("backlog")
        self.assertEqual(self.port.calls, ["pause"])
        self.assertTrue(self.valve.paused)

    def test_releaseLastResumes(self):
        """
        Only the release of the last reason resumes the transport and
        calls back; releasing a reason not held does nothing.
        """
        self.valve.release("batch")
        self.assertEqual((self.port.calls, self.resumed), ([], []))
        self.valve.hold("batch")
        self.valve.hold("backlog")
        self.valve.release("batch")
        self.assertEqual((self.port.calls, self.resumed), (["pause"], []))
        self.valve.release("backlog")
        self.assertEqual((self.port.calls, self.resumed), (["pause", "resume"], [True]))
        self.assertFalse(self.valve.paused)

    def test_outputFullStopsHandlingNotReading(self):
        """
        A full write buffer stops the handling of input but does not pause
        the transport (a TLS handshake must go on reading); when it
        drains, the server is called back.
        """
        self.valve.pauseProducing()
        self.assertTrue(self.valve.paused)
        self.assertEqual(self.port.calls, [])
        self.valve.resumeProducing()
        self.assertFalse(self.valve.paused)
        self.assertEqual(self.resumed, [True])
        self.valve.resumeProducing()
        self.assertEqual(self.resumed, [True])

    def test_outputDrainsWithBacklog(self):
        """
        With a backlog held, the output draining releases it: the
        transport resumes, once.
        """
        self.valve.pauseProducing()
        self.valve.hold("backlog")
        self.valve.resumeProducing()
        self.assertEqual(self.port.calls, ["pause", "resume"])
        self.assertEqual(self.resumed, [True])

    def test_outputDrainsWhileBatchHeld(self):
        """
        The output draining while another reason holds does not call the
        server back; the release of that reason does.
        """
        self.valve.hold("batch")
        self.valve.pauseProducing()
        self.valve.resumeProducing()
        self.assertEqual(self.resumed, [])
        self.valve.release("batch")
        self.assertEqual(self.resumed, [True])

    def test_stop(self):
        """
        C{stopProducing} forgets every reason.
        """
        self.valve.hold("batch")
        self.valve.pauseProducing()
        self.valve.stopProducing()
        self.assertFalse(self.valve.paused)


class RequestDeadlineTests(SynchronousTestCase):
    """
    L{RequestDeadline} over its states (idle, line, data) and events.
    """

    def setUp(self) -> None:
        self.deadline = RequestDeadline()

    def test_idle(self):
        """
        Idle, nothing has passed, whatever the time.
        """
        self.assertIsNone(self.deadline.kind)
        self.assertFalse(self.deadline.passed(10**9))

    def test_lineDeadlineFromFirstCall(self):
        """
        The deadline of a line runs from the first call; later calls do
        not move it, unless they restart it for a new line.
        """
        self.deadline.line(10, now=0)
        self.deadline.line(10, now=6)
        self.assertFalse(self.deadline.passed(9.9))
        self.assertTrue(self.deadline.passed(10))
        self.deadline.line(10, now=9.9, restart=True)
        self.assertEqual(self.deadline.kind, "line")
        self.assertFalse(self.deadline.passed(19.8))
        self.assertTrue(self.deadline.passed(19.9))

    def test_clear(self):
        """
        Cleared, nothing passes.
        """
        self.deadline.line(10, now=0)
        self.deadline.clear()
        self.assertFalse(self.deadline.passed(20))
        self.assertIsNone(self.deadline.kind)

    def test_zeroMeansNone(self):
        """
        A deadline of 0 seconds is no deadline.
        """
        self.deadline.line(0, now=0)
        self.assertIsNone(self.deadline.kind)
        self.deadline.data(0, now=0)
        self.assertIsNone(self.deadline.kind)
        self.assertFalse(self.deadline.passed(10**9))

    def test_dataEarnsTime(self):
        """
        Data moves the deadline on by octets / rate, up to the cap from
        now.
        """
        self.deadline.data(10, now=0)
        self.deadline.earn(1000, rate=500, cap=10, now=5)  # due at 10 + 2 = 12
        self.assertFalse(self.deadline.passed(11.9))
        self.assertTrue(self.deadline.passed(12))

    def test_dataCapped(self):
        """
        However much arrives, the deadline is never further than the cap
        from now.
        """
        self.deadline.data(10, now=0)
        self.deadline.earn(10**9, rate=500, cap=10, now=0)
        self.assertTrue(self.deadline.passed(10))

    def test_noRate(self):
        """
        Without a minimum rate, any data puts the deadline the cap from
        now.
        """
        self.deadline.data(10, now=0)
        self.deadline.earn(1, rate=0, cap=10, now=8)
        self.assertFalse(self.deadline.passed(17.9))
        self.assertTrue(self.deadline.passed(18))

    def test_dataStartsOnce(self):
        """
        While reading data, a second call to start it changes nothing;
        earning outside data does nothing.
        """
        self.deadline.earn(1000, rate=1, cap=100, now=0)
        self.assertIsNone(self.deadline.kind)
        self.deadline.data(10, now=0)
        self.deadline.data(10, now=9)
        self.assertTrue(self.deadline.passed(10))

    def test_lineThenData(self):
        """
        Switching from a line to data restarts the deadline.
        """
        self.deadline.line(5, now=0)
        self.deadline.data(5, now=4)
        self.assertEqual(self.deadline.kind, "data")
        self.assertFalse(self.deadline.passed(8.9))
        self.assertTrue(self.deadline.passed(9))


class NoDelayTests(SynchronousTestCase):
    """
    L{setNoDelay} and the server's use of it.
    """

    def test_server(self):
        """
        The server turns off Nagle's algorithm on its connection.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock())
        session = Session(factory, transportClass=WriteCountingTransport)
        self.assertIs(session.transport.noDelay, True)

    def test_notTCP(self):
        """
        Transports without TCP options (in memory, UNIX sockets) are left
        alone.
        """
        setNoDelay(StringTransport())

        class Unix(StringTransport):
            def setTcpNoDelay(self, enabled):
                raise OSError(95, "Operation not supported")

        setNoDelay(Unix())


class CoalescingTests(SynchronousTestCase):
    """
    The replies to one read go out in one write.
    """

    def session(self, factoryClass=ESMTPFactory, greeting=b"EHLO client.example\r\n") -> Session:
        factory = factoryClass(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock())
        session = Session(factory, transportClass=WriteCountingTransport)
        session.send(greeting)
        session.transport.writes.clear()
        return session

    def test_pipelinedTransaction(self):
        """
        MAIL, RCPT and DATA in one read (as every pipelining MTA sends
        them): three replies, one write.
        """
        session = self.session()
        self.assertEqual(session.codes(TRANSACTION), [b"250 2.1.0", b"250 2.1.5", b"354"])
        self.assertEqual(len(session.transport.writes), 1)

    def test_messageAndNext(self):
        """
        The end of a message and the next transaction in one read: four
        replies, one write.
        """
        session = self.session()
        session.send(TRANSACTION)
        session.transport.writes.clear()
        codes = session.codes(MESSAGE + TRANSACTION)
        self.assertEqual(codes, [b"250 2.0.0", b"250 2.1.0", b"250 2.1.5", b"354"])
        self.assertEqual(len(session.transport.writes), 1)

    def test_lmtpRepliesTogether(self):
        """
        LMTP's replies, one per recipient, go out in one write.
        """
        session = self.session(LMTPFactory, b"LHLO client.example\r\n")
        session.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
        session.transport.writes.clear()
        self.assertEqual(session.codes(MESSAGE), [b"250 2.1.5", b"250 2.1.5"])
        self.assertEqual(len(session.transport.writes), 1)

    def test_oneCommandOneWrite(self):
        """
        A command alone is answered in its own write, at once.
        """
        session = self.session()
        self.assertEqual(session.codes(b"NOOP\r\n"), [b"250 2.0.0"])
        self.assertEqual(len(session.transport.writes), 1)

    def test_hugeBatchBounded(self):
        """
        A thousand pipelined commands: their replies go out a batch at a
        time, not all at the end.
        """
        session = self.session()
        session.proto.maxJunkCommands = 0
        first = session.send(b"NOOP\r\n" * 1000)
        session.clock.advance(0)
        self.assertEqual(len(first + session.take()), 1000)
        self.assertEqual([w.count(b"\r\n") for w in session.transport.writes], [100] * 10)


class SubclassHandlerTests(SynchronousTestCase):
    """
    A command handler of a subclass (as written for twisted.mail) that
    replies, then closes the transport or starts TLS itself: its reply
    and the ones before it go out first.
    """

    def test_replyThenClose(self):
        class Closing(ESMTP):
            def do_BYE(self, rest):
                self.sendCode(221, b"Bye")
                self.transport.loseConnection()

        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=Clock())
        factory.protocol = Closing
        session = Session(factory)
        written = []

        def loseConnection():
            written.append(session.transport.value())
            StringTransport.loseConnection(session.transport)

        session.transport.loseConnection = loseConnection
        session.send(b"EHLO client.example\r\nNOOP\r\nBYE\r\n")
        self.assertEqual(replyCodes(written[0].split(b"\r\n")[:-1])[-2:], [b"250 2.0.0", b"221 2.0.0"])


class BackpressureTests(SynchronousTestCase):
    """
    A client that does not read its replies: the server stops handling
    its input, and then reading it.
    """

    def test_outputFullStopsReplies(self):
        """
        While the transport's buffer is full, input is not handled (no
        replies are made); when it drains, it is.
        """
        session = esmtpSession()
        session.transport.producer.pauseProducing()
        self.assertEqual(session.send(b"NOOP\r\nNOOP\r\n"), [])
        self.assertEqual(session.transport.producerState, "producing")
        session.transport.producer.resumeProducing()
        self.assertEqual(replyCodes(session.take()), [b"250 2.0.0", b"250 2.0.0"])

    def test_backlogPausesReading(self):
        """
        When the unhandled input grows past 64 KiB with the output full,
        the transport is paused; it resumes when the output drains.
        """
        session = esmtpSession()
        session.proto.maxJunkCommands = 0
        session.transport.producer.pauseProducing()
        session.send(b"NOOP\r\n" * 5000)
        self.assertEqual(session.transport.producerState, "producing")
        session.send(b"NOOP\r\n" * 10000)
        self.assertEqual(session.transport.producerState, "paused")
        session.transport.producer.resumeProducing()
        session.clock.advance(0)
        self.assertEqual(session.transport.producerState, "producing")
        self.assertEqual(len(session.take()), 15000)

    def test_batches(self):
        """
        Pipelined commands are handled a hundred at a time, the reactor
        running in between.
        """
        session = esmtpSession()
        session.proto.maxJunkCommands = 0
        self.assertEqual(len(session.send(b"NOOP\r\n" * 250)), 100)
        self.assertEqual(session.transport.producerState, "paused")
        self.assertEqual([call.func for call in session.clock.getDelayedCalls() if call.getTime() == 0], [session.proto._endBatch])
        session.clock.advance(0)
        self.assertEqual(len(session.take()), 150)
        self.assertEqual(session.transport.producerState, "producing")


class DeadlineTests(SynchronousTestCase):
    """
    A command line, a SASL response and message data must arrive in time,
    however the client spreads them out.
    """

    def trickle(self, session, data: bytes, interval: float) -> list[bytes]:
        """
        Send C{data} one octet every C{interval} seconds.

        @return: the replies, when the connection closes or the data ends.
        """
        replies = []
        for i in range(len(data)):
            if session.transport.disconnecting:
                break
            replies += session.send(data[i : i + 1])
            session.clock.advance(interval)
            replies += session.take()
        return replies

    def test_trickledCommand(self):
        """
        One octet a second restarts the idle timeout every time, but the
        line must be complete C{commandDeadline} seconds after its first
        octet: C{421 4.4.2}, and the connection closes.
        """
        session, recorder = recordingSession(commandDeadline=30, timeout=600)
        session.send(b"EHLO client.example\r\n")
        with capturedLogs() as events:
            replies = self.trickle(session, b"MAIL FROM:<" + b"a" * 100 + b"@example.org>\r\n", 1)
        self.assertEqual(replyCodes(replies), [b"421 4.4.2"])
        self.assertTrue(session.transport.disconnecting)
        self.assertEqual(recorder.limits, ["command-deadline"])
        # Cut off at the first octet after the deadline.
        self.assertEqual(session.clock.seconds(), 31)
        self.assertEqual(len([e for e in events if "too slowly" in e["log_format"] or "over" in e["log_format"]]), 1)

    def test_linesInTime(self):
        """
        Lines that each arrive within the deadline keep the connection,
        however long the session.
        """
        session, recorder = recordingSession(commandDeadline=30)
        session.send(b"EHLO client.example\r\n")
        for _ in range(10):
            self.assertEqual(replyCodes(self.trickle(session, b"RSET\r\n", 5)), [b"250 2.0.0"])
        self.assertFalse(session.transport.disconnecting)
        # Between lines, only the idle timeout runs.
        self.assertIsNone(session.proto._deadline.kind)

    def test_trickledSASLResponse(self):
        """
        A SASL response is a line like any other.
        """
        factory = ESMTPFactory(
            Portal(DeliveryRealm(), [RecordingChecker()]), domain=b"mx.example", clock=Clock(), commandDeadline=20
        )
        conn = Connection(factory, ImplicitTLSTransport)
        conn.ehlo()
        self.assertEqual(replyCodes(conn.send(b"AUTH LOGIN\r\n")), [b"334"])
        replies = self.trickle(conn, b"YWxpY2U=" * 10 + b"\r\n", 3)
        self.assertEqual(replyCodes(replies), [b"421 4.4.2"])

    def test_slowData(self):
        """
        Message data slower than C{minDataRate} on average is cut off
        once it runs out of time: 100 octets a second against 500.
        """
        session, recorder = recordingSession(commandDeadline=60, minDataRate=500)
        session.send(b"EHLO client.example\r\n" + TRANSACTION)
        sent, replies = 0, []
        while not session.transport.disconnecting and sent < 100000:
            replies += session.send(b"x" * 99 + b"\n")
            sent += 100
            session.clock.advance(1)
        self.assertEqual(recorder.limits, ["data-rate"])
        self.assertEqual(replyCodes(replies), [b"421 4.4.2"])
        # 60 seconds in hand, losing 0.8 s each second: 75 seconds.
        self.assertTrue(74 <= session.clock.seconds() <= 76, session.clock.seconds())

    def test_fastEnoughData(self):
        """
        Data at the minimum rate goes on for as long as the message lasts.
        """
        session, recorder = recordingSession(commandDeadline=60, minDataRate=500)
        session.send(b"EHLO client.example\r\n" + TRANSACTION)
        for _ in range(600):
            session.send(b"x" * 599 + b"\n")
            session.clock.advance(1)
        self.assertEqual(replyCodes(session.send(b"\r\n.\r\n")), [b"250 2.0.0"])
        self.assertEqual(recorder.limits, [])

    def test_waitingForTheServer(self):
        """
        While the server is working out its answer, the client is not
        timed (the deadline is the client's, not the server's).
        """
        pending = defer.Deferred()
        delivery = MemoryDelivery()
        delivery.validateFrom = lambda helo, origin: pending.addCallback(lambda _: origin)
        session = esmtpSession(delivery, commandDeadline=10)
        session.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@exa")
        session.clock.advance(100)
        self.assertFalse(session.transport.disconnecting)
        pending.callback(None)
        session.clock.advance(9.9)
        session.send(b"m")
        self.assertFalse(session.transport.disconnecting)
        session.clock.advance(0.1)
        self.assertEqual(replyCodes(session.send(b"p")), [b"421 4.4.2"])
        self.assertTrue(session.transport.disconnecting)

    def test_silentClientIdleTimeout(self):
        """
        A client that stops in the middle of a line is left to the idle
        timeout.
        """
        session, recorder = recordingSession(commandDeadline=10, timeout=100)
        session.send(b"EHLO client.example\r\nMAIL FROM:<a@exa")
        session.clock.advance(99.9)
        self.assertFalse(session.transport.disconnecting)
        session.clock.advance(0.1)
        self.assertEqual(recorder.limits, ["idle-timeout"])


class JunkTests(SynchronousTestCase):
    """
    Commands that carry no mail are limited per message sent.
    """

    def test_limit(self):
        """
        C{maxJunkCommands} are answered; the next gets C{421 4.7.0} and the
        connection closes.
        """
        session, recorder = recordingSession(maxJunkCommands=5)
        session.send(b"EHLO client.example\r\n")
        codes = replyCodes(session.send(b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nFOO\r\nNOOP\r\nNOOP\r\n"))
        self.assertEqual(codes, [b"250 2.0.0", b"250 2.0.0", b"252 2.0.0", b"214 2.0.0", b"500 5.5.2", b"421 4.7.0"])
        self.assertTrue(session.transport.disconnecting)
        self.assertEqual(recorder.limits, ["junk-commands"])

    def test_resetByMail(self):
        """
        Each message accepted starts the count again.
        """
        session, recorder = recordingSession(maxJunkCommands=3)
        session.send(b"EHLO client.example\r\n")
        for _ in range(5):
            codes = replyCodes(session.send(b"NOOP\r\nNOOP\r\nRSET\r\n" + TRANSACTION + MESSAGE))
            self.assertEqual(codes[-1], b"250 2.0.0")
        self.assertEqual(recorder.limits, [])

    def test_off(self):
        """
        C{maxJunkCommands = 0}: no limit.
        """
        session, recorder = recordingSession(maxJunkCommands=0)
        session.send(b"NOOP\r\n" * 500)
        for _ in range(10):
            session.clock.advance(0)
        self.assertFalse(session.transport.disconnecting)

    def test_helpCheap(self):
        """
        HELP's text is worked out once per server class.
        """
        session = esmtpSession()
        first = session.send(b"HELP\r\n")
        self.assertIn(b"EHLO", first[0])
        self.assertEqual(session.send(b"HELP\r\n"), first)


class EarlyTalkerTests(SynchronousTestCase):
    """
    With a greeting delay, a client that talks first is refused.
    """

    def test_earlyTalker(self):
        """
        Anything before the greeting: C{554 5.5.1}, closed, no greeting.
        """
        recorder = LimitRecorder()
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", greetingDelay=6, clock=Clock())
        factory.protocol = recorder.protocol
        session = Session(factory)
        self.assertEqual(session.greeting, [])
        session.clock.advance(2)
        # No EHLO yet, so no enhanced status code.
        self.assertEqual(replyCodes(session.send(b"EHLO spam.example\r\n")), [b"554"])
        self.assertTrue(session.transport.disconnecting)
        self.assertEqual(recorder.limits, ["early-talker"])
        session.clock.advance(10)
        self.assertEqual(session.take(), [])
        self.assertEqual([c for c in session.clock.getDelayedCalls() if c.active() and "Timeout" not in repr(c.func)], [])

    def test_patientClient(self):
        """
        A client that waits is greeted after the delay and served.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", greetingDelay=6, clock=Clock())
        session = Session(factory)
        session.clock.advance(5.9)
        self.assertEqual(session.take(), [])
        session.clock.advance(0.1)
        self.assertEqual(replyCodes(session.take()), [b"220"])
        self.assertEqual(replyCodes(session.send(b"EHLO client.example\r\n"))[-1], b"250")

    def test_closedBeforeGreeting(self):
        """
        A client that leaves before the greeting leaves no call behind.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", greetingDelay=6, clock=Clock())
        session = Session(factory)
        session.proto.connectionLost(None)
        self.assertEqual([c for c in session.clock.getDelayedCalls() if c.active()], [])


@implementer(ICredentialsChecker)
class RecordingChecker:
    """
    A checker as slow as a real password hash: each check waits until the
    test fires it.  It knows no one.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.checks: list[defer.Deferred] = []

    def requestAvatarId(self, creds):
        d = defer.Deferred()
        self.checks.append(d)
        return d


class ConcurrentAuthTests(SynchronousTestCase):
    """
    Password guesses from many connections at once, on several listeners.
    """

    def test_attemptsCountWhenTheyStart(self):
        """
        100 connections from one address, each trying one wrong password
        while the checks are slow, over two factories sharing their
        L{AuthFailures}: at most the limit of passwords are checked; the
        others are refused with C{421 4.7.0} before any check.
        """
        clock = Clock()
        checker = RecordingChecker()
        shared = AuthFailures(limit=10, clock=clock)
        factories = [
            ESMTPFactory(Portal(DeliveryRealm(), [checker]), domain=b"mx.example", clock=clock, authFailures=shared)
            for _ in range(2)
        ]
        connections = []
        refused = 0
        for i in range(100):
            conn = Connection(factories[i % 2], ImplicitTLSTransport)
            conn.ehlo()
            codes = replyCodes(conn.send(b"AUTH PLAIN " + plain(password=WRONG) + b"\r\n"))
            refused += codes == [b"421 4.7.0"]
            connections.append(conn)
        self.assertEqual(len(checker.checks), 10)
        self.assertEqual(refused, 90)
        for d in checker.checks:
            d.errback(UnauthorizedLogin())
        clock.advance(60)
        self.assertTrue(shared.blocked(b"192.0.2.5") or shared.blocked(connections[0].proto._helo[1]))

    def test_successForgiven(self):
        """
        A successful login does not count against the address.
        """
        clock = Clock()
        shared = AuthFailures(limit=2, clock=clock)
        checker = RecordingChecker()
        factory = ESMTPFactory(Portal(DeliveryRealm(), [checker]), domain=b"mx.example", clock=clock, authFailures=shared)
        for _ in range(5):
            conn = Connection(factory, ImplicitTLSTransport)
            conn.ehlo()
            conn.send(b"AUTH PLAIN " + plain() + b"\r\n")
            checker.checks[-1].callback(b"alice")
            self.assertEqual(replyCodes(conn.take()), [b"235 2.7.0"])
        self.assertFalse(shared.blocked(conn.proto._helo[1]))


# -- over real loopback sockets ----------------------------------------------


def _rss(pid: int) -> int:
    """
    @return: the resident set size of process C{pid}, in octets.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class _Collector(protocol.Protocol):
    """
    A client that records what it receives and when it is closed.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.received)


class LoopbackTests(TestCase):
    """
    The server on a real socket on 127.0.0.1.
    """

    timeout = 60

    def listen(self, **limits) -> int:
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", **limits)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.factory = factory
        return port.getHost().port

    @defer.inlineCallbacks
    def connect(self, number: int):
        client = _Collector()
        endpoint = protocol.ClientCreator(reactor, lambda: client)
        connected = yield endpoint.connectTCP("127.0.0.1", number)
        self.addCleanup(lambda: connected.transport.abortConnection())
        return client

    @defer.inlineCallbacks
    def test_noDelayOnSocket(self):
        """
        The accepted socket has TCP_NODELAY set.
        """
        number = self.listen()
        sessions = []
        buildProtocol = self.factory.buildProtocol

        def build(addr):
            p = buildProtocol(addr)
            sessions.append(p)
            return p

        self.factory.buildProtocol = build
        client = yield self.connect(number)
        while not client.received:
            yield deferLater(reactor, 0.01, lambda: None)
        handle = sessions[0].transport.getHandle()
        self.assertNotEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)

    def socketOf(self, transport):
        """
        @return: the socket under C{transport}, through TLS and PROXY
            protocol wrappers.
        """
        while not isinstance(getattr(transport, "socket", None), socket.socket):
            transport = transport.transport
        return transport.socket

    @defer.inlineCallbacks
    def wrappedSession(self, wrap, connect):
        """
        Listen with the factory wrapped by C{wrap}, connect with
        C{connect(port number)}, and return the server protocol once it
        has greeted.
        """
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example")
        sessions = []
        buildProtocol = factory.buildProtocol

        def build(addr):
            p = buildProtocol(addr)
            sessions.append(p)
            return p

        factory.buildProtocol = build
        port = reactor.listenTCP(0, wrap(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        yield connect(port.getHost().port)
        while not sessions or sessions[0]._greeting is not None or sessions[0]._helo is None:
            yield deferLater(reactor, 0.01, lambda: None)
        return sessions[0]

    @defer.inlineCallbacks
    def test_noDelayThroughTLS(self):
        """
        Over implicit TLS (the server behind L{TLSMemoryBIOFactory}), the
        socket under the TLS layer has TCP_NODELAY set.
        """
        trustme = _trustme()
        from twisted.internet.ssl import PrivateCertificate
        from twisted.protocols.tls import TLSMemoryBIOFactory

        leaf = trustme.CA().issue_cert("localhost")
        options = PrivateCertificate.loadPEM(leaf.private_key_and_cert_chain_pem.bytes()).options()
        received = []

        def connect(number):
            s = socket.create_connection(("127.0.0.1", number))
            self.addCleanup(s.close)
            received.append(s)
            return defer.succeed(None)

        session = yield self.wrappedSession(lambda f: TLSMemoryBIOFactory(options, False, f), connect)
        handle = self.socketOf(session.transport)
        self.assertNotEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)

    @defer.inlineCallbacks
    def test_noDelayBehindProxyProtocol(self):
        """
        Behind the PROXY protocol wrapper too.
        """
        from mailproto._relayd._proxy import ProxyProtocolFactory

        def connect(number):
            s = socket.create_connection(("127.0.0.1", number))
            self.addCleanup(s.close)
            s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
            return defer.succeed(None)

        session = yield self.wrappedSession(ProxyProtocolFactory, connect)
        handle = self.socketOf(session.transport)
        self.assertNotEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)

    @defer.inlineCallbacks
    def test_pipelinedWithoutStall(self):
        """
        200 messages in the dialogue of a pipelining MTA (MAIL, RCPT and
        DATA in one write, then the message and its dot in one write), on
        one connection: well under the 8 s that a 40 ms stall per message
        would cost.
        """
        number = self.listen()
        client = _PipeliningClient(200)
        connected = yield protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", number)
        self.addCleanup(lambda: connected.transport.abortConnection())
        started = time.monotonic()
        sent = yield client.done
        self.assertEqual(sent, 200)
        self.assertLess(time.monotonic() - started, 4.0)
        self.assertEqual(len(self.factory.delivery.messages), 200)

    @defer.inlineCallbacks
    def test_trickleCutOff(self):
        """
        A client sending one octet of a command every 0.2 s is cut off
        within the deadline (1 s), with C{421 4.4.2}.
        """
        number = self.listen(commandDeadline=1.0)
        client = yield self.connect(number)
        started = time.monotonic()
        line = b"MAIL FROM:<" + b"a" * 200 + b"@example.org>\r\n"
        for octet in line:
            if client.closed.called:
                break
            client.transport.write(bytes([octet]))
            yield deferLater(reactor, 0.2, lambda: None)
        received = yield client.closed
        elapsed = time.monotonic() - started
        self.assertIn(b"\r\n421 mx.example Error: timeout exceeded\r\n", received)
        self.assertLess(elapsed, 5)

    @defer.inlineCallbacks
    def test_earlyTalkerRefused(self):
        """
        With a greeting delay, a client that sends EHLO at once gets a
        5xx and is closed, without a greeting.
        """
        number = self.listen(greetingDelay=2.0)
        client = yield self.connect(number)
        client.transport.write(b"EHLO spam.example\r\n")
        received = yield client.closed
        self.assertTrue(received.startswith(b"554 "), received)


def _trustme():
    try:
        import trustme
    except ImportError:
        trustme = None
    need(trustme, "trustme")
    return trustme


class _PipeliningClient(protocol.Protocol):
    """
    Sends C{count} messages as a pipelining MTA does, and counts the
    C{250} replies to their ends of data.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0
        self.buffer = b""
        self.step = "greeting"
        self.done = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] == b"-":
                continue
            self.replied(line)

    def replied(self, line: bytes) -> None:
        if self.step == "greeting":
            self.transport.write(b"EHLO client.example\r\n")
            self.step = "ehlo"
        elif self.step in ("ehlo", "message"):
            if self.step == "message":
                if not line.startswith(b"250 "):
                    self.done.errback(AssertionError(line))
                    return
                self.sent += 1
            if self.sent == self.count:
                self.done.callback(self.sent)
                return
            self.transport.write(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            self.step, self.replies = "envelope", []
        elif self.step == "envelope":
            self.replies.append(line[:3])
            if len(self.replies) == 3:
                if self.replies != [b"250", b"250", b"354"]:
                    self.done.errback(AssertionError(self.replies))
                    return
                self.transport.write(b"Subject: x\r\n\r\n" + (b"y" * 70 + b"\r\n") * 57 + b".\r\n")
                self.step = "message"


_NON_READER = r"""
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setblocking(False)
chunk = b"EHLO x\r\n" * 8192
sent = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        sent += s.send(chunk)
    except BlockingIOError:
        time.sleep(0.01)
print(sent)
"""


class NonReadingClientTests(TestCase):
    """
    A client that pipelines EHLO for 15 seconds and reads nothing, against
    C{mailproto sink} in its own process.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_memoryBounded(self):
        """
        The server's resident memory grows by less than 64 MiB, and the
        client could only send a bounded amount (the server stopped
        reading).
        """
        sink = yield SinkProcess.start(self, self.mktemp())
        before = _rss(sink.process.pid)
        out = yield _runPython(_NON_READER, str(sink.port), "15")
        after = _rss(sink.process.pid)
        sent = int(out.split()[-1])
        self.assertLess(after - before, 64 * 1024 * 1024, (before, after))
        self.assertLess(sent, 64 * 1024 * 1024, sent)


def _runPython(source: str, *args: str) -> defer.Deferred:
    """
    Run Python code in a child process.

    @return: a L{defer.Deferred} firing with its standard output.
    """
    from twisted.internet.utils import getProcessOutputAndValue

    d = getProcessOutputAndValue(sys.executable, ["-c", source, *args], env=dict(os.environ))

    def check(result):
        out, err, code = result
        if code != 0:
            raise AssertionError(err.decode("utf-8", "replace"))
        return out.decode("ascii")

    return d.addCallback(check)
