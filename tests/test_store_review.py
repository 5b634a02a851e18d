"""Findings of the outside review of the job store, each pinned by a test.

Races are made deterministic by holding one side at a chosen statement
(SQLAlchemy engine events on a store of its own) while the other side runs.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from api import create_app
from storage import JobStore, Settings
from storage.config import database_backend
from storage.db import normalize_url
from tests.conftest import NO_LIMITS, small_deck

# -- keys on every database that is not SQLite ----------------------------------

SERVER_SPELLINGS = [
    "postgres://u@db.example:5432/slidefarm",
    "postgresql://u@db.example/slidefarm",
    "postgresql+psycopg2://u@db.example/slidefarm",
    "postgresql+psycopg://u@db.example/slidefarm",
    "POSTGRES://u@db.example/slidefarm",
    "PostgreSQL+Psycopg2://u@db.example/slidefarm",
    "mysql+pymysql://u@db.example/slidefarm",
    "not a url at all",
]


@pytest.mark.parametrize("url", SERVER_SPELLINGS)
def test_keys_are_required_on_every_database_but_sqlite(url: str) -> None:
    assert Settings(DATABASE_URL=url).auth_required
    assert Settings(DATABASE_URL=url, SLIDEFARM_AUTH="off").auth_required is False


@pytest.mark.parametrize("url", ["sqlite:///slidefarm.db", "SQLite:///x.db", "sqlite://"])
def test_the_embedded_sqlite_file_runs_open(url: str) -> None:
    assert not Settings(DATABASE_URL=url).auth_required
    assert database_backend(url) == "sqlite"


@pytest.mark.parametrize("url", SERVER_SPELLINGS[:6])
def test_engine_and_access_mode_agree_on_the_backend(url: str) -> None:
    assert database_backend(url) == "postgresql"
    scheme = normalize_url(url).split("://")[0]
    assert scheme in ("postgresql+psycopg2", "postgresql+psycopg")


@pytest.mark.parametrize("scheme", ["postgres", "POSTGRESQL", "Postgres+Psycopg2"])
def test_an_api_on_a_postgres_alias_url_requires_keys(pg_url: str, tmp_path: Any,
                                                      scheme: str) -> None:
    url = scheme + "://" + pg_url.split("://", 1)[1]
    settings = Settings(DATABASE_URL=url, CELERY_BROKER_URL="filesystem://",
                        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
                        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"), **NO_LIMITS)
    client = create_app({"TESTING": True, "SETTINGS": settings}).test_client()
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/workers"),
                         ("GET", "/metrics")):
        answer = client.open(path, method=method, json=small_deck())
        assert answer.status_code == 401, (method, path, answer.get_data(as_text=True))
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # The same URL reaches the real server (the engine reads it the same way).
    assert JobStore.from_url(url).list_jobs().jobs == []


# -- the status cache is asked only about real job ids -------------------------


class Counted:
    """Counts the Redis commands and SQL statements an app sends (wrappers
    around the real client and engine: the calls still go through)."""

    def __init__(self, store: JobStore) -> None:
        assert store.feed is not None
        client = store.feed._redis()
        real = client.execute_command
        self.redis: list[Any] = []
        self.sql: list[str] = []

        def execute_command(*args: Any, **options: Any) -> Any:
            self.redis.append(args[:2])
            return real(*args, **options)

        client.execute_command = execute_command  # type: ignore[method-assign]
        event.listen(store.engine, "before_cursor_execute",
                     lambda _c, _cur, statement, *_: self.sql.append(statement))

    def reset(self) -> None:
        self.redis.clear()
        self.sql.clear()


BAD_IDS = ["not-a-job", "..%2F..%2Fetc%2Fpasswd", "x" * 300, "*", "slidefarm:status:*",
           "0F8FAD5B-D9CB-469F-A165-70867728950E", "0f8fad5bd9cb469fa16570867728950e",
           "0f8fad5b-d9cb-469f-a165-70867728950e%0A"]


def test_a_status_read_of_a_malformed_id_touches_neither_redis_nor_the_database(
        settings: Settings, redis_url: str) -> None:
    settings = settings.model_copy(update={"redis_url": redis_url, "key_cache_ttl": 600.0})
    from tests.conftest import admin_client

    client = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
    store = client.application.extensions["slidefarm"].store
    counted = Counted(store)
    # A well-formed id is looked up in the cache, then the database (this
    # also puts the admin key in the process's cache of checked keys).
    unknown = client.get("/v1/jobs/0f8fad5b-d9cb-469f-a165-70867728950e")
    assert unknown.status_code == 404
    assert counted.redis and counted.sql
    for bad in BAD_IDS:
        counted.reset()
        answer = client.get(f"/v1/jobs/{bad}")
        assert answer.status_code == 404, bad
        # (A path the router does not match is its generic 404.)
        assert answer.get_json()["error"]["code"] in ("job_not_found", "not_found"), bad
        assert counted.redis == [] and counted.sql == [], bad
