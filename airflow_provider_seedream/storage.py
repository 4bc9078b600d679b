"""Where generated images land in S3: deterministic keys, metadata, and what a rerun can reuse."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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
META_RUN_ID = "seedream-run-id"
UPLOAD_ATTEMPTS = 4
PENDING_FOLDER = "_pending"
# Signed links live 24 hours; a pending record is trusted for a little less.
PENDING_SECONDS = 23 * 3600
# A key stem a prompt mapping may give: characters safe in S3 keys, folders allowed.
_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!_.*'()=+,@-]*(/[A-Za-z0-9!_.*'()=+,@-]+)*$")
MAX_STEM_CHARS = 512


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


def check_stem(stem: str) -> str | None:
    """Return why ``stem`` cannot be a key stem, or ``None`` when it can."""
    if not stem or len(stem) > MAX_STEM_CHARS:
        return f"must be 1 to {MAX_STEM_CHARS} characters"
    if stem.startswith("/") or ".." in stem.split("/") or "//" in stem:
        return "must be relative to s3_prefix: no leading '/', no '..' and no empty folder"
    if stem.split("/", 1)[0] == PENDING_FOLDER:
        return f"must not start with {PENDING_FOLDER}/, where unstored links are kept"
    if not _STEM.match(stem):
        return "may hold only letters, digits, '/' between folders and !_.*'()=+,@- (starting with a letter or digit)"
    return None


@dataclass(frozen=True)
class PendingRecord:
    """What an earlier try left for a prompt: links of images paid for, or a request of unknown outcome.

    :param status: ``answered`` (``result`` holds the links) or ``unknown`` (may have been billed).
    :param fingerprint: the request's fingerprint.
    :param run_id: the DAG run that wrote it.
    :param result: the images whose links are still valid (for ``unknown``, those that arrived).
    """

    status: str
    fingerprint: str
    run_id: str | None
    result: GenerationResult | None = None


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
    run_id: str | None = None

    @property
    def s3_uri(self) -> str:
        """The object's ``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


def image_extension(output_format: str | None, model: str) -> str:
    """The key's extension: the 4.x models always answer JPEG, the others what was asked (JPEG by default)."""
    if output_format == "png" and "seedream-4" not in model:
        return EXTENSIONS["png"]
    return EXTENSIONS["jpeg"]


def _ascii(value: str) -> str:
    """S3 metadata travels in HTTP headers: keep it ASCII."""
    return value.encode("ascii", "backslashreplace").decode("ascii")


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

    Each prompt has a key stem (its ``key``, or its index as ``00042``): its images are
    ``<prefix>/<stem>-<image:02d>.<ext>``, and what an earlier try left for it (links of
    images paid for and not yet stored, or a request whose outcome is unknown) is the record
    ``<prefix>/_pending/<stem>.json``. When S3 refuses a record it is kept under
    ``local_root`` instead, so a retry on the same machine still finds it.

    :param client: a boto3 S3 client (from the amazon provider's ``S3Hook``).
    :param bucket: the bucket.
    :param prefix: the key prefix.
    :param run_id: the DAG run writing the images, kept in their metadata.
    :param local_root: where records S3 refused are kept.
    """

    def __init__(
        self, client: S3Client, bucket: str, prefix: str, run_id: str | None = None, local_root: str | None = None
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.run_id = run_id
        root = local_root or os.environ.get("AIRFLOW_HOME") or tempfile.gettempdir()
        self.local_folder = Path(root, "seedream-pending", bucket, self.prefix or "_root")

    def _full(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def key_for(self, stem: str, image_index: int, extension: str) -> str:
        """The deterministic key of one image."""
        return self._full(f"{stem}-{image_index:02d}.{extension}")

    def pending_key(self, stem: str) -> str:
        """Where the record of a prompt's unstored images, or unknown outcome, is kept."""
        return self._full(f"{PENDING_FOLDER}/{stem}.json")

    # -- records of what an earlier try paid for ------------------------------------------------

    def save_pending(self, stem: str, fingerprint: str, result: GenerationResult) -> str | None:
        """
        Record the signed links of images just paid for, until they are stored.

        A task killed or retried before storing them downloads them from these links instead
        of paying for them again. Images already decoded from ``b64_json`` have no link.

        :return: ``s3`` or ``local`` (S3 refused it), or ``None`` when there was nothing to record.
        """
        images = [{"index": image.index, "url": image.url, "size": image.size} for image in result.succeeded if image.url]
        if not images:
            return None
        return self._write_record(stem, {
            "status": "answered",
            "fingerprint": fingerprint,
            "run_id": self.run_id,
            "model": result.model,
            "request_id": result.request_id,
            "expires_at": time.time() + PENDING_SECONDS,
            "images": images,
        })

    def save_unknown(
        self, stem: str, fingerprint: str, requested_images: int, reason: str, received: GenerationResult | None = None
    ) -> str:
        """
        Record a request whose outcome is unknown, so that no later try sends it again unasked.

        :param received: images that arrived before the answer broke off; their links are kept.
        """
        images = [] if received is None else [
            {"index": image.index, "url": image.url, "size": image.size} for image in received.succeeded if image.url
        ]
        return self._write_record(stem, {
            "status": "unknown",
            "fingerprint": fingerprint,
            "run_id": self.run_id,
            "requested_images": requested_images,
            "reason": reason[:300],
            "at": time.time(),
            "expires_at": time.time() + PENDING_SECONDS,
            "images": images,
        })

    def _write_record(self, stem: str, record: dict[str, Any]) -> str:
        body = json.dumps(record).encode()
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.pending_key(stem), Body=body, ContentType="application/json"
            )
            local = self.local_folder / f"{stem}.json"
            if local.exists():
                local.unlink()
            return "s3"
        except Exception:
            path = self.local_folder / f"{stem}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part")
            partial.write_bytes(body)
            partial.replace(path)
            return "local"

    def pending_stems(self) -> set[str]:
        """The stems that have a record, found with one listing (and the local folder)."""
        folder = self._full(PENDING_FOLDER) + "/"
        stems = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                if item["Key"].endswith(".json"):
                    stems.add(item["Key"][len(folder) : -len(".json")])
        if self.local_folder.is_dir():
            stems |= {str(path.relative_to(self.local_folder))[: -len(".json")] for path in self.local_folder.rglob("*.json")}
        return stems

    def load_pending(self, stem: str) -> PendingRecord | None:
        """What an earlier try left for ``stem``; ``None`` when nothing, or links that expired."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.pending_key(stem))["Body"].read()
        except Exception as error:
            if _client_error_code(error) not in ("404", "NoSuchKey", "NotFound"):
                raise
            local = self.local_folder / f"{stem}.json"
            if not local.is_file():
                return None
            body = local.read_bytes()
        try:
            record = json.loads(body)
        except ValueError:
            return None
        status = record.get("status", "answered")
        fresh = record.get("expires_at", 0) > time.time()
        images = [
            GeneratedImage(index=int(item["index"]), url=item["url"], size=item.get("size"))
            for item in record.get("images") or []
        ]
        result = None
        if images and fresh:
            result = GenerationResult(images=images, usage={}, model=record.get("model"), request_id=record.get("request_id"))
        # An unknown outcome stays one when its links expire: it may still have been billed.
        if status != "unknown" and result is None:
            return None
        return PendingRecord(status, record.get("fingerprint", ""), record.get("run_id"), result=result)

    def drop_pending(self, stem: str) -> None:
        """Forget a prompt's record once its images are stored (or beyond reach)."""
        self.client.delete_object(Bucket=self.bucket, Key=self.pending_key(stem))
        local = self.local_folder / f"{stem}.json"
        if local.exists():
            local.unlink()

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

    def stored_group(
        self, stem: str, fingerprint: str, extension: str, count: int, *, same_run: bool = False
    ) -> list[StoredObject] | None:
        """
        Return the images stored earlier from the same prompt and parameters, or ``None``.

        Only the keys this request would write are looked at (``<stem>-00.<ext>`` onwards, at
        most ``count``), so stray objects under the prefix never force a new generation. A group
        counts when every image its answer produced is present with the same fingerprint (and,
        with ``same_run``, was written by this DAG run).
        """

        run_id = _ascii(self.run_id) if self.run_id else None

        def matching(stored: StoredObject | None) -> bool:
            return (
                stored is not None
                and stored.fingerprint == fingerprint
                and (not same_run or stored.run_id == run_id)
            )

        found: dict[int, StoredObject] = {}
        for image_index in range(count):
            stored = self.head(self.key_for(stem, image_index, extension))
            if matching(stored):
                assert stored is not None
                found[image_index] = stored
                break
        if not found:
            return None
        [first] = found.values()
        if not first.group:
            return None
        for image_index in first.group:
            if image_index not in found:
                stored = self.head(self.key_for(stem, image_index, extension))
                if not matching(stored):
                    return None
                assert stored is not None
                found[image_index] = stored
        return [found[index] for index in first.group]

    def seal_group(self, stored: list[StoredObject]) -> None:
        """
        Record a streamed group's images in the metadata of its first image (a copy in place).

        A streamed group is known only when its stream ends, after its images were uploaded;
        until it is sealed, :meth:`stored_group` does not take it as complete.
        """
        first = stored[0]
        head = self.client.head_object(Bucket=self.bucket, Key=first.key)
        metadata = dict(head.get("Metadata", {}))
        metadata[META_GROUP] = ",".join(str(item.image_index) for item in stored)
        self.client.copy_object(
            Bucket=self.bucket,
            Key=first.key,
            CopySource={"Bucket": self.bucket, "Key": first.key},
            Metadata=metadata,
            MetadataDirective="REPLACE",
            ContentType=head.get("ContentType", first.content_type),
        )

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
            run_id=metadata.get(META_RUN_ID),
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
        if stored.run_id:
            metadata[META_RUN_ID] = _ascii(stored.run_id)

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
