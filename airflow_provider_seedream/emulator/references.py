"""Fetching http(s) reference images the way the service does, to check they are images."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from airflow_provider_seedream.validation import MAX_REFERENCE_BYTES

if TYPE_CHECKING:
    import httpx

# Leading bytes of the formats the service accepts as reference images.
_SIGNATURES = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),  # PNG
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"BM"),  # BMP
    (0, b"II*\x00"),  # TIFF, little-endian
    (0, b"MM\x00*"),  # TIFF, big-endian
    (8, b"WEBP"),  # RIFF....WEBP
    (4, b"ftyp"),  # HEIC/HEIF
)


class ReferenceFetchError(Exception):
    """A reference image could not be fetched or is not an image.

    :param index: the reference's position in ``image``.
    :param message: what went wrong.
    """

    def __init__(self, index: int, message: str) -> None:
        self.index = index
        super().__init__(message)


def looks_like_image(head: bytes) -> bool:
    """Whether ``head`` starts like a JPEG, PNG, GIF, BMP, TIFF, WEBP or HEIC/HEIF file."""
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _SIGNATURES)


async def fetch_references(urls: list[tuple[int, str]], timeout: float) -> None:
    """Fetch each ``(index, url)`` at once and check it is an image of at most 30 MB.

    :raises ReferenceFetchError: for the first reference that fails.
    """
    import httpx

    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
        results = await asyncio.gather(*(_fetch_one(client, index, url) for index, url in urls), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _fetch_one(client: httpx.AsyncClient, index: int, url: str) -> None:
    import httpx

    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ReferenceFetchError(index, f"downloading image[{index}] answered HTTP {response.status_code}")
            received = 0
            head = b""
            async for chunk in response.aiter_bytes():
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                received += len(chunk)
                if received > MAX_REFERENCE_BYTES:
                    raise ReferenceFetchError(index, f"image[{index}] is larger than {MAX_REFERENCE_BYTES:,} bytes")
    except httpx.HTTPError as error:
        raise ReferenceFetchError(index, f"downloading image[{index}] failed: {type(error).__name__}") from error
    if not looks_like_image(head):
        raise ReferenceFetchError(
            index, f"image[{index}] is not a supported image (jpeg, png, webp, bmp, tiff, gif, heic)"
        )
