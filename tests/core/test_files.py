"""Atomic file writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.core.files import atomic_write


def test_failed_write_names_the_target_and_leaves_nothing(tmp_path: Path) -> None:
    """A write that cannot happen raises an OSError naming the target file, not a temp file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "policy.yaml"
    with pytest.raises(OSError) as caught:
        atomic_write(target, b"data")
    assert caught.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
