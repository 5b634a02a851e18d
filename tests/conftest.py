"""Fixtures on real services: PostgreSQL, Redis, SQLite, Celery workers, ffmpeg.

Each run creates its own PostgreSQL database and takes a Redis database index
no other run holds, so concurrent runs never collide. With
``SLIDEFARM_REQUIRE_SERVICES=1`` (CI) a service that is not reachable fails
the run instead of skipping its tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from core.config import Settings
from storage import JobStore
from storage.db import create_db_engine, dispose_engines
from storage.models import Base

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DECK = ROOT / "examples" / "sample-deck.json"

PG_ADMIN_URL = os.environ.get(
    "SLIDEFARM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("SLIDEFARM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_INDEXES = range(4, 16)
REQUIRE_SERVICES = os.environ.get("SLIDEFARM_REQUIRE_SERVICES", "") not in ("", "0", "false")


def unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (SLIDEFARM_REQUIRE_SERVICES is set)", pytrace=False)
    pytest.skip(message)


def alembic_upgrade(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg2://", 1),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """An AUTOCOMMIT engine on the PostgreSQL server's admin database."""
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as error:
        engine.dispose()
        unavailable("PostgreSQL", error)
    yield engine
    engine.dispose()


def create_pg_database(admin: Any, prefix: str = "slidefarm_test") -> str:
    """A new empty database; returns its plain ``postgresql://`` URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(admin: Any, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url(pg_server: Any) -> Iterator[str]:
    """This run's PostgreSQL database, migrated to head."""
    url = create_pg_database(pg_server)
    alembic_upgrade(url)
    yield url
    drop_pg_database(pg_server, url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database index that no other test run holds, flushed for this run."""
    lock_key = "slidefarm:test-run-lock"
    token = f"{socket.gethostname()}:{os.getpid()}"
    try:
        probe = redis.Redis.from_url(f"{REDIS_BASE_URL}/0", socket_timeout=3)
        probe.ping()
        probe.close()
    except Exception as error:
        unavailable("Redis", error)
    for index in REDIS_INDEXES:
        client = redis.Redis.from_url(f"{REDIS_BASE_URL}/{index}")
        if client.set(lock_key, token, nx=True, ex=3600):
            for key in client.scan_iter():
                if key != lock_key.encode():
                    client.delete(key)
            try:
                yield f"{REDIS_BASE_URL}/{index}"
            finally:
                for key in client.scan_iter():
                    if key != lock_key.encode():
                        client.delete(key)
                if client.get(lock_key) == token.encode():
                    client.delete(lock_key)
                client.close()
            return
        client.close()
    pytest.fail("every Redis test index is taken by other runs")


def flush_run_index(url: str) -> None:
    """Empty this run's Redis index (queues, unacked messages), keeping its lock."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter():
        if key != b"slidefarm:test-run-lock":
            client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test that needs one."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    alembic_upgrade(f"sqlite:///{path}")
    dispose_engines()
    return path


def _truncate(url: str) -> None:
    engine = create_db_engine(url)
    with engine.begin() as conn:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables}"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "slidefarm.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
    else:
        url: str = request.getfixturevalue("pg_url")
        _truncate(url)
        yield url
    dispose_engines()


@pytest.fixture
def store(db_url: str) -> JobStore:
    return JobStore.from_url(db_url)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings for in-process API tests: the backend's database and a
    filesystem broker in this test's folder."""
    return Settings(
        DATABASE_URL=db_url,
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
        **NO_LIMITS,
    )


def admin_token(url: str, tenant: str = "default") -> str:
    """A new admin key on the database at ``url``."""
    from storage.access import AccessStore

    return AccessStore(JobStore.from_url(url)).create_key(tenant, admin=True).token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def app(settings: Settings) -> Any:
    """A fresh API app on this test's database and embedded broker."""
    from api import create_app

    return create_app({"TESTING": True, "SETTINGS": settings})


def admin_client(app: Any) -> Any:
    """A test client that, when the app needs keys, sends an admin key of
    the ``default`` tenant with every request."""
    test_client = app.test_client()
    settings = app.extensions["slidefarm"].settings
    if settings.auth_required:
        token = admin_token(settings.database_url)
        test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return test_client


@pytest.fixture
def client(app: Any) -> Any:
    """:func:`admin_client` of the test's app (tests of access itself build
    their own clients and keys)."""
    return admin_client(app)


@pytest.fixture
def anonymous_client(app: Any) -> Any:
    return app.test_client()


def sample_deck() -> dict[str, Any]:
    deck: dict[str, Any] = json.loads(SAMPLE_DECK.read_text(encoding="utf-8"))
    return deck


def small_deck(slides: int = 3, duration: float = 1.0, **options: Any) -> dict[str, Any]:
    return {
        "title": "A small deck",
        "slides": [
            {"title": f"Slide {n}", "body": f"Body of slide {n}", "bullets": ["a", "b"],
             "duration": duration}
            for n in range(1, slides + 1)
        ],
        "options": {"resolution": "480p", **options},
    }


# -- processes -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with its log, stopped gracefully (then killed)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL, timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Stack:
    """Real API (gunicorn) and worker (celery) processes sharing one environment."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        #: An admin key every request sends (None: the stack runs open).
        self.token: str | None = None
        if env.get("DATABASE_URL", "").startswith("postgresql") and \
                env.get("SLIDEFARM_AUTH") != "off":
            self.token = admin_token(env["DATABASE_URL"])
        self.procs: list[Proc] = []
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api: Proc | None = None
        self._count = 0

    def start_api(self) -> Proc:
        self._count += 1
        proc = Proc(f"api-{self._count}", [
            sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "2", "--threads", "8",
            "-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "5", "api:create_app()",
        ], self.env, self.log_dir)
        self.procs.append(proc)
        self.api = proc
        self.wait_ready(proc)
        return proc

    def start_worker(self, name: str, concurrency: int = 2,
                     env: dict[str, str] | None = None) -> Proc:
        """``celery -A workers worker -n NAME`` (``NAME@%h`` unless it names a host)."""
        self._count += 1
        node = name if "@" in name else f"{name}@%h"
        proc = Proc(f"worker-{name.split('@')[0]}-{self._count}", [
            sys.executable, "-m", "celery", "-A", "workers", "worker", "-n", node,
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip",
            "--without-mingle",
        ], {**self.env, **(env or {})}, self.log_dir)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{proc.name} not ready:\n{proc.log()[-3000:]}")

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        auth = bearer(self.token) if self.token else {}
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **auth, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
                return resp.status, json.loads(raw) if "json" in ctype else raw
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def wait_final(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, job = self.request("GET", f"/v1/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            time.sleep(0.2)
        logs = "\n".join(p.log()[-2000:] for p in self.procs)
        raise AssertionError(f"job {job_id} not final after {timeout}s: {job}\n{logs}")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                try:
                    os.killpg(proc.popen.pid, signal.SIGCONT)  # a paused worker must stop too
                except ProcessLookupError:
                    pass
            proc.stop()

    def wait_for(self, job_id: str, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        """Poll the job until ``predicate(job)`` holds."""
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, job = self.request("GET", f"/v1/jobs/{job_id}")
            if status == 200 and predicate(job):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never matched: {job}")


#: Limits out of the way of tests about other things (tests of limits set their own).
NO_LIMITS = {
    "SLIDEFARM_MAX_ACTIVE_JOBS": "100000",
    "SLIDEFARM_SUBMIT_RATE": "100000",
    "SLIDEFARM_SUBMIT_BURST": "100000",
}


def stack_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLIDEFARM_", "DATABASE_URL", "CELERY_", "REDIS_URL"))}
    env.update(NO_LIMITS)
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RedisServer:
    """A private ``redis-server`` on a spare port that keeps nothing on disk,
    so a test can stop it, restart it empty, or cut it off."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart_empty(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server", FileNotFoundError("redis-server not installed"))
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


#: Short intervals so recovery happens within seconds (every interval accepts fractions).
FAST_RECOVERY = {
    "SLIDEFARM_HEARTBEAT_INTERVAL": "0.2",
    "SLIDEFARM_STALE_AFTER": "2",
    "SLIDEFARM_DISPATCH_TIMEOUT": "2",
    "SLIDEFARM_SWEEP_INTERVAL": "0.25",
    "SLIDEFARM_ORPHAN_SCAN_INTERVAL": "1",
    "SLIDEFARM_RETRY_BACKOFF": "0.2",
}


def make_stack(pg_url: str, broker_url: str, tmp_path: Path, **extra: str) -> Stack:
    _truncate(pg_url)
    env = stack_env(
        DATABASE_URL=pg_url,
        CELERY_BROKER_URL=broker_url,
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
        **{**FAST_RECOVERY, **extra},
    )
    return Stack(env, tmp_path)


@pytest.fixture
def fault_stack(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """PostgreSQL + Redis with recovery intervals of seconds."""
    flush_run_index(redis_url)
    stack = make_stack(pg_url, redis_url, tmp_path)
    try:
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture
def pg_redis_stack(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """The production shape: PostgreSQL, Redis, gunicorn and celery processes."""
    _truncate(pg_url)
    flush_run_index(redis_url)
    env = stack_env(
        DATABASE_URL=pg_url,
        CELERY_BROKER_URL=redis_url,
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
        SLIDEFARM_HEARTBEAT_INTERVAL="0.5",
    )
    stack = Stack(env, tmp_path)
    try:
        yield stack
    finally:
        stack.stop_all()
