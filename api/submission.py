"""Submitting a deck: the one path shared by the HTTP API and the CLI."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from api.dispatch import Dispatcher
from api.voices import speaks, voice_problem
from core.deck import MAX_SLIDES, Deck, is_asset_id
from core.sniff import AUDIO_KINDS, DOCUMENT_KINDS, IMAGE_KINDS
from storage import Job, JobStore, PriorityNotAllowed, StorageError
from storage.access import AccessStore
from storage.assets import Asset, AssetNotFound, AssetStore
from storage.jobs import utcnow
from storage.models import DEFAULT_TENANT, MAX_PRIORITY
from storage.registry import WorkerRegistry

#: What a job stores of its deck: :class:`~core.deck.Deck`'s fields.
DECK_FIELDS = set(Deck.model_fields)


class SubmissionInvalid(ValueError):
    """The submission asks for what it may not; ``details`` says what, field by field."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{d['field']}: {d['message']}" for d in details))
        self.details = details


class DeckAssetsInvalid(SubmissionInvalid):
    """The deck names an asset it cannot use; ``details`` says which, field by field."""


def priority_ceiling(store: JobStore, tenant: str, *, admin: bool, default: int) -> int:
    """The highest priority ``tenant``'s submissions may ask for: its own
    ``max_priority``, else ``default`` (SLIDEFARM_MAX_PRIORITY); an admin's,
    :data:`~storage.models.MAX_PRIORITY`."""
    if admin:
        return MAX_PRIORITY
    limits = AccessStore(store).limits(tenant)
    return default if limits.max_priority is None else limits.max_priority


class Schedule(NamedTuple):
    """What a submission gets: its priority (``None``: unset, decided where
    the ceiling is checked), and when it may run (``None``: now)."""

    priority: int | None
    run_at: datetime | None


def priority_problem(refused: PriorityNotAllowed) -> dict[str, str]:
    """The detail of a 422 for a priority above the tenant's ceiling."""
    return {"field": "priority", "message": str(refused), "type": "priority_not_allowed"}


def check_schedule(
    priority: int | None,
    run_at: datetime | None,
    *,
    ceiling: int | None,
    max_schedule_days: float,
    now: datetime | None = None,
) -> Schedule:
    """Check what a submission asks for and say what it gets: ``priority``
    (``None``: unset, so 0, or ``ceiling`` if lower) at most ``ceiling``
    (:func:`priority_ceiling`; ``None``: not checked here, and an unset
    priority stays unset, for the insert to check and decide), and
    ``run_at`` at most ``max_schedule_days`` ahead; a ``run_at`` already past
    becomes ``now`` (the job runs now, and no time before it, however far
    back, is stored). :class:`SubmissionInvalid` otherwise."""
    problems: list[dict[str, str]] = []
    if ceiling is not None:
        if priority is None:
            priority = min(0, ceiling)
        elif priority > ceiling:
            problems.append(priority_problem(PriorityNotAllowed(priority, ceiling)))
    now = now or utcnow()
    if run_at is not None and run_at - now > timedelta(days=max_schedule_days):
        problems.append(
            {
                "field": "run_at",
                "message": f"is more than {max_schedule_days:g} days ahead "
                "(SLIDEFARM_MAX_SCHEDULE_DAYS)",
                "type": "too_far_ahead",
            }
        )
    if problems:
        raise SubmissionInvalid(problems)
    return Schedule(priority, None if run_at is None else max(run_at, now))


def request_hash(body: dict[str, Any]) -> str:
    """A digest of the submitted body, key order and spacing aside, for
    telling an Idempotency-Key replay from a conflicting reuse."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_deck_assets(
    assets: AssetStore, deck: Deck, owner: str, *, max_video_seconds: float
) -> None:
    """:class:`DeckAssetsInvalid` unless every asset ``deck`` names is one of
    ``owner``'s, of the kind its place needs (a PDF or PPTX source, images on
    slides, audio for a slide's ``audio`` and ``options.music``), and a
    source whose page count is known fits the deck limits.
    Another tenant's asset reads exactly like a missing one."""
    problems: list[dict[str, str]] = []
    found = assets.find(deck.asset_ids(), owner=owner)  # one query for them all

    def lookup(asset_id: str) -> Asset | None:
        return found.get(asset_id)

    def problem(field: str, message: str, kind: str) -> None:
        problems.append({"field": field, "message": message, "type": kind})

    if deck.source is not None:
        source = lookup(deck.source.asset)
        if source is None:
            problem("source.asset", f"no asset {deck.source.asset}", "asset_not_found")
        elif source.kind not in DOCUMENT_KINDS:
            problem(
                "source.asset",
                f"asset {source.id} is a {source.kind.upper()}; a source must be a PDF or PPTX",
                "wrong_asset_kind",
            )
        elif source.pages is not None:
            if source.pages == 0:
                problem("source.asset", "the document has no pages", "empty_document")
            elif source.pages > MAX_SLIDES:
                problem(
                    "source.asset",
                    f"the document has {source.pages} pages; a deck may have at most "
                    f"{MAX_SLIDES} slides",
                    "too_many_pages",
                )
            elif len(deck.slides) > source.pages:
                problem(
                    "slides",
                    f"the deck sets {len(deck.slides)} slides but the document has only "
                    f"{source.pages} pages",
                    "too_many_overrides",
                )
            elif (seconds := deck.seconds_for(source.pages)) > max_video_seconds:
                problem(
                    "source.asset",
                    f"its {source.pages} pages would last {seconds:g} s, over "
                    f"SLIDEFARM_MAX_VIDEO_SECONDS ({max_video_seconds:g})",
                    "too_long",
                )
    for n, slide in enumerate(deck.slides):
        if slide.image is None or not is_asset_id(slide.image):
            continue
        image = lookup(slide.image)
        if image is None:
            problem(f"slides.{n}.image", f"no asset {slide.image}", "asset_not_found")
        elif image.kind not in IMAGE_KINDS:
            problem(
                f"slides.{n}.image",
                f"asset {image.id} is a {image.kind.upper()}, not an image",
                "wrong_asset_kind",
            )
    sounds = [(f"slides.{n}.audio", s.audio) for n, s in enumerate(deck.slides) if s.audio]
    if deck.options.music is not None:
        sounds.append(("options.music.asset", deck.options.music.asset))
    for field, asset_id in sounds:
        sound = lookup(asset_id)
        if sound is None:
            problem(field, f"no asset {asset_id}", "asset_not_found")
        elif sound.kind not in AUDIO_KINDS:
            problem(
                field,
                f"asset {sound.id} is a {sound.kind.upper()}, not audio "
                "(WAV, MP3, M4A, Ogg or FLAC)",
                "wrong_asset_kind",
            )
    if problems:
        raise DeckAssetsInvalid(problems)


def check_voice(store: JobStore, deck: Deck, stale_after: float) -> None:
    """:class:`DeckAssetsInvalid` (``options.voice``, ``voice_unavailable``)
    when no live worker offers the voice ``deck`` needs; accepted when the
    registry cannot be read (its worker then fails the job if it must). A
    deck that says nothing aloud is not checked: no registry read."""
    if not speaks(deck):
        return
    try:
        workers = WorkerRegistry(store).list_workers()
    except StorageError:
        return
    problem = voice_problem(deck, workers, stale_after)
    if problem is not None:
        raise DeckAssetsInvalid(
            [{"field": "options.voice", "message": problem, "type": "voice_unavailable"}]
        )


def submit_deck(
    store: JobStore,
    dispatcher: Dispatcher,
    deck: Deck,
    body: dict[str, Any],
    *,
    idempotency_key: str | None,
    max_attempts: int,
    owner: str = DEFAULT_TENANT,
    callback_url: str | None = None,
    max_active: int | None = None,
    assets: AssetStore | None = None,
    max_video_seconds: float | None = None,
    stale_after: float | None = None,
    priority: int | None = 0,
    run_at: datetime | None = None,
    priority_ceiling: int | None = None,
) -> tuple[Job, bool]:
    """Commit ``owner``'s job, then send its task (never the other way round);
    return the job and whether it is new (``False``: an idempotent replay).
    ``priority`` and ``run_at`` are stored as given (:func:`check_schedule`
    checks them first), but for the ``priority`` ceiling when
    ``priority_ceiling`` is given (the default ceiling of a tenant with no
    ``max_priority`` of its own): the insert checks that, against the
    tenant's limits as they are at that moment (:class:`SubmissionInvalid`
    above it; ``priority`` ``None``, unset, becomes 0 or the ceiling if
    lower). A job whose ``run_at`` is ahead is ``scheduled`` and
    no task is sent for it now (the sweeper queues it when it comes due).
    ``max_active``: refuse (:class:`~storage.QuotaExceeded`) past that many
    of ``owner``'s jobs queued or processing.

    A deck that names assets is checked against ``assets`` first
    (:class:`DeckAssetsInvalid`); the job is linked to them in its insert's
    transaction, so none is deleted while it is queued or processing (one
    deleted in between: :class:`DeckAssetsInvalid` too, and no job).

    With ``stale_after``, a deck that speaks is checked against the voices
    live workers offer (:func:`check_voice`)."""
    if stale_after is not None:
        check_voice(store, deck, stale_after)
    asset_ids = deck.asset_ids()
    if asset_ids:
        if assets is None:
            raise DeckAssetsInvalid(
                [{"field": "(body)", "message": "assets are not available here", "type": "asset"}]
            )
        check_deck_assets(assets, deck, owner, max_video_seconds=max_video_seconds or float("inf"))
    try:
        job, created = store.create(
            # A Deck's own fields only: ``deck`` may be a submission
            # (api/schemas.py), validated once, whose other fields are not
            # stored. As JSON text, which pydantic writes faster than a dict.
            deck.model_dump_json(include=DECK_FIELDS),
            title=deck.title,
            idempotency_key=idempotency_key,
            request_hash=request_hash(body) if idempotency_key else None,
            attempt_limit=max_attempts,
            owner=owner,
            callback_url=callback_url,
            max_active=max_active,
            asset_ids=asset_ids,
            priority=priority,
            run_at=run_at,
            priority_ceiling=priority_ceiling,
        )
    except PriorityNotAllowed as refused:
        raise SubmissionInvalid([priority_problem(refused)]) from refused
    except AssetNotFound as gone:
        raise DeckAssetsInvalid(
            [
                {
                    "field": "(body)",
                    "message": f"{gone} (deleted meanwhile)",
                    "type": "asset_not_found",
                }
            ]
        ) from gone
    if created:
        dispatcher.wake_for(job)
    return job, created
