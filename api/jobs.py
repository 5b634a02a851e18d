"""``/v1/jobs``: submit, read, list and download. Views parse, call the store,
shape the answer."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_etags

from api.assets import asset_json
from api.auth import owner_scope, principal
from api.errors import (
    BadRequest,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedMediaType,
    ValidationFailed,
    retry_after,
)
from api.files import scoped_job, serve_output
from api.schemas import Submission
from api.serialize import delivery_json, event_json, job_json
from api.services import services
from api.signing import OPEN_KEY_ID, UrlSigner, signed_links
from api.submission import (
    DeckAssetsInvalid,
    Schedule,
    SubmissionInvalid,
    check_schedule,
    priority_ceiling,
    submit_deck,
)
from core.urls import check_callback_url
from storage import Job, Status
from storage.assets import AssetStore
from storage.deliveries import WebhookDeliveries
from storage.files import (
    SUBTITLES_SRT,
    SUBTITLES_VTT,
    THUMBNAIL_FILE,
    VIDEO_FILE,
    remove_job_files,
    slide_file,
)
from storage.jobs import MAX_LIST_LIMIT, is_job_id

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

MAX_IDEMPOTENCY_KEY = 255
#: Fields the server sets; a submission naming one is refused, not ignored.
READ_ONLY_FIELDS = frozenset(
    {
        "job_id",
        "id",
        "status",
        "progress",
        "stage",
        "error",
        "owner",
        "tenant",
        "attempts",
        "worker",
        "created_at",
        "started_at",
        "completed_at",
        "last_heartbeat",
        "video_url",
        "thumbnail_url",
        "slide_image_path",
        "created_files",
        "files",
        "cancel_requested",
        "max_attempts",
        "timings",
        "webhook",
    }
)


def _field(loc: tuple[Any, ...]) -> str:
    # A union's member tags ("constrained-float", "literal['auto']") name no
    # field: ``slides.0.duration`` is what the client sent wrong.
    parts = [str(p) for p in loc if not isinstance(p, str) or re.fullmatch(r"\w+", p)]
    return ".".join(parts) or "(body)"


def _read_body() -> bytes:
    """The whole body, refused with 413 past the limit, chunked or not."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    if request.content_length is None and request.environ.get("wsgi.input_terminated"):
        # A chunked body the server de-chunks: read one byte past the limit
        # ourselves (Werkzeug's limited stream would stop short, silently).
        raw: bytes = request.environ["wsgi.input"].read(limit + 1)
    else:
        raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise RequestEntityTooLarge()
    return raw


def _parse_submission() -> tuple[Submission, dict[str, Any]]:
    body = read_json_body()
    return validate_submission(body), body


def read_json_body() -> Any:
    """The request's JSON body: 415 unless JSON, 413 past the limit, 400 if malformed."""
    if not request.mimetype or (
        request.mimetype != "application/json"
        and not (request.mimetype.startswith("application/") and request.mimetype.endswith("+json"))
    ):
        raise UnsupportedMediaType()
    raw = _read_body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints
        raise BadRequest(f"the body is not valid JSON: {exc}"[:300], code="malformed_json") from exc


def validate_submission(body: Any) -> Submission:
    """A submission body (parsed JSON) checked as ``POST /v1/jobs`` checks it
    (:class:`ValidationFailed` naming each field; :class:`UnsafeCallback`),
    for one job or for each item of a batch."""
    if not isinstance(body, dict):
        raise ValidationFailed(
            "the body must be a JSON object describing a deck",
            [{"field": "(body)", "message": "expected an object"}],
        )
    read_only = sorted(READ_ONLY_FIELDS & body.keys())
    if read_only:
        raise ValidationFailed(
            f"the server sets {', '.join(read_only)}; a submission may not",
            [
                {"field": name, "message": "read-only: set by the server", "type": "read_only"}
                for name in read_only
            ],
        )
    try:
        submission = Submission.model_validate(body)
    except ValidationError as exc:
        details = [
            {"field": _field(err["loc"]), "message": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationFailed(f"the deck has {len(details)} invalid field(s)", details) from exc
    if submission.callback_url is not None:
        # Refused here (422) and again at every delivery: DNS answers change.
        check_callback_url(
            submission.callback_url,
            services().settings.webhook_allow_networks,
            unresolvable_ok=True,
        )
    total, limit = submission.total_seconds, services().settings.max_video_seconds
    if total > limit:
        raise ValidationFailed(
            f"the video would last {total:g} s; the limit is {limit:g} s",
            [
                {
                    "field": "slides",
                    "message": f"the durations add up to {total:g} s, "
                    f"over SLIDEFARM_MAX_VIDEO_SECONDS ({limit:g})",
                    "type": "too_long",
                }
            ],
        )
    return submission


def _accepted(job: Job) -> Response:
    response = jsonify(job_json(job))
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return response


def take_submission_token() -> None:
    """Take one token of the caller's submission bucket (per key, else per
    tenant), or answer ``429`` with when to try again. A job and a batch take
    one each."""
    svc = services()
    who = principal()
    wait = svc.limiter.take(
        f"submit:{who.key_id or who.tenant}",
        rate=svc.settings.submit_rate,
        burst=svc.settings.submit_burst,
    )
    if wait > 0:
        raise TooManyRequests(
            f"too many submissions: this key may submit {svc.settings.submit_rate:g} per "
            f"second (bursts of {svc.settings.submit_burst})",
            retry_after(wait),
        )


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key`` header, if any; ``400`` unless it is
    1 to :data:`MAX_IDEMPOTENCY_KEY` printable ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (
        1 <= len(key) <= MAX_IDEMPOTENCY_KEY and all(" " <= ch <= "~" for ch in key)
    ):
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            [{"field": "Idempotency-Key", "message": "invalid key"}],
            code="invalid_parameter",
        )
    return key


@bp.post("")
def submit() -> Response:
    """Record the job, commit, then send its task (never the other way round)."""
    take_submission_token()
    submission, body = _parse_submission()
    key = idempotency_key()
    try:
        job, created = _submit(submission, body, key)
    except DeckAssetsInvalid as invalid:
        raise ValidationFailed(
            f"the deck names {len(invalid.details)} asset(s) it cannot use", invalid.details
        ) from invalid
    except SubmissionInvalid as invalid:
        raise ValidationFailed(
            f"the submission asks for what it may not: {invalid}", invalid.details
        ) from invalid
    response = _accepted(job)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _submit(submission: Submission, body: dict[str, Any], key: str | None) -> tuple[Job, bool]:
    svc = services()
    who = principal()
    asked = submission.priority if "priority" in submission.model_fields_set else None

    def schedule_within(ceiling: int | None) -> Schedule:
        return check_schedule(
            asked,
            submission.run_at,
            ceiling=ceiling,
            max_schedule_days=svc.settings.max_schedule_days,
        )

    # The ceiling is checked by the insert itself (no read of the tenant's
    # limits first); a submission refused for its run_at reads it to say
    # everything that is wrong at once.
    try:
        schedule = schedule_within(None)
    except SubmissionInvalid:
        schedule_within(
            priority_ceiling(
                svc.store, who.tenant, admin=who.admin, default=svc.settings.max_priority
            )
        )
        raise
    return submit_deck(
        svc.store,
        svc.dispatcher,
        submission,
        body,
        idempotency_key=key,
        max_attempts=svc.settings.max_attempts,
        owner=who.tenant,
        callback_url=submission.callback_url,
        max_active=svc.settings.active_job_cap,
        assets=AssetStore(svc.store, svc.settings.output_dir),
        max_video_seconds=svc.settings.max_video_seconds,
        stale_after=svc.settings.stale_after,
        priority=schedule.priority,
        run_at=schedule.run_at,
        priority_ceiling=None if who.admin else svc.settings.max_priority,
    )


def _include_arg() -> set[str]:
    """``?include=history,deliveries`` (a comma-separated list of known names)."""
    raw = request.args.get("include")
    if raw is None:
        return set()
    include = {part.strip() for part in raw.split(",")}
    if include - {"history", "deliveries", "assets"}:
        raise BadRequest(
            "include accepts: history, deliveries, assets",
            [{"field": "include", "message": f"got {raw[:100]!r}"}],
            code="invalid_parameter",
        )
    return include


def _flag_arg(name: str) -> bool:
    """``?name=1`` (true) or ``?name=0`` (false, as absent); anything else is a 400."""
    raw = request.args.get(name)
    if raw is None or raw == "0":
        return False
    if raw == "1":
        return True
    raise BadRequest(
        f"{name} must be 1 or 0",
        [{"field": name, "message": f"got {raw[:100]!r}"}],
        code="invalid_parameter",
    )


#: ETags of bodies answered lately. A status read served from memory hands
#: out the same bytes object each time, whose hash Python keeps: its tag is
#: then one dict lookup instead of a BLAKE2b of the body.
_TAGS: dict[bytes, str] = {}
_MAX_TAGS = 4096


def _tag_of(raw: bytes) -> str:
    tag = _TAGS.get(raw)
    if tag is None:
        tag = hashlib.blake2b(raw, digest_size=16).hexdigest()
        if len(_TAGS) >= _MAX_TAGS:
            _TAGS.clear()
        _TAGS[raw] = tag
    return tag


def _job_answer(raw: bytes) -> Response:
    """The job's JSON with an ETag made from its bytes, so the tag changes
    whenever any field does; ``304`` (no body) when the client's
    ``If-None-Match`` already holds it. Weak, because the same JSON gzipped
    is other bytes."""
    tag = _tag_of(raw)
    etag = f'W/"{tag}"'
    match = request.environ.get("HTTP_IF_NONE_MATCH")
    if match is not None and parse_etags(match).contains_weak(tag):
        return Response(status=304, headers={"ETag": etag})
    return Response(raw, mimetype="application/json", headers={"ETag": etag})


@bp.get("/<job_id>")
def show(job_id: str) -> Response:
    """The job; ``?include=history`` adds every transition with its reason,
    ``?include=deliveries`` every webhook delivery attempt, ``?signed=1``
    output links that work without a key until ``urls_expire_at``."""
    if not is_job_id(job_id):
        # Before the cache: a path string never becomes a Redis key lookup.
        raise NotFound("no such job", code="job_not_found")
    store = services().store
    scope = owner_scope()
    plain = not request.query_string  # the hot path parses no query string
    include = set() if plain else _include_arg()
    signed = False if plain else _flag_arg("signed")
    feed = store.feed
    dumps = current_app.json.dumps
    if not include and not signed and feed is not None:
        # The hot path: one cache hit, or one read filled into the cache
        # unless a change raced it (storage/feed.py states the bound).
        cached, seen = feed.lookup(job_id)
        if cached is not None:
            owner, raw = cached
            if scope is not None and owner != scope:
                raise NotFound("no such job", code="job_not_found")
            return _job_answer(raw)
        job = store.get(job_id, owner=scope)
        raw = dumps(job_json(job)).encode()
        feed.fill(job_id, seen, raw, job.owner)
        return _job_answer(raw)
    job = store.get(job_id, owner=scope)
    body = job_json(job)
    if signed:
        signer: UrlSigner | None = current_app.extensions["slidefarm_signer"]
        if signer is None:
            raise ServiceUnavailable(
                "signed links are off: this server has no SLIDEFARM_SECRET_KEY",
                code="signing_unavailable",
            )
        body.update(signed_links(signer, job, principal().key_id or OPEN_KEY_ID))
    if "history" in include:
        body["history"] = [event_json(e) for e in store.history(job_id)]
    if "deliveries" in include:
        body["deliveries"] = [delivery_json(d) for d in WebhookDeliveries(store).deliveries(job_id)]
    if "assets" in include:
        body["assets"] = [
            asset_json(a) for a in AssetStore(store, services().settings.output_dir).for_job(job_id)
        ]
    answer = _job_answer(dumps(body).encode())
    if signed:
        # The body carries working links: no cache (a browser's included)
        # may keep it past the request.
        answer.headers["Cache-Control"] = "private, no-store"
    return answer


@bp.post("/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    """Scheduled or queued: cancelled at once. Processing: flagged; the worker
    stops within one heartbeat. 409 once finished."""
    svc = services()
    job = svc.store.request_cancel(job_id, owner=owner_scope())
    if job.status.is_final and job.callback_url is not None:
        svc.dispatcher.send_webhook(job.id)  # cancelled before it ran: armed now
    response = jsonify(job_json(job))
    response.status_code = 202
    return response


@bp.post("/<job_id>/retry")
def retry(job_id: str) -> Response:
    """A failed or cancelled job queued again, with a fresh attempt budget."""
    svc = services()
    job = svc.store.retry(
        job_id,
        max_attempts=svc.settings.max_attempts,
        owner=owner_scope(),
        max_active=svc.settings.active_job_cap,
    )
    svc.dispatcher.wake()
    return _accepted(job)


@bp.delete("/<job_id>")
def remove(job_id: str) -> Response:
    """The row, its history and its files are gone; a rendering worker stops."""
    svc = services()
    if not svc.store.delete(job_id, owner=owner_scope()):
        raise NotFound("no such job", code="job_not_found")
    remove_job_files(svc.settings.output_dir, job_id)
    return Response(status=204)


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """Query argument ``name`` as an integer from ``low`` to ``high``
    (``default`` when absent); ``400`` otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits only: int() would also take " 5", "5_0" and "٥".
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else low - 1
    if not low <= value <= high:
        raise BadRequest(
            f"{name} must be an integer from {low} to {high}",
            [{"field": name, "message": f"got {raw!r}"}],
            code="invalid_parameter",
        )
    return value


@bp.get("")
def index() -> Response:
    status_arg = request.args.get("status")
    status = None
    if status_arg is not None:
        try:
            status = Status(status_arg)
        except ValueError:
            allowed = ", ".join(s.value for s in Status)
            raise BadRequest(
                f"status must be one of {allowed}",
                [{"field": "status", "message": f"got {status_arg!r}"}],
                code="invalid_parameter",
            ) from None
    limit = int_arg("limit", 50, 1, MAX_LIST_LIMIT)
    search = (request.args.get("q") or "").strip()[:200] or None
    if search and "\x00" in search:
        raise BadRequest(
            "q must not contain NUL characters",
            [{"field": "q", "message": "NUL character"}],
            code="invalid_parameter",
        )
    page = services().store.list_jobs(
        status=status,
        limit=limit,
        search=search,
        cursor=request.args.get("cursor"),
        owner=owner_scope(),
    )
    return jsonify({"jobs": [job_json(j) for j in page.jobs], "next_cursor": page.next_cursor})


@bp.get("/<job_id>/video")
def video(job_id: str) -> Response:
    return serve_output(
        scoped_job(job_id),
        VIDEO_FILE,
        "video",
        "video/mp4",
        inline_name=f"{job_id}.mp4",
        download=".mp4" if _flag_arg("download") else None,
    )


@bp.get("/<job_id>/thumbnail")
def thumbnail(job_id: str) -> Response:
    return serve_output(
        scoped_job(job_id),
        THUMBNAIL_FILE,
        "thumbnail",
        "image/jpeg",
        download=" - thumbnail.jpg" if _flag_arg("download") else None,
    )


def _subtitles(job_id: str, name: str, mimetype: str) -> Response:
    job = scoped_job(job_id)
    if job.status is Status.COMPLETED and name not in job.created_files:
        raise NotFound("the job has no subtitles: its deck is not narrated", code="no_subtitles")
    suffix = name.rpartition(".")[2]
    return serve_output(
        job,
        name,
        "subtitles",
        mimetype,
        download=f" - subtitles.{suffix}" if _flag_arg("download") else None,
    )


@bp.get("/<job_id>/subtitles.vtt")
def subtitles_vtt(job_id: str) -> Response:
    return _subtitles(job_id, SUBTITLES_VTT, "text/vtt")  # Flask adds charset=utf-8


@bp.get("/<job_id>/subtitles.srt")
def subtitles_srt(job_id: str) -> Response:
    return _subtitles(job_id, SUBTITLES_SRT, "application/x-subrip")


@bp.get("/<job_id>/slides/<int(signed=True):n>")
def slide(job_id: str, n: int) -> Response:
    job = scoped_job(job_id)
    count = job.slide_count
    if not 1 <= n <= count:
        raise NotFound(
            f"slide {n} does not exist: slides are numbered 1 to {count}", code="slide_not_found"
        )
    return serve_output(
        job,
        slide_file(n),
        f"slide {n}",
        "image/png",
        download=f" - slide {n}.png" if _flag_arg("download") else None,
    )
