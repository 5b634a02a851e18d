"""One long deck on many workers (docs/design.md, "Long decks").

A written deck of more than ``SLIDEFARM_SPLIT_SLIDES`` slides is split:
the job's attempt (the *coordinator*) checks the deck, makes its sound (the
slides' lengths depend on it), plans segments of about
``SLIDEFARM_SEGMENT_SLIDES`` consecutive slides (:mod:`storage.segments`)
and wakes a worker for each. Any worker, the coordinator among them, claims
a segment, draws its slides and encodes them (:func:`run_segment`) exactly
as the whole deck's encode would: the same x264 options, a keyframe on each
slide's first frame, fades from the whole deck's transitions (a slide fades
within its own frames, so a fade at a segment's edge is drawn whole). When
every segment is done, the coordinator joins their videos without
re-encoding (stream copy, the deck's chapters added), takes their slide
images, and the job goes on as an unsplit one would: the deck's one sound
track is mixed over the joined video, so narration and music run on across
the joins.

A segment is claimed, fenced, heartbeated, retried and recovered like a job;
its outputs count only once its completion is recorded, so a segment redone
after its worker died is in the video once. A cancel or a deletion of the
job stops every segment within one heartbeat.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image
from pydantic import ValidationError

from core.config import Settings
from core.deck import Deck
from storage import DatabaseUnavailable, Job, JobNotFound, JobStore, LeaseState, Stage, StorageError
from storage.files import (
    SEGMENT_VIDEO,
    SEGMENTS_DIR,
    THUMBNAIL_FILE,
    VIDEO_FILE,
    segment_dir,
    slide_file,
)
from storage.models import SegmentStatus
from storage.segments import Part, Segment, SegmentStore
from workers.assets import AssetUnavailable, JobAssets
from workers.fetch import ImageFetchFailed
from workers.fonts import font_chain
from workers.heartbeat import (
    AttemptLost,
    CancelRequested,
    DrainTimedOut,
    Lease,
    RenderTimedOut,
    StoreUnavailable,
)
from workers.images import resolve_images
from workers.slides import THEMES, missing_glyphs, render_slide, save_png, save_thumbnail
from workers.text import MissingGlyphs
from workers.video import EncodeError, EncodeStopped, encode_part, frame_counts, join

log = logging.getLogger("slidefarm.split")

T = TypeVar("T")

#: Seconds between the coordinator's looks at its segments while others render them.
POLL = 0.25
#: Of a segment's progress: drawing its slides, then encoding them.
DRAW_SHARE = 0.4
PROGRESS_EVERY = 0.5


class SegmentFailed(Exception):
    """A segment cannot be rendered: the job fails with its reason."""


def splits(deck: Deck, settings: Settings) -> bool:
    """Whether ``deck`` renders split: a written deck (not a document's
    pages) of more than ``SLIDEFARM_SPLIT_SLIDES`` slides, really rendered."""
    return (
        settings.split_slides > 0
        and deck.source is None
        and not settings.noop_render
        and len(deck.slides) > settings.split_slides
    )


def plan_parts(durations: Sequence[float], per_segment: int) -> list[Part]:
    """Consecutive runs of at most ``per_segment`` slides, as even as can be
    (41 slides by 8: six segments of 7, 7, 7, 7, 7 and 6)."""
    count = len(durations)
    segments = max(1, math.ceil(count / per_segment))
    base, extra = divmod(count, segments)
    parts, first = [], 0
    for n in range(segments):
        size = base + (1 if n < extra else 0)
        parts.append(Part(first, tuple(float(d) for d in durations[first : first + size])))
        first += size
    return parts


def _transitions(deck: Deck) -> list[str]:
    return [s.transition or deck.options.transition for s in deck.slides]


def _fade_color(deck: Deck) -> str:
    return "0x{:02x}{:02x}{:02x}".format(*THEMES[deck.options.theme].background)


# -- any worker: one segment --------------------------------------------------


class SegmentLease(Lease):
    """A segment attempt held by this worker: its heartbeat renews the
    segment (and says when its job was cancelled, ended or deleted)."""

    def __init__(
        self,
        segments: SegmentStore,
        store: JobStore,
        segment: Segment,
        settings: Settings,
        drain_overdue: Callable[[], bool] | None,
    ) -> None:
        super().__init__(
            store,
            segment.job_id,
            segment.attempts,
            settings.heartbeat_interval,
            max(settings.stale_after / 2, 1.0),
            timeout=settings.render_timeout,
            drain_overdue=drain_overdue,
            name=f"heartbeat-{segment.job_id[:8]}-{segment.idx}",
        )
        self.segments = segments
        self.segment = segment
        self._progress: float | None = None

    def renew(self) -> LeaseState:
        return self.segments.heartbeat(
            self.segment.job_id, self.segment.idx, self.attempt, self._progress
        )

    def progress(self, progress: float, stage: Stage) -> None:
        """Record the segment's progress (its stage is its job's)."""
        self._progress = progress
        self.write(self.renew)


class SegmentOutcome:
    COMPLETED = "completed"
    RETRYING = "retrying"
    FAILED = "failed"
    HANDED_BACK = "handed_back"
    STOPPED = "stopped"  # lost, or its job cancelled or gone: nothing to record


def _backoff(settings: Settings, attempt: int) -> float:
    return float(min(settings.retry_backoff * 2.0 ** max(attempt - 1, 0), 60.0))


def run_segment(
    store: JobStore,
    segment: Segment,
    settings: Settings,
    *,
    worker: str,
    drain_overdue: Callable[[], bool] | None = None,
) -> str:
    """Render the claimed attempt ``segment.attempts`` of ``segment``: its
    slides and its part of the video, into its own folder; record the
    outcome (fenced). Returns a :class:`SegmentOutcome`."""
    segments = SegmentStore(store.db)
    attempt = segment.attempts
    folder = segment_dir(settings.output_dir, segment.job_id, segment.idx, attempt)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.monotonic()
    done = False
    error: str | None = None
    outcome = SegmentOutcome.STOPPED
    try:
        lease = SegmentLease(segments, store, segment, settings, drain_overdue)
        with lease:
            frames = _render_segment(lease, store, segment, folder, settings)
            lease.finishing()
            output = folder.relative_to(settings.output_dir).as_posix()
            lease.finish(
                lambda: segments.complete(
                    segment, attempt, frames=frames, output=output, worker=worker
                )
            )
            done = True
            outcome = SegmentOutcome.COMPLETED
    except (AttemptLost, CancelRequested):
        outcome = SegmentOutcome.STOPPED
    except DrainTimedOut:
        outcome = _record(
            lambda: segments.retry(
                segment, attempt, f"worker {worker} draining", delay=0, worker=worker, counted=False
            ),
            SegmentOutcome.HANDED_BACK,
        )
    except (
        RenderTimedOut,
        SegmentFailed,
        MissingGlyphs,
        AssetUnavailable,
    ) as failure:
        error = reason = str(failure)
        outcome = _record(
            lambda: segments.fail(segment, attempt, reason, worker=worker),
            SegmentOutcome.FAILED,
        )
    except (ImageFetchFailed, StoreUnavailable, DatabaseUnavailable, EncodeError) as failure:
        error = str(failure)
        outcome = _retry(segments, segment, attempt, error, settings, worker)
    except JobNotFound:
        outcome = SegmentOutcome.STOPPED
    except Exception as failure:  # recorded below, never swallowed silently
        log.exception("job %s %s attempt %s crashed", segment.job_id, segment.label, attempt)
        error = f"render crashed: {type(failure).__name__}: {failure}"
        outcome = _retry(segments, segment, attempt, error, settings, worker)
    finally:
        if not done:
            shutil.rmtree(folder, ignore_errors=True)
    log.info(
        "job %s %s attempt %s: %s in %.2fs%s",
        segment.job_id,
        segment.label,
        attempt,
        outcome,
        time.monotonic() - started,
        f" ({error})" if error else "",
    )
    return outcome


def _retry(
    segments: SegmentStore,
    segment: Segment,
    attempt: int,
    error: str,
    settings: Settings,
    worker: str,
) -> str:
    delay = _backoff(settings, attempt)
    try:
        moved = segments.retry(segment, attempt, error, delay=delay, worker=worker)
    except StorageError:
        log.warning("segment retry not recorded (database unavailable)")
        return SegmentOutcome.STOPPED
    if moved is None:
        return SegmentOutcome.STOPPED
    return SegmentOutcome.FAILED if moved is SegmentStatus.FAILED else SegmentOutcome.RETRYING


def _record(write: Callable[[], object], outcome: str) -> str:
    """A segment's outcome, written (fenced); when the database cannot take
    it, the sweeper recovers the segment once its heartbeats stop."""
    try:
        return outcome if write() else SegmentOutcome.STOPPED
    except StorageError:
        log.warning("segment outcome %s not recorded (database unavailable)", outcome)
        return SegmentOutcome.STOPPED


def _render_segment(
    lease: SegmentLease, store: JobStore, segment: Segment, folder: Path, settings: Settings
) -> int:
    """Draw the segment's slides into ``folder``/slides and encode them into
    ``folder``/segment.mp4; the frame count."""
    job = store.get(segment.job_id)
    try:
        deck = Deck.model_validate(job.deck)
    except ValidationError as invalid:
        raise SegmentFailed(f"the stored deck is invalid: {invalid}") from invalid
    fonts = font_chain(settings.system_fonts)
    pictures = None
    chosen = deck.slides[segment.first_slide : segment.first_slide + segment.slides]
    if any(s.image is not None for s in chosen):
        # The job's attempt fetched every image URL once, before the plan:
        # these are its stored assets, found by URL.
        background = THEMES[deck.options.theme].background
        pictures = resolve_images(
            JobAssets(store, job, settings), deck, settings, background, lease.check
        )
    images: list[Path] = []
    last_write = time.monotonic()
    for n in range(segment.slides):
        lease.check()
        index = segment.first_slide + n
        image = render_slide(deck, index, fonts, pictures)
        path = folder / slide_file(index + 1)
        save_png(image, path)
        images.append(path)
        if time.monotonic() - last_write >= PROGRESS_EVERY:
            last_write = time.monotonic()
            lease.progress(DRAW_SHARE * (n + 1) / segment.slides, Stage.RENDERING_SLIDES)
    lease.progress(DRAW_SHARE, Stage.ENCODING_VIDEO)

    def on_progress(fraction: float) -> None:
        nonlocal last_write
        if time.monotonic() - last_write >= PROGRESS_EVERY:
            last_write = time.monotonic()
            lease.progress(DRAW_SHARE + (1 - DRAW_SHARE) * fraction, Stage.ENCODING_VIDEO)

    try:
        return encode_part(
            images,
            segment.first_slide,
            segment.durations,
            deck.options.fps,
            folder / SEGMENT_VIDEO,
            transition=_transitions(deck),
            preset=settings.x264_preset,
            fade_color=_fade_color(deck),
            on_progress=on_progress,
            should_stop=lambda: lease.should_stop,
        )
    except EncodeStopped:
        lease.check()
        raise


# -- the job's attempt: plan, help, wait, join ---------------------------------


@dataclass(frozen=True)
class Share:
    """The coordinator's share of its job's progress: from ``start`` while
    segments render, to ``end`` once they are joined."""

    start: float
    end: float


def check_deck(lease: Lease, job: Job, deck: Deck, settings: Settings, assets: JobAssets) -> None:
    """What an unsplit render checks before drawing, once for all segments:
    every glyph, and every image (URLs fetched once and kept as the job's
    assets, which the segments then find)."""
    fonts = font_chain(settings.system_fonts)
    if (problem := missing_glyphs(deck, fonts)) is not None:
        raise SegmentFailed(problem)
    if any(s.image is not None for s in deck.slides):
        background = THEMES[deck.options.theme].background
        resolve_images(assets, deck, settings, background, lease.check)


def render_split(
    lease: Lease,
    job: Job,
    deck: Deck,
    durations: Sequence[float],
    scratch: Path,
    settings: Settings,
    share: Share,
    *,
    worker: str,
    wake: Callable[[int], object] | None,
    drain_overdue: Callable[[], bool] | None,
) -> None:
    """Plan ``deck``'s segments (``durations``: each slide's seconds), have
    them rendered (this worker takes its own job's first), and join them:
    the slides, thumbnail and video (no sound yet) in ``scratch``."""
    store = lease.store
    segments = SegmentStore(store.db)
    parts = plan_parts(durations, settings.segment_slides)
    planned = lease_write(
        lease, lambda: segments.plan(job.id, lease.attempt, parts, settings.max_attempts)
    )
    if planned is None:
        raise AttemptLost()
    waiting = sum(1 for s in planned if s.status is SegmentStatus.QUEUED)
    log.info(
        "job %s: %d slides in %d segments (%d to render)",
        job.id,
        len(durations),
        len(planned),
        waiting,
    )
    lease.progress(share.start, Stage.RENDERING_SLIDES)
    if wake is not None and waiting > 1:
        wake(waiting - 1)  # this worker takes one itself
    last_progress = time.monotonic()
    while True:
        lease.check()
        mine = lease_write(lease, lambda: segments.claim(worker, job_id=job.id))
        if mine is not None:
            run_segment(store, mine, settings, worker=worker, drain_overdue=drain_overdue)
            continue
        current = lease_write(lease, lambda: segments.of_job(job.id))
        if len(current) != len(planned):
            lease.check()  # says why: cancelled, lost, or out of time
            raise AttemptLost()
        failed = [s for s in current if s.status is SegmentStatus.FAILED]
        if failed:
            raise SegmentFailed(f"{failed[0].label} failed: {failed[0].error}")
        if all(s.status is SegmentStatus.COMPLETED for s in current):
            break
        if time.monotonic() - last_progress >= PROGRESS_EVERY:
            last_progress = time.monotonic()
            total = sum(s.slides for s in current)
            done = sum(s.slides * s.progress for s in current) / total
            lease.progress(share.start + (share.end - share.start) * done, Stage.RENDERING_SLIDES)
        time.sleep(POLL)
    lease.progress(share.end, Stage.ENCODING_VIDEO)
    _join(lease, deck, durations, current, scratch, settings)


def lease_write(lease: Lease, action: Callable[[], T]) -> T:
    """A read or write of segments that rides out a database outage for the
    lease's patience (as the lease's own writes do)."""
    deadline = time.monotonic() + lease.patience
    delay = 0.1
    while True:
        try:
            return action()
        except DatabaseUnavailable as down:
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(str(down)) from down
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _join(
    lease: Lease,
    deck: Deck,
    durations: Sequence[float],
    current: list[Segment],
    scratch: Path,
    settings: Settings,
) -> None:
    """The segments' slides linked into ``scratch``, the thumbnail made from
    the first, and their videos joined by stream copy into one."""
    fps = deck.options.fps
    expected = frame_counts(durations, fps)
    made = sum(s.frames or 0 for s in current)
    if made != sum(expected):
        raise EncodeError(f"the segments made {made} frames, the deck has {sum(expected)}")
    folders = [settings.output_dir / (s.output or "") for s in current]
    files: list[tuple[str, int]] = []
    for segment, folder in zip(current, folders, strict=True):
        if not folder.is_dir() or SEGMENTS_DIR not in folder.parts:
            raise EncodeError(f"{segment.label}: its files are missing")
        for index in range(segment.first_slide, segment.first_slide + segment.slides):
            rel = slide_file(index + 1)
            target = scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(folder / rel, target)
            files.append((rel, target.stat().st_size))
    with Image.open(scratch / slide_file(1)) as first:
        files.append((THUMBNAIL_FILE, save_thumbnail(first, scratch / THUMBNAIL_FILE)))
    lease.add_files(files)
    video = scratch / VIDEO_FILE
    try:
        join(
            [folder / SEGMENT_VIDEO for folder in folders],
            fps,
            video,
            titles=[s.title for s in deck.slides],
            frames=expected,
            should_stop=lambda: lease.should_stop,
        )
    except EncodeStopped:
        lease.check()
        raise
    lease.add_file(VIDEO_FILE, video.stat().st_size)


def _link(source: Path, target: Path) -> None:
    """``target`` is ``source``'s file (a hard link: the segment keeps its
    copy, for another attempt of the job to join again if this one fails)."""
    try:
        os.link(source, target)
    except FileExistsError:
        target.unlink()
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
