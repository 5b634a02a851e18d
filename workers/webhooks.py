"""Delivering one attempt of a job's completion webhook.

The task that runs this carries only a job id: the store says whether an
attempt is due, and the claim makes this worker the only one delivering it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from core.config import Settings
from core.signing import SIGNATURE_HEADER, sign
from storage import JobStore
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


def deliver_due(store: JobStore, settings: Settings, job_id: str) -> Attempt | None:
    """Claim ``job_id``'s due webhook attempt, POST it, record the outcome;
    ``None`` if no attempt was due (delivered, failed, not yet, or held)."""
    deliveries = WebhookDeliveries(store)
    timeout = settings.webhook_timeout
    claim = deliveries.claim(job_id, lease=2 * timeout + LEASE_MARGIN)
    if claim is None:
        return None
    job = claim.job
    if job.callback_url is None:  # cleared meanwhile: nothing to call
        return None
    body = json.dumps(webhook_body(job), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(body, AccessStore(store).webhook_secrets(job.owner)),
        "Slidefarm-Event": f"job.{job.status.value}",
        "Slidefarm-Delivery": f"{job.id}:{claim.attempt}",
    }
    result = deliver(
        job.callback_url, body, headers, timeout=timeout, allow=settings.webhook_allow_networks
    )
    status = deliveries.record_delivery(
        job.id,
        claim.attempt,
        result,
        backoff=settings.webhook_backoff,
        retry_for=settings.webhook_retry_for,
    )
    # The URL stays out of the log: its query string may hold the
    # receiver's own token.
    log.info(
        "webhook job=%s attempt=%d code=%s error=%s in %.0f ms -> %s",
        job.id,
        claim.attempt,
        result.status_code,
        json.dumps(result.error or ""),
        result.duration_ms,
        status.value if status else "not recorded (fenced)",
    )
    return Attempt(claim.attempt, result, status)
