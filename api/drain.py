"""An API process asked to stop leaves no client behind.

Two moments, set by gunicorn's hooks (``gunicornconf.py``) and read by the
views:

- *stopping*: the process will stop. ``/readyz`` answers 503 from then on,
  so a load balancer takes it out while it still serves every request it
  gets. gunicorn's master sets it for every worker at once when it is asked
  to stop (SIGTERM), then the workers go on serving for
  ``SLIDEFARM_API_DRAIN_DELAY``.
- *streams end*: the worker stops accepting now (after that delay, or at once
  when a HUP reload replaces it). Each event stream sends a last
  ``reconnect`` event and closes, so gunicorn's graceful stop is not held by
  streams that would never end; the client reconnects (through the balancer,
  to a process still serving) with ``Last-Event-ID`` and misses nothing.

Both are per process, like the signals that set them; an app built without
gunicorn (tests, ``flask run``) never stops unless told to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask, current_app


class Drain:
    """This process's stop, as the views see it."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._streams_end = threading.Event()
        self._instance_stopping: Callable[[], bool] = lambda: False

    def watch_instance(self, stopping: Callable[[], bool]) -> None:
        """Also count as stopping whenever ``stopping()`` says so (gunicorn's
        master asked to stop, read from memory it shares with its workers)."""
        self._instance_stopping = stopping

    def begin(self) -> None:
        """The process will stop: ``/readyz`` answers 503 from now on."""
        self._stopping.set()

    def end_streams(self) -> None:
        """The process stops accepting now: every event stream ends with a
        ``reconnect`` event."""
        self._stopping.set()
        self._streams_end.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set() or self._instance_stopping()

    @property
    def streams_ending(self) -> bool:
        return self._streams_end.is_set()

    def wait_streams_end(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, waking as soon as streams must end."""
        return self._streams_end.wait(timeout)


def drain_of(app: Flask) -> Drain:
    """The drain of ``app``, as built by ``create_app``."""
    drain: Drain = app.extensions["slidefarm_drain"]
    return drain


def current_drain() -> Drain:
    """The drain of the app serving this request."""
    return drain_of(current_app)
