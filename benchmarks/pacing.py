"""Pacing: task processes against the account's images-per-minute limit, pacing on and off, side by side.

The emulator is limited to ``--images-per-minute`` with a token bucket holding ``--burst-seconds``
of it (one second by default: an account that allows little burst), answering 429
``ModelAccountIpmRateLimitExceeded`` with ``Retry-After: 1`` beyond it, each image taking
``--latency`` seconds. Each case runs ``SeedreamToS3Operator.execute()`` in fresh task processes
(``benchmarks/worker.py``), on the same emulator and S3 server:

* **one task**: ``--prompts`` prompts at ``max_concurrency`` ``--concurrency``;
* **two tasks at once**: two task processes sharing the account, ``--prompts`` / 2 each at
  ``--concurrency`` / 2, started together;

each with pacing on (``adaptive_concurrency=True``, the default) and off (``max_concurrency``
kept in flight, 429s left to the hook's retries). Figures per case: images per minute made at
the emulator (between its first and last image) against the limit, the share of generation
requests answered 429, the wall time against the bound prompts / limit, and the pace each task
learned (its last progress line). Goals with pacing: >= 0.95 of the limit, <= 2 % 429s.

Usage: ``python benchmarks/pacing.py [--prompts 600] [--images-per-minute 1200] [--concurrency 64]``;
``--tiny`` runs 60 prompts at 600 a minute (every code path; the figures mean little).
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_value, machine, run_script, run_worker, table, verdict  # noqa: E402
from servers import Services  # noqa: E402

TARGET_RATE_RATIO = 0.95
TARGET_429_SHARE = 0.02
# Enough retries that the runs with pacing off finish through their 429s.
HOOK_PARAMS = {"max_retries": 20, "retry_max_wait": 5}
_PACE = re.compile(r"paced at (?P<pace>[\d.]+|-) images/min, (?P<limited>\d+) rate-limited answers")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=600, help="prompts of each case (default: %(default)s)")
    parser.add_argument(
        "--images-per-minute", type=float, default=1200, help="the emulator's limit (default: %(default)s)"
    )
    parser.add_argument(
        "--burst-seconds", type=float, default=1.0, help="seconds of the limit its bucket holds (default: %(default)s)"
    )
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per image (default: %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="max_concurrency of one task; halved for each of two (default: %(default)s)"
    )
    parser.add_argument("--size", default="2K", help="image size (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="60 prompts at 600 a minute, for the smoke test")
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the cases with pacing off"
    )
    return parser


def apply_tiny(args: argparse.Namespace) -> None:
    """The smallest run through every case."""
    args.prompts, args.images_per_minute, args.latency, args.concurrency = 60, 600, 0.5, 16


def run_tasks(services: Services, args: argparse.Namespace, tasks: int, adaptive: bool, label: str) -> dict[str, Any]:
    """Run ``tasks`` task processes at once, ``--prompts`` / ``tasks`` prompts each; what the emulator saw."""
    services.reset()
    each = args.prompts // tasks
    results: list[dict[str, Any]] = [{} for _ in range(tasks)]
    errors: list[BaseException] = []
    env = services.connection_env()

    def one(n: int) -> None:
        spec = {
            "mode": "operator", "n": each, "concurrency": max(1, args.concurrency // tasks), "size": args.size,
            "prefix": f"pacing/{label}-{n}", "label": f"{label}-{n}", "adaptive": adaptive,
            "hook_params": HOOK_PARAMS, "log_progress": True,
        }
        try:
            results[n] = run_worker(spec, env)
        except BaseException as error:  # reported below, after the other task ends
            errors.append(error)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(tasks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    stats = services.emulator_client.stats()
    made = sorted(float(image["created"]) for image in services.emulator_client.images())
    window = made[-1] - made[0] if len(made) > 1 else None
    requests_sent = stats["generation_requests"]
    answered_429 = int(stats["generation_status"].get("429", 0))
    rate = 60.0 * (len(made) - 1) / window if window else None
    wall = max(result["ended_at"] for result in results) - min(result["started_at"] for result in results)
    return {
        "tasks": tasks,
        "adaptive": adaptive,
        "images": len(made),
        "images_per_minute": rate,
        "of_limit": rate / args.images_per_minute if rate else None,
        "generation_requests": requests_sent,
        "answered_429": answered_429,
        "share_429": answered_429 / requests_sent if requests_sent else None,
        "wall_s": wall,
        "bound_s": 60.0 * len(made) / args.images_per_minute,
        "in_flight_peak": stats["generation_in_flight_peak"],
        "learned_images_per_minute": [result.get("pace_images_per_minute") for result in results],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every case, pacing on and off."""
    if args.tiny:
        apply_tiny(args)
    if args.prompts < 2 or args.concurrency < 2:
        raise SystemExit("--prompts and --concurrency must be at least 2 (two tasks share them)")
    knobs = {"images_per_minute": args.images_per_minute, "burst_seconds": args.burst_seconds, "retry_after": 1}
    cases: dict[str, dict[str, Any]] = {}
    with Services(args.latency, knobs) as services:
        services.warm_up(args.size)
        for tasks in (1, 2):
            for adaptive in (True, False) if args.baseline else (True,):
                name = f"{tasks}-{'paced' if adaptive else 'fixed'}"
                cases[name] = run_tasks(services, args, tasks, adaptive, name)
    info = machine()
    return {
        "benchmark": "pacing",
        "prompts": args.prompts,
        "images_per_minute": args.images_per_minute,
        "burst_seconds": args.burst_seconds,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "size": args.size,
        "cases": cases,
        "one_task_of_limit": cases["1-paced"]["of_limit"],
        "one_task_share_429": cases["1-paced"]["share_429"],
        "two_tasks_of_limit": cases["2-paced"]["of_limit"],
        "two_tasks_share_429": cases["2-paced"]["share_429"],
        "cpu_count": info["cpu_count"],
        "load_avg_1m": info["load_avg_1m"],
        "tiny": bool(args.tiny),
    }


def report(figures: dict[str, Any]) -> str:
    """The side-by-side table and the goals."""
    rows = []
    for name, case in figures["cases"].items():
        learned = ", ".join(format_value(value) for value in case["learned_images_per_minute"])
        rows.append(
            [f"{case['tasks']} task(s), pacing {'on' if case['adaptive'] else 'off'}", case["images"],
             case["images_per_minute"], case["of_limit"], case["generation_requests"], case["answered_429"],
             case["share_429"], case["in_flight_peak"], case["wall_s"], case["bound_s"], learned or "-"]
        )
    goals = []
    for tasks in ("one_task", "two_tasks"):
        goals.append([f"{tasks.replace('_', ' ')}: images/min / limit", figures[f"{tasks}_of_limit"],
                      f">= {TARGET_RATE_RATIO}", verdict(figures[f"{tasks}_of_limit"], TARGET_RATE_RATIO, True)])
        goals.append([f"{tasks.replace('_', ' ')}: share answered 429", figures[f"{tasks}_share_429"],
                      f"<= {TARGET_429_SHARE}", verdict(figures[f"{tasks}_share_429"], TARGET_429_SHARE, False)])
    return "\n".join([
        f"Pacing: {figures['prompts']} prompts per case against {figures['images_per_minute']:g} images/min "
        f"(a bucket of {figures['burst_seconds']:g} s), {figures['latency_s']:g} s per image, max_concurrency "
        f"{figures['concurrency']} for one task and {figures['concurrency'] // 2} each for two; "
        f"{figures['cpu_count']} cores (load average {figures['load_avg_1m']})",
        "",
        table(["case", "images", "images/min", "of the limit", "requests", "429s", "429 share", "peak in flight",
               "wall s", "bound s", "learned pace /min"], rows),
        "images/min: made at the emulator between its first and last image; bound s: images / limit; learned pace: "
        "each task's last progress line ('-': no rate limit met, nothing paced).",
        "",
        table(["goal (pacing on)", "value", "goal", "verdict"], goals),
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables, end with the JSON line."""
    return run_script(build_parser(), measure, report, argv)


if __name__ == "__main__":
    main()
