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

    @defer.inlineCallbacks
    def test_sendmail(self):
        """
        The first program, C{sendmail} with STARTTLS and AUTH required,
        run as pasted but for the server: a mailproto server on 127.0.0.1
        with a certificate for C{localhost} from a test authority that the
        program's process trusts (C{SSL_CERT_FILE}), and its own user.  It
        prints each recipient's reply, and the message is delivered to the
        authenticated user.
        """
        from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
        from twisted.internet.ssl import CertificateOptions, PrivateCertificate

        from mailproto.test._peers import need
        from mailproto.test.test_server_auth import authFactory

        try:
            import trustme
        except ImportError:
            trustme = None
        need(trustme, "trustme")
        ca = trustme.CA()
        issued = ca.issue_cert("localhost")
        private = PrivateCertificate.loadPEM(issued.private_key_and_cert_chain_pem.bytes().decode("ascii"))
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"me@example.com", b"secret")
        factory = authFactory(checker, contextFactory=CertificateOptions(privateKey=private.privateKey.original, certificate=private.original))
        factory.clock = reactor
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        program = codeBlock("sending.rst", "numOk, addresses = await sendmail(")
        for shown in ('"smtp.example.com"', "port=587"):
            self.assertIn(shown, program)
        program = program.replace('"smtp.example.com"', '"localhost"').replace("port=587", f"port={port.getHost().port}")
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        path, authority = os.path.join(where, "send.py"), os.path.join(where, "ca.pem")
        ca.cert_pem.write_to_path(authority)
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=package, SSL_CERT_FILE=authority)
        out, err, code = yield getProcessOutputAndValue(sys.executable, [path], env=env, path=where)
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        self.assertEqual(out.decode().splitlines(), ["you@example.net 250 2.1.5 Recipient address accepted"])
        [message] = factory.realm.deliveries[b"me@example.com"].messages
        self.assertIn(b"It works.", message.data)
