# -*- test-case-name: mailproto.test.test_tlsreporter -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
SMTP TLS Reporting (RFC 8460), the sending: L{TLSReporter}, the service
that hands every policy domain that asks for one its daily report.

This is the third of three modules, the only one that runs on its own
schedule.  Shortly after 00:00 UTC (plus a random delay of up to an hour,
so that senders do not all report at the same moment) the reporter takes
every finished day of its L{TLSReportStore
<mailproto._security._tlsrptstore.TLSReportStore>}, and for each policy
domain of that day looks up the domain's C{_smtp._tls} TXT record
(L{lookupRUA <mailproto._security._tlsrptreport.lookupRUA>}).  A domain
that asks for no report has its data dropped.  For the others it builds
the report (L{buildReport <mailproto._security._tlsrptreport.buildReport>},
RFC 8460 section 4.4) and hands it over: for C{mailto:} addresses as an
email (L{reportMessage <mailproto._security._tlsrptreport.reportMessage>},
section 5.3) given to a C{submit} function (the relay's own queue), for
C{https:} addresses as a POST of the gzipped JSON.  Once every address of
the domain took it, the domain's data for that day is forgotten
(L{TLSReportStore.forget
<mailproto._security._tlsrptstore.TLSReportStore.forget>}); a failure
keeps it for the next daily run, for a few days at most.

What is counted, and how it is kept, is
L{mailproto._security._tlsrptstore}'s; what a report holds, and where it
goes, is L{mailproto._security._tlsrptreport}'s.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from mailproto._security._tlsrptreport import buildReport, lookupRUA, makeReportID, reportJSON, reportMessage
from mailproto._security._tlsrptstore import TLSReportStore, daysBetween, normalizeDomain

_log = Logger(namespace="mailproto.tlsrpt")
"""The reporter's events share one namespace with the store's: that of TLS
reporting as a whole."""


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body given whole.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer) -> defer.Deferred:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Ignore(protocol.Protocol):
    """
    Takes a response's body and closes the connection at once: only the
    status matters.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class PostRefused(Exception):
    """
    An HTTPS report address answered a report with a status other than
    2xx.

    @ivar url: the address.
    @ivar code: the status code.
    """

    def __init__(self, url: str, code: int) -> None:
        Exception.__init__(self, url, code)
        self.url = url
        self.code = code

    def __str__(self) -> str:
        return f"{self.url} answered {self.code}"


class TLSReporter(service.Service):
    """
    Sends the daily TLS reports (RFC 8460) of a L{TLSReportStore}.

    Every day shortly after 00:00 UTC, after a random delay of up to an
    hour, it runs once (L{runNow}): for every finished day in the store
    and every policy domain of that day it looks up the domain's report
    addresses (L{lookupRUA}) and hands the report over:

      - to every C{mailto:} address of the domain together, as one message
        (L{reportMessage}) given to C{submit};
      - to every C{https:} address by a C{POST} of the gzipped JSON with
        C{Content-Type: application/tlsrpt+gzip}; any 2xx status is
        success.

    The domain's data for that day is forgotten once every address took
    the report, or at once if the domain has no TLSRPT record.  If any
    address failed, or the DNS lookup failed for a reason other than the
    name not existing, it is kept and tried again at the next daily run
    (every address again: the report-id is the same, so the receiver sees
    a duplicate as such); after L{keepDays} days it is dropped, logged.

    The envelope sender of a report is the configured C{fromAddress}, not
    the null sender: RFC 8460 section 5.3 says nothing of the envelope
    sender (only that C{TLS-Report-Submitter} match the DKIM signing
    domain), and a report that cannot be delivered should bounce to a
    mailbox whose owner can see that a domain's report address is broken,
    rather than vanish.  What section 5.3 asks against loops is for the
    relay that delivers the report: deliver it despite TLS failures (the
    message says C{TLS-Required: No}, RFC 8689, for that), and do not count
    the session that delivers it in the next report (else every report
    would cause the next day's).  The message also says C{Auto-Submitted:
    auto-generated} (RFC 3834), so that no automatic responder answers it.
    Reports sent by email must be DKIM-signed by the submitter's domain
    (section 5.3): that too is for the relay.

    @ivar stats: counters: C{"runs"}, C{"reports"} (reports built),
        C{"handed-over"} (domains whose report every address took),
        C{"no-rua"} (domains without a report address),
        C{"mailto-sent"}, C{"mailto-failed"}, C{"https-sent"},
        C{"https-failed"}, C{"dns-failed"}, C{"kept"} (domains kept for a
        later run), C{"given-up"} (domains dropped after L{keepDays}).
    @ivar keepDays: how many days after the day reported a report is still
        tried.
    @ivar nextRun: the POSIX time of the next daily run, while running.
    """

    _log = _log

    def __init__(
        self,
        store: TLSReportStore,
        resolver,
        submit: Callable[[bytes, list[bytes], bytes], defer.Deferred],
        *,
        organization: str,
        submitter: str,
        contact: str,
        fromAddress: str,
        clock=None,
        agent=None,
        postTimeout: float = 60,
        delay: Callable[[], float] | None = None,
        keepDays: int = 3,
        concurrency: int = 4,
    ) -> None:
        """
        @param store: the counts to report.
        @param resolver: the C{IResolver} for the TLSRPT records.
        @param submit: called as C{submit(sender, recipients, message)}
            with bytes, to send a report message; its C{Deferred} fires
            once the message is taken (queued).
        @param organization: organization-name of the reports.
        @param submitter: the sending system's domain name
            (TLS-Report-Submitter, file names, report-ids).
        @param contact: contact-info of the reports, an email address.
        @param fromAddress: the report messages' C{From} and envelope
            sender, a bare address (C{tlsrpt@sender.example}), that can
            receive bounces.
        @param clock: the C{IReactorTime} for the daily runs and the POST
            time-out; the reactor if C{None}.
        @param agent: the C{IAgent} that posts to C{https:} addresses; a
            C{twisted.web.client.Agent} on the reactor, trusting the
            platform's certificate authorities, if C{None}.
        @param postTimeout: the most seconds a POST may take.
        @param delay: returns the seconds to wait after midnight UTC; a
            random time up to an hour if C{None}.
        @param keepDays: see L{keepDays}.
        @param concurrency: the most domains reported at the same time.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        if agent is None:
            from twisted.internet import reactor
            from twisted.web.client import Agent

            agent = Agent(reactor)
        self._store = store
        self._resolver = resolver
        self._submit = submit
        self._organization = organization
        self._submitter = normalizeDomain(submitter)
        self._contact = contact
        self._fromAddress = fromAddress
        self._clock = clock
        self._agent = agent
        self._postTimeout = postTimeout
        self._delay = delay if delay is not None else (lambda: random.uniform(0, 3600))
        self.keepDays = keepDays
        self._concurrency = concurrency
        self.stats: collections.Counter = collections.Counter()
        self.nextRun: float | None = None
        self._call = None
        self._running: defer.Deferred | None = None

    def startService(self) -> None:
        """
        Start the daily runs: the first after the next midnight UTC.
        """
        service.Service.startService(self)
        self._schedule()

    def stopService(self):
        """
        Stop the daily runs.  A run under way goes on; what it has not
        handed over yet stays in the store.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.nextRun = None
        return service.Service.stopService(self)

    def _schedule(self) -> None:
        """
        Schedule the next daily run: the next midnight UTC, plus the
        delay.
        """
        now = self._clock.seconds()
        midnight = (int(now) // 86400 + 1) * 86400
        self.nextRun = midnight + max(0.0, float(self._delay()))
        self._call = self._clock.callLater(self.nextRun - now, self._daily)

    def _daily(self) -> None:
        """
        The daily run: schedule the next one, then report.
        """
        self._call = None
        self._schedule()
        self.runNow()

    def runNow(self) -> defer.Deferred:
        """
        Report every finished day now (or join the run under way).

        @return: a C{Deferred} that fires with C{None} when the run is
            over; it never fails (failures are logged and counted).
        """
        running = self._running
        if running is None:
            running = self._running = defer.ensureDeferred(self._run())
            running.addErrback(lambda failure: self._log.failure("TLS report run failed", failure))
            running.addBoth(self._runDone, running)
        joined: defer.Deferred = defer.Deferred()
        running.addBoth(lambda result: (joined.callback(None), result)[1])
        return joined

    def _runDone(self, result, running: defer.Deferred):
        """
        A run is over: the next L{runNow} starts a new one.
        """
        if self._running is running:
            self._running = None
        return result

    async def _run(self) -> None:
        """
        Report every finished day's domains, a few at a time, then write
        the store.
        """
        self.stats["runs"] += 1
        today = self._store.currentDay()
        semaphore = defer.DeferredSemaphore(self._concurrency)
        work = []
        for day in self._store.days():
            if day >= today:
                continue
            for domain in self._store.domains(day):
                work.append(semaphore.run(lambda day=day, domain=domain: defer.ensureDeferred(self._reportDomain(day, domain, today))))
        results = await defer.DeferredList(work, consumeErrors=True)
        for success, failure in results:
            if not success:
                self._log.failure("TLS report run", failure)
        self._store.flush()

    async def _reportDomain(self, day: str, domain: str, today: str) -> None:
        """
        Report C{domain}'s C{day}, and forget it if every address took the
        report, or if it is too old to try again.
        """
        try:
            uris = await lookupRUA(self._resolver, domain)
        except Exception as e:
            self.stats["dns-failed"] += 1
            self._log.warn("TLS report of {day} for {domain}: no TLSRPT record lookup: {error}", day=day, domain=domain, error=e)
            handedOver = False
        else:
            if not uris:
                self.stats["no-rua"] += 1
                self._store.forget(day, domain)
                return
            handedOver = await self._deliver(day, domain, uris)
        if handedOver:
            self.stats["handed-over"] += 1
            self._store.forget(day, domain)
        elif daysBetween(day, today) >= self.keepDays:
            self.stats["given-up"] += 1
            self._store.forget(day, domain)
            self._log.warn("TLS report of {day} for {domain} given up after {days} days", day=day, domain=domain, days=self.keepDays)
        else:
            self.stats["kept"] += 1

    async def _deliver(self, day: str, domain: str, uris: list[str]) -> bool:
        """
        Hand the report of C{domain}'s C{day} to each of C{uris}.

        @return: whether every one took it.
        """
        entries = self._store.entries(day, domain)
        if not entries:
            return True
        report = buildReport(self._organization, self._contact, makeReportID(day, domain, self._submitter), day, entries)
        self.stats["reports"] += 1
        addresses = [uri.split(":", 1)[1] for uri in uris if uri.startswith("mailto:")]
        attempts = []
        if addresses:
            attempts.append(defer.ensureDeferred(self._mail(report, addresses)))
        payload = reportJSON(report)
        for uri in uris:
            if uri.startswith("https:"):
                attempts.append(defer.ensureDeferred(self._post(uri, payload)))
        results = await defer.DeferredList(attempts, consumeErrors=True)
        return all(success and result for success, result in results)

    async def _mail(self, report: dict, addresses: list[str]) -> bool:
        """
        Give the report to C{submit} for C{addresses}.

        @return: whether C{submit} took it.
        """
        message = reportMessage(report, self._submitter, self._fromAddress, addresses, self._clock.seconds())
        try:
            await defer.maybeDeferred(
                self._submit, self._fromAddress.encode("utf-8"), [a.encode("utf-8") for a in addresses], message
            )
        except Exception as e:
            self.stats["mailto-failed"] += 1
            self._log.warn("TLS report {reportID} not submitted to {addresses}: {error}", reportID=report["report-id"], addresses=addresses, error=e)
            return False
        self.stats["mailto-sent"] += 1
        self._log.info("TLS report {reportID} submitted to {addresses}", reportID=report["report-id"], addresses=addresses)
        return True

    async def _post(self, url: str, payload: bytes) -> bool:
        """
        Post the gzipped report to C{url}.

        @return: whether it answered 2xx in time.
        """
        headers = Headers({b"Content-Type": [b"application/tlsrpt+gzip"]})
        try:
            requested = self._agent.request(b"POST", url.encode("ascii"), headers, _BytesProducer(payload))
            requested.addTimeout(self._postTimeout, self._clock)
            response = await requested
            response.deliverBody(_Ignore())
            if not 200 <= response.code < 300:
                raise PostRefused(url, response.code)
        except Exception as e:
            self.stats["https-failed"] += 1
            self._log.warn("TLS report not posted to {url}: {error}", url=url, error=e)
            return False
        self.stats["https-sent"] += 1
        self._log.info("TLS report posted to {url}", url=url)
        return True
