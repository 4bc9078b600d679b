"""Rendered images: one cached base per size and format, made unique per served image by a tag.

Rendering a 4K image takes about a second, so each ``(width, height, format)`` is rendered
once and kept in :class:`ImageCache`. Each served image is the base with a small per-image
tag inserted where the format allows free text, so every image has its own bytes and sha256
while staying a valid file:

* PNG: a ``tEXt`` chunk (with its CRC) just before ``IEND``;
* JPEG: a ``COM`` segment just after the ``SOI`` marker.

An :class:`ImageRecord` holds only the tag and a reference to the shared base; its bytes
are streamed as base prefix, tag, base suffix.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Formats the emulator renders, as named in the request's ``output_format``.
FORMATS = ("png", "jpeg")
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
EXTENSIONS = {"png": "png", "jpeg": "jpeg"}
#: The largest image the emulator renders, in pixels.
MAX_RENDER_PIXELS = 36_000_000
CHUNK_SIZE = 1024 * 1024

_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8"
# Noise amplitudes (out of 256) chosen so file sizes resemble real generated images:
# a 2048x2048 JPEG is about 1.2 MB, a 4096x4096 JPEG about 5 MB, a 2048x2048 PNG about 7 MB.
_NOISE_AMPLITUDE = {"jpeg": 32, "png": 8}
_JPEG_QUALITY = 90
_PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True, eq=False)
class RenderedBase:
    """One rendered image, shared by every served image of its size and format.

    :param width: width in pixels.
    :param height: height in pixels.
    :param fmt: ``png`` or ``jpeg``.
    :param data: the encoded file.
    :param insert_at: the byte offset where a per-image tag goes.
    """

    width: int
    height: int
    fmt: str
    data: bytes = field(repr=False)
    insert_at: int

    @property
    def size(self) -> str:
        """The size as ``WxH``."""
        return f"{self.width}x{self.height}"


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One generated image: metadata, its tag and the base it is made from.

    :param image_id: the image's id, also its file name on the emulator.
    :param base: the shared rendered base.
    :param tag: the bytes inserted into the base at ``base.insert_at``.
    :param sha256: hex sha256 of the exact bytes served.
    :param length: the number of bytes served.
    :param prompt_sha256: hex sha256 of the prompt (the prompt itself is not kept).
    :param created: unix time of generation.
    :param request_id: the generation request's id.
    :param index: the image's position in the response's ``data``.
    :param query: the signature query string issued with the image's link.
    :param expires_at: unix time after which the link is refused.
    :param draw_key: names the image the same way on every run (model, prompt digest, the
        generation attempt and ``index``), unlike ``image_id``: seeded download faults derive from it.
    """

    image_id: str
    base: RenderedBase = field(repr=False)
    tag: bytes = field(repr=False)
    sha256: str
    length: int
    prompt_sha256: str
    created: float
    request_id: str
    index: int
    query: str = field(default="", repr=False)
    expires_at: float = float("inf")
    draw_key: str = field(default="", repr=False)

    @property
    def fmt(self) -> str:
        """``png`` or ``jpeg``."""
        return self.base.fmt

    @property
    def size(self) -> str:
        """The size as ``WxH``."""
        return self.base.size

    @property
    def content_type(self) -> str:
        """The MIME type served."""
        return CONTENT_TYPES[self.base.fmt]

    @property
    def file_name(self) -> str:
        """The file name under which the emulator serves the image."""
        return f"{self.image_id}.{EXTENSIONS[self.base.fmt]}"

    def chunks(self, limit: int | None = None, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the served bytes in chunks, stopping after ``limit`` bytes when given."""
        data = self.base.data
        cut = self.base.insert_at
        remaining = self.length if limit is None else min(limit, self.length)
        for part in (memoryview(data)[:cut], memoryview(self.tag), memoryview(data)[cut:]):
            for start in range(0, len(part), chunk_size):
                if remaining <= 0:
                    return
                piece = part[start : start + min(chunk_size, remaining)]
                remaining -= len(piece)
                yield bytes(piece)

    def read(self) -> bytes:
        """Return the whole served file (a full copy: use :meth:`chunks` to stream)."""
        data = self.base.data
        cut = self.base.insert_at
        return b"".join((data[:cut], self.tag, data[cut:]))

    def to_dict(self) -> dict[str, object]:
        """Return the JSON-safe metadata shown by the control API."""
        return {
            "id": self.image_id,
            "sha256": self.sha256,
            "bytes": self.length,
            "format": self.fmt,
            "size": self.size,
            "prompt_sha256": self.prompt_sha256,
            "created": self.created,
            "request_id": self.request_id,
            "index": self.index,
        }


def make_tag(fmt: str, text: str) -> bytes:
    """Return the bytes that carry ``text`` inside an image of format ``fmt``.

    :param fmt: ``png`` (a ``tEXt`` chunk) or ``jpeg`` (a ``COM`` segment).
    :param text: ASCII text, such as the image id.
    """
    payload = text.encode("ascii")
    if fmt == "png":
        body = b"tEXt" + b"Comment\x00" + payload
        return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    if fmt == "jpeg":
        if len(payload) > 65533:
            raise ValueError("a JPEG comment holds at most 65533 bytes")
        return b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload
    raise ValueError(f"unknown format {fmt!r}")


def tag_image(base: RenderedBase, **metadata: object) -> tuple[bytes, str, int]:
    """Build a tag for ``base`` and return ``(tag, sha256 hex, length)`` of the tagged file.

    :param base: the shared rendered base.
    :param metadata: ``key=value`` pairs written into the tag (ASCII).
    """
    tag = make_tag(base.fmt, "seedream-emulator " + " ".join(f"{k}={v}" for k, v in metadata.items()))
    digest = hashlib.sha256()
    view = memoryview(base.data)
    digest.update(view[: base.insert_at])
    digest.update(tag)
    digest.update(view[base.insert_at :])
    return tag, digest.hexdigest(), len(base.data) + len(tag)


def render_base(width: int, height: int, fmt: str) -> RenderedBase:
    """Render a gradient-and-noise picture of ``width`` x ``height`` in ``fmt``.

    :raises ValueError: on an unknown format or a size larger than :data:`MAX_RENDER_PIXELS`.
    """
    from PIL import Image, ImageChops

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if width < 1 or height < 1 or width * height > MAX_RENDER_PIXELS:
        raise ValueError(f"{width}x{height} is outside what the emulator renders (1 to {MAX_RENDER_PIXELS:,} pixels)")
    amplitude = _NOISE_AMPLITUDE[fmt]
    scale = (256 - amplitude) / 256
    gradient_lut = [int(value * scale) for value in range(256)]
    noise_lut = [value * amplitude // 256 for value in range(256)]
    gradients = (
        Image.linear_gradient("L").rotate(90).resize((width, height)),
        Image.linear_gradient("L").resize((width, height)),
        Image.radial_gradient("L").resize((width, height)),
    )
    channels = []
    for gradient in gradients:
        noise = Image.frombytes("L", (width, height), os.urandom(width * height)).point(noise_lut)
        channels.append(ImageChops.add(gradient.point(gradient_lut), noise))
    picture = Image.merge("RGB", channels)
    buffer = io.BytesIO()
    if fmt == "png":
        picture.save(buffer, "PNG", compress_level=_PNG_COMPRESS_LEVEL)
        data = buffer.getvalue()
        if not data.endswith(_PNG_IEND):
            raise RuntimeError("rendered PNG does not end with IEND")
        insert_at = len(data) - len(_PNG_IEND)
    else:
        picture.save(buffer, "JPEG", quality=_JPEG_QUALITY)
        data = buffer.getvalue()
        if not data.startswith(_JPEG_SOI):
            raise RuntimeError("rendered JPEG does not start with SOI")
        insert_at = len(_JPEG_SOI)
    return RenderedBase(width=width, height=height, fmt=fmt, data=data, insert_at=insert_at)


class ImageCache:
    """Rendered bases by ``(width, height, format)``, least recently used dropped first.

    Concurrent first requests for the same key render once: the others wait on the key's lock.
    A dropped base stays alive as long as image records refer to it.

    :param max_entries: how many bases to keep.
    """

    def __init__(self, max_entries: int = 16) -> None:
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, int, str], RenderedBase] = OrderedDict()
        self._key_locks: dict[tuple[int, int, str], threading.Lock] = {}
        self.renders = 0

    def get(self, width: int, height: int, fmt: str) -> RenderedBase:
        """Return the base for this size and format, rendering it on first use (blocking)."""
        key = (width, height, fmt)
        with self._lock:
            base = self._lookup(key)
            if base is not None:
                return base
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                base = self._lookup(key)
            if base is not None:
                return base
            base = render_base(width, height, fmt)
            with self._lock:
                self.renders += 1
                self._entries[key] = base
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
                self._key_locks.pop(key, None)
            return base

    def _lookup(self, key: tuple[int, int, str]) -> RenderedBase | None:
        base = self._entries.get(key)
        if base is not None:
            self._entries.move_to_end(key)
        return base


_SHARED_CACHE = ImageCache()


def shared_cache() -> ImageCache:
    """Return the process-wide cache used by every emulator app unless given another."""
    return _SHARED_CACHE
