"""Helpers for fleet tests: models built on the fly, publishing, waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecloud.core.artifacts import build_model_manifest, build_policy_manifest, sha256_file
from edgecloud.core.signing import load_private_key, sign
from edgecloud.operations import RegistryOperator


def digits_like_model(path: Path, kind: str, seed: int = 0, inputs: int = 64,
                      classes: int = 10, input_name: str = "pixels",
                      output_name: str = "probabilities") -> Path:
    """An ONNX model with the digits signature: pixels [N,inputs] -> probabilities [N,10].

    ``kind``: "softmax" (a valid random linear classifier), "nan" (NaN outputs), "crash"
    (fails at run time). ``classes``, ``input_name`` and ``output_name`` change the signature.
    """
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(inputs, classes)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", [input_name, "w"], ["logits"])]
    if kind == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    elif kind == "nan":
        nodes += [
            helper.make_node("Abs", ["logits"], ["a"]),
            helper.make_node("Neg", ["a"], ["b"]),
            helper.make_node("Sub", ["b", "one"], ["c"]),
            helper.make_node("Sqrt", ["c"], [output_name]),
        ]
    elif kind == "crash":
        # Gathers column 12 of 10: loads fine, fails when it runs.
        nodes.append(helper.make_node("Gather", ["logits", "bad_index"], [output_name],
                                      axis=1))
    else:
        raise ValueError(kind)
    inits = [w, numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array([*range(9), 12], np.int64), "bad_index")]
    graph = helper.make_graph(
        nodes, "digits_like",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def publish_model(registry: Path, name: str, path: Path, target: str, *, version: str,
                  key: Path | None = None, promote: bool = False,
                  describe_as: Path | None = None) -> dict:
    """Publish straight into a registry directory (as `models publish --registry`).

    ``describe_as`` builds the manifest from another model with the same signature (for a
    model that cannot even run on the publisher's machine), keeping ``path``'s digest.
    """
    manifest = build_model_manifest(describe_as or path, name=name, version=version,
                                    target=target)
    if describe_as is not None:
        digest, size = sha256_file(path)
        manifest = manifest.model_copy(update={"digest": digest, "size": size,
                                               "expected_output": []})
    data = manifest.canonical()
    signature = sign(load_private_key(key), data) if key else b""
    return RegistryOperator(registry).publish_model(data, signature, path, promote)


def publish_policy(registry: Path, path: Path, *, key: Path | None = None) -> dict:
    """Publish a policy file straight into a registry directory."""
    from edgecloud.router import parse_policy

    document = path.read_bytes()
    policy = parse_policy(document)
    manifest = build_policy_manifest(document, name=policy.name, version=policy.version)
    data = manifest.canonical()
    signature = sign(load_private_key(key), data) if key else b""
    return RegistryOperator(registry).publish_policy(data, signature, document)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0,
                     what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_version(agent, task: str = "digits") -> str | None:
    """The edge model version an in-process agent serves, or None."""
    try:
        return agent.service.task(task).current.model.version
    except Exception:
        return None
