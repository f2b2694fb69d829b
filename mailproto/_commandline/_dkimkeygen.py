# -*- test-case-name: mailproto.test.test_dkim -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{mailproto dkim-keygen}: make a DKIM key for the relay to sign with
(L{mailproto._dkim}), and print the DNS record that publishes its public
key.
"""

from __future__ import annotations

import os

from twisted.python import usage

from mailproto._dkim import ED25519_SHA256, RECOMMENDED_RSA_BITS, RSA_SHA256, generateKey

#: The algorithms by their names on the command line.
ALGORITHMS = {"rsa": RSA_SHA256, "ed25519": ED25519_SHA256}


class DKIMKeygenOptions(usage.Options):
    """
    The options of C{mailproto dkim-keygen}.
    """

    synopsis = "--domain DOMAIN --selector SELECTOR --out KEYFILE [--algorithm rsa|ed25519] [--bits N]"
    longdesc = (
        "Make a private key for DKIM signatures and write it to KEYFILE (PKCS#8 PEM, readable by its owner "
        "only; an existing file is never replaced), then print on stdout the DNS TXT record to publish at "
        "SELECTOR._domainkey.DOMAIN, as a zone file line.  Give the relay the key with "
        "--dkim-key DOMAIN:SELECTOR:KEYFILE.  "
        "Examples: mailproto dkim-keygen --domain example.org --selector mail --out example.org.key;  "
        "mailproto dkim-keygen --domain example.org --selector ed --algorithm ed25519 --out example.org.ed.key"
    )

    optParameters = [
        ["domain", "d", None, "The signing domain (d=), that of the From: addresses it signs for (required)."],
        ["selector", "s", None, "The selector (s=): the name of this key under DOMAIN (required), such as mail or 2026a."],
        ["out", "o", None, "The file to write the private key to (required; made with mode 0600)."],
        ["algorithm", "a", "rsa", "rsa (understood by every verifier) or ed25519 (RFC 8463; sign with both for the best of each)."],
        ["bits", "b", None, f"The size of an RSA key, 1024 to 4096 [default: {RECOMMENDED_RSA_BITS}]."],
    ]

    compData = usage.Completions(
        optActions={"out": usage.CompleteFiles(descr="key file"), "algorithm": usage.CompleteList(list(ALGORITHMS))}
    )

    def getSynopsis(self) -> str:
        return f"Usage: mailproto {self.parent.subCommand} {self.synopsis}"

    def opt_version(self) -> None:
        """
        Print the version of mailproto and exit.
        """
        from mailproto._commandline._cli import _printVersion

        _printVersion()

    def postOptions(self) -> None:
        for name in ("domain", "selector", "out"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")
        algorithm = self["algorithm"].lower()
        if algorithm not in ALGORITHMS:
            raise usage.UsageError(f"--algorithm: not rsa or ed25519: {self['algorithm']!r}")
        self["algorithm"] = algorithm
        if self["bits"] is not None:
            if algorithm != "rsa":
                raise usage.UsageError("--bits is for RSA keys only")
            try:
                self["bits"] = int(self["bits"])
            except ValueError:
                raise usage.UsageError(f"--bits: not a whole number: {self['bits']!r}") from None
            if not 1024 <= self["bits"] <= 4096:
                raise usage.UsageError(f"--bits: not a size from 1024 to 4096: {self['bits']}")
        else:
            self["bits"] = RECOMMENDED_RSA_BITS

    def run(self, reactor, stdout, stderr) -> int:
        """
        Make the key, write it, print its record.

        @param reactor: unused.
        @return: C{0} when done, C{1} if the key could not be made or
            written (nothing is left behind then).
        """

        def fail(text: str) -> int:
            stderr.write(f"mailproto dkim-keygen: error: {text}\n")
            stderr.flush()
            return 1

        path = self["out"]
        if os.path.lexists(path):
            return fail(f"{path} exists; not replacing it (remove it, or choose another --out)")
        try:
            key = generateKey(self["domain"], self["selector"], ALGORITHMS[self["algorithm"]], self["bits"])
        except ValueError as e:
            return fail(str(e))
        try:
            _writePrivate(path, key.privateKeyPEM())
        except OSError as e:
            return fail(f"cannot write {path}: {e.strerror or e}")
        if key.algorithm == RSA_SHA256 and key.bits < RECOMMENDED_RSA_BITS:
            stderr.write(f"mailproto dkim-keygen: warning: {key.bits}-bit RSA keys are weak; {RECOMMENDED_RSA_BITS} bits are recommended\n")
        stderr.write(
            f"mailproto dkim-keygen: wrote the private key to {path}; publish this record, then give the relay "
            f"--dkim-key {key.domain}:{key.selector}:{os.path.abspath(path)}\n"
        )
        stderr.flush()
        stdout.write(key.zoneLine() + "\n")
        stdout.flush()
        return 0


def _writePrivate(path: str, data: bytes) -> None:
    """
    Write a new file only its owner can read.

    @raise OSError: if it exists or cannot be written (it is then
        removed).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
