"""The benchmark scripts run end to end at tiny sizes and end with their JSON figures.

Each script starts its own emulator and moto S3 server on free ports (``rate_limit.py`` also
its own Airflow deployment); nothing here asserts a timing, only that the script exits 0 and
its last line is a JSON object with its keys; where a small run still means something (the
streaming benchmark's first image, the throughput against the naive loop), its headline is held
to a loose floor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

CASES: dict[str, tuple[list[str], set[str]]] = {
    "throughput": (
        ["--n", "24", "--latency", "1.0", "--concurrency", "12", "--baseline-n", "2", "--http-to-s3-n", "2", "--repeat", "1",
         "--large-n", "6", "--large-concurrency", "3", "--large-latency", "0.05"],
        {"benchmark", "n", "latency_s", "concurrency", "wall_s", "images_per_s", "efficiency", "naive_wall_s",
         "speedup_vs_naive", "speedup_vs_http_to_s3", "ratio_vs_threads", "emulator_renders", "emulator_captions", "cases",
         "large", "large_efficiency"},
    ),
    "plan": (["--sizes", "20"], {"benchmark", "concurrency", "cases", "plan_10k_s", "plan_10k_measured"}),
    "memory": (
        ["--small", "2", "--large", "4", "--size", "2K", "--concurrency", "2"],
        {"benchmark", "peak_rss_small_mb", "peak_rss_large_mb", "growth", "within_bound", "naive_growth", "operator", "naive"},
    ),
    "parse_cost": (
        ["--repeat", "1"],
        {"benchmark", "import_extra_ms", "sdk_import_ms", "heavy_modules_added", "baseline_parse_ms", "dags"},
    ),
    "overhead": (
        ["--n", "4", "--concurrency", "2", "--repeat", "1"],
        {"benchmark", "task_ms_per_image", "marginal_ms_per_image", "naive_ms_per_image", "provider_ms_per_image",
         "s3_ms_per_image", "emulator_ms_per_image", "cases"},
    ),
    "streaming": (
        # Latency long enough to outweigh the task's start on a loaded machine (about 2 s there).
        ["--images", "6", "--latency", "1.0", "--repeat", "1"],
        {"benchmark", "images", "latency_s", "first_image_s", "total_s", "first_image_sooner", "total_ratio", "ways"},
    ),
    "pacing": (
        ["--tiny"],
        {"benchmark", "prompts", "images_per_minute", "cases", "one_task_of_limit", "one_task_share_429",
         "two_tasks_of_limit", "two_tasks_share_429"},
    ),
    # A real Airflow deployment (api-server, scheduler, dag-processor) running the catalog DAG twice.
    "rate_limit": (
        ["--tiny"],
        {"benchmark", "prompts", "small_prompts", "images_per_minute", "achieved_images_per_minute", "achieved_ratio",
         "rate_limited_share", "wall_s", "bound_s", "wall_ratio", "peak_rss_mb", "rss_growth", "max_rss_growth",
         "largest_xcom_bytes", "pool_slots", "max_concurrency", "runs", "fixed_concurrency", "adaptation_429_ratio",
         "adaptation_rate_ratio"},
    ),
    "run_all": (["--tiny", "--only", "overhead"], {"benchmark", "preset", "machine", "results"}),
}


def run_script(name: str, arguments: list[str]) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py`` and return its last line parsed as JSON."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW_CONN_")}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    assert completed.returncode == 0, f"{name} exited {completed.returncode}:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
    lines = completed.stdout.strip().splitlines()
    assert lines, f"{name} printed nothing"
    figures = json.loads(lines[-1])
    assert isinstance(figures, dict)
    return figures


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_ends_with_its_json_figures(name: str) -> None:
    arguments, keys = CASES[name]
    figures = run_script(name, arguments)
    assert keys <= set(figures), f"missing keys: {sorted(keys - set(figures))}"
    if name == "run_all":
        assert set(figures["results"]) == {"overhead"}
    if name == "parse_cost":
        assert "parse_cost_baseline.py" in figures["dags"]
    if name == "streaming":
        assert set(figures["ways"]) == {"streamed", "at_once"}
        # The headline at a loose floor: 6 images at 1 s, the first one stored about 6x sooner when
        # quiet, 2.5-3x beside two other test runs.
        assert figures["first_image_sooner"] >= 2, figures["first_image_s"]
    if name == "throughput":
        # The headline at a loose floor: 24 prompts at 1 s, 12 at a time, against one after another
        # (about 9x here on a loaded machine; 12x at most).
        assert figures["speedup_vs_naive"] >= 5, (figures["wall_s"], figures["naive_wall_s"])
    if name == "pacing":
        cases = figures["cases"]
        assert set(cases) == {"1-paced", "1-fixed", "2-paced", "2-fixed"}
        assert all(case["images"] == 60 for case in cases.values()), {n: c["images"] for n, c in cases.items()}
        # The headline at a loose floor: a task that paces itself meets far fewer 429s than one that
        # keeps max_concurrency in flight (about 0.02 against 0.35 here).
        assert cases["1-paced"]["share_429"] < 0.5 * cases["1-fixed"]["share_429"], cases
        assert cases["1-paced"]["learned_images_per_minute"][0] is not None, "the task learned a pace"
    if name == "rate_limit":
        # Every product made its image in both runs, and the task processes were found under the scheduler.
        assert {run["state"] for run in figures["runs"].values()} == {"success"}
        assert (figures["runs"]["small"]["images_made"], figures["runs"]["large"]["images_made"]) == (20, 40)
        # The baseline beside it: the same large run, its tasks' limits fixed at max_concurrency.
        fixed = figures["fixed_concurrency"]
        assert fixed["state"] == "success" and fixed["images_made"] == 40
        assert fixed["lowest_task_limit"] in (None, figures["max_concurrency"]), fixed["lowest_task_limit"]
        assert "generate_images" in figures["peak_rss_mb"]
