# -*- test-case-name: mailproto.test.test_testing -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Helpers for testing code that sends or receives mail with mailproto, in
memory, without sockets or real time.

  - L{MemoryDelivery} is an L{IMessageDelivery} that accepts (or refuses)
    senders and recipients and keeps every message it receives, as
    L{DeliveredMessage} records.
  - L{connectInMemory} connects a server protocol and a client protocol
    through in-memory transports and returns the pump that moves bytes
    between them.

A test of an application's own client against a mailproto server::

    from mailproto.smtp import ESMTPFactory
    from mailproto.testing import MemoryDelivery, connectInMemory

    delivery = MemoryDelivery()
    server = ESMTPFactory(delivery=delivery, domain=b"mx.example").buildProtocol(None)
    pump = connectInMemory(server, myClientProtocol)
    pump.flush()
    [message] = delivery.messages
    assert message.recipient == b"rcpt@example.com"
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.test import iosim
from zope.interface import implementer

from mailproto._address import Address, User
from mailproto._errors import SMTPBadRcpt, SMTPBadSender
from mailproto.interfaces import IMessageDelivery, IMessageStream

__all__ = ["DeliveredMessage", "MemoryDelivery", "MemoryMessage", "connectInMemory"]


class DeliveredMessage:
    """
    One message as a server delivered it, for one recipient.

    @ivar helo: the client's C{(HELO argument, address)}.
    @ivar sender: the envelope sender.
    @type sender: L{Address}
    @ivar recipient: the envelope recipient.
    @type recipient: L{Address}
    @ivar mail: the C{MAIL} command with its ESMTP parameters (SIZE, BODY,
        SMTPUTF8, RET, ENVID, ...).
    @type mail: L{mailproto.wire.MailFrom} or L{None}
    @ivar rcpt: the C{RCPT} command with its ESMTP parameters (NOTIFY,
        ORCPT).
    @type rcpt: L{mailproto.wire.RcptTo} or L{None}
    @ivar data: the message as received: headers and body, lines ending in
        CRLF, dot-unstuffed, with the trace header the server added, if
        any.
    @type data: L{bytes}
    """

    def __init__(self, user: User, data: bytes) -> None:
        self.helo = user.helo
        self.sender = user.orig
        self.recipient = user.dest
        self.mail = user.mail
        self.rcpt = user.rcpt
        self.data = data

    def __repr__(self) -> str:
        return f"<DeliveredMessage from {str(self.sender)!r} to {str(self.recipient)!r}, {len(self.data)} octets>"


@implementer(IMessageStream)
class MemoryMessage:
    """
    A message being received by a L{MemoryDelivery}.

    @ivar chunks: the data received so far.
    @ivar lost: whether the message was abandoned.
    """

    def __init__(self, delivery: MemoryDelivery, user: User) -> None:
        self.delivery = delivery
        self.user = user
        self.chunks: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def lineReceived(self, line: bytes) -> None:
        self.chunks.append(line + b"\r\n")

    def eomReceived(self) -> defer.Deferred:
        if self.delivery.failDelivery is not None:
            return defer.fail(self.delivery.failDelivery)
        self.delivery.messages.append(DeliveredMessage(self.user, b"".join(self.chunks)))
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self.lost = True
        self.delivery.lost.append(self)


@implementer(IMessageDelivery)
class MemoryDelivery:
    """
    An L{IMessageDelivery} that keeps messages in memory.

    By default it accepts every sender and recipient and adds no trace
    header.

    @ivar messages: the messages delivered, one per recipient, in order.
    @type messages: L{list} of L{DeliveredMessage}
    @ivar lost: the L{MemoryMessage}s abandoned before their end.
    @ivar senders: the senders validated, in order, as L{Address}es.
    @ivar refuseSenders: addresses (L{bytes}, C{b"local@domain"}) to refuse
        with C{550 5.7.1}.
    @ivar refuseRecipients: addresses to refuse with C{550 5.1.1}.
    @ivar failDelivery: an exception with which every message fails at its
        end, or L{None}.
    @ivar receivedHeaderText: the trace header to add, or L{None}.
    """

    def __init__(
        self,
        refuseSenders=(),
        refuseRecipients=(),
        failDelivery: Exception | None = None,
        receivedHeader: bytes | None = None,
    ) -> None:
        """
        @param refuseSenders: see L{MemoryDelivery.refuseSenders}.
        @param refuseRecipients: see L{MemoryDelivery.refuseRecipients}.
        @param failDelivery: see L{MemoryDelivery.failDelivery}.
        @param receivedHeader: see L{MemoryDelivery.receivedHeaderText}.
        """
        self.messages: list[DeliveredMessage] = []
        self.lost: list[MemoryMessage] = []
        self.senders: list[Address] = []
        self.refuseSenders = {_asBytes(a) for a in refuseSenders}
        self.refuseRecipients = {_asBytes(a) for a in refuseRecipients}
        self.failDelivery = failDelivery
        self.receivedHeaderText = receivedHeader

    def receivedHeader(self, helo, origin, recipients):
        return self.receivedHeaderText

    def validateFrom(self, helo, origin):
        if bytes(origin) in self.refuseSenders:
            raise SMTPBadSender(origin)
        self.senders.append(origin)
        return origin

    def validateTo(self, user):
        if bytes(user.dest) in self.refuseRecipients:
            raise SMTPBadRcpt(user)
        return lambda: MemoryMessage(self, user)


def _asBytes(address) -> bytes:
    return address.encode("utf-8") if isinstance(address, str) else bytes(address)


def connectInMemory(server, client, clock=None, serverAddress=None, clientAddress=None) -> iosim.IOPump:
    """
    Connect two protocols through in-memory transports.

    @param server: the server protocol (for example from
        C{factory.buildProtocol(None)}).
    @param client: the client protocol.
    @param clock: the clock the pump advances a little each time it moves
        data; a new L{MemoryReactorClock} if L{None}.
    @param serverAddress: the server's address as both sides see it;
        C{127.0.0.1:25} if L{None}.
    @param clientAddress: the client's address; C{127.0.0.1:54321} if
        L{None}.
    @return: the pump: C{pump.flush()} moves bytes both ways until neither
        side has anything more to say.
    @rtype: L{twisted.test.iosim.IOPump}
    """
    serverAddress = serverAddress or IPv4Address("TCP", "127.0.0.1", 25)
    clientAddress = clientAddress or IPv4Address("TCP", "127.0.0.1", 54321)
    serverTransport = iosim.FakeTransport(server, isServer=True, hostAddress=serverAddress, peerAddress=clientAddress)
    clientTransport = iosim.FakeTransport(client, isServer=False, hostAddress=clientAddress, peerAddress=serverAddress)
    return iosim.connect(server, serverTransport, client, clientTransport, greet=True, clock=clock)
