"""A batch of prompts: one work queue, explicit states, every paid image stored or recorded.

Every prompt moves through the states of :class:`State`::

    QUEUED -> SENDING -> ANSWERED -> STORED
                  |          '-----> FAILED   (paid for; its links are kept for a retry)
                  |---------------> FAILED   (refused: nothing was paid)
                  '---------------> UNKNOWN  (the answer was lost: it may have been billed)
    QUEUED -> NOT_SENT  (the batch stopped: interrupted, budget spent, key refused...)

``max_concurrency`` generation threads take prompts from one queue, under an adaptive
in-flight limit that backs off on rate limits (:mod:`concurrency`); as many transfer threads
download and upload the answered images. Before a generation thread frees its slot, the
answer's signed links are recorded in S3 (``_pending/<stem>.json``), so an image that was paid
for is always either stored or recoverable by a retry. A streamed group hands each image to
the transfer threads as it arrives, its link recorded first.

When the task is interrupted (execution timeout, SIGTERM through ``on_kill``, any exception
in the main thread) nothing more is sent: queued prompts become NOT_SENT at once, requests
in flight get ``grace_seconds`` to answer and be recorded, and those still waiting after
that are recorded as UNKNOWN. The threads are daemons: a request stuck in a read never
keeps the task's process alive.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import queue
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_seedream.concurrency import AdaptiveLimit
from airflow_provider_seedream.exceptions import (
    NON_RETRYABLE_429_CODES,
    SeedreamAPIError,
    SeedreamError,
    SeedreamUnknownOutcomeError,
)
from airflow_provider_seedream.references import Reference, Transport, resolve
from airflow_provider_seedream.results import GenerationResult
from airflow_provider_seedream.storage import StorageError, StoredObject

if TYPE_CHECKING:
    from airflow_provider_seedream.hooks.seedream import SeedreamHook
    from airflow_provider_seedream.results import GeneratedImage
    from airflow_provider_seedream.storage import ImageStore, PendingRecord

# Fields that change how an image is delivered, not which image is made.
DELIVERY_FIELDS = frozenset({"response_format", "stream"})
# Answers after which no other request of the batch can succeed.
ACCOUNT_STATUSES = frozenset({401, 403})
PROGRESS_SECONDS = 10.0
# Below the 5 s Airflow's supervisor waits between SIGTERM and SIGKILL.
GRACE_SECONDS = 3.0
_WAIT_SLICE = 0.5  # the main thread wakes this often, so signals and timeouts get through
# A presigned reference link is made again when half of its life is gone.
_REFERENCE_REUSE_SECONDS = 1800.0


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


def fingerprint(body: dict[str, Any], references: list[Reference]) -> str:
    """A stable digest of what decides the image: the body, with references by identity."""
    decisive = {key: value for key, value in body.items() if key not in DELIVERY_FIELDS}
    if references:
        decisive["image"] = [reference.identity for reference in references]
    canonical = json.dumps(decisive, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptJob:
    """One prompt, its validated request body and where its images go.

    :param index: the prompt's index (its position, plus ``prompt_index_offset``).
    :param stem: its key stem: its ``key``, or its index as ``00042``.
    :param requested_images: the most images its request can be billed for.
    """

    index: int
    prompt: str
    body: dict[str, Any]
    references: list[Reference]
    fingerprint: str
    extension: str
    stem: str = ""
    requested_images: int = 1

    def __post_init__(self) -> None:
        if not self.stem:
            object.__setattr__(self, "stem", f"{self.index:05d}")


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

    def describe(self) -> str:
        where = f"prompt {self.prompt_index}" + (f" image {self.image_index}" if self.image_index is not None else "")
        if self.unknown:
            return f"{where}: outcome unknown, may have been billed (not sent again): {self.message}"
        paid = " (paid for, NOT stored)" if self.paid else ""
        return f"{where}: {self.stage} failed: {self.code}: {self.message}{paid}"


@dataclass
class BatchReport:
    """What a batch stored, reused and lost."""

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
            f"{self.unknown_outcomes} outcome(s) unknown, {len(self.not_sent)} prompt(s) not sent. "
            "Images already stored are kept: a retry generates only what is missing."
        ]
        if self.stop_reason:
            lines.append(f"The batch stopped: {self.stop_reason}.")
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
    """What is left of one prompt's work: its request, then one transfer per answer or streamed image."""

    outstanding: int = 0
    complete: bool = True
    keep_record: bool = False
    recorded: bool = False
    streamed: bool = False
    settled: bool = False
    received: list[GeneratedImage] = field(default_factory=list)
    stored: list[StoredObject] = field(default_factory=list)


# What the transfer threads take: an answer (or one streamed image) to store.
_Transfer = tuple[PromptJob, GenerationResult]


class BatchRunner:
    """
    Run prompt jobs on daemon threads sharing one hook (one pooled HTTP session) and one store.

    :param hook: the Seedream hook.
    :param store: where images land.
    :param s3_client: the client used to read ``s3://`` references.
    :param transport: how local and ``s3://`` references are sent.
    :param replace: generate again even when the same images are stored (once per DAG run).
    :param max_concurrency: generation requests in flight at once.
    :param log: where progress goes.
    :param max_billed_images: the most images this run may pay for, requests in flight included.
    :param grace_seconds: how long an interrupted batch waits for requests in flight.
    """

    def __init__(
        self,
        hook: SeedreamHook,
        store: ImageStore,
        *,
        s3_client: Any,
        transport: Transport,
        replace: bool,
        max_concurrency: int,
        log: logging.Logger,
        max_billed_images: int | None = None,
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        self.hook = hook
        self.store = store
        self.s3_client = s3_client
        self.transport = transport
        self.replace = replace
        self.max_concurrency = max_concurrency
        self.log = log
        self.max_billed_images = max_billed_images
        self.grace_seconds = grace_seconds
        # Re-entrant: on_kill runs in a signal handler on the main thread, which may hold it.
        self._changed = threading.Condition(threading.RLock())
        self._states: dict[int, State] = {}
        self._job_locks: dict[int, threading.Lock] = {}
        self._stop_reason: str | None = None
        self._stop_retryable = True
        self._interrupted = False
        self._reserved = 0
        self._billed = 0
        self._dead_models: dict[str, str] = {}
        self._open = 0
        self._jobs: dict[int, PromptJob] = {}
        self._progress: dict[int, _Progress] = {}
        self.limit = AdaptiveLimit(max_concurrency)
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

    def run(self, jobs: list[PromptJob]) -> BatchReport:
        """Run every job and return what was stored, reused and lost."""
        report = BatchReport(total_prompts=len(jobs))
        self._jobs = {job.index: job for job in jobs}
        self._states = {job.index: State.QUEUED for job in jobs}
        self._job_locks = {job.index: threading.Lock() for job in jobs}
        self._progress = {job.index: _Progress() for job in jobs}
        self.hook.on_rate_limited = lambda error: self.limit.throttled()
        to_generate, to_resume = self._plan(jobs, report)
        with self._changed:
            self._open = len(to_generate) + len(to_resume)
        work: queue.SimpleQueue[PromptJob] = queue.SimpleQueue()
        for job in to_generate:
            work.put(job)
        transfers: queue.SimpleQueue[_Transfer | None] = queue.SimpleQueue()
        for job, result in to_resume:
            if self._states[job.index] is State.QUEUED:
                self._set_state(job, State.ANSWERED)
            self._progress[job.index].recorded = True
            self._enqueue(transfers, job, result)
        threads = [
            threading.Thread(target=self._generation_worker, args=(work, transfers, report), daemon=True, name=f"seedream-{n}")
            for n in range(min(self.max_concurrency, len(to_generate)))
        ] + [
            threading.Thread(target=self._transfer_worker, args=(transfers, report), daemon=True, name=f"seedream-transfer-{n}")
            for n in range(self.max_concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            try:
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

    # -- before anything is sent -----------------------------------------------------------------

    def _plan(self, jobs: list[PromptJob], report: BatchReport) -> tuple[list[PromptJob], list[tuple[PromptJob, GenerationResult]]]:
        """Find what is stored or recorded already; log the plan before any money is spent."""
        pending = self.store.pending_stems()
        to_generate: list[PromptJob] = []
        to_resume: list[tuple[PromptJob, GenerationResult]] = []
        unknown = 0
        with ThreadPoolExecutor(max_workers=min(32, 2 * self.max_concurrency), thread_name_prefix="seedream-plan") as pool:
            for job, stored, record in pool.map(lambda job: self._earlier_work(job, pending), jobs):
                if stored is not None:
                    report.reused += len(stored)
                    report.records.extend(self._record(job, item, reused=True) for item in stored)
                    self._set_state(job, State.STORED)
                    report.prompts_done += 1
                elif record is not None and record.status == "unknown" and not self.hook.retry_unknown_outcome:
                    unknown += 1
                    message = "an earlier try sent it and its answer was lost; set retry_unknown_outcome to send it again"
                    self._fail(report, Failure(job.index, None, "generation", "OutcomeUnknown", message, False, False, True))
                    self._set_state(job, State.UNKNOWN)
                    if record.result is not None and record.result.succeeded:
                        to_resume.append((job, record.result))  # the images that did arrive are known
                    else:
                        report.prompts_done += 1
                elif record is not None and record.status == "answered" and record.result is not None:
                    to_resume.append((job, record.result))
                else:
                    to_generate.append(job)
        most = sum(job.requested_images for job in to_generate)
        if self.max_billed_images is not None:
            most = min(most, self.max_billed_images)
        self.log.info(
            "Plan: %d prompt(s): %d already stored, %d to store from images paid for earlier, %d not sent again "
            "(outcome unknown), %d to generate; at most %d image(s) may be paid for (max_billed_images %s)",
            len(jobs),
            sum(1 for job in jobs if self._states[job.index] is State.STORED),
            len(to_resume),
            unknown,
            len(to_generate),
            most,
            self.max_billed_images if self.max_billed_images is not None else "not set",
        )
        return to_generate, to_resume

    def _earlier_work(self, job: PromptJob, pending: set[str]) -> tuple[PromptJob, list[StoredObject] | None, PendingRecord | None]:
        stored = self.store.stored_group(
            job.stem, job.fingerprint, job.extension, job.requested_images, same_run=self.replace
        )
        if stored is not None:
            if job.stem in pending:
                self._forget(job)
            return job, stored, None
        if job.stem not in pending:
            return job, None, None
        record = self.store.load_pending(job.stem)
        if record is None or record.fingerprint != job.fingerprint:
            return job, None, None
        if self.replace and record.run_id != self.store.run_id:
            return job, None, None
        return job, None, record

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
        for index in abandoned:
            self._abandon(index, report)
        answered = sum(1 for state in self._states.values() if state is State.ANSWERED)
        self.log.warning(
            "Stopped (%s): nothing more is sent; %d request(s) abandoned in flight (outcome unknown, recorded), "
            "%d answered prompt(s) not yet stored keep their links for a retry",
            self._stop_reason,
            len(abandoned),
            answered,
        )
        report.stop_reason, report.stop_retryable = self._stop_reason, False

    def _abandon(self, index: int, report: BatchReport) -> None:
        job = self._jobs[index]
        with self._job_locks[index]:
            if self._states[index] is not State.SENDING:
                return  # it answered meanwhile, and was recorded
            self._set_state(job, State.UNKNOWN)
            received = self._received(job)
            try:
                reason = "abandoned in flight when the task stopped"
                self.store.save_unknown(job.stem, job.fingerprint, job.requested_images, reason, received)
            except Exception as error:
                self.log.error("Prompt %d: could not record its unknown outcome: %s", index, type(error).__name__)
        self._fail(report, Failure(index, None, "generation", "OutcomeUnknown", "the task stopped while it was in flight", False, False, True))

    def _finished(self, report: BatchReport) -> BatchReport:
        report.records.sort(key=lambda record: (record["prompt_index"], record["image_index"]))
        report.failures.sort(key=lambda failure: (failure.prompt_index, failure.image_index or 0))
        report.stop_reason, report.stop_retryable = self._stop_reason, self._stop_retryable
        return report

    def _log_progress(self, report: BatchReport) -> None:
        with self._changed:
            states = Counter(state.value for state in self._states.values())
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
            states[State.SENDING.value],
            self.limit.limit,
            self.limit.maximum,
            self.limit.rate_limited,
            states[State.ANSWERED.value],
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
            if not self.limit.acquire(lambda: self._stop_reason is not None):
                self._not_sent(job, report, self._stop_reason or "stopped")
                continue
            with self._changed:
                reason = self._stop_reason or self._dead_models.get(str(job.body.get("model"))) or self._reserve(job)
                if reason is None:
                    self._progress[job.index].outstanding = 1  # the request itself
                    self._set_state(job, State.SENDING)
            if reason is not None:
                self.limit.release()
                self._not_sent(job, report, reason)
                continue
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
                self._settle(job, billed=0)
                self._refused(job, error, report)
            except Exception as error:  # a refused connection after every retry, an unreadable reference...
                self._settle(job, billed=0)
                self._fail(report, Failure(job.index, None, "generation", type(error).__name__, str(error)[:300], paid=False))
                self._release(job, report, complete=False)
            finally:
                if not answered:
                    self.limit.release()

    def _reserve(self, job: PromptJob) -> str | None:
        """Hold the job's images against the budget; the reason it may not be sent, if any."""
        if self.max_billed_images is not None and self._billed + self._reserved + job.requested_images > self.max_billed_images:
            reason = (
                f"max_billed_images={self.max_billed_images} reached: {self._billed} image(s) billed or possibly "
                f"billed, {self._reserved} in flight, prompt {job.index} may cost {job.requested_images} more"
            )
            self.stop(reason)
            return reason
        self._reserved += job.requested_images
        return None

    def _settle(self, job: PromptJob, *, billed: int | None) -> None:
        """Replace the job's reservation by what it cost (``None``: unknown, so count it all); once."""
        with self._changed:
            progress = self._progress[job.index]
            if progress.settled:
                return
            progress.settled = True
            self._reserved -= job.requested_images
            self._billed += job.requested_images if billed is None else billed

    def _count_usage(self, job: PromptJob, usage: dict[str, Any], received: int, report: BatchReport) -> None:
        billed = int(usage.get("generated_images", received))
        self._settle(job, billed=billed)
        with self._changed:
            report.billed_images += billed
            report.output_tokens += int(usage.get("output_tokens", 0))

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

    def _answered(
        self, job: PromptJob, result: GenerationResult, transfers: queue.SimpleQueue[_Transfer | None], report: BatchReport
    ) -> None:
        self._count_usage(job, result.usage, len(result.succeeded), report)
        if not result.images:
            message = "the endpoint answered 200 with no image and no error"
            self._fail(report, Failure(job.index, None, "generation", "EmptyAnswer", message, paid=False))
            self._release(job, report, complete=False)
            return
        self._set_state(job, State.ANSWERED)
        if any(image.spool is not None for image in result.images):
            # Decoded b64_json images have no link to come back to: store them before the slot is freed.
            complete, keep, stored = self._store_answer(job, result, report)
            self._release(job, report, complete=complete, keep_record=keep, stored=stored)
            return
        # Recorded before the slot is freed, so an interruption loses no paid link.
        with self._job_locks[job.index]:
            self._record_links(job, lambda: self.store.save_pending(job.stem, job.fingerprint, result))
        self._enqueue(transfers, job, result)
        self._release(job, report)

    def _generate_streamed(self, job: PromptJob, transfers: queue.SimpleQueue[_Transfer | None], report: BatchReport) -> None:
        """Hand each streamed image to the transfer threads as it arrives, its link recorded first.

        An interrupted task stops reading at once (closing the stream): the images received
        are kept, the rest of the group is an unknown outcome.
        """
        progress = self._progress[job.index]
        progress.streamed = True
        usage: dict[str, Any] = {}
        events = self.hook.stream_request(self._body(job), spool_images=True)
        try:
            for event in events:
                if event.completed:
                    usage = event.usage
                image = event.image
                if image is not None and not image.ok:
                    message = image.error_message or ""
                    failure = Failure(job.index, image.index, "generation", image.error_code or "Error", message, False, False)
                    self._fail(report, failure)
                    with self._changed:
                        progress.complete = False
                elif image is not None:
                    self._streamed_image(job, image, event.model, event.request_id, transfers)
                if self._interrupted:
                    raise SeedreamUnknownOutcomeError(
                        f"the task stopped while the group was streaming, after {len(progress.received)} image(s)"
                    )
        finally:
            events.close()  # an abandoned stream is closed, so the service sees the client leave
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
        with self._job_locks[job.index]:
            progress.received.append(image)
            if image.url:
                so_far = GenerationResult(images=list(progress.received), usage={}, model=model, request_id=request_id)
                if self._states[job.index] is State.UNKNOWN:  # abandoned by a stopped task: keep it unknown
                    reason = "abandoned in flight when the task stopped"
                    write = lambda: self.store.save_unknown(job.stem, job.fingerprint, job.requested_images, reason, so_far)  # noqa: E731
                else:
                    write = lambda: self.store.save_pending(job.stem, job.fingerprint, so_far)  # noqa: E731
                self._record_links(job, write)
        self._enqueue(transfers, job, GenerationResult(images=[image], usage={}, model=model, request_id=request_id))

    def _record_links(self, job: PromptJob, write: Any) -> None:
        try:
            where = write()
        except Exception as error:
            self.log.error("Prompt %d: could not record what it paid for: %s", job.index, type(error).__name__)
            self.stop("the record of paid images could not be written")
            return
        if where is not None:
            with self._changed:
                self._progress[job.index].recorded = True
        if where == "local":
            self.stop(
                f"S3 refused the record of paid links; it is kept under {self.store.local_folder} on this machine "
                "and nothing more is sent, so that no more is paid for than can be stored"
            )

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
        streamed = self._received(job)
        with self._job_locks[job.index]:
            self._record_links(
                job,
                lambda: self.store.save_unknown(
                    job.stem, job.fingerprint, job.requested_images, str(error), received or streamed
                ),
            )
            self._fail(report, Failure(job.index, None, "generation", "OutcomeUnknown", str(error)[:300], False, False, True))
            self._set_state(job, State.UNKNOWN)
        if received is not None:
            self._enqueue(transfers, job, received)
        self._release(job, report, complete=False)

    def _refused(self, job: PromptJob, error: SeedreamAPIError, report: BatchReport) -> None:
        code = error.code or f"HTTP{error.status}"
        if error.status in ACCOUNT_STATUSES or error.code in NON_RETRYABLE_429_CODES:
            self.stop(f"the service answered HTTP {error.status} {error.code or ''}".strip())
        elif error.status == 404:
            model = str(job.body.get("model"))
            with self._changed:
                self._dead_models.setdefault(model, f"model {model!r} answered HTTP 404 {error.code or ''}".strip())
        self._fail(report, Failure(job.index, None, "generation", code, error.message, False, error.retryable))
        self._release(job, report, complete=False)

    # -- transfer threads --------------------------------------------------------------------

    def _enqueue(self, transfers: queue.SimpleQueue[_Transfer | None], job: PromptJob, result: GenerationResult) -> None:
        with self._changed:
            self._progress[job.index].outstanding += 1
        transfers.put((job, result))

    def _transfer_worker(self, transfers: queue.SimpleQueue[_Transfer | None], report: BatchReport) -> None:
        while (item := transfers.get()) is not None:
            job, result = item
            try:
                complete, keep, stored = self._store_answer(job, result, report)
            except Exception as error:  # nothing may strand a prompt: report it and go on
                self._fail(report, Failure(job.index, None, "upload", type(error).__name__, str(error)[:300], True))
                complete, keep, stored = False, True, []
            self._release(job, report, complete=complete, keep_record=keep, stored=stored)

    def _store_answer(self, job: PromptJob, result: GenerationResult, report: BatchReport) -> tuple[bool, bool, list[StoredObject]]:
        """Store every image of one answer: whether all were, whether a link is worth keeping, what was stored."""
        # A streamed group is known whole only at its end: its images carry no group until it is sealed.
        group = () if self._progress[job.index].streamed else tuple(image.index for image in result.succeeded)
        complete, keep_record, stored = True, False, []
        for image in result.images:
            if not image.ok:
                code, message = image.error_code or "Error", image.error_message or ""
                self._fail(report, Failure(job.index, image.index, "generation", code, message, False, retryable=False))
                complete = False
                continue
            item, worth_keeping = self._store(job, result, image, group, report)
            complete &= item is not None
            keep_record |= worth_keeping
            if item is not None:
                stored.append(item)
        return complete, keep_record, stored

    def _release(
        self,
        job: PromptJob,
        report: BatchReport,
        *,
        complete: bool = True,
        keep_record: bool = False,
        stored: list[StoredObject] | None = None,
    ) -> None:
        """One part of a prompt's work is done; when it was the last, the prompt is finished."""
        with self._changed:
            progress = self._progress[job.index]
            progress.complete &= complete
            progress.keep_record |= keep_record
            progress.stored.extend(stored or [])
            progress.outstanding -= 1
            if progress.outstanding > 0:
                return
            unknown = self._states[job.index] is State.UNKNOWN
        if not unknown and not progress.keep_record:
            if progress.streamed and progress.stored:
                self._seal(job, progress.stored)
            if progress.recorded:
                self._forget(job)
        self._finish(job, State.UNKNOWN if unknown else State.STORED if progress.complete else State.FAILED, report)

    def _seal(self, job: PromptJob, stored: list[StoredObject]) -> None:
        """Write a streamed group's images into the first one's metadata, so a rerun can reuse the group."""
        try:
            self.store.seal_group(sorted(stored, key=lambda item: item.image_index))
        except Exception as error:
            self.log.warning("Prompt %d: could not record its group: %s", job.index, type(error).__name__)

    def _forget(self, job: PromptJob) -> None:
        try:
            self.store.drop_pending(job.stem)
        except Exception as error:
            self.log.warning("Prompt %d: could not remove its record: %s", job.index, type(error).__name__)

    def _store(
        self, job: PromptJob, result: GenerationResult, image: GeneratedImage, group: tuple[int, ...], report: BatchReport
    ) -> tuple[StoredObject | None, bool]:
        """Download and upload one image; what was stored, and whether its link is worth keeping."""
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
                    group=group,
                    run_id=self.store.run_id,
                )
                self.store.upload(spool, stored, result.request_id)
        except SeedreamError as error:
            retryable = bool(getattr(error, "retryable", False))
            self._fail(report, Failure(job.index, image.index, "download", type(error).__name__, str(error), True, retryable))
            return None, retryable
        except StorageError as error:
            if error.fatal:
                self.stop(f"S3 answered {error.code}")
            code = error.code or "StorageError"
            self._fail(report, Failure(job.index, image.index, "upload", code, str(error), True, True))
            return None, True
        finally:
            if image.spool is not None:
                image.spool[0].close()
        self.log.debug("Stored %s (%d bytes)", stored.s3_uri, stored.bytes)
        with self._changed:
            report.generated += 1
            report.records.append(self._record(job, stored, reused=False))
        return stored, False

    # -- bookkeeping -------------------------------------------------------------------------

    def _set_state(self, job: PromptJob, state: State) -> None:
        with self._changed:
            self._states[job.index] = state
            self._changed.notify_all()

    def _finish(self, job: PromptJob, state: State, report: BatchReport) -> None:
        with self._changed:
            self._states[job.index] = state
            self._open -= 1
            report.prompts_done += 1
            self._changed.notify_all()

    def _not_sent(self, job: PromptJob, report: BatchReport, reason: str) -> None:
        self._fail(report, Failure(job.index, None, "generation", "NotSent", reason, paid=False, retryable=False), quiet=True)
        self._finish(job, State.NOT_SENT, report)

    def _fail(self, report: BatchReport, failure: Failure, *, quiet: bool = False) -> None:
        with self._changed:
            report.failures.append(failure)
        if not quiet:
            log = self.log.error if failure.paid or failure.unknown else self.log.warning
            log("%s", failure.describe())

    @staticmethod
    def _record(job: PromptJob, stored: StoredObject, *, reused: bool) -> dict[str, Any]:
        record = asdict(stored)
        record.pop("group", None)
        # A keyed image reused from a run where the prompt sat elsewhere belongs to this position now.
        record.update(s3_uri=stored.s3_uri, prompt=job.prompt, prompt_index=job.index, reused=reused)
        return record
