"""A worker's transitions of a job: claim, lease, progress, files, and the end
of an attempt (complete, fail, cancelled, requeue).

Each transition is one conditional write (compare-and-set on status and
attempt), so a second delivery of a task, or a worker presumed dead, can
never change a job it no longer holds (docs/design.md, invariants 2 and 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, literal, select, update
from sqlalchemy.engine import RowMapping

from core.redact import redact_secrets
from storage.jobs.base import StoreBase
from storage.jobs.history import event_params, log_transition, record_event
from storage.jobs.statements import (
    POSTGRESQL,
    cancel_flagged_job,
    claim_job,
    complete_job,
    count_completion,
    fenced_update,
    note_claim,
    renew_lease,
    renew_lease_with_progress,
    with_history,
)
from storage.jobs.values import Job, LeaseState, utcnow
from storage.models import Stage, Status, files_table, jobs_table


def _fence(job_id: str, attempt: int, from_status: Status) -> dict[str, Any]:
    """The parameters of :func:`~storage.jobs.statements.fenced_update`."""
    return {"t_id": job_id, "t_from": from_status.value, "t_attempt": attempt, "arm_now": utcnow()}


class Transitions(StoreBase):
    """The job store's fenced writes, as the worker holding an attempt makes them."""

    def _write_recorded(
        self,
        statement: Any,
        params: dict[str, Any],
        job_id: str,
        from_status: Status,
        to_status: Status,
        reason: str | None,
        *,
        worker_row: Any = None,
    ) -> RowMapping | None:
        """Run ``statement`` (an UPDATE of one job, RETURNING at least ``id``,
        ``attempts`` and ``worker``; on PostgreSQL wrapped by
        :func:`~storage.jobs.statements.with_history`) with ``params`` and, if
        it changed the job, record the transition in its history, atomically;
        return the row, or ``None``.

        On PostgreSQL it is one statement in autocommit: one round trip
        instead of four (BEGIN, UPDATE, INSERT, COMMIT). On SQLite, a
        transaction of two statements, and ``worker_row`` (the registry row
        of the job's worker, by ``w_name``) a third.
        """
        if self.db.dialect != POSTGRESQL:
            with self.transaction() as conn:
                row = conn.execute(statement, params).mappings().first()
                if row is not None:
                    record_event(
                        conn, job_id, from_status, to_status, row["attempts"], row["worker"], reason
                    )
                    if worker_row is not None and row["worker"]:
                        conn.execute(worker_row, {**params, "w_name": row["worker"]})
            return row
        with self.transaction(single=True) as conn:
            row = (
                conn.execute(statement, {**params, **event_params(from_status, to_status, reason)})
                .mappings()
                .first()
            )
        if row is not None:
            log_transition(job_id, from_status, to_status, row["attempts"], row["worker"], reason)
        return row

    def _transition(
        self,
        job_id: str,
        attempt: int,
        from_status: Status,
        values: dict[str, Any],
        *,
        to_status: Status | None = None,
        reason: str | None = None,
        where: Sequence[Any] = (),
        drop_files: bool = False,
    ) -> bool:
        """A fenced write of ``values`` (:func:`~storage.jobs.statements.fenced_update`):
        it lands only for the attempt holding the job (and any extra
        ``where``); a status change is recorded in the history within the
        same transaction. ``drop_files`` forgets the attempt's file records
        (their files are being removed)."""
        final = to_status is not None and to_status.is_final
        statement = fenced_update(values, final=final, where=where)
        params = _fence(job_id, attempt, from_status)
        if to_status is not None and not drop_files:
            if self.db.dialect == POSTGRESQL:
                statement = with_history(statement)
            if (
                self._write_recorded(statement, params, job_id, from_status, to_status, reason)
                is None
            ):
                return False
            self._changed(job_id)
            return True
        with self.transaction() as conn:
            row = conn.execute(statement, params).first()
            if row is None:
                return False
            if to_status is not None:
                record_event(conn, job_id, from_status, to_status, attempt, row.worker, reason)
            if drop_files:
                conn.execute(delete(files_table).where(files_table.c.job_id == job_id))
        self._changed(job_id)
        return True

    def _renew(
        self, statement: Any, job_id: str, attempt: int, params: dict[str, Any]
    ) -> LeaseState:
        """A fenced write of the attempt's lease (:func:`~storage.jobs.statements.renew_lease`
        or :func:`~storage.jobs.statements.renew_lease_with_progress`)."""
        with self.transaction(single=True) as conn:
            row = conn.execute(
                statement, {**params, "l_id": job_id, "l_attempt": attempt, "hb_now": utcnow()}
            ).first()
        if row is None:
            return LeaseState.LOST
        return LeaseState.CANCEL_REQUESTED if row.cancel_requested else LeaseState.HELD

    def claim(self, job_id: str, worker: str) -> Job | None:
        """``queued -> processing`` for ``worker``: a new attempt, or ``None``.

        ``None`` means the job is gone, someone else holds or finished it, or
        its retry is not due yet: a second delivery of the same task does
        nothing. A queued job whose cancel was asked for is never claimed: it
        ends ``cancelled`` here (and ``None`` comes back).
        """
        row = self._write_recorded(
            claim_job(self.db.dialect),
            {"q_id": job_id, "q_worker": worker, "q_now": utcnow()},
            job_id,
            Status.QUEUED,
            Status.PROCESSING,
            "claimed",
            worker_row=note_claim(),
        )
        if row is None:
            # Off the hot path: only a claim that found nothing to claim.
            self._cancel_flagged(job_id)
            return None
        self._changed(job_id)
        return Job.from_row(row)

    def _cancel_flagged(self, job_id: str) -> bool:
        """``queued -> cancelled`` for a queued job whose cancel was asked for
        while it was processing (its worker's retry or a recovery raced the
        cancel): the cancel the API acknowledged wins over any later attempt."""
        row = self._write_recorded(
            cancel_flagged_job(self.db.dialect),
            {"x_id": job_id, "arm_now": utcnow()},
            job_id,
            Status.QUEUED,
            Status.CANCELLED,
            "cancelled by request before the next attempt",
        )
        if row is None:
            return False
        self._changed(job_id)
        return True

    def heartbeat(self, job_id: str, attempt: int) -> LeaseState:
        """Renew the lease of ``attempt``: held, cancel requested, or lost."""
        return self._renew(renew_lease(), job_id, attempt, {})

    def record_progress(
        self, job_id: str, attempt: int, progress: float, stage: Stage
    ) -> LeaseState:
        """Set stage and progress (never decreasing within an attempt); renews the lease."""
        progress = min(max(float(progress), 0.0), 1.0)
        state = self._renew(
            renew_lease_with_progress(),
            job_id,
            attempt,
            {"p_progress": progress, "p_stage": stage.value},
        )
        if state:
            self._changed(job_id)
        return state

    def add_file(self, job_id: str, attempt: int, path: str, size_bytes: int) -> bool:
        """Record a produced file of ``attempt``, if that attempt still holds the job.

        One conditional ``INSERT ... SELECT``: the row is written only while
        the job is processing under ``attempt``. Recording a path again for
        the same attempt updates its size.
        """
        holder = select(
            jobs_table.c.id,
            jobs_table.c.attempts,
            literal(path, files_table.c.path.type),
            literal(int(size_bytes), files_table.c.size_bytes.type),
            literal(utcnow(), files_table.c.created_at.type),
        ).where(
            jobs_table.c.id == job_id,
            jobs_table.c.status == Status.PROCESSING.value,
            jobs_table.c.attempts == attempt,
        )
        with self.transaction() as conn:
            conn.execute(
                delete(files_table).where(
                    files_table.c.job_id == job_id,
                    files_table.c.attempt == attempt,
                    files_table.c.path == path,
                )
            )
            result = conn.execute(
                insert(files_table).from_select(
                    ["job_id", "attempt", "path", "size_bytes", "created_at"], holder
                )
            )
            return result.rowcount == 1

    def add_files(self, job_id: str, attempt: int, files: Sequence[tuple[str, int]]) -> LeaseState:
        """Record several produced files of ``attempt`` in one transaction,
        fenced by one conditional write that also renews the lease."""
        now = utcnow()
        with self.transaction() as conn:
            row = conn.execute(
                update(jobs_table)
                .where(
                    jobs_table.c.id == job_id,
                    jobs_table.c.status == Status.PROCESSING.value,
                    jobs_table.c.attempts == attempt,
                )
                .values(last_heartbeat=now)
                .returning(jobs_table.c.cancel_requested)
            ).first()
            if row is None:
                return LeaseState.LOST
            if files:
                paths = [path for path, _ in files]
                conn.execute(
                    delete(files_table).where(
                        files_table.c.job_id == job_id,
                        files_table.c.attempt == attempt,
                        files_table.c.path.in_(paths),
                    )
                )
                conn.execute(
                    insert(files_table),
                    [
                        {
                            "job_id": job_id,
                            "attempt": attempt,
                            "path": path,
                            "size_bytes": int(size),
                            "created_at": now,
                        }
                        for path, size in files
                    ],
                )
        self._changed(job_id)
        return LeaseState.CANCEL_REQUESTED if row.cancel_requested else LeaseState.HELD

    def complete(
        self,
        job_id: str,
        attempt: int,
        *,
        video_url: str,
        thumbnail_url: str,
        slide_image_path: str,
        render_seconds: float | None = None,
        encode_seconds: float | None = None,
        synth_seconds: float | None = None,
        mix_seconds: float | None = None,
    ) -> LeaseState:
        """``processing -> completed`` for ``attempt``, outputs already in place:
        ``HELD`` if it completed, ``CANCEL_REQUESTED`` if a cancel came in
        first (the job is still the attempt's, to end cancelled), ``LOST`` if
        another attempt holds the job or it is gone."""
        params = {
            **_fence(job_id, attempt, Status.PROCESSING),
            "c_id": job_id,
            "c_video": video_url,
            "c_thumbnail": thumbnail_url,
            "c_slides": slide_image_path,
            "c_now": utcnow(),
            "c_render": render_seconds,
            "c_encode": encode_seconds,
            "c_synth": synth_seconds,
            "c_mix": mix_seconds,
        }
        # The worker's registry row counts it, in the same write.
        if (
            self._write_recorded(
                complete_job(self.db.dialect),
                params,
                job_id,
                Status.PROCESSING,
                Status.COMPLETED,
                "rendered",
                worker_row=count_completion(),
            )
            is not None
        ):
            self._changed(job_id)
            return LeaseState.HELD
        # Refused (off the hot path): a cancel acknowledged by the API wins
        # over a completion that had not landed yet.
        state = self.heartbeat(job_id, attempt)
        return (
            LeaseState.CANCEL_REQUESTED if state is LeaseState.CANCEL_REQUESTED else LeaseState.LOST
        )

    def fail(
        self,
        job_id: str,
        attempt: int,
        error: str,
        *,
        render_seconds: float | None = None,
        encode_seconds: float | None = None,
        synth_seconds: float | None = None,
        mix_seconds: float | None = None,
    ) -> bool:
        """``processing -> failed`` for ``attempt`` with a readable ``error``."""
        error = redact_secrets(error)
        now = utcnow()
        return self._transition(
            job_id,
            attempt,
            Status.PROCESSING,
            {
                "status": Status.FAILED.value,
                "error": error[:4000],
                "completed_at": now,
                "last_heartbeat": now,
                "cancel_requested": False,
                "render_seconds": render_seconds,
                "encode_seconds": encode_seconds,
                "synth_seconds": synth_seconds,
                "mix_seconds": mix_seconds,
            },
            to_status=Status.FAILED,
            reason=error,
            drop_files=True,
        )

    def finish_cancelled(self, job_id: str, attempt: int) -> bool:
        """``processing -> cancelled``: the worker of ``attempt`` stopped on request."""
        now = utcnow()
        return self._transition(
            job_id,
            attempt,
            Status.PROCESSING,
            {
                "status": Status.CANCELLED.value,
                "completed_at": now,
                "last_heartbeat": now,
                "error": None,
                "cancel_requested": False,
            },
            to_status=Status.CANCELLED,
            reason="cancelled by request; the worker stopped",
            drop_files=True,
        )

    def requeue(
        self, job_id: str, attempt: int, reason: str = "requeued", *, delay: float = 0.0
    ) -> Status | None:
        """``processing -> queued`` (an automatic retry): the next claim starts a
        new attempt, no earlier than ``delay`` seconds from now.

        A cancel asked for meanwhile wins: the job ends ``cancelled`` instead.
        Returns the status the job moved to, or ``None`` if ``attempt`` no
        longer holds it.
        """
        due = utcnow() + timedelta(seconds=delay) if delay > 0 else None
        return self._back_to_queue(job_id, attempt, reason, due=due)

    def hand_back(self, job_id: str, attempt: int, reason: str) -> Status | None:
        """``processing -> queued`` by a worker that stops (it drains) before
        ``attempt`` could finish: the next claim may run at once, and the
        attempt handed back is not counted against the job's budget (its
        ``attempt_limit`` grows by one in the same write, so ``attempts``
        still only goes up and every fence stays valid).

        A cancel asked for meanwhile wins: the job ends ``cancelled``.
        Returns the status the job moved to, or ``None`` if ``attempt`` no
        longer holds it.
        """
        return self._back_to_queue(
            job_id, attempt, reason, extra={"attempt_limit": jobs_table.c.attempt_limit + 1}
        )

    def _back_to_queue(
        self,
        job_id: str,
        attempt: int,
        reason: str,
        *,
        due: datetime | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Status | None:
        """``processing -> queued`` for ``attempt`` (claimable from ``due``,
        or at once), writing ``extra`` too, unless a cancel was asked for:
        then ``cancelled``. ``None`` if ``attempt`` no longer holds the job."""
        reason = redact_secrets(reason)
        now = utcnow()
        if self._transition(
            job_id,
            attempt,
            Status.PROCESSING,
            {
                "status": Status.QUEUED.value,
                "stage": Stage.QUEUED.value,
                "progress": 0.0,
                "queued_at": now,
                "not_before": due,
                "dispatched_at": due or now,
                "error": reason[:4000],
                **(extra or {}),
            },
            to_status=Status.QUEUED,
            reason=reason,
            where=[jobs_table.c.cancel_requested.is_(False)],
        ):
            return Status.QUEUED
        if self.finish_cancelled(job_id, attempt):
            return Status.CANCELLED
        return None

    def mark_dispatched(self, job_id: str) -> None:
        """Note that the task of queued ``job_id`` was just (re)sent."""
        with self.transaction(single=True) as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status == Status.QUEUED.value)
                .values(dispatched_at=utcnow())
            )
