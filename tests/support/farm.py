"""A farm to deploy under load: HAProxy in front of gunicorn API instances
(served with ``gunicornconf``, so they drain), Celery workers, PostgreSQL and
Redis; a load client and event-stream followers going through HAProxy; and
deploy steps run one after the other while the load runs.

A deploy is a list of :class:`DeployStep`: each is a name and a function of
the :class:`Farm`, run in order by :func:`run_deploy`. Here are the API
steps (:func:`hup_api`, :func:`replace_api`) and :func:`roll_workers`; a
step that applies a migration is one more function of the farm (it has the
stack's ``env["DATABASE_URL"]``), put in the list where the README's
procedure puts it: expand first, contract last.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command

from tests.support.balancer import HAProxy
from tests.support.clients import bearer
from tests.support.decks import small_deck
from tests.support.schema_load import alembic_config_with_test_migrations
from tests.support.stack import Proc, Stack, free_port, gunicorn_argv, wait_until

#: HAProxy sees a failing /readyz within about inter (100 ms) plus a
#: check's time; the API keeps serving a good while longer than that.
DRAIN_DELAY = 1.0
#: A job of well under a second (slides drawn, the encode skipped).
TINY = small_deck(slides=1, duration=0.5)


class ApiInstance:
    """One API host: a gunicorn master and its workers on a fixed port."""

    def __init__(self, name: str, port: int, stack: Stack) -> None:
        self.name = name
        self.port = port
        self.stack = stack
        self.proc: Proc | None = None
        self.generation = 0

    def start(self) -> None:
        self.generation += 1
        self.proc = Proc(
            f"{self.name}-{self.generation}",
            gunicorn_argv(
                f"127.0.0.1:{self.port}",
                "-c",
                "python:gunicornconf",
                "--graceful-timeout",
                "15",
            ),
            self.stack.env,
            self.stack.log_dir,
        )
        self.stack.procs.append(self.proc)
        wait_until(self.ready, 60, f"{self.name} not ready:\n{self.log()[-3000:]}")

    def ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise AssertionError(f"{self.name} exited:\n{self.log()[-3000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def signal_master(self, sig: int) -> None:
        """A signal to the master alone (its workers hear from it)."""
        assert self.proc is not None
        self.proc.popen.send_signal(sig)

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM to the master, wait for it to exit; the seconds it took."""
        assert self.proc is not None
        started = time.monotonic()
        self.signal_master(signal.SIGTERM)
        code = self.proc.popen.wait(timeout=timeout)
        took = time.monotonic() - started
        self.proc.stop()  # closes its log
        assert code == 0, f"{self.name} exited {code}:\n{self.log()[-3000:]}"
        return took

    def log(self) -> str:
        return self.proc.log() if self.proc else ""


class Farm:
    """HAProxy, API instances and workers on one stack (its database, broker
    and environment); ``stack.request`` goes through HAProxy."""

    def __init__(self, stack: Stack, folder: Path, apis: int = 2, workers: int = 2) -> None:
        self.stack = stack
        self.apis = [ApiInstance(f"api{n}", free_port(), stack) for n in range(1, apis + 1)]
        self.balancer = HAProxy({api.name: api.port for api in self.apis}, folder)
        self.worker_count = workers
        self.workers: list[Proc] = []
        #: What each step measured (name: seconds, ...), for the report.
        self.timings: dict[str, float] = {}

    def start(self) -> None:
        for api in self.apis:
            api.start()
        for n in range(1, self.worker_count + 1):
            self.workers.append(self.stack.start_worker(f"w{n}", concurrency=2))
        self.balancer.start()
        for api in self.apis:
            self.balancer.wait_state(api.name, "UP")
        self.stack.base = self.balancer.base

    def stop(self) -> None:
        self.balancer.stop()
        self.stack.stop_all()

    def api(self, name: str) -> ApiInstance:
        return next(api for api in self.apis if api.name == name)


@dataclass(frozen=True)
class DeployStep:
    """One step of a deploy: ``run(farm)`` returns once the step is done."""

    name: str
    run: Callable[[Farm], None]


def hup_api(name: str) -> DeployStep:
    """gunicorn's graceful reload: new workers (new code), old ones finish."""

    def run(farm: Farm) -> None:
        api = farm.api(name)
        before = api.log().count("Worker exiting")
        started = time.monotonic()
        api.signal_master(signal.SIGHUP)
        # The old workers exit once their requests are done and streams ended.
        wait_until(
            lambda: api.log().count("Worker exiting") >= before + 2,
            30,
            f"{name}'s old workers did not exit:\n{api.log()[-3000:]}",
        )
        wait_until(api.ready, 30, f"{name} not ready after HUP")
        farm.timings[f"hup {name}"] = time.monotonic() - started

    return DeployStep(f"reload {name} (HUP)", run)


def replace_api(name: str) -> DeployStep:
    """A rolling replacement of one API host: SIGTERM (it drains), wait for
    its exit, start the new one on the same port, wait until HAProxy sends
    it traffic again."""

    def run(farm: Farm) -> None:
        api = farm.api(name)
        started = time.monotonic()
        api.signal_master(signal.SIGTERM)
        farm.timings[f"{name} out of HAProxy"] = farm.balancer.wait_state(name, "DOWN")
        assert api.proc is not None
        api.proc.popen.wait(timeout=30)
        farm.timings[f"{name} drained and exited"] = time.monotonic() - started
        code = api.proc.popen.returncode
        api.proc.stop()
        assert code == 0, f"{name} exited {code}:\n{api.log()[-3000:]}"
        api.start()
        farm.balancer.wait_state(name, "UP")
        farm.timings[f"replace {name}"] = time.monotonic() - started

    return DeployStep(f"replace {name} (SIGTERM, new process)", run)


def roll_workers() -> DeployStep:
    """Each worker in turn: SIGTERM to its main process (Celery's warm
    shutdown; the worker drain decides what it does with its job), wait for
    its exit, start its replacement under the same name."""

    def run(farm: Farm) -> None:
        for n, proc in enumerate(list(farm.workers)):
            started = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            code = proc.popen.wait(timeout=60)
            proc.stop()  # closes its log
            assert code == 0, f"{proc.name} exited {code}:\n{proc.log()[-3000:]}"
            farm.workers[n] = farm.stack.start_worker(f"w{n + 1}", concurrency=2)
            farm.timings[f"roll w{n + 1}"] = time.monotonic() - started

    return DeployStep("roll every worker (SIGTERM, new process)", run)


def migrate(revision: str, label: str) -> DeployStep:
    """``alembic upgrade <revision>`` (the product's revisions plus the
    test-only expand and contract pair in tests/support/migrations) while
    everything runs: each step under a short lock_timeout, retried."""

    def run(farm: Farm) -> None:
        started = time.monotonic()
        command.upgrade(
            alembic_config_with_test_migrations(farm.stack.env["DATABASE_URL"]), revision
        )
        farm.timings[label] = time.monotonic() - started

    return DeployStep(f"{label} migration ({revision})", run)


def run_deploy(farm: Farm, steps: list[DeployStep], pause: float = 1.0) -> list[str]:
    """Run ``steps`` in order, ``pause`` s apart; the names of those run."""
    done = []
    for step in steps:
        step.run(farm)
        done.append(step.name)
        time.sleep(pause)
    return done


@dataclass
class Outcome:
    """One request of the load: when it started, how long it took, what came back."""

    started: float
    seconds: float
    status: int  # 0: no HTTP answer
    what: str
    error: str = ""


@dataclass
class LoadClient:
    """Threads on kept-alive connections through HAProxy, together about
    ``rate`` requests a second: mostly status polls of jobs they submitted,
    one submission in ``submit_every`` (each with its Idempotency-Key)."""

    host: str
    port: int
    token: str | None
    threads: int = 8
    rate: float = 300.0
    submit_every: int = 25
    outcomes: list[Outcome] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **(bearer(self.token) if self.token else {})}

    def _run(self, n: int) -> None:
        interval = self.threads / self.rate
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        mine: list[str] = []
        count = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            count += 1
            if not mine or count % self.submit_every == n % self.submit_every:
                what, method, path = "submit", "POST", "/v1/jobs"
                body: bytes | None = json.dumps(TINY).encode()
                headers = {**self._headers(), "Idempotency-Key": str(uuid.uuid4())}
            else:
                what, method, path = "poll", "GET", f"/v1/jobs/{random.choice(mine[-20:])}"
                body, headers = None, self._headers()
            started = time.monotonic()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                outcome = Outcome(started, time.monotonic() - started, resp.status, what)
                if what == "submit" and resp.status == 202:
                    job_id = json.loads(raw)["job_id"]
                    mine.append(job_id)
                    with self._lock:
                        self.submitted.append(job_id)
                elif resp.status >= 300:
                    outcome.error = raw[:300].decode(errors="replace")
            except (OSError, http.client.HTTPException) as error:
                outcome = Outcome(started, time.monotonic() - started, 0, what, repr(error))
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            with self._lock:
                self.outcomes.append(outcome)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        conn.close()

    def between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.started < end]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def stream_events(
    host: str, port: int, token: str | None, job_id: str, last_id: str | None = None
) -> Iterator[tuple[str, str | None, str]]:
    """The events of one connection to a job's stream, as (event, id, data);
    ("", None, "") when the connection ends."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    headers = bearer(token) if token else {}
    if last_id:
        headers["Last-Event-ID"] = last_id
    try:
        conn.request("GET", f"/v1/jobs/{job_id}/events", headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200, (resp.status, resp.read()[:300])
        event, event_id, data = "message", None, ""
        while True:
            line = resp.readline()
            if not line:
                yield "", None, ""
                return
            text = line.decode().rstrip("\r\n")
            if text == "":
                if data:
                    yield event, event_id, data
                event, event_id, data = "message", None, ""
            elif text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith("id:"):
                event_id = text[3:].strip()
            elif text.startswith("data:"):
                data += text[5:].strip()
    finally:
        conn.close()


@dataclass
class EventFollower:
    """A client of one job's event stream through HAProxy: reconnects with
    ``Last-Event-ID`` when told to (``reconnect``) and, counted as a cut, when
    the stream ends without a word; done at ``end``."""

    host: str
    port: int
    token: str | None
    job_id: str
    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    connections: int = 0
    reconnects: int = 0
    cuts: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)

    def _run(self) -> None:
        last_id: str | None = None
        deadline = time.monotonic() + 170
        while self.final is None and time.monotonic() < deadline:
            self.connections += 1
            told = False
            try:
                for event, event_id, data in stream_events(
                    self.host, self.port, self.token, self.job_id, last_id
                ):
                    if event == "":
                        break
                    if event_id is not None:
                        last_id = event_id
                    self.events.append((event, event_id, json.loads(data)))
                    if event == "end":
                        self.final = json.loads(data)
                        return
                    if event == "reconnect":
                        told = True
                        self.reconnects += 1
                        time.sleep(json.loads(data).get("retry_ms", 500) / 1000)
                        break
            except (OSError, http.client.HTTPException, AssertionError) as error:
                self.cuts.append(repr(error))
                time.sleep(0.5)
                continue
            if not told:
                self.cuts.append("the stream ended without an end or reconnect event")


def scheduled_deck(seconds: float) -> dict[str, Any]:
    """TINY, to run ``seconds`` from now (its stream stays open until then)."""
    run_at = datetime.now(UTC) + timedelta(seconds=seconds)
    return {**TINY, "run_at": run_at.isoformat()}
