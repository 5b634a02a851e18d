"""Rate-limit buckets (storage/limits.py) in real Redis: exact one token at a
time at low rates, leased at high rates without ever handing out more than
the bucket allows, and the database when Redis fails."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from storage import JobStore
from storage.limits import BUCKET_PREFIX, LEASE_SECONDS, RateLimiter, lease_size


@pytest.fixture
def bucket(redis_url: str) -> str:
    name = f"test-{time.monotonic_ns()}"
    yield name
    redis.Redis.from_url(redis_url).delete(BUCKET_PREFIX + name)


def test_lease_sizes() -> None:
    assert lease_size(5, 30) == 1  # the defaults: every take is its own call
    assert lease_size(100, 30) == 3  # an eighth of the burst at most
    assert lease_size(100, 1000) == 5  # 50 ms of the rate
    assert lease_size(1_000_000, 1_000_000) == 64  # at most 64


def test_a_low_rate_takes_one_token_per_call(store: JobStore, redis_url: str, bucket: str) -> None:
    limiter = RateLimiter(store, redis_url)
    assert [limiter.take(bucket, rate=5, burst=3) for _ in range(3)] == [0.0] * 3
    wait = limiter.take(bucket, rate=5, burst=3)
    assert 0.1 < wait <= 0.2  # a fifth of a second for the next token, less what refilled
    assert limiter.calls == 4


def test_leases_never_hand_out_more_than_the_bucket_allows(
    store: JobStore, redis_url: str, bucket: str
) -> None:
    """Two processes' limiters (two instances) and four threads each take
    from one bucket as fast as they can: what they are given, all told, is
    at most the burst plus what the rate refilled meanwhile."""
    rate, burst = 2000.0, 400  # leases of 50
    limiters = [RateLimiter(store, redis_url) for _ in range(2)]
    granted = [0] * 8
    started = time.monotonic()

    def taker(n: int) -> None:
        limiter = limiters[n % 2]
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            if limiter.take(bucket, rate=rate, burst=burst) == 0.0:
                granted[n] += 1

    threads = [threading.Thread(target=taker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(granted)
    assert burst <= total <= burst + rate * (time.monotonic() - started) + 1


def test_a_lease_serves_many_takes_from_memory(
    store: JobStore, redis_url: str, bucket: str
) -> None:
    limiter = RateLimiter(store, redis_url)
    for _ in range(640):
        assert limiter.take(bucket, rate=1_000_000, burst=1_000_000) == 0.0
    assert limiter.calls <= 12  # leases of 64 (a few more if one outlived its 50 ms)


def test_leftover_leased_tokens_are_dropped_after_the_lease(
    store: JobStore, redis_url: str, bucket: str
) -> None:
    rate, burst = 1000.0, 1000  # leases of 50
    limiter = RateLimiter(store, redis_url)
    assert limiter.take(bucket, rate=rate, burst=burst) == 0.0
    assert limiter.take(bucket, rate=rate, burst=burst) == 0.0
    assert limiter.calls == 1  # the second came from the lease
    tokens = float(redis.Redis.from_url(redis_url).hget(BUCKET_PREFIX + bucket, "tokens") or 0)
    assert tokens <= burst - 50  # the lease left the bucket at once
    time.sleep(LEASE_SECONDS * 1.5)
    assert limiter.take(bucket, rate=rate, burst=burst) == 0.0
    assert limiter.calls == 2  # the leftovers expired: a new lease


def test_redis_failing_falls_back_to_the_database(store: JobStore, bucket: str) -> None:
    limiter = RateLimiter(store, "redis://127.0.0.1:1/0")  # nothing listens there
    assert [limiter.take(bucket, rate=0.5, burst=2) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take(bucket, rate=0.5, burst=2) > 1
