"""What to do with each prompt given its ledger record: the one place of the reuse, recovery and ownership rules.

:class:`Decider` is asked once per prompt when a batch plans (from the records it listed), and
again when its claim of a prompt conflicts with another process's write (from the record read
back). A claim left by an owner that ended is recorded as ``unknown`` first, and then decided on.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_provider_seedream import ledger as ledger_states
from airflow_provider_seedream.ledger import LedgerConflict, Record
from airflow_provider_seedream.planning import PromptJob

if TYPE_CHECKING:
    from airflow_provider_seedream.batch import TaskLog
    from airflow_provider_seedream.ledger import Ledger
    from airflow_provider_seedream.storage import ImageStore

__all__ = ["Action", "Decider", "Decision"]


class Action(str, enum.Enum):
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
class Decision:
    """An :class:`Action`, the record it was decided on, and what to say about it."""

    action: Action
    record: Record | None = None
    message: str = ""


class Decider:
    """
    The rules that turn a prompt's ledger record into an :class:`Action`.

    :param ledger: the spend ledger of the task's prefix (liveness of owners; records written).
    :param store: where the images go (for the keys a conflict names).
    :param replace: generate again what is stored, once per DAG run.
    :param resolve_unknown: what an earlier unknown outcome becomes: ``fail``, ``retry`` or ``accept``.
    :param retry_unknown: whether the connection says to send unknown outcomes again (it overrides
        ``resolve_unknown``); read when needed, since it comes from the connection.
    :param log: where warnings go.
    """

    def __init__(
        self,
        ledger: Ledger,
        store: ImageStore,
        *,
        replace: bool,
        resolve_unknown: str,
        retry_unknown: Callable[[], bool],
        log: TaskLog,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.replace = replace
        self.resolve_unknown = resolve_unknown
        self.retry_unknown = retry_unknown
        self.log = log

    def decide(self, job: PromptJob, record: Record | None, present: set[str] | None = None) -> Decision:
        """What to do with ``job`` given its ledger record (``None``: it has none).

        :param present: the keys a listing found under the prefix, when the plan listed them: a
            stored image missing from it was deleted, and is generated again.
        """
        if record is None:
            return Decision(Action.GENERATE)
        me = self.ledger.owner
        owner = record.owned_by
        same = record.fingerprint == job.fingerprint
        if not same and not self.replace and owner is not None and not owner.same_task(me):
            where = self.store.key_for(job.stem, 0, job.extension)
            return Decision(
                Action.CONFLICT,
                record,
                (
                    f"key {job.stem!r} (s3://{self.store.bucket}/{where}) belongs to task {owner.task} "
                    f"(run {owner.run_id!r}), which made it from a different prompt or parameters; give this prompt "
                    "another key, or set replace=True to take the key over"
                ),
            )
        status = record.status
        if status in (ledger_states.CLAIMED, ledger_states.ANSWERED):
            if self.ledger.alive(owner):
                return Decision(Action.WAIT, record, f"claimed by {owner.describe() if owner else 'an unknown owner'}")
            if status == ledger_states.CLAIMED or not same:
                return self.dead_claim(job, record)
            if not record.linked_images:
                return self.expired(job, record)
            return Decision(Action.RESUME, record)
        if not same:
            if status == ledger_states.UNKNOWN:
                self.log.warning(
                    "Prompt %d: an earlier request for another prompt under key %r had an unknown outcome (%s); "
                    "the prompt changed, so it is generated",
                    job.index,
                    job.stem,
                    record.reason,
                )
            return Decision(Action.GENERATE, record)
        if status == ledger_states.STORED:
            run = owner.run_id if owner is not None else None
            if self.replace and run != me.run_id:
                return Decision(Action.GENERATE, record)
            if present is not None and any(image["key"] not in present for image in record.stored_images):
                self.log.warning(
                    "Prompt %d: an image of key %r was deleted from S3: it is generated again", job.index, job.stem
                )
                return Decision(Action.GENERATE, record)
            return Decision(Action.REUSE, record)
        if status == ledger_states.UNKNOWN:
            resolution = "retry" if self.retry_unknown() else self.resolve_unknown
            if resolution == "retry":
                self.log.warning(
                    "Prompt %d: its earlier outcome was unknown (%s); it is sent again, as asked",
                    job.index,
                    record.reason,
                )
                return Decision(Action.GENERATE, record)
            if resolution == "accept":
                return Decision(Action.ACCEPT, record)
            if record.linked_images:
                return Decision(Action.RESUME, record)
            return Decision(Action.UNKNOWN, record)
        if status == ledger_states.LOST:
            self.log.info("Prompt %d: accepted as lost in an earlier run; it is generated", job.index)
        return Decision(Action.GENERATE, record)

    def dead_claim(self, job: PromptJob, record: Record) -> Decision:
        owner = record.owned_by
        by = owner.describe() if owner else "an unknown owner"
        reason = f"left {record.status} by {by}, which ended before settling it"
        try:
            record = self.ledger.write(job.stem, ledger_states.UNKNOWN, reason=reason[:300])
        except LedgerConflict:
            record = self.ledger.load(job.stem) or record
            return self.decide(job, record)
        if record.fingerprint != job.fingerprint:
            return Decision(Action.GENERATE, record)
        return self.decide(job, record)

    def expired(self, job: PromptJob, record: Record) -> Decision:
        expired = record.expired_images
        when = max((float(image.get("expires_at", 0)) for image in expired), default=0.0)
        reason = (
            f"{len(expired)} image(s) paid for were never stored and their links expired at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(when))}"
        )
        try:
            record = self.ledger.write(job.stem, ledger_states.UNKNOWN, reason=reason)
        except LedgerConflict:
            record = self.ledger.load(job.stem) or record
        return self.decide(job, record)
