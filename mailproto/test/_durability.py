# -*- test-case-name: mailproto.test.test_durability -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Reading the C{strace} log of a relay, and checking from it that every
message the relay acknowledged was on disk before it said so: "fsync
before 250".

The log is what C{strace -f -ttt -T -yy -o FILE} writes
(L{straceCommand}): in one file, one line per system call of every
process and thread, with its thread id, a time (seconds since the
epoch), and after its result how long it took; each file descriptor is
followed by what it is, in angle brackets: the path of a file or
directory, or a socket's two addresses
(C{TCP:[127.0.0.1:25->127.0.0.1:40000]}).  A call that was still running
when another thread's call was printed is cut into two lines,
C{NAME(ARGS <unfinished ...>} and later C{<... NAME resumed>REST) =
RESULT <TOOK>}; L{parseTrace} joins them into one L{SystemCall}.

When a call began and when it had returned are bounded by the order
strace prints in.  strace prints a call's first line, and reads the
clock for its time, while the traced thread is stopped at the call's
entry, before the call runs: the call had not begun before that time
(L{SystemCall.start}).  It prints the result once the thread stops at
the call's exit: on a C{<... resumed>} line with a time of its own, or,
for a call printed whole, before the next line of the log and its time:
the call had returned by then (L{SystemCall.returned}).  The C{-T}
duration is no such bound (strace starts timing it after printing the
arguments, and with another clock): it counts only where it makes
C{returned} later.  So when one call's C{returned} is at most another's
C{start}, the first had returned before the second began, whichever
processes or threads made them, and a check on these times never passes
a write that came before the sync it needed.

L{checkDurability} checks, for every C{250 ... queued as ID} written to
a client's connection (each attempt to write it, whether it succeeded or
not), that before that write began:

  1. the message's file (C{tmp/ID}, or C{tmp/ID.SUFFIX} for a writer
     that marks the files it receives, such as a relay's worker with
     C{.worker2}; C{queue/ID} once renamed) was synced (C{fsync} or
     C{fdatasync}, returned without error) by a call that began after
     the last write into that file returned (a write to it after the
     C{250} is a failure too: what was acknowledged was not what was
     synced);
  2. the file was renamed from C{tmp/} into C{queue/} (returned);
  3. the C{queue/} directory was synced by a call that began after that
     rename returned, and returned.

Paths are compared as the trace names them: give the spool as the relay
was given it, absolute and with no symbolic link in it (C{strace -yy}
prints a descriptor's path resolved by the kernel, the C{rename}'s as
the program passed them).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from typing import Iterable

#: The system calls traced: the writes (into files and sockets), the
#: syncs and the renames; nothing else, so that the traced relay stops
#: (and slows) at nothing else.
WRITES = frozenset({"write", "writev", "pwrite64", "pwritev", "pwritev2", "sendto", "sendmsg"})
SYNCS = frozenset({"fsync", "fdatasync"})
RENAMES = frozenset({"rename", "renameat", "renameat2"})

#: How much of a written buffer strace prints: a C{250} reply is far
#: shorter; a message's data is cut (only the file it goes to matters).
STRING_LIMIT = 1024


def straceCommand(strace: str, log: str) -> list[str]:
    """
    @param strace: the C{strace} program.
    @param log: the file it writes the trace into.
    @return: the start of a command line that runs a program under
        C{strace}, following every process and thread it starts, tracing
        the calls L{checkDurability} reads with the times and descriptor
        names it needs.  C{--seccomp-bpf} stops the traced processes only
        at those calls.
    """
    calls = ",".join(sorted(WRITES | SYNCS | RENAMES))
    return [strace, "-f", "--seccomp-bpf", "-qq", "-ttt", "-T", "-yy", "-s", str(STRING_LIMIT), "-e", f"trace={calls}", "-o", log]


# -- reading the log ----------------------------------------------------------------


@dataclasses.dataclass
class SystemCall:
    """
    One system call, from the line (or two) strace printed for it.

    Times are integers, in nanoseconds since the epoch, so that they
    compare exactly.

    @ivar line: the number (from 1) of the line where it began.
    @ivar pid: the thread that made it (for a process's main thread, the
        process id).
    @ivar name: the call, such as C{"fsync"}.
    @ivar start: the time of its first line: it had not begun before.
    @ivar duration: how long strace says it took; C{None} if it never
        returned (its process ended in it) or the log does not say.
    @ivar printedAfter: the time of a line printed once it had returned:
        its C{<... resumed>} line, or the line after it in the log;
        C{None} if there is none.
    @ivar result: what it returned, as printed (C{"0"}, C{"-1 EIO (...)"},
        C{"?"}); C{None} if it never returned.
    @ivar descriptor: what its first argument is, if that is a file
        descriptor: a path, or a socket such as
        C{"TCP:[127.0.0.1:25->127.0.0.1:40000]"}; else C{None}.
    @ivar data: the octets it wrote (L{WRITES}), as far as strace printed
        them; C{b""} for another call.
    @ivar paths: for a rename (L{RENAMES}), the old and the new path, a
        relative one joined to its directory descriptor's path; else
        C{()}.
    """

    line: int
    pid: int
    name: str
    start: int
    duration: int | None = None
    printedAfter: int | None = None
    result: str | None = None
    descriptor: str | None = None
    data: bytes = b""
    paths: tuple[str, ...] = ()

    @property
    def returned(self) -> int | None:
        """
        A time by which it had returned (see the module docstring): the
        later of L{printedAfter} and its start plus its duration; C{None}
        if it never returned (C{= ?}), or nothing was printed after it.
        """
        if self.result is None or self.result == "?" or self.printedAfter is None:
            return None
        return max(self.printedAfter, self.start + (self.duration or 0))

    @property
    def succeeded(self) -> bool:
        """
        Whether it returned, and not an error.
        """
        return self.returned is not None and not self.result.startswith("-1")


_PREFIX = re.compile(r"^(?:\[pid\s+)?(?P<pid>\d+)\]?\s+(?P<time>\d+\.\d+)\s+(?P<rest>.*?)\s*$")
_WHOLE = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>.*?)(?:\s+<(?P<took>\d+\.\d+)>)?$")
_UNFINISHED = re.compile(r"^(?P<name>\w+)\((?P<args>.*?)\s*<unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>\s*(?P<args>.*)\)\s+=\s+(?P<result>.*?)(?:\s+<(?P<took>\d+\.\d+)>)?$")

# A descriptor and what it is: brackets (a socket's addresses, an IPv6
# address in them) may hold the ">" of "->".
_DESCRIPTOR = r"(?:\d+|AT_FDCWD)<(?P<what>(?:[^>\[]|\[(?:[^\[\]]|\[[^\]]*\])*\])*)>"
_FIRST_DESCRIPTOR = re.compile(r"^\s*" + _DESCRIPTOR)
_STRING = r'"(?P<string>(?:[^"\\]|\\.)*)"'
_FIRST_STRING = re.compile(_STRING)
_IOV_STRING = re.compile(r"iov_base=" + _STRING)
_PATH = re.compile(r"(?:" + _DESCRIPTOR + r",\s*)?" + _STRING)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.DOTALL)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "v": "\v", "f": "\f", "a": "\a", "b": "\b"}


def _nanoseconds(text: str) -> int:
    """
    @param text: seconds with a fraction, as strace prints them
        (C{"1796637073.193693"}).
    """
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def unescape(text: str) -> bytes:
    """
    @param text: the inside of a string strace printed in double quotes,
        its octets read as Latin-1.
    @return: the octets it stands for.
    """

    def one(match: re.Match) -> str:
        code = match.group(1)
        if code[0] == "x" and len(code) == 3:
            return chr(int(code[1:], 16))
        if code[0] in "01234567":
            return chr(int(code, 8))
        return _ESCAPES.get(code, code)

    return _ESCAPE.sub(one, text).encode("latin-1")


def _details(name: str, args: str) -> dict:
    """
    @return: the L{SystemCall} fields read from a call's arguments: its
        descriptor, the octets it wrote, the paths it renamed.
    """
    details = {}
    first = _FIRST_DESCRIPTOR.match(args)
    if first is not None and name not in RENAMES:
        details["descriptor"] = unescape(first.group("what")).decode("utf-8", "surrogateescape")
    if name in WRITES:
        pattern = _IOV_STRING if name in ("writev", "pwritev", "pwritev2", "sendmsg") else _FIRST_STRING
        details["data"] = b"".join(unescape(m.group("string")) for m in pattern.finditer(args))
    elif name in RENAMES:
        paths = []
        for match in _PATH.finditer(args):
            path = unescape(match.group("string")).decode("utf-8", "surrogateescape")
            if match.group("what") is not None and not os.path.isabs(path):
                path = os.path.join(unescape(match.group("what")).decode("utf-8", "surrogateescape"), path)
            paths.append(path)
        details["paths"] = tuple(paths)
    return details


def parseTrace(lines: Iterable[str]) -> list[SystemCall]:
    """
    Read an strace log (see the module docstring).

    @param lines: its lines; octets that are not ASCII are best read as
        Latin-1 (strace escapes them in strings anyway).
    @return: every call in it, in the order they began; a call cut into
        an C{<unfinished ...>} and a C{<... resumed>} line is one, with
        the arguments of both.  Lines that are not calls (a signal, a
        process's exit) are left out, but their times bound the call
        printed before them.
    """
    calls: list[SystemCall] = []
    pending: dict[int, tuple[int, str, int, str]] = {}
    whole: SystemCall | None = None
    for number, text in enumerate(lines, 1):
        prefix = _PREFIX.match(text)
        if prefix is None:
            continue
        pid, time, rest = int(prefix.group("pid")), _nanoseconds(prefix.group("time")), prefix.group("rest")
        if whole is not None:
            whole.printedAfter, whole = time, None
        # Before a whole call: the cut-off arguments may hold ") = ".
        unfinished = _UNFINISHED.match(rest)
        if unfinished is not None:
            pending[pid] = (number, unfinished.group("name"), time, unfinished.group("args"))
            continue
        match = _WHOLE.match(rest)
        if match is not None:
            whole = _call(number, pid, match.group("name"), time, match.group("args"), match)
            calls.append(whole)
            continue
        match = _RESUMED.match(rest)
        if match is not None and pid in pending and pending[pid][1] == match.group("name"):
            line, name, began, args = pending.pop(pid)
            calls.append(_call(line, pid, name, began, args + match.group("args"), match, printedAfter=time))
    # Calls that never returned: their process ended in them.
    for pid, (line, name, began, args) in pending.items():
        calls.append(SystemCall(line, pid, name, began, **_details(name, args)))
    calls.sort(key=lambda call: (call.start, call.line))
    return calls


def _call(line: int, pid: int, name: str, start: int, args: str, match: re.Match, printedAfter: int | None = None) -> SystemCall:
    took = match.group("took")
    return SystemCall(
        line,
        pid,
        name,
        start,
        duration=None if took is None else _nanoseconds(took),
        printedAfter=printedAfter,
        result=match.group("result"),
        **_details(name, args),
    )


def parseTraceFile(path: str) -> list[SystemCall]:
    """
    L{parseTrace} of the file at C{path}.
    """
    with open(path, encoding="latin-1") as f:
        return parseTrace(f)


# -- checking it -------------------------------------------------------------------

_QUEUED_AS = re.compile(rb"^250[ -][^\r\n]*\bqueued as ([0-9a-f]+)", re.MULTILINE)
# A message's file: its id, and in tmp/ maybe its writer's mark.
_MESSAGE_NAME = re.compile(r"^(?P<id>[0-9a-f]+)(?P<suffix>\.(?!state)[^/]*)?$")
_LOCAL_PORT = re.compile(r"^TCP(?:v6)?:\[.*?:(\d+)->")


@dataclasses.dataclass
class Acknowledgement:
    """
    A C{250 ... queued as ID} the relay wrote to a client.

    @ivar queueID: the id it names.
    @ivar call: the write that carried it.
    """

    queueID: str
    call: SystemCall


@dataclasses.dataclass
class DurabilityReport:
    """
    What L{checkDurability} found.

    @ivar acknowledgements: every C{250 ... queued as} written to a
        client, in the order they began.
    @ivar violations: one sentence per acknowledgement that broke the
        rule, naming the id, the calls (by line of the log) and their
        times; empty if none did.
    @ivar fileSyncs: for each acknowledged id, how many syncs of its
        message file the trace has.
    @ivar directorySyncs: how many syncs of C{queue/} it has.
    @ivar stateSyncs: how many syncs of delivery state files it has.
    """

    acknowledgements: list[Acknowledgement]
    violations: list[str]
    fileSyncs: dict[str, int]
    directorySyncs: int
    stateSyncs: int

    def summary(self) -> dict:
        """
        @return: the counts, for a test's report: acknowledged messages,
            how many messages had how many syncs of their file, the
            syncs of C{queue/} and of state files, and every sync per
            acknowledged message.
        """
        acknowledged = len(self.fileSyncs)
        syncs = sum(self.fileSyncs.values()) + self.directorySyncs + self.stateSyncs
        return {
            "acknowledged": acknowledged,
            "messagesByFileSyncs": dict(sorted(Counter(self.fileSyncs.values()).items())),
            "directorySyncs": self.directorySyncs,
            "stateSyncs": self.stateSyncs,
            "syncsPerMessage": round(syncs / acknowledged, 2) if acknowledged else None,
            "violations": len(self.violations),
        }


def findAcknowledgements(calls: Iterable[SystemCall], port: int | None = None) -> list[Acknowledgement]:
    """
    @param calls: a trace (L{parseTrace}).
    @param port: the relay's port: only writes to TCP connections it
        accepted on that port count; any TCP connection's if C{None}.
    @return: every C{250 ... queued as ID} line written to a client, in
        the order the writes began.
    """
    found = []
    for call in calls:
        if call.name not in WRITES or call.descriptor is None:
            continue
        local = _LOCAL_PORT.match(call.descriptor)
        if local is None or (port is not None and int(local.group(1)) != port):
            continue
        for match in _QUEUED_AS.finditer(call.data):
            found.append(Acknowledgement(match.group(1).decode("ascii"), call))
    return found


class _Spool:
    """
    The spool's calls in a trace, by what they touched.
    """

    def __init__(self, calls: list[SystemCall], spool: str) -> None:
        spool = os.path.normpath(spool)
        self.tmp, self.queue = os.path.join(spool, "tmp"), os.path.join(spool, "queue")
        self.files: dict[str, list[SystemCall]] = {}
        self.renames: dict[str, list[SystemCall]] = {}
        self.directorySyncs: list[SystemCall] = []
        self.stateSyncs = 0
        for call in calls:
            if call.name in RENAMES:
                self._rename(call)
            elif call.descriptor is not None:
                self._touched(call, os.path.normpath(call.descriptor))

    def messageID(self, path: str) -> str | None:
        """
        @return: the id of the message whose file C{path} is (C{tmp/ID},
            C{tmp/ID.SUFFIX} or C{queue/ID}), or C{None} if it is no
            message's file.
        """
        directory, name = os.path.split(os.path.normpath(path))
        match = _MESSAGE_NAME.match(name)
        if match is None or (directory == self.queue and match.group("suffix")) or directory not in (self.tmp, self.queue):
            return None
        return match.group("id")

    def _rename(self, call: SystemCall) -> None:
        if len(call.paths) < 2:
            return
        old, new = call.paths[:2]
        queueID = self.messageID(new)
        if queueID is not None and os.path.dirname(os.path.normpath(new)) == self.queue:
            if os.path.dirname(os.path.normpath(old)) == self.tmp and self.messageID(old) == queueID:
                self.renames.setdefault(queueID, []).append(call)

    def _touched(self, call: SystemCall, path: str) -> None:
        queueID = self.messageID(path)
        if queueID is not None:
            self.files.setdefault(queueID, []).append(call)
        elif path == self.queue and call.name in SYNCS:
            self.directorySyncs.append(call)
        elif os.path.dirname(path) == self.queue and path.endswith(".state.tmp") and call.name in SYNCS:
            self.stateSyncs += 1

    def problems(self, acknowledgement: Acknowledgement) -> list[str]:
        """
        @return: what is wrong with an acknowledgement (see the module
            docstring), one sentence each.
        """
        queueID, said = acknowledgement.queueID, acknowledgement.call.start
        where = f"{queueID}: 250 written at {_seconds(said)} (line {acknowledgement.call.line})"
        files, renames = self.files.get(queueID, []), self.renames.get(queueID, [])
        if not files and not renames:
            return [f"{where}, but the trace has no file of that id"]
        problems = []
        writes = [call for call in files if call.name in WRITES]
        if not writes:
            problems.append(f"{where}, but no write into its file")
        else:
            # A write that never returned may be writing still.
            written = max(float("inf") if call.returned is None else call.returned for call in writes)
            if not any(call.name in SYNCS and call.succeeded and call.start >= written and call.returned <= said for call in files):
                syncs = [call for call in files if call.name in SYNCS]
                problems.append(
                    f"{where}, but no sync of its file began after its last write returned"
                    f" ({_seconds(written)}) and returned before it; its syncs: {_spans(syncs)}"
                )
        renamed = [call for call in renames if call.succeeded and call.returned <= said]
        if not renamed:
            problems.append(f"{where}, but its file was not renamed into queue/ before it; renames: {_spans(renames)}")
        else:
            rename = renamed[-1]
            if not any(call.succeeded and call.start >= rename.returned and call.returned <= said for call in self.directorySyncs):
                near = [call for call in self.directorySyncs if call.returned is None or call.returned >= rename.start - 10**9]
                problems.append(
                    f"{where}, but no sync of queue/ began after its rename returned ({_seconds(rename.returned)},"
                    f" line {rename.line}) and returned before it; syncs of queue/ near: {_spans(near[:5])}"
                )
        return problems


def _seconds(nanoseconds: float) -> str:
    return "never" if nanoseconds == float("inf") else f"{nanoseconds / 1e9:.6f}"


def _spans(calls: list[SystemCall]) -> str:
    """
    @return: the calls' lines, starts and returns, for a failure message.
    """
    spans = [f"line {c.line} {c.name} {_seconds(c.start)}-{'never' if c.returned is None else _seconds(c.returned)} = {c.result}" for c in calls]
    return "; ".join(spans) or "none"


def checkDurability(calls: list[SystemCall], spool: str, port: int | None = None) -> DurabilityReport:
    """
    Check, for every acknowledgement (L{findAcknowledgements}) in a
    trace, that the message it names was durable in the spool before it
    was written (see the module docstring for the rule).

    @param calls: the trace (L{parseTrace}).
    @param spool: the spool directory, as the trace names it.
    @param port: the relay's port, as for L{findAcknowledgements}.
    @return: what was found.
    """
    acknowledgements = findAcknowledgements(calls, port)
    found = _Spool(calls, spool)
    violations = [problem for acknowledgement in acknowledgements for problem in found.problems(acknowledgement)]
    fileSyncs = {
        acknowledgement.queueID: sum(1 for call in found.files.get(acknowledgement.queueID, []) if call.name in SYNCS)
        for acknowledgement in acknowledgements
    }
    return DurabilityReport(acknowledgements, violations, fileSyncs, len(found.directorySyncs), found.stateSyncs)
