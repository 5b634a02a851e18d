"""What a submission may ask of the scheduler (``priority``, ``run_at``), and
the life of a scheduled job in the API, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from core.config import Settings
from storage import JobStore, Status
from storage.access import AccessStore
from tests.support.clients import Tenant, assert_error, locked
from tests.support.decks import small_deck
from tests.support.services import queued_messages


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return locked(settings)


@pytest.fixture
def acme(app: Any) -> Tenant:
    return Tenant(app, "acme")


@pytest.fixture
def ops(app: Any) -> Tenant:
    return Tenant(app, "ops", admin=True)


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def _refused(client: FlaskClient, field: str, kind: str, **extra: Any) -> dict[str, Any]:
    """Submit ``extra`` with a small deck: a 422 naming ``field`` with ``kind``."""
    error = assert_error(
        client.post("/v1/jobs", json={**small_deck(1), **extra}), 422, "validation_failed"
    )
    assert [(d["field"], d["type"]) for d in error["details"]] == [(field, kind)], error
    assert all(d["message"] for d in error["details"])
    return error


def test_priority_is_stored_shown_and_defaults_to_0(acme: Tenant, store: JobStore) -> None:
    plain = acme.submit()
    assert plain["priority"] == 0 and plain["run_at"] is None and plain["status"] == "queued"
    urgent = acme.submit(priority=10)
    assert urgent["priority"] == 10
    assert store.get(urgent["job_id"]).priority == 10
    assert "priority" not in store.get(urgent["job_id"]).deck  # the deck alone is stored
    whole = acme.submit(priority=4.0)  # an integer, as JSON Schema says
    assert whole["priority"] == 4
    low = acme.submit(priority=-100)
    assert acme.client.get(f"/v1/jobs/{low['job_id']}").get_json()["priority"] == -100
    listed = {j["job_id"]: j["priority"] for j in acme.client.get("/v1/jobs").get_json()["jobs"]}
    assert listed == {
        plain["job_id"]: 0,
        urgent["job_id"]: 10,
        whole["job_id"]: 4,
        low["job_id"]: -100,
    }


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (101, "priority_out_of_range"),
        (-101, "priority_out_of_range"),
        (1e300, "priority_out_of_range"),
        (1.5, "int_type"),
        (True, "int_type"),
        ("5", "int_type"),
        (None, "int_type"),
    ],
)
def test_priority_out_of_range_is_422(acme: Tenant, value: Any, kind: str) -> None:
    _refused(acme.client, "priority", kind, priority=value)


def test_priority_above_the_tenants_maximum_is_422(
    acme: Tenant, ops: Tenant, app: Any, settings: Settings
) -> None:
    """SLIDEFARM_MAX_PRIORITY (10) unless the tenant has its own; admins up to 100."""
    assert settings.max_priority == 10
    error = _refused(acme.client, "priority", "priority_not_allowed", priority=11)
    assert "(10)" in error["details"][0]["message"]
    assert acme.submit(priority=10)["priority"] == 10
    assert ops.submit(priority=100)["priority"] == 100  # an admin key

    access = AccessStore(app.extensions["slidefarm"].store)
    access.set_limits("acme", max_priority=50)
    assert acme.submit(priority=50)["priority"] == 50
    _refused(acme.client, "priority", "priority_not_allowed", priority=51)
    # A tenant held below 0: refused above it, and an unset priority is its maximum.
    access.set_limits("acme", max_priority=-5)
    _refused(acme.client, "priority", "priority_not_allowed", priority=0)
    assert acme.submit()["priority"] == -5
    assert acme.submit(priority=-20)["priority"] == -20
    access.set_limits("acme", max_priority=None)  # back to the setting
    assert acme.submit()["priority"] == 0
    _refused(acme.client, "priority", "priority_not_allowed", priority=11)


def test_a_future_run_at_schedules_the_job_without_sending_it(
    acme: Tenant, settings: Settings, store: JobStore
) -> None:
    run_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    # Any offset: stored and shown in UTC.
    asked = run_at.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
    paris = (run_at + timedelta(hours=1)).replace(tzinfo=None).isoformat() + "+01:00"
    job = acme.submit(run_at=paris)
    assert job["status"] == "scheduled" and job["stage"] == "queued"
    assert job["run_at"] == asked.replace("+00:00", "Z")
    assert queued_messages(settings) == 0  # no worker is woken for it
    stored = store.get(job["job_id"])
    assert stored.status is Status.SCHEDULED and stored.run_at == run_at
    assert stored.queued_at is None
    assert "run_at" not in stored.deck
    history = acme.client.get(f"/v1/jobs/{job['job_id']}?include=history").get_json()["history"]
    assert [(e["from"], e["to"]) for e in history] == [(None, "scheduled")]

    queued = acme.submit()
    assert queued_messages(settings) == 1
    scheduled = acme.client.get("/v1/jobs?status=scheduled").get_json()["jobs"]
    assert [j["job_id"] for j in scheduled] == [job["job_id"]]
    assert [j["job_id"] for j in acme.client.get("/v1/jobs?status=queued").get_json()["jobs"]] == [
        queued["job_id"]
    ]


def test_a_past_run_at_runs_now(acme: Tenant, settings: Settings) -> None:
    """Queued and sent at once; its run_at reads the submission's time, so no
    time a server could not read back (year 1 in another zone) is stored."""
    for asked in (_at(-timedelta(minutes=5)), "0001-01-01T00:00:00+05:00"):
        job = acme.submit(run_at=asked)
        assert job["status"] == "queued"
        run_at = datetime.fromisoformat(job["run_at"])
        created = datetime.fromisoformat(job["created_at"])
        assert timedelta(0) <= created - run_at < timedelta(seconds=5)
    assert queued_messages(settings) == 2


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("2030-01-01T09:30:00", "timezone_aware"),  # naive: which zone?
        ("2030-01-01 09:30:00Z", "datetime_format"),
        ("2030-01-01", "datetime_format"),
        ("tomorrow", "datetime_format"),
        ("2024-01-01T12:99:00Z", "datetime_format"),
        (1893456000, "datetime_format"),
    ],
)
def test_run_at_that_is_not_a_time_with_its_offset_is_422(
    acme: Tenant, value: Any, kind: str
) -> None:
    error = _refused(acme.client, "run_at", kind, run_at=value)
    if kind == "timezone_aware":
        assert "zone offset" in error["details"][0]["message"]


def test_run_at_too_far_ahead_is_422(acme: Tenant, ops: Tenant, settings: Settings) -> None:
    days = settings.max_schedule_days
    error = _refused(
        acme.client, "run_at", "too_far_ahead", run_at=_at(timedelta(days=days, hours=1))
    )
    assert "SLIDEFARM_MAX_SCHEDULE_DAYS" in error["details"][0]["message"]
    _refused(ops.client, "run_at", "too_far_ahead", run_at="9999-12-31T23:59:59Z")  # admins too
    assert acme.submit(run_at=_at(timedelta(days=days - 1)))["status"] == "scheduled"
    # Both at once: both named.
    both = assert_error(
        acme.client.post(
            "/v1/jobs",
            json={**small_deck(1), "priority": 99, "run_at": _at(timedelta(days=days + 1))},
        ),
        422,
    )
    assert {d["field"] for d in both["details"]} == {"priority", "run_at"}
    assert queued_messages(settings) == 0


def test_a_scheduled_job_is_cancelled_at_once_with_its_history_and_webhook(
    acme: Tenant, store: JobStore
) -> None:
    job = acme.submit(run_at=_at(timedelta(hours=1)), callback_url="https://example.com/hook")
    answer = acme.client.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert answer.status_code == 202
    cancelled = answer.get_json()
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"] is not None
    assert not cancelled["cancel_requested"]
    assert cancelled["webhook"]["status"] == "pending"  # armed, as a queued job's cancel
    history = acme.client.get(f"/v1/jobs/{job['job_id']}?include=history").get_json()["history"]
    assert [(e["from"], e["to"], e["reason"]) for e in history] == [
        (None, "scheduled", "submitted"),
        ("scheduled", "cancelled", "cancelled by request while scheduled"),
    ]
    assert_error(acme.client.post(f"/v1/jobs/{job['job_id']}/cancel"), 409)
    # Retried, it runs now (retry queues at once), with its priority.
    retried = acme.client.post(f"/v1/jobs/{job['job_id']}/retry").get_json()
    assert retried["status"] == "queued"


def test_a_scheduled_job_cannot_be_retried_and_can_be_deleted(
    acme: Tenant, settings: Settings, store: JobStore
) -> None:
    job = acme.submit(run_at=_at(timedelta(hours=1)), priority=3)
    refused = assert_error(acme.client.post(f"/v1/jobs/{job['job_id']}/retry"), 409)
    assert "scheduled" in refused["message"]
    assert store.get(job["job_id"]).status is Status.SCHEDULED
    assert acme.client.delete(f"/v1/jobs/{job['job_id']}").status_code == 204
    assert_error(acme.client.get(f"/v1/jobs/{job['job_id']}"), 404)
    assert queued_messages(settings) == 0


def test_another_tenants_scheduled_job_is_404(app: Any, acme: Tenant) -> None:
    job = acme.submit(run_at=_at(timedelta(hours=1)))
    other = Tenant(app, "globex")
    for method, path in (("post", "/cancel"), ("post", "/retry"), ("delete", "")):
        response = getattr(other.client, method)(f"/v1/jobs/{job['job_id']}{path}")
        assert_error(response, 404)
    assert acme.client.get(f"/v1/jobs/{job['job_id']}").get_json()["status"] == "scheduled"


def test_idempotency_covers_priority_and_run_at(acme: Tenant) -> None:
    run_at = _at(timedelta(hours=1))
    body = {**small_deck(1), "priority": 2, "run_at": run_at}
    key = {"Idempotency-Key": "nightly"}
    first = acme.client.post("/v1/jobs", json=body, headers=key)
    again = acme.client.post("/v1/jobs", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert again.get_json()["status"] == "scheduled"
    for changed in ({"priority": 3}, {"run_at": _at(timedelta(hours=2))}, {"priority": None}):
        other = {k: v for k, v in {**body, **changed}.items() if v is not None}
        assert_error(acme.client.post("/v1/jobs", json=other, headers=key), 409)


def test_the_scheduled_status_in_the_document_and_the_stats(
    app: Any, acme: Tenant, ops: Tenant
) -> None:
    acme.submit(run_at=_at(timedelta(hours=1)))
    stats = ops.client.get("/v1/stats")
    assert stats.status_code == 200, stats.get_json()
    assert stats.get_json()["counts"]["scheduled"] == 1
    assert ops.client.get("/metrics").status_code == 200
    schemas = app.test_client().get("/openapi.json").get_json()["components"]["schemas"]
    assert "scheduled" in schemas["Status"]["enum"]
    assert schemas["StatusCounts"]["properties"]["scheduled"] == {
        "minimum": 0,
        "title": "Scheduled",
        "type": "integer",
    }
    assert {"priority", "run_at"} <= set(schemas["Job"]["required"])
    assert schemas["Submission"]["properties"]["priority"]["maximum"] == 100
    assert schemas["Submission"]["properties"]["run_at"]["anyOf"][0]["format"] == "date-time"
    assert_error(ops.client.get("/v1/jobs?status=bogus"), 400)


def test_a_scheduled_job_counts_against_the_active_quota(settings: Settings) -> None:
    from api import create_app

    app = create_app({"TESTING": True, "SETTINGS": locked(settings, max_active_jobs=1)})
    acme = Tenant(app, "acme")
    acme.submit(run_at=_at(timedelta(hours=1)))
    assert_error(acme.client.post("/v1/jobs", json=small_deck(1)), 429)


def test_a_scheduled_job_keeps_its_assets(acme: Tenant) -> None:
    from tests.support.assets import image_bytes

    asset = acme.client.post("/v1/assets", data=image_bytes("PNG")).get_json()
    deck = {"title": "later", "slides": [{"title": "logo", "image": asset["id"]}]}
    job = acme.client.post("/v1/jobs", json={**deck, "run_at": _at(timedelta(hours=1))})
    assert job.status_code == 202 and job.get_json()["status"] == "scheduled"
    assert_error(acme.client.delete(f"/v1/assets/{asset['id']}"), 409, "asset_in_use")
    acme.client.post(f"/v1/jobs/{job.get_json()['job_id']}/cancel")
    assert acme.client.delete(f"/v1/assets/{asset['id']}").status_code == 204
