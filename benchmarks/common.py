"""Shared helpers of the benchmark scripts: child processes, tables, the closing JSON line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
WORKER = BENCHMARKS / "worker.py"


class WorkerError(RuntimeError):
    """A benchmark child process failed; the message holds the end of its output."""


def run_worker(spec: dict[str, Any], env: dict[str, str], timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``worker.py`` with ``spec`` in a fresh interpreter and return the JSON it prints last.

    :param spec: what the worker does (see :mod:`worker`).
    :param env: the child's environment (connections, Airflow home).
    :param timeout: seconds allowed.
    :raises WorkerError: the child failed or printed no JSON.
    """
    completed = subprocess.run(
        [sys.executable, str(WORKER), json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise WorkerError(
            f"worker {spec.get('mode')} exited with {completed.returncode}:\n"
            f"{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
        )
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        raise WorkerError(f"worker {spec.get('mode')} printed no JSON:\n{completed.stdout[-2000:]}") from None


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU model, Python and library versions."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("apache-airflow", "apache-airflow-providers-amazon", "boto3", "moto", "requests"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = "?"
    return {
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpu_model": model,
        "python": platform.python_version(),
        "versions": versions,
    }


def format_value(value: Any) -> str:
    """Show a number compactly: integers as they are, floats with three significant decimals."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    """Return ``rows`` as a plain-text table: numbers right-aligned, text left-aligned."""
    raw = [list(row) for row in rows]
    cells = [[format_value(value) for value in row] for row in raw]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]

    def numeric(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    out = [title] if title else []
    out.append("  ".join(header.ljust(width) for header, width in zip(headers, widths)).rstrip())
    out.append("  ".join("-" * width for width in widths))
    for values, row in zip(raw, cells):
        out.append(
            "  ".join(
                cell.rjust(width) if numeric(value) else cell.ljust(width)
                for value, cell, width in zip(values, row, widths)
            ).rstrip()
        )
    return "\n".join(out)


def emit(figures: dict[str, Any]) -> None:
    """Print the closing JSON line of a benchmark (always its last line)."""
    print(json.dumps(figures, sort_keys=True, default=str), flush=True)


def run_script(
    parser: argparse.ArgumentParser,
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Parse the arguments, measure, print the tables, and end with the JSON line."""
    figures = measure(parser.parse_args(argv))
    print(report(figures), flush=True)
    emit(figures)
    return figures


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def verdict(value: float | None, target: float, at_least: bool) -> str:
    """``met`` or ``MISSED`` for ``value`` against ``target`` (``at_least``: value >= target)."""
    if value is None:
        return "n/a"
    ok = value >= target if at_least else value <= target
    return "met" if ok else "MISSED"


def run_case(services: Any, spec: dict[str, Any], reset: bool = True) -> dict[str, Any]:
    """Reset the services, run one worker and add the servers' CPU seconds and the emulator's counters.

    :param services: a started :class:`servers.Services`.
    :param spec: the worker's spec.
    :param reset: reset the services first (``False``: the caller just did).
    :return: the worker's figures plus ``emulator_cpu_s``, ``s3_cpu_s``, ``generation_requests``,
        ``downloads_ok``, ``generation_in_flight_peak`` (the most generations the emulator
        held at once), ``emulator_renders`` and ``emulator_captions`` (since the emulator
        started: background bands drawn, once per palette, size and format, and caption bands
        drawn, one per image; everything else comes from its cache), ``setup_s`` (from the
        clock's start to the first generation reaching the emulator) and ``tail_s`` (from the
        last generation's answer to the end).
    """
    if reset:
        services.reset()
    before = services.server_cpu()
    figures = run_worker(spec, services.connection_env())
    after = services.server_cpu()
    stats = services.emulator_client.stats()
    health = services.emulator_client.health()
    created = [float(image["created"]) for image in services.emulator_client.images()]
    if created:
        # An image's "created" is stamped when its generation ends, after the latency.
        latency = float(services.emulator_client.get_config()["latency"])
        figures["setup_s"] = max(0.0, min(created) - latency - figures["started_at"])
        figures["tail_s"] = max(0.0, figures["ended_at"] - max(created))
    figures.update(
        emulator_cpu_s=after["emulator"] - before["emulator"],
        s3_cpu_s=after["s3"] - before["s3"],
        generation_requests=stats["generation_requests"],
        downloads_ok=stats["downloads_ok"],
        generation_in_flight_peak=stats["generation_in_flight_peak"],
        emulator_renders=health.get("renders"),
        emulator_captions=health.get("captions"),
    )
    return figures
