# -*- test-case-name: mailproto.test.test_errors -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._errors}: twisted.mail's SMTP error hierarchy.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailproto import _errors
from mailproto._address import Address
from mailproto._replies import Reply


class HierarchyTests(SynchronousTestCase):
    """
    The classes, their bases and their defaults.
    """

    def test_bases(self):
        """
        Each error has twisted.mail's base class.
        """
        expected = {
            "SMTPClientError": "SMTPError",
            "ESMTPClientError": "SMTPClientError",
            "EHLORequiredError": "ESMTPClientError",
            "AUTHRequiredError": "ESMTPClientError",
            "TLSRequiredError": "ESMTPClientError",
            "AUTHDeclinedError": "ESMTPClientError",
            "AuthenticationError": "ESMTPClientError",
            "SMTPTLSError": "ESMTPClientError",
            "SMTPConnectError": "SMTPClientError",
            "SMTPTimeoutError": "SMTPClientError",
            "SMTPProtocolError": "SMTPClientError",
            "SMTPDeliveryError": "SMTPClientError",
            "SMTPServerError": "SMTPError",
            "SMTPAddressError": "SMTPServerError",
            "SMTPBadRcpt": "SMTPAddressError",
            "SMTPBadSender": "SMTPAddressError",
        }
        for name, base in expected.items():
            self.assertTrue(issubclass(getattr(_errors, name), getattr(_errors, base)), name)
        self.assertTrue(issubclass(_errors.AddressError, _errors.SMTPError))
        self.assertTrue(issubclass(_errors.SMTPError, Exception))

    def test_clientDefaults(self):
        """
        Connect and timeout errors are fatal and retried; protocol errors are
        fatal and not retried; others neither, unless told.
        """
        for cls, fatal, retry in [
            (_errors.SMTPClientError, False, False),
            (_errors.SMTPConnectError, True, True),
            (_errors.SMTPTimeoutError, True, True),
            (_errors.SMTPProtocolError, True, False),
            (_errors.SMTPDeliveryError, False, False),
            (_errors.AUTHDeclinedError, False, False),
        ]:
            error = cls(421, b"bye")
            self.assertEqual((error.isFatal, error.retry), (fatal, retry), cls)

    def test_clientAttributes(self):
        """
        An L{SMTPClientError} keeps its arguments; text is encoded as UTF-8.
        """
        error = _errors.SMTPClientError(550, "no \u00e9", "log", ["a"], True, True)
        self.assertEqual(
            (error.code, error.resp, error.log, error.addresses, error.isFatal, error.retry),
            (550, "no \u00e9".encode(), b"log", ["a"], True, True),
        )

    def test_clientFormat(self):
        """
        An L{SMTPClientError} shows the code, the reply and the transcript.
        """
        self.assertEqual(bytes(_errors.SMTPClientError(550, b"No")), b"550 No")
        self.assertEqual(str(_errors.SMTPClientError(550, b"No", b"C: RCPT\nS: 550")), "550 No\nC: RCPT\nS: 550\n")
        self.assertEqual(str(_errors.SMTPClientError(-1, b"Connection lost")), "Connection lost")

    def test_serverFormat(self):
        """
        Server errors show the code and the text; address errors the address
        too.
        """
        self.assertEqual(str(_errors.SMTPServerError(451, b"Try later")), "451 Try later")
        self.assertEqual(str(_errors.SMTPServerError(451, "Try later")), "451 Try later")
        self.assertEqual(str(_errors.SMTPBadRcpt(b"a@example.com")), "550 <a@example.com>... Cannot receive for specified address")
        self.assertEqual(str(_errors.SMTPBadSender("a@example.com")), "550 <a@example.com>... Sender not acceptable")
        self.assertEqual(_errors.SMTPBadRcpt(b"a@example.com").addr, Address(b"a@example.com"))
        self.assertEqual(str(_errors.AddressError("Unbalanced <>")), "Unbalanced <>")

    def test_replies(self):
        """
        Server errors know the reply they stand for, with an enhanced status
        when they have one.
        """
        self.assertEqual(_errors.SMTPServerError(451, b"Later").reply, Reply(451, [b"Later"]))
        self.assertEqual(_errors.SMTPServerError(452, "a\nb", b"4.5.3").reply, Reply(452, [b"a", b"b"], b"4.5.3"))
        self.assertEqual(_errors.SMTPBadRcpt(b"a@b.example").reply, Reply(550, [b"Cannot receive for specified address"], b"5.1.1"))
        self.assertEqual(_errors.SMTPBadSender(b"a@b.example").reply.status, b"5.7.1")
        self.assertEqual(_errors.SMTPBadRcpt(b"a@b.example", 450, "Busy", b"4.2.1").reply, Reply(450, [b"Busy"], b"4.2.1"))
        self.assertEqual(_errors.AddressError("Bad").reply, Reply(553, [b"Bad"], b"5.1.3"))


class ExplicitFlagsTests(SynchronousTestCase):
    """
    Flags given explicitly win over the class defaults.
    """

    def test_explicit(self):
        """
        C{isFatal} and C{retry} given as arguments are kept.
        """
        error = _errors.SMTPConnectError(-1, b"refused", isFatal=False, retry=False)
        self.assertEqual((error.isFatal, error.retry), (False, False))
        error = _errors.SMTPClientError(451, b"later", None, None, True, True)
        self.assertEqual((error.isFatal, error.retry), (True, True))
