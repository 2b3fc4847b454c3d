"""The digits loop's training script: the small part, labels from an export, the retrain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from edgecloud.cloud_gateway.review import Label
from edgecloud.core.hard_examples import HardExample, InputRow, KeptExample
from edgecloud.dataset_export import export_examples
from edgecloud.examples import digits_loop
from edgecloud.examples.build_digits import CheckedSession, load_splits


def _record(seq: int, pixels: np.ndarray, cloud: np.ndarray | None) -> KeptExample:
    edge = np.full(10, 0.1)
    example = HardExample(
        task="digits", model_version="1", policy_version="1",
        inputs=(InputRow.of("pixels", pixels.reshape(1, 64).astype(np.float32)),),
        edge_scores=tuple(edge.tolist()),
        cloud_scores=None if cloud is None else tuple(cloud.tolist()),
        cloud_model_version="1" if cloud is not None else "",
        route="cloud" if cloud is not None else "edge_fallback",
        reason="low_confidence" if cloud is not None else "cloud_failed",
        confidence=0.1, at=1_700_000_000.0 + seq,
    )
    return KeptExample.new("agent-a", seq, example)


def _label(seq: int, label: int) -> Label:
    return Label(f"agent-a.{seq}", "agent-a", "digits", "", 0, label, "rita", 1.7e9)


def test_the_small_part_is_a_seeded_stratified_draw_of_the_training_split():
    """The same seed draws the same rows, every class is there equally, and every row is a
    row of the training split."""
    small = digits_loop.small_part(30, seed=0)
    again = digits_loop.small_part(30, seed=0)
    assert np.array_equal(small.X, again.X) and np.array_equal(small.y, again.y)
    assert np.bincount(small.y, minlength=10).tolist() == [3] * 10
    train = {row.tobytes() for row in load_splits()["train"].X}
    assert all(row.tobytes() in train for row in small.X)
    assert not np.array_equal(digits_loop.small_part(30, seed=1).X, small.X)
    with pytest.raises(ValueError, match="10 to 898 rows"):
        digits_loop.small_part(5)


def test_labels_come_from_the_reviewer_then_the_cloud(tmp_path):
    """A row of an export is labelled by its reviewer's label (from an export of the
    labelled rows), else the cloud's answer; a row with neither is left out and counted."""
    rng = np.random.default_rng(0)
    pixels = rng.random((2, 64)).astype(np.float32)
    cloud = np.zeros(10)
    cloud[7] = 1.0
    export_examples([_record(1, pixels[0], cloud), _record(2, pixels[1], None)], tmp_path)
    rows = digits_loop.labelled_rows(tmp_path)
    assert (rows.by_reviewer, rows.by_cloud, rows.unlabelled, rows.exported) == (0, 1, 1, 2)
    assert rows.y.tolist() == [7]
    assert np.array_equal(rows.X, pixels[:1])
    reviewed = tmp_path / "reviewed"
    export_examples([_record(1, pixels[0], cloud), _record(2, pixels[1], None)], reviewed,
                    {_record(2, pixels[1], None).record_id: _label(2, 4)})
    both = digits_loop.labelled_rows(tmp_path, reviewed)
    assert (both.by_reviewer, both.by_cloud, both.unlabelled) == (1, 1, 0)
    assert both.y.tolist() == [7, 4]
    assert digits_loop.label_of({"label": 3, "cloud_class": 7}) == (3, "reviewer")
    assert digits_loop.label_of({"label": None, "cloud_class": 7}) == (7, "cloud")
    assert digits_loop.label_of({"cloud_class": None}) == (None, "none")


def test_the_retrained_model_has_the_task_signature_and_counts_its_rows(tmp_path):
    """The retrained model is a pixels → probabilities ONNX model fitted on the small part
    plus the labelled rows."""
    small = digits_loop.small_part(20)
    test = load_splits()["test"]
    labelled = digits_loop.LabelledRows(test.X[:40], test.y[:40], by_reviewer=25, by_cloud=15,
                                        unlabelled=3)
    model = digits_loop.retrain(small, labelled)
    assert (model.rows, model.labelled_rows) == (60, 40)
    probabilities = CheckedSession(model.onnx).probabilities(test.X[:5])
    assert probabilities.shape == (5, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_the_script_refuses_a_folder_that_is_no_export(tmp_path):
    """`retrain` on a folder without an export says so with exit code 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.examples.digits_loop", "retrain",
         "--export", str(tmp_path / "missing"), "--out", str(tmp_path / "edge.onnx")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "is not an examples export" in result.stderr
    assert "Traceback" not in result.stderr
    assert not Path(tmp_path / "edge.onnx").exists()
