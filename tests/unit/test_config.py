"""Which backend a database URL names, and so whether keys are required:
every spelling of PostgreSQL (and any other server) requires them, only the
embedded SQLite file runs open."""

from __future__ import annotations

import pytest

from core.config import Settings, database_backend
from storage.db import normalize_url

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
