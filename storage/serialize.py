"""The job as the API shows it (docs/design.md, "The job"), and as webhooks send it.

Pure functions of store values, here so that the API and the workers (which
must not import the API) render a job the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from storage.batches import Batch
from storage.deliveries import WebhookDelivery
from storage.jobs import Job


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC ending in ``Z``, or ``None``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class HasWebhook(Protocol):
    """What carries a completion webhook: a job, a batch."""

    @property
    def callback_url(self) -> str | None: ...
    @property
    def webhook_status(self) -> str | None: ...
    @property
    def webhook_attempts(self) -> int: ...
    @property
    def webhook_next_at(self) -> datetime | None: ...
    @property
    def webhook_last_code(self) -> int | None: ...
    @property
    def webhook_last_error(self) -> str | None: ...
    @property
    def webhook_delivered_at(self) -> datetime | None: ...


def webhook_json(subject: HasWebhook) -> dict[str, Any] | None:
    """Where the completion webhook of a job (or a batch) is; ``None``
    without a callback URL.

    ``status`` is ``None`` until the job ends (the batch is finished), then
    ``pending`` (due at ``next_attempt_at``, or being delivered),
    ``delivered`` or ``failed``.
    """
    if subject.callback_url is None:
        return None
    pending = subject.webhook_status == "pending"
    return {
        "url": subject.callback_url,
        "status": subject.webhook_status,
        "attempts": subject.webhook_attempts,
        "last_status_code": subject.webhook_last_code,
        "last_error": subject.webhook_last_error,
        "next_attempt_at": iso(subject.webhook_next_at) if pending else None,
        "delivered_at": iso(subject.webhook_delivered_at),
    }


def job_json(job: Job) -> dict[str, Any]:
    """The public fields of ``job``."""
    options = job.deck.get("options", {})
    return {
        "job_id": job.id,
        "status": job.status.value,
        "progress": round(job.progress, 4),
        "stage": job.stage.value,
        "error": job.error,
        "attempts": job.attempts,
        "worker": job.worker,
        "title": job.title,
        "owner": job.owner,
        "priority": job.priority,
        "run_at": iso(job.run_at),
        "slide_count": job.slide_count,
        "options": options,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "last_heartbeat": iso(job.last_heartbeat),
        "video_url": job.video_url,
        "thumbnail_url": job.thumbnail_url,
        "slide_image_path": job.slide_image_path,
        "created_files": job.created_files,
        "files": [{"path": f.path, "size_bytes": f.size_bytes} for f in job.files],
        "cancel_requested": job.cancel_requested,
        "max_attempts": job.attempt_limit,
        "timings": {
            "queue_wait_seconds": _seconds(job.queue_wait_seconds),
            "render_seconds": _seconds(job.render_seconds),
            "encode_seconds": _seconds(job.encode_seconds),
            "synth_seconds": _seconds(job.synth_seconds),
            "mix_seconds": _seconds(job.mix_seconds),
        },
        "webhook": webhook_json(job),
        "batch_id": job.batch_id,
    }


def webhook_body(job: Job) -> dict[str, Any]:
    """What a completion webhook carries: the job as ``GET /v1/jobs/{id}``
    shows it, less the delivery bookkeeping (which changes per attempt)."""
    body = job_json(job)
    del body["webhook"]
    return body


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    """One delivery attempt of a job's webhook."""
    return {
        "attempt": delivery.attempt,
        "at": iso(delivery.at),
        "status_code": delivery.status_code,
        "error": delivery.error,
        "duration_ms": delivery.duration_ms,
    }


def batch_json(batch: Batch) -> dict[str, Any]:
    """The public fields of ``batch`` (``GET /v1/batches/{id}``)."""
    return {
        "batch_id": batch.id,
        "owner": batch.owner,
        "total": batch.total,
        "counts": dict(batch.counts),
        "active": batch.active,
        "progress": round(batch.progress, 4),
        "finished": batch.finished_at is not None,
        "created_at": iso(batch.created_at),
        "started_at": iso(batch.started_at),
        "last_completed_at": iso(batch.last_completed_at),
        "finished_at": iso(batch.finished_at),
        "webhook": webhook_json(batch),
        "links": {
            "self": f"/v1/batches/{batch.id}",
            "jobs": f"/v1/batches/{batch.id}/jobs",
            "cancel": f"/v1/batches/{batch.id}/cancel",
        },
    }


def batch_webhook_body(batch: Batch) -> dict[str, Any]:
    """What a batch's completion webhook carries: the batch with its counts,
    less the delivery bookkeeping (which changes per attempt)."""
    body = batch_json(batch)
    del body["webhook"]
    return body
