"""Memory: the peak RSS of a task storing large images, for a small and a ten times larger batch.

Each case runs in its own fresh child process (``benchmarks/worker.py``), which reads its RSS
after importing what it needs (the fixed base) and its peak RSS (``ru_maxrss`` and
``VmHWM``) at the end. Images are the emulator's 4K size (4096x4096 JPEG, about 5 MB).
``growth`` is peak(N large) / peak(N small): 1.0 means memory does not depend on the
number of images. The bound a streaming task should keep is base + C x image size.
The same is measured for the naive loop (sequential, one image in memory at a time).

Usage: ``python benchmarks/memory.py [--small 20] [--large 200] [--concurrency 16] [--size 4K]``
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

TARGET_GROWTH = 1.1
MB = 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=20, help="images in the small batch (default: %(default)s)")
    parser.add_argument("--large", type=int, default=200, help="images in the large batch (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="operator max_concurrency (default: %(default)s)")
    parser.add_argument("--size", default="4K", help="image size (default: %(default)s, about 5 MB as JPEG)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per generation (default: %(default)s)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case and return the figures."""
    label = f"m{int(time.time())}"
    modes = ["operator"] + ([] if args.no_naive else ["naive"])
    cases: dict[str, dict[int, dict[str, Any]]] = {mode: {} for mode in modes}
    with Services(latency=args.latency) as services:
        services.warm_up(args.size)
        for mode in modes:
            for n in (args.small, args.large):
                spec = {
                    "mode": mode,
                    "n": n,
                    "concurrency": args.concurrency if mode == "operator" else 1,
                    "size": args.size,
                    "prefix": f"memory/{mode}-{n}",
                    "label": f"{label}-{mode}-{n}",
                }
                result = run_case(services, spec)
                if result["stored_objects"] != n:
                    raise RuntimeError(f"{mode} N={n}: stored {result['stored_objects']}")
                cases[mode][n] = result
    image_bytes = cases["operator"][args.large]["stored_bytes"] / args.large
    figures: dict[str, Any] = {
        "benchmark": "memory",
        "size": args.size,
        "image_bytes": int(image_bytes),
        "concurrency": args.concurrency,
        "latency_s": args.latency,
        "small_n": args.small,
        "large_n": args.large,
        "cpu_count": machine()["cpu_count"],
    }
    for mode in modes:
        small, large = cases[mode][args.small], cases[mode][args.large]
        bound_kb = large["rss_base_kb"] + args.concurrency * image_bytes / 1024
        figures[mode] = {
            "base_rss_mb": large["rss_base_kb"] / 1024,
            "peak_rss_small_mb": small["peak_rss_kb"] / 1024,
            "peak_rss_large_mb": large["peak_rss_kb"] / 1024,
            "growth": large["peak_rss_kb"] / small["peak_rss_kb"],
            "working_small_mb": (small["peak_rss_kb"] - small["rss_base_kb"]) / 1024,
            "working_large_mb": (large["peak_rss_kb"] - large["rss_base_kb"]) / 1024,
            "bound_mb": bound_kb / 1024 if mode == "operator" else None,
            "within_bound": large["peak_rss_kb"] <= bound_kb if mode == "operator" else None,
            "wall_small_s": small["wall_s"],
            "wall_large_s": large["wall_s"],
        }
    operator = figures["operator"]
    figures["peak_rss_small_mb"] = operator["peak_rss_small_mb"]
    figures["peak_rss_large_mb"] = operator["peak_rss_large_mb"]
    figures["growth"] = operator["growth"]
    figures["within_bound"] = operator["within_bound"]
    if "naive" in figures:
        figures["naive_growth"] = figures["naive"]["growth"]
    return figures


def report(figures: dict[str, Any]) -> str:
    """The readable tables."""
    small, large = figures["small_n"], figures["large_n"]
    names = {"operator": f"SeedreamToS3Operator (C={figures['concurrency']})", "naive": "naive PythonOperator loop"}
    rows = []
    for mode in ("operator", "naive"):
        if mode not in figures:
            continue
        case = figures[mode]
        rows.append(
            [
                names[mode],
                case["base_rss_mb"],
                case["peak_rss_small_mb"],
                case["peak_rss_large_mb"],
                case["growth"],
                case["working_large_mb"],
                case["bound_mb"],
                case["wall_large_s"],
            ]
        )
    return "\n".join(
        [
            f"Memory: {figures['size']} images (~{figures['image_bytes'] / MB:.1f} MiB each), N={small} and N={large}, "
            f"each case in a fresh process; {figures['cpu_count']} CPU cores",
            "",
            table(
                [
                    "way",
                    "base MiB",
                    f"peak MiB N={small}",
                    f"peak MiB N={large}",
                    "growth",
                    f"working MiB N={large}",
                    "bound MiB (base+C*image)",
                    f"wall s N={large}",
                ],
                rows,
            ),
            "",
            table(
                ["target", "value", "goal", "verdict"],
                [
                    ["growth", figures["growth"], f"<= {TARGET_GROWTH}", verdict(figures["growth"], TARGET_GROWTH, False)],
                    [
                        "peak within base + C*image",
                        figures["peak_rss_large_mb"],
                        f"<= {figures['operator']['bound_mb']:.0f} MiB",
                        "met" if figures["within_bound"] else "MISSED",
                    ],
                ],
            ),
            "base: RSS after imports, before the task's work; working: peak minus base.",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables, end with the JSON line."""
    return run_script(build_parser(), measure, report, argv)


if __name__ == "__main__":
    main()
