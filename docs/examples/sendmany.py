"""
Send several messages over one connection with an ESMTPClient subclass,
to the server of mailserver.py.

    python sendmany.py
"""

import io

from twisted.internet import defer, endpoints, task

from mailproto.smtp import ESMTPClient


class Batch(ESMTPClient):
    """
    Sends a list of messages, then says QUIT.
    """

    def __init__(self, messages):
        ESMTPClient.__init__(self, None, None, b"client.example.org")
        self.messages = list(messages)  # (sender, [recipients], message)
        self.results = []
        self.finished = defer.Deferred()

    def getMailFrom(self):
        if not self.messages:
            return None  # nothing more to send: QUIT
        self.current = self.messages.pop(0)
        return self.current[0]

    def getMailTo(self):
        return self.current[1]

    def getMailData(self):
        return io.BytesIO(self.current[2])

    def sentMail(self, code, resp, numOk, addresses, log):
        self.results.append((code, resp, numOk))

    def connectionLost(self, reason):
        ESMTPClient.connectionLost(self, reason)
        self.finished.callback(self.results)


def makeMessages(count):
    return [
        (b"carol@example.org", [b"alice@example.com"], b"Subject: Report %d\n\nAll well.\n" % n)
        for n in range(1, count + 1)
    ]


async def main(reactor, description="tcp:127.0.0.1:2525"):
    client = Batch(makeMessages(3))
    endpoint = endpoints.clientFromString(reactor, description)
    await endpoints.connectProtocol(endpoint, client)
    for code, resp, numOk in await client.finished:
        print(code, resp.decode(), numOk)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
