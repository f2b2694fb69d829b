# -*- test-case-name: mailproto.test.test_twistedqueue -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Moving a twisted.mail relay's queue into mailproto's.

twisted.mail's relay queue (C{twisted.mail.relaymanager.Queue}, written by
C{twisted.mail.relay.DomainQueuer}) is a directory of message pairs, one
per recipient: C{NAME-H}, a pickle of C{[origin, recipient]}, and
C{NAME-D}, the message.  A message still being received is C{NAME-C}
(and its C{NAME-H}) until twisted.mail renames it to C{NAME-D}.

L{importTwistedQueue} copies each complete pair into a mailproto queue
as one message, durably, and leaves the old files as they were::

    from mailproto._twistedqueue import importTwistedQueue
    from mailproto.relaymanager import Queue

    queue = Queue("/var/spool/mailrelay")
    queue.recover()
    report = yield importTwistedQueue("/var/spool/twisted-relay", queue)
    for name, queueID in report.imported:
        print(name, "->", queueID)
    for name, why in report.skipped:
        print(name, "skipped:", why)

(C{mailproto queue import DIR --spool SPOOL} does this for a spool no
relay is running on.)

What becomes of a pair:
  - the sender and the recipient come from the C{-H} pickle, read without
    running anything in it (L{mailproto._queuecompat.loadHeader}: every
    global is refused, and the file is at most
    L{MAX_HEADER <mailproto._queuecompat.MAX_HEADER>} octets); an empty
    sender is the null sender;
  - the message is the C{-D} file, with every line end made C{CRLF} as
    mailproto's queue keeps messages (L{mailproto._queuecompat.LineEnds});
  - it counts as received when the C{-D} file was last written (its
    lifetime, before it expires, counts from then); its queue entry
    says where it came from: client C{twisted.mail queue}, and the
    pair's name in the place of the HELO name.  A pair already imported
    into the same queue (by that name) is not imported again.

A pair with a half missing, a C{-H} that is not a list of two addresses
(or names a global, or is too large), an address that does not parse, or
a file that cannot be read, is skipped and reported; nothing of it is
queued.  twisted.mail writes one pair per recipient: messages with the
same sender and data but different recipients stay separate mailproto
messages, each sent on its own (simple, and what twisted.mail did).

The files are read in the caller's thread (the queue's commits run as
its disk work always does): this is meant for a queue no relay is
serving yet, as the command does it, or at startup.
"""

from __future__ import annotations

import dataclasses
import os
import stat

from twisted.internet import defer

from mailproto._queue import Envelope, Recipient, newMessageID
from mailproto._queuecompat import MAX_HEADER, BadHeader, LineEnds, loadHeader

IMPORTED_FROM = "twisted.mail queue"
"""The C{client} of an imported message's envelope."""

CHUNK = 64 * 1024


@dataclasses.dataclass
class ImportReport:
    """
    What L{importTwistedQueue} did.

    @ivar imported: C{(name, queueID)} for each pair queued: its name in
        the twisted.mail directory (without C{-H}/C{-D}) and its new id.
    @ivar skipped: C{(name, why)} for each pair not queued.
    @ivar already: C{(name, queueID)} for each pair imported before.
    """

    imported: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    already: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        """
        Whether every pair is in the queue (none skipped).
        """
        return not self.skipped


def findPairs(directory: str) -> tuple[list[str], list[tuple[str, str]]]:
    """
    Find twisted.mail's messages in a queue directory.

    @return: the names of the complete pairs (each has C{-H} and C{-D});
        and C{(name, why)} for each half without its other half.
    """
    headers, data, receiving = set(), set(), set()
    for entry in os.listdir(directory):
        base, suffix = entry[:-2], entry[-2:]
        if not base:
            continue
        {"-H": headers, "-D": data, "-C": receiving}.get(suffix, set()).add(base)
    skipped = []
    for name in sorted(headers - data):
        if name in receiving:
            skipped.append((name, "no -D: twisted.mail is still receiving this message (-C), or stopped while it did"))
        else:
            skipped.append((name, "no -D (message) for this -H"))
    for name in sorted(data - headers):
        skipped.append((name, "no -H (envelope) for this -D"))
    return sorted(headers & data), sorted(skipped)


def _openRegular(path: str):
    """
    @return: C{path} open for reading as a binary file, if it is a regular
        file (a FIFO or a device is not opened for long: it could block
        or never end).
    @raise OSError: if it cannot be opened, or is not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{os.path.basename(path)} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def readPair(directory: str, name: str):
    """
    Read the envelope of a pair, and open its message.

    @return: C{(sender, recipient, dataFile)}, the addresses as
        L{Address <mailproto._address.Address>}; close C{dataFile}.
    @raise BadHeader: if the C{-H} file is not an envelope.
    @raise OSError: if a file cannot be read.
    """
    base = os.path.join(directory, name)
    with _openRegular(base + "-H") as f:
        data = f.read(MAX_HEADER + 1)
    if len(data) > MAX_HEADER:
        raise BadHeader(f"-H is larger than {MAX_HEADER} octets")
    sender, recipient = loadHeader(data)
    return sender, recipient, _openRegular(base + "-D")


def _why(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e) or type(e).__name__


@defer.inlineCallbacks
def importTwistedQueue(directory: str, queue):
    """
    Copy the messages of a twisted.mail relay queue directory into a
    mailproto queue (see the module docstring).

    @param directory: twisted.mail's queue directory; nothing in it is
        changed.
    @param queue: the queue to write into (a L{mailproto._queue.Queue},
        recovered, or any queue with C{newMessage}); messages are added
        one at a time, each committed (on disk) before the next.
    @return: a C{Deferred} firing with an L{ImportReport}; it fails only
        if C{directory} cannot be listed.
    """
    report = ImportReport()
    pairs, report.skipped = findPairs(directory)
    done = {}
    for queueID in queue.ids():
        envelope = queue.getEnvelope(queueID)
        if envelope.client == IMPORTED_FROM and envelope.helo:
            done[envelope.helo] = queueID
    for name in pairs:
        if name in done:
            report.already.append((name, done[name]))
            continue
        try:
            sender, recipient, dataFile = readPair(directory, name)
        except (BadHeader, OSError) as e:
            report.skipped.append((name, _why(e)))
            continue
        with dataFile:
            received = os.fstat(dataFile.fileno()).st_mtime
            envelope = Envelope(
                newMessageID(received),
                bytes(sender),
                [Recipient(bytes(recipient))],
                received=received,
                smtputf8=sender.needsSMTPUTF8 or recipient.needsSMTPUTF8,
                client=IMPORTED_FROM,
                helo=name,
            )
            spool = queue.newMessage(envelope)
            lineEnds = LineEnds()
            try:
                while chunk := dataFile.read(CHUNK):
                    spool.write(lineEnds.feed(chunk))
                spool.write(lineEnds.end())
            except OSError as e:
                spool.abort()
                report.skipped.append((name, f"-D: {_why(e)}"))
                continue
        try:
            yield spool.commit()
        except Exception as e:
            report.skipped.append((name, f"could not be queued: {_why(e)}"))
            continue
        report.imported.append((name, envelope.id))
    report.skipped.sort()
    return report
