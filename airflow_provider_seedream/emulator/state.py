"""The emulator's mutable state: knobs, fault scripts, random draws, counters and images."""

from __future__ import annotations

import copy
import logging
import random
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from airflow_provider_seedream.emulator.config import EmulatorConfig
from airflow_provider_seedream.emulator.images import ImageRecord

log = logging.getLogger(__name__)

#: Keys of the ``faults`` counter, always present.
FAULT_KEYS = ("429", "500", "reset", "slow", "truncate", "download_500", "denied", "quota", "refused")


def _new_stats() -> dict[str, Any]:
    return {
        "generation_requests": 0,
        "generation_status": {},
        "images_generated": 0,
        "item_errors": 0,
        "downloads": 0,
        "downloads_ok": 0,
        "download_status": {},
        "faults": dict.fromkeys(FAULT_KEYS, 0),
        "abandoned": 0,
        "references": 0,
        "reference_requests": 0,
    }


class EmulatorState:
    """Everything that changes while the emulator runs, behind one lock.

    The knobs are an immutable snapshot (:attr:`config`) replaced on each change; the fault
    scripts are live queues consumed by :meth:`next_generation_fault` and :meth:`next_download_fault`.

    :param config: the knobs given at start; :meth:`reset` returns to them.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self._lock = threading.Lock()
        self._initial = copy.deepcopy(config)
        self._apply(copy.deepcopy(config))
        self._stats = _new_stats()
        self._images: dict[str, ImageRecord] = {}

    def _apply(self, config: EmulatorConfig) -> None:
        self._config = config
        self._script: deque[str] = deque(config.script)
        self._download_script: deque[str] = deque(config.download_script)
        self._rng = random.Random(config.fault_seed)

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
        re-seeds the random draws.

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
                self._rng = random.Random(updated.fault_seed)
        log.info("Emulator knobs changed: %s", ", ".join(sorted(changes)) or "none")
        return self.config_view()

    def reset(self) -> None:
        """Clear counters, images and scripts, and restore the knobs given at start."""
        with self._lock:
            self._apply(copy.deepcopy(self._initial))
            self._stats = _new_stats()
            self._images = {}
        log.info("Emulator state reset")

    def next_generation_fault(self) -> str:
        """Decide the fault of the next generation request: script first, then knobs, then chance."""
        with self._lock:
            if self._script:
                return self._script.popleft()
            config = self._config
            if config.quota_exceeded:
                return "quota"
            draw = self._rng.random()
            for fault, rate in (
                ("429", config.rate_429),
                ("500", config.rate_500),
                ("reset", config.rate_reset),
                ("slow", config.rate_slow),
            ):
                if draw < rate:
                    return fault
                draw -= rate
            return "ok"

    def next_download_fault(self) -> str:
        """Decide the fault of the next download: script first, then chance."""
        with self._lock:
            if self._download_script:
                return self._download_script.popleft()
            config = self._config
            draw = self._rng.random()
            if draw < config.rate_truncate:
                return "truncate"
            if draw < config.rate_truncate + config.rate_download_500:
                return "500"
            if draw < config.rate_truncate + config.rate_download_500 + config.rate_download_denied:
                return "denied"
            return "ok"

    def draw_item_failures(self, count: int, rate: float) -> set[int]:
        """Return the positions, out of ``count`` items, that fail by chance at ``rate``."""
        if rate <= 0:
            return set()
        with self._lock:
            return {index for index in range(count) if self._rng.random() < rate}

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

    def image(self, image_id: str) -> ImageRecord | None:
        """Return the image with this id, if it was generated since the last reset."""
        with self._lock:
            return self._images.get(image_id)

    def images(self) -> list[dict[str, Any]]:
        """Return the metadata of every image generated since the last reset, oldest first."""
        with self._lock:
            records = list(self._images.values())
        return [record.to_dict() for record in records]

    def stats(self) -> dict[str, Any]:
        """Return a copy of the counters."""
        with self._lock:
            return copy.deepcopy(self._stats)
