"""The manifest and HTML gallery builders."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from airflow_provider_seedream import gallery

PRODUCTS = [
    {"index": 0, "id": "A", "name": "Mug", "category": "Kitchen", "prompt": "a mug"},
    {"index": 1, "id": "B", "name": "Lamp <b>", "category": "Lighting", "prompt": "a lamp & shade"},
    {"index": 2, "id": "C", "name": "Chair", "category": "Furniture", "prompt": "a chair"},
    {"index": 3, "id": "D", "name": "Desk", "category": "Furniture", "prompt": "a desk"},
]


def record(index: int, image: int = 0, reused: bool = False, **extra) -> dict:
    key = f"p/{index:05d}-{image:02d}.jpg"
    return {
        "s3_uri": f"s3://b/{key}",
        "bucket": "b",
        "key": key,
        "prompt_index": index,
        "image_index": image,
        "prompt": PRODUCTS[index]["prompt"],
        "model": "doubao-seedream-5-0-260128",
        "size": "1024x1024",
        "content_type": "image/jpeg",
        "bytes": 10,
        "sha256": f"{index}{image}" * 32,
        "fingerprint": "f" * 64,
        "reused": reused,
        **extra,
    }


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(out, format="JPEG")
    return out.getvalue()


def test_manifest_has_a_line_per_image_and_per_product_without_one():
    records = [record(1, 1), record(0, reused=True), record(1, 0)]
    found = {2: [{**record(2), "status": "stored"}]}
    rows = gallery.build_manifest(PRODUCTS, records, found)
    assert [(row["product_id"], row["image_index"], row["status"]) for row in rows] == [
        ("A", 0, "stored"),
        ("B", 0, "stored"),
        ("B", 1, "stored"),
        ("C", 0, "stored"),
        ("D", None, "failed"),
    ]
    assert [row["billed_images"] for row in rows[:3]] == [0, 1, 1]
    assert rows[3]["source"] == "s3" and rows[3]["billed_images"] is None
    assert rows[4]["key"] is None and rows[4]["billed_images"] == 0
    assert all("fingerprint" not in row for row in rows), "only the listed record fields are copied"
    assert gallery.count_statuses(rows) == {"stored": 4, "unverified": 0, "sha256_mismatch": 0, "failed": 1}


def test_manifest_copies_usage_fields_and_only_known_fields():
    rows = gallery.build_manifest(
        PRODUCTS[:1], [record(0, usage={"generated_images": 1}, signed_url="https://x/?X-Amz-Signature=s")]
    )
    assert rows[0]["usage"] == {"generated_images": 1}
    assert "signed_url" not in rows[0] and "X-Amz-Signature" not in json.dumps(rows)


def test_jsonl_is_one_object_a_line():
    rows = gallery.build_manifest(PRODUCTS, [record(0)])
    lines = gallery.to_jsonl(rows).decode().splitlines()
    assert [json.loads(line)["product_id"] for line in lines] == ["A", "B", "C", "D"]


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="status"):
        gallery.manifest_row(PRODUCTS[0], "done")


def test_thumbnail_is_a_small_jpeg_data_uri():
    uri = gallery.thumbnail_data_uri(jpeg(2048, 1024), max_side=200)
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2])))
    assert image.format == "JPEG" and image.size == (200, 100)


def test_gallery_shows_an_image_per_stored_line_and_escapes_text():
    rows = gallery.build_manifest(PRODUCTS, [record(0), record(1)])
    images = {rows[0]["key"]: gallery.thumbnail_data_uri(jpeg(64, 64)), rows[1]["key"]: "../p/00001-00.jpg"}
    page = gallery.render_gallery(rows, images, title="Run <1>", subtitle="s3://b/p")
    assert page.startswith("<!DOCTYPE html>") and page.count("<img") == 2
    assert "Lamp &lt;b&gt;" in page and "a lamp &amp; shade" in page and "Run &lt;1&gt;" in page
    assert "<b>" not in page
    assert page.count("no image") == 2  # C and D failed
    assert "stored: 2" in page and "failed: 2" in page


def test_relative_href():
    assert gallery.relative_href("review/gallery.html", "images/00000-00.jpg") == "../images/00000-00.jpg"
    assert gallery.relative_href("gallery.html", "images/00000-00.jpg") == "images/00000-00.jpg"


def test_module_imports_without_pillow_or_boto3():
    code = "import sys, airflow_provider_seedream.gallery; assert not {'PIL', 'boto3'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_gallery_written_card_by_card_is_the_rendered_page():
    rows = gallery.build_manifest(PRODUCTS, [record(0), record(2, reused=True)])
    images = {rows[0]["key"]: "data:image/jpeg;base64,AAAA"}
    out = io.StringIO()
    gallery.write_gallery(out, iter(rows), images, counts=gallery.count_statuses(rows), title="t", subtitle="s")
    assert out.getvalue() == gallery.render_gallery(rows, images, title="t", subtitle="s")


def test_a_manifest_line_is_sorted_json_ending_in_a_newline():
    line = gallery.jsonl_line({"b": "é", "a": 1})
    assert line == '{"a": 1, "b": "é"}\n'
    assert gallery.to_jsonl([{"a": 1}, {"a": 2}]) == b'{"a": 1}\n{"a": 2}\n'
