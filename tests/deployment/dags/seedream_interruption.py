"""
Interruption test DAGs: a long batch stopped by its execution timeout, and one stopped by hand.

Both send 60 prompts, 4 at a time, through the ``seedream_interrupt`` connection (an emulator
of its own, so that its counters belong to these runs alone), into ``params.prefix``.
``seedream_interrupt_timeout`` has an ``execution_timeout`` of 8 seconds, far shorter than
the batch; ``seedream_interrupt_mark_failed`` has none and is marked failed while it runs.
"""

from __future__ import annotations

import datetime
import os

from airflow.sdk import DAG, Param

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

BUCKET = os.environ.get("SEEDREAM_BUCKET", "seedream-demo")
PROMPTS = [f"test card number {number}, large digits on a plain background" for number in range(60)]
MAX_CONCURRENCY = 4
EXECUTION_TIMEOUT = datetime.timedelta(seconds=8)

for dag_id, timeout in (
    ("seedream_interrupt_timeout", EXECUTION_TIMEOUT),
    ("seedream_interrupt_mark_failed", None),
):
    with DAG(
        dag_id=dag_id,
        description="A 60-prompt batch that is interrupted",
        schedule=None,
        start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        catchup=False,
        tags=["seedream", "test"],
        params={"prefix": Param("interrupted", type="string")},
    ):
        SeedreamToS3Operator(
            task_id="generate",
            prompt=PROMPTS,
            s3_bucket=BUCKET,
            s3_prefix="{{ params.prefix }}",
            size="2K",
            seedream_conn_id="seedream_interrupt",
            max_concurrency=MAX_CONCURRENCY,
            execution_timeout=timeout,
            retries=0,
        )
