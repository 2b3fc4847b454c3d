"""Fleet control plane and operator admin services over gRPC (thin shells)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from google.protobuf.json_format import MessageToDict, ParseDict

from edgecloud.cloud_gateway.fleet import FleetHub
from edgecloud.cloud_gateway.grpc.admin_messages import model_listing_reply, rollout_message
from edgecloud.cloud_gateway.hard_examples import REGISTRY_PREFIX, HardExampleStore
from edgecloud.cloud_gateway.review import Label, LabelFeed, ReviewQueue, ReviewRow
from edgecloud.cloud_gateway.rollouts import AgentAssignment
from edgecloud.cloud_gateway.storage.objects import full_disk_errors
from edgecloud.core.auth import AGENT, current_principal
from edgecloud.core.errors import InvalidInput, Overloaded, PermissionDenied
from edgecloud.core.grpc_errors import rpc_boundary
from edgecloud.core.grpc_server import add_servicer
from edgecloud.core.hard_example_codec import example_from_pb, example_to_pb
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

log = structlog.get_logger("edgecloud.gateway.fleet")

FLEET_SERVICE = pb.DESCRIPTOR.services_by_name["FleetService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
REVIEW_SERVICE = pb.DESCRIPTOR.services_by_name["ReviewService"].full_name
CHUNK_BYTES = 3 << 20
"""Bytes per FetchArtifact message: large enough to keep per-message overhead low, below
gRPC's default 4 MiB receive limit."""
MAX_PUBLISH_BYTES = 4 << 30
MAX_CONCURRENT_PUBLISHES = 2
"""Model uploads one gateway stages at once (each may be up to MAX_PUBLISH_BYTES on disk)."""


def _ref(envelope) -> pb.ArtifactRef:
    m = envelope.manifest
    return pb.ArtifactRef(name=m.name, version=m.version, digest=m.digest, size=m.size,
                          manifest=envelope.manifest_bytes, signature=envelope.signature)


def assignment_message(assignment: AgentAssignment, replica: str,
                       report_spread_ms: int = 0) -> pb.Assignment:
    """Domain assignment -> wire message."""
    return pb.Assignment(
        generation=assignment.generation,
        models=[_ref(e) for e in assignment.models],
        policies=[_ref(e) for e in assignment.policies],
        replica=replica,
        floors=[pb.VersionFloor(document=f.document, signature=f.signature)
                for f in assignment.floors],
        report_spread_ms=report_spread_ms,
    )


class EncodedAssignments:
    """Each distinct assignment encoded once: the streams that share an assignment object
    (:meth:`FleetHub.watch <edgecloud.cloud_gateway.fleet.FleetHub.watch>` shares them
    within a snapshot) send the same bytes. Holds one generation's encodings."""

    def __init__(self, replica: str, report_spread_ms: Callable[[], int] = lambda: 0) -> None:
        """``report_spread_ms``: how long the agents should spread the status reports that
        follow an assignment over, asked once per assignment and generation."""
        self._replica = replica
        self._report_spread_ms = report_spread_ms
        self._generation = -1
        self._by_id: dict[int, tuple[AgentAssignment, bytes]] = {}

    def __call__(self, assignment: AgentAssignment) -> bytes:
        if assignment.generation != self._generation:
            self._generation, self._by_id = assignment.generation, {}
        kept = self._by_id.get(id(assignment))
        if kept is None or kept[0] is not assignment:
            # The entry holds the assignment, so its id is not reused while kept.
            kept = (assignment,
                    assignment_message(assignment, self._replica,
                                       self._report_spread_ms()).SerializeToString())
            self._by_id[id(assignment)] = kept
        return kept[1]


def status_dict(status: pb.AgentStatus) -> dict:
    """Wire status -> plain data kept in the registry."""
    return MessageToDict(status, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


_FLEET_AGENT_KEYS = ("replica", "last_seen", "swap_history", "connected_here")


def fleet_agent(entry: dict) -> pb.FleetAgent:
    """A stored agent status (as :func:`status_dict` and the hub keep it) -> wire entry."""
    status = {k: v for k, v in entry.items() if k not in _FLEET_AGENT_KEYS}
    return pb.FleetAgent(
        status=ParseDict(status, pb.AgentStatus(), ignore_unknown_fields=True),
        replica=str(entry.get("replica") or ""),
        last_seen=float(entry.get("last_seen") or 0.0),
        swap_history=[ParseDict(swap, pb.SwapOutcome(), ignore_unknown_fields=True)
                      for swap in entry.get("swap_history") or ()],
        connected_here=bool(entry.get("connected_here")),
    )


def _read_chunks(path: Path, offset: int) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        f.seek(offset)
        while data := f.read(CHUNK_BYTES):
            yield offset, data
            offset += len(data)


def _check_identity(agent_id: str) -> None:
    """An agent (by token or certificate) may only speak for its own agent id."""
    who = current_principal()
    if who is not None and who.role == AGENT and who.agent_id != agent_id:
        raise PermissionDenied(f"an agent can only act as itself ({who.agent_id}), "
                               f"not as {agent_id!r}")


MAX_STATUS_BYTES = 64 * 2**10
"""Largest AgentStatus a ReportStatus may carry; a larger one is refused with
INVALID_ARGUMENT (a healthy report is a few KiB), so every agent's status fits in one
FleetStatus answer."""
MAX_STATUS_SWAPS = 32
"""Swap outcomes kept from one report (the newest); the gateway still counts every
failure it was sent."""


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """Limits of one UploadHardExamples call."""

    max_upload_bytes: int = 16 * 2**20
    """Bytes of messages one upload may carry; past it the call is refused as it reads."""
    max_records: int = 10_000
    """Records one upload may carry."""


class FleetServicer(pb_grpc.FleetServiceServicer):
    """Agent-facing control plane."""

    def __init__(self, hub: FleetHub, examples: HardExampleStore | None = None,
                 upload_limits: UploadLimits | None = None,
                 reviews: LabelFeed | None = None) -> None:
        self._hub = hub
        self._examples = examples or HardExampleStore(hub.registry.store, REGISTRY_PREFIX)
        self._upload_limits = upload_limits or UploadLimits()
        self._encoded = EncodedAssignments(hub.replica, hub.report_spread_ms)
        self._reviews = reviews or LabelFeed(ReviewQueue(hub.registry.store))

    @rpc_boundary
    async def WatchLabels(self, request, context):
        """Labels of the caller's own rows: those given since ``after``, then each new one."""
        if not request.agent_id:
            raise InvalidInput("agent_id is required")
        _check_identity(request.agent_id)
        async for label in self._reviews.watch(request.agent_id, request.after):
            yield label_message(label)

    @rpc_boundary
    async def WatchAssignments(self, request, context):
        if not request.agent_id:
            raise InvalidInput("agent_id is required")
        _check_identity(request.agent_id)
        labels = dict(request.labels)
        log.info("agent_connected", agent_id=request.agent_id, labels=labels,
                 replica=self._hub.replica)
        try:
            async for assignment in self._hub.watch(request.agent_id, labels):
                yield self._encoded(assignment)
        finally:
            log.info("agent_disconnected", agent_id=request.agent_id)

    @rpc_boundary
    async def FetchArtifact(self, request, context):
        """Stream an artifact; an agent gets only the artifacts of its own assignment."""
        who = current_principal()
        if who is not None and who.role == AGENT and not await self._hub.assigned(
                who.agent_id, dict(request.labels), request.digest):
            raise PermissionDenied(f"artifact {request.digest[:80]!r} is not in the "
                                   f"assignment of agent {who.agent_id}")
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
        _check_identity(request.agent_id)
        size = request.ByteSize()
        if size > MAX_STATUS_BYTES:
            raise InvalidInput(f"status of {size} bytes is over the limit of "
                               f"{MAX_STATUS_BYTES} bytes")
        failed = [(s.name, s.version, s.reason) for s in request.swaps
                  if not s.ok and s.kind == "model"]
        if len(request.swaps) > MAX_STATUS_SWAPS:
            del request.swaps[:-MAX_STATUS_SWAPS]
        await self._hub.report(status_dict(request), failed)
        return pb.StatusAck(generation=self._hub.snapshot.generation)

    @rpc_boundary
    async def UploadHardExamples(self, request_iterator, context):
        """Store an agent's batch by record id; the ack lists the records refused.

        The caller's identity is checked on the first message, before anything
        is kept, and the upload's size as it is read.
        """
        limits = self._upload_limits
        records = []
        agent_id = ""
        size = 0
        async for message in request_iterator:
            if not message.agent_id:
                raise InvalidInput("agent_id is required")
            if not agent_id:
                _check_identity(message.agent_id)
                agent_id = message.agent_id
            elif message.agent_id != agent_id:
                raise InvalidInput("one upload carries one agent's examples")
            size += message.ByteSize()
            if size > limits.max_upload_bytes:
                raise InvalidInput(f"upload is larger than the gateway's limit of "
                                   f"{limits.max_upload_bytes} bytes; send smaller batches")
            if len(records) >= limits.max_records:
                raise InvalidInput(f"at most {limits.max_records} examples per upload")
            records.append(example_from_pb(message))
        if not records:
            return pb.HardExampleAck()
        outcome = await asyncio.to_thread(self._examples.store, agent_id, records)
        refused = {record_id for record_id, _ in outcome.rejected}
        await asyncio.to_thread(self._reviews.queue.enqueue,
                                [k for k in records if k.record_id not in refused])
        log.info("hard_examples_stored", agent_id=agent_id, stored=outcome.stored,
                 duplicates=outcome.duplicates, rejected=len(outcome.rejected))
        return pb.HardExampleAck(
            accepted=outcome.stored, duplicates=outcome.duplicates,
            rejected=[pb.RejectedHardExample(record_id=rid, reason=reason)
                      for rid, reason in outcome.rejected],
        )


EXPORT_BATCH = 64
"""Records read from disk per worker-thread hop while exporting."""


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Operator actions on the shared registry."""

    def __init__(self, hub: FleetHub, examples: HardExampleStore | None = None,
                 reviews: ReviewQueue | None = None) -> None:
        self._hub = hub
        self._examples = examples or HardExampleStore(hub.registry.store, REGISTRY_PREFIX)
        self._reviews = reviews or ReviewQueue(hub.registry.store)
        self._uploads = asyncio.Semaphore(MAX_CONCURRENT_PUBLISHES)

    @rpc_boundary
    async def PublishModel(self, request_iterator, context):
        """Check the header (manifest, signature, free version) before any byte is kept,
        stage at most the manifest's size, then publish; at most
        :data:`MAX_CONCURRENT_PUBLISHES` uploads at once (RESOURCE_EXHAUSTED past it)."""
        registry = self._hub.registry
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidInput("the first message must be the publish header")
        header = first.header
        manifest = await asyncio.to_thread(registry.check_model_header, header.manifest,
                                           header.signature)
        if manifest.size > MAX_PUBLISH_BYTES:
            raise InvalidInput("artifact is larger than the 4 GiB limit")
        if self._uploads.locked():
            raise Overloaded(f"{MAX_CONCURRENT_PUBLISHES} publications are uploading; retry "
                             "shortly")
        async with self._uploads:
            tmp = await asyncio.to_thread(registry.blobs.staging_file)
            try:
                total = 0
                with full_disk_errors(), open(tmp, "wb") as f:  # noqa: ASYNC230 (short local writes)
                    async for message in request_iterator:
                        total += len(message.data)
                        if total > manifest.size:
                            raise InvalidInput(f"artifact is larger than the manifest's size "
                                               f"{manifest.size}")
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
        return pb.RolloutRecord(rollout=rollout_message(rollout), generation=generation)

    @rpc_boundary
    async def PublishFloor(self, request, context):
        floor, generation = await asyncio.to_thread(
            self._hub.registry.publish_floor, request.document, request.signature)
        log.info("floor_published", model=floor.name, version=floor.version,
                 generation=generation)
        return pb.PublishReply(name=floor.name, version=floor.version, generation=generation)

    @rpc_boundary
    async def ListModels(self, request, context):
        described = await asyncio.to_thread(self._hub.registry.describe, request.name)
        return model_listing_reply(described)

    @rpc_boundary
    async def FleetStatus(self, request, context):
        agents = await asyncio.to_thread(self._hub.registry.agent_statuses)
        for agent in agents:
            agent["connected_here"] = self._hub.connected(agent.get("agent_id", ""))
        return pb.FleetStatusReply(json=json.dumps(agents),
                                   agents=[fleet_agent(agent) for agent in agents])

    @rpc_boundary
    async def ExportHardExamples(self, request, context):
        records = self._examples.records(request.task, request.since)
        while True:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(records,
                                                                          EXPORT_BATCH)))
            if not batch:
                return
            for kept in batch:
                yield example_to_pb(kept)

    @rpc_boundary
    async def ExportLabels(self, request, context):
        labels = await asyncio.to_thread(self._reviews.all_labels, request.task)
        for label in sorted(labels.values(), key=lambda lab: (lab.labelled_at, lab.review_id)):
            yield label_message(label)


def label_message(label: Label) -> pb.ReviewLabel:
    """Domain label -> wire message."""
    return pb.ReviewLabel(review_id=label.review_id, agent_id=label.agent_id, task=label.task,
                          answer_id=label.answer_id, answer_row=label.answer_row,
                          label=label.label, reviewer=label.reviewer,
                          labelled_at=label.labelled_at)


def review_item(row: ReviewRow) -> pb.ReviewItem:
    """A queued row -> wire message."""
    return pb.ReviewItem(review_id=row.kept.record_id, example=example_to_pb(row.kept),
                         classes=row.classes, edge_class=row.edge_class,
                         edge_score=row.edge_score, cloud_class=row.cloud_class,
                         cloud_score=row.cloud_score, expires_at=row.expires_at)


def reviewer_name() -> str:
    """Who labels: the caller's name, else its role (``reviewer`` on an open gateway)."""
    who = current_principal()
    if who is None:
        return "reviewer"
    return who.name or who.role


class ReviewServicer(pb_grpc.ReviewServiceServicer):
    """The human review queue: list (readers) and label (reviewers, operators)."""

    def __init__(self, feed: LabelFeed) -> None:
        self._feed = feed

    @rpc_boundary
    async def ListReviews(self, request, context):
        rows, waiting = await asyncio.to_thread(self._feed.queue.pending, request.task,
                                                request.limit)
        return pb.ListReviewsReply(items=[review_item(row) for row in rows], waiting=waiting)

    @rpc_boundary
    async def LabelReview(self, request, context):
        return label_message(await self._feed.label(request.review_id, request.label,
                                                    reviewer_name()))


def register(hub: FleetHub, examples: HardExampleStore | None = None,
             upload_limits: UploadLimits | None = None, reviews: LabelFeed | None = None):
    """Registrar for :func:`core.grpc_server.create_server`.

    ``examples`` stores hard examples (default: in the registry's storage, without limits
    of its own); ``reviews`` the review queue (default: in the registry's storage).
    """

    store = examples or HardExampleStore(hub.registry.store, REGISTRY_PREFIX)
    feed = reviews or LabelFeed(ReviewQueue(hub.registry.store))

    def add(server: grpc.aio.Server) -> None:
        add_servicer(pb_grpc.add_FleetServiceServicer_to_server,
                     FleetServicer(hub, store, upload_limits, feed), server)
        add_servicer(pb_grpc.add_AdminServiceServicer_to_server,
                     AdminServicer(hub, store, feed.queue), server)
        add_servicer(pb_grpc.add_ReviewServiceServicer_to_server, ReviewServicer(feed),
                     server)

    return add
