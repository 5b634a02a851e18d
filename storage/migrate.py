"""Schema upgrades and whole-database copies (the SQLite-to-PostgreSQL move)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import insert, select

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


def alembic_config(url: str) -> Config:
    """Alembic's configuration for ``url`` (the project's alembic.ini)."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str) -> None:
    """``alembic upgrade head`` on ``url``."""
    command.upgrade(alembic_config(url), "head")


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
