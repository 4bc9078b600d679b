"""A batch of prompts generated concurrently, each image stored once, failures collected."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_seedream.exceptions import NON_RETRYABLE_429_CODES, SeedreamAPIError, SeedreamError
from airflow_provider_seedream.references import Reference, Transport, resolve
from airflow_provider_seedream.storage import StorageError, StoredObject

if TYPE_CHECKING:
    from airflow_provider_seedream.hooks.seedream import SeedreamHook
    from airflow_provider_seedream.results import GeneratedImage, GenerationResult
    from airflow_provider_seedream.storage import ImageStore

# Fields that change how an image is delivered, not which image is made.
DELIVERY_FIELDS = frozenset({"response_format", "stream"})
ABORTING_STATUSES = frozenset({401, 403, 404})
PROGRESS_SECONDS = 10.0


def fingerprint(body: dict[str, Any], references: list[Reference]) -> str:
    """A stable digest of what decides the image: the body, with references by identity."""
    decisive = {key: value for key, value in body.items() if key not in DELIVERY_FIELDS}
    if references:
        decisive["image"] = [reference.identity for reference in references]
    canonical = json.dumps(decisive, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptJob:
    """One prompt, its validated request body and where its images go."""

    index: int
    prompt: str
    body: dict[str, Any]
    references: list[Reference]
    fingerprint: str
    extension: str


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

    def describe(self) -> str:
        where = f"prompt {self.prompt_index}" + (f" image {self.image_index}" if self.image_index is not None else "")
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

    @property
    def retryable(self) -> bool:
        """Whether a retry of the task may store more (some failure was a transient one)."""
        return any(failure.retryable for failure in self.failures)

    def summary(self) -> str:
        lines = [
            f"{len(self.failures)} failure(s) in a batch of {self.total_prompts} prompt(s); "
            f"{self.generated} image(s) generated and stored, {self.reused} reused. "
            "Images already stored are kept: a retry generates only what is missing."
        ]
        lines += [f"  - {failure.describe()}" for failure in self.failures[:50]]
        if len(self.failures) > 50:
            lines.append(f"  ... and {len(self.failures) - 50} more")
        return "\n".join(lines)


class BatchError(SeedreamError):
    """Some prompts or images of a batch failed; the others were stored."""

    def __init__(self, report: BatchReport) -> None:
        self.report = report
        super().__init__(report.summary())


class BatchRunner:
    """
    Run prompt jobs on a pool of threads sharing one hook (one pooled HTTP session) and one store.

    :param hook: the Seedream hook.
    :param store: where images land.
    :param s3_client: the client used to read ``s3://`` references.
    :param transport: how local and ``s3://`` references are sent.
    :param replace: generate even when the same images are already stored.
    :param max_concurrency: prompts in flight at once.
    :param log: where progress goes.
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
    ) -> None:
        self.hook = hook
        self.store = store
        self.s3_client = s3_client
        self.transport = transport
        self.replace = replace
        self.max_concurrency = max_concurrency
        self.log = log
        self._lock = threading.Lock()
        self._abort: str | None = None
        self._pending: set[int] = set()
        self._waiting = threading.BoundedSemaphore(2 * max_concurrency)

    def run(self, jobs: list[PromptJob]) -> BatchReport:
        """
        Run every job and return what was stored, reused and lost.

        Generation and transfer run on two pools of ``max_concurrency`` threads, so a
        generation slot is free for the next prompt as soon as its answer arrives; at most
        ``2 * max_concurrency`` answered prompts wait for their downloads and uploads.
        """
        report = BatchReport(total_prompts=len(jobs))
        self._pending = set() if self.replace else self.store.pending_prompts()
        # One event per prompt, when it is finished (stored, reused or failed); an exception
        # that escaped a job is raised here.
        finished: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

        def stored(future: Future[None]) -> None:
            finished.put(future.exception())

        def generated(future: Future[Future[None] | None]) -> None:
            error = future.exception()
            follow_up = None if error else future.result()
            if follow_up is None:
                finished.put(error)
            else:
                follow_up.add_done_callback(stored)

        last_log = time.monotonic()
        with (
            ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="seedream") as generation,
            ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="seedream-transfer") as transfer,
        ):
            for job in jobs:
                generation.submit(self._run_job, job, report, transfer).add_done_callback(generated)
            for _ in jobs:
                error = finished.get()
                if error is not None:
                    raise error
                report.prompts_done += 1
                now = time.monotonic()
                if now - last_log >= PROGRESS_SECONDS or report.prompts_done == len(jobs):
                    last_log = now
                    self._log_progress(report)
        report.records.sort(key=lambda record: (record["prompt_index"], record["image_index"]))
        report.failures.sort(key=lambda failure: (failure.prompt_index, failure.image_index or 0))
        return report

    def _log_progress(self, report: BatchReport) -> None:
        self.log.info(
            "Progress: %d/%d prompts done; %d images generated, %d reused, %d failures; "
            "billed images %d, output tokens %d",
            report.prompts_done,
            report.total_prompts,
            report.generated,
            report.reused,
            len(report.failures),
            report.billed_images,
            report.output_tokens,
        )

    def _fail(self, report: BatchReport, failure: Failure) -> None:
        with self._lock:
            report.failures.append(failure)
        log = self.log.error if failure.paid else self.log.warning
        log("%s", failure.describe())

    def _run_job(self, job: PromptJob, report: BatchReport, transfer: ThreadPoolExecutor) -> Future[None] | None:
        """Reuse, resume or generate one prompt; its images are stored by a job on ``transfer``."""
        if self._abort:
            self._fail(report, Failure(job.index, None, "generation", "NotAttempted", self._abort, paid=False, retryable=False))
            return
        try:
            if not self.replace and self._reuse_stored(job, report):
                if job.index in self._pending:
                    self.store.drop_pending(job.index)
                return
            earlier = self.store.load_pending(job.index, job.fingerprint) if job.index in self._pending else None
            if earlier is not None:
                self.log.info("Prompt %d: storing %d image(s) paid for by an earlier attempt", job.index, len(earlier.images))
                result, pending = earlier, True
            else:
                result = self._generate(job)
                with self._lock:
                    report.billed_images += int(result.usage.get("generated_images", len(result.succeeded)))
                    report.output_tokens += int(result.usage.get("output_tokens", 0))
                # Recorded before the slot is freed, so a kill loses at most max_concurrency paid answers.
                pending = self._save_pending(job, result)
        except SeedreamAPIError as error:
            if error.status in ABORTING_STATUSES or error.code in NON_RETRYABLE_429_CODES:
                self._abort = f"stopped after HTTP {error.status} {error.code or ''}".strip()
            code = error.code or f"HTTP{error.status}"
            self._fail(report, Failure(job.index, None, "generation", code, error.message, False, error.retryable))
            return
        except Exception as error:  # a broken connection after every retry, an S3 outage...
            self._fail(report, Failure(job.index, None, "generation", type(error).__name__, str(error)[:300], paid=False))
            return
        self._waiting.acquire()
        return transfer.submit(self._store_all, job, result, pending, report)

    def _store_all(self, job: PromptJob, result: GenerationResult, pending: bool, report: BatchReport) -> None:
        """Store every image of one answer, then forget its pending links unless a retry needs them."""
        try:
            self._store_answer(job, result, pending, report)
        finally:
            self._waiting.release()

    def _store_answer(self, job: PromptJob, result: GenerationResult, pending: bool, report: BatchReport) -> None:
        group = tuple(image.index for image in result.succeeded)
        keep_pending = False
        for image in result.images:
            if not image.ok:
                code, message = image.error_code or "Error", image.error_message or ""
                self._fail(report, Failure(job.index, image.index, "generation", code, message, False, retryable=False))
                continue
            keep_pending |= not self._store(job, result, image, group, report)
        if pending and not keep_pending:
            try:
                self.store.drop_pending(job.index)
            except Exception as error:
                self.log.warning("Prompt %d: could not remove its pending links: %s", job.index, type(error).__name__)

    def _reuse_stored(self, job: PromptJob, report: BatchReport) -> bool:
        """Report the prompt's images if they are all stored already from the same request."""
        stored = self.store.stored_group(job.index, job.fingerprint)
        if stored is None:
            return False
        with self._lock:
            report.reused += len(stored)
            report.records.extend(self._record(job, item, reused=True) for item in stored)
        return True

    def _save_pending(self, job: PromptJob, result: GenerationResult) -> bool:
        try:
            return self.store.save_pending(job.index, job.fingerprint, result)
        except Exception as error:
            self.log.warning("Prompt %d: could not record its links for a resume: %s", job.index, type(error).__name__)
            return False

    def _generate(self, job: PromptJob) -> GenerationResult:
        body = dict(job.body)
        if job.references:
            body["image"] = [resolve(reference, self.s3_client, self.transport) for reference in job.references]
        return self.hook.send_request(body)

    def _store(
        self, job: PromptJob, result: GenerationResult, image: GeneratedImage, group: tuple[int, ...], report: BatchReport
    ) -> bool:
        """Download and upload one image; ``False`` when it is worth trying again from its link."""
        key = self.store.key_for(job.index, image.index, job.extension)
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
                )
                self.store.upload(spool, stored, result.request_id)
        except SeedreamError as error:
            retryable = bool(getattr(error, "retryable", False))
            self._fail(report, Failure(job.index, image.index, "download", type(error).__name__, str(error), True, retryable))
            return not retryable
        except StorageError as error:
            if error.fatal:
                self._abort = f"stopped after S3 answered {error.code}"
            code = error.code or "StorageError"
            self._fail(report, Failure(job.index, image.index, "upload", code, str(error), True, not error.fatal))
            return False
        self.log.debug("Stored %s (%d bytes)", stored.s3_uri, stored.bytes)
        with self._lock:
            report.generated += 1
            report.records.append(self._record(job, stored, reused=False))
        return True

    @staticmethod
    def _record(job: PromptJob, stored: StoredObject, *, reused: bool) -> dict[str, Any]:
        record = asdict(stored)
        record.pop("group", None)
        record.update(s3_uri=stored.s3_uri, prompt=job.prompt, reused=reused)
        return record
