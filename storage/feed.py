"""Change notifications of jobs over Redis pub/sub (when ``REDIS_URL`` is set).

The job store publishes a job's id after each committed change; event
streams subscribe and re-read the job from the store, which stays the truth
(a lost notification only delays an update until the next poll).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "slidefarm:job:"


class ChangeFeed:
    """Publish and subscribe to job changes; failures never break a write."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(self.url, socket_timeout=1,
                                                    socket_connect_timeout=1)
            return self._client

    def publish(self, job_id: str) -> None:
        """Tell subscribers that ``job_id`` changed (best effort)."""
        try:
            self._redis().publish(CHANNEL_PREFIX + job_id, b"1")
        except redis.RedisError as error:
            log.debug("change feed unavailable: %s", error)

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[redis.client.PubSub | None]:
        """A pub/sub subscription to ``job_id`` (``None`` if Redis is down)."""
        pubsub = None
        try:
            client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            pubsub.subscribe(CHANNEL_PREFIX + job_id)
        except redis.RedisError as error:
            log.warning("change feed unavailable, polling instead: %s", error)
            pubsub = None
        try:
            yield pubsub
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except redis.RedisError:
                    pass
