"""What the job store hands out: frozen snapshots of jobs, never live rows."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import Any

from storage.files import SLIDES_DIR
from storage.models import DEFAULT_TENANT, Stage, Status

DEFAULT_ATTEMPT_LIMIT = 3


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def is_job_id(value: str) -> bool:
    """Job ids are UUIDs (lower case, hyphenated); anything else names no job,
    and is refused before it reaches SQL or a cache key."""
    # Exactly the form ids are stored in (``str(uuid.UUID(value)) == value``,
    # without building a UUID on every status read): any other spelling would miss.
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LeaseState(enum.Enum):
    """What a worker's write learned about its attempt."""

    HELD = "held"
    CANCEL_REQUESTED = "cancel_requested"
    LOST = "lost"

    def __bool__(self) -> bool:
        return self is not LeaseState.LOST


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One transition in a job's history."""

    from_status: Status | None
    to_status: Status
    attempt: int
    worker: str | None
    at: datetime
    reason: str | None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What the sweeper did to one stale job."""

    job_id: str
    action: Status  # queued (requeued), failed or cancelled
    worker: str | None


@dataclass(frozen=True, slots=True)
class JobFile:
    """A produced file, relative to the job's output folder."""

    path: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job, as the store last saw it."""

    id: str
    status: Status
    stage: Stage
    progress: float
    error: str | None
    attempts: int
    worker: str | None
    title: str
    deck: dict[str, Any]
    video_url: str | None
    thumbnail_url: str | None
    slide_image_path: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    last_heartbeat: datetime | None
    idempotency_key: str | None = None
    request_hash: str | None = None
    cancel_requested: bool = False
    attempt_limit: int = DEFAULT_ATTEMPT_LIMIT
    queued_at: datetime | None = None
    dispatched_at: datetime | None = None
    not_before: datetime | None = None
    render_seconds: float | None = None
    encode_seconds: float | None = None
    synth_seconds: float | None = None
    mix_seconds: float | None = None
    owner: str = DEFAULT_TENANT
    priority: int = 0
    run_at: datetime | None = None
    callback_url: str | None = None
    webhook_status: str | None = None
    webhook_attempts: int = 0
    webhook_first_at: datetime | None = None
    webhook_next_at: datetime | None = None
    webhook_last_code: int | None = None
    webhook_last_error: str | None = None
    webhook_delivered_at: datetime | None = None
    batch_id: str | None = None
    files: tuple[JobFile, ...] = field(default=())

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], files: Sequence[JobFile] = ()) -> Job:
        """Build a snapshot from a ``jobs`` row mapping."""
        plain = {name: row[name] for name in _PLAIN_FIELDS}
        return cls(
            **plain,
            status=Status(row["status"]),
            stage=Stage(row["stage"]),
            progress=float(row["progress"]),
            cancel_requested=bool(row["cancel_requested"]),
            files=tuple(files),
        )

    @property
    def created_files(self) -> list[str]:
        """Paths of the files the current attempt produced."""
        return [f.path for f in self.files]

    @property
    def slide_count(self) -> int:
        """The deck's slides: a written deck's, or the pages of a document
        deck (``source``) rendered so far (0 until its worker has counted them)."""
        if self.deck.get("source") is None:
            return len(self.deck.get("slides", []))
        return sum(1 for f in self.files if f.path.startswith(f"{SLIDES_DIR}/"))

    @property
    def queue_wait_seconds(self) -> float | None:
        """How long the last attempt waited in the queue before a worker claimed it."""
        if self.started_at is None or self.queued_at is None:
            return None
        return max((self.started_at - self.queued_at).total_seconds(), 0.0)


#: Job fields copied from the row as they are (the others are converted).
_PLAIN_FIELDS = tuple(
    f.name
    for f in dataclass_fields(Job)
    if f.name not in ("status", "stage", "progress", "cancel_requested", "files")
)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing and the cursor of the next, if any."""

    jobs: list[Job]
    next_cursor: str | None
