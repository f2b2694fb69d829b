# -*- test-case-name: mailproto.test.test_exports -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Simple Mail Transfer Protocol: the public names of mailproto's SMTP side,
with the same names and meanings as in C{twisted.mail.smtp}, so that code
written for twisted.mail ports by changing its imports.

Beyond twisted.mail's names, it exports L{ESMTPFactory}, L{LMTP} and
L{LMTPFactory} (an LMTP server, RFC 2033), L{LMTPClient} and L{LMTPSender}
(an LMTP client), L{XOAUTH2Authenticator} and L{OAUTHBEARERAuthenticator}
(OAuth 2.0 SASL mechanisms), L{IMessageStream} (a message that takes its
data in chunks), and for servers' TLS and AUTH L{loadServerOptions},
L{PLAINCredentials}, L{UsersFile}, L{UsersFileChecker} (scrypt-hashed
passwords) and L{AuthFailures}; L{SMTPTLSFailure}, what L{sendmail}
fails with when TLS does not come up (an L{SMTPConnectError} and a
L{TLSError}).

Importing this module registers the C{xtext} codec (RFC 3461).
"""

from mailproto._address import Address, User, quoteaddr
from mailproto._auth import (
    CramMD5ClientAuthenticator,
    LOGINAuthenticator,
    OAUTHBEARERAuthenticator,
    PLAINAuthenticator,
    XOAUTH2Authenticator,
)
from mailproto._client import ESMTPClient, LMTPClient, SMTPClient
from mailproto._cred import LOGINCredentials, PLAINCredentials, UsersFile, UsersFileChecker
from mailproto._errors import (
    AddressError,
    AUTHDeclinedError,
    AuthenticationError,
    AUTHRequiredError,
    EHLORequiredError,
    ESMTPClientError,
    SMTPAddressError,
    SMTPBadRcpt,
    SMTPBadSender,
    SMTPClientError,
    SMTPConnectError,
    SMTPDeliveryError,
    SMTPError,
    SMTPProtocolError,
    SMTPServerError,
    SMTPTimeoutError,
    SMTPTLSError as TLSError,
    SMTPTLSFailure,
    TLSRequiredError,
)
from mailproto._handler import (
    HandlerDeliveryFactory,
    IEnvelopeValidator,
    IMessageHandler,
    IMessageReceiver,
    IStreamingMessageHandler,
    Peer,
    handlerFactory,
)
from mailproto._headers import idGenerator, messageid, rfc822date
from mailproto._sender import (
    ESMTPSender,
    ESMTPSenderFactory,
    LMTPSender,
    SenderMixin,
    SMTPSender,
    SMTPSenderFactory,
    sendmail,
)
from mailproto._server import ESMTP, LMTP, SMTP, AuthFailures, ESMTPFactory, LMTPFactory, SMTPFactory
from mailproto._tls import loadServerOptions
from mailproto._xtext import (
    xtext_codec,
    xtext_decode,
    xtext_encode,
    xtextStreamReader,
    xtextStreamWriter,
)
from mailproto.interfaces import (
    IClientAuthentication,
    IMessageDelivery,
    IMessageDeliveryFactory,
    IMessageSMTP as IMessage,
    IMessageStream,
)

__all__ = [
    # clients
    "ESMTPClient",
    "ESMTPSender",
    "ESMTPSenderFactory",
    "LMTPClient",
    "LMTPSender",
    "SMTPClient",
    "SMTPSender",
    "SMTPSenderFactory",
    "SenderMixin",
    "sendmail",
    # client authentication
    "CramMD5ClientAuthenticator",
    "LOGINAuthenticator",
    "OAUTHBEARERAuthenticator",
    "PLAINAuthenticator",
    "XOAUTH2Authenticator",
    # server authentication and TLS
    "AuthFailures",
    "LOGINCredentials",
    "PLAINCredentials",
    "UsersFile",
    "UsersFileChecker",
    "loadServerOptions",
    # servers
    "ESMTP",
    "ESMTPFactory",
    "LMTP",
    "LMTPFactory",
    "SMTP",
    "SMTPFactory",
    # a server in one method
    "HandlerDeliveryFactory",
    "IEnvelopeValidator",
    "IMessageHandler",
    "IMessageReceiver",
    "IStreamingMessageHandler",
    "Peer",
    "handlerFactory",
    # interfaces
    "IClientAuthentication",
    "IMessage",
    "IMessageDelivery",
    "IMessageDeliveryFactory",
    "IMessageStream",
    # errors
    "AUTHDeclinedError",
    "AUTHRequiredError",
    "AddressError",
    "AuthenticationError",
    "EHLORequiredError",
    "ESMTPClientError",
    "SMTPAddressError",
    "SMTPBadRcpt",
    "SMTPBadSender",
    "SMTPClientError",
    "SMTPConnectError",
    "SMTPDeliveryError",
    "SMTPError",
    "SMTPServerError",
    "SMTPTimeoutError",
    "TLSError",
    "SMTPTLSFailure",
    "TLSRequiredError",
    "SMTPProtocolError",
    # addresses
    "Address",
    "User",
    "quoteaddr",
    # headers
    "idGenerator",
    "messageid",
    "rfc822date",
    # the xtext codec
    "xtextStreamReader",
    "xtextStreamWriter",
    "xtext_codec",
    "xtext_decode",
    "xtext_encode",
]
