"""Never hang while paying, never pay twice, never past a budget.

The operator runs against the emulator over real HTTP and moto's S3 server. Most tests call
``execute`` with a small context (as Airflow's task runner does); the interruption tests use
Airflow's own execution-timeout machinery and a real ``airflow dags test`` process that is
sent SIGTERM.
"""

from __future__ import annotations

import http.server
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_seedream.version_compat import AirflowFailException
from airflow_provider_seedream.outcomes import BatchError
from airflow_provider_seedream.ledger import record_stem
from airflow_provider_seedream.operators.seedream import SeedreamToS3Operator
from tests.conftest import API_KEY, FIGURES
from tests.emulator.support import quiet_stats

pytestmark = pytest.mark.usefixtures("airflow_db")

FAST = {"retry_min_wait": 0.01, "retry_max_wait": 0.05, "max_retries": 3, "timeout": 60.0}
# How long after an interruption a request already on its way (past its last check) may still
# arrive at the emulator: the time to write one HTTP request, with room for a busy machine.
LATE_ARRIVAL = 0.5


def operator(bucket: str, prompts: Any, **kwargs: Any) -> SeedreamToS3Operator:
    arguments = {
        "task_id": "generate",
        "prompt": prompts,
        "s3_bucket": bucket,
        "s3_prefix": "p",
        "size": "2K",
        "max_concurrency": 4,
        "hook_params": dict(FAST),
    }
    arguments.update(kwargs)
    return SeedreamToS3Operator(**arguments)


def execute(op: SeedreamToS3Operator, run_id: str = "run-1", *, map_index: int = -1, try_number: int = 1) -> list[dict[str, Any]]:
    """Run ``execute`` as the task runner does, with the parts of the context the operator uses."""
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(
        map_index=map_index, try_number=try_number, xcom_push=lambda key, value, **_: pushed.__setitem__(key, value)
    )
    return op.execute({"ti": ti, "dag_run": SimpleNamespace(run_id=run_id)})


def objects(s3_client, bucket: str, prefix: str = "p/") -> dict[str, bytes]:
    found = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def images(s3_client, bucket: str, prefix: str = "p/") -> list[str]:
    return sorted(key for key in objects(s3_client, bucket, prefix) if "/_ledger/" not in key)


def ledger(s3_client, bucket: str, prefix: str = "p/") -> dict[str, dict[str, Any]]:
    """Every prompt's record in the spend ledger, by key stem."""
    found = {}
    for key, body in objects(s3_client, bucket, prefix + "_ledger/").items():
        stem = record_stem(key.rpartition("/_ledger/")[2])
        if stem is not None:
            found[stem] = json.loads(body)
    return found


def records(s3_client, bucket: str, prefix: str = "p/") -> dict[str, dict[str, Any]]:
    """The ledger's open records: claims, paid links to store, unknown outcomes."""
    open_states = ("claimed", "answered", "unknown")
    return {stem: record for stem, record in ledger(s3_client, bucket, prefix).items() if record["status"] in open_states}


def accounted(emulator, s3_client, bucket: str, prefix: str = "p/") -> tuple[int, int, int, int]:
    """Billed images, and where each went: stored, recorded with a link, or recorded as unknown."""
    stats = quiet_stats(emulator)
    pending = records(s3_client, bucket, prefix)
    linked = sum(
        1 for record in pending.values() for image in record.get("images") or [] if image.get("url") and not image.get("key")
    )
    unknown = sum(record["requested_images"] for record in pending.values() if record["status"] == "unknown")
    return stats["images_generated"], len(images(s3_client, bucket, prefix)), linked, unknown


# -- interruption --------------------------------------------------------------------------------


def test_execution_timeout_stops_sending_at_once_and_keeps_what_was_paid(seedream_emulator, s3_client, bucket):
    from airflow.sdk.execution_time.timeout import timeout

    from airflow_provider_seedream.version_compat import AirflowTaskTimeout

    seedream_emulator.configure(latency=0.5)
    op = operator(bucket, [f"a slow mosaic {n}" for n in range(200)])
    fired: dict[str, float] = {}

    def time_out_once_sending() -> None:
        # The timeout strikes once the batch is sending, however long its start took on this machine.
        deadline = time.monotonic() + 120
        while seedream_emulator.stats()["generation_requests"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        fired["at"] = time.time()
        os.kill(os.getpid(), signal.SIGALRM)  # the alarm the task runner's execution_timeout sets

    with pytest.raises(AirflowTaskTimeout):
        with timeout(300):  # what the task runner wraps execute in for execution_timeout
            threading.Thread(target=time_out_once_sending, daemon=True).start()
            execute(op)
    ended = time.time() - fired["at"]
    at_end = seedream_emulator.stats()["generation_requests"]
    billed, stored, linked, unknown = accounted(seedream_emulator, s3_client, bucket)
    sent = seedream_emulator.stats()["generation_requests"]

    assert ended < 3 + 5, "the task ends within seconds of its timeout (the whole batch takes 25 s)"
    assert 4 <= sent < 200 and sent == at_end, "no request is sent once the task has ended"
    last = seedream_emulator.stats()["last_generation_at"]
    assert last <= fired["at"] + LATE_ARRIVAL, f"nothing is sent after the timeout: the last request came {last - fired['at']:+.2f} s after it"
    assert billed == stored + linked + unknown, "every paid image is stored or recorded"
    assert unknown == 0, "requests in flight answered within the grace and were kept"
    FIGURES.append("execution timeout: " + json.dumps({"seconds": round(ended, 1), "sent": sent, "billed": billed, "stored": stored, "recorded": linked}))


def test_sigterm_to_a_real_task_process_stops_it_within_seconds(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(latency=0.5)
    prompts = [f"a mosaic stopped by SIGTERM {n}" for n in range(200)]
    command = [
        str(Path(sys.executable).with_name("airflow")), "dags", "test", "seedream_test_faults",
        "-c", json.dumps({"prompts": prompts, "bucket": bucket, "prefix": "p"}),
    ]
    task = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while seedream_emulator.stats()["images_generated"] < 16:
            assert task.poll() is None, "the task ended before it could be stopped"
            assert time.monotonic() < deadline, "the task made no progress"
            time.sleep(0.05)
        signalled_at = time.time()
        task.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output, _ = task.communicate(timeout=60)
        stopped_after = time.monotonic() - signalled
    finally:
        if task.poll() is None:
            task.kill()
    at_end = seedream_emulator.stats()["generation_requests"]
    billed, stored, linked, unknown = accounted(seedream_emulator, s3_client, bucket)

    assert "the task was killed (on_kill)" in output, output[-3000:]
    assert stopped_after < 15, "the task stops within seconds (the rest of the batch takes over 20 s)"
    assert seedream_emulator.stats()["generation_requests"] == at_end < len(prompts)
    last = seedream_emulator.stats()["last_generation_at"]
    assert last <= signalled_at + LATE_ARRIVAL, f"nothing is sent after the signal: the last request came {last - signalled_at:+.2f} s after it"
    assert billed == stored + linked + unknown, "every paid image is stored or recorded"
    FIGURES.append("SIGTERM: " + json.dumps({"seconds": round(stopped_after, 1), "sent": at_end, "billed": billed, "stored": stored, "recorded": linked}))


# -- outcomes that are unknown -------------------------------------------------------------------


def test_an_unknown_outcome_is_recorded_and_never_sent_again_unasked(seedream_emulator, s3_client, bucket):
    prompts = [f"a lantern {n}" for n in range(6)]
    seedream_emulator.configure(script=["ok", "502", "ok", "reset", "ok", "504"])
    with pytest.raises(AirflowFailException, match=r"3 outcome\(s\) unknown") as raised:
        execute(operator(bucket, prompts, max_concurrency=1))
    assert "prompt 1: outcome unknown, may have been billed" in str(raised.value)
    stats = quiet_stats(seedream_emulator)
    assert stats["generation_requests"] == 6, "no lost answer was sent again"
    assert stats["images_generated"] == 6 and stats["billed_unanswered"] == 3
    assert images(s3_client, bucket) == ["p/00000-00.jpg", "p/00002-00.jpg", "p/00004-00.jpg"]
    assert {stem: record["status"] for stem, record in records(s3_client, bucket).items()} == dict.fromkeys(
        ["00001", "00003", "00005"], "unknown"
    )

    # A rerun (or a task retry) does not send them either.
    with pytest.raises(AirflowFailException, match="an earlier request's outcome is unknown"):
        execute(operator(bucket, prompts, max_concurrency=1), run_id="run-2")
    assert quiet_stats(seedream_emulator)["generation_requests"] == 6

    # Asked to, it sends them again: they are paid for twice, by choice.
    hook_params = {**FAST, "retry_unknown_outcome": True}
    stored = execute(operator(bucket, prompts, max_concurrency=1, hook_params=hook_params), run_id="run-3")
    assert quiet_stats(seedream_emulator)["generation_requests"] == 9
    assert len(stored) == 6 and records(s3_client, bucket) == {}


def test_a_dropped_answer_keeps_the_images_that_did_arrive(seedream_emulator, s3_client, bucket):
    # A connection cut inside a group's answer: the first two items arrive whole, then nothing.
    seedream_emulator.configure(script=["reset"], cut_after=2)
    op = operator(
        bucket, ["a set of four tiles"], sequential_image_generation="auto",
        sequential_image_generation_options={"max_images": 4},
    )
    with pytest.raises(AirflowFailException, match="outcome unknown"):
        execute(op)
    [record] = records(s3_client, bucket).values()
    assert record["status"] == "unknown" and record["requested_images"] == 4
    assert [image["index"] for image in record["images"] if image.get("key")] == [0, 1], "the two that arrived are stored"
    assert quiet_stats(seedream_emulator)["generation_requests"] == 1
    arrived = {image["sha256"] for image in seedream_emulator.images() if image["answered"]}
    stored = {hashlib.sha256(body).hexdigest() for key, body in objects(s3_client, bucket).items() if "/_ledger/" not in key}
    assert len(arrived) == 2 and stored == arrived


# -- exact reuse, stable keys, replace once per run ----------------------------------------------


def test_a_format_switch_regenerates_once_and_stray_objects_change_nothing(seedream_emulator, s3_client, bucket):
    prompts = ["a teapot", "a kettle"]
    execute(operator(bucket, prompts, output_format="jpeg"))
    s3_client.put_object(Bucket=bucket, Key="p/00000-00.aaa", Body=b"not ours")
    s3_client.put_object(Bucket=bucket, Key="p/00001-07.jpg", Body=b"not ours either")
    seedream_emulator.reset()
    assert len(execute(operator(bucket, prompts, output_format="jpeg"))) == 2
    assert seedream_emulator.stats()["generation_requests"] == 0, "stray objects under the prefix force nothing"

    execute(operator(bucket, prompts, output_format="png"))
    assert seedream_emulator.stats()["generation_requests"] == 2, "the new format is generated once"
    for _ in range(2):
        records_ = execute(operator(bucket, prompts, output_format="png"))
        assert [record["key"] for record in records_] == ["p/00000-00.png", "p/00001-00.png"]
    assert seedream_emulator.stats()["generation_requests"] == 2, "then reruns cost nothing"


def test_keyed_prompts_land_at_their_key_wherever_they_sit(seedream_emulator, s3_client, bucket):
    first = [{"prompt": "a red chair", "key": "chairs/SKU-1"}, {"prompt": "a blue lamp", "key": "SKU-2"}]
    execute(operator(bucket, first))
    assert images(s3_client, bucket) == ["p/SKU-2-00.jpg", "p/chairs/SKU-1-00.jpg"]
    seedream_emulator.reset()
    moved = [{"prompt": "a green rug", "key": "SKU-3"}, "an unkeyed vase", *reversed(first)]
    stored = execute(operator(bucket, moved))
    assert seedream_emulator.stats()["generation_requests"] == 2, "only the new prompts are paid for"
    assert [(record["prompt"], record["key"], record["prompt_index"]) for record in stored] == [
        ("a green rug", "p/SKU-3-00.jpg", 0),
        ("an unkeyed vase", "p/00001-00.jpg", 1),
        ("a blue lamp", "p/SKU-2-00.jpg", 2),
        ("a red chair", "p/chairs/SKU-1-00.jpg", 3),
    ]


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([{"prompt": "a", "key": "../escape"}], r"prompt\[0\]\.key: must be relative to s3_prefix"),
        ([{"prompt": "a", "key": "/abs"}], r"prompt\[0\]\.key: must be relative to s3_prefix"),
        ([{"prompt": "a", "key": "a b"}], r"prompt\[0\]\.key: may hold only letters"),
        ([{"prompt": "a", "key": "_ledger/x"}], r"prompt\[0\]\.key: must not start with _ledger/"),
        ([{"prompt": "a", "key": 7}], r"prompt\[0\]\.key: must be a string"),
        ([{"prompt": "a", "key": "x"}, {"prompt": "b", "key": "x"}], r"prompt\[1\]\.key: 'x' is also the key of prompt\[0\]"),
        (["a", {"prompt": "b", "key": "00000"}], r"prompt\[1\]\.key: '00000' is also the key of prompt\[0\]"),
    ],
)
def test_bad_keys_are_refused_before_any_request(seedream_emulator, bucket, prompts, message):
    with pytest.raises(AirflowFailException, match=message):
        execute(operator(bucket, prompts))
    assert seedream_emulator.stats()["generation_requests"] == 0


def test_replace_replaces_once_per_dag_run_however_many_tries(seedream_emulator, s3_client, bucket):
    prompts = ["a pear", "a plum", "a fig"]
    execute(operator(bucket, prompts))
    seedream_emulator.reset()
    # The first try of a replacing run fails half-way (the service refuses the last prompt's requests).
    seedream_emulator.configure(script=["ok", "ok", "500", "500", "500", "500"])
    with pytest.raises(BatchError):
        execute(operator(bucket, prompts, replace=True, max_concurrency=1), run_id="replace-run")
    assert seedream_emulator.stats()["generation_requests"] == 6
    # Its retry replaces only what the first try did not.
    execute(operator(bucket, prompts, replace=True, max_concurrency=1), run_id="replace-run")
    assert seedream_emulator.stats()["generation_requests"] == 7
    execute(operator(bucket, prompts, replace=True, max_concurrency=1), run_id="replace-run")
    assert seedream_emulator.stats()["generation_requests"] == 7
    # The next run replaces everything again.
    execute(operator(bucket, prompts, replace=True), run_id="next-run")
    assert seedream_emulator.stats()["generation_requests"] == 10


# -- budget and plan -------------------------------------------------------------------------


def test_the_budget_stops_the_batch_and_stores_what_was_paid(seedream_emulator, s3_client, bucket, capfd):
    prompts = [f"a budget poster {n}" for n in range(10)]
    with pytest.raises(AirflowFailException) as raised:
        execute(operator(bucket, prompts, max_concurrency=3, max_billed_images=4))
    message = str(raised.value)
    assert "max_billed_images=4 reached" in message and "Prompts not sent: " in message
    stats = quiet_stats(seedream_emulator)
    assert stats["images_generated"] == 4, "exactly the budget is spent"
    assert len(images(s3_client, bucket)) == 4 and records(s3_client, bucket) == {}
    not_sent = message.split("Prompts not sent: ")[1].splitlines()[0].split(", ")
    assert len(not_sent) == 6
    output = capfd.readouterr()
    assert "Plan: 10 prompt(s): 0 already stored" in output.out + output.err
    assert "at most 10 image(s) may be paid for; budget 4 image(s) for this task in this run: 0 billed" in (
        output.out + output.err
    )


def test_a_group_reserves_its_max_images_against_the_budget(seedream_emulator, s3_client, bucket):
    group = {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3}}
    with pytest.raises(AirflowFailException, match="max_billed_images=5 reached"):
        execute(operator(bucket, ["a comic strip", "a storyboard"], max_billed_images=5, max_concurrency=2, **group))
    stats = quiet_stats(seedream_emulator)
    assert stats["generation_requests"] == 1 and stats["images_generated"] == 3


def test_group_mode_needs_an_explicit_max_images(seedream_emulator, bucket):
    with pytest.raises(AirflowFailException, match=r"sequential_image_generation_options\.max_images: is required"):
        execute(operator(bucket, ["a comic strip"], sequential_image_generation="auto"))
    assert seedream_emulator.stats()["generation_requests"] == 0


@pytest.mark.parametrize("budget", [0, -1, 2.5, True])
def test_a_budget_that_cannot_work_is_refused(seedream_emulator, bucket, budget):
    with pytest.raises(AirflowFailException, match="max_billed_images: must be a whole number of at least 1"):
        execute(operator(bucket, ["a kite"], max_billed_images=budget))
    assert seedream_emulator.stats()["generation_requests"] == 0


# -- errors that stop the batch, or only one prompt --------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "reason"),
    [
        ({"quota_exceeded": True}, "HTTP 429 QuotaExceeded"),
        ({"script": ["spending_cap"]}, "HTTP 429 SetLimitExceeded"),
        ({"api_key": "another-key"}, "HTTP 401 AuthenticationError"),
        ({"script": ["overdue"]}, "HTTP 403 AccountOverdueError"),
    ],
)
def test_an_account_error_stops_the_batch_before_the_other_prompts(seedream_emulator, bucket, knobs, reason):
    seedream_emulator.configure(**knobs)
    with pytest.raises(AirflowFailException) as raised:
        execute(operator(bucket, [f"a kite {n}" for n in range(8)], max_concurrency=1))
    assert f"The batch stopped: the service answered {reason}" in str(raised.value)
    assert "Prompts not sent: 1, 2, 3, 4, 5, 6, 7" in str(raised.value)
    assert quiet_stats(seedream_emulator)["generation_requests"] == 1


def test_a_missing_model_for_one_prompt_stops_only_the_prompts_of_that_model(seedream_emulator, s3_client, bucket):
    prompts = [
        "a kite",
        {"prompt": "a kite by another model", "model": "missing-model-1"},
        {"prompt": "another kite by that model", "model": "missing-model-1"},
        "a boat",
        "a plane",
    ]
    with pytest.raises(AirflowFailException) as raised:
        execute(operator(bucket, prompts, max_concurrency=1))
    assert "prompt 1: generation failed: InvalidEndpointOrModel.NotFound" in str(raised.value)
    assert "Prompts not sent: 2" in str(raised.value)
    assert images(s3_client, bucket) == ["p/00000-00.jpg", "p/00003-00.jpg", "p/00004-00.jpg"]
    assert quiet_stats(seedream_emulator)["generation_requests"] == 4


def test_an_answer_with_no_image_is_a_failure_not_a_success(bucket, monkeypatch):
    class Empty(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"created": 1, "model": "m", "data": [], "usage": {"generated_images": 0}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = {"conn_type": "seedream", "host": f"http://127.0.0.1:{server.server_address[1]}", "password": API_KEY}
        monkeypatch.setenv("AIRFLOW_CONN_SEEDREAM_EMPTY", json.dumps(conn))
        with pytest.raises(BatchError, match="EmptyAnswer: the endpoint answered 200 with no image"):
            execute(operator(bucket, ["a kite"], seedream_conn_id="seedream_empty"))
    finally:
        server.shutdown()


# -- b64_json, references, prompt text -----------------------------------------------------------


def test_b64_answers_are_stored_before_the_slot_is_freed(seedream_emulator, s3_client, bucket):
    stored = execute(operator(bucket, [f"a b64 tile {n}" for n in range(6)], response_format="b64_json"))
    served = {image["sha256"] for image in seedream_emulator.images()}
    assert {record["sha256"] for record in stored} == served and len(served) == 6
    assert records(s3_client, bucket) == {}
    # A decoded image has no link to come back to: it is never recorded as answered-but-not-stored.
    histories = {tuple(record["history"]) for record in ledger(s3_client, bucket).values()}
    assert histories == {("None->claimed", "claimed->stored")}, histories


def test_an_operator_level_reference_is_read_once_per_batch(seedream_emulator, s3_server, s3_client, bucket):
    import boto3

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3_client.put_object(Bucket=bucket, Key="ref/photo.jpg", Body=(Path(__file__).parents[2] / "data/photos/mug.jpg").read_bytes())
    calls: list[str] = []
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    for name in ("HeadObject", "GetObject"):
        client.meta.events.register(
            f"provide-client-params.s3.{name}",
            lambda params, model, **_: calls.append(model.name) if params.get("Key") == "ref/photo.jpg" else None,
        )
    op = operator(bucket, [f"the mug on a shelf {n}" for n in range(12)], image=f"s3://{bucket}/ref/photo.jpg")
    hook = S3Hook(aws_conn_id="aws_default")
    hook.__dict__["conn"] = client
    op.__dict__["s3_hook"] = hook
    assert len(execute(op)) == 12
    assert sorted(calls) == ["GetObject", "HeadObject"], "checked once and read once for 12 prompts"
    assert seedream_emulator.stats()["references"] == 12


def test_a_keyed_prompt_s_failure_names_its_key(seedream_emulator, bucket):
    prompts = [{"prompt": "a mug", "key": "sku-1"}, {"prompt": "a banned mug [refuse]", "key": "sku-2"}, "an unkeyed mug [refuse]"]
    with pytest.raises(AirflowFailException) as raised:
        execute(operator(bucket, prompts))
    message = str(raised.value)
    assert "prompt 1 (key 'sku-2'): generation failed: InputTextSensitiveContentDetected" in message
    assert "prompt 2: generation failed: InputTextSensitiveContentDetected" in message, "an unkeyed prompt has no key"


def test_connection_ids_are_templated(seedream_emulator, bucket):
    op = operator(bucket, ["a templated kite"], seedream_conn_id="{{ params.seedream }}", aws_conn_id="{{ params.aws }}")
    op.render_template_fields({"params": {"seedream": "seedream_default", "aws": "aws_default"}})
    assert (op.seedream_conn_id, op.aws_conn_id) == ("seedream_default", "aws_default")
    assert len(execute(op)) == 1


def test_prompt_text_ending_in_txt_is_text_not_a_template_file(bucket):
    op = operator(bucket, ["a poster titled notes.txt", "{{ params.word }} in a file called draft.j2"])
    op.render_template_fields({"params": {"word": "rain"}})
    assert op.prompt == ["a poster titled notes.txt", "rain in a file called draft.j2"]


# -- streamed groups -------------------------------------------------------------------------


STREAMED = {"stream": True, "sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 4}}


def test_a_streamed_group_is_stored_image_by_image_and_reused_whole(seedream_emulator, s3_client, bucket):
    stored = execute(operator(bucket, ["a streamed storyboard", "another storyboard"], **STREAMED))
    assert sorted(record["key"] for record in stored) == [f"p/{p:05d}-{i:02d}.jpg" for p in range(2) for i in range(4)]
    assert {record["sha256"] for record in stored} == {image["sha256"] for image in seedream_emulator.images()}
    assert records(s3_client, bucket) == {}
    seedream_emulator.reset()
    again = execute(operator(bucket, ["a streamed storyboard", "another storyboard"], **STREAMED))
    assert seedream_emulator.stats()["generation_requests"] == 0, "a sealed group is reused whole"
    assert all(record["reused"] for record in again) and len(again) == 8


def test_a_stopped_stream_keeps_the_images_it_delivered(seedream_emulator, s3_client, bucket):
    from airflow_provider_seedream.version_compat import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    # One image a second; what is made after the client leaves is not billed, so billing shows
    # when the stream was closed.
    seedream_emulator.configure(latency=1.0, bill_abandoned=False)
    group = {**STREAMED, "sequential_image_generation_options": {"max_images": 15}}
    with pytest.raises(AirflowTaskTimeout):
        with timeout(3):
            execute(operator(bucket, ["a fifteen-panel strip"], max_concurrency=1, **group))
    billed, stored, linked, unknown = accounted(seedream_emulator, s3_client, bucket)
    assert 1 <= stored <= 6, "the images delivered before the stop are stored"
    [record] = records(s3_client, bucket).values()
    assert record["status"] == "unknown" and record["requested_images"] == 15
    assert billed <= stored + unknown, "whatever the service went on to make is recorded as possibly billed"
    stats = quiet_stats(seedream_emulator)
    assert stats["abandoned"] == 1, "the stream was closed when the task stopped, not read to its end"
    assert billed <= stored + 1, f"the stream stopped at once: {billed} billed, {stored} stored (at most one more in the making)"
