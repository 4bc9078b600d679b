"""SeedreamHook: the one place that speaks HTTP to the Seedream image endpoint."""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from typing import IO, TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlsplit

import ijson
import requests
import tenacity
import urllib3.exceptions
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter

from airflow_provider_seedream import CONNECTION_UI, __version__
from airflow_provider_seedream.arguments import as_flag, as_int, as_number
from airflow_provider_seedream.exceptions import (
    UNKNOWN_OUTCOME_STATUSES,
    SeedreamAPIError,
    SeedreamDownloadError,
    SeedreamSendCancelled,
    SeedreamUnknownOutcomeError,
    SeedreamValidationError,
)
from airflow_provider_seedream.image_formats import (
    CONTENT_TYPES,
    SNIFF_BYTES,
    sniff_format,
)
from airflow_provider_seedream.redaction import redact_text, redact_url
from airflow_provider_seedream.results import (
    STREAM_COMPLETED,
    STREAM_FAILED,
    STREAM_SUCCEEDED,
    DownloadedImage,
    GeneratedImage,
    GenerationResult,
    StreamEvent,
)
from airflow_provider_seedream.validation import (
    DEFAULT_MODEL,
    requested_image_count,
    validate_request,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection

DEFAULT_BASE_URL = "https://api.cometapi.com"
ARK_HOST_SUFFIXES = ("volces.com", "bytepluses.com")
ARK_PATH = "/api/v3/images/generations"
OPENAI_PATH = "/v1/images/generations"
MODELS_PATH = "/v1/models"
DEFAULT_MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_RETRIES = 6
# A group streams about one image every 20 s: each image past the first adds this much read time.
GROUP_SECONDS_PER_IMAGE = 60.0
DOWNLOAD_CHUNK = 256 * 1024
DOWNLOAD_READ_TIMEOUT = 120.0
B64_CHUNK = 4 * 256 * 1024  # a multiple of 4 characters: decodes on its own
# A download is a GET of a stored object: trying it again never pays for an image.
DOWNLOAD_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# An answer that breaks off while it is read.
_BROKEN_ANSWER = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ijson.JSONError,
)


def _never_sent(error: requests.ConnectionError) -> bool:
    """Whether a connection error happened before the request could reach the service."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    reason = error.args[0] if error.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def _download_retryable(error: BaseException) -> bool:
    return isinstance(error, SeedreamDownloadError) and error.retryable


class _BackoffHonouringRetryAfter(tenacity.wait.wait_base):
    """Exponential backoff with jitter that waits what ``Retry-After`` asked for, up to ``maximum``."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self._maximum = maximum
        self._backoff = tenacity.wait_random_exponential(multiplier=minimum, max=maximum)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        backoff = self._backoff(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None:
            return backoff
        # A server asking for an hour must not hold a worker slot for an hour.
        return min(max(backoff, retry_after), self._maximum)


def _extra(conn_id: str, extras: dict[str, Any], name: str, default: Any, kind: type) -> Any:
    """One connection extra; missing, null or empty (as the UI form saves it) means the default."""
    value = extras.get(name)
    if value is None or value == "":
        return default
    field = f"connection {conn_id!r} extra {name!r}"
    if kind is bool:
        return as_flag(field, value)
    return as_int(field, value) if kind is int else as_number(field, value)


class _ImageSink:
    """Write image bytes to a file while hashing, counting, bounding and recognising them."""

    def __init__(self, fileobj: IO[bytes], max_bytes: int) -> None:
        self._file = fileobj
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._head = b""
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._max:
            raise SeedreamDownloadError(f"image is larger than the limit of {self._max:,} bytes", retryable=False)
        if len(self._head) < SNIFF_BYTES:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self, declared_type: str | None = None) -> DownloadedImage:
        fmt = sniff_format(self._head)
        if fmt is None:
            raise SeedreamDownloadError(
                "the downloaded bytes are not a PNG, JPEG, WebP, GIF or BMP image", retryable=False
            )
        content_type = CONTENT_TYPES[fmt]
        declared = declared_type.split(";")[0].strip() if declared_type else ""
        if (
            declared.startswith("image/")
            and declared != content_type
            and not (fmt == "jpeg" and declared == "image/jpg")
        ):
            raise SeedreamDownloadError(f"the server declared {declared_type} but the bytes are {fmt}", retryable=False)
        return DownloadedImage(bytes=self.size, sha256=self._hash.hexdigest(), format=fmt, content_type=content_type)


class SeedreamHook(BaseHook):
    """
    Interact with the Seedream image-generation endpoint (CometAPI, VolcEngine Ark, BytePlus ModelArk).

    The connection's host is the base URL (default ``https://api.cometapi.com``; the Ark and
    ModelArk hosts work by changing the host alone), its password the API key. Its extras hold
    defaults: ``model``, ``parameters`` (request fields sent with every request),
    ``endpoint_path``, ``timeout``, ``max_retries`` and ``retry_unknown_outcome``; a null or
    empty extra (as Airflow's connection form saves it) means the default.

    A request is sent again only when the service cannot have served it: a failure to
    connect, a 429 rate limit (waiting what ``Retry-After`` asks, up to ``retry_max_wait``) or
    a 500/503 from the service. A read timeout, a connection dropped after the request was
    sent, a 502/504 from a gateway or an answer cut short may have been billed: they raise
    :class:`SeedreamUnknownOutcomeError` and are not sent again unless ``retry_unknown_outcome``.

    One pooled ``requests`` session serves every thread that shares the hook.

    :param seedream_conn_id: the Airflow connection to use.
    :param timeout: read timeout in seconds of a one-image request (a 2K image takes 25-45 s);
        a group request gets 60 s more for each image past the first.
    :param connect_timeout: connection timeout in seconds.
    :param max_retries: retries of a rate-limited (429), failed (500/503) or unconnected request,
        and of a broken download.
    :param retry_unknown_outcome: also send again a request whose outcome is unknown (it may
        then be paid for twice); defaults to the connection's extra, else false.
    :param retry_min_wait: base of the exponential backoff between retries, in seconds.
    :param retry_max_wait: upper bound of the backoff and of an honoured ``Retry-After``, in seconds.
    :param pool_maxsize: connections kept open to each host; at least the concurrency that uses the hook.
    :param max_download_bytes: an image larger than this is refused.
    """

    conn_name_attr = "seedream_conn_id"
    default_conn_name = "seedream_default"
    conn_type = "seedream"
    hook_name = "Seedream"

    def __init__(
        self,
        seedream_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
        max_retries: int | None = None,
        retry_unknown_outcome: bool | None = None,
        retry_min_wait: float = 1.0,
        retry_max_wait: float = 60.0,
        pool_maxsize: int = 32,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> None:
        super().__init__()
        self.seedream_conn_id = seedream_conn_id
        # Arguments may arrive as text (hook_params rendered from a template): read them, or refuse.
        self._timeout = None if timeout is None else as_number("timeout", timeout, 0, exclusive=True)
        self.connect_timeout = as_number("connect_timeout", connect_timeout, 0, exclusive=True)
        self._max_retries = None if max_retries is None else as_int("max_retries", max_retries, 0)
        self._retry_unknown_outcome = (
            None if retry_unknown_outcome is None else as_flag("retry_unknown_outcome", retry_unknown_outcome)
        )
        self.retry_min_wait = as_number("retry_min_wait", retry_min_wait, 0)
        self.retry_max_wait = as_number("retry_max_wait", retry_max_wait, 0)
        self.pool_maxsize = as_int("pool_maxsize", pool_maxsize, 1)
        self.max_download_bytes = as_int("max_download_bytes", max_download_bytes, 1)
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        #: Called before each attempt of a generation request, retries included, with its body: it may
        #: wait (a batch's pace); ``False`` cancels the request, which is then not sent.
        self.before_send: Callable[[dict[str, Any]], bool] | None = None
        #: Called with each 429 a generation request is answered, and the request's body.
        self.on_rate_limited: Callable[[SeedreamAPIError, dict[str, Any]], None] | None = None
        self._warned: set[str] = set()
        self._settings: dict[str, Any] | None = None

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """
        The connection form's extra fields on Airflow 3.1, built from ``CONNECTION_FIELDS``.

        Airflow 3.2 and later read those fields from the provider's ``conn-fields`` instead, so
        this returns nothing there. On 3.1 the UI builds the form from WTForms fields.
        """
        from airflow_provider_seedream.version_compat import AIRFLOW_V_3_2_PLUS

        if AIRFLOW_V_3_2_PLUS:
            return {}
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, StringField
        from wtforms.validators import Optional

        from airflow_provider_seedream import CONNECTION_FIELDS

        kinds = {"boolean": BooleanField, "integer": IntegerField}
        widgets: dict[str, Any] = {}
        for name, field in CONNECTION_FIELDS.items():
            kind = next(kind for kind in field["schema"]["type"] if kind != "null")
            field_class = kinds.get(kind, StringField)  # text, and numbers read from text
            options: dict[str, Any] = {"widget": BS3TextFieldWidget()} if field_class is StringField else {}
            widgets[name] = field_class(
                lazy_gettext(field["label"]),
                validators=[Optional()],
                description=field["description"],
                default=field["schema"].get("default"),
                **options,
            )
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hide the connection fields that mean nothing here and relabel the rest."""
        return {
            "hidden_fields": CONNECTION_UI["hidden-fields"],
            "relabeling": CONNECTION_UI["relabeling"],
            "placeholders": CONNECTION_UI["placeholders"],
        }

    # -- connection -----------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        """The endpoint URL, key, defaults and client options read from the connection (once)."""
        with self._lock:
            if self._settings is None:
                self._settings = self._read_connection(self.get_connection(self.seedream_conn_id))
            return self._settings

    def _read_connection(self, conn: Connection) -> dict[str, Any]:
        conn_id = self.seedream_conn_id
        extras = conn.extra_dejson
        parameters = extras.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise SeedreamValidationError(
                f"connection {conn_id!r} extra 'parameters'", "must be an object of request fields"
            )
        if conn.password:
            from airflow.sdk.log import mask_secret

            mask_secret(conn.password)
        timeout = (
            self._timeout if self._timeout is not None else _extra(conn_id, extras, "timeout", DEFAULT_TIMEOUT, float)
        )
        retries = self._max_retries
        if retries is None:
            retries = _extra(conn_id, extras, "max_retries", DEFAULT_MAX_RETRIES, int)
        unknown = self._retry_unknown_outcome
        if unknown is None:
            unknown = _extra(conn_id, extras, "retry_unknown_outcome", False, bool)
        if timeout <= 0:
            raise SeedreamValidationError("timeout", f"must be a positive number of seconds, got {timeout!r}")
        if retries < 0:
            raise SeedreamValidationError("max_retries", f"must be 0 or more, got {retries!r}")
        return {
            "endpoint": endpoint_url(conn.host, conn.schema, conn.port, extras.get("endpoint_path") or None),
            "api_key": conn.password or "",
            "model": extras.get("model") or DEFAULT_MODEL,
            "parameters": parameters,
            "timeout": float(timeout),
            "max_retries": int(retries),
            "retry_unknown_outcome": bool(unknown),
        }

    @property
    def retry_unknown_outcome(self) -> bool:
        """Whether a request whose outcome is unknown may be sent again (and so paid for twice)."""
        return self.settings["retry_unknown_outcome"]

    def read_timeout(self, body: dict[str, Any]) -> float:
        """The read timeout of a request: the connection's, plus time for each extra image of a group."""
        return self.settings["timeout"] + GROUP_SECONDS_PER_IMAGE * (requested_image_count(body) - 1)

    def get_conn(self) -> requests.Session:
        """Return the pooled session shared by every thread that uses this hook."""
        _ = self.settings  # read the connection first: an unknown connection fails here
        with self._lock:
            if self._session is None:
                session = requests.Session()
                adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_maxsize, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers["User-Agent"] = f"airflow-provider-seedream/{__version__}"
                self._session = session
            return self._session

    def close(self) -> None:
        """Close the pooled session."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    # -- generation -----------------------------------------------------------------------

    def build_request(self, prompt: str, **parameters: Any) -> dict[str, Any]:
        """
        Return the request body for ``prompt`` after checking it; nothing is sent.

        Fields come from the connection's ``parameters`` extra, then ``parameters``; ``None``
        values are left out. Unknown fields pass through untouched.

        :raises SeedreamValidationError: a field is invalid (the error names it and what is allowed).
        """
        settings = self.settings
        body: dict[str, Any] = {"model": settings["model"], **settings["parameters"]}
        body.update({key: value for key, value in parameters.items() if value is not None})
        body["prompt"] = prompt
        for warning in validate_request(body):
            if warning not in self._warned:  # once per hook: a batch of 10,000 prompts says it once
                self._warned.add(warning)
                self.log.warning("%s", warning)
        return body

    @overload
    def generate_images(
        self, prompt: str, *, stream: Literal[True], **parameters: Any
    ) -> Generator[StreamEvent, None, None]: ...

    @overload
    def generate_images(self, prompt: str, *, stream: Literal[False] = ..., **parameters: Any) -> GenerationResult: ...

    def generate_images(self, prompt: str, **parameters: Any) -> GenerationResult | Generator[StreamEvent, None, None]:
        """
        Send one generation request and return its images, usage and model.

        Every request field of the endpoint can be passed under its API name (``model``,
        ``size``, ``response_format``, ``image``, ``watermark``, ``guidance_scale``, ``seed``,
        ``sequential_image_generation``, ``sequential_image_generation_options``,
        ``output_format``, ``stream``...); fields this package does not know are sent as given.
        Rate limits (429), 500/503 answers and failures to connect are retried with backoff,
        honouring ``Retry-After``; other errors are raised at once.

        With ``stream=True`` it returns an iterator of :class:`StreamEvent` instead, each
        image as soon as the service sends it (see :meth:`stream_request`).

        :raises SeedreamValidationError: a field is invalid; nothing was sent.
        :raises SeedreamAPIError: the endpoint refused the request.
        :raises SeedreamUnknownOutcomeError: the answer was lost; the images may have been billed.
        """
        body = self.build_request(prompt, **parameters)
        if body.get("stream"):
            return self.stream_request(body)
        return self.send_request(body)

    def send_request(self, body: dict[str, Any], *, spool_images: bool = False) -> GenerationResult:
        """
        Check and send a body made by :meth:`build_request`; see :meth:`generate_images`.

        The answer is parsed as it arrives. With ``spool_images``, each ``b64_json`` image is
        decoded into a temporary file as soon as its item is read (``GeneratedImage.spool``),
        so memory holds at most one image's text at a time.
        """
        validate_request(body)
        if body.get("stream"):
            raise SeedreamValidationError(
                "stream", "a streamed request is sent with stream_request(), which yields its events"
            )
        session = self.get_conn()
        settings = self.settings
        self.log.debug("Requesting images from %s with model %s", settings["endpoint"], body.get("model"))
        return self._retrying(self._generation_retryable, "generation")(
            self._post, session, body, self.read_timeout(body), spool_images
        )

    def stream_request(self, body: dict[str, Any], *, spool_images: bool = False) -> Generator[StreamEvent, None, None]:
        """
        Check ``body`` now, then send it with ``stream: true`` and yield its events as they arrive.

        The request is retried like any other until the service starts answering; the read
        timeout then applies between events (the connection's ``timeout``), not to the whole
        group. The connection is closed when the iterator is exhausted or abandoned.

        :raises SeedreamValidationError: a field is invalid, raised before anything is sent.
        :raises SeedreamUnknownOutcomeError: (while iterating) the stream broke off: the images
            already yielded are known, the others may have been billed.
        """
        body = {**body, "stream": True}
        validate_request(body)
        return self._stream_events(body, spool_images)

    def _stream_events(self, body: dict[str, Any], spool: bool) -> Generator[StreamEvent, None, None]:
        session = self.get_conn()
        timeout = self.settings["timeout"]
        response = self._retrying(self._generation_retryable, "generation")(self._open_stream, session, body, timeout)
        request_id = response.headers.get("x-request-id")
        response.encoding = "utf-8"
        received, completed = 0, False
        with response:
            try:
                for name, data in _server_sent_events(response):
                    if data == "[DONE]":
                        return
                    event = self._stream_event(name, data, request_id, spool)
                    received += event.image is not None and event.image.ok
                    completed |= event.completed
                    yield event
            except _BROKEN_ANSWER as error:
                raise SeedreamUnknownOutcomeError(
                    f"the stream broke off after {received} image(s) ({type(error).__name__})"
                ) from None
        if not completed:
            raise SeedreamUnknownOutcomeError(f"the stream ended before it completed, after {received} image(s)")

    def _open_stream(self, session: requests.Session, body: dict[str, Any], timeout: float) -> requests.Response:
        return self._send(session, body, timeout, {"Accept": "text/event-stream"})

    def _stream_event(self, name: str | None, data: str, request_id: str | None, spool: bool) -> StreamEvent:
        try:
            payload = json.loads(data)
        except ValueError:
            raise SeedreamUnknownOutcomeError("the stream sent an event that is not JSON") from None
        kind = payload.get("type") or name or ""
        model = payload.get("model")
        if kind in (STREAM_SUCCEEDED, STREAM_FAILED):
            index = int(payload.get("image_index", 0))
            image = self._image_from_item(index, payload, spool)
            return StreamEvent(kind, image=image, model=model, request_id=request_id)
        if kind == STREAM_COMPLETED:
            return StreamEvent(kind, usage=dict(payload.get("usage") or {}), model=model, request_id=request_id)
        if "error" in payload:
            error = payload["error"] if isinstance(payload["error"], dict) else {}
            raise SeedreamAPIError(500, error.get("code"), redact_text(str(error.get("message", "")))[:500], request_id)
        return StreamEvent(kind, model=model, request_id=request_id)

    def _generation_retryable(self, error: BaseException) -> bool:
        if isinstance(error, SeedreamAPIError):
            return error.retryable
        if isinstance(error, SeedreamUnknownOutcomeError):
            return self.retry_unknown_outcome
        return isinstance(error, requests.ConnectionError) and _never_sent(error)

    def _post(self, session: requests.Session, body: dict[str, Any], timeout: float, spool: bool) -> GenerationResult:
        with self._send(session, body, timeout) as response:
            return self._read_answer(response, response.headers.get("x-request-id"), spool)

    def _send(
        self, session: requests.Session, body: dict[str, Any], timeout: float, headers: dict[str, str] | None = None
    ) -> requests.Response:
        """POST ``body``; return a 200 response whose body is still to be read, or raise what happened."""
        settings = self.settings
        if self.before_send is not None and not self.before_send(body):
            raise SeedreamSendCancelled("the request was cancelled before it was sent: nothing was paid for")
        try:
            response = session.post(
                settings["endpoint"],
                json=body,
                headers={"Authorization": f"Bearer {settings['api_key']}", **(headers or {})},
                timeout=(self.connect_timeout, timeout),
                stream=True,
            )
        except requests.ConnectionError as error:
            if _never_sent(error):
                raise
            raise SeedreamUnknownOutcomeError(
                f"the connection broke after the request was sent ({type(error).__name__})"
            ) from None
        except requests.Timeout:
            raise SeedreamUnknownOutcomeError(f"no answer within the read timeout of {timeout:g} s") from None
        if response.status_code == 200:
            return response
        with response:
            request_id = response.headers.get("x-request-id")
            if response.status_code in UNKNOWN_OUTCOME_STATUSES:
                raise SeedreamUnknownOutcomeError(
                    f"a gateway answered HTTP {response.status_code}"
                    + (f" (request id {request_id})" if request_id else "")
                )
            refusal = api_error(response)
            if refusal.status == 429 and self.on_rate_limited is not None:
                self.on_rate_limited(refusal, body)
            raise refusal

    def _read_answer(self, response: requests.Response, request_id: str | None, spool: bool) -> GenerationResult:
        """Parse a 200 answer item by item; an answer that breaks off keeps the images already read."""
        images: list[GeneratedImage] = []
        top: dict[str, Any] = {}
        builder: ijson.ObjectBuilder | None = None
        target = ""
        response.raw.decode_content = True
        try:
            for prefix, event, value in ijson.parse(_Arriving(response.raw), use_float=True):
                if builder is not None:
                    builder.event(event, value)
                    if prefix == target and event == "end_map":
                        if target == "data.item":
                            images.append(self._image_from_item(len(images), builder.value, spool))
                        else:
                            top[target] = builder.value
                        builder = None
                elif prefix in ("data.item", "usage") and event == "start_map":
                    builder, target = ijson.ObjectBuilder(), prefix
                    builder.event(event, value)
                elif prefix in ("model", "created") and event in ("string", "number"):
                    top[prefix] = value
        except _BROKEN_ANSWER as error:
            received = GenerationResult(images=images, usage={}, model=top.get("model"), request_id=request_id)
            raise SeedreamUnknownOutcomeError(
                f"the answer broke off after {len(images)} image(s) ({type(error).__name__})", received=received
            ) from None
        created = top.get("created")
        return GenerationResult(
            images=images,
            usage=dict(top.get("usage") or {}),
            model=top.get("model"),
            created=int(created) if created is not None else None,
            request_id=request_id,
        )

    def _image_from_item(self, index: int, item: Any, spool: bool) -> GeneratedImage:
        if not isinstance(item, dict):
            item = {"error": {"code": "InvalidResponse", "message": "an item of data is not an object"}}
        image = GeneratedImage.from_item(index, item)
        if not (spool and image.b64_json is not None):
            return image
        spooled = tempfile.TemporaryFile(prefix="seedream-b64-")  # noqa: SIM115 (the image owns it)
        try:
            decoded = self._decode_b64(image.b64_json, spooled)
        except SeedreamDownloadError as error:
            spooled.close()
            return GeneratedImage(index=index, size=image.size, error_code="InvalidImage", error_message=str(error))
        return GeneratedImage(index=index, size=image.size, spool=(spooled, decoded), extra=image.extra)

    def _retrying(self, predicate: Callable[[BaseException], bool], what: str) -> tenacity.Retrying:
        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "Seedream %s failed (%s); retry %d of %d in %.2f s",
                what,
                error,
                state.attempt_number,
                self.settings["max_retries"],
                state.next_action.sleep if state.next_action else 0.0,
            )

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.settings["max_retries"] + 1),
            wait=_BackoffHonouringRetryAfter(self.retry_min_wait, self.retry_max_wait),
            retry=tenacity.retry_if_exception(predicate),
            before_sleep=log_retry,
            reraise=True,
        )

    # -- downloads ------------------------------------------------------------------------

    def download_image(self, image: GeneratedImage, fileobj: IO[bytes]) -> DownloadedImage:
        """
        Write the bytes of ``image`` to ``fileobj`` (from its signed URL, or its ``b64_json``).

        The URL is requested exactly as received, streamed, and the download alone is retried
        (from the start of ``fileobj``) on broken connections, truncated bodies, 429 and 5xx.
        Only http(s) URLs are followed; the bytes must be an image and at most
        ``max_download_bytes`` long.

        :raises SeedreamDownloadError: the image could not be had (never with the URL's signature).
        """
        if not image.ok:
            raise SeedreamDownloadError(f"image {image.index} carries no image: {image.error_code}", retryable=False)
        if image.spool is not None:
            source, decoded = image.spool
            source.seek(0)
            fileobj.seek(0)
            fileobj.truncate()
            for chunk in iter(lambda: source.read(DOWNLOAD_CHUNK), b""):
                fileobj.write(chunk)
            return decoded
        if image.b64_json is not None:
            return self._decode_b64(image.b64_json, fileobj)
        url = image.url or ""
        if urlsplit(url).scheme not in ("http", "https"):
            raise SeedreamDownloadError(
                f"refusing to download {redact_url(url)}: only http(s) URLs are followed", retryable=False
            )
        session = self.get_conn()

        def attempt() -> DownloadedImage:
            fileobj.seek(0)
            fileobj.truncate()
            return self._download_once(session, url, fileobj)

        return self._retrying(_download_retryable, "download")(attempt)

    def _download_once(self, session: requests.Session, url: str, fileobj: IO[bytes]) -> DownloadedImage:
        prepared = session.prepare_request(requests.Request("GET", url))
        prepared.url = url  # the signature breaks if the URL is re-encoded in any way
        shown = redact_url(url)
        # session.send alone skips the environment: a CA bundle or proxy set for the task must apply.
        settings = session.merge_environment_settings(url, {}, True, None, None)
        try:
            response = session.send(prepared, timeout=(self.connect_timeout, DOWNLOAD_READ_TIMEOUT), **settings)
        except requests.RequestException as error:
            raise SeedreamDownloadError(f"download of {shown} failed: {type(error).__name__}") from None
        with response:
            if response.status_code != 200:
                detail = api_error(response)
                raise SeedreamDownloadError(
                    f"download of {shown} failed: HTTP {response.status_code} {detail.code or ''}".rstrip(),
                    status=response.status_code,
                    retryable=response.status_code in DOWNLOAD_RETRYABLE_STATUSES,
                )
            declared = response.headers.get("Content-Length")
            if declared and int(declared) > self.max_download_bytes:
                raise SeedreamDownloadError(
                    f"download of {shown} refused: {int(declared):,} bytes is over the limit of "
                    f"{self.max_download_bytes:,}",
                    retryable=False,
                )
            sink = _ImageSink(fileobj, self.max_download_bytes)
            try:
                for chunk in response.iter_content(DOWNLOAD_CHUNK):
                    sink.write(chunk)
            except requests.RequestException as error:
                raise SeedreamDownloadError(
                    f"download of {shown} broke after {sink.size:,} bytes: {type(error).__name__}"
                ) from None
            if declared and sink.size != int(declared):
                raise SeedreamDownloadError(f"download of {shown} truncated: {sink.size:,} of {int(declared):,} bytes")
            return sink.finish(response.headers.get("Content-Type"))

    def _decode_b64(self, data: str, fileobj: IO[bytes]) -> DownloadedImage:
        fileobj.seek(0)
        fileobj.truncate()
        sink = _ImageSink(fileobj, self.max_download_bytes)
        try:
            for start in range(0, len(data), B64_CHUNK):
                sink.write(base64.b64decode(data[start : start + B64_CHUNK], validate=True))
        except (binascii.Error, ValueError):
            raise SeedreamDownloadError("b64_json is not valid base64", retryable=False) from None
        return sink.finish()

    # -- connection test ------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """
        Prove the key works without paying for an image.

        On an OpenAI-compatible host (``/v1/images/generations``, as CometAPI serves) it asks
        ``GET /v1/models``, which is free, and says whether the key is accepted and the
        connection's model is listed. Where there is no such list (Ark, ModelArk, or a host
        that answers it 404), it sends a request no model can fulfil (no prompt, a 1x1 size):
        the service checks the key first, then refuses the request, so an accepted key costs
        nothing and no image can be made.
        """
        try:
            settings = self.settings
        except Exception as error:
            return False, f"The connection is not usable: {type(error).__name__}: {redact_text(str(error))}"
        if settings["endpoint"].endswith(OPENAI_PATH):
            listed = self._listed_models(settings)
            if listed is not None:
                return listed
        return self._refused_request(settings)

    def _listed_models(self, settings: dict[str, Any]) -> tuple[bool, str] | None:
        """The connection test by ``GET /v1/models``; ``None`` where the host has no such list."""
        url = settings["endpoint"][: -len(OPENAI_PATH)] + MODELS_PATH
        try:
            response = self.get_conn().get(
                url, headers={"Authorization": f"Bearer {settings['api_key']}"}, timeout=(self.connect_timeout, 30.0)
            )
        except Exception as error:
            return False, f"Could not reach {url}: {type(error).__name__}: {redact_text(str(error))}"
        with response:
            if response.status_code in (404, 405, 501):  # no such list here
                return None
            if response.status_code != 200:
                return False, str(api_error(response))
            try:
                models = [str(item["id"]) for item in response.json()["data"]]
            except (ValueError, KeyError, TypeError):
                return None  # not the OpenAI list: fall back to the request no model can fulfil
        model = settings["model"]
        if model in models:
            return True, f"Connection works: the key was accepted by {url}, which lists the model {model!r}."
        return False, (
            f"The key was accepted by {url}, but the model {model!r} is not among the {len(models)} it lists "
            f"(for example {', '.join(models[:5]) or 'none'}); set the connection's model or the operator's model"
        )

    def _refused_request(self, settings: dict[str, Any]) -> tuple[bool, str]:
        """The connection test by a generation request no model can fulfil."""
        try:
            response = self.get_conn().post(
                settings["endpoint"],
                json={"model": settings["model"], "size": "1x1"},
                headers={"Authorization": f"Bearer {settings['api_key']}"},
                timeout=(self.connect_timeout, 30.0),
            )
        except Exception as error:
            return False, f"Could not reach the endpoint: {type(error).__name__}: {redact_text(str(error))}"
        with response:
            if response.status_code in (400, 422):
                return True, f"Connection works: the key was accepted by {settings['endpoint']}."
            if response.status_code == 200:
                return False, (
                    f"{settings['endpoint']} answered 200 to a request without a prompt: it is not a Seedream "
                    "endpoint that checks its requests; check the Base URL"
                )
            return False, str(api_error(response))


class _Arriving:
    """A response body read as it arrives: each read returns what came, without waiting to fill its buffer.

    So an answer that breaks off keeps every item whose bytes arrived before the break, not only
    those of buffers filled whole.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson asks for nothing, to learn whether the body is bytes or text
            return b""
        return bytes(self._raw.read1(size if size > 0 else None))


def _server_sent_events(response: requests.Response) -> Iterator[tuple[str | None, str]]:
    """Yield ``(event name, data)`` of each server-sent event as it arrives."""
    name: str | None = None
    data: list[str] = []
    for raw in response.iter_lines():  # bytes: a line ends at a newline, which no UTF-8 character holds
        line = raw.decode("utf-8")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].lstrip())
    if data:
        yield name, "\n".join(data)


def endpoint_url(host: str | None, schema: str | None = None, port: int | None = None, path: str | None = None) -> str:
    """
    Return the generation endpoint's URL for a connection's host.

    A host with a path (``https://x/api/v3``) gets ``/images/generations`` appended; the Ark and
    ModelArk hosts get ``/api/v3/images/generations``; any other host the OpenAI-style
    ``/v1/images/generations``. ``path`` overrides the choice.
    """
    base = (host or DEFAULT_BASE_URL).strip().rstrip("/")
    if "://" not in base:
        base = f"{schema or 'https'}://{base}"
    parts = urlsplit(base)
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    if path:
        route = "/" + path.lstrip("/")
    elif parts.path not in ("", "/"):
        route = parts.path.rstrip("/") + "/images/generations"
    elif (parts.hostname or "").endswith(ARK_HOST_SUFFIXES):
        route = ARK_PATH
    else:
        route = OPENAI_PATH
    return f"{parts.scheme}://{netloc}{route}"


def api_error(response: requests.Response) -> SeedreamAPIError:
    """Build the error for a non-200 answer from its body (service or object-storage form)."""
    request_id = response.headers.get("x-request-id") or response.headers.get("x-tos-request-id")
    code: str | None = None
    message = response.reason or "error"
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict):
        error = body["error"] if isinstance(body.get("error"), dict) else body
        code = error.get("code") or error.get("Code")
        message = error.get("message") or error.get("Message") or message
    retry_after: float | None = None
    header = response.headers.get("Retry-After")
    if header:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = None
    return SeedreamAPIError(response.status_code, code, redact_text(str(message))[:500], request_id, retry_after)
