"""Batches: jobs submitted together, one handle on all of them, and one
webhook when the last of them has ended.

A batch is created in ONE transaction with all its jobs (each through the job
store's own insert path, :func:`storage.jobs.submissions.insert_new_job`), so
a batch is all or nothing: an item whose asset is missing, a quota the whole
batch would exceed, an Idempotency-Key met by a racing request: no job, no
batch. Its state is its jobs' state: counts, progress and times are read
from them, never kept twice. Two writes are the batch's own, each one
conditional:

- :meth:`BatchStore.settle`: once no job of it is active, ``finished_at`` is
  set and its webhook armed, in one UPDATE that lands once (``finished_at IS
  NULL``): called by the worker after each job of a batch ends, and by the
  sweeper for batches whose last job ended while its worker died;
- the webhook's claim and record: the state machine of a job's webhook
  (:class:`storage.deliveries.WebhookOutbox`) on the batches.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    exc,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from storage.assets import AssetNotFound
from storage.cursors import decode_cursor, encode_cursor
from storage.deliveries import WebhookOutbox
from storage.errors import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    QuotaExceeded,
    StorageError,
)
from storage.jobs import JobStore
from storage.jobs.queries import files_of
from storage.jobs.submissions import check_quota, expire_idempotency_key, insert_new_job
from storage.jobs.values import DEFAULT_ATTEMPT_LIMIT, Job, Page, is_job_id, utcnow
from storage.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Stage,
    Status,
    WebhookStatus,
    batch_deliveries_table,
    batches_table,
    jobs_table,
)

#: Most jobs one batch may hold.
MAX_BATCH_JOBS = 500
MAX_LIST_LIMIT = 500

_ACTIVE = [s.value for s in ACTIVE_STATUSES]
_FINAL = [s.value for s in FINAL_STATUSES]


class BatchNotFound(StorageError):
    """No such batch."""


class BatchAssetNotFound(AssetNotFound):
    """A job of the batch names an asset its tenant does not have (deleted
    meanwhile): nothing was created."""

    def __init__(self, index: int) -> None:
        super().__init__(f"job {index} of the batch names an asset its tenant does not have")
        self.index = index


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job of a batch to create: what :meth:`JobStore.create` takes for one."""

    deck: dict[str, Any]
    title: str
    callback_url: str | None = None
    asset_ids: Sequence[str] = ()
    #: ``None``: unset, so 0 (a batch's caller checks the ceiling first).
    priority: int | None = 0
    run_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A snapshot of one batch and of its jobs' state."""

    id: str
    owner: str
    created_at: datetime
    total: int
    finished_at: datetime | None
    callback_url: str | None
    idempotency_key: str | None
    request_hash: str | None
    webhook_status: str | None
    webhook_attempts: int
    webhook_first_at: datetime | None
    webhook_next_at: datetime | None
    webhook_last_code: int | None
    webhook_last_error: str | None
    webhook_delivered_at: datetime | None
    #: Its jobs by status (every status, 0 where none); deleted jobs are in none.
    counts: dict[str, int] = field(default_factory=dict)
    #: Mean progress of its jobs, a final job counting as 1.
    progress: float = 0.0
    #: When its first job started, and when its last final job ended.
    started_at: datetime | None = None
    last_completed_at: datetime | None = None

    @property
    def active(self) -> int:
        """Its jobs not final yet."""
        return sum(self.counts.get(s.value, 0) for s in ACTIVE_STATUSES)


@dataclass(frozen=True, slots=True)
class BatchPage:
    """One page of a tenant's batches and the cursor of the next, if any."""

    batches: list[Batch]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class BatchCancel:
    """What a batch cancel did to its jobs."""

    batch: Batch
    cancelled: int  # waiting jobs, cancelled at once
    flagged: int  # processing jobs, stopping within a heartbeat
    unchanged: int  # already final (or ended meanwhile, or deleted)
    settled: bool  # the cancel ended the batch: its webhook is due
    #: Jobs it cancelled that have a callback URL: their webhooks are due now.
    webhooks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchWebhookClaim:
    """A batch webhook attempt that the caller alone now delivers."""

    batch: Batch
    attempt: int


def _batch(row: Any, stats: dict[str, Any] | None = None) -> Batch:
    stats = stats or {}
    return Batch(
        id=row["id"],
        owner=row["owner"],
        created_at=row["created_at"],
        total=row["total"],
        finished_at=row["finished_at"],
        callback_url=row["callback_url"],
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        webhook_status=row["webhook_status"],
        webhook_attempts=row["webhook_attempts"],
        webhook_first_at=row["webhook_first_at"],
        webhook_next_at=row["webhook_next_at"],
        webhook_last_code=row["webhook_last_code"],
        webhook_last_error=row["webhook_last_error"],
        webhook_delivered_at=row["webhook_delivered_at"],
        counts=stats.get("counts") or {s.value: 0 for s in Status},
        progress=stats.get("progress", 1.0 if row["finished_at"] is not None else 0.0),
        started_at=stats.get("started_at"),
        last_completed_at=stats.get("last_completed_at"),
    )


def _stats(conn: Connection, batch_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Counts by status, progress and times of each batch's jobs: one grouped query."""
    if not batch_ids:
        return {}
    jobs = jobs_table.c
    done = case((jobs.status.in_(_FINAL), literal(1.0)), else_=jobs.progress)
    rows = conn.execute(
        select(
            jobs.batch_id,
            jobs.status,
            func.count().label("n"),
            func.sum(done).label("progress"),
            func.min(jobs.started_at).label("started_at"),
            func.max(jobs.completed_at).label("completed_at"),
        )
        .where(jobs.batch_id.in_(list(batch_ids)))
        .group_by(jobs.batch_id, jobs.status)
    ).mappings()
    out: dict[str, dict[str, Any]] = {}
    sums: dict[str, float] = {}
    for r in rows:
        s = out.setdefault(
            r["batch_id"],
            {
                "counts": {st.value: 0 for st in Status},
                "started_at": None,
                "last_completed_at": None,
            },
        )
        s["counts"][r["status"]] = int(r["n"])
        sums[r["batch_id"]] = sums.get(r["batch_id"], 0.0) + float(r["progress"] or 0.0)
        # Aggregates over UTCDateTime come back as the driver gives them.
        started, completed = _utc(r["started_at"]), _utc(r["completed_at"])
        if started is not None and (s["started_at"] is None or started < s["started_at"]):
            s["started_at"] = started
        if r["status"] in _FINAL and completed is not None:
            if s["last_completed_at"] is None or completed > s["last_completed_at"]:
                s["last_completed_at"] = completed
    for batch_id, s in out.items():
        present = sum(s["counts"].values())
        s["progress"] = round(sums[batch_id] / present, 4) if present else 1.0
    return out


def _read_batch(conn: Connection, batch_id: str) -> Batch | None:
    """The batch with its jobs' counts, in ``conn``'s transaction; ``None`` if there is none."""
    row = (
        conn.execute(select(batches_table).where(batches_table.c.id == batch_id)).mappings().first()
    )
    return None if row is None else _batch(row, _stats(conn, [batch_id]).get(batch_id))


def _batch_claim(conn: Connection, batch_id: str, attempt: int) -> BatchWebhookClaim | None:
    batch = _read_batch(conn, batch_id)
    return None if batch is None else BatchWebhookClaim(batch, attempt)


def _utc(value: Any) -> datetime | None:
    """A timestamp read through an aggregate: SQLite gives a string, naive."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value  # type: ignore[no-any-return]


def _no_active_job() -> Any:
    """No job of the batch (the row of ``batches`` in the statement) is active."""
    return ~exists(
        select(jobs_table.c.id).where(
            jobs_table.c.batch_id == batches_table.c.id, jobs_table.c.status.in_(_ACTIVE)
        )
    )


def _settled_values(now: datetime) -> dict[str, Any]:
    """``finished_at`` (when its last job ended) and its webhook armed, if it has a URL."""
    has_callback = batches_table.c.callback_url.is_not(None)
    last_end = (
        select(func.max(jobs_table.c.completed_at))
        .where(jobs_table.c.batch_id == batches_table.c.id)
        .scalar_subquery()
    )
    return {
        "finished_at": func.coalesce(last_end, now),
        "webhook_status": case((has_callback, literal(WebhookStatus.PENDING.value)), else_=None),
        "webhook_next_at": case((has_callback, now), else_=None),
        "webhook_first_at": case((has_callback, now), else_=None),
        "webhook_attempts": 0,
    }


class BatchStore:
    """Every read and write of batches; jobs are written through ``jobs``."""

    def __init__(self, jobs: JobStore) -> None:
        """On the job store's database; cancels go through the job store."""
        self.jobs = jobs
        self.db = jobs.db
        # The batch webhook: the state machine of a job's, on the batches.
        self.outbox = WebhookOutbox(
            self.db,
            batches_table,
            sent_at="webhook_sent_at",
            deliveries=batch_deliveries_table,
            delivery_key="batch_id",
            claim_of=_batch_claim,
        )
        #: Batches whose webhook is due and whose task was not sent since it
        #: fell due (or was sent long ago and never taken), marked sent now.
        self.due_webhooks = self.outbox.due
        #: The next delivery attempt of a batch's webhook, if it is due.
        self.claim_webhook = self.outbox.claim
        #: How an attempt went and what comes next, fenced on the attempt.
        self.record_webhook = self.outbox.record
        #: Every recorded delivery attempt of a batch's webhook, oldest first.
        self.deliveries = self.outbox.deliveries

    # -- create ------------------------------------------------------------

    def create(
        self,
        items: Sequence[NewJob],
        *,
        owner: str,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        attempt_limit: int = DEFAULT_ATTEMPT_LIMIT,
        max_active: int | None = None,
    ) -> tuple[Batch, list[Job], bool]:
        """Record a batch of ``items`` and all its jobs in one transaction;
        return the batch, its jobs (in order) and whether it is new.

        All or nothing: :class:`BatchAssetNotFound` (an item's asset is gone),
        :class:`~storage.errors.QuotaExceeded` (``owner``'s active jobs plus
        the batch's would pass ``max_active``; counted and inserted under the
        same per-owner lock as a single submission) leave no job and no batch.
        With an ``idempotency_key`` used in the last 24 hours for the same
        ``request_hash``, the existing batch comes back (``False``); with
        another hash, :class:`IdempotencyConflict`. Racing requests with one
        key meet at the unique index: one batch.
        """
        if not 1 <= len(items) <= MAX_BATCH_JOBS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_JOBS} jobs")
        now = utcnow()
        if idempotency_key is not None:
            self._expire_idempotency_key(owner, idempotency_key, now)
            replay = self._replay(owner, idempotency_key, request_hash)
            if replay is not None:
                return replay
        batch_id = str(uuid.uuid4())
        try:
            with self.db.transaction() as conn:
                if max_active is not None:
                    check_quota(conn, owner, max_active, incoming=len(items))
                conn.execute(
                    insert(batches_table).values(
                        id=batch_id,
                        owner=owner,
                        created_at=now,
                        total=len(items),
                        idempotency_key=idempotency_key,
                        request_hash=request_hash,
                        callback_url=callback_url,
                    )
                )
                jobs = self._insert_jobs(conn, batch_id, owner, items, attempt_limit, now)
        except (exc.IntegrityError, QuotaExceeded) as error:
            # A racing request with the same key committed first: its batch.
            replay = None
            if idempotency_key is not None:
                replay = self._replay(owner, idempotency_key, request_hash)
            if replay is not None:
                return replay
            if isinstance(error, QuotaExceeded):
                raise
            raise StorageError(f"could not record the batch: {error.orig}") from error
        # No invalidation of the new jobs: new ids were never cached nor
        # listened to (see JobStore.create).
        return self.get(batch_id), jobs, True

    def _insert_jobs(
        self,
        conn: Connection,
        batch_id: str,
        owner: str,
        items: Sequence[NewJob],
        attempt_limit: int,
        now: datetime,
    ) -> list[Job]:
        jobs: list[Job] = []
        for index, item in enumerate(items):
            # Distinct, rising times: the batch's jobs list in submission order.
            created = now + timedelta(microseconds=index)
            scheduled = item.run_at is not None and item.run_at > now
            values = {
                "id": str(uuid.uuid4()),
                "status": (Status.SCHEDULED if scheduled else Status.QUEUED).value,
                "stage": Stage.QUEUED.value,
                "progress": 0.0,
                "attempts": 0,
                "title": item.title,
                "deck": item.deck,
                "idempotency_key": None,
                "request_hash": None,
                "attempt_limit": attempt_limit,
                "owner": owner,
                "callback_url": item.callback_url,
                "created_at": created,
                "queued_at": None if scheduled else created,
                "dispatched_at": None if scheduled else created,
                "priority": item.priority,
                "run_at": item.run_at,
                "batch_id": batch_id,
            }
            try:
                jobs.append(insert_new_job(conn, values, item.asset_ids))
            except AssetNotFound as gone:
                raise BatchAssetNotFound(index) from gone
        return jobs

    def _replay(
        self, owner: str, key: str, request_hash: str | None
    ) -> tuple[Batch, list[Job], bool] | None:
        with self.db.transaction(single=True) as conn:
            batch_id = conn.execute(
                select(batches_table.c.id).where(
                    batches_table.c.owner == owner, batches_table.c.idempotency_key == key
                )
            ).scalar()
        if batch_id is None:
            return None
        batch = self.get(batch_id)
        if batch.request_hash != request_hash:
            raise IdempotencyConflict()
        return batch, [], False

    def _expire_idempotency_key(self, owner: str, key: str, now: datetime) -> None:
        """Free ``key`` if the batch holding it was submitted over 24 hours ago."""
        with self.db.transaction(single=True) as conn:
            expire_idempotency_key(conn, batches_table, owner, key, now)

    # -- reads -------------------------------------------------------------

    def get(self, batch_id: str, *, owner: str | None = None) -> Batch:
        """The batch with its jobs' counts; :class:`BatchNotFound` if there
        is none, or if ``owner`` is given and it is someone else's."""
        if not is_job_id(batch_id):
            raise BatchNotFound()
        with self.db.transaction() as conn:
            batch = _read_batch(conn, batch_id)
        if batch is None or (owner is not None and batch.owner != owner):
            raise BatchNotFound()
        return batch

    def list_batches(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> BatchPage:
        """Batches newest first, of one ``owner`` (or all), ``limit`` at a time."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        b = batches_table.c
        query = select(batches_table)
        if owner is not None:
            query = query.where(b.owner == owner)
        if cursor is not None:
            created, last_id = decode_cursor(cursor)
            query = query.where(
                or_(b.created_at < created, and_(b.created_at == created, b.id < last_id))
            )
        query = query.order_by(b.created_at.desc(), b.id.desc()).limit(limit + 1)
        with self.db.transaction() as conn:
            rows = list(conn.execute(query).mappings())
            page = rows[:limit]
            stats = _stats(conn, [r["id"] for r in page])
        batches = [_batch(r, stats.get(r["id"])) for r in page]
        more = len(rows) > limit
        return BatchPage(
            batches, encode_cursor(batches[-1].created_at, batches[-1].id) if more else None
        )

    def list_jobs(
        self,
        batch_id: str,
        *,
        owner: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """The batch's jobs in submission order, optionally of one status,
        ``limit`` at a time (keyset paging); :class:`BatchNotFound` as :meth:`get`."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        if not is_job_id(batch_id):
            raise BatchNotFound()
        jobs = jobs_table.c
        query = select(jobs_table).where(jobs.batch_id == batch_id)
        if status is not None:
            query = query.where(jobs.status == status.value)
        if cursor is not None:
            created, last_id = decode_cursor(cursor)
            query = query.where(
                or_(jobs.created_at > created, and_(jobs.created_at == created, jobs.id > last_id))
            )
        query = query.order_by(jobs.created_at, jobs.id).limit(limit + 1)
        with self.db.transaction() as conn:
            found = conn.execute(
                select(batches_table.c.owner).where(batches_table.c.id == batch_id)
            ).scalar()
            if found is None or (owner is not None and found != owner):
                raise BatchNotFound()
            rows = list(conn.execute(query).mappings())
            page = rows[:limit]
            files = files_of(conn, page)
        out = [Job.from_row(r, files.get(r["id"], [])) for r in page]
        more = len(rows) > limit
        return Page(out, encode_cursor(out[-1].created_at, out[-1].id) if more else None)

    # -- cancel and settle --------------------------------------------------

    def cancel(self, batch_id: str, *, owner: str | None = None) -> BatchCancel:
        """Cancel every job of the batch that is not final, each exactly as
        ``POST /v1/jobs/{id}/cancel`` does (:meth:`JobStore.request_cancel`):
        a waiting job ends cancelled at once, a processing one is flagged and
        its worker stops within a heartbeat. Settles the batch if that ended it."""
        self.get(batch_id, owner=owner)  # BatchNotFound
        with self.db.transaction(single=True) as conn:
            ids = list(
                conn.execute(
                    select(jobs_table.c.id)
                    .where(jobs_table.c.batch_id == batch_id, jobs_table.c.status.in_(_ACTIVE))
                    .order_by(jobs_table.c.created_at, jobs_table.c.id)
                ).scalars()
            )
        cancelled = flagged = 0
        webhooks: list[str] = []
        for job_id in ids:
            try:
                job = self.jobs.request_cancel(job_id, owner=owner)
            except (InvalidTransition, JobNotFound):
                continue  # ended or deleted since the read: nothing to stop
            if job.status is Status.CANCELLED:
                cancelled += 1
                if job.callback_url is not None:
                    webhooks.append(job.id)
            elif job.cancel_requested:
                flagged += 1
        settled = self.settle(batch_id)
        batch = self.get(batch_id)
        total_present = sum(batch.counts.values())
        return BatchCancel(
            batch,
            cancelled,
            flagged,
            max(total_present - cancelled - flagged, 0),
            settled,
            tuple(webhooks),
        )

    def settle(self, batch_id: str) -> bool:
        """If no job of the batch is active: set ``finished_at`` and arm its
        webhook (if it has a callback URL), in one conditional write that
        lands once; ``True`` for the call that settled it."""
        now = utcnow()
        with self.db.transaction(single=True) as conn:
            row = conn.execute(
                update(batches_table)
                .where(
                    batches_table.c.id == batch_id,
                    batches_table.c.finished_at.is_(None),
                    _no_active_job(),
                )
                .values(**_settled_values(now))
                .returning(batches_table.c.id)
            ).first()
        return row is not None

    def settle_finished(self, *, limit: int = 100) -> list[str]:
        """The sweeper's fallback: settle batches whose jobs are all final but
        that nobody settled (the last job's worker died before it could);
        return their ids. Unfinished batches are few (``ix_batches_finished_at``)."""
        now = utcnow()
        b = batches_table.c
        with self.db.transaction() as conn:
            ids = list(
                conn.execute(
                    select(b.id)
                    .where(b.finished_at.is_(None), _no_active_job())
                    .order_by(b.created_at)
                    .limit(limit)
                ).scalars()
            )
            if not ids:
                return []
            return list(
                conn.execute(
                    update(batches_table)
                    .where(b.id.in_(ids), b.finished_at.is_(None), _no_active_job())
                    .values(**_settled_values(now))
                    .returning(b.id)
                ).scalars()
            )

    def delete_finished_older_than(
        self, days: float, *, now: datetime | None = None, limit: int = 500
    ) -> int:
        """Retention: delete up to ``limit`` batches that finished more than
        ``days`` ago, whose webhook is not still being delivered and none of
        whose jobs is active again (a retry); their delivery records go with
        them, and jobs that are left forget their batch. The jobs themselves
        age out on their own (``SLIDEFARM_RETENTION_DAYS`` too)."""
        cutoff = (now or utcnow()) - timedelta(days=days)
        b = batches_table.c
        old = and_(
            b.finished_at < cutoff,
            or_(b.webhook_status.is_(None), b.webhook_status != WebhookStatus.PENDING.value),
            _no_active_job(),
        )
        with self.db.transaction() as conn:
            ids = list(conn.execute(select(b.id).where(old).limit(limit)).scalars())
            if not ids:
                return 0
            return int(conn.execute(delete(batches_table).where(b.id.in_(ids), old)).rowcount or 0)
