# -*- test-case-name: mailproto.test.test_config -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._relayd._config}: C{twistd mailrelay --config FILE}, and
SIGHUP reading it again.

  - L{ConfigFileTests}: the file's keys become options, the command line
    overrides them, and a bad key is a one-line usage error naming the
    file and its line.
  - L{ReloadTests}: L{ConfigReloader.reload} on a relay made in this
    process (not started): what changed is applied or reported.
  - L{LiveReloadTests}: SIGHUP to a real C{twistd mailrelay --config}: a
    relay network added lets the same client relay; a bad file is
    refused and the client keeps the old behaviour.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import defer
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailproto._relayd._config import ConfigReloader
from mailproto._relayd._daemon import Options, makeService
from mailproto.test.test_daemon import RelayProcess, freePort, waitUntil
from mailproto.test.test_operations import HOSTNAME, PROMPTLY, openSession


def _write(path: str, text: str) -> str:
    # Written whole, then renamed over: SIGHUP never sees half a file.
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".new", path)
    return path


class _ConfigCase(SynchronousTestCase):
    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.spool = os.path.join(self.scratch, "spool")
        self.path = os.path.join(self.scratch, "mailrelay.toml")

    def config(self, text: str) -> str:
        """
        Write the file: a spool and a hostname, then C{text}.
        """
        return _write(self.path, f'spool = "{self.spool}"\nhostname = "relay.example"\n{text}')

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(["--config", self.path, *arguments])
        return options

    def assertConfigError(self, text: str, expected: str, *arguments: str) -> str:
        """
        A file with C{text} (after line 2) is refused with one line that is
        C{expected}, after the file's name.
        """
        self.config(text)
        error = self.assertRaises(usage.UsageError, self.parse, *arguments)
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertEqual(message, f"{self.path}{expected}")
        return message


class ConfigFileTests(_ConfigCase):
    """
    Options from the file.
    """

    def test_keysAreOptions(self):
        """
        Strings, numbers, lists (repeatable options) and true (flags)
        become the options of the same names, checked and converted as on
        the command line.
        """
        self.config(
            'smtp = ["tcp:2525:interface=127.0.0.1", "tcp:2526:interface=127.0.0.1"]\n'
            'relay-network = ["192.0.2.0/24"]\n'
            "max-clients = 20\n"
            'max-message-size = "10M"\n'
            "soft-bounce = true\n"
            "no-reports-to-strangers = false\n"
        )
        options = self.parse()
        self.assertEqual(options["smtp"], ["tcp:2525:interface=127.0.0.1", "tcp:2526:interface=127.0.0.1"])
        self.assertEqual([str(n) for n in options["policy"].networks], ["192.0.2.0/24"])
        self.assertEqual(options["max-clients"], 20)
        self.assertEqual(options["max-message-size"], 10 * 1024 * 1024)
        self.assertTrue(options["soft-bounce"])
        self.assertFalse(options["no-reports-to-strangers"])
        self.assertEqual(options["hostname"], "relay.example")
        self.assertEqual(options["config"], self.path)

    def test_commandLineOverrides(self):
        """
        An option on the command line replaces the file's key: a single
        value, and a repeatable one as a whole (not added to the file's
        list).
        """
        self.config('smtp = ["tcp:2525"]\nmax-clients = 20\nrelay-network = ["192.0.2.0/24"]\n')
        options = self.parse("--max-clients", "30", "--smtp", "tcp:2600")
        self.assertEqual(options["max-clients"], 30)
        self.assertEqual(options["smtp"], ["tcp:2600"])
        self.assertEqual([str(n) for n in options["policy"].networks], ["192.0.2.0/24"])
        # Before --config as well as after it.
        options = Options()
        options.parseOptions(["--max-clients=40", "--config", self.path])
        self.assertEqual(options["max-clients"], 40)

    def test_aSingleStringForARepeatableOption(self):
        """
        A repeatable option may be given one string.
        """
        self.config('relay-domain = "example.com"\n')
        self.assertEqual(self.parse()["relay-domain"], ["example.com"])

    def test_noConfig(self):
        """
        Without C{--config} nothing changes.
        """
        options = Options()
        options.parseOptions(["--spool", self.spool, "--hostname", "relay.example"])
        self.assertIsNone(options["config"])

    def test_unknownKey(self):
        self.assertConfigError("max-client = 5\n", ", line 3: unknown key 'max-client' (no option of twistd mailrelay)")

    def test_commandLineOnlyKey(self):
        self.assertConfigError('config = "other.toml"\n', ", line 3: unknown key 'config' (an option of the command line only)")

    def test_wrongTypes(self):
        self.assertConfigError('soft-bounce = "yes"\n', ", line 3: soft-bounce must be true or false, not a string")
        self.assertConfigError("max-clients = [1]\n", ", line 3: max-clients must be a string or a number, not a list")
        self.assertConfigError("smtp = 25\n", ", line 3: smtp must be a string or a list of strings, not a number")
        self.assertConfigError("smtp = [25]\n", ", line 3: smtp must be a list of strings")
        self.assertConfigError("[smarthost]\nhost = 1\n", ", line 3: smarthost must be a string or a number, not a table")

    def test_badValue(self):
        """
        A value the options' own checks refuse: their message, after the
        file and the key's line.
        """
        self.assertConfigError('\n\nmax-clients = "lots"\n', ", line 5: --max-clients: 'lots' is not a whole number (0 or more)")
        self.assertConfigError('relay-network = ["nonsense"]\n', ", line 3: --relay-network: 'nonsense' does not appear to be an IPv4 or IPv6 network")

    def test_badValueOnTheCommandLine(self):
        """
        A bad option of the command line is not blamed on the file.
        """
        self.config("max-clients = 20\n")
        error = self.assertRaises(usage.UsageError, self.parse, "--max-clients", "lots")
        self.assertEqual(str(error), "--max-clients: 'lots' is not a whole number (0 or more)")

    def test_notTOML(self):
        self.assertConfigError("max-clients = = 3\n", ": not TOML: Invalid value (at line 3, column 15)")

    def test_missingFile(self):
        error = self.assertRaises(usage.UsageError, self.parse)
        self.assertEqual(str(error), f"--config {self.path!r}: cannot read it (No such file or directory)")


class DocumentedExampleTests(_ConfigCase):
    """
    The example file of docs/tutorial-operator.rst.
    """

    def test_exampleParses(self):
        """
        The example parses as it is (its spool moved here by the command
        line).
        """
        from mailproto.test.test_docs import DOCS

        if DOCS is None:
            raise SkipTest("the docs are not here (an installed copy without MAILPROTO_SOURCE)")
        page = os.path.join(DOCS, "tutorial-operator.rst")
        with open(page, encoding="utf-8") as f:
            lines = f.read().splitlines()
        start = lines.index("    # /etc/mailrelay.toml: twistd mailrelay --config /etc/mailrelay.toml")
        example = []
        for line in lines[start:]:
            if line and not line.startswith("    "):
                break
            example.append(line[4:])
        _write(self.path, "\n".join(example) + "\n")
        options = self.parse("--spool", self.spool)
        self.assertEqual(options["relay-domain"], ["example.com"])
        self.assertEqual(options["hostname"], "relay.example.com")
        self.assertEqual(options["smarthost"].port, 587)


class ReloadTests(_ConfigCase):
    """
    L{ConfigReloader.reload} on a relay made from a file.
    """

    def relay(self, text: str):
        self.config(text)
        options = self.parse()
        relay = makeService(options)
        self.assertIsInstance(relay.reloader, ConfigReloader)
        return relay

    def test_applied(self):
        """
        Relay networks and domains, connection and session limits, the
        smart host: changed in the running objects, and said in one line.
        """
        relay = self.relay('relay-network = ["192.0.2.0/24"]\nmax-clients = 20\n')
        policy = relay.factories["smtp"].deliveryFactory.policy
        self.assertFalse(policy.clientMayRelay(b"127.0.0.1", False))
        self.config(
            'relay-network = ["192.0.2.0/24", "127.0.0.0/8"]\nrelay-domain = ["example.com"]\nmax-clients = 30\n'
            'max-message-size = "1M"\nmax-recipients = 7\nsmarthost = "127.0.0.1:2525"\nmax-clients-per-address = 4\n'
        )
        line = relay.reloader.reload()
        self.assertEqual(
            line,
            f"mailrelay: reloaded {self.path}: smarthost, max-message-size, max-recipients, max-clients, "
            "max-clients-per-address, relay-network, relay-domain changed",
        )
        self.assertTrue(policy.clientMayRelay(b"127.0.0.1", False))
        self.assertEqual(policy.domains, {b"example.com"})
        self.assertEqual([str(n) for n in relay.connectionLimits.exempt], ["192.0.2.0/24", "127.0.0.0/8"])
        self.assertEqual((relay.connectionLimits.maxClients, relay.connectionLimits.maxPerAddress), (30, 4))
        self.assertEqual((relay.factory.maxMessageSize, relay.factory.maxRecipients), (1024 * 1024, 7))
        self.assertEqual((relay.manager.smartHost.host, relay.manager.smartHost.port), ("127.0.0.1", 2525))
        self.assertEqual(relay.reloader.reload(), f"mailrelay: reloaded {self.path}: nothing changed")

    def test_usersFile(self):
        """
        Another users file: the checker reads it from then on.
        """
        first, second = os.path.join(self.scratch, "users"), os.path.join(self.scratch, "users2")
        for path in (first, second):
            _write(path, "")
        relay = self.relay(f'users = "{first}"\n')
        self.config(f'users = "{second}"\n')
        self.assertEqual(relay.reloader.reload(), f"mailrelay: reloaded {self.path}: users changed")
        self.assertEqual(relay.checker.usersFile.path, second)

    def test_needsRestart(self):
        """
        Listeners, the spool and the hostname are not applied: said so, and
        said again on the next reload, until the relay restarts.
        """
        relay = self.relay('smtp = ["tcp:2525"]\nmax-clients = 20\n')
        self.config('smtp = ["tcp:2526"]\nmax-clients = 21\n')
        line = f"mailrelay: reloaded {self.path}: max-clients changed; smtp needs a restart (not applied)"
        self.assertEqual(relay.reloader.reload(), line)
        self.assertEqual(relay.connectionLimits.maxClients, 21)
        self.assertEqual(relay.reloader.reload(), f"mailrelay: reloaded {self.path}: smtp needs a restart (not applied)")

    def test_refused(self):
        """
        A file that does not pass is refused whole: nothing in it is
        applied.
        """
        relay = self.relay('relay-network = ["192.0.2.0/24"]\nmax-clients = 20\n')
        self.config('relay-network = ["127.0.0.0/8"]\nmax-clients = "lots"\n')
        self.assertEqual(
            relay.reloader.reload(),
            f"mailrelay: reload refused: {self.path}, line 4: --max-clients: 'lots' is not a whole number (0 or more); "
            "the old configuration stays",
        )
        self.assertEqual(relay.connectionLimits.maxClients, 20)
        self.assertEqual([str(n) for n in relay.factories["smtp"].deliveryFactory.policy.networks], ["192.0.2.0/24"])
        os.unlink(self.path)
        self.assertEqual(
            relay.reloader.reload(),
            f"mailrelay: reload refused: --config {self.path!r}: cannot read it (No such file or directory); the old configuration stays",
        )


class LiveReloadTests(TestCase):
    """
    SIGHUP to C{twistd mailrelay --config FILE}.
    """

    timeout = 90

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.port = freePort()
        self.path = os.path.join(self.scratch, "mailrelay.toml")
        self.head = (
            f'smtp = ["tcp:{self.port}:interface=127.0.0.1"]\n'
            f'spool = "{os.path.join(self.scratch, "spool")}"\n'
            f'hostname = "{HOSTNAME}"\n'
            # A closed port: what is queued waits there.
            f'smarthost = "127.0.0.1:{freePort()}"\n'
        )

    @defer.inlineCallbacks
    def rcptReply(self) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with the relay's reply to a client on
            127.0.0.1 sending to a domain that is not a relay domain.
        """
        session = yield openSession(self, self.port)
        yield session.command(b"EHLO client.example")
        reply = yield session.command(b"MAIL FROM:<alice@example.org>")
        self.assertTrue(reply.startswith(b"250 "), reply)
        reply = yield session.command(b"RCPT TO:<bob@example.com>")
        yield session.command(b"QUIT")
        return reply

    @defer.inlineCallbacks
    def hangUp(self, relay: RelayProcess, needle: str):
        """
        Send SIGHUP; wait for the log line with C{needle}.

        @return: a L{Deferred} firing with that line.
        """
        before = len(relay.logLines(needle))
        relay.process.signalProcess("HUP")
        lines = yield waitUntil(lambda: relay.logLines(needle)[before:], PROMPTLY, lambda: f"{needle!r} in the log:\n{relay.text()}")
        return lines[0]

    @defer.inlineCallbacks
    def test_sighupReloads(self):
        """
        127.0.0.1 is refused relay, then allowed once the file adds
        127.0.0.0/8 and the relay gets SIGHUP; a bad file after that is
        refused and 127.0.0.1 may still relay.
        """
        _write(self.path, self.head + 'relay-network = ["192.0.2.0/24"]\n')
        relay = RelayProcess.spawn(self, ["--config", self.path], self.scratch)
        yield relay.whenListening()
        reply = yield self.rcptReply()
        self.assertTrue(reply.startswith(b"554 5.7.1 "), reply)

        _write(self.path, self.head + 'relay-network = ["192.0.2.0/24", "127.0.0.0/8"]\nmax-clients = 500\n')
        line = yield self.hangUp(relay, "mailrelay: reloaded ")
        self.assertIn(f"mailrelay: reloaded {self.path}: max-clients, relay-network changed", line)
        self.assertTrue(relay.logLines("mailrelay: log file reopened"))
        reply = yield self.rcptReply()
        self.assertTrue(reply.startswith(b"250 "), reply)

        _write(self.path, self.head + 'relay-network = ["192.0.2.0/24"]\nmax-clients = "lots"\n')
        line = yield self.hangUp(relay, "mailrelay: reload refused: ")
        self.assertIn(
            f"mailrelay: reload refused: {self.path}, line 6: --max-clients: 'lots' is not a whole number (0 or more); "
            "the old configuration stays",
            line,
        )
        reply = yield self.rcptReply()
        self.assertTrue(reply.startswith(b"250 "), reply)

        yield relay.terminate()
        self.assertEqual(relay.endSignal, signal.SIGTERM)
        self.assertNotIn("Traceback", relay.text())


class LiveUsersReloadTests(TestCase):
    """
    SIGHUP to C{twistd mailrelay --config FILE} whose C{users} names
    another file: a user added there may then authenticate on the
    submission port.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_userAdded(self):
        import smtplib

        from twisted.internet.threads import deferToThread

        from mailproto._cred import UsersFile
        from mailproto.test.test_mailrelay import _Files

        files = _Files(self)
        scratch = files.directory
        others = files.path("more-users")
        UsersFile(others).setPassword(b"joe", b"secret")
        UsersFile(others).setPassword(b"ann", b"s3cret")
        port = freePort()
        path = os.path.join(scratch, "mailrelay.toml")
        head = (
            f'smtp = ["tcp:{freePort()}:interface=127.0.0.1"]\n'
            f'submission = ["tcp:{port}:interface=127.0.0.1"]\n'
            f'spool = "{os.path.join(scratch, "spool")}"\n'
            f'hostname = "{HOSTNAME}"\n'
            f'smarthost = "127.0.0.1:{freePort()}"\n'
            f'certificate = "{files.certificate}"\n'
        )
        _write(path, head + f'users = "{files.users}"\n')
        relay = RelayProcess.spawn(self, ["--config", path], scratch)
        yield relay.whenListening()

        def login(user: str, password: str) -> int:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.example")
                s.starttls(context=files.clientContext())
                s.ehlo("client.example")
                try:
                    return s.login(user, password)[0]
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code

        self.assertEqual((yield deferToThread(login, "ann", "s3cret")), 535)
        _write(path, head + f'users = "{others}"\n')
        before = len(relay.logLines("mailrelay: reloaded "))
        relay.process.signalProcess("HUP")
        lines = yield waitUntil(lambda: relay.logLines("mailrelay: reloaded ")[before:], PROMPTLY, lambda: relay.text())
        self.assertIn("users changed", lines[0])
        self.assertEqual((yield deferToThread(login, "ann", "s3cret")), 235)
        self.assertEqual((yield deferToThread(login, "joe", "secret")), 235)
        yield relay.terminate()
        self.assertNotIn("Traceback", relay.text())
