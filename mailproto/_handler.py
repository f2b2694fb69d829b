# -*- test-case-name: mailproto.test.test_handler -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
A server in one method: mail delivered to a handler object, the way
Python's old C{smtpd} (C{process_message}) and aiosmtpd (C{handle_DATA})
deliver it.

A handler provides L{IMessageHandler}: C{processMessage(peer, mailFrom,
rcptTos, data)} is called once per transaction, with every accepted
recipient and the whole message as C{bytes}.  For large messages a
handler provides L{IStreamingMessageHandler} instead and gets the message
in chunks through the L{IMessageReceiver} it returns.  A handler that also
provides L{IEnvelopeValidator} decides on each sender and recipient as
they come.

L{HandlerDeliveryFactory} turns a handler into the
L{IMessageDeliveryFactory} a server factory takes, and L{handlerFactory}
makes the whole server factory::

    from mailproto.smtp import IMessageHandler, handlerFactory

    @implementer(IMessageHandler)
    class Printer:
        def processMessage(self, peer, mailFrom, rcptTos, data):
            print(peer.host, mailFrom, rcptTos, len(data))

    factory = handlerFactory(Printer(), domain=b"mx.example")

What a handler's methods may return, in every case: C{None} (or C{True},
or a C{2xx} reply) to accept; a refusal, which the client gets as its
reply: an L{SMTPServerError} (returned or raised; L{SMTPBadRcpt},
L{SMTPBadSender}, ...), a L{Reply}, or a status line as C{str} or
C{bytes} (C{"550 5.1.1 No such user"}, as smtpd and aiosmtpd handlers
return them); or a C{Deferred} (or a coroutine) that gives one of those.
Anything else that goes wrong -- an exception of another kind, a value
that is none of these -- is logged once with its traceback and the
client gets C{451 4.3.0}: never a traceback.
"""

from __future__ import annotations

import inspect
import re
from typing import NamedTuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from mailproto._errors import SMTPBadRcpt, SMTPBadSender, SMTPServerError
from mailproto._replies import Reply, statusOf
from mailproto._server import ESMTPFactory
from mailproto.interfaces import IMessageDelivery, IMessageDeliveryFactory, IMessageStream

__all__ = [
    "HandlerDeliveryFactory",
    "IEnvelopeValidator",
    "IMessageHandler",
    "IMessageReceiver",
    "IStreamingMessageHandler",
    "Peer",
    "handlerFactory",
]

# The reply to anything unexpected, as the server gives it.
_INTERNAL_ERROR = (451, b"Requested action aborted: local error in processing", b"4.3.0")

# A status line as a handler may return it: a code, then text.
_STATUS_LINE = re.compile(rb"\A([2-5][0-9][0-9])(?:[ -](.*))?\Z", re.S)


class Peer(NamedTuple):
    """
    The client a message comes from, as a handler sees it.

    @ivar host: the client's address as the server knows it: an IP
        address (the client's own when a PROXY protocol header gave it),
        or C{"unix"} on a UNIX socket.
    @ivar heloName: the name the client gave in HELO, EHLO or LHLO.
    """

    host: str
    heloName: str

    @classmethod
    def fromHelo(cls, helo) -> Peer:
        """
        @param helo: the server's C{(HELO argument, client address)}.
        @return: the peer.
        """
        name, host = helo
        return cls(_text(host or b""), _text(name or b""))


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class IMessageHandler(Interface):
    """
    Takes each message whole: the one-method server.
    """

    def processMessage(peer, mailFrom, rcptTos, data):
        """
        A message has been received.

        @param peer: the client.
        @type peer: L{Peer}
        @param mailFrom: the sender (the reverse-path), C{"local@domain"};
            C{""} for the null sender of bounces.
        @type mailFrom: C{str}
        @param rcptTos: every recipient the server accepted for this
            message, in order.
        @type rcptTos: C{list} of C{str}
        @param data: the message as the client sent it, dot-unstuffed,
            each line ending in CRLF; no trace header added.
        @type data: C{bytes}
        @return: C{None} to accept the message; a refusal (see
            L{mailproto._handler}); or a C{Deferred} of either.
        """


class IMessageReceiver(Interface):
    """
    Takes one message in chunks, for an L{IStreamingMessageHandler}.
    """

    def dataReceived(data):
        """
        The next part of the message: one or more whole lines, each ending
        in CRLF, dot-unstuffed.  Nothing is kept for you: what you do not
        keep is gone, so memory stays bounded by the chunk size.

        @type data: C{bytes}
        """

    def endMessage():
        """
        The whole message has been received.

        @return: as for L{IMessageHandler.processMessage}.
        """

    def abortMessage():
        """
        The message will not be completed: the client went away or reset
        the transaction, or the server refused it (too big, a line too
        long, ...).  Throw away what was received.  Nothing more is called.
        """


class IStreamingMessageHandler(Interface):
    """
    Takes each message in chunks, for large messages.
    """

    def startMessage(peer, mailFrom, rcptTos):
        """
        A client has sent C{DATA} (or its first C{BDAT}): a message
        starts.

        @param peer: see L{IMessageHandler.processMessage}.
        @param mailFrom: see L{IMessageHandler.processMessage}.
        @param rcptTos: see L{IMessageHandler.processMessage}.
        @return: the L{IMessageReceiver} that takes the message, at once
            (not a C{Deferred}); or a refusal, which is then the reply to
            C{DATA} (or raise an L{SMTPServerError}).
        """


class IEnvelopeValidator(Interface):
    """
    Decides on each sender and recipient as the client names them, before
    the message.  Optional: a handler that does not provide it accepts
    every sender and recipient the server does.
    """

    def validateSender(peer, address):
        """
        @param peer: the client.
        @type peer: L{Peer}
        @param address: the sender, as for C{mailFrom}.
        @type address: C{str}
        @return: C{None} or C{True} to accept; C{False} to refuse with
            C{550 5.7.1}; a refusal of your own; or a C{Deferred} of one of
            these.
        """

    def validateRecipient(peer, address):
        """
        @param peer: the client.
        @type peer: L{Peer}
        @param address: the recipient, C{"local@domain"}.
        @type address: C{str}
        @return: C{None} or C{True} to accept; C{False} to refuse with
            C{550 5.1.1}; a refusal of your own; or a C{Deferred} of one of
            these.
        """


def _refusal(result) -> SMTPServerError | None:
    """
    Read a handler's answer.

    @param result: what a handler's method returned (or the C{Deferred}
        of it gave).
    @return: C{None} to accept, or the error carrying the refusal's reply.
    @raise TypeError: for an answer that is none of those a handler may
        give.
    @raise ValueError: for a reply code that is neither an acceptance nor
        a refusal, or a malformed status line.
    """
    if result is None or result is True:
        return None
    if isinstance(result, SMTPServerError):
        return result
    if isinstance(result, str):
        result = result.encode("utf-8")
    if isinstance(result, bytes):
        match = _STATUS_LINE.match(result.rstrip(b"\r\n"))
        if match is None:
            raise ValueError(f"not an SMTP status line: {result!r}")
        code, text = int(match.group(1)), match.group(2) or b""
        status = statusOf(code, text)
        if status is not None:
            text = text[len(status) :].lstrip(b" ")
        result = Reply.fromText(code, text, status)
    if isinstance(result, Reply):
        if result.isPositive:
            return None
        if result.code < 400:
            raise ValueError(f"a handler may only accept (2xx) or refuse (4xx, 5xx), not {result.code}")
        return SMTPServerError(result.code, result.text, result.status)
    raise TypeError(f"a handler returned {result!r}; expected None, a refusal, or a Deferred of one")


def _call(method, *args) -> defer.Deferred:
    """
    Call a handler's method, also one written C{async def}.

    @return: a C{Deferred} of what it gave.
    """
    try:
        result = method(*args)
    except BaseException:
        return defer.fail()
    if inspect.iscoroutine(result):
        return defer.ensureDeferred(result)
    return defer.succeed(result) if not isinstance(result, defer.Deferred) else result


class _Outcome:
    """
    The outcome of one message, shared by the message objects of all its
    recipients: the server wants one per recipient, the handler gives one.
    """

    def __init__(self) -> None:
        self._result = None
        self._waiting: list[defer.Deferred] | None = []

    def settle(self, result) -> None:
        """
        @param result: C{None}, or the L{Failure} of a refusal.
        """
        self._result, waiting, self._waiting = result, self._waiting, None
        for d in waiting:
            if result is None:
                d.callback(None)
            else:
                d.errback(result)

    def wait(self) -> defer.Deferred:
        """
        @return: a C{Deferred} with the outcome, when it is known.
        """
        if self._waiting is None:
            return defer.succeed(None) if self._result is None else defer.fail(self._result)
        d = defer.Deferred()
        self._waiting.append(d)
        return d


@implementer(IMessageStream)
class _Message:
    """
    The message of one transaction, as the first of its recipients'
    message objects: it collects the data and asks the handler.  The
    others are L{_Copy}s that only report its outcome.

    @ivar _receiver: the L{IMessageReceiver} that takes the data; for an
        L{IMessageHandler}, a L{_Collector}.
    """

    _log = Logger()

    def __init__(self, transaction: _Transaction) -> None:
        self._transaction = transaction
        self._outcome = _Outcome()
        handler = transaction.handler
        peer, mailFrom, rcptTos = transaction.peer, transaction.mailFrom, list(transaction.recipients)
        if IStreamingMessageHandler.providedBy(handler):
            receiver = handler.startMessage(peer, mailFrom, rcptTos)
            if not IMessageReceiver.providedBy(receiver):
                refusal = _refusal(receiver)
                if refusal is None:
                    raise TypeError(f"{handler!r}.startMessage accepted without giving an IMessageReceiver")
                raise refusal
            self._receiver = receiver
        else:
            self._receiver = _Collector(handler, peer, mailFrom, rcptTos)

    def dataReceived(self, data: bytes) -> None:
        self._receiver.dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self._receiver.dataReceived(line + b"\r\n")

    def eomReceived(self) -> defer.Deferred:
        d = _call(self._receiver.endMessage)
        self._receiver = None
        d.addCallback(_refusal)

        def refused(refusal):
            if refusal is not None:
                raise refusal

        def failed(failure):
            if not failure.check(SMTPServerError):
                self._log.failure("Message handler {handler!r} failed", failure, handler=self._transaction.handler)
                raise SMTPServerError(*_INTERNAL_ERROR)
            return failure

        d.addCallback(refused).addErrback(failed)
        d.addBoth(self._settle)
        return self._outcome.wait()

    def _settle(self, result) -> None:
        self._outcome.settle(None if not isinstance(result, Failure) else result)

    def connectionLost(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.abortMessage()

    def copy(self) -> _Copy:
        """
        @return: the message object of another recipient.
        """
        return _Copy(self._outcome)


@implementer(IMessageStream)
class _Copy:
    """
    The message object of a recipient after the first: the data goes to
    the first one's handler, once; this one reports the outcome.
    """

    def __init__(self, outcome: _Outcome) -> None:
        self._outcome = outcome

    def dataReceived(self, data: bytes) -> None:
        pass

    def lineReceived(self, line: bytes) -> None:
        pass

    def eomReceived(self) -> defer.Deferred:
        return self._outcome.wait()

    def connectionLost(self) -> None:
        pass


@implementer(IMessageReceiver)
class _Collector:
    """
    The receiver for an L{IMessageHandler}: keeps the whole message and
    gives it to C{processMessage} at its end.
    """

    def __init__(self, handler, peer: Peer, mailFrom: str, rcptTos: list[str]) -> None:
        self._handler = handler
        self._envelope = (peer, mailFrom, rcptTos)
        self._chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def endMessage(self):
        data, self._chunks = b"".join(self._chunks), []
        return self._handler.processMessage(*self._envelope, data)

    def abortMessage(self) -> None:
        self._chunks = []


@implementer(IMessageDelivery)
class _Transaction:
    """
    The delivery of one transaction (one C{MAIL} command and what follows):
    it gathers the accepted recipients, so that the handler gets the
    message once for all of them.
    """

    def __init__(self, handler) -> None:
        self.handler = handler
        self.peer = None
        self.mailFrom = None
        self.recipients: list[str] = []
        self._message = None

    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        self.peer = Peer.fromHelo(helo)
        self.mailFrom = str(origin)
        if not IEnvelopeValidator.providedBy(self.handler):
            return origin

        def decided(result):
            refusal = _refusal(SMTPBadSender(origin) if result is False else result)
            if refusal is not None:
                raise refusal
            return origin

        return _call(self.handler.validateSender, self.peer, self.mailFrom).addCallback(decided)

    def validateTo(self, user):
        address = str(user.dest)
        if not IEnvelopeValidator.providedBy(self.handler):
            return self._accept(address)

        def decided(result):
            refusal = _refusal(SMTPBadRcpt(user) if result is False else result)
            if refusal is not None:
                raise refusal
            return self._accept(address)

        return _call(self.handler.validateRecipient, self.peer, address).addCallback(decided)

    def _accept(self, address: str):
        self.recipients.append(address)
        return self._messageFor

    def _messageFor(self):
        """
        Make a recipient's message object: the first makes the message,
        the others its copies.
        """
        if self._message is None:
            self._message = _Message(self)
            return self._message
        return self._message.copy()


@implementer(IMessageDeliveryFactory)
class HandlerDeliveryFactory:
    """
    Delivers mail to a handler: an L{IMessageDeliveryFactory} for
    C{SMTPFactory(deliveryFactory=...)} and the servers' C{deliveryFactory}.

    The server asks it for a delivery at each C{MAIL} command; that
    delivery gathers the recipients of the transaction, so that the handler
    gets each message once, with all of them.

    @ivar handler: the handler: an L{IMessageHandler} or an
        L{IStreamingMessageHandler}, and optionally an
        L{IEnvelopeValidator}.
    """

    def __init__(self, handler) -> None:
        """
        @param handler: see L{HandlerDeliveryFactory.handler}.
        @raise TypeError: if the handler provides neither
            L{IMessageHandler} nor L{IStreamingMessageHandler}.
        """
        if not (IMessageHandler.providedBy(handler) or IStreamingMessageHandler.providedBy(handler)):
            raise TypeError(
                f"{handler!r} provides neither IMessageHandler nor IStreamingMessageHandler: "
                "declare one with @implementer(...) on its class"
            )
        self.handler = handler

    def getMessageDelivery(self):
        """
        @return: the L{IMessageDelivery} for the next transaction.
        """
        return _Transaction(self.handler)


def handlerFactory(handler, factoryClass=ESMTPFactory, **factoryOptions):
    """
    Make a server factory that delivers to a handler.

    @param handler: see L{HandlerDeliveryFactory.handler}.
    @param factoryClass: the server factory: L{ESMTPFactory} by default;
        L{mailproto.smtp.LMTPFactory} (each recipient then gets the reply
        to the message) or L{mailproto.smtp.SMTPFactory}.
    @param factoryOptions: the factory's other arguments, such as
        C{domain}, C{maxMessageSize}, C{contextFactory}, C{portal}.
    @return: the factory.
    """
    return factoryClass(deliveryFactory=HandlerDeliveryFactory(handler), **factoryOptions)

