"""`S3Store`: objects in an S3 bucket via boto3 — AWS S3, MinIO, or OCI Object Storage's S3-compatible API.

With an `endpoint_url` (MinIO, OCI, moto) the client uses path-style addressing, since those endpoints
do not serve virtual-hosted bucket names. Checksums are only sent where S3 requires them: newer boto3
otherwise adds CRC trailers with aws-chunked uploads that OCI and older MinIO reject; a Content-MD5
header protects each upload instead, which all three verify. An S3 PUT is atomic, so readers never
see a partial object.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fluxrun_server.storage.base import ObjectNotFound, ObjectStoreError, check_key, check_range

__all__ = ["S3Store", "make_config"]

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})


def make_config(*, path_style: bool, max_attempts: int = 5) -> Config:
    """Retries with backoff for throttling and 5xx, bounded timeouts so a stuck endpoint cannot hang ingest."""
    options: dict[str, Any] = {
        "retries": {"total_max_attempts": max_attempts, "mode": "standard"},  # first try included
        "connect_timeout": 10,
        "read_timeout": 60,
        "max_pool_connections": 32,
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    if path_style:
        options["s3"] = {"addressing_style": "path"}
    try:
        return Config(**options)
    except TypeError:  # botocore < 1.36 has no checksum settings and sends no checksum trailers anyway
        del options["request_checksum_calculation"], options["response_checksum_validation"]
        return Config(**options)


class S3Store:
    """An `ObjectStore` over one bucket, with every key placed under `prefix` (e.g. `bundles/`)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        prefix: str = "",
        client: Any = None,
        create_bucket: bool = False,
    ) -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        if bool(access_key) != bool(secret_key):
            raise ValueError("S3Store: give both access_key and secret_key, or neither (to use the default chain)")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        location = f"{endpoint_url.rstrip('/')}/{bucket}" if endpoint_url else f"s3://{bucket}"
        self.backend = f"S3 store {location}/{self.prefix}"
        if client is None:
            if endpoint_url and not region:
                region = "us-east-1"  # MinIO and moto accept any region; SigV4 needs one to sign with
            session = boto3.session.Session()
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None,
                config=make_config(path_style=endpoint_url is not None),
            )
        self.client = client
        self.region = region or client.meta.region_name
        if create_bucket:
            self._create_bucket()

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    def _create_bucket(self) -> None:
        """Create the bucket if it is missing (for tests and first runs); one we already own is fine."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise self._error("create bucket", None, exc) from exc
        except BotoCoreError as exc:
            raise self._error("create bucket", None, exc) from exc

    def _key(self, key: str) -> str:
        check_key(key, self.backend)
        return self.prefix + key

    def _error(self, action: str, key: str | None, exc: BaseException) -> ObjectStoreError:
        where = f" {key!r}" if key is not None else ""
        if isinstance(exc, ClientError):
            code = _code(exc)
            message = exc.response.get("Error", {}).get("Message") or ""
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if key is not None and code in _NOT_FOUND:
                return ObjectNotFound(f"{self.backend}: no object{where}", key=key, backend=self.backend)
            detail = f"{code} (HTTP {status}){': ' + message if message else ''}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return ObjectStoreError(f"{self.backend}: {action}{where} failed: {detail}", key=key, backend=self.backend)

    def put(self, key: str, data: bytes) -> None:
        """One PutObject (atomic in S3), with Content-MD5 so a body damaged in transit is refused by the server."""
        full = self._key(key)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentMD5=md5)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("put", key, exc) from exc

    def get(self, key: str) -> bytes:
        full = self._key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            with contextlib.closing(response["Body"]) as body:
                data: bytes = body.read()
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error("get", key, exc) from exc
        expected = response.get("ContentLength")
        if expected is not None and len(data) != expected:
            raise ObjectStoreError(
                f"{self.backend}: get {key!r}: got {len(data)} of {expected} bytes", key=key, backend=self.backend
            )
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """A GET with `Range: bytes=a-b`; anything but exactly `length` bytes (e.g. past the end) is an error."""
        check_range(key, offset, length, self.backend)
        full = self._key(key)
        if length == 0:  # an empty Range is not valid HTTP; the object and the offset must still exist
            size = self._size(key, full)
            if offset > size:
                raise self._past_end(key, offset, length, size)
            return b""
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={offset}-{offset + length - 1}"
            )
            with contextlib.closing(response["Body"]) as body:
                data: bytes = body.read()
        except ClientError as exc:
            if _code(exc) == "InvalidRange":
                raise self._past_end(key, offset, length, None) from exc
            raise self._error("get_range", key, exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise self._error("get_range", key, exc) from exc
        if len(data) != length or ("ContentRange" not in response and offset != 0):
            raise ObjectStoreError(
                f"{self.backend}: range {offset}+{length} of {key!r} returned {len(data)} bytes "
                f"(Content-Range {response.get('ContentRange')!r}): the range is past the end or was ignored",
                key=key,
                backend=self.backend,
            )
        return data

    def _past_end(self, key: str, offset: int, length: int, size: int | None) -> ObjectStoreError:
        total = f" ({size} bytes)" if size is not None else ""
        return ObjectStoreError(
            f"{self.backend}: range {offset}+{length} is past the end of {key!r}{total}", key=key, backend=self.backend
        )

    def _size(self, key: str, full: str) -> int:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("head", key, exc) from exc
        return int(response["ContentLength"])

    def delete(self, key: str) -> None:
        """DeleteObject; S3 answers 204 for a missing key too, and a 404 from a stricter clone is fine as well."""
        full = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return
            raise self._error("delete", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("delete", key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self._size(key, self._key(key))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """ListObjectsV2 pages under `self.prefix + prefix`, keys returned without the store's prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                contents: builtins.list[dict[str, Any]] = page.get("Contents", [])
                for item in contents:
                    yield item["Key"][len(self.prefix) :]
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", prefix, exc) from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
