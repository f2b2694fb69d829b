# -*- test-case-name: mailproto.test.test_data -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Tests for L{mailproto._data}: dot-stuffing, unstuffing and the end of data.

Each table is run three ways: the input whole, one byte at a time, and
followed by more bytes (for the receiver, a pipelined command that must come
out as trailing bytes, untouched; for the sender, split at the 16 KiB and
64 KiB chunk sizes that file producers use).
"""

from twisted.trial.unittest import SynchronousTestCase

from mailproto._data import BareNewlinePolicy, DotStuffer, Unstuffer, stuff, unstuff

NORMALIZE = BareNewlinePolicy.NORMALIZE
KEEP = BareNewlinePolicy.KEEP
REJECT = BareNewlinePolicy.REJECT

NEXT = b"MAIL FROM:<next@example.com>\r\n"
SMUGGLED = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n"


def unstuffWays(data, policy=NORMALIZE, maxLineLength=998):
    """
    Unstuff C{data} whole, byte by byte, and with L{NEXT} after it.

    @return: a dict from way to C{(content, finished, trailing,
        sawBareNewline, lineTooLong)}; the trailing way has L{NEXT} taken
        off its trailing bytes if they end with it.
    """
    results = {}
    for way, chunks in [
        ("whole", [data]),
        ("bytewise", [data[i : i + 1] for i in range(len(data))]),
        ("trailing", [data + NEXT]),
    ]:
        u = Unstuffer(policy, maxLineLength)
        content = b"".join(u.feed(chunk) for chunk in chunks)
        trailing = u.trailing
        if way == "trailing" and u.finished:
            if not trailing.endswith(NEXT):
                raise AssertionError(f"pipelined command lost: {trailing!r}")
            trailing = trailing[: -len(NEXT)]
        results[way] = (content, u.finished, trailing, u.sawBareNewline, u.lineTooLong)
    return results


def stuffWays(message):
    """
    Stuff C{message} whole, byte by byte, and in 16 KiB and 64 KiB chunks.

    @return: a dict from way to the bytes sent.
    """
    results = {}
    for way, size in [("whole", None), ("bytewise", 1), ("16KiB", 16384), ("64KiB", 65536)]:
        s = DotStuffer()
        if size is None:
            chunks = [message]
        else:
            chunks = [message[i : i + size] for i in range(0, len(message), size)]
        results[way] = b"".join(s.feed(c) for c in chunks) + s.finish()
    return results


# (name, message, wire bytes)
STUFF_TABLE = [
    ("empty", b"", b".\r\n"),
    ("one line", b"hello\r\n", b"hello\r\n.\r\n"),
    ("no final newline", b"hello", b"hello\r\n.\r\n"),
    ("first line is a dot", b".\r\nafter\r\n", b"..\r\nafter\r\n.\r\n"),
    ("first line starts with a dot", b".hidden\r\n", b"..hidden\r\n.\r\n"),
    ("lone dot inside", b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
    ("two dots", b"a\r\n..\r\n", b"a\r\n...\r\n.\r\n"),
    ("dot not at line start", b"a.b\r\n", b"a.b\r\n.\r\n"),
    ("bare LF", b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    ("bare LF then dot", b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    ("bare CR then dot", b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
    ("CR CR LF", b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
    ("LF CR", b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
    ("only a dot, no newline", b".", b"..\r\n.\r\n"),
    ("ends with CR", b"a\r", b"a\r\n.\r\n"),
    ("smuggling attempt is stuffed", b"x\n.\n" + SMUGGLED, b"x\r\n..\r\n" + SMUGGLED + b".\r\n"),
]


def _boundaryMessage(chunkSize):
    """
    A message whose lone-dot line starts exactly at a chunk boundary.
    """
    header = b"Subject: boundary\r\n\r\n"
    filler = b"x" * (chunkSize - len(header) - 2) + b"\r\n"
    return header + filler + b".\r\nSmuggled: yes\r\n", header + filler + b"..\r\nSmuggled: yes\r\n.\r\n"


class DotStufferTests(SynchronousTestCase):
    """
    L{DotStuffer} and L{stuff}.
    """

    def test_table(self):
        """
        Every row of the table stuffs to the expected bytes, whatever the
        chunking.
        """
        for name, message, wire in STUFF_TABLE:
            for way, got in stuffWays(message).items():
                self.assertEqual(got, wire, f"{name} ({way})")
            self.assertEqual(stuff(message), wire, name)

    def test_loneDotAtChunkBoundary(self):
        """
        A lone C{.} line starting exactly at a 16 KiB or 64 KiB chunk
        boundary is stuffed; so is one whose CRLF is split by the boundary.
        """
        for size in (16384, 65536):
            message, wire = _boundaryMessage(size)
            self.assertEqual(message[size : size + 3], b".\r\n")
            for way, got in stuffWays(message).items():
                self.assertEqual(got, wire, f"{size} ({way})")
            # The CRLF before the dot split across the boundary.
            s = DotStuffer()
            got = s.feed(message[: size - 1]) + s.feed(message[size - 1 :]) + s.finish()
            self.assertEqual(got, wire)

    def test_crlfSplitAcrossChunks(self):
        """
        A CR at the end of one chunk and the LF at the start of the next are
        one line end, not two.
        """
        s = DotStuffer()
        got = s.feed(b"a\r") + s.feed(b"\n.b\r") + s.feed(b"\n") + s.finish()
        self.assertEqual(got, b"a\r\n..b\r\n.\r\n")

    def test_emptyChunks(self):
        """
        Empty chunks change nothing.
        """
        s = DotStuffer()
        got = s.feed(b"") + s.feed(b".") + s.feed(b"") + s.feed(b"\n") + s.feed(b"") + s.finish()
        self.assertEqual(got, b"..\r\n.\r\n")

    def test_lfAfterSplitCRLF(self):
        """
        Only the first LF after a chunk that ended in CR belongs to that CR:
        C{CRLF LF} split after the CR is two line ends, as it is whole.
        """
        s = DotStuffer()
        got = s.feed(b"\r") + s.feed(b"\n") + s.feed(b"\n.") + s.finish()
        self.assertEqual(got, b"\r\n\r\n..\r\n.\r\n")

    def test_noStuffing(self):
        """
        With C{stuff=False} (for BDAT) only line ends are normalised, and the
        message gets a final CRLF if it lacks one, but no terminator.
        """
        s = DotStuffer(stuff=False)
        self.assertEqual(s.feed(b".a\n.\r") + s.feed(b"\nb") + s.finish(), b".a\r\n.\r\nb\r\n")
        s = DotStuffer(stuff=False)
        self.assertEqual(s.feed(b"a\r\n") + s.finish(), b"a\r\n")


# (name, wire bytes, NORMALIZE content, KEEP content, finished, trailing, saw bare newline)
UNSTUFF_TABLE = [
    ("empty message", b".\r\n", b"", b"", True, b"", False),
    ("one line", b"hello\r\n.\r\n", b"hello\r\n", b"hello\r\n", True, b"", False),
    ("first line is a stuffed dot", b"..\r\nafter\r\n.\r\n", b".\r\nafter\r\n", b".\r\nafter\r\n", True, b"", False),
    ("stuffed first line", b"..hidden\r\n.\r\n", b".hidden\r\n", b".hidden\r\n", True, b"", False),
    ("unstuffed lines keep other dots", b"a.b\r\n...\r\n.\r\n", b"a.b\r\n..\r\n", b"a.b\r\n..\r\n", True, b"", False),
    ("dot and text is content", b".x\r\n.\r\n", b"x\r\n", b"x\r\n", True, b"", False),
    ("pipelined command", b"a\r\n.\r\nQUIT\r\n", b"a\r\n", b"a\r\n", True, b"QUIT\r\n", False),
    ("empty then pipelined", b".\r\nRSET\r\n", b"", b"", True, b"RSET\r\n", False),
    ("not finished", b"a\r\nb\r\n", b"a\r\nb\r\n", b"a\r\nb\r\n", False, b"", False),
    ("not finished, dot pending", b"a\r\n.", b"a\r\n", b"a\r\n", False, b"", False),
    ("not finished, dot CR pending", b"a\r\n.\r", b"a\r\n", b"a\r\n", False, b"", False),
    ("blank lines", b"\r\n\r\n.\r\n", b"\r\n\r\n", b"\r\n\r\n", True, b"", False),
    # Every SMTP smuggling ending: none of them ends the message.
    ("LF.LF", b"x\n.\n" + SMUGGLED + b".\r\n",
     b"x\r\n\r\n" + SMUGGLED, b"x\n.\n" + SMUGGLED, True, b"", True),
    ("LF.CRLF", b"x\n.\r\n" + SMUGGLED + b".\r\n",
     b"x\r\n\r\n" + SMUGGLED, b"x\n.\r\n" + SMUGGLED, True, b"", True),
    ("CR.CR", b"x\r.\r" + SMUGGLED + b".\r\n",
     b"x\r\n.\r\n" + SMUGGLED, b"x\r.\r" + SMUGGLED, True, b"", True),
    ("CRLF.CR", b"x\r\n.\r" + SMUGGLED + b".\r\n",
     b"x\r\n\r\n" + SMUGGLED, b"x\r\n\r" + SMUGGLED, True, b"", True),
    ("CRLF.LF", b"x\r\n.\n" + SMUGGLED + b".\r\n",
     b"x\r\n\r\n" + SMUGGLED, b"x\r\n\n" + SMUGGLED, True, b"", True),
    ("CR.CRLF", b"x\r.\r\n" + SMUGGLED + b".\r\n",
     b"x\r\n.\r\n" + SMUGGLED, b"x\r.\r\n" + SMUGGLED, True, b"", True),
    ("bare LF only", b"a\nb\n.\n", b"a\r\nb\r\n\r\n", b"", False, b"", True),
    ("bare CR only", b"a\rb\r.\r", b"a\r\nb\r\n", b"", False, b"", True),
    ("bare LF line then end", b"a\nb\r\n.\r\n", b"a\r\nb\r\n", b"a\nb\r\n", True, b"", True),
    ("bare LF then stuffed dot", b"a\n..\r\n.\r\n", b"a\r\n.\r\n", b"a\n..\r\n", True, b"", True),
    ("CR CR LF", b"a\r\r\n.\r\n", b"a\r\n\r\n", b"a\r\r\n", True, b"", True),
    # smtplib stuffs after LF but not after a bare CR: the dot is content.
    ("bare CR then dots", b"x\r.y\r\nz\r..w\r\n.\r\n",
     b"x\r\n.y\r\nz\r\n..w\r\n", b"x\r.y\r\nz\r..w\r\n", True, b"", True),
]


class UnstufferTests(SynchronousTestCase):
    """
    L{Unstuffer} and L{unstuff}.
    """

    def check(self, policy, column):
        for row in UNSTUFF_TABLE:
            name, wire, finished, trailing, bare = row[0], row[1], row[4], row[5], row[6]
            content = row[column]
            for way, got in unstuffWays(wire, policy).items():
                if way == "trailing" and not finished:
                    # The next bytes are still message content.
                    self.assertTrue(got[0].startswith(content), f"{name} ({way}, {policy})")
                    self.assertFalse(got[1], f"{name} ({way}, {policy})")
                    continue
                self.assertEqual(got[:3], (content, finished, trailing), f"{name} ({way}, {policy})")
                if finished:
                    self.assertEqual(got[3], bare, f"{name} ({way}, {policy}): sawBareNewline")
                else:
                    # Data still held back may not have been looked at yet.
                    self.assertFalse(got[3] and not bare, f"{name} ({way}, {policy}): sawBareNewline")
                self.assertFalse(got[4], f"{name} ({way}): lineTooLong")

    def test_tableNormalize(self):
        """
        With the default policy, bare line ends become CRLF, lines after them
        are unstuffed, and only CRLF.CRLF ends the data.
        """
        self.check(NORMALIZE, 2)

    def test_tableReject(self):
        """
        REJECT reads data exactly as NORMALIZE does; the flag tells the
        server to refuse the message.
        """
        self.check(REJECT, 2)

    def test_tableKeep(self):
        """
        With KEEP, bare line ends stay as they came and are not line ends.
        """
        self.check(KEEP, 3)

    def test_defaultPolicy(self):
        """
        The default policy is NORMALIZE.
        """
        self.assertIs(Unstuffer().policy, NORMALIZE)

    def test_loneDotAtChunkBoundary(self):
        """
        A stuffed lone dot that arrives at the start of a 16 KiB or 64 KiB
        chunk is content, and the real end of data is found after it.
        """
        for size in (16384, 65536):
            message, wire = _boundaryMessage(size)
            u = Unstuffer()
            content = u.feed(wire[:size]) + u.feed(wire[size:])
            self.assertEqual((content, u.finished, u.trailing), (message, True, b""))

    def test_endSplitEverywhere(self):
        """
        The end of data is found wherever a chunk boundary cuts it.
        """
        wire = b"line one\r\n..\r\n.\r\nQUIT\r\n"
        for cut in range(len(wire) + 1):
            u = Unstuffer()
            content = u.feed(wire[:cut]) + u.feed(wire[cut:])
            self.assertEqual((content, u.trailing), (b"line one\r\n.\r\n", b"QUIT\r\n"), cut)

    def test_feedAfterEnd(self):
        """
        Bytes fed after the end of data go to C{trailing}.
        """
        u = Unstuffer()
        self.assertEqual(u.feed(b"a\r\n.\r\nNO"), b"a\r\n")
        self.assertEqual(u.feed(b"OP\r\n"), b"")
        self.assertEqual(u.trailing, b"NOOP\r\n")

    def test_lineTooLong(self):
        """
        A line longer than C{maxLineLength} sets C{lineTooLong}; the data is
        still read to its end, and what follows is not taken as commands.
        """
        wire = b"ok\r\n" + b"x" * 30 + b"\r\n" + SMUGGLED + b".\r\n" + NEXT
        for way, got in unstuffWays(wire, maxLineLength=20).items():
            content, finished, trailing, bare, tooLong = got
            self.assertTrue(tooLong, way)
            self.assertTrue(finished, way)
            self.assertEqual(trailing, NEXT, way)

    def test_lineAtLimit(self):
        """
        A line of exactly C{maxLineLength} octets is accepted; the stuffing
        dot does not count.
        """
        wire = b"x" * 20 + b"\r\n." + b"y" * 20 + b"\r\n.\r\n"
        for way, got in unstuffWays(wire, maxLineLength=20).items():
            self.assertEqual(got[0], b"x" * 20 + b"\r\n" + b"y" * 20 + b"\r\n", way)
            self.assertFalse(got[4], way)

    def test_longLineMemoryIsBounded(self):
        """
        A line with no end in sight is not kept in memory.
        """
        u = Unstuffer(maxLineLength=100)
        for _ in range(1000):
            u.feed(b"z" * 1000)
        self.assertTrue(u.lineTooLong)
        self.assertLessEqual(len(u._held), 102)
        u.feed(b"\r\n.\r\n")
        self.assertTrue(u.finished)

    def test_longLineKeepsPendingCR(self):
        """
        When an overlong line is dropped, a CR at its end is kept, so that
        CRLF.CRLF split right after it still ends the data.
        """
        u = Unstuffer(maxLineLength=10)
        u.feed(b"a" * 50 + b"\r")
        u.feed(b"\n.\r\nQUIT\r\n")
        self.assertEqual((u.finished, u.trailing), (True, b"QUIT\r\n"))

    def test_dotAfterDroppedLineIsNotEnd(self):
        """
        After an overlong line is dropped mid-line, a C{.CRLF} that follows
        on the same line is not the end of data.
        """
        u = Unstuffer(maxLineLength=10)
        u.feed(b"a" * 50)
        u.feed(b".\r\n")
        self.assertFalse(u.finished)

    def test_unstuffWhole(self):
        """
        L{unstuff} returns the message and what follows the end of data.
        """
        self.assertEqual(unstuff(b"..a\r\n.\r\nQUIT\r\n"), (b".a\r\n", b"QUIT\r\n"))

    def test_unstuffUnfinished(self):
        """
        L{unstuff} raises L{ValueError} when the data has no end.
        """
        self.assertRaises(ValueError, unstuff, b"a\n.\n")

    def test_roundTrip(self):
        """
        What L{stuff} sends, L{unstuff} gives back.
        """
        for name, message, wire in STUFF_TABLE:
            content, _ = unstuff(wire)
            self.assertEqual(unstuff(stuff(content)), (content, b""), name)
