"""The operators of a catalog run: generate one chunk of a prepared catalog, and report on the run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_seedream.links import CatalogGalleryLink
from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

if TYPE_CHECKING:
    from airflow.sdk import Context


class CatalogChunkToS3Operator(SeedreamToS3Operator):
    """
    :class:`SeedreamToS3Operator` for one chunk of a prepared catalog: its prompts are read from S3 as it runs.

    Mapped over a plan's offsets, each task instance reads the products of its chunk (one
    ranged GET of the plan's ``prompts.jsonl``) and generates them as prompts keyed by product
    id: ``<s3_prefix>/<id>-<image:02d>.<ext>``. Only the plan's small reference travels through
    XCom; the prompts are never rendered by Airflow's Jinja (the catalog's sandboxed template
    already did).

    :param catalog_plan: what :func:`~airflow_provider_seedream.catalog.plan.prepare_catalog`
        returned (templated; usually its task's ``XComArg``).
    :param prompt_index_offset: the chunk's first product index, one of the plan's offsets.

    Every other argument is :class:`SeedreamToS3Operator`'s, except ``prompt``.
    """

    template_fields: Sequence[str] = (*SeedreamToS3Operator.template_fields, "catalog_plan")

    def __init__(self, *, catalog_plan: Any, prompt_index_offset: int, **kwargs: Any) -> None:
        kwargs.setdefault("prompt", [])
        super().__init__(prompt_index_offset=prompt_index_offset, **kwargs)
        self.catalog_plan = catalog_plan

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from airflow_provider_seedream.catalog.plan import CatalogPlan, chunk_prompts, load_chunk
        from airflow_provider_seedream.catalog.rows import CatalogError
        from airflow_provider_seedream.version_compat import AirflowFailException

        try:
            plan = CatalogPlan.from_xcom(self.catalog_plan)
            products = load_chunk(self.s3_hook.conn, plan, self.prompt_index_offset)
        except CatalogError as error:
            raise AirflowFailException(str(error)) from None
        self.prompt = chunk_prompts(products)
        self.log.info(
            "Products %d to %d of %s (%d in this chunk)",
            products[0]["index"],
            products[-1]["index"],
            plan.catalog,
            len(products),
        )
        return super().execute(context)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The operator's lineage, with the catalog the chunk's prompts come from as an input."""
        from airflow_provider_seedream.lineage import s3_datasets

        lineage = super().get_openlineage_facets_on_complete(task_instance)
        plan = self.catalog_plan
        catalog = plan.get("catalog") if isinstance(plan, dict) else getattr(plan, "catalog", None)
        lineage.inputs = [*s3_datasets([catalog] if catalog else []), *lineage.inputs]
        return lineage


class CatalogReportOperator(BaseOperator):
    """
    Write a catalog run's manifest and gallery; fail when any product has no valid image.

    It runs once every chunk is done, failed or not (give it a trigger rule such as
    ``all_done_min_one_success``). The records of each chunk that succeeded are read back from
    its task's XCom, one chunk at a time; the images of a chunk that did not succeed are looked
    for in S3. See :func:`~airflow_provider_seedream.catalog.report.write_report` for what the
    files hold. Its extra link, "Catalog gallery", opens the gallery.

    :param catalog_plan: what ``prepare_catalog`` returned (templated; usually an ``XComArg``).
    :param images_prefix: where the images are (templated).
    :param report_prefix: where ``manifest.jsonl`` and ``gallery.html`` go (templated).
    :param generate_task_id: the mapped generation task.
    :param gallery_max_images: thumbnails in the gallery (templated).
    :param aws_conn_id: the AWS connection.
    :param thumbnail_threads: images read at once for thumbnails.
    """

    template_fields: Sequence[str] = ("catalog_plan", "images_prefix", "report_prefix", "gallery_max_images")
    operator_extra_links = (CatalogGalleryLink(),)
    ui_color = "#e8e0f4"

    def __init__(
        self,
        *,
        catalog_plan: Any,
        images_prefix: str,
        report_prefix: str,
        generate_task_id: str = "generate_images",
        gallery_max_images: int | str = 500,
        aws_conn_id: str | None = "aws_default",
        thumbnail_threads: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.catalog_plan = catalog_plan
        self.images_prefix = images_prefix
        self.report_prefix = report_prefix
        self.generate_task_id = generate_task_id
        self.gallery_max_images = gallery_max_images
        self.aws_conn_id = aws_conn_id
        self.thumbnail_threads = thumbnail_threads

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_seedream.catalog.plan import CatalogPlan
        from airflow_provider_seedream.catalog.report import write_report
        from airflow_provider_seedream.mapped_results import mapped_results
        from airflow_provider_seedream.version_compat import AirflowFailException

        ti = context["ti"]
        plan = CatalogPlan.from_xcom(self.catalog_plan)
        hook = S3Hook(aws_conn_id=self.aws_conn_id)
        # What each chunk's task returned; a chunk that did not succeed pushed nothing.
        succeeded, records_of = mapped_results(ti, self.generate_task_id)
        failed = [chunk for chunk in range(plan.chunks) if chunk not in succeeded]

        dag_run = context.get("dag_run")
        report = write_report(
            hook.conn,
            plan,
            images_prefix=self.images_prefix,
            report_prefix=self.report_prefix,
            records_of=records_of,
            failed_chunks=failed,
            since=getattr(dag_run, "start_date", None),
            run_id=ti.run_id,
            gallery_max_images=int(self.gallery_max_images),
            threads=self.thumbnail_threads,
            log=self.log,
        )
        CatalogGalleryLink.persist(context, self, hook, report.bucket, key=report.gallery_key)
        self.log.info("Wrote %s and %s: %s", report.manifest, report.gallery, report.counts)
        if report.bad_lines or report.failed_chunks:
            raise AirflowFailException(
                f"{len(report.failed_chunks)} chunk(s) failed and {report.bad_lines} of {report.lines} manifest "
                f"line(s) have no valid image; the report lists each product's status: {report.manifest}"
            )
        return report.to_xcom()
