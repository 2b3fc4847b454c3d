"""Fleet control plane and operator admin services over gRPC (thin shells)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import structlog
from google.protobuf.json_format import MessageToDict

from edgecloud.cloud_gateway.fleet import FleetHub
from edgecloud.cloud_gateway.rollouts import AgentAssignment
from edgecloud.core.auth import AGENT, Tokens, principal_of
from edgecloud.core.errors import InvalidInput, PermissionDenied
from edgecloud.core.grpc_errors import rpc_boundary
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

log = structlog.get_logger("edgecloud.gateway.fleet")

FLEET_SERVICE = pb.DESCRIPTOR.services_by_name["FleetService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
CHUNK_BYTES = 3 << 20
"""Bytes per FetchArtifact message: large enough to keep per-message overhead low, below
gRPC's default 4 MiB receive limit."""
MAX_PUBLISH_BYTES = 4 << 30


def _ref(envelope) -> pb.ArtifactRef:
    m = envelope.manifest
    return pb.ArtifactRef(name=m.name, version=m.version, digest=m.digest, size=m.size,
                          manifest=envelope.manifest_bytes, signature=envelope.signature)


def assignment_message(assignment: AgentAssignment, replica: str) -> pb.Assignment:
    """Domain assignment -> wire message."""
    return pb.Assignment(
        generation=assignment.generation,
        models=[_ref(e) for e in assignment.models],
        policies=[_ref(e) for e in assignment.policies],
        replica=replica,
    )


def status_dict(status: pb.AgentStatus) -> dict:
    """Wire status -> plain data kept in the registry."""
    return MessageToDict(status, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def _read_chunks(path: Path, offset: int) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        f.seek(offset)
        while data := f.read(CHUNK_BYTES):
            yield offset, data
            offset += len(data)


def _check_identity(tokens: Tokens | None, context, agent_id: str) -> None:
    """An agent token may only speak for its own agent id."""
    who = principal_of(tokens, context)
    if who is not None and who.role == AGENT and who.agent_id != agent_id:
        raise PermissionDenied(f"an agent can only act as itself ({who.agent_id}), "
                               f"not as {agent_id!r}")


class FleetServicer(pb_grpc.FleetServiceServicer):
    """Agent-facing control plane."""

    def __init__(self, hub: FleetHub, tokens: Tokens | None = None) -> None:
        self._hub = hub
        self._tokens = tokens

    @rpc_boundary
    async def WatchAssignments(self, request, context):
        if not request.agent_id:
            raise InvalidInput("agent_id is required")
        _check_identity(self._tokens, context, request.agent_id)
        log.info("agent_connected", agent_id=request.agent_id, labels=dict(request.labels),
                 replica=self._hub.replica)
        try:
            async for assignment in self._hub.watch(request.agent_id, dict(request.labels)):
                yield assignment_message(assignment, self._hub.replica)
        finally:
            log.info("agent_disconnected", agent_id=request.agent_id)

    @rpc_boundary
    async def FetchArtifact(self, request, context):
        path = self._hub.registry.blob_path(request.digest)
        size = path.stat().st_size
        if request.offset > size:
            raise InvalidInput(f"offset {request.offset} is past the end ({size} bytes)")
        chunks = _read_chunks(path, request.offset)
        while True:
            item = await asyncio.to_thread(next, chunks, None)
            if item is None:
                return
            offset, data = item
            yield pb.Chunk(offset=offset, data=data, size=size)

    @rpc_boundary
    async def ReportStatus(self, request, context):
        if not request.agent_id:
            raise InvalidInput("agent_id is required")
        _check_identity(self._tokens, context, request.agent_id)
        failed = [(s.name, s.version, s.reason) for s in request.swaps
                  if not s.ok and s.kind == "model"]
        await self._hub.report(status_dict(request), failed)
        return pb.StatusAck(generation=self._hub.snapshot.generation)

    @rpc_boundary
    async def UploadHardExamples(self, request_iterator, context):
        records: list[dict] = []
        agent_id = ""
        async for message in request_iterator:
            if not message.agent_id:
                raise InvalidInput("agent_id is required")
            if agent_id and message.agent_id != agent_id:
                raise InvalidInput("one upload carries one agent's examples")
            agent_id = message.agent_id
            if len(records) >= MAX_HARD_EXAMPLES:
                raise InvalidInput(f"at most {MAX_HARD_EXAMPLES} examples per upload")
            records.append(hard_example_record(message))
        if not records:
            return pb.HardExampleAck(accepted=0)
        _check_identity(self._tokens, context, agent_id)
        accepted = await asyncio.to_thread(self._hub.registry.store_hard_examples, agent_id,
                                           records)
        log.info("hard_examples_stored", agent_id=agent_id, count=accepted)
        return pb.HardExampleAck(accepted=accepted)


MAX_HARD_EXAMPLES = 10_000
MAX_HARD_EXAMPLE_BYTES = 4 * 2**20


def hard_example_record(message: pb.HardExample) -> dict:
    """Wire hard example -> the JSON kept in the registry (inputs base64)."""
    size = sum(len(t.data) for t in message.inputs)
    if not message.inputs or size > MAX_HARD_EXAMPLE_BYTES:
        raise InvalidInput(f"hard example inputs must be 1 byte to 4 MiB (got {size})")
    return {
        "agent_id": message.agent_id, "task": message.task,
        "model_version": message.model_version,
        "inputs": {t.name: {"datatype": t.datatype, "shape": list(t.shape),
                            "data": base64.b64encode(t.data).decode()} for t in message.inputs},
        "edge_scores": list(message.edge_scores),
        "cloud_scores": list(message.cloud_scores) or None,
        "route": message.route, "reason": message.reason, "confidence": message.confidence,
        "at": message.at,
    }


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Operator actions on the shared registry."""

    def __init__(self, hub: FleetHub) -> None:
        self._hub = hub

    @rpc_boundary
    async def PublishModel(self, request_iterator, context):
        registry = self._hub.registry
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidInput("the first message must be the publish header")
        header = first.header
        tmp = registry.root / "blobs" / "tmp" / f"upload-{os.getpid()}-{id(header)}"
        total = 0
        try:
            with open(tmp, "wb") as f:  # noqa: ASYNC230 (chunk writes to local disk are short)
                async for message in request_iterator:
                    if not message.data:
                        continue
                    total += len(message.data)
                    if total > MAX_PUBLISH_BYTES:
                        raise InvalidInput("artifact is larger than the 4 GiB limit")
                    f.write(message.data)
            manifest, generation = await asyncio.to_thread(
                registry.publish_model, header.manifest, header.signature,
                (data for _, data in _read_chunks(tmp, 0)), header.promote,
            )
        finally:
            tmp.unlink(missing_ok=True)
        log.info("model_published", model=manifest.name, version=manifest.version,
                 target=manifest.target, generation=generation)
        return pb.PublishReply(name=manifest.name, version=manifest.version,
                               digest=manifest.digest, generation=generation)

    @rpc_boundary
    async def ReserveVersion(self, request, context):
        version = await asyncio.to_thread(self._hub.registry.reserve_version, request.name,
                                          request.target)
        return pb.ReserveVersionReply(version=version)

    @rpc_boundary
    async def PublishPolicy(self, request, context):
        manifest, generation = await asyncio.to_thread(
            self._hub.registry.publish_policy, request.header.manifest,
            request.header.signature, request.document,
        )
        log.info("policy_published", policy=manifest.name, version=manifest.version,
                 generation=generation)
        return pb.PublishReply(name=manifest.name, version=manifest.version,
                               digest=manifest.digest, generation=generation)

    @rpc_boundary
    async def SetRollout(self, request, context):
        rollout, generation = await asyncio.to_thread(
            self._hub.registry.set_rollout, request.action, request.name,
            version=request.version, percent=request.percent,
            selector=dict(request.selector), max_failures=request.max_failures,
            agent_id=request.agent_id, target=request.target or "edge",
        )
        return pb.RolloutRecord(json=rollout.model_dump_json(), generation=generation)

    @rpc_boundary
    async def ListModels(self, request, context):
        described = await asyncio.to_thread(self._hub.registry.describe, request.name)
        return pb.ListModelsReply(json=json.dumps(described))

    @rpc_boundary
    async def FleetStatus(self, request, context):
        agents = await asyncio.to_thread(self._hub.registry.agent_statuses)
        for agent in agents:
            agent["connected_here"] = self._hub.connected(agent.get("agent_id", ""))
        return pb.FleetStatusReply(json=json.dumps(agents))


def register(hub: FleetHub, tokens: Tokens | None = None):
    """Registrar for :func:`core.grpc_server.create_server`."""

    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_FleetServiceServicer_to_server(FleetServicer(hub, tokens), server)
        pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(hub), server)

    return add
