"""The sweeper's queries and retention: recovering jobs whose worker died,
queueing scheduled jobs that came due, finding queued jobs nobody may be
awake for, and deleting old finished jobs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update

from storage.counters import retire
from storage.jobs.history import event_params, log_transition, record_event
from storage.jobs.locks import lock_rows
from storage.jobs.statements import POSTGRESQL, promote_scheduled
from storage.jobs.transitions import Transitions
from storage.jobs.values import Recovery, utcnow
from storage.models import FINAL_STATUSES, Stage, Status, jobs_table


class Maintenance(Transitions):
    """The job store's housekeeping (run by the sweeper, one host at a time)."""

    def recover_stale(
        self, stale_after: float, *, now: datetime | None = None, limit: int = 500
    ) -> list[Recovery]:
        """Act on processing jobs whose heartbeat is older than ``stale_after`` s.

        Each is requeued (attempts left), failed with ``worker lost: <worker>
        stopped heartbeating`` (attempts spent) or, if a cancel was asked for,
        cancelled. Each write is conditional on the heartbeat still being
        stale, so a worker that renewed in between keeps its job.
        """
        now = now or utcnow()
        cutoff = now - timedelta(seconds=stale_after)
        with self.transaction() as conn:
            stale = conn.execute(
                select(
                    jobs_table.c.id,
                    jobs_table.c.attempts,
                    jobs_table.c.attempt_limit,
                    jobs_table.c.worker,
                    jobs_table.c.cancel_requested,
                )
                .where(
                    jobs_table.c.status == Status.PROCESSING.value,
                    jobs_table.c.last_heartbeat < cutoff,
                )
                .order_by(jobs_table.c.last_heartbeat)
                .limit(limit)
            ).all()
        still_stale = [jobs_table.c.last_heartbeat < cutoff]
        # The flag read above may be old by now: a requeue or a failure lands
        # only while no cancel is asked for, and one refused for that reason
        # ends the job cancelled instead (never queued with the flag set).
        no_cancel = [*still_stale, jobs_table.c.cancel_requested.is_(False)]
        done: list[Recovery] = []
        for job in stale:
            lost = f"worker lost: {job.worker} stopped heartbeating"
            ok = False
            if job.cancel_requested:
                action = Status.CANCELLED
            elif job.attempts < job.attempt_limit:
                ok = self._transition(
                    job.id,
                    job.attempts,
                    Status.PROCESSING,
                    {
                        "status": Status.QUEUED.value,
                        "stage": Stage.QUEUED.value,
                        "progress": 0.0,
                        "queued_at": now,
                        "dispatched_at": now,
                        "not_before": None,
                        "error": lost,
                    },
                    to_status=Status.QUEUED,
                    reason=lost,
                    where=no_cancel,
                )
                action = Status.QUEUED
            else:
                message = f"{lost} (after {job.attempts} attempts)"
                ok = self._transition(
                    job.id,
                    job.attempts,
                    Status.PROCESSING,
                    {"status": Status.FAILED.value, "completed_at": now, "error": message},
                    to_status=Status.FAILED,
                    reason=message,
                    where=no_cancel,
                    drop_files=True,
                )
                action = Status.FAILED
            if not ok:
                ok = self._transition(
                    job.id,
                    job.attempts,
                    Status.PROCESSING,
                    {
                        "status": Status.CANCELLED.value,
                        "completed_at": now,
                        "cancel_requested": False,
                    },
                    to_status=Status.CANCELLED,
                    reason=f"cancelled; {lost}",
                    where=[*still_stale, jobs_table.c.cancel_requested.is_(True)],
                    drop_files=True,
                )
                action = Status.CANCELLED
            if ok:
                done.append(Recovery(job.id, action, job.worker))
        return done

    def promote_due(self, *, now: datetime | None = None, limit: int = 500) -> list[str]:
        """``scheduled -> queued`` for up to ``limit`` jobs whose ``run_at``
        has come (``queued_at`` and ``dispatched_at`` now, reason ``run_at
        reached``): one conditional write with their history rows. Returns
        their ids; the caller wakes workers for them."""
        now = now or utcnow()
        reason = "run_at reached"
        params = {"p_now": now, "p_limit": limit}
        statement = promote_scheduled(self.db.dialect)
        if self.db.dialect == POSTGRESQL:
            with self.transaction(single=True) as conn:
                rows = conn.execute(
                    statement, {**params, **event_params(Status.SCHEDULED, Status.QUEUED, reason)}
                ).all()
            for row in rows:
                log_transition(row.id, Status.SCHEDULED, Status.QUEUED, row.attempts, None, reason)
        else:
            with self.transaction() as conn:
                rows = conn.execute(statement, params).all()
                for row in rows:
                    record_event(
                        conn, row.id, Status.SCHEDULED, Status.QUEUED, row.attempts, None, reason
                    )
        for row in rows:
            self._changed(row.id)
        return [row.id for row in rows]

    def due_for_dispatch(
        self, dispatch_timeout: float, *, now: datetime | None = None, limit: int = 500
    ) -> list[str]:
        """Queued jobs that may run now and nobody may be awake for, marked as
        sent again now: last woken for over ``dispatch_timeout`` s ago (the
        broker lost the wake-up or was down, or they wait behind others), or
        a retry that came due since its last wake-up."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=dispatch_timeout)
        sent = jobs_table.c.dispatched_at
        due = and_(
            jobs_table.c.status == Status.QUEUED.value,
            or_(jobs_table.c.not_before.is_(None), jobs_table.c.not_before <= now),
            or_(
                sent.is_(None),
                sent < cutoff,
                and_(jobs_table.c.not_before.is_not(None), sent <= jobs_table.c.not_before),
            ),
        )
        with self.transaction() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    select(jobs_table.c.id)
                    .where(due)
                    .order_by(jobs_table.c.created_at)
                    .limit(limit)
                )
            ]
            if ids:
                conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.id.in_(ids), due)
                    .values(dispatched_at=now)
                )
        return ids

    def attempt_owners(self, job_ids: Sequence[str]) -> dict[str, tuple[Status, int]]:
        """Status and current attempt of each existing job in ``job_ids``."""
        found: dict[str, tuple[Status, int]] = {}
        with self.transaction(single=True) as conn:
            for start in range(0, len(job_ids), 500):
                chunk = list(job_ids[start : start + 500])
                for r in conn.execute(
                    select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.attempts).where(
                        jobs_table.c.id.in_(chunk)
                    )
                ):
                    found[r.id] = (Status(r.status), r.attempts)
        return found

    def delete_older_than(
        self, days: float, *, now: datetime | None = None, limit: int = 500
    ) -> list[str]:
        """Delete up to ``limit`` finished jobs that ended more than ``days``
        ago; return the ids of those really deleted.

        Only final jobs go: a queued or processing job is never lost to
        retention, nor is one retried meanwhile (the rows are locked, and the
        delete is conditional on them still being old and final). The caller
        removes the returned jobs' output folders, and only those.
        """
        cutoff = (now or utcnow()) - timedelta(days=days)
        final = [s.value for s in FINAL_STATUSES]
        ended = jobs_table.c.completed_at
        condition = and_(
            jobs_table.c.status.in_(final),
            or_(ended < cutoff, and_(ended.is_(None), jobs_table.c.created_at < cutoff)),
        )
        with self.transaction() as conn:
            ids = lock_rows(conn, [condition], limit=limit)
            if not ids:
                return []
            retire(conn, ids)  # the metrics keep what they counted
            # Their files, history and deliveries go with them (ON DELETE CASCADE).
            return list(
                conn.execute(
                    delete(jobs_table)
                    .where(jobs_table.c.id.in_(ids), condition)
                    .returning(jobs_table.c.id)
                ).scalars()
            )
