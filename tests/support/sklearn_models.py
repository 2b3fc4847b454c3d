"""scikit-learn models exported the way people export them (skl2onnx), on the iris data.

Small and fast: a logistic regression and a shallow random forest train in
milliseconds on iris's 150 rows. ``export`` writes the ONNX file as skl2onnx
makes it by default (``zipmap`` on: a label tensor and a sequence of
``{class: probability}`` maps) or with ``zipmap`` off (a label tensor and a
probability tensor), with the input name and batch dimension asked for.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def iris(classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Iris features (float32 [n, 4]) and labels (int64 [n]) of the first ``classes``
    classes, shuffled with a fixed seed."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    keep = y < classes
    x, y = x[keep].astype(np.float32), y[keep].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    return x[order], y[order]


def export(kind: str, path: Path, *, zipmap: bool = True, input_name: str = "X",
           batch: int | None = None, classes: int = 3) -> Path:
    """Train ``kind`` (``logistic`` or ``forest``) on iris and export it with skl2onnx.

    ``zipmap`` False asks for probabilities as a tensor; ``batch`` fixes the
    input's first dimension (None leaves it free); ``classes`` trains on the
    first that many classes.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = iris(classes)
    if kind == "logistic":
        model = LogisticRegression(max_iter=300)
    elif kind == "forest":
        model = RandomForestClassifier(n_estimators=8, max_depth=3, random_state=0)
    else:
        raise ValueError(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)
        onx = convert_sklearn(
            model,
            initial_types=[(input_name, FloatTensorType([batch, 4]))],
            options=None if zipmap else {id(model): {"zipmap": False}},
        )
    path.write_bytes(onx.SerializeToString())
    return path
