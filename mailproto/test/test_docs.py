# -*- test-case-name: mailproto.test.test_docs -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The examples in C{docs/} work as shown: each page's C{>>>} examples are run
with L{doctest}, and the example programs of the tutorials in
C{docs/examples/} are run: the mail server and the two senders over
loopback TCP, the trial tests of the testing tutorial with trial (those
over loopback TCP in a trial of their own, as a reader runs them).

The pages are found next to the package in a checkout, or in the source
tree named by the C{MAILPROTO_SOURCE} environment variable (which
C{.ci/test} sets when it tests an installed copy).
"""

import doctest
import importlib
import io
import mailbox
import os
import pathlib
import sys
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.policies import WrappingFactory
from twisted.trial import reporter, runner
from twisted.trial.unittest import SynchronousTestCase, TestCase

import mailproto
from mailproto.test._loopback import noConnectionsLeft


def _docs():
    candidates = [pathlib.Path(mailproto.__file__).resolve().parent.parent / "docs"]
    if os.environ.get("MAILPROTO_SOURCE"):
        candidates.insert(0, pathlib.Path(os.environ["MAILPROTO_SOURCE"]) / "docs")
    for path in candidates:
        if (path / "index.rst").exists():
            return path
    return None


DOCS = _docs()
EXAMPLES = DOCS / "examples" if DOCS is not None else None


def _useExamples(case):
    """
    Make the modules of C{docs/examples} importable by their names, as
    they are when a reader runs Python in that directory, for the rest of
    the test C{case}; forget them afterwards.
    """
    sys.path.insert(0, str(EXAMPLES))

    def forget():
        sys.path.remove(str(EXAMPLES))
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) or ""
            if path and pathlib.Path(path).resolve().parent == EXAMPLES.resolve():
                del sys.modules[name]

    case.addCleanup(forget)


class DocsTests(SynchronousTestCase):
    """
    Run the examples of each page.
    """

    if DOCS is None:
        skip = "docs/ not found: set MAILPROTO_SOURCE to the source tree"

    def runPage(self, name, examples=False):
        """
        Run the C{>>>} examples of one page, in one namespace, in order.

        @param examples: whether the page imports the modules of
            C{docs/examples}.
        """
        if examples:
            _useExamples(self)
        # Temporary files and directories a page makes go where trial
        # cleans up.
        temporary = os.path.abspath(self.mktemp())
        os.makedirs(temporary)
        self.patch(tempfile, "tempdir", temporary)
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

    def test_handler(self):
        """
        docs/handler.rst.
        """
        self.runPage("handler.rst")

    def test_sending(self):
        """
        docs/sending.rst.
        """
        self.runPage("sending.rst")

    def test_client(self):
        """
        docs/client.rst.
        """
        self.runPage("client.rst")

    def test_relaying(self):
        """
        docs/relaying.rst.
        """
        self.runPage("relaying.rst")

    def test_outboundSecurity(self):
        """
        docs/outbound-security.rst.
        """
        self.runPage("outbound-security.rst")

    def test_porting(self):
        """
        docs/porting.rst.
        """
        self.runPage("porting.rst")

    def test_tutorialProgrammer(self):
        """
        docs/tutorial-programmer.rst, with docs/examples/mailserver.py.
        """
        self.runPage("tutorial-programmer.rst", examples=True)

    def test_tutorialTesting(self):
        """
        docs/tutorial-testing.rst.
        """
        self.runPage("tutorial-testing.rst")

    def test_tutorialTestingModule(self):
        """
        The trial tests that docs/tutorial-testing.rst shows,
        docs/examples/test_notify.py, pass.
        """
        _useExamples(self)
        suite = runner.TestLoader().loadModule(importlib.import_module("test_notify"))
        result = reporter.TestResult()
        suite.run(result)
        self.assertEqual(result.testsRun, 2)
        self.assertEqual((result.errors, result.failures), ([], []))
        self.assertTrue(result.wasSuccessful())


class TrialExamplesTests(TestCase):
    """
    The trial tests the testing tutorial shows that run over loopback TCP,
    run as the page says: C{python -m twisted.trial} in a process of its
    own (a trial run cannot run inside another's reactor).
    """

    if DOCS is None:
        skip = "docs/ not found: set MAILPROTO_SOURCE to the source tree"

    timeout = 60

    @defer.inlineCallbacks
    def test_starttls(self):
        """
        docs/examples/test_starttls.py passes.
        """
        try:
            import trustme  # noqa: F401
        except ImportError:
            from mailproto.test._peers import missing

            missing("trustme is not installed")
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        package = str(pathlib.Path(mailproto.__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(EXAMPLES), package]))
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "twisted.trial", "test_starttls"], env=env, path=where
        )
        text = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        self.assertIn("PASSED (successes=2)", text)


class ExampleProgramsTests(TestCase):
    """
    The programs of docs/tutorial-programmer.rst, over loopback TCP: the
    mail server of docs/examples/mailserver.py, and docs/examples/sendone.py
    and docs/examples/sendmany.py sending to it.
    """

    if DOCS is None:
        skip = "docs/ not found: set MAILPROTO_SOURCE to the source tree"

    timeout = 30

    def quiet(self):
        return noConnectionsLeft(self)

    async def serve(self):
        """
        Start the example server on a free port, storing mail in a
        temporary directory.

        @return: the port number.
        """
        _useExamples(self)
        mailserver = importlib.import_module("mailserver")
        makeFactory = mailserver.makeFactory
        self.patch(mailserver, "makeFactory", lambda directory: WrappingFactory(makeFactory(directory)))
        self.directory = os.path.abspath(self.mktemp())
        port = await mailserver.listen(reactor, "tcp:0:interface=127.0.0.1", self.directory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def subjects(self, user):
        """
        @return: the subjects of the messages in a user's Maildir.
        """
        return sorted(message["Subject"] for message in mailbox.Maildir(os.path.join(self.directory, user)))

    def output(self):
        """
        Capture what the programs print.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        return out

    @defer.inlineCallbacks
    def test_sendone(self):
        """
        sendone.py sends one message to alice and bob through the server;
        the unknown recipient is refused.
        """
        portNumber = yield defer.ensureDeferred(self.serve())
        sendone = importlib.import_module("sendone")
        out = self.output()
        yield defer.ensureDeferred(sendone.main(reactor, port=portNumber))
        yield defer.ensureDeferred(self.quiet())
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                "2 of 3 recipients accepted",
                "  alice@example.com: 250 2.1.5 Recipient address accepted",
                "  bob@example.com: 250 2.1.5 Recipient address accepted",
                "  nobody@example.com: 550 5.1.1 Cannot receive for specified address",
            ],
        )
        self.assertEqual(self.subjects("alice"), ["Lunch?"])
        self.assertEqual(self.subjects("bob"), ["Lunch?"])
        [message] = mailbox.Maildir(os.path.join(self.directory, "alice"))
        self.assertTrue(message["Received"].startswith("from "))

    @defer.inlineCallbacks
    def test_sendmany(self):
        """
        sendmany.py sends three messages to alice over one connection.
        """
        portNumber = yield defer.ensureDeferred(self.serve())
        sendmany = importlib.import_module("sendmany")
        out = self.output()
        yield defer.ensureDeferred(sendmany.main(reactor, f"tcp:127.0.0.1:{portNumber}"))
        yield defer.ensureDeferred(self.quiet())
        self.assertEqual(out.getvalue().splitlines(), ["250 2.0.0 Delivery in progress 1"] * 3)
        self.assertEqual(self.subjects("alice"), ["Report 1", "Report 2", "Report 3"])
