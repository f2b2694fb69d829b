# -*- test-case-name: mailproto.test.test_purity -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The wire layer is pure: importing it imports nothing from Twisted (no
reactor, no Deferreds, no transports).
"""

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import mailproto

# Run from the directory that holds the package, installed or not.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))

PURE = [
    "mailproto",
    "mailproto._address",
    "mailproto._bounce",
    "mailproto._commands",
    "mailproto._data",
    "mailproto._errors",
    "mailproto._extensions",
    "mailproto._grammar",
    "mailproto._headers",
    "mailproto._replies",
    "mailproto._xtext",
    "mailproto.bounce",
    "mailproto.wire",
]


class PurityTests(SynchronousTestCase):
    """
    Import the pure modules in a fresh interpreter and look at what came
    with them.
    """

    def test_noTwisted(self):
        """
        No module of Twisted (nor zope.interface, nor OpenSSL) is imported by
        the wire layer.
        """
        script = (
            "import sys\n"
            f"for name in {PURE!r}: __import__(name)\n"
            "print('\\n'.join(sorted(m for m in sys.modules"
            " if m.split('.')[0] in ('twisted', 'zope', 'OpenSSL'))))\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
        self.assertEqual(output.strip(), "")

    def test_checkWorks(self):
        """
        The check above does see an import of Twisted's reactor machinery.
        """
        script = "import sys, twisted.internet.defer\nprint('twisted.internet.defer' in sys.modules)\n"
        output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        self.assertEqual(output.strip(), "True")
