"""Tests for the policy document: validation, messages, YAML/JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from edgecloud.router.policy import (
    BreakerPolicy,
    BudgetPolicy,
    LatencyPolicy,
    Policy,
    PolicyError,
    Provenance,
    ScoreHistogram,
    ScoreName,
    ScoresKind,
    dump_policy,
    parse_policy,
)

MINIMAL = """\
name: digits
version: "1"
score: margin
temperature: 1.0
threshold: 0.45
scores_output: probabilities
scores_kind: probabilities
"""


def full_policy() -> Policy:
    return Policy(
        name="digits",
        version="7",
        score=ScoreName.ENTROPY,
        temperature=1.5,
        threshold=0.45,
        class_thresholds={3: 0.6, 8: 0.55},
        scores_output="logits",
        scores_kind=ScoresKind.LOGITS,
        latency=LatencyPolicy(default_budget_ms=120.0, rtt_quantile=0.95, rtt_window=50),
        budget=BudgetPolicy(target_rate=0.2, step=0.005, max_shift=0.1, window=500),
        breaker=BreakerPolicy(failures_to_open=3, half_open_after_s=2.5),
        shadow_rate=0.01,
        calibration_histogram=ScoreHistogram(edges=[0.0, 0.5, 1.0], counts=[10, 90]),
        provenance=Provenance(
            edge_model="digits-small:3",
            cloud_model="digits-large:1",
            data="digits-calib",
            tuned_at="2024-05-01T12:00:00Z",
            notes="accuracy within 0.5 points of cloud-only",
        ),
    )


def test_minimal_policy_parses_with_defaults() -> None:
    """The minimal policy from the design parses, and unspecified sections take defaults."""
    policy = parse_policy(MINIMAL)
    assert policy.name == "digits"
    assert policy.score is ScoreName.MARGIN
    assert policy.threshold == 0.45
    assert policy.scores_kind is ScoresKind.PROBABILITIES
    assert policy.class_thresholds == {}
    assert policy.latency == LatencyPolicy()
    assert policy.latency.default_budget_ms == 250.0
    assert policy.budget.target_rate is None
    assert policy.breaker.failures_to_open == 5
    assert policy.shadow_rate == 0.0
    assert policy.calibration_histogram is None


def test_yaml_round_trip_keeps_every_field() -> None:
    """dump_policy writes YAML that parse_policy reads back equal, every section set."""
    policy = full_policy()
    text = dump_policy(policy)
    assert parse_policy(text) == policy
    assert "class_thresholds:\n  3: 0.6\n" in text  # class keys stay numbers


def test_json_round_trip() -> None:
    """A policy written as JSON (string class keys) parses to the same policy."""
    policy = full_policy()
    text = json.dumps(policy.model_dump(mode="json"), indent="\t")
    assert parse_policy(text) == policy


def test_default_policy_round_trip() -> None:
    """A policy with only the required fields survives a dump and parse unchanged."""
    policy = Policy(name="x", threshold=0.0)
    assert parse_policy(dump_policy(policy)) == policy


def test_integer_version_is_read_as_text() -> None:
    """`version: 2` (an integer in YAML) is taken as the version string "2"."""
    assert parse_policy("name: d\nversion: 2\nthreshold: 0.5\n").version == "2"


def test_bytes_are_accepted() -> None:
    """UTF-8 bytes parse like text; other bytes give a PolicyError."""
    assert parse_policy(MINIMAL.encode()).name == "digits"
    with pytest.raises(PolicyError, match="UTF-8"):
        parse_policy(b"\xff\xfe")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("threshold: 1.5", "policy field 'threshold': Input should be less than or equal to 1"),
        ("threshold: -0.1", "policy field 'threshold': Input should be greater than or equal to 0"),
        ("threshold: .nan", "policy field 'threshold':"),
        ("threshold: yes", "policy field 'threshold': Input should be a number, not a boolean"),
        ("temperature: 0", "policy field 'temperature': Input should be greater than 0"),
        ("score: confidence", "policy field 'score': Input should be 'max_prob', 'margin'"),
        ("scores_kind: softmax", "policy field 'scores_kind':"),
        ("class_thresholds: {-1: 0.5}", "policy field 'class_thresholds[-1] (key)'"),
        ("class_thresholds: {2: 1.5}", "policy field 'class_thresholds[2]': Input should be"),
        ("latency: {rtt_quantile: 1.0}", "policy field 'latency.rtt_quantile': Input should be"),
        ("latency: {default_budget_ms: 0}", "policy field 'latency.default_budget_ms':"),
        ("budget: {target_rate: 2}", "policy field 'budget.target_rate':"),
        ("budget: {step: 0}", "policy field 'budget.step':"),
        ("breaker: {failures_to_open: 0}", "policy field 'breaker.failures_to_open':"),
        ("shadow_rate: 1.01", "policy field 'shadow_rate':"),
        ("thresold: 0.5", "policy field 'thresold': unknown field"),
        ("latency: {budget_ms: 5}", "policy field 'latency.budget_ms': unknown field"),
        (
            "calibration_histogram: {edges: [0, 0.5, 0.5, 1], counts: [1, 2, 3]}",
            "policy field 'calibration_histogram.edges': edges must be strictly increasing",
        ),
        (
            "calibration_histogram: {edges: [0, 1], counts: [1, 2]}",
            "policy field 'calibration_histogram': counts has 2 entries but 2 edges make 1 bins",
        ),
        (
            "calibration_histogram: {edges: [0, 1], counts: [-1]}",
            "policy field 'calibration_histogram.counts[0]':",
        ),
    ],
)
def test_validation_errors_name_the_field(extra: str, message: str) -> None:
    """Each invalid field is reported as `policy field '<path>': <problem>`."""
    base = "name: digits\n" if extra.startswith("threshold:") else "name: digits\nthreshold: 0.5\n"
    text = base + extra + "\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert message in str(info.value)


def test_missing_field_is_named() -> None:
    """A document without a required field says which one is missing."""
    with pytest.raises(PolicyError) as info:
        parse_policy("name: digits\n")
    assert str(info.value) == "policy field 'threshold': required field is missing"


def test_several_problems_one_per_line_without_pydantic_noise() -> None:
    """Every problem gets its own line, and no pydantic URL or traceback text leaks."""
    with pytest.raises(PolicyError) as info:
        parse_policy("name: ''\nthreshold: 2\ntemperature: -1\nbogus: 1\n")
    error = info.value
    assert isinstance(error, ValueError)
    assert len(error.problems) == 4
    assert str(error).splitlines() == list(error.problems)
    assert all(line.startswith("policy field '") for line in error.problems)
    assert "errors.pydantic.dev" not in str(error)
    assert "validation error" not in str(error).lower()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [digits\n", "policy is not valid YAML (line"),
        ("name: digits\n  threshold: 0.5\n", "policy is not valid YAML"),
        ("- name: digits\n", "policy document must be a mapping of fields, not a list"),
        ("just words", "policy document must be a mapping of fields, not a str"),
        ("", "policy document is empty"),
        ("# only a comment\n", "policy document is empty"),
        ("name: a\nname: b\nthreshold: 0.5\n", "found duplicate key 'name'"),
        ('{"name": "a", "threshold": 0.5, "threshold": 0.6}', "duplicate key 'threshold'"),
    ],
)
def test_unreadable_documents(text: str, message: str) -> None:
    """Broken YAML, non-mapping documents and repeated keys are refused with a clear line."""
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert message in str(info.value)


def test_yaml_flow_mapping_starting_with_brace() -> None:
    """A YAML flow mapping (not JSON) that starts with `{` still parses."""
    assert parse_policy("{name: digits, threshold: 0.3}").threshold == 0.3


def test_threshold_for_uses_class_thresholds() -> None:
    """Per-row thresholds come from the predicted class when it has one, else the global."""
    policy = Policy(name="d", threshold=0.5, class_thresholds={1: 0.8, 4: 0.2})
    got = policy.threshold_for(np.array([0, 1, 4, -1, 9]))
    np.testing.assert_array_equal(got, [0.5, 0.8, 0.2, 0.5, 0.5])
    assert got.dtype == np.float64


def test_policy_is_frozen() -> None:
    """A policy cannot be changed in place once built."""
    policy = Policy(name="d", threshold=0.5)
    with pytest.raises(ValidationError):
        policy.threshold = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    "model",
    [
        Policy,
        LatencyPolicy,
        BudgetPolicy,
        BreakerPolicy,
        ScoreHistogram,
        Provenance,
    ],
)
def test_every_field_is_documented(model: type[BaseModel]) -> None:
    """Every policy field carries a description, taken from the docstring under it."""
    undocumented = [name for name, field in model.model_fields.items() if not field.description]
    assert undocumented == []
