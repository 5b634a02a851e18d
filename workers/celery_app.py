"""The Celery application of the render hosts.

Tasks are imported only by the worker (``include``); anything else that loads
this module, or sends tasks by name, never pulls in the renderer.
"""

from __future__ import annotations

from celery import Celery

app = Celery("slidefarm", include=["workers.tasks"])
app.config_from_object("celeryconfig")
