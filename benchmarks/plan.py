"""Planning: how long a rerun of an unchanged catalog takes before (and instead of) spending anything.

Every prompt of an N-prompt task is already stored, as an earlier run leaves it: an image and
its record in the spend ledger. ``execute()`` of the rerun reads the ledger and the stored keys
with one listing (1,000 keys a call) and takes each record from the task's index when the
listing shows it unchanged, decides for every prompt, sends nothing and returns the N records.
Its wall time is the plan's cost at N; the goal is 10,000 prompts in under 5 s. Beside it, the
same rerun without an index (one read per record, as after a try stopped before writing it).
(An earlier design made one HEAD request per prompt: about 7 s for 2,000.)

Each size runs in a fresh child process (``benchmarks/worker.py``, mode ``plan``) against moto's
S3 server, whose CPU seconds are shown beside the task's.

Usage: ``python benchmarks/plan.py [--sizes 2000,10000] [--concurrency 16]``
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

TARGET_PROMPTS = 10_000
TARGET_SECONDS = 5.0


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,10000", help="prompts of each case, comma-separated (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="operator max_concurrency (default: %(default)s)")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="profile the rerun with cProfile and print its N costliest functions, by cumulative time (default: off)",
    )
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Seed and time each size."""
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    label = f"p{int(time.time())}"
    cases = []
    with Services(latency=0.0) as services:
        for n in sizes:
            spec = {"mode": "plan", "n": n, "concurrency": args.concurrency, "prefix": f"plan/n{n}", "label": f"{label}-{n}",
                    "profile": args.profile}
            result = run_case(services, spec)
            if result["generation_requests"] != 0:
                raise RuntimeError(f"{n} prompts: the rerun sent {result['generation_requests']} request(s)")
            result["prompts_per_s"] = n / result["plan_s"]
            result["index_speedup"] = result["cold_s"] / result["plan_s"]
            result["projected_10k_s"] = result["plan_s"] * TARGET_PROMPTS / n
            cases.append(result)
    info = machine()
    at_target = next((case for case in cases if case["n"] == TARGET_PROMPTS), cases[-1])
    return {
        "benchmark": "plan",
        "concurrency": args.concurrency,
        "cases": cases,
        "plan_10k_s": at_target["projected_10k_s"],
        # What the task itself adds to the store's listing, at 10,000 prompts.
        "beyond_listing_10k_s": (at_target["plan_s"] - at_target["list_s"]) * TARGET_PROMPTS / at_target["n"],
        "plan_10k_measured": at_target["n"] == TARGET_PROMPTS,
        "cpu_count": info["cpu_count"],
        "load_avg_1m": info["load_avg_1m"],
    }


def report(figures: dict[str, Any]) -> str:
    """The readable table."""
    rows = [
        [case["n"], case["plan_s"], case["prompts_per_s"], case["projected_10k_s"], case["list_s"], case["listed"],
         case["plan_s"] - case["list_s"], case["cold_s"], case["index_speedup"], case["cpu_s"], case["s3_cpu_s"], case["seed_s"]]
        for case in figures["cases"]
    ]
    value = figures["plan_10k_s"]
    profiles = [f"cProfile of the rerun of {case['n']} prompts:\n{case.pop('profile')}" for case in figures["cases"] if "profile" in case]
    return "\n".join([*profiles,
        f"Planning a rerun with every prompt stored: one task, max_concurrency {figures['concurrency']}, "
        f"{figures['cpu_count']} CPU cores shared with moto's S3 server (load average {figures['load_avg_1m']})",
        "",
        table(["prompts", "execute() s", "prompts/s", "at 10,000 s", "one bare listing s", "keys listed",
               "execute() beyond the listing s", "without the index s", "x faster with it", "task CPU s (all)",
               "S3 CPU s (all)", "seeding s (untimed)"], rows),
        "one bare listing: a boto3 paginator over the same prefix and nothing else, the floor the S3 server sets.",
        "",
        table(
            ["target", "value", "goal", "verdict"],
            [[f"plan of {TARGET_PROMPTS:,} prompts" + ("" if figures["plan_10k_measured"] else " (projected)"), value,
              f"< {TARGET_SECONDS:g} s", verdict(value, TARGET_SECONDS, False)],
             ["the same beyond one bare listing", figures["beyond_listing_10k_s"], f"< {TARGET_SECONDS:g} s",
              verdict(figures["beyond_listing_10k_s"], TARGET_SECONDS, False)]],
        ),
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the table, end with the JSON line."""
    return run_script(build_parser(), measure, report, argv)


if __name__ == "__main__":
    main()
