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
from airflow_provider_seedream.concurrency import AdaptiveLimit
from airflow_provider_seedream.exceptions import (
    NON_RETRYABLE_429_CODES,
    SeedreamAPIError,
    SeedreamError,
    SeedreamUnknownOutcomeError,
    StorageError,
)
from airflow_provider_seedream.ledger import BudgetExhausted, LedgerConflict, Record, link_expiry
from airflow_provider_seedream.planning import PromptJob
from airflow_provider_seedream.references import Reference, Transport, resolve
from airflow_provider_seedream.results import GeneratedImage, GenerationResult
from airflow_provider_seedream.storage import StoredObject, client_error_code

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


@dataclass(frozen=True)
class Failure:
    """Something that did not end in S3, whether it had been paid for, and whether a retry may help."""

    prompt_index: int
    image_index: int | None
    stage: str
    code: str
    message: str
    paid: bool
    retryable: bool = True
    unknown: bool = False
    #: The prompt's ``key`` (a product id), when it was given one; set by the batch.
    key: str | None = None

    @classmethod
    def refused(
        cls, index: int, code: str, message: str, *, retryable: bool = True, image: int | None = None
    ) -> Failure:
        """The service (or a check) refused it: nothing was paid."""
        return cls(index, image, "generation", code, message, paid=False, retryable=retryable)

    @classmethod
    def unknown_outcome(cls, index: int, message: str) -> Failure:
        """Sent, and its answer lost: it may have been billed; not sent again unasked."""
        return cls(index, None, "generation", "OutcomeUnknown", message, paid=False, retryable=False, unknown=True)

    @classmethod
    def not_sent(cls, index: int, reason: str) -> Failure:
        """The batch stopped before sending it."""
        return cls(index, None, "generation", "NotSent", reason, paid=False, retryable=False)

    @classmethod
    def lost_image(cls, index: int, image: int, stage: str, code: str, message: str, *, retryable: bool) -> Failure:
        """An image paid for that did not reach S3 (a retry stores it from its link when ``retryable``)."""
        return cls(index, image, stage, code, message, paid=True, retryable=retryable)

    def describe(self) -> str:
        where = f"prompt {self.prompt_index}" + (f" (key {self.key!r})" if self.key else "")
        where += f" image {self.image_index}" if self.image_index is not None else ""
        if self.unknown:
            return f"{where}: outcome unknown, may have been billed (not sent again): {self.message}"
        paid = " (paid for, NOT stored)" if self.paid else ""
        return f"{where}: {self.stage} failed: {self.code}: {self.message}{paid}"


@dataclass
class BatchReport:
    """What a batch stored, reused and lost: collected from every thread through its methods, under its own lock."""

    total_prompts: int
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    prompts_done: int = 0
    generated: int = 0
    reused: int = 0
    billed_images: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    stop_retryable: bool = True
    accepted_lost: list[int] = field(default_factory=list)
    budget: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_stored(self, record: dict[str, Any]) -> None:
        """An image generated by this batch is in S3."""
        with self._lock:
            self.generated += 1
            self.records.append(record)

    def add_reused(self, records: list[dict[str, Any]]) -> None:
        """Images stored earlier are this prompt's."""
        with self._lock:
            self.reused += len(records)
            self.records.extend(records)

    def add_billed(self, images: int, output_tokens: int) -> None:
        with self._lock:
            self.billed_images += images
            self.output_tokens += output_tokens

    def add_failure(self, failure: Failure) -> None:
        with self._lock:
            self.failures.append(failure)

    def add_accepted_lost(self, prompt_index: int) -> None:
        with self._lock:
            self.accepted_lost.append(prompt_index)

    def prompt_done(self) -> None:
        with self._lock:
            self.prompts_done += 1

    def close(self, stop_reason: str | None, retryable: bool, budget: str | None) -> None:
        """The batch ended: records and failures in prompt order, and why it stopped."""
        with self._lock:
            self.records.sort(key=lambda record: (record["prompt_index"], record["image_index"]))
            self.failures.sort(key=lambda failure: (failure.prompt_index, failure.image_index or 0))
            self.stop_reason, self.stop_retryable = stop_reason, retryable
            self.budget = budget or self.budget

    @property
    def unknown_outcomes(self) -> int:
        """Prompts whose request may have been billed without an answer."""
        return sum(1 for failure in self.failures if failure.unknown)

    @property
    def not_sent(self) -> list[int]:
        """The prompt indices the batch stopped before sending."""
        return sorted(failure.prompt_index for failure in self.failures if failure.code == "NotSent")

    @property
    def retryable(self) -> bool:
        """Whether a retry of the task may store more (some failure was a transient one)."""
        if self.stop_reason and not self.stop_retryable:
            return False
        return any(failure.retryable for failure in self.failures)

    def summary(self) -> str:
        lines = [
            f"{len(self.failures)} failure(s) in a batch of {self.total_prompts} prompt(s); "
            f"{self.generated} image(s) generated and stored, {self.reused} reused, "
            f"{self.unknown_outcomes} outcome(s) unknown, {len(self.not_sent)} prompt(s) not sent; "
            f"{self.billed_images} image(s) billed by this try{f' ({self.budget})' if self.budget else ''}. "
            "Images already stored are kept: a retry generates only what is missing."
        ]
        if self.stop_reason:
            lines.append(f"The batch stopped: {self.stop_reason}.")
        if self.accepted_lost:
            lines.append(
                f"Unknown outcomes accepted as lost (resolve_unknown='accept'): prompts {self.accepted_lost[:50]}"
            )
        if self.not_sent:
            shown = ", ".join(str(index) for index in self.not_sent[:50])
            lines.append(f"Prompts not sent: {shown}" + (" ..." if len(self.not_sent) > 50 else ""))
        listed = [failure for failure in self.failures if failure.code != "NotSent"]
        lines += [f"  - {failure.describe()}" for failure in listed[:50]]
        if len(listed) > 50:
            lines.append(f"  ... and {len(listed) - 50} more")
        return "\n".join(lines)


class BatchError(SeedreamError):
    """Some prompts or images of a batch failed; the others were stored."""

    def __init__(self, report: BatchReport) -> None:
        self.report = report
        super().__init__(report.summary())


class BatchInterrupted(SeedreamError):
    """The task was stopped (``on_kill``); what was paid for is stored or recorded."""

    def __init__(self, report: BatchReport) -> None:
        self.report = report
        super().__init__(report.summary())


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


class _Action(str, enum.Enum):
    """What the ledger says to do with a prompt."""

    GENERATE = "generate"
    REUSE = "reuse"
    RESUME = "resume"  # links of images paid for earlier: store them
    WAIT = "wait"  # another live process holds it
    UNKNOWN = "unknown"
    ACCEPT = "accept"
    CONFLICT = "conflict"
    NOT_SENT = "not_sent"  # the ledger could not be written


@dataclass(frozen=True)
class _Decision:
    action: _Action
    record: Record | None = None
    message: str = ""


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
    :param adaptive_concurrency: lower the requests in flight on rate limits (:class:`AdaptiveLimit`);
        ``False`` keeps ``max_concurrency`` in flight.
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
        self.limit = AdaptiveLimit(max_concurrency, adaptive=adaptive_concurrency)
        self._references: dict[str, tuple[float, str]] = {}
        self._reference_locks: dict[str, threading.Lock] = {}

    # -- the public face: run, stop -------------------------------------------------------------

    def stop(self, reason: str, *, interrupt: bool = False, retryable: bool = False) -> None:
        """Send nothing more. With ``interrupt``, also stop waiting for the batch to finish."""
        with self._changed:
            if self._stop_reason is None:
                self._stop_reason = reason
                self._stop_retryable = retryable
            self._interrupted |= interrupt
            self._changed.notify_all()

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
        self.hook.on_rate_limited = lambda error: self.limit.throttled()
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
            decision = self._decide(job, records[job.index], present)
            counts[decision.action.value] += 1
            if decision.action in (_Action.GENERATE, _Action.WAIT):
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
            counts[_Action.REUSE.value],
            counts[_Action.RESUME.value],
            counts[_Action.UNKNOWN.value],
            counts[_Action.ACCEPT.value],
            counts[_Action.CONFLICT.value],
            counts[_Action.WAIT.value],
            counts[_Action.GENERATE.value] + counts[_Action.WAIT.value],
            most,
            report.budget or "max_billed_images not set",
            len(jobs) - len(unread) - sum(1 for job in jobs if job.stem not in listed),
            len(unread),
        )
        return to_generate

    def _decide(self, job: PromptJob, record: Record | None, present: set[str] | None = None) -> _Decision:
        """What to do with ``job`` given its ledger record: the one place these rules live."""
        if record is None:
            return _Decision(_Action.GENERATE)
        me = self.ledger.owner
        owner = record.owned_by
        same = record.fingerprint == job.fingerprint
        if not same and not self.replace and owner is not None and not owner.same_task(me):
            where = self.store.key_for(job.stem, 0, job.extension)
            return _Decision(
                _Action.CONFLICT,
                record,
                (
                    f"key {job.stem!r} (s3://{self.store.bucket}/{where}) belongs to task {owner.task} "
                    f"(run {owner.run_id!r}), which made it from a different prompt or parameters; give this prompt "
                    "another key, or set replace=True to take the key over"
                ),
            )
        status = record.status
        if status in (states.CLAIMED, states.ANSWERED):
            if self.ledger.alive(owner):
                return _Decision(
                    _Action.WAIT, record, f"claimed by {owner.describe() if owner else 'an unknown owner'}"
                )
            if status == states.CLAIMED or not same:
                return self._dead_claim(job, record)
            if not record.linked_images:
                return self._expired(job, record)
            return _Decision(_Action.RESUME, record)
        if not same:
            if status == states.UNKNOWN:
                self.log.warning(
                    "Prompt %d: an earlier request for another prompt under key %r had an unknown outcome (%s); "
                    "the prompt changed, so it is generated",
                    job.index,
                    job.stem,
                    record.reason,
                )
            return _Decision(_Action.GENERATE, record)
        if status == states.STORED:
            run = owner.run_id if owner is not None else None
            if self.replace and run != me.run_id:
                return _Decision(_Action.GENERATE, record)
            if present is not None and any(image["key"] not in present for image in record.stored_images):
                self.log.warning(
                    "Prompt %d: an image of key %r was deleted from S3: it is generated again", job.index, job.stem
                )
                return _Decision(_Action.GENERATE, record)
            return _Decision(_Action.REUSE, record)
        if status == states.UNKNOWN:
            resolution = "retry" if self.hook.retry_unknown_outcome else self.resolve_unknown
            if resolution == "retry":
                self.log.warning(
                    "Prompt %d: its earlier outcome was unknown (%s); it is sent again, as asked",
                    job.index,
                    record.reason,
                )
                return _Decision(_Action.GENERATE, record)
            if resolution == "accept":
                return _Decision(_Action.ACCEPT, record)
            if record.linked_images:
                return _Decision(_Action.RESUME, record)
            return _Decision(_Action.UNKNOWN, record)
        if status == states.LOST:
            self.log.info("Prompt %d: accepted as lost in an earlier run; it is generated", job.index)
        return _Decision(_Action.GENERATE, record)

    def _dead_claim(self, job: PromptJob, record: Record) -> _Decision:
        owner = record.owned_by
        by = owner.describe() if owner else "an unknown owner"
        reason = f"left {record.status} by {by}, which ended before settling it"
        try:
            record = self.ledger.write(job.stem, states.UNKNOWN, reason=reason[:300])
        except LedgerConflict:
            record = self.ledger.load(job.stem) or record
            return self._decide(job, record)
        if record.fingerprint != job.fingerprint:
            return _Decision(_Action.GENERATE, record)
        return self._decide(job, record)

    def _expired(self, job: PromptJob, record: Record) -> _Decision:
        expired = record.expired_images
        when = max((float(image.get("expires_at", 0)) for image in expired), default=0.0)
        reason = (
            f"{len(expired)} image(s) paid for were never stored and their links expired at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(when))}"
        )
        try:
            record = self.ledger.write(job.stem, states.UNKNOWN, reason=reason)
        except LedgerConflict:
            record = self.ledger.load(job.stem) or record
        return self._decide(job, record)

    def _apply(
        self, job: PromptJob, decision: _Decision, report: BatchReport, transfers: queue.SimpleQueue[_Transfer | None]
    ) -> None:
        """Carry out a decision that sends nothing."""
        record = decision.record
        assert record is not None
        if decision.action is _Action.REUSE:
            stored = [self._stored_object(job, record, image) for image in record.stored_images]
            report.add_reused([self._record(job, item, reused=True) for item in stored])
            self._finish(job, State.STORED, report)
        elif decision.action is _Action.CONFLICT:
            self._fail(report, Failure.refused(job.index, "KeyOwnedByAnotherTask", decision.message, retryable=False))
            self._finish(job, State.FAILED, report)
        elif decision.action is _Action.ACCEPT:
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
        elif decision.action is _Action.UNKNOWN:
            self._unknown_earlier(job, record, report)
            self._finish(job, State.UNKNOWN, report)
        elif decision.action is _Action.RESUME:
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
            "%d sending (limit %.1f of %d, %d rate-limited answers), %d answered and storing; "
            "billed images %d, output tokens %d",
            report.prompts_done,
            report.total_prompts,
            report.generated,
            report.reused,
            len(report.failures),
            report.unknown_outcomes,
            states_now[State.SENDING.value],
            self.limit.limit,
            self.limit.maximum,
            self.limit.rate_limited,
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
        if not self.limit.acquire(lambda: self._stop_reason is not None):
            self._not_sent(job, report, self._stop_reason or "stopped")
            return True
        sent = False
        try:
            reason = self._stop_reason or self._dead_models.get(str(job.body.get("model")))
            if reason is not None:
                self._not_sent(job, report, reason)
                return True
            decision = self._claim(job)
            if decision.action is _Action.WAIT:
                self.limit.release()
                sent = True  # the slot is freed here
                return self._wait_for_owner(job, decision, report, wait_until)
            if decision.action is _Action.NOT_SENT:
                self._not_sent(job, report, decision.message)
                return True
            if decision.action is not _Action.GENERATE:
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
                self._write_record(job, states.RELEASED, reason=f"not sent: {reason}"[:300])
                self._settle(job, billed=0)
                self._not_sent(job, report, reason)
                return True
            sent = True
            self._send(job, transfers, report)
            return True
        finally:
            if not sent:
                self.limit.release()

    def _claim(self, job: PromptJob) -> _Decision:
        """Claim the prompt with a conditional write, or say why it is not to be sent."""
        while True:
            try:
                with self.ledger.lock(job.stem):
                    decision = self._decide(job, self.ledger.cached(job.stem))
                    if decision.action is not _Action.GENERATE:
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
                return _Decision(_Action.NOT_SENT, None, reason)

    def _wait_for_owner(self, job: PromptJob, decision: _Decision, report: BatchReport, wait_until: float) -> bool:
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
        started = time.monotonic()
        answered = False
        try:
            if job.body.get("stream"):
                self._generate_streamed(job, transfers, report)
                answered = True
                self.limit.release(time.monotonic() - started)
            else:
                result = self._generate(job)
                answered = True
                self.limit.release(time.monotonic() - started)
                self._answered(job, result, transfers, report)
        except SeedreamUnknownOutcomeError as error:
            self._settle(job, billed=None)
            self._unknown(job, error, transfers, report)
        except SeedreamAPIError as error:
            # A stream may fail after delivering images: those were made, and are billed.
            self._count_usage(job, {}, len(self._progress[job.index].received), report)
            self._refused(job, error, transfers, report)
        except Exception as error:  # a refused connection after every retry, an unreadable reference...
            self._settle(job, billed=0)
            self._write_record(job, states.REFUSED, reason=f"{type(error).__name__}: {error}"[:300])
            self._fail(report, Failure.refused(job.index, type(error).__name__, str(error)[:300]))
            self._release(job, report, complete=False)
        finally:
            if not answered:
                self.limit.release()

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
