"""Rate limits shared by every API process: token buckets in Redis when
``REDIS_URL`` is set (one Lua call, Redis's clock), in the database otherwise
(one row locked per take). Redis failing falls back to the database, so a
limit never turns into an outage or into no limit at all."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import exc, insert, select, update

from storage.db import Database, HasDatabase, database_of
from storage.jobs.values import utcnow
from storage.models import buckets_table

log = logging.getLogger(__name__)

BUCKET_PREFIX = "slidefarm:bucket:"

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst. Returns the seconds to
# wait as a string ("0": a token was taken).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


def _refill(tokens: float, since: datetime, now: datetime, rate: float, burst: int) -> float:
    return min(float(burst), tokens + max((now - since).total_seconds(), 0.0) * rate)


class RateLimiter:
    """``take(name)`` one token from bucket ``name``, or learn how long to wait."""

    def __init__(self, db: Database | HasDatabase, redis_url: str | None) -> None:
        """Buckets in Redis at ``redis_url`` if given, else (and whenever Redis
        fails) in ``db`` (or the database of a store such as the job store)."""
        self.db = database_of(db)
        self._redis = (
            redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            if redis_url
            else None
        )
        self._script: Any = self._redis.register_script(_TAKE) if self._redis else None

    def take(self, name: str, *, rate: float, burst: int) -> float:
        """0.0 if a token was taken; else the seconds until one will be there."""
        if self._script is not None:
            try:
                answer = self._script(keys=[BUCKET_PREFIX + name], args=[rate, burst])
                return float(answer)
            except redis.RedisError as error:
                log.warning("rate limit: Redis failed (%s); using the database", error)
        return self._take_in_database(name, rate, burst)

    def _take_in_database(self, name: str, rate: float, burst: int) -> float:
        now = utcnow()
        with self.db.transaction() as conn:
            row = conn.execute(
                select(buckets_table).where(buckets_table.c.name == name).with_for_update()
            ).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(buckets_table).values(
                                name=name, tokens=float(burst - 1), updated_at=now
                            )
                        )
                    return 0.0
                except exc.IntegrityError:  # created in between: take from it
                    row = conn.execute(
                        select(buckets_table).where(buckets_table.c.name == name).with_for_update()
                    ).one()
            tokens = _refill(row.tokens, row.updated_at, now, rate, burst)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / rate
            conn.execute(
                update(buckets_table)
                .where(buckets_table.c.name == name)
                .values(tokens=tokens, updated_at=now)
            )
        return wait
