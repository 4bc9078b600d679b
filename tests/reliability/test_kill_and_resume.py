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

pytestmark = pytest.mark.usefixtures("airflow_db")

PROMPTS = 64


def stored(s3_client, bucket: str) -> dict[str, str]:
    listing = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {
        item["Key"]: hashlib.sha256(s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()).hexdigest()
        for item in listing
    }


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
    paid_before_kill = at_kill["images_generated"]
    everything = stored(s3_client, bucket)
    before = {key: sha for key, sha in everything.items() if not key.startswith("faults/_pending/")}
    pending = {int(key.rsplit("/", 1)[1].split(".")[0]) for key in everything if key.startswith("faults/_pending/")}
    done = {int(key.rsplit("/", 1)[1].split("-")[0]) for key in before} | pending
    assert 0 < len(before) < PROMPTS

    seedream_emulator.configure(latency=0.0)
    run = run_dag("seedream_test_faults", prompts=prompts, bucket=bucket)
    assert run.state == "success"
    after = stored(s3_client, bucket)
    generated = seedream_emulator.stats()["generation_requests"] - at_kill["generation_requests"]
    assert len(after) == PROMPTS, "every image is stored and no pending link is left"
    assert generated == PROMPTS - len(done), "no image stored or paid for before the kill is generated again"
    assert all(after[key] == sha for key, sha in before.items()), "stored images are untouched"
    assert set(after.values()) <= {image["sha256"] for image in seedream_emulator.images()}
    lost_in_flight = paid_before_kill - len(done)
    assert lost_in_flight <= 16, "only requests in flight at the kill (at most max_concurrency) are lost"

    FIGURES.append(
        "kill and resume: "
        + json.dumps(
            {
                "prompts": PROMPTS,
                "paid_before_kill": paid_before_kill,
                "stored_before_kill": len(before),
                "links_pending_at_kill": len(pending),
                "lost_in_flight": lost_in_flight,
                "generated_on_rerun": generated,
            }
        )
    )
