"""Document decks end to end: PDF and PPTX uploaded over HTTP, rendered by a
real ``celery`` worker (pdfium in its child, LibreOffice headless), and
hostile documents failing while that same worker serves the next job."""

from __future__ import annotations

import json
import shutil
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.assets import (
    encrypted_pdf,
    pdf_of_pages,
    pdf_with_rectangle,
    pptx_with_content,
)
from tests.support.clients import bearer
from tests.support.media import probe
from tests.support.services import missing
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def upload(stack: Stack, data: bytes, name: str) -> str:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    auth = bearer(stack.token) if stack.token else {}
    request = urllib.request.Request(
        stack.base + "/v1/assets",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **auth},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return str(answer["id"])


def submit(stack: Stack, deck: dict[str, Any]) -> dict[str, Any]:
    status, job = stack.request("POST", "/v1/jobs", deck)
    assert status == 202, job
    return stack.wait_final(job["job_id"])


def test_pdf_and_pptx_render_and_hostile_ones_fail_on_one_living_worker(
    pg_redis_stack: Stack, tmp_path: Path
) -> None:
    if shutil.which("soffice") is None:
        missing("LibreOffice is not installed (make libreoffice)")
    stack = pg_redis_stack
    stack.start_api()
    worker = stack.start_worker("docs", concurrency=1)
    options = {"resolution": "480p", "fps": 24}

    pdf = upload(stack, pdf_with_rectangle(), "deck.pdf")
    job = submit(
        stack, {"source": {"asset": pdf}, "slides": [{"duration": 1.5}], "options": options}
    )
    assert job["status"] == "completed", job
    assert job["title"] == "Untitled presentation" and job["slide_count"] == 1
    assert sorted(job["created_files"]) == [
        "slides.json",
        "slides/001.png",
        "thumbnail.jpg",
        "video.mp4",
    ]
    status, video = stack.request("GET", job["video_url"])
    assert status == 200
    (tmp_path / "pdf.mp4").write_bytes(video)
    meta, frames = probe(tmp_path / "pdf.mp4")
    assert meta["size"] == (854, 480) and abs(frames - 36) <= 1

    pptx = upload(stack, pptx_with_content(2), "deck.pptx")
    job = submit(stack, {"title": "Slides", "source": {"asset": pptx}, "options": options})
    assert job["status"] == "completed", job
    manifest = json.loads(
        (Path(stack.env["SLIDEFARM_OUTPUT_DIR"]) / job["job_id"] / "slides.json").read_text()
    )
    assert [(s["title"], s["notes"]) for s in manifest["slides"]] == [
        ("Title 1", "Notes of slide 1"),
        ("Title 2", "Notes of slide 2"),
    ]
    status, png = stack.request("GET", f"/v1/jobs/{job['job_id']}/slides/2")
    assert status == 200 and png[:4] == b"\x89PNG"

    for data, message in [
        (encrypted_pdf(), "the PDF is encrypted"),
        (pdf_of_pages(10_000), "the document has 10000 pages"),
    ]:
        hostile = upload(stack, data, "hostile.pdf")
        job = submit(stack, {"source": {"asset": hostile}, "options": options})
        assert job["status"] == "failed" and message in job["error"], job
        assert job["attempts"] == 1 and job["created_files"] == []
        assert worker.alive()

    job = submit(stack, {"source": {"asset": pdf}, "options": options})
    assert job["status"] == "completed", job
    assert worker.alive() and job["worker"].startswith("docs@")
