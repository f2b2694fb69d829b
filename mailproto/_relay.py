# -*- test-case-name: mailproto.test.test_relay -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Receiving mail into the relay's queue: who may relay (L{RelayPolicy}), and
the delivery that writes each accepted message into the durable queue
(L{QueueDelivery}).

One transaction is one queued message, whatever the number of its
recipients: the first recipient's message object writes the data, the
others share its result.  The server's C{250} after the data comes only
once the message and its envelope are on disk.
"""

from __future__ import annotations

import ipaddress
import time

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailproto._address import Address
from mailproto._commands import MailFrom, RcptTo
from mailproto._errors import SMTPBadRcpt, SMTPServerError
from mailproto._headerpolicy import HeaderScanner
from mailproto._queue import CHECKED, TRUSTED, UNCHECKED, Envelope, Queue, newMessageID
from mailproto._replies import Reply
from mailproto.interfaces import IMessageDelivery, IMessageDeliveryFactory, IMessageStream

_log = Logger()

LOOPBACK = ("127.0.0.0/8", "::1/128")


class RelayPolicy:
    """
    Who may send mail through the relay.

    A recipient is accepted when the client authenticated, or its address
    is in one of C{networks}, or the recipient's domain is one of
    C{domains} (mail for this relay's own inbound domains, from anyone).
    Everyone else gets C{554 5.7.1 Relay access denied}.

    With C{recipients}, a recipient of one of C{domains} is accepted only
    if it is listed there, from any client (as Postfix's
    C{relay_recipient_maps}); the others get C{550 5.1.1}.

    @ivar networks: the client networks allowed to relay.
    @ivar domains: the inbound domains, lower case.
    @ivar recipients: the valid recipients of C{domains} (a
        L{RecipientsFile <mailproto._recipients.RecipientsFile>}, or
        anything with its C{accepts(address)}), or C{None} if every
        recipient of them is accepted.
    @ivar observers: callables told C{observer(policy)} each time a
        recipient is refused because it is not in C{recipients}, with
        C{policy} C{"relay-recipients"} (for metrics).
    """

    def __init__(self, networks=LOOPBACK, domains=(), unixSockets: bool = True, recipients=None) -> None:
        """
        @param networks: CIDR strings (C{"192.0.2.0/24"}, C{"2001:db8::/32"});
            loopback only by default.
        @param domains: inbound domains (C{str} or C{bytes}).
        @param unixSockets: whether clients on a UNIX socket may relay.
        @param recipients: see L{recipients}.
        @raise ValueError: for a malformed network.
        """
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.domains = {(d.encode("idna") if isinstance(d, str) else bytes(d)).lower().rstrip(b".") for d in domains}
        self.unixSockets = unixSockets
        self.recipients = recipients
        self.observers: list = []

    def clientMayRelay(self, client: bytes, authenticated: bool) -> bool:
        """
        @param client: the client's address, as the server has it in
            C{helo[1]} (C{b"unix"} for a UNIX socket).
        @param authenticated: whether it authenticated.
        """
        if authenticated:
            return True
        if client == b"unix":
            return self.unixSockets
        try:
            address = ipaddress.ip_address(client.decode("ascii"))
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def accepts(self, client: bytes, authenticated: bool, recipientDomain: bytes) -> bool:
        """
        @return: whether mail for a recipient in C{recipientDomain} is
            accepted from this client (whether or not the recipient is
            valid: see L{isValidRecipient}).
        """
        if self.isRelayDomain(recipientDomain):
            return True
        return self.clientMayRelay(client, authenticated)

    def isRelayDomain(self, domain: bytes) -> bool:
        """
        @return: whether C{domain} is one of L{domains}.
        """
        return domain.lower().rstrip(b".") in self.domains

    def isValidRecipient(self, address) -> bool:
        """
        @param address: a recipient, as an L{Address}.
        @return: C{False} if its domain is a relay domain and it is not
            in L{recipients}; C{True} otherwise.
        """
        if self.recipients is None or not self.isRelayDomain(address.domain):
            return True
        return self.recipients.accepts(address)

    def origin(self, client: bytes, authenticated: bool) -> str:
        """
        @return: where mail from this client comes from, as its envelope
            records it (L{TRUSTED}, L{CHECKED} or L{UNCHECKED}): a client
            that may relay is trusted; another one could only give
            recipients of relay domains, checked if there is a list of
            them.
        """
        if self.clientMayRelay(client, authenticated):
            return TRUSTED
        return CHECKED if self.recipients is not None else UNCHECKED

    def refused(self, policy: str) -> None:
        """
        Tell the L{observers} that C{policy} refused something.
        """
        for observer in self.observers:
            observer(policy)


@implementer(IMessageStream)
class _SpoolMessage:
    """
    The message of a transaction as the server sees it, once per
    recipient: the first copy writes into the queue, and every copy's end
    of message is the commit.
    """

    def __init__(self, transaction: _Transaction, primary: bool) -> None:
        self.transaction = transaction
        self.primary = primary

    def dataReceived(self, data: bytes) -> None:
        if self.primary:
            self.transaction.write(data)

    def lineReceived(self, line: bytes) -> None:
        self.dataReceived(line + b"\r\n")

    def eomReceived(self) -> defer.Deferred:
        return self.transaction.commit()

    def connectionLost(self) -> None:
        self.transaction.abort()


class _Transaction:
    """
    One message on its way into the queue.
    """

    _NOT_YET = object()

    def __init__(self, delivery: QueueDelivery, users: list) -> None:
        self.delivery = delivery
        self.users = users
        self.spool = None
        self._started = False
        self._result = self._NOT_YET
        self._waiters: list[defer.Deferred] = []
        # The delivery's header policy for this message, once the spool
        # is open (mailproto._headerpolicy), or None.
        self.scanner = None

    def _openSpool(self) -> None:
        self.spool = self.delivery._open(self.users)
        envelope = self.spool.envelope
        self.scanner = self.delivery._scanner(envelope)
        if self.scanner is None and not envelope.requireTLS:
            # No header policy: a scanner with no limits, only for
            # TLS-Required (RFC 8689), which REQUIRETLS overrides.
            self.scanner = HeaderScanner(maxHops=0, maxOwnHops=0)
        if self.delivery.dkim is not None:
            # Signs what the header policy leaves (mailproto._dkim).
            self.scanner = self.delivery.dkim.scanner(envelope, self.scanner)

    def write(self, data: bytes) -> None:
        if self.spool is None:
            self._openSpool()
        if self.scanner is not None:
            data = self.scanner.feed(data)
        self.spool.write(data)

    def commit(self) -> defer.Deferred:
        """
        @return: a C{Deferred} of its own for each copy, firing when the
            message is queued.
        """
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        if not self._started:
            self._started = True
            if self.spool is None:
                self._openSpool()
            if self.scanner is not None:
                try:
                    self.spool.write(self.scanner.close())
                except SMTPServerError:
                    self.spool.abort()
                    self.spool = None
                    self._fire(Failure())
                    return waiter
                self._noteTLSOptional()
            committed = self.spool.commit()
            committed.addCallback(self.delivery._queued)
            committed.addErrback(self.delivery._notQueued, self.spool.envelope.id)
            committed.addBoth(self._fire)
        elif self._result is not self._NOT_YET:
            self._fire(self._result)
        return waiter

    def _noteTLSOptional(self) -> None:
        """
        Keep a C{TLS-Required: No} of the message's header in its envelope
        (written with it at commit), unless the message has REQUIRETLS,
        which RFC 8689 says wins.
        """
        envelope = self.spool.envelope
        if getattr(self.scanner, "tlsOptional", False) and not envelope.requireTLS:
            envelope.tlsOptional = True

    def _fire(self, result) -> None:
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def abort(self) -> None:
        if self.spool is not None and not self._started:
            self.spool.abort()
            self.spool = None


@implementer(IMessageDelivery)
class QueueDelivery:
    """
    The delivery of one transaction into the relay's queue.  Made per
    message by L{QueueDeliveryFactory}.
    """

    def __init__(self, queue: Queue, policy: RelayPolicy, clock=None) -> None:
        self.queue = queue
        self.policy = policy
        self._clock = clock
        self._users = []
        self._transaction = None
        self._messages = 0
        self._origin = None

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.time()

    def receivedHeader(self, helo, origin, recipients):
        # A trace header without "for" when the message has several
        # recipients: each copy is the same, and none names the others.
        users = self._users
        protocol = users[0].protocol if users else None
        if protocol is None:
            return None
        return protocol._traceHeader(helo, recipients if len(users) == 1 else [])

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        protocol = user.protocol
        authenticated = bool(getattr(protocol, "authenticated", False))
        client = user.helo[1]
        if not self.policy.accepts(client, authenticated, user.dest.domain):
            raise SMTPServerError(554, "Relay access denied", b"5.7.1")
        if not self.policy.isValidRecipient(user.dest):
            _log.info(
                "Refused <{recipient}> from {client}: not a valid recipient of a relay domain",
                recipient=str(user.dest),
                client=(client or b"").decode("ascii", "replace"),
                policy="relay-recipients",
            )
            self.policy.refused("relay-recipients")
            raise SMTPBadRcpt(user.dest, 550, f"<{user.dest}>: Recipient address rejected: User unknown in relay recipient table", b"5.1.1")
        self._origin = self.policy.origin(client, authenticated)
        self._users.append(user)
        return self._messageFor

    def _messageFor(self) -> _SpoolMessage:
        if self._transaction is None:
            self._transaction = _Transaction(self, list(self._users))
            return _SpoolMessage(self._transaction, primary=True)
        return _SpoolMessage(self._transaction, primary=False)

    def _open(self, users: list):
        first = users[0]
        # A User made by mailproto's server carries the parsed commands; one
        # made elsewhere has the addresses only.
        mail = getattr(first, "mail", None) or MailFrom(Address(first.orig))
        rcpts = [getattr(user, "rcpt", None) or RcptTo(Address(user.dest)) for user in users]
        protocol = first.protocol
        helo = first.helo or (None, b"")
        envelope = Envelope.fromCommands(
            newMessageID(self._now()),
            mail,
            rcpts,
            received=self._now(),
            client=(helo[1] or b"").decode("ascii", "replace"),
            helo=(helo[0] or b"").decode("utf-8", "replace"),
            user=_text(getattr(protocol, "authenticatedUser", None)),
            origin=self._origin,
        )
        return self.queue.newMessage(envelope)

    def _queued(self, envelope: Envelope) -> Reply:
        """
        @return: the reply to the end of data, naming the queue id (as
            Postfix's C{queued as}), so that a client's log and the
            relay's can be matched.
        """
        _log.info(
            "Queued {queueID} from <{sender}> for {to} ({size} octets) from {client}",
            queueID=envelope.id,
            client=envelope.client,
            user=envelope.user,
            sender=envelope.sender.decode("utf-8", "replace"),
            recipients=[r.address.decode("utf-8", "replace") for r in envelope.recipients],
            to=", ".join(f"<{r.address.decode('utf-8', 'replace')}>" for r in envelope.recipients),
            size=envelope.size,
        )
        return Reply(250, [b"Ok: queued as " + envelope.id.encode("ascii")], b"2.0.0")

    def _notQueued(self, failure, queueID: str):
        _log.failure("Could not queue {queueID}", failure, queueID=queueID)
        raise SMTPServerError(451, "Could not queue the message; try again later", b"4.3.0")

    #: The header policy (L{mailproto._headerpolicy.IntakePolicy}) or C{None}.
    intake = None

    #: The DKIM signer (L{mailproto._dkim.DKIMSigner}) or C{None}.
    dkim = None

    def _scanner(self, envelope: Envelope):
        """
        @return: what the message's data passes through on its way into
            the queue (a L{mailproto._headerpolicy.HeaderScanner}), or C{None}.
        """
        return self.intake.scanner(envelope) if self.intake is not None else None


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@implementer(IMessageDeliveryFactory)
class QueueDeliveryFactory:
    """
    Gives the server a L{QueueDelivery} for each message.
    """

    def __init__(self, queue: Queue, policy: RelayPolicy | None = None, clock=None, intake=None, dkim=None) -> None:
        """
        @param queue: the queue to write into.
        @param policy: who may relay; loopback clients only if C{None}.
        @param clock: the clock for arrival times; real time if C{None}.
        @param intake: the header policy (loop detection), a
            L{mailproto._headerpolicy.IntakePolicy}, or C{None}.
        @param dkim: the DKIM signer, a L{mailproto._dkim.DKIMSigner}, or
            C{None}.
        """
        self.queue = queue
        self.policy = policy or RelayPolicy()
        self.clock = clock
        self.intake = intake
        self.dkim = dkim

    def getMessageDelivery(self) -> QueueDelivery:
        delivery = QueueDelivery(self.queue, self.policy, self.clock)
        delivery.intake = self.intake
        delivery.dkim = self.dkim
        return delivery


class DomainQueuer:
    """
    twisted.mail's relaying domain: accepts mail for any address from
    clients allowed to relay, and queues each recipient's copy as a
    message of its own.

    New code should give the server a L{QueueDeliveryFactory}, which
    queues one message per transaction and knows about authenticated
    clients and inbound domains.

    @ivar service: what holds the queue, as C{service.queue}.
    @ivar authed: whether every client may relay (the connection was
        authenticated).
    @ivar policy: the L{RelayPolicy} for other clients.
    """

    def __init__(self, service, authenticated: bool = False, policy: RelayPolicy | None = None) -> None:
        self.service = service
        self.authed = authenticated
        self.policy = policy or RelayPolicy()

    def exists(self, user):
        """
        @return: a callable making the message receiver for C{user}.
        @raise SMTPBadRcpt: if the client may not relay.
        """
        if self.willRelay(user.dest, user.protocol):
            return lambda: self.startMessage(user)
        raise SMTPBadRcpt(user)

    def willRelay(self, address, protocol) -> bool:
        """
        @return: whether the client of C{protocol} may relay: an
            authenticated one, one on a UNIX socket, or one from the
            policy's networks (loopback by default).
        """
        if self.authed:
            return True
        peer = protocol.transport.getPeer()
        if isinstance(peer, UNIXAddress):
            return self.policy.unixSockets
        host = getattr(peer, "host", "")
        return self.policy.clientMayRelay(host.encode("ascii", "replace"), False)

    def startMessage(self, user):
        """
        @return: an L{IMessageStream} writing C{user}'s copy into the
            queue.
        """
        delivery = QueueDelivery(self.service.queue, self.policy)
        # Only clients that may relay get this far (willRelay).
        delivery._origin = TRUSTED
        return _SpoolMessage(_Transaction(delivery, [user]), primary=True)
