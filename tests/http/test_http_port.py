"""The one HTTP port of agent and gateway: bound beside gRPC, /metrics served there."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from edgecloud.core.errors import InvalidInput
from edgecloud.core.process import read_port_file, write_port_file


async def _get(address: str, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{address}{path}") as response:
            return response.status, response.headers.get("Content-Type", ""), \
                await response.text()


async def test_gateway_and_agent_serve_metrics_on_their_http_port(start_gateway, start_agent):
    gateway = await start_gateway(http_listen="127.0.0.1:0")
    agent = await start_agent(gateway.address, http_listen="127.0.0.1:0")
    assert gateway.http_port and agent.http_port
    assert gateway.http_port != gateway.port and agent.http_port != agent.port
    status, content_type, body = await _get(gateway.http_address, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert "edgecloud_gateway" in body
    status, _, body = await _get(agent.http_address, "/metrics")
    assert status == 200 and "edgecloud_agent" in body
    status, content_type, body = await _get(agent.http_address, "/no-such-path")
    assert status == 404 and content_type.startswith("application/json")
    assert json.loads(body) == {"error": "no such path: /no-such-path"}
    async with aiohttp.ClientSession() as session:
        async with session.delete(f"http://{agent.http_address}/metrics") as response:
            assert response.status == 405 and "GET" in response.headers["Allow"]
            assert "DELETE is not allowed" in (await response.json())["error"]


async def test_without_http_listen_no_http_port(start_agent):
    agent = await start_agent(None)
    assert agent.http_port is None and agent.http_address is None


async def test_http_port_is_closed_after_stop(start_agent):
    agent = await start_agent(None, http_listen="127.0.0.1:0")
    address = agent.http_address
    await agent.stop(0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(address, "/metrics")


async def test_a_bad_http_address_is_refused_before_serving(start_agent):
    with pytest.raises(InvalidInput, match=r"HOST:PORT|port"):
        await start_agent(None, http_listen="nonsense")


def test_port_file_names_both_ports(tmp_path: Path):
    path = tmp_path / "x.port"
    write_port_file(path, "127.0.0.1", 5, "127.0.0.1:6")
    assert read_port_file(path) == ("127.0.0.1:5", "127.0.0.1:6")
    write_port_file(path, "127.0.0.1", 5)
    assert read_port_file(path) == ("127.0.0.1:5", None)
