"""The example DAGs in a real deployment: unpaused and triggered through the REST API with no logical date.

Every example DAG is unpaused and triggered at once, as a user does from the UI; the runs go
through the scheduler and the LocalExecutor side by side. Unpausing ``seedream_daily_banner``
also makes the scheduler start its latest scheduled run (with a logical date), so the banner's
templates are proven for both kinds of run. ``seedream_publish_banners`` is never triggered:
it must run by itself on the banners asset.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.deployment.airflow_deployment import FINISHED, wait_for
from tests.deployment.conftest import UI_FORM_EXTRAS, Tier
from tests.deployment.runs import RUN_TIMEOUT, ExampleRuns, start_example_runs

DATA = ROOT / "data"
BANNER_CONF = {"size": "2K", "style": "neon"}
CATALOG_CONF = {"size": "2K", "chunk_size": 5}
VARIANTS = [
    {"name": "snow", "prompt": "on a snowy mountain ledge"},
    {"name": "beach", "prompt": "on a sunny beach towel"},
]


@pytest.fixture(scope="module")
def example_runs(deployment: Tier) -> ExampleRuns:
    """Upload the sample catalog and photos, then unpause and trigger every example DAG."""
    return start_example_runs(deployment, BANNER_CONF, CATALOG_CONF, VARIANTS)


def test_connections_hold_the_extras_the_ui_form_saves(deployment: Tier):
    saved = deployment.rest.connection("seedream_default")
    assert saved["conn_type"] == "seedream" and saved["password"] == "***"
    extra = json.loads(saved["extra"])
    assert extra == UI_FORM_EXTRAS and extra["max_retries"] is None and extra["timeout"] is None


def test_manual_banner_run_stores_banners_dated_by_the_run(deployment: Tier, example_runs: ExampleRuns):
    run = example_runs.assert_succeeded("seedream_daily_banner")
    day = run["run_after"][:10]
    stored = deployment.keys(f"banners/{day}/0")
    assert stored == [f"banners/{day}/00000-00.jpg", f"banners/{day}/00001-00.jpg"]


def test_scheduled_banner_run_succeeds(deployment: Tier, example_runs: ExampleRuns):
    scheduled = example_runs.scheduled_banner_run()
    assert scheduled["logical_date"] is not None
    run = example_runs.assert_succeeded("seedream_daily_banner", scheduled["dag_run_id"])
    day = run["logical_date"][:10]
    assert len(deployment.keys(f"banners/{day}/0")) == 2


def test_publish_banners_runs_by_itself_on_the_asset(deployment: Tier, example_runs: ExampleRuns):
    manual = example_runs.assert_succeeded("seedream_daily_banner")
    rest = deployment.rest

    def consumed_manual_event() -> dict[str, Any] | None:
        for run in rest.dag_runs("seedream_publish_banners"):
            if run["state"] not in FINISHED:
                continue
            events = rest.call(
                "GET", f"/dags/seedream_publish_banners/dagRuns/{run['dag_run_id']}/upstreamAssetEvents"
            )["asset_events"]
            for event in events:
                if event["source_run_id"] == manual["dag_run_id"]:
                    return run, event
        return None

    run, event = wait_for(
        consumed_manual_event, RUN_TIMEOUT, "seedream_publish_banners runs on the manual banner's asset event",
        interval=1.0, explain=deployment.airflow.component_logs,
    )
    assert run["run_type"] == "asset_triggered"
    day = manual["run_after"][:10]
    assert event["uri"] == f"s3://{deployment.bucket}/banners"
    assert event["extra"]["keys"] == deployment.keys(f"banners/{day}/0") and event["extra"]["count"] == 2
    extra = event["extra"]
    assert (extra["generated"] + extra["reused"], extra["failed"], extra["truncated"]) == (2, 0, False), extra
    assert all("neon" in prompt and day in prompt for prompt in event["extra"]["prompts"])
    # keys[i] was made from prompts[i]: the banner's first prompt is the website banner.
    assert [("website banner" in prompt, "social media post" in prompt) for prompt in event["extra"]["prompts"]] == [
        (True, False),
        (False, True),
    ]
    example_runs.assert_succeeded("seedream_publish_banners", run["dag_run_id"])
    index = json.loads(deployment.read("banners/latest.json"))
    assert index["asset"] == f"s3://{deployment.bucket}/banners"
    published = [key for banner in index["banners"] for key in banner["keys"]]
    assert published and set(published) <= set(deployment.keys("banners/"))


def test_catalog_batch_stores_an_image_per_product(deployment: Tier, example_runs: ExampleRuns):
    run = example_runs.assert_succeeded("seedream_catalog_batch")
    catalog = [json.loads(line) for line in (DATA / "catalog_sample.jsonl").read_text().splitlines() if line.strip()]
    chunks = [
        ti for ti in deployment.rest.task_instances("seedream_catalog_batch", run["dag_run_id"])
        if ti["task_id"] == "generate_images"
    ]
    assert len(chunks) == -(-len(catalog) // CATALOG_CONF["chunk_size"])
    rows = [json.loads(line) for line in deployment.read("catalog/review/manifest.jsonl").splitlines()]
    assert [row["product_id"] for row in rows] == [product["id"] for product in catalog]
    for row in rows:
        assert row["status"] == "stored", row
        assert hashlib.sha256(deployment.read(row["key"])).hexdigest() == row["sha256"]
    assert "<img" in deployment.read("catalog/review/gallery.html").decode()


def test_image_variants_stores_every_variant(deployment: Tier, example_runs: ExampleRuns):
    example_runs.assert_succeeded("seedream_image_variants")
    photos = sorted((DATA / "photos").glob("*.jpg"))
    entries = json.loads(deployment.read("photos/variants/index.json"))["variants"]
    assert len(entries) == len(photos) * len(VARIANTS)
    stored = set(deployment.keys("photos/variants/"))
    for entry in entries:
        assert entry["status"] == "stored" and entry["keys"] and set(entry["keys"]) <= stored, entry


def _fails_first_try_without_requests(
    deployment: Tier, example_runs: ExampleRuns, dag_id: str, conf: dict[str, Any], task_id: str, param: str
) -> dict[str, Any]:
    """Trigger ``dag_id`` with a bad ``conf``; its first task fails once, naming ``param``, with no request sent."""
    example_runs.wait_all()
    before = deployment.emulator.stats()["generation_requests"]
    run = deployment.rest.trigger(dag_id, conf)
    run_id = run["dag_run_id"]
    run = deployment.rest.wait_for_run(dag_id, run_id, RUN_TIMEOUT, explain=lambda: deployment.explain(dag_id, run_id))
    explanation = deployment.explain(dag_id, run_id)
    assert run["state"] == "failed", explanation
    ti = deployment.rest.task_instance(dag_id, run_id, task_id)
    assert ti["state"] == "failed" and ti["try_number"] == 1, explanation
    error = find_error(deployment.rest.task_log_entries(dag_id, run_id, task_id, 1))
    assert re.search(rf"\b{param}\b", error), explanation
    assert deployment.emulator.stats()["generation_requests"] == before
    return {"ti": ti, "error": error}


def find_error(entries: list[dict[str, Any]]) -> str:
    """The exception a task failed with, as its log records it."""
    for entry in entries:
        if entry.get("event") == "Task failed with exception":
            return json.dumps(entry.get("error_detail"))
    return ""


def test_bad_size_fails_the_banner_without_retries_or_requests(deployment: Tier, example_runs: ExampleRuns):
    failure = _fails_first_try_without_requests(
        deployment, example_runs, "seedream_daily_banner", {"size": "5K"}, "generate_banner", "size"
    )
    assert failure["ti"]["max_tries"] >= 1, "the task has retries, which a bad conf must not use"
    assert "5K" in failure["error"] and "AirflowFailException" in failure["error"]


def test_missing_catalog_fails_without_retries_or_requests(deployment: Tier, example_runs: ExampleRuns):
    _fails_first_try_without_requests(
        deployment,
        example_runs,
        "seedream_catalog_batch",
        {"catalog_key": "catalogs/no-such-catalog.jsonl", "size": "2K"},
        "load_catalog",
        "catalog_key",
    )
