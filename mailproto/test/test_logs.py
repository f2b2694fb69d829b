# -*- test-case-name: mailproto.test.test_logs -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
L{mailproto._relayd._logs}: the relay's log leaves out Twisted's own chatter at
each DNS lookup, and nothing else.
"""

from __future__ import annotations

import io

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from mailproto._relayd._logs import RelayLog, isNoise


def _legacy(text: str, **kw) -> dict:
    """
    An event as C{twisted.python.log.msg} makes it.
    """
    return {"log_namespace": "log_legacy", "log_format": "{log_text}", "log_text": text, "log_level": LogLevel.info, "log_time": 0.0, "log_system": "-", **kw}


NOISE = [
    "DNSDatagramProtocol starting on 34539",
    "(UDP Port 34539 Closed)",
    "Starting protocol <twisted.names.dns.DNSDatagramProtocol object at 0x7fc4a4ae1650>",
    "Stopping protocol <twisted.names.dns.DNSDatagramProtocol object at 0x7fc4a4ae1650>",
    "b'/etc/resolv.conf' changed, reparsing",
    "Resolver added ('10.255.255.53', 53) to server list",
]


class NoiseTests(SynchronousTestCase):
    def test_dnsChatter(self):
        for text in NOISE:
            self.assertTrue(isNoise(_legacy(text)), text)

    def test_keptEvents(self):
        """
        Anything else is kept: other legacy lines, errors, and the relay's
        own events even when they say the same words.
        """
        kept = [
            _legacy("RelayESMTPFactory (ConnectionLimitsFactory) starting on 2626"),
            _legacy("(UDP Port 34539 Closed)", isError=1),
            _legacy("DNSDatagramProtocol starting on 34539 and something else"),
            {"log_namespace": "mailproto.relaymanager", "log_format": "(UDP Port 1 Closed)", "log_level": LogLevel.info},
        ]
        for event in kept:
            self.assertFalse(isNoise(event), event)

    def test_observerFilters(self):
        for format in ("text", "json"):
            log = RelayLog("-", format)
            log.file = io.StringIO()
            log.writer.outFile = log.file
            observer = log.observer()
            for text in NOISE:
                observer(_legacy(text))
            observer(_legacy("a line to keep"))
            log.writer.flushNow()
            self.assertIn("a line to keep", log.file.getvalue(), format)
            for text in NOISE:
                self.assertNotIn(text, log.file.getvalue(), format)
