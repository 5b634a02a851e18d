"""Render hosts: what they log and count, on real worker processes
started as the README says (``celery -A workers worker -n NAME@%h``: no
``-l info``, so Celery logs at its default WARNING level)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from core.config import Settings
from storage import JobStore, Status
from storage.registry import WorkerRegistry
from tests.support.clients import admin_client
from tests.support.decks import slow_deck, small_deck
from tests.support.services import NO_LIMITS, flush_run_index, truncate_tables
from tests.support.stack import FAST_RECOVERY, Proc, stack_env, wait_until

pytestmark = pytest.mark.e2e

SECRET = "sf_abc123_SECRETsecretSECRET"


class Farm:
    """An in-process API (the client) and worker processes on PostgreSQL and Redis."""

    def __init__(self, pg_url: str, redis_url: str, tmp_path: Path) -> None:
        self.env = stack_env(
            DATABASE_URL=pg_url,
            CELERY_BROKER_URL=redis_url,
            SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
            **FAST_RECOVERY,
        )
        # A heartbeat slower than the render's own writes: a deletion is met
        # by the render itself (its folder gone), as on a real host.
        self.env["SLIDEFARM_HEARTBEAT_INTERVAL"] = "5"
        self.env["SLIDEFARM_STALE_AFTER"] = "30"
        settings = Settings(
            DATABASE_URL=pg_url,
            CELERY_BROKER_URL=redis_url,
            SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
            **NO_LIMITS,
        )
        self.client = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
        self.svc = self.client.application.extensions["slidefarm"]
        self.store: JobStore = self.svc.store
        self.tmp_path = tmp_path
        self.workers: list[Proc] = []

    def start_worker(self, name: str, **env: str) -> Proc:
        """Exactly the README's command (and two pool processes)."""
        proc = Proc(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-n",
                f"{name}@%h",
                "--concurrency",
                "2",
            ],
            {**self.env, **env},
            self.tmp_path,
        )
        self.workers.append(proc)
        wait_until(
            lambda: any(w.name.startswith(name) for w in WorkerRegistry(self.store).list_workers()),
            60,
            f"worker {name} never registered:\n{proc.log()[-3000:]}",
        )
        return proc

    def submit(self, deck: dict[str, Any]) -> str:
        answer = self.client.post("/v1/jobs", json=deck)
        assert answer.status_code == 202, answer.get_data(as_text=True)
        return str(answer.get_json()["job_id"])

    def wait(self, job_id: str, predicate: Any, timeout: float = 120) -> Any:
        found: list[Any] = []

        def check() -> bool:
            found[:] = [self.store.get(job_id)]
            return bool(predicate(found[0]))

        wait_until(
            check,
            timeout,
            f"job {job_id} never matched: {found}\n"
            + "\n".join(w.log()[-3000:] for w in self.workers),
        )
        return found[0]

    def stop(self) -> None:
        for proc in self.workers:
            proc.stop()


@pytest.fixture
def farm(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Farm]:
    truncate_tables(pg_url)
    flush_run_index(redis_url)
    found = Farm(pg_url, redis_url, tmp_path)
    try:
        yield found
    finally:
        found.stop()


def test_a_render_host_logs_its_transitions_and_a_deletion_plainly(farm: Farm) -> None:
    worker = farm.start_worker("render1")
    deleted = farm.submit(slow_deck(slides=8, seconds=4.0))
    farm.wait(deleted, lambda j: j.status is Status.PROCESSING and j.progress > 0)
    assert farm.client.delete(f"/v1/jobs/{deleted}").status_code == 204
    done = farm.submit(small_deck(slides=2))
    cancelled = farm.submit(slow_deck(slides=8, seconds=4.0))
    farm.wait(cancelled, lambda j: j.status is Status.PROCESSING and j.progress > 0)
    assert farm.client.post(f"/v1/jobs/{cancelled}/cancel").status_code == 202
    # A stored deck the renderer refuses (the API would have refused it at
    # submission), carrying a key: the failure line must not show it.
    bad, _ = farm.store.create({"title": "bad", "slides": SECRET}, title="bad")
    farm.svc.dispatcher.wake()
    assert farm.wait(done, lambda j: j.status.is_final).status is Status.COMPLETED
    assert farm.wait(cancelled, lambda j: j.status.is_final).status is Status.CANCELLED
    assert farm.wait(bad.id, lambda j: j.status.is_final).status is Status.FAILED
    wait_until(
        lambda: "job deleted while rendering; stopped" in worker.log(),
        30,
        f"no word of the deletion:\n{worker.log()[-4000:]}",
    )
    worker.stop()
    log = worker.log()

    # The deletion: said plainly, at INFO, nothing else.
    said = [line for line in log.splitlines() if deleted in line]
    assert any(
        "INFO" in line and "job deleted while rendering; stopped" in line for line in said
    ), said
    assert "Traceback" not in log and "crashed" not in log, log[-4000:]
    assert "late write refused" not in log and "ERROR" not in log, log[-4000:]
    # Claims, completions and failures reach the default level, redacted.
    for job_id, to in (
        (done, "processing"),
        (done, "completed"),
        (bad.id, "failed"),
        (cancelled, "cancelled"),
    ):
        assert f"transition job={job_id} " in log and f" to={to} " in log, (job_id, to)
    assert any(f"job={done}" in line and "to=completed" in line for line in log.splitlines())
    assert any(f"job={bad.id}" in line and "to=failed" in line for line in log.splitlines())
    assert "SECRETsecret" not in log and "sf_abc123_***" in log

    # Each outcome counted as itself.
    [row] = [w for w in WorkerRegistry(farm.store).list_workers() if w.name.startswith("render1")]
    assert (row.jobs_done, row.jobs_failed, row.jobs_cancelled, row.jobs_retried) == (1, 1, 1, 0)


def test_a_retry_is_counted_as_a_retry(farm: Farm) -> None:
    # ffmpeg refuses an unknown preset: a transient encode failure, retried
    # until the attempts are spent.
    farm.start_worker("render2", SLIDEFARM_X264_PRESET="no-such-preset")
    job_id = farm.submit(small_deck(slides=1))
    ended = farm.wait(job_id, lambda j: j.status.is_final)
    assert ended.status is Status.FAILED and ended.attempts == 3
    [row] = [w for w in WorkerRegistry(farm.store).list_workers() if w.name.startswith("render2")]
    wait_until(
        lambda: WorkerRegistry(farm.store).list_workers()[0].jobs_failed == 1,
        10,
        "the failure was not counted",
    )
    row = WorkerRegistry(farm.store).list_workers()[0]
    assert (row.jobs_done, row.jobs_failed, row.jobs_cancelled, row.jobs_retried) == (0, 1, 0, 2)
