"""What the emulator bills when no answer reaches the client, its gateway faults, and seeded draws.

The real service may finish and bill a request whose client timed out, whose connection broke
or whose answer a gateway lost; ``bill_abandoned`` (on by default) makes the emulator do the same
and count those images in ``billed_unanswered``. A seeded emulator faults the same requests on
every run, whatever the order in which concurrent requests arrive.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from airflow_provider_seedream.emulator import EmulatorServer
from tests.emulator.support import IMPATIENT, generate, settled_stats

GATEWAY_TITLES = {502: "502 Bad Gateway", 504: "504 Gateway Time-out"}


# --- gateway errors and the service's 503 ------------------------------------------------------


@pytest.mark.parametrize("bill_abandoned", [True, False])
@pytest.mark.parametrize("status", [502, 504])
def test_gateway_error_hides_images_the_model_made(emulator: EmulatorServer, status: int, bill_abandoned: bool) -> None:
    emulator.configure(script=[str(status)], bill_abandoned=bill_abandoned)
    lost = generate(emulator, sequential_image_generation="auto", sequential_image_generation_options={"max_images": 2})
    assert lost.status_code == status
    assert lost.headers["content-type"].startswith("text/html")
    assert f"<title>{GATEWAY_TITLES[status]}</title>" in lost.text
    assert "_emulator/files" not in lost.text and "error" not in lost.text, "no links, no service error body"
    assert generate(emulator).status_code == 200

    stats = emulator.stats()
    assert stats["faults"][str(status)] == 1
    assert stats["generation_status"] == {str(status): 1, "200": 1}
    assert stats["images_generated"] == (3 if bill_abandoned else 1)
    assert stats["billed_unanswered"] == (2 if bill_abandoned else 0)
    assert stats["abandoned"] == 0, "the client waited; the gateway lost the answer"
    answered = [image["answered"] for image in emulator.images()]
    assert answered == ([False, False, True] if bill_abandoned else [True])


def test_service_unavailable_is_not_billed(emulator: EmulatorServer) -> None:
    emulator.configure(script=["503"], bill_abandoned=True)
    refused = generate(emulator)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("ServiceUnavailable", "ServiceUnavailable")
    assert error["message"].endswith(f"Request id: {refused.headers['x-request-id']}")
    stats = emulator.stats()
    assert stats["faults"]["503"] == 1
    assert stats["generation_status"] == {"503": 1}
    assert stats["images_generated"] == stats["billed_unanswered"] == 0
    assert emulator.images() == []


@pytest.mark.parametrize(("knob", "status"), [("rate_503", 503), ("rate_502", 502), ("rate_504", 504)])
def test_new_fault_rates(emulator: EmulatorServer, knob: str, status: int) -> None:
    emulator.configure(**{knob: 1.0})
    assert [generate(emulator).status_code for _ in range(3)] == [status] * 3
    assert emulator.stats()["faults"][str(status)] == 3


# --- a client that gives up ---------------------------------------------------------------------


@pytest.mark.parametrize("bill_abandoned", [True, False])
def test_client_read_timeout_during_latency(emulator: EmulatorServer, bill_abandoned: bool) -> None:
    # Far longer than the client waits: only the client's leaving ends this request.
    emulator.configure(latency=600, bill_abandoned=bill_abandoned)
    with pytest.raises(requests.exceptions.ReadTimeout):
        generate(emulator, timeout=IMPATIENT)
    stats = settled_stats(emulator, requests_sent=1)
    assert stats["abandoned"] == 1
    assert stats["faults"] == dict.fromkeys(stats["faults"], 0), "no fault: the client gave up by itself"
    assert stats["generation_status"] == {}
    assert stats["images_generated"] == stats["billed_unanswered"] == (1 if bill_abandoned else 0)
    assert len(emulator.images()) == (1 if bill_abandoned else 0)


def test_knob_changes_at_run_time_and_reset_restores_it(emulator: EmulatorServer) -> None:
    emulator.configure(bill_abandoned=False, script=["reset"])
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        generate(emulator)
    assert emulator.stats()["images_generated"] == 0
    emulator.reset()
    assert emulator.get_config()["bill_abandoned"] is True
    emulator.configure(script=["reset"])
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        generate(emulator)
    stats = emulator.stats()
    assert stats["images_generated"] == stats["billed_unanswered"] == 1


# --- seeded draws ---------------------------------------------------------------------------------

PROMPTS = [f"seeded prompt {n}" for n in range(12)]
ATTEMPTS = 3
SEEDED_FAULTS = {
    "rate_429": 0.15,
    "rate_503": 0.1,
    "rate_500": 0.1,
    "rate_502": 0.1,
    "retry_after": 0,
    "rate_item_error": 0.25,
    "rate_truncate": 0.2,
    "rate_download_500": 0.2,
}


def _prompt_history(emulator: EmulatorServer, prompt: str) -> list[Any]:
    """Send ``prompt`` ``ATTEMPTS`` times; for each, what happened to the request, its items and downloads."""
    history: list[Any] = []
    for _ in range(ATTEMPTS):
        response = generate(
            emulator,
            prompt=prompt,
            sequential_image_generation="auto",
            sequential_image_generation_options={"max_images": 3},
        )
        if response.status_code != 200:
            history.append(response.status_code)
            continue
        items: list[Any] = []
        for item in response.json()["data"]:
            if "error" in item:
                items.append("item error")
                continue
            items.append([_download(item["url"]) for _ in range(2)])
        history.append(items)
    return history


def _download(url: str) -> str:
    try:
        response = requests.get(url, timeout=30)
    except requests.exceptions.ChunkedEncodingError:
        return "truncated"
    return str(response.status_code)


def _seeded_run(emulator: EmulatorServer, seed: int, order: list[str], workers: int) -> dict[str, list[Any]]:
    emulator.reset()
    emulator.configure(fault_seed=seed, **SEEDED_FAULTS)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        histories = dict(zip(order, pool.map(lambda prompt: _prompt_history(emulator, prompt), order)))
    return {prompt: histories[prompt] for prompt in PROMPTS}


def test_a_seed_faults_the_same_requests_whatever_the_order(emulator: EmulatorServer) -> None:
    concurrent = _seeded_run(emulator, seed=7, order=PROMPTS, workers=6)
    concurrent_stats = emulator.stats()
    one_by_one_reversed = _seeded_run(emulator, seed=7, order=PROMPTS[::-1], workers=1)
    assert one_by_one_reversed == concurrent
    assert emulator.stats()["faults"] == concurrent_stats["faults"]

    # The comparison means something only if the run met every kind of draw.
    attempts = [attempt for history in concurrent.values() for attempt in history]
    assert {429, 503, 500, 502} <= {attempt for attempt in attempts if isinstance(attempt, int)}
    items = [item for attempt in attempts if isinstance(attempt, list) for item in attempt]
    assert "item error" in items
    assert {"200", "truncated", "500"} <= {download for item in items if isinstance(item, list) for download in item}
    assert _seeded_run(emulator, seed=8, order=PROMPTS, workers=6) != concurrent, "the seed decides the faults"
