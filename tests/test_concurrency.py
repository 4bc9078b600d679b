"""AdaptiveLimit: halve on rate limits once per round trip, grow back by one per window of answers."""

from __future__ import annotations

import threading

import pytest

from airflow_provider_seedream.concurrency import AdaptiveLimit


def test_a_burst_of_rate_limits_halves_the_limit_once_per_round_trip():
    limit = AdaptiveLimit(16)
    limit.acquire(lambda: False)
    limit.release(seconds=30.0)  # a round trip of about 30 s (smoothed from the first guess of 1 s)
    for _ in range(5):
        limit.throttled()
    assert limit.limit == pytest.approx(16 / 2) and limit.rate_limited == 5


def test_answers_grow_the_limit_back_by_one_per_window_never_past_the_maximum():
    limit = AdaptiveLimit(8)
    limit.limit = 4.0
    for _ in range(4):
        limit.acquire(lambda: False)
        limit.release(seconds=0.1)
    assert 4.9 < limit.limit < 5.1, "four answers at a limit of four add one slot"
    for _ in range(200):
        limit.acquire(lambda: False)
        limit.release(seconds=0.1)
    assert limit.limit == 8.0
    for _ in range(50):
        limit.throttled()
        limit._last_cut = float("-inf")  # as if a round trip had passed between them
    assert limit.limit == 1.0, "never below one request in flight"


def test_acquire_waits_under_the_limit_and_gives_up_when_stopped():
    limit = AdaptiveLimit(2)
    assert limit.acquire(lambda: False) and limit.acquire(lambda: False)
    stop = threading.Event()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(limit.acquire(stop.is_set, poll=0.05)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "a third request waits while two are in flight"
    limit.release()
    waiter.join(5)
    assert got == [True] and limit.in_flight == 2
    stop.set()
    assert limit.acquire(stop.is_set) is False, "nothing is acquired once the batch stopped"


@pytest.mark.usefixtures("airflow_db")
def test_a_batch_halves_its_limit_when_the_service_answers_rate_limited(seedream_emulator, bucket):
    from tests.reliability.test_spend_safety import execute, operator

    seedream_emulator.configure(script=["429"] * 3, retry_after=0)  # RequestBurstTooFast, then answers
    op = operator(bucket, [f"a paced tile {n}" for n in range(3)], max_concurrency=8)
    assert len(execute(op)) == 3
    limit = op._runner.limit
    assert limit.rate_limited == 3, "each 429 from the service reaches the batch's in-flight limit"
    assert limit.limit <= 4 + 3 / 4, "the limit was halved, then grew back by at most one quarter an answer"


def test_a_fixed_limit_counts_rate_limits_and_keeps_its_maximum():
    limit = AdaptiveLimit(6, adaptive=False)
    for _ in range(4):
        limit.throttled()
        limit._last_cut = float("-inf")
    assert limit.limit == 6.0 and limit.rate_limited == 4


@pytest.mark.usefixtures("airflow_db")
def test_a_batch_without_adaptation_keeps_its_concurrency_through_rate_limits(seedream_emulator, bucket):
    from tests.reliability.test_spend_safety import execute, operator

    seedream_emulator.configure(script=["429"] * 3, retry_after=0)
    op = operator(bucket, [f"a steady tile {n}" for n in range(3)], max_concurrency=8, adaptive_concurrency="false")
    assert len(execute(op)) == 3
    assert op._runner.limit.rate_limited == 3 and op._runner.limit.limit == 8.0
