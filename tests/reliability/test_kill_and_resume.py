"""A task killed mid-batch (SIGKILL) and run again finishes without generating a stored image again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FIGURES
from tests.dag_runs import run_dag
from tests.emulator.support import quiet_stats
from tests.reliability.test_spend_safety import ledger as records_under

pytestmark = pytest.mark.usefixtures("airflow_db")

PROMPTS = 64


def stored(s3_client, bucket: str) -> dict[str, str]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix="faults/").get("Contents", [])
    return {
        item["Key"]: hashlib.sha256(s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()).hexdigest()
        for item in listing
        if "/_ledger/" not in item["Key"]
    }


def ledger(s3_client, bucket: str) -> dict[str, str]:
    """Key stem -> status of each prompt's record in the spend ledger."""
    return {stem: record["status"] for stem, record in records_under(s3_client, bucket, "faults/").items()}


def test_killed_batch_resumes_without_paying_again(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(latency=0.25)
    prompts = [f"a mosaic tile {n}" for n in range(PROMPTS)]
    command = [
        str(Path(sys.executable).with_name("airflow")), "dags", "test", "seedream_test_faults",
        "-c", json.dumps({"prompts": prompts, "bucket": bucket}),
    ]
    task = subprocess.Popen(
        command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while seedream_emulator.stats()["images_generated"] < PROMPTS // 3:
            assert task.poll() is None, "the task ended before it could be killed"
            assert time.monotonic() < deadline, "the task made no progress"
            time.sleep(0.05)
    finally:
        os.killpg(task.pid, signal.SIGKILL)
        task.wait(timeout=30)
    assert task.returncode == -signal.SIGKILL

    at_kill = quiet_stats(seedream_emulator)  # requests the killed task left behind are billed, then nothing more
    before = stored(s3_client, bucket)
    states = ledger(s3_client, bucket)
    in_flight = {stem for stem, status in states.items() if status == "claimed"}
    answered = {stem for stem, status in states.items() if status == "answered"}
    assert 0 < len(before) < PROMPTS
    assert in_flight, "requests were in flight at the kill: their claims are in the ledger"
    assert len(in_flight) <= 16, "at most max_concurrency claims are open"

    # The next run stores what was paid for, sends what was never claimed, and sends no claim in flight at the kill.
    seedream_emulator.configure(latency=0.0)
    run = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket, resolve_unknown=None)
    assert run.state == "failed", "requests in flight at the kill are unknown outcomes, reported"
    generated = seedream_emulator.stats()["generation_requests"] - at_kill["generation_requests"]
    unclaimed = PROMPTS - len(states)
    assert generated == unclaimed, "only prompts never claimed are sent: nothing in flight at the kill is sent again"
    after = stored(s3_client, bucket)
    assert all(after[key] == sha for key, sha in before.items()), "stored images are untouched"
    assert {f"faults/{stem}-00.jpg" for stem in answered} <= set(after), "images paid for before the kill are stored"
    unknown = {stem for stem, status in ledger(s3_client, bucket).items() if status == "unknown"}
    assert unknown == in_flight, "exactly the claims of the killed try are unknown outcomes"

    # Asked to, one run sends them again; every image is then stored.
    resent = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket, resolve_unknown="retry")
    assert resent.state == "success"
    sent = seedream_emulator.stats()["generation_requests"] - at_kill["generation_requests"] - generated
    assert sent == len(in_flight)
    assert len(stored(s3_client, bucket)) == PROMPTS
    assert set(stored(s3_client, bucket).values()) <= {image["sha256"] for image in seedream_emulator.images()}

    FIGURES.append(
        "kill and resume: "
        + json.dumps(
            {
                "prompts": PROMPTS,
                "paid_before_kill": at_kill["images_generated"],
                "stored_before_kill": len(before),
                "links_answered_at_kill": len(answered),
                "claims_in_flight_at_kill": len(in_flight),
                "generated_on_rerun": generated,
                "resent_when_asked": sent,
            }
        )
    )
