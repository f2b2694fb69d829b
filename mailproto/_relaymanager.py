# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Mail out of the relay's queue: the relaying manager, its attempt
managers and the relayers (SMTP clients) they drive.

The parts, in the order a message meets them:

  1. L{SmartHostSMTPRelayingManager} (and L{SmartHostESMTPRelayingManager},
     the one to use) keeps every waiting message on a timer for its next
     attempt (L{Envelope.nextAttempt}), and learns of new ones from the
     queue at once.  When a message is due its waiting recipients are
     split by destination (their domain, or the smart host): each part is
     a I{job}.
  2. Jobs wait in their destination's line until a connection may be
     opened: at most C{maxConnections} overall and
     C{maxConnectionsPerDestination} to one destination; one connection
     carries up to C{maxMessagesPerConnection} jobs.
  3. A connection routes its destination (L{MXCalculator.getRoute}, or the
     smart host), then tries its addresses in order (at most
     C{maxAddresses}) until one takes the jobs.  An address that refuses
     the connection, or a session that fails before any job was answered
     (greeting, EHLO, STARTTLS, AUTH), moves on to the next address;
     jobs still unanswered when no address is left, or when a session
     breaks after its first answer, are deferred with the reason.
  4. The relayer (L{ESMTPManagedRelayer}) sends each job and hands the
     per-recipient replies to its attempt manager (L{_AttemptManager}),
     which hands them to the relaying manager.
  5. When every job of a message has been answered, the attempt is
     recorded (L{recordAttempt}): delivered recipients are done, C{4xx}
     ones wait for the next attempt on the retry schedule, C{5xx} ones
     and expired ones are reported to the sender in one delivery status
     notification, which is itself queued (from C{<>}, so never bounced
     in turn) before the message's new state is written.  A message
     with no recipient left waiting is removed from the queue.

The state of a queued message, and what moves it::

  ============  ==========================  ===============================
  state         where it lives              leaves it when
  ============  ==========================  ===============================
  waiting       the queue and the timer     due: becomes I{in flight}
  in flight     L{_MessageAttempt}, the     every job answered: the attempt
                destination lines and the   is recorded, the state written,
                connections                 then I{waiting} again or gone
  gone          (removed from the queue)    never
  ============  ==========================  ===============================

A crash in flight loses nothing: the state on disk is the one before the
attempt, so the message is tried again (recipients it reached may get it
twice).
"""

from __future__ import annotations

import collections
import heapq
import os
import socket

from twisted.application.internet import TimerService
from twisted.internet import defer, error
from twisted.internet.protocol import ClientFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailproto._address import Address
from mailproto._attempts import RetrySchedule, recordAttempt
from mailproto._auth import CramMD5ClientAuthenticator, LOGINAuthenticator, PLAINAuthenticator
from mailproto._bounce import DEFAULT_RETURN_LIMIT, DeliveryReport, RecipientReport, UnparsedAddress, makeReport
from mailproto._client import SUCCESS, ESMTPClient, SMTPClient
from mailproto._commands import MailFrom, RcptTo, formatMailFrom, formatRcptTo
from mailproto._errors import AddressError, AUTHDeclinedError, AuthenticationError, AUTHRequiredError, SMTPClientError, TLSRequiredError
from mailproto._mx import Candidate, Destination, MailRoutingError, MXCalculator, NullMX
from mailproto._queue import WAITING, Envelope, Recipient, newMessageID, openQueueFile, readQueueFile
from mailproto._replies import statusOf

_log = Logger()

NONE, MAY, ENCRYPT, VERIFY = "none", "may", "encrypt", "verify"
"""The outbound TLS policies: no TLS; TLS when offered, certificate not
checked (opportunistic); TLS required, certificate not checked; TLS
required with a certificate valid for the host's name."""

SMARTHOST = "[smarthost]"
"""The destination of every job when the relay sends through a smart
host."""


class TLSPolicy:
    """
    How the relay uses TLS towards one destination.

    @ivar mode: L{NONE}, L{MAY}, L{ENCRYPT} or L{VERIFY}.
    @ivar trustRoot: for L{VERIFY}, the certificate authorities trusted
        (an C{IOpenSSLTrustRoot});
        the platform's if C{None}.
    """

    def __init__(self, mode: str = MAY, trustRoot=None) -> None:
        """
        @raise ValueError: for an unknown mode.
        """
        if mode not in (NONE, MAY, ENCRYPT, VERIFY):
            raise ValueError(f"TLS policy must be one of none, may, encrypt, verify; not {mode!r}")
        self.mode = mode
        self.trustRoot = trustRoot

    def __repr__(self) -> str:
        return f"TLSPolicy({self.mode!r})"

    @property
    def required(self) -> bool:
        """
        Whether mail may only go over TLS.
        """
        return self.mode in (ENCRYPT, VERIFY)

    def contextFor(self, hostname: str):
        """
        @param hostname: the name the server's certificate must have (for
            L{VERIFY}).
        @return: the client TLS options for a server, or C{None} for no TLS.
        """
        if self.mode == NONE:
            return None
        from twisted.internet import ssl

        if self.mode == VERIFY:
            return ssl.optionsForClientTLS(hostname, trustRoot=self.trustRoot)
        return ssl.CertificateOptions(verify=False)


class SmartHost:
    """
    A host all mail is relayed through.

    @ivar host: its name or address.
    @ivar port: its port.
    @ivar username: the user name to authenticate with, or C{None}.
    @ivar password: the password, or C{None}.
    @ivar tls: the L{TLSPolicy}.
    @ivar implicitTLS: whether the port speaks TLS from the start (RFC 8314,
        port 465) rather than STARTTLS.
    """

    def __init__(self, host: str, port: int = 25, username=None, password=None, tls: TLSPolicy | None = None, implicitTLS: bool = False) -> None:
        self.host = host
        self.port = int(port)
        self.username = username.encode("utf-8") if isinstance(username, str) else username
        self.password = password.encode("utf-8") if isinstance(password, str) else password
        self.tls = tls or TLSPolicy(MAY)
        self.implicitTLS = implicitTLS
        if implicitTLS and self.tls.mode == NONE:
            raise ValueError("implicit TLS needs a TLS policy other than none")

    @classmethod
    def fromString(cls, value: str, **kw) -> SmartHost:
        """
        Parse C{host}, C{host:port} or C{[address]:port} (an IPv6 address
        in brackets).

        @raise ValueError: if C{value} is not one of those.
        """
        value = value.strip()
        port = 25
        if value.startswith("["):
            host, sep, rest = value[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"bad smart host {value!r}: expected [ADDRESS]:PORT")
            if rest:
                port = rest[1:]
        else:
            host, sep, portText = value.rpartition(":")
            if not sep:
                host = value
            elif ":" in host:
                raise ValueError(f"bad smart host {value!r}: put an IPv6 address in brackets, as [::1]:25")
            else:
                port = portText
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"bad smart host {value!r}: the port must be a number") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad smart host {value!r}: expected HOST:PORT")
        return cls(host, port, **kw)

    def __repr__(self) -> str:
        return f"SmartHost({self.host!r}, {self.port})"


def _text(resp) -> str:
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(str(resp).split())[:1000]


def _connectionReply(reason) -> tuple[int, str]:
    """
    The deferral reply for a job whose connection failed for C{reason} (a
    C{Failure} or an exception).
    """
    exception = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exception, SMTPClientError):
        said = _text(exception.resp)
        if exception.code > 0:
            return 451, f"4.4.2 Session failed: the server said {exception.code} {said}"
        return 451, f"4.4.2 Session failed: {said}"
    if isinstance(exception, (error.ConnectionRefusedError, error.ConnectError, error.TimeoutError, error.DNSLookupError)):
        return 451, f"4.4.1 Could not connect: {exception}"
    return 451, f"4.4.2 Connection lost: {_text(str(exception) or type(exception).__name__)}"


class _MessageAttempt:
    """
    One attempt to deliver a message: its jobs, and the replies so far.

    @ivar envelope: the message's envelope.
    @ivar replies: the final reply for each recipient answered, by
        address.
    @ivar hosts: the host that answered, by address.
    @ivar withoutDSN: the addresses answered by a server that does not
        offer DSN.
    @ivar interrupted: whether the relay stopped before some recipients
        had an answer.
    @ivar unanswered: how many jobs have not been answered.
    @ivar started: when the attempt started (seconds since the epoch).
    """

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.replies: dict[bytes, tuple[int, str]] = {}
        self.hosts: dict[bytes, str] = {}
        self.withoutDSN: set[bytes] = set()
        self.interrupted = False
        self.unanswered = 0
        self.started = 0.0


class _Job:
    """
    A message's part for one destination: the message, and its recipients
    there.

    @ivar attempt: the L{_MessageAttempt}, or C{None} for a job made from a
        queue file (L{RelayerMixin.loadMessages}).
    @ivar envelope: the message's envelope.
    @ivar recipients: the L{Recipient}s to send to.
    @ivar destination: the destination's key (a domain, or L{SMARTHOST}).
    @ivar answered: whether the job has its replies.
    """

    def __init__(self, envelope: Envelope, recipients: list[Recipient], destination: str, attempt=None, opener=None, path=None) -> None:
        self.envelope = envelope
        self.recipients = recipients
        self.destination = destination
        self.attempt = attempt
        self.path = path
        self._opener = opener
        self._file = None
        self.answered = False
        self.dsn = False

    @classmethod
    def fromPath(cls, path) -> _Job:
        """
        A job for every waiting recipient of the message in queue file
        C{path} whose address would go on the wire (the others stay
        waiting in the file: an unmanaged relayer has nobody to report
        them to).
        """
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        envelope = readQueueFile(path)
        recipients = [r for r in envelope.waiting if _recipientRefusal(r) is None]
        return cls(envelope, recipients, "", opener=lambda: openQueueFile(path), path=path)

    def split(self, recipients: list[Recipient]) -> _Job:
        """
        Take C{recipients} out of this job, into a new job for the same
        message, destination and attempt (which then waits for one more
        job's answer).

        @return: the new job.
        """
        taken = {id(r) for r in recipients}
        self.recipients = [r for r in self.recipients if id(r) not in taken]
        if self.attempt is not None:
            self.attempt.unanswered += 1
        return _Job(self.envelope, list(recipients), self.destination, self.attempt, self._opener, self.path)

    def mailFrom(self) -> MailFrom:
        envelope = self.envelope
        return MailFrom(
            Address(envelope.sender),
            body=envelope.body,
            smtputf8=envelope.smtputf8,
            ret=envelope.ret,
            envid=envelope.envid,
        )

    def rcptTo(self) -> list[RcptTo]:
        return [RcptTo(Address(r.address), notify=r.notify, orcpt=r.orcpt) for r in self.recipients]

    def open(self):
        self.close()
        self._file = self._opener()
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def replies(self, code: int, resp, addresses) -> dict[bytes, tuple[int, str]]:
        """
        The final reply for each recipient, from what C{sentMail} was
        given: a refused RCPT keeps its own reply; the others get the
        message's.
        """
        out = {}
        final = (code, _text(resp))
        for i, recipient in enumerate(self.recipients):
            if i < len(addresses):
                _, rcptCode, rcptResp = addresses[i]
                out[recipient.address] = final if rcptCode in SUCCESS else (rcptCode, _text(rcptResp))
            else:
                out[recipient.address] = final
        return out


_SESSION_CODES = frozenset({530, 534, 535, 538})
_SESSION_STATUSES = frozenset({b"5.7.8", b"5.7.9", b"5.7.10", b"5.7.11"})


def _refusesSession(code: int, text: str) -> bool:
    """
    Whether a reply refuses the session rather than the message: AUTH
    required (C{530}), the mechanism too weak (C{534}), the credentials
    refused (C{535}), encryption required for the mechanism (C{538}), or
    one of their enhanced statuses (RFC 4954, RFC 5248: C{5.7.8},
    C{5.7.9}, C{5.7.10}, C{5.7.11}); C{530} is also "Must issue a STARTTLS
    command first" (RFC 3207).
    """
    if code in _SESSION_CODES:
        return True
    return 500 <= code < 600 and statusOf(code, text.encode("utf-8", "replace")) in _SESSION_STATUSES


def _refusedConfiguration(reason) -> bool:
    """
    Whether a session failed because the relay is not set up as the
    server wants: AUTH or TLS required and not possible, credentials
    refused, or a session refusal code (L{_refusesSession}).
    """
    exception = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exception, (AUTHRequiredError, TLSRequiredError, AUTHDeclinedError, AuthenticationError)):
        return True
    return isinstance(exception, SMTPClientError) and exception.code in _SESSION_CODES


def _softened(code: int, text: str) -> tuple[int, str]:
    """
    A permanent failure made temporary (the soft bounce mode): C{550
    5.1.1 No such user} becomes C{450 4.1.1 Soft bounce: 550 5.1.1 No
    such user}.
    """
    if not 500 <= code < 600:
        return code, text
    status = statusOf(code, text.encode("utf-8", "replace"))
    status = b"4" + status[1:] if status else b"4.0.0"
    return code - 100, f"{status.decode('ascii')} Soft bounce: {code} {text}"


def _tooMany(job: _Job, replies: dict[bytes, tuple[int, str]]) -> list[Recipient]:
    """
    The recipients of an answered job that the server had no room for in
    the transaction: refused with C{452} (without an enhanced status, or
    with C{4.5.3}), or with C{552 5.5.3}, which RFC 5321 section
    4.5.3.1.10 says to take as the same -- but only when the message
    was delivered to some other recipient in it, so that the next
    transaction makes progress.
    """
    if not any(code in SUCCESS for code, _ in replies.values()):
        return []
    rest = []
    for recipient in job.recipients:
        code, text = replies.get(recipient.address, (0, ""))
        status = statusOf(code, text.encode("utf-8", "replace"))
        if (code == 452 and status in (None, b"4.5.3")) or (code == 552 and status == b"5.5.3"):
            rest.append(recipient)
    return rest


def _wireAddress(raw: bytes) -> Address:
    """
    @return: a queued address as it goes on the wire: the null address,
        or C{local@domain}.
    @raise AddressError: if it does not parse, or has no domain.
    """
    address = Address(raw, defaultDomain=b"")
    if address.local and not address.domain:
        raise AddressError("no domain")
    return address


def _senderRefusal(envelope: Envelope) -> tuple[int, str] | None:
    """
    @return: why no recipient of a queued message can be sent to, because
        its sender (or a MAIL parameter) would not go on the wire; or
        C{None}.
    """
    try:
        formatMailFrom(_Job(envelope, [], "").mailFrom())
    except (AddressError, ValueError, TypeError) as e:
        return 550, f"5.1.7 The queued sender cannot be sent on: {_text(str(e))}"
    return None


def _recipientRefusal(recipient: Recipient) -> tuple[int, str] | None:
    """
    @return: why a queued recipient cannot be sent to, because its address
        (or a RCPT parameter) would not go on the wire; or C{None}.
    """
    try:
        formatRcptTo(RcptTo(_wireAddress(recipient.address), notify=recipient.notify, orcpt=recipient.orcpt))
    except (AddressError, ValueError, TypeError) as e:
        return 553, f"5.1.3 The queued recipient address cannot be sent on: {_text(str(e))}"
    return None


# -- relayers: SMTP clients sending queued messages --------------------------------


class RelayerMixin:
    """
    An SMTP client that sends messages from the queue, one after the other.

    @ivar messages: the jobs left to send.
    @ivar names: their queue file paths (or ids), in the same order.
    """

    def loadMessages(self, messagePaths) -> None:
        """
        @param messagePaths: queue file paths (L{Queue.getPath}), for every
            recipient still waiting; or jobs given by a relaying manager.
        """
        self.messages = []
        self.names = []
        for item in messagePaths:
            job = item if isinstance(item, _Job) else _Job.fromPath(item)
            self.messages.append(job)
            self.names.append(job.path if job.path is not None else job.envelope.id)

    def getMailFrom(self):
        if not self.messages:
            return None
        return self.messages[0].mailFrom()

    def getMailTo(self):
        if not self.messages:
            return None
        return self.messages[0].rcptTo()

    def getMailData(self):
        if not self.messages:
            return None
        return self.messages[0].open()

    def sentMail(self, code, resp, numOk, addresses, log) -> None:
        """
        A message was sent (or refused).  Unmanaged, as in twisted.mail, a
        message every recipient accepted is removed from the spool
        directory; anything else is left there for the next attempt.
        """
        job = self.messages.pop(0)
        name = self.names.pop(0)
        job.close()
        replies = job.replies(code, resp, addresses)
        if job.path is not None and replies and all(c in SUCCESS for c, _ in replies.values()):
            for suffix in (".state", ""):
                try:
                    os.unlink(name + suffix)
                except FileNotFoundError:
                    pass

    def _closeMessages(self) -> None:
        for job in getattr(self, "messages", ()):
            job.close()


class SMTPRelayer(RelayerMixin, SMTPClient):
    """
    An SMTP client relaying queued messages.
    """

    def __init__(self, messagePaths, *args, **kw) -> None:
        """
        @param messagePaths: see L{RelayerMixin.loadMessages}.
        @param args: for L{SMTPClient}: C{identity}, C{logsize}.
        """
        SMTPClient.__init__(self, *args, **kw)
        self.loadMessages(messagePaths)

    def connectionLost(self, reason=connectionDone) -> None:
        self._closeMessages()
        SMTPClient.connectionLost(self, reason)


class ESMTPRelayer(RelayerMixin, ESMTPClient):
    """
    An ESMTP client relaying queued messages.
    """

    def __init__(self, messagePaths, *args, **kw) -> None:
        """
        @param messagePaths: see L{RelayerMixin.loadMessages}.
        @param args: for L{ESMTPClient}: C{secret}, C{contextFactory},
            C{identity}, C{logsize}.
        """
        ESMTPClient.__init__(self, *args, **kw)
        self.loadMessages(messagePaths)

    def connectionLost(self, reason=connectionDone) -> None:
        self._closeMessages()
        ESMTPClient.connectionLost(self, reason)


class ManagedRelayerMixin:
    """
    A relayer that tells its attempt manager what became of each message
    (C{notifySent}, or twisted.mail's C{notifySuccess}/C{notifyFailure}),
    why its session failed, and when its connection is gone
    (C{notifyDone}).
    """

    def __init__(self, manager) -> None:
        self.manager = manager

    @property
    def factory(self):
        return self._factory

    @factory.setter
    def factory(self, value) -> None:
        self._factory = value

    def getMailFrom(self):
        if not self.messages:
            # Before saying QUIT, take whatever has come due for the same
            # destination since the connection was opened.
            more = getattr(self.manager, "moreMessages", None)
            if more is not None:
                for job in more(self.factory):
                    self.messages.append(job)
                    self.names.append(job.path if job.path is not None else job.envelope.id)
        return super().getMailFrom()

    def smtpState_from(self, code, resp) -> None:
        if not self.messages:
            self.getMailFrom()  # takes what came due meanwhile, if anything
            park = getattr(self.manager, "park", None)
            if not self.messages and park is not None and park(self.factory, self):
                # The connection waits a little for more mail to its
                # destination; the manager calls resume().
                return
        super().smtpState_from(code, resp)

    def resume(self, jobs) -> None:
        """
        Go on after waiting: send C{jobs}, or say QUIT if there are none.
        """
        for job in jobs:
            self.messages.append(job)
            self.names.append(job.path if job.path is not None else job.envelope.id)
        super().smtpState_from(250, b"")

    def sentMail(self, code, resp, numOk, addresses, log) -> None:
        """
        Tell the manager what became of the first job.  Jobs the manager
        gives back (the recipients a server had no room for in this
        transaction) are sent next, in a new transaction.
        """
        job = self.messages.pop(0)
        name = self.names.pop(0)
        job.close()
        job.dsn = b"DSN" in getattr(self, "extensions", ())
        notifySent = getattr(self.manager, "notifySent", None)
        if notifySent is not None:
            following = notifySent(self.factory, job, job.replies(code, resp, addresses)) or []
            self.messages[0:0] = following
            self.names[0:0] = [each.path if each.path is not None else each.envelope.id for each in following]
        elif code in SUCCESS:
            self.manager.notifySuccess(self.factory, name)
        else:
            self.manager.notifyFailure(self.factory, name)

    def sendError(self, exc) -> None:
        factory = getattr(self, "_factory", None)
        if factory is not None:
            factory.lastError = exc
        super().sendError(exc)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        factory = self.factory
        if getattr(factory, "lastError", None) is None and (self.messages or not reason.check(error.ConnectionDone)):
            # Closed with messages unsent, even cleanly: that is the reason.
            factory.lastError = reason
        factory.tlsFailed = getattr(self, "tlsFailed", False)
        self.manager.notifyDone(factory)


class SMTPManagedRelayer(ManagedRelayerMixin, SMTPRelayer):
    """
    An SMTP client that sends a list of messages and keeps an attempt
    manager informed.
    """

    def __init__(self, messages, manager, *args, **kw) -> None:
        """
        @param messages: queue file paths, or jobs.
        @param manager: the attempt manager.
        @param args: for L{SMTPClient}: C{identity}, C{logsize}.
        """
        ManagedRelayerMixin.__init__(self, manager)
        SMTPRelayer.__init__(self, messages, *args, **kw)


class ESMTPManagedRelayer(ManagedRelayerMixin, ESMTPRelayer):
    """
    An ESMTP client that sends a list of messages and keeps an attempt
    manager informed.
    """

    def __init__(self, messages, manager, *args, **kw) -> None:
        """
        @param messages: queue file paths, or jobs.
        @param manager: the attempt manager.
        @param args: for L{ESMTPClient}: C{secret}, C{contextFactory},
            C{identity}, C{logsize}.
        """
        ManagedRelayerMixin.__init__(self, manager)
        ESMTPRelayer.__init__(self, messages, *args, **kw)


class SMTPManagedRelayerFactory(ClientFactory):
    """
    Makes the L{SMTPManagedRelayer} for one connection.

    @ivar messages: what to send.
    @ivar manager: the attempt manager.
    @ivar pArgs: more positional arguments for the relayer.
    @ivar pKwArgs: keyword arguments for the relayer.
    @ivar lastError: why the session failed (an L{SMTPClientError} or a
        C{Failure}), or C{None}.
    """

    protocol = SMTPManagedRelayer
    noisy = False

    def __init__(self, messages, manager, *args, **kw) -> None:
        self.messages = messages
        self.manager = manager
        self.pArgs = args
        self.pKwArgs = kw
        self.lastError = None

    def _configure(self, protocol) -> None:
        protocol.factory = self
        configure = getattr(self.manager, "configureRelayer", None)
        if configure is not None:
            configure(protocol)

    def buildProtocol(self, addr):
        protocol = self.protocol(self.messages, self.manager, *self.pArgs, **self.pKwArgs)
        self._configure(protocol)
        return protocol

    def clientConnectionFailed(self, connector, reason) -> None:
        self.lastError = reason
        self.manager.notifyNoConnection(self)
        self.manager.notifyDone(self)


class ESMTPManagedRelayerFactory(SMTPManagedRelayerFactory):
    """
    Makes the L{ESMTPManagedRelayer} for one connection.

    @ivar secret: the password for AUTH, or a callable given the server's
        address that returns it, or C{None}.
    @ivar contextFactory: the TLS client options for STARTTLS, or C{None}.
    """

    protocol = ESMTPManagedRelayer

    def __init__(self, messages, manager, secret, contextFactory, *args, **kw) -> None:
        self.secret = secret
        self.contextFactory = contextFactory
        SMTPManagedRelayerFactory.__init__(self, messages, manager, *args, **kw)

    def buildProtocol(self, addr):
        secret = self.secret(addr) if callable(self.secret) else self.secret
        protocol = self.protocol(self.messages, self.manager, secret, self.contextFactory, *self.pArgs, **self.pKwArgs)
        self._configure(protocol)
        return protocol


# -- the attempt manager: one per connection ------------------------------------------


class _AttemptManager:
    """
    Follows one connection's attempt to relay its jobs, for the relaying
    manager: each job's replies, the session's end.

    @ivar manager: the relaying manager.
    @ivar connection: the L{_Connection} it reports for.
    @ivar _configurationLogged: whether a session refusal (a configuration
        error) was logged for this connection already: once per
        connection is enough.
    """

    def __init__(self, manager, noisy: bool = True, reactor=None, connection=None) -> None:
        self.manager = manager
        self.noisy = noisy
        self.reactor = reactor
        self.connection = connection
        self._configurationLogged = False
        self._completionDeferreds: list[defer.Deferred] | None = []

    def getCompletionDeferred(self) -> defer.Deferred:
        """
        @return: a C{Deferred} that fires when the connection is over.
        """
        d = defer.Deferred()
        if self._completionDeferreds is None:
            d.callback(None)
        else:
            self._completionDeferreds.append(d)
        return d

    def _complete(self) -> None:
        waiting, self._completionDeferreds = self._completionDeferreds or [], None
        for d in waiting:
            d.callback(None)

    def configureRelayer(self, relayer) -> None:
        self.manager.configureRelayer(relayer, self.connection)

    def notifySent(self, relay, job, replies) -> list[_Job]:
        """
        A job was answered: C{replies} has each recipient's final reply.

        @return: the jobs the relayer is to send next on the same
            connection: the recipients refused as too many for one
            transaction (RFC 5321 section 4.5.3.1.10), when some others
            were delivered in it.
        """
        jobs = self.manager.managed.get(relay, [])
        if job in jobs:
            jobs.remove(job)
        replies = self._sessionRefusals(job, replies)
        following = []
        rest = _tooMany(job, replies)
        if rest and self.connection is not None and relay in self.manager.managed:
            following = [job.split(rest)]
            jobs.extend(following)
            self.connection.jobs.extend(following)
            replies = {address: reply for address, reply in replies.items() if address not in {r.address for r in rest}}
        if self.connection is not None:
            self.connection.answered += 1
            host = self.connection.host
        else:
            host = None
        self.manager._jobAnswered(job, replies, host)
        return following

    def _sessionRefusals(self, job: _Job, replies: dict[bytes, tuple[int, str]]) -> dict[bytes, tuple[int, str]]:
        """
        Replies that refuse the session rather than the message (AUTH
        required or refused, TLS required: L{_refusesSession}) say that
        the relay is not set up as the server wants, not that the mail is
        bad: they defer the recipients, and the first on a connection is
        logged as a configuration error.
        """
        refused = {address: reply for address, reply in replies.items() if _refusesSession(*reply)}
        if not refused:
            return replies
        code, text = next(iter(refused.values()))
        if not self._configurationLogged:
            self._configurationLogged = True
            _log.error(
                "Configuration error: {host} refused the session ({reply}); check the relay's AUTH and TLS "
                "settings for it; {queueID} and the rest of its mail are deferred",
                host=self.connection.host if self.connection is not None else None,
                reply=f"{code} {text}",
                queueID=job.envelope.id,
            )
        deferral = {address: (451, f"4.7.0 Session refused, deferred: the server said {code} {text}") for address, (code, text) in refused.items()}
        return {**replies, **deferral}

    def moreMessages(self, relay) -> list[_Job]:
        """
        @return: more jobs for the connection of C{relay}, which has sent
            all it was given: those waiting for its destination, as many
            as the per-connection limit still allows.
        """
        if self.connection is None or relay not in self.manager.managed:
            return []
        jobs = self.manager._moreJobs(self.connection)
        self.manager.managed[relay].extend(jobs)
        self.connection.jobs.extend(jobs)
        return jobs

    def park(self, relay, relayer) -> bool:
        """
        The connection of C{relay} has nothing more to send: may it wait
        for more (L{SmartHostSMTPRelayingManager.connectionCacheTime})?
        """
        if self.connection is None or relay not in self.manager.managed:
            return False
        return self.manager._park(self.connection, relay, relayer)

    def notifySuccess(self, relay, message) -> None:
        """
        twisted.mail's report: the first job was accepted by everyone.
        """
        job = self._jobNamed(relay, message)
        if job is not None:
            self.notifySent(relay, job, {r.address: (250, "2.0.0 OK") for r in job.recipients})

    def notifyFailure(self, relay, message) -> None:
        """
        twisted.mail's report: the first job was refused.
        """
        job = self._jobNamed(relay, message)
        if job is not None:
            self.notifySent(relay, job, {r.address: (554, "5.0.0 Delivery failed") for r in job.recipients})

    def _jobNamed(self, relay, message):
        for job in self.manager.managed.get(relay, []):
            if message in (job.path, job.envelope.id):
                return job
        return None

    def notifyNoConnection(self, relay) -> None:
        """
        The connection could not be made.
        """
        if self.connection is not None:
            self.connection.connected = False

    def notifyDone(self, relay) -> None:
        """
        The connection is over: what was not answered goes on to the next
        address, or is deferred.
        """
        leftover = self.manager.managed.pop(relay, None)
        if leftover is None:
            return
        if self.connection is not None:
            self.connection.tryEnded(leftover, getattr(relay, "lastError", None), getattr(relay, "tlsFailed", False))
        self._complete()


class _Connection:
    """
    The relay's attempt to deliver some jobs to one destination: routing,
    then each address in turn.
    """

    def __init__(self, manager, destination: str, jobs: list[_Job]) -> None:
        self.manager = manager
        self.destination = destination
        self.jobs = jobs
        self.addresses: list[tuple[Candidate, str]] = []
        self.host: str | None = None
        self.candidate: Candidate | None = None
        self.answered = 0
        self.connected = True
        self.lastError = None
        self.done = defer.Deferred()
        self.tls: TLSPolicy = manager.tlsPolicyFor(destination)
        #: Whether the session now being made goes without TLS: the same
        #: address again after TLS failed under the policy "may".
        self.plaintext = False
        self._address: str | None = None
        self._plaintextNext = False

    def start(self) -> None:
        d = self.manager._route(self.destination)
        d.addCallbacks(self._routed, self._notRouted)
        d.addErrback(self._bug)

    def _routed(self, route: Destination) -> None:
        limit = self.manager.maxAddresses
        self.addresses = [(candidate, address) for candidate in route for address in candidate.addresses][:limit]
        self._next()

    def _notRouted(self, failure: Failure) -> None:
        exception = failure.value
        if isinstance(exception, NullMX):
            reply = (556, f"5.1.10 {exception}")
        elif isinstance(exception, MailRoutingError) and exception.permanent:
            reply = (550, f"5.1.2 {exception}")
        elif isinstance(exception, MailRoutingError):
            reply = (451, f"4.4.3 {exception}")
        else:
            _log.failure("Routing {destination} failed", failure, destination=self.destination)
            reply = (451, "4.4.3 Routing failed")
        self._finish(self.jobs, reply)

    def _bug(self, failure: Failure) -> None:
        _log.failure("Relaying to {destination} failed", failure, destination=self.destination)
        jobs = [job for job in self.jobs if not job.answered]
        self._finish(jobs, (451, "4.3.0 Internal error"))

    def _next(self) -> None:
        jobs = [job for job in self.jobs if not job.answered]
        if not jobs:
            self._finish([], None)
            return
        if not self.addresses:
            self._finish(jobs, _connectionReply(self.lastError) if self.lastError is not None else (451, "4.4.1 No address to connect to"))
            return
        self.candidate, address = self.addresses.pop(0)
        self.host = self.candidate.host
        self._address = address
        self.plaintext, self._plaintextNext = self._plaintextNext, False
        self.connected = True
        self.manager._connectTo(self, address, jobs)

    def tryEnded(self, leftover: list[_Job], reason, tlsFailed: bool = False) -> None:
        """
        One address was tried; C{leftover} jobs were not answered.

        @param tlsFailed: whether STARTTLS was tried and TLS did not come
            up; under the policy C{may}, the same address is then tried
            once more, without TLS (as Postfix does), before the next.
        """
        if reason is not None:
            self.lastError = reason
            if self.destination == SMARTHOST and _refusedConfiguration(reason):
                _log.error(
                    "Configuration error: {host} refused the session ({reply}); check the relay's AUTH and TLS "
                    "settings for it; its mail is deferred",
                    host=self.host,
                    reply=_connectionReply(reason)[1],
                )
        mx = self.manager.mxcalc
        if mx is not None and self.candidate is not None and self.destination != SMARTHOST:
            if self.connected and self.answered:
                mx.markGood(self.host)
            elif not self.connected:
                mx.markBad(self.host)
        leftover = [job for job in leftover if not job.answered]
        if not leftover:
            self._finish([], None)
        elif self.answered == 0 and tlsFailed and self.tls.mode == MAY and not self.plaintext:
            _log.info(
                "Relay to {destination} via {host}: TLS failed ({reason}); trying it again without TLS",
                destination=self.destination,
                host=self.host,
                reason=_connectionReply(reason)[1] if reason is not None else "no reason given",
            )
            self.addresses.insert(0, (self.candidate, self._address))
            self._plaintextNext = True
            self._next()
        elif self.answered == 0:
            if reason is not None:
                _log.info(
                    "Relay to {destination} via {host}: {reason}; trying the next address",
                    destination=self.destination,
                    host=self.host,
                    reason=_connectionReply(reason)[1],
                )
            self._next()
        else:
            self._finish(leftover, _connectionReply(reason) if reason is not None else (451, "4.4.2 Connection lost"))

    def _finish(self, jobs: list[_Job], reply) -> None:
        for job in jobs:
            if not job.answered:
                self.manager._jobAnswered(job, {r.address: reply for r in job.recipients}, self.host, madeUp=True)
        if not self.done.called:
            self.manager._connectionEnded(self)
            self.done.callback(None)


# -- the relaying manager -------------------------------------------------------------


class SmartHostSMTPRelayingManager:
    """
    Sends the queue's messages: to each recipient domain's mail exchangers
    found in the DNS (L{MXCalculator}), or all through a smart host.  See
    the module docstring for how.

    @cvar factory: makes the relayer factory for a connection, as
        C{factory(jobs, attemptManager, *fArgs, **fKwArgs)}.
    @cvar PORT: the port of mail exchangers.
    @ivar mxcalc: the L{MXCalculator}; one on the system's resolver if
        C{None}.
    @ivar managed: the relayer factories of the connections in progress,
        each with the jobs it has not answered yet.
    @ivar fArgs: positional arguments for the relayer factory after the
        attempt manager; if empty, the relay's own (its host name, TLS
        options, and for the smart host its password).
    @ivar fKwArgs: keyword arguments for the relayer factory.
    @ivar stats: counts for this run: C{delivered}, C{deferred}, C{failed}
        (recipients) and C{reports} (reports queued).
    @ivar outcomeListeners: callables told of each recorded attempt, as
        C{listener(envelope, result, started, now)} with the
        L{AttemptResult} and when the attempt started and ended.
    @ivar softBounce: whether permanent failures are deferred instead
        (see L{__init__}).
    """

    factory = SMTPManagedRelayerFactory
    PORT = 25
    mxcalc = None
    maxActiveMessages = 10000

    def __init__(
        self,
        queue,
        maxConnections: int = 2,
        maxMessagesPerConnection: int = 10,
        *,
        smartHost: SmartHost | str | None = None,
        maxConnectionsPerDestination: int | None = None,
        schedule: RetrySchedule | None = None,
        hostname: str | None = None,
        tls: TLSPolicy | None = None,
        tlsPolicies: dict | None = None,
        port: int | None = None,
        mxcalc: MXCalculator | None = None,
        reactor=None,
        connectTimeout: float = 30.0,
        timeout: float = 300.0,
        maxAddresses: int = 5,
        delayWarning: float | None = None,
        returnLimit: int | None = DEFAULT_RETURN_LIMIT,
        connectionCacheTime: float = 2.0,
        softBounce: bool = False,
    ) -> None:
        """
        @param queue: the L{Queue} (or L{mailproto.testing.MemoryQueue}).
        @param maxConnections: connections open at once, overall.
        @param maxMessagesPerConnection: jobs given to one connection.
        @param smartHost: the host to send everything through (a
            L{SmartHost}, or C{"host:port"}); by MX records if C{None}.
        @param maxConnectionsPerDestination: connections open at once to
            one destination; C{maxConnections} if C{None}.
        @param schedule: the L{RetrySchedule}; Postfix's if C{None}.
        @param hostname: the relay's name, for EHLO and the reports;
            the machine's if C{None}.
        @param tls: the TLS policy for mail exchangers (L{MAY} if C{None}).
        @param tlsPolicies: TLS policies for some domains, by domain.
        @param port: the mail exchangers' port; L{PORT} if C{None}.
        @param mxcalc: the L{MXCalculator}.
        @param reactor: the reactor (TCP, SSL, time); the global one if
            C{None}.
        @param connectTimeout: seconds to wait for a connection.
        @param timeout: seconds to wait for each reply.
        @param maxAddresses: how many addresses one connection tries.
        @param delayWarning: after how many seconds in the queue a sender
            is told once that delivery is delayed (for recipients whose
            NOTIFY allows it); never if C{None}.
        @param returnLimit: the largest message returned whole in a report.
        @param connectionCacheTime: how long a connection with nothing
            more to send waits for more mail to its destination before it
            says QUIT (0: not at all).
        @param softBounce: whether every permanent failure (a C{5xx} reply,
            or the relay's own, as a domain that does not exist) defers
            the recipient instead, as Postfix's C{soft_bounce}: for
            testing a new setup without returning mail.  Messages still
            expire after the schedule's lifetime.
        """
        if reactor is None:
            from twisted.internet import reactor
        if maxConnections < 1 or maxMessagesPerConnection < 1:
            raise ValueError("maxConnections and maxMessagesPerConnection must be at least 1")
        self.queue = queue
        self.maxConnections = maxConnections
        self.maxMessagesPerConnection = maxMessagesPerConnection
        self.maxConnectionsPerDestination = maxConnectionsPerDestination or maxConnections
        if isinstance(smartHost, str):
            smartHost = SmartHost.fromString(smartHost)
        self.smartHost = smartHost
        self.schedule = schedule or RetrySchedule()
        self.hostname = hostname or socket.getfqdn()
        self.tls = tls or TLSPolicy(MAY)
        self.tlsPolicies = {_domainKey(d): p for d, p in (tlsPolicies or {}).items()}
        if port is not None:
            self.PORT = port
        if mxcalc is not None:
            self.mxcalc = mxcalc
        self.reactor = reactor
        self.connectTimeout = connectTimeout
        self.timeout = timeout
        self.maxAddresses = maxAddresses
        self.delayWarning = delayWarning
        self.returnLimit = returnLimit
        self.managed: dict = {}
        self.fArgs: tuple = ()
        self.fKwArgs: dict = {}
        self.running = False
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = 0
        self._inFlight: dict[str, _MessageAttempt] = {}
        self._lines: dict[str, collections.deque] = {}
        self._open: collections.Counter = collections.Counter()
        self._connections = 0
        self._parked: dict[str, list] = {}
        self.connectionCacheTime = connectionCacheTime
        self.softBounce = softBounce
        self._timer = None
        self._wakeCall = None
        self._idle: list[defer.Deferred] = []
        self.stats = collections.Counter()
        self.outcomeListeners: list = []

    def __getstate__(self):
        state = self.__dict__.copy()
        state["managed"] = {}
        return state

    # -- running ------------------------------------------------------------

    def start(self) -> None:
        """
        Start sending: every queued message is scheduled, and new ones are
        sent as soon as they are committed.  Recover the queue first.
        """
        if self.running:
            return
        self.running = True
        if self.softBounce:
            _log.warn("Soft bounce is on: permanent failures are deferred, not returned to their senders")
        self.queue.listeners.append(self._queued)
        for queueID in self.queue.ids():
            self._schedule(self.queue.getEnvelope(queueID))
        self._wake()

    def stop(self) -> None:
        """
        Stop starting connections and attempts; those in progress go on to
        their end (their messages stay queued either way).
        """
        if not self.running:
            return
        self.running = False
        if self._queued in self.queue.listeners:
            self.queue.listeners.remove(self._queued)
        for call in (self._timer, self._wakeCall):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._wakeCall = None
        for entries in list(self._parked.values()):
            for entry in list(entries):
                self._unpark(entry, [])

    def whenIdle(self) -> defer.Deferred:
        """
        @return: a C{Deferred} that fires once no attempt is in progress.
        """
        d = defer.Deferred()
        if not self._inFlight:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    def checkState(self):
        """
        Start attempts for every due message, as far as the connection
        limits allow (twisted.mail's periodic entry point; the manager
        also runs by itself once L{start}ed).

        @return: a C{Deferred} that fires when the connections this call
            opened are over, or C{None} if it opened none.
        """
        if not self.running:
            for envelope in self.queue.due(self._now()):
                self._schedule(envelope)
        started = self._run()
        if not started:
            return None
        return defer.DeferredList([c.done for c in started])

    # -- what an operator asks for -----------------------------------------

    def inFlight(self) -> list[str]:
        """
        @return: the queue ids of the messages being sent now.
        """
        return sorted(self._inFlight)

    def flush(self, queueID: str | None = None) -> list[str]:
        """
        Try waiting messages now rather than at their next attempt (a
        message being sent is left to its attempt).

        @param queueID: the one message to try, or C{None} for all.
        @return: the ids of the messages made due.
        @raise KeyError: if C{queueID} is not queued.
        """
        ids = self.queue.ids() if queueID is None else [self.queue.getEnvelope(queueID).id]
        now = self._now()
        due = []
        for each in ids:
            envelope = self.queue.getEnvelope(each)
            if each in self._inFlight or not envelope.waiting:
                continue
            envelope.nextAttempt = min(envelope.nextAttempt, now)
            self._schedule(envelope)
            due.append(each)
        self._wake()
        return due

    def requeue(self, queueID: str) -> defer.Deferred:
        """
        Start a message's retries over: its attempt count back to 0 (so
        the next delay is the schedule's first), no delay warning sent, and
        due now.  Its lifetime still counts from when it arrived.

        @return: a C{Deferred} that fires when the new state is on disk.
        @raise KeyError: if C{queueID} is not queued.
        @raise ValueError: if it is being sent now.
        """
        envelope = self.queue.getEnvelope(queueID)
        if queueID in self._inFlight:
            raise ValueError(f"{queueID} is being sent now; try again when the attempt is over")
        envelope.attempts = 0
        envelope.warned = False
        envelope.nextAttempt = self._now()
        d = self.queue.update(envelope)
        self._schedule(envelope)
        self._wake()
        _log.info("Requeued {queueID}", queueID=queueID)
        return d

    def delete(self, queueID: str) -> defer.Deferred:
        """
        Take a message out of the queue without sending it on or reporting
        it to its sender.

        @return: a C{Deferred} that fires when it is gone.
        @raise KeyError: if C{queueID} is not queued.
        @raise ValueError: if it is being sent now.
        """
        self.queue.getEnvelope(queueID)
        if queueID in self._inFlight:
            raise ValueError(f"{queueID} is being sent now; try again when the attempt is over")
        _log.info("Deleted {queueID}", queueID=queueID)
        return self.queue.remove(queueID)

    def _queued(self, envelope: Envelope) -> None:
        self._schedule(envelope)
        self._wake()

    def _schedule(self, envelope: Envelope) -> None:
        if envelope.waiting:
            self._sequence += 1
            heapq.heappush(self._heap, (envelope.nextAttempt, self._sequence, envelope.id))

    def _wake(self) -> None:
        """
        Run soon, once for everything that happened in this turn of the
        reactor (so that messages arriving together share connections).
        """
        if self.running and self._wakeCall is None:
            self._wakeCall = self.reactor.callLater(0, self._wakeUp)

    def _wakeUp(self) -> None:
        self._wakeCall = None
        self._run()

    def _now(self) -> float:
        return self.reactor.seconds()

    def _run(self) -> list[_Connection]:
        now = self._now()
        heap = self._heap
        while heap and heap[0][0] <= now and len(self._inFlight) < self.maxActiveMessages:
            _, _, queueID = heapq.heappop(heap)
            try:
                envelope = self.queue.getEnvelope(queueID)
            except KeyError:
                continue
            if queueID in self._inFlight or envelope.nextAttempt > now or not envelope.waiting:
                continue
            self._startAttempt(envelope)
        started = self._dispatch()
        self._rearm()
        return started

    def _rearm(self) -> None:
        if not self.running:
            return
        heap = self._heap
        while heap:
            when, _, queueID = heap[0]
            try:
                envelope = self.queue.getEnvelope(queueID)
            except KeyError:
                heapq.heappop(heap)
                continue
            if queueID in self._inFlight or envelope.nextAttempt != when or not envelope.waiting:
                heapq.heappop(heap)
                continue
            break
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if heap and len(self._inFlight) < self.maxActiveMessages:
            delay = max(heap[0][0] - self._now(), 0)
            self._timer = self.reactor.callLater(delay, self._wakeUp)

    def _destinationOf(self, recipient: Recipient) -> str | None:
        if self.smartHost is not None:
            return SMARTHOST
        try:
            domain = Address(recipient.address).domain
        except AddressError:
            return None
        return _domainKey(domain) or None

    def _sortRecipients(self, envelope: Envelope) -> tuple[dict[str, list[Recipient]], dict[bytes, tuple[int, str]]]:
        """
        Split a message's waiting recipients by destination.

        @return: the recipients by destination, and the relay's own reply
            for each recipient that cannot be sent anywhere: an address
            that would not go on the wire (as one queued before its
            domain was checked), or no domain to deliver to.
        """
        byDestination: dict[str, list[Recipient]] = {}
        refused: dict[bytes, tuple[int, str]] = {}
        senderRefusal = _senderRefusal(envelope)
        for recipient in envelope.waiting:
            refusal = senderRefusal or _recipientRefusal(recipient)
            destination = None if refusal is not None else self._destinationOf(recipient)
            if refusal is None and destination is None:
                refusal = (550, "5.1.2 No domain to deliver to")
            if refusal is not None:
                refused[recipient.address] = refusal
                _log.warn(
                    "Cannot send {queueID} to <{recipient}>: {reply}",
                    queueID=envelope.id,
                    recipient=_show(recipient.address),
                    reply=f"{refusal[0]} {refusal[1]}",
                )
            else:
                byDestination.setdefault(destination, []).append(recipient)
        return byDestination, refused

    def _startAttempt(self, envelope: Envelope) -> None:
        attempt = _MessageAttempt(envelope)
        attempt.started = self._now()
        self._inFlight[envelope.id] = attempt
        self.queue.setRelaying(envelope.id)
        byDestination, refused = self._sortRecipients(envelope)
        nowhere = [r for r in envelope.waiting if r.address in refused]
        opener = self._opener(envelope.id)
        jobs = [_Job(envelope, rcpts, destination, attempt, opener, self.queue.getPath(envelope.id)) for destination, rcpts in byDestination.items()]
        attempt.unanswered = len(jobs) + (1 if nowhere else 0)
        if envelope.attempts:
            # (The first attempt follows the "Queued" line at once.)
            _log.info(
                "Attempt {attempt} for {queueID} to {destinations}",
                attempt=envelope.attempts + 1,
                queueID=envelope.id,
                destinations=sorted(byDestination),
            )
        for job in jobs:
            self._lines.setdefault(job.destination, collections.deque()).append(job)
        if nowhere:
            self._jobAnswered(_Job(envelope, nowhere, "", attempt), refused, None)

    def _opener(self, queueID: str):
        return lambda: self.queue.openMessage(queueID)

    def _dispatch(self) -> list[_Connection]:
        started = []
        if not self.running and not self._lines:
            return started
        for destination in list(self._lines):
            line = self._lines[destination]
            parked = self._parked.get(destination)
            while line and parked:
                entry = parked[0]
                room = self.maxMessagesPerConnection - len(entry[0].jobs)
                self._unpark(entry, [line.popleft() for _ in range(min(room, len(line)))])
            while line and self._connections < self.maxConnections and self._open[destination] < self.maxConnectionsPerDestination:
                jobs = [line.popleft() for _ in range(min(self.maxMessagesPerConnection, len(line)))]
                connection = _Connection(self, destination, jobs)
                self._connections += 1
                self._open[destination] += 1
                started.append(connection)
                connection.start()
            if not line:
                del self._lines[destination]
        return started

    # -- connections ---------------------------------------------------------

    def tlsPolicyFor(self, destination: str) -> TLSPolicy:
        """
        @return: the L{TLSPolicy} for a destination.
        """
        if destination == SMARTHOST and self.smartHost is not None:
            return self.smartHost.tls
        return self.tlsPolicies.get(destination, self.tls)

    def _route(self, destination: str) -> defer.Deferred:
        if destination == SMARTHOST:
            host = self.smartHost.host
            return defer.succeed(Destination(host, (Candidate(0, host, (host,)),)))
        if self.mxcalc is None:
            self.mxcalc = MXCalculator(clock=self.reactor)
        return self.mxcalc.getRoute(destination)

    def _connectTo(self, connection: _Connection, address: str, jobs: list[_Job]) -> None:
        manager = _AttemptManager(self, reactor=self.reactor, connection=connection)
        factory = self._makeFactory(jobs, manager, connection)
        self.managed[factory] = list(jobs)
        smartHost = self.smartHost if connection.destination == SMARTHOST else None
        port = smartHost.port if smartHost is not None else self.PORT
        if smartHost is not None and smartHost.implicitTLS:
            self.reactor.connectSSL(address, port, factory, connection.tls.contextFor(smartHost.host), timeout=self.connectTimeout)
        else:
            self.reactor.connectTCP(address, port, factory, timeout=self.connectTimeout)

    def _makeFactory(self, jobs, manager, connection):
        if self.fArgs:
            return self.factory(jobs, manager, *self.fArgs, **self.fKwArgs)
        return self.factory(jobs, manager, self.hostname, **self.fKwArgs)

    def configureRelayer(self, relayer, connection: _Connection | None) -> None:
        """
        Set up a relayer for its connection: timeout, and for ESMTP the
        TLS policy and the smart host's credentials.  Subclasses may
        extend it.
        """
        relayer.timeout = self.timeout
        # Its time-outs run on the manager's clock, like everything else.
        relayer.callLater = self.reactor.callLater
        if connection is None or not isinstance(relayer, ESMTPClient):
            return
        tls = connection.tls
        smartHost = self.smartHost if connection.destination == SMARTHOST else None
        name = smartHost.host if smartHost is not None else (connection.host or connection.destination)
        implicit = smartHost is not None and smartHost.implicitTLS
        if relayer.context is None and tls.mode != NONE and not implicit and not connection.plaintext:
            relayer.context = tls.contextFor(name)
        if tls.required:
            relayer.requireTransportSecurity = True
            relayer.heloFallback = False
        if smartHost is not None and smartHost.username is not None:
            relayer.secret = smartHost.password
            relayer.requireAuthentication = True
            relayer.heloFallback = False
            relayer.registerAuthenticator(CramMD5ClientAuthenticator(smartHost.username))
            relayer.registerAuthenticator(LOGINAuthenticator(smartHost.username))
            relayer.registerAuthenticator(PLAINAuthenticator(smartHost.username))

    def _moreJobs(self, connection: _Connection) -> list[_Job]:
        if not self.running:
            return []
        line = self._lines.get(connection.destination)
        room = self.maxMessagesPerConnection - len(connection.jobs)
        if not line or room <= 0:
            return []
        jobs = [line.popleft() for _ in range(min(room, len(line)))]
        if not line:
            del self._lines[connection.destination]
        return jobs

    def _park(self, connection: _Connection, factory, relayer) -> bool:
        if not self.running or self.connectionCacheTime <= 0 or len(connection.jobs) >= self.maxMessagesPerConnection:
            return False
        entry = [connection, factory, relayer, None]
        entry[3] = self.reactor.callLater(self.connectionCacheTime, self._unpark, entry, [])
        self._parked.setdefault(connection.destination, []).append(entry)
        return True

    def _unpark(self, entry: list, jobs: list[_Job]) -> None:
        connection, factory, relayer, timer = entry
        self._forgetParked(entry)
        if jobs:
            self.managed.setdefault(factory, []).extend(jobs)
            connection.jobs.extend(jobs)
        relayer.resume(jobs)

    def _forgetParked(self, entry: list) -> None:
        connection, _, _, timer = entry
        parked = self._parked.get(connection.destination, [])
        if entry in parked:
            parked.remove(entry)
            if not parked:
                del self._parked[connection.destination]
        if timer is not None and timer.active():
            timer.cancel()

    def _connectionEnded(self, connection: _Connection) -> None:
        for entry in list(self._parked.get(connection.destination, [])):
            if entry[0] is connection:
                self._forgetParked(entry)
        self._connections -= 1
        self._open[connection.destination] -= 1
        if self._open[connection.destination] <= 0:
            del self._open[connection.destination]
        self._wake()

    # -- results -----------------------------------------------------------------

    def _jobAnswered(self, job: _Job, replies: dict, host: str | None, madeUp: bool = False) -> None:
        """
        A job has its replies: from the server, or (C{madeUp}) the relay's
        own, for a connection that failed.
        """
        if job.answered:
            return
        job.answered = True
        job.close()
        attempt = job.attempt
        if attempt is None:
            return
        if madeUp and not self.running:
            # Cut by the relay's own stop: no outcome for these recipients.
            attempt.interrupted = True
            replies = {}
        if self.softBounce:
            replies = {address: reply if reply is None else _softened(*reply) for address, reply in replies.items()}
        for recipient in job.recipients:
            reply = replies.get(recipient.address)
            if reply is not None:
                attempt.replies[recipient.address] = reply
                if host is not None:
                    attempt.hosts[recipient.address] = host
                    if not job.dsn:
                        attempt.withoutDSN.add(recipient.address)
        attempt.unanswered -= 1
        if attempt.unanswered == 0:
            self._record(attempt)

    def _record(self, attempt: _MessageAttempt) -> None:
        envelope = attempt.envelope
        now = self._now()
        if attempt.interrupted and not attempt.replies:
            # The relay stopped before anyone answered: the state on disk
            # stays as it was, and the next start tries again at once.
            self._settled(envelope)
            return
        result = recordAttempt(envelope, attempt.replies, now, self.schedule)
        if attempt.interrupted and result.deferred:
            envelope.nextAttempt = now
        for recipient in result.delivered:
            self.stats["delivered"] += 1
            _log.info(
                "Delivered {queueID} to <{recipient}> via {host}: {reply}",
                queueID=envelope.id,
                recipient=_show(recipient.address),
                host=attempt.hosts.get(recipient.address),
                reply=recipient.lastReply,
            )
        for recipient in result.deferred:
            self.stats["deferred"] += 1
            _log.info(
                "Deferred {queueID} for <{recipient}> until {nextAttempt}: {reply}",
                queueID=envelope.id,
                recipient=_show(recipient.address),
                nextAttempt=envelope.nextAttempt,
                reply=recipient.lastReply,
            )
        for recipient in result.failed:
            self.stats["failed"] += 1
            _log.info(
                "Failed {queueID} for <{recipient}>: {reply}",
                queueID=envelope.id,
                recipient=_show(recipient.address),
                reply=recipient.lastReply,
            )
        for listener in self.outcomeListeners:
            try:
                listener(envelope, result, attempt.started, now)
            except Exception:
                _log.failure("Outcome listener failed for {queueID}", queueID=envelope.id)
        reports = []
        if result.failed:
            reports.append(defer.maybeDeferred(self._report, envelope, result.failed, "failed", attempt, now))
        # RFC 3461 section 5.2.2: a server without DSN cannot report the
        # delivery a recipient asked to hear of; the relay says "relayed".
        relayed = [r for r in result.delivered if r.address in attempt.withoutDSN and r.notify and b"SUCCESS" in (n.upper() for n in r.notify)]
        if relayed:
            reports.append(defer.maybeDeferred(self._report, envelope, relayed, "relayed", attempt, now))
        if result.deferred and self.delayWarning is not None and not envelope.warned and now - envelope.received >= self.delayWarning:
            envelope.warned = True
            reports.append(defer.maybeDeferred(self._report, envelope, result.deferred, "delayed", attempt, now))
        d = defer.gatherResults(reports, consumeErrors=True)
        d.addCallback(lambda _: self._save(envelope))
        d.addErrback(self._notSaved, attempt, result, now)
        d.addBoth(lambda _: self._settled(envelope))

    def _save(self, envelope: Envelope) -> defer.Deferred:
        if envelope.waiting:
            return self.queue.update(envelope)
        # Done: its last recipient's line (delivered, or failed) said so.
        return self.queue.remove(envelope.id)

    def _notSaved(self, failure: Failure, attempt: _MessageAttempt, result, now: float) -> None:
        # A report could not be queued, or the state not written: the
        # message stays as it was on disk, and is tried again later.
        envelope = attempt.envelope
        if failure.check(defer.FirstError):
            failure = failure.value.subFailure
        _log.failure("Could not record the attempt for {queueID}; it will be tried again", failure, queueID=envelope.id)
        for recipient in result.failed:
            recipient.state = WAITING
        envelope.nextAttempt = now + self.schedule.delay(max(envelope.attempts, 1))

    def _settled(self, envelope: Envelope) -> None:
        self._inFlight.pop(envelope.id, None)
        self.queue.setWaiting(envelope.id)
        try:
            self.queue.getEnvelope(envelope.id)
        except KeyError:
            pass
        else:
            self._schedule(envelope)
        if not self._inFlight:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
        self._rearm()

    def _report(self, envelope: Envelope, recipients: list[Recipient], action: str, attempt: _MessageAttempt, now: float):
        """
        Queue a delivery status notification to the sender.

        @return: a C{Deferred} that fires once it is queued, or C{None} if
            there is none to send.
        """
        if not envelope.sender:
            return None
        try:
            _wireAddress(envelope.sender)
        except AddressError:
            _log.warn("No {action} report for {queueID}: its sender cannot be sent to", action=action, queueID=envelope.id)
            return None
        willRetryUntil = envelope.received + self.schedule.lifetime if action == "delayed" else None
        reports = [_recipientReport(r, action, attempt.hosts.get(r.address), now, willRetryUntil) for r in recipients]
        bounceID = newMessageID(now)
        message = self.queue.openMessage(envelope.id)
        try:
            report = makeReport(
                DeliveryReport(
                    reportingMTA=self.hostname,
                    sender=envelope.sender,
                    recipients=tuple(reports),
                    envid=envelope.envid,
                    ret=envelope.ret,
                    arrivalDate=envelope.received,
                    message=message,
                ),
                date=now,
                messageID=f"<{bounceID}@{self.hostname}>",
                returnLimit=self.returnLimit,
            )
        finally:
            message.close()
        if report is None:
            return None
        bounce = Envelope(
            id=bounceID,
            sender=b"",
            recipients=[Recipient(address) for address in report.recipients],
            received=now,
            body=None if report.message.isascii() else b"8BITMIME",
            smtputf8=not all(a.isascii() for a in report.recipients),
            client="localhost",
            helo=self.hostname,
        )
        spool = self.queue.newMessage(bounce)
        try:
            spool.write(report.message)
        except BaseException:
            spool.abort()
            raise
        d = spool.commit()

        def queued(_):
            self.stats["reports"] += 1
            _log.info(
                "Queued {reportID}: {action} report for {queueID} to <{sender}>",
                reportID=bounce.id,
                action=action,
                queueID=envelope.id,
                sender=_show(envelope.sender),
            )

        return d.addCallback(queued)


class SmartHostESMTPRelayingManager(SmartHostSMTPRelayingManager):
    """
    The relaying manager with ESMTP relayers: the one to use.  With
    C{fArgs} empty, each relayer gets the relay's host name, the TLS policy
    of its destination and, for a smart host, its credentials.
    """

    factory = ESMTPManagedRelayerFactory

    def _makeFactory(self, jobs, manager, connection):
        if self.fArgs:
            return self.factory(jobs, manager, *self.fArgs, **self.fKwArgs)
        return self.factory(jobs, manager, None, None, self.hostname, **self.fKwArgs)


def _domainKey(domain) -> str:
    if isinstance(domain, bytes):
        domain = domain.decode("utf-8", "replace")
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("["):
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _recipientReport(recipient: Recipient, action: str, host: str | None, now: float, willRetryUntil) -> RecipientReport:
    """
    The report on one recipient.  An address that does not parse is
    reported as queued; DSN parameters that do not fit a report (from a
    queue file edited by hand) are left out of it rather than losing the
    report.
    """
    status, diagnostic = _statusAndDiagnostic(recipient.lastReply, action)
    try:
        address = _wireAddress(recipient.address)
    except AddressError:
        address = UnparsedAddress(recipient.address)
    fields = dict(address=address, action=action, status=status, diagnostic=diagnostic, remoteMTA=host, lastAttempt=now, willRetryUntil=willRetryUntil)
    try:
        return RecipientReport(originalRecipient=recipient.orcpt, notify=recipient.notify, **fields)
    except (ValueError, TypeError):
        return RecipientReport(**fields)


def _show(address: bytes) -> str:
    return address.decode("utf-8", "replace")


def _statusAndDiagnostic(lastReply: str | None, action: str) -> tuple[str, object]:
    """
    The RFC 3463 status and the diagnostic for a report, from a
    recipient's last reply (C{"550 5.1.1 No such user"}, or for an expiry
    C{"4.4.7 Message expired ..."}).
    """
    if action == "relayed":
        return "2.0.0", None
    default = "4.0.0" if action == "delayed" else "5.0.0"
    if not lastReply:
        return default, None
    head, _, rest = lastReply.partition(" ")
    if head.isdigit() and len(head) == 3:
        status = statusOf(int(head), rest.encode("utf-8", "replace"))
        status = status.decode("ascii") if status else f"{head[0]}.0.0"
        if action == "delayed" and not status.startswith("4"):
            status = default
        if action == "failed" and status[0] not in "45":
            status = default
        return status, lastReply
    first = head.split(".")
    if len(first) == 3 and all(p.isdigit() for p in first) and head[0] in "45":
        return head, ("x-mailproto", lastReply)
    return default, ("x-mailproto", lastReply)


def _checkState(manager) -> None:
    manager.checkState()


def RelayStateHelper(manager, delay: float) -> TimerService:
    """
    A service that prompts a relaying manager to check the queue every
    C{delay} seconds (twisted.mail's way of driving it; a started
    manager also runs by itself).
    """
    return TimerService(delay, _checkState, manager)
