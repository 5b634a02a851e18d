"""The job store's statements, each built by one function named for what it does.

The hot paths' statements take every value they need as a bind parameter, so
each is built once per process (per dialect where the dialects differ) and
cached by its own builder: building and caching-keying a statement of this
size costs more CPU than running it. A builder takes no values, so no caller
can bake its own into a statement another caller then runs.

On PostgreSQL a transition's statement also inserts the job's history row
(and, where a worker's registry row changes with it, that row) through
data-modifying CTEs: one round trip instead of four. SQLite runs the plain
UPDATE and the extra writes in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    exists,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from storage.models import (
    SegmentStatus,
    Stage,
    Status,
    UTCDateTime,
    WebhookStatus,
    events_table,
    files_table,
    jobs_table,
    segments_table,
    tenants_table,
    workers_table,
)

POSTGRESQL = "postgresql"

#: The columns a submission writes (the values of ``create``, as bind parameters).
CREATE_COLUMNS = (
    "id",
    "status",
    "stage",
    "progress",
    "attempts",
    "title",
    "deck",
    "idempotency_key",
    "request_hash",
    "attempt_limit",
    "owner",
    "callback_url",
    "created_at",
    "queued_at",
    "dispatched_at",
    "priority",
    "run_at",
    "batch_id",
)

#: The ``workers`` column that counts each way an attempt can end.
OUTCOME_COUNTERS = {
    "completed": "jobs_done",
    "failed": "jobs_failed",
    "retrying": "jobs_retried",
    "cancelled": "jobs_cancelled",
}


# -- values shared by several statements --------------------------------------


def worker_started(job_id: Any, now: Any) -> dict[str, Any]:
    """The ``workers`` row's values when it claims ``job_id`` (values or bind
    parameters): the registry and the claim's own write share them."""
    return {"current_job": job_id, "last_seen": now}


def worker_finished(job_id: Any, now: Any, *, outcome: str) -> dict[str, Any]:
    """The ``workers`` row's values when it ends ``job_id`` with ``outcome``
    (a key of :data:`OUTCOME_COUNTERS`): that outcome counted, ``current_job``
    cleared if it is still this job."""
    counter = workers_table.c[OUTCOME_COUNTERS[outcome]]
    return {
        counter.key: counter + 1,
        "current_job": case(
            (workers_table.c.current_job == job_id, None), else_=workers_table.c.current_job
        ),
        "last_seen": now,
    }


def arm_webhook() -> dict[str, Any]:
    """Values that make a job's completion webhook due at ``arm_now`` (a
    parameter), if it has a callback URL: set by every transition into a
    final state, in the same write, so no final state can miss its webhook."""
    has_callback = jobs_table.c.callback_url.is_not(None)
    now = bindparam("arm_now", type_=UTCDateTime())
    return {
        "webhook_status": case((has_callback, literal(WebhookStatus.PENDING.value)), else_=None),
        "webhook_next_at": case((has_callback, now), else_=None),
        "webhook_first_at": case((has_callback, now), else_=None),
        "webhook_attempts": 0,
        "webhook_last_code": None,
        "webhook_last_error": None,
        "webhook_delivered_at": None,
    }


# -- shapes ------------------------------------------------------------------


def with_history(stmt: Any, worker_values: dict[str, Any] | None = None) -> Any:
    """PostgreSQL: ``stmt`` (an INSERT or UPDATE of one job RETURNING at
    least ``id``, ``attempts`` and ``worker``) with its history row, and the
    worker's registry row if ``worker_values``, as one statement of
    data-modifying CTEs; it selects the job's row. The history row's fields
    are the parameters ``ev_from``, ``ev_to``, ``ev_at`` and ``ev_reason``
    (:func:`storage.jobs.history.event_params`)."""
    changed = stmt.cte("changed")
    history = (
        insert(events_table)
        .from_select(
            ["job_id", "from_status", "to_status", "attempt", "worker", "at", "reason"],
            select(
                changed.c.id,
                bindparam("ev_from", type_=String()),
                bindparam("ev_to", type_=String()),
                changed.c.attempts,
                changed.c.worker,
                bindparam("ev_at", type_=UTCDateTime()),
                bindparam("ev_reason", type_=Text()),
            ),
        )
        .cte("history")
    )
    query = select(changed).add_cte(history)
    if worker_values:
        query = query.add_cte(
            update(workers_table)
            .where(workers_table.c.name == select(changed.c.worker).scalar_subquery())
            .values(**worker_values)
            .cte("worker_row")
        )
    return query


def fenced_update(values: dict[str, Any], *, final: bool, where: Sequence[Any] = ()) -> Any:
    """The one shape of a fenced write: an UPDATE of job ``t_id`` that lands
    only while it is in status ``t_from`` under attempt ``t_attempt`` (and
    any extra ``where``), RETURNING ``id``, ``attempts`` and ``worker``.
    ``final``: the job ends, so its webhook is armed in the same write."""
    return (
        update(jobs_table)
        .where(
            jobs_table.c.id == bindparam("t_id"),
            jobs_table.c.status == bindparam("t_from"),
            jobs_table.c.attempts == bindparam("t_attempt"),
            *where,
        )
        .values(**values, **(arm_webhook() if final else {}))
        .returning(jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.worker)
    )


def _worker_row(values: dict[str, Any]) -> Any:
    """SQLite: the registry row of worker ``w_name`` set to ``values``."""
    return update(workers_table).where(workers_table.c.name == bindparam("w_name")).values(**values)


# -- reads -------------------------------------------------------------------


@cache
def load_job() -> Any:
    """One job and its current attempt's files (a row per file), by ``s_id``."""
    return (
        select(
            jobs_table,
            files_table.c.path.label("file_path"),
            files_table.c.size_bytes.label("file_size"),
        )
        .select_from(
            jobs_table.outerjoin(
                files_table,
                and_(
                    files_table.c.job_id == jobs_table.c.id,
                    files_table.c.attempt == jobs_table.c.attempts,
                ),
            )
        )
        .where(jobs_table.c.id == bindparam("s_id"))
        .order_by(files_table.c.path)
    )


# -- submission ----------------------------------------------------------------


@cache
def insert_job(dialect: str) -> Any:
    """A new job from the parameters named by :data:`CREATE_COLUMNS`
    (``deck``: its JSON text), RETURNING what the insert decides, its
    ``priority`` (with its history row on PostgreSQL): no row read back.

    The priority is checked in the same statement, against the tenant's
    ceiling as it is at that moment (no read before it, and none that a
    concurrent change of the tenant's limits could overtake): ``ceiling``
    (a parameter) is the ceiling of a tenant with no ``max_priority`` of its
    own (SLIDEFARM_MAX_PRIORITY), or NULL for none (an admin's submission,
    or a batch checked before). ``priority`` NULL (unset) becomes 0, or the
    ceiling if that is lower. A ``priority`` above the ceiling inserts
    nothing and returns no row."""
    ceiling_default = sa.cast(bindparam("ceiling", type_=Integer()), Integer())
    own = (
        select(tenants_table.c.max_priority)
        .where(tenants_table.c.name == bindparam("owner", type_=String()))
        .scalar_subquery()
    )
    limit = select(
        case((ceiling_default.is_(None), None), else_=sa.func.coalesce(own, ceiling_default)).label(
            "ceiling"
        )
    ).subquery("lim")
    asked = sa.cast(bindparam("priority", type_=Integer()), Integer())
    columns = [name for name in CREATE_COLUMNS if name != "priority"]
    # The deck comes as its JSON text, made once by whoever has it (the API:
    # pydantic's serializer): no dict to walk and dump again here.
    deck: Any = bindparam("deck", type_=Text())
    if dialect == POSTGRESQL:
        deck = sa.cast(deck, JSONB())
    values = [
        deck if name == "deck" else bindparam(name, type_=jobs_table.c[name].type)
        for name in columns
    ]
    priority = sa.func.coalesce(
        asked, case((limit.c.ceiling < 0, limit.c.ceiling), else_=literal(0, Integer()))
    )
    stmt = (
        insert(jobs_table)
        .from_select(
            [*columns, "priority"],
            select(*values, priority)
            .select_from(limit)
            .where(or_(limit.c.ceiling.is_(None), asked.is_(None), asked <= limit.c.ceiling)),
        )
        # What the insert decides; the rest of the row is what was passed
        # (:data:`NEW_ROW` for the columns a submission leaves unset).
        .returning(
            jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.worker, jobs_table.c.priority
        )
    )
    return with_history(stmt) if dialect == POSTGRESQL else stmt


#: The columns of a new job that a submission does not set, as the insert
#: leaves them (their defaults).
NEW_ROW: dict[str, Any] = {
    **{c.name: None for c in jobs_table.c if c.name not in CREATE_COLUMNS},
    "cancel_requested": False,
    "webhook_attempts": 0,
}


# -- a worker's transitions ------------------------------------------------------


def _claimed_by_worker() -> dict[str, Any]:
    return worker_started(bindparam("q_id"), bindparam("q_now", type_=UTCDateTime()))


def claimable(now: Any) -> list[Any]:
    """The WHERE terms of a job a worker may claim at ``now``: queued, its
    retry due, no cancel asked for (a ``scheduled`` job never is)."""
    return [
        jobs_table.c.status == Status.QUEUED.value,
        or_(jobs_table.c.not_before.is_(None), jobs_table.c.not_before <= now),
        jobs_table.c.cancel_requested.is_(False),
    ]


@cache
def claim_job(dialect: str) -> Any:
    """``queued -> processing`` of job ``q_id`` for worker ``q_worker`` at
    ``q_now``, a new attempt, unless its retry is not due yet or a cancel was
    asked for; RETURNING the job's row. On PostgreSQL the worker's registry
    row notes the job in the same statement (SQLite: :func:`note_claim`)."""
    now = bindparam("q_now", type_=UTCDateTime())
    stmt = (
        update(jobs_table)
        .where(jobs_table.c.id == bindparam("q_id"), *claimable(now))
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
            synth_seconds=None,
            mix_seconds=None,
        )
        .returning(*jobs_table.c)
    )
    return with_history(stmt, _claimed_by_worker()) if dialect == POSTGRESQL else stmt


# -- what runs next (storage/jobs/claims.py) ---------------------------------------

#: The first key of the transaction-level advisory locks that serialize the
#: claims of one tenant while a ``max_running`` cap applies to it (the
#: second is ``hashtext(owner)``).
CLAIM_LOCK_KEY = 0x51DE

# PostgreSQL: a loose index scan of ix_jobs_queued_owner_priority. The
# recursive part hops from one owner with queued jobs to the next (one index
# descent each), and for each the lateral part reads its head in claim order
# (priority DESC, queued_at, id): O(tenants x log n), whatever the number of
# queued or finished rows. Nothing is locked.
_QUEUED_HEADS_PG = """
WITH RECURSIVE owners(owner) AS (
    (SELECT owner FROM jobs WHERE status = 'queued' ORDER BY owner LIMIT 1)
    UNION ALL
    SELECT (SELECT j.owner FROM jobs AS j
            WHERE j.status = 'queued' AND j.owner > o.owner
            ORDER BY j.owner LIMIT 1)
    FROM owners AS o WHERE o.owner IS NOT NULL
)
SELECT h.id, h.owner, h.priority, h.queued_at, h.cancel_requested,
       (SELECT count(*) FROM jobs AS r
        WHERE r.owner = h.owner AND r.status = 'processing') AS running,
       (SELECT max(r.started_at) FROM jobs AS r WHERE r.owner = h.owner) AS last_started,
       t.weight, t.max_running
FROM owners AS o
CROSS JOIN LATERAL (
    SELECT j.id, j.owner, j.priority, j.queued_at, j.cancel_requested
    FROM jobs AS j
    WHERE j.status = 'queued' AND j.owner = o.owner
      AND (j.not_before IS NULL OR j.not_before <= :n_now)
    ORDER BY j.priority DESC, j.queued_at, j.id
    LIMIT 1
) AS h
LEFT JOIN tenants AS t ON t.name = h.owner
WHERE o.owner IS NOT NULL
"""

#: The statuses of a job whose segments may still run (queued: its own
#: attempt was recovered, and the next one joins what the segments made).
SEGMENTS_LIVE_JOB = (Status.PROCESSING.value, Status.QUEUED.value)


def segment_due(now: Any) -> list[Any]:
    """The WHERE terms, on ``segments`` alone, of a segment that waits at
    ``now``: queued, its retry due."""
    return [
        segments_table.c.status == SegmentStatus.QUEUED.value,
        or_(segments_table.c.not_before.is_(None), segments_table.c.not_before <= now),
    ]


def segment_claimable(now: Any) -> list[Any]:
    """The WHERE terms of a segment a worker may claim at ``now`` (over
    ``segments`` joined to its job): it waits (:func:`segment_due`), and its
    job may still use it and was not asked to cancel."""
    return [
        *segment_due(now),
        # Literals, not one expanding parameter: nothing to render per run.
        jobs_table.c.status.in_([literal(v, String()) for v in SEGMENTS_LIVE_JOB]),
        jobs_table.c.cancel_requested.is_(False),
    ]


def _heads_sqlite() -> Any:
    # SQLite (one writer, small queues): a window over the queued rows.
    now = bindparam("n_now", type_=UTCDateTime())
    queued = (
        select(
            jobs_table.c.id,
            jobs_table.c.owner,
            jobs_table.c.priority,
            jobs_table.c.queued_at,
            jobs_table.c.cancel_requested,
            sa.func.row_number()
            .over(
                partition_by=jobs_table.c.owner,
                order_by=(jobs_table.c.priority.desc(), jobs_table.c.queued_at, jobs_table.c.id),
            )
            .label("place"),
        )
        .where(
            jobs_table.c.status == Status.QUEUED.value,
            or_(jobs_table.c.not_before.is_(None), jobs_table.c.not_before <= now),
        )
        .subquery("queued")
    )
    others = jobs_table.alias("r")
    running = (
        select(sa.func.count())
        .where(others.c.owner == queued.c.owner, others.c.status == Status.PROCESSING.value)
        .scalar_subquery()
    )
    last_started = (
        select(sa.func.max(others.c.started_at))
        .where(others.c.owner == queued.c.owner)
        .scalar_subquery()
    )
    return (
        select(
            queued.c.id,
            queued.c.owner,
            queued.c.priority,
            queued.c.queued_at,
            queued.c.cancel_requested,
            running.label("running"),
            last_started.label("last_started"),
            tenants_table.c.weight,
            tenants_table.c.max_running,
        )
        .select_from(queued.outerjoin(tenants_table, tenants_table.c.name == queued.c.owner))
        .where(queued.c.place == 1)
    )


@cache
def queued_heads(dialect: str) -> Any:
    """Each tenant's head at ``n_now``: its first queued job in claim order
    (priority DESC, queued_at, id) whose retry is due, with the tenant's
    jobs processing (``running``), when it last started one
    (``last_started``, over ``ix_jobs_owner_started_at``), its ``weight`` and ``max_running`` (both
    NULL without a tenants row). A head may carry a cancel flag (the caller
    ends it cancelled). Locks nothing.

    Every row also says whether a segment of a split job waits
    (``segment_waits``: one queued with its retry due, :func:`segment_due`,
    one probe of ``ix_segments_status_last_heartbeat``), so that the
    worker's loop learns it in the same round trip; with no head there is
    still one row, its head columns NULL. Its job is not read here (joined
    to it, the check cost each claim about three times as much): the
    segment claim's locked pick checks it, so a segment of a job that ended
    or is being cancelled, until the job's end drops it (its worker, else
    the next sweep), costs a claim one empty segment transaction, never a
    wrong claim."""
    if dialect == POSTGRESQL:
        heads = (
            text(_QUEUED_HEADS_PG)
            .bindparams(bindparam("n_now", type_=UTCDateTime()))
            .columns(
                id=String(),
                owner=String(),
                priority=Integer(),
                queued_at=UTCDateTime(),
                cancel_requested=Boolean(),
                running=Integer(),
                last_started=UTCDateTime(),
                weight=Float(),
                max_running=Integer(),
            )
            .subquery("heads")
        )
    else:
        heads = _heads_sqlite().subquery("heads")
    waits = exists().where(*segment_due(bindparam("n_now", type_=UTCDateTime())))
    flag = select(waits.label("segment_waits")).subquery("w")
    return select(*heads.c, flag.c.segment_waits).select_from(flag.outerjoin(heads, sa.true()))


@cache
def next_in_line() -> Any:
    """The id of tenant ``n_owner``'s first claimable job at ``n_now`` in claim
    order, locked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL: a job another
    claim holds is passed over, and only the row returned is locked."""
    now = bindparam("n_now", type_=UTCDateTime())
    return (
        select(jobs_table.c.id)
        .where(jobs_table.c.owner == bindparam("n_owner", type_=String()), *claimable(now))
        .order_by(jobs_table.c.priority.desc(), jobs_table.c.queued_at, jobs_table.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


@cache
def lock_tenant_claims() -> Any:
    """PostgreSQL: wait for, then hold until the transaction ends, the lock
    on claims of tenant ``n_owner``'s jobs (a transaction-level advisory
    lock: nothing outlives the transaction, so it is safe behind PgBouncer's
    transaction pooling)."""
    return select(
        sa.func.pg_advisory_xact_lock(
            literal(CLAIM_LOCK_KEY, Integer()),
            sa.func.hashtext(bindparam("n_owner", type_=String())),
        )
    )


@cache
def count_running() -> Any:
    """How many of tenant ``n_owner``'s jobs are processing."""
    return select(sa.func.count()).where(
        jobs_table.c.owner == bindparam("n_owner", type_=String()),
        jobs_table.c.status == Status.PROCESSING.value,
    )


@cache
def promote_scheduled(dialect: str) -> Any:
    """``scheduled -> queued`` of up to ``p_limit`` jobs whose ``run_at`` is
    at or before ``p_now`` (the earliest first), queued and sent at
    ``p_now``; RETURNING each (with its history row on PostgreSQL). A job
    cancelled or deleted meanwhile is not scheduled any more, so it stays
    as it is."""
    now = bindparam("p_now", type_=UTCDateTime())
    due = [jobs_table.c.status == Status.SCHEDULED.value, jobs_table.c.run_at <= now]
    picked = (
        select(jobs_table.c.id)
        .where(*due)
        .order_by(jobs_table.c.run_at)
        .limit(bindparam("p_limit", type_=Integer()))
    )
    if dialect == POSTGRESQL:
        picked = picked.with_for_update(skip_locked=True)
    stmt = (
        update(jobs_table)
        .where(jobs_table.c.id.in_(picked), *due)
        .values(status=Status.QUEUED.value, queued_at=now, dispatched_at=now)
        .returning(jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.worker)
    )
    return with_history(stmt) if dialect == POSTGRESQL else stmt


@cache
def note_claim() -> Any:
    """SQLite: worker ``w_name``'s registry row notes that it claimed ``q_id``."""
    return _worker_row(_claimed_by_worker())


@cache
def cancel_flagged_job(dialect: str) -> Any:
    """``queued -> cancelled`` of job ``x_id`` at ``arm_now`` if a cancel was
    asked for while it was processing."""
    stmt = (
        update(jobs_table)
        .where(
            jobs_table.c.id == bindparam("x_id"),
            jobs_table.c.status == Status.QUEUED.value,
            jobs_table.c.cancel_requested.is_(True),
        )
        .values(
            status=Status.CANCELLED.value,
            stage=Stage.QUEUED.value,
            cancel_requested=False,
            completed_at=bindparam("arm_now", type_=UTCDateTime()),
            **arm_webhook(),
        )
        .returning(jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.worker)
    )
    return with_history(stmt) if dialect == POSTGRESQL else stmt


def _counted_completion() -> dict[str, Any]:
    return worker_finished(
        bindparam("c_id"), bindparam("c_now", type_=UTCDateTime()), outcome="completed"
    )


@cache
def complete_job(dialect: str) -> Any:
    """``processing -> completed`` of the fenced attempt (:func:`fenced_update`)
    with its outputs (``c_video``, ``c_thumbnail``, ``c_slides``) and timings
    (``c_render``, ``c_encode``) at ``c_now``, unless a cancel was asked for.
    On PostgreSQL the worker's registry row counts it in the same statement
    (SQLite: :func:`count_completion`)."""
    now = bindparam("c_now", type_=UTCDateTime())
    stmt = fenced_update(
        {
            "status": Status.COMPLETED.value,
            "stage": Stage.DONE.value,
            "progress": 1.0,
            "error": None,
            "video_url": bindparam("c_video", type_=String()),
            "thumbnail_url": bindparam("c_thumbnail", type_=String()),
            "slide_image_path": bindparam("c_slides", type_=String()),
            "completed_at": now,
            "last_heartbeat": now,
            "cancel_requested": False,
            "render_seconds": bindparam("c_render", type_=Float()),
            "encode_seconds": bindparam("c_encode", type_=Float()),
            "synth_seconds": bindparam("c_synth", type_=Float()),
            "mix_seconds": bindparam("c_mix", type_=Float()),
        },
        final=True,
        where=[jobs_table.c.cancel_requested.is_(False)],
    )
    return with_history(stmt, _counted_completion()) if dialect == POSTGRESQL else stmt


@cache
def count_completion() -> Any:
    """SQLite: worker ``w_name``'s registry row counts job ``c_id`` completed."""
    return _worker_row(_counted_completion())


def _lease_renewal(values: dict[str, Any]) -> Any:
    return (
        update(jobs_table)
        .where(
            jobs_table.c.id == bindparam("l_id"),
            jobs_table.c.status == Status.PROCESSING.value,
            jobs_table.c.attempts == bindparam("l_attempt"),
        )
        .values(last_heartbeat=bindparam("hb_now", type_=UTCDateTime()), **values)
        .returning(jobs_table.c.cancel_requested)
    )


@cache
def renew_lease() -> Any:
    """A heartbeat: attempt ``l_attempt`` of processing job ``l_id`` renews
    its lease at ``hb_now``; RETURNING whether a cancel was asked for."""
    return _lease_renewal({})


@cache
def renew_lease_with_progress() -> Any:
    """:func:`renew_lease`, also setting the stage ``p_stage`` and raising the
    progress to ``p_progress`` (never lowering it)."""
    progress = bindparam("p_progress", type_=Float())
    return _lease_renewal(
        {
            "progress": case(
                (jobs_table.c.progress < progress, progress), else_=jobs_table.c.progress
            ),
            "stage": bindparam("p_stage", type_=String()),
        }
    )
