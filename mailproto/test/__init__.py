# Copyright (c) mailproto authors. See LICENSE for details.
"""
mailproto's tests.  Run them with C{python -m twisted.trial mailproto}.

Property tests use Hypothesis with a fixed seed (the C{mailproto} profile),
so that every run tries the same examples; set C{HYPOTHESIS_PROFILE=explore}
to search with fresh random examples instead.
"""

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
else:
    settings.register_profile(
        "mailproto",
        derandomize=True,
        deadline=None,
        max_examples=200,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    settings.register_profile("explore", deadline=None, max_examples=2000)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mailproto"))
