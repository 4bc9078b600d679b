"""One prompt per catalog row, from a sandboxed Jinja template, and the row's id as its images' key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_seedream.catalog.rows import CatalogError

DEFAULT_PROMPT_TEMPLATE = (
    "A clean e-commerce studio photo of the {{ product.name }}, a {{ product.colour }} "
    "{{ product.material }} item from our {{ product.category | lower }} range, centred on a "
    "seamless light-grey background, soft diffused light, gentle shadow, no text"
)
# How Jinja's StrictUndefined names what is missing: "'dict object' has no attribute 'x'", "'x' is undefined".
_MISSING = re.compile(r"has no attribute '(?P<attribute>[^']*)'|^'(?P<name>[^']*)' is undefined")


class PromptTemplate:
    """
    A prompt template for catalog rows: ``product`` is the row (``{{ product.name }}``).

    The template runs in Jinja's sandbox (a catalog cannot reach Python objects through it)
    with strict undefined names: a field the template names and a row lacks fails that row.
    Whitespace in the result is collapsed to single spaces.

    :param source: the template's text.
    :raises CatalogError: the template is not valid Jinja (names ``prompt_template``).
    """

    def __init__(self, source: str) -> None:
        from jinja2 import StrictUndefined, TemplateSyntaxError
        from jinja2.sandbox import SandboxedEnvironment

        if not isinstance(source, str) or not source.strip():
            raise CatalogError("prompt_template: must be a non-empty Jinja template")
        try:
            self._template = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(source)
        except TemplateSyntaxError as error:
            raise CatalogError(f"prompt_template: line {error.lineno}: {error.message}") from None

    def render(self, row: Mapping[str, Any], line: int, product_id: str) -> str:
        """
        Render the prompt of one row.

        :param row: the row's fields.
        :param line: the row's line in the catalog, for errors.
        :param product_id: the row's id, for errors.
        :raises CatalogError: the template names a field the row lacks, fails otherwise, or
            renders an empty prompt; the message names the line, the id and the field.
        """
        from jinja2 import TemplateError, UndefinedError
        from jinja2.sandbox import SecurityError

        where = f"catalog line {line} (id {product_id!r})"
        try:
            text = self._template.render(product=row)
        except UndefinedError as error:
            match = _MISSING.search(str(error))
            field = (match["attribute"] or match["name"]) if match else None
            if field is None:
                raise CatalogError(f"{where}: prompt_template: {error}") from None
            raise CatalogError(f"{where}: has no field {field!r}, which prompt_template uses") from None
        except SecurityError as error:
            raise CatalogError(f"prompt_template: not allowed in the sandbox: {error}") from None
        except (TemplateError, TypeError, ValueError, ArithmeticError) as error:
            raise CatalogError(f"{where}: prompt_template: {type(error).__name__}: {error}") from None
        prompt = " ".join(text.split())
        if not prompt:
            raise CatalogError(f"{where}: prompt_template renders an empty prompt for this row")
        return prompt


def product_id(row: Mapping[str, Any], id_field: str, line: int) -> str:
    """
    Return a row's id: the stable key stem of its images (``<images_prefix>/<id>-00.jpg``).

    :raises CatalogError: the row has no id, or the id cannot be part of an S3 key.
    """
    from airflow_provider_seedream.storage import check_stem

    value = row.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        shown = "" if value is None else f" (got {value!r:.40})"
        raise CatalogError(f"catalog line {line}: has no {id_field!r}{shown}; every row needs a unique id")
    identifier = str(value).strip()
    problem = check_stem(identifier)
    if problem:
        raise CatalogError(
            f"catalog line {line} (id {identifier!r}): its {id_field!r} is the key of its images and {problem}"
        )
    return identifier
