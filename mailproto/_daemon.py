# -*- test-case-name: mailproto.test.test_daemon -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The mail relay as a service: C{twistd mailrelay}.

    twistd -n mailrelay --smtp tcp:2525:interface=127.0.0.1 \\
        --spool /var/spool/mailrelay --smarthost mail.example.net:587

With no options it listens on C{127.0.0.1:8025}, keeps its queue in
C{./mailrelay-spool}, accepts mail from loopback clients only, and relays
it by MX records.

L{RelayService} is the whole relay: the queue (recovered when the service
starts, before anything listens), the SMTP listeners writing into it, and
the relaying manager sending from it.
"""

from __future__ import annotations

import os
import socket

from twisted.application import service, strports
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python import usage

from mailproto._attempts import RetrySchedule
from mailproto._relay import LOOPBACK, QueueDeliveryFactory, RelayPolicy
from mailproto._relaymanager import SmartHost, SmartHostESMTPRelayingManager
from mailproto._queue import Queue
from mailproto._server import ESMTP, ESMTPFactory

_log = Logger()

DEFAULT_LISTEN = "tcp:8025:interface=127.0.0.1"
DEFAULT_SPOOL = "mailrelay-spool"


_LIMITS = ("max-connections", "max-connections-per-destination", "max-messages-per-connection")


class Options(usage.Options):
    """
    The options of C{twistd mailrelay}.
    """

    synopsis = "[options]"
    longdesc = (
        "A mail relay with a durable queue.  With no options it listens on "
        "127.0.0.1:8025, spools to ./mailrelay-spool, accepts mail from "
        "loopback clients and relays it by MX records."
    )

    optParameters = [
        ["spool", None, DEFAULT_SPOOL, "The queue's directory (made if missing)."],
        ["smarthost", None, None, "Relay everything through HOST:PORT ([ADDRESS]:PORT for IPv6) instead of by MX."],
        ["hostname", None, None, "The relay's name, for its greeting, EHLO and reports (default: this machine's name)."],
        ["max-connections", None, 50, "Outgoing connections open at once."],
        [
            "max-connections-per-destination",
            None,
            20,
            "Outgoing connections open at once to one domain (or to the smart host).",
        ],
        ["max-messages-per-connection", None, 100, "Messages sent over one outgoing connection."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["smtp"] = []
        self["relay-network"] = []
        self["relay-domain"] = []

    def opt_smtp(self, endpoint: str) -> None:
        """
        Listen for SMTP on this endpoint (repeatable; default
        tcp:8025:interface=127.0.0.1).
        """
        self["smtp"].append(endpoint)

    def opt_relay_network(self, network: str) -> None:
        """
        A client network (CIDR) allowed to relay (repeatable; default
        loopback only).
        """
        self["relay-network"].append(network)

    def opt_relay_domain(self, domain: str) -> None:
        """
        A domain anyone may send mail to through this relay (repeatable).
        """
        self["relay-domain"].append(domain)

    def postOptions(self) -> None:
        for name in _LIMITS:
            text = str(self[name])
            try:
                self[name] = int(text)
            except ValueError:
                raise usage.UsageError(f"--{name}: {text!r} is not a whole number") from None
            if self[name] <= 0:
                raise usage.UsageError(f"--{name}: {text!r} must be more than 0")
        if not self["smtp"]:
            self["smtp"] = [DEFAULT_LISTEN]
        from twisted.internet import reactor

        for description in self["smtp"]:
            try:
                endpoint = endpoints.serverFromString(reactor, description)
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(f"--smtp {description!r}: not an endpoint ({e})") from None
            port = getattr(endpoint, "_port", 0)
            if isinstance(port, int) and not 0 <= port <= 65535:
                raise usage.UsageError(f"--smtp {description!r}: no such port {port}")
        if self["smarthost"] is not None:
            try:
                self["smarthost"] = SmartHost.fromString(self["smarthost"])
            except ValueError as e:
                raise usage.UsageError(f"--smarthost: {e}") from None
        for domain in self["relay-domain"]:
            try:
                RelayPolicy(networks=(), domains=[domain])
            except ValueError as e:
                raise usage.UsageError(f"--relay-domain {domain!r}: not a domain name ({e})") from None
        for network in self["relay-network"]:
            try:
                RelayPolicy(networks=[network])
            except ValueError as e:
                raise usage.UsageError(f"--relay-network: {e}") from None
        self["policy"] = RelayPolicy(networks=self["relay-network"] or LOOPBACK, domains=self["relay-domain"])
        if self["hostname"] is None:
            self["hostname"] = socket.getfqdn()
        try:
            self["hostname"].encode("idna")
        except UnicodeError as e:
            raise usage.UsageError(f"--hostname {self['hostname']!r}: not a host name ({e})") from None
        spool = self["spool"]
        try:
            os.makedirs(spool, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"--spool {spool!r}: cannot make the directory ({e.strerror})") from None
        if not os.access(spool, os.W_OK | os.X_OK):
            raise usage.UsageError(f"--spool {spool!r}: the directory is not writable")


class RelayService(service.MultiService):
    """
    The relay: its queue, its listeners and its relaying manager.

    @ivar queue: the L{Queue}.
    @ivar manager: the L{SmartHostESMTPRelayingManager}.
    @ivar factory: the L{ESMTPFactory} of the listeners.
    """

    def __init__(self, queue: Queue, manager, factory: ESMTPFactory, listen: list[str], description: str = "") -> None:
        super().__init__()
        self.queue = queue
        self.manager = manager
        self.factory = factory
        self.description = description
        for endpoint in listen:
            strports.service(endpoint, factory).setServiceParent(self)
        self.listen = list(listen)

    def startService(self) -> None:
        # The queue is set right before anything listens.
        counts = self.queue.recover()
        _log.info(
            "mailrelay: listening on {listen}; spool {spool} ({queued} queued); {description}",
            listen=", ".join(self.listen),
            spool=os.path.abspath(self.queue.directory),
            queued=counts["queued"],
            description=self.description,
        )
        super().startService()
        self.manager.start()

    def stopService(self) -> defer.Deferred:
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(self._stopped)
        return d

    def _stopped(self, result):
        self.manager.stop()
        stats = self.manager.stats
        _log.info(
            "mailrelay: stopped; {queued} queued now; this run: {delivered} delivered, {deferred} deferred, "
            "{failed} failed, {reports} reports; {fsyncs} fsyncs",
            queued=len(self.queue.ids()),
            delivered=stats["delivered"],
            deferred=stats["deferred"],
            failed=stats["failed"],
            reports=stats["reports"],
            fsyncs=self.queue.fsyncs,
        )
        return result


class RelayESMTP(ESMTP):
    """
    The relay's server: the queue logs each message it takes, with its
    queue id, so the server does not log it again.
    """

    noisy = False


def makeService(options: Options) -> RelayService:
    """
    Make the relay from its options.
    """
    from twisted.internet import reactor

    queue = Queue(options["spool"], reactor=reactor)
    policy = options["policy"]
    factory = ESMTPFactory(deliveryFactory=QueueDeliveryFactory(queue, policy), domain=options["hostname"].encode("idna"))
    factory.protocol = RelayESMTP
    smartHost = options["smarthost"]
    manager = SmartHostESMTPRelayingManager(
        queue,
        options["max-connections"],
        options["max-messages-per-connection"],
        smartHost=smartHost,
        maxConnectionsPerDestination=options["max-connections-per-destination"],
        schedule=RetrySchedule(),
        hostname=options["hostname"],
        reactor=reactor,
    )
    if smartHost is not None:
        route = f"relaying through {smartHost.host}:{smartHost.port}"
    else:
        route = "relaying by MX records"
    who = ", ".join(str(n) for n in policy.networks) or "no network"
    if policy.domains:
        who += "; anyone for " + ", ".join(sorted(d.decode("idna") for d in policy.domains))
    return RelayService(queue, manager, factory, options["smtp"], f"{route}; accepting mail from {who}")
