# -*- test-case-name: mailproto.test.test_daemon -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
How many processors this process may use: what C{--workers auto} means,
for the relay (C{twistd mailrelay}) and the sink (C{mailproto sink}).
"""

from __future__ import annotations

import os

__all__ = ["availableCores"]


def availableCores() -> int:
    """
    @return: how many processors this process may run on (its CPU
        affinity where the system has one, so that C{taskset} and container
        CPU sets count; else the machine's count), at least 1.
    """
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)
