"""What the emulator's tests share: the request they send, a reader of streamed events, and waits on the counters."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from airflow_provider_seedream.emulator import EmulatorServer

AUTH = {"Authorization": "Bearer test-key"}
V1 = "/v1/images/generations"
V3 = "/api/v3/images/generations"
# An id the package does not know: only generic checks apply, so tiny sizes render fast.
SMALL_MODEL = "emulator-test-model"
SEEDREAM_5 = "doubao-seedream-5-0-260128"
SEEDREAM_4 = "doubao-seedream-4-0-250828"
ACCESS_DENIED = b'{"Code":"AccessDenied","Message":"Access Denied","EC":"0003-00000015"}'
# Connect generously, but give up reading quickly: a client that leaves an answer it waits for.
IMPATIENT = (30.0, 0.3)
# How long a wait on a condition may last before the test fails: a bound, not an expectation.
PATIENCE = 60.0


def generate(
    emulator: EmulatorServer,
    path: str = V1,
    headers: dict[str, str] | None = None,
    timeout: float | tuple[float, float] = 30,
    **body: Any,
) -> requests.Response:
    """Send one generation request for a small image; ``body`` overrides the request's fields."""
    payload = {"model": SMALL_MODEL, "prompt": "a lighthouse at dawn", "size": "64x48", **body}
    return requests.post(
        emulator.url + path, json=payload, headers=AUTH if headers is None else headers, timeout=timeout
    )


@dataclass(frozen=True)
class Event:
    """One server-sent event as read off the wire.

    :param name: its ``event:`` field, or ``None``.
    :param data: its ``data:`` field, as text.
    :param at: seconds from the request's start to its arrival.
    """

    name: str | None
    data: str
    at: float

    def json(self) -> Any:
        """Return the data parsed as JSON."""
        return json.loads(self.data)


def stream(
    emulator: EmulatorServer, path: str = V1, timeout: float | tuple[float, float] = 30, **body: Any
) -> requests.Response:
    """Send one streamed generation request (``stream: true``); read the answer with :func:`events`."""
    payload = {"model": SMALL_MODEL, "prompt": "a lighthouse at dawn", "size": "64x48", "stream": True, **body}
    return requests.post(emulator.url + path, json=payload, headers=AUTH, timeout=timeout, stream=True)


def events(response: requests.Response, started: float | None = None) -> Iterator[Event]:
    """Yield the events of a streamed answer as they arrive, by the server-sent events rules.

    Lines end with ``\n``; a blank line ends an event; ``event:`` and ``data:`` fields are kept
    (several ``data:`` lines join with ``\n``). An event cut short by the end of the body is not
    yielded: a cut connection raises from ``requests`` instead.
    """
    started = time.monotonic() if started is None else started
    name: str | None = None
    data: list[str] = []
    for line in response.iter_lines(decode_unicode=False):
        text = line.decode("utf-8")
        if not text:
            if data:
                yield Event(name, "\n".join(data), time.monotonic() - started)
            name, data = None, []
            continue
        field, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


def sha256(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}")
        time.sleep(0.02)


def settled_stats(emulator: EmulatorServer, requests_sent: int) -> dict[str, Any]:
    """Return the counters once ``requests_sent`` generation requests are all fully handled.

    A client that gives up returns before the emulator notices it left; this waits for the
    emulator to finish the request's accounting instead of guessing how long that takes.
    """

    def settled() -> bool:
        stats = emulator.stats()
        return stats["generation_requests"] == requests_sent and stats["generation_in_flight"] == 0

    wait_for(settled, f"{requests_sent} generation request(s) to be fully handled")
    return emulator.stats()


def quiet_stats(emulator: EmulatorServer, timeout: float = PATIENCE) -> dict[str, Any]:
    """Return the counters once nothing is in flight and no new request arrived for a moment.

    For tests that cannot know how many requests a task sent before it stopped.
    """
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        stats = emulator.stats()
        current = (stats["generation_requests"], stats["images_generated"])
        if stats["generation_in_flight"] == 0 and current == previous:
            return stats
        previous = current
        time.sleep(0.3)
    raise AssertionError(f"the emulator was still receiving requests after {timeout} s")
