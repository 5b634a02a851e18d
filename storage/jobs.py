"""The job store: every query about jobs and every state transition.

Each transition is one conditional write (compare-and-set on status and
attempt), so a second delivery of a task, or a worker presumed dead, can never
change a job it no longer holds (DESIGN.md, invariants 2 and 3). Callers get
frozen :class:`Job` values, never live ORM rows.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    case,
    delete,
    exc,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import RowMapping

from storage.db import get_engine
from storage.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidCursor,
    JobNotFound,
    StorageError,
)
from storage.models import FINAL_STATUSES, JobFileRow, JobRow, Stage, Status

jobs_table = cast(Table, JobRow.__table__)
files_table = cast(Table, JobFileRow.__table__)

MAX_LIST_LIMIT = 500


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class JobFile:
    """A produced file, relative to the job's output folder."""

    path: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job, as the store last saw it."""

    id: str
    status: Status
    stage: Stage
    progress: float
    error: str | None
    attempts: int
    worker: str | None
    title: str
    deck: dict[str, Any]
    video_url: str | None
    thumbnail_url: str | None
    slide_image_path: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    last_heartbeat: datetime | None
    idempotency_key: str | None = None
    request_hash: str | None = None
    files: tuple[JobFile, ...] = field(default=())

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], files: Sequence[JobFile] = ()) -> Job:
        """Build a snapshot from a ``jobs`` row mapping."""
        return cls(
            id=row["id"],
            status=Status(row["status"]),
            stage=Stage(row["stage"]),
            progress=float(row["progress"]),
            error=row["error"],
            attempts=row["attempts"],
            worker=row["worker"],
            title=row["title"],
            deck=row["deck"],
            video_url=row["video_url"],
            thumbnail_url=row["thumbnail_url"],
            slide_image_path=row["slide_image_path"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            last_heartbeat=row["last_heartbeat"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            files=tuple(files),
        )

    @property
    def created_files(self) -> list[str]:
        """Paths of the files the current attempt produced."""
        return [f.path for f in self.files]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing and the cursor of the next, if any."""

    jobs: list[Job]
    next_cursor: str | None


def _encode_cursor(job: Job) -> str:
    raw = json.dumps({"t": job.created_at.isoformat(), "id": job.id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created = datetime.fromisoformat(data["t"])
        job_id = str(data["id"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc_:
        raise InvalidCursor() from exc_
    if created.tzinfo is None:
        raise InvalidCursor()
    return created, job_id


def _is_missing_schema(error: exc.DBAPIError) -> bool:
    message = str(error.orig).lower()
    return "no such table" in message or ("relation" in message and "does not exist" in message)


class JobStore:
    """Every read and write of jobs, against one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        """A store on the process-wide engine for ``url``."""
        return cls(get_engine(url))

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One unit of work; driver errors become :class:`StorageError` here."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except exc.OperationalError as error:
            if _is_missing_schema(error):
                raise StorageError(
                    "the database has no slidefarm schema: run `alembic upgrade head`"
                ) from error
            raise DatabaseUnavailable(f"the database is not reachable: {error.orig}") from error
        except exc.InterfaceError as error:
            raise DatabaseUnavailable(f"the database is not reachable: {error.orig}") from error
        except exc.ProgrammingError as error:
            if _is_missing_schema(error):
                raise StorageError(
                    "the database has no slidefarm schema: run `alembic upgrade head`"
                ) from error
            raise

    def ping(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless the database answers."""
        with self._transaction() as conn:
            conn.execute(select(jobs_table.c.id).limit(1))

    @staticmethod
    def _files_of(conn: Connection, rows: Sequence[RowMapping]) -> dict[str, list[JobFile]]:
        """The current attempt's files of each job in ``rows``, in one query."""
        wanted = {(r["id"], r["attempts"]) for r in rows if r["attempts"] > 0}
        if not wanted:
            return {}
        found: dict[str, list[JobFile]] = {}
        query = (
            select(files_table.c.job_id, files_table.c.attempt, files_table.c.path,
                   files_table.c.size_bytes)
            .where(files_table.c.job_id.in_({job_id for job_id, _ in wanted}))
            .order_by(files_table.c.job_id, files_table.c.path)
        )
        for f in conn.execute(query).mappings():
            if (f["job_id"], f["attempt"]) in wanted:
                found.setdefault(f["job_id"], []).append(JobFile(f["path"], f["size_bytes"]))
        return found

    def _snapshot(self, conn: Connection, job_id: str) -> Job | None:
        row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()
        if row is None:
            return None
        return Job.from_row(row, self._files_of(conn, [row]).get(job_id, []))

    def _transition(self, job_id: str, attempt: int, from_status: Status,
                    values: dict[str, Any]) -> bool:
        """The one shape of a fenced write: it lands only for the attempt holding the job."""
        stmt = (
            update(jobs_table)
            .where(
                jobs_table.c.id == job_id,
                jobs_table.c.status == from_status.value,
                jobs_table.c.attempts == attempt,
            )
            .values(**values)
        )
        with self._transaction() as conn:
            return conn.execute(stmt).rowcount == 1

    # -- creation and reads -------------------------------------------------

    def create(
        self,
        deck: dict[str, Any],
        *,
        title: str,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[Job, bool]:
        """Record a new queued job; return it and whether it is new.

        With an ``idempotency_key`` already used for the same ``request_hash``
        the existing job comes back (``False``); with another hash,
        :class:`IdempotencyConflict`.
        """
        job_id = str(uuid.uuid4())
        values = {
            "id": job_id,
            "status": Status.QUEUED.value,
            "stage": Stage.QUEUED.value,
            "progress": 0.0,
            "attempts": 0,
            "title": title,
            "deck": deck,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "created_at": utcnow(),
        }
        try:
            with self._transaction() as conn:
                conn.execute(insert(jobs_table).values(**values))
                created = self._snapshot(conn, job_id)
        except exc.IntegrityError as error:
            if idempotency_key is None:
                raise StorageError(f"could not record the job: {error.orig}") from error
            existing = self.find_by_idempotency_key(idempotency_key)
            if existing is None:  # deleted in between: a fresh start is right
                return self.create(deck, title=title, idempotency_key=idempotency_key,
                                   request_hash=request_hash)
            if existing.request_hash != request_hash:
                raise IdempotencyConflict() from error
            return existing, False
        assert created is not None
        return created, True

    def find_by_idempotency_key(self, key: str) -> Job | None:
        """The job submitted with Idempotency-Key ``key``, if any."""
        with self._transaction() as conn:
            row = conn.execute(
                select(jobs_table.c.id).where(jobs_table.c.idempotency_key == key)
            ).first()
            return None if row is None else self._snapshot(conn, row.id)

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; :class:`JobNotFound` if there is none."""
        with self._transaction() as conn:
            job = self._snapshot(conn, job_id)
        if job is None:
            raise JobNotFound()
        return job

    def list_jobs(self, *, status: Status | None = None, limit: int = 50,
             cursor: str | None = None) -> Page:
        """Jobs newest first, optionally of one status, ``limit`` at a time (keyset paging)."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        query = select(jobs_table)
        if status is not None:
            query = query.where(jobs_table.c.status == status.value)
        if cursor is not None:
            created, last_id = _decode_cursor(cursor)
            query = query.where(
                or_(
                    jobs_table.c.created_at < created,
                    and_(jobs_table.c.created_at == created, jobs_table.c.id < last_id),
                )
            )
        query = query.order_by(jobs_table.c.created_at.desc(), jobs_table.c.id.desc())
        with self._transaction() as conn:
            rows = list(conn.execute(query.limit(limit + 1)).mappings())
            page_rows = rows[:limit]
            files = self._files_of(conn, page_rows)
        jobs = [Job.from_row(r, files.get(r["id"], [])) for r in page_rows]
        next_cursor = _encode_cursor(jobs[-1]) if len(rows) > limit else None
        return Page(jobs, next_cursor)

    # -- transitions -------------------------------------------------------

    def claim(self, job_id: str, worker: str) -> Job | None:
        """``queued -> processing`` for ``worker``: a new attempt, or ``None``.

        ``None`` means the job is gone or someone else holds or finished it:
        a second delivery of the same task does nothing.
        """
        now = utcnow()
        stmt = (
            update(jobs_table)
            .where(jobs_table.c.id == job_id, jobs_table.c.status == Status.QUEUED.value)
            .values(
                status=Status.PROCESSING.value,
                stage=Stage.RENDERING_SLIDES.value,
                attempts=jobs_table.c.attempts + 1,
                worker=worker,
                progress=0.0,
                error=None,
                started_at=now,
                completed_at=None,
                last_heartbeat=now,
                video_url=None,
                thumbnail_url=None,
                slide_image_path=None,
            )
            .returning(*jobs_table.c)
        )
        with self._transaction() as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else Job.from_row(row)

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        """Renew the lease of ``attempt``; ``False`` means it is no longer held."""
        return self._transition(job_id, attempt, Status.PROCESSING,
                                {"last_heartbeat": utcnow()})

    def record_progress(self, job_id: str, attempt: int, progress: float, stage: Stage) -> bool:
        """Set stage and progress (never decreasing within an attempt); renews the lease."""
        progress = min(max(float(progress), 0.0), 1.0)
        return self._transition(
            job_id, attempt, Status.PROCESSING,
            {
                "progress": case(
                    (jobs_table.c.progress < progress, progress), else_=jobs_table.c.progress
                ),
                "stage": stage.value,
                "last_heartbeat": utcnow(),
            },
        )

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
        with self._transaction() as conn:
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

    def complete(self, job_id: str, attempt: int, *, video_url: str, thumbnail_url: str,
                 slide_image_path: str) -> bool:
        """``processing -> completed`` for ``attempt``, outputs already in place."""
        now = utcnow()
        return self._transition(
            job_id, attempt, Status.PROCESSING,
            {
                "status": Status.COMPLETED.value,
                "stage": Stage.DONE.value,
                "progress": 1.0,
                "error": None,
                "video_url": video_url,
                "thumbnail_url": thumbnail_url,
                "slide_image_path": slide_image_path,
                "completed_at": now,
                "last_heartbeat": now,
            },
        )

    def fail(self, job_id: str, attempt: int, error: str) -> bool:
        """``processing -> failed`` for ``attempt`` with a readable ``error``."""
        now = utcnow()
        return self._transition(
            job_id, attempt, Status.PROCESSING,
            {"status": Status.FAILED.value, "error": error[:4000], "completed_at": now,
             "last_heartbeat": now},
        )

    def requeue(self, job_id: str, attempt: int) -> bool:
        """``processing -> queued`` (recovery): the next claim starts a new attempt."""
        return self._transition(
            job_id, attempt, Status.PROCESSING,
            {"status": Status.QUEUED.value, "stage": Stage.QUEUED.value, "progress": 0.0},
        )

    # -- retention ---------------------------------------------------------

    def delete_older_than(self, days: float, *, now: datetime | None = None) -> list[str]:
        """Delete finished jobs that ended more than ``days`` ago; return their ids.

        Only final jobs go: a queued or processing job is never lost to
        retention. The caller removes the returned jobs' output folders.
        """
        cutoff = (now or utcnow()) - timedelta(days=days)
        final = [s.value for s in FINAL_STATUSES]
        ended = jobs_table.c.completed_at
        condition = and_(
            jobs_table.c.status.in_(final),
            or_(ended < cutoff, and_(ended.is_(None), jobs_table.c.created_at < cutoff)),
        )
        with self._transaction() as conn:
            ids = [r.id for r in conn.execute(select(jobs_table.c.id).where(condition))]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                conn.execute(delete(files_table).where(files_table.c.job_id.in_(chunk)))
                conn.execute(delete(jobs_table).where(jobs_table.c.id.in_(chunk), condition))
        return ids

