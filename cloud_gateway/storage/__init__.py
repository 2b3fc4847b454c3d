"""Where the registry keeps its objects: one small interface, two implementations.

:class:`ObjectStore` is all the registry needs from storage: whole-object reads
and writes by key, conditional writes (create only if absent; replace only if
unchanged since read), listing by prefix, and files in and out for large blobs.

- :class:`DirectoryStore`: a directory (the embedded default), keys are paths.
- :class:`S3Store`: S3-compatible object storage (``s3://BUCKET/PREFIX``).

:func:`open_store` turns the ``--registry`` location into one of them.
"""

from edgecloud.cloud_gateway.storage.directory import DirectoryStore
from edgecloud.cloud_gateway.storage.location import Location, parse_location
from edgecloud.cloud_gateway.storage.objects import Conflict, ObjectStore, Stored

__all__ = ["Conflict", "DirectoryStore", "Location", "ObjectStore", "Stored", "open_store",
           "parse_location"]


def open_store(location: Location) -> ObjectStore:
    """The store a parsed location names (S3 client built only for ``s3://``)."""
    if location.bucket is None:
        return DirectoryStore(location.path)
    from edgecloud.cloud_gateway.storage.s3 import S3Store

    return S3Store(location.bucket, location.prefix, endpoint=location.endpoint)
