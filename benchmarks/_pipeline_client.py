# Copyright (c) mailproto authors. See LICENSE for details.
"""
One load process of the pipelining benchmark: SESSIONS connections to
127.0.0.1:PORT, each sending MESSAGES messages of SIZE octets in the
dialogue of a pipelining client.  Run by C{pipeline.py}.

    python _pipeline_client.py PORT SESSIONS MESSAGES SIZE SECONDS

Each session reads the greeting, says EHLO, and then, for each message,
writes C{MAIL FROM}, C{RCPT TO} and C{DATA} at once and reads the three
replies (250, 250, 354 expected), then writes the message and the final
dot at once and reads the reply (250 expected); C{QUIT} at the end.  A
reply other than the expected one counts as an error (after a DATA that
did not get 354 the session says RSET and goes on).  A session starts no
new message once SECONDS have passed since the start.

Once every session has said EHLO, the process writes C{ready} to standard
output and waits for a line on standard input; then the sessions send
their messages, and the process writes one line of JSON: the start and the
end (C{time.monotonic}, the same clock in every process), the messages
sent, the errors (with a few examples), whether each server offered
PIPELINING, and the process's own CPU time while sending.
"""

import asyncio
import json
import resource
import sys
import time

from _send_clients import message

ENVELOPE = b"MAIL FROM:<bench@example.org>\r\nRCPT TO:<sink@example.com>\r\nDATA\r\n"
GRACE = 60  # seconds after SECONDS by which every session must have ended
EXAMPLES = 5


class Session(asyncio.Protocol):
    """
    One connection; its replies are counted as they complete, and each step
    of the dialogue starts when the replies of the one before it are in.
    """

    def __init__(self, body: bytes, messages: int, report: dict) -> None:
        self.body = body
        self.left = messages
        self.report = report
        self.buffer = b""
        self.codes = []
        self.expected = 1
        self.step = self.greeted
        self.pipelining = False
        self.ready = asyncio.get_running_loop().create_future()
        self.finished = asyncio.get_running_loop().create_future()
        self.deadline = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line[3:4] == b"-":
                if line[4:14].upper() == b"PIPELINING":
                    self.pipelining = True
                continue
            self.codes.append(line[:3])
            if len(self.codes) == self.expected:
                codes, self.codes = self.codes, []
                self.step(codes)
        self.buffer = buffer[start:]

    def connection_lost(self, exc) -> None:
        if not self.finished.done():
            self.error(f"connection closed with {self.left} messages to go: {exc}")
            self.finished.set_result(None)
        if not self.ready.done():
            self.ready.set_result(None)

    def error(self, text: str) -> None:
        self.report["errors"] += 1
        if len(self.report["examples"]) < EXAMPLES:
            self.report["examples"].append(text)

    def send(self, data: bytes, expected: int, step) -> None:
        self.expected = expected
        self.step = step
        self.transport.write(data)

    def greeted(self, codes) -> None:
        if codes[0] != b"220":
            self.error(f"greeting {codes[0]!r}")
        self.send(b"EHLO client.example\r\n", 1, self.helloed)

    def helloed(self, codes) -> None:
        if codes[0] != b"250":
            self.error(f"EHLO {codes[0]!r}")
        self.expected = 0  # nothing is expected until go()
        self.ready.set_result(None)

    def go(self, deadline: float) -> None:
        self.deadline = deadline
        self.next()

    def next(self) -> None:
        if self.left and time.monotonic() < self.deadline:
            self.send(ENVELOPE, 3, self.envelope)
        else:
            self.send(b"QUIT\r\n", 1, self.quit)

    def envelope(self, codes) -> None:
        if codes == [b"250", b"250", b"354"]:
            self.send(self.body, 1, self.delivered)
        else:
            self.error(f"MAIL, RCPT, DATA: {b' '.join(codes).decode('ascii', 'replace')}")
            if codes[2] == b"354":
                self.send(self.body, 1, self.rejected)
            else:
                self.send(b"RSET\r\n", 1, self.rejected)

    def delivered(self, codes) -> None:
        if codes[0] == b"250":
            self.report["messages"] += 1
        else:
            self.error(f"end of data: {codes[0].decode('ascii', 'replace')}")
        self.left -= 1
        self.next()

    def rejected(self, codes) -> None:
        self.left -= 1
        self.next()

    def quit(self, codes) -> None:
        self.finished.set_result(None)
        self.transport.close()


async def run(port: int, sessions: int, messages: int, size: int, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    body = message(size) + b".\r\n"
    report = {"messages": 0, "errors": 0, "examples": []}
    connections = []
    for _ in range(sessions):
        _, session = await loop.create_connection(lambda: Session(body, messages, report), "127.0.0.1", port)
        connections.append(session)
    await asyncio.wait_for(asyncio.gather(*(s.ready for s in connections)), 60)
    report["pipelining"] = all(s.pipelining for s in connections)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    report["start"] = time.monotonic()
    for session in connections:
        session.go(report["start"] + seconds)
    await asyncio.wait_for(asyncio.gather(*(s.finished for s in connections)), seconds + GRACE)
    report["end"] = time.monotonic()
    used = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu"] = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    return report


if __name__ == "__main__":
    port, sessions, messages, size = map(int, sys.argv[1:5])
    seconds = float(sys.argv[5])
    print(json.dumps(asyncio.run(run(port, sessions, messages, size, seconds))), flush=True)
