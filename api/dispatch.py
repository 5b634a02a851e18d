"""Waking the workers by the render task's name, so the API never imports the renderer."""

from __future__ import annotations

import logging

from celery import Celery

import celeryconfig
from celeryconfig import RENDER_TASK, SEND_RETRY_POLICY, WEBHOOK_TASK, wake_headers
from core.config import Settings
from storage import Job, Status

log = logging.getLogger(__name__)


class Dispatcher:
    """Puts wake-ups (and webhook tasks) on the broker; the job row must be committed first."""

    def __init__(self, settings: Settings) -> None:
        self.celery = Celery("slidefarm-api", set_as_current=False)
        self.celery.conf.update(celeryconfig.from_settings(settings))

    def wake(self, count: int = 1) -> bool:
        """Send ``count`` wake-ups to the workers; ``False`` if the broker is down.

        A wake-up names no job: the worker that takes it claims whatever the
        job store says runs next. A failed send loses nothing: the job stays
        queued in the store and the sweeper wakes a worker for it after
        ``SLIDEFARM_DISPATCH_TIMEOUT``. It carries its message version
        (:data:`celeryconfig.WAKE_VERSION`) in a header.
        """
        try:
            for _ in range(count):
                self.celery.send_task(
                    RENDER_TASK,
                    headers=wake_headers(),
                    retry=True,
                    retry_policy=SEND_RETRY_POLICY,
                )
        except Exception:
            log.warning("broker unavailable; queued jobs left to the sweeper", exc_info=True)
            return False
        return True

    def wake_for(self, job: Job) -> bool:
        """A wake-up for ``job`` just committed if it may run now; none for a
        ``scheduled`` job (the sweeper queues it and wakes a worker when its
        ``run_at`` comes)."""
        return self.wake() if job.status is Status.QUEUED else True

    def send_webhook(self, job_id: str) -> bool:
        """Send the webhook delivery task of ``job_id`` (final, with a
        callback URL); ``False`` if the broker is down, and then the sweeper
        sends it, the delivery being due in the store."""
        try:
            self.celery.send_task(
                WEBHOOK_TASK, args=[job_id], retry=True, retry_policy=SEND_RETRY_POLICY
            )
        except Exception:
            log.warning(
                "job %s: broker unavailable, webhook left to the sweeper", job_id, exc_info=True
            )
            return False
        return True

    def queue_depth(self) -> int | None:
        """Messages waiting on the render queue, or ``None`` if the broker is down."""
        try:
            with self.celery.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
                declared = conn.default_channel.queue_declare(
                    queue=celeryconfig.QUEUE, passive=True
                )
                return int(declared.message_count)
        except Exception:
            # A queue nobody declared yet is empty; a broker that is down has
            # no answer.
            try:
                with self.celery.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
                return 0
            except Exception:
                return None

    def ping(self) -> None:
        """Raise unless the broker accepts a connection."""
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
