# -*- test-case-name: mailproto.test.test_sink -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The C{mailproto} command and its subcommands.

Each subcommand is a C{usage.Options} subclass listed in
L{MailprotoOptions.subCommands}, with a C{run(reactor, stdout, stderr)}
method that returns the exit status.  L{main} parses the command line,
answers a usage error with one line on stderr and status 2, and runs the
subcommand.

  - C{mailproto sink}: a debugging SMTP/LMTP server that prints, or keeps
    in a Maildir or an mbox, every message it receives (L{SinkOptions}).
  - C{mailproto send}: send test messages, one or many, over several
    connections at once, with TLS and AUTH (L{SendOptions}; the sending is
    in L{mailproto._commandline._send}).
  - C{mailproto queue}: list and manage a relay's queue
    (L{mailproto._commandline._queuecommand}).
  - C{mailproto adduser}: add a user to a users file (scrypt-hashed
    passwords, for L{mailproto._cred.UsersFileChecker}), or change a
    user's password (L{AddUserOptions}).
  - C{mailproto dkim-keygen}: make a DKIM key and print its DNS record
    (L{mailproto._commandline._dkimkeygen}).
"""

from __future__ import annotations

import os
import re
import sys

from twisted.python import usage

import mailproto
from mailproto._commandline._send import (
    DEFAULT_HOST as SEND_HOST,
    DEFAULT_LMTP_PORT as SEND_LMTP_PORT,
    DEFAULT_PORT as SEND_PORT,
    DEFAULT_TIMEOUT as SEND_TIMEOUT,
    IMPLICIT_TLS_PORT as SEND_TLS_PORT,
)
from mailproto._commandline._dkimkeygen import DKIMKeygenOptions
from mailproto._commandline._queuecommand import QueueOptions
from mailproto._commandline._maildrop import SendmailOptions
from mailproto._server import SMTP

__all__ = ["AddUserOptions", "MailprotoOptions", "SendOptions", "SinkOptions", "main", "runCommand"]

PROGRAM = "mailproto"

#: Where C{mailproto sink} listens by default.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1025

_hostnameRe = re.compile(r"[A-Za-z0-9.\-\[\]:_]+")


def _number(convert, what: str, low: float, high: float, limits: str, kind: str | None = None):
    """
    @return: an option coercer: C{convert} the value, which must be
        C{what} from C{low} to C{high} (both included); C{kind} names what
        a value that does not convert is not (C{what} if C{None}).
    """

    def coerce(value: str):
        try:
            number = convert(value)
        except ValueError:
            raise ValueError(f"not {kind or what}: {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"not {what}: {value!r} ({limits})")
        return number

    return coerce


_portNumber = _number(int, "a port number", 0, 65535, "0 to 65535")
_remotePort = _number(int, "a port number", 1, 65535, "1 to 65535")
_octets = _number(int, "a number of octets", 0, float("inf"), "0 or more")
_positive = _number(int, "a positive whole number", 1, float("inf"), "1 or more", kind="a whole number")
_seconds = _number(float, "a number of seconds", 1e-6, 1e6 - 1, "more than 0")


def _workerCount(value: str) -> int:
    from mailproto._commandline._sinkworkers import parseWorkerCount

    return parseWorkerCount(value)


def _mechanism(value: str) -> str:
    from mailproto._commandline._send import MECHANISMS

    name = value.upper()
    if name not in MECHANISMS:
        raise ValueError(f"unknown AUTH mechanism {value!r} (one of {', '.join(MECHANISMS)})")
    return name



def _printVersion() -> None:
    import twisted

    print(f"{PROGRAM} {mailproto.__version__} (Twisted {twisted.__version__}, Python {sys.version.split()[0]})")
    sys.exit(0)


class _NamedCoerceParameter(usage.CoerceParameter):
    """
    A C{usage.CoerceParameter} whose errors name the option: C{--count:
    not a positive whole number: '0' (1 or more)}, not twisted's
    C{Parameter type enforcement failed: ...}.
    """

    def dispatch(self, parameterName, value):
        try:
            return usage.CoerceParameter.dispatch(self, parameterName, value)
        except usage.UsageError as e:
            cause = e.__context__
            if isinstance(cause, ValueError):
                raise usage.UsageError(f"--{parameterName}: {cause}") from None
            raise


class _Command(usage.Options):
    """
    A subcommand: C{run} does it.
    """

    synopsis = "[options]"

    def parseOptions(self, options=None) -> None:
        # Errors of coerced values name their option.
        for name, handler in list(self._dispatch.items()):
            if type(handler) is usage.CoerceParameter:
                self._dispatch[name] = _NamedCoerceParameter(self, handler.coerce)
        usage.Options.parseOptions(self, options)

    def getSynopsis(self) -> str:
        return f"Usage: {PROGRAM} {self.parent.subCommand} {self.synopsis}"

    def opt_version(self) -> None:
        """
        Print the version of mailproto and exit.
        """
        _printVersion()

    def run(self, reactor, stdout, stderr) -> int:
        """
        Do the command.

        @param reactor: the reactor to run.
        @param stdout: the text stream for the command's output.
        @param stderr: the text stream for what it says to people.
        @return: the exit status.
        """
        raise NotImplementedError()


class SinkOptions(_Command):
    """
    The options of C{mailproto sink}.
    """

    longdesc = (
        "Accept every message sent to it by SMTP (or LMTP), from any sender to any recipient, "
        "and print it on stdout: the envelope, then the message.  Nothing is relayed.  "
        "Where it listens and where it stores go to stderr.  "
        f"By default it listens on {DEFAULT_HOST} port {DEFAULT_PORT}: "
        "point the program under test at that host and port.  "
        "Examples: mailproto sink --summary;  "
        "mailproto sink --maildir ./mail --quiet;  "
        "mailproto sink --lmtp --listen unix:/tmp/lmtp.sock;  "
        "mailproto sink --listen ssl:1465:privateKey=key.pem:certKey=cert.pem;  "
        "mailproto sink --workers auto --quiet --port 2525"
    )

    optFlags = [
        ["lmtp", None, "Speak LMTP (RFC 2033, LHLO and one reply per recipient) instead of ESMTP."],
        ["summary", "s", "Print one line per message (time, client, sender, recipients, size, Subject)."],
        ["quiet", "q", "Print nothing on stdout; for use with --maildir or --mbox."],
    ]

    optParameters = [
        ["host", None, None, f"The address to listen on with TCP [default: {DEFAULT_HOST}]."],
        [
            "port",
            "p",
            None,
            f"The TCP port to listen on; 0 for any free port [default: {DEFAULT_PORT}].",
            _portNumber,
        ],
        ["hostname", None, None, "The server's name in its greeting [default: this machine's name]."],
        [
            "max-message-size",
            None,
            None,
            f"The largest message accepted, in octets; 0 for no limit [default: {SMTP.maxMessageSize}].",
            _octets,
        ],
        [
            "maildir",
            None,
            None,
            "Also store each message, exactly as received, in this Maildir (made if missing: DIR/tmp, DIR/new, "
            "DIR/cur).",
        ],
        ["mbox", None, None, "Also append each message to this mbox file (made if missing)."],
        [
            "tls-certificate",
            None,
            None,
            "A PEM certificate (and its chain) for STARTTLS: enables STARTTLS when the server offers it.  For "
            "implicit TLS, use an ssl: endpoint with --listen.",
        ],
        ["tls-key", None, None, "The PEM private key of --tls-certificate, if it is not in the same file."],
        [
            "workers",
            None,
            1,
            "How many processes take the mail, all on the same ports: a number, or auto for one per CPU this "
            "process may use.  What they print still comes out a whole message at a time; --mbox needs 1.",
            _workerCount,
        ],
    ]

    compData = usage.Completions(
        optActions={
            "maildir": usage.CompleteDirs(descr="Maildir"),
            "mbox": usage.CompleteFiles(descr="mbox file"),
            "tls-certificate": usage.CompleteFiles("*.pem", descr="PEM certificate"),
            "tls-key": usage.CompleteFiles("*.pem", descr="PEM private key"),
        }
    )

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["listen"] = []
        self["contextFactory"] = None

    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    # The help of --listen, on one line so that it wraps well.
    opt_listen.__doc__ = (
        "Listen on this Twisted server endpoint, such as tcp:2525, "
        "tcp6:1025:interface=\\:\\:1, unix:/tmp/sink.sock or "
        "ssl:1465:privateKey=key.pem:certKey=cert.pem (implicit TLS).  May be given more than once.  "
        "[default: tcp:1025:interface=127.0.0.1]"
    )
    assert opt_listen.__doc__.endswith(f"tcp:{DEFAULT_PORT}:interface={DEFAULT_HOST}]")

    opt_l = opt_listen

    def postOptions(self) -> None:
        if self["maildir"] and self["mbox"]:
            raise usage.UsageError("--maildir and --mbox cannot be used together; choose one")
        if self["mbox"] and self["workers"] > 1:
            raise usage.UsageError(
                "--mbox cannot be used with more than one worker: the mbox lock does not wait for another holder, "
                "so workers writing at once would refuse mail; use --maildir"
            )
        if self["tls-key"] and not self["tls-certificate"]:
            raise usage.UsageError("--tls-key needs --tls-certificate")
        if self["hostname"] is not None and _hostnameRe.fullmatch(self["hostname"]) is None:
            raise usage.UsageError(f"--hostname: not a host name: {self['hostname']!r}")
        if self["listen"]:
            if self["host"] is not None or self["port"] is not None:
                raise usage.UsageError("give either --listen or --host/--port, not both")
        else:
            from twisted.internet.endpoints import quoteStringArgument

            host = DEFAULT_HOST if self["host"] is None else self["host"]
            port = DEFAULT_PORT if self["port"] is None else self["port"]
            self["listen"] = [f"tcp:{port}:interface={quoteStringArgument(host)}"]
        for description in self["listen"]:
            _checkEndpoint(description)
        if self["tls-certificate"]:
            self["contextFactory"] = loadTLS(self["tls-certificate"], self["tls-key"])

    def run(self, reactor, stdout, stderr) -> int:
        """
        Run the sink until the reactor stops (SIGTERM, SIGINT).

        @return: C{0} after a clean stop, C{1} if the sink could not start.
        """
        from mailproto._commandline._sink import Sink, SinkServer

        def say(text: str) -> None:
            stderr.write(f"{PROGRAM} sink: {text}\n")
            stderr.flush()

        try:
            store = self._openStore()
        except OSError as e:
            which = "Maildir" if self["maildir"] else "mbox"
            say(f"error: cannot use {which} {self['maildir'] or self['mbox']}: {_describeOSError(e)}")
            return 1
        printer = self._printer(stdout)
        if self["workers"] > 1:
            from mailproto._commandline._sinkworkers import serveWithWorkers

            return serveWithWorkers(self, reactor, say, stdout, store, printer)
        sink = Sink(store, printer)
        factory = self._makeFactory(sink)
        server = SinkServer(reactor, factory, self["listen"])

        def started(ports) -> None:
            self._sayStarted(say, ports, store, printer, factory)

        return self._serve(reactor, server, sink, say, started)

    def _openStore(self):
        """
        Open the store of C{--maildir} or C{--mbox}.

        @return: the store, or C{None} if messages are not stored.
        @raise OSError: if the store cannot be made or opened.
        """
        from mailproto._commandline._sink import MaildirStore, MboxStore

        if self["maildir"]:
            return MaildirStore(self["maildir"])
        if self["mbox"]:
            return MboxStore(self["mbox"])
        return None

    def _printer(self, stdout):
        """
        @return: what prints the messages on C{stdout} (a line each with
            C{--summary}), or C{None} with C{--quiet}.
        """
        from mailproto._commandline._sink import MessagePrinter, SummaryPrinter

        if self["quiet"]:
            return None
        return SummaryPrinter(stdout) if self["summary"] else MessagePrinter(stdout)

    def _makeFactory(self, sink):
        """
        @return: the ESMTP (or, with C{--lmtp}, LMTP) server factory that
            delivers to C{sink}.
        """
        from mailproto._commandline._sink import makeSinkFactory

        return makeSinkFactory(
            sink,
            lmtp=self["lmtp"],
            hostname=self["hostname"],
            maxMessageSize=self["max-message-size"],
            contextFactory=self["contextFactory"],
        )

    def _sayStarted(self, say, ports, store, printer, factory) -> None:
        """
        Say where the sink listens and what it does with the messages.

        @param say: says a line on stderr.
        @param ports: C{(description, port)} of every listening port.
        @param store: the store, or C{None}.
        @param printer: the printer, or C{None}.
        @param factory: the sink's server factory.
        """
        from mailproto._commandline._sink import describePort

        protocolName = "LMTP" if self["lmtp"] else "ESMTP"
        for description, port in ports:
            say(f"listening on {describePort(description, port.getHost())} for {protocolName}")
        if store is not None:
            say(f"storing messages in {store.describe()}")
        elif printer is None:
            say("neither storing nor printing messages (--quiet without --maildir or --mbox)")
        else:
            say("not storing messages (no --maildir or --mbox)")
        if self["contextFactory"] is not None and not hasattr(factory.protocol, "ext_STARTTLS"):
            say(
                "note: STARTTLS is not available yet in this version; the TLS certificate was checked "
                "but is not used (use an ssl: endpoint for implicit TLS)"
            )

    @staticmethod
    def _serve(reactor, server, sink, say, started) -> int:
        """
        Start the server once the reactor runs, stop it (and close the
        sink) when the reactor shuts down, and run the reactor.

        @param server: the L{mailproto._commandline._sink.SinkServer}.
        @param sink: the L{mailproto._commandline._sink.Sink}.
        @param say: says a line on stderr.
        @param started: called with the listening ports once they listen.
        @return: C{0} after a clean stop, C{1} if the server could not
            start.
        """
        status = [0]

        def failed(failure) -> None:
            say(f"error: {failure.getErrorMessage()}")
            status[0] = 1
            if reactor.running:
                reactor.stop()

        def start() -> None:
            _stopOnFirstSignal()
            server.start().addCallback(started).addErrback(failed)

        def shutDown():
            stopped = server.stop()
            stopped.addBoth(lambda ignored: sink.close())
            if not status[0]:
                stopped.addCallback(lambda ignored: say(f"stopped after {sink.received} message(s)"))
            return stopped

        reactor.callWhenRunning(start)
        reactor.addSystemEventTrigger("before", "shutdown", shutDown)
        reactor.run()
        _ignoreStopSignals()
        return status[0]


def _stopOnFirstSignal() -> None:
    """
    Let only the first SIGTERM or SIGINT stop the running reactor: a
    second one, while it stops (from C{timeout}, which signals a process
    and its group, or a second Ctrl-C), is ignored rather than making
    Twisted stop a reactor that is no longer running, which it reports
    with a traceback.  Call it once the reactor runs (its handlers are
    installed then).
    """
    import signal

    received: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        first = signal.getsignal(number)
        if not callable(first):
            continue

        def handler(signum, frame, first=first) -> None:
            if not received:
                received.append(signum)
                first(signum, frame)

        signal.signal(number, handler)


def _ignoreStopSignals() -> None:
    """
    Once the reactor has stopped, ignore SIGTERM and SIGINT: the process
    is ending anyway, and Python, as it exits, puts back the default
    action of a signal it handled, so a late one (the last of those
    C{timeout} sends) would end the process by that signal instead of
    its own exit status.
    """
    import signal

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)


#: The most connections C{mailproto send} opens at once.
MAX_CONCURRENCY = 1000


class SendOptions(_Command):
    """
    The options of C{mailproto send}.  After parsing, C{config} is the
    L{mailproto._commandline._send.SendConfig}.
    """

    longdesc = (
        "Send test messages by SMTP (or LMTP), like a small swaks: one, or many over several connections at "
        "once.  Without --data, each message is made up: Date, Message-ID, From, To, Subject "
        "'mailproto test N' and a short body.  A summary line goes to stdout; errors go to stderr, one line "
        "each; a progress bar too, when stderr is a terminal and there is more than one message.  "
        "TLS: by default STARTTLS is used when the server offers it, and the server's certificate is then "
        "checked against --server (an untrusted certificate is an error, not a reason to go on in the clear).  "
        "The password for --user is read from the MAILPROTO_PASSWORD environment variable, else asked for on "
        "the terminal; never give it on the command line.  "
        "Exit status: 0 if every message was sent, 1 if any was refused or failed, 2 for a usage error.  "
        "Examples: mailproto send --from me@example.com --to you@example.com;  "
        "mailproto send --server mx.example.com --from me@example.com --to you@example.com --data msg.eml;  "
        "mailproto send --port 1025 --from a@example.com --to b@example.com --count 1000 --concurrency 10;  "
        "mailproto send --server smtp.example.com --port 587 --user me --from me@example.com --to you@example.com;  "
        "mailproto send --server smtp.example.com --tls --user me --from me@example.com --to you@example.com;  "
        "mailproto send --lmtp --socket /run/dovecot/lmtp --from me@example.com --to you@example.com"
    )

    optFlags = [
        ["tls", None, "Implicit TLS (RFC 8314): TLS from the first byte, as on port 465 (the default port with it)."],
        ["starttls", None, "Require STARTTLS: if the server does not offer it, fail and send nothing."],
        ["no-tls", None, "Never use TLS, not even when the server offers STARTTLS."],
        [
            "insecure",
            None,
            "Do not check the server's certificate (a warning says so).  For test servers only.",
        ],
        ["lmtp", None, f"Speak LMTP (RFC 2033) instead of ESMTP [default port: {SEND_LMTP_PORT}]."],
        ["quiet", "q", "Print no summary and no progress bar; errors are still said on stderr."],
        ["verbose", "v", "Print the SMTP exchange of the first connection (AUTH secrets masked) on stdout."],
    ]

    optParameters = [
        ["server", "s", None, f"The server's host name or address [default: {SEND_HOST}]."],
        [
            "port",
            "p",
            None,
            f"The server's port [default: {SEND_PORT}; {SEND_TLS_PORT} with --tls].  "
            f"--port {SEND_TLS_PORT} alone means --tls.",
            _remotePort,
        ],
        ["socket", None, None, "Connect to this UNIX socket instead of --server/--port (with --lmtp: LMTP)."],
        ["cafile", None, None, "Trust the CA certificates of this PEM file instead of the system's."],
        [
            "user",
            "u",
            None,
            "Authenticate (SMTP AUTH) as this user; the password comes from MAILPROTO_PASSWORD or is asked "
            "for.  TLS is then required, unless --no-tls.",
        ],
        [
            "auth",
            None,
            None,
            "Use only this SASL mechanism: PLAIN, LOGIN, CRAM-MD5 or XOAUTH2 (the secret is then an "
            "OAuth 2.0 access token) [default: PLAIN, LOGIN, CRAM-MD5, as the server offers].",
            _mechanism,
        ],
        ["from", "f", None, "The envelope sender, and From: of the made-up message (required; '' for <>)."],
        ["data", "d", None, "Send this message file ('-': stdin) instead of a made-up message."],
        ["body", None, None, "The body of the made-up message."],
        ["helo", None, None, "The client's name for EHLO/LHLO [default: this machine's name]."],
        [
            "timeout",
            None,
            None,
            f"Seconds to wait for the connection and for each reply [default: {SEND_TIMEOUT:g}].",
            _seconds,
        ],
        ["count", "n", 1, "How many messages to send.", _positive],
        [
            "concurrency",
            "c",
            1,
            f"How many connections to use at once (at most {MAX_CONCURRENCY}); each sends messages one "
            "after the other until --count are sent.",
            _positive,
        ],
    ]

    compData = usage.Completions(
        optActions={
            "socket": usage.CompleteFiles(descr="UNIX socket"),
            "cafile": usage.CompleteFiles("*.pem", descr="PEM CA certificates"),
            "data": usage.CompleteFiles(descr="message file"),
            "auth": usage.CompleteList(["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"]),
        }
    )

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["to"] = []
        self["header"] = []
        self.config = None

    def opt_to(self, address: str) -> None:
        """
        A recipient (required; may be given more than once).
        """
        self["to"].append(address)

    opt_t = opt_to

    def opt_header(self, field: str) -> None:
        self["header"].append(field)

    # The help of --header, on one line so that it wraps well.
    opt_header.__doc__ = (
        "A header field, 'Name: value': it replaces the made-up message's fields of that name, or is added; "
        "with --data, it goes before the message.  May be given more than once."
    )

    opt_H = opt_header

    def postOptions(self) -> None:
        from mailproto._commandline._send import SendConfig

        sender = self._envelopeSender()
        headers = self._headerFields()
        self._checkMessageOptions()
        modes, tlsOptions = self._checkTLSOptions()
        self._checkAuthOptions()
        host, port, tls = self._destination(modes, tlsOptions)
        trustRoot = self._trustRoot()
        self.config = SendConfig(
            sender=sender,
            recipients=list(self["to"]),
            host=host or SEND_HOST,
            port=port or SEND_PORT,
            socket=self["socket"],
            lmtp=bool(self["lmtp"]),
            tls=tls,
            trustRoot=trustRoot,
            insecure=bool(self["insecure"]),
            user=self["user"],
            auth=self["auth"],
            data=self["data"],
            headers=headers,
            body=self["body"],
            helo=self["helo"],
            timeout=SEND_TIMEOUT if self["timeout"] is None else self["timeout"],
            count=self["count"],
            concurrency=self["concurrency"],
            quiet=bool(self["quiet"]),
            verbose=bool(self["verbose"]),
        )

    def _envelopeSender(self) -> str:
        """
        Check C{--from} and C{--to}.

        @return: the envelope sender, C{""} for the null sender.
        @raise usage.UsageError: if either is missing or not an address.
        """
        from mailproto._address import Address
        from mailproto._errors import AddressError

        if self["from"] is None:
            raise usage.UsageError("--from is required (the envelope sender; '' for the null sender <>)")
        if not self["to"]:
            raise usage.UsageError("--to is required (a recipient; may be given more than once)")
        sender = self["from"]
        if sender.strip() in ("", "<>"):
            sender = ""
        else:
            try:
                Address(sender.encode("utf-8", "surrogateescape"))
            except AddressError:
                raise usage.UsageError(f"--from: not a mail address: {self['from']!r}") from None
        for recipient in self["to"]:
            try:
                address = Address(recipient.encode("utf-8", "surrogateescape"))
            except AddressError:
                raise usage.UsageError(f"--to: not a mail address: {recipient!r}") from None
            if not bytes(address):
                raise usage.UsageError("--to: the null address <> cannot be a recipient")
        return sender

    def _headerFields(self) -> list:
        """
        Parse the C{--header} fields.

        @return: a list of C{(name, value)}.
        """
        from mailproto._commandline._send import parseHeaderField

        headers = []
        for text in self["header"]:
            try:
                headers.append(parseHeaderField(text))
            except ValueError as e:
                raise usage.UsageError(f"--header: {e}") from None
        return headers

    def _checkMessageOptions(self) -> None:
        """
        Check the options about the output, the message and the sending:
        C{--quiet}, C{--verbose}, C{--data}, C{--body}, C{--helo},
        C{--concurrency}.
        """
        if self["quiet"] and self["verbose"]:
            raise usage.UsageError("--quiet and --verbose cannot be used together")
        if self["data"] is not None:
            if self["body"] is not None:
                raise usage.UsageError("--body is for the made-up message; it cannot be used with --data")
            if self["data"] != "-":
                try:
                    with open(self["data"], "rb"):
                        pass
                except OSError as e:
                    raise usage.UsageError(_fileError("--data", self["data"], e)) from None
        if self["helo"] is not None and _hostnameRe.fullmatch(self["helo"]) is None:
            raise usage.UsageError(f"--helo: not a host name: {self['helo']!r}")
        if self["concurrency"] > MAX_CONCURRENCY:
            raise usage.UsageError(f"--concurrency: at most {MAX_CONCURRENCY}")

    def _checkTLSOptions(self) -> tuple[list[str], list[str]]:
        """
        Check that the TLS options go together.

        @return: C{(modes, tlsOptions)}: the TLS mode options given
            (C{tls}, C{starttls}, C{no-tls}), and every TLS option given,
            as C{--name}.
        """
        modes = [name for name in ("tls", "starttls", "no-tls") if self[name]]
        if len(modes) > 1:
            raise usage.UsageError(f"--{modes[0]} and --{modes[1]} cannot be used together; choose one")
        if self["insecure"] and self["cafile"] is not None:
            raise usage.UsageError("--insecure and --cafile cannot be used together")
        tlsOptions = [f"--{name}" for name in ("tls", "starttls", "cafile", "insecure") if self[name]]
        if self["no-tls"] and tlsOptions:
            raise usage.UsageError(f"{tlsOptions[0]} is about TLS; it cannot be used with --no-tls")
        return modes, tlsOptions

    def _checkAuthOptions(self) -> None:
        """
        Check C{--user} and C{--auth}.
        """
        if self["auth"] is not None and self["user"] is None:
            raise usage.UsageError("--auth needs --user")
        if self["user"] is not None and not self["user"]:
            raise usage.UsageError("--user: the user name is empty")

    def _destination(self, modes: list[str], tlsOptions: list[str]) -> tuple:
        """
        Work out where to connect and how to use TLS there.

        @param modes: the TLS mode options given, from L{_checkTLSOptions}.
        @param tlsOptions: every TLS option given, from L{_checkTLSOptions}.
        @return: C{(host, port, tls)}: C{host} and C{port} are C{None} for
            C{--socket}; C{tls} is one of L{mailproto._commandline._send}'s TLS modes.
        """
        from mailproto._commandline._send import IMPLICIT, NO_TLS, OPPORTUNISTIC, STARTTLS

        host, port = self["server"], self["port"]
        if self["socket"] is not None:
            if host is not None or port is not None:
                raise usage.UsageError("give either --socket or --server/--port, not both")
            if tlsOptions:
                raise usage.UsageError(f"{tlsOptions[0]}: TLS is not used on a UNIX socket")
            if not self["socket"]:
                raise usage.UsageError("--socket: the path is empty")
            return host, port, NO_TLS
        host = SEND_HOST if host is None else host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            host.encode("idna")
        except UnicodeError:
            host = ""
        if not host or any(ch.isspace() or ch in "/@" or ord(ch) < 32 for ch in host):
            raise usage.UsageError(f"--server: not a host name or address: {self['server']!r}")
        if self["tls"] or (port == SEND_TLS_PORT and not modes):
            tls = IMPLICIT
        elif self["starttls"] or (self["user"] is not None and not modes):
            tls = STARTTLS
        elif self["no-tls"]:
            tls = NO_TLS
        else:
            tls = OPPORTUNISTIC
        if port is None:
            port = SEND_LMTP_PORT if self["lmtp"] else SEND_TLS_PORT if tls == IMPLICIT else SEND_PORT
        return host, port, tls

    def _trustRoot(self):
        """
        Load the CA certificates of C{--cafile}.

        @return: the trust root, or C{None} to trust the system's.
        """
        from mailproto._commandline._send import loadTrustRoot

        if self["cafile"] is None:
            return None
        try:
            return loadTrustRoot(self["cafile"])
        except OSError as e:
            raise usage.UsageError(_fileError("--cafile", self["cafile"], e)) from None
        except ValueError as e:
            raise usage.UsageError(f"--cafile: {self['cafile']}: {e}") from None

    def makeCommand(self, reactor, stdout, stderr, **kw):
        """
        @return: the L{mailproto._commandline._send.SendCommand} of these options.
        """
        from mailproto._commandline._send import SendCommand

        return SendCommand(self.config, reactor, stdout, stderr, **kw)

    def run(self, reactor, stdout, stderr) -> int:
        """
        Send, running the reactor until done.  Ctrl-C stops the sending;
        the summary says how many messages were not sent.

        @return: C{0} if every message was sent, C{1} if not, C{2} if no
            password could be had.
        """
        from twisted.internet import defer
        from twisted.logger import Logger
        from twisted.python.failure import Failure

        command = self.makeCommand(reactor, stdout, stderr)
        status = command.prepare()
        if status is not None:
            return status
        outcome = []

        def finished(result):
            if isinstance(result, Failure):
                Logger(namespace="mailproto.send").failure("mailproto send: internal error", result)
                outcome.append(1)
            else:
                outcome.append(result)
            if reactor.running:
                try:
                    reactor.stop()
                except Exception:  # already stopping
                    pass

        def interrupted() -> None:
            if not outcome:
                stderr.write(f"{PROGRAM} send: interrupted\n")
                command.stop()

        reactor.callWhenRunning(lambda: defer.maybeDeferred(command.send).addBoth(finished))
        reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        reactor.run()
        return outcome[0] if outcome else 1


#: The longest password C{mailproto adduser} takes, in octets: the most a
#: PLAIN response may carry (RFC 4616).
MAX_PASSWORD_LENGTH = 255


class AddUserOptions(_Command):
    """
    The options of C{mailproto adduser}.
    """

    synopsis = "[options] FILE USER"

    longdesc = (
        "Add USER to the users file FILE, or change the password of a USER already in it.  The file keeps "
        "scrypt hashes of the passwords, one 'user:hash' line per user, readable by its owner only; a server "
        "checks logins against it with mailproto.smtp.UsersFileChecker.  FILE is made if missing, and always "
        "replaced atomically.  The password is asked for twice on the terminal; when stdin is not a terminal "
        "(or with --stdin), it is the first line of stdin.  An empty password is refused.  "
        "Exit status: 0 when done, 1 if the password or the file could not be used (nothing is changed), "
        "2 for a usage error.  "
        "Examples: mailproto adduser /etc/mailproto/users joe;  "
        "printf '%s\\n' \"$PASSWORD\" | mailproto adduser users joe"
    )

    optFlags = [
        ["stdin", None, "Read the password from the first line of stdin, even when stdin is a terminal."],
    ]

    compData = usage.Completions(
        extraActions=[usage.CompleteFiles(descr="users file"), usage.Completer(descr="user name")]
    )

    def parseArgs(self, *args) -> None:
        if len(args) != 2:
            raise usage.UsageError(f"expected a users FILE and a USER name, got {len(args)} argument(s)")
        self["file"], self["user"] = args

    def postOptions(self) -> None:
        if not self["file"]:
            raise usage.UsageError("FILE: the path is empty")
        user = self["user"].encode("utf-8", "surrogateescape")
        if not user or any(octet in user for octet in b":\r\n\0"):
            raise usage.UsageError(
                f"USER: not a user name: {self['user']!r} (it cannot be empty or have ':', NUL or a line end)"
            )

    def run(self, reactor, stdout, stderr, stdin=None, getpass=None) -> int:
        """
        Add the user, or change its password.

        @param reactor: unused.
        @param stdin: the stream to read the password from when it is not
            a terminal; C{sys.stdin} if C{None}.
        @param getpass: asks for the password on the terminal;
            C{getpass.getpass} if C{None}.
        @return: C{0} when done, C{1} if nothing was changed.
        """
        from mailproto._cred import UsersFile

        path, name = self["file"], self["user"]
        user = name.encode("utf-8", "surrogateescape")

        def fail(text: str) -> int:
            stderr.write(f"{PROGRAM} adduser: error: {text}\n")
            stderr.flush()
            return 1

        # Whatever can be checked before asking for the password is.
        usersFile = UsersFile(path)
        try:
            existed = user in usersFile.read()
        except OSError as e:
            return fail(f"cannot read {path}: {e.strerror or e}")
        except ValueError as e:
            return fail(f"{e}; nothing changed")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            return fail(f"cannot write {path}: no directory {directory}")
        password = self._readPassword(name, stdin, getpass)
        if isinstance(password, str):
            return fail(f"{password}; {path} not changed")
        try:
            usersFile.setPassword(user, password)
        except OSError as e:
            return fail(f"cannot write {path}: {e.strerror or e}")
        except ValueError as e:  # pragma: no cover (the name was checked)
            return fail(str(e))
        if existed:
            stdout.write(f"password of {name} changed in {path}\n")
        else:
            stdout.write(f"user {name} added to {path}\n")
        stdout.flush()
        return 0

    def _readPassword(self, name: str, stdin, getpass):
        """
        Get the password: from the terminal, twice; or the first line of
        C{stdin}.

        @return: the password (C{bytes}), or why there is none (C{str}).
        """
        stdin = sys.stdin if stdin is None else stdin
        if stdin is None:
            return "no password: stdin is closed"
        isatty = getattr(stdin, "isatty", None)
        try:
            interactive = not self["stdin"] and isatty is not None and isatty()
        except ValueError:  # closed
            interactive = False
        if interactive:
            if getpass is None:
                from getpass import getpass
            try:
                first = getpass(f"Password for {name}: ")
                if not first:
                    return "empty password refused"
                second = getpass(f"Password for {name} again: ")
            except (EOFError, KeyboardInterrupt):
                return "no password given"
            if first != second:
                return "the passwords do not match"
            password = first.encode("utf-8", "surrogateescape")
        else:
            source = getattr(stdin, "buffer", stdin)
            try:
                line = source.readline(MAX_PASSWORD_LENGTH + 3)
            except (OSError, ValueError) as e:
                return f"cannot read the password from stdin: {getattr(e, 'strerror', None) or e}"
            if isinstance(line, str):
                line = line.encode("utf-8", "surrogateescape")
            password = line[:-1] if line.endswith(b"\n") else line
            password = password[:-1] if password.endswith(b"\r") else password
        if not password:
            return "empty password refused"
        if len(password) > MAX_PASSWORD_LENGTH:
            return f"the password is longer than {MAX_PASSWORD_LENGTH} octets (the most AUTH PLAIN can carry)"
        if b"\0" in password:
            return "the password has a NUL character (AUTH PLAIN cannot carry it)"
        return password


def _describeOSError(error: OSError) -> str:
    """
    @return: an C{OSError} in one line, without its class name.
    """
    if error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return error.strerror or str(error)


def _fileError(option: str, path: str, error: OSError) -> str:
    """
    @return: why the file of an option cannot be read, in one line that
        names the option: C{--data: no such file: msg.eml}.
    """
    import errno

    what = {
        errno.ENOENT: "no such file",
        errno.EACCES: "not allowed to read",
        errno.EPERM: "not allowed to read",
        errno.EISDIR: "a directory, not a file",
    }.get(error.errno)
    if what is None:
        return f"{option}: cannot read {path}: {error.strerror or error}"
    return f"{option}: {what}: {path}"


def _checkEndpoint(description: str) -> None:
    """
    Parse a server endpoint description, as the sink will.

    @raise usage.UsageError: if it is not one.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, description)
    except OSError as e:
        raise usage.UsageError(f"bad --listen endpoint {description!r}: {_describeOSError(e)}") from None
    except Exception as e:
        raise usage.UsageError(f"bad --listen endpoint {description!r}: {e}") from None


def loadTLS(certificatePath: str, keyPath: str | None = None, certificateOption: str = "--tls-certificate", keyOption: str = "--tls-key"):
    """
    Load a certificate and its key for a TLS server.

    @param certificatePath: a PEM file with the certificate (then any
        chain), and the private key if C{keyPath} is C{None}.
    @param keyPath: a PEM file with the private key, or C{None}.
    @param certificateOption: the option that gave the certificate, as
        errors name it.
    @param keyOption: the option that gave the key.
    @return: a C{twisted.internet.ssl.CertificateOptions}.
    @raise usage.UsageError: if they cannot be read or do not match.
    """
    try:
        from mailproto._tls import loadServerOptions
    except ImportError as e:
        raise usage.UsageError(f"TLS is not available (pyOpenSSL missing?): {e}") from None
    from mailproto._tlserrors import describeTLSFailure, isTLSFailure

    try:
        return loadServerOptions(certificatePath, keyPath)
    except OSError as e:
        option = keyOption if keyPath is not None and e.filename == keyPath else certificateOption
        raise usage.UsageError(_fileError(option, e.filename or certificatePath, e)) from None
    except ValueError as e:
        keyFile = certificatePath if keyPath is None else keyPath
        try:
            with open(certificatePath, "rb") as f:
                hasCertificate = b"-----BEGIN CERTIFICATE-----" in f.read()
            with open(keyFile, "rb") as f:
                hasKey = b"PRIVATE KEY-----" in f.read()
        except OSError:  # pragma: no cover (it was just read)
            hasCertificate = hasKey = True
        if not hasCertificate:
            raise usage.UsageError(f"{certificateOption}: not a PEM certificate: {certificatePath}") from None
        if not hasKey:
            if keyPath is None:
                raise usage.UsageError(
                    f"{certificateOption}: the certificate file has no private key: {certificatePath}"
                    f" (give the key with {keyOption})"
                ) from None
            raise usage.UsageError(f"{keyOption}: the file has no private key: {keyPath}") from None
        cause = e.__context__
        if cause is not None and isTLSFailure(cause):
            where = certificatePath + (" and " + keyPath if keyPath else "")
            raise usage.UsageError(f"{certificateOption}: cannot use {where}: {describeTLSFailure(cause)}") from None
        raise usage.UsageError(f"{certificateOption}: {e}") from None


class MailprotoOptions(usage.Options):
    """
    The options of the C{mailproto} command: a subcommand and its options.
    """

    synopsis = f"Usage: {PROGRAM} [--version] [--help] <command> [command options]"
    longdesc = f"Run '{PROGRAM} <command> --help' for the options of a command."

    subCommands = [
        ["sink", None, SinkOptions, "Run a debugging SMTP/LMTP server that prints, or stores, all mail sent to it."],
        ["send", None, SendOptions, "Send test messages (one, or many over several connections) by SMTP or LMTP."],
        ["adduser", None, AddUserOptions, "Add a user to a users file (scrypt password hashes), or change a password."],
        ["queue", None, QueueOptions, "List and manage a relay's queue (list, show, flush, requeue, delete, import)."],
        ["sendmail", None, SendmailOptions, "Send the message on stdin to the local relay, as sendmail(8) does (cron, scripts)."],
        ["dkim-keygen", None, DKIMKeygenOptions, "Make a DKIM signing key for the relay and print its DNS record."],
    ]

    def opt_version(self) -> None:
        """
        Print the version of mailproto and exit.
        """
        _printVersion()

    def postOptions(self) -> None:
        if self.subCommand is None:
            names = ", ".join(name for name, *_ in self.subCommands)
            raise usage.UsageError(f"no command given (commands: {names})")


def runCommand(argv, reactor=None, stdout=None, stderr=None) -> int:
    """
    Parse a C{mailproto} command line and run it.

    @param argv: the arguments, without the program name.
    @param reactor: the reactor to run; the global one, with log messages
        of level warning and above going to C{stderr}, if C{None}.
    @param stdout: the text stream for output; C{sys.stdout} if C{None}.
    @param stderr: the text stream for messages; C{sys.stderr} if C{None}.
    @return: the exit status: C{2} for a usage error.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    options = MailprotoOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        name = PROGRAM if options.subCommand is None else f"{PROGRAM} {options.subCommand}"
        stderr.write(f"{name}: error: {e} (see '{name} --help')\n")
        stderr.flush()
        return 2
    if reactor is None:
        from twisted.internet import reactor

        _logWarningsTo(stderr)
    return options.subOptions.run(reactor, stdout, stderr)


def _logWarningsTo(stream) -> None:
    """
    Send log events of level warning and above to C{stream}.
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(stream), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv=None) -> None:
    """
    The C{mailproto} command.

    @param argv: the arguments, without the program name; C{sys.argv[1:]}
        if C{None}.
    @raise SystemExit: always, with the exit status.
    """
    if argv is None:
        argv = sys.argv[1:]
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # pragma: no cover
                pass
    sys.exit(runCommand(argv))


if __name__ == "__main__":  # pragma: no cover
    main()
