# -*- test-case-name: mailproto.test.test_server_auth -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Counting failed AUTH attempts per client address, so that a client that
guesses passwords is stopped whatever it does: many connections, many
listeners, many attempts at once.  When the relay runs several worker
processes, each counts what it sees and its parent keeps the count of
the whole daemon (L{mailproto._relayd._sharedlimits}).
"""

from __future__ import annotations

import time


class AuthFailures:
    """
    Failed AUTH attempts per client address, over a sliding window, shared
    by the connections of a factory (or of several: the relay shares one
    between all its listeners).

    @ivar limit: failures allowed in C{window} seconds; after that, AUTH
        from the address is refused until older failures age out.
    @ivar window: the window, in seconds.
    """

    def __init__(self, limit: int = 10, window: float = 600.0, clock=None) -> None:
        """
        @param limit: see L{AuthFailures.limit}.
        @param window: see L{AuthFailures.window}.
        @param clock: an C{IReactorTime}; real time if C{None}.
        """
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[bytes, list[float]] = {}

    def now(self) -> float:
        """
        @return: the current time on this counter's clock.
        """
        return self._clock.seconds() if self._clock is not None else time.time()

    def _recent(self, address: bytes) -> list[float]:
        cutoff = self.now() - self.window
        times = [t for t in self._failures.get(address, ()) if t > cutoff]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def attempt(self, address: bytes) -> None:
        """
        Count an attempt from C{address} as a failure, as it starts (before
        the password is checked, which takes a while): a client cannot get
        more checks than the limit by trying many at once.  L{forgive} it
        if it succeeds.
        """
        self._failures[address] = [*self._recent(address), self.now()]
        if len(self._failures) > 100000:
            # Bounded memory: forget the quietest addresses.
            for old in sorted(self._failures, key=lambda a: self._failures[a][-1])[:10000]:
                del self._failures[old]

    #: Count a failure from an address (an attempt that failed at once).
    failed = attempt

    def forgive(self, address: bytes) -> None:
        """
        The last attempt from C{address} did not fail (it succeeded, or the
        server could not check it): do not count it.
        """
        times = self._failures.get(address)
        if times:
            times.pop()
            if not times:
                del self._failures[address]

    def blocked(self, address: bytes) -> bool:
        """
        @return: whether C{address} has had C{limit} failures in the window.
        """
        return len(self._recent(address)) >= self.limit

    def blockedFor(self, address: bytes) -> float:
        """
        @return: for how many more seconds C{address} stays blocked if no
            other attempt is counted or forgiven meanwhile (until the
            C{limit}-th latest failure ages out of the window); C{0.0} if
            it is not blocked.
        """
        times = self._recent(address)
        if len(times) < self.limit:
            return 0.0
        if self.limit <= 0:
            return float(self.window)
        return max(times[-self.limit] + self.window - self.now(), 0.0)
