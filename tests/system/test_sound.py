"""A narrated deck end to end: submitted over HTTP, spoken and mixed by a real
``celery`` worker (espeak-ng, the bundled ffmpeg), its video and subtitles
served by the API (docs/design.md, "Sound")."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.services import missing
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

FFPROBE = "/usr/bin/ffprobe"


def test_a_narrated_deck_renders_with_sound_and_subtitles_on_a_real_worker(
    pg_redis_stack: Stack, tmp_path: Path
) -> None:
    if shutil.which("espeak-ng") is None or not Path(FFPROBE).exists():
        missing("espeak-ng and ffprobe are needed (make test installs them)")
    stack = pg_redis_stack
    stack.start_api()
    worker = stack.start_worker("sound", concurrency=1)
    deck = {
        "title": "Narrated",
        "slides": [
            {"title": "One", "narration": "Hello from the first slide. It speaks twice."},
            {"title": "Two", "duration": 1.0},
            {"title": "Three", "notes": "Spoken because the deck narrates its notes."},
        ],
        "options": {"resolution": "480p", "narrate": True},
    }
    status, job = stack.request("POST", "/v1/jobs", deck)
    assert status == 202, job
    job = stack.wait_final(job["job_id"])
    assert job["status"] == "completed", job
    assert {"subtitles.vtt", "subtitles.srt", "video.mp4"} <= set(job["created_files"])
    assert job["timings"]["synth_seconds"] is not None
    assert job["timings"]["mix_seconds"] is not None
    status, video = stack.request("GET", job["video_url"])
    assert status == 200
    (tmp_path / "video.mp4").write_bytes(video)
    found = json.loads(
        subprocess.run(
            [FFPROBE, "-v", "error", "-of", "json", "-show_streams", str(tmp_path / "video.mp4")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )["streams"]
    kinds = {s["codec_type"]: s for s in found}
    assert kinds["audio"]["codec_name"] == "aac" and kinds["audio"]["sample_rate"] == "48000"
    assert kinds["subtitle"]["codec_name"] == "mov_text"
    assert abs(float(kinds["audio"]["duration"]) - float(kinds["video"]["duration"])) <= 1 / 30
    status, vtt = stack.request("GET", f"/v1/jobs/{job['job_id']}/subtitles.vtt")
    assert status == 200
    text = vtt.decode() if isinstance(vtt, bytes) else str(vtt)
    assert text.startswith("WEBVTT")
    assert "Hello from the first slide." in text
    assert "Spoken because the deck narrates its notes." in text
    assert worker.alive()
