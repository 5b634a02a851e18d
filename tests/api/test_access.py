"""API keys, tenants and limits, against the real app on both backends.

Two tenants' keys try every route on each other's jobs (BOLA): the answer is
always the 404 of a job that does not exist, and the job is left as it was.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from api import create_app
from api.auth import KeyCache
from core.config import Settings
from storage import JobStore, Status
from storage.access import AccessStore, Principal
from tests.support.clients import Tenant, assert_error, fetch, locked
from tests.support.decks import small_deck
from tests.support.jobs import finish_with_files
from tests.support.services import NO_LIMITS

JOB_ROUTES = [  # (method, path template) of every route about one job
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}?include=history"),
    ("GET", "/v1/jobs/{id}/events"),
    ("GET", "/v1/jobs/{id}/video"),
    ("GET", "/v1/jobs/{id}/thumbnail"),
    ("GET", "/v1/jobs/{id}/slides/1"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("POST", "/v1/jobs/{id}/retry"),
    ("DELETE", "/v1/jobs/{id}"),
]
PROTECTED = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/workers"),
    ("GET", "/v1/stats"),
    ("GET", "/metrics"),
    ("GET", "/"),
] + [(m, p.format(id="00000000-0000-4000-8000-000000000000")) for m, p in JOB_ROUTES]


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return locked(settings)


@pytest.fixture
def alice(app: Any) -> Tenant:
    return Tenant(app, "alice")


@pytest.fixture
def bob(app: Any) -> Tenant:
    return Tenant(app, "bob")


def assert_401(response: Any) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWxpY2U6c2VjcmV0",
        "bearer sf_short_x",
        "Bearer sf_0123456789ab_" + "A" * 40,  # well-formed, unknown
        "Bearer sf_0123456789ab_" + "A" * 41,
        "Bearer ../../etc/passwd",
        "Token abc",
    ],
)
def test_a_missing_or_bad_key_is_401_on_every_protected_route(app: Any, header: str | None) -> None:
    client = app.test_client()
    headers = {} if header is None else {"Authorization": header}
    for method, path in PROTECTED:
        response = client.open(path, method=method, headers=headers, json=small_deck())
        assert_401(response)
        if not path == "/":
            assert response.get_json()["error"]["code"] == "unauthorized"


def test_probes_need_no_key(app: Any) -> None:
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_a_key_in_the_url_is_never_accepted(app: Any, alice: Tenant) -> None:
    client = app.test_client()
    for name in ("api_key", "key", "access_token", "token"):
        assert_401(client.get(f"/v1/jobs?{name}={alice.token}"))


def test_another_tenants_job_is_404_on_every_route_and_stays_untouched(
    app: Any, settings: Settings, alice: Tenant, bob: Tenant
) -> None:
    mine = alice.submit()["job_id"]
    done = alice.submit()["job_id"]
    finish_with_files(settings, done, b"video")
    before = {j: alice.client.get(f"/v1/jobs/{j}").get_json() for j in (mine, done)}
    for job_id in (mine, done):
        for method, template in JOB_ROUTES:
            response = bob.client.open(template.format(id=job_id), method=method)
            assert_error(response, 404)
            assert response.get_json()["error"]["code"] == "job_not_found", (method, template)
    # Bob's list holds none of Alice's jobs, with or without filters.
    for query in ("", "?status=queued", "?status=completed", f"?q={mine[:8]}", "?q=Deck"):
        assert bob.client.get(f"/v1/jobs{query}").get_json()["jobs"] == []
    # Nothing Bob did changed Alice's jobs (files included).
    for job_id in (mine, done):
        assert alice.client.get(f"/v1/jobs/{job_id}").get_json() == before[job_id]
    assert fetch(alice.client, f"/v1/jobs/{done}/video").status_code == 200
    assert {j["job_id"] for j in alice.client.get("/v1/jobs").get_json()["jobs"]} == {mine, done}


def test_an_unknown_job_and_another_tenants_job_answer_alike(alice: Tenant, bob: Tenant) -> None:
    theirs = alice.submit()["job_id"]
    unknown = "00000000-0000-4000-8000-000000000000"
    a = bob.client.get(f"/v1/jobs/{theirs}")
    b = bob.client.get(f"/v1/jobs/{unknown}")
    assert (a.status_code, a.get_json()) == (b.status_code, b.get_json())


def test_admin_keys_see_and_manage_every_tenant(app: Any, alice: Tenant, bob: Tenant) -> None:
    admin = Tenant(app, "ops", admin=True)
    a, b = alice.submit()["job_id"], bob.submit()["job_id"]
    listed = {j["job_id"] for j in admin.client.get("/v1/jobs").get_json()["jobs"]}
    assert {a, b} <= listed
    assert admin.client.post(f"/v1/jobs/{b}/cancel").status_code == 202
    assert bob.client.get(f"/v1/jobs/{b}").get_json()["status"] == "cancelled"
    for path in ("/v1/workers", "/v1/stats", "/metrics"):
        assert admin.client.get(path).status_code == 200
        assert_error(alice.client.get(path), 403)


def test_own_jobs_work_on_every_route(alice: Tenant) -> None:
    job_id = alice.submit()["job_id"]
    assert alice.client.get(f"/v1/jobs/{job_id}?include=history").status_code == 200
    assert alice.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert alice.client.post(f"/v1/jobs/{job_id}/retry").status_code == 202
    assert alice.client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert_error(alice.client.get(f"/v1/jobs/{job_id}"), 404)


def test_idempotency_keys_are_per_tenant(alice: Tenant, bob: Tenant) -> None:
    headers = {"Idempotency-Key": "order-42"}
    a = alice.client.post("/v1/jobs", json=small_deck(slides=1), headers=headers)
    b = bob.client.post("/v1/jobs", json=small_deck(slides=2), headers=headers)
    assert a.status_code == b.status_code == 202
    assert a.get_json()["job_id"] != b.get_json()["job_id"]
    again = bob.client.post("/v1/jobs", json=small_deck(slides=2), headers=headers)
    assert again.get_json()["job_id"] == b.get_json()["job_id"]


def test_a_revoked_key_is_refused(app: Any, alice: Tenant) -> None:
    assert alice.client.get("/v1/jobs").status_code == 200
    assert AccessStore(app.extensions["slidefarm"].store).revoke(alice.key_id)
    assert_401(alice.client.get("/v1/jobs"))


def test_a_cached_key_is_trusted_only_for_its_bound_and_only_as_sent(settings: Settings) -> None:
    ttl = 0.5
    app = create_app({"TESTING": True, "SETTINGS": locked(settings, key_cache_ttl=ttl)})
    alice, bob = Tenant(app, "alice"), Tenant(app, "bob")
    checks: list[str] = []
    real_verify = AccessStore.verify

    def verify(self: AccessStore, token: str) -> Any:
        checks.append(token)
        return real_verify(self, token)

    AccessStore.verify = verify  # type: ignore[method-assign]
    try:
        job = alice.submit()["job_id"]  # checked, then kept
        assert alice.client.get(f"/v1/jobs/{job}").status_code == 200  # from the cache
        assert alice.client.get(f"/v1/jobs/{job}").status_code == 200
        assert set(checks) == {alice.token}
        # Another secret for the same key id is another credential: checked, refused.
        forged = alice.token[:-1] + ("A" if alice.token[-1] != "A" else "B")
        assert_401(alice.client.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"}))
        assert checks[-1] == forged
        # A cached key still speaks for its own tenant only.
        assert bob.client.get(f"/v1/jobs/{job}").status_code == 404
        assert bob.client.get(f"/v1/jobs/{job}").status_code == 404
    finally:
        AccessStore.verify = real_verify  # type: ignore[method-assign]
    revoked_at = time.monotonic()
    assert AccessStore(app.extensions["slidefarm"].store).revoke(alice.key_id)
    # Within the bound the process may still trust it; past it, never.
    while time.monotonic() - revoked_at < ttl + 0.05:
        time.sleep(0.05)
    assert_401(alice.client.get(f"/v1/jobs/{job}"))
    assert_401(alice.client.get("/v1/jobs"))


def test_the_key_cache_checks_a_credential_once_per_half_bound() -> None:
    ttl = 0.4
    cache = KeyCache(ttl)
    who = Principal("alice", admin=False, key_id="0123456789ab")
    live = {"sf_0123456789ab_" + "A" * 40}
    checks: list[str] = []

    def load(token: str) -> Principal | None:
        checks.append(token)
        return who if token in live else None

    token = next(iter(live))
    assert cache.get(token, load) is who
    assert cache.get(token, load) is who and cache.get(token, load) is who
    assert checks == [token]  # hits: no check, no hash
    assert cache.get(token[:-1] + "B", load) is None
    assert checks == [token, token[:-1] + "B"]
    time.sleep(ttl / 2 + 0.02)  # past half the bound: the next hit checks again
    assert cache.get(token, load) is who
    assert checks[-1] == token and len(checks) == 3
    live.clear()  # revoked: the next check drops it
    time.sleep(ttl / 2 + 0.02)
    assert cache.get(token, load) is None
    assert cache.get(token, load) is None


def test_keys_are_stored_only_as_hashes(app: Any, alice: Tenant) -> None:
    secret = alice.token.rsplit("_", 1)[1]
    store: JobStore = app.extensions["slidefarm"].store
    with store.transaction() as conn:
        rows = [tuple(map(str, r)) for r in conn.exec_driver_sql("SELECT * FROM api_keys")]
    assert rows and not any(secret in value for row in rows for value in row)


@pytest.mark.parametrize(
    "field",
    ["status", "owner", "attempts", "worker", "created_at", "completed_at", "job_id", "progress"],
)
def test_fields_the_server_sets_are_refused(alice: Tenant, field: str) -> None:
    response = alice.client.post("/v1/jobs", json={**small_deck(), field: "completed"})
    error = assert_error(response, 422, "validation_failed")
    assert [d["field"] for d in error["details"]] == [field]


def test_the_active_job_cap_is_per_tenant_and_exact_under_races(settings: Settings) -> None:
    app = create_app({"TESTING": True, "SETTINGS": locked(settings, max_active_jobs=3)})
    alice, bob = Tenant(app, "alice"), Tenant(app, "bob")

    def submit(_: int) -> int:
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {alice.token}"
        return int(client.post("/v1/jobs", json=small_deck(slides=1)).status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = sorted(pool.map(submit, range(10)))
    assert codes == [202] * 3 + [429] * 7
    refused = alice.client.post("/v1/jobs", json=small_deck(slides=1))
    error = assert_error(refused, 429, "too_many_active_jobs")
    assert int(refused.headers["Retry-After"]) >= 1 and "3" in error["message"]
    bob.submit()  # another tenant is not held up
    first = alice.client.get("/v1/jobs").get_json()["jobs"][0]["job_id"]
    assert alice.client.post(f"/v1/jobs/{first}/cancel").status_code == 202
    alice.submit()  # a slot came free
    # A retry counts like a submission: the cap is full again.
    assert_error(alice.client.post(f"/v1/jobs/{first}/retry"), 429, "too_many_active_jobs")
    assert alice.client.get(f"/v1/jobs/{first}").get_json()["status"] == "cancelled"


@pytest.mark.parametrize("with_redis", [False, True])
def test_submissions_are_rate_limited_per_key_across_processes(
    settings: Settings, with_redis: bool, request: pytest.FixtureRequest
) -> None:
    update: dict[str, Any] = {"submit_rate": 0.5, "submit_burst": 2}
    if with_redis:
        update["redis_url"] = request.getfixturevalue("redis_url")
    # Two app instances stand for two API processes sharing one bucket.
    one = create_app({"TESTING": True, "SETTINGS": locked(settings, **update)})
    two = create_app({"TESTING": True, "SETTINGS": locked(settings, **update)})
    alice = Tenant(one, "alice")
    other = two.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {alice.token}"
    assert alice.client.post("/v1/jobs", json=small_deck()).status_code == 202
    assert other.post("/v1/jobs", json=small_deck()).status_code == 202
    refused = other.post("/v1/jobs", json=small_deck())
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    Tenant(one, "bob").submit()  # a bucket per key


def test_a_deck_longer_than_the_video_cap_is_422(settings: Settings) -> None:
    app = create_app({"TESTING": True, "SETTINGS": locked(settings, max_video_seconds=10)})
    alice = Tenant(app, "alice")
    deck = small_deck(slides=3, duration=4.0)
    error = assert_error(alice.client.post("/v1/jobs", json=deck), 422, "validation_failed")
    assert error["details"][0]["field"] == "slides"
    assert alice.client.post("/v1/jobs", json=small_deck(slides=2, duration=4.0)).status_code == 202


def test_list_limit_is_capped(alice: Tenant) -> None:
    assert_error(alice.client.get("/v1/jobs?limit=501"), 400)
    assert alice.client.get("/v1/jobs?limit=500").status_code == 200


def test_the_embedded_mode_runs_open_and_says_so(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_app(
            {
                "TESTING": True,
                "SETTINGS": settings.model_copy(
                    update={
                        "auth": None,
                        "database_url": "sqlite:///" + str(settings.output_dir.parent / "open.db"),
                    }
                ),
            }
        )
    assert not app.extensions["slidefarm"].settings.auth_required
    assert "authentication is OFF" in caplog.text
    assert Settings(DATABASE_URL="postgresql://u@h/db").auth_required


# -- the dashboard's session ---------------------------------------------------


def test_the_dashboard_signs_in_with_a_key_and_keeps_a_safe_session(
    app: Any, alice: Tenant, bob: Tenant
) -> None:
    browser = app.test_client()
    page = browser.get("/")
    assert page.status_code == 401 and "text/html" in page.content_type
    assert b'name="key"' in page.data
    assert browser.post("/login", data={"key": "sf_nope_nope"}).status_code == 401
    signed = browser.post("/login", data={"key": alice.token, "next": "//evil.example/x"})
    assert signed.status_code == 303 and signed.headers["Location"] == "/"
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and alice.token not in cookie
    mine, theirs = alice.submit()["job_id"], bob.submit()["job_id"]
    listing = browser.get("/")
    assert listing.status_code == 200 and mine.encode() in listing.data
    assert theirs.encode() not in listing.data
    assert browser.get(f"/jobs/{theirs}").status_code == 404
    assert browser.get(f"/v1/jobs/{mine}").status_code == 200
    # A write with the cookie alone (what a forged cross-site form sends) is refused.
    assert_error(browser.post(f"/v1/jobs/{mine}/cancel"), 403)
    assert (
        browser.post(f"/v1/jobs/{mine}/cancel", headers={"X-Slidefarm-Request": "1"}).status_code
        == 202
    )
    assert browser.get(f"/v1/jobs/{mine}").get_json()["status"] == Status.CANCELLED.value
    browser.post("/logout")
    assert_401(browser.get(f"/v1/jobs/{mine}"))


def test_revoking_a_key_ends_its_dashboard_sessions(app: Any, alice: Tenant) -> None:
    browser = app.test_client()
    browser.post("/login", data={"key": alice.token})
    assert browser.get("/").status_code == 200
    AccessStore(app.extensions["slidefarm"].store).revoke(alice.key_id)
    assert_401(browser.get("/"))


@pytest.mark.parametrize(
    "headers", [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}]
)
def test_no_other_site_can_sign_a_visitor_in_or_out(
    app: Any, alice: Tenant, headers: dict[str, str]
) -> None:
    browser = app.test_client()
    assert_error(browser.post("/login", data={"key": alice.token}, headers=headers), 403)
    assert (
        "Set-Cookie"
        not in browser.post("/login", data={"key": alice.token}, headers=headers).headers
    )
    assert (
        browser.post(
            "/login", data={"key": alice.token}, headers={"Origin": "http://localhost"}
        ).status_code
        == 303
    )
    assert_error(browser.post("/logout", headers=headers), 403)
    assert browser.get("/").status_code == 200  # still signed in


def test_a_cap_of_zero_means_no_cap(settings: Settings) -> None:
    app = create_app({"TESTING": True, "SETTINGS": locked(settings, max_active_jobs=0)})
    alice = Tenant(app, "alice")
    for _ in range(25):  # over the default cap of 20
        alice.submit()


# -- the sign-in's next page ---------------------------------------------------
# Browsers drop a tab or a newline from a URL: ``/\t/evil.example`` becomes
# ``//evil.example`` (another site), and a newline in ``Location`` is a 500.


HOSTILE_NEXT = [
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r/evil.example",
    "/\r\n/evil.example",
    "\t//evil.example",
    "/\t\\evil.example",
    "/\x00/evil.example",
    "/\x0b/evil.example",
    "/\x7f/evil.example",
    "/x\r\nSet-Cookie: slidefarm_session=attacker",
]


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_the_sign_in_never_redirects_off_site_nor_fails(
    app: Any, alice: Tenant, target: str
) -> None:
    browser = app.test_client()
    signed = browser.post("/login", data={"key": alice.token, "next": target})
    assert signed.status_code == 303, signed.get_data(as_text=True)
    assert signed.headers["Location"] == "/"
    form = browser.get("/login", query_string={"next": target})
    assert form.status_code == 200
    assert b'name="next" value="/"' in form.data


def test_a_same_site_next_still_works(app: Any, alice: Tenant) -> None:
    signed = app.test_client().post(
        "/login", data={"key": alice.token, "next": "/jobs/x?status=failed"}
    )
    assert signed.status_code == 303 and signed.headers["Location"] == "/jobs/x?status=failed"


# -- keys on every database that is not SQLite ----------------------------------


@pytest.mark.parametrize("scheme", ["postgres", "POSTGRESQL", "Postgres+Psycopg2"])
def test_an_api_on_a_postgres_alias_url_requires_keys(
    pg_url: str, tmp_path: Any, scheme: str
) -> None:
    url = scheme + "://" + pg_url.split("://", 1)[1]
    settings = Settings(
        DATABASE_URL=url,
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
        **NO_LIMITS,
    )
    client = create_app({"TESTING": True, "SETTINGS": settings}).test_client()
    for method, path in (
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/workers"),
        ("GET", "/metrics"),
    ):
        answer = client.open(path, method=method, json=small_deck())
        assert answer.status_code == 401, (method, path, answer.get_data(as_text=True))
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # The same URL reaches the real server (the engine reads it the same way).
    JobStore.from_url(url).ping()
