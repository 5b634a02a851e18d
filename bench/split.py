"""One long deck on many hosts: a 120-slide 1080p deck with fades rendered by
one CPU-limited render host, unsplit (the baseline: the best one host can
do), then split (``SLIDEFARM_SPLIT_SLIDES``) on 4 and on 8 such hosts, each
in its own network namespace and CPU cgroup (``tests/support/hosts.py``,
the same farm as ``bench/scaling.py``).

The time is the job's, from its submission to its completion (the
database's timestamps). The speed-ups are the baseline's time over the
split runs'; the videos must have the same frame count, and each slide's
midpoint frame must look the same (a mean difference of at most 2 of 255
per channel: the encodes are lossy, the pixels the same).

``python -m bench split_render`` (root, ``ip netns``, cgroup v1).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from bench.harness import Environment, Result, Series
from bench.scaling import Farm
from tests.support.hosts import permitted
from workers.video import frame_counts

#: Of a core, per host: 8 hosts take 1.6 of the machine's 2 cores.
SLICE = 0.2
SLIDES = 120
SECONDS = 1.0
FPS = 30
COUNTS = (4, 8)
#: Largest mean difference (of 255) of a slide's midpoint frame between runs.
SAME = 2.0


def long_deck() -> dict[str, Any]:
    return {
        "title": "A long deck",
        "slides": [
            {
                "title": f"Slide {n}",
                "body": "Revenue up 12% on last quarter, with every region but one growing.",
                "bullets": ["EMEA +20%", "APAC flat", f"Item {n}"],
                "duration": SECONDS,
            }
            for n in range(1, SLIDES + 1)
        ],
        "options": {"resolution": "1080p", "fps": FPS, "transition": "fade"},
    }


@dataclass
class Render:
    hosts: int
    seconds: float
    frames: int
    #: Each slide's midpoint frame, a quarter of each side (to compare).
    midpoints: list[np.ndarray] = field(repr=False, default_factory=list)
    #: Segments completed per host (empty: unsplit).
    segments: dict[str, int] = field(default_factory=dict)
    reruns: int = 0


def midpoint_frames(video: Path) -> tuple[int, list[np.ndarray]]:
    """The frame count and each slide's midpoint frame (every 4th pixel)."""
    counts = frame_counts([SECONDS] * SLIDES, FPS)
    wanted, start = {}, 0
    for n, count in enumerate(counts):
        wanted[start + count // 2] = n
        start += count
    picked: list[np.ndarray] = [np.zeros(1)] * SLIDES
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        reader = imageio_ffmpeg.read_frames(str(video))
        meta = next(reader)
        width, height = meta["size"]
        for index, raw in enumerate(reader):
            total += 1
            if index in wanted:
                frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
                picked[wanted[index]] = frame[::4, ::4].astype(np.int16)
    return total, picked


def render_once(farm: Farm, hosts: int, timeout: float = 1800) -> Render:
    status, job = farm.request("/v1/jobs", long_deck())
    assert status == 202, job
    job_id = job["job_id"]
    deadline = time.monotonic() + timeout
    while not (done := farm.store.get(job_id)).status.is_final:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the long deck did not finish in {timeout} s")
        time.sleep(0.5)
    assert done.status.value == "completed", (done.status, done.error)
    assert done.completed_at is not None
    seconds = (done.completed_at - done.created_at).total_seconds()
    segments: dict[str, int] = {}
    reruns = 0
    for event in farm.store.history(job_id):
        reason = event.reason or ""
        if reason.startswith("segment ") and ": completed by " in reason:
            by = reason.split(": completed by ")[1].split(" ")[0]
            segments[by] = segments.get(by, 0) + 1
        if reason.startswith("segment ") and "queued again" in reason:
            reruns += 1
    frames, midpoints = midpoint_frames(farm.hosts.output / job_id / "video.mp4")
    return Render(hosts, seconds, frames, midpoints, segments, reruns + done.attempts - 1)


def measure(
    counts: tuple[int, ...] = COUNTS, fraction: float = SLICE, **settings: str
) -> list[Render]:
    """The unsplit baseline on one host, then the split deck on each count
    of hosts (``settings``: more of the split hosts' environment)."""
    reason = permitted()
    if reason is not None:
        raise SystemExit(f"the split benchmark cannot run: {reason}")
    runs = []
    with Farm(fraction, subnet="10.238.0", SLIDEFARM_SPLIT_SLIDES="0") as one:
        one.grow(1)
        runs.append(render_once(one, 1))
        print(f"   1 host, unsplit: {runs[0].seconds:.1f} s", flush=True)
    with Farm(fraction, subnet="10.239.0", **settings) as farm:
        for count in counts:
            farm.grow(count)
            run = render_once(farm, count)
            runs.append(run)
            print(
                f"  {count:>2} hosts, split: {run.seconds:.1f} s, speed-up "
                f"{runs[0].seconds / run.seconds:.2f}, segments by host {run.segments}",
                flush=True,
            )
    return runs


def differences(base: Render, other: Render) -> float:
    """The largest mean difference of a slide's midpoint frame between two runs."""
    return max(
        float(np.abs(a - b).mean()) for a, b in zip(base.midpoints, other.midpoints, strict=True)
    )


def split_render(env: Environment, args: argparse.Namespace) -> Result:
    """The bench entry (the hosts bring their own database host)."""
    runs = measure()
    base, by_count = runs[0], {r.hosts: r for r in runs[1:]}
    expected = sum(frame_counts([SECONDS] * SLIDES, FPS))
    diffs = {r.hosts: round(differences(base, r), 3) for r in runs[1:]}
    same = all(r.frames == expected for r in runs) and all(d <= SAME for d in diffs.values())
    speedups = {r.hosts: round(base.seconds / r.seconds, 3) for r in runs[1:]}
    fields: dict[str, Any] = {
        "speedup": speedups[4],
        "speedup_8": speedups[8],
        "slice_core": SLICE,
        "slides": SLIDES,
        "resolution": "1080p",
        "frames": {str(r.hosts): r.frames for r in runs},
        "expected_frames": expected,
        "seconds": {str(r.hosts): round(r.seconds, 2) for r in runs},
        "midpoint_difference": {str(k): v for k, v in diffs.items()},
        "segments_by_host": {str(r.hosts): r.segments for r in runs[1:]},
        "reruns": {str(r.hosts): r.reruns for r in runs},
    }
    print(
        "| hosts | wall s | speed-up | frames | midpoint diff |\n|---:|---:|---:|---:|---:|\n"
        + "\n".join(
            f"| {r.hosts} | {r.seconds:.1f} | {base.seconds / r.seconds:.2f} | {r.frames} | "
            f"{diffs.get(r.hosts, 0.0)} |"
            for r in runs
        )
    )
    return Result(
        "split_render",
        "s",
        Series([base.seconds]),
        Series([by_count[4].seconds]),
        goal="<= 1/3 (4 hosts)",
        better="lower",
        threshold=1 / 3,
        notes={"speedup": speedups[4], "speedup_8": speedups[8], "same_frames": same},
        extra_pass=same and speedups[8] >= 6.0,
        fields=fields,
    )
