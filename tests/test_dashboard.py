"""The dashboard in a real headless Chromium (Debian's, driven by Playwright):
a job moves to another worker when its worker is killed, the dead worker goes
stale on the page, and the finished job's video loads, all without a reload."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_SERVICES, Stack
from tests.test_faults import kill, slow_deck

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("SLIDEFARM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        message = f"Chromium not installed at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives every launch a fresh, empty profile of its own.
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            instance.close()


def sign_in(page: Any, stack: Stack, then: str) -> None:
    """The dashboard's sign-in: unauthenticated, a page answers 401 with the
    form; the key goes in the form's body and a session cookie comes back."""
    response = page.goto(stack.base + then)
    assert response is not None and response.status == 401
    assert stack.token is not None
    page.fill('input[name="key"]', stack.token)
    with page.expect_navigation():
        page.click('button[type="submit"]')
    assert page.url == stack.base + then, page.url
    assert stack.token not in page.url


def test_dashboard_follows_a_job_across_a_worker_death(fault_stack: Stack, browser: Any,
                                                       tmp_path: Path) -> None:
    stack = fault_stack
    stack.start_api()
    workers = {name: stack.start_worker(name, concurrency=1) for name in ("a@host1", "b@host2")}
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    jobs_page = context.new_page()
    workers_page = context.new_page()
    sign_in(jobs_page, stack, "/")
    workers_page.goto(stack.base + "/workers")  # the session cookie is the context's
    for name in workers:
        workers_page.wait_for_selector(f'tr[data-worker="{name}"][data-state="alive"]',
                                       timeout=30_000)

    _, job = stack.request("POST", "/v1/jobs", slow_deck(slides=4, seconds=4))
    row = f'#jobs tr[data-job-id="{job["job_id"]}"]'
    jobs_page.wait_for_selector(f'{row}[data-status="processing"]', timeout=30_000)
    running = stack.wait_for(job["job_id"], lambda j: j["status"] == "processing"
                             and j["progress"] > 0)
    victim = running["worker"]
    survivor = next(name for name in workers if name != victim)
    kill(workers[victim])

    workers_page.wait_for_selector(f'tr[data-worker="{victim}"][data-state="stale"]',
                                   timeout=30_000)
    workers_page.screenshot(path=str(tmp_path / "workers.png"))
    jobs_page.wait_for_selector(f'{row}[data-status="completed"]', timeout=120_000)
    assert survivor in jobs_page.inner_text(row)
    jobs_page.screenshot(path=str(tmp_path / "jobs.png"))

    job_page = context.new_page()
    job_page.goto(stack.base + f"/jobs/{job['job_id']}")
    job_page.wait_for_function("document.getElementById('video').readyState >= 1",
                               timeout=30_000)
    duration = job_page.evaluate("document.getElementById('video').duration")
    assert abs(duration - 16) < 0.5
    history = job_page.inner_text("#history")
    assert f"worker lost: {victim} stopped heartbeating" in history
    assert job_page.inner_text("#status") == "completed"
    job_page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
    print(f"\nscreenshots in {tmp_path}")
    context.close()


def test_job_page_shows_progress_live_and_cancels(fault_stack: Stack, browser: Any) -> None:
    stack = fault_stack
    stack.start_api()
    stack.start_worker("a@host1", concurrency=1)
    _, job = stack.request("POST", "/v1/jobs", slow_deck(slides=8, seconds=5))
    page = browser.new_page()
    sign_in(page, stack, f"/jobs/{job['job_id']}")
    page.wait_for_function(
        "parseFloat(document.getElementById('progress').textContent) > 0", timeout=60_000)
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    page.wait_for_function("document.getElementById('status').textContent === 'cancelled'",
                           timeout=30_000)
    # The history table reloads when the stream's final event arrives.
    page.wait_for_function(
        "document.getElementById('history').innerText.includes('cancelled by request')",
        timeout=30_000)
    assert page.is_disabled("#cancel") and page.is_enabled("#retry")
