# -*- test-case-name: mailproto.test.test_headers -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Helpers for message headers, as in twisted.mail.smtp: L{rfc822date} for
C{Date:}, L{messageid} for C{Message-ID:}, L{idGenerator}, and the local
host name they use.
"""

from __future__ import annotations

import calendar
import functools
import itertools
import os
import secrets
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime


@functools.lru_cache(maxsize=1)
def localHostname() -> bytes:
    """
    The name of this host, as C{socket.getfqdn()} gives it, looked up once
    on first use (not at import: a broken resolver can make the lookup
    slow).

    @return: the host name, ASCII.
    """
    name = socket.getfqdn() or socket.gethostname() or "localhost"
    return name.encode("idna") if not name.isascii() else name.encode("ascii")


def rfc822date(timeinfo=None, local: int | bool = 1) -> bytes:
    """
    Format a date for a C{Date:} header (RFC 5322 section 3.3).

    @param timeinfo: a 9-tuple as from C{time.localtime()} or
        C{time.gmtime()}; now if not given.
    @param local: whether C{timeinfo} is local time (shown with the local
        offset) or UTC (shown as C{+0000}).  When C{timeinfo} is not given,
        whether to show now in local time or in UTC.
    @return: e.g. C{b"Sat, 21 Nov 2026 06:11:00 +0100"}.
    """
    if not timeinfo:
        moment = time.time()
    elif local:
        moment = time.mktime(tuple(timeinfo))
    else:
        moment = calendar.timegm(tuple(timeinfo))
    if local:
        stamp = datetime.fromtimestamp(moment).astimezone()
    else:
        stamp = datetime.fromtimestamp(moment, timezone.utc)
    # Seconds offsets (historic zones) cannot be written; round to minutes.
    offset = stamp.utcoffset() or timedelta(0)
    stamp = stamp.replace(tzinfo=timezone(timedelta(minutes=round(offset.total_seconds() / 60))))
    return format_datetime(stamp).encode("ascii")


def idGenerator() -> Iterator[int]:
    """
    Count from zero, for ever.

    @return: an iterator over 0, 1, 2, ...
    """
    return itertools.count()


_gen = idGenerator()


def messageid(uniq: str | None = None, N=lambda: next(_gen)) -> bytes:
    """
    Make a globally unique C{Message-ID:} value (RFC 5322 section 3.6.4),
    C{<time.pid.random[.uniq].counter@host>}.

    @param uniq: text added to strengthen uniqueness.
    @param N: a callable returning the next value of a counter.
    @return: the message id with its angle brackets.
    """
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    extra = "" if uniq is None else "." + uniq
    value = f"<{stamp}.{os.getpid()}.{secrets.randbelow(2**31 - 1)}{extra}.{N()}@"
    return value.encode("utf-8") + localHostname() + b">"
