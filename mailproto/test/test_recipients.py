# -*- test-case-name: mailproto.test.test_recipients -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Valid recipients of the relay domains (L{mailproto._recipients}): the
file's format, reading it again when it changes, C{550 5.1.1} at RCPT,
and the reports policy that keeps the relay from sending mail to forged
senders (L{mailproto._reports.ReportPolicy}).
"""

from __future__ import annotations

import os

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mailproto._address import Address
from mailproto._queue import CHECKED, TRUSTED, UNCHECKED, Envelope, Recipient, newMessageID
from mailproto._recipients import RecipientList, RecipientsFile, RecipientsFileError
from mailproto._relay import QueueDeliveryFactory, RelayPolicy
from mailproto._reports import ReportPolicy
from mailproto.smtp import ESMTPFactory
from mailproto.test.test_relaymanager import RelayHarness, Scripted, statusFields
from mailproto.testing import MemoryQueue

STRANGER = IPv4Address("TCP", "198.51.100.7", 4000)
NEIGHBOUR = IPv4Address("TCP", "127.0.0.1", 4000)

SAMPLE = b"""\
# the people of inbound.test
ann@inbound.test
Bob@Inbound.Test     # a comment after an entry
  "carl smith"@inbound.test
odd#name@inbound.test

@lists.inbound.test
@b\xc3\xbccher.test
"""


class RecipientListTests(SynchronousTestCase):
    """
    The format of a recipients file (L{RecipientList.parse}).
    """

    def setUp(self):
        self.recipients = RecipientList.parse(SAMPLE)

    def test_addresses(self):
        """
        Listed addresses are valid, others of their domain are not;
        domains and local parts are compared without regard to case, a
        quoted local part by its value.
        """
        for valid in (b"ann@inbound.test", b"ANN@INBOUND.TEST", b"bob@inbound.test", b'"Carl Smith"@inbound.test',
                      b"odd#name@inbound.test", b'"ann"@inbound.test'):  # fmt: skip
            self.assertIn(Address(valid), self.recipients, valid)
        for invalid in (b"anne@inbound.test", b"ann@other.test", b"carl@inbound.test", b"odd@inbound.test", b"bob@sub.inbound.test"):
            self.assertNotIn(Address(invalid), self.recipients, invalid)
        self.assertEqual(len(self.recipients), 6)

    def test_domains(self):
        """
        C{@domain} accepts everyone at that domain, not its subdomains; a
        UTF-8 domain is the same as its A-label.
        """
        self.assertIn(Address(b"anyone@lists.inbound.test"), self.recipients)
        self.assertIn(Address(b"Anyone@LISTS.inbound.test"), self.recipients)
        self.assertNotIn(Address(b"anyone@x.lists.inbound.test"), self.recipients)
        self.assertIn(Address(b"k@xn--bcher-kva.test"), self.recipients)
        self.assertIn(Address("k@b\u00fccher.test"), self.recipients)
        self.assertIn(b"k@xn--bcher-kva.test", self.recipients)
        self.assertNotIn(b"not an address", self.recipients)

    def test_empty(self):
        self.assertEqual(len(RecipientList.parse(b"")), 0)
        self.assertEqual(len(RecipientList.parse(b"# nothing\n\n   \n")), 0)
        self.assertNotIn(Address(b"a@b.test"), RecipientList.parse(b""))

    def test_malformed(self):
        """
        The first line that is not an entry is named by its number, with
        what is wrong with it.
        """
        cases = [
            (b"ok@x.test\nann\n", 2, "not an address (local@domain) or @domain"),
            (b"ok@x.test\n\n# c\n@\n", 4, "not a domain after @"),
            (b"@-bad-.test\n", 1, "not a domain after @"),
            (b"a b@x.test\n", 1, "not an address"),
            (b"a@@x.test\n", 1, "not an address"),
            (b"ann@[192.0.2.1]\n", 1, "not an address with a domain name"),
            (b"ann@x.test extra\n", 1, "not an address"),
        ]
        for data, number, reason in cases:
            error = self.assertRaises(RecipientsFileError, RecipientList.parse, data)
            self.assertEqual(error.lineNumber, number, data)
            self.assertIn(reason, str(error))
            self.assertTrue(str(error).startswith(f"line {number}: "), str(error))
            self.assertIsInstance(error, ValueError)


class RecipientsFileTests(SynchronousTestCase):
    """
    L{RecipientsFile}: read at start, read again when it changes (looked
    at no more than once per interval), the last good list kept when the
    file goes bad.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.write(b"ann@inbound.test\n")
        self.clock = Clock()
        self.file = RecipientsFile(self.path, clock=self.clock, checkInterval=5).load()

    def write(self, data: bytes, mtime: int | None = None) -> None:
        with open(self.path, "wb") as f:
            f.write(data)
        if mtime is not None:
            os.utime(self.path, (mtime, mtime))

    def test_missingAtStart(self):
        self.assertRaises(FileNotFoundError, RecipientsFile(self.path + ".missing").load)

    def test_malformedAtStart(self):
        self.write(b"ann@inbound.test\nnonsense\n")
        error = self.assertRaises(RecipientsFileError, RecipientsFile(self.path).load)
        self.assertEqual(error.lineNumber, 2)

    def test_changeSeenAfterInterval(self):
        """
        A change is seen at the first use after the interval, not before;
        a file that did not change is not read again.
        """
        self.assertTrue(self.file.accepts(Address(b"ann@inbound.test")))
        self.write(b"bob@inbound.test\nann@inbound.test\n")
        self.assertFalse(self.file.accepts(Address(b"bob@inbound.test")))
        self.clock.advance(5)
        with capturedLogs() as events:
            self.assertTrue(self.file.accepts(Address(b"bob@inbound.test")))
        self.assertEqual([e["count"] for e in events], [2])
        reads = []
        self.patch(RecipientList, "parse", classmethod(lambda cls, data: reads.append(data)))
        self.clock.advance(5)
        self.assertFalse(self.file.check())
        self.assertEqual(reads, [])

    def test_sameSizeChange(self):
        """
        A change that keeps the size is seen by its modification time.
        """
        self.write(b"bob@inbound.test\n", mtime=1_000_000)
        self.assertTrue(self.file.check(force=True))
        self.assertTrue(self.file.accepts(Address(b"bob@inbound.test")))
        self.assertFalse(self.file.accepts(Address(b"ann@inbound.test")))

    def test_unreadableKeepsLastGood(self):
        """
        A file that goes away: the last good list stays, the problem is
        logged once however often the file is looked at; once it is back,
        it is read.
        """
        os.remove(self.path)
        with capturedLogs() as events:
            for _ in range(3):
                self.assertFalse(self.file.check(force=True))
                self.assertTrue(self.file.accepts(Address(b"ann@inbound.test")))
        [event] = events
        self.assertIn("cannot read it", event["problem"])
        self.assertEqual(event["count"], 1)
        self.write(b"bob@inbound.test\n")
        self.assertTrue(self.file.check(force=True))
        self.assertFalse(self.file.accepts(Address(b"ann@inbound.test")))

    def test_malformedLaterKeepsLastGood(self):
        """
        A file edited into a malformed one: the last good list stays, the
        line is logged once, and the file is not read again until it
        changes.
        """
        self.write(b"ann@inbound.test\nbob@inbound.test\nwhat\n")
        with capturedLogs() as events:
            self.assertFalse(self.file.check(force=True))
            reads = []
            original = RecipientList.parse
            self.patch(RecipientList, "parse", classmethod(lambda cls, data: reads.append(data) or original(data)))
            self.assertFalse(self.file.check(force=True))
        self.assertEqual(reads, [])
        [event] = events
        self.assertEqual(event["problem"], "line 3: not an address (local@domain) or @domain: 'what'")
        self.assertFalse(self.file.accepts(Address(b"bob@inbound.test")))
        self.write(b"ann@inbound.test\nbob@inbound.test\n")
        self.assertTrue(self.file.check(force=True))
        self.assertEqual(len(reads), 1)
        self.assertTrue(self.file.accepts(Address(b"bob@inbound.test")))


class RcptTests(SynchronousTestCase):
    """
    An ESMTP server with a L{QueueDeliveryFactory} whose policy lists the
    valid recipients of its relay domain.
    """

    def setUp(self):
        self.queue = MemoryQueue()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"ann@inbound.test\n")
        self.recipients = RecipientsFile(path, clock=Clock()).load()
        self.policy = RelayPolicy(domains=["inbound.test"], recipients=self.recipients)
        self.refusals = []
        self.policy.observers.append(self.refusals.append)

    def session(self, peer, policy=None):
        factory = ESMTPFactory(
            deliveryFactory=QueueDeliveryFactory(self.queue, policy or self.policy, clock=Clock()),
            domain=b"relay.example",
            clock=Clock(),
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO client.example\r\n")
        transport.clear()
        return proto, transport

    def test_unknownRecipientRefused(self):
        """
        A recipient of a relay domain that is not listed gets C{550
        5.1.1} at RCPT, logged once and counted; a listed one is accepted
        and the message queued, its origin recorded as checked.
        """
        proto, transport = self.session(STRANGER)
        with capturedLogs() as events:
            proto.dataReceived(
                b"MAIL FROM:<victim@outside.example> RET=FULL\r\nRCPT TO:<no-such-user@inbound.test>\r\n"
                b"RCPT TO:<ANN@inbound.test>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
            )
        lines = transport.value().split(b"\r\n")
        self.assertEqual(lines[1], b"550 5.1.1 <no-such-user@inbound.test>: Recipient address rejected: User unknown in relay recipient table")
        self.assertEqual(lines[2], b"250 2.1.5 Recipient address accepted")
        self.assertEqual(lines[3], b"554 5.7.1 Relay access denied")
        self.assertEqual(self.refusals, ["relay-recipients"])
        refusedLines = [e for e in events if e.get("policy") == "relay-recipients"]
        self.assertEqual(len(refusedLines), 1)
        self.assertEqual((refusedLines[0]["recipient"], refusedLines[0]["client"]), ("no-such-user@inbound.test", "198.51.100.7"))
        [queueID] = self.queue.ids()
        envelope = self.queue.getEnvelope(queueID)
        self.assertEqual([r.address for r in envelope.recipients], [b"ANN@inbound.test"])
        self.assertEqual(envelope.origin, CHECKED)

    def test_refusedForTrustedClientsToo(self):
        """
        The list holds for every client: one in a relay network gets 550
        5.1.1 for an unknown recipient of a relay domain too, while other
        domains are not checked.  Its mail is trusted.
        """
        proto, transport = self.session(NEIGHBOUR)
        proto.dataReceived(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@INBOUND.test>\r\nRCPT TO:<x@elsewhere.test>\r\n"
            b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
        )
        lines = transport.value().split(b"\r\n")
        self.assertTrue(lines[1].startswith(b"550 5.1.1 "), lines[1])
        self.assertEqual(lines[2], b"250 2.1.5 Recipient address accepted")
        [queueID] = self.queue.ids()
        self.assertEqual(self.queue.getEnvelope(queueID).origin, TRUSTED)

    def test_withoutList(self):
        """
        Without a list, every recipient of a relay domain is accepted, and
        a stranger's mail is recorded as unchecked.
        """
        proto, transport = self.session(STRANGER, RelayPolicy(domains=["inbound.test"]))
        proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@inbound.test>\r\nDATA\r\nS: x\r\n\r\nhi\r\n.\r\n")
        self.assertIn(b"250 2.1.5 ", transport.value())
        [queueID] = self.queue.ids()
        self.assertEqual(self.queue.getEnvelope(queueID).origin, UNCHECKED)


class OriginInQueueFileTests(SynchronousTestCase):
    """
    The envelope's C{origin} in the queue file: written only when known,
    read back, and an envelope without it (an older version's) still
    read.
    """

    def test_roundTrip(self):
        for origin in (TRUSTED, CHECKED, UNCHECKED):
            envelope = Envelope(newMessageID(1.0), b"a@b.test", [Recipient(b"c@d.test")], origin=origin)
            self.assertEqual(envelope.header()["origin"], origin)
            self.assertEqual(Envelope.fromHeader(envelope.header()).origin, origin)

    def test_absent(self):
        envelope = Envelope(newMessageID(1.0), b"a@b.test", [Recipient(b"c@d.test")])
        header = envelope.header()
        self.assertNotIn("origin", header)
        self.assertIsNone(Envelope.fromHeader(header).origin)

    def test_unknownValue(self):
        header = Envelope(newMessageID(1.0), b"a@b.test", [Recipient(b"c@d.test")]).header()
        header["origin"] = "somewhere"
        self.assertRaises(ValueError, Envelope.fromHeader, header)


class ReportPolicyTests(SynchronousTestCase):
    """
    Reports on a stranger's mail go out only when its recipients were
    checked, and not at all with C{toStrangers=False}; trusted mail and
    mail of unknown origin are reported on as before.
    """

    def bounce(self, origin, policy=None, notify=None, ehlo=b"250-mx.test\r\n250 8BITMIME", rcpt=b"550 5.1.1 No such user"):
        """
        Queue a message of C{origin} and have the next hop answer; return
        the reports queued and the policies that withheld one.
        """
        relay = RelayHarness(self)
        withheld = []
        if policy is not None:
            relay.manager.recorder.reporter.policy = policy
        relay.manager.recorder.reporter.policy.observers.append(withheld.append)
        relay.enqueue([Recipient(b"rcpt@example.com", notify=notify)], origin=origin)
        relay.turn()
        _, _, factory = relay.connection()
        relay.serve(factory, Scripted(EHLO=ehlo, RCPT=rcpt))
        self.assertEqual(relay.queue.ids() if not relay.reports() else [], [])
        return relay.reports(), withheld, relay

    def test_bounces(self):
        for origin in (None, TRUSTED, CHECKED):
            reports, withheld, _ = self.bounce(origin)
            self.assertEqual(len(reports), 1, origin)
            self.assertEqual(withheld, [])
        with capturedLogs() as events:
            reports, withheld, relay = self.bounce(UNCHECKED)
        self.assertEqual((reports, withheld), ([], ["reports-unchecked"]))
        self.assertEqual(relay.manager.stats["withheld"], 1)
        [line] = [e for e in events if e.get("policy") == "reports-unchecked"]
        self.assertEqual((line["action"], line["sender"]), ("failed", "sender@origin.test"))

    def test_noReportsToStrangers(self):
        for origin in (CHECKED, UNCHECKED):
            reports, withheld, _ = self.bounce(origin, ReportPolicy(toStrangers=False))
            self.assertEqual((reports, withheld), ([], ["no-reports-to-strangers"]))
        reports, withheld, _ = self.bounce(TRUSTED, ReportPolicy(toStrangers=False))
        self.assertEqual(len(reports), 1)

    def test_relayedReport(self):
        """
        A "relayed" report (NOTIFY=SUCCESS to a next hop without DSN) is
        withheld too for unchecked mail.
        """
        reports, withheld, _ = self.bounce(UNCHECKED, notify=(b"SUCCESS",), rcpt=b"250 2.1.5 Ok")
        self.assertEqual((reports, withheld), ([], ["reports-unchecked"]))
        reports, withheld, _ = self.bounce(CHECKED, notify=(b"SUCCESS",), rcpt=b"250 2.1.5 Ok")
        [(_, report)] = reports
        self.assertEqual([f["Action"] for f in statusFields(report)], ["relayed"])
