"""Writing files so that a reader sees the old content or the whole new one, and a crash
leaves at most temp files, which :func:`remove_orphans` clears at the next start."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

TEMP_SUFFIX = ".tmp"
"""Suffix of the temp files :func:`atomic_write` leaves behind when the process dies."""


def atomic_write(path: Path, data: bytes, *, make_parents: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: temp file beside it, fsync, rename.

    The temp file has a unique name (several processes may write the same
    path, e.g. gateway replicas on one registry) and is removed on failure.
    The file ends up mode 0644; the rename is made durable where the platform
    lets us open the directory. Raises ``OSError`` whose ``filename`` is
    ``path``, never the temp file.
    """
    path = Path(path)
    temp = None
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                    suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    sync_directory(path.parent)


def sync_directory(path: Path) -> None:
    """Make the renames done in directory ``path`` durable (fsync of the directory), where
    the platform lets us open a directory; a crash after it cannot undo them."""
    with contextlib.suppress(OSError):
        directory = os.open(path, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def replace_durably(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` (whose content is already synced) and sync the
    directory, so the new name survives a crash."""
    os.replace(source, target)
    sync_directory(Path(target).parent)


def remove_orphans(folders: Iterable[Path], matches, *, older_than_s: float = 0.0,
                   now: float | None = None) -> list[Path]:
    """Delete the files directly in ``folders`` for which ``matches(name)`` holds and
    that were last written at least ``older_than_s`` ago; returns them.

    Temp files a crashed writer left behind; ``older_than_s`` spares those another
    process sharing the folder may be writing right now. Missing folders are skipped.
    """
    now = time.time() if now is None else now
    removed = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False) or not matches(entry.name):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime < older_than_s:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:  # another process removed or renamed it
                continue
            removed.append(Path(entry.path))
    return removed


def is_atomic_write_temp(name: str) -> bool:
    """True for the name of a temp file :func:`atomic_write` makes (``.NAME.XXXX.tmp``)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)
