"""The job as the API shows it (DESIGN.md, "Job")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from storage import Job, JobEvent


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC ending in ``Z``, or ``None``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


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
        "slide_count": len(job.deck.get("slides", [])),
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
        },
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def event_json(event: JobEvent) -> dict[str, Any]:
    """One transition of a job's history."""
    return {
        "from": event.from_status.value if event.from_status else None,
        "to": event.to_status.value,
        "attempt": event.attempt,
        "worker": event.worker,
        "at": iso(event.at),
        "reason": event.reason,
    }
