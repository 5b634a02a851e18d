"""MP4 encoding of slide images with the ffmpeg that imageio-ffmpeg ships.

Still slides are cheap to encode when ffmpeg is told so: each image enters
once (the concat demuxer) with its duration, pixel-format conversion runs
before the frame-rate filter (so 10 images are converted, not 900 frames) and
x264 is tuned for still images.

Every video is BT.709 and says so, every slide starts on a keyframe, and
every slide is a chapter named by its title, so players can jump to it.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import imageio_ffmpeg
from PIL import Image


class EncodeError(Exception):
    """ffmpeg could not encode the video."""


class EncodeStopped(Exception):
    """The encode was stopped on request."""


def frame_counts(durations: Sequence[float], fps: int) -> list[int]:
    """Frames per slide: each duration rounded to a whole frame (at least one)."""
    return [max(1, round(d * fps)) for d in durations]


#: RGB slides to the encoder's YUV. Browsers read untagged HD video as BT.709
#: and ffmpeg converts with BT.601 unless told otherwise, which shifted colours;
#: so the matrix is BT.709, and the frames are tagged with all four colour
#: properties because ffmpeg hands the encoder the frames' properties (the
#: ``-color_primaries``/``-color_trc`` options alone leave those unset), which
#: the H.264 stream and the MP4's ``colr`` atom then carry.
TO_YUV = (
    "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
    "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv"
)


def chapter_titles(titles: Sequence[str]) -> list[str]:
    """Each slide's chapter name: its title, or "Slide N" (from 1) when it has none."""
    return [title.strip() or f"Slide {n}" for n, title in enumerate(titles, 1)]


def slide_starts(frames: Sequence[int]) -> list[int]:
    """The first frame of each slide, given each slide's frame count."""
    return list(itertools.accumulate(frames[:-1], initial=0))


def keyframe_times(frames: Sequence[int], fps: int) -> str:
    """``-force_key_frames`` times of each slide's first frame (with fades, the
    first of its fade-in: a slide fades within its own frames).

    ffmpeg forces a keyframe on the first frame at or after each time, so a
    time rounded down to the microsecond picks the slide's first frame, never
    the one after it (which ``f"{t:.6f}"`` would when it rounds up).
    """
    times = []
    for start in slide_starts(frames):
        micros = start * 1_000_000 // fps
        times.append(f"{micros // 1_000_000}.{micros % 1_000_000:06d}")
    return ",".join(times)


def _metadata_value(text: str) -> str:
    escaped = "".join("\\" + c if c in "=;#\\\r\n" else c for c in text)
    # ffmpeg's reader takes a backslash just before a line break as escaping
    # the break, even when that backslash is itself escaped, and would swallow
    # the next line; a NUL ends such a line instead (a reader without that
    # flaw reads the NUL as the end and then an empty line, which it skips).
    return escaped + "\0" if escaped.endswith("\\") else escaped


def chapters_metadata(names: Sequence[str], frames: Sequence[int], fps: int) -> str:
    """An ffmetadata document with one chapter per slide, timed in frames."""
    lines = [";FFMETADATA1"]
    for name, start, count in zip(names, slide_starts(frames), frames, strict=True):
        lines += [
            "[CHAPTER]",
            f"TIMEBASE=1/{fps}",
            f"START={start}",
            f"END={start + count}",
            f"title={_metadata_value(name)}",
        ]
    return "\n".join(lines) + "\n"


def _concat_list(images: Sequence[Path], frames: Sequence[int], fps: int) -> str:
    lines = ["ffconcat version 1.0"]
    for image, count in zip(images, frames, strict=True):
        escaped = str(image.resolve()).replace("'", "'\\''")
        lines.append(f"file '{escaped}'")
        lines.append(f"duration {count / fps:.6f}")
    # The demuxer gives the last entry the previous entry's duration unless
    # another entry follows it; repeat the last image once and let
    # ``-frames:v`` cut the video at the exact frame count.
    lines.append(lines[-2])
    lines.append(f"duration {1 / fps:.6f}")
    return "\n".join(lines) + "\n"


#: Slides per ffmpeg run with fades: each slide is one looped input, so a
#: batch bounds memory; batches are joined without re-encoding.
FADE_BATCH = 8
#: Pixels of the slides of one fade batch at most: 8 slides at 1080p. Each
#: looped input keeps its decoded image and buffers, so a 2160p batch holds
#: 2 slides, not 8, and its memory stays that of a 1080p batch.
FADE_BATCH_PIXELS = FADE_BATCH * 1920 * 1080


def fade_batch(width: int, height: int) -> int:
    """Slides per fade batch for frames of ``width`` x ``height``."""
    return max(1, min(FADE_BATCH, FADE_BATCH_PIXELS // (width * height)))


def x264_args(preset: str, fps: int, frames: Sequence[int]) -> list[str]:
    """x264 options for ``frames`` frames at ``fps``: still-image tuning, 4:2:0,
    a keyframe at every slide's first frame."""
    return [
        "-frames:v",
        str(sum(frames)),
        "-c:v",
        "libx264",
        "-preset",
        preset,
        "-tune",
        "stillimage",
        "-pix_fmt",
        "yuv420p",
        "-r",
        str(fps),
        "-force_key_frames",
        keyframe_times(frames, fps),
    ]


def _chapters_input(chapters: Path) -> list[str]:
    return ["-f", "ffmetadata", "-i", str(chapters)]


def _chapters(chapters: Path | None, index: int) -> list[str]:
    """The chapters input (input ``index``) and the video map; no chapters
    without a file."""
    if chapters is None:
        return ["-map", "0:v"]
    return [*_chapters_input(chapters), "-map", "0:v", "-map_chapters", str(index)]


def _mp4(fps: int) -> list[str]:
    # The chapter track is timed in the movie's timescale (1000 by default,
    # where a slide starting at 43/24 s would read 1.792 s): a multiple of the
    # frame rate times every chapter exactly.
    return ["-movie_timescale", str(fps * 1000), "-movflags", "+faststart"]


def ffmpeg_command() -> list[str]:
    """The bundled ffmpeg, quiet, overwriting, its progress on stdout (for :func:`run_ffmpeg`)."""
    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-progress",
        "pipe:1",
        "-nostats",
    ]


def still_command(
    images: Sequence[Path],
    frames: Sequence[int],
    fps: int,
    output: Path,
    concat_file: Path,
    preset: str,
    chapters: Path | None,
) -> list[str]:
    """Each image once through the concat demuxer, converted, then repeated;
    the chapters from the ffmetadata file ``chapters``, if given."""
    concat_file.write_text(_concat_list(images, frames, fps), encoding="utf-8")
    return [
        *ffmpeg_command(),
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        str(concat_file),
        *_chapters(chapters, 1),
        "-vf",
        f"{TO_YUV},fps={fps}",
        *x264_args(preset, fps, frames),
        *_mp4(fps),
        str(output),
    ]


def fades(transitions: Sequence[str]) -> list[tuple[bool, bool]]:
    """Whether each slide fades in and out, from how each comes in: a slide
    whose transition is ``fade`` fades in, and the slide before it fades out
    (a dip to the background between them); the last slide fades out when it
    faded in, so the video ends as it began."""
    flags = [t == "fade" for t in transitions]
    return [(flags[i], flags[i + 1] if i + 1 < len(flags) else flags[i]) for i in range(len(flags))]


def fade_command(
    images: Sequence[Path],
    frames: Sequence[int],
    fps: int,
    output: Path,
    preset: str,
    color: str,
    chapters: Path | None = None,
    flags: Sequence[tuple[bool, bool]] | None = None,
) -> list[str]:
    """Each slide fades in from and out to ``color`` within its own duration
    (or only where ``flags``, from :func:`fades`, say so), so the total
    length stays exact; chapters from ``chapters`` if given.

    The fades run on the RGB images (ffmpeg's colour fade works in RGB only),
    each frame then converted to YUV once.
    """
    cmd = ffmpeg_command()
    parts = []
    flags = flags if flags is not None else [(True, True)] * len(images)
    for i, (image, count, (fade_in, fade_out)) in enumerate(
        zip(images, frames, flags, strict=True)
    ):
        seconds = count / fps
        # The image decoded once and repeated in memory (the loop filter):
        # ``-loop 1`` on the input would decode the PNG again for every frame.
        cmd += ["-i", str(image)]
        fade = min(0.4, seconds / 4)
        # One tick per frame (an image's own time base is 1/25).
        steps = [f"loop=loop={count - 1}:size=1:start=0", f"settb=1/{fps}", "setpts=N"]
        if fade_in:
            steps.append(f"fade=t=in:st=0:d={fade:.3f}:color={color}")
        if fade_out:
            steps.append(f"fade=t=out:st={seconds - fade:.3f}:d={fade:.3f}:color={color}")
        parts.append(f"[{i}:v]{','.join([*steps, TO_YUV])}[v{i}]")
    chain = "".join(f"[v{i}]" for i in range(len(images)))
    graph = ";".join(parts) + f";{chain}concat=n={len(images)}:v=1:a=0,fps={fps}[out]"
    mapping = ["-map", "[out]"]
    if chapters is not None:
        cmd += _chapters_input(chapters)
        mapping += ["-map_chapters", str(len(images))]
    return [
        *cmd,
        "-filter_complex",
        graph,
        *mapping,
        *x264_args(preset, fps, frames),
        *_mp4(fps),
        str(output),
    ]


def join_command(
    segments: Sequence[Path], list_file: Path, output: Path, fps: int, chapters: Path | None
) -> list[str]:
    """Concatenate encoded segments without re-encoding them, adding the chapters."""
    lines = ["ffconcat version 1.0"]
    lines += ["file '" + str(p.resolve()).replace("'", "'\\''") + "'" for p in segments]
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [
        *ffmpeg_command(),
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        str(list_file),
        *_chapters(chapters, 1),
        "-c",
        "copy",
        *_mp4(fps),
        str(output),
    ]


#: Seconds between two looks at ``should_stop`` while ffmpeg runs.
STOP_POLL = 0.05


def run_ffmpeg(
    cmd: list[str],
    scratch: Path,
    on_time: Callable[[float], None],
    should_stop: Callable[[], bool] | None,
) -> None:
    """Run ffmpeg, reporting its output time (seconds) and stopping on request.

    A watchdog thread kills ffmpeg as soon as ``should_stop`` answers true, so a
    stop (cancel, lost lease, render timeout) does not wait for ffmpeg's next
    progress line, which a long filter graph may not print for seconds.
    """
    with open(scratch / "stderr.log", "w+b") as stderr:
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL
        ) as process:
            assert process.stdout is not None
            finished = threading.Event()
            stopped = threading.Event()

            def watch() -> None:
                while not finished.wait(STOP_POLL):
                    if should_stop is not None and should_stop():
                        stopped.set()
                        process.kill()
                        return

            watchdog = threading.Thread(target=watch, name="ffmpeg-watchdog", daemon=True)
            watchdog.start()
            try:
                for raw in process.stdout:
                    key, _, value = raw.decode("ascii", "replace").strip().partition("=")
                    if key == "out_time_us" and value.isdigit():
                        on_time(int(value) / 1_000_000)
                    if should_stop is not None and should_stop():
                        raise EncodeStopped()
                code = process.wait()
                if stopped.is_set():
                    raise EncodeStopped()
            except BaseException:
                process.kill()
                process.wait()
                raise
            finally:
                finished.set()
                watchdog.join()
        if code != 0:
            stderr.seek(0)
            message = stderr.read().decode("utf-8", "replace").strip().splitlines()
            tail = " | ".join(message[-3:]) or f"exit code {code}"
            if code < 0:
                tail = f"killed by signal {-code}; {tail}"
            raise EncodeError(f"ffmpeg failed: {tail}")


def _image_size(path: Path) -> tuple[int, int]:
    # Opening reads the header only; every slide of a deck has one size.
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise EncodeError(f"cannot read slide image {path.name}: {error}") from error


def _encode_run(
    images: Sequence[Path],
    frames: Sequence[int],
    flags: Sequence[tuple[bool, bool]],
    faded: bool,
    fps: int,
    output: Path,
    preset: str,
    fade_color: str,
    chapters_text: str | None,
    report: Callable[[float], None],
    should_stop: Callable[[], bool] | None,
) -> None:
    """``images`` as ``frames`` frames each, faded where ``flags`` say (the
    whole deck's, for a segment of it); chapters from the ffmetadata
    ``chapters_text`` if given. Without fades, one still-image run; with
    them, batches of looped inputs joined without re-encoding (as a split
    deck's segments are)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slidefarm-ffmpeg-") as folder:
        scratch = Path(folder)
        chapters = None
        if chapters_text is not None:
            chapters = scratch / "chapters.ffmetadata"
            chapters.write_text(chapters_text, encoding="utf-8")
        total = sum(frames) / fps
        batch_size = fade_batch(*_image_size(images[0])) if faded else FADE_BATCH
        if not faded:
            cmd = still_command(
                images, frames, fps, output, scratch / "slides.ffconcat", preset, chapters
            )
            run_ffmpeg(cmd, scratch, lambda t: report(min(t / total, 1.0)), should_stop)
        elif len(images) <= batch_size:
            cmd = fade_command(images, frames, fps, output, preset, fade_color, chapters, flags)
            run_ffmpeg(cmd, scratch, lambda t: report(min(t / total, 1.0)), should_stop)
        else:
            segments: list[Path] = []
            done = 0.0
            for start in range(0, len(images), batch_size):
                batch = slice(start, start + batch_size)
                segment = scratch / f"segment-{start:04d}.mp4"
                cmd = fade_command(
                    images[batch],
                    frames[batch],
                    fps,
                    segment,
                    preset,
                    fade_color,
                    flags=flags[batch],
                )

                def at(seconds: float, offset: float = done) -> None:
                    report(min((offset + seconds) / total, 1.0))

                run_ffmpeg(cmd, scratch, at, should_stop)
                done += sum(frames[batch]) / fps
                segments.append(segment)
            run_ffmpeg(
                join_command(segments, scratch / "segments.ffconcat", output, fps, chapters),
                scratch,
                lambda _t: None,
                should_stop,
            )
    if not output.exists() or output.stat().st_size == 0:
        raise EncodeError("ffmpeg produced no video")


def _transitions(transition: str | Sequence[str], count: int) -> list[str]:
    each = [transition] * count if isinstance(transition, str) else list(transition)
    if len(each) != count:
        raise EncodeError(f"{len(each)} transitions for {count} slides")
    return each


def encode(
    images: Sequence[Path],
    durations: Sequence[float],
    fps: int,
    output: Path,
    *,
    titles: Sequence[str] | None = None,
    transition: str | Sequence[str] = "none",
    preset: str = "veryfast",
    fade_color: str = "black",
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Encode ``images``, each shown for its duration, into an H.264 MP4 at ``output``.

    Each slide starts on a keyframe and is a chapter named by its entry in
    ``titles`` (see :func:`chapter_titles`; "Slide N" for all without them).
    ``transition``: one for every slide, or each slide's own (how it comes
    in, see :func:`fades`).
    ``on_progress`` gets the fraction encoded (0..1) as ffmpeg reports it;
    when ``should_stop`` answers true, ffmpeg is killed and
    :class:`EncodeStopped` raised. Raises :class:`EncodeError` with ffmpeg's
    own message if it fails.
    """
    if not images:
        raise EncodeError("no slides to encode")
    frames = frame_counts(durations, fps)
    names = chapter_titles(titles if titles is not None else [""] * len(images))
    flags = fades(_transitions(transition, len(images)))
    faded = any(f for pair in flags for f in pair)
    _encode_run(
        images,
        frames,
        flags,
        faded,
        fps,
        output,
        preset,
        fade_color,
        chapters_metadata(names, frames, fps),
        on_progress or (lambda _fraction: None),
        should_stop,
    )


def encode_part(
    images: Sequence[Path],
    first: int,
    durations: Sequence[float],
    fps: int,
    output: Path,
    *,
    transition: Sequence[str],
    preset: str = "veryfast",
    fade_color: str = "black",
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Encode one segment of a split deck: ``images`` are slides ``first``..
    of the deck whose slides come in by ``transition`` (all of them), each
    for its entry of ``durations`` (the segment's).

    The frames are those the whole deck's :func:`encode` makes for these
    slides: fades from the whole deck's transitions (a slide fades within
    its own frames, so a fade at a segment's edge is drawn whole), the same
    x264 options, a keyframe on every slide's first frame; no chapters (the
    join adds the deck's). Segments so made join without re-encoding.
    Returns the frame count.
    """
    if not images or len(images) != len(durations):
        raise EncodeError(f"{len(durations)} durations for {len(images)} slides")
    frames = frame_counts(durations, fps)
    every = fades(list(transition))
    flags = every[first : first + len(images)]
    if len(flags) != len(images):
        raise EncodeError(f"slides {first + 1}-{first + len(images)} of {len(every)}")
    faded = any(f for pair in every for f in pair)
    _encode_run(
        images,
        frames,
        flags,
        faded,
        fps,
        output,
        preset,
        fade_color,
        None,
        on_progress or (lambda _fraction: None),
        should_stop,
    )
    return sum(frames)


def join(
    parts: Sequence[Path],
    fps: int,
    output: Path,
    *,
    titles: Sequence[str],
    frames: Sequence[int],
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Join a split deck's encoded segments (in order) into ``output``
    without re-encoding, with one chapter per slide (``titles``, each slide
    ``frames`` long)."""
    if not parts:
        raise EncodeError("no segments to join")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slidefarm-ffmpeg-") as folder:
        scratch = Path(folder)
        chapters = scratch / "chapters.ffmetadata"
        chapters.write_text(
            chapters_metadata(chapter_titles(titles), frames, fps), encoding="utf-8"
        )
        cmd = join_command(parts, scratch / "segments.ffconcat", output, fps, chapters)
        run_ffmpeg(cmd, scratch, lambda _t: None, should_stop)
    if not output.exists() or output.stat().st_size == 0:
        raise EncodeError("ffmpeg produced no video")
