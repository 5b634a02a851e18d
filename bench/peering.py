"""slidefarm beside its peers (bench/peers/), in the same run: what a user
would otherwise run for the same job.

For each side: the submission rate and the status-read rate with their p99 at
32 connections (wrk, the same gunicorn settings for every app, no worker
running), and the end-to-end throughput of no-op jobs (``--e2e-jobs`` jobs
submitted over HTTP by 8 client threads while the side's worker runs, timed
from the first submission until the last is done; every side's worker has 2
processes). Each repeat measures every side back to back, in a rotating
order, so slidefarm's ratio to a peer is the median of paired runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.cases import HELLO, _processing_job, deck
from bench.harness import AUTH, Environment, Result, Series, post_script, wrk
from bench.peers import NAMES, peer
from bench.peers.config import Where

WORKER_PROCESSES = 2
CLIENTS = 8
PATHS = ("submit", "status", "e2e")


@dataclass
class Side:
    """One app measured: slidefarm or a peer."""

    name: str
    base: str
    submit_path: str
    status_path: str
    durable: bool
    reset: Callable[[], None]
    start_worker: Callable[[], list[subprocess.Popen[bytes]]]
    unfinished: Callable[[list[str]], int]
    rate: dict[str, Series] = field(default_factory=dict)
    p99: dict[str, Series] = field(default_factory=dict)

    def record(self, path: str, rate: float, p99: float | None) -> None:
        self.rate.setdefault(path, Series()).values.append(rate)
        if p99 is not None:
            self.p99.setdefault(path, Series()).values.append(p99)


def _slidefarm(env: Environment) -> Side:
    _, base = env.api(REDIS_URL=env.redis_url)
    job_id = _processing_job(env.db_url)
    engine = create_engine(env.db_url.replace("postgresql://", "postgresql+psycopg2://"))

    def unfinished(ids: list[str]) -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM jobs WHERE id = ANY(:ids) "
                        "AND status IN ('queued', 'processing')"
                    ),
                    {"ids": ids},
                ).scalar_one()
            )

    def start_worker() -> list[subprocess.Popen[bytes]]:
        return [
            env.worker(
                "bench",
                concurrency=WORKER_PROCESSES,
                SLIDEFARM_NOOP_RENDER="1",
                SLIDEFARM_HEARTBEAT_INTERVAL="5",
            )
        ]

    def reset() -> None:
        engine.dispose()
        env.reset()

    return Side(
        "slidefarm", base, "/v1/jobs", f"/v1/jobs/{job_id}", True, reset, start_worker, unfinished
    )


def _peer(env: Environment, name: str, database_url: str) -> Side:
    p = peer(name)
    where = Where(database_url, env.redis_url)
    p.prepare(where)
    _, base = env.api(app=p.app, ready="/healthz", **where.environ())
    job_id = p.sample_job(where)

    def start_worker() -> list[subprocess.Popen[bytes]]:
        return [
            env.spawn(f"{name}-worker-{n}", argv, env.env(**where.environ()))
            for n, argv in enumerate(p.worker_argv(where, WORKER_PROCESSES))
        ]

    return Side(
        name,
        base,
        "/jobs",
        f"/jobs/{job_id}",
        p.durable,
        lambda: p.reset(where),
        start_worker,
        lambda ids: p.unfinished(where, ids),
    )


def _load(side: Side, path: str, duration: float, script: Path) -> tuple[float, float]:
    url = side.base + (side.submit_path if path == "submit" else side.status_path)
    run = wrk(url, duration=duration, script=script if path == "submit" else None)
    if run.errors:
        raise SystemExit(f"peers: {side.name} {path}: {run.errors} failed requests under load")
    return run.requests_per_second, run.p99_ms


def _submit_all(side: Side, body: bytes, count: int) -> list[str]:
    """``count`` submissions over HTTP from :data:`CLIENTS` keep-alive clients."""
    host, port = side.base.removeprefix("http://").split(":")
    ids: list[str] = []
    lock = threading.Lock()
    failures: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Content-Type": "application/json", **AUTH}
        try:
            for _ in range(n):
                conn.request("POST", side.submit_path, body, headers)
                response = conn.getresponse()
                answer = response.read()
                if response.status != 202:
                    failures.append(f"{response.status} {answer[:200]!r}")
                    return
                with lock:
                    ids.append(json.loads(answer)["job_id"])
        finally:
            conn.close()

    shares = [count // CLIENTS + (1 if i < count % CLIENTS else 0) for i in range(CLIENTS)]
    threads = [threading.Thread(target=client, args=(n,)) for n in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"peers: {side.name} e2e submission failed: {failures[0]}")
    return ids


def _end_to_end(side: Side, body: bytes, count: int, timeout: float = 300) -> float:
    """Jobs per second from the first submission until the last is done."""
    started = time.perf_counter()
    ids = _submit_all(side, body, count)
    deadline = time.monotonic() + timeout
    while side.unfinished(ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"peers: {side.name}: {count} no-op jobs not done in {timeout} s")
        time.sleep(0.01)
    return count / (time.perf_counter() - started)


def _ratios(farm: Series, other: Series) -> list[float]:
    return [s / o for s, o in zip(farm.values, other.values, strict=True) if o]


def _median_ratio(farm: Series, other: Series) -> float | None:
    pairs = _ratios(farm, other)
    return round(statistics.median(pairs), 4) if pairs else None


def _figures(farm: Side, side: Side) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in PATHS:
        if path not in side.rate:
            continue
        rate, p99 = side.rate[path], side.p99.get(path)
        entry: dict[str, Any] = {
            "rate": round(rate.median, 1),
            "rate_min": round(min(rate.values), 1),
            "rate_max": round(max(rate.values), 1),
            "p99_ms": round(p99.median, 2) if p99 else None,
            "unit": "jobs/s" if path == "e2e" else "req/s",
        }
        if side is not farm:
            entry["slidefarm_ratio"] = _median_ratio(farm.rate[path], rate)
            pairs = _ratios(farm.rate[path], rate)
            entry["slidefarm_ratio_range"] = [round(min(pairs), 4), round(max(pairs), 4)]
            if p99 and path in farm.p99:
                entry["slidefarm_p99_ratio"] = _median_ratio(farm.p99[path], p99)
        out[path] = entry
    return out


def _table(table: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"  {'side':<15}{'path':<8}{'rate':>10}{'unit':>8}{'p99 ms':>9}"
        f"{'slidefarm x':>13}{'p99 x':>8}"
    ]
    for name, paths in table.items():
        for path, e in paths.items():
            ratio = e.get("slidefarm_ratio")
            p99_ratio = e.get("slidefarm_p99_ratio")
            lines.append(
                f"  {name:<15}{path:<8}{e['rate']:>10.1f}{e['unit']:>8}"
                f"{'-' if e['p99_ms'] is None else format(e['p99_ms'], '.2f'):>9}"
                f"{'-' if ratio is None else format(ratio, '.3f'):>13}"
                f"{'-' if p99_ratio is None else format(p99_ratio, '.2f'):>8}"
            )
    return "\n".join(lines)


def peers(env: Environment, args: argparse.Namespace) -> Result:
    env.reset()
    body = json.dumps(deck(5))
    script = post_script(body)
    count = args.e2e_jobs
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with (
            env.scratch_database("seed") as seed_db,
            env.scratch_database("procrastinate") as procrastinate_db,
        ):
            databases = {"seed": seed_db, "procrastinate": procrastinate_db}
            farm = _slidefarm(env)
            sides = [farm] + [_peer(env, name, databases.get(name, "")) for name in NAMES]
            hello = Side("hello", farm.base, HELLO, HELLO, False, *_nothing())
            print(f"  HTTP: {args.repeat} x {args.duration} s per side and path", flush=True)
            for side in [hello, *sides]:
                for path in ("status", "submit") if side is not hello else ("status",):
                    _load(side, path, 1, script)  # warm connections and caches
            for repeat in range(args.repeat):
                order = sides[repeat % len(sides) :] + sides[: repeat % len(sides)]
                hello.record("status", *_load(hello, "status", args.duration, script))
                for path in ("status", "submit"):
                    for side in order:
                        side.record(path, *_load(side, path, args.duration, script))
            print(f"  end to end: {args.repeat} x {count} no-op jobs per side", flush=True)
            env.flush_redis()  # the queues the submissions built
            for side in sides:
                side.reset()
            for side in sides:
                workers += side.start_worker()
            time.sleep(5)  # every worker up and idle
            encoded = body.encode()
            for side in sides:
                _end_to_end(side, encoded, 20)  # warm, and proves the worker runs
            for repeat in range(args.repeat):
                order = sides[repeat % len(sides) :] + sides[: repeat % len(sides)]
                for side in order:
                    side.record("e2e", _end_to_end(side, encoded, count), None)
            for proc in workers:
                env.stop(proc)
            workers = []
    finally:
        for proc in workers:
            env.stop(proc)
        script.unlink()
        env.stop_all()
    table = {side.name: _figures(farm, side) for side in [farm, hello, *sides[1:]]}
    print(_table(table))
    return _verdict(farm, hello, sides[1:], table)


def _nothing() -> tuple[Callable[[], None], Callable[[], list[Any]], Callable[[list[str]], int]]:
    return (lambda: None), (lambda: []), (lambda ids: 0)


def _verdict(farm: Side, hello: Side, others: list[Side], table: dict[str, Any]) -> Result:
    """The issue's goals: submission and status read at least 1.0x the best
    peer that keeps a durable job record, status read at least 0.8x
    hello-world, end-to-end at least 1.0x the seed design."""
    durable = [s for s in others if s.durable]
    best = {
        path: max(durable, key=lambda s: s.rate[path].median).name for path in ("submit", "status")
    }
    goals = {
        f"submit vs best durable ({best['submit']})": (
            table[best["submit"]]["submit"]["slidefarm_ratio"],
            1.0,
        ),
        f"status vs best durable ({best['status']})": (
            table[best["status"]]["status"]["slidefarm_ratio"],
            1.0,
        ),
        "status vs hello-world": (table["hello"]["status"]["slidefarm_ratio"], 0.8),
        "e2e vs seed": (table["seed"]["e2e"]["slidefarm_ratio"], 1.0),
    }
    notes = {
        name: f"{ratio:.3f} (goal >= {goal}) {'PASS' if ratio >= goal else 'FAIL'}"
        for name, (ratio, goal) in goals.items()
    }
    headline = next(s for s in others if s.name == best["submit"])
    return Result(
        "peers",
        "req/s",
        headline.rate["submit"],
        farm.rate["submit"],
        goal=">= 1.0 (all 4)",
        better="higher",
        threshold=1.0,
        notes={"baseline": f"{headline.name} submit", **notes},
        extra_pass=all(ratio >= goal for ratio, goal in goals.values()),
        fields={
            "peers": table,
            "goals": {name: {"ratio": r, "goal": g} for name, (r, g) in goals.items()},
        },
    )
