# -*- test-case-name: mailproto.test.test_tlsrptreport -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
SMTP TLS Reporting (RFC 8460), the report: what one UTC day's counts of
one policy domain become, and where the domain wants them.

This is the second of three modules.  It takes the entries that
L{TLSReportStore.entries
<mailproto._security._tlsrptstore.TLSReportStore.entries>} gives for a day
and a domain and makes the report-id (L{makeReportID}), the same every
time the same report is sent, so that a receiver recognises a duplicate;
the aggregate report of RFC 8460 section 4.4 (L{buildReport}) and its
gzipped JSON (L{reportJSON}); the report's file name (L{reportFilename},
section 5.1); and the email that carries it (L{reportMessage}, section
5.3).  L{parseRUA} reads a domain's TLSRPT TXT record (section 3) and
L{lookupRUA} looks the record up at C{_smtp._tls.<domain>}.

Apart from that DNS lookup nothing here does I/O or keeps state: the
counts live in L{mailproto._security._tlsrptstore}, and
L{mailproto._security._tlsreporter} decides when a report is made and
hands it to each address.
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
import gzip
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Sequence
from email.message import EmailMessage, MIMEPart

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dnserror

from mailproto import _grammar
from mailproto._security._tlsrptstore import PolicyEntry, SessionResult, dayStart, normalizeDomain


def makeReportID(day: str, domain: str, submitter: str) -> str:
    """
    The report-id of the report of C{day} to C{domain}: the same every
    time that report is sent, so that a report sent again is recognised
    as a duplicate, and different for every other report of C{submitter}.
    It has the form of a message identifier's content (C{id-left "@"
    id-right}, RFC 5322), as the report message's subject (RFC 8460
    section 5.3) wants.

    @param day: the UTC day reported, C{"YYYY-MM-DD"}.
    @param domain: the policy domain.
    @param submitter: the submitter's domain name.
    @return: C{"YYYY-MM-DD.domain@submitter"}.
    """
    dayStart(day)
    return f"{day}.{normalizeDomain(domain)}@{normalizeDomain(submitter)}"


def _policyData(entry: PolicyEntry) -> dict:
    """
    @return: one element of a report's C{"policies"} (RFC 8460 section
        4.4), optional fields left out when they have no value.
    """
    policy = entry.policy
    data: dict = {"policy-type": policy.type}
    if policy.strings:
        data["policy-string"] = list(policy.strings)
    data["policy-domain"] = policy.domain
    if policy.mxHosts:
        data["mx-host"] = list(policy.mxHosts)
    result = {
        "policy": data,
        "summary": {
            "total-successful-session-count": entry.successes,
            "total-failure-session-count": entry.failureCount,
        },
    }
    if entry.failures:
        result["failure-details"] = [_failureData(failure, count) for failure, count in entry.failures]
    return result


def _failureData(failure: SessionResult, count: int) -> dict:
    """
    @return: one element of a report's C{"failure-details"}, fields
        without a value left out.
    """
    fields = [
        ("result-type", failure.resultType),
        ("sending-mta-ip", failure.sendingIP),
        ("receiving-mx-hostname", failure.receivingMX),
        ("receiving-mx-helo", failure.receivingHelo),
        ("receiving-ip", failure.receivingIP),
        ("failed-session-count", count),
        ("additional-information", failure.additional),
        ("failure-reason-code", failure.reasonCode),
    ]
    return {name: value for name, value in fields if value is not None}


def _rfc3339(seconds: int) -> str:
    """
    @return: POSIX time C{seconds} as an RFC 3339 date-time in UTC.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def buildReport(organization: str, contact: str, reportID: str, day, entries: Sequence[PolicyEntry]) -> dict:
    """
    The aggregate report of one policy domain for one UTC day, as RFC 8460
    section 4.4 gives it, ready for C{json.dumps}.

    The date range is the whole day: from C{YYYY-MM-DDT00:00:00Z} to
    C{YYYY-MM-DDT23:59:59Z}, as in the RFC's example.  Optional fields
    without a value are left out (a policy's C{policy-string} and
    C{mx-host} when empty, C{failure-details} when there was no failure,
    and a failure's fields other than its result type and count).

    @param organization: organization-name.
    @param contact: contact-info, an email address.
    @param reportID: report-id (L{makeReportID}).
    @param day: the UTC day, C{"YYYY-MM-DD"} or a C{datetime.date}.
    @param entries: the day's entries of a single policy domain
        (L{TLSReportStore.entries
        <mailproto._security._tlsrptstore.TLSReportStore.entries>}): RFC 8460
        section 5.1 sends one report per policy domain.
    @return: the report.
    @raise ValueError: if C{entries} is empty or spans several domains.
    """
    start = dayStart(day)
    domains = {entry.policy.domain for entry in entries}
    if len(domains) != 1:
        raise ValueError(f"a report is about exactly one policy domain, not {sorted(domains)!r}")
    return {
        "organization-name": organization,
        "date-range": {
            "start-datetime": _rfc3339(start),
            "end-datetime": _rfc3339(start + 86399),
        },
        "contact-info": contact,
        "report-id": reportID,
        "policies": [_policyData(entry) for entry in entries],
    }


def reportJSON(report: dict) -> bytes:
    """
    @return: C{report} as compact JSON, gzipped, as it is attached to the
        email and posted over HTTPS (C{application/tlsrpt+gzip}).
    """
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode("utf-8"), mtime=0)


def _reportFacts(report: dict) -> tuple[str, int, int]:
    """
    @return: the policy domain of C{report} and the POSIX times of the
        start and end of its date range.
    @raise ValueError: if C{report} is not one domain's report.
    """
    domains = {p["policy"]["policy-domain"] for p in report["policies"]}
    if len(domains) != 1:
        raise ValueError(f"a report is about exactly one policy domain, not {sorted(domains)!r}")
    times = []
    for key in ("start-datetime", "end-datetime"):
        when = datetime.datetime.fromisoformat(report["date-range"][key].replace("Z", "+00:00"))
        times.append(int(when.timestamp()))
    return domains.pop(), times[0], times[1]


def reportFilename(submitter: str, domain: str, begin: int, end: int, uniqueID: str | None = None) -> str:
    """
    The name of a gzipped report file (RFC 8460 section 5.1):
    C{submitter!policy-domain!begin!end[!unique-id].json.gz}.

    @param submitter: the submitter's domain name.
    @param domain: the policy domain.
    @param begin: the POSIX time of the start of the report's range.
    @param end: that of its end.
    @param uniqueID: letters and digits only, if given.
    @raise ValueError: for a unique ID that is not letters and digits.
    """
    parts = [normalizeDomain(submitter), normalizeDomain(domain), str(begin), str(end)]
    if uniqueID is not None:
        if not re.fullmatch(r"[A-Za-z0-9]+", uniqueID):
            raise ValueError(f"a unique ID is letters and digits: {uniqueID!r}")
        parts.append(uniqueID)
    return "!".join(parts) + ".json.gz"


def _summaryText(report: dict, submitter: str, filename: str) -> str:
    """
    @return: the human-readable part of a report message.
    """
    dates = report["date-range"]
    lines = [
        f"This is an SMTP TLS report (RFC 8460) from {report['organization-name']}.",
        "",
        f"Policy domain: {report['policies'][0]['policy']['policy-domain']}",
        f"Submitter: {submitter}",
        f"Report-ID: <{report['report-id']}>",
        f"Period: {dates['start-datetime']} to {dates['end-datetime']}",
        "",
    ]
    for item in report["policies"]:
        summary = item["summary"]
        lines.append(
            f"Policy {item['policy']['policy-type']}: "
            f"{summary['total-successful-session-count']} successful sessions, "
            f"{summary['total-failure-session-count']} failed sessions."
        )
    lines += [
        "",
        f"The report is attached as {filename} (application/tlsrpt+gzip).",
        "It is sent to this address because the policy domain's _smtp._tls",
        "TXT record names it.",
        "",
    ]
    return "\n".join(lines)


_GENERATE = email.policy.SMTP.clone(max_line_length=998)
"""Headers are folded only past SMTP's line limit, so that the report's
file name stays a plain quoted parameter (not RFC 2231 pieces) that every
reader of reports understands."""


def reportMessage(
    report: dict,
    submitter: str,
    fromAddress: str,
    to: list[str],
    now: float | None = None,
    *,
    uniqueID: str | None = None,
) -> bytes:
    """
    The email that carries a report (RFC 8460 section 5.3): a
    C{multipart/report; report-type="tlsrpt"} of a short text and the
    gzipped JSON (C{application/tlsrpt+gzip}, named by L{reportFilename}),
    with the header fields C{TLS-Report-Domain}, C{TLS-Report-Submitter}
    and the subject C{Report Domain: D Submitter: S Report-ID: <ID>}.

    It also says C{Auto-Submitted: auto-generated} (RFC 3834), so that no
    automatic responder answers it, and C{TLS-Required: No} (RFC 8689), as
    RFC 8460 section 5.3 wants reports delivered despite TLS failures:
    the report may be about the very policy that fails.

    @param report: from L{buildReport}.
    @param submitter: the submitter's domain name (the C{TLS-Report-Submitter},
        which must be the domain of the message's DKIM signature).
    @param fromAddress: the C{From} address.
    @param to: the recipients' addresses, for C{To}.
    @param now: the POSIX time for C{Date}; the current time if C{None}.
    @param uniqueID: a unique ID for the file name, if any.
    @return: the message, with CRLF line ends.
    """
    domain, begin, end = _reportFacts(report)
    submitter = normalizeDomain(submitter)
    filename = reportFilename(submitter, domain, begin, end, uniqueID)
    if now is None:
        now = time.time()
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = fromAddress
    message["To"] = ", ".join(to)
    message["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report['report-id']}>"
    message["Date"] = email.utils.formatdate(now, usegmt=True)
    message["Message-ID"] = f"<{secrets.token_hex(16)}@{submitter}>"
    message["MIME-Version"] = "1.0"
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = submitter
    message["Auto-Submitted"] = "auto-generated"
    message["TLS-Required"] = "No"
    text = MIMEPart(policy=email.policy.SMTP)
    text.set_content(_summaryText(report, submitter, filename), charset="us-ascii")
    attachment = MIMEPart(policy=email.policy.SMTP)
    attachment.set_content(
        reportJSON(report), maintype="application", subtype="tlsrpt+gzip", disposition="attachment", filename=filename
    )
    message.make_mixed()
    message.attach(text)
    message.attach(attachment)
    message.set_type("multipart/report")
    message.set_param("report-type", "tlsrpt")
    return message.as_bytes(policy=_GENERATE)


_TLSRPT_VERSION = re.compile(r"v=TLSRPTv1[ \t]*(?:;|$)")
_SIZE_SUFFIX = re.compile(r"(.*)!([0-9]+)([kmgtKMGT]?)")
_URI_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


def _joinRecord(record) -> str:
    """
    @return: one TXT record's strings joined, as text (Latin-1, so that any
        octets survive to be rejected later).
    """
    if isinstance(record, (str, bytes)):
        record = [record]
    return "".join(s.decode("latin-1") if isinstance(s, bytes) else s for s in record)


def _mailtoAddress(uri: str) -> str | None:
    """
    @return: the one address of a C{mailto:} URI, or C{None} if it is not
        a single well-formed address.  Header fields (C{?subject=...}) are
        ignored.
    """
    target = urllib.parse.unquote(uri.split(":", 1)[1].split("?", 1)[0])
    local, at, domain = target.rpartition("@")
    if not at or not local.isascii() or not domain.isascii():
        return None
    if not re.fullmatch(_grammar.DOT_STRING, local.encode("ascii")) or not _grammar.isDomain(domain.encode("ascii")):
        return None
    return f"{local}@{domain.lower()}"


def _ruaURI(uri: str) -> str | None:
    """
    @return: C{uri} normalized, if it is a C{mailto:} URI of one address or
        an C{https:} URL; C{None} for anything else.
    """
    size = _SIZE_SUFFIX.fullmatch(uri)
    if size is not None:
        uri = size.group(1)
    if not _URI_CHARACTERS.fullmatch(uri) or "!" in uri or ":" not in uri:
        return None
    scheme, rest = uri.split(":", 1)
    scheme = scheme.lower()
    if scheme == "mailto":
        address = _mailtoAddress(uri)
        return None if address is None else f"mailto:{address}"
    if scheme == "https":
        try:
            parts = urllib.parse.urlsplit(f"https:{rest}")
            _ = parts.port  # ValueError for a port that is no number or too large
        except ValueError:
            return None
        if not parts.hostname or not rest.startswith("//"):
            return None
        return f"https:{rest}"
    return None


def parseRUA(txtStrings) -> list[str]:
    """
    The report addresses of a domain's TLSRPT TXT records (RFC 8460
    section 3).

    Records that do not start with C{v=TLSRPTv1} are ignored; if not
    exactly one is left, the domain asks for no report.  That record's
    C{rua=} fields (usually one) give comma-separated URIs; only C{mailto:}
    URIs of a single address and C{https:} URLs are kept, normalized,
    without duplicates, in order.  Other fields are ignored, and so are
    malformed ones, except that a record without a usable C{rua} asks for
    nothing.

    A size limit in the style of DMARC (C{mailto:a@example.com!10m}) is
    stripped and not honoured: RFC 8460 defines none (a literal C{!} must
    be percent-encoded in its URIs), and a report, whose failure details
    are bounded (L{TLSReportStore.maxFailureGroups
    <mailproto._security._tlsrptstore.TLSReportStore.maxFailureGroups>}),
    is small.

    @param txtStrings: the TXT records: each a C{str} or C{bytes}, or a
        sequence of them (a record's character-strings, joined without
        separators).
    @return: the URIs.
    """
    records = [_joinRecord(r) for r in txtStrings]
    records = [r for r in records if _TLSRPT_VERSION.match(r)]
    if len(records) != 1:
        return []
    uris: list[str] = []
    for field in records[0].split(";")[1:]:
        name, equals, value = field.strip(" \t").partition("=")
        if not equals or name != "rua":
            continue
        for candidate in value.split(","):
            uri = _ruaURI(candidate.strip(" \t"))
            if uri is not None and uri not in uris:
                uris.append(uri)
    return uris


async def _lookupRUA(resolver, domain: str) -> list[str]:
    try:
        answers, _, _ = await resolver.lookupText(f"_smtp._tls.{normalizeDomain(domain)}")
    except (dnserror.DNSNameError, dnserror.AuthoritativeDomainError):
        # The name does not exist (NXDOMAIN).  Other DomainErrors are
        # server failures, refusals, ...: the domain's wishes are unknown.
        return []
    return parseRUA([answer.payload.data for answer in answers if answer.type == dns.TXT])


def lookupRUA(resolver, domain: str) -> defer.Deferred:
    """
    Look up where a domain wants its TLS reports: the TXT records of
    C{_smtp._tls.<domain>}, read by L{parseRUA}.

    @param resolver: an C{IResolver}.
    @param domain: the policy domain.
    @return: a C{Deferred} firing with the URIs (empty if the name does not
        exist, has no TXT record or no valid TLSRPT record), or failing
        with the resolver's error for a temporary failure (time-out,
        server failure), when the domain's wishes are unknown.
    """
    return defer.ensureDeferred(_lookupRUA(resolver, domain))
