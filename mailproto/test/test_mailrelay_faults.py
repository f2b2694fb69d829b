# -*- test-case-name: mailproto.test.test_mailrelay_faults -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{twistd mailrelay} in a child process, taking mail from Python's smtplib
and sending it through a scripted smart host (L{ScriptedSMTPFactory}, in
this process, on 127.0.0.1) that first misbehaves, then behaves.

For each fault: every message the relay acknowledged (250 to smtplib) is
delivered at least once; nothing is logged delivered while the smart host
misbehaved unless it acknowledged the end of data; no traceback in the
relay's log.  The relay waits a second for each reply
(C{--reply-timeout}), so that a stall or a trickled reply is over soon.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mailproto.test.test_daemon import RelayProcess, _sendWithSmtplib, freePort, spoolListing, waitUntil
from mailproto.test.test_relay_faults import FAULTS, TIMEOUT, FaultCases
from mailproto.testing import ScriptedSMTPFactory

# How long the smart host misbehaves: with a retry schedule of a second,
# several attempts meet the fault.
FAULT_SECONDS = 3.0


class MailrelayFaultTests(FaultCases, TestCase):
    """
    One relay per fault, two messages each.
    """

    timeout = 120

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)

    @defer.inlineCallbacks
    def runFault(self, name: str):
        script, acknowledges, recipients = FAULTS[name]
        smartHost = ScriptedSMTPFactory(script)
        listening = reactor.listenTCP(0, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        spool = os.path.join(self.scratch, "spool")
        port = freePort()
        relay = RelayProcess.spawn(
            self,
            ["--smtp", f"tcp:{port}:interface=127.0.0.1", "--spool", spool, "--hostname", "relay.test",
             "--smarthost", f"127.0.0.1:{listening.getHost().port}", "--smarthost-tls", "none",
             "--retry-schedule", "1s,1s", "--reply-timeout", f"{TIMEOUT}s"],
            self.scratch,
        )  # fmt: skip
        yield relay.whenListening()
        subjects = []
        for n in range(2):
            subject = f"fault-{n}-{name.replace(' ', '-')}"
            message = f"Subject: {subject}\r\nMessage-ID: <{n}.{port}@example.org>\r\n\r\nhello\r\n".encode()
            to = [f"ann{i}@example.com" for i in range(recipients)]
            refused = yield _sendWithSmtplib(port, "jo@example.org", to, message)
            self.assertEqual(refused, {})
            subjects.append(subject)
        yield deferLater(reactor, FAULT_SECONDS, lambda: None)
        faulty = len(smartHost.servers)
        deliveredWhileFaulty = relay.logLines("Delivered ")
        faultCommands = list(smartHost.commands)
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
        if name == "trickled EHLO reply":
            self.assertEqual([c for c in faultCommands if c.upper().startswith(b"MAIL")], [])
        self.assertEqual(relay.logLines("Traceback"), [])
        self.assertEqual(relay.logLines("Unhandled"), [])
        self.assertEqual(relay.logLines("Failed "), [])
