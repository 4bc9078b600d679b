"""Overhead: CPU time per image spent in the task process, with no generation latency.

With the emulator's latency at 0 the task does nothing but its own work, so the task
process's CPU seconds (``getrusage`` of the fresh child, from ``execute()`` to its end)
divided by the images stored is the provider's cost per image. The emulator and moto's
S3 server are separate processes; their CPU seconds per image are shown beside it, not
counted in it.

Each case also runs with a single prompt: its CPU is the fixed set-up (connections, the
boto3 client, the bucket check), and (CPU(N) - CPU(1)) / (N - 1) is the marginal CPU per image.

The naive loop (``requests.post``, ``requests.get(url).content``, boto3 ``put_object``) does
the least a task can do for one image: one generation request, one download, one upload.
``provider_ms_per_image`` = operator marginal CPU per image - naive marginal CPU per image is
what the provider adds on top of those transfers (its reuse check, resume records,
validation, hashing, spooling, retries, records and thread pool). The operator runs at C
(default 16) and at C=1, which shows what the thread pool itself costs.

Usage: ``python benchmarks/overhead.py [--n 200] [--concurrency 16] [--size 2K]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, run_case, run_script, table, verdict  # noqa: E402
from servers import Services  # noqa: E402

TARGET_MS = 5.0


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="prompts (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="operator max_concurrency (default: %(default)s)")
    parser.add_argument("--size", default=None, help="image size (default: the service's 2048x2048)")
    parser.add_argument(
        "--repeat", type=int, default=4, help="runs of each case, interleaved; the lowest CPU counts (default: %(default)s)"
    )
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case, the repeats interleaved so that a busy spell of the machine hits every case alike."""
    label = f"o{int(time.time())}"
    plan = {f"operator_c{args.concurrency}": ("operator", args.concurrency), "operator_c1": ("operator", 1), "naive": ("naive", 1)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    singles: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    with Services(latency=0.0) as services:
        services.warm_up(args.size)
        for attempt in range(max(1, args.repeat)):
            for name, (mode, workers) in plan.items():
                spec = {
                    "mode": mode,
                    "n": args.n,
                    "concurrency": workers,
                    "size": args.size,
                    "prefix": f"overhead/{name}-{attempt}",
                    "label": f"{label}-{name}-{attempt}",
                }
                result = run_case(services, spec)
                if result["stored_objects"] != args.n:
                    raise RuntimeError(f"{name}: stored {result['stored_objects']} of {args.n}")
                runs[name].append(result)
                single = {**spec, "n": 1, "prefix": f"overhead/{name}-single-{attempt}", "label": f"{label}-{name}-1-{attempt}"}
                singles[name].append(run_case(services, single))
    n = args.n
    cases: dict[str, dict[str, Any]] = {}
    for name in plan:
        best = min(runs[name], key=lambda run: run["cpu_s"])
        fixed = min(run["cpu_s"] for run in singles[name])
        best.update(
            fixed_cpu_s=fixed,
            marginal_ms_per_image=1000 * (best["cpu_s"] - fixed) / max(n - 1, 1),
            marginal_ms_all_runs=[round(1000 * (run["cpu_s"] - fixed) / max(n - 1, 1), 2) for run in runs[name]],
            task_ms_per_image=1000 * best["cpu_s"] / n,
            s3_ms_per_image=1000 * best["s3_cpu_s"] / n,
            emulator_ms_per_image=1000 * best["emulator_cpu_s"] / n,
            images_per_s=n / best["wall_s"],
        )
        cases[name] = best
    naive_ms = cases["naive"]["marginal_ms_per_image"]
    operator = cases[f"operator_c{args.concurrency}"]
    figures: dict[str, Any] = {
        "benchmark": "overhead",
        "n": args.n,
        "concurrency": args.concurrency,
        "size": args.size or "2048x2048",
        "image_bytes": operator["stored_bytes"] // max(operator["stored_objects"], 1),
        "task_ms_per_image": operator["task_ms_per_image"],
        "marginal_ms_per_image": operator["marginal_ms_per_image"],
        "marginal_ms_per_image_c1": cases["operator_c1"]["marginal_ms_per_image"],
        "fixed_cpu_s": operator["fixed_cpu_s"],
        "naive_ms_per_image": naive_ms,
        "provider_ms_per_image": operator["marginal_ms_per_image"] - naive_ms,
        "provider_ms_per_image_c1": cases["operator_c1"]["marginal_ms_per_image"] - naive_ms,
        "s3_ms_per_image": operator["s3_ms_per_image"],
        "emulator_ms_per_image": operator["emulator_ms_per_image"],
        "cpu_count": machine()["cpu_count"],
        "load_avg_1m": machine()["load_avg_1m"],
        "repeat": max(1, args.repeat),
        "cases": cases,
    }
    return figures


def report(figures: dict[str, Any]) -> str:
    """The readable tables."""
    names = {
        f"operator_c{figures['concurrency']}": f"SeedreamToS3Operator (C={figures['concurrency']})",
        "operator_c1": "SeedreamToS3Operator (C=1)",
        "naive": "naive PythonOperator loop",
    }
    naive_ms = figures["naive_ms_per_image"]
    rows = [
        [
            names[name],
            case["n"],
            case["wall_s"],
            case["images_per_s"],
            case["fixed_cpu_s"],
            case["task_ms_per_image"],
            case["marginal_ms_per_image"],
            case["marginal_ms_per_image"] - naive_ms,
            case["s3_ms_per_image"],
            case["emulator_ms_per_image"],
        ]
        for name, case in figures["cases"].items()
    ]
    return "\n".join(
        [
            f"Overhead: N={figures['n']} prompts at zero latency, size {figures['size']} "
            f"(~{figures['image_bytes'] / 1e6:.2f} MB); CPU ms per image by process, lowest of {figures['repeat']} runs; "
            f"{figures['cpu_count']} CPU cores (load average {figures['load_avg_1m']})",
            "",
            table(
                [
                    "way",
                    "prompts",
                    "wall s",
                    "images/s",
                    "set-up CPU s",
                    "task CPU ms/img",
                    "marginal ms/img",
                    "beyond naive ms/img",
                    "S3 server ms/img",
                    "emulator ms/img",
                ],
                rows,
            ),
            "",
            table(
                ["target", "value", "goal", "verdict"],
                [
                    [
                        "provider CPU beyond the transfers (C=%d)" % figures["concurrency"],
                        figures["provider_ms_per_image"],
                        f"<= {TARGET_MS:g} ms",
                        verdict(figures["provider_ms_per_image"], TARGET_MS, False),
                    ],
                    [
                        "provider CPU beyond the transfers (C=1)",
                        figures["provider_ms_per_image_c1"],
                        f"<= {TARGET_MS:g} ms",
                        verdict(figures["provider_ms_per_image_c1"], TARGET_MS, False),
                    ],
                ],
            ),
            "task CPU: user+system seconds of the task process during the work, per image; marginal: without "
            "the set-up (a one-prompt run's CPU); S3 server and emulator are separate processes.",
            "marginal ms/img of every run: "
            + "; ".join(f"{name} {case['marginal_ms_all_runs']}" for name, case in figures["cases"].items()),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables, end with the JSON line."""
    return run_script(build_parser(), measure, report, argv)


if __name__ == "__main__":
    main()
