# -*- test-case-name: mailproto.test.test_queuecommand -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{mailproto queue}: look at and manage a relay's queue::

    mailproto queue list [--spool DIR] [--json]
    mailproto queue show ID [--message]
    mailproto queue flush [ID...] [FILTER...]
    mailproto queue requeue|delete|hold|release ID... | --all | FILTER... [--all]
    mailproto queue move --to SPOOL ID... | --all | FILTER... [--all]
    mailproto queue import DIR --spool SPOOL

where a FILTER is C{--sender ADDR}, C{--recipient ADDR}, C{--domain
DOMAIN} or C{--older-than DURATION}, and an ID may be shortened to any
prefix no other queued message's id starts with.

C{list} and C{show} read the spool's files, which the relay only ever
replaces whole, so they are safe at any time.  The others pick their
messages from those files too, then change them one by one through the
running relay's control socket (see L{mailproto._relayd._control}), so that the
relay, which keeps the queue's state in memory, does the change; when
no relay runs on the spool, they take its lock and change the files
themselves.  C{hold} keeps a message from being tried (L{Envelope.held
<mailproto._queue.Envelope.held>}) until C{release}.  C{import} copies a
twisted.mail relay's queue directory into the spool
(L{mailproto._twistedqueue}); it refuses while a relay runs on the spool.
C{move} hands messages to another relay's spool, each relay running or
not, without losing one or sending one twice
(L{mailproto._commandline._queuemove}).
"""

from __future__ import annotations

import datetime
import getopt
import json
import math
import os
import sys
import time

from twisted.internet import defer
from twisted.python import usage
from twisted.python.failure import Failure

from mailproto._commandline._queuemove import MoveAborted, SourceSpool, TargetSpool, moveMessages
from mailproto._relayd._control import RelayNotRunning, SpoolBusy, SpoolLock, ask
from mailproto._queue import WAITING, Queue, _isID, openQueueFile, readQueueFile, replyToData
from mailproto._twistedqueue import importTwistedQueue

DEFAULT_SPOOL = "mailrelay-spool"


def _age(seconds: float) -> str:
    """
    @return: a duration in its largest whole unit or two: C{45s},
        C{12m}, C{3h05m}, C{2d04h}; C{?} for a value that is not a finite
        number.
    """
    if not math.isfinite(seconds):
        return "?"
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _size(octets: int) -> str:
    if octets < 1024:
        return f"{octets} B"
    if octets < 1024 * 1024:
        return f"{octets / 1024:.1f} KiB"
    return f"{octets / 1024 / 1024:.1f} MiB"


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "replace")


def _shown(text) -> str:
    """
    @return: C{text} as it may be printed to a terminal: a character that
        is not printable (a control character, an escape sequence's
        start, an unpaired surrogate from an undecodable octet) as a
        C{\\x..} escape.
    """
    text = "" if text is None else str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)


def _stamp(when: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return repr(when)


def _reply(reply) -> dict | None:
    """
    @return: a reply as C{list --json} prints it: its code, status and
        lines, and C{text}, the whole on one line.
    """
    if reply is None:
        return None
    return {**replyToData(reply), "text": reply.summary()}


def describe(envelope, now: float, sending: bool = False) -> dict:
    """
    @return: a queued message as plain data (what C{list --json} prints).
    """
    return {
        "id": envelope.id,
        "received": envelope.received,
        "age": max(now - envelope.received, 0.0),
        "size": envelope.size,
        "sender": _text(envelope.sender),
        "recipients": [
            {"address": _text(r.address), "state": r.state, "lastReply": _reply(r.lastReply), "lastHost": r.lastHost} for r in envelope.recipients
        ],
        "attempts": envelope.attempts,
        "nextAttempt": envelope.nextAttempt,
        "lastReply": _reply(envelope.lastReply),
        "sending": sending,
        "held": envelope.held,
        "client": envelope.client,
        "helo": envelope.helo,
        "user": envelope.user,
    }


def readSpool(spool: str) -> list:
    """
    @return: the envelopes of the messages queued in C{spool}, oldest
        first (a file that vanishes or cannot be read while this runs is
        left out).
    """
    directory = os.path.join(spool, "queue")
    envelopes = []
    for name in sorted(os.listdir(directory)):
        if not _isID(name):
            continue
        try:
            envelopes.append(readQueueFile(os.path.join(directory, name)))
        except (OSError, ValueError):
            continue
    envelopes.sort(key=lambda e: (e.received, e.id))
    return envelopes


class AmbiguousID(KeyError):
    """
    A queue id prefix that more than one queued message's id starts with.

    @ivar prefix: the prefix.
    @ivar candidates: the ids it matches, sorted.
    """

    #: How many candidates the message names.
    SHOWN = 4

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        super().__init__(prefix)
        self.prefix = prefix
        self.candidates = candidates

    def __str__(self) -> str:
        shown = ", ".join(self.candidates[: self.SHOWN])
        more = len(self.candidates) - self.SHOWN
        if more > 0:
            shown += f" and {more} more"
        return f"{self.prefix} is ambiguous: it starts {len(self.candidates)} queue IDs ({shown})"


def _isPrefix(text: str) -> bool:
    """
    @return: whether C{text} may be a queue id or the start of one.
    """
    return 1 <= len(text) <= 40 and all(c in "0123456789abcdef" for c in text)


def matchID(prefix: str, ids) -> str:
    """
    @param prefix: a queue id, or the start of one.
    @param ids: the queued messages' ids.
    @return: the id that is C{prefix}, or else the only one that starts
        with it.
    @raise AmbiguousID: if more than one starts with it.
    @raise KeyError: if none does.
    """
    ids = list(ids)
    if prefix in ids:
        return prefix
    candidates = sorted(each for each in ids if each.startswith(prefix))
    if len(candidates) > 1:
        raise AmbiguousID(prefix, candidates)
    if not candidates:
        raise KeyError(prefix)
    return candidates[0]


def _address(text) -> str:
    """
    @return: an address as the filters compare it: without angle brackets
        and case-folded (so C{<>} and the empty string are the null
        sender).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text.casefold()


def _domainOf(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".") if "@" in address else ""


def matches(envelope, now: float, sender: str | None = None, recipient: str | None = None, domain: str | None = None, olderThan: float | None = None) -> bool:
    """
    Does a queued message pass every filter given (C{None}: no filter)?

    @param sender: the sender's address (C{<>} or C{""}: the null sender).
    @param recipient: an address among the recipients still waiting.
    @param domain: the domain of a recipient still waiting (exactly; a
        leading C{@} and a trailing dot are ignored).
    @param olderThan: seconds: the message was received longer ago.
    @param now: the time now (seconds since the epoch).
    """
    if sender is not None and _address(envelope.sender) != _address(sender):
        return False
    waiting = [_address(r.address) for r in envelope.waiting]
    if recipient is not None and _address(recipient) not in waiting:
        return False
    if domain is not None:
        wanted = _address(domain).lstrip("@").rstrip(".")
        if wanted not in {_domainOf(each) for each in waiting}:
            return False
    if olderThan is not None and not now - envelope.received > olderThan:
        return False
    return True


_FILTERS = ("sender", "recipient", "domain", "older-than")


def _duration(text: str) -> float:
    """
    C{--older-than}: a duration as C{twistd mailrelay} takes them.
    """
    from mailproto._relayd._daemon import parseDuration

    return parseDuration(text)


def _spoolIDs(spool: str) -> list[str]:
    """
    @return: the ids of the messages in C{spool}'s C{queue/}, sorted.
    """
    return sorted(name for name in os.listdir(os.path.join(spool, "queue")) if _isID(name))


def spoolProblem(spool: str) -> tuple[str, int] | None:
    """
    @return: what keeps C{spool} from being read as a relay's spool, and
        the exit status for it (2 for a wrong C{--spool}, 1 for a spool
        this user may not read); C{None} if nothing does.
    """
    where = f"--spool {spool!r}"
    try:
        if not os.path.isdir(spool):
            if os.path.exists(spool):
                return f"{where}: not a directory", 2
            return f"{where}: no such directory", 2
        os.listdir(os.path.join(spool, "queue"))
    except PermissionError:
        return f"{where}: permission denied (run this as the relay's user, or as root)", 1
    except (FileNotFoundError, NotADirectoryError):
        return f"{where}: not a relay's spool directory (it has no queue/)", 2
    except OSError as e:
        return f"{where}: {e.strerror or e}", 1
    return None


class _QueueCommand(usage.Options):
    """
    A C{mailproto queue} command.
    """

    def opt_version(self) -> None:
        """
        Print the version of mailproto and exit.
        """
        from mailproto._commandline._cli import _printVersion

        _printVersion()

    synopsis = "[options]"
    optParameters = [["spool", "s", None, f"The relay's spool directory [default: $MAILPROTO_SPOOL, else {DEFAULT_SPOOL}]."]]

    def getSynopsis(self) -> str:
        return f"Usage: mailproto queue {self.parent.subCommand} {self.synopsis}"

    def parseOptions(self, options=None) -> None:
        """
        Options may come after the queue id too (C{show ID --message}).
        """
        if options is None:
            options = sys.argv[1:]
        try:
            found, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        ordered = []
        for name, value in found:
            if name.startswith("--"):
                ordered.append(f"{name}={value}" if name[2:] + "=" in self.longOpt else name)
            else:
                ordered.extend([name, value] if name[1] + ":" in self.shortOpt else [name])
        super().parseOptions([*ordered, "--", *args])

    #: What keeps the spool from being read, when it is this user's lot
    #: rather than a wrong option (L{spoolProblem}); said by L{QueueOptions.run}.
    problem: str | None = None

    def postOptions(self) -> None:
        if self["spool"] is None:
            # A system-wide spool, as the relay's own: set once for every
            # command (and for mailproto sendmail).
            self["spool"] = os.environ.get("MAILPROTO_SPOOL") or DEFAULT_SPOOL
        problem = spoolProblem(self["spool"])
        if problem is not None:
            text, status = problem
            if status == 2:
                raise usage.UsageError(text)
            self.problem = text

    def _oneID(self, args, optional: bool = False) -> None:
        if len(args) > 1 or (not args and not optional):
            raise usage.UsageError(f"expected {'at most ' if optional else ''}one queue ID, got {len(args)}")
        self["id"] = args[0] if args else None
        if self["id"] is not None and not _isPrefix(self["id"]):
            raise usage.UsageError(f"{self['id']!r} is not a queue ID (or the start of one)")

    def _sending(self) -> tuple[list[str], int | None]:
        """
        @return: the ids the running relay is sending, and its process id;
            C{([], None)} when no relay runs.
        """
        try:
            status = ask(self["spool"], "status")
        except (RelayNotRunning, OSError, ValueError):
            return [], None
        return status.get("inFlight", []), status.get("pid")

    def _change(self, command: str, queueID: str | None, stdout, stderr) -> int:
        """
        Have the running relay do C{command}, or do it on the files when no
        relay runs.
        """
        try:
            answer = ask(self["spool"], command, queueID)
        except RelayNotRunning:
            pass
        except ValueError as e:
            stderr.write(f"mailproto queue {command}: {e}\n")
            return 1
        except OSError as e:
            stderr.write(f"mailproto queue {command}: the relay did not answer: {e}\n")
            return 1
        else:
            stdout.write(self.done(answer, True) + "\n")
            return 0
        lock = SpoolLock(self["spool"])
        try:
            lock.acquire()
        except SpoolBusy:
            stderr.write(
                f"mailproto queue {command}: a relay holds {self['spool']} but does not answer on its control socket; "
                "try again in a moment\n"
            )
            return 1
        try:
            answer = self.offline(_offlineQueue(self["spool"], lock), queueID)
        except KeyError:
            stderr.write(f"mailproto queue {command}: no message {queueID} in the queue\n")
            return 1
        finally:
            lock.release()
        stdout.write(self.done(answer, False) + "\n")
        return 0


def _offlineQueue(spool: str, lock: SpoolLock) -> Queue:
    """
    @param lock: the spool's lock, held (no relay runs).
    @return: the queue of C{spool}, read, doing its disk work at once
        under C{lock}.
    """
    queue = Queue(spool, runInThread=lambda f, *args: defer.maybeDeferred(f, *args), lock=lock)
    queue.recover()
    return queue


def _settle(d: defer.Deferred):
    """
    @return: the result of a C{Deferred} that has fired; its error raised.
    """
    results = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("the queue's disk work did not finish")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class ListOptions(_QueueCommand):
    """
    C{mailproto queue list}.
    """

    longdesc = (
        "List the queued messages, oldest first: id, age, size, attempts, when the next is due, sender, and each "
        "recipient still waiting with the last reply about it.  (sending) marks a message the relay is sending now."
    )
    optFlags = [["json", None, "Print a JSON array instead, one object per message."]]

    def parseArgs(self, *args) -> None:
        if args:
            raise usage.UsageError(f"unexpected arguments: {' '.join(args)}")

    def run(self, reactor, stdout, stderr) -> int:
        now = time.time()
        envelopes = readSpool(self["spool"])
        sending, _ = self._sending() if envelopes else ([], None)
        if self["json"]:
            stdout.write(json.dumps([describe(e, now, e.id in sending) for e in envelopes], indent=1) + "\n")
            return 0
        total = 0
        for envelope in envelopes:
            total += envelope.size
            if envelope.id in sending:
                due = "sending now"
            elif envelope.held:
                due = "held"
            elif envelope.nextAttempt <= now:
                due = "next attempt now"
            else:
                due = f"next attempt in {_age(envelope.nextAttempt - now)}"
            stdout.write(
                f"{envelope.id}  {_size(envelope.size)}  age {_age(now - envelope.received)}  "
                f"{envelope.attempts} attempt{'' if envelope.attempts == 1 else 's'}  {due}\n"
            )
            stdout.write(f"    from <{_shown(_text(envelope.sender))}>\n")
            for recipient in envelope.recipients:
                if recipient.state != WAITING:
                    continue
                reply = f"  ({_shown(recipient.lastReply)})" if recipient.lastReply else ""
                stdout.write(f"    to   <{_shown(_text(recipient.address))}>{reply}\n")
        count = len(envelopes)
        stdout.write(f"{count} message{'s' if count != 1 else ''} queued, {_size(total)}\n")
        return 0


class ShowOptions(_QueueCommand):
    """
    C{mailproto queue show ID}.
    """

    synopsis = "[options] ID"
    longdesc = "Show a queued message: its envelope, each recipient's state and last reply, and the message's header."
    optFlags = [
        ["message", "m", "Print the whole message as queued instead (to standard output, as octets)."],
        ["json", None, "Print the envelope as JSON."],
    ]

    def parseArgs(self, *args) -> None:
        self._oneID(args)

    def run(self, reactor, stdout, stderr) -> int:
        try:
            self["id"] = matchID(self["id"], _spoolIDs(self["spool"]))
        except AmbiguousID as e:
            stderr.write(f"mailproto queue show: {e}\n")
            return 1
        except KeyError:
            pass
        path = os.path.join(self["spool"], "queue", self["id"])
        try:
            envelope = readQueueFile(path)
        except FileNotFoundError:
            stderr.write(f"mailproto queue show: no message {self['id']} in the queue\n")
            return 1
        except (OSError, ValueError) as e:
            stderr.write(f"mailproto queue show: cannot read {self['id']}: {e}\n")
            return 1
        if self["message"]:
            with openQueueFile(path) as f:
                out = getattr(stdout, "buffer", None)
                for chunk in iter(lambda: f.read(65536), b""):
                    if out is not None:
                        out.write(chunk)
                    else:
                        stdout.write(chunk.decode("utf-8", "replace"))
            return 0
        now = time.time()
        sending, _ = self._sending()
        data = describe(envelope, now, envelope.id in sending)
        if self["json"]:
            stdout.write(json.dumps(data, indent=1) + "\n")
            return 0
        lines = [
            f"id:         {envelope.id}",
            f"received:   {_stamp(envelope.received)} ({_age(now - envelope.received)} ago) from {_shown(envelope.client or '?')} ({_shown(envelope.helo or '?')})"
            + (f", authenticated as {_shown(envelope.user)}" if envelope.user else ""),
            f"size:       {envelope.size} octets",
            f"sender:     <{_shown(data['sender'])}>",
            f"attempts:   {envelope.attempts}" + ("  (sending now)" if data["sending"] else ""),
        ]
        if envelope.held:
            lines.append(f"held:       yes, not tried until released (mailproto queue release {envelope.id})")
        if envelope.nextAttempt > now and not envelope.held:
            lines.append(f"next:       in {_age(envelope.nextAttempt - now)}")
        if envelope.lastReply:
            lines.append(f"last reply: {_shown(envelope.lastReply)}")
        for recipient in data["recipients"]:
            reply = f"  {_shown(recipient['lastReply']['text'])}" if recipient["lastReply"] else ""
            lines.append(f"recipient:  <{_shown(recipient['address'])}> {recipient['state']}{reply}")
        lines.append("")
        with openQueueFile(path) as f:
            for line in f:
                if line in (b"\r\n", b"\n"):
                    break
                lines.append(_shown(line.decode("utf-8", "replace").rstrip("\r\n")))
        stdout.write("\n".join(lines) + "\n")
        return 0


class _SelectingCommand(_QueueCommand):
    """
    A command that changes some messages: those named by id (or a unique
    prefix of one), those that pass every filter given, or with C{--all}
    every one.  It refuses to change every message unless told C{--all}
    (L{selectAll}: unless it is harmless to).

    @cvar command: the control socket's command, and the command's name.
    @cvar verb: what the summary line says was done to the messages.
    @cvar selectAll: whether no ids and no filter select every message.
    """

    synopsis = "[options] ID... | --all | FILTER..."
    command = ""
    verb = ""
    selectAll = False
    optFlags = [["all", None, "Every queued message (that passes the filters given)."]]
    optParameters = [
        ["sender", None, None, "Only messages from this sender (<> or '' for the null sender)."],
        ["recipient", None, None, "Only messages with this recipient still waiting."],
        ["domain", None, None, "Only messages with a recipient at this domain still waiting."],
        ["older-than", None, None, "Only messages queued longer ago than this (300, 90s, 5m, 2h, 5d).", _duration],
    ]

    def parseArgs(self, *args) -> None:
        for each in args:
            if not _isPrefix(each):
                raise usage.UsageError(f"{each!r} is not a queue ID")
        self["ids"] = list(args)

    def postOptions(self) -> None:
        super().postOptions()
        filtering = any(self[name] is not None for name in _FILTERS)
        if self["all"] and self["ids"]:
            raise usage.UsageError("give queue IDs or --all, not both")
        if not (self["ids"] or filtering or self["all"] or self.selectAll):
            raise usage.UsageError("give queue IDs, a filter (--sender, --recipient, --domain, --older-than) or --all")

    @property
    def _everything(self) -> bool:
        return not self["ids"] and all(self[name] is None for name in _FILTERS)

    def select(self, now: float) -> tuple[list[str], list[str]]:
        """
        @return: the ids of the messages selected, and what was wrong with
            the ids given (one line each: not queued, or ambiguous).
        """
        queued = _spoolIDs(self["spool"])
        chosen, problems = [], []
        for prefix in self["ids"]:
            try:
                queueID = matchID(prefix, queued)
            except AmbiguousID as e:
                problems.append(str(e))
            except KeyError:
                problems.append(f"no message {prefix} in the queue")
            else:
                if queueID not in chosen:
                    chosen.append(queueID)
        if problems:
            return [], problems
        if all(self[name] is None for name in _FILTERS):
            return (chosen if self["ids"] else queued), []
        wanted = set(chosen) if self["ids"] else None
        passed = [
            e.id
            for e in readSpool(self["spool"])
            if (wanted is None or e.id in wanted)
            and matches(e, now, sender=self["sender"], recipient=self["recipient"], domain=self["domain"], olderThan=self["older-than"])
        ]
        return passed, []

    def run(self, reactor, stdout, stderr) -> int:
        name = f"mailproto queue {self.command}"
        if self.selectAll and self._everything:
            return self._change(self.command, None, stdout, stderr)
        ids, problems = self.select(time.time())
        for problem in problems:
            stderr.write(f"{name}: {problem}\n")
        if problems:
            return 1
        changed, unchanged, failed = [], [], 0
        running = True
        try:
            for queueID in ids:
                try:
                    answer = ask(self["spool"], self.command, queueID)
                except ValueError as e:
                    stderr.write(f"{name}: {e}\n")
                    failed += 1
                else:
                    (changed if self.changed(answer) else unchanged).append(queueID)
        except RelayNotRunning:
            if changed or unchanged or failed:
                stderr.write(f"{name}: the relay stopped while the command ran; {len(ids) - len(changed)} left as they were\n")
                return 1
            running = False
        except OSError as e:
            stderr.write(f"{name}: the relay did not answer: {e}\n")
            return 1
        if not running:
            lock = SpoolLock(self["spool"])
            try:
                lock.acquire()
            except SpoolBusy:
                stderr.write(f"{name}: a relay holds {self['spool']} but does not answer on its control socket; try again in a moment\n")
                return 1
            try:
                queue = _offlineQueue(self["spool"], lock)
                for queueID in ids:
                    try:
                        (changed if self.offlineOne(queue, queueID) else unchanged).append(queueID)
                    except KeyError:
                        stderr.write(f"{name}: no message {queueID} in the queue\n")
                        failed += 1
            finally:
                lock.release()
        stdout.write(self.summary(changed, unchanged, running) + "\n")
        return 1 if failed else 0

    def changed(self, answer: dict) -> bool:
        """
        @return: whether the relay's answer says the message was changed.
        """
        return answer.get("changed", True)

    def summary(self, changed: list[str], unchanged: list[str], running: bool) -> str:
        """
        @return: the line that says what was done.
        """
        count = len(changed)
        if len(self["ids"]) == 1 and self._filtersNone() and count == 1:
            what = changed[0]
        else:
            what = f"{count} message{'s' if count != 1 else ''}"
        line = f"{what} {self.verb}"
        if unchanged:
            line += f" ({len(unchanged)} already {self.verb})"
        return line

    def _filtersNone(self) -> bool:
        return all(self[name] is None for name in _FILTERS)

    def done(self, answer: dict, running: bool) -> str:
        return self.summary(answer.get("ids", []), [], running)


class FlushOptions(_SelectingCommand):
    """
    C{mailproto queue flush [ID...]}.
    """

    synopsis = "[options] [ID... | FILTER...]"
    longdesc = (
        "Try every waiting message (or those selected by id, or id prefix, and filters) now rather than at its next "
        "attempt; held messages stay held.  With the relay running, it starts at once; otherwise when the relay next "
        "starts."
    )
    command = "flush"
    selectAll = True

    def changed(self, answer: dict) -> bool:
        return bool(answer["ids"])

    def offlineOne(self, queue: Queue, queueID: str) -> bool:
        envelope = queue.getEnvelope(queueID)
        if not envelope.waiting or envelope.held:
            return False
        if envelope.nextAttempt > 0:
            envelope.nextAttempt = 0.0
            _settle(queue.update(envelope))
        return True

    def offline(self, queue: Queue, queueID) -> dict:
        return {"ids": [each for each in queue.ids() if self.offlineOne(queue, each)]}

    def summary(self, changed: list[str], unchanged: list[str], running: bool) -> str:
        count = len(changed)
        what = f"{count} message{'s' if count != 1 else ''}"
        if running:
            return f"{what} to be tried now"
        return f"{what} to be tried as soon as the relay starts"


class RequeueOptions(_SelectingCommand):
    """
    C{mailproto queue requeue ID...}.
    """

    longdesc = (
        "Start messages' retries over: the attempt count goes back to 0 (so that the next delays are short "
        "again) and each is tried now (a held one when released).  Its lifetime still counts from when it arrived."
    )
    command = "requeue"
    verb = "requeued"

    def offlineOne(self, queue: Queue, queueID: str) -> bool:
        envelope = queue.getEnvelope(queueID)
        envelope.attempts = 0
        envelope.warned = False
        envelope.nextAttempt = 0.0
        _settle(queue.update(envelope))
        return True

    def summary(self, changed: list[str], unchanged: list[str], running: bool) -> str:
        line = super().summary(changed, unchanged, running)
        if not running and changed:
            line += f"; {'it' if len(changed) == 1 else 'they'} will be tried as soon as the relay starts"
        return line


class DeleteOptions(_SelectingCommand):
    """
    C{mailproto queue delete ID...}.
    """

    longdesc = "Take messages out of the queue, without sending them on or telling their senders."
    command = "delete"
    verb = "deleted"

    def offlineOne(self, queue: Queue, queueID: str) -> bool:
        queue.getEnvelope(queueID)
        _settle(queue.remove(queueID))
        return True


class HoldOptions(_SelectingCommand):
    """
    C{mailproto queue hold ID...}.
    """

    longdesc = (
        "Put messages on hold: the relay does not try them, even after a restart, until they are released "
        "(mailproto queue release).  A message being sent now cannot be held; try again when its attempt is over."
    )
    command = "hold"
    verb = "held"

    def offlineOne(self, queue: Queue, queueID: str) -> bool:
        envelope = queue.getEnvelope(queueID)
        if envelope.held:
            return False
        envelope.held = True
        _settle(queue.update(envelope))
        return True


class ReleaseOptions(_SelectingCommand):
    """
    C{mailproto queue release ID...}.
    """

    longdesc = "Take messages off hold: each is tried at once (with no relay running, as soon as it starts)."
    command = "release"
    verb = "released"

    def offlineOne(self, queue: Queue, queueID: str) -> bool:
        envelope = queue.getEnvelope(queueID)
        if not envelope.held:
            return False
        envelope.held = False
        envelope.nextAttempt = 0.0
        _settle(queue.update(envelope))
        return True

    def summary(self, changed: list[str], unchanged: list[str], running: bool) -> str:
        line = super().summary(changed, unchanged, running).replace("already released", "not held")
        if not running and changed:
            line += f"; {'it' if len(changed) == 1 else 'they'} will be tried as soon as the relay starts"
        return line


class MoveOptions(_SelectingCommand):
    """
    C{mailproto queue move --to SPOOL ID...}.
    """

    synopsis = "[options] --to SPOOL ID... | --all | FILTER..."
    longdesc = (
        "Move messages, with their delivery state (attempts, recipients already delivered, hold), to the spool of "
        "another relay (--to), to take this one out of service when its queue cannot empty.  Either relay may be "
        "running: a running relay here gives each message up (waiting for an attempt in flight to end) and never "
        "sends it again; a running relay there takes each in at once; a stopped one finds them when it starts.  "
        "Each message is on the other spool's disk before it leaves this one: if the command is interrupted, run "
        "it again, before this relay starts again (which would send what is left here too)."
    )
    command = "move"
    verb = "moved"
    optParameters = [["to", "t", None, "The spool directory of the relay that takes the messages."]]

    def postOptions(self) -> None:
        super().postOptions()
        to = self["to"]
        if not to:
            raise usage.UsageError("--to: give the spool directory of the relay that takes the messages")
        if os.path.exists(to) and not os.path.isdir(to):
            raise usage.UsageError(f"--to {to!r}: not a directory")
        if os.path.isdir(to) and not os.path.isdir(os.path.join(to, "queue")) and os.listdir(to):
            raise usage.UsageError(f"--to {to!r}: not a relay's spool directory (it has no queue/) and not empty")
        if self.problem is None and os.path.isdir(to) and os.path.samefile(to, self["spool"]):
            raise usage.UsageError("--to: the same spool as --spool")

    def run(self, reactor, stdout, stderr) -> int:
        name = f"mailproto queue {self.command}"
        ids, problems = self.select(time.time())
        for problem in problems:
            stderr.write(f"{name}: {problem}\n")
        if problems:
            return 1
        source, target = SourceSpool(self["spool"]), TargetSpool(self["to"])
        try:
            source.open()
            target.open()
            report = moveMessages(source, target, ids, lambda line: stderr.write(f"{name}: {line}\n"))
        except MoveAborted as e:
            stderr.write(f"{name}: {e}\n")
            return 1
        finally:
            target.close()
            source.close()
        if report.aborted is not None:
            stderr.write(f"{name}: {report.aborted}; {report.left} left as they were (run the command again)\n")
        stdout.write(self.moveSummary(report) + "\n")
        return 1 if report.failed or report.aborted is not None else 0

    def moveSummary(self, report) -> str:
        """
        @return: the line that says what was moved.
        """
        count = len(report.moved)
        if len(self["ids"]) == 1 and self._filtersNone() and count == 1:
            what = report.moved[0]
        else:
            what = f"{count} message{'s' if count != 1 else ''}"
        line = f"{what} moved to {self['to']}"
        if report.finished:
            finished = len(report.finished)
            line += f" ({finished} finished by {'its' if finished == 1 else 'their'} last attempt first)"
        return line


class ImportOptions(_QueueCommand):
    """
    C{mailproto queue import DIR}.
    """

    synopsis = "[options] DIR"
    longdesc = (
        "Copy the messages of a twisted.mail relay's queue directory DIR (its NAME-H/NAME-D pairs, one per "
        "recipient) into the spool, each as a message of its own, on disk before the command ends.  DIR is left as "
        "it was; a pair imported before is not imported again.  A pair that cannot be read is skipped, with one "
        "line saying why, and the exit status is 1.  The spool is made if it does not exist; no relay may be "
        "running on it."
    )

    def parseArgs(self, *args) -> None:
        if len(args) != 1:
            raise usage.UsageError(f"expected one twisted.mail queue directory, got {len(args)}")
        self["directory"] = args[0]

    def postOptions(self) -> None:
        directory, spool = self["directory"], self["spool"]
        if not os.path.isdir(directory):
            raise usage.UsageError(f"{directory!r} is not a directory")
        if os.path.isdir(spool) and not os.path.isdir(os.path.join(spool, "queue")) and os.listdir(spool):
            raise usage.UsageError(f"--spool {spool!r}: not a relay's spool directory (it has no queue/) and not empty")
        if os.path.exists(spool) and os.path.samefile(directory, spool):
            raise usage.UsageError("the twisted.mail queue directory and the spool are the same directory")

    def run(self, reactor, stdout, stderr) -> int:
        spool = self["spool"]
        try:
            status = ask(spool, "status")
        except (RelayNotRunning, OSError, ValueError):
            pass
        else:
            pid = status.get("pid")
            stderr.write(f"mailproto queue import: a relay is running on {spool}{f' (process {pid})' if pid else ''}; stop it first\n")
            return 1
        lock = SpoolLock(spool)
        try:
            os.makedirs(spool, mode=0o700, exist_ok=True)
            lock.acquire()
        except SpoolBusy:
            stderr.write(f"mailproto queue import: {spool} is in use by another process (a relay, or another command); stop it first\n")
            return 1
        except OSError as e:
            stderr.write(f"mailproto queue import: cannot use {spool}: {e.strerror or e}\n")
            return 1
        try:
            report = _settle(importTwistedQueue(self["directory"], _offlineQueue(spool, lock)))
        except OSError as e:
            stderr.write(f"mailproto queue import: cannot read {self['directory']}: {e.strerror or e}\n")
            return 1
        finally:
            lock.release()
        for name, why in report.skipped:
            stderr.write(f"mailproto queue import: skipped {_shown(name)}: {_shown(why)}\n")
        count = len(report.imported)
        summary = f"{count} message{'s' if count != 1 else ''} imported into {spool}"
        if report.already:
            summary += f", {len(report.already)} imported before"
        if report.skipped:
            summary += f", {len(report.skipped)} skipped"
        stdout.write(summary + f"; {self['directory']} left as it was\n")
        return 0 if report.complete else 1


class QueueOptions(usage.Options):
    """
    C{mailproto queue}: its commands.
    """

    def opt_version(self) -> None:
        """
        Print the version of mailproto and exit.
        """
        from mailproto._commandline._cli import _printVersion

        _printVersion()

    synopsis = "<command> [options]"
    longdesc = (
        "Look at and manage the queue of a relay (twistd mailrelay) by its spool directory (--spool, default "
        "./mailrelay-spool).  Safe while the relay runs: changes go through the relay."
    )
    subCommands = [
        ["list", None, ListOptions, "List the queued messages."],
        ["show", None, ShowOptions, "Show one message's envelope, state and header."],
        ["flush", None, FlushOptions, "Try waiting messages now."],
        ["requeue", None, RequeueOptions, "Start messages' retries over."],
        ["delete", None, DeleteOptions, "Take messages out of the queue."],
        ["hold", None, HoldOptions, "Keep messages from being tried until released."],
        ["release", None, ReleaseOptions, "Take messages off hold."],
        ["move", None, MoveOptions, "Move messages to another relay's spool."],
        ["import", None, ImportOptions, "Copy a twisted.mail relay's queue directory into the spool."],
    ]

    def getSynopsis(self) -> str:
        return f"Usage: mailproto queue {self.synopsis}"

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("no queue command given (list, show, flush, requeue, delete, hold, release, move, import)")

    def run(self, reactor, stdout, stderr) -> int:
        if self.subOptions.problem is not None:
            stderr.write(f"mailproto queue {self.subCommand}: {self.subOptions.problem}\n")
            return 1
        return self.subOptions.run(reactor, stdout, stderr)
