"""The agent's model manager: resumable downloads and verified swaps."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.core.artifacts import build_model_manifest, build_policy_manifest
from edgecloud.core.errors import Unavailable
from edgecloud.edge_agent.model_manager import ArtifactRef, ArtifactStore, Assignment, ModelManager
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
