"""
Scheduled assets: a daily banner, and a DAG that runs whenever new banners land.

``seedream_daily_banner`` runs every day. Its prompts are rendered from the run's date and
params, its images go under ``banners/<date>/`` and its task has the ``s3://<bucket>/banners``
asset as outlet: when the task succeeds, the asset event carries what was stored (bucket,
prefix, count, keys, prompts) in its ``extra``.

``seedream_publish_banners`` is scheduled on that asset. It reads the triggering asset events
(or, when run by hand, the asset's latest event) and publishes the new keys: it logs them and
writes ``banners/latest.json``, a small index that a website or another pipeline can poll.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

# Deployment settings, read when the file is parsed. An asset's URI is fixed at parse time,
# so the bucket of the asset comes from the environment; the run's bucket param should match.
BUCKET = os.environ.get("SEEDREAM_BUCKET", "seedream-demo")
SEEDREAM_CONN_ID = os.environ.get("SEEDREAM_CONN_ID", "seedream_default")
AWS_CONN_ID = os.environ.get("SEEDREAM_AWS_CONN_ID", "aws_default")
# Task-level retries; the hook already retries rate limits, 5xx and broken connections itself.
TASK_RETRIES = int(os.environ.get("SEEDREAM_TASK_RETRIES", "2"))
BANNERS = Asset(f"s3://{BUCKET}/banners", extra={"producer": "seedream_daily_banner"})
# The run's date: its logical date when it has one (scheduled runs, backfills), else the time it
# was triggered. A run triggered from the UI or the REST API has no logical date, and its
# template context then has no ``logical_date`` at all (not even None): templates are strict,
# so only a filter that accepts an undefined value, such as ``default``, may look at it.
RUN_DATE = "{{ (logical_date | default(dag_run.run_after)) | ds }}"
LATEST_INDEX = "banners/latest.json"

with DAG(
    dag_id="seedream_daily_banner",
    description="A daily generated banner, published as the s3://<bucket>/banners asset",
    schedule="@daily",
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["seedream", "example", "assets"],
    params={
        "bucket": Param(BUCKET, type="string", minLength=3, description="The bucket of the banners asset."),
        "style": Param("watercolour", type="string", description="The banner's visual style."),
        "theme": Param("a summer sale on outdoor furniture", type="string", description="What the banner promotes."),
        "size": Param("2K", type="string", description="A preset the model takes (5.0 Lite: 2K, 3K, 4K) or WxH."),
    },
):
    SeedreamToS3Operator(
        task_id="generate_banner",
        prompt=[
            "a {{ params.style }} website banner for {{ params.theme }}, dated " + RUN_DATE + ", wide composition, "
            "empty space on the left for a headline",
            "a {{ params.style }} square social media post for {{ params.theme }}, dated " + RUN_DATE,
        ],
        s3_bucket="{{ params.bucket }}",
        s3_prefix="banners/" + RUN_DATE,
        size="{{ params.size }}",
        seedream_conn_id=SEEDREAM_CONN_ID,
        aws_conn_id=AWS_CONN_ID,
        outlets=[BANNERS],
        retries=TASK_RETRIES,
        retry_delay=datetime.timedelta(minutes=5),
    )


with DAG(
    dag_id="seedream_publish_banners",
    description="Publish the keys of new banners whenever the banners asset is updated",
    schedule=[BANNERS],
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    tags=["seedream", "example", "assets"],
):

    @task(inlets=[BANNERS])
    def publish_banners(triggering_asset_events: Any = None, inlet_events: Any = None) -> dict[str, Any]:
        """Log the new banners' keys and write them to ``banners/latest.json`` in the asset's bucket."""
        import json
        import logging

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_seedream.asset_events import latest_events, stored_image_sets

        log = logging.getLogger(__name__)
        events = list(triggering_asset_events[BANNERS]) if triggering_asset_events else []
        if not events:
            # Run by hand: use the asset's latest event instead.
            events = latest_events(inlet_events, BANNERS)
        if not events:
            raise ValueError(f"no event of {BANNERS.uri} yet: run seedream_daily_banner first")
        banners = stored_image_sets(events)
        index = {"asset": BANNERS.uri, "banners": banners}
        bucket = banners[-1]["bucket"]
        S3Hook(aws_conn_id=AWS_CONN_ID).load_string(
            json.dumps(index, indent=2), key=LATEST_INDEX, bucket_name=bucket, replace=True
        )
        log.info("Published %d banner set(s) to s3://%s/%s", len(banners), bucket, LATEST_INDEX)
        return {"index": f"s3://{bucket}/{LATEST_INDEX}", "keys": [key for item in banners for key in item["keys"]]}

    publish_banners()
