"""
A DAG for the UI test: six prompts through ``seedream_ui``, a connection made in the UI's form.

It exists so that the browser test proves the form's connection in a real run, without
touching the connections the example DAGs use.
"""

from __future__ import annotations

import datetime
import os

from airflow.sdk import DAG

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

with DAG(
    dag_id="seedream_ui_check",
    description="Six images through the seedream_ui connection",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    tags=["seedream", "test"],
):
    SeedreamToS3Operator(
        task_id="generate",
        prompt=[f"a paper lantern number {number} on a dark blue background" for number in range(6)],
        s3_bucket=os.environ.get("SEEDREAM_BUCKET", "seedream-demo"),
        s3_prefix="ui-check/{{ run_id | replace(':', '-') | replace('+', '-') }}",
        size="2K",
        seedream_conn_id="seedream_ui",
        max_concurrency=2,
        retries=0,
    )
