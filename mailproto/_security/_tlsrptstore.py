# -*- test-case-name: mailproto.test.test_tlsrptstore -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
SMTP TLS Reporting (RFC 8460), the counting: the values that describe an
outbound TLS session and the policy it ran under, and L{TLSReportStore},
which counts those sessions per UTC day and keeps the counts on disk.

This is the first of three modules.  The relay records every outbound
session here; L{mailproto._security._tlsrptreport} turns one day's counts
of one policy domain into a report and the email that carries it, and
finds where the domain wants it; L{mailproto._security._tlsreporter} sends
the reports every day and tells the store what it may forget.

Counting: for each outbound session the relay calls
L{TLSReportStore.record} with the policy it applied (a
L{PolicyDescription}: MTA-STS C{"sts"}, DANE C{"tlsa"}, or
C{"no-policy-found"}) and the outcome (a L{SessionResult}).  The store
counts it under the current UTC day (L{dayOf}), the policy's domain and
the policy: successful sessions, and failures grouped by everything a
failure detail of the report holds (result type, sending IP, receiving
MX, HELO and IP, additional information, reason code).  Once a day's
report of a domain was handed over, the domain's data for that day is
forgotten (L{TLSReportStore.forget}).

Durability: the store keeps its counts in memory and writes each UTC day
it changed to its own file, C{YYYY-MM-DD.json} in its directory, at most
every L{TLSReportStore.flushInterval} seconds and on
L{TLSReportStore.close}.  A file is written whole to a temporary file,
C{fsync}ed, renamed over the old one and the directory C{fsync}ed, so a
crash leaves either the old counts or the new ones, never a torn file.  A
crash loses at most the sessions of the last flush interval (reports are
statistics: an undercount is harmless).  A new store on the same
directory reads the day files back and goes on counting; a file that
cannot be read is moved to C{corrupt/} with one log line.  The directory
is made 0700 and the files 0600: the reports name the peers the relay
talked to.  A day forgotten after it was reported but not yet flushed
when the process stops is reported again after a restart, with the same
report-id (L{makeReportID
<mailproto._security._tlsrptreport.makeReportID>}), so the receiver can
recognise the duplicate.

Memory: each policy keeps at most L{TLSReportStore.maxFailureGroups}
distinct failure groups (100 by default).  A failure that would start
another group is counted instead in an overflow group of its result type
alone, with the failure-reason-code L{OVERFLOW_REASON} and no other
field, so that the summary's totals stay exact; there are at most as many
overflow groups as result types.  A day keeps at most
L{TLSReportStore.maxPolicies} distinct (domain, policy) pairs; sessions
under further ones are not counted (C{stats["policies-dropped"]}).  Long
text (HELO names, reason codes) is cut to L{MAX_TEXT} characters.
"""

from __future__ import annotations

import calendar
import collections
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable

from twisted.logger import Logger

_log = Logger(namespace="mailproto.tlsrpt")
"""The store's events share one namespace with the reporter's: that of TLS
reporting as a whole."""

RESULT_TYPES = frozenset(
    {
        # Negotiation failures, RFC 8460 section 4.3.1.
        "starttls-not-supported",
        "certificate-host-mismatch",
        "certificate-expired",
        "certificate-not-trusted",
        "validation-failure",
        # Policy failures: DANE (section 4.3.2.1) and MTA-STS (4.3.2.2).
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    }
)
"""The result types of a failed session (RFC 8460 section 4.3)."""

POLICY_TYPES = frozenset({"sts", "tlsa", "no-policy-found"})
"""The policy types (RFC 8460 section 4.4): MTA-STS, DANE, or none."""

OVERFLOW_REASON = "other failures of this type, details not kept"
"""The failure-reason-code of a failure group that counts the failures
beyond L{TLSReportStore.maxFailureGroups}."""

MAX_TEXT = 255
"""The most characters kept of a HELO name or a failure reason code."""

MAX_URI = 2048
"""The longest additional-information URI accepted."""

FILE_VERSION = 1
"""The version of a day file's format."""

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DAYFILE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})\.json")
_TMP_PREFIX = ".tmp-"


def normalizeDomain(name: str) -> str:
    """
    A domain name as the reports give it.

    @return: C{name} in lower case, without a final dot, internationalized
        labels converted to A-labels.
    @raise ValueError: if C{name} is empty or cannot be a domain name.
    """
    if not isinstance(name, str):
        raise ValueError(f"a domain name must be text: {name!r}")
    name = name.strip().lower().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a valid internationalized domain name: {name!r}") from None
    if not name:
        raise ValueError("empty domain name")
    return name


def _normalizeIP(address: str | None) -> str | None:
    """
    @return: C{address} in its canonical text form (RFC 5952 for IPv6),
        or C{None} for C{None}.
    @raise ValueError: if C{address} is not an IP address.
    """
    if address is None:
        return None
    return str(ipaddress.ip_address(address))


def _text(value: str | None, what: str) -> str | None:
    """
    @return: C{value} cut to L{MAX_TEXT} characters, or C{None} for
        C{None} or empty text.
    @raise ValueError: if C{value} is not text.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text: {value!r}")
    return value[:MAX_TEXT] or None


def _strings(values: Iterable[str], what: str) -> tuple[str, ...]:
    """
    @return: C{values} as a tuple of text.
    @raise ValueError: if C{values} is a single string or holds anything
        but text.
    """
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} must be a sequence of strings, not one string")
    values = tuple(values)
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{what} must hold only text: {values!r}")
    return values


@dataclasses.dataclass(frozen=True)
class PolicyDescription:
    """
    The TLS policy the relay applied to a session (RFC 8460 section 4.4,
    C{"policy"}).

    @ivar type: the policy type, one of L{POLICY_TYPES}: C{"sts"}
        (MTA-STS), C{"tlsa"} (DANE) or C{"no-policy-found"}.
    @ivar strings: the policy-string: for MTA-STS the lines of the policy
        text (C{"version: STSv1"}, C{"mode: enforce"}, ...), for DANE the
        TLSA records in presentation form; empty for no policy.
    @ivar domain: the policy domain: the recipient domain for MTA-STS and
        no policy, the MX host for DANE.  Normalized: lower case, A-labels,
        no final dot.
    @ivar mxHosts: the mx-host patterns of the policy (C{"mx1.example.com"},
        C{"*.example.net"}); may be empty.
    """

    type: str
    strings: tuple[str, ...]
    domain: str
    mxHosts: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.type not in POLICY_TYPES:
            raise ValueError(f"unknown policy type {self.type!r}")
        object.__setattr__(self, "strings", _strings(self.strings, "policy strings"))
        object.__setattr__(self, "domain", normalizeDomain(self.domain))
        hosts = _strings(self.mxHosts, "mx-host patterns")
        object.__setattr__(self, "mxHosts", tuple(h.lower().rstrip(".") for h in hosts))


@dataclasses.dataclass(frozen=True)
class SessionResult:
    """
    The outcome of one outbound session under a policy.

    A failure is identified, for counting, by all its fields together: two
    failures that differ in any field are two failure details of the
    report.

    @ivar success: whether TLS was negotiated and the policy satisfied.
    @ivar resultType: for a failure, one of L{RESULT_TYPES}; C{None} for a
        success.
    @ivar sendingIP: the relay's own address of the session
        (sending-mta-ip), if known.
    @ivar receivingMX: the MX host name tried (receiving-mx-hostname).
    @ivar receivingIP: the address connected to (receiving-ip).
    @ivar receivingHelo: the name the server gave in its EHLO reply
        (receiving-mx-helo).
    @ivar additional: a URI with more information (additional-information).
    @ivar reasonCode: a TLS error code or message (failure-reason-code).
    """

    success: bool
    resultType: str | None = None
    sendingIP: str | None = None
    receivingMX: str | None = None
    receivingIP: str | None = None
    receivingHelo: str | None = None
    additional: str | None = None
    reasonCode: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.success, bool):
            raise ValueError(f"success must be a bool: {self.success!r}")
        if self.success and self.resultType is not None:
            raise ValueError("a successful session has no result type")
        if not self.success and self.resultType not in RESULT_TYPES:
            raise ValueError(f"unknown result type {self.resultType!r}")
        object.__setattr__(self, "sendingIP", _normalizeIP(self.sendingIP))
        object.__setattr__(self, "receivingIP", _normalizeIP(self.receivingIP))
        if self.receivingMX is not None:
            object.__setattr__(self, "receivingMX", normalizeDomain(self.receivingMX))
        object.__setattr__(self, "receivingHelo", _text(self.receivingHelo, "receivingHelo"))
        object.__setattr__(self, "reasonCode", _text(self.reasonCode, "reasonCode"))
        if self.additional is not None and (
            not isinstance(self.additional, str) or len(self.additional) > MAX_URI or ":" not in self.additional
        ):
            raise ValueError(f"additional information must be a URI: {self.additional!r}")


@dataclasses.dataclass(frozen=True)
class PolicyEntry:
    """
    What a store counted for one policy on one day.

    @ivar policy: the policy.
    @ivar successes: the number of successful sessions.
    @ivar failures: each failure group (a failed L{SessionResult}) with its
        number of sessions, largest first.
    """

    policy: PolicyDescription
    successes: int
    failures: tuple[tuple[SessionResult, int], ...]

    @property
    def failureCount(self) -> int:
        """
        The number of failed sessions.
        """
        return sum(count for _, count in self.failures)


class _Counts:
    """
    The counts of one policy on one day, as a store keeps them.

    @ivar successes: successful sessions.
    @ivar failures: sessions per failure group.
    """

    __slots__ = ("successes", "failures")

    def __init__(self) -> None:
        self.successes = 0
        self.failures: dict[SessionResult, int] = {}


def dayOf(seconds: float) -> str:
    """
    @param seconds: a POSIX time.
    @return: its UTC day, C{"YYYY-MM-DD"}.
    """
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def dayStart(day: str | datetime.date) -> int:
    """
    When a UTC day begins.

    @return: the POSIX time of 00:00:00 UTC of C{day}.
    @raise ValueError: if C{day} is not a day C{"YYYY-MM-DD"}.
    """
    if isinstance(day, datetime.date):
        day = day.isoformat()
    if not isinstance(day, str) or not _DAY.fullmatch(day):
        raise ValueError(f"not a day: {day!r}")
    return calendar.timegm(datetime.date.fromisoformat(day).timetuple())


def daysBetween(earlier: str, later: str) -> int:
    """
    How far apart two UTC days are.

    @return: how many days C{later} is after C{earlier}.
    """
    return (dayStart(later) - dayStart(earlier)) // 86400


def _fsyncDirectory(path: str) -> None:
    """
    Make the entries of directory C{path} durable.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _resultToData(result: SessionResult, count: int) -> dict:
    """
    @return: a failure group as it is written in a day file.
    """
    data = {k: v for k, v in dataclasses.asdict(result).items() if v is not None and k != "success"}
    data["count"] = count
    return data


def _entryFromData(data: dict) -> tuple[PolicyDescription, _Counts]:
    """
    Read one policy of a day file back.

    @raise ValueError: for anything but what L{TLSReportStore} writes.
    """
    policy = PolicyDescription(data["type"], data["strings"], data["domain"], data["mxHosts"])
    counts = _Counts()
    counts.successes = _count(data["successes"])
    for failure in data["failures"]:
        failure = dict(failure)
        count = _count(failure.pop("count"))
        result = SessionResult(False, **failure)
        counts.failures[result] = counts.failures.get(result, 0) + count
    return policy, counts


def _count(value) -> int:
    """
    @return: C{value}, if it is a count.
    @raise ValueError: otherwise.
    """
    if type(value) is not int or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value



class TLSReportStore:
    """
    The outcome of every outbound TLS session, counted per UTC day, policy
    domain and policy, kept in a directory (see the module's docstring for
    the limits and the durability).

    @ivar directory: the directory of the day files.
    @ivar flushInterval: the most seconds a recorded session stays only in
        memory.
    @ivar maxFailureGroups: the most distinct failure groups per policy
        and day, overflow groups aside.
    @ivar maxPolicies: the most distinct (domain, policy) pairs per day.
    @ivar stats: counters: C{"recorded"}, C{"overflowed"} (failures counted
        in an overflow group), C{"policies-dropped"}, C{"corrupt-files"},
        C{"flush-errors"}.
    """

    _log = _log

    def __init__(
        self,
        directory: str,
        clock=None,
        *,
        flushInterval: float = 60,
        maxFailureGroups: int = 100,
        maxPolicies: int = 10000,
    ) -> None:
        """
        Open the store, reading back the days it holds.

        @param directory: where the day files are; made (0700) if missing.
        @param clock: the C{IReactorTime} that gives the time (and so the
            day) and schedules flushes; the reactor if C{None}.
        @param flushInterval: see L{flushInterval}.
        @param maxFailureGroups: see L{maxFailureGroups}.
        @param maxPolicies: see L{maxPolicies}.
        @raise OSError: if the directory cannot be made or read.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.directory = os.path.abspath(directory)
        self.flushInterval = flushInterval
        self.maxFailureGroups = maxFailureGroups
        self.maxPolicies = maxPolicies
        self.stats: collections.Counter = collections.Counter()
        self._clock = clock
        self._days: dict[str, dict[str, dict[PolicyDescription, _Counts]]] = {}
        self._sizes: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._flushCall = None
        self._prepareDirectory()
        self._load()

    def _prepareDirectory(self) -> None:
        """
        Make the directory, private, and remove temporary files a crash
        left.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        mode = stat.S_IMODE(os.stat(self.directory).st_mode)
        if mode & 0o077:
            os.chmod(self.directory, 0o700)
            self._log.warn("TLS report directory {directory} was mode {mode:o}; made 0700", directory=self.directory, mode=mode)
        for name in os.listdir(self.directory):
            if name.startswith(_TMP_PREFIX):
                os.unlink(os.path.join(self.directory, name))

    def _load(self) -> None:
        """
        Read every day file back; set aside those that cannot be read.
        """
        for name in sorted(os.listdir(self.directory)):
            match = _DAYFILE.fullmatch(name)
            if match is None:
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    self._days[match.group(1)] = self._readDay(match.group(1), json.load(f))
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
                self._setAside(name, e)
        for day, domains in self._days.items():
            self._sizes[day] = sum(len(policies) for policies in domains.values())

    def _readDay(self, day: str, data) -> dict[str, dict[PolicyDescription, _Counts]]:
        """
        @return: the counts of a day file's data.
        @raise ValueError: if the data is not what L{_writeDay} writes.
        """
        if data.get("version") != FILE_VERSION or data.get("day") != day:
            raise ValueError(f"not a version {FILE_VERSION} file of day {day}")
        domains: dict[str, dict[PolicyDescription, _Counts]] = {}
        for item in data["policies"]:
            policy, counts = _entryFromData(item)
            if policy in domains.get(policy.domain, {}):
                raise ValueError(f"policy {policy!r} twice")
            domains.setdefault(policy.domain, {})[policy] = counts
        return domains

    def _setAside(self, name: str, reason: Exception) -> None:
        """
        Move day file C{name}, which could not be read, to C{corrupt/}.
        """
        corrupt = os.path.join(self.directory, "corrupt")
        os.makedirs(corrupt, mode=0o700, exist_ok=True)
        target = os.path.join(corrupt, name)
        while os.path.exists(target):
            target = os.path.join(corrupt, f"{name}.{secrets.token_hex(4)}")
        os.replace(os.path.join(self.directory, name), target)
        self.stats["corrupt-files"] += 1
        self._log.error("Unreadable TLS report file {name} set aside as {target}: {reason}", name=name, target=target, reason=reason)

    def currentDay(self) -> str:
        """
        @return: the UTC day sessions are counted under now, C{"YYYY-MM-DD"}.
        """
        return dayOf(self._clock.seconds())

    def record(self, policy: PolicyDescription, result: SessionResult) -> None:
        """
        Count one session under the current UTC day.

        @param policy: the policy applied.
        @param result: the session's outcome.
        """
        day = self.currentDay()
        domains = self._days.setdefault(day, {})
        policies = domains.setdefault(policy.domain, {})
        counts = policies.get(policy)
        if counts is None:
            if self._sizes.get(day, 0) >= self.maxPolicies:
                self.stats["policies-dropped"] += 1
                if not policies:
                    del domains[policy.domain]
                return
            counts = policies[policy] = _Counts()
            self._sizes[day] = self._sizes.get(day, 0) + 1
        if result.success:
            counts.successes += 1
        else:
            self._countFailure(counts, result)
        self.stats["recorded"] += 1
        self._dirty.add(day)
        if self._flushCall is None and self.flushInterval is not None:
            self._flushCall = self._clock.callLater(self.flushInterval, self._scheduledFlush)

    def _countFailure(self, counts: _Counts, result: SessionResult) -> None:
        """
        Count a failure in its group, or in its type's overflow group if
        there are too many groups already.
        """
        if result not in counts.failures and len(counts.failures) >= self.maxFailureGroups:
            result = SessionResult(False, result.resultType, reasonCode=OVERFLOW_REASON)
            self.stats["overflowed"] += 1
        counts.failures[result] = counts.failures.get(result, 0) + 1

    def days(self) -> list[str]:
        """
        @return: the days with counts, oldest first, C{"YYYY-MM-DD"}.
        """
        return sorted(day for day, domains in self._days.items() if domains)

    def domains(self, day: str) -> list[str]:
        """
        @return: the policy domains with counts on C{day}, sorted.
        """
        return sorted(self._days.get(day, {}))

    def entries(self, day: str, domain: str | None = None) -> list[PolicyEntry]:
        """
        @param day: a day, C{"YYYY-MM-DD"}.
        @param domain: only this policy domain's, if given.
        @return: what was counted on C{day}, one entry per policy, sorted
            by domain then policy.
        """
        result = []
        for name, policies in sorted(self._days.get(day, {}).items()):
            if domain is not None and name != domain:
                continue
            for policy, counts in policies.items():
                failures = sorted(counts.failures.items(), key=lambda item: (-item[1], _sortKey(item[0])))
                result.append(PolicyEntry(policy, counts.successes, tuple(failures)))
        result.sort(key=lambda e: (e.policy.domain, e.policy.type, e.policy.strings, e.policy.mxHosts))
        return result

    def forget(self, day: str, domain: str | None = None) -> None:
        """
        Drop what was counted on C{day} (only for C{domain}, if given),
        once it was reported.  Written at the next flush.
        """
        domains = self._days.get(day)
        if domains is None:
            return
        if domain is None:
            domains.clear()
        else:
            domains.pop(domain, None)
        self._sizes[day] = sum(len(policies) for policies in domains.values())
        self._dirty.add(day)
        if self._flushCall is None and self.flushInterval is not None:
            self._flushCall = self._clock.callLater(self.flushInterval, self._scheduledFlush)

    def _scheduledFlush(self) -> None:
        """
        The periodic flush, L{flushInterval} after the first change since
        the last one.
        """
        self._flushCall = None
        self.flush()

    def flush(self) -> bool:
        """
        Write every day changed since the last flush now.  A day that
        cannot be written is logged and tried again at the next flush.

        @return: whether every day was written.
        """
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        ok = True
        for day in sorted(self._dirty):
            try:
                self._writeDay(day)
            except OSError as e:
                ok = False
                self.stats["flush-errors"] += 1
                self._log.error("Cannot write TLS report file of {day}: {error}", day=day, error=e)
            else:
                self._dirty.discard(day)
        if self._dirty and self.flushInterval is not None:
            self._flushCall = self._clock.callLater(self.flushInterval, self._scheduledFlush)
        return ok

    def _writeDay(self, day: str) -> None:
        """
        Write C{day}'s file atomically, or remove it if the day has no
        counts left.
        """
        path = os.path.join(self.directory, f"{day}.json")
        domains = self._days.get(day)
        if not domains:
            self._days.pop(day, None)
            self._sizes.pop(day, None)
            if os.path.exists(path):
                os.unlink(path)
                _fsyncDirectory(self.directory)
            return
        policies = []
        for entry in self.entries(day):
            data = dataclasses.asdict(entry.policy)
            data["successes"] = entry.successes
            data["failures"] = [_resultToData(result, count) for result, count in entry.failures]
            policies.append(data)
        data = json.dumps({"version": FILE_VERSION, "day": day, "policies": policies}, separators=(",", ":"))
        temporary = os.path.join(self.directory, f"{_TMP_PREFIX}{day}.json")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        _fsyncDirectory(self.directory)

    def close(self) -> bool:
        """
        Write every changed day now and stop the periodic flush (a later
        L{record} starts it again).

        @return: as L{flush}.
        """
        ok = self.flush()
        if self._flushCall is not None:
            self._flushCall.cancel()
            self._flushCall = None
        return ok


def _sortKey(result: SessionResult) -> tuple:
    """
    @return: a key that orders failure groups by their fields.
    """
    return tuple("" if v is None else str(v) for v in dataclasses.astuple(result))

