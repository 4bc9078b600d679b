"""The emulator's FastAPI app: the service's generation endpoint, image files and the control API.

Service contract (as the real hosts answer):

* ``POST /v1/images/generations`` and ``POST /api/v3/images/generations``
* ``GET /_emulator/files/<id>.<ext>?<signature>``: the signed image links

Control API (emulator only, no auth):

* ``GET /_emulator/health``
* ``GET /_emulator/config`` and ``POST /_emulator/config`` (JSON of the knobs to change)
* ``GET /_emulator/stats``, ``GET /_emulator/images``
* ``POST /_emulator/reset``

A generation request goes through one path: checks (auth, body, validation), the account's
rate limit (``images_per_minute``: 429 ``ModelAccountIpmRateLimitExceeded`` with ``Retry-After``
when the model's bucket holds too few images), the refusal marker and reference images, the fault
decision, then either an immediate refusal (``429``, ``quota``, ``503``) or the model's work:
``latency`` plus its jitter (per image under ``latency_per_image``; plus ``slow_seconds`` for
``slow``), during which a client may leave, the images, and the answer (the images, a ``500``, a gateway ``502`` or
``504``, or a broken connection). Under ``bill_abandoned`` images whose answer never reaches
the client (it left, the connection broke, a gateway lost the answer) are still made and billed,
and counted in ``billed_unanswered``; otherwise such a request bills nothing.

A request with ``stream: true`` is answered with server-sent events, one image at a time (see
:mod:`~airflow_provider_seedream.emulator.streaming`), with or without group mode. Fields set to
JSON ``null`` count as absent, as the service treats them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_provider_seedream.emulator.config import UNANSWERED_FAULTS, EmulatorConfig
from airflow_provider_seedream.emulator.generation import (
    GenerationOutcome,
    GenerationPlan,
    image_count,
    produce,
    prompt_digest,
    resolve_format,
    resolve_size,
)
from airflow_provider_seedream.emulator.images import MAX_RENDER_PIXELS, ImageCache, shared_cache
from airflow_provider_seedream.emulator.painting import caption_of
from airflow_provider_seedream.emulator.references import ReferenceFetchError, fetch_references
from airflow_provider_seedream.emulator.responses import (
    BrokenResponse,
    ImageStreamResponse,
    gateway_error,
    install_break_filter,
    internal_service_error,
    service_error,
)
from airflow_provider_seedream.emulator.signing import ACCESS_DENIED_BODY, UrlSigner, matches
from airflow_provider_seedream.emulator.state import EmulatorState
from airflow_provider_seedream.emulator.streaming import GenerationStream, wait_while_connected
from airflow_provider_seedream.exceptions import SeedreamValidationError
from airflow_provider_seedream.validation import KNOWN_MODELS, validate_request, without_nulls

log = logging.getLogger(__name__)

GENERATION_PATHS = ("/v1/images/generations", "/api/v3/images/generations")
_REQUIRED_FIELDS = ("model", "prompt")
# Faults under which the model makes the images, whether or not their answer reaches the client.
_MODEL_FAULTS = ("ok", "slow", *UNANSWERED_FAULTS)
# A reset answers headers that promise this many bytes, then only the first few.
_RESET_DECLARED = 4096
_RESET_PARTIAL = b'{"created": '
_NO_SUCH_KEY_BODY = b'{"Code":"NoSuchKey","Message":"The specified key does not exist.","EC":"0026-00000001"}'
_STORAGE_ERROR_BODY = (
    b'{"Code":"InternalError","Message":"We encountered an internal error. Please try again.","EC":"0005-00000001"}'
)


class RequestIdMiddleware:
    """Give every request an id (``request.state.request_id``) and answer it in ``x-request-id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Set the request id in the scope's state and add the header to the response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(10)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class _Abandoned(Response):
    """Stands for the answer to a client that left: nothing reaches it."""

    def __init__(self) -> None:
        super().__init__(status_code=408)


def create_app(config: EmulatorConfig | None = None, *, cache: ImageCache | None = None) -> FastAPI:
    """Build the emulator app.

    :param config: the knobs at start (and after each reset); defaults to :class:`EmulatorConfig`.
    :param cache: where encoded image bands are kept; defaults to the process-wide cache.
    """
    state = EmulatorState(config or EmulatorConfig())
    signer = UrlSigner()
    images = cache or shared_cache()
    install_break_filter()

    app = FastAPI(title="Seedream emulator", description="A local emulator of the Seedream image endpoint.")
    app.add_middleware(RequestIdMiddleware)
    app.state.emulator = state

    async def generate_images(request: Request) -> Response:
        # Counted in flight until every counter of the request is final, so a caller that waits
        # for ``generation_in_flight == 0`` reads complete stats. A stream does its work while it
        # is sent, after this returns: it leaves the count itself.
        state.enter_generation()
        streamed = False
        try:
            response = await _generation(request, state, signer, images)
            streamed = isinstance(response, GenerationStream)
            if not isinstance(response, (BrokenResponse, _Abandoned, GenerationStream)):
                state.count_status("generation_status", response.status_code)
            return response
        finally:
            if not streamed:
                state.leave_generation()

    for path in GENERATION_PATHS:
        app.add_api_route(path, generate_images, methods=["POST"], include_in_schema=True, summary="Generate images")

    @app.get("/_emulator/files/{file_name}", summary="Download a generated image (signed link)")
    async def download(file_name: str, request: Request) -> Response:
        state.count("downloads")
        response = _download(file_name, request, state)
        if not isinstance(response, ImageStreamResponse) or response.complete:
            state.count_status("download_status", response.status_code)
        return response

    @app.get("/v1/models", summary="The models the key may use (OpenAI-compatible; free)")
    async def models(request: Request) -> Response:
        if not _authorized(request, state.config):
            return service_error(
                401,
                "AuthenticationError",
                "The API key in the request is missing or invalid.",
                request.state.request_id,
                error_type="Unauthorized",
            )
        listed = [{"id": model, "object": "model", "owned_by": "bytedance"} for model in KNOWN_MODELS]
        return JSONResponse({"object": "list", "data": listed})

    @app.get("/_emulator/health", summary="Whether the emulator is up")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "renders": images.renders, "captions": images.captions}

    @app.get("/_emulator/config", summary="The current knobs")
    async def get_config() -> dict[str, Any]:
        return state.config_view()

    @app.post("/_emulator/config", summary="Change knobs (JSON of the fields to change)")
    async def post_config(request: Request) -> Response:
        try:
            changes = json.loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of knobs to change")
            return JSONResponse(state.update_config(changes))
        except ValueError as error:
            return JSONResponse(
                {"error": {"code": "InvalidParameter", "message": str(error), "type": "BadRequest"}}, status_code=400
            )

    @app.get("/_emulator/stats", summary="Counters since the last reset")
    async def get_stats() -> dict[str, Any]:
        return state.stats()

    @app.get("/_emulator/images", summary="Images generated since the last reset")
    async def get_images() -> list[dict[str, Any]]:
        return state.images()

    @app.post("/_emulator/reset", summary="Clear counters, images and scripts; restore the knobs given at start")
    async def reset() -> dict[str, str]:
        state.reset()
        return {"status": "reset"}

    return app


def _authorized(request: Request, config: EmulatorConfig) -> bool:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return False
    return config.api_key is None or hmac.compare_digest(key.encode(), config.api_key.encode())


async def _generation(request: Request, state: EmulatorState, signer: UrlSigner, cache: ImageCache) -> Response:
    request_id: str = request.state.request_id
    config = state.config

    def bad_request(code: str, message: str, param: str | None = None) -> Response:
        return service_error(400, code, message, request_id, error_type="BadRequest", param=param)

    if not _authorized(request, config):
        return service_error(
            401,
            "AuthenticationError",
            "The API key in the request is missing or invalid.",
            request_id,
            error_type="Unauthorized",
        )
    try:
        body = json.loads(await request.body())
    except ValueError:
        return bad_request("InvalidParameter", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return bad_request("InvalidParameter", "The request body must be a JSON object.")
    body = without_nulls(body)
    for name in _REQUIRED_FIELDS:
        if name not in body:
            return bad_request(
                "MissingParameter", f"The request failed because it is missing the `{name}` parameter.", name
            )
    try:
        validate_request(body)
    except SeedreamValidationError as error:
        return bad_request("InvalidParameter", str(error), error.field)
    prompt: str = body["prompt"]
    if config.missing_model_marker and config.missing_model_marker in str(body["model"]):
        return service_error(
            404,
            "InvalidEndpointOrModel.NotFound",
            f"The model or endpoint {body['model']} does not exist or you do not have access to it.",
            request_id,
            error_type="NotFound",
            param="model",
        )
    if config.refuse_marker and config.refuse_marker in prompt:
        state.count_fault("refused")
        return bad_request(
            "InputTextSensitiveContentDetected",
            "The request failed because the input text may contain sensitive information.",
            "prompt",
        )
    width, height = resolve_size(body)
    if width * height > MAX_RENDER_PIXELS:
        return bad_request(
            "InvalidParameter", f"size: the emulator renders at most {MAX_RENDER_PIXELS:,} pixels.", "size"
        )
    model: str = body["model"]
    count = image_count(body)
    wait = state.admit(model, count)
    if wait is not None:
        return service_error(
            429,
            "ModelAccountIpmRateLimitExceeded",
            f"The request exceeded the images per minute (IPM) limit of your account for model {model}. "
            "Please try again later.",
            request_id,
            error_type="TooManyRequests",
            param="",
            headers={"Retry-After": str(wait)},
        )

    image = body.get("image")
    references = [image] if isinstance(image, str) else list(image or [])
    if references:
        state.count("references", len(references))
        state.count("reference_requests")
        remote = [(index, url) for index, url in enumerate(references) if url.startswith(("http://", "https://"))]
        if remote and config.fetch_references:
            try:
                await fetch_references(remote, config.reference_timeout)
            except ReferenceFetchError as error:
                return bad_request("InvalidImageURL.ImageDownloadFailed", str(error), f"image[{error.index}]")

    digest = prompt_digest(prompt)
    draw = state.next_generation_fault(model, digest)
    fault = draw.fault
    if fault != "ok":
        log.info("Injecting fault %s into generation request %s", fault, request_id)
        state.count_fault(fault)
    refusal = _refusal(fault, request_id, config)
    if refusal is not None:
        return refusal

    failing = state.draw_item_failures(count, config.rate_item_error, model, digest, draw.attempt)
    if config.item_error_marker and config.item_error_marker in prompt:
        failing.add(count - 1)
    plan = GenerationPlan(
        model=model,
        prompt_sha256=digest,
        width=width,
        height=height,
        fmt=resolve_format(body),
        count=count,
        failing=frozenset(failing),
        response_format=body.get("response_format", "url"),
        request_id=request_id,
        base_url=str(request.base_url),
        url_ttl=config.url_ttl,
        attempt=draw.attempt,
        caption=caption_of(prompt),
    )
    if body.get("stream"):
        cut = state.draw_cut(count, model, digest, draw.attempt) if fault in ("reset", "stream_error") else None
        return GenerationStream(request, plan, fault, cut, config, state, cache, signer)
    return await _answer(request, plan, fault, config, state, cache, signer)


def _arrived(fault: str, config: EmulatorConfig, count: int) -> int:
    """How many items of an answer reach the client before a ``reset`` cuts it (``cut_after``, else none)."""
    if fault != "reset" or config.cut_after is None:
        return 0
    return min(config.cut_after, count - 1)


def cut_answer(body: bytes, items: int) -> bytes:
    """The first bytes of an answer cut after its first ``items`` items: those whole, nothing of the rest."""
    answer = json.loads(body)
    head = json.dumps({key: value for key, value in answer.items() if key not in ("data", "usage")}, ensure_ascii=False)
    data = ", ".join(json.dumps(item, ensure_ascii=False) for item in answer["data"][:items])
    return (head[:-1] + ', "data": [' + data + (", " if items else "")).encode("utf-8")


async def _answer(
    request: Request,
    plan: GenerationPlan,
    fault: str,
    config: EmulatorConfig,
    state: EmulatorState,
    cache: ImageCache,
    signer: UrlSigner,
) -> Response:
    """Do the model's work for an accepted request and answer it as ``fault`` says."""
    identity = (plan.model, plan.prompt_sha256, plan.attempt)
    images = plan.count if config.latency_per_image else 1
    delay = sum(state.latency(*identity, index) for index in range(images))
    delay += config.slow_seconds if fault == "slow" else 0.0
    connected = await wait_while_connected(request, delay)
    if connected and fault in ("500", "stream_error"):
        return internal_service_error(plan.request_id)
    delivered = connected and fault not in UNANSWERED_FAULTS
    outcome: GenerationOutcome | None = None
    # The model finishes its images whether or not anyone still waits for them; whether the
    # service then bills images whose answer is lost is what bill_abandoned decides.
    if fault in _MODEL_FAULTS and (delivered or config.bill_abandoned):
        outcome = await asyncio.to_thread(produce, plan, cache, signer)
        if delivered and await request.is_disconnected():
            connected = delivered = False  # the client left while its images were made
        if delivered or config.bill_abandoned:
            state.add_images(outcome.records, outcome.item_errors)
            if not delivered:
                arrived = _arrived(fault, config, plan.count)
                state.mark_unanswered([record for record in outcome.records if record.index >= arrived])
    if not connected:
        state.count("abandoned")
        log.debug("Client left generation request %s before its answer", plan.request_id)
        return _Abandoned()
    if fault == "reset":
        if config.cut_after is not None and outcome is not None:
            return BrokenResponse(
                cut_answer(outcome.body, _arrived(fault, config, plan.count)), declared=len(outcome.body)
            )
        return BrokenResponse(_RESET_PARTIAL, declared=_RESET_DECLARED)
    if fault in UNANSWERED_FAULTS:
        return gateway_error(int(fault))
    assert outcome is not None, "a delivered answer always has its images"
    return Response(content=outcome.body, media_type="application/json")


def _refusal(fault: str, request_id: str, config: EmulatorConfig) -> Response | None:
    """Return the answer of a fault that refuses the request at once, before any work; else ``None``."""
    if fault == "quota":
        return service_error(
            429,
            "QuotaExceeded",
            "You have exceeded the quota of your account for this model.",
            request_id,
            error_type="TooManyRequests",
            param="",
        )
    if fault == "spending_cap":
        return service_error(
            429,
            "SetLimitExceeded",
            "Your account has reached the spending limit set for this model. Raise the limit to continue.",
            request_id,
            error_type="TooManyRequests",
            param="",
        )
    if fault == "overdue":
        return service_error(
            403,
            "AccountOverdueError",
            "Your account has an overdue balance.",
            request_id,
            error_type="Forbidden",
            param="",
        )
    if fault == "429":
        return service_error(
            429,
            "RequestBurstTooFast",
            "The request was rejected because the request rate increased too fast. Please slow down.",
            request_id,
            error_type="TooManyRequests",
            param="",
            headers={"Retry-After": f"{config.retry_after:g}"},
        )
    if fault == "503":
        return service_error(
            503,
            "ServiceUnavailable",
            "The service is temporarily unavailable. Please try again later.",
            request_id,
            error_type="ServiceUnavailable",
            param="",
        )
    return None


def _download(file_name: str, request: Request, state: EmulatorState) -> Response:
    image_id, _, _ = file_name.partition(".")
    record = state.image(image_id)
    if record is None or record.file_name != file_name:
        return Response(_NO_SUCH_KEY_BODY, status_code=404, media_type="application/json")
    if not matches(record.query, request.scope.get("query_string", b"")) or time.time() >= record.expires_at:
        state.count_fault("denied")
        return Response(ACCESS_DENIED_BODY, status_code=403, media_type="application/json")
    fault = state.next_download_fault(record)
    if fault != "ok":
        log.info("Injecting fault %s into download of %s", fault, image_id)
    if fault == "500":
        state.count_fault("download_500")
        return Response(_STORAGE_ERROR_BODY, status_code=500, media_type="application/json")
    if fault == "denied":
        state.count_fault("denied")
        return Response(ACCESS_DENIED_BODY, status_code=403, media_type="application/json")
    if fault == "truncate":
        state.count_fault("truncate")
        return ImageStreamResponse(record, limit=record.length // 2)
    state.count("downloads_ok")
    return ImageStreamResponse(record)
