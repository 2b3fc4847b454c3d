"""Settings base: command-line flags over ``EDGECLOUD_*`` environment over a
YAML file over defaults.

Each process defines one subclass with nested sections and builds it once
with :func:`load_settings`; the object is passed down, never looked up
globally.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from edgecloud.core.errors import InvalidInput

S = TypeVar("S", bound="EdgecloudSettings")


class EdgecloudSettings(BaseSettings):
    """Base of every process's settings class."""

    model_config = SettingsConfigDict(
        env_prefix="EDGECLOUD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init arguments) win over the environment, which wins over YAML."""
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def state_dir(component: str) -> Path:
    """Default data directory of a process: per user, never the current directory.

    ``$XDG_STATE_HOME/edgecloud/<component>`` when that variable holds an
    absolute path, else ``~/.local/state/edgecloud/<component>``.
    """
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "edgecloud" / component


def format_validation_error(exc: ValidationError) -> str:
    """One line per bad field: ``path: problem``."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(document)"
        lines.append(f"{path}: {err['msg']}")
    return "\n".join(lines)


def load_settings(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """Build ``cls`` from flags, environment and an optional YAML file.

    Flags whose value is ``None`` were not given and do not override. Raises
    :class:`~core.errors.InvalidInput` with one line per bad field.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    target: type[S] = cls
    if config_file is not None:
        if not Path(config_file).is_file():
            raise InvalidInput(f"config file {config_file} does not exist")
        config = dict(cls.model_config)
        config["yaml_file"] = str(config_file)
        target = type(cls.__name__, (cls,), {"model_config": config, "__doc__": cls.__doc__})
    try:
        return target(**given)
    except ValidationError as exc:
        raise InvalidInput("invalid settings:\n" + format_validation_error(exc)) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed YAML
        raise InvalidInput(f"cannot read config file {config_file}: {exc}") from None
