# -*- test-case-name: mailproto.test.test_session -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
A command-level SMTP, ESMTP and LMTP client, for people used to Python's
C{smtplib} or to pymail: one method per command, each returning a
L{Deferred <twisted.internet.defer.Deferred>} of the server's L{Reply}.

L{connect} opens a session (L{SMTPSession}) to the first of a list of
hosts that answers; L{connectEndpoint} opens one over any endpoint (a UNIX
socket for LMTP).  A 4xx reply fails a command with L{SMTPTransientError},
a 5xx with L{SMTPPermanentError}; both carry the L{Reply}.  See
C{docs/client.rst}.
"""

from mailproto._auth import (
    CramMD5ClientAuthenticator,
    LOGINAuthenticator,
    OAUTHBEARERAuthenticator,
    PLAINAuthenticator,
    XOAUTH2Authenticator,
)
from mailproto._errors import (
    AuthenticationError,
    AUTHRequiredError,
    SMTPClientError,
    SMTPConnectError,
    SMTPProtocolError,
    SMTPTimeoutError,
    SMTPTLSError,
    TLSRequiredError,
)
from mailproto._extensions import Extensions
from mailproto._replies import Reply
from mailproto._session import (
    SMTPConnectionLost,
    SMTPPermanentError,
    SMTPReplyError,
    SMTPSession,
    SMTPSessionStateError,
    SMTPTransientError,
    connect,
    connectEndpoint,
)

#: The name L{mailproto.smtp} exports L{SMTPTLSError} as.
TLSError = SMTPTLSError

__all__ = [
    # connecting
    "connect",
    "connectEndpoint",
    "SMTPSession",
    # replies
    "Reply",
    "Extensions",
    # errors
    "SMTPClientError",
    "SMTPReplyError",
    "SMTPTransientError",
    "SMTPPermanentError",
    "SMTPConnectError",
    "SMTPConnectionLost",
    "SMTPTimeoutError",
    "SMTPProtocolError",
    "SMTPSessionStateError",
    "TLSError",
    "TLSRequiredError",
    "AUTHRequiredError",
    "AuthenticationError",
    # SASL mechanisms for SMTPSession.login
    "PLAINAuthenticator",
    "LOGINAuthenticator",
    "CramMD5ClientAuthenticator",
    "XOAUTH2Authenticator",
    "OAUTHBEARERAuthenticator",
]
