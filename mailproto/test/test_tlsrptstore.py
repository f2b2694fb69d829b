# -*- test-case-name: mailproto.test.test_tlsrptstore -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._security._tlsrptstore}: the values of SMTP TLS
Reporting (RFC 8460) and the store that counts sessions per day and keeps
the counts on disk.

The sessions and policies defined here (L{STS}, L{EXPIRED}, ...) and
L{newStore} are shared with the tests of the report and the reporter.
"""

from __future__ import annotations

import calendar
import json
import os
import stat

from twisted.internet import task
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailproto._security._tlsrptstore import (
    OVERFLOW_REASON,
    RESULT_TYPES,
    PolicyDescription,
    PolicyEntry,
    SessionResult,
    TLSReportStore,
)

DAY = "2024-03-10"
DAY_START = calendar.timegm((2024, 3, 10, 0, 0, 0))
NEXT_DAY = "2024-03-11"

STS = PolicyDescription(
    "sts",
    ["version: STSv1", "mode: enforce", "mx: mx1.example.com", "max_age: 86400"],
    "Example.COM.",
    ["MX1.example.com."],
)
NONE = PolicyDescription("no-policy-found", (), "example.net", ())
OK = SessionResult(True)
EXPIRED = SessionResult(
    False,
    "certificate-expired",
    sendingIP="192.0.2.1",
    receivingMX="mx1.example.com",
    receivingIP="2001:DB8:0:0::25",
    receivingHelo="mx1.example.com",
    additional="https://reports.example/details/1",
    reasonCode="X509_V_ERR_CERT_HAS_EXPIRED",
)
NO_STARTTLS = SessionResult(False, "starttls-not-supported", sendingIP="192.0.2.1", receivingMX="mx1.example.com", receivingIP="198.51.100.25")


def newStore(testCase, clock, directory=None, **kw):
    """
    @return: a store on a new directory (or C{directory}) closed at the
        test's end.
    """
    if directory is None:
        directory = testCase.mktemp()
    store = TLSReportStore(directory, clock, **kw)
    testCase.addCleanup(store.close)
    return store


class ValueTests(SynchronousTestCase):
    """
    L{PolicyDescription} and L{SessionResult} check and normalize what they
    are given.
    """

    def test_policyNormalized(self):
        """
        The domain is lower case, without its final dot; sequences become
        tuples; mx-host patterns are lower case.
        """
        self.assertEqual(STS.domain, "example.com")
        self.assertEqual(STS.mxHosts, ("mx1.example.com",))
        self.assertEqual(STS.strings[0], "version: STSv1")
        self.assertIsInstance(STS.strings, tuple)
        self.assertEqual(hash(STS), hash(PolicyDescription("sts", tuple(STS.strings), "example.com", ("mx1.example.com",))))

    def test_policyInternationalized(self):
        """
        An internationalized policy domain is kept in A-labels.
        """
        self.assertEqual(PolicyDescription("no-policy-found", (), "bücher.example", ()).domain, "xn--bcher-kva.example")

    def test_policyRejected(self):
        """
        An unknown policy type, an empty domain, and a single string for a
        sequence are refused.
        """
        self.assertRaises(ValueError, PolicyDescription, "dane", (), "example.com", ())
        self.assertRaises(ValueError, PolicyDescription, "sts", (), "", ())
        self.assertRaises(ValueError, PolicyDescription, "sts", "version: STSv1", "example.com", ())
        self.assertRaises(ValueError, PolicyDescription, "sts", (), "example.com", [b"mx.example.com"])

    def test_resultTypes(self):
        """
        The result types are exactly those of RFC 8460 section 4.3, and a
        failure of each can be made.
        """
        self.assertEqual(
            RESULT_TYPES,
            {
                "starttls-not-supported",
                "certificate-host-mismatch",
                "certificate-expired",
                "certificate-not-trusted",
                "validation-failure",
                "tlsa-invalid",
                "dnssec-invalid",
                "dane-required",
                "sts-policy-fetch-error",
                "sts-policy-invalid",
                "sts-webpki-invalid",
            },
        )
        for resultType in RESULT_TYPES:
            self.assertEqual(SessionResult(False, resultType).resultType, resultType)

    def test_resultRejected(self):
        """
        An unknown result type, a failure without one, a success with one,
        a bad address and an additional information that is no URI are
        refused.
        """
        self.assertRaises(ValueError, SessionResult, False, "certificate-revoked")
        self.assertRaises(ValueError, SessionResult, False)
        self.assertRaises(ValueError, SessionResult, True, "certificate-expired")
        self.assertRaises(ValueError, SessionResult, 1)
        self.assertRaises(ValueError, SessionResult, False, "certificate-expired", sendingIP="192.0.2.300")
        self.assertRaises(ValueError, SessionResult, False, "certificate-expired", receivingIP="mx.example.com")
        self.assertRaises(ValueError, SessionResult, False, "certificate-expired", additional="no uri")

    def test_resultNormalized(self):
        """
        Addresses are in canonical form, the MX name lower case without
        its final dot, and long text is cut.
        """
        result = SessionResult(
            False, "validation-failure", receivingIP="2001:DB8:0:0:0:0:0:25", receivingMX="MX.Example.COM.", receivingHelo="h" * 1000, reasonCode=""
        )
        self.assertEqual(result.receivingIP, "2001:db8::25")
        self.assertEqual(result.receivingMX, "mx.example.com")
        self.assertEqual(result.receivingHelo, "h" * 255)
        self.assertIsNone(result.reasonCode)


class StoreTests(TestCase):
    """
    L{TLSReportStore} counts sessions per day, domain and policy, within
    limits, and keeps them on disk.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(DAY_START + 12 * 3600)

    def test_counts(self):
        """
        Successes are counted per policy; failures per group of all their
        fields, largest group first; domains apart.
        """
        store = newStore(self, self.clock)
        for result in [OK, OK, EXPIRED, NO_STARTTLS, EXPIRED, OK]:
            store.record(STS, result)
        store.record(NONE, OK)
        other = SessionResult(False, "certificate-expired", sendingIP="192.0.2.2")
        store.record(STS, other)
        self.assertEqual(store.days(), [DAY])
        self.assertEqual(store.domains(DAY), ["example.com", "example.net"])
        self.assertEqual(
            store.entries(DAY),
            [
                PolicyEntry(STS, 3, ((EXPIRED, 2), (other, 1), (NO_STARTTLS, 1))),
                PolicyEntry(NONE, 1, ()),
            ],
        )
        self.assertEqual(store.entries(DAY, "example.net"), [PolicyEntry(NONE, 1, ())])
        self.assertEqual(store.entries(DAY)[0].failureCount, 4)
        self.assertEqual(store.stats["recorded"], 8)

    def test_policiesApart(self):
        """
        Two policies of one domain are counted apart.
        """
        store = newStore(self, self.clock)
        testing = PolicyDescription("sts", ["version: STSv1", "mode: testing"], "example.com", ["mx1.example.com"])
        store.record(STS, OK)
        store.record(testing, OK)
        store.record(testing, OK)
        self.assertEqual(sorted((e.policy.strings[1], e.successes) for e in store.entries(DAY)), [("mode: enforce", 1), ("mode: testing", 2)])

    def test_failureGroupLimit(self):
        """
        Past C{maxFailureGroups} distinct groups, a new failure is counted
        in its result type's overflow group; known groups still count;
        totals stay exact.
        """
        store = newStore(self, self.clock, maxFailureGroups=3)
        failures = [SessionResult(False, "certificate-expired", sendingIP=f"192.0.2.{i}") for i in range(1, 6)]
        failures += [SessionResult(False, "dane-required", sendingIP=f"192.0.2.{i}") for i in range(1, 3)]
        for failure in failures:
            store.record(STS, failure)
        store.record(STS, failures[0])
        [entry] = store.entries(DAY)
        self.assertEqual(entry.failureCount, 8)
        groups = dict(entry.failures)
        self.assertEqual(groups[failures[0]], 2)
        self.assertEqual(groups[failures[1]], 1)
        self.assertEqual(groups[failures[2]], 1)
        self.assertEqual(groups[SessionResult(False, "certificate-expired", reasonCode=OVERFLOW_REASON)], 2)
        self.assertEqual(groups[SessionResult(False, "dane-required", reasonCode=OVERFLOW_REASON)], 2)
        self.assertEqual(len(groups), 5)
        self.assertEqual(store.stats["overflowed"], 4)

    def test_policyLimit(self):
        """
        Past C{maxPolicies} (domain, policy) pairs in a day, sessions under
        a new one are not counted; known ones still are.
        """
        store = newStore(self, self.clock, maxPolicies=2)
        store.record(STS, OK)
        store.record(NONE, OK)
        store.record(PolicyDescription("no-policy-found", (), "example.org", ()), OK)
        store.record(STS, OK)
        self.assertEqual(store.domains(DAY), ["example.com", "example.net"])
        self.assertEqual(store.stats["policies-dropped"], 1)
        self.assertEqual(store.entries(DAY, "example.com")[0].successes, 2)

    def test_dayRollOver(self):
        """
        A session is counted under the UTC day it happened: one second
        before midnight and one second after are two days.
        """
        self.clock.advance(12 * 3600 - 1)
        store = newStore(self, self.clock)
        store.record(STS, OK)
        self.clock.advance(2)
        self.assertEqual(store.currentDay(), NEXT_DAY)
        store.record(STS, EXPIRED)
        self.assertEqual(store.days(), [DAY, NEXT_DAY])
        self.assertEqual(store.entries(DAY), [PolicyEntry(STS, 1, ())])
        self.assertEqual(store.entries(NEXT_DAY), [PolicyEntry(STS, 0, ((EXPIRED, 1),))])

    def test_flushInterval(self):
        """
        Counts are written at most every C{flushInterval} seconds after a
        change: a file per day, 0600, in a 0700 directory, no temporary
        file left.
        """
        directory = self.mktemp()
        store = newStore(self, self.clock, directory, flushInterval=60)
        path = os.path.join(directory, f"{DAY}.json")
        store.record(STS, OK)
        self.clock.advance(59)
        self.assertFalse(os.path.exists(path))
        self.clock.advance(1)
        self.assertTrue(os.path.exists(path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual(os.listdir(directory), [f"{DAY}.json"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        store.record(STS, EXPIRED)
        self.assertEqual(TLSReportStore(directory, self.clock).entries(DAY), [PolicyEntry(STS, 1, ())])
        self.clock.advance(60)
        self.assertEqual(TLSReportStore(directory, self.clock).entries(DAY), [PolicyEntry(STS, 1, ((EXPIRED, 1),))])

    def test_atomicWrite(self):
        """
        A day file is written to a temporary file, which is C{fsync}ed,
        then renamed over the day file, then the directory is C{fsync}ed.
        """
        directory = self.mktemp()
        store = newStore(self, self.clock, directory)
        store.record(STS, OK)
        steps = []
        realFsync, realReplace = os.fsync, os.replace

        def fsync(fd):
            steps.append(("fsync", os.fstat(fd).st_ino))
            realFsync(fd)

        def replace(source, target):
            steps.append(("replace", os.stat(source).st_ino, os.path.basename(target)))
            realReplace(source, target)

        self.patch(os, "fsync", fsync)
        self.patch(os, "replace", replace)
        store.flush()
        fileInode = os.stat(os.path.join(directory, f"{DAY}.json")).st_ino
        directoryInode = os.stat(directory).st_ino
        self.assertEqual(steps, [("fsync", fileInode), ("replace", fileInode, f"{DAY}.json"), ("fsync", directoryInode)])

    def test_durable(self):
        """
        C{close} writes at once; a new store on the directory has the same
        entries and goes on counting in the same groups.
        """
        directory = self.mktemp()
        store = TLSReportStore(directory, self.clock)
        for result in [OK, EXPIRED, EXPIRED, NO_STARTTLS]:
            store.record(STS, result)
        store.record(NONE, OK)
        before = store.entries(DAY)
        store.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        again = newStore(self, self.clock, directory)
        self.assertEqual(again.entries(DAY), before)
        again.record(STS, EXPIRED)
        self.assertEqual(dict(again.entries(DAY, "example.com")[0].failures)[EXPIRED], 3)
        self.assertEqual(len(again.entries(DAY, "example.com")[0].failures), 2)

    def test_temporaryFilesRemoved(self):
        """
        A temporary file left by a crash while writing is removed; the day
        file it would have replaced is read.
        """
        directory = self.mktemp()
        store = TLSReportStore(directory, self.clock)
        store.record(STS, OK)
        store.close()
        with open(os.path.join(directory, f".tmp-{DAY}.json"), "w") as f:
            f.write('{"version": 1, "da')
        again = newStore(self, self.clock, directory)
        self.assertEqual(again.entries(DAY), [PolicyEntry(STS, 1, ())])
        self.assertEqual(sorted(os.listdir(directory)), [f"{DAY}.json"])

    def test_looseDirectoryTightened(self):
        """
        A directory other users can read is made 0700.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        os.chmod(directory, 0o755)
        with capturedLogs() as events:
            newStore(self, self.clock, directory)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual(len(events), 1)

    def assertSetAside(self, content: bytes):
        """
        A day file holding C{content} is moved to C{corrupt/} with one log
        line; the other days are read.
        """
        directory = self.mktemp()
        store = TLSReportStore(directory, self.clock)
        store.record(STS, OK)
        store.close()
        bad = os.path.join(directory, "2024-03-09.json")
        with open(bad, "wb") as f:
            f.write(content)
        with capturedLogs() as events:
            again = newStore(self, self.clock, directory)
        self.assertEqual(again.days(), [DAY])
        self.assertFalse(os.path.exists(bad))
        with open(os.path.join(directory, "corrupt", "2024-03-09.json"), "rb") as f:
            self.assertEqual(f.read(), content)
        self.assertEqual(len(events), 1)
        self.assertIn("2024-03-09.json", events[0]["log_format"].format(**events[0]))
        self.assertEqual(again.stats["corrupt-files"], 1)

    def test_corruptNotJSON(self):
        self.assertSetAside(b'{"version": 1, "day": "2024-03-09", "poli')

    def test_corruptNotUTF8(self):
        self.assertSetAside(b"\xff\xfe{}")

    def test_corruptWrongShape(self):
        self.assertSetAside(b'[1, 2, 3]')

    def test_corruptWrongDay(self):
        self.assertSetAside(b'{"version": 1, "day": "2024-03-08", "policies": []}')

    def test_corruptUnknownResultType(self):
        policy = {"type": "sts", "strings": [], "domain": "example.com", "mxHosts": [], "successes": 1}
        policy["failures"] = [{"resultType": "certificate-revoked", "count": 1}]
        self.assertSetAside(json.dumps({"version": 1, "day": "2024-03-09", "policies": [policy]}).encode())

    def test_corruptNegativeCount(self):
        policy = {"type": "sts", "strings": [], "domain": "example.com", "mxHosts": [], "successes": -1, "failures": []}
        self.assertSetAside(json.dumps({"version": 1, "day": "2024-03-09", "policies": [policy]}).encode())

    def test_corruptTwiceSetAside(self):
        """
        A second unreadable file of the same name does not replace the
        first one set aside.
        """
        directory = self.mktemp()
        for content in [b"one", b"two"]:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f"{DAY}.json"), "wb") as f:
                f.write(content)
            TLSReportStore(directory, self.clock).close()
        kept = []
        for name in os.listdir(os.path.join(directory, "corrupt")):
            with open(os.path.join(directory, "corrupt", name), "rb") as f:
                kept.append(f.read())
        self.assertEqual(sorted(kept), [b"one", b"two"])

    def test_forget(self):
        """
        C{forget(day, domain)} drops one domain of a day, C{forget(day)} the
        whole day; the next flush writes it, removing the file of an empty
        day.
        """
        directory = self.mktemp()
        store = newStore(self, self.clock, directory)
        store.record(STS, OK)
        store.record(NONE, OK)
        store.flush()
        store.forget(DAY, "example.com")
        self.assertEqual(store.domains(DAY), ["example.net"])
        store.flush()
        self.assertEqual(TLSReportStore(directory, self.clock).domains(DAY), ["example.net"])
        store.forget(DAY)
        self.assertEqual(store.days(), [])
        store.forget("2024-01-01")
        self.clock.advance(60)
        self.assertEqual(os.listdir(directory), [])

    def test_flushFailure(self):
        """
        A day that cannot be written is logged, kept, and written at a
        later flush.
        """
        directory = self.mktemp()
        store = newStore(self, self.clock, directory)
        os.rename(directory, directory + ".away")
        with open(directory, "w"):
            pass
        store.record(STS, OK)
        with capturedLogs() as events:
            self.assertFalse(store.flush())
        self.assertEqual(len(events), 1)
        self.assertEqual(store.stats["flush-errors"], 1)
        os.unlink(directory)
        os.rename(directory + ".away", directory)
        self.clock.advance(60)
        self.assertEqual(TLSReportStore(directory, self.clock).entries(DAY), [PolicyEntry(STS, 1, ())])
