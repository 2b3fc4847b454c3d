"""An agent whose gateway address stands for several replicas spreads its escalations over
all of them, round robin, and keeps escalating through the others when one dies."""

from __future__ import annotations

import signal
import socket
from collections import Counter

import aiohttp
import pytest
from processes import Process
from prometheus_client.parser import text_string_to_metric_families

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest

TASK = "digits"


async def gateway_requests(http_address: str) -> float:
    """The gateway's answered requests for the task, read from its /metrics."""
    async with aiohttp.ClientSession() as session, session.get(
            f"http://{http_address}/metrics") as response:
        text = await response.text()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "edgecloud_gateway_requests_total"
               and sample.labels.get("model") == TASK)


async def escalate(stub, x, n: int) -> Counter[str]:
    """Send ``n`` single rows forced to the cloud; how each was answered."""
    routes: Counter[str] = Counter()
    for i in range(n):
        request = codec.encode_infer_request(InferRequest(
            model_name=TASK, inputs={"pixels": x[i:i + 1]}, parameters={"route": "cloud"}))
        reply = codec.decode_infer_response(await stub.ModelInfer(request, timeout=5.0))
        routes[reply.parameters["route"]] += 1
    return routes


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.parametrize(("scheme", "loopback"), [("ipv4", "127.0.0.1"), ("ipv6", "[::1]")])
async def test_escalations_spread_over_every_listed_replica(scheme, loopback, processes,
                                                            start_agent, channels, digits_dir,
                                                            digits_test, tmp_path):
    """Given `ipv4:A,B` (or `ipv6:[A],[B]`), two gateway replicas on one registry, the
    agent's escalations reach both (each replica's request counter rises, together by what
    was escalated); with one replica SIGKILLed, escalations go on through the other, and no
    request fails."""
    if scheme == "ipv6" and not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    replicas = []
    for i in range(2):
        replica = Process(["gateway", "serve", "--listen", f"{loopback}:0",
                           "--http-listen", "127.0.0.1:0",
                           "--registry", str(tmp_path / "registry"),
                           "--data-dir", str(tmp_path / f"gateway-{i}"),
                           "--model", f"digits={digits_dir / 'cloud.onnx'}"],
                          tmp_path, f"gateway-{i}")
        processes.append(replica)
        replicas.append(replica)
    addresses = [await r.addresses() for r in replicas]
    target = f"{scheme}:" + ",".join(grpc_address for grpc_address, _ in addresses)
    agent = await start_agent(target)
    stub = channels(agent.address)
    x, _ = digits_test

    routes = await escalate(stub, x, 20)
    assert routes == {"cloud": 20}
    counts = [await gateway_requests(http) for _, http in addresses]
    assert all(c > 0 for c in counts), counts
    assert sum(counts) == 20

    assert await replicas[0].stop(signal.SIGKILL) == -signal.SIGKILL
    after = await escalate(stub, x, 20)
    assert sum(after.values()) == 20 and set(after) <= {"cloud", "edge_fallback"}, after
    # Escalations keep flowing: once the agent has seen the replica go, all reach the other.
    assert await escalate(stub, x, 10) == {"cloud": 10}
    assert await gateway_requests(addresses[1][1]) == counts[1] + after["cloud"] + 10


def localhost_addresses() -> set[str]:
    """The addresses ``localhost`` resolves to on this machine."""
    try:
        infos = socket.getaddrinfo("localhost", 1, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {info[4][0] for info in infos}


@pytest.mark.e2e
async def test_a_name_with_two_addresses_reaches_both_replicas(processes, start_agent,
                                                               channels, digits_dir,
                                                               digits_test, tmp_path):
    """`localhost:P`, where localhost is 127.0.0.1 and ::1 and a replica listens on each
    with the same port, is a name with two addresses: the agent's escalations reach both
    replicas (skipped where localhost has one address)."""
    if not ({"127.0.0.1", "::1"} <= localhost_addresses() and ipv6_loopback()):
        pytest.skip("localhost does not resolve to both 127.0.0.1 and ::1 here")
    replicas = []
    port = None
    for i, loopback in enumerate(("127.0.0.1", "[::1]")):
        replica = Process(["gateway", "serve", "--listen", f"{loopback}:{port or 0}",
                           "--http-listen", "127.0.0.1:0",
                           "--registry", str(tmp_path / "registry"),
                           "--data-dir", str(tmp_path / f"gateway-{i}"),
                           "--model", f"digits={digits_dir / 'cloud.onnx'}"],
                          tmp_path, f"gateway-{i}")
        processes.append(replica)
        replicas.append(replica)
        grpc_address, _ = await replica.addresses()
        port = int(grpc_address.rpartition(":")[2])
    agent = await start_agent(f"localhost:{port}")
    stub = channels(agent.address)
    x, _ = digits_test
    assert await escalate(stub, x, 20) == {"cloud": 20}
    counts = [await gateway_requests((await r.addresses())[1]) for r in replicas]
    assert all(c > 0 for c in counts) and sum(counts) == 20, counts
