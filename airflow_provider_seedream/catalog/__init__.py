"""
Catalogs: one generated image per product of a catalog in S3, fanned out over mapped tasks.

A catalog run has three steps, each a piece of this package:

1. :func:`prepare_catalog` (``plan.py``) streams the catalog (JSON Lines or CSV, gzip or not:
   ``rows.py``), renders one prompt per row from a sandboxed Jinja template with strict
   undefined names (``prompts.py``), refuses a missing id, a repeated id, a missing field or
   an empty prompt naming the row's line and id, and writes the products to S3 in chunks. It
   returns a small :class:`CatalogPlan` for XCom: where the prompts are, never the prompts.
2. :class:`~airflow_provider_seedream.catalog.operators.CatalogChunkToS3Operator`, mapped over
   ``CatalogPlan.offsets``, reads its chunk and generates each product's image at
   ``<images_prefix>/<product id>-<image:02d>.<ext>``, returning its records.
3. :class:`~airflow_provider_seedream.catalog.operators.CatalogReportOperator` (``report.py``)
   writes the JSON Lines manifest and the HTML gallery, reading the records back chunk by chunk.

Only the standard library is imported here: DAG files may import this package at parse time.
"""

from __future__ import annotations

from airflow_provider_seedream.catalog.plan import (
    CatalogPlan,
    chunk_prompts,
    iter_products,
    load_chunk,
    prepare_catalog,
    run_folder,
)
from airflow_provider_seedream.catalog.prompts import DEFAULT_PROMPT_TEMPLATE, PromptTemplate, product_id
from airflow_provider_seedream.catalog.report import CatalogReport, images_in_s3, write_report
from airflow_provider_seedream.catalog.rows import CatalogError, catalog_format, open_catalog, read_rows

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "CatalogError",
    "CatalogPlan",
    "CatalogReport",
    "PromptTemplate",
    "catalog_format",
    "chunk_prompts",
    "images_in_s3",
    "iter_products",
    "load_chunk",
    "open_catalog",
    "prepare_catalog",
    "product_id",
    "read_rows",
    "run_folder",
    "write_report",
]
