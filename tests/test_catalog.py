"""The catalog package: streamed rows, sandboxed prompts, chunks in S3 by reference, the report."""

from __future__ import annotations

import csv
import datetime
import gzip
import hashlib
import io
import json
import subprocess
import sys
from typing import Any

import pytest
from PIL import Image

from airflow_provider_seedream import catalog, gallery
from airflow_provider_seedream.catalog import CatalogError, PromptTemplate, catalog_format, read_rows
from tests.conftest import FIGURES

PRODUCTS = [
    {"id": "A1", "name": "Mug", "colour": "red", "category": "Kitchen", "material": "clay"},
    {"id": "A2", "name": "Lamp", "colour": "black", "category": "Lighting", "material": "steel"},
    {"id": "A3", "name": "Chair", "colour": "green", "category": "Furniture", "material": "oak"},
    {"id": "A4", "name": "Vase", "colour": "blue", "category": "Decor", "material": "glass"},
    {"id": "A5", "name": "Rug", "colour": "grey", "category": "Decor", "material": "wool"},
]
TEMPLATE = "{{ product.colour }} {{ product.name | lower }}"


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def rows_of(data: bytes, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    return list(read_rows(io.BytesIO(data), fmt))


# -- reading rows --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_rows_are_read_from_jsonl_and_csv_plain_or_gzip(fmt, compress):
    data = jsonl(PRODUCTS) if fmt == "jsonl" else csv_bytes(PRODUCTS)
    data = gzip.compress(data) if compress else data
    rows = rows_of(data, fmt)
    assert [row for _, row in rows] == PRODUCTS
    assert [line for line, _ in rows] == ([1, 2, 3, 4, 5] if fmt == "jsonl" else [2, 3, 4, 5, 6])


def test_format_comes_from_the_key_unless_given():
    assert catalog_format("in/products.csv") == "csv"
    assert catalog_format("in/products.CSV.gz") == "csv"
    assert catalog_format("in/products.jsonl.gz") == "jsonl"
    assert catalog_format("in/products.csv", "jsonl") == "jsonl"
    with pytest.raises(CatalogError, match="catalog_format"):
        catalog_format("x.csv", "xml")


def test_blank_lines_bom_nulls_and_short_csv_lines():
    data = b"\xef\xbb\xbf" + b'{"id": "A", "name": null}\n\n   \n{"id": "B"}\n'
    assert rows_of(data, "jsonl") == [(1, {"id": "A"}), (4, {"id": "B"})], "null fields are left out"
    text = b'\xef\xbb\xbfid,name,colour\nA,"two\nlines",red\nB,short\n'
    assert rows_of(text, "csv") == [(2, {"id": "A", "name": "two\nlines", "colour": "red"}), (4, {"id": "B", "name": "short"})]


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b'{"id": "A"}\n{"id": "B",\n', "jsonl", "catalog line 2: not valid JSON"),
        (b'{"id": "A"}\n["B"]\n', "jsonl", "catalog line 2: must be a JSON object, got list"),
        (b"id,name\nA,mug\nB,lamp,extra\n", "csv", r"catalog line 3: 3 values for 2 columns"),
        (b"id,name,id\nA,mug,B\n", "csv", r"catalog line 1: the header repeats the column\(s\) \['id'\]"),
        (b'{"id": "A"}\n{"id": "\xff"}\n', "jsonl", "catalog line 2: not UTF-8 text: invalid start byte"),
        (gzip.compress(jsonl(PRODUCTS))[:-12], "jsonl", "unreadable after line"),
    ],
    ids=["bad-json", "not-object", "csv-extra-values", "csv-repeated-column", "not-utf8", "truncated-gzip"],
)
def test_bad_lines_are_named(data, fmt, message):
    with pytest.raises(CatalogError, match=message):
        rows_of(data, fmt)


# -- prompts and ids -----------------------------------------------------------------------------


def test_prompts_render_in_a_strict_sandbox():
    template = PromptTemplate("  {{ product.colour }}\n  {{ product.name | lower }}  ")
    assert template.render(PRODUCTS[0], 1, "A1") == "red mug", "whitespace is collapsed"
    with pytest.raises(CatalogError, match=r"catalog line 7 \(id 'A1'\): has no field 'weight', which prompt_template uses"):
        PromptTemplate("{{ product.weight }} kg").render(PRODUCTS[0], 7, "A1")
    with pytest.raises(CatalogError, match=r"catalog line 2 \(id 'A1'\): has no field 'colour'"):
        PromptTemplate("{{ product['colour'] }}").render({"id": "A1"}, 2, "A1")
    with pytest.raises(CatalogError, match=r"catalog line 3 \(id 'A1'\): has no field 'item'"):
        PromptTemplate("{{ item.name }}").render(PRODUCTS[0], 3, "A1")
    with pytest.raises(CatalogError, match=r"catalog line 4 \(id 'A1'\): prompt_template renders an empty prompt"):
        PromptTemplate("{% if product.name == 'x' %}{{ product.name }}{% endif %}").render(PRODUCTS[0], 4, "A1")
    with pytest.raises(CatalogError, match="not allowed in the sandbox"):
        PromptTemplate("{{ product.__class__.__mro__ }}").render(PRODUCTS[0], 1, "A1")
    with pytest.raises(CatalogError, match="prompt_template: line 1"):
        PromptTemplate("{{ product.name ")


def test_ids_are_checked_as_keys():
    assert catalog.product_id({"sku": " 1001 "}, "sku", 2) == "1001"
    assert catalog.product_id({"id": 7}, "id", 2) == "7"
    with pytest.raises(CatalogError, match=r"catalog line 3: has no 'sku'"):
        catalog.product_id({"id": "A"}, "sku", 3)
    with pytest.raises(CatalogError, match=r"catalog line 4: has no 'id' \(got '  '\)"):
        catalog.product_id({"id": "  "}, "id", 4)
    with pytest.raises(CatalogError, match=r"catalog line 5 \(id '\.\./A2'\): its 'id' is the key of its images"):
        catalog.product_id({"id": "../A2"}, "id", 5)


# -- prepared catalogs in S3 ---------------------------------------------------------------------


def prepare(s3_client, bucket: str, key: str, **arguments: Any) -> dict[str, Any]:
    options = {"prompt_template": TEMPLATE, "work_prefix": "review/runs/r1", "chunk_size": 2, **arguments}
    return catalog.prepare_catalog(bucket=bucket, catalog_key=key, s3_client=s3_client, **options)


def listed(s3_client, bucket: str, prefix: str = "") -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listing if "/_ledger/" not in item["Key"])


@pytest.mark.parametrize("key", ["in/products.jsonl", "in/products.csv.gz"])
def test_a_catalog_is_prepared_into_chunks_read_by_reference(s3_client, bucket, key):
    data = jsonl(PRODUCTS) if key.endswith(".jsonl") else gzip.compress(csv_bytes(PRODUCTS))
    s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    plan = prepare(s3_client, bucket, key)
    assert plan == {
        "catalog": f"s3://{bucket}/{key}",
        "bucket": bucket,
        "prompts_key": "review/runs/r1/prompts.jsonl",
        "chunks_key": "review/runs/r1/chunks.json",
        "products": 5,
        "chunk_size": 2,
        "chunks": 3,
    }
    assert catalog.CatalogPlan.from_xcom(plan).offsets == [0, 2, 4]
    chunks = [catalog.load_chunk(s3_client, plan, offset) for offset in (0, 2, 4)]
    assert [[product["id"] for product in chunk] for chunk in chunks] == [["A1", "A2"], ["A3", "A4"], ["A5"]]
    assert chunks[1][0] == {"index": 2, "id": "A3", "line": 3 if key.endswith(".jsonl") else 4, "prompt": "green chair",
                            "name": "Chair", "category": "Furniture"}
    assert catalog.chunk_prompts(chunks[0]) == [{"prompt": "red mug", "key": "A1"}, {"prompt": "black lamp", "key": "A2"}]
    assert [product["index"] for product in catalog.iter_products(s3_client, plan)] == [0, 1, 2, 3, 4]
    with pytest.raises(CatalogError, match="prompt_index_offset: 3 does not start a chunk"):
        catalog.load_chunk(s3_client, plan, 3)


def test_max_products_takes_the_first_rows(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="c.jsonl", Body=jsonl(PRODUCTS) + b'{"id": "A1"}\n')
    plan = prepare(s3_client, bucket, "c.jsonl", max_products=3)
    assert plan["products"] == 3 and plan["chunks"] == 2


@pytest.mark.parametrize(
    ("body", "arguments", "message"),
    [
        (None, {}, r"catalog_key: s3://{bucket}/c.jsonl does not exist"),
        (b"\n\n", {}, r"catalog_key: s3://{bucket}/c.jsonl holds no product"),
        (jsonl([*PRODUCTS[:3], PRODUCTS[1]]), {}, r"catalog line 4 \(id 'A2'\): the id appears more than once"),
        (jsonl([*PRODUCTS[:2], {"name": "x"}]), {}, r"catalog line 3: has no 'id'"),
        (jsonl([*PRODUCTS[:2], {"id": "A9", "name": "x"}]), {}, r"catalog line 3 \(id 'A9'\): has no field 'colour'"),
        (jsonl(PRODUCTS), {"prompt_template": "{{ product.colour }}{% if false %}x{% endif %}"}, None),
        (jsonl([*PRODUCTS[:2], {**PRODUCTS[2], "colour": " ", "name": " "}]), {}, r"catalog line 3 \(id 'A3'\): prompt_template renders an empty prompt"),
        (jsonl(PRODUCTS), {"chunk_size": 0}, r"chunk_size: must be a whole number of at least 1"),
        (jsonl(PRODUCTS), {"prompt_template": ""}, r"prompt_template: must be a non-empty Jinja template"),
        (jsonl(PRODUCTS), {"catalog_format": "xml"}, r"catalog_format: must be"),
    ],
    ids=["missing", "empty", "duplicate-id", "no-id", "missing-field", "good", "empty-prompt", "chunk-size",
         "no-template", "format"],
)
def test_bad_catalogs_fail_before_anything_is_written(s3_client, bucket, body, arguments, message):
    from airflow_provider_seedream.version_compat import AirflowFailException

    if body is not None:
        s3_client.put_object(Bucket=bucket, Key="c.jsonl", Body=body)
    if message is None:
        assert prepare(s3_client, bucket, "c.jsonl", **arguments)["products"] == 5
        return
    with pytest.raises(AirflowFailException, match=message.format(bucket=bucket)):
        prepare(s3_client, bucket, "c.jsonl", **arguments)
    assert listed(s3_client, bucket, "review/") == [], "nothing is written for a bad catalog"


def test_more_chunks_than_airflow_can_map_are_refused(s3_client, bucket):
    from airflow_provider_seedream.version_compat import AirflowFailException

    rows = [{"id": f"P{n}", "name": "n", "colour": "c"} for n in range(1025)]
    s3_client.put_object(Bucket=bucket, Key="c.jsonl", Body=jsonl(rows))
    with pytest.raises(AirflowFailException, match=r"chunk_size: 1025 products in chunks of 1 make 1025 mapped tasks; "
                                                   r"at most 1024 can run .*chunks of at least 2"):
        prepare(s3_client, bucket, "c.jsonl", chunk_size=1, prompt_template="{{ product.name }}")


def test_run_folder_is_safe_as_a_key():
    assert catalog.run_folder("catalog/review/", "manual__2026-01-02T03:04:05.123+00:00") == (
        "catalog/review/runs/manual__2026-01-02T03_04_05.123_00_00"
    )
    assert catalog.run_folder("", "x y") == "runs/x_y"


# A whole catalog in memory is at least its text; streaming holds the ids seen and a buffer.
_MEMORY = """
import json, sys, tracemalloc
import boto3
from airflow_provider_seedream.catalog import DEFAULT_PROMPT_TEMPLATE, prepare_catalog

endpoint, bucket, key = sys.argv[1:]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
arguments = dict(bucket=bucket, prompt_template=DEFAULT_PROMPT_TEMPLATE, s3_client=client)
prepare_catalog(catalog_key="warm.jsonl", work_prefix="warm", **arguments)  # imports and clients, not measured
tracemalloc.start()
plan = prepare_catalog(catalog_key=key, work_prefix="big", **arguments)
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "plan": plan}))
"""


@pytest.mark.parametrize("key", ["big.jsonl", "big.csv.gz"])
def test_fifty_thousand_rows_are_prepared_in_bounded_memory(s3_client, s3_server, bucket, key):
    products = [
        {"id": f"P{n:07d}", "name": f"product number {n}", "category": "Kitchen", "colour": "sage green",
         "material": "stoneware", "description": "a long marketing text " * 8, "price": n / 7}
        for n in range(50_000)
    ]
    text = jsonl(products) if key.endswith(".jsonl") else csv_bytes(products)
    s3_client.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text) if key.endswith(".gz") else text)
    s3_client.put_object(Bucket=bucket, Key="warm.jsonl", Body=jsonl(PRODUCTS))
    del products
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY, s3_server, bucket, key], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    bound = len(text) // 2
    assert len(text) > 10_000_000, "a whole-file read would hold at least this much"
    assert measured["peak"] < bound, f"peak {measured['peak']:,} bytes for a {len(text):,}-byte catalog"
    FIGURES.append(
        f"catalog {key}: 50,000 rows, {len(text):,} bytes of text: peak {measured['peak']:,} bytes traced while preparing"
    )
    plan = measured["plan"]
    assert plan["products"] == 50_000 and plan["chunks"] == 1000
    assert len(json.dumps(plan)) < 1024, "the plan's XCom does not grow with the catalog"
    assert len(json.dumps(catalog.CatalogPlan.from_xcom(plan).offsets)) < 8 * 1024
    assert catalog.load_chunk(s3_client, plan, 49_950)[-1]["id"] == "P0049999"


# -- the report ----------------------------------------------------------------------------------


def jpeg(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, format="JPEG")
    return out.getvalue()


def test_report_reads_records_by_chunk_and_finds_failed_chunks_images_in_s3(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="c.jsonl", Body=jsonl(PRODUCTS))
    plan = prepare(s3_client, bucket, "c.jsonl")

    def store(product_id: str, data: bytes, sha256: str | None = None) -> dict[str, Any]:
        key = f"img/{product_id}-00.jpg"
        digest = sha256 or hashlib.sha256(data).hexdigest()
        s3_client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/jpeg",
                             Metadata={"seedream-sha256": digest, "seedream-model": "m", "seedream-size": "64x48"})
        return {"key": key, "s3_uri": f"s3://{bucket}/{key}", "sha256": digest, "image_index": 0, "reused": False}

    records = {
        0: [{**store("A1", jpeg("red")), "prompt_index": 0}, {**store("A2", jpeg("black"), "0" * 64), "prompt_index": 1}],
        # chunk 1 (A3, A4) failed: A3's image was stored before the task failed, A4 has none.
        2: [{**store("A5", jpeg("grey")), "prompt_index": 4}],
    }
    store("A3", jpeg("green"))
    pulled = []

    def records_of(chunk: int) -> list[dict[str, Any]]:
        pulled.append(chunk)
        return records[chunk]

    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    report = catalog.write_report(
        s3_client, plan, images_prefix="img", report_prefix="review", records_of=records_of, failed_chunks=[1],
        since=since, run_id="r1", gallery_max_images=2,
    )
    assert pulled == [0, 2], "records are pulled chunk by chunk, never for a failed chunk"
    assert report.to_xcom() == {
        "manifest": f"s3://{bucket}/review/manifest.jsonl",
        "gallery": f"s3://{bucket}/review/gallery.html",
        "products": 5,
        "counts": {"stored": 3, "unverified": 0, "sha256_mismatch": 1, "failed": 1},
        "failed_chunks": [1],
    }
    assert report.bad_lines == 2 and report.lines == 5
    rows = [json.loads(line) for line in s3_client.get_object(Bucket=bucket, Key="review/manifest.jsonl")["Body"].iter_lines()]
    assert [(row["product_id"], row["status"], row["source"], row["prompt"]) for row in rows] == [
        ("A1", "stored", "task", "red mug"),
        ("A2", "sha256_mismatch", "task", "black lamp"),  # read for its thumbnail, its bytes do not match
        ("A3", "stored", "s3", "green chair"),
        ("A4", "failed", None, "blue vase"),
        ("A5", "stored", "task", "grey rug"),
    ]
    assert rows[2]["billed_images"] == 1 and rows[3]["billed_images"] == 0
    page = s3_client.get_object(Bucket=bucket, Key="review/gallery.html")["Body"].read().decode()
    assert page.count('<img loading="lazy" src="data:image/jpeg;base64,') == 2, "gallery_max_images thumbnails"
    assert "2 of 4 images shown" in page and "sha256_mismatch: 1" in page and page.count("<figure>") == 5


def test_images_found_without_a_run_start_are_unverified(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="img/X-00.jpg", Body=b"x", Metadata={"seedream-sha256": "s"})
    s3_client.put_object(Bucket=bucket, Key="img/X-01.png", Body=b"y")
    s3_client.put_object(Bucket=bucket, Key="img/XY-00.jpg", Body=b"z")
    found = catalog.images_in_s3(s3_client, bucket, "img", {"X": 3}, None)
    assert [(item["key"], item["status"], item["sha256"]) for item in found[3]] == [
        ("img/X-00.jpg", "unverified", "s"),
        ("img/X-01.png", "unverified", None),
    ]


def test_package_imports_cheaply():
    code = (
        "import sys, airflow_provider_seedream.catalog, airflow_provider_seedream.lineage; "
        "heavy = {'PIL', 'boto3', 'botocore', 'jinja2', 'airflow.providers.openlineage'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert gallery.STATUS_STORED == "stored"
