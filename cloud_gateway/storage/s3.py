"""The registry's objects in S3-compatible object storage (``s3://BUCKET/PREFIX``).

The AWS SDK (boto3) finds the endpoint (``AWS_ENDPOINT_URL``, unless
``--s3-endpoint`` names one) and the credentials (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, or any other source the SDK knows) itself.

Conditional writes are the server's: ``If-None-Match: *`` creates an object
only when the key is free, ``If-Match: <etag>`` replaces it only when it is
unchanged; the loser gets 412 Precondition Failed (409 when a conditional
write races another on some servers), turned into :class:`Conflict`. AWS S3
has honoured both since 2024; SeaweedFS (the tests' server) honours both,
atomically under concurrent writers (checked in the tests).
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

from edgecloud.cloud_gateway.storage.objects import Conflict, Stored
from edgecloud.core.errors import NotFound, Unavailable

_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    """Objects under ``prefix`` in ``bucket``."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint or None, region_name=region or "us-east-1",
            config=botocore.config.Config(
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=5, read_timeout=30,
                # Path-style: works with every S3-compatible server and any bucket name.
                s3={"addressing_style": "path"},
                max_pool_connections=32,
            ))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, method: str, **kwargs):
        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code == "NoSuchBucket":
                raise NotFound(f"registry {self.url}: bucket {self.bucket!r} does not exist; "
                               "create it first") from None
            raise
        except (botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError) as exc:
            raise Unavailable(f"registry {self.url}: object storage is unreachable") from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise Unavailable(f"registry {self.url}: no credentials (set AWS_ACCESS_KEY_ID "
                              "and AWS_SECRET_ACCESS_KEY)") from exc

    def get(self, key: str) -> Stored | None:
        try:
            reply = self._call("get_object", Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise
        with reply["Body"] as body:
            return Stored(body.read(), reply["ETag"])

    def put(self, key: str, data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        kwargs = {}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        elif if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            reply = self._call("put_object", Key=self._key(key), Body=data, **kwargs)
        except botocore.exceptions.ClientError as exc:
            if kwargs and _code(exc) in _CONFLICT_CODES | _MISSING_CODES:
                raise Conflict(key) from None
            raise
        return reply["ETag"]

    def put_file(self, key: str, path: Path) -> None:
        try:
            self._client.upload_file(str(path), self.bucket, self._key(key))
        except boto3.exceptions.S3UploadFailedError as exc:
            raise Unavailable(f"registry {self.url}: upload of {key} failed") from exc

    def get_file(self, key: str, path: Path) -> bool:
        try:
            self._client.download_file(self.bucket, self._key(key), str(path))
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return False
            raise
        return True

    def local_path(self, key: str) -> Path | None:
        return None

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return False
            raise
        return True

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        token = None
        while True:
            kwargs = {"Prefix": full}
            if start_after:
                kwargs["StartAfter"] = self._key(start_after)
            if token:
                kwargs["ContinuationToken"] = token
            reply = self._call("list_objects_v2", **kwargs)
            keys.extend(item["Key"][strip:] for item in reply.get("Contents", ()))
            if not reply.get("IsTruncated"):
                return sorted(keys)
            token = reply["NextContinuationToken"]

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._key(key))

    def is_empty(self) -> bool:
        prefix = f"{self.prefix}/" if self.prefix else ""
        reply = self._call("list_objects_v2", Prefix=prefix, MaxKeys=1)
        return not reply.get("Contents")
