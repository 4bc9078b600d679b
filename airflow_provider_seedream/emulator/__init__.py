"""A local emulator of the Seedream image endpoint, for development, tests and demos.

Run it with ``python -m airflow_provider_seedream.emulator``, or in-process::

    from airflow_provider_seedream.emulator import EmulatorServer

    with EmulatorServer() as emulator:
        emulator.configure(rate_429=0.2)
        ...  # point a connection's host at emulator.url
        print(emulator.stats())

The names below are imported on first use, so importing this package stays cheap
(no FastAPI, uvicorn or Pillow until a server is built).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_seedream.emulator.app import create_app
    from airflow_provider_seedream.emulator.client import EmulatorClient
    from airflow_provider_seedream.emulator.config import EmulatorConfig
    from airflow_provider_seedream.emulator.server import EmulatorServer

__all__ = ["EmulatorClient", "EmulatorConfig", "EmulatorServer", "create_app"]

_EXPORTS = {
    "EmulatorClient": "airflow_provider_seedream.emulator.client",
    "EmulatorConfig": "airflow_provider_seedream.emulator.config",
    "EmulatorServer": "airflow_provider_seedream.emulator.server",
    "create_app": "airflow_provider_seedream.emulator.app",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
