"""An API process asked to stop (api/drain.py): /readyz turns 503 at once
while everything else is still served, and event streams end with a
``reconnect`` event; a client coming back with ``Last-Event-ID`` gets the
job's current state (not the one it already has) and the ``end``."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.drain import drain_of
from core.config import Settings
from storage import JobStore
from tests.support.clients import admin_client
from tests.support.decks import small_deck

Event = tuple[str, str | None, str | None, dict[str, Any]]  # event, id, retry, data


def _events(client: FlaskClient, job_id: str, last_id: str | None = None) -> list[Event]:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    response = client.get(f"/v1/jobs/{job_id}/events", headers=headers, buffered=False)
    assert response.status_code == 200
    text = ""
    for chunk in response.response:
        text += chunk.decode() if isinstance(chunk, bytes) else chunk
    response.close()
    events: list[Event] = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            data = json.loads(fields["data"])
            events.append((fields["event"], fields.get("id"), fields.get("retry"), data))
    return events


def _finish(store: JobStore, job_id: str) -> None:
    store.claim(job_id, "w@host")
    store.complete(job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="s")


def test_readyz_is_503_from_the_moment_the_process_is_asked_to_stop(
    app: Flask, client: FlaskClient
) -> None:
    assert client.get("/readyz").status_code == 200
    drain_of(app).begin()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["error"]["code"] == "draining"
    # It still serves everything else until it stops accepting.
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/jobs", json=small_deck()).status_code == 202


def test_readyz_follows_the_instance_it_belongs_to(app: Flask, client: FlaskClient) -> None:
    stopping = False
    drain_of(app).watch_instance(lambda: stopping)
    assert client.get("/readyz").status_code == 200
    stopping = True
    assert client.get("/readyz").status_code == 503


def test_a_stream_told_to_end_says_reconnect_and_the_client_resumes(
    app: Flask, client: FlaskClient, settings: Settings, store: JobStore
) -> None:
    job_id = client.post("/v1/jobs", json=small_deck()).get_json()["job_id"]
    drain_of(app).end_streams()
    first = _events(client, job_id)
    assert [e[0] for e in first] == ["job", "reconnect"]
    seen = first[0][1]
    assert seen and first[0][3]["status"] == "queued"
    assert first[1][2] is not None and int(first[1][2]) <= 1000  # reconnect soon
    # The same state again: nothing new to say before the stream ends.
    assert [e[0] for e in _events(client, job_id, seen)] == ["reconnect"]

    # Another process (this one is stopping) takes the reconnection; the job
    # finished meanwhile: its current state, then the end.
    other = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
    _finish(store, job_id)
    resumed = _events(other, job_id, seen)
    assert [e[0] for e in resumed] == ["job", "end"]
    assert resumed[0][3]["status"] == "completed" and resumed[0][1] != seen
    # A client that saw the last state but not the end gets the end alone.
    assert [e[0] for e in _events(other, job_id, resumed[0][1])] == ["end"]


@pytest.mark.parametrize("with_redis", [False, True])
def test_an_open_stream_ends_soon_after_its_process_stops(
    settings: Settings, with_redis: bool, request: pytest.FixtureRequest
) -> None:
    if with_redis:
        settings = settings.model_copy(update={"redis_url": request.getfixturevalue("redis_url")})
    app = create_app({"TESTING": True, "SETTINGS": settings})
    client = admin_client(app)
    job_id = client.post("/v1/jobs", json=small_deck()).get_json()["job_id"]
    stopper = threading.Timer(0.5, drain_of(app).end_streams)
    started = time.monotonic()
    stopper.start()
    events = _events(client, job_id)
    stopper.join()
    assert time.monotonic() - started < 2.0
    assert [e[0] for e in events] == ["job", "reconnect"]
