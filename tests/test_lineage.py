"""OpenLineage: a real DAG run emits a COMPLETE event naming the images written and the references read."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_provider_seedream import lineage
from tests.conftest import airflow_bin
from tests.test_example_dags import DAGS, seedream_pool  # noqa: F401 (a fixture)


def test_outputs_are_the_objects_up_to_a_limit_then_their_prefix():
    assert lineage.output_names("p", ["p/a-00.jpg", "p/b-00.jpg", "p/a-00.jpg"]) == ["p/a-00.jpg", "p/b-00.jpg"]
    keys = [f"p/{n:05d}-00.jpg" for n in range(lineage.LINEAGE_OBJECT_LIMIT + 1)]
    assert lineage.output_names("p/", keys) == ["p"]
    assert lineage.output_names("", keys) == ["/"]
    assert lineage.output_names("p", []) == [], "nothing stored, no output"


def test_references_are_the_s3_images_of_the_operator_and_of_each_prompt():
    prompts = ["a mug", {"prompt": "a lamp", "image": ["s3://b/ref/lamp.jpg", "https://x/y.jpg"]}, {"prompt": "z"}]
    assert lineage.s3_references("s3://b/ref/all.png", prompts) == ["s3://b/ref/all.png", "s3://b/ref/lamp.jpg"]
    assert lineage.s3_references(["data:image/png;base64,AAAA", "/tmp/x.jpg"], "a mug") == []
    assert lineage.split_s3_uri("s3://bucket/a/b.jpg") == ("bucket", "a/b.jpg")


def test_operator_lineage_uses_the_amazon_namespace_conventions():
    found = lineage.operator_lineage(
        "images", "out", ["out/a-00.jpg"], references=["s3://refs/r.jpg"], inputs=["s3://cat/c.jsonl", "s3://refs/r.jpg"]
    )
    assert [(item.namespace, item.name) for item in found.inputs] == [("s3://cat", "c.jsonl"), ("s3://refs", "r.jpg")]
    assert [(item.namespace, item.name) for item in found.outputs] == [("s3://images", "out/a-00.jpg")]


def test_the_operator_imports_no_openlineage_module():
    # airflow.sdk reads every provider's get_provider_info; nothing beyond that may load.
    code = (
        "import sys, airflow.sdk; before = set(sys.modules); "
        "import airflow_provider_seedream.operators.seedream, airflow_provider_seedream.catalog.operators; "
        "found = [name for name in set(sys.modules) - before if 'openlineage' in name]; assert not found, found"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def lineage_dags_test(
    dag_id: str, events: Path, conf: dict[str, Any], **environment: str
) -> subprocess.CompletedProcess[str]:
    """``airflow dags test`` with the openlineage provider writing its events to ``events`` (JSON Lines)."""
    env = os.environ.copy()
    env.update(
        {
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events), "append": True}),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "seedream-tests",
            **environment,
        }
    )
    command = [airflow_bin(), "dags", "test", dag_id, "-c", json.dumps(conf)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)


@pytest.mark.usefixtures("airflow_db")
def test_a_dag_run_emits_the_images_and_references_as_datasets(seedream_emulator, s3_client, bucket, tmp_path):
    pytest.importorskip("airflow.providers.openlineage")
    photo = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(photo, format="JPEG")
    s3_client.put_object(Bucket=bucket, Key="refs/photo.jpg", Body=photo.getvalue())
    events = tmp_path / "openlineage.jsonl"
    conf = {
        "prompts": ["a red apple", "a green pear"],
        "bucket": bucket,
        "prefix": "lineage",
        "size": "2K",
        "image": f"s3://{bucket}/refs/photo.jpg",
    }
    done = lineage_dags_test("seedream_test_batch", events, conf)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    emitted = events_of(events)
    complete = [
        event for event in emitted if event.get("eventType") == "COMPLETE" and event["job"]["name"] == "seedream_test_batch.generate"
    ]
    assert len(complete) == 1, [(event.get("eventType"), event.get("job", {}).get("name")) for event in emitted]
    [event] = complete
    assert event["job"]["namespace"] == "seedream-tests"
    outputs = sorted((item["namespace"], item["name"]) for item in event["outputs"])
    assert outputs == [(f"s3://{bucket}", "lineage/00000-00.jpg"), (f"s3://{bucket}", "lineage/00001-00.jpg")]
    assert [(item["namespace"], item["name"]) for item in event["inputs"]] == [(f"s3://{bucket}", "refs/photo.jpg")]


@pytest.mark.usefixtures("airflow_db", "seedream_pool")
def test_a_catalog_chunk_names_its_catalog_and_its_images(seedream_emulator, s3_client, bucket, tmp_path):
    pytest.importorskip("airflow.providers.openlineage")
    products = [
        {"id": f"L{n}", "name": f"lamp {n}", "category": "Lighting", "colour": "black", "material": "steel"}
        for n in range(3)
    ]
    s3_client.put_object(Bucket=bucket, Key="in/lamps.jsonl", Body="".join(json.dumps(p) + "\n" for p in products).encode())
    events = tmp_path / "openlineage.jsonl"
    conf = {"bucket": bucket, "catalog_key": "in/lamps.jsonl", "size": "2K", "chunk_size": 2}
    done = lineage_dags_test(
        "seedream_catalog_batch", events, conf,
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS), SEEDREAM_BUCKET=bucket, SEEDREAM_TASK_RETRIES="0",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    chunks = [
        event for event in events_of(events)
        if event.get("eventType") == "COMPLETE" and event["job"]["name"] == "seedream_catalog_batch.generate_images"
    ]
    assert len(chunks) == 2
    catalog = (f"s3://{bucket}", "in/lamps.jsonl")
    written = []
    for event in chunks:
        assert [(item["namespace"], item["name"]) for item in event["inputs"]] == [catalog]
        written += [(item["namespace"], item["name"]) for item in event["outputs"]]
    assert sorted(written) == [(f"s3://{bucket}", f"catalog/images/L{n}-00.jpg") for n in range(3)]
