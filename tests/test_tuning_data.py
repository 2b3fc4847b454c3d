"""The tuner's data: class scores of both models in chunks, and shadow samples read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgecloud.core.errors import InvalidInput
from edgecloud.tuning_data import (
    check_classes,
    class_scores,
    load_scoring_model,
    read_field_records,
    scores_output,
)


def test_class_scores_run_in_chunks_and_match_the_model(
    digits_dir: Path, digits_test: tuple[np.ndarray, np.ndarray],
    onnx_reference: Callable[[str, np.ndarray], np.ndarray],
) -> None:
    """Scores over every row equal one direct run, and progress hears each chunk's rows."""
    x, y = digits_test
    model = load_scoring_model(digits_dir / "edge.onnx", "edge", "--edge")
    output = scores_output(model, "--edge", None)
    heard: list[int] = []
    scores = class_scores(model, x, output, role="edge", source="test.npz", chunk_rows=100,
                          advance=heard.append)
    np.testing.assert_allclose(scores, onnx_reference("edge", x), rtol=1e-6)
    assert sum(heard) == len(x) and max(heard) == 100
    check_classes(scores, scores, y, "--data test.npz")
    with pytest.raises(InvalidInput, match=r"y holds classes 0\.\.10"):
        check_classes(scores, scores, np.append(y[:-1], 10), "--data test.npz")


def test_scoring_model_problems_name_the_source(digits_dir: Path, tmp_path: Path) -> None:
    """A missing file or an unknown scores output is refused with the name it was given by."""
    with pytest.raises(InvalidInput, match=r"--edge: file .* does not exist"):
        load_scoring_model(tmp_path / "missing.onnx", "edge", "--edge")
    model = load_scoring_model(digits_dir / "cloud.onnx", "cloud", "--cloud")
    with pytest.raises(InvalidInput, match="--cloud model has no output 'logits'"):
        scores_output(model, "--cloud", "logits")


def test_field_records_are_read_and_ragged_lines_refused(tmp_path: Path) -> None:
    """Records come back as (edge, cloud) pairs; blank lines are skipped, bad lines named."""
    good = tmp_path / "shadow.jsonl"
    good.write_text(json.dumps({"edge": [0.9, 0.1], "cloud": [0.2, 0.8], "task": "t"})
                    + "\n\n" + json.dumps({"edge": [0.5, 0.5], "cloud": [1, 0]}) + "\n")
    assert read_field_records(good, "--field") == [([0.9, 0.1], [0.2, 0.8]),
                                                   ([0.5, 0.5], [1, 0])]
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text(json.dumps({"edge": [0.9, 0.1], "cloud": [0.2, 0.8]}) + "\n"
                      + json.dumps({"edge": [0.3, 0.3, 0.4], "cloud": [0.1, 0.1, 0.8]}) + "\n")
    with pytest.raises(InvalidInput, match="line 2: 3 classes, but earlier lines have 2"):
        read_field_records(ragged, "--field")
