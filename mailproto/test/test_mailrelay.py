# -*- test-case-name: mailproto.test.test_mailrelay -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for the options of C{twistd mailrelay} beyond the basics of
L{mailproto.test.test_daemon}: each option's parsing and errors, and its
effect on a relay run in this process over loopback sockets (submission
with AUTH, implicit TLS, LMTP, the limits, the retry schedule, the
metrics scraped over HTTP, the log's format), and the graceful stop
driven by a fake clock.
"""

from __future__ import annotations

import io
import json
import os
import smtplib
import ssl
import urllib.request

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Application
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import FilteringLogObserver, ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._attempts import RetrySchedule
from mailproto._relayd._connlimits import ConnectionLimitsFactory
from mailproto._cred import UsersFile
from mailproto._relayd._daemon import Options, RelayLMTPFactory, RelayService, makeService, parseDuration, parseSize
from mailproto._relayd._logs import BatchedFile, JSONLineObserver, RelayLog, eventAsJSONLine
from mailproto._smarthost import ENCRYPT, MAY, NONE, VERIFY
from mailproto.test.test_daemon import RelayProcess, _sendWithSmtplib, freePort, spoolListing, waitUntil
from mailproto.test._peers import missing
from mailproto.testing import ScriptedSMTPFactory

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None



def _parse(*arguments: str) -> Options:
    """
    @return: the options of C{arguments}, for one process (C{--workers 1})
        unless they say otherwise.
    """
    options = Options()
    if not any(a == "--workers" or a.startswith("--workers=") for a in arguments):
        arguments = ("--workers", "1", *arguments)
    options.parseOptions(list(arguments))
    return options


class _Files:
    """
    A users file (joe / secret), a certificate for 127.0.0.1 and its CA,
    and a smart-host secret, in a test's temporary directory.
    """

    def __init__(self, testCase) -> None:
        if trustme is None:
            missing("trustme is not installed")
        self.directory = os.path.abspath(testCase.mktemp())
        os.makedirs(self.directory)
        self.users = self.path("users")
        UsersFile(self.users).setPassword(b"joe", b"secret")
        self.ca = trustme.CA()
        self.certificate = self.path("cert.pem")
        self.ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(self.certificate)
        self.authorities = self.path("ca.pem")
        self.ca.cert_pem.write_to_path(self.authorities)
        self.secret = self.path("smarthost-secret")
        with open(self.secret, "w") as f:
            f.write("relay:s3cret:with:colons\n")

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def clientContext(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


class ParsingTests(SynchronousTestCase):
    """
    Each option's values, defaults and errors.
    """

    def assertUsageError(self, arguments, contains: str) -> None:
        error = self.assertRaises(usage.UsageError, _parse, "--spool", self.mktemp(), *arguments)
        self.assertIn(contains, str(error))
        self.assertNotIn("\n", str(error))

    def test_durations(self):
        """
        Durations are seconds, or a number with a unit s, m, h, d or w.
        """
        for text, seconds in [("300", 300), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("5d", 432000), ("1W", 604800)]:
            self.assertEqual(parseDuration(text), seconds, text)
        for text in ("", "5x", "-1", "0", "m", "1 2"):
            self.assertRaises(ValueError, parseDuration, text)

    def test_sizes(self):
        """
        Sizes are octets, with K, M or G (binary) allowed.
        """
        for text, octets in [("0", 0), ("1048576", 1048576), ("512K", 524288), ("32M", 32 << 20), ("1g", 1 << 30), ("10MiB", 10 << 20)]:
            self.assertEqual(parseSize(text), octets, text)
        for text in ("", "-1", "1.5M", "ten"):
            self.assertRaises(ValueError, parseSize, text)

    def test_defaults(self):
        """
        The defaults of the newer options.
        """
        options = _parse("--spool", self.mktemp())
        self.assertEqual(options["max-message-size"], 32 << 20)
        self.assertEqual(options["max-recipients"], 1000)
        self.assertEqual(options["schedule"], RetrySchedule())
        self.assertEqual(options["shutdown-grace"], 30)
        self.assertEqual(options["log-format"], "text")
        self.assertFalse(options["proxy-protocol"])
        for name in ("submission", "smtps", "lmtp"):
            self.assertEqual(options[name], [])
        for name in ("metrics", "users", "certificate", "tls"):
            self.assertIsNone(options[name])

    def test_limitsAndSchedule(self):
        """
        C{--max-message-size}, C{--max-recipients}, C{--retry-schedule},
        C{--max-queue-lifetime} and C{--shutdown-grace}.
        """
        options = _parse(
            "--spool", self.mktemp(),
            "--max-message-size", "10M",
            "--max-recipients", "5",
            "--retry-schedule", "1m,2h",
            "--max-queue-lifetime", "2d",
            "--shutdown-grace", "5s",
        )  # fmt: skip
        self.assertEqual((options["max-message-size"], options["max-recipients"]), (10 << 20, 5))
        self.assertEqual(options["schedule"], RetrySchedule(first=60, maximum=7200, lifetime=172800))
        self.assertEqual(options["shutdown-grace"], 5)
        options = _parse("--spool", self.mktemp(), "--retry-schedule", "2h")
        self.assertEqual(options["schedule"], RetrySchedule(first=7200, maximum=7200))

    def test_badLimits(self):
        """
        Bad values name their option.
        """
        cases = [
            (["--max-message-size", "lots"], "--max-message-size: 'lots' is not a size"),
            (["--max-recipients", "0"], "--max-recipients: '0' must be more than 0"),
            (["--retry-schedule", "soon"], "--retry-schedule: 'soon' is not a duration"),
            (["--retry-schedule", "1h,5m"], "the maximum is less than the first delay"),
            (["--max-queue-lifetime", "0"], "--max-queue-lifetime: '0' must be more than 0"),
            (["--shutdown-grace", "x"], "--shutdown-grace: 'x' is not a duration"),
            (["--log-format", "xml"], "--log-format: 'xml' is not one of text, json"),
            (["--metrics", "nonsense:1"], "--metrics 'nonsense:1': not an endpoint"),
            (["--lmtp", "tcp:99999"], "--lmtp 'tcp:99999': no such port 99999"),
            (["--submission", "bogus"], "--submission 'bogus': not an endpoint"),
        ]
        for arguments, contains in cases:
            self.assertUsageError(arguments, contains)

    def test_intakeLimits(self):
        """
        The limits on incoming connections and sessions: their defaults,
        values (durations with units, 0 for no limit) and errors.
        """
        options = _parse("--spool", self.mktemp())
        self.assertEqual(
            [options[name] for name in (
                "max-clients", "max-clients-per-address", "max-connection-rate", "command-deadline",
                "min-data-rate", "max-junk-commands", "greeting-delay", "max-auth-failures",
            )],
            [1000, 50, 0, 300.0, 500, 100, 0.0, 10],
        )  # fmt: skip
        options = _parse(
            "--spool", self.mktemp(), "--max-clients", "0", "--max-clients-per-address", "5",
            "--max-connection-rate", "30", "--command-deadline", "90s", "--min-data-rate", "0",
            "--max-junk-commands", "7", "--greeting-delay", "2.5", "--max-auth-failures", "3",
        )  # fmt: skip
        self.assertEqual(
            (options["max-clients"], options["max-clients-per-address"], options["max-connection-rate"]), (0, 5, 30)
        )
        self.assertEqual((options["command-deadline"], options["greeting-delay"]), (90.0, 2.5))
        self.assertEqual((options["min-data-rate"], options["max-junk-commands"], options["max-auth-failures"]), (0, 7, 3))
        for zero in ("0", "0s", "0.0", ".0m"):
            self.assertEqual(_parse("--spool", self.mktemp(), "--greeting-delay", zero)["greeting-delay"], 0.0)
        cases = [
            (["--max-clients", "-1"], "--max-clients: '-1' is not a whole number (0 or more)"),
            (["--max-clients-per-address", "many"], "--max-clients-per-address: 'many' is not a whole number"),
            (["--max-connection-rate", "1.5"], "--max-connection-rate: '1.5' is not a whole number"),
            (["--min-data-rate", "fast"], "--min-data-rate: 'fast' is not a whole number"),
            (["--max-junk-commands", "x"], "--max-junk-commands: 'x' is not a whole number"),
            (["--max-auth-failures", "0"], "--max-auth-failures: 0 must be more than 0"),
            (["--command-deadline", "0"], "--command-deadline: '0' must be more than 0"),
            (["--command-deadline", "soon"], "--command-deadline: 'soon' is not a duration"),
            (["--greeting-delay", "s"], "--greeting-delay: 's' is not a duration"),
            (["--greeting-delay", "-1"], "--greeting-delay: '-1' is not a duration"),
        ]
        for arguments, contains in cases:
            self.assertUsageError(arguments, contains)

    def test_intakeLimitsInHelp(self):
        """
        Each intake limit is in C{--help}.
        """
        text = str(Options())
        for name in (
            "max-clients", "max-clients-per-address", "max-connection-rate", "command-deadline",
            "min-data-rate", "max-junk-commands", "greeting-delay", "max-auth-failures",
        ):  # fmt: skip
            self.assertIn(f"--{name}=", text)

    def test_listenersReplaceDefault(self):
        """
        The default SMTP listener is used only when no listener is given.
        """
        options = _parse("--spool", self.mktemp(), "--lmtp", "unix:relay.lmtp")
        self.assertEqual((options["smtp"], options["lmtp"]), ([], ["unix:relay.lmtp"]))

    def test_submissionNeedsUsersAndCertificate(self):
        """
        C{--submission} and C{--smtps} need C{--users} and
        C{--certificate}: AUTH is offered over TLS only.
        """
        files = _Files(self)
        for name in ("submission", "smtps"):
            for extra in ([], ["--users", files.users], ["--certificate", files.certificate]):
                self.assertUsageError([f"--{name}", "tcp:0", *extra], f"--{name} needs --users and --certificate")
            options = _parse("--spool", self.mktemp(), f"--{name}", "tcp:0", "--users", files.users, "--certificate", files.certificate)
            self.assertEqual(options[name], ["tcp:0"])
            self.assertIsNotNone(options["tls"])

    def test_badUsersAndCertificate(self):
        """
        A missing or malformed users file, an unreadable certificate, or a
        key without a certificate, are errors.
        """
        files = _Files(self)
        malformed = files.path("malformed")
        with open(malformed, "w") as f:
            f.write("joe:plaintext\n")
        self.assertUsageError(["--users", files.path("missing")], "cannot read it (no such file)")
        self.assertUsageError(["--users", malformed], "line 1: expected NAME:$scrypt$")
        self.assertUsageError(["--certificate", files.path("missing.pem")], "--certificate: no such file: " + files.path("missing.pem"))
        self.assertUsageError(["--certificate", files.certificate, "--private-key", files.path("nokey.pem")], "--private-key: no such file: ")
        self.assertUsageError(["--certificate", files.users], "--certificate: not a PEM certificate: " + files.users)
        self.assertUsageError(["--private-key", files.certificate], "--private-key needs --certificate")

    def test_smartHostOptions(self):
        """
        C{--smarthost-auth} reads USER:PASSWORD (the password may contain
        colons) and makes TLS default to encrypt; C{--smarthost-tls} sets
        the policy, C{implicit} meaning TLS from the start, verified;
        C{--smarthost-ca} is the trust root for verification.
        """
        files = _Files(self)
        smartHost = _parse("--spool", self.mktemp(), "--smarthost", "mx.example:587", "--smarthost-auth", files.secret)["smarthost"]
        self.assertEqual((smartHost.username, smartHost.password), (b"relay", b"s3cret:with:colons"))
        self.assertEqual(smartHost.tls.mode, ENCRYPT)
        for mode in (NONE, MAY, ENCRYPT, VERIFY):
            smartHost = _parse("--spool", self.mktemp(), "--smarthost", "mx.example", "--smarthost-tls", mode)["smarthost"]
            self.assertEqual((smartHost.tls.mode, smartHost.implicitTLS), (mode, False))
        smartHost = _parse(
            "--spool", self.mktemp(), "--smarthost", "mx.example:465", "--smarthost-tls", "implicit", "--smarthost-ca", files.authorities
        )["smarthost"]  # fmt: skip
        self.assertEqual((smartHost.tls.mode, smartHost.implicitTLS), (VERIFY, True))
        self.assertIsNotNone(smartHost.tls.trustRoot)
        self.assertEqual(_parse("--spool", self.mktemp(), "--smarthost", "mx.example")["smarthost"].tls.mode, MAY)

    def test_badSmartHostOptions(self):
        """
        The smart host's options need C{--smarthost}, and bad values name
        their option.
        """
        files = _Files(self)
        empty = files.path("empty")
        open(empty, "w").close()
        cases = [
            (["--smarthost-auth", files.secret], "--smarthost-auth needs --smarthost"),
            (["--smarthost-tls", "verify"], "--smarthost-tls needs --smarthost"),
            (["--smarthost", "mx.example", "--smarthost-tls", "maybe"], "--smarthost-tls: 'maybe' is not one of"),
            (["--smarthost", "mx.example", "--smarthost-auth", empty], "its first line must be USER:PASSWORD"),
            (["--smarthost", "mx.example", "--smarthost-auth", files.path("nope")], "--smarthost-auth"),
            (["--smarthost", "mx.example", "--smarthost-ca", files.authorities], "--smarthost-ca needs --smarthost-tls verify or implicit"),
            (["--smarthost", "mx.example", "--smarthost-tls", "verify", "--smarthost-ca", empty], "no PEM certificate in it"),
        ]
        for arguments, contains in cases:
            self.assertUsageError(arguments, contains)

    def test_spoolInUse(self):
        """
        A spool locked by a running relay is refused before anything
        listens.
        """
        from mailproto._relayd._control import SpoolLock

        spool = self.mktemp()
        os.makedirs(spool)
        lock = SpoolLock(spool)
        lock.acquire()
        self.addCleanup(lock.release)
        error = self.assertRaises(usage.UsageError, _parse, "--spool", spool)
        self.assertIn("another relay (or a `mailproto queue` command) is using it", str(error))


class MakeServiceTests(SynchronousTestCase):
    """
    What each option changes in the service L{makeService} builds.
    """

    def test_limitsReachFactories(self):
        """
        The size and recipient limits reach every listener's factory; the
        schedule reaches the manager.
        """
        options = _parse(
            "--spool", self.mktemp(), "--smtp", "tcp:0", "--lmtp", "tcp:0",
            "--max-message-size", "1K", "--max-recipients", "3", "--retry-schedule", "10s,20s",
        )  # fmt: skip
        relay = makeService(options)
        self.assertEqual(sorted(relay.factories), ["lmtp", "smtp"])
        self.assertIsInstance(relay.factories["lmtp"], RelayLMTPFactory)
        for factory in relay.factories.values():
            self.assertEqual((factory.maxMessageSize, factory.maxRecipients), (1024, 3))
        self.assertEqual(relay.manager.schedule, RetrySchedule(first=10, maximum=20))

    def test_authenticationListeners(self):
        """
        With C{--users}, every SMTP factory has a portal; the SMTP one
        also a delivery for anonymous clients, the submission ones not
        (530); C{--smtps} listens through TLS from the first octet.
        """
        files = _Files(self)
        relay = makeService(
            _parse(
                "--spool", self.mktemp(), "--smtp", "tcp:0", "--submission", "tcp:0", "--smtps", "tcp:0",
                "--users", files.users, "--certificate", files.certificate,
            )
        )  # fmt: skip
        smtp, submission, smtps = (relay.factories[k] for k in ("smtp", "submission", "smtps"))
        for factory in (smtp, submission, smtps):
            self.assertIsNotNone(factory.portal)
        self.assertIsNotNone(smtp.deliveryFactory)
        self.assertIsNone(submission.deliveryFactory)
        self.assertIsNone(smtps.deliveryFactory)
        self.assertIsNotNone(smtp.contextFactory)
        self.assertIsNone(smtps.contextFactory)
        wrapped = [listener.factory for listener in relay.listeners]
        self.assertEqual([each.wrappedFactory for each in wrapped[:2]], [smtp, submission])
        self.assertEqual([each.listener for each in wrapped[:2]], ["smtp", "submission"])
        # Implicit TLS outside the limits, so that a refusal is sent over TLS.
        self.assertIsInstance(wrapped[2], TLSMemoryBIOFactory)
        self.assertIsInstance(wrapped[2].wrappedFactory, ConnectionLimitsFactory)
        self.assertIs(wrapped[2].wrappedFactory.wrappedFactory, smtps)
        for each in (*wrapped[:2], wrapped[2].wrappedFactory):
            self.assertIs(each.limits, relay.connectionLimits)
        # One count of AUTH failures for all of them.
        self.assertIs(smtp.authFailures, relay.authFailures)
        self.assertIs(submission.authFailures, relay.authFailures)
        self.assertIs(smtps.authFailures, relay.authFailures)

    def test_intakeLimitsReachListeners(self):
        """
        One L{ConnectionLimits} (relay networks exempt) for every
        listener, one L{AuthFailures} for every factory, with the limits
        of the options; each factory has the session limits the server
        knows.
        """
        options = _parse(
            "--spool", self.mktemp(), "--smtp", "tcp:0", "--lmtp", "tcp:0", "--relay-network", "10.0.0.0/8",
            "--max-clients", "7", "--max-clients-per-address", "3", "--max-connection-rate", "20",
            "--max-auth-failures", "4", "--command-deadline", "1m", "--min-data-rate", "100",
            "--max-junk-commands", "9", "--greeting-delay", "1s",
        )  # fmt: skip
        relay = makeService(options)
        limits = relay.connectionLimits
        self.assertEqual((limits.maxClients, limits.maxPerAddress, limits.maxRate), (7, 3, 20))
        self.assertEqual([str(n) for n in limits.exempt], ["10.0.0.0/8"])
        self.assertEqual([listener.factory.limits for listener in relay.listeners], [limits, limits])
        self.assertEqual([listener.factory.listener for listener in relay.listeners], ["smtp", "lmtp"])
        self.assertEqual((relay.authFailures.limit, relay.authFailures.window), (4, 600))
        expected = {"commandDeadline": 60.0, "minDataRate": 100, "maxJunkCommands": 9, "greetingDelay": 1.0}
        for factory in relay.factories.values():
            self.assertIs(factory.authFailures, relay.authFailures)
            self.assertEqual({name: getattr(factory, name) for name in expected}, expected)
            session = factory.buildProtocol(None)
            self.assertEqual({name: getattr(session, name) for name in expected}, expected)

    def test_limitsCounted(self):
        """
        With C{--metrics}, each time a connection limit or a session limit
        acts is counted in C{mailrelay_limits_total}, by listener and
        limit.
        """
        from twisted.internet.address import IPv4Address

        from mailproto._relayd._connlimits import MAX_CLIENTS_PER_ADDRESS

        relay = makeService(_parse("--spool", self.mktemp(), "--metrics", "tcp:0", "--relay-network", "10.0.0.0/8"))
        relay.connectionLimits.refused("smtp", MAX_CLIENTS_PER_ADDRESS, IPv4Address("TCP", "192.0.2.1", 1))
        relay.connectionLimits.acted("smtp", "accept-emfile")
        session = relay.factories["smtp"].buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
        session.limitExceeded("junk-commands")
        session.limitExceeded("junk-commands")
        value = relay.metrics.registry.get_sample_value
        self.assertEqual(value("mailrelay_limits_total", {"listener": "smtp", "limit": "max-clients-per-address"}), 1)
        self.assertEqual(value("mailrelay_limits_total", {"listener": "smtp", "limit": "accept-emfile"}), 1)
        self.assertEqual(value("mailrelay_limits_total", {"listener": "smtp", "limit": "junk-commands"}), 2)

    def test_proxyProtocol(self):
        """
        C{--proxy-protocol} wraps every listener's endpoint in
        L{mailproto._relayd._proxy}'s PROXY protocol endpoint, on the reactor's
        clock, which listens with a L{ProxyProtocolFactory} around the
        listener's factory.
        """
        from twisted.internet import reactor
        from twisted.internet.interfaces import IStreamServerEndpoint
        from zope.interface import implementer

        from mailproto._relayd._proxy import ProxyProtocolEndpoint, ProxyProtocolFactory

        @implementer(IStreamServerEndpoint)
        class Recording:
            factory = None

            def listen(self, factory):
                self.factory = factory
                return defer.succeed(None)

        relay = makeService(_parse("--spool", self.mktemp(), "--smtp", "tcp:0", "--lmtp", "tcp:0", "--proxy-protocol"))
        self.assertEqual(len(relay.listeners), 2)
        self.assertEqual(
            [listener.factory.wrappedFactory for listener in relay.listeners], [relay.factories["smtp"], relay.factories["lmtp"]]
        )
        for listener in relay.listeners:
            endpoint = listener.endpoint
            self.assertIsInstance(endpoint, ProxyProtocolEndpoint)
            self.assertIs(endpoint.clock, reactor)
            self.assertTrue(IStreamServerEndpoint.providedBy(endpoint.wrappedEndpoint))
            endpoint.wrappedEndpoint = recording = Recording()
            endpoint.listen(listener.factory)
            self.assertIsInstance(recording.factory, ProxyProtocolFactory)
            self.assertIs(recording.factory.wrappedFactory, listener.factory)
        plain = makeService(_parse("--spool", self.mktemp(), "--smtp", "tcp:0"))
        self.assertNotIsInstance(plain.listeners[0].endpoint, ProxyProtocolEndpoint)

    def test_metricsService(self):
        """
        C{--metrics} adds a web listener and gives the factories the
        metrics.
        """
        relay = makeService(_parse("--spool", self.mktemp(), "--metrics", "tcp:0"))
        self.assertIsNotNone(relay.metrics)
        self.assertIs(relay.factories["smtp"].metrics, relay.metrics)
        webs = [s for s in relay if isinstance(s, StreamServerEndpointService) and s not in relay.listeners]
        self.assertEqual(len(webs), 1)
        self.assertIsNone(makeService(_parse("--spool", self.mktemp())).metrics)

    def test_logComponent(self):
        """
        Under twistd (options with a parent), the relay gives the
        application its log observer, to the file twistd was told
        (standard output with C{-n} and no C{--logfile}), in the format
        asked for.
        """
        logfile = os.path.abspath(self.mktemp())

        def parse(twistd: dict, *arguments: str) -> Options:
            # What twistd's own options would say (twistd sets the parent).
            options = Options()
            options.parent = twistd
            options.parseOptions(["--workers", "1", "--spool", self.mktemp(), *arguments])
            return options

        relay = makeService(parse({"logfile": logfile}, "--log-format", "json"))
        self.assertEqual((relay.log.path, relay.log.format), (logfile, "json"))
        self.addCleanup(relay.log.file.close)
        application = Application("mailrelay")
        relay.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsInstance(observer, FilteringLogObserver)
        self.assertIsInstance(observer._observer, JSONLineObserver)
        self.assertEqual(makeService(parse({"nodaemon": True})).log.path, "-")
        self.assertEqual(makeService(parse({})).log.path, "twistd.log")
        self.assertIsNone(makeService(parse({"syslog": True, "logfile": logfile})).log)
        self.assertIsNone(makeService(_parse("--spool", self.mktemp())).log)


class LogTests(SynchronousTestCase):
    """
    The relay's log lines (L{mailproto._relayd._logs}).
    """

    def test_jsonLine(self):
        """
        A JSON line has the time in UTC, the level, the namespace, the
        text, and the event's named fields.
        """
        event = {
            "log_format": "Queued {queueID} for {recipients}",
            "log_time": 1_795_000_000.25,
            "log_level": LogLevel.info,
            "log_namespace": "mailproto._relay",
            "queueID": "1a1fd6e3790b5319794f843",
            "recipients": ["a@example.net", "b@example.net"],
            "size": 12,
            "client": b"127.0.0.1",
            "other": object,
        }
        line = eventAsJSONLine(event)
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["time"], "2026-11-18T11:06:40.250Z")
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "mailproto._relay")
        self.assertEqual(record["text"], "Queued 1a1fd6e3790b5319794f843 for ['a@example.net', 'b@example.net']")
        self.assertEqual(record["queueID"], "1a1fd6e3790b5319794f843")
        self.assertEqual(record["recipients"], ["a@example.net", "b@example.net"])
        self.assertEqual((record["size"], record["client"]), (12, "127.0.0.1"))
        self.assertEqual(record["other"], str(object))

    def test_jsonFailure(self):
        """
        A failure's traceback is in the line, as one JSON string.
        """
        out = io.StringIO()
        observer = JSONLineObserver(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        try:
            1 / 0
        except ZeroDivisionError:
            Logger(namespace="test").failure("Could not queue {queueID}", queueID="X")
        self.flushLoggedErrors(ZeroDivisionError)
        [line] = [each for each in out.getvalue().splitlines() if "Could not queue" in each]
        record = json.loads(line)
        self.assertEqual((record["level"], record["queueID"]), ("critical", "X"))
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_reopen(self):
        """
        L{RelayLog.reopen} opens the path again: after the file was moved
        away, lines go to a new file at the path.
        """
        path = os.path.abspath(self.mktemp())
        log = RelayLog(path, "text")
        self.addCleanup(log.file.close)
        log.file.write("first\n")
        log.file.flush()
        os.rename(path, path + ".1")
        log.reopen()
        log.file.write("second\n")
        log.file.flush()
        with open(path + ".1") as f:
            self.assertEqual(f.read(), "first\n")
        with open(path) as f:
            self.assertEqual(f.read(), "second\n")
        self.assertRaises(ValueError, RelayLog, path, "xml")


class _Session:
    """
    A relay session over a L{StringTransport}.
    """

    def __init__(self, factory) -> None:
        self.transport = StringTransport(peerAddress=None)
        from twisted.internet.address import IPv4Address

        self.transport.peerAddr = IPv4Address("TCP", "127.0.0.1", 40000)
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.lost = False

    def send(self, *lines: bytes) -> bytes:
        self.transport.clear()
        for line in lines:
            self.protocol.dataReceived(line + b"\r\n")
        return self.transport.value()

    def loseIfClosed(self) -> None:
        if (self.transport.disconnecting or getattr(self.transport, "disconnected", False)) and not self.lost:
            self.lost = True
            self.protocol.connectionLost(None)


class _CountingFile(io.StringIO):
    """
    A text file that counts its writes.
    """

    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


class BatchedFileTests(SynchronousTestCase):
    """
    L{BatchedFile}: the log lines of a reactor turn in one write.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.running = True
        self.out = _CountingFile()
        self.writer = BatchedFile(self.out, self.reactor, limit=100)

    def test_oneWritePerTurn(self):
        """
        Lines written and flushed in one turn are written together when the
        turn ends.
        """
        for n in range(3):
            self.writer.write(f"line {n}\n")
            self.writer.flush()
        self.assertEqual(self.out.getvalue(), "")
        self.reactor.advance(0)
        self.assertEqual((self.out.getvalue(), self.out.writes), ("line 0\nline 1\nline 2\n", 1))

    def test_notRunning(self):
        """
        When the reactor is not running, a flush writes at once.
        """
        self.reactor.running = False
        self.writer.write("before the reactor\n")
        self.writer.flush()
        self.assertEqual(self.out.getvalue(), "before the reactor\n")

    def test_limit(self):
        """
        More than C{limit} characters waiting are written at once.
        """
        self.writer.write("x" * 101 + "\n")
        self.writer.flush()
        self.assertEqual(len(self.out.getvalue()), 102)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_shutdown(self):
        """
        What waits is written when the reactor shuts down.
        """
        self.writer.write("last words\n")
        self.writer.flush()
        [(flush, args, kwargs)] = self.reactor.triggers["after"]["shutdown"]
        flush(*args, **kwargs)
        self.assertEqual(self.out.getvalue(), "last words\n")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_reopenWritesFirst(self):
        """
        L{RelayLog.reopen} writes what waits to the file before it is
        reopened, so that those lines stay with the ones before them.
        """
        path = os.path.abspath(self.mktemp())
        log = RelayLog(path, "text", reactor=self.reactor)
        self.addCleanup(log.file.close)
        observer = log.observer()
        observer({"log_format": "first", "log_time": 0.0, "log_namespace": "test", "log_level": LogLevel.info})
        os.rename(path, path + ".1")
        log.reopen()
        observer({"log_format": "second", "log_time": 0.0, "log_namespace": "test", "log_level": LogLevel.info})
        self.reactor.advance(0)
        with open(path + ".1") as f:
            self.assertTrue(f.read().endswith(" [test#info] first\n"))
        with open(path) as f:
            self.assertTrue(f.read().endswith(" [test#info] second\n"))


class GracefulStopTests(SynchronousTestCase):
    """
    L{RelayService.stopService}: idle sessions are told 421 at once,
    sessions in a transaction may finish it within the grace, then the
    rest are aborted; the queue is consistent throughout.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.spool = self.mktemp()
        options = _parse("--spool", self.spool, "--smtp", "tcp:0", "--smarthost", "127.0.0.1:1", "--shutdown-grace", "10")
        relay = makeService(options)
        from mailproto._queue import Queue

        queue = Queue(self.spool, runInThread=lambda f, *args: defer.maybeDeferred(f, *args))
        relay.queue = queue
        relay.manager.queue = queue
        relay.manager.reactor = self.clock
        for factory in relay.factories.values():
            factory.deliveryFactory.queue = queue
            factory.clock = self.clock
        # Only the sessions: no real listening in this test.
        self.relay = RelayService(
            queue, relay.manager, relay.factory, [], factories=relay.factories, control=False, shutdownGrace=10, clock=self.clock
        )
        self.relay.startService()
        self.factory = relay.factories["smtp"]

    def session(self) -> _Session:
        session = _Session(self.factory)
        self.assertTrue(session.send(b"EHLO client.example").startswith(b"250"))
        return session

    def settle(self, sessions, seconds: float = 0.1) -> None:
        for _ in range(int(seconds / 0.05) + 2):
            self.clock.advance(0.05)
            for session in sessions:
                session.loseIfClosed()

    def test_idleAndBusy(self):
        """
        On stop, the idle session gets C{421 4.3.2} at once; the one in the
        middle of DATA goes on, gets its 250 when it ends the message (the
        message is queued), then 421; then the service has stopped.
        """
        idle, busy = self.session(), self.session()
        busy.send(b"MAIL FROM:<jo@example.com>", b"RCPT TO:<a@example.net>", b"DATA", b"Subject: hi", b"")
        stopped = []
        self.relay.stopService().addCallback(stopped.append)
        self.assertIn(b"421 4.3.2", idle.transport.value())
        self.assertTrue(idle.transport.disconnecting)
        self.assertFalse(busy.transport.disconnecting)
        self.settle([idle, busy], 1)
        self.assertEqual(stopped, [])
        reply = busy.send(b"body", b".")
        self.assertTrue(reply.startswith(b"250 "), reply)
        self.settle([idle, busy])
        self.assertIn(b"421 4.3.2", busy.transport.value())
        self.assertTrue(busy.transport.disconnecting)
        self.settle([idle, busy])
        # The new message's attempt (to a smart host that never answers
        # here) gets the rest of the grace.
        self.assertEqual(self.relay.manager.inFlight(), self.relay.queue.ids())
        self.assertEqual(stopped, [])
        self.settle([], 10)
        self.assertEqual(stopped, [None])
        self.assertEqual(len(self.relay.queue.ids()), 1)
        self.assertEqual(os.listdir(os.path.join(self.spool, "tmp")), [])

    def test_graceRunsOut(self):
        """
        A session that does not finish within the grace is aborted; its
        message was never acknowledged and nothing of it stays in the
        spool.
        """
        slow = self.session()
        slow.send(b"MAIL FROM:<jo@example.com>", b"RCPT TO:<a@example.net>", b"DATA", b"Subject: hi", b"", *[b"x" * 70] * 5000)
        self.assertNotEqual(os.listdir(os.path.join(self.spool, "tmp")), [])
        stopped = []
        self.relay.stopService().addCallback(stopped.append)
        self.settle([slow], 9.5)
        self.assertEqual(stopped, [])
        self.assertFalse(slow.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(getattr(slow.transport, "disconnected", False) or slow.transport.disconnecting)
        self.settle([slow])
        self.assertEqual(stopped, [None])
        self.assertEqual(self.relay.queue.ids(), [])
        self.assertEqual(os.listdir(os.path.join(self.spool, "tmp")), [])
        self.assertNotIn(b"250 2.0.0", slow.transport.value())


class LiveRelayTests(TestCase):
    """
    The relay's listeners over loopback sockets in this process, with
    Python's smtplib as the client.
    """

    def start(self, *arguments: str) -> RelayService:
        options = _parse("--spool", self.mktemp(), "--smarthost", "127.0.0.1:1", "--shutdown-grace", "1", *arguments)
        relay = makeService(options)
        relay.startService()
        self.addCleanup(relay.stopService)
        return relay

    def queued(self, relay: RelayService):
        return [relay.queue.getEnvelope(i) for i in relay.queue.ids()]

    @defer.inlineCallbacks
    def test_submission(self):
        """
        On C{--submission}, MAIL without AUTH gets 530; after STARTTLS and
        AUTH, mail to any domain is queued, with the user recorded.
        """
        files = _Files(self)
        port = freePort()
        relay = self.start("--submission", f"tcp:{port}:interface=127.0.0.1", "--users", files.users, "--certificate", files.certificate)

        def client():
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.example")
                refused = s.mail("jo@example.com")
                s.rset()
                s.starttls(context=files.clientContext())
                s.ehlo("client.example")
                s.login("joe", "secret")
                s.sendmail("jo@example.com", ["far@elsewhere.example"], b"Subject: hi\r\n\r\nhello\r\n")
                return refused

        refused = yield deferToThread(client)
        self.assertEqual(refused[0], 530)
        [envelope] = self.queued(relay)
        self.assertEqual((envelope.user, envelope.recipients[0].address), ("joe", b"far@elsewhere.example"))

    @defer.inlineCallbacks
    def test_smtps(self):
        """
        On C{--smtps}, TLS starts at once and AUTH is required.
        """
        files = _Files(self)
        port = freePort()
        relay = self.start("--smtps", f"tcp:{port}:interface=127.0.0.1", "--users", files.users, "--certificate", files.certificate)

        def client():
            with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=files.clientContext()) as s:
                s.ehlo("client.example")
                code, _ = s.mail("jo@example.com")
                s.rset()
                s.login("joe", "secret")
                s.sendmail("jo@example.com", ["far@elsewhere.example"], b"Subject: hi\r\n\r\nhello\r\n")
                return code

        self.assertEqual((yield deferToThread(client)), 530)
        self.assertEqual([e.user for e in self.queued(relay)], ["joe"])

    @defer.inlineCallbacks
    def test_smtpWithUsers(self):
        """
        On C{--smtp} with C{--users}, loopback clients relay without AUTH,
        and may AUTH after STARTTLS.
        """
        files = _Files(self)
        port = freePort()
        relay = self.start("--smtp", f"tcp:{port}:interface=127.0.0.1", "--users", files.users, "--certificate", files.certificate)

        def client():
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.sendmail("jo@example.com", ["a@example.net"], b"Subject: 1\r\n\r\n1\r\n")
                s.starttls(context=files.clientContext())
                s.login("joe", "secret")
                s.sendmail("jo@example.com", ["b@example.net"], b"Subject: 2\r\n\r\n2\r\n")

        yield deferToThread(client)
        self.assertEqual(sorted((e.user or "") for e in self.queued(relay)), ["", "joe"])

    @defer.inlineCallbacks
    def test_lmtpAndLimits(self):
        """
        C{--lmtp} takes mail into the queue, one reply per recipient; the
        size and recipient limits are applied.
        """
        port = freePort()
        relay = self.start("--lmtp", f"tcp:{port}:interface=127.0.0.1", "--max-message-size", "1K", "--max-recipients", "2")

        def client():
            with smtplib.LMTP("127.0.0.1", port) as s:
                s.ehlo_or_helo_if_needed()
                s.mail("jo@example.com")
                replies = [s.rcpt(f"r{n}@example.net")[0] for n in range(3)]
                s.rset()
                tooBig = s.mail("jo@example.com", ["SIZE=5000"])[0]
                s.rset()
                s.mail("jo@example.com")
                s.rcpt("a@example.net")
                s.rcpt("b@example.net")
                # LMTP: one reply per recipient after the data.
                first = s.data(b"Subject: hi\r\n\r\nhello\r\n")[0]
                second = s.getreply()[0]
                return replies, tooBig, [first, second]

        replies, tooBig, refused = yield deferToThread(client)
        self.assertEqual(replies, [250, 250, 452])
        self.assertEqual(tooBig, 552)
        self.assertEqual(refused, [250, 250])
        [envelope] = self.queued(relay)
        self.assertEqual([r.address for r in envelope.recipients], [b"a@example.net", b"b@example.net"])

    @defer.inlineCallbacks
    def test_metricsScraped(self):
        """
        The metrics endpoint serves Prometheus text over HTTP: connections,
        messages accepted and refused by reason, the queue, deliveries.
        """
        port, metrics = freePort(), freePort()
        relay = self.start("--smtp", f"tcp:{port}:interface=127.0.0.1", "--metrics", f"tcp:{metrics}:interface=127.0.0.1")

        def client():
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.sendmail("jo@example.com", ["a@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
                code = s.mail("jo@example.com", ["SIZE=999999999999"])[0]
                return code

        self.assertEqual((yield deferToThread(client)), 552)
        yield relay.manager.whenIdle()

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as response:
                return response.headers["Content-Type"], response.read().decode()

        contentType, text = yield deferToThread(scrape)
        self.assertTrue(contentType.startswith("text/plain"), contentType)
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        self.assertEqual(values['mailrelay_connections_total{listener="smtp"}'], 1)
        self.assertEqual(values['mailrelay_connections_open{listener="smtp"}'], 0)
        self.assertEqual(values["mailrelay_messages_accepted_total"], 1)
        self.assertEqual(values['mailrelay_messages_rejected_total{reason="552 5.3.4",stage="mail"}'], 1)
        self.assertEqual(values["mailrelay_queue_messages"], 1)
        self.assertGreaterEqual(values["mailrelay_queue_oldest_age_seconds"], 0)
        self.assertEqual(values['mailrelay_deliveries_total{result="deferred"}'], 1)
        self.assertEqual(values["mailrelay_attempt_duration_seconds_count"], 1)
        self.assertEqual(values["mailrelay_delivery_latency_seconds_count"], 0)


def _smartHost(script) -> ScriptedSMTPFactory:
    """
    @return: a scripted smart host (one server per connection) offering
        PIPELINING and 8BITMIME, not ENHANCEDSTATUSCODES.
    """
    return ScriptedSMTPFactory(script, extensions=(b"PIPELINING", b"8BITMIME"))


class RelayEdgeTests(TestCase):
    """
    C{twistd mailrelay} in a child process, sending through a scripted
    smart host in this process over loopback: the edges of outbound
    delivery (a host name with a dot at its end, too many recipients for
    one transaction, session refusals, soft bounce).
    """

    timeout = 90

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)

    @defer.inlineCallbacks
    def startRelay(self, factory: ScriptedSMTPFactory, *arguments: str):
        from twisted.internet import reactor

        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.spool = os.path.join(self.scratch, "spool")
        self.port = freePort()
        relay = RelayProcess.spawn(
            self,
            ["--smtp", f"tcp:{self.port}:interface=127.0.0.1", "--spool", self.spool,
             "--smarthost", f"127.0.0.1:{listening.getHost().port}", "--smarthost-tls", "none", *arguments],
            self.scratch,
        )  # fmt: skip
        yield relay.whenListening()
        return relay

    @defer.inlineCallbacks
    def test_bareRecipientAndTooMany(self):
        """
        With C{--hostname relay.test.}, C{RCPT TO:<postmaster>} is queued
        as C{postmaster@relay.test}, which goes on; six recipients to a
        smart host taking two per transaction go in three transactions
        over one connection, all delivered at once.
        """

        def rcpt(line, server):
            return b"250 2.1.5 Ok\r\n" if server.accepted < 2 else b"452 4.5.3 Too many recipients\r\n"

        factory = _smartHost({b"RCPT": rcpt})
        relay = yield self.startRelay(factory, "--hostname", "relay.test.")
        recipients = ["postmaster"] + [f"r{n}@example.com" for n in range(5)]
        refused = yield _sendWithSmtplib(self.port, "jo@example.org", recipients, b"Subject: many\r\n\r\nhello\r\n")
        self.assertEqual(refused, {})
        yield waitUntil(lambda: len(relay.logLines("Delivered ")) == 6, 30, lambda: f"six Delivered lines:\n{relay.text()}")
        mails = [c for c in factory.commands if c.startswith(b"MAIL")]
        self.assertEqual(len(mails), 3)
        self.assertEqual(len(factory.servers), 1)
        self.assertIn(b"RCPT TO:<postmaster@relay.test>", factory.commands)
        self.assertEqual(relay.logLines("Deferred "), [])
        self.assertEqual(relay.logLines("Traceback"), [])
        yield waitUntil(lambda: spoolListing(self.spool)["queue"] == [], 20, "the message to leave the queue")

    @defer.inlineCallbacks
    def test_sessionRefusalAndSoftBounce(self):
        """
        A smart host that wants AUTH (C{530} to MAIL) defers the mail with
        a configuration error logged; with C{--soft-bounce}, a C{550} to
        RCPT defers too; nothing is returned to the sender.
        """

        def mail(line, server):
            return b"530 5.7.0 Authentication required\r\n" if b"needsauth@" in line else None

        factory = _smartHost({b"MAIL": mail, b"RCPT": b"550 5.1.1 No such user\r\n"})
        relay = yield self.startRelay(factory, "--hostname", "relay.test", "--soft-bounce")
        for sender in ("needsauth@example.org", "jo@example.org"):
            refused = yield _sendWithSmtplib(self.port, sender, ["gone@example.com"], b"Subject: x\r\n\r\nhello\r\n")
            self.assertEqual(refused, {})
        yield waitUntil(lambda: len(relay.logLines("Deferred ")) == 2, 30, lambda: f"two Deferred lines:\n{relay.text()}")
        self.assertEqual(len(relay.logLines("Configuration error: 127.0.0.1 refused the session (530 5.7.0")), 1)
        self.assertEqual(len(relay.logLines("Soft bounce: 550 5.1.1 No such user")), 1)
        self.assertEqual(len(relay.logLines("Soft bounce is on")), 1)
        self.assertEqual(relay.logLines("Failed "), [])
        self.assertEqual(relay.logLines(" report for "), [])
        self.assertEqual(len([name for name in spoolListing(self.spool)["queue"] if not name.endswith((".state", ".state.tmp"))]), 2)
