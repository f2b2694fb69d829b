# -*- test-case-name: mailproto.test.test_relay_faults -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay against a next hop that misbehaves, over real loopback sockets:
a durable L{Queue} on disk, the L{SmartHostESMTPRelayingManager} sending
through a L{ScriptedSMTPFactory} that first answers as a broken server
would (a 250 where 354 belongs, extra replies, garbage, drops, stalls, a
trickled reply, refusals), then behaves.

For every fault: every message the queue took is delivered at least once
or returned to its sender exactly once; none is logged as delivered
while the next hop misbehaved unless the next hop acknowledged its end of
data; nothing unhandled is logged.
"""

from __future__ import annotations

import os
import re
import time

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mailproto._attempts import RetrySchedule
from mailproto._queue import Envelope, Queue, Recipient, newMessageID
from mailproto.relaymanager import SmartHost, SmartHostESMTPRelayingManager, TLSPolicy
from mailproto.testing import Drop, ScriptedSMTPFactory, Stall, Trickle

# The next hop's reply timeout, and how long a fault is kept up.
TIMEOUT = 1.0
FAULT_SECONDS = 2.5
# How long everything may take to be delivered once the next hop behaves.
SETTLE_SECONDS = 30.0

# An EHLO reply of six lines, a line every 0.3 s: 1.8 s in all, each line
# well within the reply timeout, the whole reply not.
TRICKLED_EHLO = b"250-next.example\r\n" + b"250-PIPELINING\r\n" * 4 + b"250 ENHANCEDSTATUSCODES\r\n"

#: name: (script, whether the next hop acknowledges the end of data
#: while misbehaving, recipients per message)
FAULTS = {
    "2xx to DATA": ({b"DATA": b"250 2.0.0 Ok\r\n"}, False, 1),
    "extra reply after the dot": ({b"EOD": b"250 2.0.0 Ok\r\n250 2.0.0 Extra\r\n"}, True, 1),
    "extra reply after RCPT": ({b"RCPT": b"250 2.1.5 Ok\r\n250 2.1.5 Extra\r\n"}, False, 1),
    "garbage reply": ({b"MAIL": b"hello, this is not SMTP\r\n"}, False, 1),
    "drop in the middle of the data": ({b"BODY": Drop()}, False, 1),
    "drop after the dot": ({b"EOD": Drop()}, False, 1),
    "stall after the dot": ({b"EOD": Stall()}, False, 1),
    "trickled EHLO reply": ({b"EHLO": Trickle(TRICKLED_EHLO, TIMEOUT * 0.3)}, False, 1),
    "4xx per recipient": ({b"RCPT": [b"250 2.1.5 Ok\r\n", b"450 4.2.0 Mailbox busy\r\n"]}, True, 2),
    "452 after one recipient": ({b"RCPT": [b"250 2.1.5 Ok\r\n", b"452 4.5.3 Too many recipients\r\n"]}, True, 3),
    "421 to MAIL": ({b"MAIL": Drop(b"421 4.3.2 Going away\r\n")}, False, 1),
}


class _LogWatch:
    """
    Keeps the log events of the test: deliveries, and anything logged as
    a failure or at error level.
    """

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def delivered(self) -> list[dict]:
        return [e for e in self.events if e.get("log_format", "").startswith("Delivered {queueID}")]

    def trouble(self) -> list[str]:
        found = []
        for e in self.events:
            level = getattr(e.get("log_level"), "name", "")
            if "log_failure" in e or level in ("error", "critical"):
                found.append(f"{level}: {e.get('log_format')} {e.get('log_failure', '')}")
        return found


class _RelayHarness(TestCase):
    """
    A relay with its queue on disk, sending to a scripted next hop on
    127.0.0.1.
    """

    timeout = 90

    def setUp(self):
        self.watch = _LogWatch()
        globalLogPublisher.addObserver(self.watch)
        self.addCleanup(globalLogPublisher.removeObserver, self.watch)

    @defer.inlineCallbacks
    def relay(self, script, perConnection: int = 10, tls: str = "none", extensions=None):
        """
        Start a next hop with C{script} (and C{extensions}, if given), and
        a relay with its queue on disk sending everything to it,
        C{perConnection} messages a connection, with the TLS policy
        C{tls}.

        @return: the next hop's factory, the queue and the manager.
        """
        nextHop = ScriptedSMTPFactory(script) if extensions is None else ScriptedSMTPFactory(script, extensions)
        port = reactor.listenTCP(0, nextHop, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        queue = Queue(os.path.abspath(self.mktemp()))
        queue.recover()
        manager = SmartHostESMTPRelayingManager(
            queue,
            2,
            perConnection,
            smartHost=SmartHost("127.0.0.1", port.getHost().port, tls=TLSPolicy(tls)),
            schedule=RetrySchedule(first=0.5, maximum=1.0, lifetime=3600.0),
            hostname="relay.example",
            timeout=TIMEOUT,
            connectTimeout=5.0,
            connectionCacheTime=0,
        )
        manager.start()

        def stop():
            manager.stop()
            return nextHop.allClosed()

        self.addCleanup(stop)
        yield deferLater(reactor, 0, lambda: None)
        return nextHop, queue, manager

    @defer.inlineCallbacks
    def enqueue(self, queue, count: int, recipients: int) -> list[str]:
        """
        Put C{count} messages into the queue, as the relay's server does
        before it says 250.

        @return: their subjects, one token each.
        """
        subjects = []
        for n in range(count):
            subject = f"fault-{n}-{newMessageID()}"
            rcpts = [Recipient(b"user%d@dest.example" % i) for i in range(recipients)]
            spool = queue.newMessage(Envelope(newMessageID(), b"sender@origin.example", rcpts, received=time.time()))
            spool.write(f"Subject: {subject}\r\nMessage-ID: <{subject}@origin.example>\r\n\r\nHello.\r\n".encode())
            yield spool.commit()
            subjects.append(subject)
        return subjects

    @defer.inlineCallbacks
    def waitFor(self, condition, seconds: float, what: str):
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            yield deferLater(reactor, 0.05, lambda: None)


class FaultCases:
    """
    The faults both this module and the one through C{twistd mailrelay}
    (L{mailproto.test.test_mailrelay_faults}) try, one test each; the
    test case has C{runFault(name)}, C{name} a key of L{FAULTS}.
    """

    def test_2xxToData(self):
        return self.runFault("2xx to DATA")

    def test_extraReplyAfterDot(self):
        return self.runFault("extra reply after the dot")

    def test_extraReplyAfterRcpt(self):
        return self.runFault("extra reply after RCPT")

    def test_garbage(self):
        return self.runFault("garbage reply")

    def test_dropMidData(self):
        return self.runFault("drop in the middle of the data")

    def test_dropAfterDot(self):
        return self.runFault("drop after the dot")

    def test_temporaryPerRecipient(self):
        return self.runFault("4xx per recipient")

    def test_421ToMail(self):
        return self.runFault("421 to MAIL")

    def test_stallAfterDot(self):
        return self.runFault("stall after the dot")

    def test_trickledReply(self):
        return self.runFault("trickled EHLO reply")


class FaultMatrixTests(FaultCases, _RelayHarness):
    """
    One test per fault; each sends three messages.
    """

    @defer.inlineCallbacks
    def runFault(self, name: str):
        script, acknowledges, recipients = FAULTS[name]
        nextHop, queue, manager = yield self.relay(script)
        subjects = yield self.enqueue(queue, 3, recipients)
        # The fault is kept up for a while: several attempts meet it.
        yield deferLater(reactor, FAULT_SECONDS, lambda: None)
        attemptsMet = len(nextHop.commands)
        faultCommands = list(nextHop.commands)
        deliveredWhileFaulty = list(self.watch.delivered())
        nextHop.script = {}
        yield self.waitFor(lambda: not queue.ids(), SETTLE_SECONDS, f"the queue to empty after {name!r}")
        self.assertGreater(attemptsMet, 0, "the next hop was never tried while it misbehaved")
        received = b"\n".join(nextHop.messages)
        for subject in subjects:
            copies = received.count(f"Subject: {subject}".encode())
            self.assertGreaterEqual(copies, 1, f"{subject} was never delivered ({name})")
        if not acknowledges:
            self.assertEqual(deliveredWhileFaulty, [], f"logged delivered while the next hop misbehaved ({name})")
        if name == "trickled EHLO reply":
            # The reply's deadline runs from the command: no attempt got
            # past EHLO while each line came in time but the reply did not.
            self.assertEqual([c for c in faultCommands if c.upper().startswith(b"MAIL")], [])
        # Nothing was returned to the sender: every fault here is temporary
        # or was cured.
        self.assertNotIn(b"MAIL FROM:<>", b"\n".join(nextHop.commands))
        self.assertEqual(self.watch.trouble(), [])

    def test_tooManyRecipients(self):
        return self.runFault("452 after one recipient")

    @defer.inlineCallbacks
    def test_permanentPerRecipientBouncesOnce(self):
        """
        A recipient refused with 5xx: the other is delivered, and the
        sender gets exactly one report for each message.  (One message a
        connection: the next hop accepts the first recipient of each
        connection and refuses the others.)
        """
        script = {b"RCPT": [b"250 2.1.5 Ok\r\n", b"550 5.1.1 No such user\r\n"]}
        nextHop, queue, manager = yield self.relay(script, perConnection=1)
        subjects = yield self.enqueue(queue, 3, 2)
        yield self.waitFor(lambda: not queue.ids(), SETTLE_SECONDS, "the queue to empty")
        reports = [m for m in nextHop.messages if re.search(rb"(?i)content-type: multipart/report", m)]
        for subject in subjects:
            self.assertEqual(sum(subject.encode() in m for m in reports), 1, subject)
            originals = [m for m in nextHop.messages if m not in reports and f"Subject: {subject}".encode() in m]
            self.assertGreaterEqual(len(originals), 1, subject)
        self.assertEqual(len([c for c in nextHop.commands if c.upper().startswith(b"MAIL FROM:<>")]), 3)
        self.assertEqual(self.watch.trouble(), [])


TLS_EXTENSIONS = (b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"STARTTLS")


class TLSFallbackTests(_RelayHarness):
    """
    STARTTLS offered, and TLS does not come up: under the policy C{may}
    the same next hop is tried again at once without TLS (as Postfix
    does); under C{encrypt} nothing goes in the clear.
    """

    def sessions(self, nextHop) -> list[list[bytes]]:
        return [server.commands for server in nextHop.servers]

    @defer.inlineCallbacks
    def fallsBack(self, script):
        nextHop, queue, manager = yield self.relay(script, tls="may", extensions=TLS_EXTENSIONS)
        subjects = yield self.enqueue(queue, 2, 1)
        yield self.waitFor(lambda: not queue.ids(), SETTLE_SECONDS, "the queue to empty")
        sessions = [b"\n".join(commands) for commands in self.sessions(nextHop)]
        # Sessions that tried TLS sent no mail; the mail went in sessions
        # that did not try it.
        self.assertTrue(any(b"STARTTLS" in session for session in sessions))
        for session in sessions:
            self.assertFalse(b"STARTTLS" in session and b"MAIL FROM" in session, session)
        self.assertTrue(any(b"MAIL FROM" in session for session in sessions))
        received = b"\n".join(nextHop.messages)
        for subject in subjects:
            self.assertIn(f"Subject: {subject}".encode(), received)
        retried = [e for e in self.watch.events if "trying it again without TLS" in e.get("log_format", "")]
        self.assertGreaterEqual(len(retried), 1)
        self.assertEqual(self.watch.trouble(), [])

    def test_handshakeFailsUnderMay(self):
        """
        The next hop says 220 to STARTTLS and hangs up in the handshake.
        """
        return self.fallsBack({b"STARTTLS": Drop(b"220 2.0.0 Ready\r\n")})

    def test_startTLSRefusedUnderMay(self):
        """
        The next hop offers STARTTLS and then refuses it.
        """
        return self.fallsBack({b"STARTTLS": b"454 4.7.0 TLS not available\r\n"})

    @defer.inlineCallbacks
    def test_noFallbackUnderEncrypt(self):
        """
        Under C{encrypt}, a failed handshake defers the mail; no MAIL is
        ever sent in the clear.
        """
        script = {b"STARTTLS": Drop(b"220 2.0.0 Ready\r\n")}
        nextHop, queue, manager = yield self.relay(script, tls="encrypt", extensions=TLS_EXTENSIONS)
        yield self.enqueue(queue, 2, 1)
        yield deferLater(reactor, FAULT_SECONDS, lambda: None)
        self.assertGreater(len(nextHop.servers), 1)
        self.assertNotIn(b"MAIL FROM", b"\n".join(nextHop.commands))
        self.assertEqual(len(queue.ids()), 2)
        self.assertEqual([e for e in self.watch.events if "without TLS" in e.get("log_format", "")], [])
