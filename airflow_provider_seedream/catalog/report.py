"""The report of a catalog run: a JSON Lines manifest and an HTML gallery, written in bounded memory.

Products are streamed back from the prepared catalog and each chunk's records pulled from its
task's XCom one chunk at a time. For a chunk whose task did not succeed, what it stored is found
in S3 (:func:`images_in_s3`). Lines go through temporary files, so memory holds one chunk and
the gallery's thumbnails (at most ``gallery_max_images``), whatever the catalog's size.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import re
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from airflow_provider_seedream import gallery
from airflow_provider_seedream.catalog.plan import CatalogPlan, iter_products, load_chunk
from airflow_provider_seedream.image_formats import EXTENSIONS

MANIFEST_FILE = "manifest.jsonl"
GALLERY_FILE = "gallery.html"
THUMBNAIL_THREADS = 8
# <images_prefix>/<product id>-<image:02d>.<ext>: how the operator names a keyed prompt's images.
_IMAGE_KEY = re.compile(
    r"^(?P<id>.+)-(?P<image>\d{2,})\.(?:" + "|".join(sorted(set(EXTENSIONS.values()) | {"jpeg"})) + r")$"
)


@dataclass
class CatalogReport:
    """What a report wrote and found.

    :param manifest: the manifest's ``s3://`` URI.
    :param gallery: the gallery's ``s3://`` URI.
    :param bucket: their bucket.
    :param gallery_key: the gallery's key.
    :param products: the products of the run.
    :param lines: the manifest's lines (one per image, one per product without one).
    :param counts: the lines of each status.
    :param failed_chunks: the chunks whose task did not succeed.
    """

    manifest: str
    gallery: str
    bucket: str
    gallery_key: str
    products: int
    lines: int
    counts: dict[str, int]
    failed_chunks: list[int] = field(default_factory=list)

    @property
    def bad_lines(self) -> int:
        """Lines with no valid image: failed, or whose bytes do not match their sha256."""
        return self.counts[gallery.STATUS_FAILED] + self.counts[gallery.STATUS_MISMATCH]

    def to_xcom(self) -> dict[str, Any]:
        """The report's small XCom: where the files are and the counts."""
        return {
            "manifest": self.manifest,
            "gallery": self.gallery,
            "products": self.products,
            "counts": self.counts,
            "failed_chunks": self.failed_chunks,
        }


def write_report(
    client: Any,
    plan: Mapping[str, Any] | CatalogPlan,
    *,
    images_prefix: str,
    report_prefix: str,
    records_of: Callable[[int], list[dict[str, Any]] | None],
    failed_chunks: Collection[int] = (),
    since: datetime.datetime | None = None,
    run_id: str | None = None,
    gallery_max_images: int = 500,
    threads: int = THUMBNAIL_THREADS,
    log: Any = None,
) -> CatalogReport:
    """
    Write ``<report_prefix>/manifest.jsonl`` and ``<report_prefix>/gallery.html`` for a catalog run.

    The manifest has one line per stored image and one per product without one: product id,
    name, category, prompt index, prompt, status (``stored``, ``unverified``, ``failed``,
    ``sha256_mismatch``), key, ``s3_uri``, sha256, bytes, model, size, ``reused``,
    ``billed_images`` and ``source`` (``task`` or ``s3``). The gallery embeds a thumbnail of the
    first ``gallery_max_images`` images, each checked against its sha256 as it is read.

    :param client: a boto3 S3 client.
    :param plan: the plan :func:`~airflow_provider_seedream.catalog.plan.prepare_catalog` returned.
    :param images_prefix: where the images are.
    :param report_prefix: where the manifest and the gallery go.
    :param records_of: the records the operator returned for a chunk (by chunk number).
    :param failed_chunks: the chunks whose task did not succeed: their images are looked for in S3.
    :param since: when the run started: an image found in S3 and written since then was paid
        for by this run (``stored``); an older one is ``unverified``.
    :param run_id: the run, named in the gallery's subtitle.
    :param gallery_max_images: how many thumbnails the gallery embeds.
    :param threads: how many images are read at once for thumbnails.
    :param log: a logger for images that cannot be shown.
    """
    plan = CatalogPlan.from_xcom(plan)
    bucket, images_prefix, report_prefix = plan.bucket, images_prefix.strip("/"), report_prefix.strip("/")
    manifest_key, gallery_key = (
        f"{report_prefix}/{name}" if report_prefix else name for name in (MANIFEST_FILE, GALLERY_FILE)
    )
    failed = sorted(set(failed_chunks))
    found: dict[int, list[dict[str, Any]]] = {}
    if failed:
        wanted = {
            product["id"]: product["index"]
            for chunk in failed
            for product in load_chunk(client, plan, chunk * plan.chunk_size)
        }
        found = images_in_s3(client, bucket, images_prefix, wanted, since)

    with tempfile.TemporaryFile("w+", encoding="utf-8") as draft, tempfile.TemporaryFile("w+b") as manifest:
        shown: list[dict[str, Any]] = []
        keyed = 0
        for row in _manifest_rows(iter_products(client, plan), plan.chunk_size, set(failed), records_of, found):
            draft.write(gallery.jsonl_line(row))
            if row.get("key"):
                keyed += 1
                if len(shown) < gallery_max_images:
                    shown.append(row)
        images, mismatched = _thumbnails(client, bucket, gallery_key, shown, threads, log)

        # The final manifest: statuses corrected by what the thumbnails read.
        counts = dict.fromkeys(gallery.STATUSES, 0)
        lines = 0
        for row in _read_lines(draft):
            if row.get("key") in mismatched:
                row["status"] = gallery.STATUS_MISMATCH
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            lines += 1
            manifest.write(gallery.jsonl_line(row).encode("utf-8"))
        manifest.seek(0)
        client.put_object(Bucket=bucket, Key=manifest_key, Body=manifest, ContentType="application/x-ndjson")

        with tempfile.TemporaryFile("w+b") as page:
            text = io.TextIOWrapper(page, encoding="utf-8")
            manifest.seek(0)
            gallery.write_gallery(
                text,
                (json.loads(line) for line in manifest),
                images,
                counts=counts,
                title=f"Catalog images: s3://{bucket}/{images_prefix}",
                subtitle=f"Run {run_id}; catalog {plan.catalog}; {plan.products} products; "
                f"{len(images)} of {keyed} images shown",
            )
            text.detach()  # flushes, and leaves the file open for the upload
            page.seek(0)
            client.put_object(Bucket=bucket, Key=gallery_key, Body=page, ContentType="text/html; charset=utf-8")

    return CatalogReport(
        manifest=f"s3://{bucket}/{manifest_key}",
        gallery=f"s3://{bucket}/{gallery_key}",
        bucket=bucket,
        gallery_key=gallery_key,
        products=plan.products,
        lines=lines,
        counts=counts,
        failed_chunks=failed,
    )


def _manifest_rows(
    products: Iterator[dict[str, Any]],
    chunk_size: int,
    failed: set[int],
    records_of: Callable[[int], list[dict[str, Any]] | None],
    found: Mapping[int, list[dict[str, Any]]],
) -> Iterator[dict[str, Any]]:
    """The manifest's lines, one chunk at a time: its products with the records its task returned."""
    chunk: list[dict[str, Any]] = []

    def lines() -> list[dict[str, Any]]:
        number = chunk[0]["index"] // chunk_size
        records = [] if number in failed else records_of(number) or []
        return gallery.build_manifest(chunk, records, found)

    for product in products:
        if chunk and product["index"] // chunk_size != chunk[0]["index"] // chunk_size:
            yield from lines()
            chunk = []
        chunk.append(product)
    if chunk:
        yield from lines()


def _thumbnails(
    client: Any, bucket: str, gallery_key: str, rows: list[dict[str, Any]], threads: int, log: Any
) -> tuple[dict[str, str], set[str]]:
    """Thumbnails of ``rows`` by key, and the keys whose bytes do not match their sha256."""
    mismatched: set[str] = set()

    def thumbnail(row: dict[str, Any]) -> tuple[str, str]:
        key = row["key"]
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if row.get("sha256") and hashlib.sha256(data).hexdigest() != row["sha256"]:
            mismatched.add(key)
        try:
            return key, gallery.thumbnail_data_uri(data)
        except ImportError:  # no Pillow on this worker: link to the image in the bucket instead
            return key, gallery.relative_href(gallery_key, key)
        except Exception as error:  # an image Pillow cannot read is listed, not shown
            if log is not None:
                log.warning("No thumbnail for %s: %s", key, error)
            return key, gallery.relative_href(gallery_key, key)

    if not rows:
        return {}, mismatched
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        images = dict(pool.map(thumbnail, rows))
    return images, mismatched


def _read_lines(handle: IO[str]) -> Iterator[dict[str, Any]]:
    handle.flush()
    handle.seek(0)
    for line in handle:
        yield json.loads(line)


def images_in_s3(
    client: Any, bucket: str, images_prefix: str, wanted: Mapping[str, int], since: datetime.datetime | None
) -> dict[int, list[dict[str, Any]]]:
    """
    Find the stored images of the ``wanted`` products (by id, with their index), for a report.

    An object written since ``since`` (the run's start) was generated, and paid for, by this
    run: its status is ``stored``. An older one (any, without ``since``) may be an image reused
    for the same prompt or one left from a different prompt: its status is ``unverified``.

    :param client: a boto3 S3 client.
    :return: by product index, the fields of a manifest line for each image found.
    """
    from airflow_provider_seedream.storage import META_MODEL, META_SHA256, META_SIZE

    found: dict[int, list[dict[str, Any]]] = {}
    folder = f"{images_prefix}/" if images_prefix else ""
    # S3 keeps whole seconds.
    cutoff = since.replace(microsecond=0) - datetime.timedelta(seconds=1) if since is not None else None
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
        for item in page.get("Contents", []):
            match = _IMAGE_KEY.match(item["Key"][len(folder) :])
            if not match or match["id"] not in wanted:
                continue
            head = client.head_object(Bucket=bucket, Key=item["Key"])
            metadata = head.get("Metadata", {})
            this_run = cutoff is not None and head["LastModified"] >= cutoff
            found.setdefault(wanted[match["id"]], []).append(
                {
                    "status": gallery.STATUS_STORED if this_run else gallery.STATUS_UNVERIFIED,
                    "billed_images": 1 if this_run else None,
                    "s3_uri": f"s3://{bucket}/{item['Key']}",
                    "bucket": bucket,
                    "key": item["Key"],
                    "image_index": int(match["image"]),
                    "sha256": metadata.get(META_SHA256),
                    "bytes": head.get("ContentLength"),
                    "content_type": head.get("ContentType"),
                    "model": metadata.get(META_MODEL),
                    "size": metadata.get(META_SIZE),
                    "last_modified": head["LastModified"].isoformat(),
                }
            )
    return found
