"""Where generated images land in S3: deterministic keys, metadata, and what a rerun can reuse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import tenacity

from airflow_provider_seedream.image_formats import EXTENSIONS

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

META_FINGERPRINT = "seedream-fingerprint"
META_GROUP = "seedream-group"
META_SHA256 = "seedream-sha256"
META_MODEL = "seedream-model"
META_SIZE = "seedream-size"
META_PROMPT_INDEX = "seedream-prompt-index"
META_IMAGE_INDEX = "seedream-image-index"
META_REQUEST_ID = "seedream-request-id"
UPLOAD_ATTEMPTS = 4


class StorageError(Exception):
    """S3 refused an operation; the message says which bucket and key, never credentials."""


@dataclass(frozen=True)
class StoredObject:
    """An image object in S3 and what its metadata says about it."""

    bucket: str
    key: str
    prompt_index: int
    image_index: int
    model: str
    size: str
    content_type: str
    bytes: int
    sha256: str
    fingerprint: str
    group: tuple[int, ...] = ()

    @property
    def s3_uri(self) -> str:
        """The object's ``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


def image_extension(output_format: str | None, model: str) -> str:
    """The key's extension: the 4.x models always answer JPEG, the others what was asked (JPEG by default)."""
    if output_format == "png" and "seedream-4" not in model:
        return EXTENSIONS["png"]
    return EXTENSIONS["jpeg"]


def _client_error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return None


def _upload_retryable(error: BaseException) -> bool:
    code = _client_error_code(error)
    if code is None:
        return not isinstance(error, (StorageError, ValueError, TypeError))
    return code in {"500", "502", "503", "504", "InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"}


class ImageStore:
    """
    The images of one task in one bucket, under one prefix.

    :param client: a boto3 S3 client (from the amazon provider's ``S3Hook``).
    :param bucket: the bucket.
    :param prefix: the key prefix; keys are ``<prefix>/<prompt index>-<image index>.<ext>``.
    :param transfer_config: boto3's ``TransferConfig`` for uploads.
    """

    def __init__(self, client: S3Client, bucket: str, prefix: str, transfer_config: Any = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.transfer_config = transfer_config

    def prompt_prefix(self, prompt_index: int) -> str:
        """The key prefix shared by every image of one prompt."""
        stem = f"{prompt_index:05d}-"
        return f"{self.prefix}/{stem}" if self.prefix else stem

    def key_for(self, prompt_index: int, image_index: int, extension: str) -> str:
        """The deterministic key of one image."""
        return f"{self.prompt_prefix(prompt_index)}{image_index:02d}.{extension}"

    def check_bucket(self) -> None:
        """Fail with a clear message when the bucket is missing or not ours to write."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            code = _client_error_code(error)
            if code in ("404", "NoSuchBucket"):
                raise StorageError(f"s3_bucket: bucket {self.bucket!r} does not exist") from None
            if code in ("403", "AccessDenied"):
                raise StorageError(f"s3_bucket: access to bucket {self.bucket!r} is denied for these credentials") from None
            raise StorageError(f"s3_bucket: cannot reach bucket {self.bucket!r}: {type(error).__name__}: {code or error}") from None

    def stored_group(self, prompt_index: int, fingerprint: str) -> list[StoredObject] | None:
        """
        Return the images stored earlier from the same prompt and parameters, or ``None``.

        A group counts only when every image its response produced is present and each
        object's fingerprint matches; anything else must be generated again.
        """
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prompt_prefix(prompt_index))
        keys = sorted(item["Key"] for item in listing.get("Contents", []))
        if not keys:
            return None
        first = self.head(keys[0])
        if first is None or first.fingerprint != fingerprint:
            return None
        by_index = {}
        for key in keys:
            stored = first if key == keys[0] else self.head(key)
            if stored is not None and stored.fingerprint == fingerprint:
                by_index[stored.image_index] = stored
        if not first.group or not set(first.group) <= set(by_index):
            return None
        return [by_index[index] for index in first.group]

    def head(self, key: str) -> StoredObject | None:
        """Read one object's metadata; ``None`` when it is not one of ours."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if _client_error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        metadata = response.get("Metadata", {})
        if META_FINGERPRINT not in metadata or META_SHA256 not in metadata:
            return None
        try:
            group = tuple(int(part) for part in metadata.get(META_GROUP, "").split(",") if part)
        except ValueError:
            group = ()
        return StoredObject(
            bucket=self.bucket,
            key=key,
            prompt_index=int(metadata.get(META_PROMPT_INDEX, -1)),
            image_index=int(metadata.get(META_IMAGE_INDEX, -1)),
            model=metadata.get(META_MODEL, ""),
            size=metadata.get(META_SIZE, ""),
            content_type=response.get("ContentType", "application/octet-stream"),
            bytes=int(response.get("ContentLength", 0)),
            sha256=metadata[META_SHA256],
            fingerprint=metadata[META_FINGERPRINT],
            group=group,
        )

    def upload(self, fileobj: IO[bytes], stored: StoredObject, request_id: str | None) -> None:
        """Upload ``fileobj`` (rewound before each try) with the image's metadata; retried on S3 faults."""
        metadata = {
            META_FINGERPRINT: stored.fingerprint,
            META_GROUP: ",".join(str(index) for index in stored.group),
            META_SHA256: stored.sha256,
            META_MODEL: stored.model,
            META_SIZE: stored.size,
            META_PROMPT_INDEX: str(stored.prompt_index),
            META_IMAGE_INDEX: str(stored.image_index),
        }
        if request_id:
            metadata[META_REQUEST_ID] = request_id

        def attempt() -> None:
            fileobj.seek(0)
            self.client.upload_fileobj(
                fileobj,
                self.bucket,
                stored.key,
                ExtraArgs={"ContentType": stored.content_type, "Metadata": metadata},
                Config=self.transfer_config,
            )

        retrying: Callable[..., None] = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(UPLOAD_ATTEMPTS),
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=10),
            retry=tenacity.retry_if_exception(_upload_retryable),
            reraise=True,
        )
        try:
            retrying(attempt)
        except Exception as error:
            code = _client_error_code(error)
            raise StorageError(
                f"upload to {stored.s3_uri} failed: {type(error).__name__}" + (f" ({code})" if code else "")
            ) from None
