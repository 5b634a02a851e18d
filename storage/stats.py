"""Read-only views over the job store for dashboards, the CLI and metrics.

Everything here is read from the database, so every API host, every CLI and
every scrape sees the same figures, and nothing is lost on restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, func, select

from storage.jobs import Job, JobStore, events_table, jobs_table, utcnow
from storage.models import Status

#: Histogram buckets (seconds) for queue wait and render durations.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts, their sum and the total count."""

    buckets: list[tuple[float, int]]  # (upper bound, observations <= bound)
    total: int
    sum: float


@dataclass(frozen=True, slots=True)
class Stats:
    """The overview of the whole farm."""

    counts: dict[Status, int]
    submitted_total: int
    recovered_total: int
    oldest_queued_age: float | None
    oldest_heartbeat_age: float | None
    completed_last_hour: int
    per_minute: list[int]  # completions per minute, oldest first, last 60 minutes


class Inspector:
    """Aggregate queries; never writes."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def counts_by_status(self) -> dict[Status, int]:
        with self.store.transaction(single=True) as conn:
            rows = conn.execute(
                select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status)
            ).all()
        counts = {status: 0 for status in Status}
        for status, count in rows:
            counts[Status(status)] = count
        return counts

    def stats(self, *, now: datetime | None = None) -> Stats:
        """Counts, ages and the completions of the last hour, per minute."""
        now = now or utcnow()
        hour_ago = now - timedelta(hours=1)
        with self.store.transaction(single=True) as conn:
            oldest_queued = conn.execute(
                select(func.min(jobs_table.c.queued_at))
                .where(jobs_table.c.status == Status.QUEUED.value)
            ).scalar()
            oldest_beat = conn.execute(
                select(func.min(jobs_table.c.last_heartbeat))
                .where(jobs_table.c.status == Status.PROCESSING.value)
            ).scalar()
            completed = conn.execute(
                select(jobs_table.c.completed_at).where(
                    jobs_table.c.status == Status.COMPLETED.value,
                    jobs_table.c.completed_at >= hour_ago,
                )
            ).scalars().all()
            submitted = conn.execute(
                select(func.count()).select_from(events_table)
                .where(events_table.c.from_status.is_(None))
            ).scalar() or 0
            recovered = conn.execute(
                select(func.count()).select_from(events_table).where(
                    events_table.c.from_status == Status.PROCESSING.value,
                    events_table.c.to_status == Status.QUEUED.value,
                    events_table.c.reason.like("worker lost:%"),
                )
            ).scalar() or 0
        per_minute = [0] * 60
        for at in completed:
            minute = int((now - _aware(at)).total_seconds() // 60)
            if 0 <= minute < 60:
                per_minute[59 - minute] += 1
        return Stats(
            counts=self.counts_by_status(),
            submitted_total=int(submitted),
            recovered_total=int(recovered),
            oldest_queued_age=_age(now, oldest_queued),
            oldest_heartbeat_age=_age(now, oldest_beat),
            completed_last_hour=len(completed),
            per_minute=per_minute,
        )

    def recent_failures(self, limit: int = 10) -> list[Job]:
        """The latest failed jobs, newest first."""
        page = self.store.list_jobs(status=Status.FAILED, limit=limit)
        return page.jobs

    def histogram(self, column: str, buckets: Sequence[float] = DURATION_BUCKETS) -> Histogram:
        """Distribution of ``render_seconds``, ``encode_seconds`` or
        ``queue_wait_seconds`` over the jobs in the store."""
        table = jobs_table
        if column == "queue_wait_seconds":
            # Only jobs that were claimed have waited; computed in Python to
            # stay portable across SQLite and PostgreSQL date arithmetic.
            with self.store.transaction(single=True) as conn:
                pairs = conn.execute(
                    select(table.c.queued_at, table.c.started_at)
                    .where(table.c.started_at.is_not(None), table.c.queued_at.is_not(None))
                ).all()
            values = [max((_aware(s) - _aware(q)).total_seconds(), 0.0) for q, s in pairs]
            return Histogram([(b, sum(1 for v in values if v <= b)) for b in buckets],
                             len(values), sum(values))
        value = table.c[column]
        with self.store.transaction(single=True) as conn:
            row = conn.execute(select(
                func.count(value), func.coalesce(func.sum(value), 0.0),
                *[func.coalesce(func.sum(case((and_(value.is_not(None), value <= b), 1),
                                              else_=0)), 0) for b in buckets],
            )).one()
        total, total_sum, *counts = row
        return Histogram(list(zip(buckets, (int(c) for c in counts), strict=True)),
                         int(total), float(total_sum))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max((now - _aware(then)).total_seconds(), 0.0)
