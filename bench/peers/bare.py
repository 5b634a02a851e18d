"""Flask and Celery ``send_task``, no database: the floor of a Celery service.

The submission is one publish. The worker records each task's outcome in
Celery's Redis result backend, and the status read is ``AsyncResult(id).state``
(one Redis GET): a record a poller can read, though not a durable one (it
exists only once the task has run, and lives in Redis). The sender is a Celery
app without a result backend: with Celery's Redis backend configured, every
``send_task`` also SUBSCRIBEs its thread's connection to the task's result
channel (a round trip per submission, and a subscription kept per task), which
a fire-and-forget submitter does not want.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from celery import Celery
from flask import Flask

from bench.peers.commands import CELERY_SETTINGS, celery_worker
from bench.peers.config import Where
from bench.peers.web import create_web_app

DATABASE = False
#: What its status read answers for a job done.
DONE = "success"
DURABLE = False
QUEUE = "peers-bare"
RENDER = "bare.render"


def _celery(where: Where, *, results: bool) -> Celery:
    app = Celery("bare", set_as_current=False)
    app.conf.update(
        CELERY_SETTINGS,
        broker_url=where.redis_url,
        task_default_queue=QUEUE,
        result_backend=where.redis_url if results else None,
        task_ignore_result=not results,
        result_expires=3600,
    )
    return app


#: The worker's app (``celery -A bench.peers.bare worker``), which records outcomes.
celery = _celery(Where.from_environ(), results=True)


@celery.task(name=RENDER)
def render(deck: dict[str, Any]) -> None:
    """The no-op render."""


def create_app() -> Flask:
    sender = _celery(Where.from_environ(), results=False)

    def submit(deck: dict[str, Any]) -> str:
        return str(sender.send_task(RENDER, args=[deck]).id)

    def status(job_id: str) -> str | None:
        return str(celery.AsyncResult(job_id).state).lower()

    return create_web_app("bare", submit, status)


def prepare(where: Where) -> None:
    """Nothing to create."""


def reset(where: Where) -> None:
    client = redis.Redis.from_url(where.redis_url)
    client.delete(QUEUE)
    for key in client.scan_iter("celery-task-meta-*"):
        client.delete(key)


def sample_job(where: Where) -> str:
    """A task a worker has started, as its result backend records it."""
    app = _celery(where, results=True)
    app.backend.store_result("bare-sample", None, "STARTED")
    return "bare-sample"


def unfinished(where: Where, ids: list[str]) -> int:
    """How many of ``ids`` have no SUCCESS recorded (one MGET)."""
    values = redis.Redis.from_url(where.redis_url).mget([f"celery-task-meta-{i}" for i in ids])
    return sum(1 for v in values if v is None or json.loads(v)["status"] != "SUCCESS")


def worker_argv(where: Where, processes: int) -> list[list[str]]:
    return celery_worker("bench.peers.bare", QUEUE, "bare", processes)
