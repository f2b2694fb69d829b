# -*- test-case-name: mailproto.test.test_mailrelay_recipients -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{twistd mailrelay --relay-recipients} over real sockets, with Python's
smtplib as a client outside the relay networks (the relay networks are
set to a documentation network, so 127.0.0.1 is a stranger) and a
scripted smart host as the next hop: the two backscatter recipes get
C{550 5.1.1} at RCPT and send nothing to the forged sender; a valid
recipient is delivered.  And the options' start-up errors.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mailproto._relayd._daemon import Options
from mailproto.test.test_daemon import spoolListing, waitUntil
from mailproto.test.test_mailrelay_faults import _MailrelayHarness
from mailproto.testing import ScriptedSMTPFactory

VICTIM = "victim@outside.example"


def _transaction(port: int, sender: str, mailOptions: list[str], recipient: str, rcptOptions: list[str], message: bytes):
    """
    One transaction with smtplib, in a thread, command by command.

    @return: a C{Deferred} firing with the C{(code, text)} of RCPT and, if
        it was accepted, of the end of data (else C{None}).
    """

    def run():
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=20) as client:
            client.ehlo()
            code, text = client.mail(sender, mailOptions)
            assert code == 250, (code, text)
            rcpt = client.rcpt(recipient, rcptOptions)
            data = client.data(message) if rcpt[0] == 250 else None
            return rcpt, data

    return deferToThread(run)


class BackscatterTests(_MailrelayHarness):
    """
    A relay with C{--relay-domain inbound.test --relay-recipients FILE},
    for which 127.0.0.1 is outside the relay networks.
    """

    @defer.inlineCallbacks
    def startRecipientRelay(self):
        self.recipientsFile = os.path.join(self.scratch, "recipients")
        with open(self.recipientsFile, "w") as f:
            f.write("# valid recipients\nann@inbound.test\n")
        # The next hop would refuse unknown users, and offers no DSN.
        self.smartHost = ScriptedSMTPFactory({b"RCPT": lambda line, server: b"550 5.1.1 No such user\r\n" if b"no-such-user" in line else None})
        relay = yield self.startRelay(
            self.smartHost, "--smarthost-tls", "none", "--relay-network", "192.0.2.0/24", "--relay-domain", "inbound.test",
            "--relay-recipients", self.recipientsFile,
        )  # fmt: skip
        return relay

    def assertNothingToVictim(self, relay) -> None:
        """
        The smart host saw nothing addressed to the victim, and nothing
        is queued.
        """
        self.assertEqual([c for c in self.smartHost.commands if c.upper().startswith(b"RCPT") and b"victim" in c.lower()], [])
        self.assertEqual(spoolListing(self.spool)["queue"], [])
        self.assertEqual(relay.logLines("Queued "), [])
        self.assertEqual(relay.logLines("Traceback"), [])

    @defer.inlineCallbacks
    def test_backscatterRecipes(self):
        """
        C{MAIL FROM:<victim> RET=FULL} to an unknown user, and C{NOTIFY=SUCCESS}
        to an unknown user, each get C{550 5.1.1} at RCPT: nothing is
        queued, nothing reaches the victim.
        """
        relay = yield self.startRecipientRelay()
        message = b"Subject: spam\r\n\r\nbuy now\r\n"
        rcpt, data = yield _transaction(self.port, VICTIM, ["RET=FULL"], "no-such-user@inbound.test", [], message)
        self.assertEqual(rcpt[0], 550)
        self.assertTrue(rcpt[1].startswith(b"5.1.1 "), rcpt)
        self.assertIsNone(data)
        rcpt, data = yield _transaction(self.port, VICTIM, [], "anyone@inbound.test", ["NOTIFY=SUCCESS"], message)
        self.assertEqual(rcpt[0], 550)
        self.assertTrue(rcpt[1].startswith(b"5.1.1 "), rcpt)
        # Long enough for a report to be queued and sent, were there one.
        yield deferLater(reactor, 2.0, lambda: None)
        self.assertNothingToVictim(relay)
        self.assertEqual(len(relay.logLines("not a valid recipient of a relay domain")), 2)

    @defer.inlineCallbacks
    def test_validRecipientDelivered(self):
        """
        A listed recipient (in another case) is accepted and delivered; a
        recipient added to the file while the relay runs is accepted too.
        """
        relay = yield self.startRecipientRelay()
        message = b"Subject: valid-one\r\n\r\nhello\r\n"
        rcpt, data = yield _transaction(self.port, "jo@example.org", [], "Ann@INBOUND.test", [], message)
        self.assertEqual((rcpt[0], data[0]), (250, 250))
        yield waitUntil(lambda: any(b"Subject: valid-one" in m for m in self.smartHost.messages), 30, "delivery to the smart host")
        with open(self.recipientsFile, "a") as f:
            f.write("bob@inbound.test   # added later\n")
        # The file is looked at again at most once a second.
        yield deferLater(reactor, 1.2, lambda: None)
        rcpt, data = yield _transaction(self.port, "jo@example.org", [], "bob@inbound.test", [], b"Subject: valid-two\r\n\r\nhi\r\n")
        self.assertEqual((rcpt[0], data[0]), (250, 250))
        yield waitUntil(lambda: any(b"Subject: valid-two" in m for m in self.smartHost.messages), 30, "delivery to the smart host")
        yield waitUntil(lambda: spoolListing(self.spool)["queue"] == [], 20, "the queue to empty")
        self.assertEqual(relay.logLines("Traceback"), [])


class UncheckedReportTests(_MailrelayHarness):
    """
    Without C{--relay-recipients}, a stranger's mail for an unknown user
    of a relay domain is accepted, refused by the next hop, and not
    returned to its (forged) sender.
    """

    @defer.inlineCallbacks
    def test_noBounceToStranger(self):
        smartHost = ScriptedSMTPFactory({b"RCPT": b"550 5.1.1 No such user\r\n"})
        relay = yield self.startRelay(
            smartHost, "--smarthost-tls", "none", "--relay-network", "192.0.2.0/24", "--relay-domain", "inbound.test"
        )
        rcpt, data = yield _transaction(self.port, VICTIM, ["RET=FULL"], "no-such-user@inbound.test", [], b"Subject: s\r\n\r\nx\r\n")
        self.assertEqual((rcpt[0], data[0]), (250, 250))
        yield waitUntil(lambda: relay.logLines("No failed report for"), 30, lambda: f"the report withheld:\n{relay.text()[-3000:]}")
        yield waitUntil(lambda: spoolListing(self.spool)["queue"] == [], 20, "the queue to empty")
        self.assertEqual([c for c in smartHost.commands if c.upper().startswith(b"RCPT") and b"victim" in c.lower()], [])
        self.assertEqual([line for line in relay.logLines("Queued ") if " report for " in line], [])
        self.assertEqual(len(relay.logLines("Queued ")), 1)


class OptionsTests(SynchronousTestCase):
    """
    C{--relay-recipients} and C{--no-reports-to-strangers} as options:
    a clear one-line error for a file that is missing or malformed.
    """

    def setUp(self):
        self.spool = self.mktemp()
        self.file = self.mktemp()
        with open(self.file, "w") as f:
            f.write("ann@inbound.test\n@lists.inbound.test\n")

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(["--spool", self.spool, "--hostname", "relay.test", *arguments])
        return options

    def assertUsageError(self, arguments, contains: str) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, *arguments)
        self.assertIn(contains, str(error))
        self.assertNotIn("\n", str(error))

    def test_loaded(self):
        options = self.parse("--relay-domain", "inbound.test", "--relay-recipients", self.file)
        self.assertEqual(len(options["policy"].recipients.recipients), 2)
        self.assertFalse(options["no-reports-to-strangers"])
        self.assertTrue(self.parse("--no-reports-to-strangers")["no-reports-to-strangers"])

    def test_errors(self):
        self.assertUsageError(["--relay-recipients", self.file], "--relay-recipients needs --relay-domain")
        self.assertUsageError(
            ["--relay-domain", "inbound.test", "--relay-recipients", self.file + ".missing"],
            "cannot read it (No such file or directory)",
        )
        with open(self.file, "a") as f:
            f.write("not an address\n")
        self.assertUsageError(["--relay-domain", "inbound.test", "--relay-recipients", self.file], ": line 3: not an address")
