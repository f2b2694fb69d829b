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
import site
import subprocess
import sys
import tempfile

from twisted.internet import defer, reactor, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailproto._commandline._cli import runCommand
from mailproto._relayd import _daemon
from mailproto._relayd._privileges import SpoolNotUsable, WorkersCannotRun, checkWorkersCanRun, giveSpool, runAs
from mailproto._queue import Envelope, Queue, Recipient
from mailproto.test._relayprocess import relayCommand
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


class WorkersRunAsTests(SynchronousTestCase):
    """
    L{checkWorkersCanRun}, and how many workers the relay starts when the
    user it will run as cannot start them (L{_daemon._workerCount}).
    """

    def fakeRun(self, result):
        """
        @param result: the L{subprocess.CompletedProcess} to return, or an
            exception to raise.
        @return: a replacement for L{subprocess.run} that records its calls.
        """
        self.calls = []

        def run(argv, **kwargs):
            self.calls.append((argv, kwargs))
            if isinstance(result, BaseException):
                raise result
            return result

        return run

    def test_canRun(self):
        """
        The check runs this Python, as the user and group, importing the
        worker's module; a clean exit is a pass.
        """
        run = self.fakeRun(subprocess.CompletedProcess([], 0, b"", b""))
        self.assertIsNone(checkWorkersCanRun(65534, 65534, run=run))
        [(argv, kwargs)] = self.calls
        self.assertEqual(argv, [sys.executable, "-c", "import mailproto._relayd._worker"])
        self.assertEqual((kwargs["user"], kwargs["group"], kwargs["cwd"]), (65534, 65534, "/"))

    def test_importFails(self):
        """
        A failed import is refused with the last line Python wrote, the
        user, the interpreter, and what to do.
        """
        stderr = b"Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'mailproto'\n"
        run = self.fakeRun(subprocess.CompletedProcess([], 1, b"", stderr))
        error = self.assertRaises(WorkersCannotRun, checkWorkersCanRun, 65534, 65534, run=run)
        text = str(error)
        self.assertIn(f"{sys.executable}: ModuleNotFoundError: No module named 'mailproto'", text)
        self.assertIn("or use --workers 1", text)
        self.assertNotIn("\n", text)
        self.assertNotIn("Traceback", text)

    def test_cannotExecute(self):
        """
        An interpreter the user may not run (a Python under C{/root}) is
        refused with the system's reason; so is a silent failure, with its
        status.
        """
        run = self.fakeRun(PermissionError(13, "Permission denied"))
        error = self.assertRaises(WorkersCannotRun, checkWorkersCanRun, 65534, 65534, run=run)
        self.assertIn(f"{sys.executable}: Permission denied", str(error))
        run = self.fakeRun(subprocess.CompletedProcess([], 3, b"", b""))
        error = self.assertRaises(WorkersCannotRun, checkWorkersCanRun, 65534, 65534, run=run)
        self.assertIn("exit status 3", str(error))

    def test_unreachableInterpreter(self):
        """
        For real, as root: this Python, reached through a directory nobody
        may not enter, cannot be run by nobody.
        """
        _needRoot()
        private = os.path.join(_openScratch(self), "private")
        os.makedirs(private, mode=0o700)
        os.symlink(sys.executable, os.path.join(private, "python"))
        self.patch(sys, "executable", os.path.join(private, "python"))
        nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        error = self.assertRaises(WorkersCannotRun, checkWorkersCanRun, nobody, nogroup)
        self.assertIn("the workers cannot start as nobody:nogroup", str(error))
        self.assertIn("Permission denied", str(error))

    def workerCount(self, arguments, relayAs, failure=None):
        options = _daemon.Options()
        options.parseOptions(["--spool", self.mktemp(), *arguments])
        checked = []

        def check(uid, gid):
            checked.append((uid, gid))
            if failure is not None:
                raise failure

        self.patch(_daemon, "checkWorkersCanRun", check)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        count, error = _daemon._workerCount(options, relayAs)
        return count, error, checked, [e for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"]

    def test_countChecked(self):
        """
        Workers are checked only when the relay will switch user: then a
        pass keeps the number.
        """
        self.assertEqual(self.workerCount(["--workers", "2"], None)[:3], (2, None, []))
        self.assertEqual(self.workerCount(["--workers", "1"], (65534, 65534))[:3], (1, None, []))
        self.assertEqual(self.workerCount(["--workers", "2"], (65534, 65534))[:3], (2, None, [(65534, 65534)]))

    def test_autoFallsBack(self):
        """
        With C{--workers auto} (the default), workers the user cannot start
        make the relay one process, with one warning that says why.
        """
        failure = WorkersCannotRun("the workers cannot start as nobody:nogroup: /root/python: Permission denied (make Python and mailproto readable by that user, or use --workers 1)")
        for arguments in ([], ["--workers", "auto"]):
            options = _daemon.Options()
            options.parseOptions(["--spool", self.mktemp(), "--workers", "auto"])
            if options["workers"] == 1:
                raise SkipTest("one core here: auto is one process anyway")
            count, error, checked, warnings = self.workerCount(arguments, (65534, 65534), failure)
            self.assertEqual((count, error, checked), (1, None, [(65534, 65534)]))
            [warning] = warnings
            text = formatEvent(warning)
            self.assertIn("nobody:nogroup: /root/python: Permission denied", text)
            self.assertTrue(text.endswith("readable by that user); running as one process"), text)

    def test_givenNumberFails(self):
        """
        A number of workers given and not possible is an error, to stop the
        start with.
        """
        failure = WorkersCannotRun("the workers cannot start as nobody:nogroup: ...")
        count, error, checked, warnings = self.workerCount(["--workers", "2"], (65534, 65534), failure)
        self.assertEqual((count, error, warnings), (2, failure, []))


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
    def startRelay(self, script, *extra: str, python: str | None = None, listens: bool = True):
        """
        Start the relay as nobody, relaying to a scripted smart host.

        @param extra: more options of C{mailrelay}.
        @param python: run it with this interpreter (a link to this one,
            with this one's site-packages on its path) rather than this
            one.
        @param listens: whether to wait until it listens.
        @return: a L{Deferred} firing with the smart host's factory, the
            L{RelayProcess} and its port.
        """
        smartHost = ScriptedSMTPFactory(script)
        listening = reactor.listenTCP(0, smartHost, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = freePort()
        argv, env = relayCommand(
            ["--smtp", f"tcp:{port}:interface=127.0.0.1", "--spool", self.spool, "--hostname", "relay.test",
             "--smarthost", f"127.0.0.1:{listening.getHost().port}", "--smarthost-tls", "none", "--retry-schedule", "1h",
             *extra],
            self.scratch,
            ["--uid", "nobody", "--gid", "nogroup", "--umask", "022"],
        )  # fmt: skip
        if python is not None:
            argv[0] = python
            env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], *site.getsitepackages()])
        relay = RelayProcess()
        relay._spawn(self, argv, env, self.scratch)
        if listens:
            yield relay.whenListening()
        return smartHost, relay, port

    def unreachablePython(self) -> str:
        """
        @return: a link to this Python in a directory nobody may not enter
            (as a Python installed under C{/root} is).
        """
        private = os.path.join(self.scratch, "private")
        os.makedirs(private, mode=0o700)
        os.symlink(sys.executable, os.path.join(private, "python"))
        return os.path.join(private, "python")

    @defer.inlineCallbacks
    def test_workersAsNobody(self):
        """
        With C{--workers 2}, the workers run as nobody too, and take mail
        that the parent delivers; where nobody cannot run this Python, the
        relay does not start, and says why in one line.
        """
        nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        try:
            checkWorkersCanRun(nobody, nogroup)
        except WorkersCannotRun as e:
            smartHost, relay, port = yield self.startRelay({}, "--workers", "2", listens=False)
            yield relay.whenEnded()
            self.assertIn(f"mailrelay: cannot start: {e}", relay.text())
            self.assertNotIn("Traceback", relay.text())
            return
        from mailproto.test.test_workers import workerProcesses

        smartHost, relay, port = yield self.startRelay({}, "--workers", "2")
        yield waitUntil(lambda: len(workerProcesses(self.spool)) == 2, 20, lambda: relay.text()[-2000:])
        for pid in workerProcesses(self.spool).values():
            with open(f"/proc/{pid}/status") as f:
                uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
            self.assertEqual(set(uids), {str(nobody)})
        refused = yield _sendWithSmtplib(port, "jo@example.org", ["ann@example.com"], b"Subject: by a worker\r\n\r\nhello\r\n")
        self.assertEqual(refused, {})
        yield waitUntil(lambda: any(b"Subject: by a worker" in m for m in smartHost.messages), 20, lambda: relay.text()[-2000:])
        self.assertPrivateAndOwned()
        self.assertEqual(relay.logLines("Traceback"), [])

    @defer.inlineCallbacks
    def test_workersCannotRun(self):
        """
        Run by a Python nobody may not run, the relay given C{--workers 2}
        does not start: one line says why and what to do, with no
        traceback, and it exits with status 1.
        """
        smartHost, relay, port = yield self.startRelay({}, "--workers", "2", python=self.unreachablePython(), listens=False)
        yield relay.whenEnded()
        self.assertEqual(relay.reason.exitCode, 1, relay.text())
        [line] = relay.logLines("mailrelay: cannot start:")
        self.assertIn("the workers cannot start as nobody:nogroup: ", line)
        self.assertIn("Permission denied (make Python and mailproto readable by that user, or use --workers 1)", line)
        self.assertNotIn("Traceback", relay.text())

    @defer.inlineCallbacks
    def test_autoWorkersFallBack(self):
        """
        The same relay with the default C{--workers auto} runs as one
        process, warning once, and takes and delivers mail.
        """
        if _daemon.availableCores() < 2:
            raise SkipTest("one core here: auto is one process anyway")
        smartHost, relay, port = yield self.startRelay({}, "--workers", "auto", python=self.unreachablePython())
        [warning] = relay.logLines("the workers cannot start as nobody:nogroup")
        self.assertTrue(warning.endswith("readable by that user); running as one process"), warning)
        [listening] = relay.logLines("mailrelay: listening on")
        self.assertNotIn("workers", listening)
        refused = yield _sendWithSmtplib(port, "jo@example.org", ["ann@example.com"], b"Subject: one process\r\n\r\nhello\r\n")
        self.assertEqual(refused, {})
        yield waitUntil(lambda: any(b"Subject: one process" in m for m in smartHost.messages), 20, lambda: relay.text()[-2000:])
        self.assertEqual(relay.logLines("Traceback"), [])

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
