"""SendPacer: a pace learned from rate limits, and the window of requests in flight that pace needs."""

from __future__ import annotations

import threading

import pytest

from airflow_provider_seedream.concurrency import (
    CUT,
    FIRST_CUT,
    MARGIN,
    MIN_ADMITTED,
    START_WINDOW,
    SendPacer,
)

RATE = "ModelAccountIpmRateLimitExceeded"


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def answered(pacer: SendPacer, clock: Clock, latency: float) -> None:
    """One request through the window: its turn, ``latency`` seconds, its answer."""
    assert pacer.acquire(lambda: False)
    assert pacer.turn(1) == 0.0
    clock.now += latency
    pacer.release(answered=True)


def test_before_any_rate_limit_the_window_starts_small_and_grows_by_one_per_answer():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    assert pacer.window == START_WINDOW and pacer.pace is None and pacer.images_per_minute is None
    for _ in range(5):
        answered(pacer, clock, 1.0)
    assert pacer.window == START_WINDOW + 5
    for _ in range(100):
        answered(pacer, clock, 1.0)
    assert pacer.window == 64, "never past max_concurrency"


def test_the_first_window_goes_at_once_then_sends_are_paced_at_twice_what_it_delivers():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    assert [pacer.turn(1) for _ in range(START_WINDOW)] == [0.0] * START_WINDOW, "no latency known: no pace"
    pacer.release(answered=True)  # one answer after 0 s of this test's clock: the latency is 0
    pacer.latency = 0.5
    pacer._window = 20.0
    assert pacer.turn(1) == 0.0
    assert pacer.turn(1) == pytest.approx(0.5 / (2 * 20)), "2 x 20 requests per 0.5 s"


def test_the_first_rate_limit_paces_well_under_what_was_being_sent():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    pacer.latency = 1.0
    for _ in range(30):  # 30 sends within the last second
        pacer.turn(1)
        pacer._next_send = clock.now
        clock.now += 0.02
    pacer.refused(RATE, 1)
    assert pacer.rate_limited == 1
    assert pacer.pace == pytest.approx(FIRST_CUT * min(30.0, 2 * START_WINDOW / 1.0))
    assert pacer.images_per_minute == pytest.approx(60 * pacer.pace)


def measured(pacer: SendPacer, clock: Clock, images: int, seconds: float) -> None:
    """``images`` sends admitted, evenly over ``seconds``."""
    for _ in range(images):
        pacer._next_send = clock.now
        assert pacer.turn(1) == 0.0
        clock.now += seconds / images


def test_between_two_rate_limits_the_admitted_images_are_the_share_learned():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    pacer.latency = 1.0
    pacer.refused(RATE, 1)  # the first: the bucket is empty now, the measurement starts
    clock.now += 2.0  # past the hold, in which later refusals count once
    measured(pacer, clock, 40, 2.0)
    pacer.refused(RATE, 1)  # one of the 40 was refused after all
    assert pacer.learned == pytest.approx(39 / 4.0), "39 admitted over the 4 s since the last rate limit"
    assert pacer.pace == pytest.approx((1 - MARGIN) * 39 / 4.0)
    assert pacer.rate_limited == 2


def test_refusals_right_after_a_cut_count_once_and_too_few_admitted_cuts_without_measuring():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    pacer.latency = 1.0
    pacer.refused(RATE, 1)
    first = pacer.pace
    for _ in range(5):  # answers to requests sent before the cut took effect
        clock.now += 0.1
        pacer.refused(RATE, 1)
    assert pacer.pace == first and pacer.rate_limited == 6
    clock.now += 1.0
    measured(pacer, clock, MIN_ADMITTED - 5, 1.0)
    probed = pacer._pace_now()
    pacer.refused(RATE, 1)
    assert pacer.learned is None and pacer.pace == pytest.approx(CUT * probed)


def test_the_pace_probes_upwards_faster_the_longer_no_rate_limit_comes():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    pacer.latency = 1.0
    pacer.refused(RATE, 1)
    clock.now += 2.0
    measured(pacer, clock, 40, 2.0)
    pacer.refused(RATE, 1)
    base = pacer.pace
    steps = []
    for _ in range(4):
        clock.now += 2.5
        steps.append(pacer._pace_now())
    gains = [later - earlier for earlier, later in zip([base, *steps], steps)]
    assert all(gain > 0 for gain in gains) and gains == sorted(gains), gains
    assert steps[-1] > 2 * base, "ten quiet seconds add the whole share again"


def test_the_window_is_what_the_pace_needs_by_littles_law():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    pacer.latency = 2.0
    pacer._set_pace(clock.now, 5.0)  # 5 images a second, 2 s each: 10 in flight, 15 with headroom
    assert pacer.window == 15
    pacer._set_pace(clock.now, 100.0)
    assert pacer.window == 64, "never above max_concurrency"


def test_quota_refusals_are_no_rate_and_an_in_flight_limit_lowers_the_window():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    for code in ("QuotaExceeded", "SetLimitExceeded"):
        pacer.refused(code, 1)
    assert pacer.rate_limited == 0 and pacer.pace is None
    for _ in range(10):
        assert pacer.acquire(lambda: False)
    pacer.refused("InflightBatchsizeExceeded", 1)
    assert pacer.window == 9 and pacer.pace is None


def test_a_change_of_pace_applies_to_requests_already_waiting():
    clock = Clock()
    pacer = SendPacer(64, clock=clock)
    pacer._set_pace(clock.now, 1.0)
    assert pacer.turn(1) == 0.0
    assert pacer.turn(1) == pytest.approx(1.0), "the next send in a second"
    pacer._set_pace(clock.now, 10.0)
    assert pacer.turn(1) == pytest.approx(0.1), "a faster pace brings the waiting request forward"


def test_acquire_and_wait_turn_give_up_when_stopped():
    pacer = SendPacer(2)
    assert pacer.acquire(lambda: False) and pacer.acquire(lambda: False)
    stop = threading.Event()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(pacer.acquire(stop.is_set, poll=0.05)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "a third request waits while two are in flight"
    pacer.release()
    waiter.join(5)
    assert got == [True] and pacer.in_flight == 2
    stop.set()
    assert pacer.acquire(stop.is_set) is False, "nothing is acquired once the batch stopped"
    pacer._set_pace(pacer.clock(), 1.0 / 60.0)  # one image a minute: the next turn is far off
    pacer._next_send = pacer.clock() + 60.0
    stopping = threading.Event()
    threading.Timer(0.2, stopping.set).start()
    assert pacer.wait_turn(1, stopping.is_set) is False, "a request waiting for its turn is not sent once stopped"


def test_without_adaptation_nothing_is_paced_and_the_window_stays_at_its_maximum():
    clock = Clock()
    pacer = SendPacer(6, adaptive=False, clock=clock)
    for _ in range(4):
        pacer.refused(RATE, 1)
        clock.now += 5
    assert pacer.window == 6 and pacer.rate_limited == 4 and pacer.pace is None
    assert [pacer.turn(1) for _ in range(10)] == [0.0] * 10


@pytest.mark.usefixtures("airflow_db")
def test_a_batch_paces_itself_once_the_service_answers_rate_limited(seedream_emulator, bucket):
    from tests.reliability.test_spend_safety import execute, operator

    seedream_emulator.configure(script=["429"] * 3, retry_after=0)  # RequestBurstTooFast, then answers
    op = operator(bucket, [f"a paced tile {n}" for n in range(3)], max_concurrency=8)
    assert len(execute(op)) == 3
    pacer = op._runner.pacer
    assert pacer.rate_limited == 3, "each 429 from the service reaches the batch's pacer"
    assert pacer.pace is not None and pacer.images_per_minute is not None, "sends are paced from then on"


@pytest.mark.usefixtures("airflow_db")
def test_a_batch_without_adaptation_keeps_its_concurrency_through_rate_limits(seedream_emulator, bucket):
    from tests.reliability.test_spend_safety import execute, operator

    seedream_emulator.configure(script=["429"] * 3, retry_after=0)
    op = operator(bucket, [f"a steady tile {n}" for n in range(3)], max_concurrency=8, adaptive_concurrency="false")
    assert len(execute(op)) == 3
    assert op._runner.pacer.rate_limited == 3 and op._runner.pacer.window == 8 and op._runner.pacer.pace is None


@pytest.mark.usefixtures("airflow_db")
def test_a_prompt_waiting_for_its_turn_holds_no_claim(seedream_emulator, s3_client, bucket, monkeypatch):
    """The turn comes before the claim: a task stopped (or killed) while requests wait for their turn
    leaves records only of requests the service received, so a retry finds no false unknown outcome."""
    import time

    from airflow_provider_seedream import batch
    from airflow_provider_seedream.version_compat import AirflowFailException
    from tests.reliability.test_spend_safety import execute, ledger, operator

    class OneASecond(SendPacer):
        """A pacer that has learned a share of one image a second."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.learned, self.latency = 1.0, 0.1
            self._set_pace(self.clock(), 1.0)

    monkeypatch.setattr(batch, "SendPacer", OneASecond)
    op = operator(bucket, [f"a patient tile {n}" for n in range(8)], max_concurrency=4)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            execute(op)
        except BaseException as error:  # noqa: BLE001 - the stop's failure, asserted below
            failed.append(error)

    task = threading.Thread(target=run)
    task.start()
    deadline = time.monotonic() + 30
    while seedream_emulator.stats()["images_generated"] < 2:  # the next turn is a second away
        assert time.monotonic() < deadline and task.is_alive(), "the batch made no progress"
        time.sleep(0.01)
    op.on_kill()
    task.join(30)
    time.sleep(0.5)  # the threads waiting for their turn see the stop within a quarter second

    assert failed and isinstance(failed[0], AirflowFailException)
    sent = seedream_emulator.stats()["generation_requests"]
    records = ledger(s3_client, bucket)
    assert sent >= 2
    assert len(records) == sent, f"only requests the service received have records: {({stem: r['status'] for stem, r in records.items()})}"
    assert {record["status"] for record in records.values()} == {"stored"}
