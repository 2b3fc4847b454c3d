"""The ``policy tune`` and ``policy show`` commands, end to end on the bundled digits files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgecloud.router import BudgetPolicy, Policy, dump_policy, parse_policy
from edgecloud.tune_cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tune_args(digits_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["policy", "tune", "--edge", str(digits_dir / "edge.onnx"),
            "--cloud", str(digits_dir / "cloud.onnx"),
            "--data", str(digits_dir / "calibration.npz"), "--out", str(out), "--task", "digits",
            *extra]


def test_tune_writes_policy_plot_and_table(digits_dir, tmp_path, capsys) -> None:
    """Tuning writes a valid policy and a PNG, and prints the operating-point table."""
    out, plot = tmp_path / "policy.yaml", tmp_path / "curve.png"
    code = main(_tune_args(digits_dir, out, "--plot", str(plot), "--name", "digits"))
    printed = capsys.readouterr().out
    assert code == 0
    policy = parse_policy(out.read_text())
    assert policy.name == "digits"
    assert policy.scores_output == "probabilities"
    assert policy.calibration_histogram is not None
    assert policy.calibration_histogram.total == 449
    assert "calibration.npz" in policy.provenance.data and policy.provenance.tuned_at
    assert plot.read_bytes().startswith(PNG_MAGIC)
    for fragment in ("edge only", "cloud only", "oracle", "margin ≤ 15%", "entropy ≤ 30%",
                     f"chosen: {policy.score}", "target_gap=0.005"):
        assert fragment in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "policy.yaml"]


def test_tune_keeps_the_base_policy(digits_dir, tmp_path, capsys) -> None:
    """With --base, the budget and name come from the base; the target decides the threshold."""
    base = tmp_path / "base.yaml"
    base.write_text(dump_policy(Policy(name="digits", threshold=0.4, shadow_rate=0.05,
                                       budget=BudgetPolicy(target_rate=0.12))))
    out = tmp_path / "policy.yaml"
    assert main(_tune_args(digits_dir, out, "--base", str(base),
                           "--target-escalation", "0.1")) == 0
    policy = parse_policy(out.read_text())
    assert policy.name == "digits"
    assert policy.budget.target_rate == 0.12 and policy.shadow_rate == 0.05
    assert policy.scores_output is None  # the base's "first output" is kept
    assert "target_escalation=0.1" in capsys.readouterr().out


def test_tune_overwrites_an_existing_policy(digits_dir, tmp_path, capsys) -> None:
    """An existing policy file is replaced whole, with no temporary file left behind."""
    out = tmp_path / "policy.yaml"
    out.write_text("old contents")
    assert main(_tune_args(digits_dir, out, "--target-gap", "0.02", "--confidence", "0.9")) == 0
    policy = parse_policy(out.read_text())
    assert "confidence 0.9" in policy.provenance.notes
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]


def test_tune_from_field_records(digits_dir, tmp_path, capsys) -> None:
    """Field records tune on agreement with the cloud, and the output says so."""
    sessions = {name: ort.InferenceSession(str(digits_dir / f"{name}.onnx"),
                                           providers=["CPUExecutionProvider"])
                for name in ("edge", "cloud")}
    with np.load(digits_dir / "test.npz") as data:
        x = data["X"]
    edge, cloud = (sessions[name].run(None, {"pixels": x})[0] for name in ("edge", "cloud"))
    field = tmp_path / "shadow.jsonl"
    field.write_text("".join(json.dumps({"edge": e.tolist(), "cloud": c.tolist()}) + "\n"
                             for e, c in zip(edge, cloud, strict=True)))
    out = tmp_path / "policy.yaml"
    code = main(["policy", "tune", "--field", str(field), "--out", str(out),
                 "--target-escalation", "0.1", "--name", "digits"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "agreement" in printed
    policy = parse_policy(out.read_text())
    assert "field data" in policy.provenance.notes
    assert "shadow.jsonl" in policy.provenance.data


def test_show_prints_the_fields_and_histogram(digits_dir, tmp_path, capsys) -> None:
    """show validates a tuned policy and prints its fields and calibration histogram."""
    out = tmp_path / "policy.yaml"
    assert main(_tune_args(digits_dir, out)) == 0
    capsys.readouterr()
    assert main(["policy", "show", str(out)]) == 0
    printed = capsys.readouterr().out
    for fragment in ("threshold", "temperature", "budget.max_shift", "provenance.data",
                     "calibration histogram", "449 scores"):
        assert fragment in printed


def _argmax_model(path: Path) -> Path:
    """A model whose only output is the class index [N], not class scores."""
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["pixels"], ["label"], axis=1, keepdims=0)], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    """Files that are wrong in one way each."""
    np.savez(tmp_path / "no_y.npz", X=np.zeros((4, 64), np.float32))
    np.savez(tmp_path / "mismatch.npz", X=np.zeros((4, 64), np.float32),
             y=np.zeros(5, np.int64))
    (tmp_path / "bad.jsonl").write_text('{"edge": [0.9, 0.1], "cloud": [0.2, 0.8]}\nnot json\n')
    (tmp_path / "bad_policy.yaml").write_text("name: digits\nthreshold: 1.7\n")
    return {"no_y": tmp_path / "no_y.npz", "mismatch": tmp_path / "mismatch.npz",
            "bad_jsonl": tmp_path / "bad.jsonl", "bad_policy": tmp_path / "bad_policy.yaml",
            "argmax": _argmax_model(tmp_path / "argmax.onnx"), "tmp": tmp_path}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--data", "{tmp}/missing.npz"], "does not exist"),
        (["--data", "{no_y}"], "no array 'y'"),
        (["--data", "{mismatch}"], "X has 4 rows; y has shape [5]"),
        (["--target-escalation", "1.5"], "--target-escalation must be between 0 and 1"),
        (["--target-escalation", "0.1", "--confidence", "0.9"], "--confidence certifies"),
        (["--target-gap", "0", "--confidence", "0.99"], "smallest gap this data can certify"),
        (["--edge", "{argmax}"], "no output that holds class scores"),
        (["--field", "{bad_jsonl}"], "line 2: not JSON"),
        (["--base", "{bad_policy}"], "threshold"),
        (["--out", "{tmp}/no/such/folder/p.yaml"], "does not exist"),
    ],
)
def test_bad_input_exits_2(args, fragment, bad_inputs, digits_dir, capsys) -> None:
    """Each mistake is one clear line on stderr and exit code 2."""
    flags = dict(zip(
        ["--edge", "--cloud", "--data", "--out", "--task"],
        [str(digits_dir / "edge.onnx"), str(digits_dir / "cloud.onnx"),
         str(digits_dir / "calibration.npz"), str(bad_inputs["tmp"] / "out.yaml"), "digits"],
        strict=True,
    ))
    given = [a.format(**bad_inputs) for a in args]
    for flag, value in zip(given[::2], given[1::2], strict=True):
        flags[flag] = value
    if "--field" in flags:
        del flags["--data"]
    argv = ["policy", "tune", *[item for pair in flags.items() for item in pair]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgecloud: error: ")
    assert fragment in err


def test_show_refuses_an_invalid_policy(bad_inputs, capsys) -> None:
    """show exits 2 with the policy error's text for an invalid file."""
    assert main(["policy", "show", str(bad_inputs["bad_policy"])]) == 2
    assert "policy field 'threshold'" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(digits_dir, tmp_path, monkeypatch,
                                                  capsys) -> None:
    """Asking for a plot without matplotlib installed exits 2 and says how to install it."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "policy.yaml"
    assert main(_tune_args(digits_dir, out, "--plot", str(tmp_path / "c.png"))) == 2
    assert "edgecloud[plot]" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap-on", "zipmap-off"])
def test_tune_finds_the_scores_of_sklearn_exports(zipmap, tmp_path, capsys) -> None:
    """skl2onnx exports (a label first, then probabilities as a ZipMap or a tensor) tune
    without naming the output, and the policy records the one that was chosen."""
    pytest.importorskip("skl2onnx")
    from sklearn_models import export, iris

    edge = export("logistic", tmp_path / "edge.onnx", zipmap=zipmap)
    cloud = export("forest", tmp_path / "cloud.onnx", zipmap=zipmap)
    x, y = iris()
    np.savez(tmp_path / "iris.npz", X=x, y=y)
    out = tmp_path / "policy.yaml"
    assert main(["policy", "tune", "--edge", str(edge), "--cloud", str(cloud), "--data",
                 str(tmp_path / "iris.npz"), "--out", str(out), "--name", "iris",
                 "--target-escalation", "0.3"]) == 0
    name = "output_probability" if zipmap else "probabilities"
    assert parse_policy(out.read_text()).scores_output == name
    assert f"edge class scores: output {name!r}" in capsys.readouterr().out


def test_tune_takes_a_named_scores_output(tmp_path, capsys) -> None:
    """--scores-output picks the edge output, which the policy then names; a name the
    model lacks is one clear error listing its outputs."""
    pytest.importorskip("skl2onnx")
    from sklearn_models import export, iris

    edge = export("logistic", tmp_path / "edge.onnx", zipmap=False)
    x, y = iris()
    np.savez(tmp_path / "iris.npz", X=x, y=y)
    args = ["policy", "tune", "--edge", str(edge), "--cloud", str(edge), "--data",
            str(tmp_path / "iris.npz"), "--out", str(tmp_path / "p.yaml"),
            "--target-escalation", "0.3", "--task", "iris"]
    assert main([*args, "--scores-output", "probabilities"]) == 0
    assert parse_policy((tmp_path / "p.yaml").read_text()).scores_output == "probabilities"
    capsys.readouterr()
    assert main([*args, "--scores-output", "label"]) == 2
    assert "output 'label' of --edge model is INT64[-1]" in capsys.readouterr().err


def test_tune_runs_a_batch_of_one_model_row_by_row(tmp_path, capsys) -> None:
    """A model exported with a batch dimension of 1 tunes without --chunk-rows (one row
    per run, said on the console); a --chunk-rows that cannot fit it is refused."""
    pytest.importorskip("skl2onnx")
    from sklearn_models import export, iris

    edge = export("logistic", tmp_path / "edge.onnx", zipmap=False, batch=1)
    cloud = export("forest", tmp_path / "cloud.onnx", zipmap=False)
    x, y = iris()
    np.savez(tmp_path / "iris.npz", X=x, y=y)
    args = ["policy", "tune", "--edge", str(edge), "--cloud", str(cloud), "--data",
            str(tmp_path / "iris.npz"), "--out", str(tmp_path / "p.yaml"),
            "--target-escalation", "0.3", "--task", "iris"]
    assert main(args) == 0
    assert "1 row per run (its fixed batch size)" in capsys.readouterr().out
    assert parse_policy((tmp_path / "p.yaml").read_text()).calibration_histogram.total == len(y)
    assert main([*args, "--chunk-rows", "64"]) == 2
    assert "takes exactly 1 row per run" in capsys.readouterr().err


def test_tune_needs_the_task_it_routes(digits_dir, tmp_path, capsys) -> None:
    """Without --task (or a --base naming one) tuning is refused with a message naming the
    flag, so a tuned policy never carries a made-up task name into `policy publish`."""
    args = [a for a in _tune_args(digits_dir, tmp_path / "p.yaml", "--target-escalation", "0.2")
            if a not in ("--task", "digits")]
    assert main(args) == 2
    assert "--task" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()
