"""DAGs the reliability tests run: large batches under injected faults."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

with DAG(
    dag_id="seedream_test_faults",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    render_template_as_native_obj=True,
    params={"prompts": ["a red apple"], "bucket": "images", "prefix": "faults", "concurrency": 16, "resolve_unknown": None},
):
    SeedreamToS3Operator(
        task_id="generate",
        prompt="{{ params.prompts }}",
        s3_bucket="{{ params.bucket }}",
        s3_prefix="{{ params.prefix }}",
        size="2K",
        max_concurrency=16,
        resolve_unknown="{{ params.resolve_unknown }}",
        # A killed try's claims are taken as dead 5 s after its last heartbeat.
        lease_seconds=5,
        # A read timeout far above any answer on a loaded machine: lost answers come from scripted faults.
        hook_params={"retry_min_wait": 0.01, "retry_max_wait": 0.2, "max_retries": 8, "timeout": 60.0},
        retries=0,
    )

