"""A batch's end on the worker side: settling it once its last job is final,
and delivering its one completion webhook.

:func:`settle_batch` is called by the render task after a job of a batch has
ended (completed, failed or cancelled; not after a retry or a lost lease) and
by the sweeper (:func:`sweep_batches`) for batches whose last job ended while
its worker died, or was cancelled by the API. The webhook is delivered by its
own task, sent by name like a job's, and re-sent by the sweeper while due.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from celeryconfig import BATCH_WEBHOOK_TASK, SEND_RETRY_POLICY
from core.config import Settings, get_settings
from core.signing import SIGNATURE_HEADER, sign
from storage import JobStore, StorageError
from storage.access import AccessStore
from storage.batches import BatchStore
from storage.deliveries import DeliveryResult
from storage.models import WebhookStatus
from storage.serialize import batch_webhook_body
from workers.celery_app import app
from workers.delivery import USER_AGENT, deliver
from workers.webhooks import LEASE_MARGIN

log = logging.getLogger("slidefarm.batches")


@dataclass(frozen=True, slots=True)
class BatchAttempt:
    """What one run of the batch webhook task did."""

    attempt: int
    result: DeliveryResult
    status: WebhookStatus | None  # None: the record was refused (fenced)


def send_batch_webhook(batch_id: str) -> None:
    """Send the batch webhook task of ``batch_id`` (a lost one is sent again
    by the sweeper while the delivery is due)."""
    try:
        app.send_task(
            BATCH_WEBHOOK_TASK, args=[batch_id], retry=True, retry_policy=SEND_RETRY_POLICY
        )
    except Exception:
        log.warning(
            "batch %s: broker unavailable; the sweeper will send its webhook",
            batch_id,
            exc_info=True,
        )


def settle_batch(store: JobStore, batch_id: str) -> bool:
    """Settle batch ``batch_id`` if every job of it is final, and send its
    webhook task if it has one; ``True`` if this call settled it. A database
    error is logged, not raised: the sweeper settles it later."""
    batches = BatchStore(store)
    try:
        settled = batches.settle(batch_id)
        if not settled:
            return False
        has_webhook = batches.get(batch_id).callback_url is not None
    except StorageError as error:
        log.warning("batch %s: not settled now (%s); the sweeper will", batch_id, error)
        return False
    log.info("batch %s: every job is final", batch_id)
    if has_webhook:
        send_batch_webhook(batch_id)
    return True


def sweep_batches(store: JobStore, settings: Settings, *, webhooks: bool = True) -> None:
    """The sweeper's pass: settle batches nobody settled, delete those that
    finished over ``SLIDEFARM_RETENTION_DAYS`` ago, then (``webhooks``)
    send the webhook task of every batch whose delivery is due (its first
    attempt, retries after their backoff, tasks the broker lost)."""
    batches = BatchStore(store)
    for batch_id in batches.settle_finished():
        log.info("sweeper: batch %s settled (every job is final)", batch_id)
    # One bounded, indexed DELETE: next to nothing when no batch is that old.
    gone = batches.delete_finished_older_than(settings.retention_days)
    if gone:
        log.info("sweeper: deleted %d batch(es) finished long ago", gone)
    if not webhooks:
        return
    for batch_id in batches.due_webhooks(resend_after=settings.dispatch_timeout):
        send_batch_webhook(batch_id)


def deliver_batch_due(store: JobStore, settings: Settings, batch_id: str) -> BatchAttempt | None:
    """Claim the batch's due webhook attempt, POST it (signed with its
    tenant's secret, through the SSRF guard), record the outcome; ``None`` if
    no attempt was due."""
    batches = BatchStore(store)
    timeout = settings.webhook_timeout
    claim = batches.claim_webhook(batch_id, lease=2 * timeout + LEASE_MARGIN)
    if claim is None:
        return None
    batch = claim.batch
    if batch.callback_url is None:
        return None
    body = json.dumps(batch_webhook_body(batch), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(body, AccessStore(store).webhook_secrets(batch.owner)),
        "Slidefarm-Event": "batch.finished",
        "Slidefarm-Delivery": f"batch:{batch.id}:{claim.attempt}",
    }
    result = deliver(
        batch.callback_url, body, headers, timeout=timeout, allow=settings.webhook_allow_networks
    )
    status = batches.record_webhook(
        batch.id,
        claim.attempt,
        result,
        backoff=settings.webhook_backoff,
        retry_for=settings.webhook_retry_for,
    )
    log.info(
        "webhook batch=%s attempt=%d code=%s error=%s in %.0f ms -> %s",
        batch.id,
        claim.attempt,
        result.status_code,
        json.dumps(result.error or ""),
        result.duration_ms,
        status.value if status else "not recorded (fenced)",
    )
    return BatchAttempt(claim.attempt, result, status)


@app.task(name=BATCH_WEBHOOK_TASK, ignore_result=True)
def deliver_batch_webhook(batch_id: str) -> str:
    """Deliver the due attempt of ``batch_id``'s completion webhook, if any."""
    try:
        attempt = deliver_batch_due(
            JobStore.from_settings(get_settings()), get_settings(), batch_id
        )
    except StorageError as error:
        log.warning("batch %s: webhook not delivered now (%s)", batch_id, error)
        return "deferred"
    if attempt is None:
        return "skipped"
    return attempt.status.value if attempt.status else "fenced"
