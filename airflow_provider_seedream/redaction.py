"""Shorten secrets (signed URLs, data URIs) before they reach a log or an error."""

from __future__ import annotations

from urllib.parse import urlsplit


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
