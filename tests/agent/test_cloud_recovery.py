"""The agent's data plane when the gateway goes away and comes back."""

from __future__ import annotations

import numpy as np
import pytest
from fleet_helpers import wait_until

from edgecloud.core.model import OnnxModel
from edgecloud.core.tensors import InferRequest
from edgecloud.edge_agent.grpc.cloud_client import GrpcCloudClient
from edgecloud.edge_agent.service import EdgeService
from edgecloud.router import BreakerPolicy, BreakerState, Policy

TASK = "digits"


class FrozenClock:
    """A clock that never moves: no backoff of the breaker can ever run out."""

    def __call__(self) -> float:
        return 1000.0


@pytest.mark.e2e
async def test_escalations_resume_when_the_gateway_connection_is_back(
        start_gateway, digits_dir, digits_test):
    """With the breaker open for good (a frozen clock, an hour's wait), the agent's
    reconnection to the restarted gateway alone makes the next forced escalation a probe
    that the cloud answers."""
    gateway = await start_gateway()
    address = gateway.address
    cloud = GrpcCloudClient(address)
    service = EdgeService(cloud, clock=FrozenClock(), rng=np.random.default_rng(0))
    policy = Policy(name=TASK, threshold=0.5,
                    breaker=BreakerPolicy(failures_to_open=1, half_open_after_s=3600.0))
    service.add_task(OnnxModel.load(digits_dir / "edge.onnx", name=TASK), policy)
    service.set_ready(True)
    await service.start()
    x, _ = digits_test
    request = InferRequest(model_name=TASK, inputs={"pixels": x[:1]},
                           parameters={"route": "cloud"})

    async def route() -> tuple[str, str]:
        answer = await service.answer(request, 5.0)
        return answer.routing.routes()[0].value, answer.routing.reasons()[0].value

    try:
        assert await route() == ("cloud", "forced")
        await gateway.stop(grace_s=0.1)
        assert await route() == ("edge_fallback", "cloud_failed")
        breaker = service.task(TASK).router.breaker
        assert breaker.state is BreakerState.OPEN
        assert await route() == ("edge", "cloud_unavailable")

        await start_gateway(listen=address)
        await wait_until(lambda: breaker.available(), what="the breaker to probe again")
        assert await route() == ("cloud", "forced")
        assert breaker.state is BreakerState.CLOSED
    finally:
        await service.aclose()
