"""Reading jobs: one job, pages of jobs (keyset cursors), a job's history."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, and_, or_, select
from sqlalchemy.engine import RowMapping

from storage.cursors import decode_cursor, encode_cursor
from storage.errors import JobNotFound
from storage.jobs.base import StoreBase
from storage.jobs.statements import load_job
from storage.jobs.values import Job, JobEvent, JobFile, Page, is_job_id
from storage.models import DEFAULT_TENANT, Status, events_table, files_table, jobs_table

MAX_LIST_LIMIT = 500


def snapshot(conn: Connection, job_id: str) -> Job | None:
    """The job and its current attempt's files, in one indexed query (in
    ``conn``'s transaction, so a write and the read of its result agree)."""
    rows = conn.execute(load_job(), {"s_id": job_id}).mappings().all()
    if not rows:
        return None
    files = [JobFile(r["file_path"], r["file_size"]) for r in rows if r["file_path"] is not None]
    return Job.from_row(rows[0], files)


def files_of(conn: Connection, rows: Sequence[RowMapping]) -> dict[str, list[JobFile]]:
    """The current attempt's files of each job in ``rows``, in one query."""
    wanted = {(r["id"], r["attempts"]) for r in rows if r["attempts"] > 0}
    if not wanted:
        return {}
    found: dict[str, list[JobFile]] = {}
    query = (
        select(
            files_table.c.job_id,
            files_table.c.attempt,
            files_table.c.path,
            files_table.c.size_bytes,
        )
        .where(files_table.c.job_id.in_({job_id for job_id, _ in wanted}))
        .order_by(files_table.c.job_id, files_table.c.path)
    )
    for f in conn.execute(query).mappings():
        if (f["job_id"], f["attempt"]) in wanted:
            found.setdefault(f["job_id"], []).append(JobFile(f["path"], f["size_bytes"]))
    return found


class Queries(StoreBase):
    """The job store's reads."""

    def ping(self) -> None:
        """Raise :class:`~storage.errors.DatabaseUnavailable` unless the
        database answers (and a ``StorageError`` if it has no schema)."""
        with self.transaction(single=True) as conn:
            conn.execute(select(jobs_table.c.id).limit(1))

    def find_by_idempotency_key(self, key: str, *, owner: str = DEFAULT_TENANT) -> Job | None:
        """The job ``owner`` submitted with Idempotency-Key ``key``, if any."""
        with self.transaction() as conn:
            row = conn.execute(
                select(jobs_table.c.id).where(
                    jobs_table.c.owner == owner, jobs_table.c.idempotency_key == key
                )
            ).first()
            return None if row is None else snapshot(conn, row.id)

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job ``job_id``; :class:`JobNotFound` if there is none, or if
        ``owner`` is given and the job is someone else's (not found, not
        forbidden: ids reveal nothing)."""
        if not is_job_id(job_id):
            raise JobNotFound()
        with self.transaction(single=True) as conn:
            job = snapshot(conn, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound()
        return job

    def list_jobs(
        self,
        *,
        status: Status | None = None,
        limit: int = 50,
        cursor: str | None = None,
        search: str | None = None,
        owner: str | None = None,
    ) -> Page:
        """Jobs newest first, optionally of one ``owner``, of one status and
        matching ``search`` (a title substring or an id prefix), ``limit`` at a
        time (keyset paging)."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        query = select(jobs_table)
        if owner is not None:
            query = query.where(jobs_table.c.owner == owner)
        if status is not None:
            query = query.where(jobs_table.c.status == status.value)
        if search:
            pattern = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(
                or_(
                    jobs_table.c.title.ilike(f"%{pattern}%", escape="\\"),
                    jobs_table.c.id.like(f"{pattern.lower()}%", escape="\\"),
                )
            )
        if cursor is not None:
            created, last_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    jobs_table.c.created_at < created,
                    and_(jobs_table.c.created_at == created, jobs_table.c.id < last_id),
                )
            )
        query = query.order_by(jobs_table.c.created_at.desc(), jobs_table.c.id.desc())
        with self.transaction(single=True) as conn:
            rows = list(conn.execute(query.limit(limit + 1)).mappings())
            page_rows = rows[:limit]
            files = files_of(conn, page_rows)
        jobs = [Job.from_row(r, files.get(r["id"], [])) for r in page_rows]
        next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id) if len(rows) > limit else None
        return Page(jobs, next_cursor)

    def history(self, job_id: str) -> list[JobEvent]:
        """Every transition of ``job_id``, oldest first."""
        with self.transaction(single=True) as conn:
            rows = (
                conn.execute(
                    select(events_table)
                    .where(events_table.c.job_id == job_id)
                    .order_by(events_table.c.id)
                )
                .mappings()
                .all()
            )
        return [
            JobEvent(
                Status(r["from_status"]) if r["from_status"] else None,
                Status(r["to_status"]),
                r["attempt"],
                r["worker"],
                r["at"],
                r["reason"],
            )
            for r in rows
        ]
