"""The one typed settings object: every environment variable slidefarm reads.

Nothing else in the project calls ``os.environ``; the API, the workers,
Celery's configuration and Alembic all ask :func:`get_settings`.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import exc
from sqlalchemy.engine import URL, make_url

#: Where the embedded mode keeps its SQLite file and its broker folder.
EMBEDDED_DB_FILE = "slidefarm.db"
EMBEDDED_BROKER_DIR = ".slidefarm/broker"
#: The longest life a signed output link may be given (a leaked link is
#: someone else's copy of the file for this long at most).
MAX_SIGNED_URL_TTL = 86400.0
#: Signing secrets shorter than this are refused: they would be guessable.
MIN_SECRET_KEY_LENGTH = 32
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_database_url(url: str) -> URL:
    """``url`` parsed, its scheme in canonical form: lower case, and the
    ``postgres`` alias (what Heroku, Render and other hosts hand out) spelled
    ``postgresql``. The engine factory and the access mode both decide the
    backend through this one function, so they cannot disagree about it.

    :class:`sqlalchemy.exc.ArgumentError` if ``url`` is not a database URL.
    """
    parsed = make_url(url)
    backend, plus, driver = parsed.drivername.lower().partition("+")
    if backend == "postgres":
        backend = "postgresql"
    return parsed.set(drivername=backend + plus + driver)


def database_backend(url: str) -> str:
    """The backend ``url`` names (``sqlite``, ``postgresql``, ...), whatever
    its spelling and driver."""
    return parse_database_url(url).get_backend_name()


def _networks(cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of a comma-separated CIDR list (checked by the settings)."""
    return [
        ipaddress.ip_network(part.strip(), strict=False)
        for part in cidrs.split(",")
        if part.strip()
    ]


class Settings(BaseSettings):
    """slidefarm's settings, read from the environment (the README lists them)."""

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
    #: An API process keeps the statuses it read in memory, dropped when a
    #: change's pub/sub notice reaches it; a read is at most this many
    #: seconds staler than through Redis alone (0: no copy in memory).
    local_cache_staleness: float = Field(
        default=0.5, ge=0, validation_alias="SLIDEFARM_LOCAL_CACHE_STALENESS"
    )
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
    #: Whether the renderer may use fonts installed on the machine (colour
    #: emoji, and characters the shipped fonts lack). Off: only the fonts that
    #: ship with the package, exactly what a fresh machine has.
    system_fonts: bool = Field(default=True, validation_alias="SLIDEFARM_SYSTEM_FONTS")
    #: Seconds an API process served by gunicorn with ``-c python:gunicornconf``
    #: keeps serving after its master is asked to stop (SIGTERM) while
    #: ``/readyz`` answers 503, so a load balancer takes it out before it stops
    #: accepting; longer than the balancer's health check needs to see it
    #: (HAProxy: ``inter`` x ``fall``). gunicorn's ``graceful_timeout`` must
    #: exceed it plus the longest request.
    api_drain_delay: float = Field(default=5.0, ge=0, validation_alias="SLIDEFARM_API_DRAIN_DELAY")
    #: Max seconds an API process waits for the broker when sending a task.
    broker_send_timeout: float = Field(
        default=2.0, gt=0, validation_alias="SLIDEFARM_BROKER_SEND_TIMEOUT"
    )

    # --- The connection budget (README, "Connection budget") ---
    #: PostgreSQL connections one process keeps open while idle (its pool's
    #: size). Unset: by the process's role: 2 for an API process, 1 for a
    #: worker's main process, its render processes and the CLI.
    db_pool_size: int | None = Field(default=None, ge=1, validation_alias="SLIDEFARM_DB_POOL_SIZE")
    #: Connections one process may open beyond its pool while they are all in
    #: use, each closed as soon as it is given back. Unset: by role: 6 for an
    #: API process (8 at most with its pool: one per request thread), 1 for a
    #: render process (its heartbeat meeting a write), 2 for a worker's main
    #: process, 4 for the CLI.
    db_max_overflow: int | None = Field(
        default=None, ge=0, validation_alias="SLIDEFARM_DB_MAX_OVERFLOW"
    )

    # --- Schema migrations (docs/design.md, "Schema changes") ---
    #: Seconds a migration's statement may wait for a table lock (PostgreSQL
    #: ``SET LOCAL lock_timeout``): past it the migration step rolls back,
    #: releasing its locks, so traffic never queues behind it for longer.
    migration_lock_timeout: float = Field(
        default=2.0, gt=0, validation_alias="SLIDEFARM_MIGRATION_LOCK_TIMEOUT"
    )
    #: How many times a migration step that timed out waiting for a lock is
    #: tried again (after 0.5 s, then twice as long each time, at most 10 s).
    migration_lock_retries: int = Field(
        default=10, ge=0, validation_alias="SLIDEFARM_MIGRATION_LOCK_RETRIES"
    )
    #: Seconds one statement of a migration's transaction may run (it may be
    #: holding a lock traffic waits for); 0: no limit. Concurrent index
    #: builds and constraint validations run outside any transaction and are
    #: not bounded by it.
    migration_statement_timeout: float = Field(
        default=60.0, ge=0, validation_alias="SLIDEFARM_MIGRATION_STATEMENT_TIMEOUT"
    )

    # --- Access and limits (who may do what, and how much) ---
    #: ``required``: every /v1 route, the event streams, /metrics and the
    #: dashboard need an API key. ``off``: the open single-user mode. Unset:
    #: off on SQLite (the embedded default), required on every other database.
    auth: Literal["required", "off"] | None = Field(default=None, validation_alias="SLIDEFARM_AUTH")
    #: Seconds an API process may trust a key it has already checked (a
    #: revoked key stops working within this bound on every host).
    key_cache_ttl: float = Field(default=1.0, ge=0, validation_alias="SLIDEFARM_KEY_CACHE_TTL")
    #: Per-tenant cap on queued plus processing jobs (0: no cap).
    max_active_jobs: int = Field(default=20, ge=0, validation_alias="SLIDEFARM_MAX_ACTIVE_JOBS")
    # --- What runs next (docs/design.md, "What runs next") ---
    #: Most jobs of one tenant processing at once, unless the tenant has its
    #: own ``max_running`` (0: no cap; the claim itself enforces it).
    max_running: int = Field(default=0, ge=0, validation_alias="SLIDEFARM_MAX_RUNNING")
    #: Highest ``priority`` a tenant's jobs may ask for, unless the tenant has
    #: its own ``max_priority`` (admins may use up to 100).
    max_priority: int = Field(
        default=10, ge=-100, le=100, validation_alias="SLIDEFARM_MAX_PRIORITY"
    )
    #: How far ahead a submission's ``run_at`` may be, in days.
    max_schedule_days: float = Field(
        default=30.0, gt=0, validation_alias="SLIDEFARM_MAX_SCHEDULE_DAYS"
    )
    #: Submissions per second per API key (token bucket refill rate) ...
    submit_rate: float = Field(default=5.0, gt=0, validation_alias="SLIDEFARM_SUBMIT_RATE")
    #: ... and how many may come at once (the bucket's size).
    submit_burst: int = Field(default=30, ge=1, validation_alias="SLIDEFARM_SUBMIT_BURST")
    #: Longest video one deck may ask for, in seconds.
    max_video_seconds: float = Field(
        default=1800.0, gt=0, validation_alias="SLIDEFARM_MAX_VIDEO_SECONDS"
    )
    #: Seconds one attempt may render before it fails (and its files go).
    render_timeout: float = Field(default=1800.0, gt=0, validation_alias="SLIDEFARM_RENDER_TIMEOUT")
    #: Seconds a worker asked to stop (SIGTERM) lets its current render run
    #: before it hands the job back to the queue (not counted as an attempt).
    drain_timeout: float = Field(default=60.0, ge=0, validation_alias="SLIDEFARM_DRAIN_TIMEOUT")
    #: A written deck of more slides than this is split into segments that
    #: any workers render at once, then joined without re-encoding (0: never).
    split_slides: int = Field(default=40, ge=0, validation_alias="SLIDEFARM_SPLIT_SLIDES")
    #: Slides per segment of a split deck: the unit of work one worker takes.
    segment_slides: int = Field(default=8, ge=1, validation_alias="SLIDEFARM_SEGMENT_SLIDES")

    # --- Assets (uploaded images and documents) ---
    #: Largest upload, in bytes (a PDF or PPTX; the body is refused at this size).
    max_asset_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, validation_alias="SLIDEFARM_MAX_ASSET_BYTES"
    )
    #: Largest image upload (PNG, JPEG, WebP, GIF), in bytes.
    max_image_asset_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, validation_alias="SLIDEFARM_MAX_IMAGE_ASSET_BYTES"
    )
    #: Most pixels (width x height) an image asset may have: well under
    #: Pillow's own decompression-bomb guard, which stays on.
    max_asset_pixels: int = Field(
        default=40_000_000, ge=1, validation_alias="SLIDEFARM_MAX_ASSET_PIXELS"
    )
    #: Bytes of assets one tenant may keep stored (0: no cap).
    max_asset_storage_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=0, validation_alias="SLIDEFARM_MAX_ASSET_STORAGE_BYTES"
    )
    #: Days after its last upload that an asset no job links to is deleted.
    asset_retention_days: float = Field(
        default=30.0, gt=0, validation_alias="SLIDEFARM_ASSET_RETENTION_DAYS"
    )
    #: Days a synthesized sentence stays in the speech cache after its last use.
    speech_cache_days: float = Field(
        default=7.0, gt=0, validation_alias="SLIDEFARM_SPEECH_CACHE_DAYS"
    )

    # --- Document decks (PDF, PPTX) ---
    #: The LibreOffice binary that converts PPTX to PDF; unset: ``soffice`` on PATH.
    soffice: str | None = Field(default=None, validation_alias="SLIDEFARM_SOFFICE")
    #: Seconds one PPTX to PDF conversion may take before its process group is killed.
    convert_timeout: float = Field(
        default=120.0, gt=0, validation_alias="SLIDEFARM_CONVERT_TIMEOUT"
    )
    #: Seconds one PDF page may take to render (in a child process) before it is killed.
    page_timeout: float = Field(default=60.0, gt=0, validation_alias="SLIDEFARM_PAGE_TIMEOUT")
    #: Address space, in MiB, of the reader child (PDF, python-pptx) and of LibreOffice.
    document_memory_mb: int = Field(
        default=2048, ge=256, validation_alias="SLIDEFARM_DOCUMENT_MEMORY_MB"
    )

    # --- Completion webhooks ---
    #: Comma-separated CIDRs that callbacks may reach although they are not
    #: public addresses (e.g. ``127.0.0.1/32`` in tests). Empty: public only.
    webhook_allow: str = Field(default="", validation_alias="SLIDEFARM_WEBHOOK_ALLOW")
    #: Seconds one delivery attempt may take (connect plus response).
    webhook_timeout: float = Field(default=10.0, gt=0, validation_alias="SLIDEFARM_WEBHOOK_TIMEOUT")
    #: Delay before the first redelivery; doubles per attempt.
    webhook_backoff: float = Field(default=10.0, gt=0, validation_alias="SLIDEFARM_WEBHOOK_BACKOFF")
    #: Seconds after the first attempt during which failed deliveries are retried.
    webhook_retry_for: float = Field(
        default=3600.0, gt=0, validation_alias="SLIDEFARM_WEBHOOK_RETRY_FOR"
    )
    #: Seconds the previous webhook secret keeps signing after a rotation.
    webhook_rotation_grace: float = Field(
        default=86400.0, ge=0, validation_alias="SLIDEFARM_WEBHOOK_ROTATION_GRACE"
    )

    # --- Slide images fetched from URLs ---
    #: Comma-separated CIDRs that image URLs may reach although they are not
    #: public addresses (a private CDN; ``127.0.0.1/32`` in tests). Empty: public only.
    fetch_allow: str = Field(default="", validation_alias="SLIDEFARM_FETCH_ALLOW")
    #: Seconds one image fetch may take in all: every redirect, connect and read.
    fetch_timeout: float = Field(default=15.0, gt=0, validation_alias="SLIDEFARM_FETCH_TIMEOUT")

    # --- HTTP: other sites, signed links and proxies ---
    #: Comma-separated origins (``https://app.example``) whose pages may call
    #: the API from a browser (CORS). Empty: none.
    cors_origins: str = Field(default="", validation_alias="SLIDEFARM_CORS_ORIGINS")
    #: Signs the output links of ``?signed=1``; the same on every API host.
    #: Unset: no signed links.
    secret_key: SecretStr | None = Field(default=None, validation_alias="SLIDEFARM_SECRET_KEY")
    #: Seconds a signed output link works.
    signed_url_ttl: float = Field(
        default=3600.0, ge=1, le=MAX_SIGNED_URL_TTL, validation_alias="SLIDEFARM_SIGNED_URL_TTL"
    )
    #: Reverse proxies in front of the API whose X-Forwarded-For/-Proto/-Host/-Port
    #: are believed; 0 believes none, so a client cannot forge them.
    trusted_proxies: int = Field(
        default=0, ge=0, le=10, validation_alias="SLIDEFARM_TRUSTED_PROXIES"
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                normalize_origin(part)  # raises on anything but scheme://host[:port]
        return value

    @property
    def cors_origin_set(self) -> frozenset[str]:
        """The origins of :attr:`cors_origins`, as browsers write them."""
        return frozenset(
            normalize_origin(part) for part in self.cors_origins.split(",") if part.strip()
        )

    @field_validator("secret_key", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if isinstance(raw, str) and len(raw) < MIN_SECRET_KEY_LENGTH:
            raise ValueError(
                f"SLIDEFARM_SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} "
                "characters (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)"
            )
        return value

    @field_validator("webhook_allow", "fetch_allow")
    @classmethod
    def _cidrs(cls, value: str, info: ValidationInfo) -> str:
        for part in value.split(","):
            if part.strip():
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError as exc:
                    name = f"SLIDEFARM_{(info.field_name or '').upper()}"
                    raise ValueError(f"{name}: {exc}") from exc
        return value

    @property
    def webhook_allow_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The networks of :attr:`webhook_allow`."""
        return _networks(self.webhook_allow)

    @property
    def fetch_allow_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The networks of :attr:`fetch_allow`."""
        return _networks(self.fetch_allow)

    @property
    def active_job_cap(self) -> int | None:
        """:attr:`max_active_jobs`, or ``None`` when it is 0 (no cap)."""
        return self.max_active_jobs or None

    @property
    def auth_required(self) -> bool:
        """Whether requests need an API key (see :attr:`auth`)."""
        if self.auth is not None:
            return self.auth == "required"
        # Open mode is for the embedded single-user SQLite file only; any
        # other URL (or one that does not parse) is a shared server.
        try:
            return database_backend(self.database_url) != "sqlite"
        except exc.ArgumentError:
            return True

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
        return max(
            min(self.heartbeat_interval, self.stale_after / 4, self.dispatch_timeout / 4, 5.0), 0.05
        )

    @property
    def embedded_broker(self) -> bool:
        """True when the broker is kombu's serverless filesystem transport."""
        return self.celery_broker_url.startswith("filesystem://")


def normalize_origin(value: str) -> str:
    """``value`` as a browser writes it in ``Origin`` (lowercase, no default
    port, no trailing slash); ``ValueError`` unless it is ``scheme://host[:port]``."""
    text = value.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"SLIDEFARM_CORS_ORIGINS: {value!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
        or "*" in text
    ):
        raise ValueError(
            f"SLIDEFARM_CORS_ORIGINS: {value!r} is not an origin such as "
            "https://app.example or http://localhost:3000"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host += f":{port}"
    return f"{scheme}://{host}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
