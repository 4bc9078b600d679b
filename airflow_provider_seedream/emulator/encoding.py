"""Image files put together from bands encoded once: JPEG restart intervals and PNG deflate blocks.

Encoding a whole 2048x2048 picture takes 50-100 ms as JPEG and about a second as PNG: too much
for every image. Both formats let a file be cut into pieces that decode on their own, so each
band (see :mod:`~airflow_provider_seedream.emulator.painting`) is encoded once and a file is
its bands' pieces with a few bytes of framing around them:

* JPEG: a band is encoded with a restart marker after every MCU row (``restart_marker_rows``),
  so each row's entropy-coded bytes stand alone (the DC predictors restart at each marker), and
  every band of one width shares the same quantisation and standard Huffman tables (same
  quality and subsampling, no optimisation). A file is the header with its own height, the
  rows of its bands, ``RSTn`` markers numbered by their place in the file, and ``EOI``.
* PNG: a band's scanlines all use the ``Sub`` filter (it never looks at the row above) and are
  deflated by a fresh compressor ending in a sync flush, so no band's blocks point into another
  band. Each band is one ``IDAT`` chunk. A file is the signature, ``IHDR``, an ``IDAT`` holding
  the zlib header, the bands' chunks, an ``IDAT`` holding the final empty block and the Adler-32
  of all scanlines (combined from the bands' own), and ``IEND``.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

JPEG_QUALITY = 90
# 4:2:0: MCUs of 16x16 pixels, as painting.BAND_UNIT assumes.
_JPEG_SUBSAMPLING = 2
PNG_COMPRESS_LEVEL = 1

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_SOS = 0xDA
_SOF_MARKERS = (0xC0, 0xC1, 0xC2)
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
_RST = tuple(bytes((0xFF, 0xD0 + n)) for n in range(8))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib header: deflate, 32 KiB window, no preset dictionary, check bits set.
_ZLIB_HEADER = b"\x78\x01"
# A final, empty block with fixed codes: BFINAL=1, BTYPE=01, end-of-block.
_DEFLATE_END = b"\x03\x00"
_ADLER_BASE = 65521
_FILTER_SUB = b"\x01"


@dataclass(frozen=True, eq=False)
class EncodedBand:
    """One band, encoded so it can sit anywhere in a file of its width and format.

    :param fmt: ``png`` or ``jpeg``.
    :param pieces: JPEG: the entropy-coded bytes of each MCU row, markers removed;
        PNG: one complete ``IDAT`` chunk.
    :param header: JPEG: the header (``SOI`` up to the end of ``SOS``) of the band's own encoding.
    :param adler: PNG: Adler-32 of the band's filtered scanlines.
    :param raw_length: PNG: the length of the band's filtered scanlines.
    """

    fmt: str
    pieces: tuple[bytes, ...] = field(repr=False)
    header: bytes = field(default=b"", repr=False)
    adler: int = 1
    raw_length: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(map(len, self.pieces)) + len(self.header)


def encode_band(image: Image.Image, fmt: str) -> EncodedBand:
    """Encode an RGB band so that it can be put together with others (see the module's docstring)."""
    if fmt == "jpeg":
        return _jpeg_band(image)
    if fmt == "png":
        return _png_band(image)
    raise ValueError(f"unknown format {fmt!r}")


def assemble(fmt: str, width: int, height: int, bands: Sequence[EncodedBand]) -> tuple[list[bytes], int]:
    """Put a file together from its bands, top to bottom.

    :return: the file's bytes as consecutive parts, and the position among them where a tag
        may be inserted (after ``SOI`` for JPEG, before ``IEND`` for PNG).
    """
    if fmt == "jpeg":
        return _assemble_jpeg(height, bands), 1
    if fmt == "png":
        parts = _assemble_png(width, height, bands)
        return parts, len(parts) - 1
    raise ValueError(f"unknown format {fmt!r}")


# --- JPEG ---------------------------------------------------------------------------------------


def _jpeg_band(image: Image.Image) -> EncodedBand:
    import io

    buffer = io.BytesIO()
    image.save(
        buffer, "JPEG", quality=JPEG_QUALITY, subsampling=_JPEG_SUBSAMPLING, optimize=False, restart_marker_rows=1
    )
    data = buffer.getvalue()
    start = _jpeg_scan_start(data)
    if not data.endswith(_EOI):
        raise RuntimeError("encoded JPEG does not end with EOI")
    rows = tuple(_RESTART.split(data[start:-2]))
    expected = -(-image.height // 16)
    if len(rows) != expected:
        raise RuntimeError(f"encoded JPEG has {len(rows)} restart intervals, expected one per MCU row ({expected})")
    return EncodedBand("jpeg", rows, header=data[:start])


def _jpeg_scan_start(data: bytes) -> int:
    """Return the offset just past the ``SOS`` segment: where the entropy-coded data begins."""
    if not data.startswith(_SOI):
        raise RuntimeError("encoded JPEG does not start with SOI")
    position = len(_SOI)
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise RuntimeError(f"no JPEG marker at offset {position}")
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
        if marker == _SOS:
            return position
    raise RuntimeError("encoded JPEG has no SOS segment")


def _jpeg_header(header: bytes, height: int) -> bytes:
    """Return ``header`` (from ``SOI`` to the end of ``SOS``) with the frame's height set to ``height``."""
    patched = bytearray(header)
    position = len(_SOI)
    while position + 4 <= len(patched):
        marker = patched[position + 1]
        length = int.from_bytes(patched[position + 2 : position + 4], "big")
        if marker in _SOF_MARKERS:
            patched[position + 5 : position + 7] = height.to_bytes(2, "big")
            return bytes(patched)
        position += 2 + length
    raise RuntimeError("encoded JPEG has no SOF segment")


def _assemble_jpeg(height: int, bands: Sequence[EncodedBand]) -> list[bytes]:
    header = _jpeg_header(bands[0].header, height)
    parts = [header[: len(_SOI)], header[len(_SOI) :]]
    rows = [row for band in bands for row in band.pieces]
    for number, row in enumerate(rows):
        if number:
            parts.append(_RST[(number - 1) % 8])
        parts.append(row)
    parts.append(_EOI)
    return parts


# --- PNG ----------------------------------------------------------------------------------------


def _png_band(image: Image.Image) -> EncodedBand:
    from PIL import Image, ImageChops

    width, height = image.size
    left = Image.new("RGB", (width, height))
    if width > 1:
        left.paste(image.crop((0, 0, width - 1, height)), (1, 0))
    filtered = memoryview(ImageChops.subtract_modulo(image, left).tobytes())
    stride = width * 3
    scanlines = b"".join(
        part for start in range(0, len(filtered), stride) for part in (_FILTER_SUB, filtered[start : start + stride])
    )
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, -15)
    deflated = compressor.compress(scanlines) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return EncodedBand(
        "png", (_png_chunk(b"IDAT", deflated),), adler=zlib.adler32(scanlines), raw_length=len(scanlines)
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _assemble_png(width: int, height: int, bands: Sequence[EncodedBand]) -> list[bytes]:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    adler = 1
    for band in bands:
        adler = adler32_combine(adler, band.adler, band.raw_length)
    return [
        _PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", _ZLIB_HEADER),
        *(band.pieces[0] for band in bands),
        _png_chunk(b"IDAT", _DEFLATE_END + struct.pack(">I", adler)),
        _png_chunk(b"IEND", b""),
    ]


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """Return the Adler-32 of two byte strings joined, from each one's Adler-32 and the second's length."""
    remainder = second_length % _ADLER_BASE
    low = (first & 0xFFFF) + (second & 0xFFFF) + _ADLER_BASE - 1
    high = (remainder * (first & 0xFFFF)) % _ADLER_BASE
    high += ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + _ADLER_BASE - remainder
    return (low % _ADLER_BASE) | ((high % _ADLER_BASE) << 16)
