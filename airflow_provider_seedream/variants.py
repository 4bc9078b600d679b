"""Image-to-image variants of product photos in S3: the plan of prompts per photo, and its index.

:func:`plan_variants` lists the photos directly under a prefix and returns one set of
``SeedreamToS3Operator`` arguments per photo (for ``expand_kwargs``): a prompt per variant,
each sending the photo as its reference image, under the photo's own prefix.
:func:`write_variants_index` writes which key holds which variant of which photo.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
INDEX_NAME = "index.json"


def photo_stem(key: str, taken: set[str]) -> str:
    """The folder name of a photo's variants: its file name without extension, made unique."""
    name = key.rpartition("/")[2]
    stem, dot, extension = name.rpartition(".")
    stem = stem if dot else name
    if stem in taken:
        stem = f"{stem}-{extension}"
    taken.add(stem)
    return stem


def variant_arguments(
    bucket: str,
    photo_keys: Sequence[str],
    variants: Sequence[Mapping[str, str]],
    instruction: str,
    variants_prefix: str,
) -> list[dict[str, Any]]:
    """The operator arguments of one mapped task instance per photo: its prompts and its prefix."""
    taken: set[str] = set()
    return [
        {
            "prompt": [
                {"prompt": f"{instruction} {variant['prompt']}".strip(), "image": f"s3://{bucket}/{key}"}
                for variant in variants
            ],
            "s3_prefix": f"{variants_prefix.strip('/')}/{photo_stem(key, taken)}",
        }
        for key in photo_keys
    ]


def plan_variants(
    s3_hook: Any,
    bucket: str,
    source_prefix: str,
    variants: Sequence[Mapping[str, str]],
    instruction: str,
    variants_prefix: str,
    max_photos: int = 0,
) -> list[dict[str, Any]]:
    """
    List the photos directly under ``source_prefix`` (not the folders below) and plan their variants.

    :param s3_hook: the amazon provider's ``S3Hook``.
    :raises AirflowFailException: there is no photo there (a retry would find none either).
    """
    from airflow_provider_seedream.version_compat import AirflowFailException

    prefix = source_prefix.strip("/")
    prefix = f"{prefix}/" if prefix else ""
    keys = s3_hook.list_keys(bucket_name=bucket, prefix=prefix, delimiter="/")
    photos = sorted(key for key in keys if key.lower().endswith(PHOTO_EXTENSIONS))
    if max_photos:
        photos = photos[:max_photos]
    if not photos:
        raise AirflowFailException(
            f"source_prefix: no photo ({', '.join(PHOTO_EXTENSIONS)}) directly under s3://{bucket}/{prefix}"
        )
    return variant_arguments(bucket, photos, variants, instruction, variants_prefix)


def write_variants_index(
    s3_hook: Any,
    bucket: str,
    variants_prefix: str,
    variants: Sequence[Mapping[str, str]],
    planned: Sequence[Mapping[str, Any]],
    records_of: Callable[[int], Sequence[Mapping[str, Any]] | None],
) -> tuple[str, int, int]:
    """
    Write ``<variants_prefix>/index.json``: for each photo and variant, its prompt, keys and status.

    :param planned: what :func:`plan_variants` returned, one item per mapped task.
    :param records_of: the records a mapped task returned, by map index (``None`` if it failed).
    :return: the index's key, how many variants, how many have no image.
    """
    import json

    entries = []
    for map_index, arguments in enumerate(planned):
        by_prompt: dict[int, list[str]] = {}
        for record in records_of(map_index) or []:
            by_prompt.setdefault(int(record["prompt_index"]), []).append(record["key"])
        for position, (variant, item) in enumerate(zip(variants, arguments["prompt"], strict=True)):
            keys = by_prompt.get(position, [])
            entries.append(
                {
                    "photo": item["image"],
                    "variant": variant["name"],
                    "prompt": item["prompt"],
                    "keys": keys,
                    "status": "stored" if keys else "failed",
                }
            )
    key = f"{variants_prefix.strip('/')}/{INDEX_NAME}"
    s3_hook.load_string(json.dumps({"variants": entries}, indent=2), key=key, bucket_name=bucket, replace=True)
    return key, len(entries), sum(1 for entry in entries if not entry["keys"])
