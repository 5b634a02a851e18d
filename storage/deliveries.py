"""Completion-webhook state: which deliveries are due, who delivers an
attempt, and what became of it.

Every transition of a job's or a batch's ``webhook_status`` after the arming
(done by the job's final transition itself,
:func:`storage.jobs.statements.arm_webhook`, and by a batch's settling) lives
here, in :class:`WebhookOutbox`, and each is one conditional write:

- :meth:`WebhookOutbox.due` (the sweeper): pending deliveries
  whose time has come and whose task was not sent since are marked sent
  (a job's ``dispatched_at``: when its task was last sent, the render's
  while queued, the delivery's once final; a batch's ``webhook_sent_at``)
  and returned, so a busy queue is not
  flooded with copies of the same task;
- :meth:`WebhookOutbox.claim` (the task): the attempt ``n + 1`` becomes
  the caller's, and ``webhook_next_at`` moves past the attempt's deadline, so
  no second task (a copy, or one sent by the sweeper meanwhile) delivers
  until it is over;
- :meth:`WebhookOutbox.record` (the task): fenced on the
  attempt it claimed, so a duplicate can never record twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Table, and_, insert, or_, select, update

from storage.db import Database, HasDatabase, database_of
from storage.jobs.queries import snapshot
from storage.jobs.values import Job, utcnow
from storage.models import WebhookStatus, deliveries_table, jobs_table

#: What a claim hands out: the claimed row (a job, a batch) and its attempt.
C = TypeVar("C")

#: Jitter of a retry delay: the step times a factor in this range.
JITTER = (0.8, 1.2)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one delivery attempt went: never the receiver's answer itself."""

    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One attempt at delivering a job's webhook (never the answer's body)."""

    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class WebhookClaim:
    """An attempt that the caller alone now delivers."""

    job: Job
    attempt: int


def retry_delay(backoff: float, attempt: int) -> float:
    """Seconds before the attempt after failed ``attempt``: ``backoff``
    doubled per attempt, with jitter so many receivers' retries spread out."""
    step: float = backoff * 2.0 ** min(max(attempt - 1, 0), 30)
    return step * random.uniform(*JITTER)


def next_delivery_state(
    result: DeliveryResult,
    attempt_no: int,
    first_at: datetime,
    *,
    now: datetime,
    backoff: float,
    retry_for: float,
) -> tuple[WebhookStatus, dict[str, Any]]:
    """What comes after attempt ``attempt_no`` (the first at ``first_at``)
    went as ``result``, and the ``webhook_*`` values that say so: the one
    retry policy of job and batch webhooks."""
    values: dict[str, Any] = {
        "webhook_last_code": result.status_code,
        "webhook_last_error": result.error[:500] if result.error else None,
    }
    window_end = first_at + timedelta(seconds=retry_for)
    if result.ok:
        values.update(webhook_delivered_at=now, webhook_next_at=None)
        return WebhookStatus.DELIVERED, values
    if now >= window_end:
        values.update(webhook_next_at=None)
        return WebhookStatus.FAILED, values
    due = now + timedelta(seconds=retry_delay(backoff, attempt_no))
    values.update(webhook_next_at=min(due, window_end))
    return WebhookStatus.PENDING, values


class WebhookOutbox(Generic[C]):
    """The webhook state machine of one table's ``webhook_*`` columns (a
    job's, a batch's): which deliveries are due, the claim of an attempt,
    and its record, each one conditional write.

    What differs between the tables is named here: ``table`` and its ``id``,
    the column ``sent_at`` that says when its delivery task was last sent,
    the ``deliveries`` table (one row per attempt) and the column
    ``delivery_key`` in it naming the row, ``claim_of``, which reads a row
    just claimed (in the claim's transaction) into what the claimer gets,
    and ``changed``, told (after the commit) when a row's webhook state moved.
    """

    def __init__(
        self,
        db: Database,
        table: Table,
        *,
        sent_at: str,
        deliveries: Table,
        delivery_key: str,
        claim_of: Callable[[Connection, str, int], C | None],
        changed: Callable[[str], None] | None = None,
    ) -> None:
        """On ``db``, for the rows of ``table`` (see the class)."""
        self.db = db
        self.table = table
        self.sent_at = table.c[sent_at]
        self.deliveries_table = deliveries
        self.delivery_key = deliveries.c[delivery_key]
        self.claim_of = claim_of
        self.changed = changed

    def due(
        self, *, resend_after: float, now: datetime | None = None, limit: int = 200
    ) -> list[str]:
        """Rows whose webhook is due and whose delivery task was not sent
        since it fell due (or was sent ``resend_after`` seconds ago and never
        taken), marked sent now."""
        now = now or utcnow()
        t = self.table.c
        due = and_(
            t.webhook_status == WebhookStatus.PENDING.value,
            t.webhook_next_at <= now,
            # Not sent since it fell due (a send before that was for the
            # render, or for an earlier attempt), or sent and never taken.
            or_(
                self.sent_at.is_(None),
                self.sent_at < t.webhook_next_at,
                self.sent_at < now - timedelta(seconds=resend_after),
            ),
        )
        with self.db.transaction() as conn:
            ids = list(
                conn.execute(select(t.id).where(due).order_by(t.webhook_next_at).limit(limit))
                .scalars()
                .all()
            )
            if not ids:
                return []
            return list(
                conn.execute(
                    update(self.table)
                    .where(t.id.in_(ids), due)
                    .values({self.sent_at: now})
                    .returning(t.id)
                ).scalars()
            )

    def claim(self, row_id: str, *, lease: float, now: datetime | None = None) -> C | None:
        """Take the next delivery attempt of ``row_id`` if it is due (what
        ``claim_of`` makes of the row and the attempt's number); ``None`` if
        it is not (delivered, failed, not yet due, or another holds it).
        Nobody else can claim for ``lease`` seconds."""
        now = now or utcnow()
        t = self.table.c
        with self.db.transaction() as conn:
            row = conn.execute(
                update(self.table)
                .where(
                    t.id == row_id,
                    t.webhook_status == WebhookStatus.PENDING.value,
                    t.webhook_next_at <= now,
                )
                .values(
                    webhook_attempts=t.webhook_attempts + 1,
                    webhook_next_at=now + timedelta(seconds=lease),
                )
                .returning(t.webhook_attempts)
            ).first()
            if row is None:
                return None
            claim = self.claim_of(conn, row_id, int(row.webhook_attempts))
        if claim is None:
            return None
        if self.changed is not None:
            self.changed(row_id)
        return claim

    def record(
        self,
        row_id: str,
        attempt_no: int,
        result: DeliveryResult,
        *,
        backoff: float,
        retry_for: float,
        now: datetime | None = None,
    ) -> WebhookStatus | None:
        """Record how attempt ``attempt_no`` went and what comes next:
        ``delivered`` on a 2xx; else ``pending`` again after
        :func:`retry_delay` (never later than ``retry_for`` seconds after the
        first attempt), or ``failed`` once that window is spent.

        ``None`` (nothing written) unless ``attempt_no`` is still the row's
        current, pending attempt: a duplicate cannot record twice.
        """
        now = now or utcnow()
        t = self.table.c
        with self.db.transaction() as conn:
            current = conn.execute(
                select(t.webhook_status, t.webhook_attempts, t.webhook_first_at).where(
                    t.id == row_id
                )
            ).first()
            if (
                current is None
                or current.webhook_status != WebhookStatus.PENDING.value
                or current.webhook_attempts != attempt_no
                or current.webhook_first_at is None
            ):
                return None
            status, values = next_delivery_state(
                result,
                attempt_no,
                current.webhook_first_at,
                now=now,
                backoff=backoff,
                retry_for=retry_for,
            )
            written = conn.execute(
                update(self.table)
                .where(
                    t.id == row_id,
                    t.webhook_status == WebhookStatus.PENDING.value,
                    t.webhook_attempts == attempt_no,
                    t.webhook_first_at == current.webhook_first_at,
                )
                .values(webhook_status=status.value, **values)
            ).rowcount
            if written != 1:
                return None
            conn.execute(
                insert(self.deliveries_table).values(
                    {
                        self.delivery_key: row_id,
                        "attempt": attempt_no,
                        "at": now,
                        "status_code": result.status_code,
                        "error": values["webhook_last_error"],
                        "duration_ms": result.duration_ms,
                    }
                )
            )
        if self.changed is not None:
            self.changed(row_id)
        return status

    def deliveries(self, row_id: str) -> list[WebhookDelivery]:
        """Every recorded delivery attempt of ``row_id``'s webhook, oldest first."""
        d = self.deliveries_table.c
        with self.db.transaction(single=True) as conn:
            rows = (
                conn.execute(
                    select(self.deliveries_table).where(self.delivery_key == row_id).order_by(d.id)
                )
                .mappings()
                .all()
            )
        return [
            WebhookDelivery(
                r["attempt"], r["at"], r["status_code"], r["error"], float(r["duration_ms"])
            )
            for r in rows
        ]


def _job_claim(conn: Connection, job_id: str, attempt: int) -> WebhookClaim | None:
    job = snapshot(conn, job_id)
    return None if job is None else WebhookClaim(job, attempt)


class WebhookDeliveries(WebhookOutbox[WebhookClaim]):
    """The webhook half of a job's record: the outbox on the jobs, whose
    ``dispatched_at`` says when a job's task (render or delivery) was last sent."""

    def __init__(self, db: Database | HasDatabase) -> None:
        """On ``db`` (or the database of a store such as the job store)."""
        database = database_of(db)
        super().__init__(
            database,
            jobs_table,
            sent_at="dispatched_at",
            deliveries=deliveries_table,
            delivery_key="job_id",
            claim_of=_job_claim,
            changed=database.changed,
        )

    #: Jobs whose webhook is due and whose delivery task was not sent since
    #: (or was lost), marked sent now.
    due_webhooks = WebhookOutbox.due
    #: How attempt ``attempt_no`` went and what comes next, fenced on it.
    record_delivery = WebhookOutbox.record
