"""The ledger's records, leases and budget against moto's S3 server, one process, no DAG run.

Fast enough to run under ``make mutants``: each promise of ``ledger.py`` has a check here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from airflow_provider_seedream.exceptions import StorageError
from airflow_provider_seedream.ledger import (
    Budget,
    BudgetExhausted,
    IllegalTransition,
    Ledger,
    LedgerConflict,
    Owner,
    Record,
    link_expiry,
)
from tests.s3_faults import refuse


def owner(run: str = "run-1", try_number: int = 1, map_index: int = -1, task: str = "generate") -> Owner:
    return Owner("dag", task, run, map_index=map_index, try_number=try_number)


def test_a_claim_is_created_once_and_changed_only_by_its_etag(s3_client, bucket):
    first, second = Ledger(s3_client, bucket, "p", owner()), Ledger(s3_client, bucket, "p", owner("run-2"))
    assert first.load("sku") is None and second.load("sku") is None
    first.write("sku", "claimed", fingerprint="f", requested_images=2)
    with pytest.raises(LedgerConflict):
        second.write("sku", "claimed", fingerprint="f")  # If-None-Match: * loses
    record = second.load("sku")
    assert record.status == "claimed" and record.requested_images == 2 and record.owned_by.run_id == "run-1"
    first.write("sku", "answered", images=({"index": 0, "url": "https://x/a"},))
    with pytest.raises(LedgerConflict):
        second.write("sku", "unknown", reason="stale")  # If-Match on the etag it read loses
    stored = json.loads(s3_client.get_object(Bucket=bucket, Key="p/_ledger/sku.json")["Body"].read())
    assert stored["status"] == "answered" and stored["history"] == ["None->claimed", "claimed->answered"]


@pytest.mark.parametrize(
    ("path", "bad"),
    [((), "stored"), ((), "answered"), (("claimed",), "claimed"), (("claimed", "answered"), "claimed"),
     (("claimed", "answered", "stored"), "unknown"), (("claimed", "refused"), "stored")],
)
def test_changes_outside_the_diagram_raise(s3_client, bucket, path, bad):
    ledger = Ledger(s3_client, bucket, "p", owner())
    for status in path:
        ledger.write("x", status, fingerprint="f")
    with pytest.raises(IllegalTransition):
        ledger.write("x", bad, fingerprint="f")


def test_the_scan_lists_records_apart_from_images_owners_and_budgets(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    ledger.write("a/b", "claimed", fingerprint="f")
    ledger.start_heartbeat()
    try:
        Budget.for_task(ledger, 5).reserve("a/b", 1)
        s3_client.put_object(Bucket=bucket, Key="p/a/b-00.jpg", Body=b"x")
        s3_client.put_object(Bucket=bucket, Key="other/c.json", Body=b"x")
        ledger.write_index(["a/b"])
        etag = s3_client.head_object(Bucket=bucket, Key="p/_ledger/a/b.json")["ETag"]
        assert ledger.scan() == ({"a/b": etag}, {"p/a/b-00.jpg"})
    finally:
        ledger.stop_heartbeat()


def test_the_index_holds_each_record_with_the_etag_it_was_written_with(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    ledger.write("a", "claimed", fingerprint="f")
    ledger.write("a", "answered", images=({"index": 0, "url": "https://x/y", "expires_at": 1.0},))
    ledger.write("kept", "claimed", fingerprint="g")
    ledger.keep_locally("kept", "answered", images=({"index": 0, "url": "https://x/z", "expires_at": 1.0},))
    assert ledger.write_index(["a", "kept", "never-written"]) == 1, "a record kept only on this machine is left out"
    index = Ledger(s3_client, bucket, "p", owner()).read_index()
    etag = s3_client.head_object(Bucket=bucket, Key="p/_ledger/a.json")["ETag"]
    assert set(index) == {"a"} and index["a"][0] == etag
    assert index["a"][1] == ledger.cached("a"), "the very record a read would give"
    # Another map index of the same task has its own index.
    assert Ledger(s3_client, bucket, "p", owner(map_index=3)).read_index() == {}


def test_an_unreadable_index_is_no_index(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    s3_client.put_object(Bucket=bucket, Key=ledger.index_key(), Body=b"not json")
    assert ledger.read_index() == {}


def test_a_claim_s_owner_is_alive_while_it_heartbeats(s3_client, bucket):
    mine = Ledger(s3_client, bucket, "p", owner(), lease_seconds=2)
    other = Ledger(s3_client, bucket, "p", owner("run-2"), lease_seconds=2)
    assert not mine.alive(other.owner), "no heartbeat: ended"
    assert not mine.alive(None)
    assert mine.alive(mine.owner)
    other.start_heartbeat()
    try:
        assert mine.alive(other.owner)
    finally:
        other._stopped.set()  # it dies without leaving: its heartbeat goes stale
    time.sleep(2.2)
    assert not mine.alive(other.owner), "silent for the lease: dead"
    other.stop_heartbeat()


def test_an_earlier_try_of_the_same_task_instance_is_over(s3_client, bucket):
    earlier = Ledger(s3_client, bucket, "p", owner(try_number=1))
    earlier.start_heartbeat()
    try:
        later = Ledger(s3_client, bucket, "p", owner(try_number=2))
        assert not later.alive(earlier.owner)
        assert Ledger(s3_client, bucket, "p", owner(map_index=3, try_number=2)).alive(earlier.owner)
        assert Ledger(s3_client, bucket, "p", owner("run-2", try_number=2)).alive(earlier.owner)
    finally:
        earlier.stop_heartbeat()


def test_the_budget_is_shared_by_tries_and_map_indexes(s3_client, bucket):
    tries = [Budget.for_task(Ledger(s3_client, bucket, "p", owner(map_index=n)), 3) for n in range(2)]
    tries[0].reserve("a", 2)
    with pytest.raises(BudgetExhausted, match="max_billed_images=3 reached .* 0 image\\(s\\) billed, 2 held"):
        tries[1].reserve("b", 2)
    tries[0].settle("a", 1)  # the answer billed 1 of the 2 held
    tries[1].reserve("b", 2)
    assert "1 billed, 2 held, 0 left" in tries[1].describe()
    tries[1].settle("b", None)  # unknown outcome: all of the hold counts
    tries[1].settle("b", 0)  # settled once
    assert "3 billed, 0 held, 0 left" in tries[0].describe()
    other_task = Budget.for_task(Ledger(s3_client, bucket, "p", owner(task="other")), 3)
    other_task.reserve("a", 3)  # another task's budget is its own


def test_a_record_knows_which_links_are_alive(s3_client):
    now = time.time()
    record = Record(
        stem="s", status="answered", fingerprint="f", owner={},
        images=(
            {"index": 0, "url": "https://x/0", "expires_at": now + 3600},
            {"index": 1, "url": "https://x/1", "expires_at": now + 60},  # inside the margin
            {"index": 2, "key": "p/s-02.jpg"},
        ),
    )
    assert [image["index"] for image in record.linked_images] == [0]
    assert [image["index"] for image in record.expired_images] == [1]
    assert [image["index"] for image in record.stored_images] == [2]
    assert Record.from_json(record.to_json()) == record


def test_a_link_s_expiry_is_read_from_the_link():
    assert link_expiry("https://x/a?X-Tos-Date=20261204T010000Z&X-Tos-Expires=3600&X-Tos-Signature=s") == 1796349600.0
    assert link_expiry("https://x/a?X-Amz-Date=20261204T010000Z&X-Amz-Expires=60") == 1796346060.0
    assert link_expiry("https://x/a?Expires=1796346000") == 1796346000.0
    assert link_expiry("https://x/a", now=100.0) == 100.0 + 24 * 3600


def test_a_record_is_written_whole(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    before = time.time()
    ledger.write("sku", "claimed", fingerprint="f" * 64, requested_images=3)
    ledger.write("sku", "answered", images=({"index": 0, "url": "https://x/a", "expires_at": 5.0},), model="m")
    record = Ledger(s3_client, bucket, "p", owner("run-2")).load("sku")
    assert (record.stem, record.fingerprint, record.requested_images, record.model) == ("sku", "f" * 64, 3, "m")
    assert record.images == ({"index": 0, "url": "https://x/a", "expires_at": 5.0},)
    assert before <= record.at <= time.time()
    assert record.owned_by == ledger.owner


def test_a_record_deleted_under_a_writer_is_a_conflict(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    ledger.write("sku", "claimed", fingerprint="f")
    s3_client.delete_object(Bucket=bucket, Key="p/_ledger/sku.json")
    with pytest.raises(LedgerConflict):
        ledger.write("sku", "answered")


def test_a_refused_write_is_not_written(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    ledger.bucket = "no-such-bucket-for-the-ledger"
    with pytest.raises(StorageError, match="was not written") as raised:
        ledger.write("sku", "claimed", fingerprint="f")
    assert not isinstance(raised.value, LedgerConflict) and raised.value.code == "NoSuchBucket"
    assert ledger.cached("sku") is None


def test_a_record_s3_refused_is_kept_on_this_machine(s3_client, bucket, tmp_path):
    ledger = Ledger(s3_client, bucket, "p", owner(), local_root=str(tmp_path))
    ledger.write("a/sku", "claimed", fingerprint="f")
    path = ledger.keep_locally("a/sku", "answered", images=({"index": 0, "url": "https://x/a"},))
    assert path == tmp_path / "seedream-ledger" / bucket / "p" / "a" / "sku.json"
    again = Ledger(s3_client, bucket, "p", owner(try_number=2), local_root=str(tmp_path))
    assert again.scan()[0] == {"a/sku": None}, "a stem kept on this machine is read by itself, never from an index"
    assert again.load("a/sku").status == "answered", "this machine's copy is the newer one"
    again.write("a/sku", "stored")  # S3 takes it again: the local copy goes
    assert not path.exists()


def test_the_heartbeat_is_renewed_until_the_owner_leaves(s3_client, bucket):
    live = Ledger(s3_client, bucket, "p", owner(), lease_seconds=1.2)
    watcher = Ledger(s3_client, bucket, "p", owner("run-2"), lease_seconds=1.2)
    live.start_heartbeat()
    time.sleep(2.0)
    assert watcher.alive(live.owner), "renewed every quarter of the lease"
    live.stop_heartbeat()
    assert not watcher.alive(live.owner)


def test_the_same_try_in_another_process_is_not_taken_as_over(s3_client, bucket):
    first = Ledger(s3_client, bucket, "p", owner(try_number=2))
    first.start_heartbeat()
    try:
        assert Ledger(s3_client, bucket, "p", owner(try_number=2)).alive(first.owner)
    finally:
        first.stop_heartbeat()


def test_budget_holds_from_concurrent_writers_all_count(s3_client, bucket):
    import threading

    budgets = [Budget.for_task(Ledger(s3_client, bucket, "p", owner(map_index=n)), 100) for n in range(4)]
    threads = [
        threading.Thread(target=lambda budget=budget: [budget.reserve(f"k{n}", 1) for n in range(5)]) for budget in budgets
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "0 billed, 20 held, 80 left" in budgets[0].describe(), "no hold is lost to a lost race"


def test_an_owner_is_read_back_whole():
    from dataclasses import asdict

    me = owner(map_index=4, try_number=3)
    assert Owner.from_dict(asdict(me)) == me
    assert Owner.from_dict({"dag_id": "d"}) is None and Owner.from_dict(None) is None
    assert me.describe() == f"dag.generate in run 'run-1' map index 4 (try 3, {me.host})"
    assert me.same_task(owner("other-run")) and not me.same_task(owner(task="other"))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("X-Amz-Expires=60", 160.0),  # no date: from now
        ("X-Tos-Expires=soon&X-Amz-Date=20261204T010000Z&X-Amz-Expires=60", 1796346060.0),
        ("Expires=later", 100.0 + 24 * 3600),
    ],
)
def test_a_link_s_expiry_in_other_forms(query, expected):
    assert link_expiry(f"https://x/a?{query}", now=100.0) == expected


# -- S3 refusing the ledger's calls: real clients, a fault injected into one operation ---------------


def test_every_refused_call_names_what_failed_and_keeps_s3_s_code(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    ledger.write("sku", "claimed", fingerprint="f")
    budget = Budget.for_task(ledger, 5)
    refuse(s3_client, "GetObject", "AccessDenied")
    refuse(s3_client, "PutObject", "SlowDown")
    calls = [
        (lambda: ledger.load("sku"), "the ledger record of 'sku' could not be read: ClientError (AccessDenied)"),
        (lambda: ledger.write("sku", "answered"), "the ledger record of 'sku' was not written: ClientError (SlowDown)"),
        (lambda: ledger.write_index(["sku"]), "the ledger index was not written: ClientError (SlowDown)"),
        (budget.describe, "the budget record could not be read: ClientError (AccessDenied)"),
    ]
    for call, message in calls:
        with pytest.raises(StorageError) as raised:
            call()
        assert str(raised.value) == message and raised.value.code == message.rsplit("(", 1)[1].rstrip(")")
        assert not isinstance(raised.value, LedgerConflict)


def test_a_budget_write_s3_refuses_is_an_error_not_a_conflict(s3_client, bucket):
    budget = Budget.for_task(Ledger(s3_client, bucket, "p", owner()), 5)
    refuse(s3_client, "PutObject", "AccessDenied")
    with pytest.raises(StorageError) as raised:
        budget.reserve("a", 1)
    assert str(raised.value) == "the budget record was not written: ClientError (AccessDenied)"
    assert raised.value.code == "AccessDenied"


def test_a_budget_that_keeps_changing_gives_up_after_50_writes_backing_off(s3_client, bucket, monkeypatch):
    import airflow_provider_seedream.ledger as ledger_module

    slept: list[float] = []
    monkeypatch.setattr(ledger_module.time, "sleep", slept.append)
    budget = Budget.for_task(Ledger(s3_client, bucket, "p", owner()), 5)
    refuse(s3_client, "PutObject", "PreconditionFailed")
    with pytest.raises(StorageError, match="^the budget record kept changing under this task: nothing more is sent$"):
        budget.reserve("a", 1)
    assert len(slept) == 50
    for attempt, seconds in enumerate(slept, start=1):
        assert 0.01 * attempt <= seconds <= 0.05 * attempt, (attempt, seconds)


def test_a_conflict_names_the_record_and_keeps_the_code(s3_client, bucket):
    first, second = Ledger(s3_client, bucket, "p", owner()), Ledger(s3_client, bucket, "p", owner("run-2"))
    first.write("sku", "claimed", fingerprint="f")
    with pytest.raises(LedgerConflict) as raised:
        second.write("sku", "claimed", fingerprint="f")
    assert str(raised.value) == "the ledger record of 'sku' was changed by another process"
    assert raised.value.code == "PreconditionFailed"


def test_a_missing_bucket_under_a_held_etag_is_an_error_not_a_conflict(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    ledger.write("sku", "claimed", fingerprint="f")
    refuse(s3_client, "PutObject", "NoSuchBucket")
    with pytest.raises(StorageError) as raised:
        ledger.write("sku", "answered")
    assert not isinstance(raised.value, LedgerConflict) and raised.value.code == "NoSuchBucket"


def ledger_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "airflow_provider_seedream.ledger"]


def test_an_index_s3_cannot_give_is_read_around_with_a_warning(s3_client, bucket, caplog):
    ledger = Ledger(s3_client, bucket, "p", owner())
    with caplog.at_level("WARNING", logger="airflow_provider_seedream.ledger"):
        assert ledger.read_index() == {}
    assert ledger_warnings(caplog) == [], "no index yet is no news"
    s3_client.put_object(Bucket=bucket, Key=ledger.index_key(), Body=b"not json")
    with caplog.at_level("WARNING", logger="airflow_provider_seedream.ledger"):
        assert ledger.read_index() == {}
    assert ledger_warnings(caplog) == [
        f"The ledger index {ledger.index_key()} could not be read (JSONDecodeError); records are read one by one"
    ]


def test_a_heartbeat_s3_will_not_renew_or_remove_is_logged(s3_client, bucket, caplog):
    ledger = Ledger(s3_client, bucket, "p", owner(), lease_seconds=0.2)
    ledger.start_heartbeat()
    refuse(s3_client, "PutObject", "SlowDown")
    refuse(s3_client, "DeleteObject", "SlowDown")
    with caplog.at_level("WARNING", logger="airflow_provider_seedream.ledger"):
        deadline = time.monotonic() + 10  # it renews every 0.05 s
        while "Could not renew the ledger heartbeat: ClientError" not in ledger_warnings(caplog):
            assert time.monotonic() < deadline, ledger_warnings(caplog)
            time.sleep(0.05)
        ledger.stop_heartbeat()
    assert "Could not remove the ledger heartbeat: ClientError" in ledger_warnings(caplog)


# -- where records, heartbeats and budgets live --------------------------------------------------


def test_keys_under_an_empty_prefix_or_one_with_slashes(s3_client, bucket):
    bare = Ledger(s3_client, bucket, "", owner())
    assert bare.record_key("a") == "_ledger/a.json" and bare.index_key() == "_ledger/_index/dag/generate/-1.json"
    assert bare.local_folder.name == "_root"
    slashed = Ledger(s3_client, bucket, "/Xp/q/", owner())
    assert slashed.record_key("a") == "Xp/q/_ledger/a.json", "only slashes are stripped"
    bare.write("a", "claimed", fingerprint="f")
    s3_client.put_object(Bucket=bucket, Key="a-00.jpg", Body=b"x")
    etag = s3_client.head_object(Bucket=bucket, Key="_ledger/a.json")["ETag"]
    assert bare.scan() == ({"a": etag}, {"a-00.jpg"})


def test_the_scan_of_an_empty_prefix_and_of_keys_listed_before_the_ledger(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    assert ledger.scan() == ({}, set())
    s3_client.put_object(Bucket=bucket, Key="p/A-00.jpg", Body=b"x")  # "A" lists before "_ledger"
    ledger.write("sku", "claimed", fingerprint="f")
    s3_client.put_object(Bucket=bucket, Key="p/z-00.jpg", Body=b"x")
    stems, keys = ledger.scan()
    assert set(stems) == {"sku"} and keys == {"p/A-00.jpg", "p/z-00.jpg"}


def test_records_kept_on_this_machine_go_under_airflow_home_else_tmp(s3_client, bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert Ledger(s3_client, bucket, "p", owner()).local_folder == tmp_path / "seedream-ledger" / bucket / "p"
    monkeypatch.delenv("AIRFLOW_HOME")
    assert Ledger(s3_client, bucket, "p", owner()).local_folder == Path("/tmp/seedream-ledger", bucket, "p")


def test_a_kept_record_is_the_change_itself_and_can_be_kept_again(s3_client, bucket, tmp_path):
    ledger = Ledger(s3_client, bucket, "p", owner(), local_root=str(tmp_path))
    ledger.write("a/long-stem-name", "claimed", fingerprint="f")
    claimed_at = ledger.cached("a/long-stem-name").at
    between = time.time()
    images = ({"index": 0, "url": "https://x/a", "expires_at": 9.0},)
    ledger.keep_locally("a/long-stem-name", "answered", images=images)
    kept = ledger.cached("a/long-stem-name")
    assert kept.status == "answered" and kept.images == images and kept.at >= between >= claimed_at
    ledger.keep_locally("a/long-stem-name", "stored")  # its folder exists by now
    assert Ledger(s3_client, bucket, "p", owner(), local_root=str(tmp_path)).scan()[0] == {"a/long-stem-name": None}


def test_a_record_deleted_from_s3_is_forgotten_on_load(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    ledger.write("sku", "claimed", fingerprint="f")
    s3_client.delete_object(Bucket=bucket, Key="p/_ledger/sku.json")
    assert ledger.load("sku") is None and ledger.cached("sku") is None
    ledger.write("sku", "claimed", fingerprint="f")  # created again: If-None-Match, no stale etag


def test_an_object_that_is_not_a_record_is_refused_on_load(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="p/_ledger/sku.json", Body=b"[1, 2]")
    with pytest.raises(StorageError, match="^the ledger record of 'sku' is not a ledger record: "):
        Ledger(s3_client, bucket, "p", owner()).load("sku")


def test_the_ledger_writes_json_objects(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    ledger.write("sku", "claimed", fingerprint="f")
    ledger.write_index(["sku"])
    ledger.start_heartbeat()
    ledger.stop_heartbeat()
    ledger._beat()
    Budget.for_task(ledger, 2).reserve("sku", 1)
    for key in ("p/_ledger/sku.json", ledger.index_key(), f"p/_ledger/_owners/{ledger.owner.token}.json",
                "p/_ledger/_budget/dag/generate/run-1.json"):
        assert s3_client.head_object(Bucket=bucket, Key=key)["ContentType"] == "application/json", key
    beat = json.loads(s3_client.get_object(Bucket=bucket, Key=f"p/_ledger/_owners/{ledger.owner.token}.json")["Body"].read())
    assert Owner.from_dict(beat["owner"]) == ledger.owner


def test_a_budget_s_key_quotes_each_part_of_the_run(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner("manual__2026/12/07 10:00+00:00"))
    budget = Budget.for_task(ledger, 2)
    assert budget.key == "p/_ledger/_budget/dag/generate/manual__2026%2F12%2F07%2010%3A00%2B00%3A00.json"


# -- the record's own fields -----------------------------------------------------------------------


def test_each_write_stamps_its_time_and_keeps_twenty_steps_of_history(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    claimed = ledger.write("sku", "claimed")
    assert claimed.fingerprint == "" and claimed.at > 0
    between = time.time()
    answered = ledger.write("sku", "answered")
    assert answered.at >= between >= claimed.at
    ledger.write("sku", "stored")
    again = ledger.write("sku", "claimed", fingerprint="g")
    assert again.at >= answered.at and again.history == (
        "None->claimed", "claimed->answered", "answered->stored", "stored->claimed"
    ), "a new claim keeps the record's history"
    for _ in range(12):
        ledger.write("sku", "stored")
        ledger.write("sku", "claimed")
    assert len(ledger.cached("sku").history) == 20 and ledger.cached("sku").history[-1] == "stored->claimed"
    for _ in range(12):
        ledger.write("sku", "unknown", reason="r")
    assert len(ledger.cached("sku").history) == 20


def test_a_refused_change_says_which_and_why(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    with pytest.raises(IllegalTransition, match="^ledger record 'x': None -> stored is not allowed$"):
        ledger.write("x", "stored")


def test_a_record_s_lock_is_its_own(s3_client, bucket):
    ledger = Ledger(s3_client, bucket, "p", owner())
    assert ledger.lock("a") is ledger.lock("a") and ledger.lock("a") is not ledger.lock("b")


def test_the_heartbeat_runs_on_a_daemon_thread_of_its_own(s3_client, bucket):
    import threading

    ledger = Ledger(s3_client, bucket, "p", owner(), lease_seconds=60)
    ledger.start_heartbeat()
    try:
        [thread] = [thread for thread in threading.enumerate() if thread.name == "seedream-ledger-heartbeat"]
        assert thread.daemon, "a heartbeat never keeps a task process alive"
    finally:
        ledger.stop_heartbeat()


def test_a_heartbeat_without_a_time_is_not_alive(s3_client, bucket):
    ledger, other = Ledger(s3_client, bucket, "p", owner()), owner("run-2")
    s3_client.put_object(Bucket=bucket, Key=f"p/_ledger/_owners/{other.token}.json", Body=b'{"owner": {}}')
    assert not ledger.alive(other)


def test_map_index_zero_is_named():
    assert " map index 0 " in owner(map_index=0).describe()


def test_a_record_adopted_from_the_index_is_the_cached_one_and_its_etag_the_condition(s3_client, bucket):
    writer = Ledger(s3_client, bucket, "p", owner())
    record = writer.write("sku", "claimed", fingerprint="f")
    etag = s3_client.head_object(Bucket=bucket, Key="p/_ledger/sku.json")["ETag"]
    reader = Ledger(s3_client, bucket, "p", owner(try_number=2))
    reader.adopt("sku", etag, record)
    assert reader.cached("sku") == record
    reader.write("sku", "released", reason="r")  # If-Match on the adopted etag: taken
    stale = Ledger(s3_client, bucket, "p", owner(try_number=3))
    stale.adopt("sku", etag, record)
    with pytest.raises(LedgerConflict):
        stale.write("sku", "released", reason="r")
