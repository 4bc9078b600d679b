"""What an emulator image shows: bands of colour picked by the prompt and image index, and a caption.

A picture of ``width`` x ``height`` is a stack of horizontal bands (see :class:`Layout`). Every
band but one shows one of :data:`PALETTES` shared backgrounds (a gradient between two colours,
shaded and grainy), chosen for that band from a hash of the prompt digest and the image index;
the caption band, in the middle, is drawn for the image alone: the prompt's first words and
``WxH #index`` over a dark gradient in the image's own hues. Two images of one request, or of
two prompts, therefore look different at a glance, while the same prompt, size, format and
index always give the same pixels.

A background band depends only on its palette, width, height and format, not on where it
sits, so one rendering serves every image that places it anywhere (see
:mod:`~airflow_provider_seedream.emulator.encoding`). Pillow is imported when a band is drawn.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

#: How many shared background palettes there are.
PALETTES = 12
#: Bands start on multiples of this many rows: the height of a JPEG MCU row at 4:2:0.
BAND_UNIT = 16
# About this many bands stack up in a tall enough picture.
_TARGET_BANDS = 7
# Noise amplitudes (out of 256) chosen so file sizes resemble real generated images:
# a 2048x2048 JPEG is about 1.2 MB, a 4096x4096 JPEG about 5 MB, a 2048x2048 PNG about 7 MB.
NOISE_AMPLITUDE = {"jpeg": 32, "png": 8}
# The bottom of a background band is this share darker than its top.
_SHADE = 0.22
_CAPTION_WORDS = 6
_CAPTION_CHARS = 48


@dataclass(frozen=True)
class PictureSpec:
    """Everything an image's pixels derive from.

    :param width: width in pixels.
    :param height: height in pixels.
    :param fmt: ``png`` or ``jpeg``.
    :param prompt_sha256: hex sha256 of the prompt: picks the colours with ``index``.
    :param index: the image's position in its request.
    :param caption: the prompt's first words (see :func:`caption_of`).
    """

    width: int
    height: int
    fmt: str
    prompt_sha256: str
    index: int
    caption: str

    @property
    def size(self) -> str:
        """The size as ``WxH``."""
        return f"{self.width}x{self.height}"


def caption_of(prompt: str) -> str:
    """Return the prompt's first words, as written on its images (at most 6 words, 48 characters)."""
    words = prompt.split()
    caption = " ".join(words[:_CAPTION_WORDS])
    if len(caption) > _CAPTION_CHARS:
        caption = caption[: _CAPTION_CHARS - 3].rstrip() + "..."
    elif len(words) > _CAPTION_WORDS:
        caption += " ..."
    return caption


@dataclass(frozen=True)
class Layout:
    """How a picture of ``width`` x ``height`` is cut into bands, top to bottom.

    Every band is ``band_height`` rows tall except the last, which takes what is left.

    :param width: width in pixels.
    :param height: height in pixels.
    :param band_height: rows of every band but the last (a multiple of :data:`BAND_UNIT`).
    :param bands: how many bands there are.
    :param caption_band: the position of the caption band.
    """

    width: int
    height: int
    band_height: int
    bands: int
    caption_band: int

    def height_of(self, band: int) -> int:
        """Return the rows of ``band``."""
        return self.band_height if band < self.bands - 1 else self.height - self.band_height * (self.bands - 1)


@functools.lru_cache(maxsize=256)
def layout(width: int, height: int) -> Layout:
    """Return the bands of a ``width`` x ``height`` picture."""
    units = -(-height // BAND_UNIT)
    per_band = max(1, round(units / _TARGET_BANDS))
    bands = max(1, units // per_band)
    return Layout(width, height, per_band * BAND_UNIT, bands, bands // 2)


@functools.lru_cache(maxsize=PALETTES)
def palette_colours(palette: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Return the two colours a background palette fades between, left to right."""
    hue = palette / PALETTES
    value = 0.92 if palette % 2 else 0.78
    return _rgb(hue, 0.7, value), _rgb(hue + 1 / 7, 0.55, value)


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _digest(spec: PictureSpec) -> bytes:
    return hashlib.sha256(f"{spec.prompt_sha256}\x1f{spec.index}".encode("ascii")).digest()


def band_palettes(spec: PictureSpec, bands: int) -> tuple[int, ...]:
    """Return the palette of each band of ``spec``'s picture, neighbours never alike.

    The caption band's entry is drawn like the others but not shown.
    """
    digest = _digest(spec)
    chosen: list[int] = []
    for band in range(bands):
        palette = digest[band % len(digest)] % PALETTES
        if chosen and palette == chosen[-1]:
            palette = (palette + 1 + digest[-1] % (PALETTES - 1)) % PALETTES
        chosen.append(palette)
    return tuple(chosen)


def draw_background(width: int, height: int, fmt: str, palette: int) -> Image.Image:
    """Draw one shared background band: a gradient between the palette's colours, shaded and grainy.

    Its grain is seeded by the band's own size, format and palette, so it is drawn the same
    on every run.
    """
    from PIL import Image, ImageChops, ImageOps

    left, right = palette_colours(palette)
    picture = ImageOps.colorize(_across(width, height), left, right)
    down = Image.linear_gradient("L").resize((1, height)).point(lambda v: 255 - round(v * _SHADE))
    picture = ImageChops.multiply(picture, down.resize((width, height)).convert("RGB"))
    amplitude = NOISE_AMPLITUDE[fmt]
    grain = random.Random(f"{width}x{height}/{fmt}/{palette}").randbytes(width * height * 3)
    noise = Image.frombytes("RGB", (width, height), grain).point([v * amplitude // 256 for v in range(256)] * 3)
    scale = (256 - amplitude) / 256
    return ImageChops.add(picture.point([int(v * scale) for v in range(256)] * 3), noise)


def draw_caption(spec: PictureSpec, height: int) -> Image.Image:
    """Draw the caption band of ``spec``'s picture, ``height`` rows tall.

    The prompt's first words on the first line, ``WxH  #index`` on the second (one line when
    the band is short), over a dark gradient in hues drawn from the prompt and index.
    """
    from PIL import ImageDraw, ImageOps

    digest = _digest(spec)
    hue = int.from_bytes(digest[-4:-2], "big") / 65536
    left, right = _rgb(hue, 0.6, 0.3), _rgb(hue + 0.25, 0.6, 0.18)
    band = ImageOps.colorize(_across(spec.width, height), left, right)
    draw = ImageDraw.Draw(band)
    margin = max(2, spec.width // 40)
    room = spec.width - 2 * margin
    details = f"{spec.size}  #{spec.index}"
    if height >= 48:
        title_size = max(6, height * 2 // 5)
        detail_size = max(6, height // 4)
        _write(draw, spec.caption or "(no words)", (margin, height // 12), title_size, room, (255, 255, 255))
        _write(draw, details, (margin, height * 3 // 5), detail_size, room, _rgb(hue, 0.25, 1.0))
    else:
        text = f"{spec.caption}  {details}" if spec.caption else details
        _write(draw, text, (margin, max(0, height // 8)), max(4, height * 2 // 3), room, (255, 255, 255))
    return band


@functools.lru_cache(maxsize=32)
def _across(width: int, height: int) -> Image.Image:
    """A grey ramp from black on the left to white on the right (shared: do not draw on it)."""
    from PIL import Image

    return Image.linear_gradient("L").rotate(90).resize((width, 1)).resize((width, height))


def _write(
    draw: ImageDraw.ImageDraw, text: str, at: tuple[int, int], size: int, room: int, fill: tuple[int, int, int]
) -> None:
    """Write ``text`` at ``at`` in Pillow's default font, cut short with ``...`` to fit ``room``."""
    font = _font(size)
    shown = text
    while shown and font.getlength(shown) > room:
        shown = shown[: max(0, len(shown) - max(1, len(shown) // 8) - 3)].rstrip() + "..."
        if shown == "...":
            break
    draw.text(at, shown, font=font, fill=fill)


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)
