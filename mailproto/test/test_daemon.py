# -*- test-case-name: mailproto.test.test_daemon -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for C{twistd mailrelay} (L{mailproto._relayd._daemon} and its plugin).

  - L{Options}: defaults, repeatable options, and a L{usage.UsageError}
    with a message that names what is wrong for every bad value.
  - L{makeService}: the L{RelayService} and the relaying manager it
    builds from the options; the service started and stopped in this
    process (the spool recovered before it listens).
  - The plugin: importable, an L{IServiceMaker}, found by
    L{getPlugins}.
  - The real command in a child process: C{--help}, usage errors, and one
    message relayed end to end to a smart host (C{mailproto sink}).

The child-process helpers here (L{RelayProcess}, L{SinkProcess},
L{waitUntil}, L{freePort}, L{readMaildir}, L{spoolListing}) are shared with
L{mailproto.test.test_relay_crash}.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import smtplib
import socket
import sys
import time

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import mailproto
from mailproto._relayd import _daemon
from mailproto._relayd._connlimits import ConnectionLimitsFactory
from mailproto._cores import availableCores
from mailproto._relayd._daemon import DEFAULT_LISTEN, DEFAULT_SPOOL, Options, RelayService, makeService
from mailproto._relay import LOOPBACK
from mailproto.relaymanager import SmartHost, SmartHostESMTPRelayingManager
from mailproto.test._relayprocess import relayCommand

# The directory that holds the mailproto package being tested (a checkout
# or site-packages), for the subprocesses.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))

# Seconds a child process gets to start listening, and to stop after
# SIGTERM before it is killed.
START_DEADLINE = 30
STOP_GRACE = 10

# How often the waits look again, in seconds.
POLL_INTERVAL = 0.05


# -- helpers shared with test_relay_crash ------------------------------------


def freePort() -> int:
    """
    @return: a TCP port of 127.0.0.1 that nothing listens on just now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@defer.inlineCallbacks
def waitUntil(predicate, timeout: float, what, interval: float = POLL_INTERVAL):
    """
    Call C{predicate} every C{interval} seconds until it returns something
    true, for at most C{timeout} seconds.

    @param what: what is waited for (a string, or a callable returning
        one, called only on failure), for the failure message.
    @return: a L{Deferred} firing with C{predicate}'s true result.
    @raise AssertionError: (in the L{Deferred}) when the time is up.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what() if callable(what) else what}")
        yield deferLater(reactor, interval, lambda: None)


def spoolListing(spool: str) -> dict[str, list[str]]:
    """
    @return: the sorted file names in the spool's C{tmp}, C{queue} and
        C{corrupt} directories.
    """
    listing = {}
    for name in ("tmp", "queue", "corrupt"):
        path = os.path.join(spool, name)
        listing[name] = sorted(os.listdir(path)) if os.path.isdir(path) else []
    return listing


_TEST_ID = re.compile(rb"^X-Test-Id: (\S+)\r?$", re.MULTILINE)


def testIDOf(message: bytes) -> str | None:
    """
    @return: the value of a message's first C{X-Test-Id} header, or
        L{None}.
    """
    match = _TEST_ID.search(message)
    return None if match is None else match.group(1).decode("ascii")


def readMaildir(maildir: str, cache: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """
    Read the messages of a Maildir's C{new/} (each file complete: a Maildir
    writer renames it there only when it is).

    @param cache: files already read, by name; new ones are added to it.
    @return: every message, by file name.
    """
    cache = {} if cache is None else cache
    new = os.path.join(maildir, "new")
    if os.path.isdir(new):
        for name in os.listdir(new):
            if name not in cache:
                with open(os.path.join(new, name), "rb") as f:
                    cache[name] = f.read()
    return cache


class _ChildProcess(ProcessProtocol):
    """
    A child process whose output is kept, stopped when the test ends.

    @ivar output: what it wrote on its standard output.
    @ivar errors: what it wrote on its standard error.
    @ivar running: whether it is still running.
    @ivar reason: how it ended (L{ProcessDone} or L{ProcessTerminated}),
        once it has.
    """

    what = "the child process"

    def __init__(self) -> None:
        self.output = b""
        self.errors = b""
        self.running = True
        self.reason = None
        self.process = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason) -> None:
        self.running = False
        self.reason = reason.value

    @property
    def exitCode(self):
        return None if self.reason is None else self.reason.exitCode

    @property
    def endSignal(self):
        return None if self.reason is None else self.reason.signal

    def text(self) -> str:
        """
        @return: its output and error output, for failure messages.
        """
        return (self.output + self.errors).decode("utf-8", "replace")

    def _spawn(self, testCase, argv: list[str], env: dict[str, str], path: str | None = None) -> None:
        self.process = reactor.spawnProcess(self, argv[0], argv, env=env, path=path)
        testCase.addCleanup(self.stop)

    def _signal(self, name: str) -> None:
        try:
            self.process.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass

    def whenEnded(self, timeout: float = STOP_GRACE) -> defer.Deferred:
        """
        @return: a L{Deferred} firing once the process has exited, failing
            if it has not within C{timeout} seconds.
        """
        return waitUntil(lambda: not self.running, timeout, lambda: f"{self.what} to exit:\n{self.text()[-3000:]}")

    def kill(self) -> defer.Deferred:
        """
        SIGKILL it.

        @return: a L{Deferred} firing once it has exited.
        """
        if self.running:
            self._signal("KILL")
        return self.whenEnded()

    def terminate(self) -> defer.Deferred:
        """
        SIGTERM it.

        @return: a L{Deferred} firing once it has exited, failing if it
            has not within L{STOP_GRACE} seconds (it is then killed).
        """
        if self.running:
            self._signal("TERM")
        d = self.whenEnded()

        def killed(failure):
            self._signal("KILL")
            return self.whenEnded().addCallback(lambda _: failure)

        return d.addErrback(killed)

    @defer.inlineCallbacks
    def stop(self):
        """
        Make sure it is gone: SIGTERM, then SIGKILL if it does not exit.
        """
        if not self.running:
            return
        try:
            yield self.terminate()
        except AssertionError:
            pass


class RelayProcess(_ChildProcess):
    """
    One run of C{twistd --nodaemon mailrelay} in a child process (see
    L{relayCommand}); it logs to its standard output.
    """

    what = "twistd mailrelay"

    @classmethod
    def spawn(cls, testCase, arguments: list[str], scratch: str, twistdArguments: list[str] = ()) -> RelayProcess:
        """
        Start C{twistd mailrelay} with C{arguments} (and C{twistd}'s own
        C{twistdArguments}), in C{scratch}; it is stopped when the test
        ends.
        """
        argv, env = relayCommand(arguments, scratch, twistdArguments)
        relay = cls()
        relay._spawn(testCase, argv, env, scratch)
        return relay

    @property
    def listening(self) -> bool:
        """
        Whether it said it is listening (its queue recovered, its ports
        open).
        """
        return b"mailrelay: listening on " in self.output

    @defer.inlineCallbacks
    def whenListening(self, timeout: float = START_DEADLINE):
        """
        @return: a L{Deferred} firing once the relay says it is listening;
            failing if it exits first or does not within C{timeout}.
        """
        yield waitUntil(lambda: self.listening or not self.running, timeout, lambda: f"the relay to listen:\n{self.text()}")
        if not self.listening:
            raise AssertionError(f"the relay exited ({self.reason}) before listening:\n{self.text()}")

    @property
    def stoppedCleanly(self) -> bool:
        """
        Whether it ended after a clean shutdown on SIGTERM: the relay
        logged that it stopped, and twistd, as it does, ended itself with
        the signal that stopped its reactor.
        """
        return (
            not self.running
            and self.endSignal == signal.SIGTERM
            and b"mailrelay: stopped;" in self.output
            and b"Server Shut Down." in self.output
        )

    def logLines(self, needle: str) -> list[str]:
        """
        @return: the lines of its log with C{needle}.
        """
        return [line for line in self.output.decode("utf-8", "replace").splitlines() if needle in line]


class SinkProcess(_ChildProcess):
    """
    C{python -m mailproto sink --maildir DIR} on a free port of 127.0.0.1:
    a smart host that keeps every message it receives as a file.

    @ivar maildir: the Maildir.
    @ivar port: its port, once it said where it listens.
    """

    what = "mailproto sink"

    def __init__(self, maildir: str) -> None:
        super().__init__()
        self.maildir = maildir
        self.port = None
        self._files: dict[str, bytes] = {}

    def errReceived(self, data: bytes) -> None:
        super().errReceived(data)
        if self.port is None:
            match = re.search(rb"listening on 127\.0\.0\.1 port ([0-9]+) for ESMTP\n", self.errors)
            if match is not None:
                self.port = int(match.group(1))

    @classmethod
    @defer.inlineCallbacks
    def start(cls, testCase, maildir: str):
        """
        Start a sink; it is stopped when the test ends.

        @return: a L{Deferred} firing with the L{SinkProcess} once it
            listens.
        """
        sink = cls(os.path.abspath(maildir))
        pythonPath = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        argv = [sys.executable, "-m", "mailproto", "sink", "--quiet"]
        argv += ["--listen", "tcp:0:interface=127.0.0.1", "--maildir", sink.maildir]
        sink._spawn(testCase, argv, dict(os.environ, PYTHONPATH=pythonPath))
        yield waitUntil(lambda: sink.port is not None or not sink.running, START_DEADLINE, "the sink to listen")
        if sink.port is None:
            raise AssertionError(f"the sink exited before listening:\n{sink.text()}")
        return sink

    def messages(self) -> dict[str, bytes]:
        """
        @return: every message received so far, by file name.
        """
        return readMaildir(self.maildir, self._files)


def _sendWithSmtplib(port: int, sender: str, recipients: list[str], message: bytes) -> defer.Deferred:
    """
    Send one message with Python's smtplib, in a thread.

    @return: a L{Deferred} firing with C{sendmail}'s refused recipients.
    """

    def send():
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=20) as client:
            return client.sendmail(sender, recipients, message)

    return deferToThread(send)


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


# -- Options ----------------------------------------------------------------------


class OptionsTests(SynchronousTestCase):
    """
    Parsing the options of C{twistd mailrelay}.
    """

    def assertUsageError(self, arguments, start: str, contains: str = "") -> str:
        """
        Parsing C{arguments} fails with a L{usage.UsageError} whose message
        starts with C{start} and contains C{contains}.

        @return: the message.
        """
        error = self.assertRaises(usage.UsageError, _parse, *arguments)
        message = str(error)
        self.assertTrue(message.startswith(start), f"{message!r} does not start with {start!r}")
        self.assertIn(contains, message)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self):
        """
        With no options, the relay listens on 127.0.0.1:8025, spools to
        C{mailrelay-spool}, relays by MX records for loopback clients,
        with the documented limits and this machine's name.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual((options["workers"], options.workersAuto), (availableCores(), True))
        self.assertEqual(options["smtp"], ["tcp:8025:interface=127.0.0.1"])
        self.assertEqual(options["smtp"], [DEFAULT_LISTEN])
        self.assertEqual(options["spool"], "mailrelay-spool")
        self.assertEqual(options["spool"], DEFAULT_SPOOL)
        self.assertIsNone(options["smarthost"])
        self.assertEqual(options["hostname"], socket.getfqdn())
        self.assertEqual(
            (options["max-connections"], options["max-connections-per-destination"], options["max-messages-per-connection"]),
            (50, 20, 100),
        )
        self.assertEqual(options["relay-network"], [])
        self.assertEqual(options["relay-domain"], [])
        policy = options["policy"]
        self.assertEqual(policy.networks, [ipaddress.ip_network(n) for n in LOOPBACK])
        self.assertEqual(policy.domains, set())

    def test_workers(self):
        """
        C{--workers} takes a whole number more than 0, or C{auto} (in any
        case) for the number of cores this process may run on, which is
        also the default; anything else is a one-line usage error.
        """
        for given, expected, auto in [("3", 3, False), ("1", 1, False), (" 2 ", 2, False), ("auto", availableCores(), True), ("AUTO", availableCores(), True)]:
            options = Options()
            options.parseOptions(["--workers", given])
            self.assertEqual((options["workers"], options.workersAuto), (expected, auto), given)
        self.assertUsageError(["--workers", "0"], "--workers: '0' must be more than 0")
        self.assertUsageError(["--workers", "-2"], "--workers: '-2' must be more than 0")
        self.assertUsageError(["--workers", "two"], "--workers: 'two' is neither a whole number nor auto")
        self.assertUsageError(["--workers", ""], "--workers: '' is neither a whole number nor auto")

    def test_availableCores(self):
        """
        The number of cores is this process's CPU affinity where the system
        has one, else the machine's count, and at least 1.
        """
        self.patch(os, "sched_getaffinity", lambda pid: {0, 3, 5})
        self.assertEqual(availableCores(), 3)

        def noAffinity(pid):
            raise OSError("not here")

        self.patch(os, "sched_getaffinity", noAffinity)
        self.patch(os, "cpu_count", lambda: 6)
        self.assertEqual(availableCores(), 6)
        self.patch(os, "cpu_count", lambda: None)
        self.assertEqual(availableCores(), 1)

    def test_defaultsNotShared(self):
        """
        The repeatable options start empty in every L{Options}: one parse
        does not leak into the next.
        """
        _parse("--smtp", "tcp:2525", "--relay-network", "192.0.2.0/24", "--relay-domain", "example.com")
        options = _parse()
        self.assertEqual(options["smtp"], [DEFAULT_LISTEN])
        self.assertEqual((options["relay-network"], options["relay-domain"]), ([], []))

    def test_repeatable(self):
        """
        C{--smtp}, C{--relay-network} and C{--relay-domain} may each be
        given several times; every value is kept, in order, and the
        default listener is not added to given ones.
        """
        options = _parse(
            "--smtp", "tcp:2525:interface=127.0.0.1",
            "--smtp", "tcp6:2525:interface=\\:\\:1",
            "--smtp", "unix:/tmp/relay.sock",
            "--relay-network", "192.0.2.0/24",
            "--relay-network", "2001:db8::/32",
            "--relay-domain", "Example.COM",
            "--relay-domain", "example.net.",
        )  # fmt: skip
        self.assertEqual(options["smtp"], ["tcp:2525:interface=127.0.0.1", "tcp6:2525:interface=\\:\\:1", "unix:/tmp/relay.sock"])
        self.assertEqual(options["relay-network"], ["192.0.2.0/24", "2001:db8::/32"])
        self.assertEqual(options["relay-domain"], ["Example.COM", "example.net."])
        policy = options["policy"]
        self.assertEqual(policy.networks, [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")])
        self.assertEqual(policy.domains, {b"example.com", b"example.net"})

    def test_relayNetworksReplaceLoopback(self):
        """
        Given networks replace the loopback default: a loopback client may
        then relay only to the relay domains.
        """
        policy = _parse("--relay-network", "192.0.2.0/24", "--relay-domain", "example.com")["policy"]
        self.assertTrue(policy.accepts(b"192.0.2.9", False, b"example.org"))
        self.assertFalse(policy.accepts(b"127.0.0.1", False, b"example.org"))
        self.assertTrue(policy.accepts(b"127.0.0.1", False, b"example.com"))
        self.assertTrue(policy.accepts(b"198.51.100.1", False, b"EXAMPLE.com"))

    def test_scalars(self):
        """
        C{--spool}, C{--hostname} and the limits are kept as given (the
        limits as numbers).
        """
        options = _parse(
            "--spool", "/var/spool/relay",
            "--hostname", "relay.example",
            "--max-connections", "7",
            "--max-connections-per-destination", "3",
            "--max-messages-per-connection", "1",
        )  # fmt: skip
        self.assertEqual(options["spool"], "/var/spool/relay")
        self.assertEqual(options["hostname"], "relay.example")
        self.assertEqual(
            (options["max-connections"], options["max-connections-per-destination"], options["max-messages-per-connection"]),
            (7, 3, 1),
        )

    def test_smartHost(self):
        """
        C{--smarthost} is parsed into a L{SmartHost}: C{HOST:PORT}, C{HOST}
        (port 25) or C{[ADDRESS]:PORT} for IPv6.
        """
        for value, host, port in [
            ("mail.example.net:587", "mail.example.net", 587),
            ("127.0.0.1:2525", "127.0.0.1", 2525),
            ("mail.example.net", "mail.example.net", 25),
            ("[::1]:2525", "::1", 2525),
            ("[2001:db8::25]", "2001:db8::25", 25),
            (" mail.example.net:26 ", "mail.example.net", 26),
        ]:
            smartHost = _parse("--smarthost", value)["smarthost"]
            self.assertIsInstance(smartHost, SmartHost)
            self.assertEqual((smartHost.host, smartHost.port), (host, port), value)

    def test_badEndpoint(self):
        """
        An C{--smtp} value that is not a server endpoint description is a
        usage error naming the option and the value.
        """
        self.assertUsageError(["--smtp", "tcp:notaport"], "--smtp 'tcp:notaport': not an endpoint (", "notaport")
        self.assertUsageError(["--smtp", "bogus:25"], "--smtp 'bogus:25': not an endpoint (", "Unknown endpoint type")
        self.assertUsageError(
            ["--smtp", "tcp:2525", "--smtp", "tcp:2526:backlog=lots"],
            "--smtp 'tcp:2526:backlog=lots': not an endpoint (",
            "lots",
        )
        self.assertUsageError(["--smtp", "tcp"], "--smtp 'tcp': not an endpoint (")

    def test_badSmartHost(self):
        """
        A malformed C{--smarthost} is a usage error naming the option, the
        value and what is wrong with it.
        """
        for value, why in [
            ("host:notaport", "the port must be a number"),
            ("::1:25", "put an IPv6 address in brackets, as [::1]:25"),
            ("[::1", "expected [ADDRESS]:PORT"),
            ("[::1]25", "expected [ADDRESS]:PORT"),
            ("host:0", "expected HOST:PORT"),
            ("host:65536", "expected HOST:PORT"),
            ("host:-1", "expected HOST:PORT"),
            (":25", "expected HOST:PORT"),
            ("", "expected HOST:PORT"),
        ]:
            message = self.assertUsageError(["--smarthost", value], f"--smarthost: bad smart host {value!r}")
            self.assertTrue(message.endswith(why), f"{value!r}: {message!r}")

    def test_badNetwork(self):
        """
        A C{--relay-network} that is not a CIDR network is a usage error
        naming the option and the value.
        """
        for value in ["10.0.0.0/33", "not-a-network", "192.0.2.0/24/8", "2001:db8::/129"]:
            self.assertUsageError(["--relay-network", "127.0.0.0/8", "--relay-network", value], "--relay-network: ", repr(value))

    def test_hostBitsAllowed(self):
        """
        A network with host bits set is taken as its network.
        """
        policy = _parse("--relay-network", "192.0.2.7/24")["policy"]
        self.assertEqual(policy.networks, [ipaddress.ip_network("192.0.2.0/24")])

    def test_nonPositiveNumbers(self):
        """
        Each limit must be a whole number more than 0: zero, a negative
        number or text is a usage error quoting the value.
        """
        for option in ["--max-connections", "--max-connections-per-destination", "--max-messages-per-connection"]:
            for value, why in [("0", "must be more than 0"), ("-3", "must be more than 0"), ("x", "is not a whole number"), ("1.5", "is not a whole number")]:
                error = self.assertRaises(usage.UsageError, _parse, option, value)
                self.assertIn(f"{value!r}", str(error), option)
                self.assertIn(why, str(error), option)

    def test_nonPositiveNumberNamesOption(self):
        """
        The usage error for a bad limit names the option it is for.
        """
        error = self.assertRaises(usage.UsageError, _parse, "--max-connections-per-destination", "0")
        self.assertIn("max-connections-per-destination", str(error))


    def test_badRelayDomain(self):
        """
        A C{--relay-domain} that is not a valid domain name is a usage
        error naming C{--relay-domain}.
        """
        error = self.assertRaises(usage.UsageError, _parse, "--relay-domain", "a..example")
        self.assertTrue(str(error).startswith("--relay-domain"), str(error))


    def test_badHostname(self):
        """
        A C{--hostname} that cannot be encoded as an IDNA domain name is a
        usage error, not a traceback out of L{makeService}.
        """
        self.assertRaises(usage.UsageError, _parse, "--hostname", "a..example")

    def test_hostnameTrailingDotDropped(self):
        """
        A C{--hostname} with a trailing dot (the DNS root) is kept without
        it: the relay completes bare local parts with it, and
        C{postmaster@relay.example.} would not parse again.
        """
        self.assertEqual(_parse("--hostname", "relay.example.")["hostname"], "relay.example")
        self.assertEqual(_parse("--hostname", "Relay.Example")["hostname"], "Relay.Example")

    def test_badDomainNames(self):
        """
        C{--hostname} and C{--relay-domain} refuse a name with spaces, an
        empty label, a bad character or nothing at all, with a one-line
        usage error naming the option.
        """
        for bad in ("relay example", " relay.example", "relay..example", ".relay.example", ".", "", "relay.example..",
                    "relay_x.example", "-relay.example", "relay.example\n", "a" * 64 + ".example"):
            for option in ("--hostname", "--relay-domain"):
                error = self.assertRaises(usage.UsageError, _parse, option, bad)
                self.assertTrue(str(error).startswith(option), str(error))
                self.assertNotIn("\n", str(error).rstrip())

    def test_machineNameNotADomain(self):
        """
        Without C{--hostname}, a machine name that is not a domain is a
        usage error asking for one.
        """
        self.patch(socket, "getfqdn", lambda: "bad name")
        error = self.assertRaises(usage.UsageError, _parse)
        self.assertIn("--hostname", str(error))



# -- makeService --------------------------------------------------------------------


class MakeServiceTests(TestCase):
    """
    L{makeService} builds the relay from its options.
    """

    def test_smartHostService(self):
        """
        The service has a queue in the spool directory, one listener per
        C{--smtp}, an ESMTP factory named C{--hostname}, and an ESMTP
        relaying manager sending through the smart host with the limits
        given.
        """
        spool = self.mktemp()
        options = _parse(
            "--spool", spool,
            "--smtp", "tcp:2525:interface=127.0.0.1",
            "--smtp", "tcp:2526:interface=127.0.0.1",
            "--smarthost", "smart.example:2526",
            "--hostname", "relay.example",
            "--max-connections", "7",
            "--max-connections-per-destination", "3",
            "--max-messages-per-connection", "2",
        )  # fmt: skip
        service = makeService(options)
        self.assertIsInstance(service, RelayService)
        self.assertFalse(service.running)
        self.assertEqual(service.queue.directory, spool)
        self.assertEqual(spoolListing(spool), {"tmp": [], "queue": [], "corrupt": []})
        manager = service.manager
        self.assertIsInstance(manager, SmartHostESMTPRelayingManager)
        self.assertIs(manager.queue, service.queue)
        self.assertFalse(manager.running)
        self.assertEqual((manager.smartHost.host, manager.smartHost.port), ("smart.example", 2526))
        self.assertEqual(
            (manager.maxConnections, manager.maxConnectionsPerDestination, manager.maxMessagesPerConnection),
            (7, 3, 2),
        )
        self.assertEqual(manager.hostname, "relay.example")
        self.assertFalse(manager.softBounce)
        self.assertEqual(manager.timeout, 300.0)
        self.assertEqual(service.factory.domain, b"relay.example")
        self.assertIs(service.factory.deliveryFactory.queue, service.queue)
        self.assertIs(service.factory.deliveryFactory.policy, options["policy"])
        self.assertEqual(service.listen, ["tcp:2525:interface=127.0.0.1", "tcp:2526:interface=127.0.0.1"])
        listeners = service.listeners
        self.assertEqual(len(listeners), 2)
        self.assertEqual(listeners, [each for each in service if each is not service.control])
        for listener in listeners:
            self.assertIsInstance(listener, StreamServerEndpointService)
            self.assertIsInstance(listener.factory, ConnectionLimitsFactory)
            self.assertIs(listener.factory.wrappedFactory, service.factory)
            self.assertIs(listener.factory.limits, service.connectionLimits)
        self.assertEqual(
            service.description, "relaying through smart.example:2526; accepting mail from 127.0.0.0/8, ::1/128"
        )
        # An IPv6 smart host is shown as it is given.
        options = Options()
        options.parseOptions(["--workers", "1", "--spool", self.mktemp(), "--smtp", "tcp:2527:interface=127.0.0.1", "--smarthost", "[::1]:2526", "--hostname", "relay.example"])
        self.assertTrue(makeService(options).description.startswith("relaying through [::1]:2526;"))

    def test_softBounce(self):
        """
        C{--soft-bounce} gives the manager its soft bounce mode.
        """
        service = makeService(_parse("--spool", self.mktemp(), "--soft-bounce"))
        self.assertTrue(service.manager.softBounce)

    def test_replyTimeout(self):
        """
        C{--reply-timeout} is how long the relay waits for each reply of
        a next hop; it must be a duration above 0.
        """
        service = makeService(_parse("--spool", self.mktemp(), "--reply-timeout", "90s"))
        self.assertEqual(service.manager.timeout, 90.0)
        for bad in ("0", "soon", "-5"):
            self.assertRaises(usage.UsageError, _parse, "--reply-timeout", bad)

    def test_hostnameWithDotService(self):
        """
        C{--hostname relay.example.}: the server completes a bare local
        part with C{relay.example}, and the relay says EHLO with it.
        """
        service = makeService(_parse("--spool", self.mktemp(), "--hostname", "relay.example."))
        self.assertEqual(service.factory.domain, b"relay.example")
        self.assertEqual(service.manager.hostname, "relay.example")

    def test_hostnameNotQualified(self):
        """
        A host name without a dot (as C{localhost}, which many machines
        call themselves) is taken, with a warning; a qualified one gets
        none.
        """
        with capturedLogs() as events:
            makeService(_parse("--spool", self.mktemp(), "--hostname", "localhost"))
        warnings = [e for e in events if "not fully qualified" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["hostname"], "localhost")
        with capturedLogs() as events:
            makeService(_parse("--spool", self.mktemp(), "--hostname", "relay.example"))
        self.assertEqual([e for e in events if "not fully qualified" in e.get("log_format", "")], [])

    def test_mxService(self):
        """
        Without C{--smarthost} the manager relays by MX records, with the
        default limits; the description names the relay networks and
        domains.
        """
        options = _parse(
            "--spool", self.mktemp(),
            "--relay-network", "192.0.2.0/24",
            "--relay-domain", "example.net",
            "--relay-domain", "Example.COM",
        )  # fmt: skip
        service = makeService(options)
        manager = service.manager
        self.assertIsNone(manager.smartHost)
        self.assertEqual(
            (manager.maxConnections, manager.maxConnectionsPerDestination, manager.maxMessagesPerConnection),
            (50, 20, 100),
        )
        self.assertEqual(manager.hostname, socket.getfqdn())
        self.assertEqual(service.listen, [DEFAULT_LISTEN])
        self.assertEqual(
            service.description,
            "relaying by MX records; accepting mail from 192.0.2.0/24; anyone for example.com, example.net",
        )

    @defer.inlineCallbacks
    def test_startAndStop(self):
        """
        Starting the service recovers the spool (a half-written message in
        C{tmp/} removed, an unreadable queue file set aside), then
        listens, greeting with C{--hostname}, and starts the manager;
        stopping it closes the listener and stops the manager.  Both are
        logged.
        """
        spool = self.mktemp()
        for name in ("tmp", "queue", "corrupt"):
            os.makedirs(os.path.join(spool, name))
        with open(os.path.join(spool, "tmp", "1a1fd4155fe540a261a788d"), "wb") as f:
            f.write(b'{"version": 1, "id": "1a1fd4155fe540a261a788d"')
        with open(os.path.join(spool, "queue", "not-a-queue-id"), "wb") as f:
            f.write(b"junk\n")
        port = freePort()
        options = _parse(
            "--spool", spool,
            "--smtp", f"tcp:{port}:interface=127.0.0.1",
            "--smarthost", "127.0.0.1:1",
            "--hostname", "relay.example",
        )  # fmt: skip
        service = makeService(options)
        with capturedLogs() as events:
            service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        self.assertTrue(service.running)
        self.assertTrue(service.manager.running)
        self.assertEqual(spoolListing(spool), {"tmp": [], "queue": [], "corrupt": ["not-a-queue-id"]})
        [started] = [e for e in events if e.get("log_format", "").startswith("mailrelay: listening on")]
        self.assertEqual(started["queued"], 0)
        self.assertEqual(started["listen"], f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(started["spool"], os.path.abspath(spool))
        [recovered] = [e for e in events if "unfinished removed" in e.get("log_format", "")]
        self.assertEqual((recovered["queued"], recovered["removed"], recovered["corrupt"]), (0, 1, 1))
        # The recovery ran before the port was opened.
        self.assertLess(events.index(recovered), events.index(started))

        greeting = yield _greeting(port)
        self.assertTrue(greeting.startswith(b"220 relay.example "), greeting)

        with capturedLogs() as events:
            yield service.stopService()
        self.assertFalse(service.running)
        self.assertFalse(service.manager.running)
        [stopped] = [e for e in events if e.get("log_format", "").startswith("mailrelay: stopped")]
        self.assertEqual((stopped["queued"], stopped["delivered"]), (0, 0))
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", port)), 0)


class _Greeting(Protocol):
    def __init__(self) -> None:
        self.line = defer.Deferred()
        self.closed = defer.Deferred()
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n" in self._buffer and not self.line.called:
            self.line.callback(self._buffer.split(b"\r\n", 1)[0])
            self.transport.write(b"QUIT\r\n")

    def connectionLost(self, reason) -> None:
        if not self.line.called:
            self.line.errback(reason)
        self.closed.callback(None)


@defer.inlineCallbacks
def _greeting(port: int):
    """
    @return: a L{Deferred} firing with the greeting of the server on
        C{port}, once the connection is closed.
    """
    protocol = _Greeting()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), protocol)
    line = yield protocol.line.addTimeout(10, reactor)
    yield protocol.closed.addTimeout(10, reactor)
    return line


# -- the plugin ---------------------------------------------------------------------


class PluginTests(TestCase):
    """
    The C{mailrelay} plugin.
    """

    def _pluginModule(self):
        try:
            from twisted.plugins import mailproto_mailrelay
        except ImportError:
            try:
                from twistd_plugins import mailproto_mailrelay
            except ImportError:
                from twisted.trial.unittest import SkipTest

                raise SkipTest("the plugin module is neither installed nor importable from the source tree")
        return mailproto_mailrelay

    def test_serviceMaker(self):
        """
        The plugin module has an L{IServiceMaker} (and L{IPlugin}) named
        C{mailrelay} whose options and service are L{mailproto._relayd._daemon}'s.
        """
        plugin = self._pluginModule().mailrelay
        self.assertTrue(verifyObject(IServiceMaker, plugin))
        self.assertTrue(IPlugin.providedBy(plugin))
        self.assertEqual(plugin.tapname, "mailrelay")
        self.assertIs(plugin.options, _daemon.Options)
        self.assertIs(plugin.makeService, _daemon.makeService)
        self.assertIn("mail relay", plugin.description)

    def test_getPlugins(self):
        """
        L{getPlugins} finds the plugin in a C{twisted/plugins} directory on
        the path: where it is installed, or the one L{relayCommand} links
        it into from a source tree.
        """
        import twisted.plugins

        scratch = os.path.abspath(self.mktemp())
        os.makedirs(scratch)
        argv, env = relayCommand([], scratch)
        directories = [
            os.path.join(entry, "twisted", "plugins")
            for entry in env["PYTHONPATH"].split(os.pathsep)
            if os.path.isdir(os.path.join(entry, "twisted", "plugins"))
        ]
        self.patch(twisted.plugins, "__path__", list(twisted.plugins.__path__) + directories)
        found = [p for p in getPlugins(IServiceMaker, twisted.plugins) if getattr(p, "tapname", None) == "mailrelay"]
        self.assertEqual(len(found), 1, found)
        self.assertIs(found[0].options, _daemon.Options)
        # The plugin's options follow its name: one process, unless asked.
        self.assertEqual(argv[argv.index("mailrelay") :], ["mailrelay", "--workers", "1"])


# -- the command in a child process ------------------------------------------------


class CommandTests(TestCase):
    """
    C{twistd mailrelay} run as a command, in a child process.
    """

    timeout = 60

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)

    def runRelay(self, *arguments):
        argv, env = relayCommand(list(arguments), self.scratch)
        return getProcessOutputAndValue(argv[0], argv[1:], env=env, path=self.scratch)

    @defer.inlineCallbacks
    def test_help(self):
        """
        C{twistd mailrelay --help} shows the relay's options and exits 0.
        """
        out, err, code = yield self.runRelay("--help")
        self.assertEqual((code, err), (0, b""), out)
        text = out.decode("utf-8")
        self.assertIn("mailrelay [options]", text)
        for option in ("--smarthost=", "--smtp=", "--spool=", "--relay-network=", "--relay-domain=", "--hostname=", "--soft-bounce"):
            self.assertIn(option, text)
        for option in ("--max-connections=", "--max-connections-per-destination=", "--max-messages-per-connection="):
            self.assertIn(option, text)
        self.assertIn("HOST:PORT", text)

    @defer.inlineCallbacks
    def test_usageErrors(self):
        """
        A bad option makes the command exit with status 1: twistd shows
        where the help is (not the whole help), then the error on one
        last line; no traceback.
        Nothing is started, so the spool is not made.
        """
        spool = os.path.join(self.scratch, "spool")
        for arguments, error in [
            (["--smarthost", "host:notaport"], "--smarthost: bad smart host 'host:notaport': the port must be a number"),
            (["--smarthost", "::1:25"], "--smarthost: bad smart host '::1:25': put an IPv6 address in brackets, as [::1]:25"),
            (["--smtp", "tcp:notaport"], "--smtp 'tcp:notaport': not an endpoint ("),
            (["--relay-network", "10.0.0.0/33"], "--relay-network: '10.0.0.0/33'"),
            (["--max-connections", "0"], "--max-connections: '0' must be more than 0"),
            (["--workers", "many"], "--workers: 'many' is neither a whole number nor auto"),
            (["--no-such-option"], "option --no-such-option not recognized"),
        ]:
            out, err, code = yield self.runRelay("--spool", spool, *arguments)
            text = out.decode("utf-8") + err.decode("utf-8")
            self.assertEqual(code, 1, text)
            self.assertNotIn("Traceback", text)
            lines = out.decode("utf-8").rstrip("\n").split("\n")
            self.assertIn(error, lines[-1], f"{arguments}: {text}")
            self.assertEqual([line for line in lines if error in line], [lines[-1]])
            # Not buried under the whole help: one line says where it is.
            self.assertIn("Run 'twistd mailrelay --help' for the options.", text)
            self.assertNotIn("--smarthost=", text)
            self.assertFalse(os.path.exists(spool))

    @defer.inlineCallbacks
    def test_relayThroughSmartHost(self):
        """
        End to end: C{twistd mailrelay --smarthost} queues a message sent
        with smtplib, sends it to the smart host with its own C{Received}
        header on top of the message as sent, logs C{Delivered <queue id>
        to <recipient>}, and empties its queue; SIGTERM stops it cleanly.
        """
        sink = yield SinkProcess.start(self, os.path.join(self.scratch, "maildir"))
        spool = os.path.join(self.scratch, "spool")
        port = freePort()
        relay = RelayProcess.spawn(
            self,
            [
                "--smtp", f"tcp:{port}:interface=127.0.0.1",
                "--spool", spool,
                "--smarthost", f"127.0.0.1:{sink.port}",
                "--hostname", "relay.test",
            ],
            self.scratch,
        )  # fmt: skip
        yield relay.whenListening()
        message = (
            b"From: Sender <sender@example.org>\r\n"
            b"To: Recipient <rcpt@example.com>\r\n"
            b"Subject: relayed end to end\r\n"
            b"Message-ID: <e2e-1@client.example>\r\n"
            b"X-Test-Id: e2e-1\r\n"
            b"\r\n"
            b"Hello through the relay.\r\n"
            b".A line that starts with a dot.\r\n"
        )
        refused = yield _sendWithSmtplib(port, "sender@example.org", ["rcpt@example.com"], message)
        self.assertEqual(refused, {})

        received = yield waitUntil(lambda: list(sink.messages().values()), 20, lambda: f"the message at the smart host; relay log:\n{relay.text()}")
        [stored] = received
        self.assertTrue(stored.startswith(b"Received: from client.example ([127.0.0.1])\r\n\tby relay.test "), stored[:300])
        self.assertTrue(stored.endswith(b"\r\n" + message), stored)
        self.assertEqual(testIDOf(stored), "e2e-1")

        delivered = yield waitUntil(lambda: relay.logLines("Delivered "), 20, lambda: f"a Delivered line:\n{relay.text()}")
        [line] = delivered
        match = re.search(r"Delivered ([0-9a-f]{12,40}) to <rcpt@example\.com> via 127\.0\.0\.1: 250 ", line)
        self.assertIsNotNone(match, line)
        queueID = match.group(1)
        [queued] = relay.logLines(f"Queued {queueID} from <sender@example.org> for <rcpt@example.com>")
        # The queued size counts the relay's own Received header.
        self.assertIn(f"({len(stored)} octets)", queued)
        yield waitUntil(lambda: spoolListing(spool)["queue"] == [], 20, "the message to leave the queue")
        self.assertEqual(spoolListing(spool), {"tmp": [], "queue": [], "corrupt": []})
        # The server does not log the message again: the queue's line has
        # its queue id.
        self.assertEqual(relay.logLines("Receiving message"), [])

        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text())
        [stopped] = relay.logLines("mailrelay: stopped;")
        self.assertIn("0 queued now; this run: 1 delivered, 0 deferred, 0 failed", stopped)
        self.assertNotIn("Traceback", relay.text())
