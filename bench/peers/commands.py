"""The command lines of the peers' worker processes, with the flags slidefarm's
benchmark worker gets (bench/harness.py ``Environment.worker``)."""

from __future__ import annotations

import sys


def celery_worker(app: str, queue: str, node: str, processes: int) -> list[list[str]]:
    """One prefork Celery worker with ``processes`` pool processes on ``queue``."""
    return [
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-n",
            f"{node}@%h",
            "-Q",
            queue,
            "--concurrency",
            str(processes),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
        ]
    ]


#: What a Celery peer shares with slidefarm's worker settings (celeryconfig.py),
#: so the worker path is what differs: JSON on the wire, acks late, one
#: message prefetched per process.
CELERY_SETTINGS = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "result_serializer": "json",
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
}
