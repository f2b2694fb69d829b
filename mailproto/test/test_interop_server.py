# -*- test-case-name: mailproto.test.test_interop_server -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
mailproto's servers against clients nobody here wrote, over real sockets:
Python's smtplib, aiosmtplib, swaks, msmtp, Postfix's smtp-source, and a
raw socket for what no polite client sends.

Every server listens on 127.0.0.1 (an ephemeral port) or on a UNIX socket,
and delivers to a L{MemoryDelivery}; each test checks what it received:
envelope, ESMTP parameters and the exact message bytes.  Blocking clients
run in threads, command-line tools as child processes; a test whose tool is
not installed skips itself.
"""

import asyncio
import collections
import os
import shutil
import smtplib
import socket
import tempfile
from email.message import EmailMessage

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailproto.smtp import Address, ESMTPFactory, LMTPFactory
from mailproto.testing import MemoryDelivery
from mailproto.test._peers import missing
from mailproto.test._peers import tool as _tool

try:
    import aiosmtplib
except ImportError:
    aiosmtplib = None

# Where Debian puts Postfix's test programs, which may not be on PATH.

# Seconds a client may wait for the server before giving up by itself,
# and seconds a child process may run before it is killed: both well inside
# the tests' own timeout, so that a server that does not answer fails a
# test rather than hanging it.
_CLIENT_TIMEOUT = 20
_PROCESS_DEADLINE = 40


# -- servers -------------------------------------------------------------


class _Server:
    """
    A listening server factory, and the connections it accepted.

    @ivar connections: how many connections were accepted.
    """

    def __init__(self, testCase, factory):
        self.connections = 0
        self._open = []
        build = factory.buildProtocol

        def buildProtocol(addr):
            protocol = build(addr)
            self.connections += 1
            self._track(protocol)
            return protocol

        factory.buildProtocol = buildProtocol
        testCase.addCleanup(self._closeAll)

    def _track(self, protocol):
        closed = defer.Deferred()
        lost = protocol.connectionLost

        def connectionLost(reason=None):
            try:
                lost(reason)
            finally:
                closed.callback(None)

        protocol.connectionLost = connectionLost
        self._open.append((protocol, closed))

    def _closeAll(self):
        """
        End with every connection closed, cutting any a client left open.
        """
        for protocol, closed in self._open:
            if not closed.called:
                protocol.transport.abortConnection()
        return defer.gatherResults([closed for protocol, closed in self._open])


def _listenTCP(testCase, factory):
    """
    Listen on an ephemeral port of 127.0.0.1 for the duration of the test.

    @return: the L{_Server} and the port number.
    """
    server = _Server(testCase, factory)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return server, port.getHost().port


def _listenUNIX(testCase, factory):
    """
    Listen on a new UNIX socket for the duration of the test.

    @return: the L{_Server} and the socket's absolute path.
    """
    directory = os.path.abspath(testCase.mktemp())
    if len(os.fsencode(directory)) > 90:
        # Too long for sockaddr_un (108 octets on Linux, 104 on BSD).
        directory = tempfile.mkdtemp(prefix="mailproto-")
        testCase.addCleanup(shutil.rmtree, directory, True)
    else:
        os.makedirs(directory)
    path = os.path.join(directory, "lmtp")
    server = _Server(testCase, factory)
    port = reactor.listenUNIX(path, factory)
    testCase.addCleanup(port.stopListening)
    return server, path


# -- clients -------------------------------------------------------------



class _Collector(ProcessProtocol):
    """
    Feed a child process its standard input and collect what it says.

    @ivar ended: fires with C{(stdout, stderr, exit code)}.
    """

    def __init__(self, stdin):
        self.stdin = stdin
        self.out = []
        self.err = []
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback((b"".join(self.out), b"".join(self.err), reason.value.exitCode))


def _run(testCase, executable, args, stdin=b""):
    """
    Run a program without blocking the reactor; it is killed if it runs
    longer than L{_PROCESS_DEADLINE} or if the test ends first.

    @return: a L{Deferred} firing with C{(stdout, stderr, exit code)}, the
        exit code L{None} if the program was killed.
    """
    collector = _Collector(stdin)
    process = reactor.spawnProcess(collector, executable, [executable, *args], env=dict(os.environ))
    deadline = reactor.callLater(_PROCESS_DEADLINE, process.signalProcess, "KILL")

    def ended(result):
        if deadline.active():
            deadline.cancel()
        return result

    collector.ended.addBoth(ended)

    def killIfRunning():
        if not collector.ended.called:
            process.signalProcess("KILL")
            return collector.ended

    testCase.addCleanup(killIfRunning)
    return collector.ended


class _Wire:
    """
    A blocking SMTP conversation over a raw socket, for threads: it says
    exactly what it is told to, and reads replies whole.
    """

    def __init__(self, family, address):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(_CLIENT_TIMEOUT)
        self.sock.connect(address)
        self.file = self.sock.makefile("rb")

    def reply(self):
        """
        @return: the next reply's code and its lines' texts.
        """
        texts = []
        while True:
            line = self.file.readline()
            if not line.endswith(b"\r\n"):
                raise EOFError(f"connection closed in a reply: {line!r}")
            texts.append(line[4:-2])
            if line[3:4] != b"-":
                return int(line[:3]), texts

    def command(self, line):
        """
        Send a command line and read its reply.
        """
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def atEOF(self):
        """
        @return: whether the server has closed the connection (and sent
            nothing more).
        """
        return self.file.read() == b""

    def close(self):
        self.file.close()
        self.sock.close()


def _crlf(text):
    """
    @return: C{text} (L{bytes}) with every LF as CRLF.
    """
    return text.replace(b"\n", b"\r\n")


# -- tests ---------------------------------------------------------------


class _InteropTestCase(TestCase):
    """
    Start servers, check what they delivered.
    """

    timeout = 60

    def esmtp(self, delivery=None, **limits):
        """
        Start an ESMTP server on 127.0.0.1.

        @param delivery: its L{MemoryDelivery}; a new one if L{None}.
        @param limits: limits for the L{ESMTPFactory}.
        @return: the delivery, the L{_Server} and the port number.
        """
        delivery = MemoryDelivery() if delivery is None else delivery
        server, port = _listenTCP(self, ESMTPFactory(delivery=delivery, domain=b"mx.test", **limits))
        return delivery, server, port

    def lmtp(self, delivery=None):
        """
        Start an LMTP server on a UNIX socket.

        @param delivery: its L{MemoryDelivery}; a new one if L{None}.
        @return: the delivery, the L{_Server} and the socket's path.
        """
        delivery = MemoryDelivery() if delivery is None else delivery
        server, path = _listenUNIX(self, LMTPFactory(delivery=delivery, domain=b"mx.test"))
        return delivery, server, path

    def assertEnvelopes(self, delivery, sender, recipients):
        """
        The delivery received one message per recipient, in order, each
        from C{sender}.
        """
        self.assertEqual(
            [(bytes(m.sender), bytes(m.recipient)) for m in delivery.messages],
            [(sender, recipient) for recipient in recipients],
        )

    def assertProcessOK(self, result):
        """
        A program run by L{_run} exited with 0.

        @return: its standard output.
        """
        out, err, code = result
        self.assertEqual(code, 0, f"exit code {code}\nstdout:\n{out!r}\nstderr:\n{err!r}")
        return out


class SmtplibTests(_InteropTestCase):
    """
    Python's C{smtplib}: its quoting, its automatic SIZE, its
    SMTPUTF8 handling, its exceptions.
    """

    def send(self, port, sender, recipients, message, **kw):
        """
        Send one message with C{SMTP.sendmail} in a thread.

        @return: a L{Deferred} firing with C{sendmail}'s result.
        """

        def send():
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=_CLIENT_TIMEOUT) as client:
                return client.sendmail(sender, recipients, message, **kw)

        return deferToThread(send)

    @defer.inlineCallbacks
    def test_dotsAndRefusedRecipient(self):
        """
        Lines that are or start with dots (smtplib doubles them) arrive as
        they were, for each accepted recipient; a refused recipient comes
        back in C{sendmail}'s dict with its 550, and the others still get
        the message.  smtplib declares the size, which the server parses.
        """
        delivery, server, port = self.esmtp(MemoryDelivery(refuseRecipients=[b"nobody@example.com"]))
        message = (
            b"From: sender@example.com\r\nSubject: dots\r\n\r\n"
            b".\r\n..\r\n.leading\r\n...three\r\nnot . first\r\n\r\n."
        )
        refused = yield self.send(
            port, "sender@example.com", ["one@example.com", "nobody@example.com", "two@example.com"], message
        )
        self.assertEqual(list(refused), ["nobody@example.com"])
        code, text = refused["nobody@example.com"]
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.1.1 "), text)
        self.assertEnvelopes(delivery, b"sender@example.com", [b"one@example.com", b"two@example.com"])
        for received in delivery.messages:
            # smtplib ends the last line, here a lone dot, with CRLF.
            self.assertEqual(received.data, message + b"\r\n")
            self.assertEqual(received.mail.size, len(message))
            self.assertEqual(received.helo, (b"client.test", b"127.0.0.1"))
        self.assertEqual(delivery.senders, [Address(b"sender@example.com")])

    @defer.inlineCallbacks
    def test_bareLineFeeds(self):
        """
        smtplib sends a bytes message as it is, bare LF included, doubling
        dots after LF too; by default the server stores each LF as CRLF and
        takes the dots back out.
        """
        delivery, server, port = self.esmtp()
        message = b"Subject: bare LF\n\n.\nline\n..two\n.three\n"
        yield self.send(port, "a@example.com", ["b@example.com"], message)
        self.assertEnvelopes(delivery, b"a@example.com", [b"b@example.com"])
        # smtplib adds CRLF to a message that does not end with one: after a
        # final bare LF, that is an empty last line.
        self.assertEqual(delivery.messages[0].data, _crlf(message) + b"\r\n")

    @defer.inlineCallbacks
    def test_8bitBody(self):
        """
        C{send_message} of an L{EmailMessage} with an 8-bit UTF-8 body and
        C{BODY=8BITMIME} (smtplib adds it only for non-ASCII addresses, so
        it is asked for here): the parameter arrives parsed and the 8-bit
        octets arrive untouched.
        """
        delivery, server, port = self.esmtp()
        msg = EmailMessage()
        msg["From"] = "a@example.com"
        msg["To"] = "b@example.com"
        msg["Subject"] = "8 bit"
        msg.set_content("Grüße aus Köln\n.\n..\n", cte="8bit")
        expected = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=_CLIENT_TIMEOUT) as client:
                return client.send_message(msg, mail_options=["BODY=8BITMIME"])

        refused = yield deferToThread(send)
        self.assertEqual(refused, {})
        self.assertEnvelopes(delivery, b"a@example.com", [b"b@example.com"])
        [received] = delivery.messages
        self.assertEqual(received.mail.body, b"8BITMIME")
        self.assertFalse(received.mail.smtputf8)
        self.assertIn("Grüße aus Köln\r\n.\r\n..\r\n".encode("utf-8"), received.data)
        self.assertEqual(received.data, expected)

    @defer.inlineCallbacks
    def test_utf8Addresses(self):
        """
        C{send_message} with non-ASCII addresses: smtplib sees SMTPUTF8
        offered and sends C{SMTPUTF8 BODY=8BITMIME} and UTF-8 commands; the
        addresses arrive as UTF-8 and the message with its raw UTF-8
        headers.
        """
        delivery, server, port = self.esmtp()
        sender, recipient = "jörg@example.com", "δοκιμή@παράδειγμα.δοκιμή"
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = recipient
        msg["Subject"] = "Grüße"
        msg.set_content("Hallo\n")
        expected = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", utf8=True))

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=_CLIENT_TIMEOUT) as client:
                return client.send_message(msg)

        refused = yield deferToThread(send)
        self.assertEqual(refused, {})
        self.assertEnvelopes(delivery, sender.encode("utf-8"), [recipient.encode("utf-8")])
        [received] = delivery.messages
        self.assertTrue(received.mail.smtputf8)
        self.assertEqual(received.mail.body, b"8BITMIME")
        self.assertIn(("From: " + sender + "\r\n").encode("utf-8"), received.data)
        self.assertEqual(received.data, expected)

    @defer.inlineCallbacks
    def test_dsnParameters(self):
        """
        DSN parameters (RFC 3461) given to C{sendmail} arrive parsed, xtext
        decoded: RET and ENVID (with smtplib's own SIZE) on the sender,
        NOTIFY and ORCPT on each recipient.
        """
        delivery, server, port = self.esmtp()
        message = b"Subject: dsn\r\n\r\nbody\r\n"
        recipients = [b"a@example.com", b"b@example.com"]
        yield self.send(
            port,
            "s@example.com",
            [r.decode() for r in recipients],
            message,
            mail_options=["RET=HDRS", "ENVID=abc+2Bdef"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;first+2Blast@example.com"],
        )
        self.assertEnvelopes(delivery, b"s@example.com", recipients)
        for received in delivery.messages:
            self.assertEqual(
                (received.mail.ret, received.mail.envid, received.mail.size),
                (b"HDRS", b"abc+def", len(message)),
            )
            self.assertEqual(received.rcpt.notify, (b"SUCCESS", b"FAILURE"))
            self.assertEqual(received.rcpt.orcpt, (b"rfc822", b"first+last@example.com"))
            self.assertEqual(received.data, message)

    @defer.inlineCallbacks
    def test_declaredSizeTooBig(self):
        """
        A message whose declared SIZE is over C{maxMessageSize} is refused
        at MAIL with 552 (smtplib raises L{smtplib.SMTPSenderRefused}),
        before the delivery is asked; the session goes on, and a small
        message then gets through.
        """
        delivery, server, port = self.esmtp(maxMessageSize=1000)
        big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=_CLIENT_TIMEOUT) as client:
                try:
                    client.sendmail("a@example.com", ["b@example.com"], big)
                except smtplib.SMTPSenderRefused as e:
                    refusal = e
                else:
                    refusal = None
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: small\r\n\r\nok\r\n")
                return refusal, client.esmtp_features.get("size")

        refusal, advertised = yield deferToThread(send)
        self.assertEqual(advertised, "1000")
        self.assertIsNotNone(refusal, "a too big SIZE was accepted")
        self.assertEqual(refusal.smtp_code, 552)
        self.assertTrue(refusal.smtp_error.startswith(b"5.3.4 "), refusal.smtp_error)
        self.assertEqual(delivery.senders, [Address(b"a@example.com")])
        self.assertEnvelopes(delivery, b"a@example.com", [b"b@example.com"])
        self.assertEqual(delivery.messages[0].data, b"Subject: small\r\n\r\nok\r\n")

    @defer.inlineCallbacks
    def test_actualSizeTooBig(self):
        """
        A message bigger than C{maxMessageSize}, sent without SIZE, is read
        to its end and refused with 552 (smtplib raises
        L{smtplib.SMTPDataError}); nothing is delivered, its body is never
        taken as commands, and the next message on the connection arrives.
        """
        delivery, server, port = self.esmtp(maxMessageSize=1000)
        big = b"Subject: big\r\n\r\n" + b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n" * 40
        client = smtplib.SMTP(timeout=_CLIENT_TIMEOUT)
        self.addCleanup(client.close)

        def sendBig():
            client.connect("127.0.0.1", port)
            client.ehlo("client.test")
            del client.esmtp_features["size"]  # so that smtplib declares none
            try:
                client.sendmail("a@example.com", ["b@example.com"], big)
            except smtplib.SMTPDataError as e:
                return e

        refusal = yield deferToThread(sendBig)
        self.assertIsInstance(refusal, smtplib.SMTPDataError)
        self.assertEqual(refusal.smtp_code, 552)
        self.assertTrue(refusal.smtp_error.startswith(b"5.3.4 "), refusal.smtp_error)
        self.assertEqual(delivery.messages, [])
        [abandoned] = delivery.lost
        self.assertEqual(bytes(abandoned.user.dest), b"b@example.com")

        def sendSmall():
            client.sendmail("a@example.com", ["c@example.com"], b"Subject: small\r\n\r\nok\r\n")
            client.quit()

        yield deferToThread(sendSmall)
        self.assertEnvelopes(delivery, b"a@example.com", [b"c@example.com"])
        self.assertEqual(delivery.messages[0].data, b"Subject: small\r\n\r\nok\r\n")
        self.assertEqual(delivery.senders, [Address(b"a@example.com")] * 2)


class LMTPTests(_InteropTestCase):
    """
    The LMTP server on a UNIX socket, with smtplib's client and by hand.
    """

    @defer.inlineCallbacks
    def test_smtplibLMTP(self):
        """
        C{smtplib.LMTP} over a UNIX socket: LHLO, one recipient (smtplib
        reads a single reply after the data whatever the number of
        recipients), and the message arrives.
        """
        delivery, server, path = self.lmtp()
        message = b"Subject: lmtp\r\n\r\n.\r\nbody\r\n"

        def send():
            with smtplib.LMTP(path, local_hostname="client.test", timeout=_CLIENT_TIMEOUT) as client:
                refused = client.sendmail("a@example.com", ["b@example.com"], message)
                return refused, client.does_esmtp

        refused, extended = yield deferToThread(send)
        self.assertEqual(refused, {})
        self.assertTrue(extended, "LHLO was not answered as EHLO is")
        self.assertEnvelopes(delivery, b"a@example.com", [b"b@example.com"])
        [received] = delivery.messages
        self.assertEqual(received.helo, (b"client.test", b"unix"))
        self.assertEqual(received.data, message)

    @defer.inlineCallbacks
    def test_replyPerRecipient(self):
        """
        By hand: LHLO, MAIL, three RCPT of which one is refused, DATA; after
        the final dot come exactly two replies, one per accepted recipient
        in order, and then QUIT's 221.
        """
        delivery, server, path = self.lmtp(MemoryDelivery(refuseRecipients=[b"nobody@example.com"]))
        message = b"Subject: two\r\n\r\nhello\r\n"

        def converse():
            wire = _Wire(socket.AF_UNIX, path)
            try:
                replies = [wire.reply()[0], wire.command(b"LHLO client.test")[0]]
                for line in [
                    b"MAIL FROM:<a@example.com>",
                    b"RCPT TO:<one@example.com>",
                    b"RCPT TO:<nobody@example.com>",
                    b"RCPT TO:<two@example.com>",
                    b"DATA",
                ]:
                    replies.append(wire.command(line)[0])
                wire.sock.sendall(message + b".\r\n")
                afterData = [wire.reply(), wire.reply()]
                quitCode = wire.command(b"QUIT")[0]
                return replies, afterData, quitCode, wire.atEOF()
            finally:
                wire.close()

        replies, afterData, quitCode, closed = yield deferToThread(converse)
        self.assertEqual(replies, [220, 250, 250, 250, 550, 250, 354])
        self.assertEqual([code for code, texts in afterData], [250, 250])
        self.assertIn(b"<one@example.com>", afterData[0][1][0])
        self.assertIn(b"<two@example.com>", afterData[1][1][0])
        self.assertEqual((quitCode, closed), (221, True))
        self.assertEnvelopes(delivery, b"a@example.com", [b"one@example.com", b"two@example.com"])
        self.assertEqual([m.data for m in delivery.messages], [message, message])


class AiosmtplibTests(_InteropTestCase):
    """
    aiosmtplib, an asyncio client.
    """

    @defer.inlineCallbacks
    def test_twoRecipients(self):
        """
        C{aiosmtplib.send} of a bytes message to two recipients: both get
        it, dot lines and all, with the SIZE aiosmtplib declared.
        """
        if aiosmtplib is None:
            missing("aiosmtplib is not installed")
        delivery, server, port = self.esmtp()
        message = b"From: a@example.com\r\nSubject: aio\r\n\r\n.\r\n..dots\r\nend\r\n"
        recipients = ["b@example.com", "c@example.com"]

        def send():
            return asyncio.run(
                aiosmtplib.send(
                    message,
                    sender="a@example.com",
                    recipients=recipients,
                    hostname="127.0.0.1",
                    port=port,
                    start_tls=False,
                    timeout=_CLIENT_TIMEOUT,
                )
            )

        errors, ignored = yield deferToThread(send)
        self.assertEqual(errors, {})
        self.assertEnvelopes(delivery, b"a@example.com", [r.encode() for r in recipients])
        for received in delivery.messages:
            self.assertEqual(received.data, message)
            self.assertEqual(received.mail.size, len(message))


class SwaksTests(_InteropTestCase):
    """
    swaks, the Swiss Army Knife for SMTP.  (Debian's swaks 20201014 has no
    option for BODY=8BITMIME nor for CHUNKING/BDAT; its data goes out as
    given, 8-bit octets included.)
    """

    def swaks(self, *args):
        """
        Run swaks from C{a@example.com} to C{b@example.com} and
        C{c@example.com}, with C{args}.

        @return: a L{Deferred} firing with swaks' transcript, once it has
            succeeded (see L{assertSwaksOK}).
        """
        swaks = _tool("swaks")
        common = ["--from", "a@example.com", "--to", "b@example.com,c@example.com", "--timeout", str(_CLIENT_TIMEOUT)]
        return _run(self, swaks, [*common, *args]).addCallback(self.assertSwaksOK)

    def assertSwaksOK(self, result):
        """
        swaks succeeded: exit code 0 (which it also gives after some
        errors, such as a reply that never came), no error in its
        transcript, and QUIT answered.

        @return: the transcript.
        """
        out = self.assertProcessOK(result)
        self.assertNotIn(b"\n<** ", out)
        self.assertIn(b"\n<-  221 ", out)
        return out

    @defer.inlineCallbacks
    def test_pipelining(self):
        """
        swaks with C{--pipeline} sends MAIL, both RCPTs and DATA in one
        go; the server answers them in order and both recipients get the
        message: dots unstuffed, 8-bit octets as sent, lines in CRLF.
        """
        delivery, server, port = self.esmtp()
        data = "Subject: swaks\n\n.\n..two\nGrüße\nend"
        out = yield self.swaks("--server", f"127.0.0.1:{port}", "--helo", "client.test", "--pipeline", "--data", data)
        self.assertEnvelopes(delivery, b"a@example.com", [b"b@example.com", b"c@example.com"])
        for received in delivery.messages:
            self.assertEqual(received.data, _crlf(data.encode("utf-8")) + b"\r\n")
            self.assertEqual(received.helo, (b"client.test", b"127.0.0.1"))
        # The transcript: four commands went out before the first reply.
        lines = out.splitlines()
        mail = lines.index(b" -> MAIL FROM:<a@example.com>")
        self.assertEqual([line[:3] for line in lines[mail : mail + 4]], [b" ->"] * 4, out)

    @defer.inlineCallbacks
    def test_lmtpSocket(self):
        """
        swaks speaking LMTP over the UNIX socket to two recipients: it
        waits for one reply per recipient after the data, and succeeds.
        """
        delivery, server, path = self.lmtp()
        out = yield self.swaks("--socket", path, "--protocol", "LMTP", "--data", "Subject: lmtp\n\nbody")
        self.assertIn(b"<-  250 2.1.5 <b@example.com> Delivered", out)
        self.assertIn(b"<-  250 2.1.5 <c@example.com> Delivered", out)
        self.assertEnvelopes(delivery, b"a@example.com", [b"b@example.com", b"c@example.com"])
        for received in delivery.messages:
            self.assertEqual(received.data, b"Subject: lmtp\r\n\r\nbody\r\n")


class MsmtpTests(_InteropTestCase):
    """
    msmtp, a sendmail-like client, configured from its command line only.
    """

    message = (
        b"From: a@example.com\nTo: b@example.com\nSubject: msmtp\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <1@client.test>\n\n"
        b".\n..two\n" + "Grüße\n".encode("utf-8")
    )

    def msmtp(self, args):
        """
        Run msmtp on L{message} with C{args} after the common options.
        """
        msmtp = _tool("msmtp")
        common = [
            "--auth=off",
            "--tls=off",
            "--domain=client.test",
            "--from=a@example.com",
            f"--timeout={_CLIENT_TIMEOUT}",
            "--set-from-header=off",
            "--set-date-header=off",
            "--set-msgid-header=off",
        ]
        return _run(self, msmtp, [*common, *args], stdin=self.message)

    @defer.inlineCallbacks
    def test_dsn(self):
        """
        msmtp over TCP to two recipients with C{--dsn-notify} and
        C{--dsn-return}: the DSN parameters arrive parsed and the message
        with its LF turned into CRLF and its dots unstuffed.
        """
        delivery, server, port = self.esmtp()
        result = yield self.msmtp(
            [
                "--host=127.0.0.1",
                f"--port={port}",
                "--dsn-notify=success,failure",
                "--dsn-return=headers",
                "--",
                "b@example.com",
                "c@example.com",
            ]
        )
        self.assertProcessOK(result)
        self.assertEnvelopes(delivery, b"a@example.com", [b"b@example.com", b"c@example.com"])
        for received in delivery.messages:
            self.assertEqual(received.data, _crlf(self.message))
            self.assertEqual(received.helo, (b"client.test", b"127.0.0.1"))
            self.assertEqual(received.mail.ret, b"HDRS")
            self.assertEqual(received.rcpt.notify, (b"SUCCESS", b"FAILURE"))

    @defer.inlineCallbacks
    def test_lmtpSocket(self):
        """
        msmtp speaking LMTP over the UNIX socket to two recipients: it
        reads one reply per recipient after the data, and succeeds.
        """
        delivery, server, path = self.lmtp()
        result = yield self.msmtp(
            [
                "--host=localhost",
                "--port=24",  # required, though unused with --socket
                f"--socket={path}",
                "--protocol=lmtp",
                "--",
                "b@example.com",
                "c@example.com",
            ]
        )
        self.assertProcessOK(result)
        self.assertEnvelopes(delivery, b"a@example.com", [b"b@example.com", b"c@example.com"])
        for received in delivery.messages:
            self.assertEqual(received.data, _crlf(self.message))
            self.assertEqual(received.helo, (b"client.test", b"unix"))


class SmtpSourceTests(_InteropTestCase):
    """
    Postfix's smtp-source load generator.  It says HELO (or LHLO), never
    pipelines, and writes a message of C{From:}, C{To:}, C{Date:} and
    C{Message-Id:} headers and a body of C{-l} octets in lines of at most
    78 (80 with CRLF).
    """

    def assertSmtpSourceMessages(self, delivery, count, copies, length):
        """
        C{count} messages from C{from@example.com}, each with its own
        Message-Id and a body of C{length} octets, C{copies} copies of each
        (one per recipient), the copies the same.
        """
        self.assertEqual(len(delivery.messages), count * copies)
        ids = collections.Counter()
        for received in delivery.messages:
            self.assertEqual(bytes(received.sender), b"from@example.com")
            header, separator, body = received.data.partition(b"\r\n\r\n")
            self.assertEqual(separator, b"\r\n\r\n")
            self.assertTrue(header.startswith(b"From: <from@example.com>\r\nTo: <to@example.com>\r\n"), header)
            # The payload of -l octets counts its line ends; the CRLF that
            # ends the last line comes on top.
            self.assertEqual(body[-2:], b"\r\n")
            self.assertEqual(len(body) - 2, length)
            self.assertLessEqual(max(map(len, body.split(b"\r\n"))), 78)
            [messageId] = [line for line in header.split(b"\r\n") if line.startswith(b"Message-Id: ")]
            ids[messageId, received.data] += 1
        self.assertEqual(len(ids), count)
        self.assertEqual(set(ids.values()), {copies})

    def smtpSource(self, args):
        """
        Run smtp-source from C{from@example.com} to C{to@example.com} (or
        several recipients made from it) as C{client.test}, with C{args}.
        """
        smtpSource = _tool("smtp-source")
        return _run(self, smtpSource, ["-M", "client.test", "-f", "from@example.com", "-t", "to@example.com", *args])

    @defer.inlineCallbacks
    def test_parallelSessions(self):
        """
        Fifty messages of 2048 octets in five parallel sessions, one
        connection per message: all fifty arrive whole, over HELO, without
        ESMTP parameters.
        """
        delivery, server, port = self.esmtp()
        result = yield self.smtpSource(["-s", "5", "-m", "50", "-l", "2048", f"127.0.0.1:{port}"])
        self.assertProcessOK(result)
        self.assertSmtpSourceMessages(delivery, 50, 1, 2048)
        self.assertEqual(server.connections, 50)
        for received in delivery.messages:
            self.assertEqual(received.helo, (b"client.test", b"127.0.0.1"))
            self.assertEqual(bytes(received.recipient), b"to@example.com")
            self.assertEqual(received.mail.size, None)
            self.assertEqual(received.mail.body, None)

    @defer.inlineCallbacks
    def test_transactionsPerConnection(self):
        """
        With C{-d}, two sessions send twenty messages of three recipients
        each, several transactions per connection: sixty copies arrive,
        twenty for each recipient.
        """
        delivery, server, port = self.esmtp()
        result = yield self.smtpSource(["-d", "-s", "2", "-m", "20", "-r", "3", "-l", "500", f"127.0.0.1:{port}"])
        self.assertProcessOK(result)
        self.assertEqual(server.connections, 2)
        self.assertEqual(len(delivery.messages), 60)
        perRecipient = collections.Counter(bytes(m.recipient) for m in delivery.messages)
        self.assertEqual(sorted(perRecipient.values()), [20, 20, 20])
        self.assertIn(b"to@example.com", perRecipient)
        self.assertEqual(delivery.senders, [Address(b"from@example.com")] * 20)
        self.assertSmtpSourceMessages(delivery, 20, 3, 500)

    @defer.inlineCallbacks
    def test_lmtp(self):
        """
        smtp-source speaking LMTP (C{-L}) over the UNIX socket, three
        recipients a message: it reads three replies after each message's
        data, and every copy arrives.
        """
        delivery, server, path = self.lmtp()
        result = yield self.smtpSource(["-L", "-d", "-m", "5", "-r", "3", "-l", "300", f"unix:{path}"])
        self.assertProcessOK(result)
        self.assertEqual(len({bytes(m.recipient) for m in delivery.messages}), 3)
        self.assertSmtpSourceMessages(delivery, 5, 3, 300)


class SmugglingTests(_InteropTestCase):
    """
    SMTP smuggling over a real socket: an end of data that is not
    C{CRLF.CRLF} must not end the data.
    """

    # A lone dot on a line whose line ends are not both CRLF.
    fakeEnds = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r"]
    # What each fake end is stored as: a bare LF or CR becomes CRLF; the dot
    # after a LF is unstuffed (clients stuff after LF), the dot after a
    # bare CR is content (no client stuffs after CR).
    storedAs = {
        b"\n.\n": b"\r\n\r\n",
        b"\n.\r\n": b"\r\n\r\n",
        b"\r\n.\n": b"\r\n\r\n",
        b"\r.\r\n": b"\r\n.\r\n",
        b"\r\n.\r": b"\r\n\r\n",
        b"\r.\r": b"\r\n.\r\n",
    }

    # What follows the fake end: a second transaction.
    smuggled = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"

    commands = [b"EHLO client.test", b"MAIL FROM:<good@example.com>", b"RCPT TO:<rcpt@example.com>", b"DATA"]

    def converse(self, port, fakeEnd, pipelined):
        """
        In a thread: one transaction whose data has C{fakeEnd} and then
        L{smuggled} before the real end, and QUIT; one command at a time,
        or all of it in one write.

        @return: a L{Deferred} firing with the codes of the replies, and
            whether the server then closed the connection without a word
            more.
        """
        data = b"Subject: legit\r\n\r\nlegit" + fakeEnd + self.smuggled + b".\r\n"

        def converse():
            wire = _Wire(socket.AF_INET, ("127.0.0.1", port))
            try:
                if pipelined:
                    wire.sock.sendall(b"".join(line + b"\r\n" for line in self.commands) + data + b"QUIT\r\n")
                    codes = [wire.reply()[0] for reply in range(7)]
                else:
                    codes = [wire.reply()[0]] + [wire.command(line)[0] for line in self.commands]
                    wire.sock.sendall(data)
                    codes += [wire.reply()[0], wire.command(b"QUIT")[0]]
                return codes, wire.atEOF()
            finally:
                wire.close()

        return deferToThread(converse)

    @defer.inlineCallbacks
    def check(self, pipelined):
        """
        Each fake end of data, in its own connection, makes one message:
        one 250 after the data, QUIT's 221 next, one sender validated, and
        the would-be commands delivered as text, the bare line ends made
        CRLF.
        """
        delivery, server, port = self.esmtp()
        for fakeEnd in self.fakeEnds:
            result = yield self.converse(port, fakeEnd, pipelined)
            self.assertEqual(result, ([220, 250, 250, 250, 354, 250, 221], True), fakeEnd)
        self.assertEqual(delivery.senders, [Address(b"good@example.com")] * len(self.fakeEnds))
        self.assertEnvelopes(delivery, b"good@example.com", [b"rcpt@example.com"] * len(self.fakeEnds))
        for fakeEnd, received in zip(self.fakeEnds, delivery.messages):
            self.assertEqual(received.data, b"Subject: legit\r\n\r\nlegit" + self.storedAs[fakeEnd] + self.smuggled, fakeEnd)

    def test_fakeEndOfData(self):
        """
        A client that waits for each reply cannot smuggle a second
        transaction in with C{LF.LF} or any other fake end of data.
        """
        return self.check(pipelined=False)

    def test_fakeEndOfDataPipelined(self):
        """
        Nor can one that sends the whole session in one write, so that the
        server already holds the smuggled commands when it reads the data.
        """
        return self.check(pipelined=True)
