"""The HTTP contract in-process: status codes, the JSON error shape, submission,
listing and file serving, on SQLite and PostgreSQL with a real broker."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from core.config import Settings
from storage import JobStore, Status
from tests.support.clients import admin_client, admin_token, assert_error, fetch
from tests.support.decks import sample_deck, small_deck
from tests.support.jobs import finish_with_files
from tests.support.services import queued_messages


def test_submit_commits_the_job_then_wakes_a_worker(
    client: FlaskClient, settings: Settings
) -> None:
    response = client.post("/v1/jobs", json=sample_deck())
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['job_id']}"
    assert job["status"] == "queued" and job["progress"] == 0 and job["stage"] == "queued"
    assert job["title"] == sample_deck()["title"] and job["attempts"] == 0
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert job["video_url"] is None and job["created_files"] == []
    assert queued_messages(settings) == 1
    message = json.loads(next((settings.broker_dir / "queue").glob("*.msg")).read_text())
    assert message["headers"]["task"] == "slidefarm.render_presentation"
    # A wake-up: it names no job, the worker asks the store what runs next.
    assert json.loads(base64.b64decode(message["body"]))[:2] == [[], {}]
    assert message["content-type"] == "application/json"
    fetched = client.get(job["Location"] if "Location" in job else f"/v1/jobs/{job['job_id']}")
    assert fetched.status_code == 200 and fetched.get_json() == job


def test_submission_fills_defaults(client: FlaskClient, settings: Settings) -> None:
    job = client.post("/v1/jobs", json={"title": "t", "slides": [{"title": "x"}]}).get_json()
    stored = JobStore.from_url(settings.database_url).get(job["job_id"])
    assert stored.deck["options"] == {
        "resolution": "720p",
        "aspect": "16:9",
        "theme": "light",
        "fps": 30,
        "transition": "none",
        "narrate": False,
        "voice": None,
        "narration_padding": 0.5,
        "music": None,
        "burn_subtitles": False,
    }
    # Unset: 3 s for a silent slide, its audio's length for one with sound.
    assert stored.deck["slides"][0]["duration"] is None
    assert job["slide_count"] == 1


@pytest.mark.parametrize(
    ("resolution", "aspect"), [("2160p", "16:9"), ("1080p", "9:16"), ("720p", "1:1")]
)
def test_new_sizes_are_accepted_and_stored(
    client: FlaskClient, settings: Settings, resolution: str, aspect: str
) -> None:
    options = {"resolution": resolution, "aspect": aspect}
    response = client.post("/v1/jobs", json={"title": "t", "slides": [{}], "options": options})
    assert response.status_code == 202, response.get_json()
    stored = JobStore.from_url(settings.database_url).get(response.get_json()["job_id"])
    assert {k: stored.deck["options"][k] for k in options} == options


@pytest.mark.parametrize(
    ("field", "value"),
    [("aspect", "4:3"), ("aspect", "vertical"), ("resolution", "1440p"), ("resolution", "4k")],
)
def test_unknown_sizes_are_422_naming_the_field(
    client: FlaskClient, settings: Settings, field: str, value: str
) -> None:
    deck = {"title": "t", "slides": [{}], "options": {field: value}}
    error = assert_error(client.post("/v1/jobs", json=deck), 422, "validation_failed")
    assert [d["field"] for d in error["details"]] == [f"options.{field}"]
    assert queued_messages(settings) == 0


def test_unknown_job_is_404(client: FlaskClient) -> None:
    assert_error(client.get("/v1/jobs/nope"), 404, "job_not_found")
    assert_error(client.get("/v1/jobs/nope/video"), 404, "job_not_found")


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert_error(client.get("/no/such/thing"), 404)
    response = client.put("/v1/jobs")
    error = assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert error["message"]


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", data=b'{"title": "x", ', content_type="application/json")
    assert_error(response, 400, "malformed_json")
    response = client.post("/v1/jobs", data=b"\xff\xfe", content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_non_json_is_415(client: FlaskClient) -> None:
    assert_error(client.post("/v1/jobs", data="title=x", content_type="text/plain"), 415)
    assert_error(client.post("/v1/jobs", data=b"{}"), 415)


def test_body_over_one_mebibyte_is_413(client: FlaskClient, settings: Settings) -> None:
    big = json.dumps({"title": "x", "slides": [{"body": "a" * (1024 * 1024)}]})
    assert_error(client.post("/v1/jobs", data=big, content_type="application/json"), 413)
    assert queued_messages(settings) == 0


def test_invalid_deck_is_422_naming_each_field(client: FlaskClient, settings: Settings) -> None:
    deck = {
        "title": "",
        "slides": [{"title": "x" * 201, "duration": 0.1, "bullets": ["b"] * 13, "colour": "red"}],
        "options": {"resolution": "4k", "fps": 60, "theme": "neon"},
        "extra": 1,
    }
    error = assert_error(client.post("/v1/jobs", json=deck), 422, "validation_failed")
    fields = {d["field"] for d in error["details"]}
    assert {
        "title",
        "slides.0.title",
        "slides.0.duration",
        "slides.0.bullets",
        "slides.0.colour",
        "options.resolution",
        "options.fps",
        "options.theme",
        "extra",
    } <= fields
    assert all(d["message"] for d in error["details"])
    assert_error(client.post("/v1/jobs", json={"title": "t", "slides": []}), 422)
    assert_error(client.post("/v1/jobs", json=[1, 2]), 422)
    assert_error(client.post("/v1/jobs", json={"title": "t", "slides": [{"duration": "3"}]}), 422)
    assert_error(client.post("/v1/jobs", json={"title": "t", "slides": [{}] * 201}), 422)
    assert queued_messages(settings) == 0
    assert client.get("/v1/jobs").get_json()["jobs"] == []


def test_idempotency_key(client: FlaskClient, settings: Settings) -> None:
    deck = small_deck()
    first = client.post("/v1/jobs", json=deck, headers={"Idempotency-Key": "abc"})
    again = client.post("/v1/jobs", json=deck, headers={"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 202
    assert first.get_json()["job_id"] == again.get_json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert queued_messages(settings) == 1
    other = client.post("/v1/jobs", json=small_deck(slides=2), headers={"Idempotency-Key": "abc"})
    assert_error(other, 409, "idempotency_conflict")
    assert_error(client.post("/v1/jobs", json=deck, headers={"Idempotency-Key": "k" * 256}), 400)


def test_list_filters_pages_and_validates(client: FlaskClient, settings: Settings) -> None:
    ids = [client.post("/v1/jobs", json=small_deck()).get_json()["job_id"] for _ in range(5)]
    JobStore.from_url(settings.database_url).claim(ids[0], "w@h")
    body = client.get("/v1/jobs?limit=2").get_json()
    assert [j["job_id"] for j in body["jobs"]] == ids[::-1][:2]
    seen = [j["job_id"] for j in body["jobs"]]
    while body["next_cursor"]:
        body = client.get(f"/v1/jobs?limit=2&cursor={body['next_cursor']}").get_json()
        seen += [j["job_id"] for j in body["jobs"]]
    assert seen == ids[::-1]
    processing = client.get("/v1/jobs?status=processing").get_json()
    assert [j["job_id"] for j in processing["jobs"]] == [ids[0]]
    assert processing["next_cursor"] is None
    assert len(client.get("/v1/jobs").get_json()["jobs"]) == 5
    assert_error(client.get("/v1/jobs?status=bogus"), 400, "invalid_parameter")
    assert_error(client.get("/v1/jobs?limit=0"), 400, "invalid_parameter")
    assert_error(client.get("/v1/jobs?limit=501"), 400, "invalid_parameter")
    assert_error(client.get("/v1/jobs?limit=x"), 400, "invalid_parameter")
    assert_error(client.get("/v1/jobs?cursor=%%%"), 400, "invalid_cursor")


def test_files_are_404_until_completed_then_served_with_ranges(
    client: FlaskClient, settings: Settings
) -> None:
    job_id = client.post("/v1/jobs", json=small_deck(slides=1)).get_json()["job_id"]
    assert_error(client.get(f"/v1/jobs/{job_id}/video"), 404, "not_ready")
    assert_error(client.get(f"/v1/jobs/{job_id}/thumbnail"), 404, "not_ready")
    assert_error(client.get(f"/v1/jobs/{job_id}/slides/1"), 404, "not_ready")
    video = bytes(range(256)) * 40
    finish_with_files(settings, job_id, video)

    full = fetch(client, f"/v1/jobs/{job_id}/video")
    assert full.status_code == 200 and full.mimetype == "video/mp4" and full.data == video
    assert full.headers["Accept-Ranges"] == "bytes"
    part = fetch(client, f"/v1/jobs/{job_id}/video", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == video[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(video)}"
    tail = fetch(client, f"/v1/jobs/{job_id}/video", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.data == video[-10:]
    bad = fetch(client, f"/v1/jobs/{job_id}/video", headers={"Range": "bytes=999999-"})
    assert_error(bad, 416)

    thumb = fetch(client, f"/v1/jobs/{job_id}/thumbnail")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    slide = fetch(client, f"/v1/jobs/{job_id}/slides/1")
    assert slide.status_code == 200 and slide.mimetype == "image/png"
    assert_error(fetch(client, f"/v1/jobs/{job_id}/slides/2"), 404, "slide_not_found")
    assert_error(fetch(client, f"/v1/jobs/{job_id}/slides/0"), 404, "slide_not_found")
    assert_error(fetch(client, f"/v1/jobs/{job_id}/slides/-1"), 404, "slide_not_found")
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "completed" and job["video_url"] == f"/v1/jobs/{job_id}/video"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {
        "database": "ok",
        "broker": "ok",
    }


def test_readiness_names_a_database_that_is_down(tmp_path: Path) -> None:
    settings = Settings(
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere",
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
    )
    client = create_app({"TESTING": True, "SETTINGS": settings}).test_client()
    # A well-formed key: checking it needs the database, which is down.
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer sf_0123456789ab_" + "A" * 40
    error = assert_error(client.get("/readyz"), 503, "not_ready")
    assert [d["field"] for d in error["details"]] == ["database"]
    # Reads answer 503 with the JSON shape, never a crash or an HTML page.
    assert_error(
        client.get("/v1/jobs/00000000-0000-4000-8000-000000000000"), 503, "database_unavailable"
    )
    assert_error(client.post("/v1/jobs", json=small_deck()), 503, "database_unavailable")


def test_readiness_names_a_broker_that_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"celery_broker_url": "redis://127.0.0.1:1/0"})
    client = admin_client(create_app({"TESTING": True, "SETTINGS": down}))
    error = assert_error(client.get("/readyz"), 503, "not_ready")
    assert [d["field"] for d in error["details"]] == ["broker"]


def test_submission_is_accepted_while_the_broker_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"celery_broker_url": "redis://127.0.0.1:1/0"})
    client = admin_client(create_app({"TESTING": True, "SETTINGS": down}))
    response = client.post("/v1/jobs", json=small_deck())
    assert response.status_code == 202
    job_id = response.get_json()["job_id"]
    assert JobStore.from_url(settings.database_url).get(job_id).status is Status.QUEUED


def test_unexpected_errors_are_json_500(app: Flask) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    response = admin_client(app).get("/boom")
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in error["message"]


def test_hostile_json_is_a_clean_400(client: FlaskClient) -> None:
    huge_int = b'{"title": "t", "slides": [{"duration": ' + b"9" * 5000 + b"}]}"
    assert_error(
        client.post("/v1/jobs", data=huge_int, content_type="application/json"),
        400,
        "malformed_json",
    )
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_error(
        client.post("/v1/jobs", data=deep[:900_000], content_type="application/json"),
        400,
        "malformed_json",
    )
    nan = b'{"title": "t", "slides": [{"duration": NaN}]}'
    assert_error(client.post("/v1/jobs", data=nan, content_type="application/json"), 422)


def test_nul_characters_are_refused_not_stored(client: FlaskClient) -> None:
    error = assert_error(
        client.post("/v1/jobs", json={"title": "a\x00b", "slides": [{"body": "x\x00"}]}), 422
    )
    assert {d["field"] for d in error["details"]} == {"title", "slides.0.body"}
    assert_error(client.get("/v1/jobs/%00"), 404, "job_not_found")
    assert_error(client.get("/v1/jobs/not-a-uuid/slides/1"), 404, "job_not_found")
    assert_error(
        client.post("/v1/jobs", json=small_deck(), headers={"Idempotency-Key": "a\tb"}),
        400,
        "invalid_parameter",
    )


def test_a_chunked_body_over_the_limit_is_413(client: FlaskClient, settings: Settings) -> None:
    body = json.dumps({"title": "t", "slides": [{"body": "x"}], "pad": "p" * 2_000_000})
    response = client.post(
        "/v1/jobs",
        input_stream=io.BytesIO(body.encode()),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        # as gunicorn says of a chunked body it has de-chunked
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(response, 413)
    assert queued_messages(settings) == 0


def test_files_are_served_from_a_relative_output_dir(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(
        DATABASE_URL=db_url,
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR="broker",
        SLIDEFARM_OUTPUT_DIR="output",
    )
    assert settings.output_dir == tmp_path / "output"
    client = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
    if settings.auth_required:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_token(db_url)}"
    job_id = client.post("/v1/jobs", json=small_deck(slides=1)).get_json()["job_id"]
    finish_with_files(settings, job_id, b"video-bytes")
    assert fetch(client, f"/v1/jobs/{job_id}/video").status_code == 200
