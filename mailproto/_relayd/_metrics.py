# -*- test-case-name: mailproto.test.test_metrics -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The relay's Prometheus metrics (C{twistd mailrelay --metrics ENDPOINT})::

    mailrelay_connections_total{listener}            connections accepted
    mailrelay_connections_open{listener}             connections open now
    mailrelay_messages_accepted_total                messages queued (250 after DATA/BDAT)
    mailrelay_messages_rejected_total{stage,reason}  4xx/5xx replies to MAIL, RCPT and message data
    mailrelay_intake_policy_total{policy}            times a loop or submission policy acted (see below)
    mailrelay_queue_messages                         messages queued now
    mailrelay_queue_in_flight                        messages being sent now
    mailrelay_queue_oldest_age_seconds               age of the oldest queued message
    mailrelay_deliveries_total{result}               recipients delivered, deferred or failed
    mailrelay_delivery_latency_seconds               from arrival to delivery, per recipient
    mailrelay_attempt_duration_seconds               length of a delivery attempt
    mailrelay_limits_total{listener,limit}           times an intake limit acted
    mailrelay_policy_refusals_total{policy}          times a recipient or report policy refused
    mailrelay_workers                                worker processes running (--workers)
    mailrelay_worker_restarts_total                  workers started again after an unexpected end

The intake policies (L{mailproto._headerpolicy}, L{mailproto._relayd._submission})
are C{hops} and C{loop} (a message refused, C{--max-hops},
C{--max-own-hops}), C{sender-login} and C{from-header} (a sender refused,
C{--sender-login-map}, C{--check-from-header}), C{date} and C{message-id}
(a field added to a submitted message).

The limits are the connection limits shared by all listeners
(C{max-clients}, C{max-clients-per-address}, C{connection-rate}: a
connection refused; C{accept-emfile}: accepting paused, out of file
descriptors) and those of a session (C{command-deadline}, C{data-rate},
C{junk-commands}, C{early-talker}, C{errors}, C{auth-failures},
C{idle-timeout}: a session ended or AUTH refused).

The policies are C{relay-recipients} (a recipient of a relay domain not
in C{--relay-recipients}, refused at RCPT), C{reports-unchecked} (a
report withheld: its message came from a client outside the relay
networks, recipients not checked) and C{no-reports-to-strangers} (a
report withheld by that option).

With C{--workers N}, the parent serves the metrics: what the workers
count as they take mail in (connections, refusals, limits, policies)
reaches it over their AMP connections
(L{mailproto._relayd._workermetrics}), and it counts the messages
accepted as it adopts them into its queue.  The last two metrics are
served only then.

They are served as Prometheus text on C{/metrics} (any path, in fact) by
L{MetricsResource}, computed in the reactor thread, so that the queue is
read while nothing changes it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource
from twisted.web.server import Site

#: Bucket bounds (seconds) of the delivery latency: from a second to days.
LATENCY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600)

#: Bucket bounds (seconds) of an attempt's length.
ATTEMPT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _QueueCollector:
    """
    The queue's size and age, read when scraped.
    """

    def __init__(self, queue, manager, clock) -> None:
        self.queue = queue
        self.manager = manager
        self.clock = clock

    def collect(self):
        ids = self.queue.ids()
        oldest = 0.0
        if ids:
            first = min(self.queue.getEnvelope(i).received for i in ids)
            oldest = max(self.clock.seconds() - first, 0.0)
        yield GaugeMetricFamily("mailrelay_queue_messages", "Messages in the queue.", value=len(ids))
        yield GaugeMetricFamily("mailrelay_queue_in_flight", "Messages being sent now.", value=len(self.manager.inFlight()))
        yield GaugeMetricFamily(
            "mailrelay_queue_oldest_age_seconds", "Seconds since the oldest queued message arrived (0 when empty).", value=oldest
        )


class _SecurityCollector:
    """
    The outbound TLS policies' counters (L{SecurityPolicies.stats
    <mailproto._security._policies.SecurityPolicies.stats>}), read when
    scraped: sessions by the policy that applied and what came of them,
    and policy decisions (MTA-STS enforced, DANE applied, ...).
    """

    def __init__(self, manager) -> None:
        self.manager = manager

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        security = getattr(self.manager, "security", None)
        family = CounterMetricFamily(
            "mailrelay_outbound_tls",
            "Outbound TLS sessions and policy decisions, by policy (config, dane, mta-sts, none) and outcome.",
            labels=["policy", "outcome"],
        )
        if security is not None:
            for (policy, outcome), count in sorted(security.stats.items()):
                family.add_metric([policy, outcome], count)
        yield family


class _WorkersCollector:
    """
    The workers of a L{WorkerPool <mailproto._relayd._workers.WorkerPool>},
    read when scraped: how many run, and how many times one was started
    again.
    """

    def __init__(self, pool) -> None:
        self.pool = pool

    def collect(self):
        running = sum(1 for worker in self.pool.workers if worker.state == "running")
        yield GaugeMetricFamily("mailrelay_workers", "Worker processes running (--workers).", value=running)
        yield CounterMetricFamily(
            "mailrelay_worker_restarts",
            "Times a worker that ended unexpectedly was started again.",
            value=getattr(self.pool, "restarts", 0),
        )


class RelayMetrics:
    """
    The relay's metrics, in their own registry.

    @ivar registry: the C{CollectorRegistry}.
    """

    def __init__(self, queue, manager, clock) -> None:
        """
        @param queue: the relay's queue; its messages are counted as they
            are committed, and its size is read when scraped.
        @param manager: the relaying manager; its outcomes are counted.
        @param clock: an C{IReactorTime}.
        """
        self.registry = registry = CollectorRegistry()
        self.clock = clock
        self._pool = None
        self.connections = Counter("mailrelay_connections", "Connections accepted.", ["listener"], registry=registry)
        self.open = Gauge("mailrelay_connections_open", "Connections open now.", ["listener"], registry=registry)
        self.accepted = Counter("mailrelay_messages_accepted", "Messages accepted into the queue.", registry=registry)
        self.rejected = Counter(
            "mailrelay_messages_rejected",
            "Refusals (4xx and 5xx replies) of MAIL, RCPT and message data, by stage and reply.",
            ["stage", "reason"],
            registry=registry,
        )
        self.intakePolicies = Counter(
            "mailrelay_intake_policy",
            "Times a loop or submission policy acted (a message or sender refused, a header added), by policy.",
            ["policy"],
            registry=registry,
        )
        for policy in ("hops", "loop", "sender-login", "from-header", "date", "message-id"):
            self.intakePolicies.labels(policy)
        self.deliveries = Counter(
            "mailrelay_deliveries", "Outcomes of delivery attempts, per recipient.", ["result"], registry=registry
        )
        for result in ("delivered", "deferred", "failed"):
            self.deliveries.labels(result)
        self.latency = Histogram(
            "mailrelay_delivery_latency_seconds",
            "Seconds from a message's arrival to its delivery, per recipient.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.attempts = Histogram(
            "mailrelay_attempt_duration_seconds", "Seconds a delivery attempt took.", buckets=ATTEMPT_BUCKETS, registry=registry
        )
        self.limits = Counter(
            "mailrelay_limits", "Times an intake limit acted, by listener and limit.", ["listener", "limit"], registry=registry
        )
        self.policies = Counter(
            "mailrelay_policy_refusals", "Times a recipient or report policy refused, by policy.", ["policy"], registry=registry
        )
        for policy in ("relay-recipients", "reports-unchecked", "no-reports-to-strangers"):
            self.policies.labels(policy)
        registry.register(_QueueCollector(queue, manager, clock))
        registry.register(_SecurityCollector(manager))
        queue.listeners.append(self._queued)
        manager.outcomeListeners.append(self._outcome)

    def _queued(self, envelope) -> None:
        self.accepted.inc()

    def _outcome(self, envelope, result, started: float, now: float) -> None:
        self.deliveries.labels("delivered").inc(len(result.delivered))
        self.deliveries.labels("deferred").inc(len(result.deferred))
        self.deliveries.labels("failed").inc(len(result.failed))
        for _ in result.delivered:
            self.latency.observe(max(now - envelope.received, 0.0))
        self.attempts.observe(max(now - started, 0.0))

    def intakePolicyActed(self, policy: str) -> None:
        """
        Count an intake policy acting.

        @param policy: its name (see the module's docstring).
        """
        self.intakePolicies.labels(policy).inc()

    def connectionOpened(self, listener: str) -> None:
        self.connections.labels(listener).inc()
        self.open.labels(listener).inc()

    def connectionClosed(self, listener: str) -> None:
        self.open.labels(listener).dec()

    def limitActed(self, listener: str, limit: str) -> None:
        """
        Count a limit acting on a connection or session.

        @param listener: the listener's kind (C{"smtp"}, C{"submission"},
            C{"smtps"}, C{"lmtp"}).
        @param limit: the limit's name (see the module's docstring).
        """
        self.limits.labels(listener, limit).inc()

    def policyRefused(self, policy: str) -> None:
        """
        Count a policy refusing: a recipient at RCPT, or a report.

        @param policy: the policy's name (see the module's docstring).
        """
        self.policies.labels(policy).inc()

    def refused(self, stage: str, code: int, status: bytes | None) -> None:
        """
        Count a refusal.

        @param stage: C{"mail"}, C{"rcpt"} or C{"data"}.
        @param code: the reply code.
        @param status: its enhanced status code, if any.
        """
        reason = str(code) if not status else f"{code} {status.decode('ascii', 'replace')}"
        self.rejected.labels(stage, reason).inc()

    def watchWorkers(self, pool) -> None:
        """
        Serve C{mailrelay_workers} and C{mailrelay_worker_restarts_total}
        of C{pool}'s workers (once, however often it is asked).

        @param pool: a L{WorkerPool
            <mailproto._relayd._workers.WorkerPool>}: its C{workers} (each
            with a C{state}) and C{restarts}.
        @raise ValueError: if the metrics serve another pool's workers.
        """
        if self._pool is pool:
            return
        if self._pool is not None:
            raise ValueError("the metrics already serve another pool's workers")
        self._pool = pool
        self.registry.register(_WorkersCollector(pool))

    def site(self) -> Site:
        """
        @return: a web site serving the metrics.
        """
        site = Site(MetricsResource(self.registry))
        site.noisy = False
        # No access log line per scrape.
        site.log = lambda request: None
        return site


class MetricsResource(Resource):
    """
    Serves a registry's metrics as Prometheus text, on every path.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)
