"""Celery tasks. Every task carries only a job id: the job store is the truth."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task
from celery.signals import worker_process_init

from storage import DatabaseUnavailable, JobStore, get_settings
from storage.db import dispose_engines
from workers.celery_app import app
from workers.pipeline import Outcome, run_attempt

log = logging.getLogger(__name__)

RENDER_TASK = "slidefarm.render_presentation"


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not share its parent's database sockets.
    dispose_engines()


def _store() -> JobStore:
    return JobStore.from_url(get_settings().database_url)


@app.task(name=RENDER_TASK, bind=True, max_retries=8, ignore_result=True)
def render_presentation(self: Task, job_id: str) -> str:
    """Claim job ``job_id`` and render it; a job already claimed or gone is skipped."""
    store = _store()
    worker = self.request.hostname or "unknown"
    try:
        job = store.claim(job_id, worker)
    except DatabaseUnavailable as down:
        # The row is safe in the database; try again once it answers.
        delay = min(2 ** self.request.retries, 60) * (0.5 + random.random())
        log.warning("job %s: database unavailable at claim, retrying in %.1fs", job_id, delay)
        raise self.retry(exc=down, countdown=delay) from down
    if job is None:
        log.info("job %s: not claimable (already claimed, finished or deleted); skipped", job_id)
        return "skipped"
    outcome: Outcome = run_attempt(store, job, get_settings())
    return outcome.value
