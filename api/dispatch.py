"""Waking the workers by the render task's name, so the API never imports the renderer."""

from __future__ import annotations

import logging
import os
import threading
import time
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


#: Seconds before a wake-up template that could not be built is tried again.
TEMPLATE_RETRY = 5.0

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

    def __init__(self, celery: Celery, client: redis.Redis, task: str = RENDER_TASK) -> None:
        """A template of ``task`` (the render task's wake-up) on ``celery``'s
        broker, sent through ``client``."""
        captured: list[tuple[str, Any]] = []
        with celery.connection_for_write() as conn:
            channel: Any = conn.default_channel

            def capture(queue: str, message: Any, **_: Any) -> None:
                key = channel._q_for_pri(queue, channel._get_message_priority(message, False))
                captured.append((key, message))

            channel._put = capture  # this channel only: it is closed below
            celery.send_task(
                task,
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
        self._send_timeout = settings.broker_send_timeout
        self._template: WakeTemplate | None = None
        self._template_pid = 0
        self._next_build = 0.0
        self._lock = threading.Lock()

    def _wake_template(self) -> WakeTemplate | None:
        """This process's :class:`WakeTemplate` on a Redis broker (built on
        first use); ``None`` on another broker, or while it cannot be built
        (then Celery sends wake-ups itself, and building is tried again
        :data:`TEMPLATE_RETRY` seconds later)."""
        if self._broker_redis is None:
            return None
        pid = os.getpid()
        if self._template_pid == pid:
            return self._template
        if time.monotonic() < self._next_build:
            return None
        with self._lock:
            if self._template_pid != pid and time.monotonic() >= self._next_build:
                try:
                    client = redis.Redis.from_url(
                        self._broker_redis,
                        socket_timeout=self._send_timeout,
                        socket_connect_timeout=self._send_timeout,
                    )
                    self._template = WakeTemplate(self.celery, client)
                    self._template_pid = pid
                except Exception as error:
                    log.warning("wake-ups go through Celery's send_task for now: %s", error)
                    self._next_build = time.monotonic() + TEMPLATE_RETRY
        return self._template if self._template_pid == pid else None

    def wake(self, count: int = 1) -> bool:
        """Send ``count`` wake-ups to the workers; ``False`` if the broker is down.

        A wake-up names no job: the worker that takes it claims whatever the
        job store says runs next. A failed send loses nothing: the job stays
        queued in the store and the sweeper wakes a worker for it after
        ``SLIDEFARM_DISPATCH_TIMEOUT``. It carries its message version
        (:data:`celeryconfig.WAKE_VERSION`) in a header.

        On a Redis broker the message is a copy of one Celery built
        (:class:`WakeTemplate`), sent within ``SLIDEFARM_BROKER_SEND_TIMEOUT``;
        if Redis refuses it (but is there), Celery sends it as usual.
        """
        template = self._wake_template()
        if template is not None:
            try:
                template.send(count)
                return True
            except (redis.ConnectionError, redis.TimeoutError):
                # Celery would wait for the same broker again: leave it to the sweeper.
                log.warning("broker unavailable; queued jobs left to the sweeper", exc_info=True)
                return False
            except redis.RedisError:
                log.warning("wake-up: direct send refused; Celery sends it", exc_info=True)
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
