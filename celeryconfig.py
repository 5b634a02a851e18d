"""Celery settings for slidefarm, read with ``app.config_from_object("celeryconfig")``.

The API and the workers load the same module, so both sides agree on the
broker, the queue and the wire format. Values come from slidefarm's settings
(environment), never from literals here.
"""

from __future__ import annotations

from storage.config import get_settings

_settings = get_settings()

broker_url = _settings.celery_broker_url

# The embedded mode: kombu's filesystem transport, a broker with no server.
if _settings.embedded_broker:
    _folder = _settings.broker_dir.resolve()
    (_folder / "out").mkdir(parents=True, exist_ok=True)
    (_folder / "processed").mkdir(parents=True, exist_ok=True)
    broker_transport_options = {
        "data_folder_in": str(_folder / "out"),
        "data_folder_out": str(_folder / "out"),
        "data_folder_processed": str(_folder / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
else:
    # acks_late means an unacked message comes back after the visibility
    # timeout; the job store's claim makes such a redelivery harmless.
    broker_transport_options = {"visibility_timeout": 3600}

# The job store is the truth; no Celery result backend is needed or used.
result_backend = None
task_ignore_result = True

# JSON only on the wire (invariant 8): pickle is never accepted.
task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
result_accept_content = ["json"]

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

task_default_queue = "slidefarm"
task_routes = {"slidefarm.*": {"queue": "slidefarm"}}

broker_connection_retry_on_startup = True
broker_connection_timeout = _settings.broker_send_timeout

worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
timezone = "UTC"
enable_utc = True
