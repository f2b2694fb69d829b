# -*- test-case-name: mailproto.test.test_submission -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Submission hygiene (RFC 6409) on the relay's submission listeners
(C{--submission}, C{--smtps}): who may use which envelope sender
(L{SenderLoginMap}, as Postfix's C{smtpd_sender_login_maps} with
C{reject_sender_login_mismatch}), the C{From:} header checked the same way
if asked, and C{Date:} and C{Message-ID:} added when missing.

An authenticated client gets, from L{SubmissionRealm}, a delivery factory
of its own (L{SubmissionDeliveryFactory}) that knows its login; its
deliveries (L{SubmissionDelivery}) are the relay's queue deliveries plus
these checks.
"""

from __future__ import annotations

import os
from email.utils import getaddresses

from twisted.cred.portal import IRealm
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from mailproto._errors import SMTPServerError
from mailproto._headerpolicy import DEFAULT_MAX_HOPS, DEFAULT_MAX_OWN_HOPS, IntakePolicy
from mailproto._relay import QueueDelivery
from mailproto.interfaces import IMessageDeliveryFactory

_log = Logger()


class SenderLoginMap:
    """
    Which envelope senders each login may use, from a file of lines
    C{LOGIN: ADDRESS ...} (addresses separated by commas or white space;
    C{@domain} for every address of a domain; C{#} starts a comment)::

        ann: ann@example.com, sales@example.com
        bob: @bob.example

    A login that is itself an address may always use that address.  The
    file is read again when it changes; if it has become malformed, the
    last good reading is kept (and the error logged).
    """

    def __init__(self, path: str) -> None:
        """
        @param path: the file.
        @raise ValueError: if it is malformed (with the line number).
        @raise OSError: if it cannot be read.
        """
        self.path = path
        self._stamp = self._statFile()
        self._map = self.read()

    def _statFile(self):
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_size)

    def read(self) -> dict[bytes, frozenset[bytes]]:
        """
        @return: each login's addresses and C{@domain}s, lower case.
        @raise ValueError: for a malformed line.
        """
        logins: dict[bytes, set[bytes]] = {}
        with open(self.path, "rb") as f:
            lines = f.read().splitlines()
        for number, line in enumerate(lines, 1):
            line = line.partition(b"#")[0].strip()
            if not line:
                continue
            login, colon, rest = line.partition(b":")
            login = login.strip()
            addresses = rest.replace(b",", b" ").split()
            if not colon or not login or not addresses:
                raise ValueError(f"{self.path}, line {number}: expected LOGIN: ADDRESS ...")
            for address in addresses:
                local, at, domain = address.rpartition(b"@")
                if not at or not domain or b"@" in local or b"<" in address or b">" in address:
                    raise ValueError(f"{self.path}, line {number}: {address.decode('utf-8', 'replace')!r} is not an address or @domain")
            logins.setdefault(login, set()).update(a.lower() for a in addresses)
        return {login: frozenset(addresses) for login, addresses in logins.items()}

    def _current(self) -> dict[bytes, frozenset[bytes]]:
        stamp = self._statFile()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._map = self.read()
            except (OSError, ValueError) as e:
                _log.error("Sender login map {path}: {error}; keeping the last good reading", path=self.path, error=str(e))
        return self._map

    def owns(self, login: bytes, address: bytes) -> bool:
        """
        @param login: the authenticated user.
        @param address: an address (C{local@domain}); C{b""} is the null
            sender, which anyone may use.
        @return: whether C{login} may use C{address}.
        """
        if not address:
            return True
        address = address.lower()
        if b"@" in login and login.lower() == address:
            return True
        owned = self._current().get(login, frozenset())
        return address in owned or b"@" + address.rpartition(b"@")[2] in owned


class SubmissionPolicy:
    """
    What the submission listeners check and add.

    @ivar intake: the relay's L{IntakePolicy} (loop detection; it also
        adds the missing fields and counts what the policies do).
    @ivar senders: the L{SenderLoginMap}, or C{None}: then an
        authenticated user may use any sender (as before this policy).
    @ivar checkFromHeader: whether the addresses of the C{From:} header
        must be the user's too.
    @ivar addMissing: whether to add C{Date:} and C{Message-ID:} when
        missing.
    @ivar dkim: the DKIM signer (L{mailproto._dkim.DKIMSigner}), or
        C{None}.
    """

    def __init__(
        self, intake: IntakePolicy, senders: SenderLoginMap | None = None, checkFromHeader: bool = False, addMissing: bool = True, dkim=None
    ) -> None:
        self.intake = intake
        self.senders = senders
        self.checkFromHeader = checkFromHeader
        self.addMissing = addMissing
        self.dkim = dkim


@implementer(IRealm)
class SubmissionRealm:
    """
    Gives each authenticated client a L{SubmissionDeliveryFactory} of its
    own.
    """

    def __init__(self, queue, relayPolicy, submission: SubmissionPolicy, clock=None) -> None:
        self.queue = queue
        self.relayPolicy = relayPolicy
        self.submission = submission
        self.clock = clock

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IMessageDeliveryFactory in interfaces:
            login = avatarId.encode("utf-8") if isinstance(avatarId, str) else bytes(avatarId)
            factory = SubmissionDeliveryFactory(self.queue, self.relayPolicy, self.submission, login, self.clock)
            return IMessageDeliveryFactory, factory, lambda: None
        raise NotImplementedError("the submission realm only gives IMessageDeliveryFactory avatars")


@implementer(IMessageDeliveryFactory)
class SubmissionDeliveryFactory:
    """
    The deliveries of one authenticated client.
    """

    def __init__(self, queue, relayPolicy, submission: SubmissionPolicy, login: bytes, clock=None) -> None:
        self.queue = queue
        self.relayPolicy = relayPolicy
        self.submission = submission
        self.login = login
        self.clock = clock

    def getMessageDelivery(self) -> SubmissionDelivery:
        delivery = SubmissionDelivery(self.queue, self.relayPolicy, self.clock)
        delivery.intake = self.submission.intake
        delivery.dkim = self.submission.dkim
        delivery.submission = self.submission
        delivery.login = self.login
        return delivery


class SubmissionDelivery(QueueDelivery):
    """
    A queue delivery for an authenticated client on a submission listener.

    @ivar submission: the L{SubmissionPolicy}.
    @ivar login: the user the client authenticated as.
    """

    submission: SubmissionPolicy
    login: bytes

    def _refuse(self, policy: str, stage: str, address: bytes, client) -> None:
        self.submission.intake.acted(policy)
        _log.info(
            "Refused {stage} <{address}> from {client}: not owned by user {login}",
            policy=policy,
            stage=stage,
            address=address.decode("utf-8", "replace"),
            client=(client or b"").decode("ascii", "replace") if isinstance(client, bytes) else client,
            login=self.login.decode("utf-8", "replace"),
        )
        raise SMTPServerError(553, b"Sender address not owned by user " + self.login, b"5.7.1")

    def validateFrom(self, helo, origin):
        senders = self.submission.senders
        if senders is not None and not senders.owns(self.login, bytes(origin)):
            self._refuse("sender-login", "sender", bytes(origin), helo[1] if helo else None)
        return origin

    def _scanner(self, envelope):
        submission = self.submission
        checkHeader = None
        if submission.checkFromHeader and submission.senders is not None:

            def checkHeader(scanner) -> None:
                for address in _fromAddresses(scanner.fromValue):
                    if not submission.senders.owns(self.login, address):
                        self._refuse("from-header", "From: header", address, envelope.client)

        return submission.intake.scanner(envelope, complete=submission.addMissing, checkHeader=checkHeader)


def _fromAddresses(value: bytes | None) -> list[bytes]:
    """
    @param value: an unfolded C{From:} value, C{b""} if too long to be
        believed, or C{None} if there is no C{From:} field.
    @return: its addresses; C{[b"?"]} (owned by no one) for a value too
        long or without an address.
    """
    if value is None:
        return []
    addresses = [address for _, address in getaddresses([value.decode("utf-8", "replace")]) if address]
    if not addresses:
        return [b"?"]
    return [address.encode("utf-8") for address in addresses]


# -- the daemon's options ------------------------------------------------------

#: Options of C{twistd mailrelay} (added to its C{optParameters}).
OPT_PARAMETERS = [
    [
        "max-hops",
        None,
        DEFAULT_MAX_HOPS,
        "Refuse (554 5.4.6) a message with more Received: headers than this, the relay's own included, "
        "as Postfix's hopcount_limit (0: no limit).",
    ],
    [
        "max-own-hops",
        None,
        DEFAULT_MAX_OWN_HOPS,
        "Refuse (554 5.4.6) a message with more Received: headers of this relay (by HOSTNAME (mailproto ...)) "
        "than this, the one it adds included: 1, a message may pass once (0: not checked).",
    ],
    [
        "sender-login-map",
        None,
        None,
        "On --submission and --smtps, the envelope senders each user may use: a file of LOGIN: ADDRESS ... "
        "lines (@domain for a whole domain); others get 553 5.7.1 (default: any sender).",
    ],
]

#: Flags of C{twistd mailrelay} (added to its C{optFlags}).
OPT_FLAGS = [
    ["check-from-header", None, "With --sender-login-map, the addresses of the From: header must be the user's too."],
    ["keep-missing-headers", None, "Do not add Date: and Message-ID: to submitted messages without them."],
]


def checkOptions(options) -> None:
    """
    Check and convert the options of this module (in place).

    @raise usage.UsageError: for a bad one.
    """
    for name in ("max-hops", "max-own-hops"):
        text = str(options[name]).strip()
        if not text.isdigit():
            raise usage.UsageError(f"--{name}: {text!r} is not a whole number (0 or more)")
        options[name] = int(text)
    path = options["sender-login-map"]
    if path is not None:
        try:
            options["sender-login-map"] = SenderLoginMap(path)
        except OSError as e:
            raise usage.UsageError(f"--sender-login-map {path!r}: cannot read it ({e.strerror})") from None
        except ValueError as e:
            raise usage.UsageError(f"--sender-login-map {path!r}: {e}") from None
    elif options["check-from-header"]:
        raise usage.UsageError("--check-from-header needs --sender-login-map")


def intakePolicy(options, hostname: bytes, clock) -> IntakePolicy:
    """
    @return: the relay's L{IntakePolicy} from its options.
    """
    return IntakePolicy(hostname, options["max-hops"], options["max-own-hops"], clock=clock)


def submissionPortal(options, queue, relayPolicy, intake: IntakePolicy, checkers, clock):
    """
    @return: the portal of the submission listeners: the same users, each
        with a L{SubmissionDeliveryFactory}.
    """
    from twisted.cred.portal import Portal

    submission = SubmissionPolicy(
        intake,
        options["sender-login-map"],
        checkFromHeader=bool(options["check-from-header"]),
        addMissing=not options["keep-missing-headers"],
        dkim=options["dkim-signer"],
    )
    return Portal(SubmissionRealm(queue, relayPolicy, submission, clock), checkers)
