"""Segments of a split job (docs/design.md, "Long decks").

A deck longer than ``SLIDEFARM_SPLIT_SLIDES`` is cut into runs of
consecutive slides that any workers render at once. The job's own attempt
plans them (one row each), renders some itself, waits for the rest and
joins them; every other worker claims a segment before it claims a new job.

A segment is held the way a job is: each claim is a new attempt, and every
later write names it (compare-and-set on status and attempt), so a worker
presumed dead can never record a segment another worker redid. A segment's
heartbeat also reads its job: a job that ended, or whose cancel was asked
for, stops every worker on its segments within one heartbeat. Each change
is a row in the job's history (``processing -> processing``, the reason
naming the segment). The rows go when the job ends (:meth:`SegmentStore.drop`,
the sweeper for any left) or is deleted (they cascade).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from storage.jobs.base import StoreBase
from storage.jobs.history import record_event
from storage.jobs.locks import take_write_lock
from storage.jobs.statements import segment_claimable
from storage.jobs.values import LeaseState, utcnow
from storage.models import (
    FINAL_STATUSES,
    SegmentStatus,
    Status,
    jobs_table,
    segments_table,
)

S = segments_table
J = jobs_table


@dataclass(frozen=True, slots=True)
class Part:
    """One segment as the job's attempt plans it."""

    first_slide: int
    durations: tuple[float, ...]

    @property
    def slides(self) -> int:
        return len(self.durations)


@dataclass(frozen=True, slots=True)
class Segment:
    """A snapshot of one segment."""

    job_id: str
    idx: int
    first_slide: int
    slides: int
    durations: tuple[float, ...]
    status: SegmentStatus
    attempts: int
    attempt_limit: int
    worker: str | None
    progress: float
    frames: int | None
    output: str | None
    error: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Segment:
        return cls(
            job_id=row["job_id"],
            idx=int(row["idx"]),
            first_slide=int(row["first_slide"]),
            slides=int(row["slides"]),
            durations=tuple(float(d) for d in row["durations"]),
            status=SegmentStatus(row["status"]),
            attempts=int(row["attempts"]),
            attempt_limit=int(row["attempt_limit"]),
            worker=row["worker"],
            progress=float(row["progress"]),
            frames=row["frames"],
            output=row["output"],
            error=row["error"],
        )

    @property
    def label(self) -> str:
        """How the history names it: "segment 3 (slides 17-24)" (from 1)."""
        return (
            f"segment {self.idx + 1} (slides {self.first_slide + 1}-"
            f"{self.first_slide + self.slides})"
        )

    @property
    def part(self) -> Part:
        return Part(self.first_slide, self.durations)


@dataclass(frozen=True, slots=True)
class SegmentRecovery:
    """A segment whose worker stopped heartbeating, and what became of it."""

    segment: Segment
    action: SegmentStatus


_COLUMNS = [c for c in S.c]


def _of_job(conn: Connection, job_id: str) -> list[Segment]:
    rows = conn.execute(select(*_COLUMNS).where(S.c.job_id == job_id).order_by(S.c.idx))
    return [Segment.from_row(r) for r in rows.mappings()]


def _split_event(
    conn: Connection, job_id: str, attempt: int, worker: str | None, text: str
) -> None:
    """The history row of a plan (the job stays ``processing``)."""
    record_event(conn, job_id, Status.PROCESSING, Status.PROCESSING, attempt, worker, text)


def _fence(job_id: str, idx: int, attempt: int) -> Any:
    return and_(
        S.c.job_id == job_id,
        S.c.idx == idx,
        S.c.attempts == attempt,
        S.c.status == SegmentStatus.PROCESSING.value,
    )


class SegmentStore(StoreBase):
    """Every read and write of segments."""

    def _event(
        self, conn: Connection, segment: Segment, attempt: int, worker: str | None, what: str
    ) -> None:
        record_event(
            conn,
            segment.job_id,
            Status.PROCESSING,
            Status.PROCESSING,
            attempt,
            worker,
            f"{segment.label}: {what}",
        )

    # -- the job's attempt -------------------------------------------------

    def plan(
        self, job_id: str, attempt: int, parts: Sequence[Part], attempt_limit: int
    ) -> list[Segment] | None:
        """The segments of ``job_id``, as attempt ``attempt`` of the job
        (which must hold it: ``None`` if it does not) plans them.

        A plan already there with the same parts is kept (a recovered job's
        next attempt joins what was done); one with other parts (the sound
        came out another length) is replaced. In one transaction, with the
        plan's history row.
        """
        now = utcnow()
        with self.transaction() as conn:
            if self.db.dialect == "sqlite":
                take_write_lock(conn)
            holder = conn.execute(
                select(J.c.worker)
                .where(
                    J.c.id == job_id,
                    J.c.status == Status.PROCESSING.value,
                    J.c.attempts == attempt,
                )
                .with_for_update()
            ).first()
            if holder is None:
                return None
            existing = _of_job(conn, job_id)
            if [s.part for s in existing] == list(parts):
                finished = sum(s.status is SegmentStatus.COMPLETED for s in existing)
                _split_event(
                    conn,
                    job_id,
                    attempt,
                    holder.worker,
                    f"split: the plan of an earlier attempt kept, {finished} of "
                    f"{len(existing)} segments done",
                )
                return existing
            if existing:
                conn.execute(delete(S).where(S.c.job_id == job_id))
            conn.execute(
                insert(S),
                [
                    {
                        "job_id": job_id,
                        "idx": n,
                        "first_slide": part.first_slide,
                        "slides": part.slides,
                        "durations": list(part.durations),
                        "status": SegmentStatus.QUEUED.value,
                        "attempts": 0,
                        "attempt_limit": attempt_limit,
                        "progress": 0.0,
                        "created_at": now,
                    }
                    for n, part in enumerate(parts)
                ],
            )
            slides = sum(p.slides for p in parts)
            _split_event(
                conn,
                job_id,
                attempt,
                holder.worker,
                f"split: {slides} slides in {len(parts)} segments"
                + (" (an earlier plan replaced)" if existing else ""),
            )
            return _of_job(conn, job_id)

    def of_job(self, job_id: str) -> list[Segment]:
        """``job_id``'s segments in order (none: not split, or dropped)."""
        with self.transaction(single=True) as conn:
            return _of_job(conn, job_id)

    def drop(self, job_id: str) -> int:
        """Forget ``job_id``'s segments (it ended); how many there were."""
        with self.transaction(single=True) as conn:
            return int(conn.execute(delete(S).where(S.c.job_id == job_id)).rowcount or 0)

    # -- any worker --------------------------------------------------------

    def claim(
        self,
        worker: str,
        *,
        job_id: str | None = None,
        now: datetime | None = None,
        known_waiting: bool = False,
    ) -> Segment | None:
        """Claim for ``worker`` the segment that runs next (of ``job_id``
        only, if given): a new attempt of it, or ``None``.

        The order: the job of the highest priority first, then the job that
        started longest ago (finish what was begun), then the segments in
        order. Only segments of a job that is not over and not asked to
        cancel, and whose retry is due.

        With none waiting this costs one read (no transaction, no write
        lock); ``known_waiting``: the caller has just read that one waits
        (:meth:`storage.JobStore.claim_work`, whose heads' read says so), so
        that read is skipped.
        """
        at = now or utcnow()
        pick = (
            select(S.c.job_id, S.c.idx)
            .join(J, J.c.id == S.c.job_id)
            .where(*segment_claimable(at))
            .order_by(J.c.priority.desc(), J.c.started_at, S.c.job_id, S.c.idx)
            .limit(1)
        )
        if job_id is not None:
            pick = pick.where(S.c.job_id == job_id)
        if not known_waiting:
            with self.transaction(single=True) as conn:
                if conn.execute(pick).first() is None:
                    return None
        with self.transaction() as conn:
            if self.db.dialect == "sqlite":
                take_write_lock(conn)
            else:
                pick = pick.with_for_update(of=S, skip_locked=True)
            chosen = conn.execute(pick).first()
            if chosen is None:
                return None
            row = (
                conn.execute(
                    update(S)
                    .where(
                        S.c.job_id == chosen.job_id,
                        S.c.idx == chosen.idx,
                        S.c.status == SegmentStatus.QUEUED.value,
                    )
                    .values(
                        status=SegmentStatus.PROCESSING.value,
                        attempts=S.c.attempts + 1,
                        worker=worker,
                        progress=0.0,
                        claimed_at=at,
                        last_heartbeat=at,
                        not_before=None,
                        error=None,
                    )
                    .returning(*_COLUMNS)
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            segment = Segment.from_row(row)
            self._event(conn, segment, segment.attempts, worker, f"claimed by {worker}")
        self._changed(segment.job_id)
        return segment

    def heartbeat(
        self, job_id: str, idx: int, attempt: int, progress: float | None = None
    ) -> LeaseState:
        """Renew attempt ``attempt``'s hold on the segment (and record its
        progress): held, cancel requested (of its job), or lost (redone
        elsewhere, dropped, or its job is over or gone)."""
        values: dict[str, Any] = {"last_heartbeat": utcnow()}
        if progress is not None:
            # Never decreasing within an attempt (SQLite's max() of two
            # arguments is PostgreSQL's greatest()).
            larger = func.max if self.db.dialect == "sqlite" else func.greatest
            values["progress"] = larger(S.c.progress, min(max(progress, 0.0), 1.0))
        with self.transaction() as conn:
            job = conn.execute(
                select(J.c.status, J.c.cancel_requested).where(J.c.id == job_id)
            ).first()
            if job is None or Status(job.status) in FINAL_STATUSES:
                return LeaseState.LOST
            changed = conn.execute(
                update(S).where(_fence(job_id, idx, attempt)).values(**values)
            ).rowcount
        if not changed:
            return LeaseState.LOST
        if progress is not None:
            self._changed(job_id)
        return LeaseState.CANCEL_REQUESTED if job.cancel_requested else LeaseState.HELD

    def complete(
        self, segment: Segment, attempt: int, *, frames: int, output: str, worker: str | None
    ) -> bool:
        """The segment's files are in place (``output``, relative to the
        output storage): completed, if ``attempt`` still holds it."""
        return self._end(
            segment,
            attempt,
            worker,
            {
                "status": SegmentStatus.COMPLETED.value,
                "progress": 1.0,
                "frames": frames,
                "output": output,
                "completed_at": utcnow(),
            },
            f"completed by {worker or '-'} ({frames} frames)",
        )

    def retry(
        self,
        segment: Segment,
        attempt: int,
        error: str,
        *,
        delay: float,
        worker: str | None,
        counted: bool = True,
        stale_before: datetime | None = None,
    ) -> SegmentStatus | None:
        """Attempt ``attempt`` of the segment failed with a transient
        ``error``: queued again after ``delay`` s, or failed if it has no
        attempts left. ``counted=False`` (a worker handing it back while it
        stops): queued at once, the attempt not counted against the budget.
        ``stale_before``: a recovery by the sweeper, only if the segment's
        heartbeat is still older than that. ``None`` if ``attempt`` no longer
        holds it."""
        if not counted:
            values: dict[str, Any] = {
                "status": SegmentStatus.QUEUED.value,
                "attempt_limit": S.c.attempt_limit + 1,
                "worker": None,
                "error": error,
            }
            what = f"handed back by {worker or '-'}: {error}"
            return (
                SegmentStatus.QUEUED if self._end(segment, attempt, worker, values, what) else None
            )
        if attempt >= segment.attempt_limit:
            what = f"failed after {attempt} attempts: {error}"
            if stale_before is not None:
                what = f"{error}; failed (no attempts left)"
            values = {"status": SegmentStatus.FAILED.value, "error": error, "worker": None}
            ended = self._end(segment, attempt, worker, values, what, stale_before=stale_before)
            return SegmentStatus.FAILED if ended else None
        values = {
            "status": SegmentStatus.QUEUED.value,
            "not_before": utcnow() + timedelta(seconds=delay),
            "worker": None,
            "error": error,
        }
        what = f"attempt {attempt} failed, retrying in {delay:.1f}s: {error}"
        if stale_before is not None:
            what = f"{error}; queued again"
        ended = self._end(segment, attempt, worker, values, what, stale_before=stale_before)
        return SegmentStatus.QUEUED if ended else None

    def fail(self, segment: Segment, attempt: int, error: str, *, worker: str | None) -> bool:
        """The segment cannot render (retrying would not help): failed."""
        values = {"status": SegmentStatus.FAILED.value, "error": error, "worker": None}
        return self._end(segment, attempt, worker, values, f"failed: {error}")

    def _end(
        self,
        segment: Segment,
        attempt: int,
        worker: str | None,
        values: dict[str, Any],
        what: str,
        *,
        stale_before: datetime | None = None,
    ) -> bool:
        fence = _fence(segment.job_id, segment.idx, attempt)
        if stale_before is not None:
            # A recovery: only if the heartbeat is still stale (a worker that
            # renewed in between keeps its segment).
            fence = and_(fence, S.c.last_heartbeat < stale_before)
        with self.transaction() as conn:
            changed = conn.execute(update(S).where(fence).values(**values)).rowcount
            if changed:
                self._event(conn, segment, attempt, worker, what)
        if changed:
            self._changed(segment.job_id)
        return bool(changed)

    # -- housekeeping (the sweeper) -----------------------------------------

    def recover_stale(
        self, stale_after: float, *, now: datetime | None = None, limit: int = 200
    ) -> list[SegmentRecovery]:
        """Segments whose worker stopped heartbeating ``stale_after`` s ago:
        queued again for another worker, or failed when out of attempts."""
        at = now or utcnow()
        cutoff = at - timedelta(seconds=stale_after)
        with self.transaction(single=True) as conn:
            rows = conn.execute(
                select(*_COLUMNS)
                .where(
                    S.c.status == SegmentStatus.PROCESSING.value,
                    S.c.last_heartbeat < cutoff,
                )
                .limit(limit)
            ).mappings()
            stale = [Segment.from_row(r) for r in rows]
        recovered = []
        for segment in stale:
            why = f"{segment.worker or '-'} stopped heartbeating"
            action = self.retry(
                segment,
                segment.attempts,
                why,
                delay=0.0,
                worker=segment.worker,
                stale_before=cutoff,
            )
            if action is not None:
                recovered.append(SegmentRecovery(segment, action))
        return recovered

    def runnable(self, *, now: datetime | None = None) -> int:
        """How many segments wait with their retry due, of jobs that may run
        them (the sweeper wakes workers for them)."""
        at = now or utcnow()
        with self.transaction(single=True) as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(S.join(J, J.c.id == S.c.job_id))
                    .where(*segment_claimable(at))
                ).scalar_one()
            )

    def drop_ended(self, *, limit: int = 100) -> list[str]:
        """Forget the segments of jobs that are over (a job cancelled or
        failed while queued, or whose worker could not drop them); returns
        those jobs' ids, whose segment files can go too."""
        with self.transaction() as conn:
            ended = list(
                conn.execute(
                    select(S.c.job_id)
                    .join(J, J.c.id == S.c.job_id)
                    .where(J.c.status.in_([s.value for s in FINAL_STATUSES]))
                    .distinct()
                    .limit(limit)
                ).scalars()
            )
            if ended:
                conn.execute(delete(S).where(S.c.job_id.in_(ended)))
        return ended

    def jobs_with_segments(self, job_ids: Sequence[str]) -> set[str]:
        """Of ``job_ids``, those that have segments (live split jobs)."""
        if not job_ids:
            return set()
        with self.transaction(single=True) as conn:
            return set(
                conn.execute(
                    select(S.c.job_id).where(S.c.job_id.in_(list(job_ids))).distinct()
                ).scalars()
            )
