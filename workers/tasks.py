"""Celery tasks and the worker's lifecycle hooks.

Every task carries only a job id: the job store is the truth. The worker's
main process registers itself in the ``workers`` table and runs the
:class:`~workers.sweeper.Sweeper` thread.
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
from core.config import get_settings
from storage import DatabaseUnavailable, JobStore, StorageError
from storage.db import dispose_engines
from storage.registry import WorkerRegistry
from workers.batches import settle_batch
from workers.celery_app import app
from workers.pipeline import Outcome, run_attempt
from workers.sweeper import Sweeper
from workers.voices import close_voices, voice_records
from workers.webhooks import deliver_due

log = logging.getLogger("slidefarm.tasks")

_sweeper: Sweeper | None = None


def _store() -> JobStore:
    return JobStore.from_settings(get_settings())


def dispatch(job_id: str, countdown: float = 0.0) -> None:
    """Send the render task of ``job_id`` (a failed send is retried by the sweeper)."""
    try:
        app.send_task(
            RENDER_TASK,
            args=[job_id],
            countdown=countdown or None,
            retry=True,
            retry_policy=SEND_RETRY_POLICY,
        )
    except Exception:
        log.warning(
            "job %s: broker unavailable; the sweeper will send it again", job_id, exc_info=True
        )


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
    _sweeper = Sweeper(store, get_settings(), name, dispatch, send_webhook)
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
def render_presentation(self: Task, job_id: str) -> str:
    """Claim job ``job_id`` and render it; a job already claimed or gone is skipped."""
    store = _store()
    worker = self.request.hostname or f"celery@{socket.gethostname()}"
    try:
        job = store.claim(job_id, worker)
    except DatabaseUnavailable as down:
        # The row is safe in the database; try again once it answers.
        delay = min(2 ** min(self.request.retries, 6), 60) * (0.5 + random.random())
        log.warning("job %s: database unavailable at claim, retrying in %.1fs", job_id, delay)
        raise self.retry(exc=down, countdown=delay) from down
    if job is None:
        log.info(
            "job %s: not claimable (already claimed, finished, not due or deleted); skipped", job_id
        )
        return "skipped"
    # The claim set this worker's current job in the registry, in the same write.
    result = run_attempt(store, job, get_settings())
    if result.outcome is Outcome.RETRYING:
        dispatch(job.id, result.retry_in or 0.0)
    elif result.outcome is not Outcome.LOST and job.callback_url is not None:
        send_webhook(job.id)  # the final transition armed it
    if job.batch_id is not None and result.outcome is not Outcome.RETRYING:
        settle_batch(store, job.batch_id)  # the batch's last job: its webhook
    if result.outcome not in (Outcome.LOST, Outcome.COMPLETED):  # a completion counted itself
        _registry_call(
            WorkerRegistry(store).job_finished, worker, job.id, outcome=result.outcome.value
        )
    return result.outcome.value


def _registry_call(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except StorageError:
        log.warning("worker registry not updated (database unavailable)")


@app.task(name=WEBHOOK_TASK, ignore_result=True)
def deliver_webhook(job_id: str) -> str:
    """Deliver the due attempt of ``job_id``'s completion webhook, if any."""
    try:
        attempt = deliver_due(_store(), get_settings(), job_id)
    except StorageError as error:
        # The delivery stays due in the store; the sweeper sends it again.
        log.warning("job %s: webhook not delivered now (%s)", job_id, error)
        return "deferred"
    if attempt is None:
        return "skipped"
    return attempt.status.value if attempt.status else "fenced"
