"""Request planning: from the operator's rendered arguments to one validated job per prompt.

Everything here runs before any request is sent and spends nothing: prompt items are read
and checked, generation parameters are layered (the operator's fields, then its
``extra_parameters``, then the item's own fields and ``extra_parameters``), each request is
validated by the hook, and each prompt gets its key stem and the fingerprint that decides
whether images already stored are its own.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_seedream.exceptions import SeedreamValidationError
from airflow_provider_seedream.references import Reference, check_references
from airflow_provider_seedream.storage import check_stem, image_extension
from airflow_provider_seedream.validation import requested_image_count

if TYPE_CHECKING:
    from airflow_provider_seedream.hooks.seedream import SeedreamHook

#: Request fields the operator takes as arguments, under their API names.
GENERATION_FIELDS = (
    "model",
    "size",
    "response_format",
    "watermark",
    "guidance_scale",
    "seed",
    "sequential_image_generation",
    "sequential_image_generation_options",
    "output_format",
    "optimize_prompt_options",
    "tools",
    "layer_decomposition",
    "stream",
)
#: Fields a prompt given as a mapping may override for itself.
PROMPT_ITEM_FIELDS = frozenset(GENERATION_FIELDS) | {"image", "extra_parameters", "key"}
#: Fields that change how an image is delivered, not which image is made.
DELIVERY_FIELDS = frozenset({"response_format", "stream"})
# What a local or s3:// reference is validated as: it is read only when its prompt is sent.
_REFERENCE_STAND_IN = "https://reference.invalid/{}"


def fingerprint(body: dict[str, Any], references: list[Reference]) -> str:
    """A stable digest of what decides the image: the body, with references by identity."""
    decisive = {key: value for key, value in body.items() if key not in DELIVERY_FIELDS}
    if references:
        decisive["image"] = [reference.identity for reference in references]
    canonical = json.dumps(decisive, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptJob:
    """One prompt, its validated request body and where its images go.

    :param index: the prompt's index (its position, plus ``prompt_index_offset``).
    :param stem: its key stem: its ``key``, or its index as ``00042``.
    :param requested_images: the most images its request can be billed for.
    """

    index: int
    prompt: str
    body: dict[str, Any]
    references: list[Reference]
    fingerprint: str
    extension: str
    stem: str = ""
    requested_images: int = 1

    def __post_init__(self) -> None:
        if not self.stem:
            object.__setattr__(self, "stem", f"{self.index:05d}")


def prompt_items(prompt: Any) -> list[dict[str, Any]]:
    """Read ``prompt`` (one prompt, a mapping, or a list of either) as one mapping per prompt.

    :raises SeedreamValidationError: naming ``prompt[<position>]`` and what is wrong with it.
    """
    prompts = [prompt] if isinstance(prompt, (str, Mapping)) else prompt
    if not isinstance(prompts, Sequence) or not prompts:
        raise SeedreamValidationError("prompt", "must be a non-empty string or a non-empty list of prompts")
    items = []
    for position, entry in enumerate(prompts):
        field = f"prompt[{position}]"
        item = dict(entry) if isinstance(entry, Mapping) else {"prompt": entry}
        unknown = set(item) - PROMPT_ITEM_FIELDS - {"prompt"}
        if unknown:
            raise SeedreamValidationError(
                field,
                f"unknown keys {sorted(unknown)}; a prompt mapping may hold 'prompt' and {sorted(PROMPT_ITEM_FIELDS)}",
            )
        text = item.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise SeedreamValidationError(field, f"must be a non-empty string, got {type(text).__name__} {text!r:.40}")
        if is_list_text(text):
            raise SeedreamValidationError(
                field,
                f"is the text of a list ({text!r:.60}), which would be paid for as one prompt; pass a list "
                "(with a template, set render_template_as_native_obj=True on the DAG)",
            )
        items.append(item)
    return items


def is_list_text(text: str) -> bool:
    """Whether a prompt is a Python or JSON list rendered as text, such as ``"['a cat', 'a dog']"``."""
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return False
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        return False
    return isinstance(value, list) and bool(value) and all(isinstance(item, (str, dict)) for item in value)


def unkeyed_folder(map_index: Any, prompt_index_offset: int | None) -> str:
    """Where a task instance keeps its prompts without ``key``: a mapped one apart, unless an offset places them."""
    if isinstance(map_index, int) and map_index >= 0 and prompt_index_offset is None:
        return f"map-{map_index:05d}/"
    return ""


@dataclass(frozen=True)
class RequestPlanner:
    """Makes the job of each prompt item, with every check done before anything is paid for.

    :param hook: validates and builds each request body (the connection's model is its default).
    :param parameters: the operator's generation fields (``None`` where not set).
    :param extra_parameters: the operator's other request fields.
    :param shared_references: the operator-level reference images, read once for every prompt.
    :param s3_client: reads a prompt's own ``s3://`` references' sizes while checking them.
    :param index_offset: added to each prompt's position to form its index.
    :param folder: the stem prefix of prompts without ``key`` (see :func:`unkeyed_folder`).
    """

    hook: SeedreamHook
    parameters: Mapping[str, Any]
    extra_parameters: Mapping[str, Any]
    shared_references: list[Reference]
    s3_client: Any
    index_offset: int = 0
    folder: str = ""

    def plan(self, items: list[dict[str, Any]]) -> list[PromptJob]:
        """One job per item; keys must be unique within the task.

        :raises SeedreamValidationError: on the first invalid field, named with its prompt.
        """
        jobs = [self.job(position, item) for position, item in enumerate(items)]
        seen: dict[str, int] = {}
        for position, job in enumerate(jobs):
            if job.stem in seen:
                raise SeedreamValidationError(
                    f"prompt[{position}].key",
                    f"{job.stem!r} is also the key of prompt[{seen[job.stem]}]; keys must be unique within the task",
                )
            seen[job.stem] = position
        return jobs

    def job(self, position: int, item: dict[str, Any]) -> PromptJob:
        """The job of the item at ``position``."""
        index = self.index_offset + position
        parameters: dict[str, Any] = dict(self.parameters)
        parameters.update(self.extra_parameters)
        parameters.update(
            {key: value for key, value in item.items() if key not in ("prompt", "image", "extra_parameters", "key")}
        )
        parameters.update(item.get("extra_parameters") or {})
        if "image" in item:
            references = check_references(item["image"], self.s3_client, f"prompt[{position}].image")
        else:
            references = self.shared_references
        if references:
            parameters["image"] = [
                reference.source if reference.kind in ("url", "data_uri") else _REFERENCE_STAND_IN.format(n)
                for n, reference in enumerate(references)
            ]
        try:
            body = self.hook.build_request(item["prompt"], **parameters)
        except SeedreamValidationError as error:
            raise SeedreamValidationError(error.field, f"{error.message} (prompt {index})") from None
        if body.get("sequential_image_generation") == "auto" and "max_images" not in (
            body.get("sequential_image_generation_options") or {}
        ):
            raise SeedreamValidationError(
                "sequential_image_generation_options.max_images",
                f"is required when sequential_image_generation is 'auto': 1 to 15 images per prompt; without it "
                f"the service may make and bill up to 15 (prompt {index})",
            )
        body.pop("image", None)
        return PromptJob(
            index=index,
            prompt=item["prompt"],
            body=body,
            references=references,
            fingerprint=fingerprint(body, references),
            extension=image_extension(body.get("output_format"), str(body.get("model"))),
            stem=self._stem(position, index, item),
            requested_images=requested_image_count(body),
        )

    def _stem(self, position: int, index: int, item: dict[str, Any]) -> str:
        if "key" not in item:
            return self.folder + f"{index:05d}"
        stem = item["key"]
        problem = check_stem(stem) if isinstance(stem, str) else "must be a string"
        if problem:
            raise SeedreamValidationError(f"prompt[{position}].key", f"{problem}; got {stem!r}")
        return stem
