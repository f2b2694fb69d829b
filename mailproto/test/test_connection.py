# -*- test-case-name: mailproto.test.test_connection -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
L{mailproto._connection}: a connection over its states and the events
that move it, and its sessions as the owners of their relayers.
"""

from __future__ import annotations

from twisted.internet import defer, error
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailproto._connection import FINISHED, ROUTING, SECURING, TRYING, Connection
from mailproto._errors import SMTPProtocolError
from mailproto._jobs import Job, MessageAttempt
from mailproto._mx import Candidate, Destination, NoSuchDomain
from mailproto._queue import Envelope, Recipient
from mailproto._relayers import IRelayOwner
from mailproto._replies import Reply
from mailproto._security._policies import DestinationSecurity, HostTLS, staticSecurity
from mailproto._smarthost import ENCRYPT, MAY, VERIFY, TLSPolicy

OK = Reply(250, [b"Ok"], b"2.0.0")


class _Recorder:
    def __init__(self):
        self.answered = []
        self.failed = []

    def jobAnswered(self, job, replies, host, dsn):
        job.answered = True
        self.answered.append((job, replies, host))

    def jobFailed(self, job, reply, host):
        job.answered = True
        self.failed.append((job, reply))


class _Lines:
    def moreJobs(self, connection):
        return []

    def park(self, connection, relayer):
        return False


class _Manager:
    """
    What a connection needs of its manager, recording what it is asked.
    """

    maxAddresses = 5
    mxcalc = None

    def __init__(self, route):
        self.routing = route
        self.recorder = _Recorder()
        self.lines = _Lines()
        self.sessions = []
        self.ended = []
        self.tls = TLSPolicy(MAY)

    def route(self, destination):
        return self.routing

    def connect(self, session, address):
        self.sessions.append((session, address, session.connection.plaintext))

    def configureRelayer(self, relayer, connection):
        pass

    #: What L{secure} answers, if set; else the policy the connection
    #: was made with.
    security = None

    def secure(self, destination, route, jobs):
        if self.security is not None:
            return self.security
        return defer.succeed(staticSecurity(destination, self.tls))

    def tlsSessionEnded(self, tls, host, address, outcome, reason, starttlsMissing):
        pass

    def connectionEnded(self, connection):
        self.ended.append(connection)


def _jobs(count=2):
    envelope = Envelope("0" * 12, b"jo@example.org", [Recipient(b"r%d@example.com" % i) for i in range(count)])
    attempt = MessageAttempt(envelope)
    return [attempt.add(Job(envelope, [r], "example.com", attempt)) for r in envelope.recipients]


ROUTE = Destination("example.com", (Candidate(10, "mx1.example.com", ("192.0.2.1",)), Candidate(20, "mx2.example.com", ("192.0.2.2",))))
LOST = Failure(error.ConnectionLost("gone"))
REFUSED = Failure(error.ConnectionRefusedError("refused"))


class ConnectionStateTests(SynchronousTestCase):
    """
    Every state of L{Connection} against every event.
    """

    def connectionIn(self, state, tls=MAY):
        routing = defer.Deferred()
        manager = _Manager(routing)
        manager.tls = TLSPolicy(tls)
        jobs = _jobs()
        connection = Connection(manager, "example.com", jobs, TLSPolicy(tls))
        connection.start()
        if state in (TRYING, FINISHED):
            routing.callback(ROUTE)
        if state == FINISHED:
            session = connection.session
            for job in jobs:
                session.jobAnswered(job, {job.recipients[0].address: OK}, True)
            session.ended(None, True, False)
        self.assertEqual(connection.state, state)
        return connection, manager, routing, jobs

    def test_routingRouted(self):
        connection, manager, routing, jobs = self.connectionIn(ROUTING)
        routing.callback(ROUTE)
        self.assertEqual(connection.state, TRYING)
        self.assertEqual([address for _, address, _ in manager.sessions], ["192.0.2.1"])
        self.assertEqual(connection.host, "mx1.example.com")

    def test_routingNotRouted(self):
        """
        A domain that does not exist fails every job with the relay's
        own permanent reply.
        """
        connection, manager, routing, jobs = self.connectionIn(ROUTING)
        routing.errback(NoSuchDomain("example.com"))
        self.assertEqual(connection.state, FINISHED)
        self.assertEqual([(job, reply.code, reply.status) for job, reply in manager.recorder.failed], [(job, 550, b"5.1.2") for job in jobs])
        self.assertEqual(manager.ended, [connection])
        self.assertTrue(connection.done.called)

    def test_routingBug(self):
        connection, manager, routing, jobs = self.connectionIn(ROUTING)
        routing.errback(ZeroDivisionError())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(connection.state, FINISHED)
        self.assertEqual({(reply.code, reply.status) for _, reply in manager.recorder.failed}, {(451, b"4.4.3")})

    def test_tryingAllAnswered(self):
        connection, manager, routing, jobs = self.connectionIn(TRYING)
        session = connection.session
        for job in jobs:
            session.jobAnswered(job, {job.recipients[0].address: OK}, True)
        session.ended(None, True, False)
        self.assertEqual(connection.state, FINISHED)
        self.assertEqual(manager.recorder.failed, [])
        self.assertEqual([host for _, _, host in manager.recorder.answered], ["mx1.example.com"] * 2)

    def test_tryingNothingAnsweredNextAddress(self):
        connection, manager, routing, jobs = self.connectionIn(TRYING)
        connection.session.ended(REFUSED, False, False)
        self.assertEqual(connection.state, TRYING)
        self.assertEqual([address for _, address, _ in manager.sessions], ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(connection.host, "mx2.example.com")

    def test_tryingNoAddressLeft(self):
        """
        The last address fails too: every job is deferred with the last
        reason.
        """
        connection, manager, routing, jobs = self.connectionIn(TRYING)
        connection.session.ended(REFUSED, False, False)
        connection.session.ended(LOST, True, False)
        self.assertEqual(connection.state, FINISHED)
        self.assertEqual({(reply.code, reply.status) for _, reply in manager.recorder.failed}, {(451, b"4.4.2")})

    def test_tryingSomethingAnswered(self):
        """
        A session that answered a job and then broke: the rest is
        deferred at once, not tried at the next address.
        """
        connection, manager, routing, jobs = self.connectionIn(TRYING)
        session = connection.session
        session.jobAnswered(jobs[0], {jobs[0].recipients[0].address: OK}, True)
        session.ended(Failure(SMTPProtocolError(-1, b"Unexpected reply to DATA: 250")), True, False)
        self.assertEqual(connection.state, FINISHED)
        self.assertEqual(len(manager.sessions), 1)
        [(job, reply)] = manager.recorder.failed
        self.assertIs(job, jobs[1])
        self.assertEqual((reply.code, reply.status), (451, b"4.4.2"))
        self.assertIn(b"Unexpected reply to DATA", reply.text)

    def test_tryingTLSFailedUnderMay(self):
        """
        TLS failed under C{may} before anything was answered: the same
        address again, without TLS; once only.
        """
        connection, manager, routing, jobs = self.connectionIn(TRYING)
        connection.session.ended(LOST, True, True)
        self.assertEqual(manager.sessions[-1][1:], ("192.0.2.1", True))
        connection.session.ended(LOST, True, True)
        self.assertEqual(manager.sessions[-1][1:], ("192.0.2.2", False))

    def test_tryingTLSFailedUnderEncrypt(self):
        connection, manager, routing, jobs = self.connectionIn(TRYING, tls=ENCRYPT)
        connection.session.ended(LOST, True, True)
        self.assertEqual(manager.sessions[-1][1:], ("192.0.2.2", False))

    def test_finishedIgnoresTheOldSession(self):
        """
        A session that is over ignores its relayer: nothing it says
        reaches the attempt or the connection again.
        """
        connection, manager, routing, jobs = self.connectionIn(FINISHED)
        [(session, _, _)] = manager.sessions
        answered = list(manager.recorder.answered)
        self.assertEqual(session.jobAnswered(jobs[0], {jobs[0].recipients[0].address: OK}, True), [])
        self.assertEqual(session.moreJobs(), [])
        self.assertFalse(session.park(object()))
        session.ended(LOST, True, False)
        self.assertEqual(manager.recorder.answered, answered)
        self.assertEqual(manager.ended, [connection])
        self.assertEqual(connection.state, FINISHED)


class SecuringTests(SynchronousTestCase):
    """
    The I{securing} state: a routed connection waits for its
    destination's TLS policy, and follows it.
    """

    def securing(self, jobs=None):
        manager = _Manager(defer.succeed(ROUTE))
        manager.security = defer.Deferred()
        jobs = jobs or _jobs()
        connection = Connection(manager, "example.com", jobs, TLSPolicy(MAY))
        connection.start()
        self.assertEqual((connection.state, manager.sessions), (SECURING, []))
        return connection, manager, jobs

    def test_allowedHostsOnly(self):
        """
        Only the hosts the policy allows are tried, each with its own TLS.
        """
        connection, manager, jobs = self.securing()
        verified = HostTLS(VERIFY, source="mta-sts")
        manager.security.callback(DestinationSecurity("example.com", None, {"mx2.example.com": verified}, source="mta-sts"))
        self.assertEqual(connection.state, TRYING)
        self.assertEqual([address for _, address, _ in manager.sessions], ["192.0.2.2"])
        self.assertIs(connection.tls, verified)
        connection.session.ended(REFUSED, False, False)
        self.assertEqual(connection.state, FINISHED)
        self.assertEqual(len(manager.sessions), 1)

    def test_refused(self):
        """
        A policy that allows no host defers every job with its reply, and
        no connection is made.
        """
        connection, manager, jobs = self.securing()
        refusal = Reply(451, [b"No MX host matches"], b"4.7.5")
        manager.security.callback(DestinationSecurity("example.com", None, {}, refusal, "mta-sts"))
        self.assertEqual(connection.state, FINISHED)
        self.assertEqual(manager.sessions, [])
        self.assertEqual([(job, reply) for job, reply in manager.recorder.failed], [(job, refusal) for job in jobs])

    def test_failed(self):
        """
        A policy lookup that fails by a bug defers the jobs (4.3.0), logged.
        """
        connection, manager, jobs = self.securing()
        manager.security.errback(ZeroDivisionError())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual({(reply.code, reply.status) for _, reply in manager.recorder.failed}, {(451, b"4.3.0")})

    def requireTLS(self):
        jobs = _jobs()
        jobs[0].envelope.requireTLS = True
        other = _jobs()
        return jobs + other

    def test_requireTLSUnchecked(self):
        """
        A REQUIRETLS message fails at once with 5.7.30 when a host the
        policy allows has no checked certificate; the others go on.
        """
        jobs = self.requireTLS()
        connection, manager, jobs = self.securing(jobs)
        manager.security.callback(DestinationSecurity("example.com", HostTLS(MAY)))
        self.assertEqual([(job, reply.code, reply.status) for job, reply in manager.recorder.failed], [(jobs[0], 550, b"5.7.30"), (jobs[1], 550, b"5.7.30")])
        self.assertEqual(connection.session.jobs, jobs[2:])

    def test_requireTLSChecked(self):
        """
        Where every host has a checked certificate, REQUIRETLS mail goes.
        """
        jobs = self.requireTLS()
        connection, manager, jobs = self.securing(jobs)
        manager.security.callback(DestinationSecurity("example.com", HostTLS(VERIFY)))
        self.assertEqual(manager.recorder.failed, [])
        self.assertEqual(connection.session.jobs, jobs)

    def test_requireTLSLater(self):
        """
        A REQUIRETLS job offered to a connection later (L{Session.moreJobs})
        is refused the same way.
        """
        connection, manager, jobs = self.securing()
        manager.security.callback(DestinationSecurity("example.com", HostTLS(MAY)))
        later = self.requireTLS()[:2]
        manager.lines.moreJobs = lambda connection: later
        self.assertEqual(connection.session.moreJobs(), [])
        self.assertEqual([reply.status for _, reply in manager.recorder.failed], [b"5.7.30", b"5.7.30"])


class SessionTests(SynchronousTestCase):
    """
    L{mailproto._connection.Session} as a relayer's owner.
    """

    def test_providesIRelayOwner(self):
        manager = _Manager(defer.succeed(ROUTE))
        connection = Connection(manager, "example.com", _jobs(), TLSPolicy(MAY))
        connection.start()
        self.assertTrue(IRelayOwner.providedBy(connection.session))

    def test_sessionRefusalDefers(self):
        """
        A 530 to a recipient refuses the session, not the mail: a
        deferral, logged once as a configuration error.
        """
        manager = _Manager(defer.succeed(ROUTE))
        jobs = _jobs()
        connection = Connection(manager, "example.com", jobs, TLSPolicy(MAY))
        connection.start()
        refusal = Reply(530, [b"Authentication required"], b"5.7.0")
        connection.session.jobAnswered(jobs[0], {jobs[0].recipients[0].address: refusal}, True)
        [(_, replies, _)] = manager.recorder.answered
        [reply] = replies.values()
        self.assertEqual((reply.code, reply.status), (451, b"4.7.0"))
        self.assertIn(b"530 5.7.0 Authentication required", reply.text)

    def test_tooManySplits(self):
        """
        Recipients refused with 452 while others were delivered become a
        new job sent next on the same session.
        """
        manager = _Manager(defer.succeed(ROUTE))
        envelope = Envelope("0" * 12, b"jo@example.org", [Recipient(b"r%d@example.com" % i) for i in range(3)])
        attempt = MessageAttempt(envelope)
        job = attempt.add(Job(envelope, list(envelope.recipients), "example.com", attempt))
        connection = Connection(manager, "example.com", [job], TLSPolicy(MAY))
        connection.start()
        full = Reply(452, [b"Too many recipients"], b"4.5.3")
        following = connection.session.jobAnswered(job, {b"r0@example.com": OK, b"r1@example.com": full, b"r2@example.com": full}, True)
        [rest] = following
        self.assertEqual([r.address for r in rest.recipients], [b"r1@example.com", b"r2@example.com"])
        self.assertIn(rest, connection.jobs)
        [(_, replies, _)] = manager.recorder.answered
        self.assertEqual(replies, {b"r0@example.com": OK})
