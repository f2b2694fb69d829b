"""
Tests of what sendmail does with a server's TLS, against a scripted
server on 127.0.0.1 whose certificates come from trustme: run them with

    python -m twisted.trial test_starttls
"""

import trustme
from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from mailproto.smtp import SMTPConnectError, sendmail
from mailproto.testing import ScriptedSMTPFactory, StartTLS

MESSAGE = b"Subject: secret\r\n\r\nFor your eyes only.\r\n"


class StartTLSTests(TestCase):
    def setUp(self):
        # The authority the client trusts.
        self.authority = trustme.CA()

    def listen(self, authority, name="127.0.0.1"):
        """
        Listen with a server that offers STARTTLS and starts TLS with a
        certificate for name by authority.

        @return: the port number.
        """
        pem = authority.issue_cert(name).private_key_and_cert_chain_pem.bytes()
        self.server = ScriptedSMTPFactory({b"STARTTLS": StartTLS(PrivateCertificate.loadPEM(pem).options())})
        port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def send(self, port):
        trusted = Certificate.loadPEM(self.authority.cert_pem.bytes())
        return sendmail(
            "127.0.0.1", "me@example.com", ["you@example.net"], MESSAGE, port=port,
            requireTransportSecurity=True, retries=0,
            contextFactory=optionsForClientTLS("127.0.0.1", trustRoot=trusted),
        )  # fmt: skip

    @defer.inlineCallbacks
    def test_trusted(self):
        port = self.listen(self.authority)
        numOk, addresses = yield self.send(port)
        yield self.server.allClosed()
        self.assertEqual(numOk, 1)
        [connection] = self.server.servers
        self.assertTrue(connection.tls)
        self.assertEqual(connection.messages, [MESSAGE])

    @defer.inlineCallbacks
    def test_untrusted(self):
        port = self.listen(trustme.CA())
        error = yield self.assertFailure(self.send(port), SMTPConnectError)
        yield self.server.allClosed()
        self.assertIn("certificate verify failed", str(error))
        self.assertEqual([command.split()[0] for command in self.server.commands], [b"EHLO", b"STARTTLS"])
        self.assertEqual(self.server.messages, [])
