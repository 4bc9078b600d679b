"""The asset event a generation task attaches to its outlets: its counts, and its lists capped at 1,000."""

from __future__ import annotations

import pytest

from airflow_provider_seedream.outcomes import BatchReport, Failure
from airflow_provider_seedream.operators.seedream import ASSET_EXTRA_LIMIT, SeedreamToS3Operator


def event_extra(stored: int, reused: int, failed: int) -> dict:
    """The extra of the event a task that stored, reused and failed so many prompts attaches."""
    from airflow.sdk import Asset
    from airflow.sdk.execution_time.context import OutletEventAccessors

    asset = Asset("s3://assets/banners")
    operator = SeedreamToS3Operator(task_id="t", prompt="x", s3_bucket="assets", s3_prefix="banners", outlets=[asset])
    report = BatchReport(total_prompts=stored + reused + failed)
    for index in range(stored):
        report.add_stored({"key": f"banners/new-{index}.jpeg", "prompt": f"new {index}"})
    report.add_reused([{"key": f"banners/old-{index}.jpeg", "prompt": f"old {index}"} for index in range(reused)])
    for index in range(failed):
        report.add_failure(Failure.not_sent(stored + reused + index, "the budget ran out"))
    events = OutletEventAccessors()
    operator._record_asset_events({"outlet_events": events}, report, "banners")
    return dict(events[asset].extra)


def test_the_event_counts_what_was_generated_reused_and_failed():
    extra = event_extra(stored=3, reused=2, failed=1)
    assert (extra["count"], extra["generated"], extra["reused"], extra["failed"]) == (5, 3, 2, 1)
    assert extra["keys"] == [f"banners/new-{i}.jpeg" for i in range(3)] + [f"banners/old-{i}.jpeg" for i in range(2)]
    assert extra["prompts"] == ["new 0", "new 1", "new 2", "old 0", "old 1"]
    assert (extra["bucket"], extra["prefix"], extra["truncated"]) == ("assets", "banners", False)


@pytest.mark.parametrize(("images", "truncated"), [(ASSET_EXTRA_LIMIT, False), (ASSET_EXTRA_LIMIT + 1, True)])
def test_the_event_lists_at_most_1000_keys_and_says_when_it_left_some_out(images, truncated):
    extra = event_extra(stored=0, reused=images, failed=0)
    assert ASSET_EXTRA_LIMIT == 1000
    assert extra["count"] == images and extra["truncated"] is truncated
    assert len(extra["keys"]) == len(extra["prompts"]) == min(images, ASSET_EXTRA_LIMIT)
    assert extra["keys"][-1] == f"banners/old-{min(images, ASSET_EXTRA_LIMIT) - 1}.jpeg"
    assert extra["prompts"][-1] == f"old {min(images, ASSET_EXTRA_LIMIT) - 1}"
