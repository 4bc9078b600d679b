"""The spend ledger keeps the money promise across boundaries: tasks, runs, tries, map indexes.

Real task processes (``task_process.py``) and in-process ``execute`` calls run against the
emulator with billing on and moto's S3 server. Each test fails on a provider whose bookkeeping
lives in one try's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_seedream.version_compat import AirflowFailException
from airflow_provider_seedream.ledger import TRANSITIONS, IllegalTransition, Ledger, Owner, link_expiry
from tests.conftest import FIGURES
from tests.emulator.support import quiet_stats
from tests.reliability.test_spend_safety import FAST, execute, images, ledger, objects, operator

pytestmark = pytest.mark.usefixtures("airflow_db")

TASK_PROCESS = Path(__file__).with_name("task_process.py")


def spawn(bucket: str, prompts: Any, run_id: str, **arguments: Any) -> subprocess.Popen[str]:
    spec = {
        "task_id": "generate", "prompt": prompts, "s3_bucket": bucket, "s3_prefix": "p", "size": "2K",
        "max_concurrency": 4, "hook_params": FAST, **arguments,
        "context": {"run_id": run_id, "map_index": arguments.pop("map_index", -1), "try_number": 1},
    }
    spec.pop("map_index", None)
    return subprocess.Popen(
        [sys.executable, str(TASK_PROCESS), json.dumps(spec)],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def outcome(process: subprocess.Popen[str]) -> dict[str, Any]:
    output, _ = process.communicate(timeout=180)
    return json.loads(output.strip().splitlines()[-1])


def test_overlapping_runs_over_the_same_keys_pay_once(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(latency=3.0)  # the first run takes 15 s: the second plans while it pays
    prompts = [{"prompt": f"a product shot {n}", "key": f"sku-{n}"} for n in range(10)]
    first = spawn(bucket, prompts, "scheduled__1", max_concurrency=2)
    deadline = time.monotonic() + 60
    while seedream_emulator.stats()["generation_requests"] < 1:  # the first run is paying
        assert time.monotonic() < deadline, "the first run sent nothing"
        time.sleep(0.05)
    second = spawn(bucket, prompts, "backfill__1")
    results = [outcome(first), outcome(second)]
    stats = quiet_stats(seedream_emulator)

    assert all(result.get("stored") == 10 for result in results), results
    assert stats["generation_requests"] == 10 and stats["images_generated"] == 10, "each prompt is paid for once"
    assert sum(result["generated"] for result in results) == 10, "what one run made, the other reused"
    assert len(images(s3_client, bucket)) == 10
    assert {record["status"] for record in ledger(s3_client, bucket).values()} == {"stored"}
    FIGURES.append("overlapping runs: " + json.dumps({"requests": stats["generation_requests"], "billed": stats["images_generated"],
                                                      "generated": [result["generated"] for result in results]}))


def test_a_key_belongs_to_the_task_that_made_it(seedream_emulator, s3_client, bucket):
    for run in range(3):
        execute(operator(bucket, [{"prompt": "a hero banner in red", "key": "hero"}], task_id="banner_a"), f"run-{run}")
        with pytest.raises(AirflowFailException, match=r"KeyOwnedByAnotherTask: key 'hero' .* belongs to task \S+banner_a"):
            execute(operator(bucket, [{"prompt": "a hero banner in blue", "key": "hero"}], task_id="banner_b"), f"run-{run}")
    assert quiet_stats(seedream_emulator)["images_generated"] == 1, "3 runs of two tasks sharing a key pay once"
    # replace=True takes the key over, once.
    execute(operator(bucket, [{"prompt": "a hero banner in blue", "key": "hero"}], task_id="banner_b", replace=True), "run-3")
    assert quiet_stats(seedream_emulator)["images_generated"] == 2


def test_the_budget_holds_across_tries_that_time_out(seedream_emulator, s3_client, bucket):
    from airflow_provider_seedream.version_compat import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    seedream_emulator.configure(latency=0.4)
    prompts = [f"a budget tile {n}" for n in range(40)]
    outcomes = []
    for attempt in range(4):
        try:
            with timeout(1):
                execute(operator(bucket, prompts, max_billed_images=10), "budget-run", try_number=attempt + 1)
            outcomes.append("success")
        except AirflowTaskTimeout:
            outcomes.append("timeout")
        except AirflowFailException as error:
            outcomes.append("failed: budget" if "max_billed_images" in str(error) else f"failed: {error}")
    billed = quiet_stats(seedream_emulator)["images_generated"]
    assert billed <= 10, f"4 tries share one budget of 10: {billed} billed ({outcomes})"
    assert outcomes[-1] == "failed: budget", outcomes
    FIGURES.append("budget across tries: " + json.dumps({"billed": billed, "tries": outcomes}))


def test_the_budget_holds_across_map_indexes(seedream_emulator, s3_client, bucket):
    for map_index in range(4):
        prompts = [f"a mapped tile {map_index}-{n}" for n in range(3)]
        try:
            execute(operator(bucket, prompts, max_billed_images=3), "mapped-run", map_index=map_index)
        except AirflowFailException as error:
            assert "max_billed_images=3 reached for this task in this DAG run" in str(error)
    assert quiet_stats(seedream_emulator)["images_generated"] == 3, "4 map indexes share the task's budget of 3"


def test_a_stream_ending_in_an_error_counts_every_image_it_delivered(seedream_emulator, s3_client, bucket):
    # Each group of 3 delivers 2 images, then the service sends an error event instead of usage.
    seedream_emulator.configure(script=["stream_error"] * 6, cut_after=2)
    group = {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3}, "stream": True}
    prompts = [f"a streamed set {n}" for n in range(6)]
    with pytest.raises(AirflowFailException, match="max_billed_images=6 reached") as failed:
        execute(operator(bucket, prompts, max_billed_images=6, max_concurrency=1, **group))
    stats = quiet_stats(seedream_emulator)

    assert stats["images_generated"] == 4, "2 groups of 2 billed; a third group could bill 3 more than the 2 left"
    assert stats["generation_requests"] == 2
    assert len(images(s3_client, bucket)) == 4, "every image delivered before the error is stored"
    budget = next(json.loads(body) for key, body in objects(s3_client, bucket).items() if "/_budget/" in key)
    assert budget["billed"] == 4 and not budget["holds"], "the budget counts the delivered images, not the usage never sent"
    message = str(failed.value)
    assert "4 image(s) billed by this try" in message and "InternalServiceError" in message
    recorded = ledger(s3_client, bucket)
    for stem in ("00000", "00001"):  # whether the third image was made, the service did not say
        assert recorded[stem]["status"] == "unknown"
        assert recorded[stem]["reason"] == "the stream failed after 2 image(s): InternalServiceError"
        assert [image["index"] for image in recorded[stem]["images"] if "key" in image] == [0, 1]
    assert recorded["00002"]["status"] == "released", "refused by the budget before it was sent"


def test_a_link_that_expired_is_reported_and_never_paid_again_unasked(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(url_ttl=60, download_script=["500"] * 8)  # links die within the plan's margin
    with pytest.raises(Exception):
        execute(operator(bucket, ["a lighthouse at dusk"]))
    [record] = ledger(s3_client, bucket).values()
    assert record["status"] == "answered"
    assert record["images"][0]["expires_at"] == pytest.approx(time.time() + 60, abs=15), "the link's own expiry"

    with pytest.raises(AirflowFailException, match=r"links expired at"):
        execute(operator(bucket, ["a lighthouse at dusk"]), "run-2")
    assert quiet_stats(seedream_emulator)["generation_requests"] == 1, "not paid again"
    # Accepted as lost for one run: that run succeeds, and says so; a later run makes it again.
    assert execute(operator(bucket, ["a lighthouse at dusk"], resolve_unknown="accept"), "run-3") == []
    [record] = ledger(s3_client, bucket).values()
    assert record["status"] == "lost"
    seedream_emulator.configure(download_script=[])
    assert len(execute(operator(bucket, ["a lighthouse at dusk"]), "run-4")) == 1
    assert quiet_stats(seedream_emulator)["generation_requests"] == 2


def test_a_claim_held_by_a_live_process_is_waited_for_then_reused(seedream_emulator, s3_client, bucket):
    seedream_emulator.configure(latency=2.0)
    process = spawn(bucket, [{"prompt": "a slow portrait", "key": "slow"}], "run-a")
    deadline = time.monotonic() + 30
    while seedream_emulator.stats()["generation_requests"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [stored] = execute(operator(bucket, [{"prompt": "a slow portrait", "key": "slow"}]), "run-b")
    assert stored["reused"], "the waiting run reuses what the live one stored"
    assert outcome(process)["generated"] == 1
    assert quiet_stats(seedream_emulator)["generation_requests"] == 1


def test_transitions_outside_the_diagram_raise(s3_client, bucket):
    ledger_ = Ledger(s3_client, bucket, "t", Owner("d", "t", "r"))
    with pytest.raises(IllegalTransition, match="None -> stored"):
        ledger_.write("x", "stored")
    ledger_.write("x", "claimed", fingerprint="f")
    with pytest.raises(IllegalTransition, match="claimed -> claimed"):
        ledger_.write("x", "claimed", fingerprint="f")
    assert "lost" in TRANSITIONS["unknown"] and "stored" not in TRANSITIONS["unknown"]


def test_a_link_s_expiry_is_read_from_the_link():
    url = "https://x.example/a.jpeg?X-Tos-Date=20261204T010000Z&X-Tos-Expires=3600&X-Tos-Signature=s"
    assert link_expiry(url) == 1796349600.0  # 2026-12-04 02:00:00 UTC
    assert link_expiry("https://x.example/a.jpeg?X-Amz-Date=20261204T010000Z&X-Amz-Expires=60") == 1796346060.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompt_index_offset": -3}, r"prompt_index_offset: must be a whole number of at least 0, got -3"),
        ({"prompt_index_offset": "ten"}, r"prompt_index_offset: must be a whole number"),
        ({"replace": "maybe"}, r"replace: must be true or false, got 'maybe'"),
        ({"adaptive_concurrency": "sometimes"}, r"adaptive_concurrency: must be true or false, got 'sometimes'"),
        ({"hook_params": {"retry_unknown_outcome": "sometimes"}}, r"retry_unknown_outcome: must be true or false"),
        ({"hook_params": {"timeout": "soon"}}, r"timeout: must be a number above 0"),
        ({"hook_params": {"retries": 3}}, r"hook_params: unknown \['retries'\]"),
        ({"resolve_unknown": "ignore"}, r"resolve_unknown: must be one of fail, retry, accept"),
        ({"prompt": "['a cat', 'a dog']"}, r"prompt\[0\]: is the text of a list"),
    ],
)
def test_bad_text_is_refused_before_any_request(seedream_emulator, bucket, arguments, message):
    prompts = arguments.pop("prompt", ["a kite"])
    with pytest.raises(AirflowFailException, match=message):
        execute(operator(bucket, prompts, **arguments))
    assert seedream_emulator.stats()["generation_requests"] == 0


def test_flags_and_numbers_given_as_text_are_read_as_such(seedream_emulator, s3_client, bucket):
    execute(operator(bucket, ["a kite"]))
    hook_params = {"retry_unknown_outcome": "false", "max_retries": "3", "timeout": "60"}
    again = execute(operator(bucket, ["a kite"], replace="false", hook_params=hook_params, max_concurrency="2"))
    assert again[0]["reused"], "replace='false' is false: nothing is paid again"
    assert quiet_stats(seedream_emulator)["generation_requests"] == 1
    seedream_emulator.configure(script=["504"])
    with pytest.raises(AirflowFailException, match="outcome unknown"):
        execute(operator(bucket, ["a boat"], hook_params=hook_params))
    assert quiet_stats(seedream_emulator)["generation_requests"] == 2, "retry_unknown_outcome='false': a 504 is not re-sent"
    [record] = execute(operator(bucket, ["a plane"], prompt_index_offset="10"))
    assert record["key"] == "p/00010-00.jpg"
