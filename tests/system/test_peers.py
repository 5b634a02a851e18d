"""The benchmark's peers (bench/peers/) brought up for real, so they cannot rot:
each serves its API under gunicorn and runs its worker, takes one submission,
answers one status read, and completes the no-op job."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench.peers import NAMES, Peer, peer
from bench.peers.config import Where
from tests.support.services import create_pg_database, drop_pg_database
from tests.support.stack import Proc, free_port, gunicorn_argv

pytestmark = pytest.mark.e2e

DECK = {"title": "Peer", "slides": [{"title": "One", "duration": 1.0}]}


def _call(base: str, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def _wait_healthy(base: str, proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
        try:
            if _call(base, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{proc.name} not healthy:\n{proc.log()[-3000:]}")


@pytest.fixture
def peers_up(
    pg_server: Any, redis_url: str, tmp_path: Path
) -> Iterator[list[tuple[Peer, Where, str]]]:
    """Every peer's API and worker, started at once (their start-ups overlap)."""
    procs: list[Proc] = []
    databases: list[str] = []
    running: list[tuple[Peer, Where, str, Proc]] = []
    try:
        for name in NAMES:
            p = peer(name)
            database = ""
            if p.database:
                database = create_pg_database(pg_server, prefix=f"slidefarm_peer_{name}")
                databases.append(database)
            where = Where(database, redis_url)
            p.prepare(where)
            p.reset(where)
            env = {**os.environ, **where.environ(), "PYTHONUNBUFFERED": "1"}
            port = free_port()
            api = Proc(
                f"{name}-api",
                gunicorn_argv(f"127.0.0.1:{port}", workers=1, threads=2, app=p.app),
                env,
                tmp_path,
            )
            procs.append(api)
            for n, argv in enumerate(p.worker_argv(where, 1)):
                procs.append(Proc(f"{name}-worker-{n}", argv, env, tmp_path))
            running.append((p, where, f"http://127.0.0.1:{port}", api))
        for _, _, base, api in running:
            _wait_healthy(base, api)
        yield [(p, where, base) for p, where, base, _ in running]
    finally:
        with ThreadPoolExecutor(len(procs) or 1) as stopping:  # their shutdowns overlap
            list(stopping.map(lambda proc: proc.stop(timeout=10), procs))
        for database in databases:
            drop_pg_database(pg_server, database)


def test_each_peer_takes_a_job_answers_its_status_and_completes_it(
    peers_up: list[tuple[Peer, Where, str]],
) -> None:
    submitted = []
    for p, _, base in peers_up:
        status, body = _call(base, "POST", "/jobs", DECK)
        assert status == 202, (p.name, body)
        status, read = _call(base, "GET", f"/jobs/{body['job_id']}")
        assert status == 200 and read["job_id"] == body["job_id"], (p.name, read)
        submitted.append(body["job_id"])
    deadline = time.monotonic() + 20
    for (p, where, base), job_id in zip(peers_up, submitted, strict=True):
        while p.unfinished(where, [job_id]):
            assert time.monotonic() < deadline, f"{p.name}: the no-op job did not complete"
            time.sleep(0.05)
        status, read = _call(base, "GET", f"/jobs/{job_id}")
        assert (status, read["status"]) == (200, p.done), p.name
