# -*- test-case-name: mailproto.test.test_queue -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's durable queue: a directory of messages, each with its
envelope, that survives a crash at any moment.

Layout of the spool directory:

  - C{tmp/}: messages being received.  Whatever is here after a crash was
    never acknowledged, and recovery removes it.
  - C{queue/ID}: one message, immutable once committed: its envelope as one
    line of JSON, then the message exactly as received (CRLF line ends).
  - C{queue/ID.state}: the delivery state, rewritten after each attempt:
    per-recipient state and last reply, attempts, next attempt time.
    Replies are kept as values: code, enhanced status and lines of text,
    and the host that sent it (L{STATE_VERSION} 2); a state file of
    version 1, whose replies are one line of text, is still read.
  - C{corrupt/}: queue files that could not be read, set aside (and
    logged) by recovery, never deleted; also state files whose values
    could not be used (L{Envelope.applyState}), their message then
    delivered again to every recipient.

Recovery also removes a message whose state has every recipient done
(delivered or failed and reported), and repairs a state time that is
not a finite number (the message is due at once).

Committing a message (L{SpoolFile.commit}) writes, C{fsync}s, renames the
file into C{queue/} and C{fsync}s that directory; its C{Deferred} fires
only then, so the server says C{250} only for a message that is on disk.
Disk waits run in threads, and commits and state updates from concurrent
sessions share their directory C{fsync} (group commit): one C{fsync} per
message plus one per batch.  Removals (a message delivered, or reported
back to its sender) are not made durable: one undone by a crash only
means the message is sent again.

The spool's files are changed by one process at a time: each change
(recovery, a commit, a state update, a removal) is made under the
spool's lock (L{SpoolLock}, the file C{lock}).  A L{Queue} given a lock
by its owner (a relay holds it from its start to its exit) uses it as
held; a L{Queue} used on its own takes it for the time of each change,
and refuses the change with L{SpoolBusy} while another process, such as
a running relay, holds it.

A relay may receive in worker processes: each writes the messages it
accepts into the same spool (L{mailproto._intakequeue.IntakeQueue}),
under the lock that the relay's parent process holds for them all (a
worker never takes it), and tells the parent each new id; the parent's
L{Queue} takes the message in (L{Queue.adopt}), and delivers it.  A
message whose id never came (a worker that died between its commit and
telling) is found in C{queue/} by L{Queue.adoptNew}.  Recovery, which
empties C{tmp/}, runs before the workers start.

The spool is private whatever the umask: directories are made 0700 and
files 0600 (owner only), and a spool found with looser modes is tightened
when it is opened (logged), so that no other local user can read queued
mail.

Envelopes are JSON, never pickle.  Bytes (addresses, parameters) are
stored as text decoded from UTF-8, with undecodable octets kept by
C{surrogateescape}.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import secrets
import stat
import time
from typing import Callable

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailproto._commands import MailFrom, RcptTo
from mailproto._queuecompat import TwistedMailQueueMixin
from mailproto._replies import Reply, replyFromWire
from mailproto._spoollock import SpoolBusy, SpoolLock

FORMAT_VERSION = 1
"""The version of the queue file's envelope line."""

STATE_VERSION = 2
"""The version of the state file written: 2 keeps replies as values
(L{replyToData}); version 1 (replies as text) is read too.

C{"held"} (L{Envelope.held}) came later within version 2: it is always
written, and read as false when absent, so every state file written
before still reads the same.  The version is not bumped for it: a
relay of a version before would then set every such state aside as
corrupt and send its message again to every recipient, where now it
only ignores the key (and sends a held message: stop such a relay
rather than downgrade with held mail)."""

MAX_ENVELOPE_LINE = 1 << 20
"""The longest envelope line read back; a longer one is corrupt."""

WAITING, DELIVERED, FAILED = "waiting", "delivered", "failed"
"""The states of a recipient: still to be delivered; done; given up on
(permanent failure or expiry, reported to the sender)."""

TRUSTED, CHECKED, UNCHECKED = "trusted", "checked", "unchecked"
"""Where a message came from, as the reports about it care (its
envelope's C{origin}): a client allowed to relay (a relay network, a UNIX
socket, or authenticated); any other client, whose every recipient was
checked against the relay's list of valid recipients at RCPT; any other
client, whose recipients were not checked."""

_log = Logger()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8", "surrogateescape")


def newMessageID(now: float | None = None) -> str:
    """
    @return: a new queue id: the time in milliseconds (hexadecimal, so that
        ids sort by age) and 48 random bits.
    """
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:011x}{secrets.token_hex(6)}"


def _isID(name: str) -> bool:
    return 12 <= len(name) <= 40 and all(c in "0123456789abcdef" for c in name)


@dataclasses.dataclass
class Recipient:
    """
    One recipient of a queued message.

    @ivar address: the address, in wire form.
    @ivar notify: its DSN NOTIFY values, or C{None}.
    @ivar orcpt: its DSN ORCPT C{(type, address)}, or C{None}.
    @ivar state: L{WAITING}, L{DELIVERED} or L{FAILED}.  A recipient
        L{FAILED} with a last reply that is not permanent (or none) has
        expired.
    @ivar lastReply: the last reply about it, or C{None}: a server's, or
        the relay's own (a connection that failed, a domain that does not
        exist).
    @type lastReply: L{Reply} or C{None}
    @ivar lastHost: the host that sent C{lastReply}, or C{None} when the
        relay made it itself.
    """

    address: bytes
    notify: tuple[bytes, ...] | None = None
    orcpt: tuple[bytes, bytes] | None = None
    state: str = WAITING
    lastReply: Reply | None = None
    lastHost: str | None = None

    @property
    def expired(self) -> bool:
        """
        Whether it failed because the message's lifetime ran out, rather
        than by a permanent refusal.
        """
        return self.state == FAILED and (self.lastReply is None or not self.lastReply.isPermanent)


@dataclasses.dataclass
class Envelope:
    """
    A queued message's envelope and delivery state.

    @ivar id: the queue id.
    @ivar sender: the reverse-path, in wire form; C{b""} for the null one.
    @ivar recipients: the recipients, each with its state.
    @ivar received: when the message was accepted (seconds since the
        epoch).
    @ivar size: the message's size in octets (filled in at commit).
    @ivar body: the BODY parameter (C{b"8BITMIME"}, ...), or C{None}.
    @ivar smtputf8: whether MAIL had SMTPUTF8.
    @ivar ret: the DSN RET parameter, or C{None}.
    @ivar envid: the DSN ENVID, or C{None}.
    @ivar client: the client's address, for trace and logs.
    @ivar helo: the client's HELO/EHLO name.
    @ivar user: the user the client authenticated as, if any.
    @ivar attempts: delivery attempts made.
    @ivar nextAttempt: when to try next (seconds since the epoch); C{0} for
        at once.
    @ivar lastReply: the last reply of a delivery attempt (a L{Reply}),
        or C{None}.
    @ivar warned: whether the sender was told that delivery is delayed.
    @ivar origin: where the message came from: L{TRUSTED}, L{CHECKED} or
        L{UNCHECKED}; C{None} if not known (queued by a version before
        this field, or by code that does not say).  Written in the queue
        file only when known, so that older versions read it too.
    @ivar held: whether an operator put the message on hold (C{mailproto
        queue hold}): it is never attempted until released, and its
        lifetime does not run out meanwhile (it is only checked at an
        attempt).
    @ivar requireTLS: whether MAIL had REQUIRETLS (RFC 8689): the message
        may only go on over TLS with a validated certificate, to a server
        that offers REQUIRETLS.  Written in the queue file only when true.
    @ivar prefix: header fields made at intake once the data was in, sent
        before the message's data (a C{DKIM-Signature}); kept in the state
        file, written with the message at commit.
    @ivar tlsOptional: whether the message asked, with C{TLS-Required:
        No} (RFC 8689), that the relay's TLS policies (MTA-STS,
        DANE) be ignored for it; kept in the state file.
    """

    id: str
    sender: bytes
    recipients: list[Recipient]
    received: float = 0.0
    size: int = 0
    body: bytes | None = None
    smtputf8: bool = False
    ret: bytes | None = None
    envid: bytes | None = None
    client: str | None = None
    helo: str | None = None
    user: str | None = None
    attempts: int = 0
    nextAttempt: float = 0.0
    lastReply: Reply | None = None
    warned: bool = False
    origin: str | None = None
    held: bool = False
    requireTLS: bool = False
    prefix: bytes = b""
    tlsOptional: bool = False

    @classmethod
    def fromCommands(cls, queueID: str, mail: MailFrom, rcpts: list[RcptTo], received: float, **kw) -> Envelope:
        """
        Make the envelope of a message received with these commands: its
        sender and MAIL parameters, and its recipients with their DSN
        parameters.  It has L{requireTLS} if MAIL had REQUIRETLS, or if
        C{kw} says so (a C{requireTLS} there adds it, never takes it away).
        """
        kw["requireTLS"] = bool(kw.get("requireTLS")) or mail.requiretls
        return cls(
            id=queueID,
            sender=bytes(mail.address),
            recipients=[Recipient(bytes(r.address), r.notify, r.orcpt) for r in rcpts],
            received=received,
            body=mail.body,
            smtputf8=mail.smtputf8,
            ret=mail.ret,
            envid=mail.envid,
            **kw,
        )

    @property
    def waiting(self) -> list[Recipient]:
        """
        The recipients still to be delivered.
        """
        return [r for r in self.recipients if r.state == WAITING]

    def header(self) -> dict:
        """
        @return: the immutable part, as written in the queue file.
        """
        header = {
            "version": FORMAT_VERSION,
            "id": self.id,
            "sender": _text(self.sender),
            "recipients": [
                {
                    "address": _text(r.address),
                    "notify": None if r.notify is None else [_text(n) for n in r.notify],
                    "orcpt": None if r.orcpt is None else [_text(p) for p in r.orcpt],
                }
                for r in self.recipients
            ],
            "received": self.received,
            "body": _text(self.body),
            "smtputf8": self.smtputf8,
            "ret": _text(self.ret),
            "envid": _text(self.envid),
            "client": self.client,
            "helo": self.helo,
            "user": self.user,
        }
        if self.origin is not None:
            header["origin"] = self.origin
        if self.requireTLS:
            header["requiretls"] = True
        return header

    def state(self) -> dict:
        """
        @return: the mutable part, as written in the state file.
        """
        state = {
            "version": STATE_VERSION,
            "size": self.size,
            "attempts": self.attempts,
            "nextAttempt": self.nextAttempt,
            "lastReply": replyToData(self.lastReply),
            "warned": self.warned,
            "held": self.held,
            "recipients": [{"state": r.state, "lastReply": replyToData(r.lastReply), "lastHost": r.lastHost} for r in self.recipients],
        }
        # Written only when set, so that a version before these fields
        # reads the file too.
        if self.prefix:
            state["prefix"] = _text(self.prefix)
        if self.tlsOptional:
            state["tlsOptional"] = True
        return state

    @property
    def stateAtCommit(self) -> bool:
        """
        Whether the state file must be written with the message at commit:
        intake made a part of it (L{prefix}, L{tlsOptional}).
        """
        return bool(self.prefix) or self.tlsOptional

    @classmethod
    def fromHeader(cls, header: dict) -> Envelope:
        """
        @raise ValueError: if C{header} is not a valid envelope.
        """
        try:
            if header.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown envelope version {header.get('version')!r}")
            if not _isID(header["id"]):
                raise ValueError(f"bad queue id {header['id']!r}")
            recipients = [
                Recipient(
                    _bytes(r["address"]),
                    None if r.get("notify") is None else tuple(_bytes(n) for n in r["notify"]),
                    None if r.get("orcpt") is None else tuple(_bytes(p) for p in r["orcpt"]),
                )
                for r in header["recipients"]
            ]
            if not recipients or any(not r.address for r in recipients):
                raise ValueError("no recipients")
            origin = header.get("origin")
            if origin not in (None, TRUSTED, CHECKED, UNCHECKED):
                raise ValueError(f"unknown origin {origin!r}")
            return cls(
                id=header["id"],
                sender=_bytes(header["sender"]),
                recipients=recipients,
                received=_finiteTime(header["received"]),
                body=_bytes(header.get("body")),
                smtputf8=bool(header.get("smtputf8")),
                ret=_bytes(header.get("ret")),
                envid=_bytes(header.get("envid")),
                client=header.get("client"),
                helo=header.get("helo"),
                user=header.get("user"),
                origin=origin,
                requireTLS=_check(header.get("requiretls", False), bool, "requiretls"),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed envelope: {e!r}") from None

    def applyState(self, state: dict) -> list[str]:
        """
        Take the delivery state written by L{state}, checked first: the
        envelope is changed only if all of it is valid.  A time that is
        not a finite number (NaN, infinity) is repaired: the message is
        due at once.

        @return: what was repaired, in words (empty if nothing).
        @raise ValueError: if C{state} does not fit this envelope, or has
            a value of the wrong type, a negative count or an unknown
            recipient state.
        """
        version = state.get("version") if isinstance(state, dict) else None
        if version not in (1, STATE_VERSION):
            raise ValueError("state does not match the envelope")
        saved = state.get("recipients")
        if not isinstance(saved, list) or len(saved) != len(self.recipients):
            raise ValueError("state does not match the envelope")
        replies = []
        for entry in saved:
            if not isinstance(entry, dict) or entry.get("state") not in (WAITING, DELIVERED, FAILED):
                raise ValueError(f"unknown recipient state {entry.get('state') if isinstance(entry, dict) else entry!r}")
            if version == 1:
                text = _check(entry.get("lastReply"), (str, type(None)), "a recipient's lastReply")
                replies.append((_replyFromText(text, entry["state"]), None))
            else:
                host = _check(entry.get("lastHost"), (str, type(None)), "a recipient's lastHost")
                replies.append((replyFromData(entry.get("lastReply"), "a recipient's lastReply"), host))
        size = _check(state.get("size"), int, "size")
        attempts = _check(state.get("attempts"), int, "attempts")
        if size < 0 or attempts < 0:
            raise ValueError(f"negative size or attempts ({size}, {attempts})")
        nextAttempt = _check(state.get("nextAttempt"), (int, float), "nextAttempt")
        repaired = []
        if not math.isfinite(nextAttempt):
            repaired.append(f"nextAttempt {nextAttempt!r} made now")
            nextAttempt = 0.0
        if version == 1:
            lastReply = _replyFromText(_check(state.get("lastReply"), (str, type(None)), "lastReply"), WAITING)
        else:
            lastReply = replyFromData(state.get("lastReply"), "lastReply")
        self.lastReply = lastReply
        held = _check(state.get("held", False), bool, "held")
        prefix = _check(state.get("prefix", ""), str, "prefix")
        self.tlsOptional = _check(state.get("tlsOptional", False), bool, "tlsOptional")
        self.prefix = _bytes(prefix) or b""
        self.warned = _check(state.get("warned", False), bool, "warned")
        self.held = held
        self.size, self.attempts, self.nextAttempt = size, attempts, float(nextAttempt)
        for recipient, entry, (reply, host) in zip(self.recipients, saved, replies):
            recipient.state = entry["state"]
            recipient.lastReply, recipient.lastHost = reply, host
        return repaired


def replyToData(reply: Reply | None) -> dict | None:
    """
    @return: a reply as the state file keeps it: C{{"code": 550,
        "status": "5.1.1", "lines": ["No such user"]}}, or C{None}.
    """
    if reply is None:
        return None
    return {"code": reply.code, "status": _text(reply.status), "lines": [_text(line) for line in reply.lines]}


def replyFromData(data, what: str = "reply") -> Reply | None:
    """
    The reply L{replyToData} wrote.

    @raise ValueError: if C{data} is not one.
    """
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{what} is {type(data).__name__} {data!r:.40}")
    code = _check(data.get("code"), int, f"{what}'s code")
    status = _check(data.get("status"), (str, type(None)), f"{what}'s status")
    lines = _check(data.get("lines"), list, f"{what}'s lines")
    return Reply(code, [_bytes(_check(line, str, f"{what}'s line")) for line in lines], _bytes(status))


_TEXT_CODES = {WAITING: 451, DELIVERED: 250, FAILED: 554}


def _replyFromText(text: str | None, state: str) -> Reply | None:
    """
    A reply as a version 1 state file kept it, C{"550 5.1.1 No such
    user"}, made a value by the same parser as replies from the wire.  An
    expiry (C{"4.4.7 Message expired ...; last: 451 ..."}) keeps the last
    reply it quotes (L{Recipient.expired} says the rest); text that is not
    a reply keeps a code that fits C{state}.
    """
    if text is None:
        return None
    if text.startswith("4.4.7 ") and "; last: " in text:
        text = text.split("; last: ", 1)[1]
        if text == "no answer":
            return None
    line = text.encode("utf-8", "surrogateescape")
    code, space, rest = line.partition(b" ")
    if space and code.isdigit() and 200 <= int(code) <= 599:
        return replyFromWire(int(code), rest)
    return Reply.fromText(_TEXT_CODES[state], line)


def _check(value, types, what: str):
    """
    @return: C{value}, if it is of C{types} (a C{bool} is not an C{int}
        here).
    @raise ValueError: if not.
    """
    if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
        raise ValueError(f"{what} is {type(value).__name__} {value!r:.40}")
    return value


def _finiteTime(value) -> float:
    """
    @raise ValueError: unless C{value} is a finite number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"bad time {value!r:.40}")
    return float(value)


def openQueueFile(path: str):
    """
    @return: the message of queue file C{path}, open for reading at its
        first octet (after the envelope line).
    """
    f = open(path, "rb")
    try:
        f.readline(MAX_ENVELOPE_LINE)
    except BaseException:
        f.close()
        raise
    return f


def envelopeFromLine(line: bytes) -> Envelope:
    """
    @param line: a queue file's first line, its end of line included.
    @return: the envelope it holds (its C{size} not set).
    @raise ValueError: if it is not a whole, valid envelope line.
    """
    if not line.endswith(b"\n"):
        raise ValueError("no envelope line")
    try:
        return Envelope.fromHeader(json.loads(line))
    except RecursionError as e:
        raise ValueError(str(e) or type(e).__name__) from None


def stateData(state: dict) -> bytes:
    """
    @return: a state file's content, for C{state} (L{Envelope.state}).
    """
    return json.dumps(state, separators=(",", ":")).encode("ascii")


def applyStateData(envelope: Envelope, data: bytes) -> list:
    """
    Apply a state file's content to C{envelope} (L{Envelope.applyState}).

    @return: what was wrong, as L{readQueueFile} reports it: C{("corrupt",
        why)} if the state could not be used (the envelope is unchanged),
        or C{("repaired", what)} for each value repaired.
    """
    try:
        return [("repaired", what) for what in envelope.applyState(json.loads(data))]
    except (ValueError, RecursionError) as e:
        return [("corrupt", str(e) or type(e).__name__)]


def readQueueFile(path: str, problems: list | None = None) -> Envelope:
    """
    Read a queued message's envelope, and its delivery state if it has
    one, from its queue file.

    A state file that cannot be read, or holds values that cannot be
    (L{Envelope.applyState}), loses only the message's progress: it is
    delivered again to everyone (duplicates rather than a loss).

    @param path: the queue file (C{queue/ID} in the spool directory).
    @param problems: if given, what was wrong with the state file is
        appended to it: C{("corrupt", why)} for a state left unused,
        C{("repaired", what)} for a value repaired; if C{None}, each is
        logged.
    @return: the envelope, with the message's size.
    @raise OSError: if the file cannot be read.
    @raise ValueError: if its envelope is not valid.
    """
    with open(path, "rb") as f:
        line = f.readline(MAX_ENVELOPE_LINE)
        envelope = envelopeFromLine(line)
        f.seek(0, os.SEEK_END)
        envelope.size = f.tell() - len(line)
    found = []
    try:
        with open(path + ".state", "rb") as f:
            found = applyStateData(envelope, f.read())
    except FileNotFoundError:
        pass
    except OSError as e:
        found = [("corrupt", str(e) or type(e).__name__)]
    if problems is not None:
        problems.extend(found)
        return envelope
    for kind, what in found:
        _log.warn("Queue message {queueID}: state {kind} ({what})", queueID=envelope.id, kind=kind, what=what)
    return envelope


class _GroupCommitter:
    """
    Runs batches of disk work in a thread, one batch at a time: work
    submitted while a batch runs goes into the next one, so that
    concurrent sessions share the directory C{fsync} that ends a batch.
    """

    def __init__(self, runBatch: Callable[[list], defer.Deferred]) -> None:
        self._runBatch = runBatch
        self._pending: list = []
        self._running = False

    def submit(self, item) -> defer.Deferred:
        d = defer.Deferred()
        self._pending.append((item, d))
        if not self._running:
            self._flush()
        return d

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._running = True
        result = self._runBatch([item for item, _ in batch])

        def done(outcomes) -> None:
            self._running = False
            if isinstance(outcomes, Failure):
                outcomes = [outcomes] * len(batch)
            for (_, d), outcome in zip(batch, outcomes):
                if isinstance(outcome, (BaseException, Failure)):
                    d.errback(outcome)
                else:
                    d.callback(outcome)
            if self._pending:
                self._flush()

        result.addBoth(done)


class QueueView:
    """
    What every queue keeps in memory, whatever its storage: the envelopes
    of the queued messages, which of them are being relayed, and who
    listens for new ones.  L{Queue} (a spool directory) and
    L{mailproto.testing.MemoryQueue} build on it.

    @ivar listeners: callables given each L{Envelope} once its message is
        committed (the relaying manager listens, to send it at once).
    """

    def __init__(self) -> None:
        self._envelopes: dict[str, Envelope] = {}
        self._relaying: set[str] = set()
        self.listeners: list[Callable[[Envelope], object]] = []

    def _added(self, envelope: Envelope) -> Envelope:
        self._envelopes[envelope.id] = envelope
        for listener in list(self.listeners):
            try:
                listener(envelope)
            except Exception:
                _log.failure("Queue listener failed for {queueID}", queueID=envelope.id)
        return envelope

    def _forget(self, queueID: str) -> None:
        self._envelopes.pop(queueID, None)
        self._relaying.discard(queueID)

    # -- reading ----------------------------------------------------------------

    def getEnvelope(self, queueID: str) -> Envelope:
        """
        @raise KeyError: if there is no such message.
        """
        return self._envelopes[queueID]

    def ids(self) -> list[str]:
        """
        @return: the ids of every queued message, oldest first.
        """
        return sorted(self._envelopes)

    def due(self, now: float) -> list[Envelope]:
        """
        @return: the waiting (not relaying, not held) messages whose next
            attempt is due at C{now}, oldest first.
        """
        return [
            e
            for queueID, e in sorted(self._envelopes.items())
            if queueID not in self._relaying and e.nextAttempt <= now and e.waiting and not e.held
        ]

    # -- twisted.mail's view ----------------------------------------------------

    def getWaiting(self) -> list[str]:
        return [queueID for queueID in sorted(self._envelopes) if queueID not in self._relaying]

    def hasWaiting(self) -> bool:
        return len(self._relaying) < len(self._envelopes)

    def getRelayed(self) -> list[str]:
        return sorted(self._relaying)

    def setRelaying(self, queueID: str) -> None:
        if queueID not in self._envelopes:
            raise KeyError(queueID)
        self._relaying.add(queueID)

    def setWaiting(self, queueID: str) -> None:
        self._relaying.discard(queueID)

    def done(self, queueID: str) -> defer.Deferred:
        return self.remove(queueID)


class SpoolFile:
    """
    A message being written into the queue.  Write its data with
    L{write}; then L{commit} it (durable when the C{Deferred} fires) or
    L{abort} it.

    The first L{SPILL} octets are kept in memory, so that a small
    message's file is made, written and synced by the disk thread at
    commit, never by the reactor; a larger message spills into its file
    in C{tmp/} as it arrives, so memory stays bounded.
    """

    SPILL = 256 * 1024

    def __init__(self, queue: SpoolWriter, envelope: Envelope, path: str, header: bytes) -> None:
        self.queue = queue
        self.envelope = envelope
        self.path = path
        self._file = None
        self._header = header
        self._buffer = [header]
        self._buffered = len(header)
        self._headerLength = len(header)
        self._size = 0
        self._closed = False
        self._message: bytes | None = None
        self._state: dict | None = None
        self._release: Callable[[], None] | None = None

    def write(self, data: bytes) -> None:
        """
        Add octets to the message.

        @raise SpoolBusy: if the message spills into its file while another
            process holds the spool (a queue used on its own).
        """
        self._size += len(data)
        if self._file is None:
            if self._buffered + len(data) <= self.SPILL:
                self._buffer.append(bytes(data))
                self._buffered += len(data)
                return
            self._holdSpool()
            try:
                self._file = createPrivate(self.path)
                self._file.writelines(self._buffer)
            except BaseException:
                self._discard()
                self._releaseSpool()
                raise
            self._buffer = []
        self._file.write(data)

    def _holdSpool(self) -> None:
        """
        Hold the spool until the message is in the queue or thrown away.

        @raise SpoolBusy: if another process holds it.
        """
        if self._release is None:
            self._release = self.queue._holdSpool()

    def _releaseSpool(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    @property
    def size(self) -> int:
        """
        The octets of message written so far.
        """
        return self._size

    def commit(self) -> defer.Deferred:
        """
        Make the message durable and put it in the queue.

        @return: a C{Deferred} firing with the L{Envelope} once the
            message is on disk; failing (and the message thrown away) if
            it could not be written, or with L{SpoolBusy} if another
            process holds the spool (a queue used on its own).
        """
        self.envelope.size = self.size
        self._closed = True
        try:
            self._holdSpool()
        except SpoolBusy:
            self._discard()
            return defer.fail()
        # Taken now, in the reactor thread, as for every state write.
        self._state = self.envelope.state() if self.envelope.stateAtCommit else None
        return self.queue._commit(self)

    def _discard(self) -> None:
        self._buffer = []
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
                _unlink(self.path)

    def abort(self) -> None:
        """
        Throw the message away.
        """
        if self._closed:
            return
        self._closed = True
        self._discard()
        self._releaseSpool()

    def _writeOut(self) -> None:
        """
        In the disk thread: the whole message in its file in C{tmp/},
        handed to the operating system (not yet synced).
        """
        try:
            if self._file is None:
                self._file = createPrivate(self.path)
                self._file.writelines(self._buffer)
                self._message = b"".join(self._buffer[1:])
                self._buffer = []
            self._file.flush()
        except BaseException:
            self._discard()
            raise

    def _sync(self, fsync) -> None:
        """
        In the disk thread, after L{_writeOut}: sync the file and close it.
        """
        try:
            fsync(self._file.fileno())
        except BaseException:
            self._discard()
            raise
        self._file.close()
        self._file = None


PRIVATE_DIRECTORY, PRIVATE_FILE = 0o700, 0o600
"""The modes of the spool's directories and files: the owner's only."""


def makePrivate(directory: str) -> None:
    """
    Make a spool directory and its C{tmp/}, C{queue/} and C{corrupt/}, each
    owner-only, or tighten them if they are looser (logged).

    @param directory: the spool.
    @raise OSError: if they cannot be made.
    """
    tightened = []
    for path in (directory, *(os.path.join(directory, name) for name in ("tmp", "queue", "corrupt"))):
        os.makedirs(path, mode=PRIVATE_DIRECTORY, exist_ok=True)
        mode = os.stat(path).st_mode & 0o777
        if mode != PRIVATE_DIRECTORY:
            os.chmod(path, PRIVATE_DIRECTORY)
            if mode & 0o077:
                tightened.append(f"{path} {mode:04o}")
    if tightened:
        _log.warn("Spool made private (mode 0700): {tightened}", tightened=", ".join(tightened))


def createPrivate(path: str, exclusive: bool = True):
    """
    @return: C{path}, made owner-only (0600) whatever the umask, open for
        writing in binary mode.
    @param exclusive: whether it must not exist yet; else it is truncated.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        if not exclusive:
            os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _after(result, call: Callable[[], None]):
    """
    Call C{call}, then pass C{result} on (a C{Deferred}'s callback and
    errback both).
    """
    call()
    return result


def _nothing() -> None:
    pass


class SpoolWriter:
    """
    Writes messages into a spool directory, durably: each commit
    (L{SpoolFile.commit}) and each write of a delivery state is disk work
    done in a thread, and the work submitted while a batch runs shares the
    next batch and its directory C{fsync} (group commit).

    L{Queue} is one, with the index of the queued messages, recovery and
    delivery; L{mailproto._intakequeue.IntakeQueue}, what a relay's worker
    process writes accepted messages with, is another that only writes.

    @ivar directory: the spool directory.
    @ivar lock: the spool's lock every change of the files is made under
        (a L{SpoolLock}, or an object with its C{held}, C{acquire} and
        C{release}).
    @ivar fsyncs: how many C{fsync} calls were made (files and
        directories), for measurements.
    @ivar unfinishedSuffix: what ends the names of this writer's messages
        while they are received in C{tmp/} (a worker's own, so that what a
        dead worker left can be told apart: L{Queue.removeUnfinished}).
    """

    unfinishedSuffix = ""

    def __init__(self, directory: str, reactor, runInThread, lock) -> None:
        """
        @param directory: the spool directory, with its C{tmp/} and
            C{queue/}.
        @param reactor: the reactor whose thread pool does the disk work;
            the global one if C{None}.
        @param runInThread: a callable C{(f, *args) -> Deferred} running
            C{f} off the reactor thread; by default the reactor's thread
            pool.
        @param lock: the spool's lock.
        """
        self.directory = directory
        self.fsyncs = 0
        self._reactor = reactor
        self._runInThread = runInThread
        self._committer = _GroupCommitter(self._runBatch)
        self.lock = lock
        self._holds = 0

    # -- paths --------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def getPath(self, queueID: str) -> str:
        """
        @return: the path of the queued message's file.
        """
        return self._path("queue", queueID)

    # -- the spool's lock ------------------------------------------------------

    def _holdSpool(self) -> Callable[[], None]:
        """
        Make sure the spool's lock is held for a change of its files: held
        by the queue's owner already, or taken now for the change (and
        shared by the changes that overlap it).

        @return: what to call, once, when the change is done.
        @raise SpoolBusy: if another process holds the lock.
        """
        if not self._holds:
            if self.lock.held:
                return _nothing
            self.lock.acquire()
        self._holds += 1
        released = []

        def release() -> None:
            if released:
                return
            released.append(True)
            self._holds -= 1
            if not self._holds:
                self.lock.release()

        return release

    def _submit(self, item, release: Callable[[], None]) -> defer.Deferred:
        """
        Give C{item} to the disk thread, with the spool held until it is
        done (C{release} is called then).
        """
        return self._committer.submit(item).addBoth(_after, release)

    # -- writing --------------------------------------------------------------

    def newMessage(self, envelope: Envelope) -> SpoolFile:
        """
        Start writing a message.

        @param envelope: its envelope (its C{id} names the file).
        @return: the file to write the message into.
        """
        header = json.dumps(envelope.header(), ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
        return SpoolFile(self, envelope, self._path("tmp", envelope.id + self.unfinishedSuffix), header)

    def _commit(self, spool: SpoolFile) -> defer.Deferred:
        """
        Give C{spool}'s commit to the disk thread; the spool is held (by
        L{SpoolFile.commit}) until it is done.

        @return: a C{Deferred} firing with what L{_committed} makes of it.
        """
        d = self._committer.submit(("commit", spool))
        d.addBoth(_after, spool._releaseSpool)
        d.addCallback(lambda _: self._committed(spool))
        return d

    def _committed(self, spool: SpoolFile):
        """
        In the reactor thread, once C{spool}'s message is durable in
        C{queue/}.

        @return: its L{Envelope}, or a C{Deferred} firing with it.
        """
        return spool.envelope

    # -- disk work, in a thread -----------------------------------------------

    def _runBatch(self, items: list) -> defer.Deferred:
        if self._runInThread is not None:
            return self._runInThread(self._doBatch, items)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), self._doBatch, items)

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.fsyncs += 1

    def _doBatch(self, items: list) -> list:
        """
        In a thread: do each item's disk work, then one C{fsync} of the
        queue directory for all of them (none for a batch of removals
        only).
        """
        outcomes: list = [None] * len(items)
        # New messages are written out first and synced after: the first
        # sync usually takes the others' data to the disk with it (ext4 and
        # XFS commit a journal transaction at a time), so theirs are quick.
        written = []
        for i, (kind, item) in enumerate(items):
            try:
                if kind == "commit":
                    item._writeOut()
                    if item._state is not None:
                        # Before the message is in queue/: a crash in
                        # between leaves a state without its message,
                        # which recovery removes.
                        self._writeState((item.envelope.id, item._state))
                    written.append(i)
                elif kind == "state":
                    self._writeState(item)
                else:
                    for suffix in (".state", ""):
                        _unlink(self.getPath(item) + suffix)
            except BaseException as e:
                outcomes[i] = e
        for i in written:
            spool = items[i][1]
            try:
                spool._sync(self._fsync)
                os.replace(spool.path, self.getPath(spool.envelope.id))
            except BaseException as e:
                outcomes[i] = e
        # A removal needs no fsync of its own: if a crash undoes it, the
        # message is sent again (a duplicate), never lost.
        if any(outcome is None and kind != "remove" for (kind, _), outcome in zip(items, outcomes)):
            try:
                fd = os.open(self._path("queue"), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                try:
                    self._fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                outcomes = [outcome if outcome is not None else e for outcome in outcomes]
        return outcomes

    def _writeState(self, item: tuple[str, dict]) -> None:
        queueID, state = item
        path = self.getPath(queueID) + ".state"
        temporary = path + ".tmp"
        with createPrivate(temporary, exclusive=False) as f:
            f.write(stateData(state))
            f.flush()
            self._fsync(f.fileno())
        os.replace(temporary, path)


class Queue(TwistedMailQueueMixin, QueueView, SpoolWriter):
    """
    A durable queue of messages in a spool directory (see the module
    docstring for the layout).

    Also keeps twisted.mail's view of the queue: each message is I{waiting}
    or I{relaying} (L{getWaiting <QueueView.getWaiting>},
    L{getRelayed <QueueView.getRelayed>}, L{setRelaying <QueueView.setRelaying>},
    L{setWaiting <QueueView.setWaiting>}, L{done <QueueView.done>}).

    Messages that other processes commit into its C{queue/} (a relay's
    workers, with L{mailproto._intakequeue.IntakeQueue}) join it by
    L{adopt} (told their id) or L{adoptNew} (found by a scan); a message
    given up to another relay's spool (C{mailproto queue move}) leaves it
    by L{disown}.

    @ivar directory: the spool directory.
    @ivar lock: the spool's lock (L{SpoolLock}) every change of the files
        is made under: the one given by the queue's owner, or the queue's
        own.
    @ivar fsyncs: how many C{fsync} calls were made (files and
        directories), for measurements.
    @cvar cacheLimit: how many octets of small messages (those that fit in
        memory while they were received) are kept in memory while they
        are queued, so that sending them needs no read of the disk.
    """

    cacheLimit = 32 * 1024 * 1024

    def __init__(self, directory: str, reactor=None, runInThread=None, lock: SpoolLock | None = None) -> None:
        """
        @param directory: the spool directory; made if missing.
        @param reactor: the reactor whose thread pool does the disk work;
            the global one if C{None}.
        @param runInThread: a callable C{(f, *args) -> Deferred} running
            C{f} off the reactor thread; by default the reactor's thread
            pool.
        @param lock: the spool's lock, for a queue whose owner holds it
            for the queue's whole use (a relay, from its start to its
            exit; C{mailproto queue} while it changes the files): while it
            is held, the queue changes the files without asking again.
            If C{None} (a queue used on its own, as in a script), the
            queue takes the spool's lock for the time of each change
            (L{recover}, a commit, L{update}, L{remove}, L{adopt}), and
            the change fails with L{SpoolBusy} while another process holds
            it.
        """
        QueueView.__init__(self)
        self._cache: dict[str, bytes] = {}
        self._cached = 0
        # Messages of this queue's own commits, from their submission to
        # their announcement (in queue/ before they are in the index), and
        # ids removed from the index whose files may still be there:
        # neither is taken for another process's by adoptNew.
        self._committing: dict[str, SpoolFile] = {}
        self._removing: set[str] = set()
        # Ids given up to another spool (disown), whose files another
        # process takes: adoptNew leaves them alone.
        self._disowned: set[str] = set()
        makePrivate(directory)
        SpoolWriter.__init__(self, directory, reactor, runInThread, SpoolLock(directory) if lock is None else lock)

    # -- recovery -----------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """
        Read the spool after a start or a crash: remove what was never
        acknowledged, set aside what cannot be read, and load every queued
        message.  Run it before serving; it reads and writes the disk
        directly, holding the spool's lock.

        @return: counts: C{queued}; C{removed}, the unfinished messages
            removed from C{tmp/}; C{corrupt}, the files set aside (queue
            files, and state files that could not be used).  A message
            whose every recipient is done is removed and logged, not
            counted.
        @raise SpoolBusy: if another process holds the spool (a running
            relay: change its queue with C{mailproto queue}); no file is
            touched then.
        """
        release = self._holdSpool()
        try:
            return self._recover()
        finally:
            release()

    def _recover(self) -> dict[str, int]:
        counts = {"queued": 0, "removed": 0, "corrupt": 0}
        for name in os.listdir(self._path("tmp")):
            _unlink(self._path("tmp", name))
            counts["removed"] += 1
        names = set(os.listdir(self._path("queue")))
        self._envelopes = {}
        self._relaying = set()
        self._disowned = set()
        self._cache, self._cached = {}, 0
        self._tightenFiles(names)
        for name in sorted(names):
            path = self._path("queue", name)
            if name.endswith(".state.tmp"):
                _unlink(path)
                continue
            if name.endswith(".state"):
                if name[: -len(".state")] not in names:
                    _unlink(path)
                continue
            if not _isID(name):
                self._setAside(name, "not a queue file name")
                counts["corrupt"] += 1
                continue
            problems: list = []
            try:
                envelope = self._readEnvelope(name, problems)
            except (OSError, ValueError, RecursionError) as e:
                self._setAside(name, str(e))
                counts["corrupt"] += 1
                continue
            counts["corrupt"] += self._stateProblems(name, problems)
            if not envelope.waiting:
                # Its reports were queued before this state was written.
                _log.info("Queue message {queueID}: every recipient done; removed", queueID=name)
                for suffix in (".state", ""):
                    _unlink(self._path("queue", name + suffix))
                continue
            self._envelopes[name] = envelope
            counts["queued"] += 1
        _log.info(
            "Queue {directory}: {queued} queued, {removed} unfinished removed, {corrupt} set aside",
            directory=self.directory,
            **counts,
        )
        return counts

    readDirectory = recover

    def _tightenFiles(self, names) -> None:
        """
        Make the queue's files owner-only if some are not (a spool from an
        older version, or copied in by hand); logged once.
        """
        tightened = 0
        for name in names:
            path = self._path("queue", name)
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode) and mode & 0o077:
                    os.chmod(path, PRIVATE_FILE)
                    tightened += 1
            except OSError:
                continue
        if tightened:
            _log.warn("Spool {spool}: {count} queue files made private (mode 0600)", spool=self.directory, count=tightened)

    def _readEnvelope(self, queueID: str, problems: list | None = None) -> Envelope:
        envelope = readQueueFile(self.getPath(queueID), problems)
        if envelope.id != queueID:
            raise ValueError(f"envelope id {envelope.id!r} in file {queueID!r}")
        return envelope

    def _stateProblems(self, name: str, problems: list) -> int:
        """
        Act on what L{readQueueFile} found wrong with a message's state
        file, with one log line: a repaired value is only logged (the
        repair is written with the next state); a state that could not be
        used is set aside in C{corrupt/}, and the message starts over.

        @return: how many files were set aside (0 or 1).
        """
        corrupt = [what for kind, what in problems if kind == "corrupt"]
        if corrupt:
            _log.error(
                "Queue message {queueID}: state set aside in corrupt/ ({why}); delivering to every recipient again",
                queueID=name,
                why=corrupt[0],
            )
            source = self._path("queue", name + ".state")
            if os.path.exists(source):
                os.replace(source, self._path("corrupt", name + ".state"))
                return 1
            return 0
        if problems:
            _log.warn("Queue message {queueID}: state repaired ({what})", queueID=name, what="; ".join(w for _, w in problems))
        return 0

    def _setAside(self, name: str, why: str) -> None:
        _log.error("Queue file {name} set aside in corrupt/: {why}", name=name, why=why)
        for suffix in ("", ".state"):
            source = self._path("queue", name + suffix)
            if os.path.exists(source):
                os.replace(source, self._path("corrupt", name + suffix))

    # -- messages committed by other processes ----------------------------------

    def adopt(self, queueID: str, copy: bytes | None = None, state: bytes | None = None) -> Envelope:
        """
        Take into the queue a message that another process (a relay's
        worker) committed into C{queue/}: read its envelope line and its
        state file if it has one (L{Envelope.stateAtCommit}), add it to
        the index and announce it to the L{listeners} as a message
        committed by this queue is announced, so that the relaying
        manager schedules it at once.

        The process that committed it may give a copy of what it wrote
        (C{copy}, and C{state}): then nothing is read from the disk, and
        a small message is sent on from memory, as this queue's own are
        (L{cacheLimit}).  A copy that cannot be used (not a valid
        envelope, another id, a state that does not fit) is ignored, and
        the files are read instead.

        It runs in the reactor thread: the file was just written and is in
        the page cache, and reading its envelope line (and looking for a
        state file) takes a few tens of microseconds, less than a hop to
        the disk thread and back; done at once, an adoption is also never
        in flight, so that two of the same id (told by a worker, and found
        by L{adoptNew}) cannot both announce it.

        @param queueID: the message's queue id.
        @param copy: the content of its file in C{queue/} (envelope line
            and message), or C{None}.
        @param state: with C{copy}, the content of its state file if it
            has one, else C{None}.
        @return: its envelope; if the queue knows the id already, the
            envelope it has (adopting again changes nothing).
        @raise KeyError: if there is no such message: no file of that name
            in C{queue/} (never committed, or delivered and removed), a
            name that is not a queue id, or a message whose every
            recipient is done (removed, as L{recover} does).
        @raise ValueError: if its file cannot be read or its envelope is
            not valid: the file is set aside in C{corrupt/} (logged), as
            L{recover} does.
        @raise SpoolBusy: if another process holds the spool (a queue used
            on its own); nothing is read then.
        """
        # Told explicitly: a message given up before is taken back.
        self._disowned.discard(queueID)
        known = self._known(queueID)
        if known is not None:
            return known
        release = self._holdSpool()
        try:
            if copy is not None:
                envelope = self._fromCopy(queueID, copy, state)
                if envelope is not None:
                    return envelope
            return self._adopt(queueID)
        finally:
            release()

    def _fromCopy(self, queueID: str, copy: bytes, state: bytes | None) -> Envelope | None:
        """
        Adopt a message from the copy its writer gave; the spool is held.

        @return: its envelope, or C{None} if the copy cannot be used.
        """
        line, newline, message = copy.partition(b"\n")
        try:
            envelope = envelopeFromLine(line + newline)
        except ValueError:
            return None
        if envelope.id != queueID:
            return None
        envelope.size = len(message)
        if state is not None and applyStateData(envelope, state):
            return None
        if not envelope.waiting:
            return None
        self._cacheMessage(queueID, message)
        return self._added(envelope)

    def removeUnfinished(self, suffix: str) -> int:
        """
        Remove the messages a writer that has gone (a worker process that
        died) left unfinished in C{tmp/}: those whose names end with its
        C{unfinishedSuffix}.  None of them was acknowledged: a message is
        renamed into C{queue/} before its C{250}.

        @param suffix: the writer's C{unfinishedSuffix}, not empty.
        @return: how many were removed.
        @raise ValueError: if C{suffix} is empty (that would be everything).
        @raise OSError: if C{tmp/} cannot be listed.
        """
        if not suffix:
            raise ValueError("an empty suffix names every unfinished message")
        removed = 0
        release = self._holdSpool()
        try:
            for name in os.listdir(self._path("tmp")):
                if name.endswith(suffix):
                    _unlink(self._path("tmp", name))
                    removed += 1
        finally:
            release()
        return removed

    def adoptNew(self) -> list[str]:
        """
        Adopt (L{adopt}) every message in C{queue/} that the queue does not
        know: those committed by a worker that died before it could tell,
        or whose telling was lost.  Only C{queue/} is read: commits rename
        complete files into it, and the files in C{tmp/} are messages that
        live workers are still receiving, never touched here.  A file that
        cannot be read is set aside in C{corrupt/} (logged) and left out.

        @return: the ids adopted, oldest first.
        @raise SpoolBusy: if another process holds the spool (a queue used
            on its own).
        @raise OSError: if C{queue/} cannot be listed.
        """
        release = self._holdSpool()
        try:
            ours = (self._envelopes, self._committing, self._removing, self._disowned)
            names = sorted(name for name in os.listdir(self._path("queue")) if _isID(name) and not any(name in each for each in ours))
            adopted = []
            for name in names:
                try:
                    self._adopt(name)
                except (KeyError, ValueError):
                    # Gone since the listing, or set aside.
                    continue
                adopted.append(name)
        finally:
            release()
        if adopted:
            _log.warn("Queue {directory}: adopted {count} messages found in queue/", directory=self.directory, count=len(adopted), ids=adopted)
        return adopted

    def disown(self, queueID: str) -> Envelope:
        """
        Give a message up to another process, which takes its files
        (C{mailproto queue move}): forget it, leaving its files in
        C{queue/}.  It is never attempted again by this queue's relay, and
        L{adoptNew} does not take it back; L{adopt}, told its id, does,
        and so does the next L{recover} if its files are still there.

        An attempt in flight goes on to its end and writes its outcome
        (L{update}, or L{remove} if every recipient is done) as usual.

        @param queueID: the message's queue id.
        @return: its envelope.
        @raise KeyError: if the queue does not have it.
        """
        envelope = self._envelopes[queueID]
        self._forget(queueID)
        self._uncache(queueID)
        self._disowned.add(queueID)
        return envelope

    def isDisowned(self, queueID: str) -> bool:
        """
        @return: whether C{queueID} was given up (L{disown}) and not taken
            back since.
        """
        return queueID in self._disowned

    def _known(self, queueID: str) -> Envelope | None:
        """
        @return: the envelope of a message this queue has (queued, or
            being committed by it), or C{None} if it may be another
            process's.
        @raise KeyError: if C{queueID} cannot be a message to adopt: not a
            queue id, or removed by this queue.
        """
        envelope = self._envelopes.get(queueID)
        if envelope is None and queueID in self._committing:
            envelope = self._committing[queueID].envelope
        if envelope is None and (queueID in self._removing or not _isID(queueID)):
            raise KeyError(queueID)
        return envelope

    def _adopt(self, queueID: str) -> Envelope:
        """
        Read a message another process committed, and add it; the spool is
        held.
        """
        problems: list = []
        try:
            envelope = self._readEnvelope(queueID, problems)
        except FileNotFoundError:
            raise KeyError(queueID) from None
        except (OSError, ValueError, RecursionError) as e:
            why = str(e) or type(e).__name__
            self._setAside(queueID, why)
            raise ValueError(f"queue file {queueID} set aside in corrupt/: {why}") from None
        self._stateProblems(queueID, problems)
        if not envelope.waiting:
            _log.info("Queue message {queueID}: every recipient done; removed", queueID=queueID)
            for suffix in (".state", ""):
                _unlink(self.getPath(queueID) + suffix)
            raise KeyError(queueID)
        return self._added(envelope)

    # -- reading and changing ---------------------------------------------------

    def openMessage(self, queueID: str):
        """
        @return: the message's file open for reading, at its first octet
            (after the envelope line); for a small message committed by
            this queue, a copy kept in memory (see L{cacheLimit}).
        """
        cached = self._cache.get(queueID)
        if cached is not None:
            return io.BytesIO(cached)
        return openQueueFile(self.getPath(queueID))

    def update(self, envelope: Envelope) -> defer.Deferred:
        """
        Write a message's delivery state durably.

        @return: a C{Deferred} that fires when it is on disk; it fails
            with L{SpoolBusy} if another process holds the spool (a queue
            used on its own).
        """
        try:
            release = self._holdSpool()
        except SpoolBusy:
            return defer.fail()
        # The state is taken now, in the reactor thread: the envelope may
        # change again before the disk work runs.
        return self._submit(("state", (envelope.id, envelope.state())), release)

    def remove(self, queueID: str) -> defer.Deferred:
        """
        Take a message out of the queue (delivered, or reported back to
        its sender).

        @return: a C{Deferred} that fires when it is gone; it fails with
            L{SpoolBusy}, and the message stays, if another process holds
            the spool (a queue used on its own).
        """
        try:
            release = self._holdSpool()
        except SpoolBusy:
            return defer.fail()
        self._forget(queueID)
        self._uncache(queueID)
        # Until its files are gone, adoptNew must not take it back (it
        # would be sent again); if they could not be removed, not until
        # the next recovery.
        self._removing.add(queueID)
        return self._submit(("remove", queueID), release).addCallback(self._removed, queueID)

    def _removed(self, result, queueID: str):
        self._removing.discard(queueID)
        return result

    def _uncache(self, queueID: str) -> None:
        data = self._cache.pop(queueID, None)
        if data is not None:
            self._cached -= len(data)

    def _commit(self, spool: SpoolFile) -> defer.Deferred:
        # Known from now until it is announced: adoptNew may see its file
        # in queue/ before that.
        queueID = spool.envelope.id
        self._committing[queueID] = spool
        return SpoolWriter._commit(self, spool).addBoth(_after, lambda: self._committing.pop(queueID, None))

    def _committed(self, spool: SpoolFile) -> Envelope:
        if spool._message is not None:
            self._cacheMessage(spool.envelope.id, spool._message)
        return self._added(spool.envelope)

    def _cacheMessage(self, queueID: str, data: bytes) -> None:
        # A small message is usually sent on at once: keep it, so that
        # sending it needs no read of the disk in the reactor.
        if self._cached + len(data) <= self.cacheLimit:
            self._cache[queueID] = data
            self._cached += len(data)
