"""Field tuning with reviewers' labels: a human label replaces the cloud's answer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecloud.core.errors import InvalidInput
from edgecloud.router import TuningTarget, field_arrays, tune_from_field
from edgecloud.tuning_data import read_field_records


def _records(n: int, labelled: int) -> list[tuple]:
    rng = np.random.default_rng(0)
    out: list[tuple] = []
    for i in range(n):
        edge, cloud = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(4))
        pair = (edge.tolist(), cloud.tolist())
        out.append((*pair, (int(cloud.argmax()) + 1) % 4) if i < labelled else pair)
    return out


def test_labels_replace_the_clouds_answer_where_given():
    """y is the reviewer's label on labelled rows and the cloud's argmax elsewhere; a label
    outside the classes is refused."""
    records = _records(6, 2)
    _, cloud, y = field_arrays(records)
    assert y.tolist()[:2] == [records[0][2], records[1][2]]
    assert y.tolist()[2:] == cloud.argmax(axis=1).tolist()[2:]
    with pytest.raises(ValueError, match="not one of the 2 classes"):
        field_arrays([([0.5, 0.5], [0.4, 0.6], 2)])


def test_the_report_counts_human_labels():
    """The report says how many rows carried human labels; all of them make the labels the
    truth (label source ``labels``), some of them leave it agreement with the cloud."""
    target = TuningTarget(kind="probabilities", target_escalation=0.5)
    _, some = tune_from_field(_records(200, 50), target)
    assert some.human_labels == 50 and some.label_source == "cloud"
    assert any("50 of 200 rows carry human labels" in note for note in some.notes)
    _, every = tune_from_field(_records(200, 200), target)
    assert every.human_labels == 200 and every.label_source == "labels"


def test_export_index_lines_are_field_records(tmp_path):
    """An index line of examples export --labelled reads as a field record with its label;
    one with a label outside the classes, or without a cloud answer, is refused."""
    path = tmp_path / "index.jsonl"
    path.write_text(json.dumps({"edge_scores": [0.9, 0.1], "cloud_scores": [0.3, 0.7],
                                "label": 0, "reviewer": "rita"}) + "\n")
    assert read_field_records(path, "--field") == [([0.9, 0.1], [0.3, 0.7], 0)]
    for bad in ({"label": 2}, {"cloud_scores": None}):
        path.write_text(json.dumps({"edge_scores": [0.9, 0.1], "cloud_scores": [0.3, 0.7],
                                    **bad}) + "\n")
        with pytest.raises(InvalidInput):
            read_field_records(path, "--field")
