"""One attempt at one job: render slides, thumbnail and video, then publish.

Outputs are written under an attempt-scoped folder
(``<output>/.partial/<job_id>.<attempt>``) and renamed into place
(``<output>/<job_id>``) before the job is marked completed, so nobody ever
reads a half-written file. The outcome is decided in one place,
:func:`run_attempt`: completed, failed (files removed) or lost (files
removed, the job left alone for the attempt that replaced this one).
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from pydantic import ValidationError

from storage import Job, JobStore, Settings, Stage
from storage.deck import Deck
from storage.files import (
    SLIDES_DIR,
    THUMBNAIL_FILE,
    VIDEO_FILE,
    job_dir,
    partial_dir,
    remove_job_files,
    slide_file,
)
from workers.heartbeat import AttemptLost, Lease
from workers.slides import render_slide, save_png, save_thumbnail
from workers.video import EncodeError, EncodeStopped, encode

log = logging.getLogger(__name__)

# Progress budget of an attempt: slides, then the encode, then publishing.
SLIDES_SHARE = 0.45
ENCODE_SHARE = 0.50
PROGRESS_EVERY = 0.5  # seconds between progress writes during the encode


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"


class RenderError(Exception):
    """The deck could not be rendered."""


def _publish(settings: Settings, job_id: str, scratch: Path) -> None:
    final = job_dir(settings.output_dir, job_id)
    if final.exists():  # a previous attempt's leftovers: move aside, then drop
        trash = scratch.parent / f"{job_id}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(scratch, final)


def _render(lease: Lease, deck: Deck, scratch: Path, settings: Settings) -> None:
    count = len(deck.slides)
    images: list[Path] = []
    for i in range(count):
        lease.check()
        image = render_slide(deck, i)
        rel = slide_file(i + 1)
        size = save_png(image, scratch / rel)
        lease.add_file(rel, size)
        if i == 0:
            lease.add_file(THUMBNAIL_FILE, save_thumbnail(image, scratch / THUMBNAIL_FILE))
        images.append(scratch / rel)
        lease.progress(SLIDES_SHARE * (i + 1) / count, Stage.RENDERING_SLIDES)

    lease.progress(SLIDES_SHARE, Stage.ENCODING_VIDEO)
    last_write = time.monotonic()

    def on_progress(fraction: float) -> None:
        nonlocal last_write
        if time.monotonic() - last_write >= PROGRESS_EVERY:
            last_write = time.monotonic()
            lease.progress(SLIDES_SHARE + ENCODE_SHARE * fraction, Stage.ENCODING_VIDEO)

    video = scratch / VIDEO_FILE
    try:
        encode(images, [s.duration for s in deck.slides], deck.options.fps, video,
               transition=deck.options.transition, preset=settings.x264_preset,
               on_progress=on_progress, should_stop=lambda: lease.lost)
    except EncodeStopped as stopped:
        raise AttemptLost() from stopped
    lease.add_file(VIDEO_FILE, video.stat().st_size)
    lease.progress(SLIDES_SHARE + ENCODE_SHARE, Stage.FINALIZING)


def run_attempt(store: JobStore, job: Job, settings: Settings) -> Outcome:
    """Render the claimed attempt ``job.attempts`` of ``job`` and record the outcome."""
    attempt = job.attempts
    scratch = partial_dir(settings.output_dir, job.id, attempt)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    started = time.monotonic()
    outcome = Outcome.FAILED
    error: str | None = None
    try:
        with Lease(store, job.id, attempt, settings.heartbeat_interval) as lease:
            try:
                deck = Deck.model_validate(job.deck)
            except ValidationError as invalid:
                raise RenderError(f"the stored deck is invalid: {invalid}") from invalid
            _render(lease, deck, scratch, settings)
            lease.check()
            _publish(settings, job.id, scratch)
            done = store.complete(
                job.id, attempt,
                video_url=f"/v1/jobs/{job.id}/video",
                thumbnail_url=f"/v1/jobs/{job.id}/thumbnail",
                slide_image_path=SLIDES_DIR,
            )
            if not done:
                _unpublish_stale(store, settings, job.id, attempt)
                raise AttemptLost()
            outcome = Outcome.COMPLETED
    except AttemptLost:
        outcome = Outcome.LOST
    except (RenderError, EncodeError) as failure:
        error = str(failure)
    except Exception as failure:  # decided and recorded below, never swallowed silently
        log.exception("job %s attempt %s crashed", job.id, attempt)
        error = f"render crashed: {type(failure).__name__}: {failure}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if outcome is Outcome.FAILED:
        assert error is not None
        if store.fail(job.id, attempt, error):
            remove_job_files(settings.output_dir, job.id)
        else:
            outcome = Outcome.LOST
    log.info("job %s attempt %s: %s in %.2fs%s", job.id, attempt, outcome,
             time.monotonic() - started, f" ({error})" if error else "")
    return outcome


def _unpublish_stale(store: JobStore, settings: Settings, job_id: str, attempt: int) -> None:
    """Our publish raced a lost lease: take our files back unless another
    attempt has completed the job since (then its files are the ones in place)."""
    try:
        current = store.get(job_id)
    except Exception:
        current = None
    if current is None or current.status != "completed":
        shutil.rmtree(job_dir(settings.output_dir, job_id), ignore_errors=True)
    else:
        log.error("job %s: attempt %s published after losing its lease", job_id, attempt)
