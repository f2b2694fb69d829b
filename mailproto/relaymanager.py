# -*- test-case-name: mailproto.test.test_mx -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The mail relay: where a message goes and how it gets there.

This module follows C{twisted.mail.relaymanager}: the names it shares with
it are used the same way, so that code written for twisted.mail ports by
changing its imports.  It holds the durable queue, the routing of mail
by MX records, and the relaying manager that sends the queue's messages:

  - L{SmartHostESMTPRelayingManager} (and L{SmartHostSMTPRelayingManager},
    with HELO-only relayers): due messages grouped by destination,
    several per connection (L{ESMTPManagedRelayer}, made by
    L{ESMTPManagedRelayerFactory}), concurrency limits overall and per
    destination, per-recipient outcomes, retries on the schedule, one
    delivery status notification for what failed; by MX records or
    through a L{SmartHost}, with a L{TLSPolicy} per destination
    (L{NONE}, L{MAY}, L{ENCRYPT}, L{VERIFY}).
  - L{RelayStateHelper}: twisted.mail's timer service calling
    C{checkState}; a manager that was C{start}ed needs none.

  - L{Queue}: the spool directory; messages are committed durably (the
    server's 250 waits for it), their delivery state is kept in JSON, and
    L{Queue.recover} sets the spool right after a crash.  One process
    changes a spool at a time, under its L{SpoolLock}; a queue used on
    its own beside a running relay refuses to change it (L{SpoolBusy}).
  - L{importTwistedQueue} moves a twisted.mail relay's queue directory
    (its C{-H}/C{-D} pairs) into a L{Queue}, durably, and says what it
    took in an L{ImportReport}.
  - L{recordAttempt} and L{RetrySchedule}: what one delivery attempt does
    to a queued message (per-recipient outcome, backoff, expiry).
  - L{MXCalculator} finds a domain's mail exchangers.  Its C{getMX} is
    twisted.mail's; its C{getRoute} gives every host to try, in order, with
    its IPv4 and IPv6 addresses, as a L{Destination}.
  - L{NullMX}: the domain accepts no mail (RFC 7505).
  - L{CanonicalNameLoop}, L{CanonicalNameChainTooLong}: the CNAME records
    of a name loop, or are too many.

Routing failures (L{MailRoutingError} and its subclasses) have a
C{permanent} attribute: whether the message should bounce rather than wait
for a retry.
"""

from mailproto._attempts import AttemptResult, RetrySchedule, recordAttempt
from mailproto._mx import (
    Candidate,
    CanonicalNameChainTooLong,
    CanonicalNameLoop,
    Destination,
    DNSTemporaryFailure,
    MailRoutingError,
    MXCalculator,
    NoMailExchange,
    NoSuchDomain,
    NullMX,
)
from mailproto._queue import Envelope, Queue, Recipient, SpoolBusy, SpoolLock
from mailproto._relayers import (
    ESMTPManagedRelayer,
    ESMTPManagedRelayerFactory,
    ManagedRelayerMixin,
    SMTPManagedRelayer,
    SMTPManagedRelayerFactory,
)
from mailproto._relaymanager import RelayStateHelper, SmartHostESMTPRelayingManager, SmartHostSMTPRelayingManager
from mailproto._smarthost import ENCRYPT, MAY, NONE, VERIFY, SmartHost, TLSPolicy
from mailproto._twistedqueue import ImportReport, importTwistedQueue

__all__ = [
    "MXCalculator",
    "CanonicalNameLoop",
    "CanonicalNameChainTooLong",
    "NullMX",
    "Destination",
    "Candidate",
    "MailRoutingError",
    "NoSuchDomain",
    "NoMailExchange",
    "DNSTemporaryFailure",
    "Queue",
    "SpoolLock",
    "SpoolBusy",
    "importTwistedQueue",
    "ImportReport",
    "Envelope",
    "Recipient",
    "RetrySchedule",
    "AttemptResult",
    "recordAttempt",
    "ManagedRelayerMixin",
    "SMTPManagedRelayer",
    "ESMTPManagedRelayer",
    "SMTPManagedRelayerFactory",
    "ESMTPManagedRelayerFactory",
    "SmartHostSMTPRelayingManager",
    "SmartHostESMTPRelayingManager",
    "RelayStateHelper",
    "SmartHost",
    "TLSPolicy",
    "NONE",
    "MAY",
    "ENCRYPT",
    "VERIFY",
]
