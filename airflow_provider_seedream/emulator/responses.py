"""Responses the emulator sends: the service's and a gateway's error bodies, image streams and broken connections.

Broken connections are produced within ASGI: the response starts with a ``Content-Length``
larger than the bytes that follow, and the app returns without finishing the body. Uvicorn
then closes the connection (after flushing what was written), so the client reads a short
body followed by end-of-stream: ``requests`` raises ``ChunkedEncodingError`` (urllib3's
``ProtocolError``/``IncompleteRead``), ``httpx`` raises ``RemoteProtocolError``.
Uvicorn logs "ASGI callable returned without completing response." at ERROR for such a
response; :class:`DeliberateBreakFilter` drops that one message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from airflow_provider_seedream.emulator.images import ImageRecord

_UNFINISHED_MESSAGE = "ASGI callable returned without completing response."


def internal_service_error(request_id: str) -> Response:
    """The service's own 500: the model failed before it made anything (nothing is billed)."""
    return service_error(
        500,
        "InternalServiceError",
        "The service encountered an unexpected internal error.",
        request_id,
        error_type="InternalServerError",
        param="",
    )


def service_error(
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    error_type: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Return an error in the service's form: ``{"error": {code, message, param, type}}``.

    :param status: the HTTP status.
    :param code: the service's error code, such as ``InvalidParameter``.
    :param message: the text; ``Request id: <id>`` is appended as the service does.
    :param request_id: the request's id.
    :param error_type: the service's error type, such as ``BadRequest``.
    :param param: the request field at fault, if any.
    :param headers: extra headers, such as ``Retry-After``.
    """
    error: dict[str, Any] = {"code": code, "message": f"{message} Request id: {request_id}"}
    if param is not None:
        error["param"] = param
    error["type"] = error_type
    return Response(
        content=json.dumps({"error": error}, ensure_ascii=False),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


#: Reason phrases of the gateway errors, as nginx writes them.
GATEWAY_REASONS = {502: "Bad Gateway", 504: "Gateway Time-out"}


def gateway_error(status: int) -> Response:
    """Return a gateway's error page: HTML, no JSON error body, no image links.

    A proxy in front of the model answers this when it loses or stops waiting for the model's
    answer, so the client cannot tell whether the images were made.

    :param status: 502 or 504.
    """
    title = f"{status} {GATEWAY_REASONS[status]}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Response(content=page, status_code=status, media_type="text/html")


class BrokenResponse(Response):
    """A response whose connection breaks: headers promise ``declared`` bytes, fewer follow.

    :param partial: the bytes sent before the connection is closed.
    :param declared: the ``Content-Length`` sent; must exceed ``len(partial)``.
    :param status_code: the status sent in the headers.
    :param media_type: the ``Content-Type`` sent.
    """

    def __init__(
        self, partial: bytes, declared: int, status_code: int = 200, media_type: str = "application/json"
    ) -> None:
        if declared <= len(partial):
            raise ValueError("declared length must exceed the bytes sent")
        super().__init__(status_code=status_code, media_type=media_type)
        self._partial = partial
        self._declared = declared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers and the partial body, then return with the body unfinished."""
        headers = [
            (b"content-type", (self.media_type or "application/octet-stream").encode()),
            (b"content-length", str(self._declared).encode()),
        ]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        if self._partial:
            await send({"type": "http.response.body", "body": self._partial, "more_body": True})


class ImageStreamResponse(Response):
    """Stream an image record's bytes, optionally stopping short of its ``Content-Length``.

    :param record: the image to send.
    :param limit: when given, send only this many bytes and then break the connection.
    """

    def __init__(self, record: ImageRecord, limit: int | None = None) -> None:
        super().__init__(status_code=200, media_type=record.content_type)
        self._record = record
        self._limit = limit
        #: Whether the whole body is sent.
        self.complete = limit is None or limit >= record.length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers, then the bytes in chunks; finish the body only when complete."""
        record = self._record
        headers = [
            (b"content-type", record.content_type.encode()),
            (b"content-length", str(record.length).encode()),
            (b"etag", f'"{record.sha256[:32]}"'.encode()),
            (b"cache-control", b"private, max-age=86400"),
        ]
        # Putting the file together may draw bands the cache dropped: not on the event loop.
        parts = await asyncio.to_thread(record.parts)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in record.chunks(limit=self._limit, parts=parts):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class DeliberateBreakFilter(logging.Filter):
    """Drop uvicorn's error line for a response the emulator left unfinished on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return ``False`` for the unfinished-response message, ``True`` otherwise."""
        return record.getMessage() != _UNFINISHED_MESSAGE


def install_break_filter() -> None:
    """Attach :class:`DeliberateBreakFilter` to uvicorn's error logger, once."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, DeliberateBreakFilter) for existing in logger.filters):
        logger.addFilter(DeliberateBreakFilter())
