"""The seed design slidefarm replaces, as its plan describes it.

Flask; a SQLAlchemy ORM repository on PostgreSQL (a ``jobs`` table of its own,
a QueuePool with ``pool_pre_ping``); a submission inserts the row (pending),
commits, then ``send_task``s the render to Celery; a status read is
cache-aside (Redis GET, else the ORM query and a SETEX with a short TTL); the
worker marks the job processing (commit) and completed (commit), invalidating
the cached entry after each, and renders nothing in between.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from celery import Celery
from flask import Flask
from sqlalchemy import JSON, DateTime, Engine, String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import QueuePool

from bench.peers.commands import CELERY_SETTINGS, celery_worker
from bench.peers.config import Where
from bench.peers.web import create_web_app

DATABASE = True
#: What its status read answers for a job done.
DONE = "completed"
DURABLE = True
QUEUE = "peers-seed"
RENDER = "seed.render"
#: Seconds a cached status lives (the plan's "short TTL").
CACHE_TTL = 5


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    title: Mapped[str] = mapped_column(String(200))
    deck: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[float] = mapped_column(default=0.0)
    error: Mapped[str | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def view(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "status": self.status,
            "title": self.title,
            "progress": self.progress,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class JobRepository:
    """Every query of a job, and the cache kept beside them."""

    def __init__(self, engine: Engine, cache: redis.Redis) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._cache = cache

    @staticmethod
    def _key(job_id: str) -> str:
        return f"seed:job:{job_id}"

    def create(self, deck: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC)
        row = JobRow(
            id=str(uuid.uuid4()),
            status="pending",
            title=str(deck.get("title", ""))[:200],
            deck=deck,
            created_at=now,
            updated_at=now,
        )
        with self._sessions() as session:
            session.add(row)
            session.commit()
        return row.view()

    def get(self, job_id: str) -> dict[str, Any] | None:
        cached = self._cache.get(self._key(job_id))
        if cached is not None:
            found: dict[str, Any] = json.loads(cached)
            return found
        with self._sessions() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                return None
            view = row.view()
        self._cache.setex(self._key(job_id), CACHE_TTL, json.dumps(view))
        return view

    def _mark(self, job_id: str, status: str, progress: float) -> None:
        with self._sessions() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                return
            row.status = status
            row.progress = progress
            row.updated_at = datetime.now(UTC)
            session.commit()
        self._cache.delete(self._key(job_id))

    def mark_processing(self, job_id: str) -> None:
        self._mark(job_id, "processing", 0.0)

    def mark_completed(self, job_id: str) -> None:
        self._mark(job_id, "completed", 1.0)

    def unfinished(self, ids: list[str]) -> int:
        """How many of ``ids`` are not completed yet."""
        query = (
            select(func.count())
            .select_from(JobRow)
            .where(JobRow.id.in_(ids), JobRow.status != "completed")
        )
        with self._sessions() as session:
            return int(session.scalar(query) or 0)


def _engine(where: Where) -> Engine:
    return create_engine(
        where.sqlalchemy_url, poolclass=QueuePool, pool_size=5, max_overflow=10, pool_pre_ping=True
    )


@cache
def _repository(where: Where) -> JobRepository:
    """One repository per process (built after a fork, never before)."""
    return JobRepository(_engine(where), redis.Redis.from_url(where.redis_url))


def _celery() -> Celery:
    app = Celery("seed", set_as_current=False)
    where = Where.from_environ()
    app.conf.update(
        CELERY_SETTINGS,
        broker_url=where.redis_url,
        task_ignore_result=True,
        task_default_queue=QUEUE,
    )

    @app.task(name=RENDER)
    def render(job_id: str) -> None:
        repository = _repository(Where.from_environ())
        repository.mark_processing(job_id)
        # the no-op render
        repository.mark_completed(job_id)

    return app


#: The worker's entry (``celery -A bench.peers.seed worker``) and the sender.
celery = _celery()


def create_app() -> Flask:
    where = Where.from_environ()
    repository = _repository(where)

    def submit(deck: dict[str, Any]) -> str:
        job = repository.create(deck)
        celery.send_task(RENDER, args=[job["job_id"]])
        return str(job["job_id"])

    def status(job_id: str) -> str | None:
        job = repository.get(job_id)
        return None if job is None else str(job["status"])

    return create_web_app("seed", submit, status)


def prepare(where: Where) -> None:
    engine = _engine(where)
    Base.metadata.create_all(engine)
    engine.dispose()


def reset(where: Where) -> None:
    engine = _engine(where)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE jobs"))
    engine.dispose()
    client = redis.Redis.from_url(where.redis_url)
    client.delete(QUEUE)
    for key in client.scan_iter("seed:job:*"):
        client.delete(key)


def sample_job(where: Where) -> str:
    """A job a worker holds, as a poller would see it mid-render."""
    repository = JobRepository(_engine(where), redis.Redis.from_url(where.redis_url))
    job_id = str(repository.create({"title": "sample", "slides": []})["job_id"])
    repository.mark_processing(job_id)
    return job_id


def unfinished(where: Where, ids: list[str]) -> int:
    return _repository(where).unfinished(ids)


def worker_argv(where: Where, processes: int) -> list[list[str]]:
    return celery_worker("bench.peers.seed", QUEUE, "seed", processes)
