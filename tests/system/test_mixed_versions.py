"""Old and new code side by side, as a rolling deploy runs them: the API of
the previous release (the tree of ``PREVIOUS``, whose messages name a job and
carry no version) and this release's API submit into one PostgreSQL
database at once, while only this release's workers run (the README's
order: migrate, roll the workers, then the API hosts). Every job, whichever
API took it, runs exactly once; each API reads the other's jobs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import JobStore, Status
from tests.support import ROOT
from tests.support.decks import small_deck
from tests.support.services import flush_run_index, missing
from tests.support.stack import (
    Proc,
    Stack,
    free_port,
    gunicorn_argv,
    make_stack,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: The last release before wake-ups and message versions (issue 14's).
PREVIOUS = "efeab8e"


def _previous_tree(folder: Path) -> Path:
    """The previous release's files, from this checkout's history."""
    known = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], check=False
    )
    if known.returncode != 0:
        missing(f"release {PREVIOUS} is not in this checkout's history (a shallow clone?)")
    tree = folder / "previous"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


@pytest.fixture
def mixed(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    flush_run_index(redis_url)
    stack = make_stack(pg_url, redis_url, tmp_path, SLIDEFARM_NOOP_RENDER="1")
    tree = _previous_tree(tmp_path)
    port = free_port()
    old = Proc(
        "api-previous",
        gunicorn_argv(f"127.0.0.1:{port}", workers=1),
        stack.env,
        tmp_path,
        cwd=tree,
    )
    stack.procs.append(old)
    previous = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert old.alive(), old.log()[-3000:]
        try:
            return _through(stack, previous, "GET", "/readyz")[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, 30, f"the previous release's API is not ready:\n{old.log()[-3000:]}")
        stack.start_api()
        stack.start_worker("w1")
        stack.start_worker("w2")
        yield stack, previous
    finally:
        stack.stop_all()


def _through(stack: Stack, base: str, method: str, path: str, body: Any = None) -> Any:
    saved, stack.base = stack.base, base
    try:
        return stack.request(method, path, body)
    finally:
        stack.base = saved


def test_the_previous_api_and_this_one_submit_side_by_side(mixed: tuple[Stack, str]) -> None:
    stack, previous = mixed
    current = stack.base
    ids: list[str] = []
    for n in range(12):  # alternating, as a balancer would spread them
        base = previous if n % 2 else current
        status, job = _through(stack, base, "POST", "/v1/jobs", small_deck(slides=1))
        assert status == 202, job
        ids.append(job["job_id"])
    for job_id in ids:
        assert stack.wait_final(job_id, timeout=90)["status"] == "completed"
    store = JobStore.from_url(stack.env["DATABASE_URL"])
    for job_id in ids:
        job = store.get(job_id)
        assert job.status is Status.COMPLETED and job.attempts == 1
        history = store.history(job_id)
        claims = [e for e in history if e.to_status is Status.PROCESSING]
        assert len(claims) == 1, history  # run exactly once
        # Each API reads the other's jobs.
        for base in (previous, current):
            status, shown = _through(stack, base, "GET", f"/v1/jobs/{job_id}")
            assert status == 200 and shown["status"] == "completed"
    print(f"\nmixed versions: {len(ids)} jobs, half through release {PREVIOUS}'s API")
