"""Slide images end to end: gunicorn, a Celery worker, PostgreSQL and Redis,
an asset uploaded through the API and an image fetched over HTTPS from a
local server the worker trusts (``SSL_CERT_FILE``) and may reach
(``SLIDEFARM_FETCH_ALLOW``)."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from storage.assets import asset_path
from tests.support.clients import bearer
from tests.support.images import FETCH_ALLOW, ImageServer, encoded
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

GREEN, BLUE = (0, 200, 0), (0, 0, 220)


def upload(stack: Stack, data: bytes) -> dict[str, object]:
    request = urllib.request.Request(
        stack.base + "/v1/assets",
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream", **bearer(stack.token or "")},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 201
        body: dict[str, object] = json.loads(answer.read())
    return body


def test_an_uploaded_and_a_fetched_image_render_and_a_retry_does_not_fetch_again(
    pg_redis_stack: Stack, image_server: ImageServer
) -> None:
    stack = pg_redis_stack
    stack.start_api()
    stack.start_worker(
        "images",
        env={"SLIDEFARM_FETCH_ALLOW": FETCH_ALLOW, "SSL_CERT_FILE": str(image_server.cert)},
    )
    asset = upload(stack, encoded(Image.new("RGB", (160, 90), GREEN), "PNG"))
    image_server.files["/photo.png"] = encoded(Image.new("RGB", (160, 90), BLUE), "PNG")
    url = image_server.url("/photo.png")
    deck = {
        "title": "Images",
        "slides": [
            {"title": "Uploaded", "body": "beside it", "image": asset["id"], "layout": "left"},
            {"image": url, "caption": "fetched"},
        ],
        "options": {"resolution": "480p"},
    }
    # The first attempt fetches the URL, then finds the asset's file gone.
    output = Path(stack.env["SLIDEFARM_OUTPUT_DIR"])
    stored = asset_path(output, str(asset["owner"]), str(asset["sha256"]))
    kept = stored.read_bytes()
    stored.unlink()
    status, job = stack.request("POST", "/v1/jobs", deck)
    assert status == 202, job
    job = stack.wait_final(job["job_id"])
    assert job["status"] == "failed"
    assert job["error"] == f"slide 1's image: the file of asset {asset['id']} is missing"
    assert image_server.hits == {"/photo.png": 1}

    stored.write_bytes(kept)
    status, _ = stack.request("POST", f"/v1/jobs/{job['job_id']}/retry")
    assert status == 202
    job = stack.wait_final(job["job_id"])
    assert job["status"] == "completed", job
    assert image_server.hits == {"/photo.png": 1}  # the retry used the stored asset

    status, first = stack.request("GET", f"/v1/jobs/{job['job_id']}/slides/1")
    assert status == 200
    slide = Image.open(io.BytesIO(first)).convert("RGB")
    assert slide.getpixel((slide.width // 4, slide.height // 2)) == GREEN
    status, second = stack.request("GET", f"/v1/jobs/{job['job_id']}/slides/2")
    slide = Image.open(io.BytesIO(second)).convert("RGB")
    assert slide.getpixel((slide.width // 2, slide.height // 2)) == BLUE
