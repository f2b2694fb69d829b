# -*- test-case-name: mailproto.test.test_maildrop -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{mailproto sendmail}: a sendmail(8)-compatible way in for cron, PHP's
C{mail()} and shell scripts, with the message on stdin.

The message is read from stdin a line at a time (a lone C{.} line ends it
unless C{-i}), its line ends made CRLF (a bare LF or a bare CR too, as the
server's L{BareNewlinePolicy.NORMALIZE <mailproto._data.BareNewlinePolicy>}
does), its header fixed up (C{Bcc:} removed; C{From:}, C{Date:} and
C{Message-ID:} added when missing) and kept in a temporary file, so that
memory stays bounded whatever its size.  Then it is handed over:

  1. by SMTP to the local relay (L{DEFAULT_SERVER}, or C{--server} or
     C{MAILPROTO_SUBMIT}: C{HOST:PORT} or C{unix:PATH}), with mailproto's
     own client (L{mailproto.client});
  2. if no connection can be made, and a spool is known (C{--spool} or
     C{MAILPROTO_SPOOL}), into the relay's spool, durably, with
     L{Queue.newMessage <mailproto._queue.Queue.newMessage>}, as Postfix's
     maildrop: only while no relay holds the spool's lock (a relay that
     holds it but does not answer means "try again later").  The relay
     sends it when it starts, at once (its queue recovery loads it, due
     now).

The exit status says what happened, with the values of C{sysexits.h}
(L{EX_OK}, L{EX_USAGE}, ...); every error is one line on stderr.
"""

from __future__ import annotations

import dataclasses
import email.utils
import errno
import getopt
import os
import re
import sys
import tempfile
import time

from twisted.internet import defer
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.task import deferLater
from twisted.python import usage

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77

PROGRAM = "mailproto sendmail"

#: Where the relay is reached when neither C{--server} nor
#: C{MAILPROTO_SUBMIT} says.
DEFAULT_SERVER = "127.0.0.1:25"

#: The environment variables read.
SUBMIT_VARIABLE = "MAILPROTO_SUBMIT"
SPOOL_VARIABLE = "MAILPROTO_SPOOL"
ORIGIN_VARIABLE = "MAILPROTO_ORIGIN"

#: Octets read from stdin at a time (a longer line is read in pieces).
CHUNK = 64 * 1024

#: The largest message header taken, in octets.
MAX_HEADER = 1024 * 1024

#: Octets of the prepared message kept in memory before it spills into a
#: temporary file.
IN_MEMORY = 1024 * 1024

#: Seconds to wait for the spool's lock while another command (not a
#: relay) holds it.
LOCK_WAIT = 10.0

#: Seconds for connecting to the relay, and for each of its replies.
CONNECT_TIMEOUT = 30.0
REPLY_TIMEOUT = 300.0

# The options of sendmail(8) taken; those with a ":" take a value.
_SHORT = "B:b:C:F:f:h:iL:mN:nO:o:p:R:r:tUV:v"
_LONG = ["server=", "spool=", "help", "version"]

# Header fields whose addresses are recipients with -t.
_RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")
_RESENT_FIELDS = (b"resent-to", b"resent-cc", b"resent-bcc")

_fieldName = re.compile(rb"[!-9;-~]+:")


class SendmailError(Exception):
    """
    What ends the command: an exit status and a one-line message.

    @ivar status: the exit status (one of the C{EX_*} values).
    @ivar message: what went wrong, one line, for stderr.
    """

    def __init__(self, status: int, message: str) -> None:
        Exception.__init__(self, status, message)
        self.status = status
        self.message = message


@dataclasses.dataclass
class SendmailConfig:
    """
    What a C{sendmail} command line asks for.

    @ivar extract: C{-t}: recipients from the header's C{To:}, C{Cc:} and
        C{Bcc:} too.
    @ivar sender: C{-f}/C{-r}: the envelope sender as given (C{""} or
        C{"<>"} for the null sender), or C{None} for the default.
    @ivar ignoreDots: C{-i}/C{-oi}: a lone C{.} line does not end the
        message.
    @ivar fullName: C{-F}: the full name for an added C{From:}, or C{None}.
    @ivar bodyType: C{-B}: C{"7BIT"} or C{"8BITMIME"}, or C{None} (then
        found from the message).
    @ivar recipients: the recipients given as arguments.
    @ivar server: where the relay is: C{HOST:PORT} or C{unix:PATH}.
    @ivar spool: the relay's spool directory, for when it is down; or
        C{None}.
    @ivar verbose: C{-v}: say on stderr how the message went.
    @ivar ignored: the options taken and ignored, as given.
    @ivar help: C{--help} was given.
    @ivar version: C{--version} was given.
    """

    extract: bool = False
    sender: str | None = None
    ignoreDots: bool = False
    fullName: str | None = None
    bodyType: str | None = None
    recipients: list = dataclasses.field(default_factory=list)
    server: str = DEFAULT_SERVER
    spool: str | None = None
    verbose: bool = False
    ignored: list = dataclasses.field(default_factory=list)
    help: bool = False
    version: bool = False


def parseArguments(argv: list[str], environ) -> SendmailConfig:
    """
    Parse a sendmail(8) command line, as sendmail's own C{getopt} does:
    options may be grouped (C{-ti}), a value may follow its option at once
    (C{-oi}, C{-fme@example.com}) or as the next argument, and options and
    recipients may come in any order (C{--} ends the options).

    @param argv: the arguments, without the program name.
    @param environ: the environment (C{MAILPROTO_SUBMIT}, C{MAILPROTO_SPOOL}).
    @return: the configuration.
    @raise SendmailError: with L{EX_USAGE}, for an option that is not known
        or not supported.
    """
    for argument in argv:
        if argument == "--":
            break
        if argument.startswith(("-q", "-X")):
            raise SendmailError(EX_USAGE, f"{argument[:2]}: option not supported (see 'mailproto queue' for the queue)")
    try:
        options, arguments = getopt.gnu_getopt(list(argv), _SHORT, _LONG)
    except getopt.GetoptError as e:
        raise SendmailError(EX_USAGE, f"{e}") from None
    config = SendmailConfig(server=environ.get(SUBMIT_VARIABLE) or DEFAULT_SERVER, spool=environ.get(SPOOL_VARIABLE) or None)
    for option, value in options:
        if option == "-t":
            config.extract = True
        elif option == "-i":
            config.ignoreDots = True
        elif option in ("-f", "-r"):
            config.sender = value
        elif option == "-F":
            config.fullName = value
        elif option == "-v":
            config.verbose = True
        elif option == "-B":
            if value.upper() not in ("7BIT", "8BITMIME"):
                raise SendmailError(EX_USAGE, f"-B {value}: the body type is 7BIT or 8BITMIME")
            config.bodyType = value.upper()
        elif option == "-o":
            if value == "i":
                config.ignoreDots = True
            else:
                config.ignored.append(f"-o{value}")
        elif option == "-b":
            if value != "m":
                raise SendmailError(EX_USAGE, f"-b{value}: only -bm (read a message from stdin and send it) is supported")
            config.ignored.append("-bm")
        elif option in ("-N", "-R", "-V", "-h", "-L", "-O", "-C", "-p"):
            config.ignored.append(f"{option} {value}")
        elif option in ("-m", "-n", "-U"):
            config.ignored.append(option)
        elif option == "--server":
            config.server = value
        elif option == "--spool":
            config.spool = value or None
        elif option == "--help":
            config.help = True
        elif option == "--version":
            config.version = True
    config.recipients = [argument for argument in arguments if argument.strip()]
    parseServer(config.server)
    return config


def parseServer(description: str) -> tuple:
    """
    @param description: C{HOST:PORT}, C{[IPV6]:PORT}, C{HOST} (port 25),
        or C{unix:PATH}.
    @return: C{("unix", path)} or C{("tcp", host, port)}.
    @raise SendmailError: with L{EX_USAGE} if it is none of them.
    """
    if description.startswith("unix:"):
        path = description[len("unix:") :]
        if not path:
            raise SendmailError(EX_USAGE, f"bad server {description!r}: no socket path after unix:")
        return ("unix", path)
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", description)
    if match is None:
        raise SendmailError(EX_USAGE, f"bad server {description!r}: expected HOST:PORT, [IPv6]:PORT or unix:PATH")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or 25)
    if not 0 < port < 65536:
        raise SendmailError(EX_USAGE, f"bad server {description!r}: the port is 1 to 65535")
    return ("tcp", host, port)


# -- who sends ---------------------------------------------------------------


@dataclasses.dataclass
class LocalUser:
    """
    The user running the command, as the message will say.

    @ivar name: the login name.
    @ivar uid: the user id.
    @ivar fullName: the full name from the password file (its GECOS
        field up to the first comma), or C{None}.
    @ivar domain: the domain of default and unqualified addresses.
    """

    name: str
    uid: int
    fullName: str | None
    domain: str


def localUser(environ) -> LocalUser:
    """
    Find who runs the command: the login name and full name of the real
    user id in the password file (else C{LOGNAME}, C{USER}, or the number),
    and the domain: C{MAILPROTO_ORIGIN}, else this host's fully qualified
    name.
    """
    uid = os.getuid()
    name, fullName = None, None
    try:
        import pwd

        entry = pwd.getpwuid(uid)
        name = entry.pw_name
        fullName = entry.pw_gecos.split(",", 1)[0].strip() or None
    except (ImportError, KeyError):
        name = environ.get("LOGNAME") or environ.get("USER")
    if not name:
        name = str(uid)
    domain = environ.get(ORIGIN_VARIABLE)
    if not domain:
        from mailproto._headers import localHostname

        domain = localHostname().decode("ascii", "replace")
    return LocalUser(name, uid, fullName, domain.rstrip("."))


def checkAddress(address: str, domain: str, what: str, allowNull: bool = False) -> bytes:
    """
    @param address: an address as given (C{<a@b>} or C{a@b}); a local
        part alone gets C{@domain}.
    @param what: what it is, for the error.
    @return: the address in wire form.
    @raise SendmailError: with L{EX_DATAERR} if it is not an address, or is
        null where that is not allowed.
    """
    from mailproto._address import Address
    from mailproto._errors import AddressError

    raw = address.strip().encode("utf-8", "surrogateescape")
    try:
        wire = bytes(Address(raw, domain.encode("idna") if not domain.isascii() else domain.encode("ascii")))
    except (AddressError, UnicodeError):
        raise SendmailError(EX_DATAERR, f"{what}: not an address: {address!r}") from None
    if not wire and not allowNull:
        raise SendmailError(EX_DATAERR, f"{what}: an empty address")
    return wire


def addressList(values: list[str], what: str) -> list[str]:
    """
    @param values: address lists, as in C{To:} or given on the command
        line (C{"a@b, Ann <c@d>"}); groups taken apart.
    @return: the addresses.
    @raise SendmailError: with L{EX_DATAERR} if a value does not parse.
    """
    found = []
    for value in values:
        pairs = email.utils.getaddresses([value])
        addresses = [address for name, address in pairs if address]
        if not addresses and not _emptyGroups(value):
            raise SendmailError(EX_DATAERR, f"{what}: cannot read the addresses in {_shorten(value)!r}")
        found.extend(addresses)
    return found


def _emptyGroups(value: str) -> bool:
    """
    @return: whether an address list is empty, or only empty groups (as
        C{undisclosed-recipients:;}).
    """
    return re.fullmatch(r"(\s*([^:;,<>@\"]*:\s*;)?\s*,?)*", value) is not None


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- the message ---------------------------------------------------------------


class _Input:
    """
    The message on stdin, read a line (or a piece of a long line) at a
    time, ending at end of file or, unless C{ignoreDots}, at a line that
    is only C{.}.
    """

    def __init__(self, source, ignoreDots: bool) -> None:
        self._source = source
        self._ignoreDots = ignoreDots
        self._atLineStart = True
        self.ended = False

    def readline(self, limit: int = CHUNK) -> bytes:
        """
        @return: the next line, or up to C{limit} octets of it; C{b""} at
            the end.
        @raise SendmailError: with L{EX_IOERR} if stdin cannot be read.
        """
        if self.ended:
            return b""
        try:
            chunk = self._source.readline(limit)
        except (OSError, ValueError) as e:
            raise SendmailError(EX_IOERR, f"cannot read the message from stdin: {getattr(e, 'strerror', None) or e}") from None
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogateescape")
        if not chunk or (self._atLineStart and not self._ignoreDots and chunk.rstrip(b"\r\n") == b"."):
            self.ended = True
            return b""
        self._atLineStart = chunk.endswith(b"\n")
        return chunk


@dataclasses.dataclass
class PreparedMessage:
    """
    A message read and fixed up, ready to go.

    @ivar file: the message, CRLF line ends, at its start.
    @ivar size: its size in octets.
    @ivar recipients: with C{-t}, the addresses of its C{To:}, C{Cc:} and
        C{Bcc:} fields (or of its C{Resent-To:}, C{Resent-Cc:} and
        C{Resent-Bcc:}, if it has any of these).
    @ivar eightBit: whether it has octets above 127.
    @ivar added: the names of the header fields added.
    """

    file: object
    size: int
    recipients: list
    eightBit: bool
    added: list


def _fields(lines: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """
    @param lines: header lines, without line ends.
    @return: C{(lowercase name, lines)} for each field.
    """
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
        else:
            fields.append((line.split(b":", 1)[0].strip().lower(), [line]))
    return fields


def _value(lines: list[bytes]) -> str:
    """
    @return: a field's unfolded value, as text.
    """
    return b"".join(lines).split(b":", 1)[1].decode("utf-8", "surrogateescape").strip()


def prepareMessage(source, out, *, ignoreDots: bool = False, extract: bool = False, addFrom: bytes, now: float | None = None) -> PreparedMessage:
    """
    Read a message and write it, fixed up, into C{out}.

    The header ends at the first empty line, or at the first line that is
    not a header field (an empty line is then put before it); a first line
    C{From } (an mbox separator) is dropped.  C{Bcc:} and C{Resent-Bcc:}
    fields are removed; C{From:} (C{addFrom}), C{Date:} and C{Message-ID:}
    are added after the other fields when the message has none.  Line ends
    become CRLF.

    @param source: a binary file (stdin's buffer).
    @param out: a binary file to write the message into.
    @param ignoreDots: whether a lone C{.} line is content, not the end.
    @param extract: whether to collect recipients from the header (C{-t}).
    @param addFrom: the C{From:} field to add, whole, without its line end.
    @param now: the time for C{Date:}; now if C{None}.
    @return: the L{PreparedMessage}, its C{file} being C{out}.
    @raise SendmailError: with L{EX_DATAERR} for a header that is too big or
        an address list that does not parse (with C{-t}); with L{EX_IOERR}
        if stdin cannot be read.
    """
    from mailproto._data import DotStuffer
    from mailproto._headers import messageid, rfc822date

    reader = _Input(source, ignoreDots)
    lines: list[bytes] = []
    headerSize = 0
    first = True
    bodyStart = None  # the first line of the body, if not after an empty line
    while True:
        line = reader.readline(MAX_HEADER + 1)
        if not line:
            break
        if first and line.startswith(b"From "):
            first = False
            continue
        first = False
        headerSize += len(line)
        if headerSize > MAX_HEADER:
            raise SendmailError(EX_DATAERR, f"the message header is larger than {MAX_HEADER // 1024} KiB")
        content = line.rstrip(b"\r\n")
        if not content:
            break
        if _fieldName.match(content) or (content[:1] in (b" ", b"\t") and lines):
            lines.append(content)
            continue
        bodyStart = line
        break
    fields = _fields(lines)
    names = {name for name, _ in fields}
    recipients: list[str] = []
    if extract:
        wanted = _RESENT_FIELDS if names & set(_RESENT_FIELDS) else _RECIPIENT_FIELDS
        for name, fieldLines in fields:
            if name in wanted:
                recipients.extend(addressList([_value(fieldLines)], f"{name.decode().title()}:"))
    kept = [fieldLines for name, fieldLines in fields if name not in (b"bcc", b"resent-bcc")]
    added = []
    if b"from" not in names:
        kept.append([addFrom])
        added.append("From")
    if b"date" not in names:
        date = rfc822date(time.localtime(now) if now is not None else None)
        kept.append([b"Date: " + date])
        added.append("Date")
    if b"message-id" not in names:
        kept.append([b"Message-ID: " + messageid()])
        added.append("Message-ID")

    stuffer = DotStuffer(stuff=False)
    size = 0
    eightBit = False

    def write(data: bytes) -> None:
        nonlocal size, eightBit
        if not data:
            return
        if not eightBit and not data.isascii():
            eightBit = True
        normal = stuffer.feed(data)
        size += len(normal)
        out.write(normal)

    for fieldLines in kept:
        for line in fieldLines:
            write(line + b"\r\n")
    write(b"\r\n")
    if bodyStart is not None:
        write(bodyStart)
    while True:
        chunk = reader.readline(CHUNK)
        if not chunk:
            break
        write(chunk)
    end = stuffer.finish()
    size += len(end)
    out.write(end)
    out.flush()
    out.seek(0)
    return PreparedMessage(out, size, recipients, eightBit, added)


def fromField(fullName: str | None, address: bytes) -> bytes:
    """
    @param fullName: the sender's full name, or C{None}.
    @param address: the sender's address, wire form.
    @return: a C{From:} field (RFC 2047-encoded name if not ASCII).
    """
    text = address.decode("utf-8", "surrogateescape")
    if fullName:
        value = email.utils.formataddr((fullName, text), charset="utf-8")
    else:
        value = text
    return b"From: " + value.encode("utf-8", "surrogateescape")


# -- handing it over -------------------------------------------------------------


class _NotConnected(Exception):
    """
    No connection to the relay could be made (so it got nothing).
    """


def _statusFor(reply, stage: str) -> int:
    """
    @return: the exit status for a refusal by the relay: L{EX_TEMPFAIL}
        for 4xx; for 5xx, L{EX_NOPERM} for a policy refusal (5.7.x),
        L{EX_NOUSER} at RCPT, L{EX_UNAVAILABLE} at the greeting, else
        L{EX_DATAERR}.
    """
    if reply is None or reply.code < 500:
        return EX_TEMPFAIL
    if reply.status is not None and reply.status.startswith(b"5.7."):
        return EX_NOPERM
    if stage == "RCPT":
        return EX_NOUSER
    if stage in ("greeting", "EHLO"):
        return EX_UNAVAILABLE
    return EX_DATAERR


async def submit(reactor, server: tuple, sender: bytes, recipients: list[bytes], message: PreparedMessage, helo: str) -> str:
    """
    Send the message to the relay by SMTP: all of it or nothing (a
    recipient refused means no message is sent).

    @param server: from L{parseServer}.
    @return: the relay's reply to the end of data, as text.
    @raise _NotConnected: if no connection could be made.
    @raise SendmailError: if the relay refused or failed.
    """
    from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint

    from mailproto._session import SMTPReplyError, connectEndpoint

    if server[0] == "unix":
        endpoint = UNIXClientEndpoint(reactor, server[1], timeout=CONNECT_TIMEOUT)
        where = f"unix:{server[1]}"
    else:
        endpoint = HostnameEndpoint(reactor, server[1], server[2], timeout=CONNECT_TIMEOUT)
        where = f"{server[1]} port {server[2]}"
    stage = "greeting"
    try:
        try:
            session = await connectEndpoint(endpoint, reactor, timeout=REPLY_TIMEOUT)
        except (ConnectError, DNSLookupError, OSError) as e:
            raise _NotConnected(f"cannot connect to the relay at {where}: {_connectReason(e)}") from None
        try:
            stage = "EHLO"
            try:
                await session.ehlo(helo)
            except SMTPReplyError as e:
                if e.reply is None or e.reply.code < 500:
                    raise
                await session.helo(helo)
            stage = "MAIL"
            params = {}
            if message.eightBit and b"8BITMIME" in session.extensions:
                params["body"] = "8BITMIME"
            if b"SIZE" in session.extensions:
                params["size"] = message.size
            await session.mail(sender, **params)
            stage = "RCPT"
            refused = []
            for recipient in recipients:
                try:
                    await session.rcpt(recipient)
                except SMTPReplyError as e:
                    if getattr(e, "isFatal", False):
                        raise
                    refused.append((recipient, e.reply))
            if refused:
                worst = max(refused, key=lambda r: (r[1] is not None and r[1].code >= 500, r[1].code if r[1] else 0))
                status = EX_TEMPFAIL if any(r is None or r.code < 500 for _, r in refused) else _statusFor(worst[1], "RCPT")
                shown = ", ".join(f"<{a.decode('utf-8', 'replace')}>: {_replyCode(r)}" for a, r in refused)
                try:
                    await session.quit()
                except Exception:
                    pass
                raise SendmailError(status, f"the relay refused recipients ({shown}); nothing sent")
            stage = "DATA"
            await session.data()
            stage = "end of data"
            reply = await session.sendFile(message.file)
            try:
                await session.quit()
            except Exception:
                pass
            return _replyCode(reply)
        finally:
            if not session.closed:
                session.close()
    except SMTPReplyError as e:
        raise SendmailError(_statusFor(e.reply, stage), f"the relay at {where} refused at {stage}: {_replyCode(e.reply)}") from None
    except (SendmailError, _NotConnected):
        raise
    except Exception as e:
        # Lost connection, timeout, protocol error: the relay may or may
        # not have the message; it said no 250, so it is not its.
        raise SendmailError(EX_TEMPFAIL, f"the relay at {where} failed at {stage}: {_oneLine(e)}") from None


def _replyCode(reply) -> str:
    if reply is None:
        return "no reply"
    return " ".join(reply.summary().split())


def _oneLine(error: BaseException) -> str:
    text = getattr(error, "resp", None)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text or str(error) or type(error).__name__
    return " ".join(str(text).split())


def _connectReason(error: BaseException) -> str:
    os_error = getattr(error, "osError", None)
    if isinstance(os_error, int):
        return os.strerror(os_error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return _oneLine(error).rstrip(".")


async def dropIntoSpool(reactor, spool: str, sender: bytes, recipients: list[bytes], message: PreparedMessage, user: LocalUser, why: str) -> str:
    """
    Put the message into the relay's spool, durably, while no relay runs
    on it: the spool's lock is taken first (and waited for up to
    L{LOCK_WAIT} seconds while another command, not a relay, has it).

    The envelope says where the message came from: client C{"sendmail"},
    HELO name the user's login name, origin trusted.  A C{Received:} field
    (C{by HOST (mailproto sendmail, from userid UID) id ID}) goes on top.

    When run as root on a spool owned by another user, the files are made
    as that user.

    @param why: why the relay was not used, for the errors.
    @return: the queue id.
    @raise SendmailError: L{EX_TEMPFAIL} if a relay holds the spool or the
        disk is full; L{EX_NOPERM} if the spool may not be written;
        L{EX_CANTCREAT} if the message cannot be written for another
        reason.
    """
    from mailproto._relayd._control import RelayNotRunning, SpoolBusy, SpoolLock, ask
    from mailproto._headers import rfc822date
    from mailproto._queue import TRUSTED, Envelope, Queue, Recipient, newMessageID

    lock = None
    with _asOwnerOf(spool):
        try:
            os.makedirs(spool, mode=0o700, exist_ok=True)
            lock = SpoolLock(spool)
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    lock.acquire()
                    break
                except SpoolBusy:
                    try:
                        await _relayAnswers(reactor, ask, spool)
                    except (RelayNotRunning, OSError, ValueError):
                        pass
                    else:
                        raise SendmailError(EX_TEMPFAIL, f"{why}, and a relay runs on the spool {spool}: try again later") from None
                    if time.monotonic() >= deadline:
                        raise SendmailError(EX_TEMPFAIL, f"{why}, and the spool {spool} is in use by another process: try again later") from None
                    await deferLater(reactor, 0.05, lambda: None)
            try:
                queue = Queue(spool, runInThread=lambda f, *args: defer.maybeDeferred(f, *args), lock=lock)
                queueID = newMessageID()
                envelope = Envelope(
                    id=queueID,
                    sender=sender,
                    recipients=[Recipient(r) for r in recipients],
                    received=time.time(),
                    body=b"8BITMIME" if message.eightBit else None,
                    client="sendmail",
                    helo=user.name,
                    origin=TRUSTED,
                )
                spoolFile = queue.newMessage(envelope)
                try:
                    from mailproto._headers import localHostname

                    host = localHostname()
                    spoolFile.write(
                        b"Received: by " + host + b" (mailproto sendmail, from userid " + str(user.uid).encode() + b")\r\n"
                        b"\tid " + queueID.encode("ascii") + b"; " + rfc822date() + b"\r\n"
                    )
                    while True:
                        chunk = message.file.read(CHUNK)
                        if not chunk:
                            break
                        spoolFile.write(chunk)
                except BaseException:
                    spoolFile.abort()
                    raise
                _settled(spoolFile.commit())
                return queueID
            finally:
                lock.release()
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                status = EX_NOPERM
            elif e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                status = EX_TEMPFAIL
            else:
                status = EX_CANTCREAT
            raise SendmailError(status, f"{why}, and the message cannot be put in the spool {spool}: {_describeOSError(e)}") from None


async def _relayAnswers(reactor, ask, spool: str) -> None:
    """
    Ask the relay on C{spool} for its status, in a thread.

    @raise RelayNotRunning: if nothing answers.
    """
    from twisted.internet.threads import deferToThreadPool

    await deferToThreadPool(reactor, reactor.getThreadPool(), ask, spool, "status", None, 5.0)


def _settled(d: defer.Deferred):
    """
    @return: the result of a C{Deferred} that fired already; its error
        raised.
    """
    from twisted.python.failure import Failure

    results: list = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("the spool's disk work did not finish")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _describeOSError(error: OSError) -> str:
    if error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return error.strerror or str(error)


class _asOwnerOf:
    """
    While in it, root works as the owner of a directory (effective user
    and group ids), so that what it makes there belongs to that user; for
    anyone else, and for a directory root owns, it does nothing.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._saved = None

    def __enter__(self):
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return self
        try:
            info = os.stat(self.directory)
        except OSError:
            return self
        if info.st_uid == 0:
            return self
        self._saved = (os.getegid(), os.getgroups())
        os.setgroups([info.st_gid])
        os.setegid(info.st_gid)
        os.seteuid(info.st_uid)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            gid, groups = self._saved
            os.seteuid(0)
            os.setegid(gid)
            os.setgroups(groups)
            self._saved = None


# -- the command -------------------------------------------------------------------


HELP = f"""\
Usage: {PROGRAM} [options] [recipient ...] < message

Send the message on stdin, as sendmail(8) does: to the local relay by SMTP
({DEFAULT_SERVER}, or --server / ${SUBMIT_VARIABLE}); when it is down, into its
spool (--spool / ${SPOOL_VARIABLE}), where it starts from.

  -t              also send to the To:, Cc: and Bcc: addresses of the message
  -f SENDER       the envelope sender ("<>" for none) [default: you@${ORIGIN_VARIABLE}
                  or you@this host's name]; -r is the same
  -F NAME         your full name, for the From: added when there is none
  -i, -oi         a line with only "." does not end the message
  -B 8BITMIME     the body type (found from the message if not given)
  -v              say how the message went, on stderr
  --server S      where the relay is: HOST:PORT or unix:PATH
  --spool DIR     the relay's spool, for when it does not answer
  --help          this text; --version: the version

Taken and ignored: -bm, -odi/-odb/-odq/-odf, -oem/-oep/-oeq/-oew/-oee, -om, -o7, -o8,
other -oX..., -m, -n, -U, -N DSN, -R RET, -V ENVID, -h HOPS, -L TAG, -O OPT=VALUE,
-C FILE, -p PROTOCOL.

Exit status (sysexits.h): 0 sent (or queued); 64 usage; 65 bad data or address;
67 recipient refused; 69 relay refuses service; 70 internal error; 73 cannot write
the spool; 74 cannot read stdin; 75 try again later; 77 no permission."""


class SendmailOptions(usage.Options):
    """
    C{mailproto sendmail}: its command line is sendmail(8)'s, parsed by
    L{parseArguments} when run, not by C{usage.Options}, so that an
    error has sendmail's exit status (L{EX_USAGE}, not 2).
    """

    synopsis = "[options] [recipient ...] < message"
    longdesc = HELP

    def parseOptions(self, options=None) -> None:
        self.arguments = list(sys.argv[1:] if options is None else options)

    def run(self, reactor, stdout, stderr, stdin=None, environ=None) -> int:
        """
        Read the message and send it.

        @param stdin: a binary stream with the message; C{sys.stdin}'s
            buffer if C{None}.
        @param environ: the environment; C{os.environ} if C{None}.
        @return: the exit status.
        """
        return runSendmail(self.arguments, reactor, stdout, stderr, stdin, environ)


def runSendmail(argv, reactor, stdout, stderr, stdin=None, environ=None) -> int:
    """
    The C{mailproto sendmail} command: run the reactor until done.

    @return: the exit status.
    """
    outcome: list[int] = []

    def finished(status) -> None:
        outcome.append(status)
        if reactor.running:
            try:
                reactor.stop()
            except Exception:  # pragma: no cover (already stopping)
                pass

    reactor.callWhenRunning(lambda: sendmailCommand(argv, reactor, stdout, stderr, stdin, environ).addCallback(finished))
    reactor.run()
    return outcome[0] if outcome else EX_SOFTWARE


def sendmailCommand(argv, reactor, stdout, stderr, stdin=None, environ=None) -> defer.Deferred:
    """
    Do the C{mailproto sendmail} command, with the reactor running.

    @return: a L{Deferred} firing with the exit status, never failing; an
        error has been said in one line on C{stderr}.
    """

    async def command() -> int:
        try:
            return await _sendmail(argv, reactor, stdout, stderr, stdin, environ)
        except SendmailError as e:
            stderr.write(f"{PROGRAM}: {e.message}\n")
            return e.status
        except Exception as e:
            stderr.write(f"{PROGRAM}: internal error: {type(e).__name__}: {_oneLine(e)}\n")
            return EX_SOFTWARE
        finally:
            try:
                stderr.flush()
            except (OSError, ValueError):
                pass

    return defer.Deferred.fromCoroutine(command())


async def _sendmail(argv, reactor, stdout, stderr, stdin, environ) -> int:
    environ = os.environ if environ is None else environ
    config = parseArguments(argv, environ)
    if config.help:
        stdout.write(HELP + "\n")
        return EX_OK
    if config.version:
        import twisted

        import mailproto

        stdout.write(f"mailproto {mailproto.__version__} (Twisted {twisted.__version__}, Python {sys.version.split()[0]})\n")
        return EX_OK
    try:
        user = localUser(environ)
    except OSError as e:
        raise SendmailError(EX_OSERR, f"cannot tell who runs this: {_describeOSError(e)}") from None
    if config.sender is None:
        sender = checkAddress(user.name, user.domain, "the sender")
    else:
        sender = checkAddress(config.sender, user.domain, "-f", allowNull=True)
    recipients = [checkAddress(a, user.domain, "recipient") for a in addressList(config.recipients, "recipient")]
    fullName = config.fullName if config.fullName is not None else (environ.get("NAME") or user.fullName)
    fromAddress = sender or checkAddress(user.name, user.domain, "the sender")
    if stdin is None:
        stdin = getattr(sys.stdin, "buffer", sys.stdin)
        if stdin is None:
            raise SendmailError(EX_NOINPUT, "no message: stdin is closed")
    try:
        spooled = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)
    except OSError as e:  # pragma: no cover
        raise SendmailError(EX_OSERR, f"cannot make a temporary file: {_describeOSError(e)}") from None
    with spooled:
        try:
            message = prepareMessage(stdin, spooled, ignoreDots=config.ignoreDots, extract=config.extract, addFrom=fromField(fullName, fromAddress))
        except OSError as e:
            raise SendmailError(EX_CANTCREAT, f"cannot keep the message in a temporary file: {_describeOSError(e)}") from None
        if config.bodyType is not None:
            message.eightBit = config.bodyType == "8BITMIME"
        recipients += [checkAddress(a, user.domain, "recipient in the header") for a in message.recipients]
        recipients = list(dict.fromkeys(recipients))
        if not recipients:
            raise SendmailError(EX_USAGE, "no recipients (give them as arguments, or use -t)" if not config.extract else "no recipient addresses found in the message header")
        server = parseServer(config.server)
        try:
            reply = await submit(reactor, server, sender, recipients, message, helo=_heloName())
        except _NotConnected as e:
            if config.spool is None:
                raise SendmailError(EX_TEMPFAIL, f"{e} (and no spool given: --spool or ${SPOOL_VARIABLE})") from None
            message.file.seek(0)
            queueID = await dropIntoSpool(reactor, config.spool, sender, recipients, message, user, str(e))
            if config.verbose:
                stderr.write(f"{PROGRAM}: the relay did not answer; queued as {queueID} in {config.spool}\n")
            return EX_OK
        if config.verbose:
            stderr.write(f"{PROGRAM}: sent to {len(recipients)} recipient(s): {reply}\n")
        return EX_OK


def _heloName() -> str:
    from mailproto._headers import localHostname

    name = localHostname().decode("ascii", "replace")
    return name if "." in name else "localhost"


def main(argv=None) -> None:
    """
    Run C{mailproto sendmail} with C{argv} (C{sys.argv[1:]} if C{None}),
    for a C{sendmail} wrapper that calls this module.

    @raise SystemExit: always, with the exit status.
    """
    from twisted.internet import reactor

    sys.exit(runSendmail(sys.argv[1:] if argv is None else argv, reactor, sys.stdout, sys.stderr))


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = [
    "DEFAULT_SERVER",
    "PreparedMessage",
    "SendmailConfig",
    "SendmailError",
    "SendmailOptions",
    "checkAddress",
    "dropIntoSpool",
    "localUser",
    "parseArguments",
    "prepareMessage",
    "sendmailCommand",
    "submit",
]
