"""One gunicorn API instance served with ``gunicornconf`` (PostgreSQL,
Redis): asked to stop (SIGTERM to its master), its /readyz answers 503 at
once while it keeps serving for SLIDEFARM_API_DRAIN_DELAY, its event streams
end with ``reconnect``, and it exits 0; a HUP reload never says 503 and ends
its old workers' streams the same way."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.farm import ApiInstance, scheduled_deck, stream_events
from tests.support.services import flush_run_index
from tests.support.stack import Stack, free_port, make_stack

# Serial: the first 503 is bounded at half a second of wall time.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

DELAY = 2.0


@pytest.fixture
def api(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[ApiInstance]:
    flush_run_index(redis_url)
    stack = make_stack(
        pg_url, redis_url, tmp_path, REDIS_URL=redis_url, SLIDEFARM_API_DRAIN_DELAY=str(DELAY)
    )
    instance = ApiInstance("api", free_port(), stack)
    stack.port, stack.base = instance.port, f"http://127.0.0.1:{instance.port}"
    try:
        instance.start()
        yield instance
    finally:
        stack.stop_all()


def _readyz(port: int) -> int:
    """/readyz's status, 0 when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


class Watcher:
    """Follows one job's stream on one connection, noting when each event came."""

    def __init__(self, stack: Stack, port: int, job_id: str) -> None:
        self.events: list[tuple[float, str]] = []
        self.thread = threading.Thread(
            target=self._run, args=(stack.token, port, job_id), daemon=True
        )
        self.thread.start()

    def _run(self, token: str | None, port: int, job_id: str) -> None:
        for event, _, _ in stream_events("127.0.0.1", port, token, job_id):
            self.events.append((time.monotonic(), event))
            if event in ("", "end", "reconnect"):
                return

    def names(self) -> list[str]:
        return [name for _, name in self.events]


def _follow(api: ApiInstance) -> Watcher:
    status, job = api.stack.request("POST", "/v1/jobs", scheduled_deck(3600))
    assert status == 202, job
    watcher = Watcher(api.stack, api.port, job["job_id"])
    time.sleep(0.5)
    assert watcher.names() == ["job"]
    return watcher


def test_a_stopping_instance_says_so_serves_on_then_drains(api: ApiInstance) -> None:
    watcher = _follow(api)
    asked = time.monotonic()
    api.signal_master(signal.SIGTERM)
    seen: list[tuple[float, int]] = []
    while api.proc is not None and api.proc.alive():
        seen.append((time.monotonic() - asked, _readyz(api.port)))
        time.sleep(0.02)
    watcher.thread.join(timeout=10)
    assert api.proc is not None and api.proc.popen.wait() == 0
    answered = [(t, status) for t, status in seen if status]
    first_503 = next(t for t, status in answered if status == 503)
    assert first_503 < 0.5, seen[:10]
    assert all(status == 503 for t, status in answered if t >= first_503)
    # Still serving (503 answered, not refused) through the delay.
    assert max(t for t, _ in answered) >= DELAY * 0.8, answered[-3:]
    # The stream ended with a word, once the process stopped accepting.
    assert watcher.names() == ["job", "reconnect"]
    assert watcher.events[-1][0] - asked >= DELAY * 0.8


def test_a_reload_stays_ready_and_sends_streams_elsewhere(api: ApiInstance) -> None:
    watcher = _follow(api)
    asked = time.monotonic()
    api.signal_master(signal.SIGHUP)
    statuses = set()
    while time.monotonic() - asked < 6:
        statuses.add(_readyz(api.port))
        time.sleep(0.05)
    watcher.thread.join(timeout=10)
    assert 503 not in statuses and 200 in statuses, statuses
    assert watcher.names() == ["job", "reconnect"]
    assert watcher.events[-1][0] - asked < 3.0
    # The new workers serve streams.
    assert _follow(api).names() == ["job"]
