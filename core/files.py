"""Writing files so that a reader sees the old content or the whole new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
