"""Failure and BatchReport: what a batch says it stored, reused, billed and lost, and whether a retry may help."""

from __future__ import annotations

import threading

from airflow_provider_seedream.outcomes import BatchError, BatchInterrupted, BatchReport, Failure


def image(prompt: int, index: int = 0) -> dict:
    return {"prompt_index": prompt, "image_index": index, "key": f"p/{prompt:05d}-{index:02d}.jpg"}


def test_each_kind_of_failure_says_whether_it_was_paid_and_may_be_retried():
    refused = Failure.refused(3, "InputTextSensitiveContentDetected", "refused", retryable=False, image=1)
    assert (refused.prompt_index, refused.image_index, refused.stage, refused.code, refused.message) == (
        3, 1, "generation", "InputTextSensitiveContentDetected", "refused"
    )
    assert (refused.paid, refused.retryable, refused.unknown) == (False, False, False)
    assert Failure.refused(3, "ServerOverloaded", "busy").retryable and Failure.refused(3, "c", "m").image_index is None
    unknown = Failure.unknown_outcome(4, "cut")
    assert (unknown.image_index, unknown.stage, unknown.code, unknown.message) == (None, "generation", "OutcomeUnknown", "cut")
    assert (unknown.paid, unknown.retryable, unknown.unknown) == (False, False, True)
    not_sent = Failure.not_sent(5, "the budget ran out")
    assert (not_sent.image_index, not_sent.stage, not_sent.code, not_sent.message) == (
        None, "generation", "NotSent", "the budget ran out"
    )
    assert (not_sent.paid, not_sent.retryable, not_sent.unknown) == (False, False, False)
    lost = Failure.lost_image(6, 2, "download", "Expired", "gone", retryable=False)
    assert (lost.prompt_index, lost.image_index, lost.stage, lost.code, lost.message) == (6, 2, "download", "Expired", "gone")
    assert (lost.paid, lost.retryable, lost.unknown) == (True, False, False)
    assert Failure.lost_image(6, 2, "upload", "SlowDown", "m", retryable=True).retryable


def test_a_failure_describes_itself_by_prompt_key_and_image():
    assert Failure.refused(3, "Bad", "no").describe() == "prompt 3: generation failed: Bad: no"
    keyed = Failure(3, 0, "download", "Expired", "gone", paid=True, key="sku-9")
    assert keyed.describe() == "prompt 3 (key 'sku-9') image 0: download failed: Expired: gone (paid for, NOT stored)"
    assert Failure.unknown_outcome(4, "cut").describe() == (
        "prompt 4: outcome unknown, may have been billed (not sent again): cut"
    )


def test_the_report_counts_what_every_thread_adds():
    report = BatchReport(total_prompts=4)

    def work(n: int) -> None:
        for _ in range(250):
            report.add_stored(image(n))
            report.add_billed(1, 10)
            report.prompt_done()
        report.add_reused([image(n, 1), image(n, 2)])
        report.add_failure(Failure.refused(n, "c", "m"))
        report.add_accepted_lost(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (report.generated, report.reused, report.billed_images, report.output_tokens, report.prompts_done) == (
        1000, 8, 1000, 10000, 1000
    )
    assert len(report.records) == 1008 and len(report.failures) == 4 and sorted(report.accepted_lost) == [0, 1, 2, 3]


def test_closing_puts_records_and_failures_in_prompt_order():
    report = BatchReport(total_prompts=3)
    for record in (image(2, 1), image(0, 0), image(2, 0), image(1, 0)):
        report.add_stored(record)
    for failure in (Failure.refused(2, "c", "m", image=1), Failure.refused(1, "c", "m"), Failure.refused(2, "c", "m")):
        report.add_failure(failure)
    report.close("the key was refused", False, "budget 5")
    assert [(r["prompt_index"], r["image_index"]) for r in report.records] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert [(f.prompt_index, f.image_index) for f in report.failures] == [(1, None), (2, None), (2, 1)]
    assert (report.stop_reason, report.stop_retryable, report.budget) == ("the key was refused", False, "budget 5")
    report.close(None, True, None)
    assert report.budget == "budget 5", "a later close keeps the budget it had"


def test_a_retry_may_help_only_after_a_transient_failure_and_no_final_stop():
    report = BatchReport(total_prompts=2)
    assert not report.retryable, "nothing failed"
    report.add_failure(Failure.refused(0, "Bad", "no", retryable=False))
    assert not report.retryable
    report.add_failure(Failure.refused(1, "ServerOverloaded", "busy"))
    assert report.retryable
    report.close("the budget ran out", True, None)
    assert report.retryable, "a stop a retry may get past"
    report.close("the key was refused", False, None)
    assert not report.retryable, "a stop no retry gets past"


def test_unknown_outcomes_and_prompts_not_sent_are_counted_apart():
    report = BatchReport(total_prompts=5)
    for failure in (Failure.not_sent(4, "r"), Failure.unknown_outcome(1, "cut"), Failure.not_sent(3, "r"),
                    Failure.refused(0, "Bad", "no")):
        report.add_failure(failure)
    assert report.unknown_outcomes == 1 and report.not_sent == [3, 4]


def test_the_summary_says_what_was_kept_lost_and_left():
    report = BatchReport(total_prompts=60)
    report.add_stored(image(0))
    report.add_reused([image(1), image(1, 1)])
    report.add_billed(3, 0)
    report.add_failure(Failure.unknown_outcome(2, "cut"))
    report.add_failure(Failure.refused(3, "Bad", "no"))
    for index in range(4, 60):
        report.add_failure(Failure.not_sent(index, "the budget ran out"))
    report.add_accepted_lost(9)
    report.close("max_billed_images=3 reached", False, "budget 3 image(s)")
    lines = report.summary().split("\n")
    assert lines[0] == (
        "58 failure(s) in a batch of 60 prompt(s); 1 image(s) generated and stored, 2 reused, 1 outcome(s) unknown, "
        "56 prompt(s) not sent; 3 image(s) billed by this try (budget 3 image(s)). Images already stored are kept: a "
        "retry generates only what is missing."
    )
    assert lines[1] == "The batch stopped: max_billed_images=3 reached."
    assert lines[2] == "Unknown outcomes accepted as lost (resolve_unknown='accept'): prompts [9]"
    assert lines[3] == "Prompts not sent: " + ", ".join(str(n) for n in range(4, 54)) + " ..."
    assert lines[4:] == [
        "  - prompt 2: outcome unknown, may have been billed (not sent again): cut",
        "  - prompt 3: generation failed: Bad: no",
    ]


def test_a_summary_lists_fifty_failures_and_counts_the_rest():
    report = BatchReport(total_prompts=53)
    for index in range(53):
        report.add_failure(Failure.refused(index, "Bad", "no"))
    lines = report.summary().split("\n")
    assert lines[0].startswith("53 failure(s) in a batch of 53 prompt(s); 0 image(s) generated and stored, 0 reused, ")
    assert "billed by this try. Images" in lines[0], "no budget: none named"
    assert len(lines) == 1 + 50 + 1 and lines[-1] == "  ... and 3 more" and lines[50] == "  - prompt 49: generation failed: Bad: no"
    few = BatchReport(total_prompts=3)
    few.add_failure(Failure.not_sent(0, "r"))
    assert few.summary().split("\n")[1:] == ["Prompts not sent: 0"]


def test_the_batch_errors_carry_the_report_and_say_its_summary():
    report = BatchReport(total_prompts=1)
    report.add_failure(Failure.refused(0, "Bad", "no"))
    for error in (BatchError(report), BatchInterrupted(report)):
        assert error.report is report and str(error) == report.summary()


def test_the_summary_s_lists_stop_at_fifty_exactly():
    def summary(lost: int, not_sent: int, failed: int) -> list[str]:
        report = BatchReport(total_prompts=lost + not_sent + failed)
        for index in range(lost):
            report.add_accepted_lost(index)
        for index in range(not_sent):
            report.add_failure(Failure.not_sent(index, "r"))
        for index in range(failed):
            report.add_failure(Failure.refused(index, "Bad", "no"))
        return report.summary().split("\n")

    assert summary(51, 0, 0)[1] == f"Unknown outcomes accepted as lost (resolve_unknown='accept'): prompts {list(range(50))}"
    assert summary(0, 50, 0)[1] == "Prompts not sent: " + ", ".join(map(str, range(50)))
    assert summary(0, 51, 0)[1].endswith(", 49 ...")
    assert len(summary(0, 0, 50)) == 51 and summary(0, 0, 51)[-1] == "  ... and 1 more"
