"""Schema upgrades and whole-database copies (the SQLite-to-PostgreSQL move).

Migrations run while traffic runs (docs/design.md, "Schema changes"): on
PostgreSQL each migration step is its own transaction, begun with ``SET
LOCAL lock_timeout`` and ``statement_timeout`` (transaction-scoped, so they
also hold behind PgBouncer's transaction pooling), and a step that timed out
waiting for a lock is rolled back, releasing every lock it held, and run
again after a pause: a long transaction elsewhere makes the migration wait,
never the traffic queued behind the migration's lock request.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import Connection, event, exc, insert, select

from core.config import Settings, get_settings
from storage.db import create_db_engine
from storage.models import (
    counters_table,
    deliveries_table,
    events_table,
    files_table,
    jobs_table,
    keys_table,
    tenants_table,
)

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 500
#: SQLSTATE ``lock_not_available``: "canceling statement due to lock timeout".
LOCK_NOT_AVAILABLE = "55P03"
#: Pause before the first retry of a step that timed out on a lock; it
#: doubles with each retry up to :data:`MAX_RETRY_PAUSE`.
FIRST_RETRY_PAUSE = 0.5
MAX_RETRY_PAUSE = 10.0

log = logging.getLogger("slidefarm.migrate")


def alembic_config(url: str, settings: Settings | None = None) -> Config:
    """Alembic's configuration for ``url`` (the project's alembic.ini); the
    migration timeouts come from ``settings`` (default: the environment's)."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    if settings is not None:
        cfg.attributes["settings"] = settings
    return cfg


def upgrade(url: str, settings: Settings | None = None) -> None:
    """``alembic upgrade head`` on ``url``."""
    command.upgrade(alembic_config(url, settings), "head")


def _milliseconds(seconds: float) -> int:
    return max(round(seconds * 1000), 1) if seconds > 0 else 0


@contextmanager
def guarded_transactions(connection: Connection, settings: Settings) -> Iterator[None]:
    """While inside, every transaction ``connection`` begins on PostgreSQL
    starts with ``SET LOCAL lock_timeout`` and ``statement_timeout`` from
    ``settings``. Statements in autocommit (``CREATE INDEX CONCURRENTLY``,
    ``VALIDATE CONSTRAINT`` in an autocommit block) are left unbounded: they
    hold no lock that reads or writes wait for."""
    if connection.dialect.name != "postgresql":
        yield
        return
    guard = (
        f"SET LOCAL lock_timeout = {_milliseconds(settings.migration_lock_timeout)};"
        f" SET LOCAL statement_timeout = {_milliseconds(settings.migration_statement_timeout)}"
    )

    def begin(conn: Connection) -> None:
        # Runs before the driver's (implicit) BEGIN: the first statement on
        # the raw connection opens the transaction the settings belong to.
        dbapi = conn.connection.dbapi_connection
        if dbapi is None or getattr(dbapi, "autocommit", False):
            return
        cursor = dbapi.cursor()
        try:
            cursor.execute(guard)
        finally:
            cursor.close()

    event.listen(connection, "begin", begin)
    try:
        yield
    finally:
        event.remove(connection, "begin", begin)


def lock_timed_out(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL giving up on a lock (``lock_timeout``)."""
    orig = getattr(error, "orig", None)
    return getattr(orig, "pgcode", None) == LOCK_NOT_AVAILABLE


def run_migrations(
    context: EnvironmentContext,
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """``context.run_migrations()`` (configured with
    ``transaction_per_migration``), running again the step that timed out
    waiting for a lock: its transaction is rolled back, so the locks it held
    are released while it pauses, and the steps committed before it stay
    applied. At most ``settings.migration_lock_retries`` retries, each
    logged; then the error is raised."""
    tries = settings.migration_lock_retries + 1
    for attempt in itertools.count(1):
        try:
            with context.begin_transaction():
                context.run_migrations()
            return
        except exc.OperationalError as error:
            if not lock_timed_out(error) or attempt >= tries:
                raise
            connection = context.get_bind()
            if connection.in_transaction():
                connection.rollback()
            heads = context.get_context().get_current_heads()
            connection.rollback()  # no transaction left open while it pauses
            statement = " ".join(str(error.statement or "").split())[:120]
            pause = min(FIRST_RETRY_PAUSE * 2 ** (attempt - 1), MAX_RETRY_PAUSE)
            log.warning(
                "migration step after revision %s waited more than %s s for a lock"
                " (%s); rolled back, its locks released; retry %d of %d in %.1f s",
                ",".join(heads) or "base",
                settings.migration_lock_timeout,
                statement,
                attempt,
                tries - 1,
                pause,
            )
            sleep(pause)


def migration_settings(cfg: Config) -> Settings:
    """The settings a migration run uses: the ones handed to
    :func:`alembic_config`, else the environment's."""
    settings = cfg.attributes.get("settings")
    return settings if isinstance(settings, Settings) else get_settings()


def copy_database(source: str, target: str) -> dict[str, int]:
    """Copy every tenant and API key, the metric counters of deleted jobs, and
    every job with its file records, history and webhook deliveries, from
    ``source`` to ``target`` (both migrated). Rows already in ``target`` are
    left alone, so a copy can be run again after an interruption. Returns
    rows copied."""
    src, dst = create_db_engine(source), create_db_engine(target)
    copied = {
        "tenants": 0,
        "keys": 0,
        "counters": 0,
        "jobs": 0,
        "files": 0,
        "events": 0,
        "deliveries": 0,
    }
    try:
        with src.connect() as read:
            # Tenants and keys first (keys refer to tenants; jobs name owners);
            # the counters keep /metrics monotonic across the move.
            for name, table, key in (
                ("tenants", tenants_table, tenants_table.c.name),
                ("keys", keys_table, keys_table.c.id),
                ("counters", counters_table, counters_table.c.name),
            ):
                rows = read.execute(select(table)).mappings().all()
                with dst.begin() as write:
                    present = set(write.execute(select(key)).scalars())
                    fresh = [dict(r) for r in rows if r[key.name] not in present]
                    if fresh:
                        write.execute(insert(table), fresh)
                copied[name] += len(fresh)
            last_id = ""
            while True:
                rows = (
                    read.execute(
                        select(jobs_table)
                        .where(jobs_table.c.id > last_id)
                        .order_by(jobs_table.c.id)
                        .limit(CHUNK)
                    )
                    .mappings()
                    .all()
                )
                if not rows:
                    break
                last_id = rows[-1]["id"]
                ids = [r["id"] for r in rows]
                with dst.begin() as write:
                    present = set(
                        write.execute(
                            select(jobs_table.c.id).where(jobs_table.c.id.in_(ids))
                        ).scalars()
                    )
                    fresh = [dict(r) for r in rows if r["id"] not in present]
                    if not fresh:
                        continue
                    fresh_ids = [r["id"] for r in fresh]
                    write.execute(insert(jobs_table), fresh)
                    files = [
                        dict(r)
                        for r in read.execute(
                            select(files_table).where(files_table.c.job_id.in_(fresh_ids))
                        ).mappings()
                    ]
                    if files:
                        write.execute(insert(files_table), files)
                    events = [
                        {k: v for k, v in r.items() if k != "id"}
                        for r in read.execute(
                            select(events_table)
                            .where(events_table.c.job_id.in_(fresh_ids))
                            .order_by(events_table.c.id)
                        ).mappings()
                    ]
                    if events:
                        write.execute(insert(events_table), events)
                    deliveries = [
                        {k: v for k, v in r.items() if k != "id"}
                        for r in read.execute(
                            select(deliveries_table)
                            .where(deliveries_table.c.job_id.in_(fresh_ids))
                            .order_by(deliveries_table.c.id)
                        ).mappings()
                    ]
                    if deliveries:
                        write.execute(insert(deliveries_table), deliveries)
                copied["jobs"] += len(fresh)
                copied["files"] += len(files)
                copied["events"] += len(events)
                copied["deliveries"] += len(deliveries)
    finally:
        src.dispose()
        dst.dispose()
    return copied
