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
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from mailproto._bounce import DeliveryReport, RecipientReport, UnparsedAddress, makeReport
from mailproto._errors import AddressError
from mailproto._jobs import wireAddress
from mailproto._queue import Envelope, Recipient, newMessageID

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


class Reporter:
    """
    Queues reports for a relaying manager.

    @ivar manager: the manager: its C{queue}, C{hostname}, C{schedule},
        C{returnLimit} and C{stats} are used as they are when a report is
        made.
    """

    def __init__(self, manager) -> None:
        self.manager = manager

    def report(self, envelope: Envelope, recipients: list[Recipient], action: str, now: float):
        """
        Queue a delivery status notification to the sender.

        @return: a C{Deferred} that fires once it is queued, or C{None} if
            there is none to send.
        """
        if not envelope.sender:
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
                    ret=envelope.ret,
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
