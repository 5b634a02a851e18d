"""Delivering one attempt of a completion webhook: a job's here, and for
a batch's (:mod:`workers.batches`) the same :func:`send_attempt`.

The task that runs this carries only a job id: the store says whether an
attempt is due, and the claim makes this worker the only one delivering it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from core.config import Settings
from core.signing import SIGNATURE_HEADER, sign
from storage import JobStore, StorageError
from storage.access import AccessStore
from storage.deliveries import DeliveryResult, WebhookDeliveries
from storage.models import WebhookStatus
from storage.serialize import webhook_body
from workers.delivery import USER_AGENT, deliver

log = logging.getLogger("slidefarm.webhooks")

#: Time past the delivery timeout that a claimed attempt stays this worker's
#: (recording the outcome, a slow receiver trickling its headers).
LEASE_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one run of the delivery task did."""

    attempt: int
    result: DeliveryResult
    status: WebhookStatus | None  # None: the record was refused (fenced)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One claimed webhook attempt, ready to send: what differs between a
    job's webhook and a batch's."""

    kind: str  # "job" or "batch": names the subject in the log
    id: str
    owner: str  # whose webhook secrets sign it
    url: str
    payload: dict[str, Any]
    event: str  # the Slidefarm-Event header
    delivery: str  # the Slidefarm-Delivery header
    attempt: int


class Recorder(Protocol):
    """Where an attempt's outcome is written (fenced on its attempt)."""

    def __call__(
        self,
        subject_id: str,
        attempt_no: int,
        result: DeliveryResult,
        /,
        *,
        backoff: float,
        retry_for: float,
    ) -> WebhookStatus | None: ...


def claim_lease(settings: Settings) -> float:
    """How long a claimed attempt stays the claimer's: the POST, its
    connection's own timeout, and :data:`LEASE_MARGIN`."""
    return 2 * settings.webhook_timeout + LEASE_MARGIN


def send_attempt(
    store: JobStore,
    settings: Settings,
    outgoing: Outgoing,
    record: Recorder,
    logger: logging.Logger,
) -> Attempt:
    """POST a claimed attempt (signed with its owner's secrets, through the
    SSRF guard), ``record`` the outcome and log it: the one delivery of job
    and batch webhooks alike."""
    body = json.dumps(outgoing.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(body, AccessStore(store).webhook_secrets(outgoing.owner)),
        "Slidefarm-Event": outgoing.event,
        "Slidefarm-Delivery": outgoing.delivery,
    }
    result = deliver(
        outgoing.url,
        body,
        headers,
        timeout=settings.webhook_timeout,
        allow=settings.webhook_allow_networks,
    )
    status = record(
        outgoing.id,
        outgoing.attempt,
        result,
        backoff=settings.webhook_backoff,
        retry_for=settings.webhook_retry_for,
    )
    # The URL stays out of the log: its query string may hold the
    # receiver's own token.
    logger.info(
        "webhook " + outgoing.kind + "=%s attempt=%d code=%s error=%s in %.0f ms -> %s",
        outgoing.id,
        outgoing.attempt,
        result.status_code,
        json.dumps(result.error or ""),
        result.duration_ms,
        status.value if status else "not recorded (fenced)",
    )
    return Attempt(outgoing.attempt, result, status)


def task_outcome(
    kind: str, subject_id: str, attempt: Callable[[], Attempt | None], logger: logging.Logger
) -> str:
    """What a webhook task returns after running ``attempt``: the status it
    recorded, ``fenced``, ``skipped`` (nothing was due) or ``deferred`` (the
    database failed: the delivery stays due and the sweeper sends it again)."""
    try:
        done = attempt()
    except StorageError as error:
        logger.warning(kind + " %s: webhook not delivered now (%s)", subject_id, error)
        return "deferred"
    if done is None:
        return "skipped"
    return done.status.value if done.status else "fenced"


def deliver_due(store: JobStore, settings: Settings, job_id: str) -> Attempt | None:
    """Claim ``job_id``'s due webhook attempt, POST it, record the outcome;
    ``None`` if no attempt was due (delivered, failed, not yet, or held)."""
    deliveries = WebhookDeliveries(store)
    claim = deliveries.claim(job_id, lease=claim_lease(settings))
    if claim is None:
        return None
    job = claim.job
    if job.callback_url is None:  # cleared meanwhile: nothing to call
        return None
    outgoing = Outgoing(
        kind="job",
        id=job.id,
        owner=job.owner,
        url=job.callback_url,
        payload=webhook_body(job),
        event=f"job.{job.status.value}",
        delivery=f"{job.id}:{claim.attempt}",
        attempt=claim.attempt,
    )
    return send_attempt(store, settings, outgoing, deliveries.record_delivery, log)
