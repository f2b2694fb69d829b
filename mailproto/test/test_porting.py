# -*- test-case-name: mailproto.test.test_porting -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Code written for twisted.mail, run with its imports changed to mailproto's
and nothing else: the patterns twisted.mail-era programs and their tests
use (a resolver stub with only what twisted.mail asked of it, twisted's
C{MemoryReactor} under C{sendmail}, a hand-written attempt manager driving
a relayer of its own, C{generateBounce} unpacked, a factory told of a
failure with a bare exception, the xtext codec's lenient decoding).
"""

from __future__ import annotations

import io

from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailproto import smtp
from mailproto.bounce import generateBounce
from mailproto.relaymanager import ManagedRelayerMixin, MXCalculator
from mailproto.smtp import SMTPClient


class _StubResolver:
    """
    All twisted.mail's MXCalculator needed of a resolver.
    """

    def __init__(self, mx, hosts):
        self.mx = mx
        self.hosts = hosts
        self.asked = []

    def lookupMailExchange(self, name, timeout=None):
        self.asked.append(("MX", name))
        if name not in self.mx:
            return defer.fail(DNSNameError(name))
        answers = [dns.RRHeader(name, dns.MX, payload=dns.Record_MX(preference, host)) for preference, host in self.mx[name]]
        return defer.succeed((answers, [], []))

    def getHostByName(self, name, timeout=None):
        self.asked.append(("host", name))
        if name not in self.hosts:
            return defer.fail(DNSNameError(name))
        return defer.succeed(self.hosts[name])


class MXStubResolverTests(SynchronousTestCase):
    """
    C{MXCalculator(resolver).getMX} with a resolver that has only
    C{lookupMailExchange} and C{getHostByName}.
    """

    def test_getMX(self):
        resolver = _StubResolver({"example.com": [(10, "mx1.example.com"), (20, "mx2.example.com")]}, {"mx1.example.com": "192.0.2.1"})
        record = self.successResultOf(MXCalculator(resolver).getMX("example.com"))
        self.assertEqual((record.preference, str(record.name)), (10, "mx1.example.com"))
        self.assertIn(("host", "mx1.example.com"), resolver.asked)

    def test_getRouteAddresses(self):
        resolver = _StubResolver({"example.com": [(10, "mx1.example.com")]}, {"mx1.example.com": "192.0.2.1"})
        route = self.successResultOf(MXCalculator(resolver).getRoute("example.com"))
        self.assertEqual([(c.host, c.addresses) for c in route], [("mx1.example.com", ("192.0.2.1",))])

    def test_withoutGetHostByName(self):
        """
        A resolver with only C{lookupMailExchange}: the exchanger's name is
        kept for the connection to resolve.
        """

        class MXOnly:
            lookupMailExchange = _StubResolver({"example.com": [(10, "mx1.example.com")]}, {}).lookupMailExchange

        route = self.successResultOf(MXCalculator(MXOnly()).getRoute("example.com"))
        self.assertEqual([(c.host, c.addresses) for c in route], [("mx1.example.com", ("mx1.example.com",))])

    def test_failuresAreDNSLookupErrors(self):
        """
        An errback that traps C{DNSLookupError} (or C{IOError}), as code
        for twisted.mail's C{getMX} did, traps mailproto's routing
        failures.
        """
        resolver = _StubResolver({}, {})
        for trapped in (DNSLookupError, IOError):
            d = MXCalculator(resolver).getMX("gone.example")
            d.addErrback(lambda failure: failure.trap(trapped))
            self.assertEqual(self.successResultOf(d), trapped)


class SendmailMemoryReactorTests(SynchronousTestCase):
    """
    C{sendmail(..., reactor=MemoryReactor())}, as twisted.mail's own tests
    and many programs' tests call it.
    """

    def test_honorsArguments(self):
        reactor = MemoryReactor()
        smtp.sendmail(
            "localhost", "source@address", "recipient@address", b"message", reactor=reactor,
            username=b"foo", password=b"bar", requireTransportSecurity=True, requireAuthentication=True,
        )  # fmt: skip
        [(host, port, factory, timeout, bindAddress)] = reactor.tcpClients
        # sendmail resolves the name itself (IPv4 and IPv6), with the
        # reactor's resolver: the memory reactor's says 127.0.0.1.
        self.assertEqual((host, port), ("127.0.0.1", 25))
        self.assertEqual((factory.username, factory.password), (b"foo", b"bar"))
        self.assertTrue(factory._requireTransportSecurity)
        self.assertTrue(factory._requireAuthentication)

    def test_connectionMadeAndCancelled(self):
        reactor = MemoryReactor()
        d = smtp.sendmail("localhost", "source@address", "recipient@address", b"message", reactor=reactor)
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        d.cancel()
        self.assertTrue(transport.disconnecting or getattr(transport, "disconnected", False))
        self.failureResultOf(d, defer.CancelledError)

    def test_cancelBeforeConnection(self):
        reactor = MemoryReactor()
        d = smtp.sendmail("localhost", "source@address", "recipient@address", b"message", reactor=reactor)
        connector = reactor.connectors[0]
        d.cancel()
        self.assertEqual(connector._disconnected, True)
        self.failureResultOf(d, defer.CancelledError)


class SenderFactoryTests(SynchronousTestCase):
    """
    A sender factory told of a failure with a bare exception.
    """

    def test_bareException(self):
        d = defer.Deferred()
        factory = smtp.SMTPSenderFactory("a@example.com", "b@example.com", io.BytesIO(b"x"), d, retries=0)
        factory.clientConnectionFailed(None, ConnectionRefusedError("refused"))
        failure = self.failureResultOf(d, smtp.SMTPConnectError)
        self.assertIn("refused", str(failure.value))


class _Messages(ManagedRelayerMixin, SMTPClient):
    """
    A relayer of its own, as twisted.mail programs wrote them: messages are
    its own values (here, names), with a twisted.mail attempt manager.
    """

    def __init__(self, messages, manager):
        ManagedRelayerMixin.__init__(self, manager)
        SMTPClient.__init__(self, b"relay.example")
        self.messages = list(messages)
        self.names = list(messages)

    def getMailFrom(self):
        return b"jo@example.org" if self.messages else None

    def getMailTo(self):
        return [b"ann@example.com"]

    def getMailData(self):
        return io.BytesIO(b"Subject: %s\r\n\r\nhi\r\n" % self.messages[0].encode())


class _Manager:
    """
    A hand-written twisted.mail attempt manager.
    """

    def __init__(self):
        self.heard = []

    def notifySuccess(self, factory, message):
        self.heard.append(("success", message))

    def notifyFailure(self, factory, message):
        self.heard.append(("failure", message))

    def notifyNoConnection(self, factory):
        self.heard.append(("no connection",))

    def notifyDone(self, factory):
        self.heard.append(("done",))


class ManagedRelayerMixinTests(SynchronousTestCase):
    """
    C{ManagedRelayerMixin} on a relayer of one's own, driven by a
    hand-written attempt manager, over a whole session.
    """

    def test_session(self):
        manager = _Manager()
        relayer = _Messages(["first", "second"], manager)
        relayer.factory = object()
        transport = StringTransport()
        relayer.makeConnection(transport)
        for reply in [b"220 mx.example ESMTP", b"250 mx.example"]:
            relayer.dataReceived(reply + b"\r\n")
        # Each message: MAIL, RCPT, DATA, the data; the first is taken,
        # the second refused at RCPT.
        for replies in ([b"250 ok", b"250 ok", b"354 go", b"250 queued"], [b"250 ok", b"550 5.1.1 no such user"]):
            for reply in replies:
                relayer.dataReceived(reply + b"\r\n")
        relayer.dataReceived(b"250 reset\r\n")
        self.assertIn(b"Subject: first", transport.value())
        relayer.connectionLost(Failure(ConnectionResetError()))
        self.assertEqual(manager.heard, [("success", "first"), ("failure", "second"), ("done",)])


class GenerateBounceTests(SynchronousTestCase):
    """
    C{generateBounce}'s result unpacked, as twisted.mail's callers do.
    """

    def test_ordinarySender(self):
        fromAddress, to, message = generateBounce(io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"), b"jo@example.org", b"ann@example.com")
        self.assertEqual((fromAddress, to), (b"", b"jo@example.org"))
        self.assertIn(b"ann@example.com", message)

    def test_nullSender(self):
        fromAddress, to, message = generateBounce(io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"), b"", b"ann@example.com")
        self.assertEqual((fromAddress, to, message), (b"", b"", b""))


class XtextTests(SynchronousTestCase):
    """
    The xtext codec decodes leniently when asked to, as twisted.mail's did.
    """

    def test_lenient(self):
        self.assertEqual(b"a+2Bb+zz".decode("xtext", "replace"), "a+b+zz")
        self.assertRaises(UnicodeDecodeError, b"a+zz".decode, "xtext")
