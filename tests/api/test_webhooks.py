"""Webhooks through the API in-process, on both backends: a job shows its
deliveries, a queued cancel sends the webhook, and an internal or odd
callback URL is refused at submission naming the field."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from core.config import Settings
from core.urls import UnsafeCallback, check_callback_url
from storage import JobStore
from storage.deliveries import WebhookDeliveries
from storage.models import jobs_table
from tests.support.clients import admin_client
from tests.support.decks import small_deck
from tests.support.jobs import delivery_result, final_job


def test_the_job_shows_its_deliveries_and_a_queued_cancel_sends_the_webhook(
    client: Any, store: JobStore, settings: Settings
) -> None:
    plain = client.post("/v1/jobs", json=small_deck()).get_json()
    assert plain["webhook"] is None
    job_id = final_job(store)
    hooks = WebhookDeliveries(store)
    hooks.claim(job_id, lease=30)
    hooks.record_delivery(job_id, 1, delivery_result(500, "HTTP 500"), backoff=1, retry_for=60)
    body = client.get(f"/v1/jobs/{job_id}?include=deliveries,history").get_json()
    assert body["webhook"]["status"] == "pending" and body["webhook"]["last_status_code"] == 500
    [delivery] = body["deliveries"]
    assert delivery["attempt"] == 1 and delivery["status_code"] == 500
    assert delivery["error"] == "HTTP 500" and delivery["at"].endswith("Z")
    assert delivery["duration_ms"] == 12.5 and body["history"]
    assert client.get(f"/v1/jobs/{job_id}?include=nope").status_code == 400

    queued, _ = store.create(small_deck(), title="to cancel")
    with store.transaction() as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == queued.id)
            .values(callback_url="http://93.184.215.14/hook")
        )
    cancelled = client.post(f"/v1/jobs/{queued.id}/cancel").get_json()
    assert cancelled["status"] == "cancelled" and cancelled["webhook"]["status"] == "pending"
    messages = "".join(
        p.read_text(errors="replace") for p in (settings.broker_dir / "queue").iterdir()
    )
    assert messages.count("slidefarm.deliver_webhook") == 1 and queued.id in messages


def test_a_refused_callback_url_is_a_422_naming_the_field(app: Any) -> None:
    with app.test_request_context("/v1/jobs", method="POST"):
        try:
            check_callback_url("http://169.254.169.254/latest/meta-data/", [])
        except UnsafeCallback as refused:
            response = app.make_response(app.handle_user_exception(refused))
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "unsafe_callback_url"
    assert error["details"] == [
        {"field": "callback_url", "message": "169.254.169.254 is cloud metadata"}
    ]


def test_the_api_refuses_an_internal_callback_at_submission(app: Any) -> None:
    client = admin_client(app)
    for url in (
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "file:///etc/passwd",
        "http://[::1]/",
        12345,
        "http://[:::]/",
        "http://[::1/",
        "http://0/",
        "http://2130706433/",
        "http://a:0/",
        "http://u:p@example.com/",
        "http://localhost:8080/",
        "http://localhost./",
        "http://api.localhost/",
    ):
        response = client.post("/v1/jobs", json={**small_deck(), "callback_url": url})
        assert response.status_code == 422, (url, response.get_data(as_text=True))
        assert response.get_json()["error"]["details"][0]["field"] == "callback_url"
    assert client.get("/v1/jobs").get_json()["jobs"] == []  # nothing was recorded
    accepted = client.post(
        "/v1/jobs", json={**small_deck(), "callback_url": "https://93.184.215.14/hook"}
    )
    assert accepted.status_code == 202
    webhook = accepted.get_json()["webhook"]  # not final yet: nothing due
    assert webhook["url"] == "https://93.184.215.14/hook" and webhook["status"] is None
    # A name that does not resolve now may later: accepted, checked at every delivery.
    later = client.post(
        "/v1/jobs", json={**small_deck(), "callback_url": "https://hooks.example.invalid/x"}
    )
    assert later.status_code == 202
