"""One attempt in-process against the real store: publish, fencing, failure,
heartbeats."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.config import Settings
from storage import JobStore, Stage, Status
from storage.files import published_attempt
from tests.support.decks import small_deck
from workers.heartbeat import AttemptLost, Lease
from workers.pipeline import Outcome, _publish, run_attempt


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"heartbeat_interval": 0.05})


def leftovers(settings: Settings) -> list[Path]:
    partial = settings.output_dir / ".partial"
    return list(partial.iterdir()) if partial.exists() else []


def test_attempt_publishes_and_completes(store: JobStore, worker_settings: Settings) -> None:
    job, _ = store.create(small_deck(slides=3, duration=0.5), title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    assert run_attempt(store, claimed, worker_settings).outcome is Outcome.COMPLETED
    done = store.get(job.id)
    assert done.status is Status.COMPLETED and done.progress == 1.0 and done.stage is Stage.DONE
    assert done.slide_image_path == "slides"
    assert sorted(done.created_files) == [
        "slides/001.png",
        "slides/002.png",
        "slides/003.png",
        "thumbnail.jpg",
        "video.mp4",
    ]
    folder = worker_settings.output_dir / job.id
    for f in done.files:
        assert (folder / f.path).stat().st_size == f.size_bytes > 0
    assert leftovers(worker_settings) == []


def test_lost_attempt_writes_nothing_and_leaves_no_files(
    store: JobStore, worker_settings: Settings
) -> None:
    job, _ = store.create(small_deck(slides=2), title="t")
    stale = store.claim(job.id, "old@h")
    assert stale is not None
    store.requeue(job.id, 1)
    newer = store.claim(job.id, "new@h")
    assert newer is not None and newer.attempts == 2
    assert run_attempt(store, stale, worker_settings).outcome is Outcome.LOST
    current = store.get(job.id)
    assert current.status is Status.PROCESSING and current.worker == "new@h"
    assert current.progress == 0.0 and current.created_files == []
    assert not (worker_settings.output_dir / job.id).exists()
    assert leftovers(worker_settings) == []


def test_unrenderable_deck_fails_with_a_readable_error(
    store: JobStore, worker_settings: Settings
) -> None:
    job, _ = store.create({"title": "t", "slides": []}, title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    assert run_attempt(store, claimed, worker_settings).outcome is Outcome.FAILED
    failed = store.get(job.id)
    assert failed.status is Status.FAILED
    assert failed.error and "deck is invalid" in failed.error
    assert not (worker_settings.output_dir / job.id).exists()
    assert leftovers(worker_settings) == []


def test_heartbeat_renews_the_lease_and_notices_its_loss(store: JobStore) -> None:
    job, _ = store.create(small_deck(), title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    first = claimed.last_heartbeat
    assert first is not None
    with Lease(store, job.id, 1, interval=0.05) as lease:
        time.sleep(0.3)
        renewed = store.get(job.id).last_heartbeat
        assert renewed is not None and renewed > first
        assert not lease.lost
        store.requeue(job.id, 1)
        deadline = time.monotonic() + 5
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.lost
        with pytest.raises(AttemptLost):
            lease.check()


def test_a_heartbeat_racing_the_completion_never_makes_it_a_lost_attempt(
    store: JobStore,
) -> None:
    """The completion's commit leaves the job no longer processing: a
    heartbeat landing between that commit and the write's own check used to
    call the lease lost, so a completed job's attempt ended "lost" (seen once
    in a while with 50 ms heartbeats). The last write stops heartbeats first."""

    def slow_completion(job_id: str) -> bool:
        done = store.complete(
            job_id,
            1,
            video_url="v",
            thumbnail_url="t",
            slide_image_path="slides",
            render_seconds=0.1,
            encode_seconds=0.1,
        )
        time.sleep(0.3)  # six heartbeats' time after the commit
        return done

    job, _ = store.create(small_deck(), title="t")
    assert store.claim(job.id, "w@h") is not None
    with Lease(store, job.id, 1, interval=0.05) as lease:
        lease.finish(lambda: slow_completion(job.id))
        assert not lease.lost
    assert store.get(job.id).status is Status.COMPLETED

    # The old way, a plain write, shows the race the test guards against.
    job, _ = store.create(small_deck(), title="t")
    assert store.claim(job.id, "w@h") is not None
    with Lease(store, job.id, 1, interval=0.05) as lease, pytest.raises(AttemptLost):
        lease.write(lambda: slow_completion(job.id))


def _scratch(settings: Settings, job_id: str, attempt: int, content: bytes) -> Path:
    folder = settings.output_dir / ".partial" / f"{job_id}.{attempt}"
    folder.mkdir(parents=True)
    (folder / "video.mp4").write_bytes(content)
    return folder


def test_a_late_publish_never_replaces_a_newer_attempts_files(settings: Settings) -> None:
    job_id = "0b8d4a6e-1c1d-4c55-9a39-8f0d7d1f2a10"
    newer = _scratch(settings, job_id, 2, b"attempt two")
    older = _scratch(settings, job_id, 1, b"attempt one")
    _publish(settings, job_id, 2, newer)
    with pytest.raises(AttemptLost):
        _publish(settings, job_id, 1, older)
    final = settings.output_dir / job_id
    assert (final / "video.mp4").read_bytes() == b"attempt two"
    assert published_attempt(final) == 2


def test_a_newer_publish_replaces_an_older_attempts_files(settings: Settings) -> None:
    job_id = "0b8d4a6e-1c1d-4c55-9a39-8f0d7d1f2a11"
    _publish(settings, job_id, 1, _scratch(settings, job_id, 1, b"attempt one"))
    _publish(settings, job_id, 3, _scratch(settings, job_id, 3, b"attempt three"))
    final = settings.output_dir / job_id
    assert (final / "video.mp4").read_bytes() == b"attempt three"
    assert published_attempt(final) == 3
    assert leftovers(settings) == []


def test_cancel_requested_mid_render_ends_cancelled(
    store: JobStore, worker_settings: Settings
) -> None:
    job, _ = store.create(small_deck(slides=2), title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    store.request_cancel(job.id)
    assert run_attempt(store, claimed, worker_settings).outcome is Outcome.CANCELLED
    cancelled = store.get(job.id)
    assert cancelled.status is Status.CANCELLED and cancelled.created_files == []
    assert not (worker_settings.output_dir / job.id).exists()
    assert leftovers(worker_settings) == []


def test_transient_failure_requeues_with_backoff_then_gives_up(
    store: JobStore, worker_settings: Settings
) -> None:
    # A real ffmpeg failure: an x264 preset that does not exist.
    settings = worker_settings.model_copy(
        update={"retry_backoff": 0.0, "x264_preset": "no-such-preset"}
    )
    job, _ = store.create(small_deck(slides=1), title="t", attempt_limit=2)
    first = store.claim(job.id, "w@h")
    assert first is not None
    result = run_attempt(store, first, settings)
    assert result.outcome is Outcome.RETRYING and result.retry_in is not None
    queued = store.get(job.id)
    assert queued.status is Status.QUEUED and "ffmpeg failed" in (queued.error or "")
    second = store.claim(job.id, "w@h")
    assert second is not None and second.attempts == 2
    assert run_attempt(store, second, settings).outcome is Outcome.FAILED
    failed = store.get(job.id)
    assert failed.status is Status.FAILED
    assert failed.error and failed.error.startswith("gave up after 2 attempts: ffmpeg failed")
    assert leftovers(settings) == []


def test_a_drain_run_out_mid_render_hands_the_job_back(
    store: JobStore, worker_settings: Settings
) -> None:
    job, _ = store.create(small_deck(slides=3, duration=0.5), title="t", attempt_limit=1)
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    checks: list[bool] = []

    def overdue() -> bool:  # runs out after the render began
        checks.append(True)
        return len(checks) > 2

    result = run_attempt(store, claimed, worker_settings, worker="w@h", drain_overdue=overdue)
    assert result.outcome is Outcome.HANDED_BACK
    back = store.get(job.id)
    assert (back.status, back.attempts, back.attempt_limit) == (Status.QUEUED, 1, 2)
    assert back.not_before is None
    assert store.history(job.id)[-1].reason == "handed back: worker w@h draining"
    assert leftovers(worker_settings) == []
    assert not (worker_settings.output_dir / job.id).exists()


def test_a_drain_lets_a_finished_render_complete(
    store: JobStore, worker_settings: Settings
) -> None:
    job, _ = store.create(small_deck(slides=1, duration=0.5), title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    drained = False

    def overdue() -> bool:
        return drained

    real_complete = store.complete

    def complete_after_the_drain_ran_out(*args: object, **kwargs: object) -> object:
        nonlocal drained
        drained = True  # ran out while publishing: the finished work still counts
        return real_complete(*args, **kwargs)  # type: ignore[arg-type]

    store.complete = complete_after_the_drain_ran_out  # type: ignore[method-assign]
    result = run_attempt(store, claimed, worker_settings, worker="w@h", drain_overdue=overdue)
    assert result.outcome is Outcome.COMPLETED
    assert store.get(job.id).status is Status.COMPLETED
