"""Every invalid input fails before any request is sent, with an error naming the field, never retried.

``airflow dags test`` runs the DAG's tasks one after another and prints each between a
``[DAG TEST] starting task_id=...`` and a ``[DAG TEST] end task task_id=...`` line, so each task's
own log and exception are read from its own stretch of the output, and its state and try number
from the metadata database: a task failing for another reason cannot hide behind its neighbours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from airflow_provider_seedream.version_compat import AirflowFailException
from tests.dag_runs import airflow_dags_test
from tests.dags.bad_inputs import BAD_INPUTS, RETRIES

pytestmark = pytest.mark.usefixtures("airflow_db")

DAG_ID = "seedream_test_bad_input"
# The exception that fails a task without retry, by the dotted name its traceback prints.
FAIL_FOR_GOOD = f"{AirflowFailException.__module__}.{AirflowFailException.__qualname__}"
_STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_ENDING = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_RUN_ID = re.compile(r"<TaskInstance: " + re.escape(DAG_ID) + r"\.\S+ (\S+) \[")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): ")


@dataclass
class TaskAttempt:
    """One run of one task, as ``airflow dags test`` printed it."""

    task_id: str
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def failure(self) -> tuple[str, str] | None:
        """The type and message of the exception the task failed with, or ``None``."""
        starts = [index for index, line in enumerate(self.lines) if "Task failed with exception" in line]
        if len(starts) != 1:
            return None
        traceback: list[str] = []
        for line in self.lines[starts[0] + 1 :]:
            if _LOG_LINE.match(line):
                break
            traceback.append(line)
        # A chained traceback ends with the exception the task raised.
        headers = [index for index, line in enumerate(traceback) if _EXCEPTION_LINE.match(line)]
        if not headers:
            return None
        first, *rest = traceback[headers[-1] :]
        match = _EXCEPTION_LINE.match(first)
        assert match is not None
        return match.group(1), "\n".join([first[match.end() :], *rest])


def task_attempts(output: str) -> dict[str, list[TaskAttempt]]:
    """Split the output of ``airflow dags test`` into each task's attempts, in order."""
    attempts: dict[str, list[TaskAttempt]] = {}
    current: TaskAttempt | None = None
    for line in output.splitlines():
        if started := _STARTING.search(line):
            current = TaskAttempt(started.group(1), [])
            attempts.setdefault(current.task_id, []).append(current)
        if current is not None:
            current.lines.append(line)
            ended = _ENDING.search(line)
            if ended and ended.group(1) == current.task_id:
                current = None
    return attempts


def task_records(run_id: str) -> tuple[str, dict[str, tuple[str, int]], int]:
    """The run's state, each task's state and try number, and how many earlier tries were kept."""
    from airflow.models import DagRun, TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=DAG_ID, run_id=run_id).one()
        tasks = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=run_id).all()
        earlier_tries = session.query(TaskInstanceHistory).filter_by(dag_id=DAG_ID, run_id=run_id).count()
        return run.state, {ti.task_id: (ti.state, ti.try_number) for ti in tasks}, earlier_tries


def test_each_bad_input_fails_before_spending(seedream_emulator, bucket, tmp_path):
    big = tmp_path / "big.png"
    with big.open("wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(31 * 1024 * 1024)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")

    done = airflow_dags_test(DAG_ID, bucket=bucket, big_file=str(big), text_file=str(text))
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert len(BAD_INPUTS) >= 25 and RETRIES > 0

    attempts = task_attempts(output)
    assert set(attempts) == set(BAD_INPUTS), "every task ran, and no other"
    retried = {task_id: len(runs) for task_id, runs in attempts.items() if len(runs) != 1}
    assert not retried, f"bad input was retried: {retried}"

    wrong: dict[str, object] = {}
    for task_id, (_, message) in BAD_INPUTS.items():
        [attempt] = attempts[task_id]
        failure = attempt.failure()
        if failure is None:
            wrong[task_id] = "no single 'Task failed with exception' with a traceback in its log"
        elif failure[0] != FAIL_FOR_GOOD or message not in failure[1]:
            wrong[task_id] = {"expected": message, "got": failure}
    assert not wrong, f"tasks that did not fail for good with their own error: {wrong}"

    [run_id] = {found.group(1) for found in _RUN_ID.finditer(output)}
    run_state, tasks, earlier_tries = task_records(run_id)
    assert run_state == "failed"
    assert tasks == {task_id: ("failed", 1) for task_id in BAD_INPUTS}, "each failed at its first try"
    assert earlier_tries == 0, "no try was kept in the task history: none was retried"

    stats = seedream_emulator.stats()
    assert stats["generation_requests"] == 0 and stats["images_generated"] == 0
