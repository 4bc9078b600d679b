"""Generated images: files put together from cached bands, and the records of served images.

Each image shows its own colours, the prompt's first words and its size (see
:mod:`~airflow_provider_seedream.emulator.painting`). Drawing and encoding a whole picture per
image would cost 50 ms to a second, so :class:`ImageCache` keeps encoded bands instead: the
shared background bands, each drawn once per palette, width, height and format, and each
image's caption band while room allows. A file is put together from them (see
:mod:`~airflow_provider_seedream.emulator.encoding`), which costs little more than copying its
bytes.

Each served image also carries a small per-image tag where the format allows free text, so
every image has its own bytes and sha256 even when its pixels repeat (the same prompt sent
twice):

* PNG: a ``tEXt`` chunk (with its CRC) just before ``IEND``;
* JPEG: a ``COM`` segment just after the ``SOI`` marker.

An :class:`ImageRecord` holds only its :class:`~airflow_provider_seedream.emulator.painting.PictureSpec`
and tag; its bytes are put together again from the cache when it is downloaded. Drawing is
deterministic, so a band dropped from the cache is drawn again identically and the record's
sha256 still holds.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from airflow_provider_seedream.emulator.encoding import EncodedBand, assemble, encode_band
from airflow_provider_seedream.emulator.painting import (
    PictureSpec,
    band_palettes,
    draw_background,
    draw_caption,
    layout,
)

#: Formats the emulator renders, as named in the request's ``output_format``.
FORMATS = ("png", "jpeg")
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
EXTENSIONS = {"png": "png", "jpeg": "jpeg"}
#: The largest image the emulator renders, in pixels.
MAX_RENDER_PIXELS = 36_000_000
CHUNK_SIZE = 1024 * 1024
_MB = 1024 * 1024


@dataclass(frozen=True, eq=False)
class Picture:
    """An image file as consecutive parts (shared with the cache: do not change them).

    :param parts: the file's bytes, in order.
    :param tag_at: the position among ``parts`` where a per-image tag goes.
    """

    parts: tuple[bytes, ...] = field(repr=False)
    tag_at: int

    @property
    def length(self) -> int:
        """The file's length in bytes, without a tag."""
        return sum(map(len, self.parts))

    def with_tag(self, tag: bytes) -> tuple[bytes, ...]:
        """Return the parts with ``tag`` inserted where it belongs."""
        return (*self.parts[: self.tag_at], tag, *self.parts[self.tag_at :])


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One generated image: metadata, what its pixels derive from, and its tag.

    :param image_id: the image's id, also its file name on the emulator.
    :param spec: what the picture shows (size, format, colours, caption).
    :param cache: where its bands are kept; its bytes are put together from there.
    :param tag: the bytes inserted into the picture (see :class:`Picture`).
    :param sha256: hex sha256 of the exact bytes served.
    :param length: the number of bytes served.
    :param created: unix time of generation.
    :param request_id: the generation request's id.
    :param index: the image's position in the response's ``data``.
    :param query: the signature query string issued with the image's link.
    :param expires_at: unix time after which the link is refused.
    :param draw_key: names the image the same way on every run (model, prompt digest, the
        generation attempt and ``index``), unlike ``image_id``: seeded download faults derive from it.
    """

    image_id: str
    spec: PictureSpec
    cache: ImageCache = field(repr=False)
    tag: bytes = field(repr=False)
    sha256: str
    length: int
    created: float
    request_id: str
    index: int
    query: str = field(default="", repr=False)
    expires_at: float = float("inf")
    draw_key: str = field(default="", repr=False)

    @property
    def prompt_sha256(self) -> str:
        """Hex sha256 of the prompt (the prompt itself is not kept)."""
        return self.spec.prompt_sha256

    @property
    def fmt(self) -> str:
        """``png`` or ``jpeg``."""
        return self.spec.fmt

    @property
    def size(self) -> str:
        """The size as ``WxH``."""
        return self.spec.size

    @property
    def content_type(self) -> str:
        """The MIME type served."""
        return CONTENT_TYPES[self.spec.fmt]

    @property
    def file_name(self) -> str:
        """The file name under which the emulator serves the image."""
        return f"{self.image_id}.{EXTENSIONS[self.spec.fmt]}"

    def parts(self) -> tuple[bytes, ...]:
        """Return the served bytes as consecutive parts (blocking: may draw evicted bands again)."""
        return self.cache.picture(self.spec).with_tag(self.tag)

    def chunks(
        self, limit: int | None = None, chunk_size: int = CHUNK_SIZE, parts: tuple[bytes, ...] | None = None
    ) -> Iterator[bytes]:
        """Yield the served bytes in chunks of about ``chunk_size``, stopping after ``limit`` bytes when given.

        :param parts: the result of :meth:`parts`, when already at hand.
        """
        remaining = self.length if limit is None else min(limit, self.length)
        pending: list[bytes] = []
        pending_size = 0
        for part in self.parts() if parts is None else parts:
            if remaining <= 0:
                break
            piece = part[:remaining] if len(part) > remaining else part
            remaining -= len(piece)
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= chunk_size:
                yield b"".join(pending)
                pending, pending_size = [], 0
        if pending:
            yield b"".join(pending)

    def read(self) -> bytes:
        """Return the whole served file (a full copy: use :meth:`chunks` to stream)."""
        return b"".join(self.parts())

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


def tag_picture(picture: Picture, fmt: str, **metadata: object) -> tuple[bytes, str, int]:
    """Build a tag for ``picture`` and return ``(tag, sha256 hex, length)`` of the tagged file.

    :param picture: the untagged file.
    :param fmt: its format.
    :param metadata: ``key=value`` pairs written into the tag (ASCII).
    """
    tag = make_tag(fmt, "seedream-emulator " + " ".join(f"{k}={v}" for k, v in metadata.items()))
    digest = hashlib.sha256()
    length = 0
    for part in picture.with_tag(tag):
        digest.update(part)
        length += len(part)
    return tag, digest.hexdigest(), length


class _Shelf:
    """Encoded bands by key, least recently used dropped first once over ``max_bytes``.

    Concurrent first requests for the same key encode once: the others wait on the key's lock.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.made = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, EncodedBand] = OrderedDict()
        self._bytes = 0
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, make: Callable[[], EncodedBand]) -> EncodedBand:
        with self._lock:
            band = self._lookup(key)
            if band is not None:
                return band
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                band = self._lookup(key)
            if band is not None:
                return band
            band = make()
            with self._lock:
                self.made += 1
                self._entries[key] = band
                self._bytes += band.nbytes
                while self._bytes > self.max_bytes and len(self._entries) > 1:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= dropped.nbytes
                self._key_locks.pop(key, None)
            return band

    def _lookup(self, key: Hashable) -> EncodedBand | None:
        band = self._entries.get(key)
        if band is not None:
            self._entries.move_to_end(key)
        return band


class ImageCache:
    """Encoded bands: shared backgrounds and per-image captions, each kept within its own byte budget.

    :param background_bytes: how many bytes of background bands to keep.
    :param caption_bytes: how many bytes of caption bands to keep.
    """

    def __init__(self, background_bytes: int = 512 * _MB, caption_bytes: int = 64 * _MB) -> None:
        self._backgrounds = _Shelf(background_bytes)
        self._captions = _Shelf(caption_bytes)

    @property
    def renders(self) -> int:
        """How many background bands were drawn and encoded: a few per size, then none."""
        return self._backgrounds.made

    @property
    def captions(self) -> int:
        """How many caption bands were drawn and encoded: one per image, again if dropped."""
        return self._captions.made

    def picture(self, spec: PictureSpec) -> Picture:
        """Return ``spec``'s file, putting it together from cached bands (blocking: may draw bands).

        :raises ValueError: on an unknown format or a size larger than :data:`MAX_RENDER_PIXELS`.
        """
        if spec.fmt not in FORMATS:
            raise ValueError(f"unknown format {spec.fmt!r}")
        width, height = spec.width, spec.height
        if width < 1 or height < 1 or width * height > MAX_RENDER_PIXELS:
            raise ValueError(
                f"{width}x{height} is outside what the emulator renders (1 to {MAX_RENDER_PIXELS:,} pixels)"
            )
        bands = layout(width, height)
        palettes = band_palettes(spec, bands.bands)
        encoded = []
        for band in range(bands.bands):
            rows = bands.height_of(band)
            if band == bands.caption_band:
                caption = (spec, rows)
                encoded.append(self._captions.get(caption, partial(_encode, draw_caption, caption, spec.fmt)))
            else:
                key = (width, rows, spec.fmt, palettes[band])
                encoded.append(self._backgrounds.get(key, partial(_encode, draw_background, key, spec.fmt)))
        parts, tag_at = assemble(spec.fmt, width, height, encoded)
        return Picture(tuple(parts), tag_at)


_SHARED_CACHE = ImageCache()


def shared_cache() -> ImageCache:
    """Return the process-wide cache used by every emulator app unless given another."""
    return _SHARED_CACHE


def _encode(draw: Callable[..., Any], arguments: tuple[Any, ...], fmt: str) -> EncodedBand:
    """Draw one band from ``arguments`` and encode it: what a cache miss makes."""
    return encode_band(draw(*arguments), fmt)
