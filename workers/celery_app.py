"""The Celery application of the render hosts.

Tasks are imported only by the worker (``include``); anything else that loads
this module, or sends tasks by name, never pulls in the renderer.
"""

from __future__ import annotations

from celery import Celery

from storage.redact import install_log_redaction

# Before Celery or a task logs anything: no key or password reaches a log
# (the record factory is inherited by forked pool processes).
install_log_redaction()

app = Celery("slidefarm", include=["workers.tasks"])
app.config_from_object("celeryconfig")
