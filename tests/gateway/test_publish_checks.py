"""Publications that would fail on every request or at every swap are refused at publish."""

from __future__ import annotations

import json

import pytest
from fleet_helpers import digits_like_model, publish_model, publish_policy

from edgecloud.cloud_gateway.registry import Registry
from edgecloud.core.artifacts import build_model_manifest, canonical_json
from edgecloud.core.errors import FailedPrecondition, InvalidInput
from edgecloud.operations import RegistryOperator
from edgecloud.router import Policy, dump_policy

TASK = "digits"


def test_a_cloud_model_with_other_input_names_is_refused(tmp_path, digits_dir) -> None:
    """A cloud model whose input is named differently from the task's edge model is refused,
    saying which name to export it with; nothing is stored."""
    registry = tmp_path / "registry"
    publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1")
    renamed = digits_like_model(tmp_path / "renamed.onnx", "softmax", input_name="X")
    generation = Registry(registry).generation()
    with pytest.raises(FailedPrecondition) as refused:
        publish_model(registry, TASK, renamed, "cloud", version="1")
    assert "input 0 is named 'X' in this model but 'pixels' in the edge model version 1" in (
        refused.value.message)
    assert "export this model with the input name 'pixels'" in refused.value.message
    assert Registry(registry).generation() == generation
    assert not Registry(registry).model_versions(TASK, "cloud")


def test_a_policy_naming_an_output_the_model_lacks_is_refused(tmp_path, digits_dir) -> None:
    """A policy whose scores_output the task's edge model does not have is refused at
    publish with what to change, and so is an edge model lacking a published policy's."""
    registry = tmp_path / "registry"
    publish_model(registry, TASK, digits_dir / "edge.onnx", "edge", version="1")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(dump_policy(Policy(name=TASK, threshold=0.5, scores_output="logits")))
    with pytest.raises(FailedPrecondition) as refused:
        publish_policy(registry, wrong)
    message = refused.value.message
    assert "edge model digits version 1 has no output 'logits'" in message
    assert "'probabilities' FP32[-1, 10]" in message
    assert "set the policy's scores_output" in message
    assert not Registry(registry).policy_versions(TASK)

    right = tmp_path / "right.yaml"
    right.write_text(dump_policy(Policy(name=TASK, threshold=0.5, scores_output="probabilities")))
    publish_policy(registry, right)
    other = digits_like_model(tmp_path / "other.onnx", "softmax", output_name="scores")
    with pytest.raises(FailedPrecondition, match="has no output 'probabilities'"):
        publish_model(registry, TASK, other, "edge", version="2")


@pytest.mark.parametrize("name", ["x" * 300, "../policies", "digits/edge"])
def test_a_model_name_that_is_no_name_is_refused_before_it_names_a_path(tmp_path,
                                                                        name) -> None:
    """Listing or rolling out a model by a name no publication could have (too long, with a
    path in it) is INVALID_ARGUMENT naming it, never a file-system error."""
    registry = Registry(tmp_path / "registry")
    with pytest.raises(InvalidInput, match=r"model name .* is not valid"):
        registry.describe(name)
    with pytest.raises(InvalidInput, match=r"model name .* is not valid"):
        registry.set_rollout("promote", name, version="1")


def _with_text_sample(manifest_bytes: bytes) -> bytes:
    document = json.loads(manifest_bytes)
    sample = document["sample_input"][0]
    sample["data"] = ["not a number"] * len(sample["data"])
    return canonical_json(document)


def test_a_sample_tensor_that_is_not_numeric_is_refused(tmp_path, digits_dir) -> None:
    """A cloud manifest whose sample input holds text is refused at publish, saying so."""
    path = digits_dir / "cloud.onnx"
    manifest = build_model_manifest(path, name=TASK, version="1", target="cloud")
    with pytest.raises(InvalidInput, match="not a number"):
        RegistryOperator(tmp_path / "registry").publish_model(
            _with_text_sample(manifest.canonical()), b"", path, False)
    assert not Registry(tmp_path / "registry").model_versions(TASK, "cloud")


async def test_one_bad_cloud_artifact_never_stops_the_gateway(tmp_path, digits_dir,
                                                              start_gateway) -> None:
    """A stored cloud manifest with a text sample (written before samples were checked) is
    skipped: the gateway starts and serves the registry's other models."""
    registry = tmp_path / "registry"
    publish_model(registry, TASK, digits_dir / "cloud.onnx", "cloud", version="1")
    publish_model(registry, "other", digits_dir / "cloud.onnx", "cloud", version="1")
    stored = registry / "models" / "other" / "cloud" / "1.json"
    envelope = json.loads(stored.read_bytes())
    envelope["manifest"] = _with_text_sample(envelope["manifest"].encode()).decode()
    stored.write_text(json.dumps(envelope))
    gateway = await start_gateway(registry=str(registry), models={})
    assert gateway.service.model_names() == [TASK]
