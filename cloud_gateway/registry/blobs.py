"""Content-addressed, immutable artifact bytes: ``blobs/sha256/<hex>``.

An upload is staged in a local file while it is hashed and counted, checked
against the manifest's digest and size, and only then stored; a blob is
therefore whole or absent. Staging files of a process that crashed are removed
when a gateway starts (:meth:`BlobStore.remove_orphans`, only old ones: another
replica may be uploading into a shared directory right now). In object
storage, blobs read on this machine are cached by digest (they never change).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import structlog

from edgecloud.cloud_gateway.storage import DirectoryStore, ObjectStore
from edgecloud.cloud_gateway.storage.objects import full_disk_errors
from edgecloud.core.errors import InvalidInput, NotFound
from edgecloud.core.files import remove_orphans, replace_durably

log = structlog.get_logger("edgecloud.gateway.registry")

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def blob_key(digest: str) -> str:
    """The key of a digest's blob; InvalidInput for anything but ``sha256:<64 hex>``."""
    if not _DIGEST_RE.fullmatch(digest or ""):
        raise InvalidInput(f"digest {digest!r} is not sha256:<64 hex digits>")
    return "blobs/sha256/" + digest.removeprefix("sha256:")


class BlobStore:
    """Blobs in ``store``; ``local`` is this machine's folder for staging (and, for
    object storage, the cache of blobs read)."""

    def __init__(self, store: ObjectStore, local: Path) -> None:
        self._store = store
        self._local = Path(local)
        self.staging = self._local / "tmp"
        self._cache = None if isinstance(store, DirectoryStore) else self._local / "sha256"

    def staging_file(self, prefix: str = "upload-") -> Path:
        """A new empty file of its own in the staging folder (the caller removes it)."""
        with full_disk_errors():
            self.staging.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.staging, prefix=prefix)
            os.close(fd)
        return Path(name)

    def remove_orphans(self, older_than_s: float, *, now: float | None = None) -> list[Path]:
        """Remove staging files untouched for ``older_than_s`` (uploads and fetches of a
        process that died); returns them."""
        return remove_orphans([self.staging], lambda _: True, older_than_s=older_than_s,
                              now=now)

    def exists(self, digest: str) -> bool:
        return self._store.exists(blob_key(digest))

    def put(self, chunks: Iterable[bytes], digest: str, size: int) -> None:
        """Store the bytes of ``chunks`` as ``digest``; InvalidInput (nothing stored) when
        they are longer or shorter than ``size`` or hash to another digest."""
        key = blob_key(digest)
        staged = self.staging_file(prefix=f"{digest.removeprefix('sha256:')[:16]}.")
        try:
            hasher = hashlib.sha256()
            written = 0
            with full_disk_errors(), open(staged, "wb") as f:
                for chunk in chunks:
                    written += len(chunk)
                    if written > size:
                        raise InvalidInput(f"artifact is larger than the manifest's size {size}")
                    hasher.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if written != size:
                raise InvalidInput(f"artifact is truncated: {written} bytes, manifest says "
                                   f"{size}")
            got = "sha256:" + hasher.hexdigest()
            if got != digest:
                raise InvalidInput(f"artifact digest {got} does not match the manifest {digest}")
            if isinstance(self._store, DirectoryStore):
                final = self._store.root / key
                with full_disk_errors():
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.chmod(staged, 0o644)
                    replace_durably(staged, final)
            elif not self._store.exists(key):
                self._store.put_file(key, staged)
        finally:
            staged.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        """A local file holding the blob (NotFound when the registry does not hold it)."""
        key = blob_key(digest)
        local = self._store.local_path(key)
        if local is not None:
            return local
        if self._cache is None:
            raise NotFound(f"artifact {digest} is not in the registry")
        cached = self._cache / digest.removeprefix("sha256:")
        if cached.is_file():
            return cached
        staged = self.staging_file(prefix="fetch-")
        try:
            if not self._store.get_file(key, staged):
                raise NotFound(f"artifact {digest} is not in the registry")
            hasher = hashlib.sha256()
            with open(staged, "rb") as f:
                while data := f.read(1 << 20):
                    hasher.update(data)
            if "sha256:" + hasher.hexdigest() != digest:
                raise NotFound(f"artifact {digest} is damaged in the registry")
            with full_disk_errors():
                self._cache.mkdir(parents=True, exist_ok=True)
                os.replace(staged, cached)
        finally:
            staged.unlink(missing_ok=True)
        return cached
