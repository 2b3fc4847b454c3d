"""Process settings: defaults that keep files out of the current directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.cloud_gateway.settings import GatewaySettings
from edgecloud.core.settings import load_settings
from edgecloud.edge_agent.settings import AgentSettings


def test_data_dirs_default_to_the_users_state_directory(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a data_dir, the gateway and agent use XDG_STATE_HOME/edgecloud/..., else
    ~/.local/state/edgecloud/..., never a folder in the current directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert GatewaySettings().data_dir == tmp_path / "state" / "edgecloud" / "gateway"
    assert AgentSettings().data_dir == tmp_path / "state" / "edgecloud" / "agent"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert GatewaySettings().data_dir == tmp_path / "home/.local/state/edgecloud/gateway"
    assert AgentSettings().data_dir == tmp_path / "home/.local/state/edgecloud/agent"


def test_registry_keeps_its_former_name(tmp_path: Path) -> None:
    """A settings file with the former registry_dir still names the gateway's registry."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"registry_dir: {tmp_path / 'shared'}\n")
    assert load_settings(GatewaySettings, config).registry == str(tmp_path / "shared")
    assert load_settings(GatewaySettings, config, registry="/flag").registry == "/flag"
    assert GatewaySettings(registry=tmp_path / "r").registry == str(tmp_path / "r")


def test_each_model_names_its_execution_providers(tmp_path: Path) -> None:
    """`execution_providers` gives a model its ordered providers, `default` covers the
    others, CPU alone when neither is set; an unknown provider is refused at start."""
    from edgecloud.cli import _execution_providers
    from edgecloud.core.errors import InvalidInput

    flags = _execution_providers(["heavy=CUDAExecutionProvider,CPUExecutionProvider",
                                  "TensorrtExecutionProvider"])
    s = load_settings(GatewaySettings, None, data_dir=tmp_path, execution_providers=flags)
    assert s.providers_for("heavy") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.providers_for("other") == ["TensorrtExecutionProvider"]
    assert GatewaySettings(data_dir=tmp_path).providers_for("x") == ["CPUExecutionProvider"]
    with pytest.raises(InvalidInput, match="execution_providers"):
        load_settings(GatewaySettings, None, data_dir=tmp_path,
                      execution_providers={"m": ["CudaProvider"]})
