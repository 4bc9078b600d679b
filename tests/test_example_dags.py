"""The example DAGs in dags/: they parse cleanly and cheaply, and run end to end against the emulator and moto."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from PIL import Image

from tests.conftest import API_KEY, ROOT, airflow_bin
from tests.dag_runs import dag_bag
from tests.test_links import rest_links

DAGS = ROOT / "dags"
DATA = ROOT / "data"
DAG_FILES = sorted(DAGS.glob("*.py"))
EXPECTED_DAGS = {
    "seedream_scheduled_assets.py": {"seedream_daily_banner", "seedream_publish_banners"},
    "seedream_catalog_batch.py": {"seedream_catalog_batch"},
    "seedream_image_variants.py": {"seedream_image_variants"},
}
SECRET_MARKERS = (API_KEY, "X-Amz-Signature", "X-Tos-Signature", "X-Tos-Credential", "http://", "https://")


def example_dags_test(
    dag_id: str, bucket: str, conf: dict[str, Any], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``airflow dags test`` of an example DAG, with dags/ as the DAGs folder; output is returned."""
    env = os.environ.copy()
    env.update(
        {
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "SEEDREAM_BUCKET": bucket,
            "SEEDREAM_TASK_RETRIES": "0",
        }
    )
    command = [airflow_bin(), "dags", "test", dag_id, "-c", json.dumps(conf)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def read(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3_client, bucket: str, prefix: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []) if "/_ledger/" not in item["Key"])


def assert_no_secret(text: str) -> None:
    for marker in SECRET_MARKERS:
        assert marker not in text, marker


def gallery_images(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', page)


# -- parse-time checks -----------------------------------------------------------------------


def test_every_dag_file_imports_without_errors():
    bag = dag_bag(str(DAGS))
    assert not bag.import_errors, bag.import_errors
    assert {path.name for path in DAG_FILES} == set(EXPECTED_DAGS)
    assert set(bag.dag_ids) == set().union(*EXPECTED_DAGS.values())
    for dag_id in bag.dag_ids:
        dag = bag.dags[dag_id]
        assert "seedream" in dag.tags and dag.catchup is False and dag.description

    banner, publish = bag.dags["seedream_daily_banner"], bag.dags["seedream_publish_banners"]
    outlets = banner.get_task("generate_banner").outlets
    bucket = os.environ.get("SEEDREAM_BUCKET", "seedream-demo")
    assert [outlet.uri for outlet in outlets] == [f"s3://{bucket}/banners"]
    assert banner.schedule == "@daily"
    assert [asset.uri for asset in publish.schedule] == [f"s3://{bucket}/banners"]

    catalog = bag.dags["seedream_catalog_batch"]
    generate = catalog.get_task("generate_images")
    assert generate.pool == "seedream_api"
    assert catalog.get_task("write_report").trigger_rule == "all_done_min_one_success"
    variants = bag.dags["seedream_image_variants"]
    assert variants.get_task("generate_variants").pool == "seedream_api"


def test_dag_files_do_no_work_at_import():
    """
    Importing a DAG file opens no connection and loads neither boto3 nor Pillow.

    The one exception is Airflow's own: an ``s3://`` asset URI is normalised by the amazon
    provider's asset handler, whose module imports boto3; the file declaring the banners asset
    may load boto3 through that handler only.
    """
    script = """
import importlib.util, socket, sys

def refuse(*args, **kwargs):
    raise AssertionError("a DAG file opened a network connection at import")

socket.socket.connect = refuse
socket.create_connection = refuse
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("example_dag_" + str(abs(hash(path))), path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "PIL" not in sys.modules, (path, "PIL")
    if "boto3" in sys.modules or "botocore" in sys.modules:
        assert path.endswith("seedream_scheduled_assets.py"), (path, "boto3")
        assert "airflow.providers.amazon.aws.assets.s3" in sys.modules, (path, "boto3 not from the s3 asset handler")
    print("ok", path)
"""
    # The file with the s3:// asset goes last, so that the others are checked before boto3 is loaded.
    files = sorted(DAG_FILES, key=lambda path: path.name == "seedream_scheduled_assets.py")
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == len(DAG_FILES)


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda path: path.name)
def test_every_example_dag_reads_in_a_minute(path):
    assert len(path.read_text().splitlines()) <= 120, "the logic lives in the package; the DAG shows the pipeline"


def test_variant_and_banner_helpers(s3_client, s3_server, bucket):
    from types import SimpleNamespace

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow_provider_seedream.version_compat import AirflowFailException

    from airflow_provider_seedream.asset_events import stored_image_sets
    from airflow_provider_seedream.variants import plan_variants, write_variants_index

    hook = S3Hook(aws_conn_id="aws_default")
    for key in ("photos/mug.jpg", "photos/mug.png", "photos/notes.txt", "photos/variants/mug/00000-00.jpg"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    variants = [{"name": "snow", "prompt": "in snow"}, {"name": "sea", "prompt": "by the sea"}]
    planned = plan_variants(hook, bucket, "photos/", variants, "Keep it:", "photos/variants")
    assert [item["s3_prefix"] for item in planned] == ["photos/variants/mug", "photos/variants/mug-png"]
    assert planned[0]["prompt"][1] == {"prompt": "Keep it: by the sea", "image": f"s3://{bucket}/photos/mug.jpg"}
    with pytest.raises(AirflowFailException, match="source_prefix: no photo"):
        plan_variants(hook, bucket, "empty/", variants, "", "v")
    records = {0: [{"prompt_index": 1, "key": "photos/variants/mug/00001-00.jpg"}], 1: None}
    key, count, missing = write_variants_index(hook, bucket, "photos/variants", variants, planned, records.get)
    index = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())["variants"]
    assert (key, count, missing) == ("photos/variants/index.json", 4, 3)
    assert [entry["status"] for entry in index] == ["failed", "stored", "failed", "failed"]

    event = SimpleNamespace(
        extra={"bucket": bucket, "prefix": "b", "keys": ["b/1", "b/0"], "prompts": ["one", "zero"]},
        source_dag_id="d", source_run_id="r", timestamp=datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc),
    )
    [entry] = stored_image_sets([event])
    assert list(zip(entry["keys"], entry["prompts"])) == [("b/1", "one"), ("b/0", "zero")]
    assert entry["produced_by"] == "d/r"


def test_catalog_dag_is_short_and_its_logic_lives_in_the_package():
    from airflow_provider_seedream.catalog.operators import CatalogChunkToS3Operator, CatalogReportOperator

    source = (DAGS / "seedream_catalog_batch.py").read_text()
    assert len(source.splitlines()) <= 120
    dag = dag_bag(str(DAGS / "seedream_catalog_batch.py")).dags["seedream_catalog_batch"]
    assert set(dag.params) == {
        "bucket", "catalog_key", "catalog_format", "id_field", "prompt_template", "images_prefix",
        "report_prefix", "size", "chunk_size", "max_products", "gallery_max_images",
    }
    assert dag.params["chunk_size"] == 50 and dag.params["images_prefix"] == "catalog/images"
    generate, report = dag.get_task("generate_images"), dag.get_task("write_report")
    assert generate.operator_class is CatalogChunkToS3Operator and isinstance(report, CatalogReportOperator)
    assert dag.get_task("load_catalog").downstream_task_ids == {"plan_chunks", "generate_images", "write_report"}
    assert generate.upstream_task_ids == {"load_catalog", "plan_chunks"}
    assert [link.name for link in generate.operator_extra_links] == ["Images in S3"]
    assert [link.name for link in report.operator_extra_links] == ["Catalog gallery"]


# -- end-to-end runs -------------------------------------------------------------------------


@pytest.fixture
def catalog(s3_client, bucket) -> list[dict[str, Any]]:
    """The sample catalog, uploaded to the test's bucket."""
    s3_client.upload_file(str(DATA / "catalog_sample.jsonl"), bucket, "catalogs/catalog_sample.jsonl")
    return [json.loads(line) for line in (DATA / "catalog_sample.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture
def seedream_pool(airflow_db) -> str:
    from airflow.models.pool import Pool

    Pool.create_or_update_pool("seedream_api", slots=4, description="Seedream generation tasks", include_deferred=False)
    return "seedream_api"


@pytest.mark.usefixtures("airflow_db", "seedream_pool")
def test_catalog_batch_end_to_end(seedream_emulator, s3_client, s3_server, bucket, catalog):
    conf = {"bucket": bucket, "size": "2K", "chunk_size": 5}
    done = example_dags_test("seedream_catalog_batch", bucket, conf)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert API_KEY not in log
    assert "rendered_map_index='products 10+2'" in log  # three chunks: 5, 5 and 2 products

    stored = keys(s3_client, bucket, "catalog/images/")
    assert stored == sorted(f"catalog/images/{product['id']}-00.jpg" for product in catalog)
    assert seedream_emulator.stats()["generation_requests"] == len(catalog)

    manifest_text = read(s3_client, bucket, "catalog/review/manifest.jsonl").decode()
    rows = [json.loads(line) for line in manifest_text.splitlines()]
    assert [row["product_id"] for row in rows] == [product["id"] for product in catalog]
    for row, product in zip(rows, catalog):
        assert row["status"] == "stored" and row["source"] == "task" and row["billed_images"] == 1
        assert product["name"] in row["prompt"] and product["colour"] in row["prompt"]
        assert row["s3_uri"] == f"s3://{bucket}/{row['key']}"
        assert hashlib.sha256(read(s3_client, bucket, row["key"])).hexdigest() == row["sha256"]
    assert_no_secret(manifest_text.replace(f"s3://{bucket}/", ""))

    page = read(s3_client, bucket, "catalog/review/gallery.html").decode()
    sources = gallery_images(page)
    assert len(sources) == page.count("<img") == len(stored)
    for src in sources:
        assert src.startswith("data:image/jpeg;base64,")
        thumbnail = Image.open(io.BytesIO(base64.b64decode(src.partition(",")[2])))
        assert max(thumbnail.size) <= 320
    assert_no_secret(page.replace(f"s3://{bucket}/", ""))
    for product in catalog:
        assert product["id"] in page

    # XCom holds references and each chunk's records, never the catalog's prompts.
    sizes = catalog_xcom_sizes()
    assert max(sizes.values()) < 64 * 1024, sizes
    assert sizes[("load_catalog", -1, "return_value")] < 1024
    assert sizes[("plan_chunks", -1, "return_value")] < 64

    # The links the UI shows, from the REST API of the finished run.
    links = rest_links("seedream_catalog_batch", ("write_report", -1), ("generate_images", 0))
    assert links["write_report[-1]"]["body"]["extra_links"] == {
        "Catalog gallery": f"{s3_server}/{bucket}/catalog/review/gallery.html"
    }
    assert links["generate_images[0]"]["body"]["extra_links"] == {
        "Images in S3": f"{s3_server}/{bucket}?list-type=2&prefix=catalog%2Fimages%2F"
    }


def catalog_xcom_sizes() -> dict[tuple[str, int, str], int]:
    """The size of each XCom of the catalog DAG's latest run, in bytes of stored JSON."""
    from sqlalchemy import text

    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            text(
                "SELECT task_id, map_index, key, length(CAST(value AS BLOB)) FROM xcom WHERE dag_id = :dag AND "
                "run_id = (SELECT run_id FROM dag_run WHERE dag_id = :dag ORDER BY id DESC LIMIT 1)"
            ),
            {"dag": "seedream_catalog_batch"},
        ).all()
    return {(task_id, map_index, key): size for task_id, map_index, key, size in rows}



@pytest.mark.usefixtures("airflow_db", "seedream_pool")
def test_catalog_rows_inserted_or_reordered_regenerate_nothing_unchanged(seedream_emulator, s3_client, bucket):
    def upload(products: list[dict[str, Any]]) -> None:
        body = "".join(json.dumps(product) + "\n" for product in products)
        s3_client.put_object(Bucket=bucket, Key="in/products.jsonl", Body=body.encode())

    def product(n: int) -> dict[str, Any]:
        return {"id": f"K{n}", "name": f"item {n}", "category": "Decor", "colour": "blue", "material": "glass"}

    conf = {"bucket": bucket, "catalog_key": "in/products.jsonl", "size": "2K", "chunk_size": 2}
    upload([product(n) for n in range(1, 5)])
    first = example_dags_test("seedream_catalog_batch", bucket, conf)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    before = {key: read(s3_client, bucket, key) for key in keys(s3_client, bucket, "catalog/images/")}
    assert sorted(before) == [f"catalog/images/K{n}-00.jpg" for n in range(1, 5)]

    # A new product at the top, and the old ones in another order.
    seedream_emulator.reset()
    upload([product(0), product(3), product(1), product(4), product(2)])
    again = example_dags_test("seedream_catalog_batch", bucket, conf)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert seedream_emulator.stats()["generation_requests"] == 1, "only the new product is paid for"
    after = {key: read(s3_client, bucket, key) for key in keys(s3_client, bucket, "catalog/images/")}
    assert sorted(after) == [f"catalog/images/K{n}-00.jpg" for n in range(5)]
    assert all(after[key] == data for key, data in before.items()), "every key still holds its own product"
    rows = [json.loads(line) for line in read(s3_client, bucket, "catalog/review/manifest.jsonl").splitlines()]
    assert [(row["product_id"], row["key"], row["reused"]) for row in rows] == [
        ("K0", "catalog/images/K0-00.jpg", False),
        ("K3", "catalog/images/K3-00.jpg", True),
        ("K1", "catalog/images/K1-00.jpg", True),
        ("K4", "catalog/images/K4-00.jpg", True),
        ("K2", "catalog/images/K2-00.jpg", True),
    ]


@pytest.mark.usefixtures("airflow_db", "seedream_pool")
def test_catalog_with_a_bad_row_fails_before_any_request(seedream_emulator, s3_client, bucket):
    rows = [
        {"id": "B1", "name": "bowl", "category": "Kitchen", "colour": "white", "material": "porcelain"},
        {"id": "B2", "name": "jug", "category": "Kitchen", "colour": "blue", "material": "glass"},
        {"id": "B1", "name": "plate", "category": "Kitchen", "colour": "grey", "material": "stone"},
    ]
    s3_client.put_object(Bucket=bucket, Key="in/bad.csv", Body=b"id,name,category,colour,material\n" + "".join(
        ",".join(row.values()) + "\n" for row in rows).encode())
    done = example_dags_test("seedream_catalog_batch", bucket, {"bucket": bucket, "catalog_key": "in/bad.csv"})
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert "AirflowFailException" in log and "catalog line 4 (id 'B1'): the id appears more than once" in log
    assert seedream_emulator.stats()["generation_requests"] == 0
    assert keys(s3_client, bucket, "catalog/") == [], "nothing prepared, nothing generated"


@pytest.mark.usefixtures("airflow_db", "seedream_pool")
def test_catalog_batch_partial_failure_still_reports(seedream_emulator, s3_client, bucket):
    products = [
        {"id": "P1", "name": "blue vase", "category": "Decor", "colour": "blue", "material": "glass"},
        {"id": "P2", "name": "green sofa", "category": "Furniture", "colour": "green", "material": "velvet"},
        {"id": "P3", "name": "forbidden hat [refuse]", "category": "Hats", "colour": "red", "material": "felt"},
        {"id": "P4", "name": "yellow scarf", "category": "Accessories", "colour": "yellow", "material": "silk"},
        {"id": "P5", "name": "white kettle", "category": "Kitchen", "colour": "white", "material": "steel"},
    ]
    body = "".join(json.dumps(product) + "\n" for product in products)
    s3_client.put_object(Bucket=bucket, Key="in/products.jsonl", Body=body.encode())
    conf = {
        "bucket": bucket,
        "catalog_key": "in/products.jsonl",
        "images_prefix": "out/img",
        "report_prefix": "out/review",
        "size": "2K",
        "chunk_size": 2,
    }
    done = example_dags_test("seedream_catalog_batch", bucket, conf)
    assert done.returncode != 0, "a product without an image fails the run"
    assert "1 chunk(s) failed and 1 of 5 manifest line(s) have no valid image" in done.stdout + done.stderr

    lines = read(s3_client, bucket, "out/review/manifest.jsonl").splitlines()
    rows = {row["product_id"]: row for row in map(json.loads, lines)}
    assert rows["P3"]["status"] == "failed" and rows["P3"]["key"] is None and rows["P3"]["billed_images"] == 0
    # P4 shares the failed chunk: its image is found in S3 and checked against its metadata.
    assert rows["P4"]["status"] == "stored" and rows["P4"]["source"] == "s3" and rows["P4"]["billed_images"] == 1
    for product_id in ("P1", "P2", "P4", "P5"):
        row = rows[product_id]
        assert hashlib.sha256(read(s3_client, bucket, row["key"])).hexdigest() == row["sha256"]
    page = read(s3_client, bucket, "out/review/gallery.html").decode()
    assert len(gallery_images(page)) == 4
    assert "no image" in page

    # With the product fixed, a rerun pays for that product alone and reports the others as reused.
    products[2]["name"] = "red hat"
    body = "".join(json.dumps(product) + "\n" for product in products)
    s3_client.put_object(Bucket=bucket, Key="in/products.jsonl", Body=body.encode())
    seedream_emulator.reset()
    again = example_dags_test("seedream_catalog_batch", bucket, conf)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert seedream_emulator.stats()["generation_requests"] == 1
    rows = [json.loads(line) for line in read(s3_client, bucket, "out/review/manifest.jsonl").splitlines()]
    assert [(row["product_id"], row["status"], row["reused"], row["billed_images"]) for row in rows] == [
        ("P1", "stored", True, 0),
        ("P2", "stored", True, 0),
        ("P3", "stored", False, 1),
        ("P4", "stored", True, 0),
        ("P5", "stored", True, 0),
    ]


@pytest.mark.usefixtures("airflow_db")
def test_image_variants_end_to_end(seedream_emulator, s3_client, bucket):
    photos = sorted((DATA / "photos").glob("*.jpg"))
    assert len(photos) >= 2
    for photo in photos:
        s3_client.upload_file(str(photo), bucket, f"photos/{photo.name}")
    # Not a photo of the source folder: an earlier variant, and a file that is not an image.
    s3_client.put_object(Bucket=bucket, Key="photos/variants/old/00000-00.jpg", Body=photos[0].read_bytes())
    s3_client.put_object(Bucket=bucket, Key="photos/README.txt", Body=b"product photos")
    variants = [
        {"name": "snow", "prompt": "on a snowy mountain ledge"},
        {"name": "beach", "prompt": "on a sunny beach towel"},
    ]
    done = example_dags_test("seedream_image_variants", bucket, {"bucket": bucket, "size": "2K", "variants": variants})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    stats = seedream_emulator.stats()
    assert stats["generation_requests"] == len(photos) * len(variants)
    assert stats["references"] == len(photos) * len(variants)
    expected = sorted(
        f"photos/variants/{photo.stem}/{index:05d}-00.jpg" for photo in photos for index in range(len(variants))
    )
    stored = [key for key in keys(s3_client, bucket, "photos/variants/") if not key.startswith("photos/variants/old/")]
    assert sorted(key for key in stored if key.endswith(".jpg")) == expected

    index = json.loads(read(s3_client, bucket, "photos/variants/index.json"))["variants"]
    assert len(index) == len(photos) * len(variants)
    for entry in index:
        assert entry["status"] == "stored" and entry["photo"].startswith(f"s3://{bucket}/photos/")
        name = entry["photo"].rpartition("/")[2].rpartition(".")[0]
        position = [variant["name"] for variant in variants].index(entry["variant"])
        assert entry["keys"] == [f"photos/variants/{name}/{position:05d}-00.jpg"]
        assert variants[position]["prompt"] in entry["prompt"]


@pytest.mark.usefixtures("airflow_db")
def test_scheduled_banner_records_its_asset_event_and_queues_the_publisher(seedream_emulator, s3_client, bucket):
    from sqlalchemy import select

    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    uri = f"s3://{bucket}/banners"
    done = example_dags_test("seedream_daily_banner", bucket, {"bucket": bucket, "size": "2K", "style": "neon"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    stored = keys(s3_client, bucket, "banners/")
    assert len(stored) == 2 and all(re.fullmatch(r"banners/\d{4}-\d\d-\d\d/0000[01]-00\.jpg", key) for key in stored)
    day = stored[0].split("/")[1]

    with create_session() as session:
        asset = session.scalar(select(AssetModel).where(AssetModel.uri == uri))
        assert asset is not None
        [event] = session.scalars(select(AssetEvent).where(AssetEvent.asset_id == asset.id)).all()
        assert event.source_dag_id == "seedream_daily_banner"
        extra = event.extra
        queued = session.scalars(
            select(AssetDagRunQueue.target_dag_id).where(AssetDagRunQueue.asset_id == asset.id)
        ).all()
    assert extra["bucket"] == bucket and extra["prefix"] == f"banners/{day}"
    assert extra["count"] == 2 and extra["keys"] == stored
    assert all("neon" in prompt and day in prompt for prompt in extra["prompts"])
    assert queued == ["seedream_publish_banners"], "the asset-scheduled DAG is queued to run"

    published = example_dags_test("seedream_publish_banners", bucket, {})
    assert published.returncode == 0, published.stdout[-3000:] + published.stderr[-3000:]
    index = json.loads(read(s3_client, bucket, "banners/latest.json"))
    assert index["asset"] == uri
    [banner] = index["banners"]
    assert banner["keys"] == stored and banner["produced_by"].startswith("seedream_daily_banner/")
    assert f"s3://{bucket}/{stored[0]}" in published.stdout + published.stderr
