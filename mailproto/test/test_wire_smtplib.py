# -*- test-case-name: mailproto.test.test_wire_smtplib -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The wire layer against a peer nobody here wrote: what Python's smtplib
sends, read by L{Unstuffer}, and what L{DotStuffer} sends, read back the way
smtplib quotes it.

smtplib's C{SMTP.data} is driven in memory: its socket is a recorder and its
replies come from a buffer, so no network is involved.
"""

import io
import smtplib

from twisted.trial.unittest import SynchronousTestCase

from mailproto.wire import DotStuffer, Unstuffer

MESSAGES = [
    b"Subject: plain\r\n\r\nbody\r\n",
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nend",
    b".first line is a dot\r\nsecond\r\n",
    # bytes with bare LF: smtplib sends them as they are, stuffed after LF
    b"Subject: bare LF\n\n.\nline\n..two\n",
    b"x" * 20000 + b"\r\n.\r\n" + b"y" * 100,
]


class _Recorder:
    """
    A socket that records what smtplib sends.
    """

    def __init__(self):
        self.sent = b""

    def sendall(self, data):
        self.sent += data


def smtplibData(message):
    """
    Have smtplib send C{message} with its C{data()} method.

    @return: the bytes smtplib put on the wire after the DATA command.
    """
    client = smtplib.SMTP()
    client.sock = _Recorder()
    client.file = io.BytesIO(b"354 go ahead\r\n250 2.0.0 queued\r\n")
    code, _ = client.data(message)
    if code != 250:
        raise AssertionError(code)
    sent = client.sock.sent
    command = b"data\r\n"
    if not sent.startswith(command):
        raise AssertionError(sent[:20])
    return sent[len(command) :]


def expected(message):
    """
    The message smtplib means to send: every line end as CRLF.  smtplib
    appends CRLF unless the message ends with CRLF, so a message that ends
    with a bare LF gets an empty last line.
    """
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class SmtplibTests(SynchronousTestCase):
    """
    smtplib's encoder and mailproto's decoder agree, and the other way round.
    """

    def test_unstuffSmtplib(self):
        """
        What smtplib sends for a message, L{Unstuffer} reads back as the
        message, bare LF normalised, whole and byte by byte.
        """
        for message in MESSAGES:
            wire = smtplibData(message)
            for chunks in ([wire], [wire[i : i + 1] for i in range(len(wire))]):
                u = Unstuffer(maxLineLength=100000)
                content = b"".join(u.feed(c) for c in chunks)
                self.assertEqual((content, u.finished, u.trailing), (expected(message), True, b""), message[:30])

    def test_smtplibQuotingMatches(self):
        """
        For CRLF messages, L{DotStuffer} sends exactly what smtplib sends.
        """
        for message in MESSAGES:
            if b"\n" in message.replace(b"\r\n", b""):
                continue
            s = DotStuffer()
            self.assertEqual(s.feed(message) + s.finish(), smtplibData(message), message[:30])
