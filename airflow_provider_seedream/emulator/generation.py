"""What the emulated model does with a valid request: sizes, formats, images and the response body."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_seedream.emulator.images import EXTENSIONS, ImageCache, ImageRecord, tag_picture
from airflow_provider_seedream.emulator.painting import PictureSpec
from airflow_provider_seedream.emulator.signing import UrlSigner
from airflow_provider_seedream.validation import (
    ADAPTIVE_SIZE,
    MAX_IMAGES_RANGE,
    model_limits,
    parse_size,
    requested_image_count,
    without_nulls,
)

#: Sizes the presets stand for.
PRESET_SIZES = {
    "1K": (1024, 1024),
    "2K": (2048, 2048),
    "3K": (3072, 3072),
    "4K": (4096, 4096),
    ADAPTIVE_SIZE: (1024, 1024),
}
DEFAULT_SIZE = "2048x2048"
DEFAULT_OUTPUT_FORMAT = "jpeg"
#: The most images one group request renders.
MAX_GROUP_IMAGES = MAX_IMAGES_RANGE[1]
# Model families that ignore ``output_format`` and always answer JPEG.
_JPEG_ONLY = ("seedream-4", "seedream-3", "seededit-3")
FILES_PATH = "_emulator/files"


def resolve_size(body: Mapping[str, Any]) -> tuple[int, int]:
    """Return ``(width, height)`` for the request's ``size`` (a preset, ``WxH`` or the default).

    Seededit models default to ``adaptive``; other models to ``2048x2048``. ``null`` means absent.
    """
    size = body.get("size")
    if size is None:
        limits = model_limits(str(body.get("model", "")))
        size = ADAPTIVE_SIZE if limits is not None and limits.adaptive else DEFAULT_SIZE
    if size in PRESET_SIZES:
        return PRESET_SIZES[size]
    dims = parse_size(str(size))
    if dims is None:
        raise ValueError(f"size {size!r} is neither a preset nor WxH")
    return dims


def resolve_format(body: Mapping[str, Any]) -> str:
    """Return ``png`` or ``jpeg``: the request's ``output_format``, except JPEG for 3.x and 4.x models.

    A missing or ``null`` ``output_format`` means JPEG.
    """
    model = str(body.get("model", ""))
    if any(marker in model for marker in _JPEG_ONLY):
        return "jpeg"
    return str(body.get("output_format") or DEFAULT_OUTPUT_FORMAT)


def image_count(body: Mapping[str, Any]) -> int:
    """How many items the request gets: ``max_images`` in group mode, else 1.

    A group without ``max_images`` gets what the reference images leave of the limit of 15.
    ``null`` fields count as absent.
    """
    body = without_nulls(body)
    options = body.get("sequential_image_generation_options") or {}
    if body.get("sequential_image_generation") == "auto" and "max_images" not in options:
        image = body.get("image")
        references = 0 if image is None else 1 if isinstance(image, str) else len(image)
        return max(1, MAX_GROUP_IMAGES - references)
    return max(1, min(requested_image_count(body), MAX_GROUP_IMAGES))


def prompt_digest(prompt: str) -> str:
    """Return the hex sha256 of ``prompt``, kept instead of the prompt."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class GenerationPlan:
    """Everything decided about a request before its images are made.

    :param model: the model id to echo.
    :param prompt_sha256: hex sha256 of the prompt.
    :param width: image width.
    :param height: image height.
    :param fmt: ``png`` or ``jpeg``.
    :param count: the number of items in ``data``.
    :param failing: positions of items that fail moderation.
    :param response_format: ``url`` or ``b64_json``.
    :param request_id: the request's id.
    :param base_url: the emulator's base URL as the client used it, ending with ``/``.
    :param url_ttl: seconds the links stay valid.
    :param attempt: how many requests for the same model and prompt came before, plus one.
    :param caption: the prompt's first words, written on the images.
    """

    model: str
    prompt_sha256: str
    width: int
    height: int
    fmt: str
    count: int
    failing: frozenset[int]
    response_format: str
    request_id: str
    base_url: str
    url_ttl: float
    attempt: int = 1
    caption: str = ""

    @property
    def tokens_per_image(self) -> int:
        """Output tokens billed for each image made: about its pixels / 256."""
        return self.width * self.height // 256

    def usage(self, made: int) -> dict[str, int]:
        """Return the ``usage`` object for ``made`` images."""
        tokens = self.tokens_per_image * made
        return {"generated_images": made, "output_tokens": tokens, "total_tokens": tokens}


@dataclass(frozen=True)
class Item:
    """One item of a request: an image made, or a failure.

    :param index: its position in the request.
    :param data: the ``data[]`` entry: ``url`` or ``b64_json`` and ``size``, or ``error``.
    :param record: the image made (billed), or ``None`` for a failed item.
    :param created: unix time at which it was made.
    """

    index: int
    data: dict[str, Any]
    record: ImageRecord | None
    created: float


@dataclass(frozen=True)
class GenerationOutcome:
    """The result of :func:`produce`.

    :param body: the JSON response body, encoded.
    :param records: the images made (billed).
    :param item_errors: how many items failed.
    """

    body: bytes
    records: list[ImageRecord]
    item_errors: int


def make_item(
    plan: GenerationPlan, index: int, cache: ImageCache, signer: UrlSigner, created: float | None = None
) -> Item:
    """Make item ``index`` of the plan (blocking: run it in a worker thread).

    :param created: the unix time to stamp; now when not given.
    """
    created = time.time() if created is None else created
    if index in plan.failing:
        error = {
            "code": "OutputImageSensitiveContentDetected",
            "message": "The generated image may contain sensitive information and was withheld. "
            f"Request id: {plan.request_id}",
        }
        return Item(index, {"error": error}, None, created)
    spec = PictureSpec(plan.width, plan.height, plan.fmt, plan.prompt_sha256, index, plan.caption)
    picture = cache.picture(spec)
    image_id = secrets.token_hex(12)
    tag, digest, length = tag_picture(picture, plan.fmt, id=image_id, request=plan.request_id, index=index)
    file_name = f"{image_id}.{EXTENSIONS[plan.fmt]}"
    query = signer.query(file_name, created, plan.url_ttl)
    record = ImageRecord(
        image_id=image_id,
        spec=spec,
        cache=cache,
        tag=tag,
        sha256=digest,
        length=length,
        created=created,
        request_id=plan.request_id,
        index=index,
        query=query,
        expires_at=created + plan.url_ttl,
        draw_key=f"{plan.model}\x1f{plan.prompt_sha256}\x1f{plan.attempt}\x1f{index}",
    )
    if plan.response_format == "b64_json":
        parts = picture.with_tag(tag)
        data = {"b64_json": base64.b64encode(b"".join(parts)).decode("ascii"), "size": spec.size}
    else:
        data = {"url": f"{plan.base_url}{FILES_PATH}/{file_name}?{query}", "size": spec.size}
    return Item(index, data, record, created)


def produce(plan: GenerationPlan, cache: ImageCache, signer: UrlSigner) -> GenerationOutcome:
    """Make all the plan's items and the response body (blocking: run it in a worker thread)."""
    created = time.time()
    items = [make_item(plan, index, cache, signer, created) for index in range(plan.count)]
    records = [item.record for item in items if item.record is not None]
    body = {
        "created": int(created),
        "model": plan.model,
        "data": [item.data for item in items],
        "usage": plan.usage(len(records)),
    }
    return GenerationOutcome(
        body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        records=records,
        item_errors=plan.count - len(records),
    )
