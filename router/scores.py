"""Confidence scores: how sure the edge model is about each row.

Every score is a *confidence* in [0, 1], higher meaning more confident, and
a row goes to the cloud when its confidence is below the threshold. Scores
are plug-ins behind one small interface, :class:`Score`, kept in a registry
by name, so other kinds of task can add their own.

Rows that cannot be scored (NaN or infinite inputs, all-zero probabilities)
get confidence 0, so they escalate, and predicted class -1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from edgecloud.router.policy import Policy, ScoresKind

__all__ = [
    "Entropy",
    "Margin",
    "MaxProb",
    "Score",
    "available_scores",
    "get_score",
    "register_score",
    "score_rows",
    "select_class_scores",
    "to_probabilities",
]


class Score(ABC):
    """A confidence score computed from class probabilities."""

    name: ClassVar[str]
    """The name a policy uses to pick this score."""

    @abstractmethod
    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """Confidence per row.

        ``probs`` is ``[N, K]`` float64 with rows that sum to 1 (rows that
        could not be scored are all NaN). Returns ``[N]`` float64 in [0, 1];
        a NaN row must give 0.
        """

    def confidence_one(self, probs: list[float]) -> float:
        """Confidence of one well-formed row given as a list (the single-row fast path).

        The default defers to :meth:`confidence`; built-in scores answer in
        plain Python, which is several times cheaper than numpy for one row.
        """
        return float(self.confidence(np.asarray([probs], dtype=np.float64))[0])

    def confidence_of_weights(self, weights: list[float], total: float) -> float:
        """:meth:`confidence_one` of ``[w / total for w in weights]`` (``total > 0``).

        The single-row path has unnormalised weights in hand; scores that
        can answer from them directly (the top one or two) skip the division.
        """
        scale = 1.0 / total
        return self.confidence_one([w * scale for w in weights])


def _finish(confidence: np.ndarray) -> np.ndarray:
    """Clip into [0, 1] and turn anything non-finite into 0."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.size and 0.0 <= confidence.min() and confidence.max() <= 1.0:
        return confidence  # the usual case: in range (and so no NaN or infinity)
    finite = np.isfinite(confidence)
    out = np.minimum(np.maximum(confidence, 0.0), 1.0)
    if not finite.all():
        out[~finite] = 0.0
    return out


class MaxProb(Score):
    """The top class probability."""

    name = "max_prob"

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return _finish(probs.max(axis=1))

    def confidence_one(self, probs: list[float]) -> float:
        return max(probs)

    def confidence_of_weights(self, weights: list[float], total: float) -> float:
        return max(weights) / total


class Margin(Score):
    """Top-1 probability minus top-2 probability (top-1 alone when there is one class)."""

    name = "margin"

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        k = probs.shape[1]
        if k == 1:
            return _finish(probs[:, 0])
        top_two = np.partition(probs, k - 2, axis=1)[:, k - 2 :]
        return _finish(top_two[:, 1] - top_two[:, 0])

    def confidence_of_weights(self, weights: list[float], total: float) -> float:
        if len(weights) == 1:
            return weights[0] / total
        ranked = sorted(weights)
        return (ranked[-1] - ranked[-2]) / total

    def confidence_one(self, probs: list[float]) -> float:
        if len(probs) == 1:
            return probs[0]
        first = second = -1.0
        for p in probs:
            if p > first:
                first, second = p, first
            elif p > second:
                second = p
        return first - second


class Entropy(Score):
    """One minus the normalised Shannon entropy, 1 − H(p)/log K (1 when there is one class)."""

    name = "entropy"

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        k = probs.shape[1]
        if k == 1:
            return _finish(np.where(np.isnan(probs[:, 0]), np.nan, 1.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(probs > 0.0, probs * np.log(probs), 0.0)
        # A NaN row has no positive entries, so restore its NaN by hand.
        entropy = np.where(np.isnan(probs).any(axis=1), np.nan, -terms.sum(axis=1))
        return _finish(1.0 - entropy / np.log(k))

    def confidence_one(self, probs: list[float]) -> float:
        if len(probs) == 1:
            return 1.0
        entropy = -sum(p * math.log(p) for p in probs if p > 0.0)
        return 1.0 - entropy / math.log(len(probs))


_REGISTRY: dict[str, Score] = {}


def register_score(score: Score, *, replace: bool = False) -> Score:
    """Add a score to the registry under ``score.name`` and return it.

    Registering a second score under a taken name raises ``ValueError``
    unless ``replace`` is true.
    """
    if not isinstance(score, Score):
        raise TypeError(f"expected a Score instance, got {type(score).__name__}")
    name = getattr(score, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{type(score).__name__} needs a non-empty class attribute 'name'")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a score named {name!r} is already registered")
    _REGISTRY[name] = score
    return score


def get_score(name: str) -> Score:
    """The registered score called ``name``; ``ValueError`` naming the known ones if none."""
    try:
        return _REGISTRY[str(name)]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown confidence score {str(name)!r}; known scores: {known}") from None


def available_scores() -> tuple[str, ...]:
    """Names of the registered scores, sorted."""
    return tuple(sorted(_REGISTRY))


for _builtin in (MaxProb(), Margin(), Entropy()):
    register_score(_builtin)


def _softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; rows with NaN or +inf, or all -inf, become NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        bad = np.isnan(z).any(axis=-1, keepdims=True) | np.isposinf(z).any(axis=-1, keepdims=True)
        top = np.max(np.where(bad, 0.0, z), axis=-1, keepdims=True)
        e = np.exp(np.where(bad, 0.0, z) - top)
        total = e.sum(axis=-1, keepdims=True)
        out = e / total
    return np.where(bad | ~np.isfinite(out).all(axis=-1, keepdims=True), np.nan, out)


def to_probabilities(
    values: np.ndarray, kind: ScoresKind | str, temperature: float = 1.0
) -> np.ndarray:
    """Class probabilities, over the last axis, from an edge model's class scores.

    Logits become ``softmax(values / T)``, computed stably. Probabilities are
    clipped at 0 and renormalised; with ``T != 1`` they become
    ``p**(1/T)`` renormalised, computed as ``softmax(log p / T)`` so that a
    small temperature does not underflow. Rows that cannot be turned into a
    distribution (NaN, +inf, all zero) come back as all NaN.
    """
    kind = ScoresKind(kind)
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError("class scores must have at least one dimension")
    if kind is ScoresKind.LOGITS:
        return _softmax(x / temperature)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.clip(x, 0.0, None)  # NaN stays NaN
        if temperature == 1.0:
            total = p.sum(axis=-1, keepdims=True)
            out = p / total
            bad = ~np.isfinite(out).all(axis=-1, keepdims=True) | (total <= 0.0)
            return np.where(bad, np.nan, out)
        return _softmax(np.log(p) / temperature)


def select_class_scores(policy: Policy, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The edge model output that holds the class scores.

    ``outputs`` maps output names to arrays in the model's output order; the
    policy's ``scores_output`` names one, and ``None`` means the one output
    that is a float array of two dimensions (``[N, classes]``). ``ValueError``
    names the outputs when the named one is missing or, without a name, when
    no output or several have that form.
    """
    if not outputs:
        raise ValueError("the edge model produced no outputs")
    known = ", ".join(repr(name) for name in outputs)
    if policy.scores_output is None:
        fits = [name for name, value in outputs.items()
                if np.ndim(value) == 2 and np.asarray(value).dtype.kind == "f"]
        if len(fits) == 1:
            return outputs[fits[0]]
        raise ValueError(
            f"the policy names no scores output and {'several' if fits else 'none'} of the "
            f"edge model's outputs ({known}) is a float [N, classes] array; name one in "
            "scores_output"
        )
    try:
        return outputs[policy.scores_output]
    except KeyError:
        raise ValueError(
            f"policy names scores output {policy.scores_output!r}, "
            f"but the edge model's outputs are {known}"
        ) from None


def _score_one(policy: Policy, row: list[float]) -> tuple[float, int] | None:
    """Confidence and class of one row, or None when it needs the careful path."""
    top = max(row)
    try:
        inv = 1.0 / policy.temperature
        if policy.scores_kind is ScoresKind.LOGITS:
            if not math.isfinite(top):
                return None
            exp = math.exp
            weights = [exp((v - top) * inv) for v in row]
        else:
            if not (min(row) >= 0.0 and 0.0 < top and math.isfinite(top)):
                return None
            weights = row if inv == 1.0 else [(v / top) ** inv for v in row]
        total = math.fsum(weights)
        if not (total > 0.0 and math.isfinite(total)):
            return None
    except (OverflowError, ValueError):
        return None
    value = _score_of(policy).confidence_of_weights(weights, total)
    if not math.isfinite(value):
        return None
    value = 0.0 if value < 0.0 else 1.0 if value > 1.0 else value
    # Each weight grows with its value, so the top value is the top probability.
    return value, row.index(top)


def _score_of(policy: Policy) -> Score:
    score = _REGISTRY.get(policy.score)
    return score if score is not None else get_score(policy.score)


_ONE_CLASS: dict[int, np.ndarray] = {}


def _one_class(predicted: int) -> np.ndarray:
    """A read-only ``[predicted]`` int64 array, made once per class."""
    array = _ONE_CLASS.get(predicted)
    if array is None:
        array = np.array([predicted], dtype=np.int64)
        array.flags.writeable = False
        _ONE_CLASS[predicted] = array
    return array


def score_rows(policy: Policy, class_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and predicted class per row.

    ``class_scores`` is ``[N, K]`` (or ``[K]`` for one row), holding
    probabilities or logits as the policy says. Returns ``(confidence[N]``
    float64 in [0, 1], ``predicted[N]`` int64). A row that cannot be scored
    gets confidence 0 and predicted class -1; no rows (``[0, K]``) give two
    empty arrays. Treat both arrays as read-only (a one-row answer shares its
    class array).
    """
    values = np.asarray(class_scores)
    shape = values.shape
    if len(shape) == 2 and shape[0] == 1 and shape[1] > 1:
        # One row (the usual device request): plain Python beats numpy here.
        one = _score_one(policy, values.tolist()[0])
        if one is not None:
            return np.array([one[0]]), _one_class(one[1])
    if values.ndim == 1:
        values = values[np.newaxis, :]
    if values.ndim != 2:
        raise ValueError(
            f"class scores must be [N, K] or [K], got an array of shape {values.shape}"
        )
    if values.shape[1] == 0:
        raise ValueError("class scores have no classes (K = 0)")
    if values.shape[0] == 0:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    if policy.scores_kind is ScoresKind.PROBABILITIES and values.shape[1] > 1:
        # Fast path for the usual case (well-formed probabilities): no error
        # states to silence, nothing to mask. With a temperature, p**(1/T)
        # renormalised equals softmax(log p / T). Every row's top value is
        # finite and positive and none is negative, so each sum is positive.
        probs = values.astype(np.float64)
        top = probs.max(axis=1)
        if probs.min() >= 0.0 and np.isfinite(top).all() and top.min() > 0.0:
            if policy.temperature != 1.0:
                probs /= top[:, np.newaxis]  # keeps the power in range
                probs **= 1.0 / policy.temperature
            total = probs.sum(axis=1)
            if np.isfinite(total).all():
                probs /= total[:, np.newaxis]
                confidence = _score_of(policy).confidence(probs)
                return confidence, probs.argmax(axis=1)
    probs = to_probabilities(values, policy.scores_kind, policy.temperature)
    unusable = np.isnan(probs).any(axis=1)
    confidence = _finish(get_score(policy.score).confidence(probs))
    confidence[unusable] = 0.0
    predicted = np.argmax(np.where(unusable[:, np.newaxis], 0.0, probs), axis=1).astype(np.int64)
    predicted[unusable] = -1
    return confidence, predicted
