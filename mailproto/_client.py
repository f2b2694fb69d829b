# -*- test-case-name: mailproto.test.test_client -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The client side of SMTP (RFC 5321), ESMTP and LMTP (RFC 2033).

L{SMTPClient} sends mail on one connection: it asks L{getMailFrom
<SMTPClient.getMailFrom>}, L{getMailTo <SMTPClient.getMailTo>} and
L{getMailData <SMTPClient.getMailData>} for a message, sends it, reports
with L{sentMail <SMTPClient.sentMail>}, and asks again until
C{getMailFrom()} returns C{None}.

Every command sent is recorded, in order, in C{_awaiting} until its
reply is read: a line (C{sendLine}, C{_sendSecret}), several pipelined
lines (C{_sendLines}), each BDAT chunk, and the end of a message's data
(one reply; with LMTP one per accepted recipient).  A complete reply
answers the oldest of them.  Each reply is handed to C{_okresponse} if
its code is in C{_expected}, else to C{_failresponse}; the states are
these methods, in order:

  1. C{smtpState_helo} (L{ESMTPClient}: C{esmtpState_ehlo}, then
     C{esmtpState_serverConfig}, C{tryTLS}, C{esmtpState_starttls},
     C{authenticate}, C{esmtpState_challenge},
     C{smtpState_maybeAuthenticated});
  2. C{smtpState_from}: MAIL (with PIPELINING, MAIL, every RCPT and DATA go
     out in one write and C{smtpState_pipelined} reads their replies);
  3. C{smtpState_to}, C{smtpState_toOrData}: one RCPT per recipient;
  4. C{smtpState_data}: the message, dot-stuffed, its final C{.} in the
     same write as its last chunk (or BDAT chunks with CHUNKING, read by
     C{smtpState_bdat});
  5. C{smtpState_msgSent}: report, then the next message, or QUIT
     (C{smtpState_disconnect}).

Failures go to C{sendError} with an L{SMTPClientError}.

The reply discipline is strict.  Only C{354} continues DATA, and only a
final reply to the end of data (or to the last BDAT chunk) ends a
message.  A reply when no command awaits one (also: input left over after
the last awaited reply was read), a reply that does not parse, or one in
a class the command cannot have (a 2xx or 3xx other than 354 to DATA, a
3xx to MAIL, RCPT, the end of data or BDAT) is an L{SMTPProtocolError}:
the transaction is abandoned, C{sendError} is told, the connection is
closed, and the message in flight is not reported to C{sentMail} (a
relay keeps it queued for another attempt).  A C{421} ends the session:
the message in flight is reported with it, then the connection is closed.

C{timeout} is the time a reply may take, counted from the command (or
from the last octets of message data written, or from the previous reply
while pipelined replies are awaited), never from the last line: a reply
trickled line by line is cut off C{timeout} seconds after its command.
"""

from __future__ import annotations

import base64
import binascii
import collections
import os

from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.python.util import LineLog

from mailproto._address import Address
from mailproto._commands import MailFrom, RcptTo, formatMailFrom, formatRcptTo
from mailproto._data import DotStuffer
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
from mailproto._extensions import Extensions
from mailproto._readahead import CHUNK_SIZE, ReadAheadProducer
from mailproto._replies import Reply, ReplyParser, ReplySyntaxError, statusOf
from mailproto._writes import writeNow

SUCCESS = range(200, 300)
_ANY = range(0, 1000)



class RecipientReply(tuple):
    """
    The result of one RCPT: C{(address, code, resp)}, as twisted.mail's
    clients report it, with the L{Reply} value as C{reply} (C{None} for
    a result no server sent).
    """

    def __new__(cls, address, code: int, resp: bytes, reply=None) -> RecipientReply:
        self = super().__new__(cls, (address, code, resp))
        self.reply = reply if reply is not None and reply.code == code else None
        return self


def _noRecipients(code: int, resp: bytes) -> bytes:
    """
    @return: the text reported when no recipient was accepted, with the
        enhanced status of the last refusal, C{resp}.
    """
    status = statusOf(code, resp)
    return (status + b" " if status else b"") + b"No recipients accepted"


def checkRequireTLS(requireTLS: bool, secure: bool, extensions) -> Reply | None:
    """
    Whether a message may go to a server, as far as REQUIRETLS (RFC 8689
    section 4.2.1) is concerned: a message with REQUIRETLS goes only over
    a session under TLS, to a server whose EHLO reply (the one after TLS
    began) offers REQUIRETLS, and then with C{MAIL FROM:<...> REQUIRETLS}.

    This is the protocol's part of the check, made before MAIL; how the
    server was found and whether its certificate was validated (DNSSEC,
    MTA-STS, DANE) is for the caller to check.

    @param requireTLS: whether the message has REQUIRETLS.
    @param secure: whether the session is under TLS.
    @param extensions: what the server offered after EHLO (an
        L{Extensions} or any container of keywords).
    @return: C{None} if the message may be sent; else the permanent
        reply its recipients get instead, made by the client: C{550
        5.7.30 REQUIRETLS support required} (the status RFC 8689
        registers), which the sender learns of from a non-delivery
        report.
    """
    if not requireTLS:
        return None
    if not secure:
        why = b"the session with the server is not under TLS"
    elif b"REQUIRETLS" not in extensions:
        why = b"the server does not offer REQUIRETLS"
    else:
        return None
    return Reply(550, [b"REQUIRETLS support required: " + why], b"5.7.30")


def _address(value) -> Address:
    if isinstance(value, Address):
        return value
    if isinstance(value, str):
        value = value.encode("utf-8")
    return Address(value)


class _MessageProducer(ReadAheadProducer):
    """
    Sends a message from a file for a client, dot-stuffed with its final
    C{.} in the same write as the last chunk (DATA), or as C{BDAT} chunks.

    @ivar chunks: how many writes (BDAT chunks) were made.
    """

    def __init__(self, client, file, chunked: bool) -> None:
        ReadAheadProducer.__init__(self, client.transport, file, client.transformChunk, client._finishMessage, CHUNK_SIZE)
        self.client = client
        self.chunked = chunked
        self.chunks = 0

    def deliver(self, out: bytes, last: bool) -> None:
        client = self.client
        if self.chunked:
            out = b"BDAT %d%s\r\n" % (len(out), b" LAST" if last else b"") + out
        self.chunks += 1
        client._dataWritten(self.chunked, last)
        client.resetTimeout()
        client.transport.write(out)

    def failed(self, failure: Failure) -> None:
        self.client._transferFailed(failure)


class SMTPClient(LineReceiver, TimeoutMixin):
    """
    An SMTP client that sends one or more messages on one connection.

    Subclass it and implement L{getMailFrom}, L{getMailTo}, L{getMailData},
    L{sentMail} (and maybe L{sendError}).

    @ivar identity: the name sent with HELO/EHLO.
    @ivar timeout: seconds to wait for each reply, or C{None}.
    @ivar log: the last lines of the exchange, for error reports.
    @ivar debug: whether to keep C{log}.
    @ivar toAddressesResult: the C{(address, code, resp)} of each RCPT of
        the current message; each also has the L{Reply} value as its
        C{reply} attribute (L{RecipientReply}).
    @ivar reply: the L{Reply} being handled by a state, or C{None}.
    @ivar finalReply: while L{sentMail} runs, the L{Reply} value of the
        message's outcome (C{code} and C{resp}), or C{None} if a subclass
        reported an outcome no server sent.
    @ivar successAddresses: the recipients the server accepted.
    @ivar extensions: what the server offered after EHLO (empty after
        HELO).
    @type extensions: L{Extensions}
    """

    debug = True
    timeout = None
    _tlsMode = False
    #: Whether STARTTLS was tried and TLS did not come up (never, without
    #: ESMTP).
    tlsFailed = False
    #: Octets in one reply line, and in one reply, the client will read.
    maxReplyLine = 8192
    maxReply = 65536

    _log = Logger()

    def __init__(self, identity, logsize: int = 10) -> None:
        """
        @param identity: the client's name for HELO/EHLO.
        @param logsize: how many lines of the exchange to keep.
        """
        if isinstance(identity, str):
            identity = identity.encode("idna")
        self.identity = identity or b""
        self.toAddressesResult = []
        self.successAddresses = []
        self._from = None
        self._mail = None
        self.resp = []
        self.code = -1
        self.reply = None
        self.finalReply = None
        self._final = None
        self.log = LineLog(logsize)
        self.extensions = Extensions()
        self._failureReason = None
        self._replies = ReplyParser(enhanced=True, maxLineLength=self.maxReplyLine, maxReplyLength=self.maxReply)
        self._input = b""
        self._producer = None
        self._pipeline = None
        self._stuffer = None
        self._answered = None
        #: What was sent and awaits a reply, oldest first: the command
        #: verbs, C{b"greeting"}, C{b"BDAT"} or C{b"end of data"}.
        self._awaiting = collections.deque()

    # -- connection -------------------------------------------------------

    def connectionMade(self) -> None:
        self.setTimeout(self.timeout)
        self._setNoDelay()
        self._awaiting.append(b"greeting")
        self._expected = [220]
        self._okresponse = self.smtpState_helo
        self._failresponse = self.smtpConnectionFailed

    def _setNoDelay(self) -> None:
        """
        Turn off Nagle's algorithm: commands and the end of a message go
        out at once instead of waiting for the server's delayed ACK.
        """
        transport = self.transport
        for candidate in (transport, getattr(transport, "transport", None)):
            setNoDelay = getattr(candidate, "setTcpNoDelay", None)
            if setNoDelay is not None:
                try:
                    setNoDelay(True)
                except OSError:
                    pass
                return

    def connectionLost(self, reason=None) -> None:
        self._failureReason = reason
        self.setTimeout(None)
        if self._producer is not None:
            self._producer.finished = True
            self._producer = None
        self.mailFile = None

    def timeoutConnection(self) -> None:
        self.sendError(SMTPTimeoutError(-1, b"Timeout waiting for SMTP server response", self.log.str()))

    def sendLine(self, line: bytes) -> None:
        """
        Send a command; its reply is awaited from now.
        """
        if self.debug:
            self.log.append(b">>> " + line)
        self._commandsSent([line])
        writeNow(self.transport, line + b"\r\n")

    def _sendSecret(self, line: bytes, shown: bytes) -> None:
        """
        Send a line that carries credentials; the log shows C{shown}.
        """
        if self.debug:
            self.log.append(b">>> " + shown)
        self._commandsSent([shown])
        writeNow(self.transport, line + b"\r\n")

    def _sendLines(self, lines: list[bytes]) -> None:
        """
        Send several commands in one write (PIPELINING).
        """
        if self.debug:
            for line in lines:
                self.log.append(b">>> " + line)
        self._commandsSent(lines)
        writeNow(self.transport, b"".join(line + b"\r\n" for line in lines))

    def _commandsSent(self, lines) -> None:
        """
        Record that C{lines} await a reply each, and start the wait.
        """
        for line in lines:
            verb = line.split(b" ", 1)[0].upper()
            self._awaiting.append(b"end of data" if verb == b"." else verb)
        self.resetTimeout()

    def _dataWritten(self, chunked: bool, last: bool) -> None:
        """
        Message data is about to go out: a BDAT chunk awaits its reply;
        the end of the data awaits the message's.
        """
        if chunked:
            self._awaiting.append(b"BDAT")
        elif last:
            self._awaiting.extend([b"end of data"] * self._endOfDataReplies())

    def _endOfDataReplies(self) -> int:
        """
        @return: how many replies the end of a message's data gets.
        """
        return 1

    # -- replies ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Split the server's output into lines (CRLF; a bare LF is taken as
        a line end too) for L{lineReceived}.
        """
        self._input = self._input + data if self._input else data
        while self._input:
            if self.transport is None or self.transport.disconnecting:
                # Closing: what the server says now no longer matters.
                self._input = b""
                break
            end = self._input.find(b"\n")
            if end < 0:
                if len(self._input) > self.maxReplyLine + 1:
                    self._input = b""
                    self._protocolError(b"Reply line too long")
                break
            line, self._input = self._input[:end], self._input[end + 1 :]
            if line[-1:] == b"\r":
                line = line[:-1]
            self.lineReceived(line)

    def lineReceived(self, line: bytes):
        """
        Take a line of a reply.  A line alone does not restart the wait
        for the reply: a complete reply does.
        """
        if self.debug:
            self.log.append(b"<<< " + line)
        try:
            reply = self._replies.lineReceived(line)
        except ReplySyntaxError as e:
            self._protocolError(b"Invalid response from SMTP server: " + line[:200] + b" (" + str(e).encode() + b")")
            return None
        if reply is None:
            return None
        resp = reply.wireText
        if not self._awaiting:
            self._protocolError(b"Reply when no command awaits one: %03d %s" % (reply.code, resp[:200]))
            return None
        self._answered = self._awaiting.popleft()
        self.resetTimeout()
        self.reply = reply
        if not self._awaiting and self._input:
            return self._trailingInput(reply.code, resp)
        return self._dispatch(reply.code, resp)

    def _dispatch(self, code: int, resp: bytes):
        """
        Hand a reply to the current state.  A state that raises is a bug:
        it is logged, and the session ends as after a protocol error.
        """
        self.code = code
        try:
            if code in self._expected:
                return self._okresponse(code, resp)
            return self._failresponse(code, resp)
        except Exception:
            self._log.failure("Error handling the reply {code} from the SMTP server", code=code)
            if self.transport is not None and not self.transport.disconnecting:
                self._protocolError(b"Internal error handling the reply %03d %s" % (code, resp[:200]))
            return None
        finally:
            self.code = -1
            self.reply = None

    def _trailingInput(self, code: int, resp: bytes):
        """
        The server sent more after the reply to the last command awaiting
        one: it does not keep to one reply per command, and which of its
        replies answers what cannot be known.  A refusal while no message
        is in flight (a refused greeting) is handled first, as it decides
        nothing about a message.
        """
        if code >= 400 and self._from is None:
            self._dispatch(code, resp)
            if self.transport is None or self.transport.disconnecting:
                return None
        self._protocolError(b"The server sent more than one reply per command, after: %03d %s" % (code, resp[:200]))

    def _protocolError(self, message: bytes) -> None:
        """
        The server broke the protocol: abandon the transaction (the message
        in flight is not reported as sent or refused), tell C{sendError},
        and close.
        """
        self._input = b""
        self._replies = ReplyParser(enhanced=True, maxLineLength=self.maxReplyLine, maxReplyLength=self.maxReply)
        self._awaiting.clear()
        self._pipeline = None
        self._expected = []
        self._okresponse = self._failresponse = self._ignoreReply
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()
        self.sendError(SMTPProtocolError(-1, message, self.log.str()))
        if self.transport is not None and not self.transport.disconnecting:
            # A subclass's sendError may not close: a protocol error must.
            self.transport.loseConnection()

    def _wrongReply(self, code: int, resp: bytes) -> None:
        """
        A reply in a class the command cannot have.
        """
        self._protocolError(b"Unexpected reply to %s: %03d %s" % (self._answered, code, resp[:200]))

    def _ignoreReply(self, code, resp) -> None:
        pass

    def _error(self, errorClass, code: int, resp: bytes, **kw) -> SMTPClientError:
        """
        @return: an error about the last reply, with its enhanced status.
        """
        return errorClass(code, resp, self.log.str(), status=statusOf(code, resp), **kw)

    def smtpConnectionFailed(self, code, resp) -> None:
        self.sendError(self._error(SMTPConnectError, code, resp))

    def smtpTransferFailed(self, code, resp) -> None:
        """
        MAIL or the message was not accepted: a 4xx or 5xx refuses the
        message; any other reply here breaks the protocol.
        """
        if code < 0:
            self.sendError(self._error(SMTPProtocolError, code, resp))
        elif code < 400:
            self._wrongReply(code, resp)
        else:
            self.smtpState_msgSent(code, resp)

    def _dataRefused(self, code, resp) -> None:
        """
        DATA was answered with something else than 354: a 4xx or 5xx
        refuses the message; a 2xx or another 3xx breaks the protocol (the
        message was not sent, whatever the server says).
        """
        if 400 <= code < 600:
            self.smtpState_msgSent(code, resp)
        else:
            self._wrongReply(code, resp)

    # -- states -----------------------------------------------------------

    def smtpState_helo(self, code, resp) -> None:
        self.sendLine(b"HELO " + self.identity)
        self._expected = SUCCESS
        self._okresponse = self.smtpState_from
        self._failresponse = self.smtpConnectionFailed

    def smtpState_from(self, code, resp) -> None:
        """
        Start the next message: ask L{getMailFrom}; send MAIL (and, with
        PIPELINING, the RCPTs and DATA with it), or QUIT if there is none.
        """
        while True:
            self._from = self.getMailFrom()
            self._failresponse = self.smtpTransferFailed
            if self._from is None:
                self._disconnectFromServer()
                return
            refusal = self._prepareMessage()
            if refusal is None:
                break
            # Refused here, before anything was sent: report, next one.
            self._reportMessage(*refusal, 0)
        if self._pipelining():
            self._sendPipelined()
            return
        self.sendLine(formatMailFrom(self._mail))
        self._expected = SUCCESS
        self._okresponse = self.smtpState_to

    def smtpState_disconnect(self, code, resp) -> None:
        self.transport.loseConnection()

    def smtpState_to(self, code, resp) -> None:
        self.toAddresses = iter(self._recipients)
        self.toAddressesResult = []
        self.successAddresses = []
        self._okresponse = self.smtpState_toOrData
        self._expected = _ANY
        self.lastAddress = None
        return self.smtpState_toOrData(0, b"")

    def smtpState_toOrData(self, code, resp) -> None:
        if 300 <= code < 400:
            return self._wrongReply(code, resp)
        if code == 421:
            self.toAddressesResult.append(self._recipientReply(self.lastAddress, code, resp))
            return self.smtpState_msgSent(code, resp)
        if self.lastAddress is not None:
            self.toAddressesResult.append(self._recipientReply(self.lastAddress, code, resp))
            if code in SUCCESS:
                self.successAddresses.append(self.lastAddress)
        try:
            self.lastAddress = next(self.toAddresses)
        except StopIteration:
            if not self.successAddresses:
                return self.smtpState_msgSent(code, _noRecipients(code, resp))
            if self._chunking():
                self._startTransfer(chunked=True)
            else:
                self.sendLine(b"DATA")
                self._expected = [354]
                self._okresponse = self.smtpState_data
                self._failresponse = self._dataRefused
        else:
            self.sendLine(self._rcptLine(self.lastAddress))

    def smtpState_pipelined(self, code, resp) -> None:
        """
        Read the replies to a pipelined MAIL, RCPTs and DATA, in order.
        Only 354 continues DATA; a 2xx to DATA, or a 3xx to anything else,
        breaks the protocol.  A 421 ends the session at once: the replies
        still awaited will not come.
        """
        pipeline = self._pipeline
        step = pipeline["next"]
        pipeline["next"] += 1
        recipients = self._recipients
        isData = step > len(recipients)
        if (isData and (code < 400 and code != 354)) or (not isData and 300 <= code < 400):
            return self._wrongReply(code, resp)
        if step == 0:
            pipeline["mail"] = (code, resp, self.reply)
        elif not isData:
            address = recipients[step - 1]
            self.toAddressesResult.append(self._recipientReply(address, code, resp))
            if code in SUCCESS and pipeline["mail"][0] in SUCCESS:
                self.successAddresses.append(address)
        else:
            pipeline["data"] = (code, resp, self.reply)
        if code == 421:
            self._pipeline = None
            if step == 0:
                self.toAddressesResult = []
            return self.smtpState_msgSent(code, resp)
        if pipeline["next"] < pipeline["count"]:
            return
        self._pipeline = None
        self._pipelineAnswered(pipeline)

    def _pipelineAnswered(self, pipeline) -> None:
        """
        Every pipelined command has its reply: send the message, or report
        why not.
        """
        mailCode, mailResp, mailReply = pipeline["mail"]
        data = pipeline.get("data")
        ok = mailCode in SUCCESS and self.successAddresses
        if data is not None and data[0] == 354 and not ok:
            # The server wants a message nobody will get: end it at once,
            # and report why it was not sent, whatever the reply to that.
            if mailCode not in SUCCESS:
                refusal = (mailCode, mailResp, mailReply)
                self.toAddressesResult = []
            else:
                last = self.toAddressesResult[-1]
                refusal = (last[1], _noRecipients(*last[1:]), last.reply)
            self._expected = _ANY
            self._okresponse = self._failresponse = lambda c, r: self._messageDone(*refusal)
            self.sendLine(b".")
            return
        if mailCode not in SUCCESS:
            # As without pipelining: no RCPT counts when MAIL was refused.
            self.toAddressesResult = []
            return self._messageDone(mailCode, mailResp, mailReply)
        if not self.successAddresses:
            last = self.toAddressesResult[-1]
            return self._messageDone(last[1], _noRecipients(*last[1:]), last.reply)
        if data is None:
            self._startTransfer(chunked=True)
        elif data[0] == 354:
            self.smtpState_data(*data[:2])
        else:
            self._messageDone(*data)
    def smtpState_data(self, code, resp) -> None:
        """
        The server said 354: send the message.
        """
        self._startTransfer(chunked=False)

    def smtpState_bdat(self, code, resp) -> None:
        """
        A reply to a BDAT chunk.  The first refusal ends the message (no
        more chunks are sent); the reply to the last chunk is the
        message's.  A 3xx breaks the protocol; a 421 ends the session.
        """
        if 300 <= code < 400:
            return self._wrongReply(code, resp)
        if code == 421:
            self._producer, producer = None, self._producer
            if producer is not None:
                producer.stopProducing()
            return self.smtpState_msgSent(code, resp)
        self._bdatReplies += 1
        if code not in SUCCESS and self._bdatFailure is None:
            self._bdatFailure = (code, resp, self.reply)
            if self._producer is not None:
                self._producer.stopProducing()
        producer = self._producer
        if producer is None or not producer.finished or self._bdatReplies < producer.chunks:
            return
        self._producer = None
        self._messageDone(*(self._bdatFailure or (code, resp, self.reply)))

    def _recipientReply(self, address, code: int, resp: bytes) -> RecipientReply:
        """
        @return: the result of one RCPT, with the reply being handled.
        """
        return RecipientReply(address, code, resp, self.reply)

    def _messageDone(self, code: int, resp: bytes, reply) -> None:
        """
        The message is done, with an outcome that is not the reply being
        handled now (one kept from earlier in the pipeline): go to
        L{smtpState_msgSent} with it.
        """
        self._final = reply
        try:
            self.smtpState_msgSent(code, resp)
        finally:
            self._final = None

    def smtpState_msgSent(self, code, resp) -> None:
        """
        The message is done (sent or refused): report it, then go on with
        the next.  After a refusal, RSET first.
        """
        if self._from is not None:
            self._reportMessage(code, resp, len(self.successAddresses))
        self.toAddressesResult = []
        self._from = None
        self._mail = None
        if code in SUCCESS:
            self.smtpState_from(code, resp)
            return
        if code == 421:
            self._serverClosing(code, resp)
            return
        self.sendLine(b"RSET")
        self._expected = SUCCESS
        self._okresponse = self.smtpState_from
        self._failresponse = self._rsetRefused

    def _serverClosing(self, code, resp) -> None:
        """
        The server said 421 to a message: it is closing the session (RFC
        5321, section 3.8).  The message was reported with that reply;
        nothing more is sent, and the connection is closed.
        """
        self._awaiting.clear()
        self._expected = []
        self._okresponse = self._failresponse = self._ignoreReply
        if self.transport is not None and not self.transport.disconnecting:
            self.transport.loseConnection()

    def _rsetRefused(self, code, resp) -> None:
        self.sendError(self._error(SMTPProtocolError, code, resp, isFatal=False))

    def _reportMessage(self, code, resp, numOk) -> None:
        final = self._final or self.reply
        self.finalReply = final if final is not None and final.code == code else None
        try:
            self.sentMail(code, resp, numOk, self.toAddressesResult, self.log)
        except BaseException:
            self._log.failure("Unexpected error in sentMail")
        finally:
            self.finalReply = None

    # -- building the transaction -------------------------------------------

    def _prepareMessage(self) -> tuple[int, bytes] | None:
        """
        Work out the MAIL command for the message C{getMailFrom} gave, with
        the parameters the server offers and the message needs.

        A message with REQUIRETLS that this session cannot carry is
        refused first (L{checkRequireTLS}).

        @return: C{None}, or why the message cannot go to this server: a
            reply code and text, as if the server had refused it.
        """
        sender = self._from
        mail = sender if isinstance(sender, MailFrom) else MailFrom(_address(sender))
        self._recipients = [to if isinstance(to, RcptTo) else _address(to) for to in self.getMailTo()]
        self.toAddressesResult = []
        self.successAddresses = []
        self.mailFile = self.getMailData()
        extensions = self.extensions
        refusal = checkRequireTLS(mail.requiretls, self._tlsMode, extensions)
        if refusal is not None:
            return refusal.code, refusal.wireText
        size, eightBit = self._measure(self.mailFile)
        utf8 = mail.smtputf8 or mail.address.needsSMTPUTF8 or any(
            (r.address if isinstance(r, RcptTo) else r).needsSMTPUTF8 for r in self._recipients
        )
        if utf8 and b"SMTPUTF8" not in extensions:
            return 554, b"5.6.7 The addresses need SMTPUTF8 (RFC 6531), which the server does not offer"
        body = mail.body
        if eightBit or utf8:
            if b"8BITMIME" not in extensions:
                return 554, b"5.6.3 The message has 8-bit data and the server does not offer 8BITMIME"
            body = body or b"8BITMIME"
        limit = extensions.size if b"SIZE" in extensions else None
        if size is not None and limit and size > limit:
            return 552, b"5.3.4 The message (%d octets) is larger than the server accepts (%d)" % (size, limit)
        dsn = b"DSN" in extensions
        self._mail = MailFrom(
            mail.address,
            size=size if b"SIZE" in extensions and size is not None else None,
            body=body if b"8BITMIME" in extensions else None,
            smtputf8=utf8,
            ret=mail.ret if dsn else None,
            envid=mail.envid if dsn else None,
            auth=mail.auth if b"AUTH" in extensions else None,
            requiretls=mail.requiretls,
            extra=mail.extra,
        )
        return None

    @staticmethod
    def _measure(file) -> tuple[int | None, bool]:
        """
        @return: the size of what is left of C{file} and whether it has
            8-bit data, when C{file} can be read again (then it is rewound);
            else C{(None, False)}.
        """
        try:
            start = file.tell()
            end = file.seek(0, os.SEEK_END)
            file.seek(start)
        except (AttributeError, OSError, ValueError):
            return None, False
        return end - start, _scan8bit(file)

    def _rcptLine(self, recipient) -> bytes:
        if isinstance(recipient, RcptTo):
            rcpt = recipient
            if b"DSN" not in self.extensions:
                rcpt = RcptTo(rcpt.address, extra=rcpt.extra)
        else:
            rcpt = RcptTo(recipient)
        return formatRcptTo(rcpt)

    def _pipelining(self) -> bool:
        return b"PIPELINING" in self.extensions

    def _chunking(self) -> bool:
        return b"CHUNKING" in self.extensions and getattr(self, "useChunking", True)

    def _sendPipelined(self) -> None:
        """
        Send MAIL, every RCPT and (unless BDAT follows) DATA in one write.
        """
        lines = [formatMailFrom(self._mail)]
        lines.extend(self._rcptLine(r) for r in self._recipients)
        withData = not self._chunking()
        if withData:
            lines.append(b"DATA")
        self._pipeline = {"next": 0, "count": len(lines)}
        self._expected = _ANY
        self._okresponse = self._failresponse = self.smtpState_pipelined
        self._sendLines(lines)

    # -- sending the message ----------------------------------------------

    def _startTransfer(self, chunked: bool) -> None:
        file = self.mailFile
        self._stuffer = DotStuffer(stuff=not chunked)
        self._producer = _MessageProducer(self, file, chunked)
        self._expected = _ANY if chunked else SUCCESS
        if chunked:
            self._bdatReplies = 0
            self._bdatFailure = None
            self._okresponse = self._failresponse = self.smtpState_bdat
        else:
            self._okresponse = self.smtpState_msgSent
            self._failresponse = self.smtpTransferFailed
        self._producer.start()

    def transformChunk(self, chunk: bytes) -> bytes:
        """
        Turn a chunk of the message into what goes on the wire: CRLF line
        ends and (after DATA) dot-stuffing, right across chunk boundaries.
        Restarts the timeout: progress is being made.
        """
        self.resetTimeout()
        return self._stuffer.feed(chunk)

    def _finishMessage(self) -> bytes:
        return self._stuffer.finish()

    def finishedFileTransfer(self, lastsent) -> None:
        """
        Kept for compatibility: the end of the message is sent with its
        last chunk, so there is nothing left to do.
        """

    def _transferFailed(self, failure: Failure) -> None:
        self._producer = None
        self._log.failure("Could not read the message", failure)
        error = failure.value
        if not isinstance(error, SMTPClientError):
            error = SMTPClientError(-1, b"Could not read the message: " + repr(error).encode("utf-8"), self.log.str(), isFatal=True)
        self.sendError(error)

    # -- for subclasses ----------------------------------------------------

    def getMailFrom(self):
        """
        @return: the sender of the next message (an address as C{bytes},
            C{str} or L{Address}, or a L{mailproto.wire.MailFrom} with DSN
            parameters), or C{None} when there are no more.
        """
        raise NotImplementedError

    def getMailTo(self):
        """
        @return: the recipients of the message: addresses, or
            L{mailproto.wire.RcptTo} values with DSN parameters.
        """
        raise NotImplementedError

    def getMailData(self):
        """
        @return: a file open for reading in binary mode with the message;
            line ends may be LF or CRLF.
        """
        raise NotImplementedError

    def sendError(self, exc) -> None:
        """
        Something failed outside a message's own result.  Say QUIT if the
        connection can go on, else close it.

        @param exc: the error.
        @type exc: L{SMTPClientError}
        """
        if isinstance(exc, SMTPClientError) and not exc.isFatal:
            self._disconnectFromServer()
        else:
            self.smtpState_disconnect(-1, None)

    def sentMail(self, code, resp, numOk, addresses, log) -> None:
        """
        A message is done.

        @param code: the final reply's code, or the refusal's.
        @param resp: its text.
        @param numOk: how many recipients got it.
        @param addresses: C{(address, code, resp)} for each RCPT.
        @param log: the exchange's last lines.
        """
        raise NotImplementedError

    def _disconnectFromServer(self) -> None:
        self._expected = _ANY
        self._okresponse = self.smtpState_disconnect
        self.sendLine(b"QUIT")


def _scan8bit(file) -> bool:
    """
    Read a file to its end to see whether it has 8-bit data, then rewind.
    """
    start = file.tell()
    try:
        while True:
            chunk = file.read(CHUNK_SIZE)
            if not chunk:
                return False
            if not chunk.isascii():
                return True
    finally:
        file.seek(start)


class ESMTPClient(SMTPClient):
    """
    An ESMTP client: EHLO, STARTTLS (RFC 3207), AUTH (RFC 4954) and the
    service extensions.

    @ivar heloFallback: whether to fall back to HELO if EHLO is refused
        (never when authentication or TLS is required).
    @ivar requireAuthentication: refuse to send without authenticating.
    @ivar requireTransportSecurity: refuse to send without TLS.
    @ivar context: the TLS client context for STARTTLS; with
        C{twisted.internet.ssl.optionsForClientTLS} it checks the
        server's certificate and name.
    @ivar useChunking: whether to use BDAT when the server offers
        CHUNKING.
    """

    heloFallback = True
    requireAuthentication = False
    requireTransportSecurity = False
    context = None
    useChunking = True
    _tlsMode = False
    #: Whether STARTTLS was tried and TLS did not come up: the server
    #: refused STARTTLS, or the handshake failed (no reply came over TLS).
    tlsFailed = False
    _startedTLS = False

    def __init__(self, secret, contextFactory=None, *args, **kw) -> None:
        """
        @param secret: the password (or token) for AUTH, or C{None}.
        @param contextFactory: see L{ESMTPClient.context}.
        @param args: for L{SMTPClient}: C{identity}, C{logsize}.
        """
        SMTPClient.__init__(self, *args, **kw)
        self.authenticators = []
        self.secret = secret
        self.context = contextFactory

    def registerAuthenticator(self, auth) -> None:
        """
        Add a SASL mechanism.  They are tried in the order registered,
        among those the server offers: register the strongest first.

        @param auth: an L{IClientAuthentication}.
        """
        self.authenticators.append(auth)

    def connectionMade(self) -> None:
        self._tlsMode = ISSLTransport.providedBy(self.transport)
        SMTPClient.connectionMade(self)
        self._okresponse = self.esmtpState_ehlo

    # -- failure hooks ----------------------------------------------------

    def esmtpEHLORequired(self, code=-1, resp=None) -> None:
        self.sendError(EHLORequiredError(502, b"Server does not support ESMTP Authentication", self.log.str()))

    def esmtpAUTHRequired(self, code=-1, resp=None) -> None:
        names = b", ".join(a.getName().upper() for a in self.authenticators)
        self.sendError(
            AUTHRequiredError(502, b"Server does not support Client Authentication schemes [%s]" % names, self.log.str())
        )

    def esmtpTLSRequired(self, code=-1, resp=None) -> None:
        self.sendError(TLSRequiredError(502, b"Server does not support secure communication via TLS / SSL", self.log.str()))

    def esmtpTLSFailed(self, code=-1, resp=None) -> None:
        self.tlsFailed = True
        self.sendError(
            SMTPTLSError(
                code, b"Could not complete the SSL/TLS handshake", self.log.str(), status=statusOf(code, resp or b"")
            )
        )

    def esmtpAUTHDeclined(self, code=-1, resp=None) -> None:
        self.sendError(self._error(AUTHDeclinedError, code, resp))

    def esmtpAUTHMalformedChallenge(self, code=-1, resp=None) -> None:
        self.sendError(
            AuthenticationError(
                501, b"Login failed because the SMTP Server returned a malformed Authentication Challenge", self.log.str()
            )
        )

    def esmtpAUTHServerError(self, code=-1, resp=None) -> None:
        self.sendError(self._error(AuthenticationError, code, resp))

    # -- EHLO and TLS -----------------------------------------------------

    def esmtpState_ehlo(self, code, resp) -> None:
        self._expected = SUCCESS
        self._okresponse = self.esmtpState_serverConfig
        self._failresponse = self.esmtpEHLORequired
        needTLS = self.requireTransportSecurity and not self._tlsMode
        if self.heloFallback and not self.requireAuthentication and not needTLS:
            self._failresponse = self.smtpState_helo
        self.sendLine(b"EHLO " + self.identity)

    def _dispatch(self, code: int, resp: bytes):
        if self._startedTLS:
            # A reply came over TLS: the handshake worked.
            self.tlsFailed = False
        return SMTPClient._dispatch(self, code, resp)

    #: Whether the server offered STARTTLS in its first EHLO reply;
    #: C{None} until that reply.
    starttlsOffered = None

    def esmtpState_serverConfig(self, code, resp) -> None:
        lines = resp.splitlines()[1:]
        self.extensions = Extensions.fromLines(lines)
        if not self._tlsMode:
            self.starttlsOffered = b"STARTTLS" in self.extensions
        items = {}
        for line in lines:
            words = line.split(None, 1)
            if words:
                items[words[0]] = words[1] if len(words) > 1 else None
        self.tryTLS(code, resp, items)

    def tryTLS(self, code, resp, items) -> None:
        """
        STARTTLS if the server offers it and we have a context; fail if TLS
        is required and impossible; else go on to authenticate.
        """
        canTLS = self.context is not None and b"STARTTLS" in self.extensions
        if self._tlsMode or not (canTLS or self.requireTransportSecurity):
            self.authenticate(code, resp, items)
        elif canTLS:
            self._expected = [220]
            self._okresponse = self.esmtpState_starttls
            self._failresponse = self.esmtpTLSFailed
            self.sendLine(b"STARTTLS")
        else:
            self.esmtpTLSRequired()

    def _trailingInput(self, code: int, resp: bytes):
        """
        Input after the 220 to STARTTLS is refused by
        L{esmtpState_starttls} itself, as an attack.
        """
        if self._okresponse == self.esmtpState_starttls and code in self._expected:
            return self._dispatch(code, resp)
        return SMTPClient._trailingInput(self, code, resp)

    def esmtpState_starttls(self, code, resp) -> None:
        """
        The server said 220 to STARTTLS: start TLS, then EHLO again.
        Anything the server sent after its 220 came in plaintext and would
        be taken as said inside TLS: that is an attack, and the connection
        is dropped.
        """
        if self._input:
            self._input = b""
            self._expected = []
            self._okresponse = self._failresponse = self._ignoreReply
            self.sendError(
                SMTPTLSError(
                    code,
                    b"The server sent data after its reply to STARTTLS, before TLS: refusing to go on",
                    self.log.str(),
                    isFatal=True,
                )
            )
            return
        try:
            self.transport.startTLS(self.context)
        except BaseException:
            self._log.failure("Could not start TLS")
            self.esmtpTLSFailed(451)
            return
        self._tlsMode = True
        self._startedTLS = True
        self.tlsFailed = True  # until the server answers over TLS
        self.extensions = Extensions()
        self.esmtpState_ehlo(code, resp)

    # -- AUTH -------------------------------------------------------------

    def authenticate(self, code, resp, items) -> None:
        """
        Authenticate with the first registered mechanism the server offers
        (if there is a secret), or go on without.
        """
        offered = {name.upper() for name in self.extensions.authMechanisms} if b"AUTH" in self.extensions else set()
        self._authCandidates = [a for a in self.authenticators if a.getName().upper() in offered]
        if self.secret is not None and self._authCandidates:
            self._nextAuthenticator()
            return
        if self.requireAuthentication:
            self.esmtpAUTHRequired()
        else:
            self.smtpState_from(code, resp)

    def _nextAuthenticator(self) -> None:
        auth = self._authinfo = self._authCandidates.pop(0)
        name = auth.getName().upper()
        self._failresponse = self._authRefused
        if getattr(auth, "initialResponse", name == b"PLAIN"):
            response = auth.challengeResponse(self.secret, b"")
            self._expected = [235, 334]
            self._okresponse = self.smtpState_maybeAuthenticated
            self._sendSecret(b"AUTH " + name + b" " + (base64.b64encode(response) or b"="), b"AUTH " + name + b" *****")
        else:
            self._expected = [334]
            self._okresponse = self.esmtpState_challenge
            self.sendLine(b"AUTH " + name)

    def _authRefused(self, code, resp) -> None:
        """
        A mechanism was refused: try the next one the server offers when
        that can help -- the mechanism itself was refused (504, 534, 538),
        or a challenge-response mechanism failed (a server that keeps only
        hashed passwords refuses CRAM-MD5 even for the right password) --
        else give up: the same password again would only count as another
        failure against this client.
        """
        failed = self._authinfo.getName().upper()
        retryable = code in (504, 534, 538) or (code == 535 and failed not in (b"PLAIN", b"LOGIN"))
        if self._authCandidates and retryable:
            self._nextAuthenticator()
        elif code in (535, 534, 538, 454, 530):
            self.esmtpAUTHDeclined(code, resp)
        else:
            self.esmtpAUTHServerError(code, resp)

    def esmtpState_challenge(self, code, resp) -> None:
        self._authResponse(self._authinfo, resp)

    def _authResponse(self, auth, challenge) -> None:
        try:
            decoded = base64.b64decode(challenge, validate=True)
        except (binascii.Error, ValueError):
            self.sendLine(b"*")
            self._expected = _ANY
            self._okresponse = self._failresponse = self.esmtpAUTHMalformedChallenge
            return
        response = auth.challengeResponse(self.secret, decoded)
        self._expected = [235, 334]
        self._okresponse = self.smtpState_maybeAuthenticated
        self._failresponse = self._authRefused
        self._sendSecret(base64.b64encode(response), b"*****")

    def smtpState_maybeAuthenticated(self, code, resp) -> None:
        if code == 235:
            self._authinfo = None
            self.smtpState_from(code, resp)
        else:
            self._authResponse(self._authinfo, resp)


class LMTPClient(ESMTPClient):
    """
    An LMTP client (RFC 2033): LHLO, and after the message one reply per
    accepted recipient.  L{sentMail <SMTPClient.sentMail>} gets, in
    C{addresses}, each recipient's final C{(address, code, resp)}: the RCPT
    refusal, or the reply after the message.
    """

    heloFallback = False
    useChunking = False

    def __init__(self, identity, logsize: int = 10, secret=None, contextFactory=None) -> None:
        ESMTPClient.__init__(self, secret, contextFactory, identity, logsize)

    def esmtpState_ehlo(self, code, resp) -> None:
        self._expected = SUCCESS
        self._okresponse = self.esmtpState_serverConfig
        self._failresponse = self.esmtpEHLORequired
        self.sendLine(b"LHLO " + self.identity)

    def _pipelining(self) -> bool:
        return True  # RFC 2033: required of every LMTP server

    def _endOfDataReplies(self) -> int:
        return len(self._lmtpPending)

    def _startTransfer(self, chunked: bool) -> None:
        self._lmtpPending = [i for i, (_, code, _) in enumerate(self.toAddressesResult) if code in SUCCESS]
        self._lmtpResults = {}
        ESMTPClient._startTransfer(self, chunked)
        self._expected = _ANY
        self._okresponse = self._failresponse = self.smtpState_recipient

    def smtpState_recipient(self, code, resp) -> None:
        """
        The reply for the next accepted recipient, after the message.
        """
        if 300 <= code < 400:
            return self._wrongReply(code, resp)
        self._lmtpResults[self._lmtpPending.pop(0)] = self._recipientReply(None, code, resp)
        if self._lmtpPending:
            return
        self._producer = None
        results = []
        for i, rcpt in enumerate(self.toAddressesResult):
            final = self._lmtpResults.get(i, rcpt)
            results.append(RecipientReply(rcpt[0], final[1], final[2], final.reply))
        self.toAddressesResult = results
        self.successAddresses = [address for address, finalCode, _ in results if finalCode in SUCCESS]
        # As with SMTP, the message counts as sent if anyone got it; each
        # recipient's outcome is in the addresses.
        finals = [self._lmtpResults[i] for i in sorted(self._lmtpResults)]
        delivered = [final for final in finals if final[1] in SUCCESS]
        first = (delivered or finals)[0]
        self._messageDone(first[1], first[2], first.reply)
