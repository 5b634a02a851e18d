"""Inspection: workers, stats, metrics, the event stream and the dashboard's
server side, read from the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from api import create_app
from core.config import Settings
from storage import JobStore, Stage, utcnow
from storage.access import AccessStore
from storage.models import tenants_table
from storage.registry import WorkerRegistry
from tests.support.clients import admin_client
from tests.support.decks import small_deck
from tests.support.jobs import failed_job


def _finish(store: JobStore, job_id: str, worker: str = "w@host") -> None:
    store.claim(job_id, worker)
    store.record_progress(job_id, 1, 0.5, Stage.ENCODING_VIDEO)
    store.complete(
        job_id,
        1,
        video_url="/v",
        thumbnail_url="/t",
        slide_image_path="slides",
        render_seconds=0.4,
        encode_seconds=1.2,
    )


def test_workers_show_who_is_alive(client: FlaskClient, store: JobStore) -> None:
    registry = WorkerRegistry(store)
    registry.register("a@host1", "host1", 101)
    registry.register("b@host2", "host2", 202)
    job_id = client.post("/v1/jobs", json=small_deck()).get_json()["job_id"]
    store.claim(job_id, "a@host1")
    registry.stopped("b@host2")
    body = client.get("/v1/workers").get_json()
    by_name = {w["name"]: w for w in body["workers"]}
    assert by_name["a@host1"]["state"] == "alive" and by_name["a@host1"]["current_job"] == job_id
    assert by_name["a@host1"]["host"] == "host1" and by_name["a@host1"]["pid"] == 101
    assert by_name["b@host2"]["state"] == "stopped" and not by_name["b@host2"]["alive"]


def test_a_draining_worker_shows_draining(client: FlaskClient, store: JobStore) -> None:
    registry = WorkerRegistry(store)
    registry.register("a@host1", "host1", 101)
    registry.draining("a@host1", utcnow() + timedelta(seconds=75))
    [worker] = client.get("/v1/workers").get_json()["workers"]
    assert (worker["state"], worker["alive"]) == ("draining", False)
    page = client.get("/workers")
    assert page.status_code == 200
    with client.get("/static/dashboard.js") as script:
        assert "draining:" in script.get_data(as_text=True)  # the badge's legend


def test_stats_count_jobs_and_throughput(client: FlaskClient, store: JobStore) -> None:
    ids = [client.post("/v1/jobs", json=small_deck()).get_json()["job_id"] for _ in range(3)]
    _finish(store, ids[0])
    body = client.get("/v1/stats").get_json()
    assert body["counts"] == {
        "scheduled": 0,
        "queued": 2,
        "processing": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
    }
    assert body["total"] == 3 and body["completed_last_hour"] == 1
    assert body["completed_per_minute"][-1] == 1 and len(body["completed_per_minute"]) == 60
    assert body["queue_depth"] == 3  # three messages on the embedded broker
    assert body["oldest_queued_seconds"] is not None and body["submitted_total"] == 3


def test_stats_and_metrics_show_each_tenants_queue(client: FlaskClient, store: JobStore) -> None:
    deck = small_deck()
    for priority in (0, 0, 5):
        store.create(deck, title="a", owner="acme", priority=priority)
    running = store.create(deck, title="a", owner="acme")[0]
    store.claim(running.id, "w@host")
    store.create(deck, title="b", owner="bolt")
    later = utcnow() + timedelta(hours=1)
    store.create(deck, title="b", owner="bolt", run_at=later)
    AccessStore(store).ensure_tenant("acme")
    with store.db.transaction() as conn:  # acme's own limits, as an admin sets them
        conn.execute(
            update(tenants_table)
            .where(tenants_table.c.name == "acme")
            .values(weight=2.0, max_running=3)
        )
    body = client.get("/v1/stats").get_json()
    assert body["counts"]["scheduled"] == 1 and body["scheduled"] == 1
    assert body["next_run_at"] is not None
    tenants = {t["tenant"]: t for t in body["tenants"]}
    assert tenants["acme"] == {
        "tenant": "acme",
        "queued": 3,
        "queued_by_priority": {"5": 1, "0": 2},
        "running": 1,
        "scheduled": 0,
        "oldest_eligible_seconds": tenants["acme"]["oldest_eligible_seconds"],
        "weight": 2.0,
        "max_running": 3,
    }
    assert tenants["acme"]["oldest_eligible_seconds"] >= 0
    assert tenants["bolt"]["queued"] == 1 and tenants["bolt"]["scheduled"] == 1
    assert tenants["bolt"]["weight"] == 1.0 and tenants["bolt"]["max_running"] is None

    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    queued = {
        (s.labels["tenant"], s.labels["priority"]): s.value
        for s in families["slidefarm_queued_jobs"].samples
    }
    assert queued == {("acme", "5"): 1, ("acme", "0"): 2, ("bolt", "0"): 1}
    running_by = {s.labels["tenant"]: s.value for s in families["slidefarm_running_jobs"].samples}
    assert running_by == {"acme": 1, "bolt": 0}
    scheduled = {s.labels["tenant"]: s.value for s in families["slidefarm_scheduled_jobs"].samples}
    assert scheduled == {"acme": 0, "bolt": 1}
    oldest = families["slidefarm_oldest_eligible_age_seconds"].samples
    assert {s.labels["tenant"] for s in oldest} == {"acme", "bolt"}


def test_metrics_parse_as_prometheus_text(client: FlaskClient, store: JobStore) -> None:
    ids = [client.post("/v1/jobs", json=small_deck()).get_json()["job_id"] for _ in range(2)]
    _finish(store, ids[0])
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    jobs = {s.labels["status"]: s.value for s in families["slidefarm_jobs"].samples}
    assert jobs["queued"] == 1 and jobs["completed"] == 1
    assert families["slidefarm_jobs_submitted"].samples[0].value == 2
    render = {s.name: s for s in families["slidefarm_render_seconds"].samples}
    assert render["slidefarm_render_seconds_count"].value == 1
    assert render["slidefarm_render_seconds_sum"].value == pytest.approx(0.4)
    assert "slidefarm_queue_wait_seconds" in families
    assert "slidefarm_oldest_heartbeat_age_seconds" in families
    assert families["slidefarm_queue_depth"].samples[0].value == 2


def test_search_by_title_or_id_prefix(client: FlaskClient) -> None:
    first = client.post("/v1/jobs", json={**small_deck(), "title": "Quarterly 100% review"})
    client.post("/v1/jobs", json={**small_deck(), "title": "Something else"})
    job_id = first.get_json()["job_id"]
    found = client.get("/v1/jobs?q=quarterly").get_json()["jobs"]
    assert [j["job_id"] for j in found] == [job_id]
    assert [j["job_id"] for j in client.get("/v1/jobs?q=100%25").get_json()["jobs"]] == [job_id]
    assert client.get("/v1/jobs?q=_").get_json()["jobs"] == []  # wildcards are literal
    assert [j["job_id"] for j in client.get(f"/v1/jobs?q={job_id[:8]}").get_json()["jobs"]] == [
        job_id
    ]


def _read_events(client: FlaskClient, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    response = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events: list[tuple[str, dict[str, Any]]] = []
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1)
                for line in block.splitlines()
                if ": " in line and not line.startswith(":")
            )
            if "event" in fields:
                events.append((fields["event"], json.loads(fields["data"])))
    response.close()
    return events


@pytest.mark.parametrize("with_redis", [False, True])
def test_event_stream_follows_a_job_to_the_end(
    settings: Settings, store: JobStore, with_redis: bool, request: pytest.FixtureRequest
) -> None:
    if with_redis:
        settings = settings.model_copy(update={"redis_url": request.getfixturevalue("redis_url")})
    app = create_app({"TESTING": True, "SETTINGS": settings})
    client = admin_client(app)
    job_id = client.post("/v1/jobs", json=small_deck()).get_json()["job_id"]
    writer = JobStore.from_url(settings.database_url, settings.redis_url)

    def work() -> None:
        time.sleep(0.3)
        writer.claim(job_id, "w@host")
        for progress in (0.2, 0.5, 0.8):
            time.sleep(0.3)
            writer.record_progress(job_id, 1, progress, Stage.RENDERING_SLIDES)
        writer.complete(job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="s")

    thread = threading.Thread(target=work)
    started = time.monotonic()
    thread.start()
    events = _read_events(client, job_id)
    thread.join()
    assert time.monotonic() - started < 15
    names = [name for name, _ in events]
    assert names[0] == "job" and names[-1] == "end" and names.count("end") == 1
    statuses = [data["status"] for _, data in events]
    assert statuses[0] == "queued" and "processing" in statuses and statuses[-1] == "completed"
    progress = [data["progress"] for name, data in events if name == "job"]
    assert progress == sorted(progress) and len(set(progress)) >= 3


def test_event_stream_of_unknown_job_is_404(client: FlaskClient) -> None:
    response = client.get("/v1/jobs/00000000-0000-4000-8000-000000000000/events")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "job_not_found"


def test_dashboard_pages_render_and_escape_user_text(client: FlaskClient, store: JobStore) -> None:
    hostile = '<script>alert("x")</script>'
    job_id = client.post("/v1/jobs", json={**small_deck(), "title": hostile}).get_json()["job_id"]
    _finish(store, job_id)
    for path in ("/", "/?status=completed&q=script", f"/jobs/{job_id}", "/workers", "/overview"):
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == "text/html", path
        html = response.get_data(as_text=True)
        assert hostile not in html, path
    assert "&lt;script&gt;" in client.get("/").get_data(as_text=True)
    chart = client.get("/overview/throughput.svg")
    assert chart.status_code == 200 and chart.mimetype == "image/svg+xml"
    assert b"<rect" in chart.data
    script = client.get("/static/dashboard.js")
    assert script.status_code == 200 and b"EventSource" in script.data
    script.close()
    assert client.get("/jobs/00000000-0000-4000-8000-000000000000").status_code == 404


# -- metrics never go down --------------------------------------------------------


def _monotonic_samples(text_body: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text_body):
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count", "_sum", "_bucket")):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _completed_job(store: JobStore, render: float, encode: float) -> str:
    job, _ = store.create(small_deck(), title="deck")
    assert store.claim(job.id, "a@host1") is not None
    assert store.complete(
        job.id,
        1,
        video_url="/v",
        thumbnail_url="/t",
        slide_image_path="slides",
        render_seconds=render,
        encode_seconds=encode,
    )
    return job.id


def test_metrics_never_decrease_when_jobs_are_deleted(settings: Settings, store: JobStore) -> None:
    client = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
    done = [_completed_job(store, 0.3 * n, 1.5 * n) for n in range(1, 5)]
    failed = failed_job(store)
    lost, _ = store.create(small_deck(), title="deck")
    assert store.claim(lost.id, "a@host1") is not None
    assert store.recover_stale(1, now=utcnow() + timedelta(minutes=1))  # recovered
    store.create(small_deck(), title="still queued")

    def scrape() -> dict[tuple[str, tuple[Any, ...]], float]:
        answer = client.get("/metrics")
        assert answer.status_code == 200
        return _monotonic_samples(answer.get_data(as_text=True))

    first = scrape()
    assert first[("slidefarm_jobs_submitted_total", ())] == 7
    assert first[("slidefarm_jobs_completed_total", ())] == 4
    assert first[("slidefarm_encode_seconds_count", ())] == 4
    assert first[("slidefarm_jobs_recovered_total", ())] == 1
    steps = [
        lambda: client.delete(f"/v1/jobs/{done[0]}").status_code == 204,
        lambda: client.delete(f"/v1/jobs/{lost.id}").status_code == 204,
        lambda: len(store.delete_older_than(7, now=utcnow() + timedelta(days=30))) == 4,
    ]
    before = first
    for step in steps:
        assert step()
        after = scrape()
        fell = {k: (v, after.get(k)) for k, v in before.items() if after.get(k, -1) < v}
        assert not fell, fell
        before = after
    assert before == first  # nothing new happened: every figure is as it was
    assert failed not in [j.id for j in store.list_jobs().jobs]


def test_a_histogram_sum_never_falls_by_float_rounding(settings: Settings, store: JobStore) -> None:
    # In float arithmetic (0.1 + 0.2) + 0.3 is 0.6000000000000001 but
    # 0.1 + (0.2 + 0.3) is 0.6: moving the first job's share from the live
    # rows to its counter row must not lower _sum by that ulp.
    client = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
    done = [_completed_job(store, seconds, seconds) for seconds in (0.1, 0.2, 0.3)]

    def render_sum() -> float:
        samples = _monotonic_samples(client.get("/metrics").get_data(as_text=True))
        return samples[("slidefarm_render_seconds_sum", ())]

    before = render_sum()
    assert before == pytest.approx(0.6)
    assert client.delete(f"/v1/jobs/{done[0]}").status_code == 204
    assert render_sum() >= before


def test_metrics_content_type_names_its_charset_once(client: Any) -> None:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
