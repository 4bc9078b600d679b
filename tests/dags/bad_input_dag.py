"""One task per invalid input; every task must fail before a request is sent, and never be retried.

Each task may retry twice, as a production task would: bad input must fail for good at once
(``AirflowFailException`` or a rendering error Airflow does not retry), not wait and fail again.
"""

from __future__ import annotations

import datetime

from airflow.sdk import DAG
from bad_inputs import BAD_INPUTS, BUCKET, RETRIES

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
            **{
                "task_id": task_id,
                "prompt": "a cat",
                "s3_bucket": BUCKET,
                "size": "2K",
                "retries": RETRIES,
                "retry_delay": datetime.timedelta(seconds=1),
                **arguments,
            }
        )
