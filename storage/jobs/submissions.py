"""New jobs: submission, idempotency keys and each tenant's quota."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, exc, func, literal, select, update

from storage.assets import link_assets
from storage.errors import IdempotencyConflict, PriorityNotAllowed, QuotaExceeded, StorageError
from storage.jobs.history import event_params, log_transition, record_event
from storage.jobs.locks import take_write_lock
from storage.jobs.queries import Queries
from storage.jobs.statements import NEW_ROW, POSTGRESQL, insert_job
from storage.jobs.values import DEFAULT_ATTEMPT_LIMIT, Job, utcnow
from storage.models import (
    ACTIVE_STATUSES,
    DEFAULT_TENANT,
    Stage,
    Status,
    jobs_table,
    tenants_table,
)

#: First key of the advisory lock that serializes one owner's submissions.
ADVISORY_QUOTA = 0x5F1D
IDEMPOTENCY_TTL = timedelta(hours=24)
#: Tries of a submission whose Idempotency-Key is held by a job that is gone
#: when looked up (deleted in between); past them, a clear error.
CREATE_TRIES = 3


def expire_idempotency_key(
    conn: Connection, table: Table, owner: str, key: str, now: datetime
) -> None:
    """Free ``owner``'s ``key`` in ``table`` (the jobs', the batches') if the
    row holding it was submitted more than :data:`IDEMPOTENCY_TTL` ago."""
    conn.execute(
        update(table)
        .where(
            table.c.owner == owner,
            table.c.idempotency_key == key,
            table.c.created_at < now - IDEMPOTENCY_TTL,
        )
        .values(idempotency_key=None)
    )


def check_quota(conn: Connection, owner: str, max_active: int, incoming: int = 1) -> None:
    """:class:`QuotaExceeded` if ``owner`` has ``max_active`` jobs queued or
    processing, or fewer but not room for ``incoming`` more (a batch); until
    ``conn``'s transaction ends, no other submission of ``owner`` can pass
    this check."""
    if conn.dialect.name == POSTGRESQL:
        # One submitter per owner at a time between the count and the
        # insert (released at commit); other owners are not held up.
        conn.execute(
            select(func.pg_advisory_xact_lock(literal(ADVISORY_QUOTA), func.hashtext(owner)))
        )
    else:
        # The count below cannot be overtaken by another writer before
        # this transaction's insert.
        take_write_lock(conn)
    # Counting stops at the cap: the cost stays bounded however many
    # jobs an owner (the open mode's, an admin's bulk load) has active.
    active = conn.execute(
        select(func.count()).select_from(
            select(jobs_table.c.id)
            .where(
                jobs_table.c.owner == owner,
                jobs_table.c.status.in_([status.value for status in ACTIVE_STATUSES]),
            )
            .limit(max_active)
            .subquery()
        )
    ).scalar_one()
    if incoming > 1 and active < max_active and active + incoming > max_active:
        raise QuotaExceeded(
            f"the batch's {incoming} jobs would exceed the tenant's quota: it has {active} "
            f"queued or processing of at most {max_active} (SLIDEFARM_MAX_ACTIVE_JOBS); "
            "send fewer jobs at once or wait for some to finish"
        )
    if active >= max_active:
        raise QuotaExceeded(
            f"the tenant already has {active} queued or processing jobs "
            f"(SLIDEFARM_MAX_ACTIVE_JOBS = {max_active}); wait for some to finish"
        )


def insert_new_job(conn: Connection, values: dict[str, Any], asset_ids: Sequence[str] = ()) -> Job:
    """In ``conn``'s transaction: the job of ``values`` (the columns of
    :data:`~storage.jobs.statements.CREATE_COLUMNS`, ``deck`` a dict or its
    JSON text, and ``ceiling``: see
    :func:`~storage.jobs.statements.insert_job`; absent, no priority check),
    its history row, and its links to ``asset_ids``
    (:class:`~storage.assets.AssetNotFound` if one is not its owner's).
    :class:`PriorityNotAllowed` if the priority is above the tenant's
    ceiling. A submission and each job of a batch go through here."""
    job_id = values["id"]
    status = Status(values["status"])
    params = {"ceiling": None, **values}
    if isinstance(values["deck"], str):
        deck = json.loads(values["deck"])
    else:
        deck = values["deck"]
        params["deck"] = json.dumps(deck)
    if conn.dialect.name == POSTGRESQL:  # the row and its history: one statement
        params.update(event_params(None, status, "submitted"))
    row = conn.execute(insert_job(conn.dialect.name), params).mappings().first()
    if row is None:  # the one condition of the insert: the priority's ceiling
        own = conn.execute(
            select(tenants_table.c.max_priority).where(tenants_table.c.name == values["owner"])
        ).scalar()
        raise PriorityNotAllowed(values["priority"], params["ceiling"] if own is None else own)
    if conn.dialect.name == POSTGRESQL:
        log_transition(job_id, None, status, 0, None, "submitted")
    else:
        record_event(conn, job_id, None, status, 0, None, "submitted")
    if asset_ids:
        link_assets(conn, job_id, asset_ids)
    return Job.from_row(
        {**NEW_ROW, **values, "deck": deck, "priority": row["priority"]},
    )


class Submissions(Queries):
    """The job store's submissions."""

    def create(
        self,
        deck: dict[str, Any] | str,
        *,
        title: str,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        attempt_limit: int = DEFAULT_ATTEMPT_LIMIT,
        owner: str = DEFAULT_TENANT,
        callback_url: str | None = None,
        max_active: int | None = None,
        asset_ids: Sequence[str] = (),
        priority: int | None = 0,
        run_at: datetime | None = None,
        priority_ceiling: int | None = None,
    ) -> tuple[Job, bool]:
        """Record a new queued job of ``deck`` (a dict, or its JSON text);
        return it and whether it is new.

        With an ``idempotency_key`` used in the last 24 hours for the same
        ``request_hash`` the existing job comes back (``False``); with another
        hash, :class:`IdempotencyConflict`. Racing submissions of one key
        meet at the unique index: one row, one winner. Keys are per ``owner``.

        ``max_active``: :class:`QuotaExceeded` if ``owner`` already has that
        many queued or processing jobs; the count and the insert are one
        transaction, serialized per owner, so racing submissions from many API
        processes cannot overshoot the cap.

        ``asset_ids``: the assets of ``owner`` the job uses, linked in the
        insert's transaction (:class:`~storage.assets.AssetNotFound` if one
        is not there: then there is no job either).

        ``priority``: higher runs first; ``None``: unset (0, or the tenant's
        ceiling if that is lower). ``priority_ceiling``: the ceiling of a
        tenant with no ``max_priority`` of its own (SLIDEFARM_MAX_PRIORITY),
        checked in the insert itself (:class:`PriorityNotAllowed` above it);
        ``None``: no ceiling (an admin, or the caller checked). ``run_at``: a
        later time makes the job ``scheduled`` until then (the sweeper queues
        it when it comes due); a time already past queues it now.
        """
        job_id = str(uuid.uuid4())
        now = utcnow()
        scheduled = run_at is not None and run_at > now
        values = {
            "id": job_id,
            "status": (Status.SCHEDULED if scheduled else Status.QUEUED).value,
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
            "queued_at": None if scheduled else now,
            # Optimistic: the caller sends the task right after the commit; if
            # that send fails, the sweeper sends it again after the timeout.
            "dispatched_at": None if scheduled else now,
            "priority": priority,
            "run_at": run_at,
            "batch_id": None,
            "ceiling": priority_ceiling,
        }
        if idempotency_key is not None:
            self._expire_idempotency_key(owner, idempotency_key, now)
        for _ in range(CREATE_TRIES):
            try:
                created = self._insert(values, max_active, asset_ids)
            except exc.IntegrityError as error:
                if idempotency_key is None:
                    raise StorageError(f"could not record the job: {error.orig}") from error
                existing = self.find_by_idempotency_key(idempotency_key, owner=owner)
                if existing is None:  # deleted in between: a fresh start is right
                    continue
                if existing.request_hash != request_hash:
                    raise IdempotencyConflict() from error
                return existing, False
            # No invalidation: a new id was never cached (reads fill only
            # what they found) and nothing listens to it yet (a stream of an
            # unknown id is a 404), so it would cost a Redis round trip for
            # nothing. Every later change of the job invalidates.
            return created, True
        # Each try met a job holding the key that was gone when looked up: a
        # client deleting and resubmitting in a loop. Bounded, and said so.
        raise StorageError(
            f"could not record the job: its Idempotency-Key was taken and freed again "
            f"{CREATE_TRIES} times in a row; try again"
        )

    def _insert(
        self, values: dict[str, Any], max_active: int | None, asset_ids: Sequence[str] = ()
    ) -> Job:
        """One try of :meth:`create`: the row and its history, in one transaction.

        On PostgreSQL they are one statement: with no quota to count and no
        asset to link, that statement runs alone, atomic and durable by
        itself, without the round trips of ``BEGIN`` and ``COMMIT``."""
        alone = max_active is None and not asset_ids and self.db.dialect == POSTGRESQL
        with self.transaction(single=alone) as conn:
            if max_active is not None:
                check_quota(conn, values["owner"], max_active)
            return insert_new_job(conn, values, asset_ids)

    def _expire_idempotency_key(self, owner: str, key: str, now: datetime) -> None:
        """Free ``key`` if the job holding it was submitted over 24 hours ago."""
        with self.transaction(single=True) as conn:
            expire_idempotency_key(conn, jobs_table, owner, key, now)
