"""Alembic builds the schema the models describe, on PostgreSQL and SQLite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from storage import JobStore, Status
from storage.db import create_db_engine, dispose_engines
from storage.models import Base
from tests.support import ROOT
from tests.support.decks import small_deck
from tests.support.services import create_pg_database, drop_pg_database
from tests.support.stack import stack_env


def _config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    return cfg


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin = request.getfixturevalue("pg_server")
    url = create_pg_database(admin, prefix="slidefarm_migrate")
    yield url
    drop_pg_database(admin, url)


def test_models_and_migrations_agree(empty_db: str) -> None:
    command.upgrade(_config(empty_db), "head")
    engine = create_db_engine(empty_db)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(empty_db: str) -> None:
    cfg = _config(empty_db)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    engine = create_db_engine(empty_db)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    command.upgrade(cfg, "head")


def test_alembic_cli_reads_database_url(empty_db: str) -> None:
    env = stack_env(DATABASE_URL=empty_db)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    engine = create_db_engine(empty_db)
    try:
        assert {"jobs", "job_files"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrading_keeps_every_row_of_an_older_schema(empty_db: str) -> None:
    """A job's history and files survive every later migration on both backends
    (on SQLite a batch rebuild of ``jobs`` with foreign keys on used to cascade
    and delete them)."""
    cfg = _config(empty_db)
    command.upgrade(cfg, "0002")
    engine = create_db_engine(empty_db)
    now = "2026-01-01 00:00:00"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO jobs (id, status, stage, progress, attempts, title, deck,"
                " created_at) VALUES ('00000000-0000-4000-8000-000000000001', 'completed',"
                f" 'done', 1.0, 1, 'old', '{{}}', '{now}')"
            )
            conn.exec_driver_sql(
                "INSERT INTO job_events (job_id, from_status, to_status, attempt, at)"
                " VALUES ('00000000-0000-4000-8000-000000000001', NULL, 'queued', 0,"
                f" '{now}')"
            )
            conn.exec_driver_sql(
                "INSERT INTO job_files (job_id, attempt, path, size_bytes, created_at)"
                " VALUES ('00000000-0000-4000-8000-000000000001', 1, 'video.mp4', 10,"
                f" '{now}')"
            )
    finally:
        engine.dispose()
    command.upgrade(cfg, "head")
    engine = create_db_engine(empty_db)
    try:
        with engine.connect() as conn:
            counts = [
                conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
                for table in ("jobs", "job_events", "job_files")
            ]
    finally:
        engine.dispose()
    assert counts == [1, 1, 1]


def test_downgrade_of_the_newest_revision_and_upgrade_again(empty_db: str) -> None:
    """Rolling back the newest migration keeps every job, leaves the
    previous revision's schema, and upgrading again gives the models' schema."""
    cfg = _config(empty_db)
    command.upgrade(cfg, "head")
    script = ScriptDirectory.from_config(cfg)
    newest = script.get_revision("head")
    assert newest is not None
    store = JobStore.from_url(empty_db)
    job, _ = store.create(small_deck(), title="kept")
    assert store.claim(job.id, "w@host") is not None
    dispose_engines()

    command.downgrade(cfg, "-1")
    engine = create_db_engine(empty_db)
    try:
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == (newest.down_revision)
            row = conn.exec_driver_sql(
                f"SELECT status, attempts FROM jobs WHERE id = '{job.id}'"
            ).one()
            events = conn.exec_driver_sql(
                f"SELECT count(*) FROM job_events WHERE job_id = '{job.id}'"
            ).scalar()
    finally:
        engine.dispose()
    assert tuple(row) == ("processing", 1)
    assert events == 2

    command.upgrade(cfg, "head")
    engine = create_db_engine(empty_db)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert context.get_current_revision() == newest.revision
    finally:
        engine.dispose()
    assert JobStore.from_url(empty_db).get(job.id).status == Status.PROCESSING
