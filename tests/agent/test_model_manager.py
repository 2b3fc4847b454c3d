"""The agent's model manager: resumable downloads and verified swaps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgecloud.core.artifacts import build_floor, build_model_manifest, build_policy_manifest
from edgecloud.core.errors import Unavailable
from edgecloud.core.signing import generate_keypair, load_private_key, load_public_key, sign
from edgecloud.edge_agent.model_manager import (
    ArtifactRef,
    ArtifactStore,
    Assignment,
    ModelManager,
    SignedFloor,
)
from edgecloud.edge_agent.service import EdgeService


class DroppingFetcher:
    """Serves artifacts from files in chunks; drops the first stream of the model halfway."""

    def __init__(self, files: dict[str, Path], drop_digest: str) -> None:
        self.files = files
        self.drop_digest = drop_digest
        self.calls: list[tuple[str, int]] = []

    async def fetch(self, digest: str, offset: int):
        self.calls.append((digest, offset))
        data = self.files[digest].read_bytes()
        first_call = sum(1 for d, _ in self.calls if d == digest) == 1
        half = len(data) // 2
        position = offset
        while position < len(data):
            if digest == self.drop_digest and first_call and position >= half:
                raise Unavailable("gateway: stream dropped")
            end = min(position + 4096, len(data))
            yield data[position:end]
            position = end


def _ref(manifest, data: bytes) -> ArtifactRef:
    return ArtifactRef(manifest.name, manifest.version, manifest.digest, manifest.size,
                       data, b"")


async def test_interrupted_download_resumes_from_the_bytes_on_disk(tmp_path, digits_dir):
    """A download dropped halfway is resumed from the offset already on disk, verified,
    and the task then serves the new model."""
    model_path = digits_dir / "cloud.onnx"
    manifest = build_model_manifest(model_path, name="digits", version="7", target="edge")
    document = (digits_dir / "policy.yaml").read_bytes()
    pmanifest = build_policy_manifest(document, name="digits", version="1")
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_bytes(document)
    fetcher = DroppingFetcher({manifest.digest: model_path, pmanifest.digest: policy_path},
                              drop_digest=manifest.digest)
    service = EdgeService(None)
    service.set_ready(True)
    store = ArtifactStore(tmp_path / "store")
    manager = ModelManager(service, store, fetcher)
    outcomes = await manager.apply(Assignment(
        1, (_ref(manifest, manifest.canonical()),),
        (_ref(pmanifest, pmanifest.canonical()),)))
    assert [o.ok for o in outcomes] == [True, True], outcomes
    model_calls = [offset for digest, offset in fetcher.calls if digest == manifest.digest]
    assert model_calls[0] == 0
    assert model_calls[1] >= manifest.size // 2 > 0
    assert store.blob(manifest.digest).read_bytes() == model_path.read_bytes()
    assert not any(store.staging.iterdir())
    assert service.task("digits").current.model.version == "7"
    await service.aclose()


async def test_manifest_that_is_not_json_is_reported(tmp_path):
    """A manifest that is not JSON is refused with that reason, once, and nothing is
    served."""
    service = EdgeService(None)
    manager = ModelManager(service, ArtifactStore(tmp_path / "store"), None)
    bad = ArtifactRef("digits", "1", "sha256:" + "0" * 64, 10, b"{nope", b"")
    outcomes = await manager.apply(Assignment(1, (bad,), ()))
    assert len(outcomes) == 1 and not outcomes[0].ok
    assert "not valid JSON" in outcomes[0].reason
    assert await manager.apply(Assignment(2, (bad,), ())) == []  # not retried
    with pytest.raises(Exception, match="not served"):
        service.task("digits")
    await service.aclose()


class FileFetcher:
    """Serves artifacts whole from files, by digest."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    async def fetch(self, digest: str, offset: int):
        yield self.files[digest].read_bytes()[offset:]


class DiskCheckingService(EdgeService):
    """Records, at every swap, which model version the agent's state file on disk names."""

    def __init__(self, state_path: Path) -> None:
        super().__init__(None)
        self.state_path = state_path
        self.on_disk_at_swap: list[tuple[str, str | None]] = []

    def install(self, model, policy, **kwargs):
        import json

        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        recorded = state.get("tasks", {}).get(model.name, {}).get("model", {})
        self.on_disk_at_swap.append((model.version, recorded.get("version")))
        return super().install(model, policy, **kwargs)


def _assignment(tmp_path, digits_dir, generation: int, version: str, model_file: str,
                files: dict[str, Path]) -> Assignment:
    model_path = digits_dir / model_file
    manifest = build_model_manifest(model_path, name="digits", version=version, target="edge")
    document = (digits_dir / "policy.yaml").read_bytes()
    pmanifest = build_policy_manifest(document, name="digits", version="1")
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_bytes(document)
    files.update({manifest.digest: model_path, pmanifest.digest: policy_path})
    return Assignment(generation, (_ref(manifest, manifest.canonical()),),
                      (_ref(pmanifest, pmanifest.canonical()),))


async def test_a_version_is_on_disk_before_it_serves(tmp_path, digits_dir):
    """The agent's state names a new version before the swap makes it serve, so a restart
    right after the swap (even one that cuts the bookkeeping short) comes back on it."""
    store = ArtifactStore(tmp_path / "store")
    service = DiskCheckingService(store.state_path)
    files: dict[str, Path] = {}
    first = _assignment(tmp_path, digits_dir, 1, "1", "edge.onnx", files)
    second = _assignment(tmp_path, digits_dir, 2, "2", "cloud.onnx", files)
    manager = ModelManager(service, store, FileFetcher(files))
    assert all(o.ok for o in await manager.apply(first))
    assert all(o.ok for o in await manager.apply(second))
    assert service.on_disk_at_swap == [("1", "1"), ("2", "2")]
    await service.aclose()


async def test_same_bytes_under_a_new_version_are_applied(tmp_path, digits_dir):
    """Versions are identities: the same model bytes assigned as a new version are swapped
    in and served (and reported) under the new version; the same version again is not."""
    store = ArtifactStore(tmp_path / "store")
    service = EdgeService(None)
    files: dict[str, Path] = {}
    manager = ModelManager(service, store, FileFetcher(files))
    await manager.apply(_assignment(tmp_path, digits_dir, 1, "1", "edge.onnx", files))
    outcomes = await manager.apply(_assignment(tmp_path, digits_dir, 2, "2", "edge.onnx", files))
    assert [(o.kind, o.version, o.ok) for o in outcomes] == [("model", "2", True)]
    assert service.task("digits").current.model.version == "2"
    assert await manager.apply(_assignment(tmp_path, digits_dir, 3, "2", "edge.onnx",
                                           files)) == []
    await service.aclose()


def _floor(version: str, key: Path | None) -> SignedFloor:
    document = build_floor("digits", version).canonical()
    return SignedFloor(document, sign(load_private_key(key), document) if key else b"")


def _with(assignment: Assignment, *floors: SignedFloor, key: Path) -> Assignment:
    """``assignment`` with its manifests signed by ``key``, carrying ``floors``."""
    private = load_private_key(key)

    def signed(refs):
        return tuple(dataclasses.replace(r, signature=sign(private, r.manifest)) for r in refs)

    return dataclasses.replace(assignment, models=signed(assignment.models),
                               policies=signed(assignment.policies), floors=floors)


async def test_versions_below_a_signed_floor_are_refused_and_the_floor_is_kept(
        tmp_path, digits_dir) -> None:
    """With a floor at 2, version 1 is refused as a downgrade (reported, the running
    version untouched), even once assignments stop carrying the floor and after a
    restart; a lower floor, or one not signed with the trusted key, changes nothing."""
    private, public = generate_keypair(tmp_path / "keys")
    generate_keypair(tmp_path / "stranger")
    store = ArtifactStore(tmp_path / "store")
    service = EdgeService(None)
    files: dict[str, Path] = {}
    manager = ModelManager(service, store, FileFetcher(files),
                           trust_key=load_public_key(public))
    second = _assignment(tmp_path, digits_dir, 1, "2", "edge.onnx", files)
    assert all(o.ok for o in await manager.apply(_with(second, _floor("2", private),
                                                       key=private)))
    assert manager.floors["digits"].version == "2"

    downgrade = _assignment(tmp_path, digits_dir, 2, "1", "cloud.onnx", files)
    (outcome,) = await manager.apply(_with(downgrade, key=private))
    assert not outcome.ok and outcome.version == "1"
    assert "below the signed minimum version 2" in outcome.reason
    assert service.task("digits").current.model.version == "2"

    restarted = ModelManager(service, store, FileFetcher(files),
                             trust_key=load_public_key(public))
    unsigned = _floor("1", None)
    forged = _floor("0", tmp_path / "stranger" / "operator.key")
    lower = _floor("1", private)
    (outcome,) = await restarted.apply(_with(downgrade, unsigned, forged, lower, key=private))
    assert not outcome.ok and "below the signed minimum version 2" in outcome.reason
    assert restarted.floors["digits"].version == "2"
    third = _assignment(tmp_path, digits_dir, 3, "3", "cloud.onnx", files)
    assert all(o.ok for o in await restarted.apply(_with(third, _floor("3", private),
                                                         key=private)))
    assert restarted.floors["digits"].version == "3"
    await service.aclose()
