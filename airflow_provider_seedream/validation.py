"""Checks of a generation request body, run before any money is spent.

The same checks run in the hook (before sending) and in the emulator (as the
service would answer). Unknown models get only the generic checks; unknown
fields pass through untouched. A field set to JSON ``null`` counts as absent, as
the service treats it: clients such as VolcEngine's Ark SDK send every unset
field as ``null``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_seedream.exceptions import SeedreamValidationError

DEFAULT_MODEL = "doubao-seedream-5-0-260128"
#: Model ids the services document (Ark, BytePlus ModelArk, CometAPI): what the emulator lists at
#: ``GET /v1/models``. Any other id is still sent, with the generic checks.
KNOWN_MODELS = (
    "doubao-seedream-5-0-pro-260628",
    "doubao-seedream-5-0-260128",
    "doubao-seedream-5-0-lite-260128",
    "seedream-5-0-260128",
    "doubao-seedream-4-5-251128",
    "seedream-4-5-251128",
    "doubao-seedream-4-0-250828",
    "seedream-4-0-250828",
    "bytedance-seedream-4-0-250828",
    "doubao-seedream-3-0-t2i-250415",
    "doubao-seededit-3-0-i2i-250628",
)
SIZE_PRESETS = ("1K", "2K", "3K", "4K")
ADAPTIVE_SIZE = "adaptive"
RESPONSE_FORMATS = ("url", "b64_json")
OUTPUT_FORMATS = ("png", "jpeg")
SEQUENTIAL_MODES = ("auto", "disabled")
OPTIMIZE_MODES = ("standard", "fast")
REFERENCE_FORMATS = ("jpeg", "jpg", "png", "webp", "bmp", "tiff", "gif", "heic", "heif")
MAX_REFERENCE_IMAGES = 14
MAX_TOTAL_IMAGES = 15
MAX_IMAGES_RANGE = (1, 15)
GUIDANCE_RANGE = (1.0, 10.0)
SEED_RANGE = (-1, 2_147_483_647)
MAX_REFERENCE_BYTES = 30 * 1024 * 1024
MAX_ASPECT_RATIO = 16.0
PROMPT_RECOMMENDED_CHARS = 1000
PROMPT_RECOMMENDED_CJK_CHARS = 300
BOOLEAN_FIELDS = ("watermark", "stream", "layer_decomposition")

_WXH = re.compile(r"^([1-9][0-9]{1,5})x([1-9][0-9]{1,5})$")
_DATA_URI = re.compile(r"^data:image/([a-z]+);base64,(.*)$", re.DOTALL)
_BASE64_CHARS = re.compile(rb"[A-Za-z0-9+/]*={0,2}\Z")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class ModelLimits:
    """What a model family accepts: the one capability table, read by the checks and the emulator.

    :param min_pixels: total pixels of a ``WxH`` size, at least (``max_pixels``: at most).
    :param min_side: each side of a ``WxH`` size, at least (the 3.0 family; ``max_side``: at most).
    :param adaptive: it takes ``size: "adaptive"`` (SeedEdit).
    :param max_references: reference images it takes at most.
    :param groups: it makes groups (``sequential_image_generation: "auto"``) and streams them.
    :param presets: the size presets it takes; ``None`` when the presets are not checked.
    """

    family: str
    min_pixels: int | None = None
    max_pixels: int | None = None
    min_side: int | None = None
    max_side: int | None = None
    adaptive: bool = False
    max_references: int = MAX_REFERENCE_IMAGES
    groups: bool = True
    presets: tuple[str, ...] | None = None


# The first family whose marker is in the model id applies: 5.0 Pro before 5.0 Lite.
_FAMILIES = (
    (
        "seedream-5-0-pro",
        ModelLimits(
            "seedream-5.0-pro",
            min_pixels=921_600,
            max_pixels=4_624_000,
            max_references=10,
            groups=False,
            presets=("1K", "2K"),
        ),
    ),
    (
        "seedream-5-0",
        ModelLimits("seedream-5.0", min_pixels=3_686_400, max_pixels=16_777_216, presets=("2K", "3K", "4K")),
    ),
    (
        "seedream-4-5",
        ModelLimits("seedream-4.5", min_pixels=3_686_400, max_pixels=16_777_216, presets=("2K", "4K")),
    ),
    (
        "seedream-4-0",
        ModelLimits(
            "seedream-4.0", min_pixels=921_600, max_pixels=16_777_216, max_references=10, presets=("1K", "2K", "4K")
        ),
    ),
    ("seedream-3-0", ModelLimits("seedream-3.0", min_side=512, max_side=2048)),
    ("seededit-3-0", ModelLimits("seededit-3.0", adaptive=True)),
)


def model_limits(model: str) -> ModelLimits | None:
    """Return the known limits of ``model``, or ``None`` for a model this package does not know."""
    for marker, limits in _FAMILIES:
        if marker in model:
            return limits
    return None


def parse_size(size: str) -> tuple[int, int] | None:
    """Return ``(width, height)`` of a ``WxH`` size, or ``None`` for a preset."""
    match = _WXH.match(size)
    return (int(match.group(1)), int(match.group(2))) if match else None


def without_nulls(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``body`` without its ``null`` fields, in nested objects too: ``null`` means absent.

    Lists are kept as they are: a ``null`` inside a list is a value, and an invalid one.
    """
    return {
        key: without_nulls(value) if isinstance(value, Mapping) else value
        for key, value in body.items()
        if value is not None
    }


def requested_image_count(body: Mapping[str, Any]) -> int:
    """How many images the request asks for: its ``max_images`` in group mode, else 1.

    A group request without ``max_images`` counts as 1: the service then fills the group up
    to what the reference images leave of the limit. ``null`` fields count as absent.
    """
    body = without_nulls(body)
    if body.get("sequential_image_generation") != "auto":
        return 1
    options = body.get("sequential_image_generation_options") or {}
    return int(options.get("max_images", 1))


def validate_request(body: Mapping[str, Any]) -> list[str]:
    """Check a request body; raise :class:`SeedreamValidationError` on the first invalid field.

    :param body: the JSON body as it would be sent; ``null`` fields count as absent.
    :return: warnings that do not stop the request (such as a long prompt).
    """
    body = without_nulls(body)
    warnings: list[str] = []
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise SeedreamValidationError("model", f"must be a non-empty model id such as {DEFAULT_MODEL!r}")
    warnings.extend(_check_prompt(body.get("prompt")))
    limits = model_limits(model)
    if limits is None:
        warnings.append(f"model {model!r} is not one this package knows: only the checks every model shares apply")
    _check_enum(body, "response_format", RESPONSE_FORMATS)
    _check_enum(body, "output_format", OUTPUT_FORMATS)
    _check_enum(body, "sequential_image_generation", SEQUENTIAL_MODES)
    for name in BOOLEAN_FIELDS:
        if name in body and not isinstance(body[name], bool):
            raise SeedreamValidationError(name, f"must be true or false, got {body[name]!r}")
    if "size" in body:
        _check_size(body["size"], model)
    if "guidance_scale" in body:
        _check_number("guidance_scale", body["guidance_scale"], *GUIDANCE_RANGE)
    if "seed" in body:
        _check_integer("seed", body["seed"], *SEED_RANGE)
    _check_sequential_options(body.get("sequential_image_generation_options"))
    _check_optimize_options(body.get("optimize_prompt_options"))
    _check_tools(body.get("tools"))
    references = _check_references(body.get("image"))
    if limits is not None:
        _check_capabilities(body, model, limits)
    generated = requested_image_count(body)
    if references + generated > MAX_TOTAL_IMAGES:
        raise SeedreamValidationError(
            "image",
            f"reference images ({references}) plus images to generate ({generated}) must be at most "
            f"{MAX_TOTAL_IMAGES}; lower sequential_image_generation_options.max_images or send fewer images",
        )
    if body.get("sequential_image_generation") == "auto" and "max_images" not in (
        body.get("sequential_image_generation_options") or {}
    ):
        warnings.append(
            "sequential_image_generation is 'auto' without sequential_image_generation_options.max_images: "
            f"the service may return up to {MAX_IMAGES_RANGE[1]} images"
        )
    return warnings


def _check_capabilities(body: Mapping[str, Any], model: str, limits: ModelLimits) -> None:
    """Refuse, before anything is sent, what this model's family would refuse."""
    if not limits.groups:
        for name, wanted in (("sequential_image_generation", "auto"), ("stream", True)):
            if body.get(name) == wanted:
                raise SeedreamValidationError(
                    name,
                    f"{model} ({limits.family}) makes one image per request and does not stream; "
                    f"remove {name} or use a model that makes groups, such as {DEFAULT_MODEL!r}",
                )
    size = body.get("size")
    if limits.presets is not None and size in SIZE_PRESETS and size not in limits.presets:
        raise SeedreamValidationError(
            "size", f"{model} ({limits.family}) takes the presets {', '.join(limits.presets)}; got {size!r}"
        )
    image = body.get("image")
    count = 1 if isinstance(image, str) else len(image) if isinstance(image, list) else 0
    if count > limits.max_references:
        raise SeedreamValidationError(
            "image", f"{model} ({limits.family}) takes at most {limits.max_references} reference images, got {count}"
        )


def _check_prompt(prompt: Any) -> list[str]:
    if not isinstance(prompt, str):
        raise SeedreamValidationError("prompt", f"must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise SeedreamValidationError("prompt", "must not be empty")
    cjk = len(_CJK.findall(prompt))
    if cjk > PROMPT_RECOMMENDED_CJK_CHARS or len(prompt) > PROMPT_RECOMMENDED_CHARS:
        return [
            f"prompt has {len(prompt)} characters ({cjk} Chinese): the service recommends at most "
            f"{PROMPT_RECOMMENDED_CJK_CHARS} Chinese or about {PROMPT_RECOMMENDED_CHARS} English characters"
        ]
    return []


def _check_enum(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if name in body and body[name] not in allowed:
        raise SeedreamValidationError(name, f"must be one of {', '.join(allowed)}; got {body[name]!r}")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SeedreamValidationError(name, f"must be a number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise SeedreamValidationError(name, f"must be from {low} to {high}, got {value}")


def _check_integer(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SeedreamValidationError(name, f"must be an integer from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise SeedreamValidationError(name, f"must be from {low} to {high}, got {value}")


def _check_size(size: Any, model: str) -> None:
    limits = model_limits(model)
    presets = ", ".join(SIZE_PRESETS)
    if not isinstance(size, str):
        raise SeedreamValidationError("size", f"must be a preset ({presets}) or 'WxH' such as '2048x2048'")
    if size == ADAPTIVE_SIZE:
        if limits is not None and not limits.adaptive:
            raise SeedreamValidationError("size", f"'adaptive' is only for seededit models; use {presets} or 'WxH'")
        return
    if size in SIZE_PRESETS:
        return
    dims = parse_size(size)
    if dims is None:
        raise SeedreamValidationError(
            "size", f"must be a preset ({presets}) or 'WxH' such as '2048x2048', not both; got {size!r}"
        )
    width, height = dims
    ratio = width / height
    if not 1 / MAX_ASPECT_RATIO <= ratio <= MAX_ASPECT_RATIO:
        raise SeedreamValidationError("size", f"aspect ratio of {size} must be between 1/16 and 16")
    if limits is None:
        return
    pixels = width * height
    if limits.min_pixels is not None and not limits.min_pixels <= pixels <= (limits.max_pixels or pixels):
        raise SeedreamValidationError(
            "size",
            f"{size} has {pixels:,} pixels; {limits.family} allows {limits.min_pixels:,} to "
            f"{limits.max_pixels:,} pixels in total (e.g. 2048x2048)",
        )
    if (
        limits.min_side is not None
        and limits.max_side is not None
        and not (limits.min_side <= width <= limits.max_side and limits.min_side <= height <= limits.max_side)
    ):
        raise SeedreamValidationError(
            "size",
            f"{size}: {limits.family} allows each side from {limits.min_side} to {limits.max_side}",
        )


def _check_sequential_options(options: Any) -> None:
    if options is None:
        return
    name = "sequential_image_generation_options"
    if not isinstance(options, Mapping):
        raise SeedreamValidationError(name, "must be an object such as {'max_images': 4}")
    if "max_images" in options:
        _check_integer(f"{name}.max_images", options["max_images"], *MAX_IMAGES_RANGE)


def _check_optimize_options(options: Any) -> None:
    if options is None:
        return
    name = "optimize_prompt_options"
    if not isinstance(options, Mapping):
        raise SeedreamValidationError(name, "must be an object such as {'mode': 'standard'}")
    if "mode" in options and options["mode"] not in OPTIMIZE_MODES:
        raise SeedreamValidationError(
            f"{name}.mode", f"must be one of {', '.join(OPTIMIZE_MODES)}; got {options['mode']!r}"
        )


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) and isinstance(t.get("type"), str) for t in tools):
        raise SeedreamValidationError(
            "tools", "must be a list of objects with a 'type', such as [{'type': 'web_search'}]"
        )


def _check_references(image: Any) -> int:
    if image is None:
        return 0
    images = [image] if isinstance(image, str) else image
    if not isinstance(images, list) or not images:
        raise SeedreamValidationError("image", "must be a URL or data URI, or a non-empty list of them")
    if len(images) > MAX_REFERENCE_IMAGES:
        raise SeedreamValidationError(
            "image", f"at most {MAX_REFERENCE_IMAGES} reference images are allowed, got {len(images)}"
        )
    for position, reference in enumerate(images):
        check_reference(reference, f"image[{position}]")
    return len(images)


def check_reference(reference: Any, field: str = "image") -> None:
    """Check one reference image: an http(s) URL or a ``data:image/<fmt>;base64,...`` URI."""
    allowed = ", ".join(REFERENCE_FORMATS)
    if not isinstance(reference, str) or not reference:
        raise SeedreamValidationError(field, "must be an http(s) URL or a data URI 'data:image/<fmt>;base64,...'")
    if reference.startswith(("http://", "https://")):
        return
    if not reference.startswith("data:"):
        raise SeedreamValidationError(
            field, f"must be an http(s) URL or a data URI 'data:image/<fmt>;base64,...', got {reference[:30]!r}..."
        )
    match = _DATA_URI.match(reference[:64])
    if match is None:
        raise SeedreamValidationError(
            field, "data URI must look like 'data:image/<fmt>;base64,<data>' with a lowercase format"
        )
    fmt = match.group(1)
    if fmt not in REFERENCE_FORMATS:
        raise SeedreamValidationError(field, f"data URI format {fmt!r} is not one of {allowed}")
    payload = reference.partition(",")[2].encode("ascii", errors="replace")
    # Base64's alphabet in groups of four, padded only at the end: such a payload always decodes.
    if not payload or len(payload) % 4 or not _BASE64_CHARS.match(payload):
        raise SeedreamValidationError(field, "data URI payload is not valid base64")
    size = len(payload) * 3 // 4
    if size > MAX_REFERENCE_BYTES:
        raise SeedreamValidationError(
            field, f"reference image is {size:,} bytes; at most {MAX_REFERENCE_BYTES:,} bytes (30 MB) are allowed"
        )
