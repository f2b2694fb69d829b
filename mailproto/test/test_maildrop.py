# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._commandline._maildrop}: C{mailproto sendmail}.

Option parsing and the header work run in memory; the command runs in
this process against a scripted SMTP server on 127.0.0.1; and, as a shell
pipeline, C{printf ... | python -m mailproto sendmail -t} in a child
process, with a C{twistd mailrelay} child up, and down (the message
dropped into its spool, then sent once the relay starts).
"""

from __future__ import annotations

import io
import json
import os
import sys

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

import mailproto
from mailproto._commandline import _maildrop
from mailproto._commandline._maildrop import (
    EX_DATAERR,
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    SendmailError,
    parseArguments,
    prepareMessage,
    sendmailCommand,
)
from mailproto.test.test_daemon import RelayProcess, freePort, spoolListing, waitUntil
from mailproto.testing import ScriptedSMTPFactory

ENV = {"MAILPROTO_ORIGIN": "host.test"}


def prepare(message: bytes, **kw):
    """
    @return: the prepared message and its text.
    """
    kw.setdefault("addFrom", b"From: me@host.test")
    prepared = prepareMessage(io.BytesIO(message), io.BytesIO(), **kw)
    return prepared, prepared.file.read()


class ArgumentsTests(SynchronousTestCase):
    """
    L{parseArguments} reads sendmail(8) command lines.
    """

    def test_common(self):
        """
        The options cron, PHP and scripts pass: C{-t}, C{-i}/C{-oi},
        C{-f}, C{-F}, grouped or with their values attached; the no-op
        ones are taken and listed as ignored.
        """
        config = parseArguments(["-t", "-oi", "-f", "<>", "-FCron Daemon", "-odi", "-oem", "-bm", "-B8BITMIME", "a@b.example"], ENV)
        self.assertEqual(
            (config.extract, config.ignoreDots, config.sender, config.fullName, config.bodyType, config.recipients),
            (True, True, "<>", "Cron Daemon", "8BITMIME", ["a@b.example"]),
        )
        self.assertEqual(config.ignored, ["-odi", "-oem", "-bm"])
        config = parseArguments(["-ti", "-fme@x.example", "--", "-dash@x.example"], ENV)
        self.assertEqual((config.extract, config.ignoreDots, config.sender, config.recipients), (True, True, "me@x.example", ["-dash@x.example"]))
        # Recipients and options in any order.
        config = parseArguments(["root", "-i"], ENV)
        self.assertEqual((config.ignoreDots, config.recipients), (True, ["root"]))

    def test_serverAndSpool(self):
        """
        C{--server} and C{--spool} win over C{MAILPROTO_SUBMIT} and
        C{MAILPROTO_SPOOL}, which win over the defaults.
        """
        config = parseArguments([], {})
        self.assertEqual((config.server, config.spool), ("127.0.0.1:25", None))
        env = {"MAILPROTO_SUBMIT": "unix:/run/relay.sock", "MAILPROTO_SPOOL": "/var/spool/x"}
        config = parseArguments([], env)
        self.assertEqual((config.server, config.spool), ("unix:/run/relay.sock", "/var/spool/x"))
        config = parseArguments(["--server", "[::1]:2525", "--spool", "s"], env)
        self.assertEqual((config.server, config.spool), ("[::1]:2525", "s"))
        self.assertEqual(_maildrop.parseServer("[::1]:2525"), ("tcp", "::1", 2525))
        self.assertEqual(_maildrop.parseServer("relay.example"), ("tcp", "relay.example", 25))

    def test_usageErrors(self):
        """
        Unknown and unsupported options, and a bad server, are
        L{EX_USAGE}.
        """
        for argv in (["-bp"], ["-q"], ["-q30m"], ["-X", "log"], ["-Z"], ["--server", "host:99999"], ["--server", "unix:"], ["-B", "binary"]):
            with self.assertRaises(SendmailError, msg=argv) as caught:
                parseArguments(argv, ENV)
            self.assertEqual(caught.exception.status, EX_USAGE, argv)
            self.assertNotIn("\n", caught.exception.message)


class PrepareTests(SynchronousTestCase):
    """
    L{prepareMessage} fixes up the header and the line ends.
    """

    def test_extractAndStripBcc(self):
        """
        With C{extract}, the addresses of C{To:}, C{Cc:} and C{Bcc:} are
        the recipients (groups too); C{Bcc:}, folded or not, is removed
        whether or not recipients are extracted.
        """
        message = (
            b"To: Ann <ann@example.com>, bob@example.com\n"
            b"Cc: friends: carl@example.com;\n"
            b"Bcc: dan@example.com,\n"
            b"\teve@example.com\n"
            b"Subject: hi\n"
            b"\n"
            b"body\n"
        )
        prepared, text = prepare(message, extract=True)
        self.assertEqual(prepared.recipients, ["ann@example.com", "bob@example.com", "carl@example.com", "dan@example.com", "eve@example.com"])
        self.assertNotIn(b"Bcc", text)
        self.assertNotIn(b"eve@", text)
        self.assertTrue(text.startswith(b"To: Ann <ann@example.com>, bob@example.com\r\nCc: friends: carl@example.com;\r\nSubject: hi\r\n"), text)
        self.assertTrue(text.endswith(b"\r\n\r\nbody\r\n"), text)
        prepared, text = prepare(message)
        self.assertEqual(prepared.recipients, [])
        self.assertNotIn(b"Bcc", text)

    def test_resent(self):
        """
        A message with C{Resent-To:} (or C{-Cc:}, C{-Bcc:}) goes to those,
        not to its C{To:}.
        """
        prepared, text = prepare(b"To: old@example.com\nResent-To: new@example.com\nResent-Bcc: hidden@example.com\n\nx\n", extract=True)
        self.assertEqual(prepared.recipients, ["new@example.com", "hidden@example.com"])
        self.assertNotIn(b"hidden", text)

    def test_addedFields(self):
        """
        C{From:}, C{Date:} and C{Message-ID:} are added, after the others,
        only when missing.
        """
        prepared, text = prepare(b"Subject: x\n\nbody", addFrom=b"From: Jo <jo@host.test>")
        self.assertEqual(prepared.added, ["From", "Date", "Message-ID"])
        header, body = text.split(b"\r\n\r\n", 1)
        lines = header.split(b"\r\n")
        self.assertEqual(lines[:2], [b"Subject: x", b"From: Jo <jo@host.test>"])
        self.assertTrue(lines[2].startswith(b"Date: "))
        self.assertTrue(lines[3].startswith(b"Message-ID: <"))
        self.assertEqual(body, b"body\r\n")
        prepared, text = prepare(b"from: a@b.example\nDATE: x\nMessage-Id: <1@x>\n\nbody\n")
        self.assertEqual(prepared.added, [])
        self.assertEqual(text, b"from: a@b.example\r\nDATE: x\r\nMessage-Id: <1@x>\r\n\r\nbody\r\n")

    def test_fromField(self):
        """
        The full name of C{-F} goes into the C{From:} added, encoded when
        it is not ASCII.
        """
        self.assertEqual(_maildrop.fromField("Cron Daemon", b"root@host.test"), b"From: Cron Daemon <root@host.test>")
        self.assertEqual(_maildrop.fromField(None, b"root@host.test"), b"From: root@host.test")
        self.assertEqual(_maildrop.fromField("Jö", b"jo@host.test"), b"From: =?utf-8?b?SsO2?= <jo@host.test>")

    def test_dots(self):
        """
        A lone C{.} line ends the message, unless C{ignoreDots}; a line
        beginning with a dot is content.
        """
        message = b"Subject: x\n\none\n.dot\n.\nafter\n"
        _, text = prepare(message)
        self.assertTrue(text.endswith(b"\r\n\r\none\r\n.dot\r\n"), text)
        _, text = prepare(message, ignoreDots=True)
        self.assertTrue(text.endswith(b"\r\n\r\none\r\n.dot\r\n.\r\nafter\r\n"), text)
        _, text = prepare(b"Subject: x\r\n\r\none\r\n.\r\nafter\r\n")
        self.assertTrue(text.endswith(b"\r\n\r\none\r\n"), text)

    def test_lineEnds(self):
        """
        Bare LF and bare CR become CRLF, as the server's normalising policy
        does; a last line without an end gets one.
        """
        _, text = prepare(b"Subject: x\r\n\r\na\rb\nc\r\nd", ignoreDots=True)
        self.assertTrue(text.endswith(b"\r\n\r\na\r\nb\r\nc\r\nd\r\n"), text)

    def test_noHeader(self):
        """
        A message whose first line is not a header field gets an empty line
        between the fields added and it; an mbox C{From } first line is
        dropped.
        """
        _, text = prepare(b"just text\nmore\n")
        header, body = text.split(b"\r\n\r\n", 1)
        self.assertTrue(header.startswith(b"From: me@host.test\r\n"))
        self.assertEqual(body, b"just text\r\nmore\r\n")
        _, text = prepare(b"From me@x Mon Jan  1 00:00:00 2026\nSubject: y\n\nz\n")
        self.assertTrue(text.startswith(b"Subject: y\r\n"), text)

    def test_eightBit(self):
        """
        A message with octets above 127 is said to be 8-bit.
        """
        self.assertFalse(prepare(b"Subject: x\n\nplain\n")[0].eightBit)
        self.assertTrue(prepare(b"Subject: x\n\ncaf\xc3\xa9\n")[0].eightBit)

    def test_bigBodyStreams(self):
        """
        A long body, with lines longer than a read, comes out whole.
        """
        body = (b"x" * 200000 + b"\n") * 5
        prepared, text = prepare(b"Subject: big\n\n" + body)
        self.assertTrue(text.endswith(body.replace(b"\n", b"\r\n")))
        self.assertEqual(prepared.size, len(text))

    def test_badHeaders(self):
        """
        An address list that does not parse (with C{-t}), or a header
        larger than L{_maildrop.MAX_HEADER}, is L{EX_DATAERR}.
        """
        with self.assertRaises(SendmailError) as caught:
            prepare(b"To: <<<\n\nx\n", extract=True)
        self.assertEqual(caught.exception.status, EX_DATAERR)
        with self.assertRaises(SendmailError) as caught:
            prepare(b"X-Big: " + b"y" * (_maildrop.MAX_HEADER + 10) + b"\n\nx\n")
        self.assertEqual(caught.exception.status, EX_DATAERR)


class CommandTests(TestCase):
    """
    L{sendmailCommand} in this process, against a scripted SMTP server on
    127.0.0.1.
    """

    def listen(self, script=None) -> tuple[ScriptedSMTPFactory, str]:
        factory = ScriptedSMTPFactory(script or {}, extensions=(b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SIZE 0"))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, f"127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def command(self, argv, message=b"Subject: hi\n\nhello\n", env=ENV):
        stdout, stderr = io.StringIO(), io.StringIO()
        status = yield sendmailCommand(argv, reactor, stdout, stderr, io.BytesIO(message), dict(env))
        return status, stdout.getvalue(), stderr.getvalue()

    @defer.inlineCallbacks
    def test_sent(self):
        """
        The message goes to the relay: the default sender is the user at
        the origin domain, an unqualified recipient gets the origin domain,
        C{-t} adds the header's recipients; exit status 0, nothing said.
        """
        factory, server = self.listen()
        status, out, err = yield self.command(["--server", server, "-t", "root"], b"To: ann@example.com\nBcc: bob@example.com\nSubject: hi\n\nhello\n")
        self.assertEqual((status, out, err), (EX_OK, "", ""))
        user = _maildrop.localUser(ENV).name
        self.assertIn(f"MAIL FROM:<{user}@host.test> SIZE=".encode(), factory.commands[1])
        self.assertEqual(factory.commands[2:5], [b"RCPT TO:<root@host.test>", b"RCPT TO:<ann@example.com>", b"RCPT TO:<bob@example.com>"])
        [message] = factory.messages
        self.assertTrue(message.startswith(b"To: ann@example.com\r\nSubject: hi\r\nFrom: "), message)
        self.assertNotIn(b"bob@", message)
        self.assertTrue(message.endswith(b"\r\n\r\nhello\r\n"))

    @defer.inlineCallbacks
    def test_nullSenderAndEightBit(self):
        """
        C{-f <>} sends from the null sender; an 8-bit message is sent with
        C{BODY=8BITMIME}.
        """
        factory, server = self.listen()
        status, _, err = yield self.command(["--server", server, "-f", "<>", "a@example.com"], b"Subject: x\n\ncaf\xc3\xa9\n")
        self.assertEqual((status, err), (EX_OK, ""))
        self.assertTrue(factory.commands[1].startswith(b"MAIL FROM:<> "), factory.commands[1])
        self.assertIn(b"BODY=8BITMIME", factory.commands[1])

    @defer.inlineCallbacks
    def test_refusals(self):
        """
        Refusals map to sysexits: a recipient refused (5xx) is
        L{EX_NOUSER}, a policy refusal (5.7.x) L{EX_NOPERM}, a 4xx
        L{EX_TEMPFAIL}; nothing is sent when a recipient is refused; the
        error is one line on stderr.
        """
        for script, expected in [
            ({b"RCPT": b"550 5.1.1 No such user\r\n"}, EX_NOUSER),
            ({b"RCPT": b"554 5.7.1 Relay access denied\r\n"}, EX_NOPERM),
            ({b"RCPT": b"451 4.3.0 Try later\r\n"}, EX_TEMPFAIL),
            ({b"EOD": b"552 5.3.4 Too big\r\n"}, EX_DATAERR),
            ({b"MAIL": b"421 4.3.2 Shutting down\r\n"}, EX_TEMPFAIL),
        ]:
            factory, server = self.listen(script)
            status, out, err = yield self.command(["--server", server, "a@example.com"])
            self.assertEqual(status, expected, (script, err))
            self.assertEqual(out, "")
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith("mailproto sendmail: "), err)
            self.assertNotIn("Traceback", err)
            if b"RCPT" in script:
                self.assertEqual(factory.messages, [])

    @defer.inlineCallbacks
    def test_errorsOnOneLine(self):
        """
        Usage errors are L{EX_USAGE}; a bad address L{EX_DATAERR}; no
        recipient L{EX_USAGE}; no relay and no spool L{EX_TEMPFAIL}: each
        said in one line.
        """
        for argv, expected in [
            (["-bp"], EX_USAGE),
            (["bad address@"], EX_DATAERR),
            (["-f", "not an address", "a@example.com"], EX_DATAERR),
            ([], EX_USAGE),
            (["-t"], EX_USAGE),
            (["--server", f"127.0.0.1:{freePort()}", "a@example.com"], EX_TEMPFAIL),
        ]:
            status, out, err = yield self.command(argv)
            self.assertEqual(status, expected, (argv, err))
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith("mailproto sendmail: "), err)

    @defer.inlineCallbacks
    def test_help(self):
        """
        C{--help} prints the options and the exit statuses, status 0.
        """
        status, out, err = yield self.command(["--help"])
        self.assertEqual((status, err), (EX_OK, ""))
        self.assertIn("-oi", out)
        self.assertIn("75 try again later", out)

    @defer.inlineCallbacks
    def test_droppedIntoSpool(self):
        """
        When nothing answers, the message goes into the spool: a queue file
        whose envelope says it came from C{sendmail}, with the user's name
        as HELO and a C{Received:} field on top.
        """
        spool = os.path.abspath(self.mktemp())
        status, out, err = yield self.command(["--server", f"127.0.0.1:{freePort()}", "--spool", spool, "-v", "a@example.com"])
        self.assertEqual(status, EX_OK, err)
        self.assertIn("queued as", err)
        [name] = spoolListing(spool)["queue"]
        with open(os.path.join(spool, "queue", name), "rb") as f:
            envelope = json.loads(f.readline())
            message = f.read()
        self.assertEqual((envelope["client"], envelope["helo"], envelope["origin"]), ("sendmail", _maildrop.localUser(ENV).name, "trusted"))
        self.assertEqual([r["address"] for r in envelope["recipients"]], ["a@example.com"])
        self.assertTrue(message.startswith(b"Received: by "), message)
        self.assertTrue(message.endswith(b"\r\nSubject: hi\r\n" + message.split(b"\r\nSubject: hi\r\n", 1)[1]))

    @defer.inlineCallbacks
    def test_spoolHeldByRelay(self):
        """
        When a relay holds the spool's lock (and answers on its control
        socket) but not on the SMTP port, the message is refused with
        L{EX_TEMPFAIL} and nothing is written.
        """
        from mailproto._relayd._control import SpoolLock

        spool = os.path.abspath(self.mktemp())
        os.makedirs(spool)
        held = SpoolLock(spool)
        held.acquire()
        self.addCleanup(held.release)
        self.patch(_maildrop, "LOCK_WAIT", 0.2)
        status, _, err = yield self.command(["--server", f"127.0.0.1:{freePort()}", "--spool", spool, "a@example.com"])
        self.assertEqual(status, EX_TEMPFAIL, err)
        self.assertIn("in use by another process", err)
        self.assertEqual(err.count("\n"), 1)
        self.assertFalse(os.path.exists(os.path.join(spool, "queue")) and os.listdir(os.path.join(spool, "queue")))


def sendmailProcess(argv, message: bytes, env=None):
    """
    Run C{printf MESSAGE | python -m mailproto sendmail ARGV} through the
    shell, with the checkout on C{PYTHONPATH}.

    @return: a L{Deferred} firing with C{(out, err, status)}.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([package, *filter(None, [environment.get("PYTHONPATH")])])
    environment["MAILPROTO_ORIGIN"] = "host.test"
    environment.update(env or {})
    script = 'printf "%s" "$MESSAGE" | "$PYTHON" -m mailproto sendmail "$@"'
    environment["MESSAGE"] = message.decode("utf-8")
    environment["PYTHON"] = sys.executable
    return getProcessOutputAndValue("/bin/sh", ["-c", script, "sh", *argv], env=environment)


class PipelineTests(TestCase):
    """
    C{printf ... | python -m mailproto sendmail -t} in a shell, with a
    C{twistd mailrelay} child relaying to a scripted smart host here.
    """

    timeout = 120

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.spool = os.path.join(self.scratch, "spool")
        self.smartHost = ScriptedSMTPFactory({}, extensions=(b"PIPELINING", b"8BITMIME"))
        listening = reactor.listenTCP(0, self.smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.smartHostPort = listening.getHost().port
        self.port = freePort()

    def startRelay(self):
        relay = RelayProcess.spawn(
            self,
            ["--smtp", f"tcp:{self.port}:interface=127.0.0.1", "--spool", self.spool, "--hostname", "relay.test",
             "--smarthost", f"127.0.0.1:{self.smartHostPort}", "--smarthost-tls", "none"],
            self.scratch,
        )  # fmt: skip
        return relay

    def received(self, needle: bytes) -> list[bytes]:
        return [m for m in self.smartHost.messages if needle in m]

    @defer.inlineCallbacks
    def test_relayUp(self):
        """
        With the relay up, the message goes to it by SMTP and on to the
        smart host, once, without its C{Bcc:}; nothing is left in the
        spool.
        """
        relay = self.startRelay()
        yield relay.whenListening()
        out, err, status = yield sendmailProcess(
            ["-t", "-oi", "--server", f"127.0.0.1:{self.port}", "--spool", self.spool],
            b"Subject: hi up\nTo: ann@example.com\nBcc: bob@example.com\n\nbody\n",
        )
        self.assertEqual((status, out, err), (0, b"", b""))
        yield waitUntil(lambda: self.received(b"Subject: hi up"), 30, relay.text)
        [message] = self.received(b"Subject: hi up")
        self.assertNotIn(b"Bcc", message)
        self.assertTrue(message.endswith(b"\r\n\r\nbody\r\n"), message)
        self.assertIn(b"RCPT TO:<bob@example.com>", self.smartHost.commands)
        yield waitUntil(lambda: spoolListing(self.spool)["queue"] == [], 20, "an empty queue")
        self.assertEqual(len(self.received(b"Subject: hi up")), 1)

    @defer.inlineCallbacks
    def test_relayDown(self):
        """
        With the relay down, the message is dropped into its spool (exit
        status 0); the relay started later sends it at once, exactly once.
        """
        out, err, status = yield sendmailProcess(
            ["-t", "--server", f"127.0.0.1:{self.port}", "--spool", self.spool],
            b"Subject: hi down\nTo: ann@example.com\n\nbody\n",
        )
        self.assertEqual((status, out, err), (0, b"", b""))
        [queued] = spoolListing(self.spool)["queue"]
        self.assertEqual(self.smartHost.messages, [])
        relay = self.startRelay()
        yield relay.whenListening()
        yield waitUntil(lambda: self.received(b"Subject: hi down"), 30, relay.text)
        yield waitUntil(lambda: spoolListing(self.spool)["queue"] == [], 20, "an empty queue")
        [message] = self.received(b"Subject: hi down")
        self.assertTrue(message.startswith(b"Received: by "), message)
        self.assertEqual(len(relay.logLines(f"Delivered {queued} to <ann@example.com>")), 1, relay.text())
        self.assertEqual(relay.logLines("Traceback"), [])

    @defer.inlineCallbacks
    def test_relayDownNoSpool(self):
        """
        With the relay down and no spool, the status is 75 (try again
        later) and stderr has one line, no traceback.
        """
        out, err, status = yield sendmailProcess(["--server", f"127.0.0.1:{self.port}", "a@example.com"], b"Subject: x\n\ny\n")
        self.assertEqual((status, out), (75, b""))
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(b"Connection refused", err)

