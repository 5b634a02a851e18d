"""A long deck split into segments, in-process against the real store and
ffmpeg: the same video as unsplit, the segments of any worker, a dead
worker's segment redone, a cancel and a failed segment."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from core.config import Settings
from storage import JobStore, Status
from storage.files import SEGMENTS_DIR
from storage.segments import SegmentStore
from tests.support.decks import small_deck
from workers.pipeline import Outcome, run_attempt
from workers.split import plan_parts, run_segment
from workers.video import frame_counts

SLIDES = 10
DURATION = 0.5


@pytest.fixture
def split_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "heartbeat_interval": 0.05,
            "split_slides": 4,
            "segment_slides": 3,
            "retry_backoff": 0.0,
        }
    )


def fade_deck(slides: int = SLIDES) -> dict[str, object]:
    deck = small_deck(slides=slides, duration=DURATION, transition="fade", fps=24)
    # One slide comes in without a fade, at a segment's edge (slide 7 starts
    # segment 3): the slide before it must not fade out either.
    deck["slides"][6]["transition"] = "none"  # type: ignore[index]
    return deck


def frames_of(video: Path) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        reader = imageio_ffmpeg.read_frames(str(video))
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    return frames


class Helper:
    """Another worker, claiming any job's segments until stopped."""

    def __init__(self, store: JobStore, settings: Settings, name: str = "helper@h") -> None:
        self.store, self.settings, self.name = store, settings, name
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        segments = SegmentStore(self.store.db)
        while not self.stop.is_set():
            segment = segments.claim(self.name)
            if segment is None:
                time.sleep(0.02)
                continue
            run_segment(self.store, segment, self.settings, worker=self.name)

    def __enter__(self) -> Helper:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def helper(store: JobStore, split_settings: Settings) -> Iterator[Helper]:
    with Helper(store, split_settings) as running:
        yield running


def test_segments_are_as_even_as_can_be() -> None:
    assert [p.slides for p in plan_parts([1.0] * 41, 8)] == [7, 7, 7, 7, 7, 6]
    assert [p.slides for p in plan_parts([1.0] * 120, 8)] == [8] * 15
    parts = plan_parts([1.0, 2.0, 3.0, 4.0, 5.0], 2)
    assert [(p.first_slide, p.durations) for p in parts] == [
        (0, (1.0, 2.0)),
        (2, (3.0, 4.0)),
        (4, (5.0,)),
    ]


def test_a_split_deck_renders_the_same_video_as_unsplit(
    store: JobStore, split_settings: Settings, helper: Helper
) -> None:
    job, _ = store.create(fade_deck(), title="long")
    claimed = store.claim(job.id, "coord@h")
    assert claimed is not None
    result = run_attempt(store, claimed, split_settings, worker="coord@h")
    assert result.outcome is Outcome.COMPLETED, result
    helper.stop.set()

    whole, _ = store.create(fade_deck(), title="whole")
    unsplit = store.claim(whole.id, "w@h")
    assert unsplit is not None
    plain = split_settings.model_copy(update={"split_slides": 0})
    assert run_attempt(store, unsplit, plain, worker="w@h").outcome is Outcome.COMPLETED

    done = store.get(job.id)
    assert done.status is Status.COMPLETED and done.progress == 1.0
    assert sorted(done.created_files) == sorted(store.get(whole.id).created_files)
    out = split_settings.output_dir
    for n in range(1, SLIDES + 1):  # the slides themselves: byte for byte
        name = f"slides/{n:03d}.png"
        assert (out / job.id / name).read_bytes() == (out / whole.id / name).read_bytes()
    split_frames = frames_of(out / job.id / "video.mp4")
    plain_frames = frames_of(out / whole.id / "video.mp4")
    counts = frame_counts([DURATION] * SLIDES, 24)
    assert len(split_frames) == len(plain_frames) == sum(counts)
    # Each slide's midpoint, and the frames around every segment edge (fades
    # drawn whole on both sides), look the same (lossy encodes: close).
    start = 0
    checked = []
    for count in counts:
        checked += [start, start + count // 2, start + count - 1]
        start += count
    for index in checked:
        diff = np.abs(split_frames[index].astype(int) - plain_frames[index].astype(int)).mean()
        assert diff < 2.0, (index, diff)
    # A fade out really is there where it should be: the last frame of slide
    # 1 is all background (it faded out), and slide 6's (before the unfaded
    # slide 7, at a segment's edge) still shows the slide.
    first_mid, first_end = split_frames[counts[0] // 2], split_frames[counts[0] - 1]
    assert first_end.std() < first_mid.std() / 2
    sixth_end = sum(counts[:6]) - 1
    assert split_frames[sixth_end].std() > split_frames[sixth_end - counts[5] // 2].std() * 0.9

    # Both workers rendered segments, the history says which, and nothing is left.
    history = [(e.worker, e.reason or "") for e in store.history(job.id)]
    done_by = {w for w, r in history if "completed by" in r and r.startswith("segment")}
    assert done_by == {"coord@h", "helper@h"}, history
    assert ("coord@h", "split: 10 slides in 4 segments") in history
    assert SegmentStore(store.db).of_job(job.id) == []
    assert not (out / SEGMENTS_DIR / job.id).exists()


def test_a_dead_workers_segment_is_redone_once(store: JobStore, split_settings: Settings) -> None:
    segments = SegmentStore(store.db)
    job, _ = store.create(fade_deck(), title="long")
    claimed = store.claim(job.id, "coord@h")
    assert claimed is not None
    # The plan the job's attempt will make, made first, and one segment
    # claimed by a worker that dies at once (it never heartbeats).
    parts = plan_parts([DURATION] * SLIDES, split_settings.segment_slides)
    assert segments.plan(job.id, 1, parts, 3) is not None
    dead = segments.claim("dead@h", job_id=job.id)
    assert dead is not None and dead.idx == 0
    stop = threading.Event()

    def sweeper() -> None:
        while not stop.wait(0.1):
            segments.recover_stale(0.5)

    thread = threading.Thread(target=sweeper, daemon=True)
    thread.start()
    try:
        result = run_attempt(store, claimed, split_settings, worker="coord@h")
    finally:
        stop.set()
        thread.join()
    assert result.outcome is Outcome.COMPLETED, result
    # Its late completion changes nothing.
    assert not segments.complete(dead, 1, frames=1, output="late", worker="dead@h")
    video = split_settings.output_dir / job.id / "video.mp4"
    assert len(frames_of(video)) == sum(frame_counts([DURATION] * SLIDES, 24))
    reasons = [e.reason or "" for e in store.history(job.id)]
    assert any("segment 1 (slides 1-3): dead@h stopped heartbeating" in r for r in reasons)
    assert sum(r.startswith("segment 1 (slides 1-3): completed") for r in reasons) == 1


def test_a_cancel_stops_every_segment(
    store: JobStore, split_settings: Settings, helper: Helper
) -> None:
    deck = fade_deck(slides=12)
    deck["options"] = {"resolution": "1080p", "fps": 30, "transition": "fade"}  # slower
    for slide in deck["slides"]:  # type: ignore[attr-defined]
        slide["duration"] = 4.0
    job, _ = store.create(deck, title="long")
    claimed = store.claim(job.id, "coord@h")
    assert claimed is not None
    results = []
    thread = threading.Thread(
        target=lambda: results.append(run_attempt(store, claimed, split_settings, worker="coord@h"))
    )
    thread.start()
    segments = SegmentStore(store.db)
    deadline = time.monotonic() + 60
    while not any(s.worker == "helper@h" for s in segments.of_job(job.id)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    store.request_cancel(job.id)
    thread.join(timeout=60)
    assert results and results[0].outcome is Outcome.CANCELLED
    assert store.get(job.id).status is Status.CANCELLED
    assert segments.of_job(job.id) == []
    time.sleep(0.5)  # the helper's segment stopped within a heartbeat
    out = split_settings.output_dir
    assert not (out / SEGMENTS_DIR / job.id).exists() or not any(
        (out / SEGMENTS_DIR / job.id).iterdir()
    )
    assert not (out / job.id).exists()


def test_a_segment_that_cannot_render_fails_the_job(
    store: JobStore, split_settings: Settings
) -> None:
    segments = SegmentStore(store.db)
    job, _ = store.create(fade_deck(), title="long")
    claimed = store.claim(job.id, "coord@h")
    assert claimed is not None
    parts = plan_parts([DURATION] * SLIDES, split_settings.segment_slides)
    assert segments.plan(job.id, 1, parts, 3) is not None
    broken = segments.claim("other@h", job_id=job.id)
    assert broken is not None
    assert segments.fail(broken, 1, "ffmpeg says no", worker="other@h")
    result = run_attempt(store, claimed, split_settings, worker="coord@h")
    assert result.outcome is Outcome.FAILED
    failed = store.get(job.id)
    assert failed.error == "segment 1 (slides 1-3) failed: ffmpeg says no"
    assert segments.of_job(job.id) == []
    assert not (split_settings.output_dir / SEGMENTS_DIR / job.id).exists()
