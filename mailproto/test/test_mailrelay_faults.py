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

Then TLS with real handshakes (L{StartTLS}, L{BrokenTLS}), for each
C{--smarthost-tls} policy: a handshake that fails under C{may} is
followed by the same smart host without TLS; under C{verify}, a
certificate the relay does not trust, and under C{encrypt}, a smart host
without STARTTLS, keep the mail queued -- never sent in plaintext, never
returned -- until the smart host offers TLS the relay accepts.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mailproto.test._peers import missing
from mailproto.test.test_daemon import RelayProcess, _sendWithSmtplib, freePort, spoolListing, waitUntil
from mailproto.test.test_relay_faults import FAULTS, TIMEOUT, FaultCases
from mailproto.testing import BrokenTLS, ScriptedSMTPFactory, StartTLS

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None

# How long the smart host misbehaves: with a retry schedule of a second,
# several attempts meet the fault.
FAULT_SECONDS = 3.0


class _MailrelayHarness(TestCase):
    """
    C{twistd mailrelay} in a child process, relaying through a
    L{ScriptedSMTPFactory} on 127.0.0.1.
    """

    timeout = 120

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.spool = os.path.join(self.scratch, "spool")

    @defer.inlineCallbacks
    def startRelay(self, smartHost: ScriptedSMTPFactory, *arguments: str):
        """
        Start the smart host, and a relay sending everything to it, trying
        again a second after a failure.

        @param arguments: more options for C{mailrelay}, the
            C{--smarthost-tls} policy among them.
        @return: the relay (a L{RelayProcess}), once it listens.
        """
        listening = reactor.listenTCP(0, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.port = freePort()
        relay = RelayProcess.spawn(
            self,
            ["--smtp", f"tcp:{self.port}:interface=127.0.0.1", "--spool", self.spool, "--hostname", "relay.test",
             "--smarthost", f"127.0.0.1:{listening.getHost().port}",
             "--retry-schedule", "1s,1s", "--reply-timeout", f"{TIMEOUT}s", *arguments],
            self.scratch,
        )  # fmt: skip
        yield relay.whenListening()
        return relay

    @defer.inlineCallbacks
    def submit(self, name: str, count: int = 2, recipients: int = 1):
        """
        Send C{count} messages to the relay with smtplib; each is
        acknowledged.

        @return: their subjects.
        """
        subjects = []
        for n in range(count):
            subject = f"fault-{n}-{name.replace(' ', '-')}"
            message = f"Subject: {subject}\r\nMessage-ID: <{n}.{self.port}@example.org>\r\n\r\nhello\r\n".encode()
            to = [f"ann{i}@example.com" for i in range(recipients)]
            refused = yield _sendWithSmtplib(self.port, "jo@example.org", to, message)
            self.assertEqual(refused, {})
            subjects.append(subject)
        return subjects

    def behave(self, smartHost: ScriptedSMTPFactory, script=None) -> None:
        """
        Give the smart host its new C{script} (by default, none: it
        behaves) for the connections to come.  A connection the relay
        keeps open for its retries goes on with the old script: close
        them, so that the next ones behave.
        """
        smartHost.script = script or {}
        for server in smartHost.servers:
            if server.transport is not None:
                server.transport.loseConnection()

    @defer.inlineCallbacks
    def allDelivered(self, relay, smartHost: ScriptedSMTPFactory, subjects: list[str], what: str):
        """
        Wait until every message is at the smart host and the relay's
        queue is empty.
        """
        yield waitUntil(
            lambda: all(any(f"Subject: {s}".encode() in m for m in smartHost.messages) for s in subjects),
            30,
            lambda: f"every message at the smart host after {what}:\n{relay.text()[-3000:]}",
        )
        yield waitUntil(lambda: spoolListing(self.spool)["queue"] == [], 20, "the queue to empty")

    def assertClean(self, relay) -> None:
        """
        No traceback, nothing unhandled, nothing returned to its sender.
        """
        self.assertEqual(relay.logLines("Traceback"), [])
        self.assertEqual(relay.logLines("Unhandled"), [])
        self.assertEqual(relay.logLines("Failed "), [])


class MailrelayFaultTests(FaultCases, _MailrelayHarness):
    """
    One relay per fault, two messages each.
    """

    @defer.inlineCallbacks
    def runFault(self, name: str):
        script, acknowledges, recipients = FAULTS[name]
        smartHost = ScriptedSMTPFactory(script)
        relay = yield self.startRelay(smartHost, "--smarthost-tls", "none")
        subjects = yield self.submit(name, 2, recipients)
        yield deferLater(reactor, FAULT_SECONDS, lambda: None)
        faulty = len(smartHost.servers)
        deliveredWhileFaulty = relay.logLines("Delivered ")
        faultCommands = list(smartHost.commands)
        self.behave(smartHost)
        yield self.allDelivered(relay, smartHost, subjects, repr(name))
        self.assertGreater(faulty, 0)
        if not acknowledges:
            self.assertEqual(deliveredWhileFaulty, [])
        if name == "trickled EHLO reply":
            self.assertEqual([c for c in faultCommands if c.upper().startswith(b"MAIL")], [])
        self.assertClean(relay)


def _sessions(smartHost: ScriptedSMTPFactory) -> list[bytes]:
    """
    @return: the commands of each connection, one C{bytes} per connection.
    """
    return [b"\n".join(server.commands) for server in smartHost.servers]


class MailrelayTLSTests(_MailrelayHarness):
    """
    The C{--smarthost-tls} policies against a smart host whose TLS is
    real, and fails: a handshake broken by the server, a certificate the
    relay does not trust, no STARTTLS at all.
    """

    def setUp(self):
        if trustme is None:
            missing("trustme is not installed")
        _MailrelayHarness.setUp(self)
        # The authority the relay trusts (--smarthost-ca), and one it
        # does not know.
        self.authority = trustme.CA()
        self.stranger = trustme.CA()
        self.authorityFile = os.path.join(self.scratch, "smarthost-ca.pem")
        self.authority.cert_pem.write_to_path(self.authorityFile)

    def serverTLS(self, authority, name: str = "127.0.0.1") -> StartTLS:
        """
        @return: a STARTTLS that starts TLS with a certificate for C{name}
            by C{authority}.
        """
        from twisted.internet.ssl import PrivateCertificate

        pem = authority.issue_cert(name).private_key_and_cert_chain_pem.bytes()
        return StartTLS(PrivateCertificate.loadPEM(pem).options())

    @defer.inlineCallbacks
    def test_mayFallsBackAfterHandshakeFailure(self):
        """
        Under C{may}, the smart host offers STARTTLS, says 220, and fails
        the handshake (a TLS alert to the relay's hello): the relay tries
        the same smart host again at once without TLS, as Postfix does,
        and every message is delivered, once.
        """
        smartHost = ScriptedSMTPFactory({b"STARTTLS": BrokenTLS()})
        relay = yield self.startRelay(smartHost, "--smarthost-tls", "may")
        subjects = yield self.submit("may broken handshake")
        yield self.allDelivered(relay, smartHost, subjects, "a broken handshake under may")
        sessions = _sessions(smartHost)
        self.assertTrue(any(b"STARTTLS" in session for session in sessions), sessions)
        for session in sessions:
            self.assertFalse(b"STARTTLS" in session and b"MAIL FROM" in session, session)
        for subject in subjects:
            self.assertEqual(sum(f"Subject: {subject}".encode() in m for m in smartHost.messages), 1, subject)
        self.assertFalse(any(server.tls for server in smartHost.servers))
        self.assertGreaterEqual(len(relay.logLines("trying it again without TLS")), 1)
        self.assertEqual(len(relay.logLines("Delivered ")), 2)
        self.assertClean(relay)

    @defer.inlineCallbacks
    def test_mayTakesAnyCertificate(self):
        """
        Under C{may}, a certificate the relay cannot check is no reason to
        go without TLS: the mail goes over TLS.
        """
        smartHost = ScriptedSMTPFactory({b"STARTTLS": self.serverTLS(self.stranger, "mx.example")})
        relay = yield self.startRelay(smartHost, "--smarthost-tls", "may")
        subjects = yield self.submit("may any certificate")
        yield self.allDelivered(relay, smartHost, subjects, "an unchecked certificate under may")
        self.assertTrue(all(server.tls for server in smartHost.servers if server.messages))
        self.assertEqual(relay.logLines("without TLS"), [])
        self.assertClean(relay)

    @defer.inlineCallbacks
    def keptUntilTLS(self, smartHost: ScriptedSMTPFactory, good: StartTLS, *arguments: str):
        """
        Under a policy that requires TLS, the smart host's TLS is not good
        enough: the relay tries it again and again, never sends MAIL, and
        keeps the mail queued (deferred, not returned to its sender).
        Then the smart host presents C{good}: every message is delivered,
        over TLS.
        """
        relay = yield self.startRelay(smartHost, *arguments)
        subjects = yield self.submit(" ".join(arguments))
        yield deferLater(reactor, FAULT_SECONDS, lambda: None)
        self.assertGreater(len(smartHost.servers), 1, "the relay should have tried again")
        self.assertEqual([c for c in smartHost.commands if c.upper().startswith((b"MAIL", b"RCPT", b"DATA"))], [])
        self.assertEqual(smartHost.messages, [])
        self.assertEqual(relay.logLines("Delivered "), [])
        self.assertEqual(relay.logLines("without TLS"), [])
        self.assertGreaterEqual(len(relay.logLines("Deferred ")), 2)
        self.assertEqual(len([name for name in spoolListing(self.spool)["queue"] if not name.endswith((".state", ".state.tmp"))]), 2)
        self.assertClean(relay)
        self.behave(smartHost, {b"STARTTLS": good})
        yield self.allDelivered(relay, smartHost, subjects, "TLS the relay accepts")
        receivers = [server for server in smartHost.servers if server.messages]
        self.assertTrue(receivers)
        self.assertTrue(all(server.tls for server in receivers))
        self.assertClean(relay)
        return relay

    def test_verifyUntrustedAuthority(self):
        """
        Under C{verify}, a certificate by an authority the relay does not
        trust fails the handshake: the mail stays queued, until the smart
        host's certificate is by the authority of C{--smarthost-ca}.
        """
        smartHost = ScriptedSMTPFactory({b"STARTTLS": self.serverTLS(self.stranger)})
        return self.keptUntilTLS(
            smartHost, self.serverTLS(self.authority), "--smarthost-tls", "verify", "--smarthost-ca", self.authorityFile
        )

    def test_verifyWrongName(self):
        """
        Under C{verify}, a certificate by a trusted authority for another
        name fails the handshake too.
        """
        smartHost = ScriptedSMTPFactory({b"STARTTLS": self.serverTLS(self.authority, "mx.example")})
        return self.keptUntilTLS(
            smartHost, self.serverTLS(self.authority), "--smarthost-tls", "verify", "--smarthost-ca", self.authorityFile
        )

    def test_encryptWithoutSTARTTLS(self):
        """
        Under C{encrypt}, a smart host that does not offer STARTTLS gets
        no mail; once it offers TLS (with any certificate: C{encrypt} does
        not check it), it gets it all.
        """
        smartHost = ScriptedSMTPFactory()
        return self.keptUntilTLS(smartHost, self.serverTLS(self.stranger, "mx.example"), "--smarthost-tls", "encrypt")
