"""An in-flight limit that backs off when the service rate-limits and grows back when it answers.

The account's limit (about 500 images a minute per model) is shared by every task that uses
the key. Each task holds its own limit and adapts it the way TCP adapts its window: it halves
on a rate-limit answer (at most once per round trip, so one burst of 429s counts once) and
grows by one slot per limit's worth of answers. Tasks sharing an account converge on their
shares without talking to each other; an Airflow pool still caps how many tasks run at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Smoothing of the round-trip estimate, and its value before the first answer.
_RTT_WEIGHT = 0.2
_FIRST_RTT = 1.0


class AdaptiveLimit:
    """
    Additive increase, multiplicative decrease of the requests a task keeps in flight.

    :param maximum: the most requests in flight (``max_concurrency``); the limit starts there.
    :param minimum: the least the limit falls to.
    :param adaptive: ``False`` keeps the limit at ``maximum`` whatever the service answers; rate
        limits are still counted.
    """

    def __init__(self, maximum: int, minimum: int = 1, *, adaptive: bool = True) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.adaptive = adaptive
        self.limit = float(maximum)
        self.in_flight = 0
        self.rate_limited = 0
        self._round_trip = _FIRST_RTT
        self._last_cut = float("-inf")
        self._changed = threading.Condition()

    def acquire(self, stopped: Callable[[], bool], poll: float = 0.5) -> bool:
        """Wait for a slot under the limit; ``False`` when ``stopped()`` turned true meanwhile."""
        with self._changed:
            while self.in_flight >= int(self.limit):
                if stopped():
                    return False
                self._changed.wait(poll)
            if stopped():
                return False
            self.in_flight += 1
            return True

    def release(self, seconds: float | None = None) -> None:
        """Free a slot; ``seconds`` is how long an answered request took (it grows the limit)."""
        with self._changed:
            self.in_flight -= 1
            if seconds is not None:
                self._round_trip += _RTT_WEIGHT * (seconds - self._round_trip)
                self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
            self._changed.notify_all()

    def throttled(self) -> None:
        """The service answered a rate limit: halve the limit, once per round trip."""
        with self._changed:
            self.rate_limited += 1
            now = time.monotonic()
            if self.adaptive and now - self._last_cut >= self._round_trip:
                self._last_cut = now
                self.limit = max(float(self.minimum), self.limit / 2.0)
