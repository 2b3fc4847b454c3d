"""Loading tasks from files: edge models and their routing policies."""

from __future__ import annotations

from pathlib import Path

import structlog

from edgecloud.core.errors import InvalidInput
from edgecloud.core.model import OnnxModel
from edgecloud.router import Policy, PolicyError, parse_policy

log = structlog.get_logger("edgecloud.agent")

DEFAULT_THRESHOLD = 0.5
"""Margin threshold used for a task started without a policy."""


def read_policy_file(path: Path) -> Policy:
    """Parse a policy file (YAML or JSON); InvalidInput names the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"policy file {path} is not UTF-8 text") from None
    try:
        return parse_policy(text)
    except PolicyError as exc:
        raise InvalidInput(f"policy file {path}: {exc}") from None


def load_tasks(
    models: dict[str, Path], policy_files: list[Path], onnx_threads: int = 1
) -> list[tuple[OnnxModel, Policy]]:
    """Pair each task's edge model with the policy that names the task.

    A policy for a task that is not served is refused; a task without a
    policy gets a plain margin policy and a warning.
    """
    policies: dict[str, Policy] = {}
    for path in policy_files:
        policy = read_policy_file(path)
        if policy.name not in models:
            raise InvalidInput(
                f"policy file {path} is for task {policy.name!r}, which is not served "
                f"(tasks: {', '.join(sorted(models)) or 'none'})"
            )
        if policy.name in policies:
            raise InvalidInput(f"two policy files for task {policy.name!r}")
        policies[policy.name] = policy
    loaded = []
    for name, path in models.items():
        model = OnnxModel.load(path, name=name, version="1", intra_op_threads=onnx_threads)
        policy = policies.get(name)
        if policy is None:
            policy = Policy(name=name, threshold=DEFAULT_THRESHOLD)
            log.warning("task_without_policy", task=name, threshold=DEFAULT_THRESHOLD)
        loaded.append((model, policy))
    return loaded
