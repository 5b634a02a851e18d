"""The job as the API shows it (DESIGN.md, "Job")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from storage import Job


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
    }
