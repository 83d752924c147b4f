"""Shared pieces of the property-based fuzz suites (hypothesis).

Profiles: ``default`` (a quick pass for development), ``ci`` (``--hypothesis-profile ci``: at least
:data:`CI_CASES` generated cases per test, derandomized so that a CI run tests the same cases as the
run before it on the same versions) and ``explore`` (as ``ci`` with fresh random cases each run: how
new failures are found; each one found becomes an ``@example``). Every fuzz test calls
:func:`count_case` with its input surface once per generated case; the test run prints the counts per
surface and, under ``ci`` and ``explore``, fails when a surface that ran got fewer than
:data:`CI_CASES` cases.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings

CI_CASES = 500
CASES: Counter[str] = Counter()

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                         HealthCheck.data_too_large]}
settings.register_profile("default", max_examples=40, **_COMMON)
settings.register_profile("ci", max_examples=CI_CASES, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=CI_CASES, **_COMMON)
#: Profiles held to :data:`CI_CASES` cases per fuzzed surface.
COUNTED_PROFILES = ("ci", "explore")
settings.load_profile("default")


def count_case(surface: str) -> None:
    """Record one generated case of ``surface`` (e.g. ``"pair files"``)."""
    CASES[surface] += 1
