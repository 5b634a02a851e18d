"""Celery settings for slidefarm, read with ``app.config_from_object("celeryconfig")``.

The API and the workers load the same settings, so both sides agree on the
broker, the queue and the wire format. Values come from slidefarm's settings
(environment), never from literals scattered elsewhere; :func:`from_settings`
builds them for any :class:`~core.config.Settings` (tests use their own).
"""

from __future__ import annotations

from typing import Any

from core.config import Settings, get_settings

QUEUE = "slidefarm"

#: The task names, shared by the API (which sends by name and never imports
#: the renderer) and the workers (which register under them).
RENDER_TASK = "slidefarm.render_presentation"
WEBHOOK_TASK = "slidefarm.deliver_webhook"
BATCH_WEBHOOK_TASK = "slidefarm.deliver_batch_webhook"

#: The version of the render task's message (the wake-up), carried in the
#: message header :data:`VERSION_HEADER`. Version 1 had no header and named
#: its job (a positional id); version 2 names none. A worker accepts its own
#: version and the one before, and requeues a newer one it does not
#: understand (docs/design.md, "Old and new code side by side").
WAKE_VERSION = 2
VERSION_HEADER = "slidefarm_version"


def wake_headers() -> dict[str, int]:
    """The headers of a wake-up of this version."""
    return {VERSION_HEADER: WAKE_VERSION}


#: How every sender retries a publish the broker refused: briefly, since a
#: send that still fails loses nothing (the job stays queued in the store and
#: the sweeper sends it again after ``SLIDEFARM_DISPATCH_TIMEOUT``), while an
#: API request waiting on the broker holds its client.
SEND_RETRY_POLICY: dict[str, float] = {
    "max_retries": 1,
    "interval_start": 0.2,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


def from_settings(settings: Settings) -> dict[str, Any]:
    """Celery's configuration for ``settings``."""
    conf: dict[str, Any] = {
        "broker_url": settings.celery_broker_url,
        # The job store is the truth; no result backend is needed or used.
        "result_backend": None,
        "task_ignore_result": True,
        # JSON only on the wire (invariant 8): pickle is never accepted.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE,
        "task_routes": {"slidefarm.*": {"queue": QUEUE}},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_send_timeout,
        # Workers send task events for Flower; a "sent" event per submission
        # would cost the API an extra publish on its hottest path.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
    }
    if settings.embedded_broker:
        # kombu's filesystem transport: a broker with no server.
        folder = settings.broker_dir.resolve()
        (folder / "queue").mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            # Broadcast exchanges (remote control, our own fanout) also live
            # under the broker folder, never in the working folder.
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    else:
        # acks_late: an unacked message comes back after the visibility
        # timeout; the job store's claim makes such a redelivery harmless.
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
    return conf


globals().update(from_settings(get_settings()))
