"""The embedded registry: a directory that several gateway replicas may share.

Layout under the root::

    blobs/sha256/<hex>                content-addressed, immutable artifact bytes
    blobs/tmp/                        uploads in progress (never visible as versions)
    models/<name>/<target>/<version>.json  signed manifest envelope, immutable
                                      (target: edge or cloud; a task has both)
    models/<name>/<target>/<version>.reserved  a version number handed to a publisher,
                                      held until it publishes that version
    policies/<name>/<version>.json    signed manifest envelope, immutable
    rollouts/<name>.json              one rollout record per edge model (what agents run)
    rollouts/cloud/<name>.json        one rollout record per cloud model (what replicas serve)
    floors/<name>.json                the task's signed minimum edge version (it only rises)
    replicas/<replica>.json           what each gateway replica serves, rewritten as it changes
    agents/<agent id>.json            last status each agent reported
    generation                        bumped on every change; replicas watch it
    .lock                             serialises writers (flock)

Every write is a temp file, fsync, rename; a crash mid-publish leaves at most
an orphan temp file, never a half-visible version.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecloud.core.artifacts import (
    NAME_RE,
    Floor,
    Manifest,
    now_iso,
    parse_floor,
    parse_manifest,
    version_key,
)
from edgecloud.core.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied
from edgecloud.core.files import (
    atomic_write,
    is_atomic_write_temp,
    remove_orphans,
    replace_durably,
)
from edgecloud.core.signing import verify
from edgecloud.router import Policy, PolicyError, parse_policy

RolloutState = Literal["none", "active", "paused", "halted", "promoted", "rolled_back"]
Target = Literal["edge", "cloud"]
TARGETS = ("edge", "cloud")
ORPHAN_AGE_S = 3600.0
"""Temp files untouched this long are orphans of a crashed writer (an upload in progress
writes its temp file continuously; an atomic write lives for milliseconds)."""
REPLICA_HEARTBEAT_S = 30.0
"""How often a gateway replica rewrites what it serves even when nothing changed; an entry
much older than this belongs to a replica that stopped without saying so."""
_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


class Rollout(BaseModel):
    """Which version of a model each agent should run."""

    model_config = ConfigDict(extra="forbid")

    name: str
    target: Target = "edge"
    """``edge``: versions agents run. ``cloud``: versions the gateway replicas serve."""
    stable: str | None = None
    """Version every agent runs (edge), or every replica serves (cloud), unless the rollout
    picks the candidate."""
    candidate: str | None = None
    """Version being rolled out, if any. A new cloud version is the candidate (at 0%) until
    it is promoted."""
    percent: float = Field(0.0, ge=0.0, le=100.0)
    """Edge: share of matching agents (by a stable hash of their id) that get the
    candidate. Cloud: share of requests the replicas answer with the candidate."""
    selector: dict[str, str] = Field(default_factory=dict)
    """Labels an agent must have to be considered for the candidate."""
    max_failures: int = Field(3, ge=1)
    """Failed swaps to the candidate that halt the rollout."""
    state: RolloutState = "none"
    pinned: dict[str, str] = Field(default_factory=dict)
    """Agent id -> version, overriding everything else."""
    failures: dict[str, str] = Field(default_factory=dict)
    """Agent id (cloud: replica) -> why its swap to the candidate failed."""
    history: list[str] = Field(default_factory=list)
    """What happened, newest last."""
    updated: str = ""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A stored manifest with the exact signed bytes."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class FloorEnvelope:
    """A stored floor with the exact signed bytes."""

    floor: Floor
    document: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything assignments are computed from, as of one generation."""

    generation: int
    models: dict[str, dict[str, Envelope]]
    """Edge models: name -> version -> envelope (oldest first)."""
    cloud_models: dict[str, dict[str, Envelope]]
    """Cloud models: name -> version -> envelope (oldest first)."""
    policies: dict[str, dict[str, Envelope]]
    rollouts: dict[str, Rollout]
    """Edge rollouts by model name."""
    cloud_rollouts: dict[str, Rollout] = field(default_factory=dict)
    """Cloud rollouts by model name."""
    floors: dict[str, FloorEnvelope] = field(default_factory=dict)
    """Signed minimum edge versions by task name."""


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, data, make_parents=True)


def registry_path(location: str | Path) -> Path:
    """The directory a registry location names; InvalidInput for a URL (not supported yet)."""
    text = str(location)
    scheme, sep, _ = text.partition("://")
    if sep:
        raise InvalidInput(f"registry {text}: {scheme}:// registries are not supported yet; "
                           "give a directory")
    return Path(text)


def is_registry(path: Path) -> bool:
    """True when ``path`` holds a registry's layout."""
    return (path / "models").is_dir() and (path / "blobs" / "sha256").is_dir()


class Registry:
    """Versions, policies, rollouts and agent reports in one directory.

    With ``create`` false the directory must already hold a registry (NotFound
    otherwise), so reading never leaves an empty registry behind. A gateway's
    data directory (a folder holding ``registry/``) is refused with InvalidInput
    naming the registry inside it.
    """

    def __init__(self, root: Path, trust_key=None, *, create: bool = True) -> None:
        self.root = Path(root)
        self.trust_key = trust_key
        if not is_registry(self.root):
            inner = self.root / "registry"
            if is_registry(inner):
                raise InvalidInput(f"{self.root} is a gateway data directory, not a registry: "
                                   f"use its registry, {inner}")
            if not create:
                raise NotFound(f"{self.root} holds no registry (nothing was published there)")
        for sub in ("blobs/sha256", "blobs/tmp", "models", "policies", "rollouts", "agents",
                    "replicas", "floors"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / ".lock"
        self._lock_path.touch(exist_ok=True)

    # -- locking and generation ------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "rb+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def generation(self) -> int:
        """The current generation (0 for an empty registry)."""
        try:
            return int((self.root / "generation").read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _bump(self) -> int:
        generation = self.generation() + 1
        _atomic_write(self.root / "generation", f"{generation}\n".encode())
        return generation

    def remove_orphans(self, older_than_s: float = ORPHAN_AGE_S) -> list[Path]:
        """Delete temp files that crashed writers left (uploads under ``blobs/tmp/``,
        atomic writes' ``.NAME.XXXX.tmp``) once untouched for ``older_than_s``: replicas
        share the registry, and a younger one may be another replica's write in progress.
        Returns the files removed."""
        folders = [self.root, self.root / "rollouts", self.root / "rollouts" / "cloud",
                   self.root / "agents", self.root / "replicas", self.root / "floors",
                   *(self.root / "policies").glob("*"), *(self.root / "models").glob("*/*")]
        return [*remove_orphans([self.root / "blobs" / "tmp"], lambda _: True,
                                older_than_s=older_than_s),
                *remove_orphans(folders, is_atomic_write_temp, older_than_s=older_than_s)]

    # -- blobs -------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Path of a stored blob; NotFound if the registry does not hold it."""
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest or ""):
            raise InvalidInput(f"digest {digest!r} is not sha256:<64 hex digits>")
        path = self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not path.is_file():
            raise NotFound(f"artifact {digest} is not in the registry")
        return path

    def _store_blob(self, chunks: Iterable[bytes], digest: str, size: int) -> None:
        final = self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
        # A name of its own: two publishers may upload the same bytes at once.
        fd, name = tempfile.mkstemp(dir=self.root / "blobs" / "tmp", prefix=final.name + ".")
        tmp = Path(name)
        hasher = hashlib.sha256()
        written = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    written += len(chunk)
                    if written > size:
                        raise InvalidInput(f"artifact is larger than the manifest's size {size}")
                    hasher.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if written != size:
                raise InvalidInput(
                    f"artifact is truncated: {written} bytes, manifest says {size}"
                )
            got = "sha256:" + hasher.hexdigest()
            if got != digest:
                raise InvalidInput(f"artifact digest {got} does not match the manifest {digest}")
            os.chmod(tmp, 0o644)
            replace_durably(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    # -- publishing ---------------------------------------------------------------

    def _check_signature(self, manifest_bytes: bytes, signature: bytes) -> None:
        if self.trust_key is None:
            return
        if not signature:
            raise PermissionDenied("a signature is required: this gateway trusts only "
                                   "publications signed with the operator's key; publish "
                                   "with --key FILE (the private key)")
        if not verify(self.trust_key, manifest_bytes, signature):
            raise PermissionDenied("manifest signature does not verify with the trusted key: "
                                   "was it signed with the operator's private key?")

    def _envelope_path(self, kind: str, name: str, version: str, target: str = "") -> Path:
        if kind == "model":
            return self.root / "models" / name / target / f"{version}.json"
        return self.root / "policies" / name / f"{version}.json"

    def publish_model(self, manifest_bytes: bytes, signature: bytes, chunks: Iterable[bytes],
                      promote: bool = False) -> tuple[Manifest, int]:
        """Store a model version; returns its manifest and the new generation.

        Whatever the outcome, a reservation of the version (see :meth:`reserve_version`)
        ends here.
        """
        manifest = parse_manifest(manifest_bytes)
        if manifest.kind != "model" or manifest.target is None:
            raise InvalidInput("a model manifest needs kind 'model' and a target")
        path = self._envelope_path("model", manifest.name, manifest.version, manifest.target)
        try:
            return self._publish_model(manifest, manifest_bytes, signature, chunks, promote,
                                        path)
        finally:
            path.with_suffix(".reserved").unlink(missing_ok=True)

    def _publish_model(self, manifest: Manifest, manifest_bytes: bytes, signature: bytes,
                       chunks: Iterable[bytes], promote: bool,
                       path: Path) -> tuple[Manifest, int]:
        self._check_signature(manifest_bytes, signature)
        if path.exists():
            raise FailedPrecondition(
                f"{manifest.target} model {manifest.name} version {manifest.version} already "
                "exists; versions are immutable"
            )
        # Edge and cloud models of a task, and all their versions, share one signature
        # (input names included: requests reach either model under the same names).
        existing = [*self.model_versions(manifest.name, "edge").values(),
                    *self.model_versions(manifest.name, "cloud").values()]
        if existing:
            other = existing[0].manifest
            problem = _signature_problem(other, manifest)
            if problem:
                raise FailedPrecondition(
                    f"{manifest.target} model {manifest.name} version {manifest.version} does "
                    f"not match the task's signature: {problem}"
                )
        if manifest.target == "edge" and promote:
            self._check_floor(manifest.name, manifest.version, "publish --promote")
        if manifest.target == "edge":
            policy = self._newest_policy(manifest.name)
            if policy is not None:
                problem = _scores_problem(policy, manifest)
                if problem:
                    raise FailedPrecondition(problem)
        self._store_blob(chunks, manifest.digest, manifest.size)
        with self._locked():
            if path.exists():
                raise FailedPrecondition(
                    f"model {manifest.name} version {manifest.version} already exists"
                )
            _atomic_write(path, _envelope_bytes(manifest_bytes, signature))
            rollout = (self.rollout(manifest.name, manifest.target)
                       or Rollout(name=manifest.name, target=manifest.target))
            if rollout.stable is None or promote:
                rollout.stable = manifest.version
                rollout.candidate = None
                rollout.percent = 0.0
                rollout.failures = {}
                rollout.state = "promoted" if promote else "none"
                rollout.history.append(f"{now_iso()} stable {manifest.version} (publish)")
                self._write_rollout(rollout)
            elif manifest.target == "cloud":
                # Not served until promoted (or given a share of the requests).
                if rollout.candidate is not None and rollout.percent > 0:
                    rollout.history.append(f"{now_iso()} candidate {rollout.candidate} at "
                                           f"{rollout.percent:g}% replaced")
                rollout.candidate = manifest.version
                rollout.percent = 0.0
                rollout.failures = {}
                rollout.state = "active"
                rollout.history.append(f"{now_iso()} candidate {manifest.version} at 0% "
                                       "(publish)")
                self._write_rollout(rollout)
            generation = self._bump()
        return manifest, generation

    def publish_policy(self, manifest_bytes: bytes, signature: bytes,
                       document: bytes) -> tuple[Manifest, int]:
        """Store a policy version after checking that it parses.

        Whatever the outcome, a reservation of the version (see :meth:`reserve_version`)
        ends here.
        """
        manifest = parse_manifest(manifest_bytes)
        if manifest.kind != "policy":
            raise InvalidInput("a policy manifest needs kind 'policy'")
        try:
            return self._publish_policy(manifest, manifest_bytes, signature, document)
        finally:
            self._envelope_path("policy", manifest.name, manifest.version).with_suffix(
                ".reserved").unlink(missing_ok=True)

    def _publish_policy(self, manifest: Manifest, manifest_bytes: bytes, signature: bytes,
                        document: bytes) -> tuple[Manifest, int]:
        self._check_signature(manifest_bytes, signature)
        try:
            policy = parse_policy(document)
        except PolicyError as exc:
            raise InvalidInput(f"policy document: {exc}") from None
        if policy.name != manifest.name:
            raise InvalidInput(
                f"policy document is for task {policy.name!r}, manifest names {manifest.name!r}"
            )
        if policy.version != manifest.version:
            raise InvalidInput(
                f"policy document says version {policy.version!r}, manifest names "
                f"{manifest.version!r}"
            )
        for edge in self._routed_edge_versions(manifest.name):
            problem = _scores_problem(policy, edge.manifest, manifest.version)
            if problem:
                raise FailedPrecondition(problem)
        path = self._envelope_path("policy", manifest.name, manifest.version)
        if path.exists():
            raise FailedPrecondition(
                f"policy {manifest.name} version {manifest.version} already exists"
            )
        self._store_blob([document], manifest.digest, manifest.size)
        with self._locked():
            if path.exists():  # a publisher racing for the same version got here first
                raise FailedPrecondition(
                    f"policy {manifest.name} version {manifest.version} already exists"
                )
            _atomic_write(path, _envelope_bytes(manifest_bytes, signature))
            generation = self._bump()
        return manifest, generation

    def _routed_edge_versions(self, name: str) -> list[Envelope]:
        """The edge versions a policy of task ``name`` may route: those the rollout assigns
        (stable, candidate, pinned), else the newest."""
        versions = self.model_versions(name, "edge")
        if not versions:
            return []
        rollout = self.rollout(name)
        named = set()
        if rollout is not None:
            named = {rollout.stable, rollout.candidate, *rollout.pinned.values()} - {None}
        chosen = [versions[v] for v in versions if v in named]
        return chosen or [list(versions.values())[-1]]

    def _newest_policy(self, name: str) -> Policy | None:
        """The task's newest policy, or None when it has none (or it cannot be read)."""
        versions = self.policy_versions(name)
        if not versions:
            return None
        envelope = list(versions.values())[-1]
        try:
            return parse_policy(self.blob_path(envelope.manifest.digest).read_bytes())
        except (OSError, PolicyError, NotFound, InvalidInput):
            return None

    # -- reading --------------------------------------------------------------------

    def _read_envelopes(self, base: Path) -> dict[str, Envelope]:
        out = {}
        if not base.is_dir():
            return out
        for path in base.glob("*.json"):
            envelope = _read_envelope(path)
            if envelope is not None:
                out[envelope.manifest.version] = envelope
        return dict(sorted(out.items(), key=lambda kv: version_key(kv[0])))

    def model_names(self, target: str = "edge") -> list[str]:
        """Names with at least one model version for ``target``."""
        return sorted(p.name for p in (self.root / "models").iterdir()
                      if (p / target).is_dir() and any((p / target).glob("*.json")))

    def model_versions(self, name: str, target: str = "edge") -> dict[str, Envelope]:
        """Version -> envelope, oldest first."""
        return self._read_envelopes(self.root / "models" / name / target)

    def policy_versions(self, name: str) -> dict[str, Envelope]:
        """Version -> envelope, oldest first."""
        return self._read_envelopes(self.root / "policies" / name)

    def policy_names(self) -> list[str]:
        """Names with at least one policy version."""
        return sorted(p.name for p in (self.root / "policies").iterdir() if p.is_dir())

    def reserve_version(self, name: str, target: str) -> str:
        """The next numeric version of a model (target ``edge`` or ``cloud``) or of a
        task's policy (target ``policy``), never handed out twice.

        Under the lock: one more than the highest version published or reserved
        (``"1"`` for the first). The reservation holds until a publication of that
        version ends; a publisher that never comes back leaves a gap in the numbers.
        """
        if not valid_name(name):
            raise InvalidInput(f"name {name!r} is not valid")
        if target not in ("edge", "cloud", "policy"):
            raise InvalidInput(f"target must be 'edge', 'cloud' or 'policy' (got {target!r})")
        base = (self.root / "policies" / name if target == "policy"
                else self.root / "models" / name / target)
        with self._locked():
            taken = [p.stem for pattern in ("*.json", "*.reserved") for p in base.glob(pattern)]
            version = str(max((int(v) for v in taken if v.isdigit()), default=0) + 1)
            base.mkdir(parents=True, exist_ok=True)
            base.joinpath(f"{version}.reserved").touch()
        return version

    def _rollout_path(self, name: str, target: str) -> Path:
        if target == "cloud":
            return self.root / "rollouts" / "cloud" / f"{name}.json"
        return self.root / "rollouts" / f"{name}.json"

    def rollout(self, name: str, target: str = "edge") -> Rollout | None:
        """The model's rollout record for ``target``, if it has one."""
        path = self._rollout_path(name, target)
        try:
            return Rollout.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError:
            raise InvalidInput(f"rollout record {path} is damaged") from None

    def _write_rollout(self, rollout: Rollout) -> None:
        rollout.updated = now_iso()
        rollout.history = rollout.history[-50:]
        _atomic_write(self._rollout_path(rollout.name, rollout.target),
                      rollout.model_dump_json(indent=2).encode())

    def snapshot(self) -> Snapshot:
        """All versions and rollouts as of the current generation."""
        generation = self.generation()
        models = {name: self.model_versions(name) for name in self.model_names()}
        cloud = {name: self.model_versions(name, "cloud") for name in self.model_names("cloud")}
        policies = {name: self.policy_versions(name) for name in self.policy_names()}
        rollouts = {}
        for name in models:
            record = self.rollout(name)
            if record is not None:
                rollouts[name] = record
        cloud_rollouts = {}
        for name in cloud:
            record = self.rollout(name, "cloud")
            if record is not None:
                cloud_rollouts[name] = record
        floors = {}
        for path in sorted((self.root / "floors").glob("*.json")):
            envelope = _read_floor(path)
            if envelope is not None:
                floors[envelope.floor.name] = envelope
        return Snapshot(generation, models, cloud, policies, rollouts, cloud_rollouts, floors)

    # -- floors -------------------------------------------------------------------------

    def floor(self, name: str) -> FloorEnvelope | None:
        """The task's signed minimum edge version, if it has one."""
        if not valid_name(name):
            return None
        return _read_floor(self.root / "floors" / f"{name}.json")

    def _check_floor(self, name: str, version: str, what: str) -> None:
        """FailedPrecondition when ``version`` of ``name``'s edge model is below its floor."""
        envelope = self.floor(name)
        if envelope is not None and not envelope.floor.allows(version):
            raise FailedPrecondition(
                f"{what}: version {version} of {name} is below the task's signed minimum "
                f"version {envelope.floor.version}; agents would refuse it")

    def publish_floor(self, document: bytes, signature: bytes) -> tuple[Floor, int]:
        """Store a task's signed minimum edge version; returns it and the new generation.

        The version must be published; a floor never goes down; and the versions the
        task's rollout assigns (stable, candidate, pins) must be at or above it, or
        agents would refuse what they are told to run.
        """
        floor = parse_floor(document)
        self._check_signature(document, signature)
        versions = self.model_versions(floor.name, "edge")
        if floor.version not in versions:
            raise NotFound(f"model {floor.name!r} has no edge version {floor.version!r}"
                           + (f" (versions: {', '.join(versions)})" if versions else ""))
        with self._locked():
            current = self.floor(floor.name)
            if current is not None and not current.floor.allows(floor.version):
                raise FailedPrecondition(
                    f"the floor of {floor.name} is version {current.floor.version}; a floor "
                    f"never goes down (agents that saw it keep it)")
            rollout = self.rollout(floor.name)
            if rollout is not None:
                below = sorted({v for v in (rollout.stable, rollout.candidate,
                                            *rollout.pinned.values())
                                if v is not None and not floor.allows(v)}, key=version_key)
                if below:
                    raise FailedPrecondition(
                        f"the rollout of {floor.name} still assigns version(s) "
                        f"{', '.join(below)} below {floor.version}: promote, roll back or "
                        "unpin first")
            _atomic_write(self.root / "floors" / f"{floor.name}.json",
                          _envelope_bytes(document, signature))
            generation = self._bump()
        return floor, generation

    # -- rollouts -----------------------------------------------------------------------

    def set_rollout(self, action: str, name: str, *, version: str = "", percent: float = 0.0,
                    selector: dict[str, str] | None = None, max_failures: int = 0,
                    agent_id: str = "", target: str = "edge") -> tuple[Rollout, int]:
        """Apply an operator action to a model's rollout; returns it and the generation.

        ``target`` ``edge`` acts on the versions agents run, ``cloud`` on the versions the
        gateway replicas serve (``percent`` is then a share of requests; no selector, no
        pins).
        """
        target = target or "edge"
        if target not in TARGETS:
            raise InvalidInput(f"target must be 'edge' or 'cloud' (got {target!r})")
        if not valid_name(name):  # a name is a folder: check it before it names a path
            raise InvalidInput(f"model name {name!r} is not valid")
        versions = self.model_versions(name, target)
        if not versions:
            raise NotFound(f"model {name!r} has no published {target} versions")
        if target == "cloud" and selector:
            raise InvalidInput("a cloud rollout shares requests, not agents: it takes no "
                               "selector")
        if target == "cloud" and action in ("pin", "unpin"):
            raise InvalidInput("agents are pinned to edge versions only")
        with self._locked():
            rollout = self.rollout(name, target) or Rollout(name=name, target=target)
            stamp = now_iso()
            if action == "start":
                if version not in versions:
                    raise NotFound(f"model {name!r} has no version {version!r} "
                                   f"(versions: {', '.join(versions)})")
                if not 0.0 <= percent <= 100.0:
                    raise InvalidInput(f"percent must be within [0, 100] (got {percent})")
                if version == rollout.stable:
                    raise FailedPrecondition(f"version {version} is already stable")
                if target == "edge":
                    self._check_floor(name, version, "rollout")
                if rollout.candidate != version:
                    rollout.failures = {}
                rollout.candidate = version
                rollout.percent = percent
                rollout.selector = dict(selector or {})
                if max_failures:
                    rollout.max_failures = max_failures
                rollout.state = "active"
                rollout.history.append(f"{stamp} rollout {version} to {percent:g}%")
            elif action == "promote":
                if rollout.candidate is None:
                    raise FailedPrecondition(f"model {name!r} has no candidate to promote")
                rollout.history.append(f"{stamp} promote {rollout.candidate}")
                rollout.stable, rollout.candidate = rollout.candidate, None
                rollout.percent, rollout.failures, rollout.state = 0.0, {}, "promoted"
            elif action == "rollback":
                if rollout.candidate is None:
                    raise FailedPrecondition(f"model {name!r} has no candidate to roll back")
                rollout.history.append(f"{stamp} rollback {rollout.candidate}")
                rollout.candidate, rollout.percent, rollout.state = None, 0.0, "rolled_back"
            elif action in ("pause", "resume"):
                if rollout.candidate is None:
                    raise FailedPrecondition(f"model {name!r} has no rollout to {action}")
                rollout.state = "paused" if action == "pause" else "active"
                rollout.history.append(f"{stamp} {action}")
            elif action == "pin":
                if version not in versions:
                    raise NotFound(f"model {name!r} has no version {version!r}")
                if not _AGENT_ID_RE.match(agent_id or ""):
                    raise InvalidInput("pin needs a valid agent id")
                self._check_floor(name, version, "pin")
                rollout.pinned[agent_id] = version
                rollout.history.append(f"{stamp} pin {agent_id} to {version}")
            elif action == "unpin":
                rollout.pinned.pop(agent_id, None)
                rollout.history.append(f"{stamp} unpin {agent_id}")
            else:
                raise InvalidInput(f"unknown rollout action {action!r}")
            self._write_rollout(rollout)
            generation = self._bump()
        return rollout, generation

    def record_swap_failure(self, name: str, version: str, agent_id: str,
                            reason: str, target: str = "edge") -> Rollout | None:
        """Count a failed swap to a candidate (by an agent, or for ``cloud`` a replica that
        could not load it); halts the rollout past its limit."""
        with self._locked():
            rollout = self.rollout(name, target)
            if rollout is None or rollout.candidate != version or rollout.state not in (
                "active", "paused"
            ):
                return rollout
            if rollout.failures.get(agent_id) == reason:
                return rollout
            rollout.failures[agent_id] = reason[:500]
            if len(rollout.failures) >= rollout.max_failures:
                rollout.history.append(
                    f"{now_iso()} halted {version}: {len(rollout.failures)} failed swaps; "
                    f"back to {rollout.stable}"
                )
                rollout.state = "halted"
                self._write_rollout(rollout)
                self._bump()
            else:
                self._write_rollout(rollout)
            return rollout

    # -- agents ---------------------------------------------------------------------------

    def write_agent_status(self, agent_id: str, status: dict) -> None:
        """Keep the agent's last report where every replica can read it."""
        if not _AGENT_ID_RE.match(agent_id or ""):
            raise InvalidInput(f"agent id {agent_id!r} is not valid")
        _atomic_write(self.root / "agents" / f"{agent_id}.json",
                      json.dumps(status, sort_keys=True).encode())

    def agent_status(self, agent_id: str) -> dict | None:
        """The agent's last report, or None."""
        if not _AGENT_ID_RE.match(agent_id or ""):
            raise InvalidInput(f"agent id {agent_id!r} is not valid")
        try:
            return json.loads((self.root / "agents" / f"{agent_id}.json").read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return None

    def agent_statuses(self) -> list[dict]:
        """Every agent's last report, by agent id."""
        out = []
        for path in sorted((self.root / "agents").glob("*.json")):
            try:
                out.append(json.loads(path.read_bytes()))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    # -- replicas ---------------------------------------------------------------------------

    def write_replica_status(self, replica: str, status: dict) -> None:
        """Keep what a gateway replica serves where every replica and operator can read it."""
        if not _AGENT_ID_RE.match(replica or ""):
            raise InvalidInput(f"replica name {replica!r} is not valid")
        _atomic_write(self.root / "replicas" / f"{replica}.json",
                      json.dumps(status, sort_keys=True).encode())

    def remove_replica_status(self, replica: str) -> None:
        """Forget a replica that stopped."""
        if _AGENT_ID_RE.match(replica or ""):
            (self.root / "replicas" / f"{replica}.json").unlink(missing_ok=True)

    def replica_statuses(self) -> list[dict]:
        """What every replica last said it serves, by replica name."""
        out = []
        for path in sorted((self.root / "replicas").glob("*.json")):
            try:
                out.append(json.loads(path.read_bytes()))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def describe(self, name: str = "") -> dict:
        """Models, versions, rollouts and what each replica serves, as plain data."""
        if name and not valid_name(name):  # a name is a folder: check it before it names a path
            raise InvalidInput(f"model name {name!r} is not valid")
        names = [name] if name else sorted({*self.model_names(), *self.model_names("cloud")})
        if name and not (self.model_versions(name) or self.model_versions(name, "cloud")):
            raise NotFound(f"model {name!r} has no published versions")
        replicas = self.replica_statuses()
        out = {}
        for n in names:
            record = self.rollout(n)
            cloud_record = self.rollout(n, "cloud")
            floor = self.floor(n)
            out[n] = {
                "floor": ({"version": floor.floor.version, "created": floor.floor.created,
                           "signed": bool(floor.signature)} if floor else None),
                "versions": [
                    {**e.manifest.model_dump(
                        mode="json", include={"version", "target", "digest", "size", "created"}),
                     "signed": bool(e.signature)}
                    for target in ("edge", "cloud")
                    for e in self.model_versions(n, target).values()
                ],
                "rollout": record.model_dump(mode="json") if record else None,
                "cloud_rollout": cloud_record.model_dump(mode="json") if cloud_record else None,
                "served_by": {r["replica"]: {**r["models"][n], "updated": r.get("updated")}
                              for r in replicas if n in (r.get("models") or {})},
            }
        return out


def _signature_problem(a: Manifest, b: Manifest) -> str | None:
    """Why ``b`` (being published) cannot join ``a``'s task, or None."""
    from edgecloud.core.tensors import signature_mismatch

    return signature_mismatch(
        tuple(t.spec() for t in a.inputs), tuple(t.spec() for t in a.outputs),
        tuple(t.spec() for t in b.inputs), tuple(t.spec() for t in b.outputs),
        a=f"the {a.target} model version {a.version}", b="this model",
    )


def _scores_problem(policy: Policy, edge: Manifest, policy_version: str = "") -> str | None:
    """Why ``policy`` cannot route the answers of the edge model ``edge``, or None.

    The agent reads the class scores from the policy's ``scores_output``, or
    from the model's one float [N, classes] output when the policy names none.
    """
    from edgecloud.core.tensors import class_scores_output

    try:
        class_scores_output(tuple(t.spec() for t in edge.outputs), policy.scores_output,
                            owner=f"edge model {edge.name} version {edge.version}")
    except FailedPrecondition as exc:
        version = policy_version or policy.version
        return (f"policy {policy.name} version {version} cannot route {edge.name}: "
                f"{exc.message}; set the policy's scores_output to the edge output that holds "
                "the class scores (policy tune --scores-output NAME writes it)")
    return None


def _envelope_bytes(manifest_bytes: bytes, signature: bytes) -> bytes:
    return json.dumps({
        "manifest": manifest_bytes.decode("utf-8"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }).encode()


def _read_envelope(path: Path) -> Envelope | None:
    try:
        document = json.loads(path.read_bytes())
        manifest_bytes = document["manifest"].encode("utf-8")
        signature = base64.b64decode(document["signature"])
        return Envelope(parse_manifest(manifest_bytes), manifest_bytes, signature)
    except (OSError, KeyError, TypeError, ValueError, InvalidInput):
        return None


def _read_floor(path: Path) -> FloorEnvelope | None:
    try:
        document = json.loads(path.read_bytes())
        floor_bytes = document["manifest"].encode("utf-8")
        signature = base64.b64decode(document["signature"])
        return FloorEnvelope(parse_floor(floor_bytes), floor_bytes, signature)
    except (OSError, KeyError, TypeError, ValueError, InvalidInput):
        return None


def valid_name(name: str) -> bool:
    """True for a usable model or policy name."""
    return bool(re.match(NAME_RE, name or ""))
