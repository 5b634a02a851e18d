"""What runs next: a worker asks the store for the next job instead of being
told one (docs/design.md, "What runs next").

The order: the highest ``priority`` first, across all tenants; then the
tenant with the fewest jobs processing for its weight (``running /
weight``), ties to the tenant that started a job longest ago (round robin),
then to the older head job; then each tenant's own submission order. A
tenant at its ``max_running`` cap waits. The claim itself is the same
fenced write as :meth:`~storage.jobs.transitions.Transitions.claim`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection

from storage.jobs.history import event_params, log_transition, record_event
from storage.jobs.locks import take_write_lock
from storage.jobs.statements import (
    POSTGRESQL,
    claim_job,
    count_running,
    lock_tenant_claims,
    next_in_line,
    note_claim,
    queued_heads,
)
from storage.jobs.transitions import Transitions
from storage.jobs.values import Job, utcnow
from storage.models import Status

if TYPE_CHECKING:
    from storage.segments import Segment

T = TypeVar("T")

#: How often one claim looks again when every head it saw was taken by other
#: workers meanwhile, or was a job to cancel.
LOOKS = 8
#: When nothing has been queued (tie-break of heads without ``queued_at``).
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Head:
    """A tenant's first queued job in claim order, and what decides its turn."""

    id: str
    owner: str
    priority: int
    queued_at: datetime | None
    cancel_requested: bool
    running: int
    #: When its tenant last started a job (``None``: never).
    last_started: datetime | None
    weight: float
    cap: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], default_cap: int) -> Head:
        """From a :func:`~storage.jobs.statements.queued_heads` row; a tenant
        without its own ``max_running`` gets ``default_cap`` (0: none)."""
        weight = row["weight"]
        cap = row["max_running"]
        return cls(
            id=row["id"],
            owner=row["owner"],
            priority=int(row["priority"]),
            queued_at=row["queued_at"],
            cancel_requested=bool(row["cancel_requested"]),
            running=int(row["running"]),
            last_started=row["last_started"],
            weight=1.0 if weight is None else float(weight),
            cap=default_cap if cap is None else int(cap),
        )

    @property
    def capped(self) -> bool:
        """Its tenant runs as many jobs as it may (as last read)."""
        return self.cap > 0 and self.running >= self.cap

    def turn(self) -> tuple[int, float, datetime, datetime, str]:
        """Its place among the heads: lower first. Between tenants with the
        same share, the one that started a job longest ago goes first (round
        robin: with one worker, tenants take turns), then the older head."""
        share = self.running / self.weight if self.weight > 0 else float("inf")
        return (
            -self.priority,
            share,
            self.last_started or _NEVER,
            self.queued_at or _NEVER,
            self.id,
        )


def ranked(heads: Iterable[Head]) -> list[Head]:
    """The heads that may run now, in the order they should."""
    return sorted((h for h in heads if not h.cancel_requested and not h.capped), key=Head.turn)


class Claims(Transitions):
    """The job store's choice of the next job to run."""

    def claim_next(
        self, worker: str, *, now: datetime | None = None, max_running: int = 0
    ) -> Job | None:
        """Claim for ``worker`` the job that should run next, as
        :meth:`claim` would (a new attempt, its history row, the worker's
        registry row), or ``None`` when nothing may run now.

        ``max_running``: the cap of a tenant that has none of its own (the
        worker passes ``SLIDEFARM_MAX_RUNNING``; 0: no cap). A queued job whose
        cancel was asked for is ended ``cancelled`` on the way, never run.
        With nothing queued, this costs one query. Segments of split jobs are
        not looked at (the worker's loop claims with :meth:`claim_work`).
        """
        return self._claim_next(worker, now, max_running, None)

    def claim_work(
        self, worker: str, *, now: datetime | None = None, max_running: int = 0
    ) -> Job | Segment | None:
        """What a worker's loop claims next: a waiting segment of a split job
        (:meth:`storage.segments.SegmentStore.claim`'s order) before any new
        job, else :meth:`claim_next`'s job, else ``None``.

        Whether a segment waits comes back with the heads' read, in the same
        statement: a loop with no split job running (nearly always) pays no
        round trip for segments, and one with nothing to run at all still
        costs one query. Work begun finishes first: while a segment waits,
        no new job is claimed unless another worker took that segment first.
        """
        return self._claim_next(
            worker, now, max_running, lambda at: self._claim_segment(worker, at)
        )

    def _claim_next(
        self,
        worker: str,
        now: datetime | None,
        default_cap: int,
        segment: Callable[[datetime], T | None] | None,
    ) -> Job | T | None:
        """The claim; ``segment``: claims a waiting segment, called first
        whenever the heads' read says one waits."""
        for _ in range(LOOKS):
            at = now or utcnow()
            with self.transaction(single=True) as conn:
                heads, segment_waits = self._heads(conn, at, default_cap)
            if segment is not None and segment_waits:
                first = segment(at)
                if first is not None:
                    return first
                # Another worker took it meanwhile: the jobs these heads offer.
            flagged = [h for h in heads if h.cancel_requested]
            for head in flagged:
                self._cancel_flagged(head.id)
            if flagged:
                continue
            candidates = ranked(heads)
            if not candidates:
                return None
            if self.db.dialect == POSTGRESQL:
                for head in candidates:
                    job = self._claim_head_pg(head, worker, at)
                    if job is not None:
                        return job
            else:
                return self._claim_sqlite(worker, at, default_cap)
        return None

    def _heads(self, conn: Connection, at: datetime, default_cap: int) -> tuple[list[Head], bool]:
        """The heads that may run at ``at``, and whether a segment waits."""
        rows = conn.execute(queued_heads(self.db.dialect), {"n_now": at}).mappings().all()
        heads = [Head.from_row(row, default_cap) for row in rows if row["id"] is not None]
        return heads, bool(rows and rows[0]["segment_waits"])

    def _claim_segment(self, worker: str, at: datetime) -> Segment | None:
        # storage.segments builds on this package: imported when first used.
        from storage.segments import SegmentStore

        return SegmentStore(self.db).claim(worker, now=at, known_waiting=True)

    def _claim_head_pg(self, head: Head, worker: str, at: datetime) -> Job | None:
        """PostgreSQL: claim ``head``'s tenant's first job not held by another
        claim, in one transaction; under a cap, counted again after taking
        the tenant's claim lock, so the cap holds exactly whatever the
        number of workers (READ COMMITTED: each statement sees what the
        claims before it committed)."""
        owner = {"n_owner": head.owner}
        with self.transaction() as conn:
            if head.cap > 0:
                conn.execute(lock_tenant_claims(), owner)
                if conn.execute(count_running(), owner).scalar_one() >= head.cap:
                    return None
            job_id = conn.execute(next_in_line(), {**owner, "n_now": at}).scalar()
            if job_id is None:
                return None
            row = (
                conn.execute(
                    claim_job(POSTGRESQL),
                    {
                        "q_id": job_id,
                        "q_worker": worker,
                        "q_now": at,
                        **event_params(Status.QUEUED, Status.PROCESSING, "claimed"),
                    },
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        log_transition(job_id, Status.QUEUED, Status.PROCESSING, row["attempts"], worker, "claimed")
        self._changed(job_id)
        return Job.from_row(row)

    def _claim_sqlite(self, worker: str, at: datetime, default_cap: int) -> Job | None:
        """SQLite: the heads read again and the first claimed, all under the
        database's write lock (one writer: nothing changes in between)."""
        with self.transaction() as conn:
            take_write_lock(conn)
            candidates = ranked(self._heads(conn, at, default_cap)[0])
            if not candidates:
                return None
            job_id = candidates[0].id
            params = {"q_id": job_id, "q_worker": worker, "q_now": at}
            row = conn.execute(claim_job(self.db.dialect), params).mappings().first()
            if row is None:
                return None
            record_event(
                conn, job_id, Status.QUEUED, Status.PROCESSING, row["attempts"], worker, "claimed"
            )
            conn.execute(note_claim(), {**params, "w_name": worker})
        self._changed(job_id)
        return Job.from_row(row)
