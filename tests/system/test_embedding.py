"""Outputs embedded in another site, in a real headless Chromium: a page served
from another origin (another port) plays a rendered video through a signed
link (no key: a ``<video>`` cannot send one) and seeks in it (range requests),
and calls the API with ``fetch()`` and a key, which CORS allows for the origin
in SLIDEFARM_CORS_ORIGINS and blocks for any other."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.decks import small_deck
from tests.support.stack import Stack, free_port

pytestmark = pytest.mark.e2e

PAGE = """<!doctype html>
<html><body>
<video id="video" src="{video}" muted preload="auto" playsinline></video>
<script>
window.apiResult = null;
fetch("{api}/v1/jobs/{job_id}", {{headers: {{"Authorization": "Bearer {token}"}}}})
  .then(r => r.json().then(body => {{
    window.apiResult = {{ok: r.ok, status: body.status, etag: r.headers.get("ETag")}};
  }}))
  .catch(error => {{ window.apiResult = {{error: String(error)}}; }});
</script>
</body></html>
"""


@contextmanager
def site(html: str, port: int) -> Iterator[str]:
    """A one-page web site on ``port`` of loopback; yields its origin."""
    body = html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_another_site_embeds_the_video_and_calls_the_api(
    pg_redis_stack: Stack, browser: Any
) -> None:
    stack = pg_redis_stack
    allowed_port = free_port()
    allowed = f"http://127.0.0.1:{allowed_port}"
    stack.env["SLIDEFARM_CORS_ORIGINS"] = allowed
    stack.env["SLIDEFARM_SECRET_KEY"] = "embedding-test-" + "k" * 32
    stack.start_api()
    stack.start_worker("render@host1", concurrency=1)
    status, job = stack.request("POST", "/v1/jobs", small_deck(slides=2, duration=1.5))
    assert status == 202, job
    assert stack.wait_final(job["job_id"])["status"] == "completed"
    status, signed = stack.request("GET", f"/v1/jobs/{job['job_id']}?signed=1")
    assert status == 200 and signed["video_url"].startswith(stack.base), signed
    assert stack.token is not None and stack.token.split("_")[2] not in signed["video_url"]

    html = PAGE.format(
        video=signed["video_url"], api=stack.base, job_id=job["job_id"], token=stack.token
    )
    # The allowed origin: the preflight (Authorization is not a simple header)
    # and the answer carry its CORS headers, so the page reads the job.
    with site(html, allowed_port) as origin:
        assert origin == allowed
        page = browser.new_page()
        video_answers: list[int] = []
        page.on(
            "response",
            lambda response: (
                video_answers.append(response.status)
                if response.url == signed["video_url"]
                else None
            ),
        )
        page.goto(origin + "/")
        page.wait_for_function("window.apiResult !== null", timeout=30_000)
        result = page.evaluate("window.apiResult")
        assert result["ok"] and result["status"] == "completed", result
        assert result["etag"] and result["etag"].startswith('W/"'), result  # exposed
        page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
        duration = page.evaluate("document.getElementById('video').duration")
        assert abs(duration - 3.0) < 0.5, duration
        # Seeking asks for a range of the signed link.
        page.evaluate("""() => new Promise(resolve => {
            const video = document.getElementById('video');
            video.addEventListener('seeked', resolve, {once: true});
            video.currentTime = 2.0;
        })""")
        assert page.evaluate("document.getElementById('video').readyState") >= 1
        assert video_answers and set(video_answers) <= {200, 206}, video_answers
        assert 206 in video_answers, video_answers  # Chromium reads media by ranges
        page.close()

    # Any other origin: the same page's fetch is blocked by the browser.
    with site(html, free_port()) as other:
        page = browser.new_page()
        page.goto(other + "/")
        page.wait_for_function("window.apiResult !== null", timeout=30_000)
        result = page.evaluate("window.apiResult")
        assert "error" in result and "Failed to fetch" in result["error"], result
        # The video itself needs no CORS: the signed link plays anywhere.
        page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
        page.close()
