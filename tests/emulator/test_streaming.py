"""Streamed answers (``stream: true``): the service's server-sent events, timing, billing and faults."""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from airflow_provider_seedream.emulator import EmulatorServer
from tests.emulator.support import (
    AUTH,
    IMPATIENT,
    SEEDREAM_5,
    V1,
    V3,
    Event,
    events,
    generate,
    settled_stats,
    sha256,
    stream,
)

GROUP = {"sequential_image_generation": "auto"}
SUCCEEDED = "image_generation.partial_succeeded"
FAILED = "image_generation.partial_failed"
COMPLETED = "image_generation.completed"


def group(max_images: int) -> dict[str, object]:
    return {**GROUP, "sequential_image_generation_options": {"max_images": max_images}}


def read_all(response: requests.Response, started: float | None = None) -> list[Event]:
    with response:
        return list(events(response, started))


@pytest.mark.parametrize("path", [V1, V3])
def test_group_streams_one_event_per_image_then_completed_and_done(emulator: EmulatorServer, path: str) -> None:
    emulator.configure(latency=0.3)
    started = time.monotonic()
    response = stream(emulator, path=path, **group(3))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-request-id"]
    received = read_all(response, started)

    assert [event.name for event in received] == [SUCCEEDED, SUCCEEDED, SUCCEEDED, COMPLETED, None]
    assert received[-1].data == "[DONE]"
    payloads = [event.json() for event in received[:-1]]
    assert all(payload["type"] == event.name for payload, event in zip(payloads, received))
    images = payloads[:3]
    assert [image["image_index"] for image in images] == [0, 1, 2]
    for image in images:
        assert set(image) == {"type", "model", "created", "image_index", "url", "size"}
        assert (image["model"], image["size"]) == ("emulator-test-model", "64x48")
    assert payloads[3] == {
        "type": COMPLETED,
        "model": "emulator-test-model",
        "created": payloads[3]["created"],
        "usage": {"generated_images": 3, "output_tokens": 3 * 64 * 48 // 256, "total_tokens": 3 * 64 * 48 // 256},
    }
    # One image every `latency`, the first after `latency` (bounds, not expectations: the machine is shared).
    arrivals = [event.at for event in received[:3]]
    assert arrivals[0] >= 0.3
    assert arrivals[1] - arrivals[0] >= 0.25 and arrivals[2] - arrivals[1] >= 0.25

    records = emulator.images()
    assert [record["index"] for record in records] == [0, 1, 2]
    assert all(record["answered"] for record in records)
    downloads = [requests.get(image["url"], timeout=10).content for image in images]
    assert [sha256(blob) for blob in downloads] == [record["sha256"] for record in records]
    stats = emulator.stats()
    assert stats["generation_status"] == {"200": 1}
    assert (stats["images_generated"], stats["billed_unanswered"], stats["generation_in_flight"]) == (3, 0, 0)


def test_wire_format_is_exact(emulator: EmulatorServer) -> None:
    with stream(emulator, prompt="wire", **group(1)) as response:
        raw = response.raw.read()
    blocks = raw.split(b"\n\n")
    assert blocks[-1] == b"", "the stream ends with a blank line"
    image, completed, done = blocks[:-1]
    assert image.startswith(b"event: image_generation.partial_succeeded\ndata: {")
    assert image.count(b"\n") == 1, "one event line, one data line"
    assert completed.startswith(b"event: image_generation.completed\ndata: {")
    assert done == b"data: [DONE]"


def test_without_group_mode_a_single_image_streams_the_same_way(emulator: EmulatorServer) -> None:
    received = read_all(stream(emulator, prompt="just one"))
    assert [event.name for event in received] == [SUCCEEDED, COMPLETED, None]
    assert received[0].json()["image_index"] == 0
    assert received[1].json()["usage"]["generated_images"] == 1
    assert len(emulator.images()) == 1


def test_b64_json_events_hold_the_images(emulator: EmulatorServer) -> None:
    received = read_all(stream(emulator, response_format="b64_json", output_format="png", size="96x64", **group(2)))
    images = [event.json() for event in received[:2]]
    assert all("url" not in image for image in images)
    blobs = [base64.b64decode(image["b64_json"]) for image in images]
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as picture:
            assert (picture.format, picture.size) == ("PNG", (96, 64))
    assert [sha256(blob) for blob in blobs] == [record["sha256"] for record in emulator.images()]


def test_a_failed_item_is_a_partial_failed_event(emulator: EmulatorServer) -> None:
    received = read_all(stream(emulator, prompt="three views [item-error]", **group(3)))
    assert [event.name for event in received] == [SUCCEEDED, SUCCEEDED, FAILED, COMPLETED, None]
    failed = received[2].json()
    assert failed["image_index"] == 2
    assert failed["error"]["code"] == "OutputImageSensitiveContentDetected"
    assert "url" not in failed and "size" not in failed
    assert received[3].json()["usage"]["generated_images"] == 2
    stats = emulator.stats()
    assert (stats["images_generated"], stats["item_errors"]) == (2, 1)


def test_checks_and_refusals_answer_plain_json_before_any_stream(emulator: EmulatorServer) -> None:
    invalid = stream(emulator, model=SEEDREAM_5, size="100x100", **GROUP)
    assert invalid.status_code == 400
    assert invalid.headers["content-type"] == "application/json"
    assert (invalid.json()["error"]["code"], invalid.json()["error"]["param"]) == ("InvalidParameter", "size")
    not_a_flag = generate(emulator, stream="yes")
    assert not_a_flag.status_code == 400 and not_a_flag.json()["error"]["param"] == "stream"
    refused = stream(emulator, prompt="a [refuse] picture", **GROUP)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "InputTextSensitiveContentDetected"
    emulator.configure(script=["429", "503"], retry_after=0.5)
    burst = stream(emulator, **GROUP)
    assert (burst.status_code, burst.headers["retry-after"]) == (429, "0.5")
    assert stream(emulator, **GROUP).json()["error"]["code"] == "ServiceUnavailable"
    assert emulator.stats()["images_generated"] == 0


def test_internal_error_answers_500_after_the_latency(emulator: EmulatorServer) -> None:
    emulator.configure(script=["500", "500"], latency=0.2)
    started = time.monotonic()
    response = stream(emulator, **group(3))
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "InternalServiceError"
    stats = emulator.stats()
    assert (stats["generation_status"], stats["images_generated"]) == ({"500": 1}, 0)

    # A client gone before the failure: still nothing made, even under bill_abandoned.
    emulator.configure(latency=600, bill_abandoned=True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        stream(emulator, timeout=IMPATIENT, **group(3))
    stats = settled_stats(emulator, requests_sent=2)
    assert (stats["abandoned"], stats["images_generated"]) == (1, 0)


@pytest.mark.parametrize("bill_abandoned", [True, False])
def test_gateway_error_hides_a_streamed_group(emulator: EmulatorServer, bill_abandoned: bool) -> None:
    emulator.configure(script=["504"], bill_abandoned=bill_abandoned)
    response = stream(emulator, **group(3))
    assert response.status_code == 504
    assert response.headers["content-type"].startswith("text/html")
    stats = settled_stats(emulator, requests_sent=1)
    assert stats["generation_status"] == {"504": 1}
    assert stats["images_generated"] == stats["billed_unanswered"] == (3 if bill_abandoned else 0)
    assert not any(image["answered"] for image in emulator.images())


def test_slow_delays_the_first_event(emulator: EmulatorServer) -> None:
    emulator.configure(script=["slow"], slow_seconds=0.4, latency=0.1)
    started = time.monotonic()
    received = read_all(stream(emulator, **group(2)), started)
    assert received[0].at >= 0.5
    assert [event.name for event in received] == [SUCCEEDED, SUCCEEDED, COMPLETED, None]


# --- a dropped stream ----------------------------------------------------------------------------


def _cut_stream(emulator: EmulatorServer, count: int) -> tuple[list[Event], bytes]:
    """Send a streamed group that the emulator cuts; return the whole events and the raw bytes read."""
    response = stream(emulator, prompt="a cut group", **group(count))
    assert response.status_code == 200
    raw = bytearray()
    with response, pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in response.iter_content(chunk_size=None):
            raw += chunk
    blocks = bytes(raw).split(b"\n\n")
    whole = [Event(*_fields(block), at=0.0) for block in blocks[:-1]]
    return whole, blocks[-1]


def _fields(block: bytes) -> tuple[str, str]:
    name_line, data_line = block.decode().split("\n")
    return name_line.removeprefix("event: "), data_line.removeprefix("data: ")


@pytest.mark.parametrize("bill_abandoned", [True, False])
def test_reset_cuts_the_stream_after_some_images(emulator: EmulatorServer, bill_abandoned: bool) -> None:
    count = 6
    emulator.configure(script=["reset"], bill_abandoned=bill_abandoned, latency=0.05)
    whole, partial = _cut_stream(emulator, count)
    cut = len(whole)
    assert 0 <= cut < count
    assert [event.json()["image_index"] for event in whole] == list(range(cut))
    assert all(event.name == SUCCEEDED for event in whole)
    # The next event was cut inside its data line: no URL, no end.
    assert partial.startswith(f"event: {SUCCEEDED}\ndata: {{".encode())
    assert f'"image_index": {cut}'.encode() in partial and b"url" not in partial and b"\n\n" not in partial

    stats = settled_stats(emulator, requests_sent=1)
    assert stats["faults"]["reset"] == 1
    assert stats["generation_status"] == {}, "a cut stream has no final status"
    made = count if bill_abandoned else cut
    assert stats["images_generated"] == made
    assert stats["billed_unanswered"] == made - cut
    records = emulator.images()
    assert [record["answered"] for record in records] == [True] * cut + [False] * (made - cut)
    received_ids = {urlsplit(event.json()["url"]).path.rsplit("/", 1)[1].split(".")[0] for event in whole}
    assert received_ids == {record["id"] for record in records if record["answered"]}


def test_a_stream_error_ends_the_group_after_the_images_it_delivered(emulator: EmulatorServer) -> None:
    emulator.configure(script=["stream_error"], cut_after=2, latency=0.05)
    received = read_all(stream(emulator, **group(5)))

    assert [event.name for event in received] == [SUCCEEDED, SUCCEEDED, "error", None]
    assert received[-1].data == "[DONE]"
    error = received[2].json()
    assert error["type"] == "error" and error["error"]["code"] == "InternalServiceError"
    assert "Request id:" in error["error"]["message"]
    stats = settled_stats(emulator, requests_sent=1)
    assert stats["faults"]["stream_error"] == 1
    assert stats["images_generated"] == 2, "the two images delivered are billed, and nothing after the error"
    assert stats["billed_unanswered"] == 0
    assert [record["answered"] for record in emulator.images()] == [True, True]


def test_cut_after_fixes_where_a_reset_cuts(emulator: EmulatorServer) -> None:
    emulator.configure(script=["reset", "reset"], cut_after=3, latency=0.0)
    assert [len(_cut_stream(emulator, 6)[0]), len(_cut_stream(emulator, 2)[0])] == [3, 1], "capped at the group minus one"
    settled_stats(emulator, requests_sent=2)


def test_a_stream_error_without_streaming_answers_500(emulator: EmulatorServer) -> None:
    emulator.configure(script=["stream_error"])
    response = generate(emulator)
    assert response.status_code == 500 and response.json()["error"]["code"] == "InternalServiceError"
    assert settled_stats(emulator, requests_sent=1)["images_generated"] == 0


def test_a_seed_cuts_streams_at_the_same_place(emulator: EmulatorServer) -> None:
    def cuts() -> list[int]:
        emulator.reset()
        emulator.configure(fault_seed=11, rate_reset=1.0)
        places = []
        for _ in range(4):
            whole, _ = _cut_stream(emulator, 8)
            places.append(len(whole))
        settled_stats(emulator, requests_sent=4)
        return places

    first = cuts()
    assert cuts() == first
    assert len(set(first)) > 1, "the place is drawn per request"


# --- a client that leaves ------------------------------------------------------------------------


@pytest.mark.parametrize("bill_abandoned", [True, False])
def test_client_leaving_mid_stream(emulator: EmulatorServer, bill_abandoned: bool) -> None:
    emulator.configure(latency=0.3, bill_abandoned=bill_abandoned)
    response = stream(emulator, **group(4))
    first = next(events(response))
    assert first.json()["image_index"] == 0
    # Closing an unfinished answer closes its connection: the server notices while it waits for the next image.
    response.close()

    stats = settled_stats(emulator, requests_sent=1)
    assert stats["abandoned"] == 1
    assert stats["generation_status"] == {}
    assert stats["images_generated"] == (4 if bill_abandoned else 1)
    assert stats["billed_unanswered"] == (3 if bill_abandoned else 0)
    answered = [image["answered"] for image in emulator.images()]
    assert answered == ([True, False, False, False] if bill_abandoned else [True])


@pytest.mark.parametrize("bill_abandoned", [True, False])
def test_client_leaving_before_the_first_image(emulator: EmulatorServer, bill_abandoned: bool) -> None:
    emulator.configure(latency=600, bill_abandoned=bill_abandoned)
    payload = {"model": "emulator-test-model", "prompt": "gone", "size": "64x48", "stream": True, **group(2)}
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(emulator.url + V1, json=payload, headers=AUTH, timeout=(30, 0.3))
    stats = settled_stats(emulator, requests_sent=1)
    assert stats["abandoned"] == 1
    assert stats["images_generated"] == stats["billed_unanswered"] == (2 if bill_abandoned else 0)
