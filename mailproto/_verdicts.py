# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
What a reply, or a failure, means for relayed mail: the relay's own
replies for a connection or a route that failed, session refusals (a
configuration error, never a bounce), recipients refused as too many for
one transaction, and the soft bounce mode.  Replies are L{Reply} values;
their enhanced status is the one the wire parser found.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.python.failure import Failure

from mailproto._errors import AUTHDeclinedError, AuthenticationError, AUTHRequiredError, SMTPClientError, TLSRequiredError
from mailproto._jobs import Job, ownReply
from mailproto._mx import MailRoutingError, NullMX
from mailproto._queue import Recipient
from mailproto._replies import Reply, replyFromWire

_SESSION_CODES = frozenset({530, 534, 535, 538})
_SESSION_STATUSES = frozenset({b"5.7.8", b"5.7.9", b"5.7.10", b"5.7.11"})


def _said(exception: SMTPClientError) -> str:
    resp = exception.resp
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return str(resp)


def connectionReply(reason) -> Reply:
    """
    The deferral reply for a job whose connection failed for C{reason} (a
    C{Failure} or an exception).
    """
    exception = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exception, SMTPClientError):
        if exception.code > 0:
            said = replyFromWire(exception.code, exception.resp or b"").summary()
            return ownReply(451, "4.4.2", f"Session failed: the server said {said}")
        return ownReply(451, "4.4.2", f"Session failed: {_said(exception)}")
    if isinstance(exception, (error.ConnectionRefusedError, error.ConnectError, error.TimeoutError, error.DNSLookupError)):
        return ownReply(451, "4.4.1", f"Could not connect: {exception}")
    return ownReply(451, "4.4.2", f"Connection lost: {str(exception) or type(exception).__name__}")


def routingReply(failure: Failure) -> Reply | None:
    """
    The relay's reply for a destination that could not be routed, or
    C{None} if the failure is not a routing failure (a bug).
    """
    exception = failure.value
    if isinstance(exception, NullMX):
        return ownReply(556, "5.1.10", str(exception))
    if isinstance(exception, MailRoutingError) and exception.permanent:
        return ownReply(550, "5.1.2", str(exception))
    if isinstance(exception, MailRoutingError):
        return ownReply(451, "4.4.3", str(exception))
    return None


def refusesSession(reply: Reply) -> bool:
    """
    Whether a reply refuses the session rather than the message: AUTH
    required (C{530}), the mechanism too weak (C{534}), the credentials
    refused (C{535}), encryption required for the mechanism (C{538}), or
    one of their enhanced statuses (RFC 4954, RFC 5248: C{5.7.8},
    C{5.7.9}, C{5.7.10}, C{5.7.11}); C{530} is also "Must issue a STARTTLS
    command first" (RFC 3207).
    """
    return reply.code in _SESSION_CODES or (reply.isPermanent and reply.status in _SESSION_STATUSES)


def sessionDeferral(reply: Reply) -> Reply:
    """
    @return: what a recipient gets for a session refusal: a deferral.
    """
    return ownReply(451, "4.7.0", f"Session refused, deferred: the server said {reply.summary()}")


def refusedConfiguration(reason) -> bool:
    """
    Whether a session failed because the relay is not set up as the
    server wants: AUTH or TLS required and not possible, credentials
    refused, or a session refusal code (L{refusesSession}).
    """
    exception = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exception, (AUTHRequiredError, TLSRequiredError, AUTHDeclinedError, AuthenticationError)):
        return True
    return isinstance(exception, SMTPClientError) and exception.code in _SESSION_CODES


def softened(reply: Reply) -> Reply:
    """
    A permanent failure made temporary (the soft bounce mode): C{550
    5.1.1 No such user} becomes C{450 4.1.1 Soft bounce: 550 5.1.1 No
    such user}.
    """
    if not reply.isPermanent:
        return reply
    status = b"4" + reply.status[1:] if reply.status else b"4.0.0"
    return Reply(reply.code - 100, [b"Soft bounce: " + reply.summary().encode("utf-8")], status)


def tooMany(job: Job, replies: dict[bytes, Reply]) -> list[Recipient]:
    """
    The recipients of an answered job that the server had no room for in
    the transaction: refused with C{452} (without an enhanced status, or
    with C{4.5.3}), or with C{552 5.5.3}, which RFC 5321 section
    4.5.3.1.10 says to take as the same -- but only when the message
    was delivered to some other recipient in it, so that the next
    transaction makes progress.
    """
    if not any(reply.isPositive for reply in replies.values()):
        return []
    rest = []
    for recipient in job.recipients:
        reply = replies.get(recipient.address)
        if reply is None:
            continue
        if (reply.code == 452 and reply.status in (None, b"4.5.3")) or (reply.code == 552 and reply.status == b"5.5.3"):
            rest.append(recipient)
    return rest
