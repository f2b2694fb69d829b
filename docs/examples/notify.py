"""
Part of an application: it welcomes new users by mail.
"""

from email.message import EmailMessage

from mailproto.smtp import sendmail

SMTP_HOST = "smtp.example.com"


def welcome(address, reactor=None):
    """
    Mail a welcome message to a new user.

    @param address: the user's mail address.
    @param reactor: the reactor; the global one if None.
    @return: a Deferred that fires with True once the server has taken the
        message, or fails with an SMTPClientError.
    """
    message = EmailMessage()
    message["From"] = "Example <noreply@example.com>"
    message["To"] = address
    message["Subject"] = "Welcome!"
    message.set_content("Your account is ready.\n")
    d = sendmail(SMTP_HOST, "noreply@example.com", [address], message, reactor=reactor)
    d.addCallback(lambda result: result[0] == 1)
    return d
