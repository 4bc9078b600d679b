"""What the SDK tests share: model ids, the API key, and a download exactly as the SDK handed the link over."""

from __future__ import annotations

import hashlib
import io

import requests
from PIL import Image

from tests.conftest import API_KEY

__all__ = ["API_KEY", "SEEDREAM_5", "SMALL_MODEL", "download", "picture", "sha256"]

# An id the package does not know: only generic checks apply, so small sizes render fast.
SMALL_MODEL = "sdk-test-model"
SEEDREAM_5 = "doubao-seedream-5-0-260128"


def sha256(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def download(url: str) -> bytes:
    """Fetch an image link as received."""
    response = requests.get(url, timeout=60)
    response.raise_for_status()
    return response.content


def picture(data: bytes) -> tuple[str, tuple[int, int]]:
    """Return the format and size of an image file, after decoding it whole."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return str(image.format), image.size
