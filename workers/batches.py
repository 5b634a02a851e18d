"""A batch's end on the worker side: settling it once its last job is final,
and delivering its one completion webhook.

:func:`settle_batch` is called by the render task after a job of a batch has
ended (completed, failed or cancelled; not after a retry or a lost lease) and
by the sweeper (:func:`sweep_batches`) for batches whose last job ended while
its worker died, or was cancelled by the API. The webhook is delivered by its
own task, sent by name like a job's, and re-sent by the sweeper while due.
"""

from __future__ import annotations

import logging

from celeryconfig import BATCH_WEBHOOK_TASK, SEND_RETRY_POLICY
from core.config import Settings, get_settings
from storage import JobStore, StorageError
from storage.batches import BatchStore
from storage.serialize import batch_webhook_body
from workers.celery_app import app
from workers.webhooks import Attempt, Outgoing, claim_lease, send_attempt, task_outcome

log = logging.getLogger("slidefarm.batches")


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


def deliver_batch_due(store: JobStore, settings: Settings, batch_id: str) -> Attempt | None:
    """Claim the batch's due webhook attempt, POST it (signed with its
    tenant's secret, through the SSRF guard), record the outcome; ``None`` if
    no attempt was due."""
    batches = BatchStore(store)
    claim = batches.claim_webhook(batch_id, lease=claim_lease(settings))
    if claim is None:
        return None
    batch = claim.batch
    if batch.callback_url is None:
        return None
    outgoing = Outgoing(
        kind="batch",
        id=batch.id,
        owner=batch.owner,
        url=batch.callback_url,
        payload=batch_webhook_body(batch),
        event="batch.finished",
        delivery=f"batch:{batch.id}:{claim.attempt}",
        attempt=claim.attempt,
    )
    return send_attempt(store, settings, outgoing, batches.record_webhook, log)


@app.task(name=BATCH_WEBHOOK_TASK, ignore_result=True)
def deliver_batch_webhook(batch_id: str) -> str:
    """Deliver the due attempt of ``batch_id``'s completion webhook, if any."""
    return task_outcome(
        "batch",
        batch_id,
        lambda: deliver_batch_due(JobStore.from_settings(get_settings()), get_settings(), batch_id),
        log,
    )
