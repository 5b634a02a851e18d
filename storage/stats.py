"""Read-only views over the job store for dashboards, the CLI and metrics.

Everything here is read from the database, so every API host, every CLI and
every scrape sees the same figures, and nothing is lost on restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, case, func, or_, select

from storage.counters import DURATION_BUCKETS, histogram, speech_seconds, totals
from storage.db import Database, HasDatabase, database_of
from storage.jobs import Job, JobStore, utcnow
from storage.models import Status, jobs_table, tenants_table

__all__ = ["DURATION_BUCKETS", "Histogram", "Inspector", "Stats", "TenantQueue"]


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts, their sum and the total count."""

    buckets: list[tuple[float, int]]  # (upper bound, observations <= bound)
    total: int
    sum: float


@dataclass(frozen=True, slots=True)
class TenantQueue:
    """One tenant's share of the queue: what waits, what runs, and how long
    its oldest eligible job has waited (the fairness signal)."""

    tenant: str
    #: Queued jobs by priority, highest first.
    queued_by_priority: dict[int, int]
    running: int
    scheduled: int
    #: Seconds the oldest queued job that a worker may claim now has waited
    #: (``None``: nothing eligible; a retry waiting for its backoff is not).
    oldest_eligible_age: float | None
    #: The tenant's weight, and its own ``max_running`` (``None``: the setting's).
    weight: float
    max_running: int | None

    @property
    def queued(self) -> int:
        return sum(self.queued_by_priority.values())


@dataclass(frozen=True, slots=True)
class Stats:
    """The overview of the whole farm."""

    counts: dict[Status, int]
    #: Since the database was created, deleted jobs included (never decrease).
    submitted_total: int
    recovered_total: int
    completed_total: int
    failed_total: int
    oldest_queued_age: float | None
    oldest_heartbeat_age: float | None
    completed_last_hour: int
    per_minute: list[int]  # completions per minute, oldest first, last 60 minutes
    #: Every tenant with a job scheduled, queued or processing, by name.
    tenants: list[TenantQueue]
    #: When the next scheduled job comes due (``None``: none is scheduled).
    next_run_at: datetime | None


class Inspector:
    """Aggregate queries; never writes."""

    def __init__(self, db: Database | HasDatabase) -> None:
        """On ``db`` (or the database of a store such as the job store)."""
        self.db = database_of(db)

    def counts_by_status(self) -> dict[Status, int]:
        with self.db.transaction(single=True) as conn:
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
        with self.db.transaction(single=True) as conn:
            oldest_queued = conn.execute(
                select(func.min(jobs_table.c.queued_at)).where(
                    jobs_table.c.status == Status.QUEUED.value
                )
            ).scalar()
            oldest_beat = conn.execute(
                select(func.min(jobs_table.c.last_heartbeat)).where(
                    jobs_table.c.status == Status.PROCESSING.value
                )
            ).scalar()
            completed = (
                conn.execute(
                    select(jobs_table.c.completed_at).where(
                        jobs_table.c.status == Status.COMPLETED.value,
                        jobs_table.c.completed_at >= hour_ago,
                    )
                )
                .scalars()
                .all()
            )
            counted = totals(conn)
            tenants, next_run_at = _queues(conn, now)
        per_minute = [0] * 60
        for at in completed:
            minute = int((now - _aware(at)).total_seconds() // 60)
            if 0 <= minute < 60:
                per_minute[59 - minute] += 1
        return Stats(
            counts=self.counts_by_status(),
            submitted_total=counted["submitted"],
            recovered_total=counted["recovered"],
            completed_total=counted["completed"],
            failed_total=counted["failed"],
            oldest_queued_age=_age(now, oldest_queued),
            oldest_heartbeat_age=_age(now, oldest_beat),
            completed_last_hour=len(completed),
            per_minute=per_minute,
            tenants=tenants,
            next_run_at=next_run_at,
        )

    def recent_failures(self, limit: int = 10) -> list[Job]:
        """The latest failed jobs, newest first."""
        page = JobStore(self.db).list_jobs(status=Status.FAILED, limit=limit)
        return page.jobs

    def speech_seconds(self) -> dict[str, float]:
        """Seconds of speech ever synthesized, by engine (``slidefarm_speech_seconds_total``)."""
        with self.db.transaction(single=True) as conn:
            return speech_seconds(conn)

    def histogram(self, column: str) -> Histogram:
        """Distribution of ``render_seconds``, ``encode_seconds`` or
        ``queue_wait_seconds`` over completed jobs, deleted ones included (a
        completed job's durations never change, so it never decreases)."""
        with self.db.transaction(single=True) as conn:
            counts, total, total_sum = histogram(conn, column)
        return Histogram(list(zip(DURATION_BUCKETS, counts, strict=True)), total, total_sum)


#: The weight and own max_running of an owner without a tenants row.
NO_LIMITS: tuple[float, int | None] = (1.0, None)


def _queues(conn: Connection, now: datetime) -> tuple[list[TenantQueue], datetime | None]:
    """Each active tenant's queue (three grouped reads over the partial and
    status indexes: their cost grows with what waits and runs, not with the
    jobs kept), and when the next scheduled job is due."""
    jobs = jobs_table.c
    eligible = or_(jobs.not_before.is_(None), jobs.not_before <= now)
    queued = conn.execute(
        select(
            jobs.owner,
            jobs.priority,
            func.count(),
            func.min(case((eligible, jobs.queued_at), else_=None)),
        )
        .where(jobs.status == Status.QUEUED.value)
        .group_by(jobs.owner, jobs.priority)
    ).all()
    running: dict[str, int] = {
        owner: count
        for owner, count in conn.execute(
            select(jobs.owner, func.count())
            .where(jobs.status == Status.PROCESSING.value)
            .group_by(jobs.owner)
        ).all()
    }
    scheduled = {
        owner: (count, first)
        for owner, count, first in conn.execute(
            select(jobs.owner, func.count(), func.min(jobs.run_at))
            .where(jobs.status == Status.SCHEDULED.value)
            .group_by(jobs.owner)
        ).all()
    }
    by_priority: dict[str, dict[int, int]] = {}
    oldest: dict[str, datetime] = {}
    for owner, priority, count, first in queued:
        by_priority.setdefault(owner, {})[priority] = count
        if first is not None and (owner not in oldest or _aware(first) < oldest[owner]):
            oldest[owner] = _aware(first)
    names = sorted(set(by_priority) | set(running) | set(scheduled))
    limits: dict[str, tuple[float, int | None]] = {}
    if names:
        rows = conn.execute(
            select(tenants_table.c.name, tenants_table.c.weight, tenants_table.c.max_running).where(
                tenants_table.c.name.in_(names)
            )
        ).all()
        limits = {name: (weight, max_running) for name, weight, max_running in rows}
    tenants = [
        TenantQueue(
            tenant=name,
            queued_by_priority=dict(sorted(by_priority.get(name, {}).items(), reverse=True)),
            running=running.get(name, 0),
            scheduled=scheduled.get(name, (0, None))[0],
            oldest_eligible_age=_age(now, oldest.get(name)),
            weight=float(limits.get(name, NO_LIMITS)[0]),
            max_running=limits.get(name, NO_LIMITS)[1],
        )
        for name in names
    ]
    firsts = [_aware(first) for _, first in scheduled.values() if first is not None]
    return tenants, min(firsts, default=None)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max((now - _aware(then)).total_seconds(), 0.0)
