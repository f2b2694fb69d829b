# -*- test-case-name: mailproto.test.test_session -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
A command-level SMTP, ESMTP and LMTP client: one method per command, each
returning a L{Deferred} that fires with the server's L{Reply}, for people
used to Python's C{smtplib} or to pymail.  L{mailproto.client} is its
public face; C{docs/client.rst} is the guide.

Unlike L{mailproto._client.SMTPClient}, which runs a whole transaction by
itself from C{smtpState_*} states, an L{SMTPSession} does what it is told,
one command at a time, and reports each reply:

  - a reply in the class the command expects (2xx; C{354} to DATA; C{334}
    during AUTH) fires the L{Deferred} with the L{Reply};
  - a 4xx reply fails it with L{SMTPTransientError}, a 5xx with
    L{SMTPPermanentError}; both carry the L{Reply} and the command;
  - C{421} (the server is closing) fails it with L{SMTPTransientError}
    marked fatal, and the session closes;
  - anything else breaks the protocol (L{SMTPProtocolError}) and closes
    the connection: a reply that does not parse, a reply in a class the
    command cannot have (a 2xx to DATA, a 354 to MAIL), a reply when no
    command awaits one, and more than a reply per command (the session
    never pipelines, so whatever follows the reply it awaits in the same
    read was sent before the server saw another command).

Each command waits for its reply C{timeout} seconds, counted from the
command and never restarted by a line: a reply trickled line by line is
cut off too (L{SMTPTimeoutError}; the connection is aborted).  A lost
connection fails what awaits a reply with L{SMTPConnectionLost}, and every
call after it too.

Only one command may await its reply at a time; a call made while another
awaits, or in the wrong phase (C{send()} outside DATA, C{mail()} inside
it), fails with L{SMTPSessionStateError} and sends nothing.
"""

from __future__ import annotations

import base64
import binascii

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.util import LineLog

from mailproto._address import Address
from mailproto._auth import CramMD5ClientAuthenticator, LOGINAuthenticator, PLAINAuthenticator
from mailproto._commands import MailFrom, RcptTo, formatMailFrom, formatRcptTo
from mailproto._data import DotStuffer
from mailproto._errors import (
    AuthenticationError,
    AUTHRequiredError,
    SMTPClientError,
    SMTPConnectError,
    SMTPProtocolError,
    SMTPTimeoutError,
    SMTPTLSError,
    TLSRequiredError,
)
from mailproto._extensions import Extensions
from mailproto._readahead import CHUNK_SIZE, ReadAheadProducer
from mailproto._replies import Reply, ReplyParser, ReplySyntaxError
from mailproto.interfaces import IClientAuthentication


#: The default seconds a reply may take (RFC 5321 section 4.5.3.2 asks
#: for 5 minutes for most commands, 10 after the end of data).
DEFAULT_TIMEOUT = 300.0

# Mechanisms login() chooses from, in order (as sendmail() does).
_MECHANISMS = (CramMD5ClientAuthenticator, LOGINAuthenticator, PLAINAuthenticator)


# -- errors ----------------------------------------------------------------


class SMTPReplyError(SMTPClientError):
    """
    The server refused a command: its reply was 4xx or 5xx.

    @ivar reply: the reply.
    @type reply: L{Reply}
    @ivar command: the command refused, such as C{b"RCPT"}, C{b"DATA"}, or
        C{b"end of data"}; credentials are never shown.
    """

    def __init__(self, command: bytes, reply: Reply, log: bytes | None = None, isFatal: bool | None = None) -> None:
        """
        @param command: see L{SMTPReplyError.command}.
        @param reply: see L{SMTPReplyError.reply}.
        @param log: the last lines of the exchange.
        @param isFatal: whether the session is over (C{421}).
        """
        SMTPClientError.__init__(self, reply.code, reply.wireText, log, isFatal=isFatal, status=reply.status)
        self.command = command
        self.reply = reply

    def __str__(self) -> str:
        return f"{self.command.decode('ascii', 'replace')}: {self.reply.summary()}"


class SMTPTransientError(SMTPReplyError):
    """
    A 4xx reply: the command may succeed later (C{retry} is true).  A
    C{421} also ends the session (C{isFatal} is true).
    """

    defaultRetry = True


class SMTPPermanentError(SMTPReplyError):
    """
    A 5xx reply: the command will not succeed as it is.
    """

    defaultRetry = False


class SMTPConnectionLost(SMTPConnectError):
    """
    The connection closed (or was closed) before the reply came, or before
    the call.  Fatal; worth a retry.
    """


class SMTPSessionStateError(SMTPClientError):
    """
    The call does not fit the session's state (another command awaits its
    reply; C{send()} outside DATA; C{mail()} inside it...).  Nothing was
    sent.
    """


def _replyError(command: bytes, reply: Reply, log: bytes | None) -> SMTPReplyError:
    errorClass = SMTPTransientError if reply.isTransient else SMTPPermanentError
    return errorClass(command, reply, log, isFatal=True if reply.code == 421 else None)


def _toBytes(value, encoding: str = "utf-8") -> bytes:
    return value.encode(encoding) if isinstance(value, str) else bytes(value)


def _hostBytes(name) -> bytes:
    if not isinstance(name, str):
        return bytes(name)
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        return name.encode("idna")


def _noLineBreak(value: bytes, what: str) -> bytes:
    if b"\r" in value or b"\n" in value:
        raise ValueError(f"CR or LF in {what}: {value!r}")
    return value


# -- the protocol ----------------------------------------------------------


class _Command:
    """
    A command awaiting its reply (or, for LMTP's end of data, replies).

    @ivar verb: what the command was, for errors and the log.
    @ivar accept: the reply classes (first digit) that answer it well.
    @ivar exact: the one code that answers it well, or C{None}.
    @ivar refusalsAsReplies: whether 4xx and 5xx fire the L{Deferred} as
        replies instead of failing it.
    @ivar count: how many replies it gets; with more than one, the
        L{Deferred} fires with their list.
    """

    __slots__ = ("verb", "deferred", "accept", "exact", "refusalsAsReplies", "count", "replies")

    def __init__(self, verb, accept=(2,), exact=None, refusalsAsReplies=False, count=1) -> None:
        self.verb = verb
        self.deferred = defer.Deferred()
        self.accept = accept
        self.exact = exact
        self.refusalsAsReplies = refusalsAsReplies
        self.count = count
        self.replies = []


class _FileProducer(ReadAheadProducer):
    """
    Streams a file into DATA for a session, dot-stuffed, the end of the
    data in the same write as the last chunk.
    """

    def __init__(self, session: SMTPSession, file) -> None:
        stuffer = session._stuffer
        ReadAheadProducer.__init__(self, session.transport, file, stuffer.feed, stuffer.finish, CHUNK_SIZE)
        self.session = session

    def deliver(self, out: bytes, last: bool) -> None:
        if last:
            self.session._endOfDataFromFile(out)
        else:
            self.session.transport.write(out)

    def failed(self, failure) -> None:
        self.session._fileFailed(failure.value)


class SMTPSession(Protocol):
    """
    One SMTP (or LMTP) connection, driven one command at a time.

    Make one with L{mailproto.client.connect} (or
    L{mailproto.client.connectEndpoint}); a session made by hand waits for
    the greeting in L{greeted}.

    @ivar greeting: the server's greeting, once it came.
    @type greeting: L{Reply} or C{None}
    @ivar extensions: what the server offered in its last EHLO (or LHLO)
        reply; empty before, after HELO and after STARTTLS.
    @type extensions: L{Extensions}
    @ivar hostname: the server's name, for checking its certificate on
        STARTTLS, or C{None}.
    @ivar timeout: seconds each reply may take, or C{None} for no limit.
    @ivar lmtp: whether this is LMTP (RFC 2033): the end of data gets a
        reply per accepted recipient.
    @ivar log: the last lines of the exchange (credentials hidden), given
        to errors as C{log}.
    @ivar _state: where the session is:
        - C{"connecting"}: no connection yet;
        - C{"greeting"}: connected, the greeting awaited;
        - C{"ready"}: commands may be sent;
        - C{"data"}: after C{354}; only L{send}, L{sendFile} and L{end};
        - C{"closed"}: the connection is closed or closing; every call
          fails with L{SMTPConnectionLost}.
    @ivar _pending: the L{_Command} awaiting its reply, or C{None}.
    @ivar _busy: whether a multi-command exchange (AUTH, a file being
        streamed) is under way, during which no other call may start.
    """

    _log = Logger()

    #: Octets in one reply line, and in one reply, the session will read.
    maxReplyLine = 8192
    maxReply = 65536

    def __init__(self, clock, *, timeout: float | None = DEFAULT_TIMEOUT, hostname=None, lmtp: bool = False) -> None:
        """
        @param clock: an C{IReactorTime} for the reply timeouts.
        @param timeout: see L{SMTPSession.timeout}.
        @param hostname: see L{SMTPSession.hostname}.
        @param lmtp: see L{SMTPSession.lmtp}.
        """
        self._clock = clock
        self.timeout = timeout
        self.hostname = hostname
        self.lmtp = lmtp
        self.greeting: Reply | None = None
        self.extensions = Extensions()
        self.log = LineLog(20)
        self.greeted = defer.Deferred()
        self._state = "connecting"
        self._pending: _Command | None = None
        self._busy = False
        self._timer = None
        self._input = b""
        self._replies = self._newParser()
        self._stuffer: DotStuffer | None = None
        self._producer: _FileProducer | None = None
        self._accepted = 0
        self._tls = False
        self._tlsUnconfirmed = False
        self._closedBecause = "the connection is closed"
        self._whenClosed: list[defer.Deferred] = []
        self._lost = False
        self._fileDone: defer.Deferred | None = None

    def _newParser(self) -> ReplyParser:
        return ReplyParser(enhanced=True, maxLineLength=self.maxReplyLine, maxReplyLength=self.maxReply)

    # -- what callers may look at -----------------------------------------

    @property
    def tls(self) -> bool:
        """
        Whether the connection is encrypted: implicit TLS, or after
        L{starttls}.
        """
        return self._tls

    @property
    def closed(self) -> bool:
        """
        Whether the connection is closed, or closing.
        """
        return self._state == "closed"

    def whenClosed(self) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with C{None} once the connection is
            closed (at once if it is).
        """
        if self._lost:
            return defer.succeed(None)
        d = defer.Deferred()
        self._whenClosed.append(d)
        return d

    # -- connection -------------------------------------------------------

    def connectionMade(self) -> None:
        self._tls = ISSLTransport.providedBy(self.transport)
        self._state = "greeting"
        self._pending = _Command(b"greeting", accept=(2,), exact=220)
        self._pending.deferred.addCallbacks(self._gotGreeting, self._noGreeting)
        self._startTimer()

    def _gotGreeting(self, reply: Reply) -> Reply:
        self.greeting = reply
        self._state = "ready"
        self.greeted.callback(reply)
        return reply

    def _noGreeting(self, failure):
        if self._state != "closed":
            self._close("the server refused the session in its greeting")
        self.greeted.errback(failure)
        return None

    def connectionLost(self, reason=None) -> None:
        self._lost = True
        self._cancelTimer()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.finished = True
        if self._state != "closed":
            self._closedBecause = "the server closed the connection"
            if reason is not None:
                self._closedBecause += f" ({reason.getErrorMessage()})"
        self._state = "closed"
        self._busy = False
        pending, self._pending = self._pending, None
        if pending is not None:
            if self._tlsUnconfirmed:
                error = SMTPTLSError(
                    -1, b"TLS did not come up: " + self._closedBecause.encode("utf-8"), self.log.str(), isFatal=True
                )
            else:
                error = SMTPConnectionLost(
                    -1, f"No reply to {pending.verb.decode('ascii', 'replace')}: {self._closedBecause}", self.log.str()
                )
            pending.deferred.errback(error)
        waiting, self._whenClosed = self._whenClosed, []
        for d in waiting:
            d.callback(None)

    def _close(self, why: str, abort: bool = False) -> None:
        """
        Close the connection ourselves.
        """
        if self._state != "closed":
            self._closedBecause = why
        self._state = "closed"
        self._cancelTimer()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()
        transport = self.transport
        if transport is None:
            return
        if abort and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            transport.loseConnection()

    # -- timeouts ---------------------------------------------------------

    def _startTimer(self) -> None:
        self._cancelTimer()
        if self.timeout is not None:
            self._timer = self._clock.callLater(self.timeout, self._timedOut)

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, None
        self._close(f"no reply within {self.timeout} seconds", abort=True)
        if pending is not None:
            verb = pending.verb.decode("ascii", "replace")
            pending.deferred.errback(
                SMTPTimeoutError(-1, f"No reply to {verb} within {self.timeout} seconds", self.log.str())
            )

    # -- replies ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Split the server's output into lines (CRLF; a bare LF ends a line
        too) and assemble replies.
        """
        self._input = self._input + data if self._input else data
        while self._input and self._state != "closed":
            end = self._input.find(b"\n")
            if end < 0:
                if len(self._input) > self.maxReplyLine + 1:
                    self._protocolError(b"Reply line too long")
                break
            line, self._input = self._input[:end], self._input[end + 1 :]
            if line[-1:] == b"\r":
                line = line[:-1]
            self._lineReceived(line)
        if self._state == "closed":
            self._input = b""

    def _lineReceived(self, line: bytes) -> None:
        self.log.append(b"<<< " + line)
        try:
            reply = self._replies.lineReceived(line)
        except ReplySyntaxError as e:
            self._protocolError(b"Invalid reply from the server: " + str(e).encode("utf-8", "replace"))
            return
        if reply is None:
            return
        self._tlsUnconfirmed = False
        pending = self._pending
        if pending is None:
            self._protocolError(b"Reply when no command awaits one: " + reply.summary(200).encode("utf-8"))
            return
        pending.replies.append(reply)
        if len(pending.replies) < pending.count:
            return
        # The command is answered.  Nothing is pipelined: anything after
        # its last reply was sent before the server saw another command.
        self._pending = None
        self._cancelTimer()
        if self._input:
            self._pending = pending
            self._protocolError(
                b"The server sent more than one reply to %s, after: %s" % (pending.verb, reply.summary(200).encode())
            )
            return
        self._answer(pending)

    def _answer(self, command: _Command) -> None:
        """
        Fire a command's L{Deferred} with its replies, or fail it.
        """
        replies = command.replies
        for reply in replies:
            klass = reply.code // 100
            if klass in (4, 5):
                continue
            if klass not in command.accept or (command.exact is not None and reply.code != command.exact):
                self._pending = command
                self._protocolError(b"Unexpected reply to %s: %s" % (command.verb, reply.summary(200).encode()))
                return
        fatal = [reply for reply in replies if reply.code == 421]
        if fatal:
            self._close("the server closed the session: " + fatal[0].summary(200))
            command.deferred.errback(_replyError(command.verb, fatal[0], self.log.str()))
            return
        if command.count == 1:
            reply = replies[0]
            if reply.code >= 400 and not command.refusalsAsReplies:
                command.deferred.errback(_replyError(command.verb, reply, self.log.str()))
            else:
                command.deferred.callback(reply)
        else:
            command.deferred.callback(list(replies))

    def _protocolError(self, message: bytes) -> None:
        """
        The server broke the protocol: fail what awaits a reply and close.
        """
        self._replies = self._newParser()
        pending, self._pending = self._pending, None
        self._close("the server broke the protocol: " + message.decode("utf-8", "replace"), abort=True)
        if pending is not None:
            pending.deferred.errback(SMTPProtocolError(-1, message, self.log.str()))
        else:
            self._log.warn("SMTP server broke the protocol: {message}", message=message)

    # -- sending ----------------------------------------------------------

    def _refusal(self, phase: str = "ready") -> SMTPClientError | None:
        """
        @param phase: the state the call needs.
        @return: why a call cannot be made now, or C{None} if it can.
        """
        if self._state == "closed":
            return SMTPConnectionLost(-1, f"The session is over: {self._closedBecause}", self.log.str())
        if self._pending is not None or self._busy:
            return SMTPSessionStateError(-1, "Another command awaits its reply", self.log.str())
        if self._state != phase:
            if self._state == "data":
                return SMTPSessionStateError(-1, "In DATA: send() the message, then end()", self.log.str())
            if phase == "data":
                return SMTPSessionStateError(-1, "Not in DATA: call data() first", self.log.str())
            return SMTPSessionStateError(-1, f"Not ready for commands ({self._state})", self.log.str())
        return None

    def _command(self, line: bytes, command: _Command, shown: bytes | None = None, raw: bool = False) -> defer.Deferred:
        """
        Send a command line (or, C{raw}, octets as they are) and await its
        reply.
        """
        self.log.append(b">>> " + (line if shown is None else shown))
        self._pending = command
        self._startTimer()
        self.transport.write(line if raw else line + b"\r\n")
        return command.deferred

    def _simple(self, line: bytes, **kw) -> defer.Deferred:
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        return self._command(line, _Command(line.split(b" ", 1)[0].upper(), **kw))

    # -- the commands -----------------------------------------------------

    def ehlo(self, name) -> defer.Deferred:
        """
        Send C{EHLO} (C{LHLO} for LMTP) and read the extensions offered
        into L{extensions}.

        @param name: the client's host name (or address literal, such as
            C{"[192.0.2.1]"}).
        @return: a L{Deferred} firing with the L{Reply}.
        """
        verb = b"LHLO " if self.lmtp else b"EHLO "
        return self._greet(verb, name, lambda reply: Extensions.fromReply(reply))

    def helo(self, name) -> defer.Deferred:
        """
        Send C{HELO}: plain SMTP, no extensions.

        @param name: the client's host name.
        @return: a L{Deferred} firing with the L{Reply}.
        """
        return self._greet(b"HELO ", name, lambda reply: Extensions())

    lhlo = ehlo

    def _greet(self, verb: bytes, name, extensions) -> defer.Deferred:
        try:
            name = _noLineBreak(_hostBytes(name), "a host name")
        except (ValueError, UnicodeError) as e:
            return defer.fail(e)

        def greeted(reply):
            self.extensions = extensions(reply)
            return reply

        return self._simple(verb + name).addCallback(greeted)

    def starttls(self, contextFactory=None) -> defer.Deferred:
        """
        Send C{STARTTLS} and, on C{220}, start TLS.  What the server
        offered before no longer counts (L{extensions} is emptied): say
        L{ehlo} again.

        @param contextFactory: the client TLS options; by default
            C{optionsForClientTLS(hostname)}, which checks that the
            server's certificate is valid for L{hostname}.
        @return: a L{Deferred} firing with the C{220} L{Reply}; a server
            that does not offer STARTTLS fails it with
            L{TLSRequiredError}, a failed handshake fails the next command
            with L{SMTPTLSError}.
        """
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        if self._tls:
            return defer.fail(SMTPSessionStateError(-1, "TLS is already on", self.log.str()))
        if b"STARTTLS" not in self.extensions:
            return defer.fail(TLSRequiredError(-1, b"The server does not offer STARTTLS", self.log.str()))
        if contextFactory is None:
            if self.hostname is None:
                return defer.fail(ValueError("No host name to check the certificate with: give a contextFactory"))
            contextFactory = optionsForClientTLS(_toBytes(self.hostname).decode("idna"))

        def start(reply):
            self.transport.startTLS(contextFactory)
            self._tls = True
            self._tlsUnconfirmed = True
            self.extensions = Extensions()
            return reply

        return self._simple(b"STARTTLS", exact=220).addCallback(start)

    def login(self, user, password, *, allowPlaintext: bool = False) -> defer.Deferred:
        """
        Authenticate (RFC 4954).

        @param user: a user name, or an L{IClientAuthentication} (such as
            L{mailproto.client.XOAUTH2Authenticator}) to use as it is.
            With a name, the mechanism is the first the server offers of
            CRAM-MD5, LOGIN and PLAIN (as L{mailproto.smtp.sendmail}
            chooses); if CRAM-MD5 is refused, or a mechanism itself is,
            the next is tried.
        @param password: the password (or token).
        @param allowPlaintext: whether credentials may cross an
            unencrypted connection; by default they may not.
        @return: a L{Deferred} firing with the C{235} L{Reply}; failing
            with L{AUTHRequiredError} when the server offers no usable
            mechanism, L{SMTPPermanentError} (C{535}: the credentials were
            refused) or L{SMTPTransientError}, or L{AuthenticationError}
            for a challenge that is not base64.
        """
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        if not self._tls and not allowPlaintext:
            return defer.fail(
                SMTPSessionStateError(-1, "Refusing to send credentials without TLS (allowPlaintext=False)")
            )
        offered = self.extensions.authMechanisms
        if IClientAuthentication.providedBy(user):
            candidates = [user]
        else:
            candidates = [mechanism(user) for mechanism in _MECHANISMS]
        candidates = [auth for auth in candidates if auth.getName().upper() in offered]
        if not candidates:
            return defer.fail(AUTHRequiredError(-1, b"The server offers no usable AUTH mechanism", self.log.str()))
        self._busy = True
        d = defer.ensureDeferred(self._authenticate(candidates, password))

        def done(result):
            self._busy = False
            return result

        return d.addBoth(done)

    async def _authenticate(self, candidates, password) -> Reply:
        while True:
            auth = candidates.pop(0)
            try:
                return await self._authExchange(auth, password)
            except SMTPReplyError as e:
                name = auth.getName().upper()
                retryable = e.code in (504, 534, 538) or (e.code == 535 and name not in (b"PLAIN", b"LOGIN"))
                if not (candidates and retryable) or self._state == "closed":
                    raise

    async def _authExchange(self, auth, password) -> Reply:
        name = _toBytes(auth.getName()).upper()
        if getattr(auth, "initialResponse", name == b"PLAIN"):
            response = base64.b64encode(auth.challengeResponse(password, b"")) or b"="
            line = b"AUTH " + name + b" " + response
            shown = b"AUTH " + name + b" *****"
        else:
            line = shown = b"AUTH " + name
        reply = await self._command(line, _Command(b"AUTH", accept=(2, 3)), shown=shown)
        while reply.code == 334:
            try:
                challenge = base64.b64decode(reply.wireText, validate=True)
            except (binascii.Error, ValueError):
                await self._command(b"*", _Command(b"AUTH", accept=(2, 3, 4, 5), refusalsAsReplies=True))
                raise AuthenticationError(
                    501, b"The server sent a challenge that is not base64: " + reply.wireText[:200], self.log.str()
                )
            response = base64.b64encode(auth.challengeResponse(password, challenge))
            reply = await self._command(response, _Command(b"AUTH", accept=(2, 3)), shown=b"*****")
        if reply.code != 235:
            # 2xx, but not "authenticated": take it as success, as servers
            # do send 250 here now and then.
            self._log.info("AUTH ended with {reply}", reply=reply.summary())
        return reply

    def mail(self, sender, **params) -> defer.Deferred:
        """
        Send C{MAIL FROM}: begin a transaction.

        @param sender: the reverse-path, C{""} for the null sender.
        @param params: ESMTP parameters: C{size=} (int), C{body=}
            (C{"8BITMIME"}...), C{smtputf8=True}, C{ret=}, C{envid=},
            C{auth=}, C{requiretls=True}; any other keyword is sent as
            C{KEYWORD=value} (C{True}: the keyword alone).
        @return: a L{Deferred} firing with the L{Reply}.
        """
        try:
            known = {}
            for key in ("size", "smtputf8", "requiretls"):
                if key in params:
                    known[key] = params.pop(key)
            for key in ("body", "ret", "envid", "auth"):
                if key in params:
                    known[key] = _toBytes(params.pop(key))
            line = formatMailFrom(MailFrom(Address(_toBytes(sender)), extra=_extra(params), **known))
        except Exception as e:
            return defer.fail(e)

        def started(reply):
            self._accepted = 0
            return reply

        return self._simple(line).addCallback(started)

    def rcpt(self, recipient, **params) -> defer.Deferred:
        """
        Send C{RCPT TO}.

        @param recipient: the forward-path.
        @param params: ESMTP parameters: C{notify=} (a sequence, such as
            C{("FAILURE", "DELAY")}, or a string), C{orcpt=} (C{(type,
            address)}); others as for L{mail}.
        @return: a L{Deferred} firing with the L{Reply}.
        """
        try:
            known = {}
            if "notify" in params:
                notify = params.pop("notify")
                if isinstance(notify, (str, bytes)):
                    notify = _toBytes(notify).split(b",")
                known["notify"] = tuple(_toBytes(n).upper() for n in notify)
            if "orcpt" in params:
                addrType, original = params.pop("orcpt")
                known["orcpt"] = (_toBytes(addrType), _toBytes(original))
            line = formatRcptTo(RcptTo(Address(_toBytes(recipient)), extra=_extra(params), **known))
        except Exception as e:
            return defer.fail(e)

        def accepted(reply):
            self._accepted += 1
            return reply

        return self._simple(line).addCallback(accepted)

    def data(self) -> defer.Deferred:
        """
        Send C{DATA}.  After its C{354}, give the message to L{send} in
        pieces of any size (or to L{sendFile}), then call L{end}.

        @return: a L{Deferred} firing with the C{354} L{Reply}.
        """

        def started(reply):
            self._state = "data"
            self._stuffer = DotStuffer()
            return reply

        return self._simple(b"DATA", accept=(3,), exact=354).addCallback(started)

    def send(self, data: bytes) -> None:
        """
        Send a piece of the message, after L{data}.  Line ends become CRLF
        and a dot at the start of a line is doubled, across pieces too: a
        piece may end or begin anywhere, even inside a CRLF.

        @param data: the next octets of the message.
        @raise SMTPSessionStateError: outside DATA, or while L{sendFile}
            streams.
        @raise SMTPConnectionLost: if the connection is gone.
        """
        refusal = self._refusal("data")
        if refusal is not None:
            raise refusal
        out = self._stuffer.feed(_toBytes(data))
        if out:
            self.transport.write(out)

    def end(self) -> defer.Deferred:
        """
        End the message: C{CRLF.CRLF}.

        @return: a L{Deferred} firing with the L{Reply} (with LMTP: with
            the list of replies, one per recipient accepted, in the order
            of the C{RCPT}s, each 2xx, 4xx or 5xx).
        """
        refusal = self._refusal("data")
        if refusal is not None:
            return defer.fail(refusal)
        return self._endOfData(self._stuffer.finish())

    def _endOfData(self, out: bytes) -> defer.Deferred:
        self._producer = None
        self._busy = False
        self._state = "ready"
        self._stuffer = None
        command = self._endCommand(b"end of data")
        self._command(out, command, shown=b".", raw=True)
        return command.deferred

    def _endCommand(self, verb: bytes) -> _Command:
        if self.lmtp:
            count, self._accepted = max(self._accepted, 1), 0
            return _Command(verb, refusalsAsReplies=True, count=count)
        return _Command(verb)

    def sendFile(self, file) -> defer.Deferred:
        """
        Send a whole message from a file, after L{data}, and end it: the
        file is read a chunk at a time when the connection can take more,
        so memory stays flat whatever the size.

        @param file: a binary file, read from where it is to its end.
        @return: a L{Deferred} firing as L{end}'s does.
        """
        refusal = self._refusal("data")
        if refusal is not None:
            return defer.fail(refusal)
        self._busy = True
        self._fileDone = defer.Deferred()
        producer = self._producer = _FileProducer(self, file)
        producer.start()
        return self._fileDone

    def _endOfDataFromFile(self, out: bytes) -> None:
        done = self._fileDone
        self._endOfData(out).chainDeferred(done)

    def _fileFailed(self, error: Exception) -> None:
        """
        Reading the file failed mid-message: the message cannot be ended
        well, so the connection is closed (the server drops the message).
        """
        self._producer = None
        self._busy = False
        self._close(f"reading the message failed: {error!r}", abort=True)
        self._fileDone.errback(error)

    def bdat(self, chunk: bytes, last: bool = False) -> defer.Deferred:
        """
        Send a C{BDAT} chunk (RFC 3030), the message as it is: no
        dot-stuffing, no line end changes.  Only when the server offers
        CHUNKING.

        @param chunk: the octets.
        @param last: whether it ends the message.
        @return: a L{Deferred} firing with the L{Reply} (for the last chunk
            with LMTP, the list of replies, as L{end}'s).
        """
        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)
        if b"CHUNKING" not in self.extensions:
            return defer.fail(SMTPSessionStateError(-1, "The server does not offer CHUNKING", self.log.str()))
        chunk = _toBytes(chunk)
        head = b"BDAT %d%s" % (len(chunk), b" LAST" if last else b"")
        command = self._endCommand(b"BDAT") if last else _Command(b"BDAT")
        return self._command(head + b"\r\n" + chunk, command, shown=head, raw=True)

    def noop(self) -> defer.Deferred:
        """
        Send C{NOOP}.

        @return: a L{Deferred} firing with the L{Reply}.
        """
        return self._simple(b"NOOP")

    def rset(self) -> defer.Deferred:
        """
        Send C{RSET}: abandon the transaction.

        @return: a L{Deferred} firing with the L{Reply}.
        """

        def reset(reply):
            self._accepted = 0
            return reply

        return self._simple(b"RSET").addCallback(reset)

    def docmd(self, line) -> defer.Deferred:
        """
        Send any command, as it is, and return its reply, whatever its
        code: as C{smtplib}'s C{docmd}, a 4xx or 5xx is a reply, not an
        error (but C{421} still ends the session).  DATA, BDAT, STARTTLS
        and AUTH change what the session must expect next: use their
        methods.

        @param line: the command, without CRLF (C{str} is sent as UTF-8).
        @return: a L{Deferred} firing with the L{Reply}.
        @raise ValueError: (through the L{Deferred}) if C{line} has a CR or
            LF, or is one of the commands above.
        """
        try:
            line = _noLineBreak(_toBytes(line), "a command")
        except ValueError as e:
            return defer.fail(e)
        verb = line.split(b" ", 1)[0].upper()
        if verb in (b"DATA", b"BDAT", b"STARTTLS", b"AUTH"):
            return defer.fail(ValueError(f"Use the session's method for {verb.decode()}, not docmd()"))
        return self._simple(line, accept=(2, 3), refusalsAsReplies=True)

    def quit(self) -> defer.Deferred:
        """
        Send C{QUIT}, then close the connection.

        @return: a L{Deferred} firing with the L{Reply} once the
            connection is closed.
        """

        refusal = self._refusal()
        if refusal is not None:
            return defer.fail(refusal)

        def closing(result):
            self._close("the session ended with QUIT")
            return self.whenClosed().addCallback(lambda ignored: result)

        return self._simple(b"QUIT").addBoth(closing)

    def close(self) -> defer.Deferred:
        """
        Close the connection without QUIT.

        @return: a L{Deferred} firing once it is closed.
        """
        d = self.whenClosed()
        if self.transport is not None and not self.closed:
            pending, self._pending = self._pending, None
            self._close("closed by the client")
            if pending is not None:
                pending.deferred.errback(SMTPConnectionLost(-1, "Closed by the client", self.log.str()))
        return d


def _extra(params) -> tuple:
    """
    @return: keyword arguments as C{MailFrom}/C{RcptTo}'s C{extra}.
    """
    extra = []
    for key, value in params.items():
        if value is False or value is None:
            continue
        extra.append((key.upper().encode("ascii"), None if value is True else _toBytes(value)))
    return tuple(extra)


# -- connecting ------------------------------------------------------------


async def connectEndpoint(
    endpoint, clock, *, timeout: float | None = DEFAULT_TIMEOUT, hostname=None, lmtp: bool = False
) -> SMTPSession:
    """
    Connect an L{SMTPSession} through any client endpoint (a UNIX socket
    for LMTP, a TCP endpoint of your own) and wait for the greeting.

    @param endpoint: an C{IStreamClientEndpoint}.
    @param clock: an C{IReactorTime}, for the reply timeouts.
    @param timeout: see L{SMTPSession.timeout}.
    @param hostname: see L{SMTPSession.hostname}.
    @param lmtp: see L{SMTPSession.lmtp}.
    @return: the session, greeted (as a coroutine: use C{await}, or wrap it
        in C{Deferred.fromCoroutine}).
    @raise SMTPReplyError: if the greeting refuses service.
    """
    session = SMTPSession(clock, timeout=timeout, hostname=hostname, lmtp=lmtp)
    await connectProtocol(endpoint, session)
    await session.greeted
    return session


def connect(
    reactor,
    hosts,
    port: int = 25,
    *,
    tls: str | None = None,
    contextFactory=None,
    ehlo=None,
    timeout: float | None = DEFAULT_TIMEOUT,
    connectTimeout: float = 30,
    lmtp: bool = False,
) -> defer.Deferred:
    """
    Connect to the first of C{hosts} that answers with a greeting.

    @param reactor: the reactor (C{IReactorTCP}, C{IReactorTime}).
    @param hosts: a host name or address, or a list of them, each possibly
        a C{(host, port)} pair; tried in order.  Names are resolved for
        both IPv4 and IPv6 (C{HostnameEndpoint}).
    @param port: the port of the hosts given without one.
    @param tls: C{None} for none; C{"starttls"} to say EHLO (C{ehlo}
        names the client), STARTTLS and EHLO again before the session is
        returned; C{"implicit"} for TLS from the first octet (RFC 8314,
        port 465).
    @param contextFactory: the client TLS options; by default
        C{optionsForClientTLS(host)}, which checks the certificate.
    @param ehlo: if given, the client's name: say EHLO with it before the
        session is returned (its reply is in C{session.extensions}).
    @param timeout: seconds each reply may take (see
        L{SMTPSession.timeout}).
    @param connectTimeout: seconds each connection attempt may take.
    @param lmtp: speak LMTP (L{SMTPSession.ehlo} sends LHLO).
    @return: a L{Deferred} firing with the L{SMTPSession}; if no host
        would do, failing with the last host's error (a failure to connect
        as L{SMTPConnectError}).
    """
    if tls not in (None, "starttls", "implicit"):
        raise ValueError(f"tls must be None, 'starttls' or 'implicit', not {tls!r}")
    if tls == "starttls" and ehlo is None:
        raise ValueError("tls='starttls' needs the client's name: ehlo=...")
    if isinstance(hosts, (str, bytes)) or (isinstance(hosts, tuple) and len(hosts) == 2 and isinstance(hosts[1], int)):
        hosts = [hosts]
    targets = []
    for host in hosts:
        host, hostPort = host if isinstance(host, tuple) else (host, port)
        targets.append((host.decode("idna") if isinstance(host, bytes) else host, hostPort))
    if not targets:
        raise ValueError("No hosts to connect to")
    return defer.Deferred.fromCoroutine(
        _connectAny(reactor, targets, tls, contextFactory, ehlo, timeout, connectTimeout, lmtp)
    )


async def _connectAny(reactor, targets, tls, contextFactory, ehlo, timeout, connectTimeout, lmtp) -> SMTPSession:
    errors = []
    for host, port in targets:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=connectTimeout)
        if tls == "implicit":
            endpoint = wrapClientTLS(contextFactory or optionsForClientTLS(host), endpoint)
        session = None
        try:
            session = SMTPSession(reactor, timeout=timeout, hostname=host, lmtp=lmtp)
            await connectProtocol(endpoint, session)
            await session.greeted
            if ehlo is not None:
                await session.ehlo(ehlo)
            if tls == "starttls":
                await session.starttls(contextFactory)
                await session.ehlo(ehlo)
            return session
        except Exception as e:
            if session is not None and session.transport is not None:
                await session.close()
            if not isinstance(e, SMTPClientError):
                e = SMTPConnectError(-1, f"Could not connect to {host} port {port}: {e}")
            errors.append(e)
    raise errors[-1]


__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_TIMEOUT",
    "SMTPConnectionLost",
    "SMTPPermanentError",
    "SMTPReplyError",
    "SMTPSession",
    "SMTPSessionStateError",
    "SMTPTransientError",
    "connect",
    "connectEndpoint",
]
