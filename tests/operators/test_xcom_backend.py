"""The operator under Airflow's object-storage XCom backend, for batches whose records are large.

The records go to object storage (here a local folder; ``s3://<conn>@<bucket>/<path>`` in
production, with the amazon provider's ``s3fs`` extra) and the metadata database keeps a path.
"""

from __future__ import annotations

import json

import pytest

from tests.dag_runs import airflow_dags_test

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_the_records_land_in_object_storage_and_read_back(seedream_emulator, s3_client, bucket, tmp_path, monkeypatch):
    store = tmp_path / "xcom"
    monkeypatch.setenv("AIRFLOW__CORE__XCOM_BACKEND", "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend")
    monkeypatch.setenv("AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH", f"file://{store}")
    monkeypatch.setenv("AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD", "0")
    prompts = [f"a tile for the object-storage backend {n}" for n in range(5)]
    done = airflow_dags_test("seedream_test_batch", prompts=prompts, bucket=bucket, prefix="ob")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    files = [path for path in store.rglob("*") if path.is_file()]
    stored = [json.loads(path.read_text()) for path in files]
    records = [value for value in stored if isinstance(value, list) and value and "s3_uri" in value[0]]
    assert len(records) == 1, f"the operator's records are one object in the backend's folder: {files}"
    [value] = records
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix="ob/")["Contents"]
    keys = sorted(item["Key"] for item in listing if "/_ledger/" not in item["Key"])
    assert sorted(record["key"] for record in value) == keys == [f"ob/{n:05d}-00.jpg" for n in range(5)]

    # The metadata database holds only the path of that object.
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        latest = session.scalar(
            select(XComModel.value)
            .where(XComModel.dag_id == "seedream_test_batch", XComModel.key == "return_value")
            .order_by(XComModel.timestamp.desc())
            .limit(1)
        )
    [records_file] = [path for path in files if json.loads(path.read_text()) == value]
    assert records_file.name in str(latest) and len(str(latest)) < 500, "no record list in the database"
