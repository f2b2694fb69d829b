# -*- test-case-name: mailproto.test.test_adduser -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for C{mailproto adduser} (L{mailproto._commandline._cli.AddUserOptions}): its
options, the password from a terminal prompt (twice) or from stdin, the
users file it writes, its errors; and the real command in a subprocess,
whose file L{UsersFileChecker} then accepts.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tempfile

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.testing import MemoryReactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

import mailproto
from mailproto._commandline._cli import MAX_PASSWORD_LENGTH, AddUserOptions, MailprotoOptions, runCommand
from mailproto._cred import UsersFile, UsersFileChecker, checkPassword

# The directory that holds the mailproto package being tested, for the
# subprocesses.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))


def _parse(*argv):
    """
    @return: the parsed options of C{mailproto adduser argv...}.
    """
    options = MailprotoOptions()
    options.parseOptions(["adduser", *argv])
    return options.subOptions


class _Terminal(io.StringIO):
    """
    A stdin that is a terminal; reading it is a test failure (the password
    must come from the prompt).
    """

    def isatty(self):
        return True

    def readline(self, *args):
        raise AssertionError("stdin was read although it is a terminal")


class _Pipe(io.BytesIO):
    """
    A binary stdin that is not a terminal, as C{sys.stdin.buffer} of a
    pipe.
    """

    def isatty(self):
        return False


class _TextPipe:
    """
    A text stdin that is not a terminal, with its binary C{buffer}, as
    C{sys.stdin} of a pipe.
    """

    def __init__(self, data: bytes):
        self.buffer = _Pipe(data)

    def isatty(self):
        return False


class _Prompt:
    """
    A stand-in for L{getpass.getpass} that answers from a list.

    @ivar prompts: the prompts it was given.
    """

    def __init__(self, *answers):
        self.answers = list(answers)
        self.prompts = []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class OptionsTests(SynchronousTestCase):
    """
    The options of C{mailproto adduser}.
    """

    def test_arguments(self):
        """
        FILE and USER are the two arguments; C{--stdin} is off by default.
        """
        options = _parse("users", "joe")
        self.assertIsInstance(options, AddUserOptions)
        self.assertEqual((options["file"], options["user"], options["stdin"]), ("users", "joe", 0))
        self.assertEqual(_parse("--stdin", "users", "joe")["stdin"], 1)

    def assertUsageError(self, argv, message):
        error = self.assertRaises(usage.UsageError, _parse, *argv)
        self.assertEqual(str(error), message)

    def test_errors(self):
        """
        A wrong number of arguments, or a user name a users file cannot
        hold, is a usage error that says what is wrong.
        """
        self.assertUsageError([], "expected a users FILE and a USER name, got 0 argument(s)")
        self.assertUsageError(["users"], "expected a users FILE and a USER name, got 1 argument(s)")
        self.assertUsageError(["users", "joe", "more"], "expected a users FILE and a USER name, got 3 argument(s)")
        self.assertUsageError(["", "joe"], "FILE: the path is empty")
        for bad in ["", "a:b", "a\nb", "a\rb", "a\0b"]:
            self.assertUsageError(
                ["users", bad], f"USER: not a user name: {bad!r} (it cannot be empty or have ':', NUL or a line end)"
            )
        self.assertRaises(usage.UsageError, _parse, "--nonsense", "users", "joe")

    def test_usageErrorExitStatus(self):
        """
        The command answers a usage error with one line on stderr and
        status 2, and writes nothing.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        path = os.path.abspath(self.mktemp())
        status = runCommand(["adduser", path], reactor=MemoryReactor(), stdout=stdout, stderr=stderr)
        self.assertEqual(status, 2)
        self.assertEqual(stdout.getvalue(), "")
        self.assertEqual(
            stderr.getvalue(),
            "mailproto adduser: error: expected a users FILE and a USER name, got 1 argument(s) "
            "(see 'mailproto adduser --help')\n",
        )
        self.assertFalse(os.path.exists(path))

    def test_listed(self):
        """
        C{mailproto --help} lists the command.
        """
        self.assertIn("adduser", [name for name, *rest in MailprotoOptions.subCommands])
        self.assertEqual(_parse("users", "joe").getSynopsis(), "Usage: mailproto adduser [options] FILE USER")


class RunTests(SynchronousTestCase):
    """
    L{AddUserOptions.run} with a fake terminal or stdin.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "users")
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()

    def run_(self, *argv, stdin=None, getpass=None):
        """
        Run C{mailproto adduser argv...}.

        @return: the exit status.
        """
        options = _parse(*argv)
        if getpass is None:

            def getpass(prompt):
                raise AssertionError(f"asked {prompt!r}")

        return options.run(None, self.stdout, self.stderr, stdin=stdin, getpass=getpass)

    def assertPassword(self, user, password, path=None):
        """
        The users file has C{user} with C{password}.
        """
        users = UsersFile(path or self.path).read()
        self.assertTrue(checkPassword(password, users[user]), f"{user!r}'s password is not {password!r}")

    def assertFailed(self, status, message):
        """
        The command failed with status 1 and said C{message} in one line,
        and printed nothing on stdout.
        """
        self.assertEqual(status, 1)
        self.assertEqual(self.stdout.getvalue(), "")
        self.assertEqual(self.stderr.getvalue(), f"mailproto adduser: error: {message}\n")

    def test_promptTwice(self):
        """
        On a terminal, the password is asked for twice; when both match,
        the user is added, the file readable by its owner only.
        """
        prompt = _Prompt("s3cret", "s3cret")
        status = self.run_(self.path, "joe", stdin=_Terminal(), getpass=prompt)
        self.assertEqual(status, 0)
        self.assertEqual(prompt.prompts, ["Password for joe: ", "Password for joe again: "])
        self.assertEqual(self.stdout.getvalue(), f"user joe added to {self.path}\n")
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertPassword(b"joe", b"s3cret")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_promptMismatch(self):
        """
        Two different answers: nothing is written, status 1.
        """
        status = self.run_(self.path, "joe", stdin=_Terminal(), getpass=_Prompt("s3cret", "s3cert"))
        self.assertFailed(status, f"the passwords do not match; {self.path} not changed")
        self.assertFalse(os.path.exists(self.path))

    def test_promptEmpty(self):
        """
        An empty answer is refused at once.
        """
        prompt = _Prompt("")
        status = self.run_(self.path, "joe", stdin=_Terminal(), getpass=prompt)
        self.assertFailed(status, f"empty password refused; {self.path} not changed")
        self.assertEqual(len(prompt.prompts), 1)
        self.assertFalse(os.path.exists(self.path))

    def test_promptInterrupted(self):
        """
        Ctrl-D or Ctrl-C at the prompt: nothing is written, one line, no
        traceback.
        """
        for interruption in [EOFError(), KeyboardInterrupt()]:
            self.stderr = io.StringIO()
            status = self.run_(self.path, "joe", stdin=_Terminal(), getpass=_Prompt("s3cret", interruption))
            self.assertFailed(status, f"no password given; {self.path} not changed")
        self.assertFalse(os.path.exists(self.path))

    def test_stdin(self):
        """
        When stdin is not a terminal, the password is its first line,
        without its line end (LF or CRLF); the rest is not read.
        """
        for data in [b"s3cret\n", b"s3cret\r\nsecond line\n", b"s3cret"]:
            pipe = _TextPipe(data)
            self.assertEqual(self.run_(self.path, "joe", stdin=pipe), 0)
            self.assertPassword(b"joe", b"s3cret")
            self.assertLessEqual(pipe.buffer.tell(), len(b"s3cret\r\n"))

    def test_stdinBytesOnly(self):
        """
        A binary stream without C{buffer} is read as it is; a password of
        spaces and 8-bit octets is kept exactly.
        """
        password = " pass wörd ".encode("utf-8")
        self.assertEqual(self.run_(self.path, "joe", stdin=_Pipe(password + b"\n")), 0)
        self.assertPassword(b"joe", password)

    def test_stdinForced(self):
        """
        With C{--stdin}, stdin is read even when it is a terminal, and no
        prompt is shown.
        """

        class Terminal(_TextPipe):
            def isatty(self):
                return True

        self.assertEqual(self.run_("--stdin", self.path, "joe", stdin=Terminal(b"s3cret\n")), 0)
        self.assertPassword(b"joe", b"s3cret")

    def test_stdinEmpty(self):
        """
        An empty first line, or no line at all, is refused.
        """
        for data in [b"", b"\n", b"\r\n", b"\nsecond\n"]:
            self.stderr = io.StringIO()
            status = self.run_(self.path, "joe", stdin=_TextPipe(data))
            self.assertFailed(status, f"empty password refused; {self.path} not changed")
        self.assertFalse(os.path.exists(self.path))

    def test_unusablePasswords(self):
        """
        A password longer than AUTH PLAIN can carry, or with a NUL, is
        refused.
        """
        self.run_(self.path, "joe", stdin=_TextPipe(b"x" * MAX_PASSWORD_LENGTH + b"\n"))
        self.assertPassword(b"joe", b"x" * MAX_PASSWORD_LENGTH)
        self.stdout = io.StringIO()
        status = self.run_(self.path, "joe", stdin=_TextPipe(b"x" * (MAX_PASSWORD_LENGTH + 1) + b"\n"))
        self.assertFailed(
            status, f"the password is longer than 255 octets (the most AUTH PLAIN can carry); {self.path} not changed"
        )
        self.stderr = io.StringIO()
        status = self.run_(self.path, "joe", stdin=_TextPipe(b"a\0b\n"))
        self.assertFailed(
            status, f"the password has a NUL character (AUTH PLAIN cannot carry it); {self.path} not changed"
        )
        self.assertPassword(b"joe", b"x" * MAX_PASSWORD_LENGTH)

    def test_closedStdin(self):
        """
        A closed stdin is said so.
        """
        pipe = _TextPipe(b"s3cret\n")
        pipe.buffer.close()
        status = self.run_(self.path, "joe", stdin=pipe)
        self.assertFailed(
            status, f"cannot read the password from stdin: I/O operation on closed file.; {self.path} not changed"
        )

    def test_change(self):
        """
        For a user already in the file, the password is changed and the
        other users are kept.
        """
        UsersFile(self.path).setPassword(b"ann", b"first")
        UsersFile(self.path).setPassword(b"joe", b"old")
        self.assertEqual(self.run_(self.path, "joe", stdin=_TextPipe(b"new\n")), 0)
        self.assertEqual(self.stdout.getvalue(), f"password of joe changed in {self.path}\n")
        self.assertPassword(b"joe", b"new")
        self.assertPassword(b"ann", b"first")
        self.assertEqual(sorted(UsersFile(self.path).read()), [b"ann", b"joe"])

    def test_nonASCIIUser(self):
        """
        A user name is stored in UTF-8.
        """
        self.assertEqual(self.run_(self.path, "jörg", stdin=_TextPipe(b"s3cret\n")), 0)
        self.assertEqual(self.stdout.getvalue(), f"user jörg added to {self.path}\n")
        self.assertPassword("jörg".encode("utf-8"), b"s3cret")

    def test_noDirectory(self):
        """
        A file in a directory that does not exist: one line, status 1,
        before the password is asked for.
        """
        path = os.path.join(self.directory, "missing", "users")
        status = self.run_(path, "joe", stdin=_Terminal())
        self.assertFailed(status, f"cannot write {path}: no directory {os.path.dirname(path)}")

    def test_unreadable(self):
        """
        A FILE that cannot be read (here, a directory): one line, status 1.
        """
        status = self.run_(self.directory, "joe", stdin=_Terminal())
        self.assertFailed(status, f"cannot read {self.directory}: Is a directory")

    def test_unwritable(self):
        """
        A file that cannot be written: one line, status 1, the file as it
        was.
        """
        UsersFile(self.path).setPassword(b"joe", b"old")

        def mkstemp(prefix, dir):
            raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "1234"))

        self.patch(tempfile, "mkstemp", mkstemp)
        status = self.run_(self.path, "joe", stdin=_TextPipe(b"new\n"))
        self.assertFailed(status, f"cannot write {self.path}: Permission denied")
        self.assertPassword(b"joe", b"old")

    def test_malformedFile(self):
        """
        A users file with a line that is not C{name:hash} is left alone,
        and the line is named.
        """
        with open(self.path, "wb") as f:
            f.write(b"# users\nann:$scrypt$x\nnonsense\n")
        status = self.run_(self.path, "joe", stdin=_Terminal())
        self.assertFailed(status, f"{self.path}, line 3: expected NAME:$scrypt$...; nothing changed")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"# users\nann:$scrypt$x\nnonsense\n")


class CommandTests(TestCase):
    """
    The real command, C{python -m mailproto adduser}, in a subprocess.
    """

    timeout = 60

    def mailproto(self, *argv, stdin=b""):
        pythonPath = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        return getProcessOutputAndValue(
            sys.executable,
            ["-m", "mailproto", *argv],
            env=dict(os.environ, PYTHONPATH=pythonPath),
            stdinBytes=stdin,
        )

    @defer.inlineCallbacks
    def test_addThenCheck(self):
        """
        The password on stdin (a pipe): the command says the user was
        added, and L{UsersFileChecker} then accepts joe with it and refuses
        another password.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "users")
        out, err, code = yield self.mailproto("adduser", path, "joe", stdin=b"s3cret\n")
        self.assertEqual((out, err, code), (f"user joe added to {path}\n".encode(), b"", 0))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        checker = UsersFileChecker(path)
        avatarId = yield checker.requestAvatarId(UsernamePassword(b"joe", b"s3cret"))
        self.assertEqual(avatarId, b"joe")
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"joe", b"s3cret\n")), UnauthorizedLogin)
        out, err, code = yield self.mailproto("adduser", path, "joe", stdin=b"n3w\n")
        self.assertEqual((out, err, code), (f"password of joe changed in {path}\n".encode(), b"", 0))
        avatarId = yield checker.requestAvatarId(UsernamePassword(b"joe", b"n3w"))
        self.assertEqual(avatarId, b"joe")
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"joe", b"s3cret")), UnauthorizedLogin)

    @defer.inlineCallbacks
    def test_errors(self):
        """
        A usage error exits with 2, an empty password or a missing
        directory with 1: one line on stderr each, no traceback.
        """
        path = os.path.join(os.path.abspath(self.mktemp()), "users")
        out, err, code = yield self.mailproto("adduser", path)
        self.assertEqual(code, 2)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertTrue(err.startswith(b"mailproto adduser: error: expected a users FILE and a USER name"), err)
        out, err, code = yield self.mailproto("adduser", path, "joe", stdin=b"s3cret\n")
        self.assertEqual(
            (out, err, code),
            (b"", f"mailproto adduser: error: cannot write {path}: no directory {os.path.dirname(path)}\n".encode(), 1),
        )
        os.makedirs(os.path.dirname(path))
        out, err, code = yield self.mailproto("adduser", path, "joe", stdin=b"\n")
        message = f"mailproto adduser: error: empty password refused; {path} not changed\n"
        self.assertEqual((out, err, code), (b"", message.encode(), 1))
        self.assertFalse(os.path.exists(path))
