"""Reliability of the job store on SQLite and PostgreSQL: the history of
transitions, cancel, retry, delete, recovery of stale jobs, re-dispatch,
delayed retries, expiring idempotency keys, leases and the worker registry.

Time moves through the ``now=`` parameters (or by ageing rows), never by sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select, update

from core.config import Settings
from storage import (
    InvalidTransition,
    JobNotFound,
    JobStore,
    LeaseState,
    Stage,
    Status,
    StorageError,
    utcnow,
)
from storage.db import create_db_engine
from storage.jobs import CREATE_TRIES, IDEMPOTENCY_TTL
from storage.leases import KeptLease, LeaseLost, LeaseManager
from storage.models import (
    deliveries_table,
    events_table,
    files_table,
    jobs_table,
    leases_table,
)
from storage.registry import WorkerRegistry
from tests.support.decks import small_deck
from tests.support.jobs import failed_job
from tests.support.services import create_pg_database, drop_pg_database
from workers.sweeper import Sweeper

MISSING = "00000000-0000-0000-0000-000000000000"


def _new(store: JobStore, **kwargs: Any) -> str:
    job, created = store.create(small_deck(), title="deck", **kwargs)
    assert created
    return job.id


def _processing(store: JobStore, worker: str = "a@host1", **kwargs: Any) -> str:
    job_id = _new(store, **kwargs)
    job = store.claim(job_id, worker)
    assert job is not None and job.status is Status.PROCESSING
    return job_id


def _failed(store: JobStore) -> str:
    job_id = _processing(store)
    assert store.fail(job_id, 1, "the deck cannot be rendered")
    return job_id


def _completed(store: JobStore) -> str:
    job_id = _processing(store)
    assert store.complete(job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="slides")
    return job_id


def _cancelled(store: JobStore) -> str:
    job_id = _new(store)
    assert store.request_cancel(job_id).status is Status.CANCELLED
    return job_id


def _transitions(store: JobStore, job_id: str) -> list[tuple[Any, ...]]:
    return [(e.from_status, e.to_status, e.attempt, e.worker) for e in store.history(job_id)]


# -- history -------------------------------------------------------------------


def test_history_records_every_transition_in_order(store: JobStore) -> None:
    job_id = _processing(store, "a@host1")
    assert store.requeue(job_id, 1, "attempt 1 failed: ffmpeg crashed")
    assert store.claim(job_id, "b@host2") is not None
    assert store.complete(job_id, 2, video_url="/v", thumbnail_url="/t", slide_image_path="slides")
    events = store.history(job_id)
    assert [(e.from_status, e.to_status, e.attempt, e.worker) for e in events] == [
        (None, Status.QUEUED, 0, None),
        (Status.QUEUED, Status.PROCESSING, 1, "a@host1"),
        (Status.PROCESSING, Status.QUEUED, 1, "a@host1"),
        (Status.QUEUED, Status.PROCESSING, 2, "b@host2"),
        (Status.PROCESSING, Status.COMPLETED, 2, "b@host2"),
    ]
    assert [e.reason for e in events] == [
        "submitted",
        "claimed",
        "attempt 1 failed: ffmpeg crashed",
        "claimed",
        "rendered",
    ]
    times = [e.at for e in events]
    assert times == sorted(times)
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times)


def test_history_of_failure_cancel_and_retry(store: JobStore) -> None:
    failed = _failed(store)
    store.retry(failed)
    assert _transitions(store, failed)[-2:] == [
        (Status.PROCESSING, Status.FAILED, 1, "a@host1"),
        (Status.FAILED, Status.QUEUED, 1, None),
    ]
    assert store.history(failed)[-2].reason == "the deck cannot be rendered"
    assert store.history(failed)[-1].reason == "retry requested"

    flagged = _processing(store)
    store.request_cancel(flagged)
    assert store.finish_cancelled(flagged, 1)
    assert _transitions(store, flagged)[-1] == (Status.PROCESSING, Status.CANCELLED, 1, "a@host1")

    queued = _cancelled(store)
    assert _transitions(store, queued) == [
        (None, Status.QUEUED, 0, None),
        (Status.QUEUED, Status.CANCELLED, 0, None),
    ]


def test_history_of_an_unknown_job_is_empty(store: JobStore) -> None:
    assert store.history(MISSING) == []


# -- cancel --------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate(store: JobStore) -> None:
    job_id = _new(store)
    job = store.request_cancel(job_id)
    assert job.status is Status.CANCELLED and job.completed_at is not None
    assert store.get(job_id).status is Status.CANCELLED
    assert store.claim(job_id, "a@host1") is None  # a late delivery does nothing


def test_cancel_of_a_processing_job_flags_it_until_the_worker_stops(store: JobStore) -> None:
    job_id = _processing(store)
    assert store.heartbeat(job_id, 1) is LeaseState.HELD
    job = store.request_cancel(job_id)
    assert job.status is Status.PROCESSING and job.cancel_requested
    assert store.get(job_id).cancel_requested
    assert store.heartbeat(job_id, 1) is LeaseState.CANCEL_REQUESTED
    state = store.record_progress(job_id, 1, 0.5, Stage.RENDERING_SLIDES)
    assert state is LeaseState.CANCEL_REQUESTED and state  # still held: it may clean up
    # Asking again while it stops is harmless.
    assert store.request_cancel(job_id).status is Status.PROCESSING
    assert not store.finish_cancelled(job_id, 2)  # another attempt's word is refused
    assert store.finish_cancelled(job_id, 1)
    job = store.get(job_id)
    assert job.status is Status.CANCELLED and job.completed_at is not None
    assert store.heartbeat(job_id, 1) is LeaseState.LOST


@pytest.mark.parametrize("make", [_completed, _failed, _cancelled])
def test_cancel_of_a_finished_job_is_refused(store: JobStore, make: Any) -> None:
    job_id = make(store)
    before = store.get(job_id)
    with pytest.raises(InvalidTransition):
        store.request_cancel(job_id)
    assert store.get(job_id) == before


def test_cancel_of_an_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.request_cancel(MISSING)


def test_a_cancel_is_not_lost_when_the_worker_requeues(store: JobStore) -> None:
    """A cancel that lands after the worker's last heartbeat, followed by a
    transient error (requeue for an automatic retry), must still end the job
    cancelled: the user was told 202 and ``cancel_requested: true``."""
    job_id = _processing(store)
    assert store.request_cancel(job_id).cancel_requested
    store.requeue(job_id, 1, "attempt 1 failed, retrying in 0.0s: ffmpeg crashed")
    second = store.claim(job_id, "b@host2")
    if second is None:
        assert store.get(job_id).status is Status.CANCELLED
    else:
        assert store.heartbeat(job_id, 2) is LeaseState.CANCEL_REQUESTED, (
            "the cancel request was dropped by requeue + claim; the job will complete"
        )


# -- retry ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [_failed, _cancelled])
def test_retry_queues_a_failed_or_cancelled_job_with_a_fresh_budget(
    store: JobStore, make: Any
) -> None:
    job_id = make(store)
    attempts = store.get(job_id).attempts
    job = store.retry(job_id, max_attempts=4)
    assert job.status is Status.QUEUED and job.stage is Stage.QUEUED
    assert job.attempt_limit == attempts + 4
    assert job.error is None and job.completed_at is None and not job.cancel_requested
    assert job.progress == 0.0 and job.attempts == attempts
    claimed = store.claim(job_id, "b@host2")
    assert claimed is not None and claimed.attempts == attempts + 1


@pytest.mark.parametrize("make", [_new, _processing, _completed])
def test_retry_of_a_job_that_did_not_fail_is_refused(store: JobStore, make: Any) -> None:
    job_id = make(store)
    before = store.get(job_id)
    with pytest.raises(InvalidTransition):
        store.retry(job_id)
    assert store.get(job_id) == before


def test_retry_of_an_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.retry(MISSING)


def test_retry_after_recovery_spent_the_budget(store: JobStore) -> None:
    job_id = _processing(store, attempt_limit=1)
    later = utcnow() + timedelta(seconds=60)
    [recovery] = store.recover_stale(30, now=later)
    assert recovery.action is Status.FAILED
    job = store.retry(job_id, max_attempts=2)
    assert job.attempt_limit == 3 and job.error is None


# -- delete --------------------------------------------------------------------


def test_delete_removes_the_job_and_its_history(store: JobStore) -> None:
    job_id = _completed(store)
    assert store.history(job_id)
    assert store.delete(job_id)
    with pytest.raises(JobNotFound):
        store.get(job_id)
    assert store.history(job_id) == []
    assert not store.delete(job_id)
    assert store.attempt_owners([job_id]) == {}


def test_delete_fences_off_the_worker_still_rendering(store: JobStore) -> None:
    job_id = _processing(store)
    assert store.add_file(job_id, 1, "slides/001.png", 10)
    assert store.delete(job_id)
    assert store.heartbeat(job_id, 1) is LeaseState.LOST
    assert store.record_progress(job_id, 1, 0.9, Stage.ENCODING_VIDEO) is LeaseState.LOST
    assert not store.add_file(job_id, 1, "video.mp4", 99)
    assert not store.complete(
        job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="slides"
    )
    assert not store.fail(job_id, 1, "late")
    assert not store.requeue(job_id, 1, "late")
    assert not store.finish_cancelled(job_id, 1)
    assert store.claim(job_id, "b@host2") is None
    with pytest.raises(JobNotFound):
        store.get(job_id)
    assert store.history(job_id) == []


# -- recovery of stale jobs ------------------------------------------------------


def test_recover_stale_requeues_a_job_with_attempts_left(store: JobStore) -> None:
    job_id = _processing(store, "a@host1")
    later = utcnow() + timedelta(seconds=60)
    recoveries = store.recover_stale(30, now=later)
    assert [(r.job_id, r.action, r.worker) for r in recoveries] == [
        (job_id, Status.QUEUED, "a@host1")
    ]
    job = store.get(job_id)
    lost = "worker lost: a@host1 stopped heartbeating"
    assert job.status is Status.QUEUED and job.stage is Stage.QUEUED and job.attempts == 1
    assert job.error == lost
    event = store.history(job_id)[-1]
    assert (event.from_status, event.to_status, event.attempt, event.worker, event.reason) == (
        Status.PROCESSING,
        Status.QUEUED,
        1,
        "a@host1",
        lost,
    )
    # The presumed-dead worker is fenced off; the next claim is a new attempt.
    assert store.heartbeat(job_id, 1) is LeaseState.LOST
    second = store.claim(job_id, "b@host2")
    assert second is not None and second.attempts == 2
    # The new attempt's heartbeat is fresh: the sweeper leaves it alone.
    assert store.recover_stale(30, now=utcnow() + timedelta(seconds=10)) == []


def test_recover_stale_fails_a_job_whose_attempts_are_spent(store: JobStore) -> None:
    job_id = _processing(store, "a@host1", attempt_limit=2)
    assert store.requeue(job_id, 1, "transient")
    assert store.claim(job_id, "b@host2") is not None
    [recovery] = store.recover_stale(30, now=utcnow() + timedelta(seconds=60))
    assert recovery.action is Status.FAILED and recovery.worker == "b@host2"
    job = store.get(job_id)
    assert job.status is Status.FAILED and job.completed_at is not None
    assert job.error is not None
    assert job.error.startswith("worker lost: b@host2 stopped heartbeating")
    last = store.history(job_id)[-1]
    assert last.to_status is Status.FAILED and last.reason == job.error


def test_recover_stale_cancels_a_job_whose_cancel_was_requested(store: JobStore) -> None:
    job_id = _processing(store, "a@host1")
    store.request_cancel(job_id)
    [recovery] = store.recover_stale(30, now=utcnow() + timedelta(seconds=60))
    assert recovery.action is Status.CANCELLED
    assert store.get(job_id).status is Status.CANCELLED
    last = store.history(job_id)[-1]
    assert last.to_status is Status.CANCELLED
    assert last.reason is not None and "worker lost: a@host1 stopped heartbeating" in last.reason


def test_recover_stale_leaves_a_fresh_heartbeat_alone(store: JobStore) -> None:
    fresh = _processing(store, "a@host1")
    stale = _processing(store, "b@host2")
    queued = _new(store)
    done = _completed(store)
    assert store.heartbeat(fresh, 1)
    # 20 s on, with stale_after 30: nobody is stale yet.
    assert store.recover_stale(30, now=utcnow() + timedelta(seconds=20)) == []
    # Age only one job's heartbeat.
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == stale)
            .values(last_heartbeat=utcnow() - timedelta(seconds=120))
        )
    assert [r.job_id for r in store.recover_stale(30)] == [stale]
    assert store.get(fresh).status is Status.PROCESSING
    assert store.get(queued).status is Status.QUEUED
    assert store.get(done).status is Status.COMPLETED


# -- re-dispatch and delayed retries -----------------------------------------------


def test_due_for_dispatch_returns_forgotten_queued_jobs_once(store: JobStore) -> None:
    forgotten = _new(store)
    _processing(store)
    _completed(store)
    now = utcnow()
    assert store.due_for_dispatch(60, now=now + timedelta(seconds=30)) == []
    later = now + timedelta(seconds=120)
    assert store.due_for_dispatch(60, now=later) == [forgotten]
    assert store.get(forgotten).dispatched_at == later
    assert store.due_for_dispatch(60, now=later) == []
    assert store.due_for_dispatch(60, now=later + timedelta(seconds=1)) == []
    # Forgotten again: sent again.
    again = later + timedelta(seconds=61)
    assert store.due_for_dispatch(60, now=again) == [forgotten]


def test_mark_dispatched_resets_the_clock(store: JobStore) -> None:
    job_id = _new(store)
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job_id)
            .values(dispatched_at=utcnow() - timedelta(seconds=300))
        )
    store.mark_dispatched(job_id)
    assert store.due_for_dispatch(60) == []


def test_due_for_dispatch_skips_a_retry_that_is_not_due(store: JobStore) -> None:
    job_id = _processing(store)
    assert store.requeue(job_id, 1, "transient", delay=3600)
    job = store.get(job_id)
    assert job.status is Status.QUEUED and job.not_before is not None
    assert job.not_before > utcnow() + timedelta(seconds=3500)
    assert store.due_for_dispatch(60, now=utcnow() + timedelta(seconds=600)) == []
    assert store.due_for_dispatch(60, now=utcnow() + timedelta(seconds=3600 + 120)) == [job_id]


def test_claim_refuses_a_retry_that_is_not_due(store: JobStore) -> None:
    job_id = _processing(store)
    assert store.requeue(job_id, 1, "transient", delay=3600)
    assert store.claim(job_id, "b@host2") is None
    assert store.get(job_id).status is Status.QUEUED
    with store.engine.begin() as conn:  # an hour later
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job_id)
            .values(not_before=utcnow() - timedelta(seconds=1))
        )
    second = store.claim(job_id, "b@host2")
    assert second is not None and second.attempts == 2 and second.not_before is None


# -- idempotency keys expire ---------------------------------------------------------


def _age(store: JobStore, job_id: str, age: timedelta) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs_table).where(jobs_table.c.id == job_id).values(created_at=utcnow() - age)
        )


def test_an_idempotency_key_is_kept_for_24_hours(store: JobStore) -> None:
    first = _new(store, idempotency_key="k", request_hash="h")
    _age(store, first, IDEMPOTENCY_TTL - timedelta(hours=1))
    again, created = store.create(small_deck(), title="deck", idempotency_key="k", request_hash="h")
    assert not created and again.id == first


@pytest.mark.parametrize("request_hash", ["h", "another body"])
def test_an_idempotency_key_older_than_24_hours_is_reusable(
    store: JobStore, request_hash: str
) -> None:
    first = _new(store, idempotency_key="k", request_hash="h")
    _age(store, first, IDEMPOTENCY_TTL + timedelta(minutes=1))
    job, created = store.create(
        small_deck(), title="deck", idempotency_key="k", request_hash=request_hash
    )
    assert created and job.id != first
    assert store.find_by_idempotency_key("k") == job
    assert store.get(first).status is Status.QUEUED  # the old job itself is untouched
    replay, created_again = store.create(
        small_deck(), title="deck", idempotency_key="k", request_hash=request_hash
    )
    assert not created_again and replay.id == job.id


# -- leases ------------------------------------------------------------------------


def test_a_lease_is_exclusive_renewable_expires_and_is_released(store: JobStore) -> None:
    leases = LeaseManager(store)
    assert leases.acquire("sweeper", "a@host1", ttl=30)
    assert not leases.acquire("sweeper", "b@host2", ttl=30)
    assert leases.acquire("sweeper", "a@host1", ttl=30)  # renewed by its holder
    assert not leases.acquire("sweeper", "b@host2", ttl=30)
    assert leases.acquire("other", "b@host2", ttl=30)  # names are independent

    with store.engine.begin() as conn:  # a@host1 died: its lease ran out
        conn.execute(
            update(leases_table)
            .where(leases_table.c.name == "sweeper")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert leases.acquire("sweeper", "b@host2", ttl=30)
    assert not leases.acquire("sweeper", "a@host1", ttl=30)  # came back too late

    leases.release("sweeper", "a@host1")  # not its holder: nothing happens
    assert not leases.acquire("sweeper", "a@host1", ttl=30)
    leases.release("sweeper", "b@host2")
    assert leases.acquire("sweeper", "a@host1", ttl=30)


# -- worker registry -------------------------------------------------------------------


def test_worker_registry_tracks_workers_and_their_jobs(store: JobStore) -> None:
    registry = WorkerRegistry(store)
    registry.register("a@host1", "host1", 101)
    registry.register("b@host2", "host2", 202)
    registry.seen("a@host1")  # a is the most recently seen
    workers = registry.list_workers()
    assert [w.name for w in workers] == ["a@host1", "b@host2"]
    a = workers[0]
    assert (a.host, a.pid, a.current_job, a.jobs_done, a.jobs_failed, a.stopped_at) == (
        "host1",
        101,
        None,
        0,
        0,
        None,
    )
    assert a.alive(30)

    # A claim names the worker's current job in the same statement.
    jobs = [store.create(small_deck(), title=f"deck {n}")[0].id for n in range(3)]
    store.claim(jobs[0], "a@host1")
    assert registry.list_workers()[0].current_job == jobs[0]
    registry.job_finished("a@host1", jobs[0], outcome="completed")
    store.claim(jobs[1], "a@host1")
    registry.job_finished("a@host1", jobs[1], outcome="failed")
    store.claim(jobs[2], "a@host1")
    registry.job_finished("a@host1", "job-old", outcome="completed")  # not its current job
    a = {w.name: w for w in registry.list_workers()}["a@host1"]
    assert (a.jobs_done, a.jobs_failed, a.current_job) == (2, 1, jobs[2])

    registry.stopped("a@host1")
    by_name = {w.name: w for w in registry.list_workers()}
    a, b = by_name["a@host1"], by_name["b@host2"]
    assert a.stopped_at is not None and a.current_job is None and not a.alive(30)
    assert b.alive(30)
    assert not b.alive(30, now=b.last_seen + timedelta(seconds=31))
    assert b.alive(30, now=b.last_seen + timedelta(seconds=29))

    registry.register("a@host1", "host1", 303)  # restarted under the same name
    a = {w.name: w for w in registry.list_workers()}["a@host1"]
    assert a.pid == 303 and a.stopped_at is None and a.alive(30)


# -- an unmigrated database -------------------------------------------------------------


def test_an_unmigrated_postgresql_database_names_the_fix(pg_server: Any) -> None:
    """``JobStore.transaction`` means to turn a missing schema into a
    StorageError telling the operator to run alembic, on both backends."""
    url = create_pg_database(pg_server, prefix="slidefarm_empty")
    try:
        store = JobStore.from_url(url)
        with pytest.raises(StorageError, match="alembic upgrade head"):
            store.get(MISSING)
    finally:
        drop_pg_database(pg_server, url)


def test_an_unmigrated_sqlite_database_names_the_fix(tmp_path: Any) -> None:
    store = JobStore.from_url(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StorageError, match="alembic upgrade head"):
        store.get(MISSING)


def test_a_claim_and_a_completion_keep_the_worker_registry_in_the_same_write(
    store: JobStore,
) -> None:
    registry = WorkerRegistry(store)
    registry.register("a@host1", "host1", 101)
    job, _ = store.create(small_deck(), title="t")
    claimed = store.claim(job.id, "a@host1")
    assert claimed is not None
    a = registry.list_workers()[0]
    assert (a.current_job, a.jobs_done) == (job.id, 0)
    assert store.complete(
        job.id, claimed.attempts, video_url="/v", thumbnail_url="/t", slide_image_path="slides"
    )
    a = registry.list_workers()[0]
    assert (a.current_job, a.jobs_done, a.jobs_failed) == (None, 1, 0)
    # A claim by a worker that never registered still claims.
    other, _ = store.create(small_deck(), title="t")
    assert store.claim(other.id, "ghost@nowhere") is not None


def test_an_idle_pooled_connection_killed_by_the_server_is_replaced_unseen(pg_url: str) -> None:
    """Connections idle past PING_AFTER_IDLE are pinged on checkout: one the
    server dropped meanwhile is replaced, and the caller never sees it."""
    import time

    from sqlalchemy import text

    from storage.db import PING_AFTER_IDLE, create_db_engine

    store = JobStore(create_db_engine(pg_url))
    store.ping()
    time.sleep(PING_AFTER_IDLE + 0.1)
    admin = create_db_engine(pg_url)
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        conn.commit()
    admin.dispose()
    store.ping()  # no DatabaseUnavailable: the dead connection was pinged and replaced
    store.engine.dispose()


# -- a cancel is never lost to a racing write ------------------------------------
# Races are made deterministic by holding one side at a chosen statement
# (SQLAlchemy engine events on a store of its own) while the other side runs.


class Hold:
    """Stops the thread that runs a matching statement on ``engine``, right
    after that statement, until :meth:`release` (once)."""

    def __init__(
        self, engine: Engine, matches: Callable[[str], bool], when: str = "after_cursor_execute"
    ) -> None:
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


class in_thread:
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
    store: JobStore, second_store: JobStore, attempts: int
) -> None:
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


def test_a_claim_of_a_job_whose_cancel_was_asked_for_ends_it_cancelled(store: JobStore) -> None:
    job, _ = store.create(small_deck(), title="deck")
    # Queued with the flag set: what a requeue that raced a cancel left
    # behind before writes were conditional on the flag.
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs_table).where(jobs_table.c.id == job.id).values(cancel_requested=True)
        )
    assert store.claim(job.id, "a@host1") is None
    ended = store.get(job.id)
    assert ended.status is Status.CANCELLED and ended.attempts == 0
    assert not ended.cancel_requested and ended.completed_at is not None
    assert [(e.from_status, e.to_status) for e in store.history(job.id)][-1] == (
        Status.QUEUED,
        Status.CANCELLED,
    )


def test_a_completion_after_a_cancel_ends_the_job_cancelled(store: JobStore) -> None:
    job, _ = store.create(small_deck(), title="deck")
    assert store.claim(job.id, "a@host1") is not None
    assert store.request_cancel(job.id).cancel_requested
    state = store.complete(job.id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="slides")
    assert state is LeaseState.CANCEL_REQUESTED
    assert store.get(job.id).status is Status.PROCESSING  # the worker ends it
    assert store.finish_cancelled(job.id, 1)
    assert store.get(job.id).status is Status.CANCELLED
    assert not store.complete(
        job.id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="slides"
    )


# -- retention never half-deletes a job retried at that moment -------------------


def test_a_retry_racing_retention_keeps_its_whole_job(
    store: JobStore, second_store: JobStore
) -> None:
    old = failed_job(store)
    raced = failed_job(store)
    history = [(e.from_status, e.to_status) for e in store.history(raced)]
    # The retry is held inside its transaction, its write made but not
    # committed, while retention runs; then it commits.
    hold = Hold(
        store.engine,
        lambda sql: sql.lstrip().upper().startswith("UPDATE JOBS") and "attempt_limit" in sql,
    )
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
        *history,
        (Status.FAILED, Status.QUEUED),
    ]
    with pytest.raises(JobNotFound):
        store.get(old)
    assert store.history(old) == []


def test_deleting_a_job_removes_every_row_of_it(store: JobStore) -> None:
    job_id = failed_job(store)
    with store.engine.begin() as conn:
        conn.execute(
            insert(deliveries_table).values(
                job_id=job_id, attempt=1, at=utcnow(), status_code=500, duration_ms=1.0
            )
        )
    assert store.delete(job_id)
    with store.engine.connect() as conn:
        for table in (files_table, events_table, deliveries_table, jobs_table):
            column = table.c.id if table is jobs_table else table.c.job_id
            assert conn.execute(select(column).where(column == job_id)).first() is None, table


# -- a submission retries a bounded number of times --------------------------------


def test_a_key_taken_and_freed_forever_ends_in_a_clear_error(
    store: JobStore, second_store: JobStore
) -> None:
    """Another client holds the key at each insert and deletes its job before
    each lookup: the submission gives up after a few tries, with a message."""
    holders: list[str] = []
    inserts: list[str] = []

    def interfere(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sql = statement.upper()
        if "INSERT INTO JOBS" in sql and len(inserts) < 50:
            inserts.append(statement)
            job, _ = second_store.create(
                small_deck(), title="other", idempotency_key="k", request_hash="h"
            )
            holders.append(job.id)
        elif sql.lstrip().startswith("SELECT JOBS.ID") and "IDEMPOTENCY_KEY =" in sql and holders:
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
    db_url: str, tmp_path: Any, store: JobStore, second_store: JobStore
) -> None:
    settings = Settings(
        DATABASE_URL=db_url,
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "out"),
        SLIDEFARM_SWEEP_INTERVAL="0.1",
    )  # a lease of 1 s
    job, _ = store.create(small_deck(), title="deck")
    assert store.claim(job.id, "gone@host9") is not None
    with store.engine.begin() as conn:  # its worker stopped heartbeating long ago
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job.id)
            .values(last_heartbeat=utcnow() - timedelta(hours=1))
        )
    sweeping = threading.Event()

    def slow_wake(_count: int) -> None:
        sweeping.set()
        time.sleep(3.0)  # three times the lease

    first = Sweeper(store, settings, "a@host1", slow_wake)
    second = Sweeper(second_store, settings, "b@host2", lambda _n: None)
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
