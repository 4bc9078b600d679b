"""One try of a SeedreamToS3Operator task in a process of its own, as a worker runs it.

Run as ``python task_process.py '<json>'`` with the operator's arguments and the try's
``run_id``, ``map_index``, ``try_number`` and, optionally, ``execution_timeout`` (seconds, enforced
as the task runner does); prints one JSON line: what it stored, or its error.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace


def main() -> None:
    spec = json.loads(sys.argv[1])
    from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator

    context = spec.pop("context")
    operator = SeedreamToS3Operator(**spec)
    ti = SimpleNamespace(
        map_index=context.get("map_index", -1), try_number=context.get("try_number", 1), xcom_push=lambda *a, **k: None
    )
    from contextlib import nullcontext

    from airflow.sdk.execution_time.timeout import timeout

    limit = context.get("execution_timeout")
    try:
        with timeout(limit) if limit else nullcontext():
            records = operator.execute({"ti": ti, "dag_run": SimpleNamespace(run_id=context["run_id"])})
    except BaseException as error:  # noqa: BLE001 - reported to the test, which asserts on it
        print(json.dumps({"error": type(error).__name__, "message": str(error)[:4000]}), flush=True)
        sys.exit(1)
    generated = sum(1 for record in records if not record["reused"])
    print(json.dumps({"stored": len(records), "generated": generated, "keys": [r["key"] for r in records]}), flush=True)


if __name__ == "__main__":
    main()
