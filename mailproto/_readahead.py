# -*- test-case-name: mailproto.test.test_client -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Sending a message from a file, a chunk at a time, as the transport asks:
the producer that both clients (the protocol clients of
L{mailproto._client} and the command-level session of
L{mailproto._session}) stream DATA and BDAT with.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

CHUNK_SIZE = 65536
"""How much of a message is read and sent at a time."""


@implementer(IPullProducer)
class ReadAheadProducer:
    """
    Reads a file a chunk at a time when the consumer asks, through
    C{transform} (dot-stuffing, line ends), and keeps one transformed chunk
    back until the next is read, so that the end of the message
    (C{finish()}) goes out with its last chunk.  Memory is bounded by two
    chunks.  A message that fits in one chunk is delivered at once,
    without registering with the consumer.

    Subclasses say what becomes of each piece (L{deliver}) and of a file
    that cannot be read (L{failed}).

    @ivar finished: whether the whole message was delivered, or the
        transfer stopped.
    """

    def __init__(self, consumer, file, transform, finish, chunkSize: int = CHUNK_SIZE) -> None:
        """
        @param consumer: the transport (C{registerProducer}).
        @param file: the message, open for reading in binary mode.
        @param transform: turns a chunk read into what goes out.
        @param finish: gives what ends the message (after the last chunk).
        @param chunkSize: how much to read at a time.
        """
        self.consumer = consumer
        self.chunkSize = chunkSize
        self.file = file
        self.transform = transform
        self.finish = finish
        self.finished = False
        self._registered = False
        self._ahead: bytes | None = None

    def start(self) -> None:
        """
        Deliver the first piece, and register for the rest if there is more.
        """
        self._step()
        if not self.finished:
            self._registered = True
            self.consumer.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if not self.finished:
            self._step()

    def stopProducing(self) -> None:
        if not self.finished:
            self.finished = True
            self._ahead = None
            if self._registered:
                self._registered = False
                self.consumer.unregisterProducer()

    def _next(self) -> tuple[bytes, bool]:
        """
        @return: the next piece to deliver, and whether it is the last.
        """
        while True:
            chunk = self.file.read(self.chunkSize)
            if not chunk:
                out, self._ahead = (self._ahead or b"") + self.finish(), None
                return out, True
            data = self.transform(chunk)
            if self._ahead is None:
                # The first chunk: wait to see whether more follows.
                self._ahead = data
                continue
            if data:
                out, self._ahead = self._ahead, data
                return out, False

    def _step(self) -> None:
        try:
            out, last = self._next()
        except BaseException:
            self.stopProducing()
            self.failed(Failure())
            return
        if last:
            self.stopProducing()
        self.deliver(out, last)

    def deliver(self, out: bytes, last: bool) -> None:
        """
        Send a piece of the message.

        @param out: the piece, transformed.
        @param last: whether it ends the message.
        """
        raise NotImplementedError

    def failed(self, failure: Failure) -> None:
        """
        The file could not be read (or transformed): the transfer stopped.
        """
        raise NotImplementedError


class PrefixedFile:
    """
    A file read after some octets that go before it: a queued message
    with the header fields made for it at intake (L{Envelope.prefix
    <mailproto._queue.Envelope.prefix>}, a C{DKIM-Signature}).  Reads,
    C{tell} and C{seek} see the two as one file, so that a client can
    measure it (SIZE, 8-bit data) and rewind it, as it does a plain file.
    """

    def __init__(self, prefix: bytes, file) -> None:
        """
        @param prefix: the octets read first.
        @param file: the file read after them, open in binary mode at its
            first octet.
        """
        self._prefix = prefix
        self.file = file
        self._base = file.tell()
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        """
        @return: up to C{size} octets (all if negative), the prefix first.
        """
        prefixLeft = len(self._prefix) - self._position
        if prefixLeft <= 0:
            data = self.file.read(size)
            self._position += len(data)
            return data
        if 0 <= size <= prefixLeft:
            out = self._prefix[self._position : self._position + size]
            self._position += len(out)
            return out
        out = self._prefix[self._position :]
        rest = self.file.read(-1 if size < 0 else size - len(out))
        self._position += len(out) + len(rest)
        return out + rest

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        """
        Move to C{offset} from the start (C{whence} 0), from here (1) or
        from the end (2), as a file does.
        """
        if whence == 1:
            offset += self._position
        elif whence == 2:
            offset += len(self._prefix) + self.file.seek(0, 2) - self._base
        position = max(offset, 0)
        self.file.seek(self._base + max(position - len(self._prefix), 0))
        self._position = position
        return position

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
