"""Which output holds class scores (core.tensors)."""

from __future__ import annotations

import pytest

from edgecloud.core.errors import FailedPrecondition
from edgecloud.core.tensors import TensorSpec, class_scores_output

LABEL = TensorSpec("label", "INT64", (-1,))
PROBS = TensorSpec("probabilities", "FP32", (-1, 3))
LOGITS = TensorSpec("logits", "FP32", (-1, 3))


def test_the_one_float_matrix_output_is_chosen() -> None:
    """Without a name, the one float [N, C] output is chosen, wherever it stands."""
    assert class_scores_output((LABEL, PROBS), owner="model 'm'") == "probabilities"
    assert class_scores_output((PROBS,), owner="model 'm'") == "probabilities"


def test_a_named_output_must_hold_class_scores() -> None:
    """A named output is taken when it is a float [N, C] tensor, refused naming it otherwise."""
    assert class_scores_output((LOGITS, PROBS), "logits", owner="model 'm'") == "logits"
    with pytest.raises(FailedPrecondition, match=r"output 'label' of model 'm' is INT64\[-1\]"):
        class_scores_output((LABEL, PROBS), "label", owner="model 'm'")
    with pytest.raises(FailedPrecondition, match=r"has no output 'scores'.*'label' INT64"):
        class_scores_output((LABEL, PROBS), "scores", owner="model 'm'")


def test_no_or_several_candidates_are_refused_naming_the_outputs() -> None:
    """No float [N, C] output names the outputs found (and says to export without ZipMap
    for a map output); several name the candidates and how to pick one."""
    with pytest.raises(FailedPrecondition) as none:
        class_scores_output((LABEL,), owner="model 'm'",
                            skipped=(("output_probability", "seq(map(int64,tensor(float)))"),))
    assert "'label' INT64[-1]" in none.value.message
    assert "'output_probability' seq(map(int64,tensor(float)))" in none.value.message
    assert "zipmap off" in none.value.message and "'zipmap': False" in none.value.message
    with pytest.raises(FailedPrecondition, match=r"several.*'logits', 'probabilities'.*"
                       "--scores-output"):
        class_scores_output((LOGITS, PROBS), owner="model 'm'")

