"""
Send one message with sendmail() to the server of mailserver.py.

    python sendone.py
"""

from email.message import EmailMessage

from twisted.internet import defer, task

from mailproto.smtp import sendmail


def makeMessage():
    message = EmailMessage()
    message["From"] = "carol@example.org"
    message["To"] = "alice@example.com, bob@example.com"
    message["Subject"] = "Lunch?"
    message.set_content("Shall we meet at noon?\n")
    return message


async def main(reactor, host="127.0.0.1", port=2525):
    recipients = ["alice@example.com", "bob@example.com", "nobody@example.com"]
    numOk, addresses = await sendmail(
        host, "carol@example.org", recipients, makeMessage(), port=port, reactor=reactor
    )
    print(f"{numOk} of {len(recipients)} recipients accepted")
    for address, code, text in addresses:
        print(f"  {address}: {code} {text.decode()}")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
