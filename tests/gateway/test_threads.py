"""How many ONNX Runtime threads each served model gets: the cores shared among its workers."""

from __future__ import annotations

import os
from pathlib import Path

from edgecloud.cloud_gateway.settings import GatewaySettings, cgroup_cpu_quota, usable_cores


def test_threads_default_to_the_cores_shared_among_a_models_workers(tmp_path: Path) -> None:
    """Without onnx_threads, a model's session gets the usable cores divided by its batch
    workers (at least one thread); a per-model workers override changes only that model."""
    settings = GatewaySettings(data_dir=tmp_path, batching={
        "workers": 2, "models": {"solo": {"workers": 1}, "wide": {"workers": 64}}})
    cores = usable_cores()
    assert settings.threads_for("digits") == max(1, cores // 2)
    assert settings.threads_for("solo") == cores
    assert settings.threads_for("wide") == max(1, cores // 64)


def test_onnx_threads_set_by_hand_wins(tmp_path: Path) -> None:
    """An onnx_threads setting is every model's thread count, whatever its workers."""
    settings = GatewaySettings(data_dir=tmp_path, onnx_threads=3,
                               batching={"models": {"solo": {"workers": 1}}})
    assert settings.threads_for("digits") == 3
    assert settings.threads_for("solo") == 3


async def test_served_sessions_open_with_those_threads(start_gateway) -> None:
    """The gateway opens each --model session with the threads its settings give it."""
    gateway = await start_gateway(batching={"workers": 1})
    model = gateway.service.served_model("digits")
    assert model.intra_op_threads == gateway.settings.threads_for("digits") == usable_cores()


async def test_served_sessions_do_not_spin(start_gateway) -> None:
    """The gateway's sessions sleep between runs instead of spinning: their threads share the
    cores with the event loop and with the model's other batches."""
    gateway = await start_gateway()
    assert not gateway.service.served_model("digits").spinning


def _cgroups(tmp_path: Path, lines: list[str], files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup file system and a /proc/self/cgroup as real files under ``tmp_path``."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    own = tmp_path / "self-cgroup"
    own.write_text("\n".join(lines) + "\n")
    return root, own


def test_a_cgroup_v2_cpu_limit_caps_the_cores(tmp_path: Path) -> None:
    """A container's cpu.max (here 1.5 cores on the pod, none on the container) caps the
    cores, rounded up; the tightest limit on the way to the root wins."""
    root, own = _cgroups(tmp_path, ["0::/kubepods/pod1/ctr"], {
        "cpu.max": "max 100000", "kubepods/pod1/cpu.max": "150000 100000",
        "kubepods/pod1/ctr/cpu.max": "max 100000"})
    assert cgroup_cpu_quota(root, own) == 1.5
    assert usable_cores(root, own) == min(usable_cores(tmp_path, tmp_path / "none"), 2)


def test_a_cgroup_v1_cfs_quota_caps_the_cores(tmp_path: Path) -> None:
    """cgroup v1's cfs quota and period give the limit; -1 means none."""
    root, own = _cgroups(tmp_path, ["4:cpu,cpuacct:/docker/abc", "3:memory:/docker/abc"], {
        "cpu/docker/abc/cpu.cfs_quota_us": "100000",
        "cpu/docker/abc/cpu.cfs_period_us": "100000",
        "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_quota(root, own) == 1.0
    assert usable_cores(root, own) == 1


def test_no_cgroup_limit_leaves_the_affinity(tmp_path: Path) -> None:
    """Without a quota (or without cgroup files at all) the affinity mask decides."""
    root, own = _cgroups(tmp_path, ["0::/"], {"cpu.max": "max 100000"})
    assert cgroup_cpu_quota(root, own) is None
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path / "missing-self") is None
    assert usable_cores(root, own) == len(os.sched_getaffinity(0))
