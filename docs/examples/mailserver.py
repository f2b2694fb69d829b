"""
A small mail server: it takes mail for the users of one domain and keeps
each user's mail in a Maildir.

    python mailserver.py

listens on 127.0.0.1 port 2525 and stores mail under ./mail.
"""

import mailbox
import os
import sys

from twisted.internet import defer, endpoints, task
from twisted.logger import globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from mailproto.smtp import ESMTPFactory, IMessage, IMessageDelivery, SMTPBadRcpt, rfc822date

DOMAIN = b"example.com"
USERS = {b"alice", b"bob"}


@implementer(IMessage)
class MaildirMessage:
    """
    One copy of a message, for one recipient.
    """

    def __init__(self, maildir):
        self.maildir = maildir
        self.lines = []

    def lineReceived(self, line):
        # One line of the message, without its line end.
        self.lines.append(line)

    def eomReceived(self):
        # The whole message is here: store it, then let the server say 250.
        self.maildir.add(b"\n".join(self.lines) + b"\n")
        self.lines = None
        return defer.succeed(None)

    def connectionLost(self):
        # The message was abandoned or refused: keep nothing.
        self.lines = None


@implementer(IMessageDelivery)
class LocalDelivery:
    """
    Accepts mail from anyone for the users of DOMAIN.
    """

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory

    def receivedHeader(self, helo, origin, recipients):
        clientName, clientAddress = helo
        return b"Received: from %s ([%s])\n by mx.%s; %s" % (clientName, clientAddress, DOMAIN, rfc822date())

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        address = user.dest
        if address.domain.lower() != DOMAIN or address.local.lower() not in USERS:
            raise SMTPBadRcpt(user)
        path = os.path.join(self.directory, address.local.lower().decode("ascii"))
        return lambda: MaildirMessage(mailbox.Maildir(path))


def makeFactory(directory):
    return ESMTPFactory(delivery=LocalDelivery(directory), domain=b"mx." + DOMAIN)


def listen(reactor, description, directory):
    endpoint = endpoints.serverFromString(reactor, description)
    return endpoint.listen(makeFactory(directory))


async def main(reactor, description="tcp:2525:interface=127.0.0.1", directory="mail"):
    port = await listen(reactor, description, directory)
    print("Listening on", port.getHost())
    await defer.Deferred()  # until Ctrl-C


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
