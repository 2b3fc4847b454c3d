"""The registry: model and policy versions, rollouts and fleet reports, in shared storage.

Its storage is a directory (the embedded default) or S3-compatible object
storage, named by one location (``DIR`` or ``s3://BUCKET/PREFIX``); every part
below works the same on both (:mod:`edgecloud.cloud_gateway.storage`). Keys::

    blobs/sha256/<hex>                content-addressed, immutable artifact bytes   (blobs)
    models/<name>/<target>/<version>.json  signed manifest envelope, immutable    (manifests)
                                      (target: edge or cloud; a task has both)
    models/<name>/<target>/<version>.reserved  a version number handed to a publisher,
                                      held until it publishes that version
    policies/<name>/<version>.json    signed manifest envelope, immutable          (manifests)
    rollouts/<name>.json              one rollout record per edge model      (rollout_state)
    rollouts/cloud/<name>.json        one rollout record per cloud model
    floors/<name>.json                the task's signed minimum edge version         (floors)
                                      (it only rises)
    replicas/<replica>.json           what each gateway replica serves              (agents)
    agents/<agent id>.json            last status each agent reported               (agents)
    hard_examples/<task>/<agent id>/  rows agents uploaded, one object per upload
                                      (cloud_gateway.hard_examples, beside the registry:
                                      the gateway sets its limits)
    generation                        bumped on every change; replicas watch it

Guarantees, on either storage, with no lock shared between writers: blobs
are stored before the manifest that names them, so a version is seen whole or
not at all; a version is created with a create-only write (a racing publisher
gets ALREADY_EXISTS); a rollout record and the generation change by
compare-and-swap (read, apply the transition, write if unchanged, else read
again), so no update is lost. A floor is raised by compare-and-swap too, and
every rollout change checks the floor it reads after the record, so no rollout
ends up assigning a version below a floor (see :meth:`Registry.publish_floor`).

A crash leaves at most temp files (upload staging, a directory store's
``.NAME.XXXX.tmp``); :meth:`Registry.remove_orphans` clears those an hour old.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ValidationError

from edgecloud.cloud_gateway.registry import rollout_state
from edgecloud.cloud_gateway.registry.agents import StatusStore
from edgecloud.cloud_gateway.registry.blobs import BlobStore
from edgecloud.cloud_gateway.registry.floors import FloorEnvelope, FloorStore
from edgecloud.cloud_gateway.registry.manifests import (
    Envelope,
    ManifestStore,
    envelope_bytes,
    model_key,
    policy_key,
)
from edgecloud.cloud_gateway.registry.rollout_state import (
    AGENT_ID_RE,
    Rollout,
    RolloutAction,
    RolloutState,
    below_floor,
    check_floor,
)
from edgecloud.cloud_gateway.storage import (
    Conflict,
    DirectoryStore,
    Location,
    ObjectStore,
    open_store,
    parse_location,
)
from edgecloud.core.artifacts import (
    NAME_RE,
    Floor,
    Manifest,
    parse_floor,
    parse_manifest,
    version_key,
)
from edgecloud.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from edgecloud.core.signing import key_fingerprint, verify
from edgecloud.router import Policy, PolicyError, parse_policy

__all__ = ["AGENT_ID_RE", "ORPHAN_AGE_S", "REPLICA_HEARTBEAT_S", "TARGETS", "Envelope",
           "FloorEnvelope", "Registry", "Rollout", "RolloutAction", "RolloutState", "Snapshot",
           "is_registry", "registry_location", "registry_path", "valid_name", "version_key"]

log = structlog.get_logger("edgecloud.gateway.registry")

TARGETS = ("edge", "cloud")
ORPHAN_AGE_S = 3600.0
"""Temp files untouched this long are orphans of a crashed writer (an upload in progress
writes its staging file continuously; an atomic write lives for milliseconds). Younger
ones may be another replica's write in progress: replicas share a registry."""
REPLICA_HEARTBEAT_S = 30.0
"""How often a gateway replica rewrites what it serves even when nothing changed; an entry
much older than this belongs to a replica that stopped without saying so."""
CAS_ATTEMPTS = 50
"""Compare-and-swap retries before giving up (each loss means another writer progressed)."""


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


def registry_location(location: str | Path, *, s3_endpoint: str | None = None) -> Location:
    """The parsed ``--registry`` value: a directory or ``s3://BUCKET/PREFIX``."""
    return parse_location(location, endpoint=s3_endpoint)


def registry_path(location: str | Path) -> Path:
    """The directory a directory location names; InvalidInput for a URL."""
    parsed = parse_location(location)
    if not parsed.is_directory:
        raise InvalidInput(f"registry {location}: a directory is needed here")
    return parsed.path


def is_registry(path: Path) -> bool:
    """True when the directory ``path`` holds a registry's layout."""
    return (path / "models").is_dir() and (path / "blobs" / "sha256").is_dir()


def _default_cache(location: Location) -> Path:
    import hashlib
    import os

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = hashlib.sha256(location.text.encode()).hexdigest()[:16]
    try:
        (base / "edgecloud").mkdir(parents=True, exist_ok=True)
        return base / "edgecloud" / f"registry-{tag}"
    except OSError:
        return Path(tempfile.gettempdir()) / f"edgecloud-registry-{tag}"


class Registry:
    """Versions, policies, rollouts and fleet reports in one store.

    ``location``: a directory, ``s3://BUCKET/PREFIX`` (a string or a parsed
    :class:`Location`), or an :class:`ObjectStore`. With ``create`` false the
    registry must already hold something (NotFound otherwise), so reading never
    leaves an empty registry behind. A gateway's data directory (a folder
    holding ``registry/``) is refused with InvalidInput naming the registry
    inside it. ``cache_dir``: this machine's folder for staging uploads and, for
    object storage, the blobs read (default: under ``$XDG_CACHE_HOME``).
    With ``trust_key``, publications must be signed with the operator's key and
    stored envelopes that do not verify are skipped.
    """

    def __init__(self, location: str | Path | Location | ObjectStore, trust_key=None, *,
                 create: bool = True, cache_dir: Path | None = None,
                 s3_endpoint: str | None = None) -> None:
        if isinstance(location, str | Path):
            location = parse_location(location, endpoint=s3_endpoint)
        if isinstance(location, Location):
            self.location = location
            store = open_store(location)
        else:
            store = location
            self.location = parse_location(store.url)
        self.store: ObjectStore = store
        self.url = store.url
        if isinstance(store, DirectoryStore):
            self._open_directory(store.root, create)
            self.root = store.root
            local = store.root / "blobs"
        else:
            if not create and store.is_empty():
                raise NotFound(f"{store.url} holds no registry (nothing was published there)")
            self.root = Path(cache_dir) if cache_dir else _default_cache(self.location)
            local = self.root
        self.blobs = BlobStore(store, local)
        self.manifests = ManifestStore(store, trust_key)
        self.floors = FloorStore(store, trust_key)
        self.trust_key = trust_key
        self.agents = StatusStore(store, "agents", "agent id")
        self.replicas = StatusStore(store, "replicas", "replica name")

    @property
    def trust_key(self):
        """The operator's public key publications must be signed with (None: any)."""
        return self._trust_key

    @trust_key.setter
    def trust_key(self, key) -> None:
        self._trust_key = self.manifests.trust_key = self.floors.trust_key = key

    @staticmethod
    def _open_directory(root: Path, create: bool) -> None:
        if not is_registry(root):
            inner = root / "registry"
            if is_registry(inner):
                raise InvalidInput(f"{root} is a gateway data directory, not a registry: "
                                   f"use its registry, {inner}")
            if not create:
                raise NotFound(f"{root} holds no registry (nothing was published there)")
        for sub in ("blobs/sha256", "blobs/tmp", "models", "policies", "rollouts", "agents",
                    "replicas", "floors"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # -- generation ----------------------------------------------------------------

    def generation(self) -> int:
        """The current generation (0 for an empty registry)."""
        stored = self.store.get("generation")
        try:
            return int(stored.data.decode().strip() or 0) if stored else 0
        except ValueError:
            return 0

    def _bump(self) -> int:
        for _ in range(CAS_ATTEMPTS):
            stored = self.store.get("generation")
            current = int(stored.data.decode().strip() or 0) if stored else 0
            try:
                self.store.put("generation", f"{current + 1}\n".encode(),
                               if_none_match=stored is None,
                               if_match=stored.etag if stored else None)
            except Conflict:
                continue
            return current + 1
        raise FailedPrecondition("the registry generation keeps changing; try again")

    def remove_orphans(self, older_than_s: float = ORPHAN_AGE_S, *,
                       now: float | None = None) -> list[Path]:
        """Delete the temp files crashed writers left, once untouched for ``older_than_s``:
        upload staging files (this machine's staging folder) and, in a directory store,
        atomic-write temp files (``.NAME.XXXX.tmp``) anywhere in it. A younger one may be
        another replica's write in progress. Returns the files removed."""
        now = time.time() if now is None else now
        removed = self.blobs.remove_orphans(older_than_s, now=now)
        if isinstance(self.store, DirectoryStore):
            removed += self.store.remove_orphans(older_than_s, now=now)
        return removed

    # -- blobs -------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """A local file with the blob's bytes; NotFound if the registry does not hold it."""
        return self.blobs.path(digest)

    # -- publishing ---------------------------------------------------------------

    def _check_signature(self, manifest_bytes: bytes, signature: bytes) -> None:
        if self.trust_key is None:
            return
        if not signature:
            raise PermissionDenied("a signature is required: this registry trusts only "
                                   "publications signed with the operator's key; publish "
                                   "with --key FILE (the private key)")
        if not verify(self.trust_key, manifest_bytes, signature):
            raise PermissionDenied("manifest signature does not verify with the trusted key: "
                                   "was it signed with the operator's private key?")

    def check_model_header(self, manifest_bytes: bytes, signature: bytes) -> Manifest:
        """What can be checked of a model publication before its bytes arrive: the
        manifest parses, names a model, is signed as required, and its version is free."""
        manifest = parse_manifest(manifest_bytes)
        if manifest.kind != "model" or manifest.target is None:
            raise InvalidInput("a model manifest needs kind 'model' and a target")
        self._check_signature(manifest_bytes, signature)
        if self.manifests.exists(model_key(manifest.name, manifest.target, manifest.version)):
            raise AlreadyExists(f"{manifest.target} model {manifest.name} version "
                                f"{manifest.version} already exists; versions are immutable")
        return manifest

    def publish_model(self, manifest_bytes: bytes, signature: bytes, chunks: Iterable[bytes],
                      promote: bool = False) -> tuple[Manifest, int]:
        """Store a model version; returns its manifest and the new generation.

        Whatever the outcome, a reservation of the version (see :meth:`reserve_version`)
        ends here.
        """
        manifest = parse_manifest(manifest_bytes)
        if manifest.kind != "model" or manifest.target is None:
            raise InvalidInput("a model manifest needs kind 'model' and a target")
        key = model_key(manifest.name, manifest.target, manifest.version)
        try:
            return self._publish_model(manifest, manifest_bytes, signature, chunks, promote,
                                       key)
        finally:
            self.store.delete(key.removesuffix(".json") + ".reserved")

    def _publish_model(self, manifest: Manifest, manifest_bytes: bytes, signature: bytes,
                       chunks: Iterable[bytes], promote: bool,
                       key: str) -> tuple[Manifest, int]:
        self.check_model_header(manifest_bytes, signature)
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
            check_floor(self.floor_of(manifest.name), manifest.name, manifest.version,
                        "publish --promote")
        if manifest.target == "edge":
            policy = self._newest_policy(manifest.name)
            if policy is not None:
                problem = _scores_problem(policy, manifest)
                if problem:
                    raise FailedPrecondition(problem)
        self.blobs.put(chunks, manifest.digest, manifest.size)
        self.manifests.create(key, manifest_bytes, signature,
                              f"{manifest.target} model {manifest.name} version "
                              f"{manifest.version}")
        # The floor is read again after the record, on every attempt (see publish_floor).
        self._update_rollout(manifest.name, manifest.target, lambda r: rollout_state.on_publish(
            r, manifest.version, promote=promote,
            floor=self.floor_of(manifest.name) if promote else None))
        return manifest, self._bump()

    def publish_policy(self, manifest_bytes: bytes, signature: bytes,
                       document: bytes) -> tuple[Manifest, int]:
        """Store a policy version after checking that it parses.

        Whatever the outcome, a reservation of the version (see :meth:`reserve_version`)
        ends here.
        """
        manifest = parse_manifest(manifest_bytes)
        if manifest.kind != "policy":
            raise InvalidInput("a policy manifest needs kind 'policy'")
        key = policy_key(manifest.name, manifest.version)
        try:
            return self._publish_policy(manifest, manifest_bytes, signature, document, key)
        finally:
            self.store.delete(key.removesuffix(".json") + ".reserved")

    def _publish_policy(self, manifest: Manifest, manifest_bytes: bytes, signature: bytes,
                        document: bytes, key: str) -> tuple[Manifest, int]:
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
        what = f"policy {manifest.name} version {manifest.version}"
        if self.manifests.exists(key):
            raise AlreadyExists(f"{what} already exists; versions are immutable")
        self.blobs.put([document], manifest.digest, manifest.size)
        # Create-only: a publisher racing for the same version gets ALREADY_EXISTS here.
        self.manifests.create(key, manifest_bytes, signature, what)
        return manifest, self._bump()

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

    def _names(self, folder: str, depth: int, target: str = "") -> list[str]:
        names = set()
        for key in self.manifests.list(folder + "/"):
            parts = key.split("/")
            if len(parts) == depth and parts[-1].endswith(".json") and (
                    not target or parts[2] == target):
                names.add(parts[1])
        return sorted(names)

    def model_names(self, target: str = "edge") -> list[str]:
        """Names with at least one model version for ``target``."""
        return self._names("models", 4, target)

    def model_versions(self, name: str, target: str = "edge") -> dict[str, Envelope]:
        """Version -> envelope, oldest first (InvalidInput for a bad name or target)."""
        checked_name(name)
        if target not in TARGETS:
            raise InvalidInput(f"target must be 'edge' or 'cloud' (got {target!r})")
        return self.manifests.versions(f"models/{name}/{target}/")

    def policy_versions(self, name: str) -> dict[str, Envelope]:
        """Version -> envelope, oldest first."""
        return self.manifests.versions(f"policies/{checked_name(name, 'policy')}/")

    def policy_names(self) -> list[str]:
        """Names with at least one policy version."""
        return self._names("policies", 3)

    def reserve_version(self, name: str, target: str) -> str:
        """The next numeric version of a model (target ``edge`` or ``cloud``) or of a
        task's policy (target ``policy``), never handed out twice.

        One more than the highest version published or reserved (``"1"`` for the
        first), taken with a create-only write of its reservation (a racing
        publisher takes the next). The reservation holds until a publication of that
        version ends; a publisher that never comes back leaves a gap in the numbers.
        """
        checked_name(name)
        if target not in ("edge", "cloud", "policy"):
            raise InvalidInput(f"target must be 'edge', 'cloud' or 'policy' (got {target!r})")
        base = f"policies/{name}/" if target == "policy" else f"models/{name}/{target}/"
        for _ in range(CAS_ATTEMPTS):
            taken = [key.rsplit("/", 1)[-1].rpartition(".")[0]
                     for key in self.store.list(base)
                     if key.endswith((".json", ".reserved")) and key.count("/") == base.count("/")]
            version = str(max((int(v) for v in taken if v.isdigit()), default=0) + 1)
            try:
                self.store.put(f"{base}{version}.reserved", b"", if_none_match=True)
            except Conflict:
                continue
            return version
        raise FailedPrecondition(f"could not reserve a version of {name}; try again")

    @staticmethod
    def _rollout_key(name: str, target: str) -> str:
        return f"rollouts/cloud/{name}.json" if target == "cloud" else f"rollouts/{name}.json"

    def _read_rollout(self, name: str, target: str):
        key = self._rollout_key(name, target)
        stored = self.store.get(key)
        if stored is None:
            return None, None
        try:
            return Rollout.model_validate_json(stored.data), stored.etag
        except ValidationError:
            raise InvalidInput(f"rollout record {key} is damaged") from None

    def rollout(self, name: str, target: str = "edge") -> Rollout | None:
        """The model's rollout record for ``target``, if it has one."""
        return self._read_rollout(checked_name(name), target)[0]

    def _update_rollout(self, name: str, target: str, change) -> Rollout | None:
        """Compare-and-swap: read the record, let ``change`` return the new one (None:
        leave it), write it only if nobody wrote since; again on a lost race."""
        from edgecloud.core.artifacts import now_iso

        for _ in range(CAS_ATTEMPTS):
            record, etag = self._read_rollout(name, target)
            new = change(record or Rollout(name=name, target=target))
            if new is None:
                return record
            new.updated = now_iso()
            try:
                self.store.put(self._rollout_key(name, target),
                               new.model_dump_json(indent=2).encode(),
                               if_none_match=etag is None, if_match=etag)
            except Conflict:
                continue
            return new
        raise FailedPrecondition(f"the rollout of {name} keeps changing; try again")

    def snapshot(self) -> Snapshot:
        """All versions and rollouts as of the current generation.

        One listing per folder; manifests already read are not read again (they never
        change); rollout records are read (a few small objects)."""
        generation = self.generation()
        grouped: dict[tuple[str, str], list[str]] = {}
        for key in self.manifests.list("models/"):
            parts = key.split("/")
            if len(parts) == 4 and parts[3].endswith(".json") and parts[2] in TARGETS:
                grouped.setdefault((parts[2], parts[1]), []).append(key)
        policy_keys: dict[str, list[str]] = {}
        for key in self.manifests.list("policies/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                policy_keys.setdefault(parts[1], []).append(key)
        models, cloud = {}, {}
        for (target, name), keys in sorted(grouped.items()):
            versions = self.manifests.read_all(keys)
            if versions:
                (models if target == "edge" else cloud)[name] = versions
        policies = {name: v for name, keys in sorted(policy_keys.items())
                    if (v := self.manifests.read_all(keys))}
        rollouts = {name: r for name in models if (r := self.rollout(name)) is not None}
        cloud_rollouts = {name: r for name in cloud
                          if (r := self.rollout(name, "cloud")) is not None}
        return Snapshot(generation, models, cloud, policies, rollouts, cloud_rollouts,
                        self.floors.all())

    # -- floors -------------------------------------------------------------------------

    def floor(self, name: str) -> FloorEnvelope | None:
        """The task's signed minimum edge version, if it has one."""
        if not valid_name(name):
            return None
        return self.floors.read(name)[0]

    def floor_of(self, name: str) -> Floor | None:
        """The task's floor document, if it has one."""
        envelope = self.floor(name)
        return envelope.floor if envelope is not None else None

    def publish_floor(self, document: bytes, signature: bytes) -> tuple[Floor, int]:
        """Store a task's signed minimum edge version; returns it and the new generation.

        The version must be published; a floor never goes down; and the versions the
        task's rollout assigns (stable, candidate, pins) must be at or above it, or
        agents would refuse what they are told to run.

        With no lock between writers: the floor is replaced by compare-and-swap, then
        the rollout record is rewritten by compare-and-swap with a check against the new
        floor. A rollout change reads the floor after the record, so one that read the
        old floor either landed before that rewrite (which then finds it, puts the old
        floor back and refuses) or loses its swap and is checked against the new floor.
        """
        floor = parse_floor(document)
        self._check_signature(document, signature)
        versions = self.model_versions(floor.name, "edge")
        if floor.version not in versions:
            raise NotFound(f"model {floor.name!r} has no edge version {floor.version!r}"
                           + (f" (versions: {', '.join(versions)})" if versions else ""))
        for _ in range(CAS_ATTEMPTS):
            current, etag = self.floors.read(floor.name)
            if current is not None and not current.floor.allows(floor.version):
                raise FailedPrecondition(
                    f"the floor of {floor.name} is version {current.floor.version}; a floor "
                    f"never goes down (agents that saw it keep it)")
            _refuse_below(self.rollout(floor.name), floor)
            try:
                self.floors.replace(floor.name, document, signature, etag)
            except Conflict:
                continue
            break
        else:
            raise FailedPrecondition(f"the floor of {floor.name} keeps changing; try again")

        def recheck(record: Rollout) -> Rollout | None:
            if not record.updated:
                return None  # no stored record: nothing assigned
            _refuse_below(record, floor)
            out = record.model_copy(deep=True)
            out.note(f"floor {floor.version}")
            return out

        try:
            self._update_rollout(floor.name, "edge", recheck)
        except FailedPrecondition:
            self._restore_floor(floor.name, current, document, signature)
            raise
        return floor, self._bump()

    def _restore_floor(self, name: str, previous: FloorEnvelope | None, document: bytes,
                       signature: bytes) -> None:
        """Put back the floor ``previous`` unless the one written (``document``) was
        replaced meanwhile."""
        stored = self.store.get(f"floors/{name}.json")
        if stored is None or stored.data != envelope_bytes(document, signature):
            return
        if previous is None:
            self.store.delete(f"floors/{name}.json")
            return
        with contextlib.suppress(Conflict):
            self.floors.replace(name, previous.document, previous.signature, stored.etag)

    # -- rollouts -----------------------------------------------------------------------

    def set_rollout(self, action: str, name: str, *, version: str = "", percent: float = 0.0,
                    selector: dict[str, str] | None = None, max_failures: int = 0,
                    agent_id: str = "", target: str = "edge") -> tuple[Rollout, int]:
        """Apply an operator action to a model's rollout; returns it and the generation.

        ``target`` ``edge`` acts on the versions agents run, ``cloud`` on the versions the
        gateway replicas serve (``percent`` is then a share of requests; no selector, no
        pins).
        """
        checked_name(name)
        target = target or "edge"
        if target not in TARGETS:
            raise InvalidInput(f"target must be 'edge' or 'cloud' (got {target!r})")
        request = rollout_state.Request(RolloutAction.parse(action), version, percent,
                                        selector, max_failures, agent_id)
        versions = self.model_versions(name, target)
        if not versions:
            raise NotFound(f"model {name!r} has no published {target} versions")
        # The floor is read after the record, on every attempt (see publish_floor).
        rollout = self._update_rollout(
            name, target, lambda r: rollout_state.apply(
                r, request, versions, self.floor_of(name) if target == "edge" else None))
        assert rollout is not None
        return rollout, self._bump()

    def record_swap_failure(self, name: str, version: str, agent_id: str,
                            reason: str, target: str = "edge") -> Rollout | None:
        """Count a failed swap to a candidate (by an agent, or for ``cloud`` a replica that
        could not load it); halts the rollout past its limit."""
        if not valid_name(name):
            return None
        before = self.rollout(name, target)
        rollout = self._update_rollout(
            name, target,
            lambda r: rollout_state.on_swap_failure(r, version, agent_id, reason))
        if (rollout is not None and rollout.state == RolloutState.HALTED
                and (before is None or before.state != RolloutState.HALTED)):
            self._bump()
        return rollout

    # -- agents and replicas ----------------------------------------------------------------

    def write_agent_status(self, agent_id: str, status: dict) -> None:
        """Keep the agent's last report where every replica can read it."""
        self.agents.write(agent_id, status)

    def agent_status(self, agent_id: str) -> dict | None:
        """The agent's last report, or None."""
        return self.agents.read(agent_id)

    def agent_statuses(self) -> list[dict]:
        """Every agent's last report, by agent id."""
        return self.agents.all()

    def write_replica_status(self, replica: str, status: dict) -> None:
        """Keep what a gateway replica serves where every replica and operator can read it."""
        self.replicas.write(replica, status)

    def remove_replica_status(self, replica: str) -> None:
        """Forget a replica that stopped."""
        self.replicas.remove(replica)

    def replica_statuses(self) -> list[dict]:
        """What every replica last said it serves, by replica name."""
        return self.replicas.all()

    def describe(self, name: str = "") -> dict:
        """Models, versions, rollouts and what each replica serves, as plain data.

        ``signed`` is true only for a signature that verifies with the trust key, and
        ``signed_by`` names that key (its fingerprint; empty otherwise); ``signature``
        says more: ``verified``, ``unchecked`` (signed, but this registry has no trust
        key to check it with) or ``none``."""
        if name:
            checked_name(name)
        names = [name] if name else sorted({*self.model_names(), *self.model_names("cloud")})
        if name and not (self.model_versions(name) or self.model_versions(name, "cloud")):
            raise NotFound(f"model {name!r} has no published versions")
        replicas = self.replica_statuses()
        signer = key_fingerprint(self.trust_key) if self.trust_key is not None else ""
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
                     "signed": e.verified,
                     "signed_by": signer if e.verified else "",
                     "signature": ("verified" if e.verified else
                                   "unchecked" if e.signature else "none")}
                    for target in TARGETS
                    for e in self.model_versions(n, target).values()
                ],
                "rollout": record.model_dump(mode="json") if record else None,
                "cloud_rollout": cloud_record.model_dump(mode="json") if cloud_record else None,
                "served_by": {r["replica"]: {**r["models"][n], "updated": r.get("updated")}
                              for r in replicas if n in (r.get("models") or {})},
            }
        return out


def _refuse_below(rollout: Rollout | None, floor: Floor) -> None:
    """FailedPrecondition when ``rollout`` assigns a version ``floor`` refuses."""
    below = below_floor(rollout, floor)
    if below:
        raise FailedPrecondition(
            f"the rollout of {floor.name} still assigns version(s) {', '.join(below)} below "
            f"{floor.version}: promote, roll back or unpin first")


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


def valid_name(name: str) -> bool:
    """True for a usable model or policy name (the whole string: no trailing newline,
    no path separators)."""
    return isinstance(name, str) and re.fullmatch(NAME_RE.strip("^$"), name) is not None


def checked_name(name: str, what: str = "model") -> str:
    """``name`` when valid; InvalidInput otherwise."""
    if not valid_name(name):
        raise InvalidInput(f"{what} name {name!r} is not valid (letters, digits, '_', '.', "
                           "'-'; at most 64; starting with a letter or digit)")
    return name
