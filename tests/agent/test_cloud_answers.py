"""The agent's data plane with a cloud that answers in a shape the task cannot use."""

from __future__ import annotations

import asyncio

import numpy as np

from edgecloud.core.errors import Unavailable
from edgecloud.core.model import OnnxModel
from edgecloud.core.tensors import InferRequest, InferResponse, ModelInfo
from edgecloud.edge_agent.service import EdgeService
from edgecloud.router import Policy

TASK = "digits"


class ElevenClassCloud:
    """A CloudClient whose metadata cannot be read (so nothing is checked) and whose
    answers score 11 classes."""

    def __init__(self) -> None:
        self.calls = 0
        self.never = asyncio.Event()

    async def infer(self, request: InferRequest, timeout_s: float,
                    request_id: str) -> InferResponse:
        self.calls += 1
        rows = next(iter(request.inputs.values())).shape[0]
        probabilities = np.full((rows, 11), 1.0 / 11, dtype=np.float32)
        return InferResponse(model_name=request.model_name, outputs={"p": probabilities},
                             model_version="1")

    async def metadata(self, model_name: str, timeout_s: float) -> ModelInfo:
        raise Unavailable("gateway: not reachable yet")

    async def reconnected(self) -> None:
        await self.never.wait()

    async def aclose(self) -> None:
        pass


async def test_an_unusable_cloud_answer_falls_back_and_never_fails(digits_dir, digits_test):
    """Before the cloud model could be checked, a cloud answer of the wrong width gives
    the edge answers (edge_fallback, cloud_failed) for a mixed batch, never an error."""
    cloud = ElevenClassCloud()
    service = EdgeService(cloud)
    model = OnnxModel.load(digits_dir / "edge.onnx", name=TASK)
    service.add_task(model, Policy(name=TASK, threshold=0.9))
    service.set_ready(True)
    await service.start()
    try:
        task = service.task(TASK)
        assert not task.cloud_checked and task.cloud_problem is None
        x, _ = digits_test
        answer = await service.answer(InferRequest(model_name=TASK, inputs={"pixels": x[:50]}),
                                      5.0)
        routes = {route.value for route in answer.routing.routes()}
        assert cloud.calls == 1 and routes == {"edge", "edge_fallback"}
        assert answer.outputs["probabilities"].shape == (50, 10)
        np.testing.assert_allclose(answer.outputs["probabilities"],
                                   model.run({"pixels": x[:50]})["probabilities"])
    finally:
        await service.aclose()


class RowCountingCloud(ElevenClassCloud):
    """A CloudClient that answers 10 classes (class = first pixel) and records each call's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    async def infer(self, request: InferRequest, timeout_s: float,
                    request_id: str) -> InferResponse:
        x = next(iter(request.inputs.values()))
        self.rows.append(int(x.shape[0]))
        probabilities = np.eye(10, dtype=np.float32)[x[:, 0].astype(int) % 10]
        return InferResponse(model_name=request.model_name, outputs={"p": probabilities},
                             model_version="7")


async def test_escalation_is_sent_in_parts_of_max_escalation_rows(digits_dir, digits_test):
    """A request escalating more rows than max_escalation_rows is sent as several calls of
    at most that many rows, and the answers come back in row order."""
    cloud = RowCountingCloud()
    service = EdgeService(cloud, max_escalation_rows=8)
    model = OnnxModel.load(digits_dir / "edge.onnx", name=TASK)
    service.add_task(model, Policy(name=TASK, threshold=0.9))
    service.set_ready(True)
    await service.start()
    try:
        x, _ = digits_test
        x = x[:50].copy()
        x[:, 0] = np.arange(50) % 10
        answer = await service.answer(InferRequest(model_name=TASK, inputs={"pixels": x},
                                                   parameters={"route": "cloud"}), 5.0)
    finally:
        await service.aclose()
    assert cloud.rows == [8, 8, 8, 8, 8, 8, 2]
    assert {route.value for route in answer.routing.routes()} == {"cloud"}
    np.testing.assert_array_equal(np.argmax(answer.scores, axis=1), np.arange(50) % 10)
    assert answer.cloud_model_version == "7"
