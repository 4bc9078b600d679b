"""The account's rate limit (``images_per_minute``) and the latency model (jitter, per image), over real HTTP."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from airflow_provider_seedream.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_seedream.emulator.state import TokenBuckets
from tests.emulator.support import V1, V3, events, generate, settled_stats, stream

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OTHER_MODEL = "emulator-test-model-b"
RATE_LIMITED = "ModelAccountIpmRateLimitExceeded"


def group(max_images: int) -> dict[str, object]:
    return {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": max_images}}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the token bucket's arithmetic ---------------------------------------------------------


def test_bucket_holds_burst_seconds_of_the_limit_and_refills_continuously() -> None:
    clock = Clock()
    buckets = TokenBuckets(images_per_minute=600, burst_seconds=6, clock=clock)  # 10 a second, 60 when full
    assert buckets.capacity == 60
    assert [buckets.take("m", 15) for _ in range(4)] == [None] * 4
    assert buckets.take("m", 1) == pytest.approx(0.1), "empty: one image is a tenth of a second away"
    clock.now += 0.5
    assert buckets.take("m", 5) is None, "half a second refilled five"
    assert buckets.take("m", 15) == pytest.approx(1.5)
    clock.now += 3600
    assert [buckets.take("m", 15) for _ in range(5)][-1] == pytest.approx(1.5), "never more than the capacity"
    assert buckets.take("other", 15) is None, "each model has its own bucket"


def test_bucket_always_holds_one_whole_group() -> None:
    buckets = TokenBuckets(images_per_minute=6, burst_seconds=6, clock=Clock())
    assert buckets.capacity == 15
    assert buckets.take("m", 15) is None


def test_no_limit_admits_everything() -> None:
    buckets = TokenBuckets(images_per_minute=None, burst_seconds=6, clock=Clock())
    assert all(buckets.take("m", 15) is None for _ in range(1000))


# --- the limit over HTTP ------------------------------------------------------------------


@pytest.mark.parametrize("path", [V1, V3])
def test_requests_beyond_the_limit_are_answered_429_with_retry_after(emulator: EmulatorServer, path: str) -> None:
    # One a minute, so that however slowly this machine sends, nothing refills meanwhile; the
    # bucket holds one group: 15. (How the bucket refills is shown with a clock of its own above.)
    emulator.configure(images_per_minute=1)
    answers = [generate(emulator, path=path, prompt=f"product {i}") for i in range(15)]
    assert [answer.status_code for answer in answers] == [200] * 15
    refused = generate(emulator, path=path, prompt="product 15")
    assert refused.status_code == 429
    assert 50 <= int(refused.headers["retry-after"]) <= 60, "one image at one a minute: within a minute"
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == (RATE_LIMITED, "TooManyRequests")
    assert refused.headers["x-request-id"] in error["message"]
    stats = settled_stats(emulator, 16)
    assert stats["faults"]["rate_limited"] == 1
    assert stats["generation_status"] == {"200": 15, "429": 1}
    assert stats["images_generated"] == 15, "a refused request makes nothing"


def test_a_group_takes_as_many_images_as_it_asks_for(emulator: EmulatorServer) -> None:
    emulator.configure(images_per_minute=60, burst_seconds=60)  # one a second; 60 when full
    answers = [generate(emulator, prompt=f"set {i}", **group(15)) for i in range(4)]
    assert [len(answer.json()["data"]) for answer in answers] == [15] * 4
    refused = generate(emulator, prompt="set 4", **group(15))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == RATE_LIMITED
    assert 1 <= int(refused.headers["retry-after"]) <= 15, "15 images at one a second: 15 s at most"
    assert generate(emulator, prompt="one more", model=OTHER_MODEL).status_code == 200, "another model's own bucket"


def test_a_streamed_request_is_refused_with_plain_json(emulator: EmulatorServer) -> None:
    emulator.configure(images_per_minute=60)
    assert generate(emulator, **group(15)).status_code == 200
    with stream(emulator, **group(2)) as refused:
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["code"] == RATE_LIMITED


def test_a_steady_client_at_the_limit_is_never_refused(emulator: EmulatorServer) -> None:
    emulator.configure(images_per_minute=600, burst_seconds=1)  # capacity 15 (one group), ten a second
    assert generate(emulator, **group(15)).status_code == 200
    time.sleep(1.6)  # 16 images' worth, 15 of which fit
    assert generate(emulator, **group(15)).status_code == 200


def test_the_limit_changes_at_run_time_and_reset_restores_it(emulator: EmulatorServer) -> None:
    emulator.configure(images_per_minute=60)
    assert generate(emulator, **group(15)).status_code == 200
    assert generate(emulator).status_code == 429
    emulator.configure(images_per_minute=None)
    assert [generate(emulator, **group(15)).status_code for _ in range(3)] == [200] * 3, "null: no limit"
    emulator.configure(images_per_minute=60)
    assert generate(emulator, **group(15)).status_code == 200, "a new limit starts with a full bucket"
    emulator.reset()
    assert emulator.get_config()["images_per_minute"] is None
    assert emulator.stats()["faults"]["rate_limited"] == 0


def test_limit_given_at_start_holds_from_the_first_request() -> None:
    with EmulatorServer(EmulatorConfig(images_per_minute=30, burst_seconds=1)) as server:
        assert server.get_config()["images_per_minute"] == 30.0
        assert generate(server, **group(15)).status_code == 200
        refused = generate(server)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2", "one image at one per 2 s"
        server.reset()
        assert generate(server, **group(15)).status_code == 200, "a reset fills the bucket"


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"images_per_minute": 0}, "images_per_minute must be a positive number of images per minute, or null for no limit; got 0"),
        ({"images_per_minute": -500}, "images_per_minute must be a positive number .* got -500"),
        ({"images_per_minute": "fast"}, "images_per_minute must be a finite number, got 'fast'"),
        ({"images_per_minute": True}, "images_per_minute must be a finite number, got True"),
        ({"burst_seconds": 0}, "burst_seconds must be positive, got 0"),
        ({"burst_seconds": None}, "burst_seconds must be a finite number, got None"),
        ({"latency_jitter": -0.5}, "latency_jitter must not be negative, got -0.5"),
        ({"latency_per_image": "yes"}, "latency_per_image must be true or false, got 'yes'"),
    ],
)
def test_bad_values_are_refused_naming_the_knob(emulator: EmulatorServer, knobs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        emulator.configure(**knobs)
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(**knobs)  # type: ignore[arg-type]
    assert emulator.get_config()["images_per_minute"] is None, "a refused change changes nothing"


def test_command_line_takes_the_limit_and_refuses_a_bad_one() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    module = [sys.executable, "-m", "airflow_provider_seedream.emulator"]
    refused = subprocess.run([*module, "--images-per-minute", "0"], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "images_per_minute must be a positive number" in refused.stderr

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        *module, "--port", str(port), "--images-per-minute", "120", "--burst-seconds", "2",
        "--latency", "0.1", "--latency-jitter", "0.2", "--latency-per-image", "--log-level", "warning",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None and "ready" in process.stdout.readline()
            config = requests.get(f"http://127.0.0.1:{port}/_emulator/config", timeout=10).json()
            assert (config["images_per_minute"], config["burst_seconds"]) == (120.0, 2.0)
            assert (config["latency"], config["latency_jitter"], config["latency_per_image"]) == (0.1, 0.2, True)
        finally:
            process.terminate()
            process.communicate(timeout=10)


# --- the latency model --------------------------------------------------------------------


def timed(emulator: EmulatorServer, **body: object) -> float:
    started = time.monotonic()
    response = generate(emulator, **body)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def test_jitter_spreads_requests_within_its_bounds(emulator: EmulatorServer) -> None:
    emulator.configure(latency=0.2, latency_jitter=0.6)
    durations = [timed(emulator, prompt=f"jitter {i}") for i in range(8)]
    assert min(durations) >= 0.2
    assert max(durations) <= 0.2 + 0.6 + 1.0, "the bound plus room for a shared machine"
    assert statistics.pstdev(durations) > 0.05, f"requests are not in lock-step: {durations}"


def test_seeded_jitter_gives_the_same_request_the_same_latency(emulator: EmulatorServer) -> None:
    # The module's emulator is seeded; a reset restarts the attempt numbers the draws derive from.
    emulator.configure(latency=0.0, latency_jitter=1.5)
    first = [timed(emulator, prompt=f"seeded {i}") for i in range(3)]
    emulator.reset()
    emulator.configure(latency=0.0, latency_jitter=1.5)
    second = [timed(emulator, prompt=f"seeded {i}") for i in range(3)]
    assert max(abs(a - b) for a, b in zip(first, second)) < 0.3, (first, second)
    assert max(first) - min(first) > 0.1, f"different prompts, different draws: {first}"


def test_a_group_takes_one_latency_or_one_per_image(emulator: EmulatorServer) -> None:
    emulator.configure(latency=0.3)
    assert timed(emulator, prompt="at once", **group(4)) < 4 * 0.3
    emulator.configure(latency_per_image=True)
    assert timed(emulator, prompt="one by one", **group(4)) >= 4 * 0.3
    assert timed(emulator, prompt="a single image") < 4 * 0.3, "without group mode: one image, one latency"


def test_a_streamed_group_sends_one_image_every_jittered_latency(emulator: EmulatorServer) -> None:
    emulator.configure(latency=0.2, latency_jitter=0.2, latency_per_image=True)
    started = time.monotonic()
    with stream(emulator, prompt="streamed", **group(4)) as response:
        arrivals = [event.at for event in events(response, started) if event.name == "image_generation.partial_succeeded"]
    assert len(arrivals) == 4
    gaps = [later - earlier for earlier, later in zip([0.0, *arrivals], arrivals)]
    assert all(gap >= 0.19 for gap in gaps), gaps
    assert arrivals[-1] <= 4 * 0.4 + 1.0, arrivals
