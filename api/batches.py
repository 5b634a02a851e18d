"""``/v1/batches``: many decks submitted at once, and one handle on them.

Each item is checked exactly as a ``POST /v1/jobs`` body is
(:func:`api.jobs.validate_submission`, then its assets and voice); one bad
item refuses the whole batch with one 422 naming every problem under its
index (``jobs.3.slides.0.title``). The batch and its jobs are then one
transaction (:class:`storage.batches.BatchStore`); commit, then wake workers.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import TypeAdapter, ValidationError

from api.auth import owner_scope, principal
from api.dispatch import Dispatcher
from api.errors import (
    BadRequest,
    NotFound,
    ValidationFailed,
    error_response,
)
from api.jobs import (
    idempotency_key,
    int_arg,
    read_json_body,
    take_submission_token,
    validate_submission,
)
from api.schemas import CallbackUrl
from api.serialize import job_json
from api.services import services
from api.submission import (
    SubmissionInvalid,
    check_deck_assets,
    check_schedule,
    priority_ceiling,
    request_hash,
)
from api.voices import voice_problem
from core.urls import UnsafeCallback, check_callback_url
from storage import StorageError
from storage.assets import AssetStore
from storage.batches import MAX_BATCH_JOBS, BatchAssetNotFound, BatchNotFound, BatchStore, NewJob
from storage.jobs import MAX_LIST_LIMIT, Job, is_job_id
from storage.models import Status
from storage.registry import WorkerInfo, WorkerRegistry
from storage.serialize import batch_json

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

BATCH_FIELDS = frozenset({"jobs", "callback_url"})


@bp.errorhandler(BatchNotFound)
def _batch_not_found(exc: BatchNotFound) -> Response:
    return error_response(404, "batch_not_found", "no such batch")


def _batches() -> BatchStore:
    return BatchStore(services().store)


def _under(index: int, details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``details`` of item ``index``, each field under ``jobs.<index>``."""
    out = []
    for d in details:
        field = d.get("field") or "(body)"
        path = f"jobs.{index}" if field == "(body)" else f"jobs.{index}.{field}"
        out.append({**d, "field": path})
    return out


def _batch_callback(body: dict[str, Any]) -> str | None:
    raw = body.get("callback_url")
    if raw is None:
        return None
    try:
        url: str = TypeAdapter(CallbackUrl).validate_python(raw)
        check_callback_url(url, services().settings.webhook_allow_networks, unresolvable_ok=True)
    except ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"]
        raise ValidationFailed(
            "the batch's callback_url is invalid",
            [{"field": "callback_url", "message": message, "type": "callback_url"}],
        ) from exc
    except UnsafeCallback as exc:
        raise ValidationFailed(
            f"callback_url refused: {exc}",
            [{"field": "callback_url", "message": str(exc), "type": "unsafe_callback_url"}],
        ) from exc
    return url


def _parse_batch() -> tuple[list[NewJob], dict[str, Any], str | None]:
    """The batch's items as jobs to create, its body and its callback URL;
    one 422 naming every problem of every item, or nothing is created."""
    body = read_json_body()
    if not isinstance(body, dict):
        raise ValidationFailed(
            'the body must be a JSON object: {"jobs": [...]}',
            [{"field": "(body)", "message": "expected an object"}],
        )
    unknown = sorted(body.keys() - BATCH_FIELDS)
    if unknown:
        raise ValidationFailed(
            f"a batch has only jobs and callback_url; not {', '.join(unknown)}",
            [{"field": n, "message": "unknown field", "type": "extra_forbidden"} for n in unknown],
        )
    items = body.get("jobs")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_JOBS:
        count = f"got {len(items)}" if isinstance(items, list) else "expected a list"
        raise ValidationFailed(
            f"jobs must be a list of 1 to {MAX_BATCH_JOBS} submissions",
            [{"field": "jobs", "message": count, "type": "batch_size"}],
        )
    callback_url = _batch_callback(body)
    svc = services()
    who = principal()
    owner = who.tenant
    ceiling = priority_ceiling(svc.store, owner, admin=who.admin, default=svc.settings.max_priority)
    assets = AssetStore(svc.store, svc.settings.output_dir)
    workers: list[WorkerInfo] | None = None
    problems: list[dict[str, Any]] = []
    new_jobs: list[NewJob] = []
    for index, item in enumerate(items):
        try:
            submission = validate_submission(item)
        except ValidationFailed as invalid:
            problems += _under(index, invalid.details)
            continue
        except UnsafeCallback as unsafe:
            problems += _under(index, [{"field": "callback_url", "message": str(unsafe)}])
            continue
        deck = submission.deck()
        asset_ids = deck.asset_ids()
        try:
            schedule = check_schedule(
                submission.priority if "priority" in submission.model_fields_set else None,
                submission.run_at,
                ceiling=ceiling,
                max_schedule_days=svc.settings.max_schedule_days,
            )
            if asset_ids:
                check_deck_assets(
                    assets, deck, owner, max_video_seconds=svc.settings.max_video_seconds
                )
        except SubmissionInvalid as invalid:  # the schedule's or the assets'
            problems += _under(index, invalid.details)
            continue
        if workers is None:  # the registry, read once for the whole batch
            try:
                workers = WorkerRegistry(svc.store).list_workers()
            except StorageError:
                workers = []  # accepted, as for one job: its worker fails it if it must
        if problem := voice_problem(deck, workers, svc.settings.stale_after):
            problems += _under(
                index, [{"field": "options.voice", "message": problem, "type": "voice_unavailable"}]
            )
            continue
        new_jobs.append(
            NewJob(
                deck=deck.model_dump(mode="json"),
                title=deck.title,
                callback_url=submission.callback_url,
                asset_ids=asset_ids,
                priority=schedule.priority,
                run_at=schedule.run_at,
            )
        )
    if problems:
        bad = len({d["field"].split(".")[1] for d in problems})
        raise ValidationFailed(
            f"{bad} of the batch's {len(items)} jobs are invalid; nothing was created", problems
        )
    return new_jobs, body, callback_url


def wake_workers(dispatcher: Dispatcher, jobs: list[Job]) -> None:
    """After the commit, wake workers for the batch's queued jobs (scheduled
    ones wait for the sweeper; a failed send loses nothing: the sweeper sends
    again). The API and the CLI both wake through here."""
    # One wake-up per queued job, as for single submissions: as many workers
    # as there are jobs may start at once.
    dispatcher.wake(sum(1 for job in jobs if job.status is Status.QUEUED))


@bp.post("")
def submit() -> Response:
    """A batch of 1 to 500 jobs, all or nothing; one Idempotency-Key for all."""
    svc = services()
    who = principal()
    # A batch takes one token of the submission bucket: its size is bounded
    # by MAX_BATCH_JOBS and by the tenant's quota of active jobs instead.
    take_submission_token()
    items, body, callback_url = _parse_batch()
    key = idempotency_key()
    try:
        batch, jobs, created = _batches().create(
            items,
            owner=who.tenant,
            callback_url=callback_url,
            idempotency_key=key,
            request_hash=request_hash(body) if key else None,
            attempt_limit=svc.settings.max_attempts,
            max_active=svc.settings.active_job_cap,
        )
    except BatchAssetNotFound as gone:
        raise ValidationFailed(
            "an asset of the batch was deleted meanwhile; nothing was created",
            [
                {
                    "field": f"jobs.{gone.index}",
                    "message": "names an asset the tenant does not have (deleted meanwhile)",
                    "type": "asset_not_found",
                }
            ],
        ) from gone
    if created:
        wake_workers(svc.dispatcher, jobs)
    answer = batch_json(batch)
    answer["job_ids"] = [j.id for j in _batches().list_jobs(batch.id, limit=MAX_BATCH_JOBS).jobs]
    response = jsonify(answer)
    response.status_code = 202
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _status_arg() -> Status | None:
    raw = request.args.get("status")
    if raw is None:
        return None
    try:
        return Status(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise BadRequest(
            f"status must be one of {allowed}",
            [{"field": "status", "message": f"got {raw[:100]!r}"}],
            code="invalid_parameter",
        ) from None


def _batch_id(batch_id: str) -> str:
    if not is_job_id(batch_id):
        raise NotFound("no such batch", code="batch_not_found")
    return batch_id


@bp.get("")
def index() -> Response:
    """The tenant's batches, newest first (an admin's key: every tenant's)."""
    page = _batches().list_batches(
        owner=owner_scope(),
        limit=int_arg("limit", 50, 1, MAX_LIST_LIMIT),
        cursor=request.args.get("cursor"),
    )
    return jsonify(
        {"batches": [batch_json(b) for b in page.batches], "next_cursor": page.next_cursor}
    )


@bp.get("/<batch_id>")
def show(batch_id: str) -> Response:
    """The batch: counts by status, progress, times, its webhook."""
    return jsonify(batch_json(_batches().get(_batch_id(batch_id), owner=owner_scope())))


@bp.get("/<batch_id>/jobs")
def jobs(batch_id: str) -> Response:
    """The batch's jobs in submission order, optionally of one status."""
    status = _status_arg()
    page = _batches().list_jobs(
        _batch_id(batch_id),
        owner=owner_scope(),
        status=status,
        limit=int_arg("limit", 50, 1, MAX_LIST_LIMIT),
        cursor=request.args.get("cursor"),
    )
    return jsonify({"jobs": [job_json(j) for j in page.jobs], "next_cursor": page.next_cursor})


@bp.post("/<batch_id>/cancel")
def cancel(batch_id: str) -> Response:
    """Every job not final yet: waiting ones cancelled at once, processing
    ones stop within a heartbeat (each as ``POST /v1/jobs/{id}/cancel``)."""
    svc = services()
    result = BatchStore(svc.store).cancel(_batch_id(batch_id), owner=owner_scope())
    for job_id in result.webhooks:  # cancelled while waiting: armed now, as a job's cancel
        svc.dispatcher.send_webhook(job_id)
    response = jsonify(
        {
            "batch": batch_json(result.batch),
            "cancelled": result.cancelled,
            "stopping": result.flagged,
            "unchanged": result.unchanged,
        }
    )
    response.status_code = 202
    return response
