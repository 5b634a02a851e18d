"""Webhooks end to end: real API and worker processes (gunicorn, celery,
PostgreSQL, Redis) post each job's end to a real receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import update

from api.dispatch import Dispatcher
from core.config import Settings
from core.signing import verify
from storage import JobStore
from storage.access import AccessStore
from storage.models import jobs_table
from storage.serialize import webhook_body
from tests.support.decks import small_deck
from tests.support.services import flush_run_index
from tests.support.stack import Stack, make_stack
from tests.support.webhooks import Received, Receiver

E2E_SETTINGS = {
    "SLIDEFARM_NOOP_RENDER": "1",
    "SLIDEFARM_WEBHOOK_ALLOW": "127.0.0.1/32",
    "SLIDEFARM_WEBHOOK_BACKOFF": "0.2",
    "SLIDEFARM_WEBHOOK_RETRY_FOR": "3",
    "SLIDEFARM_WEBHOOK_TIMEOUT": "2",
}


@dataclass
class Farm:
    stack: Stack
    store: JobStore
    dispatcher: Dispatcher
    receiver: Receiver

    def submit(
        self,
        path: str,
        deck: dict[str, Any] | None = None,
        *,
        dispatch: bool = True,
        url: str | None = None,
    ) -> str:
        """A job whose callback is ``path`` on the receiver (or ``url``),
        submitted through the API; a deck the API would refuse, a URL it
        would refuse, or a job that must stay queued is written to the store
        directly instead."""
        if dispatch and url is None and deck is None:
            status, body = self.stack.request(
                "POST",
                "/v1/jobs",
                {**small_deck(slides=2), "callback_url": self.receiver.url(path)},
            )
            assert status == 202, body
            return str(body["job_id"])
        job, _ = self.store.create(deck or small_deck(slides=2), title="hooked")
        with self.store.transaction() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job.id)
                .values(callback_url=url or self.receiver.url(path))
            )
        if dispatch:
            assert self.dispatcher.wake()
        return job.id

    def job(self, job_id: str, include: str = "") -> dict[str, Any]:
        status, body = self.stack.request("GET", f"/v1/jobs/{job_id}{include}")
        assert status == 200, body
        return dict(body)

    def wait_webhook(self, job_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        return self.stack.wait_for(
            job_id, lambda j: (j.get("webhook") or {}).get("status") == status, timeout
        )


@pytest.fixture(scope="module")
def farm(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    flush_run_index(redis_url)
    stack = make_stack(pg_url, redis_url, tmp_path_factory.mktemp("webhooks"), **E2E_SETTINGS)
    receiver = Receiver()
    try:
        stack.start_api()
        stack.start_worker("hooks", concurrency=2)
        settings = Settings(DATABASE_URL=pg_url, CELERY_BROKER_URL=redis_url)
        yield Farm(stack, JobStore.from_url(pg_url), Dispatcher(settings), receiver)
    finally:
        stack.stop_all()
        receiver.close()


def _verify_with_tenant_secret(farm: Farm, got: Received) -> None:
    secrets = AccessStore(farm.store).webhook_secrets("default")
    assert any(verify(got.headers["Slidefarm-Signature"], got.body, s) for s in secrets)


@pytest.mark.e2e
@pytest.mark.serial  # its latency is bounded in wall time
def test_a_completed_job_posts_one_signed_copy_of_itself(farm: Farm) -> None:
    latencies = []
    for n in range(1, 6):
        job_id = farm.submit(f"/ok-{n}")
        [got] = farm.receiver.wait(f"/ok-{n}", 1)
        job = farm.wait_webhook(job_id, "delivered")
        latencies.append(got.at - datetime.fromisoformat(job["completed_at"]).timestamp())
    print(
        "\nwebhook latency, completion to receipt (ms): "
        + ", ".join(f"{x * 1000:.0f}" for x in latencies)
    )
    assert sorted(latencies)[2] < 2.0
    time.sleep(1.0)  # a duplicate would have arrived by now
    assert all(len(farm.receiver.at(f"/ok-{n}")) == 1 for n in range(1, 6))
    assert job["status"] == "completed"
    expected = {k: v for k, v in job.items() if k != "webhook"}
    assert json.loads(got.body) == expected
    assert json.loads(got.body) == webhook_body(farm.store.get(job_id))
    _verify_with_tenant_secret(farm, got)
    assert not verify(
        got.headers["Slidefarm-Signature"],
        got.body + b" ",
        AccessStore(farm.store).webhook_secrets("default")[0],
    )
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "slidefarm-webhooks"
    assert got.headers["Slidefarm-Event"] == "job.completed"
    assert got.headers["Slidefarm-Delivery"] == f"{job_id}:1"
    webhook = job["webhook"]
    assert webhook["attempts"] == 1 and webhook["last_status_code"] == 200
    assert webhook["delivered_at"] and webhook["last_error"] is None


@pytest.mark.e2e
def test_a_receiver_failing_twice_gets_three_attempts(farm: Farm) -> None:
    job_id = farm.submit("/flaky-1")
    farm.receiver.wait("/flaky-1", 3)
    job = farm.wait_webhook(job_id, "delivered")
    assert job["webhook"]["attempts"] == 3
    deliveries = farm.job(job_id, "?include=deliveries")["deliveries"]
    assert [(d["attempt"], d["status_code"], d["error"]) for d in deliveries] == [
        (1, 500, "HTTP 500"),
        (2, 500, "HTTP 500"),
        (3, 200, None),
    ]
    arrivals = [r.at for r in farm.receiver.at("/flaky-1")]
    assert arrivals[1] - arrivals[0] >= 0.2 * 0.8 - 0.05  # backed off
    assert arrivals[2] - arrivals[1] >= 0.4 * 0.8 - 0.05  # doubled
    ids = [r.headers["Slidefarm-Delivery"] for r in farm.receiver.at("/flaky-1")]
    assert ids == [f"{job_id}:{n}" for n in (1, 2, 3)]


@pytest.mark.e2e
@pytest.mark.serial  # its retry window is bounded in wall time
def test_a_receiver_that_always_fails_ends_failed_after_the_window(farm: Farm) -> None:
    job_id = farm.submit("/fail-1")
    job = farm.wait_webhook(job_id, "failed", timeout=30)
    deliveries = farm.job(job_id, "?include=deliveries")["deliveries"]
    assert len(deliveries) == job["webhook"]["attempts"] >= 4
    assert all(d["status_code"] == 500 and d["error"] == "HTTP 500" for d in deliveries)
    first, last = (datetime.fromisoformat(d["at"]) for d in (deliveries[0], deliveries[-1]))
    assert 3.0 <= (last - first).total_seconds() < 5.0
    assert job["webhook"]["next_attempt_at"] is None
    time.sleep(1.0)
    assert len(farm.receiver.at("/fail-1")) == len(deliveries)


@pytest.mark.e2e
def test_a_redirect_is_not_followed(farm: Farm) -> None:
    job_id = farm.submit("/redirect-1")
    farm.wait_webhook(job_id, "failed", timeout=30)
    deliveries = farm.job(job_id, "?include=deliveries")["deliveries"]
    assert deliveries and all(
        d["status_code"] == 302 and d["error"] == "redirect not followed (HTTP 302)"
        for d in deliveries
    )
    assert farm.receiver.at("/target") == []


@pytest.mark.e2e
def test_failed_and_cancelled_jobs_post_their_end_too(farm: Farm) -> None:
    broken = farm.submit("/ok-failed", {"title": "no slides", "slides": []})
    [got] = farm.receiver.wait("/ok-failed", 1)
    assert got.headers["Slidefarm-Event"] == "job.failed"
    assert json.loads(got.body)["status"] == "failed"
    _verify_with_tenant_secret(farm, got)
    farm.wait_webhook(broken, "delivered")

    # Cancelled while queued, by the API: the API sends the delivery task.
    queued = farm.submit("/ok-cancelled", dispatch=False)
    status, body = farm.stack.request("POST", f"/v1/jobs/{queued}/cancel")
    assert status == 202 and body["status"] == "cancelled"
    [got] = farm.receiver.wait("/ok-cancelled", 1)
    assert got.headers["Slidefarm-Event"] == "job.cancelled"
    assert json.loads(got.body)["status"] == "cancelled"
    farm.wait_webhook(queued, "delivered")


@pytest.mark.e2e
def test_a_callback_that_became_internal_is_refused_at_delivery(farm: Farm) -> None:
    # 127.0.0.2 is loopback but outside SLIDEFARM_WEBHOOK_ALLOW (127.0.0.1/32):
    # as if the name had resolved elsewhere at submission.
    job_id = farm.submit("", url=f"http://127.0.0.2:{farm.receiver.port}/ok-never")
    job = farm.wait_webhook(job_id, "failed", timeout=30)
    assert job["webhook"]["last_error"] == "refused: 127.0.0.2 is loopback"
    assert job["webhook"]["last_status_code"] is None
    assert farm.receiver.at("/ok-never") == []
