# -*- test-case-name: mailproto.test.test_relay -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Mail into the relay: who may relay (L{RelayPolicy}), and the delivery that
writes every accepted message into the durable queue before the server
says 250 (L{QueueDeliveryFactory}, L{QueueDelivery}).  twisted.mail's
names are here too: L{DomainQueuer} (a relaying domain, one queued message
per recipient) and the relayers L{RelayerMixin}, L{SMTPRelayer} and
L{ESMTPRelayer} (SMTP clients sending queue files).  A relay's server::

    from mailproto.relay import QueueDeliveryFactory, RelayPolicy
    from mailproto.relaymanager import Queue
    from mailproto.smtp import ESMTPFactory

    queue = Queue("/var/spool/mailproto")
    queue.recover()
    factory = ESMTPFactory(deliveryFactory=QueueDeliveryFactory(
        queue, RelayPolicy(networks=["127.0.0.0/8", "192.0.2.0/24"], domains=["example.com"])))
"""

from mailproto._relay import DomainQueuer, QueueDelivery, QueueDeliveryFactory, RelayPolicy
from mailproto._relayers import ESMTPRelayer, RelayerMixin, SMTPRelayer

__all__ = ["QueueDelivery", "QueueDeliveryFactory", "RelayPolicy", "DomainQueuer", "RelayerMixin", "SMTPRelayer", "ESMTPRelayer"]
