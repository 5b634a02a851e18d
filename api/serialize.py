"""The job as the API shows it (docs/design.md, "The job"); the job itself is
rendered by :mod:`storage.serialize`, shared with the webhook workers."""

from __future__ import annotations

from typing import Any

from storage import JobEvent
from storage.serialize import delivery_json, iso, job_json

__all__ = ["delivery_json", "event_json", "iso", "job_json"]


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
