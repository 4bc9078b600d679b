"""
A replacing batch with one retry: ``replace=True`` must replace each image once per DAG run.

Three prompts, one request at a time, through the ``seedream_interrupt`` connection (the
interruption tests' emulator, whose counters the test resets), into ``params.prefix``.
"""

from __future__ import annotations

import datetime
import os

from airflow.sdk import DAG, Param

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

BUCKET = os.environ.get("SEEDREAM_BUCKET", "seedream-demo")
PROMPTS = ["a pear on a plate", "a plum on a plate", "a fig on a plate"]

with DAG(
    dag_id="seedream_replace_retry",
    description="replace=True with a retry",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    tags=["seedream", "test"],
    params={"prefix": Param("replaced", type="string")},
):
    SeedreamToS3Operator(
        task_id="generate",
        prompt=PROMPTS,
        s3_bucket=BUCKET,
        s3_prefix="{{ params.prefix }}",
        size="2K",
        seedream_conn_id="seedream_interrupt",
        max_concurrency=1,
        replace=True,
        # A refused request fails the try at once, so the retry is the scheduler's, not the hook's.
        hook_params={"max_retries": 0},
        retries=1,
        retry_delay=datetime.timedelta(seconds=1),
    )
