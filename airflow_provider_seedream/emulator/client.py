"""A client of the emulator's control API, for an emulator in this process or another one."""

from __future__ import annotations

import time
from typing import Any, cast


class EmulatorClient:
    """Talk to a running emulator's ``/_emulator/`` control API over HTTP.

    :param url: the emulator's base URL, such as ``http://127.0.0.1:8089``.
    :param timeout: seconds allowed for each control call.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        import requests

        response = requests.request(method, f"{self.url}/_emulator/{path}", json=payload, timeout=self.timeout)
        if response.status_code == 400:
            raise ValueError(response.json().get("error", {}).get("message", response.text))
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        """Return the emulator's health answer."""
        return cast(dict[str, Any], self._call("GET", "health"))

    def get_config(self) -> dict[str, Any]:
        """Return the current knobs."""
        return cast(dict[str, Any], self._call("GET", "config"))

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs (see :class:`~airflow_provider_seedream.emulator.config.EmulatorConfig`).

        :return: the knobs after the change.
        :raises ValueError: on an unknown knob or an invalid value.
        """
        return cast(dict[str, Any], self._call("POST", "config", knobs))

    def stats(self) -> dict[str, Any]:
        """Return the counters since the last reset."""
        return cast(dict[str, Any], self._call("GET", "stats"))

    def images(self) -> list[dict[str, Any]]:
        """Return the metadata of the images generated since the last reset."""
        return cast(list[dict[str, Any]], self._call("GET", "images"))

    def reset(self) -> None:
        """Clear counters, images and scripts and restore the knobs given at start."""
        self._call("POST", "reset")

    def wait_ready(self, timeout: float = 15.0, is_alive: Any = None) -> None:
        """Poll the health endpoint until it answers.

        :param timeout: seconds to wait.
        :param is_alive: an optional callable; waiting stops early when it returns ``False``.
        :raises RuntimeError: when the emulator did not answer in time.
        """
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_alive is not None and not is_alive():
                raise RuntimeError(f"the emulator at {self.url} stopped before answering")
            try:
                if requests.get(f"{self.url}/_emulator/health", timeout=1.0).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"the emulator at {self.url} did not answer within {timeout} s")
