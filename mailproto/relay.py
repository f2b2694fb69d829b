# -*- test-case-name: mailproto.test.test_relay -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Mail into the relay: who may relay (L{RelayPolicy}), and the delivery that
writes every accepted message into the durable queue before the server
says 250 (L{QueueDeliveryFactory}, L{QueueDelivery}).

    from mailproto.relay import QueueDeliveryFactory, RelayPolicy
    from mailproto.relaymanager import Queue
    from mailproto.smtp import ESMTPFactory

    queue = Queue("/var/spool/mailproto")
    queue.recover()
    factory = ESMTPFactory(deliveryFactory=QueueDeliveryFactory(
        queue, RelayPolicy(networks=["127.0.0.0/8", "192.0.2.0/24"], domains=["example.com"])))
"""

from mailproto._relay import QueueDelivery, QueueDeliveryFactory, RelayPolicy

__all__ = ["QueueDelivery", "QueueDeliveryFactory", "RelayPolicy"]
