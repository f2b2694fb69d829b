# -*- test-case-name: mailproto.test.test_docshell -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The shell commands of C{docs/sink.rst} work as pasted: each section's
C{mailproto sink} command is started through C{/bin/sh} in a scratch
directory, the page's own client command sends to it, and what the sink
printed and stored is compared with what the page says; then the sink
is stopped with SIGTERM, as the page says, and must exit 0.

Only what a test cannot share is changed: C{mailproto} and C{python3}
are this checkout's (C{python -m mailproto}, which the page says is the
same thing), the sink listens on a free port (C{--port 0}, or port 0 in
an endpoint) and the client is given that port in place of the page's,
and the LMTP socket is in a scratch directory rather than C{/tmp}.
"""

from __future__ import annotations

import mailbox
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from mailproto.test.test_docs import DOCS

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Seconds a sink may take to start, a client to send, a sink to stop.
_WAIT = 30

_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d"


def literalBlocks(page: str) -> list[str]:
    """
    @return: the literal blocks (after C{::}) of C{docs/PAGE}, dedented,
        in order.
    """
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"::\n\n((?:    .*\n|\n)+)", text):
        lines = match.group(1).rstrip("\n").splitlines()
        blocks.append("\n".join(line[4:] for line in lines))
    return blocks


def block(page: str, start: str) -> str:
    """
    @return: the literal block of C{docs/PAGE} that starts with C{start}.
    """
    found = [b for b in literalBlocks(page) if b.startswith(start)]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} literal blocks of {page} start with {start!r}")
    return found[0]


def shown(text: str) -> re.Pattern:
    """
    @return: a pattern matching the page's sample output C{text}, whatever
        the client's name and the time.
    """
    pattern = re.escape(text)
    pattern = pattern.replace(re.escape("2024-05-01 14:03:07+02:00"), _TIME)
    pattern = pattern.replace(re.escape("client.example"), r"\S+")
    return re.compile(pattern)


def asRun(command: str) -> str:
    """
    @return: a command line of the page, run with this checkout's Python
        and mailproto.
    """
    python = shlex.quote(sys.executable)
    lines = []
    for line in command.splitlines():
        if line.startswith("mailproto "):
            line = f"{python} -m mailproto " + line[len("mailproto ") :]
        elif line.startswith("python3 "):
            line = f"{python} " + line[len("python3 ") :]
        lines.append(line)
    return "\n".join(lines)


def _environment() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))


def run(command: str, where: str) -> subprocess.CompletedProcess:
    """
    Run one of the page's commands (not a sink) through the shell in
    C{where}, and wait for it.
    """
    return subprocess.run(["/bin/sh", "-c", asRun(command)], cwd=where, env=_environment(), capture_output=True, timeout=_WAIT)


class _Sink:
    """
    A C{mailproto sink} started through the shell.
    """

    def __init__(self, case: SynchronousTestCase, command: str, where: str) -> None:
        self.case = case
        self.where = where
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", "exec " + asRun(command)], cwd=where, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        case.addCleanup(self._kill)
        self.err = b""
        self._startLines()

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(_WAIT)
        for pipe in (self.process.stdout, self.process.stderr):
            pipe.close()

    def _startLines(self) -> None:
        """
        Read stderr until the line that says where messages go (the last
        start line), or fail.
        """
        deadline = time.monotonic() + _WAIT
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stderr, selectors.EVENT_READ)
            while b"messages" not in self.err:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.case.fail(f"the sink did not start: {self.err!r}")
                chunk = os.read(self.process.stderr.fileno(), 65536)
                if not chunk:
                    self.case.fail(f"the sink ended: {self.err!r}")
                self.err += chunk
        self.startLines = self.err.decode().splitlines()

    @property
    def port(self) -> int:
        """
        The TCP port the sink said it listens on.
        """
        [port] = re.findall(r"listening on 127\.0\.0\.1 port (\d+) ", self.err.decode())
        return int(port)

    def run(self, command: str) -> str:
        """
        Run one of the page's commands in the sink's directory; it must
        succeed.

        @return: its stdout.
        """
        result = run(command, self.where)
        self.case.assertEqual(result.returncode, 0, result.stderr.decode("utf-8", "replace"))
        return result.stdout.decode()

    def stop(self) -> tuple[str, list[str]]:
        """
        Stop the sink with SIGTERM; it exits 0, saying so on stderr.

        @return: its stdout, and its stderr lines.
        """
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=_WAIT)
        lines = (self.err + err).decode().splitlines()
        self.case.assertEqual(self.process.returncode, 0, lines)
        return out.decode(), lines


class SinkPageTests(SynchronousTestCase):
    """
    docs/sink.rst, section by section.
    """

    if DOCS is None:
        skip = "docs/ not found: set MAILPROTO_SOURCE to the source tree"

    page = "sink.rst"

    def setUp(self):
        self.where = os.path.abspath(self.mktemp())
        os.makedirs(self.where)

    def sink(self, command: str) -> _Sink:
        """
        Start the page's sink C{command} on a free port: C{--port 0} added
        to a command that names no port (the page's default is 1025), or
        port 0 put in an C{ssl:} endpoint's.
        """
        if "ssl:1465:" in command:
            command = command.replace("ssl:1465:", "ssl:0:")
        elif "--listen" not in command:
            command += " --port 0"
        return _Sink(self, command, self.where)

    def client(self, start: str, port: int, pagePort: int = 1025) -> str:
        """
        @return: the page's client command that starts with C{start},
            sending to C{port} rather than the page's.
        """
        command = block(self.page, start)
        self.assertIn(f'"localhost", {pagePort}', command)
        return command.replace(f'"localhost", {pagePort}', f'"localhost", {port}')

    def makeCertificates(self, command: str) -> None:
        """
        Run the page's C{python3 -m trustme} command: it writes the files
        the page names.
        """
        try:
            import trustme  # noqa: F401
        except ImportError:
            self.skipTest("trustme is not installed")
        result = run(command, self.where)
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in ("server.pem", "server.key", "client.pem"):
            self.assertTrue(os.path.exists(os.path.join(self.where, name)), name)

    def test_printEveryMessage(self):
        """
        "Print every message": the smtplib command's message is printed
        on stdout as the page shows it, one message, and nothing else;
        stderr has one line for where it listens and one for where it
        stores, and one when it stops.
        """
        self.assertIn("mailproto sink", literalBlocks(self.page))
        sink = self.sink("mailproto sink")
        self.assertEqual(len(sink.startLines), 2, sink.startLines)
        self.assertRegex(sink.startLines[0], r"^mailproto sink: listening on 127\.0\.0\.1 port \d+ for ESMTP$")
        self.assertEqual(sink.run(self.client("python3 -c 'import smtplib; smtplib.SMTP(", sink.port)), "")
        out, err = sink.stop()
        self.assertIsNotNone(shown(block(self.page, "---------- message 1 from ") + "\n").fullmatch(out), out)
        self.assertEqual(err[2:], ["mailproto sink: stopped after 1 message(s)"])

    def test_summary(self):
        """
        "One line per message": the line is the page's.
        """
        sink = self.sink(block(self.page, "mailproto sink --summary"))
        sink.run(self.client("python3 -c 'import smtplib; smtplib.SMTP(", sink.port))
        out, _ = sink.stop()
        self.assertIsNotNone(shown(block(self.page, "2024-05-01 ") + "\n").fullmatch(out), out)

    def test_maildir(self):
        """
        "Keep the messages in a Maildir": the message is in C{new/}, byte
        for byte, and the page's Python reader prints its Subject.
        """
        sink = self.sink(block(self.page, "mailproto sink --maildir ./mail"))
        sink.run(self.client("python3 -c 'import smtplib; smtplib.SMTP(", sink.port))
        reader = [line for line in block(self.page, "mutt -f ./mail").splitlines() if line.startswith("python3 ")]
        self.assertEqual(sink.run("\n".join(reader)), "hi\n")
        sink.stop()
        [name] = os.listdir(os.path.join(self.where, "mail", "new"))
        with open(os.path.join(self.where, "mail", "new", name), "rb") as f:
            self.assertEqual(f.read(), b"Subject: hi\r\n\r\nHello\r\n")
        self.assertEqual(os.listdir(os.path.join(self.where, "mail", "tmp")), [])

    def test_mbox(self):
        """
        "Append the messages to an mbox": one message in the mbox, LF line
        ends, and the summary line names it.
        """
        sink = self.sink(block(self.page, "mailproto sink --mbox ./mail.mbox --summary"))
        sink.run(self.client("python3 -c 'import smtplib; smtplib.SMTP(", sink.port))
        out, _ = sink.stop()
        self.assertRegex(out, r"from=<me@example\.com> to=<you@example\.com> size=22 .*subject=hi\n$")
        box = mailbox.mbox(os.path.join(self.where, "mail.mbox"))
        self.addCleanup(box.close)
        [message] = box
        self.assertEqual((message["Subject"], message.get_payload()), ("hi", "Hello\n"))

    def test_lmtp(self):
        """
        "LMTP on a UNIX socket": the smtplib LMTP command delivers into
        the Maildir.  The socket is in a short scratch directory (a UNIX
        socket path is short) instead of C{/tmp}.
        """
        command = block(self.page, "mailproto sink --lmtp ")
        sockets = tempfile.mkdtemp(prefix="lmtp", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.addCleanup(shutil.rmtree, sockets, True)
        path = os.path.join(sockets, "lmtp.sock")
        self.assertIn("/tmp/lmtp.sock", command)
        sink = _Sink(self, command.replace("/tmp/lmtp.sock", path), self.where)
        self.assertRegex(sink.startLines[0], r" for LMTP$")
        client = block(self.page, "python3 -c 'import smtplib; smtplib.LMTP(")
        self.assertIn('"/tmp/lmtp.sock"', client)
        sink.run(client.replace('"/tmp/lmtp.sock"', f'"{path}"'))
        sink.stop()
        self.assertEqual(len(os.listdir(os.path.join(self.where, "mail", "new"))), 1)

    def test_implicitTLS(self):
        """
        "Implicit TLS (SMTPS)": the page's trustme command makes the
        files, the sink listens with them, and the page's SMTP_SSL client
        (trusting C{client.pem}) sends.
        """
        commands = block(self.page, "python3 -m trustme").splitlines()
        self.assertEqual(len(commands), 2, commands)
        self.makeCertificates(commands[0])
        sink = self.sink(commands[1])
        self.assertRegex(sink.startLines[0], r" port \d+ with implicit TLS for ESMTP$")
        sink.run(self.client("python3 -c 'import smtplib, ssl; smtplib.SMTP_SSL(", sink.port, 1465))
        out, _ = sink.stop()
        self.assertIn("---------- end of message 1, 22 octets\n", out)

    def test_starttls(self):
        """
        "STARTTLS": the sink offers STARTTLS with the trustme files, and
        the page's client starts TLS and sends.  A client that does not
        trust the certificate is refused by its own check, and the sink
        gets nothing.
        """
        self.makeCertificates(block(self.page, "python3 -m trustme").splitlines()[0])
        sink = self.sink(block(self.page, "mailproto sink --tls-certificate "))
        client = self.client("python3 -c 'import smtplib, ssl; s = smtplib.SMTP(", sink.port)
        untrusting = client.replace('cafile="client.pem"', "cafile=None")
        self.assertNotEqual(untrusting, client)
        failed = run(untrusting, self.where)
        self.assertNotEqual(failed.returncode, 0)
        self.assertIn(b"CERTIFICATE_VERIFY_FAILED", failed.stderr)
        sink.run(client)
        out, _ = sink.stop()
        self.assertEqual(out.count("---------- end of message"), 1, out)
        self.assertIn("---------- end of message 1, 22 octets\n", out)

