"""The job store on SQLite and PostgreSQL: every transition, and that each is
conditional (a second claim loses, a stale attempt's write changes nothing)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from storage import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    JobStore,
    Stage,
    Status,
    utcnow,
)
from tests.support.decks import small_deck


def _new(store: JobStore, title: str = "deck") -> str:
    job, created = store.create(small_deck(), title=title)
    assert created
    return job.id


def test_create_records_a_queued_job(store: JobStore) -> None:
    job, created = store.create(small_deck(), title="Quarterly")
    assert created
    assert job.status is Status.QUEUED and job.stage is Stage.QUEUED
    assert job.progress == 0.0 and job.attempts == 0 and job.worker is None
    assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
    again = store.get(job.id)
    assert again == job
    assert again.deck["slides"][0]["title"] == "Slide 1"


def test_the_job_create_returns_is_the_job_stored(store: JobStore) -> None:
    """The insert returns only what it decides (the priority); the rest of
    the snapshot is what was passed and the columns' defaults, and must be
    exactly what a read finds, whatever the submission sets."""
    deck = small_deck()
    variants: list[dict[str, Any]] = [
        {},
        {"callback_url": "https://example.com/hook", "priority": 7},
        {"run_at": utcnow() + timedelta(hours=1)},  # scheduled
        {"idempotency_key": "k-1", "request_hash": "h" * 64},
        {"priority": None, "priority_ceiling": 10, "owner": "acme"},
    ]
    for extra in variants:
        job, _ = store.create(deck, title="Quarterly", **extra)
        assert store.get(job.id) == job, extra
    # The deck given as its JSON text is stored and returned as the same deck.
    job, _ = store.create(json.dumps(deck), title="Quarterly")
    assert job.deck == deck
    assert store.get(job.id) == job


def test_get_unknown_job_raises(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get("00000000-0000-0000-0000-000000000000")


def test_claim_starts_an_attempt_and_a_second_claim_loses(store: JobStore) -> None:
    job_id = _new(store)
    first = store.claim(job_id, "a@host1")
    assert first is not None
    assert first.status is Status.PROCESSING and first.attempts == 1
    assert first.worker == "a@host1" and first.started_at and first.last_heartbeat
    assert first.stage is Stage.RENDERING_SLIDES
    assert store.claim(job_id, "b@host2") is None
    assert store.get(job_id).worker == "a@host1"


def test_concurrent_claims_have_exactly_one_winner(store: JobStore) -> None:
    job_id = _new(store)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def contend(n: int) -> None:
        barrier.wait()
        if store.claim(job_id, f"w{n}@host") is not None:
            winners.append(f"w{n}@host")

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    job = store.get(job_id)
    assert job.attempts == 1 and job.worker == winners[0]


def test_claim_of_unknown_job_is_none(store: JobStore) -> None:
    assert store.claim("missing", "w@h") is None


def test_heartbeat_and_progress_need_the_current_attempt(store: JobStore) -> None:
    job_id = _new(store)
    job = store.claim(job_id, "w@h")
    assert job is not None
    before = store.get(job_id).last_heartbeat
    assert store.heartbeat(job_id, 1)
    assert store.get(job_id).last_heartbeat >= before  # type: ignore[operator]
    assert not store.heartbeat(job_id, 2)
    assert store.record_progress(job_id, 1, 0.4, Stage.RENDERING_SLIDES)
    assert not store.record_progress(job_id, 0, 0.9, Stage.ENCODING_VIDEO)
    job = store.get(job_id)
    assert job.progress == pytest.approx(0.4) and job.stage is Stage.RENDERING_SLIDES


def test_progress_never_decreases_within_an_attempt(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w@h")
    assert store.record_progress(job_id, 1, 0.6, Stage.ENCODING_VIDEO)
    assert store.record_progress(job_id, 1, 0.3, Stage.ENCODING_VIDEO)
    assert store.get(job_id).progress == pytest.approx(0.6)
    assert store.record_progress(job_id, 1, 7.0, Stage.FINALIZING)  # clamped
    assert store.get(job_id).progress == pytest.approx(1.0)


def test_files_are_recorded_per_attempt(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w@h")
    assert store.add_file(job_id, 1, "slides/001.png", 10)
    assert store.add_file(job_id, 1, "slides/001.png", 12)  # re-recorded: size updated
    assert store.add_file(job_id, 1, "video.mp4", 99)
    assert not store.add_file(job_id, 2, "stale.png", 1)
    job = store.get(job_id)
    assert job.created_files == ["slides/001.png", "video.mp4"]
    assert [f.size_bytes for f in job.files] == [12, 99]


def test_complete_sets_outputs_only_for_the_current_attempt(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w@h")
    assert not store.complete(job_id, 2, video_url="v", thumbnail_url="t", slide_image_path="s")
    assert store.get(job_id).status is Status.PROCESSING
    assert store.complete(job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="slides")
    job = store.get(job_id)
    assert job.status is Status.COMPLETED and job.stage is Stage.DONE and job.progress == 1.0
    assert job.video_url == "/v" and job.thumbnail_url == "/t" and job.completed_at
    # Finished: nothing moves it any more.
    assert not store.fail(job_id, 1, "late")
    assert not store.heartbeat(job_id, 1)
    assert store.claim(job_id, "x@h") is None
    assert store.get(job_id).status is Status.COMPLETED


def test_fail_records_a_readable_error(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "w@h")
    assert not store.fail(job_id, 5, "wrong attempt")
    assert store.fail(job_id, 1, "ffmpeg failed: boom")
    job = store.get(job_id)
    assert job.status is Status.FAILED and job.error == "ffmpeg failed: boom"
    assert job.completed_at is not None


def test_requeue_fences_the_old_attempt(store: JobStore) -> None:
    job_id = _new(store)
    store.claim(job_id, "old@h")
    store.add_file(job_id, 1, "slides/001.png", 5)
    assert store.requeue(job_id, 1)
    job = store.get(job_id)
    assert job.status is Status.QUEUED and job.attempts == 1
    second = store.claim(job_id, "new@h")
    assert second is not None and second.attempts == 2 and second.worker == "new@h"
    # The presumed-dead worker's late writes change nothing.
    assert not store.heartbeat(job_id, 1)
    assert not store.record_progress(job_id, 1, 0.9, Stage.FINALIZING)
    assert not store.add_file(job_id, 1, "video.mp4", 1)
    assert not store.complete(job_id, 1, video_url="v", thumbnail_url="t", slide_image_path="s")
    assert not store.fail(job_id, 1, "late")
    job = store.get(job_id)
    assert job.status is Status.PROCESSING and job.attempts == 2 and job.progress == 0.0
    assert job.created_files == []  # files of attempt 1 are not this attempt's


def test_list_is_newest_first_with_keyset_paging(store: JobStore) -> None:
    ids = [_new(store, f"deck {n}") for n in range(7)]
    store.claim(ids[0], "w@h")
    page = store.list_jobs(limit=3)
    assert [j.id for j in page.jobs] == ids[::-1][:3]
    assert page.next_cursor
    seen = [j.id for j in page.jobs]
    while page.next_cursor:
        page = store.list_jobs(limit=3, cursor=page.next_cursor)
        seen += [j.id for j in page.jobs]
    assert seen == ids[::-1]
    queued = store.list_jobs(status=Status.QUEUED, limit=50)
    assert [j.id for j in queued.jobs] == ids[1:][::-1] and queued.next_cursor is None
    assert [j.id for j in store.list_jobs(status=Status.PROCESSING).jobs] == [ids[0]]
    with pytest.raises(InvalidCursor):
        store.list_jobs(cursor="not-a-cursor")
    with pytest.raises(ValueError):
        store.list_jobs(limit=501)


def test_idempotency_key_returns_the_same_job_or_conflicts(store: JobStore) -> None:
    first, created = store.create(small_deck(), title="t", idempotency_key="k1", request_hash="h1")
    again, created_again = store.create(
        small_deck(), title="t", idempotency_key="k1", request_hash="h1"
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        store.create(small_deck(), title="t", idempotency_key="k1", request_hash="other")


def test_delete_older_than_removes_only_old_finished_jobs(store: JobStore) -> None:
    done, queued, failed = _new(store), _new(store), _new(store)
    for job_id in (done, failed):
        store.claim(job_id, "w@h")
        store.add_file(job_id, 1, "video.mp4", 1)
    store.complete(done, 1, video_url="v", thumbnail_url="t", slide_image_path="s")
    store.fail(failed, 1, "broken")
    ended = store.get(done).completed_at
    assert ended is not None
    assert store.delete_older_than(7, now=ended + timedelta(days=6)) == []
    deleted = store.delete_older_than(7, now=ended + timedelta(days=8))
    assert set(deleted) == {done, failed}
    assert store.get(queued).status is Status.QUEUED  # never lost to retention
    for job_id in (done, failed):
        with pytest.raises(JobNotFound):
            store.get(job_id)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_files")).scalar() == 0


def test_timestamps_are_utc_aware(store: JobStore) -> None:
    job_id = _new(store)
    job = store.claim(job_id, "w@h")
    assert job is not None
    for value in (job.created_at, job.started_at, job.last_heartbeat):
        assert value is not None and value.tzinfo is not None
        assert value.astimezone(UTC).utcoffset() == timedelta(0)


def _scheduled(store: JobStore, hours: float = 1.0, **extra: object) -> str:
    job, _ = store.create(
        small_deck(), title="later", run_at=utcnow() + timedelta(hours=hours), **extra
    )
    assert job.status is Status.SCHEDULED
    return job.id


def test_a_scheduled_job_is_cancelled_at_once_with_its_history(store: JobStore) -> None:
    job_id = _scheduled(store, callback_url="https://example.com/hook")
    cancelled = store.request_cancel(job_id)
    assert cancelled.status is Status.CANCELLED and cancelled.completed_at is not None
    assert not cancelled.cancel_requested
    assert cancelled.webhook_status == "pending" and cancelled.webhook_next_at is not None
    assert [(e.from_status, e.to_status, e.reason) for e in store.history(job_id)] == [
        (None, Status.SCHEDULED, "submitted"),
        (Status.SCHEDULED, Status.CANCELLED, "cancelled by request while scheduled"),
    ]
    with pytest.raises(InvalidTransition):
        store.request_cancel(job_id)
    with pytest.raises(JobNotFound):
        store.request_cancel(_scheduled(store), owner="someone-else")


def test_a_queued_job_is_still_cancelled_from_queued(store: JobStore) -> None:
    job_id = _new(store)
    assert store.request_cancel(job_id).status is Status.CANCELLED
    assert store.history(job_id)[-1].from_status is Status.QUEUED
    assert store.history(job_id)[-1].reason == "cancelled by request while queued"


def test_a_scheduled_job_is_not_retried_is_deleted_and_outlives_retention(
    store: JobStore,
) -> None:
    job_id = _scheduled(store, hours=24 * 20, priority=7)
    with pytest.raises(InvalidTransition, match="the job is scheduled"):
        store.retry(job_id)
    assert store.get(job_id).status is Status.SCHEDULED
    # Retention touches final jobs only, however old a scheduled one is.
    assert store.delete_older_than(0, now=utcnow() + timedelta(days=400)) == []
    assert store.get(job_id).priority == 7
    assert store.delete(job_id)
    with pytest.raises(JobNotFound):
        store.get(job_id)
