"""The connection budget at scale: W Celery workers of C render processes
and A API processes (gunicorn) run through a private PgBouncer in
transaction-pooling mode (``default_pool_size`` P) on a fresh database;
J jobs are submitted through the API and must all complete, while the
server connections to the database are counted in ``pg_stat_activity``
(and PgBouncer's client connections in ``SHOW POOLS``).

    python -m bench.connections --workers 50 --concurrency 1 --api 4 --pool 20 --jobs 300
    python -m bench.connections --workers 32 --concurrency 1 --api 2 --direct

Renders are ``SLIDEFARM_NOOP_RENDER`` (claims, heartbeats, progress and
completion happen; drawing and encoding do not): what is measured is the
database traffic, not the CPU a 2-core machine cannot give 100 renders.
Uses the test suite's helpers (PgBouncer, processes, a private Redis);
needs PostgreSQL (``SLIDEFARM_TEST_PG_URL``) and Debian's pgbouncer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2

from storage.db import dispose_engines
from tests.support.decks import small_deck
from tests.support.pgbouncer import PgBouncer, server_connections
from tests.support.services import (
    admin_engine,
    alembic_upgrade,
    create_pg_database,
    drop_pg_database,
)
from tests.support.stack import Proc, RedisServer, Stack, stack_env


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connections", description=__doc__)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--api", type=int, default=4, help="API processes (gunicorn workers)")
    parser.add_argument("--pool", type=int, default=20, help="PgBouncer's default_pool_size")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument(
        "--direct", action="store_true", help="no PgBouncer: every process on PostgreSQL itself"
    )
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    admin = admin_engine()
    url = create_pg_database(admin, "slidefarm_bench_conn")
    database = url.rsplit("/", 1)[1]
    alembic_upgrade(url)
    folder = Path(tempfile.mkdtemp(prefix="slidefarm-bench-conn-"))
    redis = RedisServer(folder)
    redis.start()
    bouncer = PgBouncer(url, pool_size=args.pool)
    bouncer.start()
    env = stack_env(
        DATABASE_URL=url,
        CELERY_BROKER_URL=redis.url,
        SLIDEFARM_OUTPUT_DIR=str(folder / "output"),
        SLIDEFARM_NOOP_RENDER="1",
        SLIDEFARM_MAX_ACTIVE_JOBS="100000",
    )
    stack = Stack(env, folder)  # its admin key, made directly
    dispose_engines()  # and no connection of this process counted
    if not args.direct:
        stack.env["DATABASE_URL"] = bouncer.url(database)
    samples: list[int] = []
    peak: list[list[str]] = [[]]
    clients: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            names = [n for n, _ in server_connections(admin, database) if n != "bench"]
            samples.append(len(names))
            if len(names) > len(peak[0]):
                peak[0] = names
            if args.direct:
                continue
            pools = [p for p in bouncer.show("POOLS") if p["database"] == database]
            clients.append(sum(int(p["cl_active"]) + int(p["cl_waiting"]) for p in pools))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        api = Proc(
            "api",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "gthread",
                "-w",
                str(args.api),
                "--threads",
                "4",
                "-b",
                f"127.0.0.1:{stack.port}",
                "api:create_app()",
            ],
            stack.env,
            folder,
        )
        stack.procs.append(api)
        stack.wait_ready(api, timeout=120)
        for n in range(args.workers):
            stack.start_worker(f"w{n}", concurrency=args.concurrency)
        deck = small_deck(slides=2, duration=0.5)

        def submit(_: int) -> str:
            status, body = stack.request("POST", "/v1/jobs", deck)
            assert status == 202, body
            return str(body["job_id"])

        with ThreadPoolExecutor(8) as pool:
            jobs = list(pool.map(submit, range(args.jobs)))
        submitted = time.monotonic()
        direct = psycopg2.connect(url, application_name="bench")
        direct.autocommit = True
        deadline = time.monotonic() + args.timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            with direct.cursor() as cur:
                cur.execute("SELECT status, count(*) FROM jobs GROUP BY status")
                counts = {str(s): int(c) for s, c in cur.fetchall()}
            if counts.get("completed", 0) + counts.get("failed", 0) >= len(jobs):
                break
            time.sleep(1)
        finished = time.monotonic()
        with direct.cursor() as cur:
            cur.execute(
                "SELECT count(DISTINCT worker) FROM job_events WHERE to_status = 'processing'"
            )
            claimers = int(cur.fetchone()[0])
        direct.close()
    finally:
        stop.set()
        sampler.join(timeout=10)
        stack.stop_all()
        bouncer.stop()
        redis.stop()
        drop_pg_database(admin, url)
        shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {
        "worker_processes": args.workers * (args.concurrency + 1),
        "render_processes": args.workers * args.concurrency,
        "api_processes": args.api,
        "default_pool_size": None if args.direct else args.pool,
        "jobs": args.jobs,
        "jobs_by_status": counts,
        "workers_that_claimed": claimers,
        "max_server_connections": max(samples, default=0),
        "max_pgbouncer_clients": max(clients, default=0),
        # By application_name's role (through PgBouncer: the last client's).
        "at_peak_by_role": dict(Counter(name.split("-")[1] for name in peak[0] if "-" in name)),
        "seconds_to_start_and_submit": round(submitted - started, 1),
        "seconds_to_finish": round(finished - submitted, 1),
    }
    print(json.dumps(result, indent=2))
    return 0 if counts.get("completed", 0) == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
