"""The one way a registry is named: a directory, or ``s3://BUCKET/PREFIX``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgecloud.core.errors import InvalidInput

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed ``--registry`` value."""

    text: str
    path: Path
    """The directory (for a directory registry)."""
    bucket: str | None = None
    """The bucket, for ``s3://``; None for a directory."""
    prefix: str = ""
    """Key prefix inside the bucket, without slashes at either end."""
    endpoint: str | None = None
    """S3 endpoint URL (``--s3-endpoint``); None: the SDK's (``AWS_ENDPOINT_URL``)."""

    @property
    def is_directory(self) -> bool:
        return self.bucket is None


def parse_location(text: str | Path, *, endpoint: str | None = None) -> Location:
    """``DIR`` or ``s3://BUCKET[/PREFIX]``; InvalidInput for any other URL."""
    text = str(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return Location(text, Path(text))
    if scheme != "s3":
        raise InvalidInput(f"registry {text}: {scheme}:// is not a registry location; give a "
                           "directory or s3://BUCKET/PREFIX")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise InvalidInput(f"registry {text}: {bucket!r} is not a valid bucket name")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise InvalidInput(f"registry {text}: the prefix may not hold empty, '.' or '..' parts")
    return Location(text, Path(), bucket, prefix, endpoint)
