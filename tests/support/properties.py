"""Hypothesis settings shared by the property-based tests.

Bounded and derandomized: every run tries the same examples, so the suite
stays fast and a failure reproduces; no example database is written.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

PROPERTIES = settings(
    max_examples=150,
    deadline=None,  # a shared machine's hiccup is not a failure
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""For the properties of one parser call per example."""

FEW = settings(PROPERTIES, max_examples=40)
"""For properties whose every example does more work (dumping and parsing a document)."""
