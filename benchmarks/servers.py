"""The services a benchmark runs against, each in its own process: the emulator and moto's S3 server.

Both servers run as separate child processes on free local ports, so the process being
measured (the task) does not share its CPU time or memory with them. :class:`Services`
starts both, creates the bucket, hands out the connection environment variables and stops
both on exit. :class:`ServerProcess` reads a server's CPU time and peak memory from ``/proc``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-bench-0123456789abcdef"
BUCKET = "bench"
REGION = "us-east-1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3; utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def process_memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of process ``pid``, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def benchmark_environment(airflow_home: str | Path) -> dict[str, str]:
    """Environment for Airflow processes of a benchmark: a private home, quiet logs, test credentials."""
    env = os.environ.copy()
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{Path(airflow_home) / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            # An existing PYTHONPATH comes first, so a patched copy of the package can be measured.
            "PYTHONPATH": os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(ROOT)])),
        }
    )
    env.pop("AWS_PROFILE", None)
    return env


class ServerProcess:
    """A server running in a child process, with its URL and resource readings.

    :param name: a label for tables and errors.
    :param command: the command line.
    :param url: the base URL the server answers on.
    :param ready_path: a path under ``url`` that answers 200 once the server is up.
    :param env: the child's environment.
    """

    def __init__(self, name: str, command: list[str], url: str, ready_path: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.url = url
        self._log = tempfile.TemporaryFile(prefix=f"bench-{name}-")
        self._popen = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self._wait_ready(ready_path)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._popen.pid

    def _wait_ready(self, ready_path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._popen.returncode}:\n{self.output()}")
            try:
                if requests.get(self.url + ready_path, timeout=1.0).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout} s:\n{self.output()}")

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used since it started."""
        return process_cpu_seconds(self.pid)

    def memory_kb(self) -> dict[str, int]:
        """The server's current and peak RSS in KiB."""
        return process_memory_kb(self.pid)

    def output(self) -> str:
        """What the server printed so far (its last 4,000 characters)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and close its log."""
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(10)
        self._log.close()


def emulator_flags(knobs: Mapping[str, Any]) -> list[str]:
    """The emulator's command-line flags for ``knobs``: ``{"images_per_minute": 600}`` gives
    ``--images-per-minute 600``, a true flag gives the bare option, a false or ``None`` one nothing."""
    flags: list[str] = []
    for name, value in knobs.items():
        option = "--" + name.replace("_", "-")
        if value is True:
            flags.append(option)
        elif value is not None and value is not False:
            flags += [option, str(value)]
    return flags


def start_emulator(
    latency: float = 0.0, env: dict[str, str] | None = None, knobs: Mapping[str, Any] | None = None
) -> ServerProcess:
    """Start ``python -m airflow_provider_seedream.emulator`` on a free port with the given latency.

    :param knobs: more knobs given at start, by their names (see :func:`emulator_flags`); a
        reset of the emulator returns to them.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "airflow_provider_seedream.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--latency",
        repr(float(latency)),
        "--api-key",
        API_KEY,
        "--log-level",
        "warning",
        *emulator_flags(knobs or {}),
    ]
    return ServerProcess("emulator", command, f"http://127.0.0.1:{port}", "/_emulator/health", env)


def start_moto(env: dict[str, str] | None = None) -> ServerProcess:
    """Start moto's S3 server (``python -m moto.server``) on a free port."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return ServerProcess("moto", command, f"http://127.0.0.1:{port}", "/moto-api/data.json", env)


class Services:
    """The emulator and moto's S3 server for one benchmark run; a context manager.

    :param latency: seconds the emulator adds to each generation (its ``latency`` knob).
    :param emulator_knobs: the emulator's other knobs at start (kept across resets).
    """

    def __init__(self, latency: float = 0.0, emulator_knobs: Mapping[str, Any] | None = None) -> None:
        self.latency = latency
        self.emulator_knobs = dict(emulator_knobs or {})
        self.home = Path(tempfile.mkdtemp(prefix="seedream-bench-home-"))
        self.base_env = benchmark_environment(self.home)
        self.emulator: ServerProcess | None = None
        self.s3: ServerProcess | None = None

    def __enter__(self) -> Services:
        self.emulator = start_emulator(self.latency, self.base_env, self.emulator_knobs)
        try:
            self.s3 = start_moto(self.base_env)
        except BaseException:
            self.emulator.stop()
            raise
        self.reset_s3()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for server in (self.s3, self.emulator):
            if server is not None:
                server.stop()

    @property
    def emulator_client(self) -> Any:
        """An :class:`~airflow_provider_seedream.emulator.client.EmulatorClient` of the emulator."""
        from airflow_provider_seedream.emulator.client import EmulatorClient

        assert self.emulator is not None
        return EmulatorClient(self.emulator.url)

    def s3_client(self) -> Any:
        """A boto3 client of moto's S3 server."""
        import boto3

        assert self.s3 is not None
        return boto3.client(
            "s3",
            endpoint_url=self.s3.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def reset_s3(self) -> None:
        """Drop everything moto holds (its memory too) and create an empty bucket ``bench``."""
        assert self.s3 is not None
        requests.post(self.s3.url + "/moto-api/reset", timeout=60).raise_for_status()
        self.s3_client().create_bucket(Bucket=BUCKET)

    def reset(self) -> None:
        """Empty S3 and clear the emulator's counters and images (its rendered images stay cached)."""
        self.reset_s3()
        self.emulator_client.reset()

    def warm_up(self, size: str | None) -> None:
        """Have the emulator render (and cache) the image of ``size`` before anything is timed."""
        assert self.emulator is not None
        body: dict[str, Any] = {"model": "doubao-seedream-5-0-260128", "prompt": "warm-up"}
        if size:
            body["size"] = size
        self.emulator_client.configure(latency=0.0)
        try:
            response = requests.post(
                self.emulator.url + "/v1/images/generations",
                json=body,
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=120,
            )
            response.raise_for_status()
            requests.get(response.json()["data"][0]["url"], timeout=120).raise_for_status()
        finally:
            self.emulator_client.configure(latency=self.latency)
        self.emulator_client.reset()

    def connection_env(self) -> dict[str, str]:
        """Environment with ``seedream_default``, ``seedream_http`` and ``aws_default`` pointing here."""
        assert self.emulator is not None and self.s3 is not None
        env = dict(self.base_env)
        port = self.emulator.url.rsplit(":", 1)[1]
        env.update(
            {
                "AIRFLOW_CONN_SEEDREAM_DEFAULT": json.dumps(
                    {"conn_type": "seedream", "host": self.emulator.url, "password": API_KEY}
                ),
                "AIRFLOW_CONN_SEEDREAM_HTTP": json.dumps(
                    {"conn_type": "http", "host": "127.0.0.1", "port": int(port), "schema": "http"}
                ),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": "testing",
                        "password": "testing",
                        "extra": {"endpoint_url": self.s3.url, "region_name": REGION},
                    }
                ),
                "BENCH_EMULATOR_URL": self.emulator.url,
                "BENCH_S3_URL": self.s3.url,
                "BENCH_API_KEY": API_KEY,
                "BENCH_BUCKET": BUCKET,
            }
        )
        return env

    def server_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each server."""
        assert self.emulator is not None and self.s3 is not None
        return {"emulator": self.emulator.cpu_seconds(), "s3": self.s3.cpu_seconds()}
