"""The database every store works on: engines built from ``DATABASE_URL``,
and :class:`Database`, their units of work.

PostgreSQL gets a pool whose idle connections are pinged before use; SQLite
gets WAL and a busy timeout so that API and worker processes can share one
file. Engines are cached per process: a forked Celery child never reuses its
parent's sockets. :class:`Database` turns driver errors into
:mod:`storage.errors` and announces committed job changes on the change feed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

from core.config import Settings, parse_database_url
from core.redact import redact_secrets
from storage.errors import DatabaseUnavailable, StorageError
from storage.feed import ChangeFeed

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
    :func:`~core.config.parse_database_url`) and the driver slidefarm
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


@lru_cache(maxsize=8)
def _feed(url: str, ttl: float) -> ChangeFeed:
    return ChangeFeed(url, ttl)


def _unreachable(error: exc.DBAPIError) -> str:
    # The driver's message may quote the connection string: never its password.
    return redact_secrets(f"the database is not reachable: {error.orig}")


def _is_missing_schema(error: exc.DBAPIError) -> bool:
    message = str(error.orig).lower()
    return "no such table" in message or ("relation" in message and "does not exist" in message)


_NO_SCHEMA = "the database has no slidefarm schema: run `alembic upgrade head`"


class Database:
    """One database as every store uses it: its engine, units of work whose
    driver errors are :class:`~storage.errors.StorageError`, and the change
    feed that hears of each committed change to a job."""

    def __init__(self, engine: Engine, feed: ChangeFeed | None = None) -> None:
        self.engine = engine
        self.feed = feed

    @classmethod
    def from_url(cls, url: str, redis_url: str | None = None, cache_ttl: float = 5.0) -> Database:
        """The process-wide engine for ``url``; with ``redis_url``, every
        change also invalidates the status cache and is announced on Redis
        pub/sub."""
        return cls(get_engine(url), _feed(redis_url, cache_ttl) if redis_url else None)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database as ``settings`` describe it."""
        return cls.from_url(settings.database_url, settings.redis_url, settings.cache_ttl)

    @property
    def dialect(self) -> str:
        """The backend's name: ``postgresql`` or ``sqlite``."""
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, *, single: bool = False) -> Iterator[Connection]:
        """One unit of work; driver errors become :class:`StorageError` here
        (:class:`DatabaseUnavailable` when the database cannot be reached or
        the connection was lost).

        ``single``: the work is one statement (a read, or one conditional
        write), atomic by itself, so it runs in autocommit and skips the
        BEGIN and COMMIT round trips.
        """
        try:
            if single:
                with self.engine.connect() as conn:
                    yield conn.execution_options(isolation_level="AUTOCOMMIT")
                return
            with self.engine.begin() as conn:
                yield conn
        except exc.OperationalError as error:
            if _is_missing_schema(error):
                raise StorageError(_NO_SCHEMA) from error
            raise DatabaseUnavailable(_unreachable(error)) from error
        except exc.InterfaceError as error:
            raise DatabaseUnavailable(_unreachable(error)) from error
        except exc.DBAPIError as error:
            if _is_missing_schema(error):
                raise StorageError(_NO_SCHEMA) from error
            if error.connection_invalidated:
                raise DatabaseUnavailable(
                    redact_secrets(f"the database connection was lost: {error.orig}")
                ) from error
            raise

    def changed(self, job_id: str) -> None:
        """Announce that ``job_id`` changed (after the commit): its cached
        status is dropped and its event streams wake up."""
        if self.feed is not None:
            self.feed.changed(job_id)


class HasDatabase(Protocol):
    """A store that works on a :class:`Database` (the job store does)."""

    @property
    def db(self) -> Database:
        """The database it works on."""
        ...


def database_of(source: Database | HasDatabase) -> Database:
    """``source`` itself, or the database a store such as the job store works
    on: every store can be built from either."""
    return source if isinstance(source, Database) else source.db
