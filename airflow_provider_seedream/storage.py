"""Where generated images land in S3: deterministic keys, metadata, and what a rerun can reuse."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import tenacity

from airflow_provider_seedream.exceptions import StorageError
from airflow_provider_seedream.image_formats import EXTENSIONS

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

META_FINGERPRINT = "seedream-fingerprint"
META_SHA256 = "seedream-sha256"
META_MODEL = "seedream-model"
META_SIZE = "seedream-size"
META_PROMPT_INDEX = "seedream-prompt-index"
META_IMAGE_INDEX = "seedream-image-index"
META_REQUEST_ID = "seedream-request-id"
META_RUN_ID = "seedream-run-id"
UPLOAD_ATTEMPTS = 4
# Where the spend ledger (:mod:`ledger`) keeps its records, under the task's prefix.
LEDGER_FOLDER = "_ledger"
# A key stem a prompt mapping may give: characters safe in S3 keys, folders allowed.
_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!_.*'()=+,@-]*(/[A-Za-z0-9!_.*'()=+,@-]+)*$")
MAX_STEM_CHARS = 512


__all__ = ["ImageStore", "StorageError", "StoredObject", "check_stem", "client_error_code", "image_extension"]


def check_stem(stem: str) -> str | None:
    """Return why ``stem`` cannot be a key stem, or ``None`` when it can."""
    if not stem or len(stem) > MAX_STEM_CHARS:
        return f"must be 1 to {MAX_STEM_CHARS} characters"
    if stem.startswith("/") or ".." in stem.split("/") or "//" in stem:
        return "must be relative to s3_prefix: no leading '/', no '..' and no empty folder"
    if stem.split("/", 1)[0] == LEDGER_FOLDER:
        return f"must not start with {LEDGER_FOLDER}/, where the spend ledger is kept"
    if not _STEM.match(stem):
        return "may hold only letters, digits, '/' between folders and !_.*'()=+,@- (starting with a letter or digit)"
    return None


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


def client_error_code(error: BaseException) -> str | None:
    """S3's error code of a botocore error (or its HTTP status), else ``None``."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(code) if code else None


def _upload_retryable(error: BaseException) -> bool:
    from botocore.exceptions import HTTPClientError

    code = client_error_code(error)
    if code is None:
        # A timeout or a broken connection was already retried by the client, within its bounds.
        return not isinstance(error, (StorageError, ValueError, TypeError, HTTPClientError))
    return code in {"500", "502", "503", "504", "InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"}


class ImageStore:
    """
    The images of one task in one bucket, under one prefix.

    Each prompt has a key stem (its ``key``, or its index as ``00042``): its images are
    ``<prefix>/<stem>-<image:02d>.<ext>``. Where each prompt is (claimed, paid for, stored) is
    the spend ledger's to say (:mod:`airflow_provider_seedream.ledger`), not the objects'.

    :param client: a boto3 S3 client (from the amazon provider's ``S3Hook``).
    :param bucket: the bucket.
    :param prefix: the key prefix.
    :param run_id: the DAG run writing the images, kept in their metadata.
    """

    #: The wait between attempts of an upload S3 refused for a while.
    upload_wait: tenacity.wait.wait_base = tenacity.wait_random_exponential(multiplier=0.5, max=10)

    def __init__(self, client: S3Client, bucket: str, prefix: str, run_id: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.run_id = run_id

    def _full(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def key_for(self, stem: str, image_index: int, extension: str) -> str:
        """The deterministic key of one image."""
        return self._full(f"{stem}-{image_index:02d}.{extension}")

    def check_bucket(self) -> None:
        """Fail with a clear message when the bucket is missing or not ours to write."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            code = client_error_code(error)
            if code in ("404", "NoSuchBucket"):
                raise StorageError(f"s3_bucket: bucket {self.bucket!r} does not exist", "NoSuchBucket") from None
            if code in ("403", "AccessDenied"):
                message = f"s3_bucket: access to bucket {self.bucket!r} is denied for these credentials"
                raise StorageError(message, "AccessDenied") from None
            message = f"s3_bucket: cannot reach bucket {self.bucket!r}: {type(error).__name__}: {code or error}"
            raise StorageError(message, code) from None

    def upload(self, fileobj: IO[bytes], stored: StoredObject, request_id: str | None) -> None:
        """Upload ``fileobj`` (rewound before each try) with the image's metadata; retried on S3 faults."""
        metadata = {
            META_FINGERPRINT: stored.fingerprint,
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
            wait=self.upload_wait,
            retry=tenacity.retry_if_exception(_upload_retryable),
            reraise=True,
        )
        try:
            retrying(attempt)
        except Exception as error:
            code = client_error_code(error)
            raise StorageError(
                f"upload to {stored.s3_uri} failed: {type(error).__name__}" + (f" ({code})" if code else ""), code
            ) from None
