"""What users ask of a job after submitting it: cancel, retry, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update

from storage.counters import retire
from storage.errors import InvalidTransition, JobNotFound
from storage.jobs.base import StoreBase
from storage.jobs.history import log_deletion, record_event
from storage.jobs.locks import lock_rows
from storage.jobs.queries import snapshot
from storage.jobs.statements import arm_webhook
from storage.jobs.submissions import check_quota
from storage.jobs.values import DEFAULT_ATTEMPT_LIMIT, Job, is_job_id, utcnow
from storage.models import Stage, Status, events_table, jobs_table


def _owned(owner: str | None) -> list[Any]:
    """The WHERE terms that keep a write to ``owner``'s jobs (none: any job)."""
    return [] if owner is None else [jobs_table.c.owner == owner]


class Requests(StoreBase):
    """The job store's answers to users' requests about existing jobs."""

    def request_cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        """Cancel ``job_id``: a scheduled or queued job ends cancelled at once
        (its webhook armed); a processing one is flagged, and its worker stops
        at its next heartbeat or slide.

        :class:`InvalidTransition` if the job is already finished;
        :class:`JobNotFound` if it is not ``owner``'s (when given).
        """
        if not is_job_id(job_id):
            raise JobNotFound()
        now = utcnow()
        mine = _owned(owner)
        cancelled = False
        with self.transaction() as conn:
            # Each a conditional write with its history row, in the order a
            # job moves on (scheduled, queued, processing): one that moved
            # on between two of them is caught by the next.
            for waiting in (Status.SCHEDULED, Status.QUEUED):
                row = conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.id == job_id, jobs_table.c.status == waiting.value, *mine)
                    .values(
                        status=Status.CANCELLED.value,
                        completed_at=now,
                        stage=Stage.QUEUED.value,
                        **arm_webhook(),
                    )
                    .returning(jobs_table.c.attempts),
                    {"arm_now": now},
                ).first()
                if row is not None:
                    record_event(
                        conn,
                        job_id,
                        waiting,
                        Status.CANCELLED,
                        row.attempts,
                        None,
                        f"cancelled by request while {waiting.value}",
                    )
                    cancelled = True
                    break
            else:
                conn.execute(
                    update(jobs_table)
                    .where(
                        jobs_table.c.id == job_id,
                        jobs_table.c.status == Status.PROCESSING.value,
                        *mine,
                    )
                    .values(cancel_requested=True)
                )
            job = snapshot(conn, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound()
        if job.status in (Status.COMPLETED, Status.FAILED) or (
            job.status is Status.CANCELLED and not cancelled
        ):
            raise InvalidTransition(f"the job is already {job.status.value}")
        self._changed(job_id)
        return job

    def retry(
        self,
        job_id: str,
        *,
        max_attempts: int = DEFAULT_ATTEMPT_LIMIT,
        owner: str | None = None,
        max_active: int | None = None,
    ) -> Job:
        """``failed | cancelled -> queued``, with a fresh budget of ``max_attempts``
        (at once, whatever its ``run_at`` asked; its priority stays).

        :class:`InvalidTransition` unless the job failed or was cancelled (a
        scheduled job is refused like a queued one);
        :class:`JobNotFound` if it is not ``owner``'s (when given);
        :class:`~storage.errors.QuotaExceeded` if its owner already has
        ``max_active`` jobs queued or processing (a retry counts like a
        submission).
        """
        if not is_job_id(job_id):
            raise JobNotFound()
        now = utcnow()
        with self.transaction() as conn:
            if max_active is not None:
                found = conn.execute(
                    select(jobs_table.c.owner, jobs_table.c.status).where(
                        jobs_table.c.id == job_id, *_owned(owner)
                    )
                ).first()
                if found is not None and Status(found.status) in (Status.FAILED, Status.CANCELLED):
                    check_quota(conn, found.owner, max_active)
            row = conn.execute(
                update(jobs_table)
                .where(
                    jobs_table.c.id == job_id,
                    *_owned(owner),
                    jobs_table.c.status.in_([Status.FAILED.value, Status.CANCELLED.value]),
                )
                .values(
                    status=Status.QUEUED.value,
                    stage=Stage.QUEUED.value,
                    progress=0.0,
                    error=None,
                    completed_at=None,
                    cancel_requested=False,
                    attempt_limit=jobs_table.c.attempts + max_attempts,
                    queued_at=now,
                    dispatched_at=now,
                    not_before=None,
                    video_url=None,
                    thumbnail_url=None,
                    slide_image_path=None,
                    webhook_status=None,
                    webhook_next_at=None,
                    webhook_first_at=None,
                )
                .returning(jobs_table.c.attempts)
            ).first()
            before = None
            if row is not None:
                previous = conn.execute(
                    select(events_table.c.to_status)
                    .where(events_table.c.job_id == job_id)
                    .order_by(events_table.c.id.desc())
                    .limit(1)
                ).scalar()
                before = Status(previous) if previous else None
                record_event(
                    conn, job_id, before, Status.QUEUED, row.attempts, None, "retry requested"
                )
            job = snapshot(conn, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound()
        if row is None:
            raise InvalidTransition(
                f"only failed or cancelled jobs can be retried; the job is {job.status.value}"
            )
        self._changed(job_id)
        return job

    def delete(self, job_id: str, *, owner: str | None = None) -> bool:
        """Delete ``job_id`` with its history and file records; ``False`` if
        unknown (or not ``owner``'s, when given).

        A worker still rendering it finds its next write refused and stops.
        """
        if not is_job_id(job_id):
            return False
        with self.transaction() as conn:
            if not lock_rows(conn, [jobs_table.c.id == job_id, *_owned(owner)]):
                return False
            retire(conn, [job_id])  # the metrics keep what it counted
            # Its files, history and deliveries go with it (ON DELETE CASCADE).
            deleted = conn.execute(delete(jobs_table).where(jobs_table.c.id == job_id)).rowcount
        if deleted:
            log_deletion(job_id)
            self._changed(job_id)
        return deleted == 1
