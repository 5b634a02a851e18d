"""What runs next (docs/design.md, "What runs next"): ``claim_next`` on SQLite
and PostgreSQL. Priority first, then fair share between tenants, then
submission order; a tenant's cap; retries not due, cancel flags and
scheduled jobs; and on PostgreSQL, many claimers at once."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from core.config import Settings
from storage import JobStore, Status
from storage.jobs.values import utcnow
from storage.models import jobs_table, tenants_table
from tests.support.decks import small_deck
from tests.support.services import truncate_tables
from workers.sweeper import MAX_WAKES, Sweeper


def _tenant(store: JobStore, name: str, *, weight: float = 1.0, max_running: Any = None) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            insert(tenants_table).values(
                name=name,
                webhook_secret="s" * 32,
                created_at=utcnow(),
                weight=weight,
                max_running=max_running,
            )
        )


def _queue(store: JobStore, owner: str = "default", n: int = 1, **kwargs: Any) -> list[str]:
    return [
        store.create(small_deck(), title=f"{owner} {i}", owner=owner, **kwargs)[0].id
        for i in range(n)
    ]


def _claim_all(store: JobStore, **kwargs: Any) -> list[str]:
    ids = []
    while (job := store.claim_next("w@h", **kwargs)) is not None:
        ids.append(job.id)
    return ids


def test_nothing_queued_claims_nothing(store: JobStore) -> None:
    assert store.claim_next("w@h") is None


def test_submission_order_within_a_tenant(store: JobStore) -> None:
    ids = _queue(store, n=5)
    first = store.claim_next("w@h")
    assert first is not None and first.id == ids[0]
    assert first.status is Status.PROCESSING and first.attempts == 1 and first.worker == "w@h"
    history = store.history(ids[0])
    assert [(e.from_status, e.to_status, e.reason) for e in history][-1] == (
        Status.QUEUED,
        Status.PROCESSING,
        "claimed",
    )
    assert _claim_all(store) == ids[1:]


def test_priority_first_across_tenants(store: JobStore) -> None:
    low = _queue(store, "a", 3)
    urgent = _queue(store, "b", 1, priority=10)
    lower = _queue(store, "b", 1, priority=-5)
    mid = _queue(store, "a", 1, priority=5)
    order = _claim_all(store)
    assert order[:2] == urgent + mid
    assert order[-1] == lower[0]
    assert set(order[2:-1]) == set(low)


def test_fair_share_alternates_tenants(store: JobStore) -> None:
    a = _queue(store, "a", 6)
    b = _queue(store, "b", 2)
    # Each claim leaves its job processing: the tenant with fewer running
    # goes next, ties to the older head (a's, submitted first).
    assert _claim_all(store) == [a[0], b[0], a[1], b[1], *a[2:]]


def test_fair_share_follows_weights(store: JobStore) -> None:
    _tenant(store, "heavy", weight=3.0)
    heavy = _queue(store, "heavy", 6)
    light = _queue(store, "light", 3)  # no tenants row: weight 1
    order = _claim_all(store)
    # running/weight: heavy takes 3 for each of light's 1 (equal shares go
    # to the tenant that started a job longest ago).
    assert order[:8] == [
        heavy[0],
        light[0],
        heavy[1],
        heavy[2],
        light[1],
        heavy[3],
        heavy[4],
        heavy[5],
    ]


def test_fair_share_counts_only_running_jobs(store: JobStore) -> None:
    a = _queue(store, "a", 3)
    b = _queue(store, "b", 1)
    first = store.claim_next("w@h")
    assert first is not None and first.id == a[0]
    assert store.complete(a[0], 1, video_url="v", thumbnail_url="t", slide_image_path="s")
    # a runs nothing any more: both at 0, and b, which never started a
    # job, goes before a, which just did (round robin between equal shares).
    second = store.claim_next("w@h")
    assert second is not None and second.id == b[0]
    third = store.claim_next("w@h")
    assert third is not None and third.id == a[1]


def test_one_worker_takes_tenants_in_turn(store: JobStore) -> None:
    a = _queue(store, "a", 5)
    b = _queue(store, "b", 2)
    c = _queue(store, "c", 1)
    order = []
    while (job := store.claim_next("w@h")) is not None:  # one worker: claim, finish, claim
        order.append(job.id)
        assert store.complete(job.id, 1, video_url="v", thumbnail_url="t", slide_image_path="s")
    # A backlog submitted first does not hold the others back: each tenant in turn.
    assert order == [a[0], b[0], c[0], a[1], b[1], a[2], a[3], a[4]]


def test_max_running_caps_a_tenant(store: JobStore) -> None:
    _tenant(store, "capped", max_running=2)
    capped = _queue(store, "capped", 4)
    other = _queue(store, "other", 1)
    assert _claim_all(store) == [capped[0], other[0], capped[1]]
    assert store.claim_next("w@h") is None
    assert store.fail(capped[0], 1, "boom")
    again = store.claim_next("w@h")
    assert again is not None and again.id == capped[2]


def test_the_default_cap_and_a_tenants_own(store: JobStore) -> None:
    _tenant(store, "free", max_running=0)  # 0: no cap, whatever the default
    free = _queue(store, "free", 3)
    plain = _queue(store, "plain", 3)
    order = _claim_all(store, max_running=1)
    assert order == [free[0], plain[0], free[1], free[2]]


def test_a_retry_waits_for_its_not_before(store: JobStore) -> None:
    (job_id,) = _queue(store)
    assert store.claim_next("w@h") is not None
    assert store.requeue(job_id, 1, "transient", delay=60) is Status.QUEUED
    later = _queue(store)
    taken = store.claim_next("w@h")
    assert taken is not None and taken.id == later[0]
    assert store.claim_next("w@h") is None
    due = store.claim_next("w@h", now=utcnow() + timedelta(seconds=61))
    assert due is not None and due.id == job_id and due.attempts == 2


def test_a_flagged_queued_job_ends_cancelled_and_blocks_nothing(store: JobStore) -> None:
    flagged, after = _queue(store, n=2)
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs_table).where(jobs_table.c.id == flagged).values(cancel_requested=True)
        )
    taken = store.claim_next("w@h")
    assert taken is not None and taken.id == after
    gone = store.get(flagged)
    assert gone.status is Status.CANCELLED and gone.attempts == 0


def test_a_scheduled_job_is_never_claimed_until_promoted(store: JobStore) -> None:
    run_at = utcnow() + timedelta(seconds=30)
    (scheduled,) = _queue(store, run_at=run_at)
    assert store.get(scheduled).status is Status.SCHEDULED
    assert store.claim_next("w@h", now=run_at + timedelta(seconds=5)) is None
    assert store.promote_due(now=run_at - timedelta(seconds=1)) == []
    assert store.get(scheduled).status is Status.SCHEDULED
    assert store.promote_due(now=run_at) == [scheduled]
    job = store.get(scheduled)
    assert job.status is Status.QUEUED and job.queued_at == run_at
    events = store.history(scheduled)
    assert (events[-1].from_status, events[-1].to_status, events[-1].reason) == (
        Status.SCHEDULED,
        Status.QUEUED,
        "run_at reached",
    )
    assert store.promote_due(now=run_at + timedelta(seconds=1)) == []
    claimed = store.claim_next("w@h")
    assert claimed is not None and claimed.id == scheduled


def test_due_for_dispatch_wakes_for_a_retry_come_due(store: JobStore) -> None:
    (job_id,) = _queue(store)
    assert store.claim_next("w@h") is not None
    assert store.requeue(job_id, 1, "transient", delay=5) is Status.QUEUED
    now = utcnow()
    assert store.due_for_dispatch(600, now=now) == []
    assert store.due_for_dispatch(600, now=now + timedelta(seconds=6)) == [job_id]
    assert store.due_for_dispatch(600, now=now + timedelta(seconds=7)) == []


def test_many_claimers_at_once_get_distinct_jobs_within_caps(pg_url: str) -> None:
    truncate_tables(pg_url)
    store = JobStore.from_url(pg_url)
    _tenant(store, "capped", max_running=3)
    _queue(store, "capped", 30)
    _queue(store, "a", 20)
    _queue(store, "b", 20, priority=1)
    threads = 12
    barrier = threading.Barrier(threads)
    claimed: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            barrier.wait()
            while (job := store.claim_next("w@h")) is not None:
                claimed.append((job.id, job.owner))
        except BaseException as error:  # surfaced below
            errors.append(error)

    workers = [threading.Thread(target=claimer) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert errors == []
    ids = [job_id for job_id, _ in claimed]
    assert len(ids) == len(set(ids)) == 43  # 20 + 20 + the cap's 3
    assert sum(owner == "capped" for _, owner in claimed) == 3
    processing = store.list_jobs(status=Status.PROCESSING, limit=500).jobs
    assert len(processing) == 43
    assert all(store.get(i).attempts == 1 for i in ids)


def test_a_cap_holds_while_many_claimers_claim_and_finish(pg_url: str) -> None:
    truncate_tables(pg_url)
    store = JobStore.from_url(pg_url)
    _tenant(store, "capped", max_running=2)
    jobs = set(_queue(store, "capped", 40))
    threads = 16
    barrier = threading.Barrier(threads)
    seen: list[int] = []
    done: list[str] = []
    errors: list[BaseException] = []

    def running() -> int:
        return len(
            [j for j in store.list_jobs(status=Status.PROCESSING, limit=500).jobs if j.id in jobs]
        )

    def claimer() -> None:
        try:
            barrier.wait()
            while len(done) < len(jobs):
                job = store.claim_next("w@h")
                if job is None:
                    # Capped: a real worker waits for its next wake-up; a
                    # short pause keeps 14 idle claimers from starving the 2
                    # that hold jobs of the CPU and the connection pool.
                    time.sleep(0.01)
                    continue
                seen.append(running())
                assert store.complete(
                    job.id, job.attempts, video_url="v", thumbnail_url="t", slide_image_path="s"
                )
                done.append(job.id)
        except BaseException as error:  # surfaced below
            errors.append(error)

    workers = [threading.Thread(target=claimer) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert errors == []
    assert sorted(done) == sorted(jobs)
    assert max(seen) <= 2 and len(seen) == 40


def test_the_sweeper_queues_due_schedules_and_wakes_a_bounded_number(
    store: JobStore, tmp_path: Path
) -> None:
    settings = Settings(
        DATABASE_URL=str(store.engine.url.render_as_string(hide_password=False)),
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "out"),
        SLIDEFARM_DISPATCH_TIMEOUT="60",
    )
    wakes: list[int] = []
    sweeper = Sweeper(store, settings, "a@host1", wakes.append)
    waiting = _queue(store, "big", 200)  # woken for at submission, a while ago
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_(waiting))
            .values(dispatched_at=utcnow() - timedelta(seconds=120))
        )
    (soon,) = _queue(store, run_at=utcnow() + timedelta(seconds=0.5))
    (later,) = _queue(store, run_at=utcnow() + timedelta(hours=1))
    assert sweeper.sweep_once()
    assert wakes == [MAX_WAKES]  # 200 jobs waiting: a bounded number of wake-ups
    assert store.get(soon).status is Status.SCHEDULED
    time.sleep(0.6)
    wakes.clear()
    assert sweeper.sweep_once()
    assert wakes == [1]  # the job that came due, nothing else
    assert store.get(soon).status is Status.QUEUED
    assert store.get(later).status is Status.SCHEDULED
    wakes.clear()
    assert sweeper.sweep_once()
    assert wakes == []
