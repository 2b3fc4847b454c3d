"""The bundled digits example for the benches: its files, and its test rows split the
way its edge policy splits them."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgecloud.core.model import OnnxModel
from edgecloud.examples.digits import write_example
from edgecloud.router import Policy, parse_policy, score_rows


class DigitsRows(NamedTuple):
    """The test split, and its rows the edge policy answers at the edge (confident) or
    escalates (unsure)."""

    x: np.ndarray
    confident: np.ndarray
    unsure: np.ndarray
    policy: Policy


def digits_rows(folder: Path) -> DigitsRows:
    """Write the bundled example into ``folder`` (edge.onnx, cloud.onnx, policy.yaml,
    test.npz, ...) and split its test rows by the edge model's confidence."""
    write_example(folder)
    with np.load(folder / "test.npz") as data:
        x = data["X"]
    policy = parse_policy((folder / "policy.yaml").read_text())
    model = OnnxModel.load(folder / "edge.onnx", name="digits")
    confidence, _ = score_rows(policy, model.run({"pixels": x})["probabilities"])
    sure = confidence >= policy.threshold
    return DigitsRows(x, x[sure], x[~sure], policy)
