# -*- test-case-name: mailproto.test.test_errors -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The SMTP error hierarchy, with the names and constructor signatures of
C{twisted.mail.smtp}'s errors.

Two additions, both optional keyword arguments, so that code written for
twisted.mail keeps working:

  - L{SMTPServerError} (and so every server-side error) carries an
    RFC 3463 enhanced status code in C{status}, e.g. C{b"5.1.3"}.
  - L{AddressError} is an L{SMTPServerError}: it knows the reply the server
    should send for the bad address (553 5.1.3 unless told otherwise).
    It is still an L{SMTPError}, as in twisted.mail.

Every parser in mailproto's wire layer either returns a value or raises an
L{SMTPServerError} whose C{code}, C{status} and C{resp} are the reply to
send; see L{SMTPServerError.reply}.
"""

from __future__ import annotations


def _toBytes(value: bytes | str | None) -> bytes | None:
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _toText(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class SMTPError(Exception):
    """
    The base class of every SMTP error raised by mailproto.
    """


class SMTPClientError(SMTPError):
    """
    A failure seen by an SMTP client: the server's reply, or a local error.

    @ivar code: the SMTP reply code, or a value C{<= 0} for an error that
        did not come from a reply (a lost connection, a timeout).
    @ivar resp: the reply text, as C{bytes}.
    @ivar log: a transcript of the exchange that led to the error, or
        C{None}.
    @ivar addresses: the recipients this error is about, if any.
    @ivar isFatal: whether the connection cannot go on after this error.
    @ivar retry: whether delivery should be tried again later.
    @cvar defaultFatal: C{isFatal} when not given: C{False} here; C{True}
        for connection, timeout and protocol errors, as in twisted.mail.
    @cvar defaultRetry: C{retry} when not given: C{False} here; C{True} for
        connection and timeout errors, as in twisted.mail.
    @ivar status: the reply's enhanced status code (RFC 3463), such as
        C{b"5.1.1"}, when the server sent one; else C{None}.
    """

    defaultFatal = False
    defaultRetry = False
    status = None

    def __init__(
        self,
        code: int,
        resp: bytes | str,
        log: bytes | str | None = None,
        addresses: object = None,
        isFatal: bool | None = None,
        retry: bool | None = None,
        status: bytes | None = None,
    ) -> None:
        """
        @param code: see L{SMTPClientError.code}.
        @param resp: see L{SMTPClientError.resp}; C{str} is encoded as
            UTF-8.
        @param log: see L{SMTPClientError.log}; C{str} is encoded as UTF-8.
        @param addresses: see L{SMTPClientError.addresses}.
        @param isFatal: see L{SMTPClientError.isFatal}; the class's
            C{defaultFatal} if not given.
        @param retry: see L{SMTPClientError.retry}; the class's
            C{defaultRetry} if not given.
        @param status: see L{SMTPClientError.status}.
        """
        super().__init__(code, resp)
        self.code = code
        self.resp = _toBytes(resp)
        self.log = _toBytes(log)
        self.addresses = addresses
        self.isFatal = self.defaultFatal if isFatal is None else isFatal
        self.retry = self.defaultRetry if retry is None else retry
        if status is not None:
            self.status = status

    def __bytes__(self) -> bytes:
        parts = [b"%03d %s" % (self.code, self.resp) if self.code > 0 else self.resp]
        if self.log:
            parts.append(self.log)
            parts.append(b"")
        return b"\n".join(parts)

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "replace")


class ESMTPClientError(SMTPClientError):
    """
    The base class of errors about ESMTP features (EHLO, AUTH, STARTTLS).
    """


class EHLORequiredError(ESMTPClientError):
    """
    The server does not support EHLO, and HELO was not allowed.
    """


class AUTHRequiredError(ESMTPClientError):
    """
    Authentication was required, but the server offers no usable mechanism.
    """


class TLSRequiredError(ESMTPClientError):
    """
    Transport security was required, but the server does not offer it.
    """


class AUTHDeclinedError(ESMTPClientError):
    """
    The server refused the credentials.
    """


class AuthenticationError(ESMTPClientError):
    """
    Authentication failed: the server refused to authenticate, or sent a
    challenge that could not be understood.
    """


class SMTPTLSError(ESMTPClientError):
    """
    Negotiating transport security failed.  Exported as C{TLSError}.
    """


class SMTPConnectError(SMTPClientError):
    """
    The connection to the mail exchanger failed.  Fatal; worth a retry.
    """

    defaultFatal = True
    defaultRetry = True


class SMTPTLSFailure(SMTPConnectError, SMTPTLSError):
    """
    The connection failed because TLS did: the server's certificate is
    not trusted or not for its name, the server does not speak TLS there,
    the handshake was refused.  C{resp} says why in words (see
    L{mailproto._tlserrors.describeTLSFailure}); C{__cause__} is the
    OpenSSL or service_identity exception.

    An L{SMTPConnectError}, so that code written for twisted.mail, which
    reported these as one, still traps it; and an L{SMTPTLSError}.  Not
    worth a retry as it is: the same connection would fail the same way.
    """

    defaultFatal = True
    defaultRetry = False


class SMTPTimeoutError(SMTPClientError):
    """
    The server did not answer in time.  Fatal; worth a retry.
    """

    defaultFatal = True
    defaultRetry = True


class SMTPProtocolError(SMTPClientError):
    """
    The server sent something that is not SMTP.  Fatal; not retried.
    """

    defaultFatal = True
    defaultRetry = False


class SMTPDeliveryError(SMTPClientError):
    """
    A delivery attempt failed.
    """


class SMTPServerError(SMTPError):
    """
    An error a server answers with a reply.

    Raise it (or a subclass) from a validation hook and the server sends
    C{code}, C{status} and C{resp} to the client.

    @ivar code: the three-digit reply code.
    @ivar resp: the reply text (C{bytes} or C{str}, as given).
    @ivar status: the RFC 3463 enhanced status code as C{bytes}, such as
        C{b"5.1.1"}, or C{None} for the server's default for C{code}.
    """

    def __init__(self, code: int, resp: bytes | str, status: bytes | None = None) -> None:
        """
        @param code: see L{SMTPServerError.code}.
        @param resp: see L{SMTPServerError.resp}.
        @param status: see L{SMTPServerError.status}.
        """
        super().__init__(code, resp)
        self.code = code
        self.resp = resp
        self.status = status

    def __str__(self) -> str:
        return "%.3d %s" % (self.code, _toText(self.resp))

    @property
    def reply(self):
        """
        The reply this error stands for.

        @rtype: L{mailproto._replies.Reply}
        """
        from mailproto._replies import Reply

        return Reply.fromText(self.code, _toBytes(self.resp), self.status)


class SMTPAddressError(SMTPServerError):
    """
    A server error about one address.

    @ivar addr: the address, as an L{Address}.
    """

    def __init__(self, addr, code: int, resp: bytes | str, status: bytes | None = None) -> None:
        from mailproto._address import Address

        super().__init__(code, resp, status)
        self.addr = Address(addr)

    def __str__(self) -> str:
        return "%.3d <%s>... %s" % (self.code, self.addr, _toText(self.resp))


class SMTPBadRcpt(SMTPAddressError):
    """
    The server will not accept mail for this recipient (550 5.1.1 unless
    told otherwise).
    """

    def __init__(
        self,
        addr,
        code: int = 550,
        resp: bytes | str = "Cannot receive for specified address",
        status: bytes | None = None,
    ) -> None:
        super().__init__(addr, code, resp, status if status is not None else b"5.1.1")


class SMTPBadSender(SMTPAddressError):
    """
    The server will not accept mail from this sender (550 5.7.1 unless told
    otherwise).
    """

    def __init__(
        self,
        addr,
        code: int = 550,
        resp: bytes | str = "Sender not acceptable",
        status: bytes | None = None,
    ) -> None:
        super().__init__(addr, code, resp, status if status is not None else b"5.7.1")


class AddressError(SMTPServerError):
    """
    An address could not be parsed.

    As in twisted.mail it is constructed with just a message; the reply it
    stands for defaults to C{553 5.1.3} and the message.
    """

    def __init__(self, message: bytes | str, code: int = 553, status: bytes | None = b"5.1.3") -> None:
        """
        @param message: what is wrong with the address.
        @param code: the reply code a server should send.
        @param status: the enhanced status code a server should send.
        """
        super().__init__(code, message, status)

    def __str__(self) -> str:
        return _toText(self.resp)
