"""The Redis status cache: a finished job is never served as processing, a
fill that raced a change is refused, and Redis being down costs nothing but
speed. Real Redis, real databases."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import event

from api import create_app
from core.config import Settings
from storage import JobStore, Stage
from storage.feed import CACHE_PREFIX, ChangeFeed
from tests.support.clients import admin_client
from tests.support.decks import small_deck


@pytest.fixture
def cached(settings: Settings, redis_url: str) -> Settings:
    return settings.model_copy(update={"redis_url": redis_url, "cache_ttl": 30.0})


@pytest.fixture
def client(cached: Settings) -> FlaskClient:
    return admin_client(create_app({"TESTING": True, "SETTINGS": cached}))


@pytest.fixture
def worker_store(cached: Settings) -> JobStore:
    """The store as a worker process builds it (its own feed, same Redis)."""
    return JobStore.from_settings(cached)


def _processing(client: FlaskClient, store: JobStore) -> str:
    job_id: str = client.post("/v1/jobs", json=small_deck()).get_json()["job_id"]
    store.claim(job_id, "w@host")
    store.record_progress(job_id, 1, 0.5, Stage.ENCODING_VIDEO)
    return job_id


def status(client: FlaskClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def test_hits_are_served_from_redis_and_equal_the_database_answer(
    client: FlaskClient, worker_store: JobStore, redis_url: str
) -> None:
    job_id = _processing(client, worker_store)
    first = client.get(f"/v1/jobs/{job_id}").data  # a miss, filled
    cached = redis.Redis.from_url(redis_url).get(CACHE_PREFIX + job_id)
    assert cached == b"=default\n" + first
    assert client.get(f"/v1/jobs/{job_id}").data == first  # a hit
    uncached = client.get(f"/v1/jobs/{job_id}?include=history").get_json()
    uncached.pop("history")
    assert status(client, job_id) == uncached


@pytest.mark.parametrize("ending", ["complete", "fail", "cancel"])
def test_a_finished_job_is_never_served_as_processing(
    client: FlaskClient, worker_store: JobStore, ending: str
) -> None:
    job_id = _processing(client, worker_store)
    assert status(client, job_id)["status"] == "processing"  # now cached
    assert status(client, job_id)["status"] == "processing"
    if ending == "complete":
        worker_store.complete(job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="s")
    elif ending == "fail":
        worker_store.fail(job_id, 1, "boom")
    else:
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        assert status(client, job_id)["cancel_requested"] is True
        worker_store.finish_cancelled(job_id, 1)
    expected = {"complete": "completed", "fail": "failed", "cancel": "cancelled"}[ending]
    for _ in range(3):
        assert status(client, job_id)["status"] == expected


def test_a_fill_that_raced_a_change_is_refused(client: FlaskClient, worker_store: JobStore) -> None:
    job_id = _processing(client, worker_store)
    feed = worker_store.feed
    assert feed is not None
    body, seen = feed.lookup(job_id)
    assert body is None and seen is not None  # a miss: the reader reads the database...
    stale = client.application.json.dumps({"job_id": job_id, "status": "processing"}).encode()
    worker_store.complete(job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="s")
    assert not feed.fill(job_id, seen, stale, "default")  # ...but its fill comes after the change
    assert status(client, job_id)["status"] == "completed"


def test_readers_racing_a_completion_never_go_back(
    client: FlaskClient, worker_store: JobStore
) -> None:
    job_id = _processing(client, worker_store)
    app = client.application
    completed_at: list[float] = []
    regressions: list[str] = []
    stop = threading.Event()

    def read() -> None:
        local = admin_client(app)
        while not stop.is_set():
            seen_at = time.monotonic()
            got = local.get(f"/v1/jobs/{job_id}").get_json()["status"]
            if completed_at and seen_at > completed_at[0] and got != "completed":
                regressions.append(got)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    time.sleep(0.3)
    worker_store.complete(job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="s")
    completed_at.append(time.monotonic())
    time.sleep(0.5)
    stop.set()
    for t in readers:
        t.join()
    assert regressions == []


def test_redis_down_falls_back_to_the_database(settings: Settings, store: JobStore) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    client = admin_client(create_app({"TESTING": True, "SETTINGS": down}))
    started = time.monotonic()
    job_id = client.post("/v1/jobs", json=small_deck()).get_json()["job_id"]
    store.claim(job_id, "w@host")
    for _ in range(20):
        assert status(client, job_id)["status"] == "processing"
    store.complete(job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="s")
    assert status(client, job_id)["status"] == "completed"
    assert time.monotonic() - started < 10  # no per-request connect timeouts


# -- the status cache is asked only about real job ids -------------------------


class Counted:
    """Counts the Redis commands and SQL statements an app sends (wrappers
    around the real client and engine: the calls still go through)."""

    def __init__(self, store: JobStore) -> None:
        assert store.feed is not None
        client = store.feed._redis()
        real = client.execute_command
        self.redis: list[Any] = []
        self.sql: list[str] = []

        def execute_command(*args: Any, **options: Any) -> Any:
            self.redis.append(args[:2])
            return real(*args, **options)

        client.execute_command = execute_command  # type: ignore[method-assign]
        event.listen(
            store.engine,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_: self.sql.append(statement),
        )

    def reset(self) -> None:
        self.redis.clear()
        self.sql.clear()


BAD_IDS = [
    "not-a-job",
    "..%2F..%2Fetc%2Fpasswd",
    "x" * 300,
    "*",
    "slidefarm:status:*",
    "0F8FAD5B-D9CB-469F-A165-70867728950E",
    "0f8fad5bd9cb469fa16570867728950e",
    "0f8fad5b-d9cb-469f-a165-70867728950e%0A",
]


def test_a_status_read_of_a_malformed_id_touches_neither_redis_nor_the_database(
    settings: Settings, redis_url: str
) -> None:
    settings = settings.model_copy(update={"redis_url": redis_url, "key_cache_ttl": 600.0})
    client = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
    store = client.application.extensions["slidefarm"].store
    counted = Counted(store)
    # A well-formed id is looked up in the cache, then the database (this
    # also puts the admin key in the process's cache of checked keys).
    unknown = client.get("/v1/jobs/0f8fad5b-d9cb-469f-a165-70867728950e")
    assert unknown.status_code == 404
    assert counted.redis and counted.sql
    for bad in BAD_IDS:
        counted.reset()
        answer = client.get(f"/v1/jobs/{bad}")
        assert answer.status_code == 404, bad
        # (A path the router does not match is its generic 404.)
        assert answer.get_json()["error"]["code"] in ("job_not_found", "not_found"), bad
        assert counted.redis == [] and counted.sql == [], bad


# -- the copy in each API process's memory ------------------------------------

BOUND = 0.4  # SLIDEFARM_LOCAL_CACHE_STALENESS of the reading side below


def _reader_feed(redis_url: str) -> ChangeFeed:
    """A feed as another API process has it: its own connections, its own
    copy in memory, its own subscription."""
    feed = ChangeFeed(redis_url, ttl=30.0, local_staleness=BOUND)
    local = feed.local
    assert local is not None
    local.serving()  # starts the listener
    deadline = time.monotonic() + 10
    while not local.serving():
        assert time.monotonic() < deadline, "the status cache never subscribed"
        time.sleep(0.01)
    return feed


def _held_in_memory(feed: ChangeFeed, job_id: str, redis_url: str) -> bool:
    """Whether ``feed`` answers ``job_id`` with no entry left in Redis."""
    redis.Redis.from_url(redis_url).delete(CACHE_PREFIX + job_id)
    found, _ = feed.lookup(job_id)
    return found is not None


def _read_through(feed: ChangeFeed, store: JobStore, job_id: str) -> tuple[str, bytes]:
    """A status read as the API makes it: the cache, else the database and a fill."""
    found, seen = feed.lookup(job_id)
    if found is not None:
        return found
    job = store.get(job_id)
    body = json.dumps({"status": job.status.value}).encode()
    feed.fill(job_id, seen, body, job.owner)
    return job.owner, body


def test_a_change_through_one_process_reaches_the_others_memory_within_the_bound(
    store: JobStore, cached: Settings, redis_url: str
) -> None:
    writer = JobStore.from_settings(cached.model_copy(update={"local_cache_staleness": 0.0}))
    reader = _reader_feed(redis_url)
    try:
        job, _ = store.create(small_deck(), title="t")
        writer.claim(job.id, "w@host")
        assert json.loads(_read_through(reader, store, job.id)[1])["status"] == "processing"
        assert json.loads(_read_through(reader, store, job.id)[1])["status"] == "processing"
        # The second read came from memory: with Redis's entry gone, still there.
        assert _held_in_memory(reader, job.id, redis_url)

        writer.complete(job.id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="s")
        changed_at = time.monotonic()
        while True:
            asked_at = time.monotonic()
            status = json.loads(_read_through(reader, store, job.id)[1])["status"]
            if status == "completed":
                break
            # A read that began more than the bound after the change is never stale.
            assert asked_at - changed_at < BOUND, "stale past the bound"
            time.sleep(0.002)
    finally:
        assert reader.local is not None
        reader.local.stop()


def test_a_lost_subscription_stops_serving_from_memory_until_it_is_back(
    store: JobStore, redis_url: str
) -> None:
    reader = _reader_feed(redis_url)
    local = reader.local
    assert local is not None
    try:
        job, _ = store.create(small_deck(), title="t")
        _read_through(reader, store, job.id)
        assert _held_in_memory(reader, job.id, redis_url)
        _read_through(reader, store, job.id)  # in Redis and in memory again
        resets = local.resets
        # The listener's connection is cut (as by a network fault or a Redis
        # restart): whatever was published meanwhile may be lost, so nothing
        # held before is served again, even though Redis still has the job.
        admin = redis.Redis.from_url(redis_url)
        killed = admin.client_kill_filter(  # type: ignore[no-untyped-call]
            _id=next(c["id"] for c in admin.client_list() if c["name"] == local.client_name)
        )
        assert killed == 1
        deadline = time.monotonic() + BOUND
        while local.resets == resets:
            assert time.monotonic() < deadline, "the cut was not noticed within the bound"
            time.sleep(0.002)
        assert _held_in_memory(reader, job.id, redis_url) is False
        # Back: it serves from memory again once subscribed and proved live.
        deadline = time.monotonic() + 10
        while not local.serving():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _read_through(reader, store, job.id)
        _read_through(reader, store, job.id)
        assert _held_in_memory(reader, job.id, redis_url)
        # Stopped (or silent past the bound): nothing from memory at all.
        local.stop()
        assert not local.serving()
        assert _held_in_memory(reader, job.id, redis_url) is False
    finally:
        local.stop()


def test_a_job_in_memory_is_still_only_its_tenants(cached: Settings) -> None:
    from tests.support.clients import Tenant, locked

    app = create_app({"TESTING": True, "SETTINGS": locked(cached, local_cache_staleness=BOUND)})
    alice, bob = Tenant(app, "alice"), Tenant(app, "bob")
    job = alice.submit()["job_id"]
    feed = app.extensions["slidefarm"].store.feed
    deadline = time.monotonic() + 10
    while not feed.local.serving():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(3):
        assert alice.client.get(f"/v1/jobs/{job}").status_code == 200
    assert feed.local.get(job) is not None  # held in memory now
    for _ in range(3):
        answer = bob.client.get(f"/v1/jobs/{job}")
        assert answer.status_code == 404
        assert answer.get_json()["error"]["code"] == "job_not_found"
