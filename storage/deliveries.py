"""Completion-webhook state: which deliveries are due, who delivers an
attempt, and what became of it.

Every transition of a job's ``webhook_status`` after the arming (done by the
job's final transition itself, :func:`storage.jobs.statements.arm_webhook`) lives here, and
each is one conditional write:

- :meth:`WebhookDeliveries.due_webhooks` (the sweeper): pending deliveries
  whose time has come and whose task was not sent since are marked sent
  (``dispatched_at``: when the job's task was last sent, the render's while
  queued, the delivery's once final) and returned, so a busy queue is not
  flooded with copies of the same task;
- :meth:`WebhookDeliveries.claim` (the task): the attempt ``n + 1`` becomes
  the caller's, and ``webhook_next_at`` moves past the attempt's deadline, so
  no second task (a copy, or one sent by the sweeper meanwhile) delivers
  until it is over;
- :meth:`WebhookDeliveries.record_delivery` (the task): fenced on the
  attempt it claimed, so a duplicate can never record twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update

from storage.db import Database, HasDatabase, database_of
from storage.jobs.queries import snapshot
from storage.jobs.values import Job, utcnow
from storage.models import WebhookStatus, deliveries_table, jobs_table

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


class WebhookDeliveries:
    """The webhook half of a job's record."""

    def __init__(self, db: Database | HasDatabase) -> None:
        """On ``db`` (or the database of a store such as the job store)."""
        self.db = database_of(db)

    def due_webhooks(
        self, *, resend_after: float, now: datetime | None = None, limit: int = 200
    ) -> list[str]:
        """Jobs whose webhook is due and whose delivery task was not sent in
        the last ``resend_after`` seconds (or was lost), marked sent now."""
        now = now or utcnow()
        jobs = jobs_table.c
        due = and_(
            jobs.webhook_status == WebhookStatus.PENDING.value,
            jobs.webhook_next_at <= now,
            # Not sent since it fell due (a send before that was for the
            # render, or for an earlier attempt), or sent and never taken.
            or_(
                jobs.dispatched_at.is_(None),
                jobs.dispatched_at < jobs.webhook_next_at,
                jobs.dispatched_at < now - timedelta(seconds=resend_after),
            ),
        )
        with self.db.transaction() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    select(jobs.id).where(due).order_by(jobs.webhook_next_at).limit(limit)
                )
            ]
            if not ids:
                return []
            return [
                r.id
                for r in conn.execute(
                    update(jobs_table)
                    .where(jobs.id.in_(ids), due)
                    .values(dispatched_at=now)
                    .returning(jobs.id)
                )
            ]

    def claim(
        self, job_id: str, *, lease: float, now: datetime | None = None
    ) -> WebhookClaim | None:
        """Take the next delivery attempt of ``job_id`` if it is due; ``None``
        if it is not (delivered, failed, not yet due, or another holds it).
        Nobody else can claim for ``lease`` seconds."""
        now = now or utcnow()
        jobs = jobs_table.c
        with self.db.transaction() as conn:
            row = conn.execute(
                update(jobs_table)
                .where(
                    jobs.id == job_id,
                    jobs.webhook_status == WebhookStatus.PENDING.value,
                    jobs.webhook_next_at <= now,
                )
                .values(
                    webhook_attempts=jobs.webhook_attempts + 1,
                    webhook_next_at=now + timedelta(seconds=lease),
                )
                .returning(jobs.webhook_attempts)
            ).first()
            if row is None:
                return None
            job = snapshot(conn, job_id)
        if job is None:
            return None
        self.db.changed(job_id)
        return WebhookClaim(job, int(row.webhook_attempts))

    def record_delivery(
        self,
        job_id: str,
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

        ``None`` (nothing written) unless ``attempt_no`` is still the job's
        current, pending attempt: a duplicate cannot record twice.
        """
        now = now or utcnow()
        jobs = jobs_table.c
        with self.db.transaction() as conn:
            current = conn.execute(
                select(jobs.webhook_status, jobs.webhook_attempts, jobs.webhook_first_at).where(
                    jobs.id == job_id
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
                update(jobs_table)
                .where(
                    jobs.id == job_id,
                    jobs.webhook_status == WebhookStatus.PENDING.value,
                    jobs.webhook_attempts == attempt_no,
                    jobs.webhook_first_at == current.webhook_first_at,
                )
                .values(webhook_status=status.value, **values)
            ).rowcount
            if written != 1:
                return None
            conn.execute(
                insert(deliveries_table).values(
                    job_id=job_id,
                    attempt=attempt_no,
                    at=now,
                    status_code=result.status_code,
                    error=values["webhook_last_error"],
                    duration_ms=result.duration_ms,
                )
            )
        self.db.changed(job_id)
        return status

    def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """Every recorded delivery attempt of ``job_id``, oldest first."""
        with self.db.transaction(single=True) as conn:
            rows = (
                conn.execute(
                    select(deliveries_table)
                    .where(deliveries_table.c.job_id == job_id)
                    .order_by(deliveries_table.c.id)
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
