"""What the API speaks, as pydantic models: the request body it validates and
the bodies it answers with.

``GET /openapi.json`` is generated from these models (api/openapi.py), and the
submit route validates with :class:`Submission`, so the document and the
behaviour cannot drift apart. Response models forbid unknown fields: a field
added to a response without being documented here fails the fuzz test.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from core.deck import Deck, Options, deck_json_schema
from core.urls import MAX_URL_LENGTH
from storage.batches import MAX_BATCH_JOBS
from storage.models import MAX_PRIORITY, MIN_PRIORITY, Stage, Status

#: http or https; a host name whose last label starts with a letter (so no
#: numeric spellings of addresses such as ``http://2130706433/``) or a
#: dotted-quad IPv4 address; an optional port 1-65535; then printable ASCII
#: without spaces or backslashes. ASCII only, so the regex means the same to
#: pydantic (Rust), the document's readers (ECMA 262) and test generators.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
CALLBACK_URL_PATTERN = (
    rf"^https?://(?:(?:{_LABEL}\.)*[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.?"
    rf"|(?:{_OCTET}\.){{3}}{_OCTET})(?::{_PORT})?(?:[/?#][!-\[\]-~]*)?$"
)

CallbackUrl = Annotated[
    str,
    Field(
        max_length=MAX_URL_LENGTH,
        pattern=CALLBACK_URL_PATTERN,
        description="Where the final job JSON is POSTed (signed)",
    ),
]


#: An RFC 3339 date-time (``T`` or ``t``, ``Z`` or ``z``); the offset is
#: optional here only so that a time without one gets its own message.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})?"
)


def _run_at(value: object) -> datetime | None:
    """An RFC 3339 time with its zone offset, as an aware UTC datetime. One
    rule, one error at ``run_at`` (pydantic's strict mode takes no string)."""
    if value is None:
        return None
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError(
            "datetime_format",
            "must be an ISO 8601 (RFC 3339) time with its zone offset, "
            "e.g. 2026-12-01T09:30:00Z or 2026-12-01T10:30:00+01:00",
        )
    day, clock, fraction, offset = match.groups()
    if offset is None:
        raise PydanticCustomError(
            "timezone_aware",
            "needs a zone offset (Z or +hh:mm): a time without one could be in any zone",
        )
    fraction = f".{fraction[:6]}" if fraction else ""
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{fraction}{offset.upper()}")
    except ValueError as error:
        raise PydanticCustomError(
            "datetime_format", "is not a valid time: {reason}", {"reason": str(error)}
        ) from error
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # Within hours of year 1 or 9999: before or after every other time.
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


#: When a job may start: a time with its zone offset (RFC 3339), or unset (now).
RunAt = Annotated[
    datetime | None,
    PlainValidator(_run_at),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
            "default": None,
            "description": (
                "Run no earlier than this time, an ISO 8601 (RFC 3339) time with "
                "its zone offset, at most SLIDEFARM_MAX_SCHEDULE_DAYS ahead: the job is "
                "scheduled until then. A time already past runs now; unset: now."
            ),
        }
    ),
]


def _priority(value: object) -> int:
    """An integer from MIN_PRIORITY to MAX_PRIORITY. A number with no
    fraction (``5.0``) is an integer, as JSON Schema's ``integer`` says; a
    boolean or a string is not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "must be an integer")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise PydanticCustomError(
            "priority_out_of_range",
            "must be from {low} to {high} (higher runs first)",
            {"low": MIN_PRIORITY, "high": MAX_PRIORITY},
        )
    return value


#: Which jobs run first: an integer, higher first.
Priority = Annotated[
    int,
    PlainValidator(_priority),
    WithJsonSchema({"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY}),
]


#: Two decks the document shows: written slides, and a PDF's pages.
SUBMISSION_EXAMPLES: list[dict[str, Any]] = [
    {
        "title": "Quarterly review",
        "slides": [
            {
                "title": "Revenue",
                "body": "Up 12% on last quarter.",
                "bullets": ["EMEA +20%", "APAC flat"],
                "duration": 4.0,
                "notes": "speaker notes, not drawn",
            },
            {"title": "Questions?"},
        ],
        "options": {
            "resolution": "720p",
            "aspect": "16:9",
            "theme": "light",
            "fps": 30,
            "transition": "none",
        },
    },
    {
        "source": {"asset": "9b2f0c1e-4d6a-4c8e-9f3b-2a1d5e7c8b90"},
        "title": "Onboarding (from the PDF)",
        "slides": [{"duration": 6.0, "notes": "welcome"}, {"transition": "fade"}],
        "options": {"resolution": "1080p", "aspect": "9:16"},
    },
]


def _submission_schema(schema: dict[str, Any]) -> None:
    deck_json_schema(schema)
    schema["examples"] = SUBMISSION_EXAMPLES


class Submission(Deck):
    """The body of ``POST /v1/jobs``: a deck, where to report its end, and
    when and before what else it runs."""

    model_config = ConfigDict(json_schema_extra=_submission_schema)

    callback_url: CallbackUrl | None = None
    priority: Priority = Field(
        default=0,
        description=(
            "Higher runs first. A tenant may ask for at most its own maximum "
            "(SLIDEFARM_MAX_PRIORITY unless set for the tenant; 422 above it), an "
            "admin key for up to 100. Unset: 0, or the tenant's maximum if that is lower."
        ),
    )
    run_at: RunAt = None

    def deck(self) -> Deck:
        """The deck alone, as the job stores it."""
        return Deck.model_validate(self.model_dump(exclude=set(SUBMISSION_FIELDS)))


#: What a submission says besides its deck (not stored in the deck).
SUBMISSION_FIELDS = frozenset({"callback_url", "priority", "run_at"})


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchSubmission(_Body):
    """The body of ``POST /v1/batches``: submissions, each as ``POST /v1/jobs``
    takes one, created all or none."""

    jobs: list[Submission] = Field(min_length=1, max_length=MAX_BATCH_JOBS)
    callback_url: CallbackUrl | None = Field(
        default=None, description="Where the finished batch is POSTed once (signed)"
    )


class ErrorDetail(_Body):
    """One thing wrong with the request (a field, a header, a dependency)."""

    field: str
    message: str
    type: str | None = Field(default=None, description="The validation error's kind")


class ErrorInfo(_Body):
    code: str = Field(description="Machine-readable, e.g. validation_failed, job_not_found")
    message: str
    details: list[ErrorDetail]


class Error(_Body):
    """Every error, whatever its status."""

    error: ErrorInfo


class JobFile(_Body):
    path: str = Field(description="Relative to the job's output folder")
    size_bytes: int = Field(ge=0)


class Timings(_Body):
    queue_wait_seconds: float | None
    render_seconds: float | None
    encode_seconds: float | None
    synth_seconds: float | None = Field(description="Speech synthesis time (narrated decks)")
    mix_seconds: float | None = Field(description="Sound mixing and muxing time (decks with sound)")


class Webhook(_Body):
    """Delivery of the completion callback."""

    url: str
    status: Literal["pending", "delivered", "failed"] | None = Field(
        description="null until the job ends; then pending (due at next_attempt_at, or "
        "being delivered), delivered (a 2xx answer) or failed (no 2xx within "
        "SLIDEFARM_WEBHOOK_RETRY_FOR)"
    )
    attempts: int = Field(ge=0)
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class WebhookDelivery(_Body):
    """One attempt to deliver the completion webhook (never the response body)."""

    attempt: int = Field(ge=1)
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float = Field(ge=0)


class JobEvent(_Body):
    """One transition of a job's history."""

    from_: Status | None = Field(alias="from")
    to: Status
    attempt: int = Field(ge=0)
    worker: str | None
    at: datetime
    reason: str | None


class Asset(_Body):
    """An uploaded image, document or audio file, as the API shows it."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    owner: str
    kind: Literal[
        "png", "jpeg", "webp", "gif", "pdf", "pptx", "wav", "mp3", "m4a", "ogg", "flac"
    ] = Field(description="Decided from the bytes, never the file name or declared type")
    media_type: str
    size_bytes: int = Field(ge=1)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    width: int | None = Field(description="Images: pixels; else null")
    height: int | None = Field(description="Images: pixels; else null")
    pages: int | None = Field(
        description="PPTX: slides; else null (a PDF is counted when rendered)"
    )
    created_at: datetime
    last_used_at: datetime = Field(
        description="The last upload of these bytes or use by a job; retention counts from it"
    )
    content_url: str
    thumbnail_url: str | None = Field(description="Images: a small PNG of it; else null")


class SubtitleUrls(_Body):
    """A narrated job's subtitle files, as signed links."""

    vtt: str
    srt: str


class Job(_Body):
    """A job as the API shows it (docs/design.md, "The job")."""

    job_id: str = Field(json_schema_extra={"format": "uuid"})
    status: Status
    progress: float = Field(ge=0, le=1)
    stage: Stage
    error: str | None
    attempts: int = Field(ge=0)
    worker: str | None
    title: str
    owner: str = Field(description="The tenant that submitted the job")
    priority: int = Field(
        ge=MIN_PRIORITY, le=MAX_PRIORITY, description="Higher runs first (as submitted)"
    )
    run_at: datetime | None = Field(
        description="No earlier than this, as submitted (null: at once; a time "
        "already past reads the submission's time); a scheduled job is queued then"
    )
    slide_count: int = Field(
        ge=0,
        description="A written deck's slides; a document deck's pages rendered "
        "so far (0 until counted)",
    )
    options: Options
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    last_heartbeat: datetime | None
    video_url: str | None
    thumbnail_url: str | None
    slide_image_path: str | None
    created_files: list[str]
    files: list[JobFile]
    cancel_requested: bool
    max_attempts: int = Field(ge=1)
    timings: Timings
    webhook: Webhook | None = Field(
        default=None, description="Present when the job has a callback_url"
    )
    batch_id: str | None = Field(
        default=None, description="The batch it was submitted in (POST /v1/batches), if any"
    )
    history: list[JobEvent] | None = Field(default=None, description="Only with ?include=history")
    assets: list[Asset] | None = Field(
        default=None, description="Only with ?include=assets: the assets the job uses"
    )
    deliveries: list[WebhookDelivery] | None = Field(
        default=None, description="Only with ?include=deliveries"
    )
    slide_urls: list[str] | None = Field(
        default=None,
        description="Only with ?signed=1: each slide's signed link, slide 1 "
        "first; null until the job has completed",
    )
    subtitle_urls: SubtitleUrls | None = Field(
        default=None,
        description="Only with ?signed=1: the subtitle files' signed links; null "
        "until the job has completed, and for a deck without narration",
    )
    urls_expire_at: datetime | None = Field(
        default=None, description="Only with ?signed=1: when its links stop working"
    )


class StatusCounts(_Body):
    scheduled: int = Field(ge=0)
    queued: int = Field(ge=0)
    processing: int = Field(ge=0)
    completed: int = Field(ge=0)
    failed: int = Field(ge=0)
    cancelled: int = Field(ge=0)


class BatchCounts(StatusCounts):
    """A batch's jobs by status (a deleted job is in none)."""


class BatchLinks(_Body):
    self: str
    jobs: str
    cancel: str


class Batch(_Body):
    """A batch as the API shows it: its jobs' state, read from them."""

    batch_id: str = Field(json_schema_extra={"format": "uuid"})
    owner: str
    total: int = Field(ge=1, description="Jobs submitted in it")
    counts: BatchCounts
    active: int = Field(ge=0, description="Jobs not final yet")
    progress: float = Field(ge=0, le=1, description="Mean of its jobs' progress, final ones as 1")
    finished: bool = Field(description="Every job of it has ended (finished_at is set)")
    created_at: datetime
    started_at: datetime | None = Field(description="When its first job started")
    last_completed_at: datetime | None = Field(description="When its last final job ended")
    finished_at: datetime | None = Field(description="When every job of it had ended")
    webhook: Webhook | None = Field(description="Present when the batch has a callback_url")
    links: BatchLinks


class BatchCreated(Batch):
    """``POST /v1/batches``'s answer: the batch and its jobs' ids, in order."""

    job_ids: list[str] = Field(description="The jobs' ids, in the order submitted")


class BatchList(_Body):
    batches: list[Batch]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page"
    )


class BatchCancel(_Body):
    """What a batch cancel did to its jobs."""

    batch: Batch
    cancelled: int = Field(ge=0, description="Waiting jobs, cancelled at once")
    stopping: int = Field(ge=0, description="Processing jobs, stopping within a heartbeat")
    unchanged: int = Field(ge=0, description="Jobs already final")


class JobList(_Body):
    jobs: list[Job]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page"
    )


class Worker(_Body):
    name: str
    host: str
    pid: int
    state: Literal["alive", "stopped", "stale"]
    alive: bool
    started_at: datetime
    last_seen: datetime
    last_seen_seconds_ago: float = Field(ge=0)
    uptime_seconds: float = Field(ge=0)
    current_job: str | None
    jobs_done: int = Field(ge=0)
    jobs_failed: int = Field(ge=0)
    jobs_retried: int = Field(ge=0, description="Attempts that ended in an automatic retry")
    jobs_cancelled: int = Field(ge=0, description="Jobs it stopped because of a cancel")


class WorkerList(_Body):
    workers: list[Worker]


class Voice(_Body):
    """A voice live workers offer: the id a deck's options.voice names."""

    id: str = Field(description="<engine>:<name>, e.g. espeak-ng:fr or piper:en_US-joe-medium")
    engine: str = Field(description="espeak-ng or piper")
    name: str
    language: str = Field(description="The language it speaks, e.g. en-us")
    workers: int = Field(ge=1, description="How many live workers offer it")


class VoiceList(_Body):
    voices: list[Voice]


class Stats(_Body):
    counts: StatusCounts
    total: int = Field(ge=0)
    queue_depth: int | None = Field(
        description="Messages on the render queue, if the broker can tell"
    )
    oldest_queued_seconds: float | None
    oldest_heartbeat_seconds: float | None
    completed_last_hour: int = Field(ge=0)
    throughput_per_minute: float = Field(ge=0)
    completed_per_minute: list[int] = Field(description="Last 60 minutes, oldest first")
    submitted_total: int = Field(ge=0)
    recovered_total: int = Field(ge=0)


class JobGone(_Body):
    """The last event of a stream whose job was deleted."""

    job_id: str
    status: Literal["deleted"]


class Health(_Body):
    status: Literal["ok"]


class ReadyChecks(_Body):
    database: Literal["ok"]
    broker: Literal["ok"]


class Ready(_Body):
    status: Literal["ready"]
    checks: ReadyChecks


class AssetList(_Body):
    assets: list[Asset]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page"
    )


#: Every model the document names, in ``components.schemas``.
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Error,
    Job,
    JobGone,
    JobList,
    JobEvent,
    WorkerList,
    VoiceList,
    Stats,
    Health,
    Ready,
    Asset,
    AssetList,
    Batch,
    BatchCreated,
    BatchList,
    BatchCancel,
)
