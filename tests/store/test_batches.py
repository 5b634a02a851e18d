"""Batches on SQLite and PostgreSQL: all or nothing, the quota counted for
the whole batch, one Idempotency-Key (raced too), counts and progress,
cancel, and a settle that lands exactly once."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from core.config import Settings
from storage import IdempotencyConflict, JobStore, QuotaExceeded, Stage, Status
from storage.assets import AssetLimits, AssetStore
from storage.batches import (
    BatchAssetNotFound,
    BatchNotFound,
    BatchStore,
    NewJob,
)
from storage.deliveries import DeliveryResult
from storage.jobs.values import utcnow
from storage.models import WebhookStatus
from tests.support.assets import image_bytes
from tests.support.decks import small_deck
from workers.sweeper import Sweeper

LIMITS = AssetLimits(max_bytes=1 << 20, max_image_bytes=1 << 20, max_pixels=10**6, quota=None)
MISSING = "00000000-0000-4000-8000-000000000000"


def _items(n: int) -> list[NewJob]:
    return [NewJob(small_deck(), title=f"deck {i}") for i in range(n)]


@pytest.fixture
def batches(store: JobStore) -> BatchStore:
    return BatchStore(store)


def _finish(store: JobStore, job_id: str, *, ok: bool = True) -> None:
    job = store.claim(job_id, "w@host")
    assert job is not None
    if ok:
        store.complete(job_id, job.attempts, video_url="v", thumbnail_url="t", slide_image_path="s")
    else:
        store.fail(job_id, job.attempts, "broken")


def test_a_batch_and_its_jobs_are_one_transaction(batches: BatchStore, store: JobStore) -> None:
    batch, jobs, created = batches.create(_items(3), owner="acme", callback_url="http://x/y")
    assert created and batch.total == 3 and len(jobs) == 3
    assert batch.counts["queued"] == 3 and batch.progress == 0.0 and batch.finished_at is None
    assert all(j.batch_id == batch.id and j.owner == "acme" for j in jobs)
    assert store.get(jobs[0].id).batch_id == batch.id
    # Listed in submission order.
    page = batches.list_jobs(batch.id, owner="acme")
    assert [j.title for j in page.jobs] == ["deck 0", "deck 1", "deck 2"]


def test_an_item_whose_asset_is_missing_creates_nothing(
    batches: BatchStore, store: JobStore, tmp_path: Path
) -> None:
    image, _ = AssetStore(store, tmp_path).ingest("acme", [image_bytes("PNG")], LIMITS)
    items = [
        NewJob(small_deck(), title="ok", asset_ids=[image.id]),
        NewJob(small_deck(), title="ok too"),
        NewJob(small_deck(), title="bad", asset_ids=[MISSING]),
    ]
    with pytest.raises(BatchAssetNotFound) as refused:
        batches.create(items, owner="acme")
    assert refused.value.index == 2
    assert store.list_jobs(limit=10).jobs == []
    assert batches.list_batches(owner="acme").batches == []


def test_the_quota_counts_the_whole_batch(batches: BatchStore, store: JobStore) -> None:
    store.create(small_deck(), title="one", owner="acme")
    with pytest.raises(QuotaExceeded, match="batch's 5 jobs"):
        batches.create(_items(5), owner="acme", max_active=5)
    assert len(store.list_jobs(limit=10).jobs) == 1
    batch, _, _ = batches.create(_items(4), owner="acme", max_active=5)
    assert batch.total == 4
    with pytest.raises(QuotaExceeded):
        batches.create(_items(1), owner="acme", max_active=5)
    # Another tenant has its own.
    batches.create(_items(5), owner="globex", max_active=5)


def test_one_idempotency_key_for_the_whole_batch(batches: BatchStore) -> None:
    first, jobs, created = batches.create(
        _items(2), owner="acme", idempotency_key="k", request_hash="h1"
    )
    again, _, created_again = batches.create(
        _items(2), owner="acme", idempotency_key="k", request_hash="h1"
    )
    assert created and not created_again and again.id == first.id and len(jobs) == 2
    with pytest.raises(IdempotencyConflict):
        batches.create(_items(2), owner="acme", idempotency_key="k", request_hash="h2")
    other, _, created_other = batches.create(
        _items(2), owner="globex", idempotency_key="k", request_hash="h1"
    )
    assert created_other and other.id != first.id


def test_racing_requests_with_one_key_make_one_batch(batches: BatchStore, store: JobStore) -> None:
    barrier = threading.Barrier(6)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        barrier.wait()
        try:
            batch, _, created = batches.create(
                _items(3), owner="acme", idempotency_key="race", request_hash="h", max_active=5
            )
            results.append((batch.id, created))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({batch_id for batch_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(store.list_jobs(limit=50).jobs) == 3


def test_counts_progress_and_settle_exactly_once(batches: BatchStore, store: JobStore) -> None:
    batch, jobs, _ = batches.create(_items(4), owner="acme", callback_url="http://x/y")
    _finish(store, jobs[0].id)
    _finish(store, jobs[1].id, ok=False)
    running = store.claim(jobs[2].id, "w@host")
    assert running is not None
    store.record_progress(jobs[2].id, running.attempts, 0.5, Stage.RENDERING_SLIDES)
    now = batches.get(batch.id, owner="acme")
    assert now.counts["completed"] == 1 and now.counts["failed"] == 1
    assert now.counts["processing"] == 1 and now.counts["queued"] == 1
    assert now.progress == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert now.started_at is not None and now.last_completed_at is not None
    assert not batches.settle(batch.id)
    store.complete(
        jobs[2].id, running.attempts, video_url="v", thumbnail_url="t", slide_image_path="s"
    )
    store.request_cancel(jobs[3].id)
    # Racing settles: one lands.
    barrier = threading.Barrier(4)
    won: list[bool] = []

    def settle() -> None:
        barrier.wait()
        won.append(batches.settle(batch.id))

    threads = [threading.Thread(target=settle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, False, False, True]
    done = batches.get(batch.id)
    assert done.finished_at is not None and done.progress == 1.0
    assert done.webhook_status == WebhookStatus.PENDING.value
    assert batches.settle_finished() == []
    assert batches.due_webhooks(resend_after=60) == [batch.id]
    assert batches.due_webhooks(resend_after=60) == []  # marked sent


def test_the_sweepers_fallback_settles_what_nobody_did(
    batches: BatchStore, store: JobStore
) -> None:
    batch, jobs, _ = batches.create(_items(2), owner="acme")
    open_batch, _, _ = batches.create(_items(1), owner="acme")
    for job in jobs:
        _finish(store, job.id)
    assert batches.settle_finished() == [batch.id]
    assert batches.settle_finished() == []
    assert batches.get(batch.id).webhook_status is None  # no callback URL: nothing armed
    assert batches.get(open_batch.id).finished_at is None


def test_a_sweep_settles_a_batch_whose_last_job_ended_unsettled(
    db_url: str, tmp_path: Path, batches: BatchStore, store: JobStore
) -> None:
    # The last job ended (here: cancelled through the single-job route, as a
    # worker that died after its final write would leave it): only the sweep
    # settles the batch. Without a webhook sender it settles and sends nothing.
    settings = Settings(DATABASE_URL=db_url, SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"))
    batch, jobs, _ = batches.create(_items(1), owner="acme", callback_url="http://x/y")
    store.request_cancel(jobs[0].id)
    assert batches.get(batch.id).finished_at is None
    assert Sweeper(store, settings, "a@host1", lambda _j, _c: None).sweep_once()
    settled = batches.get(batch.id)
    assert settled.finished_at is not None and settled.webhook_status == "pending"


def test_cancel_stops_every_job_that_is_not_final(batches: BatchStore, store: JobStore) -> None:
    items = _items(4)
    items[2] = NewJob(small_deck(), title="hooked", callback_url="http://x/job")
    batch, jobs, _ = batches.create(items, owner="acme")
    _finish(store, jobs[0].id)
    assert store.claim(jobs[1].id, "w@host") is not None
    with pytest.raises(BatchNotFound):
        batches.cancel(batch.id, owner="globex")
    result = batches.cancel(batch.id, owner="acme")
    assert (result.cancelled, result.flagged, result.unchanged) == (2, 1, 1)
    assert not result.settled  # the processing one has not stopped yet
    assert result.webhooks == (jobs[2].id,)  # its own webhook, due now
    assert store.get(jobs[1].id).cancel_requested
    assert result.batch.counts["cancelled"] == 2


def test_tenants_and_pages(batches: BatchStore) -> None:
    mine = [batches.create(_items(1), owner="acme")[0] for _ in range(3)]
    batches.create(_items(1), owner="globex")
    with pytest.raises(BatchNotFound):
        batches.get(mine[0].id, owner="globex")
    with pytest.raises(BatchNotFound):
        batches.list_jobs(mine[0].id, owner="globex")
    first = batches.list_batches(owner="acme", limit=2)
    assert [b.id for b in first.batches] == [mine[2].id, mine[1].id]
    assert first.next_cursor is not None
    rest = batches.list_batches(owner="acme", limit=2, cursor=first.next_cursor)
    assert [b.id for b in rest.batches] == [mine[0].id] and rest.next_cursor is None
    big, jobs, _ = batches.create(_items(5), owner="acme")
    seen: list[str] = []
    cursor = None
    while True:
        page = batches.list_jobs(big.id, limit=2, cursor=cursor)
        seen += [j.id for j in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [j.id for j in jobs]
    assert batches.list_jobs(big.id, status=Status.COMPLETED).jobs == []


def test_the_batch_webhook_is_claimed_and_recorded_once(
    batches: BatchStore, store: JobStore
) -> None:
    batch, jobs, _ = batches.create(_items(1), owner="acme", callback_url="http://x/y")
    store.request_cancel(jobs[0].id)
    assert batches.settle(batch.id)
    claim = batches.claim_webhook(batch.id, lease=30)
    assert claim is not None and claim.attempt == 1
    assert batches.claim_webhook(batch.id, lease=30) is None  # held
    ok = DeliveryResult(200, None, 5.0)
    assert (
        batches.record_webhook(batch.id, 1, ok, backoff=1, retry_for=60) is WebhookStatus.DELIVERED
    )
    assert batches.record_webhook(batch.id, 1, ok, backoff=1, retry_for=60) is None
    assert [d.status_code for d in batches.deliveries(batch.id)] == [200]


def test_retention_deletes_batches_finished_long_ago_only(
    batches: BatchStore, store: JobStore
) -> None:
    old, old_jobs, _ = batches.create(_items(1), owner="acme")
    hooked, hooked_jobs, _ = batches.create(_items(1), owner="acme", callback_url="http://x/y")
    running, _, _ = batches.create(_items(1), owner="acme")
    for job in (*old_jobs, *hooked_jobs):
        store.request_cancel(job.id)
    assert sorted(batches.settle_finished()) == sorted([old.id, hooked.id])
    later = utcnow() + timedelta(days=8)
    # The hooked batch's webhook is still pending: it stays until delivered or failed.
    assert batches.delete_finished_older_than(7, now=later) == 1
    with pytest.raises(BatchNotFound):
        batches.get(old.id)
    assert store.get(old_jobs[0].id).batch_id is None  # the job forgets its batch
    assert batches.get(hooked.id).id == hooked.id
    assert batches.get(running.id).finished_at is None
    assert batches.delete_finished_older_than(7) == 0  # not old yet
