# -*- test-case-name: mailproto.test.test_sink_tls -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{mailproto sink --tls-certificate CERT --tls-key KEY} end to end: the
command's own C{run} in this process, listening on the real reactor, and
Python's smtplib sending to it after STARTTLS with the certificate checked
against a trustme CA.
"""

from __future__ import annotations

import io
import os
import re
import smtplib
import ssl

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailproto._commandline._cli import runCommand
from mailproto.test._peers import missing

try:
    import trustme
except ImportError:  # pragma: no cover
    trustme = None

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: sink over TLS\r\n\r\n.dot\r\nbody\r\n"


class _CommandReactor:
    """
    The real reactor for a command run inside a test, which already runs
    it: C{run} returns at once, C{stop} is recorded, and the shutdown
    triggers the command adds are kept for the test to fire.
    """

    running = True

    def __init__(self, real):
        self._real = real
        self.shutdownTriggers = []
        self.stopped = 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def run(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped += 1

    def addSystemEventTrigger(self, phase, event, callable, *args, **kw):
        self.shutdownTriggers.append((phase, event, callable, args, kw))

    def shutDown(self) -> defer.Deferred:
        """
        Fire the C{before shutdown} triggers, as the reactor would.
        """
        triggers, self.shutdownTriggers = self.shutdownTriggers, []
        return defer.gatherResults(
            [defer.maybeDeferred(f, *args, **kw) for phase, event, f, args, kw in triggers if phase == "before"]
        )


class SinkSTARTTLSTests(TestCase):
    """
    The sink command with a certificate does STARTTLS.
    """

    timeout = 30

    @defer.inlineCallbacks
    def waitFor(self, stream, pattern, seconds=10.0):
        """
        @return: the match of C{pattern} in what C{stream} was given, once
            there is one.
        """
        for attempt in range(int(seconds / 0.02)):
            match = re.search(pattern, stream.getvalue())
            if match is not None:
                return match
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.fail(f"{pattern!r} never came in {stream.getvalue()!r}")

    @defer.inlineCallbacks
    def test_starttls(self):
        """
        The sink offers STARTTLS; smtplib starts TLS, checking the
        certificate for C{127.0.0.1} against the CA, and sends; the message
        is stored exactly and printed.  No note says STARTTLS is
        unavailable, and the sink stops cleanly.
        """
        if trustme is None:
            missing("trustme is not installed")
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        certificate = os.path.join(directory, "cert.pem")
        key = os.path.join(directory, "key.pem")
        leaf.cert_chain_pems[0].write_to_path(certificate)
        leaf.private_key_pem.write_to_path(key)
        maildir = os.path.join(directory, "Maildir")

        commandReactor = _CommandReactor(reactor)
        self.addCleanup(commandReactor.shutDown)
        stdout, stderr = io.StringIO(), io.StringIO()
        argv = ["sink", "--tls-certificate", certificate, "--tls-key", key]
        argv += ["--listen", "tcp:0:interface=127.0.0.1", "--hostname", "sink.test", "--maildir", maildir]
        status = runCommand(argv, reactor=commandReactor, stdout=stdout, stderr=stderr)
        self.assertEqual(status, 0, stderr.getvalue())
        match = yield self.waitFor(stderr, r"listening on 127\.0\.0\.1 port ([0-9]+) for ESMTP\n")
        port = int(match.group(1))

        context = ssl.create_default_context()
        ca.configure_trust(context)

        def send():
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
                client.ehlo()
                before = dict(client.esmtp_features)
                client.starttls(context=context)
                client.ehlo()
                after = dict(client.esmtp_features)
                version = client.sock.version()
                return before, after, version, client.sendmail("a@example.com", ["b@example.com"], MESSAGE)

        before, after, version, refused = yield deferToThread(send)
        self.assertIn("starttls", before)
        self.assertNotIn("starttls", after)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(refused, {})

        yield self.waitFor(stdout, r"---------- end of message 1, ")
        yield commandReactor.shutDown()
        self.assertEqual(commandReactor.stopped, 0)
        [name] = os.listdir(os.path.join(maildir, "new"))
        with open(os.path.join(maildir, "new", name), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        self.assertIn("Subject: sink over TLS\n", stdout.getvalue())
        self.assertTrue(stdout.getvalue().startswith("---------- message 1 from client.test [127.0.0.1] at "))
        self.assertEqual(
            stderr.getvalue(),
            f"mailproto sink: listening on 127.0.0.1 port {port} for ESMTP\n"
            f"mailproto sink: storing messages in Maildir {maildir}\n"
            "mailproto sink: stopped after 1 message(s)\n",
        )
        self.assertNotIn("STARTTLS is not available", stderr.getvalue())
