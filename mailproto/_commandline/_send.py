# -*- test-case-name: mailproto.test.test_send -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The sender behind C{mailproto send}: test messages for people checking a
mail server, like a small swaks.

  - L{SendConfig} says what to send, where and how; C{mailproto send}'s
    options make one (see L{mailproto._commandline._cli.SendOptions}).
  - L{GeneratedMessages} makes numbered test messages (Date, Message-ID,
    From, To, Subject C{mailproto test N}, a short body);
    L{FileMessages} sends a message file, with header fields put in front.
  - L{BulkSender} sends N messages over up to K connections at once.  Each
    connection is a L{BulkESMTPClient} (or L{BulkLMTPClient}) whose
    C{getMailFrom} takes the next message from the counter the connections
    share, until N have been taken; so a connection sends as many
    messages as it can, one after the other.
  - L{Transcript} shows the SMTP exchange of the first connection (AUTH
    secrets masked); L{ProgressBar} draws a text progress bar.
  - L{SendCommand} is the whole command: it reads the message and the
    password, sends, and prints the summary (L{SendResult}).

A message counts as I{sent} when the server took it for every recipient,
I{refused} when the server refused it or one of its recipients (a 4xx or
5xx reply), and I{failed} when it got no answer: the connection could not
be made or was lost, TLS or AUTH failed, the server timed out.
"""

from __future__ import annotations

import email.policy
import getpass as _getpass
import io
import os
import warnings
from dataclasses import dataclass, field

from twisted.internet import defer, error as _netError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.util import LineLog
from zope.interface import implementer

import mailproto
from mailproto._address import Address
from mailproto._auth import (
    CramMD5ClientAuthenticator,
    LOGINAuthenticator,
    PLAINAuthenticator,
    XOAUTH2Authenticator,
)
from mailproto._client import SUCCESS, ESMTPClient, LMTPClient
from mailproto._errors import (
    AUTHDeclinedError,
    AuthenticationError,
    AUTHRequiredError,
    EHLORequiredError,
    SMTPClientError,
    SMTPConnectError,
    SMTPProtocolError,
    SMTPTimeoutError,
    SMTPTLSError,
    TLSRequiredError,
)
from mailproto._headers import localHostname, messageid, rfc822date
from mailproto._tlserrors import describeTLSFailure, isTLSFailure

__all__ = [
    "BulkESMTPClient",
    "BulkLMTPClient",
    "BulkSender",
    "FileMessages",
    "GeneratedMessages",
    "NoSecret",
    "ProgressBar",
    "SendCommand",
    "SendConfig",
    "SendResult",
    "Transcript",
    "formatField",
    "loadTrustRoot",
    "makeAuthenticators",
    "parseHeaderField",
    "readSecret",
]

_log = Logger()

PROGRAM = "mailproto send"

#: Where C{mailproto send} sends by default.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 25
#: The port of implicit TLS, RFC 8314's C{submissions}.
IMPLICIT_TLS_PORT = 465
#: The port of LMTP over TCP: RFC 2033 gives none; 24 is the usual one.
DEFAULT_LMTP_PORT = 24
DEFAULT_TIMEOUT = 30.0

#: The environment variable with the password (or XOAUTH2 access token).
PASSWORD_VARIABLE = "MAILPROTO_PASSWORD"

# The TLS modes.
NO_TLS = "none"
OPPORTUNISTIC = "opportunistic"
STARTTLS = "starttls"
IMPLICIT = "implicit"

#: The SASL mechanisms C{--auth} can name.
MECHANISMS = {
    "PLAIN": PLAINAuthenticator,
    "LOGIN": LOGINAuthenticator,
    "CRAM-MD5": CramMD5ClientAuthenticator,
    "XOAUTH2": XOAUTH2Authenticator,
}

_MASK = b"********"


@dataclass
class SendConfig:
    """
    What C{mailproto send} sends, where and how.

    @ivar sender: the envelope sender (C{""} for the null sender C{<>}).
    @ivar recipients: the envelope recipients.
    @ivar host: the server's host name or address.
    @ivar port: its TCP port.
    @ivar socket: a UNIX socket to connect to instead, or C{None}.
    @ivar lmtp: whether to speak LMTP instead of ESMTP.
    @ivar tls: C{"none"}, C{"opportunistic"} (STARTTLS if offered),
        C{"starttls"} (STARTTLS required) or C{"implicit"} (RFC 8314).
    @ivar trustRoot: the CAs to trust (from C{--cafile}), or C{None} for
        the system's.
    @ivar insecure: whether to skip checking the server's certificate.
    @ivar user: the user name for AUTH, or C{None}.
    @ivar auth: the one SASL mechanism to use (a key of L{MECHANISMS}), or
        C{None} for PLAIN, LOGIN and CRAM-MD5.
    @ivar data: the message file (C{"-"}: stdin), or C{None} for
        generated messages.
    @ivar headers: header fields, C{(name, value)}: they replace the
        generated ones of the same name, or go before the message file.
    @ivar body: the body of the generated messages, or C{None}.
    @ivar helo: the name for EHLO/LHLO; this host's if C{None}.
    @ivar timeout: seconds to wait for a connection and for each reply.
    @ivar count: how many messages to send.
    @ivar concurrency: how many connections to use at once.
    @ivar quiet: print neither the summary nor the progress bar.
    @ivar verbose: print the SMTP exchange of the first connection.
    """

    sender: str
    recipients: list[str]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    socket: str | None = None
    lmtp: bool = False
    tls: str = OPPORTUNISTIC
    trustRoot: object = None
    insecure: bool = False
    user: str | None = None
    auth: str | None = None
    data: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str | None = None
    helo: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    count: int = 1
    concurrency: int = 1
    quiet: bool = False
    verbose: bool = False

    def describeServer(self) -> str:
        """
        @return: where the messages go, for people: C{127.0.0.1:25},
            C{[::1]:25}, C{UNIX socket /run/lmtp}.
        """
        if self.socket is not None:
            return f"UNIX socket {self.socket}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# -- header fields and messages ----------------------------------------------


def parseHeaderField(text: str) -> tuple[str, str]:
    """
    Parse a header field as given on the command line: C{"Name: value"}.

    @return: the name and the value, without surrounding blanks.
    @raise ValueError: if it is not a header field, or would put a line
        end (or another control character) into the message.
    """
    name, colon, value = text.partition(":")
    if not colon or not name:
        raise ValueError(f"not a header field: {text!r} (expected 'Name: value')")
    if any(not 33 <= ord(ch) <= 126 for ch in name):
        raise ValueError(f"not a header field name: {name!r}")
    if any(ord(ch) < 32 and ch != "\t" or ord(ch) == 127 for ch in value):
        raise ValueError(f"control characters (line ends...) in the header field {name}")
    return name, value.strip(" \t")


def formatField(name: str, value: str) -> bytes:
    """
    Format a header field, folded to lines of 78 characters where it can
    be.  Non-ASCII text is written as RFC 2047 encoded words; where that
    would change the field (a non-ASCII address), as UTF-8 (RFC 6532).

    @return: the field, ending in CRLF.
    """
    if value.isascii():
        try:
            return email.policy.SMTP.fold_binary(name, value)
        except Exception:
            return f"{name}: {value}\r\n".encode("ascii")
    try:
        parsed = email.policy.SMTP.header_store_parse(name, value)[1]
        if not parsed.defects:
            return email.policy.SMTP.fold(name, parsed).encode("ascii")
    except Exception:
        pass
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


def _crlf(text: bytes) -> bytes:
    """
    @return: C{text} with CRLF line ends, ending with one.
    """
    text = text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text


class GeneratedMessages:
    """
    Numbered test messages: C{Date}, C{From}, C{To}, C{Subject: mailproto
    test N}, C{Message-ID}, the MIME fields, C{X-Mailer} and a short body.

    @ivar sender: the envelope sender.
    @type sender: L{Address}
    @ivar recipients: the envelope recipients.
    @type recipients: C{list} of L{Address}
    """

    def __init__(self, sender: Address, recipients, count: int, headers=(), body: str | None = None) -> None:
        """
        @param sender: the envelope sender, also the C{From} field.
        @param recipients: the envelope recipients, also the C{To} field.
        @param count: how many messages there are, for the body.
        @param headers: C{(name, value)} fields: each replaces the
            generated fields of its name, where they were; fields of
            other names are added after them.
        @param body: the body; a few lines about the message if C{None}.
        """
        self.sender = sender
        self.recipients = list(recipients)
        self.count = count
        self.headers = list(headers)
        self.body = body

    def fields(self, number: int) -> list[tuple[str, str]]:
        """
        @return: the header fields of message C{number}, in order.
        """
        body = self._body(number)
        ascii = body.isascii()
        generated = [
            ("Date", rfc822date().decode("ascii")),
            # A message from the null sender (a bounce) is from the system.
            ("From", str(self.sender) or "MAILER-DAEMON@" + localHostname().decode("ascii")),
            ("To", ", ".join(str(r) for r in self.recipients)),
            ("Subject", f"mailproto test {number}"),
            ("Message-ID", messageid().decode("utf-8", "surrogateescape")),
            ("MIME-Version", "1.0"),
            ("Content-Type", f"text/plain; charset={'us-ascii' if ascii else 'utf-8'}"),
            ("Content-Transfer-Encoding", "7bit" if ascii else "8bit"),
            ("X-Mailer", f"mailproto send {mailproto.__version__}"),
        ]
        given = {}
        for name, value in self.headers:
            given.setdefault(name.lower(), []).append((name, value))
        fields = []
        for name, value in generated:
            replacements = given.pop(name.lower(), None)
            fields.extend([(name, value)] if replacements is None else replacements)
        for replacements in given.values():
            fields.extend(replacements)
        return fields

    def _body(self, number: int) -> str:
        if self.body is not None:
            return self.body
        return (
            f"This is test message {number} of {self.count}, sent by mailproto send.\n"
            "It has no other purpose: you can delete it.\n"
        )

    def message(self, number: int) -> bytes:
        """
        @param number: the message's number, from 1.
        @return: the message, lines ending in CRLF.
        """
        head = b"".join(formatField(name, value) for name, value in self.fields(number))
        return head + b"\r\n" + _crlf(self._body(number).encode("utf-8", "surrogateescape"))


class FileMessages:
    """
    The same message, from a file, each time; given header fields go in
    front of it.
    """

    def __init__(self, sender: Address, recipients, data: bytes, headers=()) -> None:
        """
        @param sender: the envelope sender.
        @param recipients: the envelope recipients.
        @param data: the message; line ends may be LF or CRLF.
        @param headers: C{(name, value)} fields to put in front of it.
        """
        self.sender = sender
        self.recipients = list(recipients)
        self._data = b"".join(formatField(name, value) for name, value in headers) + data

    def message(self, number: int) -> bytes:
        """
        @return: the message, whatever C{number}.
        """
        return self._data


# -- TLS and AUTH ------------------------------------------------------------


def loadTrustRoot(path: str):
    """
    Read the CA certificates to trust from a PEM file.

    @return: an C{twisted.internet.interfaces.IOpenSSLTrustRoot} for
        C{optionsForClientTLS}.
    @raise OSError: if the file cannot be read.
    @raise ValueError: if it has no certificate, or a bad one.
    """
    import re

    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    with open(path, "rb") as f:
        data = f.read()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", data, re.S)
    if not blocks:
        raise ValueError("no PEM certificate in it")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ValueError(f"not a certificate: {e}") from None
    return trustRootFromCertificates(certificates)


def makeTLSOptions(config: SendConfig):
    """
    @return: the TLS client options for C{config}: ones that check the
        server's certificate, against the CAs of C{--cafile} or the
        system's, and its name against C{config.host}; with C{--insecure},
        ones that check nothing.
    """
    from twisted.internet.ssl import CertificateOptions, optionsForClientTLS, platformTrust

    if config.insecure:
        return CertificateOptions(verify=False)
    trustRoot = config.trustRoot if config.trustRoot is not None else platformTrust()
    return optionsForClientTLS(config.host, trustRoot=trustRoot)


def makeAuthenticators(user: str, mechanism: str | None = None, encrypted: bool = True) -> list:
    """
    Make the SASL mechanisms of one connection (they keep state).

    @param user: the user name.
    @param mechanism: the one mechanism to use, or C{None} for PLAIN,
        LOGIN and CRAM-MD5, whichever the server offers first in that
        order; CRAM-MD5 first when C{encrypted} is false, so that the
        password does not cross the wire in the clear if it can help it.
    @return: L{IClientAuthentication} providers, to try in order.
    """
    if mechanism is not None:
        names = [mechanism]
    elif encrypted:
        names = ["PLAIN", "LOGIN", "CRAM-MD5"]
    else:
        names = ["CRAM-MD5", "PLAIN", "LOGIN"]
    return [MECHANISMS[name](user.encode("utf-8")) for name in names]


class NoSecret(Exception):
    """
    No password could be had: not in the environment, and no terminal to
    ask on.
    """


def readSecret(user: str, where: str, mechanism: str | None = None, environ=None, prompt=None) -> bytes:
    """
    Get the password (or for XOAUTH2 the access token): from the
    environment variable C{MAILPROTO_PASSWORD}, else by asking on the
    terminal, without echo.  It is never taken from the command line,
    where other users could see it.

    @param user: the user name, for the prompt.
    @param where: the server, for the prompt.
    @param mechanism: the SASL mechanism, if one was chosen.
    @param environ: the environment; C{os.environ} if C{None}.
    @param prompt: asks for it; C{getpass.getpass} if C{None}.
    @return: the secret, UTF-8.
    @raise NoSecret: if there is no terminal to ask on (getpass would
        read stdin and show what is typed).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(PASSWORD_VARIABLE)
    if value is not None:
        return value.encode("utf-8", "surrogateescape")
    what = "access token" if mechanism == "XOAUTH2" else "password"
    prompt = _getpass.getpass if prompt is None else prompt
    with warnings.catch_warnings():
        warnings.simplefilter("error", _getpass.GetPassWarning)
        try:
            value = prompt(f"{what.capitalize()} for {user} at {where}: ")
        except (_getpass.GetPassWarning, EOFError):
            raise NoSecret(f"no {what}: set {PASSWORD_VARIABLE}, or run on a terminal to be asked") from None
    return value.encode("utf-8", "surrogateescape")


# -- what people see -----------------------------------------------------------


def _oneLine(value) -> str:
    """
    @return: C{value} (C{bytes} as UTF-8) on one line, control characters
        shown as spaces and line ends as C{" / "}.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = " / ".join(line for line in value.splitlines() if line) if "\n" in value else value
    return "".join(" " if ch < " " or ch == "\x7f" else ch for ch in value)


def _reply(code: int, resp) -> str:
    """
    @return: a server reply for people: C{550 5.1.1 No such user}.
    """
    text = _oneLine(resp or b"")
    return f"{code} {text}".strip() if code > 0 else text


class Transcript:
    """
    Show an SMTP exchange: C{C: } before what the client sends, C{S: }
    before what the server says, C{*** } before what happens.
    """

    def __init__(self, out) -> None:
        """
        @param out: the text stream to write to.
        """
        self.out = out

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def client(self, line: bytes) -> None:
        self._write("C: " + _oneLine(line))

    def server(self, line: bytes) -> None:
        self._write("S: " + _oneLine(line))

    def event(self, text: str) -> None:
        self._write("*** " + text)


class _ClientLog(LineLog):
    """
    The client's log of the exchange (L{SMTPClient.log}), with the SASL
    responses masked, that also feeds a L{Transcript}.
    """

    def __init__(self, size: int, transcript: Transcript | None = None) -> None:
        LineLog.__init__(self, size)
        self.transcript = transcript
        self._inAuth = False

    def append(self, line: bytes) -> None:
        if line.startswith(b">>> "):
            sent = line[4:]
            words = sent.split(b" ")
            if words[0].upper() == b"AUTH":
                self._inAuth = True
                if len(words) > 2:
                    sent = b" ".join(words[:2] + [_MASK])
            elif self._inAuth and sent != b"*":
                sent = _MASK
            line = b">>> " + sent
            if self.transcript is not None:
                self.transcript.client(sent)
        elif line.startswith(b"<<< "):
            said = line[4:]
            if self._inAuth and said[3:4] != b"-" and said[:3] != b"334":
                self._inAuth = False
            if self.transcript is not None:
                self.transcript.server(said)
        LineLog.append(self, line)


class ProgressBar:
    """
    A progress bar on a terminal, one line redrawn in place at most ten
    times a second: a bar of C{#} and C{.}, how many messages are done out
    of how many, the percentage and the rate.
    """

    width = 30
    interval = 0.1

    def __init__(self, stream, total: int, clock) -> None:
        """
        @param stream: the terminal's text stream (stderr).
        @param total: how many messages there are.
        @param clock: the C{IReactorTime}.
        """
        self.stream = stream
        self.total = total
        self.clock = clock
        self.done = 0
        self._shown = None
        self._length = 0
        self._started = None
        self._loop = LoopingCall(self._draw)
        self._loop.clock = clock

    def start(self) -> None:
        self._started = self.clock.seconds()
        self._loop.start(self.interval, now=True)

    def update(self, done: int) -> None:
        """
        @param done: how many messages are done (sent, refused or failed);
            shown at the next tick.
        """
        self.done = done

    def render(self) -> str:
        """
        @return: the bar as it is now.
        """
        total = max(self.total, 1)
        done = min(self.done, total)
        filled = self.width * done // total
        now = self.clock.seconds()
        elapsed = now - (now if self._started is None else self._started)
        rate = done / elapsed if elapsed > 0 else 0.0
        digits = len(str(total))
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {done:{digits}d}/{total}"
            f" {100 * done // total:3d}%  {rate:.1f} msgs/s"
        )

    def _draw(self) -> None:
        if self.done == self._shown:
            return
        self._shown = self.done
        text = self.render()
        self.stream.write("\r" + text.ljust(self._length))
        self._length = len(text)
        self.stream.flush()

    def finish(self) -> None:
        """
        Draw the last state and end the line.
        """
        if self._loop.running:
            self._loop.stop()
        if self._started is None:
            return
        self._shown = None
        self._draw()
        self.stream.write("\n")
        self.stream.flush()


# -- sending -----------------------------------------------------------------


@dataclass
class SendResult:
    """
    What happened to the messages.

    @ivar count: how many messages there were.
    @ivar sent: how many the server took, for every recipient.
    @ivar refused: how many it refused, or refused some recipients of.
    @ivar failed: how many got no answer, or were never sent.
    @ivar notSent: how many were not sent because sending was stopped
        (Ctrl-C): those not yet taken, and those in flight then.
    @ivar connections: how many connections were made.
    @ivar elapsed: seconds from the first connection attempt to the end.
    """

    count: int
    sent: int = 0
    refused: int = 0
    failed: int = 0
    notSent: int = 0
    connections: int = 0
    elapsed: float = 0.0

    @property
    def done(self) -> int:
        """
        How many messages are done, one way or another.
        """
        return self.sent + self.refused + self.failed

    @property
    def ok(self) -> bool:
        """
        Whether every message was sent.
        """
        return self.sent == self.count

    def summary(self) -> str:
        """
        @return: the summary line, such as C{20 sent, 0 refused, 0 failed
            in 0.21 s (95.2 msgs/s) over 3 connections}; after a stop,
            with how many were not sent: C{3 sent, 0 refused, 0 failed, 97
            not sent (stopped) in ...}.
        """
        rate = self.sent / self.elapsed if self.elapsed > 0 else 0.0
        connections = "1 connection" if self.connections == 1 else f"{self.connections} connections"
        notSent = f", {self.notSent} not sent (stopped)" if self.notSent else ""
        return (
            f"{self.sent} sent, {self.refused} refused, {self.failed} failed{notSent}"
            f" in {self.elapsed:.2f} s ({rate:.1f} msgs/s) over {connections}"
        )


class _BulkClientMixin:
    """
    The part of L{BulkESMTPClient} and L{BulkLMTPClient} that takes
    messages from a L{BulkSender} and reports back to it.

    @ivar bulk: the L{BulkSender}.
    @ivar index: the connection's number, from 0.
    @ivar current: the number of the message being sent, or C{None}.
    @ivar completed: how many messages the server answered.
    @ivar error: what ended the connection before its time, or C{None}.
    @ivar quitting: whether the client is done: no more messages, or an
        error.
    @ivar lastLine: the last line the server sent.
    """

    bulk = None
    index = 0
    current = None
    completed = 0
    error = None
    quitting = False
    transcript = None
    checksCertificate = True
    lastLine = b""
    _data = None
    _shown = True
    _abortCall = None

    def setUp(self, bulk: BulkSender, index: int, transcript: Transcript | None = None) -> None:
        """
        @param bulk: the sender the messages come from.
        @param index: the connection's number.
        @param transcript: where to show the exchange, or C{None}.
        """
        self.bulk = bulk
        self.index = index
        self.transcript = transcript
        self.timeout = bulk.timeout
        # Only the connection that is shown keeps a log: nothing else
        # reads it, and it costs time when sending many messages.
        self.debug = transcript is not None
        self.log = _ClientLog(10, transcript)

    def connectionMade(self) -> None:
        if self.transcript is not None:
            self.transcript.event(f"connected to {self.bulk.where}")
        super().connectionMade()
        self.bulk.connectionMade(self)

    def handshakeCompleted(self) -> None:
        """
        TLS is up (C{IHandshakeListener}).
        """
        if self.transcript is None:
            return
        subject = ""
        try:
            certificate = self.transport.getPeerCertificate()
            if certificate is not None:
                subject = " for " + _oneLine(
                    b"/".join(b"%s=%s" % pair for pair in certificate.get_subject().get_components())
                )
        except Exception:
            pass
        checked = "checked" if self.checksCertificate else "NOT checked (--insecure)"
        self.transcript.event(f"TLS started; the server's certificate{subject}: {checked}")

    def lineReceived(self, line: bytes):
        self.lastLine = line
        return super().lineReceived(line)

    def getMailFrom(self):
        number = self.bulk.claim()
        if number is None:
            self.quitting = True
            return None
        self.current = number
        self._data = self.bulk.messages.message(number)
        self._shown = False
        return self.bulk.messages.sender

    def getMailTo(self):
        return self.bulk.messages.recipients

    def getMailData(self):
        return io.BytesIO(self._data)

    def transformChunk(self, chunk: bytes) -> bytes:
        if not self._shown:
            self._shown = True
            if self.transcript is not None:
                self.transcript.event(f"the message ({len(self._data)} octets, not shown)")
        return super().transformChunk(chunk)

    def sentMail(self, code, resp, numOk, addresses, log) -> None:
        number, self.current, self._data = self.current, None, None
        self.completed += 1
        self.bulk.messageDone(number, code, resp, addresses)

    def sendError(self, exc) -> None:
        if self.error is None:
            self.error = exc
        self.quitting = True
        super().sendError(exc)
        if getattr(exc, "isFatal", True) and self.transport is not None:
            # After a timeout or a protocol error, do not wait for the
            # server (or for its half of the TLS shutdown).
            self.transport.abortConnection()

    def smtpState_disconnect(self, code, resp) -> None:
        self.quitting = True
        super().smtpState_disconnect(code, resp)
        if self._abortCall is None and self.transport is not None:
            self._abortCall = self.bulk.clock.callLater(self.timeout, self.transport.abortConnection)

    def connectionLost(self, reason=None) -> None:
        if self._abortCall is not None:
            if self._abortCall.active():
                self._abortCall.cancel()
            self._abortCall = None
        super().connectionLost(reason)
        if self.transcript is not None:
            self.transcript.event("connection closed")
        self.bulk.connectionEnded(self, reason)


@implementer(IHandshakeListener)
class BulkESMTPClient(_BulkClientMixin, ESMTPClient):
    """
    An ESMTP client that sends messages from a L{BulkSender} until it has
    none left.
    """


@implementer(IHandshakeListener)
class BulkLMTPClient(_BulkClientMixin, LMTPClient):
    """
    An LMTP client that sends messages from a L{BulkSender} until it has
    none left.
    """


class _ConnectionFactory(Factory):
    """
    Makes the client of one connection of a L{BulkSender}.
    """

    def __init__(self, bulk: BulkSender, index: int) -> None:
        self.bulk = bulk
        self.index = index

    def buildProtocol(self, addr):
        return self.bulk.buildClient(self.index)


class BulkSender:
    """
    Send C{count} messages over at most C{concurrency} connections at
    once.  Each connection sends messages, one after the other, while
    there are messages left: they share one counter.

    A connection that ends early, after the server answered at least one
    of its messages, is replaced while messages are left (a server may
    limit the messages per connection); one that ends without that is
    not, so that the connections made are at most C{concurrency + count}.
    The messages left when no connection is open count as failed.

    @ivar result: the L{SendResult}, so far.
    """

    #: How many lines about errors are said, at most.
    maxReports = 10

    #: The TLS mode (C{"implicit"}, C{"starttls"}...), for the advice in
    #: error lines; C{None} if unknown.
    tlsMode = None

    def __init__(
        self,
        reactor,
        endpoint,
        messages,
        count: int,
        concurrency: int,
        makeClient,
        where: str,
        timeout: float = DEFAULT_TIMEOUT,
        report=None,
        progress=None,
    ) -> None:
        """
        @param reactor: the reactor, for time.
        @param endpoint: the C{IStreamClientEndpoint} of the server.
        @param messages: the messages: C{sender}, C{recipients} and
            C{message(number)} (see L{GeneratedMessages}).
        @param count: how many messages to send.
        @param concurrency: how many connections to have at once.
        @param makeClient: makes the client of a connection, given its
            number: a L{BulkESMTPClient} or L{BulkLMTPClient}, not set up.
        @param where: the server, for people.
        @param timeout: seconds to wait for each reply.
        @param report: says a line about an error; nothing if C{None}.
        @param progress: a L{ProgressBar}, or C{None}.
        """
        self.clock = reactor
        self.endpoint = endpoint
        self.messages = messages
        self.count = count
        self.concurrency = max(1, min(concurrency, count))
        self.makeClient = makeClient
        self.where = where
        self.timeout = timeout
        self.progress = progress
        self.result = SendResult(count)
        self._report = report
        self._reported = set()
        self._reports = 0
        self._claimed = 0
        self._opened = 0
        self._active = 0
        self._started = None
        self._stopping = False
        self._connecting = {}
        self._clients = set()
        self._done = defer.Deferred()

    def start(self) -> defer.Deferred:
        """
        Open the connections.

        @return: a C{Deferred} firing with the L{SendResult} when every
            connection has ended.
        """
        self._started = self.clock.seconds()
        for i in range(self.concurrency):
            self._open()
        return self._done

    def stop(self) -> None:
        """
        Stop now: take no more messages, give up the connections being
        made, drop the open ones, and fire the result at once; the
        messages being sent, and those not taken yet, count as not sent.
        """
        if self._done.called:
            return
        self._stopping = True
        for connecting in list(self._connecting.values()):
            connecting.cancel()
        for client in list(self._clients):
            if client.current is not None:
                client.current = None
                self.result.notSent += 1
            if client.transport is not None:
                client.transport.abortConnection()
        self._active = 0
        self.result.notSent += self.count - self._claimed
        self._claimed = self.count
        self._maybeFinish()

    def _open(self) -> None:
        index = self._opened
        self._opened += 1
        self._active += 1
        connecting = self.endpoint.connect(_ConnectionFactory(self, index))
        self._connecting[index] = connecting
        connecting.addCallbacks(
            self._connected, self._connectFailed, callbackArgs=(index,), errbackArgs=(index,)
        )

    def _connected(self, protocol, index: int) -> None:
        self._connecting.pop(index, None)

    def _connectFailed(self, failure, index: int) -> None:
        self._connecting.pop(index, None)
        if self._done.called:
            return
        if not (self._stopping and failure.check(defer.CancelledError)):
            _log.info("Connection {index} to {where} failed: {error!r}", index=index, where=self.where, error=failure.value)
            self.report(f"cannot connect to {self.where}: {self._connectReason(failure.value)}")
        self._active -= 1
        self._maybeFinish()

    def _connectReason(self, error: BaseException) -> str:
        if isinstance(error, _netError.TimeoutError):
            return f"no answer within {self.timeout:g} s"
        if isinstance(error, _netError.DNSLookupError):
            return "host name not found"
        if isinstance(error, _netError.ConnectError):
            text = error.args[0] if error.args and error.args[0] else (error.__doc__ or "").strip()
            return str(text).rstrip(".") or type(error).__name__
        return str(error) or type(error).__name__

    def buildClient(self, index: int):
        """
        Make the client of a connection.

        @param index: the connection's number, from 0; the first is shown
            in the transcript.
        """
        client = self.makeClient(index)
        self._clients.add(client)
        return client

    def connectionMade(self, client) -> None:
        self.result.connections += 1

    def claim(self) -> int | None:
        """
        Take the next message.

        @return: its number, from 1; or C{None} if there are no more.
        """
        if self._stopping or self._claimed >= self.count:
            return None
        self._claimed += 1
        return self._claimed

    def messageDone(self, number: int, code: int, resp: bytes, addresses) -> None:
        """
        The server answered a message.

        @param number: its number.
        @param code: the reply to it.
        @param resp: the reply's text.
        @param addresses: C{(address, code, resp)} for each recipient.
        """
        if self._done.called:
            return
        refusals = [(address, rcode, rresp) for address, rcode, rresp in addresses if rcode not in SUCCESS]
        if code in SUCCESS and not refusals:
            self.result.sent += 1
        else:
            self.result.refused += 1
            which = f"message {number}" if self.count > 1 else "the message"
            if code not in SUCCESS:
                self.report(f"{which} was refused: {_reply(code, resp)}")
            for address, rcode, rresp in refusals:
                self.report(f"{which}: recipient <{address}> was refused: {_reply(rcode, rresp)}")
        self._progressed()

    def connectionEnded(self, client, reason) -> None:
        """
        A connection has ended.

        @param client: its client.
        @param reason: why, a C{Failure}.
        """
        self._clients.discard(client)
        if self._done.called:
            return
        number, client.current = client.current, None
        problem = client.error
        if problem is None and not client.quitting and not self._stopping:
            problem = reason.value
        if number is not None:
            self.result.failed += 1
            self._progressed()
        if problem is not None:
            _log.info(
                "Connection {index} to {where} ended early: {problem!r}", index=client.index, where=self.where, problem=problem
            )
            line = self.describeError(problem, client)
            if number is not None and self.count > 1:
                line += f" (message {number} failed)"
            self.report(line)
        self._active -= 1
        if not self._stopping and client.completed and self._claimed < self.count:
            self._open()
        else:
            self._maybeFinish()

    def describeError(self, problem: BaseException, client) -> str:
        """
        @param problem: what ended a connection early: an
            L{SMTPClientError}, or why the connection was lost.
        @param client: the connection's client.
        @return: a line for people.
        """
        where = self.where
        if isinstance(problem, SMTPClientError):
            reply = _reply(problem.code, problem.resp)
            if isinstance(problem, TLSRequiredError):
                return f"{where} does not offer STARTTLS, and TLS is required: nothing was sent"
            if isinstance(problem, AUTHRequiredError):
                offered = b", ".join(client.extensions.authMechanisms).decode("ascii", "replace") or "none"
                wanted = ", ".join(a.getName().decode("ascii") for a in client.authenticators)
                return f"{where} offers no AUTH mechanism to use (offered: {offered}; usable: {wanted}): nothing was sent"
            if isinstance(problem, (AUTHDeclinedError, AuthenticationError)):
                return f"authentication with {where} failed: {reply}"
            if isinstance(problem, EHLORequiredError):
                return f"{where} does not support EHLO, which STARTTLS and AUTH need"
            if isinstance(problem, SMTPTLSError):
                return f"STARTTLS with {where} failed: {reply}"
            if isinstance(problem, SMTPTimeoutError):
                if not client.lastLine and self.tlsMode != IMPLICIT:
                    return (
                        f"{where} did not greet within {self.timeout:g} s; if it expects TLS from the start,"
                        " use --tls"
                    )
                return f"{where} did not answer within {self.timeout:g} s"
            if isinstance(problem, SMTPConnectError):
                return f"{where} refused the connection: {reply}"
            if isinstance(problem, SMTPProtocolError):
                if client.lastLine[:2] in (b"\x15\x03", b"\x16\x03") and self.tlsMode != IMPLICIT:
                    # A TLS record: an alert, or a ServerHello.
                    return f"{where} answered with TLS, not an SMTP greeting; if it expects TLS from the start, use --tls"
                return f"{where} does not speak SMTP as expected: {reply}"
            return f"error with {where}: {reply}"
        if isTLSFailure(problem):
            return f"TLS with {where} failed: {self.describeTLSFailure(problem)}"
        if isinstance(problem, (_netError.ConnectionDone, _netError.ConnectionLost)):
            # A server that hangs up says why first, with a 421.
            said = client.lastLine
            why = f": {_oneLine(said)}" if said[:1] in (b"4", b"5") else ""
            if isinstance(problem, _netError.ConnectionDone):
                return f"{where} closed the connection{why}"
            return f"the connection to {where} was lost{why}"
        return f"the connection to {where} failed: {_oneLine(str(problem)) or type(problem).__name__}"

    def describeTLSFailure(self, problem: BaseException) -> str:
        """
        @param problem: a TLS failure (see
            L{mailproto._tlserrors.isTLSFailure}).
        @return: why TLS failed, with the option to change.
        """
        text = describeTLSFailure(problem)
        if text == "the server does not speak TLS here":
            if self.tlsMode == IMPLICIT:
                return "the server does not speak TLS on this port; drop --tls (use --starttls if it offers STARTTLS)"
            return text
        if text.startswith("the server's certificate is not trusted"):
            return f"{text}; see --cafile, --insecure"
        if text.startswith("the server's certificate is for another name"):
            return f"{text}; see --server, --insecure"
        return text

    def report(self, line: str) -> None:
        """
        Say a line about an error: each line once, and at most
        L{maxReports} of them.
        """
        if self._report is None or line in self._reported:
            return
        self._reported.add(line)
        self._reports += 1
        if self._reports <= self.maxReports:
            self._report(line)
        elif self._reports == self.maxReports + 1:
            self._report("(more errors not shown)")

    def _progressed(self) -> None:
        if self.progress is not None:
            self.progress.update(self.result.done)

    def _maybeFinish(self) -> None:
        if self._active > 0 or self._done.called:
            return
        self.result.failed += self.count - self._claimed
        self._claimed = self.count
        self.result.elapsed = self.clock.seconds() - self._started
        self._progressed()
        self._done.callback(self.result)


class SendCommand:
    """
    C{mailproto send}: read the message and the password, send, say how it
    went.

    Use L{prepare} (it may ask for the password), then L{send}; or L{run}.
    """

    def __init__(self, config: SendConfig, reactor, stdout, stderr, stdin=None, environ=None, getpass=None) -> None:
        """
        @param config: what to do.
        @param reactor: the reactor.
        @param stdout: the text stream for the summary and the transcript.
        @param stderr: the text stream for errors, warnings and the
            progress bar.
        @param stdin: the binary stream for C{--data -}; C{sys.stdin}'s if
            C{None}.
        @param environ: the environment; C{os.environ} if C{None}.
        @param getpass: asks for the password; C{getpass.getpass} if
            C{None}.
        """
        self.config = config
        self.reactor = reactor
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self.environ = environ
        self.getpass = getpass
        self.messages = None
        self.secret = None
        self.bulk = None
        self.tlsOptions = None

    def say(self, text: str) -> None:
        """
        Say a line on stderr.
        """
        self.stderr.write(f"{PROGRAM}: {text}\n")
        self.stderr.flush()

    def prepare(self) -> int | None:
        """
        Read the message, get the password, make the TLS options; warn
        about what is unsafe.

        @return: C{None} to go on, or the exit status.
        """
        config = self.config
        sender = Address(config.sender.encode("utf-8", "surrogateescape")) if config.sender else Address(b"")
        recipients = [Address(r.encode("utf-8", "surrogateescape")) for r in config.recipients]
        if config.data is None:
            self.messages = GeneratedMessages(sender, recipients, config.count, config.headers, config.body)
        else:
            try:
                if config.data == "-":
                    stdin = self.stdin
                    if stdin is None:
                        import sys

                        stdin = sys.stdin.buffer
                    data = stdin.read()
                else:
                    with open(config.data, "rb") as f:
                        data = f.read()
            except OSError as e:
                name = "stdin" if config.data == "-" else config.data
                self.say(f"error: --data: cannot read {name}: {e.strerror or e}")
                return 1
            self.messages = FileMessages(sender, recipients, data, config.headers)
        if config.user is not None:
            try:
                self.secret = readSecret(
                    config.user, config.describeServer(), config.auth, self.environ, self.getpass
                )
            except NoSecret as e:
                self.say(f"error: {e}")
                return 2
            except KeyboardInterrupt:
                self.stderr.write("\n")
                self.say("interrupted")
                return 1
        if config.tls != NO_TLS and config.socket is None:
            self.tlsOptions = makeTLSOptions(config)
            if config.insecure:
                self.say(
                    "warning: --insecure: the server's certificate is not checked; anyone on the way can read"
                    " and change what is sent"
                )
        elif config.user is not None and config.socket is None:
            self.say("warning: --no-tls: the user name and password cross the network unencrypted")
        return None

    def makeEndpoint(self):
        """
        @return: the client endpoint of the server: TCP (with TLS from
            the start for C{--tls}) or a UNIX socket.
        """
        from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS

        config = self.config
        if config.socket is not None:
            return UNIXClientEndpoint(self.reactor, config.socket, timeout=config.timeout)
        endpoint = HostnameEndpoint(self.reactor, config.host, config.port, timeout=config.timeout)
        if config.tls == IMPLICIT:
            endpoint = wrapClientTLS(self.tlsOptions, endpoint)
        return endpoint

    def makeClient(self, index: int):
        """
        @return: the client of connection C{index}, set up.
        """
        config = self.config
        identity = config.helo.encode("ascii") if config.helo else localHostname()
        startTLS = self.tlsOptions if config.tls in (OPPORTUNISTIC, STARTTLS) else None
        if config.lmtp:
            client = BulkLMTPClient(identity, 10, self.secret, startTLS)
        else:
            client = BulkESMTPClient(self.secret, startTLS, identity)
        client.requireTransportSecurity = config.tls == STARTTLS
        client.checksCertificate = not config.insecure
        if config.user is not None:
            client.requireAuthentication = True
            encrypted = config.tls != NO_TLS or config.socket is not None
            for authenticator in makeAuthenticators(config.user, config.auth, encrypted):
                client.registerAuthenticator(authenticator)
        transcript = Transcript(self.stdout) if config.verbose and index == 0 else None
        client.setUp(self.bulk, index, transcript)
        return client

    def send(self) -> defer.Deferred:
        """
        Send the messages; print the summary.  Call L{prepare} first.

        @return: a C{Deferred} firing with the exit status: C{0} if every
            message was sent, else C{1}.
        """
        config = self.config
        progress = None
        isatty = getattr(self.stderr, "isatty", None)
        if not (config.quiet or config.verbose) and config.count > 1 and isatty is not None and isatty():
            progress = ProgressBar(self.stderr, config.count, self.reactor)
        self.bulk = BulkSender(
            self.reactor,
            self.makeEndpoint(),
            self.messages,
            config.count,
            config.concurrency,
            self.makeClient,
            config.describeServer(),
            config.timeout,
            report=self.say,
            progress=progress,
        )
        self.bulk.tlsMode = None if config.socket is not None else config.tls
        if progress is not None:
            progress.start()
        if config.verbose:
            self.stdout.write(f"*** connecting to {config.describeServer()}\n")

        def finished(result: SendResult) -> int:
            if progress is not None:
                progress.finish()
            if not config.quiet:
                self.stdout.write(result.summary() + "\n")
                self.stdout.flush()
            return 0 if result.ok else 1

        return self.bulk.start().addCallback(finished)

    def stop(self) -> None:
        """
        Stop sending (Ctrl-C): the summary says how many messages were not
        sent.
        """
        if self.bulk is not None:
            self.bulk.stop()

    def run(self) -> defer.Deferred:
        """
        L{prepare}, then L{send}.

        @return: a C{Deferred} firing with the exit status.
        """
        status = self.prepare()
        if status is not None:
            return defer.succeed(status)
        return self.send()
