"""Raw bytes at every RPC of a running gateway and agent: bad input never crashes a server.

Requests go out as grpc generic calls with raw bytes (no serializer), so a
request can be anything: bytes that do not parse, or a valid message mutated
a little (which may still parse, into a strange message).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
import numpy as np
import psutil
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message_factory import GetMessageClass

from edgecloud.core import codec
from edgecloud.core.artifacts import build_model_manifest, build_policy_manifest
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.fleet.v1 import fleet_pb2 as fleet_pb
from edgecloud.protos.inference import grpc_predict_v2_pb2 as v2_pb

TASK = "digits"
UNDECODABLE = b"\xff\xff\xff\xff"
"""Bytes no protobuf message parses: a tag whose varint never ends."""
DEADLINE_S = 3.0
STREAM_DEADLINE_S = 0.3
"""For calls that may legitimately stay open (WatchAssignments with a good hello)."""
SEED = 20240610
MUTATIONS_PER_SEED = 8
RANDOM_PER_METHOD = 4
MAX_RSS_GROWTH = 200 * 2**20


@dataclass(frozen=True)
class Rpc:
    """One method of a served service, as its descriptor says."""

    path: str
    request_type: str
    request_class: type
    client_streaming: bool
    server_streaming: bool


def rpcs(*services) -> list[Rpc]:
    """Every method of the given service descriptors."""
    return [Rpc(f"/{service.full_name}/{method.name}", method.input_type.full_name,
                GetMessageClass(method.input_type), method.client_streaming,
                method.server_streaming)
            for service in services for method in service.methods]


V2 = rpcs(v2_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"])
GATEWAY = V2 + rpcs(fleet_pb.DESCRIPTOR.services_by_name["FleetService"],
                    fleet_pb.DESCRIPTOR.services_by_name["AdminService"])


async def raw_call(channel: grpc.aio.Channel, rpc: Rpc, payloads: list[bytes],
                   deadline_s: float) -> tuple[grpc.StatusCode, str, list[bytes]]:
    """Send raw request bytes; returns the status code, its details and the replies."""
    replies: list[bytes] = []
    try:
        if not rpc.client_streaming and not rpc.server_streaming:
            replies.append(await channel.unary_unary(rpc.path)(payloads[0], timeout=deadline_s))
        elif not rpc.client_streaming:
            call = channel.unary_stream(rpc.path)(payloads[0], timeout=deadline_s)
            replies.extend([reply async for reply in call])
        elif not rpc.server_streaming:
            replies.append(await channel.stream_unary(rpc.path)(iter(payloads),
                                                                timeout=deadline_s))
        else:
            call = channel.stream_stream(rpc.path)(iter(payloads), timeout=deadline_s)
            replies.extend([reply async for reply in call])
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", replies
    return grpc.StatusCode.OK, "", replies


async def ends_with_a_status(channel: grpc.aio.Channel, rpc: Rpc, payloads: list[bytes],
                             deadline_s: float) -> tuple[grpc.StatusCode, str, list[bytes]]:
    """:func:`raw_call`, failing the test if the call outlives its deadline."""
    try:
        return await asyncio.wait_for(raw_call(channel, rpc, payloads, deadline_s),
                                      deadline_s + 5.0)
    except TimeoutError:
        raise AssertionError(f"{rpc.path} did not end within its deadline") from None


def _infer_request(x: np.ndarray) -> bytes:
    return codec.encode_infer_request(
        InferRequest(model_name=TASK, inputs={"pixels": x})).SerializeToString()


def seeds(digits_dir, digits_test) -> dict[str, list[list[bytes]]]:
    """Valid requests (each a list of stream messages) per request type, to mutate."""
    x, _ = digits_test
    typed = v2_pb.ModelInferRequest(model_name=TASK, inputs=[v2_pb.ModelInferRequest.
                                                             InferInputTensor(
        name="pixels", datatype="FP32", shape=[1, 64],
        contents=v2_pb.InferTensorContents(fp32_contents=x[0].tolist()))])
    model = (digits_dir / "edge.onnx").read_bytes()
    manifest = build_model_manifest(digits_dir / "edge.onnx", name="fuzzed", version="1",
                                    target="edge").canonical()
    document = (digits_dir / "policy.yaml").read_bytes()
    policy_manifest = build_policy_manifest(document, name=TASK, version="9").canonical()
    header = fleet_pb.PublishHeader(manifest=manifest)
    example = fleet_pb.HardExample(
        agent_id="fuzz-agent", task=TASK, model_version="1", record_id="r1", seq=1,
        inputs=[fleet_pb.TensorBlob(name="pixels", datatype="FP32", shape=[1, 64],
                                    data=x[0].tobytes())],
        edge_scores=[0.1] * 10, route="edge_fallback", reason="cloud_failed", confidence=0.2)
    status = fleet_pb.AgentStatus(agent_id="fuzz-agent", tasks=[fleet_pb.TaskCounters(
        name=TASK, model_version="1", requests=3, score_histogram=[1, 2],
        score_bin_edges=[0.0, 0.5, 1.0])])

    def one(message) -> list[list[bytes]]:
        return [[message.SerializeToString()]]

    return {
        "inference.ModelInferRequest": [[_infer_request(x[:1])], [_infer_request(x[:3])],
                                        [typed.SerializeToString()]],
        "inference.ModelMetadataRequest": one(v2_pb.ModelMetadataRequest(name=TASK)),
        "inference.ModelReadyRequest": one(v2_pb.ModelReadyRequest(name=TASK, version="1")),
        "inference.ModelConfigRequest": one(v2_pb.ModelConfigRequest(name=TASK)),
        "edgecloud.fleet.v1.AgentHello": one(fleet_pb.AgentHello(
            agent_id="fuzz-agent", labels={"site": "a"}, agent_version="0.1")),
        "edgecloud.fleet.v1.FetchRequest": one(fleet_pb.FetchRequest(
            digest="sha256:" + "ab" * 32, offset=3)),
        "edgecloud.fleet.v1.AgentStatus": one(status),
        "edgecloud.fleet.v1.HardExample": one(example),
        "edgecloud.fleet.v1.PublishChunk": [[
            fleet_pb.PublishChunk(header=header).SerializeToString(),
            fleet_pb.PublishChunk(data=model).SerializeToString()]],
        "edgecloud.fleet.v1.PublishPolicyRequest": one(fleet_pb.PublishPolicyRequest(
            header=fleet_pb.PublishHeader(manifest=policy_manifest), document=document)),
        "edgecloud.fleet.v1.RolloutRequest": one(fleet_pb.RolloutRequest(
            action="set", name=TASK, version="1", percent=50.0, max_failures=2)),
        "edgecloud.fleet.v1.ReserveVersionRequest": one(fleet_pb.ReserveVersionRequest(
            name="fuzzed", target="edge")),
        "edgecloud.fleet.v1.ListModelsRequest": one(fleet_pb.ListModelsRequest(name=TASK)),
        "edgecloud.fleet.v1.ExportHardExamplesRequest": one(
            fleet_pb.ExportHardExamplesRequest(task=TASK)),
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One small random change: flipped bits, a cut, an insert, a repeat, a truncation."""
    buf = bytearray(data)
    choice = rng.randrange(6)
    if not buf or choice == 0:
        buf[rng.randrange(len(buf) + 1):0] = rng.randbytes(rng.randint(1, 8))
    elif choice == 1:
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif choice == 2:
        start = rng.randrange(len(buf))
        del buf[start:start + rng.randint(1, 16)]
    elif choice == 3:
        start = rng.randrange(len(buf))
        piece = buf[start:start + rng.randint(1, 32)]
        buf[start:start] = piece * rng.randint(1, 4)
    elif choice == 4:
        del buf[rng.randrange(len(buf)):]
    else:
        buf[rng.randrange(len(buf))] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
    return bytes(buf)


_INTERESTING = {
    FieldDescriptor.CPPTYPE_INT32: (0, -1, 1, 2**31 - 1, -(2**31)),
    FieldDescriptor.CPPTYPE_INT64: (0, -1, 1, 2**40, 2**63 - 1, -(2**63)),
    FieldDescriptor.CPPTYPE_UINT32: (0, 1, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 1, 2**40, 2**64 - 1),
    FieldDescriptor.CPPTYPE_DOUBLE: (0.0, -1.0, 1e308, float("nan"), float("inf")),
    FieldDescriptor.CPPTYPE_FLOAT: (0.0, -1.0, 3e38, float("nan"), float("-inf")),
    FieldDescriptor.CPPTYPE_BOOL: (True, False),
    FieldDescriptor.CPPTYPE_STRING: ("", "digits", "x" * 300, "é\u2028\x00", "FP32", "BYTES"),
}


def _value(field: FieldDescriptor, rng: random.Random):
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    value = rng.choice(_INTERESTING[field.cpp_type])
    if field.type == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice((0, 1, 7, 256)))
    return value


def mutate_message(message, rng: random.Random, depth: int = 0) -> None:
    """Change one field somewhere in ``message`` to an odd but well-formed value."""
    fields = message.DESCRIPTOR.fields
    if not fields:
        return
    field = rng.choice(fields)
    repeated = field.is_repeated
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry:
            getattr(message, field.name).clear()
        elif repeated:
            items = getattr(message, field.name)
            if items and depth < 4 and rng.random() < 0.6:
                mutate_message(rng.choice(items), rng, depth + 1)
            elif items and rng.random() < 0.5:
                items.add().CopyFrom(items[0])
            else:
                del items[:]
        elif depth < 4:
            mutate_message(getattr(message, field.name), rng, depth + 1)
    elif repeated:
        items = getattr(message, field.name)
        action = rng.randrange(3)
        if action == 0:
            del items[:]
        elif action == 1 and items:
            items[rng.randrange(len(items))] = _value(field, rng)
        else:
            items.extend(_value(field, rng) for _ in range(rng.randint(1, 3)))
    else:
        setattr(message, field.name, _value(field, rng))


def fuzz_cases(rpc: Rpc, seeds_by_type: dict[str, list[list[bytes]]], message_class,
               rng: random.Random) -> Iterable[list[bytes]]:
    """Mutated seeds (bytes and fields) and random bytes for one method."""
    for seed in seeds_by_type.get(rpc.request_type, [[b""]]):
        for n in range(2 * MUTATIONS_PER_SEED):
            messages = list(seed)
            i = rng.randrange(len(messages))
            if n % 2:
                messages[i] = mutate(messages[i], rng)
            else:
                message = message_class.FromString(messages[i])
                for _ in range(rng.randint(1, 3)):
                    mutate_message(message, rng)
                messages[i] = message.SerializeToString()
            yield messages
    for _ in range(RANDOM_PER_METHOD):
        yield [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 3))]


def _crashed(code: grpc.StatusCode, details: str) -> bool:
    return code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


@pytest.fixture
async def open_channels():
    """Raw channels to addresses; all closed at teardown."""
    opened: list[grpc.aio.Channel] = []

    def channel(address: str) -> grpc.aio.Channel:
        opened.append(grpc.aio.insecure_channel(address))
        return opened[-1]

    yield channel
    for channel in opened:
        await channel.close()


@pytest.mark.e2e
async def test_undecodable_requests_get_invalid_argument(start_gateway, start_agent,
                                                         open_channels):
    """Bytes that do not parse, sent to any RPC of the gateway (v2, fleet, admin) or the
    agent, get INVALID_ARGUMENT naming the expected message, never the parser's text."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    for address, methods in ((gateway.address, GATEWAY), (agent.address, V2)):
        channel = open_channels(address)
        for rpc in methods:
            if rpc.server_streaming and rpc.client_streaming:
                continue  # ModelStreamInfer answers in the stream: the next test
            code, details, _ = await ends_with_a_status(channel, rpc, [UNDECODABLE],
                                                        DEADLINE_S)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (rpc.path, code, details)
            assert rpc.request_type in details, (rpc.path, details)
            assert "DecodeError" not in details and "Error parsing" not in details


@pytest.mark.e2e
async def test_undecodable_stream_message_is_answered_and_the_stream_goes_on(
        start_gateway, start_agent, open_channels, digits_test):
    """On ModelStreamInfer a message that does not parse gets an INVALID_ARGUMENT
    error_message and the next message is answered, on the agent as on the gateway."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    x, _ = digits_test
    stream = next(rpc for rpc in V2 if rpc.path.endswith("/ModelStreamInfer"))
    for address in (gateway.address, agent.address):
        code, details, replies = await ends_with_a_status(
            open_channels(address), stream, [UNDECODABLE, _infer_request(x[:1])], DEADLINE_S)
        assert code == grpc.StatusCode.OK, details
        first, second = (v2_pb.ModelStreamInferResponse.FromString(r) for r in replies)
        assert first.error_message.startswith("INVALID_ARGUMENT: ")
        assert "inference.ModelInferRequest" in first.error_message
        assert not second.error_message
        assert second.infer_response.outputs[0].name == "probabilities"


@pytest.mark.e2e
async def test_fuzzed_requests_end_with_a_status(start_gateway, start_agent, open_channels,
                                                 digits_dir, digits_test):
    """Random and mutated request bytes at every RPC of a gateway and an agent: every call
    ends with a status within its deadline, none is a crash (UNKNOWN or INTERNAL), both
    servers still answer afterwards, and the process's memory stays bounded."""
    gateway = await start_gateway()
    agent = await start_agent(gateway.address)
    seeds_by_type = seeds(digits_dir, digits_test)
    rng = random.Random(SEED)
    process = psutil.Process()
    targets = ((open_channels(gateway.address), GATEWAY), (open_channels(agent.address), V2))

    async def fuzz_round() -> list[str]:
        crashes = []
        for channel, methods in targets:
            for rpc in methods:
                deadline = (STREAM_DEADLINE_S if rpc.server_streaming
                            and not rpc.client_streaming else DEADLINE_S)
                for payloads in fuzz_cases(rpc, seeds_by_type, rpc.request_class, rng):
                    code, details, _ = await ends_with_a_status(channel, rpc, payloads,
                                                                deadline)
                    if _crashed(code, details):
                        crashes.append(f"{rpc.path} {code.name} {details} {payloads!r:.200}")
        return crashes

    assert await fuzz_round() == []  # warms up every path before memory is measured
    rss_before = process.memory_info().rss
    assert await fuzz_round() == []
    assert process.memory_info().rss - rss_before < MAX_RSS_GROWTH
    for channel, _ in targets:
        live = next(rpc for rpc in V2 if rpc.path.endswith("/ServerLive"))
        code, _, replies = await ends_with_a_status(
            channel, live, [v2_pb.ServerLiveRequest().SerializeToString()], DEADLINE_S)
        assert code == grpc.StatusCode.OK
        assert v2_pb.ServerLiveResponse.FromString(replies[0]).live
