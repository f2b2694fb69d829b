# -*- test-case-name: mailproto.test.test_sharedlimits -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The limits on clients when the relay runs several worker processes:
connections (L{ConnectionLimits}) and AUTH failures (L{AuthFailures})
stay limits of the whole daemon.  The parent keeps the real counts; each
worker asks it.

A worker reaches its parent through one callable, C{ask(name,
**arguments)}, that returns a C{Deferred} of the parent's answer; this
module does not care how it travels (the relay maps each name onto an AMP
command of L{mailproto._relayd._workerprotocol}).  Every argument is a
C{str}:

  - C{"admit"}, C{address}, C{listener}: answers the name of the limit
    that refuses the connection, or C{None} (alone, or as the C{"limit"}
    of a response mapping) if it is admitted and counted;
  - C{"release"}, C{address}: an admitted connection has ended;
  - C{"refused"}, C{address}, C{listener}, C{limit}: a refusal was sent,
    to be logged and counted in the metrics;
  - C{"authAttempt"}, C{address}: an AUTH attempt (or failure) from
    C{address} is counted;
  - C{"authForgive"}, C{address}: the last one did not fail.

Connection addresses travel as the JSON text of L{addressToWire}; AUTH
addresses (the server's C{bytes} for a client, its IP address) as text,
one character per octet (Latin-1).  Only C{"admit"} waits for its
answer; the others are told and forgotten: if the parent cannot be
reached, the worker goes on with what it knows.

The parent answers with L{ParentLimits} and L{ParentAuthFailures}, and
tells every worker when an address is blocked from AUTH, which the
worker hears through L{SharedAuthFailures.blockedUntil}.

How far the daemon's AUTH limit holds with N workers: every attempt a
worker counts is counted by the parent too, and by the worker itself.
Once the parent has counted the C{limit}-th failure in the window it
tells every worker at once; until a worker hears it, that worker still
lets attempts start, but at most one per open connection from the
address (a connection's AUTH commands come one after the other, and each
failure is answered after a delay), so the daemon checks at most
C{limit} plus the attempts in flight during one round trip between a
worker and the parent.  With the parent unreachable each worker still
holds the address to its own count: never more than C{N × limit}.
"""

from __future__ import annotations

import json
from collections import Counter

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from mailproto._authfailures import AuthFailures

__all__ = [
    "ParentAuthFailures",
    "ParentLimits",
    "RemoteConnectionLimits",
    "SharedAuthFailures",
    "addressFromWire",
    "addressToWire",
]

#: Addresses a L{SharedAuthFailures} or L{ParentAuthFailures} remembers
#: as blocked, at most.
MAX_BLOCKED = 100000

# Two ends of a block closer than this (seconds) are the same.
_SAME = 0.001

_INET = {IPv4Address: "INET", IPv6Address: "INET6"}


def addressToWire(address) -> dict:
    """
    A client's address as plain values, to cross to another process.

    @param address: an C{IPv4Address}, C{IPv6Address} or C{UNIXAddress}.
    @return: a C{dict} of C{str} and C{int}: C{family} (C{"INET"},
        C{"INET6"} or C{"UNIX"}); for IP, C{type} (C{"TCP"} or C{"UDP"}),
        C{host} and C{port}, and for IPv6 C{flowInfo} and C{scopeID} too
        (an C{int}, or the C{str} it was given as); for UNIX, C{name},
        one character per octet of the socket's path, unless it has none.
    @raise ValueError: for another kind of address.
    """
    family = _INET.get(type(address))
    if family is not None:
        wire = {"family": family, "type": address.type, "host": address.host, "port": address.port}
        if family == "INET6":
            wire["flowInfo"] = address.flowInfo
            wire["scopeID"] = address.scopeID
        return wire
    if type(address) is UNIXAddress:
        wire = {"family": "UNIX"}
        name = address.name
        if name is not None:
            wire["name"] = (name if isinstance(name, bytes) else name.encode("utf-8")).decode("latin-1")
        return wire
    raise ValueError(f"cannot send {address!r} to another process")


def _field(wire: dict, name: str, kind: type):
    value = wire.get(name)
    if type(value) is not kind:
        raise ValueError(f"address field {name!r} is {value!r}, not {kind.__name__}")
    return value


def addressFromWire(wire: dict):
    """
    The address L{addressToWire} gave C{wire} for.

    @param wire: what L{addressToWire} returned (perhaps through JSON).
    @return: an C{IPv4Address}, C{IPv6Address} or C{UNIXAddress}.
    @raise ValueError: if C{wire} is not such a C{dict}.
    """
    if not isinstance(wire, dict):
        raise ValueError(f"not an address: {wire!r}")
    family = wire.get("family")
    if family in ("INET", "INET6"):
        kind = _field(wire, "type", str)
        if kind not in ("TCP", "UDP"):
            raise ValueError(f"not an address type: {kind!r}")
        host, port = _field(wire, "host", str), _field(wire, "port", int)
        if family == "INET":
            return IPv4Address(kind, host, port)
        scopeID = wire.get("scopeID")
        if type(scopeID) not in (int, str):
            raise ValueError(f"address field 'scopeID' is {scopeID!r}")
        return IPv6Address(kind, host, port, _field(wire, "flowInfo", int), scopeID)
    if family == "UNIX":
        if "name" not in wire:
            return UNIXAddress(None)
        try:
            return UNIXAddress(_field(wire, "name", str).encode("latin-1"))
        except UnicodeEncodeError:
            raise ValueError("a UNIX address's name has characters beyond one octet") from None
    raise ValueError(f"not an address family: {family!r}")


def _toText(address) -> str:
    return json.dumps(addressToWire(address), sort_keys=True)


def _fromText(text: str):
    return addressFromWire(json.loads(text))


def _limitOf(answer) -> str | None:
    """
    @return: the limit named by the parent's answer to C{"admit"}: the
        name itself, or the C{"limit"} of a response mapping; C{None} (or
        an empty name) for an admission.
    @raise ValueError: for an answer of another shape.
    """
    if isinstance(answer, dict):
        answer = answer.get("limit")
    if answer is None or isinstance(answer, str):
        return answer or None
    raise ValueError(f"not an answer to admit: {answer!r}")


def _tell(ask, name: str, **arguments) -> None:
    """
    Tell the parent C{name}, without waiting: if it cannot be told, the
    worker's own counts stand in.
    """
    defer.maybeDeferred(ask, name, **arguments).addErrback(lambda reason: None)


class RemoteConnectionLimits:
    """
    A worker's L{ConnectionLimits}, for its L{ConnectionLimitsFactory}s:
    the parent counts the connections of every worker, and decides.

    @ivar clock: the C{IReactorTime} of refusals and of the wait for an
        admission.
    """

    def __init__(self, ask, clock=None) -> None:
        """
        @param ask: C{ask(name, **arguments)}: asks the parent, returns a
            C{Deferred} of the answer (see the module's docstring).
        @param clock: see L{clock}; the reactor if C{None}.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self._ask = ask
        self.clock = clock

    def admit(self, address, listener: str | None = None) -> defer.Deferred:
        """
        Ask the parent to count a new connection from C{address}.

        @param address: the client's address.
        @param listener: the name of the listener it came to.
        @return: a C{Deferred} that fires with C{None} if it is admitted
            (then call L{release} when it ends), else with the name of
            the limit that refuses it; it fails if the parent cannot
            answer, or answers something else.
        """
        try:
            text = _toText(address)
        except ValueError:
            return defer.fail()
        answer = defer.maybeDeferred(self._ask, "admit", address=text, listener=listener or "")
        return answer.addCallback(_limitOf)

    def release(self, address) -> None:
        """
        A connection the parent admitted has ended.
        """
        _tell(self._ask, "release", address=_toText(address))

    def refused(self, listener: str, limit: str, address) -> None:
        """
        A connection from C{address} to C{listener} was refused by
        C{limit}: the parent logs it and counts it.
        """
        _tell(self._ask, "refused", address=_toText(address), listener=listener, limit=limit)


class ParentLimits:
    """
    The parent's side of L{RemoteConnectionLimits}: the daemon's
    L{ConnectionLimits}, asked by workers with addresses from the wire.

    It remembers which worker holds which admitted connection, so that a
    worker that goes away (its connections with it) is released whole
    (L{workerGone}), and a worker that releases what it was never given
    changes nothing.  Memory: one entry per open connection.

    @ivar limits: the L{ConnectionLimits}.
    """

    def __init__(self, limits) -> None:
        """
        @param limits: see L{limits}.
        """
        self.limits = limits
        self._held: dict[object, Counter] = {}

    @staticmethod
    def _key(address) -> tuple:
        return tuple(sorted(addressToWire(address).items()))

    def admit(self, worker, address: str, listener: str = "") -> str | None:
        """
        C{worker} asks to admit a connection.

        @param worker: whatever names the worker (its connection, say).
        @param address: the client's address, as the JSON text of
            L{addressToWire}.
        @param listener: the listener's name.
        @return: C{None} if it is admitted (and counted for C{worker}),
            else the name of the limit that refuses it.
        @raise ValueError: if C{address} is not an address.
        """
        peer = _fromText(address)
        limit = self.limits.admit(peer, listener=listener or None)
        if limit is None:
            self._held.setdefault(worker, Counter())[self._key(peer)] += 1
        return limit

    def release(self, worker, address: str) -> None:
        """
        A connection C{worker} was admitted for has ended.

        @raise ValueError: if C{address} is not an address.
        """
        peer = _fromText(address)
        held = self._held.get(worker)
        key = self._key(peer)
        if not held or not held[key]:
            return
        held[key] -= 1
        if not held[key]:
            del held[key]
        if not held:
            del self._held[worker]
        self.limits.release(peer)

    def refused(self, listener: str, limit: str, address: str) -> None:
        """
        A worker refused a connection: log it and tell the observers.

        @raise ValueError: if C{address} is not an address.
        """
        self.limits.refused(listener, limit, _fromText(address))

    def held(self, worker) -> int:
        """
        @return: how many connections C{worker} holds.
        """
        return sum(self._held.get(worker, Counter()).values())

    def workerGone(self, worker) -> int:
        """
        C{worker} has gone, and its connections with it: release them.

        @return: how many were released.
        """
        held = self._held.pop(worker, Counter())
        for key, count in held.items():
            peer = addressFromWire(dict(key))
            for _ in range(count):
                self.limits.release(peer)
        return sum(held.values())


def _toBytes(address) -> bytes:
    return address.encode("latin-1") if isinstance(address, str) else address


def _remember(table: dict, address: bytes, until: float, now: float) -> None:
    """
    Set C{table[address] = until} (a time), keeping at most
    L{MAX_BLOCKED} entries: those over are dropped, the ones that ended
    first, then the oldest set.
    """
    table.pop(address, None)
    table[address] = until
    if len(table) > MAX_BLOCKED:
        for old in [a for a, t in table.items() if t <= now]:
            del table[old]
        while len(table) > MAX_BLOCKED:
            del table[next(iter(table))]


class SharedAuthFailures:
    """
    A worker's AUTH failure counts, for its ESMTP factories in place of
    an L{AuthFailures}: it counts what this worker sees, tells the parent
    (which counts what every worker sees), and refuses an address that
    either count blocks.

    @ivar local: this worker's own L{AuthFailures}.
    """

    def __init__(self, ask, limit: int = 10, window: float = 600.0, clock=None) -> None:
        """
        @param ask: C{ask(name, **arguments)} (see the module's docstring).
        @param limit: see L{AuthFailures.limit}.
        @param window: see L{AuthFailures.window}.
        @param clock: an C{IReactorTime}; real time if C{None}.
        """
        self._ask = ask
        self.local = AuthFailures(limit, window, clock)
        self._blocked: dict[bytes, float] = {}

    @property
    def limit(self) -> int:
        """
        Failures allowed in the window (the same for the parent).
        """
        return self.local.limit

    @limit.setter
    def limit(self, value: int) -> None:
        self.local.limit = value

    @property
    def window(self) -> float:
        """
        The window, in seconds.
        """
        return self.local.window

    @window.setter
    def window(self, value: float) -> None:
        self.local.window = value

    def attempt(self, address: bytes) -> None:
        """
        Count an attempt from C{address} as a failure, here and at the
        parent (see L{AuthFailures.attempt}).
        """
        self.local.attempt(address)
        _tell(self._ask, "authAttempt", address=address.decode("latin-1"))

    #: Count a failure from an address (an attempt that failed at once).
    failed = attempt

    def forgive(self, address: bytes) -> None:
        """
        The last attempt from C{address} did not fail: do not count it,
        here or at the parent.
        """
        self.local.forgive(address)
        _tell(self._ask, "authForgive", address=address.decode("latin-1"))

    def blocked(self, address: bytes) -> bool:
        """
        @return: whether C{address} is blocked by this worker's count, or
            by the parent's (as it last said).
        """
        if self.local.blocked(address):
            return True
        until = self._blocked.get(address)
        if until is None:
            return False
        if until > self.local.now():
            return True
        del self._blocked[address]
        return False

    def blockedUntil(self, address, seconds: float) -> None:
        """
        The parent says: C{address} is blocked for the next C{seconds}
        seconds (a duration, so that the two clocks need not agree), or,
        if C{seconds} is not above zero, it is not blocked any more.

        @param address: the client's address, as C{bytes}, or as text with
            one character per octet.
        """
        address = _toBytes(address)
        if seconds > 0:
            now = self.local.now()
            _remember(self._blocked, address, now + seconds, now)
        else:
            self._blocked.pop(address, None)


class ParentAuthFailures:
    """
    The parent's side of L{SharedAuthFailures}: counts what workers tell
    it in the daemon's L{AuthFailures}, and says what every worker must be
    told (C{blockedUntil}) when an address becomes blocked, or stops
    being blocked because an attempt was forgiven.

    Each method returns that news as a list of C{(address, seconds)}: the
    address as C{bytes}, blocked for C{seconds} more seconds, or no longer
    blocked if C{seconds} is C{0.0}.  An attempt that makes an address's
    block end later is news again; one that changes nothing is not.

    @ivar failures: the daemon's L{AuthFailures}.
    """

    def __init__(self, failures: AuthFailures) -> None:
        """
        @param failures: see L{failures}.
        """
        self.failures = failures
        # When each block the workers were told of ends, by address.
        self._told: dict[bytes, float] = {}

    def attempt(self, address) -> list[tuple[bytes, float]]:
        """
        A worker counted an attempt from C{address} (as C{bytes}, or as
        text with one character per octet).

        @return: the news for every worker.
        """
        address = _toBytes(address)
        self.failures.attempt(address)
        return self._news(address)

    failed = attempt

    def forgive(self, address) -> list[tuple[bytes, float]]:
        """
        A worker forgave the last attempt from C{address}.

        @return: the news for every worker.
        """
        address = _toBytes(address)
        self.failures.forgive(address)
        return self._news(address)

    def blockedNow(self) -> list[tuple[bytes, float]]:
        """
        @return: the addresses blocked now, as news for a worker that
            starts.
        """
        news = []
        for address in list(self._told):
            seconds = self.failures.blockedFor(address)
            if seconds > 0:
                news.append((address, seconds))
            else:
                del self._told[address]
        return news

    def _news(self, address: bytes) -> list[tuple[bytes, float]]:
        now = self.failures.now()
        seconds = self.failures.blockedFor(address)
        told = self._told.get(address)
        if seconds > 0:
            if told is not None and told >= now + seconds - _SAME:
                return []
            _remember(self._told, address, now + seconds, now)
            return [(address, seconds)]
        if told is None:
            return []
        del self._told[address]
        return [(address, 0.0)] if told > now else []
