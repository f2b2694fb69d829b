# Copyright (c) mailproto authors. See LICENSE for details.
"""
One benchmark server: KIND listens on 127.0.0.1:PORT, accepts every message
and throws it away, until SIGTERM.  Run by C{accept.py} and C{memory.py}.

    python _servers.py KIND PORT [MAXSIZE]

KIND is one of:

  - C{mailproto}: mailproto's C{ESMTP} with a discarding delivery that takes
    the message line by line (C{IMessage.lineReceived}), the same delivery
    as twisted.mail's below;
  - C{mailproto-stream}: the same, with a delivery that takes the message in
    chunks (C{IMessageStream.dataReceived});
  - C{twisted.mail}: C{twisted.mail.smtp.ESMTP} with the line delivery;
  - C{twisted-floor}: not an SMTP server but the least a Twisted server
    can do for smtp-source's dialogue: a canned reply to each command
    line, and a search for the end of data; the bound for any server on
    Twisted's reactor;
  - C{aiosmtpd}: aiosmtpd's C{Controller}-less server with a handler that
    returns 250 for DATA.

MAXSIZE is the largest message each server takes, in octets (default: each
server's own default; 0 for no limit).  The server writes "ready" to standard output once it listens,
and "received N messages" to standard error when it stops (not twisted-floor).
"""

import signal
import sys


def receivedHeader(helo, origin, recipients):
    # Both Twisted servers add the same trace header, as a relay would.
    client = helo[0].decode("ascii", "replace") if helo else "unknown"
    return f"Received: from {client} by bench.example with ESMTP".encode("ascii")


received = [0]


def stopped() -> None:
    print(f"received {received[0]} messages", file=sys.stderr, flush=True)


def twistedServer(kind: str, port: int, maxSize) -> None:
    from twisted.internet import defer, reactor
    from twisted.internet.protocol import Factory
    from zope.interface import implementer

    if kind == "twisted.mail":
        from twisted.mail import smtp
        IMessageStream = None
    else:
        from mailproto import smtp
        from mailproto.interfaces import IMessageStream

    @implementer(smtp.IMessage)
    class Discard:
        def lineReceived(self, line):
            pass

        def eomReceived(self):
            received[0] += 1
            return defer.succeed(None)

        def connectionLost(self):
            pass

    if kind == "mailproto-stream":
        Discard = implementer(IMessageStream)(
            type("DiscardStream", (Discard,), {"dataReceived": lambda self, data: None})
        )

    @implementer(smtp.IMessageDelivery)
    class Delivery:
        def receivedHeader(self, helo, origin, recipients):
            return receivedHeader(helo, origin, recipients)

        def validateFrom(self, helo, origin):
            return origin

        def validateTo(self, user):
            return Discard

    class ServerFactory(Factory):
        def buildProtocol(self, addr):
            protocol = smtp.ESMTP()
            protocol.factory = self
            protocol.delivery = Delivery()
            if maxSize is not None and hasattr(protocol, "maxMessageSize"):
                protocol.maxMessageSize = maxSize
            return protocol

    reactor.listenTCP(port, ServerFactory(), backlog=1024, interface="127.0.0.1")
    signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(reactor.stop))
    reactor.callWhenRunning(print, "ready", flush=True)
    reactor.run()
    stopped()


def floorServer(port: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    class Floor(Protocol):
        def connectionMade(self):
            self.buffer = b""
            self.data = False
            self.transport.write(b"220 bench.example ESMTP\r\n")

        def dataReceived(self, data):
            buffer = self.buffer + data
            write = self.transport.write
            while buffer:
                if self.data:
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        buffer = buffer[-4:]
                        break
                    buffer = buffer[end + 5 :]
                    self.data = False
                    write(b"250 2.0.0 OK\r\n")
                    continue
                end = buffer.find(b"\r\n")
                if end < 0:
                    break
                line, buffer = buffer[:end], buffer[end + 2 :]
                verb = line[:4].upper()
                if verb == b"DATA":
                    self.data = True
                    write(b"354 Go ahead\r\n")
                elif verb == b"QUIT":
                    write(b"221 2.0.0 Bye\r\n")
                    self.transport.loseConnection()
                    break
                else:
                    write(b"250 2.0.0 OK\r\n")
            self.buffer = buffer

    reactor.listenTCP(port, Factory.forProtocol(Floor), backlog=1024, interface="127.0.0.1")
    signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(reactor.stop))
    reactor.callWhenRunning(print, "ready", flush=True)
    reactor.run()


def aiosmtpdServer(port: int, maxSize) -> None:
    import asyncio

    from aiosmtpd.smtp import SMTP

    class Discard:
        async def handle_DATA(self, server, session, envelope):
            received[0] += 1
            return "250 OK"

    limit = {} if maxSize is None else {"data_size_limit": maxSize or None}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Discard(), hostname="bench.example", **limit), "127.0.0.1", port, backlog=1024
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        server.close()

    asyncio.run(main())
    stopped()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    maxSize = int(sys.argv[3]) if len(sys.argv) > 3 else None
    if kind == "aiosmtpd":
        aiosmtpdServer(port, maxSize)
    elif kind == "twisted-floor":
        floorServer(port)
    else:
        twistedServer(kind, port, maxSize)
