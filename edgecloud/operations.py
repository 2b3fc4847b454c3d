"""Operator actions, against a gateway's admin service or a registry directory.

Both targets offer the same calls and return plain data, so every command
works the same way with ``--gateway HOST:PORT`` or a registry directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf.json_format import MessageToDict

# Re-exported: `fleet status` and its callers read the fleet's rows from here.
from edgecloud.cloud_gateway.fleet_view import fleet_rows, offline_after_s  # noqa: F401
from edgecloud.cloud_gateway.grpc.admin_messages import (
    model_listing_from_reply,
    rollout_from_message,
)
from edgecloud.cloud_gateway.hard_examples import REGISTRY_PREFIX, HardExampleStore
from edgecloud.cloud_gateway.registry import Registry
from edgecloud.cloud_gateway.review import Label, ReviewQueue
from edgecloud.cloud_gateway.storage import Location
from edgecloud.core.artifacts import build_floor, build_model_manifest
from edgecloud.core.auth import call_metadata
from edgecloud.core.errors import FailedPrecondition
from edgecloud.core.grpc_errors import from_rpc_error
from edgecloud.core.hard_example_codec import example_from_pb
from edgecloud.core.hard_examples import KeptExample
from edgecloud.core.signing import load_private_key, sign
from edgecloud.core.tensors import class_scores_output
from edgecloud.core.tls import open_channel
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

UPLOAD_CHUNK = 1 << 20


class Operator(Protocol):
    """Operator calls shared by both targets."""

    def publish_model(self, manifest: bytes, signature: bytes, path: Path, promote: bool,
                      progress: Callable[[int], None] | None = None) -> dict: ...

    def publish_policy(self, manifest: bytes, signature: bytes, document: bytes) -> dict: ...

    def publish_floor(self, document: bytes, signature: bytes) -> dict: ...

    def rollout(self, action: str, name: str, **fields) -> dict: ...

    def list_models(self, name: str = "") -> dict: ...

    def fleet_status(self) -> list[dict]: ...

    def reserve_version(self, name: str, target: str) -> str: ...

    def hard_examples(self, task: str, since: float = 0.0) -> Iterator[KeptExample]: ...

    def review_labels(self, task: str) -> dict[str, Label]:
        """Reviewers' labels of ``task``'s rows, by record id."""
        ...

    def close(self) -> None: ...


def _file_chunks(path: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(UPLOAD_CHUNK):
            if progress is not None:
                progress(len(data))
            yield data


def sign_manifest(manifest: bytes, key: Path | None) -> bytes:
    """Signature of a manifest with the operator's private key file; empty without one."""
    return sign(load_private_key(key), manifest) if key is not None else b""


def publish_model_file(op: Operator, path: Path, *, name: str, target: str,
                       version: str | None = None, key: Path | None = None,
                       promote: bool = False, scores_output: str | None = None,
                       progress: Callable[[int], None] | None = None) -> dict:
    """Describe, sign and publish an ONNX file; without ``version`` the registry picks it.

    An edge model must have an output the agent can take class scores from:
    ``scores_output`` when given, else its one float ``[N, classes]`` output
    (FailedPrecondition naming the outputs otherwise, before anything is
    sent). A cloud model is checked only when ``scores_output`` is given; the
    agent maps its outputs onto the edge model's by position. The output is
    checked, not recorded: the task's policy names it for the agents.

    Returns the publication (name, version, digest, generation), whether it
    is signed, and the output found to hold class scores (``scores_output``,
    None for an unchecked cloud model).
    """
    private = load_private_key(key) if key is not None else None
    manifest = build_model_manifest(path, name=name, version=version or "0", target=target)
    chosen = None
    if target == "edge" or scores_output is not None:
        specs, owner = tuple(t.spec() for t in manifest.outputs), f"{target} model {path.name}"
        try:
            chosen = class_scores_output(specs, scores_output, owner=owner)
        except FailedPrecondition:  # again, naming the outputs v2 cannot carry too
            class_scores_output(specs, scores_output, owner=owner,
                                skipped=_skipped_outputs(path))
            raise
    if version is None:
        # Reserved only once the file is known to describe a model: a bad file costs no number.
        manifest = manifest.model_copy(update={"version": op.reserve_version(name, target)})
    data = manifest.canonical()
    signature = sign(private, data) if private is not None else b""
    reply = op.publish_model(data, signature, path, promote, progress)
    return {**reply, "signed": bool(signature), "scores_output": chosen}


def publish_policy_document(op: Operator, document: bytes, *, version: str | None = None,
                            key: Path | None = None) -> dict:
    """Sign and publish a policy document; without ``version`` the registry picks it.

    The published document carries the version it is published as (rewritten when it
    says another). Raises PolicyError when ``document`` is not a valid policy.
    """
    from edgecloud.core.artifacts import build_policy_manifest
    from edgecloud.router import dump_policy, parse_policy

    policy = parse_policy(document)
    version = version or op.reserve_version(policy.name, "policy")
    if version != policy.version:
        document = dump_policy(policy.model_copy(update={"version": version})).encode()
    data = build_policy_manifest(document, name=policy.name, version=version).canonical()
    return op.publish_policy(data, sign_manifest(data, key), document)


def publish_floor(op: Operator, name: str, version: str, key: Path | None = None) -> dict:
    """Sign and publish task ``name``'s minimum edge version; agents refuse older versions.

    Returns the publication (name, version, generation) and whether it is signed.
    """
    private = load_private_key(key) if key is not None else None
    document = build_floor(name, version).canonical()
    signature = sign(private, document) if private is not None else b""
    return {**op.publish_floor(document, signature), "signed": bool(signature)}


def _skipped_outputs(path: Path) -> tuple[tuple[str, str], ...]:
    """Outputs of the model file that v2 cannot carry (for messages only)."""
    from edgecloud.core.model import OnnxModel

    return OnnxModel.load(path, name=path.stem).skipped_outputs


class RegistryOperator:
    """Acts on a registry directly: a directory (the embedded default) or ``s3://``.

    With ``trust_key`` it holds publications to the gateway's rule (signed with the
    operator's key) and hides stored versions whose signature does not verify.
    """

    def __init__(self, location: Path | str | Location, *, create: bool = True,
                 trust_key=None) -> None:
        self.registry = Registry(location, trust_key=trust_key, create=create)

    def publish_model(self, manifest, signature, path, promote, progress=None) -> dict:
        m, generation = self.registry.publish_model(manifest, signature,
                                                    _file_chunks(path, progress), promote)
        return {"name": m.name, "version": m.version, "digest": m.digest,
                "generation": generation}

    def publish_policy(self, manifest, signature, document) -> dict:
        m, generation = self.registry.publish_policy(manifest, signature, document)
        return {"name": m.name, "version": m.version, "digest": m.digest,
                "generation": generation}

    def publish_floor(self, document, signature) -> dict:
        floor, generation = self.registry.publish_floor(document, signature)
        return {"name": floor.name, "version": floor.version, "generation": generation}

    def rollout(self, action, name, **fields) -> dict:
        record, _ = self.registry.set_rollout(action, name, **fields)
        return record.model_dump(mode="json")

    def list_models(self, name: str = "") -> dict:
        return self.registry.describe(name)

    def fleet_status(self) -> list[dict]:
        return self.registry.agent_statuses()

    def reserve_version(self, name: str, target: str) -> str:
        return self.registry.reserve_version(name, target)

    def hard_examples(self, task: str, since: float = 0.0) -> Iterator[KeptExample]:
        return HardExampleStore(self.registry.store, REGISTRY_PREFIX).records(task, since)

    def review_labels(self, task: str) -> dict[str, Label]:
        return ReviewQueue(self.registry.store).all_labels(task)

    def close(self) -> None:
        """Nothing to close."""


class GatewayOperator:
    """Acts through a gateway's admin service."""

    def __init__(self, target: str, timeout_s: float = 30.0, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self._auth = call_metadata(token)
        self._channel = open_channel(
            target, credentials, options=[("grpc.max_send_message_length", 8 * 2**20),
                                          ("grpc.max_receive_message_length", 64 * 2**20)],
            aio=False,
        )
        self._stub = pb_grpc.AdminServiceStub(self._channel)
        self._timeout = timeout_s
        self._target = target

    def _call(self, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self._timeout, metadata=self._auth)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"gateway {self._target}") from None

    def publish_model(self, manifest, signature, path, promote, progress=None) -> dict:
        def messages() -> Iterator[pb.PublishChunk]:
            yield pb.PublishChunk(header=pb.PublishHeader(manifest=manifest,
                                                          signature=signature,
                                                          promote=promote))
            for data in _file_chunks(path, progress):
                yield pb.PublishChunk(data=data)

        reply = self._call(self._stub.PublishModel, messages(), timeout=3600)
        return {"name": reply.name, "version": reply.version, "digest": reply.digest,
                "generation": reply.generation}

    def publish_policy(self, manifest, signature, document) -> dict:
        reply = self._call(self._stub.PublishPolicy, pb.PublishPolicyRequest(
            header=pb.PublishHeader(manifest=manifest, signature=signature),
            document=document))
        return {"name": reply.name, "version": reply.version, "digest": reply.digest,
                "generation": reply.generation}

    def publish_floor(self, document, signature) -> dict:
        reply = self._call(self._stub.PublishFloor, pb.PublishFloorRequest(
            document=document, signature=signature))
        return {"name": reply.name, "version": reply.version, "generation": reply.generation}

    def rollout(self, action, name, **fields) -> dict:
        reply = self._call(self._stub.SetRollout, pb.RolloutRequest(
            action=action, name=name, version=fields.get("version", ""),
            percent=fields.get("percent", 0.0), selector=fields.get("selector") or {},
            max_failures=fields.get("max_failures", 0), agent_id=fields.get("agent_id", ""),
            target=fields.get("target", "edge")))
        return rollout_from_message(reply.rollout).model_dump(mode="json")

    def list_models(self, name: str = "") -> dict:
        return model_listing_from_reply(self._call(self._stub.ListModels,
                                                   pb.ListModelsRequest(name=name)))

    def fleet_status(self) -> list[dict]:
        reply = self._call(self._stub.FleetStatus, pb.FleetStatusRequest())
        if not reply.agents and reply.json:  # a gateway older than typed entries
            return json.loads(reply.json)
        return [_fleet_agent_dict(agent) for agent in reply.agents]

    def reserve_version(self, name: str, target: str) -> str:
        return self._call(self._stub.ReserveVersion,
                          pb.ReserveVersionRequest(name=name, target=target)).version

    def hard_examples(self, task: str, since: float = 0.0) -> Iterator[KeptExample]:
        request = pb.ExportHardExamplesRequest(task=task, since=since)
        try:
            for message in self._stub.ExportHardExamples(request, timeout=3600,
                                                          metadata=self._auth):
                yield example_from_pb(message)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"gateway {self._target}") from None

    def review_labels(self, task: str) -> dict[str, Label]:
        request = pb.ExportLabelsRequest(task=task)
        try:
            return {m.review_id: Label(m.review_id, m.agent_id, m.task, m.answer_id,
                                       m.answer_row, m.label, m.reviewer, m.labelled_at)
                    for m in self._stub.ExportLabels(request, timeout=600,
                                                     metadata=self._auth)}
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"gateway {self._target}") from None

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


# -- fleet status ------------------------------------------------------------------------


def _plain(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def _fleet_agent_dict(agent: pb.FleetAgent) -> dict:
    """A typed fleet status entry as plain data, in the shape the registry keeps it."""
    return {**_plain(agent.status), "replica": agent.replica, "last_seen": agent.last_seen,
            "swap_history": [_plain(swap) for swap in agent.swap_history],
            "connected_here": agent.connected_here}
