"""SeedreamToS3Operator: render prompts, generate images, stream them to S3, report what was stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_seedream.exceptions import SeedreamValidationError
from airflow_provider_seedream.links import SeedreamImagesLink

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import Context

    from airflow_provider_seedream.batch import BatchRunner
    from airflow_provider_seedream.hooks.seedream import SeedreamHook
    from airflow_provider_seedream.outcomes import BatchReport

# The hook's arguments ``hook_params`` may set.
HOOK_PARAMS = frozenset(
    {
        "timeout",
        "connect_timeout",
        "max_retries",
        "retry_unknown_outcome",
        "retry_min_wait",
        "retry_max_wait",
        "pool_maxsize",
        "max_download_bytes",
    }
)
# Every S3 call has a bound: a write that does not complete is taken as not written.
S3_CONNECT_TIMEOUT = 10
S3_READ_TIMEOUT = 30
# The most keys and prompts an asset event's extra carries (an event's extra is stored in
# the metadata database; a catalog's run reads its records from XCom instead).
ASSET_EXTRA_LIMIT = 1000


class SeedreamToS3Operator(BaseOperator):
    """
    Generate images with a Seedream model and store each one in S3.

    A prompt given as a mapping with ``key`` (a stable stem such as a product id) lands at
    ``<s3_prefix>/<key>-<image:02d>.<ext>``, wherever it sits in the list; any other at
    ``<s3_prefix>/<prompt index:05d>-<image:02d>.<ext>``. Object metadata holds a fingerprint
    of the prompt and generation parameters. With ``replace=False`` a prompt whose images are
    already stored from the same prompt and parameters is not generated again, so a rerun,
    a retry or a backfill of unchanged prompts costs nothing; ``replace=True`` generates
    once per DAG run, however many tries it takes. Every image that was paid for is stored
    (or, when the task is stopped, recorded for the next try) even when others fail; the
    task then fails with a summary of what failed.

    Every request is claimed in the spend ledger (``<s3_prefix>/_ledger/<key>.json``, written
    with S3 conditional writes) before it is sent, so another try, another map index or an
    overlapping run never pays for the same prompt again: it waits for the claim's owner and
    reuses its images. A key stored by another task from a different prompt is refused before
    anything is paid, unless ``replace=True``.

    A request whose answer is lost (read timeout, dropped connection, gateway 502/504, a task
    killed with the request in flight) may have been billed: it is reported as "outcome
    unknown" and not sent again, by this try or a later one, unless ``resolve_unknown='retry'``
    (or ``retry_unknown_outcome`` on the connection or in ``hook_params``);
    ``resolve_unknown='accept'`` accepts it as lost.

    When stopped (execution timeout, "mark failed" or "clear" in the UI, which calls
    :meth:`on_kill`), the task sends nothing more, gives requests in flight a few seconds to
    answer and be recorded, and ends.

    :param prompt: one prompt or a list of prompts (templated; ``.txt``/``.j2`` files are
        rendered as templates). An item may also be a mapping with ``prompt``, an optional
        ``key`` and any generation field (or ``image``) that applies to that prompt alone.
    :param s3_bucket: the bucket the images go to (templated).
    :param s3_prefix: the key prefix (templated). A mapped task instance puts its prompts
        without ``key`` under ``map-<index>/`` unless ``prompt_index_offset`` places them.
    :param aws_conn_id: the AWS connection (templated); its ``endpoint_url`` extra selects any
        S3-compatible store, its ``config_kwargs`` extra the bounds of every S3 call.
    :param seedream_conn_id: the Seedream connection (templated).
    :param model: the model id (templated); defaults to the connection's.
    :param size: a preset (``1K``, ``2K``, ``3K``, ``4K``) or ``WxH`` (templated).
    :param response_format: ``url`` or ``b64_json``.
    :param image: reference images for every prompt (templated): http(s) URLs, data URIs,
        local paths or ``s3://`` URIs, at most 14.
    :param watermark: add the service's "AI generated" mark.
    :param guidance_scale: 1.0 to 10.0 (3.0 models).
    :param seed: -1 to 2147483647 (3.0 models).
    :param sequential_image_generation: ``auto`` for a group of images per prompt, or ``disabled``.
    :param sequential_image_generation_options: e.g. ``{"max_images": 4}``; ``max_images`` is
        required in group mode (the service would otherwise make up to 15 images per prompt).
    :param output_format: ``png`` or ``jpeg``.
    :param optimize_prompt_options: e.g. ``{"mode": "standard"}``.
    :param tools: e.g. ``[{"type": "web_search"}]``.
    :param layer_decomposition: ask for the image split into layers.
    :param stream: have a group streamed: each image is recorded and stored as it arrives, while
        the rest are still being made, and a read timeout applies between images.
    :param extra_parameters: any other request fields, sent as given (templated).
    :param replace: generate again even when the same images are already stored.
    :param max_concurrency: generation requests in flight at once within the task; as many
        threads download and upload the images of answered prompts beside them.
    :param adaptive_concurrency: pace sends to the account's images-per-minute limit, learned from
        the service's rate-limit answers, with the requests in flight that pace needs, at most
        ``max_concurrency`` (the default); with ``False`` the task keeps ``max_concurrency`` in
        flight, sends at once and leaves rate limits to the hook's retries (an endpoint of your
        own, or a baseline to measure against).
    :param reference_transport: how local and ``s3://`` references are sent: ``data_uri`` or
        ``presigned_url`` (the service must then reach the S3 endpoint).
    :param prompt_index_offset: added to each prompt's position to form its index and key.
    :param max_billed_images: the most images the task may pay for within one DAG run, all its
        tries and map indexes together, requests in flight and of unknown outcome included (each
        reserves ``max_images`` in group mode, else one), kept in the ledger. When reached,
        nothing more is sent, what was paid for is stored, and the task fails without retry.
    :param resolve_unknown: what becomes of prompts whose earlier request had an unknown
        outcome (templated, so one run can say it in its ``params``): ``fail`` (the default:
        reported, not sent), ``retry`` (sent again: it may be paid twice) or ``accept``
        (accepted as lost; a later run generates them again).
    :param claim_wait_seconds: how long a prompt claimed by another live try or run is waited
        for before the task fails on it, naming who holds it.
    :param lease_seconds: how long a claim's owner may go silent before its claims are taken
        as dead (their outcome unknown).
    :param hook_params: extra arguments for :class:`SeedreamHook` (timeouts, retries,
        ``retry_unknown_outcome``).
    """

    template_fields: Sequence[str] = (
        "prompt",
        "s3_bucket",
        "s3_prefix",
        "model",
        "size",
        "image",
        "extra_parameters",
        "resolve_unknown",
        "seedream_conn_id",
        "aws_conn_id",
    )
    template_ext: Sequence[str] = (".txt", ".j2", ".jinja2")
    template_fields_renderers = {"extra_parameters": "json"}
    ui_color = "#f4d6c6"
    operator_extra_links = (SeedreamImagesLink(),)

    def __init__(
        self,
        *,
        prompt: str | list[Any],
        s3_bucket: str,
        s3_prefix: str = "",
        aws_conn_id: str | None = "aws_default",
        seedream_conn_id: str = "seedream_default",
        model: str | None = None,
        size: str | None = None,
        response_format: str | None = None,
        image: str | list[str] | None = None,
        watermark: bool | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        sequential_image_generation: str | None = None,
        sequential_image_generation_options: dict[str, Any] | None = None,
        output_format: str | None = None,
        optimize_prompt_options: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        layer_decomposition: bool | None = None,
        stream: bool | None = None,
        extra_parameters: dict[str, Any] | None = None,
        replace: bool = False,
        max_concurrency: int = 8,
        adaptive_concurrency: bool = True,
        reference_transport: str = "data_uri",
        prompt_index_offset: int | None = None,
        max_billed_images: int | None = None,
        resolve_unknown: str | None = None,
        claim_wait_seconds: float = 600.0,
        lease_seconds: float = 60.0,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.s3_bucket = s3_bucket
        self.s3_prefix = s3_prefix
        self.aws_conn_id = aws_conn_id
        self.seedream_conn_id = seedream_conn_id
        self.model = model
        self.size = size
        self.response_format = response_format
        self.image = image
        self.watermark = watermark
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.sequential_image_generation = sequential_image_generation
        self.sequential_image_generation_options = sequential_image_generation_options
        self.output_format = output_format
        self.optimize_prompt_options = optimize_prompt_options
        self.tools = tools
        self.layer_decomposition = layer_decomposition
        self.stream = stream
        self.extra_parameters = extra_parameters or {}
        self.replace = replace
        self.max_concurrency = max_concurrency
        self.adaptive_concurrency = adaptive_concurrency
        self.reference_transport = reference_transport
        self.prompt_index_offset = prompt_index_offset
        self.max_billed_images = max_billed_images
        self.resolve_unknown = resolve_unknown
        self.claim_wait_seconds = claim_wait_seconds
        self.lease_seconds = lease_seconds
        self.hook_params = hook_params or {}
        self._runner: BatchRunner | None = None

    @cached_property
    def hook(self) -> SeedreamHook:
        """The Seedream hook, shared by every thread of the task."""
        from airflow_provider_seedream.hooks.seedream import SeedreamHook

        # Generation and transfer threads share the session: up to 2 * max_concurrency connections.
        params = {"pool_maxsize": max(2 * self.max_concurrency, 10), **self.hook_params}
        return SeedreamHook(seedream_conn_id=self.seedream_conn_id, **params)

    @cached_property
    def s3_hook(self) -> S3Hook:
        """The amazon provider's S3 hook, its connection pool sized for ``max_concurrency``.

        Every call is bounded (``S3_CONNECT_TIMEOUT``, ``S3_READ_TIMEOUT``, 3 attempts) unless the
        connection's ``config_kwargs`` extra sets its own bounds.
        """
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from botocore.config import Config

        bounds = Config(
            connect_timeout=S3_CONNECT_TIMEOUT,
            read_timeout=S3_READ_TIMEOUT,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        configured = S3Hook(aws_conn_id=self.aws_conn_id).conn_config.botocore_config
        config = bounds.merge(configured) if configured is not None else bounds
        pool = Config(max_pool_connections=max(10, 2 * self.max_concurrency))
        return S3Hook(aws_conn_id=self.aws_conn_id, config=config.merge(pool))

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from airflow_provider_seedream.batch import BatchRunner
        from airflow_provider_seedream.ledger import Budget, Ledger
        from airflow_provider_seedream.outcomes import BatchError, BatchInterrupted
        from airflow_provider_seedream.planning import GENERATION_FIELDS, RequestPlanner, prompt_items, unkeyed_folder
        from airflow_provider_seedream.references import check_references
        from airflow_provider_seedream.storage import ImageStore, StorageError
        from airflow_provider_seedream.version_compat import AirflowFailException

        try:
            # Everything here is checked before any money is spent; a retry would fail the same way.
            self._check_arguments()
            items = prompt_items(self.prompt)
            self._check_connections()
            client = self.s3_hook.conn
            store = ImageStore(client, self.s3_bucket, self.s3_prefix, run_id=self._run_id(context))
            planner = RequestPlanner(
                self.hook,
                parameters={name: getattr(self, name) for name in GENERATION_FIELDS},
                extra_parameters=self.extra_parameters,
                shared_references=check_references(self.image, client, "image"),  # read once for every prompt
                s3_client=client,
                index_offset=self.prompt_index_offset or 0,
                folder=unkeyed_folder(getattr(context.get("ti"), "map_index", -1), self.prompt_index_offset),
            )
            jobs = planner.plan(items)
            store.check_bucket()
        except SeedreamValidationError as error:
            raise AirflowFailException(str(error)) from error
        except StorageError as error:
            if error.fatal:
                raise AirflowFailException(str(error)) from error
            raise
        ledger = Ledger(client, store.bucket, store.prefix, self._owner(context), lease_seconds=self.lease_seconds)
        budget = Budget.for_task(ledger, self.max_billed_images) if self.max_billed_images is not None else None
        self.log.info(
            "Generating images for %d prompt(s) into s3://%s/%s with concurrency %d",
            len(jobs),
            store.bucket,
            store.prefix,
            self.max_concurrency,
        )
        self._runner = runner = BatchRunner(
            self.hook,
            store,
            ledger,
            s3_client=client,
            transport=self.reference_transport,  # type: ignore[arg-type]
            replace=self.replace,
            max_concurrency=self.max_concurrency,
            adaptive_concurrency=self.adaptive_concurrency,
            log=self.log,
            budget=budget,
            resolve_unknown=self.resolve_unknown or "fail",
            claim_wait_seconds=self.claim_wait_seconds,
        )
        try:
            report = runner.run(jobs)
        except BatchInterrupted as stopped:
            raise AirflowFailException(f"stopped by on_kill: {stopped}") from None
        except StorageError as error:
            if error.fatal:  # the ledger cannot be written: no retry can help until S3 is fixed
                raise AirflowFailException(str(error)) from error
            raise
        except BaseException as error:
            if runner.budget_spent:  # a timeout at the same moment must not buy a fresh try
                raise AirflowFailException(f"{runner._stop_reason}; interrupted by {type(error).__name__}") from error
            raise
        finally:
            self.hook.close()
        self._record_asset_events(context, report, store.prefix)
        self._record_outputs(context, report, store.prefix)
        if report.failures:
            if not report.retryable or runner.budget_spent:
                raise AirflowFailException(report.summary())
            raise BatchError(report)
        self.log.info(
            "Stored %d image(s): %d generated, %d reused; billed images %d%s%s",
            len(report.records),
            report.generated,
            report.reused,
            report.billed_images,
            f"; {report.budget}" if report.budget else "",
            f"; unknown outcomes accepted as lost: prompts {report.accepted_lost}" if report.accepted_lost else "",
        )
        return report.records

    def on_kill(self) -> None:
        """Stop spending at once: nothing more is sent, and what was paid for is stored or recorded."""
        if self._runner is not None:
            self._runner.stop("the task was killed (on_kill)", interrupt=True)

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        """Render the templated fields; a template that cannot render fails the task without retries."""
        from jinja2 import TemplateError

        from airflow_provider_seedream.version_compat import AirflowFailException

        try:
            super().render_template_fields(context, jinja_env)
        except TemplateError as error:
            raise AirflowFailException(f"template: {type(error).__name__}: {error}") from error

    def render_template(
        self, content: Any, context: Context, jinja_env: Any = None, seen_oids: set[int] | None = None
    ) -> Any:
        """Render like any operator, except that prompt text ending in ``.txt`` is text, not a file name."""
        if _is_prompt_text(content, self.template_ext):
            env = jinja_env or self.get_template_env()
            return self._render(env.from_string(content), context)
        return super().render_template(content, context, jinja_env, seen_oids)

    def resolve_template_files(self) -> None:
        """Read template files for the fields that name one; prompt text ending in ``.txt`` stays text."""
        for name in self.template_fields:
            value = getattr(self, name, None)
            if isinstance(value, list):
                setattr(self, name, [self._template_source(item) for item in value])
            elif isinstance(value, str):
                setattr(self, name, self._template_source(value))
        self.prepare_template()

    def _template_source(self, value: Any) -> Any:
        ext = tuple(self.template_ext)
        if not isinstance(value, str) or not value.endswith(ext) or _is_prompt_text(value, ext):
            return value
        env = self.get_template_env()
        try:
            return env.loader.get_source(env, value)[0]  # type: ignore[union-attr]
        except Exception:
            self.log.exception("Failed to read the template file %r", value)
            return value

    # -- checks done before any request is sent ----------------------------------------------

    def _check_arguments(self) -> None:
        """Read every argument that decides what is paid for; text such as ``"false"`` or ``"3"`` is parsed."""
        from airflow_provider_seedream.arguments import as_flag, as_int, as_number
        from airflow_provider_seedream.batch import RESOLUTIONS
        from airflow_provider_seedream.references import TRANSPORTS

        if not isinstance(self.s3_bucket, str) or not self.s3_bucket.strip():
            raise SeedreamValidationError("s3_bucket", "must name a bucket")
        if not isinstance(self.s3_prefix, str):
            raise SeedreamValidationError("s3_prefix", "must be a string")
        self.replace = as_flag("replace", self.replace)
        self.max_concurrency = as_int("max_concurrency", self.max_concurrency, 1)
        self.adaptive_concurrency = as_flag("adaptive_concurrency", self.adaptive_concurrency)
        if self.prompt_index_offset is not None:
            self.prompt_index_offset = as_int("prompt_index_offset", self.prompt_index_offset, 0)
        if self.max_billed_images is not None:
            self.max_billed_images = as_int("max_billed_images", self.max_billed_images, 1)
        self.claim_wait_seconds = as_number("claim_wait_seconds", self.claim_wait_seconds, 0)
        self.lease_seconds = as_number("lease_seconds", self.lease_seconds, 1)
        if self.reference_transport not in TRANSPORTS:
            raise SeedreamValidationError(
                "reference_transport", f"must be one of {', '.join(TRANSPORTS)}; got {self.reference_transport!r}"
            )
        if self.resolve_unknown in ("", "None"):
            self.resolve_unknown = None  # a param left empty
        if self.resolve_unknown is not None and self.resolve_unknown not in RESOLUTIONS:
            raise SeedreamValidationError(
                "resolve_unknown", f"must be one of {', '.join(RESOLUTIONS)} or None; got {self.resolve_unknown!r}"
            )
        if not isinstance(self.extra_parameters, Mapping):
            raise SeedreamValidationError("extra_parameters", "must be a mapping of request fields")
        if not isinstance(self.hook_params, Mapping) or set(self.hook_params) - HOOK_PARAMS:
            unknown = (
                sorted(set(self.hook_params) - HOOK_PARAMS)
                if isinstance(self.hook_params, Mapping)
                else self.hook_params
            )
            raise SeedreamValidationError("hook_params", f"unknown {unknown!r}; it may set {sorted(HOOK_PARAMS)}")
        _ = self.hook  # the hook reads its arguments now: text is parsed or refused, naming the field

    def _check_connections(self) -> None:
        from airflow.sdk import BaseHook

        from airflow_provider_seedream.version_compat import AirflowNotFoundException

        try:
            _ = self.hook.settings
        except AirflowNotFoundException:
            raise SeedreamValidationError(
                "seedream_conn_id",
                f"connection {self.seedream_conn_id!r} is not defined; create a 'seedream' connection",
            ) from None
        if self.aws_conn_id and self.aws_conn_id != "aws_default":
            try:
                BaseHook.get_connection(self.aws_conn_id)
            except AirflowNotFoundException:
                raise SeedreamValidationError(
                    "aws_conn_id", f"connection {self.aws_conn_id!r} is not defined; create an 'aws' connection"
                ) from None

    def _owner(self, context: Context) -> Any:
        """Who this try claims prompts as, in the spend ledger."""
        from airflow_provider_seedream.ledger import Owner

        ti = context.get("ti")
        map_index = getattr(ti, "map_index", -1)
        return Owner(
            dag_id=str(getattr(self, "dag_id", None) or getattr(ti, "dag_id", "") or "dag"),
            task_id=self.task_id,
            run_id=str(self._run_id(context) or "manual"),
            map_index=map_index if isinstance(map_index, int) else -1,
            try_number=int(getattr(ti, "try_number", 1) or 1),
        )

    @staticmethod
    def _run_id(context: Context) -> str | None:
        dag_run = context.get("dag_run")
        return getattr(dag_run, "run_id", None) or context.get("run_id")

    def _record_asset_events(self, context: Context, report: BatchReport, prefix: str) -> None:
        """Attach what was stored to the asset events of the task's outlets."""
        from airflow.sdk import Asset

        outlets = [outlet for outlet in self.outlets if isinstance(outlet, Asset)]
        if not outlets or "outlet_events" not in context:
            return
        extra: dict[str, Any] = {
            "bucket": self.s3_bucket,
            "prefix": prefix,
            "count": len(report.records),
            "generated": report.generated,
            "reused": report.reused,
            "failed": len(report.failures),
            # Parallel lists: keys[i] was made from prompts[i].
            "keys": [record["key"] for record in report.records[:ASSET_EXTRA_LIMIT]],
            "prompts": [record["prompt"] for record in report.records[:ASSET_EXTRA_LIMIT]],
            "truncated": len(report.records) > ASSET_EXTRA_LIMIT,
        }
        for outlet in outlets:
            context["outlet_events"][outlet].extra.update(extra)

    def _record_outputs(self, context: Context, report: BatchReport, prefix: str) -> None:
        """Keep what the task wrote: a link to its images for the UI (in XCom), and their keys for lineage."""
        self._written = (prefix, [record["key"] for record in report.records])
        SeedreamImagesLink.persist(context, self, self.s3_hook, self.s3_bucket, prefix=prefix)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """
        The task's OpenLineage datasets (used when the openlineage provider is installed).

        Outputs: the images stored (namespace ``s3://<bucket>``, name the key), or their prefix
        when there are more than ``LINEAGE_OBJECT_LIMIT``; none when nothing was stored.
        Inputs: the ``s3://`` reference images.
        """
        from airflow_provider_seedream.lineage import operator_lineage, s3_references

        prefix, keys = getattr(self, "_written", (None, []))
        return operator_lineage(self.s3_bucket, prefix, keys, references=s3_references(self.image, self.prompt))


def _is_prompt_text(value: Any, template_ext: Sequence[str]) -> bool:
    """Whether a string ending in a template extension is prompt text rather than a file name.

    A file name has no whitespace; "a poster titled notes.txt" is a prompt.
    """
    return isinstance(value, str) and value.endswith(tuple(template_ext)) and any(ch.isspace() for ch in value)
