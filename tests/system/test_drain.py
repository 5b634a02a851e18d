"""Rolling a worker with real processes: SIGTERM drains it (finish or hand
back, deregister, exit 0), and wake-ups of another message version are
accepted (older) or requeued, never dropped (newer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest
import redis

from api.dispatch import Dispatcher
from celeryconfig import QUEUE, RENDER_TASK, VERSION_HEADER, WAKE_VERSION
from core.config import Settings
from storage import JobStore, Status
from storage.registry import WorkerRegistry
from tests.support.decks import slow_deck, small_deck
from tests.support.stack import Proc, Stack, wait_until

pytestmark = pytest.mark.e2e


def _store(stack: Stack) -> JobStore:
    return JobStore.from_url(stack.env["DATABASE_URL"])


def _dispatcher(stack: Stack) -> Dispatcher:
    return Dispatcher(
        Settings(
            DATABASE_URL=stack.env["DATABASE_URL"],
            CELERY_BROKER_URL=stack.env["CELERY_BROKER_URL"],
        )
    )


def _registered(stack: Stack, proc: Proc, name: str) -> None:
    registry = WorkerRegistry(_store(stack))

    def ready() -> bool:
        assert proc.alive(), proc.log()[-3000:]
        return any(w.name == name and w.stopped_at is None for w in registry.list_workers())

    wait_until(ready, 30, f"{name} never registered")


def _worker_state(stack: Stack, name: str) -> str | None:
    _, body = stack.request("GET", "/v1/workers")
    return next((w["state"] for w in body["workers"] if w["name"] == name), None)


def _terminate(proc: Proc) -> None:
    """SIGTERM to the worker's main process only, as ``docker stop``,
    Kubernetes and systemd's ``KillMode=mixed`` send it."""
    os.kill(proc.popen.pid, signal.SIGTERM)


def _exit_code(proc: Proc, timeout: float) -> int:
    try:
        return proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{proc.name} still running:\n{proc.log()[-3000:]}") from None


def _rendering_on(stack: Stack, worker: str, deck: dict[str, Any]) -> str:
    _, job = stack.request("POST", "/v1/jobs", deck)
    stack.wait_for(
        job["job_id"],
        lambda j: j["status"] == "processing" and j["worker"] == worker and j["progress"] > 0,
    )
    return str(job["job_id"])


def test_sigterm_finishes_the_render_shows_draining_and_exits_0(fault_stack: Stack) -> None:
    stack = fault_stack
    stack.start_api()
    # A drain far longer than the render, even on a loaded machine.
    # No re-dispatch by the sweeper: only the wake-ups sent carry the work.
    stack.env["SLIDEFARM_DISPATCH_TIMEOUT"] = "600"
    a = stack.start_worker("a@host1", concurrency=1, env={"SLIDEFARM_DRAIN_TIMEOUT": "150"})
    job_id = _rendering_on(stack, "a@host1", slow_deck(slides=3, seconds=2))
    started = time.monotonic()
    _terminate(a)
    wait_until(
        lambda: _worker_state(stack, "a@host1") == "draining",
        10,
        "the worker never showed draining",
    )
    assert stack.request("GET", f"/v1/jobs/{job_id}")[1]["status"] == "processing"
    # Submitted while a drains: a claims nothing more.
    _, waiting = stack.request("POST", "/v1/jobs", small_deck(slides=1, duration=0.5))
    assert _exit_code(a, 150) == 0
    drained = time.monotonic() - started
    done = stack.wait_final(job_id, timeout=10)
    assert (done["status"], done["attempts"], done["worker"]) == ("completed", 1, "a@host1")
    assert _worker_state(stack, "a@host1") == "stopped"
    assert stack.request("GET", f"/v1/jobs/{waiting['job_id']}")[1]["status"] == "queued"
    assert "draining" in a.log()
    # The wake-up a held or passed on is not lost: another worker runs the job.
    b = stack.start_worker("b@host2", concurrency=1)
    later = stack.wait_final(waiting["job_id"], timeout=60)
    assert (later["status"], later["worker"], later["attempts"]) == ("completed", "b@host2", 1)
    print(f"\ndrain: the render finished and the worker exited 0 {drained:.1f} s after SIGTERM")
    assert b.alive()


def test_sigterm_past_the_drain_timeout_hands_the_job_back(fault_stack: Stack) -> None:
    stack = fault_stack
    stack.env["SLIDEFARM_MAX_ATTEMPTS"] = "1"  # a counted attempt would leave none
    stack.start_api()
    a = stack.start_worker("a@host1", concurrency=1, env={"SLIDEFARM_DRAIN_TIMEOUT": "1"})
    job_id = _rendering_on(stack, "a@host1", slow_deck(slides=3, seconds=2))
    started = time.monotonic()
    _terminate(a)
    assert _exit_code(a, 30) == 0
    stopped_in = time.monotonic() - started
    handed = stack.request("GET", f"/v1/jobs/{job_id}?include=history")[1]
    assert handed["status"] == "queued", handed
    assert (handed["attempts"], handed["max_attempts"]) == (1, 2)
    reason = "handed back: worker a@host1 draining"
    assert [(e["to"], e["reason"]) for e in handed["history"]][-1] == ("queued", reason)
    assert _worker_state(stack, "a@host1") == "stopped"
    stack.start_worker("b@host2", concurrency=1)
    done = stack.wait_final(job_id, timeout=150)
    assert (done["status"], done["attempts"], done["worker"]) == ("completed", 2, "b@host2")
    _, detail = stack.request("GET", f"/v1/jobs/{job_id}?include=history")
    assert [e["to"] for e in detail["history"]] == [
        "queued",
        "processing",
        "queued",
        "processing",
        "completed",
    ]
    print(f"\nhand-back: the worker exited 0 {stopped_in:.1f} s after SIGTERM (drain 1 s)")


def _versions_on_broker(url: str) -> list[int]:
    """The message versions of the render wake-ups on the broker: queued or
    held unacknowledged by a worker."""
    client = redis.Redis.from_url(url)
    try:
        payloads = [json.loads(raw) for raw in client.lrange(QUEUE, 0, -1)]
        payloads += [json.loads(raw)[0] for raw in client.hvals("unacked")]
    finally:
        client.close()
    return sorted(
        int(p["headers"].get(VERSION_HEADER) or 1)
        for p in payloads
        if p["headers"].get("task") == RENDER_TASK
    )


@pytest.mark.serial  # the worker's exit within 30 s of SIGTERM: a wall-time bound
def test_a_newer_wake_up_is_requeued_and_an_older_one_accepted(fault_stack: Stack) -> None:
    stack = fault_stack
    stack.env["SLIDEFARM_DISPATCH_TIMEOUT"] = "600"  # no wake-up but ours
    store = _store(stack)
    dispatcher = _dispatcher(stack)
    newer = WAKE_VERSION + 1
    dispatcher.celery.send_task(
        RENDER_TASK, kwargs={"shape": "unknown"}, headers={VERSION_HEADER: newer}
    )
    w = stack.start_worker("w@host1", concurrency=1)
    _registered(stack, w, "w@host1")
    wait_until(
        lambda: w.log().count("refused") >= 2,
        30,
        f"the worker never refused the newer message twice:\n{w.log()[-3000:]}",
    )
    assert _versions_on_broker(stack.env["CELERY_BROKER_URL"]) == [newer]
    # A message of the version before (it named its job) still wakes it.
    job, _ = store.create(small_deck(slides=1, duration=0.5), title="v1")
    dispatcher.celery.send_task(RENDER_TASK, args=[job.id])
    wait_until(lambda: store.get(job.id).status.is_final, 60, "the v1 wake-up ran nothing")
    assert store.get(job.id).status is Status.COMPLETED
    _terminate(w)
    assert _exit_code(w, 30) == 0
    # Stopped, the worker left the newer message on the broker for a newer worker.
    assert _versions_on_broker(stack.env["CELERY_BROKER_URL"]) == [newer]
