# -*- test-case-name: mailproto.test.test_auth -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The client SASL mechanisms on their own: PLAIN (RFC 4616), LOGIN, CRAM-MD5
(RFC 2195), XOAUTH2 and OAUTHBEARER (RFC 7628) -- their interface, names
and exact responses (decoded bytes; base64 is the protocol's business).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from mailproto.interfaces import IClientAuthentication
from mailproto.smtp import (
    CramMD5ClientAuthenticator,
    LOGINAuthenticator,
    OAUTHBEARERAuthenticator,
    PLAINAuthenticator,
    XOAUTH2Authenticator,
)


class InterfaceTests(SynchronousTestCase):
    """
    Every mechanism is an L{IClientAuthentication} with its SASL name, and
    says whether the client speaks first.
    """

    mechanisms = [
        (PLAINAuthenticator(b"user"), b"PLAIN", True),
        (LOGINAuthenticator(b"user"), b"LOGIN", False),
        (CramMD5ClientAuthenticator(b"user"), b"CRAM-MD5", False),
        (XOAUTH2Authenticator(b"user"), b"XOAUTH2", True),
        (OAUTHBEARERAuthenticator(b"user"), b"OAUTHBEARER", True),
    ]

    def test_interface(self):
        """
        Each class and instance provides L{IClientAuthentication}.
        """
        for auth, _, _ in self.mechanisms:
            self.assertTrue(verifyClass(IClientAuthentication, type(auth)))
            self.assertTrue(verifyObject(IClientAuthentication, auth))

    def test_names(self):
        """
        C{getName()} is the registered SASL mechanism name, as L{bytes}.
        """
        self.assertEqual([auth.getName() for auth, _, _ in self.mechanisms], [name for _, name, _ in self.mechanisms])

    def test_initialResponse(self):
        """
        PLAIN, XOAUTH2 and OAUTHBEARER send their first response with the
        AUTH command; LOGIN and CRAM-MD5 wait for a challenge.
        """
        self.assertEqual([auth.initialResponse for auth, _, _ in self.mechanisms], [i for _, _, i in self.mechanisms])


class PLAINTests(SynchronousTestCase):
    """
    PLAIN (RFC 4616): C{[authzid] NUL authcid NUL passwd}.
    """

    def test_withoutAuthzid(self):
        """
        Without an authorization identity, the message starts with NUL (the
        server derives the identity from the user name).
        """
        self.assertEqual(PLAINAuthenticator(b"user").challengeResponse(b"pass", b""), b"\x00user\x00pass")

    def test_withAuthzid(self):
        """
        With an authorization identity, it comes first.
        """
        auth = PLAINAuthenticator(b"user", authzid=b"admin")
        self.assertEqual(auth.challengeResponse(b"pass", b""), b"admin\x00user\x00pass")

    def test_text(self):
        """
        Text user names, identities and passwords are sent as UTF-8.
        """
        auth = PLAINAuthenticator("j\xfcrgen", authzid="\xe9quipe")
        self.assertEqual(auth.challengeResponse("p\xe4ss", b""), b"\xc3\xa9quipe\x00j\xc3\xbcrgen\x00p\xc3\xa4ss")

    def test_repeatable(self):
        """
        PLAIN has no state: asking again gives the same response.
        """
        auth = PLAINAuthenticator(b"user")
        self.assertEqual(auth.challengeResponse(b"pass", b""), auth.challengeResponse(b"pass", b""))


class LOGINTests(SynchronousTestCase):
    """
    LOGIN: the user name to the first challenge, the password to the second.
    """

    def test_userThenPassword(self):
        """
        The first response is the user name, the second the password.
        """
        auth = LOGINAuthenticator(b"user")
        self.assertEqual(auth.challengeResponse(b"pass", b"Username:"), b"user")
        self.assertEqual(auth.challengeResponse(b"pass", b"Password:"), b"pass")

    def test_challengeTextIgnored(self):
        """
        Servers word the challenges differently (C{User Name}, or nothing
        at all); the order decides.
        """
        auth = LOGINAuthenticator(b"user")
        self.assertEqual(auth.challengeResponse(b"pass", b""), b"user")
        self.assertEqual(auth.challengeResponse(b"pass", b""), b"pass")

    def test_reused(self):
        """
        An authenticator used for a second login answers by the question:
        never the password to C{Username:}.
        """
        auth = LOGINAuthenticator(b"user")
        answers = [auth.challengeResponse(b"pass", c) for c in (b"Username:", b"Password:") * 2]
        self.assertEqual(answers, [b"user", b"pass", b"user", b"pass"])

    def test_text(self):
        """
        Text is sent as UTF-8.
        """
        auth = LOGINAuthenticator("us\xe9r")
        self.assertEqual(auth.challengeResponse("p\xe4ss", b"Username:"), b"us\xc3\xa9r")
        self.assertEqual(auth.challengeResponse("p\xe4ss", b"Password:"), b"p\xc3\xa4ss")


class CramMD5Tests(SynchronousTestCase):
    """
    CRAM-MD5 (RFC 2195): the user name, a space, and the hex HMAC-MD5 of the
    challenge keyed with the secret.
    """

    def test_rfc2195Example(self):
        """
        The example of RFC 2195 section 2.
        """
        auth = CramMD5ClientAuthenticator(b"tim")
        response = auth.challengeResponse(b"tanstaaftanstaaf", b"<1896.697170952@postoffice.reston.mci.net>")
        self.assertEqual(response, b"tim b913a602c7eda7a495b4e6e7334d3890")

    def test_otherChallenge(self):
        """
        Another challenge and secret: lower-case hex, 32 digits.
        """
        auth = CramMD5ClientAuthenticator(b"user")
        response = auth.challengeResponse(b"pass", b"<12345.67890@mx.example>")
        self.assertEqual(response, b"user cb29057aacb55337b553616fd49c37ed")

    def test_textSecret(self):
        """
        A text secret is the same as its UTF-8 bytes.
        """
        auth = CramMD5ClientAuthenticator("tim")
        challenge = b"<1896.697170952@postoffice.reston.mci.net>"
        self.assertEqual(
            auth.challengeResponse("tanstaaftanstaaf", challenge),
            b"tim b913a602c7eda7a495b4e6e7334d3890",
        )


class XOAUTH2Tests(SynchronousTestCase):
    """
    XOAUTH2 (Google, Microsoft): C{user=USER ^A auth=Bearer TOKEN ^A ^A}.
    """

    def test_initialResponse(self):
        """
        Google's documented example, decoded.
        """
        auth = XOAUTH2Authenticator(b"someuser@example.com")
        token = b"ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
        self.assertEqual(
            auth.challengeResponse(token, b""),
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01",
        )

    def test_noChallenge(self):
        """
        The initial response does not need a challenge argument.
        """
        auth = XOAUTH2Authenticator("u@example.com")
        self.assertEqual(auth.challengeResponse("tok"), b"user=u@example.com\x01auth=Bearer tok\x01\x01")

    def test_errorChallenge(self):
        """
        To the server's error challenge (JSON), the answer is empty, so that
        the server sends its final failure reply.
        """
        auth = XOAUTH2Authenticator(b"u@example.com")
        error = b'{"status":"401","schemes":"bearer mac","scope":"https://mail.google.com/"}'
        self.assertEqual(auth.challengeResponse(b"tok", error), b"")


class OAUTHBEARERTests(SynchronousTestCase):
    """
    OAUTHBEARER (RFC 7628): a GS2 header, then key=value pairs separated by
    ^A, ending with ^A^A.
    """

    def test_rfc7628Shape(self):
        """
        With host and port, the initial response has the shape of the RFC
        7628 section 4.1 example.
        """
        auth = OAUTHBEARERAuthenticator(b"user@example.com", b"server.example.com", 143)
        token = b"vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
        self.assertEqual(
            auth.challengeResponse(token, b""),
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
            b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01",
        )

    def test_withoutHostAndPort(self):
        """
        Host and port are optional and left out when not given.
        """
        auth = OAUTHBEARERAuthenticator(b"user@example.com")
        self.assertEqual(auth.challengeResponse(b"tok"), b"n,a=user@example.com,\x01auth=Bearer tok\x01\x01")

    def test_saslnameEscaping(self):
        """
        In the GS2 header's authzid, C{=} and C{,} are escaped as C{=3D} and
        C{=2C} (RFC 5801 saslname).
        """
        auth = OAUTHBEARERAuthenticator(b"a=b,c@example.com")
        self.assertEqual(auth.challengeResponse(b"tok"), b"n,a=a=3Db=2Cc@example.com,\x01auth=Bearer tok\x01\x01")

    def test_errorChallenge(self):
        """
        To an error challenge (RFC 7628 section 3.2.2), the client answers
        with a single ^A.
        """
        auth = OAUTHBEARERAuthenticator(b"user@example.com")
        error = b'{"status":"invalid_token","scope":"example_scope"}'
        self.assertEqual(auth.challengeResponse(b"tok", error), b"\x01")
