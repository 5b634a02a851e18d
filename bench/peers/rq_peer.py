"""RQ: Flask endpoints doing ``Queue.enqueue`` and ``Job.fetch``, and an RQ
worker pool for the no-op job.

The job record is RQ's hash in Redis (written with the enqueue, updated by
the worker): readable at once, but only as durable as Redis's persistence.
The workers are RQ's default (``rq worker-pool``: each job runs in a forked
work horse).
"""

from __future__ import annotations

import sys
from typing import Any

import redis
from flask import Flask
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from bench.peers.config import Where
from bench.peers.rq_jobs import render
from bench.peers.web import create_web_app

DATABASE = False
#: What its status read answers for a job done.
DONE = "finished"
DURABLE = False
QUEUE = "peers-rq"


def create_app() -> Flask:
    connection = redis.Redis.from_url(Where.from_environ().redis_url)
    queue = Queue(QUEUE, connection=connection)

    def submit(deck: dict[str, Any]) -> str:
        return str(queue.enqueue(render, deck).id)

    def status(job_id: str) -> str | None:
        try:
            return str(Job.fetch(job_id, connection=connection).get_status().value)
        except NoSuchJobError:
            return None

    return create_web_app("rq", submit, status)


def prepare(where: Where) -> None:
    """Nothing to create."""


def reset(where: Where) -> None:
    client = redis.Redis.from_url(where.redis_url)
    for key in client.scan_iter("rq:*"):
        client.delete(key)


def sample_job(where: Where) -> str:
    """A job waiting in the queue (no worker runs during the HTTP runs)."""
    return str(
        Queue(QUEUE, connection=redis.Redis.from_url(where.redis_url)).enqueue(render, {}).id
    )


def unfinished(where: Where, ids: list[str]) -> int:
    """How many of ``ids`` RQ has not finished (one pipeline of HGETs)."""
    client = redis.Redis.from_url(where.redis_url)
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        states = pipe.execute()
    return sum(1 for s in states if s != JobStatus.FINISHED.value.encode())


def worker_argv(where: Where, processes: int) -> list[list[str]]:
    """One ``rq worker-pool`` of ``processes`` workers."""
    return [
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker-pool",
            "-n",
            str(processes),
            "-u",
            where.redis_url,
            "-q",
            QUEUE,
        ]
    ]
