"""The lease a worker holds on a job while it renders.

A background thread renews ``last_heartbeat`` every
``SLIDEFARM_HEARTBEAT_INTERVAL`` seconds. When the store refuses a renewal
the attempt is no longer this worker's (recovered by the sweeper, or
deleted): :meth:`Lease.check` then raises :class:`AttemptLost` in the
rendering thread, which stops and cleans up.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from storage import DatabaseUnavailable, JobStore, Stage, StorageError

log = logging.getLogger(__name__)


class AttemptLost(Exception):
    """This attempt no longer holds the job; stop and clean up without writing."""


class Lease:
    """A job attempt held by this worker, kept alive by a heartbeat thread."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, interval: float) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True
        )

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.interval * 2, 5.0))

    @property
    def lost(self) -> bool:
        """True once the store refused a write of this attempt."""
        return self._lost.is_set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.heartbeat(self.job_id, self.attempt):
                    log.warning("job %s attempt %s: lease lost", self.job_id, self.attempt)
                    self._lost.set()
                    return
            except DatabaseUnavailable:
                # A database blip: keep trying; the sweeper's stale window
                # is what decides whether this attempt is still alive.
                log.warning("job %s: heartbeat failed, database unavailable", self.job_id)
            except StorageError:
                log.exception("job %s: heartbeat failed", self.job_id)

    def check(self) -> None:
        """Raise :class:`AttemptLost` if the lease is gone."""
        if self._lost.is_set():
            raise AttemptLost()

    def progress(self, progress: float, stage: Stage) -> None:
        """Record progress and stage for this attempt; refused means lost."""
        self.check()
        if not self.store.record_progress(self.job_id, self.attempt, progress, stage):
            self._lost.set()
            raise AttemptLost()

    def add_file(self, path: str, size_bytes: int) -> None:
        """Record a produced file (relative to the job's output folder)."""
        self.check()
        if not self.store.add_file(self.job_id, self.attempt, path, size_bytes):
            self._lost.set()
            raise AttemptLost()
