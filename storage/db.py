"""The database every store works on: engines built from ``DATABASE_URL``,
and :class:`Database`, their units of work.

PostgreSQL gets a small pool sized by the process's role (the connection
budget: an API process keeps 2 connections, every worker process 1, see
:func:`pool_budget`), whose idle connections are pinged before use, each
connection named for its process (``application_name``); SQLite gets WAL and
a busy timeout so that API and worker processes can share one file. Engines
are cached per process: a forked Celery child never reuses its parent's
sockets. :class:`Database` turns driver errors into
:mod:`storage.errors` and announces committed job changes on the change feed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from psycopg2.extensions import STATUS_READY
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool
from sqlalchemy.util.queue import Empty, Full

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


#: Seconds an API process keeps a connection opened beyond its pool's size
#: after its last use, for the next request to take instead of opening another.
OVERFLOW_LINGER = 5.0


@dataclass(frozen=True, slots=True)
class PoolBudget:
    """How many PostgreSQL connections one process may hold: ``size`` kept
    open while idle, ``max_overflow`` more while all are in use, each closed
    ``linger`` seconds after it was last given back (0: at once)."""

    size: int
    max_overflow: int
    linger: float = 0.0

    @property
    def most(self) -> int:
        """The most connections the process ever holds at once."""
        return self.size + self.max_overflow


#: What each kind of process holds (README, "Connection budget"). An API
#: process keeps 2 and serves a burst with up to 10 (a request thread uses
#: one at a time; gunicornconf runs 4), each kept :data:`OVERFLOW_LINGER`
#: seconds after its last use, for the next request (opening one per
#: request under load cost more than the requests); a render process 1,
#: shared by the render and its heartbeats (a job's, a segment's), which wait for it while
#: a write of the render's holds it (milliseconds: no overflow connection,
#: whose opening and closing each time they meet made a farm of render
#: hosts overshoot its budget); a worker's main process 1 (its sweeper thread,
#: which also closes it after every sweep, and registry writes); anything
#: else (the CLI, scripts, tests) 1, and more while its threads need them.
ROLE_BUDGETS: dict[str, PoolBudget] = {
    "api": PoolBudget(size=2, max_overflow=8, linger=OVERFLOW_LINGER),
    "worker": PoolBudget(size=1, max_overflow=2),
    "render": PoolBudget(size=1, max_overflow=0),
    "other": PoolBudget(size=1, max_overflow=14),
}

_role = "other"


def set_process_role(role: str) -> None:
    """Name what this process is (``api``, ``worker``: a worker's main
    process, ``render``: one of its pool processes, ``other``), before its
    first engine: its pool's budget and its connections' ``application_name``
    follow."""
    global _role
    if role not in ROLE_BUDGETS:
        raise ValueError(f"unknown process role {role!r}")
    _role = role


def process_role() -> str:
    """This process's role (see :func:`set_process_role`)."""
    return _role


def pool_budget(settings: Settings | None = None, role: str | None = None) -> PoolBudget:
    """The budget of a process of ``role`` (this one's by default):
    ``SLIDEFARM_DB_POOL_SIZE`` and ``SLIDEFARM_DB_MAX_OVERFLOW`` when set,
    else the role's."""
    default = ROLE_BUDGETS[role or _role]
    if settings is None:
        return default
    return PoolBudget(
        size=settings.db_pool_size if settings.db_pool_size is not None else default.size,
        max_overflow=(
            settings.db_max_overflow
            if settings.db_max_overflow is not None
            else default.max_overflow
        ),
        linger=default.linger,
    )


def application_name() -> str:
    """What this process's connections are called in ``pg_stat_activity``:
    ``slidefarm-<role>-<pid>``, so every server connection is attributable."""
    return f"slidefarm-{_role}-{os.getpid()}"


class BudgetPool(QueuePool):
    """SQLAlchemy's queue pool, whose connections beyond its size may linger
    ``linger`` seconds after their last use before they are closed (the
    queue pool closes them as soon as they are given back), and
    which can close the connections it holds idle: a process that will not
    need the database for a while (a worker's main process between sweeps,
    a render process waiting for a wake-up) then holds none.

    Closing an overflow connection at once made an API process under load
    open a new one for every few requests: a new server process each time,
    which cost PostgreSQL more than the requests' own statements (measured:
    one connection opened per 11 submissions halved their rate). The most
    connections a process holds is unchanged; while idle it still holds the
    pool's size, once the lingering ones are closed."""

    def __init__(self, *args: Any, linger: float = 0.0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.linger = linger
        # (when given back, entry) of the overflow connections kept open, oldest first
        self._parked: list[tuple[float, Any]] = []
        self._parked_lock = threading.Lock()
        self._reaper: threading.Thread | None = None

    def _do_return_conn(self, record: Any) -> None:
        if self.linger <= 0:
            super()._do_return_conn(record)
            return
        try:
            self._pool.put(record, False)
            return
        except Full:
            pass
        reaper = None
        with self._parked_lock:
            self._parked.append((time.monotonic(), record))
            if self._reaper is None:  # one reaper while any is parked
                reaper = self._reaper = threading.Thread(
                    target=self._reap, name="db-pool-linger", daemon=True
                )
        if reaper is not None:
            reaper.start()

    def _do_get(self) -> Any:
        try:
            return self._pool.get(False)
        except Empty:
            pass
        with self._parked_lock:
            if self._parked:
                return self._parked.pop()[1]  # the one used last
        return super()._do_get()

    def _take_parked(self, older_than: float | None) -> list[Any]:
        """Remove and return the parked connections given back before
        ``older_than`` (monotonic; ``None``: all)."""
        with self._parked_lock:
            keep = [(t, r) for t, r in self._parked if older_than is not None and t >= older_than]
            gone = [r for t, r in self._parked if older_than is None or t < older_than]
            self._parked = keep
        return gone

    def _close_overflow(self, records: list[Any]) -> None:
        for record in records:
            try:
                record.close()
            finally:
                self._dec_overflow()

    def _reap(self) -> None:
        while True:
            time.sleep(self.linger / 2)
            self._close_overflow(self._take_parked(time.monotonic() - self.linger))
            with self._parked_lock:
                if not self._parked:
                    self._reaper = None
                    return

    def dispose(self) -> None:
        self._close_overflow(self._take_parked(None))
        super().dispose()

    def recreate(self) -> BudgetPool:
        pool = super().recreate()
        assert isinstance(pool, BudgetPool)
        pool.linger = self.linger
        return pool

    def checkedin(self) -> int:
        return super().checkedin() + len(self._parked)

    def checkedout(self) -> int:
        return super().checkedout() - len(self._parked)

    def close_idle(self) -> int:
        """Close every connection now checked in, lingering ones too; how
        many were closed. One checked out is untouched and comes back as usual."""
        parked = self._take_parked(None)
        self._close_overflow(parked)
        closed = len(parked)
        while True:
            try:
                record = self._pool.get(False)
            except Empty:
                return closed
            record.close()
            self._dec_overflow()  # as when a returned connection finds the pool full
            closed += 1


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


def create_db_engine(url: str, budget: PoolBudget | None = None) -> Engine:
    """A new engine for ``url``, configured for slidefarm's access pattern;
    on a server, a pool of ``budget`` (this process role's by default)."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    budget = budget or pool_budget()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        # No server-side prepared statements, session SET or LISTEN anywhere
        # (psycopg2 never prepares): PgBouncer's transaction pooling works.
        connect_args = {**PG_CONNECT_ARGS, "application_name": application_name()}
    engine = create_engine(
        url,
        poolclass=BudgetPool,
        pool_size=budget.size,
        max_overflow=budget.max_overflow,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    assert isinstance(engine.pool, BudgetPool)
    engine.pool.linger = budget.linger
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
        # In autocommit (psycopg2's switch, free outside a transaction): the
        # ping leaves no transaction open behind it.
        autocommit = getattr(dbapi_connection, "autocommit", None)
        if autocommit is False:
            dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
            if autocommit is False:
                dbapi_connection.autocommit = False
    except Exception as error:
        # The pool drops this connection and checks out another (a fresh one
        # after a restart of the server).
        raise exc.DisconnectionError(f"stale pooled connection: {error}") from error


def get_engine(url: str, budget: PoolBudget | None = None) -> Engine:
    """The engine for ``url`` in this process, created on first use (with
    ``budget``, or the role's)."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = create_db_engine(url, budget)
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
def _feed(url: str, ttl: float, local_staleness: float) -> ChangeFeed:
    return ChangeFeed(url, ttl, local_staleness)


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
    def from_url(
        cls,
        url: str,
        redis_url: str | None = None,
        cache_ttl: float = 5.0,
        budget: PoolBudget | None = None,
        local_staleness: float = 0.0,
    ) -> Database:
        """The process-wide engine for ``url``; with ``redis_url``, every
        change also invalidates the status cache and is announced on Redis
        pub/sub (and with ``local_staleness``, status reads keep what they
        read in memory under that bound: storage/status_cache.py)."""
        return cls(
            get_engine(url, budget),
            _feed(redis_url, cache_ttl, local_staleness) if redis_url else None,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database as ``settings`` describe it."""
        return cls.from_url(
            settings.database_url,
            settings.redis_url,
            settings.cache_ttl,
            pool_budget(settings),
            settings.local_cache_staleness,
        )

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
                    if self.engine.dialect.driver != "psycopg2":
                        yield conn.execution_options(isolation_level="AUTOCOMMIT")
                        return
                    # psycopg2's own switch, not SQLAlchemy's isolation level:
                    # putting that back when the connection returns to the
                    # pool sends a SET, a round trip as dear as the statement.
                    # Switched off again before SQLAlchemy ends its implicit
                    # transaction, whose ROLLBACK then has nothing to end.
                    raw: Any = conn.connection.dbapi_connection
                    if raw.status != STATUS_READY:  # a transaction left open
                        raw.rollback()
                    raw.autocommit = True
                    try:
                        yield conn
                    finally:
                        if not raw.closed:
                            raw.autocommit = False
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

    def release_idle(self) -> int:
        """Close the connections this process holds idle (a worker's main
        process after a sweep, a render process with nothing to run): the
        next unit of work opens one again. How many were closed."""
        pool = self.engine.pool
        return pool.close_idle() if isinstance(pool, BudgetPool) else 0

    def pool_use(self) -> dict[str, int]:
        """This process's pooled connections now: ``in_use`` (checked out),
        ``idle`` (held open for the next unit of work) and ``overflow``
        (open beyond the pool's size, in use or about to close); empty on
        SQLite's default pool."""
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):
            return {}
        return {
            "in_use": pool.checkedout(),
            "idle": pool.checkedin(),
            "overflow": max(pool.overflow(), 0),
        }

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
