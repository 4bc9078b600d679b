"""Pacing of generation requests to the account's rate, learned from what the service admits and refuses.

The service limits each model to a number of images a minute for the account (about 500) and
answers 429 ``ModelAccountIpmRateLimitExceeded`` beyond it. That limit is a rate (a token bucket
refilling continuously), not a number of requests in flight, so a task paces its sends to a rate
it learns, and keeps the requests in flight only under the cap that rate needs.

**Learning the rate.** A rate-limit answer means the account's bucket is empty at that moment.
Between two of them, the images the service admitted from this task, over the time between them,
are exactly this task's sustainable share of the limit, whatever the bucket's size (it was empty
at both ends). The task then paces :data:`MARGIN` under that share and raises its pace by
:data:`PROBE` of it per second, faster the longer no rate limit comes (:data:`PROBE_DOUBLING`),
so that the next rate limit measures again. Refusals within a round trip of a change of pace
answer requests sent before it and count once; a rate limit after too little was admitted to
measure cuts the pace by :data:`CUT` instead. A change of pace applies at once to every request
waiting for its turn. Tasks sharing an
account (mapped chunks, Celery workers, other DAGs, other programs using the key) each learn
their own share the same way: no coordinator is needed, and none could see the programs outside
Airflow that spend from the same limit. Quota and spending-cap 429s are final, and not rate limits.

**Before the first rate limit** nothing is known: the window starts at :data:`START_WINDOW`
requests and grows by one per answer (doubling each round trip) up to ``max_concurrency``, and
sends are paced at twice what the window delivers, so a task that reaches the limit overshoots it
smoothly rather than in one burst.

**The window.** Once a rate is learned, the requests in flight are capped at what it needs by
Little's law: the pace times the observed latency, with :data:`HEADROOM`, never above
``max_concurrency``. A 429 ``InflightBatchsizeExceeded`` (too many requests in flight for the
account) lowers that cap to fewer than were in flight.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable

from airflow_provider_seedream.exceptions import NON_RETRYABLE_429_CODES

#: The 429 that limits requests in flight rather than images a minute.
IN_FLIGHT_CODE = "InflightBatchsizeExceeded"
#: Requests in flight before anything is known, and the pace's gain over what the window delivers.
START_WINDOW = 16
START_GAIN = 2.0
#: How far under the measured share sends are paced, and how fast the pace probes above it (per second).
MARGIN = 0.04
PROBE = 0.01
#: The longer no rate limit comes, the faster the probe (cubically): after this many quiet seconds it
#: has added the whole share again, so that a task left alone on the account soon takes what is free.
PROBE_DOUBLING = 10.0
#: What the first rate limit does to the pace (of what was being sent), and a later one when too
#: little was admitted since the one before to measure a share.
FIRST_CUT = 0.6
CUT = 0.85
#: Images admitted, and seconds, a measurement needs: one image either way is then a small error.
MIN_ADMITTED = 30
MIN_SPAN = 1.0
#: Requests in flight allowed over what Little's law says the pace needs.
HEADROOM = 1.5
# Smoothing of the latency estimate.
_LATENCY_WEIGHT = 0.2


class SendPacer:
    """
    The window of requests in flight and the pace of sends of one task, learned from rate limits.

    :param maximum: the most requests in flight (``max_concurrency``).
    :param adaptive: ``False`` keeps ``maximum`` requests in flight and sends at once, whatever the
        service answers (rate limits are still counted).
    :param clock: monotonic seconds (a test's clock).
    """

    def __init__(self, maximum: int, *, adaptive: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.clock = clock
        self.in_flight = 0
        self.rate_limited = 0
        #: Images a second sends are paced to once a rate limit was met; ``None`` before.
        self.pace: float | None = None
        #: The share of the account's limit measured at the last rate limit (images a second).
        self.learned: float | None = None
        self.latency: float | None = None
        self._window = float(min(maximum, START_WINDOW)) if adaptive else float(maximum)
        self._in_flight_cap = maximum
        self._paced_at = 0.0  # when the pace was last set (it probes upwards from there)
        self._next_send = float("-inf")
        self._measure_from: float | None = None  # the rate limit the next measurement starts at
        self._admitted = 0.0  # images admitted since then
        self._sent: collections.deque[tuple[float, int]] = collections.deque()  # recent sends, for the first cut
        self._changed = threading.Condition()
        self._local = threading.local()

    # -- the window --------------------------------------------------------------------------

    @property
    def window(self) -> int:
        """Requests allowed in flight now."""
        with self._changed:
            return self._window_now()

    def _window_now(self) -> int:
        if not self.adaptive:
            return self.maximum
        window = self._window
        pace = self._pace_now() if self.pace is not None else None
        if pace is not None and self.latency is not None:
            window = max(2.0, math.ceil(pace * self.latency * HEADROOM))
        return int(max(1, min(window, self._in_flight_cap, self.maximum)))

    def acquire(self, stopped: Callable[[], bool], poll: float = 0.5) -> bool:
        """Wait for a slot in the window; ``False`` when ``stopped()`` turned true meanwhile."""
        with self._changed:
            while self.in_flight >= self._window_now():
                if stopped():
                    return False
                self._changed.wait(poll)
            if stopped():
                return False
            self.in_flight += 1
            return True

    def release(self, *, answered: bool = False) -> None:
        """Free a slot; ``answered``: the service answered the request (its latency is learned)."""
        granted = getattr(self._local, "granted", None)
        self._local.granted = None
        with self._changed:
            self.in_flight -= 1
            if answered and granted is not None:
                seconds = self.clock() - granted
                self.latency = (
                    seconds if self.latency is None else self.latency + _LATENCY_WEIGHT * (seconds - self.latency)
                )
                if self.learned is None:
                    self._window = min(float(self.maximum), self._window + 1.0)
            self._changed.notify_all()

    # -- the pace ----------------------------------------------------------------------------

    def _pace_now(self) -> float | None:
        """Images a second allowed now: the learned pace, probing upwards since it was set."""
        if not self.adaptive:
            return None
        if self.pace is None:
            if self.latency is None:
                return None  # the first window goes at once
            return START_GAIN * self._window / self.latency
        share = self.learned if self.learned is not None else self.pace
        quiet = max(0.0, self.clock() - self._paced_at)
        return self.pace + share * (PROBE * quiet + (quiet / PROBE_DOUBLING) ** 3)

    @property
    def images_per_minute(self) -> float | None:
        """The pace now, in images a minute; ``None`` while nothing limits it."""
        with self._changed:
            pace = self._pace_now() if self.pace is not None else None
        return None if pace is None else 60.0 * pace

    def turn(self, images: int) -> float:
        """Take the send of a request of ``images`` images if the pace allows it now (``0.0``), else
        the seconds to wait before asking again. A change of pace applies to every request waiting."""
        with self._changed:
            now = self.clock()
            if now < self._next_send:
                return self._next_send - now
            pace = self._pace_now()
            self._next_send = max(now, self._next_send) + (images / pace if pace else 0.0)
            self._sent.append((now, images))
            while self._sent and self._sent[0][0] < now - self._recent_span():
                self._sent.popleft()
            self._admitted += images  # admitted, unless the service refuses it
            self._local.granted = now
            return 0.0

    def unused_turn(self, images: int) -> None:
        """A turn taken for ``images`` images was not used: nothing was sent, so nothing was admitted."""
        self._local.granted = None
        with self._changed:
            self._admitted -= images

    def wait_turn(self, images: int, stopped: Callable[[], bool]) -> bool:
        """Wait for a request's turn at the pace; ``False`` when ``stopped()`` turned true (nothing is sent)."""
        while True:
            if stopped():
                return False
            left = self.turn(images)
            if left <= 0.0:
                return True
            with self._changed:
                self._changed.wait(min(left, 0.25))

    def refused(self, code: str | None, images: int) -> None:
        """The service answered 429 ``code`` to a request of ``images`` images."""
        if code in NON_RETRYABLE_429_CODES:
            return  # a quota or a spending cap: final, and no measure of the rate
        with self._changed:
            self.rate_limited += 1
            self._admitted -= images
            if not self.adaptive:
                return
            if code == IN_FLIGHT_CODE:
                self._in_flight_cap = max(1, self.in_flight - 1)
                return
            self._rate_limit()
            self._changed.notify_all()

    def _rate_limit(self) -> None:
        now = self.clock()
        if now - self._paced_at < max(MIN_SPAN, self.latency or 0.0) and self.pace is not None:
            return  # answers to requests sent before the last cut took effect: counted once
        span = now - self._measure_from if self._measure_from is not None else 0.0
        if self._measure_from is not None and self._admitted >= MIN_ADMITTED and span >= MIN_SPAN:
            # Empty at the last rate limit and empty now: what was admitted between is this task's share.
            self.learned = self._admitted / span
            self._set_pace(now, (1.0 - MARGIN) * self.learned)
        elif self.pace is None:  # the first: well under what was being sent
            back = self._recent_span()
            recent = max(sum(images for at, images in self._sent if at > now - back) / back, 1.0 / back)
            current = self._pace_now()
            self._set_pace(now, FIRST_CUT * (recent if current is None else min(current, recent)))
        else:  # too little admitted since the last rate limit to measure a share
            self._set_pace(now, CUT * (self._pace_now() or self.pace))

    def _recent_span(self) -> float:
        """How far back the sends the first rate limit cuts from are kept: a round trip, at least 1 s."""
        return max(1.0, self.latency or 1.0)

    def _set_pace(self, now: float, pace: float) -> None:
        self.pace = max(pace, 1.0 / 60.0)
        self._paced_at = now
        self._next_send = min(self._next_send, now + 1.0 / self.pace)
        self._measure_from = now  # the bucket is empty now: the next measurement starts here
        self._admitted = 0.0
