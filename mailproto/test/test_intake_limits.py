# -*- test-case-name: mailproto.test.test_intake_limits -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's intake limits over real loopback sockets, with the relay run
in this process: one address flooding the relay gets no more than its
share while another client is served, and wrong passwords from one
address on two listeners cost no more than the failure limit in password
checks.
"""

from __future__ import annotations

import smtplib
import socket
from concurrent.futures import ThreadPoolExecutor

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailproto import _cred
from mailproto._relayd._daemon import RelayService, makeService
from mailproto.test.test_daemon import freePort
from mailproto.test.test_mailrelay import _Files, _parse

#: Seconds any one socket operation of a client may take.
CLIENT_TIMEOUT = 15


def _greetings(port: int, source: str, count: int) -> list[bytes]:
    """
    Open C{count} connections from C{source} at once, and read each one's
    first reply code.

    @return: the codes (C{b""} for a connection closed without a reply).
    """
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT, source_address=(source, 0)))
        codes = []
        for s in sockets:
            codes.append(s.recv(3))
        return codes
    finally:
        for s in sockets:
            s.close()


class IntakeLimitTests(TestCase):
    """
    The relay's limits against clients over loopback.
    """

    def start(self, *arguments: str) -> RelayService:
        # 127.0.0.0/8 is not a relay network here: the per-address limits
        # apply to these clients.
        options = _parse(
            "--spool", self.mktemp(), "--smarthost", "127.0.0.1:1", "--shutdown-grace", "1",
            "--relay-network", "10.0.0.0/8", "--relay-domain", "example.net", *arguments,
        )  # fmt: skip
        relay = makeService(options)
        relay.startService()
        self.addCleanup(relay.stopService)
        return relay

    @defer.inlineCallbacks
    def test_floodFromOneAddress(self):
        """
        Of 400 connections opened at once from 127.0.0.2, at most the
        per-address limit (50) are greeted and the others are told
        C{421 4.7.0}; meanwhile a client from 127.0.0.3 sends a message
        to the end.
        """
        port = freePort()
        relay = self.start("--smtp", f"tcp:{port}:interface=127.0.0.1:backlog=500")

        def flood():
            with ThreadPoolExecutor(2) as pool:
                flooding = pool.submit(_greetings, port, "127.0.0.2", 400)
                served = pool.submit(send)
                return flooding.result(), served.result()

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT, source_address=("127.0.0.3", 0)) as s:
                s.ehlo("served.example")
                return s.sendmail("jo@example.com", ["a@example.net"], b"Subject: hi\r\n\r\nhello\r\n")

        codes, refused = yield deferToThread(flood)
        self.assertEqual(len(codes), 400)
        self.assertLessEqual(codes.count(b"220"), 50)
        self.assertEqual(codes.count(b"220") + codes.count(b"421"), 400)
        self.assertEqual(refused, {})
        [envelope] = [relay.queue.getEnvelope(i) for i in relay.queue.ids()]
        self.assertEqual([r.address for r in envelope.recipients], [b"a@example.net"])
        self.assertEqual(relay.connectionLimits.open, 0)

    @defer.inlineCallbacks
    def test_wrongPasswordsOnTwoListeners(self):
        """
        100 sessions from one address, on the submission and the SMTP
        listeners, each trying a wrong password: the password is checked
        at most C{--max-auth-failures} times in all, the others are
        refused before any check.
        """
        files = _Files(self)
        checks = []
        original = _cred._check

        def counting(password, stored):
            checks.append(password)
            return original(password, stored)

        self.patch(_cred, "_check", counting)
        submission, smtp = freePort(), freePort()
        relay = self.start(
            "--submission", f"tcp:{submission}:interface=127.0.0.1", "--smtp", f"tcp:{smtp}:interface=127.0.0.1",
            "--users", files.users, "--certificate", files.certificate, "--max-auth-failures", "10",
        )  # fmt: skip
        relay.factories["smtp"].authFailureDelay = relay.factories["submission"].authFailureDelay = 0

        def attempt(port: int) -> str:
            s = None
            try:
                s = smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT, source_address=("127.0.0.2", 0))
                s.starttls(context=files.clientContext())
                s.ehlo("guesser.example")
                # One mechanism: smtplib's login would try the next ones.
                s.auth("PLAIN", lambda challenge=None: "\0joe\0wrong", initial_response_ok=True)
            except smtplib.SMTPAuthenticationError as e:
                return str(e.smtp_code)
            except (smtplib.SMTPException, OSError) as e:
                return type(e).__name__
            finally:
                if s is not None:
                    s.close()
            return "logged in"

        def guess():
            with ThreadPoolExecutor(20) as pool:
                return list(pool.map(attempt, [submission, smtp] * 50))

        outcomes = yield deferToThread(guess)
        self.assertEqual(len(outcomes), 100)
        # 535 after a check, 421 when refused before one.
        self.assertEqual(set(outcomes), {"535", "421"})
        self.assertEqual(outcomes.count("535"), len(checks))
        self.assertLessEqual(len(checks), 10)
        self.assertGreater(len(checks), 0)
