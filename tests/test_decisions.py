"""Decider: every reuse, recovery and ownership rule, on real ledger records in moto's S3 server.

Fast enough for ``make mutants``: no DAG run, no emulator. The batch runs these same rules when
it plans and when a claim conflicts (``tests/reliability`` shows them in whole batches).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace

import pytest

from airflow_provider_seedream.decisions import Action, Decider, Decision
from airflow_provider_seedream.ledger import Ledger, Owner
from airflow_provider_seedream.planning import PromptJob
from airflow_provider_seedream.storage import ImageStore

FP, OTHER_FP = "f" * 64, "e" * 64
LOG = "tests.decisions"


def job(fingerprint: str = FP, stem: str = "sku") -> PromptJob:
    return PromptJob(index=7, prompt="a kite", body={}, references=[], fingerprint=fingerprint, extension="jpg", stem=stem)


def owner(run: str = "run-1", task: str = "generate", try_number: int = 1) -> Owner:
    return Owner("dag", task, run, try_number=try_number)


@pytest.fixture
def ledgers(s3_client, bucket):
    """Ledgers of the prefix ``p`` by owner; ``me`` is the one deciding (run-2)."""
    made: dict[str, Ledger] = {}

    def ledger(name: str, who: Owner) -> Ledger:
        made[name] = Ledger(s3_client, bucket, "p", who)
        return made[name]

    ledger("me", owner("run-2"))
    yield ledger, made
    for one in made.values():
        one._stopped.set()


def decider(me: Ledger, *, replace: bool = False, resolve_unknown: str = "fail", retry: bool = False) -> Decider:
    store = ImageStore(me.client, me.bucket, "p")
    return Decider(me, store, replace=replace, resolve_unknown=resolve_unknown, retry_unknown=lambda: retry,
                   log=logging.getLogger(LOG))


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOG]


def record_of(ledger: Ledger, *steps: tuple[str, dict]):
    for status, changes in steps:
        ledger.write("sku", status, **changes)
    return ledger.cached("sku")


ALIVE = {"index": 0, "url": "https://x/a?X-Amz-Expires=86400", "expires_at": time.time() + 86400}
DEAD_LINK = {"index": 0, "url": "https://x/a", "expires_at": 1796346000.0}  # 2026-12-04 01:00:00 UTC
STORED = {"index": 0, "key": "p/sku-00.jpg", "sha256": "s", "bytes": 1}


def test_no_record_is_generated(ledgers):
    make, made = ledgers
    decision = decider(made["me"]).decide(job(), None)
    assert decision.action is Action.GENERATE and decision.record is None


def test_a_key_another_task_made_from_another_prompt_is_refused_unless_replaced(ledgers, bucket):
    make, made = ledgers
    theirs = record_of(make("them", owner(task="banner")), ("claimed", {"fingerprint": OTHER_FP}), ("stored", {}))
    decision = decider(made["me"]).decide(job(), theirs)
    assert decision.action is Action.CONFLICT and decision.record == theirs
    assert decision.message == (
        f"key 'sku' (s3://{bucket}/p/sku-00.jpg) belongs to task dag.banner (run 'run-1'), which made it from a "
        "different prompt or parameters; give this prompt another key, or set replace=True to take the key over"
    )
    assert decider(made["me"], replace=True).decide(job(), theirs) == Decision(Action.GENERATE, theirs)


def test_a_changed_prompt_of_the_same_task_or_of_no_owner_is_generated(ledgers, caplog):
    make, made = ledgers
    mine = record_of(make("earlier", owner()), ("claimed", {"fingerprint": OTHER_FP}), ("refused", {"reason": "r"}))
    with caplog.at_level(logging.INFO, logger=LOG):
        assert decider(made["me"]).decide(job(), mine) == Decision(Action.GENERATE, mine)
        orphan = replace(mine, owner={})
        assert decider(made["me"]).decide(job(), orphan) == Decision(Action.GENERATE, orphan)
    assert messages(caplog) == [], "nothing to say about a refused request of another prompt"


def test_a_changed_prompt_after_an_unknown_outcome_is_generated_with_a_warning(ledgers, caplog):
    make, made = ledgers
    mine = record_of(make("earlier", owner()), ("claimed", {"fingerprint": OTHER_FP}), ("unknown", {"reason": "cut"}))
    with caplog.at_level(logging.INFO, logger=LOG):
        assert decider(made["me"]).decide(job(), mine).action is Action.GENERATE
    assert messages(caplog) == [
        "Prompt 7: an earlier request for another prompt under key 'sku' had an unknown outcome (cut); "
        "the prompt changed, so it is generated"
    ]


@pytest.mark.parametrize("steps", [[("claimed", {"fingerprint": FP})],
                                   [("claimed", {"fingerprint": FP}), ("answered", {"images": (ALIVE,)})]])
def test_a_claim_whose_owner_is_alive_is_waited_for(ledgers, steps):
    make, made = ledgers
    live = make("live", owner("run-1"))
    live.start_heartbeat()
    record = record_of(live, *steps)
    assert decider(made["me"]).decide(job(), record) == Decision(Action.WAIT, record, f"claimed by {live.owner.describe()}")


def test_a_claim_whose_owner_ended_is_recorded_unknown_then_decided(ledgers, s3_client, bucket):
    make, made = ledgers
    dead = make("dead", owner("run-1"))
    claim = record_of(dead, ("claimed", {"fingerprint": FP}))
    me = made["me"]
    me.load("sku")
    decision = decider(me).decide(job(), claim)
    assert decision.action is Action.UNKNOWN
    assert decision.record.status == "unknown"
    assert decision.record.reason == f"left claimed by {dead.owner.describe()}, which ended before settling it"
    assert Ledger(s3_client, bucket, "p", owner("run-3")).load("sku").status == "unknown", "written to S3"


def test_a_dead_claim_of_a_changed_prompt_is_recorded_unknown_and_generated(ledgers, s3_client, bucket):
    make, made = ledgers
    dead = make("dead", owner("run-1"))
    claim = record_of(dead, ("claimed", {"fingerprint": OTHER_FP}))
    me = made["me"]
    me.load("sku")
    decision = decider(me).decide(job(), claim)
    assert decision.action is Action.GENERATE and decision.record.status == "unknown"
    assert Ledger(s3_client, bucket, "p", owner("run-3")).load("sku").status == "unknown"


def test_a_dead_claim_changed_meanwhile_is_decided_on_what_it_became(ledgers):
    make, made = ledgers
    dead = make("dead", owner("run-1"))
    claim = record_of(dead, ("claimed", {"fingerprint": FP}))
    me = made["me"]
    me.load("sku")
    dead.write("sku", "stored", images=(STORED,))  # its owner settled it after all
    decision = decider(me).decide(job(), claim)
    assert decision.action is Action.REUSE and decision.record.status == "stored"


def test_a_dead_answer_with_live_links_is_resumed(ledgers):
    make, made = ledgers
    answer = record_of(make("dead", owner("run-1")), ("claimed", {"fingerprint": FP}), ("answered", {"images": (ALIVE,)}))
    decision = decider(made["me"]).decide(job(), answer)
    assert decision.action is Action.RESUME and decision.record == answer


def test_a_dead_answer_of_a_changed_prompt_is_a_dead_claim(ledgers):
    make, made = ledgers
    answer = record_of(
        make("dead", owner("run-1")), ("claimed", {"fingerprint": OTHER_FP}), ("answered", {"images": (ALIVE,)})
    )
    me = made["me"]
    me.load("sku")
    decision = decider(me).decide(job(), answer)
    assert decision.action is Action.GENERATE and decision.record.status == "unknown"
    assert decision.record.reason.startswith("left answered by ")


def test_a_dead_answer_whose_links_expired_is_recorded_unknown_naming_when(ledgers):
    make, made = ledgers
    answer = record_of(
        make("dead", owner("run-1")), ("claimed", {"fingerprint": FP}),
        ("answered", {"images": (DEAD_LINK, {**DEAD_LINK, "index": 1, "expires_at": 1796340000.0})}),
    )
    me = made["me"]
    me.load("sku")
    decision = decider(me).decide(job(), answer)
    assert decision.action is Action.UNKNOWN and decision.record.status == "unknown"
    assert decision.record.reason == (
        "2 image(s) paid for were never stored and their links expired at 2026-12-04 01:00:00 UTC"
    )


def test_an_expiry_changed_meanwhile_is_decided_on_what_it_became(ledgers):
    make, made = ledgers
    dead = make("dead", owner("run-1"))
    answer = record_of(dead, ("claimed", {"fingerprint": FP}), ("answered", {"images": (DEAD_LINK,)}))
    me = made["me"]
    me.load("sku")
    dead.write("sku", "unknown", reason="settled elsewhere")
    decision = decider(me, resolve_unknown="accept").decide(job(), answer)
    assert decision.action is Action.ACCEPT and decision.record.reason == "settled elsewhere"


def test_a_stored_prompt_is_reused_unless_replaced_in_another_run(ledgers):
    make, made = ledgers
    stored = record_of(make("earlier", owner("run-1")), ("claimed", {"fingerprint": FP}), ("stored", {"images": (STORED,)}))
    assert decider(made["me"]).decide(job(), stored).action is Action.REUSE
    assert decider(made["me"], replace=True).decide(job(), stored) == Decision(Action.GENERATE, stored)
    this_run = replace(stored, owner=asdict(owner("run-2", try_number=1)))
    assert decider(made["me"], replace=True).decide(job(), this_run).action is Action.REUSE, "replaced once per run"
    orphan = replace(stored, owner={})
    assert decider(made["me"], replace=True).decide(job(), orphan).action is Action.GENERATE


def test_a_stored_image_deleted_from_s3_is_generated_again(ledgers, caplog):
    make, made = ledgers
    stored = record_of(make("earlier", owner("run-1")), ("claimed", {"fingerprint": FP}), ("stored", {"images": (STORED,)}))
    with caplog.at_level(logging.INFO, logger=LOG):
        assert decider(made["me"]).decide(job(), stored, {"p/sku-00.jpg"}).action is Action.REUSE
        assert messages(caplog) == []
        assert decider(made["me"]).decide(job(), stored, {"p/other-00.jpg"}) == Decision(Action.GENERATE, stored)
    assert messages(caplog) == ["Prompt 7: an image of key 'sku' was deleted from S3: it is generated again"]


@pytest.mark.parametrize(
    ("resolution", "retry", "images", "action", "said"),
    [
        ("fail", False, (), Action.UNKNOWN, []),
        ("fail", False, (ALIVE,), Action.RESUME, []),
        ("accept", False, (ALIVE,), Action.ACCEPT, []),
        ("retry", False, (ALIVE,), Action.GENERATE, ["Prompt 7: its earlier outcome was unknown (cut); it is sent again, as asked"]),
        ("fail", True, (), Action.GENERATE, ["Prompt 7: its earlier outcome was unknown (cut); it is sent again, as asked"]),
        ("accept", True, (), Action.GENERATE, ["Prompt 7: its earlier outcome was unknown (cut); it is sent again, as asked"]),
    ],
)
def test_an_unknown_outcome_is_resolved_as_asked(ledgers, caplog, resolution, retry, images, action, said):
    make, made = ledgers
    unknown = record_of(make("earlier", owner("run-1")), ("claimed", {"fingerprint": FP}),
                        ("unknown", {"reason": "cut", "images": images}))
    with caplog.at_level(logging.INFO, logger=LOG):
        decision = decider(made["me"], resolve_unknown=resolution, retry=retry).decide(job(), unknown)
    assert decision.action is action and decision.record == unknown
    assert messages(caplog) == said


@pytest.mark.parametrize(("status", "said"), [
    ("refused", []), ("released", []), ("lost", ["Prompt 7: accepted as lost in an earlier run; it is generated"]),
])
def test_a_settled_prompt_with_nothing_stored_is_generated(ledgers, caplog, status, said):
    make, made = ledgers
    steps = [("claimed", {"fingerprint": FP})]
    steps += [("unknown", {"reason": "r"}), ("lost", {})] if status == "lost" else [(status, {"reason": "r"})]
    record = record_of(make("earlier", owner("run-1")), *steps)
    with caplog.at_level(logging.INFO, logger=LOG):
        decision = decider(made["me"]).decide(job(), record)
    assert decision.action is Action.GENERATE and decision.record == record
    assert messages(caplog) == said


def test_a_dead_claim_naming_no_owner_says_so(ledgers):
    make, made = ledgers
    me = made["me"]
    orphan = replace(record_of(make("gone", owner("run-1")), ("claimed", {"fingerprint": FP})), owner={})
    me.load("sku")
    decision = decider(me).decide(job(), orphan)
    assert decision.record.reason == "left claimed by an unknown owner, which ended before settling it"


def test_a_dead_claim_s_reason_is_kept_within_300_characters(ledgers):
    make, made = ledgers
    me = made["me"]
    claim = record_of(make("long", owner("r" * 400)), ("claimed", {"fingerprint": FP}))
    me.load("sku")
    decision = decider(me).decide(job(), claim)
    assert len(decision.record.reason) == 300 and decision.record.reason.startswith("left claimed by dag.generate in run 'rrr")


@pytest.mark.parametrize(("images", "count"), [((), 0), (({"index": 0, "url": "https://x/a"},), 1)])
def test_an_answer_with_no_link_time_is_taken_as_expired_at_the_epoch(ledgers, images, count):
    make, made = ledgers
    answer = record_of(make("dead", owner("run-1")), ("claimed", {"fingerprint": FP}), ("answered", {"images": images}))
    me = made["me"]
    me.load("sku")
    decision = decider(me).decide(job(), answer)
    assert decision.record.reason == (
        f"{count} image(s) paid for were never stored and their links expired at 1970-01-01 00:00:00 UTC"
    )
