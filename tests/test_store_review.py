"""Findings of the outside review of the job store, each pinned by a test.

Races are made deterministic by holding one side at a chosen statement
(SQLAlchemy engine events on a store of its own) while the other side runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, insert, select, update

from api import create_app
from core.config import Settings, database_backend
from storage import JobNotFound, JobStore, LeaseState, Status, StorageError, utcnow
from storage.db import create_db_engine, normalize_url
from storage.jobs import CREATE_TRIES
from storage.leases import KeptLease, LeaseLost, LeaseManager
from storage.models import (
    deliveries_table,
    events_table,
    files_table,
    jobs_table,
    leases_table,
)
from tests.conftest import NO_LIMITS, small_deck
from workers.sweeper import Sweeper

# -- keys on every database that is not SQLite ----------------------------------

SERVER_SPELLINGS = [
    "postgres://u@db.example:5432/slidefarm",
    "postgresql://u@db.example/slidefarm",
    "postgresql+psycopg2://u@db.example/slidefarm",
    "postgresql+psycopg://u@db.example/slidefarm",
    "POSTGRES://u@db.example/slidefarm",
    "PostgreSQL+Psycopg2://u@db.example/slidefarm",
    "mysql+pymysql://u@db.example/slidefarm",
    "not a url at all",
]


@pytest.mark.parametrize("url", SERVER_SPELLINGS)
def test_keys_are_required_on_every_database_but_sqlite(url: str) -> None:
    assert Settings(DATABASE_URL=url).auth_required
    assert Settings(DATABASE_URL=url, SLIDEFARM_AUTH="off").auth_required is False


@pytest.mark.parametrize("url", ["sqlite:///slidefarm.db", "SQLite:///x.db", "sqlite://"])
def test_the_embedded_sqlite_file_runs_open(url: str) -> None:
    assert not Settings(DATABASE_URL=url).auth_required
    assert database_backend(url) == "sqlite"


@pytest.mark.parametrize("url", SERVER_SPELLINGS[:6])
def test_engine_and_access_mode_agree_on_the_backend(url: str) -> None:
    assert database_backend(url) == "postgresql"
    scheme = normalize_url(url).split("://")[0]
    assert scheme in ("postgresql+psycopg2", "postgresql+psycopg")


@pytest.mark.parametrize("scheme", ["postgres", "POSTGRESQL", "Postgres+Psycopg2"])
def test_an_api_on_a_postgres_alias_url_requires_keys(pg_url: str, tmp_path: Any,
                                                      scheme: str) -> None:
    url = scheme + "://" + pg_url.split("://", 1)[1]
    settings = Settings(DATABASE_URL=url, CELERY_BROKER_URL="filesystem://",
                        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
                        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"), **NO_LIMITS)
    client = create_app({"TESTING": True, "SETTINGS": settings}).test_client()
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/workers"),
                         ("GET", "/metrics")):
        answer = client.open(path, method=method, json=small_deck())
        assert answer.status_code == 401, (method, path, answer.get_data(as_text=True))
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # The same URL reaches the real server (the engine reads it the same way).
    JobStore.from_url(url).ping()


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
        event.listen(store.engine, "before_cursor_execute",
                     lambda _c, _cur, statement, *_: self.sql.append(statement))

    def reset(self) -> None:
        self.redis.clear()
        self.sql.clear()


BAD_IDS = ["not-a-job", "..%2F..%2Fetc%2Fpasswd", "x" * 300, "*", "slidefarm:status:*",
           "0F8FAD5B-D9CB-469F-A165-70867728950E", "0f8fad5bd9cb469fa16570867728950e",
           "0f8fad5b-d9cb-469f-a165-70867728950e%0A"]


def test_a_status_read_of_a_malformed_id_touches_neither_redis_nor_the_database(
        settings: Settings, redis_url: str) -> None:
    settings = settings.model_copy(update={"redis_url": redis_url, "key_cache_ttl": 600.0})
    from tests.conftest import admin_client

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


# -- a cancel is never lost to a racing write ------------------------------------


class Hold:
    """Stops the thread that runs a matching statement on ``engine``, right
    after that statement, until :meth:`release` (once)."""

    def __init__(self, engine: Engine, matches: Callable[[str], bool],
                 when: str = "after_cursor_execute") -> None:
        self.reached = threading.Event()
        self._go = threading.Event()
        self._done = False
        self.engine, self.when = engine, when

        def hook(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if not self._done and matches(statement):
                self._done = True
                self.reached.set()
                assert self._go.wait(30), "never released"

        self._hook = hook
        event.listen(engine, when, hook)

    def release(self) -> None:
        self._go.set()

    def remove(self) -> None:
        self._go.set()
        event.remove(self.engine, self.when, self._hook)


class in_thread:  # noqa: N801 (used like a function)
    """Run ``fn`` in a thread now; calling the result joins it and gives
    ``fn``'s result (or raises its error)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: dict[str, Any] = {}

        def run() -> None:
            try:
                self._result["value"] = fn()
            except BaseException as error:  # re-raised in the caller
                self._result["error"] = error

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def __call__(self) -> Any:
        self._thread.join(60)
        assert not self._thread.is_alive(), "the other side never finished"
        if "error" in self._result:
            raise self._result["error"]
        return self._result.get("value")


@pytest.fixture
def second_store(db_url: str) -> Iterator[JobStore]:
    """Another process's view of the same database: an engine of its own."""
    other = JobStore(create_db_engine(db_url))
    yield other
    other.engine.dispose()


def _is_stale_select(statement: str) -> bool:
    return statement.lstrip().upper().startswith("SELECT") and "last_heartbeat <" in statement


@pytest.mark.parametrize("attempts", [3, 1], ids=["requeue", "fail"])
def test_a_cancel_between_the_sweepers_select_and_its_write_wins(
        store: JobStore, second_store: JobStore, attempts: int) -> None:
    job, _ = store.create(small_deck(), title="deck", attempt_limit=attempts)
    assert store.claim(job.id, "a@host1") is not None
    hold = Hold(second_store.engine, _is_stale_select)
    try:
        later = utcnow() + timedelta(minutes=5)  # the heartbeat is stale by then
        sweep = in_thread(lambda: second_store.recover_stale(30, now=later))
        assert hold.reached.wait(30)
        assert store.request_cancel(job.id).cancel_requested  # the API answers 202
        hold.release()
        recoveries = sweep()
    finally:
        hold.remove()
    assert [(r.job_id, r.action) for r in recoveries] == [(job.id, Status.CANCELLED)]
    ended = store.get(job.id)
    assert ended.status is Status.CANCELLED and not ended.cancel_requested
    assert store.claim(job.id, "b@host2") is None  # the redelivered task renders nothing
    assert store.get(job.id).status is Status.CANCELLED
    assert [e.to_status for e in store.history(job.id)][-1] is Status.CANCELLED


def test_a_claim_of_a_job_whose_cancel_was_asked_for_ends_it_cancelled(
        store: JobStore) -> None:
    job, _ = store.create(small_deck(), title="deck")
    # Queued with the flag set: what a requeue that raced a cancel left
    # behind before writes were conditional on the flag.
    with store.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.id == job.id)
                     .values(cancel_requested=True))
    assert store.claim(job.id, "a@host1") is None
    ended = store.get(job.id)
    assert ended.status is Status.CANCELLED and ended.attempts == 0
    assert not ended.cancel_requested and ended.completed_at is not None
    assert [(e.from_status, e.to_status) for e in store.history(job.id)][-1] == (
        Status.QUEUED, Status.CANCELLED)


def test_a_completion_after_a_cancel_ends_the_job_cancelled(store: JobStore) -> None:
    job, _ = store.create(small_deck(), title="deck")
    assert store.claim(job.id, "a@host1") is not None
    assert store.request_cancel(job.id).cancel_requested
    state = store.complete(job.id, 1, video_url="/v", thumbnail_url="/t",
                           slide_image_path="slides")
    assert state is LeaseState.CANCEL_REQUESTED
    assert store.get(job.id).status is Status.PROCESSING  # the worker ends it
    assert store.finish_cancelled(job.id, 1)
    assert store.get(job.id).status is Status.CANCELLED
    assert not store.complete(job.id, 1, video_url="/v", thumbnail_url="/t",
                              slide_image_path="slides")


# -- retention never half-deletes a job retried at that moment -------------------


def _failed_job(store: JobStore) -> str:
    job, _ = store.create(small_deck(), title="deck")
    assert store.claim(job.id, "a@host1") is not None
    assert store.add_files(job.id, 1, [("slides/001.png", 10)])
    assert store.fail(job.id, 1, "the deck cannot be rendered")
    return job.id


def test_a_retry_racing_retention_keeps_its_whole_job(store: JobStore,
                                                      second_store: JobStore) -> None:
    old = _failed_job(store)
    raced = _failed_job(store)
    history = [(e.from_status, e.to_status) for e in store.history(raced)]
    # The retry is held inside its transaction, its write made but not
    # committed, while retention runs; then it commits.
    hold = Hold(store.engine, lambda sql: sql.lstrip().upper().startswith("UPDATE JOBS")
                and "attempt_limit" in sql)
    started = threading.Event()

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        started.set()

    try:
        retried = in_thread(lambda: store.retry(raced))
        assert hold.reached.wait(30)
        event.listen(second_store.engine, "before_cursor_execute", note)
        far = utcnow() + timedelta(days=30)
        retention = in_thread(lambda: second_store.delete_older_than(7, now=far))
        assert started.wait(30)
        time.sleep(0.5)  # retention is now waiting on the retry (or past its reads)
        hold.release()
        assert retried().status is Status.QUEUED
        deleted = retention()
    finally:
        hold.remove()
    assert deleted == [old]  # only what was really deleted: its folder alone goes
    kept = store.get(raced)
    assert kept.status is Status.QUEUED
    assert [(e.from_status, e.to_status) for e in store.history(raced)] == [
        *history, (Status.FAILED, Status.QUEUED)]
    with pytest.raises(JobNotFound):
        store.get(old)
    assert store.history(old) == []


def test_deleting_a_job_removes_every_row_of_it(store: JobStore) -> None:
    job_id = _failed_job(store)
    with store.engine.begin() as conn:
        conn.execute(insert(deliveries_table).values(job_id=job_id, attempt=1, at=utcnow(),
                                                     status_code=500, duration_ms=1.0))
    assert store.delete(job_id)
    with store.engine.connect() as conn:
        for table in (files_table, events_table, deliveries_table, jobs_table):
            column = table.c.id if table is jobs_table else table.c.job_id
            assert conn.execute(select(column).where(column == job_id)).first() is None, table


# -- metrics never go down --------------------------------------------------------


def _monotonic_samples(text_body: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text_body):
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count", "_sum", "_bucket")):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _completed_job(store: JobStore, render: float, encode: float) -> str:
    job, _ = store.create(small_deck(), title="deck")
    assert store.claim(job.id, "a@host1") is not None
    assert store.complete(job.id, 1, video_url="/v", thumbnail_url="/t",
                          slide_image_path="slides", render_seconds=render,
                          encode_seconds=encode)
    return job.id


def test_metrics_never_decrease_when_jobs_are_deleted(settings: Settings,
                                                      store: JobStore) -> None:
    from tests.conftest import admin_client

    client = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
    done = [_completed_job(store, 0.3 * n, 1.5 * n) for n in range(1, 5)]
    failed = _failed_job(store)
    lost, _ = store.create(small_deck(), title="deck")
    assert store.claim(lost.id, "a@host1") is not None
    assert store.recover_stale(1, now=utcnow() + timedelta(minutes=1))  # recovered
    store.create(small_deck(), title="still queued")

    def scrape() -> dict[tuple[str, tuple[Any, ...]], float]:
        answer = client.get("/metrics")
        assert answer.status_code == 200
        return _monotonic_samples(answer.get_data(as_text=True))

    first = scrape()
    assert first[("slidefarm_jobs_submitted_total", ())] == 7
    assert first[("slidefarm_jobs_completed_total", ())] == 4
    assert first[("slidefarm_encode_seconds_count", ())] == 4
    assert first[("slidefarm_jobs_recovered_total", ())] == 1
    steps = [lambda: client.delete(f"/v1/jobs/{done[0]}").status_code == 204,
             lambda: client.delete(f"/v1/jobs/{lost.id}").status_code == 204,
             lambda: len(store.delete_older_than(7, now=utcnow() + timedelta(days=30))) == 4]
    before = first
    for step in steps:
        assert step()
        after = scrape()
        fell = {k: (v, after.get(k)) for k, v in before.items() if after.get(k, -1) < v}
        assert not fell, fell
        before = after
    assert before == first  # nothing new happened: every figure is as it was
    assert failed not in [j.id for j in store.list_jobs().jobs]


def test_metrics_content_type_names_its_charset_once(client: Any) -> None:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"


# -- a submission retries a bounded number of times --------------------------------


def test_a_key_taken_and_freed_forever_ends_in_a_clear_error(store: JobStore,
                                                             second_store: JobStore) -> None:
    """Another client holds the key at each insert and deletes its job before
    each lookup: the submission gives up after a few tries, with a message."""
    holders: list[str] = []
    inserts: list[str] = []

    def interfere(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sql = statement.upper()
        if "INSERT INTO JOBS" in sql and len(inserts) < 50:
            inserts.append(statement)
            job, _ = second_store.create(small_deck(), title="other", idempotency_key="k",
                                         request_hash="h")
            holders.append(job.id)
        elif sql.lstrip().startswith("SELECT JOBS.ID") and "IDEMPOTENCY_KEY =" in sql \
                and holders:
            assert second_store.delete(holders.pop())

    event.listen(store.engine, "before_cursor_execute", interfere)
    try:
        with pytest.raises(StorageError, match="Idempotency-Key was taken and freed"):
            store.create(small_deck(), title="deck", idempotency_key="k", request_hash="h")
    finally:
        event.remove(store.engine, "before_cursor_execute", interfere)
    assert len(inserts) == CREATE_TRIES


# -- one sweep at a time, however long a sweep takes -------------------------------


def test_a_sweep_slower_than_its_lease_never_runs_beside_another(
        db_url: str, tmp_path: Any, store: JobStore, second_store: JobStore) -> None:
    settings = Settings(DATABASE_URL=db_url, SLIDEFARM_OUTPUT_DIR=str(tmp_path / "out"),
                        SLIDEFARM_SWEEP_INTERVAL="0.1")  # a lease of 1 s
    job, _ = store.create(small_deck(), title="deck")
    assert store.claim(job.id, "gone@host9") is not None
    with store.engine.begin() as conn:  # its worker stopped heartbeating long ago
        conn.execute(update(jobs_table).where(jobs_table.c.id == job.id)
                     .values(last_heartbeat=utcnow() - timedelta(hours=1)))
    sweeping = threading.Event()

    def slow_dispatch(_job_id: str, _countdown: float) -> None:
        sweeping.set()
        time.sleep(3.0)  # three times the lease

    first = Sweeper(store, settings, "a@host1", slow_dispatch)
    second = Sweeper(second_store, settings, "b@host2", lambda _j, _c: None)
    swept = in_thread(lambda: first.sweep_once())
    assert sweeping.wait(30)
    overlaps = []
    while swept.alive():  # until the first sweep ends
        if second.sweep_once():
            overlaps.append(time.monotonic())
        time.sleep(0.1)
    assert swept() is True
    assert overlaps == [], "the second sweeper ran while the first was still sweeping"
    # Once the first is done its lease lapses, and the second takes over.
    deadline = time.monotonic() + 5
    while not second.sweep_once():
        assert time.monotonic() < deadline, "the lease was never given up"
        time.sleep(0.1)


def test_a_kept_lease_taken_by_another_stops_its_holder(store: JobStore) -> None:
    manager = LeaseManager(store)
    assert manager.acquire("sweeper", "a@host1", 0.6)
    with KeptLease(manager, "sweeper", "a@host1", 0.6) as lease:
        time.sleep(0.5)  # renewed meanwhile, past its first ttl/3
        assert lease.held
        with store.engine.begin() as conn:  # as if it had lapsed and b took it
            conn.execute(update(leases_table).values(holder="b@host2"))
        time.sleep(0.5)
        assert not lease.held
        with pytest.raises(LeaseLost):
            lease.check()
