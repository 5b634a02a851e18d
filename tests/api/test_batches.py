"""``/v1/batches`` over HTTP on both backends: one 422 naming each bad
item's fields by index (and nothing created), 500 items accepted and 501
refused, one Idempotency-Key, tenant walls, cursor pages and cancel."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from core.config import Settings
from storage import JobStore, Status, utcnow
from storage.access import AccessStore
from tests.support.clients import Tenant, assert_error, locked
from tests.support.decks import small_deck
from tests.support.services import queued_messages

MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return locked(settings)


@pytest.fixture
def alice(app: Any) -> Tenant:
    return Tenant(app, "alice")


@pytest.fixture
def bob(app: Any) -> Tenant:
    return Tenant(app, "bob")


def _deck(n: int = 0) -> dict[str, Any]:
    return {**small_deck(slides=1), "title": f"deck {n}"}


def test_a_batch_is_accepted_whole_and_its_jobs_name_it(alice: Tenant, settings: Settings) -> None:
    response = alice.client.post(
        "/v1/batches", json={"jobs": [_deck(n) for n in range(3)], "callback_url": None}
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    batch = response.get_json()
    assert response.headers["Location"] == f"/v1/batches/{batch['batch_id']}"
    assert batch["total"] == 3 and batch["counts"]["queued"] == 3 and batch["active"] == 3
    assert batch["progress"] == 0 and batch["finished_at"] is None and batch["webhook"] is None
    assert len(batch["job_ids"]) == 3
    assert queued_messages(settings) == 3  # committed, then one wake-up per queued job
    job = alice.client.get(f"/v1/jobs/{batch['job_ids'][0]}").get_json()
    assert job["batch_id"] == batch["batch_id"] and job["title"] == "deck 0"
    shown = alice.client.get(f"/v1/batches/{batch['batch_id']}").get_json()
    assert shown["counts"] == batch["counts"] and "job_ids" not in shown


def test_bad_items_are_one_422_with_indexed_paths_and_nothing_is_created(alice: Tenant) -> None:
    bad_title = _deck(1)
    bad_title["slides"][0]["title"] = "x" * 500
    bad_asset = {**_deck(3), "slides": [{"title": "a", "image": MISSING}]}
    items = [_deck(0), bad_title, {**_deck(2), "status": "completed"}, bad_asset, "nope"]
    response = alice.client.post("/v1/batches", json={"jobs": items})
    error = assert_error(response, 422, "validation_failed")
    fields = {d["field"] for d in error["details"]}
    assert "jobs.1.slides.0.title" in fields
    assert "jobs.2.status" in fields
    assert "jobs.3.slides.0.image" in fields
    assert "jobs.4" in fields
    assert not any(f.startswith("jobs.0") for f in fields)
    assert alice.client.get("/v1/jobs").get_json()["jobs"] == []
    assert alice.client.get("/v1/batches").get_json()["batches"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"jobs": []}, "jobs"),
        ({"jobs": {}}, "jobs"),
        ({}, "jobs"),
        ({"jobs": [_deck()], "extra": 1}, "extra"),
        ({"jobs": [_deck()], "callback_url": "ftp://x"}, "callback_url"),
    ],
)
def test_the_batch_itself_must_be_well_formed(
    alice: Tenant, body: dict[str, Any], field: str
) -> None:
    error = assert_error(alice.client.post("/v1/batches", json=body), 422)
    assert error["details"][0]["field"] == field


def test_500_items_are_accepted_and_501_refused(alice: Tenant) -> None:
    tiny = {"title": "t", "slides": [{"title": "s"}]}
    refused = alice.client.post("/v1/batches", json={"jobs": [tiny] * 501})
    assert assert_error(refused, 422)["details"][0]["field"] == "jobs"
    accepted = alice.client.post("/v1/batches", json={"jobs": [tiny] * 500})
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    batch = accepted.get_json()
    assert batch["total"] == 500 and batch["counts"]["queued"] == 500


def test_the_quota_refuses_a_batch_whole(app: Any, settings: Settings) -> None:
    from api import create_app

    capped = create_app({"TESTING": True, "SETTINGS": locked(settings, max_active_jobs=4)})
    carol = Tenant(capped, "carol")
    refused = carol.client.post("/v1/batches", json={"jobs": [_deck(n) for n in range(5)]})
    assert "batch's 5 jobs" in assert_error(refused, 429, "too_many_active_jobs")["message"]
    assert carol.client.get("/v1/jobs").get_json()["jobs"] == []
    ok = carol.client.post("/v1/batches", json={"jobs": [_deck(n) for n in range(4)]})
    assert ok.status_code == 202


def test_one_idempotency_key_for_the_whole_batch(alice: Tenant) -> None:
    body = {"jobs": [_deck(0), _deck(1)]}
    headers = {"Idempotency-Key": "batch-1"}
    first = alice.client.post("/v1/batches", json=body, headers=headers)
    again = alice.client.post("/v1/batches", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["batch_id"] == first.get_json()["batch_id"]
    assert again.get_json()["job_ids"] == first.get_json()["job_ids"]
    other = alice.client.post("/v1/batches", json={"jobs": [_deck(2)]}, headers=headers)
    assert_error(other, 409, "idempotency_conflict")
    assert len(alice.client.get("/v1/jobs").get_json()["jobs"]) == 2


def test_another_tenants_batch_is_a_404(alice: Tenant, bob: Tenant) -> None:
    batch = alice.client.post("/v1/batches", json={"jobs": [_deck()]}).get_json()
    for method, path in [
        ("GET", "/v1/batches/{id}"),
        ("GET", "/v1/batches/{id}/jobs"),
        ("POST", "/v1/batches/{id}/cancel"),
    ]:
        url = path.format(id=batch["batch_id"])
        assert_error(bob.client.open(url, method=method), 404, "batch_not_found")
        assert_error(alice.client.open(path.format(id="not-an-id"), method=method), 404)
    assert bob.client.get("/v1/batches").get_json()["batches"] == []
    assert alice.client.get(f"/v1/batches/{batch['batch_id']}").status_code == 200


def test_cursor_pages_of_batches_and_of_a_batchs_jobs(alice: Tenant) -> None:
    ids = [
        alice.client.post("/v1/batches", json={"jobs": [_deck()]}).get_json()["batch_id"]
        for _ in range(3)
    ]
    first = alice.client.get("/v1/batches?limit=2").get_json()
    assert [b["batch_id"] for b in first["batches"]] == ids[:0:-1]
    rest = alice.client.get(f"/v1/batches?limit=2&cursor={first['next_cursor']}").get_json()
    assert [b["batch_id"] for b in rest["batches"]] == ids[:1] and rest["next_cursor"] is None
    big = alice.client.post("/v1/batches", json={"jobs": [_deck(n) for n in range(5)]}).get_json()
    titles: list[str] = []
    url = f"/v1/batches/{big['batch_id']}/jobs?limit=2"
    while url:
        page = alice.client.get(url).get_json()
        titles += [j["title"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        url = f"/v1/batches/{big['batch_id']}/jobs?limit=2&cursor={cursor}" if cursor else ""
    assert titles == [f"deck {n}" for n in range(5)]
    assert_error(alice.client.get(f"/v1/batches/{big['batch_id']}/jobs?status=nope"), 400)
    assert_error(alice.client.get(f"/v1/batches/{big['batch_id']}/jobs?cursor=x"), 400)


def test_cancel_says_what_happened_to_how_many_jobs(
    alice: Tenant, app: Any, settings: Settings
) -> None:
    hooked = {**_deck(2), "callback_url": "https://example.com/hook"}
    items = [_deck(0), _deck(1), hooked]
    batch = alice.client.post("/v1/batches", json={"jobs": items}).get_json()
    store = app.extensions["slidefarm"].store
    assert store.claim(batch["job_ids"][0], "w@host") is not None
    sent = queued_messages(settings)
    response = alice.client.post(f"/v1/batches/{batch['batch_id']}/cancel")
    assert queued_messages(settings) == sent + 1  # the hooked job's webhook, as its own cancel
    assert response.status_code == 202
    result = response.get_json()
    assert (result["cancelled"], result["stopping"], result["unchanged"]) == (2, 1, 0)
    assert result["batch"]["counts"]["cancelled"] == 2
    assert store.get(batch["job_ids"][0]).cancel_requested
    assert store.get(batch["job_ids"][1]).status is Status.CANCELLED
    cancelled = alice.client.get(f"/v1/batches/{batch['batch_id']}/jobs?status=cancelled")
    assert len(cancelled.get_json()["jobs"]) == 2


def test_the_dashboard_lists_batches_and_links_jobs_both_ways(alice: Tenant, bob: Tenant) -> None:
    batch = alice.client.post("/v1/batches", json={"jobs": [_deck(n) for n in range(2)]}).get_json()
    batch_id, first_job = batch["batch_id"], batch["job_ids"][0]
    listing = alice.client.get("/batches")
    assert listing.status_code == 200
    assert f'href="/batches/{batch_id}"' in listing.get_data(as_text=True)
    page = alice.client.get(f"/batches/{batch_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert f'href="/jobs/{first_job}"' in html and "deck 1" in html
    assert 'data-status="queued">2<' in html
    job_page = alice.client.get(f"/jobs/{first_job}").get_data(as_text=True)
    assert f'href="/batches/{batch_id}"' in job_page
    assert_error(bob.client.get(f"/batches/{batch_id}"), 404, "batch_not_found")
    assert batch_id not in bob.client.get("/batches").get_data(as_text=True)


def test_items_ask_for_priority_and_run_at_under_the_tenants_rules(
    alice: Tenant, store: JobStore
) -> None:
    later = (utcnow() + timedelta(hours=1)).isoformat()
    items = [
        {**_deck(0), "priority": 7},
        {**_deck(1), "run_at": later},
        {**_deck(2), "priority": 11},  # above SLIDEFARM_MAX_PRIORITY (10)
        {**_deck(3), "run_at": (utcnow() + timedelta(days=400)).isoformat()},
    ]
    response = alice.client.post("/v1/batches", json={"jobs": items})
    fields = {(d["field"], d["type"]) for d in assert_error(response, 422)["details"]}
    assert fields == {
        ("jobs.2.priority", "priority_not_allowed"),
        ("jobs.3.run_at", "too_far_ahead"),
    }
    response = alice.client.post("/v1/batches", json={"jobs": items[:2]})
    assert response.status_code == 202, response.get_data(as_text=True)
    first, second = (store.get(i) for i in response.get_json()["job_ids"])
    assert first.priority == 7 and first.status is Status.QUEUED
    assert second.status is Status.SCHEDULED and second.run_at is not None
    AccessStore(store).set_limits("alice", max_priority=20)
    response = alice.client.post("/v1/batches", json={"jobs": [items[2]]})
    assert response.status_code == 202
