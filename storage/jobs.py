"""The job store: every query about jobs and every state transition.

Each transition is one conditional write (compare-and-set on status and
attempt), so a second delivery of a task, or a worker presumed dead, can never
change a job it no longer holds (docs/design.md, invariants 2 and 3). Callers get
frozen :class:`Job` values, never live ORM rows.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    String,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exc,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import RowMapping

from storage.counters import retire
from storage.db import get_engine
from storage.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    QuotaExceeded,
    StorageError,
)
from storage.feed import ChangeFeed
from storage.models import (
    DEFAULT_TENANT,
    FINAL_STATUSES,
    Stage,
    Status,
    UTCDateTime,
    WebhookStatus,
    events_table,
    files_table,
    jobs_table,
    workers_table,
)
from storage.redact import redact_secrets

log = logging.getLogger("slidefarm.jobs")


MAX_LIST_LIMIT = 500
#: First key of the advisory lock that serializes one owner's submissions.
ADVISORY_QUOTA = 0x5F1D
IDEMPOTENCY_TTL = timedelta(hours=24)
DEFAULT_ATTEMPT_LIMIT = 3
#: Tries of a submission whose Idempotency-Key is held by a job that is gone
#: when looked up (deleted in between); past them, a clear error.
CREATE_TRIES = 3


class LeaseState(enum.Enum):
    """What a worker's write learned about its attempt."""

    HELD = "held"
    CANCEL_REQUESTED = "cancel_requested"
    LOST = "lost"

    def __bool__(self) -> bool:
        return self is not LeaseState.LOST


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One transition in a job's history."""

    from_status: Status | None
    to_status: Status
    attempt: int
    worker: str | None
    at: datetime
    reason: str | None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What the sweeper did to one stale job."""

    job_id: str
    action: Status  # queued (requeued), failed or cancelled
    worker: str | None


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
    cancel_requested: bool = False
    attempt_limit: int = DEFAULT_ATTEMPT_LIMIT
    queued_at: datetime | None = None
    dispatched_at: datetime | None = None
    not_before: datetime | None = None
    render_seconds: float | None = None
    encode_seconds: float | None = None
    owner: str = DEFAULT_TENANT
    callback_url: str | None = None
    webhook_status: str | None = None
    webhook_attempts: int = 0
    webhook_first_at: datetime | None = None
    webhook_next_at: datetime | None = None
    webhook_last_code: int | None = None
    webhook_last_error: str | None = None
    webhook_delivered_at: datetime | None = None
    files: tuple[JobFile, ...] = field(default=())

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], files: Sequence[JobFile] = ()) -> Job:
        """Build a snapshot from a ``jobs`` row mapping."""
        plain = {name: row[name] for name in _PLAIN_FIELDS}
        return cls(
            **plain,
            status=Status(row["status"]),
            stage=Stage(row["stage"]),
            progress=float(row["progress"]),
            cancel_requested=bool(row["cancel_requested"]),
            files=tuple(files),
        )

    @property
    def created_files(self) -> list[str]:
        """Paths of the files the current attempt produced."""
        return [f.path for f in self.files]

    @property
    def queue_wait_seconds(self) -> float | None:
        """How long the last attempt waited in the queue before a worker claimed it."""
        if self.started_at is None or self.queued_at is None:
            return None
        return max((self.started_at - self.queued_at).total_seconds(), 0.0)


#: Job fields copied from the row as they are (the others are converted).
_PLAIN_FIELDS = tuple(
    f.name for f in dataclass_fields(Job)
    if f.name not in ("status", "stage", "progress", "cancel_requested", "files")
)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing and the cursor of the next, if any."""

    jobs: list[Job]
    next_cursor: str | None


#: ``<created_at in microseconds since 1970 UTC>_<job id>``. Every string of
#: this shape is a cursor the store can resume from, so the API can document
#: exactly which cursors it accepts (and refuse the rest with 400).
CURSOR_PATTERN = (r"^[0-9]{1,17}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}"
                  r"-[0-9a-f]{12}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode_cursor(job: Job) -> str:
    return f"{(job.created_at - _EPOCH) // timedelta(microseconds=1)}_{job.id}"


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    # fullmatch: a trailing newline does not slip past ``$``.
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise InvalidCursor()
    micros, job_id = cursor.split("_")
    return _EPOCH + timedelta(microseconds=int(micros)), job_id


@lru_cache(maxsize=8)
def _feed(url: str, ttl: float) -> ChangeFeed:
    return ChangeFeed(url, ttl)


def is_job_id(value: str) -> bool:
    """Job ids are UUIDs (lower case, hyphenated); anything else names no job,
    and is refused before it reaches SQL or a cache key."""
    try:
        # Exactly the form ids are stored in: any other spelling would miss.
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


#: Statements of the hot paths, built once per process (see
#: :meth:`JobStore._write_recorded`); every value they need is a bind parameter.
_STATEMENTS: dict[tuple[Any, ...], Any] = {}
#: The columns a submission writes (``create``'s values, as bind parameters).
_CREATE_COLUMNS = ("id", "status", "stage", "progress", "attempts", "title", "deck",
                   "idempotency_key", "request_hash", "attempt_limit", "owner", "callback_url",
                   "created_at", "queued_at", "dispatched_at")


def _cached(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    found = _STATEMENTS.get(key)
    if found is None:
        found = _STATEMENTS.setdefault(key, build())
    return found


def _insert_job() -> Any:
    return (insert(jobs_table)
            .values({name: bindparam(name, type_=jobs_table.c[name].type)
                     for name in _CREATE_COLUMNS})
            .returning(*jobs_table.c))


def _snapshot_query() -> Any:
    """One job and its current attempt's files (a row per file), by ``s_id``."""
    return (
        select(jobs_table, files_table.c.path.label("file_path"),
               files_table.c.size_bytes.label("file_size"))
        .select_from(jobs_table.outerjoin(files_table, and_(
            files_table.c.job_id == jobs_table.c.id,
            files_table.c.attempt == jobs_table.c.attempts)))
        .where(jobs_table.c.id == bindparam("s_id"))
        .order_by(files_table.c.path)
    )


def worker_started(job_id: Any, now: Any) -> dict[str, Any]:
    """The ``workers`` row's values when it claims ``job_id`` (values or bind
    parameters): the registry and the claim's own write share them."""
    return {"current_job": job_id, "last_seen": now}


#: The ``workers`` column that counts each way an attempt can end.
OUTCOME_COUNTERS = {"completed": "jobs_done", "failed": "jobs_failed",
                    "retrying": "jobs_retried", "cancelled": "jobs_cancelled"}


def worker_finished(job_id: Any, now: Any, *, outcome: str) -> dict[str, Any]:
    """The ``workers`` row's values when it ends ``job_id`` with ``outcome``
    (a key of :data:`OUTCOME_COUNTERS`): that outcome counted, ``current_job``
    cleared if it is still this job."""
    counter = workers_table.c[OUTCOME_COUNTERS[outcome]]
    return {counter.key: counter + 1,
            "current_job": case((workers_table.c.current_job == job_id, None),
                                else_=workers_table.c.current_job),
            "last_seen": now}


def _event_params(from_status: Status | None, to_status: Status,
                  reason: str | None) -> dict[str, Any]:
    """The history row's fields, as :meth:`JobStore._recorded`'s parameters."""
    return {"ev_from": from_status.value if from_status else None, "ev_to": to_status.value,
            "ev_at": utcnow(), "ev_reason": redact_secrets(reason)[:2000] if reason else None}


def _log_transition(job_id: str, from_status: Status | None, to_status: Status, attempt: int,
                    worker: str | None, reason: str | None) -> None:
    # One line per transition, so grepping every host's logs for a job id
    # tells its story.
    log.info("transition job=%s from=%s to=%s attempt=%d worker=%s reason=%s", job_id,
             from_status.value if from_status else "-", to_status.value, attempt,
             worker or "-", json.dumps(reason or ""))


def _owned(owner: str | None) -> list[Any]:
    """The WHERE terms that keep a write to ``owner``'s jobs (none: any job)."""
    return [] if owner is None else [jobs_table.c.owner == owner]


def _unreachable(error: exc.DBAPIError) -> str:
    # The driver's message may quote the connection string: never its password.
    return redact_secrets(f"the database is not reachable: {error.orig}")


def _is_missing_schema(error: exc.DBAPIError) -> bool:
    message = str(error.orig).lower()
    return "no such table" in message or ("relation" in message and "does not exist" in message)


class JobStore:
    """Every read and write of jobs, against one database."""

    def __init__(self, engine: Engine, feed: ChangeFeed | None = None) -> None:
        self.engine = engine
        self.feed = feed

    @classmethod
    def from_url(cls, url: str, redis_url: str | None = None,
                 cache_ttl: float = 5.0) -> JobStore:
        """A store on the process-wide engine for ``url``; with ``redis_url``,
        every change also invalidates the status cache and is announced on
        Redis pub/sub."""
        return cls(get_engine(url), _feed(redis_url, cache_ttl) if redis_url else None)

    @classmethod
    def from_settings(cls, settings: Any) -> JobStore:
        """The store as ``settings`` (a :class:`~storage.config.Settings`) describe it."""
        return cls.from_url(settings.database_url, settings.redis_url, settings.cache_ttl)

    def _changed(self, job_id: str) -> None:
        if self.feed is not None:
            self.feed.changed(job_id)

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def transaction(self, *, single: bool = False) -> Iterator[Connection]:
        """One unit of work; driver errors become :class:`StorageError` here.

        ``single``: the work is one statement (a read, or one conditional
        write), atomic by itself, so it runs in autocommit and skips the
        BEGIN and COMMIT round trips.
        """
        try:
            if single:
                with self.engine.connect() as conn:
                    yield conn.execution_options(isolation_level="AUTOCOMMIT")
                return
            with self.engine.begin() as conn:
                yield conn
        except exc.OperationalError as error:
            if _is_missing_schema(error):
                raise StorageError(
                    "the database has no slidefarm schema: run `alembic upgrade head`"
                ) from error
            raise DatabaseUnavailable(_unreachable(error)) from error
        except exc.InterfaceError as error:
            raise DatabaseUnavailable(_unreachable(error)) from error
        except exc.DBAPIError as error:
            if _is_missing_schema(error):
                raise StorageError(
                    "the database has no slidefarm schema: run `alembic upgrade head`"
                ) from error
            if error.connection_invalidated:
                raise DatabaseUnavailable(
                    redact_secrets(f"the database connection was lost: {error.orig}")
                ) from error
            raise

    def ping(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless the database answers."""
        with self.transaction(single=True) as conn:
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
        """The job and its current attempt's files, in one indexed query."""
        rows = conn.execute(_cached(("snapshot",), _snapshot_query),
                            {"s_id": job_id}).mappings().all()
        if not rows:
            return None
        files = [JobFile(r["file_path"], r["file_size"]) for r in rows
                 if r["file_path"] is not None]
        return Job.from_row(rows[0], files)

    @staticmethod
    def _record(conn: Connection, job_id: str, from_status: Status | None, to_status: Status,
                attempt: int, worker: str | None, reason: str | None) -> None:
        event = _event_params(from_status, to_status, reason)
        conn.execute(insert(events_table).values(
            job_id=job_id, from_status=event["ev_from"], to_status=event["ev_to"],
            attempt=attempt, worker=worker, at=event["ev_at"], reason=event["ev_reason"],
        ))
        _log_transition(job_id, from_status, to_status, attempt, worker, reason)

    @staticmethod
    def _recorded(stmt: Any, worker_values: dict[str, Any] | None = None) -> Any:
        """PostgreSQL: ``stmt`` (an INSERT or UPDATE of one job RETURNING at
        least ``id``, ``attempts`` and ``worker``) with its history row, and
        the worker's registry row if ``worker_values``, as one statement of
        data-modifying CTEs; it selects the job's row. The history row's
        fields are parameters (:func:`_event_params`), so the statement can
        be built once and cached."""
        changed = stmt.cte("changed")
        history = insert(events_table).from_select(
            ["job_id", "from_status", "to_status", "attempt", "worker", "at", "reason"],
            select(changed.c.id, bindparam("ev_from", type_=String()),
                   bindparam("ev_to", type_=String()), changed.c.attempts, changed.c.worker,
                   bindparam("ev_at", type_=UTCDateTime()),
                   bindparam("ev_reason", type_=Text())),
        ).cte("history")
        query = select(changed).add_cte(history)
        if worker_values:
            query = query.add_cte(
                update(workers_table)
                .where(workers_table.c.name == select(changed.c.worker).scalar_subquery())
                .values(**worker_values).cte("worker_row"))
        return query

    def _write_recorded(self, build: Callable[[], Any], params: dict[str, Any], job_id: str,
                        from_status: Status, to_status: Status, reason: str | None, *,
                        key: str | None = None,
                        worker_values: Callable[[], dict[str, Any]] | None = None
                        ) -> RowMapping | None:
        """Run the statement ``build()`` makes (an UPDATE of one job, RETURNING
        at least ``id``, ``attempts`` and ``worker``) with ``params`` and, if
        it changed the job, record the transition in its history, atomically;
        return the row, or ``None``.

        On PostgreSQL it is one statement (the history row is inserted by a
        data-modifying CTE on the UPDATE's result) in autocommit: one round
        trip instead of four (BEGIN, UPDATE, INSERT, COMMIT). On SQLite, a
        transaction of two statements.

        ``worker_values``: also set these on the ``workers`` row of the job's
        worker (the registry's view of what it is doing), in the same write.
        ``key``: the statement takes all its values from ``params`` (bind
        parameters), so it is built once per process and reused: building
        and caching-keying a statement of this size cost more CPU than
        running it.
        """
        if self.engine.dialect.name != "postgresql":
            stmt = _cached(("sqlite", key), build) if key else build()
            with self.transaction() as conn:
                row = conn.execute(stmt, params).mappings().first()
                if row is not None:
                    self._record(conn, job_id, from_status, to_status, row["attempts"],
                                 row["worker"], reason)
                    if worker_values is not None and row["worker"]:
                        conn.execute(update(workers_table)
                                     .where(workers_table.c.name == bindparam("w_name"))
                                     .values(**worker_values()),
                                     {**params, "w_name": row["worker"]})
            return row

        def query() -> Any:
            return self._recorded(build(), worker_values() if worker_values else None)

        with self.transaction(single=True) as conn:
            row = conn.execute(_cached(("postgresql", key), query) if key else query(),
                               {**params, **_event_params(from_status, to_status, reason)}
                               ).mappings().first()
        if row is not None:
            _log_transition(job_id, from_status, to_status, row["attempts"], row["worker"],
                            reason)
        return row

    @staticmethod
    def _arm_webhook() -> dict[str, Any]:
        """Values that make a job's completion webhook due at ``arm_now`` (a
        parameter), if it has a callback URL: set by every transition into a
        final state, in the same write, so no final state can miss its webhook."""
        has_callback = jobs_table.c.callback_url.is_not(None)
        now = bindparam("arm_now", type_=UTCDateTime())
        return {
            "webhook_status": case((has_callback, literal(WebhookStatus.PENDING.value)),
                                   else_=None),
            "webhook_next_at": case((has_callback, now), else_=None),
            "webhook_first_at": case((has_callback, now), else_=None),
            "webhook_attempts": 0,
            "webhook_last_code": None,
            "webhook_last_error": None,
            "webhook_delivered_at": None,
        }

    def _transition(self, job_id: str, attempt: int, from_status: Status,
                    values: dict[str, Any], *, to_status: Status | None = None,
                    reason: str | None = None, where: Sequence[Any] = (),
                    drop_files: bool = False,
                    worker_values: Callable[[], dict[str, Any]] | None = None,
                    key: str | None = None, params: dict[str, Any] | None = None) -> bool:
        """The one shape of a fenced write: it lands only for the attempt
        holding the job (and any extra ``where``); a status change is recorded
        in the history within the same transaction. ``drop_files`` forgets the
        attempt's file records (their files are being removed). With ``key``,
        ``values`` take their values from ``params`` only and the statement
        is built once (see :meth:`_write_recorded`)."""
        params = {**(params or {}), "t_id": job_id, "t_from": from_status.value,
                  "t_attempt": attempt, "arm_now": utcnow()}

        def build() -> Any:
            final = {**self._arm_webhook()} if to_status is not None and to_status.is_final \
                else {}
            return (
                update(jobs_table)
                .where(
                    jobs_table.c.id == bindparam("t_id"),
                    jobs_table.c.status == bindparam("t_from"),
                    jobs_table.c.attempts == bindparam("t_attempt"),
                    *where,
                )
                .values(**values, **final)
                .returning(jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.worker)
            )

        if to_status is not None and not drop_files:
            if self._write_recorded(build, params, job_id, from_status, to_status, reason,
                                    key=key, worker_values=worker_values) is None:
                return False
            self._changed(job_id)
            return True
        with self.transaction() as conn:
            row = conn.execute(build(), params).first()
            if row is None:
                return False
            if to_status is not None:
                self._record(conn, job_id, from_status, to_status, attempt, row.worker, reason)
            if drop_files:
                conn.execute(delete(files_table).where(files_table.c.job_id == job_id))
        self._changed(job_id)
        return True

    def _lease_write(self, job_id: str, attempt: int, kind: str,
                     params: dict[str, Any]) -> LeaseState:
        """A fenced write of the attempt's lease: ``heartbeat`` (renew) or
        ``progress`` (renew, set the stage, raise the progress)."""

        def build() -> Any:
            values: dict[str, Any] = {"last_heartbeat": bindparam("hb_now", type_=UTCDateTime())}
            if kind == "progress":
                progress = bindparam("p_progress", type_=Float())
                values["progress"] = case((jobs_table.c.progress < progress, progress),
                                          else_=jobs_table.c.progress)
                values["stage"] = bindparam("p_stage", type_=String())
            return (
                update(jobs_table)
                .where(
                    jobs_table.c.id == bindparam("l_id"),
                    jobs_table.c.status == Status.PROCESSING.value,
                    jobs_table.c.attempts == bindparam("l_attempt"),
                )
                .values(**values)
                .returning(jobs_table.c.cancel_requested)
            )

        with self.transaction(single=True) as conn:
            row = conn.execute(_cached(("lease", kind), build),
                               {**params, "l_id": job_id, "l_attempt": attempt,
                                "hb_now": utcnow()}).first()
        if row is None:
            return LeaseState.LOST
        return LeaseState.CANCEL_REQUESTED if row.cancel_requested else LeaseState.HELD

    # -- creation and reads -------------------------------------------------

    def create(
        self,
        deck: dict[str, Any],
        *,
        title: str,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        attempt_limit: int = DEFAULT_ATTEMPT_LIMIT,
        owner: str = DEFAULT_TENANT,
        callback_url: str | None = None,
        max_active: int | None = None,
    ) -> tuple[Job, bool]:
        """Record a new queued job; return it and whether it is new.

        With an ``idempotency_key`` used in the last 24 hours for the same
        ``request_hash`` the existing job comes back (``False``); with another
        hash, :class:`IdempotencyConflict`. Racing submissions of one key
        meet at the unique index: one row, one winner. Keys are per ``owner``.

        ``max_active``: :class:`QuotaExceeded` if ``owner`` already has that
        many queued or processing jobs; the count and the insert are one
        transaction, serialized per owner, so racing submissions from many API
        processes cannot overshoot the cap.
        """
        job_id = str(uuid.uuid4())
        now = utcnow()
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
            "attempt_limit": attempt_limit,
            "owner": owner,
            "callback_url": callback_url,
            "created_at": now,
            "queued_at": now,
            # Optimistic: the caller sends the task right after the commit; if
            # that send fails, the sweeper sends it again after the timeout.
            "dispatched_at": now,
        }
        if idempotency_key is not None:
            self._expire_idempotency_key(owner, idempotency_key, now)
        for _ in range(CREATE_TRIES):
            try:
                created = self._insert(values, max_active)
            except exc.IntegrityError as error:
                if idempotency_key is None:
                    raise StorageError(f"could not record the job: {error.orig}") from error
                existing = self.find_by_idempotency_key(idempotency_key, owner=owner)
                if existing is None:  # deleted in between: a fresh start is right
                    continue
                if existing.request_hash != request_hash:
                    raise IdempotencyConflict() from error
                return existing, False
            self._changed(job_id)
            return created, True
        # Each try met a job holding the key that was gone when looked up: a
        # client deleting and resubmitting in a loop. Bounded, and said so.
        raise StorageError(
            f"could not record the job: its Idempotency-Key was taken and freed again "
            f"{CREATE_TRIES} times in a row; try again")

    def _insert(self, values: dict[str, Any], max_active: int | None) -> Job:
        """One try of :meth:`create`: the row and its history, in one transaction."""
        job_id, owner = values["id"], values["owner"]
        with self.transaction() as conn:
            if max_active is not None:
                self._check_quota(conn, owner, max_active)
            if conn.dialect.name == "postgresql":  # the row and its history: one statement
                row = conn.execute(
                    _cached(("postgresql", "create"), lambda: self._recorded(_insert_job())),
                    {**values, **_event_params(None, Status.QUEUED, "submitted")},
                ).mappings().one()
                _log_transition(job_id, None, Status.QUEUED, 0, None, "submitted")
            else:
                row = conn.execute(_cached(("sqlite", "create"), _insert_job),
                                   values).mappings().one()
                self._record(conn, job_id, None, Status.QUEUED, 0, None, "submitted")
            return Job.from_row(row)

    @staticmethod
    def _check_quota(conn: Connection, owner: str, max_active: int) -> None:
        if conn.dialect.name == "postgresql":
            # One submitter per owner at a time between the count and the
            # insert (released at commit); other owners are not held up.
            conn.execute(select(func.pg_advisory_xact_lock(
                literal(ADVISORY_QUOTA), func.hashtext(owner))))
        else:
            # The count below cannot be overtaken by another writer before
            # this transaction's insert.
            _take_write_lock(conn)
        # Counting stops at the cap: the cost stays bounded however many
        # jobs an owner (the open mode's, an admin's bulk load) has active.
        active = conn.execute(
            select(func.count()).select_from(
                select(jobs_table.c.id).where(
                    jobs_table.c.owner == owner,
                    jobs_table.c.status.in_([Status.QUEUED.value, Status.PROCESSING.value]))
                .limit(max_active).subquery())
        ).scalar_one()
        if active >= max_active:
            raise QuotaExceeded(
                f"the tenant already has {active} queued or processing jobs "
                f"(SLIDEFARM_MAX_ACTIVE_JOBS = {max_active}); wait for some to finish")

    def _expire_idempotency_key(self, owner: str, key: str, now: datetime) -> None:
        """Free ``key`` if the job holding it was submitted over 24 hours ago."""
        with self.transaction(single=True) as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.owner == owner, jobs_table.c.idempotency_key == key,
                       jobs_table.c.created_at < now - IDEMPOTENCY_TTL)
                .values(idempotency_key=None)
            )

    def find_by_idempotency_key(self, key: str, *, owner: str = DEFAULT_TENANT) -> Job | None:
        """The job ``owner`` submitted with Idempotency-Key ``key``, if any."""
        with self.transaction() as conn:
            row = conn.execute(
                select(jobs_table.c.id).where(jobs_table.c.owner == owner,
                                              jobs_table.c.idempotency_key == key)
            ).first()
            return None if row is None else self._snapshot(conn, row.id)

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job ``job_id``; :class:`JobNotFound` if there is none, or if
        ``owner`` is given and the job is someone else's (not found, not
        forbidden: ids reveal nothing)."""
        if not is_job_id(job_id):
            raise JobNotFound()
        with self.transaction(single=True) as conn:
            job = self._snapshot(conn, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound()
        return job

    def list_jobs(self, *, status: Status | None = None, limit: int = 50,
                  cursor: str | None = None, search: str | None = None,
                  owner: str | None = None) -> Page:
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
            query = query.where(or_(
                jobs_table.c.title.ilike(f"%{pattern}%", escape="\\"),
                jobs_table.c.id.like(f"{pattern.lower()}%", escape="\\"),
            ))
        if cursor is not None:
            created, last_id = _decode_cursor(cursor)
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
            files = self._files_of(conn, page_rows)
        jobs = [Job.from_row(r, files.get(r["id"], [])) for r in page_rows]
        next_cursor = _encode_cursor(jobs[-1]) if len(rows) > limit else None
        return Page(jobs, next_cursor)

    # -- transitions -------------------------------------------------------

    def claim(self, job_id: str, worker: str) -> Job | None:
        """``queued -> processing`` for ``worker``: a new attempt, or ``None``.

        ``None`` means the job is gone, someone else holds or finished it, or
        its retry is not due yet: a second delivery of the same task does
        nothing. A queued job whose cancel was asked for is never claimed: it
        ends ``cancelled`` here (and ``None`` comes back).
        """
        def build() -> Any:
            now = bindparam("q_now", type_=UTCDateTime())
            return (
                update(jobs_table)
                .where(
                    jobs_table.c.id == bindparam("q_id"),
                    jobs_table.c.status == Status.QUEUED.value,
                    or_(jobs_table.c.not_before.is_(None), jobs_table.c.not_before <= now),
                    jobs_table.c.cancel_requested.is_(False),
                )
                .values(
                    status=Status.PROCESSING.value,
                    stage=Stage.RENDERING_SLIDES.value,
                    attempts=jobs_table.c.attempts + 1,
                    worker=bindparam("q_worker", type_=String()),
                    progress=0.0,
                    error=None,
                    started_at=now,
                    completed_at=None,
                    last_heartbeat=now,
                    video_url=None,
                    thumbnail_url=None,
                    slide_image_path=None,
                    not_before=None,
                    render_seconds=None,
                    encode_seconds=None,
                )
                .returning(*jobs_table.c)
            )

        def note_worker() -> dict[str, Any]:
            return worker_started(bindparam("q_id"), bindparam("q_now", type_=UTCDateTime()))

        row = self._write_recorded(build, {"q_id": job_id, "q_worker": worker, "q_now": utcnow()},
                                   job_id, Status.QUEUED, Status.PROCESSING, "claimed",
                                   key="claim", worker_values=note_worker)
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
        def build() -> Any:
            return (
                update(jobs_table)
                .where(jobs_table.c.id == bindparam("x_id"),
                       jobs_table.c.status == Status.QUEUED.value,
                       jobs_table.c.cancel_requested.is_(True))
                .values(status=Status.CANCELLED.value, stage=Stage.QUEUED.value,
                        cancel_requested=False,
                        completed_at=bindparam("arm_now", type_=UTCDateTime()),
                        **self._arm_webhook())
                .returning(jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.worker)
            )

        row = self._write_recorded(build, {"x_id": job_id, "arm_now": utcnow()}, job_id,
                                   Status.QUEUED, Status.CANCELLED,
                                   "cancelled by request before the next attempt",
                                   key="cancel_flagged")
        if row is None:
            return False
        self._changed(job_id)
        return True

    def heartbeat(self, job_id: str, attempt: int) -> LeaseState:
        """Renew the lease of ``attempt``: held, cancel requested, or lost."""
        return self._lease_write(job_id, attempt, "heartbeat", {})

    def record_progress(self, job_id: str, attempt: int, progress: float,
                        stage: Stage) -> LeaseState:
        """Set stage and progress (never decreasing within an attempt); renews the lease."""
        progress = min(max(float(progress), 0.0), 1.0)
        state = self._lease_write(job_id, attempt, "progress",
                                  {"p_progress": progress, "p_stage": stage.value})
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

    def add_files(self, job_id: str, attempt: int,
                  files: Sequence[tuple[str, int]]) -> LeaseState:
        """Record several produced files of ``attempt`` in one transaction,
        fenced by one conditional write that also renews the lease."""
        now = utcnow()
        with self.transaction() as conn:
            row = conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id,
                       jobs_table.c.status == Status.PROCESSING.value,
                       jobs_table.c.attempts == attempt)
                .values(last_heartbeat=now)
                .returning(jobs_table.c.cancel_requested)
            ).first()
            if row is None:
                return LeaseState.LOST
            if files:
                paths = [path for path, _ in files]
                conn.execute(delete(files_table).where(
                    files_table.c.job_id == job_id, files_table.c.attempt == attempt,
                    files_table.c.path.in_(paths)))
                conn.execute(insert(files_table), [
                    {"job_id": job_id, "attempt": attempt, "path": path,
                     "size_bytes": int(size), "created_at": now} for path, size in files])
        self._changed(job_id)
        return LeaseState.CANCEL_REQUESTED if row.cancel_requested else LeaseState.HELD

    def complete(self, job_id: str, attempt: int, *, video_url: str, thumbnail_url: str,
                 slide_image_path: str, render_seconds: float | None = None,
                 encode_seconds: float | None = None) -> LeaseState:
        """``processing -> completed`` for ``attempt``, outputs already in place:
        ``HELD`` if it completed, ``CANCEL_REQUESTED`` if a cancel came in
        first (the job is still the attempt's, to end cancelled), ``LOST`` if
        another attempt holds the job or it is gone."""
        now = utcnow()

        def counted() -> dict[str, Any]:
            # The worker's registry row counts it, in the same write.
            return worker_finished(bindparam("c_id"), bindparam("c_now", type_=UTCDateTime()),
                                   outcome="completed")

        if self._transition(
            job_id, attempt, Status.PROCESSING,
            {
                "status": Status.COMPLETED.value,
                "stage": Stage.DONE.value,
                "progress": 1.0,
                "error": None,
                "video_url": bindparam("c_video", type_=String()),
                "thumbnail_url": bindparam("c_thumbnail", type_=String()),
                "slide_image_path": bindparam("c_slides", type_=String()),
                "completed_at": bindparam("c_now", type_=UTCDateTime()),
                "last_heartbeat": bindparam("c_now", type_=UTCDateTime()),
                "cancel_requested": False,
                "render_seconds": bindparam("c_render", type_=Float()),
                "encode_seconds": bindparam("c_encode", type_=Float()),
            },
            to_status=Status.COMPLETED, reason="rendered", worker_values=counted,
            key="complete", where=[jobs_table.c.cancel_requested.is_(False)],
            params={"c_id": job_id, "c_video": video_url, "c_thumbnail": thumbnail_url,
                    "c_slides": slide_image_path, "c_now": now, "c_render": render_seconds,
                    "c_encode": encode_seconds},
        ):
            return LeaseState.HELD
        # Refused (off the hot path): a cancel acknowledged by the API wins
        # over a completion that had not landed yet.
        state = self.heartbeat(job_id, attempt)
        return LeaseState.CANCEL_REQUESTED if state is LeaseState.CANCEL_REQUESTED \
            else LeaseState.LOST

    def fail(self, job_id: str, attempt: int, error: str, *,
             render_seconds: float | None = None, encode_seconds: float | None = None) -> bool:
        """``processing -> failed`` for ``attempt`` with a readable ``error``."""
        error = redact_secrets(error)
        now = utcnow()
        return self._transition(
            job_id, attempt, Status.PROCESSING,
            {"status": Status.FAILED.value, "error": error[:4000], "completed_at": now,
             "last_heartbeat": now, "cancel_requested": False,
             "render_seconds": render_seconds, "encode_seconds": encode_seconds},
            to_status=Status.FAILED, reason=error, drop_files=True,
        )

    def finish_cancelled(self, job_id: str, attempt: int) -> bool:
        """``processing -> cancelled``: the worker of ``attempt`` stopped on request."""
        now = utcnow()
        return self._transition(
            job_id, attempt, Status.PROCESSING,
            {"status": Status.CANCELLED.value, "completed_at": now, "last_heartbeat": now,
             "error": None, "cancel_requested": False},
            to_status=Status.CANCELLED, reason="cancelled by request; the worker stopped",
            drop_files=True,
        )

    def requeue(self, job_id: str, attempt: int, reason: str = "requeued", *,
                delay: float = 0.0) -> Status | None:
        """``processing -> queued`` (an automatic retry): the next claim starts a
        new attempt, no earlier than ``delay`` seconds from now.

        A cancel asked for meanwhile wins: the job ends ``cancelled`` instead.
        Returns the status the job moved to, or ``None`` if ``attempt`` no
        longer holds it.
        """
        reason = redact_secrets(reason)
        now = utcnow()
        due = now + timedelta(seconds=delay) if delay > 0 else None
        if self._transition(
            job_id, attempt, Status.PROCESSING,
            {"status": Status.QUEUED.value, "stage": Stage.QUEUED.value, "progress": 0.0,
             "queued_at": now, "not_before": due, "dispatched_at": due or now,
             "error": reason[:4000]},
            to_status=Status.QUEUED, reason=reason,
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

    # -- requests from users -----------------------------------------------

    def request_cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        """Cancel ``job_id``: a queued job ends cancelled at once; a processing
        one is flagged, and its worker stops at its next heartbeat or slide.

        :class:`InvalidTransition` if the job is already finished;
        :class:`JobNotFound` if it is not ``owner``'s (when given).
        """
        if not is_job_id(job_id):
            raise JobNotFound()
        now = utcnow()
        mine = _owned(owner)
        with self.transaction() as conn:
            row = conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status == Status.QUEUED.value,
                       *mine)
                .values(status=Status.CANCELLED.value, completed_at=now, stage=Stage.QUEUED.value,
                        **self._arm_webhook())
                .returning(jobs_table.c.attempts),
                {"arm_now": now},
            ).first()
            if row is not None:
                self._record(conn, job_id, Status.QUEUED, Status.CANCELLED, row.attempts, None,
                             "cancelled by request while queued")
            else:
                conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.id == job_id,
                           jobs_table.c.status == Status.PROCESSING.value, *mine)
                    .values(cancel_requested=True)
                )
            job = self._snapshot(conn, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound()
        if job.status in (Status.COMPLETED, Status.FAILED) or (
            job.status is Status.CANCELLED and row is None
        ):
            raise InvalidTransition(f"the job is already {job.status.value}")
        self._changed(job_id)
        return job

    def retry(self, job_id: str, *, max_attempts: int = DEFAULT_ATTEMPT_LIMIT,
              owner: str | None = None, max_active: int | None = None) -> Job:
        """``failed | cancelled -> queued``, with a fresh budget of ``max_attempts``.

        :class:`InvalidTransition` unless the job failed or was cancelled;
        :class:`JobNotFound` if it is not ``owner``'s (when given);
        :class:`QuotaExceeded` if its owner already has ``max_active`` jobs
        queued or processing (a retry counts like a submission).
        """
        if not is_job_id(job_id):
            raise JobNotFound()
        now = utcnow()
        with self.transaction() as conn:
            if max_active is not None:
                found = conn.execute(select(jobs_table.c.owner, jobs_table.c.status)
                                     .where(jobs_table.c.id == job_id, *_owned(owner))).first()
                if found is not None and Status(found.status) in (Status.FAILED,
                                                                   Status.CANCELLED):
                    self._check_quota(conn, found.owner, max_active)
            row = conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, *_owned(owner),
                       jobs_table.c.status.in_([Status.FAILED.value, Status.CANCELLED.value]))
                .values(status=Status.QUEUED.value, stage=Stage.QUEUED.value, progress=0.0,
                        error=None, completed_at=None, cancel_requested=False,
                        attempt_limit=jobs_table.c.attempts + max_attempts,
                        queued_at=now, dispatched_at=now, not_before=None,
                        video_url=None, thumbnail_url=None, slide_image_path=None,
                        webhook_status=None, webhook_next_at=None, webhook_first_at=None)
                .returning(jobs_table.c.attempts)
            ).first()
            before = None
            if row is not None:
                previous = conn.execute(
                    select(events_table.c.to_status).where(events_table.c.job_id == job_id)
                    .order_by(events_table.c.id.desc()).limit(1)
                ).scalar()
                before = Status(previous) if previous else None
                self._record(conn, job_id, before, Status.QUEUED, row.attempts, None,
                             "retry requested")
            job = self._snapshot(conn, job_id)
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
            if not _lock_rows(conn, [jobs_table.c.id == job_id, *_owned(owner)]):
                return False
            retire(conn, [job_id])  # the metrics keep what it counted
            # Its files, history and deliveries go with it (ON DELETE CASCADE).
            deleted = conn.execute(delete(jobs_table).where(jobs_table.c.id == job_id)).rowcount
        if deleted:
            log.info("transition job=%s from=- to=deleted attempt=- worker=- reason=%s",
                     job_id, json.dumps("deleted by request"))
            self._changed(job_id)
        return deleted == 1

    def history(self, job_id: str) -> list[JobEvent]:
        """Every transition of ``job_id``, oldest first."""
        with self.transaction(single=True) as conn:
            rows = conn.execute(
                select(events_table).where(events_table.c.job_id == job_id)
                .order_by(events_table.c.id)
            ).mappings().all()
        return [
            JobEvent(Status(r["from_status"]) if r["from_status"] else None,
                     Status(r["to_status"]), r["attempt"], r["worker"], r["at"], r["reason"])
            for r in rows
        ]

    # -- the sweeper's queries ---------------------------------------------

    def recover_stale(self, stale_after: float, *, now: datetime | None = None,
                      limit: int = 500) -> list[Recovery]:
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
                select(jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.attempt_limit,
                       jobs_table.c.worker, jobs_table.c.cancel_requested)
                .where(jobs_table.c.status == Status.PROCESSING.value,
                       jobs_table.c.last_heartbeat < cutoff)
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
                    job.id, job.attempts, Status.PROCESSING,
                    {"status": Status.QUEUED.value, "stage": Stage.QUEUED.value,
                     "progress": 0.0, "queued_at": now, "dispatched_at": now,
                     "not_before": None, "error": lost},
                    to_status=Status.QUEUED, reason=lost, where=no_cancel)
                action = Status.QUEUED
            else:
                message = f"{lost} (after {job.attempts} attempts)"
                ok = self._transition(
                    job.id, job.attempts, Status.PROCESSING,
                    {"status": Status.FAILED.value, "completed_at": now, "error": message},
                    to_status=Status.FAILED, reason=message, where=no_cancel, drop_files=True)
                action = Status.FAILED
            if not ok:
                ok = self._transition(
                    job.id, job.attempts, Status.PROCESSING,
                    {"status": Status.CANCELLED.value, "completed_at": now,
                     "cancel_requested": False},
                    to_status=Status.CANCELLED, reason=f"cancelled; {lost}",
                    where=[*still_stale, jobs_table.c.cancel_requested.is_(True)],
                    drop_files=True)
                action = Status.CANCELLED
            if ok:
                done.append(Recovery(job.id, action, job.worker))
        return done

    def due_for_dispatch(self, dispatch_timeout: float, *, now: datetime | None = None,
                         limit: int = 500) -> list[str]:
        """Queued jobs last sent over ``dispatch_timeout`` s ago (the broker
        lost them or was down), marked as sent again now."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=dispatch_timeout)
        due = and_(
            jobs_table.c.status == Status.QUEUED.value,
            or_(jobs_table.c.dispatched_at.is_(None), jobs_table.c.dispatched_at < cutoff),
            or_(jobs_table.c.not_before.is_(None), jobs_table.c.not_before <= now),
        )
        with self.transaction() as conn:
            ids = [r.id for r in conn.execute(
                select(jobs_table.c.id).where(due).order_by(jobs_table.c.created_at).limit(limit)
            )]
            if ids:
                conn.execute(update(jobs_table).where(jobs_table.c.id.in_(ids), due)
                             .values(dispatched_at=now))
        return ids

    def attempt_owners(self, job_ids: Sequence[str]) -> dict[str, tuple[Status, int]]:
        """Status and current attempt of each existing job in ``job_ids``."""
        found: dict[str, tuple[Status, int]] = {}
        with self.transaction(single=True) as conn:
            for start in range(0, len(job_ids), 500):
                chunk = list(job_ids[start:start + 500])
                for r in conn.execute(
                    select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.attempts)
                    .where(jobs_table.c.id.in_(chunk))
                ):
                    found[r.id] = (Status(r.status), r.attempts)
        return found

    # -- retention ---------------------------------------------------------

    def delete_older_than(self, days: float, *, now: datetime | None = None,
                          limit: int = 500) -> list[str]:
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
            ids = _lock_rows(conn, [condition], limit=limit)
            if not ids:
                return []
            retire(conn, ids)  # the metrics keep what they counted
            # Their files, history and deliveries go with them (ON DELETE CASCADE).
            return list(conn.execute(
                delete(jobs_table).where(jobs_table.c.id.in_(ids), condition)
                .returning(jobs_table.c.id)).scalars())


def _lock_rows(conn: Connection, where: Sequence[Any], limit: int | None = None) -> list[str]:
    """The ids of the jobs matching ``where``, locked against any other write
    until ``conn``'s transaction ends (the rows on PostgreSQL, re-checked
    after any wait; the whole database on SQLite, which has one writer)."""
    if conn.dialect.name != "postgresql":
        _take_write_lock(conn)
    query = select(jobs_table.c.id).where(*where).order_by(jobs_table.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return list(conn.execute(query).scalars())


def _take_write_lock(conn: Connection) -> None:
    """SQLite: a write that changes nothing takes the database's write lock
    now, so nothing this transaction reads next can change before it commits."""
    conn.execute(update(jobs_table).where(literal(False)).values(id=jobs_table.c.id))
