"""Run the test DAGs with dag.test() and read what their tasks returned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any


def dag_bag(dag_folder: str):
    """Airflow's ``DagBag`` over ``dag_folder`` (it moved to ``airflow.dag_processing`` in 3.2)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=dag_folder)


@lru_cache(maxsize=1)
def _dagbag():
    bag = dag_bag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag


def run_dag(dag_id: str, **conf: Any):
    """Run ``dag_id`` once with ``conf`` as its run configuration and return the DagRun."""
    dag = _dagbag().get_dag(dag_id)
    return dag.test(run_conf=conf)



def task_xcom(run, task_id: str, map_index: int = -1) -> Any:
    """The return value a task instance of ``run`` pushed, or ``None``."""
    ti = run.get_task_instance(task_id, map_index=map_index)
    return ti.xcom_pull(task_ids=task_id, map_indexes=map_index)


def rendered_fields(run, task_id: str, map_index: int = -1) -> dict[str, Any] | None:
    """The rendered-template view Airflow stored for a task instance."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    ti = run.get_task_instance(task_id, map_index=map_index)
    return RenderedTaskInstanceFields.get_templated_fields(ti)


def airflow_dags_test(dag_id: str, timeout: float = 300, **conf: Any) -> subprocess.CompletedProcess[str]:
    """Run ``airflow dags test`` in a new process; its output (stdout and stderr) is returned."""
    command = [str(Path(sys.executable).with_name("airflow")), "dags", "test", dag_id, "-c", json.dumps(conf)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy(), check=False
    )
