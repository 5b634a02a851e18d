"""The Redis side of the job store (when ``REDIS_URL`` is set): change
notifications over pub/sub, and the status cache.

After every committed change the store calls :meth:`ChangeFeed.changed`,
which, in one round trip, invalidates the job's cached status and publishes
its id. The store stays the truth: a lost notification only delays an event
stream until its next poll, and the cache can never be refilled with a
status older than the last invalidation:

- an entry is either a cached body (``=``, the job's owner, a newline and
  the JSON, so a reader checks ownership without a database read) or an
  invalidation marker (``!`` and a nonce) that expires after the TTL;
- a reader that misses remembers the value it saw (marker or nothing), reads
  the database, and fills the cache only if that value is still there
  (compare-and-set in Lua), so a fill that raced a newer change is refused.

Staleness bound: a read can return a status older than the last committed
change only between that change's commit and its invalidation (the same
code path, right after the commit), or, if Redis could not be reached by the
writer at that moment, for at most ``SLIDEFARM_CACHE_TTL`` seconds.

Each reading process also keeps the entries it read in memory
(storage/status_cache.py), dropped when the change's publication reaches it,
and served only while its subscription is proved live: that adds at most
``SLIDEFARM_LOCAL_CACHE_STALENESS`` seconds to the bound above. A change
made through this process's own feed drops its copy at once, before and
after the invalidation, so a process reads its own writes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from storage.status_cache import LocalStatusCache, Ticket

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "slidefarm:job:"
CACHE_PREFIX = "slidefarm:status:"
BACKOFF = 2.0  # seconds Redis is left alone after it failed

# KEYS[1]: the entry; ARGV: marker, ttl (ms), channel. One round trip, and no
# pipeline object (building one costs more than the round trip it saves).
_CHANGED = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], '1')
return 1
"""

# KEYS[1]: the entry. Its value and the milliseconds it has left, for a copy
# in memory that must not outlive it.
_LOOKUP = """
return {redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}
"""

# KEYS[1]: the entry; ARGV: expected value ("" = absent), new body, ttl (ms).
_FILL = """
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class Seen:
    """What a status read's miss saw, for :meth:`ChangeFeed.fill`: the Redis
    entry (``b""``: none) and the ticket to fill the copy in memory."""

    __slots__ = ("ticket", "value")

    def __init__(self, value: bytes, ticket: Ticket | None) -> None:
        self.value = value
        self.ticket = ticket


class ChangeFeed:
    """Invalidate, publish, look up and fill; Redis failures never break a
    write or a read (the database answers instead)."""

    def __init__(self, url: str, ttl: float = 5.0, local_staleness: float = 0.0) -> None:
        """On Redis at ``url``; entries live ``ttl`` seconds; with
        ``local_staleness`` above 0, read entries are also kept in this
        process's memory under that staleness bound."""
        self.url = url
        self.ttl = ttl
        self.ttl_ms = max(int(ttl * 1000), 1)
        self._client: redis.Redis | None = None
        self._fill: Any = None
        self._changed: Any = None
        self._lookup: Any = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self.local = (
            LocalStatusCache(url, CHANNEL_PREFIX, local_staleness) if local_staleness > 0 else None
        )

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.url,
                    socket_timeout=0.5,
                    socket_connect_timeout=0.5,
                    health_check_interval=30,
                )
                self._fill = self._client.register_script(_FILL)
                self._changed = self._client.register_script(_CHANGED)
                self._lookup = self._client.register_script(_LOOKUP)
            return self._client

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, error: Exception) -> None:
        self._down_until = time.monotonic() + BACKOFF
        log.warning("redis unavailable for %s (%s); using the database", what, error)

    # -- writers -------------------------------------------------------------

    def changed(self, job_id: str) -> None:
        """``job_id`` changed (committed): invalidate its cached status and
        tell subscribers, in one round trip. While Redis is marked down this
        is skipped (writes must not wait on it); entries then expire within
        the TTL, which is the declared staleness bound.

        This process's copy in memory is dropped before and after (a reader
        here that took its ticket in between loses it), so a read made here
        after this returns sees the change."""
        local = self.local
        if local is not None:
            local.drop(job_id)
        if self._available():
            try:
                self._redis()
                self._changed(
                    keys=[CACHE_PREFIX + job_id],
                    args=[b"!" + uuid.uuid4().hex.encode(), self.ttl_ms, CHANNEL_PREFIX + job_id],
                )
            except redis.RedisError as error:
                self._failed("an invalidation", error)
        if local is not None:
            local.drop(job_id)

    # -- the status cache ----------------------------------------------------

    def lookup(self, job_id: str) -> tuple[tuple[str, bytes] | None, Seen | None]:
        """``((owner, body), None)`` on a hit (from memory when this process
        holds the job, else from Redis); ``(None, seen)`` on a miss, where
        ``seen`` is what to pass to :meth:`fill`; ``(None, None)`` if Redis is
        down (then do not fill)."""
        local = self.local
        ticket = None
        if local is not None:
            held = local.get(job_id)
            if held is not None:
                return held, None
            ticket = local.begin(job_id)  # before the read: a change after it wins
        if not self._available():
            return None, None
        try:
            if ticket is None:
                value = self._redis().get(CACHE_PREFIX + job_id)
                left_ms = 0
            else:
                self._redis()
                left_ms, value = self._lookup(keys=[CACHE_PREFIX + job_id])
        except redis.RedisError as error:
            self._failed("a status read", error)
            return None, None
        raw = value.encode() if isinstance(value, str) else value
        if raw is not None and raw[:1] == b"=":
            owner_raw, _, body = raw[1:].partition(b"\n")
            owner = owner_raw.decode()
            if local is not None and left_ms > 0:
                local.put(job_id, ticket, owner, body, left_ms / 1000)
            return (owner, body), None
        return None, Seen(raw if raw is not None else b"", ticket)

    def fill(self, job_id: str, seen: Seen | None, body: bytes, owner: str) -> bool:
        """Cache ``owner``'s job ``body`` unless the entry changed since
        :meth:`lookup` saw ``seen`` (and then in this process's memory too,
        unless the job changed meanwhile)."""
        if seen is None or not self._available():
            return False
        try:
            self._redis()
            filled = bool(
                self._fill(
                    keys=[CACHE_PREFIX + job_id],
                    args=[seen.value, b"=" + owner.encode() + b"\n" + body, self.ttl_ms],
                )
            )
        except redis.RedisError as error:
            self._failed("a cache fill", error)
            return False
        if filled and self.local is not None:
            self.local.put(job_id, seen.ticket, owner, body, self.ttl)
        return filled

    # -- subscribers ---------------------------------------------------------

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
