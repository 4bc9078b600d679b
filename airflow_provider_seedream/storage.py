"""Where generated images land in S3: deterministic keys, metadata, and what a rerun can reuse."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import tenacity

from airflow_provider_seedream.image_formats import EXTENSIONS
from airflow_provider_seedream.results import GeneratedImage, GenerationResult

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
PENDING_FOLDER = "_pending"
# Signed links live 24 hours; a pending record is trusted for a little less.
PENDING_SECONDS = 23 * 3600


# S3 answers after which no other upload of the batch can succeed.
FATAL_CODES = frozenset(
    {"AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403", "404"}
)


class StorageError(Exception):
    """S3 refused an operation; the message says which bucket and key, never credentials.

    :param message: what failed.
    :param code: S3's error code, if it gave one.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        self.code = code
        super().__init__(message)

    @property
    def fatal(self) -> bool:
        """Whether every other upload to this bucket would fail the same way."""
        return self.code in FATAL_CODES


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
    """

    def __init__(self, client: S3Client, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def prompt_prefix(self, prompt_index: int) -> str:
        """The key prefix shared by every image of one prompt."""
        stem = f"{prompt_index:05d}-"
        return f"{self.prefix}/{stem}" if self.prefix else stem

    def key_for(self, prompt_index: int, image_index: int, extension: str) -> str:
        """The deterministic key of one image."""
        return f"{self.prompt_prefix(prompt_index)}{image_index:02d}.{extension}"

    def pending_key(self, prompt_index: int) -> str:
        """Where the links of a prompt's images wait while they are downloaded and stored."""
        stem = f"{PENDING_FOLDER}/{prompt_index:05d}.json"
        return f"{self.prefix}/{stem}" if self.prefix else stem

    def save_pending(self, prompt_index: int, fingerprint: str, result: GenerationResult) -> bool:
        """
        Record the signed links of images just paid for, until they are stored.

        A task killed or retried before storing them downloads them from these links
        instead of paying for them again. Images returned as ``b64_json`` have no link.
        """
        images = [{"index": image.index, "url": image.url, "size": image.size} for image in result.succeeded if image.url]
        if not images:
            return False
        record = {
            "fingerprint": fingerprint,
            "model": result.model,
            "request_id": result.request_id,
            "expires_at": time.time() + PENDING_SECONDS,
            "images": images,
        }
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.pending_key(prompt_index),
            Body=json.dumps(record).encode(),
            ContentType="application/json",
        )
        return True

    def pending_prompts(self) -> set[int]:
        """The prompt indices that have pending links, found with one listing."""
        folder = self.pending_key(0).rsplit("/", 1)[0] + "/"
        indices = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                stem = item["Key"][len(folder) :].removesuffix(".json")
                if stem.isdigit():
                    indices.add(int(stem))
        return indices

    def load_pending(self, prompt_index: int, fingerprint: str) -> GenerationResult | None:
        """The images an earlier attempt paid for and did not store, if their links are still valid."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.pending_key(prompt_index))["Body"].read()
        except Exception as error:
            if _client_error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        try:
            record = json.loads(body)
        except ValueError:
            return None
        if record.get("fingerprint") != fingerprint or record.get("expires_at", 0) <= time.time():
            return None
        images = [GeneratedImage(index=int(item["index"]), url=item["url"], size=item.get("size")) for item in record["images"]]
        return GenerationResult(images=images, usage={}, model=record.get("model"), request_id=record.get("request_id"))

    def drop_pending(self, prompt_index: int) -> None:
        """Forget a prompt's pending links once its images are stored (or beyond reach)."""
        self.client.delete_object(Bucket=self.bucket, Key=self.pending_key(prompt_index))

    def check_bucket(self) -> None:
        """Fail with a clear message when the bucket is missing or not ours to write."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            code = _client_error_code(error)
            if code in ("404", "NoSuchBucket"):
                raise StorageError(f"s3_bucket: bucket {self.bucket!r} does not exist", "NoSuchBucket") from None
            if code in ("403", "AccessDenied"):
                message = f"s3_bucket: access to bucket {self.bucket!r} is denied for these credentials"
                raise StorageError(message, "AccessDenied") from None
            message = f"s3_bucket: cannot reach bucket {self.bucket!r}: {type(error).__name__}: {code or error}"
            raise StorageError(message, code) from None

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
            # One PutObject (an image is at most max_download_bytes). Unlike upload_fileobj,
            # it leaves the file open, so the next attempt can rewind it.
            fileobj.seek(0)
            self.client.put_object(
                Bucket=self.bucket,
                Key=stored.key,
                Body=fileobj,
                ContentType=stored.content_type,
                Metadata=metadata,
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
                f"upload to {stored.s3_uri} failed: {type(error).__name__}" + (f" ({code})" if code else ""), code
            ) from None
