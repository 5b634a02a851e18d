"""The dashboard's pages as the server sends them, with keys required, on both
backends: what a signed-out visitor loads, the icon, readable times, the
tenant column, the stage of a job cancelled in the queue, links to the
produced files and labelled outputs. (The browser test drives the same pages
with their script in Chromium.)"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient

from core.config import Settings
from storage import JobStore
from storage.access import AccessStore
from tests.support.clients import Tenant, fetch, locked
from tests.support.jobs import finish_with_files

#: The ISO form the API gives every timestamp.
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class Element:
    """One element of a page: its tag, attributes and whole text."""

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs, self.text = tag, attrs, ""


class Page(HTMLParser):
    """Every element of an HTML page, in document order."""

    VOID = frozenset({"meta", "link", "img", "input", "br", "hr", "source"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def all(self, tag: str, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.tag == tag and all(e.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str, **attrs: str) -> Element:
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


def page(client: FlaskClient, path: str) -> Page:
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html", path
    return Page(response.get_data(as_text=True))


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return locked(settings)


def signed_in(app: Any, tenant: str, admin: bool = False) -> FlaskClient:
    """A browser-like client holding a dashboard session of a new key."""
    token = AccessStore(app.extensions["slidefarm"].store).create_key(tenant, admin=admin).token
    browser: FlaskClient = app.test_client()
    assert browser.post("/login", data={"key": token}).status_code == 303
    return browser


def test_signed_out_pages_load_only_public_assets_and_offer_no_navigation(app: Any) -> None:
    visitor = app.test_client()
    for path in ("/login", "/login?next=/workers"):
        login = page(visitor, path)
        assets = [e.attrs["src"] for e in login.all("script") if "src" in e.attrs] + [
            e.attrs["href"] for e in login.all("link")
        ]
        assert assets == ["/favicon.svg"], assets
        for url in assets:
            assert fetch(visitor, url).status_code == 200, url
        assert not login.all("nav") and not login.all("a"), "signed out, no page can open"
    challenge = visitor.get("/workers")  # a script or a test client: the form, in a 401
    assert challenge.status_code == 401 and "<nav" not in challenge.get_data(as_text=True)
    assert "dashboard.js" not in challenge.get_data(as_text=True)


def test_a_browser_opening_a_page_signed_out_is_sent_to_the_sign_in_page(app: Any) -> None:
    visitor = app.test_client()
    moved = visitor.get("/jobs/x?tab=files", headers={"Sec-Fetch-Mode": "navigate"})
    assert moved.status_code == 303 and moved.headers["Cache-Control"] == "no-store"
    location = urlsplit(moved.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"next": ["/jobs/x?tab=files"]}
    form = page(visitor, moved.headers["Location"])
    assert form.one("input", name="next").attrs["value"] == "/jobs/x?tab=files"
    # Not a navigation (a script, the event stream): still a 401.
    assert visitor.get("/", headers={"Sec-Fetch-Mode": "cors"}).status_code == 401


def test_the_script_is_public_and_holds_no_data(app: Any) -> None:
    script = fetch(app.test_client(), "/static/dashboard.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"


def test_every_page_links_a_public_cacheable_icon(app: Any) -> None:
    admin = signed_in(app, "ops", admin=True)
    for path in ("/login", "/", "/workers", "/overview"):
        assert page(admin, path).one("link", rel="icon").attrs["href"] == "/favicon.svg", path
    visitor = app.test_client()
    icon = fetch(visitor, "/favicon.svg")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert icon.data.startswith(b"<svg") and len(icon.data) < 2048
    assert icon.cache_control.public and icon.cache_control.max_age == 86400
    legacy = visitor.get("/favicon.ico")  # what browsers ask for on pages naming none
    assert legacy.status_code == 301 and legacy.headers["Location"] == "/favicon.svg"


def time_text_matches(element: Element) -> None:
    """A ``<time>`` with the ISO value in ``datetime`` and ``title`` and, as text,
    the same moment readably in UTC (the script turns it into local time)."""
    value = element.attrs["datetime"]
    assert ISO.match(value) and element.attrs["title"] == value, element.attrs
    shown = datetime.strptime(element.text, "%d %b %Y, %H:%M:%S UTC").replace(tzinfo=UTC)
    assert shown == datetime.fromisoformat(value).replace(microsecond=0), element.text


def test_timestamps_are_time_elements_with_readable_text(app: Any) -> None:
    store: JobStore = app.extensions["slidefarm"].store
    job_id = Tenant(app, "alice").submit()["job_id"]
    store.claim(job_id, "w@host")
    store.fail(job_id, 1, "a deck that cannot be drawn")
    admin = signed_in(app, "ops", admin=True)
    (failed_at,) = page(admin, "/overview").all("time")
    time_text_matches(failed_at)
    assert failed_at.attrs["datetime"] == store.get(job_id).completed_at.isoformat().replace(
        "+00:00", "Z"
    )
    (created,) = page(admin, "/").all("time")
    time_text_matches(created)
    assert created.attrs["data-relative"] == "1"  # the script shows "2 min ago"


def test_overview_shows_each_tenants_queue(app: Any) -> None:
    store: JobStore = app.extensions["slidefarm"].store
    alice = Tenant(app, "alice")
    first = alice.submit()["job_id"]
    alice.submit()
    store.claim(first, "w@host")
    admin = signed_in(app, "ops", admin=True)
    overview = page(admin, "/overview")
    (row,) = [tr for tr in overview.all("tr") if tr.attrs.get("data-tenant") == "alice"]
    # tenant, queued, by priority, running, max running, scheduled, oldest eligible, weight
    shown = cells(overview, row)
    assert shown[:2] == ["alice", "1"] and shown[2] == "0: 1"
    assert shown[3:6] == ["1", "–", "0"] and shown[6].endswith(" s") and shown[7] == "1.0"


def cells(page_: Page, row: Element) -> list[str]:
    """The text of each cell of ``row``."""
    found: list[str] = []
    for element in page_.elements[page_.elements.index(row) + 1 :]:
        if element.tag == "tr":
            break
        if element.tag == "td":
            found.append(element.text.strip())
    return found


def job_rows(page_: Page) -> list[list[str]]:
    return [cells(page_, tr) for tr in page_.all("tr") if "data-job-id" in tr.attrs]


NAVIGATION = ("/", "/workers", "/overview")


def test_the_tenant_column_and_the_admin_pages_are_an_admins(app: Any) -> None:
    Tenant(app, "alice").submit()
    Tenant(app, "bob").submit()
    admin = page(signed_in(app, "ops", admin=True), "/")
    headers = [th.text for th in admin.all("th")]
    column = headers.index("tenant")
    assert sorted(row[column] for row in job_rows(admin)) == ["alice", "bob"]
    assert all(len(row) == len(headers) for row in job_rows(admin))
    assert [a.text for a in admin.all("a") if a.attrs["href"] in NAVIGATION] == [
        "Jobs",
        "Workers",
        "Overview",
    ]
    alice = signed_in(app, "alice")
    mine = page(alice, "/")
    headers = [th.text for th in mine.all("th")]
    assert "tenant" not in headers
    assert [len(row) for row in job_rows(mine)] == [len(headers)]
    # A tenant's navigation offers only what its key may open.
    assert [a.text for a in mine.all("a") if a.attrs["href"] in NAVIGATION] == ["Jobs"]
    assert alice.get("/workers").status_code == 403


def test_a_job_cancelled_in_the_queue_shows_it_was_cancelled(app: Any) -> None:
    alice = Tenant(app, "alice")
    job_id = alice.submit()["job_id"]
    assert alice.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    browser = signed_in(app, "alice")
    (row,) = job_rows(page(browser, "/"))
    stage = [th.text for th in page(browser, "/").all("th")].index("stage")
    assert row[stage] == "cancelled while queued"
    assert page(browser, f"/jobs/{job_id}").one("div", id="stage").text == "cancelled while queued"


def test_a_scheduled_job_is_filtered_badged_and_shown_waiting(app: Any) -> None:
    alice = Tenant(app, "alice")
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    job_id = alice.submit(run_at=later)["job_id"]
    alice.submit()
    browser = signed_in(app, "alice")
    listed = page(browser, "/?status=scheduled")
    assert "scheduled" in [o.attrs["value"] for o in listed.all("option")]
    assert listed.one("option", value="scheduled").attrs.get("selected") is not None
    (row,) = job_rows(listed)
    headers = [th.text for th in listed.all("th")]
    assert row[headers.index("status")] == "scheduled"
    assert row[headers.index("stage")] == "waiting for its start time"
    assert listed.one("span", class_="badge scheduled").text == "scheduled"
    shown = page(browser, f"/jobs/{job_id}")
    assert shown.one("div", id="stage").text == "waiting for its start time"
    # Cancelled before its time: it never reached the queue, and says so.
    assert alice.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    cancelled = page(browser, f"/jobs/{job_id}").one("div", id="stage").text
    assert cancelled == "cancelled while scheduled"


OUTPUTS = re.compile(r"slidefarm\.jobPage\((.*)\);</script>", re.S)


def test_produced_files_link_to_routes_the_session_may_read(app: Any, settings: Settings) -> None:
    alice = Tenant(app, "alice")
    job_id = alice.submit()["job_id"]
    finish_with_files(settings, job_id, b"\0" * 2048)
    store: JobStore = app.extensions["slidefarm"].store
    browser = signed_in(app, "alice")
    html = browser.get(f"/jobs/{job_id}").get_data(as_text=True)
    match = OUTPUTS.search(html)
    assert match is not None
    arguments = json.loads(f"[{match.group(1)}]")
    assert arguments[:3] == [job_id, settings.stale_after, False]
    links: dict[str, str] = arguments[3]
    assert links == {
        "video.mp4": f"/v1/jobs/{job_id}/video",
        "thumbnail.jpg": f"/v1/jobs/{job_id}/thumbnail",
        "slides/001.png": f"/v1/jobs/{job_id}/slides/1",
    }
    on_disk = {"video.mp4", "thumbnail.jpg", "slides/001.png"}
    for path in on_disk:
        served = fetch(browser, links[path])
        assert served.status_code == 200, (path, served.status_code)
        assert served.data == (settings.output_dir / job_id / path).read_bytes()
    # Another tenant's session reads none of them.
    assert fetch(signed_in(app, "bob"), links["video.mp4"]).status_code == 404
    assert store.get(job_id).status.value == "completed"


def test_the_thumbnail_and_the_video_are_labelled(app: Any) -> None:
    job_id = Tenant(app, "alice").submit(title="Quarterly <review>")["job_id"]
    job = page(signed_in(app, "alice"), f"/jobs/{job_id}")
    thumbnail = job.one("figure", id="thumbnail-figure")
    video = job.one("figure", id="video-figure")
    assert "Thumbnail" in thumbnail.text and "Video" in video.text
    figures = job.all("figcaption")
    assert [f.text.split()[0] for f in figures] == ["Thumbnail", "Video"]
    assert (
        job.one("img", id="thumbnail").attrs["alt"]
        == "Thumbnail of “Quarterly <review>”: its first slide"
    )
    assert job.one("video", id="video").attrs["aria-label"] == "Video of “Quarterly <review>”"


def test_the_job_page_shows_the_assets_it_uses_with_thumbnails(app: Any) -> None:
    from PIL import Image

    from tests.support.assets import image_bytes, pdf_bytes

    alice = Tenant(app, "alice")
    photo = alice.client.post("/v1/assets", data=image_bytes("JPEG", (900, 600))).get_json()
    document = alice.client.post("/v1/assets", data=pdf_bytes()).get_json()
    assert photo["thumbnail_url"] == f"/v1/assets/{photo['id']}/thumbnail"
    assert document["thumbnail_url"] is None
    written = alice.submit(
        title="With a photo", slides=[{"title": "Look", "image": photo["id"], "layout": "full"}]
    )["job_id"]
    from_pdf = alice.client.post("/v1/jobs", json={"source": {"asset": document["id"]}})
    assert from_pdf.status_code == 202, from_pdf.get_data(as_text=True)
    browser = signed_in(app, "alice")

    shown = page(browser, f"/jobs/{written}")
    figure = shown.one("figure", class_="asset")
    assert figure.attrs["data-asset-id"] == photo["id"] and "JPEG · 900×600" in figure.text
    image = shown.one("img", src=photo["thumbnail_url"])
    served = fetch(browser, image.attrs["src"])
    assert served.status_code == 200 and served.mimetype == "image/png"
    import io

    with Image.open(io.BytesIO(served.data)) as thumb:
        assert thumb.size == (320, 213)
    # Kept, and served again the same; another tenant's session reads nothing.
    assert fetch(browser, image.attrs["src"]).data == served.data
    assert fetch(signed_in(app, "bob"), image.attrs["src"]).status_code == 404

    shown = page(browser, f"/jobs/{from_pdf.get_json()['job_id']}")
    card = shown.one("a", class_="document")
    assert card.attrs["href"] == document["content_url"] and card.text.strip() == "PDF"
    assert fetch(browser, f"/v1/assets/{document['id']}/thumbnail").status_code == 404
    # ?include=assets gives the same list over the API.
    job = alice.client.get(f"/v1/jobs/{written}?include=assets").get_json()
    assert [a["id"] for a in job["assets"]] == [photo["id"]]
