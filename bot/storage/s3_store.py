"""R2 (or any S3 API, SeaweedFS here) through boto3, with the client settings R2 needs."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    HTTPClientError,
)

from bot import __version__
from bot.config import ConfigError, StorageSettings
from bot.storage.errors import StorageError
from bot.storage.multipart import READ_CHUNK, PartBody, PartInfo, PendingUpload

__all__ = ["S3Store"]

CONTENT_TYPE = "video/mp4"


def _strip(etag: str) -> str:
    return etag.strip('"')


class S3Store:
    """R2 through boto3: SigV4, checksums only "when_required", Content-MD5 on every part."""

    backend = "s3"

    def __init__(self, settings: StorageSettings) -> None:
        if not settings.endpoint_url or not settings.bucket:
            raise ConfigError(
                "storage.backend is 's3' but storage.endpoint_url or storage.bucket is empty "
                "(set them, or BOT_STORAGE_ENDPOINT_URL / BOT_STORAGE_BUCKET)"
            )
        self._settings = settings
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint_url
        host = urlsplit(settings.endpoint_url).hostname or ""
        try:
            self.loopback = host == "localhost" or ip_address(host).is_loopback
        except ValueError:
            self.loopback = False
        key = settings.sse_c_key.get_secret_value()
        self.encrypted = bool(key)
        # botocore base64-encodes the raw key and adds its MD5 header itself.
        self._sse: dict[str, Any] = (
            {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": base64.b64decode(key)}
            if key
            else {}
        )
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key_id or None,
            aws_secret_access_key=settings.secret_access_key.get_secret_value() or None,
            region_name=settings.region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "max_attempts": settings.max_attempts},
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                user_agent_extra=f"consultation-recorder/{__version__}",
            ),
        )

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{key} at {self.endpoint}"

    def _error(self, exc: Exception, action: str) -> StorageError:
        """Turn a botocore failure into one line: what, where, what to do."""
        where = f"{self.endpoint} (bucket {self.bucket!r})"
        if isinstance(exc, EndpointConnectionError | ConnectionError | HTTPClientError):
            return StorageError(
                f"cannot reach the object store at {self.endpoint} while trying to {action}: "
                f"{type(exc).__name__}; check storage.endpoint_url and the network",
                kind="unreachable",
                permanent=False,
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"} or (
                status in (401, 403) and not code.startswith("NoSuch")
            ):
                return StorageError(
                    f"{where} rejected the credentials ({code or status}) while trying to "
                    f"{action}; check storage.access_key_id and BOT_STORAGE_SECRET_ACCESS_KEY",
                    kind="credentials",
                    permanent=True,
                )
            if code == "NoSuchBucket" or (action == "check the bucket" and status == 404):
                return StorageError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it or "
                    "fix storage.bucket",
                    kind="bucket",
                    permanent=True,
                )
            if code == "NoSuchUpload":
                return StorageError(
                    f"multipart upload gone at {where}", kind="no_upload", permanent=True
                )
            transient = status >= 500 or status in (408, 429)
            return StorageError(
                f"{where} refused to {action}: {code or status}",
                kind="store",
                permanent=not transient,
            )
        return StorageError(
            f"request to {self.endpoint} to {action} is invalid: {type(exc).__name__}",
            kind="store",
            permanent=True,
        )

    def _call(self, action: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, action) from None

    def preflight(self) -> None:
        self._call("check the bucket", "head_bucket", Bucket=self.bucket)

    def create_upload(self, key: str, recording_id: str) -> str:
        response = self._call(
            "start the upload",
            "create_multipart_upload",
            Bucket=self.bucket,
            Key=key,
            ContentType=CONTENT_TYPE,
            Metadata={"recorder-version": __version__, "recording-id": recording_id},
            **self._sse,
        )
        return str(response["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, body: PartBody, md5: bytes) -> str:
        response = self._call(
            f"upload part {number}",
            "upload_part",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ContentMD5=base64.b64encode(md5).decode("ascii"),
            ContentLength=body.length,
            **self._sse,
        )
        return _strip(response["ETag"])

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        parts: list[PartInfo] = []
        marker = 0
        while True:
            response = self._call(
                "list the uploaded parts",
                "list_parts",
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumberMarker=marker,
            )
            for item in response.get("Parts", []):
                parts.append(PartInfo(item["PartNumber"], item["Size"], _strip(item["ETag"])))
            if not response.get("IsTruncated"):
                return sorted(parts, key=lambda p: p.number)
            marker = int(response["NextPartNumberMarker"])

    def probe(self, key: str, upload_id: str) -> None:
        self._call(
            "check the upload",
            "list_parts",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MaxParts=1,
        )

    def complete(self, key: str, upload_id: str, parts: list[PartInfo]) -> None:
        self._call(
            "complete the upload",
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": p.number, "ETag": f'"{p.etag}"'} for p in parts]
            },
            **self._sse,
        )

    def head(self, key: str) -> tuple[int, str | None] | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key, **self._sse)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise self._error(exc, "read the object's size") from None
        except BotoCoreError as exc:
            raise self._error(exc, "read the object's size") from None
        return int(response["ContentLength"]), _strip(response.get("ETag", "")) or None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        response = self._call(
            "read the object back",
            "get_object",
            Bucket=self.bucket,
            Key=key,
            Range=f"bytes={start}-{end - 1}",
            **self._sse,
        )
        try:
            return bytes(response["Body"].read())
        except BotoCoreError as exc:
            raise self._error(exc, "read the object back") from None

    def iter_object(self, key: str) -> Iterator[bytes]:
        response = self._call(
            "read the object back", "get_object", Bucket=self.bucket, Key=key, **self._sse
        )
        try:
            yield from response["Body"].iter_chunks(READ_CHUNK)
        except BotoCoreError as exc:
            raise self._error(exc, "read the object back") from None

    def put_small(self, key: str, data: bytes, content_type: str) -> None:
        self._call(
            "write the manifest",
            "put_object",
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),
            **self._sse,
        )

    def list_uploads(self, prefix: str) -> list[PendingUpload]:
        found: list[PendingUpload] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            response = self._call("list pending uploads", "list_multipart_uploads", **kwargs)
            for item in response.get("Uploads", []):
                found.append(PendingUpload(item["Key"], item["UploadId"], item["Initiated"]))
            if not response.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = response["NextKeyMarker"]
            kwargs["UploadIdMarker"] = response["NextUploadIdMarker"]

    def list_keys(self, prefix: str) -> list[str]:
        """Every stored key under ``prefix`` (a recording's tracks), sorted."""
        keys: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            response = self._call("list the objects", "list_objects_v2", **kwargs)
            keys.extend(item["Key"] for item in response.get("Contents", []))
            if not response.get("IsTruncated"):
                return sorted(keys)
            kwargs["ContinuationToken"] = response["NextContinuationToken"]

    def abort(self, key: str, upload_id: str) -> None:
        self._call(
            "abort a stale upload",
            "abort_multipart_upload",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
        )

    def presign_get(self, key: str, expires_in: int) -> str:
        """A time-limited GET URL. With SSE-C the caller must still send the key headers."""
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
            )
        )
