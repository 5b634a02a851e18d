"""Inspection endpoints: workers, stats, live job events and Prometheus metrics.

All of it is read from the job store, so it is complete, survives restarts
and is the same from every API host.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from api.auth import owner_scope, require_admin
from api.drain import Drain, current_drain
from api.serialize import iso, job_json
from api.services import Services, services
from api.voices import offered
from storage import Job, JobNotFound, StorageError
from storage.models import Status
from storage.registry import WorkerInfo, WorkerRegistry
from storage.stats import Inspector, Stats, TenantQueue

bp = Blueprint("inspect", __name__)

EVENT_POLL = 0.5  # seconds between store reads when there is no pub/sub
KEEPALIVE = 15.0
MAX_STREAM = 3600.0
DRAIN_CHECK = 0.5  # seconds at most before a waiting stream sees its process stop
RETRY_MS = 2000  # the client's reconnection delay
RECONNECT_RETRY_MS = 500  # ... when told to reconnect: another process serves it


def worker_json(worker: WorkerInfo, stale_after: float) -> dict[str, Any]:
    alive = worker.alive(stale_after)
    now = time.time()
    return {
        "name": worker.name,
        "host": worker.host,
        "pid": worker.pid,
        "state": worker.state(stale_after),
        "alive": alive,
        "started_at": iso(worker.started_at),
        "last_seen": iso(worker.last_seen),
        "last_seen_seconds_ago": round(max(now - worker.last_seen.timestamp(), 0.0), 1),
        "uptime_seconds": round(max(now - worker.started_at.timestamp(), 0.0), 1),
        "current_job": worker.current_job,
        "jobs_done": worker.jobs_done,
        "jobs_failed": worker.jobs_failed,
        "jobs_retried": worker.jobs_retried,
        "jobs_cancelled": worker.jobs_cancelled,
    }


def tenant_queue_json(queue: TenantQueue, max_running: int) -> dict[str, Any]:
    """One tenant's queue; ``max_running``: SLIDEFARM_MAX_RUNNING, for a
    tenant without its own."""
    cap = queue.max_running if queue.max_running is not None else max_running
    return {
        "tenant": queue.tenant,
        "queued": queue.queued,
        "queued_by_priority": {str(p): n for p, n in queue.queued_by_priority.items()},
        "running": queue.running,
        "scheduled": queue.scheduled,
        "oldest_eligible_seconds": _round(queue.oldest_eligible_age),
        "weight": queue.weight,
        "max_running": cap or None,
    }


def stats_json(stats: Stats, queue_depth: int | None, max_running: int = 0) -> dict[str, Any]:
    """The farm's overview (``/v1/stats``, ``slidefarm stats``); ``queue_depth``:
    wake-ups waiting on the broker; ``max_running``: SLIDEFARM_MAX_RUNNING."""
    return {
        "counts": {status.value: count for status, count in stats.counts.items()},
        "total": sum(stats.counts.values()),
        "queue_depth": queue_depth,
        "scheduled": stats.counts.get(Status.SCHEDULED, 0),
        "next_run_at": iso(stats.next_run_at),
        "tenants": [tenant_queue_json(t, max_running) for t in stats.tenants],
        "oldest_queued_seconds": _round(stats.oldest_queued_age),
        "oldest_heartbeat_seconds": _round(stats.oldest_heartbeat_age),
        "completed_last_hour": stats.completed_last_hour,
        "throughput_per_minute": round(stats.completed_last_hour / 60, 2),
        "completed_per_minute": stats.per_minute,
        "submitted_total": stats.submitted_total,
        "recovered_total": stats.recovered_total,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@bp.get("/v1/workers")
def workers() -> Response:
    """Every worker that ever registered, with whether it is alive (admins)."""
    require_admin()
    svc = services()
    found = WorkerRegistry(svc.store).list_workers()
    return jsonify({"workers": [worker_json(w, svc.settings.stale_after) for w in found]})


@bp.get("/v1/voices")
def voices() -> Response:
    """The voices live workers offer, each with how many offer it (any key)."""
    svc = services()
    found = offered(WorkerRegistry(svc.store).list_workers(), svc.settings.stale_after)
    return jsonify({"voices": [o.json() for o in found]})


@bp.get("/v1/stats")
def stats() -> Response:
    """Counts by status, queue depth, throughput and the oldest queued job's age (admins)."""
    require_admin()
    svc = services()
    return jsonify(
        stats_json(
            Inspector(svc.store).stats(), svc.dispatcher.queue_depth(), svc.settings.max_running
        )
    )


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def _snapshot(job: Job) -> tuple[Any, ...]:
    return (
        job.status,
        round(job.progress, 4),
        job.stage,
        job.attempts,
        job.worker,
        job.cancel_requested,
    )


def _event_id(snapshot: tuple[Any, ...]) -> str:
    """The id of the events that show this state of the job: the same state
    always has the same id, so a client reconnecting with it as
    ``Last-Event-ID`` is not sent that state again."""
    return hashlib.blake2b(repr(snapshot).encode(), digest_size=8).hexdigest()


def _wait_for_change(pubsub: Any, drain: Drain, seconds: float) -> None:
    """Until the job's channel says something, ``seconds`` pass, or this
    process's streams must end (checked at least every DRAIN_CHECK s)."""
    deadline = time.monotonic() + seconds
    while not drain.streams_ending:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if pubsub is None:
            drain.wait_streams_end(left)
            continue
        if pubsub.get_message(timeout=min(left, DRAIN_CHECK)) is not None:
            return


@bp.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    """Server-Sent Events: ``job`` on every change of status, progress or
    stage, then ``end`` with the final job, then the stream closes.

    Every event has an ``id`` naming the job's state. A stream that this
    process must close (it is stopping, or the stream is an hour old) ends
    with ``reconnect`` (and a short ``retry``): the client connects again
    with ``Last-Event-ID`` and gets the job's current state, unless that is
    the state it last saw, then every change as before, so it never misses
    the ``end``.

    Pushed through Redis pub/sub when ``REDIS_URL`` is set, by polling the
    store otherwise; the store is read either way, so nothing is missed.
    """
    svc = services()
    drain = current_drain()
    scope = owner_scope()
    first = svc.store.get(job_id, owner=scope)  # 404 before the stream starts
    seen = request.headers.get("Last-Event-ID")

    def stream(svc: Services) -> Iterator[str]:
        yield f"retry: {RETRY_MS}\n\n"
        job: Job | None = first
        last: tuple[Any, ...] | None = None
        started = last_sent = time.monotonic()
        feed = svc.store.feed
        with feed.subscribe(job_id) if feed else nullcontext() as pubsub:
            while True:
                if job is not None:
                    snapshot = _snapshot(job)
                    event_id = _event_id(snapshot)
                    if snapshot != last:
                        last = snapshot
                        if event_id != seen:
                            last_sent = time.monotonic()
                            yield _sse("job", job_json(job), event_id)
                    if job.status.is_final:
                        yield _sse("end", job_json(job), event_id)
                        return
                if drain.streams_ending or time.monotonic() - started >= MAX_STREAM:
                    yield f"retry: {RECONNECT_RETRY_MS}\n" + _sse(
                        "reconnect", {"job_id": job_id, "retry_ms": RECONNECT_RETRY_MS}
                    )
                    return
                if time.monotonic() - last_sent > KEEPALIVE:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                _wait_for_change(pubsub, drain, 5.0 if pubsub is not None else EVENT_POLL)
                try:
                    job = svc.store.get(job_id, owner=scope)
                except JobNotFound:
                    yield _sse("end", {"job_id": job_id, "status": "deleted"})
                    return
                except StorageError:
                    job = None  # the database blinked: keep the stream, try again

    response = Response(stream_with_context(stream(svc)), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


class StoreCollector:
    """Prometheus metrics computed from the store at scrape time, so they are
    right with any number of API processes and hosts."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Any]:
        inspector = Inspector(self.svc.store)
        stats = inspector.stats()
        jobs = GaugeMetricFamily("slidefarm_jobs", "Jobs in the store by status", labels=["status"])
        for status, count in stats.counts.items():
            jobs.add_metric([status.value], count)
        yield jobs
        # Counters and histograms count deleted jobs too: they never go down.
        yield CounterMetricFamily(
            "slidefarm_jobs_submitted", "Jobs ever submitted", value=stats.submitted_total
        )
        yield CounterMetricFamily(
            "slidefarm_jobs_completed", "Jobs ever completed", value=stats.completed_total
        )
        yield CounterMetricFamily(
            "slidefarm_jobs_failed",
            "Transitions to failed (a job retried and failed again counts twice)",
            value=stats.failed_total,
        )
        yield CounterMetricFamily(
            "slidefarm_jobs_recovered",
            "Attempts recovered from a worker that stopped heartbeating",
            value=stats.recovered_total,
        )
        speech = CounterMetricFamily(
            "slidefarm_speech_seconds",
            "Seconds of speech synthesized, by engine",
            labels=["engine"],
        )
        for engine, seconds in sorted(inspector.speech_seconds().items()):
            speech.add_metric([engine], seconds)
        yield speech
        for name, column, help_text in (
            (
                "slidefarm_queue_wait_seconds",
                "queue_wait_seconds",
                "Time from queued to claimed of completed jobs, last attempt",
            ),
            ("slidefarm_render_seconds", "render_seconds", "Slide drawing time of completed jobs"),
            ("slidefarm_encode_seconds", "encode_seconds", "Video encoding time of completed jobs"),
        ):
            histogram = inspector.histogram(column)
            family = HistogramMetricFamily(name, help_text)
            buckets = [(str(bound), count) for bound, count in histogram.buckets]
            buckets.append(("+Inf", histogram.total))
            family.add_metric([], buckets, sum_value=histogram.sum)
            yield family
        yield GaugeMetricFamily(
            "slidefarm_oldest_heartbeat_age_seconds",
            "Heartbeat age of the oldest processing job",
            value=stats.oldest_heartbeat_age or 0.0,
        )
        yield GaugeMetricFamily(
            "slidefarm_oldest_queued_age_seconds",
            "Age of the oldest queued job",
            value=stats.oldest_queued_age or 0.0,
        )
        yield from _tenant_families(stats.tenants)
        depth = self.svc.dispatcher.queue_depth()
        if depth is not None:
            yield GaugeMetricFamily(
                "slidefarm_queue_depth", "Messages on the render queue", value=depth
            )
        alive = sum(
            1
            for w in WorkerRegistry(self.svc.store).list_workers()
            if w.alive(self.svc.settings.stale_after)
        )
        yield GaugeMetricFamily("slidefarm_workers_alive", "Workers seen recently", value=alive)
        # This process's own pool (the one serving the scrape): each API
        # process answers for itself, so a scrape per process sums them.
        pool = GaugeMetricFamily(
            "slidefarm_db_pool_connections",
            "Database connections of the API process serving this scrape, by state "
            "(overflow: open beyond the pool's size, also counted as in_use or idle)",
            labels=["state"],
        )
        for state, count in self.svc.store.db.pool_use().items():
            pool.add_metric([state], count)
        yield pool


def _tenant_families(tenants: list[TenantQueue]) -> Iterator[Any]:
    """Each tenant's queue: what waits by priority, what runs, what is
    scheduled, and how long its oldest eligible job has waited."""
    queued = GaugeMetricFamily(
        "slidefarm_queued_jobs", "Queued jobs by tenant and priority", labels=["tenant", "priority"]
    )
    running = GaugeMetricFamily(
        "slidefarm_running_jobs", "Processing jobs by tenant", labels=["tenant"]
    )
    scheduled = GaugeMetricFamily(
        "slidefarm_scheduled_jobs", "Scheduled jobs by tenant", labels=["tenant"]
    )
    oldest = GaugeMetricFamily(
        "slidefarm_oldest_eligible_age_seconds",
        "How long each tenant's oldest claimable job has waited (0: none waits)",
        labels=["tenant"],
    )
    for t in tenants:
        for priority, count in t.queued_by_priority.items():
            queued.add_metric([t.tenant, str(priority)], count)
        running.add_metric([t.tenant], t.running)
        scheduled.add_metric([t.tenant], t.scheduled)
        oldest.add_metric([t.tenant], t.oldest_eligible_age or 0.0)
    yield from (queued, running, scheduled, oldest)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format (admins: it counts every tenant's jobs)."""
    require_admin()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(services()))
    # content_type, not mimetype: Flask would append a second charset.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
