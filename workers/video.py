"""MP4 encoding of slide images with the ffmpeg that imageio-ffmpeg ships.

Still slides are cheap to encode when ffmpeg is told so: each image enters
once (the concat demuxer) with its duration, pixel-format conversion runs
before the frame-rate filter (so 10 images are converted, not 900 frames) and
x264 is tuned for still images.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import imageio_ffmpeg


class EncodeError(Exception):
    """ffmpeg could not encode the video."""


class EncodeStopped(Exception):
    """The encode was stopped on request."""


def frame_counts(durations: Sequence[float], fps: int) -> list[int]:
    """Frames per slide: each duration rounded to a whole frame (at least one)."""
    return [max(1, round(d * fps)) for d in durations]


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


def build_command(images: Sequence[Path], frames: Sequence[int], fps: int, transition: str,
                  output: Path, concat_file: Path, preset: str) -> list[str]:
    """The ffmpeg command line for one deck."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    total_frames = sum(frames)
    if transition == "fade":
        # Fade through the background colour: each slide fades in and out
        # within its own duration, so the total length stays exact.
        parts = []
        for i, (image, count) in enumerate(zip(images, frames, strict=True)):
            seconds = count / fps
            cmd += ["-loop", "1", "-framerate", str(fps), "-t", f"{seconds:.6f}",
                    "-i", str(image)]
            fade = min(0.4, seconds / 4)
            parts.append(
                f"[{i}:v]format=yuv420p,fade=t=in:st=0:d={fade:.3f},"
                f"fade=t=out:st={seconds - fade:.3f}:d={fade:.3f},setpts=PTS-STARTPTS[v{i}]"
            )
        chain = "".join(f"[v{i}]" for i in range(len(images)))
        graph = ";".join(parts) + f";{chain}concat=n={len(images)}:v=1:a=0,fps={fps}[out]"
        cmd += ["-filter_complex", graph, "-map", "[out]"]
    else:
        concat_file.write_text(_concat_list(images, frames, fps), encoding="utf-8")
        cmd += ["-f", "concat", "-safe", "0", "-i", str(concat_file),
                "-vf", f"format=yuv420p,fps={fps}"]
    cmd += [
        "-frames:v", str(total_frames),
        "-c:v", "libx264", "-preset", preset, "-tune", "stillimage",
        "-pix_fmt", "yuv420p", "-r", str(fps),
        "-movflags", "+faststart",
        "-progress", "pipe:1", "-nostats",
        str(output),
    ]
    return cmd


def encode(images: Sequence[Path], durations: Sequence[float], fps: int, output: Path, *,
           transition: str = "none", preset: str = "veryfast",
           on_progress: Callable[[float], None] | None = None,
           should_stop: Callable[[], bool] | None = None) -> None:
    """Encode ``images``, each shown for its duration, into an H.264 MP4 at ``output``.

    ``on_progress`` gets the fraction encoded (0..1) as ffmpeg reports it;
    when ``should_stop`` answers true, ffmpeg is killed and
    :class:`EncodeStopped` raised. Raises :class:`EncodeError` with ffmpeg's
    own message if it fails.
    """
    if not images:
        raise EncodeError("no slides to encode")
    frames = frame_counts(durations, fps)
    total_us = sum(frames) / fps * 1_000_000
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slidefarm-ffmpeg-") as scratch:
        concat_file = Path(scratch) / "slides.ffconcat"
        cmd = build_command(images, frames, fps, transition, output, concat_file, preset)
        with open(Path(scratch) / "stderr.log", "w+b") as stderr:
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr,
                                  stdin=subprocess.DEVNULL) as process:
                assert process.stdout is not None
                try:
                    for raw in process.stdout:
                        key, _, value = raw.decode("ascii", "replace").strip().partition("=")
                        if key == "out_time_us" and value.isdigit() and on_progress:
                            on_progress(min(int(value) / total_us, 1.0))
                        if should_stop is not None and should_stop():
                            raise EncodeStopped()
                    code = process.wait()
                except BaseException:
                    process.kill()
                    process.wait()
                    raise
            if code != 0:
                stderr.seek(0)
                message = stderr.read().decode("utf-8", "replace").strip().splitlines()
                tail = " | ".join(message[-3:]) or f"exit code {code}"
                raise EncodeError(f"ffmpeg failed: {tail}")
    if not output.exists() or output.stat().st_size == 0:
        raise EncodeError("ffmpeg produced no video")
