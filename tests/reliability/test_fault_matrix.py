"""A batch of several hundred prompts under every fault the service and its object store show.

Every image the service generated must end up in S3 exactly once with the bytes it served,
and the service must see no generation request beyond the images and the retried failures.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import FIGURES
from tests.dag_runs import run_dag, task_xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

PROMPTS = 300


def stored_objects(s3_client, bucket: str) -> dict[str, str]:
    """Key -> sha256 of every object in the bucket, read back from S3."""
    paginator = s3_client.get_paginator("list_objects_v2")
    hashes = {}
    for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            hashes[item["Key"]] = hashlib.sha256(body).hexdigest()
    return hashes


def test_transient_faults_lose_nothing_and_pay_once(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(
        rate_429=0.08,
        retry_after=0.05,
        rate_500=0.06,
        rate_reset=0.04,
        rate_slow=0.02,
        slow_seconds=3.0,
        rate_truncate=0.06,
        rate_download_500=0.04,
        fault_seed=20261124,
    )
    prompts = [f"catalogue item {n}, studio light" for n in range(PROMPTS)]
    run = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket)
    assert run.state == "success"

    stats = seedream_emulator.stats()
    faults = stats["faults"]
    served = [image["sha256"] for image in seedream_emulator.images()]
    stored = stored_objects(s3_client, bucket)
    records = task_xcom(run, "generate")

    failed_generations = faults["429"] + faults["500"] + faults["reset"] + faults["slow"]
    assert min(faults["429"], faults["500"], faults["reset"], faults["slow"], faults["truncate"], faults["download_500"]) > 0
    assert stats["images_generated"] == len(served) == PROMPTS
    assert stats["abandoned"] == faults["slow"], "a request past the read timeout generated nothing"
    assert stats["generation_requests"] == PROMPTS + failed_generations
    assert sorted(stored.values()) == sorted(served), "every served image is in S3 exactly once"
    assert len(set(stored.values())) == PROMPTS
    assert {record["key"]: record["sha256"] for record in records} == stored
    assert stats["downloads"] == PROMPTS + faults["truncate"] + faults["download_500"]

    FIGURES.append(
        "transient faults: "
        + json.dumps(
            {
                "prompts": PROMPTS,
                "images_stored": len(stored),
                "generation_requests": stats["generation_requests"],
                "downloads": stats["downloads"],
                "faults": {key: value for key, value in faults.items() if value},
            }
        )
    )


def test_dead_download_links_are_reported_and_regenerated_on_retry(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(rate_download_denied=0.05, rate_truncate=0.05, fault_seed=11)
    prompts = [f"poster {n}" for n in range(120)]
    first = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket)
    assert first.state == "failed"
    stats = seedream_emulator.stats()
    denied = stats["faults"]["denied"]
    assert denied > 0
    stored = stored_objects(s3_client, bucket)
    assert len(stored) == 120 - denied, "all but the images whose links died are stored"
    assert set(stored.values()) <= {image["sha256"] for image in seedream_emulator.images()}

    seedream_emulator.reset()
    second = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket)
    assert second.state == "success"
    assert seedream_emulator.stats()["generation_requests"] == denied, "only the lost images are generated again"
    after = stored_objects(s3_client, bucket)
    assert len(after) == 120
    assert all(after[key] == sha for key, sha in stored.items()), "stored images are untouched"

    FIGURES.append(
        "dead links: "
        + json.dumps({"prompts": 120, "links_denied": denied, "stored_first_run": len(stored), "regenerated": denied})
    )
