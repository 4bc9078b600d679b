"""A batch of prompts: one work queue, explicit states, every paid image stored or recorded.

Every prompt moves through the states of :class:`State` in this process::

    QUEUED -> SENDING -> ANSWERED -> STORED
                  |          '-----> FAILED   (paid for; its links are kept for a retry)
                  |---------------> FAILED   (refused: nothing was paid)
                  '---------------> UNKNOWN  (the answer was lost: it may have been billed)
    QUEUED -> NOT_SENT  (the batch stopped: interrupted, budget spent, key refused...)

and, durably, through the spend ledger's records (:mod:`ledger`), which are the truth every
try, map index and overlapping run reads: a prompt is claimed in the ledger (a conditional
write) before its request is sent, its answer's links are recorded before the request's slot
is freed, and it is sealed as stored only when every image its answer holds is stored.
A prompt another live process has claimed is not sent: the batch waits for it and reuses
what it stored.

``max_concurrency`` generation threads take prompts from one queue, under an adaptive
in-flight limit that backs off on rate limits (:mod:`concurrency`); as many transfer threads
download and upload the answered images. A streamed group hands each image to the transfer
threads as it arrives, its link recorded first.

When the task is interrupted (execution timeout, SIGTERM through ``on_kill``, any exception
in the main thread) nothing more is sent: queued prompts become NOT_SENT at once, requests
in flight get ``grace_seconds`` to answer and be recorded, and those still waiting after
that are recorded as UNKNOWN. The threads are daemons: a request stuck in a read never
keeps the task's process alive.
"""

from __future__ import annotations

import contextlib
import enum
import queue
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from dataclasses import replace as changed
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_seedream import ledger as states
from airflow_provider_seedream.concurrency import SendPacer
from airflow_provider_seedream.decisions import Action, Decider, Decision
from airflow_provider_seedream.exceptions import (
    NON_RETRYABLE_429_CODES,
    SeedreamAPIError,
    SeedreamError,
    SeedreamSendCancelled,
    SeedreamUnknownOutcomeError,
    StorageError,
)
from airflow_provider_seedream.ledger import BudgetExhausted, LedgerConflict, Record, link_expiry
from airflow_provider_seedream.outcomes import BatchInterrupted, BatchReport, Failure
from airflow_provider_seedream.planning import PromptJob
from airflow_provider_seedream.references import Reference, Transport, resolve
from airflow_provider_seedream.results import GeneratedImage, GenerationResult
from airflow_provider_seedream.storage import StoredObject, client_error_code
from airflow_provider_seedream.validation import requested_image_count

if TYPE_CHECKING:
    from airflow_provider_seedream.hooks.seedream import SeedreamHook
    from airflow_provider_seedream.ledger import Budget, Ledger
    from airflow_provider_seedream.storage import ImageStore

# Answers after which no other request of the batch can succeed.
ACCOUNT_STATUSES = frozenset({401, 403})
PROGRESS_SECONDS = 10.0
# Below the 5 s Airflow's supervisor waits between SIGTERM and SIGKILL.
GRACE_SECONDS = 3.0
_WAIT_SLICE = 0.5  # the main thread wakes this often, so signals and timeouts get through
# A presigned reference link is made again when half of its life is gone.
_REFERENCE_REUSE_SECONDS = 1800.0
# How long a prompt another live process has claimed is waited for, by default.
CLAIM_WAIT_SECONDS = 600.0
# What an unknown outcome left by an earlier try becomes: reported (default), sent again, or accepted as lost.
RESOLUTIONS = ("fail", "retry", "accept")


class State(str, enum.Enum):
    """Where a prompt is."""

    QUEUED = "queued"
    SENDING = "sending"
    ANSWERED = "answered"
    STORED = "stored"
    FAILED = "failed"
    UNKNOWN = "unknown"
    NOT_SENT = "not_sent"


FINAL_STATES = frozenset({State.STORED, State.FAILED, State.UNKNOWN, State.NOT_SENT})


@dataclass
class _Progress:
    """What is left of one prompt's work: its request, then one transfer per answer or streamed image.

    ``entries`` are the ledger's image entries of the prompt (by image index), kept here as
    they change and written with the prompt's record.
    """

    outstanding: int = 0
    complete: bool = True
    streamed: bool = False
    whole: bool = False  # the answer is all there is: a plain answer, or a stream that completed
    settled: bool = False
    lost: str = ""  # why paid images can no longer be stored (an expired link...)
    received: list[GeneratedImage] = field(default_factory=list)
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)


# What the transfer threads take: an answer (or one streamed image) to store.
_Transfer = tuple[PromptJob, GenerationResult]


class TaskLog(Protocol):
    """Where a batch's progress goes: a :class:`logging.Logger`, or the task's own ``self.log``."""

    def debug(self, msg: str, /, *args: Any) -> Any: ...

    def info(self, msg: str, /, *args: Any) -> Any: ...

    def warning(self, msg: str, /, *args: Any) -> Any: ...

    def error(self, msg: str, /, *args: Any) -> Any: ...


class BatchRunner:
    """
    Run prompt jobs on daemon threads sharing one hook (one pooled HTTP session) and one store.

    :param hook: the Seedream hook.
    :param store: where images land.
    :param ledger: the spend ledger of the store's prefix.
    :param s3_client: the client used to read ``s3://`` references.
    :param transport: how local and ``s3://`` references are sent.
    :param replace: generate again even when the same images are stored (once per DAG run).
    :param max_concurrency: generation requests in flight at once.
    :param adaptive_concurrency: pace sends to the account's rate learned from its rate limits, with
        the requests in flight that rate needs (:class:`SendPacer`); ``False`` keeps
        ``max_concurrency`` in flight and sends at once.
    :param log: where progress goes.
    :param budget: ``max_billed_images`` of the task in this DAG run, shared through S3.
    :param resolve_unknown: what an unknown outcome of an earlier try becomes (:data:`RESOLUTIONS`).
    :param claim_wait_seconds: how long a prompt claimed by another live process is waited for.
    :param grace_seconds: how long an interrupted batch waits for requests in flight.
    """

    def __init__(
        self,
        hook: SeedreamHook,
        store: ImageStore,
        ledger: Ledger,
        *,
        s3_client: Any,
        transport: Transport,
        replace: bool,
        max_concurrency: int,
        log: TaskLog,
        adaptive_concurrency: bool = True,
        budget: Budget | None = None,
        resolve_unknown: str = "fail",
        claim_wait_seconds: float = CLAIM_WAIT_SECONDS,
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        self.hook = hook
        self.store = store
        self.ledger = ledger
        self.s3_client = s3_client
        self.transport = transport
        self.replace = replace
        self.max_concurrency = max_concurrency
        self.log = log
        self.budget = budget
        self.resolve_unknown = resolve_unknown
        self.claim_wait_seconds = claim_wait_seconds
        self.grace_seconds = grace_seconds
        # Re-entrant: on_kill runs in a signal handler on the main thread, which may hold it.
        self._changed = threading.Condition(threading.RLock())
        self._states: dict[int, State] = {}
        self._stop_reason: str | None = None
        self._stop_retryable = True
        self._interrupted = False
        self._dead_models: dict[str, str] = {}
        self._open = 0
        self._jobs: dict[int, PromptJob] = {}
        self._progress: dict[int, _Progress] = {}
        self.pacer = SendPacer(max_concurrency, adaptive=adaptive_concurrency)
        self.decider = Decider(
            ledger,
            store,
            replace=replace,
            resolve_unknown=resolve_unknown,
            retry_unknown=lambda: self.hook.retry_unknown_outcome,
            log=log,
        )
        self._references: dict[str, tuple[float, str]] = {}
        self._reference_locks: dict[str, threading.Lock] = {}
        # Set on a generation thread that took its request's first turn before claiming the prompt.
        self._turn_taken = threading.local()

    # -- the public face: run, stop -------------------------------------------------------------

    def stop(self, reason: str, *, interrupt: bool = False, retryable: bool = False) -> None:
        """Send nothing more. With ``interrupt``, also stop waiting for the batch to finish."""
        with self._changed:
            if self._stop_reason is None:
                self._stop_reason = reason
                self._stop_retryable = retryable
            self._interrupted |= interrupt
            self._changed.notify_all()

    def _stopped(self) -> bool:
        return self._stop_reason is not None

    @property
    def budget_spent(self) -> bool:
        """Whether the batch stopped because ``max_billed_images`` was reached."""
        return bool(self._stop_reason and self._stop_reason.startswith("max_billed_images"))

    def run(self, jobs: list[PromptJob]) -> BatchReport:
        """Run every job and return what was stored, reused and lost."""
        report = BatchReport(total_prompts=len(jobs))
        self._jobs = {job.index: job for job in jobs}
        self._states = {job.index: State.QUEUED for job in jobs}
        self._progress = {job.index: _Progress() for job in jobs}
        # Every attempt of a generation request, retries included, waits for its turn at the pace.
        self.hook.before_send = self._before_send
        self.hook.on_rate_limited = lambda error, body: self.pacer.refused(error.code, requested_image_count(body))
        try:
            self.ledger.start_heartbeat()
        except Exception as error:  # nothing can be claimed, so nothing is sent
            code = client_error_code(error)
            cause = type(error).__name__ + (f" {code}" if code else "")
            raise StorageError(
                f"the spend ledger under s3://{self.store.bucket}/{self.store.prefix}/_ledger/ could not be written "
                f"({cause}): nothing was sent",
                code,
            ) from None
        try:
            finished = self._run(jobs, report)
        finally:
            if not self._interrupted:  # a stopped task spends no more time; the next plan reads records itself
                self._write_index(jobs)
            self.ledger.stop_heartbeat()
        return finished

    def _write_index(self, jobs: list[PromptJob]) -> None:
        try:
            self.ledger.write_index([job.stem for job in jobs])
        except StorageError as error:
            self.log.warning("The ledger index was not written (%s): the next run reads each record by itself", error)

    def _run(self, jobs: list[PromptJob], report: BatchReport) -> BatchReport:
        work: queue.SimpleQueue[PromptJob] = queue.SimpleQueue()
        transfers: queue.SimpleQueue[_Transfer | None] = queue.SimpleQueue()
        to_generate = self._plan(jobs, report, transfers)
        for job in to_generate:
            work.put(job)
        threads = [
            threading.Thread(
                target=self._generation_worker, args=(work, transfers, report), daemon=True, name=f"seedream-{n}"
            )
            for n in range(min(self.max_concurrency, len(to_generate)))
        ] + [
            threading.Thread(
                target=self._transfer_worker, args=(transfers, report), daemon=True, name=f"seedream-transfer-{n}"
            )
            for n in range(self.max_concurrency)
        ]
        try:
            try:
                # Started inside the guard: a timeout that strikes while they start still stops them.
                for thread in threads:
                    thread.start()
                self._wait(report)
            except BaseException as error:  # the execution timeout, a signal, anything the main thread raises
                self.stop(f"interrupted by {type(error).__name__}", interrupt=True)
                self._wind_down(work, report)
                raise
            if self._interrupted:  # on_kill
                self._wind_down(work, report)
                raise BatchInterrupted(report)
        finally:
            # The transfer threads end once what they were given is stored (or the process ends).
            for _ in range(self.max_concurrency):
                transfers.put(None)
        return self._finished(report)

    # -- what the ledger says ---------------------------------------------------------------------

    def _plan(
        self, jobs: list[PromptJob], report: BatchReport, transfers: queue.SimpleQueue[_Transfer | None]
    ) -> list[PromptJob]:
        """Read the ledger with one listing; log the plan before any money is spent.

        A record whose etag in the listing is the one this task instance's index holds is taken
        from the index; only the others (changed since, or new) are read one by one.
        """
        listed, present = self.ledger.scan()
        index = self.ledger.read_index() if listed else {}
        records: dict[int, Record | None] = {}
        unread: list[PromptJob] = []
        for job in jobs:
            etag = listed.get(job.stem)
            entry = index.get(job.stem)
            if job.stem not in listed:
                records[job.index] = None
            elif etag is not None and entry is not None and entry[0] == etag:
                self.ledger.adopt(job.stem, etag, entry[1])
                records[job.index] = entry[1]
            else:
                unread.append(job)
        with ThreadPoolExecutor(
            max_workers=min(32, 2 * self.max_concurrency), thread_name_prefix="seedream-plan"
        ) as pool:
            records.update(pool.map(lambda job: (job.index, self.ledger.load(job.stem)), unread))
        with self._changed:
            self._open = len(jobs)
        to_generate: list[PromptJob] = []
        counts: Counter[str] = Counter()
        for job in jobs:
            decision = self.decider.decide(job, records[job.index], present)
            counts[decision.action.value] += 1
            if decision.action in (Action.GENERATE, Action.WAIT):
                to_generate.append(job)
            else:
                self._apply(job, decision, report, transfers)
        most = sum(job.requested_images for job in to_generate)
        report.budget = self.budget.describe() if self.budget is not None else None
        self.log.info(
            "Plan: %d prompt(s): %d already stored, %d to store from images paid for earlier, %d outcome unknown "
            "(not sent again), %d accepted as lost, %d refused (key of another task), %d held by another process, "
            "%d to generate; at most %d image(s) may be paid for; %s (ledger: %d record(s) from the index, %d read)",
            len(jobs),
            counts[Action.REUSE.value],
            counts[Action.RESUME.value],
            counts[Action.UNKNOWN.value],
            counts[Action.ACCEPT.value],
            counts[Action.CONFLICT.value],
            counts[Action.WAIT.value],
            counts[Action.GENERATE.value] + counts[Action.WAIT.value],
            most,
            report.budget or "max_billed_images not set",
            len(jobs) - len(unread) - sum(1 for job in jobs if job.stem not in listed),
            len(unread),
        )
        return to_generate

    def _apply(
        self, job: PromptJob, decision: Decision, report: BatchReport, transfers: queue.SimpleQueue[_Transfer | None]
    ) -> None:
        """Carry out a decision that sends nothing."""
        record = decision.record
        assert record is not None
        if decision.action is Action.REUSE:
            stored = [self._stored_object(job, record, image) for image in record.stored_images]
            report.add_reused([self._record(job, item, reused=True) for item in stored])
            self._finish(job, State.STORED, report)
        elif decision.action is Action.CONFLICT:
            self._fail(report, Failure.refused(job.index, "KeyOwnedByAnotherTask", decision.message, retryable=False))
            self._finish(job, State.FAILED, report)
        elif decision.action is Action.ACCEPT:
            try:
                self.ledger.write(job.stem, states.LOST, reason=f"accepted as lost: {record.reason}"[:300])
            except StorageError as error:
                self._fail(report, Failure.refused(job.index, "LedgerWriteFailed", str(error)))
                self._finish(job, State.FAILED, report)
                return
            report.add_accepted_lost(job.index)
            self.log.warning(
                "Prompt %d: its unknown outcome (%s) is accepted as lost, as asked", job.index, record.reason
            )
            self._finish(job, State.NOT_SENT, report)
        elif decision.action is Action.UNKNOWN:
            self._unknown_earlier(job, record, report)
            self._finish(job, State.UNKNOWN, report)
        elif decision.action is Action.RESUME:
            self._resume(job, record, report, transfers)

    def _unknown_earlier(self, job: PromptJob, record: Record, report: BatchReport) -> None:
        missing = record.requested_images - len(record.stored_images)
        message = (
            f"an earlier request's outcome is unknown ({record.reason or 'no answer recorded'}); "
            f"{missing} image(s) may have been billed and are not stored. Not sent again: set resolve_unknown='retry' "
            "for a run to send it again, or 'accept' to accept it as lost"
        )
        self._fail(report, Failure.unknown_outcome(job.index, message))

    def _resume(
        self, job: PromptJob, record: Record, report: BatchReport, transfers: queue.SimpleQueue[_Transfer | None]
    ) -> None:
        """Store the images an earlier try paid for, from their links; the record becomes this try's."""
        if record.owner.get("token") != self.ledger.owner.token:
            try:
                record = self.ledger.write(job.stem, record.status, owner=asdict(self.ledger.owner))
            except StorageError as error:  # a conflict too: another process took it over first
                self._fail(report, Failure.refused(job.index, "LedgerWriteFailed", str(error)))
                self._finish(job, State.FAILED, report)
                return
        progress = self._progress[job.index]
        progress.entries = {int(image["index"]): dict(image) for image in record.images}
        progress.whole = record.complete
        if record.status == states.UNKNOWN:
            self._unknown_earlier(job, record, report)
            self._set_state(job, State.UNKNOWN)
        else:
            self._set_state(job, State.ANSWERED)
        images = [
            GeneratedImage(index=int(image["index"]), url=image["url"], size=image.get("size"))
            for image in record.linked_images
        ]
        result = GenerationResult(images=images, usage={}, model=record.model, request_id=record.request_id)
        with self._changed:
            progress.outstanding = 1
        self._enqueue(transfers, job, result)
        self._release(job, report)

    @staticmethod
    def _stored_object(job: PromptJob, record: Record, image: dict[str, Any]) -> StoredObject:
        owner = record.owned_by
        return StoredObject(
            bucket=image.get("bucket", ""),
            key=image["key"],
            prompt_index=job.index,
            image_index=int(image["index"]),
            model=image.get("model", record.model or ""),
            size=image.get("size", ""),
            content_type=image.get("content_type", ""),
            bytes=int(image.get("bytes", 0)),
            sha256=image.get("sha256", ""),
            fingerprint=record.fingerprint,
            run_id=owner.run_id if owner else None,
        )

    # -- the main thread ---------------------------------------------------------------------

    def _wait(self, report: BatchReport) -> None:
        last_log = time.monotonic()
        with self._changed:
            while self._open and not self._interrupted:
                self._changed.wait(_WAIT_SLICE)
                if time.monotonic() - last_log >= PROGRESS_SECONDS:
                    last_log = time.monotonic()
                    self._log_progress(report)
        self._log_progress(report)

    def _wind_down(self, work: queue.SimpleQueue[PromptJob], report: BatchReport) -> None:
        """After an interruption: nothing queued is sent, and in-flight requests get a short grace."""
        while True:
            try:
                job = work.get_nowait()
            except queue.Empty:
                break
            self._not_sent(job, report, self._stop_reason or "interrupted")
        deadline = time.monotonic() + self.grace_seconds
        with self._changed:
            while self._open and time.monotonic() < deadline:
                self._changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            abandoned = [index for index, state in self._states.items() if state is State.SENDING]
        # Recorded in parallel and for at most another grace period: a hanging S3 does not hold the
        # task. A record not written leaves the claim, whose dead owner makes it unknown all the same.
        writers = [threading.Thread(target=self._abandon, args=(index, report), daemon=True) for index in abandoned]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + self.grace_seconds
        for writer in writers:
            writer.join(max(0.0, deadline - time.monotonic()))
        answered = [index for index, state in self._states.items() if state is State.ANSWERED]
        local = sum(1 for index in answered if self._jobs[index].stem in self.ledger.kept_locally)
        self.log.warning(
            "Stopped (%s): nothing more is sent; %d request(s) abandoned in flight (outcome unknown), %d answered "
            "prompt(s) not yet stored keep their links for a retry: %d in the ledger in S3, %d only on this machine "
            "(under %s; S3 did not take them)",
            self._stop_reason,
            len(abandoned),
            len(answered),
            len(answered) - local,
            local,
            self.ledger.local_folder,
        )
        report.close(self._stop_reason, False, None)

    def _abandon(self, index: int, report: BatchReport) -> None:
        job = self._jobs[index]
        with self.ledger.lock(job.stem):
            if self._states[index] is not State.SENDING:
                return  # it answered meanwhile, and was recorded
            self._set_state(job, State.UNKNOWN)
            self._fail(report, Failure.unknown_outcome(index, "the task stopped while it was in flight"))
            self._write_record(job, states.UNKNOWN, reason="abandoned in flight when the task stopped")

    def _finished(self, report: BatchReport) -> BatchReport:
        budget = None
        if self.budget is not None:
            with contextlib.suppress(StorageError):
                budget = self.budget.describe()
        report.close(self._stop_reason, self._stop_retryable, budget)
        return report

    def _log_progress(self, report: BatchReport) -> None:
        with self._changed:
            states_now = Counter(state.value for state in self._states.values())
        self.log.info(
            "Progress: %d/%d prompts done; %d images generated, %d reused, %d failures, %d outcome unknown; "
            "%d sending (window %d of %d, paced at %s images/min, %d rate-limited answers), %d answered and storing; "
            "billed images %d, output tokens %d",
            report.prompts_done,
            report.total_prompts,
            report.generated,
            report.reused,
            len(report.failures),
            report.unknown_outcomes,
            states_now[State.SENDING.value],
            self.pacer.window,
            self.pacer.maximum,
            "-" if (pace := self.pacer.images_per_minute) is None else f"{pace:.0f}",
            self.pacer.rate_limited,
            states_now[State.ANSWERED.value],
            report.billed_images,
            report.output_tokens,
        )

    # -- generation threads ------------------------------------------------------------------

    def _generation_worker(
        self, work: queue.SimpleQueue[PromptJob], transfers: queue.SimpleQueue[_Transfer | None], report: BatchReport
    ) -> None:
        while True:
            try:
                job = work.get_nowait()
            except queue.Empty:
                return
            waited_until = time.monotonic() + self.claim_wait_seconds
            while not self._claim_and_send(job, transfers, report, waited_until):
                pass  # another process held the prompt: its record was read again

    def _claim_and_send(
        self, job: PromptJob, transfers: queue.SimpleQueue[_Transfer | None], report: BatchReport, wait_until: float
    ) -> bool:
        """Send one job, once the ledger lets it be sent; ``False`` to be called again after waiting."""
        if not self.pacer.acquire(self._stopped):
            self._not_sent(job, report, self._stop_reason or "stopped")
            return True
        sent = False
        try:
            reason = self._stop_reason or self._dead_models.get(str(job.body.get("model")))
            if reason is None and not self.pacer.wait_turn(job.requested_images, self._stopped):
                reason = self._stop_reason or "stopped"
            if reason is not None:
                self._not_sent(job, report, reason)
                return True
            # The turn comes before the claim: a task killed while its requests wait for their turn
            # leaves no claim of a request that was never sent (which a retry would call unknown).
            self._turn_taken.job = job.index
            decision = self._claim(job)
            if decision.action is Action.WAIT:
                self.pacer.release()
                sent = True  # the slot is freed here
                return self._wait_for_owner(job, decision, report, wait_until)
            if decision.action is Action.NOT_SENT:
                self._not_sent(job, report, decision.message)
                return True
            if decision.action is not Action.GENERATE:
                self._apply(job, decision, report, transfers)
                return True
            if not self._hold(job, report):
                return True
            with self._changed:
                reason = self._stop_reason
                if reason is None:
                    self._progress[job.index].outstanding = 1  # the request itself
                    self._set_state(job, State.SENDING)
            if reason is not None:  # stopped between the claim and the send: nothing is spent
                self._release_claim(job, report, reason)
                return True
            sent = True
            self._send(job, transfers, report)
            return True
        finally:
            if getattr(self._turn_taken, "job", None) is not None:  # taken, and not sent after all
                self._turn_taken.job = None
                self.pacer.unused_turn(job.requested_images)
            if not sent:
                self.pacer.release()

    def _claim(self, job: PromptJob) -> Decision:
        """Claim the prompt with a conditional write, or say why it is not to be sent."""
        while True:
            try:
                with self.ledger.lock(job.stem):
                    decision = self.decider.decide(job, self.ledger.cached(job.stem))
                    if decision.action is not Action.GENERATE:
                        return decision
                    self.ledger.write(
                        job.stem, states.CLAIMED, fingerprint=job.fingerprint, requested_images=job.requested_images
                    )
                    return decision
            except LedgerConflict:
                self.ledger.load(job.stem)  # another process got there first: follow its record
            except StorageError as error:
                reason = f"the spend ledger could not be written ({error}); nothing more is sent"
                self.stop(reason)
                return Decision(Action.NOT_SENT, None, reason)

    def _wait_for_owner(self, job: PromptJob, decision: Decision, report: BatchReport, wait_until: float) -> bool:
        """Another live process holds the prompt: wait (bounded) for its record to settle."""
        self.log.info("Prompt %d: key %r is %s; waiting for it", job.index, job.stem, decision.message)
        while time.monotonic() < wait_until:
            if self._stop_reason is not None:
                self._not_sent(job, report, self._stop_reason)
                return True
            with self._changed:
                self._changed.wait(1.0)
            try:
                record = self.ledger.load(job.stem)
            except StorageError:
                continue
            if record is None or record.status in states.SETTLED or not self.ledger.alive(record.owned_by):
                return False
        message = (
            f"key {job.stem!r} is still {decision.message} after {self.claim_wait_seconds:g} s; not sent, "
            "so that it is not paid for twice. A retry reuses what that run stores"
        )
        self._fail(report, Failure.refused(job.index, "ClaimedElsewhere", message, retryable=True))
        self._finish(job, State.FAILED, report)
        return True

    def _hold(self, job: PromptJob, report: BatchReport) -> bool:
        """Reserve the job's images from the budget; on refusal the claim is released and the batch stops."""
        if self.budget is None:
            return True
        try:
            self.budget.reserve(job.stem, job.requested_images)
            return True
        except BudgetExhausted as error:
            reason = f"max_billed_images: {error}"
            self.stop(reason)
        except StorageError as error:
            reason = f"the budget record could not be written ({error})"
            self.stop(reason)
        self._write_record(job, states.RELEASED, reason=f"not sent: {reason}"[:300])
        self._not_sent(job, report, reason)
        return False

    def _send(self, job: PromptJob, transfers: queue.SimpleQueue[_Transfer | None], report: BatchReport) -> None:
        answered = False
        try:
            if job.body.get("stream"):
                self._generate_streamed(job, transfers, report)
                answered = True
                self.pacer.release(answered=True)
            else:
                result = self._generate(job)
                answered = True
                self.pacer.release(answered=True)
                self._answered(job, result, transfers, report)
        except SeedreamUnknownOutcomeError as error:
            self._settle(job, billed=None)
            self._unknown(job, error, transfers, report)
        except SeedreamAPIError as error:
            # A stream may fail after delivering images: those were made, and are billed.
            self._count_usage(job, {}, len(self._progress[job.index].received), report)
            self._refused(job, error, transfers, report)
        except SeedreamSendCancelled:  # the batch stopped while the request waited for its turn
            self._cancelled(job, report)
        except Exception as error:  # a refused connection after every retry, an unreadable reference...
            self._settle(job, billed=0)
            self._write_record(job, states.REFUSED, reason=f"{type(error).__name__}: {error}"[:300])
            self._fail(report, Failure.refused(job.index, type(error).__name__, str(error)[:300]))
            self._release(job, report, complete=False)
        finally:
            if not answered:
                self.pacer.release()

    def _before_send(self, body: dict[str, Any]) -> bool:
        """Whether a request may be sent now: its turn at the pace, unless taken before the claim."""
        if getattr(self._turn_taken, "job", None) is not None:
            self._turn_taken.job = None  # the first attempt's turn; a retry waits for one of its own
            return not self._stopped()
        return self.pacer.wait_turn(requested_image_count(body), self._stopped)

    def _cancelled(self, job: PromptJob, report: BatchReport) -> None:
        with self.ledger.lock(job.stem):
            if self._states[job.index] is not State.SENDING:
                return  # abandoned meanwhile, and recorded
            self._release_claim(job, report, self._stop_reason or "stopped")

    def _release_claim(self, job: PromptJob, report: BatchReport, reason: str) -> None:
        """The claimed prompt is not sent after all: its claim and its budget hold are released."""
        self._write_record(job, states.RELEASED, reason=f"not sent: {reason}"[:300])
        self._settle(job, billed=0)
        self._not_sent(job, report, reason)

    def _settle(self, job: PromptJob, *, billed: int | None) -> None:
        """Replace the job's hold on the budget by what it cost (``None``: unknown, so count it all); once."""
        with self._changed:
            progress = self._progress[job.index]
            if progress.settled:
                return
            progress.settled = True
        if self.budget is not None:
            try:
                self.budget.settle(job.stem, billed)
            except StorageError as error:  # the hold stays: the budget counts it as spent
                self.log.warning("Prompt %d: the budget could not be settled: %s", job.index, error)

    def _count_usage(self, job: PromptJob, usage: dict[str, Any], received: int, report: BatchReport) -> None:
        billed = int(usage.get("generated_images", received))
        self._settle(job, billed=billed)
        report.add_billed(billed, int(usage.get("output_tokens", 0)))

    def _body(self, job: PromptJob) -> dict[str, Any]:
        body = dict(job.body)
        if job.references:
            body["image"] = [self._resolved(reference) for reference in job.references]
        return body

    def _generate(self, job: PromptJob) -> GenerationResult:
        return self.hook.send_request(self._body(job), spool_images=True)

    def _resolved(self, reference: Reference) -> str:
        """What is sent for a reference, made once per batch (a presigned link again when half-lived)."""
        with self._changed:
            lock = self._reference_locks.setdefault(reference.identity, threading.Lock())
        with lock:  # the first thread reads it; the others wait for that read instead of repeating it
            cached = self._references.get(reference.identity)
            if cached is not None and time.monotonic() - cached[0] < _REFERENCE_REUSE_SECONDS:
                return cached[1]
            value = resolve(reference, self.s3_client, self.transport)
            self._references[reference.identity] = (time.monotonic(), value)
            return value

    # -- the prompt's record -----------------------------------------------------------------

    def _note(self, job: PromptJob, images: list[GeneratedImage]) -> None:
        entries = self._progress[job.index].entries
        for image in images:
            if image.url:
                entries[image.index] = {
                    "index": image.index,
                    "url": image.url,
                    "expires_at": link_expiry(image.url),
                    "size": image.size,
                }
            elif image.error_code:
                entries[image.index] = {"index": image.index, "error": image.error_code}

    def _write_record(self, job: PromptJob, status: str, **changes: Any) -> bool:
        """Write the prompt's record with its image entries; when S3 does not take it, nothing more is sent.

        A record of paid links S3 refused is kept on this machine, so a retry here still finds it.
        """
        progress = self._progress[job.index]
        images = tuple(progress.entries[index] for index in sorted(progress.entries))
        current = self.ledger.cached(job.stem)
        if current is not None and current.status == states.UNKNOWN:
            status = states.UNKNOWN  # abandoned by a stopped task: it stays unknown, its links kept
        try:
            self.ledger.write(job.stem, status, images=images, **changes)
            return True
        except StorageError as error:
            self.log.error("Prompt %d: the ledger did not take its %s record: %s", job.index, status, error)
            if images and status in (states.ANSWERED, states.UNKNOWN) and current is not None:
                path = self.ledger.keep_locally(job.stem, status, images=images, **changes)
                self.log.error(
                    "Prompt %d: its paid links are kept at %s on this machine, for a retry here", job.index, path
                )
                self.stop(
                    f"S3 did not take the ledger record of paid links; it is kept at {path} on this machine "
                    "and nothing more is sent, so that no more is paid for than can be stored"
                )
            else:
                self.stop("the spend ledger could not be written; nothing more is sent")
            return False

    # -- answers -------------------------------------------------------------------------------

    def _answered(
        self,
        job: PromptJob,
        result: GenerationResult,
        transfers: queue.SimpleQueue[_Transfer | None],
        report: BatchReport,
    ) -> None:
        self._count_usage(job, result.usage, len(result.succeeded), report)
        progress = self._progress[job.index]
        if not result.images:
            message = "the endpoint answered 200 with no image and no error"
            self._write_record(job, states.REFUSED, reason=message, billed=0)
            self._fail(report, Failure.refused(job.index, "EmptyAnswer", message))
            self._release(job, report, complete=False)
            return
        progress.whole = True
        self._set_state(job, State.ANSWERED)
        if any(image.spool is not None for image in result.images):
            # Decoded b64_json images have no link to come back to: store them before the slot is freed.
            self._note(job, [image for image in result.images if not image.ok])
            complete, stored = self._store_answer(job, result, report)
            self._release(job, report, complete=complete, stored=stored)
            return
        # Recorded before the slot is freed, so an interruption loses no paid link.
        with self.ledger.lock(job.stem):
            self._note(job, result.images)
            self._write_record(
                job,
                states.ANSWERED,
                model=result.model,
                request_id=result.request_id,
                complete=True,
                billed=int(result.usage.get("generated_images", len(result.succeeded))),
            )
        self._enqueue(transfers, job, result)
        self._release(job, report)

    def _generate_streamed(
        self, job: PromptJob, transfers: queue.SimpleQueue[_Transfer | None], report: BatchReport
    ) -> None:
        """Hand each streamed image to the transfer threads as it arrives, its link recorded first.

        An interrupted task stops reading at once (closing the stream): the images received
        are kept, the rest of the group is an unknown outcome.
        """
        progress = self._progress[job.index]
        progress.streamed = True
        usage: dict[str, Any] = {}
        completed = False
        events = self.hook.stream_request(self._body(job), spool_images=True)
        try:
            for event in events:
                if event.completed:
                    usage, completed = event.usage, True
                image = event.image
                if image is not None and not image.ok:
                    message = image.error_message or ""
                    code = image.error_code or "Error"
                    self._fail(report, Failure.refused(job.index, code, message, retryable=False, image=image.index))
                    with self._changed:
                        self._note(job, [image])
                elif image is not None:
                    self._streamed_image(job, image, event.model, event.request_id, transfers)
                if self._interrupted:
                    raise SeedreamUnknownOutcomeError(
                        f"the task stopped while the group was streaming, after {len(progress.received)} image(s)"
                    )
        finally:
            events.close()  # an abandoned stream is closed, so the service sees the client leave
        progress.whole = completed
        self._count_usage(job, usage, len(progress.received), report)
        self._set_state(job, State.ANSWERED)
        self._release(job, report)

    def _streamed_image(
        self,
        job: PromptJob,
        image: GeneratedImage,
        model: str | None,
        request_id: str | None,
        transfers: queue.SimpleQueue[_Transfer | None],
    ) -> None:
        progress = self._progress[job.index]
        with self.ledger.lock(job.stem):
            progress.received.append(image)
            if image.url:
                self._note(job, [image])
                self._write_record(job, states.ANSWERED, model=model, request_id=request_id)
        self._enqueue(transfers, job, GenerationResult(images=[image], usage={}, model=model, request_id=request_id))

    def _received(self, job: PromptJob) -> GenerationResult | None:
        """The streamed images a request delivered before it stopped, if any."""
        images = list(self._progress[job.index].received)
        return GenerationResult(images=images, usage={}, model=None) if images else None

    def _unknown(
        self,
        job: PromptJob,
        error: SeedreamUnknownOutcomeError,
        transfers: queue.SimpleQueue[_Transfer | None],
        report: BatchReport,
    ) -> None:
        # Images that did arrive are known: an answer cut short, or a stream that broke off.
        received = error.received if error.received is not None and error.received.succeeded else None
        with self.ledger.lock(job.stem):
            if received is not None:
                self._note(job, received.images)
            self._write_record(job, states.UNKNOWN, reason=str(error)[:300])
            self._fail(report, Failure.unknown_outcome(job.index, str(error)[:300]))
            self._set_state(job, State.UNKNOWN)
        if received is not None:
            self._enqueue(transfers, job, received)
        self._release(job, report, complete=False)

    def _refused(
        self,
        job: PromptJob,
        error: SeedreamAPIError,
        transfers: queue.SimpleQueue[_Transfer | None],
        report: BatchReport,
    ) -> None:
        code = error.code or f"HTTP{error.status}"
        if error.status in ACCOUNT_STATUSES or error.code in NON_RETRYABLE_429_CODES:
            self.stop(f"the service answered HTTP {error.status} {error.code or ''}".strip())
        elif error.status == 404:
            model = str(job.body.get("model"))
            with self._changed:
                self._dead_models.setdefault(model, f"model {model!r} answered HTTP 404 {error.code or ''}".strip())
        progress = self._progress[job.index]
        with self.ledger.lock(job.stem):
            if progress.received:  # a stream that failed after delivering images: those are paid for
                progress.lost = f"the stream failed after {len(progress.received)} image(s): {code}"
                self._write_record(job, states.ANSWERED, reason=progress.lost[:300])
            else:
                self._write_record(job, states.REFUSED, reason=f"{code}: {error.message}"[:300], billed=0)
        retryable = error.retryable and not progress.received
        self._fail(report, Failure.refused(job.index, code, error.message, retryable=retryable))
        self._release(job, report, complete=False)

    # -- transfer threads --------------------------------------------------------------------

    def _enqueue(
        self, transfers: queue.SimpleQueue[_Transfer | None], job: PromptJob, result: GenerationResult
    ) -> None:
        with self._changed:
            self._progress[job.index].outstanding += 1
        transfers.put((job, result))

    def _transfer_worker(self, transfers: queue.SimpleQueue[_Transfer | None], report: BatchReport) -> None:
        while (item := transfers.get()) is not None:
            job, result = item
            try:
                complete, stored = self._store_answer(job, result, report)
            except Exception as error:  # nothing may strand a prompt: report it and go on
                self._fail(report, Failure(job.index, None, "upload", type(error).__name__, str(error)[:300], True))
                complete, stored = False, []
            self._release(job, report, complete=complete, stored=stored)

    def _store_answer(
        self, job: PromptJob, result: GenerationResult, report: BatchReport
    ) -> tuple[bool, list[StoredObject]]:
        """Store every image of one answer: whether all were, and what was stored."""
        complete, stored = True, []
        for image in result.images:
            if not image.ok:
                code, message = image.error_code or "Error", image.error_message or ""
                self._fail(report, Failure.refused(job.index, code, message, retryable=False, image=image.index))
                continue
            item = self._store(job, result, image, report)
            complete &= item is not None
            if item is not None:
                stored.append(item)
        return complete, stored

    def _release(
        self,
        job: PromptJob,
        report: BatchReport,
        *,
        complete: bool = True,
        stored: list[StoredObject] | None = None,
    ) -> None:
        """One part of a prompt's work is done; when it was the last, the prompt is finished and its record sealed."""
        with self._changed:
            progress = self._progress[job.index]
            progress.complete &= complete
            for item in stored or []:
                progress.entries[item.image_index] = {
                    "index": item.image_index,
                    "key": item.key,
                    "bucket": item.bucket,
                    "bytes": item.bytes,
                    "sha256": item.sha256,
                    "content_type": item.content_type,
                    "size": item.size,
                    "model": item.model,
                }
            progress.outstanding -= 1
            if progress.outstanding > 0:
                return
            unknown = self._states[job.index] is State.UNKNOWN
        final = State.UNKNOWN if unknown else State.STORED if progress.complete else State.FAILED
        record = self.ledger.cached(job.stem)
        if record is not None and record.owner.get("token") == self.ledger.owner.token:
            with self.ledger.lock(job.stem):
                self._seal(job, progress, record.status, unknown)
        self._finish(job, final, report)

    def _seal(self, job: PromptJob, progress: _Progress, status: str, unknown: bool) -> None:
        """Write where the prompt ended: stored only when its whole answer is stored or failed item by item."""
        if status not in (states.ANSWERED, states.CLAIMED, states.UNKNOWN):
            return  # refused or released: already final
        linked = [entry for entry in progress.entries.values() if entry.get("url") and not entry.get("key")]
        lost = [entry for entry in progress.entries.values() if entry.get("lost")]
        if unknown or status == states.UNKNOWN:
            self._write_record(job, states.UNKNOWN)
        elif progress.lost:
            self._write_record(job, states.UNKNOWN, reason=progress.lost[:300])
        elif not progress.whole:
            received = len(progress.received) or len(progress.entries)
            reason = (
                f"the answer ended before it was whole: {received} of up to {job.requested_images} image(s) arrived"
            )
            self._write_record(job, states.UNKNOWN, reason=reason)
        elif lost:
            reason = (
                f"{len(lost)} image(s) paid for could not be stored and their links cannot be used again: "
                f"{lost[0]['lost']}"
            )
            self._write_record(job, states.UNKNOWN, reason=reason[:300])
        elif linked:
            self._write_record(job, states.ANSWERED)  # what was stored so far, and the links a retry stores
        else:
            self._write_record(job, states.STORED, complete=True)

    def _store(
        self, job: PromptJob, result: GenerationResult, image: GeneratedImage, report: BatchReport
    ) -> StoredObject | None:
        """Download and upload one image; what was stored (``None``: its link stays in the ledger, or is lost)."""
        key = self.store.key_for(job.stem, image.index, job.extension)
        try:
            with tempfile.TemporaryFile(prefix="seedream-") as spool:
                downloaded = self.hook.download_image(image, spool)
                stored = StoredObject(
                    bucket=self.store.bucket,
                    key=key,
                    prompt_index=job.index,
                    image_index=image.index,
                    model=result.model or str(job.body.get("model")),
                    size=image.size or str(job.body.get("size", "")),
                    content_type=downloaded.content_type,
                    bytes=downloaded.bytes,
                    sha256=downloaded.sha256,
                    fingerprint=job.fingerprint,
                    run_id=self.store.run_id,
                )
                self.store.upload(spool, stored, result.request_id)
        except StorageError as error:
            if error.fatal:
                self.stop(f"S3 answered {error.code}")
            code = error.code or "StorageError"
            self._fail(report, Failure.lost_image(job.index, image.index, "upload", code, str(error), retryable=True))
            return None
        except SeedreamError as error:
            retryable = bool(getattr(error, "retryable", False))
            message = str(error)
            if not retryable and image.url and link_expiry(image.url) < time.time():
                message += " (its link expired)"
            if not retryable:  # its link cannot be used again: the paid image is lost, and the ledger says so
                with self._changed:
                    self._progress[job.index].entries[image.index] = {"index": image.index, "lost": message[:200]}
            self._fail(
                report,
                Failure.lost_image(
                    job.index, image.index, "download", type(error).__name__, message, retryable=retryable
                ),
            )
            return None
        finally:
            if image.spool is not None:
                image.spool[0].close()
        self.log.debug("Stored %s (%d bytes)", stored.s3_uri, stored.bytes)
        report.add_stored(self._record(job, stored, reused=False))
        return stored

    # -- bookkeeping -------------------------------------------------------------------------

    def _set_state(self, job: PromptJob, state: State) -> None:
        with self._changed:
            self._states[job.index] = state
            self._changed.notify_all()

    def _finish(self, job: PromptJob, state: State, report: BatchReport) -> None:
        with self._changed:
            self._states[job.index] = state
            self._open -= 1
            report.prompt_done()
            self._changed.notify_all()

    def _not_sent(self, job: PromptJob, report: BatchReport, reason: str) -> None:
        self._fail(report, Failure.not_sent(job.index, reason), quiet=True)
        self._finish(job, State.NOT_SENT, report)

    def _fail(self, report: BatchReport, failure: Failure, *, quiet: bool = False) -> None:
        job = self._jobs.get(failure.prompt_index)
        if job is not None and failure.key is None and not job.stem.endswith(f"{job.index:05d}"):
            failure = changed(failure, key=job.stem)  # a keyed prompt is named by its key (a product id)
        report.add_failure(failure)
        if not quiet:
            log = self.log.error if failure.paid or failure.unknown else self.log.warning
            log("%s", failure.describe())

    @staticmethod
    def _record(job: PromptJob, stored: StoredObject, *, reused: bool) -> dict[str, Any]:
        record = asdict(stored)
        # A keyed image reused from a run where the prompt sat elsewhere belongs to this position now.
        record.update(s3_uri=stored.s3_uri, prompt=job.prompt, prompt_index=job.index, reused=reused)
        return record
