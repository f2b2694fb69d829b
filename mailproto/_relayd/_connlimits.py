# -*- test-case-name: mailproto.test.test_connlimits -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Limits on the connections a server takes, shared by all its listeners:
how many are open at once, how many are open from one client address,
and how many one address may open per minute (what Postfix's anvil
counts for C{smtpd_client_connection_count_limit} and
C{smtpd_client_connection_rate_limit}); and accepting that pauses, rather
than spins, when the process is out of file descriptors.

L{ConnectionLimits} keeps the counts.  L{ConnectionLimitsFactory} wraps a
listener's factory, in the manner of C{twisted.protocols.policies}: a
connection over a limit is answered C{421 4.7.0 HOST Too many
connections ...} (the text names the limit) and closed, and never
reaches the server's protocol.  The check is made when the connection is
made, not when it is accepted, so that:

  - behind the PROXY protocol (L{mailproto._relayd._proxy}), whose wrapper
    connects the server's protocol only once the header is read, the
    address judged is the client's from the header, not the proxy's;
  - with implicit TLS (C{TLSMemoryBIOFactory} around this factory), the
    C{421} is sent inside TLS, where the client can read it.

Clients in exempt networks (the relay networks, as Postfix's
C{smtpd_client_event_limit_exceptions = $mynetworks}) and UNIX-socket
clients are counted in the overall limit only.  IPv6 clients are counted
by their /64 network, which one client usually holds whole.

An admission may also be decided later: when the relay runs several
worker processes, each worker's limits are a
L{RemoteConnectionLimits <mailproto._relayd._sharedlimits.RemoteConnectionLimits>}
that asks the parent, which keeps the counts of the whole daemon, and
whose C{admit} returns a C{Deferred}.  Until it fires the connection is
paused and silent (no greeting), and what the client sends anyway is
kept, up to L{MAX_UNDECIDED_INPUT}, to be passed on in order if it is
admitted; a connection that ends meanwhile and is admitted afterwards is
released at once, since the counts took it.  An admission that fails,
or is not decided within L{ADMISSION_TIMEOUT}, admits the connection
uncounted, with one log line per minute: whatever keeps the counts being
unreachable must not stop the intake (a worker that has lost its parent
stops, and the parent starts it again; the parent releases the
connections of a worker that has gone), and an answer that comes after
the timeout is still honoured (a late admission is counted from then
on).

Out of file descriptors: when C{accept()} fails with C{EMFILE} or
C{ENFILE}, Twisted's C{tcp.Port.doRead} (through C{tcp._accept}) logs
the failure and returns; the listening socket stays readable, so the
reactor calls it again at once, every turn, and each call logs again
(with C{EMFILE}, Twisted also gives up a reserved descriptor to accept
the waiting clients and close them).  L{guardAccepts} wraps a server
endpoint: once it listens, the port's listening socket is wrapped in an
L{_AcceptGuard} whose C{accept()} turns those two errors into
C{EAGAIN} ("no more clients now", which Twisted handles silently) and
pauses the port: C{stopReading()} now, C{startReading()} a second
later.  Open connections go on being served; waiting clients stay in the
kernel's backlog instead of being closed; one line is logged per minute.
This hook was chosen over a C{tcp.Port} subclass because it needs no
copy of C{doRead} and works for every endpoint whose port is a
C{tcp.Port} (TCP over IPv4 or IPv6, UNIX sockets), whatever made it.

The kernel's queue of clients not yet accepted, the listen backlog, is
L{mailproto._backlog}'s.
"""

from __future__ import annotations

import errno
import ipaddress
from collections import OrderedDict, deque

from twisted.internet import defer
from twisted.internet.interfaces import ILoggingContext, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.protocols.policies import WrappingFactory
from zope.interface import implementer

_log = Logger()

#: The names of the limits a L{ConnectionLimitsFactory} applies, and of
#: the accept guard's pause.
MAX_CLIENTS = "max-clients"
MAX_CLIENTS_PER_ADDRESS = "max-clients-per-address"
CONNECTION_RATE = "connection-rate"
ACCEPT_EMFILE = "accept-emfile"

#: What each refusal says after C{421 4.7.0 HOST}.
_REPLIES = {
    MAX_CLIENTS: b"Too many connections to this server, try again later",
    MAX_CLIENTS_PER_ADDRESS: b"Too many connections from your address, try again later",
    CONNECTION_RATE: b"Too many connections from your address in the last minute, try again later",
}

#: Seconds a refused connection has to take its reply before it is cut.
REFUSAL_TIMEOUT = 10.0

#: The prefix length IPv6 clients are counted by.
IPV6_PREFIX = 64

#: Octets a client may send while its admission is undecided; beyond
#: that its connection is dropped.
MAX_UNDECIDED_INPUT = 64 * 1024

#: Seconds a connection waits for an admission decided later before it
#: is admitted anyway, uncounted.
ADMISSION_TIMEOUT = 10.0

# The states of a _LimitedConnection once made.
_WAITING = "waiting"
_ADMITTED = "admitted"
_REFUSED = "refused"
_CLOSED = "closed"


def clientKey(address) -> str | None:
    """
    @param address: a transport's peer (C{IPv4Address}, C{IPv6Address},
        C{UNIXAddress}, ...).
    @return: what the per-address limits count the client by: its IPv4
        address, or its IPv6 /64 network; C{None} if it has no IP address.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))


class ConnectionLimits:
    """
    Counts of open and recent connections, overall and per client
    address, shared by the listeners of one server.

    Memory is bounded: per-address open counts exist only while that
    address has connections open (so at most L{maxClients} of them), and
    at most L{maxAddresses} addresses' recent connection times are kept
    (the stalest are forgotten first).

    @ivar maxClients: connections open at once, overall; C{0}: no limit.
    @ivar maxPerAddress: connections open at once from one address;
        C{0}: no limit.
    @ivar maxRate: connections one address may open in L{window} seconds;
        C{0}: no limit.  Refused attempts count too, as in Postfix's
        anvil, so a client that keeps hammering stays refused.
    @ivar window: the rate's window, in seconds.
    @ivar exempt: the networks (C{ipaddress} networks) whose clients the
        per-address limits leave alone.
    @ivar observers: callables C{(listener, limit)}, told each time a
        limit acts.
    @ivar open: connections open now.
    """

    #: Addresses whose recent connection times are kept, at most.
    maxAddresses = 10000
    #: Seconds between two log lines about the same address.
    logInterval = 60.0

    def __init__(
        self,
        maxClients: int = 1000,
        maxPerAddress: int = 50,
        maxRate: int = 0,
        exempt=(),
        clock=None,
        window: float = 60.0,
    ) -> None:
        """
        @param maxClients: see L{maxClients}.
        @param maxPerAddress: see L{maxPerAddress}.
        @param maxRate: see L{maxRate}.
        @param exempt: networks, as C{ipaddress} networks or strings.
        @param clock: an C{IReactorTime}; the reactor if C{None}.
        @param window: see L{window}.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.maxClients = maxClients
        self.maxPerAddress = maxPerAddress
        self.maxRate = maxRate
        self.window = window
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self.observers = []
        self.open = 0
        self._openFrom: dict[str, int] = {}
        self._recent: OrderedDict[str, deque] = OrderedDict()
        self._logged: OrderedDict[tuple, list] = OrderedDict()

    def _limitedKey(self, address) -> str | None:
        """
        @return: the key the per-address limits count C{address} by, or
            C{None} if they leave it alone.
        """
        key = clientKey(address)
        if key is None:
            return None
        network = ipaddress.ip_network(key, strict=False)
        if any(network.subnet_of(n) for n in self.exempt if n.version == network.version):
            return None
        return key

    def openFrom(self, address) -> int:
        """
        @return: the connections open now from C{address}'s key (0 for an
            exempt one).
        """
        key = self._limitedKey(address)
        return self._openFrom.get(key, 0) if key is not None else 0

    def admit(self, address, listener: str | None = None) -> str | None:
        """
        Count a new connection from C{address} if no limit refuses it.

        @param address: the client's address (a transport's peer).
        @param listener: the name of the listener it came to; the counts
            are the same for every listener.
        @return: C{None} if it is admitted (then call L{release} when it
            ends), else the name of the limit that refuses it.
        """
        if self.maxClients and self.open >= self.maxClients:
            return MAX_CLIENTS
        key = self._limitedKey(address)
        if key is not None:
            if self.maxRate and self._rateExceeded(key):
                return CONNECTION_RATE
            if self.maxPerAddress and self._openFrom.get(key, 0) >= self.maxPerAddress:
                return MAX_CLIENTS_PER_ADDRESS
            self._openFrom[key] = self._openFrom.get(key, 0) + 1
        self.open += 1
        return None

    def release(self, address) -> None:
        """
        A connection that L{admit} admitted has ended.
        """
        self.open = max(self.open - 1, 0)
        key = self._limitedKey(address)
        if key is not None and key in self._openFrom:
            left = self._openFrom[key] - 1
            if left > 0:
                self._openFrom[key] = left
            else:
                del self._openFrom[key]

    def _rateExceeded(self, key: str) -> bool:
        """
        Note an attempt from C{key}.

        @return: whether C{key} had already made L{maxRate} attempts in
            the last L{window} seconds.
        """
        now = self.clock.seconds()
        self._forgetBefore(now - self.window)
        times = self._recent.pop(key, None)
        if times is None or times.maxlen != self.maxRate:
            times = deque(times or (), maxlen=self.maxRate)
        exceeded = len(times) == self.maxRate and times[0] > now - self.window
        times.append(now)
        self._recent[key] = times
        while len(self._recent) > self.maxAddresses:
            self._recent.popitem(last=False)
        return exceeded

    def _forgetBefore(self, cutoff: float) -> None:
        # The table is in the order of last use: its stalest entries come first.
        recent = self._recent
        while recent:
            key = next(iter(recent))
            if recent[key][-1] > cutoff:
                break
            del recent[key]

    def acted(self, listener: str, limit: str) -> None:
        """
        Tell the L{observers} that C{limit} acted on a connection to
        C{listener}.
        """
        for observer in self.observers:
            observer(listener, limit)

    def refused(self, listener: str, limit: str, address) -> None:
        """
        A connection from C{address} to C{listener} was refused by
        C{limit}: tell the observers, and log it, once per address and
        limit every L{logInterval} seconds, with how many were refused
        meanwhile.
        """
        self.acted(listener, limit)
        now = self.clock.seconds()
        key = (clientKey(address) or _describe(address), limit)
        entry = self._logged.pop(key, None)
        if entry is not None and now - entry[0] < self.logInterval:
            entry[1] += 1
            self._logged[key] = entry
            return
        _log.info(
            "Refused a connection from {peer} to {listener}: {limit} ({more} more refused since the last line)",
            peer=key[0],
            listener=listener,
            limit=limit,
            more=entry[1] if entry is not None else 0,
        )
        self._logged[key] = [now, 0]
        while len(self._logged) > self.maxAddresses:
            self._logged.popitem(last=False)


def _describe(address) -> str:
    name = getattr(address, "name", None)
    if name is not None:
        return "unix:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
    return str(address)


class _LimitedConnection(Protocol):
    """
    One connection through a L{ConnectionLimitsFactory}: admitted, it
    connects the server's protocol to the transport itself (so that the
    server writes straight to it, as without limits) and passes on what
    arrives; refused, it sends C{421} and closes.

    An admission decided later (a C{Deferred} from C{admit}) holds the
    connection in between: the transport is paused, nothing is sent, and
    what the client sends anyway is kept (up to L{MAX_UNDECIDED_INPUT}
    octets, beyond which the connection is dropped) to be passed on, in
    order, if it is admitted.

    @ivar wrappedProtocol: the server's protocol.
    @ivar _state: C{None} until the connection is made, then
        L{_WAITING} (the admission is undecided), L{_ADMITTED},
        L{_REFUSED}, or L{_CLOSED} (the connection has ended, or was
        dropped before the decision).
    @ivar _counted: whether the limits counted this connection, and so
        are owed a C{release} when it ends.
    @ivar _buffer: what arrived while the admission was undecided.
    """

    _peer = None
    _state = None
    _counted = False
    _cutOff = None
    _timer = None
    _buffer = None
    _buffered = 0

    def __init__(self, factory: ConnectionLimitsFactory, wrappedProtocol) -> None:
        self.factory = factory
        self.wrappedProtocol = wrappedProtocol

    def logPrefix(self) -> str:
        wrapped = self.wrappedProtocol
        if ILoggingContext.providedBy(wrapped):
            return wrapped.logPrefix()
        return wrapped.__class__.__name__

    def makeConnection(self, transport) -> None:
        self._peer = transport.getPeer()
        self.connected = 1
        self.transport = transport
        decision = self.factory.limits.admit(self._peer, listener=self.factory.listener)
        if isinstance(decision, defer.Deferred):
            self._await(decision)
        else:
            self._decide(decision)

    def _decide(self, limit: str | None, counted: bool = True) -> None:
        """
        Connect the server's protocol if C{limit} is C{None}, else refuse
        the connection with C{421}.

        @param counted: whether an admission was counted by the limits.
        """
        if limit is None:
            self._state = _ADMITTED
            self._counted = counted
            self.wrappedProtocol.makeConnection(self.transport)
            return
        self._state = _REFUSED
        limits = self.factory.limits
        limits.refused(self.factory.listener, limit, self._peer)
        self.transport.write(b"421 4.7.0 %s %s\r\n" % (self.factory.host(), _REPLIES[limit]))
        self.transport.loseConnection()
        self._cutOff = limits.clock.callLater(REFUSAL_TIMEOUT, self.transport.abortConnection)

    def _await(self, decision: defer.Deferred) -> None:
        """
        Hold the connection until C{decision} fires, or for
        L{ConnectionLimitsFactory.admissionTimeout} seconds at most.
        """
        self._state = _WAITING
        self._buffer = []
        self.transport.pauseProducing()
        self._timer = self.factory.limits.clock.callLater(self.factory.admissionTimeout, self._timedOut)
        decision.addCallbacks(self._answered, self._notAnswered)

    def _answered(self, limit) -> None:
        if limit is not None and limit not in _REPLIES:
            self._notAnswered(Failure(ValueError(f"not a limit: {limit!r}")))
        elif self._state == _WAITING:
            self._decideLater(limit)
        elif limit is None:
            # An answer that comes too late: the connection was admitted
            # uncounted when the wait timed out, or it is gone.  Either
            # way the limits counted it, and must hear when it ends.
            if self._state == _ADMITTED:
                self._counted = True
            else:
                self.factory.limits.release(self._peer)

    def _notAnswered(self, reason: Failure) -> None:
        # Fail open: whatever keeps the counts being unreachable must not
        # stop the intake.  Nothing was counted, so nothing is released.
        # A failure after the timeout changes nothing.
        if self._state == _WAITING:
            self.factory.unanswered(self._peer, f"{reason.type.__name__}: {reason.getErrorMessage()}")
            self._decideLater(None, counted=False)

    def _timedOut(self) -> None:
        self._timer = None
        self.factory.unanswered(self._peer, f"no answer in {self.factory.admissionTimeout:g} seconds")
        self._decideLater(None, counted=False)

    def _decideLater(self, limit: str | None, counted: bool = True) -> None:
        """
        The decision has come: let the transport go on, decide, and pass
        on the input kept meanwhile if the connection is admitted.
        """
        self._stopTimer()
        buffered, self._buffer, self._buffered = b"".join(self._buffer), None, 0
        if not getattr(self.transport, "disconnecting", False):
            self.transport.resumeProducing()
        self._decide(limit, counted)
        if buffered and self._state == _ADMITTED and not getattr(self.transport, "disconnecting", False):
            self.wrappedProtocol.dataReceived(buffered)

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def dataReceived(self, data: bytes) -> None:
        if self._state == _ADMITTED:
            self.wrappedProtocol.dataReceived(data)
        elif self._state == _WAITING:
            self._buffered += len(data)
            if self._buffered <= MAX_UNDECIDED_INPUT:
                self._buffer.append(data)
                return
            # A client that sends this much unbidden is not an SMTP
            # client; a late admission is released at once.
            self._state = _CLOSED
            self._buffer = None
            self._stopTimer()
            getattr(self.transport, "abortConnection", self.transport.loseConnection)()

    def connectionLost(self, reason) -> None:
        self.connected = 0
        if self._cutOff is not None and self._cutOff.active():
            self._cutOff.cancel()
        self._stopTimer()
        self._buffer = None
        state, self._state = self._state, _CLOSED
        if state == _ADMITTED:
            if self._counted:
                self._counted = False
                self.factory.limits.release(self._peer)
            self.wrappedProtocol.connectionLost(reason)


class ConnectionLimitsFactory(WrappingFactory):
    """
    Wraps a listener's factory so that its connections are held to a
    L{ConnectionLimits}, or to an object with the same C{admit},
    C{release}, C{refused} and C{clock} whose C{admit} may answer later
    (L{mailproto._relayd._sharedlimits.RemoteConnectionLimits}).

    @ivar limits: the L{ConnectionLimits}.
    @ivar listener: the listener's name, for logs and metrics.
    @ivar admissionTimeout: seconds a connection waits for an admission
        decided later before it is admitted anyway, uncounted.
    @ivar logInterval: seconds between two log lines about admissions
        that could not be decided.
    """

    protocol = _LimitedConnection
    noisy = False
    admissionTimeout = ADMISSION_TIMEOUT
    logInterval = 60.0
    _lastUnanswered = None
    _unansweredSince = 0

    def __init__(self, wrappedFactory, limits: ConnectionLimits, listener: str = "smtp") -> None:
        """
        @param wrappedFactory: the server's factory; its C{domain}, if it
            has one, names the server in refusals.
        @param limits: see L{limits}.
        @param listener: see L{listener}.
        """
        super().__init__(wrappedFactory)
        self.limits = limits
        self.listener = listener

    def host(self) -> bytes:
        """
        @return: the server's name, for refusals.
        """
        domain = getattr(self.wrappedFactory, "domain", None) or b"localhost"
        return domain if isinstance(domain, bytes) else str(domain).encode("idna")

    def unanswered(self, peer, why: str) -> None:
        """
        The admission of a connection from C{peer} could not be decided
        (C{why}), so it was admitted uncounted: log it, once per
        L{logInterval}, with how many more there were meanwhile.
        """
        now = self.limits.clock.seconds()
        if self._lastUnanswered is not None and now - self._lastUnanswered < self.logInterval:
            self._unansweredSince += 1
            return
        _log.warn(
            "Admitted a connection from {peer} to {listener} without counting it: the connection limits did not "
            "answer ({why}); {more} more since the last line",
            peer=clientKey(peer) or _describe(peer),
            listener=self.listener,
            why=why,
            more=self._unansweredSince,
        )
        self._lastUnanswered, self._unansweredSince = now, 0

    def buildProtocol(self, addr):
        """
        @return: a connection that admits or refuses the wrapped factory's
            protocol, or C{None} if the wrapped factory refuses it.
        """
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


class _AcceptGuard:
    """
    A listening socket whose C{accept()} pauses its port, rather than
    fails, when the process or the system is out of file descriptors.
    Everything else is the socket's.
    """

    def __init__(self, socket, pause) -> None:
        self._socket = socket
        self._pause = pause

    def accept(self):
        try:
            return self._socket.accept()
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self._pause(e.errno)
            raise BlockingIOError(errno.EAGAIN, "paused: out of file descriptors") from None

    def __getattr__(self, name):
        return getattr(self._socket, name)


class _AcceptPauser:
    """
    Pauses one listening port for L{pause} seconds each time it runs out
    of file descriptors, and logs it once per L{logInterval}.
    """

    pause = 1.0
    logInterval = 60.0

    def __init__(self, port, clock, description: str, observer=None) -> None:
        self.port = port
        self.clock = clock
        self.description = description
        self.observer = observer
        self._resume = None
        self._lastLine = None
        self._since = 0

    def __call__(self, code: int) -> None:
        if self.observer is not None:
            self.observer(ACCEPT_EMFILE)
        self._since += 1
        now = self.clock.seconds()
        if self._lastLine is None or now - self._lastLine >= self.logInterval:
            _log.warn(
                "Out of file descriptors ({error}) accepting on {listener}: pausing accepts for {pause:g} s "
                "({count} times since the last line); open connections are still served",
                error=errno.errorcode.get(code, code),
                listener=self.description,
                pause=self.pause,
                count=self._since,
            )
            self._lastLine, self._since = now, 0
        if self._resume is None or not self._resume.active():
            self.port.stopReading()
            self._resume = self.clock.callLater(self.pause, self._resumeReading)

    def _resumeReading(self) -> None:
        self._resume = None
        if self.port.connected and not self.port.disconnecting:
            self.port.startReading()


@implementer(IStreamServerEndpoint)
class _GuardedEndpoint:
    def __init__(self, endpoint, clock, description: str, observer) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.description = description
        self.observer = observer

    def listen(self, factory) -> defer.Deferred:
        def guard(port):
            if hasattr(port, "socket") and hasattr(port, "stopReading") and port.socket is not None:
                pauser = _AcceptPauser(port, self.clock, self.description, self.observer)
                port.socket = _AcceptGuard(port.socket, pauser)
            return port

        return self.endpoint.listen(factory).addCallback(guard)


def guardAccepts(endpoint, clock=None, description: str = "", observer=None):
    """
    Wrap a server endpoint so that its port, when out of file descriptors
    (C{EMFILE}, C{ENFILE}), stops accepting for a second instead of
    retrying at once, and logs it once a minute.

    @param endpoint: an C{IStreamServerEndpoint}; ports that are not
        C{tcp.Port}s (without a listening C{socket}) are left as they are.
    @param clock: the C{IReactorTime} of the pause; the reactor if
        C{None}.
    @param description: the listener, for the log.
    @param observer: a callable given L{ACCEPT_EMFILE} at each pause, or
        C{None}.
    @return: an C{IStreamServerEndpoint}.
    """
    if clock is None:
        from twisted.internet import reactor as clock
    return _GuardedEndpoint(endpoint, clock, description, observer)
