"""The example DAGs on CeleryExecutor with a Redis broker and a worker of two processes.

The same REST-triggered runs as the LocalExecutor tier, then a catalog run under faults (429
with Retry-After, 500s, connections reset after the request was sent) whose chunks spread over
both worker processes, and which still stores every product's image exactly once.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import FIGURES, ROOT
from tests.deployment.conftest import Tier
from tests.deployment.runs import ExampleRuns, start_example_runs
from tests.e2e.conftest import WORKER_CONCURRENCY

DATA = ROOT / "data"
VARIANTS = [{"name": "dusk", "prompt": "on a balcony at dusk"}]
FAULTS = {
    "script": ["429", "500", "reset", "ok", "429", "reset", "500", "ok", "reset"],
    "rate_429": 0.1,
    "retry_after": 0.2,
    "rate_500": 0.05,
    "rate_reset": 0.05,
    "latency": 0.5,
}


def interval(ti: dict[str, Any]) -> tuple[datetime, datetime]:
    return (
        datetime.fromisoformat(ti["start_date"].replace("Z", "+00:00")),
        datetime.fromisoformat(ti["end_date"].replace("Z", "+00:00")),
    )


@pytest.fixture(scope="module")
def celery_runs(celery_tier: Tier) -> ExampleRuns:
    return start_example_runs(
        celery_tier,
        {"size": "2K", "style": "linocut"},
        {"size": "2K", "chunk_size": 3},
        VARIANTS,
        label="e2e tier (CeleryExecutor)",
    )


@pytest.mark.parametrize("dag_id", ["seedream_daily_banner", "seedream_catalog_batch", "seedream_image_variants"])
def test_example_dag_succeeds_on_celery(celery_tier: Tier, celery_runs: ExampleRuns, dag_id: str):
    run = celery_runs.assert_succeeded(dag_id)
    worker_log = celery_tier.airflow.components["celery-worker"].log_path.read_text(errors="replace")
    for ti in celery_tier.rest.task_instances(dag_id, run["dag_run_id"]):
        assert ti["id"] in worker_log, f"{ti['task_id']} did not run on the Celery worker"


def test_published_banners_on_celery(celery_tier: Tier, celery_runs: ExampleRuns):
    celery_runs.assert_succeeded("seedream_daily_banner")
    celery_runs.wait_all()
    publisher = [run for run in celery_tier.rest.dag_runs("seedream_publish_banners") if run["run_type"] == "asset_triggered"]
    assert publisher, "seedream_publish_banners did not run on the banners asset"
    for run in publisher:
        celery_runs.assert_succeeded("seedream_publish_banners", run["dag_run_id"])
    index = json.loads(celery_tier.read("banners/latest.json"))
    assert all(set(banner["keys"]) <= set(celery_tier.keys("banners/")) for banner in index["banners"])


def test_catalog_under_faults_stores_every_image_once(celery_tier: Tier, celery_runs: ExampleRuns):
    """429s, 500s and resets; chunks on both worker processes; every product stored once."""
    celery_runs.wait_all()
    rest, emulator = celery_tier.rest, celery_tier.emulator
    catalog = [json.loads(line) for line in (DATA / "catalog_sample.jsonl").read_text().splitlines() if line.strip()]
    # A reset answer may have been billed: this connection accepts sending it again.
    saved = rest.connection("seedream_default")
    extra = {**json.loads(saved["extra"]), "retry_unknown_outcome": True}
    rest.call(
        "PATCH",
        "/connections/seedream_default",
        params={"update_mask": "extra"},
        json={"connection_id": "seedream_default", "conn_type": "seedream", "extra": json.dumps(extra)},
    )
    emulator.reset()
    emulator.configure(**FAULTS)
    try:
        conf = {"size": "2K", "chunk_size": 3, "images_prefix": "faults/images", "report_prefix": "faults/review"}
        run_id = rest.trigger("seedream_catalog_batch", conf)["dag_run_id"]
        run = celery_runs.assert_succeeded("seedream_catalog_batch", run_id)
        stats = emulator.stats()
    finally:
        emulator.reset()

    assert stats["faults"]["429"] and stats["faults"]["500"] and stats["faults"]["reset"], stats
    stored = celery_tier.keys("faults/images/")
    assert {record["status"] for record in celery_tier.ledger("faults/images")} == {"stored"}
    assert len(stored) == len(catalog), stored
    rows = [json.loads(line) for line in celery_tier.read("faults/review/manifest.jsonl").splitlines()]
    assert sorted(row["key"] for row in rows) == stored and all(row["status"] == "stored" for row in rows)
    # Each stored image was paid for once; the others billed were answers lost to a reset.
    assert stats["images_generated"] - stats.get("billed_unanswered", 0) == len(catalog), stats

    chunks = [ti for ti in rest.task_instances("seedream_catalog_batch", run["dag_run_id"]) if ti["task_id"] == "generate_images"]
    assert len(chunks) == -(-len(catalog) // 3)
    spans = [interval(ti) for ti in chunks]
    together = [(a, b) for a in spans for b in spans if a < b and b[0] < a[1]]
    assert together, f"no two chunks ran at once on the worker's {WORKER_CONCURRENCY} processes: {spans}"
    FIGURES.append(
        f"e2e tier (CeleryExecutor): faults run: {stats['generation_requests']} requests for {len(catalog)} images "
        f"({stats['faults']['429']} 429s, {stats['faults']['500']} 500s, {stats['faults']['reset']} resets; "
        f"{stats.get('billed_unanswered', 0)} billed answers lost to resets)"
    )
