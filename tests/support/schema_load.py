"""Write load on a PostgreSQL database while its schema changes, timing
every query, and the Alembic configuration that also sees the test-only
migrations (``tests/support/migrations``)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, text

from core.config import Settings
from storage import JobStore
from storage.db import normalize_url
from storage.migrate import alembic_config
from tests.support import ROOT
from tests.support.decks import small_deck

TEST_MIGRATIONS = ROOT / "tests" / "support" / "migrations"

#: Columns ``jobs`` has had since revision 0001: the plain-SQL load uses
#: only these, so it runs unchanged at every revision.
INSERT_JOB = text(
    "INSERT INTO jobs (id, status, stage, progress, attempts, title, deck, created_at)"
    " VALUES (:id, 'queued', 'queued', 0, 0, 'load', '{}', now())"
)
START_JOB = text(
    "UPDATE jobs SET status = 'processing', attempts = attempts + 1, started_at = now()"
    " WHERE id = :id AND status = 'queued'"
)
PROGRESS_JOB = text(
    "UPDATE jobs SET progress = 0.5, last_heartbeat = now()"
    " WHERE id = :id AND status = 'processing'"
)
FINISH_JOB = text(
    "UPDATE jobs SET status = 'completed', progress = 1, completed_at = now()"
    " WHERE id = :id AND status = 'processing'"
)
GET_JOB = text("SELECT id, status, progress, attempts FROM jobs WHERE id = :id")
LIST_JOBS = text("SELECT id, status FROM jobs ORDER BY created_at DESC, id DESC LIMIT 20")
COUNT_QUEUED = text("SELECT count(*) FROM jobs WHERE status = 'queued'")


def alembic_config_with_test_migrations(url: str, settings: Settings | None = None) -> Config:
    """The product's Alembic configuration, plus the test-only revisions on top."""
    cfg = alembic_config(url, settings)
    cfg.set_main_option(
        "version_locations",
        os.pathsep.join([str(ROOT / "migrations" / "versions"), str(TEST_MIGRATIONS)]),
    )
    return cfg


def revisions(cfg: Config) -> list[str]:
    """Every revision ``cfg`` knows, oldest first (one line of history)."""
    script = ScriptDirectory.from_config(cfg)
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


def preload(url: str, rows: int) -> None:
    """``rows`` finished jobs (revision 0001's columns), so that every
    migration works on a table that is not empty."""
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, status, stage, progress, attempts, title, deck,"
                    " created_at)"
                    " SELECT gen_random_uuid()::text, 'completed', 'done', 1, 1, 'old', '{}',"
                    " now() - n * interval '1 second' FROM generate_series(1, :rows) n"
                ),
                {"rows": rows},
            )
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Sample:
    """One timed query of the load."""

    kind: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


class _Threads:
    """The load itself, in the load's own process (see :class:`WriteLoad`)."""

    def __init__(self, url: str, threads: int = 3, store: bool = False) -> None:
        self.url = url
        self.threads = threads
        self.store = store
        self.samples: list[Sample] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._engine: Engine | None = None

    def __enter__(self) -> _Threads:
        if not self.store:
            self._engine = create_engine(
                normalize_url(self.url), pool_size=self.threads, max_overflow=0
            )
        for n in range(self.threads):
            target = self._run_store if self.store else self._run_sql
            thread = threading.Thread(target=self._guard, args=(target, n), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=30)
        if self._engine is not None:
            self._engine.dispose()

    def _guard(self, target: Callable[[int], None], n: int) -> None:
        try:
            target(n)
        except BaseException as error:
            self.errors.append(error)

    def _time(self, kind: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        result = call(*args, **kwargs)
        end = time.monotonic()
        with self._lock:
            self.samples.append(Sample(kind, start, end))
        return result

    def _run_sql(self, _n: int) -> None:
        assert self._engine is not None
        with self._engine.connect() as conn:
            while not self._stop.is_set():
                job = {"id": str(uuid.uuid4())}
                self._time("insert", _returns(conn, INSERT_JOB, job))
                self._time("claim", _returns(conn, START_JOB, job))
                self._time("get", _returns(conn, GET_JOB, job))
                self._time("heartbeat", _returns(conn, PROGRESS_JOB, job))
                self._time("list", _returns(conn, LIST_JOBS, {}))
                self._time("count", _returns(conn, COUNT_QUEUED, {}))
                self._time("complete", _returns(conn, FINISH_JOB, job))

    def _run_store(self, n: int) -> None:
        store = JobStore.from_url(self.url)
        deck = small_deck()
        worker = f"load{n}@migrations"
        while not self._stop.is_set():
            job, _ = self._time("submit", store.create, deck, title="load")
            claimed = self._time("claim", store.claim_next, worker)
            self._time("get", store.get, job.id)
            self._time("list", store.list_jobs, limit=20)
            if claimed is not None:
                self._time(
                    "complete",
                    store.complete,
                    claimed.id,
                    claimed.attempts,
                    video_url=f"/v1/jobs/{claimed.id}/video",
                    thumbnail_url=f"/v1/jobs/{claimed.id}/thumbnail",
                    slide_image_path="slides",
                )


def _load_process(url: str, threads: int, store: bool, ready: Any, stop: Any, results: Any) -> None:
    load = _Threads(url, threads, store)
    with load:
        ready.set()
        stop.wait()
    results.put(
        (
            [(s.kind, s.start, s.end) for s in load.samples],
            [repr(e) for e in load.errors],
        )
    )


class WriteLoad:
    """``threads`` threads that insert, move on and read ``jobs`` rows
    without pause, each query its own transaction and timed (submit, claim,
    heartbeat, complete, get, list). ``store=True`` goes through the app's
    :class:`JobStore` (the schema must be at a revision the store knows);
    otherwise plain SQL on the columns every revision has.

    They run in a process of their own, so the migration's Python work in
    the test process never holds them up (the samples come back when the
    load stops; ``time.monotonic`` is one clock for both processes)."""

    def __init__(self, url: str, threads: int = 3, store: bool = False) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._ready = self._context.Event()
        self._stop = self._context.Event()
        self._results = self._context.Queue()
        self._process = self._context.Process(
            target=_load_process,
            args=(url, threads, store, self._ready, self._stop, self._results),
            daemon=True,
        )
        self.samples: list[Sample] = []
        self.errors: list[str] = []

    def __enter__(self) -> WriteLoad:
        self._process.start()
        if not self._ready.wait(60):
            self._process.kill()
            raise AssertionError("the load process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            samples, self.errors = self._results.get(timeout=60)
        finally:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
        self.samples = [Sample(kind, start, end) for kind, start, end in samples]

    def during(self, start: float, end: float) -> list[Sample]:
        """The samples whose query spent most of its time in ``[start, end]``
        (its midpoint falls there): a query held up by a migration counts
        for that one, not for the next, which it may overlap by a moment.
        Known once the load has stopped."""
        return [s for s in self.samples if start <= (s.start + s.end) / 2 <= end]

    def check(self) -> None:
        """Fail if the load process died, or (once stopped) if a query failed."""
        if self._process.exitcode not in (None, 0):
            raise AssertionError(f"the load process died ({self._process.exitcode})")
        if self.errors:
            raise AssertionError(f"the load failed: {self.errors[0]}")


def _returns(conn: Connection, statement: Any, params: dict[str, Any]) -> Callable[[], Any]:
    def call() -> Any:
        result = conn.execute(statement, params)
        rows = result.fetchall() if result.returns_rows else result.rowcount
        conn.commit()
        return rows

    return call


@dataclass(frozen=True)
class Window:
    """One migration step applied under load, and the worst query it saw."""

    revision: str
    seconds: float
    queries: int
    worst: float
    worst_kind: str

    def line(self) -> str:
        return (
            f"{self.revision:>24}: migration {self.seconds * 1000:7.0f} ms,"
            f" {self.queries:5d} load queries, worst {self.worst * 1000:6.0f} ms"
            f" ({self.worst_kind})"
        )


def window(load: WriteLoad, revision: str, start: float, end: float) -> Window:
    """What the load saw while ``revision`` was applied between ``start`` and ``end``."""
    samples = load.during(start, end)
    worst = max(samples, key=lambda s: s.seconds, default=None)
    return Window(
        revision,
        end - start,
        len(samples),
        worst.seconds if worst else 0.0,
        worst.kind if worst else "-",
    )
