# -*- test-case-name: mailproto.test.test_relaymanager -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Relayers: SMTP clients that send queued messages, and the one interface
between a managed relayer and what it sends for (L{IRelayOwner}).

A managed relayer (L{ESMTPManagedRelayer}) is given jobs
(L{Job <mailproto._jobs.Job>}) and an owner.  It tells its owner:

  - C{configureRelayer(relayer)}: once, before the session starts;
  - C{jobAnswered(job, replies, dsn)}: a job has a reply for each
    recipient; the owner gives back jobs to send next on the same
    connection (the recipients a server had no room for);
  - C{moreJobs()}: everything given is sent; more for this destination?
  - C{park(relayer)}: nothing more now; may the session wait for more
    (the owner calls L{ManagedRelayerMixin.resume} later)?
  - C{ended(reason, connected, tlsFailed)}: the session is over, or the
    connection could not be made.

twisted.mail's attempt managers (with C{notifySuccess},
C{notifyFailure}, C{notifyNoConnection}, C{notifyDone}) are still
accepted as the C{manager} of a relayer: they are given an owner that
tells them in their terms (L{ownerOf}).
"""

from __future__ import annotations

import os

from twisted.internet import error
from twisted.internet.protocol import ClientFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from mailproto._auth import CramMD5ClientAuthenticator, LOGINAuthenticator, PLAINAuthenticator
from mailproto._client import SUCCESS, ESMTPClient, SMTPClient
from mailproto._jobs import Job
from mailproto._smarthost import NONE


class IRelayOwner(Interface):
    """
    What a managed relayer tells, and asks of, the connection it sends
    for.  See the module docstring.
    """

    jobs = Attribute("The jobs given to the relayer at first.")

    def configureRelayer(relayer) -> None:
        """
        Set up C{relayer} (time-outs, TLS, credentials) before its session.
        """

    def jobAnswered(job, replies, dsn) -> list:
        """
        C{job} has its C{replies} (a L{Reply} by address); C{dsn}: whether
        the server offers DSN.

        @return: the jobs to send next, before any other.
        """

    def moreJobs() -> list:
        """
        @return: more jobs for the same destination, or none.
        """

    def park(relayer) -> bool:
        """
        @return: whether C{relayer} is to wait for more jobs; if so, its
            L{ManagedRelayerMixin.resume} is called later.
        """

    def ended(reason, connected, tlsFailed) -> None:
        """
        The session is over.

        @param reason: why it ended early (an L{SMTPClientError} or a
            C{Failure}), or C{None} for a session that ended as it should.
        @param connected: whether a connection was made at all.
        @param tlsFailed: whether STARTTLS was tried and TLS did not come
            up.
        """


@implementer(IRelayOwner)
class _AttemptManagerOwner:
    """
    The owner of a relayer whose manager is a twisted.mail attempt
    manager: it hears C{notifySuccess}/C{notifyFailure} with each message's
    name, and C{notifyDone} (after C{notifyNoConnection} if no connection
    was made).
    """

    def __init__(self, manager, factory) -> None:
        self.manager = manager
        self.factory = factory
        self.jobs = []

    def configureRelayer(self, relayer) -> None:
        pass

    def jobAnswered(self, job, replies, dsn) -> list:
        if any(reply.isPositive for reply in replies.values()):
            self.manager.notifySuccess(self.factory, job.name)
        else:
            self.manager.notifyFailure(self.factory, job.name)
        return []

    def moreJobs(self) -> list:
        return []

    def park(self, relayer) -> bool:
        return False

    def ended(self, reason, connected, tlsFailed) -> None:
        if not connected:
            self.manager.notifyNoConnection(self.factory)
        self.manager.notifyDone(self.factory)


def ownerOf(manager, factory) -> IRelayOwner:
    """
    @return: C{manager} if it is an L{IRelayOwner}, else an owner that
        tells it as twisted.mail's relayers told their attempt managers.
    """
    owner = IRelayOwner(manager, None)
    return owner if owner is not None else _AttemptManagerOwner(manager, factory)


def _take(relayer, jobs, first: bool = False) -> None:
    """
    Give a relayer more jobs to send: after those it has, or C{first}.
    """
    jobs = list(jobs)
    if not jobs:
        return
    at = 0 if first else len(relayer.messages)
    relayer.messages[at:at] = jobs
    relayer.names[at:at] = [job.name for job in jobs]


def _next(relayer) -> Job:
    """
    Take the job a relayer just sent off its list.
    """
    relayer.names.pop(0)
    job = relayer.messages.pop(0)
    job.close()
    return job


class RelayerMixin:
    """
    An SMTP client that sends messages from the queue, one after the other.

    @ivar messages: the jobs left to send.
    @ivar names: their queue file paths (or ids), in the same order.
    """

    def loadMessages(self, messagePaths) -> None:
        """
        @param messagePaths: queue file paths (L{Queue.getPath}), for every
            recipient still waiting; or jobs given by a relaying manager.
        """
        self.messages = []
        self.names = []
        _take(self, (item if isinstance(item, Job) else Job.fromPath(item) for item in messagePaths))

    def getMailFrom(self):
        if not self.messages:
            return None
        return self.messages[0].mailFrom()

    def getMailTo(self):
        if not self.messages:
            return None
        return self.messages[0].rcptTo()

    def getMailData(self):
        if not self.messages:
            return None
        return self.messages[0].open()

    def sentMail(self, code, resp, numOk, addresses, log) -> None:
        """
        A message was sent (or refused).  Unmanaged, as in twisted.mail, a
        message every recipient accepted is removed from the spool
        directory; anything else is left there for the next attempt.
        """
        job = _next(self)
        replies = job.replies(code, resp, addresses, self.finalReply)
        if job.path is not None and replies and all(reply.isPositive for reply in replies.values()):
            for suffix in (".state", ""):
                try:
                    os.unlink(job.path + suffix)
                except FileNotFoundError:
                    pass

    def connectionLost(self, reason=connectionDone) -> None:
        for job in self.messages:
            job.close()
        super().connectionLost(reason)


class SMTPRelayer(RelayerMixin, SMTPClient):
    """
    An SMTP client relaying queued messages.
    """

    def __init__(self, messagePaths, *args, **kw) -> None:
        """
        @param messagePaths: see L{RelayerMixin.loadMessages}.
        @param args: for L{SMTPClient}: C{identity}, C{logsize}.
        """
        SMTPClient.__init__(self, *args, **kw)
        self.loadMessages(messagePaths)


class ESMTPRelayer(RelayerMixin, ESMTPClient):
    """
    An ESMTP client relaying queued messages.
    """

    def __init__(self, messagePaths, *args, **kw) -> None:
        """
        @param messagePaths: see L{RelayerMixin.loadMessages}.
        @param args: for L{ESMTPClient}: C{secret}, C{contextFactory},
            C{identity}, C{logsize}.
        """
        ESMTPClient.__init__(self, *args, **kw)
        self.loadMessages(messagePaths)


class ManagedRelayerMixin:
    """
    A relayer that tells its owner (L{IRelayOwner}, or a twisted.mail
    attempt manager: L{ownerOf}) what became of each job, why its session
    failed, and when its connection is gone.

    @ivar manager: what it was given as its manager.
    @ivar lastError: why the session failed, or C{None}.
    """

    lastError = None

    def __init__(self, manager) -> None:
        self.manager = manager
        self._owner = None

    @property
    def owner(self) -> IRelayOwner:
        """
        What the relayer reports to.
        """
        if self._owner is None:
            self._owner = ownerOf(self.manager, self.factory)
        return self._owner

    def getMailFrom(self):
        if not self.messages:
            # Before saying QUIT, take whatever has come due for the same
            # destination since the connection was opened.
            _take(self, self.owner.moreJobs())
        return super().getMailFrom()

    def smtpState_from(self, code, resp) -> None:
        if not self.messages:
            _take(self, self.owner.moreJobs())
            if not self.messages and self.owner.park(self):
                # The connection waits a little for more mail to its
                # destination; the owner calls resume().
                return
        super().smtpState_from(code, resp)

    def resume(self, jobs) -> None:
        """
        Go on after waiting: send C{jobs}, or say QUIT if there are none.
        """
        _take(self, jobs)
        super().smtpState_from(250, b"")

    def sentMail(self, code, resp, numOk, addresses, log) -> None:
        """
        Tell the owner what became of the first job.  Jobs it gives back
        (the recipients a server had no room for in this transaction) are
        sent next, in a new transaction.

        A relayer whose messages are its own (not jobs: a twisted.mail
        relayer with this mixin) tells its manager as twisted.mail did:
        C{notifySuccess} or C{notifyFailure} with the message's name.
        """
        if not isinstance(self.messages[0], Job):
            name = self.names[0]
            del self.messages[0], self.names[0]
            notify = self.manager.notifySuccess if code in SUCCESS else self.manager.notifyFailure
            notify(self.factory, name)
            return
        job = _next(self)
        replies = job.replies(code, resp, addresses, self.finalReply)
        _take(self, self.owner.jobAnswered(job, replies, b"DSN" in self.extensions), first=True)

    def sendError(self, exc) -> None:
        self.lastError = exc
        super().sendError(exc)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        unsent = bool(self.messages)
        super().connectionLost(reason)
        why = self.lastError
        if why is None and (unsent or not reason.check(error.ConnectionDone)):
            # Closed with messages unsent, even cleanly: that is the reason.
            why = reason
        self.owner.ended(why, True, self.tlsFailed)


class SMTPManagedRelayer(ManagedRelayerMixin, SMTPRelayer):
    """
    An SMTP client that sends a list of messages and keeps its owner
    informed.
    """

    def __init__(self, messages, manager, *args, **kw) -> None:
        """
        @param messages: queue file paths, or jobs.
        @param manager: the owner (L{IRelayOwner}) or a twisted.mail
            attempt manager.
        @param args: for L{SMTPClient}: C{identity}, C{logsize}.
        """
        ManagedRelayerMixin.__init__(self, manager)
        SMTPRelayer.__init__(self, messages, *args, **kw)


class ESMTPManagedRelayer(ManagedRelayerMixin, ESMTPRelayer):
    """
    An ESMTP client that sends a list of messages and keeps its owner
    informed.
    """

    def __init__(self, messages, manager, *args, **kw) -> None:
        """
        @param messages: queue file paths, or jobs.
        @param manager: the owner (L{IRelayOwner}) or a twisted.mail
            attempt manager.
        @param args: for L{ESMTPClient}: C{secret}, C{contextFactory},
            C{identity}, C{logsize}.
        """
        ManagedRelayerMixin.__init__(self, manager)
        ESMTPRelayer.__init__(self, messages, *args, **kw)


class SMTPManagedRelayerFactory(ClientFactory):
    """
    Makes the L{SMTPManagedRelayer} for one connection.

    @ivar messages: what to send.
    @ivar manager: the owner, or a twisted.mail attempt manager.
    @ivar owner: the L{IRelayOwner} the relayer reports to.
    @ivar pArgs: more positional arguments for the relayer.
    @ivar pKwArgs: keyword arguments for the relayer.
    """

    protocol = SMTPManagedRelayer
    noisy = False

    def __init__(self, messages, manager, *args, **kw) -> None:
        self.messages = messages
        self.manager = manager
        self.owner = ownerOf(manager, self)
        self.pArgs = args
        self.pKwArgs = kw

    def _configure(self, protocol):
        protocol.factory = self
        protocol._owner = self.owner
        self.owner.configureRelayer(protocol)
        return protocol

    def buildProtocol(self, addr):
        return self._configure(self.protocol(self.messages, self.manager, *self.pArgs, **self.pKwArgs))

    def clientConnectionFailed(self, connector, reason) -> None:
        self.owner.ended(reason, False, False)


class ESMTPManagedRelayerFactory(SMTPManagedRelayerFactory):
    """
    Makes the L{ESMTPManagedRelayer} for one connection.

    @ivar secret: the password for AUTH, or a callable given the server's
        address that returns it, or C{None}.
    @ivar contextFactory: the TLS client options for STARTTLS, or C{None}.
    """

    protocol = ESMTPManagedRelayer

    def __init__(self, messages, manager, secret, contextFactory, *args, **kw) -> None:
        self.secret = secret
        self.contextFactory = contextFactory
        SMTPManagedRelayerFactory.__init__(self, messages, manager, *args, **kw)

    def buildProtocol(self, addr):
        secret = self.secret(addr) if callable(self.secret) else self.secret
        return self._configure(self.protocol(self.messages, self.manager, secret, self.contextFactory, *self.pArgs, **self.pKwArgs))



def configureSecurity(relayer: ESMTPClient, tls, name: str, smartHost=None, plaintext: bool = False, outcome=None) -> None:
    """
    Set up an ESMTP relayer's TLS and AUTH for its destination.

    @param tls: the destination's L{TLSPolicy
        <mailproto._smarthost.TLSPolicy>}.
    @param name: the name the server's certificate must have.
    @param smartHost: the L{SmartHost <mailproto._smarthost.SmartHost>}
        if the relayer sends to it (its credentials are used), else
        C{None}.
    @param plaintext: whether this session goes without TLS (TLS failed
        under C{may}).
    @param outcome: where the session's TLS outcome is written (a
        L{TLSOutcome <mailproto._security._webpki.TLSOutcome>}), for a
        policy that keeps one (a L{HostTLS
        <mailproto._security._policies.HostTLS>}); else C{None}.
    """
    implicit = smartHost is not None and smartHost.implicitTLS
    if relayer.context is None and tls.mode != NONE and not implicit and not plaintext:
        relayer.context = tls.contextFor(name, outcome) if outcome is not None and hasattr(tls, "validated") else tls.contextFor(name)
    if tls.required:
        relayer.requireTransportSecurity = True
        relayer.heloFallback = False
    if smartHost is not None and smartHost.username is not None:
        relayer.secret = smartHost.password
        relayer.requireAuthentication = True
        relayer.heloFallback = False
        for authenticator in (CramMD5ClientAuthenticator, LOGINAuthenticator, PLAINAuthenticator):
            relayer.registerAuthenticator(authenticator(smartHost.username))
