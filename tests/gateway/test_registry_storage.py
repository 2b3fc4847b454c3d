"""The registry's guarantees on both storages: a directory and a real S3 server (SeaweedFS),
hard examples included."""

from __future__ import annotations

import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from s3_server import CREDENTIALS

from edgecloud.cloud_gateway.hard_examples import REGISTRY_PREFIX, HardExampleStore
from edgecloud.cloud_gateway.registry import Registry
from edgecloud.cloud_gateway.storage import DirectoryStore, ObjectStore, Stored
from edgecloud.cloud_gateway.storage.objects import full_disk_errors
from edgecloud.core.artifacts import build_model_manifest
from edgecloud.core.errors import AlreadyExists, InvalidInput, Overloaded
from edgecloud.core.hard_examples import HardExample, InputRow, KeptExample
from edgecloud.core.signing import generate_keypair, load_private_key, load_public_key, sign

TASK = "digits"
@pytest.fixture(params=["directory", "s3"])
def location(request, tmp_path, monkeypatch) -> str:
    """A fresh, empty registry location on each storage."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    if request.param == "directory":
        return str(tmp_path / "registry")
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return f"s3://{bucket}/fleet/{uuid.uuid4().hex[:12]}"


def _manifest(digits_dir: Path, version: str, key=None) -> tuple[bytes, bytes, bytes]:
    path = digits_dir / "edge.onnx"
    manifest = build_model_manifest(path, name=TASK, version=version, target="edge").canonical()
    return manifest, (sign(key, manifest) if key else b""), path.read_bytes()


def test_racing_publishers_of_one_version_one_wins(location, tmp_path, digits_dir):
    """Six publishers of the same version at once: exactly one stores it, the others get
    ALREADY_EXISTS, and the registry holds one whole version."""
    registry = Registry(location, cache_dir=tmp_path / "cache")
    manifest, signature, data = _manifest(digits_dir, "1")

    def publish(_):
        try:
            Registry(location, cache_dir=tmp_path / "cache").publish_model(
                manifest, signature, [data])
            return "won"
        except AlreadyExists:
            return "already exists"

    with ThreadPoolExecutor(6) as pool:
        outcomes = sorted(pool.map(publish, range(6)))
    assert outcomes == ["already exists"] * 5 + ["won"]
    assert list(registry.model_versions(TASK)) == ["1"]
    assert registry.blob_path(registry.model_versions(TASK)["1"].manifest.digest).read_bytes() \
        == data
    assert registry.rollout(TASK).stable == "1"


def test_concurrent_rollout_changes_are_never_lost(location, tmp_path, digits_dir):
    """Eight operators pinning eight agents at once through separate registry objects: every
    pin is kept (compare-and-swap) and the generation counts every change."""
    registry = Registry(location, cache_dir=tmp_path / "cache")
    manifest, signature, data = _manifest(digits_dir, "1")
    registry.publish_model(manifest, signature, [data])
    before = registry.generation()

    def pin(i):
        Registry(location, cache_dir=tmp_path / "cache").set_rollout(
            "pin", TASK, version="1", agent_id=f"agent-{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(pin, range(8)))
    assert set(registry.rollout(TASK).pinned) == {f"agent-{i}" for i in range(8)}
    assert registry.generation() == before + 8


def test_reserved_versions_are_never_handed_out_twice(location, tmp_path):
    """Eight publishers asking for the next version at once get eight different numbers."""
    def reserve(_):
        return Registry(location, cache_dir=tmp_path / "cache").reserve_version(TASK, "edge")

    with ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(reserve, range(8)), key=int)
    assert versions == [str(i) for i in range(1, 9)]


class CountingStore:
    """The real store, counting the objects read (to pin what a snapshot re-reads)."""

    def __init__(self, inner: ObjectStore) -> None:
        self._inner = inner
        self.url = inner.url
        self.reads: list[str] = []

    def get(self, key: str) -> Stored | None:
        self.reads.append(key)
        return self._inner.get(key)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_a_change_rereads_no_published_manifest(location, tmp_path, digits_dir):
    """After a rollout change, a replica's new snapshot reads the generation and rollout
    records but none of the (immutable) manifests it has read before."""
    registry = Registry(location, cache_dir=tmp_path / "cache")
    for version in ("1", "2"):
        manifest, signature, data = _manifest(digits_dir, version)
        registry.publish_model(manifest, signature, [data])
    counting = CountingStore(registry.store)
    replica = Registry(counting, cache_dir=tmp_path / "cache")
    first = replica.snapshot()
    assert list(first.models[TASK]) == ["1", "2"]
    counting.reads.clear()
    registry.set_rollout("start", TASK, version="2", percent=50)
    second = replica.snapshot()
    assert second.generation == first.generation + 1
    assert second.rollouts[TASK].candidate == "2"
    assert not [key for key in counting.reads if key.startswith("models/")]


def test_envelopes_that_do_not_verify_are_skipped(location, tmp_path, digits_dir):
    """With a trust key, an unsigned version stored earlier is neither listed nor served,
    and `describe` calls only the verified version signed."""
    private, public = generate_keypair(tmp_path / "keys")
    open_registry = Registry(location, cache_dir=tmp_path / "cache")
    manifest, signature, data = _manifest(digits_dir, "1")
    open_registry.publish_model(manifest, signature, [data])
    manifest, signature, data = _manifest(digits_dir, "2", load_private_key(private))
    open_registry.publish_model(manifest, signature, [data])
    described = open_registry.describe(TASK)[TASK]["versions"]
    assert [(v["version"], v["signed"], v["signature"]) for v in described] == [
        ("1", False, "none"), ("2", False, "unchecked")]
    trusting = Registry(location, trust_key=load_public_key(public),
                        cache_dir=tmp_path / "cache2")
    assert list(trusting.model_versions(TASK)) == ["2"]
    assert list(trusting.snapshot().models[TASK]) == ["2"]
    described = trusting.describe(TASK)[TASK]["versions"]
    assert [(v["version"], v["signed"]) for v in described] == [("2", True)]


@pytest.mark.parametrize("name", ["../models/digits", "/etc/passwd", "digits\n", "a/b"])
def test_names_are_checked_whole(tmp_path, digits_dir, name):
    """Path-like names and a trailing newline are refused as invalid by every reader."""
    registry = Registry(tmp_path / "registry")
    manifest, signature, data = _manifest(digits_dir, "1")
    registry.publish_model(manifest, signature, [data])
    for call in (lambda: registry.set_rollout("promote", name),
                 lambda: registry.describe(name),
                 lambda: registry.model_versions(name),
                 lambda: registry.reserve_version(name, "edge")):
        with pytest.raises(InvalidInput, match="not valid"):
            call()


def test_a_full_disk_is_resource_exhausted():
    """Writing to a full device (/dev/full: ENOSPC) raises Overloaded, never a bare OSError."""
    if not Path("/dev/full").exists():
        pytest.skip("this system has no /dev/full")
    with pytest.raises(Overloaded, match="full"), full_disk_errors(), \
            open("/dev/full", "wb", buffering=0) as f:
        f.write(b"x")


def test_staging_leftovers_are_removed_at_start(tmp_path):
    """A staging file left by a crashed upload is removed once it is older than the
    limit; a fresh one (an upload in progress elsewhere) is kept."""
    import os

    from edgecloud.cloud_gateway.registry import ORPHAN_AGE_S

    registry = Registry(tmp_path / "registry")
    old = registry.blobs.staging_file()
    fresh = registry.blobs.staging_file()
    stamp = os.stat(old).st_mtime - ORPHAN_AGE_S - 1
    os.utime(old, (stamp, stamp))
    assert registry.remove_orphans() == [old]
    assert not old.exists() and fresh.exists()
    assert isinstance(registry.store, DirectoryStore)


def test_operator_commands_on_an_s3_registry(s3_endpoint, bucket, tmp_path, digits_dir):
    """`models publish` and `models list` with --registry s3://BUCKET/PREFIX and
    --s3-endpoint: the published version is listed; publishing it again is refused."""
    import os

    env = {**os.environ, **CREDENTIALS, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("AWS_ENDPOINT_URL", None)
    where = ["--registry", f"s3://{bucket}/cli/{uuid.uuid4().hex[:12]}",
             "--s3-endpoint", s3_endpoint]

    def edgecloud(*args):
        return subprocess.run([sys.executable, "-m", "edgecloud", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    published = edgecloud("models", "publish", TASK, str(digits_dir / "edge.onnx"),
                          "--target", "edge", "--version", "1", *where)
    assert published.returncode == 0, published.stderr
    listed = edgecloud("models", "list", *where)
    assert listed.returncode == 0, listed.stderr
    assert TASK in listed.stdout
    again = edgecloud("models", "publish", TASK, str(digits_dir / "edge.onnx"),
                      "--target", "edge", "--version", "1", *where)
    assert again.returncode == 2 and "already exists" in again.stderr


def _kept(agent: str, seq: int) -> KeptExample:
    row = np.full((1, 64), seq, dtype=np.float32)
    return KeptExample.new(agent, seq, HardExample(
        task=TASK, model_version="1", policy_version="1", inputs=(InputRow.of("pixels", row),),
        edge_scores=(0.5, 0.25), cloud_scores=None, cloud_model_version="", route="edge",
        reason="cloud_unavailable", confidence=0.25, at=1000.0 + seq))


def test_replicas_share_every_hard_example_once(location, tmp_path):
    """Two replicas' stores on one registry: records uploaded through one and resent
    through the other are stored once, in one object per upload; either replica exports
    all of them; a replica that never served the agent enforces its quota."""
    registry = Registry(location, cache_dir=tmp_path / "cache")
    a = HardExampleStore(registry.store, REGISTRY_PREFIX)
    b = HardExampleStore(Registry(location, cache_dir=tmp_path / "cache-b").store,
                         REGISTRY_PREFIX)
    records = [_kept("cam-1", seq) for seq in range(1, 11)]
    assert a.store("cam-1", records[:6]).stored == 6
    resent = b.store("cam-1", records[3:])
    assert (resent.stored, resent.duplicates) == (4, 3)
    assert b.store("cam-1", records).duplicates == 10
    assert a.store("cam-2", [_kept("cam-2", 1)]).stored == 1
    for store in (a, b):
        assert [k.record_id for k in store.records(TASK)] == [
            k.record_id for k in [*records, _kept("cam-2", 1)]]
    assert len([k for k in registry.store.list(REGISTRY_PREFIX) if k.endswith(".jsonl")]) == 3
    used = a.usage("cam-1")
    assert used > 0
    tight = HardExampleStore(registry.store, REGISTRY_PREFIX, agent_quota_bytes=used + 10)
    with pytest.raises(Overloaded, match="quota"):
        tight.store("cam-1", [_kept("cam-1", 11)])
