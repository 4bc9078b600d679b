"""Interrupted tasks in a real deployment: past their execution timeout, and marked failed through the REST API.

Each test runs a 60-prompt batch (4 requests in flight, 1.5 s per generation, about 23 s in
all) against an emulator of its own and interrupts it after a few seconds. What must hold:

- the operator gives up within seconds of the interruption (its failure is logged), and the
  task process exits (watched in ``/proc``: Airflow's supervisor may notice the exit seconds
  later) before Airflow would escalate its SIGTERM to SIGKILL;
- no generation request starts after the interruption, and none at all once the task ended;
- every image the emulator billed is either stored under the prefix or listed in an
  ``answered`` pending record (links a retry stores from), except at most
  ``max_concurrency`` requests recorded as ``unknown``: answers that never arrived.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIGURES
from tests.deployment.airflow_deployment import wait_for
from tests.deployment.conftest import INTERRUPTION_DAGS, Tier

PROMPTS = 60
MAX_CONCURRENCY = 4
LATENCY = 1.5
EXECUTION_TIMEOUT = 8.0
#: Seconds from the interruption to the operator's failure, and to the exit of the task process.
#: Airflow sends SIGKILL 5 s after its SIGTERM; the operator's grace for requests in flight is 3 s.
ENDS_WITHIN = 5.0
#: Seconds a request already past its last check at the interruption may take to reach the emulator.
TRANSIT = 0.5
RUN_TIMEOUT = 180


def log_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def find_entry(entries: list[dict[str, Any]], text: str) -> dict[str, Any] | None:
    return next((entry for entry in entries if text in str(entry.get("event", ""))), None)


@dataclass
class Outcome:
    """What the interrupted batch left behind, counted from S3 and the emulator."""

    stored: list[str]
    answered: list[dict[str, Any]]
    unknown: list[dict[str, Any]]
    stats: dict[str, Any]
    images: list[dict[str, Any]]

    @property
    def answered_images(self) -> int:
        return sum(
            1 for record in self.answered for image in record.get("images") or [] if image.get("url") and not image.get("key")
        )

    @property
    def unknown_images(self) -> int:
        return sum(int(record.get("requested_images") or 1) for record in self.unknown)

    def describe(self) -> str:
        return (
            f"emulator: {self.stats['generation_requests']} requests, {self.stats['images_generated']} images billed "
            f"({self.stats.get('billed_unanswered', '?')} unanswered); S3: {len(self.stored)} stored, "
            f"{len(self.answered)} answered records ({self.answered_images} images), "
            f"{len(self.unknown)} unknown records ({self.unknown_images} images)"
        )


def outcome(tier: Tier, prefix: str) -> Outcome:
    stored = tier.keys(f"{prefix}/")
    answered, unknown = [], []
    for record in tier.ledger(prefix):
        if record["status"] in ("answered", "unknown", "claimed"):
            (answered if record["status"] == "answered" else unknown).append(record)
    return Outcome(stored, answered, unknown, tier.interrupt_emulator.stats(), tier.interrupt_emulator.images())


@pytest.fixture
def interruption(deployment: Tier):
    """The interruption emulator, reset, answering after LATENCY seconds; the interruption DAGs unpaused."""
    emulator = deployment.interrupt_emulator
    emulator.reset()
    emulator.configure(latency=LATENCY)
    for dag_id in INTERRUPTION_DAGS:
        deployment.rest.unpause(dag_id)
    yield deployment
    emulator.configure(latency=0.0)


def running_pid(tier: Tier, dag_id: str, run_id: str) -> int:
    """The process id of the running task (on this machine: LocalExecutor)."""

    def pid() -> int | None:
        ti = tier.rest.task_instance(dag_id, run_id, "generate")
        return ti["pid"] if ti["state"] == "running" and ti.get("pid") else None

    return wait_for(pid, RUN_TIMEOUT, "the task is running", interval=0.2, explain=lambda: tier.explain(dag_id, run_id))


def exited(pid: int) -> bool:
    """The process is gone, or a zombie its supervisor has not reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def exit_time(tier: Tier, pid: int, dag_id: str, run_id: str) -> float:
    """The wall-clock time the task process exited, watched from now on."""
    return wait_for(
        lambda: time.time() if exited(pid) else None,
        RUN_TIMEOUT,
        f"the task process {pid} exits",
        interval=0.05,
        explain=lambda: tier.explain(dag_id, run_id),
    )


def assert_stopped_and_accounted(tier: Tier, prefix: str, interrupted_at: float, explanation: str) -> Outcome:
    """No request after the interruption, none after the end, and every billed image stored or recorded."""
    result = outcome(tier, prefix)
    # The emulator stamps each request when it arrives: none may come after the interruption.
    late = result.stats["last_generation_at"] - interrupted_at
    assert late <= TRANSIT, f"a request arrived {late:.2f} s after the interruption; {result.describe()}\n{explanation}"
    assert result.stats["generation_requests"] < PROMPTS, "the batch was not interrupted"
    # The task has ended: nothing more reaches the emulator while it handles two more latencies.
    deadline = time.monotonic() + 2 * LATENCY
    while time.monotonic() < deadline:
        assert tier.interrupt_emulator.stats()["generation_requests"] == result.stats["generation_requests"]
        time.sleep(0.25)

    unexplained = result.stats["images_generated"] - len(result.stored) - result.answered_images
    assert len(result.unknown) <= MAX_CONCURRENCY, result.describe()
    assert 0 <= unexplained <= result.unknown_images, f"paid images neither stored nor recorded: {result.describe()}"
    if "billed_unanswered" in result.stats:
        assert unexplained <= result.stats["billed_unanswered"], result.describe()
    for record in result.answered:
        assert all(image.get("url") or image.get("key") for image in record["images"]), record
    return result


def test_execution_timeout_ends_the_task_within_seconds(interruption: Tier):
    tier = interruption
    dag_id, prefix = "seedream_interrupt_timeout", "timeout"
    run_id = tier.rest.trigger(dag_id, {"prefix": prefix})["dag_run_id"]
    pid = running_pid(tier, dag_id, run_id)
    exited_at = exit_time(tier, pid, dag_id, run_id)
    run = tier.rest.wait_for_run(dag_id, run_id, RUN_TIMEOUT, explain=lambda: tier.explain(dag_id, run_id))
    explanation = tier.explain(dag_id, run_id)
    assert run["state"] == "failed", explanation
    ti = tier.rest.task_instance(dag_id, run_id, "generate")
    assert ti["state"] == "failed" and ti["try_number"] == 1, explanation

    entries = tier.rest.task_log_entries(dag_id, run_id, "generate", 1)
    timed_out = find_entry(entries, "Process timed out")
    failed = find_entry(entries, "Task failed with exception")
    assert timed_out is not None and failed is not None, explanation
    interrupted_at = log_time(timed_out["timestamp"])
    stopped = log_time(failed["timestamp"]) - interrupted_at
    ended = exited_at - interrupted_at
    assert stopped <= ENDS_WITHIN, f"the operator stopped {stopped:.1f} s after the timeout\n{explanation}"
    assert ended <= ENDS_WITHIN, f"the task process exited {ended:.1f} s after the timeout\n{explanation}"

    result = assert_stopped_and_accounted(tier, prefix, interrupted_at, explanation)
    FIGURES.append(
        f"deployment tier: execution timeout: operator stopped {stopped:.1f} s after it, process exited after "
        f"{ended:.1f} s; {result.describe()}"
    )


def test_marking_a_running_task_failed_ends_it_within_seconds(interruption: Tier):
    tier = interruption
    dag_id, prefix = "seedream_interrupt_mark_failed", "mark-failed"
    run_id = tier.rest.trigger(dag_id, {"prefix": prefix})["dag_run_id"]
    pid = running_pid(tier, dag_id, run_id)
    wait_for(
        lambda: tier.interrupt_emulator.stats()["generation_requests"] >= 2 * MAX_CONCURRENCY,
        RUN_TIMEOUT,
        "the batch is under way",
        interval=0.25,
        explain=lambda: tier.explain(dag_id, run_id),
    )
    tier.rest.set_task_state(dag_id, run_id, "generate", "failed")
    exited_at = exit_time(tier, pid, dag_id, run_id)

    def killed() -> list[dict[str, Any]] | None:
        entries = tier.rest.task_log_entries(dag_id, run_id, "generate", 1)
        return entries if find_entry(entries, "Task killed!") else None

    entries = wait_for(killed, 60, "the supervisor reports the task killed", explain=lambda: tier.explain(dag_id, run_id))
    explanation = tier.explain(dag_id, run_id)
    terminating = find_entry(entries, "Terminating process")
    failed = find_entry(entries, "Task failed with exception")
    assert terminating is not None and failed is not None, explanation
    interrupted_at = log_time(terminating["timestamp"])
    stopped = log_time(failed["timestamp"]) - interrupted_at
    ended = exited_at - interrupted_at
    assert stopped <= ENDS_WITHIN, f"the operator stopped {stopped:.1f} s after SIGTERM\n{explanation}"
    assert ended < ENDS_WITHIN, f"the task process exited {ended:.1f} s after SIGTERM\n{explanation}"
    assert tier.rest.dag_run(dag_id, run_id)["state"] in ("failed", "running")

    result = assert_stopped_and_accounted(tier, prefix, interrupted_at, explanation)
    FIGURES.append(
        f"deployment tier: marked failed: operator stopped {stopped:.1f} s after SIGTERM, process exited after "
        f"{ended:.1f} s; {result.describe()}"
    )
