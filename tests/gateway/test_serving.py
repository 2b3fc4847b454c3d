"""The gateway's data plane on its own: versions and the candidate's share of requests."""

from __future__ import annotations

import random

import numpy as np

from edgecloud.cloud_gateway.batching import BatchingConfig
from edgecloud.cloud_gateway.serving import GatewayService
from edgecloud.core.model import OnnxModel, RunTimer
from edgecloud.core.tensors import InferRequest


async def test_candidate_answers_its_share_of_requests(digits_dir) -> None:
    """With a candidate at 30%, requests that name no version go to either version as the
    injected generator draws (30% of draws below 0.3); a named version always gets that
    version; promoting the candidate keeps serving it alone."""
    rng = random.Random(7)
    draws = random.Random(7)
    service = GatewayService(BatchingConfig(), rng=rng)
    service.set_ready(True)
    stable = OnnxModel.load(digits_dir / "cloud.onnx", name="digits", version="1")
    candidate = OnnxModel.load(digits_dir / "edge.onnx", name="digits", version="2")
    service.add_model(stable)
    service.set_candidate(candidate, 30.0)
    x = np.zeros((1, 64), np.float32)
    got = [(await service.infer(InferRequest("digits", {"pixels": x}))).model_version
           for _ in range(200)]
    assert got == ["2" if draws.random() * 100 < 30 else "1" for _ in range(200)]
    assert {"1", "2"} == set(got)
    for version in ("1", "2"):
        reply = await service.infer(InferRequest("digits", {"pixels": x},
                                                 model_version=version))
        assert reply.model_version == version
    assert service.metadata("digits").versions == ("1", "2")
    service.add_model(candidate)
    assert service.serving() == {"digits": {"version": "2", "candidate": None,
                                            "percent": 0.0}}
    await service.aclose()


def test_run_timer_runs_inline_only_what_it_has_measured_as_cheap(digits_dir) -> None:
    """Before any run there is no estimate (nothing runs inline); after one, a request
    expected below the threshold runs, with the model's own answer, and one above it
    does not."""
    model = OnnxModel.load(digits_dir / "edge.onnx", name="digits", version="1")
    x = np.load(digits_dir / "test.npz")["X"][:4]
    timer = RunTimer(model)
    assert timer.run_if_below({"pixels": x}, 4, 1.0) is None
    expected = timer.run({"pixels": x})
    assert timer.per_row_s is not None and timer.per_row_s > 0
    got = timer.run_if_below({"pixels": x}, 4, 1.0)
    assert got is not None
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)
    assert timer.run_if_below({"pixels": x}, 4, timer.per_row_s) is None
