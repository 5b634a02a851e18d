"""Voices across the farm, on both backends: each worker's registry row
holds the voices it offers, GET /v1/voices lists the live workers' union
(any tenant key may read it), a deck needing a voice no live worker offers
is a 422 at submission, and seconds spoken reach /metrics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from core.config import Settings
from storage import JobStore, utcnow
from storage.db import database_of
from storage.models import workers_table
from storage.registry import WorkerRegistry
from tests.support.clients import Tenant, admin_client, assert_error, locked
from workers.voices import record_synthesized

EN = {"id": "espeak-ng:en", "engine": "espeak-ng", "name": "English", "language": "en"}
FR = {"id": "espeak-ng:fr", "engine": "espeak-ng", "name": "French", "language": "fr"}
JOE = {"id": "piper:en_US-joe-medium", "engine": "piper", "name": "en_US-joe-medium",
       "language": "en-us"}  # fmt: skip


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return locked(settings)


def _stale(store: JobStore, name: str) -> None:
    with database_of(store).transaction() as conn:
        conn.execute(
            update(workers_table)
            .where(workers_table.c.name == name)
            .values(last_seen=utcnow() - timedelta(hours=1))
        )


def _deck(**options: Any) -> dict[str, Any]:
    return {"title": "Talk", "slides": [{"title": "Hi", "narration": "Hello."}], "options": options}


def test_voices_are_the_live_workers_union(app: Any, store: JobStore) -> None:
    registry = WorkerRegistry(store)
    registry.register("a@h1", "h1", 1, voices=[EN, FR])
    registry.register("b@h2", "h2", 2, voices=[EN, JOE])
    registry.register("c@h3", "h3", 3, voices=[EN, {"id": "piper:gone", "engine": "piper"}])
    _stale(store, "c@h3")
    registry.register("d@h4", "h4", 4, voices=[{"id": "espeak-ng:de", "engine": "espeak-ng"}])
    registry.stopped("d@h4")
    assert {w.name: w.voices for w in registry.list_workers()}["a@h1"] == [EN, FR]
    tenant = Tenant(app, "acme").client  # not an admin
    response = tenant.get("/v1/voices")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {
        "voices": [
            {**EN, "workers": 2},
            {**FR, "workers": 1},
            {**JOE, "workers": 1},
        ]
    }
    assert app.test_client().get("/v1/voices").status_code == 401


def test_a_voice_no_live_worker_offers_is_422(app: Any, store: JobStore) -> None:
    registry = WorkerRegistry(store)
    registry.register("a@h1", "h1", 1, voices=[EN])
    registry.register("b@h2", "h2", 2, voices=[EN, JOE])
    _stale(store, "b@h2")
    acme = Tenant(app, "acme").client
    error = assert_error(
        acme.post("/v1/jobs", json=_deck(voice=JOE["id"])), 422, "validation_failed"
    )
    assert [(d["field"], d["type"]) for d in error["details"]] == [
        ("options.voice", "voice_unavailable")
    ]
    assert JOE["id"] in error["details"][0]["message"]
    assert acme.get("/v1/jobs").get_json()["jobs"] == []
    # Offered by a live worker, or no voice named (its worker's default): accepted.
    assert acme.post("/v1/jobs", json=_deck(voice=EN["id"])).status_code == 202
    assert acme.post("/v1/jobs", json=_deck()).status_code == 202
    # A deck that says nothing uses no voice, whatever it names.
    silent = {"title": "t", "slides": [{"title": "a"}], "options": {"voice": "piper:nobody"}}
    assert acme.post("/v1/jobs", json=silent).status_code == 202


def test_speech_with_no_live_voice_at_all_is_422(app: Any, store: JobStore) -> None:
    WorkerRegistry(store).register("a@h1", "h1", 1, voices=[])
    error = assert_error(Tenant(app, "acme").client.post("/v1/jobs", json=_deck()), 422)
    assert error["details"][0]["type"] == "voice_unavailable"


def test_before_any_worker_registers_speech_is_accepted(app: Any) -> None:
    # The embedded mode (make demo) before its first worker: nobody can tell.
    acme = Tenant(app, "acme").client
    assert acme.post("/v1/jobs", json=_deck(voice="piper:anyone")).status_code == 202


def test_a_worker_that_reports_no_list_is_trusted(app: Any, store: JobStore) -> None:
    WorkerRegistry(store).register("old@h1", "h1", 1)  # an older worker: voices NULL
    acme = Tenant(app, "acme").client
    assert acme.post("/v1/jobs", json=_deck(voice="piper:anyone")).status_code == 202
    assert acme.get("/v1/voices").get_json() == {"voices": []}


def test_seconds_spoken_are_a_metric_by_engine(app: Any, store: JobStore) -> None:
    record_synthesized(store, "piper:en_US-joe-medium", 2.5)
    record_synthesized(store, "piper:en_US-joe-medium", 1.0)
    record_synthesized(store, "espeak-ng:en", 0.75)
    client: FlaskClient = admin_client(app)
    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    spoken = {s.labels["engine"]: s.value for s in families["slidefarm_speech_seconds"].samples}
    assert spoken == {"piper": 3.5, "espeak-ng": 0.75}
    assert 'slidefarm_speech_seconds_total{engine="piper"} 3.5' in text
