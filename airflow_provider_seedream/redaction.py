"""Shorten secrets (signed URLs, data URIs) before they reach a log or an error."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_SIGNED_URL = re.compile(r"https?://[^\s\"'<>]+\?[^\s\"'<>]+")
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]{16,}")


def redact_url(value: str) -> str:
    """Return ``value`` safe to log: a URL without its query, a data URI without its payload."""
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        return f"{header},<{len(payload)} chars>"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "<unparseable url>"
    if not parts.scheme or not parts.netloc:
        return value if len(value) <= 200 else value[:200] + "..."
    tail = "?<signature redacted>" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{tail}"


def redact_text(text: str) -> str:
    """Return ``text`` with every signed URL and data URI in it shortened by :func:`redact_url`."""
    text = _DATA_URI.sub(lambda match: redact_url(match.group(0)), text)
    return _SIGNED_URL.sub(lambda match: redact_url(match.group(0)), text)
