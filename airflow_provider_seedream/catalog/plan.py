"""A catalog made ready for a run: its prompts in S3, cut into chunks that mapped tasks read by reference.

:func:`prepare_catalog` streams the catalog once, checks every row and renders its prompt, and
writes the products, one JSON line each, to ``<work_prefix>/prompts.jsonl`` with the byte
offset of each chunk in ``<work_prefix>/chunks.json``. What goes into XCom is the small
:class:`CatalogPlan` (where those two objects are, how many products and chunks): a few
hundred bytes whatever the catalog's size. Each mapped task then reads its own chunk with
one ranged GET (:func:`load_chunk`), and the report streams the whole file back
(:func:`iter_products`).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import IO, Any

from airflow_provider_seedream.catalog.prompts import PromptTemplate, product_id
from airflow_provider_seedream.catalog.rows import CatalogError, catalog_format, open_catalog, read_rows

PROMPTS_FILE = "prompts.jsonl"
CHUNKS_FILE = "chunks.json"
# Airflow maps at most this many task instances unless [core] max_map_length says otherwise.
MAX_CHUNKS = 1024
# Row fields copied beside the prompt, for the manifest and the gallery.
DESCRIPTIVE_FIELDS = ("name", "category")
_UNSAFE_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9._=-]+")


@dataclass(frozen=True)
class CatalogPlan:
    """
    Where a prepared catalog's products are, and how they are cut into chunks (the XCom of a catalog run).

    :param catalog: the catalog read, ``s3://bucket/key``.
    :param bucket: the bucket of ``prompts_key`` and ``chunks_key``.
    :param prompts_key: one JSON line per product: ``index``, ``id``, ``line``, ``prompt`` and
        ``name``/``category`` when the row has them.
    :param chunks_key: a JSON object whose ``bytes`` list holds the byte offset in
        ``prompts_key`` where each chunk starts, and its end.
    :param products: how many products the run has.
    :param chunk_size: products per chunk (the last may hold fewer).
    """

    catalog: str
    bucket: str
    prompts_key: str
    chunks_key: str
    products: int
    chunk_size: int

    @property
    def chunks(self) -> int:
        """How many chunks, hence mapped task instances."""
        return -(-self.products // self.chunk_size)

    @property
    def offsets(self) -> list[int]:
        """The index of the first product of each chunk: each mapped task's ``prompt_index_offset``."""
        return list(range(0, self.products, self.chunk_size))

    def to_xcom(self) -> dict[str, Any]:
        """The plan as a small JSON-safe dict."""
        return {**asdict(self), "chunks": self.chunks}

    @classmethod
    def from_xcom(cls, value: Mapping[str, Any] | CatalogPlan) -> CatalogPlan:
        """Read a plan back from :meth:`to_xcom`'s dict."""
        if isinstance(value, CatalogPlan):
            return value
        if not isinstance(value, Mapping):
            raise CatalogError(
                f"catalog_plan: must be the plan that prepare_catalog returned, got {type(value).__name__}"
            )
        return cls(**{name: value[name] for name in cls.__dataclass_fields__})


def run_folder(report_prefix: str, run_id: str) -> str:
    """Where a run keeps its prepared catalog: ``<report_prefix>/runs/<run id, made safe for a key>``."""
    folder = f"runs/{_UNSAFE_KEY_CHARACTERS.sub('_', run_id).strip('_') or 'run'}"
    prefix = report_prefix.strip("/")
    return f"{prefix}/{folder}" if prefix else folder


def prepare_catalog(
    *,
    bucket: str,
    catalog_key: str,
    work_prefix: str,
    prompt_template: str,
    catalog_format: str = "auto",
    id_field: str = "id",
    chunk_size: int = 50,
    max_products: int = 0,
    aws_conn_id: str | None = "aws_default",
    s3_client: Any = None,
) -> dict[str, Any]:
    """
    Check a catalog in S3, render one prompt per product and write them to S3 in chunks.

    The catalog is streamed (JSON Lines or CSV, gzip-compressed or not) and each product
    written to a temporary file as it is read, so memory holds the ids seen (to refuse a
    repeated one) and no prompt. Every row is checked before anything is uploaded: a run
    with a bad row sends no request.

    :param bucket: the bucket of the catalog and of ``work_prefix``.
    :param catalog_key: the catalog's key.
    :param work_prefix: where ``prompts.jsonl`` and ``chunks.json`` are written (see :func:`run_folder`).
    :param prompt_template: a Jinja template of a prompt; ``product`` is the row.
    :param catalog_format: ``auto`` (by the key's extension), ``jsonl`` or ``csv``.
    :param id_field: the field holding each product's unique id, the key stem of its images.
    :param chunk_size: products per mapped task.
    :param max_products: only the first N products (0: all).
    :param aws_conn_id: the AWS connection, when ``s3_client`` is not given.
    :param s3_client: a boto3 S3 client (default: the amazon provider's ``S3Hook``'s).
    :return: the :class:`CatalogPlan` as a dict, for XCom.
    :raises AirflowFailException: the catalog is missing or empty, a row has no id, repeats an
        id, lacks a field the template uses or renders an empty prompt, or an argument is bad.
        The message names the row's line and id, or the param. A retry would fail the same way.
    """
    from airflow_provider_seedream.version_compat import AirflowFailException, conf

    try:
        return _prepare(
            bucket=bucket,
            catalog_key=catalog_key,
            work_prefix=work_prefix,
            prompt_template=prompt_template,
            fmt=catalog_format,
            id_field=id_field,
            chunk_size=chunk_size,
            max_products=max_products,
            max_chunks=conf.getint("core", "max_map_length", fallback=MAX_CHUNKS),
            client=s3_client if s3_client is not None else _s3_client(aws_conn_id),
        ).to_xcom()
    except CatalogError as error:
        raise AirflowFailException(str(error)) from None


def _prepare(
    *,
    bucket: str,
    catalog_key: str,
    work_prefix: str,
    prompt_template: str,
    fmt: str,
    id_field: str,
    chunk_size: int,
    max_products: int,
    client: Any,
    max_chunks: int = MAX_CHUNKS,
) -> CatalogPlan:
    for name, value, least in (("chunk_size", chunk_size, 1), ("max_products", max_products, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise CatalogError(f"{name}: must be a whole number of at least {least}; got {value!r}")
    if not isinstance(id_field, str) or not id_field:
        raise CatalogError("id_field: must name the field holding each product's id")
    fmt = catalog_format(catalog_key, fmt)
    template = PromptTemplate(prompt_template)
    source = f"s3://{bucket}/{catalog_key}"
    prefix = work_prefix.strip("/")
    plan_keys = {name: f"{prefix}/{name}" if prefix else name for name in (PROMPTS_FILE, CHUNKS_FILE)}
    if catalog_key in plan_keys.values():
        raise CatalogError(f"catalog_key: {source} is where the run writes its prepared prompts")

    with tempfile.TemporaryFile() as out:
        count, bytes_at = _write_products(
            read_rows(open_catalog(client, bucket, catalog_key), fmt), out, template, id_field, chunk_size, max_products
        )
        if not count:
            raise CatalogError(f"catalog_key: {source} holds no product")
        if len(bytes_at) - 1 > max_chunks:
            raise CatalogError(
                f"chunk_size: {count} products in chunks of {chunk_size} make {len(bytes_at) - 1} mapped tasks; "
                f"at most {max_chunks} can run ([core] max_map_length), so use chunks of at least "
                f"{-(-count // max_chunks)}"
            )
        out.seek(0)
        client.put_object(Bucket=bucket, Key=plan_keys[PROMPTS_FILE], Body=out, ContentType="application/x-ndjson")
    index = {"catalog": source, "products": count, "chunk_size": chunk_size, "bytes": bytes_at}
    client.put_object(
        Bucket=bucket, Key=plan_keys[CHUNKS_FILE], Body=json.dumps(index).encode(), ContentType="application/json"
    )
    return CatalogPlan(
        catalog=source,
        bucket=bucket,
        prompts_key=plan_keys[PROMPTS_FILE],
        chunks_key=plan_keys[CHUNKS_FILE],
        products=count,
        chunk_size=chunk_size,
    )


def _write_products(
    rows: Iterator[tuple[int, dict[str, Any]]],
    out: IO[bytes],
    template: PromptTemplate,
    id_field: str,
    chunk_size: int,
    max_products: int,
) -> tuple[int, list[int]]:
    """Write one JSON line per product; return how many, and the byte offset of each chunk's start and of the end."""
    seen: set[str] = set()
    bytes_at: list[int] = []
    count = 0
    for line, row in rows:
        if max_products and count >= max_products:
            break
        identifier = product_id(row, id_field, line)
        if identifier in seen:
            raise CatalogError(
                f"catalog line {line} (id {identifier!r}): the id appears more than once; "
                "ids must be unique, since each is the key of its images"
            )
        seen.add(identifier)
        product = {"index": count, "id": identifier, "line": line, "prompt": template.render(row, line, identifier)}
        product.update({name: row[name] for name in DESCRIPTIVE_FIELDS if name in row})
        if count % chunk_size == 0:
            bytes_at.append(out.tell())
        out.write(json.dumps(product, ensure_ascii=False).encode() + b"\n")
        count += 1
    bytes_at.append(out.tell())
    return count, bytes_at


def load_chunk(client: Any, plan: Mapping[str, Any] | CatalogPlan, offset: int | None) -> list[dict[str, Any]]:
    """
    Read the products of the chunk that starts at product ``offset`` (one ranged GET).

    :param client: a boto3 S3 client.
    :param plan: the plan :func:`prepare_catalog` returned.
    :param offset: the chunk's first product index, a multiple of the plan's ``chunk_size``.
    :return: the chunk's products, in catalog order.
    """
    plan = CatalogPlan.from_xcom(plan)
    if (
        isinstance(offset, bool)
        or not isinstance(offset, int)
        or offset not in range(0, plan.products, plan.chunk_size)
    ):
        raise CatalogError(
            f"prompt_index_offset: {offset!r} does not start a chunk of {plan.catalog} "
            f"(chunks of {plan.chunk_size} over {plan.products} products)"
        )
    index = json.loads(client.get_object(Bucket=plan.bucket, Key=plan.chunks_key)["Body"].read())
    position = offset // plan.chunk_size
    start, end = index["bytes"][position], index["bytes"][position + 1]
    body = client.get_object(Bucket=plan.bucket, Key=plan.prompts_key, Range=f"bytes={start}-{end - 1}")["Body"]
    products = [json.loads(line) for line in body.read().splitlines() if line.strip()]
    if not products or products[0]["index"] != offset:
        raise CatalogError(f"catalog_plan: s3://{plan.bucket}/{plan.prompts_key} does not match its chunk index")
    return products


def chunk_prompts(products: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The operator's prompt items of a chunk: each product's prompt, keyed by its id."""
    return [{"prompt": product["prompt"], "key": product["id"]} for product in products]


def iter_products(client: Any, plan: Mapping[str, Any] | CatalogPlan) -> Iterator[dict[str, Any]]:
    """Stream every product of a prepared catalog, in catalog order."""
    plan = CatalogPlan.from_xcom(plan)
    body = client.get_object(Bucket=plan.bucket, Key=plan.prompts_key)["Body"]
    for line in read_rows(body, "jsonl"):
        yield line[1]


def _s3_client(aws_conn_id: str | None) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).conn
