"""Properties of the policy parser (router.policy), on generated documents."""

from __future__ import annotations

import json

import yaml
from hypothesis import given
from hypothesis import strategies as st
from properties import FEW, PROPERTIES

from edgecloud.router.policy import (
    BreakerPolicy,
    BudgetPolicy,
    LatencyPolicy,
    Policy,
    PolicyError,
    ScoreHistogram,
    ScoreName,
    ScoresKind,
    dump_policy,
    parse_policy,
)

VALID = {
    "name": "digits", "version": "4", "score": "margin", "temperature": 0.8,
    "threshold": 0.6, "class_thresholds": {"3": 0.7}, "scores_output": "probabilities",
    "scores_kind": "probabilities",
    "latency": {"default_budget_ms": 250.0, "rtt_quantile": 0.9, "rtt_window": 200},
    "budget": {"target_rate": 0.2, "step": 0.01, "max_shift": 0.5, "window": 1000},
    "breaker": {"failures_to_open": 5, "half_open_after_s": 10.0},
    "shadow_rate": 0.01,
    "calibration_histogram": {"edges": [0.0, 0.5, 1.0], "counts": [3, 7]},
    "provenance": {"edge_model": "digits:1", "notes": "tuned"},
}
"""A policy document as the tuner writes it (in JSON form)."""

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
"""Any JSON value."""


def _paths(document, prefix=()):
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _paths(value, (*prefix, index))


PATHS = [path for path in _paths(VALID) if path and path[0] != "class_thresholds"]


def _replaced(path, value) -> dict:
    copy = json.loads(json.dumps(VALID))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _field(path) -> str:
    """A path as the parser's messages write it (``calibration_histogram.edges[1]``)."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def _parsed_or_refused(text: str | bytes) -> Policy | None:
    try:
        return parse_policy(text)
    except PolicyError as exc:
        assert exc.problems and all(exc.problems)
        return None


@PROPERTIES
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_is_a_policy_or_a_policy_error(text) -> None:
    """Any text or bytes is a policy or PolicyError saying why, never another exception."""
    _parsed_or_refused(text)


@PROPERTIES
@given(JSON, st.sampled_from(["json", "yaml"]))
def test_any_document_is_a_policy_or_a_policy_error(document, form: str) -> None:
    """Any JSON or YAML document is a policy or PolicyError, never another exception."""
    text = json.dumps(document) if form == "json" else yaml.safe_dump(document)
    _parsed_or_refused(text)


@PROPERTIES
@given(st.sampled_from(PATHS), JSON)
def test_one_odd_value_is_refused_naming_its_field(path, value) -> None:
    """A valid policy with one value replaced by any JSON value parses, or is refused with
    a message that names that field, a field inside it, or the section it breaks."""
    try:
        parse_policy(json.dumps(_replaced(path, value)))
    except PolicyError as exc:
        named = [f"policy field '{_field(path[:n])}" for n in range(len(path), 0, -1)]
        assert any(name in str(exc) for name in named), (path, str(exc))


@PROPERTIES
@given(st.integers(1, 20_000), st.sampled_from(["[", "{\"a\": ", "- ", "a: {"]),
       st.sampled_from(["json", "yaml"]))
def test_any_nesting_is_a_policy_error_not_a_crash(depth: int, opener: str, form: str) -> None:
    """A document nested as deep as anyone likes is refused with PolicyError (too deep,
    or not a policy), never a RecursionError."""
    text = opener * depth
    if form == "yaml":
        text = "name: t\nthreshold: 0.5\nprovenance: " + text
    _parsed_or_refused(text)


FRACTION = st.floats(0.0, 1.0)
POSITIVE = st.floats(1e-3, 1e4)

POLICIES = st.builds(
    Policy,
    name=st.text(alphabet="abcxyz-_0123", min_size=1, max_size=12),
    version=st.text(alphabet="0123456789.", min_size=1, max_size=6),
    score=st.sampled_from(ScoreName),
    temperature=POSITIVE,
    threshold=FRACTION,
    class_thresholds=st.dictionaries(st.integers(0, 100), FRACTION, max_size=4),
    scores_output=st.none() | st.text(alphabet="abc_xyz", min_size=1, max_size=8),
    scores_kind=st.sampled_from(ScoresKind),
    latency=st.builds(LatencyPolicy, default_budget_ms=POSITIVE,
                      rtt_quantile=st.floats(0.01, 0.99), rtt_window=st.integers(1, 10_000)),
    budget=st.builds(BudgetPolicy, target_rate=st.none() | FRACTION, step=POSITIVE,
                     max_shift=FRACTION, window=st.integers(1, 10_000)),
    breaker=st.builds(BreakerPolicy, failures_to_open=st.integers(1, 1000),
                      half_open_after_s=POSITIVE),
    shadow_rate=FRACTION,
    calibration_histogram=st.none() | st.lists(
        st.floats(-1e3, 1e3), min_size=2, max_size=6, unique=True).map(sorted).flatmap(
        lambda edges: st.builds(ScoreHistogram, edges=st.just(edges), counts=st.lists(
            st.integers(0, 10**9), min_size=len(edges) - 1, max_size=len(edges) - 1))),
)


@FEW
@given(POLICIES)
def test_every_policy_round_trips_through_its_document(policy: Policy) -> None:
    """Any valid policy written with dump_policy reads back equal, as YAML and as JSON."""
    assert parse_policy(dump_policy(policy)) == policy
    assert parse_policy(policy.model_dump_json()) == policy
