# -*- test-case-name: mailproto.test.test_docsnippets -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Whole programs shown in C{code-block} directives of C{docs/} (not C{>>>}
examples) run as pasted: each is taken from its page and run in a process
of its own against a mailproto server on 127.0.0.1, its port put in place
of the page's.
"""

import os
import re
import sys

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from mailproto.smtp import ESMTPFactory
from mailproto.test.test_docs import DOCS
from mailproto.testing import MemoryDelivery


def codeBlock(page: str, marker: str) -> str:
    """
    @return: the Python C{code-block} of C{docs/PAGE} that contains
        C{marker}, dedented.
    """
    text = (DOCS / page).read_text(encoding="utf-8")
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text):
        block = match.group(1)
        if marker in block:
            return "\n".join(line[4:] for line in block.splitlines()) + "\n"
    raise AssertionError(f"no code block with {marker!r} in {page}")


class SendingPageTests(TestCase):
    """
    docs/sending.rst's programs.
    """

    if DOCS is None:
        skip = "docs/ not found: set MAILPROTO_SOURCE to the source tree"

    timeout = 60

    @defer.inlineCallbacks
    def test_batch(self):
        """
        The C{Batch} program sends its ten messages over one connection,
        prints a line for each, and exits by itself.
        """
        delivery = MemoryDelivery()
        port = reactor.listenTCP(0, ESMTPFactory(delivery=delivery, domain=b"mx.example"), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        program = codeBlock("sending.rst", "class Batch(ESMTPClient)")
        self.assertIn('"tcp:127.0.0.1:1025"', program)
        program = program.replace('"tcp:127.0.0.1:1025"', f'"tcp:127.0.0.1:{port.getHost().port}"')
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        path = os.path.join(where, "batch.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=package)
        out, err, code = yield getProcessOutputAndValue(sys.executable, [path], env=env, path=where)
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        self.assertEqual(out.decode().splitlines(), ["250 2.0.0 Delivery in progress 1"] * 10)
        self.assertEqual(len(delivery.messages), 10)
