# -*- test-case-name: mailproto.test.test_daemon -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The mail relay as a service: C{twistd mailrelay}::

    twistd -n mailrelay --smtp tcp:2525:interface=127.0.0.1 \\
        --spool /var/spool/mailrelay --smarthost mail.example.net:587

With no options it listens on C{127.0.0.1:8025}, keeps its queue in
C{./mailrelay-spool}, accepts mail from loopback clients only, and relays
it by MX records.

L{RelayService} is the whole relay: the queue (recovered when the service
starts, before anything listens), the listeners writing into it (SMTP,
submission, SMTPS, LMTP), the relaying manager sending from it, the
control socket of C{mailproto queue}, and the metrics.  It stops in
order: it stops listening, lets the sessions in the middle of a
transaction finish (for at most C{--shutdown-grace} seconds, idle ones
are told C{421} at once), lets attempts in progress end within the same
time, and stops.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import sys
import threading

from twisted.application import internet, service
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, endpoints
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import components, usage
from zope.interface import implementer

from mailproto._attempts import RetrySchedule
from mailproto._cores import availableCores
from mailproto._backlog import withBacklog
from mailproto._relayd._connlimits import ConnectionLimits, ConnectionLimitsFactory, guardAccepts
from mailproto._relayd._control import ControlFactory, socketPath
from mailproto._spoollock import SpoolLock
from mailproto._relayd._privileges import WorkersCannotRun, checkWorkersCanRun, giveSpool, runAs
from mailproto._relayd._startup import describeStartFailure
from mailproto._grammar import isDomain
from mailproto._relayd._logs import FORMATS as LOG_FORMATS, RelayLog
from mailproto._relayd._proxy import proxyEndpoint
from mailproto._relay import LOOPBACK, QueueDeliveryFactory, RelayPolicy
from mailproto._relaymanager import SmartHostESMTPRelayingManager
from mailproto._smarthost import ENCRYPT, MAY, NONE, VERIFY, SmartHost, TLSPolicy
from mailproto._relayd import _config, _outbound, _submission
from mailproto._replies import statusOf
from mailproto._reports import ReportPolicy
from mailproto._queue import Queue
from mailproto._server import ESMTP, LMTP, AuthFailures, ESMTPFactory, LMTPFactory
from mailproto.interfaces import IMessageDeliveryFactory

_log = Logger()

DEFAULT_LISTEN = "tcp:8025:interface=127.0.0.1"
DEFAULT_SPOOL = "mailrelay-spool"

#: The smart host's TLS choices: a L{TLSPolicy} mode, or C{implicit} (TLS
#: from the first octet, RFC 8314, certificate checked).
SMARTHOST_TLS = (NONE, MAY, ENCRYPT, VERIFY, "implicit")

_LIMITS = ("max-connections", "max-connections-per-destination", "max-messages-per-connection", "max-recipients")
_LISTENERS = ("smtp", "submission", "smtps", "lmtp")
_INTAKE_NUMBERS = (
    "max-clients",
    "max-clients-per-address",
    "max-connection-rate",
    "min-data-rate",
    "max-junk-commands",
    "max-auth-failures",
)

#: Failed AUTH attempts are counted per address over this many seconds.
AUTH_FAILURE_WINDOW = 600.0

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parseDuration(text: str) -> float:
    """
    Parse a duration: a number of seconds, or a number with a unit
    C{s}, C{m}, C{h}, C{d} or C{w} (C{90}, C{5m}, C{1.5h}, C{5d}).

    @raise ValueError: if it is not one, or not more than 0.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (such as 300, 90s, 5m, 2h, 5d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be more than 0")
    return seconds


def parseSize(text: str) -> int:
    """
    Parse a size in octets, with an optional binary unit C{K}, C{M} or
    C{G} (C{1048576}, C{10M}).

    @raise ValueError: if it is not one.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a size in octets (such as 1048576, 512K, 32M)")
    return int(match.group(1)) * _SIZES[match.group(2).lower()]


def _readSecret(path: str, what: str) -> tuple[str, str]:
    """
    @return: C{(user, password)} from the first line of a file holding
        C{USER:PASSWORD}.
    @raise usage.UsageError: if it cannot be read or has no colon.
    """
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except (OSError, UnicodeError) as e:
        raise usage.UsageError(f"{what} {path!r}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    user, colon, password = line.partition(":")
    if not colon or not user or not password:
        raise usage.UsageError(f"{what} {path!r}: its first line must be USER:PASSWORD")
    return user, password


class Options(usage.Options):
    """
    The options of C{twistd mailrelay}.
    """

    synopsis = "[options]"
    longdesc = (
        "A mail relay with a durable queue.  With no options it listens on "
        "127.0.0.1:8025, spools to ./mailrelay-spool, accepts mail from "
        "loopback clients and relays it by MX records.  Listeners are Twisted "
        "endpoint strings (tcp:25, tcp6:25:interface=\\:\\:1, unix:/run/relay.sock); "
        "the default SMTP listener is used only when no listener is given.  "
        "Durations take a unit: 300, 90s, 5m, 2h, 5d.  "
        "SIGTERM stops the relay gracefully, SIGHUP reopens its log file and reads --config and the certificate "
        "again, and "
        "`mailproto queue` lists and manages the queue."
    )

    optFlags = [
        [
            "proxy-protocol",
            None,
            "Every listener expects a PROXY protocol header (v1 or v2) first, as HAProxy sends it, and "
            "judges the client by the address in it.",
        ],
        [
            "soft-bounce",
            None,
            "Defer every permanent failure (5xx) instead of returning the mail to its sender, as Postfix's "
            "soft_bounce: for testing a new setup.  Logged as such; mail still expires after --max-queue-lifetime.",
        ],
        [
            "no-reports-to-strangers",
            None,
            "Never send a report (bounce, delay warning, \"relayed\") to the sender of mail from a client outside "
            "the relay networks that did not authenticate, even when its recipients were checked (--relay-recipients).",
        ],
    ]

    optParameters = [
        ["spool", None, DEFAULT_SPOOL, "The queue's directory (made if missing)."],
        ["hostname", None, None, "The relay's name, for its greeting, EHLO and reports (default: this machine's name)."],
        ["smarthost", None, None, "Relay everything through HOST:PORT ([ADDRESS]:PORT for IPv6) instead of by MX."],
        [
            "smarthost-auth",
            None,
            None,
            "A file whose first line is USER:PASSWORD, to authenticate to the smart host with (AUTH is then "
            "required, and TLS defaults to encrypt).",
        ],
        [
            "smarthost-tls",
            None,
            None,
            "TLS towards the smart host: none, may (STARTTLS when offered; the default), encrypt (STARTTLS "
            "required), verify (STARTTLS and the certificate checked), implicit (TLS from the start, port 465, "
            "certificate checked).",
        ],
        ["smarthost-ca", None, None, "PEM certificates of the authorities trusted for the smart host (default: the system's)."],
        ["users", None, None, "A users file (made with `mailproto adduser FILE USER`): AUTH for clients, over TLS only."],
        ["certificate", None, None, "A PEM certificate (then its chain) for STARTTLS and --smtps; with the key unless --private-key."],
        ["private-key", None, None, "The PEM private key of --certificate."],
        ["max-message-size", None, "32M", "The largest message accepted, in octets (K, M, G allowed; 0: no limit)."],
        ["max-recipients", None, 1000, "The most recipients of one message."],
        ["retry-schedule", None, "5m,4000s", "FIRST[,MAXIMUM]: the first retry delay, doubling up to MAXIMUM."],
        ["max-queue-lifetime", None, "5d", "How long a message is retried before it is returned to its sender."],
        ["metrics", None, None, "Serve Prometheus metrics over HTTP on this endpoint (for example tcp:9125:interface=127.0.0.1)."],
        ["log-format", None, "text", "The log's lines: text or json (one JSON object per line)."],
        ["shutdown-grace", None, "30s", "On SIGTERM, how long sessions in a transaction and attempts in progress may take to end."],
        [
            "reply-timeout",
            None,
            "5m",
            "How long the relay waits for each reply of a next hop (from its command, however the reply trickles in) "
            "before it gives up on the session and defers its mail.",
        ],
        ["max-connections", None, 50, "Outgoing connections open at once."],
        [
            "max-connections-per-destination",
            None,
            20,
            "Outgoing connections open at once to one domain (or to the smart host).",
        ],
        ["max-messages-per-connection", None, 100, "Messages sent over one outgoing connection."],
        [
            "workers",
            None,
            "auto",
            "Processes that accept mail: a number, or auto for one per core this process may run on (1: the "
            "relay is one process).  With more, each takes clients on every listener and writes into the spool, "
            "and this process alone keeps the queue and delivers; limits stay the daemon's.",
        ],
        [
            "max-clients",
            None,
            1000,
            "Incoming connections open at once, on all listeners together (0: no limit).  Each takes a file "
            "descriptor, two while its message is spooled: keep it under half of `ulimit -n`.",
        ],
        [
            "max-clients-per-address",
            None,
            50,
            "Incoming connections open at once from one client address (an IPv6 /64), as Postfix's "
            "smtpd_client_connection_count_limit; relay networks are exempt (0: no limit).",
        ],
        [
            "max-connection-rate",
            None,
            0,
            "New connections one client address may open per minute, refused ones included, as Postfix's "
            "smtpd_client_connection_rate_limit; relay networks are exempt (0, the default: no limit).",
        ],
        ["command-deadline", None, "5m", "How long a command line or AUTH response may take to arrive whole."],
        [
            "min-data-rate",
            None,
            500,
            "The slowest average rate, in octets per second, at which message data is taken (0: no minimum).",
        ],
        [
            "max-junk-commands",
            None,
            100,
            "HELP, NOOP, VRFY, EXPN, RSET and unknown commands allowed per message accepted (0: no limit).",
        ],
        [
            "greeting-delay",
            None,
            "0",
            "Wait this long before the 220 greeting; a client that talks first is refused (0: no wait).",
        ],
        [
            "max-auth-failures",
            None,
            10,
            "Failed AUTH attempts one client address may make in 10 minutes, on all listeners together, "
            "before AUTH is refused to it.",
        ],
    ]

    # Loop detection and submission hygiene: mailproto._relayd._submission.
    optFlags = optFlags + _submission.OPT_FLAGS
    optParameters = optParameters + _submission.OPT_PARAMETERS
    # Outbound security (TLS policies, MTA-STS, DANE, TLS reports, DKIM):
    # mailproto._relayd._outbound.
    optFlags = optFlags + _outbound.OPT_FLAGS
    optParameters = optParameters + _outbound.OPT_PARAMETERS
    # The configuration file: mailproto._relayd._config.
    optParameters = optParameters + _config.OPT_PARAMETERS

    compData = usage.Completions(
        optActions={
            "spool": usage.CompleteDirs(descr="spool directory"),
            "users": usage.CompleteFiles(descr="users file"),
            "certificate": usage.CompleteFiles("*.pem", descr="PEM certificate"),
            "private-key": usage.CompleteFiles("*.pem", descr="PEM private key"),
            "smarthost-auth": usage.CompleteFiles(descr="USER:PASSWORD file"),
            "smarthost-ca": usage.CompleteFiles("*.pem", descr="PEM CA certificates"),
            "smarthost-tls": usage.CompleteList(SMARTHOST_TLS),
            "log-format": usage.CompleteList(LOG_FORMATS),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        for name in _LISTENERS:
            self[name] = []
        self["relay-network"] = []
        self["relay-domain"] = []
        self["relay-recipients"] = None
        self["tls-policy"] = []
        self["dkim-key"] = []

    def opt_tls_policy(self, value: str) -> None:
        """
        DOMAIN=MODE: the TLS towards one domain's mail exchangers
        (repeatable): none, may, encrypt, verify, dane, dane-only, mta-sts
        or auto; see --default-tls-policy.
        """
        self["tls-policy"].append(value)

    def opt_dkim_key(self, value: str) -> None:
        """
        DOMAIN:SELECTOR:KEYFILE: sign mail from DOMAIN (its From: header)
        that the relay's own clients send, with this DKIM key (repeatable;
        make one with `mailproto dkim-keygen`).
        """
        self["dkim-key"].append(value)

    def opt_smtp(self, endpoint: str) -> None:
        """
        Listen for SMTP on this endpoint (repeatable; default
        tcp:8025:interface=127.0.0.1).  Clients in a relay network may
        relay; others only to a relay domain; with --users, clients may
        AUTH after STARTTLS.
        """
        self["smtp"].append(endpoint)

    def opt_submission(self, endpoint: str) -> None:
        """
        Listen for message submission (RFC 6409, usually tcp:587) on this
        endpoint (repeatable): STARTTLS, then AUTH is required.  Needs
        --users and --certificate.
        """
        self["submission"].append(endpoint)

    def opt_smtps(self, endpoint: str) -> None:
        """
        Listen for submission over implicit TLS (RFC 8314, usually
        tcp:465) on this endpoint (repeatable): AUTH is required.  Needs
        --users and --certificate.
        """
        self["smtps"].append(endpoint)

    def opt_lmtp(self, endpoint: str) -> None:
        """
        Listen for LMTP (RFC 2033) on this endpoint (repeatable), with the
        same relay rules as --smtp; for example unix:/run/mailrelay.lmtp.
        """
        self["lmtp"].append(endpoint)

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

    def opt_relay_recipients(self, path: str) -> None:
        """
        A file of the valid recipients of the relay domains, one address
        or @domain a line (# comments), read again when it changes: other
        recipients of the relay domains get 550 5.1.1 at RCPT, from any
        client.  Mail from clients outside the relay networks is reported
        on (bounces) only when this is given.
        """
        self["relay-recipients"] = path

    #: Whether parsing failed: twistd then prints the options' usage before
    #: the error, and a short hint is enough (L{getUsage}).
    _parseFailed = False

    def parseOptions(self, options=None) -> None:
        # --config FILE: the file's options go first, through the same checks.
        try:
            _config.parseOptions(self, super().parseOptions, options)
        except usage.UsageError:
            self._parseFailed = True
            raise

    def opt_version(self) -> None:
        """
        Print the version of mailproto and exit.
        """
        import twisted

        from mailproto import __version__

        print(f"twistd mailrelay: mailproto {__version__} (Twisted {twisted.__version__}, Python {sys.version.split()[0]})")
        sys.exit(0)

    def getUsage(self, width=None) -> str:
        """
        The options' help; after a usage error (which twistd prints after
        the usage), one line saying where the help is, so that the error
        is not lost under it.
        """
        if self._parseFailed:
            return "Run 'twistd mailrelay --help' for the options."
        return super().getUsage(width)

    def postOptions(self) -> None:
        self._checkNumbers()
        self._checkIntakeLimits()
        _submission.checkOptions(self)
        _outbound.checkOptions(self)
        self._checkListeners()
        self._checkSmartHost()
        self._checkPolicy()
        self._checkTLSAndUsers()
        self._checkHostname()
        self._checkSpool()

    def _checkWorkers(self) -> None:
        """
        C{--workers}: a whole number more than 0, or C{auto} (one per core
        this process may run on; C{workersAuto} remembers the choice).
        """
        text = str(self["workers"]).strip()
        self.workersAuto = text.lower() == "auto"
        if self.workersAuto:
            self["workers"] = availableCores()
            return
        try:
            self["workers"] = int(text)
        except ValueError:
            raise usage.UsageError(f"--workers: {text!r} is neither a whole number nor auto") from None
        if self["workers"] <= 0:
            raise usage.UsageError(f"--workers: {text!r} must be more than 0 (or auto)")

    def _checkNumbers(self) -> None:
        for name in _LIMITS:
            text = str(self[name])
            try:
                self[name] = int(text)
            except ValueError:
                raise usage.UsageError(f"--{name}: {text!r} is not a whole number") from None
            if self[name] <= 0:
                raise usage.UsageError(f"--{name}: {text!r} must be more than 0")
        self._checkWorkers()
        try:
            self["max-message-size"] = parseSize(str(self["max-message-size"]))
        except ValueError as e:
            raise usage.UsageError(f"--max-message-size: {e}") from None
        schedule = str(self["retry-schedule"])
        first, comma, maximum = schedule.partition(",")
        try:
            first = parseDuration(first)
            maximum = parseDuration(maximum) if comma else max(first, RetrySchedule.maximum)
        except ValueError as e:
            raise usage.UsageError(f"--retry-schedule: {e}") from None
        if maximum < first:
            raise usage.UsageError(f"--retry-schedule {schedule!r}: the maximum is less than the first delay")
        try:
            lifetime = parseDuration(str(self["max-queue-lifetime"]))
        except ValueError as e:
            raise usage.UsageError(f"--max-queue-lifetime: {e}") from None
        self["schedule"] = RetrySchedule(first=first, maximum=maximum, lifetime=lifetime)
        for name in ("shutdown-grace", "reply-timeout"):
            try:
                self[name] = parseDuration(str(self[name]))
            except ValueError as e:
                raise usage.UsageError(f"--{name}: {e}") from None
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format: {self['log-format']!r} is not one of {', '.join(LOG_FORMATS)}")

    def _checkIntakeLimits(self) -> None:
        """
        The limits on incoming connections and sessions: whole numbers (0
        for no limit, except C{--max-auth-failures}) and durations.
        """
        for name in _INTAKE_NUMBERS:
            text = str(self[name])
            if not re.fullmatch(r"\s*\d+\s*", text):
                raise usage.UsageError(f"--{name}: {text!r} is not a whole number (0 or more)")
            self[name] = int(text)
        if self["max-auth-failures"] <= 0:
            raise usage.UsageError(f"--max-auth-failures: {self['max-auth-failures']} must be more than 0")
        for name, zero in (("command-deadline", False), ("greeting-delay", True)):
            text = str(self[name])
            try:
                self[name] = 0.0 if zero and re.fullmatch(r"\s*(?:0+(?:\.0*)?|\.0+)\s*[smhdw]?\s*", text, re.I) else parseDuration(text)
            except ValueError as e:
                raise usage.UsageError(f"--{name}: {e}") from None

    def _checkListeners(self) -> None:
        if not any(self[name] for name in _LISTENERS):
            self["smtp"] = [DEFAULT_LISTEN]
        from twisted.internet import reactor

        for name in (*_LISTENERS, "metrics"):
            descriptions = self[name] if name != "metrics" else ([self[name]] if self[name] else [])
            for description in descriptions:
                try:
                    endpoint = endpoints.serverFromString(reactor, description)
                except (ValueError, TypeError, KeyError) as e:
                    raise usage.UsageError(f"--{name} {description!r}: not an endpoint ({e})") from None
                port = getattr(endpoint, "_port", 0)
                if isinstance(port, int) and not 0 <= port <= 65535:
                    raise usage.UsageError(f"--{name} {description!r}: no such port {port}")

    def _checkSmartHost(self) -> None:
        extras = [name for name in ("smarthost-auth", "smarthost-tls", "smarthost-ca") if self[name] is not None]
        if self["smarthost"] is None:
            if extras:
                raise usage.UsageError(f"--{extras[0]} needs --smarthost")
            return
        keywords = {}
        if self["smarthost-auth"] is not None:
            keywords["username"], keywords["password"] = _readSecret(self["smarthost-auth"], "--smarthost-auth")
        mode = self["smarthost-tls"] or (ENCRYPT if self["smarthost-auth"] else MAY)
        if mode not in SMARTHOST_TLS:
            raise usage.UsageError(f"--smarthost-tls: {mode!r} is not one of {', '.join(SMARTHOST_TLS)}")
        trustRoot = None
        if self["smarthost-ca"] is not None:
            if mode not in (VERIFY, "implicit"):
                raise usage.UsageError("--smarthost-ca needs --smarthost-tls verify or implicit")
            trustRoot = _loadAuthorities(self["smarthost-ca"])
        if mode == "implicit":
            keywords["tls"], keywords["implicitTLS"] = TLSPolicy(VERIFY, trustRoot), True
        else:
            keywords["tls"] = TLSPolicy(mode, trustRoot)
        try:
            self["smarthost"] = SmartHost.fromString(self["smarthost"], **keywords)
        except ValueError as e:
            raise usage.UsageError(f"--smarthost: {e}") from None

    def _checkPolicy(self) -> None:
        for domain in self["relay-domain"]:
            _domainOption("relay-domain", domain)
            try:
                RelayPolicy(networks=(), domains=[domain])
            except ValueError as e:
                raise usage.UsageError(f"--relay-domain {domain!r}: not a domain name ({e})") from None
        for network in self["relay-network"]:
            try:
                RelayPolicy(networks=[network])
            except ValueError as e:
                raise usage.UsageError(f"--relay-network: {e}") from None
        recipients = None
        if self["relay-recipients"] is not None:
            recipients = _loadRecipients(self["relay-recipients"], self["relay-domain"])
        self["policy"] = RelayPolicy(networks=self["relay-network"] or LOOPBACK, domains=self["relay-domain"], recipients=recipients)

    def _checkTLSAndUsers(self) -> None:
        if self["private-key"] and not self["certificate"]:
            raise usage.UsageError("--private-key needs --certificate")
        self["tls"] = None
        if self["certificate"]:
            from mailproto._commandline._cli import loadTLS

            self["tls"] = loadTLS(self["certificate"], self["private-key"], "--certificate", "--private-key")
        if self["users"] is not None:
            from mailproto._cred import UsersFile

            try:
                if not os.path.isfile(self["users"]):
                    raise FileNotFoundError(2, "no such file")
                UsersFile(self["users"]).read()
            except OSError as e:
                raise usage.UsageError(f"--users {self['users']!r}: cannot read it ({e.strerror})") from None
            except ValueError as e:
                raise usage.UsageError(f"--users {self['users']!r}: {e}") from None
        for name in ("submission", "smtps"):
            if self[name] and (self["users"] is None or self["tls"] is None):
                raise usage.UsageError(f"--{name} needs --users and --certificate (AUTH is offered over TLS only)")

    def _checkHostname(self) -> None:
        """
        The relay's name completes bare local parts (C{RCPT TO:<postmaster>})
        in what is queued, so it must be a domain that an address may end
        with: given as C{relay.example.} it is kept as C{relay.example}.
        """
        if self["hostname"] is None:
            machine = socket.getfqdn()
            try:
                self["hostname"] = _domainOption("hostname", machine)
            except usage.UsageError:
                raise usage.UsageError(f"--hostname: this machine's name {machine!r} is not a domain name; give one") from None
            return
        self["hostname"] = _domainOption("hostname", self["hostname"])

    def _checkSpool(self) -> None:
        spool = self["spool"]
        try:
            os.makedirs(spool, mode=0o700, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"--spool {spool!r}: cannot make the directory ({e.strerror})") from None
        if not os.access(spool, os.W_OK | os.X_OK):
            raise usage.UsageError(f"--spool {spool!r}: the directory is not writable")
        if SpoolLock(spool).isHeldElsewhere():
            raise usage.UsageError(f"--spool {spool!r}: another relay (or a `mailproto queue` command) is using it")


def _domainOption(name: str, value: str) -> str:
    """
    Check a domain name given to option C{--name}.

    A trailing dot (the DNS root, as in zone files) is dropped rather than
    refused: C{relay.example.} and C{relay.example} name the same host,
    but RFC 5321's C{Domain} has no trailing dot, and an address ending in
    one does not parse.

    @return: C{value} without its trailing dot.
    @raise usage.UsageError: for a name with spaces, an empty label or a
        character a domain cannot have.
    """
    stripped = value[:-1] if value.endswith(".") else value
    if not stripped:
        raise usage.UsageError(f"--{name} {value!r}: not a domain name (it is empty)")
    if any(c.isspace() for c in stripped):
        raise usage.UsageError(f"--{name} {value!r}: not a domain name (it has a space)")
    if "" in stripped.split("."):
        raise usage.UsageError(f"--{name} {value!r}: not a domain name (it has an empty label)")
    try:
        encoded = stripped.encode("idna")
    except UnicodeError as e:
        raise usage.UsageError(f"--{name} {value!r}: not a domain name ({e})") from None
    if not isDomain(encoded):
        raise usage.UsageError(f"--{name} {value!r}: not a domain name (letters, digits and inner hyphens only)")
    return stripped


def _loadRecipients(path: str, domains: list[str]):
    """
    Read the C{--relay-recipients} file, as the relay starts.

    @return: the L{RecipientsFile}.
    @raise usage.UsageError: if there is no relay domain, or the file
        cannot be read, or a line is not an entry (named by its number).
    """
    from mailproto._recipients import RecipientsFile, RecipientsFileError

    if not domains:
        raise usage.UsageError("--relay-recipients needs --relay-domain (it lists the valid recipients of the relay domains)")
    try:
        return RecipientsFile(os.path.abspath(path)).load()
    except OSError as e:
        raise usage.UsageError(f"--relay-recipients {path!r}: cannot read it ({e.strerror})") from None
    except RecipientsFileError as e:
        raise usage.UsageError(f"--relay-recipients {path!r}: {e}") from None


def _loadAuthorities(path: str, name: str = "smarthost-ca"):
    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    from mailproto._tls import _PEM_CERTIFICATE

    try:
        with open(path, "rb") as f:
            blocks = _PEM_CERTIFICATE.findall(f.read())
        if not blocks:
            raise ValueError("no PEM certificate in it")
        return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])
    except OSError as e:
        raise usage.UsageError(f"--{name} {path!r}: cannot read it ({e.strerror})") from None
    except Exception as e:
        raise usage.UsageError(f"--{name} {path!r}: {e}") from None


@implementer(IRealm)
class _SubmissionRealm:
    """
    An authenticated client's mail goes into the queue (and may go
    anywhere: the relay policy lets authenticated clients relay).
    """

    def __init__(self, deliveryFactory) -> None:
        self.deliveryFactory = deliveryFactory

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IMessageDeliveryFactory in interfaces:
            return IMessageDeliveryFactory, self.deliveryFactory, lambda: None
        raise NotImplementedError("the relay's realm only gives IMessageDeliveryFactory avatars")


class _RelaySession:
    """
    What the relay's servers share: their metrics, and graceful shutdown.
    A session in the middle of a transaction (or of a command's answer)
    is left to finish it; one between transactions is told C{421} and
    closed.
    """

    listener = "smtp"
    metrics = None
    _shuttingDown = False

    def connectionMade(self) -> None:
        self._verb = None
        sessions = getattr(self.factory, "sessions", None)
        if sessions is not None:
            sessions.add(self)
        if self.metrics is not None:
            self.metrics.connectionOpened(self.listener)
        super().connectionMade()

    def connectionLost(self, reason=None) -> None:
        sessions = getattr(self.factory, "sessions", None)
        if sessions is not None:
            sessions.discard(self)
        if self.metrics is not None:
            self.metrics.connectionClosed(self.listener)
        super().connectionLost(reason)

    def limitExceeded(self, limit: str) -> None:
        """
        Count each time a per-connection limit acts, by listener and
        limit.
        """
        if self.metrics is not None:
            self.metrics.limitActed(self.listener, limit)
        super().limitExceeded(limit)

    def lookupMethod(self, command):
        method = super().lookupMethod(command)
        self._verb = method.__name__[3:] if method is not None else None
        return method

    def sendCode(self, code: int, message: bytes = b"", status: bytes | None = None) -> None:
        super().sendCode(code, message, status)
        if code >= 400 and self.metrics is not None and self._verb in ("MAIL", "RCPT", "DATA", "BDAT"):
            stage = {"MAIL": "mail", "RCPT": "rcpt"}.get(self._verb, "data")
            self.metrics.refused(stage, code, status or (statusOf(code, message) if isinstance(message, bytes) else None))
        if self._shuttingDown:
            self.callLater(0, self._closeIfIdle)

    def state_COMMAND(self, line: bytes) -> None:
        # Stopping: a command after the transaction (pipelined after its
        # end, say) gets 421 rather than a new transaction.
        if self._shuttingDown and not self.inTransaction():
            self._closeIfIdle()
            return
        return super().state_COMMAND(line)

    def inTransaction(self) -> bool:
        """
        @return: whether a transaction is open (MAIL given and not over),
            or a command is being answered.
        """
        return self._from is not None or self._pending is not None or self.mode != "COMMAND"

    def shutDown(self) -> None:
        """
        The relay is stopping: close now if idle, else after the
        transaction.
        """
        self._shuttingDown = True
        self._closeIfIdle()

    def _closeIfIdle(self) -> None:
        if not self._closing and not self.inTransaction():
            self._hangUp(421, self.host + b" Service shutting down", b"4.3.2")


class RelayESMTP(_RelaySession, ESMTP):
    """
    The relay's server: the queue logs each message it takes, with its
    queue id, so the server does not log it again.
    """

    noisy = False


class RelayLMTP(_RelaySession, LMTP):
    """
    The relay's LMTP server.
    """

    noisy = False
    listener = "lmtp"


class _RelayFactoryMixin:
    """
    Keeps the factory's sessions, and gives them its listener name and
    metrics.
    """

    listener = "smtp"
    metrics = None

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.sessions = set()

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        p.listener = self.listener
        p.metrics = self.metrics
        return p


class RelayESMTPFactory(_RelayFactoryMixin, ESMTPFactory):
    protocol = RelayESMTP
    noisy = False


class RelayLMTPFactory(_RelayFactoryMixin, LMTPFactory):
    protocol = RelayLMTP
    noisy = False


class RelayService(service.MultiService):
    """
    The relay: its queue, its listeners, its relaying manager, its control
    socket and its metrics.

    @ivar queue: the L{Queue}.
    @ivar manager: the L{SmartHostESMTPRelayingManager}.
    @ivar factory: the L{ESMTPFactory} of the SMTP listeners.
    @ivar factories: the factories of every listener, by kind (C{smtp},
        C{submission}, C{smtps}, C{lmtp}).
    @ivar listeners: the listening services, in the order they start.
    @ivar metrics: the L{RelayMetrics}, or C{None}.
    @ivar connectionLimits: the L{ConnectionLimits} every listener shares,
        or C{None}.
    @ivar authFailures: the L{AuthFailures} every ESMTP listener shares,
        or C{None}.
    @ivar checker: the L{mailproto._cred.UsersFileChecker}, stopped with
        the relay, or C{None}.
    @ivar log: the L{RelayLog} this relay logs to, or C{None} if twistd
        logs as it does by default.
    @ivar shutdownGrace: seconds sessions in a transaction and attempts in
        progress get to end when the relay stops.
    @ivar handleSignals: whether to handle SIGHUP (reopen the log) and a
        second SIGTERM (ignored while stopping) once the reactor runs.
    """

    metrics = None
    log = None
    handleSignals = False
    #: C{(uid, gid)} twistd switches to after the privileged start (its
    #: C{--uid}/C{--gid}), or C{None}: the spool is given to that user.
    runAs = None
    connectionLimits = None
    authFailures = None
    checker = None
    #: What stops the relay's start, found while it was made, or C{None}.
    startError = None

    #: The L{WorkerPool <mailproto._relayd._workers.WorkerPool>} that
    #: accepts mail with C{--workers}, or C{None}.
    workers = None
    #: What SIGHUP reloads: a L{mailproto._relayd._config.ConfigReloader}
    #: (with C{--config}), a L{mailproto._relayd._config.CertificateReloader}
    #: (a certificate, no C{--config}), or C{None}.
    reloader = None

    def __init__(
        self,
        queue: Queue,
        manager,
        factory: ESMTPFactory,
        listen: list[str],
        description: str = "",
        *,
        listeners: list | None = None,
        factories: dict | None = None,
        control: bool = True,
        shutdownGrace: float = 30.0,
        clock=None,
    ) -> None:
        """
        @param listen: SMTP endpoint descriptions for C{factory}.
        @param listeners: more C{(description, endpoint, factory)} to
            listen with.
        @param control: whether to listen on the spool's control socket.
        @param clock: the C{IReactorTime} of the shutdown's grace; the
            reactor if C{None}.
        """
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.queue = queue
        self.manager = manager
        self.factory = factory
        self.description = description
        self.factories = dict(factories or {"smtp": factory})
        self.shutdownGrace = shutdownGrace
        # The queue changes the files under the lock the relay holds.
        self.lock = queue.lock
        self.listeners = []
        from twisted.internet import reactor

        for description in listen:
            self._listen(description, endpoints.serverFromString(reactor, description), factory)
        for description, endpoint, each in listeners or ():
            self._listen(description, endpoint, each)
        self.listen = list(listen) + [description for description, _, _ in listeners or ()]
        self.control = None
        if control:
            path = socketPath(queue.directory)
            self.control = internet.UNIXServer(path, ControlFactory(manager), mode=0o600, wantPID=False)
            self.control.setServiceParent(self)

    def _listen(self, description: str, endpoint, factory) -> None:
        listener = internet.StreamServerEndpointService(endpoint, factory)
        listener._raiseSynchronously = True
        listener.setServiceParent(self)
        self.listeners.append(listener)

    def setServiceParent(self, parent):
        # twistd passes the application itself: log the way the options
        # say, before twistd would start its own log.
        if self.log is not None and isinstance(parent, components.Componentized):
            if parent.getComponent(ILogObserver, None) is None:
                parent.setComponent(ILogObserver, self.log.observer())
        return super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        """
        Take the spool and bind the ports (as root, when twistd switches
        user afterwards).  What stops it is said in one line, and the
        process exits with status 1.
        """
        try:
            self._privilegedStart()
        except Exception as e:
            _log.critical("mailrelay: cannot start: {why}", why=describeStartFailure(e))
            raise SystemExit(1) from None

    def _privilegedStart(self) -> None:
        if self.startError is not None:
            raise self.startError
        # Only one relay per spool: the lock is held until the process ends.
        self.lock.acquire()
        if self.control is not None:
            _unlink(socketPath(self.queue.directory))
        if self.runAs is not None:
            changed = giveSpool(self.queue.directory, self.lock.path, *self.runAs)
            if changed:
                _log.info("mailrelay: spool {spool} given to uid {uid} ({changed} entries)", spool=self.queue.directory, uid=self.runAs[0], changed=changed)
        super().privilegedStartService()
        if self.runAs is not None and self.control is not None:
            # Bound just now, as root: the relay's user answers on it.
            os.lchown(socketPath(self.queue.directory), *self.runAs)

    def startService(self) -> None:
        if not self.lock.held:
            self.lock.acquire()
            if self.control is not None:
                _unlink(socketPath(self.queue.directory))
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
        if self.handleSignals and threading.current_thread() is threading.main_thread():
            from twisted.internet import reactor

            # After the reactor's own handlers, which it installs as it starts.
            reactor.callWhenRunning(self._installSignalHandlers)

    def _installSignalHandlers(self) -> None:
        """
        SIGHUP reopens the log; a second SIGTERM while the relay is
        stopping is only logged (the reactor would complain that it is
        already stopping).
        """
        signal.signal(signal.SIGHUP, self._hangUpSignal)
        stop = signal.getsignal(signal.SIGTERM)
        if not callable(stop):
            return

        def terminate(number, frame) -> None:
            if self.running:
                stop(number, frame)
            else:
                from twisted.internet import reactor

                reactor.callFromThread(_log.info, "mailrelay: already stopping; SIGTERM ignored")

        signal.signal(signal.SIGTERM, terminate)

    def _hangUpSignal(self, number, frame) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(self.reopenLog)
        if self.reloader is not None:
            reactor.callFromThread(self.reloader.reload)
        if self.workers is not None:
            reactor.callFromThread(self.workers.signalAll, signal.SIGHUP)

    def reopenLog(self) -> None:
        """
        Open the log file again (SIGHUP: after log rotation moved it).
        """
        if self.log is not None:
            self.log.reopen()
            _log.info("mailrelay: log file reopened")

    def stopService(self) -> defer.Deferred:
        """
        Stop listening, let sessions in a transaction and attempts in
        progress end (for at most L{shutdownGrace} seconds), then stop.
        """
        service.Service.stopService(self)
        deadline = self.clock.seconds() + self.shutdownGrace
        d = defer.gatherResults([defer.maybeDeferred(each.stopService) for each in self.listeners], consumeErrors=True)
        d.addBoth(lambda _: self._drainSessions(deadline))
        d.addBoth(lambda _: self._drainAttempts(deadline))
        d.addBoth(lambda _: defer.gatherResults(
            [defer.maybeDeferred(each.stopService) for each in self if each not in self.listeners and each.running],
            consumeErrors=True,
        ))
        d.addBoth(self._stopped)
        return d

    def _sessions(self) -> list:
        return [s for f in self.factories.values() for s in getattr(f, "sessions", ())]

    def _drainSessions(self, deadline: float) -> defer.Deferred:
        sessions = self._sessions()
        if sessions:
            busy = sum(1 for s in sessions if s.inTransaction())
            _log.info(
                "mailrelay: stopping; {busy} in a transaction get up to {grace:g} s to finish",
                busy=_count(busy, "session"),
                grace=round(max(deadline - self.clock.seconds(), 0), 1),
            )
        for session in sessions:
            session.shutDown()
        return self._waitFor(lambda: not self._sessions(), deadline, self._abortSessions)

    def _abortSessions(self) -> None:
        sessions = self._sessions()
        _log.info("mailrelay: {count} did not finish in time; closed (their messages were not accepted)", count=_count(len(sessions), "session"))
        for session in sessions:
            session.transport.abortConnection()

    def _drainAttempts(self, deadline: float) -> defer.Deferred:
        self.manager.stop()
        if self.manager.inFlight():
            return self._waitFor(lambda: not self.manager.inFlight(), deadline, lambda: None)
        return defer.succeed(None)

    def _waitFor(self, done, deadline: float, giveUp) -> defer.Deferred:
        """
        @return: a C{Deferred} that fires once C{done()} is true, or at the
            deadline after C{giveUp()}.
        """
        result = defer.Deferred()

        def check() -> None:
            if done():
                result.callback(None)
            elif self.clock.seconds() >= deadline:
                giveUp()
                result.callback(None)
            else:
                self.clock.callLater(min(0.05, max(deadline - self.clock.seconds(), 0)), check)

        check()
        return result

    def _stopped(self, result):
        self.lock.release()
        if self.checker is not None:
            self.checker.stop()
        stats = self.manager.stats
        _log.info(
            "mailrelay: stopped; {queued} queued now; this run: {delivered} delivered, {deferred} deferred, "
            "{failed} failed, {reports} reports; {fsyncs} fsyncs",
            queued=len(self.queue.ids()),
            delivered=stats["delivered"],
            deferred=stats["deferred"],
            failed=stats["failed"],
            reports=stats["reports"],
            fsyncs=self.queue.fsyncs + (self.workers.fsyncs if self.workers is not None else 0),
        )
        return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _logPath(options: Options) -> str | None:
    """
    @return: where twistd was told to log (C{"-"}: standard output), or
        C{None} when it logs to syslog or is not running this.
    """
    parent = getattr(options, "parent", None)
    if parent is None or parent.get("syslog"):
        return None
    path = parent.get("logfile")
    if path is None:
        path = "-" if parent.get("nodaemon") else "twistd.log"
    return path


def _sessionLimits(options: Options) -> dict:
    """
    @return: the per-connection limits of the options, as the server's
        factories take them.
    """
    return {
        "commandDeadline": options["command-deadline"],
        "minDataRate": options["min-data-rate"],
        "maxJunkCommands": options["max-junk-commands"],
        "greetingDelay": options["greeting-delay"],
    }


def _limitedListeners(options: Options, factories: dict, connectionLimits: ConnectionLimits, reactor) -> list:
    """
    @return: C{(description, endpoint, factory)} of every listener: each
        factory held to C{connectionLimits} (inside TLS for C{--smtps}, so
        that a refusal is readable), each endpoint pausing when out of
        file descriptors, and behind the PROXY protocol if asked.
    """
    listeners = []
    for kind in _LISTENERS:
        for description in options[kind]:
            name = f"{description} ({kind})" if kind != "smtp" else description
            endpoint = guardAccepts(
                endpoints.serverFromString(reactor, withBacklog(description)),
                clock=reactor,
                description=name,
                observer=functools.partial(connectionLimits.acted, kind),
            )
            if options["proxy-protocol"]:
                endpoint = proxyEndpoint(endpoint, clock=reactor)
            factory = ConnectionLimitsFactory(factories[kind], connectionLimits, kind)
            if kind == "smtps":
                factory = TLSMemoryBIOFactory(options["tls"], False, factory)
            listeners.append((name, endpoint, factory))
    return listeners


#: File descriptors kept for what is not a session: the spool, logs,
#: outgoing connections, the listeners.
_DESCRIPTOR_RESERVE = 256


def _fitDescriptorLimit(maxClients: int) -> None:
    """
    Raise the soft limit on open files (C{ulimit -n}) towards the hard
    one, so that C{maxClients} sessions fit (two descriptors each while a
    message is spooled), and log a warning if they still do not.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover
        return
    needed = 2 * maxClients + _DESCRIPTOR_RESERVE if maxClients else None
    if soft == resource.RLIM_INFINITY or (needed is not None and soft >= needed):
        return
    target = hard if needed is None or (hard != resource.RLIM_INFINITY and hard < needed) else needed
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):  # pragma: no cover
            pass
    if needed is None or soft < needed:
        _log.warn(
            "mailrelay: --max-clients {clients} may need more file descriptors than the limit of {soft} "
            "(ulimit -n); past it, accepting pauses a second at a time",
            clients=maxClients or "0 (no limit)",
            soft=soft,
        )


def _count(number: int, noun: str) -> str:
    """
    @return: C{"1 session"}, C{"2 sessions"}.
    """
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _portals(options: Options, queue: Queue, deliveryFactory, intake, reactor) -> tuple:
    """
    Make the portals of authenticated sessions from C{--users}.

    @return: C{(portal, submissionPortal, checker)}: the portal of the SMTP
        port, the one of submission and SMTPS, and the users file checker;
        all C{None} without C{--users}.
    """
    if options["users"] is None:
        return None, None, None
    from mailproto._cred import UsersFileChecker

    checker = UsersFileChecker(options["users"], reactor=reactor)
    portal = Portal(_SubmissionRealm(deliveryFactory), [checker])
    submissionPortal = _submission.submissionPortal(
        options, queue, options["policy"], intake, [checker], reactor
    )
    return portal, submissionPortal, checker


def _listenerFactories(
    options: Options, hostname: bytes, deliveryFactory, portal, submissionPortal, authFailures: AuthFailures
) -> dict:
    """
    Make the protocol factory of each listener that the options enable.

    @return: a C{dict} from listener kind (C{"smtp"}, C{"submission"},
        C{"smtps"}, C{"lmtp"}) to its factory; C{"smtp"} is always there.
    """
    limits = {
        "maxMessageSize": options["max-message-size"],
        "maxRecipients": options["max-recipients"],
        **_sessionLimits(options),
    }
    tls = options["tls"]

    def esmtp(kind: str, required: bool):
        # With AUTH required there is no delivery for anonymous clients: 530.
        factory = RelayESMTPFactory(
            portal if kind == "smtp" else submissionPortal,
            deliveryFactory=None if required else deliveryFactory,
            contextFactory=tls if kind != "smtps" else None,
            domain=hostname,
            authFailures=authFailures,
            **limits,
        )
        factory.listener = kind
        # The relay keeps REQUIRETLS in its queue and honours it when it
        # sends (mailproto._security._policies): it may offer it.
        factory.requireTLS = True
        return factory

    factories = {"smtp": esmtp("smtp", False)}
    for kind in ("submission", "smtps"):
        if options[kind]:
            factories[kind] = esmtp(kind, True)
    if options["lmtp"]:
        factories["lmtp"] = RelayLMTPFactory(
            deliveryFactory=deliveryFactory, domain=hostname, authFailures=authFailures, **limits
        )
    return factories


def _connectionLimits(options: Options, reactor) -> ConnectionLimits:
    """
    Make the limits on clients, per address and per second, that the
    relay networks are exempt from.
    """
    return ConnectionLimits(
        options["max-clients"],
        options["max-clients-per-address"],
        options["max-connection-rate"],
        exempt=options["policy"].networks,
        clock=reactor,
    )


def _relayingManager(options: Options, queue: Queue, reactor) -> tuple:
    """
    Make the manager that sends from the queue, by MX records or through
    C{--smarthost}, with its report policy.

    @return: C{(manager, reportPolicy)}.
    """
    manager = SmartHostESMTPRelayingManager(
        queue,
        options["max-connections"],
        options["max-messages-per-connection"],
        smartHost=options["smarthost"],
        maxConnectionsPerDestination=options["max-connections-per-destination"],
        schedule=options["schedule"],
        hostname=options["hostname"],
        reactor=reactor,
        softBounce=bool(options["soft-bounce"]),
        timeout=options["reply-timeout"],
        mxcalc=_outbound.mxCalculator(options, reactor),
        security=_outbound.securityPolicies(options, options["spool"], reactor),
    )
    reportPolicy = ReportPolicy(toStrangers=not options["no-reports-to-strangers"])
    manager.recorder.reporter.policy = reportPolicy
    return manager, reportPolicy


def _workerCount(options: Options, relayAs: tuple[int, int] | None) -> tuple[int, Exception | None]:
    """
    How many workers the relay starts: C{--workers}, once it is sure the
    user it will run as (C{relayAs}) can start them.  If that user cannot,
    C{--workers auto} falls back to one process, with a warning, and a
    number given is a start-up error.

    @return: the number of workers, and the error to stop the start with
        (or C{None}).
    """
    count = options["workers"]
    if count == 1 or relayAs is None:
        return count, None
    try:
        checkWorkersCanRun(*relayAs)
    except WorkersCannotRun as e:
        if getattr(options, "workersAuto", False):
            _log.warn("mailrelay: {why}; running as one process", why=str(e).replace(", or use --workers 1", ""))
            return 1, None
        return count, e
    return count, None


def _addWorkers(relay: RelayService, options: Options, count: int, queue: Queue, connectionLimits, authFailures, reactor) -> None:
    """
    With C{--workers N}: the C{count} workers that accept mail, stopped
    first when the relay stops (they drain their sessions before the
    deliveries are drained).
    """
    from mailproto._relayd._workers import WorkerPool

    listen = [(kind, description) for kind in _LISTENERS for description in options[kind]]
    pool = WorkerPool(count, listen, options.commandLine, queue, connectionLimits, authFailures, reactor, grace=options["shutdown-grace"])
    pool.setServiceParent(relay)
    relay.listeners.append(pool)
    relay.listen = [f"{description} ({kind})" if kind != "smtp" else description for kind, description in listen]
    relay.listen.append(f"{count} workers")
    relay.workers = pool


def _warnUnqualifiedHostname(options: Options) -> None:
    """
    Warn if C{--hostname} is not fully qualified.
    """
    if "." not in options["hostname"]:
        _log.warn(
            "mailrelay: the host name {hostname!r} is not fully qualified: receivers may refuse mail from it, and "
            "reports name it; give --hostname relay.example.com",
            hostname=options["hostname"],
        )


def _describeRelay(options: Options, authenticated: bool) -> str:
    """
    Say where the relay sends mail and whom it accepts mail from.

    @param authenticated: whether authenticated users may relay.
    """
    policy = options["policy"]
    smartHost = options["smarthost"]
    if smartHost is not None:
        host = f"[{smartHost.host}]" if ":" in smartHost.host else smartHost.host
        route = f"relaying through {host}:{smartHost.port}"
    else:
        route = "relaying by MX records"
    who = ", ".join(str(n) for n in policy.networks) or "no network"
    if policy.domains:
        who += "; anyone for " + ", ".join(sorted(d.decode("idna") for d in policy.domains))
        if policy.recipients is not None:
            who += f" (recipients in {policy.recipients.path})"
    if authenticated:
        who += "; authenticated users"
    return f"{route}; accepting mail from {who}"


def _addMetrics(relay: RelayService, options: Options, intake, reportPolicy: ReportPolicy, reactor) -> None:
    """
    With C{--metrics}, serve the relay's metrics there and let every part
    of the relay that acts on a client or a message report to them.
    """
    if not options["metrics"]:
        return
    from mailproto._relayd._metrics import RelayMetrics

    relay.metrics = RelayMetrics(relay.queue, relay.manager, reactor)
    relay.connectionLimits.observers.append(relay.metrics.limitActed)
    intake.observers.append(relay.metrics.intakePolicyActed)
    options["policy"].observers.append(relay.metrics.policyRefused)
    reportPolicy.observers.append(relay.metrics.policyRefused)
    for factory in relay.factories.values():
        factory.metrics = relay.metrics
    metrics = internet.StreamServerEndpointService(endpoints.serverFromString(reactor, options["metrics"]), relay.metrics.site())
    metrics._raiseSynchronously = True
    metrics.setServiceParent(relay)
    relay.listen.append(f"{options['metrics']} (metrics)")


def makeService(options: Options) -> RelayService:
    """
    Make the relay from its options.
    """
    from twisted.internet import reactor

    # The relay holds the spool's lock from its start to its exit, and its
    # queue works under it.
    queue = Queue(options["spool"], reactor=reactor, lock=SpoolLock(options["spool"], relay=True))
    policy = options["policy"]
    hostname = options["hostname"].encode("idna")
    intake = _submission.intakePolicy(options, hostname, reactor)
    deliveryFactory = QueueDeliveryFactory(queue, policy, intake=intake, dkim=options["dkim-signer"])
    portal, submissionPortal, checker = _portals(options, queue, deliveryFactory, intake, reactor)
    # One count of failed AUTH per address for every port: blocked on one, blocked on all.
    authFailures = AuthFailures(limit=options["max-auth-failures"], window=AUTH_FAILURE_WINDOW, clock=reactor)
    factories = _listenerFactories(options, hostname, deliveryFactory, portal, submissionPortal, authFailures)
    connectionLimits = _connectionLimits(options, reactor)
    relayAs = runAs(options)
    workers, workersError = _workerCount(options, relayAs)
    # With workers, they listen; this process keeps the queue and delivers.
    listeners = _limitedListeners(options, factories, connectionLimits, reactor) if workers == 1 else []
    manager, reportPolicy = _relayingManager(options, queue, reactor)
    _warnUnqualifiedHostname(options)
    relay = RelayService(
        queue,
        manager,
        factories["smtp"],
        [],
        _describeRelay(options, authenticated=portal is not None),
        listeners=listeners,
        factories=factories,
        shutdownGrace=options["shutdown-grace"],
        clock=reactor,
    )
    if workers > 1:
        _addWorkers(relay, options, workers, queue, connectionLimits, authFailures, reactor)
    relay.startError = workersError
    relay.runAs = relayAs
    relay.connectionLimits = connectionLimits
    relay.authFailures = authFailures
    relay.checker = checker
    _fitDescriptorLimit(options["max-clients"])
    reports = _outbound.tlsReporter(options, manager.security, queue, reactor)
    if reports is not None:
        reports.setServiceParent(relay)
    _addMetrics(relay, options, intake, reportPolicy, reactor)
    path = _logPath(options)
    if path is not None:
        relay.log = RelayLog(path, options["log-format"])
    if options.get("config"):
        relay.reloader = _config.ConfigReloader(relay, options, policy=policy, intake=intake, reportPolicy=reportPolicy)
    elif options["tls"] is not None:
        relay.reloader = _config.CertificateReloader(relay, options)
    # Under twistd: SIGHUP and SIGTERM are the relay's.
    relay.handleSignals = getattr(options, "parent", None) is not None
    return relay
