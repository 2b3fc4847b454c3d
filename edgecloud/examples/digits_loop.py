"""One turn of the improvement loop on the digits example: a weak edge model, then its retrain.

``edgecloud demo --loop`` runs the whole turn through a real fleet; this module is the
example's own training script, the part an operator would write for their task:

* :func:`weak_edge` fits the first edge model on a small, seeded, class-stratified part of
  the digits training split (the split ``build_digits`` fits both bundled models on), so it
  starts clearly worse than the bundled one;
* :func:`labelled_rows` reads an ``edgecloud examples export`` folder and gives each hard
  row its training label: the reviewer's when a reviewer labelled it, else the cloud's
  answer when the cloud answered it; rows with neither are left out (and counted);
* :func:`retrain` fits the next edge model on the small part plus those rows.

Every model is the bundled edge model's kind (multinomial logistic regression), converted
with the same code as the bundled models, so it has the task's signature: ``pixels``
float32 ``[N, 64]`` → ``probabilities`` float32 ``[N, 10]``.

Run by hand (needs the ``examples`` extra: scikit-learn, skl2onnx, onnx)::

    python -m edgecloud.examples.digits_loop weak --out edge-v1.onnx
    edgecloud examples export --gateway HOST:PORT --task digits --out hard/
    edgecloud examples export --gateway HOST:PORT --task digits --labelled --out reviewed/
    python -m edgecloud.examples.digits_loop retrain --export hard/ --labelled reviewed/ \
        --out edge-v2.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecloud.examples import build_digits as digits
from edgecloud.examples.build_digits import Split

try:
    from sklearn.model_selection import train_test_split
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise SystemExit(
        f"digits_loop needs the 'examples' extra ({exc.name} is missing): "
        "pip install -e '.[examples]'"
    ) from exc

SMALL_ROWS = 30
"""Rows of the training split the first edge model sees (3 per class)."""
SMALL_SEED = 0
"""Seed of the draw of those rows."""
EXAMPLES_FILE = "examples.npz"
INDEX_FILE = "index.jsonl"


@dataclass(frozen=True)
class EdgeModel:
    """A fitted edge model, as the ONNX bytes the fleet runs, and what it was fitted on."""

    onnx: bytes
    rows: int
    """Training rows."""
    labelled_rows: int
    """Of those, rows that came back from the fleet (0 for the first model)."""


@dataclass(frozen=True)
class LabelledRows:
    """Exported hard rows with a training label each."""

    X: np.ndarray
    y: np.ndarray
    by_reviewer: int
    """Rows labelled by a reviewer."""
    by_cloud: int
    """Rows labelled with the cloud's answer (no reviewer's label)."""
    unlabelled: int
    """Exported rows with neither, left out."""

    @property
    def exported(self) -> int:
        """Rows in the export."""
        return self.by_reviewer + self.by_cloud + self.unlabelled


def small_part(rows: int = SMALL_ROWS, seed: int = SMALL_SEED) -> Split:
    """A seeded, class-stratified draw of ``rows`` rows of the digits training split."""
    train = digits.load_splits()["train"]
    if not digits.N_CLASSES <= rows <= len(train.y):
        raise ValueError(f"the small part must hold {digits.N_CLASSES} to {len(train.y)} rows, "
                         f"got {rows}")
    _, X, _, y = train_test_split(train.X, train.y, test_size=rows, stratify=train.y,
                                  random_state=seed)
    return Split(np.ascontiguousarray(X), np.ascontiguousarray(y))


def _fit(X: np.ndarray, y: np.ndarray, description: str) -> bytes:
    estimator = digits.fit_edge(Split(X, y))
    return digits.to_onnx(estimator, digits.EDGE_NAME, description).SerializeToString()


def weak_edge(small: Split) -> EdgeModel:
    """The first edge model: fitted on the small part only."""
    blob = _fit(small.X, small.y, f"digits edge model fitted on {len(small.y)} rows of the "
                "training split; input pixels float32 [N,64], output probabilities "
                "float32 [N,10].")
    return EdgeModel(blob, len(small.y), 0)


def retrain(small: Split, labelled: LabelledRows) -> EdgeModel:
    """The next edge model: fitted on the small part and the labelled hard rows."""
    X = np.concatenate([small.X, labelled.X.astype(np.float32, copy=False)])
    y = np.concatenate([small.y, labelled.y])
    blob = _fit(X, y, f"digits edge model fitted on {len(small.y)} rows of the training "
                f"split and {len(labelled.y)} hard rows labelled by the fleet's review; "
                "input pixels float32 [N,64], output probabilities float32 [N,10].")
    return EdgeModel(blob, len(y), len(labelled.y))


def label_of(line: dict) -> tuple[int | None, str]:
    """A row's training label from its export index line, and who gave it: the reviewer's
    label (``label``) when there is one, else the cloud's answer (``cloud_class``)."""
    label = line.get("label")
    if label is not None:
        return int(label), "reviewer"
    cloud = line.get("cloud_class")
    if cloud is not None:
        return int(cloud), "cloud"
    return None, "none"


def _read_export(folder: Path, input_name: str) -> tuple[list[dict], np.ndarray]:
    folder = Path(folder)
    try:
        lines = [json.loads(text) for text in
                 (folder / INDEX_FILE).read_text(encoding="utf-8").splitlines() if text]
        with np.load(folder / EXAMPLES_FILE, allow_pickle=False) as archive:
            X = archive[input_name] if lines else np.zeros((0, digits.N_FEATURES), np.float32)
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder} is not an examples export with input {input_name!r}: "
                         f"{exc}") from None
    if len(X) != len(lines):
        raise ValueError(f"{folder}: {len(X)} rows in {EXAMPLES_FILE} but {len(lines)} lines "
                         f"in {INDEX_FILE}")
    return lines, X


def labelled_rows(folder: Path, reviewed: Path | None = None,
                  input_name: str = digits.INPUT_NAME) -> LabelledRows:
    """The rows of an ``examples export`` folder that have a training label, with it.

    ``reviewed`` is an ``examples export --labelled`` folder: its reviewers' labels go to
    the rows of ``folder`` with the same record id. Raises ValueError when a folder is not
    such an export or its two files disagree.
    """
    lines, X = _read_export(folder, input_name)
    if reviewed is not None:
        given = {line["record_id"]: line["label"]
                 for line in _read_export(reviewed, input_name)[0]
                 if line.get("record_id") and line.get("label") is not None}
        lines = [{**line, "label": given[line["record_id"]]}
                 if line.get("record_id") in given else line for line in lines]
    keep, labels = [], []
    counts = {"reviewer": 0, "cloud": 0, "none": 0}
    for row, line in enumerate(lines):
        label, source = label_of(line)
        counts[source] += 1
        if label is not None and 0 <= label < digits.N_CLASSES:
            keep.append(row)
            labels.append(label)
    X = X.reshape(len(X), -1)[keep] if len(X) else X
    return LabelledRows(np.ascontiguousarray(X, dtype=np.float32),
                        np.asarray(labels, dtype=np.int64),
                        counts["reviewer"], counts["cloud"], counts["none"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgecloud.examples.digits_loop",
        description="Fit the digits loop's first edge model, or retrain it on an examples "
        "export.",
    )
    parser.add_argument("--rows", type=int, default=SMALL_ROWS, metavar="N",
                        help=f"rows of the training split in the small part (default "
                        f"{SMALL_ROWS})")
    parser.add_argument("--seed", type=int, default=SMALL_SEED, metavar="N",
                        help=f"seed of the small part's draw (default {SMALL_SEED})")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    weak = sub.add_parser("weak", help="fit the first edge model on the small part")
    weak.add_argument("--out", type=Path, required=True, metavar="FILE",
                      help="ONNX file to write")
    again = sub.add_parser("retrain", help="fit the next edge model on the small part and "
                           "the labelled rows of an examples export")
    again.add_argument("--export", type=Path, required=True, metavar="DIR",
                       help="folder written by `edgecloud examples export`")
    again.add_argument("--labelled", type=Path, default=None, metavar="DIR",
                       help="folder written by `edgecloud examples export --labelled`: its "
                       "reviewers' labels override the cloud's answers (default: none)")
    again.add_argument("--out", type=Path, required=True, metavar="FILE",
                       help="ONNX file to write")
    args = parser.parse_args(argv)
    try:
        small = small_part(args.rows, args.seed)
        if args.step == "weak":
            model = weak_edge(small)
        else:
            labelled = labelled_rows(args.export, args.labelled)
            model = retrain(small, labelled)
            print(f"{labelled.exported} exported rows: {labelled.by_reviewer} labelled by a "
                  f"reviewer, {labelled.by_cloud} by the cloud's answer, "
                  f"{labelled.unlabelled} left out")
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    try:
        args.out.write_bytes(model.onnx)
    except OSError as exc:
        parser.exit(2, f"{parser.prog}: error: cannot write {args.out}: {exc.strerror}\n")
    print(f"wrote {args.out}: edge model fitted on {model.rows} rows "
          f"({model.labelled_rows} from the fleet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
