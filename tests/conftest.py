"""Settings every room's tests share.

Hypothesis profiles for the property-based (fuzz) tests: `ci`, the short profile `make test`
runs, and `long`, the soak profile of `make fuzz` (HYPOTHESIS_PROFILE=long). Both are
deadline-free (the collector's tests go through real gRPC calls, whose first call is slow)
and keep no example database in the tree.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=60, **_COMMON)
settings.register_profile("long", max_examples=3000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
