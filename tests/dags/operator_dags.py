"""DAGs the operator tests run with dag.test(); their inputs come from params (run conf)."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

FAST_RETRIES = {"retry_min_wait": 0.01, "retry_max_wait": 0.05, "max_retries": 5, "timeout": 5.0}
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


for dag_id, replace, transport in (
    ("seedream_test_batch", False, "data_uri"),
    ("seedream_test_replace", True, "data_uri"),
    ("seedream_test_presigned", False, "presigned_url"),
):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        render_template_as_native_obj=True,
        params={
            "prompts": ["a red apple"],
            "bucket": "images",
            "prefix": "batch",
            "size": "2K",
            "extra": {},
            "image": None,
        },
    ):
        SeedreamToS3Operator(
            task_id="generate",
            prompt="{{ params.prompts }}",
            s3_bucket="{{ params.bucket }}",
            s3_prefix="{{ params.prefix }}",
            size="{{ params.size }}",
            image="{{ params.image }}",
            extra_parameters="{{ params.extra }}",
            replace=replace,
            reference_transport=transport,
            max_concurrency=4,
            hook_params=FAST_RETRIES,
            retries=0,
        )

with DAG(
    dag_id="seedream_test_templated",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"style": "watercolour", "bucket": "images"},
):
    SeedreamToS3Operator(
        task_id="banner",
        prompt=["a {{ params.style }} banner for {{ ds }}", "prompts/product.j2"],
        s3_bucket="{{ params.bucket }}",
        s3_prefix="banners/{{ ds }}",
        size="2K",
        watermark=False,
        output_format="png",
        hook_params=FAST_RETRIES,
    )

with DAG(
    dag_id="seedream_test_mapped",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"bucket": "images", "products": ["mug", "lamp", "chair"]},
):

    @task
    def product_prompts(params=None) -> list[str]:
        return [f"a studio photo of a {name}" for name in params["products"]]

    prompts = product_prompts()
    SeedreamToS3Operator.partial(
        task_id="per_product",
        s3_bucket="{{ params.bucket }}",
        s3_prefix="mapped",
        size="2K",
        hook_params=FAST_RETRIES,
    ).expand(prompt=prompts)

    SeedreamToS3Operator(
        task_id="from_xcom",
        prompt=prompts,
        s3_bucket="{{ params.bucket }}",
        s3_prefix="from-xcom",
        size="2K",
        hook_params=FAST_RETRIES,
    )
