"""SLIDEFARM_RENDER_TIMEOUT: an attempt that renders too long fails, readably,
leaves no files and no ffmpeg behind, and is not retried.

Real renders through :func:`workers.pipeline.run_attempt` on both backends:
a deck whose encode takes many seconds (1080p, fades, minutes of video) under
a two-second timeout, and one with many slides under a one-second one, so the
deadline strikes once inside ffmpeg and once while slides are drawn.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from storage import JobStore, Stage, Status
from storage.segments import SegmentStore
from tests.support.decks import small_deck
from workers.pipeline import Outcome, run_attempt

# Serial: where each deadline strikes (and how late the attempt ends) is a matter
# of CPU speed against seconds of wall time.
pytestmark = pytest.mark.serial


def long_encode_deck() -> dict[str, Any]:
    """Six 1080p slides with fades lasting a minute each: under a second to draw,
    well over ten seconds to encode."""
    return {
        "title": "Too long to encode",
        "slides": [
            {"title": f"Slide {n}", "body": "x" * 200, "duration": 60.0} for n in range(1, 7)
        ],
        "options": {"resolution": "1080p", "transition": "fade", "fps": 30},
    }


def many_slides_deck() -> dict[str, Any]:
    """Two hundred 1080p slides: seconds of drawing before any encode."""
    return {
        "title": "Too many to draw",
        "slides": [
            {"title": f"Slide {n}", "body": "y" * 400, "bullets": ["z" * 100] * 6}
            for n in range(1, 201)
        ],
        "options": {"resolution": "1080p"},
    }


def processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (its ffmpeg, if any)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in raw and state != "Z":
            found.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return found


def files_of(settings: Settings, job_id: str) -> list[Path]:
    """Every file or folder of ``job_id`` in the output folder, published or scratch."""
    if not settings.output_dir.exists():
        return []
    return [p for p in settings.output_dir.rglob("*") if job_id in str(p)]


def run_with_timeout(
    store: JobStore,
    settings: Settings,
    deck: dict[str, Any],
    timeout: float,
    *,
    split_slides: int = 0,
) -> tuple[str, float]:
    """One attempt of ``deck`` with ``timeout``; unsplit unless
    ``split_slides`` says (a long deck then renders in segments)."""
    job, _ = store.create(deck, title=deck["title"])
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    worker_settings = settings.model_copy(
        update={
            "render_timeout": timeout,
            "heartbeat_interval": 0.1,
            "split_slides": split_slides,
        }
    )
    started = time.monotonic()
    result = run_attempt(store, claimed, worker_settings)
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.FAILED, result
    return job.id, elapsed


def assert_timed_out(
    store: JobStore, settings: Settings, job_id: str, timeout: float, elapsed: float
) -> None:
    failed = store.get(job_id)
    assert failed.status is Status.FAILED
    assert failed.error == f"render timed out after {timeout:.1f} s (SLIDEFARM_RENDER_TIMEOUT)"
    # Not retried: one attempt, and the failure is final (no requeue in its history).
    assert failed.attempts == 1 and failed.not_before is None
    # The job's own transitions (a split job's segment rows stay processing).
    moves = [e for e in store.history(job_id) if e.from_status is not e.to_status]
    assert [e.to_status for e in moves] == [
        Status.QUEUED,
        Status.PROCESSING,
        Status.FAILED,
    ]
    assert failed.created_files == []
    assert files_of(settings, job_id) == []
    assert processes_naming(job_id) == []
    late = elapsed - timeout
    print(
        f"\ntimeout {timeout}s: recorded failed {late:.3f}s after the deadline "
        f"(stage {failed.stage.value})"
    )
    assert late < 3.0, f"the timed-out attempt took {late:.2f}s past its deadline"


def test_a_render_past_the_timeout_in_ffmpeg_fails_and_leaves_nothing(
    store: JobStore, settings: Settings
) -> None:
    timeout = 2.0
    job_id, elapsed = run_with_timeout(store, settings, long_encode_deck(), timeout)
    # The deadline struck while ffmpeg encoded (the ffmpeg watchdog killed it).
    assert store.get(job_id).stage is Stage.ENCODING_VIDEO, store.get(job_id)
    assert_timed_out(store, settings, job_id, timeout, elapsed)


def test_a_render_past_the_timeout_while_drawing_fails_and_leaves_nothing(
    store: JobStore, settings: Settings
) -> None:
    timeout = 1.0
    job_id, elapsed = run_with_timeout(store, settings, many_slides_deck(), timeout)
    assert store.get(job_id).stage is Stage.RENDERING_SLIDES, store.get(job_id)
    assert_timed_out(store, settings, job_id, timeout, elapsed)


@pytest.mark.parametrize("timeout", [30.0])
def test_a_render_within_the_timeout_completes(
    store: JobStore, settings: Settings, timeout: float
) -> None:
    job, _ = store.create(small_deck(slides=2, duration=0.5), title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    worker_settings = settings.model_copy(
        update={"render_timeout": timeout, "heartbeat_interval": 0.1}
    )
    assert run_attempt(store, claimed, worker_settings).outcome is Outcome.COMPLETED
    done = store.get(job.id)
    assert done.status is Status.COMPLETED and done.error is None
    assert (settings.output_dir / job.id / "video.mp4").stat().st_size > 0


def test_the_timeout_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIDEFARM_RENDER_TIMEOUT", "2.5")
    assert Settings().render_timeout == 2.5
    monkeypatch.delenv("SLIDEFARM_RENDER_TIMEOUT")
    assert Settings().render_timeout == 1800.0


def test_a_split_render_past_the_timeout_fails_and_leaves_nothing(
    store: JobStore, settings: Settings
) -> None:
    """The deadline is the job's: it strikes the segment this worker renders
    (failed, so its job is), and every segment's row and folder go."""
    timeout = 1.0
    job_id, elapsed = run_with_timeout(
        store, settings, many_slides_deck(), timeout, split_slides=40
    )
    reasons = [e.reason or "" for e in store.history(job_id)]
    assert reasons[2].startswith("split: 200 slides in 25 segments"), reasons
    assert any(
        r.endswith("failed: render timed out after 1.0 s (SLIDEFARM_RENDER_TIMEOUT)")
        for r in reasons
    )
    assert SegmentStore(store.db).of_job(job_id) == []
    assert_timed_out(store, settings, job_id, timeout, elapsed)
