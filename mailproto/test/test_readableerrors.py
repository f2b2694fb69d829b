# -*- test-case-name: mailproto.test.test_readableerrors -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Errors a person can read: L{mailproto._tlserrors.describeTLSFailure},
C{sendmail()}'s L{SMTPTLSFailure}, and the one-line messages of
C{mailproto send} and C{mailproto sink} for TLS failures, a server that
expects TLS (or does not speak it), files that are not there, bad numbers
and Ctrl-C.  Servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import io
import os

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._commandline._cli import MailprotoOptions, runCommand
from mailproto._errors import SMTPConnectError, SMTPTLSError, SMTPTLSFailure
from mailproto._sender import sendmail
from mailproto._tlserrors import describeTLSFailure, isTLSFailure
from mailproto.test._peers import missing

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None

SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.com"


def _needTrustme():
    if trustme is None:
        missing("trustme is not installed")


def _serverTLS(certificate):
    """
    @return: TLS server options for a trustme certificate.
    """
    from twisted.internet.ssl import PrivateCertificate

    return PrivateCertificate.loadPEM(certificate.private_key_and_cert_chain_pem.bytes()).options()


class DescribeTests(SynchronousTestCase):
    """
    L{describeTLSFailure} says OpenSSL's and service_identity's errors in
    words.
    """

    def test_openSSL(self):
        """
        The usual OpenSSL reasons become sentences; an unknown one is said
        as it is, without tuples.
        """
        from OpenSSL import SSL

        cases = [
            ("certificate verify failed", "the server's certificate is not trusted (certificate verify failed)"),
            ("wrong version number", "the server does not speak TLS here"),
            ("packet length too long", "the server does not speak TLS here"),
            ("no shared cipher", "the server and this client have no cipher in common (no shared cipher)"),
            ("tlsv1 alert protocol version", "the server and this client have no TLS version in common (protocol version)"),
            ("unsupported", "TLS failed: unsupported"),
        ]
        for reason, sentence in cases:
            error = SSL.Error([("SSL routines", "", reason)])
            self.assertTrue(isTLSFailure(error))
            self.assertEqual(describeTLSFailure(error), sentence)
            self.assertNotIn("routines", describeTLSFailure(error))

    def test_verification(self):
        """
        A certificate for another name names the name that was wanted.
        """
        from service_identity import VerificationError
        from service_identity.exceptions import DNSMismatch
        from service_identity.hazmat import DNS_ID

        error = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("mx.example.com"))])
        self.assertTrue(isTLSFailure(error))
        self.assertEqual(describeTLSFailure(error), "the server's certificate is for another name than mx.example.com")
        self.assertEqual(describeTLSFailure(VerificationError(errors=[])), "the server's certificate is for another name")

    def test_other(self):
        """
        Other exceptions are not TLS failures, and are said on one line.
        """
        error = ValueError("two\nlines")
        self.assertFalse(isTLSFailure(error))
        self.assertEqual(describeTLSFailure(error), "two lines")


class SendmailTLSTests(TestCase):
    """
    C{sendmail()} fails with L{SMTPTLSFailure} when TLS fails, which is
    still an L{SMTPConnectError}.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_untrusted(self):
        """
        A certificate from a CA that is not trusted.
        """
        _needTrustme()
        from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates, Certificate

        ca, other = trustme.CA(), trustme.CA()
        port = reactor.listenSSL(
            0, Factory.forProtocol(Protocol), _serverTLS(other.issue_cert("localhost", "127.0.0.1")), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        trust = trustRootFromCertificates([Certificate.loadPEM(ca.cert_pem.bytes())])
        d = sendmail(
            "127.0.0.1", SENDER, [RECIPIENT], b"Subject: x\n\nx\n", port=port.getHost().port, implicitTLS=True,
            contextFactory=optionsForClientTLS("127.0.0.1", trustRoot=trust), retries=0,
        )  # fmt: skip
        error = yield self.assertFailure(d, SMTPTLSFailure)
        self.assertIsInstance(error, SMTPConnectError)
        self.assertIsInstance(error, SMTPTLSError)
        self.assertFalse(error.retry)
        self.assertEqual(error.resp, b"TLS failed: the server's certificate is not trusted (certificate verify failed)")
        self.assertTrue(isTLSFailure(error.__cause__))

    @defer.inlineCallbacks
    def test_plainServer(self):
        """
        Implicit TLS to a server that answers in plain text.
        """

        class Greeter(Protocol):
            def connectionMade(self):
                self.transport.write(b"220 mx.example ESMTP\r\n")

        port = reactor.listenTCP(0, Factory.forProtocol(Greeter), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        d = sendmail(
            "127.0.0.1", SENDER, [RECIPIENT], b"Subject: x\n\nx\n", port=port.getHost().port, implicitTLS=True, retries=0
        )
        error = yield self.assertFailure(d, SMTPConnectError)
        self.assertIsInstance(error, SMTPTLSFailure)
        self.assertEqual(error.resp, b"TLS failed: the server does not speak TLS here")


class SendCommandTests(TestCase):
    """
    C{mailproto send}, in this process on the real reactor: one line per
    problem, naming the option to change, no traceback.
    """

    timeout = 30

    def listen(self, factory, tls=None):
        if tls is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def send(self, *argv):
        """
        Run C{mailproto send ARGV}; C{self.out} and C{self.err} get what it
        says.

        @return: a L{Deferred} firing with the exit status.
        """
        self.out, self.err = io.StringIO(), io.StringIO()
        options = MailprotoOptions()
        options.parseOptions(["send", "--helo", "client.example", "--from", SENDER, "--to", RECIPIENT, *argv])
        self.command = options.subOptions.makeCommand(reactor, self.out, self.err, environ={})
        return self.command.run()

    def assertOneLine(self, line):
        self.assertEqual(self.err.getvalue(), "mailproto send: " + line + "\n")
        self.assertNotIn("Traceback", self.err.getvalue() + self.out.getvalue())

    @defer.inlineCallbacks
    def test_tlsToPlainPort(self):
        """
        C{--tls} to a server that speaks plain SMTP: drop C{--tls}.
        """

        class Greeter(Protocol):
            def connectionMade(self):
                self.transport.write(b"220 mx.example ESMTP\r\n")

        port = self.listen(Factory.forProtocol(Greeter))
        status = yield self.send("--port", str(port), "--tls")
        self.assertEqual(status, 1)
        self.assertOneLine(
            f"TLS with 127.0.0.1:{port} failed: the server does not speak TLS on this port;"
            " drop --tls (use --starttls if it offers STARTTLS)"
        )

    @defer.inlineCallbacks
    def test_plainToTLSPort(self):
        """
        Without C{--tls}, to a server that waits for a TLS handshake: it
        never greets; use C{--tls}.
        """
        _needTrustme()
        tls = _serverTLS(trustme.CA().issue_cert("127.0.0.1"))
        port = self.listen(Factory.forProtocol(Protocol), tls=tls)
        status = yield self.send("--port", str(port), "--timeout", "0.3")
        self.assertEqual(status, 1)
        self.assertOneLine(f"127.0.0.1:{port} did not greet within 0.3 s; if it expects TLS from the start, use --tls")

    @defer.inlineCallbacks
    def test_untrusted(self):
        """
        A certificate the system does not trust: in words, with the
        options that change it.
        """
        _needTrustme()
        tls = _serverTLS(trustme.CA().issue_cert("127.0.0.1"))
        port = self.listen(Factory.forProtocol(Protocol), tls=tls)
        directory = self.mktemp()
        os.makedirs(directory)
        cafile = os.path.join(directory, "ca.pem")
        trustme.CA().cert_pem.write_to_path(cafile)
        status = yield self.send("--port", str(port), "--tls", "--cafile", cafile)
        self.assertEqual(status, 1)
        self.assertOneLine(
            f"TLS with 127.0.0.1:{port} failed: the server's certificate is not trusted (certificate verify failed);"
            " see --cafile, --insecure"
        )

    @defer.inlineCallbacks
    def test_stopped(self):
        """
        Ctrl-C: the summary says how many were sent, failed and not sent;
        the unsent are not counted as failed.
        """
        port = self.listen(Factory.forProtocol(Protocol))
        d = self.send("--port", str(port), "--count", "100000", "--concurrency", "2")
        wait = defer.Deferred()
        reactor.callLater(0.1, wait.callback, None)
        yield wait
        self.command.stop()
        status = yield d
        self.assertEqual(status, 1)
        self.assertRegex(
            self.out.getvalue(), r"^0 sent, 0 refused, 0 failed, 100000 not sent \(stopped\) in [0-9.]+ s .*\n$"
        )
        self.assertEqual(self.err.getvalue(), "")


class UsageLineTests(SynchronousTestCase):
    """
    Usage errors of C{mailproto send} and C{mailproto sink}: one line that
    names the option, status 2.
    """

    def runMailproto(self, *argv):
        self.out, self.err = io.StringIO(), io.StringIO()
        return runCommand(list(argv), reactor=MemoryReactor(), stdout=self.out, stderr=self.err)

    def assertUsage(self, argv, line):
        self.assertEqual(self.runMailproto(*argv), 2)
        command = " ".join(["mailproto", argv[0]])
        self.assertEqual(self.err.getvalue(), f"{command}: error: {line} (see '{command} --help')\n")
        self.assertNotIn("Traceback", self.err.getvalue())
        self.assertNotIn("Parameter type enforcement", self.err.getvalue())

    def test_numbers(self):
        """
        A bad number names its option.
        """
        ok = ["send", "--from", SENDER, "--to", RECIPIENT]
        self.assertUsage([*ok, "--count", "0"], "--count: not a positive whole number: '0' (1 or more)")
        self.assertUsage([*ok, "-c", "x"], "--concurrency: not a whole number: 'x'")
        self.assertUsage(["sink", "--port", "70000"], "--port: not a port number: '70000' (0 to 65535)")

    def test_missingFiles(self):
        """
        A file that is not there: C{--data: no such file: FILE}.
        """
        path = os.path.abspath(self.mktemp())
        ok = ["send", "--from", SENDER, "--to", RECIPIENT]
        self.assertUsage([*ok, "--data", path], f"--data: no such file: {path}")
        self.assertUsage([*ok, "--cafile", path], f"--cafile: no such file: {path}")
        self.assertUsage(["sink", "--tls-certificate", path], f"--tls-certificate: no such file: {path}")

    def test_certificateWithoutKey(self):
        """
        A certificate file without its key, for the sink.
        """
        _needTrustme()
        path = os.path.abspath(self.mktemp())
        trustme.CA().issue_cert("localhost").cert_chain_pems[0].write_to_path(path)
        self.assertUsage(
            ["sink", "--tls-certificate", path],
            f"--tls-certificate: the certificate file has no private key: {path} (give the key with --tls-key)",
        )
