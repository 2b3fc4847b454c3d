"""Reading labelled arrays from ``.npz`` files, with one set of clear errors.

Every command that takes data (``agent batch``, ``policy tune``, ``models
quantize``) reads it here: ``X`` (or a named input) and optional integer
labels ``y``, one per row.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgecloud.core.errors import InvalidInput


def read_npz(path: Path, what: str, *, x_keys: Sequence[str] = ("X",),
             require_y: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``(X, y)`` from an ``.npz`` archive; ``y`` is None when absent and not required.

    ``what`` names the source in messages (a flag such as ``--data``). Raises
    :class:`~core.errors.InvalidInput` for a missing file, a file that is not
    an archive, a missing array, no rows, a non-numeric ``X``, or labels that
    are not one integer per row.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{what}: file {path} does not exist")
    if not path.is_file():
        raise InvalidInput(f"{what}: {path} is not a file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise InvalidInput(f"{what}: {path} is not an .npz archive") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidInput(f"{what}: {path} is a single array, not an .npz archive "
                           f"(it needs {' or '.join(x_keys)})")
    with archive:
        held = ", ".join(archive.files) or "nothing"
        key = next((k for k in x_keys if k in archive.files), None)
        if key is None:
            raise InvalidInput(f"{what}: {path} has no array {x_keys[-1]} (it holds: {held})")
        if require_y and "y" not in archive.files:
            raise InvalidInput(f"{what}: {path} has no array 'y' (it holds: {held}); "
                               "it needs X and y (class indices)")
        try:
            x = archive[key]
            y = archive["y"] if "y" in archive.files else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            raise InvalidInput(f"{what}: {path} holds an unreadable or pickled array") from None
    if x.ndim == 0 or x.shape[0] == 0:
        raise InvalidInput(f"{what}: {key} in {path} has no rows (shape {list(x.shape)})")
    if x.dtype.kind not in "biuf":
        raise InvalidInput(f"{what}: {key} in {path} must be numeric, got dtype {x.dtype}")
    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise InvalidInput(
                f"{what}: y in {path} must be integer labels, one per row of {key} "
                f"({key} has {x.shape[0]} rows; y has shape {list(y.shape)})"
            )
        if y.dtype.kind not in "iu":
            if y.dtype.kind == "f" and np.isfinite(y).all() and (y % 1 == 0).all():
                y = y.astype(np.int64)
            else:
                raise InvalidInput(f"{what}: y in {path} must hold integer class indices, "
                                   f"got dtype {y.dtype}")
        y = y.astype(np.int64, copy=False)
    return x, y
