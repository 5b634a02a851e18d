"""Two API processes (gunicorn, two workers each) on one PostgreSQL and one
Redis, each keeping the statuses it read in memory: a change made through
one is read through the other within SLIDEFARM_LOCAL_CACHE_STALENESS, also
when Redis goes away (nothing is then served from memory)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.decks import small_deck
from tests.support.services import flush_run_index, truncate_tables
from tests.support.stack import RedisServer, Stack, stack_env

BOUND = 0.5


def _two_apis(pg_url: str, redis_url: str, tmp_path: Path) -> tuple[Stack, Stack]:
    truncate_tables(pg_url)
    env = stack_env(
        DATABASE_URL=pg_url,
        CELERY_BROKER_URL=redis_url,
        REDIS_URL=redis_url,
        SLIDEFARM_CACHE_TTL="30",
        SLIDEFARM_LOCAL_CACHE_STALENESS=str(BOUND),
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
    )
    stacks = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        stacks.append(Stack(env, tmp_path / name))
    return stacks[0], stacks[1]


@pytest.fixture
def apis(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    flush_run_index(redis_url)
    a, b = _two_apis(pg_url, redis_url, tmp_path)
    try:
        a.start_api()
        b.start_api()
        yield a, b
    finally:
        a.stop_all()
        b.stop_all()


def _status(stack: Stack, job_id: str) -> str:
    code, body = stack.request("GET", f"/v1/jobs/{job_id}")
    assert code == 200, body
    status: str = body["status"]
    return status


def _seen_within_the_bound(reader: Stack, job_id: str, expected: str, changed_at: float) -> None:
    """Reads through ``reader`` until ``expected``: none that began more than
    the bound after the change may show anything else."""
    while True:
        asked_at = time.monotonic()
        status = _status(reader, job_id)
        if status == expected:
            return
        assert asked_at - changed_at < BOUND, f"{status} read {asked_at - changed_at:.3f} s late"
        time.sleep(0.005)


def test_a_change_through_one_api_is_read_through_the_other_within_the_bound(
    apis: tuple[Stack, Stack],
) -> None:
    a, b = apis
    for _ in range(3):
        code, job = a.request("POST", "/v1/jobs", small_deck())
        assert code == 202, job
        job_id = job["job_id"]
        for _ in range(20):  # every worker of B holds it now
            assert _status(b, job_id) == "queued"
        code, _ = a.request("POST", f"/v1/jobs/{job_id}/cancel")
        assert code == 202
        _seen_within_the_bound(b, job_id, "cancelled", time.monotonic())
        for _ in range(10):
            assert _status(b, job_id) == "cancelled"


def test_with_redis_gone_nothing_stale_is_served_from_memory(
    pg_url: str, private_redis: RedisServer, tmp_path: Path
) -> None:
    a, b = _two_apis(pg_url, private_redis.url, tmp_path)
    try:
        a.start_api()
        b.start_api()
        code, job = a.request("POST", "/v1/jobs", small_deck())
        assert code == 202, job
        job_id = job["job_id"]
        for _ in range(20):
            assert _status(b, job_id) == "queued"
        # Redis goes away: A's cancel cannot invalidate nor publish, and B's
        # subscription is lost; B must stop serving its copies.
        private_redis.stop()
        code, _ = a.request("POST", f"/v1/jobs/{job_id}/cancel")
        assert code == 202
        _seen_within_the_bound(b, job_id, "cancelled", time.monotonic())
        # Back, empty: the cache fills again and stays right.
        private_redis.start()
        for _ in range(20):
            assert _status(b, job_id) == "cancelled"
    finally:
        a.stop_all()
        b.stop_all()
