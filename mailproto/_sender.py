# -*- test-case-name: mailproto.test.test_sender -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Sending one message the easy way: L{sendmail}, and the factories and
protocols under it (L{SMTPSenderFactory}, L{ESMTPSenderFactory},
L{SMTPSender}, L{ESMTPSender}), as in twisted.mail.
"""

from __future__ import annotations

import io

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import HostnameAddress
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IReactorPluggableNameResolver, IReactorTime, IResolutionReceiver
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from zope.interface import implementer

from mailproto._address import Address
from mailproto._auth import CramMD5ClientAuthenticator, LOGINAuthenticator, PLAINAuthenticator
from mailproto._client import SUCCESS, ESMTPClient, LMTPClient, SMTPClient
from mailproto._errors import ESMTPClientError, SMTPConnectError, SMTPDeliveryError, SMTPTLSFailure
from mailproto._headers import localHostname
from mailproto._replies import statusOf
from mailproto._tlserrors import describeTLSFailure

_log = Logger()


def _isTLSFailure(failure) -> bool:
    """
    @return: whether C{failure} is a TLS handshake or certificate failure,
        which trying again would only repeat.
    """
    from OpenSSL import SSL
    from service_identity import VerificationError

    return failure.check(SSL.Error, VerificationError) is not None


def _toBytes(value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class SenderMixin:
    """
    Sends the one message its factory holds, and reports to the factory's
    Deferred: C{(numOk, addresses)} on success, an L{SMTPDeliveryError}
    (or the error that stopped it) on failure.
    """

    done = 0

    def getMailFrom(self):
        if self.done:
            return None
        self.done = 1
        return self.factory.fromEmail

    def getMailTo(self):
        return self.factory.toEmail

    def getMailData(self):
        return self.factory.file

    def sendError(self, exc) -> None:
        SMTPClient.sendError(self, exc)
        # Report now unless the factory will try again: it does for
        # connection-level errors (retry set, or a 4xx) while it has
        # retries left.
        # AUTH and TLS failures are not: another connection would only add
        # failures against this client.
        transient = not isinstance(exc, ESMTPClientError) and (
            getattr(exc, "retry", False) or 400 <= getattr(exc, "code", -1) < 500
        )
        if self.factory.retries >= 0 or not transient:
            self.factory._finish(exc)

    def sentMail(self, code, resp, numOk, addresses, log) -> None:
        if code not in SUCCESS:
            lines = [
                bytes(address) + b": " + b"%03d" % rcode + b" " + rresp
                for address, rcode, rresp in addresses
                if rcode not in SUCCESS
            ]
            lines.append(log.str())
            self.factory._finish(
                SMTPDeliveryError(code, resp, b"\n".join(lines), addresses, status=statusOf(code, resp))
            )
        else:
            self.factory._finish((numOk, addresses))


class SMTPSender(SenderMixin, SMTPClient):
    """
    Sends its factory's message over SMTP (HELO).
    """


class ESMTPSender(SenderMixin, ESMTPClient):
    """
    Sends its factory's message over ESMTP, with STARTTLS (certificate
    and host name checked when C{hostname} is given) and AUTH (CRAM-MD5,
    LOGIN, PLAIN, in that order) required by default.
    """

    requireAuthentication = True
    requireTransportSecurity = True

    def __init__(self, username, secret, contextFactory=None, *args, **kw) -> None:
        """
        @param username: the user name for AUTH, or C{None}.
        @param secret: the password, or C{None}.
        @param contextFactory: the TLS context for STARTTLS; if C{None} and
            C{hostname} is given, one that checks the server's certificate
            for that name.
        @param args: C{identity}, C{logsize}, as for L{SMTPClient}.
        @param kw: C{hostname}: the server's name, for certificate checks.
        """
        self.heloFallback = False
        self.username = username
        self._hostname = kw.pop("hostname", None)
        if contextFactory is None:
            contextFactory = self._getContextFactory()
        ESMTPClient.__init__(self, secret, contextFactory, *args, **kw)
        self._registerAuthenticators()

    def _registerAuthenticators(self) -> None:
        if self.username is None:
            return
        self.registerAuthenticator(CramMD5ClientAuthenticator(self.username))
        self.registerAuthenticator(LOGINAuthenticator(self.username))
        self.registerAuthenticator(PLAINAuthenticator(self.username))

    def _getContextFactory(self):
        if self.context is not None:
            return self.context
        if self._hostname is None:
            return None
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(self._hostname)


class LMTPSender(SenderMixin, LMTPClient):
    """
    Sends its factory's message over LMTP; the result's C{addresses} has
    each recipient's own outcome.
    """


class SMTPSenderFactory(ClientFactory):
    """
    Makes an L{SMTPSender} for one message and fires C{deferred} with the
    result; tries again (C{retries} times) when it cannot connect or the
    connection is lost before the message is done.

    @ivar currentProtocol: the protocol of the current attempt.
    @ivar sendFinished: whether the result is known (or the send was
        cancelled).
    @ivar clock: what times the replies (an C{IReactorTime}); the global
        reactor if C{None}.
    """

    protocol = SMTPSender
    clock = None
    connector = None
    _domain = None

    def __init__(self, fromEmail, toEmail, file, deferred, retries=5, timeout=None) -> None:
        """
        @param fromEmail: the envelope sender.
        @param toEmail: one recipient, or a sequence of them.
        @param file: the message, a file open for reading in binary mode.
        @param deferred: fired with C{(numOk, addresses)}, or failed.
        @param retries: how many more connections to try.
        @param timeout: seconds to wait for each reply, or C{None}.
        """
        if not isinstance(retries, int):
            raise TypeError("retries must be an int")
        if isinstance(toEmail, (str, bytes, Address)):
            toEmail = [toEmail]
        self.fromEmail = fromEmail if isinstance(fromEmail, Address) else Address(_toBytes(fromEmail))
        self.toEmail = [t if isinstance(t, Address) else Address(_toBytes(t)) for t in toEmail]
        self.nEmails = len(self.toEmail)
        self.file = file
        self.result = deferred
        self.sendFinished = False
        self.currentProtocol = None
        self.retries = -retries
        self.timeout = timeout
        self._hosts = None
        self._connectArgs = None

    @property
    def domain(self) -> bytes:
        """
        The name sent with HELO/EHLO: this host's name unless set.
        """
        return self._domain or localHostname()

    @domain.setter
    def domain(self, value) -> None:
        self._domain = value if isinstance(value, bytes) else str(value).encode("idna")

    def _finish(self, result) -> None:
        """
        Fire the result once.
        """
        if self.sendFinished and self.result is None:
            return
        self.sendFinished = True
        deferred, self.result = self.result, None
        if deferred is None or deferred.called:
            return
        if isinstance(result, BaseException):
            deferred.errback(result)
        else:
            deferred.callback(result)

    def clientConnectionFailed(self, connector, err) -> None:
        self._processConnectionError(connector, err)

    def clientConnectionLost(self, connector, err) -> None:
        self._processConnectionError(connector, err)

    def _processConnectionError(self, connector, err) -> None:
        if not isinstance(err, Failure):
            # twisted.mail took a bare exception here too.
            err = Failure(err)
        if self.currentProtocol is not None and self.currentProtocol._failureReason is not None:
            err = self.currentProtocol._failureReason
        self.currentProtocol = None
        if self.sendFinished:
            return
        if self.retries < 0 and not _isTLSFailure(err):
            self.retries += 1
            _log.info("SMTP client trying again ({left} more): {error}", left=-self.retries, error=err.value)
            self.file.seek(0, 0)
            self._reconnect(connector)
            return
        if _isTLSFailure(err):
            error = SMTPTLSFailure(-1, "TLS failed: " + describeTLSFailure(err.value))
        else:
            error = SMTPConnectError(-1, "Unable to connect to SMTP server: " + str(err.value))
        error.__cause__ = err.value
        self._finish(error)

    def _reconnect(self, connector) -> None:
        """
        Connect again: to the same host, or to the next of several.
        """
        if not self._hosts or len(self._hosts) < 2:
            # (sendmail's connector for a host name goes on to its next
            # address.)
            (self.connector if self.connector is not None else connector).connect()
            return
        self._hostIndex = (self._hostIndex + 1) % len(self._hosts)
        self.connector = self._connectArgs(*self._hosts[self._hostIndex])

    def _protocolArgs(self) -> tuple:
        return (self.domain, self.nEmails * 2 + 2)

    def buildProtocol(self, addr):
        p = self.protocol(*self._protocolArgs())
        self._configure(p)
        return p

    def _configure(self, p) -> None:
        p.factory = self
        p.timeout = self.timeout
        if self.clock is not None:
            p.callLater = self.clock.callLater
        self.currentProtocol = p


class ESMTPSenderFactory(SMTPSenderFactory):
    """
    L{SMTPSenderFactory} for L{ESMTPSender}: STARTTLS and AUTH, required by
    default.
    """

    protocol = ESMTPSender

    def __init__(
        self,
        username,
        password,
        fromEmail,
        toEmail,
        file,
        deferred,
        retries=5,
        timeout=None,
        contextFactory=None,
        heloFallback=False,
        requireAuthentication=True,
        requireTransportSecurity=True,
        hostname=None,
    ) -> None:
        SMTPSenderFactory.__init__(self, fromEmail, toEmail, file, deferred, retries, timeout)
        self.username = username
        self.password = password
        self._contextFactory = contextFactory
        self._heloFallback = heloFallback
        self._requireAuthentication = requireAuthentication
        self._requireTransportSecurity = requireTransportSecurity
        self._hostname = hostname

    def buildProtocol(self, addr):
        p = self.protocol(
            self.username, self.password, self._contextFactory, *self._protocolArgs(), hostname=self._hostname
        )
        p.heloFallback = self._heloFallback
        p.requireAuthentication = self._requireAuthentication
        p.requireTransportSecurity = self._requireTransportSecurity
        self._configure(p)
        return p


@implementer(IResolutionReceiver)
class _ResolvingConnector:
    """
    The connector of L{sendmail} for a server given by name: the name is
    resolved to all its addresses, IPv4 and IPv6 (the reactor's name
    resolver, C{getaddrinfo} order), and each C{connect()} tries the next
    of them, so that the factory's retries go through them in turn.
    """

    def __init__(self, reactor, host: str, port: int, connectTo, factory) -> None:
        """
        @param connectTo: connects to one address and returns the
            reactor's connector.
        @param factory: told C{clientConnectionFailed} if the name has no
            address.
        """
        self.host = host
        self.port = port
        self._connectTo = connectTo
        self._factory = factory
        self._found: list[str] = []
        self._addresses: list[str] | None = None
        self._next = 0
        self._connector = None
        self._stopped = False
        reactor.nameResolver.resolveHostName(self, host, port)

    def resolutionBegan(self, resolution) -> None:
        pass

    def addressResolved(self, address) -> None:
        if address.host not in self._found:
            self._found.append(address.host)

    def resolutionComplete(self) -> None:
        self._addresses = self._found
        if not self._stopped:
            self.connect()

    def connect(self) -> None:
        """
        Connect to the next address (once the name is resolved).
        """
        if self._addresses is None or self._stopped:
            return
        if not self._addresses:
            self._factory.clientConnectionFailed(self, Failure(DNSLookupError(self.host)))
            return
        address = self._addresses[self._next % len(self._addresses)]
        self._next += 1
        self._connector = self._connectTo(address)

    def disconnect(self) -> None:
        """
        Stop: close the connection, or stop connecting or resolving.
        """
        self._stopped = True
        if self._connector is not None:
            self._connector.disconnect()

    stopConnecting = disconnect

    def getDestination(self) -> HostnameAddress:
        return HostnameAddress(self.host.encode("idna"), self.port)


def _splitHost(host, port: int) -> tuple[str, int]:
    if isinstance(host, tuple):
        return (host[0].decode("idna") if isinstance(host[0], bytes) else host[0]), int(host[1])
    if isinstance(host, bytes):
        host = host.decode("idna")
    return host, port


def sendmail(
    smtphost,
    from_addr,
    to_addrs,
    msg,
    senderDomainName=None,
    port=25,
    reactor=None,
    username=None,
    password=None,
    requireAuthentication=False,
    requireTransportSecurity=False,
    *,
    implicitTLS=False,
    contextFactory=None,
    timeout=300,
    connectTimeout=30,
    retries=5,
):
    """
    Send a message.

    Uses ESMTP (falling back to HELO), STARTTLS when the server offers it
    (checking its certificate against C{smtphost}), and AUTH when a
    password is given.

    @param smtphost: the server's host name or address; or a list of them
        (names, or C{(host, port)} pairs), tried in order when one cannot
        be reached.
    @param from_addr: the envelope sender.
    @param to_addrs: a recipient, or a list of them.
    @param msg: the message: a file open for reading in binary mode, or
        C{bytes} (or anything C{bytes} accepts, such as an
        C{email.message.Message}).
    @param senderDomainName: the name for EHLO; this host's if C{None}.
    @param port: the server's port.
    @param reactor: the reactor; the global one if C{None}.  One without
        C{IReactorTime} (as twisted's C{MemoryReactor}) means no reply
        timeout.
    @param username: the user name for AUTH.
    @param password: the password for AUTH; without it, no AUTH.
    @param requireAuthentication: fail unless AUTH succeeds.
    @param requireTransportSecurity: fail unless TLS is in use; nothing is
        sent to a server without STARTTLS.
    @param implicitTLS: connect with TLS from the first byte (RFC 8314,
        port 465).
    @param contextFactory: the TLS client context; by default one that
        checks the server's certificate for C{smtphost}.
    @param timeout: seconds to wait for each reply.
    @param connectTimeout: seconds to wait for each connection.
    @param retries: how many more connections to try.
    @return: a C{Deferred} firing with C{(numOk, addresses)} -- how many
        recipients the server accepted, and C{(address, code, resp)} for
        each -- or failing with an L{mailproto.smtp.SMTPClientError}.
        Cancelling it stops the send and closes the connection.
    """
    if reactor is None:
        from twisted.internet import reactor
    if not hasattr(msg, "read"):
        msg = io.BytesIO(msg if isinstance(msg, bytes) else bytes(msg))
    hosts = [_splitHost(h, port) for h in (smtphost if isinstance(smtphost, list) else [smtphost])]
    if isinstance(username, str):
        username = username.encode("utf-8")
    if isinstance(password, str):
        password = password.encode("utf-8")

    def cancel(d):
        factory.sendFinished = True
        factory.result = None
        if factory.currentProtocol is not None and factory.currentProtocol.transport is not None:
            factory.currentProtocol.transport.abortConnection()
        else:
            factory.connector.disconnect()

    d = defer.Deferred(cancel)
    factory = ESMTPSenderFactory(
        username,
        password,
        from_addr,
        to_addrs,
        msg,
        d,
        retries=retries,
        timeout=timeout,
        contextFactory=contextFactory,
        heloFallback=True,
        requireAuthentication=requireAuthentication,
        requireTransportSecurity=requireTransportSecurity,
        hostname=hosts[0][0],
    )
    if IReactorTime.providedBy(reactor):
        factory.clock = reactor
    else:
        # A reactor without time (twisted's MemoryReactor, in tests): no
        # reply timeout, as with twisted.mail's sendmail.
        factory.timeout = None
    if senderDomainName is not None:
        factory.domain = senderDomainName

    def connectTo(address: str, port: int, name: str):
        if implicitTLS:
            from twisted.internet.ssl import optionsForClientTLS

            tls = contextFactory or optionsForClientTLS(name)
            return reactor.connectSSL(address, port, factory, tls, timeout=connectTimeout)
        return reactor.connectTCP(address, port, factory, timeout=connectTimeout)

    def connect(host: str, port: int):
        factory._hostname = host
        if IReactorPluggableNameResolver.providedBy(reactor) and not (isIPAddress(host) or isIPv6Address(host)):
            return _ResolvingConnector(reactor, host, port, lambda address: connectTo(address, port, host), factory)
        return connectTo(host, port, host)

    factory._hosts = hosts
    factory._hostIndex = 0
    factory._connectArgs = connect
    factory.connector = connect(*hosts[0])
    return d
