# Copyright (c) mailproto authors. See LICENSE for details.
"""
The C{twistd mailrelay} plugin: mailproto's mail relay (see
L{mailproto._relayd._daemon}).
"""

from twisted.application.service import ServiceMaker

mailrelay = ServiceMaker(
    "mailproto mail relay",
    "mailproto._relayd._daemon",
    "A mail relay with a durable queue, MX routing, retries and bounces (mailproto)",
    "mailrelay",
)
