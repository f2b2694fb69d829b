# -*- test-case-name: mailproto.test.test_send -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for C{mailproto send} (L{mailproto._commandline._send} and
L{mailproto._commandline._cli.SendOptions}).

  - The options: defaults, the TLS mode each combination gives, and every
    usage error.
  - The messages: the made-up one and its C{--header} replacements, a
    message file and stdin with fields put in front.
  - The password: from the environment, or asked for with getpass
    (patched here), never echoed.
  - The transcript, its masking of AUTH secrets, and the progress bar, on
    a fake clock.
  - End to end on the real reactor, against mailproto's own servers on
    127.0.0.1 or a UNIX socket: many messages over several connections,
    refusals, LMTP, implicit TLS with a trustme CA (and a wrong one),
    STARTTLS (required from a server without it; opportunistic from a
    test server that has it), AUTH, timeouts, lost connections.
  - The real command, C{python -m mailproto send}, in a subprocess.
"""

from __future__ import annotations

import base64
import email
import email.policy
import getpass
import io
import os
import re
import shutil
import sys
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

import mailproto
from mailproto._address import Address
from mailproto._commandline._cli import MailprotoOptions, SendOptions, runCommand
from mailproto._commandline._send import (
    IMPLICIT,
    NO_TLS,
    OPPORTUNISTIC,
    STARTTLS,
    FileMessages,
    GeneratedMessages,
    NoSecret,
    ProgressBar,
    SendConfig,
    SendResult,
    Transcript,
    _ClientLog,
    formatField,
    makeAuthenticators,
    parseHeaderField,
    readSecret,
)
from mailproto._server import ESMTP, ESMTPFactory, LMTPFactory
from mailproto.testing import MemoryDelivery
from mailproto.test._peers import missing

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
except ImportError:  # pragma: no cover
    Controller = AuthResult = None

# The directory that holds the mailproto package being tested (a checkout
# or site-packages), for the subprocesses.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))

SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.com"


def _parse(*argv) -> SendOptions:
    """
    @return: the parsed options of C{mailproto send ARGV}.
    """
    options = MailprotoOptions()
    options.parseOptions(["send", *argv])
    return options.subOptions


def _parseMessage(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


class _TTY(io.StringIO):
    """
    A text stream that says it is a terminal.
    """

    def isatty(self):
        return True


class OptionsTests(SynchronousTestCase):
    """
    The options of C{mailproto send}.
    """

    def test_defaults(self):
        """
        By default one made-up message goes to 127.0.0.1 port 25 over one
        connection, with opportunistic STARTTLS, no AUTH, a 30 s timeout.
        """
        config = _parse("--from", SENDER, "--to", RECIPIENT).config
        self.assertIsInstance(config, SendConfig)
        self.assertEqual(
            (config.host, config.port, config.socket, config.tls, config.lmtp),
            ("127.0.0.1", 25, None, OPPORTUNISTIC, False),
        )
        self.assertEqual((config.sender, config.recipients), (SENDER, [RECIPIENT]))
        self.assertEqual((config.count, config.concurrency, config.timeout), (1, 1, 30.0))
        for name in ("user", "auth", "data", "body", "helo", "trustRoot"):
            self.assertIsNone(getattr(config, name), name)
        for name in ("insecure", "quiet", "verbose"):
            self.assertFalse(getattr(config, name), name)
        self.assertEqual(config.headers, [])
        self.assertEqual(config.describeServer(), "127.0.0.1:25")

    def test_everything(self):
        """
        Every option lands in the configuration; C{--to} and C{--header}
        may be repeated, short options work, C{--auth} is case-insensitive.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"Subject: x\r\n\r\nx\r\n")
        config = _parse(
            "-s", "mx.example.com", "-p", "587", "--starttls", "-u", "joe", "--auth", "cram-md5",
            "-f", SENDER, "-t", "a@example.com", "--to", "b@example.com",
            "-d", path, "-H", "X-One: 1", "--header", "X-Two:2", "--helo", "client.example",
            "--timeout", "2.5", "-n", "100", "-c", "7", "-v", "--lmtp",
        ).config  # fmt: skip
        self.assertEqual((config.host, config.port, config.tls), ("mx.example.com", 587, STARTTLS))
        self.assertEqual((config.user, config.auth), ("joe", "CRAM-MD5"))
        self.assertEqual(config.recipients, ["a@example.com", "b@example.com"])
        self.assertEqual((config.data, config.headers), (path, [("X-One", "1"), ("X-Two", "2")]))
        self.assertEqual((config.helo, config.timeout, config.count, config.concurrency), ("client.example", 2.5, 100, 7))
        self.assertTrue(config.verbose and config.lmtp)

    def test_tlsModes(self):
        """
        C{--tls} means implicit TLS and port 465; C{--port 465} alone means
        C{--tls}; C{--user} makes STARTTLS required unless the TLS mode is
        given; a UNIX socket has no TLS; LMTP's default port is 24.
        """

        def mode(*argv):
            config = _parse("--from", SENDER, "--to", RECIPIENT, *argv).config
            return config.tls, config.port

        self.assertEqual(mode("--tls"), (IMPLICIT, 465))
        self.assertEqual(mode("--tls", "--port", "2465"), (IMPLICIT, 2465))
        self.assertEqual(mode("--port", "465"), (IMPLICIT, 465))
        self.assertEqual(mode("--port", "465", "--no-tls"), (NO_TLS, 465))
        self.assertEqual(mode("--port", "465", "--starttls"), (STARTTLS, 465))
        self.assertEqual(mode("--starttls"), (STARTTLS, 25))
        self.assertEqual(mode("--no-tls"), (NO_TLS, 25))
        self.assertEqual(mode("--user", "joe"), (STARTTLS, 25))
        self.assertEqual(mode("--user", "joe", "--no-tls"), (NO_TLS, 25))
        self.assertEqual(mode("--user", "joe", "--tls"), (IMPLICIT, 465))
        self.assertEqual(mode("--lmtp"), (OPPORTUNISTIC, 24))
        self.assertEqual(mode("--insecure"), (OPPORTUNISTIC, 25))
        config = _parse("--from", SENDER, "--to", RECIPIENT, "--lmtp", "--socket", "/run/lmtp").config
        self.assertEqual((config.tls, config.socket), (NO_TLS, "/run/lmtp"))
        self.assertEqual(config.describeServer(), "UNIX socket /run/lmtp")
        config = _parse("--from", SENDER, "--to", RECIPIENT, "--server", "[::1]").config
        self.assertEqual((config.host, config.describeServer()), ("::1", "[::1]:25"))

    def test_nullSender(self):
        """
        C{--from ''} or C{--from '<>'} is the null sender.
        """
        for value in ("", "<>"):
            self.assertEqual(_parse("--from", value, "--to", RECIPIENT).config.sender, "")

    def test_cafile(self):
        """
        C{--cafile} is read while parsing: its CAs become the trust root.
        """
        if trustme is None:
            missing("trustme is not installed")
        path = self.mktemp()
        trustme.CA().cert_pem.write_to_path(path)
        config = _parse("--from", SENDER, "--to", RECIPIENT, "--tls", "--cafile", path).config
        self.assertIsNotNone(config.trustRoot)

    def assertUsageError(self, argv, message):
        error = self.assertRaises(usage.UsageError, _parse, *argv)
        self.assertIn(message, str(error))

    def test_errors(self):
        """
        Missing, contradictory or bad options are usage errors, each with
        a message that says what is wrong.
        """
        ok = ["--from", SENDER, "--to", RECIPIENT]
        missing = self.mktemp()
        notPEM = self.mktemp()
        with open(notPEM, "w") as f:
            f.write("not a certificate\n")
        cases = [
            (["--to", RECIPIENT], "--from is required"),
            (["--from", SENDER], "--to is required"),
            (["--from", "a@@b", "--to", RECIPIENT], "--from: not a mail address: 'a@@b'"),
            (["--from", SENDER, "--to", "x y@z"], "--to: not a mail address: 'x y@z'"),
            (["--from", SENDER, "--to", "<>"], "--to: the null address <> cannot be a recipient"),
            ([*ok, "--tls", "--starttls"], "--tls and --starttls cannot be used together"),
            ([*ok, "--starttls", "--no-tls"], "--starttls and --no-tls cannot be used together"),
            ([*ok, "--tls", "--no-tls"], "--tls and --no-tls cannot be used together"),
            ([*ok, "--insecure", "--cafile", notPEM], "--insecure and --cafile cannot be used together"),
            ([*ok, "--no-tls", "--insecure"], "--insecure is about TLS; it cannot be used with --no-tls"),
            ([*ok, "--no-tls", "--cafile", notPEM], "--cafile is about TLS; it cannot be used with --no-tls"),
            ([*ok, "--cafile", missing], f"--cafile: no such file: {missing}"),
            ([*ok, "--cafile", notPEM], "no PEM certificate in it"),
            ([*ok, "--socket", "/s", "--server", "x"], "give either --socket or --server/--port, not both"),
            ([*ok, "--socket", "/s", "--port", "25"], "give either --socket or --server/--port, not both"),
            ([*ok, "--socket", "/s", "--tls"], "--tls: TLS is not used on a UNIX socket"),
            ([*ok, "--socket", "/s", "--insecure"], "--insecure: TLS is not used on a UNIX socket"),
            ([*ok, "--socket", ""], "--socket: the path is empty"),
            ([*ok, "--auth", "PLAIN"], "--auth needs --user"),
            ([*ok, "--user", "joe", "--auth", "DIGEST-MD5"], "unknown AUTH mechanism 'DIGEST-MD5'"),
            ([*ok, "--user", ""], "--user: the user name is empty"),
            ([*ok, "--data", missing], f"--data: no such file: {missing}"),
            ([*ok, "--data", "-", "--body", "x"], "--body is for the made-up message"),
            ([*ok, "--header", "no colon"], "--header: not a header field: 'no colon'"),
            ([*ok, "--header", "Bad Name: x"], "--header: not a header field name: 'Bad Name'"),
            ([*ok, "--header", "X-A: b\r\nBcc: c"], "--header: control characters"),
            ([*ok, "--helo", "a b"], "--helo: not a host name"),
            ([*ok, "--server", "a b"], "--server: not a host name or address"),
            ([*ok, "--server", ""], "--server: not a host name or address"),
            ([*ok, "--server", "mx..example"], "--server: not a host name or address"),
            ([*ok, "--port", "0"], "--port: not a port number"),
            ([*ok, "--port", "65536"], "not a port number"),
            ([*ok, "--port", "smtp"], "not a port number"),
            ([*ok, "--count", "0"], "--count: not a positive whole number: '0' (1 or more)"),
            ([*ok, "--count", "many"], "--count: not a whole number: 'many'"),
            ([*ok, "--concurrency", "-1"], "--concurrency: not a positive whole number"),
            ([*ok, "--concurrency", "1001"], "--concurrency: at most 1000"),
            ([*ok, "--timeout", "0"], "--timeout: not a number of seconds"),
            ([*ok, "--timeout", "soon"], "not a number of seconds"),
            ([*ok, "--quiet", "--verbose"], "--quiet and --verbose cannot be used together"),
            ([*ok, "--password", "x"], "option --password not recognized"),
            ([*ok, "extra"], "Wrong number of arguments"),
        ]
        for argv, message in cases:
            error = self.assertRaises(usage.UsageError, _parse, *argv)
            self.assertIn(message, str(error), argv)

    def test_usageErrorLine(self):
        """
        The command says a usage error in one line, without a traceback,
        and exits with status 2; C{mailproto --help} lists both commands.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        status = runCommand(["send", "--from", SENDER], reactor=MemoryReactor(), stdout=stdout, stderr=stderr)
        self.assertEqual(status, 2)
        self.assertEqual(
            stderr.getvalue(),
            "mailproto send: error: --to is required (a recipient; may be given more than once)"
            " (see 'mailproto send --help')\n",
        )
        self.assertEqual(stdout.getvalue(), "")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertRaises(SystemExit, MailprotoOptions().parseOptions, ["--help"])
        self.assertRegex(out.getvalue(), r"\n +send +Send test messages")
        self.assertRegex(out.getvalue(), r"\n +sink +Run a debugging SMTP")


def _docs():
    """
    @return: the C{docs/} directory, next to the package or in
        C{MAILPROTO_SOURCE}; or L{None}.
    """
    candidates = [os.path.join(PACKAGE_ROOT, "docs")]
    if os.environ.get("MAILPROTO_SOURCE"):
        candidates.insert(0, os.path.join(os.environ["MAILPROTO_SOURCE"], "docs"))
    for path in candidates:
        if os.path.exists(os.path.join(path, "send.rst")):
            return path
    return None


class DocsExamplesTests(SynchronousTestCase):
    """
    The command lines of C{docs/send.rst} are good command lines.
    """

    def test_examples(self):
        """
        Every C{mailproto send ...} in the page parses, with the files it
        names in the current directory.
        """
        import shlex

        docs = _docs()
        if docs is None:
            raise self.skipTest("docs/send.rst not found: set MAILPROTO_SOURCE to the source tree")
        if trustme is None:
            missing("trustme is not installed")
        with open(os.path.join(docs, "send.rst"), encoding="utf-8") as f:
            text = f.read()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "message.eml"), "wb") as f:
            f.write(b"Subject: x\n\nx\n")
        trustme.CA().cert_pem.write_to_path(os.path.join(directory, "client.pem"))
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(directory)
        commands = [
            line[line.index("mailproto send ") :]
            for line in text.splitlines()
            if line.startswith("    ") and "mailproto send " in line
        ]
        self.assertGreaterEqual(len(commands), 10)
        for command in commands:
            argv = shlex.split(command)[2:]
            try:
                _parse(*argv)
            except usage.UsageError as e:
                self.fail(f"{command}: {e}")


class MessageTests(SynchronousTestCase):
    """
    The messages: made up, or from a file.
    """

    sender = Address(b"sender@example.com")
    recipients = [Address(b"a@example.com"), Address(b"b@example.com")]

    def test_generated(self):
        """
        A made-up message has Date, From, To, Subject C{mailproto test N},
        Message-ID, MIME fields, X-Mailer and a short body; lines end in
        CRLF.
        """
        messages = GeneratedMessages(self.sender, self.recipients, 3)
        data = messages.message(2)
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        message = _parseMessage(data)
        self.assertEqual(
            list(message.keys()),
            [
                "Date", "From", "To", "Subject", "Message-ID", "MIME-Version", "Content-Type",
                "Content-Transfer-Encoding", "X-Mailer",
            ],
        )  # fmt: skip
        self.assertEqual(message["From"], "sender@example.com")
        self.assertEqual(message["To"], "a@example.com, b@example.com")
        self.assertEqual(message["Subject"], "mailproto test 2")
        self.assertIsNotNone(message["Date"].datetime)
        self.assertRegex(message["Message-ID"], r"^<[^<>@ ]+@[^<>@ ]+>$")
        self.assertEqual((message.get_content_type(), message.get_content_charset()), ("text/plain", "us-ascii"))
        self.assertEqual(message["X-Mailer"], f"mailproto send {mailproto.__version__}")
        self.assertIn("This is test message 2 of 3, sent by mailproto send.", message.get_content())
        self.assertNotEqual(_parseMessage(messages.message(3))["Message-ID"], message["Message-ID"])

    def test_nullSender(self):
        """
        A message from the null sender is from C{MAILER-DAEMON}.
        """
        message = _parseMessage(GeneratedMessages(Address(b""), self.recipients, 1).message(1))
        self.assertTrue(message["From"].startswith("MAILER-DAEMON@"), message["From"])

    def test_headerReplaces(self):
        """
        A C{--header} replaces the made-up fields of its name (in any case)
        where they were; fields of other names come after, in order.
        """
        messages = GeneratedMessages(
            self.sender,
            self.recipients,
            1,
            headers=[("subject", "Hello"), ("X-Tag", "one"), ("To", "Someone <x@example.com>"), ("X-Tag", "two")],
        )
        message = _parseMessage(messages.message(1))
        keys = list(message.keys())
        self.assertEqual(keys[:4], ["Date", "From", "To", "subject"])
        self.assertEqual(keys[-2:], ["X-Tag", "X-Tag"])
        self.assertEqual(message["Subject"], "Hello")
        self.assertEqual(message["To"], "Someone <x@example.com>")
        self.assertEqual(message.get_all("X-Tag"), ["one", "two"])
        self.assertEqual(len(message.get_all("Subject")), 1)

    def test_nonASCII(self):
        """
        A non-ASCII header value is RFC 2047 encoded; a non-ASCII body is
        declared as UTF-8 in 8 bits.
        """
        messages = GeneratedMessages(self.sender, self.recipients, 1, [("Subject", "Grüße ☃")], body="Hällo\nWelt")
        data = messages.message(1)
        self.assertIn(b"Subject: =?utf-8?", data)
        self.assertTrue(data.endswith("\r\n\r\nHällo\r\nWelt\r\n".encode("utf-8")))
        message = _parseMessage(data)
        self.assertEqual(message["Subject"], "Grüße ☃")
        self.assertEqual((message.get_content_charset(), message["Content-Transfer-Encoding"]), ("utf-8", "8bit"))

    def test_formatField(self):
        """
        Long fields are folded; a non-ASCII address stays UTF-8 (RFC 6532).
        """
        folded = formatField("To", ", ".join(f"user{i}@example.com" for i in range(20)))
        lines = folded.split(b"\r\n")
        self.assertGreater(len(lines), 3, folded)
        self.assertTrue(all(len(line) <= 80 for line in lines), folded)
        self.assertEqual(formatField("From", "jö@exämple.com"), "From: jö@exämple.com\r\n".encode("utf-8"))
        self.assertEqual(formatField("Date", "whenever"), b"Date: whenever\r\n")

    def test_parseHeaderField(self):
        """
        C{Name: value} and C{Name:value} are header fields.
        """
        self.assertEqual(parseHeaderField("X-A: b c "), ("X-A", "b c"))
        self.assertEqual(parseHeaderField("X-A:"), ("X-A", ""))
        self.assertEqual(parseHeaderField("Subject:x:y"), ("Subject", "x:y"))
        for bad in ("", ":x", "X A: b", "X-A b", "X-A: a\nb", "Ü: x"):
            self.assertRaises(ValueError, parseHeaderField, bad)

    def test_file(self):
        """
        A message file is sent as it is, each time, with the C{--header}
        fields in front.
        """
        messages = FileMessages(self.sender, self.recipients, b"Subject: hi\n\nbody\n", [("X-Test", "1")])
        self.assertEqual(messages.message(1), b"X-Test: 1\r\nSubject: hi\n\nbody\n")
        self.assertEqual(messages.message(7), messages.message(1))

    def _prepare(self, *argv, stdin=None):
        options = _parse("--from", SENDER, "--to", RECIPIENT, *argv)
        stdout, stderr = io.StringIO(), io.StringIO()
        command = options.makeCommand(MemoryReactor(), stdout, stderr, stdin=stdin, environ={})
        return command, command.prepare(), stderr

    def test_dataFile(self):
        """
        C{--data FILE} is read when the command runs.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"Subject: from a file\r\n\r\nhello\r\n")
        command, status, stderr = self._prepare("--data", path, "--header", "X-A: b")
        self.assertIsNone(status)
        self.assertEqual(command.messages.message(1), b"X-A: b\r\nSubject: from a file\r\n\r\nhello\r\n")
        self.assertEqual(command.messages.sender, Address(SENDER.encode()))

    def test_dataStdin(self):
        """
        C{--data -} reads the message from stdin.
        """
        command, status, stderr = self._prepare("--data", "-", stdin=io.BytesIO(b"Subject: stdin\n\nx\n"))
        self.assertIsNone(status)
        self.assertEqual(command.messages.message(1), b"Subject: stdin\n\nx\n")

    def test_dataUnreadable(self):
        """
        A message file that cannot be read when the command runs is said in
        one line, status 1.
        """
        path = self.mktemp()
        with open(path, "wb"):
            pass
        options = _parse("--from", SENDER, "--to", RECIPIENT, "--data", path)
        os.remove(path)
        stderr = io.StringIO()
        command = options.makeCommand(MemoryReactor(), io.StringIO(), stderr, environ={})
        self.assertEqual(command.prepare(), 1)
        self.assertEqual(stderr.getvalue(), f"mailproto send: error: --data: cannot read {path}: No such file or directory\n")


class SecretTests(SynchronousTestCase):
    """
    The password: from C{MAILPROTO_PASSWORD}, else asked for on the
    terminal with getpass.
    """

    def test_environment(self):
        """
        C{MAILPROTO_PASSWORD} is used when set, even empty, without asking.
        """
        def prompt(text):
            raise AssertionError("asked")

        self.assertEqual(readSecret("joe", "x:25", environ={"MAILPROTO_PASSWORD": "pässword"}, prompt=prompt), "pässword".encode())
        self.assertEqual(readSecret("joe", "x:25", environ={"MAILPROTO_PASSWORD": ""}, prompt=prompt), b"")

    def test_prompt(self):
        """
        Without C{MAILPROTO_PASSWORD}, the password is asked for with
        L{getpass.getpass}, naming the user and the server; for XOAUTH2 the
        access token.
        """
        asked = []

        def fake(prompt="Password: ", stream=None):
            asked.append(prompt)
            return "typed"

        self.patch(getpass, "getpass", fake)
        self.assertEqual(readSecret("joe", "mx.example:587", environ={}), b"typed")
        self.assertEqual(readSecret("joe", "mx.example:587", "XOAUTH2", environ={}), b"typed")
        self.assertEqual(asked, ["Password for joe at mx.example:587: ", "Access token for joe at mx.example:587: "])

    def test_noTerminal(self):
        """
        When getpass has no terminal (it would read stdin and echo), or
        stdin is at its end, there is no password.
        """
        import warnings

        def noTerminal(prompt="Password: ", stream=None):
            warnings.warn("Can not control echo on the terminal.", getpass.GetPassWarning)
            return "read from stdin"

        def eof(prompt="Password: ", stream=None):
            raise EOFError()

        for prompt in (noTerminal, eof):
            error = self.assertRaises(NoSecret, readSecret, "joe", "x:25", environ={}, prompt=prompt)
            self.assertEqual(str(error), "no password: set MAILPROTO_PASSWORD, or run on a terminal to be asked")

    def test_command(self):
        """
        The command asks (through the patched getpass) when it prepares,
        not when it parses; without a password it says so, status 2.
        """
        asked = []
        self.patch(getpass, "getpass", lambda prompt: asked.append(prompt) or "pw")
        options = _parse("--from", SENDER, "--to", RECIPIENT, "--user", "joe")
        self.assertEqual(asked, [])
        command = options.makeCommand(MemoryReactor(), io.StringIO(), io.StringIO(), environ={})
        self.assertIsNone(command.prepare())
        self.assertEqual((command.secret, asked), (b"pw", ["Password for joe at 127.0.0.1:25: "]))

        def eof(prompt):
            raise EOFError()

        stderr = io.StringIO()
        command = options.makeCommand(MemoryReactor(), io.StringIO(), stderr, environ={}, getpass=eof)
        self.assertEqual(command.prepare(), 2)
        self.assertEqual(
            stderr.getvalue(),
            "mailproto send: error: no password: set MAILPROTO_PASSWORD, or run on a terminal to be asked\n",
        )

    def test_authenticators(self):
        """
        With TLS, PLAIN comes first; without, CRAM-MD5; C{--auth} gives
        only its mechanism.  Each call makes new ones (LOGIN keeps state).
        """
        names = lambda authenticators: [a.getName() for a in authenticators]  # noqa: E731
        self.assertEqual(names(makeAuthenticators("joe")), [b"PLAIN", b"LOGIN", b"CRAM-MD5"])
        self.assertEqual(names(makeAuthenticators("joe", encrypted=False)), [b"CRAM-MD5", b"PLAIN", b"LOGIN"])
        self.assertEqual(names(makeAuthenticators("joe", "XOAUTH2")), [b"XOAUTH2"])
        self.assertIsNot(makeAuthenticators("joe")[1], makeAuthenticators("joe")[1])


class TranscriptTests(SynchronousTestCase):
    """
    The transcript of the first connection, and the client's log: AUTH
    secrets are masked in both.
    """

    def test_masked(self):
        """
        The initial response of AUTH and every SASL response are masked;
        the exchange after AUTH is shown again.
        """
        out = io.StringIO()
        log = _ClientLog(10, Transcript(out))
        secret = base64.b64encode(b"\0joe\0s3cret")
        for line in [
            b"<<< 220 mx.example ESMTP",
            b">>> AUTH PLAIN " + secret,
            b"<<< 535 5.7.8 No",
            b">>> AUTH LOGIN",
            b"<<< 334 VXNlcm5hbWU6",
            b">>> " + base64.b64encode(b"joe"),
            b"<<< 334 UGFzc3dvcmQ6",
            b">>> " + base64.b64encode(b"s3cret"),
            b"<<< 235 2.7.0 OK",
            b">>> MAIL FROM:<a@example.com>",
        ]:
            log.append(line)
        self.assertEqual(
            out.getvalue(),
            "S: 220 mx.example ESMTP\n"
            "C: AUTH PLAIN ********\n"
            "S: 535 5.7.8 No\n"
            "C: AUTH LOGIN\n"
            "S: 334 VXNlcm5hbWU6\n"
            "C: ********\n"
            "S: 334 UGFzc3dvcmQ6\n"
            "C: ********\n"
            "S: 235 2.7.0 OK\n"
            "C: MAIL FROM:<a@example.com>\n",
        )
        self.assertNotIn(secret, log.str())
        self.assertNotIn(base64.b64encode(b"s3cret"), log.str())


class ProgressBarTests(SynchronousTestCase):
    """
    The progress bar: drawn in place at most ten times a second.
    """

    def test_drawn(self):
        """
        The bar is redrawn on the next tick after a change, not at each
        change, and ends with its last state and a newline.
        """
        clock = Clock()
        stream = _TTY()
        bar = ProgressBar(stream, 200, clock)
        bar.start()
        self.assertEqual(stream.getvalue(), "\r[" + "." * 30 + "]   0/200   0%  0.0 msgs/s")
        for done in range(1, 51):
            bar.update(done)
        clock.advance(0.05)
        self.assertEqual(stream.getvalue().count("\r"), 1)
        clock.advance(0.05)
        self.assertEqual(stream.getvalue().count("\r"), 2)
        self.assertTrue(stream.getvalue().endswith("\r[" + "#" * 7 + "." * 23 + "]  50/200  25%  500.0 msgs/s"))
        clock.advance(1)
        self.assertEqual(stream.getvalue().count("\r"), 2)
        bar.update(200)
        bar.finish()
        self.assertTrue(stream.getvalue().endswith("\r[" + "#" * 30 + "] 200/200 100%  181.8 msgs/s\n"), stream.getvalue())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_summary(self):
        """
        The summary line says what happened, how long it took, how fast it
        went and over how many connections.
        """
        result = SendResult(20, sent=18, refused=1, failed=1, connections=3, elapsed=0.5)
        self.assertEqual(result.summary(), "18 sent, 1 refused, 1 failed in 0.50 s (36.0 msgs/s) over 3 connections")
        self.assertFalse(result.ok)
        self.assertEqual(
            SendResult(1, sent=1, connections=1).summary(), "1 sent, 0 refused, 0 failed in 0.00 s (0.0 msgs/s) over 1 connection"
        )


# -- servers for the end-to-end tests ----------------------------------------


class _Tracking:
    """
    The part of a server factory that counts the connections and fires a
    L{Deferred} for each when it has ended.
    """

    def track(self, protocol):
        self.connections = getattr(self, "connections", 0) + 1
        self.closed = getattr(self, "closed", [])
        lost = defer.Deferred()
        self.closed.append(lost)
        connectionLost = protocol.connectionLost

        def tracked(reason):
            try:
                connectionLost(reason)
            finally:
                lost.callback(None)

        protocol.connectionLost = tracked
        return protocol

    def allClosed(self):
        return defer.gatherResults(list(getattr(self, "closed", [])))


class _CountingFactory(_Tracking, ESMTPFactory):
    def buildProtocol(self, addr):
        return self.track(ESMTPFactory.buildProtocol(self, addr))


class _CountingLMTPFactory(_Tracking, LMTPFactory):
    def buildProtocol(self, addr):
        return self.track(LMTPFactory.buildProtocol(self, addr))


class _ExtraESMTP(ESMTP):
    """
    An ESMTP server with what mailproto's does not have yet, for the
    client's sake: AUTH PLAIN (one user), STARTTLS, and a limit on the
    messages per connection.
    """

    def extensions(self):
        extensions = ESMTP.extensions(self)
        if self.factory.users:
            extensions[b"AUTH"] = [b"PLAIN"]
        if self.factory.tlsOptions is not None and not self.startedTLS:
            extensions[b"STARTTLS"] = None
        return extensions

    def ext_AUTH(self, rest):
        words = rest.split()
        if not self.factory.users or words[:1] != [b"PLAIN"] or len(words) != 2:
            self.sendCode(504, b"Unrecognized authentication type", b"5.5.4")
            return
        response = base64.b64decode(words[1])
        self.factory.responses.append(response)
        if response in self.factory.users:
            self.authenticated = True
            self.sendCode(235, b"Authentication successful", b"2.7.0")
        else:
            self.sendCode(535, b"Authentication credentials invalid", b"5.7.8")

    def ext_STARTTLS(self, rest):
        self.sendCode(220, b"Ready to start TLS", b"2.0.0")
        self.transport.startTLS(self.factory.tlsOptions)
        self.startedTLS = True

    def do_MAIL(self, rest):
        self.mails = getattr(self, "mails", 0) + 1
        if self.factory.perConnection is not None and self.mails > self.factory.perConnection:
            self._hangUp(421, b"Too many messages on this connection", b"4.7.0")
            return None
        return ESMTP.do_MAIL(self, rest)


class _ExtraFactory(_Tracking, ESMTPFactory):
    protocol = _ExtraESMTP
    users = ()
    tlsOptions = None
    perConnection = None

    def __init__(self, *args, **kw):
        ESMTPFactory.__init__(self, *args, **kw)
        self.responses = []

    def buildProtocol(self, addr):
        return self.track(ESMTPFactory.buildProtocol(self, addr))


def _serverTLS(certificate):
    """
    @return: TLS server options for a trustme certificate.
    """
    from twisted.internet.ssl import PrivateCertificate

    return PrivateCertificate.loadPEM(certificate.private_key_and_cert_chain_pem.bytes()).options()


class BulkTests(TestCase):
    """
    C{mailproto send} in this process, on the real reactor, against
    mailproto's servers on 127.0.0.1 or a UNIX socket.
    """

    timeout = 30

    def listen(self, factory, tls=None):
        """
        Listen on 127.0.0.1, any port (with implicit TLS if C{tls}).

        @return: the port number.
        """
        if tls is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def socketPath(self):
        directory = tempfile.mkdtemp(prefix="send")
        self.addCleanup(shutil.rmtree, directory)
        return os.path.join(directory, "lmtp.sock")

    def send(self, *argv, environ=None, stderr=None, getpass=None):
        """
        Run C{mailproto send ARGV}; C{self.out} and C{self.err} get what it
        says.

        @return: a L{Deferred} firing with the exit status.
        """
        self.out, self.err = io.StringIO(), stderr or io.StringIO()
        options = _parse("--helo", "client.example", "--timeout", "10", *argv)
        self.command = options.makeCommand(
            reactor, self.out, self.err, environ={} if environ is None else environ, getpass=getpass
        )
        return self.command.run()

    def assertSummary(self, sent, refused, failed, connections):
        summary = f"{sent} sent, {refused} refused, {failed} failed in [0-9.]+ s \\([0-9.]+ msgs/s\\) over {connections} connections?\n"
        self.assertRegex(self.out.getvalue(), "^" + summary + "$")

    @defer.inlineCallbacks
    def test_bulk(self):
        """
        C{--count 20 --concurrency 3} sends exactly 20 messages, numbered 1
        to 20, over exactly 3 connections; the summary says so; a progress
        bar is drawn on a terminal.
        """
        delivery = MemoryDelivery()
        factory = _CountingFactory(delivery=delivery, domain=b"mx.example")
        port = self.listen(factory)
        stderr = _TTY()
        status = yield self.send(
            "--port", str(port), "--from", SENDER, "--to", RECIPIENT, "--count", "20", "--concurrency", "3",
            stderr=stderr,
        )  # fmt: skip
        yield factory.allClosed()
        self.assertEqual(status, 0, self.err.getvalue())
        self.assertEqual(factory.connections, 3)
        self.assertEqual(len(delivery.messages), 20)
        subjects = sorted(_parseMessage(m.data)["Subject"] for m in delivery.messages)
        self.assertEqual(subjects, sorted(f"mailproto test {n}" for n in range(1, 21)))
        self.assertEqual({bytes(m.sender) for m in delivery.messages}, {SENDER.encode()})
        self.assertEqual({m.helo[0] for m in delivery.messages}, {b"client.example"})
        self.assertSummary(20, 0, 0, 3)
        bar = stderr.getvalue()
        self.assertTrue(bar.startswith("\r["), bar)
        self.assertTrue(re.search(r"\] 20/20 100%  [0-9.]+ msgs/s\n$", bar), bar)

    @defer.inlineCallbacks
    def test_concurrencyAboveCount(self):
        """
        No more connections are made than there are messages; C{--quiet}
        prints nothing.
        """
        delivery = MemoryDelivery()
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory)
        status = yield self.send("-p", str(port), "-f", SENDER, "-t", RECIPIENT, "-n", "2", "-c", "5", "-q")
        yield factory.allClosed()
        self.assertEqual((status, factory.connections, len(delivery.messages)), (0, 2, 2))
        self.assertEqual((self.out.getvalue(), self.err.getvalue()), ("", ""))

    @defer.inlineCallbacks
    def test_refusedRecipient(self):
        """
        A refused recipient makes the message count as refused, says why on
        stderr, and the exit status is 1; the other messages go on.
        """
        delivery = MemoryDelivery(refuseRecipients=[b"bad@example.com"])
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory)
        status = yield self.send("--port", str(port), "--from", SENDER, "--to", "bad@example.com")
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual(delivery.messages, [])
        self.assertSummary(0, 1, 0, 1)
        lines = self.err.getvalue().splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("mailproto send: the message was refused: 550 "), lines)
        self.assertTrue(
            lines[1].startswith("mailproto send: the message: recipient <bad@example.com> was refused: 550 5.1.1 "), lines
        )

    @defer.inlineCallbacks
    def test_refusedOneOfTwo(self):
        """
        A message that reached one recipient but not the other counts as
        refused.
        """
        delivery = MemoryDelivery(refuseRecipients=[b"bad@example.com"])
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory)
        status = yield self.send(
            "--port", str(port), "--from", SENDER, "--to", RECIPIENT, "--to", "bad@example.com", "--count", "3"
        )
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual([bytes(m.recipient) for m in delivery.messages], [RECIPIENT.encode()] * 3)
        self.assertSummary(0, 3, 0, 1)
        self.assertIn("mailproto send: message 2: recipient <bad@example.com> was refused: 550 5.1.1 ", self.err.getvalue())

    @defer.inlineCallbacks
    def test_refusedSender(self):
        """
        A refused sender refuses the message.
        """
        delivery = MemoryDelivery(refuseSenders=[SENDER.encode()])
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory)
        status = yield self.send("--port", str(port), "--from", SENDER, "--to", RECIPIENT)
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertSummary(0, 1, 0, 1)
        self.assertTrue(self.err.getvalue().startswith("mailproto send: the message was refused: 550 5.7.1 "))

    @defer.inlineCallbacks
    def test_lmtpOnUnixSocket(self):
        """
        With C{--lmtp --socket}, the messages go by LMTP over a UNIX socket;
        each recipient gets its own reply.
        """
        path = self.socketPath()
        delivery = MemoryDelivery()
        factory = _CountingLMTPFactory(delivery=delivery)
        port = reactor.listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        status = yield self.send(
            "--lmtp", "--socket", path, "--from", SENDER, "--to", "a@example.com", "--to", "b@example.com",
            "--count", "4", "--concurrency", "2", "--header", "Subject: by LMTP",
        )  # fmt: skip
        yield factory.allClosed()
        self.assertEqual(status, 0, self.err.getvalue())
        self.assertEqual(len(delivery.messages), 8)
        self.assertEqual({bytes(m.recipient) for m in delivery.messages}, {b"a@example.com", b"b@example.com"})
        self.assertEqual({_parseMessage(m.data)["Subject"] for m in delivery.messages}, {"by LMTP"})
        self.assertSummary(4, 0, 0, 2)

    @defer.inlineCallbacks
    def test_lmtpRefusedRecipient(self):
        """
        Over LMTP too, a refused recipient counts as refused.
        """
        path = self.socketPath()
        delivery = MemoryDelivery(refuseRecipients=[b"bad@example.com"])
        factory = _CountingLMTPFactory(delivery=delivery)
        port = reactor.listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        status = yield self.send("--lmtp", "--socket", path, "-f", SENDER, "-t", RECIPIENT, "-t", "bad@example.com")
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual(len(delivery.messages), 1)
        self.assertSummary(0, 1, 0, 1)

    def tlsFiles(self):
        if trustme is None:
            missing("trustme is not installed")
        ca = trustme.CA()
        directory = self.mktemp()
        os.makedirs(directory)
        cafile = os.path.join(directory, "ca.pem")
        ca.cert_pem.write_to_path(cafile)
        return ca, cafile

    @defer.inlineCallbacks
    def test_implicitTLS(self):
        """
        With C{--tls} and C{--cafile}, the messages go over TLS, the
        server's certificate checked against that CA and C{--server}.
        """
        ca, cafile = self.tlsFiles()
        delivery = MemoryDelivery()
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory, tls=_serverTLS(ca.issue_cert("localhost", "127.0.0.1")))
        status = yield self.send(
            "--tls", "--cafile", cafile, "--port", str(port), "--from", SENDER, "--to", RECIPIENT, "-n", "3", "-c", "2"
        )
        yield factory.allClosed()
        self.assertEqual(status, 0, self.err.getvalue())
        self.assertEqual(len(delivery.messages), 3)
        self.assertSummary(3, 0, 0, 2)
        self.assertEqual(self.err.getvalue(), "")

    @defer.inlineCallbacks
    def test_implicitTLSWrongCA(self):
        """
        A certificate from another CA than C{--cafile}'s fails the
        connection with a clear line; nothing is sent; status 1.
        """
        ca, cafile = self.tlsFiles()
        other = trustme.CA()
        delivery = MemoryDelivery()
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory, tls=_serverTLS(other.issue_cert("localhost", "127.0.0.1")))
        status = yield self.send("--tls", "--cafile", cafile, "--port", str(port), "--from", SENDER, "--to", RECIPIENT)
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual(delivery.messages, [])
        self.assertSummary(0, 0, 1, 1)
        self.assertEqual(
            self.err.getvalue(),
            f"mailproto send: TLS with 127.0.0.1:{port} failed: the server's certificate is not trusted"
            " (certificate verify failed); see --cafile, --insecure\n",
        )

    @defer.inlineCallbacks
    def test_implicitTLSWrongName(self):
        """
        A certificate for another name than C{--server} fails too.
        """
        ca, cafile = self.tlsFiles()
        factory = _CountingFactory(delivery=MemoryDelivery())
        port = self.listen(factory, tls=_serverTLS(ca.issue_cert("mx.example")))
        status = yield self.send("--tls", "--cafile", cafile, "--port", str(port), "--from", SENDER, "--to", RECIPIENT)
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual(
            self.err.getvalue(),
            f"mailproto send: TLS with 127.0.0.1:{port} failed: the server's certificate is for another name"
            " than 127.0.0.1; see --server, --insecure\n",
        )

    @defer.inlineCallbacks
    def test_insecure(self):
        """
        With C{--insecure} the certificate is not checked, with a warning;
        the transcript says the certificate was not checked.
        """
        ca, cafile = self.tlsFiles()
        delivery = MemoryDelivery()
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory, tls=_serverTLS(trustme.CA().issue_cert("mx.example")))
        status = yield self.send("--tls", "--insecure", "-v", "--port", str(port), "--from", SENDER, "--to", RECIPIENT)
        yield factory.allClosed()
        self.assertEqual(status, 0, self.err.getvalue())
        self.assertEqual(len(delivery.messages), 1)
        self.assertTrue(self.err.getvalue().startswith("mailproto send: warning: --insecure: "))
        self.assertIn("*** TLS started; the server's certificate for ", self.out.getvalue())
        self.assertIn(": NOT checked (--insecure)\n", self.out.getvalue())

    @defer.inlineCallbacks
    def test_starttlsRequired(self):
        """
        With C{--starttls}, a server without STARTTLS gets nothing: the
        command says why and fails.
        """
        delivery = MemoryDelivery()
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory)
        status = yield self.send("--starttls", "--port", str(port), "--from", SENDER, "--to", RECIPIENT, "-n", "5", "-c", "2")
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual((delivery.messages, delivery.senders), ([], []))
        self.assertSummary(0, 0, 5, 2)
        self.assertEqual(
            self.err.getvalue(),
            f"mailproto send: 127.0.0.1:{port} does not offer STARTTLS, and TLS is required: nothing was sent\n",
        )

    @defer.inlineCallbacks
    def test_opportunisticSTARTTLS(self):
        """
        By default STARTTLS is used when the server offers it (here a test
        server that does), the certificate checked; the transcript shows
        it.
        """
        ca, cafile = self.tlsFiles()
        delivery = MemoryDelivery()
        factory = _ExtraFactory(delivery=delivery)
        factory.tlsOptions = _serverTLS(ca.issue_cert("localhost", "127.0.0.1"))
        port = self.listen(factory)
        status = yield self.send("--cafile", cafile, "-v", "--port", str(port), "--from", SENDER, "--to", RECIPIENT)
        yield factory.allClosed()
        self.assertEqual(status, 0, self.err.getvalue())
        self.assertEqual(len(delivery.messages), 1)
        out = self.out.getvalue()
        self.assertIn("C: STARTTLS\nS: 220 2.0.0 Ready to start TLS\n", out)
        self.assertIn("*** TLS started; the server's certificate for ", out)
        self.assertRegex(out, r": checked\n(.*\n)*C: MAIL FROM:<sender@example.com>")

    @defer.inlineCallbacks
    def test_opportunisticSTARTTLSUntrusted(self):
        """
        A certificate that does not check out after STARTTLS is an error,
        not a reason to go on in the clear.
        """
        ca, cafile = self.tlsFiles()
        delivery = MemoryDelivery()
        factory = _ExtraFactory(delivery=delivery)
        factory.tlsOptions = _serverTLS(trustme.CA().issue_cert("localhost", "127.0.0.1"))
        port = self.listen(factory)
        status = yield self.send("--cafile", cafile, "--port", str(port), "--from", SENDER, "--to", RECIPIENT)
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual(delivery.senders, [])
        self.assertIn("the server's certificate is not trusted", self.err.getvalue())

    @defer.inlineCallbacks
    def test_auth(self):
        """
        C{--user} authenticates with the password of C{MAILPROTO_PASSWORD};
        the transcript masks it.
        """
        delivery = MemoryDelivery()
        factory = _ExtraFactory(delivery=delivery)
        factory.users = [b"\0joe\0s3cret"]
        port = self.listen(factory)
        status = yield self.send(
            "--user", "joe", "--no-tls", "-v", "--port", str(port), "--from", SENDER, "--to", RECIPIENT,
            environ={"MAILPROTO_PASSWORD": "s3cret"},
        )  # fmt: skip
        yield factory.allClosed()
        self.assertEqual(status, 0, self.err.getvalue())
        self.assertEqual(factory.responses, [b"\0joe\0s3cret"])
        self.assertEqual(len(delivery.messages), 1)
        self.assertIn("C: AUTH PLAIN ********\nS: 235 2.7.0 Authentication successful\n", self.out.getvalue())
        self.assertNotIn(base64.b64encode(b"\0joe\0s3cret").decode(), self.out.getvalue())
        self.assertEqual(
            self.err.getvalue(), "mailproto send: warning: --no-tls: the user name and password cross the network unencrypted\n"
        )

    @defer.inlineCallbacks
    def test_authDeclined(self):
        """
        A wrong password (here typed at the patched prompt) is said in one
        line; nothing is sent.
        """
        delivery = MemoryDelivery()
        factory = _ExtraFactory(delivery=delivery)
        factory.users = [b"\0joe\0s3cret"]
        port = self.listen(factory)
        status = yield self.send(
            "--user", "joe", "--no-tls", "-q", "--port", str(port), "--from", SENDER, "--to", RECIPIENT,
            getpass=lambda prompt: "wrong",
        )  # fmt: skip
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual(delivery.senders, [])
        self.assertIn(
            f"mailproto send: authentication with 127.0.0.1:{port} failed: 535 5.7.8 Authentication credentials invalid\n",
            self.err.getvalue(),
        )
        self.assertNotIn("wrong", self.err.getvalue())

    @defer.inlineCallbacks
    def test_authNotOffered(self):
        """
        A server without AUTH gets nothing when C{--user} is given.
        """
        delivery = MemoryDelivery()
        factory = _CountingFactory(delivery=delivery)
        port = self.listen(factory)
        status = yield self.send(
            "--user", "joe", "--auth", "login", "--no-tls", "--port", str(port), "--from", SENDER, "--to", RECIPIENT,
            environ={"MAILPROTO_PASSWORD": "x"},
        )  # fmt: skip
        yield factory.allClosed()
        self.assertEqual(status, 1)
        self.assertEqual(delivery.senders, [])
        self.assertIn(
            f"mailproto send: 127.0.0.1:{port} offers no AUTH mechanism to use (offered: none; usable: LOGIN):"
            " nothing was sent\n",
            self.err.getvalue(),
        )

    @defer.inlineCallbacks
    def test_reconnect(self):
        """
        A server that refuses the next message with C{421} and closes the
        connection after a few messages: that message is refused (with the
        server's 421), a new connection takes the rest.
        """
        delivery = MemoryDelivery()
        factory = _ExtraFactory(delivery=delivery)
        factory.perConnection = 5
        port = self.listen(factory)
        status = yield self.send("--port", str(port), "--from", SENDER, "--to", RECIPIENT, "--count", "20")
        yield factory.allClosed()
        self.assertEqual(status, 1)
        # 1-5 sent, 6 refused; 7-11, 12; 13-17, 18; 19-20.
        self.assertEqual(len(delivery.messages), 17)
        self.assertEqual(factory.connections, 4)
        self.assertSummary(17, 3, 0, 4)
        self.assertIn(
            "mailproto send: message 6 was refused: 421 4.7.0 Too many messages on this connection\n",
            self.err.getvalue(),
        )
        self.assertIn(
            f"mailproto send: 127.0.0.1:{port} closed the connection: 421 4.7.0 Too many messages on this connection\n",
            self.err.getvalue(),
        )

    @defer.inlineCallbacks
    def test_cannotConnect(self):
        """
        A connection that cannot be made is one clear line (once, however
        many connections); every message failed.
        """
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        port = busy.getHost().port
        yield busy.stopListening()
        status = yield self.send("--port", str(port), "--from", SENDER, "--to", RECIPIENT, "-n", "10", "-c", "3")
        self.assertEqual(status, 1)
        self.assertEqual(self.err.getvalue(), f"mailproto send: cannot connect to 127.0.0.1:{port}: Connection refused\n")
        self.assertSummary(0, 0, 10, 0)

    @defer.inlineCallbacks
    def test_noSocket(self):
        """
        A UNIX socket that is not there is one clear line.
        """
        path = self.socketPath()
        status = yield self.send("--lmtp", "--socket", path, "--from", SENDER, "--to", RECIPIENT)
        self.assertEqual(status, 1)
        self.assertEqual(self.err.getvalue(), f"mailproto send: cannot connect to UNIX socket {path}: No such file or directory\n")

    @defer.inlineCallbacks
    def test_greetingRefused(self):
        """
        A server that refuses the connection in its greeting: one line
        with its reply.
        """

        class Refusing(Protocol):
            def connectionMade(self):
                self.transport.write(b"554 5.7.1 No SMTP service here\r\n")

        port = self.listen(Factory.forProtocol(Refusing))
        status = yield self.send("--port", str(port), "--from", SENDER, "--to", RECIPIENT, "-n", "3")
        self.assertEqual(status, 1)
        self.assertEqual(
            self.err.getvalue(), f"mailproto send: 127.0.0.1:{port} refused the connection: 554 5.7.1 No SMTP service here\n"
        )
        self.assertSummary(0, 0, 3, 1)

    @defer.inlineCallbacks
    def test_timeout(self):
        """
        A server that never answers: the command gives up after
        C{--timeout} seconds, in one line.
        """
        closed = []

        class Silent(Protocol):
            def connectionLost(self, reason):
                closed.append(reason)

        port = self.listen(Factory.forProtocol(Silent))
        status = yield self.send("--port", str(port), "--timeout", "0.3", "--from", SENDER, "--to", RECIPIENT)
        self.assertEqual(status, 1)
        self.assertEqual(
            self.err.getvalue(),
            f"mailproto send: 127.0.0.1:{port} did not greet within 0.3 s; if it expects TLS from the start, use --tls\n",
        )
        self.assertSummary(0, 0, 1, 1)

    @defer.inlineCallbacks
    def test_stop(self):
        """
        Stopping (Ctrl-C) drops the connections; what was not sent is said
        as not sent, not as failed.
        """
        port = self.listen(Factory.forProtocol(Protocol))
        d = self.send("--port", str(port), "--from", SENDER, "--to", RECIPIENT, "-n", "5", "-c", "2")
        yield _sleep(0.1)
        self.command.stop()
        status = yield d
        self.assertEqual(status, 1)
        self.assertEqual(self.err.getvalue(), "")
        self.assertRegex(
            self.out.getvalue(), r"^0 sent, 0 refused, 0 failed, 5 not sent \(stopped\) in [0-9.]+ s .* over 2 connections\n$"
        )


class _AiosmtpdRecorder:
    """
    An aiosmtpd handler that keeps the messages, and an authenticator that
    accepts C{joe} with C{s3cret}.
    """

    def __init__(self):
        self.messages = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.content, session.ssl is not None, session.authenticated))
        return "250 2.0.0 recorded"

    def authenticate(self, server, session, envelope, mechanism, authData):
        login, password = getattr(authData, "login", None), getattr(authData, "password", None)
        self.logins.append((mechanism, login, password))
        return AuthResult(success=(login, password) == (b"joe", b"s3cret"))


class AiosmtpdTests(TestCase):
    """
    Against aiosmtpd, which insists on STARTTLS, then on AUTH: C{--user}
    alone makes STARTTLS required, the certificate is checked against
    C{--cafile}, and LOGIN's secrets are masked in the transcript.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_starttlsAndLogin(self):
        """
        Two messages over one connection: STARTTLS, AUTH LOGIN, both
        messages over TLS and authenticated.
        """
        if Controller is None or trustme is None:
            missing("aiosmtpd or trustme is not installed")
        import logging
        import socket
        import ssl

        from twisted.internet.threads import deferToThread

        # aiosmtpd warns about its own use of a deprecated attribute.
        aiosmtpdLog = logging.getLogger("mail.log")
        self.addCleanup(aiosmtpdLog.setLevel, aiosmtpdLog.level)
        aiosmtpdLog.setLevel(logging.ERROR)

        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        cafile = os.path.join(self.mktemp() + "-ca.pem")
        ca.cert_pem.write_to_path(cafile)
        recorder = _AiosmtpdRecorder()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        controller = Controller(
            recorder, hostname="127.0.0.1", port=port, decode_data=False, tls_context=context,
            require_starttls=True, auth_require_tls=True, authenticator=recorder.authenticate,
        )  # fmt: skip
        yield deferToThread(controller.start)
        self.addCleanup(deferToThread, controller.stop)
        out, err = io.StringIO(), io.StringIO()
        options = _parse(
            "--port", str(port), "--user", "joe", "--auth", "LOGIN", "--cafile", cafile, "-v", "--helo", "client.example",
            "--from", SENDER, "--to", RECIPIENT, "--count", "2", "--timeout", "10",
        )  # fmt: skip
        self.assertEqual(options.config.tls, STARTTLS)
        command = options.makeCommand(reactor, out, err, environ={"MAILPROTO_PASSWORD": "s3cret"})
        status = yield command.run()
        self.assertEqual(status, 0, err.getvalue())
        self.assertEqual(err.getvalue(), "")
        self.assertEqual(recorder.logins, [("LOGIN", b"joe", b"s3cret")])
        self.assertEqual([(tls, authenticated) for content, tls, authenticated in recorder.messages], [(True, True)] * 2)
        transcript = out.getvalue()
        self.assertIn("C: STARTTLS\n", transcript)
        self.assertRegex(transcript, r"\nC: AUTH LOGIN\nS: 334 \S+\nC: \*{8}\nS: 334 \S+\nC: \*{8}\nS: 235 ")
        self.assertNotIn(base64.b64encode(b"s3cret").decode(), transcript)
        self.assertTrue(transcript.endswith("2 sent, 0 refused, 0 failed in " + transcript.rsplit(" in ", 1)[1]))


def _sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class _SendProcess(ProcessProtocol):
    """
    Watch a C{mailproto send} process: C{ended} fires with how it ended.
    """

    def __init__(self, stdin=None):
        self.ended = defer.Deferred()
        self.stdin = stdin
        self.out = b""
        self.err = b""

    def connectionMade(self):
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class CommandEndToEndTests(TestCase):
    """
    The real command, C{python -m mailproto send}, in a subprocess, against
    a server started here.
    """

    timeout = 60

    def spawn(self, *argv, stdin=None):
        process = _SendProcess(stdin)
        pythonPath = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        env = dict(os.environ, PYTHONPATH=pythonPath)
        env.pop("MAILPROTO_PASSWORD", None)
        reactor.spawnProcess(process, sys.executable, [sys.executable, "-m", "mailproto", "send", *argv], env=env)
        return process

    @defer.inlineCallbacks
    def test_send(self):
        """
        The command sends the messages, prints the summary on stdout and
        nothing on stderr, and exits with status 0.
        """
        delivery = MemoryDelivery()
        factory = _CountingFactory(delivery=delivery)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        process = self.spawn(
            "--port", str(port.getHost().port), "--from", SENDER, "--to", RECIPIENT, "-n", "6", "-c", "2",
            "--data", "-", "--header", "X-Test: subprocess",
            stdin=b"Subject: from stdin\n\nhello\n",
        )  # fmt: skip
        reason = yield process.ended
        yield factory.allClosed()
        self.assertEqual(reason.exitCode, 0, process.err)
        self.assertEqual(process.err, b"")
        self.assertRegex(
            process.out.decode(), r"^6 sent, 0 refused, 0 failed in [0-9.]+ s \([0-9.]+ msgs/s\) over 2 connections\n$"
        )
        self.assertEqual(len(delivery.messages), 6)
        self.assertEqual(delivery.messages[0].data, b"X-Test: subprocess\r\nSubject: from stdin\r\n\r\nhello\r\n")

    @defer.inlineCallbacks
    def test_cannotConnect(self):
        """
        A server that is not there: one line on stderr, status 1.
        """
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = busy.getHost().port
        yield busy.stopListening()
        process = self.spawn("--port", str(number), "--from", SENDER, "--to", RECIPIENT, "--quiet")
        reason = yield process.ended
        self.assertEqual(reason.exitCode, 1)
        self.assertEqual(process.err, b"mailproto send: cannot connect to 127.0.0.1:%d: Connection refused\n" % number)
        self.assertEqual(process.out, b"")

    @defer.inlineCallbacks
    def test_usageError(self):
        """
        A usage error: one line on stderr, no traceback, status 2.
        """
        process = self.spawn("--from", SENDER, "--to", RECIPIENT, "--count", "none")
        reason = yield process.ended
        self.assertEqual(reason.exitCode, 2)
        self.assertEqual(
            process.err,
            b"mailproto send: error: --count: not a whole number: 'none'"
            b" (see 'mailproto send --help')\n",
        )
