# -*- test-case-name: mailproto.test -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
mailproto: an SMTP/ESMTP framework and mail relay for Twisted.

The public modules are L{mailproto.smtp} (a drop-in for the SMTP side of
C{twisted.mail.smtp}) and, as they arrive, the relay modules.  Importing
this package imports nothing else: no reactor, no OpenSSL.
"""

__version__ = "0.1.0.dev0"
