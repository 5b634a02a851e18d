"""SQLAlchemy 2.x models of the job store.

These rows never leave :mod:`storage`: the store hands out frozen
:class:`storage.jobs.Job` values instead.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator


class Status(enum.StrEnum):
    """Where a job is in its life (docs/design.md, "A job's life")."""

    SCHEDULED = "scheduled"  # waits for its run_at, then queued
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
#: A job that is not final: it counts against its tenant's active-job quota
#: and keeps the assets it uses.
ACTIVE_STATUSES = frozenset({Status.SCHEDULED, Status.QUEUED, Status.PROCESSING})

#: The range of a job's ``priority`` (higher runs first; 0 by default).
MIN_PRIORITY = -100
MAX_PRIORITY = 100


class Stage(enum.StrEnum):
    """What the worker is doing with a job."""

    QUEUED = "queued"
    RENDERING_SLIDES = "rendering_slides"
    SYNTHESIZING = "synthesizing"
    ENCODING_VIDEO = "encoding_video"
    MIXING = "mixing"
    FINALIZING = "finalizing"
    DONE = "done"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the zone (``timestamptz``); SQLite keeps none, so values
    are stored as naive UTC and given back their zone on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: The owner of jobs submitted without authentication (the open mode).
DEFAULT_TENANT = "default"


class WebhookStatus(enum.StrEnum):
    """Where a job's completion webhook is."""

    PENDING = "pending"  # due (again) at webhook_next_at
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # retried for SLIDEFARM_WEBHOOK_RETRY_FOR, never a 2xx


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WebhookColumns:
    """A completion webhook's columns (a job's, a batch's): where to POST the
    final state, and how that went (storage/deliveries.py, ``WebhookOutbox``)."""

    callback_url: Mapped[str | None] = mapped_column(Text)
    webhook_status: Mapped[str | None] = mapped_column(String(16))
    webhook_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    webhook_first_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_last_code: Mapped[int | None] = mapped_column(Integer)
    webhook_last_error: Mapped[str | None] = mapped_column(Text)
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeliveryColumns:
    """One attempt to deliver a completion webhook (never the response body);
    the table adds the column naming what was delivered."""

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float, nullable=False)


def _status_check() -> CheckConstraint:
    allowed = ", ".join(f"'{s.value}'" for s in Status)
    return CheckConstraint(f"status IN ({allowed})", name="status")


class JobRow(WebhookColumns, Base):
    """One render job: the single source of truth about it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    stage: Mapped[str] = mapped_column(String(32), nullable=False)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    deck: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    video_url: Mapped[str | None] = mapped_column(String(255))
    thumbnail_url: Mapped[str | None] = mapped_column(String(255))
    slide_image_path: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Reliability (docs/design.md, invariants 2-8).
    cancel_requested: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    attempt_limit: Mapped[int] = mapped_column(Integer, nullable=False, server_default="3")
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    render_seconds: Mapped[float | None] = mapped_column(Float)
    encode_seconds: Mapped[float | None] = mapped_column(Float)
    synth_seconds: Mapped[float | None] = mapped_column(Float)
    mix_seconds: Mapped[float | None] = mapped_column(Float)
    # Access: the tenant that submitted the job and alone may see it.
    owner: Mapped[str] = mapped_column(String(64), nullable=False, server_default=DEFAULT_TENANT)
    # Scheduling (docs/design.md, "What runs next"): higher priority first, then
    # the tenant furthest below its fair share, then submission order.
    priority: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    #: When a ``scheduled`` job becomes ``queued`` (as the submission asked).
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Its completion webhook (where to POST the final job, and how that went)
    # is in WebhookColumns.
    #: The batch it was submitted in, if any (``POST /v1/batches``).
    batch_id: Mapped[str | None] = mapped_column(
        # After the webhook's columns (a mixin's come last), as the migrations built it.
        String(36),
        ForeignKey("batches.id", ondelete="SET NULL"),
        sort_order=1,
    )

    __table_args__ = (
        _status_check(),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
        # Idempotency keys are a tenant's own: another tenant's key neither
        # replays nor conflicts with (nor reveals) this one.
        UniqueConstraint("owner", "idempotency_key"),
        # The list endpoint (newest first, optionally by status, keyset paging),
        # for admins (all tenants) and for one tenant.
        Index("ix_jobs_status_created_at", "status", "created_at", "id"),
        Index("ix_jobs_created_at", "created_at", "id"),
        Index("ix_jobs_owner_created_at", "owner", "created_at", "id"),
        Index("ix_jobs_owner_status_created_at", "owner", "status", "created_at", "id"),
        # Webhook deliveries that are due.
        Index("ix_jobs_webhook_status_webhook_next_at", "webhook_status", "webhook_next_at"),
        # The sweeper: stale processing jobs and forgotten queued ones.
        Index("ix_jobs_status_last_heartbeat", "status", "last_heartbeat"),
        Index("ix_jobs_status_dispatched_at", "status", "dispatched_at"),
        # The claim's tie-break between tenants: who started a job last.
        Index("ix_jobs_owner_started_at", "owner", "started_at"),
        # The sweeper: scheduled jobs coming due.
        Index(
            "ix_jobs_scheduled_run_at",
            "run_at",
            postgresql_where=text("status = 'scheduled'"),
            sqlite_where=text("status = 'scheduled'"),
        ),
        # A batch's jobs in submission order (keyset pages), its counts and
        # whether it is settled; only the jobs that belong to a batch.
        Index(
            "ix_jobs_batch_id_created_at",
            "batch_id",
            "created_at",
            "id",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
    )


class BatchRow(WebhookColumns, Base):
    """Jobs submitted together (``POST /v1/batches``): one handle on all of
    them, and one webhook when the last of them ends."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    #: Jobs submitted in it (its jobs may since have been deleted).
    total: Mapped[int] = mapped_column(Integer, nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    #: When every job of it was first final (set once, by the settle).
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Its completion webhook is in WebhookColumns, as a job's (storage/batches.py).
    #: When its delivery task was last sent (the sweeper's resend guard);
    #: after the webhook's columns, as the migration built it.
    webhook_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, sort_order=1)

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key"),
        Index("ix_batches_owner_created_at", "owner", "created_at", "id"),
        Index("ix_batches_webhook_status_webhook_next_at", "webhook_status", "webhook_next_at"),
        # The sweeper: batches not finished yet (its settle fallback), and
        # batches finished long ago (retention).
        Index("ix_batches_finished_at", "finished_at"),
    )


class BatchDeliveryRow(DeliveryColumns, Base):
    """One attempt to deliver a batch's completion webhook (never the response body)."""

    __tablename__ = "batch_deliveries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    batch_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("batches.id", ondelete="CASCADE"), nullable=False
    )

    __table_args__ = (Index("ix_batch_deliveries_batch_id_id", "batch_id", "id"),)


class JobFileRow(Base):
    """A file a job's attempt produced, relative to the job's output folder."""

    __tablename__ = "job_files"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class JobEventRow(Base):
    """One transition of a job: the answer to "why did it take three attempts"."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)


class WorkerRow(Base):
    """A render worker as it last reported itself: who is alive, from the database alone."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    current_job: Mapped[str | None] = mapped_column(String(36))
    jobs_done: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    jobs_failed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    #: Attempts that ended in an automatic retry, and jobs it stopped on request.
    jobs_retried: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    jobs_cancelled: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    #: The voices this worker's host can speak with (ids, engines, languages).
    voices: Mapped[Any | None] = mapped_column(JSON)


class CounterRow(Base):
    """What deleted jobs had added to a metric (storage/counters.py): metrics
    add it to what the remaining rows count, so they never go down."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")


class LeaseRow(Base):
    """A named lease (the sweeper's): one holder at a time across the cluster."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class TenantRow(Base):
    """A customer: owns jobs and API keys, signs its webhooks with its secret."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    webhook_secret: Mapped[str] = mapped_column(String(128), nullable=False)
    #: The secret before the last rotation, still signing until it expires.
    webhook_secret_previous: Mapped[str | None] = mapped_column(String(128))
    previous_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    #: Its share of the workers relative to other tenants' (fair share).
    weight: Mapped[float] = mapped_column(Float, nullable=False, server_default="1")
    #: Most jobs of it processing at once (``None``: SLIDEFARM_MAX_RUNNING).
    max_running: Mapped[int | None] = mapped_column(Integer)
    #: Highest priority its jobs may ask for (``None``: SLIDEFARM_MAX_PRIORITY).
    max_priority: Mapped[int | None] = mapped_column(Integer)


class ApiKeyRow(Base):
    """An API key ``sf_<id>_<secret>``: only a hash of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.name", ondelete="CASCADE"), nullable=False
    )
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    admin: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_api_keys_tenant", "tenant"),)


class SessionRow(Base):
    """A dashboard sign-in: a random token (kept hashed) standing for a key."""

    __tablename__ = "sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class RateBucketRow(Base):
    """A token bucket kept in the database (rate limits without Redis)."""

    __tablename__ = "rate_buckets"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class WebhookDeliveryRow(DeliveryColumns, Base):
    """One attempt to deliver a job's completion webhook (never the response body)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )

    __table_args__ = (Index("ix_webhook_deliveries_job_id_id", "job_id", "id"),)


class AssetRow(Base):
    """An uploaded file of one tenant, stored once per tenant by its SHA-256."""

    __tablename__ = "assets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    #: The last upload of these bytes or link to a job: retention counts from here.
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        # The same bytes are one asset per tenant, never shared across tenants.
        UniqueConstraint("owner", "sha256"),
        Index("ix_assets_owner_created_at", "owner", "created_at", "id"),
        Index("ix_assets_last_used_at", "last_used_at"),
    )


class JobAssetRow(Base):
    """A job uses an asset: while the job is queued or processing the asset stays."""

    __tablename__ = "job_assets"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    asset_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index("ix_job_assets_asset_id", "asset_id"),)


class JobUrlRow(Base):
    """An image URL a job fetched and the asset its bytes became: a retry of
    the job reuses the asset instead of fetching again."""

    __tablename__ = "job_urls"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    url: Mapped[str] = mapped_column(Text, primary_key=True)
    asset_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("assets.id", ondelete="CASCADE"), nullable=False
    )

    __table_args__ = (Index("ix_job_urls_asset_id", "asset_id"),)


class SegmentStatus(enum.StrEnum):
    """Where one segment of a split job is (docs/design.md, "Long decks")."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class SegmentRow(Base):
    """A run of consecutive slides of a long deck, rendered by any worker
    (storage/segments.py): claimed, fenced by its own attempt, heartbeated
    and retried like a job, joined by the job's own attempt when all are
    done. Rows go with their job (deleted, or dropped when it ends)."""

    __tablename__ = "segments"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Of the whole deck: the first slide (from 0) and how many.
    first_slide: Mapped[int] = mapped_column(Integer, nullable=False)
    slides: Mapped[int] = mapped_column(Integer, nullable=False)
    #: Each slide's seconds, as the job's attempt planned them (its sound set them).
    durations: Mapped[list[float]] = mapped_column(JSONDocument, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    attempt_limit: Mapped[int] = mapped_column(Integer, nullable=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    progress: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Frames of its video, and its folder under the output storage.
    frames: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'processing', 'completed', 'failed')", name="status_valid"
        ),
        # The claim (queued ones) and the sweeper (stale processing ones).
        Index("ix_segments_status_last_heartbeat", "status", "last_heartbeat"),
    )


# Table handles for Core statements, one definition each.
jobs_table = cast(Table, JobRow.__table__)

# The claim: each tenant's queued jobs in the order they run (a partial index:
# it holds only what waits, however many rows have finished).
Index(
    "ix_jobs_queued_owner_priority",
    jobs_table.c.owner,
    jobs_table.c.priority.desc(),
    jobs_table.c.queued_at,
    jobs_table.c.id,
    postgresql_where=text("status = 'queued'"),
    sqlite_where=text("status = 'queued'"),
)
files_table = cast(Table, JobFileRow.__table__)
events_table = cast(Table, JobEventRow.__table__)
deliveries_table = cast(Table, WebhookDeliveryRow.__table__)
workers_table = cast(Table, WorkerRow.__table__)
counters_table = cast(Table, CounterRow.__table__)
leases_table = cast(Table, LeaseRow.__table__)
buckets_table = cast(Table, RateBucketRow.__table__)
tenants_table = cast(Table, TenantRow.__table__)
keys_table = cast(Table, ApiKeyRow.__table__)
sessions_table = cast(Table, SessionRow.__table__)
assets_table = cast(Table, AssetRow.__table__)
job_assets_table = cast(Table, JobAssetRow.__table__)
job_urls_table = cast(Table, JobUrlRow.__table__)
batches_table = cast(Table, BatchRow.__table__)
batch_deliveries_table = cast(Table, BatchDeliveryRow.__table__)
segments_table = cast(Table, SegmentRow.__table__)
