"""Rate limits shared by every API process: token buckets in Redis when
``REDIS_URL`` is set (one Lua call, Redis's clock), in the database otherwise
(one row locked per take). Redis failing falls back to the database, so a
limit never turns into an outage or into no limit at all.

A bucket whose rate is high takes its tokens from Redis in leases: one Lua
call takes up to :data:`LEASE_SECONDS` of the rate at once (at most
:data:`MAX_LEASE` tokens, at most an eighth of the burst), and the process
hands them out one per take from memory. A leased token is gone from the
bucket, is handed out once, and is dropped unused after
:data:`LEASE_SECONDS`: the limit is never exceeded, and a client at its
limit may only be refused a little early while another process holds
leftovers. At the rates where a lease would be one token (5 per second, the
default) every take is its own Lua call, as before."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import exc, insert, select, update

from storage.db import Database, HasDatabase, database_of
from storage.jobs.values import utcnow
from storage.models import buckets_table

log = logging.getLogger(__name__)

BUCKET_PREFIX = "slidefarm:bucket:"

#: Seconds of a bucket's rate that one lease takes, and that a leased token
#: lives in memory unused before it is dropped.
LEASE_SECONDS = 0.05
#: Most tokens one lease takes.
MAX_LEASE = 64
#: Most buckets with a lease held in one process (all dropped past it).
MAX_LEASES = 4096

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst, most tokens to take.
# Returns, as a string, the tokens taken ("2": two) or, when not even one is
# there, the seconds to wait, negated ("-0.2": none, one in 0.2 s).
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
local want = tonumber(ARGV[3])
local answer
if tokens >= 1 then
  local taken = math.min(want, math.floor(tokens))
  tokens = tokens - taken
  answer = tostring(taken)
else
  answer = tostring(-(1 - tokens) / rate)
end
-- tostring keeps 14 digits: the time to 0.1 ms, which at a high rate and
-- many calls would round tokens into the bucket; %.6f keeps it to the us.
redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens),
  'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return answer
"""


def lease_size(rate: float, burst: int) -> int:
    """Tokens one lease takes at ``rate`` with ``burst``: :data:`LEASE_SECONDS`
    of the rate, at most :data:`MAX_LEASE` and an eighth of the burst, at
    least one."""
    return max(1, min(MAX_LEASE, int(rate * LEASE_SECONDS), burst // 8))


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
        # bucket -> [tokens left, monotonic time they are dropped]
        self._leases: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        #: Lua calls made (leases and single takes), for tests and benchmarks.
        self.calls = 0

    def take(self, name: str, *, rate: float, burst: int) -> float:
        """0.0 if a token was taken; else the seconds until one will be there."""
        if self._script is None:
            return self._take_in_database(name, rate, burst)
        size = lease_size(rate, burst)
        if size > 1:
            with self._lock:
                lease = self._leases.get(name)
                if lease is not None and lease[0] >= 1 and lease[1] > time.monotonic():
                    lease[0] -= 1
                    return 0.0
        try:
            self.calls += 1
            answer = float(self._script(keys=[BUCKET_PREFIX + name], args=[rate, burst, size]))
        except redis.RedisError as error:
            log.warning("rate limit: Redis failed (%s); using the database", error)
            return self._take_in_database(name, rate, burst)
        if answer < 0:
            return -answer
        if answer > 1:
            with self._lock:
                if len(self._leases) >= MAX_LEASES:
                    self._leases.clear()
                self._leases[name] = [answer - 1, time.monotonic() + LEASE_SECONDS]
        return 0.0

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
