"""One task per invalid input; every task must fail before a request is sent."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG
from bad_inputs import BAD_INPUTS, BUCKET

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

with DAG(
    dag_id="seedream_test_bad_input",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    params={"bucket": "images", "big_file": "/tmp/big.png", "text_file": "/tmp/text.png"},
):
    for task_id, (arguments, _) in BAD_INPUTS.items():
        SeedreamToS3Operator(
            **{"task_id": task_id, "prompt": "a cat", "s3_bucket": BUCKET, "size": "2K", "retries": 0, **arguments}
        )
