# -*- test-case-name: mailproto.test.test_interop_client -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
mailproto's client against servers nobody here wrote, over real sockets on
127.0.0.1: aiosmtpd (STARTTLS with a trustme certificate, AUTH), a private
Postfix (its smtpd, with STARTTLS, PIPELINING, CHUNKING and a before-queue
proxy filter that shows exactly what smtpd accepted) and Postfix's
smtp-sink (which dumps each message to a file).

What each server received is compared byte for byte with what was sent:
aiosmtpd keeps the message as it came off the wire; Postfix's smtpd hands
it to a recording aiosmtpd with its own C{Received:} header on top;
smtp-sink writes it with LF line ends after a few headers of its own, and
a recording relay between the client and smtp-sink keeps the exact wire
bytes too.  A test whose server is not installed skips itself, and so do
the Postfix tests when not run as root (Postfix's master must start as
root).  Daemons run as child processes, stopped by their PIDs.
"""

import io
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import tempfile
import time
import types

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols import portforward
from twisted.trial.unittest import SkipTest, TestCase
from OpenSSL.SSL import Error as OpenSSLError
from zope.interface import implementer
from service_identity import VerificationError

from mailproto._client import CHUNK_SIZE
from mailproto.smtp import (
    AUTHDeclinedError,
    ESMTPClient,
    ESMTPSenderFactory,
    SMTPConnectError,
    SMTPDeliveryError,
    IMessageHandler,
    TLSRequiredError,
    handlerFactory,
    sendmail,
)
from mailproto.test._peers import missing, unprivilegedUser
from mailproto.test._peers import tool as _tool

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
except ImportError:
    Controller = AuthResult = None

try:
    import trustme
except ImportError:
    trustme = None


# Where Debian puts Postfix's programs, which may not be on PATH.

# Seconds a client waits for each reply: well inside the tests' own timeout,
# so that a server that stops answering fails a test rather than hanging it.
_CLIENT_TIMEOUT = 20

# Waiting for a daemon to answer: this many tries, this many seconds apart.
_READY_ATTEMPTS = 200
_READY_DELAY = 0.05
_READY_DEADLINE = 15

# Seconds a daemon gets to stop after SIGTERM before it is killed.
_STOP_GRACE = 10

_USER = "mailuser"
_PASSWORD = "correct horse battery staple"


# -- helpers ---------------------------------------------------------------



def _needAiosmtpd():
    if Controller is None:
        missing("aiosmtpd is not installed")
    if trustme is None:
        missing("trustme is not installed")


def _freePort():
    """
    @return: a TCP port of 127.0.0.1 that nothing listens on just now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _privateDirectory(testCase, prefix):
    """
    A new directory under the system's temporary directory, removed after
    the test.  Unlike trial's own temporary directory (which may sit in a
    private directory of mode 0700) every user can reach it: the daemons'
    unprivileged users need to.
    """
    directory = tempfile.mkdtemp(prefix=prefix)
    os.chmod(directory, 0o755)
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


def _crlf(message):
    """
    @return: C{message} with every line ended by CRLF, the last included:
        what a server must store.
    """
    text = message.replace(b"\r\n", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    return text.replace(b"\n", b"\r\n")


def _stuffed(message):
    """
    @return: what a client must send after DATA for C{message}: CRLF line
        ends, a dot doubled at the start of every line, and C{.CRLF}.
    """
    lines = _crlf(message).split(b"\r\n")[:-1]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def _padTo(start, offset, eol=b"\r\n"):
    """
    @return: C{start} and filler lines ending in C{eol}, exactly C{offset}
        octets in all, so that the next line starts at C{offset}.
    """
    out = bytearray(start)
    number = 0

    def line(width):
        nonlocal number
        number += 1
        text = b"filler %d " % number
        text = (text + b"x" * width)[: width - len(eol)]
        out.extend(text + eol)

    while offset - len(out) > 160:
        line(80)
    room = offset - len(out)
    if room > 80:
        line(room // 2)
        room = offset - len(out)
    if room:
        line(room)
    assert len(out) == offset, (len(out), offset)
    return bytes(out)


class _Waiter(Protocol):
    """
    Reads a server's greeting, says QUIT and goes.
    """

    def __init__(self):
        self.greeting = defer.Deferred()
        self._buffer = b""

    def dataReceived(self, data):
        self._buffer += data
        if b"\n" in self._buffer and not self.greeting.called:
            self.greeting.callback(self._buffer.split(b"\n", 1)[0])
            self.transport.write(b"QUIT\r\n")
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.greeting.called:
            self.greeting.errback(reason)


@defer.inlineCallbacks
def _waitForGreeting(port, what, log=None, host="127.0.0.1"):
    """
    Wait, a bounded number of times and at most L{_READY_DEADLINE} seconds,
    until a daemon answers on C{host}, C{port} with a 220 greeting.

    @param log: a file the daemon logs to, shown if it never answers.
    @param host: a loopback address.
    @return: a L{Deferred} firing with the greeting line.
    """
    deadline = time.monotonic() + _READY_DEADLINE
    lastError = None
    for attempt in range(_READY_ATTEMPTS):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=2)
        try:
            waiter = yield connectProtocol(endpoint, _Waiter())
            greeting = yield waiter.greeting.addTimeout(2, reactor)
        except Exception as e:
            lastError = e
        else:
            if greeting.startswith(b"220"):
                return greeting
            lastError = greeting
        if time.monotonic() > deadline:
            break
        yield deferLater(reactor, _READY_DELAY, lambda: None)
    logged = ""
    if log is not None and os.path.exists(log):
        with open(log, "rb") as f:
            logged = f.read().decode("utf-8", "replace")
    raise AssertionError(f"{what} did not answer on {host}:{port}: {lastError!r}\n{logged}")


@defer.inlineCallbacks
def _waitForLog(path, needle, what):
    """
    Wait, a bounded number of times, until a daemon's log has a line with
    C{needle}.

    @return: a L{Deferred} firing with that line.
    """
    text = b""
    for attempt in range(_READY_ATTEMPTS):
        if os.path.exists(path):
            with open(path, "rb") as f:
                text = f.read()
            for line in text.splitlines():
                if needle in line:
                    return line
        yield deferLater(reactor, _READY_DELAY, lambda: None)
    raise AssertionError(f"no {needle!r} in {what}'s log:\n{text.decode('utf-8', 'replace')}")


class _Daemon(ProcessProtocol):
    """
    A daemon run as a child process, its output going to a file.

    @ivar ended: fires with the exit code when it has exited.
    """

    def __init__(self):
        self.ended = defer.Deferred()
        self.exitCode = None

    def processEnded(self, reason):
        self.exitCode = reason.value.exitCode
        self.ended.callback(self.exitCode)


def _spawnDaemon(testCase, executable, args, logPath, group=False):
    """
    Start a daemon whose standard output and error go to C{logPath}; it is
    stopped (SIGTERM, then SIGKILL) when the test ends.

    @param group: whether the daemon leads its own process group, which
        SIGKILL then goes to, children included.
    @return: the L{_Daemon}.
    """
    daemon = _Daemon()
    with open(os.devnull, "rb") as devnull, open(logPath, "ab") as log:
        process = reactor.spawnProcess(
            daemon,
            executable,
            [executable, *args],
            env=dict(os.environ),
            childFDs={0: devnull.fileno(), 1: log.fileno(), 2: log.fileno()},
        )
    pid = process.pid

    def kill():
        try:
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                process.signalProcess("KILL")
        except (ProcessExitedAlready, ProcessLookupError):
            pass

    @defer.inlineCallbacks
    def stop():
        if daemon.ended.called:
            return
        try:
            process.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        killer = reactor.callLater(_STOP_GRACE, kill)
        ended = defer.Deferred()
        daemon.ended.addBoth(lambda result: ended.callback(None) or result)
        yield ended
        if killer.active():
            killer.cancel()

    testCase.addCleanup(stop)
    return daemon


class _Connections:
    """
    A stand-in for the reactor, for L{sendmail}'s C{reactor} argument: it
    connects with the real one and keeps each connector, so that a test
    can wait until every connection its client made is closed.
    """

    def __init__(self):
        self._connectors = []

    def __getattr__(self, name):
        return getattr(reactor, name)

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        connector = reactor.connectTCP(host, port, factory, timeout=timeout, bindAddress=bindAddress)
        self._connectors.append(connector)
        return connector

    @defer.inlineCallbacks
    def closed(self):
        """
        @return: a L{Deferred} firing once every connection is closed (one
            left open after L{_STOP_GRACE} seconds is cut).
        """
        for attempt in range(int(_STOP_GRACE / _READY_DELAY)):
            if all(c.state == "disconnected" for c in self._connectors):
                return
            yield deferLater(reactor, _READY_DELAY, lambda: None)
        for connector in self._connectors:
            transport = getattr(connector, "transport", None)
            if transport is not None:
                transport.abortConnection()
        raise AssertionError("the client left a connection open")


class _BatchClient(ESMTPClient):
    """
    Sends several messages on one connection: C{getMailFrom} gives the next
    message's sender until there are none left.

    @ivar results: C{(code, resp, numOk, [(address, code)])} per message.
    @ivar errors: what was given to C{sendError}.
    @ivar closed: fires when the connection is closed.
    """

    timeout = _CLIENT_TIMEOUT

    def __init__(self, messages):
        """
        @param messages: C{(sender, recipients, message bytes)} for each
            message.
        """
        ESMTPClient.__init__(self, None, None, b"client.test")
        self._queue = list(messages)
        self._current = None
        self.results = []
        self.errors = []
        self.closed = defer.Deferred()

    def getMailFrom(self):
        if not self._queue:
            return None
        self._current = self._queue.pop(0)
        return self._current[0]

    def getMailTo(self):
        return self._current[1]

    def getMailData(self):
        return io.BytesIO(self._current[2])

    def sentMail(self, code, resp, numOk, addresses, log):
        self.results.append((code, resp, numOk, [(bytes(a), c) for a, c, r in addresses]))

    def sendError(self, exc):
        self.errors.append(exc)
        ESMTPClient.sendError(self, exc)

    def connectionLost(self, reason=None):
        ESMTPClient.connectionLost(self, reason)
        self.closed.callback(None)


# -- aiosmtpd ------------------------------------------------------------


class _Recorder:
    """
    An aiosmtpd handler that keeps every message it is given, and an
    authenticator that accepts one user name and password.

    @ivar messages: one C{types.SimpleNamespace} per message: C{mailFrom},
        C{rcptTos}, C{content} (bytes, as received), C{mailOptions},
        C{rcptOptions}, C{tls}, C{authenticated}, C{helo}.
    @ivar logins: C{(mechanism, login, password)} for each AUTH attempt.
    """

    def __init__(self):
        self.messages = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            types.SimpleNamespace(
                mailFrom=envelope.mail_from,
                rcptTos=list(envelope.rcpt_tos),
                content=envelope.content,
                mailOptions=list(envelope.mail_options),
                rcptOptions=list(envelope.rcpt_options),
                tls=session.ssl is not None,
                authenticated=session.authenticated,
                helo=session.host_name,
            )
        )
        return "250 2.0.0 recorded"

    def authenticate(self, server, session, envelope, mechanism, authData):
        login = getattr(authData, "login", None)
        password = getattr(authData, "password", None)
        self.logins.append((mechanism, login, password))
        accepted = (login, password) == (_USER.encode(), _PASSWORD.encode())
        # handled=False: aiosmtpd sends the 235 or 535 itself.
        return AuthResult(success=accepted, handled=False)


@defer.inlineCallbacks
def _startAiosmtpd(testCase, recorder, **parameters):
    """
    Start an aiosmtpd server on a free port of 127.0.0.1, in its own
    thread; it is stopped when the test ends.

    @return: a L{Deferred} firing with the port.
    """
    # aiosmtpd logs through "mail.log": each refused handshake as an error
    # with its traceback, and a deprecation warning of its own on each
    # AUTH.  The tests check what matters; keep the output quiet.
    logger = logging.getLogger("mail.log")
    testCase.addCleanup(logger.setLevel, logger.level)
    logger.setLevel(logging.CRITICAL)
    port = _freePort()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=port, decode_data=False, ident="aiosmtpd.test", **parameters
    )
    yield deferToThread(controller.start)
    testCase.addCleanup(deferToThread, controller.stop)
    return port


class AiosmtpdTests(TestCase):
    """
    aiosmtpd insisting on STARTTLS (a certificate for C{localhost} and
    C{127.0.0.1} from a trustme CA) and on AUTH (LOGIN, PLAIN) after it;
    mailproto sends with L{sendmail}, both required.
    """

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        _needAiosmtpd()
        self.ca = trustme.CA()
        certificate = self.ca.issue_cert("localhost", "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self.recorder = _Recorder()
        self.port = yield _startAiosmtpd(
            self,
            self.recorder,
            tls_context=context,
            require_starttls=True,
            auth_require_tls=True,
            authenticator=self.recorder.authenticate,
        )
        self.connections = _Connections()
        self.addCleanup(self.connections.closed)

    def trust(self, ca=None, hostname="localhost"):
        """
        @return: a TLS client context that trusts C{ca} (this test's CA by
            default) and checks the certificate for C{hostname}.
        """
        root = Certificate.loadPEM((ca or self.ca).cert_pem.bytes())
        return optionsForClientTLS(hostname, trustRoot=root)

    def send(self, message, password=_PASSWORD, contextFactory=None, **kw):
        """
        L{sendmail} to the server, TLS and AUTH required.
        """
        return sendmail(
            "127.0.0.1",
            "sender@example.com",
            ["one@example.com", "two@example.org"],
            message,
            senderDomainName="client.test",
            port=self.port,
            reactor=self.connections,
            username=_USER,
            password=password,
            requireAuthentication=True,
            requireTransportSecurity=True,
            contextFactory=self.trust() if contextFactory is None else contextFactory,
            timeout=_CLIENT_TIMEOUT,
            **kw,
        )

    @defer.inlineCallbacks
    def test_starttlsAuthDelivers(self):
        """
        After STARTTLS (certificate checked for C{localhost}) and AUTH
        LOGIN, the message arrives byte for byte: LF line ends as CRLF, a
        CRLF added to the unended last line, every dot line (the first
        line C{.} included) as it was, 8-bit text untouched with
        C{BODY=8BITMIME}, and C{SIZE} declared.
        """
        message = (
            ".\nFrom: sender@example.com\nTo: one@example.com\nSubject: aiosmtpd\n\n"
            "..\n.\n.leading dot\n...\nGrüße\r\nmixed line ends\n\nno final line end"
        ).encode("utf-8")
        numOk, addresses = yield self.send(message)
        self.assertEqual(numOk, 2)
        self.assertEqual(
            [(bytes(a), code) for a, code, resp in addresses], [(b"one@example.com", 250), (b"two@example.org", 250)]
        )
        [received] = self.recorder.messages
        self.assertEqual(received.content, _crlf(message))
        self.assertEqual(received.mailFrom, "sender@example.com")
        self.assertEqual(received.rcptTos, ["one@example.com", "two@example.org"])
        self.assertEqual(sorted(received.mailOptions), ["BODY=8BITMIME", f"SIZE={len(message)}"])
        self.assertEqual(received.rcptOptions, [])
        self.assertTrue(received.tls)
        self.assertTrue(received.authenticated)
        self.assertEqual(received.helo, "client.test")
        # The first mechanism both offer: mailproto prefers CRAM-MD5, which
        # aiosmtpd does not offer, then LOGIN.
        self.assertEqual(self.recorder.logins, [("LOGIN", _USER.encode(), _PASSWORD.encode())])

    @defer.inlineCallbacks
    def test_certificateCheckedForIPAddress(self):
        """
        Without a context of its own, L{sendmail} checks the certificate
        for the address it was given, C{127.0.0.1} (an IP address
        subjectAltName), against the platform's trust store -- to which
        C{SSL_CERT_FILE} adds this test's CA.
        """
        path = os.path.abspath(self.mktemp())
        self.ca.cert_pem.write_to_path(path)
        previous = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = path

        def restore():
            if previous is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = previous

        self.addCleanup(restore)
        message = b"Subject: default context\r\n\r\nchecked for 127.0.0.1\r\n"
        d = sendmail(
            "127.0.0.1",
            "sender@example.com",
            "one@example.com",
            message,
            port=self.port,
            reactor=self.connections,
            username=_USER,
            password=_PASSWORD,
            requireAuthentication=True,
            requireTransportSecurity=True,
            timeout=_CLIENT_TIMEOUT,
            retries=0,
        )
        numOk, addresses = yield d
        self.assertEqual(numOk, 1)
        [received] = self.recorder.messages
        self.assertEqual(received.content, message)
        self.assertTrue(received.tls)

    @defer.inlineCallbacks
    def assertTLSRefused(self, contextFactory, causeClass, why):
        """
        L{sendmail} with this context fails with an L{SMTPConnectError}
        caused by the TLS failure (after trying once more, as it was told
        to); nothing is delivered and AUTH never happens.
        """
        d = self.send(b"Subject: never\r\n\r\nnever delivered\r\n", contextFactory=contextFactory, retries=1)
        error = yield self.assertFailure(d, SMTPConnectError)
        self.assertIsInstance(error.__cause__, causeClass)
        self.assertIn(why, str(error.__cause__))
        self.assertEqual(self.recorder.messages, [])
        self.assertEqual(self.recorder.logins, [])

    def test_wrongCA(self):
        """
        A certificate from a CA the client does not trust: the handshake
        fails (certificate verify failed) and nothing is sent.
        """
        return self.assertTLSRefused(self.trust(ca=trustme.CA()), OpenSSLError, "certificate verify failed")

    def test_wrongHostname(self):
        """
        A certificate from the trusted CA, but not for the name the client
        checks: the check fails and nothing is sent.
        """
        return self.assertTLSRefused(self.trust(hostname="mail.example.com"), VerificationError, "mail.example.com")

    @defer.inlineCallbacks
    def test_wrongPassword(self):
        """
        A wrong password: aiosmtpd refuses LOGIN (535), and L{sendmail}
        fails with L{AUTHDeclinedError} without trying PLAIN with the same
        password or connecting again; nothing is delivered.
        """
        d = self.send(b"Subject: never\r\n\r\nnever delivered\r\n", password="wrong")
        error = yield self.assertFailure(d, AUTHDeclinedError)
        self.assertEqual(error.code, 535)
        self.assertEqual(self.recorder.messages, [])
        self.assertEqual(self.recorder.logins, [("LOGIN", _USER.encode(), b"wrong")])


# -- smtp-sink -----------------------------------------------------------


class _TapClient(portforward.ProxyClient):
    def connectionMade(self):
        self.tap = self.peer
        portforward.ProxyClient.connectionMade(self)

    def dataReceived(self, data):
        self.tap.record.append(("server", data))
        portforward.ProxyClient.dataReceived(self, data)

    def connectionLost(self, reason):
        portforward.ProxyClient.connectionLost(self, reason)
        self.tap.serverClosed.callback(None)


class _TapClientFactory(portforward.ProxyClientFactory):
    protocol = _TapClient

    def clientConnectionFailed(self, connector, reason):
        portforward.ProxyClientFactory.clientConnectionFailed(self, connector, reason)
        self.server.serverClosed.callback(None)


class _TapServer(portforward.ProxyServer):
    clientProtocolFactory = _TapClientFactory

    def connectionMade(self):
        self.record = []
        self.clientClosed = defer.Deferred()
        self.serverClosed = defer.Deferred()
        self.factory.taps.append(self)
        portforward.ProxyServer.connectionMade(self)

    def dataReceived(self, data):
        self.record.append(("client", data))
        portforward.ProxyServer.dataReceived(self, data)

    def connectionLost(self, reason):
        portforward.ProxyServer.connectionLost(self, reason)
        self.clientClosed.callback(None)


class _Tap(portforward.ProxyFactory):
    """
    A relay between a client and a server that keeps, per connection, what
    each side said, in the order the relay saw it.

    @ivar taps: one L{_TapServer} per connection; its C{record} is a list
        of C{("client" or "server", bytes)}.
    """

    protocol = _TapServer

    def __init__(self, host, port):
        portforward.ProxyFactory.__init__(self, host, port)
        self.taps = []

    def closed(self):
        """
        @return: a L{Deferred} firing once both sides of every connection
            are closed.
        """
        return defer.gatherResults([d for tap in self.taps for d in (tap.clientClosed, tap.serverClosed)])

    def conversations(self):
        """
        @return: per connection, what the client sent, and the record.
        """
        return [(b"".join(data for side, data in tap.record if side == "client"), tap.record) for tap in self.taps]


def _parseSinkDump(dump):
    """
    Split an smtp-sink dump into its own headers and the message.

    smtp-sink writes C{X-Client-Addr}, C{X-Client-Proto}, C{X-Helo-Args},
    C{X-Mail-Args}, one C{X-Rcpt-Args} per recipient and a three-line
    C{Received:} header, then the message with LF line ends (every CR
    dropped, the stuffed dots taken out), then an empty line.

    @return: C{(fields, message)}: C{fields} maps each C{X-} name to its
        values.
    """
    fields = {}
    rest = dump
    while rest.startswith(b"X-"):
        line, rest = rest.split(b"\n", 1)
        name, value = line.split(b": ", 1)
        fields.setdefault(name.decode("ascii"), []).append(value)
    if not rest.startswith(b"Received: from "):
        raise AssertionError(f"no smtp-sink Received header: {dump[:500]!r}")
    received = rest.split(b"\n", 3)
    fields["Received"] = [b"\n".join(received[:3])]
    message = received[3]
    if not message.endswith(b"\n"):
        raise AssertionError(f"smtp-sink dump does not end with its empty line: {dump[-200:]!r}")
    return fields, message[:-1]


def _sinkView(message):
    """
    @return: how smtp-sink dumps C{message}: LF line ends.
    """
    return _crlf(message).replace(b"\r\n", b"\n")


class SmtpSinkTests(TestCase):
    """
    Postfix's smtp-sink, dumping each message (C{-d}), behind a relay that
    records the wire.  smtp-sink offers PIPELINING, 8BITMIME, DSN and AUTH
    but not CHUNKING or STARTTLS; mailproto sends with L{sendmail}
    (neither TLS nor AUTH required) or with an L{ESMTPClient} subclass.
    """

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        sink = _tool("smtp-sink")
        self.dumps = os.path.join(_privateDirectory(self, "mailproto-sink-"), "dump")
        os.mkdir(self.dumps)
        args = ["-h", "sink.test"]
        if os.geteuid() == 0:
            # smtp-sink insists on dropping root; its user must be able
            # to write the dumps.
            user = unprivilegedUser()
            os.chown(self.dumps, user.pw_uid, user.pw_gid)
            args += ["-u", user.pw_name]
        port = _freePort()
        self.log = os.path.abspath(self.mktemp())
        args += ["-d", os.path.join(self.dumps, "msg."), f"127.0.0.1:{port}", "16"]
        _spawnDaemon(self, sink, args, self.log)
        yield _waitForGreeting(port, "smtp-sink", self.log)
        self.tap = _Tap("127.0.0.1", port)
        listening = reactor.listenTCP(0, self.tap, interface="127.0.0.1")
        self.addCleanup(self.tap.closed)
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        self.connections = _Connections()
        self.addCleanup(self.connections.closed)

    def send(self, message, sender="sender@example.com", recipients=("rcpt@example.com",), **kw):
        """
        L{sendmail} through the relay to smtp-sink.
        """
        return sendmail(
            "127.0.0.1",
            sender,
            list(recipients),
            message,
            senderDomainName="client.test",
            port=self.port,
            reactor=self.connections,
            timeout=_CLIENT_TIMEOUT,
            **kw,
        )

    def readDumps(self):
        """
        @return: the parsed dumps (see L{_parseSinkDump}), in no particular
            order.
        """
        dumps = []
        for name in sorted(os.listdir(self.dumps)):
            with open(os.path.join(self.dumps, name), "rb") as f:
                dumps.append(_parseSinkDump(f.read()))
        return dumps

    def assertOneConnection(self):
        """
        The client made one connection.

        @return: what it sent, and the relay's record.
        """
        conversations = self.tap.conversations()
        self.assertEqual(len(conversations), 1, conversations)
        return conversations[0]

    def assertPipelined(self, record, transactions=1):
        """
        In the relay's record, each transaction's MAIL, RCPTs and DATA came
        in one read, before any reply to them: the client pipelined them
        (smtp-sink offers PIPELINING) and used DATA, not BDAT (smtp-sink
        does not offer CHUNKING).
        """
        reads = [data for side, data in record if side == "client" and b"MAIL FROM:" in data]
        self.assertEqual(len(reads), transactions, record)
        for data in reads:
            self.assertRegex(data, rb"\AMAIL FROM:<[^>]*>[^\r\n]*\r\n(RCPT TO:<[^>]*>[^\r\n]*\r\n)+DATA\r\n\Z")
        sent = b"".join(data for side, data in record if side == "client")
        self.assertNotIn(b"BDAT", sent)
        replies = b"".join(data for side, data in record if side == "server")
        self.assertIn(b"250-PIPELINING\r\n", replies)
        self.assertNotIn(b"CHUNKING", replies)

    def assertOnWire(self, sent, message):
        """
        After DATA, the client sent exactly C{message} dot-stuffed with
        CRLF line ends, then QUIT.
        """
        afterData = sent.split(b"\r\nDATA\r\n", 1)[1]
        self.assertEqual(afterData, _stuffed(message) + b"QUIT\r\n")
        withoutCRLF = afterData.replace(b"\r\n", b"")
        self.assertNotIn(b"\n", withoutCRLF)
        self.assertNotIn(b"\r", withoutCRLF)

    @defer.inlineCallbacks
    def assertDelivered(self, message, sender=b"sender@example.com", recipients=(b"rcpt@example.com",), mailArgs=b""):
        """
        Send C{message}; smtp-sink dumped it exactly, with the envelope
        (and C{mailArgs} after the sender); the wire had it exactly,
        pipelined, on one connection.
        """
        numOk, addresses = yield self.send(message, sender.decode(), [r.decode() for r in recipients])
        self.assertEqual(numOk, len(recipients))
        # The result comes before QUIT: wait for the end of the connection.
        yield self.connections.closed()
        yield self.tap.closed()
        [(fields, dumped)] = self.readDumps()
        self.assertEqual(dumped, _sinkView(message))
        self.assertEqual(fields["X-Mail-Args"], [b"<" + sender + b">" + mailArgs])
        self.assertEqual(fields["X-Rcpt-Args"], [b"<" + r + b">" for r in recipients])
        self.assertEqual(fields["X-Client-Proto"], [b"ESMTP"])
        self.assertEqual(fields["X-Helo-Args"], [b"client.test"])
        sent, record = self.assertOneConnection()
        self.assertPipelined(record)
        self.assertOnWire(sent, message)

    def test_dotAt16KiB(self):
        """
        Dot lines starting exactly at 16 KiB (16384), and just before and
        after it, are stuffed and arrive as they were.
        """
        start = _padTo(b"Subject: 16 KiB\r\n\r\n", 16384 - 4)
        message = start + b".a\r\n.\r\n..\r\n.c\r\nend\r\n"
        self.assertEqual(message[16384 - 4 : 16384 + 3], b".a\r\n.\r\n")
        return self.assertDelivered(message)

    def test_dotAtChunkBoundary(self):
        """
        Dot lines starting exactly where the client's reads split the
        message (L{CHUNK_SIZE}): a lone dot at the first boundary, C{..x}
        at the second, and at the third a CRLF split between two reads
        with a dot after it.
        """
        message = _padTo(b"Subject: chunk boundaries\r\n\r\n", CHUNK_SIZE)
        message += b".\r\n"
        message = _padTo(message, 2 * CHUNK_SIZE) + b"..x\r\n"
        message = _padTo(message, 3 * CHUNK_SIZE + 1) + b".after a split CRLF\r\nend\r\n"
        self.assertEqual(message[CHUNK_SIZE : CHUNK_SIZE + 3], b".\r\n")
        self.assertEqual(message[2 * CHUNK_SIZE : 2 * CHUNK_SIZE + 3], b"..x")
        self.assertEqual(message[3 * CHUNK_SIZE - 1 : 3 * CHUNK_SIZE + 3], b"\r\n.a")
        return self.assertDelivered(message)

    def test_firstLineDot(self):
        """
        A message whose first line is a lone dot (it would end the data
        at once if not stuffed).
        """
        return self.assertDelivered(b".\r\nSubject: first line is a dot\r\n\r\nbody\r\n")

    def test_dotLines(self):
        """
        Lines of dots, and dots after other text, to two recipients.
        """
        message = b"Subject: dots\r\n\r\n..\r\n...\r\n.\r\n. x\r\nnot . first\r\n.\r\n.."
        return self.assertDelivered(message, recipients=(b"one@example.com", b"two@example.org"))

    def test_lineFeeds(self):
        """
        A message with LF line ends, a dot line at a read boundary
        included, goes out with CRLF only (checked on the wire: smtp-sink
        itself drops every CR).
        """
        start = _padTo(b"Subject: LF only\n\n", CHUNK_SIZE, eol=b"\n")
        message = start + b".\n..\nlast line\n"
        return self.assertDelivered(message)

    def test_eightBit(self):
        """
        8-bit text goes out with C{BODY=8BITMIME}, which smtp-sink offers,
        and without C{SIZE}, which it does not.
        """
        message = "Subject: 8 bit\r\n\r\nGrüße aus Köln\r\n.\r\n".encode("utf-8")
        return self.assertDelivered(message, mailArgs=b" BODY=8BITMIME")

    @defer.inlineCallbacks
    def test_tenMessagesOneConnection(self):
        """
        An L{ESMTPClient} whose C{getMailFrom} gives a sender ten times
        sends ten messages on one connection, each pipelined; all ten are
        dumped, each with its own envelope and content.
        """
        messages = [
            (
                f"sender{i}@example.com",
                [f"rcpt{i}@example.com"],
                b"Subject: message %d\r\n\r\n.\r\nbody of message %d\r\n" % (i, i),
            )
            for i in range(10)
        ]
        client = _BatchClient(messages)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield client.closed
        yield self.tap.closed()
        self.assertEqual(client.errors, [])
        self.assertEqual(
            [(code, numOk, addresses) for code, resp, numOk, addresses in client.results],
            [(250, 1, [(f"rcpt{i}@example.com".encode(), 250)]) for i in range(10)],
        )
        dumps = sorted(
            (fields["X-Mail-Args"], fields["X-Rcpt-Args"], message) for fields, message in self.readDumps()
        )
        expected = sorted(
            ([b"<" + sender.encode() + b">"], [b"<" + to[0].encode() + b">"], _sinkView(data))
            for sender, to, data in messages
        )
        self.assertEqual(dumps, expected)
        sent, record = self.assertOneConnection()
        self.assertPipelined(record, transactions=10)
        self.assertTrue(sent.endswith(b".\r\nQUIT\r\n"))

    @defer.inlineCallbacks
    def test_transportSecurityRequired(self):
        """
        With TLS required, a server without STARTTLS gets no message:
        L{sendmail} fails with L{TLSRequiredError}, no MAIL goes out, and
        nothing is dumped.
        """
        d = self.send(b"Subject: never\r\n\r\nsecret\r\n", requireTransportSecurity=True, retries=0)
        yield self.assertFailure(d, TLSRequiredError)
        yield self.connections.closed()
        yield self.tap.closed()
        self.assertEqual(self.readDumps(), [])
        sent, record = self.assertOneConnection()
        self.assertNotIn(b"MAIL", sent)
        self.assertNotIn(b"secret", sent)


# -- Postfix -----------------------------------------------------------


def _splitReceived(content):
    """
    @return: the first header of C{content} (Postfix's C{Received:}, with
        its continuation lines) and what follows it.
    """
    if not content.startswith(b"Received: "):
        raise AssertionError(f"no Received header first: {content[:300]!r}")
    end = 0
    while True:
        end = content.index(b"\r\n", end) + 2
        if content[end : end + 1] not in (b" ", b"\t"):
            return content[:end], content[end:]


_MAIN_CF = """\
# A private Postfix for mailproto's tests: it listens on 127.0.0.1 only,
# and what it queues goes to the discard transport -- nothing leaves.
compatibility_level = {compatibility}
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
myhostname = mx.postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
relay_domains =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
default_transport = discard:default
relay_transport = discard:relay
local_transport = discard:local
virtual_transport = discard:virtual
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = yes
message_size_limit = 1000000
maillog_file = /dev/stdout
smtpd_tls_security_level = may
smtpd_tls_chain_files = {root}/server.pem
smtpd_tls_loglevel = 1
smtpd_recipient_restrictions = check_recipient_access inline:{{ refused@example.com=REJECT }}
"""

_BARE_NEWLINE_CF = """\
smtpd_forbid_bare_newline = reject
smtpd_forbid_bare_newline_exclusions =
"""

_MASTER_CF = """\
# service type private unpriv chroot wakeup maxproc command
127.0.0.1:{chunking} inet n - n - - smtpd
  -o smtpd_proxy_filter=127.0.0.1:{recorder}
127.0.0.1:{data} inet n - n - - smtpd
  -o smtpd_proxy_filter=127.0.0.1:{recorder}
  -o smtpd_discard_ehlo_keywords=chunking
127.0.0.1:{queue} inet n - n - - smtpd
127.0.0.1:{relay} inet n - n - - smtpd
  -o content_filter=smtp:[127.0.0.1]:{handler}
smtp unix - - n - - smtp
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
discard unix - - n - - discard
error unix - - n - - error
retry unix - - n - - error
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


@implementer(IMessageHandler)
class _ListHandler:
    """
    A one-method handler that keeps what it is given.
    """

    def __init__(self, handled: list) -> None:
        self.handled = handled

    def processMessage(self, peer, mailFrom, rcptTos, data):
        self.handled.append((peer, mailFrom, rcptTos, data))


class PostfixTests(TestCase):
    """
    Postfix's smtpd, from a Postfix instance of the test's own: its own
    configuration directory (C{postfix -c DIR check} sets up its queue,
    then its C{master} runs in the foreground as a child of the test and
    is stopped by its PID), listening on 127.0.0.1 only, chroot off.

    Three smtpd services:

      - C{chunking}: PIPELINING, CHUNKING, STARTTLS (a trustme
        certificate); a before-queue proxy filter (C{smtpd_proxy_filter})
        hands each message, as smtpd accepted it and with smtpd's
        C{Received:} header on top, to a recording aiosmtpd;
      - C{data}: the same without CHUNKING, so the client uses DATA;
      - C{queue}: no filter: mail is queued, and the discard transport
        throws it away;
      - C{relay}: mail is queued, then Postfix's smtp client sends it to a
        one-method handler (L{mailproto.smtp.handlerFactory}) in the test.

    Where this Postfix has it (3.5.23, 3.6.13, 3.7.9, 3.8.4 and later),
    C{smtpd_forbid_bare_newline = reject} makes smtpd refuse any message
    with a bare LF: each message sent here with LF line ends shows that
    the client sent CRLF.
    """

    timeout = 45

    @defer.inlineCallbacks
    def setUp(self):
        postfix = _tool("postfix")
        postconf = _tool("postconf")
        _needAiosmtpd()
        if os.geteuid() != 0:
            raise SkipTest("Postfix's master(8) and queue must be set up and started as root")
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            missing("there is no 'postfix' user: the Postfix package was not set up")
        out, err, code = yield getProcessOutputAndValue(postconf, ["-d"], env=dict(os.environ))
        self.assertEqual(code, 0, err)
        defaults = dict(
            line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
            for line in out.decode("utf-8", "replace").splitlines()
        )
        version = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", defaults["mail_version"]).groups())
        if version < (3, 4):
            raise SkipTest(f"Postfix {defaults['mail_version']} is too old: 3.4 or later is needed")
        self.master = os.path.join(defaults["daemon_directory"], "master")
        if not os.path.exists(self.master):
            missing(f"{self.master} is not installed")
        self.bareNewlineRefused = "smtpd_forbid_bare_newline" in defaults

        self.root = _privateDirectory(self, "mailproto-postfix-")
        self.ca = trustme.CA()
        certificate = self.ca.issue_cert("localhost", "127.0.0.1")
        chain = os.path.join(self.root, "server.pem")
        certificate.private_key_and_cert_chain_pem.write_to_path(chain)
        os.chmod(chain, 0o600)
        os.mkdir(os.path.join(self.root, "queue"), 0o755)
        data = os.path.join(self.root, "data")
        os.mkdir(data, 0o700)
        owner = pwd.getpwnam("postfix")
        os.chown(data, owner.pw_uid, owner.pw_gid)

        self.recorder = _Recorder()
        recorderPort = yield _startAiosmtpd(self, self.recorder, enable_SMTPUTF8=True)
        self.ports = {"chunking": _freePort(), "data": _freePort(), "queue": _freePort(), "relay": _freePort()}
        self.handled = []
        handlerPort = reactor.listenTCP(0, handlerFactory(_ListHandler(self.handled), domain=b"handler.test"), interface="127.0.0.1")
        self.addCleanup(handlerPort.stopListening)
        self.config = os.path.join(self.root, "config")
        os.mkdir(self.config, 0o755)
        main = _MAIN_CF.format(root=self.root, compatibility="3.6" if version >= (3, 6) else "2")
        if self.bareNewlineRefused:
            main += _BARE_NEWLINE_CF
        with open(os.path.join(self.config, "main.cf"), "w") as f:
            f.write(main)
        with open(os.path.join(self.config, "master.cf"), "w") as f:
            f.write(_MASTER_CF.format(recorder=recorderPort, handler=handlerPort.getHost().port, **self.ports))
        # Postfix waits (in steps of 0.3 s) until main.cf has not changed
        # for a second or so, lest it read a file being edited: make it
        # older than that.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(os.path.join(self.config, name), (past, past))

        # "postfix check" makes the queue's directories, with their owners
        # and modes, and checks the configuration.
        out, err, code = yield getProcessOutputAndValue(postfix, ["-c", self.config, "check"], env=dict(os.environ))
        self.assertEqual(code, 0, f"postfix check: {out!r} {err!r}")
        self.log = os.path.join(self.root, "maillog")
        # -s: in the foreground, logging (maillog_file = /dev/stdout) to
        # self.log; a process group of its own, which SIGTERM ends.
        _spawnDaemon(self, self.master, ["-s", "-c", self.config], self.log, group=True)
        for name, port in self.ports.items():
            yield _waitForGreeting(port, f"Postfix smtpd ({name})", self.log)
        self.connections = _Connections()
        self.addCleanup(self.connections.closed)

    def send(self, service, message, sender="sender@example.com", recipients=("rcpt@example.com",), **kw):
        """
        L{sendmail} to one of the smtpd services, STARTTLS required (the
        certificate checked for C{localhost}).
        """
        root = Certificate.loadPEM(self.ca.cert_pem.bytes())
        return sendmail(
            "127.0.0.1",
            sender,
            list(recipients),
            message,
            senderDomainName="client.test",
            port=self.ports[service],
            reactor=self.connections,
            requireTransportSecurity=True,
            contextFactory=optionsForClientTLS("localhost", trustRoot=root),
            timeout=_CLIENT_TIMEOUT,
            retries=0,
            **kw,
        )

    @defer.inlineCallbacks
    def sessionLog(self):
        """
        @return: a L{Deferred} firing with the counters of smtpd's
            C{disconnect} log line for the client's session (not for the
            readiness checks, which only say QUIT), as a dict.
        """
        line = yield _waitForLog(self.log, b" ehlo=", "Postfix")
        counters = line.split(b"]: disconnect from ", 1)[1].split()[1:]
        return {name.decode(): value.decode() for name, value in (c.split(b"=", 1) for c in counters)}

    def assertRecorded(
        self, received, message, protocol="ESMTPS", sender="sender@example.com", recipients=("rcpt@example.com",)
    ):
        """
        The proxy filter got C{message} exactly as sent (CRLF line ends),
        under smtpd's C{Received:} header, with the envelope.
        """
        header, content = _splitReceived(received.content)
        self.assertEqual(content, _crlf(message))
        self.assertTrue(header.startswith(b"Received: from client.test (localhost [127.0.0.1])\r\n"), header)
        # "with ESMTPS;" when there are several recipients, else "with
        # ESMTPS" and "for <recipient>;" on the next line.
        self.assertRegex(header, rb"\r\n\tby mx\.postfix\.test \(Postfix\) with " + protocol.encode() + rb"(;|\r\n)")
        self.assertEqual(received.mailFrom, sender)
        self.assertEqual(received.rcptTos, list(recipients))

    def bigMessage(self):
        """
        @return: a message of four reads (L{CHUNK_SIZE}) and a bit, with
            LF line ends in its first half and CRLF in the rest, and dot
            lines at 16 KiB, at each read boundary and first.
        """
        message = _padTo(b".\nSubject: big\n\n", 16384, eol=b"\n") + b".\n..\n"
        message = _padTo(message, CHUNK_SIZE, eol=b"\n") + b".at the first boundary\n"
        message = _padTo(message, 2 * CHUNK_SIZE + 1) + b"..after a split CRLF\r\n"
        message = _padTo(message, 4 * CHUNK_SIZE) + b".\r\nlast line, unended"
        self.assertEqual(message[2 * CHUNK_SIZE - 1 : 2 * CHUNK_SIZE + 3], b"\r\n..")
        return message

    @defer.inlineCallbacks
    def test_chunking(self):
        """
        Over TLS, with CHUNKING offered, the message goes out as one BDAT
        per read (the last with LAST); smtpd accepts it (LF line ends
        included: they went out as CRLF) and passes it on byte for byte,
        with the SIZE the client declared.
        """
        message = self.bigMessage()
        numOk, addresses = yield self.send("chunking", message)
        self.assertEqual(numOk, 1)
        [received] = self.recorder.messages
        self.assertRecorded(received, message)
        self.assertEqual(received.mailOptions, [f"SIZE={len(message)}"])
        counters = yield self.sessionLog()
        self.assertEqual(counters.get("starttls"), "1", counters)
        self.assertEqual(counters.get("bdat"), str(-(-len(message) // CHUNK_SIZE)), counters)
        self.assertNotIn("data", counters)

    @defer.inlineCallbacks
    def test_data(self):
        """
        Over TLS, without CHUNKING, the message goes out after DATA,
        dot-stuffed; smtpd accepts it and passes it on byte for byte.
        """
        message = self.bigMessage()
        numOk, addresses = yield self.send("data", message)
        self.assertEqual(numOk, 1)
        [received] = self.recorder.messages
        self.assertRecorded(received, message)
        counters = yield self.sessionLog()
        self.assertEqual(counters.get("starttls"), "1", counters)
        self.assertEqual(counters.get("data"), "1", counters)
        self.assertNotIn("bdat", counters)

    @defer.inlineCallbacks
    def test_postfixToHandler(self):
        """
        Postfix's smtp client, relaying what its smtpd queued, hands the
        message to a one-method handler: the handler gets it byte for
        byte under Postfix's C{Received:} header, with the envelope.
        """
        # (With every header Postfix's cleanup would add, so that it adds none.)
        message = (
            b"From: sender@example.com\r\nTo: handled@example.com\r\nDate: Mon, 07 Dec 2026 05:00:00 +0000\r\n"
            b"Message-ID: <handler.1@client.test>\r\nSubject: to a handler\r\n\r\n.\r\nsecond line\r\n..\r\nlast\r\n"
        )
        result = defer.Deferred()
        factory = ESMTPSenderFactory(
            None, None, "sender@example.com", ["handled@example.com"], io.BytesIO(message), result,
            retries=0, timeout=_CLIENT_TIMEOUT, requireAuthentication=False, requireTransportSecurity=False,
        )  # fmt: skip
        factory.domain = "client.test"
        self.connections.connectTCP("127.0.0.1", self.ports["relay"], factory)
        numOk, addresses = yield result
        self.assertEqual(numOk, 1)
        line = yield _waitForLog(self.log, b"to=<handled@example.com>", "Postfix")
        self.assertIn(b"status=sent", line)
        [(peer, mailFrom, rcptTos, data)] = self.handled
        self.assertEqual((peer.host, peer.heloName, mailFrom, rcptTos), ("127.0.0.1", "mx.postfix.test", "sender@example.com", ["handled@example.com"]))
        header, content = _splitReceived(data)
        self.assertEqual(content, message)
        self.assertTrue(header.startswith(b"Received: from client.test (localhost [127.0.0.1])\r\n"), header)

    @defer.inlineCallbacks
    def test_commandClient(self):
        """
        L{mailproto.client}, one command at a time, over STARTTLS (the
        certificate checked): a message pushed in pieces, with dot lines
        split across them, reaches smtpd's filter byte for byte.
        """
        from mailproto import client

        root = Certificate.loadPEM(self.ca.cert_pem.bytes())
        session = yield client.connect(
            reactor, ["127.0.0.1"], self.ports["data"], tls="starttls", ehlo="client.test",
            contextFactory=optionsForClientTLS("localhost", trustRoot=root), timeout=_CLIENT_TIMEOUT,
        )  # fmt: skip
        try:
            self.assertTrue(session.tls)
            yield session.mail("sender@example.com")
            yield session.rcpt("rcpt@example.com")
            yield session.data()
            pieces = [b"Subject: pieces\r\n\r\nfirst\r\n", b".", b"dot line\r\n", b"..two dots\r\n.", b"\r\nlast\r", b"\n"]
            for piece in pieces:
                session.send(piece)
            reply = yield session.end()
            self.assertEqual(reply.code, 250)
        finally:
            yield session.quit()
        [received] = self.recorder.messages
        self.assertRecorded(received, b"".join(pieces))

    @defer.inlineCallbacks
    def test_bareLineFeedRefused(self):
        """
        The control for the other tests: this smtpd does refuse a message
        with a bare LF, after DATA and in BDAT alike.
        """
        if not self.bareNewlineRefused:
            raise SkipTest("this Postfix has no smtpd_forbid_bare_newline")

        def talk(port, transaction):
            with socket.create_connection(("127.0.0.1", port), timeout=_CLIENT_TIMEOUT) as sock:
                replies = sock.makefile("rb")

                def reply():
                    lines = [replies.readline()]
                    while lines[-1][3:4] == b"-":
                        lines.append(replies.readline())
                    return lines[-1][:3]

                codes = [reply()]
                for command, count in [(b"EHLO bare.test\r\n", 1), *transaction, (b"QUIT\r\n", 1)]:
                    sock.sendall(command)
                    codes.extend(reply() for i in range(count))
                return codes

        envelope = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
        data = yield deferToThread(
            talk, self.ports["data"], [(envelope + b"DATA\r\n", 3), (b"Subject: bare\r\n\r\nbare\nLF\r\n.\r\n", 1)]
        )
        self.assertEqual(data, [b"220", b"250", b"250", b"250", b"354", b"550", b"221"])
        bdat = yield deferToThread(
            talk, self.ports["chunking"], [(envelope + b"BDAT 9 LAST\r\nbare\nLF\r\n", 3)]
        )
        self.assertEqual(bdat, [b"220", b"250", b"250", b"250", b"550", b"221"])
        self.assertEqual(self.recorder.messages, [])

    @defer.inlineCallbacks
    def test_refusedRecipient(self):
        """
        One of three recipients refused (554 from an access map): the
        pipelined replies are matched to the right recipients, and the
        message goes to the other two only.
        """
        message = b"Subject: refused recipient\r\n\r\n.\r\nbody\r\n"
        recipients = ["one@example.com", "refused@example.com", "two@example.org"]
        numOk, addresses = yield self.send("chunking", message, recipients=recipients)
        self.assertEqual(numOk, 2)
        self.assertEqual(
            [(bytes(a), code) for a, code, resp in addresses],
            [(b"one@example.com", 250), (b"refused@example.com", 554), (b"two@example.org", 250)],
        )
        [received] = self.recorder.messages
        self.assertRecorded(received, message, recipients=("one@example.com", "two@example.org"))

    @defer.inlineCallbacks
    def test_allRecipientsRefused(self):
        """
        The only recipient refused: no BDAT goes out, L{sendmail} fails
        with L{SMTPDeliveryError} carrying smtpd's 554 for the recipient,
        and nothing is passed on.
        """
        d = self.send("chunking", b"Subject: nobody\r\n\r\nfor nobody\r\n", recipients=["refused@example.com"])
        error = yield self.assertFailure(d, SMTPDeliveryError)
        self.assertEqual(error.code, 554)
        self.assertEqual([(bytes(a), code) for a, code, resp in error.addresses], [(b"refused@example.com", 554)])
        self.assertIn(b"refused@example.com: 554 ", error.log)
        self.assertEqual(self.recorder.messages, [])
        counters = yield self.sessionLog()
        self.assertEqual(counters.get("rcpt"), "0/1", counters)
        self.assertNotIn("bdat", counters)

    @defer.inlineCallbacks
    def test_sizeLimit(self):
        """
        A message larger than the C{SIZE} smtpd offers (its
        C{message_size_limit}, 1000000 here) is refused by the client
        itself: no MAIL goes out, and L{sendmail} fails with
        L{SMTPDeliveryError} (552).
        """
        message = _padTo(b"Subject: too big\r\n\r\n", 1000001)
        d = self.send("data", message)
        error = yield self.assertFailure(d, SMTPDeliveryError)
        self.assertEqual(error.code, 552)
        self.assertIn(b"1000000", error.resp)
        self.assertEqual(self.recorder.messages, [])
        counters = yield self.sessionLog()
        self.assertNotIn("mail", counters)

    @defer.inlineCallbacks
    def test_smtputf8(self):
        """
        Non-ASCII addresses: the client asks for SMTPUTF8 and 8BITMIME,
        which smtpd offers and passes on, with the addresses and the
        8-bit message intact.
        """
        message = "Subject: Grüße\r\nFrom: délia@exämple.com\r\n\r\nÜber alles.\r\n".encode("utf-8")
        numOk, addresses = yield self.send(
            "chunking", message, sender="délia@exämple.com", recipients=["jürgen@exämple.com"]
        )
        self.assertEqual(numOk, 1)
        [received] = self.recorder.messages
        self.assertRecorded(
            received, message, protocol="UTF8SMTPS", sender="délia@exämple.com", recipients=("jürgen@exämple.com",)
        )
        self.assertEqual(sorted(received.mailOptions), sorted(["BODY=8BITMIME", "SMTPUTF8", f"SIZE={len(message)}"]))

    @defer.inlineCallbacks
    def test_messagesOnOneConnection(self):
        """
        Three messages on one connection (no TLS: the client has no
        context), each in one BDAT with LAST; all three are passed on.
        """
        messages = [
            (f"sender{i}@example.com", [f"rcpt{i}@example.com"], b"Subject: %d\n\n..\nmessage %d\n" % (i, i))
            for i in range(3)
        ]
        client = _BatchClient(messages)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports["chunking"]), client)
        yield client.closed
        self.assertEqual(client.errors, [])
        self.assertEqual([(code, numOk) for code, resp, numOk, addresses in client.results], [(250, 1)] * 3)
        self.assertEqual(len(self.recorder.messages), 3)
        for received, (sender, recipients, message) in zip(self.recorder.messages, messages):
            self.assertRecorded(received, message, protocol="ESMTP", sender=sender, recipients=recipients)
        counters = yield self.sessionLog()
        self.assertEqual((counters.get("mail"), counters.get("bdat")), ("3", "3"), counters)

    @defer.inlineCallbacks
    def test_queuedAndDiscarded(self):
        """
        Without the proxy filter, smtpd queues the message (sent here with
        L{ESMTPSenderFactory}, neither TLS nor AUTH required) and Postfix
        delivers it to the discard transport.
        """
        result = defer.Deferred()
        factory = ESMTPSenderFactory(
            None,
            None,
            "sender@example.com",
            ["queued@example.com"],
            io.BytesIO(b"Subject: queued\n\n.\nthrown away\n"),
            result,
            retries=0,
            timeout=_CLIENT_TIMEOUT,
            requireAuthentication=False,
            requireTransportSecurity=False,
        )
        factory.domain = "client.test"
        self.connections.connectTCP("127.0.0.1", self.ports["queue"], factory)
        numOk, addresses = yield result
        self.assertEqual(numOk, 1)
        line = yield _waitForLog(self.log, b"to=<queued@example.com>", "Postfix")
        self.assertIn(b"/discard[", line)
        self.assertIn(b"status=sent", line)
        self.assertEqual(self.recorder.messages, [])
