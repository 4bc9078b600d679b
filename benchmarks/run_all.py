"""Run every benchmark (throughput, memory, parse cost, overhead, streaming, pacing, rate limit) and print one combined table.

Each benchmark runs as its own script in a child process, with its output shown as it
comes; the combined table and one JSON line (every benchmark's figures) come last.

Usage::

    python benchmarks/run_all.py            # the default parameters (about 20 minutes)
    python benchmarks/run_all.py --quick    # smaller batches (about five minutes)
    python benchmarks/run_all.py --only throughput,memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCHMARKS, ROOT, emit, machine, table, verdict  # noqa: E402

ORDER = ("throughput", "plan", "memory", "parse_cost", "overhead", "streaming", "pacing", "rate_limit")
PARAMETERS: dict[str, dict[str, list[str]]] = {
    "default": {name: [] for name in ORDER},
    "quick": {
        "throughput": [
            "--n", "96", "--latency", "0.5", "--baseline-n", "16", "--http-to-s3-n", "8", "--repeat", "1", "--large-n", "500",
        ],
        "plan": ["--sizes", "2000"],
        "memory": ["--small", "10", "--large", "100"],
        "parse_cost": ["--repeat", "3"],
        "overhead": ["--n", "100", "--repeat", "1"],
        "streaming": ["--repeat", "1"],
        "pacing": ["--prompts", "300"],
        "rate_limit": ["--prompts", "500", "--small", "200"],
    },
    # For the smoke test: every code path, no meaningful figures.
    "tiny": {
        "throughput": [
            "--n", "4", "--latency", "0.05", "--concurrency", "2", "--baseline-n", "2", "--http-to-s3-n", "2", "--repeat", "1",
            "--large-n", "6", "--large-concurrency", "3", "--large-latency", "0.05",
        ],
        "plan": ["--sizes", "20"],
        "memory": ["--small", "2", "--large", "4", "--size", "2K", "--concurrency", "2"],
        "parse_cost": ["--repeat", "1"],
        "overhead": ["--n", "4", "--concurrency", "2", "--repeat", "1"],
        "streaming": ["--images", "3", "--latency", "0.1", "--repeat", "1"],
        "pacing": ["--tiny"],
        "rate_limit": ["--tiny"],
    },
}


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smaller batches")
    group.add_argument("--tiny", action="store_true", help="the smallest batches (smoke test; figures mean nothing)")
    parser.add_argument("--only", default=",".join(ORDER), help="comma-separated benchmarks (default: all)")
    return parser


def run_script(name: str, arguments: list[str]) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py``, echo its output, and return its closing JSON figures."""
    command = [sys.executable, str(BENCHMARKS / f"{name}.py"), *arguments]
    print(f"\n=== {name}: {' '.join(Path(part).name if part == sys.executable else part for part in command[1:])}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    last = ""
    for line in process.stdout:
        if line.strip():
            last = line
        if not line.startswith("{"):
            print(line, end="", flush=True)
    if process.wait() != 0:
        raise SystemExit(f"{name} failed with exit code {process.returncode}")
    figures = dict(json.loads(last))
    figures["script_seconds"] = time.monotonic() - started
    return figures


def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per headline figure: benchmark, figure, value, goal, verdict."""
    rows: list[list[Any]] = []
    if "throughput" in results:
        t = results["throughput"]
        setting = f"N={t['n']} L={t['latency_s']}s C={t['concurrency']}"
        rows += [
            ["throughput", f"operator wall s ({setting})", t["wall_s"], f"bound {t['latency_bound_s']:.2f}", ""],
            ["throughput", "efficiency (N*L/C / wall)", t["efficiency"], ">= 0.9", verdict(t["efficiency"], 0.9, True)],
            ["throughput", "naive loop wall s", t["naive_wall_s"], "", ""],
            ["throughput", "speedup_vs_naive", t["speedup_vs_naive"], ">= 10", verdict(t["speedup_vs_naive"], 10, True)],
            ["throughput", "operator vs bare threads", t["ratio_vs_threads"], ">= 1.0", verdict(t["ratio_vs_threads"], 1.0, True)],
        ]
        if "speedup_vs_http_to_s3" in t:
            rows.append(["throughput", "speedup vs HttpToS3Operator", t["speedup_vs_http_to_s3"], "", ""])
        if "large" in t:
            large = t["large"]
            rows += [
                ["throughput", f"one task N={large['n']} L={large['latency_s']}s C={large['concurrency']}: wall s", large["wall_s"], f"bound {large['latency_bound_s']:.2f}", ""],
                ["throughput", f"one task N={large['n']} L={large['latency_s']}s C={large['concurrency']}: efficiency", large["efficiency"], ">= 0.9", verdict(large["efficiency"], 0.9, True)],
            ]
    if "plan" in results:
        p = results["plan"]
        label = "plan of 10,000 prompts, s" + ("" if p["plan_10k_measured"] else " (projected)")
        rows.append(["plan", label, p["plan_10k_s"], "< 5", verdict(p["plan_10k_s"], 5, False)])
    if "memory" in results:
        m = results["memory"]
        rows += [
            ["memory", f"operator peak RSS MiB N={m['small_n']}", m["peak_rss_small_mb"], "", ""],
            ["memory", f"operator peak RSS MiB N={m['large_n']}", m["peak_rss_large_mb"], f"<= {m['operator']['bound_mb']:.0f}", "met" if m["within_bound"] else "MISSED"],
            ["memory", "growth", m["growth"], "<= 1.1", verdict(m["growth"], 1.1, False)],
        ]
        if "naive_growth" in m:
            rows.append(["memory", "naive loop growth", m["naive_growth"], "", ""])
    if "parse_cost" in results:
        p = results["parse_cost"]
        rows.append(["parse_cost", "operator import beyond airflow.sdk, ms", p["import_extra_ms"], "<= 50", verdict(p["import_extra_ms"], 50, False)])
        for name, entry in p["dags"].items():
            if not name.startswith("parse_cost_baseline"):
                rows.append(["parse_cost", f"{name} parse ms", entry["parse_ms"], "", ""])
    if "overhead" in results:
        o = results["overhead"]
        rows += [
            ["overhead", "task CPU ms/image", o["task_ms_per_image"], "", ""],
            ["overhead", "beyond the naive loop, ms/image", o["provider_ms_per_image"], "<= 5", verdict(o["provider_ms_per_image"], 5, False)],
            ["overhead", "S3 server CPU ms/image", o["s3_ms_per_image"], "", ""],
        ]
    if "streaming" in results:
        st = results["streaming"]
        setting = f"{st['images']} images, {st['latency_s']} s each"
        rows += [
            ["streaming", f"first image in S3, s, stream=True ({setting})", st["first_image_s"]["streamed"], "", ""],
            ["streaming", "first image in S3, s, stream=False", st["first_image_s"]["at_once"], "", ""],
            ["streaming", "total s, stream=True / stream=False", f"{st['total_s']['streamed']:.2f} / {st['total_s']['at_once']:.2f}", "", ""],
        ]
    if "pacing" in results:
        pc = results["pacing"]
        for tasks in ("one_task", "two_tasks"):
            name = tasks.replace("_", " ")
            rows += [
                ["pacing", f"{name}: images/min / limit", pc[f"{tasks}_of_limit"], ">= 0.95", verdict(pc[f"{tasks}_of_limit"], 0.95, True)],
                ["pacing", f"{name}: share answered 429", pc[f"{tasks}_share_429"], "<= 0.02", verdict(pc[f"{tasks}_share_429"], 0.02, False)],
            ]
    if "rate_limit" in results:
        r = results["rate_limit"]
        setting = f"{r['prompts']} products, limit {r['images_per_minute']:g}/min"
        rows += [
            ["rate_limit", f"images/min achieved / limit ({setting})", r["achieved_ratio"], ">= 0.9", verdict(r["achieved_ratio"], 0.9, True)],
            ["rate_limit", "share of requests answered 429", r["rate_limited_share"], "<= 0.05", verdict(r["rate_limited_share"], 0.05, False)],
            ["rate_limit", "wall s / bound (products / limit)", r["wall_ratio"], "", ""],
            ["rate_limit", f"peak RSS per task, {r['prompts']} / {r['small_prompts']} products (worst)", r["max_rss_growth"], "<= 1.1", verdict(r["max_rss_growth"], 1.1, False)],
            ["rate_limit", "largest XCom, bytes", r["largest_xcom_bytes"], "< 65,536", verdict(r["largest_xcom_bytes"], 65535, False)],
        ]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen benchmarks, print the combined table, end with the JSON line."""
    args = build_parser().parse_args(argv)
    preset = "quick" if args.quick else "tiny" if args.tiny else "default"
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(ORDER))
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(ORDER)}")
    info = machine()
    results = {name: run_script(name, PARAMETERS[preset][name]) for name in ORDER if name in chosen}
    print(
        f"\n=== Summary ({preset} parameters; {info['cpu_count']} CPU cores, {info['cpu_model']}, "
        f"load average {info['load_avg_1m']} at the start and {machine()['load_avg_1m']} at the end, "
        f"Python {info['python']}, "
        f"Airflow {info['versions']['apache-airflow']})"
    )
    print(table(["benchmark", "figure", "value", "goal", "verdict"], summary_rows(results)))
    figures = {"benchmark": "run_all", "preset": preset, "machine": info, "results": results}
    emit(figures)
    return figures


if __name__ == "__main__":
    main()
