"""The reliability endpoints in-process: cancel, retry, delete, the history of a
job and its timings, on SQLite and PostgreSQL with a real (filesystem) broker."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from core.config import Settings
from storage import JobStore, Status
from storage.files import partial_dir
from tests.support.clients import assert_error
from tests.support.decks import small_deck
from tests.support.services import queued_messages

MISSING = "00000000-0000-0000-0000-000000000000"

Make = Callable[[FlaskClient, JobStore], str]


def _submit(client: FlaskClient) -> str:
    response = client.post("/v1/jobs", json=small_deck())
    assert response.status_code == 202
    return str(response.get_json()["job_id"])


def _queued(client: FlaskClient, store: JobStore) -> str:
    return _submit(client)


def _processing(client: FlaskClient, store: JobStore) -> str:
    job_id = _submit(client)
    assert store.claim(job_id, "a@host1") is not None
    return job_id


def _failed(client: FlaskClient, store: JobStore) -> str:
    job_id = _processing(client, store)
    assert store.fail(job_id, 1, "the deck cannot be rendered")
    return job_id


def _completed(client: FlaskClient, store: JobStore) -> str:
    job_id = _processing(client, store)
    assert store.complete(
        job_id,
        1,
        video_url=f"/v1/jobs/{job_id}/video",
        thumbnail_url=f"/v1/jobs/{job_id}/thumbnail",
        slide_image_path="slides",
    )
    return job_id


def _cancelled(client: FlaskClient, store: JobStore) -> str:
    job_id = _submit(client)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    return job_id


# -- cancel ----------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate(client: FlaskClient, store: JobStore) -> None:
    job_id = _submit(client)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    body = response.get_json()
    assert body["job_id"] == job_id and body["status"] == "cancelled"
    assert body["completed_at"] is not None and body["completed_at"].endswith("Z")
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    assert store.get(job_id).status is Status.CANCELLED


def test_cancel_of_a_processing_job_flags_it(client: FlaskClient, store: JobStore) -> None:
    job_id = _processing(client, store)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "processing" and body["cancel_requested"] is True
    assert client.get(f"/v1/jobs/{job_id}").get_json()["cancel_requested"] is True
    assert store.get(job_id).cancel_requested


@pytest.mark.parametrize("make", [_completed, _failed, _cancelled])
def test_cancel_of_a_finished_job_is_409(client: FlaskClient, store: JobStore, make: Make) -> None:
    job_id = make(client, store)
    before = client.get(f"/v1/jobs/{job_id}").get_json()
    error = assert_error(client.post(f"/v1/jobs/{job_id}/cancel"), 409)
    assert before["status"] in error["message"]
    assert client.get(f"/v1/jobs/{job_id}").get_json() == before


def test_cancel_of_an_unknown_job_is_404(client: FlaskClient) -> None:
    assert_error(client.post(f"/v1/jobs/{MISSING}/cancel"), 404, "job_not_found")


# -- retry -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [_failed, _cancelled])
def test_retry_of_a_failed_or_cancelled_job_is_202(
    client: FlaskClient, store: JobStore, settings: Settings, make: Make
) -> None:
    job_id = make(client, store)
    sent = queued_messages(settings)
    response = client.post(f"/v1/jobs/{job_id}/retry")
    assert response.status_code == 202
    assert response.headers["Location"] == f"/v1/jobs/{job_id}"
    body = response.get_json()
    assert body["job_id"] == job_id and body["status"] == "queued" and body["error"] is None
    assert body["completed_at"] is None and body["progress"] == 0
    assert body["max_attempts"] == body["attempts"] + settings.max_attempts
    assert queued_messages(settings) == sent + 1  # its task was sent again
    history = client.get(f"/v1/jobs/{job_id}?include=history").get_json()["history"]
    assert history[-1]["to"] == "queued" and history[-1]["reason"] == "retry requested"


@pytest.mark.parametrize("make", [_queued, _processing, _completed])
def test_retry_of_a_job_that_did_not_fail_is_409(
    client: FlaskClient, store: JobStore, settings: Settings, make: Make
) -> None:
    job_id = make(client, store)
    sent = queued_messages(settings)
    before = client.get(f"/v1/jobs/{job_id}").get_json()
    assert_error(client.post(f"/v1/jobs/{job_id}/retry"), 409)
    assert client.get(f"/v1/jobs/{job_id}").get_json() == before
    assert queued_messages(settings) == sent


def test_retry_of_an_unknown_job_is_404(client: FlaskClient) -> None:
    assert_error(client.post(f"/v1/jobs/{MISSING}/retry"), 404, "job_not_found")


# -- delete ----------------------------------------------------------------------


def test_delete_removes_the_job_and_its_files(
    client: FlaskClient, store: JobStore, settings: Settings
) -> None:
    job_id = _completed(client, store)
    folder = settings.output_dir / job_id
    (folder / "slides").mkdir(parents=True)
    (folder / "video.mp4").write_bytes(b"mp4")
    (folder / "slides" / "001.png").write_bytes(b"png")
    leftover = partial_dir(settings.output_dir, job_id, 1)
    leftover.mkdir(parents=True)
    (leftover / "video.mp4").write_bytes(b"half")
    other = _completed(client, store)
    (settings.output_dir / other).mkdir(parents=True)

    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 204 and response.get_data() == b""
    assert not folder.exists() and not leftover.exists()
    assert (settings.output_dir / other).is_dir()  # only that job's files
    assert_error(client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
    assert_error(client.get(f"/v1/jobs/{job_id}?include=history"), 404, "job_not_found")
    assert_error(client.delete(f"/v1/jobs/{job_id}"), 404)
    assert store.history(job_id) == []


def test_delete_of_a_processing_job_fences_off_its_worker(
    client: FlaskClient, store: JobStore
) -> None:
    job_id = _processing(client, store)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not store.heartbeat(job_id, 1)
    assert not store.complete(
        job_id, 1, video_url="/v", thumbnail_url="/t", slide_image_path="slides"
    )
    assert_error(client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")


def test_delete_of_an_unknown_job_is_404(client: FlaskClient) -> None:
    assert_error(client.delete(f"/v1/jobs/{MISSING}"), 404)


# -- history and timings -----------------------------------------------------------


def test_history_lists_every_transition(client: FlaskClient, store: JobStore) -> None:
    job_id = _processing(client, store)
    assert store.requeue(job_id, 1, "attempt 1 failed: ffmpeg crashed")
    assert store.claim(job_id, "b@host2") is not None
    assert store.complete(job_id, 2, video_url="/v", thumbnail_url="/t", slide_image_path="slides")
    plain = client.get(f"/v1/jobs/{job_id}").get_json()
    assert "history" not in plain
    response = client.get(f"/v1/jobs/{job_id}?include=history")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "completed" and body["attempts"] == 2
    history = body["history"]
    assert [(e["from"], e["to"], e["attempt"], e["worker"], e["reason"]) for e in history] == [
        (None, "queued", 0, None, "submitted"),
        ("queued", "processing", 1, "a@host1", "claimed"),
        ("processing", "queued", 1, "a@host1", "attempt 1 failed: ffmpeg crashed"),
        ("queued", "processing", 2, "b@host2", "claimed"),
        ("processing", "completed", 2, "b@host2", "rendered"),
    ]
    stamps = [e["at"] for e in history]
    assert all(s.endswith("Z") for s in stamps)
    assert stamps == sorted(stamps)
    assert {k: v for k, v in body.items() if k != "history"} == plain


def test_an_unknown_include_is_400(client: FlaskClient) -> None:
    job_id = _submit(client)
    error = assert_error(client.get(f"/v1/jobs/{job_id}?include=bogus"), 400, "invalid_parameter")
    assert [d["field"] for d in error["details"]] == ["include"]
    assert_error(client.get(f"/v1/jobs/{job_id}?include=history,bogus"), 400, "invalid_parameter")


def test_timings_appear_once_claimed(client: FlaskClient, store: JobStore) -> None:
    job_id = _submit(client)
    queued = client.get(f"/v1/jobs/{job_id}").get_json()
    assert queued["timings"] == {
        "queue_wait_seconds": None,
        "render_seconds": None,
        "encode_seconds": None,
        "synth_seconds": None,
        "mix_seconds": None,
    }
    assert store.claim(job_id, "a@host1") is not None
    claimed = client.get(f"/v1/jobs/{job_id}").get_json()["timings"]
    assert isinstance(claimed["queue_wait_seconds"], float | int)
    assert claimed["queue_wait_seconds"] >= 0
    assert store.complete(
        job_id,
        1,
        video_url="/v",
        thumbnail_url="/t",
        slide_image_path="slides",
        render_seconds=1.23456,
        encode_seconds=0.5,
        synth_seconds=0.25,
        mix_seconds=0.75,
    )
    done = client.get(f"/v1/jobs/{job_id}").get_json()["timings"]
    assert done["render_seconds"] == pytest.approx(1.235)
    assert done["encode_seconds"] == pytest.approx(0.5)
    assert done["synth_seconds"] == pytest.approx(0.25)
    assert done["mix_seconds"] == pytest.approx(0.75)
    assert done["queue_wait_seconds"] == claimed["queue_wait_seconds"]
