"""Streaming: one group of images through SeedreamToS3Operator, streamed (``stream=True``) or answered at once.

The emulator makes a group's images one after another, ``--latency`` seconds each
(``latency_per_image``), as the service does: answered at once, the group arrives after all
of them are made; streamed, each image arrives as soon as it is made. The operator stores each
image as it arrives, so streaming should put the first image in S3 after about one latency
instead of after the whole group, and finish about when the last image is made plus one transfer.

For each way, the task runs in a fresh child process (``benchmarks/worker.py``, the operator's
``execute()``), while this process lists the images' prefix in moto's S3 server every
``--poll`` seconds and notes when each image first appears. Figures, from ``execute()``:

* ``first_image_s``: the first image stored in S3 (to within one poll);
* ``last_image_s``: the last image stored;
* ``wall_s``: the task's ``execute()`` returned.

Each way runs ``--repeat`` times, alternating; the median counts.

Usage: ``python benchmarks/streaming.py [--images 15] [--latency 0.5] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, run_case, run_script, table  # noqa: E402
from servers import BUCKET, Services  # noqa: E402

WAYS = {False: "answered at once", True: "streamed"}


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=15, help="images in the group, max_images (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per image (default: %(default)s)")
    parser.add_argument("--size", default=None, help="image size, e.g. 2K (default: the service's 2048x2048)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; the median counts (default: %(default)s)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between listings of S3 (default: %(default)s)")
    return parser


class ArrivalWatch:
    """Lists a prefix of the bucket in a thread and notes when each image key first appears (unix time).

    :param services: the running services (moto's S3 server).
    :param prefix: the task's ``s3_prefix``.
    :param poll: seconds between listings.
    """

    def __init__(self, services: Services, prefix: str, poll: float) -> None:
        self._client = services.s3_client()
        self._prefix = prefix + "/"
        self._poll = poll
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3-arrivals", daemon=True)

    def __enter__(self) -> ArrivalWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._look()  # what arrived after the last listing

    def _look(self) -> None:
        seen_at = time.time()
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=self._prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                # The spend ledger's records live under _ledger/; only images count.
                if "/_ledger/" not in key:
                    self.first_seen.setdefault(key, seen_at)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._look()
            self._stop.wait(self._poll)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run both ways ``--repeat`` times and return the figures."""
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    label = f"s{int(time.time())}"
    with Services(latency=args.latency, emulator_knobs={"latency_per_image": True}) as services:
        services.warm_up(args.size)
        for attempt in range(max(1, args.repeat)):
            for stream in (False, True):
                prefix = f"streaming/{'streamed' if stream else 'at-once'}-{attempt}"
                spec = {
                    "mode": "operator",
                    "n": 1,
                    "group": args.images,
                    "stream": stream,
                    "concurrency": 16,
                    "size": args.size,
                    "prefix": prefix,
                    "label": f"{label}-{int(stream)}-{attempt}",
                }
                services.reset()
                with ArrivalWatch(services, prefix, args.poll) as watch:
                    result = run_case(services, spec, reset=False)
                arrivals = sorted(watch.first_seen.values())
                if len(arrivals) != args.images or result["stored_objects"] != args.images:
                    raise RuntimeError(f"{WAYS[stream]}: {len(arrivals)} images seen, {result['stored_objects']} stored")
                made = sorted(float(image["created"]) for image in services.emulator_client.images())
                result.update(
                    first_image_s=arrivals[0] - result["started_at"],
                    last_image_s=arrivals[-1] - result["started_at"],
                    first_made_s=made[0] - result["started_at"],
                    last_made_s=made[-1] - result["started_at"],
                )
                runs[stream].append(result)
    ways: dict[str, dict[str, Any]] = {}
    for stream, results in runs.items():
        ways["streamed" if stream else "at_once"] = {
            "first_image_s": median([run["first_image_s"] for run in results]),
            "last_image_s": median([run["last_image_s"] for run in results]),
            "wall_s": median([run["wall_s"] for run in results]),
            "first_made_s": median([run["first_made_s"] for run in results]),
            "last_made_s": median([run["last_made_s"] for run in results]),
            "walls_s": [run["wall_s"] for run in results],
            "first_images_s": [run["first_image_s"] for run in results],
            "task_cpu_s": median([run["cpu_s"] for run in results]),
            "peak_rss_mb": median([run["peak_rss_kb"] for run in results]) / 1024,
            "image_bytes": results[0]["stored_bytes"] // args.images,
        }
    streamed, at_once = ways["streamed"], ways["at_once"]
    info = machine()
    return {
        "benchmark": "streaming",
        "images": args.images,
        "latency_s": args.latency,
        "size": args.size or "2048x2048",
        "generation_bound_s": args.images * args.latency,
        "repeat": max(1, args.repeat),
        "poll_s": args.poll,
        "first_image_s": {"streamed": streamed["first_image_s"], "at_once": at_once["first_image_s"]},
        "total_s": {"streamed": streamed["wall_s"], "at_once": at_once["wall_s"]},
        "first_image_sooner": at_once["first_image_s"] / streamed["first_image_s"],
        "total_ratio": streamed["wall_s"] / at_once["wall_s"],
        "ways": ways,
        "cpu_count": info["cpu_count"],
        "load_avg_1m": info["load_avg_1m"],
    }


def report(figures: dict[str, Any]) -> str:
    """The readable table."""
    rows = []
    for key, name in (("at_once", "stream=False (answered at once)"), ("streamed", "stream=True")):
        way = figures["ways"][key]
        rows.append(
            [name, way["first_made_s"], way["first_image_s"], way["last_made_s"], way["last_image_s"], way["wall_s"],
             way["task_cpu_s"], way["peak_rss_mb"]]
        )
    return "\n".join(
        [
            f"Streaming: one group of {figures['images']} images, {figures['latency_s']} s per image at the emulator "
            f"(the model alone needs {figures['generation_bound_s']:.2f} s), size {figures['size']} "
            f"(~{figures['ways']['streamed']['image_bytes'] / 1e6:.2f} MB); median of {figures['repeat']} runs; "
            f"S3 listed every {figures['poll_s']} s; {figures['cpu_count']} CPU cores (load average {figures['load_avg_1m']})",
            "Seconds from the operator's execute():",
            "",
            table(
                ["way", "first image made", "first image in S3", "last image made", "last image in S3", "total (execute)",
                 "task CPU s", "peak RSS MiB"],
                rows,
            ),
            "",
            f"First image in S3 {figures['first_image_sooner']:.1f}x sooner when streamed "
            f"({figures['first_image_s']['streamed']:.2f} s against {figures['first_image_s']['at_once']:.2f} s); "
            f"total time streamed / at once: {figures['total_ratio']:.2f}.",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the table, end with the JSON line."""
    return run_script(build_parser(), measure, report, argv)


if __name__ == "__main__":
    main()
