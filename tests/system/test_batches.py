"""Batches end to end: real API and worker processes (gunicorn, celery,
PostgreSQL, Redis). A batch of 20 decks completes and its one webhook
arrives exactly once with the right counts; a batch cancel stops the rest."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.signing import verify
from storage import JobStore, utcnow
from storage.access import AccessStore
from tests.support import ROOT
from tests.support.decks import small_deck
from tests.support.services import flush_run_index
from tests.support.stack import Stack, make_stack
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "slidefarm")

E2E_SETTINGS = {
    "SLIDEFARM_NOOP_RENDER": "1",  # slides are drawn, the encode skipped: fast
    "SLIDEFARM_WEBHOOK_ALLOW": "127.0.0.1/32",
    "SLIDEFARM_WEBHOOK_BACKOFF": "0.2",
    "SLIDEFARM_WEBHOOK_RETRY_FOR": "5",
    "SLIDEFARM_WEBHOOK_TIMEOUT": "2",
    "SLIDEFARM_HEARTBEAT_INTERVAL": "0.3",
}


@pytest.fixture(scope="module")
def farm(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Receiver]]:
    flush_run_index(redis_url)
    stack = make_stack(pg_url, redis_url, tmp_path_factory.mktemp("batches"), **E2E_SETTINGS)
    receiver = Receiver()
    try:
        stack.start_api()
        stack.start_worker("batches", concurrency=2)
        yield stack, receiver
    finally:
        stack.stop_all()
        receiver.close()


def _batch(stack: Stack, batch_id: str) -> dict[str, Any]:
    status, body = stack.request("GET", f"/v1/batches/{batch_id}")
    assert status == 200, body
    return dict(body)


def _wait_batch(stack: Stack, batch_id: str, predicate: Any, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    batch: dict[str, Any] = {}
    while time.monotonic() < deadline:
        batch = _batch(stack, batch_id)
        if predicate(batch):
            return batch
        time.sleep(0.2)
    logs = "\n".join(p.log()[-3000:] for p in stack.procs)
    raise AssertionError(f"batch {batch_id} never matched: {batch}\n{logs}")


def test_a_batch_of_20_completes_and_its_webhook_arrives_once(
    farm: tuple[Stack, Receiver],
) -> None:
    stack, receiver = farm
    decks = [{**small_deck(slides=1, duration=0.5), "title": f"deck {n}"} for n in range(20)]
    started = time.monotonic()
    status, batch = stack.request(
        "POST", "/v1/batches", {"jobs": decks, "callback_url": receiver.url("/ok-batch")}
    )
    assert status == 202, batch
    [got] = receiver.wait("/ok-batch", 1, timeout=120)
    elapsed = time.monotonic() - started
    body = json.loads(got.body)
    assert body["batch_id"] == batch["batch_id"] and body["finished"] is True
    assert body["counts"]["completed"] == 20 and body["active"] == 0 and body["progress"] == 1
    assert got.headers["Slidefarm-Event"] == "batch.finished"
    store = JobStore.from_url(stack.env["DATABASE_URL"])
    secrets = AccessStore(store).webhook_secrets("default")
    assert any(verify(got.headers["Slidefarm-Signature"], got.body, s) for s in secrets)
    shown = _wait_batch(stack, batch["batch_id"], lambda b: b["webhook"]["status"] == "delivered")
    assert shown["finished_at"] is not None and shown["webhook"]["attempts"] == 1
    print(f"\nbatch of 20 (noop render, 2 processes): webhook {elapsed:.1f}s after submit")
    time.sleep(1.5)  # a duplicate (the sweeper's resend, a second settle) would be here by now
    assert len(receiver.at("/ok-batch")) == 1


def test_a_batch_cancel_stops_the_rest(farm: tuple[Stack, Receiver]) -> None:
    stack, receiver = farm
    slow = small_deck(slides=60, duration=0.5)  # drawing 60 slides takes a moment
    # Eight wait for a start an hour away, so they are certainly still waiting.
    later = {**slow, "run_at": (utcnow() + timedelta(hours=1)).isoformat()}
    status, batch = stack.request(
        "POST",
        "/v1/batches",
        {"jobs": [slow] * 4 + [later] * 8, "callback_url": receiver.url("/ok-batch-cancel")},
    )
    assert status == 202, batch
    _wait_batch(
        stack,
        batch["batch_id"],
        lambda b: b["counts"]["processing"] + b["counts"]["completed"] > 0,
        timeout=60,
    )
    status, result = stack.request("POST", f"/v1/batches/{batch['batch_id']}/cancel")
    assert status == 202, result
    assert result["cancelled"] + result["stopping"] + result["unchanged"] == 12
    assert result["cancelled"] >= 8  # the scheduled ones at least
    done = _wait_batch(stack, batch["batch_id"], lambda b: b["finished"], timeout=30)
    counts = done["counts"]
    assert counts["queued"] == counts["processing"] == 0
    assert counts["cancelled"] >= result["cancelled"]
    assert counts["completed"] + counts["cancelled"] + counts["failed"] == 12
    [got] = receiver.wait("/ok-batch-cancel", 1, timeout=30)
    assert json.loads(got.body)["counts"] == counts
    time.sleep(1.0)
    assert len(receiver.at("/ok-batch-cancel")) == 1


def test_the_cli_submits_shows_lists_and_cancels_batches(
    farm: tuple[Stack, Receiver], tmp_path: Path
) -> None:
    stack, _ = farm
    files = []
    for n in range(3):
        deck_file = tmp_path / f"deck-{n}.json"
        deck_file.write_text(
            json.dumps({**small_deck(slides=1, duration=0.5), "title": f"cli {n}"})
        )
        files.append(str(deck_file))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"title": "no slides", "slides": []}))

    refused = _cli(stack, "batches", "submit", files[0], str(bad))
    assert refused.returncode != 0 and "jobs.1" in refused.stderr and "nothing" in refused.stderr
    made = _cli(stack, "batches", "submit", *files, "--json")
    assert made.returncode == 0, made.stderr
    batch = json.loads(made.stdout)
    assert batch["total"] == 3
    done = _wait_batch(stack, batch["batch_id"], lambda b: b["finished"], timeout=60)
    assert done["counts"]["completed"] == 3
    shown = _cli(stack, "batches", "show", batch["batch_id"])
    assert shown.returncode == 0 and "completed: 3" in shown.stdout
    listed = _cli(stack, "batches", "list")
    assert listed.returncode == 0 and batch["batch_id"] in listed.stdout
    cancelled = _cli(stack, "batches", "cancel", batch["batch_id"])
    assert cancelled.returncode == 0 and "0 cancelled" in cancelled.stdout
    missing = _cli(stack, "batches", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode != 0 and "No such batch" in missing.stderr


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
