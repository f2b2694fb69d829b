# -*- test-case-name: mailproto.test.test_sink -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The mail sink behind C{mailproto sink}: an SMTP or LMTP server for people
debugging the mail their programs send.  It accepts every sender and every
recipient and shows each message it receives, and can keep it in a Maildir
or an mbox.

  - L{Sink} is the L{IMessageDeliveryFactory} to give a server factory (see
    L{makeSinkFactory}); each transaction gets a L{SinkTransaction}, an
    L{IMessageDelivery} whose messages provide L{IMessageStream}.  A
    message for several recipients is handled once, with all of them.
  - The outputs: L{MessagePrinter} (the envelope and the whole message),
    L{SummaryPrinter} (one line per message); L{MaildirStore} and
    L{MboxStore} to keep the messages.
  - L{SinkServer} listens on Twisted server endpoints and says where, with
    L{describePort}.

The message is never held in memory as a whole: it is written as it comes
in, to the Maildir's C{tmp/} file or to a C{tempfile.SpooledTemporaryFile}
that stays in memory only while small.  The sink adds no trace header: it
keeps and shows exactly what the client sent, after dot-unstuffing.
"""

from __future__ import annotations

import codecs
import datetime
import email.header
import mailbox
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from zope.interface import implementer

from mailproto._address import Address, User
from mailproto._backlog import withBacklog
from mailproto._commands import MailFrom, formatMailFrom, formatRcptTo
from mailproto._errors import SMTPServerError
from mailproto._server import ESMTPFactory, LMTPFactory
from mailproto.interfaces import IMessageDelivery, IMessageDeliveryFactory, IMessageStream

__all__ = [
    "Envelope",
    "ListenError",
    "MaildirStore",
    "MboxStore",
    "MessagePrinter",
    "ReceivedMessage",
    "Sink",
    "SinkServer",
    "SinkTransaction",
    "SummaryPrinter",
    "describePort",
    "makeSinkFactory",
]

_log = Logger()

#: How large a spooled message may grow in memory before it goes to disk.
SPOOL_MEMORY_LIMIT = 1024 * 1024

#: The longest Subject kept for a summary line, in octets.
_MAX_SUBJECT = 4096

#: How many names a Maildir tries before giving up on tmp/.
_MAILDIR_ATTEMPTS = 10

#: How much of a message the printer reads at a time.
_READ_SIZE = 65536


def _text(value: bytes | None) -> str:
    """
    @return: C{value} decoded as UTF-8, undecodable octets replaced.
    """
    return "" if value is None else value.decode("utf-8", "replace")


def _oneLine(text: str) -> str:
    """
    @return: C{text} with its control characters (line ends, tabs, ...)
        turned into spaces, so that it fits on one line.
    """
    return "".join(" " if ch < " " or ch == "\x7f" else ch for ch in text)


def _localTime(when: float) -> str:
    """
    @return: C{when} as local time, such as C{2024-05-01 14:03:07+02:00}.
    """
    return datetime.datetime.fromtimestamp(when).astimezone().isoformat(" ", "seconds")


@dataclass
class Envelope:
    """
    Who sent a message, and to whom, as the SMTP transaction said.

    @ivar helo: the client's name for itself (HELO, EHLO or LHLO).
    @ivar client: the client's address: an IP address, or C{b"unix"}.
    @ivar sender: the envelope sender (C{MAIL FROM}).
    @ivar mail: the C{MAIL} command, with its ESMTP parameters.
    @ivar recipients: the recipients, in order, each with its C{RCPT}
        command as C{user.rcpt}.
    @ivar received: when the message began to arrive, in seconds since the
        epoch.
    """

    helo: bytes | None
    client: bytes
    sender: Address
    mail: MailFrom | None = None
    recipients: list[User] = field(default_factory=list)
    received: float = 0.0

    def describeClient(self) -> str:
        """
        @return: the client, such as C{client.example [192.0.2.7]}.
        """
        return f"{_text(self.helo) or 'unknown'} [{_text(self.client)}]"

    def mailCommand(self) -> str:
        """
        @return: the C{MAIL FROM} command with its parameters.
        """
        if self.mail is not None:
            try:
                return _text(formatMailFrom(self.mail))
            except (ValueError, SMTPServerError):
                pass
        return f"MAIL FROM:<{_text(bytes(self.sender))}>"

    def rcptCommands(self) -> list[str]:
        """
        @return: one C{RCPT TO} command, with its parameters, per recipient.
        """
        commands = []
        for user in self.recipients:
            command = None
            if user.rcpt is not None:
                try:
                    command = _text(formatRcptTo(user.rcpt))
                except (ValueError, SMTPServerError):
                    pass
            commands.append(command or f"RCPT TO:<{_text(bytes(user.dest))}>")
        return commands


@dataclass
class ReceivedMessage:
    """
    A message the sink has received, as its printers see it.

    @ivar number: the message's number, counting from 1 since the sink
        started.
    @ivar envelope: the envelope.
    @ivar size: the size of the message in octets, as received (lines
        ending in CRLF, dot-unstuffed).
    @ivar content: the message, a binary file positioned at its start; or
        C{None} when no printer asked for it.
    @ivar subject: the decoded C{Subject} header field; C{None} when the
        message has none, or when no printer asked for it.
    @ivar location: where the message was stored, or C{None}.
    @ivar error: why storing the message failed, or C{None}.
    """

    number: int
    envelope: Envelope
    size: int
    content: object = None
    subject: str | None = None
    location: str | None = None
    error: str | None = None


class _SubjectFinder:
    """
    Find the C{Subject} field in the header section of a message fed in
    whole lines, keeping no more than the field.
    """

    def __init__(self) -> None:
        self.inHeader = True
        self._collecting = False
        self._raw = bytearray()
        self._found = False

    def feed(self, data: bytes) -> None:
        """
        @param data: the next lines of the message, each ending in CRLF.
        """
        if not self.inHeader:
            return
        for line in data.split(b"\r\n")[:-1]:
            if line[:1] in (b" ", b"\t"):
                if self._collecting and len(self._raw) < _MAX_SUBJECT:
                    self._raw += line[: _MAX_SUBJECT - len(self._raw)]
                continue
            self._collecting = False
            name, colon, value = line.partition(b":")
            if not line or not colon or b" " in name.strip(b" \t") or not name:
                # An empty line (or one that is no header field) ends the
                # header section.
                self.inHeader = False
                return
            if not self._found and name.strip(b" \t").lower() == b"subject":
                self._found = self._collecting = True
                self._raw = bytearray(value[:_MAX_SUBJECT])

    @property
    def subject(self) -> str | None:
        """
        The Subject, unfolded, its encoded words (RFC 2047) decoded; or
        C{None} if the message has none.
        """
        if not self._found:
            return None
        raw = _text(bytes(self._raw)).strip()
        try:
            decoded = str(email.header.make_header(email.header.decode_header(raw)))
        except Exception:
            decoded = raw
        return _oneLine(decoded).strip()


class MessagePrinter:
    """
    Print each message: a line with the client, one line per envelope
    command, the message (decoded as UTF-8, line ends shown as newlines),
    and a closing line.
    """

    needsContent = True
    needsSubject = False
    marker = "----------"

    def __init__(self, out) -> None:
        """
        @param out: the text stream to print to, such as C{sys.stdout}.
        """
        self.out = out

    def show(self, message: ReceivedMessage) -> None:
        """
        Print a message.

        @param message: the message, its C{content} positioned at its start.
        """
        envelope, marker, write = message.envelope, self.marker, self.out.write
        write(
            f"{marker} message {message.number} from {_oneLine(envelope.describeClient())}"
            f" at {_localTime(envelope.received)}\n"
        )
        write(f"{marker} {envelope.mailCommand()}\n")
        for command in envelope.rcptCommands():
            write(f"{marker} {command}\n")
        endsInNewline = self._copyText(message.content, write)
        if not endsInNewline:
            write("\n")
        ending = f"{marker} end of message {message.number}, {message.size} octets"
        if message.location is not None:
            ending += f", stored in {message.location}"
        if message.error is not None:
            ending += f", NOT STORED: {message.error}"
        write(ending + "\n")
        self.out.flush()

    @staticmethod
    def _copyText(content, write) -> bool:
        """
        Write a message as text: UTF-8, undecodable octets replaced, CRLF
        shown as a newline.

        @return: whether the text ended with a newline (or was empty).
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held = b""
        last = "\n"
        while True:
            chunk = content.readline(_READ_SIZE)
            if not chunk:
                break
            chunk = held + chunk
            held = b""
            if chunk.endswith(b"\r\n"):
                chunk = chunk[:-2] + b"\n"
            elif chunk.endswith(b"\r"):
                # Perhaps the first half of a CRLF cut by the read size.
                chunk, held = chunk[:-1], b"\r"
            text = decoder.decode(chunk)
            if text:
                write(text)
                last = text
        text = decoder.decode(held, final=True)
        if text:
            write(text)
            last = text
        return last.endswith("\n")


class SummaryPrinter:
    """
    Print one line per message: when, the client, the sender, the
    recipients, the size in octets and the Subject, if any.
    """

    needsContent = False
    needsSubject = True

    def __init__(self, out) -> None:
        """
        @param out: the text stream to print to, such as C{sys.stdout}.
        """
        self.out = out

    def show(self, message: ReceivedMessage) -> None:
        """
        Print a message's line.

        @param message: the message.
        """
        envelope = message.envelope
        recipients = ",".join(f"<{_text(bytes(user.dest))}>" for user in envelope.recipients)
        line = (
            f"{_localTime(envelope.received)} {envelope.describeClient()}"
            f" from=<{_text(bytes(envelope.sender))}> to={recipients} size={message.size}"
        )
        if message.location is not None:
            line += f" stored={message.location}"
        if message.error is not None:
            line += f" NOT-STORED={message.error}"
        if message.subject is not None:
            line += f" subject={message.subject}"
        self.out.write(_oneLine(line) + "\n")
        self.out.flush()


class _SpoolWriter:
    """
    A message kept in a spool file: in memory while small, then on disk.
    """

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_LIMIT)

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> str | None:
        """
        @return: where the message was stored: nowhere.
        """
        return None

    def close(self) -> None:
        self.file.close()

    abort = close


class MaildirStore:
    """
    Keep each message in a Maildir: written into C{tmp/} under a unique
    name as it arrives, then renamed into C{new/}, so that a reader never
    sees half a message.  The file holds the message exactly as received,
    lines ending in CRLF.

    @ivar path: the Maildir.
    """

    streaming = True

    def __init__(self, path: str) -> None:
        """
        Make the Maildir (C{tmp}, C{new} and C{cur}) if it is not there.

        @param path: the Maildir.
        @raise OSError: if it cannot be made or written to.
        """
        self.path = os.path.abspath(path)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
        for sub in ("tmp", "new"):
            where = os.path.join(self.path, sub)
            if not os.access(where, os.W_OK | os.X_OK):
                raise PermissionError(f"cannot write to {where}")
        host = socket.gethostname() or "localhost"
        self._host = host.replace("/", r"\057").replace(":", r"\072")
        self._counter = 0

    def describe(self) -> str:
        """
        @return: a description for people, such as C{Maildir /var/mail/x}.
        """
        return f"Maildir {self.path}"

    def _uniqueName(self) -> str:
        now = time.time()
        seconds = int(now)
        self._counter += 1
        return f"{seconds}.M{int((now - seconds) * 1e6)}P{os.getpid()}Q{self._counter}.{self._host}"

    def open(self) -> _MaildirWriter:
        """
        Begin a message.

        @return: its writer.
        @raise OSError: if no file could be made in C{tmp/}.
        """
        for attempt in range(_MAILDIR_ATTEMPTS):
            name = self._uniqueName()
            path = os.path.join(self.path, "tmp", name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if attempt == _MAILDIR_ATTEMPTS - 1:
                    raise
                continue
            return _MaildirWriter(os.fdopen(fd, "w+b"), path, os.path.join(self.path, "new", name))
        raise AssertionError("unreachable")  # pragma: no cover


class _MaildirWriter:
    """
    One message being written into a Maildir.

    @ivar file: the file in C{tmp/}, open for reading and writing; after
        L{commit}, still open on the file now in C{new/}.
    """

    def __init__(self, file, tmpPath: str, newPath: str) -> None:
        self.file = file
        self._tmpPath = tmpPath
        self._newPath = newPath
        self._committed = False

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> str:
        """
        Put the message in C{new/}.

        @return: its path.
        @raise OSError: if it could not be.
        """
        self.file.flush()
        os.fsync(self.file.fileno())
        os.rename(self._tmpPath, self._newPath)
        self._committed = True
        return self._newPath

    def close(self) -> None:
        self.file.close()

    def abort(self) -> None:
        """
        Throw the message away.
        """
        self.file.close()
        if not self._committed:
            try:
                os.unlink(self._tmpPath)
            except OSError:
                _log.failure("Could not remove {path}", path=self._tmpPath)


class MboxStore:
    """
    Append each message to an mbox file with the standard library's
    C{mailbox.mbox}: the message is spooled while it arrives, then added
    with the mailbox locked.  The mbox format turns CRLF into LF and quotes
    body lines that begin with C{"From "}.

    @ivar path: the mbox file.
    """

    streaming = False

    def __init__(self, path: str) -> None:
        """
        Open the mbox, making it if it is not there.

        @param path: the mbox file.
        @raise OSError: if it cannot be opened.
        """
        self.path = os.path.abspath(path)
        self._box = None
        self._identity = None
        self._openBox()

    def describe(self) -> str:
        """
        @return: a description for people, such as C{mbox /tmp/mail.mbox}.
        """
        return f"mbox {self.path}"

    def _openBox(self) -> mailbox.mbox:
        """
        @return: the mailbox, opened again if the file was removed or
            replaced since it was last opened.
        """
        try:
            stat = os.stat(self.path)
            identity = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            identity = None
        if self._box is None or identity != self._identity:
            if self._box is not None:
                self._box.close()
                self._box = None
            if identity is None:
                # Private from the start, whatever the umask (as the
                # Maildir's files are).
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            self._box = mailbox.mbox(self.path, create=True)
            stat = os.stat(self.path)
            self._identity = (stat.st_dev, stat.st_ino)
        return self._box

    def open(self) -> _MboxWriter:
        """
        Begin a message.

        @return: its writer.
        """
        return _MboxWriter(self)

    def add(self, spool) -> str:
        """
        Append a message.

        @param spool: the message, a binary file at its start.
        @return: a description of where it went.
        @raise OSError: if it could not be written.
        @raise mailbox.Error: if the mbox is locked by another program.
        """
        box = self._openBox()
        box.lock()
        try:
            box.add(spool)
            box.flush()
        finally:
            box.unlock()
        return self.path

    def close(self) -> None:
        """
        Close the mbox.
        """
        if self._box is not None:
            self._box.close()
            self._box = None


class _MboxWriter(_SpoolWriter):
    """
    A message spooled on its way into an mbox.
    """

    def __init__(self, store: MboxStore) -> None:
        _SpoolWriter.__init__(self)
        self._store = store

    def commit(self) -> str:
        self.file.seek(0)
        return self._store.add(self.file)


@implementer(IMessageDeliveryFactory)
class Sink:
    """
    Accept all mail and show it: the L{IMessageDeliveryFactory} of the
    sink's servers.

    @ivar store: where messages are kept (a L{MaildirStore} or an
        L{MboxStore}), or C{None}.
    @ivar printer: what shows each message (a L{MessagePrinter} or a
        L{SummaryPrinter}), or C{None}.
    @ivar received: how many messages were received and handled.
    """

    def __init__(self, store=None, printer=None, now=time.time) -> None:
        """
        @param store: see L{Sink.store}.
        @param printer: see L{Sink.printer}.
        @param now: returns the time, in seconds since the epoch.
        """
        self.store = store
        self.printer = printer
        self.now = now
        self.received = 0

    def getMessageDelivery(self) -> SinkTransaction:
        """
        @return: the delivery for the next transaction.
        """
        return SinkTransaction(self)

    def openWriter(self):
        """
        Begin keeping a message: in the store, or in a spool if a printer
        needs it.

        @return: the writer (C{write}, C{commit}, C{abort}, C{close} and a
            C{file}), or C{None} if the message needs not be kept.
        @raise OSError: if it could not be begun.
        """
        if self.store is not None:
            return self.store.open()
        if self.printer is not None and self.printer.needsContent:
            return _SpoolWriter()
        return None

    def handled(self, message: ReceivedMessage) -> None:
        """
        Show a message that has been received (and stored, or not).

        @param message: the message.
        """
        if self.printer is None:
            return
        if message.content is not None:
            message.content.seek(0)
        try:
            self.printer.show(message)
        except Exception:
            _log.failure("Could not print message {number}", number=message.number)

    def close(self) -> None:
        """
        Close the store.
        """
        closeStore = getattr(self.store, "close", None)
        if closeStore is not None:
            closeStore()


@implementer(IMessageDelivery)
class SinkTransaction:
    """
    One transaction of a sink's server: accepts any sender and recipient,
    adds no trace header, and handles the message once for all its
    recipients.

    The server makes one message object per recipient: the first one
    receives the data, and all of them answer for the one handling at the
    end of data (so an LMTP client gets the same reply for each).
    """

    def __init__(self, sink: Sink) -> None:
        """
        @param sink: the sink.
        """
        self.sink = sink
        self.envelope = None
        self._writer = None
        self._subject = None
        self._size = 0
        self._copies = 0
        self._result = None
        self._over = False

    def receivedHeader(self, helo, origin, recipients):
        """
        @return: C{None}: the sink shows what the client sent.
        """
        return None

    def validateFrom(self, helo, origin):
        """
        Accept any sender.
        """
        self.envelope = Envelope(helo[0], helo[1], origin)
        return origin

    def validateTo(self, user):
        """
        Accept any recipient.
        """
        return lambda: self._copyFor(user)

    def _copyFor(self, user) -> _SinkMessage:
        """
        Make the message object of one recipient; the first begins the
        message.
        """
        first = self._copies == 0
        self._copies += 1
        envelope = self.envelope
        if envelope is None:
            envelope = self.envelope = Envelope(user.helo[0], user.helo[1], user.orig)
        if first:
            envelope.mail = user.mail
            envelope.received = self.sink.now()
            try:
                self._writer = self.sink.openWriter()
            except OSError as e:
                _log.error("Could not begin storing a message: {error}", error=e)
                raise SMTPServerError(451, f"Cannot store the message: {e.strerror or e}", b"4.3.0") from None
            if self.sink.printer is not None and self.sink.printer.needsSubject:
                self._subject = _SubjectFinder()
        envelope.recipients.append(user)
        return _SinkMessage(self, first)

    def dataReceived(self, data: bytes) -> None:
        """
        Take the next lines of the message.

        @raise SMTPServerError: if they could not be kept.
        """
        if self._over:
            return
        self._size += len(data)
        if self._subject is not None:
            self._subject.feed(data)
        if self._writer is not None:
            try:
                self._writer.write(data)
            except OSError as e:
                _log.error("Could not store a message: {error}", error=e)
                raise SMTPServerError(452, f"Cannot store the message: {e.strerror or e}", b"4.3.1") from None

    def finish(self) -> defer.Deferred:
        """
        The message is complete: store it, print it.  Only the first call
        does anything.

        @return: a C{Deferred} that fires with C{None} if the message was
            handled, or fails with the reply for the client.
        """
        if self._result is None:
            self._result = self._handle()
        if isinstance(self._result, SMTPServerError):
            return defer.fail(self._result)
        return defer.succeed(None)

    def _handle(self):
        self._over = True
        sink = self.sink
        sink.received += 1
        writer, self._writer = self._writer, None
        message = ReceivedMessage(sink.received, self.envelope, self._size)
        if self._subject is not None:
            message.subject = self._subject.subject
        result = True
        try:
            if writer is not None:
                try:
                    message.location = writer.commit()
                except (OSError, mailbox.Error) as e:
                    message.error = str(e)
                    _log.error("Could not store message {number}: {error}", number=message.number, error=e)
                    result = SMTPServerError(451, "Cannot store the message", b"4.3.0")
                if sink.printer is not None and sink.printer.needsContent:
                    message.content = writer.file
            sink.handled(message)
        finally:
            if writer is not None:
                if isinstance(result, SMTPServerError):
                    writer.abort()
                else:
                    writer.close()
        return result

    def abort(self) -> None:
        """
        The message will not be completed: throw it away.
        """
        if self._over:
            return
        self._over = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()


@implementer(IMessageStream)
class _SinkMessage:
    """
    One recipient's copy of a message in a L{SinkTransaction}.
    """

    def __init__(self, transaction: SinkTransaction, receives: bool) -> None:
        """
        @param transaction: the transaction.
        @param receives: whether this copy passes the data on; the others
            ignore it.
        """
        self._transaction = transaction
        self._receives = receives

    def dataReceived(self, data: bytes) -> None:
        if self._receives:
            self._transaction.dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self.dataReceived(line + b"\r\n")

    def eomReceived(self) -> defer.Deferred:
        return self._transaction.finish()

    def connectionLost(self) -> None:
        self._transaction.abort()


def makeSinkFactory(
    sink: Sink,
    lmtp: bool = False,
    hostname: str | None = None,
    maxMessageSize: int | None = None,
    contextFactory=None,
    clock=None,
) -> ESMTPFactory:
    """
    Make the server factory of a sink.

    @param sink: the sink.
    @param lmtp: whether to speak LMTP instead of ESMTP.
    @param hostname: the server's name; the machine's if C{None}.
    @param maxMessageSize: the largest message, in octets (C{0} for no
        limit); the server's default if C{None}.
    @param contextFactory: the TLS context factory for STARTTLS, or
        C{None}.
    @param clock: the C{IReactorTime} for timeouts; the reactor if C{None}.
    @return: an L{ESMTPFactory} or L{LMTPFactory}.
    """
    limits = {}
    if maxMessageSize is not None:
        limits["maxMessageSize"] = maxMessageSize
    factoryClass = LMTPFactory if lmtp else ESMTPFactory
    return factoryClass(
        deliveryFactory=sink,
        domain=None if hostname is None else hostname.encode("ascii"),
        contextFactory=contextFactory,
        clock=clock,
        **limits,
    )


def describePort(description: str, address) -> str:
    """
    Say where a server listens, for people: C{127.0.0.1 port 1025},
    C{UNIX socket /run/sink.sock}.

    @param description: the endpoint description it was made from.
    @param address: the listening port's C{getHost()}.
    @return: the description.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        where = f"{address.host} port {address.port}"
    elif isinstance(address, UNIXAddress):
        name = address.name
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        where = f"UNIX socket {name}"
    else:
        where = str(address)
    if description.split(":", 1)[0].strip().lower() == "ssl":
        where += " with implicit TLS"
    return where


class ListenError(Exception):
    """
    A sink could not listen on an endpoint.

    @ivar description: the endpoint description.
    @ivar error: the exception that said why.
    """

    def __init__(self, description: str, error: BaseException) -> None:
        Exception.__init__(self, description, error)
        self.description = description
        self.error = error

    def __str__(self) -> str:
        return f"cannot listen on {self.description}: {self.error}"


class SinkServer:
    """
    Listen for a sink's clients on Twisted server endpoints.

    @ivar ports: the listening ports, as C{(description, port)} pairs,
        once L{start} has succeeded.
    """

    def __init__(self, reactor, factory, descriptions) -> None:
        """
        @param reactor: the reactor.
        @param factory: the server factory (see L{makeSinkFactory}).
        @param descriptions: the endpoint descriptions (strings for
            C{serverFromString}).
        """
        self.reactor = reactor
        self.factory = factory
        self.descriptions = list(descriptions)
        self.ports = []

    def start(self) -> defer.Deferred:
        """
        Listen on every endpoint.  If one fails, the others stop.

        @return: a C{Deferred} firing with L{ports}, or failing with a
            L{ListenError} for the first endpoint that failed.
        """
        listening = []
        for description in self.descriptions:
            try:
                endpoint = serverFromString(self.reactor, withBacklog(description))
                d = endpoint.listen(self.factory)
            except Exception:
                d = defer.fail()
            d.addCallback(lambda port, description=description: (description, port))
            d.addErrback(lambda failure, description=description: defer.fail(ListenError(description, failure.value)))
            listening.append(d)

        def listened(results):
            failures = [result for ok, result in results if not ok]
            self.ports = [result for ok, result in results if ok]
            if failures:
                stopped = self.stop()
                stopped.addCallback(lambda ignored: failures[0])
                return stopped
            return self.ports

        return defer.DeferredList(listening, consumeErrors=True).addCallback(listened)

    def stop(self) -> defer.Deferred:
        """
        Stop listening.

        @return: a C{Deferred} that fires when every port has stopped.
        """
        ports, self.ports = self.ports, []
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for description, port in ports], consumeErrors=True
        )
