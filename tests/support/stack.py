"""Real processes: the API (gunicorn) and workers (celery) as a stack, and a
private redis-server, each with its log, stopped gracefully (then killed)."""

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import ROOT
from tests.support.clients import admin_token, bearer
from tests.support.services import NO_LIMITS, flush_run_index, truncate_tables, unavailable


def free_port() -> int:
    """A TCP port of loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, message: str) -> None:
    """Poll ``predicate`` until it holds; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(message)


def gunicorn_argv(
    bind: str,
    *options: str,
    workers: int = 2,
    threads: int = 8,
    app: str = "api:create_app()",
) -> list[str]:
    """gunicorn serving ``app`` (the API unless told) on ``bind`` with gthread
    workers (``options`` before the app, e.g. ``--graceful-timeout 5`` or
    ``-c python:gunicornconf``)."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "gthread",
        "-w",
        str(workers),
        "--threads",
        str(threads),
        "-b",
        bind,
        *options,
        app,
    ]


def celery_worker_argv(node: str, concurrency: int) -> list[str]:
    """``celery -A workers worker -n NODE``, without gossip and mingle."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "worker",
        "-n",
        node,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


class Proc:
    """A child process with its log, stopped gracefully (then killed)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        cwd: Path = ROOT,
    ) -> None:
        """``args`` run in ``cwd`` (this checkout; another release's tree
        runs its own code with this environment's packages)."""
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

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


def kill(proc: Proc) -> None:
    """SIGKILL the worker and its pool children: a host that dies."""
    os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait()


class Stack:
    """Real API (gunicorn) and worker (celery) processes sharing one environment."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        #: An admin key every request sends (None: the stack runs open).
        self.token: str | None = None
        if (
            env.get("DATABASE_URL", "").startswith("postgresql")
            and env.get("SLIDEFARM_AUTH") != "off"
        ):
            self.token = admin_token(env["DATABASE_URL"])
        self.procs: list[Proc] = []
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api: Proc | None = None
        self._count = 0

    def start_api(self) -> Proc:
        self._count += 1
        proc = Proc(
            f"api-{self._count}",
            gunicorn_argv(f"127.0.0.1:{self.port}", "--graceful-timeout", "5"),
            self.env,
            self.log_dir,
        )
        self.procs.append(proc)
        self.api = proc
        self.wait_ready(proc)
        return proc

    def start_worker(
        self, name: str, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> Proc:
        """``celery -A workers worker -n NAME`` (``NAME@%h`` unless it names a host)."""
        self._count += 1
        node = name if "@" in name else f"{name}@%h"
        proc = Proc(
            f"worker-{name.split('@')[0]}-{self._count}",
            celery_worker_argv(node, concurrency),
            {**self.env, **(env or {})},
            self.log_dir,
        )
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 60) -> None:
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

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        auth = bearer(self.token) if self.token else {}
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **auth, **(headers or {})},
        )
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


def stack_env(**overrides: str) -> dict[str, str]:
    """This process's environment without slidefarm's settings, plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLIDEFARM_", "DATABASE_URL", "CELERY_", "REDIS_URL"))
    }
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
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
    """A private redis-server the test may stop, empty or cut off."""
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
    """A stack on ``pg_url`` (emptied) and ``broker_url`` with fast recovery."""
    truncate_tables(pg_url)
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
    truncate_tables(pg_url)
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
