"""JSON only on the wire (docs/design.md, invariant 9), on live Celery apps and a real
worker: a pickled message is refused and never runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import celeryconfig
from api.dispatch import Dispatcher
from core.config import Settings


def embedded(tmp_path: Path) -> Settings:
    return Settings(
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR=str(tmp_path / "b"),
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "out"),
    )


def test_the_live_apps_accept_json_only(tmp_path: Path) -> None:
    from workers.celery_app import app as worker_app

    settings = embedded(tmp_path)
    built = Celery("check", set_as_current=False)
    built.conf.update(celeryconfig.from_settings(settings))
    api_side = Dispatcher(settings).celery
    for app in (built, api_side, worker_app):
        assert list(app.conf.accept_content) == ["json"]
        assert app.conf.task_serializer == "json"
        assert list(app.conf.result_accept_content) == ["json"]


@pytest.fixture
def json_only_worker(tmp_path: Path) -> Iterator[tuple[Celery, Path]]:
    """A real Celery worker (in a thread) on the embedded filesystem broker,
    configured by celeryconfig.from_settings, with a task that leaves a mark."""
    app = Celery("json-only", set_as_current=False)
    app.conf.update(celeryconfig.from_settings(embedded(tmp_path)))
    marks = tmp_path / "marks"
    marks.mkdir()

    @app.task(name="slidefarm.test.mark", ignore_result=True)
    def mark(name: str) -> None:
        (marks / name).touch()

    with start_worker(
        app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING"
    ):
        yield app, marks


def test_a_pickled_message_is_refused_by_a_real_worker(
    json_only_worker: tuple[Celery, Path], caplog: pytest.LogCaptureFixture
) -> None:
    app, marks = json_only_worker
    # The producer may serialise with pickle; the worker must not accept it.
    app.send_task("slidefarm.test.mark", args=["pickled"], serializer="pickle")
    app.send_task("slidefarm.test.mark", args=["json"])  # the control: JSON runs
    deadline = time.monotonic() + 20
    while not (marks / "json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (marks / "json").exists(), "the worker never ran the JSON message"
    time.sleep(0.5)  # the pickled message was sent first: it had its chance
    assert not (marks / "pickled").exists()
    assert any(
        "untrusted content" in r.getMessage() or "ContentDisallowed" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
