# -*- test-case-name: mailproto.test.test_server -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The server side of SMTP (RFC 5321), ESMTP and LMTP (RFC 2033): the
protocols people subclass or configure to receive mail.

The protocol reads commands a line at a time and message data in bulk.
Every command is answered in the order it came, also when the client
pipelines and validation is asynchronous: while a command waits for a
C{Deferred}, later input stays buffered (and the transport is paused if it
grows).  Message data goes to the L{IMessageSMTP} objects as it arrives;
memory per connection is bounded by the longest line allowed, whatever the
message size.

Whatever the client does, a connection stays cheap
(L{mailproto._intake}): the replies to one read go out in one write, on a
socket without Nagle's delay; while the client does not read them, its
input waits, and reading stops once 64 KiB of it wait; a hundred pipelined
commands at most are handled before the reactor runs others; a command
line, a SASL response and message data must arrive within their deadlines
(C{commandDeadline}, C{minDataRate}).

States (C{SMTP.mode}):

  - C{COMMAND}: reading command lines.  A line is handed to
    C{state_COMMAND}, which dispatches C{do_<VERB>} (and on L{ESMTP},
    C{ext_<VERB>}).
  - C{DATA}: after C{354}, until C{CRLF.CRLF}.  The data is unstuffed and
    checked (line length, size, bare line ends) and streamed to the
    messages.
  - C{BDAT}: reading the octets of one C{BDAT} chunk (RFC 3030).
  - C{AUTH}: in a SASL exchange (L{ESMTP} with a portal).

Transaction state: C{_helo} is C{(HELO argument, client address)}, the
argument being C{None} until HELO/EHLO; C{_from} is the accepted sender;
C{_to} the accepted recipients as C{(User, message factory)} pairs.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import functools
import re

from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer
from twisted.internet.interfaces import INegotiated, ISSLTransport, ITLSTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailproto import __version__
from mailproto._address import Address, User, quoteaddr  # noqa: F401 (Address: for L{Address} in docstrings)
from mailproto._authfailures import AuthFailures
from mailproto._commands import noArgument, parseAuth, parseBdat, parseHelo, parseMailFrom, parseRcptTo, splitCommand
from mailproto._cred import LOGINCredentials, PLAINCredentials
from mailproto._data import BareNewlinePolicy, Unstuffer
from mailproto._errors import SMTPBadRcpt, SMTPBadSender, SMTPServerError
from mailproto._headers import localHostname, rfc822date
from mailproto._intake import UNCONNECTED, InputValve, RequestDeadline, setNoDelay
from mailproto._replies import Reply, isStatus
from mailproto._writes import writeNow
from mailproto.interfaces import IMessageDelivery, IMessageDeliveryFactory, IMessageStream

COMMAND, DATA, BDAT, AUTH = "COMMAND", "DATA", "BDAT", "AUTH"

# Replies to a command that count against the session's error limit.
_BAD_COMMAND_CODES = frozenset({500, 501, 502, 503, 504, 555})

# Which MAIL and RCPT parameters each EHLO keyword allows.
_PARAMETERS_BY_EXTENSION = {
    b"SIZE": ((b"SIZE",), ()),
    b"8BITMIME": ((b"BODY",), ()),
    b"SMTPUTF8": ((b"SMTPUTF8",), ()),
    b"DSN": ((b"RET", b"ENVID"), (b"NOTIFY", b"ORCPT")),
    b"AUTH": ((b"AUTH",), ()),
    b"REQUIRETLS": ((b"REQUIRETLS",), ()),
}

# A header field's first line: a name of printable characters, then ":".
_headerLineRe = re.compile(rb"[!-9;-~]+:")

# How much input may wait, unread, behind a command whose reply is pending
# before the transport is paused.
_MAX_BUFFERED = 65536

# How many pipelined commands are handled in one go before the reactor
# gets to run other connections.
_BATCH_COMMANDS = 100

# The modules whose command handlers are known to leave the transport
# alone, so that their replies may be gathered (see SMTP._runAlone).
_COALESCING_MODULES = frozenset({__name__, "mailproto._relayd._daemon", "mailproto._commandline._sink"})

# Commands that carry no mail (Postfix's junk commands, and HELP); unknown
# commands count too.
_JUNK_HANDLERS = frozenset({"do_NOOP", "do_RSET", "do_VRFY", "do_EXPN", "do_HELP", "do_UNKNOWN"})

# The longest AUTH command line (with an initial response) and SASL
# response, CRLF included (RFC 4954 section 4).
_MAX_AUTH_LINE = 12288

# SASL mechanisms that send the password itself.
_PLAINTEXT_MECHANISMS = frozenset({b"PLAIN", b"LOGIN"})

_INTERNAL_ERROR = (451, b"Requested action aborted: local error in processing", b"4.3.0")


@functools.lru_cache(maxsize=1)
def _reactorSeconds():
    """
    @return: the global reactor's C{seconds}.
    """
    from twisted.internet import reactor

    return reactor.seconds


def _printable(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


# What may stay of a peer's host in C{_helo} and trace headers: the
# characters of IPv4 and IPv6 addresses (with a zone index).  A TCP
# transport only ever gives those; a PROXY protocol header (v1 is text)
# can carry anything else, which must not reach a header or a log line.
_NOT_ADDRESS = re.compile(rb"[^0-9A-Za-z.:%_-]")


def _peerHost(address) -> bytes:
    """
    @return: the client's address as it goes into C{_helo} and trace
        headers: the IP address of a TCP peer, else a description.
    """
    host = getattr(address, "host", None)
    if host is None:
        return b"unix" if getattr(address, "type", None) is None else str(address).encode("ascii", "replace")
    if isinstance(host, str):
        host = host.encode("ascii", "replace")
    return _NOT_ADDRESS.sub(b"?", host) or b"?"


def _replyLines(code: int, lines: list[bytes]) -> bytes:
    """
    @return: a reply of one or more lines, as sent.
    """
    if len(lines) == 1:
        return b"%d %s\r\n" % (code, lines[0])
    last = len(lines) - 1
    return b"".join(b"%d%s%s\r\n" % (code, b" " if i == last else b"-", line) for i, line in enumerate(lines))


@functools.lru_cache(maxsize=256)
def _formatReply(code: int, message: bytes, status: bytes | None, enhanced: bool) -> bytes:
    """
    @return: the reply C{code} C{message} as sent, with the enhanced status
        code C{status} (or one taken from the start of C{message}, or
        C{X.0.0}) when C{enhanced}.  Most replies are the same few, so the
        answers are kept.
    """
    lines = message.splitlines() or [b""]
    if enhanced and code // 100 in (2, 4, 5):
        first, _, rest = lines[0].partition(b" ")
        if status is None and isStatus(first, code):
            status, lines[0] = first, rest
        elif status is None or not isStatus(status, code):
            status = b"%d.0.0" % (code // 100)
        lines = [status + b" " + line if line else status for line in lines]
    return _replyLines(code, lines)


@functools.lru_cache(maxsize=256)
def _knownParameters(keywords: tuple) -> tuple[frozenset, frozenset]:
    """
    @param keywords: the EHLO keywords offered.
    @return: the MAIL and the RCPT parameters they allow.
    """
    known = (set(), set())
    for keyword in keywords:
        for which, names in enumerate(_PARAMETERS_BY_EXTENSION.get(keyword, ((), ()))):
            known[which].update(names)
    return frozenset(known[0]), frozenset(known[1])


@functools.lru_cache(maxsize=64)
def _helpText(protocol: type) -> bytes:
    """
    @return: the text of C{HELP} for a server class: the commands it has.
    """
    verbs = set()
    for name in dir(protocol):
        prefix, _, verb = name.partition("_")
        if prefix in ("do", "ext") and verb.isalpha() and verb.isupper() and verb != "UNKNOWN":
            if getattr(protocol, name) is not None:
                verbs.add(verb)
    return b"Commands: " + " ".join(sorted(verbs)).encode("ascii") + b"\nSee RFC 5321"


class SMTP(LineReceiver, TimeoutMixin):
    """
    An SMTP server (RFC 5321): HELO sessions, without extensions.  See
    L{ESMTP} for EHLO and the extensions.

    Deliver mail by giving it an L{IMessageDelivery} (C{delivery}), an
    L{IMessageDeliveryFactory} (C{deliveryFactory}), a C{portal} whose
    avatars are either, or by overriding L{validateFrom}, L{validateTo} and
    L{receivedHeader}.

    Limits (set them on the L{SMTPFactory}; it copies them here):

    @ivar host: the server's name, in the greeting and trace headers.
    @ivar timeout: seconds of silence from the client before the server
        says C{421} and hangs up.  Any received data restarts the count.
    @ivar commandDeadline: seconds a command line (or SASL response) may
        take from its first octet to its CRLF, whatever arrives meanwhile;
        also the most time message data can have in hand (see
        C{minDataRate}).  Then C{421 4.4.2} and the server hangs up.  C{0}
        for no deadline.
    @ivar minDataRate: the least average rate of message data (DATA and
        BDAT), in octets per second: each octet received moves the
        deadline on by C{1 / minDataRate} seconds, up to
        C{commandDeadline} from now (as Postfix's C{smtpd_min_data_rate}).
        C{0} for none: then data only has to keep arriving within
        C{commandDeadline}.
    @ivar maxJunkCommands: how many commands that carry no mail (NOOP,
        RSET, VRFY, EXPN, HELP and unknown ones) the client may send per
        message it sends; with the next, C{421 4.7.0} and the server hangs
        up.  C{0} for no limit.
    @ivar greetingDelay: seconds to wait before the C{220} greeting; a
        client that talks before it (as spam software does) is told C{554
        5.5.1} and dropped.  C{0} greets at once.
    @ivar maxCommandLength: the longest command line, CRLF included (RFC
        5321 section 4.5.3.1.4: 512).  A longer line gets C{500}.
    @ivar maxLineLength: the longest line of message text, without its
        CRLF (RFC 5322: 998).  A message with a longer line is read to its
        end and refused; its body is never read as commands.
    @ivar maxMessageSize: the largest message, in octets; C{0} for no
        limit.
    @ivar maxRecipients: the most recipients in one transaction.
    @ivar maxErrors: how many bad commands (replies 500-504 and 555) the
        client may send; with the next, the server says C{421} and hangs
        up.  C{0} for no limit.
    @ivar bareNewlinePolicy: what to do with a bare LF or bare CR in
        message data; see L{BareNewlinePolicy}.
    @ivar mode: the state: C{"COMMAND"}, C{"DATA"}, C{"BDAT"} or
        C{"AUTH"}.
    """

    timeout = 600
    portal = None
    noisy = True
    delivery = None
    deliveryFactory = None
    _onLogout = None

    maxCommandLength = 512
    maxLineLength = 998
    maxMessageSize = 32 * 1024 * 1024
    maxRecipients = 1000
    maxErrors = 20
    bareNewlinePolicy = BareNewlinePolicy.NORMALIZE
    commandDeadline = 300.0
    minDataRate = 500
    maxJunkCommands = 100
    greetingDelay = 0.0

    #: The protocol's name in the C{with} clause of trace headers.
    _protocolName = b"SMTP"
    #: Octets a command line may have beyond C{maxCommandLength} for
    #: the parameters of extensions (RFC 1869 section 4.1.2).
    _parameterAllowance = 0

    _log = Logger()

    def __init__(self, delivery=None, deliveryFactory=None) -> None:
        """
        @param delivery: the L{IMessageDelivery} for every message of the
            connection.
        @param deliveryFactory: an L{IMessageDeliveryFactory}, asked for a
            delivery for each message.
        """
        self.mode = COMMAND
        self._from = None
        self._helo = None
        self._to = []
        self._mail = None
        self.delivery = delivery
        self.deliveryFactory = deliveryFactory
        self._hostName = None
        self._input = b""
        self._discardingLine = False
        self._pending = None
        self._heldTimeout = None
        self._processing = False
        self._gathering = 0
        self._outbox = []
        self._valve = InputValve(UNCONNECTED, self._inputResumed)
        self._deadline = RequestDeadline()
        self._seconds = None
        self._greeting = None
        self._closing = False
        self._errorCount = 0
        self._junkCount = 0
        self._enhanced = False
        self._advertised = {}
        self._messages = None
        self._feeders = ()
        self._unstuffer = None
        self._dataFailed = None
        self._received = 0
        self._firstContent = True
        self._addedHeader = False
        self._chunkRemaining = 0
        self._chunkLast = False
        self._chunking = False
        self._chunkSize = 0
        self._chunkOctets = 0
        self._recipients = []
        self._peerKnown = False

    # -- the server's name ------------------------------------------------

    @property
    def host(self) -> bytes:
        """
        The server's name; the machine's host name unless set.
        """
        if self._hostName is None:
            self._hostName = localHostname()
        return self._hostName

    @host.setter
    def host(self, value) -> None:
        if not isinstance(value, bytes):
            value = str(value).encode("ascii")
        if value.endswith(b".") and len(value) > 1:
            # A fully qualified name's root dot: it completes bare local
            # parts (RCPT TO:<postmaster>), and an address may not end in
            # a dot.
            value = value[:-1]
        self._hostName = value

    # -- connection -------------------------------------------------------

    def greeting(self) -> bytes:
        """
        @return: the text of the C{220} greeting.
        """
        return self.host + b" NO UCE NO UBE NO RELAY PROBES"

    def connectionMade(self) -> None:
        self._helo = (None, _peerHost(self.transport.getPeer()))
        setNoDelay(self.transport)
        self._valve = InputValve(self.transport, self._inputResumed)
        self.transport.registerProducer(self._valve, True)
        self.setTimeout(self.timeout)
        if self.greetingDelay > 0:
            self._greeting = self.callLater(self.greetingDelay, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        self._greeting = None
        self._sendPlain(220, self.greeting())

    def limitExceeded(self, limit: str) -> None:
        """
        Called once each time a limit of the session acts, after the
        server has logged it and before it replies.  Override it to count
        them; this one does nothing.

        @param limit: which: C{"idle-timeout"}, C{"command-deadline"},
            C{"data-rate"}, C{"junk-commands"}, C{"errors"},
            C{"early-talker"} or C{"auth-failures"}.
        """

    def _clientAddress(self) -> None:
        """
        Take the client's address again when its first input arrives.

        Behind a PROXY protocol wrapper (C{twisted.protocols.haproxy}), the
        transport's C{getPeer()} is the proxy's address when the connection
        is made (the wrapper connects this protocol at once, and the
        greeting goes out then) and the real client's only once the
        header, which comes before any SMTP input, has been read.
        """
        self._peerKnown = True
        self._helo = (self._helo[0], _peerHost(self.transport.getPeer()))

    def _peerText(self) -> str:
        """
        @return: the client's address, for log lines.
        """
        return "unknown" if self._helo is None else self._helo[1].decode("ascii", "replace")

    def timeoutConnection(self) -> None:
        self._log.info("SMTP client {peer} timed out", peer=self._peerText())
        self.limitExceeded("idle-timeout")
        self._hangUp(421, self.host + b" Timeout. Try talking faster next time!", b"4.4.2")

    def _now(self) -> float:
        """
        @return: the time now, on the clock of C{callLater}.
        """
        if self._seconds is None:
            # The clock is known once the protocol is set up: a reactor's
            # or a test's Clock, whose callLater this is.
            clock = getattr(self.callLater, "__self__", None)
            self._seconds = clock.seconds if hasattr(clock, "seconds") else _reactorSeconds()

        return self._seconds()

    def _deadlinePassed(self, kind: str) -> None:
        if kind == "data":
            self._log.info(
                "SMTP client {peer} sent message data too slowly (under {rate} octets/s)",
                peer=self._peerText(),
                rate=self.minDataRate,
            )
            self.limitExceeded("data-rate")
        else:
            self._log.info(
                "SMTP client {peer} took over {seconds}s to send a command line",
                peer=self._peerText(),
                seconds=self.commandDeadline,
            )
            self.limitExceeded("command-deadline")
        self._hangUp(421, self.host + b" Error: timeout exceeded", b"4.4.2")

    def connectionLost(self, reason=None) -> None:
        self._deadline.clear()
        greeting, self._greeting = self._greeting, None
        if greeting is not None and greeting.active():
            greeting.cancel()
        self._abortMessages()
        if self._onLogout is not None:
            logout, self._onLogout = self._onLogout, None
            logout()
        self.setTimeout(None)
        self._closing = True

    def _hangUp(self, code: int, text: bytes, status: bytes | None = None) -> None:
        """
        Say a last reply and close the connection; input that follows is
        ignored.
        """
        if self._closing:
            return
        self.sendCode(code, text, status)
        self._closing = True
        self._input = b""
        self._deadline.clear()
        self._flushReplies()
        self.transport.loseConnection()

    # -- replies ----------------------------------------------------------

    def sendCode(self, code: int, message: bytes = b"", status: bytes | None = None) -> None:
        """
        Send a reply.

        After EHLO with ENHANCEDSTATUSCODES (RFC 2034), every line of a
        2xx, 4xx or 5xx reply starts with an enhanced status code: C{status}
        if given, else the one C{message} starts with, else C{X.0.0}.

        @param code: the reply code.
        @param message: its text; several lines are separated by LF.
        @param status: the enhanced status code, such as C{b"2.1.0"}.
        """
        if not isinstance(message, bytes):
            message = str(message).encode("utf-8")
        # As _send does, without a call more for each reply.
        if self._gathering:
            self._outbox.append(_formatReply(code, message, status, self._enhanced))
        else:
            writeNow(self.transport, _formatReply(code, message, status, self._enhanced))
        if code in _BAD_COMMAND_CODES:
            self._countError()

    def _sendPlain(self, code: int, message: bytes) -> None:
        """
        Send a reply that never carries an enhanced status code: the
        greeting, and the replies to HELO, EHLO and LHLO.
        """
        self._writeReply(code, message.splitlines() or [b""])

    def _writeReply(self, code: int, lines: list[bytes]) -> None:
        self._send(_replyLines(code, lines))

    def _send(self, reply: bytes) -> None:
        """
        Send a reply: at once, or, while input is being handled, with the
        other replies to the same input, in one write once the input is
        used up (RFC 2920 section 3.2), so that pipelined replies never
        wait for the client's delayed ACK.
        """
        if not self._gathering:
            writeNow(self.transport, reply)
            return
        # At most a batch of commands' replies (see _BATCH_COMMANDS).
        self._outbox.append(reply)

    @contextlib.contextmanager
    def _repliesTogether(self):
        """
        Within this context, replies are gathered and written in one go
        at its end.
        """
        self._gathering += 1
        try:
            yield
        finally:
            self._gathering -= 1
            if not self._gathering:
                self._flushReplies()

    def _flushReplies(self) -> None:
        """
        Write the replies gathered so far.
        """
        if self._outbox:
            replies, self._outbox = self._outbox, []
            writeNow(self.transport, replies[0] if len(replies) == 1 else b"".join(replies))

    def _replyError(self, error: SMTPServerError) -> None:
        resp = error.resp if isinstance(error.resp, bytes) else str(error.resp).encode("utf-8")
        self.sendCode(error.code, resp, getattr(error, "status", None))

    def _internalError(self, failure: Failure, what: str) -> None:
        """
        Log an unexpected error in user code with its traceback, and answer
        C{451 4.3.0}; the client never sees the exception.
        """
        self._log.failure("Unexpected error in {what}", failure, what=what)
        self.sendCode(*_INTERNAL_ERROR)

    def _countError(self) -> None:
        self._errorCount += 1
        if self.maxErrors and self._errorCount > self.maxErrors and not self._closing:
            self._log.info("SMTP client {peer} made too many errors", peer=self._peerText())
            self.limitExceeded("errors")
            self._hangUp(421, self.host + b" Too many errors, closing connection", b"4.7.0")

    def sendSyntaxError(self) -> None:
        self.sendCode(500, b"Error: bad syntax", b"5.5.2")

    # -- input ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Take input: commands a line at a time, message data in bulk.  Any
        input restarts the idle timeout; only a complete line, or message
        data at C{minDataRate}, keeps the request deadline away.
        """
        self.resetTimeout()
        if self._closing:
            return
        if self._greeting is not None:
            self._earlyTalker()
            return
        if not self._peerKnown and self._helo is not None:
            self._clientAddress()
        deadline = self._deadline
        if deadline.kind is not None:
            now = self._now()
            if deadline.passed(now):
                self._deadlinePassed(deadline.kind)
                return
            if self.mode == DATA or self.mode == BDAT:
                deadline.earn(len(data), self.minDataRate, self.commandDeadline, now)
        self._input = self._input + data if self._input else data
        if not self._processing:
            self._processInput()

    def _earlyTalker(self) -> None:
        """
        The client talked before the greeting, which no client that waits
        for the server's replies does.
        """
        greeting, self._greeting = self._greeting, None
        greeting.cancel()
        self._log.info("SMTP client {peer} talked before the greeting", peer=self._peerText())
        self.limitExceeded("early-talker")
        self._hangUp(554, self.host + b" Protocol error: talking before the greeting", b"5.5.1")

    def _processInput(self) -> None:
        """
        Handle the input received so far, as long as nothing holds it (a
        pending answer, a paused transport, a closing connection), then
        write the replies it produced in one go.
        """
        self._processing = True
        self._gathering += 1
        commands = 0
        valve = self._valve
        limit = self.maxCommandLength + self._parameterAllowance
        try:
            while self._input and self._pending is None and not self._closing and not valve.paused:
                if self.mode == DATA or self.mode == BDAT:
                    self._input = self._dataInput(self._input)
                    continue
                if commands >= _BATCH_COMMANDS:
                    self._yieldToReactor()
                    break
                end = self._input.find(b"\r\n")
                if end < 0:
                    if len(self._input) > limit and len(self._input) > self._lineLimit(self._input):
                        # Read on to the end of the line, keeping only a
                        # final CR, which may start the CRLF.
                        self._discardingLine = True
                        self._input = b"\r" if self._input[-1:] == b"\r" else b""
                    break
                line, self._input = self._input[:end], self._input[end + 2 :]
                commands += 1
                if self._discardingLine or (end + 2 > limit and end + 2 > self._lineLimit(line)):
                    self._discardingLine = False
                    self.lineLengthExceeded(line)
                    continue
                if self.mode == COMMAND:
                    self.lineReceived(line)
                else:
                    # A SASL response: its handler may answer later.
                    self._run(self.lineReceived, line)
        finally:
            self._processing = False
            self._gathering -= 1
            replies = self._outbox
            if replies and not self._gathering:
                self._outbox = []
                writeNow(self.transport, replies[0] if len(replies) == 1 else b"".join(replies))
        if self._input:
            if (self._pending is not None or valve.outputFull) and len(self._input) > _MAX_BUFFERED:
                valve.hold("backlog")
        elif self._deadline.kind is None and self.mode == COMMAND and not self._discardingLine:
            # The common case: every line read was whole, and none is due.
            return
        self._watchDeadline(commands > 0)

    def _yieldToReactor(self) -> None:
        """
        Stop reading until the reactor's next turn, so that a client that
        pipelines thousands of commands does not keep others waiting.
        """
        self._valve.hold("batch")
        self.callLater(0, self._endBatch)

    def _endBatch(self) -> None:
        self._valve.release("batch")

    def _inputResumed(self) -> None:
        if not self._processing and not self._closing:
            self._processInput()

    def _watchDeadline(self, linesEnded: bool) -> None:
        """
        Start, keep or stop the request deadline after input was handled.

        @param linesEnded: whether lines were read whole, so that what is
            left, if anything, is the start of a new one.
        """
        if self._closing:
            self._deadline.clear()
        elif self.mode == DATA or self.mode == BDAT:
            self._deadline.data(self.commandDeadline, self._now())
        elif self._pending is None and (self._input or self._discardingLine):
            # A line has begun and has not ended.
            self._deadline.line(self.commandDeadline, self._now(), restart=linesEnded)
        else:
            self._deadline.clear()

    def _lineLimit(self, line: bytes) -> int:
        """
        @param line: the line, or its start.
        @return: the most octets it may have, CRLF included.
        """
        if self.mode == AUTH or line[:5].upper() == b"AUTH ":
            return _MAX_AUTH_LINE
        return self.maxCommandLength + self._parameterAllowance

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A command line was longer than the limit: say so and go on with the
        next line.  A SASL exchange it was part of is over.
        """
        if self.mode == AUTH:
            self.mode = COMMAND
            self.challenger = None
        self.sendCode(500, b"Line too long", b"5.5.2")

    def lineReceived(self, line: bytes):
        """
        Handle one command line (or, in the C{AUTH} state, one SASL
        response) by calling C{state_<mode>}.
        """
        return getattr(self, "state_" + self.mode)(line)

    def state_COMMAND(self, line: bytes) -> None:
        """
        Dispatch a command line to C{do_<VERB>}.  A command whose handler
        returns a C{Deferred} is answered before the next one is read.
        """
        if not line.strip():
            self.sendSyntaxError()
            return
        try:
            verb, rest = splitCommand(line.strip(b" "))
        except SMTPServerError as e:
            self._replyError(e)
            return
        method = self.lookupMethod(verb)
        if (method is None or getattr(method, "__name__", None) in _JUNK_HANDLERS) and self._junkCommand():
            return
        self._run(method or self.do_UNKNOWN, rest)

    def _junkCommand(self) -> bool:
        """
        Count a command that carries no mail.

        @return: whether that was one too many, and the server hangs up.
        """
        self._junkCount += 1
        if not self.maxJunkCommands or self._junkCount <= self.maxJunkCommands:
            return False
        self._log.info("SMTP client {peer} sent too many commands without mail", peer=self._peerText())
        self.limitExceeded("junk-commands")
        self._hangUp(421, self.host + b" Error: too many commands without mail", b"4.7.0")
        return True

    def _run(self, method, *args) -> None:
        """
        Call a command handler, turning its errors into replies; if it
        returns a C{Deferred}, hold later input until it fires.
        """
        try:
            if getattr(method, "__module__", None) in _COALESCING_MODULES:
                result = method(*args)
            else:
                result = self._runAlone(method, *args)
        except SMTPServerError as e:
            self._replyError(e)
            return
        except BaseException:
            self._internalError(Failure(), "a command handler")
            return
        if isinstance(result, defer.Deferred):
            self._wait(result)

    def _runAlone(self, method, *args):
        """
        Call a command handler written elsewhere (a subclass's): the
        replies so far are written first, and its own replies at once, so
        that whatever it does to the transport itself after a reply (close
        it, start TLS) comes after that reply, as with twisted.mail.
        """
        self._flushReplies()
        gathering, self._gathering = self._gathering, 0
        try:
            return method(*args)
        finally:
            self._gathering = gathering

    def _wait(self, d: defer.Deferred) -> None:
        """
        Hold input until C{d} fires (with its errors already handled).
        """
        self._pending = d
        d.addErrback(self._internalError, "a command handler")
        d.addBoth(self._resume, d)
        if self._pending is d:
            # The client is waiting for us, not idle: no timeout meanwhile.
            self._heldTimeout = self.setTimeout(None)

    def _resume(self, ignored, d: defer.Deferred) -> None:
        if self._pending is not d:
            return
        self._pending = None
        if self._heldTimeout is not None and not self._closing:
            self.setTimeout(self._heldTimeout)
        self._heldTimeout = None
        self._valve.release("backlog")
        if not self._processing:
            self._processInput()

    def lookupMethod(self, command):
        """
        @param command: a command's verb.
        @type command: C{bytes} or C{str}
        @return: the method C{do_<VERB>} that handles it, or C{None}.
        """
        if isinstance(command, bytes):
            command = command.decode("ascii", "replace")
        return getattr(self, "do_" + command.upper(), None)

    # -- commands ---------------------------------------------------------

    def do_UNKNOWN(self, rest: bytes) -> None:
        self.sendCode(500, b"Command not implemented", b"5.5.2")

    def _clientName(self, rest: bytes, verb: str) -> bytes | None:
        try:
            return parseHelo(rest, verb)
        except SMTPServerError as e:
            self._replyError(e)
            return None

    def do_HELO(self, rest: bytes) -> None:
        name = self._clientName(rest, "HELO")
        if name is None:
            return
        self._startSession(name, extended=False)
        self._sendPlain(250, self.host + b" Hello " + self._helo[1] + b", nice to meet you")

    def _startSession(self, name: bytes, extended: bool) -> None:
        """
        Begin a session after HELO, EHLO or LHLO: any transaction is
        forgotten.
        """
        self._resetTransaction()
        self._helo = (name, self._helo[1])
        self._enhanced = False
        self._advertised = {}
        self._protocolName = b"ESMTP" if extended else type(self)._protocolName

    def do_QUIT(self, rest: bytes) -> None:
        self._hangUp(221, b"See you later", b"2.0.0")

    def do_NOOP(self, rest: bytes) -> None:
        self.sendCode(250, b"OK", b"2.0.0")

    def do_RSET(self, rest: bytes) -> None:
        noArgument(rest, "RSET")
        self._resetTransaction()
        self.sendCode(250, b"I remember nothing.", b"2.0.0")

    def do_VRFY(self, rest: bytes) -> None:
        if not rest.strip():
            raise SMTPServerError(501, "Syntax: VRFY address", b"5.5.4")
        self.sendCode(252, b"Cannot verify the user, but will accept mail for it", b"2.0.0")

    def do_EXPN(self, rest: bytes) -> None:
        self.sendCode(502, b"EXPN not available", b"5.5.1")

    def do_HELP(self, rest: bytes) -> None:
        self.sendCode(214, _helpText(type(self)), b"2.0.0")

    def _knownParameters(self, which: int) -> frozenset:
        """
        @param which: 0 for MAIL, 1 for RCPT.
        @return: the parameters the extensions offered allow.
        """
        return _knownParameters(tuple(self._advertised))[which]

    def do_MAIL(self, rest: bytes):
        if self._helo[0] is None:
            raise SMTPServerError(503, "Send HELO or EHLO first", b"5.5.1")
        if self._from is not None:
            raise SMTPServerError(503, "Only one sender per message, please", b"5.5.1")
        if self._chunking:
            raise SMTPServerError(503, "End the message with BDAT LAST, or RSET", b"5.5.1")
        self._resetTransaction()
        mail = parseMailFrom(rest, self._knownParameters(0), self.host)
        if mail.body == b"BINARYMIME" and b"BINARYMIME" not in self._advertised:
            raise SMTPServerError(555, "BODY=BINARYMIME not supported", b"5.5.4")
        if mail.size is not None and self.maxMessageSize and mail.size > self.maxMessageSize:
            raise SMTPServerError(552, "Message size exceeds fixed maximum message size", b"5.3.4")
        if mail.requiretls and b"REQUIRETLS" not in self._advertised:
            # Taken only by a server that honours REQUIRETLS, on a session
            # without TLS (ESMTP._knownParameters): RFC 8689 section 2 wants
            # TLS for it, and RFC 5248's X.7.10 says encryption is needed.
            raise SMTPServerError(530, "REQUIRETLS needs a TLS connection", b"5.7.10")
        self._mail = mail
        if type(self).validateFrom is SMTP.validateFrom:
            # Ask the delivery itself, so that a plain answer is not wrapped
            # in a Deferred only to be taken out again.
            delivery = self._senderDelivery()
            validate = self._anonymousValidateFrom if delivery is None else delivery.validateFrom
        else:
            validate = self.validateFrom
        return self._validate(validate, (self._helo, mail.address), self._cbFromValidate, self._ebFromValidate)

    @staticmethod
    def _validate(validate, args, callback, errback, callbackArgs=()):
        """
        Call a validator and pass its answer to C{callback} or its error to
        C{errback}: at once when it answers at once, else when its
        C{Deferred} fires.

        @return: that C{Deferred}, or C{None}.
        """
        try:
            result = validate(*args)
        except BaseException:
            return errback(Failure())
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(callback, errback, callbackArgs=callbackArgs)
        if isinstance(result, Failure):
            return errback(result)
        return callback(result, *callbackArgs)

    def _cbFromValidate(self, fromEmail, code=250, msg=b"Sender address accepted") -> None:
        self._from = fromEmail
        self.sendCode(code, msg, b"2.1.0")

    def _ebFromValidate(self, failure: Failure) -> None:
        self._mail = None
        if failure.check(SMTPBadSender):
            e = failure.value
            resp = e.resp if isinstance(e.resp, bytes) else str(e.resp).encode("utf-8")
            self.sendCode(
                e.code, b"Cannot receive from specified address " + quoteaddr(e.addr) + b": " + resp, e.status
            )
        elif failure.check(SMTPServerError):
            self._replyError(failure.value)
        else:
            self._internalError(failure, "sender validation")

    def do_RCPT(self, rest: bytes):
        if self._from is None:
            raise SMTPServerError(503, "Must have sender before recipient", b"5.5.1")
        if len(self._to) >= self.maxRecipients:
            raise SMTPServerError(452, "Too many recipients", b"4.5.3")
        rcpt = parseRcptTo(rest, self._knownParameters(1), self.host, utf8=bool(self._mail and self._mail.smtputf8))
        user = User(rcpt.address, self._helo, self, self._from)
        user.mail = self._mail
        user.rcpt = rcpt
        return self._validate(self.validateTo, (user,), self._cbToValidate, self._ebToValidate, (user,))

    def _cbToValidate(self, to, user=None, code=250, msg=b"Recipient address accepted") -> None:
        if user is None:
            user = to
        self._to.append((user, to))
        self.sendCode(code, msg, b"2.1.5")

    def _ebToValidate(self, failure: Failure) -> None:
        if failure.check(SMTPServerError):
            self._replyError(failure.value)
        else:
            self._internalError(failure, "recipient validation")

    def _resetTransaction(self) -> None:
        if self._chunking:
            # A BDAT message without its LAST chunk is abandoned.
            self._abortMessages()
            self._unstuffer = None
        self._from = None
        self._to = []
        self._mail = None
        self._chunking = False

    # -- message data -----------------------------------------------------

    def do_DATA(self, rest: bytes) -> None:
        noArgument(rest, "DATA")
        if self._chunking:
            raise SMTPServerError(503, "DATA cannot follow BDAT", b"5.5.1")
        if self._from is None or not self._to:
            raise SMTPServerError(503, "Must have valid receiver and originator", b"5.5.1")
        self._startMessages()
        self._unstuffer = Unstuffer(self.bareNewlinePolicy, self.maxLineLength)
        self.mode = DATA
        self.sendCode(354, b"Continue")

    def _startMessages(self) -> None:
        """
        Make the message objects of the transaction, each with its trace
        header, and forget the transaction.

        @raise SMTPServerError: the reply to send if it failed; the
            messages made so far have been told.
        """
        helo, origin, recipients = self._helo, self._from, self._to
        self._resetTransaction()
        messages = []
        self._messages = messages
        self._feeders = feeders = []
        addedHeader = False
        for user, messageFactory in recipients:
            try:
                message = messageFactory()
                messages.append(message)
                feeders.append(self._feeder(message))
                header = self.receivedHeader(helo, origin, [user])
                if header:
                    addedHeader = True
                    feeders[-1](header.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n")
            except SMTPServerError:
                self._abortMessages()
                raise
            except BaseException:
                self._log.failure("Unexpected error in starting a message")
                self._abortMessages()
                raise SMTPServerError(*_INTERNAL_ERROR) from None
        self._recipients = [user for user, _ in recipients]
        self._received = 0
        self._dataFailed = None
        self._firstContent = True
        self._addedHeader = addedHeader
        if self.noisy:
            self._log.info(
                "Receiving message from {sender} for {recipients}",
                sender=str(origin),
                recipients=[str(user) for user in self._recipients],
            )

    @staticmethod
    def _feeder(message):
        """
        @return: a function that hands whole CRLF-terminated lines to
            C{message}: all at once to an L{IMessageStream}, else one by one
            to its C{lineReceived}.
        """
        if IMessageStream.providedBy(message):
            return message.dataReceived
        lineReceived = message.lineReceived

        def feed(content: bytes) -> None:
            lines = content.split(b"\r\n")
            lines.pop()
            collections.deque(map(lineReceived, lines), 0)

        return feed

    def _dataInput(self, data: bytes) -> bytes:
        """
        Take message data in the C{DATA} or C{BDAT} state.

        @return: the input left over for the commands that follow.
        """
        unstuffer = self._unstuffer
        if self.mode == BDAT:
            take = min(self._chunkRemaining, len(data))
            self._chunkRemaining -= take
            data, rest = data[:take], data[take:]
            # RFC 3030: the message's size is the sum of its chunks.
            self._chunkOctets += take
            if self.maxMessageSize and self._chunkOctets > self.maxMessageSize and self._dataFailed is None:
                self._failData(SMTPServerError(552, "Message size exceeds fixed maximum message size", b"5.3.4"))
            self._content(unstuffer.feed(data))
            if self._chunkRemaining:
                return rest
            self.mode = COMMAND
            if self._chunkLast:
                self._content(unstuffer.close())
                self._endOfMessage()
            elif self._dataFailed is not None:
                self._failChunk()
            else:
                self.sendCode(250, b"%d octets received" % self._chunkSize, b"2.0.0")
            return rest
        self._content(unstuffer.feed(data))
        if not unstuffer.finished:
            return b""
        self.mode = COMMAND
        self._endOfMessage()
        return unstuffer.trailing

    def dataLineReceived(self, line: bytes) -> None:
        """
        Take one line of DATA input (without its CRLF), as if received.
        """
        self._input = line + b"\r\n" + self._input
        if not self._processing:
            self._processInput()

    state_DATA = dataLineReceived

    def _content(self, content: bytes) -> None:
        """
        Check message content and pass it on.
        """
        if self._dataFailed is not None:
            return
        unstuffer = self._unstuffer
        self._received += len(content)
        if unstuffer.lineTooLong:
            return self._failData(SMTPServerError(500, "Line too long", b"5.5.2"))
        if self.maxMessageSize and self._received > self.maxMessageSize:
            return self._failData(
                SMTPServerError(552, "Message size exceeds fixed maximum message size", b"5.3.4")
            )
        if unstuffer.sawBareNewline and self.bareNewlinePolicy is BareNewlinePolicy.REJECT:
            return self._failData(
                SMTPServerError(550, "Bare CR or LF in message data; lines must end with CRLF", b"5.5.2")
            )
        if not content:
            return
        if self._firstContent:
            self._firstContent = False
            if self._addedHeader and content[:2] != b"\r\n" and _headerLineRe.match(content) is None:
                # No header section: keep the body a body after the trace
                # header.
                content = b"\r\n" + content
        try:
            for feed in self._feeders:
                feed(content)
        except SMTPServerError as e:
            self._failData(e)
        except BaseException:
            self._log.failure("Unexpected error in a message's lineReceived")
            self._failData(SMTPServerError(*_INTERNAL_ERROR))

    def _failData(self, error: SMTPServerError) -> None:
        """
        Refuse the message being received: the messages are told and the
        rest of the data is read and thrown away; the reply goes out at its
        end.
        """
        self._dataFailed = error
        self._abortMessages(keep=True)

    def _abortMessages(self, keep: bool = False) -> None:
        messages, self._messages = self._messages, ([] if keep else None)
        self._feeders = ()
        for message in messages or ():
            try:
                message.connectionLost()
            except BaseException:
                self._log.failure("Unexpected error in a message's connectionLost")

    def _endOfMessage(self) -> None:
        """
        The message is complete: tell the messages, and reply when they
        have all answered.
        """
        self._unstuffer = None
        self._chunking = False
        if self._dataFailed is not None:
            error, self._dataFailed = self._dataFailed, None
            self._messages = None
            self._refuseMessage(error)
            return
        messages, self._messages = self._messages, None
        self._feeders = ()
        # (succeeded, result or Failure) per message, as DeferredList gives.
        outcomes = [None] * len(messages)

        def record(result, i: int) -> None:
            outcomes[i] = (not isinstance(result, Failure), result)

        waiting = []
        for i, message in enumerate(messages):
            try:
                result = message.eomReceived()
            except BaseException:
                result = Failure()
            if isinstance(result, defer.Deferred):
                result.addBoth(record, i)
                if outcomes[i] is None:
                    waiting.append(result)
            else:
                record(result, i)
        if waiting:
            done = defer.DeferredList(waiting)
            done.addCallback(lambda ignored: self._messageHandled(outcomes))
            self._wait(done)
            return
        # Every message has answered already: reply now.
        try:
            self._messageHandled(outcomes)
        except BaseException:
            self._internalError(Failure(), "replying to the end of a message")

    def _refuseMessage(self, error: SMTPServerError) -> None:
        """
        Reply to the end of a message that was refused while it came in.
        """
        self._replyError(error)

    def _messageHandled(self, resultList) -> None:
        """
        Reply to the end of data: C{250} if every message was handled (the
        first positive L{Reply} an C{eomReceived} fired with, as a queue
        naming its queue id; else C{250 2.0.0 Delivery in progress}); else
        the reply of the first refusal.
        """
        failures = [result for ok, result in resultList if not ok]
        if not failures:
            self._junkCount = 0
            chosen = [result for ok, result in resultList if isinstance(result, Reply) and result.isPositive]
            if chosen:
                self.sendCode(chosen[0].code, chosen[0].text, chosen[0].status)
            else:
                self.sendCode(250, b"Delivery in progress", b"2.0.0")
            return
        for failure in failures:
            if not failure.check(SMTPServerError):
                self._log.failure("Unexpected error in a message's eomReceived", failure)
        first = failures[0]
        if first.check(SMTPServerError):
            self._replyError(first.value)
        elif len(resultList) > 1:
            self.sendCode(
                451,
                b"Could not send e-mail (%d failures out of %d recipients)" % (len(failures), len(resultList)),
                b"4.3.0",
            )
        else:
            self.sendCode(*_INTERNAL_ERROR)

    # -- cred -------------------------------------------------------------

    def _cbAnonymousAuthentication(self, result) -> None:
        """
        Keep the avatar of a cred login: an L{IMessageDeliveryFactory} or
        an L{IMessageDelivery}.
        """
        iface, avatar, logout = result
        if self._onLogout is not None:
            # Leaving the avatar of an earlier login.
            previous, self._onLogout = self._onLogout, None
            previous()
        if issubclass(iface, IMessageDeliveryFactory):
            self.deliveryFactory, self.delivery = avatar, None
        elif issubclass(iface, IMessageDelivery):
            self.deliveryFactory, self.delivery = None, avatar
        else:
            raise RuntimeError(f"{iface.__name__} is not a supported interface")
        self._onLogout = logout
        self.challenger = None

    # -- overridable ------------------------------------------------------

    def validateFrom(self, helo, origin):
        """
        Decide whether to accept mail from a sender.  By default, ask the
        delivery (from C{deliveryFactory}, C{delivery}, or an anonymous
        login to the C{portal}); without one, refuse.

        @param helo: C{(HELO argument, client address)}.
        @param origin: the sender.
        @type origin: L{Address}
        @return: C{origin}, or a C{Deferred} firing with it.
        @raise SMTPBadSender: to refuse it.
        """
        delivery = self._senderDelivery()
        if delivery is not None:
            return defer.maybeDeferred(delivery.validateFrom, helo, origin)
        return self._anonymousValidateFrom(helo, origin)

    def _senderDelivery(self):
        """
        @return: the delivery for the next message (a new one from the
            C{deliveryFactory}), or C{None}.
        """
        if self.deliveryFactory is not None:
            self.delivery = self.deliveryFactory.getMessageDelivery()
        return self.delivery

    def _anonymousValidateFrom(self, helo, origin):
        """
        Without a delivery: log in anonymously to the C{portal} for one,
        then ask it; without a portal, refuse.
        """
        if self.portal is not None:
            login = self.portal.login(credentials.Anonymous(), None, IMessageDeliveryFactory, IMessageDelivery)

            def refused(failure):
                if failure.check(UnauthorizedLogin):
                    raise SMTPBadSender(origin)
                if failure.check(UnhandledCredentials):
                    # No anonymous access: RFC 4954 section 6.
                    raise SMTPServerError(530, "Authentication required", b"5.7.0")
                return failure

            login.addCallbacks(self._cbAnonymousAuthentication, refused)
            login.addCallback(lambda ignored: self.validateFrom(helo, origin))
            return login
        raise SMTPBadSender(origin)

    def validateTo(self, user):
        """
        Decide whether to accept mail for a recipient.  By default, ask the
        delivery; without one, refuse.

        @param user: the recipient.
        @type user: L{User}
        @return: a message factory, or a C{Deferred} firing with one.
        @raise SMTPBadRcpt: to refuse it.
        """
        if self.delivery is not None:
            return self.delivery.validateTo(user)
        raise SMTPBadRcpt(user)

    def receivedHeader(self, helo, origin, recipients):
        """
        Make the C{Received:} trace header (RFC 5321 section 4.4) of a
        copy of the message.  By default, the delivery's, or the server's
        own: C{from} the client's name and address, C{by} this host,
        C{with} the protocol (RFC 3848), C{for} the recipient when there is
        one.

        @return: the header, or C{None}.
        """
        if self.delivery is not None:
            return self.delivery.receivedHeader(helo, origin, recipients)
        return self._traceHeader(helo, recipients)

    def _traceHeader(self, helo, recipients) -> bytes:
        name, address = helo
        peer = address if address == b"unix" else b"[" + (b"IPv6:" + address if b":" in address else address) + b"]"
        lines = [
            b"Received: from " + (name or b"unknown") + b" (" + peer + b")",
            b"\tby " + self.host + b" (mailproto " + __version__.encode("ascii") + b") with " + self._withProtocol(),
        ]
        if len(recipients) == 1:
            lines.append(b"\tfor " + quoteaddr(recipients[0]) + b";")
        else:
            lines[-1] += b";"
        lines.append(b"\t" + rfc822date())
        return b"\r\n".join(lines)

    def _withProtocol(self) -> bytes:
        return self._protocolName


class ESMTP(SMTP):
    """
    An ESMTP server: L{SMTP} plus EHLO (RFC 5321) and the extensions
    PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
    (RFC 6531), DSN (RFC 3461), ENHANCEDSTATUSCODES (RFC 2034) and
    CHUNKING (RFC 3030).

    With a TLS context (C{contextFactory}), STARTTLS (RFC 3207); with a
    C{portal} and C{challengers}, AUTH (RFC 4954).

    STARTTLS: after C{220}, input the client sent with the command is
    thrown away (it came in plaintext and would otherwise be read as if
    over TLS), and the session starts over: EHLO again, no sender, no
    recipients, no authentication.  STARTTLS is then no longer offered.

    AUTH: PLAIN and LOGIN send the password itself, so on a plaintext
    connection they are neither offered nor accepted (C{538 5.7.11})
    unless C{allowPlaintextAuth}.  Each failure is answered more slowly
    (C{authFailureDelay} seconds times the failures so far); after
    C{maxAuthFailures} on one connection the server says C{421} and hangs
    up, and C{authFailures} (shared by the factory's connections) refuses
    AUTH to an address with too many recent failures.

    @ivar challengers: SASL mechanism names mapped to
        C{IChallengeResponse} credential classes.
    @ivar ctx: the TLS context factory for STARTTLS, if any.
    @ivar startedTLS: whether the connection is encrypted (after
        STARTTLS, or from the start on an implicit-TLS listener).
    @ivar authenticated: whether the client has authenticated.
    @ivar authenticatedUser: the user name it authenticated as.
    @ivar allowPlaintextAuth: whether PLAIN and LOGIN may be used without
        TLS.
    @ivar maxAuthFailures: failed AUTH attempts allowed per connection.
    @ivar authFailureDelay: seconds of delay added per failed attempt.
    @ivar authFailures: an L{AuthFailures} shared between connections, or
        C{None}.
    @ivar requireTLS: whether the delivery honours REQUIRETLS (RFC 8689):
        it relays a message with C{MAIL FROM:<...> REQUIRETLS} only over
        TLS, to servers that offer REQUIRETLS.  Then, on a session under
        TLS (after STARTTLS, or on an implicit-TLS listener), EHLO offers
        REQUIRETLS and MAIL takes it; on a session without TLS it is not
        offered, and MAIL with it gets C{530 5.7.10}.  Off by default: a
        delivery that cannot keep the promise must not make it, and MAIL
        with REQUIRETLS gets C{555 5.5.4}, as any parameter not offered.
    """

    ctx = None
    canStartTLS = False
    startedTLS = False
    authenticated = False
    authenticatedUser = None
    challenger = None
    allowPlaintextAuth = False
    maxAuthFailures = 3
    authFailureDelay = 1.0
    authFailures = None
    requireTLS = False
    _delayedAuthReply = None
    _configuredDelivery = (None, None)
    _parameterAllowance = 1024

    def __init__(self, chal=None, contextFactory=None) -> None:
        """
        @param chal: see L{ESMTP.challengers}.
        @param contextFactory: see L{ESMTP.ctx}.
        """
        SMTP.__init__(self)
        self.challengers = {} if chal is None else chal
        self.ctx = contextFactory
        self.authenticated = False
        self._authFailureCount = 0
        self._authCounted = False

    def connectionMade(self) -> None:
        SMTP.connectionMade(self)
        transport = self.transport
        self.startedTLS = ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport)
        self.canStartTLS = self.ctx is not None and ITLSTransport.providedBy(transport) and not self.startedTLS
        # What the factory configured, as opposed to what a login chose.
        self._configuredDelivery = (self.delivery, self.deliveryFactory)

    def greeting(self) -> bytes:
        return SMTP.greeting(self) + b" ESMTP"

    def lookupMethod(self, command):
        """
        @return: C{do_<VERB>}, else C{ext_<VERB>}, else C{None}.
        """
        method = SMTP.lookupMethod(self, command)
        if method is None:
            if isinstance(command, bytes):
                command = command.decode("ascii", "replace")
            method = getattr(self, "ext_" + command.upper(), None)
        return method

    def extensions(self) -> dict:
        """
        The service extensions offered after EHLO.

        @return: EHLO keywords mapped to their parameters (a list of
            C{bytes}) or C{None}.
        """
        extensions = {
            b"PIPELINING": None,
            b"SIZE": [b"%d" % self.maxMessageSize],
            b"8BITMIME": None,
            b"SMTPUTF8": None,
            b"DSN": None,
            b"ENHANCEDSTATUSCODES": None,
            b"CHUNKING": None,
        }
        if self.requireTLS and self.startedTLS:
            extensions[b"REQUIRETLS"] = None
        if self.canStartTLS and not self.startedTLS:
            extensions[b"STARTTLS"] = None
        extensions[b"AUTH"] = self._mechanisms()
        return extensions

    def _mechanisms(self) -> list[bytes]:
        """
        @return: the SASL mechanisms this connection may use now.
        """
        if self.portal is None:
            return []
        plaintextOK = self.startedTLS or self.allowPlaintextAuth
        return [name for name in self.challengers if plaintextOK or name.upper() not in _PLAINTEXT_MECHANISMS]

    def listExtensions(self) -> bytes:
        """
        @return: the EHLO reply's lines after the first, LF-separated.
        """
        lines = []
        for keyword, params in self.extensions().items():
            if params is None:
                lines.append(keyword)
            elif params:
                # An extension with an empty parameter list is left out.
                lines.append(b" ".join([keyword, *params]))
        return b"\n".join(lines)

    def do_EHLO(self, rest: bytes) -> None:
        name = self._clientName(rest, "EHLO")
        if name is None:
            return
        self._ehlo(name)

    def _ehlo(self, name: bytes) -> None:
        self._startSession(name, extended=True)
        listed = self.listExtensions()
        self._sendPlain(250, self.host + b" Hello " + self._helo[1] + b", nice to meet you\n" + listed)
        self._advertised = {line.split(b" ", 1)[0].upper(): line for line in listed.splitlines()}
        self._enhanced = b"ENHANCEDSTATUSCODES" in self._advertised

    def do_BDAT(self, rest: bytes) -> None:
        """
        One chunk of a message (RFC 3030).  The chunk is read even when the
        command is refused, so that its octets are never taken as commands.
        """
        try:
            size, last = parseBdat(rest)
        except SMTPServerError as e:
            # Where the chunk ends cannot be known: nothing after this can
            # be trusted to be a command.
            self._replyError(e)
            self._hangUp(421, self.host + b" Cannot find the end of the BDAT chunk, closing connection", b"4.5.0")
            return
        self._chunkSize = size
        self._chunkRemaining = size
        self._chunkLast = last
        if b"CHUNKING" not in self._advertised:
            self._skipChunk(SMTPServerError(503, "Send EHLO first; CHUNKING was not offered", b"5.5.1"))
            return
        if not self._chunking:
            if self._from is None or not self._to:
                self._skipChunk(SMTPServerError(503, "Must have valid receiver and originator", b"5.5.1"))
                return
            try:
                self._startMessages()
            except SMTPServerError as e:
                self._skipChunk(e)
                return
            self._chunking = True
            self._chunkOctets = 0
            self._unstuffer = Unstuffer(self.bareNewlinePolicy, self.maxLineLength, dotted=False)
        self.mode = BDAT
        if size == 0:
            self._dataInput(b"")

    def _skipChunk(self, error: SMTPServerError) -> None:
        """
        Read the chunk of a refused BDAT and throw it away, then send
        C{error}.
        """
        self._chunking = True
        self._unstuffer = Unstuffer(self.bareNewlinePolicy, self.maxLineLength, dotted=False)
        self._messages = []
        self._dataFailed = error
        self._chunkLast = False  # one reply, at the end of this chunk
        self.mode = BDAT
        if self._chunkRemaining == 0:
            self._dataInput(b"")

    def _failChunk(self) -> None:
        """
        A chunk of a refused message has been read: reply, and end the
        transaction.
        """
        error, self._dataFailed = self._dataFailed, None
        self._unstuffer = None
        self._messages = None
        self._chunking = False
        self._replyError(error)

    # -- STARTTLS -----------------------------------------------------------

    def ext_STARTTLS(self, rest: bytes) -> None:
        noArgument(rest, "STARTTLS")
        if self.startedTLS:
            raise SMTPServerError(503, "TLS already active", b"5.5.1")
        if not self.canStartTLS or b"STARTTLS" not in self._advertised:
            raise SMTPServerError(454, "TLS not available", b"4.7.0")
        if self._input:
            # Sent before the handshake, in plaintext: an injection attempt
            # (CVE-2011-0411 class).  None of it is executed.
            self._log.warn(
                "SMTP client {peer} sent {count} octets after STARTTLS; thrown away",
                peer=self._peerText(),
                count=len(self._input),
            )
            self._input = b""
        self.sendCode(220, b"Ready to start TLS", b"2.0.0")
        # The 220 goes out in the clear, before the handshake.
        self._flushReplies()
        self.transport.startTLS(self.ctx)
        self.startedTLS = True
        # RFC 3207 section 4.2: forget everything learnt before TLS.
        self._resetTransaction()
        self._helo = (None, self._helo[1])
        self._enhanced = False
        self._advertised = {}
        self._logout()
        self.delivery, self.deliveryFactory = self._configuredDelivery
        self.authenticated = False
        self.authenticatedUser = None

    # -- AUTH ---------------------------------------------------------------

    def ext_AUTH(self, rest: bytes):
        if self.authenticated:
            raise SMTPServerError(503, "Already authenticated", b"5.5.1")
        if b"AUTH" not in self._advertised:
            raise SMTPServerError(503, "Send EHLO first; AUTH was not offered", b"5.5.1")
        if self._from is not None or self._chunking:
            raise SMTPServerError(503, "AUTH is not allowed during a mail transaction", b"5.5.1")
        mechanism, initial = parseAuth(rest)
        if mechanism not in {name.upper() for name in self.challengers} or self.portal is None:
            raise SMTPServerError(504, "Unrecognized authentication type", b"5.5.4")
        if mechanism in _PLAINTEXT_MECHANISMS and not (self.startedTLS or self.allowPlaintextAuth):
            raise SMTPServerError(538, "Encryption required for requested authentication mechanism", b"5.7.11")
        if self._authBlocked():
            return None
        factory = {name.upper(): value for name, value in self.challengers.items()}[mechanism]
        self.challenger = factory()
        self.mode = AUTH
        if initial is None:
            self._challenge()
            return None
        # The initial response answers the first challenge, unsent.
        self.challenger.getChallenge()
        return self.state_AUTH(b"" if initial == b"=" else initial)

    def _challenge(self) -> None:
        challenge = self.challenger.getChallenge()
        self.sendCode(334, base64.b64encode(challenge) or b"")

    def state_AUTH(self, response: bytes):
        """
        One response of the client in a SASL exchange.
        """
        if response == b"*":
            return self._endAuth(SMTPServerError(501, "Authentication aborted", b"5.7.0"))
        try:
            decoded = base64.b64decode(response, validate=True) if response else b""
        except (binascii.Error, ValueError):
            return self._endAuth(SMTPServerError(501, "Cannot decode the response (not base64)", b"5.5.2"))
        try:
            self.challenger.setResponse(decoded)
            more = self.challenger.moreChallenges()
        except UnauthorizedLogin:
            return self._authFailed()
        except (ValueError, TypeError, IndexError):
            return self._endAuth(SMTPServerError(501, "Malformed authentication response", b"5.5.2"))
        if more:
            self._challenge()
            return None
        self.mode = COMMAND
        if self._authBlocked():
            # Other connections from the address used up its attempts
            # while this exchange went on.
            self.challenger = None
            return None
        if self.authFailures is not None:
            self.authFailures.attempt(self._helo[1])
            self._authCounted = True
        login = self.portal.login(self.challenger, None, IMessageDeliveryFactory, IMessageDelivery)
        login.addCallbacks(self._cbAuthenticated, self._ebAuthenticated)
        return login

    def _authBlocked(self) -> bool:
        """
        @return: whether the client's address has used up its AUTH
            attempts, in which case the server has hung up.
        """
        if self.authFailures is None or not self.authFailures.blocked(self._helo[1]):
            return False
        self._log.info("AUTH refused to {peer}: too many failures", peer=self._peerText())
        self.limitExceeded("auth-failures")
        self._hangUp(421, self.host + b" Too many failed authentications, try later", b"4.7.0")
        return True

    def _endAuth(self, error: SMTPServerError) -> None:
        self.mode = COMMAND
        self.challenger = None
        self._replyError(error)

    def _forgiveAttempt(self) -> None:
        if self._authCounted:
            self._authCounted = False
            self.authFailures.forgive(self._helo[1])

    def _cbAuthenticated(self, loginInfo) -> None:
        self._forgiveAttempt()
        user = getattr(self.challenger, "username", None)
        SMTP._cbAnonymousAuthentication(self, loginInfo)
        self.authenticated = True
        self.authenticatedUser = user
        self._log.info("SMTP client {peer} authenticated as {user}", peer=self._peerText(), user=_printable(user))
        self.sendCode(235, b"Authentication successful", b"2.7.0")

    def _ebAuthenticated(self, reason: Failure):
        if reason.check(UnauthorizedLogin):
            return self._authFailed()
        self._forgiveAttempt()
        self._log.failure("Authentication failed unexpectedly", reason)
        self.challenger = None
        self.sendCode(454, b"Temporary authentication failure", b"4.7.0")
        return None

    def _authFailed(self):
        """
        A failed login: answer C{535} after a delay that grows with each
        failure; after too many, hang up.
        """
        self.mode = COMMAND
        self.challenger = None
        self._authFailureCount += 1
        if self._authCounted:
            self._authCounted = False
        elif self.authFailures is not None:
            self.authFailures.attempt(self._helo[1])
        self._log.info(
            "SMTP client {peer} failed to authenticate ({count})", peer=self._peerText(), count=self._authFailureCount
        )
        delay = self.authFailureDelay * self._authFailureCount
        done = defer.Deferred()

        def answer() -> None:
            if self._authFailureCount >= self.maxAuthFailures:
                self.limitExceeded("auth-failures")
                self._hangUp(421, self.host + b" Too many failed authentications", b"4.7.0")
            else:
                self.sendCode(535, b"Authentication credentials invalid", b"5.7.8")
            done.callback(None)

        if delay > 0:
            self._delayedAuthReply = self.callLater(delay, answer)
        else:
            answer()
        return done

    def connectionLost(self, reason=None) -> None:
        delayed, self._delayedAuthReply = self._delayedAuthReply, None
        if delayed is not None and delayed.active():
            delayed.cancel()
        SMTP.connectionLost(self, reason)

    def _logout(self) -> None:
        if self._onLogout is not None:
            logout, self._onLogout = self._onLogout, None
            logout()

    def _knownParameters(self, which: int) -> frozenset:
        """
        @return: as for L{SMTP._knownParameters}; and, for MAIL after EHLO
            on a server that honours REQUIRETLS but has not offered it (no
            TLS yet), C{REQUIRETLS} too, so that MAIL with it is told why
            it is refused (L{SMTP.do_MAIL}).
        """
        advertised = tuple(self._advertised)
        if which == 0 and self.requireTLS and advertised and b"REQUIRETLS" not in self._advertised:
            advertised += (b"REQUIRETLS",)
        return _knownParameters(advertised)[which]

    def do_MAIL(self, rest: bytes):
        result = SMTP.do_MAIL(self, rest)
        mail = self._mail
        if mail is not None and mail.auth is not None and not self.authenticated:
            # RFC 4954 section 5: AUTH= from an unauthenticated client is
            # not believed.
            self._mail = dataclasses.replace(mail, auth=b"<>")
        return result

    def _withProtocol(self) -> bytes:
        name = self._protocolName
        if self.startedTLS:
            name += b"S"
        if self.authenticated:
            name += b"A"
        return name


class LMTP(ESMTP):
    """
    An LMTP server (RFC 2033): LHLO instead of HELO and EHLO, and after the
    message one reply per accepted recipient, in order.
    """

    _protocolName = b"LMTP"

    def greeting(self) -> bytes:
        return self.host + b" LMTP server ready"

    do_HELO = None
    do_EHLO = None

    def do_LHLO(self, rest: bytes) -> None:
        name = self._clientName(rest, "LHLO")
        if name is None:
            return
        self._ehlo(name)

    def _startSession(self, name: bytes, extended: bool) -> None:
        SMTP._startSession(self, name, extended=False)

    def _refuseMessage(self, error: SMTPServerError) -> None:
        for user in self._recipients:
            self._replyError(error)

    def _messageHandled(self, resultList) -> None:
        """
        Reply once per recipient, in the order they were accepted, in
        one write.
        """
        with self._repliesTogether():
            for user, (ok, result) in zip(self._recipients, resultList):
                if ok:
                    self._junkCount = 0
                    self.sendCode(250, quoteaddr(user) + b" Delivered", b"2.1.5")
                elif result.check(SMTPServerError):
                    self._replyError(result.value)
                else:
                    self._log.failure("Unexpected error in a message's eomReceived", result)
                    self.sendCode(*_INTERNAL_ERROR)


class SMTPFactory(ServerFactory):
    """
    Makes L{SMTP} (or C{protocol}) servers, and gives each the limits and
    the delivery configured here.

    @ivar domain: the server's name (see L{SMTP.host}).
    @ivar timeout: see L{SMTP.timeout}.
    @ivar portal: a cred portal whose avatars are L{IMessageDelivery} or
        L{IMessageDeliveryFactory} providers.
    """

    protocol = SMTP
    timeout = 600
    portal = None
    delivery = None
    deliveryFactory = None
    clock = None

    maxCommandLength = SMTP.maxCommandLength
    maxLineLength = SMTP.maxLineLength
    maxMessageSize = SMTP.maxMessageSize
    maxRecipients = SMTP.maxRecipients
    maxErrors = SMTP.maxErrors
    bareNewlinePolicy = SMTP.bareNewlinePolicy
    commandDeadline = SMTP.commandDeadline
    minDataRate = SMTP.minDataRate
    maxJunkCommands = SMTP.maxJunkCommands
    greetingDelay = SMTP.greetingDelay

    _LIMITS = (
        "timeout",
        "maxCommandLength",
        "maxLineLength",
        "maxMessageSize",
        "maxRecipients",
        "maxErrors",
        "bareNewlinePolicy",
        "commandDeadline",
        "minDataRate",
        "maxJunkCommands",
        "greetingDelay",
    )

    def __init__(
        self, portal=None, *, delivery=None, deliveryFactory=None, domain=None, clock=None, **limits
    ) -> None:
        """
        @param portal: see L{SMTPFactory.portal}.
        @param delivery: an L{IMessageDelivery} for every connection.
        @param deliveryFactory: an L{IMessageDeliveryFactory} for every
            connection.
        @param domain: see L{SMTPFactory.domain}.
        @param clock: the C{IReactorTime} for timeouts; the reactor if
            C{None}.
        @param limits: any of C{timeout}, C{maxCommandLength},
            C{maxLineLength}, C{maxMessageSize}, C{maxRecipients},
            C{maxErrors}, C{bareNewlinePolicy}, C{commandDeadline},
            C{minDataRate}, C{maxJunkCommands}, C{greetingDelay}; see
            L{SMTP}.
        @raise TypeError: for an unknown limit.
        """
        self.portal = portal
        self.delivery = delivery
        self.deliveryFactory = deliveryFactory
        self.clock = clock
        if domain is not None:
            self.domain = domain
        for name, value in limits.items():
            if name not in self._LIMITS:
                raise TypeError(f"unknown SMTPFactory limit: {name}")
            setattr(self, name, value)

    _domain = None

    @property
    def domain(self) -> bytes:
        """
        The server's name; the machine's host name unless set.
        """
        return self._domain or localHostname()

    @domain.setter
    def domain(self, value) -> None:
        self._domain = value

    def buildProtocol(self, addr):
        p = ServerFactory.buildProtocol(self, addr)
        p.portal = self.portal
        p.host = self.domain
        if self.delivery is not None:
            p.delivery = self.delivery
        if self.deliveryFactory is not None:
            p.deliveryFactory = self.deliveryFactory
        for name in self._LIMITS:
            setattr(p, name, getattr(self, name))
        if self.clock is not None:
            p.callLater = self.clock.callLater
        return p


class ESMTPFactory(SMTPFactory):
    """
    Makes L{ESMTP} servers.

    @ivar challengers: passed to each L{ESMTP} (see L{ESMTP.challengers}).
    @ivar contextFactory: the TLS context factory for STARTTLS, if any.
    @ivar requireTLS: passed to each L{ESMTP} (see L{ESMTP.requireTLS}).
    """

    protocol = ESMTP
    challengers = None
    contextFactory = None
    allowPlaintextAuth = False
    maxAuthFailures = ESMTP.maxAuthFailures
    authFailureDelay = ESMTP.authFailureDelay
    requireTLS = False

    def __init__(
        self,
        portal=None,
        *,
        challengers=None,
        contextFactory=None,
        allowPlaintextAuth=False,
        maxAuthFailures=ESMTP.maxAuthFailures,
        authFailureDelay=ESMTP.authFailureDelay,
        authFailures=None,
        requireTLS=False,
        **kw,
    ) -> None:
        """
        @param portal: a cred portal; with it, AUTH is offered, and its
            avatars (L{IMessageDelivery} or L{IMessageDeliveryFactory})
            deliver the mail of authenticated clients.  Unauthenticated
            clients get an anonymous login, or C{delivery} if given, or
            C{530 5.7.0 Authentication required}.
        @param challengers: SASL mechanisms by name, each a callable making
            an C{IChallengeResponse}; by default PLAIN and LOGIN, and
            CRAM-MD5 when the portal can check hashed-password credentials
            (which needs the password in the clear on the server).
        @param contextFactory: TLS options for STARTTLS (see
            L{mailproto._tls.loadServerOptions}).
        @param allowPlaintextAuth: see L{ESMTP.allowPlaintextAuth}.
        @param maxAuthFailures: see L{ESMTP.maxAuthFailures}.
        @param authFailureDelay: see L{ESMTP.authFailureDelay}.
        @param authFailures: an L{AuthFailures}; one (10 failures per
            address in 10 minutes) if C{None}.
        @param requireTLS: see L{ESMTP.requireTLS}; true only when the
            delivery honours REQUIRETLS (RFC 8689).
        @param kw: as for L{SMTPFactory}.
        """
        SMTPFactory.__init__(self, portal, **kw)
        self.challengers = challengers
        self.contextFactory = contextFactory
        self.allowPlaintextAuth = allowPlaintextAuth
        self.maxAuthFailures = maxAuthFailures
        self.authFailureDelay = authFailureDelay
        self.authFailures = authFailures if authFailures is not None else AuthFailures(clock=self.clock)
        self.requireTLS = requireTLS

    def defaultChallengers(self) -> dict:
        """
        @return: the SASL mechanisms the portal can check.
        """
        mechanisms = {b"PLAIN": PLAINCredentials, b"LOGIN": LOGINCredentials}
        if self.portal is not None and credentials.IUsernameHashedPassword in self.portal.listCredentialsInterfaces():
            mechanisms = {b"CRAM-MD5": functools.partial(credentials.CramMD5Credentials, self.domain), **mechanisms}
        return mechanisms

    def buildProtocol(self, addr):
        p = SMTPFactory.buildProtocol(self, addr)
        if self.challengers is not None:
            p.challengers = dict(self.challengers)
        elif self.portal is not None:
            p.challengers = self.defaultChallengers()
        if self.contextFactory is not None:
            p.ctx = self.contextFactory
        p.allowPlaintextAuth = self.allowPlaintextAuth
        p.maxAuthFailures = self.maxAuthFailures
        p.authFailureDelay = self.authFailureDelay
        p.authFailures = self.authFailures
        p.requireTLS = self.requireTLS
        return p


class LMTPFactory(ESMTPFactory):
    """
    Makes L{LMTP} servers, for TCP or UNIX sockets.
    """

    protocol = LMTP
