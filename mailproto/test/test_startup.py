# -*- test-case-name: mailproto.test.test_startup -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
A relay that cannot start says why in one line, and exits with status 1:
L{mailproto._relayd._startup.describeStartFailure}, and C{twistd mailrelay} on a
port in use and on an address the machine does not have.
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._relayd._control import SpoolBusy
from mailproto._relayd._privileges import SpoolNotUsable
from mailproto._relayd._startup import describeStartFailure
from mailproto.test.test_daemon import START_DEADLINE, RelayProcess, freePort


def _cannotListen(number: int, interface: str = "127.0.0.1") -> CannotListenError:
    return CannotListenError(interface, 25, OSError(number, os.strerror(number)))


class DescribeTests(SynchronousTestCase):
    def test_ports(self):
        self.assertEqual(
            describeStartFailure(_cannotListen(errno.EADDRINUSE)),
            "cannot listen on port 25 of 127.0.0.1: another program listens there already (stop it, or choose another port)",
        )
        self.assertIn("ports below 1024 need root", describeStartFailure(_cannotListen(errno.EACCES, "")))
        self.assertIn("port 25 of every address", describeStartFailure(_cannotListen(errno.EACCES, "")))
        self.assertIn("no such address", describeStartFailure(_cannotListen(errno.EADDRNOTAVAIL)))
        self.assertIn(os.strerror(errno.ENOBUFS), describeStartFailure(_cannotListen(errno.ENOBUFS)))

    def test_spool(self):
        self.assertEqual(describeStartFailure(SpoolBusy("/var/spool/relay is in use by another process")), "/var/spool/relay is in use by another process")
        self.assertEqual(describeStartFailure(SpoolNotUsable("the spool x cannot be reached")), "the spool x cannot be reached")
        self.assertEqual(describeStartFailure(PermissionError(errno.EACCES, "Permission denied", "/var/spool/relay/lock")), "/var/spool/relay/lock: Permission denied")

    def test_other(self):
        self.assertEqual(describeStartFailure(ValueError("odd")), "ValueError: odd")


class TwistdTests(TestCase):
    """
    C{twistd mailrelay} that cannot listen.
    """

    timeout = 60

    def setUp(self):
        self.scratch = os.path.abspath(self.mktemp())
        os.makedirs(self.scratch)

    @defer.inlineCallbacks
    def assertOneLine(self, listen: str, expected: str):
        relay = RelayProcess.spawn(self, ["--smtp", listen, "--spool", os.path.join(self.scratch, "spool"), "--hostname", "relay.test"], self.scratch)
        yield relay.whenEnded(START_DEADLINE)
        text = relay.text()
        self.assertEqual(relay.exitCode, 1, text)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("listening on", text)
        [line] = relay.logLines("cannot start")
        self.assertTrue(line.endswith("mailrelay: cannot start: " + expected), line)

    def test_portInUse(self):
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        return self.assertOneLine(
            f"tcp:{port}:interface=127.0.0.1",
            f"cannot listen on port {port} of 127.0.0.1: another program listens there already (stop it, or choose another port)",
        )

    def test_noSuchAddress(self):
        port = freePort()
        return self.assertOneLine(
            f"tcp:{port}:interface=192.0.2.77",
            f"cannot listen on port {port} of 192.0.2.77: this machine has no such address (check the interface= of the listener)",
        )


class UsageTests(TestCase):
    """
    A usage error of C{twistd mailrelay} is not buried under the help, and
    C{--version} is mailproto's.
    """

    timeout = 60

    @defer.inlineCallbacks
    def run_(self, *arguments: str):
        from twisted.internet.utils import getProcessOutputAndValue

        from mailproto.test._relayprocess import relayCommand

        scratch = os.path.abspath(self.mktemp())
        os.makedirs(scratch)
        argv, env = relayCommand(list(arguments), scratch)
        # relayCommand runs in the foreground with a log: only the options
        # matter here.
        out, err, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=env, path=scratch)
        return (out + err).decode("utf-8", "replace"), code

    @defer.inlineCallbacks
    def test_usageErrorShort(self):
        text, code = yield self.run_("--max-clients", "lots")
        self.assertEqual(code, 1, text)
        lines = text.strip().splitlines()
        self.assertLessEqual(len(lines), 3, text)
        self.assertTrue(lines[-1].endswith("--max-clients: 'lots' is not a whole number (0 or more)"), text)
        self.assertIn("Run 'twistd mailrelay --help' for the options.", text)
        self.assertNotIn("Traceback", text)

    @defer.inlineCallbacks
    def test_helpWhole(self):
        text, code = yield self.run_("--help")
        self.assertEqual(code, 0, text)
        self.assertIn("--max-clients", text)
        self.assertNotIn("Run 'twistd mailrelay --help'", text)

    @defer.inlineCallbacks
    def test_version(self):
        import mailproto

        text, code = yield self.run_("--version")
        self.assertEqual(code, 0, text)
        self.assertIn(f"twistd mailrelay: mailproto {mailproto.__version__} (Twisted ", text)
