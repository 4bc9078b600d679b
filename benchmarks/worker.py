"""The measured process of a benchmark: one way of turning prompts into S3 objects, in a fresh interpreter.

Run by the benchmark scripts as ``python benchmarks/worker.py '<json spec>'``; it prints one
JSON object as its last line. The connections come from the environment
(``AIRFLOW_CONN_SEEDREAM_DEFAULT``, ``AIRFLOW_CONN_SEEDREAM_HTTP``, ``AIRFLOW_CONN_AWS_DEFAULT``)
and ``BENCH_*`` variables set by :meth:`servers.Services.connection_env`.

Modes (the spec's ``mode``):

``operator``
    ``SeedreamToS3Operator(prompt=[...], max_concurrency=C).execute(context)``, as a task runs it,
    with the least context a task runner gives (see :func:`task_context`).
``naive``
    The hand-written ``PythonOperator`` callable: for each prompt in turn ``requests.post``,
    ``requests.get(url).content`` and boto3 ``put_object``.
``http_to_s3``
    Airflow's own operators, one prompt at a time: ``HttpOperator`` (POST, the image URL
    picked from the answer) then ``HttpToS3Operator`` (GET of that URL, stored with ``load_bytes``).
``threads``
    Bare threads: ``concurrency`` threads each doing POST, GET and PUT per prompt, no ledger.
``plan``
    A rerun of an unchanged catalog, every prompt already stored (see :func:`run_plan`).
``emulator_probe``
    The emulator alone at the same concurrency (generate, download, discard): the ceiling
    the service side sets on this machine.

The modules each mode needs are imported, and the process's RSS read, before the clock
starts: the figures cover the task's work (connections, clients, requests, transfers),
not the interpreter's or Airflow's start-up. The spec's other fields: ``n`` (prompts),
``concurrency`` (operator only), ``size`` (``None`` for the service default, 2048x2048),
``prefix`` (S3 key prefix), ``label`` (a tag that makes the prompts unique to the run) and, for
the operator, ``group`` (images per prompt, in group mode), ``stream``, ``adaptive``
(``adaptive_concurrency``) and ``hook_params``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL = "doubao-seedream-5-0-260128"


def _rss_kb() -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prompts(n: int, label: str) -> list[str]:
    """``n`` distinct prompts, unique to the run's ``label``."""
    return [f"{label} product photo {i}: a ceramic mug on a wooden table, soft daylight" for i in range(n)]


# -- the ways ---------------------------------------------------------------------------


class TaskInstance:
    """What the operator reads of its task instance: an unmapped ``map_index`` and ``xcom_push``.

    Pushed values (the task's extra links) are kept in :attr:`xcoms`.
    """

    def __init__(self) -> None:
        self.map_index = -1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        """Keep ``value`` under ``key``, as the task runner sends it to XCom."""
        self.xcoms[key] = value


class DagRun:
    """What the operator reads of its DAG run: the run id (its pending-links records are named by it)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id


def task_context(label: str) -> dict[str, Any]:
    """The smallest context a task runner would hand the operator: ``ti``, ``dag_run`` and ``run_id``."""
    ti = TaskInstance()
    run_id = f"manual__{label}"
    return {"ti": ti, "task_instance": ti, "dag_run": DagRun(run_id), "run_id": run_id}


def run_operator(spec: dict[str, Any]) -> dict[str, Any]:
    """The provider: one task, ``max_concurrency`` prompts in flight.

    With ``group`` in the spec, each prompt asks for a group of that many images
    (``sequential_image_generation="auto"``), streamed when ``stream`` is true.
    """
    from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

    parameters: dict[str, Any] = {}
    if spec.get("group"):
        parameters["sequential_image_generation"] = "auto"
        parameters["sequential_image_generation_options"] = {"max_images": spec["group"]}
    if spec.get("stream") is not None:
        parameters["stream"] = spec["stream"]
    if spec.get("adaptive") is not None:
        parameters["adaptive_concurrency"] = spec["adaptive"]
    if spec.get("hook_params"):
        parameters["hook_params"] = spec["hook_params"]
    operator = SeedreamToS3Operator(
        task_id="generate",
        prompt=prompts(spec["n"], spec["label"]),
        s3_bucket=os.environ["BENCH_BUCKET"],
        s3_prefix=spec["prefix"],
        size=spec.get("size"),
        max_concurrency=spec["concurrency"],
        **parameters,
    )
    records = operator.execute(task_context(spec["label"]))  # type: ignore[arg-type]
    expected = spec["n"] * (spec.get("group") or 1)
    assert len(records) == expected, f"stored {len(records)} of {expected}"
    pacer = operator._runner.pacer
    return {"pace_images_per_minute": pacer.images_per_minute, "rate_limited": pacer.rate_limited}


def run_naive(spec: dict[str, Any]) -> None:
    """What a user writes in a ``PythonOperator``: one prompt after another, each image in memory."""
    import requests

    endpoint = os.environ["BENCH_EMULATOR_URL"] + "/v1/images/generations"
    headers = {"Authorization": f"Bearer {os.environ['BENCH_API_KEY']}"}
    bucket = os.environ["BENCH_BUCKET"]
    s3 = bench_s3_client()
    for i, prompt in enumerate(prompts(spec["n"], spec["label"])):
        body: dict[str, Any] = {"model": MODEL, "prompt": prompt}
        if spec.get("size"):
            body["size"] = spec["size"]
        response = requests.post(endpoint, json=body, headers=headers, timeout=300)
        response.raise_for_status()
        url = response.json()["data"][0]["url"]
        image = requests.get(url, timeout=120)
        image.raise_for_status()
        content = image.content
        s3.put_object(Bucket=bucket, Key=f"{spec['prefix']}/{i:05d}.jpeg", Body=content, ContentType="image/jpeg")


def run_http_to_s3(spec: dict[str, Any]) -> None:
    """Airflow's HTTP operators, one prompt at a time: ``HttpOperator`` then ``HttpToS3Operator``."""
    from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator
    from airflow.providers.http.operators.http import HttpOperator

    headers = {"Authorization": f"Bearer {os.environ['BENCH_API_KEY']}", "Content-Type": "application/json"}
    bucket = os.environ["BENCH_BUCKET"]
    base = os.environ["BENCH_EMULATOR_URL"]
    for i, prompt in enumerate(prompts(spec["n"], spec["label"])):
        body: dict[str, Any] = {"model": MODEL, "prompt": prompt}
        if spec.get("size"):
            body["size"] = spec["size"]
        generate = HttpOperator(
            task_id=f"generate_{i}",
            http_conn_id="seedream_http",
            endpoint="/v1/images/generations",
            method="POST",
            data=json.dumps(body),
            headers=headers,
            response_filter=lambda response: response.json()["data"][0]["url"],
        )
        url: str = generate.execute({})  # type: ignore[arg-type]
        store = HttpToS3Operator(
            task_id=f"store_{i}",
            http_conn_id="seedream_http",
            endpoint=url[len(base) :],
            method="GET",
            s3_bucket=bucket,
            s3_key=f"{spec['prefix']}/{i:05d}.jpeg",
            replace=True,
        )
        store.execute({})  # type: ignore[arg-type]


def run_emulator_probe(spec: dict[str, Any]) -> None:
    """The emulator alone at the same concurrency: generate and download, bytes discarded, nothing stored.

    Its wall time is what the service side (emulator plus this machine) allows; the operator
    cannot beat it.
    """
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from requests.adapters import HTTPAdapter

    endpoint = os.environ["BENCH_EMULATOR_URL"] + "/v1/images/generations"
    headers = {"Authorization": f"Bearer {os.environ['BENCH_API_KEY']}"}
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=spec["concurrency"]))

    def one(prompt: str) -> None:
        body: dict[str, Any] = {"model": MODEL, "prompt": prompt}
        if spec.get("size"):
            body["size"] = spec["size"]
        response = session.post(endpoint, json=body, headers=headers, timeout=300)
        response.raise_for_status()
        with session.get(response.json()["data"][0]["url"], stream=True, timeout=120) as image:
            image.raise_for_status()
            for _ in image.iter_content(256 * 1024):
                pass

    with ThreadPoolExecutor(spec["concurrency"]) as pool:
        list(pool.map(one, prompts(spec["n"], spec["label"])))


def run_threads(spec: dict[str, Any]) -> None:
    """Bare threads: ``concurrency`` threads, each doing POST, GET and PUT per prompt, with no ledger.

    What a careful user writes by hand: one pooled session, one S3 client, nothing recorded,
    nothing reused. The operator's cost per image over this is the price of its promises.
    """
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from requests.adapters import HTTPAdapter

    endpoint = os.environ["BENCH_EMULATOR_URL"] + "/v1/images/generations"
    headers = {"Authorization": f"Bearer {os.environ['BENCH_API_KEY']}"}
    bucket = os.environ["BENCH_BUCKET"]
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=spec["concurrency"]))
    s3 = bench_s3_client()

    def one(numbered: tuple[int, str]) -> None:
        index, prompt = numbered
        body: dict[str, Any] = {"model": MODEL, "prompt": prompt}
        if spec.get("size"):
            body["size"] = spec["size"]
        response = session.post(endpoint, json=body, headers=headers, timeout=300)
        response.raise_for_status()
        image = session.get(response.json()["data"][0]["url"], timeout=120)
        image.raise_for_status()
        s3.put_object(Bucket=bucket, Key=f"{spec['prefix']}/{index:05d}.jpeg", Body=image.content, ContentType="image/jpeg")

    with ThreadPoolExecutor(spec["concurrency"]) as pool:
        list(pool.map(one, enumerate(prompts(spec["n"], spec["label"]))))


@contextmanager
def profiled(top: int | None, printed: list[str]) -> Iterator[None]:
    """Profile the block with cProfile; append its ``top`` functions by cumulative time to ``printed``."""
    if not top:
        yield
        return
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(int(top))
        printed.append(text.getvalue())


def run_plan(spec: dict[str, Any]) -> dict[str, Any]:
    """A rerun of an unchanged catalog: every prompt is already stored, so the task plans and sends nothing.

    The ledger's records and the images are first written as an earlier run leaves them
    (untimed: ``seed_s``), each prompt's fingerprint made by the operator's own planning, but
    with no index. ``execute()`` of a fresh operator over the same prompts is then timed twice:
    ``cold_s`` reads every record by itself (as after a try stopped before writing its index)
    and leaves the index; ``plan_s`` lists the prefix and takes the records from that index.
    ``list_s`` is one listing of the prefix by a bare boto3 client: what the store itself costs.
    """
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import asdict

    from airflow_provider_seedream.ledger import Ledger, Owner, Record
    from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator
    from airflow_provider_seedream.planning import GENERATION_FIELDS, RequestPlanner, prompt_items
    from airflow_provider_seedream.storage import ImageStore

    bucket = os.environ["BENCH_BUCKET"]

    def operator() -> SeedreamToS3Operator:
        return SeedreamToS3Operator(
            task_id="generate", prompt=prompts(spec["n"], spec["label"]), s3_bucket=bucket, s3_prefix=spec["prefix"],
            max_concurrency=spec["concurrency"],
        )

    started = time.perf_counter()
    earlier = operator()
    planner = RequestPlanner(
        earlier.hook, parameters={name: getattr(earlier, name) for name in GENERATION_FIELDS}, extra_parameters={},
        shared_references=[], s3_client=None,
    )
    jobs = planner.plan(prompt_items(earlier.prompt))
    client = bench_s3_client()
    store = ImageStore(client, bucket, spec["prefix"])
    owner = Owner(dag_id="dag", task_id="generate", run_id="scheduled__earlier")
    ledger = Ledger(client, bucket, spec["prefix"], owner)
    body = b"\xff\xd8 a stored image \xff\xd9"

    def seed(job: Any) -> None:
        key = store.key_for(job.stem, 0, job.extension)
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg")
        image = {"index": 0, "key": key, "bucket": bucket, "bytes": len(body), "sha256": "0" * 64,
                 "content_type": "image/jpeg", "size": "2048x2048", "model": MODEL}
        record = Record(stem=job.stem, status="stored", fingerprint=job.fingerprint, owner=asdict(owner),
                        images=(image,), billed=1, complete=True, model=MODEL, at=time.time())
        client.put_object(Bucket=bucket, Key=ledger.record_key(job.stem), Body=record.to_json())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(seed, jobs))
    walls, printed = [], []
    for _ in range(2):  # without the task's index (records read one by one), then with the index it left
        rerun = operator()
        clock = time.perf_counter()
        with profiled(spec.get("profile") if walls else None, printed):
            records = rerun.execute(task_context(spec["label"]))  # type: ignore[arg-type]
        walls.append(time.perf_counter() - clock)
        assert len(records) == spec["n"] and all(record["reused"] for record in records), "every prompt reused"
    clock = time.perf_counter()  # the store's own floor: one listing of the prefix, nothing else
    listed = sum(len(page.get("Contents", [])) for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=spec["prefix"] + "/"))
    list_s = time.perf_counter() - clock
    return {"seed_s": clock - started - sum(walls), "cold_s": walls[0], "plan_s": walls[1], "list_s": list_s, "listed": listed,
            **({"profile": printed[0]} if printed else {})}


MODES = {
    "operator": run_operator,
    "plan": run_plan,
    "threads": run_threads,
    "naive": run_naive,
    "http_to_s3": run_http_to_s3,
    "emulator_probe": run_emulator_probe,
}


def preload(mode: str) -> None:
    """Import what ``mode`` uses, so that imports are not timed."""
    import boto3  # noqa: F401
    import botocore.client  # noqa: F401
    import requests  # noqa: F401

    if mode in ("operator", "http_to_s3"):
        import airflow.sdk  # noqa: F401
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # noqa: F401
    if mode == "operator":
        import boto3.s3.transfer  # noqa: F401

        import airflow_provider_seedream.batch  # noqa: F401
        import airflow_provider_seedream.hooks.seedream  # noqa: F401
        import airflow_provider_seedream.operators.seedream  # noqa: F401
        import airflow_provider_seedream.storage  # noqa: F401
    if mode == "http_to_s3":
        import airflow.providers.amazon.aws.transfers.http_to_s3  # noqa: F401
        import airflow.providers.http.operators.http  # noqa: F401


def bench_s3_client() -> Any:
    """A boto3 client of the benchmark's S3 server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=os.environ["BENCH_S3_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def stored(prefix: str) -> tuple[int, int]:
    """How many objects, and bytes, are under ``prefix`` in the bucket."""
    s3 = bench_s3_client()
    count = total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=os.environ["BENCH_BUCKET"], Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            if "/_ledger/" in item["Key"]:
                continue  # the spend ledger's records are not images
            count += 1
            total += int(item["Size"])
    return count, total


def main() -> None:
    """Run the spec given as the first argument and print the figures as JSON."""
    spec = json.loads(sys.argv[1])
    mode = spec["mode"]
    started = time.perf_counter()
    preload(mode)
    import_seconds = time.perf_counter() - started
    base = _rss_kb()
    cpu0 = _cpu_seconds()
    epoch0 = time.time()
    wall0 = time.perf_counter()
    extra = MODES[mode](spec)
    wall = time.perf_counter() - wall0
    epoch1 = time.time()
    cpu = _cpu_seconds() - cpu0
    peak = _rss_kb()
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count, total = stored(spec["prefix"]) if mode != "emulator_probe" else (0, 0)
    figures = {
        "mode": mode,
        "n": spec["n"],
        "concurrency": spec.get("concurrency", 1),
        "size": spec.get("size"),
        "wall_s": wall,
        "started_at": epoch0,
        "ended_at": epoch1,
        "cpu_s": cpu,
        "import_s": import_seconds,
        "rss_base_kb": base["VmRSS"],
        "peak_rss_kb": max(maxrss_kb, peak["VmHWM"]),
        "stored_objects": count,
        "stored_bytes": total,
        **(extra or {}),
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
