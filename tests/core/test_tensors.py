"""Which output holds class scores, and when two models can serve one task (core.tensors)."""

from __future__ import annotations

import pytest

from edgecloud.core.errors import FailedPrecondition
from edgecloud.core.tensors import TensorSpec, class_scores_output, signature_mismatch

LABEL = TensorSpec("label", "INT64", (-1,))
PROBS = TensorSpec("probabilities", "FP32", (-1, 3))
LOGITS = TensorSpec("logits", "FP32", (-1, 3))
PIXELS = TensorSpec("pixels", "FP32", (-1, 64))


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


def test_input_names_must_agree_and_output_names_may_differ() -> None:
    """Inputs are sent by name, so a differing input name is a mismatch that says which
    name to export with; outputs map by position, so their names may differ."""
    renamed = TensorSpec("X", "FP32", (-1, 64))
    problem = signature_mismatch((PIXELS,), (PROBS,), (renamed,), (PROBS,),
                                 a="the edge model", b="the cloud model")
    assert problem is not None
    assert "input 0 is named 'X' in the cloud model but 'pixels' in the edge model" in problem
    assert "with the input name 'pixels'" in problem
    assert signature_mismatch((PIXELS,), (LABEL, PROBS), (PIXELS,),
                              (TensorSpec("output_label", "INT64", (-1,)),
                               TensorSpec("output_probability", "FP32", (-1, 3)))) is None


def test_a_different_class_count_is_named() -> None:
    """Two score outputs of different widths are reported as a class-count mismatch."""
    eleven = TensorSpec("probabilities", "FP32", (-1, 11))
    ten = TensorSpec("probabilities", "FP32", (-1, 10))
    problem = signature_mismatch((PIXELS,), (ten,), (PIXELS,), (eleven,), a="the edge model",
                                 b="the cloud model")
    assert problem == ("output 0 of the cloud model ('probabilities') has 11 classes, the edge "
                       "model ('probabilities') 10; both must score the same classes")
