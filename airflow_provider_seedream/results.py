"""Typed results of a generation request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any

from airflow_provider_seedream.redaction import redact_url


@dataclass(frozen=True)
class GeneratedImage:
    """One item of the response's ``data`` list: an image or a per-item error.

    :param index: the item's position in ``data``.
    :param url: a signed link to download at once (``response_format="url"``).
    :param b64_json: the image's bytes in base64 (``response_format="b64_json"``).
    :param size: the image's size as ``WxH``.
    :param error_code: the service's code when this item failed, else ``None``.
    :param error_message: the service's message when this item failed.
    :param extra: any other fields the service returned for the item.
    :param spool: a ``b64_json`` image already decoded to a temporary file, with what was
        learnt while decoding it (see ``SeedreamHook.send_request(spool_images=True)``).
    """

    index: int
    url: str | None = None
    b64_json: str | None = field(default=None, repr=False)
    size: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    spool: tuple[IO[bytes], DownloadedImage] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether this item holds an image."""
        return self.error_code is None and (self.url is not None or self.b64_json is not None or self.spool is not None)

    def __repr__(self) -> str:
        if not self.ok:
            return f"GeneratedImage(index={self.index}, error_code={self.error_code!r})"
        if self.url:
            source = redact_url(self.url)
        elif self.spool is not None:
            source = f"b64_json<{self.spool[1].bytes} bytes decoded>"
        else:
            source = f"b64_json<{len(self.b64_json or '')} chars>"
        return f"GeneratedImage(index={self.index}, size={self.size!r}, source={source!r})"

    @classmethod
    def from_item(cls, index: int, item: dict[str, Any]) -> GeneratedImage:
        """Build from one item of the response's ``data`` list."""
        known = {"url", "b64_json", "size", "error"}
        error = item.get("error") or None
        return cls(
            index=index,
            url=item.get("url"),
            b64_json=item.get("b64_json"),
            size=item.get("size"),
            error_code=(error.get("code") or "UnknownError") if isinstance(error, dict) else None,
            error_message=error.get("message", "") if isinstance(error, dict) else None,
            extra={k: v for k, v in item.items() if k not in known},
        )


@dataclass(frozen=True)
class GenerationResult:
    """The response to one generation request.

    :param images: every item of ``data``, successes and per-item errors alike.
    :param usage: the service's ``usage`` object (``generated_images`` is what is billed).
    :param model: the model that answered.
    :param created: the service's creation timestamp.
    :param request_id: the ``x-request-id`` the service gave, if any.
    """

    images: list[GeneratedImage]
    usage: dict[str, Any]
    model: str | None
    created: int | None = None
    request_id: str | None = None

    @property
    def succeeded(self) -> list[GeneratedImage]:
        """The items that hold an image."""
        return [image for image in self.images if image.ok]

    @property
    def failed(self) -> list[GeneratedImage]:
        """The items that carry an error."""
        return [image for image in self.images if not image.ok]

    @classmethod
    def from_response(cls, body: dict[str, Any], request_id: str | None = None) -> GenerationResult:
        """Build from the endpoint's JSON body."""
        data = body.get("data") or []
        return cls(
            images=[GeneratedImage.from_item(i, item) for i, item in enumerate(data)],
            usage=dict(body.get("usage") or {}),
            model=body.get("model"),
            created=body.get("created"),
            request_id=request_id,
        )


STREAM_SUCCEEDED = "image_generation.partial_succeeded"
STREAM_FAILED = "image_generation.partial_failed"
STREAM_COMPLETED = "image_generation.completed"


@dataclass(frozen=True)
class StreamEvent:
    """One event of a streamed generation (``stream: true``).

    :param type: the service's event type: ``image_generation.partial_succeeded``,
        ``image_generation.partial_failed`` or ``image_generation.completed``.
    :param image: the image (or per-item error) of a partial event, at its ``image_index``.
    :param usage: the usage of the whole request, on ``completed``.
    :param model: the model that answered.
    :param request_id: the ``x-request-id`` the service gave, if any.
    """

    type: str
    image: GeneratedImage | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    request_id: str | None = None

    @property
    def completed(self) -> bool:
        """Whether this is the last event, with the usage."""
        return self.type == STREAM_COMPLETED


@dataclass(frozen=True)
class DownloadedImage:
    """What was written when an image was downloaded or decoded.

    :param bytes: how many bytes were written.
    :param sha256: the hex SHA-256 of those bytes.
    :param format: the image format recognised from the bytes (``png``, ``jpeg``...).
    :param content_type: the matching MIME type.
    """

    bytes: int
    sha256: str
    format: str
    content_type: str
