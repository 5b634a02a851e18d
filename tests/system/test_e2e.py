"""End to end with real processes: gunicorn serving the API, ``celery -A
workers worker`` rendering, PostgreSQL and Redis (or the embedded default)."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from api.dispatch import Dispatcher
from core.config import Settings
from storage.db import create_db_engine
from tests.support import ROOT
from tests.support.clients import bearer
from tests.support.decks import sample_deck, small_deck
from tests.support.media import probe
from tests.support.stack import Proc, Stack, free_port, stack_env

pytestmark = pytest.mark.e2e


def check_video(stack: Stack, job: dict[str, Any], deck: dict[str, Any], tmp_path: Path) -> None:
    status, body = stack.request("GET", job["video_url"])
    assert status == 200 and isinstance(body, bytes)
    path = tmp_path / f"{job['job_id']}.mp4"
    path.write_bytes(body)
    meta, frames = probe(path)
    fps = deck["options"].get("fps", 30)
    width, height = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}[
        deck["options"].get("resolution", "720p")
    ]
    assert meta["size"] == (width, height)
    assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
    expected = sum(s.get("duration", 3.0) for s in deck["slides"])
    assert abs(frames / fps - expected) <= len(deck["slides"]) / fps


def test_render_through_a_real_worker_on_postgres_and_redis(
    pg_redis_stack: Stack, tmp_path: Path
) -> None:
    stack = pg_redis_stack
    stack.start_api()
    stack.start_worker("render1")
    deck = sample_deck()
    deck["options"]["resolution"] = "480p"
    status, job = stack.request("POST", "/v1/jobs", deck)
    assert status == 202
    job = stack.wait_final(job["job_id"])
    assert job["status"] == "completed", job
    assert job["attempts"] == 1 and job["worker"].startswith("render1@")
    assert job["progress"] == 1.0 and job["stage"] == "done" and job["error"] is None
    assert job["completed_at"].endswith("Z") and job["started_at"] and job["last_heartbeat"]
    slides = len(deck["slides"])
    assert sorted(job["created_files"]) == sorted(
        [f"slides/{n:03d}.png" for n in range(1, slides + 1)] + ["thumbnail.jpg", "video.mp4"]
    )
    check_video(stack, job, deck, tmp_path)
    status, thumb = stack.request("GET", job["thumbnail_url"])
    assert status == 200 and thumb[:2] == b"\xff\xd8"
    status, png = stack.request("GET", f"/v1/jobs/{job['job_id']}/slides/{slides}")
    assert status == 200 and png[:4] == b"\x89PNG"
    output = Path(stack.env["SLIDEFARM_OUTPUT_DIR"])
    assert not list((output / ".partial").iterdir())


def test_jobs_survive_a_restart_of_the_api_and_the_worker(
    pg_redis_stack: Stack, tmp_path: Path
) -> None:
    stack = pg_redis_stack
    api = stack.start_api()
    worker = stack.start_worker("before")
    deck = small_deck(slides=2, duration=0.5)
    _, first = stack.request("POST", "/v1/jobs", deck)
    first = stack.wait_final(first["job_id"])
    assert first["status"] == "completed"

    worker.stop()
    _, waiting = stack.request("POST", "/v1/jobs", deck)
    time.sleep(0.5)
    _, waiting = stack.request("GET", f"/v1/jobs/{waiting['job_id']}")
    assert waiting["status"] == "queued"
    api.kill()  # not even a graceful stop

    stack.start_api()
    stack.start_worker("after")
    status, again = stack.request("GET", f"/v1/jobs/{first['job_id']}")
    assert status == 200 and again == first
    done = stack.wait_final(waiting["job_id"])
    assert done["status"] == "completed" and done["worker"].startswith("after@")
    check_video(stack, done, deck, tmp_path)


def test_hundred_concurrent_submissions_are_hundred_jobs(
    pg_redis_stack: Stack, pg_url: str, redis_url: str
) -> None:
    stack = pg_redis_stack
    stack.start_api()
    deck = small_deck(slides=1)
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(lambda _: stack.request("POST", "/v1/jobs", deck), range(100)))
    assert [status for status, _ in answers] == [202] * 100
    ids = {job["job_id"] for _, job in answers}
    assert len(ids) == 100
    engine = create_db_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(DISTINCT id) FROM jobs")).scalar() == 100
    engine.dispose()
    assert redis.Redis.from_url(redis_url).llen("slidefarm") == 100

    # The seed's speed figure, measured and reported (a benchmark, not a gate).
    job_id = next(iter(ids))
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    started = time.perf_counter()
    for _ in range(1000):
        conn.request("GET", f"/v1/jobs/{job_id}", headers=bearer(stack.token or ""))
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    conn.close()
    print(
        f"\n1,000 sequential status reads (one keep-alive connection): "
        f"{time.perf_counter() - started:.2f} s"
    )


def test_two_workers_share_jobs_and_duplicates_do_nothing(
    pg_redis_stack: Stack, pg_url: str, redis_url: str
) -> None:
    stack = pg_redis_stack
    stack.start_api()
    stack.start_worker("w1", concurrency=1)
    stack.start_worker("w2", concurrency=1)
    deck = small_deck(slides=2, duration=0.5, transition="fade")
    ids = [stack.request("POST", "/v1/jobs", deck)[1]["job_id"] for _ in range(6)]
    # Twice as many wake-ups as jobs: the claim makes the extra ones no-ops.
    dispatcher = Dispatcher(Settings(DATABASE_URL=pg_url, CELERY_BROKER_URL=redis_url))
    assert dispatcher.wake(len(ids))
    jobs = [stack.wait_final(job_id) for job_id in ids]
    assert all(j["status"] == "completed" and j["attempts"] == 1 for j in jobs), jobs
    assert {j["worker"].split("@")[0] for j in jobs} <= {"w1", "w2"}
    time.sleep(1.0)  # let the duplicate deliveries drain
    assert all(stack.request("GET", f"/v1/jobs/{i}")[1]["attempts"] == 1 for i in ids)
    logs = "".join(p.log() for p in stack.procs if p.name.startswith("worker"))
    assert logs.count("skipped") >= 6


def test_the_readme_demo_renders_on_the_embedded_default(tmp_path: Path) -> None:
    env = stack_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'slidefarm.db'}",
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    video_line = next(line for line in result.stdout.splitlines() if line.startswith("video:"))
    video = Path(video_line.split(":", 1)[1].strip())
    assert video.is_file() and video.stat().st_size > 0
    assert "completed" in result.stdout
    # Nothing left running: no process still holds the demo's SQLite file.
    holders = subprocess.run(
        ["sh", "-c", f"ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c '{tmp_path}' || true"],
        capture_output=True,
        text=True,
    )
    assert holders.stdout.strip() in ("", "0")
    deck = sample_deck()
    meta, frames = probe(video)
    assert meta["size"] == (1280, 720)
    assert abs(frames / 30 - sum(s["duration"] for s in deck["slides"])) <= 6 / 30


def test_flower_runs_beside_slidefarm(pg_redis_stack: Stack) -> None:
    stack = pg_redis_stack
    port = free_port()
    flower = Proc(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        stack.env,
        stack.log_dir,
    )
    stack.procs.append(flower)
    stack.start_worker("seen-by-flower")
    deadline = time.monotonic() + 30
    body = b""
    while time.monotonic() < deadline:
        assert flower.alive(), flower.log()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as r:
                body = r.read()
                break
        except OSError:
            time.sleep(0.2)
    assert body == b"OK", flower.log()[-2000:]
