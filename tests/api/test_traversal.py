"""No request reaches a file outside the job's output folder.

Each traversal form is its own test, through the Flask test client on both
backends: encoded and double-encoded ``../``, backslashes, absolute paths,
NUL bytes, ids that are not UUIDs, slide numbers out of range, and symlinks
planted in the output folder. Every one answers 404 in the API's JSON error
shape and never a byte of the file it aims at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from core.config import Settings
from storage import JobStore
from tests.support.decks import small_deck

PASSWD = Path("/etc/passwd")
VIDEO = b"THIS-JOBS-VIDEO"
OTHER_SECRET = b"ANOTHER-JOBS-PRIVATE-BYTES"


def complete_with_files(client: FlaskClient, settings: Settings, payload: bytes) -> str:
    """Submit a one-slide deck through the API and complete it with small files."""
    response = client.post("/v1/jobs", json=small_deck(slides=1))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["job_id"]
    store = JobStore.from_url(settings.database_url)
    assert store.claim(job_id, "w@h") is not None
    folder = settings.output_dir / job_id
    (folder / "slides").mkdir(parents=True)
    (folder / "video.mp4").write_bytes(payload)
    (folder / "thumbnail.jpg").write_bytes(payload)
    (folder / "slides" / "001.png").write_bytes(payload)
    store.complete(
        job_id,
        1,
        video_url=f"/v1/jobs/{job_id}/video",
        thumbnail_url=f"/v1/jobs/{job_id}/thumbnail",
        slide_image_path="slides",
    )
    return job_id


@pytest.fixture
def job_id(client: FlaskClient, settings: Settings) -> str:
    return complete_with_files(client, settings, VIDEO)


@pytest.fixture
def other_id(client: FlaskClient, settings: Settings) -> str:
    return complete_with_files(client, settings, OTHER_SECRET)


def get(client: FlaskClient, url: str) -> Any:
    response = client.get(url)
    response.get_data()
    response.close()
    return response


def assert_refused(response: Any) -> None:
    """404, the JSON error shape, and nothing of any file in the body."""
    assert response.status_code == 404, (response.status_code, response.data[:200])
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert b"root:" not in response.data
    assert OTHER_SECRET not in response.data and VIDEO not in response.data


def test_the_files_themselves_are_served(client: FlaskClient, job_id: str) -> None:
    # The control: the same fixture's files do come out through the routes.
    for url in (
        f"/v1/jobs/{job_id}/video",
        f"/v1/jobs/{job_id}/thumbnail",
        f"/v1/jobs/{job_id}/slides/1",
    ):
        response = get(client, url)
        assert response.status_code == 200 and response.data == VIDEO


# -- forms in the URL -------------------------------------------------------------

URL_FORMS = {
    "dot_dot": "/v1/jobs/{id}/../../../../etc/passwd",
    "dot_dot_as_id": "/v1/jobs/../video",
    "dot_dot_encoded": "/v1/jobs/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd/video",
    "dot_dot_encoded_upper": "/v1/jobs/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd/video",
    "dot_dot_slash_encoded": "/v1/jobs/..%2f..%2f..%2fetc%2fpasswd/video",
    "dot_dot_after_id": "/v1/jobs/{id}%2f..%2f..%2f..%2fetc%2fpasswd/video",
    "double_encoded": "/v1/jobs/%252e%252e%252f%252e%252e%252fetc%252fpasswd/video",
    "double_encoded_after_id": "/v1/jobs/{id}%252f..%252f{other}/video",
    "backslashes": "/v1/jobs/..\\..\\..\\etc\\passwd/video",
    "backslashes_encoded": "/v1/jobs/..%5c..%5c..%5cetc%5cpasswd/video",
    "absolute_path": "/v1/jobs//etc/passwd/video",
    "absolute_path_encoded": "/v1/jobs/%2fetc%2fpasswd/video",
    "nul_byte": "/v1/jobs/{id}%00/video",
    "nul_byte_then_dot_dot": "/v1/jobs/{id}%00..%2f..%2fetc%2fpasswd/video",
    "not_a_uuid": "/v1/jobs/passwd/video",
    "uuid_with_suffix": "/v1/jobs/{id}.mp4/video",
    "uuid_without_dashes": "/v1/jobs/{nodash}/video",
    "other_file_name": "/v1/jobs/{id}/.attempt",
    "slide_minus_one": "/v1/jobs/{id}/slides/-1",
    "slide_zero": "/v1/jobs/{id}/slides/0",
    "slide_huge": "/v1/jobs/{id}/slides/" + "9" * 40,
    "slide_fraction": "/v1/jobs/{id}/slides/1.5",
    "slide_dot_dot": "/v1/jobs/{id}/slides/..%2f..%2f{other}%2fvideo.mp4",
    "slide_encoded_dot_dot": "/v1/jobs/{id}/slides/%2e%2e",
    "slide_absolute": "/v1/jobs/{id}/slides//etc/passwd",
}


@pytest.mark.parametrize("form", sorted(URL_FORMS))
def test_traversal_in_the_url_is_refused(
    client: FlaskClient, job_id: str, other_id: str, form: str
) -> None:
    url = URL_FORMS[form].format(id=job_id, other=other_id, nodash=job_id.replace("-", ""))
    assert_refused(get(client, url))


# -- symlinks planted in the output folder -------------------------------------------


def _replace_with_symlink(path: Path, target: Path | str) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    os.symlink(target, path)


def test_video_symlinked_to_etc_passwd_is_refused(
    client: FlaskClient, settings: Settings, job_id: str
) -> None:
    _replace_with_symlink(settings.output_dir / job_id / "video.mp4", PASSWD)
    assert_refused(get(client, f"/v1/jobs/{job_id}/video"))


def test_thumbnail_symlinked_relatively_out_of_the_folder_is_refused(
    client: FlaskClient, settings: Settings, job_id: str
) -> None:
    depth = "../" * (len(settings.output_dir.parts) + 2)
    _replace_with_symlink(settings.output_dir / job_id / "thumbnail.jpg", f"{depth}etc/passwd")
    assert_refused(get(client, f"/v1/jobs/{job_id}/thumbnail"))


def test_slide_symlinked_to_another_jobs_slide_is_refused(
    client: FlaskClient, settings: Settings, job_id: str, other_id: str
) -> None:
    _replace_with_symlink(
        settings.output_dir / job_id / "slides" / "001.png", f"../../{other_id}/slides/001.png"
    )
    assert_refused(get(client, f"/v1/jobs/{job_id}/slides/1"))


def test_slides_folder_symlinked_to_another_jobs_is_refused(
    client: FlaskClient, settings: Settings, job_id: str, other_id: str
) -> None:
    _replace_with_symlink(
        settings.output_dir / job_id / "slides", settings.output_dir / other_id / "slides"
    )
    assert_refused(get(client, f"/v1/jobs/{job_id}/slides/1"))


def test_job_folder_symlinked_to_another_jobs_is_refused(
    client: FlaskClient, settings: Settings, job_id: str, other_id: str
) -> None:
    _replace_with_symlink(settings.output_dir / job_id, settings.output_dir / other_id)
    for url in (
        f"/v1/jobs/{job_id}/video",
        f"/v1/jobs/{job_id}/thumbnail",
        f"/v1/jobs/{job_id}/slides/1",
    ):
        assert_refused(get(client, url))


def test_job_folder_symlinked_to_etc_is_refused(
    client: FlaskClient, settings: Settings, job_id: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "video.mp4").write_bytes(b"root:x:0:0 outside the output folder")
    _replace_with_symlink(settings.output_dir / job_id, outside)
    assert_refused(get(client, f"/v1/jobs/{job_id}/video"))


def test_symlink_loop_is_refused(client: FlaskClient, settings: Settings, job_id: str) -> None:
    video = settings.output_dir / job_id / "video.mp4"
    _replace_with_symlink(video, video)
    assert_refused(get(client, f"/v1/jobs/{job_id}/video"))


def test_a_folder_in_place_of_the_video_is_refused(
    client: FlaskClient, settings: Settings, job_id: str
) -> None:
    video = settings.output_dir / job_id / "video.mp4"
    video.unlink()
    video.mkdir()
    assert_refused(get(client, f"/v1/jobs/{job_id}/video"))
