# -*- test-case-name: mailproto.test.test_client_hostile -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The client against next hops that misbehave, over real loopback sockets:
L{mailproto.smtp.sendmail} and L{mailproto.smtp.ESMTPSenderFactory}
talking to a L{mailproto.testing.ScriptedSMTPServer}.  Whatever the
server does, a message counts as sent only after a 250 to its end of data,
and no error goes unhandled.
"""

from __future__ import annotations

import io
import time

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mailproto.smtp import (
    ESMTPSenderFactory,
    SMTPClientError,
    SMTPDeliveryError,
    SMTPProtocolError,
    SMTPTimeoutError,
    sendmail,
)
from mailproto.testing import Drop, ScriptedSMTPFactory, Stall, Trickle
from mailproto.test._loopback import noConnectionsLeft

SENDER = "alice@example.org"
BOB = "bob@example.com"
CAROL = "carol@example.net"
DAN = "dan@example.com"
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


class HostileServerTests(TestCase):
    """
    L{sendmail} against scripted servers on 127.0.0.1.
    """

    timeout = 30

    def serve(self, script, extensions=(b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES")):
        """
        Listen on a free loopback port with a scripted server.

        @return: the port number.
        """
        self.factory = ScriptedSMTPFactory(script, extensions, clock=reactor)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(self.quiet)
        return port.getHost().port

    def quiet(self):
        return noConnectionsLeft(self)

    def send(self, script, recipients=(BOB,), timeout=5, **kw):
        port = self.serve(script, **kw)
        return sendmail("127.0.0.1", SENDER, list(recipients), MESSAGE, port=port, reactor=reactor, timeout=timeout, retries=0)

    async def assertFails(self, d, errorClass):
        """
        C{d} fails with C{errorClass}, and nothing was delivered.

        @return: the error.
        """
        try:
            result = await d
        except errorClass as e:
            return e
        self.fail(f"sent, although it must not be: {result!r}")

    async def test_2xxToDataPipelined(self):
        """
        A next hop that answers the pipelined DATA with 250: the message
        was not sent, and C{sendmail} fails.
        """
        error = await self.assertFails(self.send({b"DATA": b"250 2.0.0 Ok\r\n"}), SMTPProtocolError)
        self.assertIn(b"DATA", error.resp)
        self.assertEqual(self.factory.messages, [])

    async def test_2xxToDataNotPipelined(self):
        """
        The same without PIPELINING.
        """
        d = self.send({b"DATA": b"250 2.0.0 Ok\r\n"}, extensions=(b"8BITMIME",))
        await self.assertFails(d, SMTPProtocolError)
        self.assertEqual([c.split(b":")[0] for c in self.factory.commands][-2:], [b"RCPT TO", b"DATA"])

    async def test_2xxToDataFactory(self):
        """
        L{ESMTPSenderFactory} (no TLS, no AUTH required) fails the same way.
        """
        port = self.serve({b"DATA": b"250 2.0.0 Ok\r\n"})
        d = defer.Deferred()
        factory = ESMTPSenderFactory(
            None, None, SENDER, [BOB], io.BytesIO(MESSAGE), d, retries=0, timeout=5,
            requireAuthentication=False, requireTransportSecurity=False,
        )
        reactor.connectTCP("127.0.0.1", port, factory)
        await self.assertFails(d, SMTPProtocolError)

    async def test_extraReplyAfterDot(self):
        """
        Two replies to the end of data: not taken as a delivery.
        """
        d = self.send({b"EOD": b"250 2.0.0 Ok\r\n250 2.0.0 Again\r\n"})
        await self.assertFails(d, SMTPProtocolError)
        self.assertEqual(len(self.factory.messages), 1)

    async def test_extraReplyAfterRcpt(self):
        """
        Two replies to RCPT: the pipeline's replies shift by one, DATA
        seems answered with 250; the body is never sent.
        """
        d = self.send({b"RCPT": b"250 2.1.5 Ok\r\n250 2.1.5 Extra\r\n"})
        await self.assertFails(d, SMTPProtocolError)
        self.assertEqual(self.factory.messages, [])

    async def test_garbage(self):
        """
        A reply that is not one.
        """
        await self.assertFails(self.send({b"MAIL": b"hello there\r\n"}), SMTPProtocolError)

    async def test_dropMidData(self):
        """
        The connection dropped while the message is being received.
        """
        await self.assertFails(self.send({b"BODY": Drop()}), SMTPClientError)
        self.assertEqual(self.factory.messages, [])

    async def test_dropAfterDot(self):
        """
        The connection dropped after the end of data, without a reply.
        """
        await self.assertFails(self.send({b"EOD": Drop()}), SMTPClientError)

    async def test_stallAfterDot(self):
        """
        No reply to the end of data: a timeout.
        """
        await self.assertFails(self.send({b"EOD": Stall()}, timeout=0.5), SMTPTimeoutError)

    async def test_trickledEHLO(self):
        """
        An EHLO reply trickled a line at a time, each in time but the whole
        too slow, times out C{timeout} after the EHLO.
        """
        lines = b"".join(b"250-line %d\r\n" % i for i in range(20)) + b"250 PIPELINING\r\n"
        started = time.monotonic()
        await self.assertFails(self.send({b"EHLO": Trickle(lines, 0.2)}, timeout=1), SMTPTimeoutError)
        self.assertLess(time.monotonic() - started, 2.5)

    async def test_recipientsRefused(self):
        """
        4xx and 5xx per recipient: the message goes to the one accepted;
        each refusal is reported with its own reply.
        """
        d = self.send({b"RCPT": [b"250 2.1.5 Ok\r\n", b"450 4.2.1 Busy\r\n", b"550 5.1.1 No such user\r\n"]},
                      recipients=(BOB, CAROL, DAN))
        numOk, addresses = await d
        self.assertEqual(numOk, 1)
        self.assertEqual([(bytes(a), c) for a, c, _ in addresses],
                         [(BOB.encode(), 250), (CAROL.encode(), 450), (DAN.encode(), 550)])
        self.assertEqual(self.factory.messages, [MESSAGE])

    async def test_452AfterTwoRecipients(self):
        """
        452 after two recipients: sent to two.
        """
        d = self.send({b"RCPT": [b"250 2.1.5 Ok\r\n", b"250 2.1.5 Ok\r\n", b"452 4.5.3 Too many recipients\r\n"]},
                      recipients=(BOB, CAROL, DAN))
        numOk, addresses = await d
        self.assertEqual(numOk, 2)
        self.assertEqual(addresses[2][1:], (452, b"4.5.3 Too many recipients"))

    async def test_421ToMail(self):
        """
        421 to MAIL, then the connection closed: the error keeps the 421
        and its text.
        """
        error = await self.assertFails(self.send({b"MAIL": Drop(b"421 4.7.0 Too busy, closing\r\n")}), SMTPDeliveryError)
        self.assertEqual((error.code, error.resp), (421, b"4.7.0 Too busy, closing"))

    async def test_421ToMailNotPipelined(self):
        """
        The same without PIPELINING.
        """
        d = self.send({b"MAIL": Drop(b"421 4.7.0 Too busy, closing\r\n")}, extensions=(b"8BITMIME",))
        error = await self.assertFails(d, SMTPDeliveryError)
        self.assertEqual((error.code, error.resp), (421, b"4.7.0 Too busy, closing"))

    async def test_wellBehaved(self):
        """
        The default script is a server that behaves: the message is sent.
        """
        numOk, _ = await self.send({}, recipients=(BOB, CAROL))
        self.assertEqual(numOk, 2)
        self.assertEqual(self.factory.messages, [MESSAGE])
        await self.factory.allClosed()
        self.assertEqual(self.factory.commands[-1], b"QUIT")
