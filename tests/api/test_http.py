"""HTTP for browsers, caches and proxies, in-process on both backends with
keys required: CORS, signed output links, gzip, the job's ETag, ranges,
download names and X-Forwarded-* from trusted proxies."""

from __future__ import annotations

import gzip
import io
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize, NoMoreData
from pydantic import SecretStr

from api import create_app
from core.config import Settings
from storage import Stage
from storage.access import AccessStore
from tests.support.clients import Tenant, assert_error, fetch, locked
from tests.support.decks import small_deck
from tests.support.stack import Proc, Stack, stack_env

ALLOWED = "https://app.example"
OTHER = "https://evil.example"
SECRET = "s" * 40
VIDEO = bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n"


def http_settings(settings: Settings, secret: str | None = SECRET, **update: Any) -> Settings:
    """``settings`` with keys required, two allowed origins and a signing secret."""
    values: dict[str, Any] = {
        "cors_origins": f"{ALLOWED}, http://localhost:3000",
        "secret_key": SecretStr(secret) if secret else None,
        **update,
    }
    return locked(settings, **values)


def http_app(settings: Settings, secret: str | None = SECRET, **update: Any) -> Any:
    """The app on :func:`http_settings`."""
    return create_app({"TESTING": True, "SETTINGS": http_settings(settings, secret, **update)})


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return http_settings(settings)


@pytest.fixture
def alice(app: Any) -> Tenant:
    return Tenant(app, "alice")


def completed(app: Any, tenant: Tenant, slides: int = 2, title: str = "A small deck") -> str:
    """A job of ``tenant``'s, completed with small files in place (no worker)."""
    job_id = tenant.submit(title=title, slides=small_deck(slides)["slides"])["job_id"]
    svc = app.extensions["slidefarm"]
    job = svc.store.claim(job_id, "w@h")
    folder = svc.settings.output_dir / job_id
    (folder / "slides").mkdir(parents=True)
    (folder / "video.mp4").write_bytes(VIDEO)
    (folder / "thumbnail.jpg").write_bytes(b"\xff\xd8jpeg")
    for n in range(1, slides + 1):
        (folder / "slides" / f"{n:03d}.png").write_bytes(PNG + bytes([n]))
    svc.store.complete(
        job_id,
        job.attempts,
        video_url=f"/v1/jobs/{job_id}/video",
        thumbnail_url=f"/v1/jobs/{job_id}/thumbnail",
        slide_image_path="slides",
    )
    return str(job_id)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# -- CORS ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/00000000-0000-4000-8000-000000000000"])
def test_a_preflight_from_an_allowed_origin_needs_no_key(app: Any, path: str) -> None:
    response = app.test_client().options(
        path,
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert response.status_code == 204, response.get_data(as_text=True)
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in response.headers["Vary"]
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "idempotency-key", "content-type"} <= allowed
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_disallowed_origin_gets_no_cors_headers(app: Any, alice: Tenant) -> None:
    preflight = app.test_client().options(
        "/v1/jobs", headers={"Origin": OTHER, "Access-Control-Request-Method": "GET"}
    )
    assert not [h for h in preflight.headers.keys() if h.startswith("Access-Control-")]
    answer = alice.client.get("/v1/jobs", headers={"Origin": OTHER})
    assert answer.status_code == 200
    assert not [h for h in answer.headers.keys() if h.startswith("Access-Control-")]
    assert "Origin" in answer.headers["Vary"]
    # An origin is matched exactly: scheme, host and port.
    for near in ("http://app.example", "https://app.example:8443", "https://app.example.evil"):
        near_answer = alice.client.get("/v1/jobs", headers={"Origin": near})
        assert "Access-Control-Allow-Origin" not in near_answer.headers, near


def test_an_allowed_origin_reads_answers_and_their_headers(app: Any, alice: Tenant) -> None:
    submitted = alice.client.post("/v1/jobs", json=small_deck(1), headers={"Origin": ALLOWED})
    assert submitted.status_code == 202
    assert submitted.headers["Access-Control-Allow-Origin"] == ALLOWED
    exposed = {h.strip() for h in submitted.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Location", "Retry-After", "RateLimit-Remaining"} <= exposed
    refused = app.test_client().get("/v1/jobs", headers={"Origin": "http://localhost:3000"})
    assert refused.status_code == 401  # a page may read why, too
    assert refused.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_cors_is_off_by_default(settings: Settings) -> None:
    app = create_app({"TESTING": True, "SETTINGS": locked(settings)})
    alice = Tenant(app, "alice")
    answer = alice.client.get("/v1/jobs", headers={"Origin": ALLOWED})
    assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer.headers
    preflight = app.test_client().options(
        "/v1/jobs", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status_code == 204
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_cors_origins_must_be_origins() -> None:
    for bad in ("*", "https://app.example/path", "app.example", "null", "ftp://app.example"):
        with pytest.raises(ValueError):
            Settings(SLIDEFARM_CORS_ORIGINS=bad)
    assert Settings(SLIDEFARM_CORS_ORIGINS="HTTPS://App.Example:443/").cors_origin_set == {ALLOWED}


# -- signed links ------------------------------------------------------------------


def test_signed_links_open_each_output_without_a_key(app: Any, alice: Tenant) -> None:
    job_id = completed(app, alice)
    answer = alice.client.get(f"/v1/jobs/{job_id}?signed=1")
    assert answer.headers["Cache-Control"] == "private, no-store"  # it holds working links
    job = answer.get_json()
    assert job["video_url"].startswith(f"http://localhost/v1/jobs/{job_id}/video?token=")
    assert len(job["slide_urls"]) == 2 and job["urls_expire_at"].endswith("Z")
    assert alice.token.split("_")[2] not in str(job)  # the key's secret is in no link
    browser = app.test_client()  # no key, no cookie
    video = fetch(browser, path_of(job["video_url"]))
    assert video.status_code == 200 and video.data == VIDEO and video.mimetype == "video/mp4"
    head = browser.head(path_of(job["video_url"]))
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(VIDEO))
    head.close()
    part = fetch(browser, path_of(job["video_url"]), headers={"Range": "bytes=1000-1099"})
    assert part.status_code == 206 and part.data == VIDEO[1000:1100]
    assert part.headers["Content-Range"] == f"bytes 1000-1099/{len(VIDEO)}"
    again = fetch(
        browser, path_of(job["video_url"]), headers={"If-None-Match": video.headers["ETag"]}
    )
    assert again.status_code == 304
    assert fetch(browser, path_of(job["thumbnail_url"])).data == b"\xff\xd8jpeg"
    for n, url in enumerate(job["slide_urls"], start=1):
        slide = fetch(browser, path_of(url))
        assert slide.status_code == 200 and slide.data == PNG + bytes([n])
    plain = alice.client.get(f"/v1/jobs/{job_id}").get_json()
    assert plain["video_url"] == f"/v1/jobs/{job_id}/video" and "slide_urls" not in plain


def test_a_narrated_jobs_subtitles_have_signed_links_too(app: Any, alice: Tenant) -> None:
    svc = app.extensions["slidefarm"]
    silent = alice.client.get(f"/v1/jobs/{completed(app, alice)}?signed=1").get_json()
    assert silent["subtitle_urls"] is None  # no narration, no subtitles
    job_id = alice.submit()["job_id"]
    job = svc.store.claim(job_id, "w@h")
    folder = svc.settings.output_dir / job_id
    folder.mkdir(parents=True)
    vtt, srt = (
        b"WEBVTT\n\n00:00.000 --> 00:01.000\nHello.\n",
        b"1\n00:00:00,000 --> 00:00:01,000\nHello.\n",
    )
    (folder / "subtitles.vtt").write_bytes(vtt)
    (folder / "subtitles.srt").write_bytes(srt)
    assert svc.store.add_files(
        job_id, job.attempts, [("subtitles.vtt", len(vtt)), ("subtitles.srt", len(srt))]
    )
    svc.store.complete(
        job_id, job.attempts, video_url="v", thumbnail_url="t", slide_image_path="slides"
    )
    links = alice.client.get(f"/v1/jobs/{job_id}?signed=1").get_json()["subtitle_urls"]
    browser = app.test_client()  # no key, no cookie
    got = fetch(browser, path_of(links["vtt"]))
    assert got.status_code == 200 and got.data == vtt and got.mimetype == "text/vtt"
    assert fetch(browser, path_of(links["srt"])).data == srt
    # A token opens only its own file.
    token = parse_qs(urlsplit(links["vtt"]).query)["token"][0]
    assert fetch(browser, f"/v1/jobs/{job_id}/subtitles.srt?token={token}").status_code == 403


def test_a_job_not_yet_completed_has_no_signed_links(app: Any, alice: Tenant) -> None:
    job_id = alice.submit()["job_id"]
    job = alice.client.get(f"/v1/jobs/{job_id}?signed=1").get_json()
    assert job["video_url"] is None and job["slide_urls"] is None
    assert_error(alice.client.get(f"/v1/jobs/{job_id}?signed=yes"), 400, "invalid_parameter")


def test_a_wrong_expired_or_other_files_token_is_403_alike(app: Any, alice: Tenant) -> None:
    from api.signing import UrlSigner

    job_id = completed(app, alice)
    other_id = completed(app, alice)
    job = alice.client.get(f"/v1/jobs/{job_id}?signed=1").get_json()
    token = parse_qs(urlsplit(job["video_url"]).query)["token"][0]
    slide_token = parse_qs(urlsplit(job["slide_urls"][0]).query)["token"][0]
    expires, key_id, signature = token.split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    expired = UrlSigner(SECRET, 3600).token(job_id, "video.mp4", key_id, int(time.time()) - 1)
    foreign = UrlSigner("t" * 40, 3600).token(job_id, "video.mp4", key_id, int(expires))
    unknown = "00000000-0000-4000-8000-000000000000"
    attempts = [
        f"/v1/jobs/{job_id}/video?token={expired}",  # signed, but expired
        f"/v1/jobs/{job_id}/video?token={foreign}",  # signed with another secret
        f"/v1/jobs/{job_id}/video?token={int(expires) + 60}.{key_id}.{signature}",  # extended
        f"/v1/jobs/{job_id}/video?token={expires}.{key_id}.{flipped}",
        f"/v1/jobs/{job_id}/video?token=",
        f"/v1/jobs/{job_id}/thumbnail?token={token}",  # another file of the same job
        f"/v1/jobs/{job_id}/slides/2?token={slide_token}",  # another slide
        f"/v1/jobs/{other_id}/video?token={token}",  # the same file of another job
        f"/v1/jobs/{unknown}/video?token={token}",  # a job that does not exist
    ]
    bodies = set()
    for url in attempts:
        response = fetch(app.test_client(), url)
        assert_error(response, 403, "invalid_link")
        assert response.data.find(VIDEO[:64]) == -1
        bodies.add(response.data)
    assert len(bodies) == 1  # nothing tells a missing job from a wrong token
    # A good token does not lend its key to anything else.
    assert app.test_client().get(f"/v1/jobs/{job_id}?token={token}").status_code == 401
    assert app.test_client().get(f"/v1/jobs?token={token}").status_code == 401


def test_revoking_the_key_that_signed_a_link_ends_it(app: Any, alice: Tenant) -> None:
    job_id = completed(app, alice)
    admin = Tenant(app, "ops", admin=True)
    mine = alice.client.get(f"/v1/jobs/{job_id}?signed=1").get_json()["video_url"]
    admins = admin.client.get(f"/v1/jobs/{job_id}?signed=1").get_json()["video_url"]
    assert fetch(app.test_client(), path_of(mine)).status_code == 200
    AccessStore(app.extensions["slidefarm"].store).revoke(alice.key_id)
    assert_error(fetch(app.test_client(), path_of(mine)), 403, "invalid_link")
    assert fetch(app.test_client(), path_of(admins)).status_code == 200  # another key's


def test_signed_links_need_a_secret(settings: Settings) -> None:
    app = http_app(settings, secret=None)
    alice = Tenant(app, "alice")
    job_id = completed(app, alice)
    assert_error(alice.client.get(f"/v1/jobs/{job_id}?signed=1"), 503, "signing_unavailable")
    assert_error(fetch(app.test_client(), f"/v1/jobs/{job_id}/video?token=1.2.3"), 403)


def test_signed_link_settings_are_bounded() -> None:
    with pytest.raises(ValueError):
        Settings(SLIDEFARM_SECRET_KEY="too short")
    with pytest.raises(ValueError):
        Settings(SLIDEFARM_SIGNED_URL_TTL="604800")
    assert Settings(SLIDEFARM_SECRET_KEY="").secret_key is None
    assert "s" * 40 not in repr(Settings(SLIDEFARM_SECRET_KEY="s" * 40))


# -- compression -------------------------------------------------------------------


def test_large_json_is_gzipped_for_clients_that_accept_it(app: Any, alice: Tenant) -> None:
    for _ in range(8):
        alice.submit()
    plain = alice.client.get("/v1/jobs?limit=500")
    assert len(plain.data) > 4096 and "Content-Encoding" not in plain.headers
    packed = alice.client.get("/v1/jobs?limit=500", headers={"Accept-Encoding": "gzip, br"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in packed.headers["Vary"]
    assert int(packed.headers["Content-Length"]) == len(packed.data) < len(plain.data) / 4
    assert gzip.decompress(packed.data) == plain.data
    refused = alice.client.get("/v1/jobs?limit=500", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers
    document = app.test_client().get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert document.headers["Content-Encoding"] == "gzip"
    script = fetch(alice.client, "/static/dashboard.js", headers={"Accept-Encoding": "gzip"})
    assert script.headers["Content-Encoding"] == "gzip" and script.headers["ETag"][:2] == "W/"
    assert b"function" in gzip.decompress(script.data)


def test_small_bodies_media_ranges_and_streams_are_never_gzipped(app: Any, alice: Tenant) -> None:
    job_id = completed(app, alice, slides=1)
    gz = {"Accept-Encoding": "gzip"}
    status = alice.client.get(f"/v1/jobs/{alice.submit()['job_id']}", headers=gz)
    assert len(status.data) < 1024 and "Content-Encoding" not in status.headers
    for url, headers in (
        (f"/v1/jobs/{job_id}/video", gz),
        (f"/v1/jobs/{job_id}/video", {**gz, "Range": "bytes=0-5000"}),
        (f"/v1/jobs/{job_id}/slides/1", gz),
        (f"/v1/jobs/{job_id}/thumbnail", gz),
    ):
        response = fetch(alice.client, url, headers=headers)
        assert response.status_code in (200, 206)
        assert "Content-Encoding" not in response.headers, url
    assert fetch(alice.client, f"/v1/jobs/{job_id}/video", headers=gz).data == VIDEO
    stream = alice.client.get(f"/v1/jobs/{job_id}/events", headers=gz)
    assert stream.mimetype == "text/event-stream" and "Content-Encoding" not in stream.headers
    assert b"event: end" in stream.get_data()
    stream.close()


# -- the job's ETag ----------------------------------------------------------------


@pytest.mark.parametrize("cache", ["redis", "none"])
def test_the_jobs_etag_answers_304_until_any_field_changes(
    request: pytest.FixtureRequest, settings: Settings, cache: str
) -> None:
    extra: dict[str, Any] = {}
    if cache == "redis":
        extra["redis_url"] = request.getfixturevalue("redis_url")
    app = http_app(settings, **extra)
    alice = Tenant(app, "alice")
    store = app.extensions["slidefarm"].store
    job_id = alice.submit()["job_id"]
    url = f"/v1/jobs/{job_id}"
    first = alice.client.get(url)
    etag = first.headers["ETag"]
    assert etag.startswith('W/"') and alice.client.get(url).headers["ETag"] == etag
    unchanged = alice.client.get(url, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.data == b""
    assert unchanged.headers["ETag"] == etag
    assert alice.client.get(url, headers={"If-None-Match": '"other", ' + etag}).status_code == 304
    assert alice.client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    seen = {etag}
    job = store.claim(job_id, "w@h")
    changes = [
        lambda: None,  # claimed: status, worker, attempts, timestamps
        lambda: store.record_progress(job_id, job.attempts, 0.25, Stage.RENDERING_SLIDES),
        lambda: store.record_progress(job_id, job.attempts, 0.2501, Stage.RENDERING_SLIDES),
        lambda: store.request_cancel(job_id),
    ]
    if cache == "none":  # the cache shows a heartbeat within its TTL, by design
        changes.insert(3, lambda: store.heartbeat(job_id, job.attempts))
    for change in changes:
        change()
        time.sleep(0.01)  # timestamps move
        answer = alice.client.get(url, headers={"If-None-Match": etag})
        assert answer.status_code == 200, answer.status_code
        etag = answer.headers["ETag"]
        assert etag not in seen
        seen.add(etag)
        assert alice.client.get(url, headers={"If-None-Match": etag}).status_code == 304
    history = alice.client.get(f"{url}?include=history")
    assert history.headers["ETag"] not in seen
    assert (
        alice.client.get(
            f"{url}?include=history", headers={"If-None-Match": history.headers["ETag"]}
        ).status_code
        == 304
    )


# -- ranges and download names -----------------------------------------------------


def test_a_suffix_range_of_zero_bytes_is_416(app: Any, alice: Tenant) -> None:
    job_id = completed(app, alice, slides=1)
    for url in (
        f"/v1/jobs/{job_id}/video",
        f"/v1/jobs/{job_id}/thumbnail",
        f"/v1/jobs/{job_id}/slides/1",
    ):
        for value in ("bytes=-0", "bytes=-000", "Bytes=-0"):
            response = fetch(alice.client, url, headers={"Range": value})
            assert_error(response, 416)
            assert response.headers["Content-Range"].startswith("bytes */")
    last = fetch(alice.client, f"/v1/jobs/{job_id}/video", headers={"Range": "bytes=-1"})
    assert last.status_code == 206 and last.data == VIDEO[-1:]
    ignored = fetch(alice.client, f"/v1/jobs/{job_id}/thumbnail", headers={"Range": "nonsense"})
    assert ignored.status_code == 200


@pytest.mark.parametrize(
    ("title", "ascii_name", "utf8_name"),
    [
        ("Quarterly review", "Quarterly review", "Quarterly%20review"),
        ("../../etc/passwd", "etc passwd", "etc%20passwd"),
        (
            'Q1\r\nSet-Cookie: a=b; "x"\\y',
            "Q1 Set-Cookie_ a=b_ _x_ y",
            "Q1%20Set-Cookie_%20a%3Db%3B%20_x_%20y",
        ),
        ("Résumé \u202egnp.exe", "Resume gnp.exe", "R%C3%A9sum%C3%A9%20gnp.exe"),
        ("季度报告", None, "%E5%AD%A3%E5%BA%A6%E6%8A%A5%E5%91%8A"),
        ("...", None, None),
    ],
)
def test_download_names_come_from_the_title_made_safe(
    app: Any, alice: Tenant, title: str, ascii_name: str | None, utf8_name: str | None
) -> None:
    job_id = completed(app, alice, slides=1, title=title)
    response = fetch(alice.client, f"/v1/jobs/{job_id}/video?download=1")
    assert response.status_code == 200 and response.data == VIDEO
    expected_ascii = ascii_name or job_id
    expected_utf8 = utf8_name or job_id
    assert response.headers["Content-Disposition"] == (
        f"attachment; filename=\"{expected_ascii}.mp4\"; filename*=UTF-8''{expected_utf8}.mp4"
    )
    slide = fetch(alice.client, f"/v1/jobs/{job_id}/slides/1?download=1")
    assert slide.headers["Content-Disposition"].endswith(f"{expected_utf8}%20-%20slide%201.png")
    inline = fetch(alice.client, f"/v1/jobs/{job_id}/video")
    assert inline.headers["Content-Disposition"] == f"inline; filename={job_id}.mp4"
    assert_error(fetch(alice.client, f"/v1/jobs/{job_id}/video?download=yes"), 400)


# -- behind a proxy ----------------------------------------------------------------

FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "slides.example",
    "X-Forwarded-For": "203.0.113.9",
}


def sign_in_cookie(app: Any, alice: Tenant, headers: dict[str, str]) -> str:
    signed = app.test_client().post("/login", data={"key": alice.token}, headers=headers)
    assert signed.status_code == 303, signed.get_data(as_text=True)
    cookie: str = signed.headers["Set-Cookie"]
    return cookie


def test_behind_a_trusted_proxy_the_cookie_is_secure_and_links_are_public(
    settings: Settings,
) -> None:
    app = http_app(settings, trusted_proxies=1)
    alice = Tenant(app, "alice")
    cookie = sign_in_cookie(app, alice, {**FORWARDED, "Origin": "https://slides.example"})
    assert "; Secure" in cookie and "HttpOnly" in cookie
    job_id = completed(app, alice, slides=1)
    job = alice.client.get(f"/v1/jobs/{job_id}?signed=1", headers=FORWARDED).get_json()
    assert job["video_url"].startswith(f"https://slides.example/v1/jobs/{job_id}/video?token=")


def test_forwarded_headers_are_ignored_without_trusted_proxies(settings: Settings) -> None:
    app = http_app(settings)
    assert app.extensions["slidefarm"].settings.trusted_proxies == 0
    alice = Tenant(app, "alice")
    cookie = sign_in_cookie(app, alice, FORWARDED)
    assert "Secure" not in cookie
    job_id = completed(app, alice, slides=1)
    job = alice.client.get(f"/v1/jobs/{job_id}?signed=1", headers=FORWARDED).get_json()
    assert job["video_url"].startswith("http://localhost/")


# -- bodies the server cannot de-chunk ------------------------------------------
# gunicorn raises its own parse error from ``wsgi.input`` inside the view for a
# bad chunk size, a missing chunk terminator or a body cut short.


class BrokenChunks(io.RawIOBase):
    """``wsgi.input`` as gunicorn gives it for a body it cannot de-chunk: the
    first read raises gunicorn's own parse error."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.error


BROKEN_BODIES = [InvalidChunkSize(b"zz"), ChunkMissingTerminator(b"XX"), NoMoreData(b"")]


@pytest.mark.parametrize("error", BROKEN_BODIES, ids=lambda e: type(e).__name__)
def test_a_body_the_server_cannot_dechunk_is_400_not_500(
    app: Any, alice: Tenant, error: Exception
) -> None:
    chunked = {"wsgi.input_terminated": True}  # as gunicorn says of a chunked body
    response = alice.client.post(
        "/v1/jobs",
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={**chunked, "wsgi.input": BrokenChunks(error)},
    )
    assert_error(response, 400, "malformed_body")
    login = app.test_client().post(
        "/login",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Transfer-Encoding": "chunked",
        },
        environ_overrides={**chunked, "wsgi.input": BrokenChunks(error)},
    )
    assert_error(login, 400, "malformed_body")
    # Nothing was recorded, and a good body still goes through.
    assert alice.client.get("/v1/jobs").get_json()["jobs"] == []
    good = alice.client.post(
        "/v1/jobs",
        input_stream=io.BytesIO(json.dumps(small_deck(slides=1)).encode()),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides=chunked,
    )
    assert good.status_code == 202, good.get_data(as_text=True)


# -- signed links in the access log -----------------------------------------------
# A link's token opens a file without a key and travels in the URL, which is
# what access logs write.


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=30
    ) as response:
        return response.status, response.read()


def test_the_access_log_never_shows_a_signed_links_token(
    settings: Settings, tmp_path: Path
) -> None:
    app = http_app(settings)
    alice = Tenant(app, "alice")
    job_id = completed(app, alice, slides=1)
    env = stack_env(
        DATABASE_URL=settings.database_url,
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
        SLIDEFARM_OUTPUT_DIR=str(settings.output_dir),
        SLIDEFARM_AUTH="required",
        SLIDEFARM_SECRET_KEY=SECRET,
    )
    stack = Stack(env, tmp_path)
    api = Proc(
        "api-access-log",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gthread",
            "-w",
            "1",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{stack.port}",
            "--graceful-timeout",
            "5",
            "--access-logfile",
            "-",
            "api:create_app()",
        ],
        env,
        tmp_path,
    )
    stack.procs.append(api)
    try:
        stack.wait_ready(api)
        status, body = _get(f"{stack.base}/v1/jobs/{job_id}?signed=1", alice.token)
        assert status == 200
        video_url = json.loads(body)["video_url"]
        token = parse_qs(urlsplit(video_url).query)["token"][0]
        assert _get(video_url) == (200, VIDEO)
    finally:
        stack.stop_all()
    log = api.log()
    expires, key_id, signature = token.split(".")
    served = [line for line in log.splitlines() if f"/v1/jobs/{job_id}/video" in line]
    assert served, log[-2000:]  # the request was logged...
    assert signature not in log, served  # ...without what opens the file
    assert f"token={expires}.{key_id}." in served[0]  # which link, and whose, stays readable


# -- the ASCII download name ---------------------------------------------------------
# Folded to ASCII after separators were removed, a fullwidth solidus came back
# as ``/`` and a fullwidth colon as ``:``.


@pytest.mark.parametrize(
    ("title", "ascii_name"),
    [
        ("..／..／etc／passwd", "etc passwd"),
        ("a／b", "a b"),
        ("‥／‥／secret", "secret"),
        ("report：final＂", "report_final_"),
        ("＜script＞", "_script_"),
    ],
)
def test_the_ascii_download_name_has_no_separator_a_fold_brings_back(
    settings: Settings, title: str, ascii_name: str
) -> None:
    app: Any = http_app(settings)
    alice = Tenant(app, "alice")
    job_id = completed(app, alice, slides=1, title=title)
    response = fetch(alice.client, f"/v1/jobs/{job_id}/video?download=1")
    assert response.status_code == 200 and response.data == VIDEO
    disposition = response.headers["Content-Disposition"]
    plain = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert plain == f"{ascii_name}.mp4", disposition
    assert "/" not in plain and ":" not in plain and not plain.startswith(".")
