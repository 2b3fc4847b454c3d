"""How many ONNX Runtime threads each served model gets: the cores shared among its workers."""

from __future__ import annotations

from pathlib import Path

from edgecloud.cloud_gateway.settings import GatewaySettings, usable_cores


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
