# -*- test-case-name: mailproto.test.test_jobs -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
What the relay sends: a message's attempt (L{MessageAttempt}), split
into jobs (L{Job}), one per destination; and the checks that a queued
address can go on the wire at all.

A message attempt's states, and the events that move it::

  =========  =======================  ==========================================
  state      means                    events
  =========  =======================  ==========================================
  sending    jobs are unanswered      C{answer(job, ...)}: that job's recipients
                                      have replies (a server's, or the relay's
                                      own); the last job moves it to recording.
                                      C{split(job, recipients)}: one more job
                                      to wait for.
  recording  every job answered: the  C{settle()}: to settled.
             relay writes the state
             and queues the reports
  settled    over: the message waits  (none)
             again, or is gone
  =========  =======================  ==========================================

An event that does not belong to the state (a job answered twice, an
answer after the attempt is recorded, a split once every job is
answered) is refused with L{AttemptStateError}: the caller has a bug,
and the attempt keeps what it had.
"""

from __future__ import annotations

from mailproto._address import Address
from mailproto._client import RecipientReply
from mailproto._commands import MailFrom, RcptTo, formatMailFrom, formatRcptTo
from mailproto._errors import AddressError
from mailproto._queue import Envelope, Recipient, openQueueFile, readQueueFile
from mailproto._replies import Reply, replyFromWire
from mailproto._smarthost import domainKey

SENDING, RECORDING, SETTLED = "sending", "recording", "settled"
"""The states of a L{MessageAttempt}."""


class AttemptStateError(Exception):
    """
    An event came to a L{MessageAttempt} in a state it does not belong to.
    """


class MessageAttempt:
    """
    One attempt to deliver a message: its jobs, and the replies so far.
    See the module docstring for its states.

    @ivar envelope: the message's envelope.
    @ivar state: L{SENDING}, L{RECORDING} or L{SETTLED}.
    @ivar replies: the final reply for each recipient answered, by
        address.
    @ivar hosts: the host that sent each reply, by address (none for the
        relay's own replies).
    @ivar withoutDSN: the addresses answered by a server that does not
        offer DSN.
    @ivar interrupted: whether the relay stopped before some recipients
        had an answer.
    @ivar unanswered: how many jobs have not been answered.
    @ivar started: when the attempt started (seconds since the epoch).
    """

    def __init__(self, envelope: Envelope, started: float = 0.0) -> None:
        self.envelope = envelope
        self.state = SENDING
        self.replies: dict[bytes, Reply] = {}
        self.hosts: dict[bytes, str] = {}
        self.withoutDSN: set[bytes] = set()
        self.interrupted = False
        self.unanswered = 0
        self.started = started

    def __repr__(self) -> str:
        return f"<MessageAttempt {self.envelope.id} {self.state}, {self.unanswered} unanswered>"

    def _expect(self, state: str, event: str) -> None:
        if self.state != state:
            raise AttemptStateError(f"{event} for {self.envelope.id} while {self.state}")

    def add(self, job: Job) -> Job:
        """
        Wait for one more job's answer.

        @return: C{job}.
        """
        self._expect(SENDING, "a job added")
        self.unanswered += 1
        return job

    def split(self, job: Job, recipients: list[Recipient]) -> Job:
        """
        Take C{recipients} out of an unanswered job, into a new job for the
        same message and destination that this attempt waits for too.

        @return: the new job.
        """
        self._expect(SENDING, "a split")
        if job.answered:
            raise AttemptStateError(f"a split of an answered job of {self.envelope.id}")
        taken = {id(r) for r in recipients}
        job.recipients = [r for r in job.recipients if id(r) not in taken]
        return self.add(Job(self.envelope, list(recipients), job.destination, self, job.opener, job.path))

    def answer(self, job: Job, replies: dict[bytes, Reply], host: str | None = None, dsn: bool = True, cut: bool = False) -> bool:
        """
        A job has its replies.

        @param replies: by address; a recipient of the job without one
            has no outcome in this attempt.
        @param host: the server that sent them, or C{None} for the
            relay's own.
        @param dsn: whether that server offers DSN.
        @param cut: whether the relay's own stop cut the job: its
            recipients get no outcome, and the attempt is interrupted.
        @return: whether that was the last job (the attempt is now
            L{RECORDING}).
        """
        self._expect(SENDING, "an answer")
        if job.answered or job.attempt is not self:
            raise AttemptStateError(f"a job of {self.envelope.id} answered twice, or not of this attempt")
        job.answered = True
        job.close()
        if cut:
            self.interrupted = True
            replies = {}
        for recipient in job.recipients:
            reply = replies.get(recipient.address)
            if reply is None:
                continue
            self.replies[recipient.address] = reply
            if host is not None:
                self.hosts[recipient.address] = host
                if not dsn:
                    self.withoutDSN.add(recipient.address)
        self.unanswered -= 1
        if self.unanswered > 0:
            return False
        self.state = RECORDING
        return True

    def settle(self) -> None:
        """
        The attempt is recorded: it is over.
        """
        self._expect(RECORDING, "settling")
        self.state = SETTLED


class Job:
    """
    A message's part for one destination: the message, and its recipients
    there.  A job belongs to one connection at a time; once answered, it
    is done.

    @ivar attempt: the L{MessageAttempt}, or C{None} for a job made from a
        queue file (L{fromPath}).
    @ivar envelope: the message's envelope.
    @ivar recipients: the L{Recipient}s to send to.
    @ivar destination: the destination's key (a domain, or
        L{SMARTHOST <mailproto._smarthost.SMARTHOST>}).
    @ivar answered: whether the job has its replies.
    @ivar opener: opens the message's data, for reading from its first
        octet.
    @ivar path: the queue file, if there is one.
    """

    def __init__(self, envelope: Envelope, recipients: list[Recipient], destination: str, attempt: MessageAttempt | None = None, opener=None, path=None) -> None:
        self.envelope = envelope
        self.recipients = recipients
        self.destination = destination
        self.attempt = attempt
        self.path = path
        self.opener = opener
        self._file = None
        self.answered = False

    def __repr__(self) -> str:
        return f"<Job {self.envelope.id} to {self.destination} for {len(self.recipients)}>"

    @classmethod
    def fromPath(cls, path) -> Job:
        """
        A job for every waiting recipient of the message in queue file
        C{path} whose address would go on the wire (the others stay
        waiting in the file: an unmanaged relayer has nobody to report
        them to).
        """
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        envelope = readQueueFile(path)
        recipients = [r for r in envelope.waiting if recipientRefusal(r) is None]
        return cls(envelope, recipients, "", opener=lambda: openQueueFile(path), path=path)

    @property
    def name(self) -> str:
        """
        What twisted.mail calls a message: its queue file, or its id.
        """
        return self.path if self.path is not None else self.envelope.id

    def mailFrom(self) -> MailFrom:
        """
        @return: the MAIL command for the message (with C{REQUIRETLS} if
            it came with it).
        """
        envelope = self.envelope
        return MailFrom(
            Address(envelope.sender),
            body=envelope.body,
            smtputf8=envelope.smtputf8,
            ret=envelope.ret,
            envid=envelope.envid,
            requiretls=envelope.requireTLS,
        )

    def rcptTo(self) -> list[RcptTo]:
        """
        @return: the RCPT commands for the job's recipients.
        """
        return [RcptTo(Address(r.address), notify=r.notify, orcpt=r.orcpt) for r in self.recipients]

    def open(self):
        """
        @return: the message's data, open from its first octet.
        """
        self.close()
        self._file = self.opener()
        return self._file

    def close(self) -> None:
        """
        Close the message's data, if open.
        """
        if self._file is not None:
            self._file.close()
            self._file = None

    def replies(self, code: int, resp: bytes, addresses, final: Reply | None = None) -> dict[bytes, Reply]:
        """
        The final reply for each recipient, from what C{sentMail} was
        given: a refused RCPT keeps its own reply; the others get the
        message's.

        @param code: the message's reply code, as C{sentMail} has it.
        @param resp: its text.
        @param addresses: C{(address, code, resp)} for each RCPT, in the
            order of L{recipients}; a
            L{RecipientReply <mailproto._client.RecipientReply>} brings
            its reply value.
        @param final: the message's reply value, if known.
        @return: the replies, by address.
        """
        final = final if final is not None and final.code == code else replyFromWire(code, resp)
        out = {}
        for i, recipient in enumerate(self.recipients):
            reply = final
            if i < len(addresses) and not 200 <= addresses[i][1] < 300:
                entry = addresses[i]
                reply = entry.reply if isinstance(entry, RecipientReply) else None
                reply = reply or replyFromWire(entry[1], entry[2])
            out[recipient.address] = reply
        return out


def ownReply(code: int, status: str, text: str) -> Reply:
    """
    A reply the relay makes itself (a connection failed, an address that
    cannot be sent), its text made one line.

    @param code: the reply code.
    @param status: the enhanced status, as C{"4.4.1"}.
    @param text: what happened.
    @return: the reply.
    """
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())[:1000]
    return Reply(code, [text.encode("utf-8", "replace")], status.encode("ascii"))


def wireAddress(raw: bytes) -> Address:
    """
    @return: a queued address as it goes on the wire: the null address,
        or C{local@domain}.
    @raise AddressError: if it does not parse, or has no domain.
    """
    address = Address(raw, defaultDomain=b"")
    if address.local and not address.domain:
        raise AddressError("no domain")
    return address


def senderRefusal(envelope: Envelope) -> Reply | None:
    """
    @return: why no recipient of a queued message can be sent to, because
        its sender (or a MAIL parameter) would not go on the wire; or
        C{None}.
    """
    try:
        formatMailFrom(Job(envelope, [], "").mailFrom())
    except (AddressError, ValueError, TypeError) as e:
        return ownReply(550, "5.1.7", f"The queued sender cannot be sent on: {e}")
    return None


def recipientRefusal(recipient: Recipient) -> Reply | None:
    """
    @return: why a queued recipient cannot be sent to, because its address
        (or a RCPT parameter) would not go on the wire; or C{None}.
    """
    try:
        formatRcptTo(RcptTo(wireAddress(recipient.address), notify=recipient.notify, orcpt=recipient.orcpt))
    except (AddressError, ValueError, TypeError) as e:
        return ownReply(553, "5.1.3", f"The queued recipient address cannot be sent on: {e}")
    return None


def _domainOf(recipient: Recipient) -> str | None:
    try:
        return domainKey(Address(recipient.address).domain) or None
    except AddressError:
        return None


def sortRecipients(envelope: Envelope, smartHost: str | None = None) -> tuple[dict[str, list[Recipient]], dict[bytes, Reply]]:
    """
    Split a message's waiting recipients by destination: their domain
    (L{domainKey}), or C{smartHost}.

    @param smartHost: the destination of every recipient, if mail goes
        through a smart host.
    @return: the recipients by destination, and the relay's own reply
        for each recipient that cannot be sent anywhere: an address that
        would not go on the wire (as one queued before its domain was
        checked), or no domain to deliver to.
    """
    byDestination: dict[str, list[Recipient]] = {}
    refused = {}
    refusedSender = senderRefusal(envelope)
    for recipient in envelope.waiting:
        refusal = refusedSender or recipientRefusal(recipient)
        destination = None
        if refusal is None:
            destination = smartHost or _domainOf(recipient)
            if destination is None:
                refusal = ownReply(550, "5.1.2", "No domain to deliver to")
        if refusal is not None:
            refused[recipient.address] = refusal
        else:
            byDestination.setdefault(destination, []).append(recipient)
    return byDestination, refused
