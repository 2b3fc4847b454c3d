"""The storage interface the registry is written against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Conflict(Exception):
    """A conditional write lost: the object exists (create) or changed since it was read
    (replace). The registry turns it into ALREADY_EXISTS or retries its compare-and-swap."""


@dataclass(frozen=True, slots=True)
class Stored:
    """An object's bytes and the tag that names this content (for compare-and-swap)."""

    data: bytes
    etag: str


class ObjectStore(Protocol):
    """Objects by key (``a/b/c.json``). Every method is blocking; call from a thread.

    Guarantees each implementation gives: a reader sees an object whole or not
    at all; :meth:`put` with ``if_none_match`` creates the object only when no
    object has the key (two racing creators: one wins, the other gets
    :class:`Conflict`); :meth:`put` with ``if_match`` replaces it only when its
    tag is still the one read (else :class:`Conflict`).
    """

    url: str
    """Where the store is, for messages (a directory or ``s3://bucket/prefix``)."""

    def get(self, key: str) -> Stored | None:
        """The object, or None when there is none."""
        ...

    def put(self, key: str, data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        """Write the object (conditionally); returns its new tag."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store a local file's bytes under ``key`` (large blobs; content-addressed, so an
        existing object is simply replaced by the same bytes)."""
        ...

    def get_file(self, key: str, path: Path) -> bool:
        """Copy the object into the local file ``path``; False when there is none."""
        ...

    def local_path(self, key: str) -> Path | None:
        """Where the object lies on this machine, when it does (a directory store)."""
        ...

    def exists(self, key: str) -> bool:
        """True when an object has the key."""
        ...

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        """Every key under ``prefix`` (recursively), sorted; with ``start_after``, only the
        keys that sort after it (S3's ``StartAfter``: the server skips the rest)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; nothing when there is none."""
        ...

    def is_empty(self) -> bool:
        """True when the store holds no object at all."""
        ...


FULL_ERRNOS = frozenset({28, 122})
"""ENOSPC and EDQUOT (Linux numbers; ``errno`` lacks EDQUOT on some platforms)."""


def full_disk_errors():
    """Context manager: a full disk or quota while writing becomes Overloaded
    (RESOURCE_EXHAUSTED: retry later, or free space), never INTERNAL."""
    import contextlib

    from edgecloud.core.errors import Overloaded

    @contextlib.contextmanager
    def mapped():
        try:
            yield
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise Overloaded("the registry's storage is full: free space and retry") \
                    from exc
            raise

    return mapped()
