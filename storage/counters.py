"""Metrics that never go down, at no cost to a job's transitions.

Metrics are computed at scrape time from rows that only ever grow: the
transition history (jobs submitted, completed, failed, recovered) and
completed jobs, whose durations never change again (only failed and
cancelled jobs can be retried). Those rows go away only with their job, by
request or by retention, and that deletion adds the job's share of every
metric to the ``counters`` rows in its own transaction. A metric is what the
remaining rows count plus its counter row, so it is monotonic for the life of
the database, and submissions, claims, progress and completions pay no extra
statement for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, case, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage.models import (
    Status,
    counters_table,
    events_table,
    jobs_table,
)

#: Histogram buckets (seconds) for queue wait and render durations.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Counts of transitions, read from the history.
EVENT_COUNTS = ("submitted", "completed", "failed", "recovered")
#: Durations of completed jobs, each a histogram.
DURATIONS = ("queue_wait_seconds", "render_seconds", "encode_seconds")


def _only(column: Any, job_ids: Sequence[str] | None) -> list[Any]:
    return [] if job_ids is None else [column.in_(list(job_ids))]


def _counter(name: str) -> Any:
    """The counter row ``name``'s value (0 when absent), as a scalar subquery."""
    return (
        select(func.coalesce(func.sum(counters_table.c.value), 0.0))
        .where(counters_table.c.name == name)
        .scalar_subquery()
    )


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _event_columns() -> list[Any]:
    return [
        _count(events_table.c.from_status.is_(None)),
        _count(events_table.c.to_status == Status.COMPLETED.value),
        _count(events_table.c.to_status == Status.FAILED.value),
        _count(
            and_(
                events_table.c.from_status == Status.PROCESSING.value,
                events_table.c.to_status == Status.QUEUED.value,
                events_table.c.reason.like("worker lost:%"),
            )
        ),
    ]


def _labelled(columns: list[Any]) -> list[Any]:
    return [column.label(f"v{i}") for i, column in enumerate(columns)]


def _duration(conn: Connection, column: str) -> Any:
    if column != "queue_wait_seconds":
        return jobs_table.c[column]
    # From queued to claimed, in seconds, in each backend's date arithmetic.
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", jobs_table.c.started_at - jobs_table.c.queued_at)
    started, queued = jobs_table.c.started_at, jobs_table.c.queued_at
    return (func.julianday(started) - func.julianday(queued)) * 86400.0


#: Histogram sums are kept in whole microseconds: a sum of floats depends on
#: the order of its terms, so moving a job's share from the live rows to its
#: counter row could make a float sum fall by one ulp, which a scraper reads
#: as a counter reset. Integers (exact in a double up to 2**53 us, 285 years)
#: add up the same in any order.
MICROS = 1_000_000


def _histogram_columns(conn: Connection, column: str) -> list[Any]:
    value = _duration(conn, column)
    return [
        func.count(value),
        func.coalesce(func.sum(func.round(value * MICROS)), 0.0),
        *[_count(and_(value.is_not(None), value <= b)) for b in DURATION_BUCKETS],
    ]


def _histogram_names(column: str) -> list[str]:
    return [
        f"{column}:count",
        f"{column}:sum_us",
        *[bucket_name(column, b) for b in DURATION_BUCKETS],
    ]


def totals(conn: Connection) -> dict[str, int]:
    """Each transition count since the database was created: what the history
    holds plus what deleted jobs had, read in one statement (one snapshot)."""
    history = select(*_labelled(_event_columns())).subquery()
    row = conn.execute(select(*history.c).add_columns(*[_counter(n) for n in EVENT_COUNTS])).one()
    live, gone = row[: len(EVENT_COUNTS)], row[len(EVENT_COUNTS) :]
    return {name: int(a) + int(b) for name, a, b in zip(EVENT_COUNTS, live, gone, strict=True)}


def histogram(conn: Connection, column: str) -> tuple[list[int], int, float]:
    """Cumulative bucket counts (:data:`DURATION_BUCKETS`), count and sum of
    ``column`` over every job that ever completed, deleted ones included: one
    statement (one snapshot)."""
    names = _histogram_names(column)
    live = (
        select(*_labelled(_histogram_columns(conn, column)))
        .where(jobs_table.c.status == Status.COMPLETED.value)
        .subquery()
    )
    row = conn.execute(select(*live.c).add_columns(*[_counter(n) for n in names])).one()
    merged = [
        float(a) + float(b) for a, b in zip(row[: len(names)], row[len(names) :], strict=True)
    ]
    return [int(c) for c in merged[2:]], int(merged[0]), merged[1] / MICROS


def bucket_name(column: str, bound: float) -> str:
    """The counter row of one histogram bucket."""
    return f"{column}:le:{bound:g}"


def retire(conn: Connection, job_ids: Sequence[str]) -> None:
    """Add what ``job_ids`` count in every metric to the counter rows; call it
    in the transaction that deletes them, with them locked against change."""
    if not job_ids:
        return
    row = conn.execute(
        select(*_event_columns()).where(*_only(events_table.c.job_id, job_ids))
    ).one()
    deltas: dict[str, float] = dict(zip(EVENT_COUNTS, map(float, row), strict=True))
    for column in DURATIONS:
        parts = conn.execute(
            select(*_histogram_columns(conn, column)).where(
                jobs_table.c.status == Status.COMPLETED.value, *_only(jobs_table.c.id, job_ids)
            )
        ).one()
        deltas.update(zip(_histogram_names(column), map(float, parts), strict=True))
    add(conn, deltas)


#: The counter rows of ``slidefarm_speech_seconds_total``: one per engine.
SPEECH_PREFIX = "speech_seconds:"


def add(conn: Connection, deltas: dict[str, float]) -> None:
    """Add ``deltas`` to their counter rows (created at 0), in one statement."""
    deltas = {name: value for name, value in deltas.items() if value}
    if not deltas:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(counters_table).values([{"name": k, "value": v} for k, v in deltas.items()])
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[counters_table.c.name],
            set_={"value": counters_table.c.value + stmt.excluded.value},
        )
    )


def speech_seconds(conn: Connection) -> dict[str, float]:
    """Seconds of speech ever synthesized, by engine."""
    rows = conn.execute(
        select(counters_table.c.name, counters_table.c.value).where(
            counters_table.c.name.startswith(SPEECH_PREFIX)
        )
    ).all()
    return {name[len(SPEECH_PREFIX) :]: float(value) for name, value in rows}
