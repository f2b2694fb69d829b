# -*- test-case-name: mailproto.test.test_twistedqueue -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
twisted.mail's way of writing into a relay queue, for code that writes
queues itself: L{TwistedMailQueueMixin} gives L{mailproto._queue.Queue}
C{createNewMessage()} and C{addMessage(message)}, and this module reads
twisted.mail's envelope pickle (C{[origin, recipient]}) safely.

Code written for twisted.mail's C{Queue} works unchanged::

    headerFile, message = queue.createNewMessage()
    with headerFile:
        pickle.dump([str(user.orig), str(user.dest)], headerFile)
    for line in lines:
        message.lineReceived(line)
    d = message.eomReceived()    # fires once the message is on disk

What it makes is an ordinary durable mailproto message: the pickle is
only read (by L{loadHeader}, which refuses every global, so that no code
in it can run) and the message's envelope is JSON as for any other.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import time

from twisted.internet import defer
from twisted.logger import Logger

from mailproto._address import Address
from mailproto._errors import AddressError

MAX_HEADER = 64 * 1024
"""The largest envelope pickle read: twisted.mail's holds two addresses,
a few hundred octets at most."""

_log = Logger()


class BadHeader(ValueError):
    """
    An envelope pickle that is not one twisted.mail writes: not a pickle,
    a pickle that names a global, not a list of two addresses, or an
    address that does not parse.
    """


class _NoGlobals(pickle.Unpickler):
    """
    An unpickler that refuses every global (class, function): a
    twisted.mail envelope is a list of two strings and needs none, and a
    pickle that names one could run code while it is loaded.
    """

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused the global {module}.{name}: an envelope is a list of two strings")


def _address(value, what: str, nullAllowed: bool) -> Address:
    if isinstance(value, str):
        try:
            value = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise BadHeader(f"the {what} is not text that can be encoded") from None
    if not isinstance(value, bytes):
        raise BadHeader(f"the {what} is a {type(value).__name__}, not a string")
    try:
        address = Address(value, defaultDomain=b"")
    except AddressError as e:
        raise BadHeader(f"the {what} {value[:100]!r} is not an address ({e})") from None
    if address.isNull and not nullAllowed:
        raise BadHeader(f"the {what} is empty")
    if address.local and not address.domain:
        raise BadHeader(f"the {what} {value[:100]!r} has no domain")
    return address


def loadHeader(data: bytes) -> tuple[Address, Address]:
    """
    Read the envelope of a twisted.mail queue message (its C{-H} file):
    a pickle of C{[origin, recipient]}, each C{str} (or C{bytes}, as
    Python 2 wrote them).  The pickle is loaded by an unpickler that
    refuses every global, so nothing in it is ever called.

    @param data: the file's contents.
    @return: the sender (null for an empty origin) and the recipient.
    @raise BadHeader: if C{data} is not such an envelope.
    """
    if len(data) > MAX_HEADER:
        raise BadHeader(f"the envelope pickle is larger than {MAX_HEADER} octets")
    try:
        value = _NoGlobals(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        # A hostile or damaged pickle can raise nearly anything (EOFError,
        # UnpicklingError, ValueError, MemoryError, ...): none is a crash.
        raise BadHeader(f"not an envelope pickle: {type(e).__name__}: {str(e)[:200]}") from None
    if type(value) is not list or len(value) != 2:
        raise BadHeader(f"the envelope pickle holds a {type(value).__name__}, not a list of two addresses")
    return _address(value[0], "sender", True), _address(value[1], "recipient", False)


class LineEnds:
    """
    Makes every line end of a message C{CRLF}, as mailproto's queue keeps
    messages, across the chunks it is given: C{CRLF}, a lone C{LF} and a
    lone C{CR} each become one C{CRLF} (twisted.mail's relayer reads its
    C{-D} files with universal newlines, so it sent them so too), and a
    last line without an end gets one.
    """

    def __init__(self) -> None:
        self._heldCR = False
        self._wrote = False
        self._ended = True

    def feed(self, data: bytes) -> bytes:
        """
        @return: what to write for C{data}.
        """
        if self._heldCR:
            data = b"\r" + data
            self._heldCR = False
        if data.endswith(b"\r"):
            # Its LF, if it has one, is in the next chunk.
            data = data[:-1]
            self._heldCR = True
        out = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if out:
            self._wrote = True
            self._ended = out.endswith(b"\n")
        return out

    def end(self) -> bytes:
        """
        @return: what to write at the end of the message.
        """
        if self._heldCR or (self._wrote and not self._ended):
            self._heldCR = False
            self._ended = True
            return b"\r\n"
        return b""


class _HeaderFile(io.BytesIO):
    """
    The envelope file of L{TwistedMailQueueMixin.createNewMessage}: what
    is written into it stays in memory (at most L{MAX_HEADER} octets) and
    is read when the message ends.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.contents: bytes | None = None

    def write(self, data) -> int:
        if self.tell() + len(data) > MAX_HEADER:
            raise OSError(f"an envelope is at most {MAX_HEADER} octets")
        return super().write(data)

    def close(self) -> None:
        if not self.closed:
            self.contents = self.getvalue()
        super().close()

    def value(self) -> bytes:
        return self.contents if self.closed else self.getvalue()


class CompatMessage:
    """
    The message receiver of L{TwistedMailQueueMixin.createNewMessage}, in
    the place of twisted.mail's C{FileMessage}: give it the message's
    lines (L{lineReceived}) or data (L{dataReceived}), then call
    L{eomReceived}; L{connectionLost} throws it away.

    When the envelope file is closed before the first line comes (as
    twisted.mail's C{DomainQueuer} does), the message goes straight into
    the queue's C{tmp/}; otherwise it waits in a temporary file until
    L{eomReceived} reads the envelope.

    @ivar envelope: the L{Envelope <mailproto._queue.Envelope>} once the
        message is queued, else C{None}.
    """

    def __init__(self, queue, header: _HeaderFile) -> None:
        self.queue = queue
        self.header = header
        self.envelope = None
        self._spool = None
        self._waiting = None
        self._lineEnds = LineEnds()
        self._done = False

    def _open(self):
        from mailproto._queue import Envelope, Recipient, newMessageID

        sender, recipient = loadHeader(self.header.value())
        now = time.time()
        envelope = Envelope(
            newMessageID(now),
            bytes(sender),
            [Recipient(bytes(recipient))],
            received=now,
            smtputf8=sender.needsSMTPUTF8 or recipient.needsSMTPUTF8,
        )
        return self.queue.newMessage(envelope)

    def _write(self, data: bytes) -> None:
        if self._done:
            raise ValueError("the message has ended")
        data = self._lineEnds.feed(data)
        if not data:
            return
        if self._spool is None and self._waiting is None:
            if self.header.closed:
                try:
                    self._spool = self._open()
                except BadHeader:
                    pass  # Told at eomReceived.
            if self._spool is None:
                directory = getattr(self.queue, "directory", None)
                self._waiting = tempfile.SpooledTemporaryFile(
                    max_size=256 * 1024, dir=os.path.join(directory, "tmp") if directory else None
                )
        if self._spool is not None:
            self._spool.write(data)
        else:
            self._waiting.write(data)

    def lineReceived(self, line: bytes) -> None:
        """
        One line of the message, without its line end.
        """
        self._write(line + b"\n")

    def dataReceived(self, data: bytes) -> None:
        """
        Octets of the message, with their line ends.
        """
        self._write(data)

    def eomReceived(self) -> defer.Deferred:
        """
        The message is whole: put it in the queue.

        @return: a C{Deferred} that fires, once the message is on disk,
            with the path of its queue file (as twisted.mail's fires with
            the C{-D} file's); it fails with L{BadHeader} if the envelope
            file does not hold an envelope, and the message is thrown
            away.
        """
        try:
            tail = self._lineEnds.end()
            self._done = True
            if self._spool is None:
                self._spool = self._open()
                if self._waiting is not None:
                    self._waiting.seek(0)
                    for chunk in iter(lambda: self._waiting.read(65536), b""):
                        self._spool.write(chunk)
            if tail:
                self._spool.write(tail)
        except Exception:
            self.connectionLost()
            return defer.fail()
        finally:
            self._closeWaiting()
        d = self._spool.commit()

        def queued(envelope):
            self.envelope = envelope
            if getattr(self.queue, "noisy", False):
                _log.info("Set {queueID} waiting", queueID=envelope.id)
            return self.queue.getPath(envelope.id)

        return d.addCallback(queued)

    def _closeWaiting(self) -> None:
        if self._waiting is not None:
            self._waiting.close()
            self._waiting = None

    def connectionLost(self) -> None:
        """
        The message will not be finished: throw it away.
        """
        self._done = True
        self._closeWaiting()
        if self._spool is not None and self.envelope is None:
            self._spool.abort()


class TwistedMailQueueMixin:
    """
    twisted.mail's C{createNewMessage} and C{addMessage}, for a queue
    with mailproto's C{newMessage} (L{mailproto._queue.Queue}).

    @cvar noisy: whether a message set waiting is logged, as twisted.mail's
        C{Queue.noisy}.
    """

    noisy = True

    def createNewMessage(self):
        """
        Start a message the twisted.mail way.

        @return: C{(headerFile, message)}: pickle C{[origin, recipient]}
            into C{headerFile} (a file in memory; close it), and give the
            message's lines to C{message} (a L{CompatMessage}), whose
            C{eomReceived()} puts it in the queue.
        """
        header = _HeaderFile(f"{os.getpid()}_{time.time()}-H")
        return header, CompatMessage(self, header)

    def addMessage(self, message: str) -> None:
        """
        Mark a message as waiting to be relayed unless it is being
        relayed.  A message committed by this queue is waiting already;
        one committed into the spool by another process (a queue file
        this queue has not read) is read and added.

        @param message: its queue id, or the path of its queue file (what
            L{CompatMessage.eomReceived} gives).
        @raise KeyError: if the spool has no such message.
        """
        from mailproto._queue import _isID

        queueID = os.path.basename(message)
        if queueID in self._envelopes:
            return
        if not _isID(queueID) or not os.path.exists(self.getPath(queueID)):
            raise KeyError(message)
        self._added(self._readEnvelope(queueID))
        if self.noisy:
            _log.info("Set {queueID} waiting", queueID=queueID)
