"""Wake-ups on a Redis broker: a copy of the message Celery builds, sent with
one LPUSH, that a real Celery worker runs like any other; Celery sends them
itself whenever the copy cannot be made or sent. Real Redis, a real worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

import celeryconfig
from api.dispatch import Dispatcher, WakeTemplate
from celeryconfig import QUEUE, RENDER_TASK, VERSION_HEADER, WAKE_VERSION
from core.config import Settings


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE)
    yield client
    client.delete(QUEUE)


def _taken(client: redis.Redis) -> dict[str, Any]:
    raw = client.rpop(QUEUE)
    assert raw is not None
    message: dict[str, Any] = json.loads(raw)
    return message


def _without_ids(message: dict[str, Any]) -> dict[str, Any]:
    headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id")}
    properties = {
        k: v
        for k, v in message["properties"].items()
        if k not in ("correlation_id", "delivery_tag")
    }
    return {**message, "headers": headers, "properties": properties}


def test_a_wake_up_is_celerys_own_message_with_fresh_ids(
    redis_url: str, broker: redis.Redis
) -> None:
    dispatcher = Dispatcher(Settings(CELERY_BROKER_URL=redis_url))
    assert dispatcher._wake_template() is not None
    assert dispatcher.wake(2)
    copies = [_taken(broker), _taken(broker)]
    dispatcher.celery.send_task(RENDER_TASK, headers=celeryconfig.wake_headers())
    celerys = _taken(broker)
    assert broker.llen(QUEUE) == 0
    for copy in copies:
        assert _without_ids(copy) == _without_ids(celerys)
        assert copy["headers"][VERSION_HEADER] == WAKE_VERSION
        assert copy["headers"]["id"] == copy["properties"]["correlation_id"]
    ids = {m["headers"]["id"] for m in [*copies, celerys]}
    tags = {m["properties"]["delivery_tag"] for m in [*copies, celerys]}
    assert len(ids) == len(tags) == 3


def test_a_real_worker_runs_the_copies(redis_url: str, broker: redis.Redis) -> None:
    settings = Settings(CELERY_BROKER_URL=redis_url)
    app = Celery("wake-test", set_as_current=False)
    app.conf.update(celeryconfig.from_settings(settings))
    seen: list[tuple[str, Any]] = []
    all_done = threading.Event()

    # A task of its own name (the render task's belongs to the workers' app),
    # routed like it, woken by copies exactly as the dispatcher makes them.
    @app.task(name="slidefarm.test.wake", bind=True, ignore_result=True, shared=False)
    def wake(self: Any) -> None:
        seen.append((self.request.id, (self.request.headers or {}).get(VERSION_HEADER)))
        if len(seen) == 3:
            all_done.set()

    template = WakeTemplate(app, redis.Redis.from_url(redis_url), task="slidefarm.test.wake")
    assert template.key == QUEUE
    with start_worker(
        app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING"
    ):
        template.send(3)
        assert all_done.wait(20), seen
    assert len({task_id for task_id, _ in seen}) == 3
    assert {version for _, version in seen} == {WAKE_VERSION}


def test_celery_sends_when_redis_refuses_the_copy(redis_url: str, broker: redis.Redis) -> None:
    dispatcher = Dispatcher(Settings(CELERY_BROKER_URL=redis_url))
    template = dispatcher._wake_template()
    assert template is not None
    broker.set("not-a-list", "x")
    template.key = "not-a-list"  # LPUSH answers WRONGTYPE
    try:
        assert dispatcher.wake()
    finally:
        broker.delete("not-a-list")
    assert _taken(broker)["headers"][VERSION_HEADER] == WAKE_VERSION


def test_a_broker_that_is_down_leaves_the_job_to_the_sweeper(redis_url: str) -> None:
    dispatcher = Dispatcher(Settings(CELERY_BROKER_URL=redis_url))
    template = dispatcher._wake_template()
    assert template is not None
    template.client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    assert dispatcher.wake() is False


def test_another_broker_gets_celerys_send(tmp_path: Any) -> None:
    settings = Settings(CELERY_BROKER_URL="filesystem://", SLIDEFARM_BROKER_DIR=str(tmp_path / "b"))
    dispatcher = Dispatcher(settings)
    assert dispatcher._wake_template() is None
    assert dispatcher.wake()
    assert len(list((tmp_path / "b" / "queue").iterdir())) == 1
