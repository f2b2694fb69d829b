# Copyright (c) mailproto authors. See LICENSE for details.
"""
The programs and libraries nobody here wrote that the interoperability
tests run against (Postfix, swaks, msmtp, HAProxy, aiosmtpd, aiosmtplib,
trustme), and what a test does when one is missing.

By default a test whose peer is missing skips itself, so that the suite
runs anywhere.  C{.ci/test} installs every peer first and then sets
C{MAILPROTO_REQUIRE_PEERS=1}: a missing peer is then a failure, never a
quiet skip, so that an install step missing from C{.ci/test} shows on the
machine where it is missing.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

from twisted.trial.unittest import FailTest, SkipTest

#: Where programs are looked for: C{PATH}, and the directories Debian
#: puts daemons in, which are not on every user's C{PATH}.
SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", os.defpath), "/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/lib/postfix/sbin"]
)


def required() -> bool:
    """
    @return: whether every peer must be there (C{MAILPROTO_REQUIRE_PEERS}
        is set to anything but C{""} or C{"0"}).
    """
    return os.environ.get("MAILPROTO_REQUIRE_PEERS", "") not in ("", "0")


def missing(what: str) -> NoReturn:
    """
    A peer a test needs is not there: skip the test, or fail it when peers
    are required.

    @param what: what is missing, as a sentence, such as
        C{"swaks is not installed"}.
    @raise SkipTest: when peers are not required.
    @raise FailTest: when they are.
    """
    if required():
        raise FailTest(f"{what} (MAILPROTO_REQUIRE_PEERS is set: .ci/test should have installed it)")
    raise SkipTest(what)


def tool(name: str) -> str:
    """
    @param name: a program's name, such as C{"smtp-sink"}.
    @return: the path of the installed program.
    @raise SkipTest: if it is not installed (L{FailTest} when peers are
        required).
    """
    path = shutil.which(name, path=SEARCH_PATH)
    if path is None:
        missing(f"{name} is not installed (looked in PATH, /usr/sbin and /usr/lib/postfix/sbin)")
    return path


def which(name: str) -> str | None:
    """
    @param name: a program's name.
    @return: the path of the installed program, or C{None}.
    """
    return shutil.which(name, path=SEARCH_PATH)


def need(module, name: str) -> None:
    """
    Check that an optional Python library a test needs was imported.

    @param module: the module, or C{None} when its import failed.
    @param name: its name, for the message.
    @raise SkipTest: if C{module} is C{None} (L{FailTest} when peers are
        required).
    """
    if module is None:
        missing(f"{name} is not installed")


def unprivilegedUser():
    """
    @return: the C{pwd} entry of a user that programs started as root
        (smtp-sink) may drop to: C{nobody}, or else C{postfix}, which the
        Postfix package makes.
    @raise SkipTest: if neither exists (L{FailTest} when peers are
        required).
    """
    import pwd

    for name in ("nobody", "postfix"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    missing("neither user nobody nor user postfix exists")
