"""One long deck on many workers, with real processes (gunicorn, Celery
workers, PostgreSQL, Redis, ffmpeg): its segments rendered by different
workers, a worker killed mid-segment, a cancel that stops every segment.
The speed-up is measured by ``python -m bench split_render``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from storage import JobStore
from storage.files import SEGMENTS_DIR
from storage.models import SegmentStatus
from storage.segments import Segment, SegmentStore
from tests.support.media import probe
from tests.support.services import flush_run_index
from tests.support.stack import Stack, kill, make_stack, wait_until
from workers.video import frame_counts

pytestmark = pytest.mark.e2e

SLIDES = 18
SECONDS = 1.5
FPS = 24


def long_deck(slides: int = SLIDES) -> dict[str, Any]:
    return {
        "title": "A long deck",
        "slides": [
            {
                "title": f"Slide {n}",
                "body": "Revenue up 12% on last quarter, with every region but one growing.",
                "duration": SECONDS,
            }
            for n in range(1, slides + 1)
        ],
        "options": {"resolution": "1080p", "fps": FPS, "transition": "fade"},
    }


@pytest.fixture
def split_stack(pg_url: str, redis_url: str, tmp_path: Path) -> Any:
    flush_run_index(redis_url)
    stack = make_stack(
        pg_url,
        redis_url,
        tmp_path,
        SLIDEFARM_SPLIT_SLIDES="6",
        SLIDEFARM_SEGMENT_SLIDES="3",
    )
    try:
        yield stack, SegmentStore(JobStore.from_url(pg_url).db)
    finally:
        stack.stop_all()


def _segments(segments: SegmentStore, job_id: str) -> list[Segment]:
    return segments.of_job(job_id)


def _history(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    status, detail = stack.request("GET", f"/v1/jobs/{job_id}?include=history")
    assert status == 200, detail
    history: list[dict[str, Any]] = detail["history"]
    return history


def test_a_killed_workers_segment_is_redone_elsewhere_once(
    split_stack: tuple[Stack, SegmentStore],
) -> None:
    stack, segments = split_stack
    stack.start_api()
    workers = {n: stack.start_worker(f"{n}@host-{n}", concurrency=1) for n in "abc"}
    status, job = stack.request("POST", "/v1/jobs", long_deck())
    assert status == 202, job
    job_id = job["job_id"]
    # A worker that is not the job's own holds a segment half done: killed.
    seen_progress: list[float] = []
    victims: list[str] = []

    def victim_found() -> bool:
        _, now = stack.request("GET", f"/v1/jobs/{job_id}")
        seen_progress.append(now["progress"])
        victims[:] = [
            s.worker
            for s in _segments(segments, job_id)
            if s.status is SegmentStatus.PROCESSING
            and s.progress > 0.2
            and s.worker
            and s.worker != now.get("worker")
        ]
        return bool(victims)

    wait_until(victim_found, 120, "no segment in progress on a helping worker")
    victim = victims[0]
    kill(workers[victim.split("@")[0]])
    done = stack.wait_final(job_id, timeout=240)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1  # the job's own attempt was never lost

    # The video has every frame once, whoever rendered what.
    folder = Path(stack.env["SLIDEFARM_OUTPUT_DIR"]) / job_id
    meta, frames = probe(folder / "video.mp4")
    assert frames == sum(frame_counts([SECONDS] * SLIDES, FPS))
    assert tuple(meta["size"]) == (1920, 1080)
    history = _history(stack, job_id)
    reasons = [e["reason"] or "" for e in history]
    assert "split: 18 slides in 6 segments" in reasons
    for n in range(1, 7):
        label = f"segment {n} (slides {3 * n - 2}-{3 * n})"
        assert sum(r.startswith(f"{label}: completed by") for r in reasons) == 1, reasons
    lost = [r for r in reasons if "stopped heartbeating; queued again" in r]
    assert lost and victim in lost[0], reasons
    workers_done = {
        r.split("completed by ")[1].split(" ")[0] for r in reasons if "completed by" in r
    }
    assert len(workers_done) >= 2, reasons
    # Progress aggregated over the segments: it only grew.
    assert seen_progress == sorted(seen_progress)
    # Nothing of the segments is left.
    assert _segments(segments, job_id) == []
    wait_until(
        lambda: not (folder.parent / SEGMENTS_DIR / job_id).exists(),
        30,
        "segment files left behind",
    )


def test_a_cancel_stops_every_segment(split_stack: tuple[Stack, SegmentStore]) -> None:
    stack, segments = split_stack
    stack.start_api()
    for n in "ab":
        stack.start_worker(f"{n}@host-{n}", concurrency=1)
    status, job = stack.request("POST", "/v1/jobs", long_deck(30))
    assert status == 202, job
    job_id = job["job_id"]
    wait_until(
        lambda: sum(s.status is SegmentStatus.PROCESSING for s in _segments(segments, job_id)) == 2,
        120,
        "two segments never rendered at once",
    )
    status, _ = stack.request("POST", f"/v1/jobs/{job_id}/cancel")
    assert status in (200, 202)
    began = time.monotonic()
    done = stack.wait_final(job_id, timeout=60)
    assert done["status"] == "cancelled", done
    output = Path(stack.env["SLIDEFARM_OUTPUT_DIR"])
    wait_until(
        lambda: _segments(segments, job_id) == [] and not (output / SEGMENTS_DIR / job_id).exists(),
        30,
        "segments of a cancelled job left behind",
    )
    stopped = time.monotonic() - began
    assert not (output / job_id).exists()
    # Both workers are free again: a new job runs at once.
    status, small = stack.request("POST", "/v1/jobs", long_deck(2))
    assert status == 202
    assert stack.wait_final(small["job_id"], timeout=120)["status"] == "completed"
    print(f"\nsplit cancel: every segment stopped within {stopped:.1f} s")


def test_the_coordinators_host_killed_the_next_attempt_joins_what_was_done(
    split_stack: tuple[Stack, SegmentStore],
) -> None:
    stack, segments = split_stack
    stack.start_api()
    workers = {n: stack.start_worker(f"{n}@host-{n}", concurrency=1) for n in "abc"}
    status, job = stack.request("POST", "/v1/jobs", long_deck())
    assert status == 202, job
    job_id = job["job_id"]
    # Once some segments are done, the worker running the job's attempt dies.
    wait_until(
        lambda: sum(s.status is SegmentStatus.COMPLETED for s in _segments(segments, job_id)) >= 2,
        120,
        "no segment completed",
    )
    coordinator = stack.request("GET", f"/v1/jobs/{job_id}")[1]["worker"]
    done_before = {
        s.idx for s in _segments(segments, job_id) if s.status is SegmentStatus.COMPLETED
    }
    kill(workers[coordinator.split("@")[0]])
    done = stack.wait_final(job_id, timeout=240)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2 and done["worker"] != coordinator
    folder = Path(stack.env["SLIDEFARM_OUTPUT_DIR"]) / job_id
    _, frames = probe(folder / "video.mp4")
    assert frames == sum(frame_counts([SECONDS] * SLIDES, FPS))
    reasons = [e["reason"] or "" for e in _history(stack, job_id)]
    assert f"worker lost: {coordinator} stopped heartbeating" in reasons
    # The plan was kept, and what was done before was not done again.
    assert sum(r.startswith("split: 18 slides") for r in reasons) == 1, reasons
    assert any(r.startswith("split: the plan of an earlier attempt kept") for r in reasons)
    for idx in done_before:
        label = f"segment {idx + 1} "
        assert sum(r.startswith(label) and "completed by" in r for r in reasons) == 1
