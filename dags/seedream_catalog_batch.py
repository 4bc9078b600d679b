"""
Catalog batch: one generated image per product of a catalog stored in S3.

``load_catalog`` streams the catalog (JSON Lines or CSV, gzip or not), renders one prompt per
product from a sandboxed Jinja template and writes them to S3 in chunks; a missing or repeated
id, a missing field or an empty prompt fails it, naming the row, before anything is paid for.
``generate_images`` is mapped over the chunks: each task instance reads its chunk and stores the
images at ``<images_prefix>/<product id>-<image:02d>.jpg``. Keys depend on the product's id
alone: inserting, removing or reordering rows regenerates nothing unchanged, and a rerun of an
unchanged product costs nothing. Only small references travel through XCom. The ``seedream_api``
pool bounds how many chunks run at once (each sends up to ``MAX_CONCURRENCY`` requests).

``write_report`` runs even when some chunks failed: it writes a JSON Lines manifest (product id,
prompt, key, sha256, status, billed images) and an HTML gallery (its "Catalog gallery" link)
under ``report_prefix``, then fails the run if any product has no image.

Trigger it with a run configuration to point at your catalog::

    airflow dags test seedream_catalog_batch -c '{"bucket": "my-bucket", "catalog_key": "catalogs/spring.csv"}'
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, task

from airflow_provider_seedream.catalog import DEFAULT_PROMPT_TEMPLATE
from airflow_provider_seedream.catalog.operators import CatalogChunkToS3Operator, CatalogReportOperator

# Deployment settings, read when the file is parsed; everything per run is a param.
BUCKET = os.environ.get("SEEDREAM_BUCKET", "seedream-demo")
SEEDREAM_CONN_ID = os.environ.get("SEEDREAM_CONN_ID", "seedream_default")
AWS_CONN_ID = os.environ.get("SEEDREAM_AWS_CONN_ID", "aws_default")
# Task-level retries; the hook already retries rate limits, 5xx and broken connections itself.
TASK_RETRIES = int(os.environ.get("SEEDREAM_TASK_RETRIES", "2"))
POOL = os.environ.get("SEEDREAM_POOL", "seedream_api")
# Requests in flight per mapped task instance; the pool's slots times this bounds the total.
MAX_CONCURRENCY = int(os.environ.get("SEEDREAM_MAX_CONCURRENCY", "4"))

with DAG(
    dag_id="seedream_catalog_batch",
    description="One generated product image per catalog row, fanned out in chunks, with a manifest and a gallery",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["seedream", "example"],
    params={
        "bucket": Param(BUCKET, type="string", minLength=3, description="The bucket of catalog, images and report."),
        "catalog_key": Param(
            "catalogs/catalog_sample.jsonl", type="string", description="The catalog's key: JSON Lines or CSV, or .gz."
        ),
        "catalog_format": Param("auto", enum=["auto", "jsonl", "csv"], description="auto: by the key's extension."),
        "id_field": Param("id", type="string", description="The column holding each product's unique id."),
        "prompt_template": Param(
            DEFAULT_PROMPT_TEMPLATE, type="string", description="Jinja template of a prompt; `product` is the row."
        ),
        "images_prefix": Param("catalog/images", type="string", description="Where the images go."),
        "report_prefix": Param("catalog/review", type="string", description="Where manifest.jsonl, gallery.html go."),
        "size": Param("2K", type="string", description="A preset the model takes (5.0 Lite: 2K, 3K, 4K) or WxH."),
        "chunk_size": Param(
            50,
            type="integer",
            minimum=1,
            maximum=1000,
            description="Products per mapped task; each adds ~0.74 KB of XCom (keep <= 80 with the default backend).",
        ),
        "max_products": Param(0, type="integer", minimum=0, description="Only the first N products (0: all)."),
        "gallery_max_images": Param(500, type="integer", minimum=0, description="Thumbnails in the gallery."),
    },
):

    @task(multiple_outputs=False)
    def load_catalog(params: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
        """Check the catalog and write its prompts to S3 in chunks; return where they are (a small plan)."""
        from airflow_provider_seedream.catalog import prepare_catalog, run_folder

        assert params is not None and run_id is not None
        names = ("bucket", "catalog_key", "catalog_format", "id_field", "prompt_template", "chunk_size", "max_products")
        work_prefix = run_folder(params["report_prefix"], run_id)
        arguments = {name: params[name] for name in names}
        return prepare_catalog(**arguments, work_prefix=work_prefix, aws_conn_id=AWS_CONN_ID)

    @task
    def plan_chunks(plan: dict[str, Any]) -> list[int]:
        """The first product of each chunk: one mapped task instance per chunk."""
        return list(range(0, plan["products"], plan["chunk_size"]))

    plan = load_catalog()

    generate = CatalogChunkToS3Operator.partial(
        task_id="generate_images",
        catalog_plan=plan,
        s3_bucket="{{ params.bucket }}",
        s3_prefix="{{ params.images_prefix }}",
        size="{{ params.size }}",
        seedream_conn_id=SEEDREAM_CONN_ID,
        aws_conn_id=AWS_CONN_ID,
        max_concurrency=MAX_CONCURRENCY,
        adaptive_concurrency=os.environ.get("SEEDREAM_ADAPTIVE_CONCURRENCY", "true"),
        pool=POOL,
        retries=TASK_RETRIES,
        retry_delay=datetime.timedelta(minutes=1),
        map_index_template="products {{ task.prompt_index_offset }}+{{ task.prompt | length }}",
    ).expand(prompt_index_offset=plan_chunks(plan))

    # Runs once every chunk is done, failed or not; skipped only when nothing upstream succeeded.
    generate >> CatalogReportOperator(
        task_id="write_report",
        catalog_plan=plan,
        images_prefix="{{ params.images_prefix }}",
        report_prefix="{{ params.report_prefix }}",
        gallery_max_images="{{ params.gallery_max_images }}",
        aws_conn_id=AWS_CONN_ID,
        trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
        retries=0,
    )
