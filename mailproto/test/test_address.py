# -*- test-case-name: mailproto.test.test_address -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._grammar} and L{mailproto._address}: the RFC 5321
grammar, L{Address}, L{User} and L{quoteaddr}.
"""

import pickle

from twisted.trial.unittest import SynchronousTestCase

from mailproto import _grammar
from mailproto._address import Address, User, quoteaddr
from mailproto._errors import AddressError, SMTPError, SMTPServerError
from mailproto._headers import localHostname

# (input, local, domain)
GOOD_ADDRESSES = [
    (b"user@example.com", b"user", b"example.com"),
    (b"<user@example.com>", b"user", b"example.com"),
    (b"first.last+tag@sub.example.co.uk", b"first.last+tag", b"sub.example.co.uk"),
    (b"!#$%&'*+-/=?^_`{|}~@example.com", b"!#$%&'*+-/=?^_`{|}~", b"example.com"),
    (b'"john doe"@example.com', b'"john doe"', b"example.com"),
    (b'"a\\"b"@example.com', b'"a\\"b"', b"example.com"),
    (b'"a>b@c"@example.com', b'"a>b@c"', b"example.com"),
    (b'""@example.com', b'""', b"example.com"),
    (b"user@[192.0.2.1]", b"user", b"[192.0.2.1]"),
    (b"user@[IPv6:2001:db8::1]", b"user", b"[IPv6:2001:db8::1]"),
    (b"user@[ipv6:::1]", b"user", b"[ipv6:::1]"),
    (b"user@[IPv6:::ffff:192.0.2.1]", b"user", b"[IPv6:::ffff:192.0.2.1]"),
    (b"user@[x-tag:some-content]", b"user", b"[x-tag:some-content]"),
    (b"<@relay.example:user@example.com>", b"user", b"example.com"),
    (b"<@a.example,@b.example:user@example.com>", b"user", b"example.com"),
    (b"1@2.3", b"1", b"2.3"),
    (b"a@x-y.example", b"a", b"x-y.example"),
    ("j\u00f6rg@b\u00fccher.example".encode(), "j\u00f6rg".encode(), "b\u00fccher.example".encode()),
    ("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a".encode(), "\u7528\u6237".encode(), "\u4f8b\u5b50.\u5e7f\u544a".encode()),
    (b"  spaced@example.com  ", b"spaced", b"example.com"),
    (b"<>", b"", b""),
    (b"", b"", b""),
]

BAD_ADDRESSES = [
    b"a@b@c",
    b"a..b@example.com",
    b".a@example.com",
    b"a.@example.com",
    b"a b@example.com",
    b"a@-example.com",
    b"a@example-.com",
    b"a@exa_mple.com",
    b"a@example..com",
    b"a@.example.com",
    b"a@",
    b"@example.com",
    b"<a@example.com",
    b"a@example.com>",
    b"<<a@example.com>>",
    b'"unclosed@example.com',
    b'"a"b@example.com',
    b"a@[192.0.2.256]",
    b"a@[192.0.2]",
    b"a@[IPv6:2001:db8::g]",
    b"a@[IPv6:1:2:3:4:5:6:7:8:9]",
    b"a@[tag:with space]",
    b"a@[no-colon]",
    b"<@relay.example user@example.com>",
    b"<@:user@example.com>",
    b"a@" + b"x" * 64 + b".example",
    b"a@" + b"a." * 127 + b"com",
    b"a\x00b@example.com",
    b"a@exa\rmple.com",
    b"\xc3(@example.com",
    b"a@\xff\xfe.example",
]


class GrammarTests(SynchronousTestCase):
    """
    The predicates of L{mailproto._grammar}.
    """

    def test_domains(self):
        """
        L{_grammar.isDomain} follows RFC 5321 C{Domain}, with 63-octet labels
        and 255-octet names; U-labels only when asked.
        """
        for good in [b"a", b"example.com", b"a-b.c-d.e", b"x" * 63 + b".example", b"0.1"]:
            self.assertTrue(_grammar.isDomain(good), good)
        for bad in [b"", b"-a", b"a-", b"a..b", b".a", b"a.", b"x" * 64, b"a_b", b"a b", b"[1.2.3.4]"]:
            self.assertFalse(_grammar.isDomain(bad), bad)
        self.assertFalse(_grammar.isDomain(b"a." * 127 + b"bc"))
        self.assertTrue(_grammar.isDomain(b"a." * 126 + b"bc"))
        idn = "b\u00fccher.example".encode()
        self.assertFalse(_grammar.isDomain(idn))
        self.assertTrue(_grammar.isDomain(idn, utf8=True))
        self.assertFalse(_grammar.isDomain(b"\xff.example", utf8=True))

    def test_addressLiterals(self):
        """
        L{_grammar.isAddressLiteral} checks octet ranges and IPv6 syntax.
        """
        for good in [b"[0.0.0.0]", b"[255.255.255.255]", b"[IPv6:::1]", b"[IPv6:fe80::1:2]", b"[tag:x]"]:
            self.assertTrue(_grammar.isAddressLiteral(good), good)
        for bad in [b"[256.0.0.1]", b"1.2.3.4", b"[1.2.3]", b"[IPv6:::1::2]", b"[IPv6:]", b"[]", b"[:x]"]:
            self.assertFalse(_grammar.isAddressLiteral(bad), bad)

    def test_quoteLocalPart(self):
        """
        A local part is quoted only when it is not a C{Dot-string}, and
        quoting escapes quotes and backslashes.
        """
        self.assertEqual(_grammar.quoteLocalPart(b"a.b"), b"a.b")
        self.assertEqual(_grammar.quoteLocalPart(b"a b"), b'"a b"')
        self.assertEqual(_grammar.quoteLocalPart(b'a"b\\c'), b'"a\\"b\\\\c"')
        self.assertEqual(_grammar.quoteLocalPart(b"a..b"), b'"a..b"')
        self.assertEqual(_grammar.unquoteLocalPart(b'"a\\"b\\\\c"'), b'a"b\\c')
        self.assertEqual(_grammar.unquoteLocalPart(b"plain"), b"plain")

    def test_keywords(self):
        """
        L{_grammar.isKeyword} is C{esmtp-keyword}.
        """
        for good in [b"SIZE", b"8BITMIME", b"X-FOO", b"a"]:
            self.assertTrue(_grammar.isKeyword(good))
        for bad in [b"", b"-X", b"A=B", b"A B", b"\xc3\xa9"]:
            self.assertFalse(_grammar.isKeyword(bad))


class AddressTests(SynchronousTestCase):
    """
    L{Address}.
    """

    def test_good(self):
        """
        Well-formed addresses parse into their local part and domain, and
        format back to C{local@domain}.
        """
        for raw, local, domain in GOOD_ADDRESSES:
            for given in (raw, raw.decode("utf-8")):
                address = Address(given)
                self.assertEqual((address.local, address.domain), (local, domain), raw)
                self.assertEqual(bytes(address), local + b"@" + domain if local else b"", raw)
                self.assertEqual(Address(bytes(address)), address, raw)

    def test_bad(self):
        """
        Malformed addresses raise L{AddressError}, which carries the reply
        C{553 5.1.3} and is an L{SMTPError} as in twisted.mail.
        """
        for raw in BAD_ADDRESSES:
            with self.assertRaises(AddressError, msg=repr(raw)) as caught:
                Address(raw)
            error = caught.exception
            self.assertIsInstance(error, SMTPError)
            self.assertIsInstance(error, SMTPServerError)
            self.assertEqual((error.code, error.status), (553, b"5.1.3"))

    def test_defaultDomain(self):
        """
        A bare local part gets the default domain, or the local host name.
        """
        self.assertEqual(bytes(Address(b"postmaster", b"example.org")), b"postmaster@example.org")
        self.assertEqual(bytes(Address("Postmaster", "example.org")), b"Postmaster@example.org")
        self.assertEqual(Address(b"<root>").domain, localHostname())

    def test_copy(self):
        """
        An L{Address} or a L{User} given to L{Address} is copied.
        """
        original = Address(b"a@example.com")
        copy = Address(original)
        self.assertEqual(copy, original)
        self.assertIsNot(copy, original)
        user = User(b"b@example.com", (b"helo", "192.0.2.1"), None, b"a@example.com")
        self.assertEqual(Address(user), Address(b"b@example.com"))

    def test_strAndRepr(self):
        """
        L{str} gives the address as text; L{repr} names the class.
        """
        address = Address("j\u00f6rg@example.com")
        self.assertEqual(str(address), "j\u00f6rg@example.com")
        self.assertEqual(repr(address), "mailproto._address.Address('j\u00f6rg@example.com')")

    def test_equality(self):
        """
        Addresses are equal when local parts are equal and domains are equal
        but for case; they hash alike then.
        """
        self.assertEqual(Address(b"a@EXAMPLE.com"), Address(b"a@example.COM"))
        self.assertEqual(hash(Address(b"a@EXAMPLE.com")), hash(Address(b"a@example.com")))
        self.assertNotEqual(Address(b"A@example.com"), Address(b"a@example.com"))
        self.assertNotEqual(Address(b"a@example.com"), b"a@example.com")

    def test_null(self):
        """
        C{<>} is the null address.
        """
        self.assertTrue(Address(b"<>").isNull)
        self.assertFalse(Address(b"a@b").isNull)

    def test_needsSMTPUTF8(self):
        """
        Only addresses with non-ASCII characters need SMTPUTF8.
        """
        self.assertFalse(Address(b"a@example.com").needsSMTPUTF8)
        self.assertTrue(Address("\u00e9@example.com").needsSMTPUTF8)
        self.assertTrue(Address("a@\u00e9.example").needsSMTPUTF8)

    def test_dequote(self):
        """
        L{Address.dequote} removes the quotes of a quoted local part.
        """
        address = Address(b'"a b"@example.com')
        self.assertEqual(address.dequote(address.local), b"a b")
        self.assertEqual(address.dequote(b'"x\\"y"@example.com'), b'x"y@example.com')
        self.assertEqual(address.dequote(b"plain@example.com"), b"plain@example.com")
        self.assertEqual(address.dequote(b'"@"@example.com'), b"@@example.com")
        self.assertEqual(address.dequote(b'"a\\"@"'), b'a"@')

    def test_fromParts(self):
        """
        L{Address.fromParts} quotes the local part when it must.
        """
        self.assertEqual(bytes(Address.fromParts(b"a b", b"example.com")), b'"a b"@example.com')
        self.assertEqual(bytes(Address.fromParts("x.y", "example.com")), b"x.y@example.com")
        self.assertRaises(AddressError, Address.fromParts, b"", b"example.com")
        self.assertRaises(AddressError, Address.fromParts, b"a", b"-bad-")


class UserTests(SynchronousTestCase):
    """
    L{User}.
    """

    def test_attributes(self):
        """
        A L{User} has its destination, the HELO, the protocol and the
        sender, and formats as its destination.
        """

        class Protocol:
            host = b"mx.example.org"

        protocol = Protocol()
        user = User(b"rcpt", (b"client.example", "192.0.2.7"), protocol, b"sender@example.com")
        self.assertEqual(user.dest, Address(b"rcpt@mx.example.org"))
        self.assertEqual(user.orig, Address(b"sender@example.com"))
        self.assertEqual(user.helo, (b"client.example", "192.0.2.7"))
        self.assertIs(user.protocol, protocol)
        self.assertEqual(bytes(user), b"rcpt@mx.example.org")
        self.assertEqual(str(user), "rcpt@mx.example.org")

    def test_origAddressKept(self):
        """
        An L{Address} given as the sender is used as it is.
        """
        orig = Address(b"<>")
        user = User(b"a@example.com", None, None, orig)
        self.assertIs(user.orig, orig)

    def test_pickle(self):
        """
        A L{User} pickles without its protocol.
        """

        class Unpicklable:
            host = b"example.net"

            def __reduce__(self):
                raise TypeError("no")

        user = User(b"a@example.com", (b"h", "192.0.2.1"), Unpicklable(), b"b@example.com")
        copy = pickle.loads(pickle.dumps(user))
        self.assertEqual((copy.dest, copy.orig, copy.helo, copy.protocol), (user.dest, user.orig, user.helo, None))


class QuoteaddrTests(SynchronousTestCase):
    """
    L{quoteaddr}.
    """

    def test_forms(self):
        """
        Display names are dropped; the address is put in angle brackets.
        """
        cases = [
            (b"a@example.com", b"<a@example.com>"),
            ("Jo Smith <jo@example.com>", b"<jo@example.com>"),
            (b'"Smith, Jo" <jo@example.com>', b"<jo@example.com>"),
            (b"<jo@example.com>", b"<jo@example.com>"),
            (Address(b"x@example.com"), b"<x@example.com>"),
            (b"", b"<>"),
            (b"<>", b"<>"),
            ("J\u00f6rg <j\u00f6rg@example.com>", "<j\u00f6rg@example.com>".encode()),
        ]
        for given, expected in cases:
            self.assertEqual(quoteaddr(given), expected, given)

    def test_user(self):
        """
        A L{User} quotes as its destination.
        """
        user = User(b"a@example.com", None, None, b"b@example.com")
        self.assertEqual(quoteaddr(user), b"<a@example.com>")

    def test_controlCharacters(self):
        """
        CR, LF and other control characters are refused, not stripped: they
        are how commands get injected.
        """
        for bad in [b"a@example.com\r\nRCPT TO:<x@y>", "a@b\n", b"a\x00@example.com", b"a@b\x7f"]:
            self.assertRaises(AddressError, quoteaddr, bad)

    def test_unparseable(self):
        """
        Something that is not an address is refused.
        """
        for bad in [b"@@@", b"a@b@c", b"Name <>x"]:
            self.assertRaises(AddressError, quoteaddr, bad)
