"""The API key, signed-URL signatures and whole data URIs stay out of logs, XCom and the rendered view."""

from __future__ import annotations

import base64
import io
import json
import uuid

import pytest
from PIL import Image

from tests.conftest import API_KEY
from tests.dag_runs import airflow_dags_test, rendered_fields, run_dag, task_xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

SECRET_MARKS = ("X-Tos-Signature", "X-Tos-Credential", "X-Amz-Signature", "X-Amz-Credential", "base64,", API_KEY)


def assert_clean(text: str, where: str) -> None:
    found = [mark for mark in SECRET_MARKS if mark in text]
    assert not found, f"{where} holds {found}"


def test_the_key_is_registered_with_airflows_secrets_masker(seedream_emulator):
    from airflow.sdk import Connection
    from airflow.sdk.log import redact

    from airflow_provider_seedream.hooks.seedream import SeedreamHook

    assert SeedreamHook().settings["api_key"] == API_KEY
    assert redact(f"Authorization: Bearer {API_KEY}") == "Authorization: Bearer ***"

    # Airflow masks the password of every connection it fetches, so the key above proves nothing
    # about the hook. A connection built in code reaches the hook without Airflow seeing it: only
    # the hook's own masking can hide its key.
    key = f"sk-built-in-code-{uuid.uuid4().hex}"
    built = Connection(conn_id="seedream_built", conn_type="seedream", host=seedream_emulator.url, password=key)

    class BuiltConnectionHook(SeedreamHook):
        def get_connection(self, conn_id: str) -> Connection:
            assert conn_id == "seedream_built"
            return built

    assert redact(f"Bearer {key}") == f"Bearer {key}", "nothing has masked the new key yet"
    hook = BuiltConnectionHook(seedream_conn_id="seedream_built")
    assert hook.settings["api_key"] == key
    assert redact(f"Authorization: Bearer {key}") == "Authorization: Bearer ***"
    ok, message = hook.test_connection()
    assert ok, message
    assert key not in message


def test_xcom_and_rendered_view_hold_no_secret(seedream_emulator, s3_client, bucket, tmp_path):
    photo = io.BytesIO()
    Image.new("RGB", (40, 40), "navy").save(photo, format="JPEG")
    s3_client.put_object(Bucket=bucket, Key="src/shoe.jpg", Body=photo.getvalue())
    local = tmp_path / "bag.jpg"
    local.write_bytes(photo.getvalue())
    prompts = [
        {"prompt": "the shoe on a beach", "image": f"s3://{bucket}/src/shoe.jpg"},
        {"prompt": "the bag in snow", "image": str(local)},
        "a plain poster",
    ]
    run = run_dag("seedream_test_batch", prompts=prompts, bucket=bucket, extra={"response_format": "b64_json"})
    assert run.state == "success"
    assert seedream_emulator.stats()["references"] == 2

    records = task_xcom(run, "generate")
    assert len(records) == 3
    assert_clean(json.dumps(records), "XCom")
    rendered = rendered_fields(run, "generate")
    assert rendered and "the shoe on a beach" in json.dumps(rendered, default=str)
    assert_clean(json.dumps(rendered, default=str), "the rendered-template view")


@pytest.mark.parametrize("dag_id", ["seedream_test_batch", "seedream_test_presigned"])
def test_task_log_holds_no_key_signature_or_data_uri(seedream_emulator, s3_client, bucket, dag_id):
    photo = io.BytesIO()
    Image.new("RGB", (40, 40), "olive").save(photo, format="PNG")
    s3_client.put_object(Bucket=bucket, Key="src/lamp.png", Body=photo.getvalue())
    seedream_emulator.configure(download_script=["truncate", "500"], script=["500"], retry_after=0)
    done = airflow_dags_test(
        dag_id, prompts=["the lamp at dusk", "the lamp [refuse]"], bucket=bucket, image=f"s3://{bucket}/src/lamp.png"
    )
    log = done.stdout + done.stderr
    assert done.returncode != 0 and "InputTextSensitiveContentDetected" in log
    assert "Seedream download failed" in log, "the log shows the download's link, redacted"
    assert seedream_emulator.stats()["references"] >= 1
    assert_clean(log, "the task log")
    assert base64.b64encode(photo.getvalue()).decode()[:40] not in log
