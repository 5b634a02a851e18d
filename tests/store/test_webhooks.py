"""Webhooks in the store on SQLite and PostgreSQL: the tenant's signing
secrets through a rotation, claims, delivery records and the schedule."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.signing import sign, verify
from storage import JobStore, Status
from storage.access import AccessStore
from storage.deliveries import WebhookDeliveries
from storage.jobs import utcnow
from storage.models import WebhookStatus
from storage.serialize import job_json
from tests.support.jobs import delivery_result, final_job
from tests.support.webhooks import BODY


def test_during_a_rotation_both_secrets_sign_and_each_verifies(store: JobStore) -> None:
    access = AccessStore(store)
    [old_secret] = access.webhook_secrets("acme")
    new_secret = access.rotate_webhook_secret("acme", grace=60)
    secrets = access.webhook_secrets("acme")
    assert secrets == [new_secret, old_secret]
    header = sign(BODY, secrets)
    assert header.count("v1=") == 2
    assert verify(header, BODY, new_secret) and verify(header, BODY, old_secret)
    assert not verify(header, BODY, "whsec_someone_else")
    # Once the grace period is over only the new secret signs.
    later = access.webhook_secrets("acme", now=utcnow() + timedelta(seconds=61))
    assert later == [new_secret]
    assert not verify(sign(BODY, later), BODY, old_secret)


# -- claims, records, the schedule ---------------------------------------------------


@pytest.mark.parametrize("final", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_every_final_state_arms_the_webhook_and_one_claim_wins(
    store: JobStore, final: Status
) -> None:
    job_id = final_job(store, status=final)
    webhook = job_json(store.get(job_id))["webhook"]
    assert webhook["status"] == "pending" and webhook["attempts"] == 0
    assert webhook["url"] == "http://93.184.215.14/hook" and webhook["next_attempt_at"]
    hooks = WebhookDeliveries(store)
    claim = hooks.claim(job_id, lease=30)
    assert claim is not None and claim.attempt == 1 and claim.job.status is final
    assert hooks.claim(job_id, lease=30) is None  # held: a copy of the task does nothing
    assert hooks.claim(job_id, lease=30, now=utcnow() + timedelta(seconds=31)) is not None


def test_no_callback_no_webhook(store: JobStore) -> None:
    job_id = final_job(store, callback_url=None)
    assert job_json(store.get(job_id))["webhook"] is None
    hooks = WebhookDeliveries(store)
    assert hooks.claim(job_id, lease=30) is None
    assert hooks.due_webhooks(resend_after=10) == []


def test_a_delivery_is_recorded_once_and_a_2xx_delivers(store: JobStore) -> None:
    job_id = final_job(store)
    hooks = WebhookDeliveries(store)
    claim = hooks.claim(job_id, lease=30)
    assert claim is not None
    ok = delivery_result(204)
    assert hooks.record_delivery(job_id, 1, ok, backoff=1, retry_for=60) is WebhookStatus.DELIVERED
    assert hooks.record_delivery(job_id, 1, ok, backoff=1, retry_for=60) is None  # duplicate
    assert hooks.record_delivery(job_id, 2, ok, backoff=1, retry_for=60) is None
    webhook = job_json(store.get(job_id))["webhook"]
    assert webhook["status"] == "delivered" and webhook["attempts"] == 1
    assert webhook["last_status_code"] == 204 and webhook["last_error"] is None
    assert webhook["delivered_at"] and webhook["next_attempt_at"] is None
    [delivery] = hooks.deliveries(job_id)
    assert (delivery.attempt, delivery.status_code, delivery.error, delivery.duration_ms) == (
        1,
        204,
        None,
        12.5,
    )
    assert hooks.claim(job_id, lease=30, now=utcnow() + timedelta(hours=1)) is None
    assert store.delete(job_id) and hooks.deliveries(job_id) == []


def test_failures_back_off_exponentially_then_fail_after_the_window(store: JobStore) -> None:
    job_id = final_job(store)
    hooks = WebhookDeliveries(store)
    first = store.get(job_id).webhook_first_at
    assert first is not None
    now = first
    gaps = []
    for attempt in range(1, 4):
        claim = hooks.claim(job_id, lease=30, now=now)
        assert claim is not None and claim.attempt == attempt
        assert (
            hooks.record_delivery(
                job_id,
                attempt,
                delivery_result(500, "HTTP 500"),
                backoff=10,
                retry_for=3600,
                now=now,
            )
            is WebhookStatus.PENDING
        )
        due = store.get(job_id).webhook_next_at
        assert due is not None
        gaps.append((due - now).total_seconds())
        assert hooks.claim(job_id, lease=30, now=due - timedelta(seconds=1)) is None
        now = due
    for gap, step in zip(gaps, (10, 20, 40), strict=True):
        assert 0.8 * step <= gap <= 1.2 * step
    # Late in the window, the next attempt is at its very end, and the last one fails.
    late = first + timedelta(seconds=3590)
    claim = hooks.claim(job_id, lease=30, now=late)
    assert claim is not None
    hooks.record_delivery(
        job_id,
        claim.attempt,
        delivery_result(None, "connection refused"),
        backoff=10,
        retry_for=3600,
        now=late,
    )
    assert store.get(job_id).webhook_next_at == first + timedelta(seconds=3600)
    end = first + timedelta(seconds=3600)
    claim = hooks.claim(job_id, lease=30, now=end)
    assert claim is not None
    assert (
        hooks.record_delivery(
            job_id,
            claim.attempt,
            delivery_result(503, "HTTP 503"),
            backoff=10,
            retry_for=3600,
            now=end,
        )
        is WebhookStatus.FAILED
    )
    webhook = job_json(store.get(job_id))["webhook"]
    assert webhook["status"] == "failed" and webhook["attempts"] == 5
    assert webhook["last_error"] == "HTTP 503" and webhook["next_attempt_at"] is None
    assert [d.error for d in hooks.deliveries(job_id)] == ["HTTP 500"] * 3 + [
        "connection refused",
        "HTTP 503",
    ]
    assert hooks.claim(job_id, lease=30, now=end + timedelta(days=1)) is None


def test_due_webhooks_are_sent_once_until_taken_or_lost(store: JobStore) -> None:
    job_id = final_job(store)
    hooks = WebhookDeliveries(store)
    assert hooks.due_webhooks(resend_after=10) == [job_id]
    assert hooks.due_webhooks(resend_after=10) == []  # sent, not taken yet
    later = utcnow() + timedelta(seconds=11)
    assert hooks.due_webhooks(resend_after=10, now=later) == [job_id]  # the task was lost
    claim = hooks.claim(job_id, lease=30, now=later)
    assert claim is not None
    hooks.record_delivery(
        job_id, 1, delivery_result(500, "HTTP 500"), backoff=1, retry_for=60, now=later
    )
    due = store.get(job_id).webhook_next_at
    assert due is not None
    assert hooks.due_webhooks(resend_after=10, now=due - timedelta(seconds=0.1)) == []
    # The retry is sent as soon as it is due: the last send was taken.
    assert hooks.due_webhooks(resend_after=10, now=due) == [job_id]


def test_a_retried_job_starts_a_fresh_webhook(store: JobStore) -> None:
    job_id = final_job(store, status=Status.FAILED)
    hooks = WebhookDeliveries(store)
    claim = hooks.claim(job_id, lease=30)
    assert claim is not None
    store.retry(job_id)
    assert job_json(store.get(job_id))["webhook"]["status"] is None
    # The delivery in flight for the earlier end cannot record onto the new round.
    assert hooks.record_delivery(job_id, 1, delivery_result(200), backoff=1, retry_for=60) is None
    assert hooks.claim(job_id, lease=30) is None
