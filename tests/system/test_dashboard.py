"""The dashboard in a real headless Chromium (Debian's, driven by Playwright):
a job moves to another worker when its worker is killed, the dead worker goes
stale on the page, and the finished job's video loads, all without a reload.
On the way, every page is checked as a user sees it: no console error, times
in the browser's own zone, produced files that open, labelled outputs, the
tenant column for an admin only, and a job cancelled in the queue that says so.

``SLIDEFARM_TEST_SCREENSHOTS=docs/screenshots`` (``make screenshots``) keeps
the screenshots there; otherwise they go to the test's own folder."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from storage import JobStore
from storage.access import AccessStore
from tests.support.clients import bearer
from tests.support.decks import slow_deck, small_deck
from tests.support.stack import Stack, kill

pytestmark = pytest.mark.e2e

#: A zone away from UTC (and off the hour), so a time left in UTC shows.
ZONE = "Asia/Kolkata"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
LOCAL = re.compile(r"^(\d{1,2}) (\w+) (\d{4}), (\d\d):(\d\d):(\d\d)$")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SLIDEFARM_TEST_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Problems:
    """Everything a browser context reports as wrong: console errors,
    uncaught exceptions, and answers of 400 or more to a page or to anything
    it loads (a console error in every browser)."""

    def __init__(self, context: Any) -> None:
        self.found: list[str] = []
        context.on(
            "console",
            lambda message: (
                message.type == "error"
                and self.found.append(
                    f"console error: {message.text} at {message.location.get('url')}"
                )
            ),
        )
        context.on("weberror", lambda error: self.found.append(f"uncaught: {error.error}"))
        context.on(
            "response",
            lambda response: (
                response.status >= 400
                and self.found.append(f"{response.status} {response.request.method} {response.url}")
            ),
        )


def new_context(browser: Any) -> tuple[Any, Problems]:
    """A browser context in British English in India's time zone."""
    context = browser.new_context(
        viewport={"width": 1300, "height": 900}, locale="en-GB", timezone_id=ZONE
    )
    return context, Problems(context)


def sign_in(
    page: Any, stack: Stack, then: str, token: str | None = None, screenshot: Path | None = None
) -> None:
    """The dashboard's sign-in: a browser opening a page signed out lands on
    the sign-in page, which loads no script and offers no navigation; the
    key goes in the form's body and a session cookie comes back."""
    token = token or stack.token
    assert token is not None
    loaded: list[str] = []
    page.on("request", lambda request: loaded.append(request.url))
    response = page.goto(stack.base + then)
    assert response is not None and response.status == 200
    assert page.url.startswith(stack.base + "/login?next="), page.url
    assert not [url for url in loaded if "/static/" in url], loaded
    assert page.locator("nav, header a").count() == 0
    icon = page.evaluate(
        "fetch(document.querySelector('link[rel=icon]').href)"
        ".then(r => [r.status, r.headers.get('content-type').split(';')[0]])"
    )
    assert icon == [200, "image/svg+xml"]
    if screenshot is not None:
        page.screenshot(path=str(screenshot))
    page.fill('input[name="key"]', token)
    with page.expect_navigation():
        page.click('button[type="submit"]')
    assert page.url == stack.base + then, page.url
    assert token not in page.url


def local_parts(iso: str) -> tuple[int, str, int, int, int, int]:
    moment = datetime.fromisoformat(iso).astimezone(ZoneInfo(ZONE))
    return (
        moment.day,
        moment.strftime("%b"),
        moment.year,
        moment.hour,
        moment.minute,
        moment.second,
    )


def check_times(page: Any, selector: str) -> int:
    """Every ``<time>`` under ``selector`` holds an ISO ``datetime``, shows it
    on hover and reads as local time ("29 Nov 2026, 19:33:12") or, marked
    relative, as an age ("2 min ago") with the local time on hover."""
    times = page.eval_on_selector_all(
        f"{selector} time",
        "els => els.map(e => [e.getAttribute('datetime'), e.title,"
        " e.textContent, e.dataset.relative || ''])",
    )
    for iso, title, text, relative in times:
        assert ISO.match(iso), iso
        local = text
        if relative:
            assert re.match(r"^\d+(\.\d)? (s|min|h|d)( \d+ (s|min))? ago$", text), text
            assert title.endswith(f" ({iso})"), title
            local = title.removesuffix(f" ({iso})")
        else:
            assert title == iso
        parts = LOCAL.match(local)
        assert parts is not None, local
        day, month, year, hour, minute, second = local_parts(iso)
        assert (int(parts[1]), int(parts[3]), int(parts[4]), int(parts[5]), int(parts[6])) == (
            day,
            year,
            hour,
            minute,
            second,
        ), (local, iso)
        assert parts[2].startswith(month), (local, iso)
    return len(times)


def headers(page: Any, table: str) -> list[str]:
    found: list[str] = page.eval_on_selector_all(
        f"{table} th", "els => els.map(e => e.textContent)"
    )
    return found


def cell(page: Any, row: str, table: str, column: str) -> str:
    """The text of ``column`` in ``row`` (a selector) of ``table``."""
    index = headers(page, table).index(column) + 1
    text: str = page.inner_text(f"{row} > td:nth-child({index})")
    return text


def test_dashboard_follows_a_job_across_a_worker_death(
    fault_stack: Stack, browser: Any, shots: Path
) -> None:
    stack = fault_stack
    stack.start_api()
    workers = {name: stack.start_worker(name, concurrency=1) for name in ("a@host1", "b@host2")}
    context, problems = new_context(browser)
    jobs_page = context.new_page()
    workers_page = context.new_page()
    sign_in(jobs_page, stack, "/", screenshot=shots / "login.png")
    workers_page.goto(stack.base + "/workers")  # the session cookie is the context's
    for name in workers:
        workers_page.wait_for_selector(
            f'tr[data-worker="{name}"][data-state="alive"]', timeout=30_000
        )

    _, job = stack.request("POST", "/v1/jobs", slow_deck(slides=4, seconds=4))
    row = f'#jobs tr[data-job-id="{job["job_id"]}"]'
    jobs_page.wait_for_selector(f'{row}[data-status="processing"]', timeout=30_000)
    running = stack.wait_for(
        job["job_id"], lambda j: j["status"] == "processing" and j["progress"] > 0
    )
    victim = running["worker"]
    survivor = next(name for name in workers if name != victim)
    # Another tenant's job, for the admin's tenant column.
    acme = AccessStore(JobStore.from_url(stack.env["DATABASE_URL"])).create_key("acme").token
    _, other = stack.request(
        "POST", "/v1/jobs", {**small_deck(slides=2), "title": "Acme pitch"}, headers=bearer(acme)
    )
    kill(workers[victim])

    workers_page.wait_for_selector(
        f'tr[data-worker="{victim}"][data-state="stale"]', timeout=30_000
    )
    assert check_times(workers_page, "#workers") == 2
    workers_page.screenshot(path=str(shots / "workers.png"))
    jobs_page.wait_for_selector(f'{row}[data-status="completed"]', timeout=120_000)
    other_row = f'#jobs tr[data-job-id="{other["job_id"]}"]'
    jobs_page.wait_for_selector(f'{other_row}[data-status="completed"]', timeout=60_000)
    assert survivor in jobs_page.inner_text(row)
    assert cell(jobs_page, row, "#jobs", "tenant") == "default"
    assert cell(jobs_page, other_row, "#jobs", "tenant") == "acme"
    assert cell(jobs_page, row, "#jobs", "stage") == "done"
    assert check_times(jobs_page, "#jobs") == 2
    jobs_page.screenshot(path=str(shots / "jobs.png"))

    job_page = context.new_page()
    job_page.goto(stack.base + f"/jobs/{job['job_id']}")
    job_page.wait_for_function("document.getElementById('video').readyState >= 1", timeout=30_000)
    duration = job_page.evaluate("document.getElementById('video').duration")
    assert abs(duration - 16) < 0.5
    history = job_page.inner_text("#history")
    assert f"worker lost: {victim} stopped heartbeating" in history
    assert job_page.inner_text("#status") == "completed"
    # created, started, completed, last heartbeat, and five transitions.
    assert check_times(job_page, "#fields") == 4 and check_times(job_page, "#history") == 5
    # Each produced file is a link that opens with the session.
    links = job_page.eval_on_selector_all(
        "#files tbody tr",
        "rows => rows.map(r => [r.cells[0].textContent,"
        " r.querySelector('a') && r.querySelector('a').href])",
    )
    assert sorted(path for path, _ in links) == [
        "slides/001.png",
        "slides/002.png",
        "slides/003.png",
        "slides/004.png",
        "thumbnail.jpg",
        "video.mp4",
    ]
    for path, href in links:
        assert href is not None, path
        answer = job_page.request.get(href)
        assert answer.status == 200, (path, href, answer.status)
        kind = {"video.mp4": "video/mp4", "thumbnail.jpg": "image/jpeg"}.get(path, "image/png")
        assert answer.headers["content-type"] == kind, path
    # The outputs are labelled, visibly and for a screen reader.
    assert job_page.is_visible("#thumbnail-figure figcaption")
    assert job_page.is_visible("#video-figure figcaption")
    assert job_page.inner_text("#thumbnail-figure figcaption").startswith("Thumbnail")
    assert job_page.inner_text("#video-figure figcaption").startswith("Video")
    assert (
        job_page.get_attribute("#thumbnail", "alt")
        == "Thumbnail of “A small deck”: its first slide"
    )
    assert job_page.get_attribute("#video", "aria-label") == "Video of “A small deck”"
    assert job_page.is_hidden("#output-pending")
    # The contact sheet: every slide, in order, each image loaded (lazily:
    # scrolled to, as a reader would).
    job_page.locator("#slides").scroll_into_view_if_needed()
    job_page.wait_for_function(
        "[...document.querySelectorAll('#slides img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length === 4"
    )
    sheet = job_page.eval_on_selector_all(
        "#slides img", "imgs => imgs.map(i => [i.alt, new URL(i.src).pathname])"
    )
    assert sheet == [[f"Slide {n}", f"/v1/jobs/{job['job_id']}/slides/{n}"] for n in range(1, 5)]
    job_page.screenshot(path=str(shots / "job.png"), full_page=True)

    overview = context.new_page()
    overview.goto(stack.base + "/overview")
    overview.wait_for_function(
        "document.querySelector('[data-status=\"completed\"]').textContent === '2'", timeout=10_000
    )
    # The per-tenant queue is redrawn by the script from /v1/stats: all done, nothing waits.
    overview.wait_for_function(
        "document.querySelector('#tenants tbody').textContent === 'nothing waits or runs'"
    )
    overview.screenshot(path=str(shots / "overview.png"))
    print(f"\nscreenshots in {shots}")
    context.close()
    assert problems.found == []


def test_job_page_shows_progress_live_and_cancels(fault_stack: Stack, browser: Any) -> None:
    stack = fault_stack
    stack.start_api()
    stack.start_worker("a@host1", concurrency=1)
    _, job = stack.request("POST", "/v1/jobs", slow_deck(slides=8, seconds=5))
    context, problems = new_context(browser)
    page = context.new_page()
    sign_in(page, stack, f"/jobs/{job['job_id']}")
    page.wait_for_function(
        "parseFloat(document.getElementById('progress').textContent) > 0", timeout=60_000
    )
    assert page.inner_text("#stage") in ("rendering slides", "encoding video")
    assert page.is_visible("#output-pending") and page.is_hidden("#video-figure")
    # Files are listed as they are drawn, but open only once the job completes.
    page.wait_for_selector("#files tbody tr", timeout=30_000)
    assert page.locator("#files a").count() == 0
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    page.wait_for_function(
        "document.getElementById('status').textContent === 'cancelled'", timeout=30_000
    )
    # The history table reloads when the stream's final event arrives.
    page.wait_for_function(
        "document.getElementById('history').innerText.includes('cancelled by request')",
        timeout=30_000,
    )
    assert page.is_disabled("#cancel") and page.is_enabled("#retry")
    assert page.inner_text("#stage").startswith("cancelled while ")
    context.close()
    assert problems.found == []


def test_a_tenant_cancels_a_queued_job_and_sees_only_its_own(
    fault_stack: Stack, browser: Any
) -> None:
    stack = fault_stack
    stack.start_api()  # no worker: the job stays queued
    token = AccessStore(JobStore.from_url(stack.env["DATABASE_URL"])).create_key("acme").token
    _, job = stack.request("POST", "/v1/jobs", small_deck(slides=1), headers=bearer(token))
    stack.request("POST", "/v1/jobs", small_deck(slides=1))  # the default tenant's
    context, problems = new_context(browser)
    page = context.new_page()
    sign_in(page, stack, "/", token=token)
    row = f'#jobs tr[data-job-id="{job["job_id"]}"]'
    page.wait_for_selector(f'{row}[data-status="queued"]', timeout=10_000)
    assert page.locator("#jobs tr[data-job-id]").count() == 1
    assert "tenant" not in headers(page, "#jobs")
    assert page.inner_text("nav").split() == ["Jobs", "Batches"]  # no admin pages to open
    assert cell(page, row, "#jobs", "stage") == "queued"

    page.click(f"{row} a")
    page.wait_for_selector("#cancel:enabled")
    page.click("#cancel")
    page.wait_for_function(
        "document.getElementById('status').textContent === 'cancelled'", timeout=10_000
    )
    page.wait_for_function(
        "document.getElementById('history').innerText"
        ".includes('cancelled by request while queued')",
        timeout=10_000,
    )
    assert page.inner_text("#stage") == "cancelled while queued"
    assert "tenant" not in page.inner_text("#fields")
    assert check_times(page, "#fields") == 2 and check_times(page, "#history") == 2

    page.go_back()
    page.wait_for_selector(f'{row}[data-status="cancelled"]', timeout=10_000)
    assert cell(page, row, "#jobs", "stage") == "cancelled while queued"
    context.close()
    assert problems.found == []


def test_a_tenant_follows_and_cancels_a_batch(fault_stack: Stack, browser: Any) -> None:
    stack = fault_stack
    stack.start_api()  # no worker: the batch's jobs stay queued
    token = AccessStore(JobStore.from_url(stack.env["DATABASE_URL"])).create_key("acme").token
    decks = [{**small_deck(slides=1), "title": f"deck {n}"} for n in range(3)]
    _, batch = stack.request("POST", "/v1/batches", {"jobs": decks}, headers=bearer(token))
    batch_id = batch["batch_id"]
    context, problems = new_context(browser)
    page = context.new_page()
    sign_in(page, stack, "/batches", token=token)
    assert page.inner_text("nav").split() == ["Jobs", "Batches"]
    assert check_times(page, "#batches") == 1
    page.click(f'#batches tr[data-batch-id="{batch_id}"] a')
    page.wait_for_selector("#jobs tr[data-job-id]")
    assert page.locator("#jobs tr[data-job-id]").count() == 3
    assert page.inner_text('[data-status="queued"]') == "3"
    page.click("#cancel")
    page.wait_for_function(
        "document.getElementById('action-result').textContent.includes('3 cancelled')",
        timeout=10_000,
    )
    # The page is drawn again: every job cancelled, the batch finished.
    page.wait_for_function(
        "document.querySelector('[data-status=\"cancelled\"]').textContent === '3'",
        timeout=10_000,
    )
    assert page.inner_text("#finished") != "not yet"
    page.click(f'#jobs tr[data-job-id="{batch["job_ids"][0]}"] a')
    page.wait_for_selector("#batch a")
    assert page.get_attribute("#batch a", "href") == f"/batches/{batch_id}"
    context.close()
    assert problems.found == []
