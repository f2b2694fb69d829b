# -*- test-case-name: mailproto.test.test_cred -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The server side of SMTP AUTH with C{twisted.cred}: the SASL exchanges the
server runs (L{PLAINCredentials}, L{LOGINCredentials}; CRAM-MD5 is
C{twisted.cred.credentials.CramMD5Credentials}), and a users file with
scrypt-hashed passwords (L{UsersFile}, L{UsersFileChecker}).

A users file has one line per user, C{name:hash}, where the hash is
C{$scrypt$n=16384,r=8,p=1$SALT$KEY} (salt and key in base64).  Lines that
are empty or start with C{#} are ignored.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
import tempfile
import threading

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailproto.interfaces import IChallengeResponse


@implementer(IChallengeResponse, credentials.IUsernamePassword)
class PLAINCredentials(credentials.UsernamePassword):
    """
    PLAIN (RFC 4616): one response, C{authzid NUL authcid NUL password}.

    @ivar authzid: the identity the client asks to act as (empty for
        itself).  Logins asking for another identity fail.
    """

    def __init__(self) -> None:
        credentials.UsernamePassword.__init__(self, None, None)
        self.authzid = b""
        self._answered = False

    def getChallenge(self) -> bytes:
        return b""

    def setResponse(self, response: bytes) -> None:
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1] or any(len(p) > 255 for p in parts):
            raise error.UnauthorizedLogin("Malformed PLAIN response")
        self.authzid, self.username, self.password = parts
        if self.authzid and self.authzid != self.username:
            raise error.UnauthorizedLogin("Acting as another user is not allowed")
        self._answered = True

    def moreChallenges(self) -> bool:
        return not self._answered


@implementer(IChallengeResponse, credentials.IUsernamePassword)
class LOGINCredentials(credentials.UsernamePassword):
    """
    LOGIN: the server asks C{Username:}, then C{Password:}.
    """

    def __init__(self) -> None:
        credentials.UsernamePassword.__init__(self, None, None)
        self.challenges = [b"Password:", b"Username:"]
        self._responses = 0

    def getChallenge(self) -> bytes:
        return self.challenges.pop()

    def setResponse(self, response: bytes) -> None:
        if self._responses == 0:
            self.username = response
        else:
            self.password = response
        self._responses += 1

    def moreChallenges(self) -> bool:
        return self._responses < 2


# -- the users file -----------------------------------------------------------

#: scrypt's cost: 16 MiB of memory and about 50 ms of CPU per hash.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_KEY_LENGTH = 32


def hashPassword(password: bytes, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """
    @param password: the password.
    @param salt: 16 random octets if C{None}.
    @return: the password's hash as stored in a users file.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    key = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=_KEY_LENGTH, maxmem=128 * n * r * 2)
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    return f"$scrypt$n={n},r={r},p={p}${b64(salt)}${b64(key)}"


def checkPassword(password: bytes, stored: str) -> bool:
    """
    @param password: the password given.
    @param stored: a hash from L{hashPassword}.
    @return: whether they match.  A malformed hash matches nothing.
    """
    try:
        _, scheme, params, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        values = dict(item.split("=") for item in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        salt, key = base64.b64decode(salt), base64.b64decode(key)
        if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        actual = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=128 * n * r * 2)
    except (ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(actual, key)


@functools.lru_cache(maxsize=1)
def _dummyHash() -> str:
    return hashPassword(b"", salt=b"\0" * 16)


def _check(password: bytes, stored: str | None) -> bool:
    """
    Check a password in a thread.  Unknown users cost a hash too, so that
    timing does not tell who exists.
    """
    if stored is None:
        checkPassword(password, _dummyHash())
        return False
    return checkPassword(password, stored)


class UsersFile:
    """
    A file of user names and password hashes.

    @ivar path: the file's path.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> dict[bytes, str]:
        """
        @return: each user's hash, by user name.  A missing file has no
            users.
        @raise ValueError: for a malformed line (with its number).
        """
        users = {}
        try:
            with open(self.path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return users
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith(b"#"):
                continue
            name, sep, stored = line.partition(b":")
            if not sep or not name or not stored.startswith(b"$scrypt$"):
                raise ValueError(f"{self.path}, line {number}: expected NAME:$scrypt$...")
            users[name] = stored.decode("ascii")
        return users

    def setPassword(self, user: bytes, password: bytes) -> None:
        """
        Add a user, or change its password.  The file is replaced
        atomically and readable by its owner only.

        @raise ValueError: if the user name has a colon or a line end.
        """
        if not user or any(c in user for c in b":\r\n\0"):
            raise ValueError("a user name cannot be empty or have ':', NUL or a line end")
        users = self.read()
        users[user] = hashPassword(password)
        text = b"".join(name + b":" + stored.encode("ascii") + b"\n" for name, stored in sorted(users.items()))
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temporary = tempfile.mkstemp(prefix=".users-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


class _HashingPool(ThreadPool):
    """
    A thread pool whose threads do not keep the process alive: hashing a
    password leaves nothing to finish.
    """

    threadFactory = staticmethod(functools.partial(threading.Thread, daemon=True))


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """
    Checks user names and passwords against a L{UsersFile}, read afresh
    when it changes.  Hashing runs in a thread pool of the checker's own,
    so the reactor never waits for it, and neither does work queued on
    the reactor's thread pool (the spool's commits): a burst of logins
    uses at most L{threads} threads, and waits its turn in their queue.

    @ivar threads: how many passwords are hashed at once, at most.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)
    threads = 2

    def __init__(self, path: str, reactor=None, threads: int | None = None) -> None:
        """
        @param path: the users file.
        @param reactor: the reactor the results are given back in; the
            global one if C{None}.  The checker's pool starts with its
            first check and stops when this reactor stops, or at L{stop}.
        @param threads: see L{threads}.
        """
        self.usersFile = UsersFile(path)
        self._reactor = reactor
        self._cache = (None, {})
        self._pool = None
        self._trigger = None
        if threads is not None:
            self.threads = threads

    def _getReactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            return reactor
        return self._reactor

    def threadPool(self) -> ThreadPool:
        """
        @return: the pool that hashes, started if it was not.
        """
        if self._pool is None:
            self._pool = _HashingPool(0, self.threads, name="mailproto-password-hashing")
            self._pool.start()
            self._trigger = self._getReactor().addSystemEventTrigger("during", "shutdown", self.stop)
        return self._pool

    def stop(self) -> None:
        """
        Stop the pool, after the checks already queued; the next check
        starts a new one.
        """
        pool, self._pool = self._pool, None
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            try:
                self._getReactor().removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                # Already fired: the reactor is shutting down now.
                pass
        if pool is not None:
            pool.stop()

    def _users(self) -> dict[bytes, str]:
        try:
            info = os.stat(self.usersFile.path)
            stamp = (info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._cache[0]:
            self._cache = (stamp, self.usersFile.read())
        return self._cache[1]

    def requestAvatarId(self, creds):
        username, password = creds.username, creds.password
        if isinstance(username, str):
            username = username.encode("utf-8")
        if isinstance(password, str):
            password = password.encode("utf-8")
        try:
            stored = self._users().get(username)
        except ValueError as e:
            return defer.fail(error.UnauthorizedLogin(str(e)))
        checked = threads.deferToThreadPool(self._getReactor(), self.threadPool(), _check, password, stored)

        def decide(ok: bool):
            if ok and stored is not None:
                return username
            raise error.UnauthorizedLogin("Bad user name or password")

        return checked.addCallback(decide)
