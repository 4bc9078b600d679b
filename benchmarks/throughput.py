"""Throughput: how close SeedreamToS3Operator gets to the service's latency bound, against the usual alternatives.

N prompts, each generation taking L seconds at the emulator (its ``latency`` knob), the
operator running C prompts at once (``max_concurrency``). The latency bound is N*L/C:
``efficiency`` = (N*L/C) / wall, 1.0 being the bound. In the same run, on the same
emulator and S3 server:

* ``naive``: a hand-written ``PythonOperator`` callable, one prompt after another
  (``requests.post``, ``requests.get(url).content``, boto3 ``put_object``);
* ``http_to_s3``: Airflow's ``HttpOperator`` + ``HttpToS3Operator``, one prompt at a time;
* ``emulator_probe``: the emulator alone at concurrency C with nothing stored, the ceiling
  the service side sets on this machine.

Each way runs in a fresh child process (``benchmarks/worker.py``) that imports what it needs
before its clock starts; the wall time is the task's work (``execute()`` for the operator),
not interpreter or Airflow start-up. The emulator and moto's S3 server run as separate
processes; their CPU seconds are shown so a saturated neighbour is visible.

The operator and the probe run ``--repeat`` times (median counts); the naive loop runs on
all N prompts (``--baseline-n`` fewer, projected), HttpToS3Operator on ``--http-to-s3-n``
prompts projected linearly to N (one prompt at a time, so the projection is linear).

A second, larger case runs the operator alone once: ``--large-n`` prompts (2,000) in one task
at ``--large-concurrency`` (32), each generation taking ``--large-latency`` seconds (2): a catalog
chunk far larger than the example DAG's. Its latency is longer than the first case's so that the
bound (N*L/C, 64 images/s at L=0.5 s) stays within what two cores can do; the table shows that
ceiling, from the CPU that task, emulator and S3 server spend per image.

Usage: ``python benchmarks/throughput.py [--n 200] [--latency 0.5] [--concurrency 16] [--large-n 2000]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_value, machine, run_case, run_script, table, verdict  # noqa: E402
from servers import Services  # noqa: E402

TARGET_EFFICIENCY = 0.9
TARGET_SPEEDUP = 10.0
#: The operator against bare threads doing the same POST, GET and PUT: its promises cost nothing that matters.
TARGET_VS_THREADS = 1.0


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="prompts (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per generation (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="operator max_concurrency (default: %(default)s)")
    parser.add_argument("--size", default=None, help="image size, e.g. 1K or 4K (default: the service's 2048x2048)")
    parser.add_argument(
        "--baseline-n",
        type=int,
        default=None,
        help="prompts for the one-at-a-time baselines (default: N); fewer are projected linearly to N",
    )
    parser.add_argument(
        "--http-to-s3-n",
        type=int,
        default=50,
        help="prompts for the HttpToS3Operator baseline, projected linearly to N (default: %(default)s; 0 skips it)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the operator and the probe; the median counts (default: %(default)s)"
    )
    parser.add_argument("--no-probe", action="store_true", help="skip the emulator-alone probe")
    parser.add_argument(
        "--large-n", type=int, default=2000, help="prompts of the large case, one task (default: %(default)s; 0 skips it)"
    )
    parser.add_argument(
        "--large-concurrency", type=int, default=32, help="max_concurrency of the large case (default: %(default)s)"
    )
    parser.add_argument(
        "--large-latency", type=float, default=2.0, help="seconds per generation in the large case (default: %(default)s)"
    )
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case and return the figures."""
    n, latency, concurrency = args.n, args.latency, args.concurrency
    baseline_n = min(args.baseline_n or n, n)
    cases: dict[str, dict[str, Any]] = {}
    label = f"t{int(time.time())}"
    with Services(latency=latency) as services:
        services.warm_up(args.size)
        repeat = max(1, args.repeat)
        plan: list[tuple[str, int, int, int]] = [("operator", n, concurrency, repeat), ("threads", n, concurrency, repeat)]
        if not args.no_probe:
            plan.append(("emulator_probe", n, concurrency, repeat))
        plan.append(("naive", baseline_n, 1, 1))
        if args.http_to_s3_n > 0:
            plan.append(("http_to_s3", min(args.http_to_s3_n, n), 1, 1))
        for mode, count, workers, runs in plan:
            results = []
            for attempt in range(runs):
                spec = {
                    "mode": mode,
                    "n": count,
                    "concurrency": workers,
                    "size": args.size,
                    "prefix": f"throughput/{mode}-{attempt}",
                    "label": f"{label}-{mode}-{attempt}",
                }
                results.append(run_case(services, spec))
            results.sort(key=lambda item: item["wall_s"])
            result = results[len(results) // 2]
            result["walls_s"] = [item["wall_s"] for item in results]
            if result["generation_requests"] != count or (mode != "emulator_probe" and result["stored_objects"] != count):
                raise RuntimeError(f"{mode}: {result['generation_requests']} requests, {result['stored_objects']} stored")
            wall = result["wall_s"]
            result["wall_at_n_s"] = wall * n / count
            result["projected"] = count != n
            result["images_per_s"] = count / wall
            result["efficiency"] = (count * latency / workers) / wall if latency > 0 else None
            result["cpu_ms_per_image"] = 1000 * result["cpu_s"] / count
            if latency > 0 and "setup_s" in result:
                result["batch_efficiency"] = (count * latency / workers) / (wall - result["setup_s"])
            cases[mode] = result
        if args.large_n > 0:
            services.reset()
            services.emulator_client.configure(latency=args.large_latency)
            large = run_case(
                services,
                {
                    "mode": "operator",
                    "n": args.large_n,
                    "concurrency": args.large_concurrency,
                    "size": args.size,
                    "prefix": "throughput/large",
                    "label": f"{label}-large",
                },
                reset=False,
            )
            if large["generation_requests"] != args.large_n or large["stored_objects"] != args.large_n:
                raise RuntimeError(f"large case: {large['generation_requests']} requests, {large['stored_objects']} stored")
            large_bound = args.large_n * args.large_latency / args.large_concurrency
            # What the machine's cores allow: the CPU of task, emulator and S3 server per image.
            all_cpu_ms = 1000 * (large["cpu_s"] + large["emulator_cpu_s"] + large["s3_cpu_s"]) / args.large_n
            cpu_ceiling = (os.cpu_count() or 1) * 1000 / all_cpu_ms if all_cpu_ms > 0 else None
            large.update(
                all_cpu_ms_per_image=all_cpu_ms,
                cpu_ceiling_images_per_s=cpu_ceiling,
                cpu_ceiling_efficiency=min(1.0, cpu_ceiling * large_bound / args.large_n) if cpu_ceiling else None,
                latency_bound_s=large_bound,
                images_per_s=args.large_n / large["wall_s"],
                latency_s=args.large_latency,
                efficiency=large_bound / large["wall_s"] if args.large_latency > 0 else None,
                cpu_ms_per_image=1000 * large["cpu_s"] / args.large_n,
                peak_rss_mb=large["peak_rss_kb"] / 1024,
            )
    operator = cases["operator"]
    info = machine()
    figures: dict[str, Any] = {
        "benchmark": "throughput",
        "n": n,
        "latency_s": latency,
        "concurrency": concurrency,
        "size": args.size or "2048x2048",
        "image_bytes": operator["stored_bytes"] // max(operator["stored_objects"], 1),
        "latency_bound_s": n * latency / concurrency,
        "rounds_bound_s": math.ceil(n / concurrency) * latency,
        "wall_s": operator["wall_s"],
        "images_per_s": operator["images_per_s"],
        "efficiency": operator["efficiency"],
        "setup_s": operator.get("setup_s"),
        "tail_s": operator.get("tail_s"),
        "batch_efficiency": operator.get("batch_efficiency"),
        "threads_wall_s": cases["threads"]["wall_s"],
        "ratio_vs_threads": cases["threads"]["wall_s"] / operator["wall_s"],
        "naive_wall_s": cases["naive"]["wall_at_n_s"],
        "naive_projected": cases["naive"]["projected"],
        "speedup_vs_naive": cases["naive"]["wall_at_n_s"] / operator["wall_s"],
        "emulator_cpu_s": operator["emulator_cpu_s"],
        "s3_cpu_s": operator["s3_cpu_s"],
        "task_cpu_s": operator["cpu_s"],
        "emulator_renders": operator["emulator_renders"],
        "emulator_captions": operator["emulator_captions"],
        "cpu_count": info["cpu_count"],
        "load_avg_1m": info["load_avg_1m"],
        "repeat": max(1, args.repeat),
        "cases": cases,
    }
    if "http_to_s3" in cases:
        figures["http_to_s3_wall_s"] = cases["http_to_s3"]["wall_at_n_s"]
        figures["speedup_vs_http_to_s3"] = cases["http_to_s3"]["wall_at_n_s"] / operator["wall_s"]
    if "emulator_probe" in cases:
        figures["probe_wall_s"] = cases["emulator_probe"]["wall_s"]
        figures["probe_efficiency"] = cases["emulator_probe"]["efficiency"]
    if args.large_n > 0:
        figures["large"] = large
        figures["large_n"] = args.large_n
        figures["large_concurrency"] = args.large_concurrency
        figures["large_wall_s"] = large["wall_s"]
        figures["large_efficiency"] = large["efficiency"]
    return figures


def report(figures: dict[str, Any]) -> str:
    """The readable tables."""
    cases = figures["cases"]
    names = {
        "operator": f"SeedreamToS3Operator (C={figures['concurrency']})",
        "threads": f"bare threads: POST, GET, PUT (C={figures['concurrency']})",
        "emulator_probe": f"emulator alone, no S3 (C={figures['concurrency']})",
        "naive": "naive PythonOperator loop",
        "http_to_s3": "HttpOperator + HttpToS3Operator",
    }
    rows = []
    for mode, case in cases.items():
        rows.append(
            [
                names[mode],
                case["n"],
                case["wall_s"],
                case["wall_at_n_s"] if case["projected"] else None,
                case["images_per_s"],
                case["efficiency"],
                case.get("setup_s"),
                case.get("tail_s"),
                figures["naive_wall_s"] / case["wall_at_n_s"],
                case["cpu_s"],
                case["emulator_cpu_s"],
                case["s3_cpu_s"],
            ]
        )
    out = [
        f"Throughput: N={figures['n']} prompts, latency L={figures['latency_s']} s, C={figures['concurrency']}, "
        f"size {figures['size']} (~{figures['image_bytes'] / 1e6:.2f} MB), {figures['cpu_count']} CPU cores shared "
        f"by task, emulator and S3 server (load average {figures['load_avg_1m']})",
        f"Operator and probe: median of {figures['repeat']} runs (walls: "
        + ", ".join(f"{wall:.2f}" for wall in figures["cases"]["operator"]["walls_s"])
        + " s)",
        f"Latency bound N*L/C = {figures['latency_bound_s']:.2f} s "
        f"(with whole rounds, ceil(N/C)*L = {figures['rounds_bound_s']:.2f} s)",
        "",
        table(
            ["way", "prompts", "wall s", "wall s at N", "images/s", "efficiency", "setup s", "tail s", "x naive", "task CPU s", "emulator CPU s", "S3 CPU s"],
            rows,
        ),
        "",
        table(
            ["target", "value", "goal", "verdict"],
            [
                ["efficiency", figures["efficiency"], f">= {TARGET_EFFICIENCY}", verdict(figures["efficiency"], TARGET_EFFICIENCY, True)],
                ["speedup_vs_naive", figures["speedup_vs_naive"], f">= {TARGET_SPEEDUP:g}", verdict(figures["speedup_vs_naive"], TARGET_SPEEDUP, True)],
                ["ratio_vs_threads", figures["ratio_vs_threads"], f">= {TARGET_VS_THREADS:g}", verdict(figures["ratio_vs_threads"], TARGET_VS_THREADS, True)],
            ],
        ),
        f"Emulator since start: {figures['emulator_renders']} background bands and {figures['emulator_captions']} "
        "captions drawn (one caption per image); everything else in each image came from its cache.",
        "setup s: from execute() to the first generation reaching the emulator (connections, the S3 client, "
        "the bucket check, request validation);",
        "tail s: from the last generation's answer to the end (its download and upload).",
    ]
    if figures.get("batch_efficiency") is not None:
        out.append(f"Operator efficiency without its setup: {figures['batch_efficiency']:.3f}.")
    if "large" in figures:
        large = figures["large"]
        out += [
            "",
            table(
                ["large case", "prompts", "C", "L s", "wall s", "bound N*L/C s", "efficiency", "images/s", "setup s", "tail s",
                 "peak in flight", "task CPU ms/image", "peak RSS MiB", "emulator CPU s", "S3 CPU s"],
                [[
                    "SeedreamToS3Operator, one task", large["n"], large["concurrency"], large["latency_s"], large["wall_s"],
                    large["latency_bound_s"], large["efficiency"], large["images_per_s"], large.get("setup_s"),
                    large.get("tail_s"), large["generation_in_flight_peak"], large["cpu_ms_per_image"],
                    large["peak_rss_mb"], large["emulator_cpu_s"], large["s3_cpu_s"],
                ]],
            ),
            f"Large case efficiency: {format_value(large['efficiency'])} "
            f"(goal >= {TARGET_EFFICIENCY}: {verdict(large['efficiency'], TARGET_EFFICIENCY, True)}).",
            f"CPU per image, task + emulator + S3 server: {format_value(large['all_cpu_ms_per_image'])} ms, so "
            f"{figures['cpu_count']} cores make at most {format_value(large['cpu_ceiling_images_per_s'])} images/s "
            f"against the {large['n'] / large['latency_bound_s']:.0f} images/s the bound needs: an efficiency "
            f"ceiling of {format_value(large['cpu_ceiling_efficiency'])} on this machine, before other jobs take their share.",
        ]
    if any(case["projected"] for case in cases.values()):
        out.append("'wall s at N': a baseline run on fewer prompts, projected linearly to N (it is sequential).")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables, end with the JSON line."""
    return run_script(build_parser(), measure, report, argv)


if __name__ == "__main__":
    main()
