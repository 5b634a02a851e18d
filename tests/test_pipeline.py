"""One attempt in-process against the real store: publish, fencing, failure,
heartbeats."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from storage import JobStore, Settings, Stage, Status
from tests.conftest import small_deck
from workers.heartbeat import AttemptLost, Lease
from workers.pipeline import Outcome, run_attempt


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
    assert sorted(done.created_files) == ["slides/001.png", "slides/002.png", "slides/003.png",
                                          "thumbnail.jpg", "video.mp4"]
    folder = worker_settings.output_dir / job.id
    for f in done.files:
        assert (folder / f.path).stat().st_size == f.size_bytes > 0
    assert leftovers(worker_settings) == []


def test_lost_attempt_writes_nothing_and_leaves_no_files(store: JobStore,
                                                          worker_settings: Settings) -> None:
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


def test_unrenderable_deck_fails_with_a_readable_error(store: JobStore,
                                                       worker_settings: Settings) -> None:
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
