# Copyright (c) mailproto authors. See LICENSE for details.
"""
Writing a short reply or command straight to the socket.

A Twisted TCP transport buffers every C{write} and sends it on the
reactor's next turn: it asks epoll to watch the socket for writing, sends
when told it may, then asks epoll to stop watching.  For SMTP's replies
and commands, a few dozen octets that a socket with an empty send buffer
always takes at once, that is two C{epoll_ctl} calls and a reactor turn
per line, more than the send itself.

L{writeNow} sends at once when nothing is waiting in the transport's own
buffer, the connection is plain TCP and still open for writing, and no
pull producer is registered (a pull producer is asked for more only when
the buffer drains; a streaming producer is told to pause by
C{transport.write} when the buffer fills, which whatever the socket does
not take still goes through), so the order of the octets is kept; whatever the socket does not take (or any
other case) goes through C{transport.write} as usual, and errors are left
to the transport to find, as they would be.
"""

from twisted.internet import tcp

_PLAIN = (tcp.Server, tcp.Client)


def writeNow(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once when that is safe.

    @param transport: any C{ITransport}.
    @param data: the octets to write.
    """
    if (
        type(transport) in _PLAIN
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and (transport.producer is None or transport.streamingProducer)
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, or an error the transport will meet on its next
            # write or read and report as it always does.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
