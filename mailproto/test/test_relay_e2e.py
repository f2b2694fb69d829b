# -*- test-case-name: mailproto.test.test_relay_e2e -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The whole relay, end to end, over real loopback sockets: a client
(C{smtplib}) hands a message to the relay's ESMTP server, which queues it
in a spool directory; the relaying manager routes it with a real
twisted.names DNS server on 127.0.0.1 and delivers it to servers nobody
here wrote: aiosmtpd and Postfix's smtp-sink.

MX records carry no port, so every downstream server of a test listens on
one port number, on its own loopback address::

  ==========  ===========================  ==============================
  address     what listens there           names pointing at it
  ==========  ===========================  ==============================
  127.0.0.1   aiosmtpd (records, and       mx.a.test (a.test, sender.test)
              refuses nouser@a.test)
  127.0.0.2   smtp-sink (dumps)            mx.b.test (b.test, MX 20)
  127.0.0.3   nothing                      dead.b.test (b.test, MX 10)
  127.0.0.4   aiosmtpd answering DATA      mx.later.test (later.test)
              with 451 (once, or
              always)
  ::1         aiosmtpd                     mx.v6.test (AAAA only)
  ==========  ===========================  ==============================

C{null.test} has a null MX (RFC 7505).  Senders are at C{sender.test},
whose mail goes to the aiosmtpd on 127.0.0.1, so that the relay's
delivery status notifications can be read there.

Each test starts only the servers it needs.  Every wait is bounded
polling for an outcome (a deadline, never a sleep that decides a
result); daemons, threads and ports are stopped when each test ends, and
a test ends only when the relay has no attempt in flight and no
connection open.  The tests skip themselves when aiosmtpd or smtp-sink is
missing, and the IPv6 one when C{::1} cannot be bound.
"""

import email
import email.policy
import json
import logging
import os
import smtplib
import socket
import time

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.names import client, dns, server
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, TestCase

from mailproto._queue import replyToData
from mailproto.relaymanager import SmartHostESMTPRelayingManager
from mailproto.relay import QueueDeliveryFactory, RelayPolicy
from mailproto.relaymanager import MXCalculator, Queue, RetrySchedule
from mailproto.smtp import ESMTPFactory
from mailproto.test.test_interop_client import (
    Controller,
    _parseSinkDump,
    _privateDirectory,
    _Recorder,
    _spawnDaemon,
    _tool,
    _waitForGreeting,
)
from mailproto.test.test_mx import MemoryAuthority
from mailproto.test._peers import missing, unprivilegedUser

# How long a test waits for an outcome before it fails.
_DEADLINE = 10.0

# How often it looks.
_POLL = 0.02

# What the relay's ESMTP server calls itself.
_RELAY = "relay.test"

_SENDER = "sender@sender.test"

_ZONE = [
    (b"a.test", dns.Record_MX(10, b"mx.a.test")),
    (b"mx.a.test", dns.Record_A("127.0.0.1")),
    (b"sender.test", dns.Record_MX(10, b"mx.a.test")),
    (b"b.test", dns.Record_MX(10, b"dead.b.test")),
    (b"b.test", dns.Record_MX(20, b"mx.b.test")),
    (b"dead.b.test", dns.Record_A("127.0.0.3")),
    (b"mx.b.test", dns.Record_A("127.0.0.2")),
    (b"null.test", dns.Record_MX(0, b"")),
    (b"later.test", dns.Record_MX(10, b"mx.later.test")),
    (b"mx.later.test", dns.Record_A("127.0.0.4")),
    (b"v6.test", dns.Record_MX(10, b"mx.v6.test")),
    (b"mx.v6.test", dns.Record_AAAA("::1")),
]


def _bindable(host, port):
    """
    @return: whether a TCP socket can be bound to C{host}, C{port} now.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError:
        return False
    return True


def _ipv6():
    """
    @return: whether C{::1} can be bound.
    """
    return socket.has_ipv6 and _bindable("::1", 0)


def _commonPort(hosts):
    """
    @return: a port number nothing is bound to on any of C{hosts}.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if all(_bindable(host, port) for host in hosts):
            return port
    raise SkipTest(f"no port is free on all of {hosts}")


@defer.inlineCallbacks
def _until(predicate, what, timeout=_DEADLINE):
    """
    Poll C{predicate} until it returns something true, at most C{timeout}
    seconds.

    @param what: what is waited for, for the failure message; a callable
        is called for it then.
    @return: a L{Deferred} firing with what C{predicate} returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        yield deferLater(reactor, _POLL, lambda: None)


class _Downstream(_Recorder):
    """
    An aiosmtpd handler that records each message (see L{_Recorder}) and
    the client's address, refuses some recipients, and can refuse
    messages after their data.

    @ivar refused: the recipients refused with C{550 5.1.1}, lower case.
    @ivar dataReply: the reply to the data of the first C{refuseData}
        messages (of every message if C{refuseData} is L{None}), or
        L{None} to accept (and record) every message.
    @ivar dataRefused: how many messages got C{dataReply}.
    """

    def __init__(self, refused=(), dataReply=None, refuseData=None):
        _Recorder.__init__(self)
        self.refused = {address.lower() for address in refused}
        self.dataReply = dataReply
        self.refuseData = refuseData
        self.dataRefused = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.refused:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.dataReply is not None and (self.refuseData is None or self.dataRefused < self.refuseData):
            self.dataRefused += 1
            return self.dataReply
        reply = await _Recorder.handle_DATA(self, server, session, envelope)
        self.messages[-1].peer = session.peer
        return reply


def _message(subject, to):
    """
    @return: a message from L{_SENDER}, with CRLF line ends and a line
        that starts with a dot (stuffed on each hop, and taken out again).
    """
    return (
        f"From: Sender <{_SENDER}>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@client.test>\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "\r\n"
        f"The body of {subject}.\r\n"
        ".a line with a leading dot\r\n"
        "end\r\n"
    ).encode("ascii")


def _splitReceived(content):
    """
    @return: the first header field of C{content} (with its continuation
        lines, CRLF between them), and the rest.
    """
    lines = content.split(b"\r\n")
    end = 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    return b"\r\n".join(lines[:end]), b"\r\n".join(lines[end:])


def _smtplibSend(port, recipients, message):
    """
    In a thread: send C{message} from L{_SENDER} to the relay with
    C{smtplib}.

    @return: C{smtplib}'s refused recipients.
    """
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=_DEADLINE) as smtp:
        return smtp.sendmail(_SENDER, recipients, message)


def _smtplibRcpt(port, recipients):
    """
    In a thread: say MAIL and RCPT for each recipient to the relay, then
    RSET and QUIT.

    @return: the reply C{(code, text)} to each RCPT.
    """
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=_DEADLINE) as smtp:
        smtp.ehlo()
        code, text = smtp.mail(_SENDER)
        if code != 250:
            raise AssertionError(f"MAIL refused: {code} {text!r}")
        replies = [smtp.rcpt(recipient) for recipient in recipients]
        smtp.rset()
        return replies


def _smtplibSendWithOptions(port, mailOptions, recipients, message):
    """
    In a thread: send C{message} from L{_SENDER} to the relay with
    C{smtplib}, with parameters for MAIL and for each RCPT.

    @param recipients: C{(address, options)} pairs.
    """
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=_DEADLINE) as smtp:
        smtp.ehlo()
        replies = [smtp.mail(_SENDER, mailOptions)]
        replies.extend(smtp.rcpt(address, options) for address, options in recipients)
        replies.append(smtp.data(message))
        return replies


def _parse(content):
    return email.message_from_bytes(content, policy=email.policy.default)


class RelayEndToEndTests(TestCase):
    """
    A message in, through the queue, out to the mail exchangers the DNS
    names.
    """

    timeout = 20

    def setUp(self):
        if Controller is None:
            missing("aiosmtpd is not installed")
        self.ipv6 = _ipv6()
        hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"] + (["::1"] if self.ipv6 else [])
        self.port = _commonPort(hosts)

        factory = server.DNSServerFactory(authorities=[MemoryAuthority(_ZONE)])
        dnsPort = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(dnsPort.stopListening)
        self.resolver = client.Resolver(servers=[("127.0.0.1", dnsPort.getHost().port)], timeout=(2, 4))

    # -- the pieces ----------------------------------------------------------

    @defer.inlineCallbacks
    def startAiosmtpd(self, host, handler):
        """
        Start aiosmtpd on C{host}, port L{port}, in its own thread; stopped
        when the test ends.
        """
        # aiosmtpd logs every refusal through "mail.log"; keep it quiet.
        logger = logging.getLogger("mail.log")
        self.addCleanup(logger.setLevel, logger.level)
        logger.setLevel(logging.CRITICAL)
        controller = Controller(handler, hostname=host, port=self.port, decode_data=False, ident=f"aiosmtpd.{host}")
        yield deferToThread(controller.start)
        self.addCleanup(deferToThread, controller.stop)

    @defer.inlineCallbacks
    def startSink(self):
        """
        Start smtp-sink on 127.0.0.2, port L{port}, dumping every message
        into a directory; stopped when the test ends.

        @return: a L{Deferred} firing with the directory.
        """
        sink = _tool("smtp-sink")
        dumps = os.path.join(_privateDirectory(self, "mailproto-e2e-sink-"), "dump")
        os.mkdir(dumps)
        args = ["-h", "sink.test"]
        if os.geteuid() == 0:
            # smtp-sink insists on dropping root; its user must be able
            # to write the dumps.
            user = unprivilegedUser()
            os.chown(dumps, user.pw_uid, user.pw_gid)
            args += ["-u", user.pw_name]
        log = os.path.abspath(self.mktemp())
        args += ["-d", os.path.join(dumps, "msg."), f"127.0.0.2:{self.port}", "16"]
        _spawnDaemon(self, sink, args, log)
        yield _waitForGreeting(self.port, "smtp-sink", log, host="127.0.0.2")
        return dumps

    def startRelay(self, policy=None, schedule=RetrySchedule(300, 4000, 3600)):
        """
        Start the relay: its queue in a new spool directory, its ESMTP
        server on 127.0.0.1 (L{relayPort}) and its relaying manager,
        sending to port L{port} of the hosts the DNS names.

        @param policy: the L{RelayPolicy}; loopback clients relay if
            L{None}.
        @param schedule: the L{RetrySchedule}.
        """
        self.spool = os.path.abspath(self.mktemp())
        self.queue = Queue(self.spool, reactor)
        self.queue.recover()

        factory = ESMTPFactory(
            deliveryFactory=QueueDeliveryFactory(self.queue, policy or RelayPolicy()), domain=_RELAY.encode("ascii")
        )
        # The wrapper keeps the open server connections, to wait for them.
        wrapper = WrappingFactory(factory)
        listening = reactor.listenTCP(0, wrapper, interface="127.0.0.1")
        self.relayPort = listening.getHost().port

        @defer.inlineCallbacks
        def stopServer():
            yield _until(lambda: not wrapper.protocols, "the relay's server connections to close")
            yield listening.stopListening()

        self.addCleanup(stopServer)

        self.mxcalc = MXCalculator(self.resolver, clock=reactor)
        manager = self.manager = SmartHostESMTPRelayingManager(
            self.queue,
            10,
            10,
            hostname=_RELAY,
            mxcalc=self.mxcalc,
            port=self.port,
            reactor=reactor,
            schedule=schedule,
            connectTimeout=5,
            timeout=_DEADLINE,
        )
        manager.start()

        @defer.inlineCallbacks
        def stopManager():
            manager.stop()
            yield manager.whenIdle().addTimeout(_DEADLINE, reactor)
            yield _until(lambda: not manager.managed, "the relay's client connections to close")

        self.addCleanup(stopManager)

    # -- looking at the outcome ----------------------------------------------

    def queued(self):
        """
        @return: the names in the queue directory, sorted.
        """
        return sorted(os.listdir(os.path.join(self.spool, "queue")))

    @defer.inlineCallbacks
    def settled(self, outcome, what):
        """
        Wait until C{outcome()} holds, then until the relay has nothing in
        flight and no connection open.
        """
        result = yield _until(outcome, what)
        yield self.manager.whenIdle().addTimeout(_DEADLINE, reactor)
        yield _until(lambda: not self.manager.managed, "the relay's client connections to close")
        return result

    def assertRelayed(self, content, original, forRecipient=None):
        """
        C{content} is C{original} with the relay's C{Received:} header on
        top, CRLF line ends.
        """
        received, rest = _splitReceived(content)
        self.assertEqual(rest, original)
        self.assertTrue(
            received.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test (mailproto "), received
        )
        self.assertIn(b") with ESMTP", received)
        if forRecipient is None:
            self.assertNotIn(b"for <", received)
        else:
            self.assertIn(b"\tfor <" + forRecipient + b">;", received)

    def assertReport(self, message, recipient, status, original):
        """
        C{message} (as aiosmtpd recorded it) is a failure report from C{<>}
        to L{_SENDER} about C{recipient}, with the original message's
        headers returned.

        @return: the recipient's block of the C{message/delivery-status}
            part.
        """
        self.assertEqual(message.mailFrom, "<>")
        self.assertEqual(message.rcptTos, [_SENDER])
        report = _parse(message.content)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        parts = list(report.iter_parts())
        types = [part.get_content_type() for part in parts]
        self.assertEqual(types[:2], ["text/plain", "message/delivery-status"], types)
        blocks = parts[1].get_payload()
        recipients = [block for block in blocks if block.get("Final-Recipient")]
        self.assertEqual(len(recipients), 1, [str(b) for b in blocks])
        [block] = recipients
        addressType, _, address = block["Final-Recipient"].partition(";")
        self.assertEqual((addressType.strip().lower(), address.strip()), ("rfc822", recipient))
        self.assertEqual(block["Action"], "failed")
        self.assertEqual(block["Status"], status)
        # The original comes back, whole (message/rfc822) or its header
        # section (text/rfc822-headers), below the relay's Received: each
        # of its header lines is in the third part, as it was.
        self.assertIn(types[2], ("message/rfc822", "text/rfc822-headers"))
        rawParts = message.content.split(b"\r\n--" + report.get_boundary().encode("ascii"))
        returned = rawParts[3]
        self.assertIn(b"\r\n\r\nReceived: from client.test ([127.0.0.1])\r\n\tby relay.test (mailproto ", returned)
        for line in original.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            self.assertIn(b"\r\n" + line + b"\r\n", returned)
        return block

    # -- the cases ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_twoDomainsDeadMXSkipped(self):
        """
        A message for a.test and b.test leaves the relay for both: a.test's
        aiosmtpd gets it, and for b.test, whose first MX (127.0.0.3) refuses
        connections, the next MX's smtp-sink does; the dead host is marked
        bad, and the queue is empty.
        """
        recorder = _Downstream()
        yield self.startAiosmtpd("127.0.0.1", recorder)
        dumps = yield self.startSink()
        self.startRelay()
        original = _message("two domains", "alice@a.test, bob@b.test")

        refused = yield deferToThread(_smtplibSend, self.relayPort, ["alice@a.test", "bob@b.test"], original)
        self.assertEqual(refused, {})
        yield self.settled(
            lambda: recorder.messages and os.listdir(dumps) and not self.queued(),
            lambda: f"delivery: aiosmtpd {len(recorder.messages)}, smtp-sink {os.listdir(dumps)}, "
            f"queue {self.queued()}",
        )

        [received] = recorder.messages
        self.assertEqual((received.mailFrom, received.rcptTos, received.helo), (_SENDER, ["alice@a.test"], _RELAY))
        self.assertRelayed(received.content, original)

        [name] = os.listdir(dumps)
        with open(os.path.join(dumps, name), "rb") as f:
            fields, dumped = _parseSinkDump(f.read())
        self.assertEqual(fields["X-Mail-Args"], [b"<" + _SENDER.encode() + b">"])
        self.assertEqual(fields["X-Rcpt-Args"], [b"<bob@b.test>"])
        self.assertEqual(fields["X-Helo-Args"], [_RELAY.encode()])
        self.assertRelayed(dumped.replace(b"\n", b"\r\n"), original)

        self.assertIn("dead.b.test", self.mxcalc.badMXs)
        self.assertNotIn("mx.b.test", self.mxcalc.badMXs)
        self.assertEqual(self.queued(), [])
        self.assertEqual(os.listdir(os.path.join(self.spool, "tmp")), [])
        self.assertEqual((self.manager.stats["delivered"], self.manager.stats["reports"]), (2, 0))

    @defer.inlineCallbacks
    def test_nullMXBounces(self):
        """
        Mail for a domain with a null MX fails at once with C{5.1.10}: the
        relay queues a report from C{<>} to the sender, which the sender's
        MX (aiosmtpd) gets, with the original's headers.
        """
        recorder = _Downstream()
        yield self.startAiosmtpd("127.0.0.1", recorder)
        self.startRelay()
        original = _message("null mx", "nobody@null.test")

        refused = yield deferToThread(_smtplibSend, self.relayPort, ["nobody@null.test"], original)
        self.assertEqual(refused, {})
        yield self.settled(
            lambda: recorder.messages and not self.queued(),
            lambda: f"the report: aiosmtpd {len(recorder.messages)}, queue {self.queued()}",
        )

        [report] = recorder.messages
        block = self.assertReport(report, "nobody@null.test", "5.1.10", original)
        self.assertIn("null", block.get("Diagnostic-Code", "").lower())
        self.assertEqual(
            (self.manager.stats["delivered"], self.manager.stats["failed"], self.manager.stats["reports"]), (1, 1, 1)
        )

    @defer.inlineCallbacks
    def test_refusedRecipientBouncesOnce(self):
        """
        Of two recipients at a.test, aiosmtpd refuses one with C{550 5.1.1}:
        the other gets the message, and the sender exactly one report, about
        the refused one, quoting aiosmtpd's reply.
        """
        recorder = _Downstream(refused=["nouser@a.test"])
        yield self.startAiosmtpd("127.0.0.1", recorder)
        self.startRelay()
        original = _message("refused recipient", "alice@a.test, nouser@a.test")

        refused = yield deferToThread(_smtplibSend, self.relayPort, ["alice@a.test", "nouser@a.test"], original)
        self.assertEqual(refused, {})
        yield self.settled(
            lambda: len(recorder.messages) >= 2 and not self.queued(),
            lambda: f"delivery and report: aiosmtpd {[m.mailFrom for m in recorder.messages]}, queue {self.queued()}",
        )

        delivered = [m for m in recorder.messages if m.mailFrom == _SENDER]
        reports = [m for m in recorder.messages if m.mailFrom == "<>"]
        self.assertEqual((len(delivered), len(reports)), (1, 1), [m.mailFrom for m in recorder.messages])
        self.assertEqual(delivered[0].rcptTos, ["alice@a.test"])
        self.assertRelayed(delivered[0].content, original)
        block = self.assertReport(reports[0], "nouser@a.test", "5.1.1", original)
        self.assertIn("550 5.1.1 no such user", block["Diagnostic-Code"])
        self.assertIn("mx.a.test", block.get("Remote-MTA", ""))
        # Delivered: alice's copy, and the report.
        self.assertEqual(
            (self.manager.stats["delivered"], self.manager.stats["failed"], self.manager.stats["reports"]), (2, 1, 1)
        )

    @defer.inlineCallbacks
    def test_reportFollowsDSNParameters(self):
        """
        Of three recipients, one is delivered, one refused by aiosmtpd with
        C{NOTIFY=NEVER} and one at a null MX domain with C{NOTIFY=FAILURE}
        and an C{ORCPT}: the one report is about the last only, carries the
        C{ENVID} and C{ORCPT}, and returns only the headers (C{RET=HDRS}).
        """
        recorder = _Downstream(refused=["nouser@a.test"])
        yield self.startAiosmtpd("127.0.0.1", recorder)
        self.startRelay()
        original = _message("dsn report", "alice@a.test, nouser@a.test, nobody@null.test")

        replies = yield deferToThread(
            _smtplibSendWithOptions,
            self.relayPort,
            ["RET=HDRS", "ENVID=e2e-envid"],
            [
                ("alice@a.test", []),
                ("nouser@a.test", ["NOTIFY=NEVER"]),
                ("nobody@null.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;orig-nobody@null.test"]),
            ],
            original,
        )
        self.assertEqual([code for code, text in replies], [250, 250, 250, 250, 250], replies)
        yield self.settled(
            lambda: len(recorder.messages) >= 2 and not self.queued(),
            lambda: f"delivery and report: aiosmtpd {[m.mailFrom for m in recorder.messages]}, queue {self.queued()}",
        )

        delivered = [m for m in recorder.messages if m.mailFrom == _SENDER]
        reports = [m for m in recorder.messages if m.mailFrom == "<>"]
        self.assertEqual([m.rcptTos for m in delivered], [["alice@a.test"]])
        self.assertEqual(len(reports), 1, [m.mailFrom for m in recorder.messages])
        block = self.assertReport(reports[0], "nobody@null.test", "5.1.10", original)
        self.assertEqual(block["Original-Recipient"].replace(" ", ""), "rfc822;orig-nobody@null.test")
        report = _parse(reports[0].content)
        [status] = [part for part in report.iter_parts() if part.get_content_type() == "message/delivery-status"]
        self.assertEqual(status.get_payload()[0]["Original-Envelope-Id"], "e2e-envid")
        self.assertEqual(
            [part.get_content_type() for part in report.iter_parts()][2], "text/rfc822-headers", "RET=HDRS not honoured"
        )
        self.assertNotIn(b"The body of dsn report", reports[0].content)
        # Delivered: alice's copy, and the report.
        self.assertEqual(
            (self.manager.stats["delivered"], self.manager.stats["failed"], self.manager.stats["reports"]), (2, 2, 1)
        )

    @defer.inlineCallbacks
    def test_ipv6Only(self):
        """
        A domain whose MX host has only an AAAA record (C{::1}) gets its mail
        over IPv6.
        """
        if not self.ipv6:
            raise SkipTest("::1 cannot be bound")
        recorder = _Downstream()
        yield self.startAiosmtpd("::1", recorder)
        self.startRelay()
        original = _message("ipv6", "carol@v6.test")

        refused = yield deferToThread(_smtplibSend, self.relayPort, ["carol@v6.test"], original)
        self.assertEqual(refused, {})
        yield self.settled(
            lambda: recorder.messages and not self.queued(),
            lambda: f"delivery over IPv6: aiosmtpd {len(recorder.messages)}, queue {self.queued()}",
        )

        [received] = recorder.messages
        self.assertEqual(received.peer[0], "::1")
        self.assertEqual((received.mailFrom, received.rcptTos), (_SENDER, ["carol@v6.test"]))
        self.assertRelayed(received.content, original, forRecipient=b"carol@v6.test")

    @defer.inlineCallbacks
    def test_temporaryFailureStaysQueued(self):
        """
        A server answering the data with C{451} leaves the message queued:
        its state file says one attempt, a next attempt in the future and
        the 451; no report is queued or sent.
        """
        later = _Downstream(dataReply="451 4.3.0 try later")
        yield self.startAiosmtpd("127.0.0.4", later)
        # Where a report to the sender would go.
        senderMX = _Downstream()
        yield self.startAiosmtpd("127.0.0.1", senderMX)
        self.startRelay()
        original = _message("try later", "dave@later.test")

        before = time.time()
        refused = yield deferToThread(_smtplibSend, self.relayPort, ["dave@later.test"], original)
        self.assertEqual(refused, {})

        def stateWritten():
            names = [name for name in self.queued() if name.endswith(".state")]
            if not names:
                return None
            with open(os.path.join(self.spool, "queue", names[0]), "rb") as f:
                return names[0], json.loads(f.read())

        name, state = yield self.settled(stateWritten, lambda: f"a state file: queue {self.queued()}")

        queueID = name[: -len(".state")]
        self.assertEqual(self.queued(), [queueID, name])
        self.assertEqual(later.dataRefused, 1)
        self.assertEqual(state["attempts"], 1)
        self.assertGreater(state["nextAttempt"], time.time())
        self.assertGreaterEqual(state["nextAttempt"], before + 300)
        self.assertEqual(state["lastReply"]["code"], 451)
        self.assertIn("try later", " ".join(state["lastReply"]["lines"]))
        self.assertEqual([r["state"] for r in state["recipients"]], ["waiting"])
        self.assertEqual(state["recipients"][0]["lastReply"], state["lastReply"])
        self.assertEqual(state["recipients"][0]["lastHost"], "mx.later.test")
        self.assertEqual(senderMX.messages, [])
        self.assertEqual(self.manager.stats["reports"], 0)
        self.assertEqual(self.manager.stats["deferred"], 1)

        # After a restart, the queue has the message with its progress.
        recovered = Queue(self.spool, reactor)
        self.assertEqual(recovered.recover(), {"queued": 1, "removed": 0, "corrupt": 0})
        envelope = recovered.getEnvelope(queueID)
        self.assertEqual(
            (envelope.attempts, envelope.nextAttempt, replyToData(envelope.lastReply)), (1, state["nextAttempt"], state["lastReply"])
        )
        self.assertEqual([r.address for r in envelope.waiting], [b"dave@later.test"])

    @defer.inlineCallbacks
    def test_retriedAfterTemporaryFailure(self):
        """
        A message deferred with C{451} is tried again when the retry
        schedule says, and delivered then; no report is sent.
        """
        later = _Downstream(dataReply="451 4.3.0 try later", refuseData=1)
        yield self.startAiosmtpd("127.0.0.4", later)
        senderMX = _Downstream()
        yield self.startAiosmtpd("127.0.0.1", senderMX)
        self.startRelay(schedule=RetrySchedule(0.5, 0.5, 3600))
        original = _message("retried", "dave@later.test")

        started = time.monotonic()
        refused = yield deferToThread(_smtplibSend, self.relayPort, ["dave@later.test"], original)
        self.assertEqual(refused, {})
        yield self.settled(
            lambda: later.messages and not self.queued(),
            lambda: f"the second attempt: refused {later.dataRefused}, delivered {len(later.messages)}, "
            f"queue {self.queued()}",
        )

        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual(later.dataRefused, 1)
        [received] = later.messages
        self.assertRelayed(received.content, original, forRecipient=b"dave@later.test")
        self.assertEqual(senderMX.messages, [])
        self.assertEqual(
            (self.manager.stats["deferred"], self.manager.stats["delivered"], self.manager.stats["reports"]), (1, 1, 0)
        )

    @defer.inlineCallbacks
    def test_dsnParametersPassedOn(self):
        """
        The DSN parameters (RET, ENVID, NOTIFY, ORCPT) go on to smtp-sink,
        which offers DSN, and are left out for aiosmtpd, which does not
        (and would refuse them).
        """
        recorder = _Downstream()
        yield self.startAiosmtpd("127.0.0.1", recorder)
        dumps = yield self.startSink()
        self.startRelay()
        original = _message("dsn parameters", "alice@a.test, bob@b.test")

        replies = yield deferToThread(
            _smtplibSendWithOptions,
            self.relayPort,
            ["RET=HDRS", "ENVID=e2e-envid"],
            [
                (address, ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;orig-{address}"])
                for address in ("alice@a.test", "bob@b.test")
            ],
            original,
        )
        self.assertEqual([code for code, text in replies], [250, 250, 250, 250], replies)
        yield self.settled(
            lambda: recorder.messages and os.listdir(dumps) and not self.queued(),
            lambda: f"delivery: aiosmtpd {len(recorder.messages)}, smtp-sink {os.listdir(dumps)}, "
            f"queue {self.queued()}",
        )

        [name] = os.listdir(dumps)
        with open(os.path.join(dumps, name), "rb") as f:
            fields, dumped = _parseSinkDump(f.read())
        [mailArgs] = fields["X-Mail-Args"]
        [rcptArgs] = fields["X-Rcpt-Args"]
        self.assertEqual(mailArgs.split()[0], b"<" + _SENDER.encode() + b">")
        self.assertEqual(set(mailArgs.split()[1:]), {b"RET=HDRS", b"ENVID=e2e-envid"})
        self.assertEqual(rcptArgs.split()[0], b"<bob@b.test>")
        self.assertEqual(set(rcptArgs.split()[1:]), {b"NOTIFY=SUCCESS,FAILURE", b"ORCPT=rfc822;orig-bob@b.test"})
        self.assertRelayed(dumped.replace(b"\n", b"\r\n"), original)

        # alice asked to hear of the delivery, and aiosmtpd cannot say:
        # the relay's "relayed" report goes to the sender (also aiosmtpd).
        [received] = [m for m in recorder.messages if m.mailFrom == _SENDER]
        [report] = [m for m in recorder.messages if m.mailFrom == "<>"]
        self.assertEqual(report.rcptTos, [_SENDER])
        self.assertIn(b"Action: relayed", report.content)
        self.assertEqual(received.rcptTos, ["alice@a.test"])
        self.assertEqual(received.rcptOptions, [])
        self.assertEqual([o for o in received.mailOptions if not o.startswith("SIZE=")], [])
        self.assertRelayed(received.content, original)
        # The two copies, and the report.
        self.assertEqual(self.manager.stats["delivered"], 3)

    @defer.inlineCallbacks
    def test_relayedReportForNonDSNServer(self):
        """
        A recipient with C{NOTIFY=SUCCESS} relayed to a server that does
        not offer DSN (aiosmtpd) gets its sender a C{relayed} report (RFC
        3461 section 5.2.2), as Postfix's "relayed to non-DSN-aware mailer".
        """
        recorder = _Downstream()
        yield self.startAiosmtpd("127.0.0.1", recorder)
        self.startRelay()
        original = _message("relayed report", "alice@a.test")

        replies = yield deferToThread(
            _smtplibSendWithOptions, self.relayPort, [], [("alice@a.test", ["NOTIFY=SUCCESS,FAILURE"])], original
        )
        self.assertEqual([code for code, text in replies], [250, 250, 250], replies)
        # A report is queued before the message leaves the queue: once the
        # queue is empty, every report has been delivered too.
        yield self.settled(
            lambda: recorder.messages and not self.queued(),
            lambda: f"delivery: aiosmtpd {len(recorder.messages)}, queue {self.queued()}",
        )

        delivered = [m for m in recorder.messages if m.mailFrom == _SENDER]
        self.assertEqual([m.rcptTos for m in delivered], [["alice@a.test"]])
        reports = [m for m in recorder.messages if m.mailFrom == "<>"]
        self.assertEqual(len(reports), 1, "no relayed report")
        self.assertEqual(reports[0].rcptTos, [_SENDER])
        report = _parse(reports[0].content)
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        [status] = [part for part in report.iter_parts() if part.get_content_type() == "message/delivery-status"]
        [block] = [block for block in status.get_payload() if block.get("Final-Recipient")]
        self.assertEqual(block["Action"], "relayed")
        self.assertTrue(block["Status"].startswith("2."), block["Status"])

    @defer.inlineCallbacks
    def test_relayRefusedWithoutNetworks(self):
        """
        With no client network allowed to relay, the relay answers
        C{554 5.7.1} to a recipient in an outside domain, even from
        loopback; nothing is queued.
        """
        self.startRelay(RelayPolicy(networks=[]))
        [(code, text)] = yield deferToThread(_smtplibRcpt, self.relayPort, ["someone@outside.test"])
        self.assertEqual(code, 554)
        self.assertTrue(text.startswith(b"5.7.1"), text)
        self.assertEqual(self.queued(), [])

    @defer.inlineCallbacks
    def test_relayInboundDomain(self):
        """
        With no client network allowed to relay but a.test an inbound
        domain, the relay takes mail for a.test (and delivers it) while
        refusing an outside domain; with the default networks (loopback)
        and the same inbound domain, the outside domain is accepted from
        loopback.
        """
        recorder = _Downstream()
        yield self.startAiosmtpd("127.0.0.1", recorder)
        self.startRelay(RelayPolicy(networks=[], domains=["a.test"]))
        replies = yield deferToThread(_smtplibRcpt, self.relayPort, ["alice@a.test", "someone@outside.test"])
        self.assertEqual([code for code, text in replies], [250, 554])
        self.assertTrue(replies[1][1].startswith(b"5.7.1"), replies)

        original = _message("inbound", "alice@a.test")
        refused = yield deferToThread(_smtplibSend, self.relayPort, ["alice@a.test"], original)
        self.assertEqual(refused, {})
        yield self.settled(
            lambda: recorder.messages and not self.queued(),
            lambda: f"delivery: aiosmtpd {len(recorder.messages)}, queue {self.queued()}",
        )
        [received] = recorder.messages
        self.assertRelayed(received.content, original, forRecipient=b"alice@a.test")

        self.startRelay(RelayPolicy(domains=["a.test"]))
        [(code, text)] = yield deferToThread(_smtplibRcpt, self.relayPort, ["someone@outside.test"])
        self.assertEqual(code, 250, text)
