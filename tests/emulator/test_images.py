"""Emulator images people can tell apart: own colours and caption, exact size and format, stable pixels."""

from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import requests
from PIL import Image

from airflow_provider_seedream.emulator import EmulatorServer
from airflow_provider_seedream.emulator.encoding import adler32_combine
from airflow_provider_seedream.emulator.images import ImageCache
from airflow_provider_seedream.emulator.painting import PictureSpec, caption_of, layout
from tests.emulator.support import generate, sha256

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def pixels(blob: bytes) -> bytes:
    with Image.open(io.BytesIO(blob)) as image:
        return image.convert("RGB").tobytes()


def spec(
    prompt: str = "a red bicycle", index: int = 0, size: tuple[int, int] = (320, 200), fmt: str = "jpeg"
) -> PictureSpec:
    return PictureSpec(size[0], size[1], fmt, sha256(prompt.encode()), index, caption_of(prompt))


def file_of(cache: ImageCache, picture_spec: PictureSpec) -> bytes:
    return b"".join(cache.picture(picture_spec).parts)


# --- over HTTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_each_image_of_a_group_and_each_prompt_looks_different(emulator: EmulatorServer, output_format: str) -> None:
    def group(prompt: str) -> list[bytes]:
        body = generate(
            emulator,
            prompt=prompt,
            size="160x96",
            output_format=output_format,
            sequential_image_generation="auto",
            sequential_image_generation_options={"max_images": 3},
        ).json()
        return [pixels(requests.get(item["url"], timeout=10).content) for item in body["data"]]

    first, second = group("a lighthouse at dawn"), group("a castle at night")
    assert len(set(first + second)) == 6, "every image has its own pixels"


def test_the_same_request_gives_the_same_pixels_but_its_own_file(emulator: EmulatorServer) -> None:
    def one() -> tuple[bytes, str]:
        item = generate(emulator, prompt="same again", size="128x80", output_format="png").json()["data"][0]
        blob = requests.get(item["url"], timeout=10).content
        return pixels(blob), sha256(blob)

    (pixels_1, sha_1), (pixels_2, sha_2) = one(), one()
    assert pixels_1 == pixels_2
    assert sha_1 != sha_2, "the per-image tag keeps files apart"


# --- what is drawn -------------------------------------------------------------------------------


def test_the_caption_band_carries_light_text_on_a_dark_ground() -> None:
    cache = ImageCache()
    picture_spec = spec(size=(640, 480))
    with Image.open(io.BytesIO(file_of(cache, picture_spec))) as image:
        grey = image.convert("L")
        bands = layout(640, 480)
        top = bands.caption_band * bands.band_height
        caption = grey.crop((0, top, 640, top + bands.height_of(bands.caption_band)))
        histogram = caption.histogram()
        assert sum(histogram[200:]) > 0, "light text is drawn"
        assert sum(histogram[:90]) > sum(histogram) * 0.8, "on a mostly dark ground"


def test_caption_is_the_prompts_first_words() -> None:
    assert caption_of("a lighthouse at dawn") == "a lighthouse at dawn"
    assert caption_of("one two three four five six seven eight") == "one two three four five six ..."
    assert caption_of("x" * 80) == "x" * 45 + "..."
    assert caption_of("") == ""


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("size", [(64, 48), (10, 160), (320, 200), (333, 517), (1280, 960)])
def test_exact_size_and_format(fmt: str, size: tuple[int, int]) -> None:
    blob = file_of(ImageCache(), spec(size=size, fmt=fmt))
    with Image.open(io.BytesIO(blob)) as image:
        assert image.size == size
        assert image.format == fmt.upper()
        image.load()


def test_a_dropped_band_is_drawn_again_identically() -> None:
    tight = ImageCache(background_bytes=1, caption_bytes=1)
    first = file_of(tight, spec("first"))
    file_of(tight, spec("second", size=(160, 96)))
    renders = tight.renders
    assert file_of(tight, spec("first")) == first
    assert tight.renders > renders
    assert file_of(ImageCache(), spec("first")) == first


def test_pixels_are_the_same_in_another_process() -> None:
    code = (
        "import hashlib\n"
        "from airflow_provider_seedream.emulator.images import ImageCache\n"
        "from airflow_provider_seedream.emulator.painting import PictureSpec\n"
        f"spec = PictureSpec(320, 200, 'png', {sha256(b'elsewhere')!r}, 2, 'elsewhere')\n"
        "print(hashlib.sha256(b''.join(ImageCache().picture(spec).parts)).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60
    )
    here = sha256(file_of(ImageCache(), PictureSpec(320, 200, "png", sha256(b"elsewhere"), 2, "elsewhere")))
    assert other.stdout.strip() == here


# --- how files are put together ------------------------------------------------------------------


def test_jpeg_restart_markers_count_the_rows_in_order() -> None:
    blob = file_of(ImageCache(), spec(size=(333, 517)))
    scan = blob[blob.index(b"\xff\xda") :]
    markers = [scan[i + 1] - 0xD0 for i in range(len(scan) - 1) if scan[i] == 0xFF and 0xD0 <= scan[i + 1] <= 0xD7]
    rows = -(-517 // 16)
    assert markers == [row % 8 for row in range(rows - 1)]
    sof = blob.index(b"\xff\xc0")
    assert struct.unpack(">HH", blob[sof + 5 : sof + 9]) == (517, 333)


def test_png_scanlines_check_out() -> None:
    blob = file_of(ImageCache(), spec(size=(333, 517), fmt="png"))
    position, idat = 8, b""
    while position < len(blob):
        length, kind = struct.unpack(">I4s", blob[position : position + 8])
        data = blob[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", blob[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        if kind == b"IDAT":
            idat += data
        position += 12 + length
    scanlines = zlib.decompress(idat)  # checks the combined Adler-32
    assert len(scanlines) == 517 * (1 + 333 * 3)


def test_adler32_combine() -> None:
    chance = random.Random(5)
    for _ in range(20):
        first, second = chance.randbytes(chance.randrange(0, 5000)), chance.randbytes(chance.randrange(0, 70000))
        combined = adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(first + second)
