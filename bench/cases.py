"""The benchmarks. Each returns a :class:`~bench.harness.Result` with its
baseline and slidefarm measured side by side, alternating, in this run."""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import create_engine, text

import celeryconfig
from bench.harness import AUTH, Environment, Result, Series, post, post_script, rss_kib, wrk
from core.config import Settings
from storage import JobStore, Stage, Status

HELLO = "/healthz"  # a hello-world JSON endpoint of the same app and server


def deck(slides: int, *, duration: float = 3.0, resolution: str = "720p") -> dict[str, Any]:
    return {
        "title": "Benchmark deck",
        "slides": [
            {
                "title": f"Slide {n}",
                "body": "Revenue up 12% on last quarter, with every region but one growing.",
                "bullets": ["EMEA +20%", "APAC flat"],
                "duration": duration,
            }
            for n in range(1, slides + 1)
        ],
        "options": {"resolution": resolution},
    }


def _processing_job(url: str) -> str:
    """A job held by a (pretend) worker, as a status poller would see it mid-render."""
    store = JobStore.from_url(url)
    job, _ = store.create(deck(5), title="Benchmark deck")
    store.claim(job.id, "bench@host")
    store.record_progress(job.id, 1, 0.4, Stage.RENDERING_SLIDES)
    return job.id


def _http_pair(
    env: Environment, args: argparse.Namespace, base: str, path: str, script: Path | None = None
) -> tuple[Series, Series, Series, Series]:
    """Alternate baseline and slidefarm runs; return (rps, p99) for each side."""
    b_rps, s_rps, b_p99, s_p99 = Series(), Series(), Series(), Series()
    wrk(base + HELLO, duration=1)  # warm both sides' connections and caches
    wrk(base + path, duration=1, script=script)
    for _ in range(args.repeat):
        base_run = wrk(base + HELLO, duration=args.duration)
        run = wrk(base + path, duration=args.duration, script=script)
        if run.errors:
            raise SystemExit(f"{path}: {run.errors} failed requests under load")
        b_rps.values.append(base_run.requests_per_second)
        b_p99.values.append(base_run.p99_ms)
        s_rps.values.append(run.requests_per_second)
        s_p99.values.append(run.p99_ms)
    return b_rps, s_rps, b_p99, s_p99


def status_read(env: Environment, args: argparse.Namespace, *, cache: bool = True) -> Result:
    env.reset()
    job_id = _processing_job(env.db_url)
    extra = {"REDIS_URL": env.redis_url} if cache else {}
    proc, base = env.api(**extra)
    try:
        b_rps, s_rps, b_p99, s_p99 = _http_pair(env, args, base, f"/v1/jobs/{job_id}")
    finally:
        env.stop(proc)
    name = "status_read" if cache else "status_read_nocache"
    p99_ratio = statistics.median(s / b for b, s in zip(b_p99.values, s_p99.values, strict=True))
    return Result(
        name,
        "req/s",
        b_rps,
        s_rps,
        goal=">= 0.8, p99 <= 1.25x" if cache else "reported",
        better="higher",
        threshold=0.8 if cache else None,
        notes={
            "p99 ms (baseline, slidefarm)": f"{b_p99.median:.2f}, {s_p99.median:.2f}",
            "p99 ratio": round(p99_ratio, 3),
            "cache": "on" if cache else "off",
        },
        extra_pass=p99_ratio <= 1.25,
    )


def status_read_nocache(env: Environment, args: argparse.Namespace) -> Result:
    return status_read(env, args, cache=False)


def submit(env: Environment, args: argparse.Namespace) -> Result:
    env.reset()
    body = json.dumps(deck(5))
    script = post_script(body)
    proc, base = env.api(REDIS_URL=env.redis_url)
    try:
        b_rps, s_rps, _, s_p99 = _http_pair(env, args, base, "/v1/jobs", script)
    finally:
        env.stop(proc)
        script.unlink()
    return Result(
        "submit",
        "req/s",
        b_rps,
        s_rps,
        goal=">= 0.5",
        better="higher",
        threshold=0.5,
        notes={"p99 ms": round(s_p99.median, 2)},
    )


def _celery(env: Environment) -> Celery:
    app = Celery("bench", set_as_current=False)
    app.conf.update(celeryconfig.from_settings(Settings(CELERY_BROKER_URL=env.redis_url)))
    return app


def _drained(client: redis.Redis) -> bool:
    return client.llen(celeryconfig.QUEUE) == 0 and client.hlen("unacked") == 0


def dispatch(env: Environment, args: argparse.Namespace, count: int = 600) -> Result:
    """Bare Celery no-op tasks against end-to-end jobs with the no-op renderer,
    both drained by one worker with the same settings (-c 2, acks late,
    prefetch 1); messages are sent while the worker is already running."""
    env.reset()
    app = _celery(env)
    client = redis.Redis.from_url(env.redis_url)
    store = JobStore.from_url(env.db_url)
    worker = env.worker(
        "bench", concurrency=2, SLIDEFARM_NOOP_RENDER="1", SLIDEFARM_HEARTBEAT_INTERVAL="5"
    )
    time.sleep(4)  # the worker is up and idle
    base, farm = Series(), Series()
    try:
        for _ in range(args.repeat):
            started = time.perf_counter()
            for _ in range(count):
                app.send_task("slidefarm.noop")
            while not _drained(client):
                time.sleep(0.005)
            base.values.append(count / (time.perf_counter() - started))

            ids = [store.create(deck(1), title="noop")[0].id for _ in range(count)]
            started = time.perf_counter()
            for _ in ids:  # one wake-up per job, as the API sends them
                app.send_task("slidefarm.render_presentation")
            engine = store.engine
            with engine.connect() as conn:
                while conn.execute(
                    text(
                        "SELECT count(*) FROM jobs WHERE status = 'queued' OR status = 'processing'"
                    )
                ).scalar():
                    time.sleep(0.005)
                    conn.rollback()
            farm.values.append(count / (time.perf_counter() - started))
            done = store.list_jobs(status=Status.COMPLETED, limit=500).jobs
            assert done and all(j.status is Status.COMPLETED for j in done)
    finally:
        env.stop(worker)
    return Result(
        "dispatch",
        "per s",
        base,
        farm,
        goal=">= 0.7",
        better="higher",
        threshold=0.7,
        notes={"messages per run": count},
    )


def render(env: Environment, args: argparse.Namespace) -> Result:
    """Drawing 10 slides and one encode by hand, against the same 10-slide 720p
    deck through a worker, claim to completed."""
    from core.deck import Deck
    from workers.slides import render_slide, save_png
    from workers.video import encode

    env.reset()
    spec = deck(10)
    parsed = Deck.model_validate(spec)
    proc, base = env.api()
    worker = env.worker("render", concurrency=2)
    store = JobStore.from_url(env.db_url)
    hand, farm = Series(), Series()
    try:
        warm = post(base, "/v1/jobs", spec)["job_id"]
        _wait_completed(store, [warm])
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                images = []
                for i in range(len(parsed.slides)):
                    path = Path(folder) / f"{i + 1:03d}.png"
                    save_png(render_slide(parsed, i), path)
                    images.append(path)
                encode(
                    images,
                    [s.duration for s in parsed.slides],
                    30,
                    Path(folder) / "v.mp4",
                    preset="ultrafast",
                )
                hand.values.append(time.perf_counter() - started)
            job_id = post(base, "/v1/jobs", spec)["job_id"]
            job = _wait_completed(store, [job_id])[0]
            assert job.started_at and job.completed_at
            farm.values.append((job.completed_at - job.started_at).total_seconds())
    finally:
        env.stop(worker)
        env.stop(proc)
    return Result("render", "s", hand, farm, goal="<= 1.2", better="lower", threshold=1.2)


def _wait_completed(store: JobStore, ids: list[str], timeout: float = 120) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [store.get(i) for i in ids]
        if all(j.status.is_final for j in jobs):
            bad = [j for j in jobs if j.status is not Status.COMPLETED]
            if bad:
                raise SystemExit(f"benchmark job failed: {bad[0].error}")
            return jobs
        time.sleep(0.05)
    raise SystemExit("benchmark jobs did not finish in time")


def _bulk_insert(url: str, rows: int) -> None:
    """Jobs generated by PostgreSQL itself: mostly finished, 1% queued, and
    the newest 100 queued too, so that the first page of ``?status=queued``
    is a full page (50 jobs) on both sides: the pages compared are the same
    size and only the table differs."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    small = json.dumps(deck(1))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, status, stage, progress, attempts, title, deck, "
                "created_at, queued_at, dispatched_at, completed_at, attempt_limit) "
                "SELECT gen_random_uuid()::text, "
                "CASE WHEN g % 100 = 0 OR g <= 100 THEN 'queued' ELSE 'completed' END, "
                "CASE WHEN g % 100 = 0 OR g <= 100 THEN 'queued' ELSE 'done' END, "
                "CASE WHEN g % 100 = 0 OR g <= 100 THEN 0 ELSE 1 END, 1, 'bulk ' || g, "
                "CAST(:deck AS jsonb), "
                "now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval, "
                "now() - (g || ' seconds')::interval, "
                "CASE WHEN g % 100 = 0 OR g <= 100 THEN NULL "
                "ELSE now() - (g || ' seconds')::interval END, 3 "
                "FROM generate_series(1, :n) AS g"
            ),
            {"deck": small, "n": rows},
        )
    # As autovacuum leaves a table in production: statistics, and the
    # visibility map and hint bits set (else the first reads of every page
    # write it, and the large side pays for the bulk load, not for its size).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) jobs"))
        # Flush the load's dirty pages now, not during the measurement.
        conn.execute(text("CHECKPOINT"))
    engine.dispose()


def scale(env: Environment, args: argparse.Namespace) -> Result:
    """Status read and the first page of ?status=queued with 1,000 jobs and
    with ``--scale-rows`` jobs (time per request; cache off, so the database
    answers). The two tables live in two databases of the same server,
    each behind its own API, measured in alternation, so drift on a shared
    machine falls on both sides alike."""
    from storage.migrate import copy_database, upgrade

    env.reset()
    details: dict[str, Any] = {}
    procs = []
    with env.scratch_database("small") as small_url:
        try:
            upgrade(small_url)
            copy_database(env.db_url, small_url)  # the run's key works on both
            bases: dict[str, tuple[str, str]] = {}
            for label, url, rows in (
                ("small", small_url, 1_000),
                ("large", env.db_url, args.scale_rows),
            ):
                started = time.perf_counter()
                _bulk_insert(url, rows - 1)
                job_id = _processing_job(url)
                details[f"insert {rows:,} rows"] = f"{time.perf_counter() - started:.1f} s"
                proc, base = env.api(DATABASE_URL=url)
                procs.append(proc)
                bases[label] = (base, job_id)
                assert JobStore.from_url(url).list_jobs(status=Status.QUEUED, limit=50).jobs
            for base, job_id in bases.values():
                wrk(base + f"/v1/jobs/{job_id}", duration=1)
                wrk(base + "/v1/jobs?status=queued", duration=1)
            sides = {"small": Series(), "large": Series()}
            for _ in range(args.repeat):
                for label, (base, job_id) in bases.items():
                    read = wrk(base + f"/v1/jobs/{job_id}", duration=args.duration)
                    page = wrk(base + "/v1/jobs?status=queued", duration=args.duration)
                    if read.errors or page.errors:
                        raise SystemExit("scale: failed requests under load")
                    # ms per request of the two, added
                    sides[label].values.append(
                        1000 / read.requests_per_second + 1000 / page.requests_per_second
                    )
        finally:
            for proc in procs:
                env.stop(proc)
    return Result(
        "scale",
        "ms/req",
        sides["small"],
        sides["large"],
        goal="<= 1.2",
        better="lower",
        threshold=1.2,
        notes=details,
    )


def worker_memory(
    env: Environment, args: argparse.Namespace, early: int = 50, late: int = 1000
) -> Result:
    """RSS of a worker (and its pool) after 50 real renders and after 1,000."""
    env.reset()
    store = JobStore.from_url(env.db_url)
    app = _celery(env)
    worker = env.worker("memory", concurrency=2)
    tiny = deck(1, duration=0.5, resolution="480p")
    tiny["options"]["fps"] = 24
    base, farm = Series(), Series()
    try:

        def run(count: int) -> None:
            ids = [store.create(tiny, title="tiny")[0].id for _ in range(count)]
            for _ in ids:  # one wake-up per job, as the API sends them
                app.send_task("slidefarm.render_presentation")
            _wait_completed(store, ids, timeout=900)

        run(early)
        base.values.append(rss_kib(worker.pid) / 1024)
        run(late - early)
        farm.values.append(rss_kib(worker.pid) / 1024)
    finally:
        env.stop(worker)
    return Result(
        "worker_memory",
        "MiB",
        base,
        farm,
        goal="<= 1.1",
        better="lower",
        threshold=1.1,
        notes={"jobs": f"{early} then {late}"},
    )


def seed_reads(env: Environment, args: argparse.Namespace) -> Result:
    """The seed's figure: 1,000 status reads of one job, one client, wall time."""
    env.reset()
    job_id = _processing_job(env.db_url)
    results: dict[str, Series] = {"nocache": Series(), "cache": Series()}
    for label, extra in (("nocache", {}), ("cache", {"REDIS_URL": env.redis_url})):
        proc, base = env.api(**extra)
        host, port = base.removeprefix("http://").split(":")
        try:
            for _ in range(args.repeat):
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                started = time.perf_counter()
                for _ in range(1000):
                    conn.request("GET", f"/v1/jobs/{job_id}", headers=AUTH)
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200
                results[label].values.append(time.perf_counter() - started)
                conn.close()
        finally:
            env.stop(proc)
    return Result(
        "seed_1000_reads",
        "s",
        results["nocache"],
        results["cache"],
        goal="reported",
        better="lower",
        threshold=None,
        notes={"baseline": "cache off", "slidefarm": "cache on"},
    )
