"""``slidefarm``: the command line for operators and scripts.

It talks to the job store and the broker directly (``DATABASE_URL``,
``CELERY_BROKER_URL``), like every other slidefarm process. Human tables by
default, ``--json`` for scripts; errors exit non-zero with one line.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from pydantic import TypeAdapter, ValidationError

from api.assets import asset_json
from api.batches import wake_workers
from api.dispatch import Dispatcher
from api.inspect import stats_json, worker_json
from api.schemas import RunAt
from api.serialize import event_json, iso, job_json
from api.submission import (
    Schedule,
    SubmissionInvalid,
    check_deck_assets,
    check_schedule,
    request_hash,
    submit_deck,
)
from api.voices import offered
from core.config import Settings, get_settings
from core.deck import ASPECTS, RESOLUTIONS, THEME_NAMES, Deck
from core.sniff import DOCUMENT_KINDS, AssetRefused
from core.urls import UnsafeCallback, check_callback_url
from storage import JobStore, Status, StorageError
from storage.access import (
    KEEP,
    AccessStore,
    InvalidLimit,
    InvalidTenantName,
    Keep,
    TenantLimits,
    UnknownTenant,
)
from storage.assets import Asset, AssetLimits, AssetStore
from storage.batches import MAX_BATCH_JOBS, BatchStore, NewJob
from storage.files import remove_job_files
from storage.models import DEFAULT_TENANT, MAX_PRIORITY, MIN_PRIORITY
from storage.registry import WorkerRegistry
from storage.serialize import batch_json
from storage.stats import Inspector

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    def __init__(self) -> None:
        self.settings: Settings = get_settings()
        self._store: JobStore | None = None
        self._dispatcher: Dispatcher | None = None

    @property
    def store(self) -> JobStore:
        if self._store is None:
            self._store = JobStore.from_settings(self.settings)
        return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(self.settings)
        return self._dispatcher


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")(fn)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StorageError as error:  # one line, non-zero exit
            raise click.ClickException(str(error)) from error


@click.group(cls=_Group)
def main() -> None:
    """slidefarm: render slide decks at scale."""


# -- submit ----------------------------------------------------------------

#: ``--run-at`` read by the rule the API reads ``run_at`` with.
_RUN_AT: TypeAdapter[Any] = TypeAdapter(RunAt)

priority_option = click.option(
    "--priority",
    type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY),
    default=None,
    help="Higher runs first (default 0); the CLI, like an admin key, may use up to 100.",
)
run_at_option = click.option(
    "--run-at",
    default=None,
    metavar="TIME",
    help="Run no earlier than TIME, ISO 8601 with its zone offset "
    "(2026-12-01T09:30:00Z); the job is scheduled until then.",
)


def _schedule(ctx: Context, priority: int | None, run_at: str | None) -> Schedule:
    """``--priority`` and ``--run-at`` checked as the API checks an admin's."""
    try:
        start = _RUN_AT.validate_python(run_at)
    except ValidationError as error:
        raise click.BadParameter(error.errors()[0]["msg"], param_hint="--run-at") from error
    try:
        return check_schedule(
            priority,
            start,
            ceiling=MAX_PRIORITY,  # an operator: as an admin key
            max_schedule_days=ctx.settings.max_schedule_days,
        )
    except SubmissionInvalid as invalid:
        fail(str(invalid))


def _bar(progress: float, width: int = 30) -> str:
    filled = round(progress * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {progress * 100:5.1f}%"


def _upload(ctx: Context, file: Path, tenant: str) -> tuple[Asset, bool]:
    """Store ``file`` as an asset of ``tenant`` (one line and a non-zero exit if refused)."""
    limits = AssetLimits.from_settings(ctx.settings)
    try:
        with file.open("rb") as data:
            return _asset_store(ctx).ingest(tenant, iter(lambda: data.read(1 << 16), b""), limits)
    except AssetRefused as error:
        raise click.ClickException(f"{file}: {error}") from error


def _document_body(
    ctx: Context, document: Path, tenant: str, title: str | None, options: dict[str, Any]
) -> dict[str, Any]:
    """A document deck's body: ``document`` uploaded, then named as the source."""
    asset, _ = _upload(ctx, document, tenant)
    if asset.kind not in DOCUMENT_KINDS:
        fail(f"{document}: a {asset.kind.upper()}, not a PDF or PPTX")
    body: dict[str, Any] = {"title": title or document.stem, "source": {"asset": asset.id}}
    chosen = {k: v for k, v in options.items() if v is not None}
    if chosen:
        body["options"] = chosen
    return body


@main.command()
@click.argument(
    "deck_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--pdf",
    "--pptx",
    "document",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Upload this PDF or PPTX and render its pages, one slide each (no DECK_FILE).",
)
@click.option(
    "--title", default=None, help="With --pdf/--pptx: the job's title (default: the file's name)."
)
@click.option("--resolution", type=click.Choice(list(RESOLUTIONS)), default=None)
@click.option("--aspect", type=click.Choice(list(ASPECTS)), default=None)
@click.option("--theme", type=click.Choice(THEME_NAMES), default=None)
@click.option("--transition", type=click.Choice(["none", "fade"]), default=None)
@click.option(
    "--narrate", is_flag=True, default=None, help="Speak each slide's notes (a PPTX's too)."
)
@click.option("--voice", default=None, help="The voice, as `slidefarm voices` lists them.")
@priority_option
@run_at_option
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
@click.option("--idempotency-key", default=None)
@click.option(
    "--tenant", default=DEFAULT_TENANT, show_default=True, help="The tenant that will own the job."
)
@json_option
@pass_ctx
def submit(
    ctx: Context,
    deck_file: Path | None,
    document: Path | None,
    title: str | None,
    resolution: str | None,
    aspect: str | None,
    theme: str | None,
    transition: str | None,
    narrate: bool | None,
    voice: str | None,
    priority: int | None,
    run_at: str | None,
    wait: bool,
    idempotency_key: str | None,
    tenant: str,
    as_json: bool,
) -> None:
    """Submit DECK_FILE (JSON) as a new job, or a PDF or PPTX with --pdf FILE.

    The render options override the deck file's."""
    if (deck_file is None) == (document is None):
        fail("give either DECK_FILE or --pdf/--pptx FILE")
    schedule = _schedule(ctx, priority, run_at)
    options = {
        "resolution": resolution,
        "aspect": aspect,
        "theme": theme,
        "transition": transition,
        "narrate": narrate or None,
        "voice": voice,
    }
    if document is not None:
        body = _document_body(ctx, document, tenant, title, options)
        source = str(document)
    else:
        assert deck_file is not None
        source = str(deck_file)
        try:
            body = json.loads(deck_file.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as error:
            fail(f"{deck_file}: not valid JSON: {error}")
            return
        if isinstance(body, dict) and any(v is not None for v in options.values()):
            given = body.get("options")
            chosen = {k: v for k, v in options.items() if v is not None}
            body["options"] = {**given, **chosen} if isinstance(given, dict) else chosen
    try:
        deck = Deck.model_validate(body)
    except ValidationError as error:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(body)" for e in error.errors())
        fail(f"{source}: invalid deck ({fields})")
        return
    # What the deck file does not say, hashed with it for --idempotency-key
    # (as the API hashes its whole body).
    asked = {k: v for k, v in (("priority", priority), ("run_at", run_at)) if v is not None}
    try:
        job, _ = submit_deck(
            ctx.store,
            ctx.dispatcher,
            deck,
            {**body, **asked} if isinstance(body, dict) else body,
            idempotency_key=idempotency_key,
            max_attempts=ctx.settings.max_attempts,
            owner=tenant,
            assets=_asset_store(ctx),
            max_video_seconds=ctx.settings.max_video_seconds,
            stale_after=ctx.settings.stale_after,
            priority=schedule.priority,
            run_at=schedule.run_at,
        )
    except SubmissionInvalid as invalid:
        fail(f"{source}: {invalid}")
        return
    if not wait:
        emit(job_json(job)) if as_json else click.echo(job.id)
        return
    if not as_json:
        click.echo(f"job {job.id}: {job.title}")
    live = sys.stdout.isatty()
    shown = ""
    while True:
        job = ctx.store.get(job.id)
        line = f"  {job.status.value:<10} {job.stage.value:<17} {_bar(job.progress)}"
        if not as_json and line != shown:
            click.echo(("\r" + line) if live else line, nl=not live)
            shown = line
        if job.status.is_final:
            break
        time.sleep(0.3)
    if as_json:
        emit(job_json(job))
    else:
        if live:
            click.echo()
        if job.status is Status.COMPLETED:
            click.echo(f"video: {ctx.settings.output_dir / job.id / 'video.mp4'}")
    if job.status is not Status.COMPLETED:
        fail(f"job {job.id} {job.status.value}: {job.error or 'no error recorded'}")


# -- jobs ------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """List, show, cancel, retry and delete jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice([s.value for s in Status]))
@click.option("--search", default=None, help="Title substring or id prefix.")
@click.option("--limit", type=click.IntRange(1, 500), default=50)
@json_option
@pass_ctx
def jobs_list(
    ctx: Context, status: str | None, search: str | None, limit: int, as_json: bool
) -> None:
    """Jobs, newest first."""
    page = ctx.store.list_jobs(
        status=Status(status) if status else None, limit=limit, search=search
    )
    if as_json:
        emit({"jobs": [job_json(j) for j in page.jobs], "next_cursor": page.next_cursor})
        return
    click.echo(
        table(
            [
                (
                    j.id,
                    j.status.value,
                    f"{j.progress * 100:.0f}%",
                    j.stage.value,
                    j.priority,
                    j.attempts,
                    j.worker or "",
                    j.title[:40],
                )
                for j in page.jobs
            ],
            ["ID", "STATUS", "PROGRESS", "STAGE", "PRIORITY", "ATTEMPTS", "WORKER", "TITLE"],
        )
    )


@jobs.command("show")
@click.argument("job_id")
@json_option
@pass_ctx
def jobs_show(ctx: Context, job_id: str, as_json: bool) -> None:
    """Every field of a job, and its history."""
    body = job_json(ctx.store.get(job_id))
    body["history"] = [event_json(e) for e in ctx.store.history(job_id)]
    if as_json:
        emit(body)
        return
    for key, value in body.items():
        if key not in ("history", "files", "options", "timings", "created_files"):
            click.echo(f"{key:>18}: {'' if value is None else value}")
    for key, value in body["timings"].items():
        click.echo(f"{key:>18}: {'' if value is None else value}")
    click.echo(f"{'files':>18}: {len(body['files'])}")
    click.echo("history:")
    click.echo(
        table(
            [
                (
                    e["at"],
                    e["from"] or "-",
                    e["to"],
                    e["attempt"],
                    e["worker"] or "-",
                    e["reason"] or "",
                )
                for e in body["history"]
            ],
            ["AT", "FROM", "TO", "ATTEMPT", "WORKER", "REASON"],
        )
    )


@jobs.command("cancel")
@click.argument("job_id")
@json_option
@pass_ctx
def jobs_cancel(ctx: Context, job_id: str, as_json: bool) -> None:
    """Cancel a scheduled, queued or processing job."""
    job = ctx.store.request_cancel(job_id)
    emit(job_json(job)) if as_json else click.echo(
        f"{job.id}: {'cancel requested' if job.cancel_requested else job.status.value}"
    )


@jobs.command("retry")
@click.argument("job_id")
@json_option
@pass_ctx
def jobs_retry(ctx: Context, job_id: str, as_json: bool) -> None:
    """Queue a failed or cancelled job again."""
    job = ctx.store.retry(job_id, max_attempts=ctx.settings.max_attempts)
    ctx.dispatcher.wake()
    emit(job_json(job)) if as_json else click.echo(f"{job.id}: {job.status.value}")


@jobs.command("delete")
@click.argument("job_id")
@pass_ctx
def jobs_delete(ctx: Context, job_id: str) -> None:
    """Delete a job, its history and its files."""
    if not ctx.store.delete(job_id):
        fail(f"no such job: {job_id}")
    remove_job_files(ctx.settings.output_dir, job_id)
    click.echo(f"{job_id}: deleted")


# -- assets ------------------------------------------------------------------


@main.group()
def assets() -> None:
    """Upload, list and delete a tenant's images and documents."""


def _asset_store(ctx: Context) -> AssetStore:
    return AssetStore(ctx.store, ctx.settings.output_dir)


@assets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True)
@json_option
@pass_ctx
def assets_upload(ctx: Context, file: Path, tenant: str, as_json: bool) -> None:
    """Store FILE (PNG, JPEG, WebP, GIF, PDF or PPTX, judged by its bytes)."""
    asset, created = _upload(ctx, file, tenant)
    if as_json:
        emit({**asset_json(asset), "created": created})
        return
    again = "" if created else " (already stored)"
    click.echo(f"{asset.id}: {asset.kind}, {asset.size_bytes} bytes{again}")


@assets.command("list")
@click.option("--tenant", default=None, help="One tenant's assets (default: every tenant's).")
@click.option("--limit", type=click.IntRange(1, 500), default=50)
@json_option
@pass_ctx
def assets_list(ctx: Context, tenant: str | None, limit: int, as_json: bool) -> None:
    """Assets, newest first."""
    page = _asset_store(ctx).list_assets(owner=tenant, limit=limit)
    if as_json:
        emit({"assets": [asset_json(a) for a in page.assets], "next_cursor": page.next_cursor})
        return
    click.echo(
        table(
            [
                (a.id, a.owner, a.kind, a.size_bytes, iso(a.created_at), iso(a.last_used_at))
                for a in page.assets
            ],
            ["ID", "TENANT", "KIND", "BYTES", "CREATED", "LAST USED"],
        )
    )


@assets.command("delete")
@click.argument("asset_id")
@pass_ctx
def assets_delete(ctx: Context, asset_id: str) -> None:
    """Delete an asset and its file (refused while a job that has not ended uses it)."""
    _asset_store(ctx).delete(asset_id)
    click.echo(f"{asset_id}: deleted")


# -- workers, stats, cleanup ---------------------------------------------------


@main.command()
@json_option
@pass_ctx
def workers(ctx: Context, as_json: bool) -> None:
    """Every registered worker, alive or not."""
    found = [
        worker_json(w, ctx.settings.stale_after) for w in WorkerRegistry(ctx.store).list_workers()
    ]
    if as_json:
        emit({"workers": found})
        return
    click.echo(
        table(
            [
                (
                    w["name"],
                    w["host"],
                    w["pid"],
                    w["state"],
                    f"{w['last_seen_seconds_ago']}s ago",
                    w["current_job"] or "",
                    w["jobs_done"],
                    w["jobs_failed"],
                    w["jobs_retried"],
                    w["jobs_cancelled"],
                )
                for w in found
            ],
            [
                "NAME",
                "HOST",
                "PID",
                "STATE",
                "LAST SEEN",
                "CURRENT JOB",
                "DONE",
                "FAILED",
                "RETRIED",
                "CANCELLED",
            ],
        )
    )


@main.command()
@json_option
@pass_ctx
def voices(ctx: Context, as_json: bool) -> None:
    """The voices live workers offer (as GET /v1/voices lists them)."""
    found = [
        o.json()
        for o in offered(WorkerRegistry(ctx.store).list_workers(), ctx.settings.stale_after)
    ]
    if as_json:
        emit({"voices": found})
        return
    if not found:
        click.echo("no live worker offers a voice (espeak-ng: make espeak; Piper: the piper extra)")
        return
    click.echo(
        table(
            [(v["id"], v["engine"], v["language"], v["name"], v["workers"]) for v in found],
            ["VOICE", "ENGINE", "LANGUAGE", "NAME", "WORKERS"],
        )
    )


@main.command()
@json_option
@pass_ctx
def stats(ctx: Context, as_json: bool) -> None:
    """Counts by status, queue depth and throughput."""
    data = stats_json(
        Inspector(ctx.store).stats(), ctx.dispatcher.queue_depth(), ctx.settings.max_running
    )
    if as_json:
        emit(data)
        return
    for status, count in data["counts"].items():
        click.echo(f"{status:>22}: {count}")
    for key in (
        "queue_depth",
        "oldest_queued_seconds",
        "completed_last_hour",
        "throughput_per_minute",
        "recovered_total",
    ):
        value = data[key]
        click.echo(f"{key.replace('_', ' '):>22}: {'-' if value is None else value}")
    if data["tenants"]:
        click.echo()
        click.echo(
            table(
                [
                    (
                        t["tenant"],
                        t["queued"],
                        t["running"],
                        t["max_running"] or "-",
                        t["scheduled"],
                        "-"
                        if t["oldest_eligible_seconds"] is None
                        else t["oldest_eligible_seconds"],
                        t["weight"],
                    )
                    for t in data["tenants"]
                ],
                ["TENANT", "QUEUED", "RUNNING", "MAX", "SCHEDULED", "OLDEST (s)", "WEIGHT"],
            )
        )


def parse_age(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``45s`` or a bare number of days."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r}: use a number with d, h, m or s (e.g. 7d)")
    value, unit = float(match.group(1)), match.group(2) or "d"
    return timedelta(**{{"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[unit]: value})


@main.command()
@click.option(
    "--older-than",
    "older_than",
    default=None,
    help="Age like 7d or 12h (default: SLIDEFARM_RETENTION_DAYS).",
)
@pass_ctx
def cleanup(ctx: Context, older_than: str | None) -> None:
    """Delete finished jobs (and their files) older than the given age."""
    age = parse_age(older_than) if older_than else timedelta(days=ctx.settings.retention_days)
    count = 0
    while True:  # a bounded batch per transaction, until none is left
        deleted = ctx.store.delete_older_than(age.total_seconds() / 86400)
        for job_id in deleted:
            remove_job_files(ctx.settings.output_dir, job_id)
        count += len(deleted)
        if not deleted:
            break
    click.echo(f"deleted {count} job(s) older than {age}")


# -- keys --------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys and tenants (keys read `sf_<id>_<secret>`; only a hash is kept)."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant (created if new).")
@click.option("--admin", is_flag=True, help="The key sees and manages every tenant's jobs.")
@json_option
@pass_ctx
def keys_create(ctx: Context, tenant: str, admin: bool, as_json: bool) -> None:
    """Create a key; it is shown once, now, and never again."""
    try:
        made = AccessStore(ctx.store).create_key(tenant, admin=admin)
    except InvalidTenantName as error:
        fail(str(error))
        return
    if as_json:
        emit(
            {
                "id": made.key.id,
                "tenant": tenant,
                "admin": admin,
                "key": made.token,
                "webhook_secret": made.webhook_secret,
            }
        )
        return
    click.echo(f"key {made.key.id} for tenant {tenant}{' (admin)' if admin else ''}:")
    click.echo(made.token)
    if made.webhook_secret:
        click.echo(f"webhook signing secret of the new tenant {tenant}:")
        click.echo(made.webhook_secret)
    click.echo("Store them now: they are not shown again.", err=True)


@keys.command("list")
@click.option("--tenant", default=None)
@json_option
@pass_ctx
def keys_list(ctx: Context, tenant: str | None, as_json: bool) -> None:
    """Every key (id, tenant, admin, created, revoked): never a secret."""
    found = AccessStore(ctx.store).list_keys(tenant)
    rows = [
        {
            "id": k.id,
            "prefix": k.prefix,
            "tenant": k.tenant,
            "admin": k.admin,
            "created_at": iso(k.created_at),
            "revoked_at": iso(k.revoked_at),
        }
        for k in found
    ]
    if as_json:
        emit({"keys": rows})
        return
    click.echo(
        table(
            [
                (
                    r["id"],
                    r["tenant"],
                    "yes" if r["admin"] else "",
                    r["created_at"],
                    r["revoked_at"] or "",
                )
                for r in rows
            ],
            ["ID", "TENANT", "ADMIN", "CREATED", "REVOKED"],
        )
    )


@keys.command("revoke")
@click.argument("key_id")
@pass_ctx
def keys_revoke(ctx: Context, key_id: str) -> None:
    """Revoke a key by its id: every API host refuses it within SLIDEFARM_KEY_CACHE_TTL."""
    if not AccessStore(ctx.store).revoke(key_id):
        fail(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


@keys.command("rotate-webhook-secret")
@click.option("--tenant", required=True)
@pass_ctx
def keys_rotate(ctx: Context, tenant: str) -> None:
    """A new webhook signing secret; the old one also signs for the grace period."""
    try:
        secret = AccessStore(ctx.store).rotate_webhook_secret(
            tenant, grace=ctx.settings.webhook_rotation_grace
        )
    except UnknownTenant:
        fail(f"no tenant {tenant}")
        return
    click.echo(secret)
    click.echo(
        f"the previous secret also signs for {ctx.settings.webhook_rotation_grace:g} s", err=True
    )


# -- tenants -----------------------------------------------------------------------


@main.group()
def tenants() -> None:
    """Tenants and their limits: share of the workers, running jobs, priority."""


def _limits_json(limits: TenantLimits, settings: Settings) -> dict[str, Any]:
    """A tenant's limits as set (``null``: the setting) and as in force."""
    return {
        "tenant": limits.tenant,
        "weight": limits.weight,
        "max_running": limits.max_running,
        "max_priority": limits.max_priority,
        "effective": {
            "max_running": settings.max_running
            if limits.max_running is None
            else limits.max_running,
            "max_priority": settings.max_priority
            if limits.max_priority is None
            else limits.max_priority,
        },
    }


def _limit_cell(value: int | None, setting: int, zero: str = "") -> str:
    shown = setting if value is None else value
    text = zero if zero and shown == 0 else str(shown)
    return f"{text} (default)" if value is None else text


def _limits_table(rows: list[dict[str, Any]], settings: Settings) -> str:
    return table(
        [
            (
                r["tenant"],
                f"{r['weight']:g}",
                _limit_cell(r["max_running"], settings.max_running, zero="no cap"),
                _limit_cell(r["max_priority"], settings.max_priority),
            )
            for r in rows
        ],
        ["TENANT", "WEIGHT", "MAX RUNNING", "MAX PRIORITY"],
    )


@tenants.command("list")
@json_option
@pass_ctx
def tenants_list(ctx: Context, as_json: bool) -> None:
    """Every tenant with its weight, max running jobs and max priority."""
    rows = [_limits_json(t, ctx.settings) for t in AccessStore(ctx.store).all_limits()]
    if as_json:
        emit({"tenants": rows})
        return
    click.echo(_limits_table(rows, ctx.settings))


def _cap(low: int, high: int | None) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: an integer from ``low`` (to ``high``), ``default``
    (``None``: back to the setting), or unset (:data:`KEEP`)."""

    def convert(_: click.Context, param: click.Parameter, value: str | None) -> int | Keep | None:
        if value is None:
            return KEEP
        if value == "default":
            return None
        try:
            number = int(value)
        except ValueError:
            number = low - 1
        if number < low or (high is not None and number > high):
            span = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise click.BadParameter(f"{value!r}: an integer {span}, or default")
        return number

    return convert


@tenants.command("limits")
@click.argument("name")
@click.option(
    "--weight",
    type=float,
    default=None,
    help="Its share of the workers against other tenants' (above 0; default 1).",
)
@click.option(
    "--max-running",
    callback=_cap(0, None),
    metavar="N|default",
    help="Most of its jobs processing at once (0: no cap; default: SLIDEFARM_MAX_RUNNING).",
)
@click.option(
    "--max-priority",
    callback=_cap(MIN_PRIORITY, MAX_PRIORITY),
    metavar="P|default",
    help="Highest priority its jobs may ask for (default: SLIDEFARM_MAX_PRIORITY).",
)
@json_option
@pass_ctx
def tenants_limits(
    ctx: Context,
    name: str,
    weight: float | None,
    max_running: int | Keep | None,
    max_priority: int | Keep | None,
    as_json: bool,
) -> None:
    """Show NAME's limits, changing those given first."""
    try:
        limits = AccessStore(ctx.store).set_limits(
            name,
            weight=KEEP if weight is None else weight,
            max_running=max_running,
            max_priority=max_priority,
        )
    except UnknownTenant:
        fail(f"no tenant {name} (slidefarm keys create --tenant {name} makes one)")
        return
    except InvalidLimit as error:
        fail(str(error))
        return
    row = _limits_json(limits, ctx.settings)
    if as_json:
        emit(row)
        return
    click.echo(_limits_table([row], ctx.settings))


# -- batches -------------------------------------------------------------------


@main.group()
def batches() -> None:
    """Submit many decks as one batch; show, list and cancel batches."""


@batches.command("submit")
@click.argument(
    "deck_files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--callback-url", default=None, help="Where the finished batch is POSTed once.")
@priority_option
@run_at_option
@click.option("--idempotency-key", default=None)
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True)
@json_option
@pass_ctx
def batches_submit(
    ctx: Context,
    deck_files: tuple[Path, ...],
    callback_url: str | None,
    priority: int | None,
    run_at: str | None,
    idempotency_key: str | None,
    tenant: str,
    as_json: bool,
) -> None:
    """Submit every DECK_FILE (JSON) as one batch: all recorded, or none
    (--priority and --run-at apply to each)."""
    if len(deck_files) > MAX_BATCH_JOBS:
        fail(f"a batch holds at most {MAX_BATCH_JOBS} decks; got {len(deck_files)}")
    schedule = _schedule(ctx, priority, run_at)
    if callback_url is not None:
        try:
            check_callback_url(
                callback_url, ctx.settings.webhook_allow_networks, unresolvable_ok=True
            )
        except UnsafeCallback as error:
            fail(f"--callback-url refused: {error}")
    assets = _asset_store(ctx)
    items: list[NewJob] = []
    bodies: list[Any] = []
    problems: list[str] = []
    for n, deck_file in enumerate(deck_files):
        try:
            body = json.loads(deck_file.read_text(encoding="utf-8"))
            deck = Deck.model_validate(body)
            if deck.asset_ids():
                check_deck_assets(
                    assets, deck, tenant, max_video_seconds=ctx.settings.max_video_seconds
                )
        except (ValueError, RecursionError) as error:  # JSON, ValidationError, assets
            first = str(error).splitlines()[0]
            problems.append(f"jobs.{n} ({deck_file}): {first}")
            continue
        bodies.append(body)
        items.append(
            NewJob(
                deck.model_dump(mode="json"),
                title=deck.title,
                callback_url=body.get("callback_url") if isinstance(body, dict) else None,
                asset_ids=deck.asset_ids(),
                priority=schedule.priority,
                run_at=schedule.run_at,
            )
        )
    if problems:
        fail("nothing was created:\n  " + "\n  ".join(problems))
    batch, jobs, created = BatchStore(ctx.store).create(
        items,
        owner=tenant,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
        request_hash=request_hash(
            {"jobs": bodies, "callback_url": callback_url, "priority": priority, "run_at": run_at}
        )
        if idempotency_key
        else None,
        attempt_limit=ctx.settings.max_attempts,
    )
    if created:
        wake_workers(ctx.dispatcher, jobs)  # committed: now the workers
    if as_json:
        emit({**batch_json(batch), "replayed": not created})
        return
    click.echo(batch.id)


@batches.command("show")
@click.argument("batch_id")
@json_option
@pass_ctx
def batches_show(ctx: Context, batch_id: str, as_json: bool) -> None:
    """A batch: its jobs by status, progress, times and webhook."""
    batch = BatchStore(ctx.store).get(batch_id)
    if as_json:
        emit(batch_json(batch))
        return
    body = batch_json(batch)
    for key in ("batch_id", "owner", "total", "progress", "created_at", "finished_at"):
        click.echo(f"{key:>12}: {'' if body[key] is None else body[key]}")
    for status, n in batch.counts.items():
        click.echo(f"{status:>12}: {n}")
    webhook = body["webhook"]
    if webhook is not None:
        click.echo(
            f"{'webhook':>12}: {webhook['status'] or 'waiting'} ({webhook['attempts']} attempts)"
        )


@batches.command("list")
@click.option("--tenant", default=None, help="One tenant's batches (default: every tenant's).")
@click.option("--limit", type=click.IntRange(1, 500), default=50)
@json_option
@pass_ctx
def batches_list(ctx: Context, tenant: str | None, limit: int, as_json: bool) -> None:
    """Batches, newest first."""
    page = BatchStore(ctx.store).list_batches(owner=tenant, limit=limit)
    if as_json:
        emit({"batches": [batch_json(b) for b in page.batches], "next_cursor": page.next_cursor})
        return
    click.echo(
        table(
            [
                (
                    b.id,
                    b.owner,
                    b.total,
                    f"{b.progress * 100:.0f}%",
                    b.counts.get("completed", 0),
                    b.counts.get("failed", 0),
                    b.counts.get("cancelled", 0),
                    b.active,
                    iso(b.finished_at) or "",
                )
                for b in page.batches
            ],
            [
                "ID",
                "TENANT",
                "JOBS",
                "PROGRESS",
                "DONE",
                "FAILED",
                "CANCELLED",
                "ACTIVE",
                "FINISHED",
            ],
        )
    )


@batches.command("cancel")
@click.argument("batch_id")
@json_option
@pass_ctx
def batches_cancel(ctx: Context, batch_id: str, as_json: bool) -> None:
    """Cancel every job of a batch that has not ended."""
    result = BatchStore(ctx.store).cancel(batch_id)
    if as_json:
        emit(
            {
                "batch": batch_json(result.batch),
                "cancelled": result.cancelled,
                "stopping": result.flagged,
                "unchanged": result.unchanged,
            }
        )
        return
    click.echo(
        f"{batch_id}: {result.cancelled} cancelled, {result.flagged} stopping, "
        f"{result.unchanged} already ended"
    )


# -- database ------------------------------------------------------------------


@main.group()
def db() -> None:
    """Schema and data moves."""


@db.command("upgrade")
@click.option("--url", default=None, help="Database URL (default: DATABASE_URL).")
@pass_ctx
def db_upgrade(ctx: Context, url: str | None) -> None:
    """Create or upgrade the schema (alembic upgrade head)."""
    from storage.migrate import upgrade

    upgrade(url or ctx.settings.database_url)
    click.echo("schema at head")


@db.command("copy")
@click.option("--from", "source", required=True, help="Database URL to read.")
@click.option("--to", "target", required=True, help="Database URL to write (migrated first).")
def db_copy(source: str, target: str) -> None:
    """Copy every job, its files' records and its history to another database."""
    from storage.migrate import copy_database, upgrade

    upgrade(target)
    counts = copy_database(source, target)
    click.echo(", ".join(f"{n} {table}" for table, n in counts.items()) + " copied")


if __name__ == "__main__":  # pragma: no cover
    main()
