# -*- test-case-name: mailproto.test.test_server -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The interfaces of mailproto: what a server calls to deliver mail, and what
a client calls to authenticate.

The names and methods of L{IMessageDelivery}, L{IMessageDeliveryFactory},
L{IMessageSMTP} and L{IClientAuthentication} are C{twisted.mail}'s, so
implementations written for it work unchanged.  L{IMessageStream} is new:
an L{IMessageSMTP} that also provides it receives the message in chunks of
whole lines, which is faster than one call per line.
"""

from zope.interface import Interface


class IMessageDelivery(Interface):
    """
    Decides, for a server, who may send and who may receive, and makes the
    message objects that receive the data.

    Either validation method may return a C{Deferred}; the server answers commands in the
    order they came, also when the client pipelines them.
    """

    def receivedHeader(helo, origin, recipients):
        """
        Make the C{Received:} trace header for a message.

        @param helo: the client's C{(HELO argument, address)}.
        @type helo: 2-C{tuple} of C{bytes}
        @param origin: the sender.
        @type origin: L{mailproto.smtp.Address}
        @param recipients: the recipients this copy of the message is for.
        @type recipients: C{list} of L{mailproto.smtp.User}
        @return: the whole header field (C{b"Received: ..."}), its lines
            separated by LF or CRLF; or C{None} for none.
        @rtype: C{bytes} or C{None}
        """

    def validateFrom(helo, origin):
        """
        Decide whether to accept mail from a sender.

        @param helo: the client's C{(HELO argument, address)}.
        @type helo: 2-C{tuple} of C{bytes}
        @param origin: the sender (C{MAIL FROM}).  Its ESMTP parameters are
            on each L{mailproto.smtp.User} later given to L{validateTo}, as
            C{user.mail}.
        @type origin: L{mailproto.smtp.Address}
        @return: C{origin}, or a C{Deferred} firing with it.
        @raise mailproto.smtp.SMTPBadSender: to refuse the sender; any
            L{mailproto.smtp.SMTPServerError} gives its own reply.
        """

    def validateTo(user):
        """
        Decide whether to accept mail for a recipient.

        @param user: the recipient (C{user.dest}), with the sender
            (C{user.orig}), the client (C{user.helo}), the parsed C{MAIL}
            command (C{user.mail}, a L{mailproto.wire.MailFrom} with SIZE,
            BODY, SMTPUTF8, RET, ENVID) and the parsed C{RCPT} command
            (C{user.rcpt}, a L{mailproto.wire.RcptTo} with NOTIFY and
            ORCPT).
        @type user: L{mailproto.smtp.User}
        @return: a callable taking no arguments and returning an
            L{IMessageSMTP} provider, or a C{Deferred} firing with one.  It
            is called once the client sends the message.
        @raise mailproto.smtp.SMTPBadRcpt: to refuse the recipient; any
            L{mailproto.smtp.SMTPServerError} gives its own reply.
        """


class IMessageDeliveryFactory(Interface):
    """
    Makes an L{IMessageDelivery} for each message, so that a delivery can
    tell the messages of one connection apart.
    """

    def getMessageDelivery():
        """
        @return: the L{IMessageDelivery} for the next message.
        """


class IMessageSMTP(Interface):
    """
    One copy of a message, as the server receives it.  Exported as
    L{mailproto.smtp.IMessage}.
    """

    def lineReceived(line):
        """
        Receive one line of the message, without its line ending, after
        dot-unstuffing.

        @type line: C{bytes}
        """

    def eomReceived():
        """
        The whole message has been received.

        @return: a C{Deferred} that fires when the message is safely
            handled, or fails (with an L{mailproto.smtp.SMTPServerError}
            for a reply of its own) when it is refused.
        """

    def connectionLost():
        """
        The message will not be completed: the client went away, or the
        server refused it (too big, a line too long, ...).  Throw away what
        was received.
        """


class IMessageStream(IMessageSMTP):
    """
    A message that takes its data in chunks.  The server calls
    L{dataReceived} instead of C{lineReceived}.
    """

    def dataReceived(data):
        """
        Receive the next part of the message: one or more whole lines, each
        ending in CRLF, after dot-unstuffing.

        @type data: C{bytes}
        """


class IChallengeResponse(Interface):
    """
    One server-side SASL exchange, as C{twisted.mail}'s credentials classes
    (C{LOGINCredentials}, ...) implement it.
    """

    def getChallenge():
        """
        @return: the next challenge to send, decoded.
        @rtype: C{bytes}
        """

    def setResponse(response):
        """
        @param response: the client's decoded response.
        @type response: C{bytes}
        """

    def moreChallenges():
        """
        @return: whether another challenge follows.
        @rtype: C{bool}
        """


class IClientAuthentication(Interface):
    """
    A client-side SASL mechanism.
    """

    def getName():
        """
        @return: the mechanism's name, such as C{b"PLAIN"}.
        @rtype: C{bytes}
        """

    def challengeResponse(secret, challenge):
        """
        @param secret: the client's secret.
        @param challenge: the server's decoded challenge.
        @return: the decoded response.
        @rtype: C{bytes}
        """


IClientAuthenticator = IClientAuthentication

__all__ = [
    "IChallengeResponse",
    "IClientAuthentication",
    "IClientAuthenticator",
    "IMessageDelivery",
    "IMessageDeliveryFactory",
    "IMessageSMTP",
    "IMessageStream",
]
