"""The registry's objects as files under one directory (the embedded default).

Keys are relative paths. Every write is a temp file, fsync, rename, so a
reader sees the old object or the new one whole. A create-only write links
the temp file into place (``link`` fails when the name is taken: one of two
racing creators wins); a replace-if-unchanged write compares tags under an
``flock`` on ``.lock`` (several processes on one machine, or a POSIX volume
whose locks work). An object's tag is the MD5 of its bytes, as S3's is for a
simple upload.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgecloud.cloud_gateway.storage.objects import Conflict, Stored, full_disk_errors
from edgecloud.core.errors import InvalidInput
from edgecloud.core.files import (
    atomic_write,
    is_atomic_write_temp,
    remove_orphans,
    replace_durably,
    sync_directory,
)


def etag_of(data: bytes) -> str:
    """The tag of ``data``: its MD5 (a content tag, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class DirectoryStore:
    """Objects as files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"object key {key!r} is not a relative path")
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "ab+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, key: str) -> Stored | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return Stored(data, etag_of(data))

    def put(self, key: str, data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        path = self._path(key)
        with full_disk_errors():
            if if_none_match:
                self._create(path, data)
            elif if_match is not None:
                with self._locked():
                    current = self.get(key)
                    if current is None or current.etag != if_match:
                        raise Conflict(key)
                    atomic_write(path, data, make_parents=True)
            else:
                atomic_write(path, data, make_parents=True)
        return etag_of(data)

    def _create(self, path: Path, data: bytes) -> None:
        _make_folders(path.parent)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o644)
            try:
                os.link(temp, path)
            except FileExistsError:
                raise Conflict(str(path)) from None
            sync_directory(path.parent)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)

    def put_file(self, key: str, path: Path) -> None:
        final = self._path(key)
        with full_disk_errors():
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.",
                                        suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(path, temp)
                with open(temp, "rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(temp, 0o644)
                replace_durably(temp, final)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temp)

    def get_file(self, key: str, path: Path) -> bool:
        source = self._path(key)
        if not source.is_file():
            return False
        shutil.copyfile(source, path)
        return True

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        out = []
        for directory, _, files in os.walk(base):
            rel = Path(directory).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith("."):
                    continue  # temp files and the lock
                key = name if rel == "." else f"{rel}/{name}"
                if key > start_after:
                    out.append(key)
        return sorted(out)

    def remove_orphans(self, older_than_s: float, *, now: float | None = None) -> list[Path]:
        """Delete the temp files of writes that died (``.NAME.XXXX.tmp``, anywhere under
        the root) once untouched for ``older_than_s``; returns them."""
        folders = [Path(directory) for directory, _, _ in os.walk(self.root)]
        return remove_orphans(folders, is_atomic_write_temp, older_than_s=older_than_s,
                              now=now)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self._path(key).unlink()

    def is_empty(self) -> bool:
        return not self.root.is_dir() or not any(self.list(""))


def _make_folders(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each made durable in its own parent (a
    create-only write is acknowledged as kept: a crash must not take its folder away)."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        sync_directory(created.parent)
