# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Delivery status notifications for relayed mail: what the relay tells a
sender about recipients that failed, that were relayed to a server
without DSN, or whose delivery is delayed, queued as a message of its
own (from C{<>}, so never reported on in turn).

The report on each recipient is made from its L{Recipient} as the queue
keeps it: the last L{Reply} and the host that sent it.  A server's reply
is the report's C{smtp} diagnostic and that server its Remote-MTA; a
reply the relay made itself (a connection that failed) is an
C{x-mailproto} diagnostic with no Remote-MTA; a recipient that expired
has the status C{4.4.7}.

No reflection (L{ReportPolicy}): a report goes to a message's sender,
and the sender of mail from a client that may not relay (outside the
relay networks, not authenticated) may be anyone's address.  Reports on
such mail -- bounces, "relayed" and delay warnings alike -- are sent only
if every recipient was checked against the relay's valid recipients at
RCPT (the envelope's C{origin} is L{CHECKED}), and never with
C{ReportPolicy(toStrangers=False)}.  Otherwise the relay would send
content of a stranger's choosing to a third party (backscatter).

A report on a message sent with REQUIRETLS (RFC 8689 section 5) is sent
with REQUIRETLS too, and returns the message's header section only, as
for C{RET=HDRS}, whatever the message asked.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from mailproto._bounce import DeliveryReport, RecipientReport, UnparsedAddress, makeReport
from mailproto._errors import AddressError
from mailproto._jobs import wireAddress
from mailproto._queue import CHECKED, UNCHECKED, Envelope, Recipient, newMessageID

_log = Logger(namespace="mailproto.relaymanager")


def show(address: bytes) -> str:
    """
    @return: an address as logs show it.
    """
    return address.decode("utf-8", "replace")


def statusAndDiagnostic(recipient: Recipient, action: str, lifetime: float) -> tuple[str, object]:
    """
    The RFC 3463 status and the diagnostic for the report on a recipient.

    @param action: C{failed}, C{delayed} or C{relayed}.
    @param lifetime: how long messages are kept, for an expiry.
    """
    if action == "relayed":
        return "2.0.0", None
    reply = recipient.lastReply
    if reply is None:
        if action == "failed" and recipient.expired:
            return "4.4.7", ("x-mailproto", f"Message expired after {lifetime / 86400:g} days without an answer")
        return ("4.0.0" if action == "delayed" else "5.0.0"), None
    if recipient.lastHost is not None:
        diagnostic = reply
    else:
        diagnostic = ("x-mailproto", b" ".join(([reply.status] if reply.status else []) + list(reply.lines)).decode("utf-8", "replace"))
    if action == "failed" and recipient.expired:
        return "4.4.7", diagnostic
    status = reply.status.decode("ascii") if reply.status else f"{reply.code // 100}.0.0"
    if action == "delayed" and not status.startswith("4"):
        status = "4.0.0"
    return status, diagnostic


def recipientReport(recipient: Recipient, action: str, now: float, willRetryUntil, lifetime: float) -> RecipientReport:
    """
    The report on one recipient.  An address that does not parse is
    reported as queued; DSN parameters that do not fit a report (from a
    queue file edited by hand) are left out of it rather than losing the
    report.
    """
    status, diagnostic = statusAndDiagnostic(recipient, action, lifetime)
    try:
        address = wireAddress(recipient.address)
    except AddressError:
        address = UnparsedAddress(recipient.address)
    fields = dict(address=address, action=action, status=status, diagnostic=diagnostic, remoteMTA=recipient.lastHost, lastAttempt=now, willRetryUntil=willRetryUntil)
    try:
        return RecipientReport(originalRecipient=recipient.orcpt, notify=recipient.notify, **fields)
    except (ValueError, TypeError):
        return RecipientReport(**fields)


class ReportPolicy:
    """
    Which messages' senders get reports (see the module's docstring).

    @ivar toStrangers: whether the senders of mail from clients that may
        not relay get reports at all (when its recipients were checked).
    @ivar observers: callables told C{observer(policy)} each time a
        report is withheld, with C{policy} C{"reports-unchecked"} (the
        recipients were not checked) or C{"no-reports-to-strangers"}
        (L{toStrangers} is false), for metrics.
    """

    def __init__(self, toStrangers: bool = True) -> None:
        self.toStrangers = toStrangers
        self.observers: list = []

    def withholds(self, envelope: Envelope) -> str | None:
        """
        @return: why no report on C{envelope} may be sent (the policy's
            name), or C{None} if one may.  A message whose origin is not
            known (queued by an older version) is reported on as before.
        """
        if envelope.origin not in (CHECKED, UNCHECKED):
            return None
        if not self.toStrangers:
            return "no-reports-to-strangers"
        if envelope.origin == UNCHECKED:
            return "reports-unchecked"
        return None

    def withheld(self, policy: str) -> None:
        """
        Tell the L{observers} that C{policy} withheld a report.
        """
        for observer in self.observers:
            observer(policy)


#: Why a report was withheld, for the log, by policy.
_WITHHELD = {
    "reports-unchecked": "from a client outside the relay networks, recipients not checked at RCPT",
    "no-reports-to-strangers": "from a client outside the relay networks (--no-reports-to-strangers)",
}


class Reporter:
    """
    Queues reports for a relaying manager.

    @ivar manager: the manager: its C{queue}, C{hostname}, C{schedule},
        C{returnLimit} and C{stats} are used as they are when a report is
        made.
    @ivar policy: the L{ReportPolicy}.
    """

    def __init__(self, manager, policy: ReportPolicy | None = None) -> None:
        self.manager = manager
        self.policy = policy if policy is not None else ReportPolicy()

    def report(self, envelope: Envelope, recipients: list[Recipient], action: str, now: float):
        """
        Queue a delivery status notification to the sender.

        @return: a C{Deferred} that fires once it is queued, or C{None} if
            there is none to send.
        """
        if not envelope.sender:
            return None
        withheld = self.policy.withholds(envelope)
        if withheld is not None:
            self.manager.stats["withheld"] += 1
            _log.info(
                "No {action} report for {queueID} to <{sender}>: {reason}",
                action=action,
                queueID=envelope.id,
                sender=show(envelope.sender),
                reason=_WITHHELD[withheld],
                policy=withheld,
            )
            self.policy.withheld(withheld)
            return None
        try:
            wireAddress(envelope.sender)
        except AddressError:
            _log.warn("No {action} report for {queueID}: its sender cannot be sent to", action=action, queueID=envelope.id)
            return None
        manager = self.manager
        lifetime = manager.schedule.lifetime
        willRetryUntil = envelope.received + lifetime if action == "delayed" else None
        reports = [recipientReport(r, action, now, willRetryUntil, lifetime) for r in recipients]
        bounceID = newMessageID(now)
        message = manager.queue.openMessage(envelope.id)
        try:
            report = makeReport(
                DeliveryReport(
                    reportingMTA=manager.hostname,
                    sender=envelope.sender,
                    recipients=tuple(reports),
                    envid=envelope.envid,
                    ret=b"HDRS" if envelope.requireTLS else envelope.ret,
                    arrivalDate=envelope.received,
                    message=message,
                ),
                date=now,
                messageID=f"<{bounceID}@{manager.hostname}>",
                returnLimit=manager.returnLimit,
            )
        finally:
            message.close()
        if report is None:
            return None
        return self._queue(envelope, report, bounceID, action, now)

    def _queue(self, envelope: Envelope, report, bounceID: str, action: str, now: float) -> defer.Deferred:
        manager = self.manager
        bounce = Envelope(
            id=bounceID,
            sender=b"",
            recipients=[Recipient(address) for address in report.recipients],
            received=now,
            body=None if report.message.isascii() else b"8BITMIME",
            smtputf8=not all(a.isascii() for a in report.recipients),
            client="localhost",
            helo=manager.hostname,
            requireTLS=envelope.requireTLS,
        )
        spool = manager.queue.newMessage(bounce)
        try:
            spool.write(report.message)
        except BaseException:
            spool.abort()
            raise

        def queued(_):
            manager.stats["reports"] += 1
            _log.info(
                "Queued {reportID}: {action} report for {queueID} to <{sender}>",
                reportID=bounce.id,
                action=action,
                queueID=envelope.id,
                sender=show(envelope.sender),
            )

        return spool.commit().addCallback(queued)
