# -*- test-case-name: mailproto.test.test_privileges -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
A private spool, and a relay that runs unprivileged: the spool's modes
whatever the umask, loose ones tightened; L{mailproto._relayd._privileges}; and
C{twistd --uid nobody --gid nogroup mailrelay} started as root, over real
sockets, taking, queueing and delivering mail as C{nobody}, with
C{mailproto queue list} working for that user.
"""

from __future__ import annotations

import grp
import io
import json
import os
import pwd
import shutil
import tempfile

from twisted.internet import defer, reactor, threads
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailproto._commandline._cli import runCommand
from mailproto._relayd._privileges import SpoolNotUsable, giveSpool, runAs
from mailproto._queue import Envelope, Queue, Recipient
from mailproto.test.test_daemon import RelayProcess, _sendWithSmtplib, freePort, spoolListing, waitUntil
from mailproto.testing import ScriptedSMTPFactory


def _synchronously(f, *args):
    return defer.maybeDeferred(f, *args)


def _modes(top: str) -> dict[str, int]:
    """
    @return: the permission bits of everything under C{top}, C{top}
        included, by path relative to it.
    """
    found = {".": os.stat(top).st_mode & 0o777}
    for root, directories, files in os.walk(top):
        for name in directories + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, top)] = os.lstat(path).st_mode & 0o777
    return found


def _openScratch(testCase) -> str:
    """
    @return: a directory every user may enter (trial's own are its
        user's only), removed when the test ends.
    """
    scratch = tempfile.mkdtemp(prefix="mailproto-privileges-")
    os.chmod(scratch, 0o755)
    testCase.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


def _runAsNobody(argv: list[str]) -> tuple[int, str, str]:
    """
    Run a C{mailproto} command as nobody:nogroup in a fork of this
    process.

    @return: its exit status, standard output and error.
    """
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    readEnd, writeEnd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        result = [70, "", "the child failed"]
        try:
            os.close(readEnd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out, err = io.StringIO(), io.StringIO()
            result = [runCommand(argv, reactor=object(), stdout=out, stderr=err), out.getvalue(), err.getvalue()]
        except BaseException as e:
            result = [70, "", repr(e)]
        finally:
            os.write(writeEnd, json.dumps(result).encode("utf-8"))
            os._exit(0)
    os.close(writeEnd)
    chunks = []
    while True:
        chunk = os.read(readEnd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(readEnd)
    os.waitpid(pid, 0)
    status, out, err = json.loads(b"".join(chunks))
    return status, out, err


def _needRoot() -> None:
    if os.geteuid() != 0:
        raise SkipTest("changing owners needs root")
    try:
        pwd.getpwnam("nobody")
        grp.getgrnam("nogroup")
    except KeyError:
        raise SkipTest("there is no nobody:nogroup here") from None


class PrivateSpoolTests(SynchronousTestCase):
    """
    The spool is the owner's only, whatever the umask.
    """

    def setUp(self):
        self.umask = os.umask(0o022)
        self.addCleanup(os.umask, self.umask)
        self.spool = os.path.abspath(self.mktemp())

    def test_modes(self):
        """
        Under umask 022: directories 0700, the queue file and its state
        0600.
        """
        queue = Queue(self.spool, runInThread=_synchronously)
        envelope = Envelope("0" * 12, b"jo@example.org", [Recipient(b"ann@example.com")])
        spool = queue.newMessage(envelope)
        spool.write(b"Subject: private\r\n\r\nhello\r\n")
        self.successResultOf(spool.commit())
        self.successResultOf(queue.update(envelope))
        modes = _modes(self.spool)
        # "lock": the spool's lock, which each change was made under.
        files = {"lock", "queue/" + "0" * 12, "queue/" + "0" * 12 + ".state"}
        self.assertEqual({path for path in modes}, {".", "tmp", "queue", "corrupt", *files})
        for path, mode in modes.items():
            self.assertEqual(mode, 0o600 if path in files else 0o700, path)

    def test_bigMessageSpilled(self):
        """
        A message that goes to its file in C{tmp/} while it is received is
        private there too.
        """
        queue = Queue(self.spool, runInThread=_synchronously)
        spool = queue.newMessage(Envelope("1" * 12, b"jo@example.org", [Recipient(b"ann@example.com")]))
        spool.write(b"x" * (spool.SPILL + 10))
        [name] = os.listdir(os.path.join(self.spool, "tmp"))
        self.assertEqual(os.stat(os.path.join(self.spool, "tmp", name)).st_mode & 0o777, 0o600)
        spool.abort()

    def test_looseSpoolTightened(self):
        """
        A spool made with looser modes (an older version, a hand) is made
        private when opened, and said so once each for the directories
        and for the files.
        """
        for name in ("tmp", "queue", "corrupt"):
            os.makedirs(os.path.join(self.spool, name), mode=0o755)
        os.chmod(self.spool, 0o755)
        loose = os.path.join(self.spool, "queue", "2" * 12)
        envelope = Envelope("2" * 12, b"jo@example.org", [Recipient(b"ann@example.com")])
        with open(loose, "wb") as f:
            f.write(json.dumps(envelope.header()).encode() + b"\n" + b"Subject: x\r\n\r\nhi\r\n")
        os.chmod(loose, 0o644)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        queue = Queue(self.spool, runInThread=_synchronously)
        self.assertEqual(queue.recover()["queued"], 1)
        for path, mode in _modes(self.spool).items():
            self.assertEqual(mode & 0o077, 0, path)
        said = [e["log_format"] for e in logged if "private" in e.get("log_format", "")]
        self.assertEqual(len(said), 2, said)


class RunAsTests(SynchronousTestCase):
    """
    L{runAs} and L{giveSpool}.
    """

    def test_runAsFromTwistd(self):
        class Options(dict):
            pass

        options = Options()
        self.assertIsNone(runAs(options))
        options.parent = {"uid": None, "gid": None}
        self.assertIsNone(runAs(options))
        if os.geteuid() != 0:
            raise SkipTest("twistd switches user only when started as root")
        options.parent = {"uid": 65534, "gid": None}
        self.assertEqual(runAs(options), (65534, pwd.getpwuid(65534).pw_gid))
        options.parent = {"uid": 65534, "gid": 100}
        self.assertEqual(runAs(options), (65534, 100))

    def test_giveSpool(self):
        _needRoot()
        spool = os.path.join(_openScratch(self), "spool")
        Queue(spool, runInThread=_synchronously)
        lock = os.path.join(spool, "lock")
        open(lock, "w").close()
        nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        self.assertEqual(giveSpool(spool, lock, nobody, nogroup), 5)
        for path in (spool, lock, *(os.path.join(spool, n) for n in ("tmp", "queue", "corrupt"))):
            st = os.stat(path)
            self.assertEqual((st.st_uid, st.st_gid), (nobody, nogroup), path)
        self.assertEqual(giveSpool(spool, lock, nobody, nogroup), 0)

    def test_unreachable(self):
        """
        A spool under a directory the user may not enter is refused, with
        the path and the user named.
        """
        _needRoot()
        parent = os.path.join(_openScratch(self), "private")
        os.makedirs(parent, mode=0o700)
        spool = os.path.join(parent, "spool")
        Queue(spool, runInThread=_synchronously)
        nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        error = self.assertRaises(SpoolNotUsable, giveSpool, spool, os.path.join(spool, "lock"), nobody, nogroup)
        self.assertIn("nobody:nogroup", str(error))
        self.assertIn(parent, str(error))


class UnprivilegedRelayTests(TestCase):
    """
    C{twistd --uid nobody --gid nogroup --umask 022 mailrelay}, started as
    root.
    """

    timeout = 60

    def setUp(self):
        _needRoot()
        self.scratch = _openScratch(self)
        self.spool = os.path.join(self.scratch, "spool")

    @defer.inlineCallbacks
    def startRelay(self, script):
        smartHost = ScriptedSMTPFactory(script)
        listening = reactor.listenTCP(0, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = freePort()
        relay = RelayProcess.spawn(
            self,
            ["--smtp", f"tcp:{port}:interface=127.0.0.1", "--spool", self.spool, "--hostname", "relay.test",
             "--smarthost", f"127.0.0.1:{listening.getHost().port}", "--smarthost-tls", "none", "--retry-schedule", "1h"],
            self.scratch,
            twistdArguments=["--uid", "nobody", "--gid", "nogroup", "--umask", "022"],
        )  # fmt: skip
        yield relay.whenListening()
        return smartHost, relay, port

    def assertPrivateAndOwned(self):
        nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        for path, mode in _modes(self.spool).items():
            self.assertEqual(mode & 0o077, 0, f"{path}: {mode:04o}")
            st = os.lstat(os.path.join(self.spool, path))
            self.assertEqual((st.st_uid, st.st_gid), (nobody, nogroup), path)

    @defer.inlineCallbacks
    def test_takesQueuesDelivers(self):
        smartHost, relay, port = yield self.startRelay({})
        refused = yield _sendWithSmtplib(port, "jo@example.org", ["ann@example.com"], b"Subject: as nobody\r\n\r\nhello\r\n")
        self.assertEqual(refused, {})
        yield waitUntil(lambda: any(b"Subject: as nobody" in m for m in smartHost.messages), 20, lambda: relay.text()[-2000:])
        yield waitUntil(lambda: spoolListing(self.spool)["queue"] == [], 20, "the queue to empty")
        self.assertPrivateAndOwned()
        self.assertEqual(relay.logLines("Traceback"), [])
        pid = int(relay.transport.pid)
        with open(f"/proc/{pid}/status") as f:
            uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
        self.assertEqual(set(uids), {str(pwd.getpwnam("nobody").pw_uid)})

    @defer.inlineCallbacks
    def test_queueListAsNobody(self):
        """
        A message deferred by the smart host stays queued, private and
        the relay's user's; C{mailproto queue list} run as that user shows
        it.
        """
        smartHost, relay, port = yield self.startRelay({b"RCPT": b"451 4.3.0 Try again later\r\n"})
        refused = yield _sendWithSmtplib(port, "jo@example.org", ["ann@example.com"], b"Subject: waits\r\n\r\nhello\r\n")
        self.assertEqual(refused, {})
        yield waitUntil(lambda: relay.logLines("Deferred "), 20, lambda: relay.text()[-2000:])
        self.assertPrivateAndOwned()
        # As nobody: this process, forked, with its privileges dropped (the
        # interpreter may live where nobody may not go, as under /root).
        status, out, err = yield threads.deferToThread(_runAsNobody, ["queue", "list", "--spool", self.spool])
        self.assertEqual(status, 0, err)
        self.assertIn("to   <ann@example.com>", out)
        self.assertIn("451 4.3.0 Try again later", out)
