"""The Celery application of the render hosts.

Tasks are imported only by the worker (``include``); anything else that loads
this module, or sends tasks by name, never pulls in the renderer.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

from core.redact import install_log_redaction

# Before Celery or a task logs anything: no key or password reaches a log
# (the record factory is inherited by forked pool processes).
install_log_redaction()

app = Celery("slidefarm", include=["workers.tasks", "workers.batches"])
app.config_from_object("celeryconfig")


def _slidefarm_logs_at_info(
    loglevel: int = logging.WARNING,
    logfile: Any = None,
    format: str | None = None,
    colorize: bool | None = None,
    **_: Any,
) -> None:
    """slidefarm's own lines (transitions: claims, completions, failures) at
    INFO, whatever Celery's level: a worker started without ``-l info`` logs
    at WARNING, which would hide them all. They get a handler of their own,
    to the same place and in the same format as Celery's lines, and do not
    also go through the root's (with ``-l info`` they would print twice)."""
    own = logging.getLogger("slidefarm")
    app.log.setup_handlers(own, logfile, format, colorize)
    own.setLevel(min(logging.INFO, loglevel or logging.INFO))
    own.propagate = False


after_setup_logger.connect(_slidefarm_logs_at_info, weak=False)
