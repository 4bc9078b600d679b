"""Rate limit: a catalog through the catalog DAG in a real scheduler, against the account's images-per-minute limit.

The service limits each model to a number of images per minute for the account (about 500;
beyond it, 429 ``ModelAccountIpmRateLimitExceeded``). This benchmark runs the example DAG
``dags/seedream_catalog_batch.py`` as users deploy it, every part in its own process:

* the emulator, limited to ``--images-per-minute`` (a scaled-down account: its token bucket
  refills continuously and holds 6 seconds' worth), each generation taking ``--latency`` plus up
  to ``--latency-jitter`` seconds (seeded), so that requests are not in lock-step;
* moto's S3 server, holding a generated catalog of ``--prompts`` products (JSON Lines);
* Airflow's api-server, scheduler (LocalExecutor) and dag-processor
  (:class:`tests.deployment.airflow_deployment.AirflowDeployment`), with the connections and the
  ``seedream_api`` pool made through the REST API, as a user makes them in the UI.

The run is triggered through the REST API with no logical date. The DAG maps one task per
``--chunk-size`` products; each runs up to ``--concurrency`` requests at once and
adapts that to the 429s it meets (halving on a rate limit, growing back as answers arrive), and
the pool lets ``--pool-slots`` of them run at once. By Little's law the requests in flight
needed to reach the limit are limit x latency; the default pool gives 1.25 times that, so the
limit, not the latency, sets the pace.

A catalog of ``--small`` products runs first in the same deployment, so the memory of each
task process can be compared between the two sizes. While a run goes on, this process reads
``/proc`` every 0.2 s for the task processes under the scheduler (titled
``airflow worker -- <task instance id>``): their peak RSS (``VmHWM``) and CPU. Afterwards it
reads through the REST API every XCom the run wrote, the task instances and the progress lines
of each task's log (``window X of Y, paced at P images/min, N rate-limited answers``), and from the emulator its counters
and when each image was made.

Figures (from the larger run): images per minute achieved (made at the emulator between the
first and the last image) against the limit; the share of generation requests answered 429;
the run's wall time against the bound images / limit; peak RSS of each task process at both
sizes; the largest XCom. Targets: rate >= 0.9 of the limit, 429s <= 5 % of requests, peak RSS
per task within 1.1x from the small to the large catalog, largest XCom < 64 KiB.

Beside it, unless ``--no-baseline``: the same large run in a second deployment whose tasks have
``adaptive_concurrency=False`` (each keeps ``--concurrency`` requests in flight through 429s,
leaving them to the hook's retries), printed side by side: images per minute, the 429 share,
requests, peak in flight and wall time, and the ratios adaptive over fixed.

Usage: ``python benchmarks/rate_limit.py [--prompts 2000] [--small 500] [--images-per-minute 1200]``;
``--tiny`` runs 40 and 20 prompts (every code path; the figures mean little).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(BENCHMARKS.parent))  # the repository root: the deployment helper lives in tests/

from common import ROOT, format_value, machine, run_script, table, verdict  # noqa: E402
from servers import API_KEY, REGION, ServerProcess, process_cpu_seconds, start_emulator, start_moto  # noqa: E402

from tests.deployment.airflow_deployment import AirflowDeployment, wait_for  # noqa: E402

DAG_ID = "seedream_catalog_batch"
DAG_FILE = ROOT / "dags" / f"{DAG_ID}.py"
GENERATE = "generate_images"
POOL = "seedream_api"
BUCKET = "seedream-bench"
MODEL = "doubao-seedream-5-0-260128"
TARGET_RATE_RATIO = 0.9
TARGET_429_SHARE = 0.05
TARGET_RSS_GROWTH = 1.1
TARGET_XCOM_BYTES = 64 * 1024
# Requests in flight the default pool allows, over what Little's law says the limit needs.
POOL_HEADROOM = 1.25
SAMPLE_SECONDS = 0.2
# The emulator's defaults: a full token bucket holds 6 seconds' worth of the limit, at least one group.
BURST_SECONDS = 6.0
MAX_GROUP_IMAGES = 15
RUN_TIMEOUT = 3600.0
_TASK_TITLE = re.compile(r"^airflow worker -- ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
_PROGRESS = re.compile(
    r"window (?P<limit>\d+) of (?P<maximum>\d+), paced at (?P<pace>[\d.]+|-) images/min, (?P<limited>\d+) rate-limited answers"
)
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

NAMES = ("mug", "lamp", "chair", "vase", "kettle", "backpack", "sneaker", "clock", "speaker", "throw blanket")
COLOURS = ("sage green", "matte black", "mustard yellow", "terracotta", "navy blue", "off-white", "burnt orange")
MATERIALS = ("stoneware", "aluminium", "walnut", "linen", "recycled plastic", "brushed steel", "wool")
CATEGORIES = ("Kitchen", "Lighting", "Furniture", "Decor", "Travel", "Footwear", "Audio", "Textiles")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000, help="products of the large catalog (default: %(default)s)")
    parser.add_argument(
        "--small", type=int, default=500, help="products of the small catalog, run first (default: %(default)s; 0 skips it)"
    )
    parser.add_argument(
        "--images-per-minute", type=float, default=1200, help="the emulator's limit per model (default: %(default)s)"
    )
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per generation at least (default: %(default)s)")
    parser.add_argument(
        "--latency-jitter", type=float, default=1.0, help="up to this many seconds more, drawn per request (default: %(default)s)"
    )
    parser.add_argument("--chunk-size", type=int, default=50, help="products per mapped task (default: %(default)s)")
    parser.add_argument(
        "--pool-slots",
        type=int,
        default=None,
        help=f"slots of the {POOL} pool, mapped tasks at once (default: {POOL_HEADROOM} x limit x mean latency "
        "/ --concurrency, at least 4)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="max_concurrency of each mapped task (default: %(default)s)"
    )
    parser.add_argument("--size", default="2K", help="image size (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="40 and 20 prompts, for the smoke test (figures mean little)")
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the large run with adaptive_concurrency off (max_concurrency kept in flight through 429s)",
    )
    parser.add_argument("--keep-home", action="store_true", help="keep the Airflow home (logs, database) afterwards")
    return parser


def apply_tiny(args: argparse.Namespace) -> None:
    """The smallest run that passes through every step: two sizes, four mapped tasks, some 429s."""
    args.prompts, args.small, args.chunk_size = 40, 20, 10
    args.images_per_minute, args.latency, args.latency_jitter = 240, 0.2, 0.2
    args.pool_slots = args.pool_slots or 4


def catalog_lines(count: int) -> bytes:
    """A JSON Lines catalog of ``count`` distinct products, gzipped."""
    lines = []
    for i in range(count):
        product = {
            "id": f"BENCH-{i:05d}",
            "name": f"{NAMES[i % len(NAMES)]} model {i}",
            "category": CATEGORIES[i % len(CATEGORIES)],
            "colour": COLOURS[i % len(COLOURS)],
            "material": MATERIALS[(i // len(COLOURS)) % len(MATERIALS)],
            "price": round(9.5 + (i % 40) * 2.25, 2),
        }
        lines.append(json.dumps(product))
    return gzip.compress(("\n".join(lines) + "\n").encode())


# -- the task processes, read from /proc ----------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        tree[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class TaskSampler:
    """Reads the task processes under a scheduler from ``/proc`` in a thread: peak RSS, CPU, overlap.

    A task process is titled ``airflow worker -- <task instance id>`` by the task runner.

    :param scheduler_pid: the scheduler's process id (LocalExecutor workers, their supervisors and
        the task processes are its descendants).
    """

    def __init__(self, scheduler_pid: int) -> None:
        self.scheduler_pid = scheduler_pid
        # task instance id -> {"pid", "hwm_kb", "rss_kb", "cpu_s", "first", "last"}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.running: list[tuple[float, frozenset[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-sampler", daemon=True)

    def __enter__(self) -> TaskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        """Read every task process once."""
        now = time.time()
        alive = set()
        for pid in _descendants(self.scheduler_pid):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace").strip()
                match = _TASK_TITLE.match(title)
                if match is None:
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
                cpu = process_cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile
            memory = {}
            for line in status.splitlines():
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    memory[name] = int(rest.split()[0])
            ti_id = match.group(1)
            alive.add(ti_id)
            entry = self.tasks.setdefault(ti_id, {"pid": pid, "hwm_kb": 0, "rss_kb": 0, "cpu_s": 0.0, "first": now})
            entry["hwm_kb"] = max(entry["hwm_kb"], memory.get("VmHWM", 0))
            entry["rss_kb"] = max(entry["rss_kb"], memory.get("VmRSS", 0))
            entry["cpu_s"] = max(entry["cpu_s"], cpu)
            entry["last"] = now
        self.running.append((now, frozenset(alive)))


# -- one run of the DAG ---------------------------------------------------------------------------


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)).total_seconds()


def _epoch(value: str | None) -> float | None:
    return None if not value else datetime.datetime.fromisoformat(value).timestamp()


def xcom_sizes(rest: Any, run_id: str) -> list[dict[str, Any]]:
    """Every XCom the run wrote, with its size as stored (JSON bytes), read through the REST API."""
    entries: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = rest.call(
            "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/~/xcomEntries", params={"limit": 100, "offset": offset}
        )
        entries += page["xcom_entries"]
        offset += len(page["xcom_entries"])
        if not page["xcom_entries"] or offset >= page["total_entries"]:
            break
    sizes = []
    for entry in entries:
        answer = rest.call(
            "GET",
            f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{entry['task_id']}/xcomEntries/{entry['key']}",
            params={"map_index": entry["map_index"]},
        )
        value = answer["value"]
        size = len(value.encode()) if isinstance(value, str) else len(json.dumps(value).encode())
        sizes.append({"task_id": entry["task_id"], "map_index": entry["map_index"], "key": entry["key"], "bytes": size})
    return sizes


def progress_of(rest: Any, run_id: str, ti: dict[str, Any]) -> dict[str, Any]:
    """What a generation task's progress lines say: its limit over time and its rate-limited answers."""
    limits: list[float] = []
    limited = maximum = 0
    for attempt in range(1, (ti["try_number"] or 0) + 1):
        for entry in rest.task_log_entries(DAG_ID, run_id, ti["task_id"], attempt, ti["map_index"]):
            match = _PROGRESS.search(str(entry.get("event", "")))
            if match:
                limits.append(float(match["limit"]))
                limited = int(match["limited"])
                maximum = int(match["maximum"])
    return {"limits": limits, "rate_limited": limited, "max_concurrency": maximum}


def run_catalog(
    airflow: AirflowDeployment,
    emulator: ServerProcess,
    s3: Any,
    count: int,
    slots: int,
    args: argparse.Namespace,
    label: str,
) -> dict[str, Any]:
    """Upload a catalog of ``count`` products, run the DAG on it (``slots`` in the pool) and return what was measured.

    ``label`` names the run's prefixes, so that no run reuses another's images.
    """
    from airflow_provider_seedream.emulator.client import EmulatorClient

    control = EmulatorClient(emulator.url)
    control.reset()  # counters, images, and a full token bucket
    key = f"catalogs/bench-{count}.jsonl.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=catalog_lines(count))
    conf = {
        "bucket": BUCKET,
        "catalog_key": key,
        "size": args.size,
        "chunk_size": args.chunk_size,
        "images_prefix": f"bench-{label}-{count}/images",
        "report_prefix": f"bench-{label}-{count}/review",
        "gallery_max_images": 100,
    }
    rest = airflow.rest
    emulator_cpu0 = emulator.cpu_seconds()
    with TaskSampler(airflow.components["scheduler"].popen.pid) as sampler:
        run = rest.trigger(DAG_ID, conf)
        run_id = run["dag_run_id"]
        run = rest.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT, explain=lambda: airflow.explain_run(DAG_ID, run_id, 3000))
    emulator_cpu = emulator.cpu_seconds() - emulator_cpu0
    wait_for(lambda: control.stats()["generation_in_flight"] == 0, 60, "the emulator finishes its requests")
    stats = control.stats()
    made = sorted(float(image["created"]) for image in control.images())

    tis = rest.task_instances(DAG_ID, run_id)
    by_id = {str(ti["id"]): ti for ti in tis}
    processes: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for ti_id, entry in sampler.tasks.items():
        ti = by_id.get(ti_id)
        if ti is not None:
            processes[ti["task_id"]].append({**entry, "map_index": ti["map_index"]})
    overlap = 0
    generate_ids = {str(ti["id"]) for ti in tis if ti["task_id"] == GENERATE}
    for _, alive in sampler.running:
        overlap = max(overlap, len(alive & generate_ids))
    chunks = [ti for ti in tis if ti["task_id"] == GENERATE]
    progress = [progress_of(rest, run_id, ti) for ti in chunks]
    xcoms = xcom_sizes(rest, run_id)
    largest = max(xcoms, key=lambda item: item["bytes"]) if xcoms else None

    requests_sent = stats["generation_requests"]
    answered_429 = int(stats["generation_status"].get("429", 0))
    window = made[-1] - made[0] if len(made) > 1 else None
    starts = [_epoch(ti["start_date"]) for ti in chunks if ti["start_date"]]
    ends = [_epoch(ti["end_date"]) for ti in chunks if ti["end_date"]]
    wall = _seconds(run["start_date"], run["end_date"])
    phase = (max(ends) - min(starts)) if starts and ends else None
    busy = sum(_seconds(ti["start_date"], ti["end_date"]) or 0.0 for ti in chunks)
    achieved = 60.0 * (len(made) - 1) / window if window else None
    bound = 60.0 * count / args.images_per_minute
    burst = round(max(args.images_per_minute / 60.0 * BURST_SECONDS, MAX_GROUP_IMAGES))
    per_task = {
        task_id: {
            "processes": len(entries),
            "peak_rss_mb": max(entry["hwm_kb"] for entry in entries) / 1024,
            "median_peak_rss_mb": statistics.median(entry["hwm_kb"] for entry in entries) / 1024,
            "cpu_s": sum(entry["cpu_s"] for entry in entries),
        }
        for task_id, entries in sorted(processes.items())
    }
    limits = [limit for item in progress for limit in item["limits"]]
    return {
        "prompts": count,
        "run_id": run_id,
        "state": run["state"],
        "task_states": dict(collections.Counter(f"{ti['task_id']}:{ti['state']}" for ti in tis)),
        "chunks": len(chunks),
        "wall_s": wall,
        "bound_s": bound,
        "wall_ratio": wall / bound if wall else None,
        "generate_phase_s": phase,
        # How much of the pool's time the mapped tasks held a slot (the rest: scheduling and start-up gaps).
        "slot_busy_share": busy / (slots * phase) if phase else None,
        "images_made": len(made),
        "images_generated": stats["images_generated"],
        "made_window_s": window,
        "achieved_images_per_minute": achieved,
        # Little's law backwards: the requests in flight on average that the rate achieved implies.
        "mean_in_flight": achieved / 60.0 * (args.latency + args.latency_jitter / 2) if achieved else None,
        # Without the images a full bucket lets through at once at the start: the refill alone.
        "steady_images_per_minute": 60.0 * max(0, len(made) - 1 - burst) / window if window else None,
        "burst_images": burst,
        "generation_requests": requests_sent,
        "answered_429": answered_429,
        "rate_limited": stats["faults"]["rate_limited"],
        "rate_limited_share": answered_429 / requests_sent if requests_sent else None,
        "rate_limited_seen_by_tasks": sum(item["rate_limited"] for item in progress),
        "max_concurrency": max((item["max_concurrency"] for item in progress), default=None),
        "lowest_task_limit": min(limits) if limits else None,
        "generation_in_flight_peak": stats["generation_in_flight_peak"],
        "parallel_generate_tasks_peak": overlap,
        "tasks": per_task,
        "xcoms": len(xcoms),
        "largest_xcom": largest,
        "xcom_bytes_total": sum(item["bytes"] for item in xcoms),
        "emulator_cpu_s": emulator_cpu,
    }


# -- the benchmark --------------------------------------------------------------------------------


def deployment_runs(
    homes: list[Path],
    emulator: ServerProcess,
    moto: ServerProcess,
    s3: Any,
    slots: int,
    max_concurrency: int,
    catalogs: list[tuple[str, int]],
    adaptive: bool,
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, Any]], float]:
    """Start a deployment whose tasks adapt their concurrency (or not), run each catalog, stop it."""
    home = Path(tempfile.mkdtemp(prefix="seedream-bench-rate-limit-"))
    homes.append(home)
    started = time.monotonic()
    airflow = AirflowDeployment(
        home,
        [DAG_FILE],
        executor="LocalExecutor",
        env={
            "SEEDREAM_BUCKET": BUCKET,
            # A failed chunk shows at once instead of after a retry delay.
            "SEEDREAM_TASK_RETRIES": "0",
            "SEEDREAM_MAX_CONCURRENCY": str(max_concurrency),
            "SEEDREAM_ADAPTIVE_CONCURRENCY": str(adaptive).lower(),
            "AIRFLOW__CORE__PARALLELISM": str(slots + 1),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(slots + 1),
        },
        components=("scheduler", "dag-processor"),
    )
    try:
        airflow.start()
        rest = airflow.rest
        wait_for(
            lambda: rest.import_errors() or rest.dag(DAG_ID), 300, "the dag-processor parses the DAG",
            explain=airflow.component_logs,
        )
        errors = rest.import_errors()
        if errors:
            raise RuntimeError(json.dumps(errors, indent=2))
        from airflow_provider_seedream import CONNECTION_FIELDS

        # What the UI's connection form saves: every declared extra, at its default.
        extras = {name: field["schema"].get("default") for name, field in CONNECTION_FIELDS.items()}
        rest.create_connection("seedream_default", "seedream", extras, host=emulator.url, password=API_KEY)
        rest.create_connection(
            "aws_default", "aws", {"endpoint_url": moto.url, "region_name": REGION}, login="testing", password="testing"
        )
        rest.create_pool(POOL, slots, "Seedream generation")
        rest.unpause(DAG_ID)
        startup = time.monotonic() - started
        runs = {label: run_catalog(airflow, emulator, s3, count, slots, args, label) for label, count in catalogs}
    finally:
        airflow.stop()
    return runs, startup


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, run the small and the large catalog, and return the figures."""
    if args.tiny:
        apply_tiny(args)
    for name in ("prompts", "chunk_size"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.small < 0 or args.small >= args.prompts:
        raise SystemExit(f"--small must be from 0 to fewer than --prompts ({args.prompts}), got {args.small}")
    max_concurrency = args.concurrency
    if max_concurrency <= 0:
        raise SystemExit(f"--concurrency must be positive, got {max_concurrency}")
    mean_latency = args.latency + args.latency_jitter / 2
    needed_in_flight = args.images_per_minute / 60.0 * mean_latency
    slots = args.pool_slots or max(4, math.ceil(POOL_HEADROOM * needed_in_flight / max_concurrency))
    if slots <= 0:
        raise SystemExit(f"--pool-slots must be positive, got {slots}")

    servers: list[ServerProcess] = []
    homes: list[Path] = []
    try:
        knobs = {
            "images_per_minute": args.images_per_minute,
            "latency_jitter": args.latency_jitter,
            "fault_seed": 7,
        }
        emulator = start_emulator(args.latency, knobs=knobs)
        servers.append(emulator)
        moto = start_moto()
        servers.append(moto)
        import boto3

        s3 = boto3.client(
            "s3", endpoint_url=moto.url, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        s3.create_bucket(Bucket=BUCKET)
        catalogs = [(label, count) for label, count in (("small", args.small), ("large", args.prompts)) if count]
        runs, startup = deployment_runs(homes, emulator, moto, s3, slots, max_concurrency, catalogs, True, args)
        baseline: dict[str, Any] | None = None
        if args.baseline:
            # The same large run in a deployment of its own whose tasks keep max_concurrency in flight.
            fixed, _ = deployment_runs(
                homes, emulator, moto, s3, slots, max_concurrency, [("fixed", args.prompts)], False, args
            )
            baseline = fixed["fixed"]
    finally:
        for server in servers:
            server.stop()
        if not args.keep_home:
            for home in homes:
                shutil.rmtree(home, ignore_errors=True)

    large = runs["large"]
    small = runs.get("small")
    growth = {}
    if small:
        for task_id, entry in large["tasks"].items():
            if task_id in small["tasks"]:
                growth[task_id] = entry["peak_rss_mb"] / small["tasks"][task_id]["peak_rss_mb"]
    largest = max((run["largest_xcom"] for run in runs.values() if run["largest_xcom"]), key=lambda x: x["bytes"], default=None)
    info = machine()
    achieved = large["achieved_images_per_minute"]
    return {
        "benchmark": "rate_limit",
        "prompts": args.prompts,
        "small_prompts": args.small,
        "images_per_minute": args.images_per_minute,
        "latency_s": args.latency,
        "latency_jitter_s": args.latency_jitter,
        "mean_latency_s": mean_latency,
        "size": args.size,
        "chunk_size": args.chunk_size,
        "pool_slots": slots,
        "max_concurrency": max_concurrency,
        "needed_in_flight": needed_in_flight,
        "capacity_in_flight": slots * max_concurrency,
        "achieved_images_per_minute": achieved,
        "achieved_ratio": achieved / args.images_per_minute if achieved else None,
        "steady_images_per_minute": large["steady_images_per_minute"],
        "steady_ratio": large["steady_images_per_minute"] / args.images_per_minute
        if large["steady_images_per_minute"]
        else None,
        "rate_limited_share": large["rate_limited_share"],
        "wall_s": large["wall_s"],
        "bound_s": large["bound_s"],
        "wall_ratio": large["wall_ratio"],
        "peak_rss_mb": {task: {"small": small["tasks"][task]["peak_rss_mb"] if small and task in small["tasks"] else None,
                               "large": entry["peak_rss_mb"]} for task, entry in large["tasks"].items()},
        "rss_growth": growth,
        "max_rss_growth": max(growth.values()) if growth else None,
        "largest_xcom_bytes": largest["bytes"] if largest else None,
        "largest_xcom": largest,
        "startup_s": startup,
        "runs": runs,
        # The same large run with adaptive_concurrency off; None with --no-baseline.
        "fixed_concurrency": baseline,
        "adaptation_429_ratio": ratio(large["rate_limited_share"], baseline["rate_limited_share"]) if baseline else None,
        "adaptation_rate_ratio": ratio(achieved, baseline["achieved_images_per_minute"]) if baseline else None,
        "cpu_count": info["cpu_count"],
        "load_avg_1m": info["load_avg_1m"],
        "tiny": bool(args.tiny),
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or ``None`` when either is unknown or the baseline is zero."""
    return value / baseline if value is not None and baseline else None


def explanations(figures: dict[str, Any]) -> list[str]:
    """Why a missed target was missed, as far as the figures tell."""
    large = figures["runs"]["large"]
    out = []
    ratio = figures["achieved_ratio"]
    if ratio is not None and ratio < TARGET_RATE_RATIO:
        peak = large["generation_in_flight_peak"]
        if figures["capacity_in_flight"] < figures["needed_in_flight"]:
            most = 60.0 * figures["capacity_in_flight"] / figures["mean_latency_s"]
            out.append(
                f"rate: the pool allows {figures['capacity_in_flight']} requests in flight ({figures['pool_slots']} slots x "
                f"max_concurrency {figures['max_concurrency']}), fewer than the {figures['needed_in_flight']:.1f} the limit "
                f"needs: at most {most:,.0f} images/min by Little's law. The tasks held their slots "
                f"{format_value(large['slot_busy_share'])} of the time (start-up and scheduling between chunks), and kept "
                f"{format_value(large['mean_in_flight'])} requests in flight on average."
            )
        elif peak < figures["needed_in_flight"]:
            out.append(
                f"rate: at most {peak} requests were in flight at once, fewer than the {figures['needed_in_flight']:.1f} "
                f"the limit needs at a mean latency of {figures['mean_latency_s']:.2f} s (Little's law); "
                f"{large['parallel_generate_tasks_peak']} mapped tasks ran at once at most, of {figures['pool_slots']} pool "
                "slots: task start-up and the CPU of 2 shared cores keep the slots from staying full."
            )
        elif large["rate_limited_share"] and large["rate_limited_share"] > TARGET_429_SHARE:
            out.append(
                "rate: requests were in flight, but too many were answered 429 and then waited out their "
                "Retry-After and backoff while holding their slot."
            )
        else:
            out.append("rate: the tasks' adaptive limits stayed below what the account allows for part of the run.")
    share = figures["rate_limited_share"]
    if share is not None and share > TARGET_429_SHARE:
        out.append(
            f"429s: {figures['pool_slots']} tasks each start at max_concurrency {figures['max_concurrency']} and halve "
            "only after their own first 429, so each new task adds a burst over the limit; the lowest limit a task "
            f"logged was {format_value(large['lowest_task_limit'])}."
        )
    growth = figures["max_rss_growth"]
    if growth is not None and growth > TARGET_RSS_GROWTH:
        worst = max(figures["rss_growth"], key=figures["rss_growth"].get)
        out.append(f"RSS: {worst} grew {growth:.2f}x from {figures['small_prompts']} to {figures['prompts']} products.")
    largest = figures["largest_xcom_bytes"]
    if largest is not None and largest >= TARGET_XCOM_BYTES:
        out.append(f"XCom: {figures['largest_xcom']['task_id']} wrote {largest:,} bytes under {figures['largest_xcom']['key']!r}.")
    return out


def report(figures: dict[str, Any]) -> str:
    """The readable tables."""
    runs = figures["runs"]
    order = [label for label in ("small", "large") if label in runs]
    rows = []
    for label in order:
        run = runs[label]
        rows.append(
            [
                f"{run['prompts']:,} products ({run['state']})", run["chunks"], run["wall_s"], run["bound_s"],
                run["generate_phase_s"], run["achieved_images_per_minute"], run["images_made"],
                run["generation_requests"], run["answered_429"], run["rate_limited_share"],
                run["generation_in_flight_peak"], run["mean_in_flight"], run["parallel_generate_tasks_peak"],
                run["slot_busy_share"], run["lowest_task_limit"], run["emulator_cpu_s"],
            ]
        )
    memory_rows = []
    for task, entry in figures["peak_rss_mb"].items():
        large_task = runs["large"]["tasks"][task]
        memory_rows.append(
            [task, large_task["processes"], entry["small"], entry["large"], figures["rss_growth"].get(task),
             large_task["median_peak_rss_mb"], large_task["cpu_s"]]
        )
    large = runs["large"]
    targets = [
        ["images per minute / limit", figures["achieved_ratio"], f">= {TARGET_RATE_RATIO}",
         verdict(figures["achieved_ratio"], TARGET_RATE_RATIO, True)],
        ["share of requests answered 429", figures["rate_limited_share"], f"<= {TARGET_429_SHARE}",
         verdict(figures["rate_limited_share"], TARGET_429_SHARE, False)],
        ["peak RSS per task, large / small (worst task)", figures["max_rss_growth"], f"<= {TARGET_RSS_GROWTH}",
         verdict(figures["max_rss_growth"], TARGET_RSS_GROWTH, False)],
        ["largest XCom, bytes", figures["largest_xcom_bytes"], f"< {TARGET_XCOM_BYTES:,}",
         verdict(figures["largest_xcom_bytes"], TARGET_XCOM_BYTES - 1, False)],
    ]
    largest = figures["largest_xcom"]
    out = [
        f"Rate limit: the catalog DAG under a real scheduler (LocalExecutor), limit {figures['images_per_minute']:g} "
        f"images/min per model, latency {figures['latency_s']:g}-{figures['latency_s'] + figures['latency_jitter_s']:g} s "
        f"(mean {figures['mean_latency_s']:.2f} s), size {figures['size']}, {figures['chunk_size']} products per mapped task",
        f"Sizing (Little's law): limit x mean latency = {figures['needed_in_flight']:.1f} requests in flight needed; "
        f"pool {POOL} {figures['pool_slots']} slots x max_concurrency {figures['max_concurrency']} = "
        f"{figures['capacity_in_flight']} allowed",
        f"{figures['cpu_count']} CPU cores shared by every component (load average {figures['load_avg_1m']}); "
        f"start-up of the services and Airflow: {figures['startup_s']:.0f} s",
        "",
        table(
            ["catalog", "chunks", "wall s", "bound s", "generate phase s", "images/min", "images", "requests", "429s",
             "429 share", "peak in flight", "mean in flight", "tasks at once", "slots busy", "lowest task limit",
             "emulator CPU s"],
            rows,
        ),
        "wall s: the DAG run's start to end (REST API); bound s: products / limit; images/min: images made at the "
        "emulator between its first and its last image; mean in flight: images/min / 60 x mean latency (Little's law); "
        "slots busy: the share of the pool's slot-seconds during the generate phase that mapped tasks held.",
        f"Without the {large['burst_images']} images the full bucket let through at the start, the large run made "
        f"{format_value(figures['steady_images_per_minute'])} images/min ({format_value(figures['steady_ratio'])} of the limit).",
        f"Rate-limited answers counted by the tasks' own progress lines: {large['rate_limited_seen_by_tasks']} "
        f"(the emulator answered {large['answered_429']}).",
        "",
        table(["task", "processes", "peak RSS MiB small", "peak RSS MiB large", "growth", "median peak MiB", "CPU s (sum)"],
              memory_rows, title="Task processes (peak RSS = VmHWM, sampled from /proc)"),
        "",
        f"XComs written by the large run: {large['xcoms']}, {large['xcom_bytes_total']:,} bytes in all; the largest "
        + (f"{largest['bytes']:,} bytes ({largest['task_id']}[{largest['map_index']}] {largest['key']!r})." if largest else "-"),
        "",
        table(["target", "value", "goal", "verdict"], targets),
    ]
    fixed = figures["fixed_concurrency"]
    if fixed:
        sides = [("adaptive (default)", large), ("fixed: adaptive_concurrency=False", fixed)]
        out += [
            "",
            table(
                ["large run", "state", "images/min", "of the limit", "requests", "429s", "429 share", "peak in flight",
                 "wall s"],
                [[name, run["state"], run["achieved_images_per_minute"],
                  ratio(run["achieved_images_per_minute"], figures["images_per_minute"]), run["generation_requests"],
                  run["answered_429"], run["rate_limited_share"], run["generation_in_flight_peak"], run["wall_s"]]
                 for name, run in sides],
                title="The same run, side by side: tasks adapting their concurrency to 429s, and keeping it fixed",
            ),
            f"Adaptive over fixed: 429 share x{format_value(figures['adaptation_429_ratio'])}, "
            f"images/min x{format_value(figures['adaptation_rate_ratio'])}.",
        ]
    why = explanations(figures)
    if why:
        out += ["", "Why a target was missed:", *[f"- {line}" for line in why]]
    if any(run["state"] != "success" for run in runs.values()):
        out += ["", "A run did not succeed: " + ", ".join(f"{run['prompts']}: {run['task_states']}" for run in runs.values())]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables, end with the JSON line."""
    return run_script(build_parser(), measure, report, argv)


if __name__ == "__main__":
    main()
