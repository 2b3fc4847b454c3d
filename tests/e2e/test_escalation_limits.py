"""Per-agent escalation limits at the gateway, as the agent and its apps see them."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from edgecloud.core import codec
from edgecloud.core.auth import call_metadata
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

TASK = "digits"
AGENT_TOKEN = "ag-secret-012345"
OPERATOR_TOKEN = "op-secret-012345"


def _request(x: np.ndarray, **params) -> object:
    return codec.encode_infer_request(InferRequest(model_name=TASK, inputs={"pixels": x},
                                                   parameters=params))


@pytest.mark.e2e
async def test_forced_cloud_requests_past_the_agents_limit_are_answered_at_the_edge(
        start_gateway, start_agent, channels, tmp_path, digits_test) -> None:
    """An app forcing route=cloud draws on its agent's escalation limit: past the burst the
    gateway refuses with RESOURCE_EXHAUSTED, the app still gets an answer (edge_fallback),
    and the agent counts the fallback by that reason; an operator is not limited."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"operators: [{OPERATOR_TOKEN}]\nagents: {{{AGENT_TOKEN}: agent-0}}\n")
    (tmp_path / "agent.token").write_text(AGENT_TOKEN)
    gateway = await start_gateway(tokens_file=tokens, escalation_limits={
        "default": {"rows_per_s": 0.001, "burst": 3}})
    agent = await start_agent(gateway.address, agent_id="agent-0", fleet=False,
                              upload_hard_examples=False, token_file=tmp_path / "agent.token")
    app = channels(agent.address)
    x, _ = digits_test
    routes = []
    for i in range(4):
        reply = codec.decode_infer_response(
            await app.ModelInfer(_request(x[i:i + 1], route="cloud"), timeout=5))
        routes.append(reply.parameters["route"])
    assert routes == ["cloud", "cloud", "cloud", "edge_fallback"]
    assert agent.service.metrics.fallbacks_by_reason(TASK) == {"resource_exhausted": 1}
    assert gateway.metrics.registry.get_sample_value("edgecloud_gateway_limited_rows_total") == 1

    async with grpc.aio.insecure_channel(gateway.address) as channel:
        cloud = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cloud.ModelInfer(_request(x[:1]), metadata=call_metadata(AGENT_TOKEN))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "agent agent-0 is over its escalation limit" in err.value.details()
        for _ in range(5):
            await cloud.ModelInfer(_request(x[:8]), metadata=call_metadata(OPERATOR_TOKEN))
