"""Read-only views over the job store for dashboards, the CLI and metrics.

Everything here is read from the database, so every API host, every CLI and
every scrape sees the same figures, and nothing is lost on restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from storage.counters import DURATION_BUCKETS, histogram, speech_seconds, totals
from storage.db import Database, HasDatabase, database_of
from storage.jobs import Job, JobStore, utcnow
from storage.models import Status, jobs_table

__all__ = ["DURATION_BUCKETS", "Histogram", "Inspector", "Stats"]


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
    #: Since the database was created, deleted jobs included (never decrease).
    submitted_total: int
    recovered_total: int
    completed_total: int
    failed_total: int
    oldest_queued_age: float | None
    oldest_heartbeat_age: float | None
    completed_last_hour: int
    per_minute: list[int]  # completions per minute, oldest first, last 60 minutes


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


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max((now - _aware(then)).total_seconds(), 0.0)
