"""Comparing two variants of a model: latency, top-1 agreement, accuracy, output differences.

Latency is the median of many ``run`` calls in this process, calls
alternating between the two models after a warmup, so that both see the
same machine state.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from edgecloud.core.errors import EdgecloudError, ModelFailure
from edgecloud.core.model import OnnxModel
from edgecloud.optimize.rows import BATCH_ROWS, fixed_batch

REPEATS = 300
"""Timed calls per model and batch size."""

WARMUP = 30
"""Untimed calls per model and batch size before the timed ones."""


def top1(model: OnnxModel, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """Top-1 class per row from the first output: argmax of ``[N, C>1]``, or labels ``[N]``."""
    array = outputs[model.outputs[0].name]
    if array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind in "fiu":
        return array.argmax(axis=1)
    if array.ndim == 1 and array.dtype.kind in "iuOSU":
        return array
    return None


def accuracy(classes: np.ndarray | None, y: np.ndarray | None) -> float | None:
    """Share of rows whose top-1 class is ``y``; None without labels or for text labels."""
    if classes is None or y is None or classes.dtype.kind not in "iu":
        return None
    return float(np.mean(classes == y))


def agreement(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Share of rows whose top-1 classes are equal; None when either has none."""
    if a is None or b is None:
        return None
    return float(np.mean(a == b))


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float | None:
    """Largest absolute difference over the float outputs of ``a``; None when it has none."""
    diffs = [
        float(np.max(np.abs(a[key].astype(np.float64) - b[key].astype(np.float64)), initial=0.0))
        for key in a
        if a[key].dtype.kind == "f"
    ]
    return max(diffs) if diffs else None


def latencies(
    original: OnnxModel, quantized: OnnxModel, name: str, X: np.ndarray, repeats: int
) -> dict[int, tuple[float, float]]:
    """Rows per call -> (original, quantized) median µs; calls alternate between the models.

    Calls carry 1 and :data:`BATCH_ROWS` rows, or the model's fixed batch size.
    Raises :class:`~core.errors.ModelFailure` when a call fails.
    """
    fixed = fixed_batch(original)
    sizes = (fixed,) if fixed is not None else (1, BATCH_ROWS)
    models = (original, quantized)
    figures: dict[int, tuple[float, float]] = {}
    for rows in sizes:
        x = np.ascontiguousarray(np.resize(X, (rows, *X.shape[1:])))
        feed = original.validate_inputs({name: x})
        samples: tuple[list[float], list[float]] = ([], [])
        try:
            for _ in range(WARMUP):
                for model in models:
                    model.run(feed, validated=True)
            for i in range(repeats):
                for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                    start = time.perf_counter_ns()
                    models[k].run(feed, validated=True)
                    samples[k].append((time.perf_counter_ns() - start) / 1000.0)
        except EdgecloudError as exc:
            raise ModelFailure(f"timing the models failed: {exc.message}") from None
        figures[rows] = (statistics.median(samples[0]), statistics.median(samples[1]))
    return figures
