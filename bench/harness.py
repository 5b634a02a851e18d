"""The benchmark harness: its own database and Redis index, real gunicorn and
celery processes, wrk for HTTP load, and medians with min and max."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("SLIDEFARM_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("SLIDEFARM_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
GUNICORN = ["-w", "2", "-k", "gthread", "--threads", "4", "--backlog", "2048"]


@dataclass
class Series:
    """Repeated measurements of one side."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def text(self, unit: str) -> str:
        return (
            f"{self.median:.4g} {unit} (min {min(self.values):.4g}, "
            f"max {max(self.values):.4g}, n={len(self.values)})"
        )


@dataclass
class Result:
    name: str
    unit: str
    baseline: Series
    slidefarm: Series
    goal: str
    #: "higher" when slidefarm/baseline should be high (throughput), "lower"
    #: when it should be low (time, memory).
    better: str
    threshold: float | None
    notes: dict[str, Any] = field(default_factory=dict)
    extra_pass: bool = True
    #: Figures the entry of results.json carries at its top level.
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def pair_ratios(self) -> list[float]:
        """slidefarm/baseline of each repeat: the sides run in alternation,
        so a pair shares the machine's mood of the moment."""
        if len(self.baseline.values) != len(self.slidefarm.values):
            return []
        return [
            s / b for b, s in zip(self.baseline.values, self.slidefarm.values, strict=True) if b
        ]

    @property
    def ratio(self) -> float:
        """The median of the paired ratios (robust to a noisy shared machine,
        where the median of each side can come from different moods), else
        the ratio of the medians."""
        pairs = self.pair_ratios
        if pairs:
            return statistics.median(pairs)
        return self.slidefarm.median / self.baseline.median if self.baseline.median else 0.0

    @property
    def passed(self) -> bool | None:
        if self.threshold is None:
            return None
        ok = (
            self.ratio >= self.threshold
            if self.better == "higher"
            else (self.ratio <= self.threshold)
        )
        return ok and self.extra_pass

    def line(self) -> str:
        out = (
            f"  baseline  {self.baseline.text(self.unit)}\n"
            f"  slidefarm {self.slidefarm.text(self.unit)}\n"
            f"  ratio {self.ratio:.3f}{self._range()} (goal {self.goal}) -> "
            f"{'reported' if self.passed is None else ('PASS' if self.passed else 'FAIL')}"
        )
        for key, value in self.notes.items():
            out += f"\n  {key}: {value}"
        return out

    def _range(self) -> str:
        pairs = self.pair_ratios
        return f" (pairs {min(pairs):.3f}..{max(pairs):.3f})" if len(pairs) > 1 else ""

    def row(self) -> str:
        verdict = "-" if self.passed is None else ("yes" if self.passed else "NO")
        return (
            f"{self.name:<22}{self.baseline.median:>14.4g}{self.slidefarm.median:>14.4g}"
            f"{self.ratio:>9.3f}  {self.goal:<13} {verdict}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "baseline": self.baseline.median,
            "slidefarm": self.slidefarm.median,
            "baseline_min": min(self.baseline.values),
            "baseline_max": max(self.baseline.values),
            "slidefarm_min": min(self.slidefarm.values),
            "slidefarm_max": max(self.slidefarm.values),
            "ratio": round(self.ratio, 4),
            "goal": self.goal,
            "pass": self.passed,
            **(
                {
                    "ratio_min": round(min(self.pair_ratios), 4),
                    "ratio_max": round(max(self.pair_ratios), 4),
                }
                if self.pair_ratios
                else {}
            ),
            **({"notes": self.notes} if self.notes else {}),
            **self.fields,
        }


def post_script(body: str) -> Path:
    """A wrk Lua script that POSTs ``body`` (JSON) on every request."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    return script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WrkRun:
    requests_per_second: float
    p99_ms: float
    errors: int


#: The admin key every request of the run sends (the API runs as in
#: production, with keys required); set by :meth:`Environment.reset`.
AUTH: dict[str, str] = {}


def wrk(url: str, *, duration: float, connections: int = 32, script: Path | None = None) -> WrkRun:
    """Load ``url`` from a separate process (wrk), return throughput and p99."""
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or make bench)")
    cmd = [exe, "-t2", f"-c{connections}", f"-d{max(round(duration), 1)}s", "--latency", url]
    for name, value in AUTH.items():
        cmd[1:1] = ["-H", f"{name}: {value}"]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkRun(rps, p99, errors + (int(non2xx.group(1)) if non2xx else 0))


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


class Environment:
    """A private PostgreSQL database and Redis index, and the processes on them."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="slidefarm-bench-"))
        self.db_name = f"slidefarm_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.db_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + self.db_name
        self.redis_index = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self._admin = create_engine(
            PG_ADMIN.replace("postgresql://", "postgresql+psycopg2://"),
            isolation_level="AUTOCOMMIT",
        )

    # -- life cycle ----------------------------------------------------------

    def __enter__(self) -> Environment:
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        for index in range(3, 16):
            client = redis.Redis.from_url(f"{REDIS_BASE}/{index}")
            if client.set("slidefarm:test-run-lock", f"bench:{os.getpid()}", nx=True, ex=3600):
                self.redis_index = index
                break
        else:
            raise SystemExit("no free Redis index for the benchmarks")
        self.flush_redis()
        self.migrate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
        self.flush_redis()
        redis.Redis.from_url(self.redis_url).delete("slidefarm:test-run-lock")
        self._drop_database(self.db_name)
        self._admin.dispose()
        shutil.rmtree(self.folder, ignore_errors=True)

    @contextmanager
    def scratch_database(self, suffix: str) -> Iterator[str]:
        """A second, empty database beside this one (its URL), for a
        benchmark's other side; dropped afterwards, with every engine on it."""
        name = f"{self.db_name}_{suffix}"
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield self.db_url.rsplit("/", 1)[0] + "/" + name
        finally:
            self._drop_database(name)

    def _drop_database(self, name: str) -> None:
        from storage.db import dispose_engines

        dispose_engines()  # the pools of this process: their connections would hold it
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    @property
    def redis_url(self) -> str:
        return f"{REDIS_BASE}/{self.redis_index}"

    def describe(self) -> str:
        return (
            f"{platform.node()} ({os.cpu_count()} cores, Python "
            f"{platform.python_version()}), PostgreSQL db {self.db_name}, "
            f"Redis index {self.redis_index}"
        )

    def flush_redis(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        for key in client.scan_iter():
            if key != b"slidefarm:test-run-lock":
                client.delete(key)

    def migrate(self) -> None:
        from storage.migrate import upgrade

        upgrade(self.db_url)

    def reset(self) -> None:
        """Empty every table and the broker."""
        from storage.access import AccessStore
        from storage.jobs import JobStore
        from storage.models import Base

        engine = create_engine(self.db_url.replace("postgresql://", "postgresql+psycopg2://"))
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables}"))
        engine.dispose()
        self.flush_redis()
        token = AccessStore(JobStore.from_url(self.db_url)).create_key("bench", admin=True).token
        AUTH.clear()
        AUTH["Authorization"] = f"Bearer {token}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLIDEFARM_", "DATABASE_URL", "CELERY_", "REDIS_URL"))
        }
        env.update(
            DATABASE_URL=self.db_url,
            CELERY_BROKER_URL=self.redis_url,
            SLIDEFARM_OUTPUT_DIR=str(self.folder / "output"),
            PYTHONUNBUFFERED="1",
            SLIDEFARM_AUTH="required",
            # The limits would throttle the load generator, not measure
            # slidefarm: no active-job cap (its count would grow with the
            # queue the submit benchmark builds), a rate no run reaches.
            SLIDEFARM_MAX_ACTIVE_JOBS="0",
            SLIDEFARM_SUBMIT_RATE="1000000",
            SLIDEFARM_SUBMIT_BURST="1000000",
        )
        env.update(extra)
        return env

    # -- processes -----------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Run ``args`` in the checkout with its log in this run's folder."""
        log = open(self.folder / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def api(
        self, app: str = "api:create_app()", ready: str = "/readyz", **extra: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        """gunicorn serving ``app`` with the benchmarks' settings (slidefarm's
        API unless told; the peers get the same server), once ``ready`` answers."""
        port = free_port()
        proc = self.spawn(
            f"api-{port}",
            [
                sys.executable,
                "-m",
                "gunicorn",
                *GUNICORN,
                "-b",
                f"127.0.0.1:{port}",
                app,
            ],
            self.env(**extra),
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + ready, timeout=2):
                    return proc, base
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{app} did not start; see {self.folder}")

    def worker(self, name: str, concurrency: int = 2, **extra: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            f"worker-{name}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-n",
                f"{name}@%h",
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
            ],
            self.env(**extra),
        )

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def post(base: str, path: str, body: Any) -> dict[str, Any]:
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **AUTH},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (a prefork worker's pool)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total
