"""The bundled ``digits`` example: an edge model, a cloud model, data splits and a policy.

The files live in the package folder :data:`DIGITS_DIR` and are rebuilt with
``python -m edgecloud.examples.build_digits`` (see that module for how they are made):

* ``edge.onnx`` / ``cloud.onnx`` — input ``pixels`` float32 ``[N, 64]``, output
  ``probabilities`` float32 ``[N, 10]``;
* ``calibration.npz`` / ``test.npz`` — ``X`` float32 ``[n, 64]`` (pixels in [0, 1]),
  ``y`` int64 ``[n]``;
* ``policy.yaml`` — the default margin-threshold routing policy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

DIGITS_DIR: Path = Path(__file__).resolve().parent / "digits"

FILES: tuple[str, ...] = ("edge.onnx", "cloud.onnx", "calibration.npz", "test.npz", "policy.yaml")

SPLITS: tuple[str, ...] = ("calibration", "test")

_REBUILD_HINT = "rebuild them with: python -m edgecloud.examples.build_digits"


def _bundled(name: str) -> Path:
    path = DIGITS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"bundled digits file {path} is missing; {_REBUILD_HINT}")
    return path


def write_example(out: Path) -> list[Path]:
    """Copy the bundled example files into ``out`` (created if needed) and return their paths.

    Existing files of the same names are overwritten. Raises :class:`NotADirectoryError` when
    ``out`` exists and is not a directory.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"cannot write the digits example into {out}: it exists and is not a directory"
        )
    sources = [_bundled(name) for name in FILES]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        target = out / source.name
        shutil.copyfile(source, target)
        written.append(target)
    return written


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(X, y)`` of the bundled ``"calibration"`` or ``"test"`` split."""
    if name not in SPLITS:
        raise ValueError(f"unknown digits split {name!r}; expected one of {', '.join(SPLITS)}")
    with np.load(_bundled(f"{name}.npz"), allow_pickle=False) as archive:
        X = archive["X"]
        y = archive["y"]
    return X, y
