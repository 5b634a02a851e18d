"""Migrations run while traffic runs (PostgreSQL): every revision applied
under continuous write load keeps each load query under a bound; a long
transaction makes a migration step time out on its lock and retry, not the
traffic queue behind it; and an expand migration then its contract pass the
same bound under the app's own store."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, exc, inspect, text

from core.config import Settings
from storage.db import create_db_engine, normalize_url
from storage.migrate import guarded_transactions
from tests.support.online_rules import OFFLINE_URL, offline_sql, violations
from tests.support.schema_load import (
    WriteLoad,
    alembic_config_with_test_migrations,
    preload,
    revisions,
    window,
)
from tests.support.services import create_pg_database, drop_pg_database

#: No load query may take longer than this while a migration runs.
BOUND = 1.0
#: The migrations' lock_timeout in these tests: the longest the load may
#: queue behind a migration's lock request.
LOCK_TIMEOUT = 0.3
#: Rows in ``jobs`` before the migrations run. 0002 and 0003 (older than
#: the expand discipline) hold their lock for a scan and index builds whose
#: length grows with this; from 0008 on nothing does.
ROWS = 10_000
EXPAND, CONTRACT = "e1_expand_deploy_tag", "e2_contract_deploy_tag"


@pytest.fixture
def empty_pg(pg_server: Any) -> Iterator[str]:
    url = create_pg_database(pg_server, prefix="slidefarm_online")
    yield url
    drop_pg_database(pg_server, url)


@pytest.fixture
def migration_log() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("slidefarm.migrate")
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _settings(url: str) -> Settings:
    return Settings(DATABASE_URL=url, SLIDEFARM_MIGRATION_LOCK_TIMEOUT=str(LOCK_TIMEOUT))


def _product(all_revisions: list[str]) -> list[str]:
    return [r for r in all_revisions if r not in (EXPAND, CONTRACT)]


def _version(url: str) -> str:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar())
    finally:
        engine.dispose()


def test_each_migration_under_write_load_keeps_queries_under_the_bound(empty_pg: str) -> None:
    cfg = alembic_config_with_test_migrations(empty_pg, _settings(empty_pg))
    product = _product(revisions(cfg))
    command.upgrade(cfg, product[0])  # the tables the load writes to
    preload(empty_pg, ROWS)
    spans = []
    with WriteLoad(empty_pg, threads=3) as load:
        time.sleep(0.3)
        for revision in product[1:]:
            start = time.monotonic()
            command.upgrade(cfg, revision)
            spans.append((revision, start, time.monotonic()))
            load.check()
        time.sleep(0.1)
    load.check()
    seen = [window(load, *span) for span in spans]
    report = "\n".join(w.line() for w in seen)
    print(f"\nworst load query per migration ({ROWS} jobs, bound {BOUND} s):\n{report}")
    assert [w.revision for w in seen] == product[1:]
    assert all(w.queries > 0 for w in seen), report
    assert all(w.worst < BOUND for w in seen), report
    assert _version(empty_pg) == product[-1]


def test_expand_then_contract_under_the_apps_store_keeps_queries_under_the_bound(
    empty_pg: str,
) -> None:
    """The deploy's two schema steps (one added column plus its index, then
    the contract that removes what no code reads) under the store's own
    submit, claim, get, list and complete."""
    cfg = alembic_config_with_test_migrations(empty_pg, _settings(empty_pg))
    product = _product(revisions(cfg))
    command.upgrade(cfg, product[-1])
    preload(empty_pg, ROWS)
    spans = []
    with WriteLoad(empty_pg, threads=3, store=True) as load:
        began = time.monotonic()
        time.sleep(0.5)
        spans.append(("(no migration)", began, time.monotonic()))
        for revision in (EXPAND, CONTRACT):
            start = time.monotonic()
            command.upgrade(cfg, revision)
            spans.append((revision, start, time.monotonic()))
            time.sleep(0.2)  # the store keeps working on the new schema
            load.check()
    load.check()
    baseline, *seen = [window(load, *span) for span in spans]
    report = "\n".join(w.line() for w in [baseline, *seen])
    print(f"\nthe app's store under expand and contract ({ROWS} jobs):\n{report}")
    assert all(w.queries > 0 for w in seen), report
    assert all(w.worst < BOUND for w in seen), report
    assert _version(empty_pg) == CONTRACT
    assert sum(1 for s in load.samples if s.kind == "complete") > 0


def test_a_long_transaction_makes_the_migration_retry_not_the_traffic_queue(
    empty_pg: str, migration_log: list[logging.LogRecord]
) -> None:
    """The lock-queue problem: a migration waiting for ACCESS EXCLUSIVE
    behind a long transaction would hold every later query of the table
    behind it. With lock_timeout it gives up, releases its locks, waits, and
    tries again: the load waits at most about LOCK_TIMEOUT at a time, and the
    migration succeeds once the long transaction ends."""
    cfg = alembic_config_with_test_migrations(empty_pg, _settings(empty_pg))
    product = _product(revisions(cfg))
    # The newest revision that alters ``jobs`` itself (0010 only creates a
    # table whose key refers to it, which a reader does not block).
    altering = product.index("0009")
    command.upgrade(cfg, product[altering - 1])
    preload(empty_pg, 1_000)
    hold = 3.0
    blocker = create_engine(normalize_url(empty_pg))
    try:
        with WriteLoad(empty_pg, threads=3) as load, blocker.connect() as conn:
            time.sleep(0.3)
            # An idle transaction that read jobs keeps its ACCESS SHARE lock
            # (a report, a forgotten session) until it ends.
            conn.execute(text("SELECT count(*) FROM jobs")).scalar()
            began = time.monotonic()
            ender = threading.Timer(hold, conn.commit)
            ender.start()
            start = time.monotonic()
            command.upgrade(cfg, product[altering])
            end = time.monotonic()
            ender.join()
            load.check()
    finally:
        blocker.dispose()
    load.check()
    seen = window(load, product[altering], start, end)
    retries = [r.getMessage() for r in migration_log]
    print(f"\n{seen.line()}\n" + "\n".join(retries))
    assert end - began >= hold - 0.05, "the migration did not wait for the long transaction"
    assert retries, "no retry was logged"
    assert f"waited more than {LOCK_TIMEOUT} s for a lock" in retries[0]
    assert "ALTER TABLE jobs" in retries[0]
    assert seen.queries > 0
    assert seen.worst < BOUND < hold, seen.line()
    assert _version(empty_pg) == product[altering]


def test_retries_are_bounded_and_a_step_that_never_gets_its_lock_changes_nothing(
    empty_pg: str, migration_log: list[logging.LogRecord]
) -> None:
    """SLIDEFARM_MIGRATION_LOCK_RETRIES spent: the lock timeout is raised,
    and the step's transaction rolled back (the schema stays at the
    previous revision, with nothing of the step applied)."""
    settings = Settings(
        DATABASE_URL=empty_pg,
        SLIDEFARM_MIGRATION_LOCK_TIMEOUT="0.2",
        SLIDEFARM_MIGRATION_LOCK_RETRIES="1",
    )
    cfg = alembic_config_with_test_migrations(empty_pg, settings)
    product = _product(revisions(cfg))
    altering = product.index("0009")  # as above: it alters jobs
    command.upgrade(cfg, product[altering - 1])
    blocker = create_engine(normalize_url(empty_pg))
    try:
        with blocker.connect() as conn:
            conn.execute(text("SELECT count(*) FROM jobs")).scalar()
            with pytest.raises(exc.OperationalError, match="lock timeout"):
                command.upgrade(cfg, product[altering])
            conn.rollback()
    finally:
        blocker.dispose()
    assert len(migration_log) == 1
    assert "retry 1 of 1" in migration_log[0].getMessage()
    assert _version(empty_pg) == product[altering - 1]
    engine = create_db_engine(empty_pg)
    try:
        assert "batches" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_each_migration_transaction_begins_with_its_timeouts(empty_pg: str) -> None:
    """SET LOCAL, in every transaction the migration connection begins: the
    values end with the transaction (nothing leaks into a pooled session
    behind PgBouncer), and autocommit statements run without them."""
    settings = Settings(
        DATABASE_URL=empty_pg,
        SLIDEFARM_MIGRATION_LOCK_TIMEOUT="1.5",
        SLIDEFARM_MIGRATION_STATEMENT_TIMEOUT="7",
    )
    show = text("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
    engine = create_engine(normalize_url(empty_pg))
    try:
        with engine.connect() as conn, guarded_transactions(conn, settings):
            for _ in range(2):
                with conn.begin():
                    assert tuple(conn.execute(show).one()) == ("1500ms", "7s")
            conn.commit()
            auto = conn.execution_options(isolation_level="AUTOCOMMIT")
            assert tuple(auto.execute(show).one()) == ("0", "0")
    finally:
        engine.dispose()


def test_a_step_interrupted_after_its_first_commit_runs_again(empty_pg: str) -> None:
    """A step commits in parts (its transaction, then the concurrent
    builds) and is stamped at its end: run again after dying in between, it
    skips what exists and rebuilds an index a killed build left INVALID."""
    cfg = alembic_config_with_test_migrations(empty_pg, _settings(empty_pg))
    product = _product(revisions(cfg))
    command.upgrade(cfg, EXPAND)
    engine = create_db_engine(empty_pg)
    valid = text(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = 'ix_jobs_deploy_tag'"
    )
    try:
        with engine.begin() as conn:
            # What a CONCURRENTLY build killed halfway leaves, and a stamp
            # that never happened.
            conn.execute(
                text(
                    "UPDATE pg_index SET indisvalid = false"
                    " WHERE indexrelid = 'ix_jobs_deploy_tag'::regclass"
                )
            )
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": product[-1]})
        command.upgrade(cfg, EXPAND)
        with engine.connect() as conn:
            assert conn.execute(valid).scalar() is True
        command.downgrade(cfg, product[-2])  # and downgrades of both kinds
        command.upgrade(cfg, CONTRACT)
        assert _version(empty_pg) == CONTRACT
    finally:
        engine.dispose()


#: The first revision written under the expand/contract rules; the ones
#: before it predate them (see docs/design.md, "Schema changes").
FIRST_ONLINE = "0008"


def _steps() -> list[tuple[str, str]]:
    product = _product(revisions(alembic_config_with_test_migrations(OFFLINE_URL)))
    return list(itertools.pairwise(product))


def test_migrations_from_0008_keep_the_expand_rules() -> None:
    """What each revision emits for PostgreSQL: indexes on existing tables
    CONCURRENTLY, constraints NOT VALID then validated outside a
    transaction, no rewrite, nothing dropped."""
    steps = [(old, new) for old, new in _steps() if new >= FIRST_ONLINE]
    assert steps, "no revision to check"
    for old, new in steps:
        assert violations(offline_sql(new, old)) == [], new


def test_the_rules_catch_what_older_migrations_do() -> None:
    """The checker can fail: 0002 backfills under ACCESS EXCLUSIVE and 0003
    builds a unique index and indexes of ``jobs`` under its lock."""
    found_0002 = violations(offline_sql("0002", "0001"))
    found_0003 = violations(offline_sql("0003", "0002"))
    assert any("rows rewritten" in v for v in found_0002), found_0002
    assert any("index built under a lock" in v for v in found_0003), found_0003
    assert any("unique index built" in v for v in found_0003), found_0003


def test_the_expand_and_contract_examples_keep_their_rules() -> None:
    head = _product(revisions(alembic_config_with_test_migrations(OFFLINE_URL)))[-1]
    assert violations(offline_sql(EXPAND, head)) == []
    contract = offline_sql(CONTRACT, EXPAND)
    assert violations(contract, contract=True) == []
    assert any("destructive change" in v for v in violations(contract))
