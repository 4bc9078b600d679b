"""Streamed answers (``stream: true``): server-sent events, one image at a time, as the service sends them.

The wire format, each event ending with a blank line and each ``event:`` name equal to its
``data.type`` (the JSON is on one line)::

    event: image_generation.partial_succeeded
    data: {"type": "image_generation.partial_succeeded", "model": "...", "created": 1732400000, "image_index": 0, "url": "https://...", "size": "2048x2048"}

    event: image_generation.partial_failed
    data: {"type": "image_generation.partial_failed", "model": "...", "created": 1732400020, "image_index": 1, "error": {"code": "OutputImageSensitiveContentDetected", "message": "... Request id: ..."}}

    event: image_generation.completed
    data: {"type": "image_generation.completed", "model": "...", "created": 1732400020, "usage": {"generated_images": 1, "output_tokens": 16384, "total_tokens": 16384}}

    data: [DONE]

A ``partial_succeeded`` event carries ``b64_json`` instead of ``url`` when the request asked for
it. Without group mode the single image streams the same way: one image event, ``completed``,
``[DONE]``.

Timing and answers, for a request that passed every check (those still answer plain JSON errors):

* the first image is made after ``latency`` (plus ``slow_seconds`` under a ``slow`` fault), each
  next one ``latency`` later, each latency with its own jitter (``latency_jitter``); each image is
  billed when it is made, and its event sent at once;
* the status line and headers (``200``, ``Content-Type: text/event-stream``) go out with the
  first event, so the faults decided before it still answer as without streaming: ``500``
  (nothing made) and the gateway's ``502``/``504`` (under ``bill_abandoned`` the model made the
  whole group) come after the first ``latency``;
* ``reset`` cuts the stream after a drawn number of images ``k`` (seeded by ``fault_seed``, from 0
  to the group size minus one): the first ``k`` events arrive whole, then the first bytes of
  the next one (its ``event:`` line and the start of its ``data:`` line, no URL), then the
  connection closes without the chunked body's end. The images from ``k`` on are made and billed
  at once, unanswered, under ``bill_abandoned``, and not at all otherwise;
* ``stream_error`` ends the stream after a drawn number of images ``k`` (drawn as for ``reset``):
  the first ``k`` events arrive whole and are billed, then an ``error`` event
  (``{"type": "error", "error": {"code": "InternalServiceError", ...}}``) and ``[DONE]``; the model
  makes nothing more;
* a client that leaves mid-stream has received the events sent before; the images not yet made
  are made and billed at once, unanswered, under ``bill_abandoned``, and not at all otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from airflow_provider_seedream.emulator.config import EmulatorConfig
from airflow_provider_seedream.emulator.generation import GenerationPlan, Item, make_item
from airflow_provider_seedream.emulator.images import ImageCache
from airflow_provider_seedream.emulator.responses import gateway_error, internal_service_error
from airflow_provider_seedream.emulator.signing import UrlSigner
from airflow_provider_seedream.emulator.state import EmulatorState

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
SUCCEEDED = "image_generation.partial_succeeded"
FAILED = "image_generation.partial_failed"
COMPLETED = "image_generation.completed"
ERROR = "error"
DONE = b"data: [DONE]\n\n"
_DISCONNECT_POLL_SECONDS = 0.1
# Work that goes on after its connection was cut: kept here so it is not collected mid-way.
_BACKGROUND: set[asyncio.Task[None]] = set()


def encode_event(payload: dict[str, Any]) -> bytes:
    """Return one server-sent event: ``event: <type>``, ``data: <json>``, a blank line."""
    return f"event: {payload['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def item_event(plan: GenerationPlan, item: Item) -> dict[str, Any]:
    """Return the event payload of one item: ``partial_succeeded`` or ``partial_failed``."""
    kind = FAILED if item.record is None else SUCCEEDED
    return {"type": kind, "model": plan.model, "created": int(item.created), "image_index": item.index, **item.data}


def cut_event(plan: GenerationPlan, index: int, created: float) -> bytes:
    """Return the first bytes of the event a cut stream was about to send: no URL, no end."""
    head = {"type": SUCCEEDED, "model": plan.model, "created": int(created), "image_index": index}
    return f"event: {SUCCEEDED}\ndata: {json.dumps(head, ensure_ascii=False)[:-1]}, ".encode()


async def wait_while_connected(request: Request, seconds: float) -> bool:
    """Sleep ``seconds``; return ``False`` as soon as the client is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        await asyncio.sleep(min(_DISCONNECT_POLL_SECONDS, remaining))
        if await request.is_disconnected():
            return False
    return not await request.is_disconnected()


class GenerationStream(Response):
    """The streamed answer to an accepted request: does the model's work while it sends the events.

    It owns the request's place in ``generation_in_flight`` (taken by the endpoint) and gives it
    back once every counter of the request is final, which may be after the connection closed.

    :param request: the request, to notice a client that leaves.
    :param plan: what to make.
    :param fault: the fault decided for the request.
    :param cut: under ``reset`` or ``stream_error``, how many images arrive before the stream is
        cut or fails; else ``None``.
    :param config: the knobs when the request arrived.
    :param state: where images and counters go.
    :param cache: where image bands are kept.
    :param signer: signs the image links.
    """

    def __init__(
        self,
        request: Request,
        plan: GenerationPlan,
        fault: str,
        cut: int | None,
        config: EmulatorConfig,
        state: EmulatorState,
        cache: ImageCache,
        signer: UrlSigner,
    ) -> None:
        super().__init__(status_code=200, media_type=EVENT_STREAM)
        self._request = request
        self._plan = plan
        self._fault = fault
        self._cut = cut
        self._config = config
        self._state = state
        self._cache = cache
        self._signer = signer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Make the images one by one and send each one's event; see the module's docstring."""
        handed_over = False
        try:
            handed_over = await self._serve(scope, receive, send)
        finally:
            if not handed_over:
                self._state.leave_generation()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request; return ``True`` when unfinished work was handed to a background task."""
        plan, config, state, fault = self._plan, self._config, self._state, self._fault
        identity = (plan.model, plan.prompt_sha256, plan.attempt)
        first_delay = state.latency(*identity, 0) + (config.slow_seconds if fault == "slow" else 0.0)
        connected = await wait_while_connected(self._request, first_delay)
        if fault == "500":  # the model failed before making anything: nothing to bill
            if not connected:
                state.count("abandoned")
                return False
            answer = internal_service_error(plan.request_id)
            state.count_status("generation_status", 500)
            await answer(scope, receive, send)
            return False
        if fault in ("502", "504"):
            await self._make_unanswered(range(plan.count))
            if not connected:
                state.count("abandoned")
                return False
            state.count_status("generation_status", int(fault))
            await gateway_error(int(fault))(scope, receive, send)
            return False

        started = False
        answered = 0
        index = 0  # the next image to make
        while connected and index < plan.count:
            if index:
                connected = await wait_while_connected(self._request, state.latency(*identity, index))
                if not connected:
                    break
            if index == self._cut and fault == "stream_error":
                if not started:
                    await self._start(send)
                error = {
                    "type": ERROR,
                    "error": {
                        "code": "InternalServiceError",
                        "message": (
                            f"The service encountered an unexpected internal error. Request id: {plan.request_id}"
                        ),
                    },
                }
                await send({"type": "http.response.body", "body": encode_event(error) + DONE, "more_body": False})
                state.count_status("generation_status", 200)
                return False
            if index == self._cut:
                if not started:
                    await self._start(send)
                partial = cut_event(plan, index, time.time())
                await send({"type": "http.response.body", "body": partial, "more_body": True})
                log.debug("Cutting stream of request %s after %d image(s)", plan.request_id, index)
                # Returning now closes the connection; the model's remaining work goes on behind it.
                task = asyncio.create_task(self._finish_cut(range(index, plan.count)))
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
                return True
            item = await asyncio.to_thread(make_item, plan, index, self._cache, self._signer)
            index += 1
            if await self._request.is_disconnected():
                connected = False
                self._bill(item, answered=False)
                break
            self._bill(item, answered=True)
            answered += item.record is not None
            if not started:
                await self._start(send)
                started = True
            await send({"type": "http.response.body", "body": encode_event(item_event(plan, item)), "more_body": True})
        if not connected:
            state.count("abandoned")
            log.debug("Client left streamed request %s before image %d", plan.request_id, index)
            await self._make_unanswered(range(index, plan.count))
            return False
        completed = {"type": COMPLETED, "model": plan.model, "created": int(time.time()), "usage": plan.usage(answered)}
        if not started:
            await self._start(send)
        await send({"type": "http.response.body", "body": encode_event(completed) + DONE, "more_body": False})
        state.count_status("generation_status", 200)
        return False

    async def _start(self, send: Send) -> None:
        headers = [(b"content-type", EVENT_STREAM.encode()), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    def _bill(self, item: Item, *, answered: bool) -> None:
        """Count an item made: bill its image, unless nobody gets it and ``bill_abandoned`` is off."""
        if not answered and not self._config.bill_abandoned:
            return
        records = [] if item.record is None else [item.record]
        self._state.add_images(records, 0 if records else 1)
        if records and not answered:
            self._state.mark_unanswered(records)

    async def _make_unanswered(self, indices: Iterable[int]) -> None:
        """Make and bill, under ``bill_abandoned``, the images whose answer never reaches the client."""
        if not self._config.bill_abandoned:
            return
        for index in indices:
            item = await asyncio.to_thread(make_item, self._plan, index, self._cache, self._signer)
            self._bill(item, answered=False)

    async def _finish_cut(self, indices: Iterable[int]) -> None:
        try:
            await self._make_unanswered(indices)
        finally:
            self._state.leave_generation()
