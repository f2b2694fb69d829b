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
  - L{CertificateReloadTests}, L{LiveCertificateReloadTests}: a
    certificate renewed in place (same paths, new contents) is used for
    new TLS sessions after a reload; a broken one is refused and the old
    one stays.
"""

from __future__ import annotations

import os
import re
import signal
import ssl

from twisted.internet import defer
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailproto._relayd._config import CertificateReloader, ConfigReloader, tlsIdentity
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


class _Certificates:
    """
    A test authority, and certificates for 127.0.0.1 it issues, written
    in place at one certificate path and one key path (as a renewal
    leaves them).

    @ivar serial: the serial number of the certificate written last.
    """

    def __init__(self, directory: str) -> None:
        try:
            import trustme
        except ImportError:
            trustme = None
        from mailproto.test._peers import need

        need(trustme, "trustme")
        self.ca = trustme.CA()
        self.certificate = os.path.join(directory, "fullchain.pem")
        self.key = os.path.join(directory, "privkey.pem")
        self.renew()

    def issue(self):
        return self.ca.issue_cert("127.0.0.1", "localhost")

    def renew(self) -> int:
        """
        Write a new certificate and its key over the files.

        @return: its serial number.
        """
        issued = self.issue()
        self.write(issued.cert_chain_pems[0].bytes(), issued.private_key_pem.bytes())
        self.serial = _serial(issued.cert_chain_pems[0].bytes())
        return self.serial

    def write(self, certificate: bytes, key: bytes) -> None:
        for path, data in ((self.certificate, certificate), (self.key, key)):
            with open(path + ".new", "wb") as f:
                f.write(data)
            os.replace(path + ".new", path)

    def mismatched(self) -> None:
        """
        Write a new certificate with the key of another.
        """
        self.write(self.issue().cert_chain_pems[0].bytes(), self.issue().private_key_pem.bytes())

    def clientContext(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def _serial(pem: bytes) -> int:
    from OpenSSL import crypto

    return crypto.load_certificate(crypto.FILETYPE_PEM, pem).get_serial_number()


def _servedSerial(tls) -> int:
    return tls.certificate.get_serial_number()


class CertificateReloadTests(_ConfigCase):
    """
    A certificate renewed in place: L{ConfigReloader.reload} (with
    C{--config}) and L{CertificateReloader.reload} (without) read it
    again.
    """

    def setUp(self):
        super().setUp()
        self.files = _Certificates(self.scratch)

    def tlsConfig(self, more: str = "") -> str:
        """
        Write the file: the certificate and key, and a submission port
        (STARTTLS on two listeners), then C{more}.
        """
        users = _write(os.path.join(self.scratch, "users"), "")
        return self.config(
            f'certificate = "{self.files.certificate}"\nprivate-key = "{self.files.key}"\n'
            f'submission = ["tcp:0"]\nusers = "{users}"\n{more}'
        )

    def configRelay(self):
        """
        @return: a relay made from L{tlsConfig}'s file.
        """
        self.tlsConfig()
        relay = makeService(self.parse())
        self.assertIsInstance(relay.reloader, ConfigReloader)
        return relay

    def assertServing(self, relay, serial: int) -> None:
        """
        Every listener that offers STARTTLS serves the certificate
        C{serial}.
        """
        for kind in ("smtp", "submission"):
            self.assertEqual(_servedSerial(relay.factories[kind].contextFactory), serial, kind)

    def test_identity(self):
        """
        L{tlsIdentity} is the same for two loads of the same files, and
        differs for another certificate.
        """
        from mailproto._tls import loadServerOptions

        first = tlsIdentity(loadServerOptions(self.files.certificate, self.files.key))
        self.assertEqual(tlsIdentity(loadServerOptions(self.files.certificate, self.files.key)), first)
        self.files.renew()
        self.assertNotEqual(tlsIdentity(loadServerOptions(self.files.certificate, self.files.key)), first)
        self.assertIsNone(tlsIdentity(None))

    def test_renewedInPlace(self):
        """
        The same paths with a new certificate: new TLS sessions get it,
        and the reload line says where it came from; a reload after that
        finds nothing changed.
        """
        relay = self.configRelay()
        old = self.files.serial
        self.assertServing(relay, old)
        self.assertEqual(relay.reloader.reload(), f"mailrelay: reloaded {self.path}: nothing changed")
        new = self.files.renew()
        self.assertNotEqual(new, old)
        self.assertEqual(
            relay.reloader.reload(), f"mailrelay: reloaded {self.path}: TLS certificate reloaded from {self.files.certificate}"
        )
        self.assertServing(relay, new)
        self.assertEqual(relay.reloader.reload(), f"mailrelay: reloaded {self.path}: nothing changed")

    def test_renewedWithOtherChanges(self):
        """
        A renewal and a changed option are said in the same one line.
        """
        relay = self.configRelay()
        new = self.files.renew()
        self.tlsConfig("max-clients = 7\n")
        self.assertEqual(
            relay.reloader.reload(),
            f"mailrelay: reloaded {self.path}: max-clients changed; TLS certificate reloaded from {self.files.certificate}",
        )
        self.assertServing(relay, new)

    def test_brokenRefused(self):
        """
        A certificate file that is not PEM, or a key that does not match
        the certificate, is refused in one line; the old certificate
        stays, and a good file after that is taken.
        """
        relay = self.configRelay()
        old = self.files.serial
        with open(self.files.key, "rb") as f:
            key = f.read()
        self.files.write(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n", key)
        line = relay.reloader.reload()
        self.assertRegex(line, rf"^mailrelay: reload refused: {re.escape(self.path)}, line 3: --certificate: ")
        self.assertTrue(line.endswith("; the old configuration stays"), line)
        self.assertNotIn("\n", line)
        self.assertServing(relay, old)
        self.files.mismatched()
        line = relay.reloader.reload()
        self.assertIn(f"--certificate: cannot use {self.files.certificate} and {self.files.key}", line)
        self.assertTrue(line.endswith("; the old configuration stays"), line)
        self.assertServing(relay, old)
        new = self.files.renew()
        self.assertIn("TLS certificate reloaded from", relay.reloader.reload())
        self.assertServing(relay, new)

    def test_withoutConfigFile(self):
        """
        Without C{--config}, SIGHUP's reloader reads only the certificate
        and key: unchanged, renewed, or refused (the old one stays), each
        said in one line.
        """
        options = Options()
        options.parseOptions(
            ["--spool", self.spool, "--hostname", "relay.example", "--certificate", self.files.certificate, "--private-key", self.files.key]
        )
        relay = makeService(options)
        self.assertIsInstance(relay.reloader, CertificateReloader)
        old = self.files.serial
        self.assertEqual(relay.reloader.reload(), f"mailrelay: TLS certificate unchanged ({self.files.certificate})")
        self.files.mismatched()
        line = relay.reloader.reload()
        self.assertTrue(line.startswith("mailrelay: TLS certificate reload refused: --certificate: cannot use "), line)
        self.assertTrue(line.endswith("; the old certificate stays"), line)
        self.assertEqual(_servedSerial(relay.factories["smtp"].contextFactory), old)
        new = self.files.renew()
        self.assertEqual(relay.reloader.reload(), f"mailrelay: TLS certificate reloaded from {self.files.certificate}")
        self.assertEqual(_servedSerial(relay.factories["smtp"].contextFactory), new)

    def test_noCertificateNoReloader(self):
        """
        A relay with neither a certificate nor C{--config} has nothing to
        reload.
        """
        options = Options()
        options.parseOptions(["--spool", self.spool, "--hostname", "relay.example"])
        self.assertIsNone(makeService(options).reloader)


class LiveCertificateReloadTests(TestCase):
    """
    SIGHUP to a real C{twistd mailrelay --config FILE} whose certificate
    is renewed in place.
    """

    timeout = 90

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)
        self.files = _Certificates(self.scratch)
        self.port = freePort()
        self.path = _write(
            os.path.join(self.scratch, "mailrelay.toml"),
            f'smtp = ["tcp:{self.port}:interface=127.0.0.1"]\n'
            f'spool = "{os.path.join(self.scratch, "spool")}"\n'
            f'hostname = "{HOSTNAME}"\n'
            f'smarthost = "127.0.0.1:{freePort()}"\n'
            f'certificate = "{self.files.certificate}"\n'
            f'private-key = "{self.files.key}"\n',
        )

    def session(self):
        """
        @return: a L{Deferred} firing with an smtplib session to the relay
            that started TLS (trusting the test authority only).
        """
        import smtplib

        from twisted.internet.threads import deferToThread

        def connect():
            s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
            s.ehlo("client.example")
            s.starttls(context=self.files.clientContext())
            s.ehlo("client.example")
            return s

        return deferToThread(connect)

    @staticmethod
    def served(session) -> int:
        return _serial(ssl.DER_cert_to_PEM_cert(session.sock.getpeercert(binary_form=True)).encode("ascii"))

    @defer.inlineCallbacks
    def newSessionSerial(self):
        from twisted.internet.threads import deferToThread

        session = yield self.session()
        try:
            return self.served(session)
        finally:
            yield deferToThread(session.quit)

    @defer.inlineCallbacks
    def hangUp(self, relay: RelayProcess, needle: str):
        before = len(relay.logLines(needle))
        relay.process.signalProcess("HUP")
        lines = yield waitUntil(lambda: relay.logLines(needle)[before:], PROMPTLY, lambda: f"{needle!r} in the log:\n{relay.text()}")
        return lines[0]

    @defer.inlineCallbacks
    def test_renewedInPlace(self):
        """
        After the files are renewed in place and the relay gets SIGHUP, a
        new STARTTLS session sees the new certificate, and a session in
        TLS since before goes on with the old one; a broken file (not PEM,
        then a key of another certificate) is refused with one line, and
        new sessions still get the renewed certificate.
        """
        from twisted.internet.threads import deferToThread

        relay = RelayProcess.spawn(self, ["--config", self.path], self.scratch)
        yield relay.whenListening()
        old = self.files.serial
        self.assertEqual((yield self.newSessionSerial()), old)
        before = yield self.session()
        self.addCleanup(before.close)

        new = self.files.renew()
        line = yield self.hangUp(relay, "mailrelay: reloaded ")
        self.assertIn(f"mailrelay: reloaded {self.path}: TLS certificate reloaded from {self.files.certificate}", line)
        self.assertEqual((yield self.newSessionSerial()), new)
        self.assertEqual((yield deferToThread(before.noop))[0], 250)
        self.assertEqual(self.served(before), old)

        self.files.write(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n", b"")
        line = yield self.hangUp(relay, "mailrelay: reload refused: ")
        self.assertIn("; the old configuration stays", line)
        self.assertEqual((yield self.newSessionSerial()), new)
        self.files.mismatched()
        line = yield self.hangUp(relay, "mailrelay: reload refused: ")
        self.assertIn(f"--certificate: cannot use {self.files.certificate} and {self.files.key}", line)
        self.assertEqual((yield self.newSessionSerial()), new)

        yield deferToThread(before.quit)
        yield relay.terminate()
        self.assertEqual(relay.endSignal, signal.SIGTERM)
        self.assertNotIn("Traceback", relay.text())
