"""The emulator's knobs: faults, delays and checks, settable at start and at run time."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Faults a generation script may name, applied in order to the next generation requests.
GENERATION_FAULTS = (
    "ok",
    "429",
    "500",
    "503",
    "502",
    "504",
    "reset",
    "slow",
    "quota",
    "spending_cap",
    "overdue",
    "stream_error",
)
#: Generation faults whose client never receives the answer although the model may have made
#: the images: billed under ``bill_abandoned``.
UNANSWERED_FAULTS = ("reset", "502", "504")
#: Faults a download script may name, applied in order to the next downloads.
DOWNLOAD_FAULTS = ("ok", "truncate", "500", "denied")

#: The exclusive generation rates, in the order they are drawn.
GENERATION_RATES = ("rate_429", "rate_500", "rate_503", "rate_502", "rate_504", "rate_reset", "rate_slow")
_RATES = (
    *GENERATION_RATES,
    "rate_item_error",
    "rate_truncate",
    "rate_download_500",
    "rate_download_denied",
)
_DURATIONS = ("latency", "latency_jitter", "retry_after", "slow_seconds", "url_ttl", "reference_timeout")
_FLAGS = ("quota_exceeded", "fetch_references", "bill_abandoned", "latency_per_image")
_MARKERS = ("refuse_marker", "item_error_marker", "missing_model_marker")
_SCRIPTS = {"script": GENERATION_FAULTS, "download_script": DOWNLOAD_FAULTS}


@dataclass
class EmulatorConfig:
    """What the emulator checks and which faults it injects.

    Rates are shares from 0 to 1 drawn per request (per item for ``rate_item_error``).
    The generation rates ``rate_429``, ``rate_500``, ``rate_503``, ``rate_502``, ``rate_504``,
    ``rate_reset`` and ``rate_slow`` are exclusive and must add up to at most 1; so must
    ``rate_truncate``, ``rate_download_500`` and ``rate_download_denied``.

    With ``fault_seed`` set, every random draw is derived from the seed and the request itself
    (the model, the prompt and how many requests for that prompt came before; the image and how
    many downloads of it came before), so a seeded run faults the same requests whatever the
    order in which concurrent requests arrive. The latency's jitter is drawn the same way.

    **The account's rate limit.** The service limits each model to a number of images per
    minute for the account (``ModelAccountIpmRateLimitExceeded``). The emulator enforces it with
    a token bucket per model: a request takes as many tokens as the images it asks for (1, or
    ``max_images`` in group mode) when it is admitted, whatever happens to it next; the bucket
    refills continuously at ``images_per_minute / 60`` tokens a second and holds at most
    ``burst_seconds`` worth of them, and never less than the largest group (15), so that every
    valid request can pass once the bucket is full. A request that finds too few tokens is
    answered 429 ``ModelAccountIpmRateLimitExceeded`` at once, with ``Retry-After``: the whole
    seconds until the bucket holds enough (at least 1). A steady client therefore gets exactly the
    limit, and one that was idle gets at most ``burst_seconds`` of extra images in a burst. The
    buckets start full, and are filled again by a reset or by a change of either knob.

    :param api_key: the only key accepted; ``None`` accepts any non-empty bearer key.
    :param latency: seconds added to each generation request that reaches the model (in group
        mode with ``latency_per_image``, or when streamed, to each image).
    :param latency_jitter: up to this many seconds more, drawn uniformly for each request (each
        image where ``latency`` is per image); seeded by ``fault_seed``.
    :param latency_per_image: a group of ``n`` images takes ``n`` latencies, as the model makes
        one image after another: a streamed group sends one image every latency (as it always
        does), and a group answered at once waits for all ``n``. When false, a group answered at
        once takes one latency.
    :param images_per_minute: the account's limit of images per minute for each model;
        ``None`` means no limit.
    :param burst_seconds: how many seconds' worth of ``images_per_minute`` the full bucket holds.
    :param rate_429: share of generation requests answered 429 ``RequestBurstTooFast``.
    :param retry_after: seconds sent in ``Retry-After`` with ``RequestBurstTooFast``.
    :param quota_exceeded: answer every generation request 429 ``QuotaExceeded``.
    :param rate_500: share of generation requests answered 500 ``InternalServiceError``.
    :param rate_503: share of generation requests answered 503 ``ServiceUnavailable`` by the
        service itself: nothing generated, safe to retry.
    :param rate_502: share of generation requests answered 502 by a gateway after the model made
        the images: an HTML body and no links (billed under ``bill_abandoned``).
    :param rate_504: the same with 504, as a gateway that stopped waiting for the model.
    :param rate_reset: share of generation requests whose connection breaks mid-response, after
        the model made the images (billed under ``bill_abandoned``). A stream is cut after a drawn
        number of images: those before the cut arrived; the rest are billed under ``bill_abandoned``.
    :param cut_after: how many images of a streamed group arrive before a ``reset`` cuts it or a
        ``stream_error`` ends it (capped at the group's size minus one); ``None`` draws it. It also
        makes a ``reset`` of an answer sent at once arrive with that many items whole before the
        cut (under ``bill_abandoned``); ``None`` cuts such an answer after ``{"created": ``.
    :param rate_slow: share of generation requests delayed by ``slow_seconds``.
    :param slow_seconds: the delay of a slow request.
    :param bill_abandoned: generate and bill the images of a request whose answer never reaches
        its client, as the real service may: a client that leaves during ``latency`` or a slow
        delay, a ``reset``, a ``502`` or a ``504``. Such images count in ``images_generated`` and
        in ``billed_unanswered``. When false, such a request generates nothing.
    :param refuse_marker: a prompt holding it is refused with ``InputTextSensitiveContentDetected``.
    :param rate_item_error: share of items that fail with ``OutputImageSensitiveContentDetected``.
    :param item_error_marker: a prompt holding it has its last item fail.
    :param missing_model_marker: a model id holding it is answered 404 ``InvalidEndpointOrModel.NotFound``,
        as the service answers a model the account cannot use.
    :param rate_truncate: share of downloads cut short.
    :param rate_download_500: share of downloads answered 500.
    :param rate_download_denied: share of downloads answered 403 ``AccessDenied``, as the
        object store answers a mangled or expired signed link.
    :param url_ttl: seconds a signed image link stays valid.
    :param fetch_references: fetch http(s) reference images and check they are images.
    :param reference_timeout: seconds allowed to fetch one reference image.
    :param fault_seed: seed of the random fault choices, for reproducible runs.
    :param script: faults applied in order to the next generation requests, before any random one
        (``ok``, ``429``, ``500``, ``503``, ``502``, ``504``, ``reset``, ``slow``, ``quota``,
        ``spending_cap``: 429 ``SetLimitExceeded``, ``overdue``: 403 ``AccountOverdueError``,
        ``stream_error``: a stream that ends in an ``error`` event after a drawn number of images,
        those images billed; answered as ``500`` without streaming).
    :param download_script: faults applied in order to the next downloads
        (``ok``, ``truncate``, ``500``, ``denied``).
    """

    api_key: str | None = None
    latency: float = 0.0
    latency_jitter: float = 0.0
    latency_per_image: bool = False
    images_per_minute: float | None = None
    burst_seconds: float = 6.0
    rate_429: float = 0.0
    retry_after: float = 1.0
    quota_exceeded: bool = False
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_502: float = 0.0
    rate_504: float = 0.0
    rate_reset: float = 0.0
    cut_after: int | None = None
    rate_slow: float = 0.0
    slow_seconds: float = 30.0
    bill_abandoned: bool = True
    refuse_marker: str = "[refuse]"
    rate_item_error: float = 0.0
    item_error_marker: str = "[item-error]"
    missing_model_marker: str = "missing-model"
    rate_truncate: float = 0.0
    rate_download_500: float = 0.0
    rate_download_denied: float = 0.0
    url_ttl: float = 86400.0
    fetch_references: bool = True
    reference_timeout: float = 5.0
    fault_seed: int | None = None
    script: list[str] = field(default_factory=list)
    download_script: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in _RATES:
            value = _number(name, getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be from 0 to 1, got {value}")
            setattr(self, name, value)
        for name in _DURATIONS:
            value = _number(name, getattr(self, name))
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
            setattr(self, name, value)
        self.burst_seconds = _number("burst_seconds", self.burst_seconds)
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in _MARKERS:
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string (empty to disable), got {getattr(self, name)!r}")
        if self.images_per_minute is not None:
            value = _number("images_per_minute", self.images_per_minute)
            if value <= 0:
                raise ValueError(
                    "images_per_minute must be a positive number of images per minute, or null for no limit; "
                    f"got {value:g}"
                )
            self.images_per_minute = value
        if self.burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be positive, got {self.burst_seconds:g}")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ValueError("api_key must be a string or null")
        if self.api_key == "":
            self.api_key = None
        if self.cut_after is not None and (
            isinstance(self.cut_after, bool) or not isinstance(self.cut_after, int) or self.cut_after < 0
        ):
            raise ValueError(
                f"cut_after must be a whole number of images from 0, or null to draw it; got {self.cut_after!r}"
            )
        if self.fault_seed is not None and (isinstance(self.fault_seed, bool) or not isinstance(self.fault_seed, int)):
            raise ValueError(f"fault_seed must be an integer or null, got {self.fault_seed!r}")
        for name, allowed in _SCRIPTS.items():
            script = getattr(self, name)
            if isinstance(script, (str, bytes)) or not isinstance(script, (list, tuple)):
                raise ValueError(f"{name} must be a list of {', '.join(allowed)}")
            entries = [str(entry) for entry in script]
            unknown = [entry for entry in entries if entry not in allowed]
            if unknown:
                raise ValueError(f"{name} holds {unknown}; allowed: {', '.join(allowed)}")
            setattr(self, name, entries)
        if sum(getattr(self, name) for name in GENERATION_RATES) > 1.0 + 1e-9:
            raise ValueError(f"{' + '.join(GENERATION_RATES)} must be at most 1")
        if self.rate_truncate + self.rate_download_500 + self.rate_download_denied > 1.0 + 1e-9:
            raise ValueError("rate_truncate + rate_download_500 + rate_download_denied must be at most 1")

    def with_changes(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """Return a copy with ``changes`` applied; raise :class:`ValueError` on an unknown or invalid knob."""
        known = {item.name for item in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown knob(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **dict(changes))

    def to_dict(self) -> dict[str, Any]:
        """Return the knobs as a JSON-safe dict."""
        return dataclasses.asdict(self)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
