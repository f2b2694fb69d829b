# -*- test-case-name: mailproto.test.test_bounce -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Delivery status notifications: the reports a relay sends back to the
sender of a message about its delivery (RFC 3464), honouring the DSN
parameters of RFC 3461.

  - L{makeReport} makes a report from a L{DeliveryReport} (the message and
    its sender) and L{RecipientReport}s (what happened per recipient), and
    gives it with its envelope as a L{ReportMessage}; or C{None} when no
    report is to be sent (a null sender, or C{NOTIFY} asked for none);
  - L{shouldNotify} says whether a recipient's C{NOTIFY} asks for a report
    of what happened;
  - L{generateBounce} is C{twisted.mail.bounce.generateBounce}, with the
    same call and result, making a complete RFC 3464 report.

Importing this module imports nothing from Twisted.
"""

from mailproto._bounce import DeliveryReport, RecipientReport, ReportMessage, generateBounce, makeReport, shouldNotify

__all__ = [
    "DeliveryReport",
    "RecipientReport",
    "ReportMessage",
    "generateBounce",
    "makeReport",
    "shouldNotify",
]
