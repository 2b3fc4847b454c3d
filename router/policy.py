"""The routing policy document.

A policy is a small, versioned pydantic document, written as YAML or JSON by
the tuner or by an operator, published through the registry and pushed to
every agent. It says how to turn the edge model's class scores into a
confidence (score, temperature), where to draw the line (global and per-class
thresholds), and how the run-time signals may bend that line (latency budget,
escalation-rate budget, circuit breaker, shadow sampling).

This module only parses and validates text; reading files is the caller's job.

Errors::

    ValueError
    └── PolicyError   (bad YAML/JSON, not a mapping, or a field failed validation)
"""

from __future__ import annotations

import itertools
import json
from enum import StrEnum
from typing import Annotated, Any

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "BreakerPolicy",
    "BudgetPolicy",
    "LatencyPolicy",
    "Policy",
    "PolicyError",
    "Provenance",
    "ScoreHistogram",
    "ScoreName",
    "ScoresKind",
    "TuningCurve",
    "dump_policy",
    "parse_policy",
]


class ScoreName(StrEnum):
    """The built-in confidence scores (see :mod:`router.scores`)."""

    MAX_PROB = "max_prob"
    MARGIN = "margin"
    ENTROPY = "entropy"


class ScoresKind(StrEnum):
    """What the edge model's class-score output holds."""

    PROBABILITIES = "probabilities"
    LOGITS = "logits"


def _no_bool(value: Any) -> Any:
    # YAML reads `yes`/`true` as booleans, and pydantic's lax mode would take
    # them as 1; a number field given a boolean is always a typo.
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


_NotBool = BeforeValidator(_no_bool)

Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False), _NotBool]
"""A finite number in [0, 1]."""

PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False), _NotBool]
"""A finite number > 0."""

PositiveInt = Annotated[int, Field(ge=1), _NotBool]
"""An integer >= 1."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LatencyPolicy(_Section):
    """How much time a request has, and how the cloud round trip is estimated."""

    default_budget_ms: PositiveFloat = 250.0
    """Latency budget in milliseconds for a request that carries no deadline of its own."""

    rtt_quantile: Annotated[float, Field(gt=0.0, lt=1.0), _NotBool] = 0.9
    """Quantile of recent cloud round trips taken as the expected round trip (0 < q < 1)."""

    rtt_window: PositiveInt = 200
    """How many recent cloud round trips the estimate is taken over."""


class BudgetPolicy(_Section):
    """An escalation-rate budget that lowers the threshold when too many rows go to the cloud.

    The tracker moves a threshold shift τ after every routed row by
    τ ← τ − step·(1[escalated] − target_rate), clipped to ±max_shift. A
    negative shift lowers the threshold (fewer escalations); a positive one is
    unused credit, which lets a short burst of hard inputs through before the
    budget starts to bite.
    """

    target_rate: Fraction | None = None
    """Target fraction of rows escalated to the cloud; null turns budget tracking off."""

    step: PositiveFloat = 0.01
    """Step size η of the threshold shift per observed row."""

    max_shift: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False), _NotBool] = 0.5
    """How far the tracker may move the threshold either way."""

    window: PositiveInt = 1000
    """How many recent rows the realised escalation rate is reported over."""


class BreakerPolicy(_Section):
    """Circuit breaker on the escalation path."""

    failures_to_open: PositiveInt = 5
    """Consecutive failed escalations that open the breaker (cloud treated as unavailable)."""

    half_open_after_s: PositiveFloat = 10.0
    """Longest wait, in seconds, of an open breaker before it lets one probe request through.

    The first probe goes out a fraction of a second after the breaker opens (at once
    when the agent's connection to the gateway is re-established); each failed probe
    doubles the wait, up to this."""


class ScoreHistogram(_Section):
    """A histogram of confidence scores (the calibration set's, or a window of live ones)."""

    edges: list[Annotated[float, Field(allow_inf_nan=False), _NotBool]]
    """Bin edges, strictly increasing, at least two."""

    counts: list[Annotated[int, Field(ge=0), _NotBool]]
    """Scores per bin; one fewer entry than edges."""

    @field_validator("edges")
    @classmethod
    def _edges_increase(cls, edges: list[float]) -> list[float]:
        if len(edges) < 2:
            raise ValueError("need at least two edges")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("edges must be strictly increasing")
        return edges

    @model_validator(mode="after")
    def _counts_match_edges(self) -> ScoreHistogram:
        if len(self.counts) != len(self.edges) - 1:
            raise ValueError(
                f"counts has {len(self.counts)} entries but {len(self.edges)} edges "
                f"make {len(self.edges) - 1} bins"
            )
        return self

    @property
    def total(self) -> int:
        """Number of scores counted."""
        return int(sum(self.counts))


MAX_CURVE_POINTS = 256
"""Most points a policy's stored tuning curve may hold (the tuner stores far fewer)."""


class TuningCurve(_Section):
    """The chosen score's operating curve on the tuning data, thinned for drawing.

    Point ``i`` says what threshold ``thresholds[i]`` did on the tuning data: the share
    of rows it escalated and the hybrid's accuracy (agreement with the cloud when the
    labels were the cloud's answers). Readers draw it; routing never reads it.
    """

    rows: PositiveInt
    """Rows tuned on."""

    labels: str = Field("labels", pattern="^(labels|cloud)$")
    """``labels`` (true labels) or ``cloud`` (field data: the cloud's answers stand in)."""

    edge_accuracy: Fraction
    """Accuracy of the edge model alone."""

    cloud_accuracy: Fraction
    """Accuracy of the cloud model alone."""

    thresholds: list[Annotated[float, Field(allow_inf_nan=False), _NotBool]] = Field(
        min_length=1, max_length=MAX_CURVE_POINTS)
    """Thresholds of the points, ascending."""

    escalation: list[Fraction] = Field(min_length=1, max_length=MAX_CURVE_POINTS)
    """Share of rows escalated at each threshold."""

    accuracy: list[Fraction] = Field(min_length=1, max_length=MAX_CURVE_POINTS)
    """Hybrid accuracy at each threshold."""

    @model_validator(mode="after")
    def _same_length(self) -> TuningCurve:
        if not len(self.thresholds) == len(self.escalation) == len(self.accuracy):
            raise ValueError(
                f"thresholds, escalation and accuracy must have one entry per point "
                f"(got {len(self.thresholds)}, {len(self.escalation)}, {len(self.accuracy)})"
            )
        if any(b < a for a, b in itertools.pairwise(self.thresholds)):
            raise ValueError("thresholds must be ascending")
        return self


class Provenance(_Section):
    """Where a policy came from; free text, for people."""

    edge_model: str = ""
    """Edge model name and version the policy was tuned for."""

    cloud_model: str = ""
    """Cloud model name and version the policy was tuned against."""

    data: str = ""
    """The calibration data set."""

    tuned_at: str = ""
    """When the policy was tuned (ISO 8601)."""

    notes: str = ""
    """Anything else worth knowing (the target the tuner met, who approved it)."""


class Policy(_Section):
    """A task's routing policy."""

    name: Annotated[str, Field(min_length=1)]
    """The task this policy routes (for example ``digits``)."""

    version: Annotated[str, Field(min_length=1)] = "1"
    """Policy version, as published in the registry."""

    score: ScoreName = ScoreName.MARGIN
    """Confidence score computed from the class probabilities."""

    temperature: PositiveFloat = 1.0
    """Temperature applied to the class scores before scoring (1 leaves them as they are)."""

    threshold: Fraction
    """Rows whose confidence is below this go to the cloud."""

    class_thresholds: dict[
        Annotated[int, Field(ge=0), _NotBool],
        Fraction,
    ] = Field(default_factory=dict)
    """Thresholds for particular classes, keyed by the edge model's predicted class."""

    scores_output: str | None = None
    """Name of the edge model output that holds the class scores; null means the model's one
    float [N, classes] output (a model with none or several needs the name)."""

    scores_kind: ScoresKind = ScoresKind.PROBABILITIES
    """Whether that output holds probabilities or logits (softmax is applied to logits)."""

    latency: LatencyPolicy = Field(default_factory=LatencyPolicy)
    """Latency budget and cloud round-trip estimate."""

    budget: BudgetPolicy = Field(default_factory=BudgetPolicy)
    """Escalation-rate budget."""

    breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    """Circuit breaker on the escalation path."""

    shadow_rate: Fraction = 0.0
    """Fraction of confident rows also sent to the cloud, to measure the edge model in the field."""

    review_threshold: Fraction | None = None
    """Rows the cloud answered with a confidence (the policy's score, on the cloud's class
    scores) below this go to the gateway's human review queue; null: no review."""

    calibration_histogram: ScoreHistogram | None = None
    """Confidence histogram of the calibration set, the reference for drift reports."""

    provenance: Provenance = Field(default_factory=Provenance)
    """Where the policy came from."""

    tuning_curve: TuningCurve | None = None
    """The chosen score's operating curve on the tuning data (the tuner writes it), for
    operators to see what the threshold trades; null for a policy written by hand."""

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        # `version: 2` in YAML is an int; take it as the string it was meant to be.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    def threshold_for(self, predicted: np.ndarray) -> np.ndarray:
        """Per-row thresholds: each row's predicted-class threshold, else the global one.

        ``predicted`` holds class indices (any integer shape); the result is a
        float64 array of the same shape. Classes without an entry (including
        the ``-1`` that :func:`router.scores.score_rows` gives unusable rows)
        get :attr:`threshold`.
        """
        classes = np.asarray(predicted)
        thresholds = np.full(classes.shape, self.threshold, dtype=np.float64)
        for cls, value in self.class_thresholds.items():
            thresholds[classes == cls] = value
        return thresholds


class PolicyError(ValueError):
    """A policy document could not be read or is not valid.

    ``problems`` holds one line per problem; ``str(error)`` joins them.
    """

    def __init__(self, problems: str | list[str] | tuple[str, ...]) -> None:
        lines = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("\n".join(lines))
        self.problems: tuple[str, ...] = lines


_FRIENDLY_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
}


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    is_key = False
    for item in loc:
        if item == "[key]":
            is_key = True
        elif isinstance(item, int):
            out += f"[{item}]"
        else:
            out += f".{item}" if out else str(item)
    return f"{out} (key)" if is_key else out


def _describe(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        message = _FRIENDLY_MESSAGES.get(item["type"], item["msg"])
        message = message.removeprefix("Value error, ")
        path = _format_loc(tuple(item["loc"]))
        if path:
            lines.append(f"policy field '{path}': {message}")
        else:
            lines.append(f"policy: {message}")
    return lines


MAX_FLOW_NESTING = 64
"""Deepest ``[``/``{`` nesting a YAML policy may have (a real one nests three deep); the
scanner is stopped there rather than after reading ahead through the whole document."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that refuses a key given twice in one mapping, and flow
    collections nested deeper than :data:`MAX_FLOW_NESTING`."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= MAX_FLOW_NESTING:
            raise yaml.scanner.ScannerError(
                None, None, f"collections nest deeper than {MAX_FLOW_NESTING} levels",
                self.get_mark())
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable key; the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PolicyError(f"policy is not valid JSON: duplicate key {key!r}")
        result[key] = value
    return result


def _load_document(text: str) -> Any:
    if text.lstrip().startswith("{"):
        # JSON is read as JSON first: PyYAML trips over some valid JSON (tabs, "\/").
        try:
            return json.loads(text, object_pairs_hook=_reject_duplicates)
        except json.JSONDecodeError:
            pass  # perhaps a YAML flow mapping; YAML reports the error if not
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = ", ".join(part for part in (exc.context, exc.problem) if part)
        problem = problem or "unreadable document"
        raise PolicyError(f"policy is not valid YAML{where}: {problem}") from None
    except yaml.YAMLError:
        raise PolicyError("policy is not valid YAML") from None


def parse_policy(text: str | bytes) -> Policy:
    """Parse and validate a policy from YAML or JSON text.

    Raises :class:`PolicyError` with one line per problem, each naming the
    field path (``policy field 'latency.rtt_quantile': ...``).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("policy is not UTF-8 text") from None
    try:
        document = _load_document(text)
    except RecursionError:
        raise PolicyError("policy document nests too deeply") from None
    if document is None:
        raise PolicyError("policy document is empty")
    if not isinstance(document, dict):
        raise PolicyError(
            f"policy document must be a mapping of fields, not a {type(document).__name__}"
        )
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(_describe(exc)) from None
    except RecursionError:
        raise PolicyError("policy document nests too deeply") from None


def dump_policy(policy: Policy) -> str:
    """Write a policy as YAML that :func:`parse_policy` reads back equal."""
    document = policy.model_dump(mode="json")
    # JSON mode turns the integer class keys into strings; YAML can keep them as numbers.
    document["class_thresholds"] = {
        int(cls): value for cls, value in policy.class_thresholds.items()
    }
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)
