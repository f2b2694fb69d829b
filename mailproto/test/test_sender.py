# -*- test-case-name: mailproto.test.test_sender -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Sending one message: L{sendmail}, L{SMTPSenderFactory},
L{ESMTPSenderFactory} and the sender protocols, on a memory reactor with a
scripted server, and end to end against mailproto's own servers in memory.
"""

from __future__ import annotations

import email.message
import io
import re

from twisted.internet import defer, ssl
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError, UserError
from twisted.internet.interfaces import IReactorCore, IReactorSSL, IReactorTCP, IReactorTime, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer, implementer_only

from mailproto import _client
from mailproto.smtp import (
    Address,
    AUTHDeclinedError,
    ESMTPFactory,
    ESMTPSender,
    ESMTPSenderFactory,
    LMTPFactory,
    LMTPSender,
    SMTPConnectError,
    SMTPDeliveryError,
    SMTPSender,
    SMTPSenderFactory,
    SMTPServerError,
    SMTPTimeoutError,
    TLSRequiredError,
    sendmail,
)
from mailproto.testing import MemoryDelivery, MemoryMessage, NameResolver, connectInMemory

SENDER = "alice@example.org"
BOB = "bob@example.com"
MESSAGE = b"Subject: hello\r\n\r\nHello, world.\r\n"


# -- a reactor and connections to look at ----------------------------------------


class RecordingConnector:
    """
    An L{IConnector} that counts what it is told to do.
    """

    def __init__(self, host, port) -> None:
        self.host = host
        self.port = port
        self.connects = 0
        self.disconnects = 0
        self.stops = 0

    def connect(self):
        self.connects += 1

    def disconnect(self):
        self.disconnects += 1

    def stopConnecting(self):
        self.stops += 1

    def getDestination(self):
        return (self.host, self.port)


@implementer_only(IReactorCore, IReactorTCP, IReactorSSL, IReactorTime)
class Reactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose connections return L{RecordingConnector}s.
    It has no name resolver, so that L{sendmail} gives host names to
    C{connectTCP} as they are (as with twisted.mail).
    """

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        MemoryReactorClock.connectTCP(self, host, port, factory, timeout, bindAddress)
        return self._connector(host, port)

    def connectSSL(self, host, port, factory, contextFactory, timeout=30, bindAddress=None):
        MemoryReactorClock.connectSSL(self, host, port, factory, contextFactory, timeout, bindAddress)
        return self._connector(host, port)

    def _connector(self, host, port):
        connector = RecordingConnector(host, port)
        self.connectors[-1] = connector
        return connector


class Transport(StringTransport):
    """
    A L{StringTransport} that counts C{abortConnection} calls.
    """

    aborts = 0

    def abortConnection(self):
        self.aborts += 1
        StringTransport.abortConnection(self)


@implementer(ITLSTransport)
class TLSTransport(Transport):
    """
    A transport that can start TLS and records with which context.
    """

    def __init__(self) -> None:
        Transport.__init__(self)
        self.tlsContexts = []

    def startTLS(self, contextFactory):
        self.tlsContexts.append(contextFactory)


def ehlo(*extensions: bytes) -> bytes:
    lines = [b"mx.example greets you", *extensions]
    last = len(lines) - 1
    return b"".join(b"250" + (b" " if i == last else b"-") + line + b"\r\n" for i, line in enumerate(lines))


class Dialogue:
    """
    A protocol built by a factory, on a transport, its clock set, with a
    scripted server.
    """

    def __init__(self, factory, clock=None, transport=None) -> None:
        """
        @param clock: the clock to set, or C{None} for the factory's own.
        """
        self.protocol = factory.buildProtocol(None)
        self.transport = transport if transport is not None else Transport()
        if clock is not None:
            self.protocol.callLater = clock.callLater
        self.protocol.makeConnection(self.transport)

    def server(self, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        return out


class ClientTLSRecorder:
    """
    Stands in for C{twisted.internet.ssl.optionsForClientTLS}: records the
    host names and returns a marker per name.
    """

    def __init__(self) -> None:
        self.hostnames = []

    def __call__(self, hostname, *args, **kw):
        self.hostnames.append(hostname)
        return ("tls-context-for", hostname)


# -- sendmail -------------------------------------------------------------------------


class SendmailTests(SynchronousTestCase):
    """
    L{sendmail}: where it connects, how it fails over and retries, how it
    is cancelled, and what its L{Deferred} gets.
    """

    def setUp(self):
        self.reactor = Reactor()
        self.tls = ClientTLSRecorder()
        self.patch(ssl, "optionsForClientTLS", self.tls)

    def send(self, smtphost="mx.example", **kw):
        kw.setdefault("senderDomainName", "client.example")
        return sendmail(smtphost, SENDER, [BOB], kw.pop("msg", MESSAGE), reactor=self.reactor, **kw)

    def dialogue(self, index=0, transport=None):
        # The protocol's replies are timed by the reactor given to
        # sendmail, not the global one.
        factory = self.reactor.tcpClients[index][2]
        return factory, Dialogue(factory, transport=transport)

    def test_connectTCP(self):
        """
        L{sendmail} connects over TCP to the host and port, with the
        connection timeout, through an L{ESMTPSenderFactory}; its
        L{Deferred} waits.
        """
        d = self.send(port=587, connectTimeout=17)
        [(host, port, factory, timeout, bindAddress)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout, bindAddress), ("mx.example", 587, 17, None))
        self.assertIsInstance(factory, ESMTPSenderFactory)
        self.assertEqual(self.reactor.sslClients, [])
        self.assertNoResult(d)

    def test_defaults(self):
        """
        By default: port 25, 30 seconds to connect, 300 seconds per reply.
        """
        self.send()
        [(host, port, factory, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("mx.example", 25, 30))
        self.assertEqual(factory.buildProtocol(None).timeout, 300)

    def test_bytesHost(self):
        """
        A host name given as L{bytes} is decoded.
        """
        self.send(smtphost=b"mx.example")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("mx.example", 25))

    def test_implicitTLS(self):
        """
        With C{implicitTLS}, L{sendmail} connects with TLS (C{connectSSL})
        using the given context.
        """
        context = object()
        self.send(port=465, implicitTLS=True, contextFactory=context, connectTimeout=12)
        self.assertEqual(self.reactor.tcpClients, [])
        [(host, port, factory, contextFactory, timeout, _)] = self.reactor.sslClients
        self.assertEqual((host, port, timeout), ("mx.example", 465, 12))
        self.assertIs(contextFactory, context)

    def test_implicitTLSChecksHostName(self):
        """
        Without a context, implicit TLS checks the certificate against the
        host name.
        """
        self.send(port=465, implicitTLS=True)
        self.assertEqual(self.reactor.sslClients[0][3], ("tls-context-for", "mx.example"))

    def test_hostsInOrder(self):
        """
        With a list of hosts (names or C{(host, port)} pairs), each
        connection failure moves on to the next, in order; the TLS host name
        check follows the host.
        """
        d = self.send(smtphost=["mx1.example", ("mx2.example", 2525), (b"mx3.example", 26)])
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("mx1.example", 25)])
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(self.reactor.connectors[0], Failure(ConnectionRefusedError()))
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("mx1.example", 25), ("mx2.example", 2525)])
        del self.tls.hostnames[:]
        factory.buildProtocol(None)
        self.assertEqual(self.tls.hostnames, ["mx2.example"])
        factory.clientConnectionFailed(self.reactor.connectors[1], Failure(ConnectionRefusedError()))
        self.assertEqual(self.reactor.tcpClients[2][:2], ("mx3.example", 26))
        self.assertEqual([c.connects for c in self.reactor.connectors], [0, 0, 0])
        self.assertNoResult(d)

    def test_retriesThenConnectError(self):
        """
        One host: each failure connects again while retries are left; then
        the L{Deferred} fails with L{SMTPConnectError}, caused by the last
        connection error.
        """
        d = self.send(retries=2)
        factory = self.reactor.tcpClients[0][2]
        [connector] = self.reactor.connectors
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(connector.connects, 1)
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(connector.connects, 2)
        self.assertNoResult(d)
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(connector.connects, 2)
        error = self.failureResultOf(d, SMTPConnectError).value
        self.assertEqual(error.code, -1)
        self.assertIsInstance(error.__cause__, ConnectionRefusedError)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_retriesAcrossHosts(self):
        """
        Retries count every new connection, over all the hosts.
        """
        d = self.send(smtphost=["mx1.example", "mx2.example"], retries=1)
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(self.reactor.connectors[0], Failure(ConnectionRefusedError()))
        factory.clientConnectionFailed(self.reactor.connectors[1], Failure(ConnectionRefusedError()))
        self.failureResultOf(d, SMTPConnectError)
        self.assertEqual([c[0] for c in self.reactor.tcpClients], ["mx1.example", "mx2.example"])

    def test_noRetryAfterTLSFailure(self):
        """
        A certificate that does not verify fails at once: trying again
        would only repeat it.
        """
        from OpenSSL import SSL
        from service_identity import VerificationError

        for error in (SSL.Error([("SSL routines", "", "certificate verify failed")]), VerificationError([])):
            d = self.send(retries=3)
            factory = self.reactor.tcpClients[-1][2]
            connector = self.reactor.connectors[-1]
            factory.clientConnectionLost(connector, Failure(error))
            self.assertIs(self.failureResultOf(d, SMTPConnectError).value.__cause__, error)
            self.assertEqual(connector.connects, 0)

    def test_noRetries(self):
        """
        With C{retries=0}, the first failure is final.
        """
        d = self.send(retries=0)
        self.reactor.tcpClients[0][2].clientConnectionFailed(self.reactor.connectors[0], Failure(ConnectionRefusedError()))
        self.failureResultOf(d, SMTPConnectError)
        self.assertEqual(self.reactor.connectors[0].connects, 0)

    def test_cancelBeforeConnecting(self):
        """
        Cancelling before the connection is made stops the connector; the
        L{Deferred} fails with L{CancelledError}, and the connection failure
        that follows starts no retry.
        """
        d = self.send()
        [connector] = self.reactor.connectors
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(connector.disconnects, 1)
        self.reactor.tcpClients[0][2].clientConnectionFailed(connector, Failure(UserError()))
        self.assertEqual(connector.connects, 0)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_cancelAfterFailover(self):
        """
        Cancelling after a fail-over stops the current connector.
        """
        d = self.send(smtphost=["mx1.example", "mx2.example"])
        self.reactor.tcpClients[0][2].clientConnectionFailed(self.reactor.connectors[0], Failure(ConnectionRefusedError()))
        d.cancel()
        self.assertEqual([c.disconnects for c in self.reactor.connectors], [0, 1])
        self.failureResultOf(d, CancelledError)

    def test_cancelAfterConnecting(self):
        """
        Cancelling once connected aborts the connection; the L{Deferred}
        fails with L{CancelledError}; the lost connection starts no retry.
        """
        d = self.send()
        factory, dialogue = self.dialogue()
        dialogue.server(b"220 mx.example ESMTP\r\n")
        d.cancel()
        self.assertEqual(dialogue.transport.aborts, 1)
        self.failureResultOf(d, CancelledError)
        dialogue.protocol.connectionLost(Failure(ConnectionDone()))
        factory.clientConnectionLost(self.reactor.connectors[0], Failure(ConnectionDone()))
        self.assertEqual(self.reactor.connectors[0].connects, 0)

    def test_success(self):
        """
        A scripted exchange: EHLO with the sender's domain, the pipelined
        transaction, the message; the L{Deferred} fires with C{(numOk,
        addresses)}.
        """
        d = self.send()
        factory, dialogue = self.dialogue()
        self.assertEqual(dialogue.server(b"220 mx.example ESMTP\r\n"), b"EHLO client.example\r\n")
        self.assertEqual(
            dialogue.server(ehlo(b"PIPELINING", b"SIZE 1000000", b"ENHANCEDSTATUSCODES")),
            b"MAIL FROM:<alice@example.org> SIZE=%d\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" % len(MESSAGE),
        )
        self.assertEqual(dialogue.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n"), MESSAGE + b".\r\n")
        self.assertNoResult(d)
        self.assertEqual(dialogue.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        numOk, addresses = self.successResultOf(d)
        self.assertEqual(numOk, 1)
        self.assertEqual(addresses, [(Address(BOB), 250, b"2.1.5 ok")])

    def test_messageObject(self):
        """
        A message that is not a file (an L{email.message.EmailMessage}) is
        sent as its bytes.
        """
        message = email.message.EmailMessage()
        message["Subject"] = "hi"
        message.set_content("body\n")
        d = self.send(msg=message)
        factory, dialogue = self.dialogue()
        dialogue.server(b"220 mx.example\r\n")
        dialogue.server(ehlo(b"PIPELINING"))
        written = dialogue.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(written, re.sub(rb"\r?\n", b"\r\n", bytes(message)) + b".\r\n")
        dialogue.server(b"250 ok\r\n")
        self.assertEqual(self.successResultOf(d)[0], 1)

    def test_recipientRefused(self):
        """
        A refused recipient (without PIPELINING: no DATA follows) fails the
        L{Deferred} with L{SMTPDeliveryError} carrying the code, the
        enhanced status and the addresses.
        """
        d = self.send()
        factory, dialogue = self.dialogue()
        dialogue.server(b"220 mx.example\r\n")
        dialogue.server(ehlo(b"ENHANCEDSTATUSCODES"))
        self.assertEqual(dialogue.server(b"250 2.1.0 ok\r\n"), b"RCPT TO:<bob@example.com>\r\n")
        self.assertEqual(dialogue.server(b"550 5.1.1 No such user\r\n"), b"RSET\r\n")
        error = self.failureResultOf(d, SMTPDeliveryError).value
        self.assertEqual(error.code, 550)
        self.assertEqual(error.status, b"5.1.1")
        self.assertEqual(error.addresses, [(Address(BOB), 550, b"5.1.1 No such user")])
        self.assertIn(b"No such user", error.log)

    def test_recipientRefusedPipelined(self):
        """
        With PIPELINING, a refused recipient followed by a refused DATA: the
        L{SMTPDeliveryError} reports the recipient's refusal, its code with
        its own enhanced status (C{5.1.1}), not DATA's.
        """
        d = self.send()
        factory, dialogue = self.dialogue()
        dialogue.server(b"220 mx.example\r\n")
        dialogue.server(ehlo(b"PIPELINING", b"ENHANCEDSTATUSCODES"))
        dialogue.server(b"250 2.1.0 ok\r\n550 5.1.1 No such user\r\n554 5.5.1 No valid recipients\r\n")
        error = self.failureResultOf(d, SMTPDeliveryError).value
        self.assertEqual(error.addresses, [(Address(BOB), 550, b"5.1.1 No such user")])
        self.assertEqual((error.code, error.status), (550, b"5.1.1"))

    def test_senderRefusedPipelined(self):
        """
        With PIPELINING, a refused MAIL (every later command gets 503): the
        L{SMTPDeliveryError} has MAIL's code and MAIL's enhanced status.
        """
        d = self.send()
        factory, dialogue = self.dialogue()
        dialogue.server(b"220 mx.example\r\n")
        dialogue.server(ehlo(b"PIPELINING", b"ENHANCEDSTATUSCODES"))
        dialogue.server(b"550 5.7.1 Sender refused\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n")
        error = self.failureResultOf(d, SMTPDeliveryError).value
        self.assertEqual((error.code, error.resp), (550, b"5.7.1 Sender refused"))
        self.assertEqual(error.status, b"5.7.1")

    def test_messageRefused(self):
        """
        The message refused after it was sent: L{SMTPDeliveryError} with
        that reply's code and status, the recipients as accepted.
        """
        d = self.send()
        factory, dialogue = self.dialogue()
        dialogue.server(b"220 mx.example\r\n")
        dialogue.server(ehlo(b"PIPELINING", b"ENHANCEDSTATUSCODES"))
        dialogue.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
        self.assertEqual(dialogue.server(b"552 5.3.4 Message too big\r\n"), b"RSET\r\n")
        error = self.failureResultOf(d, SMTPDeliveryError).value
        self.assertEqual((error.code, error.status), (552, b"5.3.4"))
        self.assertEqual(error.addresses, [(Address(BOB), 250, b"2.1.5 ok")])

    def test_authentication(self):
        """
        With a password, L{sendmail} authenticates with the strongest
        mechanism offered (CRAM-MD5 before LOGIN and PLAIN).
        """
        d = self.send(username="user", password="pass")
        factory, dialogue = self.dialogue()
        dialogue.server(b"220 mx.example\r\n")
        self.assertEqual(dialogue.server(ehlo(b"AUTH PLAIN LOGIN CRAM-MD5")), b"AUTH CRAM-MD5\r\n")
        self.assertEqual(
            dialogue.server(b"334 PDEyMzQ1LjY3ODkwQG14LmV4YW1wbGU+\r\n"),
            b"dXNlciBjYjI5MDU3YWFjYjU1MzM3YjU1MzYxNmZkNDljMzdlZA==\r\n",
        )
        self.assertEqual(dialogue.server(b"235 2.7.0 ok\r\n"), b"MAIL FROM:<alice@example.org>\r\n")
        self.assertNoResult(d)

    def test_authenticationDeclined(self):
        """
        Credentials refused: the L{Deferred} fails with
        L{AUTHDeclinedError} at once, and the lost connection is not
        retried.
        """
        d = self.send(username="user", password="pass")
        factory, dialogue = self.dialogue()
        dialogue.server(b"220 mx.example\r\n")
        dialogue.server(ehlo(b"AUTH PLAIN"))
        self.assertEqual(dialogue.server(b"535 5.7.8 Nope\r\n"), b"QUIT\r\n")
        self.failureResultOf(d, AUTHDeclinedError)
        factory.clientConnectionLost(self.reactor.connectors[0], Failure(ConnectionDone()))
        self.assertEqual(self.reactor.connectors[0].connects, 0)

    def test_requireTransportSecurity(self):
        """
        With C{requireTransportSecurity} and a server without STARTTLS, the
        L{Deferred} fails with L{TLSRequiredError}, and only EHLO and QUIT
        were sent.
        """
        d = self.send(requireTransportSecurity=True)
        factory, dialogue = self.dialogue()
        sent = dialogue.server(b"220 mx.example\r\n")
        sent += dialogue.server(ehlo(b"PIPELINING", b"AUTH PLAIN"))
        self.assertEqual(sent, b"EHLO client.example\r\nQUIT\r\n")
        self.failureResultOf(d, TLSRequiredError)

    def test_startTLSChecksHostName(self):
        """
        STARTTLS uses a context that checks the certificate against the
        host L{sendmail} connected to.
        """
        self.send(smtphost="mx.example")
        factory, dialogue = self.dialogue(transport=TLSTransport())
        dialogue.server(b"220 mx.example\r\n")
        self.assertEqual(dialogue.server(ehlo(b"STARTTLS")), b"STARTTLS\r\n")
        self.assertEqual(dialogue.server(b"220 go ahead\r\n"), b"EHLO client.example\r\n")
        self.assertEqual(dialogue.transport.tlsContexts, [("tls-context-for", "mx.example")])

    def test_timeout(self):
        """
        The reply timeout applies; a timeout with no retry left fails the
        L{Deferred} with L{SMTPTimeoutError}.
        """
        d = self.send(timeout=60, retries=0)
        factory, dialogue = self.dialogue()
        self.reactor.advance(59)
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.failureResultOf(d, SMTPTimeoutError)
        self.assertTrue(dialogue.transport.disconnecting)

    def test_timeoutRetried(self):
        """
        A timeout with retries left is tried again once the connection is
        lost, the message rewound.
        """
        d = self.send(timeout=60, retries=1)
        factory, dialogue = self.dialogue()
        self.reactor.advance(60)
        self.assertNoResult(d)
        factory.file.read(5)
        dialogue.protocol.connectionLost(Failure(ConnectionDone()))
        factory.clientConnectionLost(self.reactor.connectors[0], Failure(ConnectionDone()))
        self.assertEqual(self.reactor.connectors[0].connects, 1)
        self.assertEqual(factory.file.tell(), 0)
        self.assertNoResult(d)


# -- the factories -------------------------------------------------------------------------


class SenderFactoryTests(SynchronousTestCase):
    """
    L{SMTPSenderFactory} and L{ESMTPSenderFactory} on their own.
    """

    def setUp(self):
        self.clock = Clock()
        self.result = defer.Deferred()

    def test_retriesMustBeInt(self):
        """
        C{retries} must be an L{int}.
        """
        self.assertRaises(TypeError, SMTPSenderFactory, SENDER, BOB, io.BytesIO(MESSAGE), self.result, retries="5")

    def test_addresses(self):
        """
        One recipient may be given alone; addresses become L{Address}es.
        """
        factory = SMTPSenderFactory(SENDER, BOB, io.BytesIO(MESSAGE), self.result)
        self.assertEqual(factory.toEmail, [Address(BOB)])
        self.assertEqual(factory.fromEmail, Address(SENDER))
        self.assertEqual(factory.nEmails, 1)

    def test_domain(self):
        """
        C{domain} is what the protocol says in HELO; text is IDNA-encoded.
        """
        factory = SMTPSenderFactory(SENDER, [BOB], io.BytesIO(MESSAGE), self.result)
        factory.domain = "b\xfccher.example"
        self.assertEqual(factory.domain, b"xn--bcher-kva.example")
        dialogue = Dialogue(factory, self.clock)
        self.assertEqual(dialogue.server(b"220 mx.example\r\n"), b"HELO xn--bcher-kva.example\r\n")

    def test_buildProtocol(self):
        """
        The protocol is an L{SMTPSender} with the factory, its timeout, and
        is the factory's C{currentProtocol}.
        """
        factory = SMTPSenderFactory(SENDER, [BOB], io.BytesIO(MESSAGE), self.result, timeout=42)
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, SMTPSender)
        self.assertIs(protocol.factory, factory)
        self.assertEqual(protocol.timeout, 42)
        self.assertIs(factory.currentProtocol, protocol)

    def test_esmtpSenderDefaults(self):
        """
        L{ESMTPSenderFactory} makes L{ESMTPSender}s that require AUTH and
        TLS, do not fall back to HELO, and have CRAM-MD5, LOGIN and PLAIN,
        in that order, for a user name (none without).
        """
        factory = ESMTPSenderFactory(b"user", b"pass", SENDER, [BOB], io.BytesIO(MESSAGE), self.result)
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, ESMTPSender)
        self.assertEqual(
            (protocol.requireAuthentication, protocol.requireTransportSecurity, protocol.heloFallback),
            (True, True, False),
        )
        self.assertEqual([a.getName() for a in protocol.authenticators], [b"CRAM-MD5", b"LOGIN", b"PLAIN"])
        self.assertEqual(protocol.secret, b"pass")
        factory = ESMTPSenderFactory(None, None, SENDER, [BOB], io.BytesIO(MESSAGE), self.result)
        self.assertEqual(factory.buildProtocol(None).authenticators, [])

    def test_connectionLostRetried(self):
        """
        A connection lost before the message is done is tried again, the
        file rewound; when no retry is left, the L{Deferred} fails with
        L{SMTPConnectError}.
        """
        file = io.BytesIO(MESSAGE)
        factory = SMTPSenderFactory(SENDER, [BOB], file, self.result, retries=1)
        connector = RecordingConnector("mx.example", 25)
        Dialogue(factory, self.clock)
        file.read(7)
        factory.clientConnectionLost(connector, Failure(ConnectionLost()))
        self.assertEqual((connector.connects, file.tell()), (1, 0))
        self.assertNoResult(self.result)
        Dialogue(factory, self.clock)
        factory.clientConnectionLost(connector, Failure(ConnectionLost()))
        self.assertEqual(connector.connects, 1)
        self.failureResultOf(self.result, SMTPConnectError)

    def test_transientGreetingRetried(self):
        """
        A 421 greeting with retries left is tried again on a new
        connection, which delivers: the L{Deferred} gets that result.
        """
        factory = SMTPSenderFactory(SENDER, [BOB], io.BytesIO(MESSAGE), self.result, retries=1)
        factory.domain = b"client.example"
        connector = RecordingConnector("mx.example", 25)
        first = Dialogue(factory, self.clock)
        self.assertEqual(first.server(b"421 4.3.2 Busy, try later\r\n"), b"")
        self.assertTrue(first.transport.disconnecting)
        self.assertNoResult(self.result)
        first.protocol.connectionLost(Failure(ConnectionDone()))
        factory.clientConnectionLost(connector, Failure(ConnectionDone()))
        self.assertEqual(connector.connects, 1)
        second = Dialogue(factory, self.clock)
        second.server(b"220 mx.example\r\n")
        second.server(b"250 mx.example\r\n")
        second.server(b"250 ok\r\n")
        second.server(b"250 ok\r\n")
        self.assertEqual(second.server(b"354 go\r\n"), MESSAGE + b".\r\n")
        second.server(b"250 ok\r\n")
        self.assertEqual(self.successResultOf(self.result), (1, [(Address(BOB), 250, b"ok")]))

    def test_noRetryAfterResult(self):
        """
        Once the result is in, losing the connection changes nothing.
        """
        factory = SMTPSenderFactory(SENDER, [BOB], io.BytesIO(MESSAGE), self.result)
        connector = RecordingConnector("mx.example", 25)
        dialogue = Dialogue(factory, self.clock)
        for line in (b"220 mx\r\n", b"250 mx\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"):
            dialogue.server(line)
        self.successResultOf(self.result)
        factory.clientConnectionLost(connector, Failure(ConnectionDone()))
        self.assertEqual(connector.connects, 0)


# -- end to end, in memory ------------------------------------------------------------------------


def crlf(message: bytes) -> bytes:
    """
    @return: C{message} as it must arrive: every line end CRLF, the last
        line ended.
    """
    message = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def boundaryMessage(end: bytes = b"\r\n") -> bytes:
    """
    @return: a message with a C{.} line starting exactly at
        C{_client.CHUNK_SIZE}, the start of the second chunk, and more
        dotted lines after it.
    """
    size = _client.CHUNK_SIZE
    head = b"Subject: boundary" + end + end
    line = b"x" * 70 + end
    count = (size - len(head)) // len(line) - 1
    prefix = head + line * count
    prefix += b"y" * (size - len(prefix) - len(end)) + end
    assert len(prefix) == size
    return prefix + b"." + end + b".." + end + b".dot" + end + b"after the dot lines" + end


def bigMessage(lines: int) -> bytes:
    """
    @return: a message of C{lines} LF-ended lines, some starting with
        dots.
    """
    return b"Subject: big\n\n" + b"".join(
        (b".%07d dotted\n" if i % 97 == 0 else b"line %07d of a big message, LF line ends\n") % i for i in range(lines)
    )


MESSAGES = [
    MESSAGE,
    boundaryMessage(),
    boundaryMessage(b"\n"),
    b".\r\nSecond line\r\n",
    b".first line starts with a dot\nand bare LF\rand bare CR\r\n.\r\nno final line end",
]


class FailingMessage(MemoryMessage):
    """
    A message whose delivery fails at its end.
    """

    def eomReceived(self):
        return defer.fail(SMTPServerError(452, "Mailbox full", b"4.2.2"))


class PickyDelivery(MemoryDelivery):
    """
    A L{MemoryDelivery} whose messages for C{failAfterData} fail at their
    end.
    """

    def __init__(self, failAfterData=(), **kw) -> None:
        MemoryDelivery.__init__(self, **kw)
        self.failAfterData = set(failAfterData)

    def validateTo(self, user):
        make = MemoryDelivery.validateTo(self, user)
        if bytes(user.dest) in self.failAfterData:
            return lambda: FailingMessage(self, user)
        return make


class InMemoryTests(SynchronousTestCase):
    """
    The senders against mailproto's own servers, through
    L{connectInMemory}: what is delivered is the message with CRLF line
    ends, whatever the chunk boundaries.
    """

    def setUp(self):
        self.clock = Clock()

    def send(self, factory, serverFactory, configure=None):
        """
        Connect a protocol of C{factory} to a server of C{serverFactory} and
        pump until both are done.

        @return: the client protocol.
        """
        server = serverFactory.buildProtocol(None)
        client = factory.buildProtocol(None)
        client.callLater = self.clock.callLater
        if configure is not None:
            configure(client)
        pump = connectInMemory(server, client, clock=self.clock)
        for _ in range(10000):
            if client.transport.producer is not None:
                client.transport.producer.resumeProducing()
            moved = pump.flush()
            if not moved and client.transport.producer is None:
                break
        else:
            self.fail("the exchange never ended")
        self.assertTrue(client.transport.disconnected)
        self.assertTrue(server.transport.disconnected)
        return client

    def serverFactory(self, delivery, factoryClass=ESMTPFactory):
        return factoryClass(delivery=delivery, domain=b"mx.example", clock=self.clock)

    def esmtpFactory(self, message, result, recipients=(BOB,)):
        factory = ESMTPSenderFactory(
            None,
            None,
            SENDER,
            list(recipients),
            io.BytesIO(message),
            result,
            requireAuthentication=False,
            requireTransportSecurity=False,
        )
        factory.domain = b"client.example"
        return factory

    def smtpFactory(self, message, result, recipients=(BOB,), protocol=None):
        factory = SMTPSenderFactory(SENDER, list(recipients), io.BytesIO(message), result)
        factory.domain = b"client.example"
        if protocol is not None:
            factory.protocol = protocol
        return factory

    def check(self, makeFactory, serverClass=ESMTPFactory, configure=None, messages=MESSAGES):
        for message in messages:
            delivery = MemoryDelivery()
            result = defer.Deferred()
            self.send(makeFactory(message, result), self.serverFactory(delivery, serverClass), configure)
            numOk, addresses = self.successResultOf(result)
            self.assertEqual((numOk, [(a, c) for a, c, _ in addresses]), (1, [(Address(BOB), 250)]))
            [delivered] = delivery.messages
            self.assertEqual(delivered.data, crlf(message), message[-80:])
            self.assertEqual(bytes(delivered.sender), SENDER.encode())
            self.assertEqual(bytes(delivered.recipient), BOB.encode())

    def test_messageHelpers(self):
        """
        The test messages are what they claim: a C{.} line at the chunk
        boundary.
        """
        message = boundaryMessage()
        size = _client.CHUNK_SIZE
        self.assertEqual((message[size - 2 : size], message[size : size + 3]), (b"\r\n", b".\r\n"))
        message = boundaryMessage(b"\n")
        self.assertEqual((message[size - 1 : size], message[size : size + 2]), (b"\n", b".\n"))
        self.assertEqual(crlf(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd\r\n")

    def test_esmtpChunking(self):
        """
        L{ESMTPSender} against L{ESMTPFactory}: PIPELINING and BDAT.
        """
        self.check(self.esmtpFactory)

    def test_esmtpData(self):
        """
        L{ESMTPSender} with C{useChunking = False}: pipelined DATA, so
        dot-stuffing across the chunk boundary matters.
        """
        self.check(self.esmtpFactory, configure=lambda client: setattr(client, "useChunking", False))

    def test_smtp(self):
        """
        L{SMTPSender}: HELO, one command at a time, DATA.
        """
        self.check(self.smtpFactory)

    def test_lmtp(self):
        """
        L{LMTPSender} through L{SMTPSenderFactory} against L{LMTPFactory}.
        """
        self.check(lambda message, result: self.smtpFactory(message, result, protocol=LMTPSender), LMTPFactory)

    def test_declaredParameters(self):
        """
        The server sees the declared SIZE and BODY=8BITMIME of an 8-bit
        message.
        """
        message = b"Subject: caf\xc3\xa9\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
        delivery = MemoryDelivery()
        result = defer.Deferred()
        self.send(self.esmtpFactory(message, result), self.serverFactory(delivery))
        self.successResultOf(result)
        [delivered] = delivery.messages
        self.assertEqual((delivered.mail.size, delivered.mail.body), (len(message), b"8BITMIME"))
        self.assertEqual(delivered.data, message)

    def test_bigMessage(self):
        """
        A 3 MiB message, pulled from the producer a chunk at a time, arrives
        whole through each sender.
        """
        message = bigMessage(75000)
        self.assertGreater(len(message), 3 * 1024 * 1024)
        self.check(self.esmtpFactory, messages=[message])
        self.check(self.smtpFactory, messages=[message])
        self.check(self.esmtpFactory, configure=lambda client: setattr(client, "useChunking", False), messages=[message])

    def test_recipientsRefused(self):
        """
        Every recipient refused: the L{Deferred} fails with
        L{SMTPDeliveryError} and each refusal, with the enhanced status
        C{5.1.1} after EHLO (none after HELO: the server sends none);
        nothing is delivered.
        """
        for makeFactory, status in ((self.esmtpFactory, b"5.1.1"), (self.smtpFactory, None)):
            delivery = MemoryDelivery(refuseRecipients=[BOB, "carol@example.net"])
            result = defer.Deferred()
            self.send(makeFactory(MESSAGE, result, recipients=(BOB, "carol@example.net")), self.serverFactory(delivery))
            error = self.failureResultOf(result, SMTPDeliveryError).value
            self.assertEqual((error.code, error.status), (550, status))
            self.assertEqual([(bytes(a), c) for a, c, _ in error.addresses], [(BOB.encode(), 550), (b"carol@example.net", 550)])
            self.assertEqual(delivery.messages, [])

    def test_someRecipientsRefused(self):
        """
        One recipient refused, one accepted: the L{Deferred} fires with
        C{(1, addresses)}; the accepted one got the message.
        """
        delivery = MemoryDelivery(refuseRecipients=["carol@example.net"])
        result = defer.Deferred()
        self.send(self.esmtpFactory(MESSAGE, result, recipients=(BOB, "carol@example.net")), self.serverFactory(delivery))
        numOk, addresses = self.successResultOf(result)
        self.assertEqual((numOk, [c for _, c, _ in addresses]), (1, [250, 550]))
        self.assertEqual([bytes(m.recipient) for m in delivery.messages], [BOB.encode()])

    def test_senderRefused(self):
        """
        A refused sender: L{SMTPDeliveryError} with the MAIL reply's code
        and enhanced status (C{550 5.7.1}).
        """
        delivery = MemoryDelivery(refuseSenders=[SENDER])
        result = defer.Deferred()
        self.send(self.esmtpFactory(MESSAGE, result), self.serverFactory(delivery))
        error = self.failureResultOf(result, SMTPDeliveryError).value
        self.assertEqual((error.code, error.status), (550, b"5.7.1"))

    def test_lmtpPerRecipient(self):
        """
        LMTP with one recipient refused at RCPT, one failing after the
        message and one delivered: the L{Deferred} fires with C{(1,
        addresses)}, each address with its own final reply.
        """
        delivery = PickyDelivery(failAfterData=[b"full@example.com"], refuseRecipients=["nobody@example.com"])
        result = defer.Deferred()
        factory = self.smtpFactory(
            MESSAGE, result, recipients=("nobody@example.com", "full@example.com", BOB), protocol=LMTPSender
        )
        self.send(factory, self.serverFactory(delivery, LMTPFactory))
        numOk, addresses = self.successResultOf(result)
        self.assertEqual(numOk, 1)
        self.assertEqual(
            [(bytes(a), c) for a, c, _ in addresses],
            [(b"nobody@example.com", 550), (b"full@example.com", 452), (BOB.encode(), 250)],
        )
        self.assertIn(b"4.2.2", addresses[1][2])
        self.assertEqual([bytes(m.recipient) for m in delivery.messages], [BOB.encode()])
        self.assertEqual(delivery.messages[0].data, MESSAGE)


class SendmailByNameTests(SynchronousTestCase):
    """
    L{sendmail} to a host name reaches every address of it, IPv6 and IPv4,
    in the resolver's order, one per connection attempt; the TLS name stays
    the host's.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.nameResolver = NameResolver({"mx.example": ["2001:db8::25", "192.0.2.25"]})

    def send(self, host="mx.example", **kw):
        return sendmail(host, "a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n", reactor=self.reactor, **kw)

    def test_eachAddressInTurn(self):
        d = self.send(retries=2)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("2001:db8::25", 25))
        factory = self.reactor.tcpClients[-1][2]
        self.assertEqual(factory._hostname, "mx.example")
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("192.0.2.25", 25))
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("2001:db8::25", 25))
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.failureResultOf(d, SMTPConnectError)

    def test_implicitTLSNamesTheHost(self):
        self.send(port=465, implicitTLS=True)
        [(address, port, factory, context, timeout, bindAddress)] = self.reactor.sslClients
        self.assertEqual((address, port), ("2001:db8::25", 465))
        self.assertEqual(context._hostnameASCII, "mx.example")

    def test_noAddress(self):
        d = self.send(host="gone.example", retries=1)
        self.assertEqual(self.reactor.tcpClients, [])
        failure = self.failureResultOf(d, SMTPConnectError)
        self.assertIn("gone.example", str(failure.value))

    def test_addressesAsGiven(self):
        """
        An address is not resolved.
        """
        self.send(host="2001:db8::1")
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("2001:db8::1", 25))

    def test_cancelWhileResolving(self):
        self.reactor.nameResolver.hold = True
        d = self.send()
        d.cancel()
        self.reactor.nameResolver.release()
        self.assertEqual(self.reactor.tcpClients, [])
        self.failureResultOf(d, CancelledError)
