"""``edgecloud demo --loop``: one turn of the improvement loop, run for real.

The demo starts a gateway and three agents as processes, streams the calibration split
through edge version 1, exports the hard rows, retrains, rolls version 2 out and streams
the test split. These tests pin that the turn completes and that its figures hang
together; whether the retrained model is better is a property of the data, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from edgecloud.demo_loop import escalation_for_gap


def _loop(tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "loop.json"
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud", "demo", "--loop", "--json", str(out)],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(out.read_text())


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_one_turn_of_the_loop_completes_and_its_figures_agree(tmp_path):
    """Version 1 answers every row before, version 2 every row after and runs on every
    agent; every hard row the agents marked reaches the export and the retrain, the rows
    in the review queue with the reviewer's labels; the printed table and the JSON agree,
    and each phase's escalation at equal accuracy is a point that meets its target."""
    result, figures = _loop(tmp_path)
    before, after = figures["before"], figures["after"]
    assert figures["edge_versions"] == {"before": "1", "after": "2"}
    assert before["model_versions"] == ["1"] and after["model_versions"] == ["2"]
    assert figures["agents_running"] == ["2", "2", "2"]
    assert before["errors"] == 0 and after["errors"] == 0
    assert (before["rows"], after["rows"]) == (449, 450)

    training = figures["training"]
    assert before["hard_rows"] > 0
    assert training["hard_rows_held"] >= before["hard_rows"]
    assert training["exported"] == training["hard_rows_held"]
    labelled = training["labelled_by_reviewer"] + training["labelled_by_cloud"]
    assert labelled + training["unlabelled"] == training["exported"]
    assert labelled > 0
    assert training["reviewed"] > 0  # the review queue got rows and the reviewer labelled them
    assert training["labelled_by_reviewer"] == training["reviewed"]
    assert training["exported_labelled"] == training["reviewed"]
    assert training["retrain_rows"] == training["small_rows"] + labelled

    for phase in (before, after):
        passes = phase["passes"]
        assert phase["edge_accuracy"] == passes["edge_only"]["accuracy"]
        assert phase["hybrid_accuracy"] == passes["hybrid"]["accuracy"]
        assert phase["escalation_rate"] == passes["hybrid"]["escalation_rate"]
        assert passes["edge_only"]["escalation_rate"] == 0.0
        assert passes["cloud_only"]["escalation_rate"] == 1.0
        same = phase["same_accuracy"]
        assert same["target_accuracy"] == pytest.approx(
            phase["cloud_accuracy"] - figures["target_gap"])
        assert same["hybrid_accuracy"] >= same["target_accuracy"] - 1e-9
        assert 0.0 <= same["escalation_rate"] <= 1.0

    stdout = result.stdout
    assert "edge v1 → hard rows reviewed → retrained → edge v2" in stdout
    need = (f"escalated {before['same_accuracy']['escalation_rate']:.1%} of inputs before the "
            f"loop and {after['same_accuracy']['escalation_rate']:.1%} after one turn")
    assert need in " ".join(stdout.split())
    assert f"{before['edge_accuracy'] * 100:.2f}" in stdout
    assert f"{after['edge_accuracy'] * 100:.2f}" in stdout


def test_escalation_for_gap_is_the_least_escalating_point_that_meets_the_target():
    """Rows escalate below the threshold; the point chosen is the one escalating fewest
    rows whose hybrid accuracy reaches cloud-only minus the gap."""
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    cloud = y.copy()
    cloud[9] = 0  # the cloud gets 9 of 10 right
    edge = y.copy()
    edge[[0, 1]] = 5  # the edge misses the two least confident rows
    confidence = np.linspace(0.1, 1.0, 10)
    exact = escalation_for_gap(confidence, edge, cloud, y, gap=0.0)
    assert exact["target_accuracy"] == pytest.approx(0.9)
    assert exact["escalation_rate"] == pytest.approx(0.1)  # row 0 to the cloud: 9/10
    assert exact["hybrid_accuracy"] == pytest.approx(0.9)
    assert exact["threshold"] == pytest.approx(confidence[1])
    above = escalation_for_gap(confidence, edge, cloud, y, gap=-0.1)
    # Both rows the edge misses escalate; the cloud's miss (row 9) stays at the edge.
    assert above["escalation_rate"] == pytest.approx(0.2)
    assert above["hybrid_accuracy"] == pytest.approx(1.0)
    looser = escalation_for_gap(confidence, edge, cloud, y, gap=0.1)
    assert looser["escalation_rate"] == 0.0  # the edge alone (8/10) meets 0.8
    unreachable = escalation_for_gap(confidence, edge, cloud, y, gap=-0.2)
    assert unreachable["escalation_rate"] == 1.0  # nothing meets 1.1: everything escalates


def test_without_the_examples_extra_the_loop_says_what_to_install():
    """Where scikit-learn cannot be imported, demo --loop exits 2 naming the extra to
    install, before it starts anything."""
    code = ("import sys; sys.modules['sklearn'] = None; from edgecloud.cli import main; "
            "sys.exit(main(['demo', '--loop']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "sklearn is missing" in result.stderr
    assert "pip install -e '.[examples]'" in result.stderr
    assert "Traceback" not in result.stderr
