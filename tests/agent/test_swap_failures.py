"""What the model manager makes of each kind of error in one artifact's swap."""

from __future__ import annotations

from pathlib import Path

from edgecloud.core.artifacts import build_model_manifest, build_policy_manifest
from edgecloud.core.errors import Unavailable
from edgecloud.edge_agent.model_manager import ArtifactRef, ArtifactStore, Assignment, ModelManager
from edgecloud.edge_agent.service import EdgeService

TASK = "digits"


class SwitchableFetcher:
    """Serves artifacts from files; ``fault`` (when set) is what every fetch does instead."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.fault: str | None = None

    async def fetch(self, digest: str, offset: int):
        if self.fault == "unavailable":
            raise Unavailable("gateway: UNAVAILABLE: connection refused")
        if self.fault == "not_bytes":
            yield "text where bytes belong"
            return
        yield self.files[digest].read_bytes()[offset:]


def assignment(fetcher: SwitchableFetcher, digits_dir: Path, tmp_path: Path) -> Assignment:
    model = build_model_manifest(digits_dir / "edge.onnx", name=TASK, version="1",
                                 target="edge")
    document = (digits_dir / "policy.yaml").read_bytes()
    policy = build_policy_manifest(document, name=TASK, version="1")
    (tmp_path / "policy.yaml").write_bytes(document)
    fetcher.files.update({model.digest: digits_dir / "edge.onnx",
                          policy.digest: tmp_path / "policy.yaml"})

    def ref(manifest) -> ArtifactRef:
        return ArtifactRef(manifest.name, manifest.version, manifest.digest, manifest.size,
                           manifest.canonical(), b"")

    return Assignment(1, (ref(model),), (ref(policy),))


async def test_a_fetch_the_network_cut_short_is_deferred_not_failed(tmp_path, digits_dir):
    """A download the gateway cannot serve reports no failure, asks for a retry and is not
    remembered: the same assignment applied again later swaps the version in."""
    fetcher = SwitchableFetcher()
    service = EdgeService(None)
    manager = ModelManager(service, ArtifactStore(tmp_path / "store"), fetcher)
    wanted = assignment(fetcher, digits_dir, tmp_path)
    fetcher.fault = "unavailable"
    assert await manager.apply(wanted) == []
    assert manager.retry_wanted
    assert service.metrics.deferred_fetches == 2  # the model and the policy
    fetcher.fault = None
    outcomes = await manager.apply(wanted)
    assert [(o.kind, o.ok) for o in outcomes] == [("model", True), ("policy", True)]
    assert not manager.retry_wanted
    await service.aclose()


async def test_an_unexpected_error_is_a_reported_failure_tried_again_later(tmp_path,
                                                                           digits_dir):
    """An error nobody planned for in one artifact becomes that artifact's reported
    failure, without the exception text, and the version is tried again next time."""
    fetcher = SwitchableFetcher()
    service = EdgeService(None)
    manager = ModelManager(service, ArtifactStore(tmp_path / "store"), fetcher)
    wanted = assignment(fetcher, digits_dir, tmp_path)
    fetcher.fault = "not_bytes"
    outcomes = await manager.apply(wanted)
    assert [(o.kind, o.ok) for o in outcomes] == [("policy", False), ("model", False)]
    assert all(o.reason.startswith("unexpected TypeError") for o in outcomes)
    assert "bytes" not in outcomes[0].reason
    fetcher.fault = None
    outcomes = await manager.apply(wanted)
    assert [(o.kind, o.ok) for o in outcomes] == [("model", True), ("policy", True)]
    await service.aclose()
