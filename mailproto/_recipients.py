# -*- test-case-name: mailproto.test.test_recipients -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The valid recipients of the relay's inbound domains, as Postfix's
C{relay_recipient_maps}: a recipient of a relay domain that is not listed
is refused at RCPT (C{550 5.1.1}), so that the relay never accepts mail it
would have to return to a sender that may well be forged.

A recipients file has one entry per line::

    # the people of inbound.test
    ann@inbound.test
    bob@inbound.test     # comments may follow an entry
    @lists.inbound.test  # anyone at this domain

An entry is an address (C{local@domain}; a local part may be quoted as on
the wire, C{"john smith"@inbound.test}) or C{@domain}, which accepts every
recipient of that domain.  Empty lines are ignored, and so is a C{#} and
what follows it when it begins the line or follows a space.

Domains are compared without regard to case (and as their IDNA A-labels:
C{bücher.test} and C{xn--bcher-kva.test} are the same).  Local parts are
compared without regard to the case of ASCII letters, as Postfix's lookup
tables do: C{Ann@inbound.test} matches the entry C{ann@inbound.test}.  A
quoted local part is compared by its value: C{"ann"@inbound.test} is
C{ann@inbound.test}.

L{RecipientsFile} reads the file once at start (an unreadable or malformed
file is an error then, naming the line), and again whenever it changes:
on use, at most once every L{RecipientsFile.checkInterval} seconds, it
looks at the file's size, modification time and inode (one C{stat}), and
reads it only if one of those changed.  If it cannot be read then, or is
malformed, the last good list stays in use and the problem is logged once.
"""

from __future__ import annotations

import os
import time

from twisted.logger import Logger

from mailproto._address import Address
from mailproto._errors import AddressError
from mailproto._grammar import dequote, isDomain

_log = Logger(namespace="mailproto.relay")


class RecipientsFileError(ValueError):
    """
    A line of a recipients file is not an entry.

    @ivar lineNumber: the number of the line, from 1.
    @ivar line: the line, as text.
    @ivar reason: what is wrong with it.
    """

    def __init__(self, lineNumber: int, line: str, reason: str) -> None:
        super().__init__(lineNumber, line, reason)
        self.lineNumber = lineNumber
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        return f"line {self.lineNumber}: {self.reason}: {self.line!r}"


def domainKey(domain: bytes) -> bytes:
    """
    A domain as recipient lists compare it: lower case, ASCII (IDNA
    A-labels for a UTF-8 domain), no final dot.

    @param domain: the domain, as in an address (C{bytes}, UTF-8).
    @return: its key; for a domain that IDNA refuses, its bytes in lower
        case.
    """
    domain = domain.rstrip(b".")
    if not domain.isascii():
        try:
            domain = domain.decode("utf-8").encode("idna")
        except UnicodeError:
            pass
    return domain.lower()


def localKey(local: bytes) -> bytes:
    """
    A local part as recipient lists compare it: unquoted, its ASCII
    letters in lower case.

    @param local: the local part in its wire form (quoted or not).
    """
    return dequote(local).lower()


class RecipientList:
    """
    A set of valid recipients: addresses, and domains whose every
    recipient is valid.

    @ivar addresses: the listed addresses, as C{(localKey, domainKey)}.
    @ivar domains: the domains listed as C{@domain}, as L{domainKey}s.
    """

    def __init__(self, addresses=(), domains=()) -> None:
        self.addresses = frozenset(addresses)
        self.domains = frozenset(domains)

    def __len__(self) -> int:
        return len(self.addresses) + len(self.domains)

    def __contains__(self, address) -> bool:
        """
        @param address: an L{Address}, or anything L{Address} takes.
        """
        if not isinstance(address, Address):
            try:
                address = Address(address)
            except AddressError:
                return False
        domain = domainKey(address.domain)
        return domain in self.domains or (localKey(address.local), domain) in self.addresses

    @classmethod
    def parse(cls, data: bytes) -> RecipientList:
        """
        Read a recipients file's content (see the module's docstring).

        @param data: the file's content (UTF-8).
        @raise RecipientsFileError: for the first line that is not an
            entry.
        """
        addresses, domains = set(), set()
        for number, raw in enumerate(data.splitlines(), 1):
            entry = _withoutComment(raw).strip()
            if not entry:
                continue
            shown = raw.decode("utf-8", "replace").strip()
            if entry.startswith(b"@"):
                domain = entry[1:]
                key = domainKey(domain)
                if not isDomain(key):
                    raise RecipientsFileError(number, shown, "not a domain after @")
                domains.add(key)
                continue
            if b"@" not in entry:
                raise RecipientsFileError(number, shown, "not an address (local@domain) or @domain")
            try:
                address = Address(entry)
            except AddressError as e:
                raise RecipientsFileError(number, shown, f"not an address ({e})") from None
            if address.isNull or address.domain.startswith(b"["):
                raise RecipientsFileError(number, shown, "not an address with a domain name")
            addresses.add((localKey(address.local), domainKey(address.domain)))
        return cls(addresses, domains)


def _withoutComment(line: bytes) -> bytes:
    """
    @return: C{line} without a comment: from a C{#} that begins the line
        or follows a space or tab.
    """
    for i, octet in enumerate(line):
        if octet == ord("#") and (i == 0 or line[i - 1 : i] in (b" ", b"\t")):
            return line[:i]
    return line


class RecipientsFile:
    """
    A recipients file, read again when it changes (see the module's
    docstring).

    @ivar path: the file's path.
    @ivar recipients: the L{RecipientList} in use: the file's last good
        content.
    @ivar checkInterval: at most how often, in seconds, L{check} looks at
        the file when asked.
    """

    checkInterval = 1.0

    def __init__(self, path: str, clock=None, checkInterval: float | None = None) -> None:
        """
        @param path: the file.
        @param clock: an C{IReactorTime} timing the checks; the monotonic
            clock if C{None}.
        @param checkInterval: see L{checkInterval}.
        """
        self.path = path
        self.clock = clock
        if checkInterval is not None:
            self.checkInterval = checkInterval
        self.recipients = RecipientList()
        self._stamp = None
        self._nextCheck = None
        self._problem = None

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else time.monotonic()

    def load(self) -> RecipientsFile:
        """
        Read the file, as at start.

        @return: this file, for chaining.
        @raise OSError: if it cannot be read.
        @raise RecipientsFileError: if a line is not an entry.
        """
        stamp = _stampOf(os.stat(self.path))
        with open(self.path, "rb") as f:
            self.recipients = RecipientList.parse(f.read())
        self._stamp = stamp
        self._nextCheck = self._now() + self.checkInterval
        return self

    def accepts(self, address) -> bool:
        """
        @param address: a recipient (an L{Address}).
        @return: whether it is listed, in the file as it is now (checked
            at most every L{checkInterval} seconds).
        """
        self.check()
        return address in self.recipients

    def check(self, force: bool = False) -> bool:
        """
        Read the file again if it changed since it was last read.  If it
        cannot be read, or is malformed, the last good list stays in use,
        and the problem is logged (once, until it is gone or another one
        comes).

        @param force: look at the file even if the last look was less
            than L{checkInterval} seconds ago.
        @return: whether a new list is in use.
        """
        now = self._now()
        if not force and self._nextCheck is not None and now < self._nextCheck:
            return False
        self._nextCheck = now + self.checkInterval
        try:
            stamp = _stampOf(os.stat(self.path))
            if stamp == self._stamp:
                return False
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            self._report(f"cannot read it ({e.strerror})")
            return False
        try:
            recipients = RecipientList.parse(data)
        except RecipientsFileError as e:
            # Not read again until it changes.
            self._stamp = stamp
            self._report(str(e))
            return False
        self.recipients, self._stamp, self._problem = recipients, stamp, None
        _log.info("Relay recipients: read {path} again ({count} entries)", path=self.path, count=len(recipients))
        return True

    def _report(self, problem: str) -> None:
        if problem == self._problem:
            return
        self._problem = problem
        _log.warn(
            "Relay recipients: {path}: {problem}; still using the last good list ({count} entries)",
            path=self.path,
            problem=problem,
            count=len(self.recipients),
        )


def _stampOf(stat: os.stat_result) -> tuple:
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)
