"""SeedreamToS3Operator in real DAG runs (dag.test) against the emulator and moto's S3 server."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import pytest
from PIL import Image

from tests.dag_runs import airflow_dags_test, run_dag, task_xcom
from tests.reliability.test_spend_safety import ledger as records_under

pytestmark = pytest.mark.usefixtures("airflow_db")

XCOM_KEYS = {
    "s3_uri", "bucket", "key", "prompt_index", "image_index", "prompt", "model",
    "size", "content_type", "bytes", "sha256", "fingerprint", "reused",
}


def objects(s3_client, bucket: str, prefix: str = "") -> dict[str, bytes]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {
        item["Key"]: s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listing.get("Contents", [])
        if "_ledger/" not in item["Key"]
    }


def ledger(s3_client, bucket: str, prefix: str = "p") -> dict[str, dict]:
    """The spend ledger's records under ``prefix``, by key stem."""
    return records_under(s3_client, bucket, f"{prefix}/")


def served_hashes(emulator) -> set[str]:
    return {image["sha256"] for image in emulator.images()}


def test_batch_lands_in_s3_with_metadata_and_small_xcom(seedream_emulator, s3_client, bucket):
    prompts = ["a red apple", "a green pear", "a yellow lemon"]
    run = run_dag("seedream_test_batch", prompts=prompts, bucket=bucket, prefix="fruit/2026")
    assert run.state == "success"

    records = task_xcom(run, "generate")
    assert [record["prompt"] for record in records] == prompts
    assert [record["key"] for record in records] == [f"fruit/2026/{i:05d}-00.jpg" for i in range(3)]
    stored = objects(s3_client, bucket)
    assert set(stored) == {record["key"] for record in records}
    for record in records:
        assert set(record) >= XCOM_KEYS
        assert record["s3_uri"] == f"s3://{bucket}/{record['key']}"
        data = stored[record["key"]]
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert len(data) == record["bytes"]
        assert Image.open(io.BytesIO(data)).size == (2048, 2048)
        assert record["content_type"] == "image/jpeg" and record["size"] == "2048x2048"
        assert record["model"] == "doubao-seedream-5-0-260128" and record["reused"] is False
        head = s3_client.head_object(Bucket=bucket, Key=record["key"])
        assert head["ContentType"] == "image/jpeg"
        assert head["Metadata"]["seedream-fingerprint"] == record["fingerprint"]
        assert head["Metadata"]["seedream-model"] == record["model"]
    assert {record["sha256"] for record in records} == served_hashes(seedream_emulator)
    text = json.dumps(records)
    assert "http" not in text and "base64" not in text


def test_rerun_costs_nothing_and_a_changed_prompt_is_regenerated(seedream_emulator, s3_client, bucket):
    prompts = ["a kite", "a boat", "a train"]
    first = task_xcom(run_dag("seedream_test_batch", prompts=prompts, bucket=bucket, prefix="rerun"), "generate")
    assert seedream_emulator.stats()["generation_requests"] == 3

    seedream_emulator.reset()
    second = task_xcom(run_dag("seedream_test_batch", prompts=prompts, bucket=bucket, prefix="rerun"), "generate")
    assert seedream_emulator.stats()["generation_requests"] == 0
    assert all(record["reused"] for record in second)
    assert [(r["key"], r["sha256"], r["bytes"]) for r in second] == [(r["key"], r["sha256"], r["bytes"]) for r in first]

    seedream_emulator.reset()
    changed = ["a kite", "a red boat", "a train"]
    third = task_xcom(run_dag("seedream_test_batch", prompts=changed, bucket=bucket, prefix="rerun"), "generate")
    assert seedream_emulator.stats()["generation_requests"] == 1
    assert [record["reused"] for record in third] == [True, False, True]
    assert third[1]["sha256"] != first[1]["sha256"] and third[1]["key"] == first[1]["key"]

    seedream_emulator.reset()
    resized = task_xcom(run_dag("seedream_test_batch", prompts=changed, bucket=bucket, size="2304x1728", prefix="rerun"), "generate")
    assert seedream_emulator.stats()["generation_requests"] == 3
    assert {record["size"] for record in resized} == {"2304x1728"}

    seedream_emulator.reset()
    replaced_run = run_dag("seedream_test_replace", prompts=changed, bucket=bucket, size="2304x1728", prefix="rerun")
    assert replaced_run.state == "success"
    assert seedream_emulator.stats()["generation_requests"] == 3
    replaced = task_xcom(replaced_run, "generate")
    assert [record["reused"] for record in replaced] == [False, False, False]
    assert [record["key"] for record in replaced] == [record["key"] for record in resized]
    assert all(new["sha256"] != old["sha256"] for new, old in zip(replaced, resized)), "every image was made anew"


def test_templated_prompts_and_prompt_files(seedream_emulator, s3_client, bucket):
    run = run_dag("seedream_test_templated", bucket=bucket, style="neon")
    assert run.state == "success"
    ds = run.logical_date.strftime("%Y-%m-%d")
    records = task_xcom(run, "banner")
    assert [record["prompt"] for record in records] == [
        f"a neon banner for {ds}",
        f"a product photo of neon shoes, shot on {ds}",
    ]
    assert [record["key"] for record in records] == [f"banners/{ds}/00000-00.png", f"banners/{ds}/00001-00.png"]
    assert {record["content_type"] for record in records} == {"image/png"}


def test_mapping_and_prompts_from_an_upstream_task(seedream_emulator, s3_client, bucket):
    run = run_dag("seedream_test_mapped", bucket=bucket, products=["mug", "lamp", "chair"])
    assert run.state == "success"
    mapped = [task_xcom(run, "per_product", map_index=index) for index in range(3)]
    assert [records[0]["key"] for records in mapped] == [f"mapped/map-{i:05d}/00000-00.jpg" for i in range(3)]
    assert [records[0]["prompt"] for records in mapped] == [
        "a studio photo of a mug", "a studio photo of a lamp", "a studio photo of a chair",
    ]
    from_xcom = task_xcom(run, "from_xcom")
    assert [record["key"] for record in from_xcom] == [f"from-xcom/{i:05d}-00.jpg" for i in range(3)]
    assert len(objects(s3_client, bucket)) == 6


def test_partial_failure_keeps_what_was_paid_for(seedream_emulator, s3_client, bucket):
    prompts = ["a fine cat", "a forbidden cat [refuse]", "a fine dog", "a flagged dog [item-error]"]
    run = run_dag("seedream_test_batch", prompts=prompts, bucket=bucket, prefix="p")
    assert run.state == "failed"
    assert set(objects(s3_client, bucket)) == {"p/00000-00.jpg", "p/00002-00.jpg"}
    assert seedream_emulator.stats()["images_generated"] == 2

    seedream_emulator.reset()
    fixed = ["a fine cat", "a permitted cat", "a fine dog", "a dog"]
    records = task_xcom(run_dag("seedream_test_batch", prompts=fixed, bucket=bucket, prefix="p"), "generate")
    assert seedream_emulator.stats()["generation_requests"] == 2
    assert [record["reused"] for record in records] == [True, False, True, False]


def test_group_mode_stores_every_image_and_reuses_the_group(seedream_emulator, s3_client, bucket):
    extra = {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3}}
    records = task_xcom(run_dag("seedream_test_batch", prompts=["a comic strip"], bucket=bucket, extra=extra), "generate")
    assert [record["image_index"] for record in records] == [0, 1, 2]
    assert len(objects(s3_client, bucket)) == 3
    seedream_emulator.reset()
    again = task_xcom(run_dag("seedream_test_batch", prompts=["a comic strip"], bucket=bucket, extra=extra), "generate")
    assert seedream_emulator.stats()["generation_requests"] == 0
    assert [record["sha256"] for record in again] == [record["sha256"] for record in records]


def test_transient_faults_are_retried_without_paying_twice(seedream_emulator, s3_client, bucket):
    # Faults that prove nothing was made (429, 500, 503) and broken downloads; a lost answer (a
    # reset) is an unknown outcome, not a transient fault: the fault matrix covers it.
    seedream_emulator.configure(
        rate_429=0.1, rate_500=0.08, rate_503=0.08, rate_truncate=0.2, rate_download_500=0.1,
        retry_after=0, fault_seed=7,
    )
    prompts = [f"tile number {n}" for n in range(24)]
    run = run_dag("seedream_test_batch", prompts=prompts, bucket=bucket, extra={"seed": 3})
    assert run.state == "success"
    stats = seedream_emulator.stats()
    faults = stats["faults"]
    fired = {name: faults[name] for name in ("429", "500", "503", "truncate", "download_500")}
    assert all(fired.values()), f"every configured fault fired at least once: {fired}"
    assert stats["images_generated"] == 24
    assert stats["generation_requests"] == 24 + faults["429"] + faults["500"] + faults["503"]
    stored = objects(s3_client, bucket)
    assert {hashlib.sha256(data).hexdigest() for data in stored.values()} == served_hashes(seedream_emulator)


def test_reference_images_from_s3_and_local_files(seedream_emulator, s3_client, bucket, tmp_path):
    photo = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(photo, format="PNG")
    s3_client.put_object(Bucket=bucket, Key="photos/chair.png", Body=photo.getvalue())
    local = tmp_path / "lamp.png"
    local.write_bytes(photo.getvalue())
    data_uri = "data:image/png;base64," + base64.b64encode(photo.getvalue()).decode()
    prompts = [
        {"prompt": "the chair in winter", "image": f"s3://{bucket}/photos/chair.png"},
        {"prompt": "the lamp in spring", "image": [str(local), data_uri]},
    ]
    run = run_dag("seedream_test_batch", prompts=prompts, bucket=bucket, prefix="variants")
    assert run.state == "success"
    assert seedream_emulator.stats()["references"] == 3
    records = task_xcom(run, "generate")
    assert "base64" not in json.dumps(records)

    s3_client.put_object(Bucket=bucket, Key="photos/chair.png", Body=photo.getvalue() + b"changed")
    seedream_emulator.reset()
    run_dag("seedream_test_batch", prompts=prompts, bucket=bucket, prefix="variants")
    assert seedream_emulator.stats()["generation_requests"] == 1, "a changed source photo is a new request"


def test_task_log_reports_progress_retries_and_failures(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(download_script=["truncate"], script=["429"], retry_after=0)
    done = airflow_dags_test("seedream_test_batch", prompts=["a quiet garden", "a hidden door [refuse]"], bucket=bucket)
    log = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Progress: 2/2 prompts done" in log
    assert "1 failure(s) in a batch of 2 prompt(s); 1 image(s) generated and stored" in log
    assert "prompt 1: generation failed: InputTextSensitiveContentDetected" in log
    assert "AirflowFailException" in log, "a refused prompt fails the task without retries"
    assert "Seedream generation failed (HTTP 429 RequestBurstTooFast" in log
    assert "Seedream download failed" in log and ("truncated" in log or "broke after" in log)
    assert list(objects(s3_client, bucket, "batch/")) == ["batch/00000-00.jpg"]


def test_a_retry_downloads_what_the_failed_attempt_paid_for(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(download_script=["500"] * 6)
    first = run_dag("seedream_test_batch", prompts=["a lighthouse at dawn"], bucket=bucket, prefix="p")
    assert first.state == "failed"
    assert set(objects(s3_client, bucket)) == set()
    record = ledger(s3_client, bucket)["00000"]
    assert record["status"] == "answered" and [image["index"] for image in record["images"]] == [0]
    assert record["images"][0]["url"] and not record["images"][0].get("key")

    second = run_dag("seedream_test_batch", prompts=["a lighthouse at dawn"], bucket=bucket, prefix="p")
    assert second.state == "success"
    stats = seedream_emulator.stats()
    assert stats["generation_requests"] == 1 and stats["images_generated"] == 1, "paid for once"
    stored = objects(s3_client, bucket)
    assert set(stored) == {"p/00000-00.jpg"}
    assert hashlib.sha256(stored["p/00000-00.jpg"]).hexdigest() in served_hashes(seedream_emulator)
    assert ledger(s3_client, bucket)["00000"]["status"] == "stored"


def test_links_left_for_a_changed_prompt_are_not_used(seedream_emulator, s3_client, bucket):
    run_dag("seedream_test_batch", prompts=["a red barn", "a blue barn"], bucket=bucket, prefix="p")
    # A dead try of this task left paid links of another prompt under the second key.
    key = "p/_ledger/00001.json"
    record = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    link = {"index": 0, "url": "http://127.0.0.1:9/x", "expires_at": 4102444800}
    record.update(status="answered", fingerprint="0" * 64, images=[link])
    record["owner"].update(token="dead", try_number=1)
    s3_client.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())
    seedream_emulator.reset()
    run = run_dag("seedream_test_batch", prompts=["a red barn", "a green barn"], bucket=bucket, prefix="p")
    assert run.state == "success"
    assert seedream_emulator.stats()["generation_requests"] == 1, "the changed prompt is generated, not resumed"
    assert seedream_emulator.stats()["downloads"] == 1, "the other prompt's link is never fetched"
    assert set(objects(s3_client, bucket)) == {"p/00000-00.jpg", "p/00001-00.jpg"}
    statuses = {stem: item["status"] for stem, item in ledger(s3_client, bucket).items()}
    assert statuses == {"00000": "stored", "00001": "stored"}
