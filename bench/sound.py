"""Sound measured: ``python -m bench.sound`` (no servers needed; espeak-ng).

Renders a 10-slide 720p deck in-process (SQLite, ``run_attempt``) silent and
narrated (one or two sentences a slide, both 5 s a slide, a cold speech
cache), and prints the render times and their ratio, the narrated deck's
stage timings, a re-render on a warm cache, and espeak-ng's real-time factor
on one core (synthesis seconds per second of speech).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

from core.config import Settings
from storage import JobStore
from storage.migrate import upgrade
from workers.pipeline import Outcome, run_attempt

TEXTS = [
    "Welcome to the quarterly review.",
    "Revenue grew twelve percent. Most of it came from Europe.",
    "Costs stayed flat, as planned.",
    "The new product line shipped in March. Customers like it.",
    "Support tickets fell by a third.",
    "Hiring slowed down in the second half.",
    "We opened two offices. One in Lisbon and one in Osaka.",
    "Cash flow is positive for the fourth quarter in a row.",
    "Next year we focus on retention.",
    "Thank you. Questions are welcome.",
]


def deck(narrated: bool) -> dict[str, Any]:
    slides: list[dict[str, Any]] = []
    for n, text in enumerate(TEXTS, start=1):
        # The same length either way (5 s a slide), so only the sound differs.
        slide: dict[str, Any] = {"title": f"Slide {n}", "body": text, "duration": 5.0}
        if narrated:
            slide["narration"] = text
        slides.append(slide)
    return {"title": "Bench", "slides": slides, "options": {"resolution": "720p"}}


def timed(store: JobStore, settings: Settings, body: dict[str, Any]) -> tuple[float, Any]:
    job, _ = store.create(body, title="bench")
    claimed = store.claim(job.id, "bench@host")
    assert claimed is not None
    started = time.monotonic()
    result = run_attempt(store, claimed, settings)
    elapsed = time.monotonic() - started
    if result.outcome is not Outcome.COMPLETED:
        sys.exit(f"render failed: {result.error}")
    return elapsed, store.get(job.id)


def espeak_rtf(work: Path) -> float:
    """Seconds of synthesis per second of speech, espeak-ng pinned to one core."""
    text = " ".join(TEXTS)
    out = work / "rtf.wav"
    started = time.monotonic()
    subprocess.run(["taskset", "-c", "0", "espeak-ng", "-w", str(out), text], check=True)
    spent = time.monotonic() - started
    with wave.open(str(out)) as reader:
        spoken = reader.getnframes() / reader.getframerate()
    return spent / spoken


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="slidefarm-bench-sound-") as folder:
        work = Path(folder)
        url = f"sqlite:///{work / 'bench.db'}"
        upgrade(url)
        settings = Settings(
            DATABASE_URL=url,
            CELERY_BROKER_URL="filesystem://",
            SLIDEFARM_BROKER_DIR=str(work / "broker"),
            SLIDEFARM_OUTPUT_DIR=str(work / "output"),
            SLIDEFARM_MAX_VIDEO_SECONDS="600",
        )
        store = JobStore.from_url(url)
        timed(store, settings, deck(False))  # warm up: fonts, imports
        silent, _ = timed(store, settings, deck(False))
        narrated, job = timed(store, settings, deck(True))
        warm, warm_job = timed(store, settings, deck(True))
        print(f"host: {os.cpu_count()} cores (shared)")
        print(f"silent 10 x 5 s, 720p: {silent:.2f} s")
        print(
            f"narrated 10 x 5 s, 720p, cold cache: {narrated:.2f} s "
            f"(render {job.render_seconds:.2f}, synth {job.synth_seconds:.2f}, "
            f"encode {job.encode_seconds:.2f}, mix {job.mix_seconds:.2f})"
        )
        print(f"ratio narrated / silent: {narrated / silent:.2f}")
        print(
            f"narrated, warm cache (a re-render): {warm:.2f} s "
            f"(synth {warm_job.synth_seconds:.2f}); ratio {warm / silent:.2f}"
        )
        print(f"espeak-ng real-time factor on one core: {espeak_rtf(work):.3f}")


if __name__ == "__main__":
    main()
