"""What the mapped instances of a task returned, read by a task downstream in the same run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def mapped_results(ti: Any, task_id: str) -> tuple[set[int], Callable[[int], Any]]:
    """
    The map indexes of ``task_id`` that succeeded in ``ti``'s run, and a reader of their XCom.

    An instance that did not succeed pushed nothing: the reader answers ``None`` for it.

    :param ti: the running task instance (``context["ti"]``).
    """
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id]).get(ti.run_id, {})
    succeeded = {
        int(name.rpartition("_")[2])
        for name, state in states.items()
        if state == "success" and name.startswith(f"{task_id}_") and name.rpartition("_")[2].isdigit()
    }

    def records_of(map_index: int) -> Any:
        if map_index not in succeeded:
            return None
        return ti.xcom_pull(task_ids=task_id, map_indexes=map_index)

    return succeeded, records_of
