"""Operator extra links: from a task to the images it stored, and from a catalog report to its gallery.

A task records its link in XCom while it runs (:meth:`S3Link.persist`, as the amazon
provider's console links do); Airflow shows it on the task instance from that XCom, during the
run and after it. On AWS the link opens the S3 console (which asks for a console login). For an
S3-compatible store (an AWS connection with ``endpoint_url``) it is the object's, or the
prefix's listing, URL at that endpoint: no signature is ever kept in a link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

# The console's domain in each AWS partition.
CONSOLE_DOMAINS = {"aws": "aws.amazon.com", "aws-cn": "amazonaws.cn", "aws-us-gov": "amazonaws-us-gov.com"}


def s3_url(
    bucket: str,
    *,
    key: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
    partition: str | None = None,
    endpoint_url: str | None = None,
) -> str:
    """
    Return where a person can look at an object (``key``) or at the objects under ``prefix``.

    :param bucket: the bucket.
    :param key: an object's key; without it, the link is to ``prefix``.
    :param prefix: a key prefix (a folder); the bucket's root when empty.
    :param region: the bucket's region, for the console.
    :param partition: the AWS partition (``aws``, ``aws-cn``, ``aws-us-gov``); default by region.
    :param endpoint_url: an S3-compatible store's endpoint: the link is then a URL at that endpoint.
    """
    folder = f"{prefix.strip('/')}/" if prefix and prefix.strip("/") else ""
    if endpoint_url:
        base = f"{endpoint_url.rstrip('/')}/{quote(bucket, safe='')}"
        if key is not None:
            return f"{base}/{quote(key)}"
        return f"{base}?" + urlencode({"list-type": "2", "prefix": folder})
    domain = CONSOLE_DOMAINS.get(partition or _partition(region), CONSOLE_DOMAINS["aws"])
    query = {"region": region} if region else {}
    if key is not None:
        return f"https://console.{domain}/s3/object/{quote(bucket, safe='')}?" + urlencode({**query, "prefix": key})
    return f"https://console.{domain}/s3/buckets/{quote(bucket, safe='')}?" + urlencode(
        {**query, "prefix": folder, "showversions": "false"}
    )


def hook_location(s3_hook: S3Hook) -> dict[str, str | None]:
    """The region, partition and (for an S3-compatible store) endpoint URL of an ``S3Hook``'s connection."""
    meta = s3_hook.conn.meta
    return {
        "region": meta.region_name,
        "partition": getattr(meta, "partition", None),
        "endpoint_url": s3_hook.conn_config.get_service_endpoint_url("s3"),
    }


def _partition(region: str | None) -> str:
    if region and region.startswith("cn-"):
        return "aws-cn"
    if region and region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


class S3Link(BaseOperatorLink):
    """A link to S3 that a task records in XCom (under :attr:`key`) while it runs."""

    name: ClassVar[str]
    key: ClassVar[str]

    @property
    def xcom_key(self) -> str:
        """The XCom the link is kept in; Airflow reads it from there to show the link."""
        return self.key

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The link the task instance recorded, or ``""`` when it recorded none."""
        from airflow.sdk.execution_time.xcom import XCom

        try:
            value = XCom.get_value(ti_key=ti_key, key=self.key)
        except Exception:
            return ""
        return value if isinstance(value, str) else ""

    @classmethod
    def persist(
        cls,
        context: Context,
        operator: BaseOperator,
        s3_hook: S3Hook,
        bucket: str,
        *,
        key: str | None = None,
        prefix: str | None = None,
    ) -> str | None:
        """
        Record the link to ``key`` (an object) or ``prefix`` (a folder) in ``bucket`` for the task instance.

        :return: the link, or ``None`` when the operator pushes no XCom or the location is unknown.
        """
        if not operator.do_xcom_push:
            return None
        try:
            url = s3_url(bucket, key=key, prefix=prefix, **hook_location(s3_hook))
        except Exception as error:  # a link is never worth failing a task that stored its images
            operator.log.warning("No %r link: %s", cls.name, error)
            return None
        context["ti"].xcom_push(key=cls.key, value=url)
        return url


class SeedreamImagesLink(S3Link):
    """From a generation task to the prefix its images are stored under."""

    name = "Images in S3"
    key = "seedream_images_link"


class CatalogGalleryLink(S3Link):
    """From a catalog report to the HTML gallery it wrote."""

    name = "Catalog gallery"
    key = "seedream_gallery_link"
