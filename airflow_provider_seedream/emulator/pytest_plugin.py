"""Pytest fixtures that run the Seedream emulator (registered as the ``seedream_emulator`` plugin).

Fixtures:

``seedream_emulator_config`` (session)
    The :class:`~airflow_provider_seedream.emulator.config.EmulatorConfig` the session's
    emulator starts with; ``None`` (the default knobs) unless a ``conftest.py`` overrides it.

``seedream_emulator_server`` (session)
    An :class:`~airflow_provider_seedream.emulator.server.EmulatorServer` started once per
    session on a free port of 127.0.0.1 and stopped at the end.

``seedream_emulator`` (function)
    The same server, reset before the test (counters, images and fault scripts cleared, knobs
    back to the start config) once the generations earlier tests left running have finished (at
    most ``QUIET_SECONDS``), so that none counts in this test's figures; knobs changed with
    ``seedream_emulator.configure(...)`` last for one test only. Use ``seedream_emulator.url``
    as the connection's host, and ``seedream_emulator.stats()`` / ``seedream_emulator.images()``
    to check what happened.
    A client that gives up (a read timeout, a killed task) returns before the emulator notices
    it left and bills what it made (``bill_abandoned``): before counting, wait until
    ``stats()["generation_in_flight"] == 0`` with ``generation_requests`` at the number sent.

Example::

    def test_retries_429(seedream_emulator):
        seedream_emulator.configure(script=["429", "ok"], retry_after=0.01)
        ...  # call the endpoint at seedream_emulator.url
        assert seedream_emulator.stats()["faults"]["429"] == 1

This module imports only pytest at load time; the server's modules load when a fixture is used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

#: How long the generations an earlier test left running are waited for before a reset.
QUIET_SECONDS = 30.0

if TYPE_CHECKING:
    from airflow_provider_seedream.emulator.config import EmulatorConfig
    from airflow_provider_seedream.emulator.server import EmulatorServer


@pytest.fixture(scope="session")
def seedream_emulator_config() -> EmulatorConfig | None:
    """The knobs the session's emulator starts with (override in a ``conftest.py``)."""
    return None


@pytest.fixture(scope="session")
def seedream_emulator_server(seedream_emulator_config: EmulatorConfig | None) -> Iterator[EmulatorServer]:
    """An emulator started once for the session."""
    from airflow_provider_seedream.emulator.server import EmulatorServer

    server = EmulatorServer(config=seedream_emulator_config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def seedream_emulator(seedream_emulator_server: EmulatorServer) -> Iterator[EmulatorServer]:
    """The session's emulator, reset before the test, once the requests of earlier tests have finished.

    A generation still running (a stream a test abandoned, say) would otherwise count its images
    in the counters of the next test. It is waited for up to :data:`QUIET_SECONDS`.
    """
    deadline = time.monotonic() + QUIET_SECONDS
    while seedream_emulator_server.stats()["generation_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    seedream_emulator_server.reset()
    yield seedream_emulator_server
