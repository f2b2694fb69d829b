# -*- test-case-name: mailproto.test.test_exports -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The public facade L{mailproto.smtp}: each name is the private object it
stands for, and each has twisted.mail.smtp's name and call signature.
"""

import inspect

from twisted.trial.unittest import SynchronousTestCase

from mailproto import (
    _address,
    _auth,
    _client,
    _cred,
    _tls,
    _sender,
    _commands,
    _data,
    _errors,
    _extensions,
    _handler,
    _headers,
    _replies,
    _server,
    _xtext,
    interfaces,
    smtp,
    wire,
)

# public name -> (private module, private name)
EXPORTS = {
    "Address": (_address, "Address"),
    "User": (_address, "User"),
    "quoteaddr": (_address, "quoteaddr"),
    "idGenerator": (_headers, "idGenerator"),
    "messageid": (_headers, "messageid"),
    "rfc822date": (_headers, "rfc822date"),
    "xtext_codec": (_xtext, "xtext_codec"),
    "xtext_decode": (_xtext, "xtext_decode"),
    "xtext_encode": (_xtext, "xtext_encode"),
    "xtextStreamReader": (_xtext, "xtextStreamReader"),
    "xtextStreamWriter": (_xtext, "xtextStreamWriter"),
    "AUTHDeclinedError": (_errors, "AUTHDeclinedError"),
    "AUTHRequiredError": (_errors, "AUTHRequiredError"),
    "AddressError": (_errors, "AddressError"),
    "AuthenticationError": (_errors, "AuthenticationError"),
    "EHLORequiredError": (_errors, "EHLORequiredError"),
    "ESMTPClientError": (_errors, "ESMTPClientError"),
    "SMTPAddressError": (_errors, "SMTPAddressError"),
    "SMTPBadRcpt": (_errors, "SMTPBadRcpt"),
    "SMTPBadSender": (_errors, "SMTPBadSender"),
    "SMTPClientError": (_errors, "SMTPClientError"),
    "SMTPConnectError": (_errors, "SMTPConnectError"),
    "SMTPDeliveryError": (_errors, "SMTPDeliveryError"),
    "SMTPError": (_errors, "SMTPError"),
    "SMTPProtocolError": (_errors, "SMTPProtocolError"),
    "SMTPServerError": (_errors, "SMTPServerError"),
    "SMTPTimeoutError": (_errors, "SMTPTimeoutError"),
    "TLSError": (_errors, "SMTPTLSError"),
    "SMTPTLSFailure": (_errors, "SMTPTLSFailure"),
    "TLSRequiredError": (_errors, "TLSRequiredError"),
    "SMTP": (_server, "SMTP"),
    "ESMTP": (_server, "ESMTP"),
    "SMTPFactory": (_server, "SMTPFactory"),
    "ESMTPFactory": (_server, "ESMTPFactory"),
    "LMTP": (_server, "LMTP"),
    "LMTPFactory": (_server, "LMTPFactory"),
    "IClientAuthentication": (interfaces, "IClientAuthentication"),
    "IMessage": (interfaces, "IMessageSMTP"),
    "IMessageDelivery": (interfaces, "IMessageDelivery"),
    "IMessageDeliveryFactory": (interfaces, "IMessageDeliveryFactory"),
    "IMessageStream": (interfaces, "IMessageStream"),
    **{name: (_client, name) for name in ["SMTPClient", "ESMTPClient", "LMTPClient"]},
    **{name: (_sender, name) for name in [
        "SenderMixin", "SMTPSender", "ESMTPSender", "LMTPSender", "SMTPSenderFactory", "ESMTPSenderFactory",
        "sendmail"]},
    **{name: (_auth, name) for name in [
        "PLAINAuthenticator", "LOGINAuthenticator", "CramMD5ClientAuthenticator", "XOAUTH2Authenticator",
        "OAUTHBEARERAuthenticator"]},
    **{name: (_cred, name) for name in ["LOGINCredentials", "PLAINCredentials", "UsersFile", "UsersFileChecker"]},
    "AuthFailures": (_server, "AuthFailures"),
    "loadServerOptions": (_tls, "loadServerOptions"),
    **{name: (_handler, name) for name in _handler.__all__},
}

# Names mailproto.smtp has that twisted.mail.smtp has not.
OWN_NAMES = {
    "ESMTPFactory",
    "LMTP",
    "LMTPFactory",
    "IMessageStream",
    "LMTPClient",
    "LMTPSender",
    "XOAUTH2Authenticator",
    "OAUTHBEARERAuthenticator",
    "AuthFailures",
    "PLAINCredentials",
    "UsersFile",
    "UsersFileChecker",
    "loadServerOptions",
    "SMTPTLSFailure",
    *_handler.__all__,
}


WIRE_EXPORTS = {
    **{name: (_commands, name) for name in [
        "MailFrom", "RcptTo", "formatMailFrom", "formatRcptTo", "isValidHelo", "noArgument",
        "parseAuth", "parseBdat", "parseHelo", "parseMailFrom", "parseRcptTo", "splitCommand"]},
    **{name: (_replies, name) for name in ["Reply", "ReplyParser", "ReplySyntaxError", "isStatus"]},
    "Extensions": (_extensions, "Extensions"),
    **{name: (_data, name) for name in ["BareNewlinePolicy", "DotStuffer", "Unstuffer", "stuff", "unstuff"]},
    **{name: (_xtext, name) for name in ["XtextError", "decodeXtext", "encodeXtext"]},
}


class WireExportsTests(SynchronousTestCase):
    """
    L{mailproto.wire.__all__}.
    """

    def test_identity(self):
        """
        Each public name of L{mailproto.wire} is the private object.
        """
        for name, (module, private) in WIRE_EXPORTS.items():
            self.assertIs(getattr(wire, name), getattr(module, private), name)

    def test_allIsComplete(self):
        """
        C{__all__} lists exactly the exported names, once each.
        """
        self.assertEqual(sorted(wire.__all__), sorted(WIRE_EXPORTS))
        self.assertEqual(len(wire.__all__), len(set(wire.__all__)))


class ExportsTests(SynchronousTestCase):
    """
    L{mailproto.smtp.__all__}.
    """

    def test_identity(self):
        """
        Each public name is the private object, not a copy or a wrapper.
        """
        for name, (module, private) in EXPORTS.items():
            self.assertIs(getattr(smtp, name), getattr(module, private), name)

    def test_allIsComplete(self):
        """
        C{__all__} lists exactly the exported names, once each.
        """
        self.assertEqual(sorted(smtp.__all__), sorted(EXPORTS))
        self.assertEqual(len(smtp.__all__), len(set(smtp.__all__)))

    def test_twistedMailNames(self):
        """
        Every public name is also a name of twisted.mail.smtp, so that ported
        code finds what it used.
        """
        from twisted.mail import smtp as tsmtp

        for name in set(smtp.__all__) - OWN_NAMES:
            self.assertIn(name, tsmtp.__all__, name)

    def test_twistedMailSignatures(self):
        """
        Every public callable takes at least twisted.mail's parameters, with
        the same names, in the same order.
        """
        from twisted.mail import smtp as tsmtp

        for name in set(smtp.__all__) - OWN_NAMES:
            ours, theirs = getattr(smtp, name), getattr(tsmtp, name)
            if isinstance(ours, type) and ours.__init__ is object.__init__:
                continue
            try:
                theirParams = list(inspect.signature(theirs).parameters)
            except (TypeError, ValueError):
                continue
            ourParams = list(inspect.signature(ours).parameters)
            self.assertEqual(ourParams[: len(theirParams)], theirParams, name)

    def test_noTwistedMail(self):
        """
        mailproto's library modules never import twisted.mail.
        """
        import pathlib
        import re

        root = pathlib.Path(smtp.__file__).parent
        pattern = re.compile(r"^\s*(from|import)\s+twisted\.mail", re.M)
        for path in root.glob("*.py"):
            self.assertIsNone(pattern.search(path.read_text(encoding="utf-8")), path.name)


class RelayExportsTests(SynchronousTestCase):
    """
    L{mailproto.relaymanager} and L{mailproto.relay}: each public name is
    the private object, and C{__all__} lists exactly them.
    """

    def test_identity(self):
        from mailproto import _attempts, _mx, _queue, _relay, _relayers, _relaymanager, _smarthost, _twistedqueue, relay, relaymanager

        private = (_attempts, _mx, _queue, _relayers, _relaymanager, _smarthost, _twistedqueue)
        for module, private in [(relaymanager, private), (relay, (_relay, _relayers))]:
            for name in module.__all__:
                origins = {id(getattr(p, name)): getattr(p, name) for p in private if hasattr(p, name)}
                self.assertEqual(len(origins), 1, name)
                self.assertIs(getattr(module, name), next(iter(origins.values())), name)
            self.assertEqual(len(module.__all__), len(set(module.__all__)))

    def test_twistedMailNames(self):
        """
        The names shared with twisted.mail.relaymanager are there.
        """
        from twisted.mail import relaymanager as trelaymanager

        from mailproto import relaymanager

        shared = {
            "MXCalculator",
            "CanonicalNameLoop",
            "CanonicalNameChainTooLong",
            "Queue",
            "ManagedRelayerMixin",
            "SMTPManagedRelayer",
            "ESMTPManagedRelayer",
            "SMTPManagedRelayerFactory",
            "ESMTPManagedRelayerFactory",
            "SmartHostSMTPRelayingManager",
            "SmartHostESMTPRelayingManager",
            "RelayStateHelper",
        }
        for name in shared:
            self.assertTrue(hasattr(trelaymanager, name), name)
            self.assertIn(name, relaymanager.__all__)
        from twisted.mail import relay as trelay

        from mailproto import relay

        for name in ("DomainQueuer", "RelayerMixin", "SMTPRelayer", "ESMTPRelayer"):
            self.assertTrue(hasattr(trelay, name), name)
            self.assertIn(name, relay.__all__)
