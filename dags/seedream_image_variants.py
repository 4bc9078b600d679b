"""
Image-to-image variants: new scenes for every product photo already in S3.

``list_photos`` lists the images directly under ``source_prefix`` (``photos/`` by default; the
variants folder below it is left out) and plans one prompt per variant for each photo, sending
the photo as the reference image. ``generate_variants`` is mapped over the photos and stores
the variants of ``photos/mug.jpg`` at ``photos/variants/mug/<variant index:05d>-00.jpg``.
``write_index`` writes ``photos/variants/index.json``, naming each variant's key, then fails
the run if any variant is missing.

Because the photo's content is part of what decides an image, a rerun regenerates only the
variants of photos that changed (or of variants whose prompt changed).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, task

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

BUCKET = os.environ.get("SEEDREAM_BUCKET", "seedream-demo")
SEEDREAM_CONN_ID = os.environ.get("SEEDREAM_CONN_ID", "seedream_default")
AWS_CONN_ID = os.environ.get("SEEDREAM_AWS_CONN_ID", "aws_default")
# Task-level retries; the hook already retries rate limits, 5xx and broken connections itself.
TASK_RETRIES = int(os.environ.get("SEEDREAM_TASK_RETRIES", "2"))
POOL = os.environ.get("SEEDREAM_POOL", "seedream_api")

DEFAULT_INSTRUCTION = (
    "Keep the product in the reference photo exactly as it is (shape, colour, material, any logo) "
    "and change only its surroundings:"
)
DEFAULT_VARIANTS = [
    {"name": "studio", "prompt": "a seamless white studio background with a soft contact shadow"},
    {"name": "winter", "prompt": "a cosy winter cabin table, warm lamp light, snow falling outside the window"},
    {"name": "summer", "prompt": "a sunny wooden terrace in summer, dappled shade from leaves"},
]

with DAG(
    dag_id="seedream_image_variants",
    description="Scene variants of every product photo under a prefix, stored next to the photos",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["seedream", "example", "image-to-image"],
    params={
        "bucket": Param(BUCKET, type="string", minLength=3, description="The bucket of the photos and variants."),
        "source_prefix": Param("photos/", type="string", description="The photos directly under this prefix."),
        "variants_prefix": Param("photos/variants", type="string", description="Where the variants go."),
        "instruction": Param(DEFAULT_INSTRUCTION, type="string", description="Put before every variant's prompt."),
        "variants": Param(
            DEFAULT_VARIANTS,
            type="array",
            minItems=1,
            items={"type": "object", "required": ["name", "prompt"]},
            description="One image per photo and variant: a name and a prompt.",
        ),
        "size": Param("2K", type="string", description="A preset the model takes (5.0 Lite: 2K, 3K, 4K) or WxH."),
        "max_photos": Param(0, type="integer", minimum=0, description="Only the first N photos (0: all)."),
    },
):

    @task
    def list_photos(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """List the photos under the source prefix and plan their variants."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_seedream.variants import plan_variants

        assert params is not None
        names = ("bucket", "source_prefix", "variants", "instruction", "variants_prefix", "max_photos")
        return plan_variants(S3Hook(aws_conn_id=AWS_CONN_ID), *(params[name] for name in names))

    photos = list_photos()

    generate = SeedreamToS3Operator.partial(
        task_id="generate_variants",
        s3_bucket="{{ params.bucket }}",
        size="{{ params.size }}",
        # Keys are placed by the variant's position under each photo's own prefix.
        prompt_index_offset=0,
        seedream_conn_id=SEEDREAM_CONN_ID,
        aws_conn_id=AWS_CONN_ID,
        max_concurrency=4,
        pool=POOL,
        retries=TASK_RETRIES,
        retry_delay=datetime.timedelta(minutes=1),
        map_index_template="{{ task.s3_prefix }}",
    ).expand_kwargs(photos)

    # Runs once every photo is done, failed or not; skipped only when nothing upstream succeeded.
    @task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS, retries=0)
    def write_index(planned: list[dict[str, Any]], params: dict[str, Any] | None = None, ti: Any = None) -> str:
        """Write which key holds which variant of which photo; fail if any variant is missing."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_seedream.mapped_results import mapped_results
        from airflow_provider_seedream.variants import write_variants_index
        from airflow_provider_seedream.version_compat import AirflowFailException

        assert params is not None
        _, records_of = mapped_results(ti, "generate_variants")  # a photo whose task failed pushed nothing
        hook = S3Hook(aws_conn_id=AWS_CONN_ID)
        key, count, missing = write_variants_index(
            hook, params["bucket"], params["variants_prefix"], params["variants"], planned, records_of
        )
        index = f"s3://{params['bucket']}/{key}"
        if missing:
            raise AirflowFailException(f"{missing} of {count} variant(s) have no image; see {index}")
        return index

    generate >> write_index(photos)
