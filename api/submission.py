"""Submitting a deck: the one path shared by the HTTP API and the CLI."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from api.dispatch import Dispatcher
from core.deck import Deck
from storage import Job, JobStore
from storage.models import DEFAULT_TENANT


def request_hash(body: dict[str, Any]) -> str:
    """A digest of the submitted body, key order and spacing aside, for
    telling an Idempotency-Key replay from a conflicting reuse."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


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
) -> tuple[Job, bool]:
    """Commit ``owner``'s job, then send its task (never the other way round);
    return the job and whether it is new (``False``: an idempotent replay).
    ``max_active``: refuse (:class:`~storage.QuotaExceeded`) past that many
    of ``owner``'s jobs queued or processing."""
    job, created = store.create(
        deck.model_dump(mode="json"),
        title=deck.title,
        idempotency_key=idempotency_key,
        request_hash=request_hash(body) if idempotency_key else None,
        attempt_limit=max_attempts,
        owner=owner,
        callback_url=callback_url,
        max_active=max_active,
    )
    if created:
        dispatcher.send_render(job.id)
    return job, created
