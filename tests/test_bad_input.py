"""Every invalid input fails before any request is sent, with an error naming the field."""

from __future__ import annotations

import pytest

from tests.dag_runs import airflow_dags_test
from tests.dags.bad_inputs import BAD_INPUTS

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_each_bad_input_fails_before_spending(seedream_emulator, bucket, tmp_path):
    big = tmp_path / "big.png"
    with big.open("wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(31 * 1024 * 1024)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")

    done = airflow_dags_test("seedream_test_bad_input", bucket=bucket, big_file=str(big), text_file=str(text))
    log = done.stdout + done.stderr

    assert done.returncode != 0
    missing = {task_id: message for task_id, (_, message) in BAD_INPUTS.items() if message not in log}
    assert not missing, f"errors not found in the task logs: {missing}"
    assert log.count("Task failed with exception") >= len(BAD_INPUTS)
    assert log.count("AirflowFailException") >= len(BAD_INPUTS) - 2, "bad input is not retried"
    stats = seedream_emulator.stats()
    assert stats["generation_requests"] == 0 and stats["images_generated"] == 0
    assert len(BAD_INPUTS) >= 25
