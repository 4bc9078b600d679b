"""S3 that accepts connections and never answers, mid-batch: a write that does not complete is not written.

The task runs in a process of its own (``task_process.py``) whose AWS connection goes through
a proxy (``hanging_proxy.py``) to moto's S3 server, with the bounds a user sets in the
connection's ``config_kwargs``. Once the proxy hangs, no claim can be written, so nothing more
is sent; answers that arrive keep their links on the worker. Later tries, on another worker and
then on the first, send each prompt once and store every image that was paid for.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import FIGURES
from tests.emulator.support import quiet_stats
from tests.reliability.hanging_proxy import HangingProxy
from tests.reliability.test_ledger import TASK_PROCESS, outcome
from tests.reliability.test_spend_safety import FAST, images, ledger

pytestmark = pytest.mark.usefixtures("airflow_db")

PROMPTS = 24
CONCURRENCY = 4
BOUNDS = {"connect_timeout": 1, "read_timeout": 2, "retries": {"total_max_attempts": 1, "mode": "standard"}}


def task(bucket: str, prompts: list[str], try_number: int, *, aws: str | None, home: Path, timeout: float | None = None):
    import subprocess
    import sys

    spec = {
        "task_id": "generate", "prompt": prompts, "s3_bucket": bucket, "s3_prefix": "p", "size": "2K",
        "max_concurrency": CONCURRENCY, "hook_params": FAST, "lease_seconds": 2, "claim_wait_seconds": 30,
        "context": {"run_id": "hang-run", "try_number": try_number, "execution_timeout": timeout},
    }
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    if aws is not None:
        env["AIRFLOW_CONN_AWS_DEFAULT"] = aws
    return subprocess.Popen(
        [sys.executable, str(TASK_PROCESS), json.dumps(spec)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_hanging_s3_stops_the_batch_and_nothing_is_paid_twice(seedream_emulator, s3_server, s3_client, bucket, tmp_path):
    seedream_emulator.configure(latency=0.5)
    prompts = [f"a stuck storefront {n}" for n in range(PROMPTS)]
    worker_a, worker_b = tmp_path / "worker-a", tmp_path / "worker-b"
    host, port = urlsplit(s3_server).hostname, urlsplit(s3_server).port
    with HangingProxy((host, port)) as proxy:
        through_proxy = json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": proxy.url, "region_name": "us-east-1", "config_kwargs": BOUNDS},
        })
        first = task(bucket, prompts, 1, aws=through_proxy, home=worker_a, timeout=30)
        deadline = time.monotonic() + 60
        while seedream_emulator.stats()["generation_requests"] < 8:
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the first try made no progress"
            time.sleep(0.02)
        proxy.hang()
        hung_at, sent_at_hang = time.monotonic(), seedream_emulator.stats()["generation_requests"]
        output, _ = first.communicate(timeout=60)
        ended_after = time.monotonic() - hung_at
    result = json.loads(output.strip().splitlines()[-1])
    after_first = quiet_stats(seedream_emulator)

    assert "error" in result, result
    assert after_first["generation_requests"] - sent_at_hang <= CONCURRENCY, (
        "once S3 hangs no claim is written, so only requests already claimed are sent"
    )
    assert ended_after < 25, f"every S3 call is bounded: the try ended {ended_after:.1f} s after S3 hung"
    kept = sorted(path.name for path in worker_a.rglob("*.json"))
    assert kept, "answers that arrived after S3 hung keep their links on the worker"
    assert f"its paid links are kept at {worker_a}" in output, output[-3000:]

    # Another worker: what the first try claimed is not sent again; the rest is sent once.
    second = outcome(task(bucket, prompts, 2, aws=None, home=worker_b))
    after_second = quiet_stats(seedream_emulator)
    assert "unknown" in second.get("message", ""), second
    claimed = len(ledger(s3_client, bucket)) - (after_second["generation_requests"] - after_first["generation_requests"])
    assert after_second["generation_requests"] - after_first["generation_requests"] == PROMPTS - claimed

    # The first worker again: the links it kept are stored, and nothing is paid for.
    third = outcome(task(bucket, prompts, 3, aws=None, home=worker_a))
    final = quiet_stats(seedream_emulator)
    assert final["generation_requests"] == after_second["generation_requests"], "the third try pays for nothing"
    billed = final["images_generated"]
    sent_prompts = {image["prompt_sha256"] for image in seedream_emulator.images()}
    assert len(sent_prompts) == billed == final["generation_requests"], "no prompt was paid for twice"
    stored = images(s3_client, bucket)
    unknown = [stem for stem, record in ledger(s3_client, bucket).items() if record["status"] == "unknown"]
    assert "error" not in third, third
    assert len(stored) == billed == PROMPTS and unknown == [], "every answer arrived, so every paid image is stored"
    FIGURES.append("S3 hanging mid-batch: " + json.dumps({
        "prompts": PROMPTS, "requests": final["generation_requests"], "billed": billed, "stored": len(stored),
        "unknown": len(unknown), "sent_after_hang": after_first["generation_requests"] - sent_at_hang,
        "links_kept_on_worker": len(kept), "try_ended_after_hang_s": round(ended_after, 1),
    }))
