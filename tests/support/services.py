"""Fixtures on real services: PostgreSQL, Redis and SQLite.

Each run creates its own PostgreSQL database and takes a Redis database index
no other run holds, so concurrent runs never collide. With
``SLIDEFARM_REQUIRE_SERVICES=1`` (CI) a service that is not reachable fails
the run instead of skipping its tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from core.config import Settings
from storage import JobStore
from storage.db import create_db_engine, dispose_engines
from storage.models import Base
from tests.support import ROOT

PG_ADMIN_URL = os.environ.get(
    "SLIDEFARM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("SLIDEFARM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_INDEXES = range(4, 16)
REQUIRE_SERVICES = os.environ.get("SLIDEFARM_REQUIRE_SERVICES", "") not in ("", "0", "false")

#: Limits out of the way of tests about other things (tests of limits set their own).
NO_LIMITS = {
    "SLIDEFARM_MAX_ACTIVE_JOBS": "100000",
    "SLIDEFARM_SUBMIT_RATE": "100000",
    "SLIDEFARM_SUBMIT_BURST": "100000",
}


def missing(message: str) -> NoReturn:
    """Something a test needs is not there: skip it, or fail it when services
    (and the tools ``make test`` installs) are required, as in CI."""
    if REQUIRE_SERVICES:
        pytest.fail(message + " (SLIDEFARM_REQUIRE_SERVICES is set)", pytrace=False)
    pytest.skip(message)


def unavailable(what: str, error: Exception) -> NoReturn:
    """A service is not reachable: see :func:`missing`."""
    missing(f"{what} is not reachable: {error}")


def alembic_upgrade(url: str) -> None:
    """Migrate the database at ``url`` to head."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")


def admin_engine():  # type: ignore[no-untyped-def]
    """An AUTOCOMMIT engine on the PostgreSQL server's admin database."""
    return create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg2://", 1),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """An AUTOCOMMIT engine on the PostgreSQL server's admin database."""
    engine = admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as error:
        engine.dispose()
        unavailable("PostgreSQL", error)
    yield engine
    engine.dispose()


def create_pg_database(admin: Any, prefix: str = "slidefarm_test") -> str:
    """A new empty database; returns its plain ``postgresql://`` URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(admin: Any, url: str) -> None:
    """Drop the database at ``url``, whoever is still connected."""
    name = url.rsplit("/", 1)[1]
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url(pg_server: Any) -> Iterator[str]:
    """This run's PostgreSQL database, migrated to head."""
    url = create_pg_database(pg_server)
    alembic_upgrade(url)
    yield url
    drop_pg_database(pg_server, url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database index that no other test run holds, flushed for this run."""
    lock_key = "slidefarm:test-run-lock"
    token = f"{socket.gethostname()}:{os.getpid()}"
    try:
        probe = redis.Redis.from_url(f"{REDIS_BASE_URL}/0", socket_timeout=3)
        probe.ping()
        probe.close()
    except Exception as error:
        unavailable("Redis", error)
    for index in REDIS_INDEXES:
        client = redis.Redis.from_url(f"{REDIS_BASE_URL}/{index}")
        if client.set(lock_key, token, nx=True, ex=3600):
            for key in client.scan_iter():
                if key != lock_key.encode():
                    client.delete(key)
            try:
                yield f"{REDIS_BASE_URL}/{index}"
            finally:
                for key in client.scan_iter():
                    if key != lock_key.encode():
                        client.delete(key)
                if client.get(lock_key) == token.encode():
                    client.delete(lock_key)
                client.close()
            return
        client.close()
    pytest.fail("every Redis test index is taken by other runs")


def flush_run_index(url: str) -> None:
    """Empty this run's Redis index (queues, unacked messages), keeping its lock."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter():
        if key != b"slidefarm:test-run-lock":
            client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test that needs one."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    alembic_upgrade(f"sqlite:///{path}")
    dispose_engines()
    return path


def truncate_tables(url: str) -> None:
    """Empty every table of the PostgreSQL database at ``url``."""
    engine = create_db_engine(url)
    with engine.begin() as conn:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables}"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "slidefarm.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
    else:
        url: str = request.getfixturevalue("pg_url")
        truncate_tables(url)
        yield url
    dispose_engines()


@pytest.fixture
def store(db_url: str) -> JobStore:
    """The job store on the test's database."""
    return JobStore.from_url(db_url)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings for in-process API tests: the backend's database and a
    filesystem broker in this test's folder."""
    return Settings(
        DATABASE_URL=db_url,
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
        **NO_LIMITS,
    )


def queued_messages(settings: Settings) -> int:
    """How many messages wait in the filesystem broker's queue."""
    folder = settings.broker_dir / "queue"
    return len(list(folder.glob("*.msg"))) if folder.exists() else 0
