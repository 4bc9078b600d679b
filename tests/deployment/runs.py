"""Runs of the example DAGs in a deployment: wait for them, fail fast on a retry, record how long they took."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.conftest import FIGURES, ROOT
from tests.deployment.airflow_deployment import FINISHED, wait_for

RUN_TIMEOUT = 420
DATA = ROOT / "data"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def record_duration(label: str, dag_id: str, run: dict[str, Any]) -> None:
    """Add how long the run took under the scheduler to the session's figures."""
    if run.get("start_date") and run.get("end_date"):
        ran = (parse_time(run["end_date"]) - parse_time(run["start_date"])).total_seconds()
        waited = (parse_time(run["end_date"]) - parse_time(run["queued_at"])).total_seconds()
        FIGURES.append(
            f"{label}: {dag_id} ({run['run_type']}) {run['state']} in {ran:.1f} s "
            f"({waited:.1f} s from being queued)"
        )


class ExampleRuns:
    """The runs triggered by the module's fixture, and helpers to wait for them."""

    def __init__(self, tier: Any, run_ids: dict[str, str], label: str = "deployment tier") -> None:
        self.tier = tier
        self.label = label
        self.run_ids = run_ids
        self.finished: dict[str, dict[str, Any]] = {}

    def wait(self, dag_id: str, run_id: str | None = None) -> dict[str, Any]:
        run_id = run_id or self.run_ids[dag_id]
        if run_id not in self.finished:
            run = self.tier.rest.wait_for_run(
                dag_id, run_id, RUN_TIMEOUT, explain=lambda: self.tier.explain(dag_id, run_id), fail_on_retry=True
            )
            record_duration(self.label, dag_id, run)
            self.finished[run_id] = run
        return self.finished[run_id]

    def assert_succeeded(self, dag_id: str, run_id: str | None = None) -> dict[str, Any]:
        run = self.wait(dag_id, run_id)
        run_id = run["dag_run_id"]
        assert run["state"] == "success", self.tier.explain(dag_id, run_id)
        for ti in self.tier.rest.task_instances(dag_id, run_id):
            assert ti["state"] == "success" and ti["try_number"] == 1, self.tier.explain(dag_id, run_id)
        return run

    def scheduled_banner_run(self) -> dict[str, Any]:
        """The run the scheduler started on its own when the banner DAG was unpaused."""

        def scheduled() -> dict[str, Any] | None:
            runs = [run for run in self.tier.rest.dag_runs("seedream_daily_banner") if run["run_type"] == "scheduled"]
            return runs[0] if runs else None

        return wait_for(scheduled, 120, "the scheduler starts a scheduled seedream_daily_banner run")

    def wait_all(self) -> None:
        """Wait until no run of any example DAG is queued or running."""

        def quiet() -> bool:
            return all(
                run["state"] in FINISHED for dag_id in self.run_ids for run in self.tier.rest.dag_runs(dag_id)
            )

        wait_for(quiet, RUN_TIMEOUT, "every example run finishes", interval=1.0, explain=self.tier.airflow.component_logs)
        for dag_id, run_id in self.run_ids.items():
            self.wait(dag_id, run_id)


def start_example_runs(
    tier: Any,
    banner_conf: dict[str, Any],
    catalog_conf: dict[str, Any],
    variants: list[dict[str, str]],
    label: str = "deployment tier",
) -> ExampleRuns:
    """Upload the sample catalog and photos, trigger every example DAG with no logical date, then unpause them."""
    s3 = tier.s3()
    s3.upload_file(str(DATA / "catalog_sample.jsonl"), tier.bucket, "catalogs/catalog_sample.jsonl")
    for photo in sorted((DATA / "photos").glob("*.jpg")):
        s3.upload_file(str(photo), tier.bucket, f"photos/{photo.name}")
    rest = tier.rest
    run_ids = {}
    for dag_id, conf in (
        ("seedream_daily_banner", banner_conf),
        ("seedream_catalog_batch", catalog_conf),
        ("seedream_image_variants", {"size": "2K", "variants": variants}),
    ):
        run = rest.trigger(dag_id, conf)
        assert run["logical_date"] is None and run["run_type"] == "manual"
        run_ids[dag_id] = run["dag_run_id"]
    for dag_id in ("seedream_publish_banners", *run_ids):
        rest.unpause(dag_id)
    return ExampleRuns(tier, run_ids, label)
