"""Procrastinate on PostgreSQL: Flask endpoints doing ``defer`` and reading a
job's status from its jobs table, and procrastinate workers for the no-op job.

The job record is a row of ``procrastinate_jobs`` committed by the defer (a
durable record, like slidefarm's and the seed's). Each worker process runs
one job at a time (``--concurrency 1``), as many processes as the others get.
"""

from __future__ import annotations

import sys
from typing import Any

import procrastinate
import psycopg
from flask import Flask

from bench.peers.config import Where
from bench.peers.web import create_web_app

DATABASE = True
#: What its status read answers for a job done.
DONE = "succeeded"
DURABLE = True
QUEUE = "peers"

#: The worker's app (``procrastinate --app bench.peers.procrastinate_peer.app``).
app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=Where.from_environ().database_url)
)


@app.task(name="procrastinate_peer.render", queue=QUEUE)
def render(deck: dict[str, Any]) -> None:
    """The no-op render."""


def create_app() -> Flask:
    # gunicorn loads the app in each serving process, after the fork: the
    # synchronous pool Procrastinate opens for a WSGI app is this process's own.
    app.open()

    def submit(deck: dict[str, Any]) -> str:
        return str(render.defer(deck=deck))

    def status(job_id: str) -> str | None:
        if not job_id.isdigit():
            return None
        try:
            return str(app.job_manager.get_job_status(int(job_id)).value)
        except procrastinate.exceptions.NoResult:
            return None

    return create_web_app("procrastinate", submit, status)


def _opened(where: Where) -> procrastinate.App:
    """An app of the harness's own on ``where`` (the module's reads the environment)."""
    return procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=where.database_url, min_size=1)
    ).open()


def prepare(where: Where) -> None:
    jobs = _opened(where)
    try:
        jobs.schema_manager.apply_schema()
    finally:
        jobs.close()


def reset(where: Where) -> None:
    with psycopg.connect(where.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE procrastinate_jobs CASCADE")


def sample_job(where: Where) -> str:
    """A job waiting in the table (no worker runs during the HTTP runs)."""
    jobs = _opened(where)
    try:
        return str(jobs.configure_task(render.name, queue=QUEUE).defer(deck={}))
    finally:
        jobs.close()


def unfinished(where: Where, ids: list[str]) -> int:
    with psycopg.connect(where.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs "
            "WHERE id = ANY(%s) AND status IN ('todo', 'doing')",
            ([int(i) for i in ids],),
        ).fetchone()
    return int(row[0]) if row else 0


def worker_argv(where: Where, processes: int) -> list[list[str]]:
    """``processes`` procrastinate workers, one job at a time each."""
    return [
        [
            sys.executable,
            "-m",
            "procrastinate",
            "--app",
            "bench.peers.procrastinate_peer.app",
            "--log-level",
            "warning",
            "worker",
            "--queues",
            QUEUE,
            "--concurrency",
            "1",
            "--name",
            f"peer{n}",
        ]
        for n in range(processes)
    ]
