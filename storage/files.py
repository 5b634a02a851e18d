"""Where a job's files live on the (shared) output storage.

The workers write here and the API serves from here, so the layout is
defined once. A completed job's files are under ``<output>/<job_id>/``; an
attempt writes under ``<output>/.partial/<job_id>.<attempt>/`` first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SLIDES_DIR = "slides"
VIDEO_FILE = "video.mp4"
THUMBNAIL_FILE = "thumbnail.jpg"
PARTIAL_DIR = ".partial"
#: A split job's segments: ``<output>/.segments/<job_id>/<idx>.<attempt>/``.
SEGMENTS_DIR = ".segments"
#: A segment's video, in its folder (its slides are in ``slides/``).
SEGMENT_VIDEO = "segment.mp4"
#: Inside a published folder: the attempt that published it. An attempt never
#: replaces the folder of a newer one, so a late writer cannot clobber it.
ATTEMPT_MARKER = ".attempt"


def slide_file(n: int) -> str:
    """The path of slide ``n`` (from 1) relative to a job's output folder."""
    return f"{SLIDES_DIR}/{n:03d}.png"


def job_dir(output_dir: Path, job_id: str) -> Path:
    """Where a completed job's files live."""
    return output_dir / job_id


def partial_dir(output_dir: Path, job_id: str, attempt: int) -> Path:
    """Where an attempt writes before it publishes."""
    return output_dir / PARTIAL_DIR / f"{job_id}.{attempt}"


def segment_dir(output_dir: Path, job_id: str, idx: int, attempt: int) -> Path:
    """Where attempt ``attempt`` of segment ``idx`` of ``job_id`` writes (and
    leaves its files for the join, once completed)."""
    return output_dir / SEGMENTS_DIR / job_id / f"{idx}.{attempt}"


def remove_segment_files(output_dir: Path, job_id: str) -> None:
    """Delete every segment folder of ``job_id`` (it ended)."""
    shutil.rmtree(output_dir / SEGMENTS_DIR / job_id, ignore_errors=True)


def remove_job_files(output_dir: Path, job_id: str) -> None:
    """Delete a job's published files and every attempt's leftovers."""
    shutil.rmtree(job_dir(output_dir, job_id), ignore_errors=True)
    remove_segment_files(output_dir, job_id)
    partial_root = output_dir / PARTIAL_DIR
    if partial_root.is_dir():
        for leftover in partial_root.glob(f"{job_id}.*"):
            shutil.rmtree(leftover, ignore_errors=True)


def remove_earlier_attempts(output_dir: Path, job_id: str, attempt: int) -> None:
    """Delete scratch folders of ``job_id``'s attempts before ``attempt``: once
    a newer attempt holds the job, theirs can never be published."""
    partial_root = output_dir / PARTIAL_DIR
    if not partial_root.is_dir():
        return
    for leftover in partial_root.glob(f"{job_id}.*"):
        suffix = leftover.name.partition(".")[2]
        if not suffix.isdigit() or int(suffix) < attempt:
            shutil.rmtree(leftover, ignore_errors=True)


def published_attempt(folder: Path) -> int | None:
    """The attempt that published ``folder``, if it says."""
    try:
        return int((folder / ATTEMPT_MARKER).read_text().strip())
    except (OSError, ValueError):
        return None


#: A narrated deck's subtitles (docs/design.md, "Sound").
SUBTITLES_VTT = "subtitles.vtt"
SUBTITLES_SRT = "subtitles.srt"
