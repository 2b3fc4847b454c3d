"""Tests for confidence scores, probabilities from logits, and temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecloud.router import scores
from edgecloud.router.policy import Policy, ScoreName, ScoresKind
from edgecloud.router.scores import (
    Entropy,
    Margin,
    MaxProb,
    Score,
    available_scores,
    get_score,
    register_score,
    score_rows,
    select_class_scores,
    to_probabilities,
)


def make_policy(score: str = "margin", kind: str = "probabilities", **fields: object) -> Policy:
    return Policy(name="t", threshold=0.5, score=score, scores_kind=kind, **fields)


@pytest.mark.parametrize(
    ("score", "probs", "expected"),
    [
        (MaxProb(), [0.7, 0.2, 0.1], 0.7),
        (MaxProb(), [0.25, 0.25, 0.25, 0.25], 0.25),
        (Margin(), [0.7, 0.2, 0.1], 0.5),
        (Margin(), [0.1, 0.45, 0.45], 0.0),
        (Margin(), [0.0, 1.0, 0.0], 1.0),
        (Entropy(), [1.0, 0.0, 0.0, 0.0], 1.0),
        (Entropy(), [0.25, 0.25, 0.25, 0.25], 0.0),
        (Entropy(), [0.5, 0.5, 0.0, 0.0], 0.5),  # H = log 2, log K = log 4
        (Entropy(), [0.9, 0.1], 1.0 - (0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / -math.log(2)),
    ],
)
def test_scores_on_known_vectors(score: Score, probs: list[float], expected: float) -> None:
    """Each built-in score gives the hand-computed confidence on a known distribution."""
    got = score.confidence(np.array([probs]))
    assert got.dtype == np.float64
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["max_prob", "margin", "entropy"])
def test_single_class_is_fully_confident(name: str) -> None:
    """With one class (K = 1) every score gives confidence 1, for probabilities or logits."""
    for kind, values in (("probabilities", [[1.0], [1.0]]), ("logits", [[-3.0], [12.0]])):
        confidence, predicted = score_rows(make_policy(name, kind), np.array(values))
        np.testing.assert_array_equal(confidence, [1.0, 1.0])
        np.testing.assert_array_equal(predicted, [0, 0])


@pytest.mark.parametrize("name", ["max_prob", "margin", "entropy"])
def test_unusable_rows_get_zero_confidence(name: str) -> None:
    """NaN, infinite and all-zero rows get confidence 0 and class -1; good rows are unaffected."""
    values = np.array(
        [
            [0.8, 0.1, 0.1],
            [np.nan, 0.5, 0.5],
            [np.inf, 0.0, 0.0],
            [0.0, 0.0, 0.0],
        ]
    )
    confidence, predicted = score_rows(make_policy(name), values)
    assert confidence[0] > 0.0
    np.testing.assert_array_equal(confidence[1:], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(predicted, [0, -1, -1, -1])


def test_nan_logits_escalate() -> None:
    """A NaN logit makes the row's confidence 0, below any threshold but 0."""
    confidence, predicted = score_rows(
        make_policy("max_prob", "logits"), np.array([[np.nan, 1.0], [2.0, 1.0]])
    )
    assert confidence[0] == 0.0
    assert predicted[0] == -1
    assert confidence[1] == pytest.approx(1.0 / (1.0 + math.exp(-1.0)))


def test_softmax_of_logits_matches_probabilities() -> None:
    """Logits scored as logits give the same result as their softmax scored as probabilities."""
    logits = np.array([[2.0, 1.0, 0.1], [0.0, 0.0, 3.0]])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(to_probabilities(logits, ScoresKind.LOGITS), probs, rtol=1e-12)
    for name in ScoreName:
        from_logits = score_rows(make_policy(name, "logits"), logits)
        from_probs = score_rows(make_policy(name, "probabilities"), probs)
        np.testing.assert_allclose(from_logits[0], from_probs[0], rtol=1e-12)
        np.testing.assert_array_equal(from_logits[1], [0, 2])


def test_softmax_is_stable_for_huge_logits() -> None:
    """Logits in the thousands, and -inf entries, neither overflow nor produce NaN."""
    probs = to_probabilities(np.array([[1000.0, 999.0, -np.inf], [-5e4, -5e4, -5e4]]), "logits")
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), [1.0, 1.0])
    assert probs[0, 0] == pytest.approx(1.0 / (1.0 + math.exp(-1.0)))
    assert probs[0, 2] == 0.0
    np.testing.assert_allclose(probs[1], [1 / 3, 1 / 3, 1 / 3])


def test_probabilities_are_clipped_and_renormalised() -> None:
    """Slightly negative entries become 0 and rows are rescaled to sum to 1."""
    probs = to_probabilities(np.array([[0.6, 0.3, -0.01], [2.0, 2.0, 4.0]]), "probabilities")
    np.testing.assert_allclose(probs, [[2 / 3, 1 / 3, 0.0], [0.25, 0.25, 0.5]])


@pytest.mark.parametrize("temperature", [0.5, 2.0, 5.0])
def test_temperature_on_probabilities_equals_tempered_softmax(temperature: float) -> None:
    """p**(1/T) renormalised equals softmax(log p / T), the logits route with the same T."""
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    expected = p ** (1.0 / temperature)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(to_probabilities(p, "probabilities", temperature), expected)
    np.testing.assert_allclose(to_probabilities(np.log(p), "logits", temperature), expected)


def test_temperature_moves_confidence_the_expected_way() -> None:
    """A temperature above 1 lowers confidence, below 1 raises it, for every score."""
    p = np.array([[0.6, 0.3, 0.1]])
    for name in ScoreName:
        cool = score_rows(make_policy(name, temperature=0.5), p)[0][0]
        plain = score_rows(make_policy(name), p)[0][0]
        hot = score_rows(make_policy(name, temperature=3.0), p)[0][0]
        assert cool > plain > hot, name


def test_tiny_temperature_does_not_underflow() -> None:
    """A very small temperature sharpens to one-hot instead of dividing zero by zero."""
    probs = to_probabilities(np.array([[0.5, 0.3, 0.2]]), "probabilities", 1e-3)
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0]], atol=1e-12)


def test_bad_temperature_is_refused() -> None:
    """A temperature that is not a finite positive number raises ValueError."""
    for temperature in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            to_probabilities(np.ones((1, 2)), "logits", temperature)


def test_one_dimensional_scores_are_one_row() -> None:
    """A [K] array is scored as a single row."""
    confidence, predicted = score_rows(make_policy("max_prob"), np.array([0.1, 0.9]))
    np.testing.assert_allclose(confidence, [0.9])
    np.testing.assert_array_equal(predicted, [1])
    assert predicted.dtype == np.int64


@pytest.mark.parametrize("shape", [(), (2, 3, 4), (3, 0)])
def test_bad_shapes_are_refused(shape: tuple[int, ...]) -> None:
    """Scalars, 3-D arrays and zero classes raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="class scores"):
        score_rows(make_policy(), np.zeros(shape))


def test_zero_rows_give_empty_scores() -> None:
    """A [0, K] array (a request with no rows) gives empty confidence and class arrays."""
    confidence, predicted = score_rows(make_policy("max_prob"), np.zeros((0, 10)))
    assert confidence.shape == (0,) and confidence.dtype == np.float64
    assert predicted.shape == (0,) and predicted.dtype == np.int64


def test_confidence_stays_in_unit_interval() -> None:
    """On random logits at many temperatures every score stays within [0, 1]."""
    rng = np.random.default_rng(7)
    logits = rng.normal(scale=4.0, size=(500, 10))
    for name in ScoreName:
        for temperature in (0.1, 1.0, 10.0):
            confidence, _ = score_rows(make_policy(name, "logits", temperature=temperature), logits)
            assert confidence.min() >= 0.0
            assert confidence.max() <= 1.0


def test_registry_knows_builtins_and_names_them_on_a_miss() -> None:
    """Built-in scores are registered by name; an unknown name lists the known ones."""
    assert {"max_prob", "margin", "entropy"} <= set(available_scores())
    assert isinstance(get_score(ScoreName.MARGIN), Margin)
    with pytest.raises(ValueError, match=r"unknown confidence score 'nope'.*entropy, margin"):
        get_score("nope")


def test_plugin_scores_register(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new Score subclass can be registered and looked up; a taken name is refused."""
    monkeypatch.setattr(scores, "_REGISTRY", dict(scores._REGISTRY))  # undone after the test

    class MinProb(Score):
        name = "test_min_prob"

        def confidence(self, probs: np.ndarray) -> np.ndarray:
            return probs.min(axis=1)

    plugin = register_score(MinProb())
    assert get_score("test_min_prob") is plugin
    np.testing.assert_allclose(plugin.confidence(np.array([[0.3, 0.7]])), [0.3])
    with pytest.raises(ValueError, match="already registered"):
        register_score(MinProb())
    assert register_score(MinProb(), replace=True) is not plugin
    with pytest.raises(ValueError, match="already registered"):
        register_score(MaxProb())


def test_select_class_scores() -> None:
    """The policy's named output is picked; None picks the one float [N, C] array (a label
    tensor first, as skl2onnx exports, is passed over); a wrong name lists outputs."""
    outputs = {"label": np.array([3]), "probabilities": np.array([[0.1, 0.9]])}
    named = make_policy(scores_output="probabilities")
    assert select_class_scores(named, outputs) is outputs["probabilities"]
    assert select_class_scores(make_policy(), outputs) is outputs["probabilities"]
    with pytest.raises(ValueError, match="'label', 'probabilities'"):
        select_class_scores(make_policy(scores_output="logits"), outputs)
    with pytest.raises(ValueError, match="several"):
        select_class_scores(make_policy(), {**outputs, "logits": np.array([[1.0, 2.0]])})


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("score", ["max_prob", "margin", "entropy"])
def test_fast_path_agrees_with_the_general_path(temperature, score):
    """score_rows on well-formed probabilities gives what the general conversion gives."""
    from edgecloud.router import Policy, get_score, to_probabilities

    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(10) * 0.3, size=200).astype(np.float32)
    probs[0, :] = 0.0
    probs[0, 3] = 1.0
    policy = Policy(name="t", threshold=0.5, score=score, temperature=temperature)
    confidence, predicted = score_rows(policy, probs)
    reference = to_probabilities(probs, "probabilities", temperature)
    np.testing.assert_allclose(confidence, get_score(score).confidence(reference), atol=1e-9)
    np.testing.assert_array_equal(predicted, reference.argmax(axis=1))


@pytest.mark.parametrize("kind", ["probabilities", "logits"])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("score", ["max_prob", "margin", "entropy"])
def test_single_row_path_agrees_with_batches(kind, temperature, score):
    """Scoring rows one at a time (the plain-Python path) gives what a batch gives."""
    from edgecloud.router import Policy

    rng = np.random.default_rng(11)
    if kind == "probabilities":
        values = rng.dirichlet(np.ones(10) * 0.4, size=60)
        values[0] = 0.0
        values[0, 2] = 1.0
    else:
        values = rng.normal(0, 3, size=(60, 10))
    policy = Policy(name="t", threshold=0.5, score=score, temperature=temperature,
                    scores_kind=kind)
    batch_conf, batch_pred = score_rows(policy, values)
    for i in range(len(values)):
        conf, pred = score_rows(policy, values[i:i + 1])
        assert conf[0] == pytest.approx(batch_conf[i], abs=1e-9)
        assert pred[0] == batch_pred[i]


@pytest.mark.parametrize("score", [MaxProb(), Margin(), Entropy()], ids=lambda s: s.name)
def test_confidence_of_weights_is_confidence_of_the_normalised_row(score: Score) -> None:
    """Scoring unnormalised weights gives the confidence of the row they normalise to."""
    rng = np.random.default_rng(4)
    for k in (1, 2, 10):
        weights = (rng.random(k) * 7.0).tolist()
        total = math.fsum(weights)
        normalised = [w / total for w in weights]
        assert score.confidence_of_weights(weights, total) == pytest.approx(
            score.confidence_one(normalised), abs=1e-12)
