"""The worker registry: which render workers exist, are alive, and what they do.

Every worker keeps its row current (``last_seen``), so an operator sees which
hosts are alive from the database alone, whatever the broker says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, insert, select, update

from storage.db import Database, HasDatabase, database_of
from storage.jobs.statements import worker_finished
from storage.jobs.values import utcnow
from storage.models import workers_table


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A snapshot of one worker's row."""

    name: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    current_job: str | None
    jobs_done: int
    jobs_failed: int
    jobs_retried: int
    jobs_cancelled: int
    #: The voices it offered at registration (``{"id", "engine", "name",
    #: "language"}`` each); None for a worker that reported none (older).
    voices: list[dict[str, Any]] | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> WorkerInfo:
        return cls(**{name: row[name] for name in cls.__slots__})

    def alive(self, stale_after: float, now: datetime | None = None) -> bool:
        """Seen within ``stale_after`` seconds and neither stopped nor
        draining (it takes jobs)."""
        now = now or utcnow()
        return self.stopped_at is None and now - self.last_seen <= timedelta(seconds=stale_after)

    def state(self, stale_after: float, now: datetime | None = None) -> str:
        """``alive``, ``draining`` (asked to stop: it claims nothing and
        finishes or hands back its render), ``stopped``, or ``stale`` (not
        seen within ``stale_after`` seconds without saying it stopped).

        ``stopped_at`` is when the worker stops: while it drains, the latest
        time it has promised to be gone by (its drain deadline and a grace),
        in the future; once it stopped, the moment it did."""
        now = now or utcnow()
        fresh = now - self.last_seen <= timedelta(seconds=stale_after)
        if self.stopped_at is None:
            return "alive" if fresh else "stale"
        if self.stopped_at > now:
            return "draining" if fresh else "stale"
        return "stopped"


class WorkerRegistry:
    """Reads and writes of the ``workers`` table."""

    def __init__(self, db: Database | HasDatabase) -> None:
        """On ``db`` (or the database of a store such as the job store)."""
        self.db = database_of(db)

    def register(
        self, name: str, host: str, pid: int, voices: list[dict[str, Any]] | None = None
    ) -> None:
        """A worker started (or restarted under the same name): a fresh row,
        with the voices its host speaks (as the worker lists them)."""
        now = utcnow()
        values = {
            "host": host,
            "pid": pid,
            "voices": voices,
            "started_at": now,
            "last_seen": now,
            "stopped_at": None,
            "current_job": None,
        }
        with self.db.transaction() as conn:
            updated = conn.execute(
                update(workers_table).where(workers_table.c.name == name).values(**values)
            ).rowcount
            if not updated:
                conn.execute(
                    insert(workers_table).values(
                        name=name,
                        jobs_done=0,
                        jobs_failed=0,
                        jobs_retried=0,
                        jobs_cancelled=0,
                        **values,
                    )
                )

    def seen(self, name: str) -> None:
        """Renew ``last_seen`` (a draining worker stays draining; one marked
        stopped that is still seen is alive again)."""
        now = utcnow()
        with self.db.transaction(single=True) as conn:
            conn.execute(
                update(workers_table)
                .where(workers_table.c.name == name)
                .values(
                    last_seen=now,
                    stopped_at=case(
                        (workers_table.c.stopped_at > now, workers_table.c.stopped_at), else_=None
                    ),
                )
            )

    def draining(self, name: str, until: datetime) -> None:
        """The worker was asked to stop: it claims nothing more and is gone
        by ``until`` (its current render finished or handed back)."""
        with self.db.transaction(single=True) as conn:
            conn.execute(
                update(workers_table)
                .where(workers_table.c.name == name)
                .values(stopped_at=until, last_seen=utcnow())
            )

    def job_finished(self, name: str, job_id: str, *, outcome: str) -> None:
        """Count ``outcome`` (``completed``, ``failed``, ``retrying`` or
        ``cancelled``); clear ``current_job`` if it is still this job."""
        with self.db.transaction(single=True) as conn:
            conn.execute(
                update(workers_table)
                .where(workers_table.c.name == name)
                .values(worker_finished(job_id, utcnow(), outcome=outcome))
            )

    def stopped(self, name: str) -> None:
        """A warm shutdown finished: the worker deregisters."""
        with self.db.transaction(single=True) as conn:
            conn.execute(
                update(workers_table)
                .where(workers_table.c.name == name)
                .values(stopped_at=utcnow(), current_job=None)
            )

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker, most recently seen first."""
        with self.db.transaction(single=True) as conn:
            rows = (
                conn.execute(select(workers_table).order_by(workers_table.c.last_seen.desc()))
                .mappings()
                .all()
            )
        return [WorkerInfo.from_row(r) for r in rows]
