"""A job's history: one row and one log line per transition."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import Connection, insert

from core.redact import redact_secrets
from storage.jobs.values import utcnow
from storage.models import Status, events_table

log = logging.getLogger("slidefarm.jobs")


def event_params(
    from_status: Status | None, to_status: Status, reason: str | None
) -> dict[str, Any]:
    """The history row's fields, as the parameters of
    :func:`storage.jobs.statements.with_history`."""
    return {
        "ev_from": from_status.value if from_status else None,
        "ev_to": to_status.value,
        "ev_at": utcnow(),
        "ev_reason": redact_secrets(reason)[:2000] if reason else None,
    }


def log_transition(
    job_id: str,
    from_status: Status | None,
    to_status: Status,
    attempt: int,
    worker: str | None,
    reason: str | None,
) -> None:
    """The transition's log line."""
    # One line per transition, so grepping every host's logs for a job id
    # tells its story.
    log.info(
        "transition job=%s from=%s to=%s attempt=%d worker=%s reason=%s",
        job_id,
        from_status.value if from_status else "-",
        to_status.value,
        attempt,
        worker or "-",
        json.dumps(reason or ""),
    )


def log_deletion(job_id: str) -> None:
    """The log line of a job deleted by request."""
    log.info(
        "transition job=%s from=- to=deleted attempt=- worker=- reason=%s",
        job_id,
        json.dumps("deleted by request"),
    )


def record_event(
    conn: Connection,
    job_id: str,
    from_status: Status | None,
    to_status: Status,
    attempt: int,
    worker: str | None,
    reason: str | None,
) -> None:
    """Insert the history row of a transition in ``conn``'s transaction, and log it."""
    event = event_params(from_status, to_status, reason)
    conn.execute(
        insert(events_table).values(
            job_id=job_id,
            from_status=event["ev_from"],
            to_status=event["ev_to"],
            attempt=attempt,
            worker=worker,
            at=event["ev_at"],
            reason=event["ev_reason"],
        )
    )
    log_transition(job_id, from_status, to_status, attempt, worker, reason)
