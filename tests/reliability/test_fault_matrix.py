"""A batch of several hundred prompts under every fault the service and its object store show.

The emulator bills what the service may bill (``bill_abandoned``): a request whose answer is
lost still costs an image. Every image whose answer arrived must end up in S3 exactly once
with the bytes it served; every lost answer must be recorded and never sent again unasked;
the service must see no generation request beyond one per prompt and the refused ones.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.conftest import FIGURES
from tests.dag_runs import run_dag, task_xcom
from tests.emulator.support import quiet_stats
from tests.reliability.test_spend_safety import ledger as records_under

pytestmark = pytest.mark.usefixtures("airflow_db")

PROMPTS = 300


def ledger_states(s3_client, bucket: str) -> dict[str, str]:
    """Key stem -> status of every prompt's record in the spend ledger."""
    return {stem: record["status"] for stem, record in records_under(s3_client, bucket, "faults/").items()}


def stored_objects(s3_client, bucket: str) -> dict[str, str]:
    """Key -> sha256 of every image in the bucket, read back from S3."""
    paginator = s3_client.get_paginator("list_objects_v2")
    hashes = {}
    for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if "/_ledger/" in item["Key"]:
                continue
            body = s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            hashes[item["Key"]] = hashlib.sha256(body).hexdigest()
    return hashes


def test_faults_lose_nothing_paid_and_never_pay_twice_unasked(seedream_emulator, s3_client, bucket, monkeypatch):
    seedream_emulator.configure(
        rate_429=0.08,
        retry_after=0.05,
        rate_500=0.05,
        rate_503=0.03,
        rate_reset=0.02,
        rate_502=0.01,
        rate_504=0.01,
        rate_truncate=0.06,
        rate_download_500=0.04,
        fault_seed=20261124,
        bill_abandoned=True,
    )
    prompts = [f"catalogue item {n}, studio light" for n in range(PROMPTS)]
    run = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket, resolve_unknown=None)
    assert run.state == "failed", "requests whose answer was lost fail the task, without a retry"

    stats = quiet_stats(seedream_emulator)
    faults = stats["faults"]
    lost = faults["reset"] + faults["502"] + faults["504"]
    retried = faults["429"] + faults["500"] + faults["503"]
    stored = stored_objects(s3_client, bucket)
    images = stored
    unknown = {stem for stem, status in ledger_states(s3_client, bucket).items() if status == "unknown"}
    answered = [image["sha256"] for image in seedream_emulator.images() if image["answered"]]

    assert min(faults["429"], faults["500"], faults["503"], faults["reset"], faults["truncate"], faults["download_500"]) > 0
    assert faults["502"] + faults["504"] > 0
    assert stats["generation_requests"] == PROMPTS + retried, "only requests the service did not serve are sent again"
    assert stats["images_generated"] == PROMPTS and stats["billed_unanswered"] == lost, "each prompt is paid once"
    assert sorted(images.values()) == sorted(answered), "every image whose answer arrived is in S3 exactly once"
    assert len(unknown) == lost, "every lost answer is recorded as an unknown outcome"
    assert stats["downloads"] == PROMPTS - lost + faults["truncate"] + faults["download_500"]

    # A rerun pays nothing more; with retry_unknown_outcome it sends exactly the lost ones again.
    seedream_emulator.reset()
    again = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket, resolve_unknown=None)
    assert again.state == "failed" and quiet_stats(seedream_emulator)["generation_requests"] == 0
    connection = json.loads(os.environ["AIRFLOW_CONN_SEEDREAM_DEFAULT"])
    connection["extra"] = {"retry_unknown_outcome": True}
    monkeypatch.setenv("AIRFLOW_CONN_SEEDREAM_DEFAULT", json.dumps(connection))
    resent = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket, resolve_unknown=None)
    assert resent.state == "success"
    assert quiet_stats(seedream_emulator)["generation_requests"] == lost
    final = stored_objects(s3_client, bucket)
    assert len(final) == PROMPTS and all(final[key] == sha for key, sha in images.items())
    assert {record["key"]: record["sha256"] for record in task_xcom(resent, "generate")} == final

    FIGURES.append(
        "faults: "
        + json.dumps(
            {
                "prompts": PROMPTS,
                "images_stored_first_run": len(images),
                "outcome_unknown": lost,
                "generation_requests": stats["generation_requests"],
                "billed": stats["images_generated"],
                "downloads": stats["downloads"],
                "faults": {key: value for key, value in faults.items() if value},
                "resent_with_retry_unknown_outcome": lost,
            }
        )
    )


def test_dead_download_links_are_reported_and_regenerated_on_retry(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(rate_download_denied=0.05, rate_truncate=0.05, fault_seed=11)
    prompts = [f"poster {n}" for n in range(120)]
    first = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket, resolve_unknown=None)
    assert first.state == "failed"
    stats = seedream_emulator.stats()
    denied = stats["faults"]["denied"]
    assert denied > 0
    stored = stored_objects(s3_client, bucket)
    assert len(stored) == 120 - denied, "all but the images whose links died are stored"
    assert set(stored.values()) <= {image["sha256"] for image in seedream_emulator.images()}

    lost = {stem for stem, status in ledger_states(s3_client, bucket).items() if status == "unknown"}
    assert len(lost) == denied, "a paid image whose link died is recorded as lost, not forgotten"

    seedream_emulator.reset()
    again = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket, resolve_unknown=None)
    assert again.state == "failed" and seedream_emulator.stats()["generation_requests"] == 0, "never paid again unasked"
    second = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket, resolve_unknown="retry")
    assert second.state == "success"
    assert seedream_emulator.stats()["generation_requests"] == denied, "asked to, only the lost images are generated again"
    after = stored_objects(s3_client, bucket)
    assert len(after) == 120
    assert all(after[key] == sha for key, sha in stored.items()), "stored images are untouched"

    FIGURES.append(
        "dead links: "
        + json.dumps({"prompts": 120, "links_denied": denied, "stored_first_run": len(stored), "regenerated": denied})
    )
