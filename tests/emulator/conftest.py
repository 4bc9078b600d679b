"""An emulator of the emulator tests' own, seeded, shared by the module's tests and reset for each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_seedream.emulator import EmulatorConfig, EmulatorServer


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(fault_seed=1)) as running:
        yield running


@pytest.fixture
def emulator(server: EmulatorServer) -> EmulatorServer:
    server.reset()
    return server
