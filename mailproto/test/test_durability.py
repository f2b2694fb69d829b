# -*- test-case-name: mailproto.test.test_durability -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
"Fsync before 250", seen from the kernel's side: C{twistd mailrelay} run
under C{strace}, and every acknowledgement it wrote to a client checked
against the system calls that made its message durable
(L{mailproto.test._durability}).

  - L{ParseTraceTests}: the strace log is read as strace writes it: a
    call cut into C{<unfinished ...>} and C{<... resumed>} lines by
    another thread's, sockets named with their addresses, escaped
    strings, renames relative to a directory descriptor.
  - L{CheckDurabilityTests}: the check on made-up traces, durable ones
    and every way one can break the rule: a C{250} written before the
    file's sync completed, before the sync of C{queue/}, with a sync of
    C{queue/} that began before the rename, with the file written after
    its sync, with a sync that never returned or failed, and naming an
    id the trace has no file of.
  - L{RequireStraceTests}: where strace cannot trace, the traced tests
    skip, or fail when peers are required.
  - L{TracedRelayTests}: the real daemon, with C{--workers 1} (one
    process takes mail in and delivers) and C{--workers 2} (two worker
    processes take mail in, their parent adopts and delivers), traced
    with C{strace -f}; 100 messages from 6 clients at once, each checked
    and delivered to a smart host in this process.  The counts
    (acknowledged, syncs per message) are logged and written to
    C{report.txt} in the test's scratch directory.

The traced tests need C{strace}, and a machine that lets a process trace
its children (C{ptrace}); they skip without (fail if
C{MAILPROTO_REQUIRE_PEERS} is set).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from twisted.internet import defer
from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase

from mailproto.test import _peers
from mailproto.test._durability import (
    checkDurability,
    findAcknowledgements,
    parseTrace,
    parseTraceFile,
    straceCommand,
    unescape,
)
from mailproto.test._relayprocess import relayCommand
from mailproto.test.test_daemon import RelayProcess, spoolListing, waitUntil
from mailproto.test.test_workers import SOON, WorkerHarness, _CountedLoad, arrivals, recordingSmartHost, workerProcesses

# -- made-up traces ------------------------------------------------------------------

SPOOL = "/var/spool/mailrelay"
PORT = 2525

#: The threads of the made-up traces: the relay's reactor (it writes the
#: replies) and a disk thread.
REACTOR, DISK = 100, 101

#: The time the made-up traces start at, in seconds.
T = 1700000000.0


class _Trace:
    """
    A made-up strace log of a relay, written call by call in strace's
    format (see L{mailproto.test._durability}).  A call printed whole
    returned by the time of the line after it (or by its start plus
    C{took}, if that is later); the last is not known to have returned.

    @ivar lines: the log's lines.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def call(self, at: float, text: str, result: str = "0", took: float = 0.00001, pid: int = DISK) -> None:
        """
        A call that returned before any other thread's was printed.

        @param at: when it began, in seconds after L{T}.
        @param text: the call and its arguments, as strace prints them.
        """
        self.lines.append(f"{pid} {T + at:.6f} {text} = {result} <{took:.6f}>")

    def unfinished(self, at: float, text: str, pid: int = DISK) -> None:
        """
        The first line of a call cut by another thread's: C{text} without
        its closing parenthesis.
        """
        self.lines.append(f"{pid} {T + at:.6f} {text} <unfinished ...>")

    def resumed(self, at: float, name: str, took: float, result: str = "0", pid: int = DISK) -> None:
        """
        The second line of a cut call, printed at C{at}.
        """
        self.lines.append(f"{pid} {T + at:.6f} <... {name} resumed>) = {result} <{took:.6f}>")

    def written(self, queueID: str, at: float, suffix: str = "") -> None:
        """
        The message's file in C{tmp/} written (its name ends with
        C{suffix}, as a worker's does).
        """
        data = f'"{{\\"version\\":1,\\"id\\":\\"{queueID}\\"}}\\n"...'
        self.call(at, f"write(13<{SPOOL}/tmp/{queueID}{suffix}>, {data}, 3000)", "3000")

    def synced(self, queueID: str, at: float, took: float = 0.002, name: str = "fsync", suffix: str = "") -> None:
        self.call(at, f"{name}(13<{SPOOL}/tmp/{queueID}{suffix}>)", took=took)

    def renamed(self, queueID: str, at: float, took: float = 0.00005, suffix: str = "") -> None:
        self.call(at, f'rename("{SPOOL}/tmp/{queueID}{suffix}", "{SPOOL}/queue/{queueID}")', took=took)

    def directorySynced(self, at: float, took: float = 0.0005) -> None:
        self.call(at, f"fsync(14<{SPOOL}/queue>)", took=took)

    def committed(self, queueID: str, at: float, suffix: str = "") -> None:
        """
        The message written, synced, renamed into C{queue/} and the
        directory synced, as the relay does, from C{at} to C{at + 0.003}.
        """
        self.written(queueID, at, suffix)
        self.synced(queueID, at + 0.0001, suffix=suffix)
        self.renamed(queueID, at + 0.0022, suffix=suffix)
        self.directorySynced(at + 0.0025)

    def acknowledged(self, queueID: str, at: float, port: int = PORT) -> None:
        """
        The relay's C{250} naming C{queueID}, written to a client of
        C{port}.
        """
        self.call(
            at,
            f'sendto(9<TCP:[127.0.0.1:{port}->127.0.0.1:40000]>, "250 2.0.0 Ok: queued as {queueID}\\r\\n", 49, 0, NULL, 0)',
            "49",
            pid=REACTOR,
        )

    def check(self, port: int | None = PORT):
        return checkDurability(parseTrace(self.lines), SPOOL, port)


ID, OTHER = "18c4bb6a5f2c0a1b2c3d4e5f6", "18c4bb6a5f3d0f0e0d0c0b0a9"


class ParseTraceTests(SynchronousTestCase):
    """
    L{parseTrace} reads what C{strace -f -ttt -T -yy} writes.
    """

    # Lines as strace 6.1 wrote them for a relay with two workers (the
    # spool's path changed).
    REAL = [
        "31215 1796637073.187891 write(13</s/spool/tmp/1a24fea1f22be9ec30081ea>,"
        ' "{\\"version\\":1,\\"id\\":\\"1a24fea1f22be9ec30081ea\\"}\\n", 47) = 47 <0.000061>',
        "31215 1796637073.188002 fsync(13</s/spool/tmp/1a24fea1f22be9ec30081ea>) = 0 <0.002305>",
        '31215 1796637073.190396 rename("/s/spool/tmp/1a24fea1f22be9ec30081ea", "/s/spool/queue/1a24fea1f22be9ec30081ea") = 0 <0.000037>',
        "31216 1796637073.190400 fsync(19</s/spool/queue/1a24fea1f22be9ec30081ea.state.tmp> <unfinished ...>",
        "31215 1796637073.190513 fsync(13</s/spool/queue> <unfinished ...>",
        "31216 1796637073.197301 <... fsync resumed>) = 0 <0.000685>",
        "31215 1796637073.197323 <... fsync resumed>) = 0 <0.000262>",
        '31213 1796637073.193693 sendto(4<TCP:[127.0.0.1:45539->127.0.0.1:37260]>, "250 2.0.0 Ok: queued as 1a24fea1f22be9ec30081ea\\r\\n",'
        " 49, 0, NULL, 0) = 49 <0.000110>",
        "31213 1796637073.194000 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=31299, si_uid=0, si_status=0} ---",
    ]

    def test_realLines(self):
        """
        Each call of a real log is read with its thread, start and
        duration (in nanoseconds), result and descriptor; the written
        octets are unescaped; the signal line is left out; calls come in
        the order they began.
        """
        calls = parseTrace(self.REAL)
        self.assertEqual([(c.line, c.pid, c.name) for c in calls], [
            (1, 31215, "write"), (2, 31215, "fsync"), (3, 31215, "rename"), (4, 31216, "fsync"),
            (5, 31215, "fsync"), (8, 31213, "sendto"),
        ])  # fmt: skip
        write, sync, rename, _, directory, reply = calls
        self.assertEqual(write.data, b'{"version":1,"id":"1a24fea1f22be9ec30081ea"}\n')
        self.assertEqual(write.descriptor, "/s/spool/tmp/1a24fea1f22be9ec30081ea")
        # Returned by the next line's time, later than its start and duration.
        self.assertEqual((sync.start, sync.duration, sync.returned), (1796637073188002000, 2305000, 1796637073190396000))
        self.assertEqual((sync.result, sync.succeeded), ("0", True))
        self.assertEqual(rename.paths, ("/s/spool/tmp/1a24fea1f22be9ec30081ea", "/s/spool/queue/1a24fea1f22be9ec30081ea"))
        self.assertEqual(reply.descriptor, "TCP:[127.0.0.1:45539->127.0.0.1:37260]")
        self.assertEqual(reply.data, b"250 2.0.0 Ok: queued as 1a24fea1f22be9ec30081ea\r\n")
        # Joined with the resumed line of its own thread, not the other's.
        self.assertEqual((directory.descriptor, directory.start, directory.duration), ("/s/spool/queue", 1796637073190513000, 262000))

    def test_resumedByThread(self):
        """
        A resumed line is joined to the cut call of its own thread, even
        when other threads' lines come between: the call has the start and
        arguments of its first line, the result and duration of its
        second.
        """
        calls = parseTrace([
            '7 1.000000 sendto(9<TCP:[127.0.0.1:25->127.0.0.1:4000]>, "250 2.0.0 Ok: queued as ab12\\r\\n", 30, 0, NULL, 0 <unfinished ...>',
            "8 1.000100 fsync(3</q> <unfinished ...>",
            "8 1.000150 <... fsync resumed>) = 0 <0.000010>",
            '7 1.000200 <... sendto resumed>) = 30 <0.000300>',
        ])  # fmt: skip
        self.assertEqual([(c.pid, c.name, c.start, c.returned) for c in calls], [
            (7, "sendto", 1_000_000_000, 1_000_300_000), (8, "fsync", 1_000_100_000, 1_000_150_000),
        ])  # fmt: skip
        self.assertEqual(calls[0].data, b"250 2.0.0 Ok: queued as ab12\r\n")

    def test_returnedByNextLine(self):
        """
        A call printed whole had returned by the time of the next line of
        the log, whichever thread's and whatever it is (a signal); a
        later start plus duration makes that later.  The log's last call
        is not known to have returned.
        """
        calls = parseTrace([
            "7 1.000000 fsync(3</q>) = 0 <0.000010>",
            "8 1.000500 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED} ---",
            "8 1.000600 fsync(4</q>) = 0 <0.000900>",
            "7 1.000700 fsync(3</q>) = 0 <0.000010>",
        ])  # fmt: skip
        self.assertEqual([(c.pid, c.printedAfter, c.returned) for c in calls], [
            (7, 1_000_500_000, 1_000_500_000), (8, 1_000_700_000, 1_001_500_000), (7, None, None),
        ])  # fmt: skip
        self.assertEqual([c.succeeded for c in calls], [True, True, False])

    def test_neverReturned(self):
        """
        A cut call whose thread ended before it returned has no end and
        did not succeed; nor did one that returned an error, or C{?}.
        """
        calls = parseTrace([
            "7 1.000000 fsync(3</q> <unfinished ...>",
            "8 1.000001 fsync(4</q>) = -1 EIO (Input/output error) <0.000010>",
            "9 1.000002 fsync(5</q> <unfinished ...>",
            "9 1.000003 <... fsync resumed>) = ?",
            "7 1.000004 +++ killed by SIGKILL +++",
        ])  # fmt: skip
        self.assertEqual([(c.pid, c.returned, c.succeeded) for c in calls], [(7, None, False), (8, 1_000_011_000, False), (9, None, False)])

    def test_bracketedPid(self):
        """
        The C{[pid N]} prefix strace writes on its standard error is read
        as the plain one of its C{-o} file.
        """
        [call] = parseTrace(["[pid  4242] 12.5 fsync(3</q>) = 0 <0.25>"])
        self.assertEqual((call.pid, call.start, call.duration), (4242, 12_500_000_000, 250_000_000))

    def test_renameat(self):
        """
        C{renameat} and C{renameat2} paths relative to a directory
        descriptor are joined to its path; absolute ones are kept.
        """
        calls = parseTrace([
            '5 1.0 renameat(AT_FDCWD</var/spool>, "tmp/ab", 7</var/spool/queue>, "ab") = 0 <0.000010>',
            '5 2.0 renameat2(AT_FDCWD</x>, "/abs/tmp/ab", AT_FDCWD</x>, "/abs/queue/ab", RENAME_NOREPLACE) = 0 <0.000010>',
        ])  # fmt: skip
        self.assertEqual([c.paths for c in calls], [("/var/spool/tmp/ab", "/var/spool/queue/ab"), ("/abs/tmp/ab", "/abs/queue/ab")])
        self.assertEqual([c.descriptor for c in calls], [None, None])

    def test_vectors(self):
        """
        The octets of C{writev} and C{sendmsg} are their buffers' in
        order.
        """
        calls = parseTrace([
            '5 1.0 writev(9<TCP:[127.0.0.1:25->127.0.0.1:4000]>, [{iov_base="250 ", iov_len=4}, {iov_base="ok\\r\\n", iov_len=4}], 2) = 8 <0.000010>',
            '5 2.0 sendmsg(9<TCP:[127.0.0.1:25->127.0.0.1:4000]>, {msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="a) = 1", iov_len=6}],'
            " msg_iovlen=1, msg_controllen=0, msg_flags=0}, 0) = 6 <0.000010>",
        ])  # fmt: skip
        self.assertEqual([c.data for c in calls], [b"250 ok\r\n", b"a) = 1"])

    def test_unescape(self):
        """
        strace's escapes stand for the octets they name.
        """
        self.assertEqual(unescape(r"a\"b\\c\r\n\t\0\177\x80\xffz"), b'a"b\\c\r\n\t\x00\x7f\x80\xffz')


class CheckDurabilityTests(SynchronousTestCase):
    """
    L{checkDurability} passes a trace where each C{250} came after its
    message was synced, renamed and its directory synced, and fails every
    other.
    """

    def assertViolations(self, trace: _Trace, *expected: str) -> list[str]:
        """
        Check the trace: it breaks the rule once for each of C{expected},
        a regular expression each violation must match in order.
        """
        violations = trace.check().violations
        self.assertEqual(len(violations), len(expected), violations)
        for pattern, violation in zip(expected, violations):
            self.assertRegex(violation, pattern)
        return violations

    def test_durable(self):
        """
        A message written, synced, renamed, its directory synced, then
        acknowledged: no violation, and its syncs counted.
        """
        trace = _Trace()
        trace.committed(ID, 0)
        trace.acknowledged(ID, 0.004)
        report = trace.check()
        self.assertEqual(report.violations, [])
        self.assertEqual([a.queueID for a in report.acknowledgements], [ID])
        self.assertEqual(report.summary(), {
            "acknowledged": 1, "messagesByFileSyncs": {1: 1}, "directorySyncs": 1, "stateSyncs": 0,
            "syncsPerMessage": 2.0, "violations": 0,
        })  # fmt: skip

    def test_workersFile(self):
        """
        A worker's file, C{tmp/ID.worker2} while it is received, is the
        message's: written, synced and renamed into C{queue/ID}, it is
        durable.
        """
        trace = _Trace()
        trace.committed(ID, 0, suffix=".worker2")
        trace.acknowledged(ID, 0.004)
        report = trace.check()
        self.assertEqual((report.violations, report.fileSyncs), ([], {ID: 1}))

    def test_groupCommit(self):
        """
        Two messages of one batch (both written, both synced, both
        renamed, one sync of C{queue/}) with an C{fdatasync} for one, and
        a delivery state synced too: both durable; the state's sync is
        counted apart.
        """
        trace = _Trace()
        trace.written(ID, 0)
        trace.written(OTHER, 0.0001)
        trace.synced(ID, 0.0002, took=0.001)
        trace.synced(OTHER, 0.0013, took=0.0002, name="fdatasync")
        trace.renamed(ID, 0.0016)
        trace.renamed(OTHER, 0.0017)
        trace.call(0.0018, f"fsync(15<{SPOOL}/queue/{ID}.state.tmp>)")
        trace.directorySynced(0.0019)
        trace.acknowledged(OTHER, 0.003)
        trace.acknowledged(ID, 0.0031)
        report = trace.check()
        self.assertEqual(report.violations, [])
        self.assertEqual((report.fileSyncs, report.directorySyncs, report.stateSyncs), ({ID: 1, OTHER: 1}, 1, 1))
        self.assertEqual(report.summary()["syncsPerMessage"], 2.0)

    def test_acknowledgedBeforeFileSyncEnded(self):
        """
        A C{250} written while the file's sync ran (it had begun, it had
        not returned) breaks the rule, even with the rename and the sync
        of C{queue/} done.
        """
        trace = _Trace()
        trace.written(ID, 0)
        trace.renamed(ID, 0.0001)
        trace.directorySynced(0.0002)
        trace.synced(ID, 0.001, took=0.003)
        trace.acknowledged(ID, 0.0035)
        self.assertViolations(trace, rf"^{ID}: 250 written at .* no sync of its file began .*line 4 fsync 1700000000\.001000-1700000000\.004000")

    def test_acknowledgedBeforeFileSyncBegan(self):
        """
        A C{250} written before the file's sync began breaks the rule.
        """
        trace = _Trace()
        trace.written(ID, 0)
        trace.acknowledged(ID, 0.001)
        trace.synced(ID, 0.002)
        trace.renamed(ID, 0.005)
        trace.directorySynced(0.006)
        self.assertViolations(trace, "no sync of its file", "not renamed into queue/")

    def test_noDirectorySyncAfterRename(self):
        """
        The file synced and renamed, but C{queue/} synced only after the
        C{250} (or never): the rule is broken.
        """
        trace = _Trace()
        trace.written(ID, 0)
        trace.synced(ID, 0.0001)
        trace.renamed(ID, 0.003)
        trace.acknowledged(ID, 0.004)
        trace.directorySynced(0.005)
        self.assertViolations(trace, r"no sync of queue/ began after its rename returned \(1700000000\.004000, line 3\)")
        trace.lines.pop()
        self.assertViolations(trace, "no sync of queue/ began after its rename returned")

    def test_directorySyncBeganBeforeRename(self):
        """
        A sync of C{queue/} that began before the rename, or while it ran,
        does not make the rename durable, though it ended after it.
        """
        trace = _Trace()
        trace.written(ID, 0)
        trace.synced(ID, 0.0001)
        trace.directorySynced(0.0025, took=0.002)
        trace.renamed(ID, 0.003)
        trace.acknowledged(ID, 0.005)
        self.assertViolations(trace, "no sync of queue/ began after its rename returned .* line 3 fsync 1700000000.002500-1700000000.004500")

        overlapping = _Trace()
        overlapping.written(ID, 0)
        overlapping.synced(ID, 0.0001)
        overlapping.renamed(ID, 0.003, took=0.001)
        overlapping.directorySynced(0.0035)
        overlapping.acknowledged(ID, 0.005)
        self.assertViolations(overlapping, "no sync of queue/ began after its rename returned")

    def test_syncBeforeLastWrite(self):
        """
        A file written again after its sync is not durable by that sync;
        nor is a file written after the C{250}.
        """
        trace = _Trace()
        trace.written(ID, 0)
        trace.synced(ID, 0.0001)
        trace.written(ID, 0.0025)
        trace.renamed(ID, 0.003)
        trace.directorySynced(0.0032)
        trace.acknowledged(ID, 0.004)
        self.assertViolations(trace, r"no sync of its file began after its last write returned \(1700000000\.003000\)")

        after = _Trace()
        after.committed(ID, 0)
        after.acknowledged(ID, 0.004)
        after.written(ID, 0.005)
        after.directorySynced(0.006)
        self.assertViolations(after, r"last write returned \(1700000000\.006000\)")

    def test_unfinishedSyncResumedAfterAcknowledgement(self):
        """
        A file's sync cut by other threads' lines that returns after the
        C{250} was written (its C{<... resumed>} line after the write's)
        breaks the rule; the same sync returning before the C{250} does
        not.
        """

        def trace(resumedAt: float) -> _Trace:
            made = _Trace()
            made.written(ID, 0)
            made.renamed(ID, 0.0002)
            made.directorySynced(0.0004, took=0.0004)
            made.unfinished(0.001, f"fsync(13<{SPOOL}/tmp/{ID}>")
            made.acknowledged(ID, 0.003)
            made.resumed(resumedAt, "fsync", took=resumedAt - 0.001 - 0.00001)
            return made

        self.assertViolations(trace(0.005), "no sync of its file began")
        late = trace(0.002)
        late.lines[-2:] = late.lines[-1:] + late.lines[-2:-1]
        self.assertEqual(late.check().violations, [])

    def test_syncFailedOrNeverReturned(self):
        """
        A sync that failed, or that never returned (its process killed),
        did not make the file durable.
        """
        failed = _Trace()
        failed.written(ID, 0)
        failed.call(0.0001, f"fsync(13<{SPOOL}/tmp/{ID}>)", result="-1 EIO (Input/output error)")
        failed.renamed(ID, 0.003)
        failed.directorySynced(0.0032)
        failed.acknowledged(ID, 0.004)
        self.assertViolations(failed, "no sync of its file began .* = -1 EIO")

        killed = _Trace()
        killed.written(ID, 0)
        killed.renamed(ID, 0.0002)
        killed.directorySynced(0.0004)
        killed.unfinished(0.001, f"fsync(13<{SPOOL}/tmp/{ID}>")
        killed.acknowledged(ID, 0.003)
        self.assertViolations(killed, r"no sync of its file began .*-never = None")

    def test_unknownID(self):
        """
        A C{250} naming an id the trace has no file of breaks the rule,
        even when other messages were durable.
        """
        trace = _Trace()
        trace.committed(ID, 0)
        trace.acknowledged(ID, 0.004)
        trace.acknowledged("18c4bb6a5f2c0fffffffffff", 0.005)
        self.assertViolations(trace, "^18c4bb6a5f2c0fffffffffff: 250 written at 1700000000.005000 .*, but the trace has no file of that id$")

    def test_otherFilesNotTheMessage(self):
        """
        A sync of another file (its delivery state, another message, a
        file of that name elsewhere) is not a sync of the message's file,
        nor is a rename into another directory, under another name, or of
        another message's file its rename.
        """
        trace = _Trace()
        trace.written(ID, 0)
        trace.call(0.0001, f"fsync(15<{SPOOL}/queue/{ID}.state.tmp>)")
        trace.call(0.0002, f"fsync(16</elsewhere/tmp/{ID}>)")
        trace.synced(OTHER, 0.0003)
        trace.call(0.0004, f'rename("{SPOOL}/tmp/{ID}", "{SPOOL}/corrupt/{ID}")')
        trace.call(0.00041, f'rename("{SPOOL}/tmp/{ID}.worker1", "{SPOOL}/queue/{ID}.worker1")')
        trace.call(0.00042, f'rename("{SPOOL}/tmp/{OTHER}.worker1", "{SPOOL}/queue/{ID}")')
        trace.call(0.00043, f'rename("{SPOOL}/tmp/{ID}ab", "{SPOOL}/queue/{ID}ab")')
        trace.call(0.0005, 'rename("/elsewhere/tmp/x", "' + SPOOL + f'/queue/{ID}")')
        trace.directorySynced(0.001)
        trace.acknowledged(ID, 0.004)
        self.assertViolations(trace, "no sync of its file began", "not renamed into queue/")

    def test_clientsOnly(self):
        """
        Given the relay's port, only replies to its clients are
        acknowledgements: a C{queued as} line in what it sends on another
        connection (a message's text to a smart host) is not; every
        C{250 ... queued as} line of a write is one, and a line that is
        not a C{250} is none.
        """
        trace = _Trace()
        trace.committed(ID, 0)
        trace.committed(OTHER, 0.01)
        trace.acknowledged(ID, 0.02, port=4025)
        trace.call(
            0.03,
            f'sendto(9<TCPv6:[[::1]:{PORT}->[::1]:40000]>, "250 2.1.5 Ok\\r\\n250 2.0.0 Ok: queued as {OTHER}\\r\\n'
            f'451 4.3.0 queued as {ID}\\r\\n", 80, 0, NULL, 0)',
            "80",
            pid=REACTOR,
        )
        calls = parseTrace(trace.lines)
        self.assertEqual([a.queueID for a in findAcknowledgements(calls, PORT)], [OTHER])
        self.assertEqual([a.queueID for a in findAcknowledgements(calls)], [ID, OTHER])
        self.assertEqual(trace.check().violations, [])


# -- the real daemon, traced ------------------------------------------------------------

#: How many messages each traced relay takes in, from how many clients
#: at once; the seed of their contents.
MESSAGES = 100
CLIENTS = 6
SEED = 20261209

#: Seconds the load may take under strace.
LOAD_DEADLINE = 40

_QUEUED_AS = re.compile(rb"queued as ([0-9a-f]+)")


def requireStrace() -> str:
    """
    @return: the C{strace} program, once it has traced a process here as
        L{straceCommand} has it.
    @raise SkipTest: if strace is not installed, or cannot trace here (no
        C{ptrace} in a container, C{--seccomp-bpf} not known);
        L{FailTest} when peers are required.
    """
    strace = _peers.tool("strace")
    try:
        probe = subprocess.run(straceCommand(strace, os.devnull) + [sys.executable, "-c", "pass"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        _peers.missing(f"strace could not be run: {e}")
    if probe.returncode != 0:
        _peers.missing(f"strace cannot trace a process here: {probe.stderr.decode('utf-8', 'replace').strip()[-500:]}")
    return strace


class RequireStraceTests(SynchronousTestCase):
    """
    L{requireStrace} skips the traced tests where strace cannot trace, and
    fails them there when peers are required.
    """

    def setUp(self):
        refusal = "strace: test_ptrace_get_syscall_info: PTRACE_TRACEME: Operation not permitted"
        self.patch(_peers, "tool", lambda name: "/usr/bin/" + name)
        self.patch(sys.modules[__name__], "straceCommand", lambda strace, log: [sys.executable, "-c", f"import sys; sys.exit({refusal!r})"])

    def test_skipped(self):
        """
        Peers not required: the test is skipped, saying why.
        """
        self.patch(_peers, "required", lambda: False)
        skipped = self.assertRaises(SkipTest, requireStrace)
        self.assertIn("strace cannot trace a process here: strace: test_ptrace_get_syscall_info: PTRACE_TRACEME", str(skipped))

    def test_failedWhenRequired(self):
        """
        Peers required (C{MAILPROTO_REQUIRE_PEERS}): the test fails.
        """
        self.patch(_peers, "required", lambda: True)
        failed = self.assertRaises(FailTest, requireStrace)
        self.assertIn("Operation not permitted", str(failed))

    def test_traces(self):
        """
        A strace that traces: its path is given back.
        """
        self.patch(sys.modules[__name__], "straceCommand", lambda strace, log: [sys.executable, "-c", "pass"])
        self.assertEqual(requireStrace(), "/usr/bin/strace")


def _childOf(pid: int) -> int | None:
    """
    @return: the id of a live child process of C{pid}, or C{None}.
    """
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[0] not in (b"Z", b"X") and int(fields[1]) == pid:
            return int(name)
    return None


class TracedRelay(RelayProcess):
    """
    C{twistd mailrelay} run under C{strace} (L{straceCommand}), which
    follows the relay's every process (its workers too).  Signals go to
    the relay, not to strace, which ends as the relay does.
    """

    what = "twistd mailrelay under strace"

    @classmethod
    def spawnTraced(cls, testCase, strace: str, log: str, arguments: list[str], scratch: str) -> TracedRelay:
        """
        Start C{twistd mailrelay} with C{arguments} under C{strace}, tracing
        into C{log}; it is stopped when the test ends.
        """
        argv, env = relayCommand(arguments, scratch)
        relay = cls()
        relay._spawn(testCase, straceCommand(strace, log) + argv, env, scratch)
        return relay

    @property
    def relayPID(self) -> int | None:
        """
        The process id of the relay (its parent process with workers),
        or C{None} once it has ended.
        """
        return _childOf(self.process.pid) if self.running else None

    def _signal(self, name: str) -> None:
        pid = self.relayPID
        if pid is None:
            RelayProcess._signal(self, name)
            return
        try:
            os.kill(pid, getattr(signal, "SIG" + name))
        except ProcessLookupError:
            pass


class TracedRelayTests(WorkerHarness):
    """
    The real daemon under strace: every message it acknowledged was
    synced, renamed into C{queue/} and that directory synced, before the
    C{250}.
    """

    timeout = 90

    def setUp(self):
        self.strace = requireStrace()
        WorkerHarness.setUp(self)
        # The paths strace prints for descriptors are resolved; the
        # relay's own must be too, to compare.
        self.scratch = os.path.realpath(self.scratch)
        self.spool = os.path.join(self.scratch, "spool")
        self.trace = os.path.join(self.scratch, "strace.log")

    def startRelay(self, smartHostPort: int, *extra: str, port: int | None = None) -> TracedRelay:
        """
        Start the relay (as L{_RelayTestCase.startRelay
        <mailproto.test.test_operations._RelayTestCase.startRelay>}) under
        strace, tracing into L{trace}.
        """
        arguments = self.relayArguments(smartHostPort, *extra, port=port)
        return TracedRelay.spawnTraced(self, self.strace, self.trace, arguments, self.scratch)

    @defer.inlineCallbacks
    def traceLoad(self, workers: int):
        """
        Run the relay with C{--workers workers} under strace, send it
        L{MESSAGES} from L{CLIENTS} clients at once, wait until each is at
        the smart host, stop it, and check its trace.

        @return: a L{Deferred} firing with the L{DurabilityReport
            <mailproto.test._durability.DurabilityReport>}, and the
            process ids that wrote the C{250}s, by role: C{relay}, and
            with workers C{workers}.
        """
        smartHost = recordingSmartHost()
        smartHostPort = self.listenSmartHost(smartHost)
        if workers == 1:
            relay = self.startRelay(smartHostPort, "--workers", "1", "--shutdown-grace", "2s")
            self.relays.append(relay)
            yield relay.whenListening()
        else:
            relay = yield self.startWorkers(smartHostPort)
        processes = {"relay": relay.relayPID, "workers": set(workerProcesses(self.spool).values())}
        load = _CountedLoad(SEED, self.port, CLIENTS, total=MESSAGES)
        load.start()
        self.addCleanup(load.stop)
        yield waitUntil(load.finished, LOAD_DEADLINE, lambda: f"the load to end ({len(load.acknowledged)} acknowledged):\n{relay.text()[-3000:]}")
        self.assertEqual((len(load.acknowledged), load.refused, load.unanswered), (MESSAGES, {}, set()))
        yield waitUntil(
            lambda: set(arrivals(smartHost)) >= load.acknowledged and not spoolListing(self.spool)["queue"],
            SOON,
            lambda: f"all {MESSAGES} at the smart host ({len(arrivals(smartHost))} there):\n{relay.text()[-3000:]}",
        )
        yield relay.terminate()
        self.assertTrue(relay.stoppedCleanly, relay.text()[-3000:])
        self.assertNoTraceback(relay)

        report = checkDurability(parseTraceFile(self.trace), self.spool, self.port)
        self.assertEqual(report.violations[:10], [], f"{len(report.violations)} violations; the trace is {self.trace}")
        # Every 250 the clients saw, and no other, is in the trace.
        told = sorted(_QUEUED_AS.search(resp).group(1).decode("ascii") for code, resp in load.replies.values())
        self.assertEqual(sorted(a.queueID for a in report.acknowledgements), told)
        return report, processes

    @defer.inlineCallbacks
    def test_oneProcess(self):
        """
        With C{--workers 1}, the relay's one process takes the 100
        messages in: each C{250} it wrote came after its message's file
        was synced, renamed into C{queue/} and C{queue/} synced.
        """
        report, processes = yield self.traceLoad(1)
        self.assertEqual({a.call.pid for a in report.acknowledgements}, {processes["relay"]})
        self.assertEqual(processes["workers"], set())
        self.writeReport("--workers 1 under strace", report.summary())

    @defer.inlineCallbacks
    def test_twoWorkers(self):
        """
        With C{--workers 2}, the two worker processes take the 100
        messages in (each some), and the same holds for each C{250} they
        wrote: their parent wrote none.
        """
        report, processes = yield self.traceLoad(2)
        self.assertEqual(len(processes["workers"]), 2, processes)
        self.assertEqual({a.call.pid for a in report.acknowledgements}, processes["workers"])
        self.assertNotIn(processes["relay"], processes["workers"])
        summary = report.summary()
        summary["acknowledgedByWorker"] = sorted(sum(1 for a in report.acknowledgements if a.call.pid == pid) for pid in processes["workers"])
        self.writeReport("--workers 2 under strace", summary)
