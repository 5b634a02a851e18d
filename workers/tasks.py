"""Celery tasks and the worker's lifecycle hooks.

The render task is a wake-up that names no job: the worker asks the job
store for the job that runs next (:meth:`~storage.JobStore.claim_next`),
renders it, and asks again until nothing may run. The webhook task carries
a job id. The job store is the truth. The worker's main process registers
itself in the ``workers`` table and runs the :class:`~workers.sweeper.Sweeper`
thread.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from typing import Any

from celery import Task
from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from celeryconfig import RENDER_TASK, SEND_RETRY_POLICY, WEBHOOK_TASK
from core.config import Settings, get_settings
from storage import DatabaseUnavailable, Job, JobStore, StorageError
from storage.db import dispose_engines
from storage.registry import WorkerRegistry
from workers.batches import settle_batch
from workers.celery_app import app
from workers.pipeline import Outcome, run_attempt
from workers.sweeper import Sweeper
from workers.voices import close_voices, voice_records
from workers.webhooks import deliver_due, task_outcome

log = logging.getLogger("slidefarm.tasks")

_sweeper: Sweeper | None = None


def _store() -> JobStore:
    return JobStore.from_settings(get_settings())


#: Most jobs one wake-up runs before it hands over to a fresh wake-up, so that
#: Celery's per-child limits (max tasks, max memory) still apply.
JOBS_PER_WAKE = 50


def wake(count: int = 1) -> None:
    """Send ``count`` wake-ups (a failed send is made up for by the sweeper)."""
    try:
        for _ in range(count):
            app.send_task(RENDER_TASK, retry=True, retry_policy=SEND_RETRY_POLICY)
    except Exception:
        log.warning("broker unavailable; the sweeper will wake a worker again", exc_info=True)


def send_webhook(job_id: str) -> None:
    """Send the webhook delivery task of ``job_id`` (a lost one is sent
    again by the sweeper while the delivery is due)."""
    try:
        app.send_task(WEBHOOK_TASK, args=[job_id], retry=True, retry_policy=SEND_RETRY_POLICY)
    except Exception:
        log.warning(
            "job %s: broker unavailable; the sweeper will send its webhook", job_id, exc_info=True
        )


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not share its parent's database sockets.
    dispose_engines()


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    global _sweeper
    name = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"
    store = _store()
    try:
        WorkerRegistry(store).register(
            name, socket.gethostname(), os.getpid(), voices=voice_records()
        )
    except StorageError:
        log.warning("could not register worker %s (database unavailable)", name)
    _sweeper = Sweeper(store, get_settings(), name, wake, send_webhook)
    _sweeper.start()


@worker_process_shutdown.connect
def _close_voices(**_: Any) -> None:
    # A pool process may end without running atexit: its Piper children go now.
    close_voices()


@worker_shutdown.connect
def _stop_sweeper(sender: Any = None, **_: Any) -> None:
    close_voices()
    if _sweeper is None:
        return
    _sweeper.stop()
    try:
        WorkerRegistry(_sweeper.store).stopped(_sweeper.name)
    except StorageError:
        pass


@app.task(name="slidefarm.noop", ignore_result=True)
def noop() -> None:
    """Does nothing: the baseline of the dispatch benchmark (bare Celery)."""


@app.task(name=RENDER_TASK, bind=True, max_retries=None, ignore_result=True)
def render_presentation(self: Task, legacy_job_id: str | None = None) -> str:
    """A wake-up: claim the job that runs next, render it, and claim again
    until nothing may run (at most :data:`JOBS_PER_WAKE`, then one wake-up
    is sent to carry on). ``legacy_job_id`` (a message of an older version
    named its job) is ignored: the store decides."""
    store = _store()
    settings = get_settings()
    worker = self.request.hostname or f"celery@{socket.gethostname()}"
    ran = 0
    while ran < JOBS_PER_WAKE:
        try:
            job = store.claim_next(worker, max_running=settings.max_running)
        except DatabaseUnavailable as down:
            # The jobs are safe in the database; wake up again once it answers.
            delay = min(2 ** min(self.request.retries, 6), 60) * (0.5 + random.random())
            log.warning("wake-up: database unavailable at claim, retrying in %.1fs", delay)
            raise self.retry(exc=down, countdown=delay) from down
        if job is None:
            break
        ran += 1
        _render(store, job, worker, settings)
    else:
        wake()  # more may be waiting: a fresh task carries on
    if ran == 0:
        log.info("wake-up: nothing may run now (none queued, due or under its cap); skipped")
        return "skipped"
    return f"ran {ran}"


def _render(store: JobStore, job: Job, worker: str, settings: Settings) -> None:
    """Run the claimed attempt of ``job`` and do what its outcome asks."""
    # The claim set this worker's current job in the registry, in the same write.
    result = run_attempt(store, job, settings)
    # A retry waits queued with its not_before: this loop, or the sweeper's
    # wake-up once it is due, claims it again (no Celery countdown).
    if result.outcome is not Outcome.LOST and result.outcome is not Outcome.RETRYING:
        if job.callback_url is not None:
            send_webhook(job.id)  # the final transition armed it
    if job.batch_id is not None and result.outcome is not Outcome.RETRYING:
        settle_batch(store, job.batch_id)  # the batch's last job: its webhook
    if result.outcome not in (Outcome.LOST, Outcome.COMPLETED):  # a completion counted itself
        _registry_call(
            WorkerRegistry(store).job_finished, worker, job.id, outcome=result.outcome.value
        )


def _registry_call(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except StorageError:
        log.warning("worker registry not updated (database unavailable)")


@app.task(name=WEBHOOK_TASK, ignore_result=True)
def deliver_webhook(job_id: str) -> str:
    """Deliver the due attempt of ``job_id``'s completion webhook, if any."""
    return task_outcome("job", job_id, lambda: deliver_due(_store(), get_settings(), job_id), log)
