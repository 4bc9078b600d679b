"""The spend ledger: one record per key stem in S3, the single truth of where each prompt is.

A prompt's record is ``<prefix>/_ledger/<stem>.json``. It is created with ``If-None-Match: *``
and changed only with ``If-Match: <etag>``, so two processes never both believe they own a
prompt: the one whose write loses reads the record again and follows what it says. Every
change goes through :meth:`Ledger.write`, which refuses any change :data:`TRANSITIONS` does not
allow (a bug, not a fault)::

    (none) -> claimed -> answered -> stored
      ^         |   |        '-----> unknown   (images missing: a cut stream, expired links)
      |         |   |-> stored     (b64 answers, stored before the request's slot is freed)
      |         |   |-> unknown    (the answer was lost, or its owner died: it may have been billed)
      |         |   |-> refused    (the service refused it: nothing billed)
      |         |   '-> released   (claimed, then the task stopped before sending it)
      '---------'  stored | refused | released | lost | unknown -> claimed  (a new request, on purpose)
                   unknown -> lost  (accepted as lost)

A claim is a lease: it names its owner (DAG, task, run, map index, try, and a token), and the
owner keeps ``_ledger/_owners/<token>.json`` fresh while it runs. A claim whose owner stopped
heartbeating, or an earlier try of the same task instance (Airflow runs one try at a time),
is dead: what it sent is an unknown outcome, never sent again unasked.

The task's budget (``max_billed_images``) is ``_ledger/_budget/<dag>/<task>/<run>.json``: each
request reserves its images from it with a conditional write before it is sent and settles
from the answer, so the cap holds across tries and map indexes of one DAG run.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from airflow_provider_seedream.exceptions import SeedreamError
from airflow_provider_seedream.storage import LEDGER_FOLDER, StorageError, client_error_code

log = logging.getLogger(__name__)

OWNERS_FOLDER = "_owners"
BUDGET_FOLDER = "_budget"
#: Each task instance's copy of its records as it left them, checked against the listing's etags.
INDEX_FOLDER = "_index"
_NOT_RECORDS = (OWNERS_FOLDER + "/", BUDGET_FOLDER + "/", INDEX_FOLDER + "/")
# An owner heartbeats this often; one silent for LEASE_SECONDS is taken as dead.
LEASE_SECONDS = 60.0
# When a link's own expiry cannot be read, the service's documented life of a link (24 hours).
DEFAULT_LINK_SECONDS = 24 * 3600.0
# A link is not used when less than this is left of its life.
LINK_MARGIN_SECONDS = 300.0
JSON = "application/json"
_CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})

CLAIMED, ANSWERED, STORED, UNKNOWN, REFUSED, RELEASED, LOST = (
    "claimed",
    "answered",
    "stored",
    "unknown",
    "refused",
    "released",
    "lost",
)
#: Every change a record may make; anything else raises :class:`IllegalTransition`.
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({CLAIMED}),
    CLAIMED: frozenset({ANSWERED, STORED, UNKNOWN, REFUSED, RELEASED}),
    ANSWERED: frozenset({ANSWERED, STORED, UNKNOWN}),
    UNKNOWN: frozenset({UNKNOWN, CLAIMED, LOST}),
    STORED: frozenset({CLAIMED}),
    REFUSED: frozenset({CLAIMED}),
    RELEASED: frozenset({CLAIMED}),
    LOST: frozenset({CLAIMED}),
}
#: States in which nobody is working on the prompt.
SETTLED = frozenset({STORED, UNKNOWN, REFUSED, RELEASED, LOST})


def _json(value: Any) -> bytes:
    """``value`` as the compact JSON the ledger writes: keys sorted, no spaces."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _failed(what: str, error: BaseException) -> StorageError:
    """S3 refused ``what``: the error names the exception's type and S3's code, and keeps the code."""
    code = client_error_code(error)
    return StorageError(f"{what}: {type(error).__name__} ({code})", code)


class IllegalTransition(SeedreamError, RuntimeError):
    """A change of a ledger record that the state diagram does not allow: a bug in the provider."""


class LedgerConflict(StorageError):
    """Another process changed the record since it was read; read it again and follow it."""


class BudgetExhausted(SeedreamError):
    """``max_billed_images`` would be passed by the next request."""


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: a task instance's try, and the token of its heartbeat."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    try_number: int = 1
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    host: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Owner | None:
        """The owner a record names (written from an :class:`Owner`); ``None`` when it names none."""
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})  # type: ignore[index]
        except (KeyError, TypeError):
            return None

    @property
    def task(self) -> str:
        """The task that owns keys: ``dag_id.task_id``."""
        return f"{self.dag_id}.{self.task_id}"

    def same_task(self, other: Owner) -> bool:
        return (self.dag_id, self.task_id) == (other.dag_id, other.task_id)

    def earlier_try_of(self, other: Owner) -> bool:
        """Whether this is an earlier try of ``other``'s task instance, so certainly over."""
        same = (self.dag_id, self.task_id, self.run_id, self.map_index) == (
            other.dag_id,
            other.task_id,
            other.run_id,
            other.map_index,
        )
        return same and self.try_number < other.try_number

    def describe(self) -> str:
        where = f"{self.task} in run {self.run_id!r}"
        if self.map_index >= 0:
            where += f" map index {self.map_index}"
        return f"{where} (try {self.try_number}, {self.host})"


def link_expiry(url: str, now: float | None = None) -> float:
    """When a signed link stops working, read from its own query (``X-Tos-*`` or ``X-Amz-*``)."""
    query = {key.lower(): values[-1] for key, values in parse_qs(urlsplit(url).query).items()}
    for vendor in ("x-tos", "x-amz"):
        seconds, signed = query.get(f"{vendor}-expires"), query.get(f"{vendor}-date")
        if seconds is None:
            continue
        try:
            life = float(seconds)
            start = calendar.timegm(time.strptime(signed, "%Y%m%dT%H%M%SZ")) if signed else None
        except (TypeError, ValueError):
            continue
        return (start if start is not None else (now or time.time())) + life
    if "expires" in query:  # the older query-string form: an absolute epoch
        try:
            return float(query["expires"])
        except ValueError:
            pass
    return (now or time.time()) + DEFAULT_LINK_SECONDS


@dataclass(frozen=True)
class Record:
    """One prompt's record in the ledger.

    :param images: one entry per image of the answer: ``index``, then ``url`` and ``expires_at``
        while it is only linked, or the stored object's ``key``, ``bytes``, ``sha256``,
        ``content_type``, ``size``, ``model`` once stored, or ``error``.
    :param billed: images the answer was billed for, when known.
    :param complete: the answer is whole (a plain answer, or a stream that completed).
    :param reason: why the record is ``unknown``, ``refused``, ``released`` or ``lost``.
    """

    stem: str
    status: str
    fingerprint: str
    owner: dict[str, Any]
    requested_images: int = 1
    images: tuple[dict[str, Any], ...] = ()
    billed: int | None = None
    complete: bool = False
    reason: str = ""
    model: str | None = None
    request_id: str | None = None
    at: float = 0.0
    history: tuple[str, ...] = ()

    @property
    def owned_by(self) -> Owner | None:
        return Owner.from_dict(self.owner)

    @property
    def stored_images(self) -> list[dict[str, Any]]:
        return [image for image in self.images if image.get("key")]

    @property
    def linked_images(self) -> list[dict[str, Any]]:
        """Images paid for and not stored whose link is still alive."""
        deadline = time.time() + LINK_MARGIN_SECONDS
        return [
            image
            for image in self.images
            if image.get("url") and not image.get("key") and float(image.get("expires_at", 0)) > deadline
        ]

    @property
    def expired_images(self) -> list[dict[str, Any]]:
        """Images paid for and not stored whose link died."""
        alive = {image["index"] for image in self.linked_images}
        return [
            image for image in self.images if image.get("url") and not image.get("key") and image["index"] not in alive
        ]

    def to_json(self) -> bytes:
        return _json(asdict(self))

    @classmethod
    def from_json(cls, body: bytes) -> Record:
        return cls.from_dict(json.loads(body))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        data = {**data, "images": tuple(data.get("images") or ()), "history": tuple(data.get("history") or ())}
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def record_stem(name: str) -> str | None:
    """The stem of a prompt's record from its name under ``_ledger/``; ``None`` for heartbeats, budgets and indexes."""
    if name.endswith(".json") and not name.startswith(_NOT_RECORDS):
        return name[: -len(".json")]
    return None


class Ledger:
    """
    The ledger of one task's prefix: read, claim and change records with conditional writes.

    The etag each write returned is kept, so this process's next change of the same record is
    conditional on nobody else having changed it meanwhile. Writes of one record are serialised
    by a lock of its own; no lock is shared between records.

    :param client: a boto3 S3 client whose calls are bounded (connect and read timeouts).
    :param bucket: the bucket.
    :param prefix: the task's key prefix.
    :param owner: who this process claims as.
    :param local_root: where records S3 refused are kept, so a retry on this machine finds them.
    :param lease_seconds: how long an owner may be silent before its claims are taken as dead.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        owner: Owner,
        *,
        local_root: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.owner = owner
        self.lease_seconds = lease_seconds
        root = local_root or os.environ.get("AIRFLOW_HOME") or "/tmp"
        self.local_folder = Path(root, "seedream-ledger", bucket, self.prefix or "_root")
        self._etags: dict[str, str | None] = {}
        self._records: dict[str, Record] = {}
        #: Stems whose latest change S3 did not take, kept on this machine by :meth:`keep_locally`.
        self.kept_locally: set[str] = set()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._stopped = threading.Event()

    # -- where things are ----------------------------------------------------------------------

    def _full(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def record_key(self, stem: str) -> str:
        return self._full(f"{LEDGER_FOLDER}/{stem}.json")

    def index_key(self) -> str:
        """This task instance's index: ``_ledger/_index/<dag_id>/<task_id>/<map_index>.json``."""
        owner = self.owner
        return self._full(f"{LEDGER_FOLDER}/{INDEX_FOLDER}/{owner.dag_id}/{owner.task_id}/{owner.map_index}.json")

    def _owner_key(self, token: str) -> str:
        return self._full(f"{LEDGER_FOLDER}/{OWNERS_FOLDER}/{token}.json")

    def lock(self, stem: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(stem, threading.Lock())

    # -- reading ------------------------------------------------------------------------------

    def scan(self) -> tuple[dict[str, str | None], set[str]]:
        """One listing of the prefix: each stem that has a record, with its etag, and the keys of every other object.

        A stem kept only on this machine (S3 refused its record) has the etag ``None``.
        """
        base = self._full("") if self.prefix else ""
        folder = self._full(LEDGER_FOLDER) + "/"
        stems: dict[str, str | None] = {}
        keys: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.startswith(folder):
                    keys.add(key)
                    continue
                stem = record_stem(key[len(folder) :])
                if stem is not None:
                    stems[stem] = item.get("ETag")
        if self.local_folder.is_dir():
            for path in self.local_folder.rglob("*.json"):
                stems[str(path.relative_to(self.local_folder))[: -len(".json")]] = None
        return stems, keys

    def read_index(self) -> dict[str, tuple[str, Record]]:
        """This task instance's index: stem -> (etag, record) as its last run left them; empty when unreadable."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.index_key())["Body"].read()
            entries = json.loads(body)["records"]
            return {stem: (entry["etag"], Record.from_dict(entry["record"])) for stem, entry in entries.items()}
        except Exception as error:  # missing, or not an index: every record is then read by itself
            if client_error_code(error) not in _MISSING_CODES:
                log.warning(
                    "The ledger index %s could not be read (%s); records are read one by one",
                    self.index_key(),
                    type(error).__name__,
                )
            return {}

    def adopt(self, stem: str, etag: str, record: Record) -> None:
        """Take ``record`` as ``stem``'s, its etag matched by a listing: the same bytes as a read would give."""
        with self._guard:
            self._etags[stem] = etag
            self._records[stem] = record

    def write_index(self, stems: list[str]) -> int:
        """Keep the records of ``stems`` as this process last read or wrote them in the index; return how many.

        A record kept only on this machine is left out: the next plan reads it by itself.

        :raises StorageError: S3 did not take the index (the next plan then reads records one by one).
        """
        with self._guard:
            entries = {
                stem: {"etag": self._etags[stem], "record": asdict(self._records[stem])}
                for stem in stems
                if self._etags.get(stem) and stem in self._records and stem not in self.kept_locally
            }
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.index_key(), Body=_json({"records": entries}), ContentType=JSON
            )
        except Exception as error:
            raise _failed("the ledger index was not written", error) from None
        return len(entries)

    def load(self, stem: str) -> Record | None:
        """Read a record from S3 (or this machine, where S3 refused it), remembering its etag."""
        local = self.local_folder / f"{stem}.json"
        etag: str | None
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.record_key(stem))
            body, etag = answer["Body"].read(), answer.get("ETag")
        except Exception as error:
            if client_error_code(error) not in _MISSING_CODES:
                raise _failed(f"the ledger record of {stem!r} could not be read", error) from None
            body, etag = b"", None
        if local.is_file():  # S3 refused a later change: this machine's copy is the newer one
            body = local.read_bytes()
        if not body:
            with self._guard:
                self._etags[stem] = None
                self._records.pop(stem, None)
            return None
        try:
            record = Record.from_json(body)
        except (ValueError, TypeError) as error:
            raise StorageError(f"the ledger record of {stem!r} is not a ledger record: {error}") from None
        with self._guard:
            self._etags[stem] = etag
            self._records[stem] = record
        return record

    def cached(self, stem: str) -> Record | None:
        with self._guard:
            return self._records.get(stem)

    # -- writing ------------------------------------------------------------------------------

    def write(self, stem: str, status: str, *, fingerprint: str | None = None, **changes: Any) -> Record:
        """
        Change ``stem``'s record to ``status`` with a conditional write; return the new record.

        :raises IllegalTransition: the state diagram does not allow the change.
        :raises LedgerConflict: another process changed the record since this one read it.
        :raises StorageError: S3 did not take the write (it is then not written).
        """
        with self._guard:
            current, etag = self._records.get(stem), self._etags.get(stem)
        before = current.status if current is not None else None
        if status not in TRANSITIONS[before]:
            raise IllegalTransition(f"ledger record {stem!r}: {before} -> {status} is not allowed")
        now = time.time()
        if status == CLAIMED:
            record = Record(
                stem=stem,
                status=CLAIMED,
                fingerprint=fingerprint or "",
                owner=asdict(self.owner),
                at=now,
                history=((current.history if current else ()) + (f"{before}->{status}",))[-20:],
                **changes,
            )
        else:
            assert current is not None
            record = replace(
                current,
                status=status,
                at=now,
                history=(*current.history, f"{before}->{status}")[-20:],
                **changes,
            )
        conditions = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=self.record_key(stem),
                Body=record.to_json(),
                ContentType=JSON,
                **conditions,
            )
        except Exception as error:
            code = client_error_code(error)
            if code in _CONFLICT_CODES or (etag and code in _MISSING_CODES):
                raise LedgerConflict(f"the ledger record of {stem!r} was changed by another process", code) from None
            raise _failed(f"the ledger record of {stem!r} was not written", error) from None
        with self._guard:
            self._etags[stem] = answer.get("ETag")
            self._records[stem] = record
        local = self.local_folder / f"{stem}.json"
        if local.exists():
            local.unlink()
        return record

    def keep_locally(self, stem: str, status: str, **changes: Any) -> Path:
        """Keep a change S3 refused on this machine, so a retry here still finds the paid links."""
        with self._guard:
            current = self._records.get(stem)
        assert current is not None
        record = replace(current, status=status, at=time.time(), **changes)
        path = self.local_folder / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_bytes(record.to_json())
        partial.replace(path)
        with self._guard:
            self._records[stem] = record
            self.kept_locally.add(stem)
        return path

    # -- leases -------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Announce this owner, then keep its heartbeat fresh until :meth:`stop_heartbeat`."""
        self._beat()
        threading.Thread(target=self._beat_forever, daemon=True, name="seedream-ledger-heartbeat").start()

    def stop_heartbeat(self) -> None:
        """This owner is done: its claims are settled, so its heartbeat goes."""
        self._stopped.set()
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._owner_key(self.owner.token))
        except Exception as error:
            log.warning("Could not remove the ledger heartbeat: %s", type(error).__name__)

    def _beat(self) -> None:
        body = _json({"owner": asdict(self.owner), "at": time.time()})
        self.client.put_object(Bucket=self.bucket, Key=self._owner_key(self.owner.token), Body=body, ContentType=JSON)

    def _beat_forever(self) -> None:
        while not self._stopped.wait(self.lease_seconds / 4):
            try:
                self._beat()
            except Exception as error:  # the lease lapses if S3 stays away; claims then read as dead
                log.warning("Could not renew the ledger heartbeat: %s", type(error).__name__)

    def alive(self, owner: Owner | None) -> bool:
        """Whether the owner of a claim may still be working on it."""
        if owner is None:
            return False
        if owner.token == self.owner.token:
            return True
        if owner.earlier_try_of(self.owner):
            return False  # Airflow runs one try of a task instance at a time: that one is over
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._owner_key(owner.token))["Body"].read()
            beat = float(json.loads(body).get("at", 0))
        except Exception as error:
            # An owner announces itself before its first claim and leaves when it is done:
            # no heartbeat means it ended. When S3 cannot tell, assume alive: nothing is sent twice.
            return client_error_code(error) not in _MISSING_CODES
        return time.time() - beat < self.lease_seconds


class Budget:
    """
    ``max_billed_images`` of one task in one DAG run, kept in S3 so every try and map index shares it.

    :meth:`reserve` holds a request's images before it is sent; :meth:`settle` replaces the hold by
    what the answer was billed for (all of it when the outcome is unknown). A hold whose try died
    stays counted: it may have been billed.
    """

    def __init__(self, client: Any, bucket: str, key: str, limit: int, token: str) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.limit = limit
        self.token = token
        self._lock = threading.Lock()

    @classmethod
    def for_task(cls, ledger: Ledger, limit: int) -> Budget:
        owner = ledger.owner
        name = "/".join(quote(part, safe="") for part in (owner.dag_id, owner.task_id, owner.run_id))
        return cls(
            ledger.client,
            ledger.bucket,
            ledger._full(f"{LEDGER_FOLDER}/{BUDGET_FOLDER}/{name}.json"),
            limit,
            owner.token,
        )

    def read(self) -> tuple[dict[str, Any], str | None]:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
            return json.loads(answer["Body"].read()), answer.get("ETag")
        except Exception as error:
            if client_error_code(error) in _MISSING_CODES:
                return {"billed": 0, "holds": {}}, None  # every state this class writes has both
            raise _failed("the budget record could not be read", error) from None

    @staticmethod
    def spent(state: dict[str, Any]) -> tuple[int, int]:
        """Images billed, and images held by requests in flight or of unknown outcome."""
        return int(state["billed"]), sum(int(value) for value in state["holds"].values())

    def _change(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        with self._lock:  # this process's changes one at a time; other processes by the etag
            for attempt in range(50):
                state, etag = self.read()
                change(state)
                conditions = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
                try:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=self.key,
                        Body=_json(state),
                        ContentType=JSON,
                        **conditions,
                    )
                    return state
                except Exception as error:
                    if client_error_code(error) not in _CONFLICT_CODES:
                        raise _failed("the budget record was not written", error) from None
                    time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
            raise StorageError("the budget record kept changing under this task: nothing more is sent")

    def reserve(self, claim: str, images: int) -> None:
        """Hold ``images`` for ``claim``, or raise :class:`BudgetExhausted` without holding anything."""

        def hold(state: dict[str, Any]) -> None:
            billed, held = self.spent(state)
            if billed + held + images > self.limit:
                raise BudgetExhausted(
                    f"max_billed_images={self.limit} reached for this task in this DAG run: {billed} image(s) billed, "
                    f"{held} held by requests in flight or of unknown outcome, the next request may cost {images} more"
                )
            state["holds"][f"{self.token}:{claim}"] = images

        self._change(hold)

    def settle(self, claim: str, billed: int | None) -> None:
        """Replace ``claim``'s hold by what it was billed for; ``None`` (unknown) keeps it all."""

        def account(state: dict[str, Any]) -> None:
            held = state["holds"].pop(f"{self.token}:{claim}", None)
            if held is None:
                return
            state["billed"] = int(state["billed"]) + (int(held) if billed is None else int(billed))

        self._change(account)

    def describe(self) -> str:
        state, _ = self.read()
        billed, held = self.spent(state)
        left = max(0, self.limit - billed - held)
        return f"budget {self.limit} image(s) for this task in this run: {billed} billed, {held} held, {left} left"
