"""Another try of a task instance under the scheduler: what a real Airflow retry may send again.

``seedream_replace_retry`` replaces three stored images (``replace=True``) and has one retry.
Its first try is refused half-way, the scheduler runs the second try after the retry delay,
and that try must replace only what the first did not: ``replace`` holds once per DAG run,
however many tries it takes.
"""

from __future__ import annotations

import uuid

from tests.deployment.conftest import Tier

DAG_ID = "seedream_replace_retry"
PROMPTS = 3
RUN_TIMEOUT = 180
# The DAG's hook does not retry: the last prompt's 500 fails the first try.
REFUSED_TRY = ["ok", "ok", "500"]


def run(tier: Tier, prefix: str) -> tuple[str, dict]:
    run_id = tier.rest.trigger(DAG_ID, {"prefix": prefix})["dag_run_id"]
    finished = tier.rest.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT, explain=lambda: tier.explain(DAG_ID, run_id))
    assert finished["state"] == "success", tier.explain(DAG_ID, run_id)
    return run_id, tier.rest.task_instance(DAG_ID, run_id, "generate")


def test_replace_replaces_once_per_dag_run_across_a_scheduler_retry(deployment: Tier):
    tier, emulator = deployment, deployment.interrupt_emulator
    emulator.reset()
    tier.rest.unpause(DAG_ID)
    prefix = f"replace-retry-{uuid.uuid4().hex[:8]}"

    first_run, ti = run(tier, prefix)
    assert ti["try_number"] == 1 and emulator.stats()["generation_requests"] == PROMPTS
    images = tier.keys(prefix)
    assert len(images) == PROMPTS, images

    emulator.reset()
    emulator.configure(script=REFUSED_TRY)
    second_run, ti = run(tier, prefix)
    assert ti["try_number"] == 2, "the first try failed and the scheduler ran the retry"
    # Try 1: two replaced, the third refused; try 2: the third alone.
    assert emulator.stats()["generation_requests"] == len(REFUSED_TRY) + 1
    assert emulator.stats()["images_generated"] == PROMPTS
    records = tier.ledger(prefix)
    assert sorted(record["status"] for record in records) == ["stored"] * PROMPTS
    claims = sorted((record["owner"]["run_id"], record["owner"]["try_number"]) for record in records)
    assert claims == [(second_run, 1), (second_run, 1), (second_run, 2)], claims
    assert tier.keys(prefix) == images, "the same keys, replaced in place"
