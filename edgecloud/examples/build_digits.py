"""Rebuild the bundled ``digits`` example: two ONNX models, two data splits and a routing policy.

The example uses scikit-learn's bundled 8×8 handwritten digits (``sklearn.datasets.load_digits``,
1797 images, 10 classes); nothing is downloaded.

Data
    Pixels are scaled from 0..16 to [0, 1] and stored as float32 ``[n, 64]``; labels are int64.
    The samples are split, stratified by class and with a fixed seed, into

    * train        50 % (898 rows)  — fits both models, never shipped;
    * calibration  25 % (449 rows)  — picks the routing threshold (``calibration.npz``);
    * test         25 % (450 rows)  — held out, only checks the result (``test.npz``).

Models (both: input ``pixels`` float32 ``[N, 64]``, one output ``probabilities`` float32
``[N, 10]``, batch dimension ``N`` symbolic)

    * ``edge.onnx``  (``digits-edge``): multinomial logistic regression, 64×10 weights, about
      96 % test accuracy — cheap enough for any device.
    * ``cloud.onnx`` (``digits-cloud``): RBF support-vector classifier whose decision values
      are turned into probabilities by sigmoid calibration (5-fold, one model refitted on all
      training rows), about 99 % test accuracy — several hundred support vectors, so clearly
      more expensive per row.

    skl2onnx's ZipMap is disabled and its ``label`` output removed (with the graph nodes that
    only fed it), so each model has the single ``probabilities`` output.

Policy (``policy.yaml``)
    Made by the router's tuner (``router.tune``) on the calibration split: the margin score
    (top-1 minus top-2 probability) after a temperature fitted by likelihood, and the least
    escalating threshold whose hybrid accuracy is within 0.3 points of cloud-only accuracy;
    the policy carries the calibration score histogram for drift checks. The build then
    checks on the test split that hybrid accuracy is within 0.5 points of cloud-only accuracy
    and that at most 15 % of rows escalate, and it fails
    (exit status 1, nothing written) when that or any other check does not hold.

All figures are computed from the ONNX models as run by onnxruntime, i.e. what the router sees.
Every step is seeded, and the ``.npz`` archives are written with fixed zip timestamps, so a
rebuild with the same library versions gives the same files.

Rebuild (needs the ``examples`` extra: scikit-learn, skl2onnx, onnx)::

    pip install -e '.[examples]'
    python -m edgecloud.examples.build_digits            # writes edgecloud/examples/digits/
    python -m edgecloud.examples.build_digits --out DIR  # writes somewhere else
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecloud.router import (
    Policy,
    Provenance,
    TuningTarget,
    dump_policy,
    parse_policy,
    score_rows,
    tune,
)

try:
    import onnx
    import skl2onnx
    import sklearn
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise SystemExit(
        f"build_digits needs the 'examples' extra ({exc.name} is missing): "
        "pip install -e '.[examples]'"
    ) from exc

DEFAULT_OUT = Path(__file__).resolve().parent / "digits"

INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
N_FEATURES = 64
N_CLASSES = 10
BATCH_DIM = "N"
OPSET = {"": 17, "ai.onnx.ml": 3}

SPLIT_SEED = 0
TRAIN_FRACTION = 0.5  # the rest is halved into calibration and test

EDGE_NAME = "digits-edge"
CLOUD_NAME = "digits-cloud"
EDGE_C = 2.0
CLOUD_C = 10.0
CLOUD_CV_FOLDS = 5

THRESHOLD_DECIMALS = 4
CALIBRATION_TOLERANCE = 0.003  # hybrid may trail cloud-only by this much on calibration
POLICY_TARGET_GAP = CALIBRATION_TOLERANCE
TEST_TOLERANCE = 0.005  # ... and by this much on test
MAX_TEST_ESCALATION = 0.15

EDGE_ACCURACY_RANGE = (0.95, 0.975)
MIN_CLOUD_ACCURACY = 0.985
MAX_FILE_BYTES = 5 * 1024 * 1024

# Fixed timestamp for zip members so that the archives are byte-for-byte reproducible.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


class BuildCheckError(RuntimeError):
    """A property the bundled example promises does not hold; nothing is written."""


@dataclass(frozen=True)
class Split:
    X: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Routing:
    edge_accuracy: float
    cloud_accuracy: float
    hybrid_accuracy: float
    escalation: float
    n: int


def load_splits() -> dict[str, Split]:
    """Stratified, seeded train / calibration / test split of the scaled digits."""
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, train_size=TRAIN_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    X_cal, X_test, y_cal, y_test = train_test_split(
        X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=SPLIT_SEED
    )
    return {
        "train": Split(np.ascontiguousarray(X_train), np.ascontiguousarray(y_train)),
        "calibration": Split(np.ascontiguousarray(X_cal), np.ascontiguousarray(y_cal)),
        "test": Split(np.ascontiguousarray(X_test), np.ascontiguousarray(y_test)),
    }


def fit_edge(train: Split) -> LogisticRegression:
    return LogisticRegression(C=EDGE_C, max_iter=5000, random_state=SPLIT_SEED).fit(
        train.X, train.y
    )


def fit_cloud(train: Split) -> CalibratedClassifierCV:
    svc = SVC(C=CLOUD_C, kernel="rbf", gamma="scale")
    model = CalibratedClassifierCV(svc, method="sigmoid", cv=CLOUD_CV_FOLDS, ensemble=False)
    return model.fit(train.X, train.y)


# --------------------------------------------------------------------------- ONNX


def _keep_only_output(model: onnx.ModelProto, keep: str) -> None:
    """Drop every graph output but ``keep``, then the nodes and initializers nothing uses."""
    graph = model.graph
    kept = [o for o in graph.output if o.name == keep]
    if len(kept) != 1:
        names = [o.name for o in graph.output]
        raise BuildCheckError(f"expected exactly one {keep!r} output, graph has {names}")
    del graph.output[:]
    graph.output.extend(kept)

    needed = {keep}
    live = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
    live.reverse()
    del graph.node[:]
    graph.node.extend(live)

    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _set_batch_dim(value_info: onnx.ValueInfoProto, width: int) -> None:
    shape = value_info.type.tensor_type.shape
    dims = list(shape.dim)
    if len(dims) != 2:
        raise BuildCheckError(f"{value_info.name}: expected a rank-2 tensor, got rank {len(dims)}")
    dims[0].Clear()
    dims[0].dim_param = BATCH_DIM
    dims[1].Clear()
    dims[1].dim_value = width


def _dedupe_opset_imports(model: onnx.ModelProto) -> None:
    """One entry per domain (the converter can list the default domain twice)."""
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    for domain in sorted(versions):
        model.opset_import.append(onnx.helper.make_opsetid(domain, versions[domain]))


def to_onnx(estimator, name: str, description: str) -> onnx.ModelProto:
    """Convert a fitted classifier to a ``pixels -> probabilities`` ONNX model."""
    with warnings.catch_warnings():
        # The SVM converter reads SVC.probA_/probB_ (empty here: probability=False), which
        # scikit-learn 1.9 flags as deprecated; the calibrated probabilities do not use them.
        warnings.filterwarnings("ignore", message=r"Attribute `prob[AB]_`", category=FutureWarning)
        model = convert_sklearn(
            estimator,
            name=name,
            initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
            options={id(estimator): {"zipmap": False}},
            target_opset=dict(OPSET),
        )
    _dedupe_opset_imports(model)
    _keep_only_output(model, OUTPUT_NAME)
    _set_batch_dim(model.graph.input[0], N_FEATURES)
    _set_batch_dim(model.graph.output[0], N_CLASSES)

    model.graph.name = name
    model.producer_name = "edgecloud.examples.build_digits"
    model.producer_version = "1"
    model.doc_string = description
    del model.metadata_props[:]
    onnx.helper.set_model_props(
        model,
        {
            "name": name,
            "dataset": "sklearn.datasets.load_digits (8x8, pixels / 16)",
            "classes": ",".join(str(c) for c in range(N_CLASSES)),
            "input": f"{INPUT_NAME} float32 [{BATCH_DIM},{N_FEATURES}]",
            "output": f"{OUTPUT_NAME} float32 [{BATCH_DIM},{N_CLASSES}] class probabilities",
            "estimator": repr(estimator),
            "converter": f"scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


class CheckedSession:
    """An onnxruntime session over serialized bytes, checked against the expected signature."""

    def __init__(self, blob: bytes, *, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            blob, sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        signature = (
            [(i.name, i.type, i.shape) for i in inputs],
            [(o.name, o.type, o.shape) for o in outputs],
        )
        expected = (
            [(INPUT_NAME, "tensor(float)", [BATCH_DIM, N_FEATURES])],
            [(OUTPUT_NAME, "tensor(float)", [BATCH_DIM, N_CLASSES])],
        )
        if signature != expected:
            raise BuildCheckError(f"onnxruntime signature {signature}, expected {expected}")
        self.signature = signature

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        (probs,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: X})
        return probs

    def latency_us(self, row: np.ndarray, repeats: int = 2000) -> float:
        """Median wall time of one batch-of-1 ``run`` call, in microseconds."""
        feed = {INPUT_NAME: row}
        for _ in range(200):
            self.session.run([OUTPUT_NAME], feed)
        samples = np.empty(repeats)
        for i in range(repeats):
            start = time.perf_counter_ns()
            self.session.run([OUTPUT_NAME], feed)
            samples[i] = time.perf_counter_ns() - start
        return float(np.median(samples) / 1000.0)


def check_matches_sklearn(name: str, estimator, model: CheckedSession, X: np.ndarray) -> None:
    expected = estimator.predict_proba(X)
    got = model.probabilities(X)
    if got.shape != expected.shape or got.dtype != np.float32:
        raise BuildCheckError(f"{name}: ONNX output {got.dtype}{got.shape}, expected float32")
    if not np.array_equal(got.argmax(axis=1), expected.argmax(axis=1)):
        raise BuildCheckError(f"{name}: ONNX argmax differs from scikit-learn")
    worst = float(np.abs(got - expected).max())
    if worst > 1e-4:
        raise BuildCheckError(f"{name}: ONNX probabilities differ from scikit-learn by {worst:g}")


# --------------------------------------------------------------------------- routing






def npz_bytes(X: np.ndarray, y: np.ndarray) -> bytes:
    """A ``np.load``-able archive with fixed member timestamps (reproducible bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in (("X", X), ("y", y)):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()




def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def tuned_policy(edge_cal: np.ndarray, cloud_cal: np.ndarray, y: np.ndarray) -> Policy:
    """The default policy: the tuner's margin policy within 0.3 points of cloud-only."""
    target = TuningTarget(
        kind="probabilities", target_gap=POLICY_TARGET_GAP, scores=("margin",), name="digits",
        provenance=Provenance(
            edge_model=EDGE_NAME, cloud_model=CLOUD_NAME,
            data=f"digits calibration split (n={len(y)})", tuned_at="build_digits",
            notes=f"router.tune, target gap {POLICY_TARGET_GAP}, margin score",
        ),
    )
    policy, _report = tune(edge_cal, cloud_cal, y, target)
    rounded = round(policy.threshold, THRESHOLD_DECIMALS)
    return policy.model_copy(update={"threshold": rounded,
                                     "temperature": round(policy.temperature, 4)})


def route_with(policy: Policy, edge_probs: np.ndarray, cloud_probs: np.ndarray,
               y: np.ndarray) -> Routing:
    """Accuracy and escalation when ``policy`` routes these rows."""
    confidence, _ = score_rows(policy, edge_probs)
    escalate = confidence < policy.threshold
    edge_pred = edge_probs.argmax(axis=1)
    cloud_pred = cloud_probs.argmax(axis=1)
    hybrid_pred = np.where(escalate, cloud_pred, edge_pred)
    return Routing(
        edge_accuracy=float(np.mean(edge_pred == y)),
        cloud_accuracy=float(np.mean(cloud_pred == y)),
        hybrid_accuracy=float(np.mean(hybrid_pred == y)),
        escalation=float(np.mean(escalate)),
        n=len(y),
    )


def build(out: Path) -> int:
    splits = load_splits()
    train, cal, test = splits["train"], splits["calibration"], splits["test"]
    print(
        f"split (seed {SPLIT_SEED}): train={len(train.y)} calibration={len(cal.y)} "
        f"test={len(test.y)}"
    )

    edge = fit_edge(train)
    cloud = fit_cloud(train)
    edge_onnx = to_onnx(
        edge,
        EDGE_NAME,
        "digits edge model: multinomial logistic regression on 8x8 digits scaled to [0, 1]; "
        "input pixels float32 [N,64], output probabilities float32 [N,10].",
    )
    cloud_onnx = to_onnx(
        cloud,
        CLOUD_NAME,
        "digits cloud model: RBF SVC with sigmoid-calibrated probabilities on 8x8 digits scaled "
        "to [0, 1]; input pixels float32 [N,64], output probabilities float32 [N,10].",
    )
    blobs = {
        "edge.onnx": edge_onnx.SerializeToString(),
        "cloud.onnx": cloud_onnx.SerializeToString(),
    }
    edge_rt = CheckedSession(blobs["edge.onnx"])
    cloud_rt = CheckedSession(blobs["cloud.onnx"])
    for split in (cal, test):
        check_matches_sklearn(EDGE_NAME, edge, edge_rt, split.X)
        check_matches_sklearn(CLOUD_NAME, cloud, cloud_rt, split.X)

    edge_cal, cloud_cal = edge_rt.probabilities(cal.X), cloud_rt.probabilities(cal.X)
    edge_test, cloud_test = edge_rt.probabilities(test.X), cloud_rt.probabilities(test.X)

    policy = tuned_policy(edge_cal, cloud_cal, cal.y)
    threshold = policy.threshold
    on_cal = route_with(policy, edge_cal, cloud_cal, cal.y)
    on_test = route_with(policy, edge_test, cloud_test, test.y)

    print(
        f"policy: {policy.score} (temperature {policy.temperature:.4f}) < "
        f"{threshold:.{THRESHOLD_DECIMALS}f} escalates"
    )
    print(f"{'split':<12} {'n':>4} {'edge':>8} {'cloud':>8} {'hybrid':>8} {'escalated':>10}")
    for name, r in (("calibration", on_cal), ("test", on_test)):
        print(
            f"{name:<12} {r.n:>4} {_pct(r.edge_accuracy):>8} {_pct(r.cloud_accuracy):>8} "
            f"{_pct(r.hybrid_accuracy):>8} {_pct(r.escalation):>10}"
        )

    failures = []
    lo, hi = EDGE_ACCURACY_RANGE
    if not lo <= on_test.edge_accuracy <= hi:
        failures.append(
            f"edge test accuracy {_pct(on_test.edge_accuracy)} not in [{_pct(lo)}, {_pct(hi)}]"
        )
    if on_test.cloud_accuracy < MIN_CLOUD_ACCURACY:
        failures.append(
            f"cloud test accuracy {_pct(on_test.cloud_accuracy)} < {_pct(MIN_CLOUD_ACCURACY)}"
        )
    gap = on_test.cloud_accuracy - on_test.hybrid_accuracy
    if gap > TEST_TOLERANCE + 1e-12:
        failures.append(
            f"test hybrid accuracy {_pct(on_test.hybrid_accuracy)} trails cloud-only "
            f"{_pct(on_test.cloud_accuracy)} by {100 * gap:.2f} points "
            f"(allowed {100 * TEST_TOLERANCE:.2f})"
        )
    if on_test.escalation > MAX_TEST_ESCALATION:
        failures.append(f"test escalation {_pct(on_test.escalation)} > {_pct(MAX_TEST_ESCALATION)}")

    files = dict(blobs)
    files["calibration.npz"] = npz_bytes(cal.X, cal.y)
    files["test.npz"] = npz_bytes(test.X, test.y)
    files["policy.yaml"] = dump_policy(policy).encode()
    if parse_policy(files["policy.yaml"]) != policy:
        raise BuildCheckError("policy.yaml does not round-trip")
    for name, blob in files.items():
        if len(blob) > MAX_FILE_BYTES:
            failures.append(f"{name} is {len(blob)} bytes (limit {MAX_FILE_BYTES})")

    if failures:
        raise BuildCheckError("; ".join(failures))

    out.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (out / name).write_bytes(blob)
        print(f"wrote {out / name} ({len(blob)} bytes)")

    for label, rt in (("edge", edge_rt), ("cloud", cloud_rt)):
        inputs, outputs = rt.signature
        print(f"{label} signature: inputs={inputs} outputs={outputs}")
    row = test.X[:1]
    edge_us, cloud_us = edge_rt.latency_us(row), cloud_rt.latency_us(row)
    print(f"latency, batch of 1, 1 thread, median: edge={edge_us:.1f} us cloud={cloud_us:.1f} us")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgecloud.examples.build_digits",
        description="Rebuild the bundled digits example (models, splits, routing policy).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT})",
    )
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    try:
        return build(args.out)
    except BuildCheckError as exc:
        print(f"build_digits: FAILED, nothing written: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
