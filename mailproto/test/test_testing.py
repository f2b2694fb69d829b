# -*- test-case-name: mailproto.test.test_testing -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
L{mailproto.testing}: the helpers users get for their own tests.
"""

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IResolutionReceiver, IResolver
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns, error
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailproto.interfaces import IMessageDelivery, IMessageStream
from mailproto.smtp import ESMTPFactory, SMTPServerError, User
from mailproto.test._loopback import noConnectionsLeft
from mailproto.test._peers import missing
from mailproto.test.test_client import TLSCapableTransport
from mailproto.testing import (
    TLS_HANDSHAKE_FAILURE,
    BrokenTLS,
    DeliveredMessage,
    Drop,
    FakeResolver,
    MemoryDelivery,
    MemoryMessage,
    NameResolver,
    ScriptedSMTPFactory,
    ScriptedSMTPServer,
    Stall,
    StartTLS,
    Trickle,
    connectInMemory,
)

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None


class ScriptedClient(LineReceiver):
    """
    A client that sends its script once greeted and keeps every reply line.
    """

    def __init__(self, script: bytes) -> None:
        self.script = script
        self.replies = []

    def lineReceived(self, line):
        self.replies.append(line)
        if len(self.replies) == 1:
            self.transport.write(self.script)


class ConnectInMemoryTests(SynchronousTestCase):
    """
    L{connectInMemory} joins a server and a client without sockets.
    """

    def test_dialogue(self):
        delivery = MemoryDelivery()
        server = ESMTPFactory(delivery=delivery, domain=b"mx.example").buildProtocol(None)
        client = ScriptedClient(
            b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
            b"DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
        )
        pump = connectInMemory(server, client)
        pump.flush()
        self.assertEqual(client.replies[0], b"220 mx.example NO UCE NO UBE NO RELAY PROBES ESMTP")
        self.assertEqual(client.replies[-2:], [b"250 2.0.0 Delivery in progress", b"221 2.0.0 See you later"])
        [message] = delivery.messages
        self.assertEqual(message.data, b"Subject: hi\r\n\r\n.dot\r\n")
        self.assertEqual(message.helo, (b"c.example", b"127.0.0.1"))
        self.assertTrue(pump.serverIO.disconnected)

    def test_addressesAndClock(self):
        """
        The addresses each side sees can be chosen, and the pump moves the
        given clock, which the server can use for its timeout.
        """
        clock = Clock()
        factory = ESMTPFactory(delivery=MemoryDelivery(), domain=b"mx.example", clock=clock, timeout=10)
        server = factory.buildProtocol(None)
        client = ScriptedClient(b"")
        connectInMemory(
            server, client, clock=clock, clientAddress=IPv4Address("TCP", "198.51.100.9", 1234)
        )
        self.assertEqual(server._helo, (None, b"198.51.100.9"))
        clock.advance(10)
        self.assertEqual(server.transport.getOutBuffer(), b"421 mx.example Timeout. Try talking faster next time!\r\n")


class MemoryDeliveryTests(SynchronousTestCase):
    """
    L{MemoryDelivery} and L{MemoryMessage} on their own.
    """

    def user(self, to=b"b@example.com"):
        return User(to, (b"c", b"127.0.0.1"), None, b"a@example.org")

    def test_interfaces(self):
        verifyObject(IMessageDelivery, MemoryDelivery())
        verifyObject(IMessageStream, MemoryMessage(MemoryDelivery(), self.user()))

    def test_records(self):
        delivery = MemoryDelivery()
        message = delivery.validateTo(self.user())()
        message.lineReceived(b"A: b")
        message.dataReceived(b"\r\nbody\r\n")
        self.successResultOf(message.eomReceived())
        [record] = delivery.messages
        self.assertIsInstance(record, DeliveredMessage)
        self.assertEqual((str(record.sender), str(record.recipient), record.data), ("a@example.org", "b@example.com", b"A: b\r\n\r\nbody\r\n"))
        self.assertIn("b@example.com", repr(record))

    def test_refusals(self):
        delivery = MemoryDelivery(refuseSenders=["a@example.org"], refuseRecipients=[b"b@example.com"])
        user = self.user()
        self.assertRaises(SMTPServerError, delivery.validateFrom, user.helo, user.orig)
        self.assertRaises(SMTPServerError, delivery.validateTo, user)
        delivery.validateTo(self.user(b"c@example.com"))

    def test_failDelivery(self):
        delivery = MemoryDelivery(failDelivery=SMTPServerError(452, "Full", b"4.2.2"))
        message = delivery.validateTo(self.user())()
        self.failureResultOf(message.eomReceived(), SMTPServerError)
        self.assertEqual(delivery.messages, [])

    def test_lost(self):
        delivery = MemoryDelivery()
        message = delivery.validateTo(self.user())()
        message.connectionLost()
        self.assertEqual(delivery.lost, [message])
        self.assertTrue(message.lost)

    def test_receivedHeader(self):
        self.assertIsNone(MemoryDelivery().receivedHeader(None, None, []))
        self.assertEqual(MemoryDelivery(receivedHeader=b"Received: x").receivedHeader(None, None, []), b"Received: x")


class FakeResolverTests(SynchronousTestCase):
    """
    L{FakeResolver} answers like a resolver, from dictionaries.
    """

    def setUp(self):
        self.resolver = FakeResolver(
            mx={"Example.com.": [(10, "mx1.example.com"), (20, "mx2.example.com")], "null.example": [(0, ".")]},
            a={"mx1.example.com": ["192.0.2.1", "192.0.2.2"], "empty.example": []},
            aaaa={"mx1.example.com": ["2001:db8::1"]},
            cname={"alias.example": "alias2.example", "alias2.example": "example.com", "loop.example": "loop.example",
                   "dangling.example": "nowhere.example"},
            failures={("broken.example", "MX"): error.DNSServerError, ("slow.example", dns.A): defer.TimeoutError()},
        )

    def answer(self, d):
        answers, authority, additional = self.successResultOf(d)
        self.assertEqual((authority, additional), ([], []))
        for header in answers:
            self.assertIsInstance(header, dns.RRHeader)
            self.assertEqual(header.type, header.payload.TYPE)
        return [(header.name.name, header.payload) for header in answers]

    def test_interface(self):
        self.assertTrue(verifyObject(IResolver, self.resolver))

    def test_mailExchange(self):
        self.assertEqual(
            self.answer(self.resolver.lookupMailExchange("EXAMPLE.com.")),
            [(b"example.com", dns.Record_MX(10, b"mx1.example.com", ttl=3600)),
             (b"example.com", dns.Record_MX(20, b"mx2.example.com", ttl=3600))],
        )
        [(name, record)] = self.answer(self.resolver.lookupMailExchange("null.example"))
        self.assertEqual(record.name.name, b"")

    def test_addresses(self):
        self.assertEqual(
            [record.dottedQuad() for name, record in self.answer(self.resolver.lookupAddress("mx1.example.com"))],
            ["192.0.2.1", "192.0.2.2"],
        )
        self.assertEqual(
            self.answer(self.resolver.lookupIPV6Address(b"mx1.example.com")),
            [(b"mx1.example.com", dns.Record_AAAA("2001:db8::1", ttl=3600))],
        )

    def test_noData(self):
        """
        A known name without records of the type asked: an empty answer.
        """
        self.assertEqual(self.answer(self.resolver.lookupAddress("example.com")), [])
        self.assertEqual(self.answer(self.resolver.lookupAddress("empty.example")), [])
        self.assertEqual(self.answer(self.resolver.lookupMailExchange("mx1.example.com")), [])

    def test_nxdomain(self):
        self.failureResultOf(self.resolver.lookupMailExchange("missing.example"), error.DNSNameError)
        self.failureResultOf(self.resolver.lookupAddress("dangling.example"), error.DNSNameError)

    def test_failures(self):
        """
        Chosen queries fail with the exception given (an instance of it if
        it is a class); the same name's other types do not.
        """
        self.failureResultOf(self.resolver.lookupMailExchange("broken.example"), error.DNSServerError)
        self.failureResultOf(self.resolver.lookupAddress("slow.example"), defer.TimeoutError)
        self.failureResultOf(self.resolver.lookupIPV6Address("slow.example"), error.DNSNameError)

    def test_canonicalNames(self):
        """
        The chain of CNAME records comes with the records at its end, or
        alone if C{followCNAMEs} is false; a loop stops.
        """
        self.assertEqual(
            self.answer(self.resolver.lookupMailExchange("alias.example")),
            [(b"alias.example", dns.Record_CNAME(b"alias2.example", ttl=3600)),
             (b"alias2.example", dns.Record_CNAME(b"example.com", ttl=3600)),
             (b"example.com", dns.Record_MX(10, b"mx1.example.com", ttl=3600)),
             (b"example.com", dns.Record_MX(20, b"mx2.example.com", ttl=3600))],
        )
        self.assertEqual(
            self.answer(self.resolver.lookupMailExchange("loop.example")),
            [(b"loop.example", dns.Record_CNAME(b"loop.example", ttl=3600))],
        )
        self.assertEqual(
            self.answer(self.resolver.lookupCanonicalName("alias.example")),
            [(b"alias.example", dns.Record_CNAME(b"alias2.example", ttl=3600))],
        )
        self.resolver.followCNAMEs = False
        self.assertEqual(
            self.answer(self.resolver.lookupMailExchange("alias.example")),
            [(b"alias.example", dns.Record_CNAME(b"alias2.example", ttl=3600))],
        )

    def test_queries(self):
        self.resolver.lookupMailExchange("Example.COM")
        self.resolver.lookupAddress("missing.example").addErrback(lambda f: None)
        self.resolver.query(dns.Query(b"mx1.example.com", dns.AAAA))
        self.assertEqual(
            self.resolver.queries,
            [("example.com", "MX"), ("missing.example", "A"), ("mx1.example.com", "AAAA")],
        )

    def test_getHostByName(self):
        """
        The resolver's other methods work too, like C{getHostByName}.
        """
        self.assertIn(self.successResultOf(self.resolver.getHostByName("mx1.example.com")), ["192.0.2.1", "2001:db8::1"])
        self.resolver.cname["www.example"] = "mx1.example.com"
        self.assertIn(self.successResultOf(self.resolver.getHostByName("www.example")), ["192.0.2.1", "2001:db8::1"])

    def test_ttl(self):
        [(name, record)] = self.answer(FakeResolver(a={"h.example": ["192.0.2.1"]}, ttl=5).lookupAddress("h.example"))
        self.assertEqual(record.ttl, 5)

    def test_internationalized(self):
        """
        Names given as U-labels answer queries of their A-labels.
        """
        resolver = FakeResolver(a={"Bücher.example": ["192.0.2.1"]})
        self.assertEqual(list(resolver.a), ["xn--bcher-kva.example"])
        self.assertEqual(len(self.answer(resolver.lookupAddress("bücher.example"))), 1)
        self.assertEqual(resolver.queries, [("xn--bcher-kva.example", "A")])

    def test_moduleExample(self):
        """
        The routing example of the module's docstring works.
        """
        import mailproto.testing

        example = mailproto.testing.__doc__.split("A test of routing::")[1]
        code = "\n".join(line[4:] for line in example.splitlines())
        exec(compile(code, "mailproto.testing example", "exec"), {})


class ScriptedSMTPServerTests(SynchronousTestCase):
    """
    L{ScriptedSMTPServer} answers as its script says, on a
    L{StringTransport} with a fake clock, and records what it received.
    """

    def connect(self, script=None, **kw):
        self.clock = Clock()
        self.server = ScriptedSMTPServer(script, clock=self.clock, **kw)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)

    def said(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def test_defaults(self):
        """
        Without a script it behaves: greeting, EHLO with its extensions,
        a message received and recorded (dot-stuffing removed), QUIT closes.
        """
        self.connect(extensions=[b"PIPELINING", b"SIZE 1000"])
        self.assertEqual(self.said(), b"220 mx.example ESMTP scripted\r\n")
        self.server.dataReceived(b"EHLO me\r\n")
        self.assertEqual(self.said(), b"250-mx.example greets you\r\n250-PIPELINING\r\n250 SIZE 1000\r\n")
        self.server.dataReceived(b"MAIL FROM:<a@example>\r\nRCPT TO:<b@example>\r\nDATA\r\n")
        self.assertEqual(self.said(), b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
        self.server.dataReceived(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
        self.assertEqual(self.said(), b"250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.server.messages, [b"Subject: x\r\n\r\n.dot\r\n"])
        self.assertEqual(
            self.server.commands, [b"EHLO me", b"MAIL FROM:<a@example>", b"RCPT TO:<b@example>", b"DATA", b"QUIT"]
        )

    def test_listsInTurn(self):
        """
        A list of actions is used in turn, its last one again after.
        """
        self.connect({b"RCPT": [b"250 one\r\n", b"452 enough\r\n"]})
        self.said()
        self.server.dataReceived(b"RCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\n")
        self.assertEqual(self.said(), b"250 one\r\n452 enough\r\n452 enough\r\n")

    def test_2xxToDataNoMessage(self):
        """
        DATA answered with 250: no message is read; what follows is taken
        as commands.
        """
        self.connect({b"DATA": b"250 2.0.0 Ok\r\n"})
        self.said()
        self.server.dataReceived(b"DATA\r\nhello\r\n")
        self.assertEqual(self.said(), b"250 2.0.0 Ok\r\n500 5.5.2 Command not recognized\r\n")
        self.assertEqual(self.server.messages, [])

    def test_nothing(self):
        """
        C{b""} answers nothing, and the session goes on.
        """
        self.connect({b"NOOP": b""})
        self.said()
        self.server.dataReceived(b"NOOP\r\nRSET\r\n")
        self.assertEqual(self.said(), b"250 2.0.0 Ok\r\n")

    def test_drop(self):
        """
        L{Drop} writes its data, closes, and reads nothing more.
        """
        self.connect({b"MAIL": Drop(b"421 4.7.0 Bye\r\n")})
        self.said()
        self.server.dataReceived(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n")
        self.assertEqual(self.said(), b"421 4.7.0 Bye\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.server.commands, [b"MAIL FROM:<a@x>"])

    def test_stall(self):
        """
        L{Stall} answers nothing more, and keeps the connection.
        """
        self.connect({b"EOD": Stall()})
        self.said()
        self.server.dataReceived(b"DATA\r\nx\r\n.\r\nQUIT\r\n")
        self.assertEqual(self.said(), b"354 End data with <CR><LF>.<CR><LF>\r\n")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.server.messages, [b"x\r\n"])

    def test_trickle(self):
        """
        L{Trickle} writes a line per delay on the clock; losing the
        connection cancels the rest.
        """
        self.connect({b"EHLO": Trickle(b"250-a\r\n250-b\r\n250 c\r\n", 5)})
        self.said()
        self.server.dataReceived(b"EHLO me\r\n")
        self.assertEqual(self.said(), b"")
        self.clock.advance(5)
        self.assertEqual(self.said(), b"250-a\r\n")
        self.clock.advance(5)
        self.assertEqual(self.said(), b"250-b\r\n")
        self.server.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.server.closed.called)

    def test_greetingAndOther(self):
        """
        C{GREETING} is said on connecting; C{OTHER} answers what the
        script does not name.
        """
        self.connect({b"GREETING": b"554 5.3.2 Go away\r\n", b"OTHER": b"garbage\r\n"})
        self.assertEqual(self.said(), b"554 5.3.2 Go away\r\n")
        self.server.dataReceived(b"VRFY x\r\n")
        self.assertEqual(self.said(), b"garbage\r\n")

    def test_factory(self):
        """
        L{ScriptedSMTPFactory} makes a server per connection with its
        script, and gathers what they all received.
        """
        factory = ScriptedSMTPFactory({b"MAIL": b"451 later\r\n"}, clock=Clock())
        for _ in range(2):
            server = factory.buildProtocol(None)
            server.makeConnection(StringTransport())
            server.dataReceived(b"MAIL FROM:<a@x>\r\n")
            self.assertEqual(server.transport.value().splitlines()[-1], b"451 later")
            server.connectionLost(None)
        self.assertEqual(factory.commands, [b"MAIL FROM:<a@x>"] * 2)
        self.assertTrue(self.successResultOf(factory.allClosed()) is not None)

    def test_withClient(self):
        """
        With L{connectInMemory}, a client meets the scripted server.
        """
        from mailproto.test.test_client import ESMTPTestClient

        server = ScriptedSMTPServer({b"DATA": b"250 2.0.0 Ok\r\n"}, clock=Clock())
        client = ESMTPTestClient([(b"a@example.org", [b"b@example.com"], b"Subject: x\r\n\r\nx\r\n")])
        connectInMemory(server, client).flush()
        self.assertEqual(client.results, [])
        self.assertEqual(len(client.errors), 1)
        self.assertEqual(server.messages, [])

    def test_callable(self):
        """
        A callable action gets the line and the server, and returns the
        action: here a reply that depends on how many recipients the
        transaction has (L{ScriptedSMTPServer.accepted}, counted anew from
        each MAIL); C{None} is the default.
        """
        seen = []

        def rcpt(line, server):
            seen.append((line, server.accepted))
            return b"250 2.1.5 Ok\r\n" if server.accepted < 2 else b"452 4.5.3 Too many recipients\r\n"

        self.connect({b"RCPT": rcpt, b"MAIL": lambda line, server: None})
        self.said()
        self.server.dataReceived(b"MAIL FROM:<a@x>\r\n" + b"".join(b"RCPT TO:<%d@x>\r\n" % n for n in range(3)))
        self.assertEqual(
            self.said(), b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n"
        )
        self.assertEqual(self.server.accepted, 2)
        self.server.dataReceived(b"MAIL FROM:<a@x>\r\nRCPT TO:<3@x>\r\n")
        self.assertEqual(self.said(), b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assertEqual(seen, [(b"RCPT TO:<0@x>", 0), (b"RCPT TO:<1@x>", 1), (b"RCPT TO:<2@x>", 2), (b"RCPT TO:<3@x>", 0)])

    def test_callableEvents(self):
        """
        A callable for C{GREETING} gets C{b""}, for C{BODY} each line of
        the message, for C{EOD} C{b"."} (with the transaction's recipients
        still counted); callables may be in lists, and may return any
        action; the end of data starts a new transaction.
        """
        lines = []

        def record(line, server):
            lines.append((line, server.accepted))
            return b""

        self.connect(
            {
                b"GREETING": lambda line, server: b"220 hello %s\r\n" % (line or b"nothing"),
                b"BODY": record,
                b"EOD": [record, lambda line, server: Drop(b"421 4.3.0 Enough\r\n")],
                b"RCPT": b"251 2.1.5 Ok\r\n",
            }
        )
        self.assertEqual(self.said(), b"220 hello nothing\r\n")
        self.server.dataReceived(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n..one\r\n.\r\n")
        self.assertEqual(self.server.accepted, 0)
        self.assertEqual(lines, [(b"..one", 1), (b".", 1)])
        self.assertEqual(self.server.messages, [b".one\r\n"])
        self.said()
        self.server.dataReceived(b"DATA\r\ntwo\r\n.\r\n")
        self.assertEqual(self.said(), b"354 End data with <CR><LF>.<CR><LF>\r\n421 4.3.0 Enough\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_brokenTLS(self):
        """
        L{BrokenTLS}: STARTTLS is offered in the default EHLO reply and
        answered 220; what the client pipelined after it is thrown away;
        its first bytes after (its TLS hello) are answered with a TLS
        alert, and the connection closed.
        """
        self.connect({b"STARTTLS": BrokenTLS()}, extensions=[b"PIPELINING"])
        self.said()
        self.server.dataReceived(b"EHLO me\r\n")
        self.assertEqual(self.said(), b"250-mx.example greets you\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
        self.server.dataReceived(b"STARTTLS\r\nMAIL FROM:<a@x>\r\n")
        self.assertEqual(self.said(), b"220 2.0.0 Ready to start TLS\r\n")
        self.assertFalse(self.transport.disconnecting)
        self.server.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertEqual(self.said(), TLS_HANDSHAKE_FAILURE)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.server.commands, [b"EHLO me", b"STARTTLS"])
        self.assertFalse(self.server.tls)

    def test_brokenTLSChoices(self):
        """
        L{BrokenTLS} may answer the hello with other bytes, or with
        nothing, and say something else than 220; STARTTLS is not offered
        twice when the extensions list it already.
        """
        self.connect({b"STARTTLS": [BrokenTLS(b"", b"220 Go\r\n")]}, extensions=[b"STARTTLS"])
        self.said()
        self.server.dataReceived(b"EHLO me\r\nSTARTTLS\r\n")
        self.assertEqual(self.said(), b"250-mx.example greets you\r\n250 STARTTLS\r\n220 Go\r\n")
        self.server.dataReceived(b"\x16\x03\x01")
        self.assertEqual(self.said(), b"")
        self.assertTrue(self.transport.disconnecting)

    def test_startTLS(self):
        """
        L{StartTLS} writes its reply, then starts TLS with its context on
        the transport; what the client sent after STARTTLS before TLS is
        thrown away; the transaction is forgotten; STARTTLS is no longer
        offered, and is refused if said again.
        """
        context = object()
        self.clock = Clock()
        self.server = ScriptedSMTPServer({b"STARTTLS": StartTLS(context)}, clock=self.clock, extensions=[b"8BITMIME"])
        self.transport = TLSCapableTransport()
        self.server.makeConnection(self.transport)
        self.said()
        self.server.dataReceived(b"EHLO me\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n")
        self.assertEqual(
            self.said(), b"250-mx.example greets you\r\n250-8BITMIME\r\n250 STARTTLS\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
        )
        self.assertEqual(self.server.accepted, 1)
        self.server.dataReceived(b"STARTTLS\r\nRSET\r\n")
        self.assertEqual(self.transport.tlsStarts, [(context, len(b"220 2.0.0 Ready to start TLS\r\n"))])
        self.assertEqual(self.said(), b"220 2.0.0 Ready to start TLS\r\n")
        self.assertTrue(self.server.tls)
        self.assertEqual(self.server.accepted, 0)
        self.server.dataReceived(b"EHLO me\r\nSTARTTLS\r\n")
        self.assertEqual(
            self.said(), b"250-mx.example greets you\r\n250 8BITMIME\r\n503 5.5.1 TLS already active\r\n"
        )
        self.assertEqual(len(self.transport.tlsStarts), 1)
        self.assertEqual(self.server.commands[-3:], [b"STARTTLS", b"EHLO me", b"STARTTLS"])

    def test_startTLSNotOfferedUnscripted(self):
        """
        Without a TLS action for STARTTLS, the default EHLO reply does not
        offer it, and STARTTLS is refused.
        """
        self.connect({b"STARTTLS": lambda line, server: StartTLS(None)}, extensions=[b"PIPELINING"])
        self.said()
        self.server.dataReceived(b"EHLO me\r\n")
        self.assertEqual(self.said(), b"250-mx.example greets you\r\n250 PIPELINING\r\n")
        self.connect()
        self.said()
        self.server.dataReceived(b"STARTTLS\r\n")
        self.assertEqual(self.said(), b"454 4.7.0 TLS not available\r\n")


class ScriptedTLSLoopbackTests(TestCase):
    """
    L{StartTLS} and L{BrokenTLS} over loopback TCP, with mailproto's
    C{sendmail} as the client, which requires TLS and trusts one
    authority.
    """

    timeout = 30

    def setUp(self):
        if trustme is None:
            missing("trustme is not installed")
        self.authority = trustme.CA()

    def serverOptions(self, authority, name="127.0.0.1"):
        from twisted.internet.ssl import PrivateCertificate

        pem = authority.issue_cert(name).private_key_and_cert_chain_pem.bytes()
        return PrivateCertificate.loadPEM(pem).options()

    @defer.inlineCallbacks
    def send(self, startTLS):
        """
        Send a message to a scripted server whose STARTTLS does
        C{startTLS}.

        @return: the server factory, and the result of C{sendmail} (or its
            failure).
        """
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        from mailproto.smtp import sendmail

        factory = ScriptedSMTPFactory({b"STARTTLS": startTLS})
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        trusted = Certificate.loadPEM(self.authority.cert_pem.bytes())
        d = sendmail(
            "127.0.0.1", "a@example.org", ["b@example.com"], b"Subject: over TLS\r\n\r\nHello.\r\n",
            port=port.getHost().port, requireTransportSecurity=True, retries=0,
            contextFactory=optionsForClientTLS("127.0.0.1", trustRoot=trusted),
        )  # fmt: skip
        results = []
        d.addBoth(results.append)
        yield d
        yield factory.allClosed()
        yield defer.ensureDeferred(noConnectionsLeft(self))
        return factory, results[0]

    @defer.inlineCallbacks
    def test_trusted(self):
        """
        A certificate the client trusts: the message goes over TLS.
        """
        factory, result = yield self.send(StartTLS(self.serverOptions(self.authority)))
        self.assertEqual(result[0], 1)
        [server] = factory.servers
        self.assertTrue(server.tls)
        self.assertEqual([c.split(b" ")[0] for c in server.commands], [b"EHLO", b"STARTTLS", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"])
        self.assertEqual(server.messages, [b"Subject: over TLS\r\n\r\nHello.\r\n"])

    @defer.inlineCallbacks
    def assertNothingSent(self, startTLS, why: str):
        """
        The client's TLS handshake fails with C{why} in its error, and the
        client sends nothing after STARTTLS.
        """
        factory, result = yield self.send(startTLS)
        self.assertIsInstance(result, Failure)
        self.assertIn(why, str(result.value))
        self.assertEqual([c.split(b" ")[0] for c in factory.commands], [b"EHLO", b"STARTTLS"])
        self.assertEqual(factory.messages, [])

    def test_untrustedAuthority(self):
        """
        A certificate of an authority the client does not trust: the
        handshake fails, nothing is sent.
        """
        return self.assertNothingSent(StartTLS(self.serverOptions(trustme.CA())), "certificate verify failed")

    def test_wrongName(self):
        """
        A certificate for another name: the handshake fails, nothing is
        sent.
        """
        return self.assertNothingSent(StartTLS(self.serverOptions(self.authority, "mx.example")), "for another name")

    def test_brokenHandshake(self):
        """
        L{BrokenTLS}: the client's hello gets an alert; nothing is sent.
        """
        return self.assertNothingSent(BrokenTLS(), "handshake failure")


class NameResolverTests(SynchronousTestCase):
    """
    L{mailproto.testing.NameResolver}: fixed answers, filtered by address
    type, held until released when asked.
    """

    def resolve(self, resolver, name, addressTypes=None):
        found = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution):
                found.append("began")

            def addressResolved(self, address):
                found.append((type(address).__name__, address.host, address.port))

            def resolutionComplete(self):
                found.append("complete")

        resolver.resolveHostName(Receiver(), name, 25, addressTypes)
        return found

    def test_answers(self):
        resolver = NameResolver({"mx.example": ["2001:db8::25", "192.0.2.25"]})
        self.assertEqual(
            self.resolve(resolver, "mx.example"),
            ["began", ("IPv6Address", "2001:db8::25", 25), ("IPv4Address", "192.0.2.25", 25), "complete"],
        )
        self.assertEqual(self.resolve(resolver, "mx.example", [IPv4Address]), ["began", ("IPv4Address", "192.0.2.25", 25), "complete"])
        self.assertEqual(self.resolve(resolver, "gone.example"), ["began", "complete"])

    def test_hold(self):
        resolver = NameResolver({"mx.example": ["192.0.2.25"]}, hold=True)
        found = self.resolve(resolver, "mx.example")
        self.assertEqual(found, [])
        resolver.release()
        self.assertEqual(found, ["began", ("IPv4Address", "192.0.2.25", 25), "complete"])
