"""Receiving models and policies from the fleet, and swapping them in safely.

Every task's signed minimum version (its floor) is taken first: an agent
refuses edge model versions below it, and never lowers a floor it has seen.
For every assigned artifact: check the signed manifest → fetch the bytes to
a staging file while hashing (resuming from what is already on disk) →
check the digest → load a new ONNX Runtime session → smoke test on the
manifest's sample → swap the task's reference atomically → record the
outcome. A failure at any step leaves the running version untouched and is
reported with its reason. Verified versions stay on disk, so a restart
without the network comes up on the last verified model, and the previous
version is kept for an instant rollback.

Failures are of two sorts. A version that fails verification or whose
content is wrong (signature, digest, manifest, load, smoke test) is
reported and remembered: the agent does not try it again until it restarts.
A download that the network or the local disk cut short is *deferred*: not
a swap failure (a gateway's rolling restart must not halt a rollout), not
remembered, and :attr:`ModelManager.retry_wanted` asks the caller to apply
the assignment again after a backoff. Anything else that goes wrong with
one artifact is reported as its failure, not remembered, and never stops
the other artifacts or the caller's loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from edgecloud.core.artifacts import (
    Floor,
    Manifest,
    parse_floor,
    parse_manifest,
    sha256_file,
    smoke_test,
)
from edgecloud.core.errors import EdgecloudError, FailedPrecondition, InvalidInput
from edgecloud.core.files import (
    atomic_write,
    is_atomic_write_temp,
    remove_orphans,
    replace_durably,
)
from edgecloud.core.model import OnnxModel
from edgecloud.core.signing import verify
from edgecloud.core.tensors import signature_mismatch
from edgecloud.edge_agent.service import EdgeService
from edgecloud.router import Policy, PolicyError, parse_policy

log = structlog.get_logger("edgecloud.agent.models")

FETCH_ATTEMPTS = 3
"""Downloads tried in a row (each resuming where the last stopped) before deferring."""
MAX_UNREPORTED = 100
"""Swap outcomes kept for the next status report."""


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """One artifact the fleet wants this agent to run."""

    name: str
    version: str
    digest: str
    size: int
    manifest: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedFloor:
    """A task's minimum version document and its signature, as the operator made them."""

    document: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Assignment:
    """The desired models and policies, as the gateway sent them."""

    generation: int
    models: tuple[ArtifactRef, ...]
    policies: tuple[ArtifactRef, ...]
    replica: str = ""
    floors: tuple[SignedFloor, ...] = ()


@dataclass(frozen=True, slots=True)
class SwapOutcome:
    """What happened to one assigned artifact."""

    name: str
    version: str
    kind: str
    ok: bool
    reason: str = ""
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A task with only one half of what it needs: it serves nothing yet."""

    model_version: str
    policy_version: str
    waiting_for: str
    """``policy`` (a model arrived before any policy) or ``model``."""


class Fetcher(Protocol):
    """Streams an artifact's bytes from an offset (the gateway's FetchArtifact)."""

    def fetch(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        """Chunks from ``offset`` to the end."""
        ...


class SwapFailed(Exception):
    """A step of the swap failed; ``reason`` is what the operator sees."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FetchDeferred(Exception):
    """The artifact could not be fetched or staged now (network, gateway, local disk);
    it is tried again later and says nothing about the version."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ArtifactStore:
    """Verified artifacts and the agent's current state, on local disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.staging = self.root / "staging"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / "state.json"

    def blob(self, digest: str) -> Path:
        """Where a verified artifact lives."""
        return self.blobs / digest.removeprefix("sha256:")

    def staging_file(self, digest: str) -> Path:
        """Where an artifact is downloaded to before verification."""
        return self.staging / (digest.removeprefix("sha256:") + ".part")

    def load_state(self) -> dict:
        """The last verified assignment per task (empty when none)."""
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError):
            log.error("agent_state_damaged", path=str(self.state_path))
            return {}

    def save_state(self, state: dict) -> None:
        """Write the state atomically (temp file, fsync, rename)."""
        atomic_write(self.state_path, json.dumps(state, indent=2, sort_keys=True).encode())

    def remove_orphans(self) -> list[Path]:
        """Delete what an earlier run left half-written: downloads (``staging/*.part``,
        whose unsynced tails a crash may have garbled, so they are fetched again rather
        than resumed) and temp files of atomic writes. Call it at start, before any
        download; returns the files removed."""
        return [*remove_orphans([self.staging], lambda name: name.endswith(".part")),
                *remove_orphans([self.root, self.blobs], is_atomic_write_temp)]

    def keep_only(self, digests: set[str]) -> None:
        """Delete verified artifacts that are neither current nor previous."""
        keep = {d.removeprefix("sha256:") for d in digests}
        for path in self.blobs.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _ref_record(ref: ArtifactRef) -> dict:
    return {"name": ref.name, "version": ref.version, "digest": ref.digest, "size": ref.size,
            "manifest": base64.b64encode(ref.manifest).decode(),
            "signature": base64.b64encode(ref.signature).decode()}


def _ref_from_record(record: dict) -> ArtifactRef:
    return ArtifactRef(record["name"], record["version"], record["digest"], int(record["size"]),
                       base64.b64decode(record["manifest"]), base64.b64decode(record["signature"]))


class ModelManager:
    """Applies fleet assignments to the agent's :class:`EdgeService`."""

    def __init__(self, service: EdgeService, store: ArtifactStore, fetcher: Fetcher | None, *,
                 trust_key=None, onnx_threads: int = 1,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.store = store
        self.fetcher = fetcher
        self.trust_key = trust_key
        self._onnx_threads = onnx_threads
        self._clock = clock
        self._failed: dict[tuple[str, str, str], str] = {}
        self._state = store.load_state()
        self._lock = asyncio.Lock()
        self.outcomes: list[SwapOutcome] = []
        """Outcomes not yet reported to the gateway."""
        self.last_outcome: SwapOutcome | None = None
        self.waiting: dict[str, Waiting] = {}
        """Assigned tasks that wait for their policy or model, as of the last assignment."""
        self.retry_wanted = False
        """The last :meth:`apply` deferred an artifact: apply the assignment again later."""
        self.applied_generation = int(self._state.get("generation", 0))
        self.floors: dict[str, Floor] = self._saved_floors()
        """Each task's minimum edge version, as signed by the operator (never lowered)."""

    # -- restore -------------------------------------------------------------------

    async def restore(self, skip: set[str]) -> list[str]:
        """Bring back the last verified version of every task not in ``skip``."""
        restored = []
        for name, entry in sorted(self._state.get("tasks", {}).items()):
            if name in skip or "model" not in entry or "policy" not in entry:
                continue
            try:
                model_ref = _ref_from_record(entry["model"])
                policy_ref = _ref_from_record(entry["policy"])
                manifest = self._check_manifest(model_ref, "model")
                policy = await self._read_policy(policy_ref, fetch=False)
                model = await self._load_model(model_ref, manifest, fetch=False)
                self.service.install(model, policy, model_digest=model_ref.digest,
                                     policy_digest=policy_ref.digest)
                restored.append(name)
                log.info("task_restored", task=name, model_version=model_ref.version,
                         policy_version=policy_ref.version)
            except (SwapFailed, EdgecloudError, KeyError, ValueError, OSError) as exc:
                reason = getattr(exc, "reason", None) or getattr(exc, "message", str(exc))
                log.error("task_restore_failed", task=name, error=reason)
        return restored

    # -- apply ----------------------------------------------------------------------

    async def apply(self, assignment: Assignment) -> list[SwapOutcome]:
        """Bring every assigned task to its assigned versions; returns the outcomes."""
        async with self._lock:
            outcomes: list[SwapOutcome] = []
            policies = {ref.name: ref for ref in assignment.policies}
            models = {ref.name: ref for ref in assignment.models}
            self.waiting = {}
            self._take_floors(assignment.floors)
            self.retry_wanted = False
            for name in sorted(set(models) | set(policies)):
                outcome = await self._apply_task(name, models.get(name), policies.get(name))
                outcomes.extend(outcome)
            self.applied_generation = assignment.generation
            self._state["generation"] = assignment.generation
            await self._save()
            self.outcomes.extend(outcomes)
            del self.outcomes[:-MAX_UNREPORTED]  # bounded while the gateway is unreachable
            if outcomes:
                self.last_outcome = outcomes[-1]
            return outcomes

    # -- floors -------------------------------------------------------------------

    def _saved_floors(self) -> dict[str, Floor]:
        floors = {}
        for name, record in (self._state.get("floors") or {}).items():
            try:
                floors[name] = parse_floor(base64.b64decode(record["document"]))
            except (KeyError, TypeError, ValueError, InvalidInput):
                log.error("agent_state_floor_damaged", task=name)
        return floors

    def _take_floors(self, floors: tuple[SignedFloor, ...]) -> None:
        """Raise each task's floor to the signed ones received; refuse unsigned or
        badly signed floors (with a trust key) and never lower one."""
        for signed in floors:
            try:
                floor = parse_floor(signed.document)
            except InvalidInput as exc:
                log.error("floor_refused", error=exc.message)
                continue
            if self.trust_key is not None and not verify(self.trust_key, signed.document,
                                                         signed.signature):
                log.error("floor_refused", task=floor.name, version=floor.version,
                          error="not signed by the trusted operator key")
                continue
            current = self.floors.get(floor.name)
            if current is not None:
                if not current.allows(floor.version):  # lower: a replay, or a lie
                    log.warning("floor_not_lowered", task=floor.name, floor=current.version,
                                offered=floor.version)
                    continue
                if floor.allows(current.version):  # the same version
                    continue
            self.floors[floor.name] = floor
            self._state.setdefault("floors", {})[floor.name] = {
                "document": base64.b64encode(signed.document).decode(),
                "signature": base64.b64encode(signed.signature).decode()}
            log.info("floor_raised", task=floor.name, version=floor.version)

    def _check_floor(self, name: str, manifest: Manifest) -> None:
        floor = self.floors.get(name)
        if floor is not None and not floor.allows(manifest.version):
            raise SwapFailed(f"version {manifest.version} is below the signed minimum version "
                             f"{floor.version} of task {name}: refused as a downgrade")

    def _current(self, name: str):
        try:
            return self.service.task(name).current
        except EdgecloudError:
            return None

    async def _apply_task(self, name: str, model_ref: ArtifactRef | None,
                          policy_ref: ArtifactRef | None) -> list[SwapOutcome]:
        current = self._current(name)
        want_model = model_ref is not None and not self._runs(name, "model", model_ref)
        want_policy = policy_ref is not None and not self._runs(name, "policy", policy_ref)
        if model_ref is not None and self._failed_before(model_ref):
            want_model = False
        if policy_ref is not None and self._failed_before(policy_ref):
            want_policy = False
        if not want_model and not want_policy:
            return []
        outcomes = []
        policy: Policy | None = None
        if want_policy:
            assert policy_ref is not None
            try:
                policy = await self._read_policy(policy_ref, fetch=True)
            except Exception as exc:  # each artifact fails on its own
                outcomes.extend(self._failure(policy_ref, "policy", exc))
                want_policy = False
        if want_model:
            assert model_ref is not None
            try:
                manifest = self._check_manifest(model_ref, "model")
                self._check_floor(name, manifest)
                model = await self._load_model(model_ref, manifest, fetch=True)
                try:
                    await asyncio.to_thread(smoke_test, model, manifest)
                except EdgecloudError as exc:
                    raise SwapFailed(exc.message) from None
                active_policy = policy if policy is not None else (
                    current.policy if current is not None else None)
                if active_policy is None:
                    # The policy is not published yet: wait for it (not a failure).
                    log.info("model_waiting_for_policy", task=name, version=model_ref.version)
                    self.waiting[name] = Waiting(model_ref.version, "", "policy")
                    return outcomes
                if current is not None:
                    problem = signature_mismatch(current.model.inputs, current.model.outputs,
                                                 model.inputs, model.outputs)
                    if problem is not None:
                        raise SwapFailed(f"model does not match the task's signature: {problem}")
                try:
                    self.service.bind(model, active_policy)
                except FailedPrecondition as exc:
                    raise SwapFailed(exc.message) from None
                # Written before the swap: once the new version serves, a restart (even
                # one that cuts this coroutine short) comes back on it.
                await self._remember(name, model_ref,
                                     policy_ref if policy is not None else None)
                self.service.install(
                    model, active_policy, model_digest=model_ref.digest,
                    policy_digest=(policy_ref.digest if policy is not None and policy_ref
                                   else current.policy_digest if current else ""),
                )
                outcomes.append(self._ok(model_ref, "model"))
                if policy is not None and policy_ref is not None:
                    outcomes.append(self._ok(policy_ref, "policy"))
                return outcomes
            except Exception as exc:  # each artifact fails on its own
                outcomes.extend(self._failure(model_ref, "model", exc))
        if want_policy and policy is not None and policy_ref is not None:
            current = self._current(name)
            if current is None:
                # No model for this task yet: the policy waits for one (not a failure).
                log.info("policy_waiting_for_model", task=name, version=policy_ref.version)
                self.waiting[name] = Waiting("", policy_ref.version, "model")
                return outcomes
            try:
                self.service.bind(current.model, policy)
                await self._remember(name, None, policy_ref)  # before the swap, as for a model
                self.service.install(current.model, policy, model_digest=current.model_digest,
                                     policy_digest=policy_ref.digest)
            except Exception as exc:  # each artifact fails on its own
                outcomes.extend(self._failure(policy_ref, "policy", exc))
                return outcomes
            outcomes.append(self._ok(policy_ref, "policy"))
        return outcomes

    def _runs(self, name: str, kind: str, ref: ArtifactRef) -> bool:
        """True when the task already runs exactly ``ref``: same bytes *and* same version.

        Versions are identities: the same bytes published again as a new version are
        applied (reloaded and reported under the new version), not skipped.
        """
        current = self._current(name)
        if current is None:
            return False
        digest = current.model_digest if kind == "model" else current.policy_digest
        if digest != ref.digest:
            return False
        recorded = self._state.get("tasks", {}).get(name, {}).get(kind)
        if recorded is not None and recorded.get("digest") == ref.digest:
            version = recorded.get("version")
        else:  # served from a local file given at start: its own version
            version = current.model.version if kind == "model" else current.policy.version
        return version == ref.version

    def running_version(self, name: str, kind: str) -> str | None:
        """The fleet version the task runs (as assigned), when it came from the fleet."""
        current = self._current(name)
        recorded = self._state.get("tasks", {}).get(name, {}).get(kind)
        if current is None or recorded is None:
            return None
        digest = current.model_digest if kind == "model" else current.policy_digest
        return recorded.get("version") if recorded.get("digest") == digest else None

    def _failed_before(self, ref: ArtifactRef) -> bool:
        return (ref.name, ref.version, ref.digest) in self._failed

    def _ok(self, ref: ArtifactRef, kind: str) -> SwapOutcome:
        log.info("swap_succeeded", kind=kind, task=ref.name, version=ref.version)
        return SwapOutcome(ref.name, ref.version, kind, True, "", self._clock())

    def _fail(self, ref: ArtifactRef, kind: str, reason: str, *,
              remember: bool = True) -> SwapOutcome:
        if remember:
            self._failed[(ref.name, ref.version, ref.digest)] = reason
        log.error("swap_failed", kind=kind, task=ref.name, version=ref.version, reason=reason,
                  retried=not remember)
        return SwapOutcome(ref.name, ref.version, kind, False, reason, self._clock())

    def _failure(self, ref: ArtifactRef, kind: str, exc: Exception) -> list[SwapOutcome]:
        """What an error in one artifact's swap becomes: a failure, remembered when it is the
        version's fault; nothing but a later retry when the download was cut short."""
        if isinstance(exc, FetchDeferred | OSError):
            reason = exc.reason if isinstance(exc, FetchDeferred) else (
                f"local disk: {exc.strerror or type(exc).__name__}")
            self.retry_wanted = True
            self.service.metrics.fetch_deferred()
            log.warning("swap_deferred", kind=kind, task=ref.name, version=ref.version,
                        reason=reason)
            return []
        if isinstance(exc, SwapFailed):
            return [self._fail(ref, kind, exc.reason)]
        if isinstance(exc, EdgecloudError):
            return [self._fail(ref, kind, exc.message)]
        log.exception("swap_crashed", kind=kind, task=ref.name, version=ref.version)
        return [self._fail(ref, kind, f"unexpected {type(exc).__name__} (see the agent's log, "
                           "event swap_crashed); tried again with the next assignment",
                           remember=False)]

    async def _remember(self, name: str, model_ref: ArtifactRef | None,
                        policy_ref: ArtifactRef | None) -> None:
        tasks = self._state.setdefault("tasks", {})
        entry = tasks.setdefault(name, {})
        if model_ref is not None:
            if "model" in entry and entry["model"]["digest"] != model_ref.digest:
                entry["previous_model"] = entry["model"]
            entry["model"] = _ref_record(model_ref)
        if policy_ref is not None:
            entry["policy"] = _ref_record(policy_ref)
        await self._save()
        keep = set()
        for item in tasks.values():
            for key in ("model", "previous_model", "policy"):
                if key in item:
                    keep.add(item[key]["digest"])
        await asyncio.to_thread(self.store.keep_only, keep)

    async def _save(self) -> None:
        """Write the state off the event loop (a copy, so later edits cannot tear it)."""
        snapshot = json.loads(json.dumps(self._state))
        await asyncio.to_thread(self.store.save_state, snapshot)

    # -- steps -----------------------------------------------------------------------

    def _check_manifest(self, ref: ArtifactRef, kind: str) -> Manifest:
        try:
            manifest = parse_manifest(ref.manifest)
        except InvalidInput as exc:
            raise SwapFailed(exc.message) from None
        if self.trust_key is not None and not ref.signature:
            raise SwapFailed("missing signature: this agent loads only artifacts signed "
                             "with the trusted operator key")
        if self.trust_key is not None and not verify(self.trust_key, ref.manifest,
                                                     ref.signature):
            raise SwapFailed("bad signature: the manifest is not signed by the trusted "
                             "operator key")
        if manifest.kind != kind:
            raise SwapFailed(f"manifest is for a {manifest.kind}, expected a {kind}")
        if (manifest.name, manifest.version, manifest.digest, manifest.size) != (
                ref.name, ref.version, ref.digest, ref.size):
            raise SwapFailed("manifest does not describe the assigned artifact")
        if kind == "model" and manifest.target != "edge":
            raise SwapFailed(f"model {manifest.name} version {manifest.version} is a "
                             f"{manifest.target} model")
        return manifest

    async def _ensure_blob(self, ref: ArtifactRef, fetch: bool) -> Path:
        path = self.store.blob(ref.digest)
        if path.is_file():
            return path
        if not fetch or self.fetcher is None:
            raise SwapFailed(f"artifact {ref.digest} is not on disk")
        last_error = ""
        for attempt in range(FETCH_ATTEMPTS):
            try:
                return await self._download(ref)
            except SwapFailed:
                raise
            except EdgecloudError as exc:  # from the gateway: the network, not the version
                last_error = exc.message
                log.warning("fetch_interrupted", digest=ref.digest, attempt=attempt + 1,
                            error=exc.message)
                if attempt + 1 < FETCH_ATTEMPTS:
                    await asyncio.sleep(0.1 * (attempt + 1))
        raise FetchDeferred(f"download interrupted {FETCH_ATTEMPTS} times: {last_error}")

    async def _download(self, ref: ArtifactRef) -> Path:
        assert self.fetcher is not None
        staging = self.store.staging_file(ref.digest)
        hasher = hashlib.sha256()
        offset = 0
        if staging.exists():
            offset = staging.stat().st_size
            if offset > ref.size:
                staging.unlink()
                offset = 0
            else:
                await asyncio.to_thread(_hash_into, hasher, staging)
        if offset:
            log.info("fetch_resumed", digest=ref.digest, offset=offset, size=ref.size)
        # Hashing and disk writes run on a worker thread, chunk by chunk, so the
        # event loop keeps answering requests while a large model downloads.
        f = await asyncio.to_thread(open, staging, "ab")
        try:
            async for chunk in self.fetcher.fetch(ref.digest, offset):
                if offset + len(chunk) > ref.size:
                    break
                await asyncio.to_thread(_append, f, hasher, chunk)
                offset += len(chunk)
            await asyncio.to_thread(_sync, f)
        finally:
            f.close()
        if offset != ref.size:
            staging.unlink(missing_ok=True)
            raise SwapFailed(f"artifact is truncated or too long: {offset} bytes, "
                             f"manifest says {ref.size}")
        got = "sha256:" + hasher.hexdigest()
        if got != ref.digest:
            staging.unlink(missing_ok=True)
            raise SwapFailed(f"digest mismatch: downloaded {got}, manifest says {ref.digest}")
        final = self.store.blob(ref.digest)
        await asyncio.to_thread(replace_durably, staging, final)
        return final

    async def _load_model(self, ref: ArtifactRef, manifest: Manifest, fetch: bool) -> OnnxModel:
        path = await self._ensure_blob(ref, fetch)
        if not fetch:
            digest, _ = await asyncio.to_thread(sha256_file, path)
            if digest != ref.digest:
                raise SwapFailed(f"artifact on disk no longer matches {ref.digest}")
        try:
            model = await asyncio.to_thread(OnnxModel.load, path, name=ref.name,
                                            version=ref.version,
                                            intra_op_threads=self._onnx_threads)
        except EdgecloudError as exc:
            raise SwapFailed(f"cannot load the model: {exc.message}") from None
        declared_in = tuple(t.spec() for t in manifest.inputs)
        declared_out = tuple(t.spec() for t in manifest.outputs)
        problem = signature_mismatch(declared_in, declared_out, model.inputs, model.outputs)
        if problem is not None:
            raise SwapFailed(f"model does not match its manifest: {problem}")
        return model

    async def _read_policy(self, ref: ArtifactRef, fetch: bool) -> Policy:
        self._check_manifest(ref, "policy")
        path = await self._ensure_blob(ref, fetch)
        data = await asyncio.to_thread(path.read_bytes)
        if "sha256:" + hashlib.sha256(data).hexdigest() != ref.digest:
            raise SwapFailed("policy on disk does not match its digest")
        try:
            policy = parse_policy(data)
        except PolicyError as exc:
            raise SwapFailed(f"policy document: {exc}") from None
        if policy.name != ref.name:
            raise SwapFailed(f"policy document is for task {policy.name!r}, not {ref.name!r}")
        return policy


def _append(f, hasher, chunk: bytes) -> None:
    f.write(chunk)
    hasher.update(chunk)


def _sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _hash_into(hasher, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
