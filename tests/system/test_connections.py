"""The connection budget (README, "Connection budget"), measured on the
server: real API (gunicorn) and worker (celery) processes, every server
connection to the test database counted in ``pg_stat_activity`` while they
work. Through PgBouncer in transaction-pooling mode everything works (claims
under a tenant's cap with their transaction-level advisory lock, cancel,
retry, webhooks, the sweeper) on its few server connections; without it,
each process holds about one connection."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from storage import JobStore
from storage.access import AccessStore
from storage.db import dispose_engines
from storage.jobs.values import utcnow
from storage.models import tenants_table
from tests.support.clients import bearer
from tests.support.decks import small_deck
from tests.support.pgbouncer import PgBouncer, server_connections
from tests.support.services import flush_run_index
from tests.support.stack import Stack, make_stack
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e

#: A job of about a second.
SHORT = small_deck(slides=2, duration=0.5)


class Sampler:
    """Counts the server connections to one database every ``every`` s, in
    a thread, until stopped: each sample a list of (application_name, state)."""

    def __init__(self, admin: Any, database: str, every: float = 0.1) -> None:
        self.admin = admin
        self.database = database
        self.every = every
        self.samples: list[list[tuple[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(server_connections(self.admin, self.database))

    def most(self) -> int:
        return max((len(s) for s in self.samples), default=0)

    def latest(self) -> list[tuple[str, str]]:
        return server_connections(self.admin, self.database)


def _submit(stack: Stack, body: dict[str, Any], key: dict[str, str] | None = None) -> str:
    status, answer = stack.request("POST", "/v1/jobs", body, headers=key)
    assert status == 202, answer
    return str(answer["job_id"])


def _tenant_key(url: str, name: str, **limits: Any) -> dict[str, str]:
    store = JobStore.from_url(url)
    token = AccessStore(store).create_key(name).token
    with store.engine.begin() as conn:
        conn.execute(update(tenants_table).where(tenants_table.c.name == name).values(**limits))
    return bearer(token)


def _most_running(store: JobStore, job_ids: list[str]) -> int:
    """The most of ``job_ids`` processing at once, from their history."""
    spans = []
    for job_id in job_ids:
        start = None
        for event in store.history(job_id):
            if event.to_status == "processing":
                start = event.at
            elif start is not None:
                spans.append((start, event.at))
                start = None
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


def _no_tracebacks(stack: Stack) -> None:
    """No process failed anything on the way (a sweeper thread that died, a
    task that raised)."""
    for proc in stack.procs:
        assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.fixture
def bouncer(pg_url: str) -> Iterator[PgBouncer]:
    server = PgBouncer(pg_url, pool_size=5)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_everything_works_through_pgbouncer_on_its_few_server_connections(
    pg_url: str, pg_server: Any, redis_url: str, tmp_path: Path, bouncer: PgBouncer
) -> None:
    flush_run_index(redis_url)
    database = pg_url.rsplit("/", 1)[1]
    stack = make_stack(
        pg_url,
        redis_url,
        tmp_path,
        SLIDEFARM_SWEEP_INTERVAL="0.5",
        SLIDEFARM_WEBHOOK_ALLOW="127.0.0.1/32",
        SLIDEFARM_WEBHOOK_BACKOFF="0.2",
    )
    capped = _tenant_key(pg_url, "capped", max_running=2)
    dispose_engines()  # the test's own direct connections: none while it counts
    stack.env["DATABASE_URL"] = bouncer.url(database)
    receiver = Receiver()
    try:
        with Sampler(pg_server, database) as sampler:
            stack.start_api()
            for n in range(3):
                stack.start_worker(f"w{n}", concurrency=2)
            capped_jobs = [_submit(stack, SHORT, capped) for _ in range(8)]
            hooked = [
                _submit(stack, {**SHORT, "callback_url": receiver.url(f"/ok-{n}")})
                for n in range(3)
            ]
            later = _submit(
                stack, {**SHORT, "run_at": (utcnow() + timedelta(seconds=2)).isoformat()}
            )
            cancelled = _submit(stack, small_deck(slides=4, duration=2.0))
            assert stack.request("POST", f"/v1/jobs/{cancelled}/cancel")[0] == 202
            assert stack.wait_final(cancelled)["status"] == "cancelled"
            assert stack.request("POST", f"/v1/jobs/{cancelled}/retry")[0] == 202
            for job_id in [*capped_jobs, *hooked, later, cancelled]:
                assert stack.wait_final(job_id, timeout=180)["status"] == "completed", job_id
            for n in range(3):
                receiver.wait(f"/ok-{n}", 1)
            status, metrics = stack.request("GET", "/metrics")
            assert status == 200
            assert b'slidefarm_db_pool_connections{state="in_use"}' in metrics
    finally:
        stack.stop_all()
        receiver.close()
        stack.env["DATABASE_URL"] = pg_url
    _no_tracebacks(stack)
    store = JobStore.from_url(pg_url)
    assert _most_running(store, capped_jobs) == 2  # the cap held, and was the limit
    reasons = [event.reason for event in store.history(later)]
    assert "run_at reached" in reasons  # the sweeper promoted it
    # 2 API processes and 3 workers of 2 (9 worker processes) on 5 server connections.
    print(f"through PgBouncer: at most {sampler.most()} server connections")
    assert 0 < sampler.most() <= bouncer.pool_size


def test_each_process_holds_about_one_connection(
    pg_url: str, pg_server: Any, redis_url: str, tmp_path: Path
) -> None:
    flush_run_index(redis_url)
    database = pg_url.rsplit("/", 1)[1]
    stack = make_stack(
        pg_url,
        redis_url,
        tmp_path,
        SLIDEFARM_SWEEP_INTERVAL="1",
        SLIDEFARM_HEARTBEAT_INTERVAL="1",
    )
    dispose_engines()
    workers, processes = 8, 2
    try:
        with Sampler(pg_server, database, every=0.2) as sampler:
            stack.start_api()  # 2 gunicorn workers
            for n in range(workers):
                stack.start_worker(f"w{n}", concurrency=processes)
            jobs = [_submit(stack, SHORT) for _ in range(workers * processes * 2)]
            busy_from = len(sampler.samples)
            for job_id in jobs:
                assert stack.wait_final(job_id, timeout=180)["status"] == "completed"
            busy = sampler.samples[busy_from:]
            time.sleep(2.5)  # idle: render processes let theirs go, sweepers between sweeps
            idle = sampler.latest()
    finally:
        stack.stop_all()
    _no_tracebacks(stack)
    # Per process (application_name carries role and pid): a render process
    # never more than its one (its heartbeats wait for it), an API process
    # its pool and one more for a moment.
    per_process = Counter[str]()
    for sample in busy:
        for name, count in Counter(name for name, _ in sample).items():
            per_process[name] = max(per_process[name], count)
    roles = Counter(name.split("-")[1] for name in per_process)
    assert set(roles) <= {"api", "worker", "render"}, per_process
    assert all(count <= 1 for name, count in per_process.items() if "render" in name)
    assert all(count <= 3 for name, count in per_process.items() if "-api-" in name)
    # In all: one per worker process (a main process only while it sweeps)
    # and the API's pools (2 each), give or take a moment's overflow.
    bound = workers * (processes + 1) + 2 * 2 + 4
    rendering = max(sum(1 for name, _ in s if "-render-" in name) for s in busy)
    assert rendering <= workers * processes + 4, rendering
    most = max(len(s) for s in busy)
    busiest = max(busy, key=len)
    by_role = Counter(name.split("-")[1] for name, _ in busiest)
    print(
        f"{workers} workers x {processes} processes and 2 API processes: at most {most} "
        f"connections while busy (bound {bound}; by role {dict(by_role)}), "
        f"{len(idle)} idle: {sorted(idle)}"
    )
    assert most <= bound, sorted(busiest)
    # Idle, the workers hold nothing; the API processes their pools.
    assert len(idle) <= 2 * 2 + 1, idle
