# -*- test-case-name: mailproto.test.test_auth -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
SASL mechanisms for the client side of SMTP AUTH (RFC 4954): PLAIN (RFC
4616), LOGIN, CRAM-MD5 (RFC 2195), XOAUTH2 and OAUTHBEARER (RFC 7628).

Each is an L{IClientAuthentication}: C{getName()} and
C{challengeResponse(secret, challenge)}, with decoded bytes in and out
(base64 is the protocol's business).  Mechanisms whose client speaks first
have C{initialResponse = True}: the client sends their first response with
the C{AUTH} command itself.
"""

from __future__ import annotations

import hashlib
import hmac

from zope.interface import implementer

from mailproto.interfaces import IClientAuthentication


def _bytes(value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


@implementer(IClientAuthentication)
class PLAINAuthenticator:
    """
    PLAIN (RFC 4616): C{authzid NUL authcid NUL password}, sent with the
    AUTH command.  Use it only over TLS.
    """

    initialResponse = True

    def __init__(self, user, authzid=b"") -> None:
        """
        @param user: the user name (authentication identity).
        @param authzid: the identity to act as; empty for the user itself.
        """
        self.user = _bytes(user)
        self.authzid = _bytes(authzid)

    def getName(self) -> bytes:
        return b"PLAIN"

    def challengeResponse(self, secret, chal=None) -> bytes:
        return self.authzid + b"\0" + self.user + b"\0" + _bytes(secret)


@implementer(IClientAuthentication)
class LOGINAuthenticator:
    """
    LOGIN: the server asks for the user name, then the password.
    """

    initialResponse = False

    def __init__(self, user) -> None:
        self.user = _bytes(user)
        self._step = 0

    def getName(self) -> bytes:
        return b"LOGIN"

    def challengeResponse(self, secret, chal) -> bytes:
        # Servers ask "Username:" then "Password:"; go by what is asked,
        # and by the order for servers that ask something else.
        asked = bytes(chal or b"").strip().lower()
        if asked.startswith(b"user"):
            self._step = 1
            return self.user
        if asked.startswith(b"pass"):
            self._step = 2
            return _bytes(secret)
        self._step += 1
        return self.user if self._step == 1 else _bytes(secret)


@implementer(IClientAuthentication)
class CramMD5ClientAuthenticator:
    """
    CRAM-MD5 (RFC 2195): the password never crosses the wire, but the
    server must keep it in the clear.
    """

    initialResponse = False

    def __init__(self, user) -> None:
        self.user = _bytes(user)

    def getName(self) -> bytes:
        return b"CRAM-MD5"

    def challengeResponse(self, secret, chal) -> bytes:
        digest = hmac.new(_bytes(secret), chal, hashlib.md5).hexdigest()
        return self.user + b" " + digest.encode("ascii")


@implementer(IClientAuthentication)
class XOAUTH2Authenticator:
    """
    XOAUTH2 (Google, Microsoft): the secret is an OAuth 2.0 access token.
    """

    initialResponse = True

    def __init__(self, user) -> None:
        self.user = _bytes(user)

    def getName(self) -> bytes:
        return b"XOAUTH2"

    def challengeResponse(self, secret, chal=None) -> bytes:
        if chal:
            # The server sent an error (JSON) and waits for an empty
            # response before it answers 535.
            return b""
        return b"user=" + self.user + b"\x01auth=Bearer " + _bytes(secret) + b"\x01\x01"


@implementer(IClientAuthentication)
class OAUTHBEARERAuthenticator:
    """
    OAUTHBEARER (RFC 7628): the secret is an OAuth 2.0 bearer token.
    """

    initialResponse = True

    def __init__(self, user, host=None, port=None) -> None:
        """
        @param user: the user name (the C{a=} authzid of the GS2 header).
        @param host: the server's host name, sent as C{host=} if given.
        @param port: the server's port, sent as C{port=} if given.
        """
        self.user = _bytes(user)
        self.host = None if host is None else _bytes(host)
        self.port = port

    def getName(self) -> bytes:
        return b"OAUTHBEARER"

    def challengeResponse(self, secret, chal=None) -> bytes:
        if chal:
            # An error report (RFC 7628 section 3.2.2): answer with a
            # single %x01 to end the exchange.
            return b"\x01"
        user = self.user.replace(b"=", b"=3D").replace(b",", b"=2C")
        fields = [b"n,a=" + user + b","]
        if self.host is not None:
            fields.append(b"host=" + self.host)
        if self.port is not None:
            fields.append(b"port=%d" % self.port)
        fields.append(b"auth=Bearer " + _bytes(secret))
        return b"\x01".join(fields) + b"\x01\x01"
