# Copyright (c) mailproto authors. See LICENSE for details.
"""
One send benchmark run: KIND sends TOTAL messages of SIZE octets over CONNS
connections to 127.0.0.1:PORT, then prints its elapsed time (seconds, from
the first connection to the last reply) as JSON.  Run by C{send.py}.

    python _send_clients.py KIND PORT CONNS TOTAL SIZE
"""

import io
import json
import sys
import time

SENDER = b"bench@example.org"
RECIPIENT = b"sink@example.com"


def message(size: int) -> bytes:
    head = b"From: bench@example.org\r\nTo: sink@example.com\r\nSubject: benchmark\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2] + b"\r\n"


def shares(total: int, conns: int) -> list[int]:
    return [total // conns + (1 if i < total % conns else 0) for i in range(conns)]


def runTwisted(kind: str, port: int, conns: int, total: int, data: bytes) -> float:
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory

    if kind == "mailproto":
        from mailproto.smtp import ESMTPClient
    else:
        from twisted.mail.smtp import ESMTPClient

    state = {"left": total, "done": 0, "failed": 0}

    class Bulk(ESMTPClient):
        def __init__(self):
            ESMTPClient.__init__(self, None, None, b"bench.example")
            self.debug = False

        def connectionMade(self):
            ESMTPClient.connectionMade(self)
            if kind == "twisted.mail+nodelay":
                self.transport.setTcpNoDelay(True)

        def getMailFrom(self):
            if state["left"] <= 0:
                return None
            state["left"] -= 1
            return SENDER

        def getMailTo(self):
            return [RECIPIENT]

        def getMailData(self):
            return io.BytesIO(data)

        def sentMail(self, code, resp, numOk, addresses, log):
            state["done" if 200 <= code < 300 else "failed"] += 1

        def sendError(self, exc):
            state["failed"] += 1
            ESMTPClient.sendError(self, exc)

    closed = []

    class Factory(ClientFactory):
        protocol = Bulk

        def buildProtocol(self, addr):
            return Bulk()

        def clientConnectionLost(self, connector, reason):
            closed.append(reason)
            if len(closed) == conns:
                reactor.stop()

        clientConnectionFailed = clientConnectionLost

    start = time.perf_counter()
    for i in range(conns):
        reactor.connectTCP("127.0.0.1", port, Factory())
    reactor.run()
    elapsed = time.perf_counter() - start
    if state["done"] != total:
        raise SystemExit(f"{kind}: {state['done']} of {total} sent, {state['failed']} failed")
    return elapsed


def runSmtplib(port: int, conns: int, total: int, data: bytes) -> float:
    import smtplib
    import threading

    errors = []

    def worker(count: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example") as client:
                for i in range(count):
                    client.sendmail(SENDER.decode(), [RECIPIENT.decode()], data)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in shares(total, conns)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"smtplib: {errors[0]!r}")
    return elapsed


def runAiosmtplib(port: int, conns: int, total: int, data: bytes) -> float:
    import asyncio

    import aiosmtplib

    async def worker(count: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="bench.example", start_tls=False)
        await client.connect()
        for i in range(count):
            await client.sendmail(SENDER.decode(), [RECIPIENT.decode()], data)
        await client.quit()

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in shares(total, conns)))
        return time.perf_counter() - start

    return asyncio.run(main())


def main(argv: list[str]) -> None:
    kind, port, conns, total, size = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    data = message(size)
    if kind in ("mailproto", "twisted.mail", "twisted.mail+nodelay"):
        elapsed = runTwisted(kind, port, conns, total, data)
    elif kind == "smtplib":
        elapsed = runSmtplib(port, conns, total, data)
    elif kind == "aiosmtplib":
        elapsed = runAiosmtplib(port, conns, total, data)
    else:
        raise SystemExit(f"unknown client {kind}")
    print(json.dumps({"elapsed": elapsed}))


if __name__ == "__main__":
    main(sys.argv[1:])
