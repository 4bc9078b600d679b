"""Review artefacts for a batch of generated images: a JSON Lines manifest and an HTML gallery.

The manifest has one line per stored image (and one per product that has none), built from
what :class:`~airflow_provider_seedream.operators.seedream.SeedreamToS3Operator` returned and,
for products whose task failed, from what was found in S3. The gallery is one self-contained
HTML file: thumbnails are embedded as ``data:`` URIs, so it opens from a local disk or straight
from S3 with no other file and no signed link.

Only the standard library is imported here; Pillow is imported by :func:`thumbnail_data_uri`
when it is called, so DAG files may import this module at parse time.
"""

from __future__ import annotations

import base64
import html
import io
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

STATUS_STORED = "stored"
STATUS_FAILED = "failed"
STATUS_UNVERIFIED = "unverified"
STATUS_MISMATCH = "sha256_mismatch"
STATUSES = (STATUS_STORED, STATUS_UNVERIFIED, STATUS_MISMATCH, STATUS_FAILED)

# What a manifest line may hold from an operator record; anything else a record carries is left out.
RECORD_FIELDS = (
    "s3_uri",
    "bucket",
    "key",
    "image_index",
    "sha256",
    "bytes",
    "content_type",
    "model",
    "size",
    "reused",
    "last_modified",
)
# Usage fields copied when a record has them.
USAGE_FIELDS = ("usage", "billed_images", "output_tokens", "request_id")
THUMBNAIL_SIDE = 320
THUMBNAIL_QUALITY = 72


def manifest_row(
    product: Mapping[str, Any], status: str, record: Mapping[str, Any] | None = None, source: str | None = None
) -> dict[str, Any]:
    """
    Return one manifest line for a product and, when one exists, one of its stored images.

    :param product: the product: ``index`` (its prompt index), ``id``, ``prompt`` and, optionally,
        ``name`` and ``category``.
    :param status: one of :data:`STATUSES`.
    :param record: an operator record, or the same fields read back from S3.
    :param source: where the image's fields come from: ``task`` (the operator's result) or ``s3``.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
    row: dict[str, Any] = {
        "product_id": product.get("id"),
        "name": product.get("name"),
        "category": product.get("category"),
        "prompt_index": product.get("index"),
        "prompt": product.get("prompt"),
        "status": status,
    }
    if record is None:
        row.update({field: None for field in ("s3_uri", "key", "image_index", "sha256", "bytes")})
        row["billed_images"] = 0 if status == STATUS_FAILED else None
        row["source"] = None
        return row
    row.update({field: record[field] for field in RECORD_FIELDS if field in record})
    row.update({field: record[field] for field in USAGE_FIELDS if field in record})
    if "billed_images" not in row and "reused" in record and source == "task":
        # The operator pays for an image it generates and nothing for one it reuses.
        row["billed_images"] = 0 if record["reused"] else 1
    row.setdefault("billed_images", None)  # unknown: read back from S3
    row["source"] = source
    return row


def build_manifest(
    products: Sequence[Mapping[str, Any]],
    records: Iterable[Mapping[str, Any]],
    found: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """
    Return the manifest lines of a batch, in prompt and image order.

    :param products: every product of the batch, each with ``index``, ``id`` and ``prompt``.
    :param records: the records the operator returned (from every task that succeeded).
    :param found: for products with no record, the images found in S3 by prompt index, each a
        mapping with the record's fields and a ``status`` (``stored`` for an object written by
        this run, ``unverified`` for an older one that may come from another prompt).
    """
    by_index: dict[int, list[Mapping[str, Any]]] = {}
    for record in records:
        by_index.setdefault(int(record["prompt_index"]), []).append(record)
    found = found or {}
    rows: list[dict[str, Any]] = []
    for product in sorted(products, key=lambda item: int(item["index"])):
        index = int(product["index"])
        if index in by_index:
            for record in sorted(by_index[index], key=lambda item: int(item.get("image_index", 0))):
                rows.append(manifest_row(product, STATUS_STORED, record, source="task"))
        elif found.get(index):
            for record in sorted(found[index], key=lambda item: int(item.get("image_index", 0))):
                rows.append(manifest_row(product, str(record.get("status", STATUS_UNVERIFIED)), record, source="s3"))
        else:
            rows.append(manifest_row(product, STATUS_FAILED))
    return rows


def jsonl_line(row: Mapping[str, Any]) -> str:
    """Return one manifest line: ``row`` as JSON, keys sorted, ending in a newline."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"


def to_jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Return ``rows`` as JSON Lines (UTF-8, one object per line)."""
    return "".join(jsonl_line(row) for row in rows).encode("utf-8")


def count_statuses(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Return how many manifest lines have each status (every status present, zero or more)."""
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
    return counts


def thumbnail_data_uri(data: bytes, max_side: int = THUMBNAIL_SIDE, quality: int = THUMBNAIL_QUALITY) -> str:
    """
    Return a downscaled JPEG of an image as a ``data:image/jpeg;base64,...`` URI.

    :param data: the image's bytes (any format Pillow reads).
    :param max_side: the thumbnail's longest side in pixels.
    :param quality: the JPEG quality of the thumbnail.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
        thumbnail = image.convert("RGB")
    thumbnail.thumbnail((max_side, max_side))
    out = io.BytesIO()
    thumbnail.save(out, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def relative_href(from_key: str, to_key: str) -> str:
    """The relative link from the object ``from_key`` to the object ``to_key`` in the same bucket."""
    return posixpath.relpath(to_key, posixpath.dirname(from_key) or ".")


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;background:#f6f6f4;color:#222}
h1{font-size:1.4rem;margin:0 0 4px}
.meta{color:#666;margin:0 0 16px;font-size:.9rem}
.counts span{display:inline-block;margin-right:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:16px}
figure{margin:0;background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);overflow:hidden}
figure img{display:block;width:100%;height:auto;background:#ddd}
figure .missing{display:flex;align-items:center;justify-content:center;aspect-ratio:1;background:#eee;color:#999}
figcaption{padding:8px 10px;font-size:.8rem;line-height:1.35}
figcaption .id{font-weight:600}
figcaption .prompt{color:#444;margin-top:4px}
figcaption code{font-size:.72rem;color:#666;word-break:break-all}
.status{float:right;font-size:.7rem;padding:1px 6px;border-radius:8px;background:#e3f3e3;color:#2a6a2a}
.status.failed,.status.sha256_mismatch{background:#fbe3e3;color:#8a1f1f}
.status.unverified{background:#fff1d6;color:#7a5200}
"""


def render_gallery(
    rows: Sequence[Mapping[str, Any]],
    images: Mapping[str, str],
    title: str = "Generated images",
    subtitle: str = "",
) -> str:
    """
    Return an HTML page with one card per manifest line.

    :param rows: manifest lines (see :func:`build_manifest`).
    :param images: the ``src`` of each image by its key: a ``data:`` URI (self-contained) or a
        relative link. A line whose key is not here is shown without an image.
    :param title: the page's title.
    :param subtitle: a line under the title (the run, the bucket...).
    """
    out = io.StringIO()
    write_gallery(out, rows, images, counts=count_statuses(rows), title=title, subtitle=subtitle)
    return out.getvalue()


def write_gallery(
    out: IO[str],
    rows: Iterable[Mapping[str, Any]],
    images: Mapping[str, str],
    *,
    counts: Mapping[str, int],
    title: str = "Generated images",
    subtitle: str = "",
) -> None:
    """
    Write the page of :func:`render_gallery` to ``out``, one card at a time.

    Memory holds one card, whatever the number of lines: ``rows`` may be read from a file.

    :param counts: the lines of each status (:func:`count_statuses` of the same rows), shown at the top.
    """
    esc = html.escape
    summary = "".join(f"<span>{esc(status)}: {count}</span>" for status, count in counts.items() if count)
    out.write(
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f'<p class="meta">{esc(subtitle)}</p>'
        f'<p class="meta counts">{summary}</p>'
        '<div class="grid">'
    )
    for row in rows:
        out.write(_card(row, images))
    out.write("</div></body></html>\n")


def _card(row: Mapping[str, Any], images: Mapping[str, str]) -> str:
    esc = html.escape
    status = str(row.get("status"))
    key = row.get("key")
    src = images.get(key) if key else None
    alt = f"{row.get('product_id') or ''} {row.get('name') or ''}".strip() or str(key or "")
    picture = (
        f'<img loading="lazy" src="{esc(src)}" alt="{esc(alt)}">'
        if src
        else f'<div class="missing">{esc("no image" if status == STATUS_FAILED else "not shown")}</div>'
    )
    details = [f'<span class="status {esc(status)}">{esc(status)}</span>']
    details.append(f'<div class="id">{esc(str(row.get("product_id") or ""))}</div>')
    if row.get("name"):
        details.append(f"<div>{esc(str(row['name']))}</div>")
    details.append(f'<div class="prompt">{esc(str(row.get("prompt") or ""))}</div>')
    if key:
        details.append(f"<code>{esc(str(key))}</code>")
    if row.get("sha256"):
        details.append(f"<br><code>sha256 {esc(str(row['sha256'])[:16])}…</code>")
    return f"<figure>{picture}<figcaption>{''.join(details)}</figcaption></figure>"
