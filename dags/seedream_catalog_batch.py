"""
Catalog batch: one generated image per product of a catalog stored in S3.

``load_catalog`` reads the catalog (JSON Lines or CSV) and renders one prompt per product from
a Jinja template; ``plan_chunks`` cuts the prompts into chunks. ``generate_images`` is mapped
over the chunks: each mapped task instance sends the prompts of one chunk (``max_concurrency`` at a
time) and stores the images at ``<images_prefix>/<product id>-<image:02d>.jpg``. Keys depend on
the product's id alone: inserting, removing or reordering rows regenerates nothing unchanged,
and a rerun of an unchanged product costs nothing. The ``seedream_api`` pool
bounds how many chunks run at once (each chunk sends up to ``MAX_CONCURRENCY`` requests).

``write_report`` runs even when some chunks failed: it writes a JSON Lines manifest (product id,
prompt, key, sha256, status, billed images) and a self-contained HTML gallery of thumbnails
under ``report_prefix``, then fails the run if any product has no image.

Trigger it with a run configuration to point at your catalog::

    airflow dags test seedream_catalog_batch -c '{"bucket": "my-bucket", "catalog_key": "catalogs/spring.csv"}'
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, task

from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

# Deployment settings, read when the file is parsed; everything per run is a param.
BUCKET = os.environ.get("SEEDREAM_BUCKET", "seedream-demo")
SEEDREAM_CONN_ID = os.environ.get("SEEDREAM_CONN_ID", "seedream_default")
AWS_CONN_ID = os.environ.get("SEEDREAM_AWS_CONN_ID", "aws_default")
# Task-level retries; the hook already retries rate limits, 5xx and broken connections itself.
TASK_RETRIES = int(os.environ.get("SEEDREAM_TASK_RETRIES", "2"))
POOL = os.environ.get("SEEDREAM_POOL", "seedream_api")
# Requests in flight per mapped task instance; the pool's slots times this bounds the total.
MAX_CONCURRENCY = 4
REPORT_THREADS = 8

DEFAULT_PROMPT_TEMPLATE = (
    "A clean e-commerce studio photo of the {{ product.name }}, a {{ product.colour }} "
    "{{ product.material }} item from our {{ product.category | lower }} range, centred on a "
    "seamless light-grey background, soft diffused light, gentle shadow, no text"
)
KEY_PATTERN = r"^(?P<id>.+)-(?P<image>\d{2,})\.(?:jpe?g|png)$"


def parse_catalog(text: str, fmt: str, id_field: str) -> list[dict[str, Any]]:
    """
    Parse a catalog into a list of products, in file order.

    :param text: the catalog's content.
    :param fmt: ``jsonl`` (one JSON object per line) or ``csv`` (a header line, then rows).
    :param id_field: the column holding each product's unique id.
    :raises ValueError: a line is not an object, a product has no id, an id repeats, or an id
        cannot be part of an S3 key.
    """
    import csv
    import io
    import json

    from airflow_provider_seedream.storage import check_stem

    if fmt == "csv":
        products = [dict(row) for row in csv.DictReader(io.StringIO(text))]
    elif fmt == "jsonl":
        products = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError(f"catalog line {number} is not a JSON object")
            products.append(item)
    else:
        raise ValueError(f"catalog format must be 'jsonl' or 'csv', got {fmt!r}")
    seen: set[str] = set()
    for position, product in enumerate(products):
        product_id = str(product.get(id_field) or "").strip()
        if not product_id:
            raise ValueError(f"catalog product {position} has no {id_field!r}")
        if product_id in seen:
            raise ValueError(f"catalog id {product_id!r} appears more than once")
        problem = check_stem(product_id)
        if problem:
            raise ValueError(f"catalog product {position}: its {id_field!r} {product_id!r} is the key of its images and {problem}")
        seen.add(product_id)
    return products


def catalog_format(key: str, fmt: str) -> str:
    """The catalog's format: ``fmt`` unless it is ``auto``, then by the key's extension."""
    if fmt != "auto":
        return fmt
    return "csv" if key.lower().endswith((".csv", ".csv.gz")) else "jsonl"


def render_prompts(products: Sequence[Mapping[str, Any]], template: str, id_field: str = "id") -> list[str]:
    """
    Render ``template`` once per product (a sandboxed Jinja template; ``product`` is the row).

    :raises ValueError: the template names a field a product does not have, or renders empty.
    """
    from jinja2 import StrictUndefined, UndefinedError
    from jinja2.sandbox import SandboxedEnvironment

    compiled = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(template)
    prompts = []
    for product in products:
        try:
            text = " ".join(compiled.render(product=product).split())
        except UndefinedError as error:
            raise ValueError(f"prompt template for product {product.get(id_field)!r}: {error}") from None
        if not text:
            raise ValueError(f"prompt template rendered an empty prompt for product {product.get(id_field)!r}")
        prompts.append(text)
    return prompts


def chunk_arguments(products: Sequence[Mapping[str, Any]], chunk_size: int) -> list[dict[str, Any]]:
    """Cut the products into the keyword arguments of one mapped task instance per chunk.

    Each prompt carries its product's id as ``key``; the chunk's start is its
    ``prompt_index_offset``, so records and the report line up with the catalog's rows.
    """
    return [
        {
            "prompt": [{"prompt": product["prompt"], "key": product["id"]} for product in products[start : start + chunk_size]],
            "prompt_index_offset": start,
        }
        for start in range(0, len(products), chunk_size)
    ]


def images_in_s3(
    client: Any, bucket: str, images_prefix: str, wanted: Mapping[str, int], since: datetime.datetime
) -> dict[int, list[dict[str, Any]]]:
    """
    Find the stored images of the ``wanted`` products (by id, with their index), for a report.

    An object written since ``since`` (the run's start) was generated, and paid for, by this
    run: its status is ``stored``. An older one may be an image reused for the same prompt or
    one left from a different prompt: its status is ``unverified``.

    :param client: a boto3 S3 client.
    :return: by product index, the fields of a manifest line for each image found.
    """
    import re

    from airflow_provider_seedream.gallery import STATUS_STORED, STATUS_UNVERIFIED
    from airflow_provider_seedream.storage import META_MODEL, META_SHA256, META_SIZE

    pattern = re.compile(KEY_PATTERN)
    found: dict[int, list[dict[str, Any]]] = {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{images_prefix}/" if images_prefix else ""
    )
    folder = f"{images_prefix}/" if images_prefix else ""
    for page in pages:
        for item in page.get("Contents", []):
            match = pattern.match(item["Key"][len(folder) :])
            if not match or match["id"] not in wanted:
                continue
            head = client.head_object(Bucket=bucket, Key=item["Key"])
            metadata = head.get("Metadata", {})
            this_run = head["LastModified"] >= since
            found.setdefault(wanted[match["id"]], []).append(
                {
                    "status": STATUS_STORED if this_run else STATUS_UNVERIFIED,
                    "billed_images": 1 if this_run else None,
                    "s3_uri": f"s3://{bucket}/{item['Key']}",
                    "bucket": bucket,
                    "key": item["Key"],
                    "image_index": int(match["image"]),
                    "sha256": metadata.get(META_SHA256),
                    "bytes": head.get("ContentLength"),
                    "content_type": head.get("ContentType"),
                    "model": metadata.get(META_MODEL),
                    "size": metadata.get(META_SIZE),
                    "last_modified": head["LastModified"].isoformat(),
                }
            )
    return found


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
            "catalogs/catalog_sample.jsonl", type="string", description="The catalog's key: JSON Lines or CSV."
        ),
        "catalog_format": Param("auto", enum=["auto", "jsonl", "csv"], description="auto: by the key's extension."),
        "id_field": Param("id", type="string", description="The column holding each product's unique id."),
        "prompt_template": Param(
            DEFAULT_PROMPT_TEMPLATE, type="string", description="Jinja template of a prompt; `product` is the row."
        ),
        "images_prefix": Param("catalog/images", type="string", description="Where the images go."),
        "report_prefix": Param("catalog/review", type="string", description="Where manifest.jsonl, gallery.html go."),
        "size": Param("2K", type="string", description="1K, 2K, 3K, 4K or WxH (at least 3,686,400 pixels for 5.0)."),
        "chunk_size": Param(50, type="integer", minimum=1, maximum=1000, description="Products per mapped task."),
        "max_products": Param(0, type="integer", minimum=0, description="Only the first N products (0: all)."),
        "gallery_max_images": Param(500, type="integer", minimum=0, description="Thumbnails in the gallery."),
    },
):

    @task
    def load_catalog(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Read the catalog and render one prompt per product."""
        import logging

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk.exceptions import AirflowFailException

        log = logging.getLogger(__name__)
        assert params is not None
        key = params["catalog_key"]
        hook = S3Hook(aws_conn_id=AWS_CONN_ID)
        # A wrong catalog or a bad row fails the same way on every try: no retry, no request sent.
        if not hook.check_for_key(key, bucket_name=params["bucket"]):
            raise AirflowFailException(f"catalog_key: s3://{params['bucket']}/{key} does not exist")
        try:
            text = hook.read_key(key, bucket_name=params["bucket"])
            products = parse_catalog(text, catalog_format(key, params["catalog_format"]), params["id_field"])
            if params["max_products"]:
                products = products[: params["max_products"]]
            if not products:
                raise ValueError(f"catalog_key: s3://{params['bucket']}/{key} holds no product")
            prompts = render_prompts(products, params["prompt_template"], params["id_field"])
        except ValueError as error:
            raise AirflowFailException(str(error)) from None
        log.info("Catalog s3://%s/%s: %d products", params["bucket"], key, len(products))
        return [
            {
                "index": index,
                "chunk": index // params["chunk_size"],
                "id": str(product[params["id_field"]]),
                "name": product.get("name"),
                "category": product.get("category"),
                "prompt": prompt,
            }
            for index, (product, prompt) in enumerate(zip(products, prompts))
        ]

    @task
    def plan_chunks(products: list[dict[str, Any]], params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Cut the prompts into one set of operator arguments per chunk."""
        assert params is not None
        return chunk_arguments(products, params["chunk_size"])

    products = load_catalog()

    generate = SeedreamToS3Operator.partial(
        task_id="generate_images",
        s3_bucket="{{ params.bucket }}",
        s3_prefix="{{ params.images_prefix }}",
        size="{{ params.size }}",
        seedream_conn_id=SEEDREAM_CONN_ID,
        aws_conn_id=AWS_CONN_ID,
        max_concurrency=MAX_CONCURRENCY,
        pool=POOL,
        retries=TASK_RETRIES,
        retry_delay=datetime.timedelta(minutes=1),
        map_index_template="products {{ task.prompt_index_offset }}+{{ task.prompt | length }}",
    ).expand_kwargs(plan_chunks(products))

    # Runs once every chunk is done, failed or not; skipped only when nothing upstream succeeded.
    @task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS, retries=0)
    def write_report(
        products: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        dag_run: Any = None,
        ti: Any = None,
    ) -> dict[str, Any]:
        """Write the manifest and the gallery, then fail if any product has no image."""
        import datetime as dt
        import hashlib
        import logging
        from concurrent.futures import ThreadPoolExecutor

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_seedream import gallery

        log = logging.getLogger(__name__)
        assert params is not None
        bucket = params["bucket"]
        images_prefix = params["images_prefix"].strip("/")
        report_prefix = params["report_prefix"].strip("/")
        client = S3Hook(aws_conn_id=AWS_CONN_ID).conn

        # What each chunk's task returned; a chunk that did not succeed pushed nothing.
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=["generate_images"], run_ids=[ti.run_id])
        states = states.get(ti.run_id, {})
        records: list[dict[str, Any]] = []
        failed_chunks = set()
        for chunk in sorted({product["chunk"] for product in products}):
            if states.get(f"generate_images_{chunk}") == "success":
                records.extend(ti.xcom_pull(task_ids="generate_images", map_indexes=chunk) or [])
            else:
                failed_chunks.add(chunk)

        # For the products of failed chunks, what is in S3: written by this run, or older.
        found: dict[int, list[dict[str, Any]]] = {}
        if failed_chunks:
            wanted = {product["id"]: product["index"] for product in products if product["chunk"] in failed_chunks}
            since = dag_run.start_date.replace(microsecond=0) - dt.timedelta(seconds=1)
            found = images_in_s3(client, bucket, images_prefix, wanted, since)
        rows = gallery.build_manifest(products, records, found)

        # Thumbnails, checked against the manifest's sha256 as they are read.
        gallery_key = f"{report_prefix}/gallery.html" if report_prefix else "gallery.html"
        shown = [row for row in rows if row.get("key")][: params["gallery_max_images"]]

        def thumbnail(row: dict[str, Any]) -> tuple[str, str]:
            data = client.get_object(Bucket=bucket, Key=row["key"])["Body"].read()
            if row.get("sha256") and hashlib.sha256(data).hexdigest() != row["sha256"]:
                row["status"] = gallery.STATUS_MISMATCH
            try:
                return row["key"], gallery.thumbnail_data_uri(data)
            except ImportError:  # no Pillow on this worker: link to the image in the bucket instead
                return row["key"], gallery.relative_href(gallery_key, row["key"])
            except Exception as error:  # an image Pillow cannot read is listed, not shown
                log.warning("No thumbnail for %s: %s", row["key"], error)
                return row["key"], gallery.relative_href(gallery_key, row["key"])

        with ThreadPoolExecutor(max_workers=REPORT_THREADS) as pool:
            images = dict(pool.map(thumbnail, shown))

        counts = gallery.count_statuses(rows)
        page = gallery.render_gallery(
            rows,
            images,
            title=f"Catalog images: s3://{bucket}/{images_prefix}",
            subtitle=f"Run {dag_run.run_id}; catalog s3://{bucket}/{params['catalog_key']}; "
            f"{len(products)} products; {len(images)} of {sum(1 for row in rows if row.get('key'))} images shown",
        )
        manifest_key = f"{report_prefix}/manifest.jsonl" if report_prefix else "manifest.jsonl"
        client.put_object(
            Bucket=bucket, Key=manifest_key, Body=gallery.to_jsonl(rows), ContentType="application/x-ndjson"
        )
        client.put_object(
            Bucket=bucket, Key=gallery_key, Body=page.encode("utf-8"), ContentType="text/html; charset=utf-8"
        )
        result = {
            "manifest": f"s3://{bucket}/{manifest_key}",
            "gallery": f"s3://{bucket}/{gallery_key}",
            "products": len(products),
            "counts": counts,
        }
        log.info("Wrote %s and %s: %s", result["manifest"], result["gallery"], counts)
        bad = counts[gallery.STATUS_FAILED] + counts[gallery.STATUS_MISMATCH]
        if bad or failed_chunks:
            raise AirflowFailException(
                f"{len(failed_chunks)} chunk(s) failed and {bad} of {len(rows)} manifest line(s) have no valid "
                f"image; the report lists each product's status: {result['manifest']}"
            )
        return result

    generate >> write_report(products)
