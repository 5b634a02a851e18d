"""The lease a worker holds on a job while it renders.

A background thread renews ``last_heartbeat`` every
``SLIDEFARM_HEARTBEAT_INTERVAL`` seconds. Every write names the attempt; when
the store refuses one, the attempt is no longer this worker's (recovered by
the sweeper, or deleted) and :meth:`Lease.check` raises :class:`AttemptLost`
in the rendering thread, which stops and cleans up. A cancel asked for in the
database surfaces the same way, as :class:`CancelRequested`, and so does the
attempt's deadline (``SLIDEFARM_RENDER_TIMEOUT``), as :class:`RenderTimedOut`,
and the end of this worker's drain (``SLIDEFARM_DRAIN_TIMEOUT``, the worker
is stopping), as :class:`DrainTimedOut`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from storage import DatabaseUnavailable, JobStore, LeaseState, Stage, StorageError

log = logging.getLogger("slidefarm.heartbeat")


class AttemptLost(Exception):
    """This attempt no longer holds the job; stop and clean up without writing."""


class CancelRequested(Exception):
    """The job was cancelled; stop, clean up and record the cancellation."""


class RenderTimedOut(Exception):
    """The attempt rendered longer than ``SLIDEFARM_RENDER_TIMEOUT``; stop, clean
    up and fail the job (retrying would time out again)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"render timed out after {timeout:.1f} s (SLIDEFARM_RENDER_TIMEOUT)")
        self.timeout = timeout


class DrainTimedOut(Exception):
    """This worker is stopping and its drain ran out before the render
    finished; stop, clean up and hand the job back to the queue."""


class StoreUnavailable(Exception):
    """The database stayed unreachable longer than this attempt can wait."""


class Lease:
    """A job attempt held by this worker, kept alive by a heartbeat thread."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        attempt: int,
        interval: float,
        patience: float = 30.0,
        timeout: float | None = None,
        drain_overdue: Callable[[], bool] | None = None,
        name: str | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval
        #: How long a write keeps retrying through a database outage.
        self.patience = patience
        #: Seconds this attempt may render, from now; ``None``: no limit.
        self.timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        #: True once this worker's drain has run out (it is stopping).
        self._drain_overdue = drain_overdue
        #: Set once the outputs are complete: a drain no longer stops them.
        self._finishing = False
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._cancel = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=name or f"heartbeat-{job_id[:8]}", daemon=True
        )

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.interval * 2, 5.0))

    @property
    def lost(self) -> bool:
        """True once the store refused a write of this attempt."""
        return self._lost.is_set()

    @property
    def cancelled(self) -> bool:
        """True once the store said a cancel was asked for."""
        return self._cancel.is_set()

    @property
    def timed_out(self) -> bool:
        """True once the attempt's deadline has passed."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def drain_overdue(self) -> bool:
        """True once the worker's drain ran out while this render still works."""
        return not self._finishing and self._drain_overdue is not None and self._drain_overdue()

    @property
    def should_stop(self) -> bool:
        """True when the render must stop: lost, cancelled, out of time, or
        the worker stopping with its drain run out."""
        return self._lost.is_set() or self._cancel.is_set() or self.timed_out or self.drain_overdue

    def finishing(self) -> None:
        """The outputs are complete: from now on only the publish and the
        completion remain, which a drain lets finish (a hand-back now would
        throw finished work away)."""
        self._finishing = True

    def _note(self, state: LeaseState) -> LeaseState:
        if state is LeaseState.LOST:
            if not self._lost.is_set():
                # INFO: the pipeline then says why (deleted, or overtaken).
                log.info("job %s attempt %s: lease lost", self.job_id, self.attempt)
            self._lost.set()
        elif state is LeaseState.CANCEL_REQUESTED:
            self._cancel.set()
        return state

    def renew(self) -> LeaseState:
        """One heartbeat: renew this attempt's hold (a segment's lease renews
        the segment's: :class:`workers.split.SegmentLease`)."""
        return self.store.heartbeat(self.job_id, self.attempt)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._note(self.renew()) is LeaseState.LOST:
                    return
            except DatabaseUnavailable:
                # A database blip: keep trying; the sweeper's stale window
                # decides whether this attempt is still alive.
                log.warning("job %s: heartbeat failed, database unavailable", self.job_id)
            except StorageError:
                log.exception("job %s: heartbeat failed", self.job_id)

    def check(self) -> None:
        """Raise if the lease is gone, a cancel was asked for or time is up."""
        if self._lost.is_set():
            raise AttemptLost()
        if self._cancel.is_set():
            raise CancelRequested()
        if self.timeout is not None and self.timed_out:
            raise RenderTimedOut(self.timeout)
        if self.drain_overdue:
            raise DrainTimedOut()

    def write(self, action: Callable[[], LeaseState | bool]) -> None:
        """Run a fenced write, riding out a database outage for ``patience`` s."""
        self.check()
        deadline = time.monotonic() + self.patience
        delay = 0.1
        while True:
            try:
                result = action()
                break
            except DatabaseUnavailable as down:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(str(down)) from down
                log.warning("job %s: database unavailable, retrying a write", self.job_id)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        if isinstance(result, LeaseState):
            self._note(result)
        elif not result:
            self._lost.set()
        self.check()

    def finish(self, action: Callable[[], LeaseState | bool]) -> None:
        """The attempt's last fenced write (its completion): heartbeats stop
        first. A heartbeat racing it would find the job no longer processing
        once the write commits and call the lease lost, turning a completed
        job into a "lost" attempt; after this, nothing renews the lease, and
        only the write's own answer says whether it landed."""
        self.check()
        self._stop.set()
        self._thread.join(timeout=max(self.interval * 2, 5.0))
        self.check()  # a heartbeat's last answer (cancel, lost) still counts
        self.write(action)

    def progress(self, progress: float, stage: Stage) -> None:
        """Record progress and stage for this attempt."""
        self.write(lambda: self.store.record_progress(self.job_id, self.attempt, progress, stage))

    def add_file(self, path: str, size_bytes: int) -> None:
        """Record a produced file (relative to the job's output folder)."""
        self.write(lambda: self.store.add_file(self.job_id, self.attempt, path, size_bytes))

    def add_files(self, files: list[tuple[str, int]]) -> None:
        """Record several produced files in one fenced transaction."""
        batch = list(files)
        self.write(lambda: self.store.add_files(self.job_id, self.attempt, batch))
