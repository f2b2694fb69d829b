# -*- test-case-name: mailproto.test.test_cred -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The users file and its checker (L{mailproto._cred}), and the loading of a
server's TLS certificate (L{mailproto._tls.loadServerOptions}).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import re
import stat

import trustme
from OpenSSL import crypto
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._cred import (
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    PLAINCredentials,
    UsersFile,
    UsersFileChecker,
    checkPassword,
    hashPassword,
)
from mailproto._tls import loadServerOptions

#: A cheap scrypt cost, for speed.
FAST_N = 2**10

_HASH_RE = re.compile(r"\$scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


def fastHash(password: bytes) -> str:
    return hashPassword(password, n=FAST_N)


def writeUsers(path: str, users: dict[bytes, bytes], extra: bytes = b"") -> None:
    """
    Write a users file with cheap hashes.
    """
    with open(path, "wb") as f:
        f.write(extra)
        for name, password in users.items():
            f.write(name + b":" + fastHash(password).encode("ascii") + b"\n")


class HashTests(SynchronousTestCase):
    """
    L{hashPassword} and L{checkPassword}.
    """

    def test_roundTrip(self):
        """
        A password matches its own hash.
        """
        self.assertTrue(checkPassword(b"correct horse", fastHash(b"correct horse")))

    def test_wrongPassword(self):
        """
        Another password does not match, nor does the empty one.
        """
        stored = fastHash(b"correct horse")
        self.assertFalse(checkPassword(b"correct hors", stored))
        self.assertFalse(checkPassword(b"correct horse ", stored))
        self.assertFalse(checkPassword(b"", stored))

    def test_format(self):
        """
        The hash is C{$scrypt$n=N,r=R,p=P$SALT$KEY}: 16 octets of salt and
        32 of key, in base64.
        """
        stored = hashPassword(b"pw", n=FAST_N, r=4, p=2)
        match = _HASH_RE.fullmatch(stored)
        self.assertIsNotNone(match, stored)
        self.assertEqual(match.group(1, 2, 3), ("1024", "4", "2"))
        self.assertEqual(len(base64.b64decode(match.group(4))), 16)
        self.assertEqual(len(base64.b64decode(match.group(5))), 32)

    def test_scrypt(self):
        """
        The key is scrypt's, for the salt and parameters in the hash.
        """
        salt = bytes(range(16))
        stored = hashPassword(b"pw", salt=salt, n=FAST_N)
        expected = hashlib.scrypt(b"pw", salt=salt, n=FAST_N, r=8, p=1, dklen=32)
        self.assertEqual(
            stored,
            "$scrypt$n=1024,r=8,p=1$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(expected).decode(),
        )

    def test_defaultCost(self):
        """
        By default the cost is n=2**14, r=8, p=1.
        """
        self.assertEqual((SCRYPT_N, SCRYPT_R, SCRYPT_P), (2**14, 8, 1))
        stored = hashPassword(b"pw")
        self.assertTrue(stored.startswith("$scrypt$n=16384,r=8,p=1$"), stored)
        self.assertTrue(checkPassword(b"pw", stored))

    def test_salted(self):
        """
        Each hash has its own random salt: the same password hashes
        differently each time.
        """
        first, second = fastHash(b"pw"), fastHash(b"pw")
        self.assertNotEqual(first, second)
        self.assertTrue(checkPassword(b"pw", first))
        self.assertTrue(checkPassword(b"pw", second))

    def test_malformed(self):
        """
        A malformed hash matches nothing, the empty password included, and
        raises nothing.
        """
        good = fastHash(b"pw")
        _, _, params, salt, key = good.split("$")
        for stored in [
            "",
            "pw",
            "$scrypt$",
            good + "$",
            good.replace("$scrypt$", "$bcrypt$"),
            good.replace("n=1024", "n=abc"),
            good.replace("n=1024,", ""),
            good.replace("n=1024", "n=1000"),  # not a power of 2
            good.replace("n=1024", "n=2097152"),  # too costly
            good.replace("r=8", "r=0"),
            good.replace("p=1", "p=100"),
            good.replace("n=1024", "n=1024=5"),
            f"$scrypt${params}${salt}$",
            f"$scrypt${params}${salt}$!!!!",
            f"$scrypt${params}$A$" + key,
        ]:
            for password in (b"pw", b""):
                self.assertFalse(checkPassword(password, stored), stored)


class UsersFileTests(SynchronousTestCase):
    """
    L{UsersFile}: reading and writing.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "users")

    def test_missing(self):
        """
        A missing file has no users.
        """
        self.assertEqual(UsersFile(self.path).read(), {})

    def test_setAndRead(self):
        """
        A password set is read back as a hash it matches; other users are
        kept, and setting again changes it.
        """
        users = UsersFile(self.path)
        users.setPassword(b"alice", b"pw-a")
        users.setPassword(b"bob", b"pw-b")
        read = users.read()
        self.assertEqual(sorted(read), [b"alice", b"bob"])
        self.assertTrue(checkPassword(b"pw-a", read[b"alice"]))
        self.assertTrue(checkPassword(b"pw-b", read[b"bob"]))
        users.setPassword(b"alice", b"new")
        read = UsersFile(self.path).read()
        self.assertTrue(checkPassword(b"new", read[b"alice"]))
        self.assertFalse(checkPassword(b"pw-a", read[b"alice"]))
        self.assertTrue(checkPassword(b"pw-b", read[b"bob"]))

    def test_fileFormat(self):
        """
        The file has one C{name:hash} line per user, and no password.
        """
        UsersFile(self.path).setPassword(b"alice", b"secret-pw")
        with open(self.path, "rb") as f:
            content = f.read()
        self.assertRegex(content, rb"\Aalice:\$scrypt\$n=16384,r=8,p=1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+\n\Z")
        self.assertNotIn(b"secret-pw", content)

    def test_mode(self):
        """
        The file is readable and writable by its owner only, even when it
        was not before.
        """
        with open(self.path, "wb") as f:
            f.write(b"")
        os.chmod(self.path, 0o644)
        UsersFile(self.path).setPassword(b"alice", b"pw")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_atomicReplace(self):
        """
        The file is replaced, not rewritten in place: a reader that opened
        the old one still reads it whole, and no temporary file is left.
        """
        writeUsers(self.path, {b"alice": b"old"})
        with open(self.path, "rb") as old:
            UsersFile(self.path).setPassword(b"bob", b"pw")
            self.assertEqual(old.read().count(b"\n"), 1)
        self.assertEqual(sorted(os.listdir(self.directory)), ["users"])
        self.assertEqual(sorted(UsersFile(self.path).read()), [b"alice", b"bob"])

    def test_failedWrite(self):
        """
        If the new file cannot be put in place, the old one is untouched
        and the temporary file is removed.
        """
        writeUsers(self.path, {b"alice": b"old"})
        with open(self.path, "rb") as f:
            before = f.read()

        def replace(source, destination):
            raise OSError("disk on fire")

        self.patch(os, "replace", replace)
        self.assertRaises(OSError, UsersFile(self.path).setPassword, b"bob", b"pw")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(os.listdir(self.directory), ["users"])

    def test_comments(self):
        """
        Empty lines and lines starting with C{#} are ignored.
        """
        stored = fastHash(b"pw")
        with open(self.path, "wb") as f:
            f.write(b"# users\n\n   \nalice:" + stored.encode() + b"\r\n#bob:" + stored.encode() + b"\n")
        self.assertEqual(UsersFile(self.path).read(), {b"alice": stored})

    def test_malformedLine(self):
        """
        A malformed line is a L{ValueError} naming the file and the line.
        """
        stored = fastHash(b"pw").encode()
        for bad in (b"bob", b"bob:", b":" + stored, b"bob:plaintext-password", b"bob $scrypt$"):
            with open(self.path, "wb") as f:
                f.write(b"# users\nalice:" + stored + b"\n" + bad + b"\n")
            e = self.assertRaises(ValueError, UsersFile(self.path).read)
            self.assertIn("line 3", str(e))
            self.assertIn(self.path, str(e))

    def test_badUserNames(self):
        """
        A user name with a colon, a line end or NUL, or an empty one, is
        refused, and the file is not touched.
        """
        users = UsersFile(self.path)
        for name in (b"", b"a:b", b"a\nb", b"a\rb", b"a\0b"):
            self.assertRaises(ValueError, users.setPassword, name, b"pw")
        self.assertFalse(os.path.exists(self.path))

    def test_passwordWithColon(self):
        """
        A password may have any octet, colons included.
        """
        UsersFile(self.path).setPassword(b"alice", b"a:b\nc\0d")
        self.assertTrue(checkPassword(b"a:b\nc\0d", UsersFile(self.path).read()[b"alice"]))


class UsersFileCheckerTests(TestCase):
    """
    L{UsersFileChecker}, hashing in a thread pool of its own.
    """

    def setUp(self):
        self.path = self.mktemp()
        writeUsers(self.path, {b"alice": b"pw-alice", b"bob": b"pw-bob"})
        self.checker = UsersFileChecker(self.path)
        self.addCleanup(self.checker.stop)

    @defer.inlineCallbacks
    def test_ownThreadPool(self):
        """
        Passwords are hashed in the checker's own pool, of L{threads}
        threads, not in the reactor's: work queued there (the spool's
        commits) never waits behind a hash.
        """
        from twisted.internet import reactor

        import mailproto._cred as cred

        seen = []
        original = cred._check

        def check(password, stored):
            seen.append(threading.current_thread())
            return original(password, stored)

        self.patch(cred, "_check", check)
        checker = UsersFileChecker(self.path, reactor=reactor, threads=3)
        self.addCleanup(checker.stop)
        yield defer.gatherResults(
            [checker.requestAvatarId(UsernamePassword(b"alice", b"pw-alice")) for _ in range(4)]
        )
        pool = checker.threadPool()
        self.assertEqual(pool.max, 3)
        self.assertEqual(len(seen), 4)
        for thread in seen:
            self.assertIn(thread, pool.threads)
            self.assertNotIn(thread, reactor.getThreadPool().threads)
            self.assertTrue(thread.daemon)

    @defer.inlineCallbacks
    def test_stop(self):
        """
        L{UsersFileChecker.stop} stops the pool and takes back its
        shutdown trigger; the next check starts a new pool.
        """
        from twisted.internet import reactor

        checker = UsersFileChecker(self.path, reactor=reactor)
        self.addCleanup(checker.stop)
        self.assertEqual((yield checker.requestAvatarId(UsernamePassword(b"bob", b"pw-bob"))), b"bob")
        first = checker.threadPool()
        checker.stop()
        self.assertFalse(first.started)
        checker.stop()
        self.assertEqual((yield checker.requestAvatarId(UsernamePassword(b"bob", b"pw-bob"))), b"bob")
        self.assertIsNot(checker.threadPool(), first)
        self.assertTrue(checker.threadPool().started)

    def test_rightPassword(self):
        """
        The right password gives the user name as avatar ID.
        """
        d = self.checker.requestAvatarId(UsernamePassword(b"alice", b"pw-alice"))
        return d.addCallback(self.assertEqual, b"alice")

    def test_strCredentials(self):
        """
        A user name and password given as text are encoded as UTF-8.
        """
        writeUsers(self.path, {"zoë".encode(): "pässwörd".encode()})
        d = self.checker.requestAvatarId(UsernamePassword("zoë", "pässwörd"))
        return d.addCallback(self.assertEqual, "zoë".encode())

    def test_plainCredentials(self):
        """
        The credentials of a PLAIN exchange are checked.
        """
        creds = PLAINCredentials()
        creds.setResponse(b"\0bob\0pw-bob")
        return self.checker.requestAvatarId(creds).addCallback(self.assertEqual, b"bob")

    def test_wrongPassword(self):
        """
        A wrong password fails with L{UnauthorizedLogin}.
        """
        d = self.checker.requestAvatarId(UsernamePassword(b"alice", b"pw-bob"))
        return self.assertFailure(d, UnauthorizedLogin)

    def test_unknownUser(self):
        """
        An unknown user fails with L{UnauthorizedLogin}.
        """
        d = self.checker.requestAvatarId(UsernamePassword(b"carol", b"pw-alice"))
        return self.assertFailure(d, UnauthorizedLogin)

    def test_missingFile(self):
        """
        Without a users file nobody logs in.
        """
        checker = UsersFileChecker(self.path + ".missing")
        return self.assertFailure(checker.requestAvatarId(UsernamePassword(b"alice", b"pw-alice")), UnauthorizedLogin)

    def test_malformedFile(self):
        """
        A malformed users file fails every login with L{UnauthorizedLogin}.
        """
        with open(self.path, "ab") as f:
            f.write(b"garbage\n")
        d = self.checker.requestAvatarId(UsernamePassword(b"alice", b"pw-alice"))
        return self.assertFailure(d, UnauthorizedLogin)

    @defer.inlineCallbacks
    def test_reread(self):
        """
        A change of the file is seen by the next check.
        """
        self.assertEqual((yield self.checker.requestAvatarId(UsernamePassword(b"alice", b"pw-alice"))), b"alice")
        before = os.stat(self.path)
        writeUsers(self.path, {b"alice": b"changed", b"carol": b"pw-carol"})
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        self.assertEqual((yield self.checker.requestAvatarId(UsernamePassword(b"carol", b"pw-carol"))), b"carol")
        with self.assertRaises(UnauthorizedLogin):
            yield self.checker.requestAvatarId(UsernamePassword(b"alice", b"pw-alice"))

    @defer.inlineCallbacks
    def test_rereadSameMtime(self):
        """
        A file replaced by another (as L{UsersFile.setPassword} does) is
        seen even if its modification time is the same, as it is when both
        fall in one tick of the file system's clock.
        """
        self.assertEqual((yield self.checker.requestAvatarId(UsernamePassword(b"alice", b"pw-alice"))), b"alice")
        before = os.stat(self.path)
        replacement = self.path + ".new"
        writeUsers(replacement, {b"alice": b"changed"})
        os.replace(replacement, self.path)
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        with self.assertRaises(UnauthorizedLogin):
            yield self.checker.requestAvatarId(UsernamePassword(b"alice", b"pw-alice"))

    @defer.inlineCallbacks
    def test_cached(self):
        """
        An unchanged file is read once.
        """
        reads = []
        original = self.checker.usersFile.read

        def read():
            reads.append(None)
            return original()

        self.checker.usersFile.read = read
        for i in range(3):
            self.assertEqual((yield self.checker.requestAvatarId(UsernamePassword(b"bob", b"pw-bob"))), b"bob")
        self.assertEqual(len(reads), 1)


class LoadServerOptionsTests(SynchronousTestCase):
    """
    L{loadServerOptions}: a certificate, its chain and its key from PEM
    files.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.ca = trustme.CA()

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write(self, name: str, *blobs) -> str:
        path = self.path(name)
        with open(path, "wb") as f:
            for blob in blobs:
                f.write(blob.bytes())
        return path

    def assertCertificate(self, options, cert):
        """
        C{options} have the leaf certificate and the key of C{cert}.
        """
        leaf = crypto.load_certificate(crypto.FILETYPE_PEM, cert.cert_chain_pems[0].bytes())
        self.assertEqual(options.certificate.digest("sha256"), leaf.digest("sha256"))
        self.assertEqual(
            crypto.dump_publickey(crypto.FILETYPE_PEM, options.privateKey),
            crypto.dump_publickey(crypto.FILETYPE_PEM, leaf.get_pubkey()),
        )

    def test_oneFile(self):
        """
        The key and the certificate in one file.
        """
        cert = self.ca.issue_cert("mx.example")
        options = loadServerOptions(self.write("both.pem", cert.private_key_and_cert_chain_pem))
        self.assertCertificate(options, cert)
        self.assertEqual(options.extraCertChain, [])
        options.getContext()

    def test_oneFileCertificateFirst(self):
        """
        The certificate may come before the key.
        """
        cert = self.ca.issue_cert("mx.example")
        options = loadServerOptions(self.write("both.pem", cert.cert_chain_pems[0], cert.private_key_pem))
        self.assertCertificate(options, cert)

    def test_separateKey(self):
        """
        The key in a file of its own.
        """
        cert = self.ca.issue_cert("mx.example")
        options = loadServerOptions(
            self.write("cert.pem", cert.cert_chain_pems[0]), self.write("key.pem", cert.private_key_pem)
        )
        self.assertCertificate(options, cert)

    def test_chain(self):
        """
        Intermediate certificates after the leaf are kept, in order, as the
        chain sent to clients.
        """
        intermediate = self.ca.create_child_ca()
        cert = intermediate.issue_cert("mx.example")
        self.assertEqual(len(cert.cert_chain_pems), 2)
        options = loadServerOptions(
            self.write("chain.pem", *cert.cert_chain_pems), self.write("key.pem", cert.private_key_pem)
        )
        self.assertCertificate(options, cert)
        expected = crypto.load_certificate(crypto.FILETYPE_PEM, intermediate.cert_pem.bytes())
        self.assertEqual([c.digest("sha256") for c in options.extraCertChain], [expected.digest("sha256")])
        options.getContext()

    def test_longerChain(self):
        """
        Several intermediates are all kept, in order.
        """
        first = self.ca.create_child_ca()
        second = first.create_child_ca()
        cert = second.issue_cert("mx.example")
        options = loadServerOptions(self.write("all.pem", cert.private_key_and_cert_chain_pem))
        self.assertCertificate(options, cert)
        expected = [
            crypto.load_certificate(crypto.FILETYPE_PEM, ca.cert_pem.bytes()).digest("sha256") for ca in (second, first)
        ]
        self.assertEqual([c.digest("sha256") for c in options.extraCertChain], expected)

    def test_wrongKey(self):
        """
        A key that is not the certificate's: L{ValueError}.
        """
        cert = self.ca.issue_cert("mx.example")
        other = self.ca.issue_cert("other.example")
        certificate = self.write("cert.pem", cert.cert_chain_pems[0])
        e = self.assertRaises(ValueError, loadServerOptions, certificate, self.write("key.pem", other.private_key_pem))
        self.assertIn(certificate, str(e))

    def test_noKey(self):
        """
        A certificate without a key: L{ValueError}.
        """
        cert = self.ca.issue_cert("mx.example")
        self.assertRaises(ValueError, loadServerOptions, self.write("cert.pem", cert.cert_chain_pems[0]))

    def test_notPEM(self):
        """
        A file that is not PEM: L{ValueError}.
        """
        path = self.path("junk.pem")
        with open(path, "wb") as f:
            f.write(b"not a certificate\n")
        self.assertRaises(ValueError, loadServerOptions, path)

    def test_missingFile(self):
        """
        A certificate or key file that cannot be read: L{OSError}.
        """
        cert = self.ca.issue_cert("mx.example")
        self.assertRaises(OSError, loadServerOptions, self.path("missing.pem"))
        certificate = self.write("cert.pem", cert.cert_chain_pems[0])
        self.assertRaises(OSError, loadServerOptions, certificate, self.path("missing-key.pem"))
