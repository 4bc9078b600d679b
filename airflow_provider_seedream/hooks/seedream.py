"""SeedreamHook: the one place that speaks HTTP to the Seedream image endpoint."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import tenacity
from requests.adapters import HTTPAdapter

from airflow.sdk import BaseHook
from airflow_provider_seedream import CONNECTION_UI, __version__
from airflow_provider_seedream.exceptions import (
    RETRYABLE_STATUSES,
    SeedreamAPIError,
    SeedreamDownloadError,
    SeedreamValidationError,
)
from airflow_provider_seedream.image_formats import CONTENT_TYPES, SNIFF_BYTES, sniff_format
from airflow_provider_seedream.redaction import redact_text, redact_url
from airflow_provider_seedream.results import DownloadedImage, GeneratedImage, GenerationResult
from airflow_provider_seedream.validation import DEFAULT_MODEL, validate_request

if TYPE_CHECKING:
    from airflow.sdk import Connection

DEFAULT_BASE_URL = "https://api.cometapi.com"
ARK_HOST_SUFFIXES = ("volces.com", "bytepluses.com")
ARK_PATH = "/api/v3/images/generations"
OPENAI_PATH = "/v1/images/generations"
DEFAULT_MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024
DOWNLOAD_CHUNK = 256 * 1024
B64_CHUNK = 4 * 256 * 1024  # a multiple of 4 characters: decodes on its own


def _is_transient_http_error(error: BaseException) -> bool:
    return isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))


def _generation_retryable(error: BaseException) -> bool:
    if isinstance(error, SeedreamAPIError):
        return error.retryable
    return _is_transient_http_error(error)


def _download_retryable(error: BaseException) -> bool:
    return isinstance(error, SeedreamDownloadError) and error.retryable


class _BackoffHonouringRetryAfter(tenacity.wait.wait_base):
    """Exponential backoff with jitter that waits at least what ``Retry-After`` asked for."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self._backoff = tenacity.wait_random_exponential(multiplier=minimum, max=maximum)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        backoff = self._backoff(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return max(backoff, retry_after) if retry_after is not None else backoff


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
            raise SeedreamDownloadError("the downloaded bytes are not a PNG, JPEG, WebP, GIF or BMP image", retryable=False)
        content_type = CONTENT_TYPES[fmt]
        if declared_type and declared_type.startswith("image/") and declared_type.split(";")[0].strip() != content_type:
            if not (fmt == "jpeg" and declared_type.startswith("image/jpg")):
                raise SeedreamDownloadError(
                    f"the server declared {declared_type} but the bytes are {fmt}", retryable=False
                )
        return DownloadedImage(bytes=self.size, sha256=self._hash.hexdigest(), format=fmt, content_type=content_type)


class SeedreamHook(BaseHook):
    """
    Interact with the Seedream image-generation endpoint (CometAPI, VolcEngine Ark, BytePlus ModelArk).

    The connection's host is the base URL (default ``https://api.cometapi.com``; the Ark and
    ModelArk hosts work by changing the host alone), its password the API key. Its extras hold
    defaults: ``model``, ``parameters`` (request fields sent with every request),
    ``endpoint_path``, ``timeout`` and ``max_retries``.

    One pooled ``requests`` session serves every thread that shares the hook.

    :param seedream_conn_id: the Airflow connection to use.
    :param timeout: read timeout in seconds of a generation request (a 2K image takes 25-45 s).
    :param connect_timeout: connection timeout in seconds.
    :param max_retries: retries of a rate-limited (429), failed (5xx) or broken request or download.
    :param retry_min_wait: base of the exponential backoff between retries, in seconds.
    :param retry_max_wait: upper bound of the backoff, in seconds (a longer ``Retry-After`` is honoured).
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
        retry_min_wait: float = 1.0,
        retry_max_wait: float = 60.0,
        pool_maxsize: int = 32,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> None:
        super().__init__()
        self.seedream_conn_id = seedream_conn_id
        self._timeout = timeout
        self.connect_timeout = connect_timeout
        self._max_retries = max_retries
        self.retry_min_wait = retry_min_wait
        self.retry_max_wait = retry_max_wait
        self.pool_maxsize = pool_maxsize
        self.max_download_bytes = max_download_bytes
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._settings: dict[str, Any] | None = None

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
        extras = conn.extra_dejson
        parameters = extras.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError(f"connection {self.seedream_conn_id!r}: extra 'parameters' must be an object")
        if conn.password:
            from airflow.sdk.log import mask_secret

            mask_secret(conn.password)
        return {
            "endpoint": endpoint_url(conn.host, conn.schema, conn.port, extras.get("endpoint_path")),
            "api_key": conn.password or "",
            "model": extras.get("model") or DEFAULT_MODEL,
            "parameters": parameters,
            "timeout": float(self._timeout or extras.get("timeout") or 300.0),
            "max_retries": int(self._max_retries if self._max_retries is not None else extras.get("max_retries", 6)),
        }

    def get_conn(self) -> requests.Session:
        """Return the pooled session shared by every thread that uses this hook."""
        self.settings  # read the connection first: an unknown connection fails here
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
            self.log.warning("%s", warning)
        return body

    def generate_images(self, prompt: str, **parameters: Any) -> GenerationResult:
        """
        Send one generation request and return its images, usage and model.

        Every request field of the endpoint can be passed under its API name (``model``,
        ``size``, ``response_format``, ``image``, ``watermark``, ``guidance_scale``, ``seed``,
        ``sequential_image_generation``, ``sequential_image_generation_options``,
        ``output_format``...); fields this package does not know are sent as given.
        Rate limits (429), server errors (5xx) and broken connections are retried with
        backoff, honouring ``Retry-After``; other errors are raised at once.

        :raises SeedreamValidationError: a field is invalid; nothing was sent.
        :raises SeedreamAPIError: the endpoint refused the request.
        """
        return self.send_request(self.build_request(prompt, **parameters))

    def send_request(self, body: dict[str, Any]) -> GenerationResult:
        """Check and send a body made by :meth:`build_request`; see :meth:`generate_images`."""
        validate_request(body)
        if body.get("stream"):
            raise SeedreamValidationError("stream", "streamed responses are not supported by the hook; leave it false")
        session = self.get_conn()
        settings = self.settings
        self.log.debug("Requesting images from %s with model %s", settings["endpoint"], body.get("model"))
        return self._retrying(_generation_retryable, "generation")(self._post, session, body)

    def _post(self, session: requests.Session, body: dict[str, Any]) -> GenerationResult:
        settings = self.settings
        response = session.post(
            settings["endpoint"],
            json=body,
            headers={"Authorization": f"Bearer {settings['api_key']}"},
            timeout=(self.connect_timeout, settings["timeout"]),
        )
        with response:
            request_id = response.headers.get("x-request-id")
            if response.status_code != 200:
                raise api_error(response)
            try:
                payload = response.json()
            except ValueError as error:
                raise SeedreamAPIError(502, "InvalidResponse", "the endpoint answered 200 with a body that is not JSON", request_id) from error
        return GenerationResult.from_response(payload, request_id=request_id)

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
        if image.b64_json is not None:
            return self._decode_b64(image.b64_json, fileobj)
        url = image.url or ""
        if urlsplit(url).scheme not in ("http", "https"):
            raise SeedreamDownloadError(f"refusing to download {redact_url(url)}: only http(s) URLs are followed", retryable=False)
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
        try:
            response = session.send(prepared, stream=True, timeout=(self.connect_timeout, 120.0))
        except requests.RequestException as error:
            raise SeedreamDownloadError(f"download of {shown} failed: {type(error).__name__}") from None
        with response:
            if response.status_code != 200:
                detail = api_error(response)
                raise SeedreamDownloadError(
                    f"download of {shown} failed: HTTP {response.status_code} {detail.code or ''}".rstrip(),
                    status=response.status_code,
                    retryable=response.status_code in RETRYABLE_STATUSES,
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

        Sends a request with no prompt: the service checks the key first, then refuses the
        request for its missing prompt, so an accepted key costs nothing.
        """
        try:
            settings = self.settings
            response = self.get_conn().post(
                settings["endpoint"],
                json={"model": settings["model"]},
                headers={"Authorization": f"Bearer {settings['api_key']}"},
                timeout=(self.connect_timeout, 30.0),
            )
        except Exception as error:
            return False, f"Could not reach the endpoint: {type(error).__name__}: {error}"
        with response:
            if response.status_code in (400, 422):
                return True, f"Connection works: the key was accepted by {settings['endpoint']}."
            if response.status_code == 200:
                return True, "Connection works (the endpoint answered a request without a prompt)."
            return False, str(api_error(response))


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
        error = body.get("error") if isinstance(body.get("error"), dict) else body
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
