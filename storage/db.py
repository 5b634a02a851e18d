"""Engines built from ``DATABASE_URL`` (the job store runs Core statements on them).

PostgreSQL gets a pre-pinged connection pool; SQLite gets WAL and a busy
timeout so that API and worker processes can share one file. Engines are
cached per process: a forked Celery child never reuses its parent's sockets.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

from storage.config import parse_database_url

SQLITE_BUSY_TIMEOUT_MS = 30_000

#: A host cut off from the database fails its queries within seconds instead
#: of hanging on TCP retransmissions for many minutes (the API answers 503;
#: workers retry and, past SLIDEFARM_STALE_AFTER, are recovered elsewhere).
PG_CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}

_engines: dict[tuple[int, str], Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """``url`` with its scheme in canonical form (see
    :func:`~storage.config.parse_database_url`) and the driver slidefarm
    ships for a plain ``postgresql://`` (or ``postgres://``) URL.

    SQLAlchemy 2.1 maps the bare scheme to psycopg 3; the project ships
    psycopg2, so the scheme is made explicit.
    """
    parsed = parse_database_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def create_db_engine(url: str) -> Engine:
    """A new engine for ``url``, configured for slidefarm's access pattern."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=5,
        max_overflow=10,
        pool_recycle=1800,
        connect_args=PG_CONNECT_ARGS if backend == "postgresql" else {},
    )
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


#: A pooled connection idle longer than this is pinged before it is handed
#: out; one back from use more recently is trusted (a failure on it still
#: surfaces as DatabaseUnavailable and invalidates it). Pinging every
#: checkout doubled the round trips of the hot paths.
PING_AFTER_IDLE = 1.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    last = record.info.get("checked_in")
    if last is not None and time.monotonic() - last < PING_AFTER_IDLE:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as error:
        # The pool drops this connection and checks out another (a fresh one
        # after a restart of the server).
        raise exc.DisconnectionError(f"stale pooled connection: {error}") from error


def get_engine(url: str) -> Engine:
    """The engine for ``url`` in this process, created on first use."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = create_db_engine(url)
                _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Drop every pooled connection of this process (tests, shutdown)."""
    with _lock:
        for (pid, _url), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
            del _engines[(pid, _url)]
