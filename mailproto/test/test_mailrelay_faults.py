# -*- test-case-name: mailproto.test.test_mailrelay_faults -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{twistd mailrelay} in a child process, taking mail from Python's smtplib
and sending it through a scripted smart host (L{ScriptedSMTPFactory}, in
this process, on 127.0.0.1) that first misbehaves, then behaves.

For each fault: every message the relay acknowledged (250 to smtplib) is
delivered at least once; nothing is logged delivered while the smart host
misbehaved unless it acknowledged the end of data; no traceback in the
relay's log.  (Faults that need the relay's reply timeout to pass, a stall
or a trickled reply, are in L{mailproto.test.test_relay_faults}, where the
timeout can be a second.)
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mailproto.test.test_daemon import RelayProcess, _sendWithSmtplib, freePort, spoolListing, waitUntil
from mailproto.testing import Drop, ScriptedSMTPFactory

# How long the smart host misbehaves: with a retry schedule of a second,
# several attempts meet the fault.
FAULT_SECONDS = 3.0

#: name: (script, whether the smart host acknowledges the end of data
#: while it misbehaves)
FAULTS = {
    "2xx to DATA": ({b"DATA": b"250 2.0.0 Ok\r\n"}, False),
    "extra reply after the dot": ({b"EOD": b"250 2.0.0 Ok\r\n250 2.0.0 Extra\r\n"}, True),
    "extra reply after RCPT": ({b"RCPT": b"250 2.1.5 Ok\r\n250 2.1.5 Extra\r\n"}, False),
    "garbage reply": ({b"MAIL": b"hello, this is not SMTP\r\n"}, False),
    "drop in the middle of the data": ({b"BODY": Drop()}, False),
    "drop after the dot": ({b"EOD": Drop()}, False),
    "4xx to RCPT": ({b"RCPT": b"450 4.2.0 Mailbox busy\r\n"}, False),
    "421 to MAIL": ({b"MAIL": Drop(b"421 4.3.2 Going away\r\n")}, False),
}


class MailrelayFaultTests(TestCase):
    """
    One relay per fault, two messages each.
    """

    timeout = 120

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)

    @defer.inlineCallbacks
    def runFault(self, name: str):
        script, acknowledges = FAULTS[name]
        smartHost = ScriptedSMTPFactory(script)
        listening = reactor.listenTCP(0, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        spool = os.path.join(self.scratch, "spool")
        port = freePort()
        relay = RelayProcess.spawn(
            self,
            ["--smtp", f"tcp:{port}:interface=127.0.0.1", "--spool", spool, "--hostname", "relay.test",
             "--smarthost", f"127.0.0.1:{listening.getHost().port}", "--smarthost-tls", "none",
             "--retry-schedule", "1s,1s"],
            self.scratch,
        )  # fmt: skip
        yield relay.whenListening()
        subjects = []
        for n in range(2):
            subject = f"fault-{n}-{name.replace(' ', '-')}"
            message = f"Subject: {subject}\r\nMessage-ID: <{n}.{port}@example.org>\r\n\r\nhello\r\n".encode()
            refused = yield _sendWithSmtplib(port, "jo@example.org", ["ann@example.com"], message)
            self.assertEqual(refused, {})
            subjects.append(subject)
        yield deferLater(reactor, FAULT_SECONDS, lambda: None)
        faulty = len(smartHost.servers)
        deliveredWhileFaulty = relay.logLines("Delivered ")
        smartHost.script = {}
        # A connection the relay keeps open for its retries goes on with
        # the old script: close them, so that the next ones behave.
        for server in smartHost.servers:
            if server.transport is not None:
                server.transport.loseConnection()
        yield waitUntil(
            lambda: all(any(f"Subject: {s}".encode() in m for m in smartHost.messages) for s in subjects),
            30,
            lambda: f"both messages at the smart host after {name!r}:\n{relay.text()[-3000:]}",
        )
        yield waitUntil(lambda: spoolListing(spool)["queue"] == [], 20, "the queue to empty")
        self.assertGreater(faulty, 0)
        if not acknowledges:
            self.assertEqual(deliveredWhileFaulty, [])
        self.assertEqual(relay.logLines("Traceback"), [])
        self.assertEqual(relay.logLines("Unhandled"), [])
        self.assertEqual(relay.logLines("Failed "), [])

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

    def test_temporaryRcpt(self):
        return self.runFault("4xx to RCPT")

    def test_421ToMail(self):
        return self.runFault("421 to MAIL")
