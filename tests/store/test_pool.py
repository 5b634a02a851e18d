"""The connection budget of one process (storage/db.py): its pool's size by
role and settings, connections named for the process, overflow kept a few
seconds for the next burst and then closed, and idle connections closed on
request; on real PostgreSQL."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import text

from core.config import Settings
from storage.db import (
    OVERFLOW_LINGER,
    Database,
    PoolBudget,
    application_name,
    create_db_engine,
    pool_budget,
    process_role,
    set_process_role,
)


def test_each_role_has_its_budget_and_settings_override_it(tmp_path: Path) -> None:
    assert pool_budget(role="render") == PoolBudget(size=1, max_overflow=0)
    assert pool_budget(role="worker").size == 1
    assert pool_budget(role="api") == PoolBudget(size=2, max_overflow=8, linger=OVERFLOW_LINGER)
    settings = Settings(SLIDEFARM_DB_POOL_SIZE="3", SLIDEFARM_DB_MAX_OVERFLOW="0")
    assert pool_budget(settings, role="render") == PoolBudget(size=3, max_overflow=0)
    only_size = Settings(SLIDEFARM_DB_POOL_SIZE="4")
    assert pool_budget(only_size, role="api") == PoolBudget(4, 8, OVERFLOW_LINGER)


def test_a_process_keeps_its_pool_closes_its_overflow_and_lets_idle_ones_go(
    pg_url: str, pg_server: object
) -> None:
    # Another test in this process may have taken a worker's role (a worker
    # process's init signal): this one is a plain process's, and put back.
    previous = process_role()
    set_process_role("other")
    db = Database(create_db_engine(pg_url, PoolBudget(size=1, max_overflow=2, linger=0.4)))
    name = application_name()
    assert name == f"slidefarm-other-{os.getpid()}"

    def mine() -> int:
        with pg_server.connect() as conn:  # type: ignore[attr-defined]
            return int(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                    {"n": name},
                ).scalar_one()
            )

    def settles(count: int) -> bool:
        """The server shows ``count`` of this process's connections (a closed
        one's backend leaves pg_stat_activity a moment after the close)."""
        deadline = time.monotonic() + 5
        while mine() != count and time.monotonic() < deadline:
            time.sleep(0.02)
        return mine() == count

    try:
        with db.engine.connect() as a, db.engine.connect() as b:
            a.execute(text("SELECT 1"))
            b.execute(text("SELECT 1"))
            assert db.pool_use() == {"in_use": 2, "idle": 0, "overflow": 1}
            assert mine() == 2
        # The overflow connection lingers for the next burst, which takes it
        # (no new connection), then closes once unused for the linger.
        assert db.pool_use() == {"in_use": 0, "idle": 2, "overflow": 1}
        with db.engine.connect() as a, db.engine.connect() as b:
            a.execute(text("SELECT 1"))
            b.execute(text("SELECT 1"))
            assert db.pool_use() == {"in_use": 2, "idle": 0, "overflow": 1}
        assert db.pool_use() == {"in_use": 0, "idle": 2, "overflow": 1}
        assert mine() == 2
        time.sleep(1.0)  # the linger and the reaper's half-linger beat
        assert db.pool_use() == {"in_use": 0, "idle": 1, "overflow": 0}
        assert settles(1)
        assert db.release_idle() == 1
        assert db.pool_use() == {"in_use": 0, "idle": 0, "overflow": 0}
        assert settles(0)
        # The next unit of work opens one again, and the bound still holds.
        with db.transaction() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        with db.engine.connect() as a, db.engine.connect() as b, db.engine.connect() as c:
            for conn in (a, b, c):
                conn.execute(text("SELECT 1"))
            assert db.pool_use()["in_use"] == 3
        assert settles(3)  # two lingering
        assert db.release_idle() == 3  # lingering ones too
        assert settles(0)
    finally:
        db.engine.dispose()
        set_process_role(previous)
