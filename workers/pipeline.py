"""One attempt at one job: render slides, thumbnail and video, then publish.

Outputs are written under an attempt-scoped folder
(``<output>/.partial/<job_id>.<attempt>``) and renamed into place
(``<output>/<job_id>``) before the job is marked completed, so nobody ever
reads a half-written file. The outcome is decided in one place,
:func:`run_attempt`:

- completed: files in place, the job completed;
- failed: a deterministic error (the deck cannot be rendered, an image it
  names cannot be used or its URL is refused), or a
  transient one with no attempts left; no files left behind;
- retrying: a transient error (database or broker hiccup, ffmpeg crash, an
  image URL's network failure, 5xx or time limit) with
  attempts left; the job is queued again after an exponential backoff;
- cancelled: a cancel was asked for; files removed;
- timed out: the attempt rendered longer than ``SLIDEFARM_RENDER_TIMEOUT``;
  ffmpeg is killed, the job failed (not retried: it would time out again) and
  its files removed;
- handed back: the worker is stopping and its drain
  (``SLIDEFARM_DRAIN_TIMEOUT``) ran out before the render finished; ffmpeg
  is killed, the files removed and the job queued again at once, the
  attempt not counted against its budget;
- lost: another attempt holds the job (or it was deleted); this one removes
  its files and touches nothing else.
"""

from __future__ import annotations

import enum
import errno
import json
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from core.config import Settings
from core.deck import Deck
from core.sniff import AUDIO_KINDS, DOCUMENT_KINDS
from storage import DatabaseUnavailable, Job, JobNotFound, JobStore, Stage, Status, StorageError
from storage.assets import Asset
from storage.files import (
    ATTEMPT_MARKER,
    SLIDES_DIR,
    SUBTITLES_SRT,
    SUBTITLES_VTT,
    THUMBNAIL_FILE,
    VIDEO_FILE,
    job_dir,
    partial_dir,
    published_attempt,
    remove_earlier_attempts,
    remove_job_files,
    remove_segment_files,
    slide_file,
)
from storage.segments import SegmentStore
from workers.assets import AssetUnavailable, JobAssets
from workers.audio import (
    Music,
    SlideSound,
    SoundError,
    add_sound,
    decode,
    language_tag,
    slide_durations,
    subrip,
    timed_cues,
    webvtt,
)
from workers.documents import (
    MANIFEST_FILE,
    DocumentError,
    DocumentStopped,
    check_pages,
    expand,
    manifest,
    open_document,
    render_pages,
)
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
from workers.speech import SpeechStopped, speak
from workers.split import SegmentFailed, Share, check_deck, render_split, splits
from workers.text import MissingGlyphs
from workers.video import EncodeError, EncodeStopped, encode, frame_counts
from workers.voices import (
    NO_ENGINE,
    SynthesisFailed,
    VoiceUnavailable,
    available_voices,
    default_voice,
    record_synthesized,
)

log = logging.getLogger("slidefarm.pipeline")

# Progress budget of an attempt: slides, then the encode, then publishing.
SLIDES_SHARE = 0.45
ENCODE_SHARE = 0.50
PROGRESS_EVERY = 0.5  # seconds between progress writes during the encode
MAX_BACKOFF = 300.0


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"
    HANDED_BACK = "handed_back"
    LOST = "lost"


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    error: str | None = None
    retry_in: float | None = None


class RenderError(Exception):
    """The deck could not be rendered (retrying would not help)."""


@dataclass
class _Timings:
    render: float | None = None
    encode: float | None = None
    synth: float | None = None
    mix: float | None = None


@dataclass(frozen=True)
class _Budget:
    """Shares of an attempt's progress: slides, synthesis, encode, mixing
    (the rest is publishing)."""

    slides: float
    synth: float
    encode: float
    mix: float

    @property
    def synthesized(self) -> float:
        return self.slides + self.synth

    @property
    def encoded(self) -> float:
        return self.synthesized + self.encode

    @property
    def mixed(self) -> float:
        return self.encoded + self.mix


SILENT = _Budget(SLIDES_SHARE, 0.0, ENCODE_SHARE, 0.0)
#: A deck with sound: synthesis and mixing take their shares from the others.
SOUND = _Budget(0.30, 0.15, 0.35, 0.15)
#: A split deck: its segments (slides and encode together), after its sound.
SPLIT_SILENT = _Budget(0.0, 0.0, SLIDES_SHARE + ENCODE_SHARE, 0.0)
SPLIT_SOUND = _Budget(0.0, 0.15, 0.65, 0.15)


@dataclass(frozen=True)
class _Split:
    """What a split render needs of the worker running the job's attempt."""

    job: Job
    worker: str
    wake: Callable[[int], object] | None
    drain_overdue: Callable[[], bool] | None


def backoff(settings: Settings, attempt: int) -> float:
    """Exponential backoff with full jitter in [50%, 150%] of the step."""
    step: float = min(settings.retry_backoff * 2.0 ** max(attempt - 1, 0), MAX_BACKOFF)
    return step * (0.5 + random.random())


def _publish(settings: Settings, job_id: str, attempt: int, scratch: Path) -> None:
    """Rename ``scratch`` into place, atomically, unless a newer attempt has
    published already (then this one is lost and leaves that folder alone).

    ``rename`` onto an existing non-empty folder fails, so the only folder
    ever moved aside is one whose marker names an older attempt.
    """
    (scratch / ATTEMPT_MARKER).write_text(str(attempt))
    final = job_dir(settings.output_dir, job_id)
    for _ in range(10):
        try:
            os.rename(scratch, final)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        current = published_attempt(final)
        if current is not None and current >= attempt:
            raise AttemptLost()
        trash = scratch.parent / f"{job_id}.old-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
    raise RuntimeError(f"could not publish the files of job {job_id}")


def _render(
    lease: Lease,
    deck: Deck,
    scratch: Path,
    settings: Settings,
    timings: _Timings,
    assets: JobAssets | None = None,
    split: _Split | None = None,
) -> None:
    if split is not None and assets is not None and splits(deck, settings):
        _render_split(lease, deck, scratch, settings, timings, assets, split)
        return
    # A document deck's notes become narration once its pages are read, so
    # ``narrate`` alone budgets for sound there.
    sound = deck.has_sound or (deck.source is not None and deck.options.narrate)
    budget = SOUND if sound and not settings.noop_render else SILENT
    if deck.has_sound and not settings.noop_render:
        if assets is None:
            raise RenderError("a deck with sound needs its job's assets")
        _check_audio(deck, assets)  # before any slide is drawn
    if deck.source is not None:
        if assets is None:
            raise RenderError("a document deck needs its job's assets")
        deck, images = _render_document(lease, deck, scratch, settings, timings, assets, budget)
    else:
        images = _render_written(lease, deck, scratch, settings, timings, assets, budget)
        if settings.noop_render:
            lease.progress(SLIDES_SHARE + ENCODE_SHARE, Stage.FINALIZING)
            timings.encode = 0.0
            return
    if not deck.has_sound:
        _encode(lease, deck, images, [s.seconds for s in deck.slides], scratch, settings, timings)
        return
    assert assets is not None
    work = scratch / ".sound"  # removed before publishing, or with the scratch
    work.mkdir()
    try:
        sounds, music, language = _synthesize(lease, deck, assets, work, settings, timings, budget)
        durations = slide_durations(deck, sounds, settings.max_video_seconds)
        if deck.source is not None:
            _retime_manifest(lease, scratch, durations)
        _encode(lease, deck, images, durations, scratch, settings, timings, budget)
        _mix(lease, deck, sounds, durations, music, language, scratch, settings, timings, budget)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _render_split(
    lease: Lease,
    deck: Deck,
    scratch: Path,
    settings: Settings,
    timings: _Timings,
    assets: JobAssets,
    split: _Split,
) -> None:
    """A long deck rendered by many workers (:mod:`workers.split`): checked,
    its sound made (the slides' lengths come from it), its segments
    rendered and joined, then its one sound track mixed over the join."""
    if deck.has_sound:
        _check_audio(deck, assets)
    check_deck(lease, split.job, deck, settings, assets)
    budget = SPLIT_SOUND if deck.has_sound else SPLIT_SILENT

    def segments(durations: list[float]) -> None:
        started = time.monotonic()
        render_split(
            lease,
            split.job,
            deck,
            durations,
            scratch,
            settings,
            Share(budget.synthesized, budget.encoded),
            worker=split.worker,
            wake=split.wake,
            drain_overdue=split.drain_overdue,
        )
        timings.render = time.monotonic() - started
        lease.progress(budget.encoded, Stage.MIXING if budget.mix else Stage.FINALIZING)

    if not deck.has_sound:
        segments([s.seconds for s in deck.slides])
        return
    work = scratch / ".sound"
    work.mkdir()
    try:
        sounds, music, language = _synthesize(lease, deck, assets, work, settings, timings, budget)
        durations = slide_durations(deck, sounds, settings.max_video_seconds)
        segments(durations)
        _mix(lease, deck, sounds, durations, music, language, scratch, settings, timings, budget)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _retime_manifest(lease: Lease, scratch: Path, durations: list[float]) -> None:
    """``slides.json`` with each slide's real duration, now that its sound set it."""
    path = scratch / MANIFEST_FILE
    body = json.loads(path.read_bytes())
    for entry, seconds in zip(body["slides"], durations, strict=True):
        entry["duration"] = round(seconds, 6)
    data = json.dumps(body, ensure_ascii=False, indent=1).encode()
    path.write_bytes(data)
    lease.add_files([(MANIFEST_FILE, len(data))])


def _check_audio(deck: Deck, assets: JobAssets) -> None:
    """Every audio asset the deck names is the owner's, audio, and in place."""
    for n, slide in enumerate(deck.slides, start=1):
        if slide.audio is not None:
            assets.file(slide.audio, AUDIO_KINDS, f"slide {n}'s audio")
    if deck.options.music is not None:
        assets.file(deck.options.music.asset, AUDIO_KINDS, "the music")


def _render_written(
    lease: Lease,
    deck: Deck,
    scratch: Path,
    settings: Settings,
    timings: _Timings,
    assets: JobAssets | None,
    budget: _Budget,
) -> list[Path]:
    fonts = font_chain(settings.system_fonts)
    if not settings.noop_render and (problem := missing_glyphs(deck, fonts)) is not None:
        # Before any slide is drawn: the deck cannot render, so retrying is useless.
        raise RenderError(problem)
    pictures = None
    if not settings.noop_render and any(s.image is not None for s in deck.slides):
        # Every image fetched and checked before any slide is drawn.
        if assets is None:
            raise RenderError("a deck with images needs its job's assets")
        background = THEMES[deck.options.theme].background
        pictures = resolve_images(assets, deck, settings, background, lease.check)
    started = time.monotonic()
    count = len(deck.slides)
    images: list[Path] = []
    pending: list[tuple[str, int]] = []
    last_write = started  # the claim has just renewed the lease
    for i in range(count):
        lease.check()
        if not settings.noop_render:
            image = render_slide(deck, i, fonts, pictures)
            rel = slide_file(i + 1)
            pending.append((rel, save_png(image, scratch / rel)))
            if i == 0:
                pending.append((THUMBNAIL_FILE, save_thumbnail(image, scratch / THUMBNAIL_FILE)))
            images.append(scratch / rel)
        # Throttled: one write per interval (file records batched with it),
        # not one per slide; progress stays monotonic. The last slide's
        # progress rides on the next stage's write, which follows at once.
        if time.monotonic() - last_write >= PROGRESS_EVERY and i < count - 1:
            last_write = time.monotonic()
            if pending:
                lease.add_files(pending)
                pending = []
            lease.progress(budget.slides * (i + 1) / count, Stage.RENDERING_SLIDES)
    if pending:
        lease.add_files(pending)
    timings.render = time.monotonic() - started
    return images


def _render_document(
    lease: Lease,
    deck: Deck,
    scratch: Path,
    settings: Settings,
    timings: _Timings,
    assets: JobAssets,
    budget: _Budget,
) -> tuple[Deck, list[Path]]:
    """A document deck (docs/design.md, "Document decks"): its pages, each
    rendered into the slide files as it comes; returns the deck with its
    pages as slides (their notes narrate with ``options.narrate``) and the
    slide images, for the same sound and encode as a written deck."""
    assert deck.source is not None
    started = time.monotonic()
    asset, path = assets.file(deck.source.asset, DOCUMENT_KINDS, "the source document")
    work = Path(tempfile.mkdtemp(prefix="slidefarm-doc-"))
    try:
        document = open_document(
            asset.kind,
            path,
            work,
            settings,
            lambda pages: _counted(assets, asset, deck, pages, settings),
            lambda: lease.should_stop,
        )
        lease.check()
        slides = expand(deck, document)
        deck = deck.model_copy(update={"slides": slides})
        count = len(slides)
        manifest_bytes = manifest(document, slides)
        (scratch / MANIFEST_FILE).write_bytes(manifest_bytes)
        pending: list[tuple[str, int]] = [(MANIFEST_FILE, len(manifest_bytes))]
        images: list[Path] = []
        last_write = time.monotonic()
        pattern = str(scratch / slide_file(1)).replace("001.png", "{:03d}.png")
        background = THEMES[deck.options.theme].background
        pages = render_pages(
            document,
            deck.options.size,
            background,
            pattern,
            settings,
            work,
            lambda: lease.should_stop,
        )
        # closing: a stop (cancel, lost lease, timeout) kills the reader at once.
        with closing(pages):
            for n, image in pages:
                lease.check()
                pending.append((slide_file(n), image.stat().st_size))
                if n == 1:
                    with Image.open(image) as first:
                        pending.append(
                            (THUMBNAIL_FILE, save_thumbnail(first, scratch / THUMBNAIL_FILE))
                        )
                images.append(image)
                if time.monotonic() - last_write >= PROGRESS_EVERY and n < count:
                    last_write = time.monotonic()
                    lease.add_files(pending)
                    pending = []
                    lease.progress(budget.slides * n / count, Stage.RENDERING_SLIDES)
        if len(images) != count:
            raise DocumentError(f"the document rendered {len(images)} of its {count} pages")
        lease.add_files(pending)
    except DocumentStopped:
        lease.check()  # says why: cancelled, lost or out of time
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings.render = time.monotonic() - started
    return deck, images


def _counted(assets: JobAssets, asset: Asset, deck: Deck, pages: int, settings: Settings) -> None:
    """A document's page count is known: kept with the asset (even when it
    breaks the limits: the next deck naming it is refused at submission),
    then checked against the deck's limits."""
    assets.record_pages(asset, pages)
    check_pages(deck, pages, settings)


def _encode(
    lease: Lease,
    deck: Deck,
    images: list[Path],
    durations: list[float],
    scratch: Path,
    settings: Settings,
    timings: _Timings,
    budget: _Budget = SILENT,
) -> None:
    lease.progress(budget.synthesized, Stage.ENCODING_VIDEO)
    started = time.monotonic()
    last_write = started

    def on_progress(fraction: float) -> None:
        nonlocal last_write
        if time.monotonic() - last_write >= PROGRESS_EVERY:
            last_write = time.monotonic()
            lease.progress(budget.synthesized + budget.encode * fraction, Stage.ENCODING_VIDEO)

    video = scratch / VIDEO_FILE
    try:
        background = THEMES[deck.options.theme].background
        encode(
            images,
            durations,
            deck.options.fps,
            video,
            titles=[s.title for s in deck.slides],
            transition=[s.transition or deck.options.transition for s in deck.slides],
            preset=settings.x264_preset,
            fade_color="0x{:02x}{:02x}{:02x}".format(*background),
            on_progress=on_progress,
            should_stop=lambda: lease.should_stop,
        )
    except EncodeStopped:
        lease.check()
        raise
    timings.encode = time.monotonic() - started
    lease.add_file(VIDEO_FILE, video.stat().st_size)
    after = budget.encoded
    lease.progress(after, Stage.MIXING if budget.mix else Stage.FINALIZING)


def _synthesize(
    lease: Lease,
    deck: Deck,
    assets: JobAssets,
    work: Path,
    settings: Settings,
    timings: _Timings,
    budget: _Budget,
) -> tuple[list[SlideSound | None], Music | None, str]:
    """Every slide's sound (speech from the cache or the voice, uploaded
    audio decoded), the music decoded, and the subtitles' language tag."""
    lease.progress(budget.slides, Stage.SYNTHESIZING)
    started = time.monotonic()
    last_write = started
    narrate = deck.options.narrate
    voice = deck.options.voice or default_voice()
    known = {v.id: v for v in available_voices()}
    language = language_tag(known[voice].language) if voice in known else "und"

    def stop() -> bool:
        return lease.should_stop

    sounds: list[SlideSound | None] = []
    made: list[float] = []  # seconds of speech synthesized (cache misses)
    count = len(deck.slides)
    try:
        for n, slide in enumerate(deck.slides, start=1):
            lease.check()
            if not slide.has_sound(narrate):
                sounds.append(None)
                continue
            speech = None
            if slide.spoken(narrate):
                if voice is None:
                    raise VoiceUnavailable(NO_ENGINE)
                speech = speak(settings.output_dir, voice, slide.spoken(narrate), stop, made.append)
            decoded, seconds = None, 0.0
            if slide.audio is not None:
                what = f"slide {n}'s audio"
                _, path = assets.file(slide.audio, AUDIO_KINDS, what)
                decoded = work / f"audio-{n:03d}.wav"
                seconds = decode(path, decoded, what, work, stop)
            sounds.append(SlideSound(speech, decoded, seconds))
            if time.monotonic() - last_write >= PROGRESS_EVERY and n < count:
                last_write = time.monotonic()
                lease.progress(budget.slides + budget.synth * n / count, Stage.SYNTHESIZING)
        music = None
        if deck.options.music is not None:
            _, path = assets.file(deck.options.music.asset, AUDIO_KINDS, "the music")
            decoded = work / "music.wav"
            decode(path, decoded, "the music", work, stop)
            music = Music(decoded, deck.options.music.volume)
    except (SpeechStopped, EncodeStopped):
        lease.check()  # says why: cancelled, lost or out of time
        raise
    finally:
        if made and voice is not None:
            try:  # /metrics: slidefarm_speech_seconds_total, whatever the outcome
                record_synthesized(lease.store, voice, sum(made))
            except StorageError:
                log.warning("could not count %.1f s of speech", sum(made))
    timings.synth = time.monotonic() - started
    return sounds, music, language


def _mix(
    lease: Lease,
    deck: Deck,
    sounds: list[SlideSound | None],
    durations: list[float],
    music: Music | None,
    language: str,
    scratch: Path,
    settings: Settings,
    timings: _Timings,
    budget: _Budget,
) -> None:
    """The sound track and subtitles into the video (drawn into the picture
    too with ``options.burn_subtitles``); the subtitle files."""
    started = time.monotonic()
    fps = deck.options.fps
    cues = timed_cues(sounds, frame_counts(durations, fps), fps)
    video = scratch / VIDEO_FILE
    try:
        add_sound(
            video,
            sounds,
            durations,
            fps,
            music,
            cues,
            language,
            lambda: lease.should_stop,
            burn_fonts=font_chain(settings.system_fonts) if deck.options.burn_subtitles else None,
            size=deck.options.size,
            preset=settings.x264_preset,
        )
    except EncodeStopped:
        lease.check()
        raise
    files = [(VIDEO_FILE, video.stat().st_size)]
    if cues:
        for name, text in ((SUBTITLES_VTT, webvtt(cues)), (SUBTITLES_SRT, subrip(cues))):
            data = text.encode("utf-8")
            (scratch / name).write_bytes(data)
            files.append((name, len(data)))
    lease.add_files(files)
    timings.mix = time.monotonic() - started
    lease.progress(budget.mixed, Stage.FINALIZING)


def run_attempt(
    store: JobStore,
    job: Job,
    settings: Settings,
    *,
    worker: str | None = None,
    drain_overdue: Callable[[], bool] | None = None,
    wake: Callable[[int], object] | None = None,
) -> AttemptResult:
    """Render the claimed attempt ``job.attempts`` of ``job`` and record the
    outcome. ``drain_overdue`` says when this worker (``worker``), stopping,
    must hand the job back instead of finishing it; ``wake(n)`` wakes ``n``
    workers for a long deck's segments."""
    attempt = job.attempts
    scratch = partial_dir(settings.output_dir, job.id, attempt)
    remove_earlier_attempts(settings.output_dir, job.id, attempt)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    started = time.monotonic()
    timings = _Timings()
    patience = max(settings.stale_after / 2, 1.0)
    result: AttemptResult
    try:
        with Lease(
            store,
            job.id,
            attempt,
            settings.heartbeat_interval,
            patience,
            timeout=settings.render_timeout,
            drain_overdue=drain_overdue,
        ) as lease:
            try:
                deck = Deck.model_validate(job.deck)
            except ValidationError as invalid:
                raise RenderError(f"the stored deck is invalid: {invalid}") from invalid
            split = _Split(job, worker or job.worker or "-", wake, drain_overdue)
            _render(lease, deck, scratch, settings, timings, JobAssets(store, job, settings), split)
            lease.check()
            lease.finishing()  # done rendering: a drain lets it publish and complete
            _publish(settings, job.id, attempt, scratch)
            # Refused means a newer attempt holds the job: the folder just
            # published is replaced when that attempt publishes, or removed
            # as an orphan by the sweeper if it never does.
            lease.finish(
                lambda: store.complete(
                    job.id,
                    attempt,
                    video_url=f"/v1/jobs/{job.id}/video",
                    thumbnail_url=f"/v1/jobs/{job.id}/thumbnail",
                    slide_image_path=SLIDES_DIR,
                    render_seconds=timings.render,
                    encode_seconds=timings.encode,
                    synth_seconds=timings.synth,
                    mix_seconds=timings.mix,
                )
            )
            result = AttemptResult(Outcome.COMPLETED)
            if splits(deck, settings):
                _forget_segments(store, settings, job.id)
    except AttemptLost:
        _log_lost(store, job)
        result = AttemptResult(Outcome.LOST)
    except CancelRequested:
        result = AttemptResult(Outcome.CANCELLED)
    except DrainTimedOut:
        result = AttemptResult(
            Outcome.HANDED_BACK, f"handed back: worker {worker or job.worker} draining"
        )
    except RenderTimedOut as timed_out:
        result = AttemptResult(Outcome.FAILED, str(timed_out))
    except (
        RenderError,
        MissingGlyphs,
        AssetUnavailable,
        DocumentError,
        SoundError,
        SegmentFailed,
    ) as failure:
        result = AttemptResult(Outcome.FAILED, str(failure))
    except ImageFetchFailed as failure:
        result = AttemptResult(Outcome.RETRYING, str(failure))
    except (StoreUnavailable, DatabaseUnavailable) as failure:
        result = AttemptResult(Outcome.RETRYING, f"database unavailable: {failure}")
    except (EncodeError, SynthesisFailed, VoiceUnavailable) as failure:
        # VoiceUnavailable: another render host may have the voice (submission
        # refuses one no live worker offers); the attempt budget bounds it.
        result = AttemptResult(Outcome.RETRYING, str(failure))
    except Exception as failure:  # decided and recorded below, never swallowed silently
        if _deleted(store, job.id):
            # Deleting a job removes its files, scratch folder included: the
            # render trips over that before its next write would be refused.
            _log_lost(store, job, deleted=True)
            result = AttemptResult(Outcome.LOST)
        else:
            log.exception("job %s attempt %s crashed", job.id, attempt)
            result = AttemptResult(
                Outcome.RETRYING, f"render crashed: {type(failure).__name__}: {failure}"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    result = _record_outcome(store, job, settings, result, timings)
    log.info(
        "job %s attempt %s: %s in %.2fs%s",
        job.id,
        attempt,
        result.outcome,
        time.monotonic() - started,
        f" ({result.error})" if result.error else "",
    )
    return result


def _write_outcome(
    store: JobStore, job: Job, settings: Settings, result: AttemptResult, timings: _Timings
) -> tuple[bool, AttemptResult]:
    """One fenced write of the outcome; ``False`` if the attempt lost the job."""
    attempt = job.attempts
    if result.outcome is Outcome.CANCELLED:
        return store.finish_cancelled(job.id, attempt), result
    if result.outcome is Outcome.HANDED_BACK:
        moved = store.hand_back(job.id, attempt, result.error or "handed back")
        if moved is Status.CANCELLED:  # a cancel came in meanwhile: it wins
            return True, AttemptResult(Outcome.CANCELLED)
        return moved is not None, result
    if result.outcome is Outcome.RETRYING and attempt < job.attempt_limit:
        delay = backoff(settings, attempt)
        reason = f"attempt {attempt} failed, retrying in {delay:.1f}s: {result.error}"
        moved = store.requeue(job.id, attempt, reason, delay=delay)
        if moved is Status.CANCELLED:  # a cancel came in meanwhile: it wins
            return True, AttemptResult(Outcome.CANCELLED)
        return moved is not None, AttemptResult(Outcome.RETRYING, result.error, delay)
    error = result.error or "failed"
    if result.outcome is Outcome.RETRYING:
        error = f"gave up after {attempt} attempts: {error}"
    recorded = store.fail(
        job.id,
        attempt,
        error,
        render_seconds=timings.render,
        encode_seconds=timings.encode,
        synth_seconds=timings.synth,
        mix_seconds=timings.mix,
    )
    return recorded, AttemptResult(Outcome.FAILED, error)


def _record_outcome(
    store: JobStore, job: Job, settings: Settings, result: AttemptResult, timings: _Timings
) -> AttemptResult:
    """Write a non-completed outcome (fenced); files go with every one of them."""
    if result.outcome in (Outcome.COMPLETED, Outcome.LOST):
        return result
    # A worker cut off from the database keeps trying to record its outcome
    # (a fenced write) until the database answers: when the network returns
    # after its job was recovered elsewhere, that late write is refused.
    deadline = time.monotonic() + max(settings.stale_after * 10, 30.0)
    delay = 0.2
    while True:
        try:
            recorded, result = _write_outcome(store, job, settings, result, timings)
            break
        except DatabaseUnavailable:
            if time.monotonic() + delay > deadline:
                log.warning(
                    "job %s: could not record %s; the sweeper will recover it",
                    job.id,
                    result.outcome,
                )
                return AttemptResult(Outcome.LOST, result.error)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        except StorageError:
            log.warning(
                "job %s: could not record %s; the sweeper will recover it", job.id, result.outcome
            )
            return AttemptResult(Outcome.LOST, result.error)
    if not recorded:
        _log_lost(store, job)
        return AttemptResult(Outcome.LOST, result.error)
    if result.outcome in (Outcome.FAILED, Outcome.CANCELLED):
        remove_job_files(settings.output_dir, job.id)
        if len(job.deck.get("slides") or ()) > settings.split_slides > 0:
            _forget_segments(store, settings, job.id)
    return result


def _forget_segments(store: JobStore, settings: Settings, job_id: str) -> None:
    """A split job ended: its segments' rows and files go (the sweeper
    drops any this misses)."""
    try:
        SegmentStore(store.db).drop(job_id)
    except StorageError:
        log.warning("job %s: segments not dropped (database unavailable)", job_id)
    remove_segment_files(settings.output_dir, job_id)


def _deleted(store: JobStore, job_id: str) -> bool:
    """Whether ``job_id`` is gone (``False`` when the database cannot say)."""
    try:
        store.get(job_id)
    except JobNotFound:
        return True
    except StorageError:
        return False
    return False


def _log_lost(store: JobStore, job: Job, *, deleted: bool | None = None) -> None:
    """Say why this attempt stopped without a write of its own: a deletion is
    a user's request (INFO); another attempt holding the job is a recovery
    that overtook this one (WARNING)."""
    if deleted is None:
        deleted = _deleted(store, job.id)
    if deleted:
        log.info("job %s attempt %s: job deleted while rendering; stopped", job.id, job.attempts)
    else:
        log.warning(
            "job %s attempt %s: late write refused (fenced): the job is no longer "
            "this attempt's (recovered elsewhere); stopped",
            job.id,
            job.attempts,
        )
