"""The one typed settings object: every environment variable slidefarm reads.

Nothing else in the project calls ``os.environ``; the API, the workers,
Celery's configuration and Alembic all ask :func:`get_settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where the embedded mode keeps its SQLite file and its broker folder.
EMBEDDED_DB_FILE = "slidefarm.db"
EMBEDDED_BROKER_DIR = ".slidefarm/broker"


class Settings(BaseSettings):
    """slidefarm's settings, read from the environment (see DESIGN.md)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = Field(
        default=f"sqlite:///{EMBEDDED_DB_FILE}", validation_alias="DATABASE_URL"
    )
    celery_broker_url: str = Field(default="filesystem://", validation_alias="CELERY_BROKER_URL")
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    output_dir: Path = Field(default=Path("output"), validation_alias="SLIDEFARM_OUTPUT_DIR")
    broker_dir: Path = Field(
        default=Path(EMBEDDED_BROKER_DIR), validation_alias="SLIDEFARM_BROKER_DIR"
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0, validation_alias="SLIDEFARM_HEARTBEAT_INTERVAL"
    )
    stale_after: float = Field(default=30.0, gt=0, validation_alias="SLIDEFARM_STALE_AFTER")
    dispatch_timeout: float = Field(
        default=60.0, gt=0, validation_alias="SLIDEFARM_DISPATCH_TIMEOUT"
    )
    max_attempts: int = Field(default=3, ge=1, validation_alias="SLIDEFARM_MAX_ATTEMPTS")
    retention_days: float = Field(default=7.0, gt=0, validation_alias="SLIDEFARM_RETENTION_DAYS")
    #: First delay of an automatic retry after a transient error; doubles per attempt.
    retry_backoff: float = Field(default=2.0, ge=0, validation_alias="SLIDEFARM_RETRY_BACKOFF")
    #: Seconds between sweeps; by default derived from the other intervals.
    sweep_interval: float | None = Field(
        default=None, gt=0, validation_alias="SLIDEFARM_SWEEP_INTERVAL"
    )
    #: Lifetime of a status-cache entry: the staleness bound when a writer
    #: cannot reach Redis (otherwise every change invalidates at once).
    cache_ttl: float = Field(default=5.0, gt=0, validation_alias="SLIDEFARM_CACHE_TTL")
    #: Skip drawing and encoding (claim, heartbeats, progress and completion
    #: still happen): for measuring the pipeline's own overhead.
    noop_render: bool = Field(default=False, validation_alias="SLIDEFARM_NOOP_RENDER")
    #: Seconds between scans of the output folder for orphaned files.
    orphan_scan_interval: float = Field(
        default=60.0, gt=0, validation_alias="SLIDEFARM_ORPHAN_SCAN_INTERVAL"
    )
    #: ffmpeg x264 preset: ``ultrafast`` encodes still slides about twice as fast as
    #: ``veryfast`` for somewhat larger files (bench: render).
    x264_preset: str = Field(default="ultrafast", validation_alias="SLIDEFARM_X264_PRESET")
    #: Max seconds an API process waits for the broker when sending a task.
    broker_send_timeout: float = Field(
        default=2.0, gt=0, validation_alias="SLIDEFARM_BROKER_SEND_TIMEOUT"
    )

    @field_validator("output_dir", "broker_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Resolved once, so the API (which serves files) and the workers agree
        # whatever folder a library call later resolves relative paths from.
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("DATABASE_URL is empty")
        return value.strip()

    @property
    def sweep_every(self) -> float:
        """Seconds between two sweeps: often enough for every deadline it serves."""
        if self.sweep_interval is not None:
            return self.sweep_interval
        return max(min(self.heartbeat_interval, self.stale_after / 4,
                       self.dispatch_timeout / 4, 5.0), 0.05)

    @property
    def embedded_broker(self) -> bool:
        """True when the broker is kombu's serverless filesystem transport."""
        return self.celery_broker_url.startswith("filesystem://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
