# -*- test-case-name: mailproto.test.test_config -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{twistd mailrelay --config FILE}: the daemon's options in a TOML file,
and SIGHUP reading it again.

One validation path
===================

The file is turned into command-line arguments (C{max-clients = 500}
becomes C{--max-clients=500}, C{smtp = ["tcp:25", "tcp:26"]} becomes two
C{--smtp}, C{soft-bounce = true} becomes C{--soft-bounce}), placed
I{before} the real command line, and the whole is parsed by the same
L{mailproto._relayd._daemon.Options}: every check its C{postOptions} makes
applies to the file as it does to the command line, and there is no
second list of what each option means.  What this module checks itself
is only what the command line cannot express: a key that is no option,
and a TOML value of the wrong type.  An option given on the command line
replaces the file's key altogether (the file's key is dropped, so a
repeatable option such as C{--smtp} is not added to the file's list).

A usage error caused by a key of the file is said in one line that names
the file and the key's line: C{relay.toml, line 4: --max-clients: 'lots'
is not a whole number (0 or more)}.

Reloading
=========

L{ConfigReloader.reload} parses the file again, with the same command
line, through the same L{Options} (only the spool's lock is not checked:
the running relay holds it).  A file that does not pass is refused as a
whole and the running configuration stays.  Otherwise the options that
changed are compared by their written values, and each is either applied
to the running objects (the relay policy, the connection limits, the
factories' per-session limits, the smart host, ...: used by new
connections and attempts; open ones are not dropped) or reported as
needing a restart (the listeners, the spool, the hostname, ...).

The TLS certificate and key are read again on every reload, whether or
not their paths changed: a certificate renewed in place (the same path,
new contents, as Let's Encrypt's renewals leave it) is used for the TLS
sessions that start from then on, and the reload line says C{TLS
certificate reloaded from PATH}; sessions already in TLS keep theirs.
A file that cannot be used (not PEM, a key that does not match) is a
usage error like any other: the reload is refused, in one line, and the
old certificate stays.  A relay with a certificate and no configuration
file reads the certificate again on SIGHUP too (L{CertificateReloader}).
"""

from __future__ import annotations

import getopt
import hashlib
import os
import re
import sys

from twisted.logger import Logger
from twisted.python import usage

_log = Logger()

#: Options of C{twistd mailrelay} (added to its C{optParameters}).
OPT_PARAMETERS = [
    [
        "config",
        None,
        None,
        "A TOML file of these options (keys are the long option names; lists for repeatable ones, true for flags); "
        "the command line overrides it.  SIGHUP reads it again and applies what can change without a restart.",
    ],
]

#: Keys that are options of the command line only.
_NOT_KEYS = frozenset({"help", "version", "config"})

#: Options a reload does not apply: the relay must be restarted.
RESTART = (
    "smtp",
    "submission",
    "smtps",
    "lmtp",
    "spool",
    "hostname",
    "metrics",
    "log-format",
    "proxy-protocol",
    "dns-server",
    "dnssec",
    "no-tls-reports",
    "tls-report-organization",
    "tls-report-contact",
    "dkim-key",
    "dkim-sign-for",
    "dkim-subdomains",
    "dkim-domain",
    "dkim-expiry",
    "tls-ca",
)


class ConfigError(usage.UsageError):
    """
    The configuration file cannot be used; the message is one line.
    """


def _readFile(path: str) -> tuple[dict, list[str]]:
    """
    @return: the TOML document at C{path}, and its lines.
    @raise ConfigError: if it cannot be read or is not TOML.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"--config {path!r}: cannot read it ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
        return tomllib.loads(text), text.splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not TOML: {e}") from None


def _lineOf(lines: list[str], key: str) -> int | None:
    """
    @return: the number of the line where C{key} is given a value, if it
        can be found.
    """
    name = r"(?:%s|\"%s\"|'%s')" % ((re.escape(key),) * 3)
    pattern = re.compile(r"\s*(?:%s\s*=|\[+\s*%s\s*\])" % (name, name))
    for number, line in enumerate(lines, 1):
        if pattern.match(line):
            return number
    return None


def _where(path: str, lines: list[str], key: str) -> str:
    line = _lineOf(lines, key)
    return f"{path}, line {line}" if line is not None else path


def _kinds(options: usage.Options) -> tuple[set[str], set[str], set[str]]:
    """
    @return: the names of C{options}' flags, of its parameters, and of
        those parameters that are repeatable (a list, empty at first).
    """
    flags, parameters = set(), set()
    for long in options.longOpt:
        name = long.rstrip("=")
        if name in _NOT_KEYS:
            continue
        (parameters if long.endswith("=") else flags).add(name)
    repeatable = {name for name in parameters if isinstance(options.get(name), list)}
    return flags, parameters, repeatable


def _given(options: usage.Options, argv: list[str]) -> tuple[set[str], str | None]:
    """
    @return: the long names of the options on the command line C{argv},
        and its C{--config} (the last one), if any.
    """
    try:
        opts, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.error:
        # The parse proper says what is wrong.
        return set(), None
    names, config = set(), None
    for opt, arg in opts:
        opt = opt.lstrip("-")
        name = options.synonyms.get(opt, options.synonyms.get(opt.replace("-", "_"), opt)).replace("_", "-")
        names.add(name)
        if name == "config":
            config = arg
    return names, config


def fileArguments(options: usage.Options, path: str, given=frozenset()) -> list[str]:
    """
    Turn the configuration file into command-line arguments.

    @param options: the L{usage.Options} the arguments are for (not parsed
        yet).
    @param path: the file.
    @param given: the names of the options on the command line: the
        file's keys of the same names are left out.
    @return: the arguments.
    @raise ConfigError: if the file cannot be read or parsed, has a key
        that is no option, or a value of the wrong type.
    """
    document, lines = _readFile(path)
    flags, parameters, repeatable = _kinds(options)
    arguments = []
    for key, value in document.items():
        where = _where(path, lines, key)
        if key not in flags and key not in parameters:
            why = "an option of the command line only" if key in _NOT_KEYS else "no option of twistd mailrelay"
            raise ConfigError(f"{where}: unknown key {key!r} ({why})")
        if key in flags:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false, not {_typeName(value)}")
            if value and key not in given:
                arguments.append(f"--{key}")
            continue
        if key in repeatable and isinstance(value, list):
            values = value
            if not all(isinstance(v, str) for v in values):
                raise ConfigError(f"{where}: {key} must be a list of strings")
        elif isinstance(value, str) or (key not in repeatable and isinstance(value, (int, float)) and not isinstance(value, bool)):
            values = [value]
        else:
            expected = "a string or a list of strings" if key in repeatable else "a string or a number"
            raise ConfigError(f"{where}: {key} must be {expected}, not {_typeName(value)}")
        if key not in given:
            arguments.extend(f"--{key}={v}" for v in values)
    return arguments


def _typeName(value) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return "a date or time"


def parseOptions(options: usage.Options, parse, argv: list[str] | None) -> None:
    """
    Parse the command line C{argv}, and the configuration file it names
    with C{--config}, as one (see the module's docstring).

    Sets C{options.commandLine} (the command line) and
    C{options.arguments} (the file's arguments then the command line), and
    makes C{options["config"]} absolute.

    @param parse: the plain parser of C{options} (C{usage.Options}'
        C{parseOptions}, bound).
    @raise usage.UsageError: for a bad option, in the file or not; in one
        line naming the file and the line for a key of the file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    given, path = _given(options, argv)
    options.commandLine = argv
    if path is None:
        options.arguments = argv
        parse(argv)
        return
    path = os.path.abspath(path)
    fromFile = fileArguments(options, path, given)
    options.arguments = fromFile + argv
    try:
        parse(fromFile + argv)
    except ConfigError:
        raise
    except usage.UsageError as e:
        raise _blame(e, path, {a[2:].partition("=")[0] for a in fromFile}) from None
    options["config"] = path


def _blame(error: usage.UsageError, path: str, keys: set[str]) -> usage.UsageError:
    """
    @return: C{error}, prefixed with the file and line of the key it is
        about if that key came from the file.
    """
    message = str(error).splitlines()[0] if str(error) else repr(error)
    for name in re.findall(r"--([a-z0-9-]+)", message):
        if name in keys:
            try:
                _, lines = _readFile(path)
            except ConfigError:
                lines = []
            return ConfigError(f"{_where(path, lines, name)}: {message}")
    return usage.UsageError(message)


# -- reloading -----------------------------------------------------------------


def tlsIdentity(tls) -> bytes | None:
    """
    @param tls: a server's TLS options (a C{CertificateOptions}, as
        C{mailproto._tls.loadServerOptions} makes them), or C{None}.
    @return: a digest of its certificate, chain and private key (their
        DER octets), equal for two loads of the same files; C{None} for
        no TLS.
    """
    if tls is None:
        return None
    from OpenSSL import crypto

    digest = hashlib.sha256()
    for certificate in [tls.certificate, *(tls.extraCertChain or ())]:
        digest.update(b"certificate\0" + crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate))
    digest.update(b"key\0" + crypto.dump_privatekey(crypto.FILETYPE_ASN1, tls.privateKey))
    return digest.digest()


def applyTLS(relay, tls) -> None:
    """
    Serve the relay's new TLS sessions with the certificate of C{tls}:
    STARTTLS on every listener that offers it, and the TLS of
    C{--smtps}.  Sessions already in TLS keep the certificate they have.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    for kind, factory in relay.factories.items():
        if kind != "smtps" and factory.contextFactory is not None:
            factory.contextFactory = tls
    for listener in relay.listeners:
        factory = getattr(listener, "factory", None)
        if isinstance(factory, TLSMemoryBIOFactory):
            factory._creatorCallable = TLSMemoryBIOFactory(tls, False, factory.wrappedFactory)._creatorCallable


def _say(line: str) -> str:
    _log.info("{line}", line=line)
    return line


def _written(options: usage.Options) -> dict[str, object]:
    """
    @return: every option as written (before C{postOptions} converts it),
        comparable: strings, and tuples of strings for repeatable ones.
    """
    raw = type(options)()
    raw.postOptions = lambda: None
    usage.Options.parseOptions(raw, options.arguments)
    return {
        name.replace("_", "-"): tuple(str(v) for v in value) if isinstance(value, list) else (None if value is None else str(value))
        for name, value in raw.items()
        if name != "config"
    }


class ConfigReloader:
    """
    Reads the relay's configuration file again (on SIGHUP) and applies
    what changed to the running relay.

    @ivar path: the configuration file.
    @ivar written: the options in force, as written (see L{_written}).
    @ivar options: the options in force, checked and converted.
    """

    def __init__(self, relay, options, *, policy, intake, reportPolicy) -> None:
        self.relay = relay
        self.options = options
        self.path = options["config"]
        self.written = _written(options)
        self._policy = policy
        self._intake = intake
        self._reportPolicy = reportPolicy

    def _parse(self):
        from mailproto._relayd._daemon import Options

        class ReloadOptions(Options):
            def _checkSpool(self) -> None:
                # The running relay holds the spool's lock; a new spool
                # needs a restart anyway.
                pass

        options = ReloadOptions()
        options.parent = getattr(self.options, "parent", None)
        options.parseOptions(self.options.commandLine)
        return options

    def reload(self) -> str:
        """
        Read the file again and apply what changed.

        @return: the line logged: what changed, or why the file was
            refused.
        """
        try:
            options = self._parse()
            written = _written(options)
        except usage.UsageError as e:
            return self._say(f"mailrelay: reload refused: {self._withPath(str(e))}; the old configuration stays")
        except Exception as e:
            return self._say(f"mailrelay: reload refused: {self.path}: {e.__class__.__name__}: {e}; the old configuration stays")
        changed = [name for name in written if written[name] != self.written.get(name)]
        restart = [name for name in changed if name in RESTART or not self._canApply(name, options)]
        applied = [name for name in changed if name not in restart]
        renewed = self._renewed(changed, options)
        self._apply(applied, options)
        if renewed:
            applyTLS(self.relay, options["tls"])
        # What is in force now: the new values of what was applied.
        for name in applied:
            self.written[name] = written[name]
        if not changed and not renewed:
            return self._say(f"mailrelay: reloaded {self.path}: nothing changed")
        parts = []
        if applied:
            parts.append(", ".join(applied) + " changed")
        if renewed:
            parts.append(f"TLS certificate reloaded from {options['certificate']}")
        if restart:
            parts.append(", ".join(restart) + (" needs" if len(restart) == 1 else " need") + " a restart (not applied)")
        return self._say(f"mailrelay: reloaded {self.path}: " + "; ".join(parts))

    def _renewed(self, changed: list[str], options) -> bool:
        """
        @return: whether the certificate or key files, at the paths in
            force, now hold another certificate or key (read by the parse
            of C{options}): renewed in place.
        """
        if "certificate" in changed or "private-key" in changed:
            # Another path: applied (or not) as a changed option.
            return False
        old, new = self.options["tls"], options["tls"]
        return old is not None and new is not None and tlsIdentity(new) != tlsIdentity(old)

    def _withPath(self, message: str) -> str:
        return message if self.path in message else f"{self.path}: {message}"

    def _say(self, line: str) -> str:
        return _say(line)

    def _canApply(self, name: str, options) -> bool:
        """
        @return: whether the change of C{name} can be applied live.
        """
        if name == "users":
            return (options["users"] is None) == (self.relay.checker is None)
        if name in ("certificate", "private-key"):
            return (options["tls"] is None) == (self.options["tls"] is None)
        return True

    def _apply(self, names: list[str], options) -> None:
        relay = self.relay
        names = set(names)
        if names & {"relay-network", "relay-domain", "relay-recipients"}:
            new = options["policy"]
            self._policy.networks = new.networks
            self._policy.domains = new.domains
            self._policy.recipients = new.recipients
            if relay.connectionLimits is not None:
                relay.connectionLimits.exempt = list(new.networks)
        limits = relay.connectionLimits
        for name, attribute in (
            ("max-clients", "maxClients"),
            ("max-clients-per-address", "maxPerAddress"),
            ("max-connection-rate", "maxRate"),
        ):
            if name in names and limits is not None:
                setattr(limits, attribute, options[name])
        for name, attribute in (
            ("max-message-size", "maxMessageSize"),
            ("max-recipients", "maxRecipients"),
            ("command-deadline", "commandDeadline"),
            ("min-data-rate", "minDataRate"),
            ("max-junk-commands", "maxJunkCommands"),
            ("greeting-delay", "greetingDelay"),
        ):
            if name in names:
                for factory in relay.factories.values():
                    setattr(factory, attribute, options[name])
        if "max-auth-failures" in names and relay.authFailures is not None:
            relay.authFailures.limit = options["max-auth-failures"]
        if "max-hops" in names:
            self._intake.maxHops = options["max-hops"]
        if "max-own-hops" in names:
            self._intake.maxOwnHops = options["max-own-hops"]
        manager = relay.manager
        if names & {"smarthost", "smarthost-auth", "smarthost-tls", "smarthost-ca"}:
            manager.smartHost = options["smarthost"]
        for name, attribute in (
            ("max-connections", "maxConnections"),
            ("max-messages-per-connection", "maxMessagesPerConnection"),
            ("max-connections-per-destination", "maxConnectionsPerDestination"),
            ("reply-timeout", "timeout"),
        ):
            if name in names:
                setattr(manager, attribute, options[name])
        if names & {"retry-schedule", "max-queue-lifetime"}:
            manager.schedule = options["schedule"]
        if "soft-bounce" in names:
            manager.softBounce = bool(options["soft-bounce"])
        if "no-reports-to-strangers" in names:
            self._reportPolicy.toStrangers = not options["no-reports-to-strangers"]
        if "shutdown-grace" in names:
            relay.shutdownGrace = options["shutdown-grace"]
        security = getattr(manager, "security", None)
        if security is not None and names & {"tls-policy", "default-tls-policy"}:
            security.default = options["default-tls-policy"]
            security.domains = dict(options["tls-policies"])
        for submission in self._submissionPolicies():
            if "sender-login-map" in names:
                submission.senders = options["sender-login-map"]
            if "check-from-header" in names:
                submission.checkFromHeader = bool(options["check-from-header"])
            if "keep-missing-headers" in names:
                submission.addMissing = not options["keep-missing-headers"]
        if "users" in names and relay.checker is not None:
            from mailproto._cred import UsersFile

            relay.checker.usersFile = UsersFile(options["users"])
            relay.checker._cache = (None, {})
        if names & {"certificate", "private-key"}:
            applyTLS(relay, options["tls"])
        self.options = options

    def _submissionPolicies(self) -> list:
        policies = []
        for kind in ("submission", "smtps"):
            factory = self.relay.factories.get(kind)
            submission = getattr(getattr(getattr(factory, "portal", None), "realm", None), "submission", None)
            if submission is not None and submission not in policies:
                policies.append(submission)
        return policies


class CertificateReloader:
    """
    SIGHUP for a relay with a TLS certificate and no configuration file:
    reads the certificate and key files again and, if they hold another
    certificate (renewed in place), serves new TLS sessions with it.

    @ivar tls: the TLS options in force.
    """

    def __init__(self, relay, options) -> None:
        self.relay = relay
        self.certificate = options["certificate"]
        self.privateKey = options["private-key"]
        self.tls = options["tls"]

    def reload(self) -> str:
        """
        Read the certificate and key again and use them if they changed.

        @return: the line logged: reloaded, unchanged, or refused (a file
            that cannot be used; the old certificate stays).
        """
        from mailproto._commandline._cli import loadTLS

        try:
            tls = loadTLS(self.certificate, self.privateKey, "--certificate", "--private-key")
        except usage.UsageError as e:
            return _say(f"mailrelay: TLS certificate reload refused: {e}; the old certificate stays")
        if tlsIdentity(tls) == tlsIdentity(self.tls):
            return _say(f"mailrelay: TLS certificate unchanged ({self.certificate})")
        applyTLS(self.relay, tls)
        self.tls = tls
        return _say(f"mailrelay: TLS certificate reloaded from {self.certificate}")
