"""The emulator's mutable state: knobs, fault scripts, random draws, counters and images."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_seedream.emulator.config import (
    DOWNLOAD_FAULTS,
    GENERATION_FAULTS,
    GENERATION_RATES,
    EmulatorConfig,
)
from airflow_provider_seedream.emulator.generation import MAX_GROUP_IMAGES
from airflow_provider_seedream.emulator.images import ImageRecord

log = logging.getLogger(__name__)

#: Keys of the ``faults`` counter, always present: every generation fault a script may name, the
#: download faults, and the refusals and rate limits no script names.
FAULT_KEYS = (
    *(fault for fault in GENERATION_FAULTS if fault != "ok"),
    *(f"download_{fault}" if fault == "500" else fault for fault in DOWNLOAD_FAULTS if fault != "ok"),
    "refused",
    "rate_limited",
)
# 2**64: a draw is the first 8 bytes of a sha256 read as a fraction of this.
_DRAW_SPAN = float(1 << 64)


def _new_stats() -> dict[str, Any]:
    return {
        "generation_requests": 0,
        "generation_status": {},
        "generation_in_flight_peak": 0,
        "last_generation_at": None,
        "images_generated": 0,
        "billed_unanswered": 0,
        "item_errors": 0,
        "downloads": 0,
        "downloads_ok": 0,
        "download_status": {},
        "faults": dict.fromkeys(FAULT_KEYS, 0),
        "abandoned": 0,
        "references": 0,
        "reference_requests": 0,
    }


@dataclass(frozen=True)
class GenerationDraw:
    """The fault decided for one generation request, and where the request stands.

    :param fault: one of :data:`~airflow_provider_seedream.emulator.config.GENERATION_FAULTS`.
    :param attempt: how many generation requests with the same model and prompt reached the
        fault decision since the last reset or re-seeding, this one included (1 for the first).
    """

    fault: str
    attempt: int


class _Draws:
    """Random numbers in [0, 1): derived from the seed and a request's identity, or drawn by chance.

    Concurrent requests arrive in any order, so a single seeded generator would hand a given
    request a different number on each run. With a seed, each number is instead a hash of the
    seed and names that identify the draw (such as the prompt and its attempt number), so the
    same request gets the same number however the requests interleave.

    :param seed: the seed; ``None`` draws from an unseeded generator.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._rng = random.Random()

    def __call__(self, *identity: object) -> float:
        """Return the draw for ``identity`` (ignored when unseeded)."""
        if self.seed is None:
            return self._rng.random()
        text = "\x1f".join(str(part) for part in (self.seed, *identity))
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / _DRAW_SPAN


class TokenBuckets:
    """The account's images-per-minute limit: one token bucket per model (see :class:`EmulatorConfig`).

    Not thread-safe by itself: :class:`EmulatorState` calls it under its lock.

    :param images_per_minute: the limit; ``None`` admits everything.
    :param burst_seconds: how many seconds' worth of the limit a full bucket holds.
    :param clock: monotonic seconds.
    """

    def __init__(
        self, images_per_minute: float | None, burst_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = None if images_per_minute is None else images_per_minute / 60.0
        self.capacity = 0.0 if self.per_second is None else max(self.per_second * burst_seconds, MAX_GROUP_IMAGES)
        self._clock = clock
        # model -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, model: str, images: int) -> float | None:
        """Take ``images`` tokens from ``model``'s bucket; ``None`` when admitted, else seconds until enough."""
        if self.per_second is None:
            return None
        now = self._clock()
        tokens, counted = self._buckets.get(model, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - counted) * self.per_second)
        if tokens >= images:
            self._buckets[model] = (tokens - images, now)
            return None
        self._buckets[model] = (tokens, now)
        return (images - tokens) / self.per_second


class EmulatorState:
    """Everything that changes while the emulator runs, behind one lock.

    The knobs are an immutable snapshot (:attr:`config`) replaced on each change; the fault
    scripts are live queues consumed by :meth:`next_generation_fault` and :meth:`next_download_fault`.

    :param config: the knobs given at start; :meth:`reset` returns to them.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self._lock = threading.Lock()
        self._initial = copy.deepcopy(config)
        self._in_flight = 0
        self._apply(copy.deepcopy(config))
        self._stats = _new_stats()
        self._images: dict[str, ImageRecord] = {}
        self._unanswered: set[str] = set()

    def _apply(self, config: EmulatorConfig) -> None:
        self._config = config
        self._script: deque[str] = deque(config.script)
        self._download_script: deque[str] = deque(config.download_script)
        self._reseed(config.fault_seed)
        self._buckets = TokenBuckets(config.images_per_minute, config.burst_seconds)

    def _reseed(self, seed: int | None) -> None:
        self._draw = _Draws(seed)
        # Attempt numbers are part of each draw's identity, so they restart with the seed.
        self._generation_attempts: Counter[str] = Counter()
        self._download_attempts: Counter[str] = Counter()

    @property
    def config(self) -> EmulatorConfig:
        """The current knobs (do not mutate; use :meth:`update_config`)."""
        return self._config

    def config_view(self) -> dict[str, Any]:
        """The current knobs as a dict, with the scripts' remaining entries."""
        with self._lock:
            view = self._config.to_dict()
            view["script"] = list(self._script)
            view["download_script"] = list(self._download_script)
        return view

    def update_config(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` to the knobs and return the new view.

        Setting ``script`` or ``download_script`` replaces the queue; setting ``fault_seed``
        re-seeds the random draws and restarts the attempt numbers they are derived from;
        setting ``images_per_minute`` or ``burst_seconds`` fills every model's bucket anew.

        :raises ValueError: on an unknown knob or an invalid value.
        """
        with self._lock:
            current = self._config.with_changes(
                {"script": list(self._script), "download_script": list(self._download_script)}
            )
            updated = current.with_changes(changes)
            self._config = updated
            self._script = deque(updated.script)
            self._download_script = deque(updated.download_script)
            if "fault_seed" in changes:
                self._reseed(updated.fault_seed)
            if "images_per_minute" in changes or "burst_seconds" in changes:
                self._buckets = TokenBuckets(updated.images_per_minute, updated.burst_seconds)
        log.info("Emulator knobs changed: %s", ", ".join(sorted(changes)) or "none")
        return self.config_view()

    def reset(self) -> None:
        """Clear counters, images and scripts, and restore the knobs given at start.

        Requests in flight stay counted in ``generation_in_flight``: they are still running.
        """
        with self._lock:
            self._apply(copy.deepcopy(self._initial))
            self._stats = _new_stats()
            self._stats["generation_in_flight_peak"] = self._in_flight
            self._images = {}
            self._unanswered = set()
        log.info("Emulator state reset")

    def admit(self, model: str, images: int) -> int | None:
        """Take ``images`` from ``model``'s rate limit; ``None`` when admitted.

        :return: for a request the limit refuses, the whole seconds until it would pass (at
            least 1), for its ``Retry-After``; the refusal is counted in ``faults["rate_limited"]``.
        """
        with self._lock:
            wait = self._buckets.take(model, images)
            if wait is None:
                return None
            self._stats["faults"]["rate_limited"] += 1
        return max(1, math.ceil(wait))

    def latency(self, *identity: object) -> float:
        """Return ``latency`` plus its jitter, drawn for ``identity`` (model, prompt digest, attempt, image)."""
        config = self._config
        if config.latency_jitter <= 0:
            return config.latency
        with self._lock:
            draw = self._draw("latency", *identity)
        return config.latency + config.latency_jitter * draw

    def next_generation_fault(self, model: str, prompt_sha256: str) -> GenerationDraw:
        """Decide the fault of a generation request: script first, then knobs, then chance.

        :param model: the request's model id.
        :param prompt_sha256: hex sha256 of the request's prompt.
        """
        key = f"{model}\x1f{prompt_sha256}"
        with self._lock:
            self._generation_attempts[key] += 1
            attempt = self._generation_attempts[key]
            if self._script:
                return GenerationDraw(self._script.popleft(), attempt)
            config = self._config
            if config.quota_exceeded:
                return GenerationDraw("quota", attempt)
            draw = self._draw("generation", model, prompt_sha256, attempt)
        for name in GENERATION_RATES:
            rate = getattr(config, name)
            if draw < rate:
                return GenerationDraw(name.removeprefix("rate_"), attempt)
            draw -= rate
        return GenerationDraw("ok", attempt)

    def next_download_fault(self, record: ImageRecord) -> str:
        """Decide the fault of a download of ``record``: script first, then chance."""
        with self._lock:
            self._download_attempts[record.image_id] += 1
            attempt = self._download_attempts[record.image_id]
            if self._download_script:
                return self._download_script.popleft()
            config = self._config
            draw = self._draw("download", record.draw_key, attempt)
        if draw < config.rate_truncate:
            return "truncate"
        if draw < config.rate_truncate + config.rate_download_500:
            return "500"
        if draw < config.rate_truncate + config.rate_download_500 + config.rate_download_denied:
            return "denied"
        return "ok"

    def draw_item_failures(self, count: int, rate: float, *identity: object) -> set[int]:
        """Return the positions, out of ``count`` items, that fail by chance at ``rate``.

        :param identity: what names the request (model, prompt digest, attempt), so a seeded
            run fails the same items of the same request every time.
        """
        if rate <= 0:
            return set()
        with self._lock:
            return {index for index in range(count) if self._draw("item", *identity, index) < rate}

    def draw_cut(self, count: int, *identity: object) -> int:
        """Return after how many of ``count`` images a ``reset`` or ``stream_error`` cuts a stream: 0 to ``count - 1``.

        The ``cut_after`` knob fixes it (capped at ``count - 1``); else it is drawn.

        :param identity: what names the request (model, prompt digest, attempt), so a seeded
            run cuts the same stream at the same place every time.
        """
        with self._lock:
            draw = self._draw("cut", *identity)
            fixed = self._config.cut_after
        return min(count - 1, fixed if fixed is not None else int(draw * count))

    def enter_generation(self) -> None:
        """Count a generation request, and count it in flight (pair with :meth:`leave_generation`).

        Both counts change under one lock, so ``generation_requests == n`` together with
        ``generation_in_flight == 0`` means that all ``n`` requests are fully counted.
        """
        with self._lock:
            self._in_flight += 1
            stats = self._stats
            stats["generation_requests"] += 1
            stats["generation_in_flight_peak"] = max(stats["generation_in_flight_peak"], self._in_flight)
            stats["last_generation_at"] = time.time()  # when the latest request arrived (unix time)

    def leave_generation(self) -> None:
        """Count a generation request as finished, answered or not."""
        with self._lock:
            self._in_flight -= 1

    def count(self, key: str, amount: int = 1) -> None:
        """Add ``amount`` to the top-level counter ``key``."""
        with self._lock:
            self._stats[key] += amount

    def count_fault(self, fault: str) -> None:
        """Add one to ``faults[fault]``."""
        with self._lock:
            faults = self._stats["faults"]
            faults[fault] = faults.get(fault, 0) + 1

    def count_status(self, key: str, status: int) -> None:
        """Add one to the status counter ``key`` (``generation_status`` or ``download_status``)."""
        with self._lock:
            counter = self._stats[key]
            counter[str(status)] = counter.get(str(status), 0) + 1

    def add_images(self, records: list[ImageRecord], item_errors: int) -> None:
        """Keep generated images and count them as billed, with the request's failed items."""
        with self._lock:
            for record in records:
                self._images[record.image_id] = record
            self._stats["images_generated"] += len(records)
            self._stats["item_errors"] += item_errors

    def mark_unanswered(self, records: list[ImageRecord]) -> None:
        """Count billed images whose answer never reached the client (``billed_unanswered``)."""
        with self._lock:
            self._unanswered.update(record.image_id for record in records)
            self._stats["billed_unanswered"] += len(records)

    def image(self, image_id: str) -> ImageRecord | None:
        """Return the image with this id, if it was generated since the last reset."""
        with self._lock:
            return self._images.get(image_id)

    def images(self) -> list[dict[str, Any]]:
        """Return the metadata of every image generated since the last reset, oldest first.

        Each holds ``answered``: whether the response carrying it was sent to the client (as far
        as the emulator can tell; false for images billed under ``bill_abandoned`` and lost).
        """
        with self._lock:
            records = list(self._images.values())
            unanswered = set(self._unanswered)
        return [{**record.to_dict(), "answered": record.image_id not in unanswered} for record in records]

    def stats(self) -> dict[str, Any]:
        """Return a copy of the counters, with ``generation_in_flight``: requests running now."""
        with self._lock:
            stats = copy.deepcopy(self._stats)
            stats["generation_in_flight"] = self._in_flight
        return stats
