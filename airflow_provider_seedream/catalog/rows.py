"""Catalog rows, streamed: JSON Lines or CSV, either of them gzip-compressed, from S3 or any binary stream.

Rows are read one at a time through ``gzip`` and ``io`` wrappers around the stream (for an S3
object, botocore's ``StreamingBody``), so memory does not grow with the catalog's size.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from typing import IO, Any, cast

from airflow_provider_seedream.exceptions import SeedreamError

FORMATS = ("jsonl", "csv")
GZIP_MAGIC = b"\x1f\x8b"
READ_BUFFER = 64 * 1024
# CSV fields larger than csv's default of 128 KiB are refused by the csv module; a catalog cell
# holding a long description is fine, one holding a whole file is not.
CSV_FIELD_LIMIT = 1024 * 1024


class CatalogError(SeedreamError, ValueError):
    """A catalog, a row of it or the prompt template cannot be used; the message names the row or the field."""


def catalog_format(key: str, fmt: str = "auto") -> str:
    """
    The catalog's format: ``fmt`` unless it is ``auto``, then by the key's extension.

    ``.csv`` and ``.csv.gz`` are CSV; anything else is JSON Lines. Compression is recognised
    from the content itself, not from the name.

    :raises CatalogError: ``fmt`` is not ``auto``, ``jsonl`` or ``csv``.
    """
    if fmt == "auto":
        return "csv" if key.lower().endswith((".csv", ".csv.gz")) else "jsonl"
    if fmt not in FORMATS:
        raise CatalogError(f"catalog_format: must be 'auto', 'jsonl' or 'csv'; got {fmt!r}")
    return fmt


def open_catalog(client: Any, bucket: str, key: str) -> IO[bytes]:
    """
    Open a catalog object in S3 for streaming.

    :param client: a boto3 S3 client.
    :return: the object's body, read as it is consumed.
    :raises CatalogError: the object does not exist (the message names ``catalog_key``).
    """
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as error:
        code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise CatalogError(f"catalog_key: s3://{bucket}/{key} does not exist") from None
        if code == "NoSuchBucket":
            raise CatalogError(f"bucket: {bucket!r} does not exist (catalog_key s3://{bucket}/{key})") from None
        raise


def read_rows(stream: IO[bytes], fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """
    Yield ``(line number, row)`` for each row of a catalog, in file order.

    The stream is decompressed when it starts with gzip's magic bytes. Text is UTF-8 (a
    leading byte-order mark is skipped). In JSON Lines, blank lines are skipped and every
    other line must be a JSON object; in CSV, the first line names the columns. Fields that
    are absent, JSON ``null`` or missing at the end of a short CSV line are left out of the
    row, so that a template naming them fails on that row instead of printing ``None``.

    :param stream: a binary stream (an S3 ``StreamingBody``, an open file...).
    :param fmt: ``jsonl`` or ``csv``.
    :raises CatalogError: a line is not a JSON object, a CSV line has more values than the
        header has columns, the header repeats a column, a line is not UTF-8, or the gzip
        stream is broken.
    """
    if fmt not in FORMATS:
        raise CatalogError(f"catalog_format: must be 'jsonl' or 'csv'; got {fmt!r}")
    lines = _lines(stream)
    yield from _jsonl_rows(lines) if fmt == "jsonl" else _csv_rows(lines)


def _lines(stream: IO[bytes]) -> Iterator[str]:
    """The stream's lines as text, line ends kept; decompressed when it is gzip."""
    buffered = io.BufferedReader(_RawStream(stream), READ_BUFFER)
    binary: IO[bytes] = buffered
    if buffered.peek(len(GZIP_MAGIC))[: len(GZIP_MAGIC)] == GZIP_MAGIC:
        binary = cast(IO[bytes], gzip.GzipFile(fileobj=buffered, mode="rb"))
    number = 0
    try:
        for number, raw in enumerate(binary, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CatalogError(
                    f"catalog line {number}: not UTF-8 text: {error.reason} at byte {error.start}"
                ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:  # a broken file; network errors stay retryable
        raise CatalogError(f"catalog: unreadable after line {number}: {type(error).__name__}: {error}") from None


def _jsonl_rows(lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise CatalogError(f"catalog line {number}: not valid JSON: {error}") from None
        if not isinstance(item, dict):
            raise CatalogError(f"catalog line {number}: must be a JSON object, got {type(item).__name__}")
        yield number, {name: value for name, value in item.items() if value is not None}


def _csv_rows(lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        raise CatalogError(f"catalog line 1: not a CSV header: {error}") from None
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CatalogError(f"catalog line 1: the header repeats the column(s) {repeated}")
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise CatalogError(f"catalog line {start}: not valid CSV: {error}") from None
        if values:
            if len(values) > len(header):
                raise CatalogError(f"catalog line {start}: {len(values)} values for {len(header)} columns {header}")
            yield start, dict(zip(header, values, strict=False))  # a short row lacks its last fields
        start = reader.line_num + 1


class _RawStream(io.RawIOBase):
    """A raw stream over anything with ``read(n)``, so that ``io.BufferedReader`` can buffer and peek it."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        return size
