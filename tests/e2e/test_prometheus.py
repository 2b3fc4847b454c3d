"""A real Prometheus scrapes the HTTP ports of a running gateway and agent and sees the
requests and escalations that were sent."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_server import prometheus, wait_for_values

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest

TASK = "digits"
ROWS = 40


@pytest.mark.e2e
async def test_prometheus_counts_requests_and_escalations(start_gateway, start_agent,
                                                          channels, digits_test, tmp_path):
    """Prometheus, scraping /metrics on each process's HTTP port every second, reports the
    agent's requests and rows by route, and the gateway's requests and rows, equal to what
    the app sent and how the agent answered it."""
    gateway = await start_gateway(http_listen="127.0.0.1:0")
    agent = await start_agent(gateway.address, http_listen="127.0.0.1:0")
    jobs = {"gateway": [gateway.http_address], "agent": [agent.http_address]}
    async with prometheus(tmp_path / "prometheus", jobs) as server:
        # Both targets scraped before any traffic: the counters are seen rising from zero.
        await wait_for_values(server, {'up{job="gateway"}': 1, 'up{job="agent"}': 1})
        stub = channels(agent.address)
        x, _ = digits_test
        routes: Counter[str] = Counter()
        for i in range(ROWS):
            request = codec.encode_infer_request(
                InferRequest(model_name=TASK, inputs={"pixels": x[i:i + 1]}))
            reply = codec.decode_infer_response(await stub.ModelInfer(request, timeout=5.0))
            routes[reply.parameters["route"]] += 1
        assert set(routes) == {"edge", "cloud"}, routes
        await wait_for_values(server, {
            f'edgecloud_agent_requests_total{{job="agent",task="{TASK}"}}': ROWS,
            f'sum(edgecloud_agent_rows_total{{job="agent",task="{TASK}",route="edge"}})':
                routes["edge"],
            f'sum(edgecloud_agent_rows_total{{job="agent",task="{TASK}",route="cloud"}})':
                routes["cloud"],
            f'edgecloud_gateway_requests_total{{job="gateway",model="{TASK}"}}':
                routes["cloud"],
            f'edgecloud_gateway_rows_total{{job="gateway",model="{TASK}"}}': routes["cloud"],
            f'edgecloud_agent_escalation_seconds_count{{job="agent",task="{TASK}"}}':
                routes["cloud"],
            'up{job="gateway"}': 1,
            'up{job="agent"}': 1,
        })
