# -*- test-case-name: mailproto.test.test_headers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._headers}.
"""

import os
import re
import time
from email.utils import parsedate_to_datetime

from twisted.trial.unittest import SynchronousTestCase

from mailproto._headers import idGenerator, localHostname, messageid, rfc822date


class Rfc822dateTests(SynchronousTestCase):
    """
    L{rfc822date}.
    """

    def test_utc(self):
        """
        A UTC time tuple formats with C{+0000}.
        """
        timeinfo = time.struct_time((2026, 11, 21, 6, 11, 5, 5, 325, 0))
        self.assertEqual(rfc822date(timeinfo, local=0), b"Sat, 21 Nov 2026 06:11:05 +0000")

    def test_local(self):
        """
        A local time formats with the local offset, and stands for the same
        moment.
        """
        now = time.time()
        text = rfc822date(time.localtime(now))
        self.assertRegex(text, rb"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$")
        self.assertAlmostEqual(parsedate_to_datetime(text.decode()).timestamp(), int(now), delta=1)

    def test_now(self):
        """
        Without a time, now is formatted; in UTC if asked.
        """
        before = int(time.time())
        text = rfc822date(local=0)
        self.assertTrue(text.endswith(b" +0000"))
        self.assertGreaterEqual(parsedate_to_datetime(text.decode()).timestamp(), before)


class MessageidTests(SynchronousTestCase):
    """
    L{messageid} and L{idGenerator}.
    """

    def test_form(self):
        """
        A message id is C{<time.pid.random[.uniq].counter@host>}.
        """
        value = messageid("x", N=lambda: 7)
        pattern = rb"<\d{14}\.%d\.\d+\.x\.7@" % os.getpid() + re.escape(localHostname()) + rb">"
        self.assertRegex(value, pattern)

    def test_unique(self):
        """
        Message ids differ.
        """
        self.assertEqual(len({messageid() for _ in range(100)}), 100)

    def test_idGenerator(self):
        """
        L{idGenerator} counts from zero.
        """
        gen = idGenerator()
        self.assertEqual([next(gen) for _ in range(3)], [0, 1, 2])

    def test_localHostname(self):
        """
        The local host name is ASCII bytes.
        """
        name = localHostname()
        self.assertIsInstance(name, bytes)
        self.assertTrue(name.isascii() and name)
