"""Waking the workers by the render task's name, so the API never imports the renderer."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

import redis
from celery import Celery
from kombu.messaging import Producer
from kombu.utils.json import dumps

import celeryconfig
from celeryconfig import RENDER_TASK, SEND_RETRY_POLICY, WEBHOOK_TASK, wake_headers
from core.config import Settings
from storage import Job, Status

log = logging.getLogger(__name__)


#: Stand-ins for the ids of the wake-up that :class:`WakeTemplate` has
#: Celery build once, replaced by fresh ones in every copy.
_TASK_ID = "00000000-0000-4000-8000-00000000fa57"


class WakeTemplate:
    """A wake-up exactly as Celery and kombu would put it on a Redis broker,
    built once by Celery itself (its ``send_task``, with the last step, the
    ``LPUSH``, captured), then sent as a copy with fresh ids: one ``LPUSH``,
    without the ~1 ms of CPU that building, routing (a binding lookup in
    Redis) and a new client cost on every send. A wake-up names no job, so
    every copy is the same message but for its task id and delivery tag."""

    def __init__(self, celery: Celery, client: redis.Redis) -> None:
        captured: list[tuple[str, Any]] = []
        with celery.connection_for_write() as conn:
            channel: Any = conn.default_channel

            def capture(queue: str, message: Any, **_: Any) -> None:
                key = channel._q_for_pri(queue, channel._get_message_priority(message, False))
                captured.append((key, message))

            channel._put = capture  # this channel only: it is closed below
            celery.send_task(
                RENDER_TASK,
                headers=wake_headers(),
                task_id=_TASK_ID,
                producer=Producer(channel),  # type: ignore[no-untyped-call]
            )
            channel.close()
        if len(captured) != 1:
            raise RuntimeError(f"a wake-up went to {len(captured)} queues, not one")
        self.key, message = captured[0]
        tag = message["properties"]["delivery_tag"]
        text: str = dumps(message)  # type: ignore[no-untyped-call]
        if text.count(tag) != 1 or _TASK_ID not in text:
            raise RuntimeError("the wake-up's ids cannot be told apart in its message")
        self._parts = [part.split(tag) for part in text.split(_TASK_ID)]
        self.client = client

    def copy(self) -> str:
        """The message with a fresh task id and delivery tag."""
        task_id = str(uuid.uuid4())
        tag = str(uuid.uuid4())
        return task_id.join(tag.join(pieces) for pieces in self._parts)

    def send(self, count: int) -> None:
        """Put ``count`` wake-ups on the queue, in one round trip."""
        self.client.lpush(self.key, *(self.copy() for _ in range(count)))


class Dispatcher:
    """Puts wake-ups (and webhook tasks) on the broker; the job row must be committed first."""

    def __init__(self, settings: Settings) -> None:
        self.celery = Celery("slidefarm-api", set_as_current=False)
        self.celery.conf.update(celeryconfig.from_settings(settings))
        broker = settings.celery_broker_url or ""
        self._broker_redis = broker if broker.startswith(("redis://", "rediss://")) else None
        self._template: WakeTemplate | None = None
        self._template_pid = 0
        self._lock = threading.Lock()

    def _wake_template(self) -> WakeTemplate | None:
        """This process's :class:`WakeTemplate` on a Redis broker (built on
        first use); ``None`` on another broker, or if it cannot be built
        (then Celery sends every wake-up itself)."""
        if self._broker_redis is None:
            return None
        if self._template_pid == os.getpid():
            return self._template
        with self._lock:
            if self._template_pid != os.getpid():
                try:
                    client = redis.Redis.from_url(
                        self._broker_redis, socket_timeout=2.0, socket_connect_timeout=2.0
                    )
                    self._template = WakeTemplate(self.celery, client)
                except Exception:
                    log.warning("wake-ups go through Celery's send_task", exc_info=True)
                    self._template = None
                self._template_pid = os.getpid()
        return self._template

    def wake(self, count: int = 1) -> bool:
        """Send ``count`` wake-ups to the workers; ``False`` if the broker is down.

        A wake-up names no job: the worker that takes it claims whatever the
        job store says runs next. A failed send loses nothing: the job stays
        queued in the store and the sweeper wakes a worker for it after
        ``SLIDEFARM_DISPATCH_TIMEOUT``. It carries its message version
        (:data:`celeryconfig.WAKE_VERSION`) in a header.

        On a Redis broker the message is a copy of one Celery built
        (:class:`WakeTemplate`); if that send fails, Celery tries as usual.
        """
        template = self._wake_template()
        if template is not None:
            try:
                template.send(count)
                return True
            except redis.RedisError:
                log.info("wake-up: direct send failed; Celery retries it", exc_info=True)
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
