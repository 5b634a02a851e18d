"""Celery tasks and the worker's lifecycle hooks.

The render task is a wake-up that names no job: the worker asks the job
store for what runs next (:meth:`~storage.JobStore.claim_work`: a waiting
segment of a long deck, else the next job), renders it, and asks again
until nothing may run. The webhook task carries a job id. The job store is
the truth. The worker's main process registers itself in the ``workers``
table and runs the :class:`~workers.sweeper.Sweeper` thread.

Asked to stop (SIGTERM: Celery's warm shutdown), a worker drains
(:mod:`workers.drain`): it is marked ``draining``, claims nothing more,
gives its current renders ``SLIDEFARM_DRAIN_TIMEOUT`` and hands back those
still running then, deregisters and exits 0.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from datetime import timedelta
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import (
    celeryd_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from celeryconfig import (
    RENDER_TASK,
    SEND_RETRY_POLICY,
    VERSION_HEADER,
    WAKE_VERSION,
    WEBHOOK_TASK,
    wake_headers,
)
from core.config import Settings, get_settings
from storage import DatabaseUnavailable, Job, JobStore, StorageError, utcnow
from storage.db import dispose_engines, set_process_role
from storage.registry import WorkerRegistry
from storage.segments import Segment
from workers.batches import settle_batch
from workers.celery_app import app
from workers.drain import DRAIN
from workers.pipeline import Outcome, run_attempt
from workers.split import run_segment
from workers.sweeper import Sweeper
from workers.voices import close_voices, voice_records
from workers.webhooks import deliver_due, task_outcome

log = logging.getLogger("slidefarm.tasks")

_sweeper: Sweeper | None = None


def _store() -> JobStore:
    return JobStore.from_settings(get_settings())


#: Seconds a worker waits before it requeues a wake-up of a newer version
#: than it understands, so that a farm of only older workers passes such a
#: message around at most once a second per pool process rather than spinning.
REFUSE_PAUSE = 1.0

#: Seconds past the drain's deadline a worker promises to be gone by (the
#: hand-back, its webhook and the deregistration), in its registry row.
DRAIN_GRACE = 15.0

#: Most jobs one wake-up runs before it hands over to a fresh wake-up, so that
#: Celery's per-child limits (max tasks, max memory) still apply.
JOBS_PER_WAKE = 50


def wake(count: int = 1) -> None:
    """Send ``count`` wake-ups (a failed send is made up for by the sweeper)."""
    try:
        for _ in range(count):
            app.send_task(
                RENDER_TASK, headers=wake_headers(), retry=True, retry_policy=SEND_RETRY_POLICY
            )
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


@celeryd_init.connect
def _main_process_budget(**_: Any) -> None:
    # The main process of `celery worker` (not a worker embedded in another
    # process, as tests start): its sweeper thread and registry writes.
    set_process_role("worker")
    dispose_engines()


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not share its parent's database sockets; it
    # holds one connection, for its renders and their heartbeats.
    set_process_role("render")
    dispose_engines()


@worker_shutting_down.connect
def _begin_drain(sender: Any = None, how: str = "Warm", **_: Any) -> None:
    """Celery's shutdown began (in the main process's signal handler): the
    pool's children stop claiming and have ``SLIDEFARM_DRAIN_TIMEOUT`` to
    finish, then hand their jobs back; the registry says ``draining``."""
    if how != "Warm":
        return  # a cold shutdown cancels the tasks; recovery requeues their jobs
    settings = get_settings()
    already = DRAIN.draining
    DRAIN.begin(settings.drain_timeout)
    if already:
        return
    name = str(sender) if sender else f"celery@{socket.gethostname()}"
    until = utcnow() + timedelta(seconds=settings.drain_timeout + DRAIN_GRACE)
    # Not from the signal handler itself: it may have interrupted this
    # thread inside the database pool's lock.
    threading.Thread(
        target=_mark_draining, args=(name, until), name="slidefarm-drain", daemon=True
    ).start()


def _mark_draining(name: str, until: Any) -> None:
    log.info(
        "worker %s draining: claims nothing more; renders have %.0f s, then are handed back",
        name,
        get_settings().drain_timeout,
    )
    _registry_call(WorkerRegistry(_store()).draining, name, until)


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
    store.db.release_idle()  # the sweeper opens one when it sweeps
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


def message_version(request: Any) -> int:
    """The version of a render task's message: its header, else 1 (a
    message sent before versions were, which named its job)."""
    value = getattr(request, VERSION_HEADER, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(VERSION_HEADER)
    try:
        return int(value) if value is not None else 1
    except (TypeError, ValueError):
        return WAKE_VERSION + 1  # unreadable: not ours to guess; requeued


@app.task(name=RENDER_TASK, bind=True, max_retries=None, ignore_result=True)
def render_presentation(self: Task, *legacy: Any, **newer: Any) -> str:
    """A wake-up: claim the job that runs next, render it, and claim again
    until nothing may run (at most :data:`JOBS_PER_WAKE`, then one wake-up
    is sent to carry on) or this worker drains (then too).

    A message of this version (:data:`~celeryconfig.WAKE_VERSION`) or the
    one before is accepted: a version 1 message named its job (``legacy``),
    which is ignored, the store decides. A newer one is requeued untouched
    (never acknowledged and dropped): a worker of its version takes it.
    Arguments are taken loosely so that a newer message's are never refused
    by Celery before this check."""
    version = message_version(self.request)
    if version > WAKE_VERSION:
        log.warning(
            "wake-up of message version %s refused: this worker understands %s and %s; "
            "requeued for a newer worker",
            version,
            WAKE_VERSION - 1,
            WAKE_VERSION,
        )
        time.sleep(REFUSE_PAUSE)
        raise Reject(f"message version {version} is newer than {WAKE_VERSION}", requeue=True)
    store = _store()
    try:
        return _claim_and_render(self, store)
    finally:
        # Idle until the next wake-up: hold no connection meanwhile.
        store.db.release_idle()


def _claim_and_render(task: Task, store: JobStore) -> str:
    """Claim and render until nothing may run, this worker drains, or
    :data:`JOBS_PER_WAKE` jobs ran."""
    settings = get_settings()
    worker = task.request.hostname or f"celery@{socket.gethostname()}"
    ran = 0
    while ran < JOBS_PER_WAKE:
        if DRAIN.draining:
            # Stopping: claim nothing more. A job may wait (one handed back
            # among them): a worker that stays takes this wake-up over.
            log.info("wake-up: worker %s draining; claims nothing more, passed on", worker)
            wake()
            return f"ran {ran}, then drained"
        try:
            # A long deck's segments before any new job: work begun finishes
            # first, on every worker free for it (docs/design.md, "Long
            # decks"). The heads' read says whether one waits: no extra
            # round trip when none does.
            claimed = store.claim_work(worker, max_running=settings.max_running)
        except DatabaseUnavailable as down:
            # The jobs are safe in the database; wake up again once it answers.
            delay = min(2 ** min(task.request.retries, 6), 60) * (0.5 + random.random())
            log.warning("wake-up: database unavailable at claim, retrying in %.1fs", delay)
            raise task.retry(exc=down, countdown=delay) from down
        if claimed is None:
            break
        ran += 1
        if isinstance(claimed, Segment):
            run_segment(
                store, claimed, settings, worker=worker, drain_overdue=lambda: DRAIN.overdue
            )
        else:
            _render(store, claimed, worker, settings)
    else:
        wake()  # more may be waiting: a fresh task carries on
    if ran == 0:
        log.info("wake-up: nothing may run now (none queued, due or under its cap); skipped")
        return "skipped"
    return f"ran {ran}"


def _render(store: JobStore, job: Job, worker: str, settings: Settings) -> None:
    """Run the claimed attempt of ``job`` and do what its outcome asks."""
    # The claim set this worker's current job in the registry, in the same write.
    result = run_attempt(
        store, job, settings, worker=worker, drain_overdue=lambda: DRAIN.overdue, wake=wake
    )
    # A retry waits queued with its not_before: this loop, or the sweeper's
    # wake-up once it is due, claims it again (no Celery countdown).
    requeued = result.outcome in (Outcome.RETRYING, Outcome.HANDED_BACK)
    if result.outcome is not Outcome.LOST and not requeued:
        if job.callback_url is not None:
            send_webhook(job.id)  # the final transition armed it
    if job.batch_id is not None and not requeued:
        settle_batch(store, job.batch_id)  # the batch's last job: its webhook
    if result.outcome not in (Outcome.LOST, Outcome.COMPLETED):  # a completion counted itself
        # A hand-back counts as a retry of this worker's (no counter of its own).
        outcome = Outcome.RETRYING if requeued else result.outcome
        _registry_call(WorkerRegistry(store).job_finished, worker, job.id, outcome=outcome.value)


def _registry_call(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except StorageError:
        log.warning("worker registry not updated (database unavailable)")


@app.task(name=WEBHOOK_TASK, ignore_result=True)
def deliver_webhook(job_id: str) -> str:
    """Deliver the due attempt of ``job_id``'s completion webhook, if any."""
    return task_outcome("job", job_id, lambda: deliver_due(_store(), get_settings(), job_id), log)
