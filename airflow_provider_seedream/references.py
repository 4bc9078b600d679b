"""Reference images for image-to-image: URLs, data URIs, local files and ``s3://`` objects.

Each reference is checked before any money is spent, and gets an identity that stays the
same across runs (a presigned URL does not), so that a rerun recognises the same request.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_seedream.exceptions import SeedreamValidationError
from airflow_provider_seedream.image_formats import SNIFF_BYTES, sniff_format
from airflow_provider_seedream.validation import MAX_REFERENCE_BYTES, check_reference

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

Transport = Literal["data_uri", "presigned_url"]
TRANSPORTS: tuple[str, ...] = ("data_uri", "presigned_url")
PRESIGNED_URL_SECONDS = 3600
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Reference:
    """One checked reference image.

    :param source: what the user gave (URL, data URI, path or ``s3://`` URI).
    :param kind: ``url``, ``data_uri``, ``file`` or ``s3``.
    :param identity: a stable description used in the request's fingerprint.
    """

    source: str
    kind: str
    identity: str


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as ``(bucket, key)``."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def check_references(value: Any, client: S3Client | None, field: str = "image") -> list[Reference]:
    """
    Check every reference image and return them in order; nothing is sent to the endpoint.

    :param value: one reference or a list of them.
    :param client: an S3 client, needed for ``s3://`` references.
    :raises SeedreamValidationError: a reference is missing, too large, or not an image.
    """
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise SeedreamValidationError(field, "must be a URL, data URI, local path or s3:// URI, or a list of them")
    return [_check_one(item, client, f"{field}[{position}]") for position, item in enumerate(items)]


def _check_one(source: Any, client: S3Client | None, field: str) -> Reference:
    if not isinstance(source, str) or not source.strip():
        raise SeedreamValidationError(field, "must be a non-empty URL, data URI, local path or s3:// URI")
    if source.startswith(("http://", "https://")):
        return Reference(source, "url", source)
    if source.startswith("data:"):
        check_reference(source, field)
        return Reference(source, "data_uri", "sha256:" + hashlib.sha256(source.encode()).hexdigest())
    if source.startswith("s3://"):
        return _check_s3(source, client, field)
    path = source[len("file://") :] if source.startswith("file://") else source
    return _check_file(source, path, field)


def _check_size(size: int, field: str) -> None:
    if size > MAX_REFERENCE_BYTES:
        raise SeedreamValidationError(
            field, f"reference image is {size:,} bytes; at most {MAX_REFERENCE_BYTES:,} bytes (30 MB) are allowed"
        )


def _check_format(head: bytes, field: str) -> str:
    fmt = sniff_format(head)
    if fmt is None:
        raise SeedreamValidationError(field, "is not an image: jpeg, png, webp, bmp, tiff or gif are allowed")
    return fmt


def _check_file(source: str, path: str, field: str) -> Reference:
    if not os.path.isfile(path):
        raise SeedreamValidationError(
            field, f"local file {path!r} does not exist (use an http(s) URL, data URI, path or s3:// URI)"
        )
    _check_size(os.path.getsize(path), field)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        _check_format(handle.read(SNIFF_BYTES), field)
        handle.seek(0)
        for chunk in iter(lambda: handle.read(READ_CHUNK), b""):
            digest.update(chunk)
    return Reference(source, "file", "sha256:" + digest.hexdigest())


def _check_s3(source: str, client: S3Client | None, field: str) -> Reference:
    bucket, key = split_s3_uri(source)
    if not bucket or not key:
        raise SeedreamValidationError(field, f"{source!r} must look like s3://bucket/key")
    if client is None:
        raise SeedreamValidationError(field, "s3:// references need an AWS connection")
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as error:
        raise SeedreamValidationError(field, f"{source} cannot be read: {type(error).__name__}") from None
    _check_size(int(head.get("ContentLength", 0)), field)
    return Reference(source, "s3", f"{source}#{head.get('ETag', '').strip(chr(34))}")


def resolve(reference: Reference, client: S3Client | None, transport: Transport) -> str:
    """Return what is sent in the request's ``image`` field for ``reference``."""
    if reference.kind in ("url", "data_uri"):
        return reference.source
    if reference.kind == "s3":
        bucket, key = split_s3_uri(reference.source)
        assert client is not None
        if transport == "presigned_url":
            return client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGNED_URL_SECONDS
            )
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    else:
        path = reference.source[len("file://") :] if reference.source.startswith("file://") else reference.source
        with open(path, "rb") as handle:
            data = handle.read()
    fmt = _check_format(data[:SNIFF_BYTES], "image")
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"
