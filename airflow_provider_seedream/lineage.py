"""OpenLineage datasets of a generation task: the images it wrote (outputs) and the S3 references it read (inputs).

Names follow the S3 conventions the amazon provider's operators use: namespace
``s3://<bucket>``, name the object's key, or the prefix when it stands for many objects.
Nothing here imports the OpenLineage provider until lineage is asked for, so the package
works without it installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_provider_seedream.references import split_s3_uri

# A task that stored more images than this is one output dataset: their prefix.
LINEAGE_OBJECT_LIMIT = 100


def output_names(prefix: str | None, keys: Sequence[str], limit: int = LINEAGE_OBJECT_LIMIT) -> list[str]:
    """The names of the output datasets: each key when there are at most ``limit``, else the prefix."""
    unique = list(dict.fromkeys(keys))
    if len(unique) <= limit:
        return unique
    return [(prefix or "").strip("/") or "/"]


def s3_references(image: Any, prompts: Any) -> list[str]:
    """
    The ``s3://`` reference images an operator reads: its ``image`` argument and each prompt's ``image``.

    :param image: the operator's ``image`` (one reference or a list).
    :param prompts: the operator's ``prompt`` (a prompt, a mapping, or a list of either).
    """
    found = list(_s3_strings(image))
    items = prompts if isinstance(prompts, (list, tuple)) else [prompts]
    for item in items:
        if isinstance(item, Mapping):
            found.extend(_s3_strings(item.get("image")))
    return list(dict.fromkeys(found))


def operator_lineage(
    bucket: str,
    prefix: str | None,
    keys: Sequence[str],
    references: Iterable[str] = (),
    inputs: Iterable[str] = (),
) -> Any:
    """
    Return the OpenLineage ``OperatorLineage`` of a generation task.

    :param bucket: the bucket the images went to.
    :param prefix: their prefix.
    :param keys: the keys of the images stored (generated or reused); none when the task
        stored nothing.
    :param references: ``s3://`` URIs of the reference images read.
    :param inputs: other ``s3://`` URIs the task read (a catalog...).
    """
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=s3_datasets([*inputs, *references]),
        outputs=[Dataset(namespace=f"s3://{bucket}", name=name) for name in output_names(prefix, keys)],
    )


def s3_datasets(uris: Iterable[str]) -> list[Any]:
    """One OpenLineage ``Dataset`` per distinct ``s3://bucket/key`` URI (other URIs are left out)."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    read = [split_s3_uri(uri) for uri in dict.fromkeys(uris) if isinstance(uri, str) and uri.startswith("s3://")]
    return [Dataset(namespace=f"s3://{bucket}", name=key or "/") for bucket, key in read]


def _s3_strings(value: Any) -> Iterable[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [item for item in values if isinstance(item, str) and item.startswith("s3://")]
