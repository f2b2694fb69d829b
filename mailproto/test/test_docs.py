# -*- test-case-name: mailproto.test.test_docs -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The examples in C{docs/} work as shown: each page's C{>>>} examples are run
with L{doctest}.

The pages are found next to the package in a checkout, or in the source
tree named by the C{MAILPROTO_SOURCE} environment variable (which
C{.ci/test} sets when it tests an installed copy).
"""

import doctest
import os
import pathlib

from twisted.trial.unittest import SynchronousTestCase

import mailproto


def _docs():
    candidates = [pathlib.Path(mailproto.__file__).resolve().parent.parent / "docs"]
    if os.environ.get("MAILPROTO_SOURCE"):
        candidates.insert(0, pathlib.Path(os.environ["MAILPROTO_SOURCE"]) / "docs")
    for path in candidates:
        if (path / "index.rst").exists():
            return path
    return None


DOCS = _docs()


class DocsTests(SynchronousTestCase):
    """
    Run the examples of each page.
    """

    if DOCS is None:
        skip = "docs/ not found: set MAILPROTO_SOURCE to the source tree"

    def runPage(self, name):
        result = doctest.testfile(
            str(DOCS / name),
            module_relative=False,
            optionflags=doctest.ELLIPSIS,
            verbose=False,
            report=True,
        )
        self.assertGreater(result.attempted, 0, f"{name} has no examples")
        self.assertEqual(result.failed, 0, f"{result.failed} example(s) of {name} failed, see above")

    def test_wire(self):
        """
        docs/wire.rst.
        """
        self.runPage("wire.rst")

    def test_receiving(self):
        """
        docs/receiving.rst.
        """
        self.runPage("receiving.rst")

    def test_sending(self):
        """
        docs/sending.rst.
        """
        self.runPage("sending.rst")

    def test_relaying(self):
        """
        docs/relaying.rst.
        """
        self.runPage("relaying.rst")
